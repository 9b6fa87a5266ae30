//! The artifact store over HTTP: buckets, streamed objects, signed fetch URLs, and the refusals
//! (hostile keys, wrong hashes, oversized bodies, stale or forged URLs) that change nothing.

mod common;

use common::{TestServer, assert_error, enc, error_text};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

async fn put_object(
    t: &TestServer,
    token: &str,
    bucket: &str,
    key: &str,
    body: Vec<u8>,
    sha: Option<&str>,
) -> (StatusCode, Value) {
    let mut url = format!("{}/api/v1/buckets/{bucket}/object?key={}", t.url, enc(key));
    if let Some(s) = sha {
        url.push_str(&format!("&sha256={s}"));
    }
    let resp = t.http.put(url).bearer_auth(token).body(body).send().await.expect("put");
    let status = resp.status();
    (status, resp.json().await.unwrap_or(Value::Null))
}

async fn get_bytes(t: &TestServer, url: &str, token: Option<&str>) -> (StatusCode, Option<String>, Vec<u8>) {
    let mut req = t.http.get(url);
    if let Some(tok) = token {
        req = req.bearer_auth(tok);
    }
    let resp = req.send().await.expect("get");
    let status = resp.status();
    let sha = resp
        .headers()
        .get("x-stratus-sha256")
        .map(|v| v.to_str().unwrap().to_string());
    (status, sha, resp.bytes().await.expect("body").to_vec())
}

fn sha(b: &[u8]) -> String {
    hex::encode(Sha256::digest(b))
}

async fn fetch_url(t: &TestServer, bucket: &str, key: &str) -> Value {
    let (s, v) = t
        .post(&format!("/buckets/{bucket}/url"), json!({ "key": key, "ttl_secs": 60 }))
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    v
}

#[tokio::test]
async fn objects_round_trip_and_urls_follow_the_content() {
    let t = TestServer::start().await;
    let (s, v) = t.post("/buckets", json!({ "name": "apps" })).await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    let v1 = b"version one".to_vec();
    let (s, o) = put_object(&t, &t.token, "apps", "web/v1.tar.gz", v1.clone(), Some(&sha(&v1))).await;
    assert_eq!(s, StatusCode::OK, "{o}");
    assert_eq!(o["sha256"], sha(&v1));
    assert_eq!(o["size"], 11);
    let (s, _) = put_object(&t, &t.token, "apps", "other.txt", b"x".to_vec(), None).await;
    assert_eq!(s, StatusCode::OK);

    // Download through the API, with the hash in a header.
    let url = format!("{}/api/v1/buckets/apps/object?key={}", t.url, enc("web/v1.tar.gz"));
    let (s, h, body) = get_bytes(&t, &url, Some(&t.token)).await;
    assert_eq!(
        (s, h.as_deref(), body.as_slice()),
        (StatusCode::OK, Some(sha(&v1).as_str()), v1.as_slice())
    );
    // Not without a token.
    let (s, _, _) = get_bytes(&t, &url, None).await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);

    // Listing, with a prefix and pages.
    let keys: Vec<String> = t
        .list_all("/buckets/apps/objects")
        .await
        .iter()
        .map(|o| o["key"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(keys, ["other.txt", "web/v1.tar.gz"]);
    let page = t.get("/buckets/apps/objects?prefix=web/").await;
    assert_eq!(page["items"].as_array().unwrap().len(), 1);
    let page = t.get("/buckets/apps/objects?limit=1").await;
    assert_eq!(page["items"][0]["key"], "other.txt");
    assert_eq!(page["next"], "other.txt");
    let page = t.get("/buckets/apps/objects?limit=1&after=other.txt").await;
    assert_eq!(page["items"][0]["key"], "web/v1.tar.gz");
    assert!(page["next"].is_null());

    // A signed URL fetches without a token.
    let u1 = fetch_url(&t, "apps", "web/v1.tar.gz").await;
    let fetch1 = format!("{}{}", "", u1["url"].as_str().unwrap());
    assert!(fetch1.starts_with(&t.url), "{fetch1}");
    let (s, h, body) = get_bytes(&t, &fetch1, None).await;
    assert_eq!((s, body.as_slice()), (StatusCode::OK, v1.as_slice()));
    assert_eq!(h.as_deref(), Some(sha(&v1).as_str()));

    // Overwrite: the old URL no longer answers (it names the old content), a new one does.
    let v2 = b"version two!".to_vec();
    let (s, _) = put_object(&t, &t.token, "apps", "web/v1.tar.gz", v2.clone(), None).await;
    assert_eq!(s, StatusCode::OK);
    let (s, _, body) = get_bytes(&t, &fetch1, None).await;
    assert_eq!(s, StatusCode::NOT_FOUND, "{}", String::from_utf8_lossy(&body));
    assert!(String::from_utf8_lossy(&body).contains("overwritten"));
    let u2 = fetch_url(&t, "apps", "web/v1.tar.gz").await;
    let (s, _, body) = get_bytes(&t, u2["url"].as_str().unwrap(), None).await;
    assert_eq!((s, body.as_slice()), (StatusCode::OK, v2.as_slice()));
    // The first content's blob is gone with its last reference.
    let blobs = t.dir.path().join("artifacts/blobs/sha256");
    assert!(!blobs.join(&sha(&v1)[..2]).join(sha(&v1)).exists());
    assert!(blobs.join(&sha(&v2)[..2]).join(sha(&v2)).exists());

    // Forged or tampered URLs are refused.
    let u2s = u2["url"].as_str().unwrap();
    for (from, to) in [("sig=", "sig=AAAA"), ("key=web", "key=wex"), ("expires=", "expires=9")] {
        let bad = u2s.replacen(from, to, 1);
        let (s, _, _) = get_bytes(&t, &bad, None).await;
        assert!(s == StatusCode::FORBIDDEN || s == StatusCode::BAD_REQUEST, "{bad}: {s}");
    }
    let (s, _, _) = get_bytes(&t, &format!("{}/api/v1/artifacts/fetch", t.url), None).await;
    assert_eq!(s, StatusCode::BAD_REQUEST);

    // A non-empty bucket stays; deleting its objects lets it go.
    let (s, v) = t.delete("/buckets/apps").await;
    assert_error(s, &v, StatusCode::CONFLICT, "conflict");
    for key in ["web/v1.tar.gz", "other.txt"] {
        let (s, v) = t
            .call(Method::DELETE, &format!("/buckets/apps/object?key={}", enc(key)), None)
            .await;
        assert_eq!(s, StatusCode::NO_CONTENT, "{v}");
    }
    assert!(!blobs.join(&sha(&v2)[..2]).join(sha(&v2)).exists());
    let (s, _) = t.delete("/buckets/apps").await;
    assert_eq!(s, StatusCode::NO_CONTENT);
    let actions: Vec<String> = t
        .audit("action=object.")
        .await
        .iter()
        .map(|e| e["action"].as_str().unwrap().to_string())
        .collect();
    assert!(
        actions.iter().filter(|a| *a == "object.put").count() == 3,
        "{actions:?}"
    );
    assert!(actions.contains(&"object.delete".to_string()), "{actions:?}");
}

#[tokio::test]
async fn an_expired_url_is_refused() {
    let t = TestServer::start().await;
    t.post("/buckets", json!({ "name": "b" })).await;
    put_object(&t, &t.token, "b", "k", b"data".to_vec(), None).await;
    let app = &t.running.as_ref().unwrap().app;
    let o = stratus_store::TypedStore::find_as::<stratus_types::artifact::Object>(&*app.store, "b", "k")
        .await
        .unwrap()
        .unwrap();
    // Minted for a token that is still valid: only the expiry is wrong.
    let tokens = t.get("/users/admin/tokens").await;
    let by = format!("t.{}", tokens[0]["id"].as_str().unwrap());
    let sig = app.keys.fetch_signature("b", "k", &o.sha256, 1000, &by);
    let url = format!(
        "{}/api/v1/artifacts/fetch?bucket=b&key=k&sha256={}&expires=1000&by={by}&sig={sig}",
        t.url, o.sha256
    );
    let resp = t.http.get(url).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::FORBIDDEN);
    assert!(resp.text().await.unwrap().contains("expired"));
}

#[tokio::test]
async fn bad_uploads_change_nothing() {
    let t = TestServer::start_with(|c| c.artifact_max = 1024).await;
    t.post("/buckets", json!({ "name": "b" })).await;
    let before = t.snapshot().await;
    let blobs_dir = t.dir.path().join("artifacts");
    let files_before = count_files(&blobs_dir);

    // A wrong hash.
    let (s, v) = put_object(&t, &t.token, "b", "k", b"data".to_vec(), Some(&"0".repeat(64))).await;
    assert_error(s, &v, StatusCode::BAD_REQUEST, "invalid_input");
    assert!(error_text(&v).contains("sha-256"), "{v}");
    // A malformed hash.
    let (s, v) = put_object(&t, &t.token, "b", "k", b"data".to_vec(), Some("xyz")).await;
    assert_error(s, &v, StatusCode::BAD_REQUEST, "invalid_input");
    // Too large.
    let (s, v) = put_object(&t, &t.token, "b", "k", vec![7u8; 4096], None).await;
    assert_error(s, &v, StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large");
    assert!(error_text(&v).contains("1024"), "{v}");
    // Hostile keys.
    for key in [
        "",
        "../etc/passwd",
        "a/../../b",
        "/abs",
        "a//b",
        "a/./b",
        "tab\there",
        &"k".repeat(1025),
    ] {
        let (s, v) = put_object(&t, &t.token, "b", key, b"data".to_vec(), None).await;
        assert_error(s, &v, StatusCode::BAD_REQUEST, "invalid_input");
        assert!(error_text(&v).contains("key"), "{key:?}: {v}");
    }
    // A missing bucket says how to make one; a hostile bucket name is refused.
    let (s, v) = put_object(&t, &t.token, "nope", "k", b"data".to_vec(), None).await;
    assert_error(s, &v, StatusCode::NOT_FOUND, "not_found");
    assert!(error_text(&v).contains("stratus artifact mb nope"), "{v}");
    let (s, v) = t.post("/buckets", json!({ "name": "Bad Name" })).await;
    assert_error(s, &v, StatusCode::BAD_REQUEST, "invalid_input");
    let (s, v) = t.post("/buckets", json!({ "name": "b" })).await;
    assert_error(s, &v, StatusCode::CONFLICT, "conflict");
    let (s, v) = t.post("/buckets", json!({ "name": "x", "extra": 1 })).await;
    assert_error(s, &v, StatusCode::BAD_REQUEST, "invalid_input");
    // Unknown query fields, an URL for a missing object, a bad ttl.
    let (s, _) = t.call(Method::GET, "/buckets/b/object?key=k&evil=1", None).await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    let (s, v) = t.post("/buckets/b/url", json!({ "key": "missing" })).await;
    assert_error(s, &v, StatusCode::NOT_FOUND, "not_found");
    let (s, v) = t.post("/buckets/b/url", json!({ "key": "k", "ttl_secs": 0 })).await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{v}");

    assert_eq!(t.snapshot().await, before, "a refused request changed something");

    // An observer reads but does not write.
    let observer = t.user_token("olga", &["observer"]).await;
    let before_observer = t.snapshot().await;
    let (s, v) = put_object(&t, &observer, "b", "k", b"data".to_vec(), None).await;
    assert_error(s, &v, StatusCode::FORBIDDEN, "forbidden");
    assert_eq!(t.snapshot().await, before_observer);

    // Nothing above changed the catalogue, and no upload was left on disk.
    let items = t.list_all("/buckets/b/objects").await;
    assert!(items.is_empty(), "{items:?}");
    assert_eq!(count_files(&blobs_dir), files_before);
}

fn count_files(dir: &std::path::Path) -> usize {
    let Ok(rd) = std::fs::read_dir(dir) else { return 0 };
    rd.flatten()
        .map(|e| if e.path().is_dir() { count_files(&e.path()) } else { 1 })
        .sum()
}
