//! Users, their roles and their SSH keys; API tokens.

use chrono::{DateTime, Utc};
use std::fmt;
use std::str::FromStr;

use crate::name::truncate;
use crate::sshkey::SshPublicKey;
use crate::{FieldError, Invalid, Name, TokenId, UserId};

/// What a user may do. API roles are ordered: admin ⊃ operator ⊃ observer. SSH roles are
/// separate and may be limited to one deployment.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum Role {
    /// Everything, including users and credentials.
    Admin,
    /// Launch, terminate, run scripts, apply deployments.
    Operator,
    /// Read everything except secrets.
    Observer,
    /// Log in to servers (of one deployment, or all).
    ServerLogin(Option<Name>),
    /// Log in with passwordless sudo.
    ServerSuperuser(Option<Name>),
}

impl Role {
    pub fn parse(s: &str) -> Result<Self, FieldError> {
        let (base, scope) =
            match s.split_once(':') {
                Some((b, d)) => (
                    b,
                    Some(Name::parse(d).map_err(|e| {
                        FieldError::new("", format!("role {:?}: deployment {}", truncate(s), e.problem))
                    })?),
                ),
                None => (s, None),
            };
        match (base, scope) {
            ("admin", None) => Ok(Self::Admin),
            ("operator", None) => Ok(Self::Operator),
            ("observer", None) => Ok(Self::Observer),
            ("server_login", d) => Ok(Self::ServerLogin(d)),
            ("server_superuser", d) => Ok(Self::ServerSuperuser(d)),
            _ => Err(FieldError::new(
                "",
                format!(
                    "unknown role {:?}; roles are admin, operator, observer, server_login[:DEPLOYMENT], server_superuser[:DEPLOYMENT]",
                    truncate(s)
                ),
            )),
        }
    }

    /// The API permission level this role grants (0 = none).
    pub fn level(&self) -> u8 {
        match self {
            Self::Admin => 3,
            Self::Operator => 2,
            Self::Observer => 1,
            Self::ServerLogin(_) | Self::ServerSuperuser(_) => 0,
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let scoped = |f: &mut fmt::Formatter<'_>, b: &str, d: &Option<Name>| match d {
            Some(d) => write!(f, "{b}:{d}"),
            None => f.write_str(b),
        };
        match self {
            Self::Admin => f.write_str("admin"),
            Self::Operator => f.write_str("operator"),
            Self::Observer => f.write_str("observer"),
            Self::ServerLogin(d) => scoped(f, "server_login", d),
            Self::ServerSuperuser(d) => scoped(f, "server_superuser", d),
        }
    }
}

impl FromStr for Role {
    type Err = FieldError;
    fn from_str(s: &str) -> Result<Self, FieldError> {
        Self::parse(s)
    }
}

impl TryFrom<String> for Role {
    type Error = FieldError;
    fn try_from(s: String) -> Result<Self, FieldError> {
        Self::parse(&s)
    }
}

impl From<Role> for String {
    fn from(r: Role) -> String {
        r.to_string()
    }
}

crate::string_schema!(
    Role,
    "Role",
    "admin, operator, observer, server_login[:DEPLOYMENT] or server_superuser[:DEPLOYMENT].",
    "server_login:production"
);

/// What an admin gives to create or update a user.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UserSpec {
    pub name: Name,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub email: String,
    #[serde(default)]
    pub roles: Vec<Role>,
}

impl UserSpec {
    pub fn validate(&self) -> Result<(), Invalid> {
        let mut errs = Invalid::default();
        if !self.email.is_empty() {
            let ok = self.email.len() <= 254
                && self
                    .email
                    .split_once('@')
                    .is_some_and(|(l, d)| !l.is_empty() && d.contains('.'))
                && !self.email.chars().any(|c| c.is_whitespace() || c.is_control());
            if !ok {
                errs.push(FieldError::new(
                    "email",
                    format!("{:?} is not an email address", truncate(&self.email)),
                ));
            }
        }
        let mut seen = std::collections::BTreeSet::new();
        for (i, r) in self.roles.iter().enumerate() {
            if !seen.insert(r) {
                errs.push(FieldError::new(format!("roles[{i}]"), format!("{r} is listed twice")));
            }
        }
        errs.into_result()
    }
}

/// A registered SSH key.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct UserKey {
    #[serde(flatten)]
    pub key: SshPublicKey,
    pub added_at: DateTime<Utc>,
}

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct User {
    pub id: UserId,
    pub revision: u32,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    #[serde(flatten)]
    pub spec: UserSpec,
    pub ssh_keys: Vec<UserKey>,
}

impl User {
    /// The highest API level of the user's roles.
    pub fn level(&self) -> u8 {
        self.spec.roles.iter().map(Role::level).max().unwrap_or(0)
    }
}

/// An API token. The token itself is shown once, at creation; only its SHA-256 is kept.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct ApiToken {
    pub id: TokenId,
    pub user: Name,
    pub description: String,
    pub created_at: DateTime<Utc>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<DateTime<Utc>>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roles_round_trip() {
        for r in [
            "admin",
            "observer",
            "server_login",
            "server_login:prod",
            "server_superuser:prod",
        ] {
            assert_eq!(Role::parse(r).unwrap().to_string(), r);
        }
        for bad in ["root", "admin:prod", "server_login:", "server_login:Bad"] {
            assert!(Role::parse(bad).is_err(), "{bad}");
        }
    }
}
