//! Cloud drivers: one trait, one module per driver, one conformance suite all of them pass.
//!
//! The control plane only ever talks to a cloud through [`CloudDriver`]. A driver is told what
//! to launch in cloud-neutral terms ([`LaunchRequest`]: resolved size, native image id, the
//! minimal user-data, tags, firewall rules) and reports instances back as [`Instance`]s. Drivers
//! keep no state the control plane needs: after a restart the orchestrator reconciles its
//! servers against [`CloudDriver::list`].
//!
//! Drivers: [`fake`] (in memory, for tests and trying the API) here; the `local` driver
//! (namespaces on this machine) in the `stratus-local` crate; `ec2` later. All pass
//! [`conformance::run_all`]. Two wrappers around any driver serve tests and benchmarks:
//! [`counting`] counts calls by method, [`throttling`] refuses a share of them with
//! [`CloudError::Throttled`] (the orchestrator backs off and retries those).

pub mod conformance;
pub mod counting;
pub mod fake;
pub mod throttling;

use std::net::IpAddr;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use stratus_types::ServerId;
use stratus_types::cloud::DriverKind;
use stratus_types::size::InstanceSize;
use stratus_types::tag::Tag;
use stratus_types::template::FirewallRule;

/// EC2's limit, kept by every driver so a deployment that works on one cloud works on all.
pub const USER_DATA_MAX: usize = 16 * 1024;

/// What to launch.
#[derive(Debug, Clone)]
pub struct LaunchRequest {
    pub server: ServerId,
    pub hostname: String,
    pub region: String,
    pub size: InstanceSize,
    pub native_image: String,
    /// Control-plane URL and enrolment token; nothing else secret (see the agent docs).
    pub user_data: Vec<u8>,
    pub tags: Vec<Tag>,
    pub firewall: Vec<FirewallRule>,
    /// Public keys offered to the instance (EC2's key pair; the metadata service's
    /// `public-keys/`): (name, OpenSSH line).
    pub ssh_keys: Vec<(String, String)>,
    /// Only IMDSv2 (token) requests are answered.
    pub metadata_tokens_required: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum InstanceState {
    Pending,
    Running,
    Stopping,
    Stopped,
    Terminated,
}

/// An instance as the cloud reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Instance {
    pub id: String,
    pub server: ServerId,
    pub state: InstanceState,
    /// Why the instance is in its state when the cloud put it there (EC2's `StateReason`):
    /// e.g. its processes exited while it should have been running.
    pub state_reason: Option<String>,
    pub private_ip: Option<IpAddr>,
    pub public_ip: Option<IpAddr>,
    pub tags: Vec<Tag>,
    pub firewall: Vec<FirewallRule>,
    pub launched_at: DateTime<Utc>,
}

/// An image made from an instance.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CapturedImage {
    pub native_id: String,
    /// The image's size when the cloud says (the local cloud: bytes of its tree).
    pub size_bytes: Option<u64>,
}

#[derive(Debug, thiserror::Error)]
pub enum CloudError {
    #[error("the cloud refused the request: {0}")]
    Refused(String),
    #[error("instance {0} does not exist")]
    NoSuchInstance(String),
    #[error("instance {id} is {state:?}; {action} needs it {needs}")]
    WrongState {
        id: String,
        state: InstanceState,
        action: &'static str,
        needs: &'static str,
    },
    #[error("user-data is {0} bytes; the limit is {USER_DATA_MAX}")]
    UserDataTooLarge(usize),
    #[error("image {0:?} does not exist on this cloud")]
    NoSuchImage(String),
    #[error("the cloud has no capacity left: {0}")]
    Capacity(String),
    #[error("{0}")]
    Invalid(String),
    #[error("the instance failed to start: {0}")]
    StartFailed(String),
    /// The cloud asks us to slow down (EC2's `RequestLimitExceeded`, a 503) or failed in a
    /// way worth retrying (a 5xx): nothing was done; try again later.
    #[error("the cloud is throttling requests or failing transiently: {0}")]
    Throttled(String),
    #[error("cloud API call failed")]
    Api(#[source] Box<dyn std::error::Error + Send + Sync>),
}

impl CloudError {
    /// Worth retrying after a pause, not a refusal of the request itself.
    pub fn is_transient(&self) -> bool {
        matches!(self, CloudError::Throttled(_))
    }
}

/// One cloud. Every method is safe to retry: launching is keyed by the server id (a retried
/// launch of the same server returns the instance it already has), terminating a terminated
/// instance succeeds.
#[async_trait]
pub trait CloudDriver: Send + Sync + std::fmt::Debug {
    fn kind(&self) -> DriverKind;
    async fn launch(&self, req: LaunchRequest) -> Result<Instance, CloudError>;
    /// `None` when the cloud no longer knows the instance.
    async fn describe(&self, instance_id: &str) -> Result<Option<Instance>, CloudError>;
    /// Every instance the driver manages: the orchestrator's inventory, read once per pass, so
    /// a driver answers it with as few cloud calls as it can (paged, filtered on its own tag,
    /// nothing looked up per instance; the firewall may be left empty, `describe` fills it).
    async fn list(&self) -> Result<Vec<Instance>, CloudError>;
    async fn stop(&self, instance_id: &str) -> Result<(), CloudError>;
    async fn start(&self, instance_id: &str) -> Result<(), CloudError>;
    async fn reboot(&self, instance_id: &str) -> Result<(), CloudError>;
    async fn terminate(&self, instance_id: &str) -> Result<(), CloudError>;
    /// Make `ip` (from one of the cloud's address pools) reach the instance; moving an
    /// associated address to another instance is one call.
    async fn associate_address(&self, instance_id: &str, ip: IpAddr) -> Result<(), CloudError>;
    async fn disassociate_address(&self, ip: IpAddr) -> Result<(), CloudError>;
    /// Replace the instance's tags (what the metadata service and cloud consoles show).
    async fn set_tags(&self, instance_id: &str, tags: Vec<Tag>) -> Result<(), CloudError>;
    /// Replace the instance's inbound firewall rules; an empty list allows everything.
    async fn set_firewall(&self, instance_id: &str, rules: Vec<FirewallRule>) -> Result<(), CloudError>;
    /// The end of the instance's console output (EC2's `GetConsoleOutput`): what its init and
    /// boot hooks printed, at most `max` bytes, newest last.
    async fn console_output(&self, instance_id: &str, max: usize) -> Result<String, CloudError>;
    /// A new public address from the cloud itself (EC2's `AllocateAddress`), for clouds that
    /// hand out their own; `None`: the control plane picks one from the cloud's address pools.
    async fn allocate_address(&self) -> Result<Option<IpAddr>, CloudError> {
        Ok(None)
    }
    /// Give back an address [`CloudDriver::allocate_address`] handed out (nothing to do for
    /// pool addresses).
    async fn release_address(&self, _ip: IpAddr) -> Result<(), CloudError> {
        Ok(())
    }
    /// Whether `native_id` names an image this cloud can launch.
    async fn image_exists(&self, native_id: &str) -> Result<bool, CloudError>;
    /// Capture a stopped instance's file system as a new image (EC2's `CreateImage`), labelled
    /// `name`. The instance must be stopped, so nothing writes while it is copied; it stays
    /// stopped. Preparing the file system (removing identity, keys, logs) is the caller's job,
    /// done on the instance before it was stopped.
    async fn capture_image(&self, instance_id: &str, name: &str) -> Result<CapturedImage, CloudError>;
    /// Delete an image [`CloudDriver::capture_image`] made (EC2's `DeregisterImage` and its
    /// snapshots). Deleting an image that is already gone succeeds.
    async fn delete_image(&self, native_id: &str) -> Result<(), CloudError>;
    /// The driver as `Any`, for driver-specific operations (building local images).
    fn as_any(&self) -> &dyn std::any::Any;
}
