//! `AppError` → HTTP status and JSON body, in one place.

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use stratus_api::error::{ErrorBody, ErrorCode, ErrorDetail};
use tracing::error;

use crate::app::AppError;

#[derive(Debug)]
pub struct ApiError(pub AppError);

impl From<AppError> for ApiError {
    fn from(e: AppError) -> Self {
        Self(e)
    }
}

pub fn body(status: StatusCode, code: ErrorCode, message: String, fields: Vec<stratus_types::FieldError>) -> Response {
    (
        status,
        Json(ErrorBody {
            error: ErrorDetail { code, message, fields },
        }),
    )
        .into_response()
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let e = self.0;
        let (status, code) = match &e {
            AppError::Invalid(_) => (StatusCode::BAD_REQUEST, ErrorCode::InvalidInput),
            AppError::NotFound { .. } => (StatusCode::NOT_FOUND, ErrorCode::NotFound),
            AppError::Conflict(_) => (StatusCode::CONFLICT, ErrorCode::Conflict),
            AppError::Stale(_) => (StatusCode::CONFLICT, ErrorCode::Stale),
            AppError::BadState(_) => (StatusCode::CONFLICT, ErrorCode::BadState),
            AppError::Unauthenticated => (StatusCode::UNAUTHORIZED, ErrorCode::Unauthenticated),
            AppError::Forbidden(_) => (StatusCode::FORBIDDEN, ErrorCode::Forbidden),
            AppError::Missing(_) => (StatusCode::NOT_FOUND, ErrorCode::NotFound),
            AppError::TooLarge(_) => (StatusCode::PAYLOAD_TOO_LARGE, ErrorCode::PayloadTooLarge),
            AppError::Cloud { .. } => (StatusCode::BAD_GATEWAY, ErrorCode::CloudError),
            AppError::Store(_) | AppError::Crypto(_) | AppError::Blob(_) => {
                (StatusCode::INTERNAL_SERVER_ERROR, ErrorCode::Internal)
            }
        };
        let fields = match &e {
            AppError::Invalid(inv) => inv.0.clone(),
            _ => vec![],
        };
        let message = match &e {
            AppError::Store(_) | AppError::Crypto(_) | AppError::Blob(_) => {
                // The cause goes to the log with its chain; the caller gets no internals.
                error!(error = ?e, "internal error");
                "internal error; the control plane's log has the details".to_string()
            }
            AppError::Invalid(inv) => format!("invalid input: {inv}"),
            // The cloud's own words are what a user can act on.
            AppError::Cloud { .. } => crate::app::error_chain(&e),
            other => other.to_string(),
        };
        body(status, code, message, fields)
    }
}

pub async fn not_found(uri: axum::http::Uri) -> Response {
    body(
        StatusCode::NOT_FOUND,
        ErrorCode::NotFound,
        format!("no route {}", stratus_types::name::truncate(uri.path())),
        vec![],
    )
}
