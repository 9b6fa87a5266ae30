//! Bringing one instance's pieces up and down. Every step is idempotent, so `start` repairs
//! whatever a host reboot or a crash took away, and `destroy` can run on a half-made instance.

use std::io::Write as _;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use rustix::mount::{MountFlags, UnmountFlags};
use rustix::process::{Pid, Signal};

use crate::cgroup::{Group, Limits};
use crate::init::{InitSpec, SPEC_FILE};
use crate::net::Network;
use crate::record::Record;

/// How long a started instance has to get its init running before the start counts as failed.
const START_TIMEOUT: Duration = Duration::from_secs(10);

pub struct Paths {
    pub dir: PathBuf,
}

impl Paths {
    pub fn upper(&self) -> PathBuf {
        self.dir.join("upper")
    }
    pub fn work(&self) -> PathBuf {
        self.dir.join("work")
    }
    pub fn merged(&self) -> PathBuf {
        self.dir.join("merged")
    }
    pub fn console(&self) -> PathBuf {
        self.dir.join("console.log")
    }
}

pub fn is_mounted(path: &Path) -> bool {
    let Ok(info) = std::fs::read_to_string("/proc/self/mountinfo") else {
        return false;
    };
    let want = path.to_string_lossy();
    info.lines().any(|l| l.split(' ').nth(4) == Some(&want))
}

/// Mount the overlay: the image as the lower layer, the instance's own upper layer.
pub fn mount_root(p: &Paths, lower: &Path) -> std::io::Result<()> {
    for d in [p.upper(), p.work(), p.merged()] {
        std::fs::create_dir_all(&d)?;
    }
    if is_mounted(&p.merged()) {
        return Ok(());
    }
    let opts = format!(
        "lowerdir={},upperdir={},workdir={}",
        lower.display(),
        p.upper().display(),
        p.work().display()
    );
    crate::init::mount("overlay", p.merged(), "overlay", MountFlags::empty(), &opts)
        .map_err(|e| std::io::Error::other(format!("cannot mount the overlay root: {e}")))
}

pub fn unmount_root(p: &Paths) -> std::io::Result<()> {
    if is_mounted(&p.merged()) {
        rustix::mount::unmount(p.merged(), UnmountFlags::DETACH)
            .map_err(|e| std::io::Error::other(format!("cannot unmount {}: {e}", p.merged().display())))?;
    }
    Ok(())
}

/// The files a cloud instance finds set up for it: hostname, hosts, resolver (written by init
/// inside the instance, after the pivot).
pub fn etc_files(rec: &Record) -> Vec<(String, String)> {
    vec![
        ("hostname".into(), format!("{}\n", rec.hostname)),
        (
            "hosts".into(),
            format!(
                "127.0.0.1\tlocalhost\n{}\t{}\n::1\tlocalhost ip6-localhost ip6-loopback\n",
                rec.link.ip, rec.hostname
            ),
        ),
        ("resolv.conf".into(), resolv_conf()),
    ]
}

/// The host's resolvers, minus loopback ones (those are the host's own, unreachable from an
/// instance's network).
fn resolv_conf() -> String {
    let host = std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default();
    let mut out = String::from("# written by the Stratus local cloud at instance start\n");
    for l in host.lines() {
        let loopback = l
            .strip_prefix("nameserver")
            .is_some_and(|ip| ip.trim().parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback()));
        if (l.starts_with("nameserver") || l.starts_with("search") || l.starts_with("options")) && !loopback {
            out.push_str(l);
            out.push('\n');
        }
    }
    out
}

pub fn write_user_data(dir: &Path, data: &[u8]) -> std::io::Result<()> {
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(dir.join("user-data"))?;
    f.write_all(data)
}

pub fn read_user_data(dir: &Path) -> Option<Vec<u8>> {
    std::fs::read(dir.join("user-data")).ok().filter(|d| !d.is_empty())
}

pub fn limits(rec: &Record) -> Limits {
    Limits {
        memory_bytes: rec.size.memory.mib() * 1024 * 1024,
        cpus: rec.size.cpus,
    }
}

/// Start init detached from us and wait until it runs as PID 1 of the instance.
pub async fn spawn_init(
    p: &Paths,
    rec: &Record,
    group: &Group,
    cgroup_dirs: Vec<PathBuf>,
    config: &crate::LocalConfig,
) -> Result<(), String> {
    let (init, grace) = (&config.init, config.stop_grace);
    let spec = InitSpec {
        instance_id: rec.id.clone(),
        hostname: rec.hostname.clone(),
        rootfs: p.merged(),
        netns: rec.link.netns.clone(),
        cgroups: cgroup_dirs,
        command: init.to_vec(),
        stop_grace_secs: grace.as_secs(),
        etc_files: etc_files(rec),
        agent: config.agent.clone(),
    };
    trim_console(p);
    let json = serde_json::to_vec_pretty(&spec).map_err(|e| e.to_string())?;
    std::fs::write(p.dir.join(SPEC_FILE), json).map_err(|e| format!("cannot write the init spec: {e}"))?;
    let console = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(p.console())
        .map_err(|e| format!("cannot open the console log: {e}"))?;
    let console_start = console.metadata().map_or(0, |m| m.len());
    let err_console = console.try_clone().map_err(|e| e.to_string())?;
    let (program, lead) = init.split_first().ok_or("no init program")?;
    let mut child = tokio::process::Command::new(program)
        .args(lead)
        .arg("stage1")
        .arg(&p.dir)
        .env_clear()
        .env("PATH", "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin")
        .stdin(Stdio::null())
        .stdout(console)
        .stderr(err_console)
        // Init's stage 1 starts its own session (setsid): a Ctrl-C meant for `stratus serve`
        // never reaches an instance, nor can an instance reach the operator's terminal.
        .spawn()
        .map_err(|e| format!("cannot start init ({}): {e}", Path::new(program).display()))?;
    let deadline = Instant::now() + START_TIMEOUT;
    loop {
        // Running means init is PID 1 *and* has finished setting the instance up (root,
        // mounts, hostname): it says so on the console, after what earlier boots wrote.
        if init_pid(group).is_some() && console_since(p, console_start).contains(READY_MARK) {
            // The launcher (`unshare`) lives as long as the instance. Dropping the handle
            // leaves it running; tokio reaps it when it exits, so no zombie lingers.
            drop(child);
            return Ok(());
        }
        if let Ok(Some(status)) = child.try_wait() {
            return Err(format!("init exited with {status}: {}", console_tail(p, 800)));
        }
        if Instant::now() >= deadline {
            let _ = child.kill().await;
            return Err(format!(
                "init did not start within {}s: {}",
                START_TIMEOUT.as_secs(),
                console_tail(p, 800)
            ));
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// What init prints once the instance is set up (see `init::stage2`).
pub const READY_MARK: &str = " up as ";

/// The console text written since `offset`.
fn console_since(p: &Paths, offset: u64) -> String {
    use std::io::{Read, Seek, SeekFrom};
    let mut text = String::new();
    if let Ok(mut f) = std::fs::File::open(p.console()) {
        let _ = f.seek(SeekFrom::Start(offset));
        let _ = f.take(64 * 1024).read_to_string(&mut text);
    }
    text
}

/// The host PID of the instance's init: the process in its cgroup that is PID 1 in its own
/// PID namespace.
pub fn init_pid(group: &Group) -> Option<Pid> {
    group.pids().into_iter().find_map(|pid| {
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
        let ns: Vec<&str> = status
            .lines()
            .find(|l| l.starts_with("NSpid:"))?
            .split_whitespace()
            .collect();
        (ns.len() == 3 && ns[2] == "1")
            .then(|| Pid::from_raw(pid as i32))
            .flatten()
    })
}

/// Ask init to stop, give the instance `grace` to finish, then kill what is left.
pub async fn stop_processes(group: &Group, grace: Duration) {
    if let Some(pid) = init_pid(group) {
        let _ = rustix::process::kill_process(pid, Signal::TERM);
        let deadline = Instant::now() + grace + Duration::from_secs(1);
        while Instant::now() < deadline && !group.pids().is_empty() {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    let _ = group.destroy().await;
}

/// The end of the console log, for error messages.
pub fn console_tail(p: &Paths, max: usize) -> String {
    use std::io::{Read, Seek, SeekFrom};
    let mut text = Vec::new();
    if let Ok(mut f) = std::fs::File::open(p.console()) {
        let len = f.metadata().map_or(0, |m| m.len());
        let _ = f.seek(SeekFrom::Start(len.saturating_sub(max as u64)));
        let _ = f.take(max as u64).read_to_end(&mut text);
    }
    let tail = String::from_utf8_lossy(&text).trim().to_string();
    if tail.is_empty() { "(no output)".into() } else { tail }
}

/// Keep the console log bounded across boots: before init starts again, a log over
/// `CONSOLE_MAX` keeps only its last `CONSOLE_KEEP` bytes.
fn trim_console(p: &Paths) {
    const CONSOLE_MAX: u64 = 4 << 20;
    const CONSOLE_KEEP: usize = 256 << 10;
    if std::fs::metadata(p.console()).is_ok_and(|m| m.len() > CONSOLE_MAX) {
        let tail = console_tail(p, CONSOLE_KEEP);
        let _ = std::fs::write(p.console(), format!("[earlier console output trimmed]\n{tail}\n"));
    }
}

pub async fn prepare_network(net: &Network, rec: &Record) -> Result<(), String> {
    net.attach(&rec.link).await.map_err(|e| e.to_string())?;
    crate::net::apply_firewall(&rec.link.netns, &rec.firewall)
        .await
        .map_err(|e| format!("cannot apply the firewall: {e}"))
}

pub fn make_dir(dir: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
}
