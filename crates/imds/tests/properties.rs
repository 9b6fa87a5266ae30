//! Property tests through the router (in-process, no sockets): arbitrary paths, methods and
//! tokens never panic and only ever get the statuses EC2 would give.

mod common;

use std::net::SocketAddr;
use std::sync::{Arc, LazyLock};

use axum::Router;
use axum::body::Body;
use axum::extract::ConnectInfo;
use axum::http::{Request, Uri};
use proptest::prelude::*;
use stratus_imds::{IdentityKey, Imds};
use tower::ServiceExt;

use common::{LOCALHOST, TestSource, full_instance};

static RUNTIME: LazyLock<tokio::runtime::Runtime> =
    LazyLock::new(|| tokio::runtime::Builder::new_current_thread().build().unwrap());

fn router(tokens_required: bool, tags: Vec<(String, String)>) -> Router {
    let source = TestSource::default();
    let mut meta = full_instance("i-1");
    meta.tokens_required = tokens_required;
    meta.tags.extend(tags);
    source.set(LOCALHOST, meta);
    Arc::new(Imds::new(Arc::new(source), IdentityKey::generate())).router()
}

/// Send one request from 127.0.0.1; returns status, `Location`, body.
fn send(router: &Router, method: &str, uri: Uri, token: Option<&str>) -> (u16, Option<String>, Vec<u8>) {
    let mut request = Request::builder().method(method).uri(uri);
    if let Some(token) = token {
        request = request.header("x-aws-ec2-metadata-token", token);
    }
    let mut request = request.body(Body::empty()).unwrap();
    let peer: SocketAddr = (LOCALHOST, 40_000).into();
    request.extensions_mut().insert(ConnectInfo(peer));
    RUNTIME.block_on(async {
        let response = router.clone().oneshot(request).await.unwrap();
        let status = response.status().as_u16();
        let location = response
            .headers()
            .get("location")
            .map(|v| v.to_str().unwrap().to_string());
        let body = axum::body::to_bytes(response.into_body(), 1 << 20).await.unwrap();
        (status, location, body.to_vec())
    })
}

/// Segments that mean something to the tree, plus hostile ones, plus arbitrary URI-safe text.
fn segment() -> impl Strategy<Value = String> {
    prop_oneof![
        prop::sample::select(vec![
            "latest",
            "2009-04-04",
            "meta-data",
            "dynamic",
            "user-data",
            "instance-identity",
            "document",
            "signature",
            "network",
            "interfaces",
            "macs",
            "02:00:0a:4d:00:05",
            "placement",
            "public-keys",
            "0",
            "1",
            "openssh-key",
            "tags",
            "instance",
            "Name",
            "stratus%3Adeployment",
            "api",
            "token",
            "..",
            ".",
            "%2E%2E",
            "%2F",
            "%FF",
            "%C3",
            "%zz",
            "%",
            "",
        ])
        .prop_map(String::from),
        "[A-Za-z0-9._~:@!$&'()*+,;=%-]{1,30}",
    ]
}

fn path() -> impl Strategy<Value = String> {
    (prop::collection::vec((segment(), 1..4usize), 0..9), any::<bool>()).prop_map(|(segments, trailing)| {
        let mut path: String = segments
            .iter()
            .map(|(s, slashes)| format!("{}{s}", "/".repeat(*slashes)))
            .collect();
        if trailing || path.is_empty() {
            path.push('/');
        }
        path
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn arbitrary_paths_get_only_200_301_or_404(path in path()) {
        let Ok(uri) = path.parse::<Uri>() else { return Ok(()) };
        let router = router(false, vec![]);
        let (status, location, _) = send(&router, "GET", uri.clone(), None);
        prop_assert!([200, 301, 404].contains(&status), "{} -> {}", path, status);
        if status == 301 {
            let location = location.unwrap();
            prop_assert!(location.starts_with('/') && !location.starts_with("//"), "{}", location);
            prop_assert!(location.ends_with('/'));
            // The redirect leads to a listing.
            let (status, _, _) = send(&router, "GET", location.parse().unwrap(), None);
            prop_assert_eq!(status, 200);
        }
        // HEAD agrees with GET.
        let (head, _, _) = send(&router, "HEAD", uri, None);
        prop_assert_eq!(head, status);
    }

    #[test]
    fn other_methods_get_405(
        path in path(),
        method in prop::sample::select(vec!["POST", "DELETE", "PATCH", "OPTIONS", "PUT"]),
    ) {
        let Ok(uri) = path.parse::<Uri>() else { return Ok(()) };
        let (status, _, _) = send(&router(false, vec![]), method, uri, None);
        let token_put = method == "PUT"
            && path.split('/').filter(|s| !s.is_empty()).eq(["latest", "api", "token"]);
        // A PUT to the token path without a TTL is a bad request; everything else is 405.
        prop_assert_eq!(status, if token_put { 400 } else { 405 });
    }

    #[test]
    fn arbitrary_tokens_never_unlock_a_tokens_required_instance(token in "[ -~]{0,120}") {
        let router = router(true, vec![]);
        let uri: Uri = "/latest/meta-data/instance-id".parse().unwrap();
        let (status, _, body) = send(&router, "GET", uri, Some(&token));
        prop_assert_eq!(status, 401);
        prop_assert!(!String::from_utf8_lossy(&body).contains("i-1"));
    }

    #[test]
    fn every_addressable_tag_key_is_reachable_percent_encoded(
        key in "[^/]{1,40}",
        value in "[ -~]{0,40}",
    ) {
        prop_assume!(key != "." && key != "..");
        // Make the key unique among the fixture's tags so the first-wins rule does not apply.
        let key = format!("zz{key}");
        let router = router(false, vec![(key.clone(), value.clone())]);
        let encoded: String = key.bytes().map(|b| format!("%{b:02X}")).collect();
        let uri: Uri = format!("/latest/meta-data/tags/instance/{encoded}").parse().unwrap();
        let (status, _, body) = send(&router, "GET", uri, None);
        prop_assert_eq!(status, 200);
        prop_assert_eq!(body, value.into_bytes());
    }
}
