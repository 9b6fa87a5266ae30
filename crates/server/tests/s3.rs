//! The artifact store on a real S3 server (SeaweedFS, started by scripts/test-s3.sh): blobs
//! stored, verified and removed through the S3 API, path-style; and a control plane whose
//! artifacts live there, serving uploads, downloads and the instances' signed fetch URLs.

mod common;

use common::{TestServer, enc};
use reqwest::StatusCode;
use serde_json::json;
use stratus_server::blobs::{BlobError, Blobs, S3Location};

/// The test server's one access key (scripts/test-s3.sh).
const KEY: (&str, &str) = ("stratus-test-key", "stratus-test-secret-0123456789");

fn endpoint() -> String {
    std::env::var("STRATUS_TEST_S3").expect(
        "STRATUS_TEST_S3 is not set: run the tests with scripts/test.sh, which starts a private S3 server \
         (scripts/test-s3.sh) and sets it",
    )
}

/// A bucket of its own, made through SeaweedFS's filer (its port is the S3 port + 3; a bucket
/// is a directory under /buckets), removed on drop.
struct Bucket(String);

impl Bucket {
    async fn create() -> Self {
        let mut b = [0u8; 6];
        getrandom::fill(&mut b).expect("random");
        let name = format!("stratus-t-{}", hex::encode(b));
        let resp = reqwest::Client::new()
            .post(format!("{}/buckets/{name}/", filer()))
            .send()
            .await
            .expect("filer");
        assert!(resp.status().is_success(), "{}", resp.status());
        Self(name)
    }
}

fn filer() -> String {
    let e = endpoint();
    let (host, port) = e.rsplit_once(':').expect("host:port");
    format!("{host}:{}", port.parse::<u16>().expect("port") + 3)
}

impl Drop for Bucket {
    fn drop(&mut self) {
        let url = format!(
            "{}/buckets/{}/?recursive=true&ignoreRecursiveError=true",
            filer(),
            self.0
        );
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build();
            if let Ok(rt) = rt {
                rt.block_on(async {
                    let _ = reqwest::Client::new().delete(url).send().await;
                });
            }
        })
        .join();
    }
}

fn location(bucket: &str) -> S3Location {
    S3Location::parse(&format!("s3://{bucket}/stratus/test?endpoint={}", endpoint())).expect("location")
}

async fn read(b: &Blobs, sha: &str) -> Vec<u8> {
    use futures_util::StreamExt;
    let mut s = std::pin::pin!(b.get(sha).await.expect("get"));
    let mut out = vec![];
    while let Some(c) = s.next().await {
        out.extend_from_slice(&c.expect("chunk"));
    }
    out
}

#[tokio::test]
async fn blobs_live_in_a_real_s3_bucket() {
    let bucket = Bucket::create().await;
    let b = Blobs::s3_with(&location(&bucket.0), 4 << 20, Some(KEY)).expect("s3");
    b.check().await.expect("the bucket answers");
    // 1.2 MB, streamed in 64 KiB pieces.
    let big: Vec<u8> = (0..300_000u32).flat_map(|i| i.to_le_bytes()).collect();
    let chunks = futures_util::stream::iter(
        big.chunks(65_536)
            .map(|c| Ok::<_, String>(bytes::Bytes::copy_from_slice(c)))
            .collect::<Vec<_>>(),
    );
    let s = b.put(chunks, None).await.expect("put");
    assert_eq!(s.size, big.len() as u64);
    assert_eq!(read(&b, &s.sha256).await, big);
    assert_eq!(b.count("uploads").await.expect("list"), 0, "the staging upload is gone");
    assert_eq!(b.count("blobs").await.expect("list"), 1);
    // Refused uploads leave nothing, in the bucket either.
    let e = b
        .put_bytes(bytes::Bytes::from_static(b"abc"), Some(&"0".repeat(64)))
        .await
        .expect_err("wrong hash");
    assert!(matches!(e, BlobError::HashMismatch { .. }), "{e}");
    let too_big = vec![0u8; (4 << 20) + 1];
    assert!(matches!(
        b.put_bytes(too_big.into(), None).await,
        Err(BlobError::TooLarge { .. })
    ));
    assert_eq!(b.count("uploads").await.expect("list"), 0);
    b.delete(&s.sha256).await.expect("delete");
    b.delete(&s.sha256).await.expect("deleting twice");
    assert!(matches!(b.get(&s.sha256).await, Err(BlobError::Missing(_))));
    // A wrong key is refused by the server.
    let wrong = Blobs::s3_with(&location(&bucket.0), 1024, Some(("stratus-test-key", "not-the-secret"))).expect("s3");
    assert!(wrong.check().await.is_err(), "the server checks signatures");
}

#[tokio::test]
async fn a_control_plane_keeps_its_artifacts_in_s3() {
    let bucket = Bucket::create().await;
    let url = format!("s3://{}/cp?endpoint={}", bucket.0, endpoint());
    let t = TestServer::start_with(|c| {
        c.artifacts = Some(url.clone());
        c.artifacts_key = Some((KEY.0.into(), KEY.1.into()));
    })
    .await;
    let (s, v) = t.post("/buckets", json!({ "name": "apps" })).await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    let body = b"an application archive".to_vec();
    let put = |key: &str, body: Vec<u8>| {
        let url = format!("{}/api/v1/buckets/apps/object?key={}", t.url, enc(key));
        let req = t.http.put(url).bearer_auth(&t.token).body(body);
        async move { req.send().await.expect("put").status() }
    };
    assert_eq!(put("web/app.tar.gz", body.clone()).await, StatusCode::OK);
    let (s, u) = t
        .post("/buckets/apps/url", json!({ "key": "web/app.tar.gz", "ttl_secs": 60 }))
        .await;
    assert_eq!(s, StatusCode::OK, "{u}");
    let fetch = u["url"].as_str().expect("url").to_string();
    let got = t.http.get(&fetch).send().await.expect("fetch");
    assert_eq!(got.status(), StatusCode::OK);
    assert_eq!(
        got.bytes().await.expect("body").to_vec(),
        body,
        "an instance's fetch reads from S3"
    );
    // The bytes are in the bucket, under the prefix.
    let b = Blobs::s3_with(&S3Location::parse(&url).expect("url"), 1024, Some(KEY)).expect("s3");
    assert_eq!(b.count("blobs").await.expect("list"), 1);
    // Overwritten: the old URL answers 404, the old blob goes.
    assert_eq!(put("web/app.tar.gz", b"v2".to_vec()).await, StatusCode::OK);
    assert_eq!(
        t.http.get(&fetch).send().await.expect("fetch").status(),
        StatusCode::NOT_FOUND
    );
    assert_eq!(b.count("blobs").await.expect("list"), 1);
    let (s, _) = t
        .call(
            reqwest::Method::DELETE,
            "/buckets/apps/object?key=web%2Fapp.tar.gz",
            None,
        )
        .await;
    assert_eq!(s, StatusCode::NO_CONTENT);
    assert_eq!(b.count("blobs").await.expect("list"), 0);
}

/// A control plane whose artifact store does not answer (or is misnamed) does not start.
#[tokio::test]
async fn a_bad_artifact_location_stops_the_start_with_a_clear_error() {
    let dir = tempfile::tempdir().expect("tmp");
    for (url, want) in [
        ("s3://No_Such", "not an S3 bucket name"),
        ("s3://bucket?style=sideways", "unknown or bad option"),
        (
            "s3://stratus-missing-bucket?endpoint=http://127.0.0.1:1",
            "does not answer",
        ),
    ] {
        let mut c = stratus_server::Config::new(dir.path().join("d"), "127.0.0.1:0".parse().expect("addr"));
        c.artifacts = Some(url.into());
        let e = stratus_server::start(c).await.expect_err(url);
        assert!(format!("{e:#}").contains(want), "{url}: {e:#}");
    }
}

/// An upload the server refuses (here: a wrong secret) is an error for the upload, and the
/// control plane carries on (a failed upload is not aborted a second time, which panicked).
#[tokio::test]
async fn an_upload_the_server_refuses_is_an_error_not_a_crash() {
    let bucket = Bucket::create().await;
    let b = Blobs::s3_with(&location(&bucket.0), 1 << 20, Some((KEY.0, "not-the-secret"))).expect("s3");
    let e = b
        .put_bytes(bytes::Bytes::from_static(b"refused"), None)
        .await
        .expect_err("refused");
    assert!(matches!(e, BlobError::Backend(_) | BlobError::Io(_)), "{e}");
}
