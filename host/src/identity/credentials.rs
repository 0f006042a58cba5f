//! Credentials as they arrive: the bearer token of an `Authorization` header,
//! the challenge a `401` carries, and the Wharf secrets a request may hold
//! anywhere (removed before a guest sees the request). Both the admin API and
//! the ingress read credentials through here.

use http::HeaderValue;

/// The `WWW-Authenticate` challenge of a `401`.
pub const WWW_AUTHENTICATE: &str = "Bearer realm=\"wharf\"";

/// The bearer token of `Authorization: Bearer <token>`, if any.
pub fn bearer(headers: &http::HeaderMap) -> Option<&str> {
    let value = headers.get(http::header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim()).filter(|t| !t.is_empty())
}

/// Whether the request carries a Wharf session token or API key.
pub fn wharf_credential(headers: &http::HeaderMap) -> bool {
    bearer(headers).is_some_and(carries_wharf_secret)
}

/// Whether `text` holds a Wharf session token or API key anywhere.
pub fn carries_wharf_secret(text: &str) -> bool {
    use super::secrets::{KEY_PREFIX, SESSION_PREFIX};
    let lower = text.to_ascii_lowercase();
    lower.contains(SESSION_PREFIX) || lower.contains(KEY_PREFIX)
}

/// Remove every `Authorization` and `Proxy-Authorization` value that carries a
/// Wharf credential, whatever its position or scheme (including inside a Basic
/// credential); other values reach the guest unchanged.
pub fn strip_wharf_credentials(headers: &mut http::HeaderMap) {
    use base64::Engine as _;
    for name in [http::header::AUTHORIZATION, http::header::PROXY_AUTHORIZATION] {
        let values: Vec<HeaderValue> = headers.get_all(&name).iter().cloned().collect();
        if values.is_empty() {
            continue;
        }
        let carries = |value: &HeaderValue| {
            let text = String::from_utf8_lossy(value.as_bytes());
            if carries_wharf_secret(&text) {
                return true;
            }
            // `Basic base64(user:password)` may hide a token in either part.
            text.split_whitespace().any(|word| {
                base64::engine::general_purpose::STANDARD
                    .decode(word.trim_end_matches(','))
                    .is_ok_and(|decoded| carries_wharf_secret(&String::from_utf8_lossy(&decoded)))
            })
        };
        if !values.iter().any(carries) {
            continue;
        }
        headers.remove(&name);
        for value in values.into_iter().filter(|v| !carries(v)) {
            headers.append(&name, value);
        }
    }
}
