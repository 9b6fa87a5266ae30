//! Running the host tools the driver builds on (`ip`, `nft`, `nsenter`, `unshare`).
//!
//! The driver shells out rather than speaking netlink itself: these tools are on every Debian
//! machine, their behaviour is what administrators already know (`ip netns list` shows our
//! instances), and failures come with the tool's own message, which we pass on.

use std::ffi::OsStr;
use std::process::Stdio;

use tokio::io::AsyncWriteExt;
use tokio::process::Command;

/// A host command that failed; `stderr` is what it printed (already trimmed).
#[derive(Debug, thiserror::Error)]
#[error("`{command}` failed: {stderr}")]
pub struct CommandError {
    pub command: String,
    pub stderr: String,
}

fn describe(program: &str, args: &[&OsStr]) -> String {
    let mut s = program.to_string();
    for a in args.iter().take(8) {
        s.push(' ');
        s.push_str(&a.to_string_lossy());
    }
    if args.len() > 8 {
        s.push_str(" ...");
    }
    s
}

/// Run `program args...`, feeding `stdin` if given; Ok(stdout) on exit status 0.
pub async fn run<S: AsRef<OsStr>>(program: &str, args: &[S], stdin: Option<&str>) -> Result<String, CommandError> {
    let args: Vec<&OsStr> = args.iter().map(AsRef::as_ref).collect();
    let command = describe(program, &args);
    let mut child = Command::new(program)
        .args(&args)
        .stdin(if stdin.is_some() { Stdio::piped() } else { Stdio::null() })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| CommandError {
            command: command.clone(),
            stderr: if e.kind() == std::io::ErrorKind::NotFound {
                format!("{program} is not installed (see the README's set-up command)")
            } else {
                e.to_string()
            },
        })?;
    if let (Some(input), Some(mut pipe)) = (stdin, child.stdin.take()) {
        // A tool that exits early closes the pipe; its stderr then says why.
        let _ = pipe.write_all(input.as_bytes()).await;
    }
    let out = child.wait_with_output().await.map_err(|e| CommandError {
        command: command.clone(),
        stderr: e.to_string(),
    })?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        let mut stderr = String::from_utf8_lossy(&out.stderr).trim().to_string();
        if stderr.is_empty() {
            stderr = format!("exited with {}", out.status);
        }
        stderr.truncate(2000);
        Err(CommandError { command, stderr })
    }
}
