//! Running debootstrap and turning its tree into an image (post-processing).

use std::collections::VecDeque;
use std::path::Path;
use std::process::Stdio;

use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};
use tokio::process::Command;

use super::fsutil::{dir_in_tree, find_program, io_err, write_atomic};
use super::{BuildSpec, ImageError};

/// Where the instance init looks for its boot hooks (run in name order at every boot).
pub const BOOT_D: &str = "etc/stratus/boot.d";
/// The hook (in [`BOOT_D`]) that gives each instance its own SSH host keys.
pub const SSH_HOST_KEYS_HOOK_NAME: &str = "10-ssh-host-keys";

const SSH_HOST_KEYS_SCRIPT: &str = "#!/bin/sh
# Installed by Stratus: the image ships without SSH host keys so that every instance gets its
# own. ssh-keygen -A creates the missing ones; sshd also needs its privilege-separation dir.
set -e
ssh-keygen -A
mkdir -p -m 0755 /run/sshd
";

/// Packages that install daemons call invoke-rc.d, which asks this script first; 101 means
/// "do not start anything". The instance init is not systemd and boot scripts start services
/// themselves (the convention of Debian container images).
const POLICY_RC_D: &str = "#!/bin/sh
# Installed by Stratus: package installs never start services; boot scripts do.
exit 101
";

/// Lines of a failing command's output kept for the error message.
const TAIL_LINES: usize = 20;

/// `debootstrap --variant=V [--include=a,b] SUITE TARGET MIRROR`, output streamed to `progress`.
pub(super) async fn debootstrap(
    spec: &BuildSpec,
    target: &Path,
    progress: &(dyn Fn(&str) + Send + Sync),
) -> Result<(), ImageError> {
    let program = find_program("debootstrap").ok_or(ImageError::MissingTool {
        program: "debootstrap",
        package: "debootstrap",
    })?;
    let mut cmd = Command::new(program);
    cmd.arg(format!("--variant={}", spec.variant));
    let packages = spec.normalized_packages();
    if !packages.is_empty() {
        cmd.arg(format!("--include={}", packages.join(",")));
    }
    cmd.arg(&spec.suite).arg(target).arg(&spec.mirror).env("LC_ALL", "C");
    run_streaming("debootstrap", &mut cmd, progress).await
}

/// Makes a freshly debootstrapped tree into an image: see the module docs of `image`.
pub(super) async fn post_process(rootfs: &Path, progress: &(dyn Fn(&str) + Send + Sync)) -> Result<(), ImageError> {
    progress("cleaning: apt-get clean");
    let chroot = find_program("chroot").ok_or(ImageError::MissingTool {
        program: "chroot",
        package: "coreutils",
    })?;
    let mut cmd = Command::new(chroot);
    cmd.arg(rootfs).args(["apt-get", "clean"]);
    cmd.env_clear()
        .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
        .env("LC_ALL", "C");
    run_streaming("apt-get clean", &mut cmd, progress).await?;
    progress("cleaning: removing /var/lib/apt/lists");
    progress("generalizing: SSH host keys, machine-id, hostname, policy-rc.d, boot.d");
    let rootfs = rootfs.to_path_buf();
    tokio::task::spawn_blocking(move || {
        if let Some(lists) = dir_in_tree(&rootfs, "var/lib/apt/lists", false)? {
            remove_children(&lists)?;
            dir_in_tree(&rootfs, "var/lib/apt/lists/partial", true)?;
        }
        let sbin = dir_in_tree(&rootfs, "usr/sbin", true)?.expect("created");
        write_atomic(&sbin.join("policy-rc.d"), POLICY_RC_D.as_bytes(), 0o755)?;
        generalize(&rootfs)
    })
    .await
    .map_err(|e| io_err("post-processing task failed")(std::io::Error::other(e)))?
}

/// Removes what ties a tree to one machine, for built and imported images alike: SSH host keys
/// (replaced by a boot hook when sshd is present), machine-id and hostname contents. Ensures
/// the boot hook directory exists. Never follows a symbolic link of the tree. Blocking.
pub(super) fn generalize(rootfs: &Path) -> Result<(), ImageError> {
    let boot_d = dir_in_tree(rootfs, BOOT_D, true)?.expect("created");
    if let Some(ssh_dir) = dir_in_tree(rootfs, "etc/ssh", false)? {
        let entries = std::fs::read_dir(&ssh_dir).map_err(io_err("cannot read etc/ssh"))?;
        for entry in entries {
            let path = entry.map_err(io_err("cannot read etc/ssh"))?.path();
            if path
                .file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("ssh_host_"))
            {
                std::fs::remove_file(&path).map_err(io_err(format!("cannot remove {}", path.display())))?;
            }
        }
    }
    let sbin = dir_in_tree(rootfs, "usr/sbin", false)?;
    if sbin.is_some_and(|sbin| std::fs::symlink_metadata(sbin.join("sshd")).is_ok()) {
        write_atomic(
            &boot_d.join(SSH_HOST_KEYS_HOOK_NAME),
            SSH_HOST_KEYS_SCRIPT.as_bytes(),
            0o755,
        )?;
    }
    let etc = dir_in_tree(rootfs, "etc", true)?.expect("created");
    write_atomic(&etc.join("machine-id"), b"", 0o444)?;
    write_atomic(&etc.join("hostname"), b"", 0o644)?;
    if let Some(dbus) = dir_in_tree(rootfs, "var/lib/dbus", false)? {
        let id = dbus.join("machine-id");
        if std::fs::symlink_metadata(&id).is_ok_and(|m| m.is_file()) {
            std::fs::remove_file(&id).map_err(io_err("cannot remove var/lib/dbus/machine-id"))?;
        }
    }
    Ok(())
}

fn remove_children(dir: &Path) -> Result<(), ImageError> {
    let entries = std::fs::read_dir(dir).map_err(io_err(format!("cannot read {}", dir.display())))?;
    for entry in entries {
        let path = entry.map_err(io_err(format!("cannot read {}", dir.display())))?.path();
        let meta = std::fs::symlink_metadata(&path).map_err(io_err(format!("cannot stat {}", path.display())))?;
        let removed = if meta.is_dir() {
            std::fs::remove_dir_all(&path)
        } else {
            std::fs::remove_file(&path)
        };
        removed.map_err(io_err(format!("cannot remove {}", path.display())))?;
    }
    Ok(())
}

/// Runs `cmd`, passing every output line (stdout and stderr) to `progress` as `"STEP: line"`;
/// a non-zero exit becomes [`ImageError::BuildFailed`] with the last lines of output. The
/// command runs in its own process group, killed as a whole if the future is dropped (a
/// cancelled build must not leave dpkg writing into a directory being deleted).
pub(super) async fn run_streaming(
    step: &str,
    cmd: &mut Command,
    progress: &(dyn Fn(&str) + Send + Sync),
) -> Result<(), ImageError> {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(true);
    let mut child = cmd.spawn().map_err(io_err(format!("cannot start {step}")))?;
    let mut group = KillGroupOnDrop(child.id());
    let mut out = lines(child.stdout.take().expect("stdout is piped"));
    let mut err = lines(child.stderr.take().expect("stderr is piped"));
    let mut tail = VecDeque::with_capacity(TAIL_LINES);
    let (mut out_open, mut err_open) = (true, true);
    while out_open || err_open {
        let (line, open) = tokio::select! {
            line = out.next_segment(), if out_open => (line, &mut out_open),
            line = err.next_segment(), if err_open => (line, &mut err_open),
        };
        let Ok(Some(line)) = line else {
            *open = false;
            continue;
        };
        let line = String::from_utf8_lossy(&line).trim_end().to_owned();
        progress(&format!("{step}: {line}"));
        if tail.len() == TAIL_LINES {
            tail.pop_front();
        }
        tail.push_back(line);
    }
    let status = child.wait().await.map_err(io_err(format!("cannot wait for {step}")))?;
    group.0 = None;
    if status.success() {
        return Ok(());
    }
    Err(ImageError::BuildFailed {
        step: step.to_owned(),
        status: status.to_string(),
        output_tail: Vec::from(tail).join("\n"),
    })
}

/// Holds the process group id of a running command; dropping it kills the whole group.
#[derive(Debug)]
struct KillGroupOnDrop(Option<u32>);

impl Drop for KillGroupOnDrop {
    fn drop(&mut self) {
        if let Some(pgid) = self.0 {
            let _ = std::process::Command::new("kill")
                .args(["-KILL", "--", &format!("-{pgid}")])
                .status();
        }
    }
}

fn lines<R: AsyncRead + Unpin>(reader: R) -> tokio::io::Split<BufReader<R>> {
    BufReader::new(reader).split(b'\n')
}
