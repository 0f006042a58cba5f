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

/// The request's bearer token when it is a Wharf session token or API key.
pub fn wharf_bearer(headers: &http::HeaderMap) -> Option<&str> {
    bearer(headers).filter(|token| carries_wharf_secret(token))
}

/// Whether `text` holds a Wharf session token or API key anywhere (the
/// prefixes in any case).
pub fn carries_wharf_secret(text: &str) -> bool {
    use super::secrets::{KEY_PREFIX, SESSION_PREFIX};
    const _: () = assert!(SESSION_PREFIX.len() == KEY_PREFIX.len());
    text.as_bytes().windows(SESSION_PREFIX.len()).any(|window| {
        window.eq_ignore_ascii_case(SESSION_PREFIX.as_bytes()) || window.eq_ignore_ascii_case(KEY_PREFIX.as_bytes())
    })
}

/// Remove every `Authorization` and `Proxy-Authorization` value that carries a
/// Wharf credential, whatever its position or scheme (including inside a Basic
/// credential); other values reach the guest unchanged.
pub fn strip_wharf_credentials(headers: &mut http::HeaderMap) {
    use base64::Engine as _;
    for name in [http::header::AUTHORIZATION, http::header::PROXY_AUTHORIZATION] {
        if !headers.contains_key(&name) {
            continue;
        }
        let values: Vec<HeaderValue> = headers.get_all(&name).iter().cloned().collect();
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

#[cfg(test)]
mod tests {
    use super::*;
    use base64::Engine as _;

    #[test]
    fn a_wharf_secret_is_found_in_any_case_and_anywhere() {
        assert!(carries_wharf_secret("whk_abc"));
        assert!(carries_wharf_secret("Bearer WHS_abc"));
        assert!(carries_wharf_secret("token=x, wHk_abc"));
        assert!(!carries_wharf_secret("Bearer whx_abc"));
        assert!(!carries_wharf_secret("wh"));
        assert!(!carries_wharf_secret(""));
        assert!(!carries_wharf_secret("élan whk"), "non-ASCII text and a prefix cut short");
    }

    #[test]
    fn every_value_carrying_a_wharf_credential_is_stripped_and_no_other() {
        let mut headers = http::HeaderMap::new();
        headers.append(http::header::AUTHORIZATION, HeaderValue::from_static("Bearer WHK_secret"));
        headers.append(http::header::AUTHORIZATION, HeaderValue::from_static("Bearer upstream-token"));
        let basic = base64::engine::general_purpose::STANDARD.encode("me:whs_hidden");
        headers.append(http::header::PROXY_AUTHORIZATION, HeaderValue::from_str(&format!("Basic {basic}")).unwrap());
        headers.append(http::header::ACCEPT, HeaderValue::from_static("whk_not-a-credential-header"));
        strip_wharf_credentials(&mut headers);
        let kept: Vec<_> = headers.get_all(http::header::AUTHORIZATION).iter().collect();
        assert_eq!(kept, ["Bearer upstream-token"]);
        assert!(!headers.contains_key(http::header::PROXY_AUTHORIZATION));
        assert_eq!(headers[http::header::ACCEPT], "whk_not-a-credential-header");
    }
}
