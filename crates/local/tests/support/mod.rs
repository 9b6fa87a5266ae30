//! A local cloud of its own for each test: a unique network tag (`t` + the test process id in
//! hex), a random private subnet and pool, a temporary state directory, a busybox image. The
//! guard removes everything on drop, panics included; a cloud left by a killed run is swept
//! at the next start (its process is gone).

#![allow(dead_code)]

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use stratus_cloud::LaunchRequest;
use stratus_local::{LocalCloud, LocalConfig};
use stratus_types::ServerId;
use stratus_types::size::{InstanceSize, Memory};

pub struct TestCloud {
    pub cloud: Arc<LocalCloud>,
    pub config: LocalConfig,
    pub image: String,
    _tmp: tempfile::TempDir,
}

impl Drop for TestCloud {
    fn drop(&mut self) {
        stratus_local::purge::purge(&self.config.network, Some(&self.config.state_dir));
    }
}

/// Test clouds are tagged `t` + 7 hex digits: the test process id (22 bits) and a counter
/// within the process (6 bits), so tests sharing a process (plain `cargo test`) never share a
/// cloud, and a tag names the process that made it.
fn next_tag() -> String {
    static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed) & 0x3f;
    format!("t{:07x}", ((std::process::id() & 0x3f_ffff) << 6) | n)
}

fn pid_of_tag(tag: &str) -> Option<u32> {
    let v = u32::from_str_radix(tag.strip_prefix('t')?, 16).ok()?;
    (tag.len() == 8).then_some(v >> 6)
}

/// Remove clouds (and their temporary directories and mounts) of earlier test processes that
/// no longer exist.
fn sweep_stale() {
    let alive = |pid: u32| Path::new(&format!("/proc/{pid}")).exists();
    for net in stratus_local::purge::networks_on_host() {
        if pid_of_tag(&net).is_some_and(|p| !alive(p)) {
            stratus_local::purge::purge(&net, None);
        }
    }
    let Ok(rd) = std::fs::read_dir("/var/tmp") else {
        return;
    };
    for e in rd.filter_map(Result::ok) {
        let name = e.file_name().to_string_lossy().to_string();
        let pid = name
            .strip_prefix("stratus-local-")
            .and_then(|r| r.split('-').next())
            .and_then(|h| u32::from_str_radix(h, 16).ok());
        if pid.is_some_and(|p| !alive(p)) {
            stratus_local::purge::unmount_under(&e.path());
            let _ = std::fs::remove_dir_all(e.path());
        }
    }
}

fn random_u8() -> u8 {
    let mut b = [0u8; 1];
    getrandom::fill(&mut b).expect("random");
    b[0]
}

pub fn config(tmp: &Path, subnet_prefix: u8) -> LocalConfig {
    let (a, b) = (150 + random_u8() % 50, random_u8());
    LocalConfig {
        state_dir: tmp.join("state"),
        images_dir: tmp.join("images"),
        network: next_tag(),
        subnet: format!("10.{a}.{b}.0/{subnet_prefix}").parse().expect("subnet"),
        address_pools: vec![format!("10.{}.{b}.0/28", a + 50).parse().expect("pool")],
        outbound_nat: false,
        init: vec![env!("CARGO_BIN_EXE_stratus-instance-init").into()],
        stop_grace: Duration::from_secs(2),
        metadata: true,
        metadata_tokens_required: false,
        metadata_hop_limit: 1,
        agent: None,
    }
}

impl TestCloud {
    pub async fn new() -> Self {
        Self::with_subnet(24).await
    }

    pub async fn with_subnet(prefix: u8) -> Self {
        Self::with_config(prefix, |_| {}).await
    }

    /// A cloud whose settings `edit` changes from the tests' defaults.
    pub async fn with_config(prefix: u8, edit: impl FnOnce(&mut LocalConfig)) -> Self {
        sweep_stale();
        let tmp = tempfile::Builder::new()
            .prefix(&format!("stratus-local-{:x}-", std::process::id()))
            .tempdir_in("/var/tmp")
            .expect("tmp");
        let mut config = config(tmp.path(), prefix);
        edit(&mut config);
        let cloud = LocalCloud::open(config.clone()).await.expect("open the local cloud");
        let tarball = busybox_tarball(tmp.path());
        let image = cloud.images().import("busybox", &tarball).await.expect("import").id;
        Self {
            cloud: Arc::new(cloud),
            config,
            image,
            _tmp: tmp,
        }
    }

    /// Open the same cloud again, as a restarted control plane does.
    pub async fn reopen(&mut self) {
        let again = LocalCloud::open(self.config.clone()).await.expect("reopen");
        self.cloud = Arc::new(again);
    }

    pub fn request(&self, hostname: &str) -> LaunchRequest {
        LaunchRequest {
            server: ServerId::new(),
            hostname: hostname.into(),
            region: "local".into(),
            size: InstanceSize {
                name: "small".into(),
                cpus: 1,
                memory: Memory::parse("256MiB").expect("memory"),
            },
            native_image: self.image.clone(),
            user_data: b"#!/bin/sh\necho hello\n".to_vec(),
            tags: vec!["lb:pool=www".parse().expect("tag")],
            firewall: vec![],
            ssh_keys: vec![(
                "admin".into(),
                "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIC1aaa admin@host".into(),
            )],
            metadata_tokens_required: false,
        }
    }

    pub fn pool_address(&self, n: u8) -> Ipv4Addr {
        let net = self.config.address_pools[0];
        let o = net.network().octets();
        Ipv4Addr::new(o[0], o[1], o[2], o[3] + n)
    }

    /// Run a command inside the instance (all its namespaces), as `nsenter` does.
    pub fn exec(&self, id: &str, cmd: &str) -> (bool, String) {
        let pid = self.init_pid(id).expect("instance running");
        let out = Command::new("nsenter")
            .args(["-t", &pid.to_string(), "-a", "/bin/sh", "-c", cmd])
            .env_clear()
            .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
            .output()
            .expect("nsenter");
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        (out.status.success(), text)
    }

    /// The raw answer to `GET http://ip:port/path` from inside the instance ("" when nothing
    /// answered).
    pub fn raw_from(&self, id: &str, ip: impl std::fmt::Display, port: u16, path: &str) -> String {
        self.exec(
            id,
            &format!("printf 'GET {path} HTTP/1.0\\r\\nHost: x\\r\\n\\r\\n' | nc -w 2 {ip} {port}"),
        )
        .1
    }

    /// GET `http://ip:port/path` from inside the instance (busybox `nc`: the static busybox's
    /// `wget` crashes on name-service lookups in a libc-less tree). The body, if any.
    pub fn http_from(&self, id: &str, ip: impl std::fmt::Display, port: u16, path: &str) -> Option<String> {
        let (ok, out) = self.exec(
            id,
            &format!("printf 'GET {path} HTTP/1.0\\r\\nHost: x\\r\\n\\r\\n' | nc -w 2 {ip} {port}"),
        );
        let (head, body) = out.split_once("\r\n\r\n")?;
        (ok && head.starts_with("HTTP/1.") && head.contains(" 200 ")).then(|| body.to_string())
    }

    pub fn init_pid(&self, id: &str) -> Option<u32> {
        let dir = self.cgroup_dir(id);
        let procs = std::fs::read_to_string(dir.join("cgroup.procs")).ok()?;
        procs.lines().filter_map(|l| l.parse::<u32>().ok()).find(|p| {
            std::fs::read_to_string(format!("/proc/{p}/status"))
                .ok()
                .and_then(|s| s.lines().find(|l| l.starts_with("NSpid:")).map(str::to_string))
                .is_some_and(|l| l.split_whitespace().last() == Some("1") && l.split_whitespace().count() == 3)
        })
    }

    pub fn cgroup_dir(&self, id: &str) -> PathBuf {
        let rel = format!("stratus/{}/{id}", self.config.network);
        let v2 = Path::new("/sys/fs/cgroup").join(&rel);
        if Path::new("/sys/fs/cgroup/cgroup.controllers").exists() {
            v2
        } else {
            Path::new("/sys/fs/cgroup/memory").join(rel)
        }
    }
}

/// A root file system of static busybox with its applets, a boot script that serves the
/// hostname over HTTP on 8080, and the usual /etc files.
pub fn busybox_tarball(tmp: &Path) -> PathBuf {
    let root = tmp.join("busybox-root");
    for d in ["bin", "sbin", "etc/stratus/boot.d", "www", "tmp", "root"] {
        std::fs::create_dir_all(root.join(d)).expect("mkdir");
    }
    std::fs::copy("/bin/busybox", root.join("bin/busybox")).expect("busybox-static is installed");
    let list = Command::new("/bin/busybox")
        .arg("--list")
        .output()
        .expect("busybox --list");
    for applet in String::from_utf8_lossy(&list.stdout).lines() {
        if applet != "busybox" {
            let _ = std::os::unix::fs::symlink("busybox", root.join("bin").join(applet));
        }
    }
    std::fs::write(root.join("etc/passwd"), "root:x:0:0:root:/root:/bin/sh\n").expect("passwd");
    std::fs::write(root.join("etc/group"), "root:x:0:\n").expect("group");
    let boot = root.join("etc/stratus/boot.d/50-httpd");
    std::fs::write(
        &boot,
        "#!/bin/sh\nhostname > /www/index.html\nbusybox httpd -p 8080 -h /www\necho boot-done > /tmp/boot-done\n",
    )
    .expect("boot script");
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&boot, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    let tarball = tmp.join("busybox.tar");
    let ok = Command::new("tar")
        .args(["-C"])
        .arg(&root)
        .args(["--numeric-owner", "-cf"])
        .arg(&tarball)
        .arg(".")
        .status()
        .expect("tar");
    assert!(ok.success());
    tarball
}

/// Poll `f` every 50 ms until it is true or `timeout` passes.
pub async fn eventually(timeout: Duration, mut f: impl FnMut() -> bool) -> bool {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if f() {
            return true;
        }
        if tokio::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// GET a URL from the host; the body on success.
pub async fn get(url: &str) -> Option<String> {
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(2))
        .no_proxy()
        .build()
        .ok()?;
    let r = client.get(url).send().await.ok()?;
    if r.status().is_success() {
        r.text().await.ok()
    } else {
        None
    }
}

/// Purges a cloud's network tag on drop (for a second cloud a test opens).
pub struct Purge(pub String);

impl Drop for Purge {
    fn drop(&mut self) {
        stratus_local::purge::purge(&self.0, None);
    }
}
