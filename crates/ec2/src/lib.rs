//! The EC2 driver: AWS, or any EC2-compatible endpoint, through the AWS SDK.
//!
//! How Stratus concepts map onto EC2:
//!
//! - **Images** are AMI ids per region (a multi-cloud image names one per EC2 cloud); sizes
//!   are instance types (the cloud's size names: `t3.micro`).
//! - **Launch**: `RunInstances` with the Stratus user-data, the server's tags, and
//!   `ClientToken` = the server id, so a retried launch returns the instance it already made
//!   (and [`Ec2Cloud::launch`] looks for one tagged with the server first; the SDK does not
//!   retry `RunInstances` itself, so every retry goes through that lookup).
//! - **Tags**: a Stratus tag `ns:pred=value` is the EC2 tag `ns:pred` = `value`; the driver's own
//!   are `stratus:server` (the server id) and `Name` (the host name). EC2 reserves keys starting
//!   with `aws:`; such tags are refused.
//! - **Firewall**: one security group per instance, `stratus-<server id>`, holding the
//!   template's rules (an empty list allows everything); replaced in place, deleted with the
//!   instance.
//! - **Elastic IPs**: the cloud's own (`AllocateAddress` in the VPC domain); associating one
//!   that is associated elsewhere moves it in one call.
//! - **Rebundle**: `CreateImage` of the stopped instance; deleting an image deregisters it and
//!   deletes its snapshots.
//!
//! - **Calls per operation** (EC2 throttles per account and action): `list` is one paged
//!   `DescribeInstances` (1,000 per page) filtered on the `stratus:server` tag key and the live
//!   states, nothing per instance: the orchestrator's inventory. `describe` (four calls: the
//!   instance, its security group's rules, its elastic IP) is for single answers (enrolment).
//!   Terminate, tag, reboot and capture look the instance up with one `DescribeInstances`.
//! - **Throttling**: `RequestLimitExceeded` and the other throttling codes, 5xx answers and calls
//!   without an answer are [`CloudError::Throttled`]; the orchestrator backs off per cloud and
//!   retries (the SDK's own standard retries come first).
//!
//! Credentials come from the cloud's Stratus credential (an access key) or, without one, the
//! usual AWS sources (environment, profile, web identity, instance profile). They are never
//! logged: errors carry EC2's error code and message only.

use std::net::IpAddr;

use async_trait::async_trait;
use aws_sdk_ec2::Client;
use aws_sdk_ec2::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_ec2::types::{
    DomainType, Filter, HttpTokensState, InstanceMetadataOptionsRequest, InstanceStateName, IpPermission, IpRange,
    Ipv6Range, ResourceType, Tag as Ec2Tag, TagSpecification,
};
use base64::Engine as _;
use chrono::{DateTime, Utc};
use stratus_cloud::{CapturedImage, CloudDriver, CloudError, Instance, InstanceState, LaunchRequest, USER_DATA_MAX};
use stratus_types::ServerId;
use stratus_types::cloud::DriverKind;
use stratus_types::tag::Tag;
use stratus_types::template::{FirewallRule, Protocol};

/// The SDK, for callers that look at the cloud directly (tests).
pub use aws_sdk_ec2 as sdk;

/// The tag that says which Stratus server an instance is.
pub const SERVER_TAG: &str = "stratus:server";
/// On a captured image: the instance it was captured from (a repeated capture finds it).
pub const SOURCE_INSTANCE_TAG: &str = "stratus:source-instance";

/// Instances per DescribeInstances page of [`CloudDriver::list`] (EC2's maximum).
const LIST_PAGE: i32 = 1000;

/// The states [`CloudDriver::list`] asks for: terminated instances (which EC2 shows for an
/// hour) are left out, so an account that churns does not page through its dead.
const LIVE_STATES: &[&str] = &["pending", "running", "shutting-down", "stopping", "stopped"];

/// How to reach one EC2 cloud.
#[derive(Clone)]
pub struct Ec2Config {
    /// `https://ec2.eu-west-1.amazonaws.com`, an EC2-compatible endpoint, or `None` for AWS's
    /// own endpoint of `region`.
    pub endpoint: Option<String>,
    pub region: String,
    /// An access key (id, secret); `None`: the usual AWS sources.
    pub key: Option<(String, String)>,
}

impl std::fmt::Debug for Ec2Config {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ec2Config")
            .field("endpoint", &self.endpoint)
            .field("region", &self.region)
            .field("key", &self.key.as_ref().map(|(id, _)| format!("{id} (secret hidden)")))
            .finish()
    }
}

/// One EC2 region.
#[derive(Debug, Clone)]
pub struct Ec2Cloud {
    client: Client,
    region: String,
}

impl Ec2Cloud {
    pub async fn new(config: Ec2Config) -> Self {
        let mut loader = aws_config::defaults(aws_config::BehaviorVersion::latest())
            .region(aws_config::Region::new(config.region.clone()));
        if let Some(e) = &config.endpoint {
            loader = loader.endpoint_url(e);
        }
        if let Some((id, secret)) = &config.key {
            loader = loader.credentials_provider(aws_credential_types::Credentials::from_keys(id, secret, None));
        }
        let sdk = loader.load().await;
        Self {
            client: Client::new(&sdk),
            region: config.region,
        }
    }

    pub fn client(&self) -> &Client {
        &self.client
    }

    /// The instance the cloud has for this server (not terminated), if any.
    async fn by_server(&self, server: ServerId) -> Result<Option<Instance>, CloudError> {
        let out = self
            .client
            .describe_instances()
            .filters(
                Filter::builder()
                    .name(format!("tag:{SERVER_TAG}"))
                    .values(server.to_string())
                    .build(),
            )
            .send()
            .await
            .map_err(api)?;
        Ok(out
            .reservations()
            .iter()
            .flat_map(|r| r.instances())
            .filter_map(observe)
            .find(|i| i.state != InstanceState::Terminated))
    }

    /// One instance as DescribeInstances alone reports it (no firewall, no elastic-IP lookup),
    /// with the ids of its own security groups: what terminating, tagging and the other
    /// per-instance calls need, in one call instead of [`CloudDriver::describe`]'s four.
    async fn instance(&self, instance_id: &str) -> Result<Option<(Instance, Vec<String>)>, CloudError> {
        let out = match self.client.describe_instances().instance_ids(instance_id).send().await {
            Ok(out) => out,
            Err(e) if not_found(&e) => return Ok(None),
            Err(e) => return Err(api(e)),
        };
        let Some(raw) = out.reservations().iter().flat_map(|r| r.instances()).next() else {
            return Ok(None);
        };
        let Some(inst) = observe(raw) else { return Ok(None) };
        let own = Self::group_name(inst.server);
        let groups = raw
            .security_groups()
            .iter()
            .filter(|g| g.group_name() == Some(own.as_str()))
            .filter_map(|g| g.group_id().map(str::to_string))
            .collect();
        Ok(Some((inst, groups)))
    }

    /// [`Self::instance`], or "no such instance".
    async fn existing(&self, instance_id: &str) -> Result<(Instance, Vec<String>), CloudError> {
        self.instance(instance_id)
            .await?
            .ok_or_else(|| CloudError::NoSuchInstance(instance_id.into()))
    }

    fn group_name(server: ServerId) -> String {
        format!("stratus-{server}")
    }

    /// The instance's own security group (made if missing), holding `rules`.
    async fn group_for(&self, server: ServerId, rules: &[FirewallRule]) -> Result<String, CloudError> {
        let name = Self::group_name(server);
        let existing = self
            .client
            .describe_security_groups()
            .filters(Filter::builder().name("group-name").values(&name).build())
            .send()
            .await
            .map_err(api)?;
        if let Some(id) = existing.security_groups().first().and_then(|g| g.group_id()) {
            self.set_rules(id, rules).await?;
            return Ok(id.to_string());
        }
        let created = self
            .client
            .create_security_group()
            .group_name(&name)
            .description(format!("Stratus server {server}: the template's firewall rules"))
            .send()
            .await;
        let id = match created {
            Ok(out) => out
                .group_id()
                .ok_or_else(|| CloudError::Refused("CreateSecurityGroup returned no group id".into()))?
                .to_string(),
            // A retried create whose first answer was lost (the SDK retries 5xx): the group
            // exists; it may hold some rules already, so replace them.
            Err(e) if code(&e) == Some("InvalidGroup.Duplicate") => {
                // Not listed yet (EC2 is eventually consistent): a later attempt finds it.
                let id = self.groups_named(&name).await?.into_iter().next().ok_or_else(|| {
                    CloudError::Throttled(format!("security group {name} exists but is not listed yet"))
                })?;
                self.set_rules(&id, rules).await?;
                return Ok(id);
            }
            Err(e) => return Err(api(e)),
        };
        // A new group has no inbound rules: nothing to revoke, so no need to read them.
        self.authorize(&id, rules).await?;
        Ok(id)
    }

    /// The ids of the security groups called `name`.
    async fn groups_named(&self, name: &str) -> Result<Vec<String>, CloudError> {
        let out = self
            .client
            .describe_security_groups()
            .filters(Filter::builder().name("group-name").values(name).build())
            .send()
            .await
            .map_err(api)?;
        Ok(out
            .security_groups()
            .iter()
            .filter_map(|g| g.group_id().map(str::to_string))
            .collect())
    }

    /// Replace a security group's inbound rules with `rules`.
    async fn set_rules(&self, group: &str, rules: &[FirewallRule]) -> Result<(), CloudError> {
        let current = self
            .client
            .describe_security_groups()
            .group_ids(group)
            .send()
            .await
            .map_err(api)?;
        let old: Vec<IpPermission> = current
            .security_groups()
            .first()
            .map(|g| g.ip_permissions().to_vec())
            .unwrap_or_default();
        if !old.is_empty() {
            let revoked = self
                .client
                .revoke_security_group_ingress()
                .group_id(group)
                .set_ip_permissions(Some(old))
                .send()
                .await;
            match revoked {
                // A retry whose first answer was lost: already revoked.
                Err(e) if code(&e) != Some("InvalidPermission.NotFound") => return Err(api(e)),
                _ => {}
            }
        }
        self.authorize(group, rules).await
    }

    async fn authorize(&self, group: &str, rules: &[FirewallRule]) -> Result<(), CloudError> {
        let new = permissions(rules);
        if new.is_empty() {
            return Ok(());
        }
        match self
            .client
            .authorize_security_group_ingress()
            .group_id(group)
            .set_ip_permissions(Some(new))
            .send()
            .await
        {
            // A retry whose first answer was lost: the rules are in place.
            Err(e) if code(&e) == Some("InvalidPermission.Duplicate") => Ok(()),
            other => other.map(drop).map_err(api),
        }
    }

    async fn allocation(&self, ip: IpAddr) -> Result<(String, Option<String>), CloudError> {
        let out = self
            .client
            .describe_addresses()
            .public_ips(ip.to_string())
            .send()
            .await
            .map_err(|e| match code(&e) {
                Some("InvalidAddress.NotFound" | "InvalidParameterValue") => {
                    CloudError::Invalid(format!("{ip} is not an elastic IP of this cloud"))
                }
                _ => api(e),
            })?;
        let a = out
            .addresses()
            .first()
            .ok_or_else(|| CloudError::Invalid(format!("{ip} is not an elastic IP of this cloud")))?;
        let alloc = a
            .allocation_id()
            .ok_or_else(|| CloudError::Invalid(format!("{ip} has no allocation id (a classic address?)")))?;
        Ok((alloc.to_string(), a.association_id().map(str::to_string)))
    }

    /// The instance's public address: its elastic IP if one is associated with it, else the
    /// address EC2 gave it, unless that is an elastic IP now associated elsewhere (some
    /// endpoints report a moved address on its old instance for a while).
    async fn public_ip(&self, inst: &Instance) -> Result<Option<IpAddr>, CloudError> {
        let mine = self
            .client
            .describe_addresses()
            .filters(Filter::builder().name("instance-id").values(&inst.id).build())
            .send()
            .await
            .map_err(api)?;
        if let Some(ip) = mine.addresses().iter().find_map(|a| a.public_ip()?.parse().ok()) {
            return Ok(Some(ip));
        }
        let Some(ip) = inst.public_ip else { return Ok(None) };
        let elastic = match self.client.describe_addresses().public_ips(ip.to_string()).send().await {
            Ok(out) => !out.addresses().is_empty(),
            Err(_) => false,
        };
        Ok((!elastic).then_some(ip))
    }

    /// Allocate a new elastic IP (in the VPC domain).
    pub async fn allocate_eip(&self) -> Result<IpAddr, CloudError> {
        let out = self
            .client
            .allocate_address()
            .domain(DomainType::Vpc)
            .send()
            .await
            .map_err(api)?;
        out.public_ip()
            .and_then(|ip| ip.parse().ok())
            .ok_or_else(|| CloudError::Refused("AllocateAddress returned no address".into()))
    }

    /// Give an elastic IP back.
    pub async fn release_eip(&self, ip: IpAddr) -> Result<(), CloudError> {
        let (alloc, assoc) = self.allocation(ip).await?;
        if let Some(a) = assoc {
            self.client
                .disassociate_address()
                .association_id(a)
                .send()
                .await
                .map_err(api)?;
        }
        self.client
            .release_address()
            .allocation_id(alloc)
            .send()
            .await
            .map_err(api)?;
        Ok(())
    }
}

/// EC2's error code of a failed call.
fn code<E: ProvideErrorMetadata>(e: &E) -> Option<&str> {
    e.code()
}

/// EC2's codes for "slow down" and "try again": throttling (a token bucket per account and
/// action) and its own transient failures. These never mean the request was wrong.
const TRANSIENT_CODES: &[&str] = &[
    "RequestLimitExceeded",
    "Throttling",
    "ThrottlingException",
    "RequestThrottled",
    "ServiceUnavailable",
    "Unavailable",
    "InternalError",
    "InternalFailure",
];

/// A failed call as a cloud error: EC2's code and message, nothing else (no request, no
/// credentials). Throttling, 5xx answers and calls that got no answer (a timeout, a refused or
/// broken connection) are [`CloudError::Throttled`]: the orchestrator backs off and retries them,
/// which is safe because every call it repeats is idempotent (`ClientToken`, tags).
fn api<E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static>(e: SdkError<E>) -> CloudError {
    let status = e.raw_response().map(|r| r.status().as_u16());
    // Only a timeout or a connection that failed is "no answer": credentials that cannot be
    // resolved or an endpoint that cannot be built also fail to dispatch, and waiting does not
    // cure those, so they are reported, not retried for ever.
    let no_answer = match &e {
        SdkError::TimeoutError(_) => true,
        SdkError::DispatchFailure(d) => d.is_timeout() || d.is_io(),
        _ => false,
    };
    match (e.code(), e.message()) {
        (Some(c), m) if TRANSIENT_CODES.contains(&c) => CloudError::Throttled(format!("{c}: {}", m.unwrap_or(""))),
        _ if no_answer || status.is_some_and(|s| s >= 500) => CloudError::Throttled(match status {
            Some(s) => format!("HTTP {s} from the EC2 endpoint"),
            None => "no answer from the EC2 endpoint".into(),
        }),
        (Some("Unsupported" | "InsufficientInstanceCapacity" | "InstanceLimitExceeded"), m) => {
            CloudError::Capacity(m.unwrap_or("no capacity").to_string())
        }
        (Some(c), m) => CloudError::Refused(format!("{c}: {}", m.unwrap_or(""))),
        (None, _) => CloudError::Api(Box::new(e)),
    }
}

/// A failed call about one instance: "no such instance" when EC2 says so, else as [`api`].
fn for_instance<E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static>(
    id: &str,
) -> impl FnOnce(SdkError<E>) -> CloudError + '_ {
    move |e| {
        if not_found(&e) {
            CloudError::NoSuchInstance(id.into())
        } else {
            api(e)
        }
    }
}

fn not_found<E: ProvideErrorMetadata>(e: &E) -> bool {
    matches!(
        e.code(),
        Some("InvalidInstanceID.NotFound" | "InvalidInstanceID.Malformed")
    )
}

/// Firewall rules as EC2 permissions; no rules: everything is allowed.
fn permissions(rules: &[FirewallRule]) -> Vec<IpPermission> {
    if rules.is_empty() {
        return vec![
            IpPermission::builder()
                .ip_protocol("-1")
                .ip_ranges(IpRange::builder().cidr_ip("0.0.0.0/0").build())
                .ipv6_ranges(Ipv6Range::builder().cidr_ipv6("::/0").build())
                .build(),
        ];
    }
    rules
        .iter()
        .map(|r| {
            let (proto, from, to) = match (r.protocol, r.ports) {
                (Protocol::Icmp, _) => ("icmp", -1, -1),
                (Protocol::Tcp, Some(p)) => ("tcp", i32::from(p.first), i32::from(p.last)),
                (Protocol::Udp, Some(p)) => ("udp", i32::from(p.first), i32::from(p.last)),
                (Protocol::Tcp, None) => ("tcp", 0, 65535),
                (Protocol::Udp, None) => ("udp", 0, 65535),
            };
            let b = IpPermission::builder().ip_protocol(proto).from_port(from).to_port(to);
            let b = match r.source {
                ipnet::IpNet::V4(n) => b.ip_ranges(IpRange::builder().cidr_ip(n.to_string()).build()),
                ipnet::IpNet::V6(n) => b.ipv6_ranges(Ipv6Range::builder().cidr_ipv6(n.to_string()).build()),
            };
            b.build()
        })
        .collect()
}

/// EC2 permissions back as firewall rules (one per address range); the allow-everything
/// permission of an empty list is the empty list again.
fn rules_from(perms: &[IpPermission]) -> Vec<FirewallRule> {
    let mut out = vec![];
    for p in perms {
        let protocol = match p.ip_protocol() {
            Some("tcp") => Protocol::Tcp,
            Some("udp") => Protocol::Udp,
            Some("icmp") => Protocol::Icmp,
            Some("-1") => return vec![],
            _ => continue,
        };
        let ports = match (protocol, p.from_port(), p.to_port()) {
            (Protocol::Icmp, _, _) => None,
            (_, Some(a), Some(b)) => Some(stratus_types::template::Ports {
                first: u16::try_from(a).unwrap_or(0),
                last: u16::try_from(b).unwrap_or(u16::MAX),
            }),
            _ => None,
        };
        let sources = p
            .ip_ranges()
            .iter()
            .filter_map(|r| r.cidr_ip())
            .chain(p.ipv6_ranges().iter().filter_map(|r| r.cidr_ipv6()))
            .filter_map(|c| c.parse::<ipnet::IpNet>().ok());
        for source in sources {
            out.push(FirewallRule {
                protocol,
                ports,
                source,
            });
        }
    }
    out
}

/// Stratus tags as EC2 tags, plus the driver's own.
fn ec2_tags(server: ServerId, hostname: &str, tags: &[Tag]) -> Result<Vec<Ec2Tag>, CloudError> {
    let mut out = vec![
        Ec2Tag::builder().key(SERVER_TAG).value(server.to_string()).build(),
        Ec2Tag::builder().key("Name").value(hostname).build(),
    ];
    for t in tags {
        let key = format!("{}:{}", t.namespace(), t.predicate());
        if key.starts_with("aws:") {
            return Err(CloudError::Invalid(format!(
                "tag {t}: EC2 reserves keys starting with aws:"
            )));
        }
        out.push(Ec2Tag::builder().key(key).value(t.value()).build());
    }
    if out.len() > 50 {
        return Err(CloudError::Invalid(format!(
            "{} tags; EC2 keeps at most 50 per instance (2 are Stratus's own)",
            out.len()
        )));
    }
    Ok(out)
}

/// The Stratus tags among an instance's EC2 tags.
fn stratus_tags(tags: &[Ec2Tag]) -> Vec<Tag> {
    tags.iter()
        .filter(|t| t.key() != Some(SERVER_TAG) && t.key() != Some("Name"))
        .filter_map(|t| Tag::parse(&format!("{}={}", t.key()?, t.value().unwrap_or(""))).ok())
        .collect()
}

/// An EC2 instance as the cloud-neutral [`Instance`]; `None` for one Stratus did not launch.
fn observe(i: &aws_sdk_ec2::types::Instance) -> Option<Instance> {
    let server: ServerId = i
        .tags()
        .iter()
        .find(|t| t.key() == Some(SERVER_TAG))
        .and_then(|t| t.value())
        .and_then(|v| v.parse::<uuid::Uuid>().ok())
        .map(ServerId)?;
    let state = match i.state().and_then(|s| s.name()) {
        Some(InstanceStateName::Pending) => InstanceState::Pending,
        Some(InstanceStateName::Running) => InstanceState::Running,
        Some(InstanceStateName::Stopping | InstanceStateName::ShuttingDown) => InstanceState::Stopping,
        Some(InstanceStateName::Stopped) => InstanceState::Stopped,
        _ => InstanceState::Terminated,
    };
    Some(Instance {
        id: i.instance_id()?.to_string(),
        server,
        state,
        state_reason: i.state_reason().and_then(|r| r.message()).map(str::to_string),
        private_ip: i.private_ip_address().and_then(|a| a.parse().ok()),
        public_ip: i.public_ip_address().and_then(|a| a.parse().ok()),
        tags: stratus_tags(i.tags()),
        firewall: vec![],
        launched_at: i
            .launch_time()
            .and_then(|t| DateTime::<Utc>::from_timestamp(t.secs(), t.subsec_nanos()))
            .unwrap_or_else(Utc::now),
    })
}

#[async_trait]
impl CloudDriver for Ec2Cloud {
    fn kind(&self) -> DriverKind {
        DriverKind::Ec2
    }

    async fn launch(&self, req: LaunchRequest) -> Result<Instance, CloudError> {
        if req.user_data.len() > USER_DATA_MAX {
            return Err(CloudError::UserDataTooLarge(req.user_data.len()));
        }
        if let Some(existing) = self.by_server(req.server).await? {
            return Ok(existing);
        }
        if !self.image_exists(&req.native_image).await? {
            return Err(CloudError::NoSuchImage(req.native_image));
        }
        let tags = ec2_tags(req.server, &req.hostname, &req.tags)?;
        let group = self.group_for(req.server, &req.firewall).await?;
        let mut run = self
            .client
            .run_instances()
            .image_id(&req.native_image)
            .instance_type(req.size.name.as_str().into())
            .min_count(1)
            .max_count(1)
            .client_token(req.server.to_string())
            .user_data(base64::engine::general_purpose::STANDARD.encode(&req.user_data))
            .security_group_ids(group)
            .tag_specifications(
                TagSpecification::builder()
                    .resource_type(ResourceType::Instance)
                    .set_tags(Some(tags))
                    .build(),
            );
        if req.metadata_tokens_required {
            run = run.metadata_options(
                InstanceMetadataOptionsRequest::builder()
                    .http_tokens(HttpTokensState::Required)
                    .build(),
            );
        }
        // No retry inside the SDK: a RunInstances whose answer was lost is retried by the
        // orchestrator, through this method, which looks for the server's instance first.
        // `ClientToken` alone would do on AWS, but not on every EC2-compatible endpoint
        // (moto records it and launches again).
        let once =
            aws_sdk_ec2::config::Builder::default().retry_config(aws_sdk_ec2::config::retry::RetryConfig::disabled());
        let out = run.customize().config_override(once).send().await.map_err(api)?;
        let inst = out
            .instances()
            .first()
            .and_then(observe)
            .ok_or_else(|| CloudError::Refused("RunInstances returned no instance".into()))?;
        tracing::info!(instance = %inst.id, region = %self.region, "EC2 instance launched");
        Ok(Instance {
            firewall: req.firewall,
            ..inst
        })
    }

    async fn describe(&self, instance_id: &str) -> Result<Option<Instance>, CloudError> {
        let out = match self.client.describe_instances().instance_ids(instance_id).send().await {
            Ok(out) => out,
            Err(e) if not_found(&e) => return Ok(None),
            Err(e) => return Err(api(e)),
        };
        let Some(raw) = out.reservations().iter().flat_map(|r| r.instances()).next() else {
            return Ok(None);
        };
        let Some(mut inst) = observe(raw) else {
            return Ok(None);
        };
        let groups: Vec<String> = raw
            .security_groups()
            .iter()
            .filter_map(|g| g.group_id().map(str::to_string))
            .collect();
        if !groups.is_empty() && inst.state != InstanceState::Terminated {
            let g = self
                .client
                .describe_security_groups()
                .set_group_ids(Some(groups))
                .send()
                .await
                .map_err(api)?;
            let perms: Vec<IpPermission> = g
                .security_groups()
                .iter()
                .flat_map(|g| g.ip_permissions().iter().cloned())
                .collect();
            inst.firewall = rules_from(&perms);
        }
        inst.public_ip = self.public_ip(&inst).await?;
        Ok(Some(inst))
    }

    async fn list(&self) -> Result<Vec<Instance>, CloudError> {
        let mut out = vec![];
        let mut pages = self
            .client
            .describe_instances()
            .filters(Filter::builder().name("tag-key").values(SERVER_TAG).build())
            .filters(
                Filter::builder()
                    .name("instance-state-name")
                    .set_values(Some(LIVE_STATES.iter().map(|s| s.to_string()).collect()))
                    .build(),
            )
            .max_results(LIST_PAGE)
            .into_paginator()
            .send();
        while let Some(page) = pages.next().await {
            let page = page.map_err(api)?;
            out.extend(
                page.reservations()
                    .iter()
                    .flat_map(|r| r.instances())
                    .filter_map(observe),
            );
        }
        Ok(out)
    }

    async fn stop(&self, instance_id: &str) -> Result<(), CloudError> {
        self.client
            .stop_instances()
            .instance_ids(instance_id)
            .send()
            .await
            .map(drop)
            .map_err(for_instance(instance_id))
    }

    async fn start(&self, instance_id: &str) -> Result<(), CloudError> {
        self.client
            .start_instances()
            .instance_ids(instance_id)
            .send()
            .await
            .map(drop)
            .map_err(for_instance(instance_id))
    }

    async fn reboot(&self, instance_id: &str) -> Result<(), CloudError> {
        let state = self.existing(instance_id).await?.0.state;
        if state != InstanceState::Running {
            return Err(CloudError::WrongState {
                id: instance_id.into(),
                state,
                action: "reboot",
                needs: "running",
            });
        }
        self.client
            .reboot_instances()
            .instance_ids(instance_id)
            .send()
            .await
            .map(drop)
            .map_err(api)
    }

    async fn terminate(&self, instance_id: &str) -> Result<(), CloudError> {
        let Some((inst, mut groups)) = self.instance(instance_id).await? else {
            return Ok(());
        };
        if inst.state != InstanceState::Terminated {
            self.client
                .terminate_instances()
                .instance_ids(instance_id)
                .send()
                .await
                .map_err(for_instance(instance_id))?;
        } else if groups.is_empty() {
            // A repeated termination: a terminated instance may no longer name its groups.
            groups = self
                .groups_named(&Self::group_name(inst.server))
                .await
                .unwrap_or_default();
        }
        // Its own security group goes too, once nothing uses it (best effort: on AWS the
        // instance takes a while to let go of it; a repeated termination retries).
        for id in groups {
            let _ = self.client.delete_security_group().group_id(id).send().await;
        }
        Ok(())
    }

    async fn associate_address(&self, instance_id: &str, ip: IpAddr) -> Result<(), CloudError> {
        let (alloc, _) = self.allocation(ip).await?;
        self.client
            .associate_address()
            .allocation_id(alloc)
            .instance_id(instance_id)
            .allow_reassociation(true)
            .send()
            .await
            .map(drop)
            .map_err(for_instance(instance_id))
    }

    async fn disassociate_address(&self, ip: IpAddr) -> Result<(), CloudError> {
        let (_, assoc) = self.allocation(ip).await?;
        if let Some(a) = assoc {
            self.client
                .disassociate_address()
                .association_id(a)
                .send()
                .await
                .map_err(api)?;
        }
        Ok(())
    }

    async fn set_tags(&self, instance_id: &str, tags: Vec<Tag>) -> Result<(), CloudError> {
        let (inst, _) = self.existing(instance_id).await?;
        let want = ec2_tags(inst.server, "", &tags)?;
        let want: Vec<Ec2Tag> = want.into_iter().skip(2).collect();
        let stale: Vec<Ec2Tag> = inst
            .tags
            .iter()
            .filter(|t| !tags.contains(t))
            .map(|t| {
                Ec2Tag::builder()
                    .key(format!("{}:{}", t.namespace(), t.predicate()))
                    .build()
            })
            .filter(|old| !want.iter().any(|w| w.key() == old.key()))
            .collect();
        if !stale.is_empty() {
            self.client
                .delete_tags()
                .resources(instance_id)
                .set_tags(Some(stale))
                .send()
                .await
                .map_err(api)?;
        }
        if !want.is_empty() {
            self.client
                .create_tags()
                .resources(instance_id)
                .set_tags(Some(want))
                .send()
                .await
                .map_err(api)?;
        }
        Ok(())
    }

    async fn set_firewall(&self, instance_id: &str, rules: Vec<FirewallRule>) -> Result<(), CloudError> {
        let (inst, _) = self.existing(instance_id).await?;
        self.group_for(inst.server, &rules).await.map(drop)
    }

    async fn console_output(&self, instance_id: &str, max: usize) -> Result<String, CloudError> {
        let out = self
            .client
            .get_console_output()
            .instance_id(instance_id)
            .latest(true)
            .send()
            .await
            .map_err(for_instance(instance_id))?;
        let text = out
            .output()
            .and_then(|b| base64::engine::general_purpose::STANDARD.decode(b).ok())
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default();
        let start = text.len().saturating_sub(max);
        let start = (start..text.len())
            .find(|i| text.is_char_boundary(*i))
            .unwrap_or(text.len());
        Ok(text[start..].to_string())
    }

    async fn allocate_address(&self) -> Result<Option<IpAddr>, CloudError> {
        self.allocate_eip().await.map(Some)
    }

    async fn release_address(&self, ip: IpAddr) -> Result<(), CloudError> {
        match self.release_eip(ip).await {
            Err(CloudError::Invalid(_)) => Ok(()), // already gone
            other => other,
        }
    }

    async fn image_exists(&self, native_id: &str) -> Result<bool, CloudError> {
        if !native_id.starts_with("ami-") {
            return Ok(false);
        }
        match self.client.describe_images().image_ids(native_id).send().await {
            Ok(out) => Ok(out.images().iter().any(|i| i.image_id() == Some(native_id))),
            Err(e)
                if matches!(
                    code(&e),
                    Some("InvalidAMIID.NotFound" | "InvalidAMIID.Malformed" | "InvalidAMIID.Unavailable")
                ) =>
            {
                Ok(false)
            }
            Err(e) => Err(api(e)),
        }
    }

    async fn capture_image(&self, instance_id: &str, name: &str) -> Result<CapturedImage, CloudError> {
        if name.is_empty() || name.len() > 128 || name.chars().any(char::is_control) {
            return Err(CloudError::Invalid(format!(
                "image name {:?} must be 1-128 characters without control characters",
                stratus_types::name::truncate(name)
            )));
        }
        let state = self.existing(instance_id).await?.0.state;
        if state != InstanceState::Stopped {
            return Err(CloudError::WrongState {
                id: instance_id.into(),
                state,
                action: "capture an image",
                needs: "stopped",
            });
        }
        // Captured before under this name (a control plane that died before recording it).
        let earlier = self
            .client
            .describe_images()
            .owners("self")
            .filters(Filter::builder().name("name").values(name).build())
            .filters(
                Filter::builder()
                    .name("state")
                    .values("available")
                    .values("pending")
                    .build(),
            )
            .filters(
                Filter::builder()
                    .name(format!("tag:{SOURCE_INSTANCE_TAG}"))
                    .values(instance_id)
                    .build(),
            )
            .send()
            .await
            .map_err(api)?;
        if let Some(id) = earlier.images().iter().find_map(|i| i.image_id()) {
            return Ok(CapturedImage {
                native_id: id.to_string(),
                size_bytes: None,
            });
        }
        let out = self
            .client
            .create_image()
            .instance_id(instance_id)
            .name(name)
            .tag_specifications(
                TagSpecification::builder()
                    .resource_type(ResourceType::Image)
                    .tags(Ec2Tag::builder().key(SOURCE_INSTANCE_TAG).value(instance_id).build())
                    .build(),
            )
            .description(format!("Stratus: captured from {instance_id}"))
            .no_reboot(true)
            .send()
            .await
            .map_err(api)?;
        let id = out
            .image_id()
            .ok_or_else(|| CloudError::Refused("CreateImage returned no image id".into()))?;
        Ok(CapturedImage {
            native_id: id.to_string(),
            size_bytes: None,
        })
    }

    async fn delete_image(&self, native_id: &str) -> Result<(), CloudError> {
        let images = match self.client.describe_images().image_ids(native_id).send().await {
            Ok(out) => out.images().to_vec(),
            Err(e)
                if matches!(
                    code(&e),
                    Some("InvalidAMIID.NotFound" | "InvalidAMIID.Malformed" | "InvalidAMIID.Unavailable")
                ) =>
            {
                return Ok(());
            }
            Err(e) => return Err(api(e)),
        };
        let Some(image) = images.iter().find(|i| i.image_id() == Some(native_id)) else {
            return Ok(());
        };
        let snapshots: Vec<String> = image
            .block_device_mappings()
            .iter()
            .filter_map(|m| m.ebs().and_then(|e| e.snapshot_id()).map(str::to_string))
            .collect();
        self.client
            .deregister_image()
            .image_id(native_id)
            .send()
            .await
            .map_err(api)?;
        for s in snapshots {
            if let Err(e) = self.client.delete_snapshot().snapshot_id(&s).send().await
                && !matches!(code(&e), Some("InvalidSnapshot.NotFound"))
            {
                return Err(api(e));
            }
        }
        Ok(())
    }

    fn as_any(&self) -> &dyn std::any::Any {
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tags_map_both_ways_and_reserved_keys_are_refused() {
        let server = ServerId::new();
        let tags = vec![Tag::parse("lb:pool=www").unwrap(), Tag::parse("role:tier=web").unwrap()];
        let ec2 = ec2_tags(server, "web-1", &tags).unwrap();
        assert_eq!(ec2[0].key(), Some(SERVER_TAG));
        assert_eq!(ec2[1].key(), Some("Name"));
        assert_eq!((ec2[2].key(), ec2[2].value()), (Some("lb:pool"), Some("www")));
        assert_eq!(stratus_tags(&ec2), tags, "the driver's own tags are not Stratus tags");
        assert!(ec2_tags(server, "x", &[Tag::parse("aws:x=y").unwrap()]).is_err());
        let many: Vec<Tag> = (0..49).map(|i| Tag::parse(&format!("n:p{i}=v")).unwrap()).collect();
        assert!(ec2_tags(server, "x", &many).is_err(), "EC2's 50-tag limit");
    }

    #[test]
    fn firewall_rules_become_permissions() {
        let rules: Vec<FirewallRule> = serde_json::from_str(
            r#"[{"protocol":"tcp","ports":"80-81"},{"protocol":"icmp","source":"10.0.0.0/8"},{"protocol":"udp","ports":53,"source":"::/0"}]"#,
        )
        .unwrap();
        let p = permissions(&rules);
        assert_eq!(
            (p[0].ip_protocol(), p[0].from_port(), p[0].to_port()),
            (Some("tcp"), Some(80), Some(81))
        );
        assert_eq!(p[1].ip_ranges()[0].cidr_ip(), Some("10.0.0.0/8"));
        assert_eq!(p[2].ipv6_ranges()[0].cidr_ipv6(), Some("::/0"));
        let open = permissions(&[]);
        assert_eq!(open[0].ip_protocol(), Some("-1"), "no rules: everything");
        assert_eq!(rules_from(&p), rules, "and back");
        assert!(rules_from(&open).is_empty());
    }

    #[test]
    fn credentials_never_print() {
        let c = Ec2Config {
            endpoint: None,
            region: "eu-west-1".into(),
            key: Some(("AKIAEXAMPLE".into(), "wJalrXUtnFEMI-secret".into())),
        };
        assert!(!format!("{c:?}").contains("wJalr"));
    }
}
