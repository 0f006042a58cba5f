//! Host side of the `wharf:platform` interfaces (see `wit/`).
//!
//! `identity` is answered from what the ingress resolved before the guest ran (the
//! caller and their grants for this service), and `features` from the instance's
//! configuration held by its route, so neither ever waits. `sql` and `kv` are
//! async: their work runs on the node's database threads, and the time a request
//! spends in them is charged as fuel ([`HOST_CALL_FUEL_PER_MS`]).

use wasmtime::component::HasSelf;

use super::guest::GuestState;

mod bindings {
    wasmtime::component::bindgen!({
        path: "../wit",
        world: "wharf:platform/service",
        // Database calls wait for a database thread; the guest's fiber is
        // suspended meanwhile, so the async worker serves other requests.
        imports: {
            "wharf:platform/sql": async,
            "wharf:platform/kv": async,
            "wharf:platform/jobs": async,
        },
    });
}

use std::sync::Arc;

use bindings::wharf::platform::{features, identity, jobs, kv, sql};

use crate::instancedb::{Call, Dialect, InstanceDb, SqlValue};

/// The instance's enabled modules and settings.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Features {
    /// Enabled module ids (only those the running version declares).
    pub modules: Vec<String>,
    /// Settings, sorted by key.
    pub settings: Vec<(String, String)>,
}

impl Features {
    /// `features` in an `Arc`: one shared by every instance that has none.
    pub fn shared(features: Features) -> Arc<Features> {
        static NONE: std::sync::LazyLock<Arc<Features>> = std::sync::LazyLock::new(Arc::default);
        if features.modules.is_empty() && features.settings.is_empty() {
            NONE.clone()
        } else {
            Arc::new(features)
        }
    }
}

/// What the guest may learn about its request beyond HTTP.
#[derive(Debug, Clone)]
pub struct GuestContext {
    /// The authenticated caller, if any.
    pub caller: Option<Arc<GuestCaller>>,
    /// The instance's configuration.
    pub features: Arc<Features>,
    /// The instance's database and key-value store.
    pub db: Option<Arc<InstanceDb>>,
    /// Where the guest's jobs go.
    pub jobs: Option<JobsContext>,
}

impl Default for GuestContext {
    /// Nobody calling, no configuration, no database: what a sandbox holds
    /// between requests (the empty features are shared, not allocated).
    fn default() -> Self {
        Self { caller: None, features: Features::shared(Features::default()), db: None, jobs: None }
    }
}

/// A guest's request to queue a job, as the job queue takes it.
pub struct JobRequest {
    pub tenant: Arc<str>,
    pub instance: Arc<str>,
    /// The version enqueueing it: its manifest says which jobs it may queue.
    pub version: Arc<dyn Enqueuer>,
    pub kind: String,
    pub payload: Vec<u8>,
    pub job_version: u32,
    pub delay: std::time::Duration,
    pub idempotency_key: Option<String>,
    pub priority: i32,
    pub max_attempts: Option<u32>,
    /// The W3C `traceparent` of the enqueue's span, when its trace is kept.
    pub trace_parent: Option<String>,
}

/// The service version a guest runs, as the job queue sees it (the registry's
/// loaded versions implement it).
pub trait Enqueuer: Send + Sync {
    /// The service's name.
    fn service(&self) -> &str;
    /// The version's number.
    fn version(&self) -> &str;
    /// Whether its manifest declares job `kind` at `job_version`.
    fn accepts(&self, kind: &str, job_version: u32) -> bool;
}

/// Queueing a job: the new job's id, or what the guest reads as the error.
pub type Enqueueing<'a> = std::pin::Pin<Box<dyn std::future::Future<Output = Result<String, String>> + Send + 'a>>;

/// Where guests queue jobs (the job queue implements it): the runtime knows
/// the door, not the room behind it.
pub trait JobQueue: Send + Sync {
    /// Queue `job` within its tenant's quotas.
    fn enqueue(&self, job: JobRequest) -> Enqueueing<'_>;
}

/// An instance's door to the job queue, built with its route.
pub struct InstanceJobs {
    pub queue: Arc<dyn JobQueue>,
    pub tenant: Arc<str>,
    pub instance: Arc<str>,
}

/// What a guest enqueues jobs as: its instance, and the version running (two
/// reference counts per request, no allocation).
#[derive(Clone)]
pub struct JobsContext {
    pub instance: Arc<InstanceJobs>,
    pub version: Arc<dyn Enqueuer>,
}

impl std::fmt::Debug for JobsContext {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JobsContext").field("instance", &self.instance.instance).finish_non_exhaustive()
    }
}

/// A caller as the guest sees it.
#[derive(Debug, Clone)]
pub struct GuestCaller {
    pub user_id: String,
    pub email: String,
    /// Permission names (within the service) the caller holds and the running
    /// version declares.
    pub permissions: Vec<String>,
}

impl identity::Host for GuestState {
    fn caller(&mut self) -> Option<identity::User> {
        self.context.caller.as_ref().map(|c| identity::User { user_id: c.user_id.clone(), email: c.email.clone() })
    }

    fn allowed(&mut self, permission: String) -> bool {
        self.context.caller.as_ref().is_some_and(|c| c.permissions.contains(&permission))
    }
}

impl features::Host for GuestState {
    fn enabled_modules(&mut self) -> Vec<String> {
        self.context.features.modules.clone()
    }

    fn is_enabled(&mut self, id: String) -> bool {
        self.context.features.modules.contains(&id)
    }

    fn setting(&mut self, key: String) -> Option<String> {
        self.context.features.settings.iter().find(|(k, _)| *k == key).map(|(_, v)| v.clone())
    }

    fn settings(&mut self) -> Vec<(String, String)> {
        self.context.features.settings.clone()
    }
}

/// Fuel charged for each millisecond of CPU a request's `sql` and `kv` calls use
/// on the database threads: about what a guest executes in a millisecond (one
/// unit of fuel per nanosecond), so work a guest moves into SQL costs what it
/// would cost in wasm, and the fuel budget bounds both. Waits (for the instance's
/// connection, or for a CPU while the node is busy) are not charged: the
/// request's deadline bounds those.
pub const HOST_CALL_FUEL_PER_MS: u64 = 1_000_000;

/// Fuel charged for queueing one job (what 0.2 ms of guest work costs).
pub const ENQUEUE_FUEL: u64 = 200_000;

impl GuestState {
    fn db(&self) -> Result<Arc<InstanceDb>, String> {
        self.context.db.clone().ok_or_else(|| "this request has no instance database".to_string())
    }

    /// Charge the database CPU time `call` used to the request.
    fn charge(&mut self, call: &Call) {
        let nanos = call.cpu_nanos.load(std::sync::atomic::Ordering::Relaxed);
        let fuel = u128::from(nanos) * u128::from(HOST_CALL_FUEL_PER_MS) / 1_000_000;
        self.host_fuel_debt = self.host_fuel_debt.saturating_add(u64::try_from(fuel).unwrap_or(u64::MAX));
    }
}

fn to_sql(values: Vec<sql::Value>) -> Vec<SqlValue> {
    values
        .into_iter()
        .map(|v| match v {
            sql::Value::Null => SqlValue::Null,
            sql::Value::Integer(n) => SqlValue::Integer(n),
            sql::Value::Real(r) => SqlValue::Real(r),
            sql::Value::Text(t) => SqlValue::Text(t),
            sql::Value::Blob(b) => SqlValue::Blob(b),
        })
        .collect()
}

fn from_sql(value: SqlValue) -> sql::Value {
    match value {
        SqlValue::Null => sql::Value::Null,
        SqlValue::Integer(n) => sql::Value::Integer(n),
        SqlValue::Real(r) => sql::Value::Real(r),
        SqlValue::Text(t) => sql::Value::Text(t),
        SqlValue::Blob(b) => sql::Value::Blob(b),
    }
}

/// Run one database call for the guest, charged to its request.
macro_rules! db_call {
    ($state:ident, |$db:ident, $budget:ident| $call:expr) => {{
        let $budget = &Call::until($state.deadline);
        let result = match $state.db() {
            Ok($db) => $call.await,
            Err(e) => Err(e),
        };
        $state.charge($budget);
        result
    }};
}

// Policy refusals and limits are errors the guest sees (`result::err`), never traps.
impl sql::Host for GuestState {
    async fn query(&mut self, statement: String, params: Vec<sql::Value>) -> Result<sql::Rows, String> {
        let rows = db_call!(self, |db, deadline| db.query(statement, to_sql(params), deadline))?;
        Ok(sql::Rows {
            columns: rows.columns,
            rows: rows.rows.into_iter().map(|r| r.into_iter().map(from_sql).collect()).collect(),
        })
    }

    async fn execute(&mut self, statement: String, params: Vec<sql::Value>) -> Result<u64, String> {
        db_call!(self, |db, deadline| db.execute(statement, to_sql(params), deadline))
    }

    async fn batch(&mut self, statements: Vec<(String, Vec<sql::Value>)>) -> Result<Vec<u64>, String> {
        let statements: Vec<(String, Vec<SqlValue>)> = statements.into_iter().map(|(s, p)| (s, to_sql(p))).collect();
        db_call!(self, |db, deadline| db.batch(statements, deadline))
    }

    async fn dialect(&mut self) -> sql::SqlDialect {
        match self.context.db.as_ref().map(|db| db.dialect()) {
            Some(Dialect::Postgres) => sql::SqlDialect::Postgres,
            _ => sql::SqlDialect::Sqlite,
        }
    }
}

impl kv::Host for GuestState {
    async fn get(&mut self, key: String) -> Result<Option<Vec<u8>>, String> {
        db_call!(self, |db, deadline| db.kv_get(key, deadline))
    }

    async fn set(&mut self, key: String, value: Vec<u8>, ttl_seconds: Option<u64>) -> Result<(), String> {
        let ttl = ttl_seconds.map(std::time::Duration::from_secs);
        db_call!(self, |db, deadline| db.kv_set(key, value, ttl, deadline))
    }

    async fn delete(&mut self, key: String) -> Result<bool, String> {
        db_call!(self, |db, deadline| db.kv_delete(key, deadline))
    }

    async fn list_keys(&mut self, prefix: String, limit: u32) -> Result<Vec<String>, String> {
        db_call!(self, |db, deadline| db.kv_list(prefix, limit, deadline))
    }

    async fn increment(&mut self, key: String, delta: i64) -> Result<i64, String> {
        db_call!(self, |db, deadline| db.kv_increment(key, delta, deadline))
    }
}

impl jobs::Host for GuestState {
    async fn enqueue(&mut self, kind: String, payload: Vec<u8>, options: jobs::Options) -> Result<String, String> {
        let Some(context) = self.context.jobs.clone() else {
            return Err("this call cannot enqueue jobs".into());
        };
        let door = &context.instance;
        let span = crate::telemetry::child_span!(
            "platform call",
            otel.name = "jobs.enqueue",
            otel.kind = "producer",
            wharf.kind = %kind,
            otel.status_code = tracing::field::Empty,
        );
        let job = JobRequest {
            tenant: door.tenant.clone(),
            instance: door.instance.clone(),
            version: context.version.clone(),
            kind,
            payload,
            job_version: options.version,
            delay: std::time::Duration::from_millis(options.delay_ms),
            idempotency_key: options.idempotency_key,
            priority: options.priority,
            max_attempts: options.max_attempts,
            // The job's runs continue this trace (when it is kept).
            trace_parent: crate::telemetry::traceparent(&span),
        };
        let deadline = tokio::time::Instant::from_std(self.deadline);
        let enqueued = tracing::Instrument::instrument(door.queue.enqueue(job), span.clone());
        let result = match tokio::time::timeout_at(deadline, enqueued).await {
            Ok(result) => result,
            Err(_) => Err("the request's deadline passed while queueing the job".into()),
        };
        if result.is_err() {
            span.record("otel.status_code", "error");
        }
        // A flat price: the write is shared with other requests' jobs (one
        // commit for a batch), so its wall time says little about this job.
        self.host_fuel_debt = self.host_fuel_debt.saturating_add(ENQUEUE_FUEL);
        result
    }
}

/// Take the fuel owed for host-call time from the store. Called as a platform
/// call returns to the guest, where compiled code reloads its fuel counter; past
/// the budget, the guest stops at its next instruction (out of fuel).
fn settle_host_fuel(store: &mut wasmtime::StoreContextMut<'_, GuestState>) -> wasmtime::Result<()> {
    let debt = std::mem::take(&mut store.data_mut().host_fuel_debt);
    if debt > 0 {
        let left = store.get_fuel()?;
        store.set_fuel(left.saturating_sub(debt))?;
        if debt > left {
            // Remember what could not be taken, so usage still counts the budget.
            store.data_mut().host_fuel_debt = debt - left;
        }
    }
    Ok(())
}

/// Link one async platform function whose time is charged as fuel: the
/// generated bindings give a host function no access to the store, so these are
/// linked by hand around the generated `Host` traits.
macro_rules! link_charged {
    ($instance:ident, $name:literal, $host:path, $method:ident, ($($arg:ident: $ty:ty),*)) => {
        $instance.func_wrap_async(
            $name,
            |mut store: wasmtime::StoreContextMut<'_, GuestState>, ($($arg,)*): ($($ty,)*)| {
                Box::new(async move {
                    let result = <GuestState as $host>::$method(store.data_mut(), $($arg),*).await;
                    settle_host_fuel(&mut store)?;
                    Ok((result,))
                })
            },
        )?;
    };
}

/// Add `wharf:platform` to a linker.
pub fn add_to_linker(linker: &mut wasmtime::component::Linker<GuestState>) -> wasmtime::Result<()> {
    identity::add_to_linker::<GuestState, HasSelf<GuestState>>(linker, |state| state)?;
    features::add_to_linker::<GuestState, HasSelf<GuestState>>(linker, |state| state)?;
    let mut sql = linker.instance("wharf:platform/sql@0.1.0")?;
    link_charged!(sql, "query", sql::Host, query, (statement: String, params: Vec<sql::Value>));
    link_charged!(sql, "execute", sql::Host, execute, (statement: String, params: Vec<sql::Value>));
    link_charged!(sql, "batch", sql::Host, batch, (statements: Vec<(String, Vec<sql::Value>)>));
    link_charged!(sql, "dialect", sql::Host, dialect, ());
    let mut kv = linker.instance("wharf:platform/kv@0.1.0")?;
    link_charged!(kv, "get", kv::Host, get, (key: String));
    link_charged!(kv, "set", kv::Host, set, (key: String, value: Vec<u8>, ttl: Option<u64>));
    link_charged!(kv, "delete", kv::Host, delete, (key: String));
    link_charged!(kv, "list-keys", kv::Host, list_keys, (prefix: String, limit: u32));
    link_charged!(kv, "increment", kv::Host, increment, (key: String, delta: i64));
    let mut jobs = linker.instance("wharf:platform/jobs@0.1.0")?;
    link_charged!(jobs, "enqueue", jobs::Host, enqueue, (kind: String, payload: Vec<u8>, options: jobs::Options));
    Ok(())
}
