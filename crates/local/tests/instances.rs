//! The local driver with real instances: namespaces, overlay, cgroups, network, firewall,
//! elastic IPs, restarts, bad input. Needs root, iproute2, nftables and busybox-static.

mod support;

use std::time::Duration;

use stratus_cloud::{CloudDriver, CloudError, InstanceState, USER_DATA_MAX, conformance};
use support::{TestCloud, get};

const T: Duration = Duration::from_secs(10);

#[tokio::test]
async fn passes_the_driver_conformance_suite() {
    let t = TestCloud::new().await;
    let base = t.request("conformance");
    conformance::run_all(&*t.cloud, &base, t.pool_address(3).into(), T).await;
    assert!(
        t.cloud.list().await.expect("list").is_empty(),
        "conformance leaves nothing behind"
    );
}

#[tokio::test]
async fn an_instance_has_its_own_namespaces_root_hostname_and_limits() {
    let t = TestCloud::new().await;
    let inst = t.cloud.launch(t.request("web-1")).await.expect("launch");
    assert_eq!(inst.state, InstanceState::Running);
    let pid = t.init_pid(&inst.id).expect("init runs");
    for ns in ["net", "mnt", "uts", "pid", "ipc"] {
        let host = std::fs::read_link(format!("/proc/self/ns/{ns}")).expect("ns");
        let inside = std::fs::read_link(format!("/proc/{pid}/ns/{ns}")).expect("ns");
        assert_ne!(host, inside, "{ns} namespace is the instance's own");
    }
    assert_eq!(t.exec(&inst.id, "hostname").1.trim(), "web-1");
    assert_eq!(
        t.exec(&inst.id, "echo $$").1.trim().parse::<u32>().map(|p| p > 1),
        Ok(true)
    );
    let (_, ps) = t.exec(&inst.id, "cat /proc/1/cmdline | tr '\\0' ' '");
    assert!(ps.contains("stage2"), "PID 1 inside is init: {ps}");
    // The overlay: writes land in the instance's own layer, not in the image.
    t.exec(&inst.id, "echo mine > /root/file");
    let upper = t.cloud.instance_dir(&inst.id).join("upper/root/file");
    assert_eq!(std::fs::read_to_string(upper).expect("upper layer").trim(), "mine");
    // The memory limit comes from the size (256 MiB).
    let cg = t.cgroup_dir(&inst.id);
    let limit = std::fs::read_to_string(cg.join("memory.limit_in_bytes"))
        .or_else(|_| std::fs::read_to_string(cg.join("memory.max")))
        .expect("memory limit");
    assert_eq!(limit.trim(), (256u64 * 1024 * 1024).to_string());
    // One cpu: 100 ms of CPU time per 100 ms period.
    let cpu = cg
        .parent()
        .and_then(|p| p.parent())
        .and_then(|p| p.parent())
        .and_then(|p| p.parent());
    let quota = std::fs::read_to_string(cg.join("cpu.max")).ok().or_else(|| {
        let v1 = cpu?.join("cpu").join(cg.strip_prefix(cpu?.join("memory")).ok()?);
        std::fs::read_to_string(v1.join("cpu.cfs_quota_us")).ok()
    });
    assert_eq!(
        quota.as_deref().map(|q| q.split_whitespace().next().unwrap_or("")),
        Some("100000")
    );
    assert!(t.cloud.memory_usage(&inst.id).is_some_and(|m| m > 0));
    // Init reaps orphans: a backgrounded child whose parent exits leaves no zombie.
    t.exec(&inst.id, "(sleep 0.2 &) ; true");
    // The orphan is reparented to init and must be reaped once it exits (polled: the
    // machine may be slow, but a zombie never goes away by itself).
    let mut states = String::new();
    for _ in 0..100 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        states = t
            .exec(&inst.id, "cat /proc/[0-9]*/stat 2>/dev/null | awk '{print $2, $3}'")
            .1;
        if !states.contains("sleep") {
            break;
        }
    }
    assert!(!states.contains("(sleep)"), "the orphan was reaped: {states}");
    assert!(!states.lines().any(|l| l.ends_with(" Z")), "no zombies: {states}");
}

#[tokio::test]
async fn instances_reach_each_other_the_host_and_obey_the_firewall() {
    let t = TestCloud::new().await;
    let a = t.cloud.launch(t.request("app-a")).await.expect("launch a");
    let b = t.cloud.launch(t.request("app-b")).await.expect("launch b");
    let (a_ip, b_ip) = (a.private_ip.expect("ip"), b.private_ip.expect("ip"));
    assert_ne!(a_ip, b_ip);
    let url = format!("http://{a_ip}:8080/");
    let mut body = None;
    for _ in 0..100 {
        body = get(&url).await;
        if body.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        body.as_deref().map(str::trim),
        Some("app-a"),
        "the host reaches the instance"
    );
    let fetch = || t.http_from(&b.id, a_ip, 8080, "/");
    assert_eq!(
        fetch().as_deref().map(str::trim),
        Some("app-a"),
        "instances reach each other"
    );
    let gw = t.cloud.network().gateway();
    assert!(t.exec(&b.id, &format!("ping -c 1 -W 2 {gw}")).0, "the gateway answers");
    // Only the host (the gateway address) may reach 8080 now.
    let rules = vec![
        serde_json::from_value(serde_json::json!({"protocol": "tcp", "ports": "8080", "source": format!("{gw}/32")}))
            .expect("rule"),
    ];
    t.cloud.set_firewall(&a.id, rules).await.expect("firewall");
    let dropped = t.raw_from(&b.id, a_ip, 8080, "/");
    assert!(
        dropped.contains("timed out") && !dropped.contains("HTTP"),
        "the firewall drops b's packets (no answer, not even a refusal): {dropped}"
    );
    assert_eq!(
        get(&url).await.as_deref().map(str::trim),
        Some("app-a"),
        "the host is allowed"
    );
    t.cloud.set_firewall(&a.id, vec![]).await.expect("open");
    assert!(fetch().is_some(), "open again");
}

#[tokio::test]
async fn an_elastic_ip_reaches_its_instance_and_moves_at_once() {
    let t = TestCloud::new().await;
    let a = t.cloud.launch(t.request("eip-a")).await.expect("launch a");
    let b = t.cloud.launch(t.request("eip-b")).await.expect("launch b");
    let eip = t.pool_address(5);
    t.cloud.associate_address(&a.id, eip.into()).await.expect("associate");
    let url = format!("http://{eip}:8080/");
    let mut body = None;
    for _ in 0..100 {
        body = get(&url).await;
        if body.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(body.as_deref().map(str::trim), Some("eip-a"));
    t.cloud.associate_address(&b.id, eip.into()).await.expect("move");
    // wait until b's httpd is up, then the very next request goes to b
    let b_url = format!("http://{}:8080/", b.private_ip.expect("ip"));
    for _ in 0..100 {
        if get(&b_url).await.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        get(&url).await.as_deref().map(str::trim),
        Some("eip-b"),
        "moved at once"
    );
    // From an instance (hairpin through the host).
    let from_a = t.http_from(&a.id, eip, 8080, "/");
    assert_eq!(from_a.as_deref().map(str::trim), Some("eip-b"));
    t.cloud.disassociate_address(eip.into()).await.expect("disassociate");
    assert!(get(&url).await.is_none());
    let outside = t.cloud.associate_address(&a.id, "192.0.2.1".parse().expect("ip")).await;
    assert!(matches!(outside, Err(CloudError::Invalid(_))), "{outside:?}");
}

// Multi-threaded: the test's blocking in-instance request is answered by the metadata
// service running on this same runtime.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn instances_outlive_the_driver_and_dead_ones_are_reported() {
    let mut t = TestCloud::new().await;
    let a = t.cloud.launch(t.request("survivor")).await.expect("launch");
    let b = t.cloud.launch(t.request("victim")).await.expect("launch");
    let pid_before = t.init_pid(&a.id);
    t.reopen().await;
    let seen = t.cloud.describe(&a.id).await.expect("describe").expect("known");
    assert_eq!(seen.state, InstanceState::Running);
    assert_eq!(t.init_pid(&a.id), pid_before, "the same processes, not a restart");
    let ud = t.http_from(&a.id, "169.254.169.254", 80, "/latest/user-data");
    assert_eq!(
        ud.as_deref(),
        Some("#!/bin/sh\necho hello\n"),
        "user-data is served after a restart"
    );
    // Kill b's processes behind the driver's back.
    let pid = t.init_pid(&b.id).expect("running");
    std::process::Command::new("kill")
        .args(["-9", &pid.to_string()])
        .status()
        .expect("kill");
    let mut dead_state = InstanceState::Running;
    for _ in 0..100 {
        dead_state = t.cloud.describe(&b.id).await.expect("describe").expect("known").state;
        if dead_state == InstanceState::Stopped {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(dead_state, InstanceState::Stopped);
    let dead = t.cloud.describe(&b.id).await.expect("describe").expect("known");
    assert_eq!(dead.state, InstanceState::Stopped);
    assert!(dead.state_reason.is_some_and(|r| r.contains("processes are gone")));
    t.cloud.start(&b.id).await.expect("start again");
    assert_eq!(
        t.cloud.describe(&b.id).await.expect("d").expect("k").state,
        InstanceState::Running
    );
}

#[tokio::test]
async fn terminate_leaves_no_trace() {
    let t = TestCloud::new().await;
    let a = t.cloud.launch(t.request("gone")).await.expect("launch");
    let dir = t.cloud.instance_dir(&a.id);
    let netns = t.cloud.netns(&a.id).expect("netns");
    t.cloud
        .associate_address(&a.id, t.pool_address(2).into())
        .await
        .expect("eip");
    t.cloud.terminate(&a.id).await.expect("terminate");
    assert!(!dir.exists(), "instance directory removed");
    assert!(!t.cgroup_dir(&a.id).exists(), "cgroup removed");
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").expect("mountinfo");
    assert!(!mounts.contains(&a.id), "no mount left");
    let list = std::process::Command::new("ip")
        .args(["netns", "list"])
        .output()
        .expect("ip");
    assert!(
        !String::from_utf8_lossy(&list.stdout).contains(&netns),
        "namespace removed"
    );
    let veth = format!("sv{}", &a.id[2..15]);
    assert!(
        !std::path::Path::new("/sys/class/net").join(veth).exists(),
        "veth removed"
    );
    let table = std::process::Command::new("nft")
        .args(["list", "table", "ip", &format!("stratus-{}", t.config.network)])
        .output()
        .expect("nft");
    assert!(!String::from_utf8_lossy(&table.stdout).contains(&a.private_ip.expect("ip").to_string()));
    // The address lease is free again: the next instance gets the same address.
    let b = t.cloud.launch(t.request("next")).await.expect("launch");
    assert_eq!(b.private_ip, a.private_ip);
}

#[tokio::test]
async fn bad_launches_are_refused_and_leave_nothing() {
    let t = TestCloud::with_subnet(29).await;
    let mut bad = t.request("Not_A_Label");
    assert!(matches!(t.cloud.launch(bad.clone()).await, Err(CloudError::Invalid(_))));
    bad.hostname = "a".repeat(64);
    assert!(matches!(t.cloud.launch(bad).await, Err(CloudError::Invalid(_))));
    let mut big = t.request("big");
    big.user_data = vec![b'x'; USER_DATA_MAX + 1];
    assert!(matches!(
        t.cloud.launch(big).await,
        Err(CloudError::UserDataTooLarge(_))
    ));
    let mut missing = t.request("missing");
    missing.native_image = "img-does-not-exist".into();
    assert!(matches!(t.cloud.launch(missing).await, Err(CloudError::NoSuchImage(_))));
    // A /29 holds five instances (the gateway takes one address).
    let mut ids = vec![];
    for i in 0..5 {
        ids.push(t.cloud.launch(t.request(&format!("n{i}"))).await.expect("fits").id);
    }
    let full = t.cloud.launch(t.request("n5")).await;
    assert!(matches!(full, Err(CloudError::Capacity(_))), "{full:?}");
    assert_eq!(t.cloud.list().await.expect("list").len(), 5);
    let dirs = std::fs::read_dir(t.config.state_dir.join("instances"))
        .expect("dir")
        .count();
    assert_eq!(dirs, 5, "no directory for refused launches");
}

#[tokio::test]
async fn an_instance_whose_init_cannot_start_is_refused_and_leaves_nothing() {
    let t = TestCloud::new().await;
    // A cloud of its own (same image store), so `t`'s network is left alone.
    let mut broken = support::config(t.config.state_dir.parent().expect("tmp"), 24);
    broken.state_dir = t.config.state_dir.clone();
    broken.images_dir = t.config.images_dir.clone();
    broken.init = vec!["/bin/false".into()];
    let _cleanup = support::Purge(broken.network.clone());
    let broken_net = broken.network.clone();
    let cloud = stratus_local::LocalCloud::open(broken).await.expect("open");
    let err = cloud.launch(t.request("doomed")).await.expect_err("init fails");
    assert!(matches!(err, CloudError::StartFailed(_)), "{err}");
    assert!(err.to_string().contains("init exited"), "{err}");
    assert!(cloud.list().await.expect("list").is_empty());
    let dirs = std::fs::read_dir(t.config.state_dir.join("instances"))
        .expect("dir")
        .count();
    assert_eq!(dirs, 0, "no instance directory left");
    let ns = std::process::Command::new("ip")
        .args(["netns", "list"])
        .output()
        .expect("ip");
    let prefix = format!("stratus-{broken_net}-");
    assert!(
        !String::from_utf8_lossy(&ns.stdout).contains(&prefix),
        "no namespace left"
    );
    let groups = ["/sys/fs/cgroup", "/sys/fs/cgroup/memory"]
        .iter()
        .map(|r| std::path::Path::new(r).join("stratus").join(&broken_net))
        .filter_map(|d| std::fs::read_dir(d).ok())
        .map(|rd| rd.filter_map(Result::ok).filter(|e| e.path().is_dir()).count())
        .sum::<usize>();
    assert_eq!(groups, 0, "no cgroup left");
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").expect("mountinfo");
    assert!(
        !mounts.contains(&t.config.state_dir.display().to_string()),
        "no mount left"
    );
}

#[tokio::test]
async fn an_instance_whose_image_vanished_fails_to_start_cleanly() {
    let t = TestCloud::new().await;
    let a = t.cloud.launch(t.request("fragile")).await.expect("launch");
    t.cloud.stop(&a.id).await.expect("stop");
    assert_eq!(
        t.cloud.describe(&a.id).await.expect("d").expect("k").state,
        InstanceState::Stopped
    );
    t.cloud.images().remove(&t.image).expect("remove image");
    let err = t.cloud.start(&a.id).await.expect_err("no image");
    assert!(matches!(err, CloudError::StartFailed(_)), "{err}");
    assert!(err.to_string().contains(&t.image), "{err}");
}

/// A capture flattens the image and the instance's own changes, deletions included, into a new
/// image that launches with exactly that tree; the base image is untouched; and an image in use
/// is not deleted.
#[tokio::test]
async fn a_capture_holds_the_instances_changes_and_deletions() {
    let t = TestCloud::new().await;
    let inst = t.cloud.launch(t.request("golden")).await.expect("launch");
    let (_, before) = t.exec(&inst.id, "ls /etc | head -1");
    let victim = before.trim().to_string();
    assert!(!victim.is_empty());
    let golden_id = t.exec(&inst.id, "cat /etc/machine-id").1;
    t.exec(
        &inst.id,
        &format!("mkdir -p /opt/app && echo built > /opt/app/out && rm -rf /etc/{victim} && sync"),
    );
    t.cloud.stop(&inst.id).await.expect("stop");
    let image = t.cloud.capture_image(&inst.id, "golden-v1").await.expect("capture");
    assert!(image.size_bytes.is_some_and(|b| b > 0));
    let child = t.cloud.launch(t.request("child")).await;
    let from = t
        .cloud
        .launch(stratus_cloud::LaunchRequest {
            native_image: image.native_id.clone(),
            ..t.request("from-image")
        })
        .await
        .expect("launch from the capture");
    assert_eq!(t.exec(&from.id, "cat /opt/app/out").1.trim(), "built");
    assert_eq!(
        t.exec(&from.id, &format!("test -e /etc/{victim} && echo there || echo gone"))
            .1
            .trim(),
        "gone",
        "a deletion in the instance is a deletion in the image"
    );
    assert_ne!(
        t.exec(&from.id, "cat /etc/machine-id").1,
        golden_id,
        "generalized: the new instance has its own machine id"
    );
    // The base image is as it was.
    let child = child.expect("launch from the base");
    assert_eq!(
        t.exec(&child.id, &format!("test -e /etc/{victim} && echo there || echo gone"))
            .1
            .trim(),
        "there"
    );
    assert!(matches!(
        t.cloud.delete_image(&image.native_id).await,
        Err(CloudError::Invalid(m)) if m.contains("terminate it first")
    ));
    for id in [&inst.id, &from.id, &child.id] {
        t.cloud.terminate(id).await.expect("terminate");
    }
    t.cloud.delete_image(&image.native_id).await.expect("delete");
    assert!(!t.cloud.image_exists(&image.native_id).await.expect("exists"));
}
