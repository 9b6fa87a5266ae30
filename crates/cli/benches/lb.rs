//! Load-balancer wiring on the local cloud, measured: the example deployment
//! (examples/lb-and-app.toml: HAProxy in front of nginx servers, real instances) under a steady
//! client, while app servers are added and terminated one after another.
//!
//! ```sh
//! cargo bench -p stratus-cli --bench lb        # as root; STRATUS_BENCH_LB_CYCLES=5
//! ```
//!
//! Per cycle: a server is launched; "operational → routed" is from its `operational_at` to the
//! first answer the client gets from it through the load balancer. Then it is terminated;
//! "terminate → out of rotation" is from the terminate request to the last answer it gave.
//! The client sends one request every 10 ms (a new connection each) the whole time; every
//! request that fails or gets a status other than 200 counts.

#[path = "support/plane.rs"]
mod plane;

use std::io::{Read, Write};
use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use plane::{Cleanup, Plane};

/// Each request: when it ended, and the body of a 200 (none: it failed).
type Log = Vec<(SystemTime, Option<String>)>;

/// GET / with a fresh connection; the body of a 200.
fn get(addr: &str) -> Option<String> {
    let sock: std::net::SocketAddr = addr.parse().ok()?;
    let mut s = std::net::TcpStream::connect_timeout(&sock, Duration::from_secs(2)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    s.write_all(b"GET / HTTP/1.0\r\nHost: x\r\n\r\n").ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).ok()?;
    let (head, body) = out.split_once("\r\n\r\n")?;
    head.contains(" 200 ").then(|| body.trim().to_string())
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    if v.is_empty() { f64::NAN } else { v[v.len() / 2] }
}

fn main() {
    let cycles: usize = std::env::var("STRATUS_BENCH_LB_CYCLES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(5);
    let tmp = tempfile::Builder::new()
        .prefix("stratus-bench-lb-")
        .tempdir_in("/var/tmp")
        .expect("tmp");
    let data = tmp.path().join("data");
    std::fs::create_dir_all(&data).expect("data");
    let _cleanup = Cleanup::for_cloud(&data, "local");
    let plane = Plane::start(&data, &[]);
    let mut b = [0u8; 2];
    getrandom::fill(&mut b).expect("random");
    let cloud = tmp.path().join("cloud.toml");
    std::fs::write(
        &cloud,
        format!(
            "[[cloud]]\nname = \"local\"\ndriver = \"local\"\nregions = [{{ name = \"local\" }}]\n\
             sizes = [{{ name = \"small\", cpus = 1, memory = \"512MiB\" }}]\n[cloud.local]\n\
             subnet = \"10.{}.{}.0/24\"\noutbound_nat = false\n",
            200 + b[0] % 50,
            b[1]
        ),
    )
    .expect("write");
    plane.stratus(&["apply", "-f", cloud.to_str().expect("path")]);
    plane.stratus(&["image", "build", "--cloud", "local"]);
    let examples = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples");
    let site = tmp.path().join("site.tar.gz");
    let ok = Command::new("tar")
        .arg("-C")
        .arg(examples.join("site"))
        .arg("-czf")
        .arg(&site)
        .arg(".")
        .status()
        .expect("tar");
    assert!(ok.success());
    plane.stratus(&["artifact", "mb", "www"]);
    plane.stratus(&["artifact", "put", site.to_str().expect("path"), "www/site.tar.gz"]);
    plane.stratus(&["apply", "-f", examples.join("lb-and-app.toml").to_str().expect("path")]);
    for name in ["www/lb-1", "www/app-1", "www/app-2"] {
        plane.wait(name, "operational");
    }
    let lb = format!("{}:80", plane.server("www/lb-1")["private_ip"].as_str().expect("ip"));
    let until = Instant::now() + Duration::from_secs(30);
    while get(&lb).is_none() {
        assert!(Instant::now() < until, "the load balancer never answered");
        std::thread::sleep(Duration::from_millis(50));
    }

    // The client: one request every 10 ms, bounded by a stop flag and 60,000 requests.
    let stop = Arc::new(AtomicBool::new(false));
    let log: Arc<Mutex<Log>> = Arc::default();
    let client = {
        let (stop, log, lb) = (stop.clone(), log.clone(), lb.clone());
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) && log.lock().expect("log").len() < 60_000 {
                let r = get(&lb);
                log.lock().expect("log").push((SystemTime::now(), r));
                std::thread::sleep(Duration::from_millis(10));
            }
        })
    };
    let answered_by = |name: &str| -> Vec<SystemTime> {
        let log = log.lock().expect("log");
        log.iter()
            .filter(|(_, r)| r.as_deref().is_some_and(|b| b.ends_with(name)))
            .map(|(t, _)| *t)
            .collect()
    };
    let (mut joins, mut leaves) = (vec![], vec![]);
    for i in 0..cycles {
        let name = format!("bench-{i}");
        let key = format!("www/{name}");
        plane.stratus(&["server", "launch", &name, "-d", "www", "-t", "www-app"]);
        let s = plane.wait(&key, "operational");
        let operational: SystemTime = chrono::DateTime::parse_from_rfc3339(s["operational_at"].as_str().expect("at"))
            .expect("time")
            .into();
        let until = Instant::now() + Duration::from_secs(30);
        let first = loop {
            if let Some(t) = answered_by(&name).first() {
                break *t;
            }
            assert!(Instant::now() < until, "{name} never got a request");
            std::thread::sleep(Duration::from_millis(10));
        };
        let join = first.duration_since(operational).unwrap_or_default().as_secs_f64() * 1000.0;
        std::thread::sleep(Duration::from_millis(500));
        let terminate = SystemTime::now();
        plane.stratus(&["server", "terminate", &key]);
        plane.wait(&key, "terminated");
        std::thread::sleep(Duration::from_millis(500));
        let last = answered_by(&name).last().copied().unwrap_or(terminate);
        let leave = last.duration_since(terminate).unwrap_or_default().as_secs_f64() * 1000.0;
        println!("cycle {i}: operational -> routed {join:.0} ms, terminate -> out of rotation {leave:.0} ms");
        joins.push(join);
        leaves.push(leave);
    }
    stop.store(true, Ordering::Relaxed);
    client.join().expect("client");
    let log = log.lock().expect("log");
    let failed = log.iter().filter(|(_, r)| r.is_none()).count();
    println!(
        "{cycles} cycles: operational -> routed median {:.0} ms (max {:.0}), terminate -> out of rotation median {:.0} ms (max {:.0})",
        median(joins.clone()),
        joins.iter().cloned().fold(0.0, f64::max),
        median(leaves.clone()),
        leaves.iter().cloned().fold(0.0, f64::max)
    );
    println!("requests during the changes: {}, failed: {failed}", log.len());
}
