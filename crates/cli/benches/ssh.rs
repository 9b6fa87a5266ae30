//! Managed SSH across many servers: the time from a grant (a key registered for a user with
//! `server_login`) until the user can log in, and from a revocation until a login is refused,
//! on every server, with real sshd in local instances and the host's `ssh` client.
//!
//! ```sh
//! cargo bench -p stratus-cli --bench ssh        # as root; STRATUS_BENCH_SSH_SERVERS=100
//! ```
//!
//! A server's latency is from the API call's answer to the moment the control plane records
//! that server's agent acknowledged the new state (polled every 20 ms through
//! `GET /users/carol/access`): the agent answers after it has rewritten the account's keys (and
//! ended sessions). Then every server is checked with a real `ssh` login, one at a time, which
//! must succeed at the first attempt after a grant and fail after a revocation. (Probing all
//! servers with ssh in parallel instead measures the 2-core machine running a hundred ssh
//! handshakes at once, not Stratus.)

#[path = "support/plane.rs"]
mod plane;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use plane::{Cleanup, Plane};

fn login(key: &Path, ip: &str) -> bool {
    Command::new("ssh")
        .arg("-i")
        .arg(key)
        .args([
            "-o",
            "BatchMode=yes",
            "-o",
            "IdentitiesOnly=yes",
            "-o",
            "StrictHostKeyChecking=no",
            "-o",
            "UserKnownHostsFile=/dev/null",
            "-o",
            "ConnectTimeout=3",
            "-o",
            "LogLevel=QUIET",
            "-l",
            "carol",
            ip,
            "true",
        ])
        .stdin(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Poll the user's access view until every server acknowledged the state where `login` is
/// `want`; each server's latency in ms from `since`.
fn acknowledged(plane: &Plane, n: usize, want: bool, since: Instant) -> Vec<f64> {
    let token = std::fs::read_to_string(plane.data.join("admin.token")).expect("token");
    let url = format!("{}/api/v1/users/carol/access", plane.url);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("rt");
    rt.block_on(async {
        let http = reqwest::Client::new();
        let mut done: std::collections::BTreeMap<String, f64> = Default::default();
        let until = since + Duration::from_secs(120);
        while done.len() < n {
            let v: serde_json::Value = http
                .get(&url)
                .bearer_auth(token.trim())
                .send()
                .await
                .expect("access")
                .json()
                .await
                .expect("json");
            let at = since.elapsed().as_secs_f64() * 1000.0;
            for s in v.as_array().into_iter().flatten() {
                if s["acknowledged"] == true && s["login"] == want {
                    done.entry(s["server"].as_str().unwrap_or_default().to_string())
                        .or_insert(at);
                }
            }
            assert!(
                Instant::now() < until,
                "only {} of {n} servers acknowledged",
                done.len()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        done.into_values().collect()
    })
}

/// Every server, one at a time: the login succeeds (`want`) or is refused at the first try.
fn check_all(key: &Path, ips: &[String], want: bool) {
    let wrong: Vec<&String> = ips.iter().filter(|ip| login(key, ip) != want).collect();
    assert!(
        wrong.is_empty(),
        "{} servers did not {}: {wrong:?}",
        wrong.len(),
        if want { "let carol in" } else { "refuse carol" }
    );
}

fn summary(what: &str, mut v: Vec<f64>) {
    v.sort_by(f64::total_cmp);
    let p = |q: f64| v[((v.len() as f64 - 1.0) * q).round() as usize];
    println!(
        "{what} on {} servers: median {:.0} ms, p95 {:.0} ms, max (every server) {:.0} ms",
        v.len(),
        p(0.5),
        p(0.95),
        p(1.0)
    );
}

fn main() {
    let n: usize = std::env::var("STRATUS_BENCH_SSH_SERVERS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100);
    let tmp = tempfile::Builder::new()
        .prefix("stratus-bench-ssh-")
        .tempdir_in("/var/tmp")
        .expect("tmp");
    let data = tmp.path().join("data");
    std::fs::create_dir_all(&data).expect("data");
    let _cleanup = Cleanup::for_cloud(&data, "local");
    let plane = Plane::start(&data, &["--boot-deadline", "900"]);
    let mut b = [0u8; 1];
    getrandom::fill(&mut b).expect("random");
    let file = tmp.path().join("f.toml");
    // A /22: room for hundreds of instances.
    std::fs::write(
        &file,
        format!(
            "[[cloud]]\nname = \"local\"\ndriver = \"local\"\nregions = [{{ name = \"local\" }}]\n\
             sizes = [{{ name = \"tiny\", cpus = 1, memory = \"128MiB\" }}]\n[cloud.local]\n\
             subnet = \"10.{}.0.0/22\"\noutbound_nat = false\n",
            240 + b[0] % 10
        ),
    )
    .expect("write");
    plane.stratus(&["apply", "-f", file.to_str().expect("path")]);
    plane.stratus(&["image", "build", "--cloud", "local"]);
    let mut doc = String::from(
        "[[template]]\nname = \"box\"\nimage = \"debian-12\"\nsize = \"tiny\"\n[deployment]\nname = \"fleet\"\ncloud = \"local\"\n",
    );
    for i in 0..n {
        doc.push_str(&format!("[[server]]\nname = \"s{i:03}\"\ntemplate = \"box\"\n"));
    }
    std::fs::write(&file, doc).expect("write");
    let launched = Instant::now();
    plane.stratus(&["apply", "-f", file.to_str().expect("path")]);
    let mut ips = vec![];
    for i in 0..n {
        let key = format!("fleet/s{i:03}");
        let until = Instant::now() + Duration::from_secs(900);
        loop {
            let v: serde_json::Value =
                serde_json::from_str(&plane.stratus(&["--json", "server", "show", &key])).expect("json");
            if v["state"] == "operational" {
                ips.push(v["private_ip"].as_str().expect("ip").to_string());
                break;
            }
            assert!(v["state"] != "stranded" && Instant::now() < until, "{key}: {v}");
            std::thread::sleep(Duration::from_millis(200));
        }
    }
    println!("{n} servers operational in {:.1} s", launched.elapsed().as_secs_f64());

    let key = tmp.path().join("carol_key");
    let ok = Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-f"])
        .arg(&key)
        .status()
        .expect("ssh-keygen");
    assert!(ok.success());
    plane.stratus(&["user", "create", "carol", "--role", "server_login:fleet"]);
    // The grant: the key goes in; every server lets carol in.
    let public = format!("{}.pub", key.display());
    let call = Instant::now();
    plane.stratus(&["user", "add-key", "carol", "--key-file", &public]);
    println!(
        "the grant's API call (it pushes the new state to every agent before answering): {:.0} ms",
        call.elapsed().as_secs_f64() * 1000.0
    );
    let granted = Instant::now();
    summary(
        "grant -> acknowledged (login works)",
        acknowledged(&plane, n, true, granted),
    );
    check_all(&key, &ips, true);
    println!("checked: carol logs in to all {n} servers at the first attempt");
    // The revocation: her role goes; every server refuses her.
    let call = Instant::now();
    plane.stratus(&["user", "roles", "carol"]);
    println!(
        "the revocation's API call: {:.0} ms",
        call.elapsed().as_secs_f64() * 1000.0
    );
    let revoked = Instant::now();
    summary(
        "revoke -> acknowledged (login refused)",
        acknowledged(&plane, n, false, revoked),
    );
    check_all(&key, &ips, false);
    println!("checked: all {n} servers refuse carol at the first attempt");
}
