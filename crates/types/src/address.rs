//! Elastic IP addresses: a cloud's "public" addresses that move between servers.

use chrono::{DateTime, Utc};
use std::net::IpAddr;

use crate::{AddressId, Name, ServerId};

/// What a user gives to allocate an address.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AddressSpec {
    pub name: Name,
    pub cloud: Name,
    /// The cloud's address pool; defaults to its first.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pool: Option<Name>,
}

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct Address {
    pub id: AddressId,
    pub revision: u32,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub name: Name,
    pub cloud: Name,
    pub pool: Name,
    #[schema(value_type = String, example = "198.51.100.7")]
    pub ip: IpAddr,
    /// The server it is associated with, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server: Option<ServerId>,
}
