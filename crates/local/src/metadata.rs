//! What the metadata service says about the local cloud's instances.
//!
//! The instance is found by the request's source address: the service listens on the
//! gateway, instances reach it through a DNAT from 169.254.169.254, which keeps their own
//! address as the source. Only running instances are answered. The records (user-data
//! included) are in memory and read on every request, so tags, elastic IPs and keys changed a
//! moment ago show at once, without touching the disk. Tokens are required when the cloud
//! says so (`metadata_tokens = "required"`, the default for new clouds) or the instance's
//! launch asked for it (its template's `metadata_tokens`).

use std::net::IpAddr;

use stratus_imds::{InstanceMetadata, MetadataSource};

use crate::driver::Shared;
use crate::record::Desired;

impl MetadataSource for Shared {
    fn lookup(&self, peer: IpAddr) -> Option<InstanceMetadata> {
        let IpAddr::V4(peer) = peer else { return None };
        let rec = self
            .read()
            .values()
            .find(|r| r.link.ip == peer && r.desired == Desired::Running)
            .cloned()?;
        Some(InstanceMetadata {
            instance_id: rec.id.clone(),
            image_id: rec.image.clone(),
            instance_type: rec.size.name.clone(),
            hostname: rec.hostname.clone(),
            local_ipv4: rec.link.ip,
            public_ipv4: rec.public_ip,
            mac: rec.link.mac.clone(),
            subnet_cidr: self.config.subnet.trunc().to_string(),
            region: rec.region.clone(),
            availability_zone: rec.zone.clone(),
            public_keys: rec.ssh_keys.clone(),
            tags: rec.tags.iter().map(tag_pair).collect(),
            user_data: (!rec.user_data.is_empty()).then(|| rec.user_data.clone()),
            launched_at: rec.launched_at,
            tokens_required: rec.metadata_tokens_required || self.config.metadata_tokens_required,
        })
    }
}

/// A Stratus tag `ns:pred=value` as an EC2 tag: key `ns:pred`, value `value`.
fn tag_pair(t: &stratus_types::tag::Tag) -> (String, String) {
    let s = t.to_string();
    match s.split_once('=') {
        Some((k, v)) => (k.to_string(), v.to_string()),
        None => (s, String::new()),
    }
}
