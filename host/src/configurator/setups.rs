//! The setup columns of `instances` — state, target, error, applied
//! migrations, settled version, seeding — written here only: the configurator
//! owns the table, and instance setups (the jobs room) record their progress
//! through these functions, inside the transaction that also records the job.

use anyhow::Context as _;

use crate::store::Backend;

type Tx<'a, 'c> = &'a mut sqlx::Transaction<'c, Backend>;

/// Put `instance` in maintenance for a setup to `version`, unless a setup to
/// that version is already under way or has failed. Returns whether it was.
pub async fn start(tx: Tx<'_, '_>, instance: &str, version: &str) -> anyhow::Result<bool> {
    let started = sqlx::query(
        "UPDATE instances SET setup_state = 'migrating', setup_target = $1, setup_error = NULL \
         WHERE id = $2 AND NOT (COALESCE(setup_target, '') = $1 AND setup_state IN ('migrating', 'failed'))",
    )
    .bind(version)
    .bind(instance)
    .execute(&mut **tx)
    .await
    .context("failed to start the instance's setup")?
    .rows_affected();
    Ok(started > 0)
}

/// A setup to `version` about to run again: back to maintenance for it.
pub async fn restart(tx: Tx<'_, '_>, instance: &str, version: &str) -> anyhow::Result<()> {
    sqlx::query("UPDATE instances SET setup_state = 'migrating', setup_target = $1, setup_error = NULL WHERE id = $2")
        .bind(version)
        .bind(instance)
        .execute(&mut **tx)
        .await
        .context("failed to restart the instance's setup")?;
    Ok(())
}

/// A setup to `version` that will not run: the instance leaves maintenance, on
/// the version set up last, with `reason`.
pub async fn abandon(tx: Tx<'_, '_>, instance: &str, version: &str, reason: &str) -> anyhow::Result<()> {
    sqlx::query(
        "UPDATE instances SET setup_state = 'failed', setup_error = $1 \
         WHERE id = $2 AND setup_target = $3 AND setup_state = 'migrating'",
    )
    .bind(reason)
    .bind(instance)
    .bind(version)
    .execute(&mut **tx)
    .await
    .context("failed to stop the instance's setup")?;
    Ok(())
}

/// An imported instance: set up to `version` already (its database, loaded
/// from the export, has `applied`), seeded if the exported one was.
pub async fn preset(
    tx: Tx<'_, '_>,
    instance: &str,
    version: &str,
    applied: &[String],
    seeded: bool,
) -> anyhow::Result<()> {
    sqlx::query("UPDATE instances SET setup_target = $1 WHERE id = $2")
        .bind(version)
        .bind(instance)
        .execute(&mut **tx)
        .await
        .context("failed to record the imported setup")?;
    succeed(tx, instance, version, applied, seeded).await
}

/// The setup to `target` succeeded: `applied` are the database's migrations,
/// and `seeded` says whether the seeder ran now.
pub async fn succeed(
    tx: Tx<'_, '_>,
    instance: &str,
    target: &str,
    applied: &[String],
    seeded: bool,
) -> anyhow::Result<()> {
    sqlx::query(
        "UPDATE instances SET setup_state = 'ready', setup_error = NULL, settled_version = $1, \
         applied_migrations = $2, seeded_at = CASE WHEN $3 = 1 THEN $4 ELSE seeded_at END \
         WHERE id = $5 AND setup_target = $1",
    )
    .bind(target)
    .bind(serde_json::to_string(applied).unwrap_or_else(|_| "[]".into()))
    .bind(i64::from(seeded))
    .bind(crate::store::now())
    .bind(instance)
    .execute(&mut **tx)
    .await
    .context("failed to record the setup")?;
    Ok(())
}

/// The setup to `target` failed with `error`; `applied`, when known, are the
/// migrations the database has (unchanged by the failed setup).
pub async fn fail(
    tx: Tx<'_, '_>,
    instance: &str,
    target: &str,
    error: &str,
    applied: Option<&[String]>,
) -> anyhow::Result<()> {
    sqlx::query(
        "UPDATE instances SET setup_state = 'failed', setup_error = $1, \
         applied_migrations = COALESCE($2, applied_migrations) WHERE id = $3 AND setup_target = $4",
    )
    .bind(error)
    .bind(applied.and_then(|a| serde_json::to_string(a).ok()))
    .bind(instance)
    .bind(target)
    .execute(&mut **tx)
    .await
    .context("failed to record the setup's failure")?;
    Ok(())
}
