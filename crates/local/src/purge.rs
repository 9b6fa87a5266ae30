//! Removing everything a local cloud made on the host, synchronously (usable from `Drop`,
//! `quickstart --down`, and test clean-up): processes, cgroups, mounts, namespaces, veths,
//! the bridge, the nftables table, and optionally its state directory.

use std::path::Path;
use std::process::Command;

use rustix::mount::UnmountFlags;
use rustix::process::{Pid, Signal};

const CGROUP_ROOTS: &[&str] = &[
    "/sys/fs/cgroup/stratus",
    "/sys/fs/cgroup/memory/stratus",
    "/sys/fs/cgroup/cpu/stratus",
    "/sys/fs/cgroup/pids/stratus",
];

/// Tear down the cloud with network tag `network`; best effort, every step is attempted.
pub fn purge(network: &str, state_dir: Option<&Path>) {
    for root in CGROUP_ROOTS {
        let net = Path::new(root).join(network);
        if let Ok(rd) = std::fs::read_dir(&net) {
            for e in rd.filter_map(Result::ok).filter(|e| e.path().is_dir()) {
                kill_and_remove(&e.path());
            }
        }
        let _ = std::fs::remove_dir(&net);
    }
    if let Some(dir) = state_dir {
        unmount_under(dir);
    }
    if let Ok(out) = Command::new("ip").args(["netns", "list"]).output() {
        let prefix = format!("stratus-{network}-");
        for line in String::from_utf8_lossy(&out.stdout).lines() {
            if let Some(name) = line.split_whitespace().next().filter(|n| n.starts_with(&prefix)) {
                let _ = Command::new("ip").args(["netns", "del", name]).output();
            }
        }
    }
    let _ = Command::new("ip")
        .args(["link", "del", "dev", &format!("st-{network}")])
        .output();
    for family in ["ip", "bridge"] {
        let _ = Command::new("nft")
            .args(["delete", "table", family, &format!("stratus-{network}")])
            .output();
    }
    if let Some(dir) = state_dir {
        let _ = std::fs::remove_dir_all(dir);
    }
}

/// Remove the (empty) per-cloud cgroup directories.
pub fn remove_cgroup_parents(network: &str) {
    for root in CGROUP_ROOTS {
        let _ = std::fs::remove_dir(Path::new(root).join(network));
    }
}

/// Network tags with something left on the host (a bridge, cgroups or namespaces).
pub fn networks_on_host() -> Vec<String> {
    let mut found = std::collections::BTreeSet::new();
    if let Ok(rd) = std::fs::read_dir("/sys/class/net") {
        for e in rd.filter_map(Result::ok) {
            if let Some(n) = e.file_name().to_str().and_then(|n| n.strip_prefix("st-")) {
                found.insert(n.to_string());
            }
        }
    }
    for root in CGROUP_ROOTS {
        if let Ok(rd) = std::fs::read_dir(root) {
            for e in rd.filter_map(Result::ok).filter(|e| e.path().is_dir()) {
                if let Some(n) = e.file_name().to_str() {
                    found.insert(n.to_string());
                }
            }
        }
    }
    found.into_iter().collect()
}

fn kill_and_remove(group: &Path) {
    for _ in 0..200 {
        let pids: Vec<i32> = std::fs::read_to_string(group.join("cgroup.procs"))
            .map(|s| s.lines().filter_map(|l| l.trim().parse().ok()).collect())
            .unwrap_or_default();
        if pids.is_empty() {
            break;
        }
        for p in pids.into_iter().filter_map(Pid::from_raw) {
            let _ = rustix::process::kill_process(p, Signal::KILL);
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    let _ = std::fs::remove_dir(group);
}

/// Lazily unmount every mount point under `dir`, deepest first.
pub fn unmount_under(dir: &Path) {
    let Ok(info) = std::fs::read_to_string("/proc/self/mountinfo") else {
        return;
    };
    let mut points: Vec<String> = info
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .filter(|m| Path::new(m).starts_with(dir))
        .map(str::to_string)
        .collect();
    points.sort_by_key(|p| std::cmp::Reverse(p.len()));
    for p in points {
        let _ = rustix::mount::unmount(p.as_str(), UnmountFlags::DETACH);
    }
}
