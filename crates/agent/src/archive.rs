//! Application archives: verified by SHA-256, unpacked into a versioned directory and switched
//! in by replacing one `current` symlink, so a server serves either the old version or the new
//! one, never a mix, and a bad archive leaves the old one serving.
//!
//! ```text
//! APP/releases/VERSION/   one directory per deployed version
//! APP/current -> releases/VERSION
//! ```
//!
//! # Archives are untrusted
//!
//! Refused, with the entry named (quoted, at most 200 bytes, control characters escaped):
//!
//! - names that are absolute, have a `..` component, a NUL or a backslash, are longer than
//!   [`Limits::max_path_bytes`] or deeper than [`Limits::max_depth`];
//! - an entry written through a symlink or over anything already there (a duplicate, a
//!   directory over a link, a file over a directory): every entry is created relative to a
//!   directory descriptor reached from the release root one name at a time, never following
//!   a link ([`beneath`]), with `O_EXCL`/`O_NOFOLLOW`, so no link can redirect a later entry;
//! - a symlink whose target is absolute, climbs out of the release, or has a `..` after a
//!   name (`d/up/..`): the kernel resolves `..` after following `d/up`, so only targets made
//!   of `..`s then names are provably inside, whatever the names turn out to be;
//! - a hard link to anything but a regular file the archive made, looked up beneath the root
//!   with `RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS` (never a link, directory or device);
//! - device files, FIFOs, sparse files and other entry types;
//! - more than [`Limits::max_entries`] entries or [`Limits::max_bytes`] bytes of data
//!   (written or skipped), a GNU long name/link over `max_path_bytes` or a PAX header over
//!   [`Limits::max_header_bytes`] (checked before it is read), a PAX size that disagrees with
//!   its header;
//! - a wrong hash (checked before anything is unpacked).
//!
//! Permission bits are kept except set-uid, set-gid and sticky; owners are not (files belong
//! to the agent's user).
//!
//! # The application directory may belong to someone else
//!
//! `APP` may sit in a directory another user controls (`/home/app/www/site`). Its parent path
//! is opened one name at a time and a link on the way is followed only where only root could
//! have made it (in a root-owned directory no one else may write: `/home -> /usr/home` is
//! fine, `/home/app/www -> /srv` planted by `app` is refused); `APP` itself, `releases`, each release and `current` are opened and
//! changed through directory descriptors without following links: the switch is a new
//! symlink renamed over `current` within `APP`, a release or partial unpack that is a link or
//! not a directory the agent's user owns is refused (never used, replaced or removed), and
//! pruning removes only such directories, with `unlinkat` beneath descriptors. The owner of
//! `APP` can still change what it serves (it is their directory); they cannot make the agent
//! write, change or remove anything outside it.

use std::ffi::OsStr;
use std::io::Read;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use rustix::fs::{AtFlags, Mode, OFlags};
use rustix::io::Errno;
use sha2::Digest;

mod beneath;
mod formats;
mod writer;

/// How much an archive may unpack to.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Entries of any kind (extended headers aside).
    pub max_entries: usize,
    /// Bytes of entry data, written or skipped (the decompressed size, headers aside).
    pub max_bytes: u64,
    /// Bytes in an entry's name or a link's target (GNU long names are refused above it
    /// before they are read).
    pub max_path_bytes: usize,
    /// Directories in an entry's name.
    pub max_depth: usize,
    /// Bytes in one PAX extended header (refused above it before it is read).
    pub max_header_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_entries: 100_000,
            max_bytes: 4 << 30,
            max_path_bytes: 4096,
            max_depth: 128,
            max_header_bytes: 64 << 10,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ArchiveError {
    #[error("the archive's SHA-256 is {actual}, not the expected {expected}")]
    Hash { expected: String, actual: String },
    #[error("not a tar.gz or zip archive: {0}")]
    Format(String),
    #[error("unsafe archive entry {entry}: {why}")]
    Unsafe { entry: String, why: String },
    #[error("the archive unpacks to more than {0}")]
    TooLarge(String),
    #[error(
        "{path} is a link or not a directory the agent made; it is never written through, used \
         or removed: remove it"
    )]
    Planted { path: String },
    #[error("{path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
}

/// At most this many bytes of an archive-supplied string go into an error.
const QUOTE_MAX: usize = 200;

/// An archive-supplied string for an error message: escaped (control characters, quotes),
/// cut after [`QUOTE_MAX`] bytes with the full length said.
pub(crate) fn bounded(s: &str) -> String {
    let mut out = String::new();
    for c in s.chars() {
        let esc: String = c.escape_debug().collect();
        if out.len() + esc.len() > QUOTE_MAX {
            out.push_str(&format!("… ({} bytes in all)", s.len()));
            break;
        }
        out.push_str(&esc);
    }
    out
}

/// An archive-supplied name, [`bounded`] and between quotes.
pub(crate) fn quote(name: &[u8]) -> String {
    format!("\"{}\"", bounded(&String::from_utf8_lossy(name)))
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> ArchiveError + '_ {
    move |source| ArchiveError::Io {
        path: path.display().to_string(),
        source,
    }
}

fn io_at(path: &Path, e: Errno) -> ArchiveError {
    io(path)(e.into())
}

fn planted(path: &Path) -> ArchiveError {
    ArchiveError::Planted {
        path: path.display().to_string(),
    }
}

/// The file's SHA-256 must be `expected` (hex, either case).
pub fn verify_sha256(file: &Path, expected: &str) -> Result<(), ArchiveError> {
    let mut f = std::fs::File::open(file).map_err(io(file))?;
    let mut h = sha2::Sha256::new();
    let mut buf = vec![0u8; 256 * 1024];
    loop {
        let n = f.read(&mut buf).map_err(io(file))?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    let actual = hex::encode(h.finalize());
    if !actual.eq_ignore_ascii_case(expected.trim()) {
        return Err(ArchiveError::Hash {
            expected: bounded(&expected.chars().take(64).collect::<String>()),
            actual,
        });
    }
    Ok(())
}

fn check_version(version: &str) -> Result<(), ArchiveError> {
    if version.is_empty()
        || version.len() > 128
        || !version
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
        || version.starts_with('.')
    {
        return Err(writer::unsafe_entry(
            version.as_bytes(),
            "a version is 1-128 letters, digits, '.', '_' or '-'",
        ));
    }
    Ok(())
}

/// Open the application directory: its parent (`ROOT`, created if `create`) by
/// [`crate::safe_fs::open_dir_creating`]'s rule, so a link on the way is followed only where
/// only root could have made it (`/home/app/www -> /srv`, planted by `app`, is refused), and
/// `APP` itself without following a link.
fn open_app(app: &Path, create: bool) -> Result<OwnedFd, ArchiveError> {
    let (Some(parent), Some(name)) = (app.parent(), app.file_name()) else {
        return Err(io_at(app, Errno::INVAL));
    };
    let parent = if parent.is_absolute() {
        parent.to_path_buf()
    } else {
        std::env::current_dir().map_err(io(parent))?.join(parent)
    };
    let pfd = if create {
        crate::safe_fs::open_dir_creating(&parent, 0o755)
    } else {
        crate::safe_fs::open_dir(&parent)
    }
    .map_err(io(&parent))?;
    child_dir(&pfd, app, name, create)
}

/// The release `APP/current` points at, read through `APP`'s descriptor (see [`open_app`]);
/// `None` if there is none.
pub fn current(app: &Path) -> Option<String> {
    let app_fd = open_app(app, false).ok()?;
    let target = rustix::fs::readlinkat(&app_fd, "current", Vec::new()).ok()?;
    Path::new(OsStr::from_bytes(target.as_bytes()))
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
}

/// The directory `name` in `dir` (at `dir_path`), never through a link.
fn child_dir(dir: &OwnedFd, path: &Path, name: &OsStr, create: bool) -> Result<OwnedFd, ArchiveError> {
    let fd = if create {
        beneath::open_or_create_dir(dir.as_fd(), name, 0o755)
    } else {
        beneath::open_dir(dir.as_fd(), name)
    };
    fd.map_err(|e| match e {
        Errno::LOOP | Errno::NOTDIR => planted(path),
        e => io_at(path, e),
    })
}

/// Verify `archive`, unpack it as `APP/releases/VERSION` and point `APP/current` at it. A
/// version already unpacked is only switched to. On any error `current` is left as it was.
pub fn deploy(
    archive: &Path,
    sha256: &str,
    app: &Path,
    version: &str,
    limits: Limits,
) -> Result<PathBuf, ArchiveError> {
    check_version(version)?;
    verify_sha256(archive, sha256)?;
    let app_fd = open_app(app, true)?;
    let releases_path = app.join("releases");
    let releases = child_dir(&app_fd, &releases_path, OsStr::new("releases"), true)?;
    let target = releases_path.join(version);
    match beneath::stat(releases.as_fd(), OsStr::new(version)) {
        Ok(st) if beneath::ours(&st) => {} // already unpacked: only switched to
        Ok(_) => return Err(planted(&target)),
        Err(Errno::NOENT) => unpack_release(archive, &releases, &releases_path, version, limits)?,
        Err(e) => return Err(io_at(&target, e)),
    }
    switch_at(&app_fd, app, version)?;
    Ok(target)
}

/// Unpack into `releases/.VERSION.partial` (made here, by the agent's user), then rename it
/// to `releases/VERSION`; on error remove what was unpacked.
fn unpack_release(
    archive: &Path,
    releases: &OwnedFd,
    releases_path: &Path,
    version: &str,
    limits: Limits,
) -> Result<(), ArchiveError> {
    let name = format!(".{version}.partial");
    let partial = OsStr::new(&name);
    let path = releases_path.join(&name);
    // Leftovers of an interrupted deploy are removed, if they are the agent's.
    let remove_ours = || match beneath::stat(releases.as_fd(), partial) {
        Ok(st) if beneath::ours(&st) => beneath::remove_tree(releases.as_fd(), partial).map_err(|e| io_at(&path, e)),
        Ok(_) => Err(planted(&path)),
        Err(Errno::NOENT) => Ok(()),
        Err(e) => Err(io_at(&path, e)),
    };
    remove_ours()?;
    rustix::fs::mkdirat(releases, partial, Mode::from_raw_mode(0o755)).map_err(|e| io_at(&path, e))?;
    let result = child_dir(releases, &path, partial, false)
        .and_then(|dest| match rustix::fs::fstat(&dest) {
            Ok(st) if beneath::ours(&st) => unpack_fd(archive, dest, limits),
            Ok(_) => Err(planted(&path)),
            Err(e) => Err(io_at(&path, e)),
        })
        .and_then(|()| {
            rustix::fs::renameat(releases, partial, releases, version)
                .map_err(|e| io_at(&releases_path.join(version), e))
        });
    if result.is_err() {
        let _ = remove_ours();
    }
    result
}

/// Point `APP/current` at `releases/VERSION` in one rename (a reader sees the old link or the
/// new one, never none). Nothing in `APP` is followed: a link planted as `current` or as the
/// temporary name is replaced or refused, never written through.
pub fn switch(app: &Path, version: &str) -> Result<(), ArchiveError> {
    check_version(version)?;
    let app_fd = open_app(app, false)?;
    switch_at(&app_fd, app, version)
}

fn switch_at(app_fd: &OwnedFd, app: &Path, version: &str) -> Result<(), ArchiveError> {
    const TMP: &str = ".current.tmp";
    let tmp_path = app.join(TMP);
    match rustix::fs::unlinkat(app_fd, TMP, AtFlags::empty()) {
        Ok(()) | Err(Errno::NOENT) => {}
        Err(e) => return Err(io_at(&tmp_path, e)),
    }
    rustix::fs::symlinkat(Path::new("releases").join(version), app_fd, TMP).map_err(|e| io_at(&tmp_path, e))?;
    rustix::fs::renameat(app_fd, TMP, app_fd, "current").map_err(|e| io_at(&app.join("current"), e))
}

/// Remove releases beyond the newest `keep` (by modification time), never one named in
/// `spare`. Only directories the agent's user owns are counted or removed; links and other
/// users' files in `releases` are left alone, and removal never follows a link. Best effort.
pub fn prune(app: &Path, keep: usize, spare: &[&str]) {
    let Ok(app_fd) = open_app(app, false) else { return };
    let Ok(releases) = beneath::open_dir(app_fd.as_fd(), OsStr::new("releases")) else {
        return;
    };
    let Ok(mut dir) = rustix::fs::Dir::read_from(&releases) else {
        return;
    };
    let mut found = Vec::new();
    while let Some(Ok(e)) = dir.next() {
        let name = OsStr::from_bytes(e.file_name().to_bytes()).to_owned();
        if name.as_bytes().starts_with(b".") {
            continue;
        }
        if let Ok(st) = beneath::stat(releases.as_fd(), &name)
            && beneath::ours(&st)
        {
            found.push(((st.st_mtime, st.st_mtime_nsec), name));
        }
    }
    found.sort_by_key(|r| std::cmp::Reverse(r.0));
    for (_, name) in found.into_iter().skip(keep) {
        if !spare.iter().any(|s| OsStr::new(s) == name) {
            let _ = beneath::remove_tree(releases.as_fd(), &name);
        }
    }
}

/// Unpack a tar.gz or zip archive into the existing, empty directory `dest`.
pub fn unpack(archive: &Path, dest: &Path, limits: Limits) -> Result<(), ArchiveError> {
    let flags = OFlags::DIRECTORY | OFlags::RDONLY | OFlags::CLOEXEC;
    let fd = rustix::fs::open(dest, flags, Mode::empty()).map_err(|e| io_at(dest, e))?;
    unpack_fd(archive, fd, limits)
}

fn unpack_fd(archive: &Path, dest: OwnedFd, limits: Limits) -> Result<(), ArchiveError> {
    let mut magic = [0u8; 4];
    let mut f = std::fs::File::open(archive).map_err(io(archive))?;
    let n = f.read(&mut magic).map_err(io(archive))?;
    drop(f);
    let f = std::fs::File::open(archive).map_err(io(archive))?;
    let mut w = writer::Writer::new(dest, limits);
    match &magic[..n] {
        [0x1f, 0x8b, ..] => formats::unpack_tar(flate2::read::GzDecoder::new(f), &mut w),
        [b'P', b'K', 3, 4] | [b'P', b'K', 5, 6] => formats::unpack_zip(f, &mut w),
        _ => Err(ArchiveError::Format("neither gzip nor zip magic bytes".into())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::io::Write;
    use std::os::unix::fs::PermissionsExt;

    fn sha(path: &Path) -> String {
        hex::encode(sha2::Sha256::digest(std::fs::read(path).unwrap()))
    }

    /// A tar.gz with the given entries, written by the tar crate's raw header API so hostile
    /// entries can be made.
    fn targz(dir: &Path, name: &str, entries: &[(&str, tar::EntryType, &str)]) -> PathBuf {
        let path = dir.join(name);
        let gz = flate2::write::GzEncoder::new(std::fs::File::create(&path).unwrap(), flate2::Compression::fast());
        let mut b = tar::Builder::new(gz);
        for (p, kind, data) in entries {
            let mut h = tar::Header::new_gnu();
            // Set the raw name: set_path refuses `..` and absolute paths, which is what we test.
            let bytes = p.as_bytes();
            h.as_old_mut().name[..bytes.len()].copy_from_slice(bytes);
            h.set_entry_type(*kind);
            h.set_mode(0o4755);
            match kind {
                tar::EntryType::Symlink | tar::EntryType::Link => {
                    h.set_link_name(data).unwrap_or_else(|_| {
                        let t = data.as_bytes();
                        h.as_old_mut().linkname[..t.len()].copy_from_slice(t);
                    });
                    h.set_size(0);
                }
                _ => h.set_size(data.len() as u64),
            }
            h.set_mtime(0);
            h.set_cksum();
            let body: &[u8] = if matches!(kind, tar::EntryType::Symlink | tar::EntryType::Link) {
                &[]
            } else {
                data.as_bytes()
            };
            b.append(&h, body).unwrap();
        }
        b.into_inner().unwrap().finish().unwrap();
        path
    }

    fn good(dir: &Path, name: &str, body: &str) -> PathBuf {
        use tar::EntryType::*;
        targz(
            dir,
            name,
            &[
                ("./", Directory, ""),
                ("www/", Directory, ""),
                ("www/index.html", Regular, body),
                ("www/home.html", Symlink, "index.html"),
                ("www/copy.html", Link, "www/index.html"),
            ],
        )
    }

    #[test]
    fn a_good_archive_becomes_current_and_the_next_one_replaces_it() {
        let dir = tempfile::tempdir().unwrap();
        let app = dir.path().join("app");
        let v1 = good(dir.path(), "v1.tar.gz", "one");
        deploy(&v1, &sha(&v1), &app, "v1", Limits::default()).unwrap();
        assert_eq!(
            std::fs::read_to_string(app.join("current/www/home.html")).unwrap(),
            "one"
        );
        assert_eq!(
            std::fs::read_to_string(app.join("current/www/copy.html")).unwrap(),
            "one"
        );
        let mode = std::fs::metadata(app.join("current/www/index.html"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o7777, 0o755, "set-uid is dropped");
        let v2 = good(dir.path(), "v2.tar.gz", "two");
        deploy(&v2, &sha(&v2), &app, "v2", Limits::default()).unwrap();
        assert_eq!(
            std::fs::read_to_string(app.join("current/www/index.html")).unwrap(),
            "two"
        );
        assert_eq!(
            std::fs::read_link(app.join("current")).unwrap(),
            Path::new("releases/v2")
        );
        // Back to v1: already unpacked, only switched.
        deploy(&v1, &sha(&v1), &app, "v1", Limits::default()).unwrap();
        assert_eq!(
            std::fs::read_to_string(app.join("current/www/index.html")).unwrap(),
            "one"
        );
    }

    #[test]
    fn hostile_archives_are_refused_and_the_old_version_keeps_serving() {
        use tar::EntryType::*;
        let dir = tempfile::tempdir().unwrap();
        let app = dir.path().join("app");
        let v1 = good(dir.path(), "v1.tar.gz", "one");
        deploy(&v1, &sha(&v1), &app, "v1", Limits::default()).unwrap();
        type Entries<'a> = Vec<(&'a str, tar::EntryType, &'a str)>;
        let cases: Vec<(&str, Entries, &str)> = vec![
            ("abs", vec![("/etc/evil", Regular, "x")], "absolute"),
            ("dotdot", vec![("a/../../evil", Regular, "x")], "'..'"),
            ("symlink-out", vec![("l", Symlink, "../../etc")], "outside"),
            ("symlink-abs", vec![("l", Symlink, "/etc/passwd")], "outside"),
            (
                "through-link",
                vec![("d", Symlink, "."), ("d/x", Regular, "x")],
                "through a symlink",
            ),
            ("hardlink-out", vec![("h", Link, "/etc/passwd")], "absolute"),
            ("device", vec![("dev", Char, "")], "device"),
            ("fifo", vec![("p", Fifo, "")], "FIFO"),
            ("twice", vec![("f", Regular, "a"), ("f", Regular, "b")], "twice"),
        ];
        for (name, entries, why) in cases {
            let a = targz(dir.path(), &format!("{name}.tar.gz"), &entries);
            let e = deploy(&a, &sha(&a), &app, name, Limits::default())
                .unwrap_err()
                .to_string();
            assert!(e.contains(why), "{name}: {e}");
            assert!(!app.join("releases").join(name).exists(), "{name}: nothing left behind");
            assert_eq!(
                std::fs::read_link(app.join("current")).unwrap(),
                Path::new("releases/v1"),
                "{name}"
            );
        }
        assert!(!dir.path().join("evil").exists() && !Path::new("/etc/evil").exists());
        // A wrong hash: refused before anything is unpacked.
        let v2 = good(dir.path(), "v2.tar.gz", "two");
        let e = deploy(&v2, &"0".repeat(64), &app, "v2", Limits::default()).unwrap_err();
        assert!(matches!(e, ArchiveError::Hash { .. }), "{e}");
        assert!(!app.join("releases/v2").exists());
        // Too big, too many entries, not an archive, a hostile version name.
        let small = Limits {
            max_entries: 3,
            max_bytes: 2,
            ..Limits::default()
        };
        assert!(matches!(
            deploy(&v2, &sha(&v2), &app, "v2", small),
            Err(ArchiveError::TooLarge(_))
        ));
        let junk = dir.path().join("junk");
        std::fs::write(&junk, b"hello").unwrap();
        assert!(matches!(
            deploy(&junk, &sha(&junk), &app, "j", Limits::default()),
            Err(ArchiveError::Format(_))
        ));
        assert!(deploy(&v2, &sha(&v2), &app, "../x", Limits::default()).is_err());
        assert_eq!(
            std::fs::read_to_string(app.join("current/www/index.html")).unwrap(),
            "one"
        );
    }

    #[test]
    fn zip_archives_unpack_and_hostile_names_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let make = |name: &str, entries: &[(&str, &str)]| {
            let path = dir.path().join(name);
            let mut z = zip::ZipWriter::new(std::fs::File::create(&path).unwrap());
            for (p, data) in entries {
                z.start_file(*p, zip::write::SimpleFileOptions::default()).unwrap();
                z.write_all(data.as_bytes()).unwrap();
            }
            z.finish().unwrap();
            path
        };
        let app = dir.path().join("app");
        let ok = make("ok.zip", &[("site/index.html", "zipped")]);
        deploy(&ok, &sha(&ok), &app, "z1", Limits::default()).unwrap();
        assert_eq!(
            std::fs::read_to_string(app.join("current/site/index.html")).unwrap(),
            "zipped"
        );
        for (name, p) in [("up.zip", "../evil"), ("abs.zip", "/evil")] {
            let bad = make(name, &[(p, "x")]);
            let e = deploy(&bad, &sha(&bad), &app, "z2", Limits::default())
                .unwrap_err()
                .to_string();
            assert!(e.contains("unsafe"), "{name}: {e}");
        }
        assert_eq!(
            std::fs::read_link(app.join("current")).unwrap(),
            Path::new("releases/z1")
        );
    }

    proptest! {
        /// Whatever names and link targets an archive holds, nothing lands outside its root.
        #[test]
        fn nothing_escapes(names in proptest::collection::vec("[a-z./]{1,12}", 1..6), targets in proptest::collection::vec("[a-z./]{1,12}", 1..6)) {
            use tar::EntryType::*;
            let dir = tempfile::tempdir().unwrap();
            let root = dir.path().join("root");
            std::fs::create_dir(&root).unwrap();
            let mut entries = vec![];
            for (i, n) in names.iter().enumerate() {
                entries.push((n.as_str(), if i % 2 == 0 { Regular } else { Symlink }, targets[i % targets.len()].as_str()));
            }
            let a = targz(dir.path(), "p.tar.gz", &entries);
            let _ = unpack(&a, &root, Limits::default());
            // Only root and the archive are in the temp dir; every link under root stays inside.
            let mut outside: Vec<_> = std::fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
            outside.sort();
            prop_assert_eq!(outside, vec![std::ffi::OsString::from("p.tar.gz"), "root".into()]);
            let real_root = root.canonicalize().unwrap();
            for e in walk(&root) {
                if let Ok(real) = e.canonicalize() {
                    prop_assert!(real.starts_with(&real_root), "{:?} -> {:?}", e, real);
                }
            }
        }
    }

    fn walk(p: &Path) -> Vec<PathBuf> {
        let mut out = vec![];
        if let Ok(rd) = std::fs::read_dir(p) {
            for e in rd.flatten() {
                let path = e.path();
                out.push(path.clone());
                if e.file_type().is_ok_and(|t| t.is_dir()) {
                    out.extend(walk(&path));
                }
            }
        }
        out
    }
}
