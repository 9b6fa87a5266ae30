//! The Stratus public HTTP API, as types: what requests carry (`params`), what responses carry
//! (`views`), the error body, and the deployment-file format that `stratus apply` reads.
//!
//! Most views are the domain types themselves (a `Server` is shown as it is stored); the
//! exceptions hide what must never leave the control plane (credential values, token hashes).
//! The OpenAPI document is generated from these types and the server's handlers.

pub mod error;
pub mod file;
pub mod params;
pub mod views;

/// The path prefix of every API route.
pub const API_PREFIX: &str = "/api/v1";
/// Where the OpenAPI document is served.
pub const OPENAPI_PATH: &str = "/api/v1/openapi.json";
