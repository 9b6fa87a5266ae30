//! Writing as root in directories other users control, without being steered by them.
//!
//! The agent runs as root and writes into directories an unprivileged user may own: a login
//! account's `~/.ssh`, a managed file's directory (`/home/app/conf`), log and home directories
//! of an image being prepared. Whoever owns such a directory can plant, at any moment, a
//! symbolic link (`authorized_keys -> /etc/ld.so.preload`), a hard link to a root-owned file,
//! a FIFO (an `open` that never returns), or swap a directory for a link between a check and
//! the use. So, everywhere in this crate where that can happen:
//!
//! 1. **Directories are opened once, by descriptor, and never through a link someone else
//!    could have made.** [`open_dir`] walks the path one component at a time with
//!    `openat(O_DIRECTORY | O_NOFOLLOW)`. A symbolic link on the way is followed only when the
//!    directory holding it is owned by root and writable by nobody else (only root could have
//!    made it, like `/home -> /usr/home`); anywhere else it is an error. Under an image root
//!    ([`open_dir_beneath`]) absolute links and `..` stay inside the root, as if it were `/`.
//! 2. **Existing files in such a directory are never opened for writing** (a hard link's write
//!    lands in its target). Content is written to a new file made with
//!    `O_CREAT | O_EXCL | O_NOFOLLOW` (a planted name of any kind makes it fail, a random name
//!    makes it unguessable), owned and moded through its descriptor (`fchown`, `fchmod`), and
//!    renamed over the name inside the same directory descriptor ([`replace`]). A rename
//!    replaces the name; whatever the old name pointed to is untouched.
//! 3. **Files that are read or truncated are opened with `O_NOFOLLOW | O_NONBLOCK`** and checked
//!    with `fstat` on the opened descriptor: not a regular file, it is skipped (a FIFO cannot
//!    block the agent); more than one link, it is replaced by a new empty file instead of
//!    truncated ([`truncate`]).
//! 4. Removing is `unlinkat` in the directory's descriptor: it removes the name, never what a
//!    link points to.

use std::collections::VecDeque;
use std::ffi::{OsStr, OsString};
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path};

use rustix::fs::{AtFlags, FileType, Mode, OFlags};
use rustix::io::Errno;

/// How many symbolic links one walk may follow (as the kernel's `MAXSYMLINKS`).
const MAX_LINKS: usize = 40;

fn dir_flags() -> OFlags {
    OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC
}

/// Open the directory `path` (absolute) following the rules of the module docs.
pub fn open_dir(path: &Path) -> io::Result<OwnedFd> {
    let root = rustix::fs::open("/", dir_flags(), Mode::empty())?;
    walk(root.as_fd(), path, None)
}

/// [`open_dir`], making missing directories (root-owned, `mode`) on the way.
pub fn open_dir_creating(path: &Path, mode: u32) -> io::Result<OwnedFd> {
    let root = rustix::fs::open("/", dir_flags(), Mode::empty())?;
    walk(root.as_fd(), path, Some(mode))
}

/// Open `path` beneath `root`, as if `root` were `/`: neither `..` nor a link leads out.
pub fn open_dir_beneath(root: BorrowedFd<'_>, path: &Path) -> io::Result<OwnedFd> {
    walk(root, path, None)
}

/// The directory may hold a link only root could have made: root-owned, no group or other
/// write permission.
fn trusted(dir: BorrowedFd<'_>) -> io::Result<bool> {
    let st = rustix::fs::fstat(dir)?;
    Ok(st.st_uid == 0 && st.st_mode & 0o022 == 0)
}

fn walk(root: BorrowedFd<'_>, path: &Path, create: Option<u32>) -> io::Result<OwnedFd> {
    let mut stack: Vec<OwnedFd> = vec![rustix::io::dup(root)?];
    let mut pending: VecDeque<OsString> = names(path);
    let mut links = 0;
    while let Some(name) = pending.pop_front() {
        if name == ".." {
            if stack.len() > 1 {
                stack.pop();
            }
            continue;
        }
        let here = stack.last().expect("the root is never popped").as_fd();
        let opened = match rustix::fs::openat(here, name.as_os_str(), dir_flags(), Mode::empty()) {
            Err(Errno::NOENT) if create.is_some() => {
                let mode = Mode::from_raw_mode(create.unwrap_or(0o755));
                match rustix::fs::mkdirat(here, name.as_os_str(), mode) {
                    Ok(()) | Err(Errno::EXIST) => {}
                    Err(e) => return Err(e.into()),
                }
                rustix::fs::openat(here, name.as_os_str(), dir_flags(), Mode::empty())
            }
            other => other,
        };
        match opened {
            Ok(fd) => stack.push(fd),
            Err(Errno::NOENT) => return Err(io::Error::from(Errno::NOENT)),
            Err(e) => {
                let st = rustix::fs::statat(here, name.as_os_str(), AtFlags::SYMLINK_NOFOLLOW)?;
                match FileType::from_raw_mode(st.st_mode) {
                    FileType::Symlink => {}
                    FileType::Directory => return Err(e.into()),
                    _ => return Err(io::Error::from(Errno::NOTDIR)),
                }
                links += 1;
                if links > MAX_LINKS {
                    return Err(io::Error::from(Errno::LOOP));
                }
                if !trusted(here)? {
                    return Err(io::Error::other(format!(
                        "{} is a symbolic link in a directory another user can change; it is not followed",
                        Path::new(&name).display().to_string().escape_debug()
                    )));
                }
                let target = rustix::fs::readlinkat(here, name.as_os_str(), Vec::new())?;
                let target = Path::new(OsStr::from_bytes(target.as_bytes()));
                if target.is_absolute() {
                    stack.truncate(1);
                }
                for n in names(target).into_iter().rev() {
                    pending.push_front(n);
                }
            }
        }
    }
    Ok(stack.pop().expect("never empty"))
}

/// The names of a path's components, `..` kept, `/` and `.` dropped.
fn names(path: &Path) -> VecDeque<OsString> {
    path.components()
        .filter_map(|c| match c {
            Component::Normal(n) => Some(n.to_os_string()),
            Component::ParentDir => Some(OsString::from("..")),
            _ => None,
        })
        .collect()
}

/// What a name in `dir` is, without following it; `None` if there is nothing.
pub fn kind(dir: BorrowedFd<'_>, name: &OsStr) -> io::Result<Option<(FileType, rustix::fs::Stat)>> {
    match rustix::fs::statat(dir, name, AtFlags::SYMLINK_NOFOLLOW) {
        Ok(st) => Ok(Some((FileType::from_raw_mode(st.st_mode), st))),
        Err(Errno::NOENT) => Ok(None),
        Err(e) => Err(e.into()),
    }
}

/// Open the directory `name` in `dir`, no link followed; `None` if there is none.
pub fn open_subdir(dir: BorrowedFd<'_>, name: &OsStr) -> io::Result<Option<OwnedFd>> {
    match rustix::fs::openat(dir, name, dir_flags(), Mode::empty()) {
        Ok(fd) => Ok(Some(fd)),
        Err(Errno::NOENT) => Ok(None),
        Err(e) => Err(e.into()),
    }
}

/// Who owns a new file and its permissions.
#[derive(Debug, Clone, Copy)]
pub struct Owner {
    pub uid: u32,
    pub gid: u32,
    pub mode: u32,
}

/// A new, unguessable name for a file being written next to `name`.
fn temp_name(name: &OsStr) -> OsString {
    let mut r = [0u8; 8];
    let _ = getrandom::fill(&mut r);
    let mut t = OsString::from(".");
    t.push(name);
    t.push(format!(".stratus-{}", hex::encode(r)));
    t
}

/// A new file written next to `name` in `dir` (rule 2 of the module docs), not yet in place:
/// [`Candidate::commit`] renames it over the name; dropped uncommitted, it is removed.
#[derive(Debug)]
pub struct Candidate<'a> {
    dir: BorrowedFd<'a>,
    tmp: OsString,
    name: OsString,
    done: bool,
}

impl<'a> Candidate<'a> {
    /// Create, write, own, mode and sync the new file.
    pub fn create(dir: BorrowedFd<'a>, name: &OsStr, content: &[u8], owner: Owner) -> Result<Self, String> {
        let tmp = temp_name(name);
        let flags = OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC;
        let fd = rustix::fs::openat(dir, tmp.as_os_str(), flags, Mode::from_raw_mode(0o600))
            .map_err(|e| format!("cannot create a new file: {}", io::Error::from(e)))?;
        let c = Candidate {
            dir,
            tmp,
            name: name.to_os_string(),
            done: false,
        };
        let mut f = std::fs::File::from(fd);
        f.write_all(content)
            .and_then(|()| Ok(rustix::fs::fchown(&f, Some(uid(owner.uid)), Some(gid(owner.gid)))?))
            .and_then(|()| Ok(rustix::fs::fchmod(&f, Mode::from_raw_mode(owner.mode))?))
            .and_then(|()| f.sync_all())
            .map_err(|e| format!("cannot write the new file: {e}"))?;
        Ok(c)
    }

    /// The new file's own (temporary) name in the directory.
    pub fn temp_name(&self) -> &OsStr {
        &self.tmp
    }

    /// Rename it over the name (atomic: a reader sees the old file or the new one).
    pub fn commit(mut self) -> Result<(), String> {
        rustix::fs::renameat(self.dir, self.tmp.as_os_str(), self.dir, self.name.as_os_str())
            .map_err(|e| format!("cannot move the new file into place: {}", io::Error::from(e)))?;
        self.done = true;
        let _ = rustix::fs::fsync(self.dir);
        Ok(())
    }
}

impl Drop for Candidate<'_> {
    fn drop(&mut self) {
        if !self.done {
            let _ = rustix::fs::unlinkat(self.dir, self.tmp.as_os_str(), AtFlags::empty());
        }
    }
}

/// Make `name` in `dir` hold `content`: a [`Candidate`] committed at once.
pub fn replace(dir: BorrowedFd<'_>, name: &OsStr, content: &[u8], owner: Owner) -> Result<(), String> {
    Candidate::create(dir, name, content, owner)?.commit()
}

fn uid(n: u32) -> rustix::fs::Uid {
    rustix::fs::Uid::from_raw(n)
}

fn gid(n: u32) -> rustix::fs::Gid {
    rustix::fs::Gid::from_raw(n)
}

/// Remove the name `name` from `dir` unless it is a directory; true if it was there.
pub fn remove(dir: BorrowedFd<'_>, name: &OsStr) -> io::Result<bool> {
    match kind(dir, name)? {
        None | Some((FileType::Directory, _)) => Ok(false),
        Some(_) => match rustix::fs::unlinkat(dir, name, AtFlags::empty()) {
            Ok(()) => Ok(true),
            Err(Errno::NOENT) => Ok(false),
            Err(e) => Err(e.into()),
        },
    }
}

/// Open a regular file of `dir` for reading (rule 3): `None` when `name` is anything else
/// (missing, a link, a FIFO, a device, a directory).
pub fn open_regular(dir: BorrowedFd<'_>, name: &OsStr) -> io::Result<Option<std::fs::File>> {
    let flags = OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::NOCTTY | OFlags::CLOEXEC;
    let fd = match rustix::fs::openat(dir, name, flags, Mode::empty()) {
        Ok(fd) => fd,
        Err(Errno::NOENT | Errno::LOOP | Errno::NXIO) => return Ok(None),
        Err(e) => return Err(e.into()),
    };
    let st = rustix::fs::fstat(&fd)?;
    if FileType::from_raw_mode(st.st_mode) != FileType::RegularFile {
        return Ok(None);
    }
    Ok(Some(std::fs::File::from(fd)))
}

/// Read a regular file of `dir` (rule 3), at most `limit` bytes; `None` if it is not one.
pub fn read_regular(dir: BorrowedFd<'_>, name: &OsStr, limit: u64) -> io::Result<Option<Vec<u8>>> {
    let Some(f) = open_regular(dir, name)? else {
        return Ok(None);
    };
    let mut buf = vec![];
    f.take(limit).read_to_end(&mut buf)?;
    Ok(Some(buf))
}

/// Empty the regular file `name` of `dir` (rule 3): truncated through a descriptor opened
/// without following a link or blocking; a file with other hard links is replaced by a new
/// empty one with its owner and mode instead (the other names keep their content). True if a
/// non-empty file was emptied.
pub fn truncate(dir: BorrowedFd<'_>, name: &OsStr) -> Result<bool, String> {
    let err = |e: io::Error| e.to_string();
    let Some((FileType::RegularFile, _)) = kind(dir, name).map_err(err)? else {
        return Ok(false);
    };
    let flags = OFlags::WRONLY | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::NOCTTY | OFlags::CLOEXEC;
    let fd = match rustix::fs::openat(dir, name, flags, Mode::empty()) {
        Ok(fd) => fd,
        Err(Errno::NOENT | Errno::LOOP | Errno::NXIO) => return Ok(false),
        Err(e) => return Err(err(e.into())),
    };
    let st = rustix::fs::fstat(&fd).map_err(|e| err(e.into()))?;
    if FileType::from_raw_mode(st.st_mode) != FileType::RegularFile || st.st_size == 0 {
        return Ok(false);
    }
    if st.st_nlink > 1 {
        let owner = Owner {
            uid: st.st_uid,
            gid: st.st_gid,
            mode: st.st_mode & 0o7777,
        };
        replace(dir, name, b"", owner)?;
        return Ok(true);
    }
    rustix::fs::ftruncate(&fd, 0).map_err(|e| err(e.into()))?;
    Ok(true)
}

/// The names in a directory (not `.` and `..`).
pub fn list(dir: BorrowedFd<'_>) -> io::Result<Vec<OsString>> {
    let mut d = rustix::fs::Dir::read_from(dir)?;
    let mut out = vec![];
    while let Some(e) = d.read() {
        let e = e?;
        let n = e.file_name().to_bytes();
        if n != b"." && n != b".." {
            out.push(OsStr::from_bytes(n).to_os_string());
        }
    }
    Ok(out)
}

/// Remove `name` from `dir`, a directory with everything in it, nothing outside `dir` touched
/// (Rust's `remove_dir_all` opens each level with `O_NOFOLLOW` and removes links as names;
/// it is reached through this process's descriptor of `dir`, so no path is resolved again).
/// True if something was there.
pub fn remove_all(dir: BorrowedFd<'_>, name: &OsStr) -> Result<bool, String> {
    match kind(dir, name).map_err(|e| e.to_string())? {
        None => Ok(false),
        Some((FileType::Directory, _)) => {
            use std::os::fd::AsRawFd;
            let path = Path::new("/proc/self/fd").join(dir.as_raw_fd().to_string()).join(name);
            std::fs::remove_dir_all(&path).map(|()| true).map_err(|e| e.to_string())
        }
        Some(_) => remove(dir, name).map_err(|e| e.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::{PermissionsExt, symlink};

    fn inode(fd: &OwnedFd) -> u64 {
        rustix::fs::fstat(fd).expect("fstat").st_ino
    }

    fn ino(p: &Path) -> u64 {
        use std::os::unix::fs::MetadataExt;
        std::fs::metadata(p).expect("metadata").ino()
    }

    /// Links only root could have made are followed; beneath a root, absolute links and `..`
    /// stay inside; a link in a directory others can write to, or a loop, is refused.
    #[test]
    fn walks_follow_only_links_root_made_and_stay_beneath_the_root() {
        let t = tempfile::tempdir().expect("tmp");
        let r = t.path();
        std::fs::create_dir_all(r.join("usr/home/alice")).expect("mkdir");
        std::fs::create_dir_all(r.join("open")).expect("mkdir");
        std::fs::set_permissions(r.join("open"), std::fs::Permissions::from_mode(0o1777)).expect("chmod");
        symlink("usr/home", r.join("home")).expect("ln");
        symlink("/usr/home", r.join("abs")).expect("ln");
        symlink("../../../../../../..", r.join("up")).expect("ln");
        symlink(r.join("usr"), r.join("open/link")).expect("ln");
        symlink("loop", r.join("loop")).expect("ln");
        let root = rustix::fs::open(r, dir_flags(), Mode::empty()).expect("root");
        let at = |p: &str| open_dir_beneath(root.as_fd(), Path::new(p));
        assert_eq!(
            inode(&at("home/alice").expect("relative link")),
            ino(&r.join("usr/home/alice"))
        );
        assert_eq!(
            inode(&at("abs/alice").expect("absolute link")),
            ino(&r.join("usr/home/alice"))
        );
        assert_eq!(inode(&at("up").expect("clamped")), ino(r), "`..` stops at the root");
        assert_eq!(inode(&at("/../../usr").expect("clamped")), ino(&r.join("usr")));
        let e = at("open/link").expect_err("a link in a world-writable directory");
        assert!(e.to_string().contains("symbolic link"), "{e}");
        assert!(at("loop").is_err(), "a loop ends");
        assert!(at("missing").is_err());
        // Whole paths from `/` too, making what is missing.
        let made = r.join("usr/home/alice/new/deeper");
        let fd = open_dir_creating(&made, 0o755).expect("made");
        assert_eq!(inode(&fd), ino(&made));
    }
}
