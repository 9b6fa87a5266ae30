//! Instance-identity documents over HTTP, their signatures, and the identity key file.

mod common;

use std::os::unix::fs::PermissionsExt;

use common::{Server, client, full_instance, get_ok};
use stratus_imds::{IdentityKey, IdentityVerifier, ImdsError};

#[tokio::test]
async fn the_document_is_ec2_shaped_stable_and_signed() {
    let server = Server::start(Some(full_instance("i-0123456789abcdef0"))).await;
    assert_eq!(get_ok(&server, "/latest/dynamic/").await, "instance-identity/");
    assert_eq!(
        get_ok(&server, "/latest/dynamic/instance-identity/").await,
        "document\nsignature"
    );
    let response = client()
        .get(server.url("/latest/dynamic/instance-identity/document"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.headers()["content-type"], "text/plain");
    let document = response.bytes().await.unwrap();
    let again = client()
        .get(server.url("/2021-03-23/dynamic/instance-identity/document"))
        .send()
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    assert_eq!(document, again, "the same bytes on every request");

    let json: serde_json::Value = serde_json::from_slice(&document).unwrap();
    let expected = serde_json::json!({
        "accountId": "000000000000",
        "architecture": json["architecture"],
        "availabilityZone": "local-1a",
        "billingProducts": null,
        "devpayProductCodes": null,
        "marketplaceProductCodes": null,
        "imageId": "ami-0abcdef1234567890",
        "instanceId": "i-0123456789abcdef0",
        "instanceType": "small",
        "kernelId": null,
        "pendingTime": "2024-05-01T12:00:00Z",
        "privateIp": "10.77.0.5",
        "ramdiskId": null,
        "region": "local-1",
        "version": "2017-09-30",
    });
    assert_eq!(json, expected);
    assert!(["x86_64", "arm64"].contains(&json["architecture"].as_str().unwrap()));
    // Pretty-printed, in EC2's field order.
    let text = std::str::from_utf8(&document).unwrap();
    assert!(text.starts_with("{\n  \"accountId\": \"000000000000\",\n  \"architecture\""));

    let signature = get_ok(&server, "/latest/dynamic/instance-identity/signature").await;
    let parsed = server.verifier.verify(&document, &signature).unwrap();
    assert_eq!(parsed.instance_id, "i-0123456789abcdef0");
    assert_eq!(parsed.private_ip, std::net::Ipv4Addr::new(10, 77, 0, 5));
    assert_eq!(parsed.pending_time.to_rfc3339(), "2024-05-01T12:00:00+00:00");

    // One byte changed anywhere: refused.
    for i in [0, document.len() / 2, document.len() - 1] {
        let mut tampered = document.to_vec();
        tampered[i] ^= 0x01;
        assert!(
            matches!(
                server.verifier.verify(&tampered, &signature),
                Err(ImdsError::InvalidSignature { .. })
            ),
            "byte {i}"
        );
    }
    // Another key's verifier refuses it; a transported public key accepts it.
    let stranger = IdentityKey::generate().verifier();
    assert!(stranger.verify(&document, &signature).is_err());
    let transported = IdentityVerifier::from_public_key_base64(&server.verifier.public_key_base64()).unwrap();
    assert_eq!(transported.verify(&document, &signature).unwrap(), parsed);
    for bad in ["", "!!!", "AAAA"] {
        assert!(matches!(
            transported.verify(&document, bad),
            Err(ImdsError::InvalidSignature { .. })
        ));
    }
    server.stop().await;
}

#[test]
fn the_key_file_is_created_0600_and_loaded_back() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("nested/deeper/identity.key");
    let created = IdentityKey::load_or_create(&path).unwrap();
    let meta = std::fs::metadata(&path).unwrap();
    assert_eq!(meta.permissions().mode() & 0o777, 0o600);
    let parent = std::fs::metadata(path.parent().unwrap()).unwrap();
    assert_eq!(parent.permissions().mode() & 0o077, 0);
    let text = std::fs::read_to_string(&path).unwrap();
    assert_eq!(text.len(), 65, "64 hex characters and a newline");
    assert!(text.trim_end().bytes().all(|b| b.is_ascii_hexdigit()));
    // No temporary files left behind.
    assert_eq!(std::fs::read_dir(path.parent().unwrap()).unwrap().count(), 1);

    let loaded = IdentityKey::load_or_create(&path).unwrap();
    assert_eq!(
        loaded.verifier().public_key_base64(),
        created.verifier().public_key_base64()
    );
    let signature = created.sign(b"doc");
    assert_eq!(loaded.sign(b"doc"), signature);
    // Debug shows the public key, never the seed.
    let shown = format!("{created:?}");
    assert!(!shown.contains(text.trim_end()), "{shown}");
    assert!(shown.contains(&created.verifier().public_key_base64()));
}

#[test]
fn a_key_file_others_can_read_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("identity.key");
    IdentityKey::load_or_create(&path).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
    let err = IdentityKey::load_or_create(&path).unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::PermissionDenied);
    assert!(err.to_string().contains("chmod 600"), "{err}");
}

#[test]
fn a_damaged_key_file_is_refused_not_replaced() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("identity.key");
    for content in ["", "abc", &"zz".repeat(32), &"ab".repeat(33)] {
        std::fs::write(&path, content).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        let err = IdentityKey::load_or_create(&path).unwrap_err();
        assert_eq!(err.kind(), std::io::ErrorKind::InvalidData, "{content:?}");
        assert_eq!(std::fs::read_to_string(&path).unwrap(), content);
    }
    // Raw hex without a newline, upper case, is fine.
    std::fs::write(&path, "AB".repeat(32)).unwrap();
    IdentityKey::load_or_create(&path).unwrap();
}
