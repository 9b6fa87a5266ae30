//! Local cloud figures (needs root): launch → init running, launch → metadata answerable,
//! metadata throughput and latency from inside an instance, memory per idle instance.
//!
//!     cargo bench -p stratus-local --bench local [-- IDLE_INSTANCES]   (default 100)
//!
//! Uses a busybox image (static busybox + an httpd boot hook), so the figures are the
//! platform's own cost, not the image's. The load generator for the metadata service runs in
//! threads that joined the instance's network namespace: to the service they are the instance.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::os::fd::AsFd;
use std::path::Path;
use std::time::{Duration, Instant};

use stratus_cloud::{CloudDriver, LaunchRequest};
use stratus_local::{LocalCloud, LocalConfig};
use stratus_types::ServerId;
use stratus_types::size::{InstanceSize, Memory};

const LAUNCHES: usize = 20;
const LOAD_THREADS: usize = 4;
const LOAD_SECONDS: u64 = 5;

fn main() {
    let idle: usize = std::env::args().nth(1).and_then(|a| a.parse().ok()).unwrap_or(100);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(run(idle));
}

fn config(tmp: &Path) -> LocalConfig {
    LocalConfig {
        state_dir: tmp.join("state"),
        images_dir: tmp.join("images"),
        network: "bench".into(),
        subnet: "10.231.0.0/20".parse().expect("subnet"),
        address_pools: vec![],
        outbound_nat: false,
        // STRATUS_BENCH_INIT="/path/to/stratus instance-init" measures with the init as users
        // run it (inside the `stratus` binary).
        init: std::env::var("STRATUS_BENCH_INIT").map_or_else(
            |_| vec![env!("CARGO_BIN_EXE_stratus-instance-init").into()],
            |v| v.split_whitespace().map(Into::into).collect(),
        ),
        stop_grace: Duration::from_secs(1),
        metadata: true,
        metadata_tokens_required: false,
        metadata_hop_limit: 1,
        agent: None,
    }
}

fn request(image: &str, n: usize) -> LaunchRequest {
    LaunchRequest {
        server: ServerId::new(),
        hostname: format!("bench-{n}"),
        region: "local".into(),
        size: InstanceSize {
            name: "small".into(),
            cpus: 1,
            memory: Memory::parse("256MiB").expect("memory"),
        },
        native_image: image.into(),
        user_data: vec![],
        tags: vec![],
        firewall: vec![],
        ssh_keys: vec![],
        metadata_tokens_required: false,
    }
}

async fn run(idle: usize) {
    let tmp = tempfile::Builder::new()
        .prefix("stratus-bench-")
        .tempdir_in("/var/tmp")
        .expect("tmp");
    let cfg = config(tmp.path());
    stratus_local::purge::purge(&cfg.network, None);
    let cloud = LocalCloud::open(cfg.clone()).await.expect("open (run as root)");
    let image = cloud
        .images()
        .import("busybox", &busybox_tarball(tmp.path()))
        .await
        .expect("import")
        .id;

    // 1 + 2: launch → init running (launch returns when init runs), → metadata answers.
    let mut to_init = vec![];
    let mut to_metadata = vec![];
    for n in 0..LAUNCHES {
        let start = Instant::now();
        let inst = cloud.launch(request(&image, n)).await.expect("launch");
        to_init.push(start.elapsed());
        let netns = cloud.netns(&inst.id).expect("netns");
        let answered = tokio::task::spawn_blocking(move || {
            in_netns(&netns, || {
                loop {
                    if get_once("/latest/meta-data/instance-id").is_some() {
                        return;
                    }
                    std::thread::sleep(Duration::from_millis(1));
                }
            })
        });
        answered.await.expect("poll");
        to_metadata.push(start.elapsed());
        cloud.terminate(&inst.id).await.expect("terminate");
    }
    println!(
        "launch -> init running      : median {:?}, max {:?} ({LAUNCHES} launches)",
        median(&mut to_init),
        to_init.last().copied().unwrap_or_default()
    );
    println!(
        "launch -> metadata answers  : median {:?}, max {:?}",
        median(&mut to_metadata),
        to_metadata.last().copied().unwrap_or_default()
    );

    // 3: metadata throughput and latency from inside one instance.
    let inst = cloud.launch(request(&image, 999)).await.expect("launch");
    let netns = cloud.netns(&inst.id).expect("netns");
    let threads: Vec<_> = (0..LOAD_THREADS)
        .map(|_| {
            let ns = netns.clone();
            std::thread::spawn(move || in_netns(&ns, load))
        })
        .collect();
    let mut lat: Vec<Duration> = threads.into_iter().flat_map(|t| t.join().expect("load")).collect();
    let total = lat.len();
    lat.sort();
    println!(
        "metadata GET, {LOAD_THREADS} keep-alive connections, {LOAD_SECONDS} s: {:.0} req/s, p50 {:?}, p99 {:?}, max {:?}",
        total as f64 / LOAD_SECONDS as f64,
        lat[total / 2],
        lat[total * 99 / 100],
        lat[total - 1]
    );
    cloud.terminate(&inst.id).await.expect("terminate");

    // 4: memory per idle instance.
    let start = Instant::now();
    let mut ids = vec![];
    for n in 0..idle {
        ids.push(cloud.launch(request(&image, n)).await.expect("launch").id);
    }
    let launched = start.elapsed();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let used: u64 = ids.iter().filter_map(|id| cloud.memory_usage(id)).sum();
    let per = used / idle as u64;
    let avail = mem_available();
    println!(
        "{idle} idle instances launched one after another in {launched:?}; cgroup memory {:.1} MiB in all, {:.2} MiB each",
        used as f64 / 1048576.0,
        per as f64 / 1048576.0
    );
    println!(
        "MemAvailable {:.1} GiB -> room for about {} more such instances by memory (the /20 subnet holds 4093)",
        avail as f64 / 1073741824.0,
        avail / per.max(1)
    );
    cloud.destroy_everything().await.expect("clean up");
    stratus_local::purge::purge(&cfg.network, Some(&cfg.state_dir));
}

fn in_netns<T>(netns: &str, f: impl FnOnce() -> T) -> T {
    let file = std::fs::File::open(format!("/run/netns/{netns}")).expect("netns file");
    rustix::thread::move_into_link_name_space(file.as_fd(), Some(rustix::thread::LinkNameSpaceType::Network))
        .expect("setns");
    f()
}

fn get_once(path: &str) -> Option<String> {
    let mut s = TcpStream::connect_timeout(&"169.254.169.254:80".parse().ok()?, Duration::from_millis(200)).ok()?;
    s.write_all(format!("GET {path} HTTP/1.0\r\n\r\n").as_bytes()).ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).ok()?;
    out.contains(" 200 ").then_some(out)
}

/// Keep-alive GETs for LOAD_SECONDS; the latency of each.
fn load() -> Vec<Duration> {
    let mut s = TcpStream::connect("169.254.169.254:80").expect("connect");
    s.set_nodelay(true).ok();
    let req = b"GET /latest/meta-data/instance-id HTTP/1.1\r\nHost: 169.254.169.254\r\n\r\n";
    let mut buf = [0u8; 4096];
    let mut out = vec![];
    let end = Instant::now() + Duration::from_secs(LOAD_SECONDS);
    while Instant::now() < end {
        let t = Instant::now();
        s.write_all(req).expect("write");
        // One response: headers with content-length, then the body; small enough for one read
        // or two.
        let mut got = 0;
        loop {
            let n = s.read(&mut buf[got..]).expect("read");
            assert!(n > 0, "connection closed");
            got += n;
            if let Some(total) = complete(&buf[..got]) {
                assert_eq!(total, got, "one response at a time");
                break;
            }
        }
        out.push(t.elapsed());
    }
    out
}

fn complete(b: &[u8]) -> Option<usize> {
    let text = std::str::from_utf8(b).ok()?;
    let head_end = text.find("\r\n\r\n")? + 4;
    let len: usize = text[..head_end]
        .lines()
        .find_map(|l| l.strip_prefix("content-length: "))?
        .trim()
        .parse()
        .ok()?;
    (b.len() >= head_end + len).then_some(head_end + len)
}

fn median(v: &mut [Duration]) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn mem_available() -> u64 {
    std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .find_map(|l| l.strip_prefix("MemAvailable:"))
                .and_then(|v| v.trim().trim_end_matches(" kB").trim().parse::<u64>().ok())
        })
        .map_or(0, |kb| kb * 1024)
}

fn busybox_tarball(tmp: &Path) -> std::path::PathBuf {
    let root = tmp.join("rootfs");
    for d in ["bin", "etc/stratus/boot.d", "www"] {
        std::fs::create_dir_all(root.join(d)).expect("mkdir");
    }
    std::fs::copy("/bin/busybox", root.join("bin/busybox")).expect("busybox-static");
    for applet in ["sh", "httpd", "hostname"] {
        std::os::unix::fs::symlink("busybox", root.join("bin").join(applet)).expect("link");
    }
    let boot = root.join("etc/stratus/boot.d/50-httpd");
    std::fs::write(&boot, "#!/bin/sh\nhostname > /www/index.html\nhttpd -p 8080 -h /www\n").expect("boot");
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&boot, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    let tar = tmp.join("busybox.tar");
    let ok = std::process::Command::new("tar")
        .arg("-C")
        .arg(&root)
        .arg("-cf")
        .arg(&tar)
        .arg(".")
        .status()
        .expect("tar");
    assert!(ok.success());
    tar
}
