//! Clouds: where servers run.

use chrono::{DateTime, Utc};
use std::collections::BTreeSet;

use crate::name::truncate;
use crate::size::InstanceSize;
use crate::template::MetadataTokens;
use crate::{CloudId, FieldError, Invalid, Name};

/// Which driver talks to the cloud.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum DriverKind {
    /// In-memory cloud for tests and trying the API; instances only exist in the control plane.
    Fake,
    /// Instances as Linux namespaces on this machine (the embedded default).
    Local,
    /// AWS or any EC2-compatible endpoint.
    Ec2,
}

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Region {
    pub name: String,
    #[serde(default)]
    pub zones: Vec<String>,
}

/// A range of "public" addresses servers can hold as elastic IPs.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AddressPool {
    pub name: Name,
    #[schema(value_type = String, example = "198.51.100.0/28")]
    pub cidr: ipnet::IpNet,
}

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CloudSpec {
    pub name: Name,
    pub driver: DriverKind,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub description: String,
    /// API endpoint, for drivers that talk to one (`https://ec2.eu-west-1.amazonaws.com`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<String>,
    pub regions: Vec<Region>,
    pub sizes: Vec<InstanceSize>,
    #[serde(default)]
    pub address_pools: Vec<AddressPool>,
    /// Settings of a `local` cloud (instances on the control plane's machine).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub local: Option<LocalSettings>,
    /// Settings of an `ec2` cloud.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ec2: Option<Ec2Settings>,
}

/// How an `ec2` cloud is reached. An EC2 cloud is one region (declare one cloud per region);
/// `endpoint` names an EC2-compatible endpoint, or AWS's own when absent.
#[derive(Debug, Clone, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Ec2Settings {
    /// A Stratus credential holding `ACCESS_KEY_ID:SECRET_ACCESS_KEY`; without one, the usual
    /// AWS sources of the control plane's environment (variables, profile, instance profile).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credential: Option<Name>,
}

/// How a `local` cloud's network is set up on the host.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct LocalSettings {
    /// The instances' private network; the first address is the host (gateway, control
    /// plane, metadata service). Default `10.77.0.0/22`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<String>, example = "10.77.0.0/22")]
    pub subnet: Option<ipnet::Ipv4Net>,
    /// Let instances reach the world through the host (NAT), as boot scripts that install
    /// packages need. Default on.
    #[serde(default = "yes")]
    pub outbound_nat: bool,
    /// The metadata service for every instance of the cloud: `required` answers only IMDSv2
    /// (token) requests, as EC2's `HttpTokens=required`; `optional` also answers plain IMDSv1
    /// GETs, unless the server's template requires tokens. A cloud created without it gets
    /// `required` (written into its declaration); a cloud created before this setting existed
    /// has none and keeps answering IMDSv1 until it says otherwise. See
    /// [`CloudSpec::settle_metadata_tokens`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metadata_tokens: Option<MetadataTokens>,
    /// EC2's `HttpPutResponseHopLimit`: the IP TTL of the metadata service's token responses,
    /// 1–64. The default, 1, keeps tokens from anything a routed hop behind the instance (a
    /// container on a bridge inside it, a forwarding proxy); raise it for containers that
    /// need IMDSv2.
    #[serde(default = "one", skip_serializing_if = "is_one")]
    pub metadata_hop_limit: u8,
}

fn yes() -> bool {
    true
}

fn one() -> u8 {
    1
}

fn is_one(n: &u8) -> bool {
    *n == 1
}

impl Default for LocalSettings {
    fn default() -> Self {
        Self {
            subnet: None,
            outbound_nat: true,
            metadata_tokens: None,
            metadata_hop_limit: 1,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct Cloud {
    pub id: CloudId,
    pub revision: u32,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    #[serde(flatten)]
    pub spec: CloudSpec,
}

fn simple_name_ok(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

impl CloudSpec {
    /// Decide a local cloud's `metadata_tokens` when its declaration does not: a new cloud
    /// (`existing` is `None`) gets `required`; an existing one keeps what it has, so
    /// re-applying a file that never mentions it changes nothing, and a cloud from before the
    /// setting (none recorded) keeps answering IMDSv1. Other drivers are left as they are.
    pub fn settle_metadata_tokens(&mut self, existing: Option<&CloudSpec>) {
        if self.driver != DriverKind::Local {
            return;
        }
        let declared = self.local.as_ref().and_then(|l| l.metadata_tokens);
        if declared.is_some() {
            return;
        }
        let settled = match existing {
            None => Some(MetadataTokens::Required),
            Some(e) => e.local.as_ref().and_then(|l| l.metadata_tokens),
        };
        if settled.is_some() {
            self.local.get_or_insert_with(LocalSettings::default).metadata_tokens = settled;
        }
    }

    pub fn validate(&self) -> Result<(), Invalid> {
        let mut errs = Invalid::default();
        if self.regions.is_empty() {
            errs.push(FieldError::new("regions", "a cloud needs at least one region"));
        }
        let mut seen = BTreeSet::new();
        for (i, r) in self.regions.iter().enumerate() {
            if !simple_name_ok(&r.name) {
                errs.push(FieldError::new(
                    format!("regions[{i}].name"),
                    format!("{:?} is not a region name", truncate(&r.name)),
                ));
            } else if !seen.insert(&r.name) {
                errs.push(FieldError::new(
                    format!("regions[{i}].name"),
                    format!("region {} is listed twice", r.name),
                ));
            }
            for (j, z) in r.zones.iter().enumerate() {
                if !simple_name_ok(z) {
                    errs.push(FieldError::new(
                        format!("regions[{i}].zones[{j}]"),
                        format!("{:?} is not a zone name", truncate(z)),
                    ));
                }
            }
        }
        if self.sizes.is_empty() {
            errs.push(FieldError::new("sizes", "a cloud needs at least one size"));
        }
        let mut seen = BTreeSet::new();
        for (i, s) in self.sizes.iter().enumerate() {
            errs.check(&format!("sizes[{i}]"), s.validate());
            if !seen.insert(&s.name) {
                errs.push(FieldError::new(
                    format!("sizes[{i}].name"),
                    format!("size {} is listed twice", truncate(&s.name)),
                ));
            }
        }
        let mut seen = BTreeSet::new();
        for (i, p) in self.address_pools.iter().enumerate() {
            if !seen.insert(&p.name) {
                errs.push(FieldError::new(
                    format!("address_pools[{i}].name"),
                    format!("pool {} is listed twice", p.name),
                ));
            }
            if p.cidr.prefix_len() < p.cidr.max_prefix_len().saturating_sub(16) {
                errs.push(FieldError::new(
                    format!("address_pools[{i}].cidr"),
                    "a pool holds at most 65536 addresses",
                ));
            }
            for (j, q) in self.address_pools.iter().enumerate().take(i) {
                if p.cidr.contains(&q.cidr.network()) || q.cidr.contains(&p.cidr.network()) {
                    errs.push(FieldError::new(
                        format!("address_pools[{i}].cidr"),
                        format!("overlaps address_pools[{j}] ({})", q.cidr),
                    ));
                }
            }
        }
        if let Some(e) = &self.endpoint
            && (!(e.starts_with("http://") || e.starts_with("https://"))
                || e.len() > 2048
                || e.chars().any(char::is_whitespace))
        {
            errs.push(FieldError::new(
                "endpoint",
                format!("{:?} is not an http(s) URL", truncate(e)),
            ));
        }
        if self.local.is_some() && self.driver != DriverKind::Local {
            errs.push(FieldError::new(
                "local",
                "only a cloud with driver \"local\" takes local settings",
            ));
        }
        if let Some(hops) = self.local.as_ref().map(|l| l.metadata_hop_limit)
            && !(1..=64).contains(&hops)
        {
            errs.push(FieldError::new(
                "local.metadata_hop_limit",
                format!("{hops} is not a hop limit: 1 (the default, as EC2) to 64"),
            ));
        }
        if let Some(net) = self.local.as_ref().and_then(|l| l.subnet) {
            if !(16..=29).contains(&net.prefix_len()) {
                errs.push(FieldError::new(
                    "local.subnet",
                    format!("{net} must be between a /16 and a /29"),
                ));
            }
            for (i, p) in self.address_pools.iter().enumerate() {
                let overlaps = match p.cidr {
                    ipnet::IpNet::V4(v4) => v4.contains(&net.network()) || net.contains(&v4.network()),
                    ipnet::IpNet::V6(_) => false,
                };
                if overlaps {
                    errs.push(FieldError::new(
                        format!("address_pools[{i}].cidr"),
                        format!("overlaps the private subnet {net}"),
                    ));
                }
            }
        }
        if self.driver == DriverKind::Local {
            for (i, p) in self.address_pools.iter().enumerate() {
                if matches!(p.cidr, ipnet::IpNet::V6(_)) {
                    errs.push(FieldError::new(
                        format!("address_pools[{i}].cidr"),
                        "a local cloud's pools are IPv4",
                    ));
                }
            }
        }
        if self.ec2.is_some() && self.driver != DriverKind::Ec2 {
            errs.push(FieldError::new(
                "ec2",
                "only a cloud with driver \"ec2\" takes ec2 settings",
            ));
        }
        if self.driver == DriverKind::Ec2 {
            if self.regions.len() > 1 {
                errs.push(FieldError::new(
                    "regions",
                    "an ec2 cloud is one region; declare a cloud per region",
                ));
            }
            if !self.address_pools.is_empty() {
                errs.push(FieldError::new(
                    "address_pools",
                    "an ec2 cloud's elastic IPs come from EC2 (AllocateAddress), not from pools",
                ));
            }
        }
        if self.description.len() > 4096 {
            errs.push(FieldError::new("description", "is longer than 4096 bytes"));
        }
        errs.into_result()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(local: &str) -> CloudSpec {
        let json = format!(
            r#"{{"name": "local", "driver": "local", "regions": [{{"name": "local"}}],
                "sizes": [{{"name": "small", "cpus": 1, "memory": "512MiB"}}]{local}}}"#
        );
        serde_json::from_str(&json).expect("spec")
    }

    fn tokens(s: &CloudSpec) -> Option<MetadataTokens> {
        s.local.as_ref().and_then(|l| l.metadata_tokens)
    }

    #[test]
    fn new_local_clouds_require_metadata_tokens_and_old_ones_keep_theirs() {
        let mut new = spec("");
        new.settle_metadata_tokens(None);
        assert_eq!(tokens(&new), Some(MetadataTokens::Required), "a new cloud: IMDSv2 only");
        // Re-applying the same file to the cloud it made changes nothing.
        let mut again = spec("");
        again.settle_metadata_tokens(Some(&new));
        assert_eq!(again, new);
        // A cloud from before the setting has none recorded: it keeps answering IMDSv1.
        let legacy = spec("");
        let mut reapplied = spec(r#", "local": {"outbound_nat": false}"#);
        reapplied.settle_metadata_tokens(Some(&legacy));
        assert_eq!(tokens(&reapplied), None);
        // What a declaration says wins, both ways.
        let mut optional = spec(r#", "local": {"metadata_tokens": "optional"}"#);
        optional.settle_metadata_tokens(None);
        assert_eq!(tokens(&optional), Some(MetadataTokens::Optional));
        let mut required = spec(r#", "local": {"metadata_tokens": "required"}"#);
        required.settle_metadata_tokens(Some(&legacy));
        assert_eq!(tokens(&required), Some(MetadataTokens::Required));
        // Other drivers have no such setting.
        let mut fake = spec("");
        fake.driver = DriverKind::Fake;
        fake.settle_metadata_tokens(None);
        assert_eq!(fake.local, None);
    }

    #[test]
    fn the_hop_limit_defaults_to_one_and_is_checked() {
        let s = spec(r#", "local": {}"#);
        assert_eq!(s.local.as_ref().map(|l| l.metadata_hop_limit), Some(1));
        assert!(s.validate().is_ok());
        assert!(spec(r#", "local": {"metadata_hop_limit": 64}"#).validate().is_ok());
        for bad in [0, 65] {
            let err = spec(&format!(r#", "local": {{"metadata_hop_limit": {bad}}}"#))
                .validate()
                .expect_err("out of range");
            assert!(format!("{err:?}").contains("local.metadata_hop_limit"), "{err:?}");
        }
    }
}
