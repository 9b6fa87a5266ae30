//! Directory operations that never follow a symbolic link.
//!
//! Everything the agent creates, changes or removes in an application directory goes through
//! a directory file descriptor and one name at a time: `openat2` with `RESOLVE_BENEATH |
//! RESOLVE_NO_SYMLINKS` (or `openat` with `O_NOFOLLOW` where the kernel or a seccomp filter
//! has no `openat2`; for a single plain name the two are equivalent), `mkdirat`, `unlinkat`,
//! `renameat`. A link planted in the tree, by an archive or by the user who owns the
//! directory, makes an operation fail (`ELOOP`); it never redirects it.

use std::ffi::OsStr;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;

use rustix::fs::{AtFlags, FileType, Mode, OFlags, ResolveFlags, Stat};
use rustix::io::{Errno, Result};

const DIR: OFlags = OFlags::DIRECTORY
    .union(OFlags::RDONLY)
    .union(OFlags::CLOEXEC)
    .union(OFlags::NOFOLLOW);
const BENEATH: ResolveFlags = ResolveFlags::BENEATH
    .union(ResolveFlags::NO_SYMLINKS)
    .union(ResolveFlags::NO_MAGICLINKS);

/// How deep [`remove_tree`] goes before it gives up (an archive is limited to less).
const MAX_REMOVE_DEPTH: usize = 512;

/// `name` is one plain component: not empty, `.`, `..`, and without `/`.
fn plain(name: &OsStr) -> Result<()> {
    let b = name.as_bytes();
    if b.is_empty() || b == b"." || b == b".." || b.contains(&b'/') {
        return Err(Errno::INVAL);
    }
    Ok(())
}

/// `openat2` beneath `dir` without following any link, falling back to `openat` when the
/// system has no `openat2`.
fn open_beneath(dir: BorrowedFd<'_>, path: &OsStr, flags: OFlags) -> Result<OwnedFd> {
    match rustix::fs::openat2(dir, path, flags, Mode::empty(), BENEATH) {
        Err(Errno::NOSYS | Errno::PERM) => rustix::fs::openat(dir, path, flags, Mode::empty()),
        r => r,
    }
}

/// Open the directory `name` in `dir`; `ELOOP` if it is a symlink, `ENOTDIR` if it is
/// something else.
pub(crate) fn open_dir(dir: BorrowedFd<'_>, name: &OsStr) -> Result<OwnedFd> {
    plain(name)?;
    open_beneath(dir, name, DIR)
}

/// Open the directory `name` in `dir`, creating it (with `mode`) if it does not exist.
pub(crate) fn open_or_create_dir(dir: BorrowedFd<'_>, name: &OsStr, mode: u32) -> Result<OwnedFd> {
    match open_dir(dir, name) {
        Err(Errno::NOENT) => {
            match rustix::fs::mkdirat(dir, name, Mode::from_raw_mode(mode)) {
                Ok(()) | Err(Errno::EXIST) => {}
                Err(e) => return Err(e),
            }
            open_dir(dir, name)
        }
        r => r,
    }
}

/// Open the existing directory at the relative path `components` below `root`, never through
/// a link (one `openat2` with `RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS` where available).
pub(crate) fn open_path(root: BorrowedFd<'_>, components: &[&OsStr]) -> Result<OwnedFd> {
    let mut path = Vec::new();
    for c in components {
        plain(c)?;
        if !path.is_empty() {
            path.push(b'/');
        }
        path.extend_from_slice(c.as_bytes());
    }
    if path.is_empty() {
        path.push(b'.');
    }
    match rustix::fs::openat2(root, OsStr::from_bytes(&path), DIR, Mode::empty(), BENEATH) {
        Err(Errno::NOSYS | Errno::PERM) => {
            // The equivalent walk: one plain name at a time, none of them a link.
            let mut at = open_beneath(root, OsStr::new("."), DIR)?;
            for c in components {
                at = open_dir(at.as_fd(), c)?;
            }
            Ok(at)
        }
        r => r,
    }
}

/// What `name` in `dir` is, without following it.
pub(crate) fn stat(dir: BorrowedFd<'_>, name: &OsStr) -> Result<Stat> {
    plain(name)?;
    rustix::fs::statat(dir, name, AtFlags::SYMLINK_NOFOLLOW)
}

pub(crate) fn is_dir(st: &Stat) -> bool {
    FileType::from_raw_mode(st.st_mode) == FileType::Directory
}

/// A directory the agent's user owns: one the agent made, not one planted by another user.
pub(crate) fn ours(st: &Stat) -> bool {
    is_dir(st) && st.st_uid == rustix::process::geteuid().as_raw()
}

/// Remove `name` in `dir` and, if it is a directory, everything in it. Links are removed,
/// never followed; a directory swapped for a link half-way makes it fail, not escape.
pub(crate) fn remove_tree(dir: BorrowedFd<'_>, name: &OsStr) -> Result<()> {
    remove_at(dir, name, 0)
}

fn remove_at(dir: BorrowedFd<'_>, name: &OsStr, depth: usize) -> Result<()> {
    plain(name)?;
    match rustix::fs::unlinkat(dir, name, AtFlags::empty()) {
        Err(Errno::ISDIR) => {}
        r => return r,
    }
    if depth >= MAX_REMOVE_DEPTH {
        return Err(Errno::NAMETOOLONG);
    }
    let sub = open_dir(dir, name)?;
    let mut names = Vec::new();
    for entry in rustix::fs::Dir::read_from(&sub)? {
        let n = entry?.file_name().to_bytes().to_vec();
        if n != b"." && n != b".." {
            names.push(n);
        }
    }
    for n in names {
        remove_at(sub.as_fd(), OsStr::from_bytes(&n), depth + 1)?;
    }
    rustix::fs::unlinkat(dir, name, AtFlags::REMOVEDIR)
}
