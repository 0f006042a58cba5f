//! The instance's key-value store: `wharf:platform/kv`. Sessions, counters and
//! caches live here, per instance (keys of one instance are invisible to every
//! other), and survive restarts and moves between nodes.
//!
//! ```no_run
//! use std::time::Duration;
//! use wharf_sdk::kv;
//!
//! fn remember_session(id: &str, user: &str) -> wharf_sdk::Result<()> {
//!     kv::set(&format!("session:{id}"), user.as_bytes(), Some(Duration::from_secs(3600)))?;
//!     let visits = kv::increment("visits", 1)?;
//!     let _ = visits;
//!     Ok(())
//! }
//! ```

use std::time::Duration;

use crate::bindings::wharf::platform::kv as wit;
use crate::Error;

fn error(message: String) -> Error {
    Error::internal(format!("key-value: {message}"))
}

/// The value at `key`, unless absent or expired.
pub fn get(key: &str) -> Result<Option<Vec<u8>>, Error> {
    wit::get(key).map_err(error)
}

/// The value at `key` as text.
pub fn get_string(key: &str) -> Result<Option<String>, Error> {
    Ok(get(key)?.map(|b| String::from_utf8_lossy(&b).into_owned()))
}

/// Set `key`; with `ttl` it expires after that long.
pub fn set(key: &str, value: &[u8], ttl: Option<Duration>) -> Result<(), Error> {
    wit::set(key, value, ttl.map(|t| t.as_secs().max(1))).map_err(error)
}

/// Delete `key`; whether it existed.
pub fn delete(key: &str) -> Result<bool, Error> {
    wit::delete(key).map_err(error)
}

/// Keys starting with `prefix`, sorted, at most `limit` (≤ 1000).
pub fn list(prefix: &str, limit: u32) -> Result<Vec<String>, Error> {
    wit::list_keys(prefix, limit).map_err(error)
}

/// Add `delta` to the integer at `key` (0 if absent); returns the new value.
pub fn increment(key: &str, delta: i64) -> Result<i64, Error> {
    wit::increment(key, delta).map_err(error)
}
