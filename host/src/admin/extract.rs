//! Path and query extractors whose refusals are the API's own errors (JSON,
//! saying what to send), not the framework's plain text.

use axum::extract::{FromRequestParts, Path, Query};
use http::request::Parts;
use serde::de::DeserializeOwned;

use super::ApiError;

/// A path's parameters; a malformed one (not UTF-8 once decoded) is a 400.
pub struct ApiPath<T>(pub T);

impl<T, S> FromRequestParts<S> for ApiPath<T>
where
    T: DeserializeOwned + Send,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        Path::<T>::from_request_parts(parts, state)
            .await
            .map(|Path(value)| ApiPath(value))
            .map_err(|e| ApiError::bad_request(format!("{}; path segments are percent-encoded UTF-8", e.body_text())))
    }
}

/// A query string's parameters; an unknown, repeated or malformed one is a 400
/// that names it.
pub struct ApiQuery<T>(pub T);

impl<T, S> FromRequestParts<S> for ApiQuery<T>
where
    T: DeserializeOwned + Send,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        Query::<T>::from_request_parts(parts, state).await.map(|Query(value)| ApiQuery(value)).map_err(|e| {
            ApiError::bad_request(format!("{}; GET /v1/openapi.json lists each endpoint's parameters", e.body_text()))
        })
    }
}

/// A JSON body that must be an object: serde would also build a struct from an
/// array of its fields' values (`[null, null]`), which no client means.
#[derive(Debug)]
pub struct Object<T>(pub T);

impl<'de, T: serde::de::DeserializeOwned> serde::Deserialize<'de> for Object<T> {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        use serde::de::Error as _;
        let value = serde_json::Value::deserialize(deserializer)?;
        if !value.is_object() {
            return Err(D::Error::custom("expected a JSON object"));
        }
        if holds_nul(&value) {
            return Err(D::Error::custom(NUL_IN_TEXT));
        }
        T::deserialize(value).map(Object).map_err(D::Error::custom)
    }
}

/// Why text holding U+0000 is refused.
pub const NUL_IN_TEXT: &str =
    "text may not hold the NUL character (\\u0000): no name, id, setting or detail does, and databases refuse it";

/// Whether any string (or key) in `value` holds U+0000.
fn holds_nul(value: &serde_json::Value) -> bool {
    use serde_json::Value;
    match value {
        Value::String(s) => s.contains('\0'),
        Value::Array(items) => items.iter().any(holds_nul),
        Value::Object(fields) => fields.iter().any(|(k, v)| k.contains('\0') || holds_nul(v)),
        _ => false,
    }
}

/// Refuse a request whose path or query holds a NUL character (`%00`) before
/// any handler sees it: no id, name or filter holds one, and PostgreSQL would
/// refuse it as a server error.
pub async fn refuse_nul(request: axum::extract::Request, next: axum::middleware::Next) -> axum::response::Response {
    use axum::response::IntoResponse;
    let uri = request.uri();
    let nul = |text: &str| text.as_bytes().windows(3).any(|w| w[0] == b'%' && w[1] == b'0' && w[2] == b'0');
    if nul(uri.path()) || uri.query().is_some_and(nul) {
        return ApiError::bad_request(
            "the request's path or query holds a NUL character (%00); no id, name or filter holds one",
        )
        .into_response();
    }
    next.run(request).await
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::Object;

    #[derive(serde::Deserialize, Debug)]
    #[serde(deny_unknown_fields)]
    struct Limit {
        amount: Option<i64>,
        #[serde(default)]
        currency: Option<String>,
    }

    #[test]
    fn text_holding_nul_is_refused_wherever_it_is() {
        for body in [r#"{"amount": 5, "currency": "e\u0000"}"#, r#"{"amount": 5, "x\u0000": 1}"#] {
            let e = serde_json::from_str::<Object<Limit>>(body).unwrap_err().to_string();
            assert!(e.contains("NUL"), "{e}");
        }
    }

    #[test]
    fn a_body_is_an_object_never_an_array_of_field_values() {
        let Object(limit) = serde_json::from_str::<Object<Limit>>(r#"{"amount": 5}"#).unwrap();
        assert_eq!((limit.amount, limit.currency), (Some(5), None));
        let e = serde_json::from_str::<Object<Limit>>("[null, null]").unwrap_err().to_string();
        assert!(e.contains("expected a JSON object"), "{e}");
        let e = serde_json::from_str::<Object<Limit>>(r#"{"amount": 5, "extra": 1}"#).unwrap_err().to_string();
        assert!(e.contains("unknown field `extra`"), "{e}");
    }
}
