//! The instance's init: PID 1 inside the instance's namespaces.
//!
//! The driver starts `INIT stage1 DIR`, detached from the control plane (its own process
//! group, stdio to `DIR/console.log`), so instances outlive `stratus serve`:
//!
//! 1. **stage1** (on the host): joins the instance's cgroups, so everything the instance ever
//!    runs is counted and limited, then execs
//!    `nsenter --net=/run/netns/NS unshare --mount --uts --ipc --pid --fork --propagation private INIT stage2 DIR`.
//! 2. **stage2** (PID 1 of the new PID namespace, in a private copy of the host's mounts):
//!    mounts `/dev` (tmpfs with the usual device nodes bound in, a private devpts), `/sys`
//!    (read-only), `/run` on the instance's overlay root, pivots into it, detaches the host's
//!    tree, mounts `/proc`, sets the hostname and a per-instance machine-id.
//! 3. It then runs the executables in `/etc/stratus/boot.d/` in name order, one at a time, with
//!    a clean environment, then starts the agent (the host's binary, bound read-only into the
//!    instance) and restarts it whenever it exits. Meanwhile it reaps: every orphan in the
//!    instance becomes its child and is waited for, so no zombies pile up.
//! 4. On SIGTERM (stop) or SIGINT it sends SIGTERM to every other process, waits up to the
//!    grace period, SIGKILLs what is left and exits; the PID namespace dies with it.
//!
//! The init binary runs from the host's file system (it is exec'd before the pivot), so images
//! need nothing from Stratus to boot: a Debian tree and a busybox tree both work.

use std::ffi::OsString;
use std::io::Write;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

use rustix::mount::{MountFlags, UnmountFlags};
use rustix::process::{Pid, Signal, WaitOptions};
use signal_hook::consts::{SIGCHLD, SIGHUP, SIGINT, SIGTERM};
use signal_hook::iterator::Signals;

/// The spec the driver writes for init, as `DIR/init.json`.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct InitSpec {
    pub instance_id: String,
    pub hostname: String,
    /// The overlay mount (host path) that becomes `/`.
    pub rootfs: PathBuf,
    /// Name under `/run/netns`.
    pub netns: String,
    /// cgroup directories to join (one per controller hierarchy).
    pub cgroups: Vec<PathBuf>,
    /// How to run this init again: program and leading arguments.
    pub command: Vec<OsString>,
    pub stop_grace_secs: u64,
    /// Files written inside the instance after the pivot (so a link planted in the instance
    /// can never point them at the host): `/etc/hostname`, `/etc/hosts`, `/etc/resolv.conf`.
    #[serde(default)]
    pub etc_files: Vec<(String, String)>,
    /// The agent to install and keep running, if any.
    #[serde(default)]
    pub agent: Option<AgentSpec>,
}

/// The agent inside an instance: the host's binary, bound read-only to [`AGENT_PATH`].
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct AgentSpec {
    /// The binary on the host.
    pub binary: PathBuf,
    /// Its arguments (`agent` when the binary is `stratus`).
    pub args: Vec<String>,
}

pub const SPEC_FILE: &str = "init.json";
const BOOT_DIR: &str = "/etc/stratus/boot.d";
const PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Entry point: `args` are what follows the program (and its leading arguments): `stage1 DIR`
/// or `stage2 DIR`.
pub fn main(args: &[OsString]) -> ExitCode {
    let result = match (args.first().and_then(|a| a.to_str()), args.get(1)) {
        (Some("stage1"), Some(dir)) => stage1(Path::new(dir)),
        (Some("stage2"), Some(dir)) => stage2(Path::new(dir)),
        _ => Err("usage: instance-init stage1|stage2 INSTANCE_DIR (started by the local cloud driver)".into()),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            say(&format!("stratus-init: {e}"));
            ExitCode::from(1)
        }
    }
}

fn say(line: &str) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}

fn read_spec(dir: &Path) -> Result<InitSpec, String> {
    let path = dir.join(SPEC_FILE);
    let text = std::fs::read(&path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    serde_json::from_slice(&text).map_err(|e| format!("{} is not a valid init spec: {e}", path.display()))
}

fn stage1(dir: &Path) -> Result<(), String> {
    // A session of its own: no controlling terminal (an instance must not reach the
    // operator's), no terminal signals from the shell that ran `stratus serve`.
    rustix::process::setsid().map_err(|e| format!("setsid: {e}"))?;
    let spec = read_spec(dir)?;
    let me = std::process::id().to_string();
    for g in &spec.cgroups {
        std::fs::write(g.join("cgroup.procs"), &me).map_err(|e| format!("cannot join cgroup {}: {e}", g.display()))?;
    }
    let (program, lead) = spec.command.split_first().ok_or("the init spec has an empty command")?;
    let err = Command::new("nsenter")
        .arg(format!("--net=/run/netns/{}", spec.netns))
        .args([
            "--",
            "unshare",
            "--mount",
            "--uts",
            "--ipc",
            "--pid",
            "--fork",
            "--propagation",
            "private",
            "--",
        ])
        .arg(program)
        .args(lead)
        .arg("stage2")
        .arg(dir)
        .exec();
    Err(format!("cannot run nsenter: {err}"))
}

fn stage2(dir: &Path) -> Result<(), String> {
    let spec = read_spec(dir)?;
    // Register before any child exists, so no SIGCHLD is missed.
    let mut signals = Signals::new([SIGCHLD, SIGTERM, SIGINT, SIGHUP]).map_err(|e| format!("signals: {e}"))?;
    enter_root(&spec).map_err(|e| format!("cannot set up the root file system: {e}"))?;
    // The driver waits for this line (`instance::READY_MARK`) before it reports the instance running.
    say(&format!("stratus-init: {} up as {}", spec.instance_id, spec.hostname));
    let mut boot = boot_scripts();
    boot.reverse();
    let mut current: Option<(i32, String)> = None;
    let mut agent = spec.agent.as_ref().map(|a| Supervised::new(a.args.clone()));
    loop {
        // Start the next hook; one that cannot even start is reported and skipped.
        while current.is_none() {
            let Some(script) = boot.pop() else { break };
            current = run_script(&script);
        }
        // The agent starts once the hooks are done (SSH host keys exist by then) and is
        // restarted, with a growing pause, whenever it exits.
        if current.is_none()
            && let Some(a) = agent.as_mut()
        {
            a.start_if_due();
        }
        let waiting_for_restart = agent.as_ref().is_some_and(|a| a.pid.is_none());
        let mut stop = false;
        let mut on = |sig| {
            if matches!(sig, SIGTERM | SIGINT) {
                stop = true;
            }
        };
        if waiting_for_restart {
            // A restart is pending: wake up on time even if no signal comes.
            std::thread::sleep(Duration::from_millis(100));
            signals.pending().for_each(&mut on);
        } else {
            signals.wait().for_each(&mut on);
        }
        for (pid, status) in reap() {
            if current.as_ref().is_some_and(|(p, _)| *p == pid) {
                let (_, name) = current.take().unwrap_or_default();
                say(&format!("stratus-init: {name} exited with {status}"));
            }
            if let Some(a) = agent.as_mut() {
                a.reaped(pid, &status);
            }
        }
        if stop {
            shutdown(Duration::from_secs(spec.stop_grace_secs));
            return Ok(());
        }
    }
}

/// The agent, kept running: restarted after it exits, 1 s after the first exit, doubling to
/// at most 30 s; a run of 60 s resets the pause.
struct Supervised {
    args: Vec<String>,
    pid: Option<i32>,
    started: Instant,
    pause: Duration,
    due: Instant,
}

impl Supervised {
    fn new(args: Vec<String>) -> Self {
        Self {
            args,
            pid: None,
            started: Instant::now(),
            pause: Duration::from_secs(1),
            due: Instant::now(),
        }
    }

    fn start_if_due(&mut self) {
        if self.pid.is_some() || Instant::now() < self.due {
            return;
        }
        let mut cmd = Command::new(AGENT_PATH);
        cmd.args(&self.args)
            .env_clear()
            .env("PATH", PATH)
            .env("HOME", "/root")
            .env("LANG", "C.UTF-8")
            .current_dir("/")
            .stdin(Stdio::null());
        match cmd.spawn() {
            Ok(child) => {
                self.pid = Some(child.id() as i32);
                self.started = Instant::now();
                say("stratus-init: agent started");
            }
            Err(e) => {
                say(&format!("stratus-init: cannot start the agent: {e}"));
                self.schedule();
            }
        }
    }

    fn reaped(&mut self, pid: i32, status: &str) {
        if self.pid == Some(pid) {
            self.pid = None;
            if self.started.elapsed() > Duration::from_secs(60) {
                self.pause = Duration::from_secs(1);
            }
            say(&format!(
                "stratus-init: agent exited with {status}; restarting in {}s",
                self.pause.as_secs()
            ));
            self.schedule();
        }
    }

    fn schedule(&mut self) {
        self.due = Instant::now() + self.pause;
        self.pause = (self.pause * 2).min(Duration::from_secs(30));
    }
}

/// Where the agent is bound into an instance.
pub const AGENT_PATH: &str = "/usr/local/sbin/stratus-agent";

fn enter_root(spec: &InitSpec) -> std::io::Result<()> {
    use rustix::mount::mount_bind;
    let root = &spec.rootfs;
    let dev = root.join("dev");
    let nosuid = MountFlags::NOSUID | MountFlags::NOEXEC;
    std::fs::create_dir_all(&dev)?;
    mount("tmpfs", &dev, "tmpfs", MountFlags::NOSUID, "mode=755,size=1m")?;
    for node in ["null", "zero", "full", "random", "urandom", "tty"] {
        std::fs::File::create(dev.join(node))?;
        mount_bind(Path::new("/dev").join(node), dev.join(node))?;
    }
    for d in ["pts", "shm"] {
        std::fs::create_dir_all(dev.join(d))?;
    }
    mount(
        "devpts",
        dev.join("pts"),
        "devpts",
        nosuid,
        "newinstance,ptmxmode=0666,mode=0620,gid=5",
    )?;
    mount("shm", dev.join("shm"), "tmpfs", nosuid | MountFlags::NODEV, "mode=1777")?;
    for (link, target) in [
        ("ptmx", "pts/ptmx"),
        ("fd", "/proc/self/fd"),
        ("stdin", "/proc/self/fd/0"),
        ("stdout", "/proc/self/fd/1"),
        ("stderr", "/proc/self/fd/2"),
    ] {
        std::os::unix::fs::symlink(target, dev.join(link))?;
    }
    for d in ["sys", "run", "proc"] {
        std::fs::create_dir_all(root.join(d))?;
    }
    if let Some(agent) = &spec.agent {
        let target = root.join(AGENT_PATH.trim_start_matches('/'));
        if let Some(parent) = target.parent() {
            std::fs::create_dir_all(parent)?;
        }
        if !target.exists() {
            std::fs::File::create(&target)?;
        }
        mount_bind(&agent.binary, &target)?;
        rustix::mount::mount_remount(&target, MountFlags::BIND | MountFlags::RDONLY, "")?;
    }
    mount(
        "sysfs",
        root.join("sys"),
        "sysfs",
        nosuid | MountFlags::NODEV | MountFlags::RDONLY,
        "",
    )?;
    mount(
        "tmpfs",
        root.join("run"),
        "tmpfs",
        MountFlags::NOSUID | MountFlags::NODEV,
        "mode=755",
    )?;
    std::fs::create_dir_all(root.join("run/lock"))?;
    std::env::set_current_dir(root)?;
    rustix::process::pivot_root(".", ".")?;
    rustix::mount::unmount(".", UnmountFlags::DETACH)?;
    std::env::set_current_dir("/")?;
    mount("proc", "/proc", "proc", nosuid | MountFlags::NODEV, "")?;
    rustix::system::sethostname(spec.hostname.as_bytes())?;
    if Path::new("/etc").is_dir() {
        for (name, content) in &spec.etc_files {
            let path = Path::new("/etc").join(name);
            // Replace, never follow: the instance may have made it a link.
            if path.symlink_metadata().is_ok_and(|m| !m.is_file()) {
                let _ = std::fs::remove_file(&path);
            }
            std::fs::write(&path, content)?;
        }
    }
    let machine_id = Path::new("/etc/machine-id");
    if std::fs::read_to_string(machine_id).map_or(true, |s| s.trim().is_empty()) && Path::new("/etc").is_dir() {
        let id: String = spec
            .instance_id
            .bytes()
            .filter(u8::is_ascii_hexdigit)
            .map(char::from)
            .chain(std::iter::repeat('0'))
            .take(32)
            .collect();
        std::fs::write(machine_id, format!("{id}\n"))?;
    }
    Ok(())
}

/// `mount(2)` with the file-system data as text ("" for none).
pub fn mount(
    source: &str,
    target: impl AsRef<Path>,
    fstype: &str,
    flags: MountFlags,
    data: &str,
) -> std::io::Result<()> {
    let data = std::ffi::CString::new(data).map_err(std::io::Error::other)?;
    let data = (!data.is_empty()).then_some(data.as_c_str());
    rustix::mount::mount(source, target.as_ref(), fstype, flags, data)
        .map_err(|e| std::io::Error::other(format!("mount {fstype} on {}: {e}", target.as_ref().display())))
}

fn boot_scripts() -> Vec<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    let mut scripts: Vec<PathBuf> = std::fs::read_dir(BOOT_DIR)
        .map(|rd| {
            rd.filter_map(Result::ok)
                .map(|e| e.path())
                .filter(|p| {
                    p.metadata()
                        .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
                })
                .collect()
        })
        .unwrap_or_default();
    scripts.sort();
    scripts
}

fn run_script(path: &Path) -> Option<(i32, String)> {
    let name = path.display().to_string();
    say(&format!("stratus-init: running {name}"));
    match Command::new(path)
        .env_clear()
        .env("PATH", PATH)
        .env("HOME", "/root")
        .env("LANG", "C.UTF-8")
        .current_dir("/")
        .stdin(Stdio::null())
        .spawn()
    {
        // The child is reaped by `reap`, not by `Child::wait`; dropping `Child` leaves it be.
        Ok(child) => Some((child.id() as i32, name)),
        Err(e) => {
            say(&format!("stratus-init: cannot run {name}: {e}"));
            None
        }
    }
}

/// Wait for every child that has exited; returns (pid, description of its status).
fn reap() -> Vec<(i32, String)> {
    let mut done = Vec::new();
    while let Ok(Some((pid, status))) = rustix::process::wait(WaitOptions::NOHANG) {
        let what = match (status.exit_status(), status.terminating_signal()) {
            (Some(code), _) => format!("status {code}"),
            (_, Some(sig)) => format!("signal {sig}"),
            _ => "an unknown status".to_string(),
        };
        done.push((pid.as_raw_nonzero().get(), what));
    }
    done
}

/// Every process of the instance but init (we are PID 1 of the namespace).
fn others() -> Vec<Pid> {
    std::fs::read_dir("/proc")
        .map(|rd| {
            rd.filter_map(Result::ok)
                .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
                .filter(|&p| p != 1)
                .filter_map(Pid::from_raw)
                .collect()
        })
        .unwrap_or_default()
}

fn shutdown(grace: Duration) {
    say("stratus-init: stopping");
    for p in others() {
        let _ = rustix::process::kill_process(p, Signal::TERM);
    }
    let deadline = Instant::now() + grace;
    while Instant::now() < deadline {
        reap();
        if others().is_empty() {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    for p in others() {
        let _ = rustix::process::kill_process(p, Signal::KILL);
    }
    reap();
    say("stratus-init: stopped");
}
