//! Preparing an instance to be captured as an image (`stratus server rebundle`).
//!
//! An image made from a running server must not carry what belongs to that one instance or
//! to nobody at all: a second instance booted from it would share the first one's identity,
//! keys and secrets. The agent does the preparation, on the instance, because only there is
//! the file system a cloud snapshots (EC2's `CreateImage`) within reach. Two steps:
//!
//! 1. **Scan.** Every regular file of the root file system (one device: `/proc`, `/sys`,
//!    `/dev`, `/run` and other mounts are not part of the image) is searched for the secret
//!    values the control plane sent (the server's `cred:` inputs), and so is every file name.
//!    If one is found the preparation is refused with the files' paths, never the value (a
//!    secret in a path, a file named after it, is shown as `***`), and
//!    nothing is changed: the server keeps running as it was. A boot script that writes a
//!    secret into a file should write it again at every boot instead (an every-boot or
//!    per-instance script), so the image does not need it.
//! 2. **Clean.** Removed or emptied, each reported as one line:
//!    - the agent's identity: its credential, run journal, artifact cache and socket (the
//!      whole state directory, last, after the answer is sent);
//!    - SSH host keys (`/etc/ssh/ssh_host_*`: the next instance makes its own);
//!    - managed SSH accounts (`userdel`), their home directories, sudoers files and so their
//!      authorized keys;
//!    - the machine id (`/etc/machine-id` emptied, `/var/lib/dbus/machine-id` removed);
//!    - logs: rotated ones (`*.gz`, `*.1`, `*.old`) removed, the rest truncated to zero, the
//!      journal's files removed;
//!    - shell and tool histories of root, of every directory in `/home` and of the home of
//!      every account in the image's own `/etc/passwd` (service accounts' homes like
//!      `/var/lib/svc` too);
//!    - cloud-init's per-instance cache and its copy of the user-data (`/var/lib/cloud`);
//!    - temporary files (`/tmp`, `/var/tmp`).
//!
//! Accounts, keys and files the image had before Stratus are left alone; so is everything a
//! script installed (the point of the image).
//!
//! The clean-up runs as root in directories other users own (a service's home and logs,
//! `/tmp`), so it follows [`crate::safe_fs`]: directories are opened by descriptor beneath the
//! image root (a link is followed only where only root could have made it, and never out of
//! the root), histories are removed with `unlinkat` (the name goes, never what a link points
//! to), logs are truncated through a descriptor opened without following a link or blocking
//! on a FIFO, and a log with other hard links is replaced by a new empty file instead, so
//! the other names keep their content. The scan walks directories by descriptor too (a
//! directory swapped for a link while it looks is not entered) and reads only regular files,
//! opened the same way.

use std::collections::HashSet;
use std::ffi::OsStr;
use std::io::Read;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::rc::Rc;

use rustix::fs::{FileType, Mode, OFlags};

use stratus_agent_proto::limits::MAX_PREPARED_LINES;

/// Where to prepare: `/` on an instance, a scratch tree in tests.
#[derive(Debug, Clone)]
pub struct Target {
    pub root: PathBuf,
    /// The agent's state directory (skipped by the scan; removed by the caller at the end).
    pub state_dir: PathBuf,
    /// Managed accounts to remove (from `accounts.json`).
    pub accounts: crate::accounts::Host,
}

/// Files larger than this are read in pieces of this size (with an overlap, so a secret cut
/// by a piece boundary is still found).
const CHUNK: usize = 1024 * 1024;

/// The files (by path, escaped for printing) under `root` whose content or name holds one of
/// `secrets`, at most [`MAX_PREPARED_LINES`]. Only `root`'s own device is searched, symbolic
/// links are not followed, `skip` is not entered.
pub fn scan(root: &Path, skip: &Path, secrets: &[&[u8]]) -> std::io::Result<Vec<String>> {
    let secrets: Vec<&[u8]> = secrets.iter().copied().filter(|s| !s.is_empty()).collect();
    if secrets.is_empty() {
        return Ok(vec![]);
    }
    let finder = aho_corasick::AhoCorasick::new(&secrets).map_err(std::io::Error::other)?;
    let overlap = secrets.iter().map(|s| s.len()).max().unwrap_or(1) - 1;
    let root_fd = rustix::fs::open(
        root,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )?;
    let device = rustix::fs::fstat(&root_fd)?.st_dev;
    let mut found = vec![];
    // Directories still to search: the descriptor of their parent (shared) and their name,
    // opened only when searched (without following a link), so few descriptors are open.
    let mut stack: Vec<(Rc<OwnedFd>, std::ffi::OsString, PathBuf)> = vec![];
    let mut buf = vec![0u8; CHUNK + overlap];
    let mut next = Some((root_fd, root.to_path_buf()));
    loop {
        let (dir, dir_path) = match next.take() {
            Some(d) => d,
            None => {
                let Some((parent, name, path)) = stack.pop() else { break };
                match crate::safe_fs::open_subdir(parent.as_fd(), &name) {
                    Ok(Some(fd)) => (fd, path),
                    _ => continue, // vanished, or swapped for something else while we looked
                }
            }
        };
        let dir = Rc::new(dir);
        for name in crate::safe_fs::list(dir.as_fd()).unwrap_or_default() {
            let path = dir_path.join(&name);
            let Ok(Some((kind, st))) = crate::safe_fs::kind(dir.as_fd(), &name) else {
                continue;
            };
            if st.st_dev != device || path == skip {
                continue;
            }
            let hit = finder.is_match(name.as_bytes())
                || (kind == FileType::RegularFile
                    && crate::safe_fs::open_regular(dir.as_fd(), &name)
                        .ok()
                        .flatten()
                        .is_some_and(|f| holds_in(&finder, f, &mut buf, overlap).unwrap_or(false)))
                || (kind == FileType::Symlink
                    && rustix::fs::readlinkat(dir.as_fd(), name.as_os_str(), Vec::new())
                        .is_ok_and(|t| finder.is_match(t.as_bytes())));
            if hit {
                found.push(printable(root, &path, &finder));
                if found.len() >= MAX_PREPARED_LINES {
                    return Ok(found);
                }
            }
            if kind == FileType::Directory {
                stack.push((dir.clone(), name, path));
            }
        }
    }
    found.sort();
    Ok(found)
}

#[cfg(test)]
fn holds(finder: &aho_corasick::AhoCorasick, path: &Path, buf: &mut [u8], overlap: usize) -> std::io::Result<bool> {
    holds_in(finder, std::fs::File::open(path)?, buf, overlap)
}

/// Whether the file holds one of the secrets, read in pieces of the buffer's size.
fn holds_in(
    finder: &aho_corasick::AhoCorasick,
    mut f: std::fs::File,
    buf: &mut [u8],
    overlap: usize,
) -> std::io::Result<bool> {
    let mut kept = 0;
    loop {
        let n = f.read(&mut buf[kept..])?;
        if n == 0 {
            return Ok(false);
        }
        let end = kept + n;
        if finder.is_match(&buf[..end]) {
            return Ok(true);
        }
        // Keep the tail that could be the start of a secret cut by this read.
        let tail = overlap.min(end);
        buf.copy_within(end - tail..end, 0);
        kept = tail;
    }
}

/// `/etc/app.conf` for `ROOT/etc/app.conf`, escaped so a hostile file name prints on one line.
/// The path under `root` for the report: every secret in it (a file or directory named after
/// one) replaced by `***` before anything else, then escaped onto one line, at most 1024
/// characters. The report is kept and shown by the control plane, so it never holds a value.
fn printable(root: &Path, path: &Path, finder: &aho_corasick::AhoCorasick) -> String {
    let rel = path.strip_prefix(root).unwrap_or(path);
    let mut raw = b"/".to_vec();
    raw.extend_from_slice(rel.as_os_str().as_bytes());
    let masks = vec!["***"; finder.patterns_len()];
    let masked = finder.replace_all_bytes(&raw, &masks);
    let shown: String = String::from_utf8_lossy(&masked).escape_debug().collect();
    shown.chars().take(1024).collect()
}

/// Clean `t` (see the module docs); the lines say what went. The state directory is left to
/// the caller, which removes it after it has sent the answer.
pub fn clean(t: &Target) -> Result<Vec<String>, String> {
    let mut lines = vec![];
    let root = &t.root;
    let mut say = |what: &str, n: usize| {
        if n > 0 {
            lines.push(format!("{what}: {n}"));
        }
    };
    // Managed accounts first, with their home directories and keys.
    let managed = t.accounts.managed();
    for name in &managed {
        crate::accounts::remove(&t.accounts, name)?;
    }
    say("managed SSH accounts", managed.len());
    let root_fd = rustix::fs::open(
        root,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| format!("cannot open {}: {}", root.display(), std::io::Error::from(e)))?;
    let root_fd = root_fd.as_fd();
    say(
        "ssh host keys",
        remove_matching(root_fd, "etc/ssh", |n| n.starts_with("ssh_host_"))?,
    );
    let mut ids = 0;
    if let Some(etc) = beneath(root_fd, "etc")
        && crate::safe_fs::truncate(etc.as_fd(), OsStr::new("machine-id"))?
    {
        ids += 1;
    }
    ids += remove_matching(root_fd, "var/lib/dbus", |n| n == "machine-id")?;
    say("machine ids", ids);
    say("log files", clean_logs(root_fd)?);
    say("shell histories", clean_histories(root_fd)?);
    let cloud = ["instance", "instances", "data", "sem", "handlers"];
    say(
        "cloud-init instance data",
        remove_matching(root_fd, "var/lib/cloud", |n| cloud.contains(&n))?,
    );
    let mut tmp = 0;
    for d in ["tmp", "var/tmp"] {
        tmp += remove_matching(root_fd, d, |_| true)?;
    }
    say("temporary files", tmp);
    Ok(lines)
}

/// What shells and tools leave in a home directory.
const HISTORIES: [&str; 9] = [
    ".bash_history",
    ".zsh_history",
    ".python_history",
    ".lesshst",
    ".viminfo",
    ".mysql_history",
    ".psql_history",
    ".sqlite_history",
    ".wget-hsts",
];

/// Remove the entries of the directory `dir` (beneath the root) whose names `which` accepts,
/// directories with their content. `dir` itself stays.
fn remove_matching(root: BorrowedFd<'_>, dir: &str, which: impl Fn(&str) -> bool) -> Result<usize, String> {
    let Some(d) = beneath(root, dir) else {
        return Ok(0);
    };
    let mut n = 0;
    for name in crate::safe_fs::list(d.as_fd()).unwrap_or_default() {
        if which(&name.to_string_lossy()) {
            n += usize::from(
                crate::safe_fs::remove_all(d.as_fd(), &name)
                    .map_err(|e| format!("cannot remove /{dir}/{}: {e}", name.to_string_lossy()))?,
            );
        }
    }
    Ok(n)
}

fn is_rotated(name: &str) -> bool {
    let ext = name.rsplit_once('.').map(|(_, e)| e);
    matches!(ext, Some("gz" | "xz" | "bz2" | "zst" | "old")) || ext.is_some_and(|e| e.parse::<u32>().is_ok())
}

/// A directory beneath the image root (see [`crate::safe_fs::open_dir_beneath`]), if it is
/// there.
fn beneath(root: BorrowedFd<'_>, path: &str) -> Option<OwnedFd> {
    crate::safe_fs::open_dir_beneath(root, Path::new(path)).ok()
}

/// How deep the clean-up descends into `/var/log` (one descriptor open per level).
const MAX_LOG_DEPTH: usize = 32;

/// Rotated logs and the journal's files go; every other log is truncated (a daemon may hold
/// it open, and packages expect the files to exist).
fn clean_logs(root: BorrowedFd<'_>) -> Result<usize, String> {
    let Some(log) = beneath(root, "var/log") else {
        return Ok(0);
    };
    clean_log_dir(log.as_fd(), 0)
}

fn clean_log_dir(dir: BorrowedFd<'_>, depth: usize) -> Result<usize, String> {
    let mut n = 0;
    let names = crate::safe_fs::list(dir).unwrap_or_default();
    for name in names {
        let Ok(Some((kind, _))) = crate::safe_fs::kind(dir, &name) else {
            continue; // vanished while we looked
        };
        if kind == FileType::Directory && depth < MAX_LOG_DEPTH {
            let Ok(Some(sub)) = crate::safe_fs::open_subdir(dir, &name) else {
                continue;
            };
            if depth == 0 && name == "journal" {
                for f in crate::safe_fs::list(sub.as_fd()).unwrap_or_default() {
                    n += usize::from(crate::safe_fs::remove_all(sub.as_fd(), &f)?);
                }
            } else {
                n += clean_log_dir(sub.as_fd(), depth + 1)?;
            }
        } else if kind == FileType::RegularFile {
            if is_rotated(&name.to_string_lossy()) {
                n += usize::from(crate::safe_fs::remove(dir, &name).map_err(|e| e.to_string())?);
            } else if crate::safe_fs::truncate(dir, &name)? {
                n += 1;
            }
        }
    }
    Ok(n)
}

/// The largest `/etc/passwd` the clean-up reads.
const MAX_PASSWD: u64 = 16 * 1024 * 1024;

/// The home directories whose histories go: `/root`, every directory in `/home`, and the home
/// of every account in the image's own `/etc/passwd`.
fn homes(root: BorrowedFd<'_>) -> Vec<PathBuf> {
    let mut homes = vec![PathBuf::from("/root")];
    if let Some(home) = beneath(root, "home") {
        for n in crate::safe_fs::list(home.as_fd()).unwrap_or_default() {
            homes.push(Path::new("/home").join(n));
        }
    }
    let passwd = beneath(root, "etc")
        .and_then(|etc| crate::safe_fs::read_regular(etc.as_fd(), OsStr::new("passwd"), MAX_PASSWD).ok())
        .flatten()
        .unwrap_or_default();
    for line in passwd.split(|b| *b == b'\n') {
        let fields: Vec<&[u8]> = line.split(|b| *b == b':').collect();
        if fields.len() >= 7 && fields[5].starts_with(b"/") {
            homes.push(PathBuf::from(OsStr::from_bytes(fields[5])));
        }
    }
    homes
}

/// Remove the histories of every home (each directory once), beneath the image root.
fn clean_histories(root: BorrowedFd<'_>) -> Result<usize, String> {
    let mut seen = HashSet::new();
    let mut n = 0;
    for home in homes(root) {
        let Ok(dir) = crate::safe_fs::open_dir_beneath(root, &home) else {
            continue; // missing, or a link someone else could have made
        };
        let Ok(st) = rustix::fs::fstat(&dir) else { continue };
        if !seen.insert((st.st_dev, st.st_ino)) {
            continue;
        }
        for name in HISTORIES {
            n += usize::from(
                crate::safe_fs::remove(dir.as_fd(), OsStr::new(name))
                    .map_err(|e| format!("cannot remove {}/{name}: {e}", home.display()))?,
            );
        }
    }
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tree() -> tempfile::TempDir {
        let t = tempfile::tempdir().unwrap();
        let r = t.path();
        for (path, content) in [
            ("etc/ssh/ssh_host_ed25519_key", "KEY"),
            ("etc/ssh/ssh_host_ed25519_key.pub", "PUB"),
            ("etc/ssh/sshd_config", "Port 22"),
            ("etc/machine-id", "0123456789abcdef"),
            ("var/lib/dbus/machine-id", "0123456789abcdef"),
            ("var/log/syslog", "lines"),
            ("var/log/syslog.1", "older"),
            ("var/log/nginx/access.log.2.gz", "gz"),
            ("var/log/nginx/access.log", "GET /"),
            ("var/log/journal/abc/system.journal", "j"),
            ("root/.bash_history", "echo hi"),
            ("home/alice/.python_history", "import os"),
            ("home/alice/notes.txt", "kept"),
            ("var/lib/cloud/instances/i-1/user-data.txt", "token"),
            ("var/lib/cloud/scripts/per-boot/keep.sh", "kept"),
            ("tmp/build/obj.o", "o"),
            ("var/tmp/x", "x"),
            ("opt/app/bin", "the work"),
        ] {
            let p = r.join(path);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(p, content).unwrap();
        }
        t
    }

    fn target(t: &tempfile::TempDir) -> Target {
        let state_dir = t.path().join("var/lib/stratus-agent");
        std::fs::create_dir_all(&state_dir).unwrap();
        Target {
            root: t.path().to_path_buf(),
            accounts: crate::accounts::Host::new(&state_dir),
            state_dir,
        }
    }

    #[test]
    fn clean_removes_instance_state_and_keeps_the_work() {
        let t = tree();
        let lines = clean(&target(&t)).unwrap();
        let r = t.path();
        for gone in [
            "etc/ssh/ssh_host_ed25519_key",
            "etc/ssh/ssh_host_ed25519_key.pub",
            "var/lib/dbus/machine-id",
            "var/log/syslog.1",
            "var/log/nginx/access.log.2.gz",
            "var/log/journal/abc",
            "root/.bash_history",
            "home/alice/.python_history",
            "var/lib/cloud/instances",
            "tmp/build",
            "var/tmp/x",
        ] {
            assert!(!r.join(gone).exists(), "{gone} is removed");
        }
        for empty in ["etc/machine-id", "var/log/syslog", "var/log/nginx/access.log"] {
            assert_eq!(
                std::fs::read(r.join(empty)).unwrap(),
                b"",
                "{empty} is emptied, not removed"
            );
        }
        for kept in [
            "etc/ssh/sshd_config",
            "home/alice/notes.txt",
            "opt/app/bin",
            "var/lib/cloud/scripts/per-boot/keep.sh",
            "tmp",
        ] {
            assert!(r.join(kept).exists(), "{kept} is kept");
        }
        assert!(lines.contains(&"ssh host keys: 2".to_string()), "{lines:?}");
        assert!(lines.contains(&"shell histories: 2".to_string()), "{lines:?}");
        // Cleaning twice finds nothing more to remove and does not fail.
        let again = clean(&target(&t)).unwrap();
        assert!(!again.iter().any(|l| l.starts_with("ssh host keys")), "{again:?}");
    }

    #[test]
    fn clean_does_not_follow_symbolic_links_out_of_the_tree() {
        let t = tree();
        let outside = tempfile::tempdir().unwrap();
        std::fs::write(outside.path().join("precious"), "keep me").unwrap();
        std::fs::remove_dir_all(t.path().join("var/tmp")).unwrap();
        std::os::unix::fs::symlink(outside.path(), t.path().join("var/tmp")).unwrap();
        std::fs::remove_file(t.path().join("etc/machine-id")).unwrap();
        std::os::unix::fs::symlink(outside.path().join("precious"), t.path().join("etc/machine-id")).unwrap();
        clean(&target(&t)).unwrap();
        assert_eq!(
            std::fs::read_to_string(outside.path().join("precious")).unwrap(),
            "keep me",
            "nothing outside the tree is touched"
        );
    }

    #[test]
    fn scan_finds_secrets_in_content_names_and_across_chunks() {
        let t = tree();
        let r = t.path();
        let secret = b"s3cr3t-value-xyz";
        std::fs::write(r.join("etc/app.conf"), b"password = s3cr3t-value-xyz\n").unwrap();
        // Across the boundary of the first read (CHUNK + the overlap of 15 bytes).
        let mut big = vec![b'a'; CHUNK + 10];
        big.extend_from_slice(secret);
        big.extend_from_slice(&[b'b'; 100]);
        std::fs::write(r.join("opt/app/big.bin"), &big).unwrap();
        std::fs::write(r.join("opt/s3cr3t-value-xyz"), b"").unwrap();
        std::fs::create_dir_all(r.join("var/lib/stratus-agent")).unwrap();
        std::fs::write(r.join("var/lib/stratus-agent/journal"), secret).unwrap();
        let found = scan(r, &r.join("var/lib/stratus-agent"), &[secret]).unwrap();
        assert_eq!(
            found,
            vec!["/etc/app.conf", "/opt/***", "/opt/app/big.bin"],
            "the state directory is skipped"
        );
        assert!(scan(r, &r.join("x"), &[b"not-there-anywhere"]).unwrap().is_empty());
        assert!(
            scan(r, &r.join("x"), &[b""]).unwrap().is_empty(),
            "empty secrets match nothing"
        );
    }

    #[test]
    fn hostile_file_names_print_on_one_line() {
        let t = tempfile::tempdir().unwrap();
        std::fs::write(t.path().join("a\nb-secret"), b"").unwrap();
        let found = scan(t.path(), &t.path().join("x"), &[b"secret"]).unwrap();
        assert_eq!(found, vec!["/a\\nb-***"]);
    }

    /// A file or directory named after a secret is reported, with the secret masked: the
    /// refusal is stored and shown by the control plane.
    #[test]
    fn a_secret_in_a_name_is_reported_masked() {
        let t = tempfile::tempdir().unwrap();
        let r = t.path();
        let secret: &[u8] = b"hunter2-TOKEN";
        std::fs::create_dir_all(r.join("srv/dir-hunter2-TOKEN/x")).unwrap();
        std::fs::write(r.join("srv/dir-hunter2-TOKEN/x/file"), b"hunter2-TOKEN").unwrap();
        std::fs::write(r.join("srv/hunter2-TOKENhunter2-TOKEN.key"), b"").unwrap();
        std::fs::write(r.join("srv/other"), b"").unwrap();
        let found = scan(r, &r.join("none"), &[secret, b"unused"]).unwrap();
        assert_eq!(found, vec!["/srv/******.key", "/srv/dir-***", "/srv/dir-***/x/file"]);
        assert!(found.iter().all(|p| !p.contains("hunter2")), "{found:?}");
    }

    proptest::proptest! {
        /// Whatever the piece size and wherever the secret sits, the search in pieces finds
        /// exactly what a search of the whole file finds.
        #[test]
        fn pieces_find_what_the_whole_finds(
            data in proptest::collection::vec(0u8..4, 0..400),
            secret in proptest::collection::vec(0u8..4, 1..12),
            at in proptest::option::of(0usize..400),
            chunk in 1usize..64,
        ) {
            let mut data = data;
            if let Some(at) = at {
                let at = at.min(data.len());
                data.splice(at..at, secret.iter().copied());
            }
            let dir = tempfile::tempdir().unwrap();
            let file = dir.path().join("f");
            std::fs::write(&file, &data).unwrap();
            let finder = aho_corasick::AhoCorasick::new([&secret]).unwrap();
            let overlap = secret.len() - 1;
            let mut buf = vec![0u8; chunk + overlap];
            let whole = data.windows(secret.len()).any(|w| w == secret.as_slice());
            proptest::prop_assert_eq!(holds(&finder, &file, &mut buf, overlap).unwrap(), whole);
            if at.is_some() {
                proptest::prop_assert!(whole);
            }
        }
    }

    #[test]
    fn rotated_logs() {
        for r in ["syslog.1", "x.log.2.gz", "a.old", "b.xz"] {
            assert!(is_rotated(r), "{r}");
        }
        for k in ["syslog", "access.log", "dpkg.log", "lastlog"] {
            assert!(!is_rotated(k), "{k}");
        }
    }
}
