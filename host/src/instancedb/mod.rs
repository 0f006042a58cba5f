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

mod postgres;
mod redis;
mod sqlguard;
mod sqlite;
pub mod sqltext;
mod storage;
mod threads;

use std::sync::Arc;
use std::time::{Duration, Instant};

use std::path::Path;
use std::sync::atomic::AtomicU64;

pub use postgres::PgDatabases;
use sqlguard::check_key;
pub use sqlite::{limit_sqlite_heap, sqlite_memory, OpenDatabases};
pub use threads::DbThreads;

/// Longest statement accepted, in bytes.
pub const MAX_STATEMENT_BYTES: usize = 100 * 1024;
/// Most rows one query returns.
pub const MAX_ROWS: usize = 10_000;
/// The limits of an instance's values and key-value store, whichever backend
/// keeps them (Redis enforces them too).
pub use crate::shared::{MAX_KEY_BYTES, MAX_KV_BYTES, MAX_VALUE_BYTES};

/// Most bytes one query returns.
pub const MAX_RESULT_BYTES: usize = 4 << 20;
/// Most columns in a table, an index or a result (`SQLITE_LIMIT_COLUMN`). With
/// [`MAX_VALUE_BYTES`] this bounds one result row: 64 MiB.
pub const MAX_COLUMNS: usize = 64;
/// Largest database file (pages of 4 KiB).
pub const MAX_DB_BYTES: u64 = 256 << 20;
/// Longest one statement may run.
pub const STATEMENT_TIMEOUT: Duration = Duration::from_secs(2);
/// How often a node re-reads a tenant's database sizes from PostgreSQL: what
/// other nodes wrote meanwhile can overshoot the quota by what they write in this time.
pub const TENANT_SIZES_EVERY: Duration = Duration::from_secs(1);
/// Longest a call waits for its instance's connection and a database thread
/// before it hears "busy".
pub const MAX_WAIT: Duration = Duration::from_secs(1);
/// A write-ahead log above this size is checkpointed and truncated after the
/// write, so a refused (or huge) write never leaves the instance holding more
/// disk than its quota.
pub const WAL_LIMIT: u64 = 4 << 20;
/// Page cache of each connection, in KiB (SQLite's default is 2 MiB).
pub const PAGE_CACHE_KIB: i64 = 256;
/// All SQLite memory of the process (guests' and the control plane's): past it,
/// allocations fail and the statement gets "needs more memory".
pub const SQLITE_HEAP_LIMIT: i64 = 512 << 20;
/// Past this, SQLite frees cached pages before it allocates more.
pub const SQLITE_SOFT_HEAP_LIMIT: i64 = 256 << 20;
/// How many instances a node keeps databases open for at once (each holds up to
/// six file descriptors: two files, their WALs and shared memory).
pub const MAX_OPEN_DATABASES: usize = 256;

/// Most statements in one batch.
pub const MAX_BATCH: usize = 1000;
/// Most keys one listing returns.
pub const MAX_LIST: u32 = 1000;

/// An instance's SQL database: SQLite or PostgreSQL.
#[async_trait::async_trait]
pub trait GuestSql: Send + Sync {
    /// The dialect the guest's SQL is in.
    fn dialect(&self) -> Dialect;
    /// Run a statement that returns rows.
    async fn query(&self, statement: String, params: Vec<SqlValue>, call: &Call) -> Result<SqlRows, String>;
    /// Run a statement that changes data or schema; returns rows changed.
    async fn execute(&self, statement: String, params: Vec<SqlValue>, call: &Call) -> Result<u64, String>;
    /// Run statements in one transaction (at most [`MAX_BATCH`]).
    async fn batch(&self, statements: Vec<(String, Vec<SqlValue>)>, call: &Call) -> Result<Vec<u64>, String>;
}

/// An instance's key-value store: SQLite or Redis. Keys and values arrive
/// checked against the limits ([`InstanceDb`] checks them).
#[async_trait::async_trait]
pub trait GuestKv: Send + Sync {
    /// An entry, unless absent or expired.
    async fn get(&self, key: String, call: &Call) -> Result<Option<Vec<u8>>, String>;
    /// Set an entry, optionally expiring.
    async fn set(&self, key: String, value: Vec<u8>, ttl: Option<Duration>, call: &Call) -> Result<(), String>;
    /// Delete an entry; whether a live one existed.
    async fn delete(&self, key: String, call: &Call) -> Result<bool, String>;
    /// Live keys starting with `prefix`, sorted, at most `limit` (1 to [`MAX_LIST`]).
    async fn list(&self, prefix: String, limit: u32, call: &Call) -> Result<Vec<String>, String>;
    /// Add `delta` to the integer at `key` (0 if absent or expired),
    /// atomically, keeping a live entry's expiry.
    async fn increment(&self, key: String, delta: i64, call: &Call) -> Result<i64, String>;
}

/// One instance's databases.
pub struct InstanceDb {
    /// Its directory on this node (and, on one node, its files).
    local: Arc<sqlite::Local>,
    sql: Arc<dyn GuestSql>,
    kv: Arc<dyn GuestKv>,
}

/// Where a node keeps instances' data besides their directories.
#[derive(Clone, Default)]
pub struct Backends {
    /// The guest's SQL in a PostgreSQL schema per instance.
    pub postgres: Option<Arc<PgDatabases>>,
    /// The key-value store in Redis.
    pub redis: Option<Arc<crate::shared::Redis>>,
}

/// The SQL dialect of an instance's database.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dialect {
    Sqlite,
    Postgres,
}

impl std::fmt::Debug for InstanceDb {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InstanceDb").field("dir", &self.local.dir()).field("dialect", &self.sql.dialect()).finish()
    }
}

/// A value in or out of SQL, whichever database the instance has (SQLite's
/// types stay in the SQLite code; PostgreSQL's convert in `postgres`).
#[derive(Debug, Clone, PartialEq)]
pub enum SqlValue {
    Null,
    Integer(i64),
    Real(f64),
    Text(String),
    Blob(Vec<u8>),
}

/// Rows returned by a query.
#[derive(Debug, Clone, Default)]
pub struct SqlRows {
    pub columns: Vec<String>,
    pub rows: Vec<Vec<SqlValue>>,
}

/// What a database call is bounded by and charged to.
#[derive(Debug, Clone)]
pub struct Call {
    /// The request's deadline: no statement runs past it.
    pub deadline: Instant,
    /// CPU time the call's work used on its database thread, added here (waits
    /// for the connection or for a CPU are not included).
    pub cpu_nanos: Arc<AtomicU64>,
    /// How long one statement may run ([`STATEMENT_TIMEOUT`] for guests).
    pub statement_limit: Duration,
}

impl Call {
    /// A call bounded by `deadline`, its CPU time counted in a fresh meter.
    pub fn until(deadline: Instant) -> Self {
        Self { deadline, cpu_nanos: Arc::default(), statement_limit: STATEMENT_TIMEOUT }
    }

    /// A call whose statements may run until `deadline` (an instance's
    /// migrations: building an index on a big table takes longer than a
    /// guest's statement may).
    pub fn migration(deadline: Instant) -> Self {
        let limit = deadline.saturating_duration_since(Instant::now()).max(STATEMENT_TIMEOUT);
        Self { deadline, cpu_nanos: Arc::default(), statement_limit: limit }
    }
}

impl InstanceDb {
    /// The databases of `tenant`'s `instance`, whose directory is `dir` (not
    /// opened yet), kept where `backends` say (on this node's disk otherwise);
    /// `threads` bounds the tenant's work on SQLite files.
    pub fn new(
        dir: &Path,
        instance: &str,
        tenant: &str,
        threads: Arc<DbThreads>,
        budget: Arc<OpenDatabases>,
        backends: &Backends,
    ) -> Self {
        let local = Arc::new(sqlite::Local::new(dir, tenant, threads, budget));
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
        Self { local, sql, kv }
    }

    /// The dialect the guest's SQL is in.
    pub fn dialect(&self) -> Dialect {
        self.sql.dialect()
    }

    /// The instance's recent CPU use, shared with its guests' scheduling.
    pub fn recent_use(&self) -> Arc<crate::sched::RecentUse> {
        self.local.recent_use()
    }

    /// Create both files now, so the instance starts with its databases in
    /// place. Blocking: call it from a blocking context.
    pub fn provision(&self) -> Result<(), String> {
        self.local.provision()
    }

    /// Count its files as nothing against its tenant's quota (its data was
    /// destroyed).
    pub fn forget_sizes(&self) {
        let storage = self.local.storage();
        for file in ["data.sqlite", "kv.sqlite"] {
            storage.record(&self.local.dir().join(file), 0);
        }
    }

    /// Run a statement that returns rows.
    pub async fn query(&self, statement: String, params: Vec<SqlValue>, call: &Call) -> Result<SqlRows, String> {
        self.sql.query(statement, params, call).await
    }

    /// Run a statement that changes data or schema; returns rows changed.
    pub async fn execute(&self, statement: String, params: Vec<SqlValue>, call: &Call) -> Result<u64, String> {
        self.sql.execute(statement, params, call).await
    }

    /// Run statements in one transaction.
    pub async fn batch(&self, statements: Vec<(String, Vec<SqlValue>)>, call: &Call) -> Result<Vec<u64>, String> {
        if statements.len() > MAX_BATCH {
            return Err(format!("a batch holds at most {MAX_BATCH} statements"));
        }
        self.sql.batch(statements, call).await
    }

    /// A key-value entry, unless absent or expired.
    pub async fn kv_get(&self, key: String, call: &Call) -> Result<Option<Vec<u8>>, String> {
        check_key(&key)?;
        self.kv.get(key, call).await
    }

    /// Set a key-value entry, optionally expiring.
    pub async fn kv_set(&self, key: String, value: Vec<u8>, ttl: Option<Duration>, call: &Call) -> Result<(), String> {
        check_key(&key)?;
        if value.len() > MAX_VALUE_BYTES {
            return Err(format!("the value is larger than {} MiB", MAX_VALUE_BYTES >> 20));
        }
        self.kv.set(key, value, ttl, call).await
    }

    /// Delete a key-value entry; whether a live one existed.
    pub async fn kv_delete(&self, key: String, call: &Call) -> Result<bool, String> {
        check_key(&key)?;
        self.kv.delete(key, call).await
    }

    /// Live keys starting with `prefix`, sorted.
    pub async fn kv_list(&self, prefix: String, limit: u32, call: &Call) -> Result<Vec<String>, String> {
        if prefix.len() > MAX_KEY_BYTES {
            return Err(format!("the prefix is longer than {MAX_KEY_BYTES} bytes"));
        }
        self.kv.list(prefix, limit.clamp(1, MAX_LIST), call).await
    }

    /// Add `delta` to the integer at `key` (0 if absent or expired), atomically,
    /// keeping a live entry's expiry.
    pub async fn kv_increment(&self, key: String, delta: i64, call: &Call) -> Result<i64, String> {
        check_key(&key)?;
        self.kv.increment(key, delta, call).await
    }
}

#[cfg(test)]
mod backends_tests;
#[cfg(test)]
mod tests;
