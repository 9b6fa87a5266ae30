//! Cloud drivers: one trait, one module per driver, one conformance suite all of them pass.
//!
//! The control plane only ever talks to a cloud through [`CloudDriver`]. A driver is told what
//! to launch in cloud-neutral terms ([`LaunchRequest`]: resolved size, native image id, the
//! minimal user-data, tags, firewall rules) and reports instances back as [`Instance`]s. Drivers
//! keep no state the control plane needs: after a restart the orchestrator reconciles its
//! servers against [`CloudDriver::list`].
//!
//! Drivers: [`fake`] (in memory, for tests and trying the API). The `local` (namespaces) and
//! `ec2` drivers implement the same trait.

pub mod conformance;
pub mod fake;

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
    pub private_ip: Option<IpAddr>,
    pub public_ip: Option<IpAddr>,
    pub launched_at: DateTime<Utc>,
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
    #[error("cloud API call failed")]
    Api(#[source] Box<dyn std::error::Error + Send + Sync>),
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
    /// Every instance the driver manages (for reconciliation after a restart).
    async fn list(&self) -> Result<Vec<Instance>, CloudError>;
    async fn stop(&self, instance_id: &str) -> Result<(), CloudError>;
    async fn start(&self, instance_id: &str) -> Result<(), CloudError>;
    async fn reboot(&self, instance_id: &str) -> Result<(), CloudError>;
    async fn terminate(&self, instance_id: &str) -> Result<(), CloudError>;
    /// Make `ip` (from one of the cloud's address pools) reach the instance; moving an
    /// associated address to another instance is one call.
    async fn associate_address(&self, instance_id: &str, ip: IpAddr) -> Result<(), CloudError>;
    async fn disassociate_address(&self, ip: IpAddr) -> Result<(), CloudError>;
}
