//! How one local cloud is set up: where its state lives, its network, how to run init.

use std::ffi::OsString;
use std::path::PathBuf;
use std::time::Duration;

use ipnet::Ipv4Net;

/// The private network a local cloud uses when its declaration names none.
pub const DEFAULT_SUBNET: &str = "10.77.0.0/22";

#[derive(Debug, Clone)]
pub struct LocalConfig {
    /// This cloud's instances and keys: `DATA_DIR/local/clouds/<name>`.
    pub state_dir: PathBuf,
    /// The image store, shared by the machine's local clouds: `DATA_DIR/local/images`.
    pub images_dir: PathBuf,
    /// Short tag (1–8 of `[a-z0-9]`) in every host-side name: bridge `st-NET`, nftables table
    /// `stratus-NET`, namespaces `stratus-NET-<instance>`, cgroups `stratus/NET/<instance>`.
    pub network: String,
    /// Private addresses; the first host address is the gateway (the host itself).
    pub subnet: Ipv4Net,
    /// Elastic-IP pools.
    pub address_pools: Vec<Ipv4Net>,
    /// Let instances reach the world through the host (masquerade). Boot scripts that run
    /// `apt-get install` need it.
    pub outbound_nat: bool,
    /// The instance init: program and leading arguments (`stratus instance-init`).
    pub init: Vec<OsString>,
    /// How long a stopping instance's processes get between SIGTERM and SIGKILL.
    pub stop_grace: Duration,
    /// Serve the metadata service at 169.254.169.254 for the cloud's instances.
    pub metadata: bool,
    /// Every instance's metadata needs an IMDSv2 token (a template can also require it for its
    /// servers alone).
    pub metadata_tokens_required: bool,
    /// The IP TTL of token responses (EC2's `HttpPutResponseHopLimit`, 1–64).
    pub metadata_hop_limit: u8,
    /// The agent every instance runs (bound in from the host, kept running by init).
    pub agent: Option<crate::init::AgentSpec>,
}

impl LocalConfig {
    /// Check what the host cannot check for us, so a bad value fails before anything is made.
    pub fn validate(&self) -> Result<(), String> {
        if self.network.is_empty()
            || self.network.len() > 8
            || !self
                .network
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
        {
            return Err(format!("network tag {:?} must be 1-8 of [a-z0-9]", self.network));
        }
        if self.subnet.prefix_len() > 29 || self.subnet.prefix_len() < 16 {
            return Err(format!("subnet {} must be between a /16 and a /29", self.subnet));
        }
        for p in &self.address_pools {
            if p.contains(&self.subnet.network()) || self.subnet.contains(&p.network()) {
                return Err(format!("address pool {p} overlaps the private subnet {}", self.subnet));
            }
        }
        for d in [&self.state_dir, &self.images_dir] {
            // Mount points are compared with /proc/self/mountinfo, which is absolute.
            if !d.is_absolute() {
                return Err(format!(
                    "{}: the local cloud's directories must be absolute paths",
                    d.display()
                ));
            }
            // Overlay mount options are comma- and colon-separated.
            let s = d.to_string_lossy();
            if s.contains([',', ':']) || s.chars().any(char::is_whitespace) {
                return Err(format!(
                    "{s:?}: the local cloud's directories cannot contain ',', ':' or spaces"
                ));
            }
        }
        if !(1..=64).contains(&self.metadata_hop_limit) {
            return Err(format!(
                "metadata hop limit {} must be 1 (the default, as EC2) to 64",
                self.metadata_hop_limit
            ));
        }
        if self.init.is_empty() {
            return Err("no init program configured".into());
        }
        Ok(())
    }
}
