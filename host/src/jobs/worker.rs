//! The workers of one node: claim ready jobs while slots are free, run each on
//! the version that accepts it, record outcomes in batches. Every second the
//! node also takes back jobs whose worker died (expired leases); every few
//! seconds it queues the instance setups that are due.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, watch, Notify, Semaphore};
use tracing::Instrument;

use super::Workers;
use super::{Claimed, Finish, SETUP_KIND};
use crate::registry::LoadedVersion;
use crate::router::{Route, Serving};
use crate::runtime::{GuestContext, GuestJob, JobCall, JobsContext, RequestIdentity};

/// How often expired leases are looked for.
const REAP_EVERY: Duration = Duration::from_secs(1);
/// How often due setups are looked for.
const RECONCILE_EVERY: Duration = Duration::from_secs(2);
/// How often finished jobs past their retention are deleted.
const PURGE_EVERY: Duration = Duration::from_secs(600);

/// Run this node's workers until `stop` is set, then wait (up to `grace`) for
/// the jobs in flight.
pub async fn run(workers: Arc<Workers>, mut stop: watch::Receiver<bool>, grace: Duration) {
    let concurrency = workers.queue.config.concurrency;
    let slots = Arc::new(Semaphore::new(concurrency));
    let freed = Arc::new(Notify::new());
    let (done, outcomes) = mpsc::unbounded_channel();
    let recorder = tokio::spawn(record(workers.clone(), outcomes));
    let mut chores = Chores::new();
    // Whether the last claim took all it asked for (more jobs are ready).
    let mut backlog = false;
    let refill = (concurrency.min(super::CLAIM_BATCH) / 2).max(1);
    loop {
        if *stop.borrow() {
            break;
        }
        chores.run_due(&workers).await;
        let mut free = if concurrency == 0 { 0 } else { slots.available_permits() };
        // While the queue has more than the workers take, claim in batches:
        // wait for half the slots (or a quiet moment) rather than claiming
        // each slot as it frees.
        if backlog && free < refill {
            tokio::select! {
                _ = stop.changed() => {}
                _ = freed.notified() => {}
                _ = tokio::time::sleep(Duration::from_millis(20)) => {}
            }
            free = slots.available_permits();
            if free < refill && !*stop.borrow() && free < concurrency {
                continue;
            }
        }
        let claimed = if free > 0 {
            match workers.queue.claim(free).await {
                Ok(claimed) => claimed,
                Err(e) => {
                    tracing::warn!("failed to claim jobs: {e:#}");
                    Vec::new()
                }
            }
        } else {
            Vec::new()
        };
        let full = !claimed.is_empty() && claimed.len() == free.min(super::CLAIM_BATCH);
        backlog = full;
        for job in claimed {
            let Ok(permit) = slots.clone().acquire_owned().await else { break };
            start(&workers, job, permit, done.clone(), freed.clone());
        }
        if full {
            // More may be ready: claim again at once, and wake the other nodes.
            workers.queue.tell_backlog().await;
            continue;
        }
        // The node running the passes (or the only node) looks often; the
        // others are woken by a backlog, and look now and then.
        let config = &workers.queue.config;
        let fleet = crate::store::dialect(&workers.db) == crate::store::Dialect::Postgres;
        let poll = if fleet && !workers.lease.was_held() { config.fleet_poll } else { config.poll };
        tokio::select! {
            _ = stop.changed() => {}
            _ = workers.queue.wake.notified() => {}
            _ = freed.notified(), if free == 0 => {}
            _ = tokio::time::sleep(poll) => {}
        }
    }
    // Jobs in flight finish (their outcomes recorded); one that outlives the
    // grace is left to its lease and runs again elsewhere.
    let all = u32::try_from(concurrency).unwrap_or(u32::MAX);
    if tokio::time::timeout(grace, slots.acquire_many(all)).await.is_err() {
        tracing::warn!("jobs still running at shutdown are left to their leases");
    }
    drop(done);
    let _ = recorder.await;
}

/// What a node's workers do besides running jobs, each every so often: take
/// back expired leases, queue instance setups and scheduled jobs, and delete
/// finished jobs past their retention.
struct Chores {
    reap: Instant,
    reconcile: Instant,
    purge: Instant,
    schedules: Schedules,
}

impl Chores {
    fn new() -> Self {
        let now = Instant::now();
        Self { reap: now - REAP_EVERY, reconcile: now - RECONCILE_EVERY, purge: now, schedules: Schedules::default() }
    }

    /// Do the chores that are due, on the node that holds the lease for them.
    async fn run_due(&mut self, workers: &Workers) {
        if !workers.lease.held().await {
            return;
        }
        if self.reap.elapsed() >= REAP_EVERY {
            self.reap = Instant::now();
            if let Err(e) = workers.queue.reap().await {
                tracing::warn!("failed to take back expired jobs: {e:#}");
            }
        }
        if self.reconcile.elapsed() >= RECONCILE_EVERY {
            self.reconcile = Instant::now();
            if let Err(e) = super::setup::reconcile(workers).await {
                tracing::warn!("failed to queue instance setups: {e:#}");
            }
        }
        self.schedules.queue_due(workers).await;
        if self.purge.elapsed() >= PURGE_EVERY {
            self.purge = Instant::now();
            match workers.queue.purge().await {
                Ok(0) => {}
                Ok(n) => tracing::info!(jobs = n, "deleted finished jobs past their retention"),
                Err(e) => tracing::warn!("{e:#}"),
            }
        }
    }
}

/// Run a claimed job in its slot (`permit`); its outcome goes to `done`.
fn start(
    workers: &Arc<Workers>,
    job: Claimed,
    permit: tokio::sync::OwnedSemaphorePermit,
    done: mpsc::UnboundedSender<(Claimed, Finish)>,
    freed: Arc<Notify>,
) {
    let runner = workers.clone();
    let setup = job.kind == SETUP_KIND;
    // Queued by a request (or job) whose trace was kept: this run continues
    // that trace. Otherwise a trace of its own, kept at the configured ratio.
    let continues = job.trace_parent.as_deref().filter(|_| crate::telemetry::exporting());
    let span = if continues.is_some() || crate::telemetry::sample() {
        crate::telemetry::trace_span!(
            parent: None,
            "job",
            otel.kind = "consumer",
            wharf.job = %job.id,
            wharf.kind = %job.kind,
            wharf.attempt = job.attempts,
            wharf.tenant = %job.tenant_id,
            wharf.instance = %job.instance_id,
            wharf.service = %job.service,
            wharf.version = tracing::field::Empty,
            wharf.outcome = tracing::field::Empty,
            otel.status_code = tracing::field::Empty,
        )
    } else {
        tracing::Span::none()
    };
    if let Some(parent) = continues {
        crate::telemetry::continue_trace(&span, parent);
    }
    let work = async move {
        let finish = run_one(&runner, &job).instrument(span.clone()).await;
        let (outcome, version) = match &finish {
            Finish::Succeeded { ran_version } => ("succeeded", Some(ran_version)),
            Finish::Failed { ran_version, .. } => ("failed", ran_version.as_ref()),
            Finish::Deferred { .. } => ("deferred", None),
            Finish::Dead { .. } => ("dead", None),
            Finish::Recorded => ("recorded", None),
        };
        span.record("wharf.outcome", outcome);
        if let Some(version) = version {
            span.record("wharf.version", version.as_str());
        }
        if matches!(finish, Finish::Failed { .. } | Finish::Dead { .. }) {
            span.record("otel.status_code", "error");
        }
        drop(span);
        let _ = done.send((job, finish));
        drop(permit);
        freed.notify_one();
    };
    // Guests' jobs run on the job threads from start to end (no hand-off per
    // job); setups take locks that requests wait on, so they stay here.
    if setup {
        tokio::spawn(work);
    } else {
        workers.runtime.spawn_job(work);
    }
}

/// Jobs declared with `every`: each instance's job of each period is queued
/// once, under an idempotency key naming the period, so any number of nodes
/// (and restarts) queue it once.
#[derive(Default)]
struct Schedules {
    /// The period last queued per (instance, kind).
    queued: std::collections::HashMap<(String, String), i64>,
    last_check: Option<Instant>,
}

impl Schedules {
    async fn queue_due(&mut self, workers: &Workers) {
        if self.last_check.is_some_and(|at| at.elapsed() < Duration::from_millis(500)) {
            return;
        }
        self.last_check = Some(Instant::now());
        let now = crate::store::now_millis();
        let router = &workers.router;
        self.queued.retain(|(instance, _), _| router.instance(instance).is_some());
        let parts = router.instance_parts();
        for route in parts.iter().flat_map(|part| part.values()) {
            if !route.enabled {
                continue;
            }
            let Serving::Version(version) = route.serving() else { continue };
            for job in &version.manifest.jobs {
                let Some(period) = job.period() else { continue };
                let slot = now / period.as_millis().max(1) as i64;
                let key = (route.instance.to_string(), job.kind.clone());
                if self.queued.get(&key) == Some(&slot) {
                    continue;
                }
                let new = super::NewJob {
                    tenant: route.tenant.to_string(),
                    instance: route.instance.to_string(),
                    service: version.service.clone(),
                    kind: job.kind.clone(),
                    payload: Vec::new(),
                    job_version: job.versions.iter().copied().max().unwrap_or(1),
                    enqueued_by: version.version.clone(),
                    delay: Duration::ZERO,
                    idempotency_key: Some(format!("wharf.every:{}:{slot}", job.kind)),
                    priority: 0,
                    max_attempts: None,
                    trace_parent: None,
                };
                match workers.queue.enqueue_for_tenant(new).await {
                    Ok(_) => {}
                    Err(super::JobError::Internal(e)) => {
                        tracing::warn!(instance = %route.instance, kind = %job.kind, "failed to queue a scheduled job: {e:#}");
                        continue;
                    }
                    // Over its quota: this period is skipped.
                    Err(e) => {
                        tracing::debug!(instance = %route.instance, kind = %job.kind, "scheduled job not queued: {e}")
                    }
                }
                self.queued.insert(key, slot);
            }
        }
    }
}

/// Write outcomes as they arrive, all those waiting in one transaction.
async fn record(workers: Arc<Workers>, mut outcomes: mpsc::UnboundedReceiver<(Claimed, Finish)>) {
    let mut batch = Vec::new();
    while let Some(first) = outcomes.recv().await {
        batch.push(first);
        while batch.len() < 256 {
            match outcomes.try_recv() {
                Ok(next) => batch.push(next),
                Err(_) => break,
            }
        }
        // A failed write is retried: the jobs stay leased meanwhile.
        for attempt in 0..5 {
            match workers.queue.finish(&batch).await {
                Ok(()) => break,
                Err(e) => {
                    tracing::warn!(attempt, "failed to record job outcomes: {e:#}");
                    tokio::time::sleep(Duration::from_millis(200 << attempt)).await;
                }
            }
        }
        batch.clear();
    }
}

async fn run_one(workers: &Workers, job: &Claimed) -> Finish {
    if job.kind == SETUP_KIND {
        return super::setup::run(workers, job).await;
    }
    let route = match route_of(workers, &job.instance_id).await {
        Ok(route) => route,
        Err(finish) => return finish,
    };
    if !route.enabled {
        return Finish::Deferred { after: Duration::from_secs(30), reason: "its instance is disabled".into() };
    }
    let current = match route.serving() {
        Serving::Version(version) => version,
        Serving::Maintenance => {
            return Finish::Deferred { after: Duration::from_secs(2), reason: "its instance is being set up".into() }
        }
        Serving::Nothing => {
            return Finish::Deferred {
                after: Duration::from_secs(5),
                reason: "the service has no active version".into(),
            }
        }
    };
    let version = match pick_version(workers, job, &route, current) {
        Ok(version) => version,
        Err(Unrunnable::Hold(reason)) => return Finish::Deferred { after: Duration::from_secs(30), reason },
        Err(Unrunnable::Never(error)) => return Finish::Dead { error },
    };
    let Some(worker) = &version.worker else {
        return Finish::Dead { error: format!("{} {} exports no worker", version.service, version.version) };
    };
    let call = JobCall::Run(GuestJob {
        id: job.id.clone(),
        kind: job.kind.clone(),
        version: u32::try_from(job.job_version).unwrap_or(0),
        payload: job.payload.clone(),
        attempt: u32::try_from(job.attempts).unwrap_or(u32::MAX),
        enqueued_by: job.enqueued_by.clone(),
    });
    let config = &workers.queue.config;
    let outcome = workers
        .runtime
        .run_job(worker, identity(&route), context(&route, &version), call, config.fuel, config.timeout)
        .await;
    route.usage().record_job(outcome.fuel, outcome.result.is_err());
    match outcome.result {
        Ok(()) => Finish::Succeeded { ran_version: version.version.clone() },
        Err(error) => {
            tracing::debug!(job = %job.id, kind = %job.kind, attempt = job.attempts, "job failed: {error}");
            Finish::Failed { error, ran_version: Some(version.version.clone()) }
        }
    }
}

/// The route of a job's instance. One this node has not routed yet (created an
/// instant ago, or through another node) waits for it; one that is gone ends
/// its jobs.
pub(crate) async fn route_of(workers: &Workers, instance: &str) -> Result<Arc<Route>, Finish> {
    if let Some(route) = workers.router.instance(instance) {
        return Ok(route);
    }
    let exists: Result<Option<(Option<i64>, Option<i64>)>, _> =
        sqlx::query_as("SELECT deleted_at, purged_at FROM instances WHERE id = $1")
            .bind(instance)
            .fetch_optional(&workers.db)
            .await;
    match exists {
        // (A job a request still in flight queued as its instance was purged.)
        Ok(None | Some((_, Some(_)))) => Err(Finish::Dead { error: "its instance no longer exists".into() }),
        // Held while it may be restored; deleted with it when it is purged.
        Ok(Some((Some(_), None))) => {
            Err(Finish::Deferred { after: Duration::from_secs(60), reason: "its instance is deleted".into() })
        }
        _ => Err(Finish::Deferred {
            after: Duration::from_millis(200),
            reason: "its instance is not routed on this node yet".into(),
        }),
    }
}

/// Why a job cannot run now.
enum Unrunnable {
    /// Not yet: the version that accepts it needs a schema the instance does
    /// not have yet (its setup is under way, or failed and waits for a retry).
    Hold(String),
    /// Never: no version accepts it.
    Never(String),
}

/// The version a job runs on: the one its instance runs now if it accepts the
/// job's version, else the one that enqueued it — but only on the schema that
/// version was set up for: code never runs against migrations it did not see.
fn pick_version(
    workers: &Workers,
    job: &Claimed,
    route: &Route,
    current: Arc<LoadedVersion>,
) -> Result<Arc<LoadedVersion>, Unrunnable> {
    let job_version = u32::try_from(job.job_version).unwrap_or(0);
    if current.service == job.service && current.manifest.accepts(&job.kind, job_version) {
        return Ok(current);
    }
    let enqueuer = workers.registry.slot(&job.service).and_then(|slot| slot.version(&job.enqueued_by));
    match enqueuer {
        Some(enqueuer) if enqueuer.manifest.accepts(&job.kind, job_version) => {
            let missing: Vec<&str> = enqueuer
                .manifest
                .migrations
                .iter()
                .map(|m| m.name.as_str())
                .filter(|m| !route.setup.applied.iter().any(|a| a == m))
                .collect();
            if missing.is_empty() {
                Ok(enqueuer)
            } else {
                Err(Unrunnable::Hold(format!(
                    "{} {} accepts it, but the instance's database lacks its migrations ({}); it runs once the \
                     instance is set up for that version",
                    job.service,
                    enqueuer.version,
                    missing.join(", ")
                )))
            }
        }
        _ => Err(Unrunnable::Never(format!(
            "no loaded version of {} accepts job {:?} version {job_version}: the instance runs {}, and {} (which \
             enqueued it) is not loaded or does not accept it",
            job.service, job.kind, current.version, job.enqueued_by
        ))),
    }
}

/// Who a job runs as, for logs and the memory budget.
pub(crate) fn identity(route: &Route) -> RequestIdentity {
    let request_id = u64::from_le_bytes(uuid::Uuid::new_v4().as_bytes()[..8].try_into().unwrap_or([0; 8]));
    // Within the job's span (see `run_attempt`).
    let span = crate::telemetry::child_span!("guest", wharf.fuel = tracing::field::Empty);
    RequestIdentity::new(route.tenant.clone(), route.instance.clone(), request_id).traced(span)
}

/// What a job's guest sees: its instance's configuration and databases, no
/// caller, and the queue (a job may queue more).
pub(crate) fn context(route: &Route, version: &Arc<LoadedVersion>) -> GuestContext {
    GuestContext {
        caller: None,
        features: route.features.clone(),
        db: Some(route.db.clone()),
        jobs: route.jobs.as_ref().map(|door| JobsContext { instance: door.clone(), version: version.clone() }),
    }
}
