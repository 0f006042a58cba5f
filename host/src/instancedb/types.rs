//! What every backend of an instance's data shares: the limits, the values
//! and rows, a call's bounds, and the two traits the backends implement.

use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::{Duration, Instant};

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
    /// Live entries after `after` in key order, at most `limit`, with when
    /// each expires (an export's; never a guest's).
    async fn entries(&self, after: String, limit: u32, call: &Call) -> Result<Vec<KvEntry>, String>;
}

/// One key-value entry as an export holds it.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct KvEntry {
    pub key: String,
    /// The value's bytes, base64 in an export.
    #[serde(with = "base64_bytes")]
    pub value: Vec<u8>,
    /// When it expires (Unix milliseconds), if it does.
    pub expires_at_ms: Option<i64>,
}

mod base64_bytes {
    use base64::Engine as _;

    pub fn serialize<S: serde::Serializer>(bytes: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&base64::engine::general_purpose::STANDARD.encode(bytes))
    }

    pub fn deserialize<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        let text: String = serde::Deserialize::deserialize(d)?;
        base64::engine::general_purpose::STANDARD.decode(text).map_err(serde::de::Error::custom)
    }
}

/// The SQL dialect of an instance's database.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dialect {
    Sqlite,
    Postgres,
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
