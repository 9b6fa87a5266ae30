//! Resource names: what users type, what deployment files reference.

use std::fmt;
use std::str::FromStr;

use crate::FieldError;

/// A resource name: 1–63 characters of lowercase ASCII letters, digits, `-`, `_` and `.`,
/// starting with a letter and not ending with a separator. DNS-label-like so a server name can
/// become a hostname, with `_` and `.` allowed for catalog names such as `nginx_app` or `base.v2`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Name(String);

pub const NAME_MAX: usize = 63;

impl Name {
    pub fn parse(s: &str) -> Result<Self, FieldError> {
        let problem = if s.is_empty() {
            Some("must not be empty".to_string())
        } else if s.len() > NAME_MAX {
            Some(format!("is {} characters long; the limit is {NAME_MAX}", s.len()))
        } else if !s.starts_with(|c: char| c.is_ascii_lowercase()) {
            Some(format!("{s:?} must start with a lowercase letter"))
        } else if let Some(c) = s
            .chars()
            .find(|c| !(c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '-' | '_' | '.')))
        {
            Some(format!(
                "{:?} contains {c:?}; use lowercase letters, digits, '-', '_' and '.'",
                truncate(s)
            ))
        } else if s.ends_with(['-', '_', '.']) {
            Some(format!("{s:?} must not end with '-', '_' or '.'"))
        } else {
            None
        };
        match problem {
            Some(p) => Err(FieldError::new("", p)),
            None => Ok(Self(s.to_string())),
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// Shorten hostile input before echoing it back in an error.
pub fn truncate(s: &str) -> String {
    const MAX: usize = 64;
    if s.chars().count() <= MAX {
        s.to_string()
    } else {
        let head: String = s.chars().take(MAX).collect();
        format!("{head}…")
    }
}

impl fmt::Display for Name {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl FromStr for Name {
    type Err = FieldError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

impl TryFrom<String> for Name {
    type Error = FieldError;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        Self::parse(&s)
    }
}

impl From<Name> for String {
    fn from(n: Name) -> String {
        n.0
    }
}

impl AsRef<str> for Name {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

crate::string_schema!(
    Name,
    "Name",
    "A resource name: lowercase letters, digits, '-', '_', '.'; starts with a letter; at most 63 characters.",
    "web-1"
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_typical_names() {
        for ok in ["web", "web-1", "nginx_app", "base.v2", "a"] {
            assert!(Name::parse(ok).is_ok(), "{ok}");
        }
    }

    #[test]
    fn rejects_bad_names_with_the_reason() {
        let cases = [
            ("", "empty"),
            ("Web", "lowercase letter"),
            ("1web", "lowercase letter"),
            ("web-", "must not end"),
            ("we b", "contains ' '"),
            ("web/../x", "contains '/'"),
            ("wéb", "contains 'é'"),
        ];
        for (bad, why) in cases {
            let err = Name::parse(bad).unwrap_err();
            assert!(err.problem.contains(why), "{bad:?}: {err}");
        }
        let long = "a".repeat(64);
        assert!(Name::parse(&long).unwrap_err().problem.contains("limit is 63"));
    }

    #[test]
    fn errors_do_not_echo_huge_input() {
        let hostile = format!("a{}", "\u{202e}".repeat(10_000));
        let err = Name::parse(&hostile).unwrap_err();
        assert!(err.problem.len() < 200, "{}", err.problem.len());
    }

    #[test]
    fn deserialising_validates() {
        assert!(serde_json::from_str::<Name>("\"ok-name\"").is_ok());
        assert!(serde_json::from_str::<Name>("\"Bad Name\"").is_err());
    }
}
