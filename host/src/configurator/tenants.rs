//! Tenants and their quotas: creating tenants within the creator's quota, listing
//! them page by page, and what each tenant (and user) uses of its quotas.

use super::*;

impl Configurator {
    /// Create a tenant, owned (by the caller) within their tenants quota.
    pub async fn create_tenant(
        &self,
        id: &str,
        display_name: Option<&str>,
        actor: Actor<'_>,
    ) -> Result<Tenant, ConfigError> {
        if !actor.operator && self.tenant_creation == crate::config::TenantCreation::Operators {
            return Err(ConfigError::TenantCreationClosed);
        }
        if validate_name(id).is_err() {
            return Err(ConfigError::InvalidTenantId(id.chars().take(64).collect()));
        }
        if let Some(name) = display_name {
            if name.trim().is_empty() || name.chars().count() > 100 || name.chars().any(char::is_control) {
                return Err(ConfigError::InvalidDisplayName);
            }
        }
        let tenant = Tenant {
            id: id.to_string(),
            display_name: display_name.unwrap_or(id).to_string(),
            created_at: store::now(),
            deleted_at: None,
            purge_at: None,
        };
        let limit = match actor.operator {
            true => i64::MAX,
            false => self.quotas.limit(&Subject::User(actor.user_id), Quota::Tenants).await?,
        };
        // The count and the insert are one statement, under the user's row
        // lock: concurrent creations cannot both take the last place.
        let mut tx = crate::store::begin(&self.db).await.context("failed to begin transaction")?;
        store::lock_row(&mut tx, "users", "id", actor.user_id).await.context("failed to lock the user")?;
        let inserted = sqlx::query(
            "INSERT INTO tenants (id, display_name, created_at, created_by) SELECT $1, $2, $3, $4 \
             WHERE (SELECT COUNT(*) FROM tenants WHERE created_by = $4) < $5",
        )
        .bind(&tenant.id)
        .bind(&tenant.display_name)
        .bind(tenant.created_at)
        .bind(actor.user_id)
        .bind(limit)
        .execute(&mut *tx)
        .await;
        let inserted = match inserted {
            Ok(done) => tx.commit().await.map(|()| done),
            Err(e) => Err(e),
        };
        match inserted {
            Ok(done) if done.rows_affected() == 0 => Err(ConfigError::QuotaExceeded {
                quota: Quota::Tenants.name(),
                holder: "your account".into(),
                limit,
                used: self.tenants_created_by(actor.user_id).await?,
            }),
            Ok(_) => Ok(tenant),
            Err(e) if store::is_unique_violation(&e) => Err(ConfigError::TenantExists(id.to_string())),
            Err(e) => Err(anyhow::Error::from(e).context("failed to create tenant").into()),
        }
    }

    /// How many tenants `user_id` created.
    pub async fn tenants_created_by(&self, user_id: &str) -> Result<i64, ConfigError> {
        let (count,): (i64,) = sqlx::query_as("SELECT COUNT(*) FROM tenants WHERE created_by = $1")
            .bind(user_id)
            .fetch_one(&self.db)
            .await
            .context("failed to count tenants")?;
        Ok(count)
    }

    /// A page of the tenants among `ids` (`None`: every tenant), filtered and
    /// ordered in the database.
    pub async fn tenants(&self, ids: Option<&[String]>, page: &Page) -> Result<Vec<Tenant>, ConfigError> {
        let after = page.after.clone().unwrap_or_default();
        let rows = match ids {
            None => {
                sqlx::query_as::<_, Tenant>(&format!(
                    "SELECT {TENANT_COLUMNS} FROM tenants WHERE id > $1 AND purged_at IS NULL ORDER BY id LIMIT $2"
                ))
                .bind(&after)
                .bind(page.limit)
                .fetch_all(&self.db)
                .await
            }
            Some(ids) => {
                // A caller's own tenants: the membership table bounds them, and
                // SQLite's bound on parameters is respected by chunks.
                let mut tenants = Vec::new();
                for chunk in ids.chunks(500) {
                    let sql = format!(
                        "SELECT {TENANT_COLUMNS} FROM tenants WHERE id > $1 AND purged_at IS NULL AND id IN ({}) ORDER BY id LIMIT {}",
                        marks(2, chunk.len()),
                        page.limit
                    );
                    let mut query = sqlx::query_as::<_, Tenant>(&sql).bind(&after);
                    for id in chunk {
                        query = query.bind(id);
                    }
                    tenants.extend(query.fetch_all(&self.db).await.context("failed to list tenants")?);
                }
                tenants.sort_by(|a, b| a.id.cmp(&b.id));
                tenants.truncate(page.limit as usize);
                Ok(tenants)
            }
        };
        Ok(rows.context("failed to list tenants")?)
    }

    /// One tenant.
    pub async fn tenant(&self, id: &str) -> Result<Tenant, ConfigError> {
        sqlx::query_as(&format!("SELECT {TENANT_COLUMNS} FROM tenants WHERE id = $1 AND purged_at IS NULL"))
            .bind(id)
            .fetch_optional(&self.db)
            .await
            .context("failed to read tenant")?
            .ok_or_else(|| ConfigError::UnknownTenant(id.to_string()))
    }

    /// Whether `id` names a tenant, even one purged (whose billing records
    /// stay): `UnknownTenant` otherwise.
    pub async fn tenant_on_record(&self, id: &str) -> Result<(), ConfigError> {
        let row: Option<(String,)> = sqlx::query_as("SELECT id FROM tenants WHERE id = $1")
            .bind(id)
            .fetch_optional(&self.db)
            .await
            .context("failed to read tenant")?;
        row.map(drop).ok_or_else(|| ConfigError::UnknownTenant(id.to_string()))
    }

    /// A tenant's quotas with what it uses of each.
    pub async fn tenant_quotas(&self, tenant: &str) -> Result<Vec<QuotaUse>, ConfigError> {
        self.tenant(tenant).await?;
        let limits = self.quotas.limits(&Subject::Tenant(tenant)).await?;
        // On PostgreSQL the server knows every node's writes.
        let bytes = match &self.backends.postgres {
            Some(pg) => pg.tenant_sizes(tenant).await?.iter().map(|(_, b)| *b as i64).sum::<i64>(),
            None => self.databases.tenant_bytes(tenant).await.map_err(|e| anyhow::anyhow!(e))? as i64,
        };
        let mut out = Vec::new();
        for quota in Quota::TENANT {
            let used = match quota {
                Quota::Instances => self.count_instances(&self.db, tenant).await?,
                Quota::Hostnames => self.count_hostnames(&self.db, tenant).await?,
                Quota::PendingJobs => self.job_counters(tenant).await?.0,
                Quota::JobBytes => self.job_counters(tenant).await?.1,
                _ => bytes,
            };
            let (limit, source) = limits[&quota];
            out.push(QuotaUse { quota: quota.name(), limit, used, source });
        }
        Ok(out)
    }

    /// A tenant's unfinished jobs and the bytes of payload kept for it.
    pub(super) async fn job_counters(&self, tenant: &str) -> Result<(i64, i64), ConfigError> {
        let row: Option<(i64, i64)> = sqlx::query_as("SELECT pending, bytes FROM job_tenants WHERE tenant_id = $1")
            .bind(tenant)
            .fetch_optional(&self.db)
            .await
            .context("failed to count the tenant's jobs")?;
        Ok(row.unwrap_or((0, 0)))
    }

    /// A user's tenants quota with what they use of it.
    pub async fn user_quotas(&self, user_id: &str) -> Result<Vec<QuotaUse>, ConfigError> {
        let limits = self.quotas.limits(&Subject::User(user_id)).await?;
        let (limit, source) = limits[&Quota::Tenants];
        let used = self.tenants_created_by(user_id).await?;
        Ok(vec![QuotaUse { quota: Quota::Tenants.name(), limit, used, source }])
    }

    /// Set (or with `None`, reset) a tenant's quota.
    pub async fn set_tenant_quota(&self, tenant: &str, quota: Quota, value: Option<i64>) -> Result<(), ConfigError> {
        self.tenant(tenant).await?;
        self.quotas.set(&Subject::Tenant(tenant), quota, value).await?;
        if quota == Quota::DatabaseBytes {
            let bytes = self.quotas.limit(&Subject::Tenant(tenant), quota).await?;
            self.databases.set_tenant_quota(tenant, bytes.max(0) as u64);
            // Other nodes apply it when they catch up.
            let generation = store::bump_for(&self.db, store::Change::Tenant(tenant))
                .await
                .context("failed to record the change")?;
            self.seen.applied_own(generation);
        }
        Ok(())
    }

    pub(super) async fn count_instances<'e, E>(&self, db: E, tenant: &str) -> Result<i64, ConfigError>
    where
        E: sqlx::Executor<'e, Database = crate::store::Backend>,
    {
        let (count,): (i64,) =
            sqlx::query_as("SELECT COUNT(*) FROM instances WHERE tenant_id = $1 AND deleted_at IS NULL")
                .bind(tenant)
                .fetch_one(db)
                .await
                .context("failed to count instances")?;
        Ok(count)
    }

    pub(super) async fn count_hostnames<'e, E>(&self, db: E, tenant: &str) -> Result<i64, ConfigError>
    where
        E: sqlx::Executor<'e, Database = crate::store::Backend>,
    {
        let (count,): (i64,) = sqlx::query_as(
            "SELECT (SELECT COUNT(*) FROM instance_hosts h JOIN instances i ON i.id = h.instance_id \
                     WHERE i.tenant_id = $1) + (SELECT COUNT(*) FROM hostname_claims WHERE tenant_id = $1)",
        )
        .bind(tenant)
        .fetch_one(db)
        .await
        .context("failed to count hostnames")?;
        Ok(count)
    }
}
