//! Where the agent gets its identity and keeps its state.

use std::path::PathBuf;

/// How the agent is set up; every endpoint is injectable (tests point them at local servers).
#[derive(Debug, Clone)]
pub struct AgentConfig {
    /// Credential, finished-run markers: 0700.
    pub state_dir: PathBuf,
    /// The metadata service (`http://169.254.169.254`), or `None` on a host without one.
    pub metadata_url: Option<String>,
    /// User-data from a file instead of the metadata service (any Linux host).
    pub user_data_file: Option<PathBuf>,
    /// How long a tag command waits for a connection, then for its answer.
    pub request_wait: std::time::Duration,
    /// A CA certificate (PEM) to trust for the control plane, besides the system's.
    pub ca_file: Option<PathBuf>,
    /// The file system an image preparation scans and cleans: `/` on an instance; a scratch
    /// tree when the agent runs on a host for tests.
    pub image_root: PathBuf,
}

impl AgentConfig {
    pub fn credential_file(&self) -> PathBuf {
        self.state_dir.join("credential")
    }

    pub fn runs_dir(&self) -> PathBuf {
        self.state_dir.join("runs")
    }

    /// The socket `stratus-agent tag ...` talks to (0600, in the 0700 state directory).
    pub fn socket_path(&self) -> PathBuf {
        self.state_dir.join("agent.sock")
    }
}

/// What the user-data says.
#[derive(Clone, serde::Deserialize)]
pub struct UserData {
    pub stratus_url: String,
    pub server_id: stratus_types::ServerId,
    pub enrolment_token: String,
    /// A CA certificate (PEM) the control plane's TLS certificate chains to, when it is not in
    /// the system's bundle.
    #[serde(default)]
    pub ca_pem: Option<String>,
}

/// The enrolment token is not printed.
impl std::fmt::Debug for UserData {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UserData")
            .field("stratus_url", &self.stratus_url)
            .field("server_id", &self.server_id)
            .field("enrolment_token", &"***")
            .finish()
    }
}
