//! Importing a root file system tarball: format detection, hashing, extraction, checks.

use std::io::Read;
use std::path::Path;

use sha2::{Digest, Sha256};
use tokio::process::Command;

use super::ImageError;
use super::build::run_streaming;
use super::fsutil::{find_program, io_err};

/// A tarball's compression, detected from its first bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Compression {
    None,
    Gzip,
    Zstd,
}

/// What the start of the file says it is, and its SHA-256.
pub(super) fn inspect(tarball: &Path) -> Result<(Compression, String), ImageError> {
    let problem = |problem: &str| ImageError::Import {
        file: tarball.to_path_buf(),
        problem: problem.to_owned(),
    };
    let mut file = std::fs::File::open(tarball).map_err(io_err(format!("cannot open {}", tarball.display())))?;
    let mut head = [0u8; 512];
    let mut len = 0;
    while len < head.len() {
        match file
            .read(&mut head[len..])
            .map_err(io_err(format!("cannot read {}", tarball.display())))?
        {
            0 => break,
            n => len += n,
        }
    }
    let head = &head[..len];
    let compression = if head.starts_with(&[0x1f, 0x8b]) {
        Compression::Gzip
    } else if head.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
        Compression::Zstd
    } else if len == 0 {
        return Err(problem("the file is empty"));
    } else if len == 512 && (head[257..262] == *b"ustar" || head.iter().all(|b| *b == 0)) {
        // "ustar" magic, or the zero block that ends (and alone makes up) an empty archive.
        Compression::None
    } else {
        return Err(problem(
            "not a tar archive (supported: .tar, .tar.gz/.tgz, .tar.zst; detected by content)",
        ));
    };
    Ok((compression, sha256_file(tarball)?))
}

fn sha256_file(path: &Path) -> Result<String, ImageError> {
    let mut file = std::fs::File::open(path).map_err(io_err(format!("cannot open {}", path.display())))?;
    let mut hasher = Sha256::new();
    std::io::copy(&mut file, &mut hasher).map_err(io_err(format!("cannot read {}", path.display())))?;
    Ok(hex::encode(hasher.finalize()))
}

/// `tar --numeric-owner -xpf TARBALL -C ROOTFS` (plus `-z`/`--zstd`). GNU tar refuses members
/// with `..`, strips a leading `/` and defers symbolic links that could redirect later members.
/// Of extended attributes only file capabilities are restored (never `trusted.overlay.*`,
/// which would change how overlayfs reads the lower layer).
pub(super) async fn extract(
    tarball: &Path,
    compression: Compression,
    rootfs: &Path,
    progress: &(dyn Fn(&str) + Send + Sync),
) -> Result<(), ImageError> {
    let tar = find_program("tar").ok_or(ImageError::MissingTool {
        program: "tar",
        package: "tar",
    })?;
    if compression == Compression::Zstd && find_program("zstd").is_none() {
        return Err(ImageError::MissingTool {
            program: "zstd",
            package: "zstd",
        });
    }
    let mut cmd = Command::new(tar);
    cmd.args([
        "--numeric-owner",
        "--xattrs",
        "--xattrs-include=security.capability",
        "-xp",
    ]);
    match compression {
        Compression::None => {}
        Compression::Gzip => drop(cmd.arg("-z")),
        Compression::Zstd => drop(cmd.arg("--zstd")),
    }
    cmd.arg("-f").arg(tarball).arg("-C").arg(rootfs).env("LC_ALL", "C");
    run_streaming("tar", &mut cmd, progress).await.map_err(|e| match e {
        ImageError::BuildFailed { output_tail, .. } => ImageError::Import {
            file: tarball.to_path_buf(),
            problem: format!("tar could not extract it:\n{output_tail}"),
        },
        other => other,
    })
}

/// An extracted tree is a root file system if it has a real `etc` directory and `usr/bin` or
/// `bin` at its top.
pub(super) fn check_root_fs(tarball: &Path, rootfs: &Path) -> Result<(), ImageError> {
    let is_dir = |rel: &str| std::fs::symlink_metadata(rootfs.join(rel)).is_ok_and(|m| m.is_dir());
    let bin_link = std::fs::symlink_metadata(rootfs.join("bin")).is_ok_and(|m| m.file_type().is_symlink());
    if is_dir("etc") && (is_dir("usr/bin") || is_dir("bin") || bin_link) {
        return Ok(());
    }
    Err(ImageError::Import {
        file: tarball.to_path_buf(),
        problem: "it does not hold a root file system: there is no etc/ with bin/ or usr/bin/ at the top of the \
                  archive (make one with: tar -C ROOTFS --numeric-owner -cf FILE .)"
            .to_owned(),
    })
}
