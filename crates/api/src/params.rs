//! Request parameters (query strings and bodies) beyond the domain specs.

use stratus_types::Name;
use stratus_types::input::Inputs;
use stratus_types::tag::Tag;

use crate::file::DeploymentFile;

/// Paging for every list: `limit` (1-1000, default 100) and `after` (the previous page's `next`).
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ListParams {
    pub limit: Option<u32>,
    pub after: Option<String>,
}

#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ServerListParams {
    pub limit: Option<u32>,
    pub after: Option<String>,
    pub deployment: Option<String>,
    /// `pending`, `booting`, `operational`, `decommissioning`, `terminated`, `stranded`.
    pub state: Option<String>,
    /// A tag selector such as `lb:pool=www,!maint:drain`.
    pub tag: Option<String>,
    /// Include terminated servers (default: only live ones).
    pub all: Option<bool>,
}

#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct RunListParams {
    pub limit: Option<u32>,
    pub after: Option<String>,
    /// Runs of one server (id or `deployment/name`).
    pub server: Option<String>,
    pub status: Option<String>,
    /// Runs of one rollout (in the order it starts them).
    pub rollout: Option<String>,
}

#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct OperationListParams {
    pub limit: Option<u32>,
    pub after: Option<String>,
    /// Operations of one server (id or `deployment/name`).
    pub server: Option<String>,
}

#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct AuditParams {
    pub limit: Option<u32>,
    /// Entries older than this id.
    pub before: Option<String>,
    pub actor: Option<String>,
    /// Prefix of the action, e.g. `server.`.
    pub action: Option<String>,
    /// Prefix of the target, e.g. `server/web-1`.
    pub target: Option<String>,
}

#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ResolveSizeParams {
    /// A size name, or constraints as `cpus=2,memory=4GiB`.
    pub size: String,
}

/// Add and remove tags in one step.
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TagChange {
    #[serde(default)]
    pub add: Vec<Tag>,
    #[serde(default)]
    pub remove: Vec<Tag>,
}

#[derive(Debug, Clone, serde::Serialize, serde::Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ScaleRequest {
    pub desired: u32,
}

#[derive(Debug, Clone, serde::Serialize, serde::Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AddKeyRequest {
    /// One `authorized_keys` line (`ssh-ed25519 AAAA… comment`).
    pub public_key: String,
}

#[derive(Debug, Clone, serde::Serialize, serde::Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateTokenRequest {
    /// Whose token (admins may create tokens for anyone; others only for themselves).
    pub user: Name,
    #[serde(default)]
    pub description: String,
    /// Lifetime in hours; none means it lasts until revoked.
    #[serde(default)]
    pub ttl_hours: Option<u32>,
}

#[derive(Debug, Clone, serde::Serialize, serde::Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ApplyRequest {
    pub document: DeploymentFile,
    /// Only compute the plan.
    #[serde(default)]
    pub dry_run: bool,
}

#[derive(Debug, Clone, serde::Serialize, serde::Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AssociateRequest {
    /// Server id, or `deployment/name`.
    pub server: String,
}

#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateInputs {
    pub inputs: Inputs,
}

/// Build a Debian base image with debootstrap on a local cloud and register it as the
/// cloud's native image of the named multi-cloud image.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct BuildImageRequest {
    /// The local cloud (by name).
    pub cloud: Name,
    /// Debian suite; default `bookworm`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub suite: Option<String>,
    /// Debian mirror; default `http://deb.debian.org/debian`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mirror: Option<String>,
    /// The package list, replacing the default one (nginx, haproxy, openssh-server, ...).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub packages: Option<Vec<String>>,
    /// Packages added to the list.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub extra_packages: Vec<String>,
}

/// Import a root file system tarball (tar, tar.gz or tar.zst) that is on the control plane's
/// machine into a local cloud, and register it.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ImportImageRequest {
    pub cloud: Name,
    /// Absolute path on the control plane's machine.
    pub path: String,
}

/// Which object of a bucket (keys may hold `/`, so they travel in the query string).
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ObjectParams {
    pub key: String,
}

/// Upload parameters: the key, and optionally the SHA-256 the content must have (the upload is
/// refused and nothing changes if it differs).
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct PutObjectParams {
    pub key: String,
    pub sha256: Option<String>,
}

#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ObjectListParams {
    pub limit: Option<u32>,
    /// The last key of the previous page.
    pub after: Option<String>,
    /// Only keys that start with this.
    pub prefix: Option<String>,
}

/// Ask for a short-lived URL that fetches one object without a token.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct FetchUrlRequest {
    pub key: String,
    /// Seconds the URL works (1-3600; default 900). It stops working earlier when the token
    /// that asked for it is revoked or expires.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ttl_secs: Option<u64>,
}

/// A signed fetch URL's query: the object, the content it names, the expiry and the signature.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct FetchParams {
    pub bucket: String,
    pub key: String,
    pub sha256: String,
    /// Unix seconds.
    pub expires: i64,
    /// Whom the URL was minted for (`t.TOKEN_ID` or `a.SERVER_ID`); it works only while they
    /// may still fetch.
    pub by: String,
    pub sig: String,
}

#[derive(Debug, Clone, serde::Serialize, serde::Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateBucket {
    pub name: String,
}
