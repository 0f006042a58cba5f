//! Each instance's own databases: its SQL ([`GuestSql`]) and its key-value store
//! ([`GuestKv`]), chosen once when its handle is made:
//!
//! - on one node, both live in the instance's directory ([`sqlite`]): the SQL in
//!   `data.sqlite`, the key-value store in `kv.sqlite`;
//! - with a PostgreSQL control plane, the SQL runs in the instance's own schema
//!   as its own role ([`postgres`]), and in a cluster the key-value store is
//!   kept in Redis ([`redis`]).
//!
//! The guest's SQL runs behind a guard on every backend: on SQLite an
//! authorizer ([`sqlguard`]) allows ordinary DDL and DML on the instance's own
//! tables and refuses everything that could reach outside the file or outlive
//! the request (ATTACH/DETACH, extensions, virtual tables, temp objects,
//! transactions outside `batch`, PRAGMAs that change settings;
//! `SQLITE_DBCONFIG_DEFENSIVE` is on); on PostgreSQL the role's privileges, and
//! a check that refuses statements that would change the session. Memory is
//! bounded before it is spent: a result has at most [`MAX_ROWS`] rows of
//! [`MAX_COLUMNS`] values of at most [`MAX_VALUE_BYTES`], [`MAX_RESULT_BYTES`]
//! in all, measured value by value before it is copied, and the whole process's
//! SQLite heap is capped ([`SQLITE_HEAP_LIMIT`]). The limits every backend
//! shares (keys, values, batch sizes) are checked here, before the call
//! reaches one.

mod databases;
mod export;
mod postgres;
mod redis;
mod sqlguard;
mod sqlite;
pub mod sqltext;
mod storage;
mod threads;
mod types;

use std::sync::Arc;
use std::time::Duration;

use std::path::Path;

pub use databases::{Databases, InstanceDb, MAX_OPENED};
pub use postgres::{PgDatabases, Snapshot};
use sqlguard::check_key;
pub use sqlite::{limit_sqlite_heap, sqlite_memory, OpenDatabases};
pub use threads::DbThreads;
pub use types::*;

/// One instance's databases, open (see [`InstanceDb`] for the handle routes
/// hold, which opens them on first use).
pub struct Opened {
    /// Its directory on this node (and, on one node, its files).
    local: Arc<sqlite::Local>,
    sql: Arc<dyn GuestSql>,
    kv: Arc<dyn GuestKv>,
    /// On PostgreSQL: its schema's server and its id, for the host's own
    /// reads (an export's snapshot).
    postgres: Option<(Arc<PgDatabases>, String)>,
    /// Where its calls are counted, and which backends its SQL and KV are on.
    calls: Arc<Calls>,
    sql_on: Backend,
    kv_on: Backend,
    /// When it was last used, in seconds of [`Databases`]' clock.
    used: std::sync::atomic::AtomicU64,
}

/// Where a node keeps instances' data besides their directories.
#[derive(Clone, Default)]
pub struct Backends {
    /// The guest's SQL in a PostgreSQL schema per instance.
    pub postgres: Option<Arc<PgDatabases>>,
    /// The key-value store in Redis.
    pub redis: Option<Arc<crate::shared::Redis>>,
    /// Calls guests made to their databases, for the metrics.
    pub calls: Arc<Calls>,
}

/// Where a call went: which store, on which backend.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    SqlSqlite,
    SqlPostgres,
    KvSqlite,
    KvRedis,
}

impl Backend {
    pub const ALL: [Backend; 4] = [Backend::SqlSqlite, Backend::SqlPostgres, Backend::KvSqlite, Backend::KvRedis];

    /// The database system, as OpenTelemetry names it (`db.system.name`).
    pub fn system(self) -> &'static str {
        match self {
            Backend::SqlSqlite | Backend::KvSqlite => "sqlite",
            Backend::SqlPostgres => "postgresql",
            Backend::KvRedis => "redis",
        }
    }

    /// (store, backend) as labels.
    pub fn labels(self) -> (&'static str, &'static str) {
        match self {
            Backend::SqlSqlite => ("sql", "sqlite"),
            Backend::SqlPostgres => ("sql", "postgres"),
            Backend::KvSqlite => ("kv", "sqlite"),
            Backend::KvRedis => ("kv", "redis"),
        }
    }
}

/// Guests' database calls per [`Backend`]: how many, how many failed, and the
/// time they took (waiting for a thread or connection included).
#[derive(Debug, Default)]
pub struct Calls {
    counts: [[std::sync::atomic::AtomicU64; 3]; 4],
}

impl Calls {
    fn record(&self, backend: Backend, failed: bool, took: std::time::Duration) {
        use std::sync::atomic::Ordering::Relaxed;
        let counts = &self.counts[backend as usize];
        counts[0].fetch_add(1, Relaxed);
        if failed {
            counts[1].fetch_add(1, Relaxed);
        }
        counts[2].fetch_add(u64::try_from(took.as_nanos()).unwrap_or(u64::MAX), Relaxed);
    }

    /// Calls, failed calls and their nanoseconds in all, on `backend`.
    pub fn of(&self, backend: Backend) -> (u64, u64, u64) {
        use std::sync::atomic::Ordering::Relaxed;
        let counts = &self.counts[backend as usize];
        (counts[0].load(Relaxed), counts[1].load(Relaxed), counts[2].load(Relaxed))
    }
}

impl std::fmt::Debug for Opened {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Opened").field("dir", &self.local.dir()).field("dialect", &self.sql.dialect()).finish()
    }
}

impl Opened {
    /// The databases of `tenant`'s `instance`, whose directory is `dir` (its
    /// files not opened yet), kept where `backends` say (on this node's disk
    /// otherwise); `threads` bounds the tenant's work on SQLite files, and
    /// `recent` is the instance's recent CPU use (shared with its guests').
    pub fn new(
        dir: &Path,
        instance: &str,
        tenant: &str,
        threads: Arc<DbThreads>,
        budget: Arc<OpenDatabases>,
        backends: &Backends,
        recent: Arc<crate::sched::RecentUse>,
    ) -> Self {
        let local = Arc::new(sqlite::Local::new(dir, tenant, threads, budget, recent));
        let sql: Arc<dyn GuestSql> = match &backends.postgres {
            Some(pg) => {
                Arc::new(postgres::PgSql::new(postgres::PgInstance::new(pg.clone(), instance, tenant), local.clone()))
            }
            None => local.clone(),
        };
        let kv: Arc<dyn GuestKv> = match &backends.redis {
            Some(redis) => Arc::new(redis::RedisKv::new(redis.clone(), instance)),
            None => local.clone(),
        };
        let postgres = backends.postgres.clone().map(|pg| (pg, instance.to_string()));
        let (sql_on, kv_on) = (
            if backends.postgres.is_some() { Backend::SqlPostgres } else { Backend::SqlSqlite },
            if backends.redis.is_some() { Backend::KvRedis } else { Backend::KvSqlite },
        );
        let used = Default::default();
        Self { local, sql, kv, postgres, calls: backends.calls.clone(), sql_on, kv_on, used }
    }

    /// Whether a call is waiting for or running on its connections.
    fn busy(&self) -> bool {
        self.local.busy()
    }

    /// Its tenant's line and database bytes.
    fn tenant_slots(&self) -> &Arc<threads::TenantSlots> {
        self.local.tenant_slots()
    }

    /// Run `call` (the guest's `operation`) on `backend`, counted, in a span
    /// of the guest's trace.
    async fn counted<T>(
        &self,
        backend: Backend,
        operation: &'static str,
        call: impl std::future::Future<Output = Result<T, String>>,
    ) -> Result<T, String> {
        use tracing::Instrument;
        let span = crate::telemetry::child_span!(
            "platform call",
            otel.name = operation,
            otel.kind = "client",
            db.system.name = backend.system(),
            wharf.store = backend.labels().0,
            otel.status_code = tracing::field::Empty,
            error.message = tracing::field::Empty,
        );
        let started = std::time::Instant::now();
        let result = call.instrument(span.clone()).await;
        self.calls.record(backend, result.is_err(), started.elapsed());
        if let Err(e) = &result {
            span.record("otel.status_code", "error");
            span.record("error.message", &e[..e.floor_char_boundary(500)]);
        }
        result
    }

    /// The dialect the guest's SQL is in.
    pub fn dialect(&self) -> Dialect {
        self.sql.dialect()
    }

    /// Create both files now, so the instance starts with its databases in
    /// place. Blocking: call it from a blocking context.
    pub fn provision(&self) -> Result<(), String> {
        self.local.provision()
    }

    /// Run a statement that returns rows.
    pub async fn query(&self, statement: String, params: Vec<SqlValue>, call: &Call) -> Result<SqlRows, String> {
        self.counted(self.sql_on, "sql.query", self.sql.query(statement, params, call)).await
    }

    /// Run a statement that changes data or schema; returns rows changed.
    pub async fn execute(&self, statement: String, params: Vec<SqlValue>, call: &Call) -> Result<u64, String> {
        self.counted(self.sql_on, "sql.execute", self.sql.execute(statement, params, call)).await
    }

    /// Run statements in one transaction.
    pub async fn batch(&self, statements: Vec<(String, Vec<SqlValue>)>, call: &Call) -> Result<Vec<u64>, String> {
        if statements.len() > MAX_BATCH {
            return Err(format!("a batch holds at most {MAX_BATCH} statements"));
        }
        self.counted(self.sql_on, "sql.batch", self.sql.batch(statements, call)).await
    }

    /// A key-value entry, unless absent or expired.
    pub async fn kv_get(&self, key: String, call: &Call) -> Result<Option<Vec<u8>>, String> {
        check_key(&key)?;
        self.counted(self.kv_on, "kv.get", self.kv.get(key, call)).await
    }

    /// Set a key-value entry, optionally expiring.
    pub async fn kv_set(&self, key: String, value: Vec<u8>, ttl: Option<Duration>, call: &Call) -> Result<(), String> {
        check_key(&key)?;
        if value.len() > MAX_VALUE_BYTES {
            return Err(format!("the value is larger than {} MiB", MAX_VALUE_BYTES >> 20));
        }
        self.counted(self.kv_on, "kv.set", self.kv.set(key, value, ttl, call)).await
    }

    /// Delete a key-value entry; whether a live one existed.
    pub async fn kv_delete(&self, key: String, call: &Call) -> Result<bool, String> {
        check_key(&key)?;
        self.counted(self.kv_on, "kv.delete", self.kv.delete(key, call)).await
    }

    /// Live keys starting with `prefix`, sorted.
    pub async fn kv_list(&self, prefix: String, limit: u32, call: &Call) -> Result<Vec<String>, String> {
        if prefix.len() > MAX_KEY_BYTES {
            return Err(format!("the prefix is longer than {MAX_KEY_BYTES} bytes"));
        }
        self.counted(self.kv_on, "kv.list-keys", self.kv.list(prefix, limit.clamp(1, MAX_LIST), call)).await
    }

    /// Add `delta` to the integer at `key` (0 if absent or expired), atomically,
    /// keeping a live entry's expiry.
    pub async fn kv_increment(&self, key: String, delta: i64, call: &Call) -> Result<i64, String> {
        check_key(&key)?;
        self.counted(self.kv_on, "kv.increment", self.kv.increment(key, delta, call)).await
    }
}

#[cfg(test)]
mod backends_tests;
#[cfg(test)]
mod tests;
