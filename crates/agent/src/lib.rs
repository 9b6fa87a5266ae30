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
//! 4. **Runs** execute in their own tasks and write to the run journal (`STATE/runs/`, see
//!    [`journal`]); the connection sends from the journal what the control plane lacks. Runs go
//!    on while the control plane is away, their output accumulating on disk; after a reconnect
//!    `Welcome.resume` says where the control plane stands and the rest is sent, exactly once.
//!    A run id runs at most once: one cut short by an agent restart is reported `interrupted`.
//!    `cancel` stops a run's whole process group (SIGTERM, SIGKILL after 10 s).
//! 5. **Boot**: the desired state's boot list runs in order on a worker task, stopping at the
//!    first failure; per-instance scripts that succeeded on this instance are skipped. The boot
//!    id sent in `hello` changes on every reboot ([`connection::boot_id`]), so the control plane
//!    sends the every-boot scripts again.
//! 6. **Local commands**: `stratus-agent tag add/remove/list/query` talk to the running agent on
//!    `STATE/agent.sock` ([`local`]), so a boot script can tag its own server or find its peers.
//! 7. **Artifacts and managed files** (protocol v2): an `artifact:` input is fetched by its
//!    signed URL, verified by SHA-256 and cached by hash before the script starts ([`fetch`]);
//!    the desired state's managed files (a load balancer's configuration) are checked, renamed
//!    into place and reloaded before the boot runs start ([`files`]).
//! 8. **Reconnect** on any failure with exponential backoff and full jitter (1 s … 60 s). A
//!    server the control plane says is terminated makes the agent exit.

pub mod accounts;
pub mod app;
pub mod archive;
pub mod config;
pub mod connection;
pub mod enrol;
pub mod fetch;
pub mod files;
pub mod journal;
pub mod local;
pub mod prepare;
pub mod runner;
pub mod safe_fs;
pub mod tls;

/// An error with its causes, `outer: inner: innermost` (an HTTP client's "error sending
/// request" says nothing without the certificate or connection error under it).
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        let text = c.to_string();
        if !s.contains(&text) {
            s.push_str(": ");
            s.push_str(&text);
        }
        cause = c.source();
    }
    s
}

/// Where the agent keeps its credential and journal unless told otherwise.
pub const DEFAULT_STATE_DIR: &str = "/var/lib/stratus-agent";

const USAGE: &str = "usage:
  stratus-agent [--state-dir DIR] [--metadata-url URL | --user-data FILE] [--ca-file PEM]
                [--request-wait SECS] [--image-root DIR]
      run the agent (default: state in /var/lib/stratus-agent, identity from the metadata
      service at http://169.254.169.254; https/wss trust the system's CAs and --ca-file;
      tag commands wait 30 s for a connection; an image preparation cleans / unless
      --image-root names another tree)
  stratus-agent [--state-dir DIR] tag add TAG... | remove TAG... | list | query SELECTOR [--json]
      change or read this server's tags, or find servers of its deployment by tag (talks to
      the running agent; inside scripts STRATUS_AGENT_SOCKET names it)
  stratus-agent app deploy --name NAME --archive FILE --sha256 HEX [--root /srv]
      unpack an application archive as a new release and switch to it (the control plane's
      deploy runs call this; $STRATUS_APP_ACTIVATE runs after the switch)";

pub use config::AgentConfig;

#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error("cannot read {what}: {detail}")]
    Identity { what: String, detail: String },
    #[error("enrolment refused ({status}): {message}")]
    Enrolment { status: u16, message: String },
    /// The control plane cannot take the enrolment yet (the launch is still being recorded).
    #[error("enrolment not possible yet: {0}")]
    NotYet(String),
    #[error("cannot reach the control plane at {url}: {detail}")]
    Unreachable { url: String, detail: String },
    #[error("the control plane refused this agent ({0:?}): {1}")]
    Refused(stratus_agent_proto::RefusedReason, String),
    #[error("protocol: {0}")]
    Protocol(String),
    /// The instance was prepared for an image capture: the agent has no identity left.
    #[error("prepared for an image capture")]
    Prepared,
    #[error("state directory {path}: {source}")]
    State {
        path: String,
        #[source]
        source: std::io::Error,
    },
}

/// Entry point for `stratus-agent ARGS` (and `stratus agent ARGS`); see [`USAGE`].
pub fn main(args: &[std::ffi::OsString]) -> std::process::ExitCode {
    use std::process::ExitCode;
    let mut cfg = AgentConfig {
        state_dir: DEFAULT_STATE_DIR.into(),
        metadata_url: Some("http://169.254.169.254".into()),
        user_data_file: None,
        request_wait: connection::REQUEST_WAIT,
        ca_file: None,
        image_root: "/".into(),
    };
    let args: Vec<String> = args.iter().map(|a| a.to_string_lossy().into_owned()).collect();
    let mut state_given = false;
    let mut i = 0;
    while i < args.len() {
        let value = |name: &str| args.get(i + 1).cloned().ok_or_else(|| format!("{name} needs a value"));
        let parsed = match args[i].as_str() {
            "--state-dir" => value("--state-dir").map(|v| {
                cfg.state_dir = v.into();
                state_given = true;
            }),
            "--metadata-url" => value("--metadata-url").map(|v| cfg.metadata_url = Some(v)),
            "--request-wait" => value("--request-wait").and_then(|v| {
                let secs: u64 = v
                    .parse()
                    .map_err(|_| format!("--request-wait {v:?}: not a number of seconds"))?;
                cfg.request_wait = std::time::Duration::from_secs(secs.clamp(1, 3600));
                Ok(())
            }),
            "--ca-file" => value("--ca-file").map(|v| cfg.ca_file = Some(v.into())),
            "--image-root" => value("--image-root").map(|v| cfg.image_root = v.into()),
            "--user-data" => value("--user-data").map(|v| {
                cfg.user_data_file = Some(v.into());
                cfg.metadata_url = None;
            }),
            "app" => return app::command(&args[i + 1..]),
            "access-event" => return local::access_event(state_given.then_some(cfg.state_dir.as_path())),
            "tag" => {
                let dir = state_given.then_some(cfg.state_dir.as_path());
                return local::tag_command(&args[i + 1..], dir);
            }
            "-h" | "--help" | "help" => {
                println!("{USAGE}");
                return ExitCode::SUCCESS;
            }
            other => Err(format!("unknown argument {other:?}\n{USAGE}")),
        };
        if let Err(e) = parsed {
            eprintln!("stratus-agent: {e}");
            return ExitCode::from(2);
        }
        i += 2;
    }
    // Log to stderr (the instance console on a local cloud): connections, refusals, runs cut
    // short. STRATUS_LOG overrides the level.
    // A plain level unless STRATUS_LOG asks for more (directive filters cost memory in every
    // instance's agent).
    let fmt = tracing_subscriber::fmt()
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr)
        .with_target(false);
    let _ = match tracing_subscriber::EnvFilter::try_from_env("STRATUS_LOG") {
        Ok(filter) => fmt.with_env_filter(filter).try_init(),
        Err(_) => fmt.with_max_level(tracing::Level::INFO).try_init(),
    };
    let rt = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("stratus-agent: cannot start: {e}");
            return ExitCode::from(1);
        }
    };
    match rt.block_on(connection::run_forever(cfg)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("stratus-agent: {err}");
            ExitCode::from(1)
        }
    }
}
