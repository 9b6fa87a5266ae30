//! Hostile directories: every place where the agent (root) writes into a directory another
//! user controls — managed SSH keys (grant, re-apply, revoke, `exclusive`), managed files in a
//! user's directory, and the clean-up before a rebundle. In each, the user plants symbolic links
//! and hard links to a root-owned sentinel, FIFOs, and links in place of directories; the
//! sentinel's content, owner and mode must not change and the agent must not hang.
//!
//! Real accounts (`useradd`, unique names, removed by a guard) and real unprivileged owners
//! (`nobody`); needs root.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use stratus_agent::accounts::{self, Host};
use stratus_agent_proto::{LoginAccount, Logins, ManagedFile};

/// How long one agent step may take before the test calls it hung (generous: a busy machine).
const DEADLINE: Duration = Duration::from_secs(120);

const NOBODY: u32 = 65534;

/// Run `f` on its own thread; panic if it does not return in time (a FIFO that blocked it).
fn bounded<T: Send + 'static>(what: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(f());
    });
    rx.recv_timeout(DEADLINE)
        .unwrap_or_else(|_| panic!("{what}: the agent hung"))
}

/// A root-owned file and directory standing in for `/etc/ld.so.preload` and `/etc/sudoers.d`.
struct Sentinel {
    _dir: tempfile::TempDir,
    file: PathBuf,
    dir: PathBuf,
}

impl Sentinel {
    fn new() -> Self {
        let d = tempfile::tempdir().expect("tmp");
        std::fs::set_permissions(d.path(), std::fs::Permissions::from_mode(0o755)).expect("chmod");
        let file = d.path().join("ld.so.preload");
        std::fs::write(&file, "root's own content\n").expect("write");
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)).expect("chmod");
        let dir = d.path().join("sudoers.d");
        std::fs::create_dir(&dir).expect("mkdir");
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o750)).expect("chmod");
        std::fs::write(dir.join("README"), "root's\n").expect("write");
        Sentinel { _dir: d, file, dir }
    }

    fn assert_intact(&self, after: &str) {
        let m = std::fs::metadata(&self.file).expect("sentinel file");
        assert_eq!(
            std::fs::read_to_string(&self.file).expect("read"),
            "root's own content\n",
            "{after}: the sentinel's content changed"
        );
        assert_eq!(
            (m.uid(), m.gid(), m.mode() & 0o7777),
            (0, 0, 0o644),
            "{after}: the sentinel's owner or mode changed"
        );
        let d = std::fs::metadata(&self.dir).expect("sentinel dir");
        assert_eq!(
            (d.uid(), d.gid(), d.mode() & 0o7777),
            (0, 0, 0o750),
            "{after}: the sentinel directory's owner or mode changed"
        );
        let names: Vec<String> = std::fs::read_dir(&self.dir)
            .expect("list")
            .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(
            names,
            ["README"],
            "{after}: something was written in the sentinel directory"
        );
    }
}

static USERS: AtomicUsize = AtomicUsize::new(0);

/// The tests that make accounts run one at a time (each test is a process of its own under
/// nextest): `useradd`, `usermod` and `userdel` lock `/etc/passwd` and fail rather than wait
/// long when another holds it. Taken first in a test, so it is released after its accounts
/// are removed.
fn accounts_lock() -> std::fs::File {
    let f = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(std::env::temp_dir().join("stratus-agent-hostile-dirs.lock"))
        .expect("lock file");
    rustix::fs::flock(&f, rustix::fs::FlockOperation::LockExclusive).expect("flock");
    f
}

/// A real account on this host, removed (with its home) when dropped.
struct User {
    name: String,
    uid: u32,
    gid: u32,
    home: PathBuf,
}

impl User {
    /// `useradd` with a name unique to this test process; `home` elsewhere than `/home` if given.
    fn new(home: Option<&Path>) -> Self {
        let n = USERS.fetch_add(1, Ordering::SeqCst);
        let name = format!("stx{}u{n}", std::process::id());
        let mut c = Command::new("useradd");
        c.args(["--shell", "/bin/bash"]);
        match home {
            Some(h) => c.arg("--no-create-home").arg("--home-dir").arg(h),
            None => c.arg("--create-home"),
        };
        let out = c.arg(&name).output().expect("useradd");
        assert!(
            out.status.success(),
            "useradd: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let line = std::fs::read_to_string("/etc/passwd")
            .expect("passwd")
            .lines()
            .find(|l| l.starts_with(&format!("{name}:")))
            .expect("the new account")
            .to_string();
        let f: Vec<&str> = line.split(':').collect();
        User {
            uid: f[2].parse().expect("uid"),
            gid: f[3].parse().expect("gid"),
            home: PathBuf::from(f[5]),
            name,
        }
    }

    fn passwd_line(&self) -> String {
        format!(
            "{}:x:{}:{}::{}:/bin/bash\n",
            self.name,
            self.uid,
            self.gid,
            self.home.display()
        )
    }

    fn ssh(&self) -> PathBuf {
        self.home.join(".ssh")
    }

    /// What the user plants is theirs (`lchown`, as if they had made it).
    fn own(&self, path: &Path) {
        std::os::unix::fs::lchown(path, Some(self.uid), Some(self.gid)).expect("lchown");
    }
}

impl Drop for User {
    fn drop(&mut self) {
        let _ = Command::new("pkill").args(["-KILL", "-u", &self.name]).status();
        let _ = Command::new("userdel").args(["--force", &self.name]).status();
        // Rust's remove_dir_all does not follow the links planted inside.
        if self.home.starts_with("/home") {
            let _ = std::fs::remove_dir_all(&self.home);
        }
    }
}

fn mkfifo(path: &Path) {
    let ok = Command::new("mkfifo").arg(path).status().expect("mkfifo");
    assert!(ok.success());
}

/// Remove whatever is at `path` (not following it).
fn clear(path: &Path) {
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.is_dir() => std::fs::remove_dir_all(path).expect("rm -r"),
        Ok(_) => std::fs::remove_file(path).expect("rm"),
        Err(_) => {}
    }
}

/// The account state of one test: scratch state, sudoers and passwd (only the test's own
/// accounts, so `exclusive` never reaches the host's), no PAM files, no sshd.
fn host(scratch: &Path, users: &[&User], managed: &[&User]) -> Host {
    let state = scratch.join("state");
    std::fs::create_dir_all(&state).expect("state");
    let names: Vec<&str> = managed.iter().map(|u| u.name.as_str()).collect();
    std::fs::write(state.join("accounts.json"), serde_json::to_vec(&names).expect("json")).expect("record");
    let passwd = scratch.join("passwd");
    std::fs::write(&passwd, users.iter().map(|u| u.passwd_line()).collect::<String>()).expect("passwd");
    Host {
        state_dir: state,
        sudoers_dir: scratch.join("sudoers.d"),
        passwd,
        pam_files: vec![],
        sshd: scratch.join("no-sshd-here"),
    }
}

fn logins(accounts: &[(&User, &str)], exclusive: bool) -> Logins {
    Logins {
        accounts: accounts
            .iter()
            .map(|(u, key)| LoginAccount {
                name: u.name.clone(),
                keys: vec![key.to_string()],
                sudo: false,
            })
            .collect(),
        end_sessions: false,
        exclusive,
    }
}

fn apply(what: &str, host: &Host, l: Logins) -> accounts::Report {
    let host = host.clone();
    bounded(what, move || accounts::apply(&host, &l))
}

/// Problems other than the missing sshd (these tests run none).
fn problems(r: &accounts::Report) -> Vec<&String> {
    r.problems.iter().filter(|p| !p.contains("openssh-server")).collect()
}

const KEY: &str = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHostileDirectoriesTestKey0000000000000000 u@t";

#[test]
fn planted_links_and_fifos_in_a_login_users_ssh_directory_change_nothing_outside() {
    let _lock = accounts_lock();
    let s = Sentinel::new();
    let scratch = tempfile::tempdir().expect("tmp");
    let u = User::new(None);
    let host = host(scratch.path(), &[&u], &[&u]);
    let keys = u.ssh().join("authorized_keys");
    let r = apply("first grant", &host, logins(&[(&u, KEY)], false));
    assert!(problems(&r).is_empty(), "{r:?}");
    assert!(std::fs::read_to_string(&keys).expect("keys").contains(KEY));

    // Each plant, then a re-apply (as every agent does when a key is added).
    type Plant = fn(&User, &Sentinel);
    let plants: [(&str, Plant); 10] = [
        ("the old temporary name -> the sentinel", |u, s| {
            let p = u.ssh().join(".authorized_keys.stratus-new");
            std::os::unix::fs::symlink(&s.file, &p).expect("ln");
            u.own(&p);
        }),
        ("authorized_keys -> the sentinel", |u, s| {
            let p = u.ssh().join("authorized_keys");
            clear(&p);
            std::os::unix::fs::symlink(&s.file, &p).expect("ln");
            u.own(&p);
        }),
        ("authorized_keys a hard link to the sentinel", |u, s| {
            let p = u.ssh().join("authorized_keys");
            clear(&p);
            std::fs::hard_link(&s.file, &p).expect("ln");
        }),
        ("authorized_keys2 a hard link to the sentinel", |u, s| {
            std::fs::hard_link(&s.file, u.ssh().join("authorized_keys2")).expect("ln");
        }),
        ("authorized_keys a FIFO", |u, _| {
            let p = u.ssh().join("authorized_keys");
            clear(&p);
            mkfifo(&p);
            u.own(&p);
        }),
        ("~/.ssh -> the sentinel directory", |u, s| {
            clear(&u.ssh());
            std::os::unix::fs::symlink(&s.dir, u.ssh()).expect("ln");
            u.own(&u.ssh());
        }),
        ("~/.ssh -> the sentinel file", |u, s| {
            clear(&u.ssh());
            std::os::unix::fs::symlink(&s.file, u.ssh()).expect("ln");
            u.own(&u.ssh());
        }),
        ("~/.ssh a FIFO", |u, _| {
            clear(&u.ssh());
            mkfifo(&u.ssh());
            u.own(&u.ssh());
        }),
        (
            "~/.ssh -> the sentinel directory, its aside name taken by a directory",
            |u, s| {
                clear(&u.ssh());
                std::fs::create_dir(u.home.join(".ssh.not-a-directory")).expect("mkdir");
                std::os::unix::fs::symlink(&s.dir, u.ssh()).expect("ln");
                u.own(&u.ssh());
            },
        ),
        ("~/.ssh a hard link to the sentinel", |u, s| {
            clear(&u.ssh());
            std::fs::hard_link(&s.file, u.ssh()).expect("ln");
        }),
    ];
    for (what, plant) in plants {
        clear(&u.home.join(".ssh.not-a-directory"));
        plant(&u, &s);
        let r = apply(what, &host, logins(&[(&u, KEY)], false));
        s.assert_intact(what);
        assert!(problems(&r).is_empty(), "{what}: {r:?}");
        let m = std::fs::symlink_metadata(&keys).expect("keys");
        assert!(m.is_file(), "{what}: authorized_keys is a file again");
        assert_eq!(
            (m.uid(), m.mode() & 0o777, m.nlink()),
            (u.uid, 0o600, 1),
            "{what}: the user's own file, 0600, one link"
        );
        assert!(std::fs::read_to_string(&keys).expect("keys").contains(KEY), "{what}");
        let d = std::fs::symlink_metadata(u.ssh()).expect(".ssh");
        assert!(d.is_dir(), "{what}");
        assert_eq!((d.uid(), d.mode() & 0o777), (u.uid, 0o700), "{what}");
        assert!(
            !u.ssh().join("authorized_keys2").exists(),
            "{what}: a managed account has exactly its listed keys"
        );
    }

    // The account expiry (shadow's 8th field): none while granted, day 1 once revoked (PAM
    // refuses an expired account even for a key login).
    let expiry = |name: &str| {
        let shadow = std::fs::read_to_string("/etc/shadow").expect("shadow");
        let line = shadow
            .lines()
            .find(|l| l.split(':').next() == Some(name))
            .expect("in shadow")
            .to_string();
        line.split(':').nth(7).unwrap_or_default().to_string()
    };
    assert_eq!(expiry(&u.name), "", "granted: not expired");

    // Revoked with a link planted where the keys go: the keys go, the sentinel stays.
    let p = u.ssh().join("authorized_keys");
    clear(&p);
    std::os::unix::fs::symlink(&s.file, &p).expect("ln");
    let r = apply("revoke", &host, logins(&[], false));
    assert_eq!(r.revoked, std::slice::from_ref(&u.name), "{r:?}");
    s.assert_intact("revoke");
    assert_eq!(expiry(&u.name), "1", "revoked: expired");
    let left = std::fs::read_to_string(&keys).expect("keys");
    assert!(!left.contains("ssh-ed25519"), "no key is left: {left}");

    // Revoked again with authorized_keys made a directory and a key in authorized_keys2.
    clear(&keys);
    std::fs::create_dir(&keys).expect("mkdir");
    let second = u.ssh().join("authorized_keys2");
    std::fs::write(&second, format!("{KEY}\n")).expect("write");
    u.own(&second);
    apply("revoke again", &host, logins(&[], false));
    assert!(!second.exists(), "no key is left in authorized_keys2");
    s.assert_intact("revoke again");
}

#[test]
fn exclusive_mode_empties_other_accounts_keys_without_following_their_links() {
    let _lock = accounts_lock();
    let s = Sentinel::new();
    let scratch = tempfile::tempdir().expect("tmp");
    let managed = User::new(None);
    let a = User::new(None);
    let b = User::new(None);
    let c = User::new(None);
    for u in [&a, &b, &c] {
        std::fs::create_dir_all(u.ssh()).expect("mkdir");
        u.own(&u.ssh());
    }
    // a: keys a link to the sentinel, keys2 a hard link to it; b: ~/.ssh a link to the
    // sentinel directory; c: its keys a FIFO.
    std::os::unix::fs::symlink(&s.file, a.ssh().join("authorized_keys")).expect("ln");
    std::fs::hard_link(&s.file, a.ssh().join("authorized_keys2")).expect("ln");
    std::fs::remove_dir(b.ssh()).expect("rmdir");
    std::os::unix::fs::symlink(&s.dir, b.ssh()).expect("ln");
    mkfifo(&c.ssh().join("authorized_keys"));
    let host = host(scratch.path(), &[&managed, &a, &b, &c], &[&managed]);
    let r = apply("exclusive", &host, logins(&[(&managed, KEY)], true));
    s.assert_intact("exclusive");
    assert!(problems(&r).is_empty(), "{r:?}");
    for f in ["authorized_keys", "authorized_keys2"] {
        let m = std::fs::symlink_metadata(a.ssh().join(f)).expect("keys");
        assert!(m.is_file() && m.len() == 0, "{f} is an empty file of its own");
    }
    assert!(
        !b.ssh().exists() && b.home.join(".ssh.stratus-disabled").is_symlink(),
        "a linked ~/.ssh is put aside, not followed"
    );
    assert!(
        std::fs::symlink_metadata(c.ssh().join("authorized_keys"))
            .expect("keys")
            .is_file()
    );
}

#[test]
fn a_home_directory_replaced_by_a_link_is_not_followed() {
    let _lock = accounts_lock();
    let s = Sentinel::new();
    let scratch = tempfile::tempdir().expect("tmp");
    std::fs::set_permissions(scratch.path(), std::fs::Permissions::from_mode(0o755)).expect("chmod");
    // The home's parent belongs to the user, so they can swap the home for a link.
    let parent = scratch.path().join("users");
    std::fs::create_dir(&parent).expect("mkdir");
    let u = User::new(Some(&parent.join("home")));
    u.own(&parent);
    std::os::unix::fs::symlink(&s.dir, &u.home).expect("ln");
    u.own(&u.home);
    let host = host(&scratch.path().join("agent"), &[&u], &[&u]);
    let r = apply("home -> sentinel", &host, logins(&[(&u, KEY)], false));
    s.assert_intact("home -> sentinel");
    assert!(
        problems(&r).iter().any(|p| p.contains("symbolic link")),
        "the refusal says why: {r:?}"
    );
    let r = apply("exclusive, home -> sentinel", &host, logins(&[], true));
    s.assert_intact("exclusive, home -> sentinel");
    let _ = r;
}

/// A managed file in a directory its application's user owns.
#[test]
fn a_managed_file_in_a_users_directory_is_replaced_never_written_through() {
    let s = Sentinel::new();
    let scratch = tempfile::tempdir().expect("tmp");
    std::fs::set_permissions(scratch.path(), std::fs::Permissions::from_mode(0o755)).expect("chmod");
    let app = scratch.path().join("home-app");
    let conf = app.join("conf");
    std::fs::create_dir_all(&conf).expect("mkdir");
    for d in [&app, &conf] {
        std::os::unix::fs::chown(d, Some(NOBODY), Some(NOBODY)).expect("chown");
    }
    let path = conf.join("app.ini");
    type Plant = fn(&Path, &Sentinel);
    let plants: [(&str, Plant); 5] = [
        ("the old candidate name -> the sentinel", |conf, s| {
            std::os::unix::fs::symlink(&s.file, conf.join(".app.ini.stratus-new")).expect("ln");
        }),
        ("app.ini -> the sentinel", |conf, s| {
            std::os::unix::fs::symlink(&s.file, conf.join("app.ini")).expect("ln");
        }),
        ("app.ini a hard link to the sentinel", |conf, s| {
            std::fs::hard_link(&s.file, conf.join("app.ini")).expect("ln");
        }),
        ("app.ini a FIFO", |conf, _| mkfifo(&conf.join("app.ini"))),
        ("conf -> the sentinel directory", |conf, s| {
            std::fs::remove_dir_all(conf).expect("rm");
            std::os::unix::fs::symlink(&s.dir, conf).expect("ln");
        }),
    ];
    for (i, (what, plant)) in plants.into_iter().enumerate() {
        clear(&conf);
        std::fs::create_dir(&conf).expect("mkdir");
        std::os::unix::fs::chown(&conf, Some(NOBODY), Some(NOBODY)).expect("chown");
        plant(&conf, &s);
        let f = ManagedFile {
            mode: 0o640,
            ..ManagedFile::inline(path.display().to_string(), format!("setting = {i}\n"))
        };
        // On a thread of its own: a blocking open of a FIFO would stall an async timeout too.
        let status = bounded(what, move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            rt.block_on(stratus_agent::files::Applied::default().apply(&f, None))
        });
        s.assert_intact(what);
        if std::fs::symlink_metadata(&conf).expect("conf").is_symlink() {
            assert!(!status.applied, "{what}: refused, {status:?}");
            assert!(
                status.error.as_deref().unwrap_or_default().contains("symbolic link"),
                "{status:?}"
            );
            continue;
        }
        assert!(status.applied, "{what}: {status:?}");
        let m = std::fs::symlink_metadata(&path).expect("app.ini");
        assert!(m.is_file(), "{what}");
        assert_eq!((m.uid(), m.mode() & 0o777, m.nlink()), (0, 0o640, 1), "{what}");
        assert_eq!(
            std::fs::read_to_string(&path).expect("read"),
            format!("setting = {i}\n")
        );
    }
}

/// The clean-up before a rebundle, in an image whose service account owns its home and logs.
#[test]
fn preparing_an_image_cleans_every_accounts_history_and_follows_no_planted_link() {
    let s = Sentinel::new();
    let outside = tempfile::tempdir().expect("tmp");
    std::fs::write(outside.path().join(".bash_history"), "outside\n").expect("write");
    let image = tempfile::tempdir().expect("tmp");
    let r = image.path();
    let write = |p: &str, content: &str| {
        let p = r.join(p);
        std::fs::create_dir_all(p.parent().expect("parent")).expect("mkdir");
        std::fs::write(p, content).expect("write");
    };
    write(
        "etc/passwd",
        &format!(
            "root:x:0:0:root:/root:/bin/bash\n\
             svc:x:998:998::/var/lib/svc:/usr/sbin/nologin\n\
             app:x:997:997::/srv/app/home:/bin/sh\n\
             away:x:996:996::/srv/app/away:/bin/sh\n\
             up:x:995:995::/../../../..{}:/bin/sh\n",
            outside.path().display()
        ),
    );
    write("var/lib/svc/.bash_history", "psql -W\n");
    write("var/lib/svc/.psql_history", "select\n");
    write("srv/app/home/.python_history", "import os\n");
    write("var/log/app/app.log", "started\n");
    write("home/alice/notes", "kept\n");
    for d in ["var/lib/svc", "srv/app", "srv/app/home", "var/log/app", "home/alice"] {
        std::os::unix::fs::chown(r.join(d), Some(NOBODY), Some(NOBODY)).expect("chown");
    }
    // Planted by the users who own those directories.
    std::os::unix::fs::symlink(outside.path(), r.join("srv/app/away")).expect("ln");
    std::fs::hard_link(&s.file, r.join("var/log/app/hard.log")).expect("ln");
    std::os::unix::fs::symlink(&s.file, r.join("var/log/app/link.log")).expect("ln");
    mkfifo(&r.join("var/log/app/fifo.log"));
    std::os::unix::fs::symlink(&s.dir, r.join("var/log/app/dir")).expect("ln");
    std::fs::hard_link(&s.file, r.join("home/alice/.bash_history")).expect("ln");
    std::fs::create_dir_all(r.join("tmp")).expect("tmp");
    std::os::unix::fs::symlink(&s.dir, r.join("tmp/link")).expect("ln");
    mkfifo(&r.join("tmp/fifo"));
    mkfifo(&r.join("var/lib/svc/pipe"));
    let state_dir = r.join("var/lib/stratus-agent");
    std::fs::create_dir_all(&state_dir).expect("state");
    let target = stratus_agent::prepare::Target {
        root: r.to_path_buf(),
        accounts: Host::new(&state_dir),
        state_dir,
    };
    let scan_target = target.clone();
    let found = bounded("scan", move || {
        stratus_agent::prepare::scan(&scan_target.root, &scan_target.state_dir, &[b"outside".as_slice()])
    })
    .expect("scan");
    assert!(
        found.is_empty(),
        "the scan follows no link out of the image root: {found:?}"
    );
    let lines = bounded("clean", move || stratus_agent::prepare::clean(&target)).expect("clean");
    s.assert_intact("clean");
    assert_eq!(
        std::fs::read_to_string(outside.path().join(".bash_history")).expect("outside"),
        "outside\n",
        "a home outside the image root is never reached"
    );
    for gone in [
        "var/lib/svc/.bash_history",
        "var/lib/svc/.psql_history",
        "srv/app/home/.python_history",
        "home/alice/.bash_history",
        "tmp/link",
        "tmp/fifo",
    ] {
        assert!(
            std::fs::symlink_metadata(r.join(gone)).is_err(),
            "{gone} is removed: {lines:?}"
        );
    }
    assert_eq!(std::fs::read(r.join("var/log/app/app.log")).expect("log"), b"");
    let hard = std::fs::symlink_metadata(r.join("var/log/app/hard.log")).expect("hard.log");
    assert_eq!(
        (hard.len(), hard.nlink()),
        (0, 1),
        "the hard-linked log is a new empty file"
    );
    assert!(r.join("home/alice/notes").exists());
    assert!(lines.iter().any(|l| l == "shell histories: 4"), "{lines:?}");
}

/// Removing a managed account (before an image is captured) removes its home without following
/// what its user planted there, and leaves a home that is a link alone.
#[test]
fn removing_an_account_removes_its_home_and_nothing_it_links_to() {
    let _lock = accounts_lock();
    let s = Sentinel::new();
    let scratch = tempfile::tempdir().expect("tmp");
    std::fs::set_permissions(scratch.path(), std::fs::Permissions::from_mode(0o755)).expect("chmod");
    let u = User::new(None);
    let parent = scratch.path().join("users");
    std::fs::create_dir(&parent).expect("mkdir");
    let v = User::new(Some(&parent.join("home")));
    u.own(&parent);
    std::os::unix::fs::symlink(&s.dir, &v.home).expect("ln");
    v.own(&v.home);
    for (name, plant) in [("dir-link", s.dir.clone()), ("file-link", s.file.clone())] {
        let p = u.home.join(name);
        std::os::unix::fs::symlink(&plant, &p).expect("ln");
        u.own(&p);
    }
    std::fs::create_dir_all(u.home.join("deep/er")).expect("mkdir");
    std::os::unix::fs::symlink(&s.dir, u.home.join("deep/er/link")).expect("ln");
    std::fs::hard_link(&s.file, u.home.join("deep/hard")).expect("ln");
    mkfifo(&u.home.join("deep/fifo"));
    let host = host(scratch.path(), &[&u, &v], &[&u, &v]);
    for user in [&u, &v] {
        let (h, name) = (host.clone(), user.name.clone());
        bounded("remove", move || accounts::remove(&h, &name)).expect("removed");
        s.assert_intact(&format!("removing {}", user.name));
    }
    assert!(!u.home.exists(), "the home is gone");
    let passwd = std::fs::read_to_string("/etc/passwd").expect("passwd");
    assert!(!passwd.contains(&format!("{}:", u.name)), "the account is gone");
    assert!(host.managed().is_empty());
}
