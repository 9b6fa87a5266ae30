//! The metadata service from inside real instances: the instance is known by its address,
//! and a metadata client that is not ours (botocore's, as the AWS CLI uses) works.

mod support;

use std::process::Command;

use stratus_cloud::CloudDriver;
use support::TestCloud;

/// Run the host's Debian python with Debian's botocore (`python3-botocore`) inside the instance's network namespace: to the metadata
/// service this is the instance asking.
fn botocore_in(netns: &str, script: &str) -> (bool, String) {
    let out = Command::new("ip")
        .args(["netns", "exec", netns, "/usr/bin/python3", "-c", script])
        .env_clear()
        .env("PATH", "/usr/local/bin:/usr/bin:/bin")
        .env("HOME", "/tmp")
        .output()
        .expect("python3");
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

const BOTOCORE: &str = r#"
from botocore.utils import IMDSFetcher, InstanceMetadataRegionFetcher
f = IMDSFetcher(timeout=2, num_attempts=2)
token = f._fetch_metadata_token()
assert token, "an IMDSv2 token"
def get(path):
    r = f._get_request(path, None, token)
    return r.text
print("instance-id", get("/latest/meta-data/instance-id"))
print("local-ipv4", get("/latest/meta-data/local-ipv4"))
print("pool", get("/latest/meta-data/tags/instance/lb:pool"))
print("region", InstanceMetadataRegionFetcher(timeout=2, num_attempts=2).retrieve_region())
print("key", get("/latest/meta-data/public-keys/0/openssh-key"))
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn botocore_reads_the_instance_own_metadata() {
    let t = TestCloud::new().await;
    let a = t.cloud.launch(t.request("meta-a")).await.expect("launch");
    let netns = t.cloud.netns(&a.id).expect("netns");
    let (ok, out) = botocore_in(&netns, BOTOCORE);
    assert!(ok, "botocore failed: {out}");
    assert!(out.contains(&format!("instance-id {}", a.id)), "{out}");
    assert!(
        out.contains(&format!("local-ipv4 {}", a.private_ip.expect("ip"))),
        "{out}"
    );
    assert!(out.contains("pool www"), "{out}");
    assert!(out.contains("region local"), "{out}");
    assert!(out.contains("key ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIC1aaa"), "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_instance_sees_only_itself_and_changes_show_at_once() {
    let t = TestCloud::new().await;
    let a = t.cloud.launch(t.request("meta-a")).await.expect("launch a");
    let b = t.cloud.launch(t.request("meta-b")).await.expect("launch b");
    let md = "169.254.169.254";
    let get = |id: &str, path: &str| t.http_from(id, md, 80, path);
    assert_eq!(
        get(&a.id, "/latest/meta-data/instance-id").as_deref(),
        Some(a.id.as_str())
    );
    assert_eq!(
        get(&b.id, "/latest/meta-data/instance-id").as_deref(),
        Some(b.id.as_str())
    );
    assert_eq!(get(&a.id, "/latest/meta-data/hostname").as_deref(), Some("meta-a"));
    assert_eq!(
        get(&a.id, "/latest/user-data").as_deref(),
        Some("#!/bin/sh\necho hello\n")
    );
    let none = t.raw_from(&a.id, md, 80, "/latest/meta-data/public-ipv4");
    assert!(none.starts_with("HTTP/1.0 404"), "no elastic IP yet: {none}");
    let eip = t.pool_address(4);
    t.cloud.associate_address(&a.id, eip.into()).await.expect("eip");
    assert_eq!(get(&a.id, "/latest/meta-data/public-ipv4"), Some(eip.to_string()));
    t.cloud
        .set_tags(&a.id, vec!["role:tier=db".parse().expect("tag")])
        .await
        .expect("tags");
    assert_eq!(get(&a.id, "/latest/meta-data/tags/instance/"), Some("role:tier".into()));
    // The identity document is signed, and the signature checks out with the cloud's key.
    let doc = get(&a.id, "/latest/dynamic/instance-identity/document").expect("document");
    let sig = get(&a.id, "/latest/dynamic/instance-identity/signature").expect("signature");
    let verifier = t.cloud.identity_verifier().expect("verifier");
    let parsed = verifier.verify(doc.as_bytes(), sig.trim()).expect("valid signature");
    assert_eq!(parsed.instance_id, a.id);
    assert!(
        verifier
            .verify(doc.replace(&a.id, &b.id).as_bytes(), sig.trim())
            .is_err(),
        "forged document"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_are_required_when_configured_and_bound_to_their_instance() {
    let t = TestCloud::new().await;
    let mut req = t.request("strict");
    req.metadata_tokens_required = true;
    let a = t.cloud.launch(req).await.expect("launch a");
    let b = t.cloud.launch(t.request("other")).await.expect("launch b");
    let raw = |id: &str, request: &str| {
        t.exec(id, &format!("printf '{request}' | nc -w 2 169.254.169.254 80"))
            .1
    };
    let v1 = raw(&a.id, "GET /latest/meta-data/instance-id HTTP/1.0\\r\\n\\r\\n");
    assert!(v1.starts_with("HTTP/1.0 401"), "IMDSv1 refused: {v1}");
    let put = raw(
        &a.id,
        "PUT /latest/api/token HTTP/1.0\\r\\nX-aws-ec2-metadata-token-ttl-seconds: 60\\r\\n\\r\\n",
    );
    let token = put.split("\r\n\r\n").nth(1).expect("token body").trim().to_string();
    assert!(put.starts_with("HTTP/1.0 200"), "{put}");
    let with = format!("GET /latest/meta-data/instance-id HTTP/1.0\\r\\nX-aws-ec2-metadata-token: {token}\\r\\n\\r\\n");
    let ok = raw(&a.id, &with);
    assert!(ok.starts_with("HTTP/1.0 200") && ok.ends_with(&a.id), "{ok}");
    let stolen = raw(&b.id, &with);
    assert!(
        stolen.starts_with("HTTP/1.0 401"),
        "a token works only for its instance: {stolen}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_instance_cannot_pass_for_another() {
    let t = TestCloud::new().await;
    let a = t.cloud.launch(t.request("victim")).await.expect("launch a");
    let b = t.cloud.launch(t.request("thief")).await.expect("launch b");
    let a_ip = a.private_ip.expect("ip");
    let get = "printf 'GET /latest/user-data HTTP/1.0\\r\\n\\r\\n'";
    // b takes a's address as a second one and asks from it: the host drops the packets.
    let (_, out) = t.exec(
        &b.id,
        &format!("ip addr add {a_ip}/32 dev eth0 && {get} | nc -w 2 -s {a_ip} 169.254.169.254 80"),
    );
    assert!(!out.contains("HTTP/1.0 200"), "b got a's user-data: {out}");
    // and b as itself still works
    assert!(
        t.raw_from(&b.id, "169.254.169.254", 80, "/latest/meta-data/instance-id")
            .ends_with(&b.id)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cloud_that_requires_tokens_refuses_imdsv1_for_every_instance() {
    let t = TestCloud::with_config(24, |c| c.metadata_tokens_required = true).await;
    let a = t.cloud.launch(t.request("plain")).await.expect("launch");
    let raw = |request: &str| {
        t.exec(&a.id, &format!("printf '{request}' | nc -w 2 169.254.169.254 80"))
            .1
    };
    let v1 = raw("GET /latest/meta-data/instance-id HTTP/1.0\\r\\n\\r\\n");
    assert!(
        v1.starts_with("HTTP/1.0 401"),
        "IMDSv1 refused though the launch did not ask: {v1}"
    );
    // The token's response leaves with TTL 1 and still reaches the instance, its neighbour on
    // the bridge; botocore (as the AWS CLI) gets its token and reads.
    let (ok, out) = botocore_in(&t.cloud.netns(&a.id).expect("netns"), BOTOCORE);
    assert!(ok, "botocore failed: {out}");
    assert!(out.contains(&format!("instance-id {}", a.id)), "{out}");
}
