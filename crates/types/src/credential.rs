//! Credentials and the `Secret` type that keeps them out of logs and responses.

use chrono::{DateTime, Utc};
use std::fmt;

use crate::{CredentialId, FieldError, Invalid, Name};

pub const SECRET_MAX: usize = 64 * 1024;

/// A secret value. `Debug`, `Display` and `Serialize` all print `***`, so a secret that ends up
/// in a log line, an error or a JSON response shows nothing. Read it with [`Secret::expose`].
#[derive(Clone, PartialEq, Eq, serde::Deserialize)]
#[serde(transparent)]
pub struct Secret(String);

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

/// What a user gives to create or update a credential.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CredentialSpec {
    pub name: Name,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub description: String,
    pub value: Secret,
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
        if self.description.len() > 4096 {
            errs.push(FieldError::new("description", "is longer than 4096 bytes"));
        }
        errs.into_result()
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
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
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
            out = out.lines().map(|l| if l.trim() == v { "***" } else { l }).collect::<Vec<_>>().join("\n");
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
        let spec = CredentialSpec { name: Name::parse("db").unwrap(), description: String::new(), value: s };
        let dbg = format!("{spec:?}");
        assert!(!dbg.contains("hunter2"), "{dbg}");
        assert!(!serde_json::to_string(&spec).unwrap().contains("hunter2"));
    }

    #[test]
    fn redacts_output() {
        let s = Secret::new("p4ssw0rd");
        assert_eq!(redact("connecting with p4ssw0rd now", &[&s]), "connecting with *** now");
    }
}
