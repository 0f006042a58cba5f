//! The end of a tenant. Deleted, its people lose access at once (a deleted
//! tenant's memberships count nowhere) and every live instance of it is
//! deleted with it, as one change: off every route on every node, its
//! subscriptions ended. It is restorable — by an operator or one of its
//! owners — until the grace ends, with the instances deleted with it. Then it
//! is purged: its instances' data, its memberships, grants, invitations, quota
//! overrides, hostname claims and reservations are destroyed. Its row, its
//! subscription events, usage and invoices stay: they are billing records, and
//! its id is never given to another tenant, so they name no one else.

use super::*;

/// A deleted tenant and the instances deleted with it.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct TenantDeletion {
    #[serde(flatten)]
    pub tenant: Tenant,
    /// The instances this deletion took off their routes (or brought back).
    pub instances: Vec<String>,
    /// Whether its data is destroyed already (an operator's `?now=true`).
    pub purged: bool,
}

impl Configurator {
    /// Refuse a change in a deleted tenant, within the change's `tx` (which
    /// holds the tenant's row lock).
    pub(super) async fn live_tenant_in(
        &self,
        tx: &mut sqlx::Transaction<'_, crate::store::Backend>,
        tenant: &str,
    ) -> Result<(), ConfigError> {
        let row: Option<(Option<i64>,)> = sqlx::query_as("SELECT deleted_at FROM tenants WHERE id = $1")
            .bind(tenant)
            .fetch_optional(&mut **tx)
            .await
            .context("failed to read the tenant")?;
        match row {
            None => Err(ConfigError::UnknownTenant(tenant.to_string())),
            Some((Some(_),)) => Err(ConfigError::TenantDeleted(tenant.to_string())),
            Some((None,)) => Ok(()),
        }
    }

    /// Delete tenant `id` and every live instance of it (the caller checked
    /// who may). With `at_once` (an operator's) everything is purged now.
    pub async fn delete_tenant(
        &self,
        id: &str,
        actor: Actor<'_>,
        at_once: bool,
    ) -> Result<TenantDeletion, ConfigError> {
        let guard = self.change_lock.lock().await;
        let current = self.tenant(id).await?;
        let now = store::now();
        let purge_at = if at_once { now } else { now.saturating_add(self.deletion_grace.as_secs() as i64) };
        let mut tx = crate::store::begin(&self.db).await.context("failed to begin transaction")?;
        store::lock_row(&mut tx, "tenants", "id", id).await.context("failed to lock the tenant")?;
        let mut deleted = Vec::new();
        if current.deleted_at.is_none() {
            sqlx::query(
                "UPDATE tenants SET deleted_at = $1, deleted_by = $2, purge_at = $3 WHERE id = $4 AND deleted_at IS NULL",
            )
            .bind(now)
            .bind(actor.user_id)
            .bind(purge_at)
            .bind(id)
            .execute(&mut *tx)
            .await
            .context("failed to delete the tenant")?;
            // Read under the tenant's lock: no instance can be added meanwhile.
            for (instance, hosts) in live_instances_in(&mut tx, id).await? {
                self.mark_deleted_in(&mut tx, &instance, id, &hosts, actor, now, purge_at).await?;
                deleted.push(instance);
            }
            sqlx::query("DELETE FROM hostname_claims WHERE tenant_id = $1")
                .bind(id)
                .execute(&mut *tx)
                .await
                .context("failed to drop the tenant's hostname claims")?;
            store::commit_change_for(tx, &self.seen, store::Change::Tenant(id), || self.refresh_tenant(id)).await?;
            tracing::info!(tenant = %id, by = %actor.user_id, instances = deleted.len(), purge_at, "tenant deleted");
        } else if at_once {
            // Deleted before: its grace, and its instances', ends now.
            sqlx::query("UPDATE tenants SET purge_at = $1 WHERE id = $2")
                .bind(now)
                .bind(id)
                .execute(&mut *tx)
                .await
                .context("failed to end the tenant's grace")?;
            tx.commit().await.context("failed to end the tenant's grace")?;
        } else {
            drop(tx);
        }
        drop(guard);
        let mut instances = Vec::with_capacity(deleted.len());
        for instance in &deleted {
            instances.push(self.instance(instance).await?);
        }
        self.subscriptions_changed(&instances).await;
        let purged = at_once && self.purge_tenant(id).await?;
        let tenant = if purged { Tenant { purge_at: Some(now), ..current } } else { self.tenant(id).await? };
        Ok(TenantDeletion { tenant, instances: deleted, purged })
    }

    /// Bring back a deleted tenant whose data is not destroyed yet, with the
    /// instances deleted with it (each as `restore_instance` does, within no
    /// quota: they were within it when deleted) and its people's access.
    pub async fn restore_tenant(&self, id: &str, actor: Actor<'_>) -> Result<TenantDeletion, ConfigError> {
        let current = self.tenant(id).await?;
        let Some(deleted_at) = current.deleted_at else {
            return Err(ConfigError::TenantNotDeleted(id.to_string()));
        };
        {
            let _guard = self.change_lock.lock().await;
            let restored = sqlx::query(
                "UPDATE tenants SET deleted_at = NULL, deleted_by = NULL, purge_at = NULL \
                 WHERE id = $1 AND deleted_at IS NOT NULL AND purged_at IS NULL",
            )
            .bind(id)
            .execute(&self.db)
            .await
            .context("failed to restore the tenant")?
            .rows_affected();
            if restored == 0 {
                return Err(ConfigError::UnknownTenant(id.to_string()));
            }
        }
        let with_it: Vec<(String,)> = sqlx::query_as(
            "SELECT id FROM instances WHERE tenant_id = $1 AND deleted_at = $2 AND purged_at IS NULL ORDER BY id",
        )
        .bind(id)
        .bind(deleted_at)
        .fetch_all(&self.db)
        .await
        .context("failed to list the tenant's instances")?;
        let as_operator = Actor { user_id: actor.user_id, operator: true };
        let mut instances = Vec::new();
        for (instance,) in with_it {
            self.restore_instance(&instance, as_operator).await?;
            instances.push(instance);
        }
        tracing::info!(tenant = %id, by = %actor.user_id, instances = instances.len(), "tenant restored");
        Ok(TenantDeletion { tenant: self.tenant(id).await?, instances, purged: false })
    }

    /// Purge the deleted tenants whose grace has ended; how many were purged.
    pub(super) async fn purge_due_tenants(&self) -> Result<usize, ConfigError> {
        let due: Vec<(String,)> = sqlx::query_as(
            "SELECT id FROM tenants WHERE deleted_at IS NOT NULL AND purged_at IS NULL AND purge_at <= $1 ORDER BY purge_at",
        )
        .bind(store::now())
        .fetch_all(&self.db)
        .await
        .context("failed to list the tenants to purge")?;
        let mut purged = 0;
        for (id,) in due {
            match self.purge_tenant(&id).await {
                Ok(true) => purged += 1,
                Ok(false) => {}
                Err(e) => tracing::warn!(tenant = %id, "failed to purge a deleted tenant (retried later): {e}"),
            }
        }
        Ok(purged)
    }

    /// Destroy a deleted tenant's data: every instance of it not purged yet
    /// (whatever its own grace), then its people and hostnames, in the
    /// transaction that marks it purged. Whether this call did.
    async fn purge_tenant(&self, id: &str) -> Result<bool, ConfigError> {
        let instances: Vec<(String,)> = sqlx::query_as(
            "SELECT id FROM instances WHERE tenant_id = $1 AND purged_at IS NULL AND deleted_at IS NOT NULL ORDER BY id",
        )
        .bind(id)
        .fetch_all(&self.db)
        .await
        .context("failed to list the tenant's instances")?;
        for (instance,) in instances {
            self.purge(&instance).await?;
        }
        let mut tx = crate::store::begin(&self.db).await.context("failed to begin transaction")?;
        let claimed = sqlx::query(
            "UPDATE tenants SET purged_at = $1 WHERE id = $2 AND deleted_at IS NOT NULL AND purged_at IS NULL \
             AND NOT EXISTS (SELECT 1 FROM instances WHERE tenant_id = $2 AND purged_at IS NULL)",
        )
        .bind(store::now())
        .bind(id)
        .execute(&mut *tx)
        .await
        .context("failed to mark the tenant purged")?
        .rows_affected();
        if claimed == 0 {
            return Ok(false);
        }
        for table in ["hostname_claims", "hostname_reservations"] {
            sqlx::query(&format!("DELETE FROM {table} WHERE tenant_id = $1"))
                .bind(id)
                .execute(&mut *tx)
                .await
                .with_context(|| format!("failed to drop the tenant's {table}"))?;
        }
        crate::access::forget_tenant_in(&mut tx, id).await.map_err(|e| anyhow::anyhow!("{e}"))?;
        crate::identity::invitations::forget_tenant_in(&mut tx, id).await.map_err(|e| anyhow::anyhow!("{e}"))?;
        crate::quota::forget_in(&mut tx, &Subject::Tenant(id)).await?;
        tx.commit().await.context("failed to commit the purge")?;
        tracing::info!(tenant = %id, "tenant purged: its people, hostnames and instances' data are destroyed");
        Ok(true)
    }
}

/// The live instances of `tenant` with their custom hostnames, read in `tx`.
async fn live_instances_in(
    tx: &mut sqlx::Transaction<'_, crate::store::Backend>,
    tenant: &str,
) -> Result<Vec<(String, Vec<String>)>, ConfigError> {
    let ids: Vec<(String,)> =
        sqlx::query_as("SELECT id FROM instances WHERE tenant_id = $1 AND deleted_at IS NULL ORDER BY id")
            .bind(tenant)
            .fetch_all(&mut **tx)
            .await
            .context("failed to list the tenant's instances")?;
    let hosts: Vec<(String, String)> = sqlx::query_as(
        "SELECT h.instance_id, h.hostname FROM instance_hosts h JOIN instances i ON i.id = h.instance_id \
         WHERE i.tenant_id = $1 AND i.deleted_at IS NULL ORDER BY h.hostname",
    )
    .bind(tenant)
    .fetch_all(&mut **tx)
    .await
    .context("failed to list the tenant's hostnames")?;
    let mut by_instance: BTreeMap<String, Vec<String>> = ids.into_iter().map(|(id,)| (id, Vec::new())).collect();
    for (instance, host) in hosts {
        if let Some(list) = by_instance.get_mut(&instance) {
            list.push(host);
        }
    }
    Ok(by_instance.into_iter().collect())
}
