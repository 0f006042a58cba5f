//! Errors at the admin API's edge: a status and a message that says what is wrong
//! and how to fix it. Internal errors are logged whole and answered with a short
//! message, never the chain.

use axum::response::{IntoResponse, Response};
use axum::Json;
use http::StatusCode;

use crate::configurator::ConfigError;
use crate::registry::RegistryError;

/// An error answered as `{"error": "..."}`.
#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub message: String,
}

impl ApiError {
    pub fn new(status: StatusCode, message: impl Into<String>) -> Self {
        Self { status, message: message.into() }
    }

    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, message)
    }

    fn internal(err: &anyhow::Error) -> Self {
        tracing::error!("admin request failed: {err:#}");
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, "internal error; see the node's log")
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.status, Json(serde_json::json!({ "error": self.message }))).into_response()
    }
}

impl From<RegistryError> for ApiError {
    fn from(err: RegistryError) -> Self {
        use RegistryError as E;
        let status = match &err {
            E::Manifest(_) | E::Component(_) | E::NameMismatch { .. } => StatusCode::BAD_REQUEST,
            E::VersionConflict { .. } => StatusCode::CONFLICT,
            E::UnknownService(_) | E::UnknownVersion { .. } => StatusCode::NOT_FOUND,
            E::Internal(e) => return Self::internal(e),
        };
        Self::new(status, err.to_string())
    }
}

impl From<ConfigError> for ApiError {
    fn from(err: ConfigError) -> Self {
        use ConfigError as E;
        let status = match &err {
            E::InvalidTenantId(_) | E::InvalidHostname(_) | E::NoHostnames | E::TooManyHostnames => {
                StatusCode::BAD_REQUEST
            }
            E::TenantExists(_) | E::HostnameTaken(_) => StatusCode::CONFLICT,
            E::UnknownTenant(_) | E::UnknownInstance(_) => StatusCode::NOT_FOUND,
            // A service or version named in a request body that does not exist is
            // the client's mistake in what it sent: 400 rather than 404.
            E::Registry(RegistryError::UnknownService(_) | RegistryError::UnknownVersion { .. }) => {
                StatusCode::BAD_REQUEST
            }
            E::Registry(inner) => return Self::from(RegistryError::Internal(anyhow::anyhow!("{inner}"))),
            E::Internal(e) => return Self::internal(e),
        };
        Self::new(status, err.to_string())
    }
}

impl From<anyhow::Error> for ApiError {
    fn from(err: anyhow::Error) -> Self {
        Self::internal(&err)
    }
}
