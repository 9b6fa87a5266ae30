//! The local cloud: instances as Linux namespaces on this machine, the embedded default.
//!
//! An instance is what a cloud VM is to the software inside it, built from kernel parts
//! instead of a hypervisor (KVM cannot be relied on; see `docs/ARCHITECTURE.md`):
//!
//! | cloud VM            | local instance                                                    |
//! |---------------------|-------------------------------------------------------------------|
//! | disk from an image  | overlayfs: the image tree (read-only) under a per-instance layer   |
//! | its own kernel view | network, mount, UTS, PID and IPC namespaces; init as PID 1 ([`init`]) |
//! | vCPUs, RAM          | cgroup CPU bandwidth and memory limits from the size ([`cgroup`])  |
//! | VPC subnet          | a bridge per cloud, a veth per instance, addresses leased from the subnet ([`net`]) |
//! | security group      | nftables rules in the instance's namespace                        |
//! | elastic IP          | DNAT on the host from a pool address to the private address       |
//! | IMDS                | `stratus-imds` on the gateway, reached at 169.254.169.254 (DNAT)   |
//!
//! Instances outlive the control plane: their processes are detached, and everything the
//! driver knows is on disk ([`record`]). [`LocalCloud::open`] picks the records up again; an
//! instance that should run but whose processes are gone is reported `stopped` with a reason.
//!
//! Needs root, util-linux (`nsenter`, `unshare`), iproute2 and nftables.

pub mod antispoof;
mod capability;
pub mod cgroup;
pub mod cmd;
pub mod config;
mod driver;
pub mod image;
pub mod init;
mod instance;
mod metadata;
pub mod net;
pub mod purge;
pub mod record;

pub use config::LocalConfig;
pub use driver::LocalCloud;

/// What can go wrong setting a local cloud up (instance errors are `CloudError`s).
#[derive(Debug, thiserror::Error)]
pub enum LocalError {
    #[error("invalid local cloud settings: {0}")]
    Config(String),
    #[error("the local cloud needs root (it creates namespaces, mounts and network devices); run stratus as root")]
    NotRoot,
    #[error("cannot set up the local cloud: {context}")]
    Setup {
        context: String,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
}

impl LocalError {
    pub(crate) fn setup(
        context: impl Into<String>,
        source: impl Into<Box<dyn std::error::Error + Send + Sync>>,
    ) -> Self {
        Self::Setup {
            context: context.into(),
            source: source.into(),
        }
    }
}
