//! The instance agent. It dials **out** to the control plane, so a server never waits for the
//! control plane to get in (the sources' "stranded in booting" lesson):
//!
//! 1. **Identity**: read the user-data (`stratus_url`, `server_id`, a one-time
//!    `enrolment_token`) from the metadata service — or from a file on a host without one —
//!    and, where the metadata service has one, the signed instance-identity document.
//! 2. **Enrol** once (`POST /api/v1/agent/enroll`) and keep the returned credential in
//!    `STATE/credential` (0600). Later starts reuse it; the token is never needed again.
//! 3. **Connect**: one WebSocket (`/api/v1/agent/connect`), `hello` → `welcome` → desired
//!    state. Boot runs are executed in order, each a script file run with its inputs as
//!    environment variables; output is read as it comes, masked (secret inputs become `***`)
//!    and sent in numbered chunks; the end is reported with the exit status. A heartbeat goes
//!    out every `heartbeat_secs`.
//! 4. **Reconnect** on any failure with exponential backoff and full jitter (1 s … 60 s). Runs
//!    happen at most once: `STATE/runs/` remembers which started and which finished; a run that
//!    started but whose end was never reported is reported `interrupted`, not run again.
//!
//! Not yet: output produced while disconnected is not buffered on disk and resumed (which
//! would make an interrupted run's report complete), tag commands.

pub mod config;
pub mod connection;
pub mod enrol;
pub mod runner;

pub use config::AgentConfig;

#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error("cannot read {what}: {detail}")]
    Identity { what: String, detail: String },
    #[error("enrolment refused ({status}): {message}")]
    Enrolment { status: u16, message: String },
    #[error("cannot reach the control plane at {url}: {detail}")]
    Unreachable { url: String, detail: String },
    #[error("the control plane refused this agent: {0}")]
    Refused(String),
    #[error("protocol: {0}")]
    Protocol(String),
    #[error("state directory {path}: {source}")]
    State {
        path: String,
        #[source]
        source: std::io::Error,
    },
}

/// Entry point for `stratus-agent ARGS` (and `stratus agent ARGS`):
/// `[--state-dir DIR] [--metadata-url URL | --user-data FILE]`.
pub fn main(args: &[std::ffi::OsString]) -> std::process::ExitCode {
    let mut cfg = AgentConfig {
        state_dir: "/var/lib/stratus-agent".into(),
        metadata_url: Some("http://169.254.169.254".into()),
        user_data_file: None,
    };
    let mut it = args.iter().map(|a| a.to_string_lossy().into_owned());
    while let Some(a) = it.next() {
        let mut value = |name: &str| it.next().ok_or_else(|| format!("{name} needs a value"));
        let parsed = match a.as_str() {
            "--state-dir" => value("--state-dir").map(|v| cfg.state_dir = v.into()),
            "--metadata-url" => value("--metadata-url").map(|v| cfg.metadata_url = Some(v)),
            "--user-data" => value("--user-data").map(|v| {
                cfg.user_data_file = Some(v.into());
                cfg.metadata_url = None;
            }),
            other => Err(format!(
                "unknown argument {other:?}; usage: stratus-agent [--state-dir DIR] [--metadata-url URL | --user-data FILE]"
            )),
        };
        if let Err(e) = parsed {
            eprintln!("stratus-agent: {e}");
            return std::process::ExitCode::from(2);
        }
    }
    let rt = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("stratus-agent: cannot start: {e}");
            return std::process::ExitCode::from(1);
        }
    };
    let err = rt.block_on(connection::run_forever(cfg));
    eprintln!("stratus-agent: {err}");
    std::process::ExitCode::from(1)
}
