//! Cloud drivers: one trait, one module per driver, one conformance suite all of them pass.
//!
//! The control plane only ever talks to a cloud through [`CloudDriver`]. A driver is told what
//! to launch in cloud-neutral terms ([`LaunchRequest`]: resolved size, native image id, the
//! minimal user-data, tags, firewall rules) and reports instances back as [`Instance`]s. Drivers
//! keep no state the control plane needs: after a restart the orchestrator reconciles its
//! servers against [`CloudDriver::list`].
//!
//! Drivers: [`fake`] (in memory, for tests and trying the API) here; the `local` driver
//! (namespaces on this machine) in the `stratus-local` crate; `ec2` in `stratus-ec2`. All pass
//! [`conformance::run_all`]. Two wrappers around any driver serve tests and benchmarks:
//! [`counting`] counts calls by method, [`throttling`] refuses a share of them with
//! [`CloudError::Throttled`] (the orchestrator backs off and retries those).
//!
//! # Capabilities
//!
//! What only some clouds can do is a method with a default, never a downcast in the control
//! plane: a driver overrides what it supports and the control plane asks every driver the same
//! way. [`CloudDriver::identity_verifier`] (clouds that sign instance identities),
//! [`CloudDriver::build_image`] and [`CloudDriver::import_image`] (clouds that make images from
//! a recipe or a tarball; the default answers [`CloudError::Unsupported`]),
//! [`CloudDriver::owns_all_images`] (whether every image the cloud knows is one Stratus made),
//! [`CloudDriver::simulated`] (instances that run nothing, the fake's), and
//! [`CloudDriver::tear_down`] (what deleting the cloud removes outside the control plane's
//! records). docs/ARCHITECTURE.md "Adding a cloud driver" has the steps for a new driver.

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

/// What `stratus image build` asks a cloud for, in cloud-neutral terms; `None` takes the
/// driver's default.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ImageRecipe {
    /// The distribution release (Debian suite on the local cloud).
    pub suite: Option<String>,
    /// Where packages come from.
    pub mirror: Option<String>,
    /// The packages, replacing the driver's default list.
    pub packages: Option<Vec<String>>,
    /// Packages added to the list (the default one or `packages`).
    pub extra_packages: Vec<String>,
}

/// An image the cloud made from a recipe or a tarball.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MadeImage {
    pub native_id: String,
    pub size_bytes: Option<u64>,
    /// For people: what it is and how it was made.
    pub description: String,
}

/// What a verified instance-identity document says about the instance that sent it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifiedIdentity {
    pub instance_id: String,
    pub private_ip: IpAddr,
}

/// Checks instance-identity documents signed by a cloud's metadata service.
pub trait VerifyIdentity: Send + Sync {
    /// What the document says, if `signature` (base64) is the cloud's over exactly `document`.
    /// Any refusal is the same [`CloudError::Refused`]: callers answer it with one status.
    fn verify(&self, document: &[u8], signature: &str) -> Result<VerifiedIdentity, CloudError>;
}

#[derive(Debug, thiserror::Error)]
pub enum CloudError {
    #[error("the {driver:?} driver cannot {action}")]
    Unsupported { driver: DriverKind, action: &'static str },
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
    /// done on the instance before it was stopped. Capturing the same instance under the same
    /// name again returns the image made the first time: a control plane that died between the
    /// capture and recording it retries without making a second image.
    async fn capture_image(&self, instance_id: &str, name: &str) -> Result<CapturedImage, CloudError>;
    /// Delete an image [`CloudDriver::capture_image`] made (EC2's `DeregisterImage` and its
    /// snapshots). Deleting an image that is already gone succeeds.
    async fn delete_image(&self, native_id: &str) -> Result<(), CloudError>;
    /// Whether every image this cloud knows was made by Stratus (built, imported or captured
    /// into a store of its own, as the local cloud's is): then deleting an image record that no
    /// other refers to deletes its native images, whatever made them. Otherwise (the default)
    /// only captured images are Stratus's to delete; an image named by hand (a public AMI, the
    /// user's own) is never touched.
    fn owns_all_images(&self) -> bool {
        false
    }
    /// Build an image from a recipe (`stratus image build`), labelled `name`; `progress` gets
    /// one line per step. Building what was built before may return the same image.
    async fn build_image(
        &self,
        _name: &str,
        _recipe: &ImageRecipe,
        _progress: &(dyn for<'l> Fn(&'l str) + Send + Sync),
    ) -> Result<MadeImage, CloudError> {
        Err(self.unsupported("build images"))
    }
    /// Make an image of a root file system tarball on the control plane's machine
    /// (`stratus image import`). The same content may return the same image.
    async fn import_image(&self, _name: &str, _tarball: &std::path::Path) -> Result<MadeImage, CloudError> {
        Err(self.unsupported("import images"))
    }
    /// The checker of the identity documents this cloud's metadata service signs; `None` (the
    /// default): the cloud signs nothing the control plane can check with its own key.
    fn identity_verifier(&self) -> Option<&dyn VerifyIdentity> {
        None
    }
    /// Whether the cloud's instances run nothing (the fake's exist only as records): no agent
    /// can ever connect from them, so the control plane may stand in for their agents
    /// (`simulate_agents`).
    fn simulated(&self) -> bool {
        false
    }
    /// The cloud is being deleted and has no live instances left: remove what the driver made
    /// for it outside the control plane's records (a local cloud: its remaining instances,
    /// bridge, nftables tables, cgroups, metadata service and state directory with its
    /// identity key). Safe to retry; the default has nothing to remove.
    async fn tear_down(&self) -> Result<(), CloudError> {
        Ok(())
    }
    /// [`CloudError::Unsupported`] for this driver.
    fn unsupported(&self, action: &'static str) -> CloudError {
        CloudError::Unsupported {
            driver: self.kind(),
            action,
        }
    }
    /// The driver as `Any`: for the driver factory and tests, never for the control plane's
    /// logic (what only some drivers do is a capability above).
    fn as_any(&self) -> &dyn std::any::Any;
}
