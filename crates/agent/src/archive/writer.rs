//! Writes an archive's entries beneath a release directory, checking each (the rules are in
//! the parent module's docs).
//!
//! Every creation is relative to a directory file descriptor reached from the release root
//! one plain name at a time without following links ([`beneath`]), and never replaces what is
//! there (`O_EXCL`, `mkdirat`, `symlinkat`, `linkat` all fail on an existing name). So a link
//! the archive made earlier can never redirect a later entry, whatever order they come in.

use std::ffi::OsStr;
use std::io::Read;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::rc::Rc;

use rustix::fs::{AtFlags, FileType, Mode, OFlags};
use rustix::io::Errno;

use super::beneath;
use super::{ArchiveError, Limits, quote};

pub(super) struct Writer {
    root: Rc<OwnedFd>,
    pub(super) limits: Limits,
    entries: usize,
    bytes: u64,
    /// The parent directory of the last entry: archives list a directory's entries together.
    /// Safe to keep, since nothing the archive does can replace a directory once opened.
    cache: Option<(Vec<Vec<u8>>, Rc<OwnedFd>)>,
}

pub(super) fn unsafe_entry(name: &[u8], why: impl Into<String>) -> ArchiveError {
    ArchiveError::Unsafe {
        entry: quote(name),
        why: why.into(),
    }
}

fn io_entry(name: &[u8], e: Errno) -> ArchiveError {
    ArchiveError::Io {
        path: quote(name),
        source: e.into(),
    }
}

/// An entry's name as plain components (`.` and empty ones dropped), or why it is refused.
pub(super) fn components<'a>(name: &'a [u8], limits: &Limits) -> Result<Vec<&'a OsStr>, String> {
    if name.len() > limits.max_path_bytes {
        return Err(format!(
            "a name of {} bytes (at most {})",
            name.len(),
            limits.max_path_bytes
        ));
    }
    if name.contains(&0) {
        return Err("a NUL in its name".into());
    }
    if name.contains(&b'\\') {
        return Err("a backslash in its name (not a separator here; refused as ambiguous)".into());
    }
    if name.starts_with(b"/") {
        return Err("an absolute path".into());
    }
    let mut out = Vec::new();
    for c in name.split(|b| *b == b'/') {
        match c {
            b"" | b"." => {}
            b".." => return Err("a '..' in its path".into()),
            c => out.push(OsStr::from_bytes(c)),
        }
    }
    if out.len() > limits.max_depth {
        return Err(format!(
            "a path {} levels deep (at most {})",
            out.len(),
            limits.max_depth
        ));
    }
    Ok(out)
}

/// A symlink's target, for a link `depth` directories below the root: relative, and only
/// `..` components before plain names. Climbing from the link's own directory (a real one:
/// no entry is written through a link) at most `depth` levels stays inside; descending from
/// there stays inside whatever links the names turn out to be, since each of those obeys the
/// same rule. A `..` after a name is refused: the name may be (or later become) a link, and
/// the kernel resolves `..` after following it, so no textual check could bound it.
fn link_target(target: &[u8], depth: usize, limits: &Limits) -> Result<(), String> {
    let outside = || format!("a symlink to {}, outside the archive", quote(target));
    if target.is_empty() {
        return Err("a symlink with an empty target".into());
    }
    if target.len() > limits.max_path_bytes || target.contains(&0) || target.contains(&b'\\') {
        return Err(format!(
            "a symlink to {}: {}",
            quote(target),
            "too long, a NUL or a backslash"
        ));
    }
    if target.starts_with(b"/") {
        return Err(outside());
    }
    let (mut up, mut descended) = (0, false);
    for c in target.split(|b| *b == b'/') {
        match c {
            b"" | b"." => {}
            b".." if descended => {
                return Err(format!(
                    "a symlink to {}: '..' after a name, which may be a link (refused)",
                    quote(target)
                ));
            }
            b".." => {
                up += 1;
                if up > depth {
                    return Err(outside());
                }
            }
            _ => descended = true,
        }
    }
    Ok(())
}

impl Writer {
    pub(super) fn new(root: OwnedFd, limits: Limits) -> Self {
        Self {
            root: Rc::new(root),
            limits,
            entries: 0,
            bytes: 0,
            cache: None,
        }
    }

    /// One more entry (of any kind, extended headers aside).
    pub(super) fn count(&mut self) -> Result<(), ArchiveError> {
        self.entries += 1;
        if self.entries > self.limits.max_entries {
            return Err(ArchiveError::TooLarge(format!("{} entries", self.limits.max_entries)));
        }
        Ok(())
    }

    /// `n` more bytes read from the archive (data of any entry, written or skipped).
    pub(super) fn charge(&mut self, n: u64) -> Result<(), ArchiveError> {
        match self.bytes.checked_add(n) {
            Some(b) if b <= self.limits.max_bytes => {
                self.bytes = b;
                Ok(())
            }
            _ => Err(ArchiveError::TooLarge(format!("{} bytes", self.limits.max_bytes))),
        }
    }

    fn split<'a>(&self, name: &'a [u8]) -> Result<Vec<&'a OsStr>, ArchiveError> {
        components(name, &self.limits).map_err(|why| unsafe_entry(name, why))
    }

    /// The directory `dirs` below the root, created as needed, reached without following a link.
    fn parent(&mut self, name: &[u8], dirs: &[&OsStr]) -> Result<Rc<OwnedFd>, ArchiveError> {
        if dirs.is_empty() {
            return Ok(self.root.clone());
        }
        if let Some((key, fd)) = &self.cache
            && key.len() == dirs.len()
            && key.iter().zip(dirs).all(|(k, d)| k.as_slice() == d.as_bytes())
        {
            return Ok(fd.clone());
        }
        let mut at = self.root.clone();
        for d in dirs {
            let next = beneath::open_or_create_dir(at.as_fd(), d, 0o755).map_err(|e| match e {
                Errno::LOOP | Errno::NOTDIR => unsafe_entry(name, "it would be written through a symlink or a file"),
                e => io_entry(name, e),
            })?;
            at = Rc::new(next);
        }
        self.cache = Some((dirs.iter().map(|d| d.as_bytes().to_vec()).collect(), at.clone()));
        Ok(at)
    }

    pub(super) fn dir(&mut self, name: &[u8], mode: u32) -> Result<(), ArchiveError> {
        self.count()?;
        let comps = self.split(name)?;
        let Some((leaf, dirs)) = comps.split_last() else {
            return Ok(()); // "./": the root itself
        };
        let parent = self.parent(name, dirs)?;
        let fd = beneath::open_or_create_dir(parent.as_fd(), leaf, 0o700).map_err(|e| match e {
            Errno::LOOP | Errno::NOTDIR => unsafe_entry(name, "a directory over a symlink or a file"),
            e => io_entry(name, e),
        })?;
        // Directories stay traversable by their owner.
        rustix::fs::fchmod(&fd, Mode::from_raw_mode((mode & 0o777) | 0o700)).map_err(|e| io_entry(name, e))
    }

    /// A regular file of `declared` bytes (if the format says) read from `data`.
    pub(super) fn file(
        &mut self,
        name: &[u8],
        mode: u32,
        declared: Option<u64>,
        data: &mut impl Read,
    ) -> Result<(), ArchiveError> {
        self.count()?;
        let comps = self.split(name)?;
        let Some((leaf, dirs)) = comps.split_last() else {
            return Err(unsafe_entry(name, "a file without a name"));
        };
        let left = self.limits.max_bytes - self.bytes;
        if declared.is_some_and(|d| d > left) {
            return Err(ArchiveError::TooLarge(format!("{} bytes", self.limits.max_bytes)));
        }
        let parent = self.parent(name, dirs)?;
        // O_EXCL | O_NOFOLLOW: never follows or replaces what is there.
        let flags = OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC;
        let fd =
            rustix::fs::openat(parent.as_fd(), *leaf, flags, Mode::from_raw_mode(mode & 0o777)).map_err(
                |e| match e {
                    Errno::EXIST => unsafe_entry(name, "it appears twice (or over a directory or link)"),
                    e => io_entry(name, e),
                },
            )?;
        let mut f = std::fs::File::from(fd);
        let copied = std::io::copy(&mut data.take(left.saturating_add(1)), &mut f).map_err(|e| ArchiveError::Io {
            path: quote(name),
            source: e,
        })?;
        if copied > left {
            return Err(ArchiveError::TooLarge(format!("{} bytes", self.limits.max_bytes)));
        }
        if declared.is_some_and(|d| d != copied) {
            return Err(ArchiveError::Format(format!("{} is truncated", quote(name))));
        }
        self.bytes += copied;
        Ok(())
    }

    pub(super) fn symlink(&mut self, name: &[u8], target: &[u8]) -> Result<(), ArchiveError> {
        self.count()?;
        let comps = self.split(name)?;
        let Some((leaf, dirs)) = comps.split_last() else {
            return Err(unsafe_entry(name, "a link without a name"));
        };
        link_target(target, dirs.len(), &self.limits).map_err(|why| unsafe_entry(name, why))?;
        let parent = self.parent(name, dirs)?;
        rustix::fs::symlinkat(OsStr::from_bytes(target), parent.as_fd(), *leaf).map_err(|e| match e {
            Errno::EXIST => unsafe_entry(name, "it appears twice (or over a directory or link)"),
            e => io_entry(name, e),
        })
    }

    /// A hard link: only to a regular file the archive already made, found beneath the root
    /// with no link on the way (`RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS`).
    pub(super) fn hardlink(&mut self, name: &[u8], target: &[u8]) -> Result<(), ArchiveError> {
        self.count()?;
        let comps = self.split(name)?;
        let Some((leaf, dirs)) = comps.split_last() else {
            return Err(unsafe_entry(name, "a link without a name"));
        };
        let to = |why: &str| unsafe_entry(name, format!("a hard link to {}: {why}", quote(target)));
        let tcomps = components(target, &self.limits).map_err(|why| to(&why))?;
        let Some((tleaf, tdirs)) = tcomps.split_last() else {
            return Err(to("the archive's root"));
        };
        let not_a_file = || to("not a regular file of the archive");
        let tparent = beneath::open_path(self.root.as_fd(), tdirs).map_err(|_| not_a_file())?;
        match beneath::stat(tparent.as_fd(), tleaf) {
            Ok(st) if FileType::from_raw_mode(st.st_mode) == FileType::RegularFile => {}
            _ => return Err(not_a_file()),
        }
        let parent = self.parent(name, dirs)?;
        // No AT_SYMLINK_FOLLOW: links the name itself, just checked to be a regular file.
        rustix::fs::linkat(tparent.as_fd(), *tleaf, parent.as_fd(), *leaf, AtFlags::empty()).map_err(|e| match e {
            Errno::EXIST => unsafe_entry(name, "it appears twice (or over a directory or link)"),
            e => io_entry(name, e),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn link_targets_only_climb_before_they_descend() {
        let l = Limits::default();
        for ok in ["a", "./a/b", "../a", "../../a/b/c", "..", "."] {
            assert!(link_target(ok.as_bytes(), 2, &l).is_ok(), "{ok}");
        }
        for bad in ["", "/etc", "../../../a", "d/up/..", "a/../b", "a/..", "x\\y", "a\0b"] {
            assert!(link_target(bad.as_bytes(), 2, &l).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn names_are_plain_components() {
        let l = Limits {
            max_depth: 3,
            max_path_bytes: 16,
            ..Limits::default()
        };
        assert_eq!(components(b"./a//b/./c/", &l).unwrap(), ["a", "b", "c"]);
        assert!(components(b"./", &l).unwrap().is_empty());
        for bad in ["/a", "a/../b", "..", "a\\b", "a\0", "a/b/c/d", "aaaaaaaaaaaaaaaaa"] {
            assert!(components(bad.as_bytes(), &l).is_err(), "{bad:?}");
        }
    }
}
