//! Application archives: verified by SHA-256, unpacked into a versioned directory and switched
//! in by replacing one `current` symlink, so a server serves either the old version or the new
//! one, never a mix, and a bad archive leaves the old one serving.
//!
//! ```text
//! APP/releases/VERSION/   one directory per deployed version
//! APP/current -> releases/VERSION
//! ```
//!
//! Archives are untrusted input. Refused, with the entry named: absolute paths, `..`
//! components, symlinks and hard links whose target leaves the archive's root, device files
//! and FIFOs, an entry written through a symlink the archive made, more than
//! [`Limits::max_entries`] entries or [`Limits::max_bytes`] unpacked bytes, and a wrong hash
//! (checked before anything is unpacked). Permission bits are kept except set-uid, set-gid and
//! sticky; owners are not (files belong to the agent's user).

use std::io::{Read, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};

use sha2::Digest;

/// How much an archive may unpack to.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub max_entries: usize,
    pub max_bytes: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_entries: 100_000,
            max_bytes: 4 << 30,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ArchiveError {
    #[error("the archive's SHA-256 is {actual}, not the expected {expected}")]
    Hash { expected: String, actual: String },
    #[error("not a tar.gz or zip archive: {0}")]
    Format(String),
    #[error("unsafe archive entry {entry:?}: {why}")]
    Unsafe { entry: String, why: String },
    #[error("the archive unpacks to more than {0}")]
    TooLarge(String),
    #[error("{path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> ArchiveError + '_ {
    move |source| ArchiveError::Io {
        path: path.display().to_string(),
        source,
    }
}

fn unsafe_entry(entry: &str, why: impl Into<String>) -> ArchiveError {
    // Names come from the archive: quote a bounded prefix.
    let entry: String = entry.chars().take(200).collect();
    ArchiveError::Unsafe { entry, why: why.into() }
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
            expected: expected.chars().take(64).collect(),
            actual,
        });
    }
    Ok(())
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
    if version.is_empty()
        || version.len() > 128
        || !version
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
        || version.starts_with('.')
    {
        return Err(unsafe_entry(
            version,
            "a version is 1-128 letters, digits, '.', '_' or '-'",
        ));
    }
    verify_sha256(archive, sha256)?;
    let releases = app.join("releases");
    std::fs::create_dir_all(&releases).map_err(io(&releases))?;
    let target = releases.join(version);
    if !target.is_dir() {
        let partial = releases.join(format!(".{version}.partial"));
        if partial.exists() {
            std::fs::remove_dir_all(&partial).map_err(io(&partial))?;
        }
        std::fs::create_dir(&partial).map_err(io(&partial))?;
        if let Err(e) = unpack(archive, &partial, limits) {
            let _ = std::fs::remove_dir_all(&partial);
            return Err(e);
        }
        std::fs::rename(&partial, &target).map_err(io(&target))?;
    }
    switch(app, version)?;
    Ok(target)
}

/// Point `APP/current` at `releases/VERSION` in one rename (a reader sees the old link or the
/// new one, never none).
pub fn switch(app: &Path, version: &str) -> Result<(), ArchiveError> {
    let link = app.join(".current.tmp");
    let _ = std::fs::remove_file(&link);
    std::os::unix::fs::symlink(Path::new("releases").join(version), &link).map_err(io(&link))?;
    let current = app.join("current");
    std::fs::rename(&link, &current).map_err(io(&current))
}

/// Unpack a tar.gz or zip archive into the existing, empty directory `dest`.
pub fn unpack(archive: &Path, dest: &Path, limits: Limits) -> Result<(), ArchiveError> {
    let mut magic = [0u8; 4];
    let mut f = std::fs::File::open(archive).map_err(io(archive))?;
    let n = f.read(&mut magic).map_err(io(archive))?;
    drop(f);
    let f = std::fs::File::open(archive).map_err(io(archive))?;
    let mut w = Writer {
        root: dest.to_path_buf(),
        limits,
        entries: 0,
        bytes: 0,
    };
    match &magic[..n] {
        [0x1f, 0x8b, ..] => unpack_tar(flate2::read::GzDecoder::new(f), &mut w),
        [b'P', b'K', 3, 4] | [b'P', b'K', 5, 6] => unpack_zip(f, &mut w),
        _ => Err(ArchiveError::Format("neither gzip nor zip magic bytes".into())),
    }
}

fn unpack_tar(r: impl Read, w: &mut Writer) -> Result<(), ArchiveError> {
    let mut ar = tar::Archive::new(r);
    let bad = |e: std::io::Error| ArchiveError::Format(format!("tar: {e}"));
    for entry in ar.entries().map_err(bad)? {
        let mut entry = entry.map_err(bad)?;
        let name = String::from_utf8_lossy(&entry.path_bytes()).into_owned();
        let kind = entry.header().entry_type();
        let mode = entry.header().mode().unwrap_or(0o644);
        match kind {
            tar::EntryType::Regular | tar::EntryType::Continuous => w.file(&name, mode, &mut entry)?,
            tar::EntryType::Directory => w.dir(&name, mode)?,
            tar::EntryType::Symlink => {
                let target = entry
                    .link_name_bytes()
                    .map(|t| String::from_utf8_lossy(&t).into_owned())
                    .unwrap_or_default();
                w.symlink(&name, &target)?;
            }
            tar::EntryType::Link => {
                let target = entry
                    .link_name_bytes()
                    .map(|t| String::from_utf8_lossy(&t).into_owned())
                    .unwrap_or_default();
                w.hardlink(&name, &target)?;
            }
            tar::EntryType::Char | tar::EntryType::Block => return Err(unsafe_entry(&name, "a device file")),
            tar::EntryType::Fifo => return Err(unsafe_entry(&name, "a FIFO")),
            // Extended headers describe the next entry (the tar crate applies them).
            tar::EntryType::XHeader
            | tar::EntryType::XGlobalHeader
            | tar::EntryType::GNULongName
            | tar::EntryType::GNULongLink => {}
            other => return Err(unsafe_entry(&name, format!("an entry of type {other:?}"))),
        }
    }
    Ok(())
}

fn unpack_zip(f: std::fs::File, w: &mut Writer) -> Result<(), ArchiveError> {
    let mut zip = zip::ZipArchive::new(f).map_err(|e| ArchiveError::Format(format!("zip: {e}")))?;
    for i in 0..zip.len() {
        let mut entry = zip.by_index(i).map_err(|e| ArchiveError::Format(format!("zip: {e}")))?;
        let name = entry
            .name()
            .map_err(|e| ArchiveError::Format(format!("zip: {e}")))?
            .to_string();
        let mode = entry.unix_mode().unwrap_or(0o644);
        const S_IFMT: u32 = 0o170000;
        match mode & S_IFMT {
            0o120000 => {
                let mut target = String::new();
                (&mut entry)
                    .take(4096)
                    .read_to_string(&mut target)
                    .map_err(|e| ArchiveError::Format(format!("zip: {e}")))?;
                w.symlink(&name, &target)?;
            }
            0o020000 | 0o060000 => return Err(unsafe_entry(&name, "a device file")),
            0o010000 => return Err(unsafe_entry(&name, "a FIFO")),
            _ if entry.is_dir() => w.dir(&name, mode)?,
            _ => w.file(&name, mode, &mut entry)?,
        }
    }
    Ok(())
}

/// Writes entries under `root`, checking each.
struct Writer {
    root: PathBuf,
    limits: Limits,
    entries: usize,
    bytes: u64,
}

impl Writer {
    /// The entry's path under the root: relative, normal components only, and not through a
    /// symlink (so a link's real place is where its name says, and its target can be checked).
    fn place(&mut self, name: &str) -> Result<Option<PathBuf>, ArchiveError> {
        self.entries += 1;
        if self.entries > self.limits.max_entries {
            return Err(ArchiveError::TooLarge(format!("{} entries", self.limits.max_entries)));
        }
        let rel = relative(name).map_err(|why| unsafe_entry(name, why))?;
        if rel.as_os_str().is_empty() {
            return Ok(None); // "./"
        }
        let mut at = self.root.clone();
        let parts: Vec<_> = rel.components().collect();
        for c in &parts[..parts.len() - 1] {
            at.push(c);
            match std::fs::symlink_metadata(&at) {
                Ok(m) if m.file_type().is_symlink() => {
                    return Err(unsafe_entry(name, "it would be written through a symlink"));
                }
                Ok(m) if m.is_dir() => {}
                Ok(_) => return Err(unsafe_entry(name, "a parent is not a directory")),
                Err(_) => std::fs::create_dir(&at).map_err(io(&at))?,
            }
        }
        Ok(Some(self.root.join(rel)))
    }

    fn dir(&mut self, name: &str, mode: u32) -> Result<(), ArchiveError> {
        let Some(path) = self.place(name)? else { return Ok(()) };
        match std::fs::symlink_metadata(&path) {
            Ok(m) if m.is_dir() => {}
            Ok(_) => return Err(unsafe_entry(name, "a directory over something else")),
            Err(_) => std::fs::create_dir(&path).map_err(io(&path))?,
        }
        // Directories stay traversable by their owner.
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode((mode & 0o777) | 0o700)).map_err(io(&path))
    }

    fn file(&mut self, name: &str, mode: u32, data: &mut impl Read) -> Result<(), ArchiveError> {
        let Some(path) = self.place(name)? else {
            return Err(unsafe_entry(name, "a file without a name"));
        };
        // create_new: never follows or replaces what is there (a symlink planted by the archive).
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode & 0o777)
            .custom_flags(rustix::fs::OFlags::NOFOLLOW.bits() as i32)
            .open(&path)
            .map_err(|e| match e.kind() {
                std::io::ErrorKind::AlreadyExists => unsafe_entry(name, "it appears twice"),
                _ => io(&path)(e),
            })?;
        let left = self.limits.max_bytes - self.bytes;
        let copied = std::io::copy(&mut data.take(left + 1), &mut f).map_err(io(&path))?;
        if copied > left {
            return Err(ArchiveError::TooLarge(format!("{} bytes", self.limits.max_bytes)));
        }
        self.bytes += copied;
        f.flush().map_err(io(&path))
    }

    fn symlink(&mut self, name: &str, target: &str) -> Result<(), ArchiveError> {
        let Some(path) = self.place(name)? else {
            return Err(unsafe_entry(name, "a link without a name"));
        };
        let t = Path::new(target);
        if target.is_empty() || t.is_absolute() {
            return Err(unsafe_entry(
                name,
                format!("a symlink to {target:?}, outside the archive"),
            ));
        }
        // Resolve lexically from the link's directory: no entry is ever written through a
        // symlink (see `place`), so that directory is where the link really is.
        let rel_dir = path
            .parent()
            .and_then(|p| p.strip_prefix(&self.root).ok())
            .unwrap_or(Path::new(""));
        if !stays_inside(&rel_dir.join(t)) {
            return Err(unsafe_entry(
                name,
                format!("a symlink to {target:?}, outside the archive"),
            ));
        }
        std::os::unix::fs::symlink(t, &path).map_err(|e| match e.kind() {
            std::io::ErrorKind::AlreadyExists => unsafe_entry(name, "it appears twice"),
            _ => io(&path)(e),
        })
    }

    fn hardlink(&mut self, name: &str, target: &str) -> Result<(), ArchiveError> {
        let Some(path) = self.place(name)? else {
            return Err(unsafe_entry(name, "a link without a name"));
        };
        let rel = relative(target).map_err(|why| unsafe_entry(name, format!("a hard link to {target:?}: {why}")))?;
        let source = self.root.join(rel);
        // Only to a regular file the archive already made (never through a symlink).
        match std::fs::symlink_metadata(&source) {
            Ok(m) if m.is_file() => {}
            _ => {
                return Err(unsafe_entry(
                    name,
                    format!("a hard link to {target:?}, not a file of the archive"),
                ));
            }
        }
        std::fs::hard_link(&source, &path).map_err(io(&path))
    }
}

/// An archive path as a relative path of normal components (`./` prefixes dropped).
fn relative(name: &str) -> Result<PathBuf, &'static str> {
    if name.contains('\0') {
        return Err("a NUL in its name");
    }
    let mut out = PathBuf::new();
    for c in Path::new(name).components() {
        match c {
            Component::Normal(p) => out.push(p),
            Component::CurDir => {}
            Component::ParentDir => return Err("a '..' in its path"),
            Component::RootDir | Component::Prefix(_) => return Err("an absolute path"),
        }
    }
    Ok(out)
}

/// A relative path, resolved lexically, stays at or below its start.
fn stays_inside(p: &Path) -> bool {
    let mut depth: i64 = 0;
    for c in p.components() {
        match c {
            Component::Normal(_) => depth += 1,
            Component::CurDir => {}
            Component::ParentDir => {
                depth -= 1;
                if depth < 0 {
                    return false;
                }
            }
            Component::RootDir | Component::Prefix(_) => return false,
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

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
            for e in walk(&root) {
                if let Ok(t) = std::fs::read_link(&e) {
                    let rel = e.parent().unwrap().strip_prefix(&root).unwrap().join(t);
                    prop_assert!(stays_inside(&rel), "{:?}", rel);
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
