//! Managed SSH on the instance: the login accounts of the desired state's [`Logins`].
//!
//! For each listed account: create it once (`useradd`, home directory, `/bin/bash`, no
//! password), make sure it can log in (unlocked, a real shell), write
//! `~/.ssh/authorized_keys` with exactly the listed keys (so a key removed from the user is
//! gone at the next apply and never comes back), and write or remove
//! `/etc/sudoers.d/stratus-NAME` (passwordless sudo for `server_superuser`).
//!
//! Every account the agent created is recorded in `STATE/accounts.json`. One that is recorded
//! but no longer listed is revoked: its keys and sudo go, it is locked with `nologin` as its
//! shell, and its processes are killed when `end_sessions` says so — a revoked user's new login
//! is refused and an open session ends. Accounts the agent did not create (root, the image's
//! own users) are never changed; a listed name that collides with one is reported and skipped.
//!
//! sshd is started (host keys made if missing) when there is an account to log in to and no
//! sshd runs: a local instance's init runs only what its boot scripts start.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

use stratus_agent_proto::{LoginAccount, Logins};

/// What applying the logins did, for the log.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Report {
    pub granted: Vec<String>,
    pub revoked: Vec<String>,
    pub problems: Vec<String>,
}

/// Where Unix account state lives; tests point it at a scratch tree.
#[derive(Debug, Clone)]
pub struct Host {
    /// The agent's state directory (for `accounts.json`).
    pub state_dir: PathBuf,
    /// `/etc/sudoers.d`.
    pub sudoers_dir: PathBuf,
}

impl Host {
    pub fn new(state_dir: &Path) -> Self {
        Self {
            state_dir: state_dir.to_path_buf(),
            sudoers_dir: PathBuf::from("/etc/sudoers.d"),
        }
    }

    fn record_file(&self) -> PathBuf {
        self.state_dir.join("accounts.json")
    }

    /// The accounts this agent created.
    pub fn managed(&self) -> BTreeSet<String> {
        std::fs::read(self.record_file())
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default()
    }

    fn save(&self, managed: &BTreeSet<String>) -> Result<(), String> {
        let tmp = self.record_file().with_extension("tmp");
        std::fs::write(&tmp, serde_json::to_vec(managed).unwrap_or_default())
            .and_then(|()| std::fs::rename(&tmp, self.record_file()))
            .map_err(|e| format!("cannot record the managed accounts: {e}"))
    }
}

fn run(program: &str, args: &[&str]) -> Result<String, String> {
    let out = Command::new(program)
        .args(args)
        .env("PATH", "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin")
        .output()
        .map_err(|e| format!("cannot run {program}: {e}"))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(format!(
            "{program} {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// The account's passwd entry: (uid, gid, home), if it exists.
fn passwd(name: &str) -> Option<(u32, u32, PathBuf)> {
    let text = std::fs::read_to_string("/etc/passwd").ok()?;
    text.lines().find_map(|l| {
        let f: Vec<&str> = l.split(':').collect();
        (f.len() >= 7 && f[0] == name)
            .then(|| (f[2].parse().ok(), f[3].parse().ok(), PathBuf::from(f[5])))
            .and_then(|(u, g, h)| Some((u?, g?, h)))
    })
}

fn write_keys(name: &str, keys: &[String]) -> Result<(), String> {
    let (uid, gid, home) = passwd(name).ok_or_else(|| format!("account {name} has no passwd entry"))?;
    let ssh = home.join(".ssh");
    std::fs::create_dir_all(&ssh).map_err(|e| format!("{}: {e}", ssh.display()))?;
    let file = ssh.join("authorized_keys");
    let tmp = ssh.join(".authorized_keys.stratus-new");
    let mut text = String::from("# Managed by Stratus: this file is rewritten when the user's keys change.\n");
    for k in keys {
        text.push_str(k.trim());
        text.push('\n');
    }
    use std::os::unix::fs::PermissionsExt;
    std::fs::write(&tmp, text)
        .and_then(|()| std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o600)))
        .and_then(|()| std::os::unix::fs::chown(&tmp, Some(uid), Some(gid)))
        .and_then(|()| std::fs::set_permissions(&ssh, std::fs::Permissions::from_mode(0o700)))
        .and_then(|()| std::os::unix::fs::chown(&ssh, Some(uid), Some(gid)))
        .and_then(|()| std::fs::rename(&tmp, &file))
        .map_err(|e| format!("{}: {e}", file.display()))
}

fn set_sudo(host: &Host, name: &str, sudo: bool) -> Result<(), String> {
    let file = host.sudoers_dir.join(format!("stratus-{name}"));
    if !sudo {
        return match std::fs::remove_file(&file) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(format!("{}: {e}", file.display())),
        };
    }
    use std::os::unix::fs::PermissionsExt;
    std::fs::create_dir_all(&host.sudoers_dir).map_err(|e| format!("{}: {e}", host.sudoers_dir.display()))?;
    let tmp = host.sudoers_dir.join(format!(".stratus-{name}.new"));
    std::fs::write(
        &tmp,
        format!("# Managed by Stratus (server_superuser).\n{name} ALL=(ALL) NOPASSWD:ALL\n"),
    )
    .and_then(|()| std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o440)))
    .and_then(|()| std::fs::rename(&tmp, &file))
    .map_err(|e| format!("{}: {e}", file.display()))
}

fn grant(host: &Host, managed: &mut BTreeSet<String>, a: &LoginAccount) -> Result<(), String> {
    if passwd(&a.name).is_none() {
        run(
            "useradd",
            &[
                "--create-home",
                "--shell",
                "/bin/bash",
                "--comment",
                "Stratus managed",
                &a.name,
            ],
        )?;
        managed.insert(a.name.clone());
        host.save(managed)?;
    } else if !managed.contains(&a.name) {
        return Err(format!(
            "account {} exists and was not made by Stratus; it is left alone",
            a.name
        ));
    }
    // No password (key logins only), not locked, a login shell.
    run("usermod", &["--password", "*", "--shell", "/bin/bash", &a.name])?;
    write_keys(&a.name, &a.keys)?;
    set_sudo(host, &a.name, a.sudo)
}

fn revoke(host: &Host, name: &str, end_sessions: bool) -> Result<(), String> {
    if passwd(name).is_some() {
        write_keys(name, &[])?;
        run("usermod", &["--lock", "--shell", "/usr/sbin/nologin", name])?;
    }
    set_sudo(host, name, false)?;
    if end_sessions {
        // pkill exits 1 when nothing matched: not an error.
        let _ = run("pkill", &["-KILL", "-u", name]);
    }
    Ok(())
}

/// Remove a managed account for good (preparing an image): its processes, sudo, the account
/// with its home directory and keys (`userdel --remove`), and its record.
pub fn remove(host: &Host, name: &str) -> Result<(), String> {
    set_sudo(host, name, false)?;
    if passwd(name).is_some() {
        let _ = run("pkill", &["-KILL", "-u", name]);
        run("userdel", &["--remove", "--force", name])?;
    }
    let mut managed = host.managed();
    managed.remove(name);
    host.save(&managed)
}

/// The PAM files that get the session hook, and the line (marked, so it is added once).
const PAM_FILES: &[&str] = &["/etc/pam.d/sshd", "/etc/pam.d/sudo"];
const PAM_MARK: &str = "# stratus: report logins and sudo to the agent";

/// Make sshd and sudo report managed accounts' sessions to the agent (`pam_exec`, optional:
/// a report can never stop a login). Idempotent.
fn install_pam_hook(state_dir: &Path) -> Result<(), String> {
    let me = std::env::current_exe().map_err(|e| format!("cannot find the agent's own path: {e}"))?;
    let line = format!(
        "{PAM_MARK}\nsession optional pam_exec.so quiet {} --state-dir {} access-event\n",
        me.display(),
        state_dir.display()
    );
    for file in PAM_FILES {
        let Ok(text) = std::fs::read_to_string(file) else {
            continue; // sudo not installed: nothing to hook
        };
        if text.contains(PAM_MARK) {
            continue;
        }
        let tmp = format!("{file}.stratus-new");
        std::fs::write(
            &tmp,
            format!("{text}{}{line}", if text.ends_with('\n') { "" } else { "\n" }),
        )
        .and_then(|()| std::fs::rename(&tmp, file))
        .map_err(|e| format!("{file}: {e}"))?;
    }
    Ok(())
}

/// Start sshd if it is installed and not running.
fn ensure_sshd() -> Result<(), String> {
    if !Path::new("/usr/sbin/sshd").exists() {
        return Err("openssh-server is not installed on this image; logins cannot work".into());
    }
    if run("pgrep", &["-x", "sshd"]).is_ok() {
        return Ok(());
    }
    run("ssh-keygen", &["-A"])?;
    std::fs::create_dir_all("/run/sshd").map_err(|e| format!("/run/sshd: {e}"))?;
    run("/usr/sbin/sshd", &[]).map(drop)
}

/// Empty the `authorized_keys` of every account Stratus did not make (`exclusive`).
fn clear_foreign_keys(managed: &BTreeSet<String>) -> Result<(), String> {
    let text = std::fs::read_to_string("/etc/passwd").map_err(|e| format!("/etc/passwd: {e}"))?;
    for l in text.lines() {
        let f: Vec<&str> = l.split(':').collect();
        if f.len() < 7 || managed.contains(f[0]) {
            continue;
        }
        let keys = Path::new(f[5]).join(".ssh/authorized_keys");
        if std::fs::metadata(&keys).is_ok_and(|m| m.len() > 0) {
            std::fs::write(&keys, "").map_err(|e| format!("{}: {e}", keys.display()))?;
        }
    }
    Ok(())
}

/// Apply the logins (see the module docs). Blocking: call it off the async runtime.
pub fn apply(host: &Host, logins: &Logins) -> Report {
    let mut report = Report::default();
    let mut managed = host.managed();
    let wanted: BTreeSet<&str> = logins.accounts.iter().map(|a| a.name.as_str()).collect();
    for a in &logins.accounts {
        match grant(host, &mut managed, a) {
            Ok(()) => report.granted.push(a.name.clone()),
            Err(e) => report.problems.push(e),
        }
    }
    let gone: Vec<String> = managed
        .iter()
        .filter(|m| !wanted.contains(m.as_str()))
        .cloned()
        .collect();
    for name in gone {
        match revoke(host, &name, logins.end_sessions) {
            Ok(()) => report.revoked.push(name),
            Err(e) => report.problems.push(e),
        }
    }
    if logins.exclusive
        && let Err(e) = clear_foreign_keys(&managed)
    {
        report.problems.push(e);
    }
    if !logins.accounts.is_empty() {
        if let Err(e) = install_pam_hook(&host.state_dir) {
            report.problems.push(e);
        }
        if let Err(e) = ensure_sshd() {
            report.problems.push(e);
        }
    }
    report
}
