//! Credentials and the `Secret` type that keeps them out of logs and responses.

use chrono::{DateTime, Utc};
use std::fmt;

use crate::{CredentialId, FieldError, Invalid, Name};

pub const SECRET_MAX: usize = 64 * 1024;

/// A secret value. `Debug`, `Display` and `Serialize` all print `***`, so a secret that ends up
/// in a log line, an error or a JSON response shows nothing. Read it with [`Secret::expose`].
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

/// Only strings are accepted, and a wrong type is refused *without* echoing the value (serde's
/// default message would repeat a numeric PIN back in the error).
impl<'de> serde::Deserialize<'de> for Secret {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        fn refuse<E: serde::de::Error>() -> E {
            E::custom("a secret value must be a string")
        }
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = Secret;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Secret, E> {
                Ok(Secret::new(v))
            }
            fn visit_string<E: serde::de::Error>(self, v: String) -> Result<Secret, E> {
                Ok(Secret(v))
            }
            fn visit_bool<E: serde::de::Error>(self, _: bool) -> Result<Secret, E> {
                Err(refuse())
            }
            fn visit_i64<E: serde::de::Error>(self, _: i64) -> Result<Secret, E> {
                Err(refuse())
            }
            fn visit_u64<E: serde::de::Error>(self, _: u64) -> Result<Secret, E> {
                Err(refuse())
            }
            fn visit_f64<E: serde::de::Error>(self, _: f64) -> Result<Secret, E> {
                Err(refuse())
            }
            fn visit_bytes<E: serde::de::Error>(self, _: &[u8]) -> Result<Secret, E> {
                Err(refuse())
            }
            fn visit_unit<E: serde::de::Error>(self) -> Result<Secret, E> {
                Err(refuse())
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(self, _: A) -> Result<Secret, A::Error> {
                Err(refuse())
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(self, _: A) -> Result<Secret, A::Error> {
                Err(refuse())
            }
        }
        d.deserialize_any(V)
    }
}

impl Secret {
    pub fn new(s: impl Into<String>) -> Self {
        Self(s.into())
    }

    /// The plain value. Call only where it is encrypted or delivered to an instance.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

impl serde::Serialize for Secret {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str("***")
    }
}

impl Drop for Secret {
    fn drop(&mut self) {
        // Best effort: overwrite the bytes before the allocation is freed.
        overwrite_with_zeros(&mut self.0);
    }
}

/// Overwrite a string's bytes in place with zeros (`clear` keeps the allocation).
fn overwrite_with_zeros(s: &mut String) {
    let n = s.len();
    s.clear();
    s.extend(std::iter::repeat_n('\0', n));
}

crate::string_schema!(Secret, "Secret", "A secret value; write-only, shown as ***.", "***");

/// The most entries a credential's `deployments` list may have.
pub const SCOPE_MAX: usize = 64;

/// Who may *attach* a credential: create or change anything through which its value would reach
/// a script (an input naming `cred:NAME` on a script default, template, deployment, array,
/// server or run; the body or input declarations of a script that receives it; a template's
/// script list). The lowest API role allowed; `admin` unless the credential says otherwise.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, serde::Serialize, serde::Deserialize, utoipa::ToSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum AttachRole {
    #[default]
    Admin,
    Operator,
}

impl AttachRole {
    /// The API permission level (`Role::level`) an actor needs.
    pub fn level(self) -> u8 {
        match self {
            Self::Admin => 3,
            Self::Operator => 2,
        }
    }

    pub fn is_default(&self) -> bool {
        *self == Self::Admin
    }
}

impl fmt::Display for AttachRole {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Admin => "admin",
            Self::Operator => "operator",
        })
    }
}

/// The deployments a credential may be used in: names, or simple globs where `*` stands for
/// any run of characters (`prod-*`, `*`). Default: every deployment.
pub fn default_deployments() -> Vec<String> {
    vec!["*".to_string()]
}

fn is_all_deployments(d: &[String]) -> bool {
    d == default_deployments().as_slice()
}

/// Check one entry of a `deployments` list: a deployment name, or one with `*` wildcards.
pub fn check_deployment_pattern(p: &str) -> Result<(), String> {
    if p.is_empty() {
        return Err("is empty; give a deployment name or a glob such as prod-*".into());
    }
    if p == "*" {
        return Ok(());
    }
    if p.len() > crate::name::NAME_MAX {
        return Err(format!(
            "is {} characters long; the limit is {}",
            p.len(),
            crate::name::NAME_MAX
        ));
    }
    if let Some(c) = p
        .chars()
        .find(|c| !(c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '-' | '_' | '.' | '*')))
    {
        return Err(format!(
            "{:?} contains {c:?}; a deployment pattern is a name where `*` matches anything",
            crate::name::truncate(p)
        ));
    }
    if p.contains("**") {
        return Err(format!("{p:?} has `**`; one `*` already matches any run of characters"));
    }
    // Without wildcards it must be a valid name (what deployments are called).
    if !p.contains('*') {
        Name::parse(p).map_err(|e| e.problem)?;
    }
    Ok(())
}

/// Does `deployment` match one of `patterns`?
pub fn deployment_allowed(patterns: &[String], deployment: &str) -> bool {
    patterns.iter().any(|p| crate::tag::glob_match(p, deployment))
}

/// What a user gives to create or update a credential. On an update, a field left out keeps
/// the stored value (a value-only `PUT` does not widen a narrowed scope); on a create it takes
/// the default.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CredentialSpec {
    pub name: Name,
    /// Default (new credential): empty.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    pub value: Secret,
    /// The deployments whose servers may receive the value: names or `*`-globs (new credential:
    /// `["*"]`, every deployment). At most 64 entries.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deployments: Option<Vec<String>>,
    /// The lowest role allowed to attach it (see [`AttachRole`]): `admin` (new credential) or
    /// `operator`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attach: Option<AttachRole>,
}

impl CredentialSpec {
    pub fn validate(&self) -> Result<(), Invalid> {
        let mut errs = Invalid::default();
        if self.value.expose().is_empty() {
            errs.push(FieldError::new("value", "is empty"));
        }
        if self.value.expose().len() > SECRET_MAX {
            errs.push(FieldError::new("value", format!("is longer than {SECRET_MAX} bytes")));
        }
        if self.description.as_ref().is_some_and(|d| d.len() > 4096) {
            errs.push(FieldError::new("description", "is longer than 4096 bytes"));
        }
        if let Some(d) = &self.deployments {
            check_scope(d, &mut errs);
        }
        errs.into_result()
    }
}

fn check_scope(deployments: &[String], errs: &mut Invalid) {
    if deployments.is_empty() {
        errs.push(FieldError::new(
            "deployments",
            "is empty; name at least one deployment (or `*` for all)",
        ));
    }
    if deployments.len() > SCOPE_MAX {
        errs.push(FieldError::new(
            "deployments",
            format!("has {} entries; the limit is {SCOPE_MAX}", deployments.len()),
        ));
        return;
    }
    for (i, p) in deployments.iter().enumerate() {
        if let Err(problem) = check_deployment_pattern(p) {
            errs.push(FieldError::new(format!("deployments[{i}]"), problem));
        }
    }
}

/// A credential as anyone sees it: never its value.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct Credential {
    pub id: CredentialId,
    pub revision: u32,
    pub name: Name,
    #[serde(default)]
    pub description: String,
    /// The deployments it may be used in (records written before scopes existed: every one).
    #[serde(default = "default_deployments")]
    pub deployments: Vec<String>,
    /// The lowest role allowed to attach it (older records: `admin`).
    #[serde(default)]
    pub attach: AttachRole,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

impl Credential {
    /// May servers of `deployment` receive this credential?
    pub fn allows(&self, deployment: &str) -> bool {
        deployment_allowed(&self.deployments, deployment)
    }

    /// `every deployment` or the list, for messages.
    pub fn scope_text(&self) -> String {
        if is_all_deployments(&self.deployments) {
            "every deployment".into()
        } else {
            self.deployments.join(", ")
        }
    }
}

/// Replace every occurrence of each secret in `text` with `***`. Used on anything that may
/// echo a secret back (script output, error messages from a cloud API).
pub fn redact(text: &str, secrets: &[&Secret]) -> String {
    let mut out = text.to_string();
    for s in secrets {
        let v = s.expose();
        // Very short values would mask ordinary words; they are masked only as whole lines.
        if v.len() >= 4 {
            out = out.replace(v, "***");
        } else if !v.is_empty() {
            out = out
                .lines()
                .map(|l| if l.trim() == v { "***" } else { l })
                .collect::<Vec<_>>()
                .join("\n");
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_never_print() {
        let s = Secret::new("hunter2-very-secret");
        assert_eq!(format!("{s} {s:?}"), "*** ***");
        assert_eq!(serde_json::to_string(&s).unwrap(), "\"***\"");
        let spec = CredentialSpec {
            name: Name::parse("db").unwrap(),
            description: None,
            value: s,
            deployments: None,
            attach: Some(AttachRole::Admin),
        };
        let dbg = format!("{spec:?}");
        assert!(!dbg.contains("hunter2"), "{dbg}");
        assert!(!serde_json::to_string(&spec).unwrap().contains("hunter2"));
    }

    #[test]
    fn wrong_types_are_refused_without_echo() {
        for bad in ["918273645", "9182.73645", "true", "[918273645]", "{\"v\": 918273645}"] {
            let err = serde_json::from_str::<Secret>(bad).unwrap_err().to_string();
            assert!(!err.contains("918273645") && !err.contains("9182.7"), "{err}");
            assert!(err.contains("must be a string"), "{err}");
        }
    }

    #[test]
    fn scope_defaults_to_every_deployment_and_admin_attach() {
        // Absent fields stay absent (an update keeps the stored ones; a create takes defaults).
        let spec: CredentialSpec = serde_json::from_str(r#"{"name":"db","value":"x"}"#).unwrap();
        assert_eq!((spec.deployments, spec.attach, spec.description), (None, None, None));
        // A record stored before scopes existed reads with the same defaults.
        let old = r#"{"id":"0190c6a4-0000-7000-8000-000000000000","revision":1,"name":"db",
            "created_at":"2026-01-01T00:00:00Z","updated_at":"2026-01-01T00:00:00Z"}"#;
        let c: Credential = serde_json::from_str(old).unwrap();
        assert!(c.allows("anything") && c.attach == AttachRole::Admin);
        assert_eq!(c.scope_text(), "every deployment");
    }

    #[test]
    fn deployment_patterns() {
        let pats = vec!["prod-*".to_string(), "staging".to_string()];
        assert!(deployment_allowed(&pats, "prod-eu"));
        assert!(deployment_allowed(&pats, "staging"));
        assert!(!deployment_allowed(&pats, "staging-2"));
        assert!(!deployment_allowed(&pats, "dev"));
        for good in ["*", "prod-*", "*-eu", "a*b", "web.v2"] {
            assert!(check_deployment_pattern(good).is_ok(), "{good}");
        }
        for bad in [
            "",
            "Prod",
            "a b",
            "x/y",
            "a**",
            "-x",
            "x-",
            &"a".repeat(64),
            "?x",
            "[a]",
        ] {
            assert!(check_deployment_pattern(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn bad_scopes_are_refused_naming_the_entry() {
        let with = |d: Vec<String>| CredentialSpec {
            name: Name::parse("db").unwrap(),
            description: None,
            value: Secret::new("v"),
            deployments: Some(d),
            attach: Some(AttachRole::Operator),
        };
        let e = with(vec![]).validate().unwrap_err().to_string();
        assert!(e.contains("deployments") && e.contains("empty"), "{e}");
        let e = with(vec!["ok".into(), "".into()]).validate().unwrap_err().to_string();
        assert!(e.contains("deployments[1]"), "{e}");
        let e = with(vec!["x".into(); SCOPE_MAX + 1])
            .validate()
            .unwrap_err()
            .to_string();
        assert!(e.contains("limit is 64"), "{e}");
        assert!(with(vec!["x".into(); SCOPE_MAX]).validate().is_ok());
        let e = serde_json::from_str::<CredentialSpec>(r#"{"name":"db","value":"x","attach":"observer"}"#)
            .unwrap_err()
            .to_string();
        assert!(e.contains("unknown variant"), "{e}");
    }

    #[test]
    fn redacts_output() {
        let s = Secret::new("p4ssw0rd");
        assert_eq!(redact("connecting with p4ssw0rd now", &[&s]), "connecting with *** now");
    }
}
