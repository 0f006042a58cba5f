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
//! A node on its own storage sees every change itself. Nodes sharing a
//! PostgreSQL control plane announce each change ([`publish`]: the identity
//! generation, bumped and notified); every node invalidates its caches and
//! acknowledges, and the changing node answers only once every live node has
//! (or after [`CLUSTER_MAX_AGE`], which bounds how long any node trusts an
//! entry, so a node frozen through a change finds its entries expired).

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

/// How long an entry is trusted on a node that shares its control plane: a
/// node frozen through a change (which waits this long for its
/// acknowledgement) finds its entries expired when it thaws.
pub const CLUSTER_MAX_AGE: Duration = Duration::from_secs(2);
/// The channel a change to credentials or memberships is announced on.
pub const IDENTITY_CHANNEL: &str = "wharf_identity";

/// The version of everything cached: bumped by every change to credentials,
/// memberships, roles, grants and tenants' existence.
#[derive(Debug)]
pub struct Epoch {
    value: AtomicU64,
    /// How long an entry is trusted (`None`: nothing is cached).
    max_age: Option<Duration>,
    /// The control plane's identity generation this node has followed.
    followed: std::sync::atomic::AtomicI64,
}

impl Epoch {
    /// Entries trusted for at most `max_age`; `None` caches nothing.
    pub fn new(max_age: Option<Duration>) -> Self {
        Self { value: AtomicU64::new(1), max_age, followed: std::sync::atomic::AtomicI64::new(-1) }
    }

    pub fn current(&self) -> u64 {
        self.value.load(Ordering::Acquire)
    }

    /// Something changed (and is committed): every entry read before is stale.
    pub fn bump(&self) {
        self.value.fetch_add(1, Ordering::AcqRel);
    }

    /// The control plane's identity generation is `value`: if it moved since
    /// this node last looked, everything cached is stale. Whether it moved.
    pub fn follow(&self, value: i64) -> bool {
        let before = self.followed.fetch_max(value, Ordering::AcqRel);
        if value > before {
            self.bump();
            return true;
        }
        false
    }
}

/// How long entries are trusted on a node with this control plane.
pub fn max_age(db: &crate::store::Db) -> Duration {
    match crate::store::dialect(db) {
        crate::store::Dialect::Sqlite => MAX_AGE,
        crate::store::Dialect::Postgres => CLUSTER_MAX_AGE,
    }
}

/// Announce a committed change to credentials or memberships: this node's
/// caches are stale at once; on a shared control plane the identity
/// generation is bumped and announced, and returned for the caller to wait
/// until every node has acknowledged it.
pub async fn publish(db: &crate::store::Db, epoch: &Epoch) -> anyhow::Result<Option<i64>> {
    use anyhow::Context as _;
    epoch.bump();
    if crate::store::dialect(db) != crate::store::Dialect::Postgres {
        return Ok(None);
    }
    let (value,): (i64,) =
        sqlx::query_as("UPDATE identity_generation SET value = value + 1 WHERE id = 1 RETURNING value")
            .fetch_one(db)
            .await
            .context("failed to bump the identity generation")?;
    sqlx::query("SELECT pg_notify($1, $2)")
        .bind(IDENTITY_CHANNEL)
        .bind(value.to_string())
        .execute(db)
        .await
        .context("failed to announce the identity generation")?;
    epoch.follow(value);
    Ok(Some(value))
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
        self.epoch.max_age.map(|_| self.epoch.current())
    }

    /// The answer remembered for `key`, if still valid.
    pub fn get(&self, key: &K) -> Option<V> {
        self.epoch.max_age?;
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
        let trusted = self.epoch.max_age.unwrap_or_default();
        let max_age = if negative { NEGATIVE_AGE.min(trusted) } else { trusted };
        self.map.insert(key, Entry { epoch, stored: Instant::now(), max_age, expires_at, value });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_entry_read_before_a_change_is_never_used_after_it() {
        let epoch = std::sync::Arc::new(Epoch::new(Some(MAX_AGE)));
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
        let off: Memo<&str, i32> = Memo::new(std::sync::Arc::new(Epoch::new(None)));
        off.put("a", off.begin(), 1, false, None);
        assert_eq!(off.get(&"a"), None);
    }
}
