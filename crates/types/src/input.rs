//! Script inputs: what a script declares, and the values deployments and runs give them.
//!
//! A value is written with a kind prefix, as in RightScale:
//!
//! ```text
//! text:hello            plain text ("hello" without a prefix is text too)
//! cred:DB_PASSWORD      the named credential, decrypted only when delivered to the instance
//! env:PRIVATE_IP        a value the agent reads on the instance (its own environment/metadata)
//! artifact:BUCKET/KEY   an object of the artifact store, delivered as a verified file path
//! ```
//!
//! Inputs reach a script as environment variables, never by pasting into the script's text, so an
//! input's name is an environment-variable name.

use std::collections::BTreeMap;
use std::fmt;

use crate::name::truncate;
use crate::{FieldError, Invalid, Name};

pub const TEXT_MAX: usize = 64 * 1024;

/// The kind of value an input expects.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum InputKind {
    /// Plain text; may also be filled from a credential or the instance's environment.
    Text,
    /// A secret: only `cred:` values are accepted, so a secret is never typed in plain text.
    Cred,
    /// A value from the instance's environment.
    Env,
    /// A file from the artifact store.
    Artifact,
}

impl fmt::Display for InputKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Text => "text",
            Self::Cred => "cred",
            Self::Env => "env",
            Self::Artifact => "artifact",
        })
    }
}

/// One input value.
#[derive(Debug, Clone, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum InputValue {
    Text(String),
    Cred(Name),
    Env(String),
    Artifact { bucket: String, key: String },
}

fn env_name_ok(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 128
        && s.starts_with(|c: char| c.is_ascii_alphabetic() || c == '_')
        && s.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
}

impl InputValue {
    pub fn parse(s: &str) -> Result<Self, FieldError> {
        let bad = |p: String| FieldError::new("", p);
        if let Some(rest) = s.strip_prefix("cred:") {
            let name = Name::parse(rest).map_err(|e| bad(format!("credential name {}", e.problem)))?;
            return Ok(Self::Cred(name));
        }
        if let Some(rest) = s.strip_prefix("env:") {
            if !env_name_ok(rest) {
                return Err(bad(format!(
                    "{:?} is not a variable name (letters, digits, '_')",
                    truncate(rest)
                )));
            }
            return Ok(Self::Env(rest.to_string()));
        }
        if let Some(rest) = s.strip_prefix("artifact:") {
            let (bucket, key) = rest
                .split_once('/')
                .ok_or_else(|| bad(format!("{:?} is not `artifact:BUCKET/KEY`", truncate(s))))?;
            Name::parse(bucket).map_err(|e| bad(format!("bucket name {}", e.problem)))?;
            check_object_key(key).map_err(bad)?;
            return Ok(Self::Artifact {
                bucket: bucket.into(),
                key: key.into(),
            });
        }
        let text = s.strip_prefix("text:").unwrap_or(s);
        if text.len() > TEXT_MAX {
            return Err(bad(format!("text is {} bytes; the limit is {TEXT_MAX}", text.len())));
        }
        if text.contains('\0') {
            return Err(bad("text contains a NUL byte".into()));
        }
        Ok(Self::Text(text.to_string()))
    }

    pub fn kind(&self) -> InputKind {
        match self {
            Self::Text(_) => InputKind::Text,
            Self::Cred(_) => InputKind::Cred,
            Self::Env(_) => InputKind::Env,
            Self::Artifact { .. } => InputKind::Artifact,
        }
    }

    /// Can this value fill an input of `kind`? Text inputs take text, credentials and
    /// environment values; every other kind takes only its own.
    pub fn fits(&self, kind: InputKind) -> bool {
        self.kind() == kind || (kind == InputKind::Text && matches!(self, Self::Cred(_) | Self::Env(_)))
    }
}

/// Object keys: 1–1024 bytes, no control characters, no `..` segment, not absolute.
pub fn check_object_key(key: &str) -> Result<(), String> {
    if key.is_empty() || key.len() > 1024 {
        return Err("an object key has 1-1024 bytes".into());
    }
    if key.starts_with('/') || key.split('/').any(|seg| seg == ".." || seg == "." || seg.is_empty()) {
        return Err(format!(
            "object key {:?} has an empty, '.' or '..' segment or starts with '/'",
            truncate(key)
        ));
    }
    if key.chars().any(char::is_control) {
        return Err("an object key must not contain control characters".into());
    }
    Ok(())
}

impl fmt::Display for InputValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            // Text that looks like another kind keeps its prefix so it round-trips.
            Self::Text(t) if ["cred:", "env:", "artifact:", "text:"].iter().any(|p| t.starts_with(p)) => {
                write!(f, "text:{t}")
            }
            Self::Text(t) => f.write_str(t),
            Self::Cred(n) => write!(f, "cred:{n}"),
            Self::Env(n) => write!(f, "env:{n}"),
            Self::Artifact { bucket, key } => write!(f, "artifact:{bucket}/{key}"),
        }
    }
}

impl TryFrom<String> for InputValue {
    type Error = FieldError;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        Self::parse(&s)
    }
}

impl From<InputValue> for String {
    fn from(v: InputValue) -> String {
        v.to_string()
    }
}

crate::string_schema!(
    InputValue,
    "InputValue",
    "An input value: `text:...` (or bare text), `cred:NAME`, `env:NAME`, `artifact:BUCKET/KEY`.",
    "cred:db-password"
);

/// An input a script declares.
#[derive(Debug, Clone, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct InputDecl {
    /// The environment variable the script reads (`DB_HOST`).
    pub name: String,
    #[serde(default = "text_kind")]
    pub kind: InputKind,
    /// A run without a value for a required input (and no default) is refused.
    #[serde(default = "yes")]
    pub required: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default: Option<InputValue>,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub description: String,
}

fn text_kind() -> InputKind {
    InputKind::Text
}
fn yes() -> bool {
    true
}

impl InputDecl {
    pub fn validate(&self) -> Result<(), Invalid> {
        let mut errs = Invalid::default();
        if !env_name_ok(&self.name) {
            errs.push(FieldError::new(
                "name",
                format!(
                    "{:?} is not an environment-variable name (letters, digits, '_'; not starting with a digit)",
                    truncate(&self.name)
                ),
            ));
        } else if RESERVED_INPUTS.iter().any(|r| r.eq_ignore_ascii_case(&self.name))
            || self.name.starts_with("STRATUS_")
        {
            errs.push(FieldError::new(
                "name",
                format!("{} is reserved (PATH, HOME, STRATUS_*...)", self.name),
            ));
        }
        if let Some(d) = &self.default
            && !d.fits(self.kind)
        {
            errs.push(FieldError::new(
                "default",
                format!("a {} value cannot fill a {} input", d.kind(), self.kind),
            ));
        }
        if self.description.len() > 1024 {
            errs.push(FieldError::new("description", "is longer than 1024 bytes"));
        }
        errs.into_result()
    }
}

/// Variables the runtime sets itself; an input must not shadow them.
pub const RESERVED_INPUTS: &[&str] = &[
    "PATH",
    "HOME",
    "USER",
    "SHELL",
    "PWD",
    "LD_PRELOAD",
    "LD_LIBRARY_PATH",
    "IFS",
];

/// Inputs given by name (deployment inputs, template defaults, run overrides).
pub type Inputs = BTreeMap<String, InputValue>;

/// Check `given` against `decls`: unknown names and kind mismatches are errors.
pub fn check_inputs(decls: &[InputDecl], given: &Inputs) -> Result<(), Invalid> {
    let mut errs = Invalid::default();
    for (name, value) in given {
        match decls.iter().find(|d| &d.name == name) {
            None => errs.push(FieldError::new(
                format!("inputs.{}", truncate(name)),
                format!(
                    "no such input; the script declares {}",
                    if decls.is_empty() {
                        "none".to_string()
                    } else {
                        decls.iter().map(|d| d.name.as_str()).collect::<Vec<_>>().join(", ")
                    }
                ),
            )),
            Some(d) if !value.fits(d.kind) => errs.push(FieldError::new(
                format!("inputs.{name}"),
                format!("a {} value cannot fill this {} input", value.kind(), d.kind),
            )),
            Some(_) => {}
        }
    }
    errs.into_result()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn parses_each_kind() {
        assert_eq!(InputValue::parse("hello").unwrap(), InputValue::Text("hello".into()));
        assert_eq!(
            InputValue::parse("text:cred:x").unwrap(),
            InputValue::Text("cred:x".into())
        );
        assert_eq!(
            InputValue::parse("cred:db-pass").unwrap(),
            InputValue::Cred(Name::parse("db-pass").unwrap())
        );
        assert_eq!(
            InputValue::parse("env:PRIVATE_IP").unwrap(),
            InputValue::Env("PRIVATE_IP".into())
        );
        assert_eq!(
            InputValue::parse("artifact:apps/web/v1.tar.gz").unwrap(),
            InputValue::Artifact {
                bucket: "apps".into(),
                key: "web/v1.tar.gz".into()
            }
        );
    }

    #[test]
    fn rejects_bad_values() {
        for bad in [
            "cred:",
            "cred:Bad Name",
            "env:1X",
            "env:A-B",
            "artifact:nokey",
            "artifact:b/../etc/passwd",
            "artifact:b//x",
            "artifact:b/x\n",
            "a\0b",
        ] {
            assert!(InputValue::parse(bad).is_err(), "{bad:?}");
        }
        assert!(InputValue::parse(&"x".repeat(TEXT_MAX + 1)).is_err());
    }

    #[test]
    fn kinds_fit() {
        let cred = InputValue::parse("cred:x").unwrap();
        assert!(cred.fits(InputKind::Cred) && cred.fits(InputKind::Text));
        let text = InputValue::parse("plain").unwrap();
        assert!(!text.fits(InputKind::Cred), "a secret input must never take plain text");
    }

    #[test]
    fn declarations_are_checked() {
        let d = InputDecl {
            name: "PATH".into(),
            kind: InputKind::Text,
            required: true,
            default: None,
            description: String::new(),
        };
        assert!(d.validate().unwrap_err().to_string().contains("reserved"));
        let d = InputDecl {
            name: "DB_PASS".into(),
            kind: InputKind::Cred,
            required: true,
            default: Some(InputValue::Text("x".into())),
            description: String::new(),
        };
        assert!(d.validate().unwrap_err().to_string().contains("default"));
        let decls = vec![InputDecl {
            name: "PORT".into(),
            kind: InputKind::Text,
            required: true,
            default: None,
            description: String::new(),
        }];
        let mut given = Inputs::new();
        given.insert("PROT".into(), InputValue::Text("80".into()));
        let err = check_inputs(&decls, &given).unwrap_err().to_string();
        assert!(err.contains("inputs.PROT") && err.contains("PORT"), "{err}");
    }

    proptest! {
        #[test]
        fn values_round_trip(s in "\\PC{0,80}") {
            if let Ok(v) = InputValue::parse(&s) {
                prop_assert_eq!(InputValue::parse(&v.to_string()).unwrap(), v);
            }
        }
    }
}
