//! Durable, versioned background jobs, in the control plane: one queue for the
//! whole platform, written once in SQL both backends accept (SQLite for one
//! node, PostgreSQL for several), claimed by workers on every node.
//!
//! - **Claims** take ready jobs under a lease (`lease_until`) and bump the job's
//!   `fence`: completing needs the fence the claim returned, so a worker whose
//!   lease expired (it stalled, another worker took the job over) cannot
//!   overwrite the newer attempt. A worker never runs a job past its deadline,
//!   which is shorter than the lease, so a job never runs twice at a time; a
//!   worker that dies leaves its lease to expire and the job runs again
//!   (at-least-once). On PostgreSQL claims skip rows other workers hold
//!   (`FOR UPDATE SKIP LOCKED`); on SQLite each claim is one statement.
//! - **Fairness**: every claim serves tenants with ready jobs least recently
//!   served first (`job_tenants.served_at`), splitting the claim between them.
//!   A tenant's ready job is therefore taken by the first claim in which fewer
//!   than [`CLAIM_BATCH`] tenants were served less recently, however many jobs
//!   other tenants queued: with T tenants waiting, within ⌈T / CLAIM_BATCH⌉
//!   claims.
//! - **Failures** retry with exponential backoff (`base × 2^(attempt-1)`, at
//!   most an hour) until `max_attempts`, then the job is dead: listed, retried
//!   or cancelled by people.

mod enqueue;
mod inspect;
pub mod setup;
pub mod worker;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use serde::Serialize;

use crate::store::{self, Db, Dialect};

/// What a node's job workers and instance setups use: the queue, the
/// instances' routes (their databases, versions and schema), the runtime that
/// runs the guest, and the configurator a setup's outcome changes.
pub struct Workers {
    pub db: Db,
    pub queue: Arc<Queue>,
    pub router: Arc<crate::router::Router>,
    pub registry: Arc<crate::registry::Registry>,
    pub runtime: Arc<crate::runtime::Runtime>,
    pub configurator: Arc<crate::configurator::Configurator>,
    /// The generation this node has caught up with (a setup is a change).
    pub seen: Arc<store::Seen>,
    /// Held by the one node that queues setups and scheduled jobs, takes back
    /// expired jobs and deletes old ones.
    pub lease: Arc<store::Lease>,
}

/// Largest payload a job carries.
pub const MAX_PAYLOAD_BYTES: usize = 64 << 10;
/// Most jobs one claim takes.
pub const CLAIM_BATCH: usize = 32;
/// Longest backoff between attempts.
pub const MAX_BACKOFF: Duration = Duration::from_secs(3600);
/// Kind of the platform's setup job (migrations, then the seeder).
pub const SETUP_KIND: &str = "wharf.setup";

pub use crate::config::JobsConfig;

/// Why a job operation was refused.
#[derive(Debug, thiserror::Error)]
pub enum JobError {
    #[error("the payload is {0} bytes; a job carries at most {MAX_PAYLOAD_BYTES} (keep large data in the instance database and pass its key)")]
    PayloadTooLarge(usize),
    #[error("job kind {0:?} is not valid: use a letter, then letters, digits, '-', '_' or '.' (at most 64); kinds starting with \"wharf.\" are the platform's")]
    InvalidKind(String),
    #[error("{service} {version} does not declare job {kind:?} version {job_version}: add it under [[jobs]] in wharf.toml (kind = {kind:?}, versions = [{job_version}])")]
    NotDeclared { service: String, version: String, kind: String, job_version: u32 },
    #[error("the idempotency key must be 1 to 200 characters")]
    InvalidKey,
    #[error("max attempts must be 1 to 100")]
    InvalidAttempts,
    #[error("the delay may be at most 30 days")]
    InvalidDelay,
    #[error("tenant {tenant:?} has {pending} unfinished jobs (queued, running, waiting to retry or dead), its quota (pending_jobs); wait for them to run, retry or cancel its dead jobs, or ask an operator to raise it (wharf quota set)")]
    QuotaExceeded { tenant: String, pending: i64 },
    #[error("tenant {tenant:?} keeps {bytes} bytes of job payloads, and this job's {payload} would pass its quota (job_bytes, {limit}); send smaller payloads (an id to look up rather than the data), cancel dead jobs, or ask an operator to raise it")]
    BytesExceeded { tenant: String, bytes: i64, payload: usize, limit: i64 },
    #[error("no job {0:?}")]
    UnknownJob(String),
    #[error("job {id} is {state}; only {allowed} jobs can be {action}")]
    WrongState { id: String, state: String, allowed: &'static str, action: &'static str },
    #[error("job state {0:?} is not one of queued, running, failed, succeeded, dead, cancelled")]
    InvalidState(String),
    #[error(transparent)]
    Internal(#[from] anyhow::Error),
}

/// A job to queue.
#[derive(Debug, Clone)]
pub struct NewJob {
    pub tenant: String,
    pub instance: String,
    pub service: String,
    pub kind: String,
    pub payload: Vec<u8>,
    pub job_version: u32,
    /// The service version enqueueing it.
    pub enqueued_by: String,
    pub delay: Duration,
    pub idempotency_key: Option<String>,
    pub priority: i32,
    pub max_attempts: Option<u32>,
    /// The W3C `traceparent` of the kept trace that queued it: its runs
    /// continue that trace.
    pub trace_parent: Option<String>,
}

impl NewJob {
    fn check(&self) -> Result<(), JobError> {
        if self.payload.len() > MAX_PAYLOAD_BYTES {
            return Err(JobError::PayloadTooLarge(self.payload.len()));
        }
        if !self.kind.starts_with("wharf.") && !crate::registry::manifest::valid_job_kind(&self.kind) {
            return Err(JobError::InvalidKind(self.kind.clone()));
        }
        if self.idempotency_key.as_ref().is_some_and(|k| k.is_empty() || k.chars().count() > 200) {
            return Err(JobError::InvalidKey);
        }
        if self.max_attempts.is_some_and(|n| n == 0 || n > 100) {
            return Err(JobError::InvalidAttempts);
        }
        if self.delay > Duration::from_secs(30 * 86_400) {
            return Err(JobError::InvalidDelay);
        }
        Ok(())
    }
}

/// The outcome of an enqueue.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Enqueued {
    pub id: String,
    /// `false` when the idempotency key named a job queued before.
    pub created: bool,
}

/// A job a worker claimed.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct Claimed {
    pub id: String,
    pub tenant_id: String,
    pub instance_id: String,
    pub service: String,
    pub kind: String,
    pub payload: Vec<u8>,
    pub job_version: i64,
    pub enqueued_by: String,
    pub attempts: i64,
    pub max_attempts: i64,
    pub fence: i64,
    pub trace_parent: Option<String>,
}

/// How an attempt ended.
#[derive(Debug, Clone)]
pub enum Finish {
    /// Done, on this service version.
    Succeeded { ran_version: String },
    /// Failed: retried after the backoff, or dead when out of attempts.
    Failed { error: String, ran_version: Option<String> },
    /// Not run (its instance is disabled or in maintenance): queued again after
    /// `after`, the attempt not counted.
    Deferred { after: Duration, reason: String },
    /// Cannot run at all (no version accepts it, its instance is gone): dead now.
    Dead { error: String },
    /// Its outcome is written already, with what it changed (an instance's
    /// setup: the instance and its job in one transaction).
    Recorded,
}

/// A job as the API shows it.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct JobInfo {
    pub id: String,
    pub tenant: String,
    pub instance: String,
    pub service: String,
    pub kind: String,
    pub job_version: i64,
    pub enqueued_by: String,
    /// The payload as text when it is UTF-8.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub payload: Option<String>,
    pub payload_bytes: usize,
    pub state: String,
    pub priority: i64,
    pub attempts: i64,
    pub max_attempts: i64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub idempotency_key: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ran_version: Option<String>,
    /// Unix milliseconds.
    pub run_at: i64,
    pub created_at: i64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub started_at: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub finished_at: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lease_owner: Option<String>,
}

#[derive(sqlx::FromRow)]
struct JobRow {
    id: String,
    tenant_id: String,
    instance_id: String,
    service: String,
    kind: String,
    payload: Vec<u8>,
    job_version: i64,
    enqueued_by: String,
    state: String,
    priority: i64,
    attempts: i64,
    max_attempts: i64,
    idempotency_key: Option<String>,
    last_error: Option<String>,
    ran_version: Option<String>,
    run_at: i64,
    created_at: i64,
    started_at: Option<i64>,
    finished_at: Option<i64>,
    lease_owner: Option<String>,
}

const JOB_COLUMNS: &str = "id, tenant_id, instance_id, service, kind, payload, job_version, enqueued_by, state, \
     priority, attempts, max_attempts, idempotency_key, last_error, ran_version, run_at, created_at, started_at, \
     finished_at, lease_owner";

impl From<JobRow> for JobInfo {
    fn from(row: JobRow) -> Self {
        Self {
            payload_bytes: row.payload.len(),
            payload: String::from_utf8(row.payload).ok(),
            id: row.id,
            tenant: row.tenant_id,
            instance: row.instance_id,
            service: row.service,
            kind: row.kind,
            job_version: row.job_version,
            enqueued_by: row.enqueued_by,
            state: row.state,
            priority: row.priority,
            attempts: row.attempts,
            max_attempts: row.max_attempts,
            idempotency_key: row.idempotency_key,
            last_error: row.last_error,
            ran_version: row.ran_version,
            run_at: row.run_at,
            created_at: row.created_at,
            started_at: row.started_at,
            finished_at: row.finished_at,
            lease_owner: row.lease_owner,
        }
    }
}

/// Which jobs to list.
#[derive(Debug, Clone, Default)]
pub struct JobFilter {
    /// Only these tenants' (`None`: every tenant).
    pub tenants: Option<Vec<String>>,
    pub instance: Option<String>,
    pub kind: Option<String>,
    pub state: Option<String>,
    pub service: Option<String>,
    /// Newest first, before this job id (a cursor).
    pub before: Option<String>,
    pub limit: i64,
}

/// Queue depth of one service, as the API shows it.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct ServiceQueue {
    pub service: String,
    /// Ready or waiting to run (queued, or failed and waiting to retry).
    pub queued: i64,
    pub running: i64,
    pub dead: i64,
    /// Milliseconds the oldest ready job has waited past its run time (0 if none).
    pub oldest_ready_ms: i64,
}

/// The platform's job queue, seen from one node.
pub struct Queue {
    db: Db,
    /// Names this node's leases.
    node_id: String,
    pub config: JobsConfig,
    /// Jobs waiting to be written by the batcher.
    batches: tokio::sync::mpsc::UnboundedSender<(NewJob, Reply)>,
    /// Woken when this node queues a job, so its workers need not wait for a poll.
    pub(crate) wake: Arc<tokio::sync::Notify>,
    /// How this node's attempts ended, for the metrics.
    pub outcomes: FinishCounters,
    /// When this node last woke the others for its backlog.
    backlog_told: std::sync::Mutex<Option<std::time::Instant>>,
}

/// The channel on which a node with more ready jobs than it can take wakes
/// the other nodes' workers.
pub const JOBS_CHANNEL: &str = "wharf_jobs";

/// Attempts this node finished, by how they ended.
#[derive(Debug, Default)]
pub struct FinishCounters {
    pub succeeded: std::sync::atomic::AtomicU64,
    pub failed: std::sync::atomic::AtomicU64,
    pub deferred: std::sync::atomic::AtomicU64,
    pub dead: std::sync::atomic::AtomicU64,
    pub recorded: std::sync::atomic::AtomicU64,
}

impl FinishCounters {
    fn count(&self, finish: &Finish) {
        let counter = match finish {
            Finish::Succeeded { .. } => &self.succeeded,
            Finish::Failed { .. } => &self.failed,
            Finish::Deferred { .. } => &self.deferred,
            Finish::Dead { .. } => &self.dead,
            Finish::Recorded => &self.recorded,
        };
        counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }
}

type Reply = tokio::sync::oneshot::Sender<Result<Enqueued, JobError>>;

/// Most jobs one batched write holds.
const ENQUEUE_BATCH: usize = 512;

const STATES: [&str; 6] = ["queued", "running", "failed", "succeeded", "dead", "cancelled"];

impl Queue {
    /// The queue, with the task that writes enqueued jobs in batches (call
    /// within a tokio runtime).
    pub fn new(db: Db, config: JobsConfig, quotas: crate::config::QuotaDefaults) -> Self {
        let node_id = format!("node-{}", &uuid::Uuid::new_v4().simple().to_string()[..12]);
        let quotas = Arc::new(crate::quota::Quotas::new(db.clone(), quotas));
        let wake = Arc::new(tokio::sync::Notify::new());
        let (batches, pending) = tokio::sync::mpsc::unbounded_channel();
        tokio::spawn(enqueue::write_batches(db.clone(), config.max_attempts, quotas, wake.clone(), pending));
        let backlog_told = std::sync::Mutex::new(None);
        Self { db, node_id, config, batches, wake, outcomes: FinishCounters::default(), backlog_told }
    }

    /// More jobs are ready than this node can take: on a PostgreSQL fleet,
    /// wake every node's workers (at most every 100 ms), so the backlog is
    /// shared without every node polling often.
    pub async fn tell_backlog(&self) {
        if store::dialect(&self.db) != store::Dialect::Postgres {
            return;
        }
        {
            let mut told = self.backlog_told.lock().unwrap_or_else(|e| e.into_inner());
            if told.is_some_and(|at: std::time::Instant| at.elapsed() < Duration::from_millis(100)) {
                return;
            }
            *told = Some(std::time::Instant::now());
        }
        let told = sqlx::query("SELECT pg_notify($1, '')").bind(JOBS_CHANNEL).execute(&self.db).await;
        if let Err(e) = told {
            tracing::warn!("failed to wake the other nodes' workers: {e}");
        }
    }

    /// Claim up to `max` ready jobs for this node, tenants least recently served
    /// first.
    pub async fn claim(&self, max: usize) -> anyhow::Result<Vec<Claimed>> {
        let max = max.min(CLAIM_BATCH);
        if max == 0 {
            return Ok(Vec::new());
        }
        let now = store::now_millis();
        let tenants: Vec<(String,)> = sqlx::query_as(
            "SELECT q.tenant_id FROM job_tenants q WHERE q.pending > 0 AND EXISTS (SELECT 1 FROM jobs j \
             WHERE j.tenant_id = q.tenant_id AND j.state IN ('queued', 'failed') AND j.run_at <= $1) \
             ORDER BY q.served_at, q.tenant_id LIMIT $2",
        )
        .bind(now)
        .bind(max as i64)
        .fetch_all(&self.db)
        .await
        .context("failed to find tenants with ready jobs")?;
        if tenants.is_empty() {
            return Ok(Vec::new());
        }
        let skip_locked = match store::dialect(&self.db) {
            Dialect::Postgres => " FOR UPDATE SKIP LOCKED",
            Dialect::Sqlite => "",
        };
        let claim = format!(
            "UPDATE jobs SET state = 'running', lease_owner = $1, lease_until = $2, fence = fence + 1, \
             attempts = attempts + 1, started_at = $3 \
             WHERE id IN (SELECT id FROM jobs WHERE tenant_id = $4 AND state IN ('queued', 'failed') AND run_at <= $3 \
             ORDER BY priority DESC, run_at, id LIMIT $5{skip_locked}) \
             RETURNING id, tenant_id, instance_id, service, kind, payload, job_version, enqueued_by, attempts, \
             max_attempts, fence, trace_parent"
        );
        let lease_until = now + self.config.lease.as_millis() as i64;
        let mut claimed = Vec::new();
        let mut left = max;
        for (i, (tenant,)) in tenants.iter().enumerate() {
            // An even share of what is left for each tenant still to serve.
            let share = left.div_ceil(tenants.len() - i);
            let rows: Vec<Claimed> = sqlx::query_as(&claim)
                .bind(&self.node_id)
                .bind(lease_until)
                .bind(now)
                .bind(tenant)
                .bind(share as i64)
                .fetch_all(&self.db)
                .await
                .context("failed to claim jobs")?;
            if !rows.is_empty() {
                sqlx::query("UPDATE job_tenants SET served_at = $1 WHERE tenant_id = $2")
                    .bind(store::now_millis())
                    .bind(tenant)
                    .execute(&self.db)
                    .await
                    .context("failed to record the tenant served")?;
            }
            left -= rows.len();
            claimed.extend(rows);
            if left == 0 {
                break;
            }
        }
        Ok(claimed)
    }

    /// Record one attempt that did not succeed: retried later, dead, or
    /// deferred (put back in line, its attempt not counted).
    async fn record_other(&self, tx: &mut Tx, job: &Claimed, finish: &Finish, now: i64) -> anyhow::Result<()> {
        let (state, run_at, error, ran, attempts_back) = match finish {
            Finish::Succeeded { .. } | Finish::Recorded => return Ok(()),
            Finish::Failed { error, ran_version } if job.attempts < job.max_attempts => (
                "failed",
                Some(now + self.backoff(job.attempts).as_millis() as i64),
                Some(error.clone()),
                ran_version.clone(),
                0,
            ),
            Finish::Failed { error, ran_version } => ("dead", None, Some(error.clone()), ran_version.clone(), 0),
            // Not an error of the job's: nothing recorded but the log.
            Finish::Deferred { after, reason } => {
                tracing::debug!(job = %job.id, "job deferred: {reason}");
                ("queued", Some(now + after.as_millis() as i64), None, None, 1)
            }
            Finish::Dead { error } => ("dead", None, Some(error.clone()), None, 0),
        };
        let changed = sqlx::query(
            "UPDATE jobs SET state = $1, run_at = COALESCE($2, run_at), last_error = COALESCE($3, last_error), \
             ran_version = COALESCE($4, ran_version), attempts = attempts - $5, lease_owner = NULL, \
             lease_until = NULL, finished_at = CASE WHEN $1 IN ('succeeded', 'dead') THEN $6 ELSE NULL END \
             WHERE id = $7 AND fence = $8 AND state = 'running'",
        )
        .bind(state)
        .bind(run_at)
        .bind(error.map(|e| truncate(&e, 4000)))
        .bind(ran)
        .bind(attempts_back)
        .bind(now)
        .bind(&job.id)
        .bind(job.fence)
        .execute(&mut **tx)
        .await
        .context("failed to record a job's outcome")?
        .rows_affected();
        // (A dead job still counts: it keeps its payload until retried or cancelled.)
        if changed == 0 {
            tracing::warn!(job = %job.id, "a job's lease was taken over before it finished; its outcome is dropped");
        }
        Ok(())
    }

    /// Record how attempts ended, in one transaction. An attempt whose lease
    /// was taken over (its fence is stale) changes nothing.
    pub async fn finish(&self, done: &[(Claimed, Finish)]) -> anyhow::Result<()> {
        if done.is_empty() {
            return Ok(());
        }
        let now = store::now_millis();
        // Per tenant: jobs finished for good, and payload bytes dropped.
        let mut finished_per_tenant: std::collections::BTreeMap<String, (i64, i64)> = Default::default();
        let mut tx = crate::store::begin(&self.db).await.context("failed to begin transaction")?;
        record_successes(&mut tx, done, now, &mut finished_per_tenant).await?;
        for (job, finish) in done {
            self.record_other(&mut tx, job, finish, now).await?;
        }
        for (tenant, (count, bytes)) in &finished_per_tenant {
            sqlx::query("UPDATE job_tenants SET pending = pending - $1, bytes = bytes - $2 WHERE tenant_id = $3")
                .bind(count)
                .bind(bytes)
                .bind(tenant)
                .execute(&mut *tx)
                .await
                .context("failed to count finished jobs")?;
        }
        tx.commit().await.context("failed to commit job outcomes")?;
        for (_, finish) in done {
            self.outcomes.count(finish);
        }
        Ok(())
    }

    /// The delay before attempt `attempts + 1`.
    pub fn backoff(&self, attempts: i64) -> Duration {
        let exponent = u32::try_from(attempts.saturating_sub(1).clamp(0, 20)).unwrap_or(20);
        self.config.backoff.saturating_mul(1 << exponent).min(MAX_BACKOFF)
    }

    /// Return jobs whose lease expired (their worker died or stalled) to the
    /// queue, or make them dead when out of attempts. Returns how many.
    pub async fn reap(&self) -> anyhow::Result<u64> {
        let now = store::now_millis();
        let mut tx = crate::store::begin(&self.db).await.context("failed to begin transaction")?;
        let dead: Vec<(String, String, String, String)> = sqlx::query_as(
            "UPDATE jobs SET state = 'dead', finished_at = $1, lease_owner = NULL, lease_until = NULL, \
             last_error = 'its worker stopped before finishing (the lease expired) on every attempt' \
             WHERE state = 'running' AND lease_until < $1 AND attempts >= max_attempts \
             RETURNING tenant_id, kind, instance_id, enqueued_by",
        )
        .bind(now)
        .fetch_all(&mut *tx)
        .await
        .context("failed to expire leases")?;
        let requeued = sqlx::query(
            "UPDATE jobs SET state = 'failed', run_at = $1, lease_owner = NULL, lease_until = NULL, \
             last_error = 'its worker stopped before finishing (the lease expired)' \
             WHERE state = 'running' AND lease_until < $1",
        )
        .bind(now)
        .execute(&mut *tx)
        .await
        .context("failed to expire leases")?
        .rows_affected();
        // A dead job still counts against its tenant's quotas (until retried or cancelled).
        for (_tenant, kind, instance, version) in &dead {
            if kind == SETUP_KIND {
                // Its instance leaves maintenance, on the version set up last.
                setup::abandoned(&mut tx, instance, version, "its worker stopped on every attempt").await?;
            }
        }
        tx.commit().await.context("failed to commit expired leases")?;
        let total = requeued + dead.len() as u64;
        if total > 0 {
            tracing::info!(requeued, dead = dead.len(), "jobs whose worker stopped were taken back");
        }
        Ok(total)
    }

    /// Delete every job of `instance` (whatever its state) inside `tx`, and
    /// count its tenant's unfinished ones and their payload bytes back; how many.
    pub async fn forget_instance_in(
        &self,
        tx: &mut sqlx::Transaction<'_, crate::store::Backend>,
        instance: &str,
    ) -> anyhow::Result<u64> {
        let deleted: Vec<(String, String, i64)> = sqlx::query_as(
            "DELETE FROM jobs WHERE instance_id = $1 RETURNING tenant_id, state, CAST(length(payload) AS BIGINT)",
        )
        .bind(instance)
        .fetch_all(&mut **tx)
        .await
        .context("failed to delete the instance's jobs")?;
        let mut freed: HashMap<&str, (i64, i64)> = HashMap::new();
        for (tenant, state, bytes) in &deleted {
            let counts = freed.entry(tenant.as_str()).or_default();
            counts.0 += i64::from(!matches!(state.as_str(), "succeeded" | "cancelled"));
            counts.1 += bytes;
        }
        for (tenant, (pending, bytes)) in freed {
            sqlx::query("UPDATE job_tenants SET pending = pending - $1, bytes = bytes - $2 WHERE tenant_id = $3")
                .bind(pending)
                .bind(bytes)
                .bind(tenant)
                .execute(&mut **tx)
                .await
                .context("failed to count the instance's jobs back")?;
        }
        Ok(deleted.len() as u64)
    }

    /// Delete succeeded and cancelled jobs older than the retention, and those
    /// of a tenant beyond its newest `kept_finished` (so a tenant running
    /// jobs without pause does not fill the control plane in a week).
    pub async fn purge(&self) -> anyhow::Result<u64> {
        let before = store::now_millis() - self.config.retention.as_millis() as i64;
        let mut tx = crate::store::begin(&self.db).await.context("failed to begin transaction")?;
        let deleted: Vec<(String, i64)> = sqlx::query_as(
            "DELETE FROM jobs WHERE state IN ('succeeded', 'cancelled') AND (finished_at < $1 OR id IN ( \
             SELECT id FROM (SELECT id, ROW_NUMBER() OVER (PARTITION BY tenant_id ORDER BY finished_at DESC, id DESC) \
             AS n FROM jobs WHERE state IN ('succeeded', 'cancelled')) ranked WHERE n > $2)) \
             RETURNING tenant_id, CAST(length(payload) AS BIGINT)",
        )
        .bind(before)
        .bind(self.config.kept_finished)
        .fetch_all(&mut *tx)
        .await
        .context("failed to purge old jobs")?;
        let mut freed: HashMap<&str, i64> = HashMap::new();
        for (tenant, bytes) in &deleted {
            *freed.entry(tenant.as_str()).or_default() += bytes;
        }
        for (tenant, bytes) in freed.into_iter().filter(|(_, b)| *b > 0) {
            sqlx::query("UPDATE job_tenants SET bytes = bytes - $1 WHERE tenant_id = $2")
                .bind(bytes)
                .bind(tenant)
                .execute(&mut *tx)
                .await
                .context("failed to count purged jobs")?;
        }
        tx.commit().await.context("failed to commit purged jobs")?;
        Ok(deleted.len() as u64)
    }
}

pub use crate::runtime::truncate;

type Tx = sqlx::Transaction<'static, crate::store::Backend>;

/// Record successes (the common case) in one statement per version they ran
/// on, counting each tenant's jobs finished for good and payload bytes dropped.
async fn record_successes(
    tx: &mut Tx,
    done: &[(Claimed, Finish)],
    now: i64,
    finished_per_tenant: &mut std::collections::BTreeMap<String, (i64, i64)>,
) -> anyhow::Result<()> {
    let mut succeeded: std::collections::BTreeMap<&str, Vec<&Claimed>> = Default::default();
    for (job, finish) in done {
        if let Finish::Succeeded { ran_version } = finish {
            succeeded.entry(ran_version.as_str()).or_default().push(job);
        }
    }
    for (ran_version, jobs) in &succeeded {
        for chunk in jobs.chunks(200) {
            let ids: Vec<String> = (0..chunk.len()).map(|i| format!("${}", 4 + 2 * i)).collect();
            let pairs: Vec<String> =
                (0..chunk.len()).map(|i| format!("(${}, CAST(${} AS BIGINT))", 4 + 2 * i, 5 + 2 * i)).collect();
            // `id IN` finds the rows by key; the pairs check each one's fence.
            let sql = format!(
                "UPDATE jobs SET state = 'succeeded', ran_version = $1, lease_owner = NULL, lease_until = NULL, \
                 finished_at = $2, payload = $3 WHERE id IN ({}) AND state = 'running' \
                 AND (id, fence) IN (VALUES {}) RETURNING id, tenant_id",
                ids.join(", "),
                pairs.join(", ")
            );
            // A succeeded job's payload is not needed any more: dropped.
            let mut query =
                sqlx::query_as::<_, (String, String)>(&sql).bind(*ran_version).bind(now).bind(Vec::<u8>::new());
            for job in chunk {
                query = query.bind(job.id.as_str()).bind(job.fence);
            }
            let changed = query.fetch_all(&mut **tx).await.context("failed to record succeeded jobs")?;
            if changed.len() < chunk.len() {
                tracing::warn!(
                    jobs = chunk.len() - changed.len(),
                    "jobs' leases were taken over before they finished; their outcomes are dropped"
                );
            }
            for (id, tenant) in changed {
                let bytes = chunk.iter().find(|j| j.id == id).map_or(0, |j| j.payload.len() as i64);
                let counts = finished_per_tenant.entry(tenant).or_default();
                counts.0 += 1;
                counts.1 += bytes;
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests;
