//! Hostile application archives against the real file system (issue 17, finding 3).
//!
//! Each case unpacks or deploys a crafted archive next to sentinels standing in for what an
//! escape would reach (`BASE/etc/shadow`, `BASE/sentinel`, a directory someone else owns),
//! placed so that the link chains in the cases would land on them, and then checks on disk:
//! the archive is refused, the sentinels are untouched (bytes and link count: a hard link to
//! one raises it), and every path under the release, links followed, resolves inside it.
//! The last tests run the real `stratus-agent app deploy` binary.

use std::io::Write;
use std::os::unix::fs::MetadataExt;
use std::path::{Component, Path, PathBuf};
use std::process::Command;

use sha2::Digest;
use stratus_agent::archive::{ArchiveError, Limits, deploy, unpack};

// ---------------------------------------------------------------------------------------------
// A tar writer that can write anything (the tar crate's builder refuses hostile names).

#[derive(Clone, Copy, PartialEq)]
enum Kind {
    File,
    Dir,
    Sym,
    Hard,
}

/// (kind, name, file data or link target)
type Entry<'a> = (Kind, &'a str, &'a str);
/// (name, file data or link target, unix mode)
type ZipEntry<'a> = (&'a str, &'a str, u32);

#[derive(Default)]
struct Tar(Vec<u8>);

impl Tar {
    fn raw(&mut self, name: &[u8], kind: tar::EntryType, size: u64, link: &[u8], data: &[u8]) -> &mut Self {
        let mut h = tar::Header::new_gnu();
        let n = name.len().min(100);
        h.as_old_mut().name[..n].copy_from_slice(&name[..n]);
        let l = link.len().min(100);
        h.as_old_mut().linkname[..l].copy_from_slice(&link[..l]);
        h.set_entry_type(kind);
        h.set_mode(0o755);
        h.set_size(size);
        h.set_mtime(0);
        h.set_cksum();
        self.0.extend_from_slice(h.as_bytes());
        self.0.extend_from_slice(data);
        let pad = (512 - data.len() % 512) % 512;
        self.0.extend(std::iter::repeat_n(0, pad));
        self
    }

    /// An entry; names and targets over 100 bytes get GNU long name/link headers first.
    fn entry(&mut self, kind: Kind, name: &str, arg: &str) -> &mut Self {
        let (name, arg) = (name.as_bytes(), arg.as_bytes());
        if name.len() > 100 {
            let data = [name, b"\0"].concat();
            self.raw(
                b"././@LongLink",
                tar::EntryType::GNULongName,
                data.len() as u64,
                b"",
                &data,
            );
        }
        let linky = matches!(kind, Sym | Hard);
        if linky && arg.len() > 100 {
            let data = [arg, b"\0"].concat();
            self.raw(
                b"././@LongLink",
                tar::EntryType::GNULongLink,
                data.len() as u64,
                b"",
                &data,
            );
        }
        match kind {
            File => self.raw(name, tar::EntryType::Regular, arg.len() as u64, b"", arg),
            Dir => self.raw(name, tar::EntryType::Directory, 0, b"", b""),
            Sym => self.raw(name, tar::EntryType::Symlink, 0, arg, b""),
            Hard => self.raw(name, tar::EntryType::Link, 0, arg, b""),
        }
    }

    /// A PAX extended header with these records, for the next entry.
    fn pax(&mut self, records: &[(&str, &[u8])]) -> &mut Self {
        let mut data = Vec::new();
        for (k, v) in records {
            let body = [b" ", k.as_bytes(), b"=", v, b"\n"].concat();
            let mut len = body.len() + 1;
            while format!("{len}").len() + body.len() != len {
                len += 1;
            }
            data.extend_from_slice(format!("{len}").as_bytes());
            data.extend_from_slice(&body);
        }
        self.raw(b"PaxHeaders/x", tar::EntryType::XHeader, data.len() as u64, b"", &data)
    }

    fn gz(&self, path: &Path) -> PathBuf {
        let mut gz = flate2::write::GzEncoder::new(std::fs::File::create(path).unwrap(), flate2::Compression::fast());
        gz.write_all(&self.0).unwrap();
        gz.write_all(&[0; 1024]).unwrap();
        gz.finish().unwrap();
        path.to_path_buf()
    }
}

fn targz(path: &Path, entries: &[Entry]) -> PathBuf {
    let mut t = Tar::default();
    for (k, n, a) in entries {
        t.entry(*k, n, a);
    }
    t.gz(path)
}

/// A zip with (name, data or link target, unix mode) entries.
fn zipfile(path: &Path, entries: &[ZipEntry]) -> PathBuf {
    let mut z = zip::ZipWriter::new(std::fs::File::create(path).unwrap());
    for (name, data, mode) in entries {
        let opts = zip::write::SimpleFileOptions::default().unix_permissions(*mode & 0o777);
        if *mode & 0o170000 == 0o120000 {
            z.add_symlink(*name, *data, opts).unwrap();
        } else if name.ends_with('/') {
            z.add_directory(*name, opts).unwrap();
        } else {
            z.start_file(*name, opts).unwrap();
            z.write_all(data.as_bytes()).unwrap();
        }
    }
    z.finish().unwrap();
    path.to_path_buf()
}

fn sha(path: &Path) -> String {
    hex::encode(sha2::Sha256::digest(std::fs::read(path).unwrap()))
}

// ---------------------------------------------------------------------------------------------
// The sentinels and the checks on disk.

/// `BASE/etc/shadow` and `BASE/sentinel` stand for what an escape would reach; the release
/// root goes 4 levels below BASE (`BASE/x/app/releases/.V.partial`, or `BASE/x/y/z/release`
/// for `unpack`), so `d/up/r3/..`-style chains land on BASE.
struct Site {
    _tmp: tempfile::TempDir,
    base: PathBuf,
}

impl Site {
    fn new() -> Self {
        let tmp = tempfile::tempdir().unwrap();
        let base = tmp.path().canonicalize().unwrap();
        std::fs::create_dir_all(base.join("etc")).unwrap();
        std::fs::write(base.join("etc/shadow"), "root:*:").unwrap();
        std::fs::write(base.join("sentinel"), "outside").unwrap();
        Self { _tmp: tmp, base }
    }

    fn app(&self) -> PathBuf {
        self.base.join("x/app")
    }

    /// The sentinels are as they were: same bytes, one link each, nothing added next to them.
    fn untouched(&self, case: &str) {
        for (p, body) in [("etc/shadow", "root:*:"), ("sentinel", "outside")] {
            let p = self.base.join(p);
            assert_eq!(std::fs::read_to_string(&p).unwrap(), body, "{case}: {p:?} changed");
            assert_eq!(
                std::fs::metadata(&p).unwrap().nlink(),
                1,
                "{case}: {p:?} got a hard link"
            );
        }
        let etc: Vec<_> = std::fs::read_dir(self.base.join("etc")).unwrap().collect();
        assert_eq!(etc.len(), 1, "{case}: something was added to BASE/etc");
        for name in ["evil", "escape", "etc/evil", "x/evil", "x/escape"] {
            assert!(!self.base.join(name).exists(), "{case}: {name} was written");
        }
    }
}

/// `p` with links followed as far as it exists, the rest resolved lexically.
fn resolve(p: &Path) -> PathBuf {
    let comps: Vec<Component> = p.components().collect();
    for i in (0..=comps.len()).rev() {
        let prefix: PathBuf = comps[..i].iter().collect();
        if let Ok(mut out) = prefix.canonicalize() {
            for c in &comps[i..] {
                match c {
                    Component::ParentDir => {
                        out.pop();
                    }
                    Component::Normal(n) => out.push(n),
                    _ => {}
                }
            }
            return out;
        }
    }
    unreachable!()
}

/// Every path under `root`, links followed, resolves inside `root`.
fn all_inside(root: &Path, case: &str) {
    let root = root.canonicalize().unwrap();
    let mut stack = vec![root.clone()];
    while let Some(dir) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(&dir) else { continue };
        for e in rd.flatten() {
            let p = e.path();
            let m = std::fs::symlink_metadata(&p).unwrap();
            let real = if m.file_type().is_symlink() {
                resolve(&dir.join(std::fs::read_link(&p).unwrap()))
            } else {
                resolve(&p)
            };
            assert!(real.starts_with(&root), "{case}: {p:?} resolves to {real:?}, outside");
            if m.is_dir() {
                stack.push(p);
            }
        }
    }
}

use Kind::*;

/// The chain of the report: each link passes a textual check and climbs one more level.
const CHAIN: &[Entry] = &[
    (Dir, "d/", ""),
    (Sym, "d/up", ".."),
    (Sym, "r1", "d/up/.."),
    (Sym, "r2", "d/up/r1/.."),
    (Sym, "r3", "d/up/r2/.."),
    (Sym, "r4", "d/up/r3/.."),
];

// ---------------------------------------------------------------------------------------------

#[test]
fn a_symlink_chain_with_a_hard_link_to_the_real_shadow_is_refused_and_reaches_nothing() {
    let site = Site::new();
    let app = site.app();
    let good = targz(&site.base.join("v1.tgz"), &[(File, "index.html", "one")]);
    deploy(&good, &sha(&good), &app, "v1", Limits::default()).unwrap();

    let mut entries = CHAIN.to_vec();
    entries.push((Hard, "shadow", "r4/etc/shadow"));
    let hostile = targz(&site.base.join("chain.tgz"), &entries);
    let e = deploy(&hostile, &sha(&hostile), &app, "v2", Limits::default()).unwrap_err();
    assert!(matches!(e, ArchiveError::Unsafe { .. }), "{e}");
    assert!(e.to_string().contains("r1"), "the first climbing link is named: {e}");
    site.untouched("chain + hard link");
    assert!(!app.join("releases/v2").exists() && !app.join("releases/.v2.partial").exists());
    assert_eq!(
        std::fs::read_link(app.join("current")).unwrap(),
        Path::new("releases/v1")
    );
    all_inside(&app.join("releases"), "chain + hard link");

    // The chain alone, unpacked where it would land on BASE: refused, no link leads out.
    let root = site.base.join("x/y/z/release");
    std::fs::create_dir_all(&root).unwrap();
    let chain = targz(&site.base.join("chain-only.tgz"), CHAIN);
    assert!(unpack(&chain, &root, Limits::default()).is_err());
    all_inside(&root, "chain alone");
    site.untouched("chain alone");
}

#[test]
fn every_variant_of_an_escape_is_refused_and_nothing_outside_changes() {
    let long = "n/".repeat(60) + "x";
    let deep = "a/".repeat(200) + "f";
    let nul = format!("{long}\0/../../../evil");
    let cases: Vec<(&str, Vec<Entry>, &str)> = vec![
        ("symlink to an absolute path", vec![(Sym, "l", "/etc")], "outside"),
        ("symlink climbing out", vec![(Sym, "l", "../../../../etc")], "outside"),
        (
            "symlink '..' after a name",
            vec![(Dir, "d/", ""), (Sym, "l", "d/..")],
            "'..' after a name",
        ),
        (
            "'..' after a name that a later entry makes a link",
            vec![(Sym, "r1", "later/.."), (Sym, "later", ".")],
            "'..' after a name",
        ),
        (
            "a directory after a symlink of the same name",
            vec![(Dir, "t/", ""), (Sym, "l", "t"), (Dir, "l/", "")],
            "over a symlink",
        ),
        (
            "a file through a symlinked parent",
            vec![(Dir, "t/", ""), (Sym, "l", "t"), (File, "l/f", "x")],
            "through a symlink",
        ),
        (
            "a file through a link to the root",
            vec![(Sym, "l", "."), (File, "l/l/f", "x")],
            "through a symlink",
        ),
        (
            "a hard link to a symlink",
            vec![(File, "f", "x"), (Sym, "s", "f"), (Hard, "h", "s")],
            "not a regular file",
        ),
        (
            "a hard link to a directory",
            vec![(Dir, "t/", ""), (Hard, "h", "t")],
            "not a regular file",
        ),
        (
            "a hard link through a symlinked directory",
            vec![(Dir, "t/", ""), (File, "t/f", "x"), (Sym, "l", "t"), (Hard, "h", "l/f")],
            "not a regular file",
        ),
        ("a hard link out", vec![(Hard, "h", "../../../../sentinel")], "'..'"),
        (
            "a hard link to an absolute path",
            vec![(Hard, "h", "/etc/shadow")],
            "absolute",
        ),
        ("a file twice", vec![(File, "f", "a"), (File, "f", "b")], "twice"),
        ("a symlink twice", vec![(Sym, "l", "a"), (Sym, "l", "b")], "twice"),
        (
            "a file over a symlink",
            vec![(Sym, "l", "a"), (File, "l", "b")],
            "twice",
        ),
        (
            "a file over a directory",
            vec![(Dir, "t/", ""), (File, "t", "b")],
            "twice",
        ),
        (
            "a hard link over a file",
            vec![(File, "f", "a"), (File, "g", "b"), (Hard, "g", "f")],
            "twice",
        ),
        ("a '..' component", vec![(File, "a/../../../../../evil", "x")], "'..'"),
        ("'..' alone", vec![(File, "..", "x")], "'..'"),
        ("an absolute name", vec![(File, "/evil", "x")], "absolute"),
        ("a backslash", vec![(File, "..\\..\\evil", "x")], "backslash"),
        ("a NUL in a long name", vec![(File, nul.as_str(), "x")], "NUL"),
        ("a very deep name", vec![(File, deep.as_str(), "x")], "levels deep"),
    ];
    for (case, entries, why) in cases {
        let site = Site::new();
        let app = site.app();
        let a = targz(&site.base.join("a.tgz"), &entries);
        let e = deploy(&a, &sha(&a), &app, "v1", Limits::default())
            .expect_err(case)
            .to_string();
        assert!(e.contains(why), "{case}: {e}");
        assert!(e.len() < 1024, "{case}: an error of {} bytes", e.len());
        site.untouched(case);
        assert!(!app.join("releases/v1").exists(), "{case}: nothing left behind");
        assert!(!app.join("current").exists(), "{case}");
        all_inside(&app, case);
    }
    // What stays allowed: '.' components, links that climb then descend, hard links to files.
    let site = Site::new();
    let ok = targz(
        &site.base.join("ok.tgz"),
        &[
            (Dir, "./www/./css/", ""),
            (File, "www/css/a.css", "a"),
            (Sym, "www/b.css", "./css/a.css"),
            (Sym, "www/up", "../www/css"),
            (Hard, "www/c.css", "./www/css/a.css"),
            (File, &long, "long names are fine"),
        ],
    );
    deploy(&ok, &sha(&ok), &site.app(), "v1", Limits::default()).unwrap();
    let cur = site.app().join("current");
    assert_eq!(std::fs::read_to_string(cur.join("www/b.css")).unwrap(), "a");
    assert_eq!(std::fs::read_to_string(cur.join("www/up/a.css")).unwrap(), "a");
    assert_eq!(std::fs::read_to_string(cur.join("www/c.css")).unwrap(), "a");
    assert_eq!(std::fs::read_to_string(cur.join(&long)).unwrap(), "long names are fine");
    all_inside(&site.app(), "good archive");
}

#[test]
fn zip_symlinks_obey_the_same_rules() {
    let link = 0o120777;
    let cases: Vec<(&str, Vec<ZipEntry>, &str)> = vec![
        (
            "chain",
            vec![
                ("d/", "", 0o40755),
                ("d/up", "..", link),
                ("r1", "d/up/..", link),
                ("r2", "d/up/r1/..", link),
            ],
            "'..' after a name",
        ),
        ("absolute", vec![("l", "/etc", link)], "outside"),
        ("climbing", vec![("l", "../../etc", link)], "outside"),
        (
            "through a link",
            vec![("l", ".", link), ("l/f", "x", 0o100644)],
            "through a symlink",
        ),
        (
            "duplicate",
            vec![("f", "a", 0o100644), ("g", "f", link), ("g/", "", 0o40755)],
            "over a symlink",
        ),
        ("backslash", vec![("..\\evil", "x", 0o100644)], "backslash"),
    ];
    for (case, entries, why) in cases {
        let site = Site::new();
        let z = zipfile(&site.base.join("a.zip"), &entries);
        let e = deploy(&z, &sha(&z), &site.app(), "z1", Limits::default())
            .expect_err(case)
            .to_string();
        assert!(e.contains(why), "{case}: {e}");
        site.untouched(case);
        all_inside(&site.app(), case);
    }
}

#[test]
fn extended_headers_are_checked_before_they_are_read() {
    let site = Site::new();
    let root = site.base.join("x/y/z/release");
    std::fs::create_dir_all(&root).unwrap();
    let run = |name: &str, t: &Tar, limits: Limits| -> String {
        let a = t.gz(&site.base.join(name));
        let e = unpack(&a, &root, limits).expect_err(name).to_string();
        assert!(e.len() < 1024, "{name}: an error of {} bytes", e.len());
        all_inside(&root, name);
        e
    };
    // A GNU long name declaring 1 GiB (followed by nothing): refused on its declared size.
    let mut t = Tar::default();
    t.raw(b"././@LongLink", tar::EntryType::GNULongName, 1 << 30, b"", b"");
    let e = run("longname.tgz", &t, Limits::default());
    assert!(e.contains("GNU long name of 1073741824 bytes"), "{e}");
    // The same for a long link target and a PAX header.
    let mut t = Tar::default();
    t.raw(b"././@LongLink", tar::EntryType::GNULongLink, 1 << 30, b"", b"");
    assert!(run("longlink.tgz", &t, Limits::default()).contains("GNU long link of"));
    let mut t = Tar::default();
    t.raw(b"PaxHeaders/x", tar::EntryType::XHeader, 1 << 30, b"", b"");
    assert!(run("pax.tgz", &t, Limits::default()).contains("PAX header of"));
    // A gzip bomb in a PAX header that is really there: 64 MiB of zeros, refused unread.
    let zeros = vec![0u8; 64 << 20];
    let mut t = Tar::default();
    t.raw(
        b"PaxHeaders/x",
        tar::EntryType::XHeader,
        zeros.len() as u64,
        b"",
        &zeros,
    );
    t.entry(File, "f", "x");
    assert!(run("pax-bomb.tgz", &t, Limits::default()).contains("PAX header of 67108864 bytes"));
    // Skipped data counts: a global header of 8 MiB of zeros against 1 MiB.
    let small = Limits {
        max_bytes: 1 << 20,
        ..Limits::default()
    };
    let mut t = Tar::default();
    t.raw(
        b"PaxHeaders/g",
        tar::EntryType::XGlobalHeader,
        8 << 20,
        b"",
        &zeros[..8 << 20],
    );
    t.entry(File, "f", "x");
    assert!(run("global-bomb.tgz", &t, small).contains("more than 1048576 bytes"));
    // A file bomb: 32 MiB of zeros against 1 MiB, refused on the declared size.
    let mut t = Tar::default();
    t.raw(b"big", tar::EntryType::Regular, 32 << 20, b"", &zeros[..32 << 20]);
    assert!(run("file-bomb.tgz", &t, small).contains("more than 1048576 bytes"));
    // A PAX path override climbing out, and a PAX size that disagrees with the header.
    let mut t = Tar::default();
    t.pax(&[("path", b"../../../../evil")]).entry(File, "harmless", "x");
    assert!(run("pax-path.tgz", &t, Limits::default()).contains("'..'"));
    let mut t = Tar::default();
    t.pax(&[("size", b"4096")]).entry(File, "f", "x");
    assert!(run("pax-size.tgz", &t, Limits::default()).contains("PAX size"));
    // A PAX linkpath making a hard link through the chain.
    let mut t = Tar::default();
    for (k, n, a) in CHAIN {
        t.entry(*k, n, a);
    }
    t.pax(&[("linkpath", b"r4/etc/shadow")])
        .entry(Hard, "shadow", "harmless");
    run("pax-link.tgz", &t, Limits::default());
    // A very long name, and a link target of 100 KiB: refused, and the error stays small.
    let mut t = Tar::default();
    t.entry(File, &"n".repeat(5000), "x");
    assert!(run("long-name.tgz", &t, Limits::default()).contains("GNU long name of 5001 bytes"));
    let mut t = Tar::default();
    t.pax(&[("linkpath", "/x".repeat(5000).as_bytes())])
        .entry(Sym, "l", "t");
    run("long-target.tgz", &t, Limits::default());
    let mut t = Tar::default();
    t.pax(&[("path", format!("\x1b[2J{}", "é".repeat(300)).as_bytes())])
        .entry(Sym, "l", "/etc");
    let e = run("escapes.tgz", &t, Limits::default());
    assert!(
        !e.contains('\x1b') && e.contains("\\u{1b}"),
        "control characters are escaped: {e}"
    );
    site.untouched("extended headers");
}

#[test]
fn a_planted_link_in_an_application_directory_someone_else_owns_redirects_nothing() {
    let site = Site::new();
    let app = site.app();
    let elsewhere = site.base.join("etc");
    let v1 = targz(&site.base.join("v1.tgz"), &[(File, "index.html", "one")]);
    let v2 = targz(&site.base.join("v2.tgz"), &[(File, "index.html", "two")]);
    std::fs::create_dir_all(app.parent().unwrap()).unwrap();

    // APP itself is a link out: refused, nothing written there.
    std::os::unix::fs::symlink(&elsewhere, &app).unwrap();
    let e = deploy(&v1, &sha(&v1), &app, "v1", Limits::default()).unwrap_err();
    assert!(matches!(e, ArchiveError::Planted { .. }), "{e}");
    site.untouched("APP is a link");
    std::fs::remove_file(&app).unwrap();

    deploy(&v1, &sha(&v1), &app, "v1", Limits::default()).unwrap();
    // A release planted as a link out is never switched to.
    std::os::unix::fs::symlink(&elsewhere, app.join("releases/v2")).unwrap();
    let e = deploy(&v2, &sha(&v2), &app, "v2", Limits::default()).unwrap_err();
    assert!(matches!(e, ArchiveError::Planted { .. }), "{e}");
    assert_eq!(
        std::fs::read_link(app.join("current")).unwrap(),
        Path::new("releases/v1")
    );
    std::fs::remove_file(app.join("releases/v2")).unwrap();
    // A partial unpack planted as a link, the temporary link name planted as a directory.
    std::os::unix::fs::symlink(&elsewhere, app.join("releases/.v2.partial")).unwrap();
    let e = deploy(&v2, &sha(&v2), &app, "v2", Limits::default()).unwrap_err();
    assert!(matches!(e, ArchiveError::Planted { .. }), "{e}");
    assert!(
        std::fs::symlink_metadata(app.join("releases/.v2.partial"))
            .unwrap()
            .is_symlink()
    );
    std::fs::remove_file(app.join("releases/.v2.partial")).unwrap();
    // `releases` itself swapped for a link out.
    std::fs::rename(app.join("releases"), site.base.join("x/kept")).unwrap();
    std::os::unix::fs::symlink(&elsewhere, app.join("releases")).unwrap();
    let e = deploy(&v2, &sha(&v2), &app, "v2", Limits::default()).unwrap_err();
    assert!(matches!(e, ArchiveError::Planted { .. }), "{e}");
    site.untouched("releases is a link");
    std::fs::remove_file(app.join("releases")).unwrap();
    std::fs::rename(site.base.join("x/kept"), app.join("releases")).unwrap();
    // `current` planted as a link out is replaced, not followed.
    std::fs::remove_file(app.join("current")).unwrap();
    std::os::unix::fs::symlink(&elsewhere, app.join("current")).unwrap();
    deploy(&v2, &sha(&v2), &app, "v2", Limits::default()).unwrap();
    assert_eq!(std::fs::read_to_string(app.join("current/index.html")).unwrap(), "two");
    site.untouched("current was a link");
}

// ---------------------------------------------------------------------------------------------
// The real binary.

fn agent_deploy(root: &Path, archive: &Path) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_stratus-agent"))
        .args(["app", "deploy", "--name", "app", "--archive"])
        .arg(archive)
        .args(["--sha256", &sha(archive), "--root"])
        .arg(root)
        .env_remove("STRATUS_APP_ACTIVATE")
        .output()
        .unwrap();
    let s = |b: Vec<u8>| String::from_utf8_lossy(&b).into_owned();
    (out.status.code().unwrap_or(-1), s(out.stdout), s(out.stderr))
}

#[test]
fn stratus_agent_app_deploy_refuses_a_hostile_archive_and_the_old_release_keeps_serving() {
    let site = Site::new();
    let root = site.base.join("x");
    let app = site.app();
    let v1 = targz(&site.base.join("v1.tgz"), &[(File, "index.html", "one")]);
    let (code, out, err) = agent_deploy(&root, &v1);
    assert_eq!(code, 0, "{out}{err}");
    let serving = std::fs::read_link(app.join("current")).unwrap();

    let mut chain = CHAIN.to_vec();
    chain.push((Hard, "shadow", "r4/etc/shadow"));
    let long = format!("{}\x1b[31m", "A".repeat(4000));
    let out_of_root = format!("/{long}");
    let hostile: Vec<(&str, Vec<Entry>)> = vec![
        ("chain", chain),
        ("long-name", vec![(Sym, long.as_str(), out_of_root.as_str())]),
        ("abs", vec![(Sym, "l", "/etc"), (File, "l/evil", "x")]),
    ];
    for (case, entries) in hostile {
        let a = targz(&site.base.join(format!("{case}.tgz")), &entries);
        let (code, out, err) = agent_deploy(&root, &a);
        assert_eq!(code, 1, "{case}: {out}{err}");
        assert!(err.contains("keeps serving"), "{case}: {err}");
        assert!(
            out.len() + err.len() < 2048,
            "{case}: {} bytes of output",
            out.len() + err.len()
        );
        assert!(
            !err.contains('\x1b'),
            "{case}: a raw control character reached the output"
        );
        assert_eq!(std::fs::read_link(app.join("current")).unwrap(), serving, "{case}");
        assert_eq!(std::fs::read_to_string(app.join("current/index.html")).unwrap(), "one");
        site.untouched(case);
        all_inside(&app, case);
    }
    // A planted link in the application directory, through the binary too.
    std::fs::rename(app.join("releases"), site.base.join("x/kept")).unwrap();
    std::os::unix::fs::symlink(site.base.join("etc"), app.join("releases")).unwrap();
    let v2 = targz(&site.base.join("v2.tgz"), &[(File, "index.html", "two")]);
    let (code, _, err) = agent_deploy(&root, &v2);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("is a link"), "{err}");
    site.untouched("releases planted");
}

#[test]
fn pruning_removes_only_the_agents_own_releases_and_follows_no_link() {
    let site = Site::new();
    let root = site.base.join("x");
    let app = site.app();
    let v0 = targz(&site.base.join("v0.tgz"), &[(File, "index.html", "zero")]);
    assert_eq!(agent_deploy(&root, &v0).0, 0);
    // Planted before the others, so the oldest: a link out, and another user's directory.
    std::os::unix::fs::symlink(site.base.join("etc"), app.join("releases/000000000000")).unwrap();
    let theirs = app.join("releases/000000000001");
    std::fs::create_dir(&theirs).unwrap();
    std::fs::write(theirs.join("keep"), "theirs").unwrap();
    std::os::unix::fs::chown(&theirs, Some(65534), Some(65534)).unwrap();
    for i in 1..=8 {
        let a = targz(&site.base.join(format!("v{i}.tgz")), &[(File, "n", &i.to_string())]);
        let (code, out, err) = agent_deploy(&root, &a);
        assert_eq!(code, 0, "{out}{err}");
    }
    assert_eq!(std::fs::read_to_string(app.join("current/n")).unwrap(), "8");
    assert!(
        std::fs::symlink_metadata(app.join("releases/000000000000"))
            .unwrap()
            .is_symlink()
    );
    assert_eq!(std::fs::read_to_string(theirs.join("keep")).unwrap(), "theirs");
    site.untouched("prune");
    let ours = std::fs::read_dir(app.join("releases"))
        .unwrap()
        .flatten()
        .filter(|e| e.file_type().unwrap().is_dir())
        .filter(|e| e.metadata().unwrap().uid() == rustix::process::geteuid().as_raw())
        .count();
    assert_eq!(ours, stratus_agent::app::KEEP_RELEASES);
}
