//! Managed SSH on the instance: the login accounts of the desired state's [`Logins`].
//!
//! For each listed account: create it once (`useradd`, home directory, `/bin/bash`, no
//! password), make sure it can log in (unlocked, a real shell), write
//! `~/.ssh/authorized_keys` with exactly the listed keys (so a key removed from the user is
//! gone at the next apply and never comes back), and write or remove
//! `/etc/sudoers.d/stratus-NAME` (passwordless sudo for `server_superuser`).
//!
//! Every account the agent created is recorded in `STATE/accounts.json`. One that is recorded
//! but no longer listed is revoked: its keys and sudo go, it is locked and expired (`usermod
//! --expiredate 1`: a lock alone does not stop key logins when sshd uses PAM) with `nologin`
//! as its shell (a grant clears both), and its processes are killed when `end_sessions` says so — a revoked user's new login
//! is refused and an open session ends. Accounts the agent did not create (root, the image's
//! own users) are never changed; a listed name that collides with one is reported and skipped.
//!
//! sshd is started (host keys made if missing) when there is an account to log in to and no
//! sshd runs: a local instance's init runs only what its boot scripts start.
//!
//! ## Writing in a home directory the account's user controls
//!
//! A login user owns their home and `~/.ssh` and may plant anything there (a link to
//! `/etc/ld.so.preload` named like the agent's temporary file, `~/.ssh -> /etc/sudoers.d`, a
//! hard link to `/etc/shadow` as `authorized_keys`, a FIFO). Every write the agent makes there
//! goes through [`crate::safe_fs`]: the home directory is opened by descriptor without
//! following a link the user could have made; `~/.ssh` is opened with `O_NOFOLLOW` (anything
//! that is not a directory is renamed aside to `.ssh.not-a-directory`, or removed if that name
//! is taken, and a fresh one made),
//! owned and moded with `fchown`/`fchmod` on that descriptor; `authorized_keys` is a new file
//! created with `O_EXCL` under a random name in that directory and renamed over the old name,
//! so a planted link or hard link is replaced, never written through. `authorized_keys2`
//! (which sshd also reads) is removed for managed accounts: they have exactly their listed
//! keys. `exclusive` empties other accounts' keys the same way (a new empty file renamed over
//! the old one; a `~/.ssh` that is not a directory is put aside as `.ssh.stratus-disabled`).
//!
//! Decision: the keys stay in `~/.ssh/authorized_keys` rather than a root-owned
//! `AuthorizedKeysFile` (`/etc/ssh/stratus_keys/%u`). That file would keep root out of home
//! directories entirely, but it needs a change to the image's sshd configuration (whose
//! `Include` of `sshd_config.d` an image may lack, and which a running sshd only reads again
//! when signalled), and in non-exclusive mode sshd would still read every account's own
//! `~/.ssh/authorized_keys`, so a removed key could live on there. Writing by descriptor with
//! the rules above keeps sshd's defaults, which every image has, and is safe against whatever
//! the user plants. (With keys in the home, a login user can add a key of their own to it
//! between two applies; the next apply — any change of users, roles or keys — rewrites it,
//! and a revocation removes both key files.) `useradd --create-home` makes homes under
//! `/home`, which only root can change; removing an account removes its home by descriptor
//! too.

use std::collections::BTreeSet;
use std::ffi::OsStr;
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::process::Command;

use rustix::fs::{FileType, Mode};

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
    /// `/etc/passwd`: where accounts' ids and homes are read (`useradd` and friends always
    /// act on the system's).
    pub passwd: PathBuf,
    /// The PAM files that get the session hook.
    pub pam_files: Vec<PathBuf>,
    /// The sshd binary started when none runs.
    pub sshd: PathBuf,
}

impl Host {
    pub fn new(state_dir: &Path) -> Self {
        Self {
            state_dir: state_dir.to_path_buf(),
            sudoers_dir: PathBuf::from("/etc/sudoers.d"),
            passwd: PathBuf::from("/etc/passwd"),
            pam_files: PAM_FILES.iter().map(PathBuf::from).collect(),
            sshd: PathBuf::from("/usr/sbin/sshd"),
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

/// An account's passwd entry.
struct Account {
    name: String,
    uid: u32,
    gid: u32,
    home: PathBuf,
}

/// The accounts of a passwd file (lines that do not parse are skipped).
fn accounts(passwd: &Path) -> Result<Vec<Account>, String> {
    let text = std::fs::read_to_string(passwd).map_err(|e| format!("{}: {e}", passwd.display()))?;
    Ok(text
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split(':').collect();
            (f.len() >= 7).then_some(())?;
            Some(Account {
                name: f[0].to_string(),
                uid: f[2].parse().ok()?,
                gid: f[3].parse().ok()?,
                home: PathBuf::from(f[5]),
            })
        })
        .collect())
}

/// The account's passwd entry, if it exists.
fn passwd(host: &Host, name: &str) -> Option<Account> {
    accounts(&host.passwd).ok()?.into_iter().find(|a| a.name == name)
}

const AUTHORIZED_KEYS: &str = "authorized_keys";
/// sshd's second default `AuthorizedKeysFile`.
const AUTHORIZED_KEYS2: &str = "authorized_keys2";

/// The account's `~/.ssh`, opened by descriptor (see the module docs): the home directory
/// without a link its user could have made; `.ssh` made if missing, a non-directory there put
/// aside first; owned by the account, 0700, through the descriptor.
fn ssh_dir(a: &Account) -> Result<OwnedFd, String> {
    let home = &a.home;
    let at = |e: std::io::Error| format!("{}/.ssh: {e}", home.display());
    let home_fd = crate::safe_fs::open_dir(home).map_err(|e| format!("the home directory {}: {e}", home.display()))?;
    let name = OsStr::new(".ssh");
    if let Some((kind, _)) = crate::safe_fs::kind(home_fd.as_fd(), name).map_err(at)?
        && kind != FileType::Directory
    {
        put_aside(home_fd.as_fd(), ".ssh.not-a-directory").map_err(at)?;
    }
    match rustix::fs::mkdirat(&home_fd, name, Mode::from_raw_mode(0o700)) {
        Ok(()) | Err(rustix::io::Errno::EXIST) => {}
        Err(e) => return Err(at(e.into())),
    }
    let ssh = crate::safe_fs::open_subdir(home_fd.as_fd(), name)
        .map_err(at)?
        .ok_or_else(|| at(std::io::ErrorKind::NotFound.into()))?;
    rustix::fs::fchown(
        &ssh,
        Some(rustix::fs::Uid::from_raw(a.uid)),
        Some(rustix::fs::Gid::from_raw(a.gid)),
    )
    .and_then(|()| rustix::fs::fchmod(&ssh, Mode::from_raw_mode(0o700)))
    .map_err(|e| at(e.into()))?;
    Ok(ssh)
}

/// Move a `~/.ssh` that is not a directory out of sshd's way: renamed to `aside`, or removed
/// if that name is taken by something it cannot replace (a directory the user made there
/// must not keep a link's keys readable).
fn put_aside(home: std::os::fd::BorrowedFd<'_>, aside: &str) -> std::io::Result<()> {
    let name = OsStr::new(".ssh");
    match rustix::fs::renameat(home, name, home, aside) {
        Ok(()) => Ok(()),
        Err(_) => crate::safe_fs::remove(home, name).map(drop),
    }
}

fn write_keys(host: &Host, name: &str, keys: &[String]) -> Result<(), String> {
    let a = passwd(host, name).ok_or_else(|| format!("account {name} has no passwd entry"))?;
    let ssh = ssh_dir(&a)?;
    let mut text = String::from("# Managed by Stratus: this file is rewritten when the user's keys change.\n");
    for k in keys {
        text.push_str(k.trim());
        text.push('\n');
    }
    let owner = crate::safe_fs::Owner {
        uid: a.uid,
        gid: a.gid,
        mode: 0o600,
    };
    let file = a.home.join(".ssh").join(AUTHORIZED_KEYS);
    // The second file first: a first one the user turned into a directory (which fails the
    // rename below) must not leave keys in the second.
    crate::safe_fs::remove(ssh.as_fd(), OsStr::new(AUTHORIZED_KEYS2))
        .map_err(|e| format!("{}2: {e}", file.display()))?;
    crate::safe_fs::replace(ssh.as_fd(), OsStr::new(AUTHORIZED_KEYS), text.as_bytes(), owner)
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
    if passwd(host, &a.name).is_none() {
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
    // No password (key logins only), not locked, not expired, a login shell.
    run(
        "usermod",
        &["--password", "*", "--expiredate", "", "--shell", "/bin/bash", &a.name],
    )?;
    write_keys(host, &a.name, &a.keys)?;
    set_sudo(host, &a.name, a.sudo)
}

fn revoke(host: &Host, name: &str, end_sessions: bool) -> Result<(), String> {
    if passwd(host, name).is_some() {
        write_keys(host, name, &[])?;
        // `--lock` alone does not stop a key login when sshd uses PAM; an expired account
        // is refused by PAM's account check.
        run(
            "usermod",
            &["--lock", "--expiredate", "1", "--shell", "/usr/sbin/nologin", name],
        )?;
    }
    set_sudo(host, name, false)?;
    if end_sessions {
        // pkill exits 1 when nothing matched: not an error.
        let _ = run("pkill", &["-KILL", "-u", name]);
    }
    Ok(())
}

/// Remove a managed account for good (preparing an image): its processes, sudo, its home
/// directory with its keys, its mail, the account (`userdel`), and its record. The home and
/// mail are removed by descriptor (no link the user planted is followed; a home that is not a
/// directory of the account's own is left alone) rather than by `userdel --remove`, whose
/// removal walks paths.
pub fn remove(host: &Host, name: &str) -> Result<(), String> {
    set_sudo(host, name, false)?;
    if let Some(a) = passwd(host, name) {
        let _ = run("pkill", &["-KILL", "-u", name]);
        remove_home(&a)?;
        if let Ok(mail) = crate::safe_fs::open_dir(Path::new("/var/mail")) {
            let _ = crate::safe_fs::remove(mail.as_fd(), OsStr::new(name));
        }
        run("userdel", &["--force", name])?;
    }
    let mut managed = host.managed();
    managed.remove(name);
    host.save(&managed)
}

/// Remove the account's home directory if it is a directory the account owns.
fn remove_home(a: &Account) -> Result<(), String> {
    let (Some(parent), Some(name)) = (a.home.parent(), a.home.file_name()) else {
        return Ok(());
    };
    let Ok(parent) = crate::safe_fs::open_dir(parent) else {
        return Ok(());
    };
    match crate::safe_fs::kind(parent.as_fd(), name) {
        Ok(Some((FileType::Directory, st))) if st.st_uid == a.uid => crate::safe_fs::remove_all(parent.as_fd(), name)
            .map(drop)
            .map_err(|e| format!("cannot remove {}: {e}", a.home.display())),
        _ => Ok(()),
    }
}

/// The PAM files that get the session hook, and the line (marked, so it is added once).
const PAM_FILES: &[&str] = &["/etc/pam.d/sshd", "/etc/pam.d/sudo"];
const PAM_MARK: &str = "# stratus: report logins and sudo to the agent";

/// Make sshd and sudo report managed accounts' sessions to the agent (`pam_exec`, optional:
/// a report can never stop a login). Idempotent.
fn install_pam_hook(host: &Host) -> Result<(), String> {
    let state_dir = &host.state_dir;
    let me = std::env::current_exe().map_err(|e| format!("cannot find the agent's own path: {e}"))?;
    let line = format!(
        "{PAM_MARK}\nsession optional pam_exec.so quiet {} --state-dir {} access-event\n",
        me.display(),
        state_dir.display()
    );
    for file in &host.pam_files {
        let Ok(text) = std::fs::read_to_string(file) else {
            continue; // sudo not installed: nothing to hook
        };
        if text.contains(PAM_MARK) {
            continue;
        }
        let tmp = file.with_extension("stratus-new");
        std::fs::write(
            &tmp,
            format!("{text}{}{line}", if text.ends_with('\n') { "" } else { "\n" }),
        )
        .and_then(|()| std::fs::rename(&tmp, file))
        .map_err(|e| format!("{}: {e}", file.display()))?;
    }
    Ok(())
}

/// Start sshd if it is installed and not running.
fn ensure_sshd(host: &Host) -> Result<(), String> {
    if !host.sshd.exists() {
        return Err("openssh-server is not installed on this image; logins cannot work".into());
    }
    if run("pgrep", &["-x", "sshd"]).is_ok() {
        return Ok(());
    }
    run("ssh-keygen", &["-A"])?;
    std::fs::create_dir_all("/run/sshd").map_err(|e| format!("/run/sshd: {e}"))?;
    run(&host.sshd.to_string_lossy(), &[]).map(drop)
}

/// Empty the `authorized_keys` of every account Stratus did not make (`exclusive`), each
/// problem reported and the rest done.
fn clear_foreign_keys(host: &Host, managed: &BTreeSet<String>) -> Result<(), String> {
    let problems: Vec<String> = accounts(&host.passwd)?
        .iter()
        .filter(|a| !managed.contains(&a.name))
        .filter_map(|a| clear_keys(a).err())
        .collect();
    if problems.is_empty() {
        Ok(())
    } else {
        Err(problems.join("; "))
    }
}

/// Leave an account no key sshd would read (see the module docs): its key files are replaced
/// by empty ones, a `~/.ssh` that is not a directory is put aside.
fn clear_keys(a: &Account) -> Result<(), String> {
    let at = |e: std::io::Error| format!("{}/.ssh: {e}", a.home.display());
    let home = match crate::safe_fs::open_dir(&a.home) {
        Ok(fd) => fd,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(format!("the home directory {}: {e}", a.home.display())),
    };
    let name = OsStr::new(".ssh");
    let ssh = match crate::safe_fs::kind(home.as_fd(), name).map_err(at)? {
        None => return Ok(()),
        Some((FileType::Directory, _)) => match crate::safe_fs::open_subdir(home.as_fd(), name).map_err(at)? {
            Some(fd) => fd,
            None => return Ok(()),
        },
        Some(_) => {
            return put_aside(home.as_fd(), ".ssh.stratus-disabled").map_err(at);
        }
    };
    for file in [AUTHORIZED_KEYS, AUTHORIZED_KEYS2] {
        let keys = match crate::safe_fs::kind(ssh.as_fd(), OsStr::new(file)).map_err(at)? {
            None | Some((FileType::Directory, _)) => continue,
            Some((FileType::RegularFile, st)) if st.st_size == 0 => continue,
            Some(_) => file,
        };
        let owner = crate::safe_fs::Owner {
            uid: a.uid,
            gid: a.gid,
            mode: 0o600,
        };
        crate::safe_fs::replace(ssh.as_fd(), OsStr::new(keys), b"", owner)
            .map_err(|e| format!("{}/.ssh/{keys}: {e}", a.home.display()))?;
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
        && let Err(e) = clear_foreign_keys(host, &managed)
    {
        report.problems.push(e);
    }
    if !logins.accounts.is_empty() {
        if let Err(e) = install_pam_hook(host) {
            report.problems.push(e);
        }
        if let Err(e) = ensure_sshd(host) {
            report.problems.push(e);
        }
    }
    report
}
