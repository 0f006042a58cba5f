//! Authentication at the admin API's edge: the `Authed` extractor resolves the
//! bearer token to a caller, or answers 401 with `WWW-Authenticate`.

use std::sync::Arc;

use axum::extract::FromRequestParts;
use http::request::Parts;

use super::AdminState;
use super::ApiError;
use crate::identity::credentials::bearer;
use crate::identity::Caller;

/// The authenticated caller of a request.
pub struct Authed(pub Caller);

/// The caller if the request carries a valid credential (an invalid one is
/// still refused: a client that sent one meant to be somebody).
pub struct MaybeAuthed(pub Option<Caller>);

impl FromRequestParts<Arc<AdminState>> for MaybeAuthed {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, node: &Arc<AdminState>) -> Result<Self, ApiError> {
        if bearer(&parts.headers).is_none() {
            return Ok(MaybeAuthed(None));
        }
        Authed::from_request_parts(parts, node).await.map(|Authed(caller)| MaybeAuthed(Some(caller)))
    }
}

/// The client's address: the peer's, or, when the peer is a trusted proxy, the
/// nearest address in `X-Forwarded-For` that is not one of the trusted proxies.
pub fn client_ip(
    peer: std::net::IpAddr,
    headers: &http::HeaderMap,
    trusted: &[crate::config::IpBlock],
) -> std::net::IpAddr {
    let is_trusted = |ip: std::net::IpAddr| trusted.iter().any(|b| b.contains(ip));
    if !is_trusted(peer) {
        return peer;
    }
    let mut client = peer;
    // Right to left: each hop appended the address it got the request from.
    let hops: Vec<&str> =
        headers.get_all("x-forwarded-for").iter().filter_map(|v| v.to_str().ok()).flat_map(|v| v.split(',')).collect();
    for hop in hops.iter().rev() {
        match hop.trim().parse::<std::net::IpAddr>() {
            Ok(ip) => {
                client = ip;
                if !is_trusted(ip) {
                    break;
                }
            }
            // An unreadable hop ends the chain: nothing left of it is believable.
            Err(_) => break,
        }
    }
    client
}

impl FromRequestParts<Arc<AdminState>> for Authed {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, node: &Arc<AdminState>) -> Result<Self, ApiError> {
        let token = bearer(&parts.headers).ok_or_else(|| {
            ApiError::unauthorized("authentication required: send `Authorization: Bearer <session token or API key>`")
        })?;
        let caller = node
            .identity
            .authenticate(token)
            .await?
            .ok_or_else(|| ApiError::unauthorized("the credential is invalid, expired or revoked; log in again"))?;
        // Changes are bounded per account (reads are not); operators are not bound.
        let changes = !matches!(parts.method, http::Method::GET | http::Method::HEAD);
        if changes && !caller.operator {
            if let Err(wait) = node.admin_throttle.take(&caller.user_id) {
                let mut error = ApiError::new(
                    http::StatusCode::TOO_MANY_REQUESTS,
                    "too many changes from this account; slow down and retry",
                );
                error.retry_after = Some(wait.as_secs().max(1));
                return Err(error);
            }
        }
        Ok(Authed(caller))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn forwarded_for_is_believed_only_from_trusted_proxies() {
        let trusted: Vec<crate::config::IpBlock> = vec!["10.0.0.0/8".parse().unwrap()];
        let mut headers = http::HeaderMap::new();
        headers.insert("x-forwarded-for", "1.1.1.1, 2.2.2.2, 10.0.0.7".parse().unwrap());
        let proxy: std::net::IpAddr = "10.0.0.1".parse().unwrap();
        let stranger: std::net::IpAddr = "3.3.3.3".parse().unwrap();
        assert_eq!(client_ip(proxy, &headers, &trusted), "2.2.2.2".parse::<std::net::IpAddr>().unwrap());
        assert_eq!(client_ip(stranger, &headers, &trusted), stranger);
        assert_eq!(client_ip(proxy, &http::HeaderMap::new(), &trusted), proxy);
        headers.insert("x-forwarded-for", "junk".parse().unwrap());
        assert_eq!(client_ip(proxy, &headers, &trusted), proxy);
    }
}
