//! What the driver remembers of an instance, on disk, so instances outlive the control plane.
//!
//! Each instance has a directory `STATE/instances/<id>/`:
//!
//! ```text
//! record.json   this record (written atomically: temp file + rename)
//! init.json     what init needs (see `init`)
//! user-data     the launch's user-data (0600)
//! console.log   init's and boot scripts' output
//! upper/ work/  the overlay's writable layer: everything the instance changed
//! merged/       the overlay mount: the instance's `/`
//! ```
//!
//! The record is the address lease: an address is taken while a record holds it, and freed
//! when terminate removes the directory.

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use chrono::{DateTime, Utc};
use stratus_types::ServerId;
use stratus_types::size::InstanceSize;
use stratus_types::tag::Tag;
use stratus_types::template::FirewallRule;

use crate::net::Link;

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Desired {
    Running,
    Stopped,
}

#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct Record {
    pub id: String,
    pub server: ServerId,
    pub hostname: String,
    pub region: String,
    pub zone: String,
    pub size: InstanceSize,
    pub image: String,
    pub link: Link,
    pub tags: Vec<Tag>,
    pub firewall: Vec<FirewallRule>,
    pub ssh_keys: Vec<(String, String)>,
    pub public_ip: Option<Ipv4Addr>,
    pub desired: Desired,
    pub metadata_tokens_required: bool,
    pub launched_at: DateTime<Utc>,
    /// The launch's user-data, kept in its own 0600 file (`user-data`) and in memory for the
    /// metadata service; never in `record.json`.
    #[serde(skip)]
    pub user_data: Vec<u8>,
}

pub const RECORD_FILE: &str = "record.json";

impl Record {
    pub fn save(&self, dir: &Path) -> std::io::Result<()> {
        use std::io::Write;
        let tmp = dir.join(".record.json.tmp");
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(&serde_json::to_vec_pretty(self).map_err(std::io::Error::other)?)?;
        // On disk before it replaces the old one: a crash leaves the old or the new record,
        // never an empty one (the record is the address lease).
        f.sync_all()?;
        std::fs::rename(tmp, dir.join(RECORD_FILE))
    }
}

/// Every record under `instances/`; unreadable ones are reported and skipped (never deleted:
/// an operator may want to look).
pub fn load_all(instances: &Path) -> Vec<(PathBuf, Record)> {
    let Ok(rd) = std::fs::read_dir(instances) else {
        return vec![];
    };
    let mut out = Vec::new();
    for e in rd.filter_map(Result::ok) {
        let path = e.path().join(RECORD_FILE);
        match std::fs::read(&path).map(|b| serde_json::from_slice::<Record>(&b)) {
            Ok(Ok(mut r)) => {
                r.user_data = crate::instance::read_user_data(&e.path()).unwrap_or_default();
                out.push((e.path(), r));
            }
            Ok(Err(err)) => tracing::warn!(path = %path.display(), %err, "skipping an unreadable instance record"),
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => {
                tracing::warn!(dir = %e.path().display(), "instance directory without a record (an interrupted launch?)");
            }
            Err(err) => tracing::warn!(path = %path.display(), %err, "cannot read an instance record"),
        }
    }
    out
}
