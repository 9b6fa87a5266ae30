//! Managed files: files the control plane renders (a load balancer's configuration) and the
//! agent keeps in place.
//!
//! Applying one: if the file already has the content and this agent process applied it before,
//! nothing happens. Otherwise the content is written to a candidate next to the file, `check`
//! runs on it (`$STRATUS_CANDIDATE`) and a failure keeps the old file serving; then the candidate
//! is renamed over the file (atomic: a reader sees the old or the new file) and `reload` runs.
//! The first apply in an agent process always reloads, so a service is (re)started after the
//! instance rebooted even though its file did not change.
//!
//! A managed file's directory may belong to another user (`/home/app/conf/app.ini`), who can
//! plant links, hard links and FIFOs there at any moment. So the directory is opened once by
//! descriptor (missing directories are made root-owned 0755, and a link is followed only where
//! only root could have made it), the candidate is a new file with a random name created with
//! `O_EXCL` in that descriptor and moded with `fchmod`, and it is renamed over the file's name
//! within the same descriptor: a planted link or hard link is replaced, never written
//! through. The file is read (to compare its content) without following a link or blocking
//! on a FIFO (see [`crate::safe_fs`]).

use std::collections::HashMap;
use std::os::fd::AsFd;
use std::path::Path;
use std::time::Duration;

use sha2::{Digest, Sha256};
use stratus_agent_proto::ManagedFile;
use tokio::process::Command;

/// How long `check` or `reload` may take.
pub const COMMAND_TIMEOUT: Duration = Duration::from_secs(60);

/// What happened to one file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Status {
    /// The file holds the desired content.
    pub applied: bool,
    /// Why the content was refused, or why the reload failed.
    pub error: Option<String>,
}

/// Where sourced content comes from: the artifact store, through the control plane's URL, into
/// the agent's verified cache ([`crate::fetch`]).
#[derive(Debug, Clone)]
pub struct Source {
    pub http: reqwest::Client,
    /// The control plane's URL, for relative fetch URLs.
    pub base: String,
    pub cache: std::path::PathBuf,
}

/// Contents this agent process applied, by path.
#[derive(Debug, Default)]
pub struct Applied(HashMap<String, String>);

impl Applied {
    /// Forget that a file was applied: the next apply rewrites (if needed) and reloads.
    pub fn forget(&mut self, path: &str) {
        self.0.remove(path);
    }

    /// Apply one file (see the module docs). Sourced content needs `source`.
    pub async fn apply(&mut self, f: &ManagedFile, source: Option<&Source>) -> Status {
        let want = f.sha256();
        let path = Path::new(&f.path);
        let on_disk = file_sha256(path);
        if on_disk.as_deref() == Some(want.as_str()) && self.0.get(&f.path) == Some(&want) {
            return Status {
                applied: true,
                error: None,
            };
        }
        let content = match (&f.source, source) {
            (None, _) => Ok(f.content.as_bytes().to_vec()),
            (Some(a), Some(src)) => match crate::fetch::artifact(&src.http, &src.base, a, &src.cache).await {
                Ok(p) => std::fs::read(&p).map_err(|e| format!("cannot read the cached {}: {e}", a.name)),
                Err(e) => Err(e),
            },
            (Some(_), None) => Err("no way to fetch the content (the agent has no control-plane URL yet)".into()),
        };
        let content = match content {
            Ok(c) => c,
            Err(e) => {
                return Status {
                    applied: false,
                    error: Some(e),
                };
            }
        };
        if on_disk.as_deref() != Some(want.as_str())
            && let Err(e) = replace(f, &content).await
        {
            return Status {
                applied: false,
                error: Some(e),
            };
        }
        self.0.insert(f.path.clone(), want);
        let error = match &f.reload {
            Some(cmd) => shell(cmd, None).await.err().map(|e| format!("reload failed: {e}")),
            None => None,
        };
        Status { applied: true, error }
    }
}

/// SHA-256 of a file's content, if it is a regular file that can be read (not through a
/// link, never blocking on a FIFO).
pub fn file_sha256(path: &Path) -> Option<String> {
    use std::io::Read;
    let (dir, name) = (path.parent()?, path.file_name()?);
    let dir = crate::safe_fs::open_dir(dir).ok()?;
    let mut f = crate::safe_fs::open_regular(dir.as_fd(), name).ok()??;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        match f.read(&mut buf) {
            Ok(0) => return Some(hex::encode(h.finalize())),
            Ok(n) => h.update(&buf[..n]),
            Err(_) => return None,
        }
    }
}

/// Write, check and rename into place (see the module docs).
async fn replace(f: &ManagedFile, content: &[u8]) -> Result<(), String> {
    let path = Path::new(&f.path);
    let (Some(dir), Some(name)) = (path.parent(), path.file_name()) else {
        return Err("the path has no directory".into());
    };
    let dir_fd =
        crate::safe_fs::open_dir_creating(dir, 0o755).map_err(|e| format!("cannot open {}: {e}", dir.display()))?;
    let owner = crate::safe_fs::Owner {
        uid: 0,
        gid: 0,
        mode: f.mode,
    };
    let candidate = crate::safe_fs::Candidate::create(dir_fd.as_fd(), name, content, owner)
        .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
    if let Some(cmd) = &f.check
        && let Err(e) = shell(cmd, Some(&dir.join(candidate.temp_name()))).await
    {
        return Err(format!(
            "the new content was refused by its check ({e}); the old file stays"
        ));
    }
    candidate.commit()
}

/// Run `sh -c CMD`; an error carries the exit status and the output's tail. The output goes to
/// an unnamed file, not a pipe: a reload that starts a daemon (which keeps its inherited
/// descriptors) must not make this wait for the daemon's end.
async fn shell(cmd: &str, candidate: Option<&Path>) -> Result<(), String> {
    use std::io::{Read, Seek};
    let mut log = tempfile::tempfile().map_err(|e| format!("cannot make a file for the output: {e}"))?;
    let stderr = log.try_clone().map_err(|e| e.to_string())?;
    let stdout = log.try_clone().map_err(|e| e.to_string())?;
    let mut c = Command::new("/bin/sh");
    c.arg("-c")
        .arg(cmd)
        .env("PATH", "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin")
        .stdin(std::process::Stdio::null())
        .stdout(stdout)
        .stderr(stderr)
        .kill_on_drop(true);
    if let Some(p) = candidate {
        c.env("STRATUS_CANDIDATE", p);
    }
    let mut child = c.spawn().map_err(|e| format!("cannot run /bin/sh: {e}"))?;
    let status = match tokio::time::timeout(COMMAND_TIMEOUT, child.wait()).await {
        Err(_) => return Err(format!("it ran longer than {} s", COMMAND_TIMEOUT.as_secs())),
        Ok(Err(e)) => return Err(format!("cannot wait for /bin/sh: {e}")),
        Ok(Ok(s)) => s,
    };
    if status.success() {
        return Ok(());
    }
    let mut bytes = vec![];
    let _ = log.rewind().and_then(|()| log.read_to_end(&mut bytes));
    let text = String::from_utf8_lossy(&bytes);
    let text = text.trim();
    let tail: String = {
        let chars: Vec<char> = text.chars().collect();
        chars[chars.len().saturating_sub(1500)..].iter().collect()
    };
    Err(format!("{status}: {tail}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn file(path: &Path, content: &str, check: Option<&str>, reload: Option<&str>) -> ManagedFile {
        ManagedFile {
            mode: 0o640,
            check: check.map(str::to_string),
            reload: reload.map(str::to_string),
            ..ManagedFile::inline(path.display().to_string(), content)
        }
    }

    #[tokio::test]
    async fn writes_checks_and_reloads_only_on_change() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("etc/app.cfg");
        let log = dir.path().join("reloads");
        let reload = format!("echo reload >> {}", log.display());
        let check = "grep -q good \"$STRATUS_CANDIDATE\"";
        let mut a = Applied::default();
        let reloads = || std::fs::read_to_string(&log).unwrap_or_default().lines().count();

        let s = a.apply(&file(&path, "good 1", Some(check), Some(&reload)), None).await;
        assert_eq!(
            s,
            Status {
                applied: true,
                error: None
            }
        );
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "good 1");
        assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o640);
        assert_eq!(reloads(), 1);
        // The same content again: no write, no reload.
        a.apply(&file(&path, "good 1", Some(check), Some(&reload)), None).await;
        assert_eq!(reloads(), 1);
        // Refused by the check: the old file stays, no reload, the reason is given.
        let s = a.apply(&file(&path, "bad", Some(check), Some(&reload)), None).await;
        assert!(!s.applied);
        assert!(s.error.as_deref().unwrap().contains("refused by its check"), "{s:?}");
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "good 1");
        assert_eq!(reloads(), 1);
        assert_eq!(
            std::fs::read_dir(path.parent().unwrap()).unwrap().count(),
            1,
            "no candidate left"
        );
        // A new agent process reloads once even though the content is in place.
        let mut fresh = Applied::default();
        fresh
            .apply(&file(&path, "good 1", Some(check), Some(&reload)), None)
            .await;
        assert_eq!(reloads(), 2);
        // A failing reload is reported, the file is applied.
        let s = a
            .apply(&file(&path, "good 2", Some(check), Some("echo nope >&2; exit 3")), None)
            .await;
        assert!(s.applied);
        let e = s.error.unwrap();
        assert!(e.contains("reload failed") && e.contains("nope"), "{e}");
    }

    /// A reload that leaves a daemon behind (holding its inherited output) returns when the
    /// shell does, not when the daemon ends.
    #[tokio::test]
    async fn a_reload_that_starts_a_daemon_returns_at_once() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("d.cfg");
        let mut a = Applied::default();
        let started = std::time::Instant::now();
        let s = a
            .apply(&file(&path, "x", None, Some("sleep 31.7 & echo started")), None)
            .await;
        assert_eq!(
            s,
            Status {
                applied: true,
                error: None
            }
        );
        assert!(started.elapsed() < COMMAND_TIMEOUT, "waited for the daemon");
        let _ = std::process::Command::new("pkill")
            .args(["-f", "^sleep 31.7$"])
            .status();
    }
}
