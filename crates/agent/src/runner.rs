//! Running one script: a private file, its inputs as the environment, output read as it is
//! produced, masked, and handed on in chunks.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Stdio;

use stratus_agent_proto::{EnvValue, LossyUtf8, Masker, OutputStream, ScriptRun};
use tokio::io::AsyncReadExt;
use tokio::process::Command;
use tokio::sync::mpsc;

/// A piece of output, already masked.
#[derive(Debug)]
pub struct Chunk {
    pub stream: OutputStream,
    pub data: String,
}

/// How the run ended.
#[derive(Debug)]
pub struct Ended {
    pub exit_code: Option<i32>,
    pub signal: Option<i32>,
    pub error: Option<String>,
    /// Killed because it ran past its timeout.
    pub timed_out: bool,
    /// Stopped because the control plane cancelled it.
    pub cancelled: bool,
}

/// How long a cancelled script gets between SIGTERM and SIGKILL.
pub const CANCEL_GRACE: std::time::Duration = std::time::Duration::from_secs(10);

/// What the caller passes besides the script: where its process id goes once it runs, the
/// cancel signal, and environment the agent adds (its socket, the server id).
#[derive(Debug)]
pub struct Control {
    pub started: Option<tokio::sync::oneshot::Sender<u32>>,
    pub cancel: tokio::sync::watch::Receiver<bool>,
    pub env: Vec<(String, String)>,
}

/// Run `run` in `work` (a private directory), sending output chunks to `out` as they come.
pub async fn run(run: &ScriptRun, work: &Path, out: mpsc::Sender<Chunk>, mut ctl: Control) -> Ended {
    let file = work.join(format!("{}.script", run.run));
    let failed = |e: String| Ended {
        exit_code: None,
        signal: None,
        error: Some(e),
        timed_out: false,
        cancelled: false,
    };
    if let Err(e) = std::fs::write(&file, &run.body)
        .and_then(|()| std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o700)))
    {
        return failed(format!("cannot write the script: {e}"));
    }
    let mut cmd = Command::new(&file);
    cmd.env_clear()
        .env("PATH", "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin")
        .env("HOME", "/root")
        .env("LANG", "C.UTF-8")
        .env("STRATUS_RUN_ID", run.run.to_string())
        .envs(ctl.env.iter().map(|(k, v)| (k, v)))
        .current_dir(work)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        // Its own process group, so a timeout kills everything it started.
        .process_group(0)
        .kill_on_drop(true);
    for v in &run.env {
        match &v.value {
            EnvValue::Text(t) => cmd.env(&v.name, t),
            EnvValue::Secret(s) => cmd.env(&v.name, s.expose()),
            EnvValue::Instance(var) => cmd.env(&v.name, std::env::var(var).unwrap_or_default()),
            // Fetched before the run by the caller, whose `Control::env` holds the path.
            EnvValue::Artifact(_) => continue,
        };
    }
    // No shebang, no run: scripts say what interprets them (like cloud-init's user scripts).
    let mut child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) => return failed(format!("cannot start the script (does it start with #!?): {e}")),
    };
    if let (Some(tx), Some(pid)) = (ctl.started.take(), child.id()) {
        let _ = tx.send(pid);
    }
    let masker = Masker::for_run(run);
    let (o, e) = (child.stdout.take(), child.stderr.take());
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let a = tokio::spawn(pump(
        o,
        OutputStream::Stdout,
        Masker::clone(&masker),
        out.clone(),
        stopped.clone(),
    ));
    let b = tokio::spawn(pump(e, OutputStream::Stderr, masker, out, stopped));
    // No limit unless the run has one; past it the script's group is killed (SIGKILL). A
    // cancel sends SIGTERM to the group, then SIGKILL after a grace period.
    let group = child.id().and_then(|p| rustix::process::Pid::from_raw(p as i32));
    let signal_group = |sig| {
        if let Some(pid) = group {
            let _ = rustix::process::kill_process_group(pid, sig);
        }
    };
    let (mut timed_out, mut cancelled) = (false, false);
    let limit = async {
        match run.timeout_secs {
            Some(secs) => tokio::time::sleep(std::time::Duration::from_secs(secs)).await,
            None => std::future::pending().await,
        }
    };
    let status = tokio::select! {
        s = child.wait() => s,
        () = limit => {
            timed_out = true;
            signal_group(rustix::process::Signal::KILL);
            let _ = child.start_kill();
            child.wait().await
        }
        () = async { let _ = ctl.cancel.wait_for(|c| *c).await; } => {
            cancelled = true;
            signal_group(rustix::process::Signal::TERM);
            match tokio::time::timeout(CANCEL_GRACE, child.wait()).await {
                Ok(s) => {
                    // The leader is gone; whatever it started goes too.
                    signal_group(rustix::process::Signal::KILL);
                    s
                }
                Err(_) => {
                    signal_group(rustix::process::Signal::KILL);
                    let _ = child.start_kill();
                    child.wait().await
                }
            }
        }
    };
    // The script is done. What it left running in the background (a daemon started without
    // redirecting its output) may hold the pipes open: give the output a moment to drain,
    // then stop forwarding; the pumps keep reading (and dropping) so such a process never
    // dies of a broken pipe.
    let drained = tokio::time::timeout(std::time::Duration::from_millis(500), async {
        let _ = a.await;
        let _ = b.await;
    });
    let _ = drained.await;
    // Either both pumps are done, or something holds a pipe: stop forwarding (the pumps then
    // end, which ends the output stream; their pipes are drained in the background).
    let _ = stop.send(true);
    let _ = std::fs::remove_file(&file);
    match status {
        Ok(s) => {
            use std::os::unix::process::ExitStatusExt;
            Ended {
                exit_code: s.code(),
                signal: s.signal(),
                error: if timed_out {
                    Some(format!(
                        "killed after its timeout of {} s",
                        run.timeout_secs.unwrap_or(0)
                    ))
                } else if cancelled {
                    Some("cancelled".into())
                } else {
                    None
                },
                timed_out,
                cancelled,
            }
        }
        Err(e) => failed(format!("cannot wait for the script: {e}")),
    }
}

async fn pump(
    pipe: Option<impl tokio::io::AsyncRead + Unpin + Send + 'static>,
    stream: OutputStream,
    mut masker: Masker,
    out: mpsc::Sender<Chunk>,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    let Some(mut pipe) = pipe else { return };
    let mut text = LossyUtf8::new();
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let read = tokio::select! {
            r = pipe.read(&mut buf) => r,
            _ = stop.wait_for(|s| *s) => {
                // Forwarding is over; drain in the background until the writers go away.
                tokio::spawn(async move {
                    let mut sink = vec![0u8; 16 * 1024];
                    while matches!(pipe.read(&mut sink).await, Ok(n) if n > 0) {}
                });
                break;
            }
        };
        let n = match read {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        let data = masker.push(&text.push(&buf[..n]));
        if !data.is_empty() && out.send(Chunk { stream, data }).await.is_err() {
            return;
        }
    }
    let rest = masker.finish();
    if !rest.is_empty() {
        let _ = out.send(Chunk { stream, data: rest }).await;
    }
}
