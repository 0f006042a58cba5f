//! Authentication at the admin API's edge: the `Authed` extractor resolves the
//! bearer token to a caller, or answers 401 with `WWW-Authenticate`.

use std::sync::Arc;

use axum::extract::FromRequestParts;
use http::request::Parts;

use super::ApiError;
use crate::identity::Caller;
use crate::node::Node;

/// The authenticated caller of a request.
pub struct Authed(pub Caller);

/// The token of an `Authorization: Bearer <token>` header.
pub fn bearer(headers: &http::HeaderMap) -> Option<&str> {
    let value = headers.get(http::header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim()).filter(|t| !t.is_empty())
}

impl FromRequestParts<Arc<Node>> for Authed {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, node: &Arc<Node>) -> Result<Self, ApiError> {
        let token = bearer(&parts.headers).ok_or_else(|| {
            ApiError::unauthorized("authentication required: send `Authorization: Bearer <session token or API key>`")
        })?;
        match node.identity.authenticate(token).await? {
            Some(caller) => Ok(Authed(caller)),
            None => Err(ApiError::unauthorized("the credential is invalid, expired or revoked; log in again")),
        }
    }
}
