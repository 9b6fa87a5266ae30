//! Behaviour every [`CloudDriver`] shows. A driver's tests call [`run_all`] with a request for
//! an image and size that exist on that cloud.

use std::net::IpAddr;
use std::time::Duration;

use stratus_types::ServerId;
use stratus_types::template::FirewallRule;

use crate::{CloudDriver, CloudError, InstanceState, LaunchRequest, USER_DATA_MAX};

/// Wait until the instance reaches `want` (bounded: `timeout`).
pub async fn wait_for(driver: &dyn CloudDriver, id: &str, want: InstanceState, timeout: Duration) -> InstanceState {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let state = driver
            .describe(id)
            .await
            .expect("describe")
            .map_or(InstanceState::Terminated, |i| i.state);
        if state == want || tokio::time::Instant::now() >= deadline {
            return state;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn fresh(base: &LaunchRequest) -> LaunchRequest {
    LaunchRequest {
        server: ServerId::new(),
        ..base.clone()
    }
}

/// Launch → running with a private address → listed → terminated; terminating twice is fine.
pub async fn lifecycle(driver: &dyn CloudDriver, base: &LaunchRequest, timeout: Duration) {
    let inst = driver.launch(fresh(base)).await.expect("launch");
    assert_eq!(
        wait_for(driver, &inst.id, InstanceState::Running, timeout).await,
        InstanceState::Running
    );
    let seen = driver.describe(&inst.id).await.expect("describe").expect("exists");
    assert!(seen.private_ip.is_some(), "a running instance has a private address");
    assert!(driver.list().await.expect("list").iter().any(|i| i.id == inst.id));
    driver.console_output(&inst.id, 4096).await.expect("console output");
    driver.terminate(&inst.id).await.expect("terminate");
    driver.terminate(&inst.id).await.expect("terminate is idempotent");
    let after = driver.describe(&inst.id).await.expect("describe");
    assert!(after.is_none_or(|i| i.state == InstanceState::Terminated));
}

/// A retried launch for the same server returns the same instance, not a second one.
pub async fn launch_is_idempotent_per_server(driver: &dyn CloudDriver, base: &LaunchRequest) {
    let req = fresh(base);
    let a = driver.launch(req.clone()).await.expect("launch");
    let b = driver.launch(req).await.expect("relaunch");
    assert_eq!(a.id, b.id);
    driver.terminate(&a.id).await.expect("terminate");
}

/// Stop and start keep the instance and its private address.
pub async fn stop_start(driver: &dyn CloudDriver, base: &LaunchRequest, timeout: Duration) {
    let inst = driver.launch(fresh(base)).await.expect("launch");
    wait_for(driver, &inst.id, InstanceState::Running, timeout).await;
    let ip = driver
        .describe(&inst.id)
        .await
        .expect("describe")
        .and_then(|i| i.private_ip);
    driver.stop(&inst.id).await.expect("stop");
    assert_eq!(
        wait_for(driver, &inst.id, InstanceState::Stopped, timeout).await,
        InstanceState::Stopped
    );
    driver.start(&inst.id).await.expect("start");
    assert_eq!(
        wait_for(driver, &inst.id, InstanceState::Running, timeout).await,
        InstanceState::Running
    );
    assert_eq!(
        driver
            .describe(&inst.id)
            .await
            .expect("describe")
            .and_then(|i| i.private_ip),
        ip
    );
    driver.terminate(&inst.id).await.expect("terminate");
}

/// Bad requests are refused with a clear error and launch nothing.
pub async fn bad_requests_are_refused(driver: &dyn CloudDriver, base: &LaunchRequest) {
    let before = driver.list().await.expect("list").len();
    let mut big = fresh(base);
    big.user_data = vec![b'x'; USER_DATA_MAX + 1];
    assert!(matches!(driver.launch(big).await, Err(CloudError::UserDataTooLarge(_))));
    let mut missing = fresh(base);
    missing.native_image = "missing-image-for-conformance".into();
    assert!(matches!(driver.launch(missing).await, Err(CloudError::NoSuchImage(_))));
    assert_eq!(driver.list().await.expect("list").len(), before);
    assert!(driver.describe("no-such-instance").await.expect("describe").is_none());
}

/// An address moves between instances in one call.
pub async fn addresses_move(driver: &dyn CloudDriver, base: &LaunchRequest, ip: IpAddr, timeout: Duration) {
    let a = driver.launch(fresh(base)).await.expect("launch a");
    let b = driver.launch(fresh(base)).await.expect("launch b");
    wait_for(driver, &a.id, InstanceState::Running, timeout).await;
    wait_for(driver, &b.id, InstanceState::Running, timeout).await;
    driver.associate_address(&a.id, ip).await.expect("associate");
    assert_eq!(
        driver
            .describe(&a.id)
            .await
            .expect("describe")
            .and_then(|i| i.public_ip),
        Some(ip)
    );
    driver.associate_address(&b.id, ip).await.expect("move");
    assert_eq!(
        driver
            .describe(&b.id)
            .await
            .expect("describe")
            .and_then(|i| i.public_ip),
        Some(ip)
    );
    // The first instance no longer has it (on EC2 it may get an address of its own back).
    assert_ne!(
        driver
            .describe(&a.id)
            .await
            .expect("describe")
            .and_then(|i| i.public_ip),
        Some(ip)
    );
    driver.disassociate_address(ip).await.expect("disassociate");
    assert_ne!(
        driver
            .describe(&b.id)
            .await
            .expect("describe")
            .and_then(|i| i.public_ip),
        Some(ip)
    );
    driver.terminate(&a.id).await.expect("terminate");
    driver.terminate(&b.id).await.expect("terminate");
}

/// Tags and firewall rules given at launch are reported back and can be replaced.
pub async fn tags_and_firewall(driver: &dyn CloudDriver, base: &LaunchRequest, timeout: Duration) {
    let mut req = fresh(base);
    req.tags = vec![
        "lb:pool=www".parse().expect("tag"),
        "role:tier=app".parse().expect("tag"),
    ];
    req.firewall = vec![rule("tcp", 8080, "0.0.0.0/0")];
    let inst = driver.launch(req.clone()).await.expect("launch");
    wait_for(driver, &inst.id, InstanceState::Running, timeout).await;
    let seen = driver.describe(&inst.id).await.expect("describe").expect("exists");
    assert_eq!(seen.tags, req.tags);
    assert_eq!(seen.firewall, req.firewall);
    let tags = vec!["lb:pool=api".parse().expect("tag")];
    driver.set_tags(&inst.id, tags.clone()).await.expect("set tags");
    let rules = vec![rule("tcp", 22, "10.0.0.0/8"), rule("udp", 53, "0.0.0.0/0")];
    driver
        .set_firewall(&inst.id, rules.clone())
        .await
        .expect("set firewall");
    let seen = driver.describe(&inst.id).await.expect("describe").expect("exists");
    assert_eq!(seen.tags, tags);
    assert_eq!(seen.firewall, rules);
    driver.set_firewall(&inst.id, vec![]).await.expect("open firewall");
    driver.terminate(&inst.id).await.expect("terminate");
    assert!(matches!(
        driver.set_tags("no-such-instance", vec![]).await,
        Err(CloudError::NoSuchInstance(_))
    ));
}

fn rule(proto: &str, port: u16, source: &str) -> FirewallRule {
    serde_json::from_value(serde_json::json!({ "protocol": proto, "ports": port.to_string(), "source": source }))
        .expect("rule")
}

/// The launch image exists; a made-up one does not.
pub async fn images(driver: &dyn CloudDriver, base: &LaunchRequest) {
    assert!(driver.image_exists(&base.native_image).await.expect("image_exists"));
    assert!(
        !driver
            .image_exists("missing-image-for-conformance")
            .await
            .expect("image_exists")
    );
}

/// A stopped instance is captured as an image that launches; a running one is refused; a
/// deleted image is gone, and deleting it again succeeds.
pub async fn capture(driver: &dyn CloudDriver, base: &LaunchRequest, timeout: Duration) {
    let inst = driver.launch(fresh(base)).await.expect("launch");
    wait_for(driver, &inst.id, InstanceState::Running, timeout).await;
    assert!(
        matches!(
            driver.capture_image(&inst.id, "conformance").await,
            Err(CloudError::WrongState { .. })
        ),
        "a running instance is not captured"
    );
    assert!(matches!(
        driver.capture_image("i-missing", "conformance").await,
        Err(CloudError::NoSuchInstance(_))
    ));
    driver.stop(&inst.id).await.expect("stop");
    assert_eq!(
        wait_for(driver, &inst.id, InstanceState::Stopped, timeout).await,
        InstanceState::Stopped
    );
    assert!(
        matches!(
            driver.capture_image(&inst.id, "bad\nname").await,
            Err(CloudError::Invalid(_))
        ),
        "a name with a control character is refused"
    );
    let image = driver.capture_image(&inst.id, "conformance").await.expect("capture");
    assert_ne!(image.native_id, base.native_image);
    let again = driver
        .capture_image(&inst.id, "conformance")
        .await
        .expect("capture again");
    assert_eq!(
        again.native_id, image.native_id,
        "a repeated capture returns the same image"
    );
    assert!(driver.image_exists(&image.native_id).await.expect("image_exists"));
    assert_eq!(
        driver.describe(&inst.id).await.expect("describe").map(|i| i.state),
        Some(InstanceState::Stopped),
        "the captured instance stays stopped"
    );
    let from_image = driver
        .launch(LaunchRequest {
            native_image: image.native_id.clone(),
            ..fresh(base)
        })
        .await
        .expect("launch from the captured image");
    assert_eq!(
        wait_for(driver, &from_image.id, InstanceState::Running, timeout).await,
        InstanceState::Running
    );
    driver.terminate(&from_image.id).await.expect("terminate");
    driver.terminate(&inst.id).await.expect("terminate");
    driver.delete_image(&image.native_id).await.expect("delete image");
    assert!(!driver.image_exists(&image.native_id).await.expect("image_exists"));
    driver
        .delete_image(&image.native_id)
        .await
        .expect("deleting twice succeeds");
}

/// A reboot keeps the instance, its address, and brings it back to running.
pub async fn reboot(driver: &dyn CloudDriver, base: &LaunchRequest, timeout: Duration) {
    let inst = driver.launch(fresh(base)).await.expect("launch");
    wait_for(driver, &inst.id, InstanceState::Running, timeout).await;
    driver.reboot(&inst.id).await.expect("reboot");
    assert_eq!(
        wait_for(driver, &inst.id, InstanceState::Running, timeout).await,
        InstanceState::Running
    );
    assert_eq!(
        driver
            .describe(&inst.id)
            .await
            .expect("describe")
            .and_then(|i| i.private_ip),
        inst.private_ip
    );
    driver.terminate(&inst.id).await.expect("terminate");
}

pub async fn run_all(driver: &dyn CloudDriver, base: &LaunchRequest, public_ip: IpAddr, timeout: Duration) {
    images(driver, base).await;
    lifecycle(driver, base, timeout).await;
    tags_and_firewall(driver, base, timeout).await;
    reboot(driver, base, timeout).await;
    launch_is_idempotent_per_server(driver, base).await;
    stop_start(driver, base, timeout).await;
    bad_requests_are_refused(driver, base).await;
    addresses_move(driver, base, public_ip, timeout).await;
    capture(driver, base, timeout).await;
}
