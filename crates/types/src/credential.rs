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
            description: String::new(),
            value: s,
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
    fn redacts_output() {
        let s = Secret::new("p4ssw0rd");
        assert_eq!(redact("connecting with p4ssw0rd now", &[&s]), "connecting with *** now");
    }
}
