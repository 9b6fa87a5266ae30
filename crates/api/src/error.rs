//! The JSON error body every failed request returns.

use stratus_types::FieldError;

/// Stable, machine-readable error codes. Clients branch on these, never on messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// The request is malformed or a field is invalid (`fields` says which).
    InvalidInput,
    /// No bearer token, or an unknown/expired one.
    Unauthenticated,
    /// The token's user lacks the role for this.
    Forbidden,
    NotFound,
    /// A name is taken, or the resource is still in use.
    Conflict,
    /// Someone else changed the resource meanwhile; reload and retry.
    Stale,
    /// The resource is in a state that does not allow this (terminate a terminated server).
    BadState,
    PayloadTooLarge,
    /// The cloud refused or failed.
    CloudError,
    Internal,
}

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct ErrorDetail {
    pub code: ErrorCode,
    /// A sentence for people: what was wrong and what to do.
    pub message: String,
    /// For `invalid_input`: each bad field and its problem.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub fields: Vec<FieldError>,
}

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}
