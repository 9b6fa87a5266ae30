//! File-system helpers of the image store: temporary build directories, careful removal,
//! apparent size, atomic writes, finding host programs.

use std::collections::HashSet;
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use super::ImageError;

/// Prefix of the store's temporary directories (builds in progress, removals in progress).
pub(super) const TMP_PREFIX: &str = ".tmp-";

pub(super) fn io_err(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> ImageError {
    let context = context.into();
    move |source| ImageError::Io { context, source }
}

/// A `.tmp-<random>` directory in the store, removed when dropped unless [`TmpDir::keep`] is
/// called (so a failed or cancelled build leaves nothing behind).
#[derive(Debug)]
pub(super) struct TmpDir {
    path: Option<PathBuf>,
}

impl TmpDir {
    pub(super) fn create(store: &Path) -> Result<Self, ImageError> {
        let path = store.join(format!("{TMP_PREFIX}{}", random_hex()?));
        std::fs::DirBuilder::new()
            .mode(0o700)
            .create(&path)
            .map_err(io_err(format!("cannot create {}", path.display())))?;
        Ok(TmpDir { path: Some(path) })
    }

    pub(super) fn path(&self) -> &Path {
        self.path.as_deref().expect("TmpDir used after keep/remove")
    }

    /// Removes the directory now (on a blocking thread) and waits for it.
    pub(super) async fn remove(mut self) {
        if let Some(path) = self.path.take() {
            let _ = tokio::task::spawn_blocking(move || remove_tree(&path)).await;
        }
    }

    /// The caller takes over the directory (it has been renamed into place).
    pub(super) fn keep(mut self) {
        self.path = None;
    }
}

impl Drop for TmpDir {
    fn drop(&mut self) {
        let Some(path) = self.path.take() else { return };
        match tokio::runtime::Handle::try_current() {
            Ok(rt) => drop(rt.spawn_blocking(move || remove_tree(&path))),
            Err(_) => remove_tree(&path),
        }
    }
}

/// 16 random hex digits.
pub(super) fn random_hex() -> Result<String, ImageError> {
    let mut bytes = [0u8; 8];
    getrandom::fill(&mut bytes).map_err(|e| ImageError::Io {
        context: "cannot get random bytes for a temporary directory name".into(),
        source: std::io::Error::other(e.to_string()),
    })?;
    Ok(hex::encode(bytes))
}

/// Removes `path` and everything below it, best effort, after lazily unmounting anything still
/// mounted below it (an interrupted debootstrap can leave `proc` or `sys` mounted in its
/// target; deleting through such a mount must never happen).
pub(super) fn remove_tree(path: &Path) {
    for mount_point in mounts_below(path) {
        let status = std::process::Command::new("umount")
            .arg("-l")
            .arg(&mount_point)
            .status();
        if !matches!(status, Ok(s) if s.success()) {
            tracing::warn!(mount_point = %mount_point.display(), "cannot unmount; leaving the directory in place");
            return;
        }
    }
    if let Err(error) = std::fs::remove_dir_all(path)
        && error.kind() != std::io::ErrorKind::NotFound
    {
        tracing::warn!(path = %path.display(), %error, "cannot remove temporary image directory");
    }
}

/// Mount points at or below `path`, deepest first, from /proc/self/mountinfo.
fn mounts_below(path: &Path) -> Vec<PathBuf> {
    let Ok(info) = std::fs::read_to_string("/proc/self/mountinfo") else {
        return Vec::new();
    };
    let mut found: Vec<PathBuf> = info
        .lines()
        .filter_map(|line| line.split(' ').nth(4))
        .map(|escaped| PathBuf::from(unescape_mountinfo(escaped)))
        .filter(|mount_point| mount_point.starts_with(path))
        .collect();
    found.sort_by_key(|p| std::cmp::Reverse(p.as_os_str().len()));
    found
}

/// mountinfo writes space, tab, newline and backslash as `\ooo` octal escapes.
fn unescape_mountinfo(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(i) = rest.find('\\') {
        out.push_str(&rest[..i]);
        let code = rest.get(i + 1..i + 4).and_then(|o| u8::from_str_radix(o, 8).ok());
        match code {
            Some(byte) => {
                out.push(char::from(byte));
                rest = &rest[i + 4..];
            }
            None => {
                out.push('\\');
                rest = &rest[i + 1..];
            }
        }
    }
    out.push_str(rest);
    out
}

/// Apparent size of a tree, like `du -sb`: every entry's length counted once (hard links once),
/// symbolic links not followed.
pub(super) fn tree_size(root: &Path) -> Result<u64, ImageError> {
    let mut total = 0;
    let mut seen = HashSet::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(path) = stack.pop() {
        let meta = std::fs::symlink_metadata(&path).map_err(io_err(format!("cannot stat {}", path.display())))?;
        if meta.nlink() > 1 && !meta.is_dir() && !seen.insert((meta.dev(), meta.ino())) {
            continue;
        }
        total += meta.len();
        if meta.is_dir() {
            let entries = std::fs::read_dir(&path).map_err(io_err(format!("cannot read {}", path.display())))?;
            for entry in entries {
                stack.push(entry.map_err(io_err(format!("cannot read {}", path.display())))?.path());
            }
        }
    }
    Ok(total)
}

/// Writes `path` through `path.tmp` + fsync + rename, so readers see the old or the new file.
/// Neither name is followed if it is a symbolic link (an imported tree may hold hostile ones).
pub(super) fn write_atomic(path: &Path, contents: &[u8], mode: u32) -> Result<(), ImageError> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    let write = || -> std::io::Result<()> {
        match std::fs::remove_file(&tmp) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
            _ => {}
        }
        let mut file = std::fs::OpenOptions::new().write(true).create_new(true).open(&tmp)?;
        file.set_permissions(std::fs::Permissions::from_mode(mode))?;
        file.write_all(contents)?;
        file.sync_all()?;
        std::fs::rename(&tmp, path)
    };
    write().map_err(io_err(format!("cannot write {}", path.display())))
}

/// `rootfs/rel` after checking that every component of `rel` is a real directory, creating
/// missing ones when `create` (else `None` when one is missing). A symbolic link on the way is an
/// error: outside a chroot it would resolve against the host's root, and we run as root.
pub(super) fn dir_in_tree(rootfs: &Path, rel: &str, create: bool) -> Result<Option<PathBuf>, ImageError> {
    let mut path = rootfs.to_path_buf();
    for component in rel.split('/') {
        path.push(component);
        match std::fs::symlink_metadata(&path) {
            Ok(meta) if meta.is_dir() => {}
            Ok(_) => return Err(ImageError::UnsafeTree { path: rel.to_owned() }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && create => {
                std::fs::DirBuilder::new()
                    .mode(0o755)
                    .create(&path)
                    .map_err(io_err(format!("cannot create {}", path.display())))?;
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(io_err(format!("cannot stat {}", path.display()))(e)),
        }
    }
    Ok(Some(path))
}

/// Finds an executable in `PATH`, then in the sbin directories (a non-login root shell may not
/// have them in `PATH`, and debootstrap lives in /usr/sbin).
pub(super) fn find_program(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/local/sbin", "/usr/sbin", "/sbin", "/usr/bin", "/bin"].map(PathBuf::from))
        .map(|dir| dir.join(name))
        .find(|candidate| {
            std::fs::metadata(candidate).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        })
}
