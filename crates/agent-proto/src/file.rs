//! Protocol version 2: objects the agent fetches (artifact inputs) and files it keeps in step
//! with what the control plane renders (a load balancer's configuration).

use std::fmt;

/// An object of the artifact store, as a run's input or a managed file's content: where to
/// fetch it without credentials, and the SHA-256 it must have. The agent fetches it before the
/// script starts (once per content: its cache is keyed by the hash), verifies it, and gives the
/// script the file's path.
#[derive(Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ArtifactRef {
    /// A signed, short-lived URL; relative ones (`/api/v1/...`) are resolved against the URL
    /// the agent reaches the control plane at.
    pub url: String,
    /// SHA-256 of the content, lower-case hex.
    pub sha256: String,
    pub size: u64,
    /// The file name the script sees (the key's last segment): `site.tar.gz`.
    pub name: String,
}

/// The URL carries a signature: `Debug` shows the object's name and hash only.
impl fmt::Debug for ArtifactRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ArtifactRef")
            .field("name", &self.name)
            .field("sha256", &self.sha256)
            .field("size", &self.size)
            .finish_non_exhaustive()
    }
}

/// A file the agent keeps as the control plane says, as part of the desired state: inline
/// `content` (a rendered configuration) or an artifact-store object (`source`, a watched
/// file). Applying one: write the content to a candidate file next to `path`; run `check` (with the candidate's
/// path in `$STRATUS_CANDIDATE`) and keep the old file if it fails; rename the candidate over
/// `path`; run `reload`. The agent answers each attempt with a `FileStatus`. A file whose
/// content already matches is not rewritten and not reloaded.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ManagedFile {
    /// Absolute, without `.`/`..` segments.
    pub path: String,
    /// The content; empty when `source` gives it.
    #[serde(default)]
    pub content: String,
    /// The content is this object (fetched, verified and cached like an artifact input).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<ArtifactRef>,
    /// Re-check the file this often (seconds) and put the content back if it drifted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub recheck_secs: Option<u32>,
    /// Permission bits (default 0644).
    #[serde(default = "default_mode")]
    pub mode: u32,
    /// A shell command that must succeed on the candidate (`haproxy -c -f "$STRATUS_CANDIDATE"`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub check: Option<String>,
    /// A shell command run after the file changed (a seamless reload).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reload: Option<String>,
}

fn default_mode() -> u32 {
    0o644
}

impl ManagedFile {
    /// SHA-256 of the content, lower-case hex: what `FileStatus` reports.
    pub fn sha256(&self) -> String {
        use sha2::Digest;
        match &self.source {
            Some(a) => a.sha256.clone(),
            None => hex::encode(sha2::Sha256::digest(self.content.as_bytes())),
        }
    }

    /// A file with inline content.
    pub fn inline(path: impl Into<String>, content: impl Into<String>) -> Self {
        Self {
            path: path.into(),
            content: content.into(),
            source: None,
            recheck_secs: None,
            mode: default_mode(),
            check: None,
            reload: None,
        }
    }
}

/// Is `path` absolute and free of empty, `.` and `..` segments?
pub fn absolute_path_ok(path: &str) -> bool {
    path.starts_with('/')
        && path.len() > 1
        && !path.ends_with('/')
        && path[1..].split('/').all(|s| !s.is_empty() && s != "." && s != "..")
        && !path.contains('\0')
}

/// Managed SSH: the login accounts Stratus keeps on a server, as part of its desired state.
/// The agent creates each account (once), writes its `~/.ssh/authorized_keys` with exactly
/// these keys and gives it passwordless sudo or not. An account the agent made earlier that is
/// no longer listed loses its keys and sudo and is locked, and (with `end_sessions`) its
/// processes are killed: a revocation is a refused login at once. Accounts and keys Stratus
/// did not make (the image's own) are never touched.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Logins {
    pub accounts: Vec<LoginAccount>,
    /// End the sessions of an account that loses access.
    #[serde(default = "yes")]
    pub end_sessions: bool,
    /// Empty the `authorized_keys` of accounts Stratus did not make (managed SSH is the only
    /// way in).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub exclusive: bool,
}

fn yes() -> bool {
    true
}

/// One user's account on a server.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LoginAccount {
    /// The Unix account name (the Stratus user's name).
    pub name: String,
    /// `authorized_keys` lines (`ssh-ed25519 AAAA... comment`).
    pub keys: Vec<String>,
    /// Passwordless sudo (`server_superuser`).
    #[serde(default)]
    pub sudo: bool,
}

/// A Unix account name the agent accepts: a lower-case letter or `_`, then up to 31 letters,
/// digits, `_` or `-`.
pub fn account_name_ok(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 32
        && name.starts_with(|c: char| c.is_ascii_lowercase() || c == '_')
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-')
}
