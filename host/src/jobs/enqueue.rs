//! Queueing jobs: checked against the tenant's quotas and written in batches,
//! so a burst of enqueues from concurrent requests costs a few commits.

use super::*;

impl Queue {
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
             priority, attempts, max_attempts, idempotency_key, state, created_at, trace_parent) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, 0, $11, $12, 'queued', $13, $14)",
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
        .bind(&job.trace_parent)
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
}

/// Write enqueued jobs as they arrive: all those waiting (up to
/// [`ENQUEUE_BATCH`]) in one transaction, so a burst of enqueues costs a few
/// commits rather than one each.
pub(super) async fn write_batches(
    db: Db,
    max_attempts: u32,
    quotas: Arc<crate::quota::Quotas>,
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
pub(super) async fn write_batch(
    db: &Db,
    max_attempts: u32,
    quotas: &crate::quota::Quotas,
    jobs: &[&NewJob],
) -> anyhow::Result<Vec<Result<Enqueued, JobError>>> {
    use crate::quota::{Quota, Subject};
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
    let room = count_in(&mut tx, &per_tenant, &limits).await?;
    let (outcomes, rows) = admit(&mut tx, jobs, &limits, room).await?;
    count_back(&mut tx, &per_tenant, &rows).await?;
    insert(&mut tx, &rows, max_attempts).await?;
    tx.commit().await.context("failed to commit the jobs")?;
    Ok(outcomes)
}

type Tx = sqlx::Transaction<'static, crate::store::Backend>;
/// Per tenant: jobs and payload bytes.
type Counts<'a> = HashMap<&'a str, (i64, i64)>;

/// Add the batch's jobs to each tenant's counters, and answer the room each
/// tenant has left for them (jobs, bytes). Counters first: the write lock
/// (SQLite) and each tenant's row lock (PostgreSQL) before any read, so
/// concurrent batches of one tenant queue up.
async fn count_in<'a>(tx: &mut Tx, per_tenant: &Counts<'a>, limits: &Counts<'a>) -> anyhow::Result<Counts<'a>> {
    let mut room = HashMap::new();
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
        .fetch_one(&mut **tx)
        .await
        .context("failed to count the tenant's jobs")?;
        let (count_limit, bytes_limit) = limits[tenant];
        room.insert(tenant, (count_limit - (pending - count), bytes_limit - (held - bytes)));
    }
    Ok(room)
}

/// Each job's outcome, in order: one already queued under its idempotency
/// key, refused by its tenant's room, or new (a row to insert, with its id).
#[allow(clippy::type_complexity)]
async fn admit<'j>(
    tx: &mut Tx,
    jobs: &[&'j NewJob],
    limits: &Counts<'_>,
    mut room: Counts<'_>,
) -> anyhow::Result<(Vec<Result<Enqueued, JobError>>, Vec<(String, &'j NewJob)>)> {
    let mut outcomes = Vec::with_capacity(jobs.len());
    let mut keys: HashMap<(&str, &str), String> = HashMap::new();
    let mut rows = Vec::new();
    for &job in jobs {
        if let Some(key) = &job.idempotency_key {
            let known = match keys.get(&(job.instance.as_str(), key.as_str())) {
                Some(id) => Some(id.clone()),
                None => sqlx::query_as::<_, (String,)>(
                    "SELECT id FROM jobs WHERE instance_id = $1 AND idempotency_key = $2",
                )
                .bind(&job.instance)
                .bind(key)
                .fetch_optional(&mut **tx)
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
    Ok((outcomes, rows))
}

/// Jobs counted but not queued (duplicates, over the quota) are counted back.
async fn count_back(tx: &mut Tx, per_tenant: &Counts<'_>, rows: &[(String, &NewJob)]) -> anyhow::Result<()> {
    for (tenant, (count, bytes)) in per_tenant {
        let (queued, queued_bytes) = rows
            .iter()
            .filter(|(_, job)| job.tenant == *tenant)
            .fold((0i64, 0i64), |(n, b), (_, job)| (n + 1, b + job.payload.len() as i64));
        if queued < *count {
            sqlx::query("UPDATE job_tenants SET pending = pending - $1, bytes = bytes - $2 WHERE tenant_id = $3")
                .bind(count - queued)
                .bind(bytes - queued_bytes)
                .bind(tenant)
                .execute(&mut **tx)
                .await
                .context("failed to count the tenant's jobs")?;
        }
    }
    Ok(())
}

/// Insert the new jobs, 64 to a statement.
async fn insert(tx: &mut Tx, rows: &[(String, &NewJob)], max_attempts: u32) -> anyhow::Result<()> {
    const COLUMNS: usize = 14;
    let now = store::now_millis();
    for chunk in rows.chunks(64) {
        let values: Vec<String> = (0..chunk.len())
            .map(|i| {
                let p: Vec<String> = (1..=COLUMNS).map(|c| format!("${}", i * COLUMNS + c)).collect();
                // attempts (0) and state ('queued') are constants between them.
                format!("({}, 0, {}, 'queued', {})", p[..10].join(", "), p[10..12].join(", "), p[12..].join(", "))
            })
            .collect();
        let sql = format!(
            "INSERT INTO jobs (id, tenant_id, instance_id, service, kind, payload, job_version, enqueued_by, run_at, \
             priority, attempts, max_attempts, idempotency_key, state, created_at, trace_parent) VALUES {}",
            values.join(", ")
        );
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
                .bind(now)
                .bind(job.trace_parent.as_deref());
        }
        query.execute(&mut **tx).await.context("failed to queue jobs")?;
    }
    Ok(())
}

/// The door guests queue jobs through: checked against the manifest of the
/// version enqueueing, then queued as the tenant's.
impl crate::runtime::JobQueue for Queue {
    fn enqueue(&self, job: crate::runtime::JobRequest) -> crate::runtime::Enqueueing<'_> {
        Box::pin(async move {
            let version = &job.version;
            if !version.accepts(&job.kind, job.job_version) {
                return Err(JobError::NotDeclared {
                    service: version.service().to_string(),
                    version: version.version().to_string(),
                    kind: job.kind,
                    job_version: job.job_version,
                }
                .to_string());
            }
            let new = NewJob {
                tenant: job.tenant.to_string(),
                instance: job.instance.to_string(),
                service: version.service().to_string(),
                kind: job.kind,
                payload: job.payload,
                job_version: job.job_version,
                enqueued_by: version.version().to_string(),
                delay: job.delay,
                idempotency_key: job.idempotency_key,
                priority: job.priority,
                max_attempts: job.max_attempts,
                trace_parent: job.trace_parent,
            };
            self.enqueue_for_tenant(new).await.map(|enqueued| enqueued.id).map_err(|e| e.to_string())
        })
    }
}
