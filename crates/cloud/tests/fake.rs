//! The fake driver passes the conformance suite, and its failure switches work.

use std::time::Duration;

use stratus_cloud::fake::FakeCloud;
use stratus_cloud::{CloudDriver, CloudError, LaunchRequest, conformance};
use stratus_types::ServerId;
use stratus_types::size::{InstanceSize, Memory};

fn request() -> LaunchRequest {
    LaunchRequest {
        server: ServerId::new(),
        hostname: "web-1".into(),
        region: "local".into(),
        size: InstanceSize {
            name: "small".into(),
            cpus: 1,
            memory: Memory::parse("512MiB").expect("memory"),
        },
        native_image: "debian-12".into(),
        user_data: b"#stratus\nurl: http://10.0.0.1:7400\n".to_vec(),
        tags: vec![],
        firewall: vec![],
        ssh_keys: vec![],
        metadata_tokens_required: false,
    }
}

#[tokio::test]
async fn conformance_immediate() {
    let cloud = FakeCloud::new();
    conformance::run_all(
        &cloud,
        &request(),
        "198.51.100.7".parse().expect("ip"),
        Duration::from_secs(5),
    )
    .await;
}

#[tokio::test]
async fn conformance_with_boot_delay() {
    let cloud = FakeCloud::with_boot_delay(Duration::from_millis(200));
    conformance::run_all(
        &cloud,
        &request(),
        "198.51.100.8".parse().expect("ip"),
        Duration::from_secs(5),
    )
    .await;
}

#[tokio::test]
async fn failure_switches() {
    let cloud = FakeCloud::new();
    cloud.fail_next_launch("quota exceeded");
    let err = cloud.launch(request()).await.expect_err("fails");
    assert!(err.to_string().contains("quota exceeded"), "{err}");
    cloud.set_capacity(1);
    cloud.launch(request()).await.expect("first fits");
    assert!(matches!(cloud.launch(request()).await, Err(CloudError::Capacity(_))));
}
