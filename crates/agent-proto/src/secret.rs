//! Secret values on the wire, and the environment a script runs with.
//!
//! [`stratus_types::credential::Secret`] serialises as `***`: right for the API, the store and
//! the logs, wrong for the one place a credential must travel in clear — the frame that delivers
//! it to the agent that runs the script. [`SecretString`] is that wire form: it serialises its
//! value, but `Debug` and `Display` still print `***`, so a message that reaches a log line or an
//! error shows nothing. A frame is therefore as sensitive as the secrets it carries: it goes over
//! TLS, and neither side ever logs a raw frame (log the decoded message; its `Debug` is safe).

use std::fmt;

use stratus_types::credential::Secret;

/// A secret value as carried in a frame. `Debug`/`Display` print `***`; `Serialize` writes the
/// value (see the module docs); the bytes are overwritten when it is dropped.
#[derive(Clone, PartialEq, Eq)]
pub struct SecretString(String);

impl SecretString {
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    /// The plain value: for the script's environment and for a [`crate::Masker`], nothing else.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl From<&Secret> for SecretString {
    fn from(s: &Secret) -> Self {
        Self::new(s.expose())
    }
}

impl fmt::Debug for SecretString {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

impl fmt::Display for SecretString {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

impl serde::Serialize for SecretString {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

/// Only a string is accepted, and anything else is refused *without* echoing it (serde's
/// default message would repeat a numeric PIN back in the error).
impl<'de> serde::Deserialize<'de> for SecretString {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl serde::de::Visitor<'_> for V {
            type Value = SecretString;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<SecretString, E> {
                Ok(SecretString::new(v))
            }
            fn visit_string<E: serde::de::Error>(self, v: String) -> Result<SecretString, E> {
                Ok(SecretString(v))
            }
        }
        // `deserialize_string` reaches only `visit_str`/`visit_string` for a string; for any other
        // value serde calls the default visit method, whose "invalid type" message names the
        // type and repeats the value. Map it to a message that does neither.
        d.deserialize_string(V)
            .map_err(|_: D::Error| serde::de::Error::custom("a secret value must be a string"))
    }
}

impl Drop for SecretString {
    fn drop(&mut self) {
        // Best effort: overwrite the bytes before the allocation is freed.
        let n = self.0.len();
        self.0.clear();
        self.0.extend(std::iter::repeat_n('\0', n));
    }
}

/// One environment variable of a script run.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EnvVar {
    /// A variable name: an ASCII letter or `_`, then letters, digits and `_`.
    pub name: String,
    pub value: EnvValue,
}

/// Where a variable's value comes from. On the wire: `{"text": "v"}`, `{"secret": "v"}` or
/// `{"instance": "PRIVATE_IP"}`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum EnvValue {
    /// A plain value (a `text:` input).
    Text(String),
    /// A credential's value (a `cred:` input), decrypted only for this delivery. The agent masks
    /// it in the run's output and never writes it to its logs.
    Secret(SecretString),
    /// A value the agent reads on the instance (an `env:` input): the name of a variable of the
    /// agent's environment or metadata, such as `PRIVATE_IP`.
    Instance(String),
    /// (v2) An object of the artifact store (an `artifact:` input): the agent fetches and
    /// verifies it, and the variable holds the file's path.
    Artifact(crate::ArtifactRef),
}

impl EnvVar {
    pub fn text(name: impl Into<String>, value: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            value: EnvValue::Text(value.into()),
        }
    }

    pub fn secret(name: impl Into<String>, value: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            value: EnvValue::Secret(SecretString::new(value)),
        }
    }

    pub fn instance(name: impl Into<String>, variable: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            value: EnvValue::Instance(variable.into()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn never_prints_but_travels() {
        let s = SecretString::new("hunter2-very-secret");
        assert_eq!(format!("{s} {s:?}"), "*** ***");
        let var = EnvVar::secret("DB_PASSWORD", "hunter2-very-secret");
        assert!(!format!("{var:?}").contains("hunter2"));
        let json = serde_json::to_string(&var).unwrap();
        assert_eq!(
            json,
            r#"{"name":"DB_PASSWORD","value":{"secret":"hunter2-very-secret"}}"#
        );
        assert_eq!(serde_json::from_str::<EnvVar>(&json).unwrap(), var);
    }

    #[test]
    fn wrong_types_are_refused_without_echo() {
        for bad in [
            "918273645",
            "9182.73645",
            "true",
            "null",
            "[918273645]",
            "{\"v\": 918273645}",
        ] {
            let err = serde_json::from_str::<SecretString>(bad).unwrap_err().to_string();
            assert!(!err.contains("918273645") && !err.contains("9182.7"), "{err}");
            assert!(err.contains("must be a string"), "{err}");
        }
    }

    #[test]
    fn converts_from_a_stored_secret() {
        let stored = Secret::new("p4ssw0rd");
        assert_eq!(SecretString::from(&stored).expose(), "p4ssw0rd");
    }
}
