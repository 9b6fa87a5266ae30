//! Control groups: each instance's processes live in one group per controller, which gives
//! the size's memory and CPU limits, a process-count cap, and the driver's liveness check (an
//! instance is running while its group holds processes, which survives a control-plane
//! restart and is immune to PID reuse).
//!
//! Both layouts are supported: the unified cgroup v2 hierarchy (`/sys/fs/cgroup` with a
//! `memory` controller, as on systemd hosts), and the v1 hierarchies (`/sys/fs/cgroup/memory`,
//! `/sys/fs/cgroup/cpu`, `/sys/fs/cgroup/pids`), as on hosts whose PID 1 is not systemd.
//! Groups are named `stratus/<network>/<instance>` so one cloud's groups sit together.

use std::io;
use std::path::{Path, PathBuf};
use std::time::Duration;

const ROOT: &str = "/sys/fs/cgroup";
/// Period for CPU bandwidth limits: a size with 2 cpus may use 200 ms per 100 ms.
const CPU_PERIOD_US: u64 = 100_000;
/// Fork-bomb guard; generous for anything a server runs.
const PIDS_MAX: u32 = 8192;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Layout {
    V2,
    V1,
}

/// The cgroups of one instance.
#[derive(Debug, Clone)]
pub struct Group {
    layout: Layout,
    /// v2: one directory; v1: memory, cpu, pids (those present).
    dirs: Vec<PathBuf>,
}

/// Limits from the instance's size.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub memory_bytes: u64,
    pub cpus: u32,
}

pub fn detect() -> io::Result<Layout> {
    let root = Path::new(ROOT);
    if let Ok(c) = std::fs::read_to_string(root.join("cgroup.controllers"))
        && c.split_whitespace().any(|x| x == "memory")
    {
        return Ok(Layout::V2);
    }
    if root.join("memory/cgroup.procs").exists() {
        return Ok(Layout::V1);
    }
    Err(io::Error::other(
        "no memory cgroup controller is mounted under /sys/fs/cgroup (neither cgroup v2 nor v1)",
    ))
}

impl Group {
    pub fn new(layout: &Layout, network: &str, instance: &str) -> Self {
        let rel = format!("stratus/{network}/{instance}");
        let dirs = match layout {
            Layout::V2 => vec![Path::new(ROOT).join(rel)],
            Layout::V1 => ["memory", "cpu", "pids"]
                .iter()
                .map(|c| Path::new(ROOT).join(c))
                .filter(|d| d.join("cgroup.procs").exists())
                .map(|d| d.join(&rel))
                .collect(),
        };
        Self {
            layout: layout.clone(),
            dirs,
        }
    }

    /// Create the groups (idempotent) and set the limits.
    pub fn create(&self, limits: Limits) -> io::Result<()> {
        for d in &self.dirs {
            if self.layout == Layout::V2 {
                enable_controllers(d)?;
            }
            std::fs::create_dir_all(d)?;
        }
        let cpu_quota = u64::from(limits.cpus.max(1)) * CPU_PERIOD_US;
        match self.layout {
            Layout::V2 => {
                let d = &self.dirs[0];
                write(d, "memory.max", &limits.memory_bytes.to_string())?;
                write(d, "memory.swap.max", "0").or_else(ignore_missing)?;
                write(d, "cpu.max", &format!("{cpu_quota} {CPU_PERIOD_US}")).or_else(ignore_missing)?;
                write(d, "pids.max", &PIDS_MAX.to_string()).or_else(ignore_missing)?;
            }
            Layout::V1 => {
                for d in &self.dirs {
                    if d.join("memory.limit_in_bytes").exists() {
                        write(d, "memory.limit_in_bytes", &limits.memory_bytes.to_string())?;
                    }
                    if d.join("cpu.cfs_quota_us").exists() {
                        write(d, "cpu.cfs_period_us", &CPU_PERIOD_US.to_string())?;
                        write(d, "cpu.cfs_quota_us", &cpu_quota.to_string())?;
                    }
                    if d.join("pids.max").exists() {
                        write(d, "pids.max", &PIDS_MAX.to_string())?;
                    }
                }
            }
        }
        Ok(())
    }

    /// Move a process (and so its future children) into the groups.
    pub fn join(&self, pid: u32) -> io::Result<()> {
        for d in &self.dirs {
            write(d, "cgroup.procs", &pid.to_string())?;
        }
        Ok(())
    }

    /// The processes in the instance (from the first group; all hold the same ones).
    pub fn pids(&self) -> Vec<u32> {
        let Some(d) = self.dirs.first() else { return vec![] };
        std::fs::read_to_string(d.join("cgroup.procs"))
            .map(|s| s.lines().filter_map(|l| l.trim().parse().ok()).collect())
            .unwrap_or_default()
    }

    pub fn exists(&self) -> bool {
        self.dirs.first().is_some_and(|d| d.exists())
    }

    /// Memory in use, in bytes (page cache included, as the kernel counts it).
    pub fn memory_bytes(&self) -> Option<u64> {
        let file = match self.layout {
            Layout::V2 => "memory.current",
            Layout::V1 => "memory.usage_in_bytes",
        };
        self.dirs
            .iter()
            .find_map(|d| std::fs::read_to_string(d.join(file)).ok())
            .and_then(|s| s.trim().parse().ok())
    }

    /// SIGKILL every process until the groups are empty (bounded), then remove them. On
    /// cgroup v2 the kernel does it (`cgroup.kill`), so no PID is ever read and then reused.
    pub async fn destroy(&self) -> io::Result<()> {
        if self.layout == Layout::V2
            && let Some(d) = self.dirs.first()
            && d.join("cgroup.kill").exists()
        {
            let _ = write(d, "cgroup.kill", "1");
        }
        for _ in 0..100 {
            let pids = self.pids();
            if pids.is_empty() {
                break;
            }
            for p in pids {
                if let Some(pid) = rustix::process::Pid::from_raw(p as i32) {
                    let _ = rustix::process::kill_process(pid, rustix::process::Signal::KILL);
                }
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        for d in &self.dirs {
            match std::fs::remove_dir(d) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => {
                    return Err(io::Error::new(
                        e.kind(),
                        format!("cannot remove cgroup {}: {e}", d.display()),
                    ));
                }
            }
        }
        Ok(())
    }
}

/// cgroup v2 hands controllers down level by level: each ancestor under the root must list
/// them in `cgroup.subtree_control`.
fn enable_controllers(group: &Path) -> io::Result<()> {
    let mut ancestors: Vec<&Path> = group.ancestors().skip(1).take_while(|p| p.starts_with(ROOT)).collect();
    ancestors.reverse();
    for a in ancestors {
        std::fs::create_dir_all(a)?;
        let available = std::fs::read_to_string(a.join("cgroup.controllers")).unwrap_or_default();
        for c in ["memory", "cpu", "pids"] {
            if available.split_whitespace().any(|x| x == c) {
                write(a, "cgroup.subtree_control", &format!("+{c}")).or_else(ignore_missing)?;
            }
        }
    }
    Ok(())
}

fn write(dir: &Path, file: &str, value: &str) -> io::Result<()> {
    std::fs::write(dir.join(file), value).map_err(|e| {
        io::Error::new(
            e.kind(),
            format!("cannot write {value} to {}: {e}", dir.join(file).display()),
        )
    })
}

fn ignore_missing(e: io::Error) -> io::Result<()> {
    if e.kind() == io::ErrorKind::NotFound {
        Ok(())
    } else {
        Err(e)
    }
}

impl Group {
    /// The group directories (one per hierarchy), for a process to join.
    pub fn dirs(&self) -> &[PathBuf] {
        &self.dirs
    }
}
