//! Rebundled images: boot to operational from the base image and from the image its array got
//! by `stratus server rebundle`, for a template whose boot has a heavy per-image step; the
//! rebundle's duration and the image's size; and the time to scale the array from 1 to 20.
//!
//! ```sh
//! cargo bench -p stratus-cli --bench rebundle   # as root; STRATUS_BENCH_HEAVY_ROUNDS=2000
//! ```
//!
//! The heavy step stands for a build: `ROUNDS` times, 256 KiB from /dev/urandom hashed with
//! `sha256sum` (two processes each), the hashes kept in /opt/dataset. Boots are measured one at
//! a time (the server's `launched_at` to `operational_at`, as the control plane records them),
//! three from each image, so two cores are not shared between boots.

#[path = "support/plane.rs"]
mod plane;

use std::time::{Duration, Instant};

use plane::{Cleanup, Plane};
use serde_json::Value;

fn boot_secs(s: &Value) -> f64 {
    let t = |k: &str| chrono::DateTime::parse_from_rfc3339(s[k].as_str().expect("time")).expect("time");
    (t("operational_at") - t("launched_at")).as_seconds_f64()
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// The array's live members, once there are `n` and all are operational (bounded: 15 min).
fn members(plane: &Plane, n: usize) -> Vec<Value> {
    let until = Instant::now() + Duration::from_secs(900);
    loop {
        let all: Value =
            serde_json::from_str(&plane.stratus(&["--json", "server", "list", "--deployment", "bench", "--all-pages"]))
                .expect("json");
        let m: Vec<Value> = all
            .as_array()
            .into_iter()
            .flatten()
            .filter(|s| s["array"] == "workers" && s["state"] != "terminated")
            .cloned()
            .collect();
        assert!(m.iter().all(|s| s["state"] != "stranded"), "{m:?}");
        if m.len() == n && m.iter().all(|s| s["state"] == "operational") {
            return m;
        }
        assert!(Instant::now() < until, "the array never reached {n}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn main() {
    let rounds: u32 = std::env::var("STRATUS_BENCH_HEAVY_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2000);
    let tmp = tempfile::Builder::new()
        .prefix("stratus-bench-rb-")
        .tempdir_in("/var/tmp")
        .expect("tmp");
    let data = tmp.path().join("data");
    std::fs::create_dir_all(&data).expect("data");
    let _cleanup = Cleanup::for_cloud(&data, "local");
    let plane = Plane::start(&data, &["--boot-deadline", "900"]);
    let mut b = [0u8; 1];
    getrandom::fill(&mut b).expect("random");
    let file = tmp.path().join("f.toml");
    std::fs::write(
        &file,
        format!(
            "[[cloud]]\nname = \"local\"\ndriver = \"local\"\nregions = [{{ name = \"local\" }}]\n\
             sizes = [{{ name = \"small\", cpus = 1, memory = \"256MiB\" }}]\n[cloud.local]\n\
             subnet = \"10.{}.0.0/22\"\noutbound_nat = false\n",
            230 + b[0] % 10
        ),
    )
    .expect("write");
    plane.stratus(&["apply", "-f", file.to_str().expect("path")]);
    plane.stratus(&["image", "build", "--cloud", "local"]);
    let doc = format!(
        r##"
[[script]]
name = "build-dataset"
frequency = "per-image"
body = """#!/bin/sh
set -e
mkdir -p /opt/dataset
i=0
while [ $i -lt {rounds} ]; do head -c 262144 /dev/urandom | sha256sum; i=$((i+1)); done > /opt/dataset/index
touch /opt/dataset/done
"""

[[script]]
name = "start-app"
frequency = "per-instance"
body = """#!/bin/sh
set -e
test -f /opt/dataset/done
echo "serving $(wc -l < /opt/dataset/index) records"
"""

[[template]]
name = "worker"
image = "debian-12"
size = "small"
boot_scripts = ["build-dataset", "start-app"]

[deployment]
name = "bench"
cloud = "local"

[[array]]
name = "workers"
template = "worker"
min = 0
max = 20
desired = 0
"##
    );
    std::fs::write(&file, doc).expect("write");
    plane.stratus(&["apply", "-f", file.to_str().expect("path")]);

    let mut base = vec![];
    for i in 1..=3 {
        let name = format!("base-{i}");
        plane.stratus(&["server", "launch", &name, "-d", "bench", "-t", "worker"]);
        let s = plane.wait(&format!("bench/{name}"), "operational");
        base.push(boot_secs(&s));
    }
    println!("boot from the base image ({rounds} rounds of the heavy step): {base:.1?} s");

    let started = Instant::now();
    let r: Value =
        serde_json::from_str(&plane.stratus(&["--json", "server", "rebundle", "bench/base-1", "--for", "workers"]))
            .expect("json");
    let wall = started.elapsed().as_secs_f64();
    let size = r["size_bytes"].as_u64().unwrap_or(0);
    println!(
        "rebundle: {:.1} s (request to image in place; {wall:.1} s with the CLI), image {:.0} MB",
        r["seconds"].as_f64().unwrap_or(0.0),
        size as f64 / 1e6
    );

    let mut bundled = vec![];
    for n in 1..=3 {
        plane.stratus(&["array", "scale", "bench/workers", &n.to_string()]);
        let m = members(&plane, n);
        let newest = m
            .iter()
            .max_by_key(|s| s["created_at"].as_str().unwrap_or_default().to_string())
            .expect("member");
        assert_eq!(newest["image"], "worker-bundle", "{newest}");
        bundled.push(boot_secs(newest));
    }
    println!("boot from the rebundled image: {bundled:.1?} s");
    let (b, f) = (median(base), median(bundled));
    println!(
        "boot to operational, median of 3: base {b:.2} s, rebundled {f:.2} s: {:.1}x faster",
        b / f
    );

    plane.stratus(&["array", "scale", "bench/workers", "1"]);
    members(&plane, 1);
    let scale = Instant::now();
    plane.stratus(&["array", "scale", "bench/workers", "20"]);
    let m = members(&plane, 20);
    println!(
        "scale 1 -> 20 (rebundled image): all operational in {:.1} s; member boots median {:.1} s, max {:.1} s",
        scale.elapsed().as_secs_f64(),
        median(m.iter().map(boot_secs).collect()),
        m.iter().map(boot_secs).fold(0.0, f64::max)
    );
    plane.stratus(&["array", "scale", "bench/workers", "0"]);
    members(&plane, 0);
}
