//! Server templates: image + ordered scripts + tags + firewall rules, versioned by content.
//!
//! A template's *content hash* covers everything that decides what a booted server holds: the
//! template's own fields and the body, inputs and frequency of every script it names. Changing
//! a script therefore changes the hash of every template that uses it, which is what marks a
//! cached (rebundled) image as stale.

use chrono::{DateTime, Utc};
use std::collections::BTreeSet;
use std::fmt;
use std::str::FromStr;

use sha2::{Digest, Sha256};

use crate::input::Inputs;
use crate::script::Script;
use crate::size::SizeRequest;
use crate::tag::Tag;
use crate::{FieldError, Invalid, Name, TemplateId};

pub const SCRIPTS_PER_PHASE_MAX: usize = 64;
pub const TAGS_MAX: usize = 64;
pub const FIREWALL_RULES_MAX: usize = 128;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    Tcp,
    Udp,
    Icmp,
}

/// A port or an inclusive range: `80`, `8000-8100`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(into = "String")]
pub struct Ports {
    pub first: u16,
    pub last: u16,
}

impl<'de> serde::Deserialize<'de> for Ports {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl serde::de::Visitor<'_> for V {
            type Value = Ports;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a port number or a range such as \"8000-8100\"")
            }
            fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<Ports, E> {
                Ports::parse(&v.to_string()).map_err(E::custom)
            }
            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<Ports, E> {
                Ports::parse(&v.to_string()).map_err(E::custom)
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Ports, E> {
                Ports::parse(v).map_err(E::custom)
            }
        }
        d.deserialize_any(V)
    }
}

impl Ports {
    pub fn parse(s: &str) -> Result<Self, FieldError> {
        let bad = || {
            FieldError::new(
                "",
                format!(
                    "{:?} is not a port (1-65535) or range like 8000-8100",
                    crate::name::truncate(s)
                ),
            )
        };
        let port = |p: &str| p.trim().parse::<u16>().ok().filter(|&n| n > 0).ok_or_else(bad);
        let (first, last) = match s.split_once('-') {
            Some((a, b)) => (port(a)?, port(b)?),
            None => (port(s)?, port(s)?),
        };
        if first > last {
            return Err(bad());
        }
        Ok(Self { first, last })
    }
}

impl fmt::Display for Ports {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.first == self.last {
            write!(f, "{}", self.first)
        } else {
            write!(f, "{}-{}", self.first, self.last)
        }
    }
}

impl FromStr for Ports {
    type Err = FieldError;
    fn from_str(s: &str) -> Result<Self, FieldError> {
        Self::parse(s)
    }
}

impl From<Ports> for String {
    fn from(p: Ports) -> String {
        p.to_string()
    }
}

crate::string_schema!(Ports, "Ports", "A port or an inclusive port range.", "8000-8100");

/// Allow inbound traffic. Everything not allowed is dropped.
#[derive(Debug, Clone, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct FirewallRule {
    pub protocol: Protocol,
    /// Required for tcp and udp; not allowed for icmp.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ports: Option<Ports>,
    #[serde(default = "anywhere")]
    #[schema(value_type = String, example = "10.0.0.0/8")]
    pub source: ipnet::IpNet,
}

fn anywhere() -> ipnet::IpNet {
    ipnet::IpNet::V4(ipnet::Ipv4Net::default())
}

/// EC2's `HttpTokens`: `optional` answers IMDSv1 and v2; `required` answers only requests that
/// carry an IMDSv2 session token.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum MetadataTokens {
    #[default]
    Optional,
    Required,
}

impl MetadataTokens {
    pub fn is_optional(&self) -> bool {
        *self == Self::Optional
    }
}

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TemplateSpec {
    pub name: Name,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub description: String,
    /// The multi-cloud image (by name).
    pub image: Name,
    /// Overrides the image's default size.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size: Option<SizeRequest>,
    /// Run in order at boot, each according to its frequency.
    #[serde(default)]
    pub boot_scripts: Vec<Name>,
    /// Offered for `stratus run` on servers of this template.
    #[serde(default)]
    pub operational_scripts: Vec<Name>,
    /// Run in order before the instance is destroyed.
    #[serde(default)]
    pub decommission_scripts: Vec<Name>,
    /// Every server of the template starts with these.
    #[serde(default)]
    pub default_tags: Vec<Tag>,
    #[serde(default)]
    pub firewall: Vec<FirewallRule>,
    /// Whether the metadata service answers plain IMDSv1 requests (EC2's `HttpTokens`).
    #[serde(default, skip_serializing_if = "MetadataTokens::is_optional")]
    pub metadata_tokens: MetadataTokens,
    /// Input values for the scripts; deployment and server inputs override them.
    #[serde(default)]
    pub inputs: Inputs,
    /// An application archive deployed before the boot scripts run (and redeployed with
    /// `stratus deploy`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub application: Option<Application>,
    /// Files kept in step with artifact-store objects (see [`WatchedFile`]).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub watch: Vec<WatchedFile>,
    /// How managed SSH treats this template's servers.
    #[serde(default, skip_serializing_if = "SshPolicy::is_default")]
    pub ssh: SshPolicy,
}

/// Managed SSH on a template's servers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SshPolicy {
    /// A revoked user's open sessions are ended (their processes killed) at once. Off: only
    /// new logins are refused.
    #[serde(default = "yes")]
    pub end_sessions: bool,
    /// Managed SSH is the only way in: `authorized_keys` of accounts Stratus did not make
    /// (root's, the image's users') are emptied. Off: they are left alone.
    #[serde(default)]
    pub exclusive: bool,
}

fn yes() -> bool {
    true
}

impl Default for SshPolicy {
    fn default() -> Self {
        Self {
            end_sessions: true,
            exclusive: false,
        }
    }
}

impl SshPolicy {
    pub fn is_default(&self) -> bool {
        *self == Self::default()
    }
}

/// Most watched files per template.
pub const WATCH_MAX: usize = 16;
/// The shortest and longest re-check interval of a watched file, in seconds.
pub const WATCH_INTERVAL: std::ops::RangeInclusive<u32> = 5..=86_400;

/// A file on the server kept equal to an object of the artifact store. When the object changes
/// the control plane tells the agent at once; the agent also re-checks the file every
/// `interval_secs` and puts the object's content back if the file drifted. Whenever the
/// content on the server changes (not at the first boot, whose boot scripts see it anyway),
/// `script` runs on the server as an operational run.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct WatchedFile {
    /// Absolute path on the server.
    pub path: String,
    /// `BUCKET/KEY` in the artifact store.
    pub object: String,
    /// Permission bits (default 0644; in TOML `0o640`).
    #[serde(default = "default_mode")]
    pub mode: u32,
    /// Run when the content changed (a script; it need not be listed as operational).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub script: Option<Name>,
    #[serde(default = "default_interval")]
    pub interval_secs: u32,
}

fn default_mode() -> u32 {
    0o644
}

fn default_interval() -> u32 {
    60
}

impl WatchedFile {
    fn check(&self, at: &str, errs: &mut Invalid) {
        let path_ok = self.path.starts_with('/')
            && self.path.len() > 1
            && self.path.len() <= 4096
            && !self.path.ends_with('/')
            && self.path[1..]
                .split('/')
                .all(|s| !s.is_empty() && s != "." && s != "..")
            && !self.path.contains('\0');
        if !path_ok {
            errs.push(FieldError::new(
                format!("{at}.path"),
                "must be an absolute path without empty, '.' or '..' segments",
            ));
        }
        if let Err(e) = crate::artifact::split_path(&self.object) {
            errs.push(FieldError::new(format!("{at}.object"), e.problem));
        }
        if self.mode > 0o777 {
            errs.push(FieldError::new(
                format!("{at}.mode"),
                "must be permission bits (at most 0o777)",
            ));
        }
        if !WATCH_INTERVAL.contains(&self.interval_secs) {
            errs.push(FieldError::new(
                format!("{at}.interval_secs"),
                format!("must be {}-{}", WATCH_INTERVAL.start(), WATCH_INTERVAL.end()),
            ));
        }
    }
}

/// An application shipped as an archive in the artifact store. The agent unpacks it into
/// `/srv/NAME/releases/VERSION` and switches `/srv/NAME/current` to it in one rename; the
/// activation command (if any) runs after the switch, and if it fails the previous release is
/// switched back.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Application {
    /// The directory under `/srv`.
    pub name: Name,
    /// `BUCKET/KEY` of a tar.gz or zip archive in the artifact store.
    pub archive: String,
    /// A shell command run after each switch (`nginx -s reload`), with `STRATUS_APP_DIR`
    /// pointing at the release.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub activate: Option<String>,
}

/// Longest activation command.
pub const ACTIVATE_MAX: usize = 4096;

impl Application {
    pub fn validate(&self) -> Result<(), Invalid> {
        let mut errs = Invalid::default();
        if let Err(e) = crate::artifact::split_path(&self.archive) {
            errs.push(FieldError::new("application.archive", e.problem));
        }
        if let Some(a) = &self.activate
            && (a.len() > ACTIVATE_MAX || a.contains('\0') || a.trim().is_empty())
        {
            errs.push(FieldError::new(
                "application.activate",
                format!("must be a non-empty command of at most {ACTIVATE_MAX} bytes without NUL"),
            ));
        }
        errs.into_result()
    }
}

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct ServerTemplate {
    pub id: TemplateId,
    /// Counts up whenever the content hash changes.
    pub version: u32,
    /// SHA-256 (hex) of the template and the scripts it names.
    pub content_hash: String,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    #[serde(flatten)]
    pub spec: TemplateSpec,
}

impl TemplateSpec {
    /// Check the template's own fields. References (image, scripts) are checked by the app
    /// layer, which knows what exists.
    pub fn validate(&self) -> Result<(), Invalid> {
        let mut errs = Invalid::default();
        for (field, list) in self.phases() {
            if list.len() > SCRIPTS_PER_PHASE_MAX {
                errs.push(FieldError::new(
                    field,
                    format!("{} scripts; the limit is {SCRIPTS_PER_PHASE_MAX}", list.len()),
                ));
            }
        }
        if let Some(s) = &self.size {
            errs.check("", s.validate());
        }
        if self.default_tags.len() > TAGS_MAX {
            errs.push(FieldError::new(
                "default_tags",
                format!("{} tags; the limit is {TAGS_MAX}", self.default_tags.len()),
            ));
        }
        let mut seen = BTreeSet::new();
        for (i, t) in self.default_tags.iter().enumerate() {
            if !seen.insert(t) {
                errs.push(FieldError::new(
                    format!("default_tags[{i}]"),
                    format!("{t} is listed twice"),
                ));
            }
        }
        if self.firewall.len() > FIREWALL_RULES_MAX {
            errs.push(FieldError::new(
                "firewall",
                format!("{} rules; the limit is {FIREWALL_RULES_MAX}", self.firewall.len()),
            ));
        }
        for (i, r) in self.firewall.iter().enumerate() {
            match (r.protocol, r.ports) {
                (Protocol::Icmp, Some(_)) => {
                    errs.push(FieldError::new(format!("firewall[{i}].ports"), "icmp has no ports"))
                }
                (Protocol::Tcp | Protocol::Udp, None) => errs.push(FieldError::new(
                    format!("firewall[{i}].ports"),
                    "tcp and udp rules need ports",
                )),
                _ => {}
            }
        }
        if self.description.len() > 4096 {
            errs.push(FieldError::new("description", "is longer than 4096 bytes"));
        }
        if let Some(app) = &self.application
            && let Err(e) = app.validate()
        {
            errs.0.extend(e.0);
        }
        if self.watch.len() > WATCH_MAX {
            errs.push(FieldError::new(
                "watch",
                format!("{} files; the limit is {WATCH_MAX}", self.watch.len()),
            ));
        }
        let mut paths = BTreeSet::new();
        for (i, w) in self.watch.iter().enumerate() {
            w.check(&format!("watch[{i}]"), &mut errs);
            if !paths.insert(&w.path) {
                errs.push(FieldError::new(format!("watch[{i}].path"), "is watched twice"));
            }
        }
        errs.into_result()
    }

    /// The three script lists with their field names.
    pub fn phases(&self) -> [(&'static str, &[Name]); 3] {
        [
            ("boot_scripts", &self.boot_scripts),
            ("operational_scripts", &self.operational_scripts),
            ("decommission_scripts", &self.decommission_scripts),
        ]
    }

    /// The content hash over this spec and the scripts it names (looked up by `script`).
    /// Scripts not found contribute their name only; callers validate references first.
    pub fn content_hash<'a>(&self, script: impl Fn(&Name) -> Option<&'a Script>) -> String {
        let mut h = Sha256::new();
        h.update(b"stratus-template-v1\0");
        // The spec's JSON is deterministic: struct fields in order, maps sorted (BTreeMap).
        h.update(serde_json::to_vec(self).unwrap_or_default());
        for (_, list) in self.phases() {
            for name in list {
                h.update(b"\0script\0");
                h.update(name.as_str());
                if let Some(s) = script(name) {
                    h.update(serde_json::to_vec(&(&s.spec.body, &s.spec.inputs, s.spec.frequency)).unwrap_or_default());
                }
            }
        }
        hex::encode(h.finalize())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::script::{Frequency, ScriptSpec};

    fn spec() -> TemplateSpec {
        toml::from_str(
            r#"
            name = "web"
            image = "debian"
            boot_scripts = ["install"]
            default_tags = ["lb:pool=www"]
            firewall = [{ protocol = "tcp", ports = 80 }, { protocol = "tcp", ports = "8000-8100", source = "10.0.0.0/8" }]
            "#,
        )
        .unwrap()
    }

    fn script(body: &str) -> Script {
        let now = Utc::now();
        Script {
            id: crate::ScriptId::new(),
            revision: 1,
            created_at: now,
            updated_at: now,
            spec: ScriptSpec {
                name: Name::parse("install").unwrap(),
                description: String::new(),
                body: body.into(),
                inputs: vec![],
                frequency: Frequency::PerInstance,
            },
        }
    }

    #[test]
    fn parses_and_validates() {
        let s = spec();
        s.validate().unwrap();
        assert_eq!(
            s.firewall[1].ports,
            Some(Ports {
                first: 8000,
                last: 8100
            })
        );
    }

    #[test]
    fn rejects_bad_rules() {
        let mut s = spec();
        s.firewall.push(FirewallRule {
            protocol: Protocol::Icmp,
            ports: Some(Ports { first: 1, last: 1 }),
            source: anywhere(),
        });
        s.firewall.push(FirewallRule {
            protocol: Protocol::Udp,
            ports: None,
            source: anywhere(),
        });
        s.default_tags.push(Tag::parse("lb:pool=www").unwrap());
        let err = s.validate().unwrap_err().to_string();
        assert!(err.contains("firewall[2].ports: icmp has no ports"), "{err}");
        assert!(err.contains("firewall[3].ports"), "{err}");
        assert!(err.contains("default_tags[1]"), "{err}");
        for bad in ["0", "70000", "90-80", "x", "1-", ""] {
            assert!(Ports::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn unknown_fields_are_refused() {
        let err = toml::from_str::<TemplateSpec>("name = \"a\"\nimage = \"b\"\nboot_script = [\"x\"]").unwrap_err();
        assert!(err.to_string().contains("unknown field `boot_script`"), "{err}");
    }

    #[test]
    fn hash_follows_script_content() {
        let s = spec();
        let a = script("echo one");
        let b = script("echo two");
        let h1 = s.content_hash(|_| Some(&a));
        assert_eq!(h1, s.content_hash(|_| Some(&a)), "deterministic");
        assert_ne!(h1, s.content_hash(|_| Some(&b)), "a script change changes the hash");
        let mut s2 = s.clone();
        s2.default_tags.clear();
        assert_ne!(h1, s2.content_hash(|_| Some(&a)));
        assert_eq!(h1.len(), 64);
    }
}
