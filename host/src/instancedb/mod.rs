//! Each instance's own databases: `<data>/instances/<id>/data.sqlite` for the
//! guest's SQL and `kv.sqlite` for its key-value store, provisioned when the
//! instance is created and opened on first use. The key-value file is the host's
//! alone: no guest statement runs on its connection, so no trigger, view, foreign
//! key or rename of the guest's can reach it.
//!
//! The guest's SQL runs behind an authorizer ([`sqlguard`]) that allows ordinary
//! DDL and DML on the instance's own tables and refuses everything that could reach
//! outside the file or outlive the request: ATTACH/DETACH, extensions, virtual
//! tables, temp objects, transactions outside `batch`, and PRAGMAs that change
//! settings. `SQLITE_DBCONFIG_DEFENSIVE` is on.
//!
//! Containment: every call is a job on the node's database threads
//! ([`DbThreads`]), never on an async worker. The caller waits asynchronously, at
//! most [`MAX_WAIT`] for the instance's connection and a thread, then hears
//! "busy". A statement runs at most [`STATEMENT_TIMEOUT`] (and never past the
//! request's deadline): the progress handler stops it from inside, and
//! `sqlite3_interrupt` from outside when the waiting request times out or goes
//! away. Memory is bounded before it is spent: a result row has at most
//! [`MAX_COLUMNS`] values of at most [`MAX_VALUE_BYTES`], results are measured
//! value by value before they are copied, each connection's page cache is small,
//! and the whole process's SQLite heap is capped ([`SQLITE_HEAP_LIMIT`]).

mod postgres;
mod sqlguard;
pub mod sqltext;
mod storage;
mod threads;

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use rusqlite::config::DbConfig;
use rusqlite::limits::Limit;
use rusqlite::types::ValueRef;
use rusqlite::Connection;

pub use postgres::PgDatabases;
use sqlguard::{authorize, check_key, check_statement, describe};
pub use threads::DbThreads;
use threads::TenantSlots;

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

/// Cap the process's SQLite heap (once; later calls do nothing).
pub fn limit_sqlite_heap() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        // SAFETY: both only set a global limit; they are thread-safe and may be
        // called at any time.
        unsafe {
            rusqlite::ffi::sqlite3_soft_heap_limit64(SQLITE_SOFT_HEAP_LIMIT);
            rusqlite::ffi::sqlite3_hard_heap_limit64(SQLITE_HEAP_LIMIT);
        }
    });
}

/// SQLite memory in use by the process now and at its highest, in bytes.
pub fn sqlite_memory() -> (i64, i64) {
    // SAFETY: plain reads of SQLite's global counters.
    unsafe { (rusqlite::ffi::sqlite3_memory_used(), rusqlite::ffi::sqlite3_memory_highwater(0)) }
}

/// An instance's two connections, opened on first use.
#[derive(Default)]
pub struct Conns {
    data: Option<Connection>,
    /// The `max_page_count` last set on each connection.
    data_cap: u64,
    kv_cap: u64,
    kv: Option<Connection>,
}

impl Conns {
    fn is_open(&self) -> bool {
        self.data.is_some() || self.kv.is_some()
    }
}

type Slot = Mutex<Conns>;

/// The open connections of a node, closed oldest-first beyond a budget so that
/// thousands of instances never exhaust file descriptors. A closed one reopens on
/// its next use.
pub struct OpenDatabases {
    max: usize,
    open: AtomicUsize,
    order: Mutex<VecDeque<Weak<Slot>>>,
}

impl OpenDatabases {
    pub fn new(max: usize) -> Arc<Self> {
        Arc::new(Self { max: max.max(1), open: AtomicUsize::new(0), order: Mutex::new(VecDeque::new()) })
    }

    /// Instances with open databases now.
    pub fn open_count(&self) -> usize {
        self.open.load(Ordering::Relaxed)
    }

    /// Called on a database thread when an instance opens its first connection.
    fn opened(&self, slot: &Arc<Slot>) {
        let Ok(mut order) = self.order.lock() else { return };
        order.push_back(Arc::downgrade(slot));
        self.open.fetch_add(1, Ordering::Relaxed);
        // Close the oldest idle instances; one in use (its lock held, including
        // the one just opened) is skipped and stays open until later.
        let mut checked = 0;
        while self.open.load(Ordering::Relaxed) > self.max && checked < order.len() {
            let Some(oldest) = order.pop_front() else { break };
            checked += 1;
            let Some(slot) = oldest.upgrade() else {
                continue;
            };
            let closed = match slot.try_lock() {
                Ok(mut conns) => Some(std::mem::take(&mut *conns).is_open()),
                Err(_) => None,
            };
            match closed {
                Some(true) => {
                    self.open.fetch_sub(1, Ordering::Relaxed);
                }
                Some(false) => {}
                None => order.push_back(oldest),
            }
        }
    }
}

/// What one instance's jobs share: where its files are and who runs now.
struct Shared {
    dir: PathBuf,
    /// While set, the authorizer lets the host's own statements through.
    host_access: Arc<AtomicBool>,
    /// The job using the data connection now, and how to interrupt it.
    running: Mutex<Running>,
    budget: Arc<OpenDatabases>,
    slot: Weak<Slot>,
    /// Whether the instance's work lately turned out heavy.
    recent: Arc<crate::sched::RecentUse>,
    /// Jobs waiting for the instance's connection, run in order by one thread.
    queue: Mutex<Queue>,
    tenant: Arc<TenantSlots>,
    threads: Arc<DbThreads>,
}

/// An instance's waiting jobs, and whether a thread is (or will be) running them.
#[derive(Default)]
struct Queue {
    jobs: VecDeque<QueuedJob>,
    scheduled: bool,
}

type QueuedJob = Box<dyn FnOnce(&mut Conns) + Send + 'static>;

/// A job's state: waiting, started, or given up by its caller before it started.
const QUEUED: u8 = 0;
const STARTED: u8 = 1;
const GIVEN_UP: u8 = 2;

/// Jobs one run takes from an instance before it lets other instances have the
/// thread (it continues later, at the back of the line).
const JOBS_PER_RUN: usize = 32;
/// ... or after this long.
const RUN_SLICE: Duration = Duration::from_millis(2);

#[derive(Default)]
struct Running {
    job: u64,
    interrupt: Option<rusqlite::InterruptHandle>,
}

/// One instance's databases.
pub struct InstanceDb {
    /// The connections; owned here, used by the thread running the instance.
    _slot: Arc<Slot>,
    shared: Arc<Shared>,
    /// In a cluster, the key-value store lives in Redis under this instance's id.
    redis: Option<(Arc<crate::shared::Redis>, Arc<str>)>,
    /// With a PostgreSQL control plane, the guest's SQL runs in the instance's
    /// schema there instead of `data.sqlite`.
    postgres: Option<postgres::PgInstance>,
}

/// The SQL dialect of an instance's database.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dialect {
    Sqlite,
    Postgres,
}

impl std::fmt::Debug for InstanceDb {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InstanceDb").field("dir", &self.shared.dir).finish()
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

impl rusqlite::ToSql for SqlValue {
    fn to_sql(&self) -> rusqlite::Result<rusqlite::types::ToSqlOutput<'_>> {
        Ok(rusqlite::types::ToSqlOutput::Borrowed(match self {
            SqlValue::Null => ValueRef::Null,
            SqlValue::Integer(n) => ValueRef::Integer(*n),
            SqlValue::Real(r) => ValueRef::Real(*r),
            SqlValue::Text(t) => ValueRef::Text(t.as_bytes()),
            SqlValue::Blob(b) => ValueRef::Blob(b),
        }))
    }
}

/// Rows returned by a query.
#[derive(Debug, Clone, Default)]
pub struct SqlRows {
    pub columns: Vec<String>,
    pub rows: Vec<Vec<SqlValue>>,
}

static NEXT_JOB: AtomicU64 = AtomicU64::new(1);

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
    /// The databases of the instance whose directory is `dir` (not opened yet);
    /// `tenant` is the instance's tenant, whose database work `threads` bounds.
    pub fn new(dir: &Path, tenant: &str, threads: Arc<DbThreads>, budget: Arc<OpenDatabases>) -> Self {
        let slot = Arc::new(Mutex::new(Conns::default()));
        let shared = Arc::new(Shared {
            dir: dir.to_path_buf(),
            host_access: Arc::new(AtomicBool::new(false)),
            running: Mutex::new(Running::default()),
            budget,
            slot: Arc::downgrade(&slot),
            recent: Arc::default(),
            queue: Mutex::new(Queue::default()),
            tenant: threads.tenant(tenant),
            threads,
        });
        shared.tenant.storage.register(dir);
        Self { _slot: slot, shared, redis: None, postgres: None }
    }

    /// Run the guest's SQL in `instance`'s PostgreSQL schema (when `pg` is set).
    pub fn with_postgres(mut self, pg: Option<Arc<PgDatabases>>, instance: &str, tenant: &str) -> Self {
        self.postgres = pg.map(|pg| postgres::PgInstance::new(pg, instance, tenant));
        self
    }

    /// The dialect the guest's SQL is in.
    pub fn dialect(&self) -> Dialect {
        if self.postgres.is_some() {
            Dialect::Postgres
        } else {
            Dialect::Sqlite
        }
    }

    /// Run SQL work in the instance's PostgreSQL schema, within the tenant's
    /// database quota (the schema's size is counted as its `data.sqlite` would be).
    async fn on_postgres(
        &self,
        pg: &postgres::PgInstance,
        work: postgres::Work,
        call: &Call,
    ) -> Result<postgres::Done, String> {
        let storage = &self.shared.tenant.storage;
        let key = self.shared.dir.join("data.sqlite");
        // Every node writes the same schemas: the tenant's sizes come from the
        // server, re-read at most once a second by each node that writes.
        if storage.due(TENANT_SIZES_EVERY) {
            match pg.pool.tenant_sizes(&pg.tenant).await {
                Ok(sizes) => {
                    let dir = self.shared.dir.parent().unwrap_or(&self.shared.dir);
                    for (instance, bytes) in sizes {
                        storage.record(&dir.join(instance).join("data.sqlite"), bytes);
                    }
                }
                Err(e) => tracing::warn!(tenant = %pg.tenant, "{e:#}"),
            }
        }
        let room = storage.size(&key) < MAX_DB_BYTES.min(storage.allowance(&key));
        let (done, size) = pg.run(work, call, room).await?;
        if let Some(bytes) = size {
            storage.record(&key, bytes);
        }
        Ok(done)
    }

    /// Keep the key-value store of `instance` in `redis` instead of `kv.sqlite`.
    pub fn with_redis(mut self, redis: Option<Arc<crate::shared::Redis>>, instance: &str) -> Self {
        self.redis = redis.map(|r| (r, Arc::from(instance)));
        self
    }

    /// The instance's recent CPU use, shared with its guests' scheduling.
    pub fn recent_use(&self) -> Arc<crate::sched::RecentUse> {
        self.shared.recent.clone()
    }

    /// Create both files now, so the instance starts with its databases in place.
    /// Blocking: call it from a blocking context.
    pub fn provision(&self) -> Result<(), String> {
        // Opened and closed: thousands of idle instances must not hold thousands
        // of open files. The first request opens them again.
        let storage = &self.shared.tenant.storage;
        let data = open_data(&self.shared)?;
        self.shared.host_access.store(true, Ordering::Relaxed);
        let data_bytes = file_bytes(&data);
        self.shared.host_access.store(false, Ordering::Relaxed);
        storage.record(&self.shared.dir.join("data.sqlite"), data_bytes.unwrap_or(0));
        let kv = open_kv(&self.shared.dir)?;
        storage.record(&self.shared.dir.join("kv.sqlite"), file_bytes(&kv).unwrap_or(0));
        Ok(())
    }

    /// Run `work` on a database thread with this instance's connections, after
    /// the instance's earlier jobs. The caller waits asynchronously: at most
    /// [`MAX_WAIT`] for the job to start ("busy" otherwise), then for the
    /// statement, never past `call`'s deadline.
    async fn run<T, F>(&self, call: &Call, work: F) -> Result<T, String>
    where
        T: Send + 'static,
        F: FnOnce(&mut Session<'_>) -> Result<T, String> + Send + 'static,
    {
        let (deadline, statement_limit) = (call.deadline, call.statement_limit);
        let now = Instant::now();
        if now >= deadline {
            return Err("the request is out of time".into());
        }
        let wait_until = tokio::time::Instant::from_std((now + MAX_WAIT).min(deadline));
        let busy = || format!("the database is busy (waited {} ms); retry", MAX_WAIT.as_millis());
        let id = NEXT_JOB.fetch_add(1, Ordering::Relaxed);
        let state = Arc::new(std::sync::atomic::AtomicU8::new(QUEUED));
        let cancelled = Arc::new(AtomicBool::new(false));
        let (sender, mut receiver) = tokio::sync::oneshot::channel();
        let job: QueuedJob = {
            let (shared, state, flag, cpu) =
                (self.shared.clone(), state.clone(), cancelled.clone(), call.cpu_nanos.clone());
            Box::new(move |conns: &mut Conns| {
                if state.compare_exchange(QUEUED, STARTED, Ordering::AcqRel, Ordering::Acquire).is_err() {
                    return;
                }
                let mut session = Session {
                    conns,
                    shared: &shared,
                    job: id,
                    deadline: (Instant::now() + statement_limit).min(deadline),
                    cancelled: flag,
                    data_used: false,
                    kv_used: false,
                    data_changes: 0,
                    kv_changes: 0,
                };
                let started = crate::sched::thread_cpu_nanos();
                let result = work(&mut session);
                session.finish();
                cpu.fetch_add(crate::sched::thread_cpu_nanos().saturating_sub(started), Ordering::Relaxed);
                let _ = sender.send(result);
            })
        };
        if !enqueue(&self.shared, job) {
            return Err(busy());
        }
        let mut watch = Watch { state: state.clone(), cancelled, shared: self.shared.clone(), job: id, done: false };
        let result = match tokio::time::timeout_at(wait_until, &mut receiver).await {
            Ok(Ok(result)) => Ok(result),
            Ok(Err(_)) => Err("the database job failed".to_string()),
            Err(_) => {
                // Not started in time: give up the place in line.
                if state.compare_exchange(QUEUED, GIVEN_UP, Ordering::AcqRel, Ordering::Acquire).is_ok() {
                    watch.done = true;
                    return Err(busy());
                }
                // Started: the progress handler stops it at its deadline; if it is
                // stuck where the handler does not run, interrupt it from here.
                let limit = (Instant::now() + statement_limit).min(deadline) + Duration::from_millis(100);
                match tokio::time::timeout_at(limit.into(), &mut receiver).await {
                    Ok(Ok(result)) => Ok(result),
                    Ok(Err(_)) => Err("the database job failed".to_string()),
                    Err(_) => {
                        watch.interrupt();
                        match tokio::time::timeout(Duration::from_secs(1), receiver).await {
                            Ok(Ok(result)) => Ok(result),
                            _ => Err(format!("the statement ran longer than {} s", statement_limit.as_secs())),
                        }
                    }
                }
            }
        };
        watch.done = true;
        result.and_then(|r| r)
    }

    /// Run a statement that returns rows.
    pub async fn query(&self, statement: String, params: Vec<SqlValue>, call: &Call) -> Result<SqlRows, String> {
        if let Some(pg) = &self.postgres {
            return match self.on_postgres(pg, postgres::Work::Query(statement, params), call).await? {
                postgres::Done::Rows(rows) => Ok(rows),
                _ => Err("the database answered something else".into()),
            };
        }
        check_statement(&statement)?;
        self.run(call, move |s| {
            let conn = s.data()?;
            read_rows(conn, check_statement(&statement)?, &params)
        })
        .await
    }

    /// Run a statement that changes data or schema; returns rows changed.
    pub async fn execute(&self, statement: String, params: Vec<SqlValue>, call: &Call) -> Result<u64, String> {
        if let Some(pg) = &self.postgres {
            return match self.on_postgres(pg, postgres::Work::Execute(statement, params), call).await? {
                postgres::Done::Changed(n) => Ok(n),
                _ => Err("the database answered something else".into()),
            };
        }
        check_statement(&statement)?;
        self.run(call, move |s| {
            let result = run(s.data()?, check_statement(&statement)?, &params);
            s.trim_wal();
            result
        })
        .await
    }

    /// Run statements in one transaction.
    pub async fn batch(&self, statements: Vec<(String, Vec<SqlValue>)>, call: &Call) -> Result<Vec<u64>, String> {
        if statements.len() > 1000 {
            return Err("a batch holds at most 1000 statements".into());
        }
        if let Some(pg) = &self.postgres {
            return match self.on_postgres(pg, postgres::Work::Batch(statements), call).await? {
                postgres::Done::Batch(changed) => Ok(changed),
                _ => Err("the database answered something else".into()),
            };
        }
        for (statement, _) in &statements {
            check_statement(statement)?;
        }
        self.run(call, move |s| {
            s.data()?;
            s.as_host(|conn| conn.execute_batch("BEGIN IMMEDIATE")).map_err(|e| describe(&e))?;
            let mut changed = Vec::with_capacity(statements.len());
            let mut failed = None;
            for (i, (statement, params)) in statements.iter().enumerate() {
                let conn = s.data()?;
                match check_statement(statement).and_then(|st| run(conn, st, params)) {
                    Ok(n) => changed.push(n),
                    Err(e) => {
                        failed = Some(format!("statement {}: {e}", i + 1));
                        break;
                    }
                }
            }
            let end = if failed.is_some() { "ROLLBACK" } else { "COMMIT" };
            let ended = s.as_host(|conn| conn.execute_batch(end)).map_err(|e| describe(&e));
            s.trim_wal();
            match (failed, ended) {
                (Some(e), _) => Err(e),
                (None, Err(e)) => Err(e),
                (None, Ok(())) => Ok(changed),
            }
        })
        .await
    }

    /// A key-value entry, unless absent or expired.
    pub async fn kv_get(&self, key: String, call: &Call) -> Result<Option<Vec<u8>>, String> {
        check_key(&key)?;
        if let Some((redis, instance)) = &self.redis {
            let value = redis.get(instance, &key).await;
            charge_remote(call, value.as_ref().ok().and_then(Option::as_ref).map_or(0, Vec::len));
            return value;
        }
        self.run(call, move |s| {
            s.kv()?
                .query_row(
                    "SELECT value FROM kv WHERE key = ?1 AND (expires_at IS NULL OR expires_at > ?2)",
                    rusqlite::params![key, now_millis()],
                    |row| row.get(0),
                )
                .map(Some)
                .or_else(|e| if e == rusqlite::Error::QueryReturnedNoRows { Ok(None) } else { Err(e) })
                .map_err(|e| describe(&e))
        })
        .await
    }

    /// Set a key-value entry, optionally expiring.
    pub async fn kv_set(&self, key: String, value: Vec<u8>, ttl: Option<Duration>, call: &Call) -> Result<(), String> {
        check_key(&key)?;
        if value.len() > MAX_VALUE_BYTES {
            return Err(format!("the value is larger than {} MiB", MAX_VALUE_BYTES >> 20));
        }
        if let Some((redis, instance)) = &self.redis {
            charge_remote(call, value.len());
            return redis.set(instance, &key, &value, ttl).await;
        }
        let expires = ttl.map(|t| now_millis().saturating_add(t.as_millis().min(i64::MAX as u128) as i64));
        self.run(call, move |s| {
            s.kv()?
                .execute(
                    "INSERT INTO kv (key, value, expires_at) VALUES (?1, ?2, ?3) \
                     ON CONFLICT (key) DO UPDATE SET value = excluded.value, expires_at = excluded.expires_at",
                    rusqlite::params![key, value, expires],
                )
                .map(|_| ())
                .map_err(|e| describe(&e))
        })
        .await
    }

    /// Delete a key-value entry; whether a live one existed.
    pub async fn kv_delete(&self, key: String, call: &Call) -> Result<bool, String> {
        check_key(&key)?;
        if let Some((redis, instance)) = &self.redis {
            charge_remote(call, 0);
            return redis.delete(instance, &key).await;
        }
        self.run(call, move |s| {
            let conn = s.kv()?;
            let live = conn
                .execute(
                    "DELETE FROM kv WHERE key = ?1 AND (expires_at IS NULL OR expires_at > ?2)",
                    rusqlite::params![key, now_millis()],
                )
                .map_err(|e| describe(&e))?;
            // An expired entry goes too, without counting as deleted.
            conn.execute("DELETE FROM kv WHERE key = ?1", [&key]).map_err(|e| describe(&e))?;
            Ok(live > 0)
        })
        .await
    }

    /// Live keys starting with `prefix`, sorted.
    pub async fn kv_list(&self, prefix: String, limit: u32, call: &Call) -> Result<Vec<String>, String> {
        if prefix.len() > MAX_KEY_BYTES {
            return Err(format!("the prefix is longer than {MAX_KEY_BYTES} bytes"));
        }
        let limit = limit.clamp(1, 1000);
        if let Some((redis, instance)) = &self.redis {
            let keys = redis.list(instance, &prefix, limit).await;
            charge_remote(call, keys.as_ref().map_or(0, |k| k.iter().map(String::len).sum()));
            return keys;
        }
        self.run(call, move |s| {
            // Range scan on the primary key; the prefix is data, never pattern syntax.
            let conn = s.kv()?;
            let mut stmt = conn
                .prepare_cached(
                    "SELECT key FROM kv WHERE key >= ?1 AND substr(key, 1, length(?1)) = ?1 \
                     AND (expires_at IS NULL OR expires_at > ?2) ORDER BY key LIMIT ?3",
                )
                .map_err(|e| describe(&e))?;
            let keys = stmt
                .query_map(rusqlite::params![prefix, now_millis(), limit], |row| row.get(0))
                .map_err(|e| describe(&e))?;
            keys.collect::<rusqlite::Result<Vec<String>>>().map_err(|e| describe(&e))
        })
        .await
    }

    /// Add `delta` to the integer at `key` (0 if absent or expired), atomically,
    /// keeping a live entry's expiry.
    pub async fn kv_increment(&self, key: String, delta: i64, call: &Call) -> Result<i64, String> {
        check_key(&key)?;
        if let Some((redis, instance)) = &self.redis {
            charge_remote(call, 0);
            return redis.increment(instance, &key, delta).await;
        }
        self.run(call, move |s| {
            let conn = s.kv()?;
            // One job holds the instance's connection, and the transaction holds
            // the file: no other increment can read between this read and write.
            let tx =
                conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate).map_err(|e| describe(&e))?;
            let now = now_millis();
            let current: Option<(Vec<u8>, Option<i64>)> = tx
                .query_row(
                    "SELECT value, expires_at FROM kv WHERE key = ?1 AND (expires_at IS NULL OR expires_at > ?2)",
                    rusqlite::params![key, now],
                    |row| Ok((row.get(0)?, row.get(1)?)),
                )
                .map(Some)
                .or_else(|e| if e == rusqlite::Error::QueryReturnedNoRows { Ok(None) } else { Err(e) })
                .map_err(|e| describe(&e))?;
            let (value, expires) = match current {
                None => (0, None),
                Some((bytes, expires)) => {
                    let value = std::str::from_utf8(&bytes)
                        .ok()
                        .and_then(|s| s.trim().parse::<i64>().ok())
                        .ok_or_else(|| format!("the value at {key:?} is not an integer"))?;
                    (value, expires)
                }
            };
            let next = value.checked_add(delta).ok_or("the counter would overflow")?;
            tx.execute(
                "INSERT INTO kv (key, value, expires_at) VALUES (?1, ?2, ?3) \
                 ON CONFLICT (key) DO UPDATE SET value = excluded.value, expires_at = excluded.expires_at",
                rusqlite::params![key, next.to_string().into_bytes(), expires],
            )
            .map_err(|e| describe(&e))?;
            tx.commit().map_err(|e| describe(&e))?;
            Ok(next)
        })
        .await
    }
}

/// What a call to the shared store costs the request, as CPU nanoseconds (and
/// so fuel): a fixed share for the round trip and one for every KiB moved. The
/// node spends little CPU on it; the charge keeps a guest from calling it for free.
fn charge_remote(call: &Call, bytes: usize) {
    let nanos = 20_000 + (bytes as u64 / 1024) * 1_000;
    call.cpu_nanos.fetch_add(nanos, Ordering::Relaxed);
}

/// Add `job` to the instance's line, and have a thread run the line if none is.
/// False when the pool cannot take it (the job is dropped).
fn enqueue(shared: &Arc<Shared>, job: QueuedJob) -> bool {
    let start = {
        let Ok(mut queue) = shared.queue.lock() else { return false };
        queue.jobs.push_back(job);
        !std::mem::replace(&mut queue.scheduled, true)
    };
    if start && shared.threads.run_for(&shared.tenant, drain_job(shared.clone())).is_err() {
        // The pool is stopped or its line is full: nothing will run these.
        if let Ok(mut queue) = shared.queue.lock() {
            queue.jobs.clear();
            queue.scheduled = false;
        }
        return false;
    }
    true
}

fn drain_job(shared: Arc<Shared>) -> threads::Job {
    Box::new(move || drain(shared))
}

/// Run an instance's waiting jobs, in order, on this database thread, for at
/// most [`JOBS_PER_RUN`] jobs or [`RUN_SLICE`]; then give the thread to the next
/// in line and, if jobs remain, queue up again.
fn drain(shared: Arc<Shared>) {
    let started = Instant::now();
    let mut more = false;
    if let Some(slot) = shared.slot.upgrade() {
        let mut conns = match slot.lock() {
            Ok(conns) => conns,
            Err(poisoned) => poisoned.into_inner(),
        };
        for ran in 1.. {
            let job = match shared.queue.lock() {
                Ok(mut queue) => match queue.jobs.pop_front() {
                    Some(job) => job,
                    None => {
                        queue.scheduled = false;
                        break;
                    }
                },
                Err(_) => break,
            };
            // A job that panics must not leave the instance's line stuck.
            if std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| job(&mut conns))).is_err() {
                tracing::error!(dir = ?shared.dir, "a database job panicked");
            }
            if ran >= JOBS_PER_RUN || started.elapsed() > RUN_SLICE {
                more = true;
                break;
            }
        }
    } else if let Ok(mut queue) = shared.queue.lock() {
        // The instance is gone: its waiting callers hear that the job failed.
        queue.jobs.clear();
        queue.scheduled = false;
    }
    shared.threads.finish(&shared.tenant);
    if more {
        if let Err(again) = shared.threads.run_for(&shared.tenant, drain_job(shared.clone())) {
            again();
        }
    }
}

/// Interrupts a job whose caller stopped waiting (timed out or went away).
struct Watch {
    state: Arc<std::sync::atomic::AtomicU8>,
    cancelled: Arc<AtomicBool>,
    shared: Arc<Shared>,
    job: u64,
    done: bool,
}

impl Watch {
    fn interrupt(&self) {
        // A job still in line never starts.
        let _ = self.state.compare_exchange(QUEUED, GIVEN_UP, Ordering::AcqRel, Ordering::Acquire);
        self.cancelled.store(true, Ordering::Relaxed);
        // Only while this job is the one running: an interrupt must never hit the
        // next request's statement.
        if let Ok(running) = self.shared.running.lock() {
            if running.job == self.job {
                if let Some(handle) = &running.interrupt {
                    handle.interrupt();
                }
            }
        }
    }
}

impl Drop for Watch {
    fn drop(&mut self) {
        if !self.done {
            self.interrupt();
        }
    }
}

/// One job's access to the instance's connections, on a database thread.
struct Session<'a> {
    conns: &'a mut Conns,
    shared: &'a Arc<Shared>,
    job: u64,
    deadline: Instant,
    cancelled: Arc<AtomicBool>,
    data_used: bool,
    kv_used: bool,
    /// Each connection's change count when this job first used it.
    data_changes: u64,
    kv_changes: u64,
}

impl Session<'_> {
    fn note_opened(&mut self, was_open: bool) {
        if !was_open {
            if let Some(slot) = self.shared.slot.upgrade() {
                self.shared.budget.opened(&slot);
            }
        }
    }

    /// The guest's connection, bounded in time for this job.
    fn data(&mut self) -> Result<&Connection, String> {
        if self.conns.data.is_none() {
            let was_open = self.conns.is_open();
            self.conns.data = Some(open_data(self.shared)?);
            self.note_opened(was_open);
        }
        if !self.data_used {
            // The tenant's other instances may have grown since: the file may
            // grow only to what the tenant's quota leaves.
            let path = self.shared.dir.join("data.sqlite");
            let cap = MAX_DB_BYTES.min(self.shared.tenant.storage.allowance(&path));
            let (conn, last) = (self.conns.data.as_ref(), &mut self.conns.data_cap);
            if let Some(conn) = conn {
                self.shared.host_access.store(true, Ordering::Relaxed);
                cap_pages(conn, cap, last);
                self.shared.host_access.store(false, Ordering::Relaxed);
            }
        }
        let conn = self.conns.data.as_ref().ok_or("the database is unavailable")?;
        if !self.data_used {
            self.data_used = true;
            self.data_changes = conn.total_changes();
            if let Ok(mut running) = self.shared.running.lock() {
                *running = Running { job: self.job, interrupt: Some(conn.get_interrupt_handle()) };
            }
            let (deadline, cancelled) = (self.deadline, self.cancelled.clone());
            // A long statement yields the CPU to everyone else's requests; an
            // instance whose statements were long lately starts lowered.
            let recent = self.shared.recent.clone();
            if recent.is_heavy() {
                threads::demote_current_thread();
            }
            // CPU time, not wall time: a statement that only waited for a core
            // is not a heavy one.
            let demote_at = crate::sched::thread_cpu_nanos().saturating_add(threads::DEMOTE_AFTER.as_nanos() as u64);
            let mut demoted = false;
            conn.progress_handler(
                10_000,
                Some(move || {
                    if !demoted && crate::sched::thread_cpu_nanos() > demote_at {
                        demoted = true;
                        recent.mark_heavy();
                        threads::demote_current_thread();
                    }
                    Instant::now() > deadline || cancelled.load(Ordering::Relaxed)
                }),
            );
        }
        Ok(conn)
    }

    /// The key-value connection (host statements only).
    fn kv(&mut self) -> Result<&mut Connection, String> {
        if self.conns.kv.is_none() {
            // Opening the guest's database first moves an old key-value table over.
            if self.conns.data.is_none() {
                self.data()?;
            }
            let was_open = self.conns.is_open();
            self.conns.kv = Some(open_kv(&self.shared.dir)?);
            self.note_opened(was_open);
        }
        if !self.kv_used {
            self.kv_used = true;
            self.kv_changes = self.conns.kv.as_ref().map_or(0, Connection::total_changes);
            let cap = MAX_KV_BYTES.min(self.shared.tenant.storage.allowance(&self.shared.dir.join("kv.sqlite")));
            if let Some(conn) = self.conns.kv.as_ref() {
                cap_pages(conn, cap, &mut self.conns.kv_cap);
            }
        }
        self.conns.kv.as_mut().ok_or_else(|| "the key-value store is unavailable".into())
    }

    /// Run the host's own statement on the guest's connection.
    fn as_host<T>(&self, f: impl FnOnce(&Connection) -> rusqlite::Result<T>) -> rusqlite::Result<T> {
        let conn = self.conns.data.as_ref().ok_or(rusqlite::Error::InvalidQuery)?;
        self.shared.host_access.store(true, Ordering::Relaxed);
        let result = f(conn);
        self.shared.host_access.store(false, Ordering::Relaxed);
        result
    }

    /// Checkpoint and truncate a WAL grown past [`WAL_LIMIT`].
    fn trim_wal(&self) {
        let wal = self.shared.dir.join("data.sqlite-wal");
        if std::fs::metadata(&wal).map(|m| m.len() > WAL_LIMIT).unwrap_or(false) {
            if let Err(e) = self.as_host(|conn| conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))) {
                tracing::warn!(dir = ?self.shared.dir, "failed to truncate the write-ahead log: {e}");
            }
        }
    }

    /// Leave nothing behind for the next request: no open transaction, no handler.
    fn finish(self) {
        let storage = &self.shared.tenant.storage;
        // Sizes are measured only after a job that wrote (reads leave them as
        // they were; a schema change is measured with the next write).
        if let Some(conn) = self.conns.kv.as_ref().filter(|c| self.kv_used && c.total_changes() != self.kv_changes) {
            if let Ok(bytes) = file_bytes(conn) {
                storage.record(&self.shared.dir.join("kv.sqlite"), bytes);
            }
        }
        if !self.data_used {
            return;
        }
        if let Some(conn) = self.conns.data.as_ref() {
            if !conn.is_autocommit() {
                let _ = self.as_host(|conn| conn.execute_batch("ROLLBACK"));
            }
            conn.progress_handler(0, None::<fn() -> bool>);
            if conn.total_changes() != self.data_changes {
                if let Ok(bytes) = self.as_host(file_bytes) {
                    storage.record(&self.shared.dir.join("data.sqlite"), bytes);
                }
            }
        }
        if let Ok(mut running) = self.shared.running.lock() {
            *running = Running::default();
        }
    }
}

/// Let the connection's file grow to at most `bytes` (`last`: the cap set before).
fn cap_pages(conn: &Connection, bytes: u64, last: &mut u64) {
    let pages = (bytes / storage::PAGE_BYTES).max(1);
    if pages != *last && conn.query_row(&format!("PRAGMA max_page_count = {pages}"), [], |_| Ok(())).is_ok() {
        *last = pages;
    }
}

/// The size of a connection's database, in bytes.
fn file_bytes(conn: &Connection) -> rusqlite::Result<u64> {
    let pages: i64 = conn.query_row("PRAGMA page_count", [], |row| row.get(0))?;
    Ok(pages.max(0) as u64 * storage::PAGE_BYTES)
}

fn create_dir(dir: &Path) -> Result<(), String> {
    std::fs::create_dir_all(dir).map_err(|e| format!("cannot create the database directory: {e}"))
}

/// Open the guest's database with every limit set and the authorizer installed.
fn open_data(shared: &Shared) -> Result<Connection, String> {
    limit_sqlite_heap();
    create_dir(&shared.dir)?;
    let conn =
        Connection::open(shared.dir.join("data.sqlite")).map_err(|e| format!("cannot open the database: {e}"))?;
    let prepare = |conn: &Connection| -> rusqlite::Result<()> {
        conn.set_db_config(DbConfig::SQLITE_DBCONFIG_DEFENSIVE, true)?;
        // These PRAGMAs answer with a row.
        conn.query_row("PRAGMA journal_mode = WAL", [], |_| Ok(()))?;
        conn.query_row(&format!("PRAGMA max_page_count = {}", MAX_DB_BYTES / 4096), [], |_| Ok(()))?;
        conn.query_row(&format!("PRAGMA journal_size_limit = {WAL_LIMIT}"), [], |_| Ok(()))?;
        // Sorts and temporary results stay in memory, under the heap limit,
        // never in files outside the instance's quota.
        conn.execute_batch(&format!(
            "PRAGMA synchronous = NORMAL; PRAGMA foreign_keys = ON; PRAGMA temp_store = MEMORY; \
             PRAGMA cache_size = -{PAGE_CACHE_KIB};"
        ))
    };
    prepare(&conn).map_err(|e| format!("cannot prepare the database: {e}"))?;
    migrate_old_kv(&conn, &shared.dir)?;
    conn.set_limit(Limit::SQLITE_LIMIT_ATTACHED, 0);
    conn.set_limit(Limit::SQLITE_LIMIT_SQL_LENGTH, MAX_STATEMENT_BYTES as i32);
    conn.set_limit(Limit::SQLITE_LIMIT_LENGTH, MAX_VALUE_BYTES as i32);
    conn.set_limit(Limit::SQLITE_LIMIT_COLUMN, MAX_COLUMNS as i32);
    conn.set_limit(Limit::SQLITE_LIMIT_VARIABLE_NUMBER, 999);
    conn.set_limit(Limit::SQLITE_LIMIT_TRIGGER_DEPTH, 10);
    let host_access = shared.host_access.clone();
    conn.authorizer(Some(move |ctx: rusqlite::hooks::AuthContext<'_>| {
        authorize(&ctx, host_access.load(Ordering::Relaxed))
    }));
    Ok(conn)
}

/// Open the key-value file; no guest statement ever runs on this connection.
fn open_kv(dir: &Path) -> Result<Connection, String> {
    limit_sqlite_heap();
    create_dir(dir)?;
    let conn = Connection::open(dir.join("kv.sqlite")).map_err(|e| format!("cannot open the key-value store: {e}"))?;
    let prepare = |conn: &Connection| -> rusqlite::Result<()> {
        conn.set_db_config(DbConfig::SQLITE_DBCONFIG_DEFENSIVE, true)?;
        conn.query_row("PRAGMA journal_mode = WAL", [], |_| Ok(()))?;
        conn.query_row(&format!("PRAGMA max_page_count = {}", MAX_KV_BYTES / 4096), [], |_| Ok(()))?;
        conn.query_row(&format!("PRAGMA journal_size_limit = {WAL_LIMIT}"), [], |_| Ok(()))?;
        conn.execute_batch(&format!(
            "PRAGMA synchronous = NORMAL; PRAGMA cache_size = -{PAGE_CACHE_KIB}; \
             CREATE TABLE IF NOT EXISTS kv (key TEXT PRIMARY KEY, value BLOB NOT NULL, expires_at INTEGER);"
        ))
    };
    prepare(&conn).map_err(|e| format!("cannot prepare the key-value store: {e}"))?;
    conn.set_limit(Limit::SQLITE_LIMIT_LENGTH, (MAX_VALUE_BYTES + MAX_KEY_BYTES + 64) as i32);
    Ok(conn)
}

/// Instances created before the key-value store had its own file kept it in a
/// `_wharf_kv` table of the guest's database: move it over, once.
fn migrate_old_kv(data: &Connection, dir: &Path) -> Result<(), String> {
    let exists: bool = data
        .query_row("SELECT EXISTS (SELECT 1 FROM sqlite_schema WHERE type = 'table' AND name = '_wharf_kv')", [], |r| {
            r.get(0)
        })
        .map_err(|e| format!("cannot read the database schema: {e}"))?;
    if !exists {
        return Ok(());
    }
    let mut kv = open_kv(dir)?;
    let rows: Vec<(String, Vec<u8>, Option<i64>)> = data
        .prepare("SELECT key, value, expires_at FROM _wharf_kv")
        .and_then(|mut stmt| {
            stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?.collect::<rusqlite::Result<Vec<_>>>()
        })
        .map_err(|e| format!("cannot read the old key-value table: {e}"))?;
    let tx = kv.transaction().map_err(|e| e.to_string())?;
    for (key, value, expires) in &rows {
        tx.execute(
            "INSERT INTO kv (key, value, expires_at) VALUES (?1, ?2, ?3) ON CONFLICT (key) DO NOTHING",
            rusqlite::params![key, value, expires],
        )
        .map_err(|e| format!("cannot move the key-value store: {e}"))?;
    }
    tx.commit().map_err(|e| format!("cannot move the key-value store: {e}"))?;
    data.execute_batch("DROP TABLE _wharf_kv").map_err(|e| format!("cannot drop the old key-value table: {e}"))?;
    tracing::info!(?dir, entries = rows.len(), "moved the key-value store to its own file");
    Ok(())
}

/// Read a query's rows, measuring every value before copying it.
fn read_rows(conn: &Connection, statement: &str, params: &[SqlValue]) -> Result<SqlRows, String> {
    let mut stmt = prepare_one(conn, statement)?;
    let columns: Vec<String> = stmt.column_names().iter().map(|c| c.to_string()).collect();
    let width = columns.len();
    let mut rows = stmt.query(rusqlite::params_from_iter(params.iter())).map_err(|e| describe(&e))?;
    let mut out = SqlRows { columns, rows: Vec::new() };
    let mut bytes = 0usize;
    let too_large =
        || format!("the result is larger than {} MiB; select fewer columns or rows", MAX_RESULT_BYTES >> 20);
    while let Some(row) = rows.next().map_err(|e| describe(&e))? {
        if out.rows.len() == MAX_ROWS {
            return Err(format!("the result has more than {MAX_ROWS} rows; add LIMIT or paginate"));
        }
        let mut values = Vec::with_capacity(width);
        for i in 0..width {
            let value = row.get_ref(i).map_err(|e| describe(&e))?;
            bytes += match value {
                ValueRef::Text(t) | ValueRef::Blob(t) => t.len(),
                _ => 8,
            };
            if bytes > MAX_RESULT_BYTES {
                return Err(too_large());
            }
            values.push(match value {
                ValueRef::Null => SqlValue::Null,
                ValueRef::Integer(n) => SqlValue::Integer(n),
                ValueRef::Real(r) => SqlValue::Real(r),
                ValueRef::Text(t) => SqlValue::Text(String::from_utf8_lossy(t).into_owned()),
                ValueRef::Blob(b) => SqlValue::Blob(b.to_vec()),
            });
        }
        out.rows.push(values);
    }
    Ok(out)
}

/// Prepare exactly one statement: trailing statements are refused, not ignored.
fn prepare_one<'c>(conn: &'c Connection, sql: &str) -> Result<rusqlite::Statement<'c>, String> {
    let mut batch = rusqlite::Batch::new(conn, sql);
    let first = batch.next().map_err(|e| describe(&e))?.ok_or("the statement is empty")?;
    if batch.next().map_err(|e| describe(&e))?.is_some() {
        return Err("send one statement at a time (or use batch)".into());
    }
    Ok(first)
}

fn run(conn: &Connection, statement: &str, params: &[SqlValue]) -> Result<u64, String> {
    let mut stmt = prepare_one(conn, statement)?;
    stmt.execute(rusqlite::params_from_iter(params.iter())).map(|n| n as u64).map_err(|e| describe(&e))
}

fn now_millis() -> i64 {
    crate::store::now_millis()
}

#[cfg(test)]
mod tests;
