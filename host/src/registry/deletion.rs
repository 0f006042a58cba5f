//! Deleting a service version: refused, naming why, while anything may still
//! need it — it is active, the version a rollback returns to, staged for a
//! promotion, pinned or run by an instance (or its setup), or named by a job
//! that may still run. Otherwise its record and (when no other version has
//! the same bytes) its component leave the control plane, and its compiled
//! artifact and component leave this node at once and every other node at its
//! next catch-up.

use super::*;

impl Registry {
    /// Delete `version` of `service` (an operator's decision, checked by the caller).
    pub async fn delete_version(&self, service: &str, version: &str) -> Result<VersionInfo, RegistryError> {
        let _publishing = self.publish_lock.lock().await;
        let _activating = self.activate_lock.lock().await;
        let Some(row) = self.find_version(service, version).await? else {
            return Err(self.unknown_version(service, version).await);
        };
        let mut tx = crate::store::begin(&self.db).await.context("failed to begin transaction")?;
        store::lock_row(&mut tx, "services", "name", service).await.context("failed to lock the service")?;
        if let Some(reason) = in_use(&mut tx, service, version).await? {
            return Err(RegistryError::InUse { service: service.to_string(), version: version.to_string(), reason });
        }
        sqlx::query("DELETE FROM service_versions WHERE service = $1 AND version = $2")
            .bind(service)
            .bind(version)
            .execute(&mut *tx)
            .await
            .context("failed to delete the version")?;
        let (shared,): (i64,) = sqlx::query_as("SELECT COUNT(*) FROM service_versions WHERE sha256 = $1")
            .bind(&row.sha256)
            .fetch_one(&mut *tx)
            .await
            .context("failed to read the versions of the component")?;
        if shared == 0 && store::dialect(&self.db) == store::Dialect::Postgres {
            sqlx::query("DELETE FROM component_blobs WHERE sha256 = $1")
                .bind(&row.sha256)
                .execute(&mut *tx)
                .await
                .context("failed to delete the component")?;
        }
        store::commit_change_for(tx, &self.seen, store::Change::Service(service), || async {
            self.forget(service, version, (shared == 0).then_some(row.sha256.as_str()));
            anyhow::Ok(())
        })
        .await
        .context("failed to commit the deletion")?;
        tracing::info!(%service, %version, sha256 = %row.sha256, "version deleted");
        Ok(row.info())
    }

    /// Drop `version` from this node; with `sha256` (no version has its bytes
    /// any more), its component and compiled artifact leave the disk.
    pub(super) fn forget(&self, service: &str, version: &str, sha256: Option<&str>) {
        if let Some(slot) = self.slot(service) {
            slot.versions.remove(version);
        }
        let key = (service.to_string(), version.to_string());
        self.unloaded.remove(&key);
        self.failed.remove(&key);
        if let Some(sha256) = sha256 {
            for path in [self.components_dir.join(format!("{sha256}.wasm")), self.compiled_path(sha256)] {
                match std::fs::remove_file(&path) {
                    Ok(()) => {}
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                    Err(e) => tracing::warn!(path = %path.display(), "failed to remove a deleted version's file: {e}"),
                }
            }
        }
    }

    /// Versions this node holds that the control plane no longer lists (deleted
    /// through another node): forgotten, their files removed. Each is looked up
    /// once more first: a version this node published after `rows` were read is
    /// in its table only once its record is committed.
    /// (`service`: only that service's, `rows` being its versions.)
    pub(super) async fn forget_deleted(&self, rows: &[VersionRow], service: Option<&str>) -> anyhow::Result<()> {
        let listed: std::collections::HashSet<(&str, &str)> =
            rows.iter().map(|r| (r.service.as_str(), r.version.as_str())).collect();
        let kept: std::collections::HashSet<&str> = rows.iter().map(|r| r.sha256.as_str()).collect();
        for slot in self.slots().into_iter().filter(|s| service.is_none_or(|name| s.name == name)) {
            let gone: Vec<(String, String)> = slot
                .versions
                .iter()
                .filter(|v| !listed.contains(&(slot.name.as_str(), v.key().as_str())))
                .map(|v| (v.key().clone(), v.sha256.clone()))
                .collect();
            for (version, sha256) in gone {
                let (still,): (i64,) =
                    sqlx::query_as("SELECT COUNT(*) FROM service_versions WHERE service = $1 AND version = $2")
                        .bind(&slot.name)
                        .bind(&version)
                        .fetch_one(&self.db)
                        .await
                        .context("failed to read a version")?;
                if still > 0 {
                    continue;
                }
                tracing::info!(service = %slot.name, %version, "forgetting a version deleted elsewhere");
                // Another service's version may have the same bytes.
                let mut shared = kept.contains(sha256.as_str());
                if !shared && service.is_some() {
                    let (others,): (i64,) = sqlx::query_as("SELECT COUNT(*) FROM service_versions WHERE sha256 = $1")
                        .bind(&sha256)
                        .fetch_one(&self.db)
                        .await
                        .context("failed to read a version")?;
                    shared = others > 0;
                }
                self.forget(&slot.name, &version, (!shared).then_some(sha256.as_str()));
            }
        }
        Ok(())
    }
}

/// Why `version` of `service` may still be needed, if it may.
async fn in_use(
    tx: &mut sqlx::Transaction<'static, store::Backend>,
    service: &str,
    version: &str,
) -> Result<Option<String>, RegistryError> {
    let (active, previous): (Option<String>, Option<String>) =
        sqlx::query_as("SELECT active_version, previous_version FROM services WHERE name = $1")
            .bind(service)
            .fetch_one(&mut **tx)
            .await
            .context("failed to read the service")?;
    if active.as_deref() == Some(version) {
        return Ok(Some("it is the active version: activate or promote another first".into()));
    }
    if previous.as_deref() == Some(version) {
        return Ok(Some(
            "it is the version `wharf rollback` returns to: promote another version first, and this one stops \
             being the previous"
                .into(),
        ));
    }
    let (staged,): (Option<i64>,) =
        sqlx::query_as("SELECT staged_at FROM service_versions WHERE service = $1 AND version = $2")
            .bind(service)
            .bind(version)
            .fetch_one(&mut **tx)
            .await
            .context("failed to read the version")?;
    if staged.is_some() {
        return Ok(Some("it is staged for a promotion: promote it or stage another first".into()));
    }
    let instance: Option<(String,)> = sqlx::query_as(
        "SELECT id FROM instances WHERE service = $1 AND purged_at IS NULL \
         AND (pinned_version = $2 OR settled_version = $2 OR setup_target = $2) ORDER BY id LIMIT 1",
    )
    .bind(service)
    .bind(version)
    .fetch_optional(&mut **tx)
    .await
    .context("failed to read the instances")?;
    if let Some((id,)) = instance {
        return Ok(Some(format!(
            "instance {id} is pinned to it or runs it: move the instance to another version first \
             (wharf instance update {id} --version …)"
        )));
    }
    let (jobs,): (i64,) = sqlx::query_as(
        "SELECT COUNT(*) FROM jobs WHERE service = $1 AND enqueued_by = $2 \
         AND state IN ('queued', 'running', 'failed', 'dead')",
    )
    .bind(service)
    .bind(version)
    .fetch_one(&mut **tx)
    .await
    .context("failed to read the jobs")?;
    if jobs > 0 {
        return Ok(Some(format!(
            "{jobs} unfinished jobs were queued by it and may run on it: let them finish, or cancel them"
        )));
    }
    Ok(None)
}
