//! Credentials and memberships held in memory, so that a request with a
//! session or key asks the control plane nothing on a hit.
//!
//! Every entry is tagged with the [`Epoch`] read *before* its rows were read;
//! every change to who may do what bumps the epoch once it is committed, so an
//! entry read before a change — even one stored after it — is never used
//! again. Entries also expire: a session or key at its own expiry, an answer
//! "no such credential" after [`NEGATIVE_AGE`] (a flood of made-up tokens
//! reaches the database once per token per few seconds, and a bounded map),
//! every other after [`MAX_AGE`].
//!
//! Only a node on its own storage caches: every change to its control plane
//! goes through it. Nodes sharing a PostgreSQL control plane read on every
//! request until changes made on one node invalidate the others' caches
//! before they are acknowledged (see the README).

use std::hash::Hash;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use dashmap::DashMap;

/// How long a found entry is trusted without a change to invalidate it.
pub const MAX_AGE: Duration = Duration::from_secs(60);
/// How long "no such credential" is remembered.
pub const NEGATIVE_AGE: Duration = Duration::from_secs(2);
/// Entries per map; a full map is emptied (the next reads refill it).
pub const CAPACITY: usize = 20_000;

/// The version of everything cached: bumped by every change to credentials,
/// memberships, roles, grants and tenants' existence.
#[derive(Debug)]
pub struct Epoch {
    value: AtomicU64,
    enabled: bool,
}

impl Epoch {
    /// With `enabled` false nothing is ever cached.
    pub fn new(enabled: bool) -> Self {
        Self { value: AtomicU64::new(1), enabled }
    }

    pub fn current(&self) -> u64 {
        self.value.load(Ordering::Acquire)
    }

    /// Something changed (and is committed): every entry read before is stale.
    pub fn bump(&self) {
        self.value.fetch_add(1, Ordering::AcqRel);
    }
}

struct Entry<V> {
    epoch: u64,
    stored: Instant,
    max_age: Duration,
    /// Unix seconds at which the credential itself expires.
    expires_at: Option<i64>,
    value: V,
}

/// A bounded map of answers, valid while the epoch they were read under lasts.
pub struct Memo<K, V> {
    epoch: std::sync::Arc<Epoch>,
    map: DashMap<K, Entry<V>>,
}

impl<K: Eq + Hash, V: Clone> Memo<K, V> {
    pub fn new(epoch: std::sync::Arc<Epoch>) -> Self {
        Self { epoch, map: DashMap::new() }
    }

    /// The epoch to tag what is about to be read with (`None`: don't cache).
    pub fn begin(&self) -> Option<u64> {
        self.epoch.enabled.then(|| self.epoch.current())
    }

    /// The answer remembered for `key`, if still valid.
    pub fn get(&self, key: &K) -> Option<V> {
        if !self.epoch.enabled {
            return None;
        }
        let entry = self.map.get(key)?;
        let fresh = entry.epoch == self.epoch.current()
            && entry.stored.elapsed() < entry.max_age
            && entry.expires_at.is_none_or(|at| crate::store::now() < at);
        fresh.then(|| entry.value.clone())
    }

    /// Remember `value` for `key`, read under `epoch` (from [`Memo::begin`]);
    /// `negative` answers are kept briefly.
    pub fn put(&self, key: K, epoch: Option<u64>, value: V, negative: bool, expires_at: Option<i64>) {
        let Some(epoch) = epoch else { return };
        if epoch != self.epoch.current() {
            return; // changed meanwhile: what was read may be stale already
        }
        if self.map.len() >= CAPACITY {
            self.map.clear();
        }
        let max_age = if negative { NEGATIVE_AGE } else { MAX_AGE };
        self.map.insert(key, Entry { epoch, stored: Instant::now(), max_age, expires_at, value });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_entry_read_before_a_change_is_never_used_after_it() {
        let epoch = std::sync::Arc::new(Epoch::new(true));
        let memo: Memo<&str, i32> = Memo::new(epoch.clone());
        let before = memo.begin();
        memo.put("a", before, 1, false, None);
        assert_eq!(memo.get(&"a"), Some(1));
        epoch.bump();
        assert_eq!(memo.get(&"a"), None, "stale after a change");
        // Read before the change, stored after it: refused.
        let read = memo.begin();
        epoch.bump();
        memo.put("b", read, 2, false, None);
        assert_eq!(memo.get(&"b"), None);
        // Expired credentials are not answered.
        memo.put("c", memo.begin(), 3, false, Some(crate::store::now() - 1));
        assert_eq!(memo.get(&"c"), None);
        // Disabled: nothing is kept.
        let off: Memo<&str, i32> = Memo::new(std::sync::Arc::new(Epoch::new(false)));
        off.put("a", off.begin(), 1, false, None);
        assert_eq!(off.get(&"a"), None);
    }
}
