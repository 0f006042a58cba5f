//! The end of an instance. Deleted, it leaves every route at once (its custom
//! hostnames are released under the reservation rule, so only its tenant can
//! take them back for a while) and stays restorable for the deletion grace.
//! When the grace ends its data is destroyed — its files, or its PostgreSQL
//! schema and role and its Redis keys, and its jobs — and only its row is
//! kept, for its billing history (its subscription ended when it was deleted).

use super::*;

impl Configurator {
    /// Delete instance `id` (the caller checked who may). With `at_once` (an
    /// operator's), its data is destroyed now instead of after the grace.
    /// Returns the instance as deleted.
    pub async fn delete_instance(&self, id: &str, actor: Actor<'_>, at_once: bool) -> Result<Instance, ConfigError> {
        let guard = self.change_lock.lock().await;
        let current = self.instance(id).await?;
        let now = store::now();
        let purge_at = if at_once { now } else { now.saturating_add(self.deletion_grace.as_secs() as i64) };
        let mut tx = crate::store::begin(&self.db).await.context("failed to begin transaction")?;
        if current.deleted_at.is_none() {
            self.mark_deleted_in(&mut tx, &current.id, &current.tenant, &current.hosts, actor, now, purge_at).await?;
            store::commit_change_for(tx, &self.seen, store::Change::Instance(id), || self.refresh_instance(id)).await?;
            tracing::info!(instance = %id, tenant = %current.tenant, by = %actor.user_id, purge_at, "instance deleted");
        } else if at_once {
            // Deleted before: its grace ends now.
            sqlx::query("UPDATE instances SET purge_at = $1 WHERE id = $2 AND purged_at IS NULL")
                .bind(now)
                .bind(id)
                .execute(&mut *tx)
                .await
                .context("failed to end the instance's grace")?;
            tx.commit().await.context("failed to end the instance's grace")?;
        }
        drop(guard);
        let deleted = self.instance(id).await?;
        self.subscriptions_changed(std::slice::from_ref(&deleted)).await;
        if at_once {
            self.purge(id).await?;
        }
        Ok(deleted)
    }

    /// Take a live instance off its routes within `tx`: marked deleted, its
    /// custom hostnames released under the reservation rule, its claims dropped.
    #[allow(clippy::too_many_arguments)]
    pub(super) async fn mark_deleted_in(
        &self,
        tx: &mut sqlx::Transaction<'_, crate::store::Backend>,
        id: &str,
        tenant: &str,
        hosts: &[String],
        actor: Actor<'_>,
        now: i64,
        purge_at: i64,
    ) -> Result<(), ConfigError> {
        sqlx::query(
            "UPDATE instances SET deleted_at = $1, deleted_by = $2, purge_at = $3, released_hosts = $4 \
             WHERE id = $5 AND deleted_at IS NULL",
        )
        .bind(now)
        .bind(actor.user_id)
        .bind(purge_at)
        .bind(json_text(&hosts))
        .bind(id)
        .execute(&mut **tx)
        .await
        .context("failed to delete the instance")?;
        for host in hosts {
            self.release_host(tx, tenant, host, now).await?;
        }
        sqlx::query("DELETE FROM hostname_claims WHERE instance_id = $1")
            .bind(id)
            .execute(&mut **tx)
            .await
            .context("failed to drop the instance's hostname claims")?;
        Ok(())
    }

    /// Bring back a deleted instance whose data is not destroyed yet: it routes
    /// again, with the custom hostnames it had that are still reserved to its
    /// tenant (others must be added again).
    pub async fn restore_instance(&self, id: &str, actor: Actor<'_>) -> Result<Instance, ConfigError> {
        let guard = self.change_lock.lock().await;
        let current = self.instance(id).await?;
        if current.deleted_at.is_none() {
            return Err(ConfigError::NotDeleted(id.to_string()));
        }
        let mut tx = crate::store::begin(&self.db).await.context("failed to begin transaction")?;
        store::lock_row(&mut tx, "tenants", "id", &current.tenant).await.context("failed to lock the tenant")?;
        self.live_tenant_in(&mut tx, &current.tenant).await?;
        if !actor.operator {
            self.check_instance_quota(&mut tx, &current.tenant).await?;
        }
        let (released,): (Option<String>,) = sqlx::query_as("SELECT released_hosts FROM instances WHERE id = $1")
            .bind(id)
            .fetch_one(&mut *tx)
            .await
            .context("failed to read the instance")?;
        let restored = sqlx::query(
            "UPDATE instances SET deleted_at = NULL, deleted_by = NULL, purge_at = NULL, released_hosts = NULL \
             WHERE id = $1 AND purged_at IS NULL",
        )
        .bind(id)
        .execute(&mut *tx)
        .await
        .context("failed to restore the instance")?
        .rows_affected();
        if restored == 0 {
            return Err(ConfigError::UnknownInstance(id.to_string()));
        }
        let released: Vec<String> = released.and_then(|r| serde_json::from_str(&r).ok()).unwrap_or_default();
        let now = store::now();
        for host in &released {
            let (holder,): (Option<String>,) = sqlx::query_as(
                "SELECT (SELECT tenant_id FROM hostname_reservations WHERE hostname = $1 AND until_at > $2) \
                 WHERE NOT EXISTS (SELECT 1 FROM instance_hosts WHERE hostname = $1)",
            )
            .bind(host)
            .bind(now)
            .fetch_optional(&mut *tx)
            .await
            .context("failed to read hostname reservation")?
            .unwrap_or((None,));
            if holder.as_deref() == Some(current.tenant.as_str()) {
                claims::insert_verified(&mut tx, id, host).await?;
            } else {
                tracing::info!(instance = %id, hostname = %host, "not bound again on restore: taken or no longer reserved");
            }
        }
        store::commit_change_for(tx, &self.seen, store::Change::Instance(id), || self.refresh_instance(id)).await?;
        drop(guard);
        tracing::info!(instance = %id, tenant = %current.tenant, "instance restored");
        let instance = self.instance(id).await?;
        self.subscriptions_changed(std::slice::from_ref(&instance)).await;
        Ok(instance)
    }

    /// Destroy the data of deleted instances and tenants whose grace has
    /// ended; how many were purged. Every node runs it; one purges each instance.
    pub async fn purge_due(&self) -> Result<usize, ConfigError> {
        let due: Vec<(String,)> =
            sqlx::query_as("SELECT id FROM instances WHERE purged_at IS NULL AND purge_at <= $1 ORDER BY purge_at")
                .bind(store::now())
                .fetch_all(&self.db)
                .await
                .context("failed to list the instances to purge")?;
        let mut purged = 0;
        for (id,) in due {
            match self.purge(&id).await {
                Ok(true) => purged += 1,
                Ok(false) => {}
                Err(e) => tracing::warn!(instance = %id, "failed to purge a deleted instance (retried later): {e}"),
            }
        }
        Ok(purged + self.purge_due_tenants().await?)
    }

    /// Destroy a deleted instance's data, whatever its grace; whether this
    /// call did. What lives outside the control plane goes first (each step
    /// can be repeated), then the instance is marked purged in the
    /// transaction that drops its schema and role and its jobs.
    pub(super) async fn purge(&self, id: &str) -> Result<bool, ConfigError> {
        let row: Option<(String,)> = sqlx::query_as(
            "SELECT tenant_id FROM instances WHERE id = $1 AND deleted_at IS NOT NULL AND purged_at IS NULL",
        )
        .bind(id)
        .fetch_optional(&self.db)
        .await
        .context("failed to read the instance")?;
        let Some((tenant,)) = row else { return Ok(false) };
        if let Some(redis) = &self.backends.redis {
            redis.forget_instance(id).await?;
        }
        let dir = self.instances_dir.join(id);
        if tokio::fs::try_exists(&dir).await.unwrap_or(false) {
            tokio::fs::remove_dir_all(&dir).await.with_context(|| format!("failed to remove {}", dir.display()))?;
        }
        self.databases.forget(id, &tenant);
        let mut tx = crate::store::begin(&self.db).await.context("failed to begin transaction")?;
        // Only one node purges it; its name is free again.
        let claimed = sqlx::query("UPDATE instances SET purged_at = $1, name = $2 WHERE id = $3 AND purged_at IS NULL")
            .bind(store::now())
            .bind(format!("~{id}"))
            .bind(id)
            .execute(&mut *tx)
            .await
            .context("failed to mark the instance purged")?
            .rows_affected();
        if claimed == 0 {
            return Ok(false);
        }
        if let Some(pg) = &self.backends.postgres {
            pg.drop_in(&mut tx, id).await?;
        }
        if let Some(queue) = &self.followers.queue {
            queue.forget_in(&mut tx, id).await?;
        }
        tx.commit().await.context("failed to commit the purge")?;
        tracing::info!(instance = %id, %tenant, "instance purged: its data is destroyed");
        // A request in flight when the instance left its routes may still
        // write a key: once every such request is over, sweep again.
        if let Some(redis) = self.backends.redis.clone() {
            let (id, after) = (id.to_string(), self.request_timeout + std::time::Duration::from_secs(1));
            tokio::spawn(async move {
                tokio::time::sleep(after).await;
                if let Err(e) = redis.forget_instance(&id).await {
                    tracing::warn!(instance = %id, "failed to sweep a purged instance's keys: {e:#}");
                }
            });
        }
        Ok(true)
    }
}
