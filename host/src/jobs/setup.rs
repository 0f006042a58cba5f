//! The instance lifecycle: an instance whose wanted version (the service's
//! active one, or the one it is pinned to) has migrations its database lacks,
//! or that was never seeded, gets a setup job (`wharf.setup`): a worker applies
//! the pending migrations in one transaction of the instance's database,
//! recording each in its `wharf_migrations` table, then runs the version's
//! seeder once. Meanwhile the instance is in maintenance (503, `Retry-After`);
//! every other instance keeps serving. A failed setup leaves the database as it
//! was and the instance on the version set up last, serving, with the error in
//! the API until the job is retried.
//!
//! Setups start when an instance is created, and from [`reconcile`], which
//! every node runs every few seconds and after activations and pin changes: a
//! conditional update of the instance row decides which node queues the job.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use sha2::{Digest, Sha256};

use super::Workers;
use super::{Claimed, Finish, NewJob, Queue, SETUP_KIND};
use crate::configurator::hooks::{self, Hook, SetupStart};
use crate::configurator::setups;
use crate::instancedb::{Call, Dialect, SqlValue};
use crate::registry::LoadedVersion;
use crate::router::{Route, SetupState};
use crate::store::{self, Backend};

/// Where an instance records the migrations it has.
const RECORD_TABLE: &str = "CREATE TABLE IF NOT EXISTS wharf_migrations \
     (name TEXT PRIMARY KEY, checksum TEXT NOT NULL, applied_at BIGINT NOT NULL)";

/// Put `instance` in maintenance and queue its setup to `version` (inside
/// `tx`), unless a setup to that version is already queued or has failed.
/// Returns whether a setup was queued.
pub async fn begin_in(
    tx: &mut sqlx::Transaction<'_, Backend>,
    queue: &Queue,
    instance: &str,
    tenant: &str,
    service: &str,
    version: &str,
) -> anyhow::Result<bool> {
    if !setups::start(tx, instance, version).await? {
        return Ok(false);
    }
    let job = NewJob {
        tenant: tenant.to_string(),
        instance: instance.to_string(),
        service: service.to_string(),
        kind: SETUP_KIND.to_string(),
        payload: serde_json::json!({ "version": version }).to_string().into_bytes(),
        job_version: 1,
        enqueued_by: version.to_string(),
        delay: std::time::Duration::ZERO,
        idempotency_key: None,
        // Ahead of the tenant's other jobs: its instance is down meanwhile.
        priority: 1000,
        // A worker dying is retried; a failed migration is final (the job is
        // dead at once) and waits for a person, the instance serving its
        // previous version meanwhile.
        max_attempts: Some(3),
        trace_parent: None,
    };
    queue.enqueue_in(tx, &job, None).await.map_err(|e| anyhow::anyhow!("{e}"))?;
    Ok(true)
}

impl hooks::SetupQueue for Queue {
    fn begin_in<'a, 'c: 'a>(
        &'a self,
        tx: &'a mut sqlx::Transaction<'c, Backend>,
        setup: SetupStart<'a>,
    ) -> Hook<'a, bool> {
        Box::pin(begin_in(tx, self, setup.instance, setup.tenant, setup.service, setup.version))
    }

    fn wake(&self) {
        self.wake.notify_one();
    }

    fn forget_in<'a, 'c: 'a>(&'a self, tx: &'a mut sqlx::Transaction<'c, Backend>, instance: &'a str) -> Hook<'a, u64> {
        Box::pin(self.forget_instance_in(tx, instance))
    }
}

/// A setup job to `version` about to be retried: its instance goes back to
/// maintenance for that version (once it is set up, the periodic check moves
/// it on to the version it wants, if that is another).
pub async fn retrying(tx: &mut sqlx::Transaction<'_, Backend>, instance: &str, version: &str) -> anyhow::Result<()> {
    setups::restart(tx, instance, version).await?;
    store::bump_generation_for(tx, store::Change::Instance(instance)).await.context("failed to record the change")?;
    Ok(())
}

/// A setup job to `version` cancelled: its instance leaves maintenance, on the
/// version set up last.
pub async fn cancelled(tx: &mut sqlx::Transaction<'_, Backend>, instance: &str, version: &str) -> anyhow::Result<()> {
    abandoned(tx, instance, version, "the setup job was cancelled").await
}

/// A setup to `version` that will not run (cancelled, or its worker kept dying).
pub async fn abandoned(
    tx: &mut sqlx::Transaction<'_, Backend>,
    instance: &str,
    version: &str,
    reason: &str,
) -> anyhow::Result<()> {
    setups::abandon(tx, instance, version, reason).await?;
    store::bump_generation_for(tx, store::Change::Instance(instance)).await.context("failed to record the change")?;
    Ok(())
}

/// An instance as a setup sees it.
#[derive(sqlx::FromRow)]
struct SetupRow {
    id: String,
    tenant_id: String,
    service: String,
    pinned_version: Option<String>,
    applied_migrations: String,
    setup_state: String,
    setup_target: Option<String>,
    seeded_at: Option<i64>,
}

/// Queue the setups instances need: those whose wanted version has migrations
/// their database lacks, or that were never seeded. Returns how many started.
pub async fn reconcile(workers: &Workers) -> anyhow::Result<usize> {
    reconcile_some(workers, Due::All).await
}

/// Which instances [`reconcile_some`] looks at.
#[derive(Debug, Clone, Copy)]
pub enum Due<'a> {
    All,
    /// One instance (a change to it).
    Instance(&'a str),
    /// The instances of one service (an activation).
    Service(&'a str),
}

/// [`reconcile`] for some instances.
pub async fn reconcile_some(workers: &Workers, due: Due<'_>) -> anyhow::Result<usize> {
    let (instance, of_service) = match due {
        Due::All => (None, None),
        Due::Instance(id) => (Some(id), None),
        Due::Service(name) => (None, Some(name)),
    };
    // Only services with a version that has migrations or a seeder can need a
    // setup: the others' instances are not read at all (a platform of many
    // instances of such services pays nothing for this pass).
    let services: Vec<String> = workers
        .registry
        .slots()
        .into_iter()
        .filter(|slot| of_service.is_none_or(|name| slot.name == name))
        .filter(|slot| slot.versions().iter().any(|v| !v.manifest.migrations.is_empty() || v.worker.is_some()))
        .map(|slot| slot.name.clone())
        .collect();
    if services.is_empty() {
        return Ok(0);
    }
    let marks: Vec<String> = (1..=services.len()).map(|i| format!("${i}")).collect();
    let mut filter = format!(" AND service IN ({})", marks.join(", "));
    if instance.is_some() {
        filter.push_str(&format!(" AND id = ${}", services.len() + 1));
    }
    let sql = format!(
        "SELECT id, tenant_id, service, pinned_version, applied_migrations, setup_state, setup_target, seeded_at \
         FROM instances WHERE enabled AND deleted_at IS NULL{filter}"
    );
    let mut query = sqlx::query_as::<_, SetupRow>(&sql);
    for service in &services {
        query = query.bind(service);
    }
    if let Some(id) = instance {
        query = query.bind(id);
    }
    let rows = query.fetch_all(&workers.db).await.context("failed to read instances")?;
    let mut started = Vec::new();
    for row in rows {
        let SetupRow {
            id,
            tenant_id: tenant,
            service,
            pinned_version,
            applied_migrations,
            setup_state,
            setup_target,
            seeded_at,
        } = row;
        let Some(slot) = workers.registry.slot(&service) else { continue };
        let wanted = match &pinned_version {
            Some(version) => slot.version(version),
            None => slot.active(),
        };
        let Some(wanted) = wanted else { continue };
        let applied: Vec<String> = serde_json::from_str(&applied_migrations).unwrap_or_default();
        if !wanted.needs_setup(&applied, seeded_at.is_some()) {
            continue;
        }
        let state = SetupState::parse(&setup_state);
        if state != SetupState::Ready && setup_target.as_deref() == Some(wanted.version.as_str()) {
            continue;
        }
        let mut tx = crate::store::begin(&workers.db).await.context("failed to begin transaction")?;
        if begin_in(&mut tx, &workers.queue, &id, &tenant, &service, &wanted.version).await? {
            store::commit_change_for(tx, &workers.seen, store::Change::Instance(&id), || async { anyhow::Ok(()) })
                .await
                .context("failed to commit the setup")?;
            workers.queue.wake.notify_one();
            tracing::info!(instance = %id, version = %wanted.version, "instance setup queued");
            started.push(store::Changed::Instance(id));
        }
    }
    if !started.is_empty() {
        workers.configurator.apply_changes(&started).await.map_err(|e| anyhow::anyhow!("{e}"))?;
    }
    Ok(started.len())
}

/// Run a setup job: migrations, then the seeder; the instance leaves
/// maintenance either way (on the new version, or on its previous one).
pub async fn run(workers: &Workers, job: &Claimed) -> Finish {
    let target = serde_json::from_slice::<serde_json::Value>(&job.payload)
        .ok()
        .and_then(|v| v.get("version").and_then(|v| v.as_str()).map(str::to_string));
    let Some(target) = target else {
        return Finish::Dead { error: "the setup job names no version".into() };
    };
    let route = match super::worker::route_of(workers, &job.instance_id).await {
        Ok(route) => route,
        Err(finish) => return finish,
    };
    let outcome = apply(workers, job, &route, &target).await;
    match finish(workers, job, &target, &outcome).await {
        Ok(()) => return Finish::Recorded,
        Err(e) => tracing::warn!(instance = %job.instance_id, "failed to record the setup's outcome: {e:#}"),
    }
    match outcome {
        Ok(_) => Finish::Succeeded { ran_version: target },
        // Final: nothing was applied, and running it again would fail the same way.
        Err(Failure { error, .. }) => Finish::Dead { error },
    }
}

struct Failure {
    error: String,
    /// Migrations the database has (unchanged by the failure).
    applied: Option<Vec<String>>,
}

impl Failure {
    fn new(error: impl Into<String>) -> Self {
        Self { error: error.into(), applied: None }
    }
}

/// What a successful setup leaves: the migrations applied, and whether it seeded.
struct Done {
    applied: Vec<String>,
    seeded: bool,
}

async fn apply(workers: &Workers, job: &Claimed, route: &Arc<Route>, target: &str) -> Result<Done, Failure> {
    let version = workers
        .registry
        .slot(&job.service)
        .and_then(|slot| slot.version(target))
        .ok_or_else(|| Failure::new(format!("{} {target} is not loaded", job.service)))?;
    let db = &route.db;
    let deadline = Instant::now() + workers.queue.config.timeout;
    let call = Call::migration(deadline);
    let applied = if version.manifest.migrations.is_empty() { Vec::new() } else { recorded(db, &call).await? };
    let known: Vec<String> = applied.iter().map(|(name, _)| name.clone()).collect();
    let pending = Pending::of(&version, db.dialect(), &applied)
        .map_err(|error| Failure { error, applied: Some(known.clone()) })?;
    if !pending.statements.is_empty() {
        let names = pending.names.clone();
        if let Err(error) = pending.run(db, &call, workers.queue.config.timeout).await {
            return Err(Failure { error, applied: Some(known) });
        }
        tracing::info!(instance = %job.instance_id, version = target, migrations = ?names, "migrations applied");
    }
    let mut all: Vec<String> = version.manifest.migrations.iter().map(|m| m.name.clone()).collect();
    all.extend(known.into_iter().filter(|n| !version.manifest.declares_migration(n)));
    let seeded = seed(workers, job, route, &version, deadline)
        .await
        .map_err(|error| Failure { error, applied: Some(all.clone()) })?;
    Ok(Done { applied: all, seeded })
}

/// The migrations an instance's database records, (name, checksum) in the
/// order they were applied (the record table made if missing).
async fn recorded(db: &crate::instancedb::InstanceDb, call: &Call) -> Result<Vec<(String, String)>, Failure> {
    db.execute(RECORD_TABLE.to_string(), Vec::new(), call)
        .await
        .map_err(|e| Failure::new(format!("cannot record migrations in the instance database: {e}")))?;
    let rows = db
        .query("SELECT name, checksum FROM wharf_migrations ORDER BY applied_at, name".to_string(), Vec::new(), call)
        .await
        .map_err(|e| Failure::new(format!("cannot read the instance's migrations: {e}")))?;
    Ok(rows
        .rows
        .into_iter()
        .filter_map(|row| match row.as_slice() {
            [SqlValue::Text(name), SqlValue::Text(checksum)] => Some((name.clone(), checksum.clone())),
            _ => None,
        })
        .collect())
}

/// The migrations a version has that an instance lacks, as one batch: each
/// one's statements, then its record.
struct Pending<'v> {
    statements: Vec<(String, Vec<SqlValue>)>,
    /// Which migration each statement belongs to, for the error.
    owners: Vec<&'v str>,
    names: Vec<String>,
}

impl<'v> Pending<'v> {
    /// What `version` would apply to a database at `applied`; refused when a
    /// migration applied before was changed since.
    fn of(version: &'v LoadedVersion, dialect: Dialect, applied: &[(String, String)]) -> Result<Self, String> {
        let dialect = match dialect {
            Dialect::Postgres => crate::registry::SqlDialect::Postgres,
            Dialect::Sqlite => crate::registry::SqlDialect::Sqlite,
        };
        let mut pending = Pending { statements: Vec::new(), owners: Vec::new(), names: Vec::new() };
        for migration in &version.manifest.migrations {
            let sql = migration.sql(dialect).unwrap_or_default();
            let checksum = hex::encode(Sha256::digest(sql.as_bytes()));
            match applied.iter().find(|(n, _)| *n == migration.name) {
                Some((_, recorded)) if *recorded == checksum => continue,
                Some(_) => {
                    return Err(format!(
                        "migration {:?} was changed after it was applied to this instance; migrations are \
                         append-only: restore it and add a new migration",
                        migration.name
                    ))
                }
                None => {}
            }
            for statement in crate::instancedb::sqltext::split_statements(sql) {
                pending.statements.push((statement, Vec::new()));
                pending.owners.push(&migration.name);
            }
            pending.statements.push((
                "INSERT INTO wharf_migrations (name, checksum, applied_at) VALUES (?1, ?2, ?3)".to_string(),
                vec![
                    SqlValue::Text(migration.name.clone()),
                    SqlValue::Text(checksum),
                    SqlValue::Integer(store::now_millis()),
                ],
            ));
            pending.owners.push(&migration.name);
            pending.names.push(migration.name.clone());
        }
        Ok(pending)
    }

    /// Apply them in one transaction (within `call`, the setup job's `timeout`);
    /// the error names the migration that failed.
    async fn run(self, db: &crate::instancedb::InstanceDb, call: &Call, timeout: Duration) -> Result<(), String> {
        let owners = self.owners;
        db.batch(self.statements, call).await.map(drop).map_err(|e| {
            // A statement stopped at the setup's deadline reports the limit of a
            // guest's statement; say which limit stopped it.
            let e = if e.contains("ran longer than") && Instant::now() + Duration::from_millis(250) >= call.deadline {
                format!(
                    "the migrations ran past the setup job's deadline of {} s (wharf serve --job-timeout)",
                    timeout.as_secs()
                )
            } else {
                e
            };
            let owner = e
                .strip_prefix("statement ")
                .and_then(|rest| rest.split(':').next())
                .and_then(|n| n.parse::<usize>().ok())
                .and_then(|n| owners.get(n.wrapping_sub(1)));
            match owner {
                Some(name) => format!("migration {name:?} failed, so none was applied: {e}"),
                None => format!("the migrations failed, so none was applied: {e}"),
            }
        })
    }
}

/// Run the version's seeder, once per instance (it never ran there before);
/// whether it ran.
async fn seed(
    workers: &Workers,
    job: &Claimed,
    route: &Arc<Route>,
    version: &Arc<LoadedVersion>,
    deadline: Instant,
) -> Result<bool, String> {
    let seeded: Option<(Option<i64>,)> = sqlx::query_as("SELECT seeded_at FROM instances WHERE id = $1")
        .bind(&job.instance_id)
        .fetch_optional(&workers.db)
        .await
        .map_err(|e| format!("cannot read the instance: {e}"))?;
    let (Some((None,)), Some(worker)) = (seeded, version.worker.clone()) else { return Ok(false) };
    // The seeder is guest code: on the job threads, like any job.
    let (runtime, who, context) =
        (workers.runtime.clone(), super::worker::identity(route), super::worker::context(route, version));
    let (fuel, left) = (workers.queue.config.fuel, deadline.saturating_duration_since(Instant::now()));
    let outcome = workers
        .runtime
        .spawn_job(
            async move { runtime.run_job(&worker, who, context, crate::runtime::JobCall::Seed, fuel, left).await },
        )
        .await
        .unwrap_or_else(|e| crate::runtime::JobOutcome {
            fuel: 0,
            result: Err(format!("the seeder's task failed: {e}")),
        });
    route.usage().record_job(outcome.fuel, outcome.result.is_err());
    outcome.result.map_err(|e| format!("the seeder failed: {e}"))?;
    Ok(true)
}

/// Record the setup's outcome on the instance and on its job, in one
/// transaction (whoever reads one reads the other), and re-route it everywhere.
async fn finish(workers: &Workers, job: &Claimed, target: &str, outcome: &Result<Done, Failure>) -> anyhow::Result<()> {
    let instance = job.instance_id.as_str();
    let mut tx = crate::store::begin(&workers.db).await.context("failed to begin transaction")?;
    match outcome {
        Ok(done) => {
            setups::succeed(&mut tx, instance, target, &done.applied, done.seeded).await?;
            // A succeeded job's payload is dropped; it stops counting.
            let done = sqlx::query(
                "UPDATE jobs SET state = 'succeeded', ran_version = $1, lease_owner = NULL, lease_until = NULL, \
                 finished_at = $2, payload = $3 WHERE id = $4 AND fence = $5 AND state = 'running'",
            )
            .bind(target)
            .bind(store::now_millis())
            .bind(Vec::<u8>::new())
            .bind(&job.id)
            .bind(job.fence)
            .execute(&mut *tx)
            .await
            .context("failed to record the setup job")?;
            if done.rows_affected() == 1 {
                sqlx::query("UPDATE job_tenants SET pending = pending - 1, bytes = bytes - $1 WHERE tenant_id = $2")
                    .bind(job.payload.len() as i64)
                    .bind(&job.tenant_id)
                    .execute(&mut *tx)
                    .await
                    .context("failed to count the setup job")?;
            }
        }
        Err(failure) => {
            let error = super::truncate(&failure.error, 2000);
            setups::fail(&mut tx, instance, target, &error, failure.applied.as_deref()).await?;
            // Final: nothing was applied, and running it again would fail the
            // same way (a dead job still counts against its tenant's quota).
            sqlx::query(
                "UPDATE jobs SET state = 'dead', last_error = $1, lease_owner = NULL, lease_until = NULL, \
                 finished_at = $2 WHERE id = $3 AND fence = $4 AND state = 'running'",
            )
            .bind(super::truncate(&failure.error, 4000))
            .bind(store::now_millis())
            .bind(&job.id)
            .bind(job.fence)
            .execute(&mut *tx)
            .await
            .context("failed to record the setup job")?;
            tracing::warn!(%instance, version = target, "instance setup failed: {}", failure.error);
        }
    }
    store::commit_change_for(tx, &workers.seen, store::Change::Instance(instance), || async {
        let changed = [store::Changed::Instance(instance.to_string())];
        workers.configurator.apply_changes(&changed).await.map_err(|e| anyhow::anyhow!("{e}"))
    })
    .await
    .context("failed to commit the setup's outcome")?;
    Ok(())
}
