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
}

/// Largest payload a job carries.
pub const MAX_PAYLOAD_BYTES: usize = 64 << 10;
/// Most jobs one claim takes.
pub const CLAIM_BATCH: usize = 32;
/// Longest backoff between attempts.
pub const MAX_BACKOFF: Duration = Duration::from_secs(3600);
/// Kind of the platform's setup job (migrations, then the seeder).
pub const SETUP_KIND: &str = "wharf.setup";

/// Settings of the queue and the workers of one node.
#[derive(Debug, Clone)]
pub struct JobsConfig {
    /// Jobs this node runs at once (0: it runs none).
    pub concurrency: usize,
    /// Wall-clock limit of one attempt.
    pub timeout: Duration,
    /// How long a claim holds a job: longer than `timeout`, so a live worker
    /// always finishes (or gives up) first. After it, another worker may take it.
    pub lease: Duration,
    /// First retry delay; doubles with each attempt.
    pub backoff: Duration,
    /// Attempts unless the job says otherwise.
    pub max_attempts: u32,
    /// Fuel of one attempt.
    pub fuel: u64,
    /// How often an idle worker looks for jobs other nodes queued.
    pub poll: Duration,
    /// Finished (succeeded, cancelled) jobs are deleted after this long; dead
    /// ones are kept until someone retries or cancels them.
    pub retention: Duration,
    /// Finished jobs kept per tenant besides the retention: only its newest
    /// this many (a tenant running jobs without pause fills no disk).
    pub kept_finished: i64,
}

impl Default for JobsConfig {
    fn default() -> Self {
        Self {
            concurrency: 16,
            timeout: Duration::from_secs(60),
            lease: Duration::from_secs(90),
            backoff: Duration::from_secs(1),
            max_attempts: 5,
            // Ten requests' worth at the default request budget; a node sets
            // it to ten times its own (`NodeConfig::limits`).
            fuel: 20_000_000_000,
            poll: Duration::from_millis(200),
            retention: Duration::from_secs(7 * 86_400),
            kept_finished: 10_000,
        }
    }
}

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
#[derive(Debug, Clone, Serialize)]
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
#[derive(Debug, Clone, Serialize)]
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
#[derive(Debug, Clone, Serialize)]
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
        let quotas = Arc::new(crate::configurator::quota::Quotas::new(db.clone(), quotas));
        let wake = Arc::new(tokio::sync::Notify::new());
        let (batches, pending) = tokio::sync::mpsc::unbounded_channel();
        tokio::spawn(write_batches(db.clone(), config.max_attempts, quotas, wake.clone(), pending));
        Self { db, node_id, config, batches, wake }
    }

    /// Queue a job of a tenant's (a guest's, a person's, a schedule's), within
    /// the tenant's pending-jobs quota. Jobs queued at the same moment (by
    /// concurrent requests) are written together, in one transaction: one
    /// commit for many jobs.
    pub async fn enqueue_for_tenant(&self, job: NewJob) -> Result<Enqueued, JobError> {
        job.check()?;
        // The platform's own kinds are queued by the platform only.
        if job.kind.starts_with("wharf.") {
            return Err(JobError::InvalidKind(job.kind));
        }
        let (reply, answer) = tokio::sync::oneshot::channel();
        self.batches.send((job, reply)).map_err(|_| anyhow::anyhow!("the node is stopping"))?;
        answer.await.map_err(|_| anyhow::anyhow!("the node is stopping"))?
    }

    /// Queue a job inside `tx` (nothing is queued unless it commits).
    pub async fn enqueue_in(
        &self,
        tx: &mut sqlx::Transaction<'_, store::Backend>,
        job: &NewJob,
        limits: Option<(i64, i64)>,
    ) -> Result<Enqueued, JobError> {
        job.check()?;
        // The tenant's counter first: it also orders concurrent enqueues of one
        // tenant, so the quota holds across nodes, and on SQLite the transaction
        // takes the write lock before it reads (a read first could not upgrade
        // past a concurrent writer).
        let (pending, bytes): (i64, i64) = sqlx::query_as(
            "INSERT INTO job_tenants (tenant_id, served_at, pending, bytes) VALUES ($1, 0, 1, $2) \
             ON CONFLICT (tenant_id) DO UPDATE SET pending = job_tenants.pending + 1, \
             bytes = job_tenants.bytes + excluded.bytes RETURNING pending, bytes",
        )
        .bind(&job.tenant)
        .bind(job.payload.len() as i64)
        .fetch_one(&mut **tx)
        .await
        .context("failed to count the tenant's jobs")?;
        if let Some(key) = &job.idempotency_key {
            let existing: Option<(String,)> =
                sqlx::query_as("SELECT id FROM jobs WHERE instance_id = $1 AND idempotency_key = $2")
                    .bind(&job.instance)
                    .bind(key)
                    .fetch_optional(&mut **tx)
                    .await
                    .context("failed to look up the idempotency key")?;
            // (The caller does not commit: the counter goes back.)
            if let Some((id,)) = existing {
                return Ok(Enqueued { id, created: false });
            }
        }
        if let Some((pending_limit, bytes_limit)) = limits {
            if pending > pending_limit {
                return Err(JobError::QuotaExceeded { tenant: job.tenant.clone(), pending: pending - 1 });
            }
            if bytes > bytes_limit {
                return Err(JobError::BytesExceeded {
                    tenant: job.tenant.clone(),
                    bytes: bytes - job.payload.len() as i64,
                    payload: job.payload.len(),
                    limit: bytes_limit,
                });
            }
        }
        let id = format!("job-{}", &uuid::Uuid::new_v4().simple().to_string()[..16]);
        let now = store::now_millis();
        let inserted = sqlx::query(
            "INSERT INTO jobs (id, tenant_id, instance_id, service, kind, payload, job_version, enqueued_by, run_at, \
             priority, attempts, max_attempts, idempotency_key, state, created_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, 0, $11, $12, 'queued', $13)",
        )
        .bind(&id)
        .bind(&job.tenant)
        .bind(&job.instance)
        .bind(&job.service)
        .bind(&job.kind)
        .bind(job.payload.as_slice())
        .bind(i64::from(job.job_version))
        .bind(&job.enqueued_by)
        .bind(now + job.delay.as_millis() as i64)
        .bind(i64::from(job.priority))
        .bind(i64::from(job.max_attempts.unwrap_or(self.config.max_attempts)))
        .bind(&job.idempotency_key)
        .bind(now)
        .execute(&mut **tx)
        .await;
        match inserted {
            Ok(_) => Ok(Enqueued { id, created: true }),
            // The same key queued by another node meanwhile.
            Err(e) if store::is_unique_violation(&e) => {
                Err(anyhow::anyhow!("the idempotency key was used at the same moment; retry").into())
            }
            Err(e) => Err(anyhow::Error::from(e).context("failed to queue the job").into()),
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
             max_attempts, fence"
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
        // Successes (the common case) in one statement per version they ran on.
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
                let changed = query.fetch_all(&mut *tx).await.context("failed to record succeeded jobs")?;
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
        for (job, finish) in done {
            let (state, run_at, error, ran, attempts_back) = match finish {
                Finish::Succeeded { .. } | Finish::Recorded => continue,
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
            .execute(&mut *tx)
            .await
            .context("failed to record a job's outcome")?
            .rows_affected();
            // (A dead job still counts: it keeps its payload until retried or cancelled.)
            if changed == 0 {
                tracing::warn!(job = %job.id, "a job's lease was taken over before it finished; its outcome is dropped");
            }
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

    /// One job.
    pub async fn get(&self, id: &str) -> Result<JobInfo, JobError> {
        let row: Option<JobRow> = sqlx::query_as(&format!("SELECT {JOB_COLUMNS} FROM jobs WHERE id = $1"))
            .bind(id)
            .fetch_optional(&self.db)
            .await
            .context("failed to read the job")?;
        row.map(JobInfo::from).ok_or_else(|| JobError::UnknownJob(id.to_string()))
    }

    /// Jobs matching `filter`, newest first.
    pub async fn list(&self, filter: &JobFilter) -> Result<Vec<JobInfo>, JobError> {
        if let Some(state) = &filter.state {
            if !STATES.contains(&state.as_str()) {
                return Err(JobError::InvalidState(state.clone()));
            }
        }
        let mut clauses = Vec::new();
        let mut binds: Vec<String> = Vec::new();
        let mut add = |clause: &str, value: &String| {
            binds.push(value.clone());
            clauses.push(clause.replace('?', &format!("${}", binds.len())));
        };
        if let Some(v) = &filter.instance {
            add("instance_id = ?", v);
        }
        if let Some(v) = &filter.kind {
            add("kind = ?", v);
        }
        if let Some(v) = &filter.state {
            add("state = ?", v);
        }
        if let Some(v) = &filter.service {
            add("service = ?", v);
        }
        if let Some(v) = &filter.before {
            add("(created_at, id) < (SELECT created_at, id FROM jobs WHERE id = ?)", v);
        }
        if let Some(tenants) = &filter.tenants {
            if tenants.is_empty() {
                return Ok(Vec::new());
            }
            let first = binds.len() + 1;
            binds.extend(tenants.iter().take(500).cloned());
            let marks: Vec<String> = (first..=binds.len()).map(|n| format!("${n}")).collect();
            clauses.push(format!("tenant_id IN ({})", marks.join(", ")));
        }
        let filter_sql = if clauses.is_empty() { String::new() } else { format!("WHERE {}", clauses.join(" AND ")) };
        let sql = format!(
            "SELECT {JOB_COLUMNS} FROM jobs {filter_sql} ORDER BY created_at DESC, id DESC LIMIT {}",
            filter.limit.clamp(1, 1000)
        );
        let mut query = sqlx::query_as::<_, JobRow>(&sql);
        for b in &binds {
            query = query.bind(b);
        }
        Ok(query.fetch_all(&self.db).await.context("failed to list jobs")?.into_iter().map(JobInfo::from).collect())
    }

    /// Queue a dead (or failed, or cancelled) job again, with its attempts reset.
    pub async fn retry(&self, id: &str) -> Result<JobInfo, JobError> {
        let job = self.get(id).await?;
        let mut tx = crate::store::begin(&self.db).await.context("failed to begin transaction")?;
        let changed = sqlx::query(
            "UPDATE jobs SET state = 'queued', attempts = 0, run_at = $1, finished_at = NULL \
             WHERE id = $2 AND state IN ('dead', 'failed', 'cancelled')",
        )
        .bind(store::now_millis())
        .bind(id)
        .execute(&mut *tx)
        .await
        .context("failed to retry the job")?
        .rows_affected();
        if changed == 0 {
            return Err(JobError::WrongState {
                id: id.to_string(),
                state: job.state,
                allowed: "dead, failed or cancelled",
                action: "retried",
            });
        }
        if job.state == "cancelled" {
            // It counts as unfinished again (a failed or dead one still did).
            sqlx::query("UPDATE job_tenants SET pending = pending + 1 WHERE tenant_id = $1")
                .bind(&job.tenant)
                .execute(&mut *tx)
                .await
                .context("failed to count the job")?;
        }
        if job.kind == SETUP_KIND {
            setup::retrying(&mut tx, &job.instance, &job.enqueued_by).await?;
        }
        tx.commit().await.context("failed to commit the retry")?;
        self.wake.notify_one();
        self.get(id).await
    }

    /// Cancel a job that is not running: it will not run (again).
    pub async fn cancel(&self, id: &str) -> Result<JobInfo, JobError> {
        let job = self.get(id).await?;
        let mut tx = crate::store::begin(&self.db).await.context("failed to begin transaction")?;
        let changed = sqlx::query(
            "UPDATE jobs SET state = 'cancelled', finished_at = $1 WHERE id = $2 AND state IN ('queued', 'failed', 'dead')",
        )
        .bind(store::now_millis())
        .bind(id)
        .execute(&mut *tx)
        .await
        .context("failed to cancel the job")?
        .rows_affected();
        if changed == 0 {
            return Err(JobError::WrongState {
                id: id.to_string(),
                state: job.state,
                allowed: "queued, failed or dead",
                action: "cancelled",
            });
        }
        // Finished for good (its payload stays, for a retry, until the job is deleted).
        sqlx::query("UPDATE job_tenants SET pending = pending - 1 WHERE tenant_id = $1")
            .bind(&job.tenant)
            .execute(&mut *tx)
            .await
            .context("failed to count the job")?;
        if job.kind == SETUP_KIND {
            setup::cancelled(&mut tx, &job.instance, &job.enqueued_by).await?;
        }
        tx.commit().await.context("failed to commit the cancellation")?;
        self.get(id).await
    }

    /// Queue depth and the oldest ready job's wait, per service (of `tenants`
    /// only, when given).
    pub async fn stats(&self, tenants: Option<&[String]>) -> Result<Vec<ServiceQueue>, JobError> {
        let now = store::now_millis();
        let (filter, binds) = match tenants {
            Some([]) => return Ok(Vec::new()),
            Some(tenants) => {
                let tenants: Vec<String> = tenants.iter().take(500).cloned().collect();
                let marks: Vec<String> = (2..tenants.len() + 2).map(|n| format!("${n}")).collect();
                (format!("AND tenant_id IN ({})", marks.join(", ")), tenants)
            }
            None => (String::new(), Vec::new()),
        };
        let sql = format!(
            "SELECT service, \
             SUM(CASE WHEN state IN ('queued', 'failed') THEN 1 ELSE 0 END), \
             SUM(CASE WHEN state = 'running' THEN 1 ELSE 0 END), \
             SUM(CASE WHEN state = 'dead' THEN 1 ELSE 0 END), \
             MIN(CASE WHEN state IN ('queued', 'failed') AND run_at <= $1 THEN run_at ELSE NULL END) \
             FROM jobs WHERE state IN ('queued', 'failed', 'running', 'dead') {filter} GROUP BY service ORDER BY service"
        );
        let mut query = sqlx::query_as::<_, (String, i64, i64, i64, Option<i64>)>(&sql).bind(now);
        for t in &binds {
            query = query.bind(t);
        }
        let rows = query.fetch_all(&self.db).await.context("failed to count jobs")?;
        Ok(rows
            .into_iter()
            .map(|(service, queued, running, dead, oldest)| ServiceQueue {
                service,
                queued,
                running,
                dead,
                oldest_ready_ms: oldest.map(|t| (now - t).max(0)).unwrap_or(0),
            })
            .collect())
    }
}

/// Write enqueued jobs as they arrive: all those waiting (up to
/// [`ENQUEUE_BATCH`]) in one transaction, so a burst of enqueues costs a few
/// commits rather than one each.
async fn write_batches(
    db: Db,
    max_attempts: u32,
    quotas: Arc<crate::configurator::quota::Quotas>,
    wake: Arc<tokio::sync::Notify>,
    mut pending: tokio::sync::mpsc::UnboundedReceiver<(NewJob, Reply)>,
) {
    let mut batch = Vec::new();
    while let Some(first) = pending.recv().await {
        batch.push(first);
        while batch.len() < ENQUEUE_BATCH {
            match pending.try_recv() {
                Ok(next) => batch.push(next),
                Err(_) => break,
            }
        }
        let jobs: Vec<&NewJob> = batch.iter().map(|(job, _)| job).collect();
        match write_batch(&db, max_attempts, &quotas, &jobs).await {
            Ok(outcomes) => {
                let created = outcomes.iter().any(|o| matches!(o, Ok(Enqueued { created: true, .. })));
                for ((_, reply), outcome) in batch.drain(..).zip(outcomes) {
                    let _ = reply.send(outcome);
                }
                if created {
                    wake.notify_one();
                }
            }
            Err(e) => {
                let message = format!("{e:#}");
                for (_, reply) in batch.drain(..) {
                    let _ = reply.send(Err(anyhow::anyhow!("failed to queue the job: {message}").into()));
                }
            }
        }
    }
}

/// One transaction for `jobs`: each tenant's counter once (its quota checked
/// for the jobs in order), idempotency keys looked up (and shared within the
/// batch), the new jobs inserted together.
async fn write_batch(
    db: &Db,
    max_attempts: u32,
    quotas: &crate::configurator::quota::Quotas,
    jobs: &[&NewJob],
) -> anyhow::Result<Vec<Result<Enqueued, JobError>>> {
    use crate::configurator::quota::{Quota, Subject};
    // Per tenant: jobs and payload bytes in the batch.
    let mut per_tenant: HashMap<&str, (i64, i64)> = HashMap::new();
    for job in jobs {
        let counts = per_tenant.entry(job.tenant.as_str()).or_default();
        counts.0 += 1;
        counts.1 += job.payload.len() as i64;
    }
    let mut limits = HashMap::new();
    for tenant in per_tenant.keys() {
        let subject = Subject::Tenant(tenant);
        let count = quotas.limit(&subject, Quota::PendingJobs).await?;
        let bytes = quotas.limit(&subject, Quota::JobBytes).await?;
        limits.insert(*tenant, (count, bytes));
    }
    let mut tx = crate::store::begin(db).await.context("failed to begin transaction")?;
    // Counters first: the write lock (SQLite) and each tenant's row lock
    // (PostgreSQL) before any read, so concurrent batches of one tenant queue up.
    // Room left per tenant: (jobs, bytes).
    let mut room: HashMap<&str, (i64, i64)> = HashMap::new();
    let mut tenants: Vec<&str> = per_tenant.keys().copied().collect();
    tenants.sort_unstable();
    for tenant in tenants {
        let (count, bytes) = per_tenant[tenant];
        let (pending, held): (i64, i64) = sqlx::query_as(
            "INSERT INTO job_tenants (tenant_id, served_at, pending, bytes) VALUES ($1, 0, $2, $3) \
             ON CONFLICT (tenant_id) DO UPDATE SET pending = job_tenants.pending + excluded.pending, \
             bytes = job_tenants.bytes + excluded.bytes RETURNING pending, bytes",
        )
        .bind(tenant)
        .bind(count)
        .bind(bytes)
        .fetch_one(&mut *tx)
        .await
        .context("failed to count the tenant's jobs")?;
        let (count_limit, bytes_limit) = limits[tenant];
        room.insert(tenant, (count_limit - (pending - count), bytes_limit - (held - bytes)));
    }
    let mut outcomes = Vec::with_capacity(jobs.len());
    let mut keys: HashMap<(&str, &str), String> = HashMap::new();
    let mut rows: Vec<(String, &NewJob)> = Vec::new();
    let now = store::now_millis();
    for job in jobs {
        if let Some(key) = &job.idempotency_key {
            let known = match keys.get(&(job.instance.as_str(), key.as_str())) {
                Some(id) => Some(id.clone()),
                None => sqlx::query_as::<_, (String,)>(
                    "SELECT id FROM jobs WHERE instance_id = $1 AND idempotency_key = $2",
                )
                .bind(&job.instance)
                .bind(key)
                .fetch_optional(&mut *tx)
                .await
                .context("failed to look up the idempotency key")?
                .map(|(id,)| id),
            };
            if let Some(id) = known {
                outcomes.push(Ok(Enqueued { id, created: false }));
                continue;
            }
        }
        let (count_limit, bytes_limit) = limits[job.tenant.as_str()];
        let left = room.get_mut(job.tenant.as_str()).expect("every tenant has room");
        if left.0 <= 0 {
            outcomes.push(Err(JobError::QuotaExceeded { tenant: job.tenant.clone(), pending: count_limit - left.0 }));
            continue;
        }
        let size = job.payload.len() as i64;
        if size > left.1 {
            outcomes.push(Err(JobError::BytesExceeded {
                tenant: job.tenant.clone(),
                bytes: bytes_limit - left.1,
                payload: job.payload.len(),
                limit: bytes_limit,
            }));
            continue;
        }
        left.0 -= 1;
        left.1 -= size;
        let id = format!("job-{}", &uuid::Uuid::new_v4().simple().to_string()[..16]);
        if let Some(key) = &job.idempotency_key {
            keys.insert((job.instance.as_str(), key.as_str()), id.clone());
        }
        outcomes.push(Ok(Enqueued { id: id.clone(), created: true }));
        rows.push((id, job));
    }
    // Counted but not queued (duplicates, over the quota): counted back.
    for (tenant, (count, bytes)) in &per_tenant {
        let (queued, queued_bytes) = rows
            .iter()
            .filter(|(_, job)| job.tenant == *tenant)
            .fold((0i64, 0i64), |(n, b), (_, job)| (n + 1, b + job.payload.len() as i64));
        if queued < *count {
            sqlx::query("UPDATE job_tenants SET pending = pending - $1, bytes = bytes - $2 WHERE tenant_id = $3")
                .bind(count - queued)
                .bind(bytes - queued_bytes)
                .bind(tenant)
                .execute(&mut *tx)
                .await
                .context("failed to count the tenant's jobs")?;
        }
    }
    for chunk in rows.chunks(64) {
        let mut sql = String::from(
            "INSERT INTO jobs (id, tenant_id, instance_id, service, kind, payload, job_version, enqueued_by, run_at, \
             priority, attempts, max_attempts, idempotency_key, state, created_at) VALUES ",
        );
        for i in 0..chunk.len() {
            let b = i * 13;
            if i > 0 {
                sql.push_str(", ");
            }
            sql.push_str(&format!(
                "(${}, ${}, ${}, ${}, ${}, ${}, ${}, ${}, ${}, ${}, 0, ${}, ${}, 'queued', ${})",
                b + 1,
                b + 2,
                b + 3,
                b + 4,
                b + 5,
                b + 6,
                b + 7,
                b + 8,
                b + 9,
                b + 10,
                b + 11,
                b + 12,
                b + 13
            ));
        }
        let mut query = sqlx::query(&sql);
        for (id, job) in chunk {
            query = query
                .bind(id.as_str())
                .bind(job.tenant.as_str())
                .bind(job.instance.as_str())
                .bind(job.service.as_str())
                .bind(job.kind.as_str())
                .bind(job.payload.as_slice())
                .bind(i64::from(job.job_version))
                .bind(job.enqueued_by.as_str())
                .bind(now + job.delay.as_millis() as i64)
                .bind(i64::from(job.priority))
                .bind(i64::from(job.max_attempts.unwrap_or(max_attempts)))
                .bind(job.idempotency_key.as_deref())
                .bind(now);
        }
        query.execute(&mut *tx).await.context("failed to queue jobs")?;
    }
    tx.commit().await.context("failed to commit the jobs")?;
    Ok(outcomes)
}

/// At most `max` characters of `text`.
pub fn truncate(text: &str, max: usize) -> String {
    match text.char_indices().nth(max) {
        Some((cut, _)) => format!("{}…", &text[..cut]),
        None => text.to_string(),
    }
}
