//! Errors at the admin API's edge: a status and a message that says what is wrong
//! and how to fix it. Internal errors are logged whole and answered with a short
//! message, never the chain.

use axum::response::{IntoResponse, Response};
use axum::Json;
use http::StatusCode;

use crate::access::AccessError;
use crate::configurator::ConfigError;
use crate::identity::IdentityError;
use crate::registry::RegistryError;

/// An error answered as `{"error": "..."}`.
#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub message: String,
    /// Seconds for `Retry-After` (429).
    pub retry_after: Option<u64>,
}

impl ApiError {
    pub fn new(status: StatusCode, message: impl Into<String>) -> Self {
        Self { status, message: message.into(), retry_after: None }
    }

    /// 401 with `WWW-Authenticate`.
    pub fn unauthorized(message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, message)
    }

    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, message)
    }

    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, message)
    }

    pub(crate) fn internal(err: &anyhow::Error) -> Self {
        tracing::error!("admin request failed: {err:#}");
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, "internal error; see the node's log")
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut response = (self.status, Json(serde_json::json!({ "error": self.message }))).into_response();
        let headers = response.headers_mut();
        if self.status == StatusCode::UNAUTHORIZED {
            headers.insert(
                http::header::WWW_AUTHENTICATE,
                http::HeaderValue::from_static(crate::identity::credentials::WWW_AUTHENTICATE),
            );
        }
        if let Some(seconds) = self.retry_after {
            headers.insert(http::header::RETRY_AFTER, http::HeaderValue::from(seconds));
        }
        response
    }
}

impl From<IdentityError> for ApiError {
    fn from(err: IdentityError) -> Self {
        use IdentityError as E;
        let status = match &err {
            E::InvalidEmail(_) | E::WeakPassword | E::InvalidKeyName | E::UnknownUser(_) => StatusCode::BAD_REQUEST,
            E::EmailTaken => StatusCode::CONFLICT,
            E::RegistrationClosed | E::InvitationRequired | E::TooManyInvitations(_) => StatusCode::FORBIDDEN,
            E::InvalidInvitation => StatusCode::BAD_REQUEST,
            E::BadCredentials | E::OverlongPassword => StatusCode::UNAUTHORIZED,
            E::RateLimited(wait) => {
                let mut e = Self::new(StatusCode::TOO_MANY_REQUESTS, err.to_string());
                e.retry_after = Some(wait.as_secs().max(1));
                return e;
            }
            E::Busy => {
                let mut e = Self::new(StatusCode::SERVICE_UNAVAILABLE, err.to_string());
                e.retry_after = Some(1);
                return e;
            }
            E::UnknownKey(_) => StatusCode::NOT_FOUND,
            E::WrongPassword => StatusCode::FORBIDDEN,
            E::Internal(e) => return Self::internal(e),
        };
        Self::new(status, err.to_string())
    }
}

impl From<AccessError> for ApiError {
    fn from(err: AccessError) -> Self {
        use AccessError as E;
        let status = match &err {
            E::NoSuchTenant(_) => StatusCode::NOT_FOUND,
            E::Forbidden(..) | E::OperatorsOnly(_) => StatusCode::FORBIDDEN,
            E::InvalidRole(_) | E::NotAMember(..) => StatusCode::BAD_REQUEST,
            E::LastOwner | E::TenantDeleted(_) | E::LastOwnerOf(_) | E::LastOperator => StatusCode::CONFLICT,
            E::Internal(e) => return Self::internal(e),
        };
        Self::new(status, err.to_string())
    }
}

impl From<RegistryError> for ApiError {
    fn from(err: RegistryError) -> Self {
        use RegistryError as E;
        let status = match &err {
            E::Manifest(_) | E::Component(_) | E::NameMismatch { .. } | E::Dialect { .. } | E::NoWorker { .. } => {
                StatusCode::BAD_REQUEST
            }
            E::VersionConflict { .. } | E::NotLoadable { .. } | E::InUse { .. } => StatusCode::CONFLICT,
            E::UnknownService(_) | E::UnknownVersion { .. } => StatusCode::NOT_FOUND,
            E::Internal(e) => return Self::internal(e),
        };
        Self::new(status, err.to_string())
    }
}

impl From<crate::rollout::RolloutError> for ApiError {
    fn from(err: crate::rollout::RolloutError) -> Self {
        use crate::rollout::RolloutError as E;
        match err {
            E::NotReady { .. } | E::NoPrevious(_) => Self::new(StatusCode::CONFLICT, err.to_string()),
            E::InvalidCanary(message) => Self::bad_request(message),
            E::Registry(e) => e.into(),
            E::Config(e) => e.into(),
            E::Internal(e) => Self::internal(&e),
        }
    }
}

impl From<ConfigError> for ApiError {
    fn from(err: ConfigError) -> Self {
        use ConfigError as E;
        let status = match &err {
            E::InvalidTenantId(_)
            | E::InvalidDisplayName
            | E::InvalidHostname(_)
            | E::NoHostnames
            | E::TooManyHostnames
            | E::UnknownModule { .. }
            | E::InvalidSetting(_)
            | E::InvalidInstanceName(_)
            | E::HostnameRefused(..)
            | E::InvalidExport(_) => StatusCode::BAD_REQUEST,
            E::TenantExists(_)
            | E::HostnameTaken(_)
            | E::HostnameReserved(..)
            | E::InstanceNameTaken(..)
            | E::Deleted(_)
            | E::NotDeleted(_)
            | E::TenantDeleted(_)
            | E::TenantNotDeleted(_)
            | E::NotExportable(..) => StatusCode::CONFLICT,
            E::NoClaim(..) => StatusCode::NOT_FOUND,
            E::NotVerified(..) => StatusCode::UNPROCESSABLE_ENTITY,
            E::QuotaExceeded { .. } | E::TenantCreationClosed => StatusCode::FORBIDDEN,
            E::UnknownTenant(_) | E::UnknownInstance(_) => StatusCode::NOT_FOUND,
            // A service or version named in a request body that does not exist is
            // the client's mistake in what it sent: 400 rather than 404.
            E::Registry(
                RegistryError::UnknownService(_) | RegistryError::UnknownVersion { .. } | RegistryError::Dialect { .. },
            ) => StatusCode::BAD_REQUEST,
            E::Registry(RegistryError::NotLoadable { .. }) => StatusCode::CONFLICT,
            E::Registry(inner) => return Self::from(RegistryError::Internal(anyhow::anyhow!("{inner}"))),
            E::Internal(e) => return Self::internal(e),
        };
        Self::new(status, err.to_string())
    }
}

impl From<crate::jobs::JobError> for ApiError {
    fn from(err: crate::jobs::JobError) -> Self {
        use crate::jobs::JobError as E;
        let status = match &err {
            E::PayloadTooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            E::InvalidKind(_)
            | E::NotDeclared { .. }
            | E::InvalidKey
            | E::InvalidAttempts
            | E::InvalidDelay
            | E::InvalidState(_) => StatusCode::BAD_REQUEST,
            E::QuotaExceeded { .. } | E::BytesExceeded { .. } => StatusCode::FORBIDDEN,
            E::UnknownJob(_) => StatusCode::NOT_FOUND,
            E::WrongState { .. } => StatusCode::CONFLICT,
            E::Internal(e) => return Self::internal(e),
        };
        Self::new(status, err.to_string())
    }
}

impl From<crate::billing::BillingError> for ApiError {
    fn from(err: crate::billing::BillingError) -> Self {
        use crate::billing::BillingError as E;
        use crate::clock::ClockError;
        let status = match &err {
            E::UnknownService(_) | E::NoPlan(_) | E::UnknownDiscount(_) => StatusCode::NOT_FOUND,
            E::InvalidPlan(_)
            | E::InvalidPeriod(_)
            | E::InvalidDiscount(_)
            | E::InvalidDetails(_)
            | E::InvalidLimit(_)
            | E::Clock(ClockError::Backwards { .. } | ClockError::TooFar { .. }) => StatusCode::BAD_REQUEST,
            E::PeriodOpen { .. } | E::Clock(ClockError::NotSettable) => StatusCode::CONFLICT,
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
