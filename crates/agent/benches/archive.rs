//! Application archive throughput: fetch (HTTP from an in-process control plane, SHA-256
//! verified while it streams, into the agent's cache), then verify again and unpack into a
//! release directory with the `current` switch — what a deploy does on an instance.
//!
//! ```sh
//! cargo bench -p stratus-agent --bench archive            # STRATUS_BENCH_ARCHIVE_MB=100
//! ```

use std::io::Write;
use std::time::Instant;

use sha2::Digest;

fn main() {
    let mb: usize = std::env::var("STRATUS_BENCH_ARCHIVE_MB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(run(mb));
}

/// A tar.gz of `mb` MiB of incompressible content in 1 MiB files (the worst case for unpacking
/// speed per byte is small files; the worst for fetching is incompressible bytes).
fn make_archive(path: &std::path::Path, mb: usize) -> u64 {
    let f = std::fs::File::create(path).expect("create");
    let mut b = tar::Builder::new(flate2::write::GzEncoder::new(f, flate2::Compression::fast()));
    let mut state = 0x9e3779b97f4a7c15u64;
    let mut chunk = vec![0u8; 1 << 20];
    for i in 0..mb {
        for w in chunk.chunks_mut(8) {
            // xorshift: cheap bytes gzip cannot shrink.
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            w.copy_from_slice(&state.to_le_bytes()[..w.len()]);
        }
        let mut h = tar::Header::new_gnu();
        h.set_size(chunk.len() as u64);
        h.set_mode(0o644);
        h.set_cksum();
        b.append_data(&mut h, format!("assets/part-{i:04}.bin"), chunk.as_slice())
            .expect("append");
    }
    b.into_inner()
        .expect("tar")
        .finish()
        .expect("gzip")
        .flush()
        .expect("flush");
    std::fs::metadata(path).expect("size").len()
}

async fn run(mb: usize) {
    let dir = tempfile::tempdir().expect("tmp");
    let archive = dir.path().join("site.tar.gz");
    let size = make_archive(&archive, mb);
    let bytes = std::fs::read(&archive).expect("read");
    let sha = hex::encode(sha2::Sha256::digest(&bytes));

    let mut c = stratus_server::Config::new(dir.path().join("data"), "127.0.0.1:0".parse().expect("addr"));
    c.reconcile = false;
    let running = stratus_server::start(c).await.expect("start");
    let token = std::fs::read_to_string(&running.admin_token_file).expect("token");
    let http = reqwest::Client::new();
    let api = |p: &str| format!("{}/api/v1{p}", running.url);
    http.post(api("/buckets"))
        .bearer_auth(token.trim())
        .json(&serde_json::json!({ "name": "rel" }))
        .send()
        .await
        .expect("bucket");
    let started = Instant::now();
    let put = http
        .put(api("/buckets/rel/object?key=site.tar.gz"))
        .bearer_auth(token.trim())
        .body(bytes)
        .send()
        .await
        .expect("upload");
    assert!(put.status().is_success(), "{}", put.text().await.unwrap_or_default());
    let upload = started.elapsed();
    let url: serde_json::Value = http
        .post(api("/buckets/rel/url"))
        .bearer_auth(token.trim())
        .json(&serde_json::json!({ "key": "site.tar.gz" }))
        .send()
        .await
        .expect("url")
        .json()
        .await
        .expect("json");
    let a = stratus_agent_proto::ArtifactRef {
        url: url["url"].as_str().expect("url").to_string(),
        sha256: sha.clone(),
        size,
        name: "site.tar.gz".into(),
    };
    let cache = dir.path().join("cache");
    let agent_http = reqwest::Client::new();
    let started = Instant::now();
    let fetched = stratus_agent::fetch::artifact(&agent_http, &running.url, &a, &cache)
        .await
        .expect("fetch");
    let fetch = started.elapsed();
    let root = dir.path().join("srv");
    let started = Instant::now();
    let report = stratus_agent::app::deploy(&root, "site", &fetched, &sha, None).expect("deploy");
    let unpack = started.elapsed();
    let mib = size as f64 / (1 << 20) as f64;
    let rate = |d: std::time::Duration| mib / d.as_secs_f64();
    println!("archive: {mib:.1} MiB compressed, {mb} files of 1 MiB ({report})");
    println!(
        "upload (PUT, hashed while streamed to the blob store): {upload:.2?} ({:.0} MiB/s)",
        rate(upload)
    );
    println!(
        "fetch + verify (signed URL, into the agent's cache): {fetch:.2?} ({:.0} MiB/s)",
        rate(fetch)
    );
    println!(
        "verify + unpack + switch (stratus-agent app deploy): {unpack:.2?} ({:.0} MiB/s)",
        rate(unpack)
    );
    let total = fetch + unpack;
    println!("fetch + verify + unpack: {total:.2?} ({:.0} MiB/s)", rate(total));
    running.stop();
}
