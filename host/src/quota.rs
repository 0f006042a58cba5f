//! Quotas: how many tenants a user may create, and how many instances,
//! hostnames and database bytes a tenant may hold. Operators set the defaults
//! (`wharf serve --quota-*`) and override them per tenant or per user
//! (`wharf quota set`); operators themselves are not bound by them.

use std::collections::HashMap;

use anyhow::Context as _;
use serde::Serialize;

use crate::config::QuotaDefaults;
use crate::store::Db;

/// A quota.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Quota {
    /// Tenants a user may create.
    Tenants,
    /// Instances of a tenant.
    Instances,
    /// Custom hostnames (verified or pending) of a tenant.
    Hostnames,
    /// Bytes of all a tenant's instance databases together.
    DatabaseBytes,
    /// Jobs of a tenant not finished for good: queued, running, waiting to
    /// retry, or dead (until retried or cancelled).
    PendingJobs,
    /// Bytes of job payloads the control plane keeps for a tenant.
    JobBytes,
}

impl Quota {
    pub const TENANT: [Quota; 5] =
        [Quota::Instances, Quota::Hostnames, Quota::DatabaseBytes, Quota::PendingJobs, Quota::JobBytes];
    /// Every quota.
    pub const ALL: [Quota; 6] =
        [Quota::Tenants, Quota::Instances, Quota::Hostnames, Quota::DatabaseBytes, Quota::PendingJobs, Quota::JobBytes];

    pub fn name(self) -> &'static str {
        match self {
            Quota::Tenants => "tenants",
            Quota::Instances => "instances",
            Quota::Hostnames => "hostnames",
            Quota::DatabaseBytes => "database_bytes",
            Quota::PendingJobs => "pending_jobs",
            Quota::JobBytes => "job_bytes",
        }
    }

    pub fn parse(name: &str) -> Option<Quota> {
        Quota::ALL.into_iter().find(|q| q.name() == name)
    }

    /// Whether the quota is held by a user (else by a tenant).
    pub fn per_user(self) -> bool {
        self == Quota::Tenants
    }

    fn default_in(self, defaults: &QuotaDefaults) -> i64 {
        match self {
            Quota::Tenants => defaults.tenants_per_user,
            Quota::Instances => defaults.instances_per_tenant,
            Quota::Hostnames => defaults.hostnames_per_tenant,
            Quota::DatabaseBytes => defaults.database_bytes_per_tenant,
            Quota::PendingJobs => defaults.pending_jobs_per_tenant,
            Quota::JobBytes => defaults.job_bytes_per_tenant,
        }
    }
}

/// Who holds a quota.
#[derive(Debug, Clone)]
pub enum Subject<'a> {
    Tenant(&'a str),
    User(&'a str),
}

impl Subject<'_> {
    fn key(&self) -> String {
        match self {
            Subject::Tenant(id) => format!("tenant:{id}"),
            Subject::User(id) => format!("user:{id}"),
        }
    }
}

/// One quota as the API shows it: its limit, where the limit comes from, and
/// what is used of it.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct QuotaUse {
    #[schema(value_type = String)]
    pub quota: &'static str,
    pub limit: i64,
    pub used: i64,
    /// `default` or `override`.
    #[schema(value_type = String)]
    pub source: &'static str,
}

/// The quota settings of the platform.
pub struct Quotas {
    db: Db,
    defaults: QuotaDefaults,
}

/// The largest value a quota may be set to.
pub const MAX_QUOTA: i64 = 1 << 50;

impl Quotas {
    pub fn new(db: Db, defaults: QuotaDefaults) -> Self {
        Self { db, defaults }
    }

    /// The limits of `subject`, with whether each is overridden.
    pub async fn limits(&self, subject: &Subject<'_>) -> anyhow::Result<HashMap<Quota, (i64, &'static str)>> {
        let rows: Vec<(String, i64)> = sqlx::query_as("SELECT quota, value FROM quota_overrides WHERE subject = $1")
            .bind(subject.key())
            .fetch_all(&self.db)
            .await
            .context("failed to read quotas")?;
        let mut limits: HashMap<Quota, (i64, &'static str)> =
            Quota::ALL.into_iter().map(|q| (q, (q.default_in(&self.defaults), "default"))).collect();
        for (name, value) in rows {
            if let Some(quota) = Quota::parse(&name) {
                limits.insert(quota, (value, "override"));
            }
        }
        Ok(limits)
    }

    /// One limit of `subject`.
    pub async fn limit(&self, subject: &Subject<'_>, quota: Quota) -> anyhow::Result<i64> {
        let row: Option<(i64,)> = sqlx::query_as("SELECT value FROM quota_overrides WHERE subject = $1 AND quota = $2")
            .bind(subject.key())
            .bind(quota.name())
            .fetch_optional(&self.db)
            .await
            .context("failed to read quota")?;
        Ok(row.map(|(v,)| v).unwrap_or_else(|| quota.default_in(&self.defaults)))
    }

    /// Override a limit of `subject` (`None`: back to the default).
    pub async fn set(&self, subject: &Subject<'_>, quota: Quota, value: Option<i64>) -> anyhow::Result<()> {
        match value {
            Some(value) => {
                sqlx::query(
                    "INSERT INTO quota_overrides (subject, quota, value) VALUES ($1, $2, $3) \
                     ON CONFLICT (subject, quota) DO UPDATE SET value = excluded.value",
                )
                .bind(subject.key())
                .bind(quota.name())
                .bind(value)
                .execute(&self.db)
                .await
            }
            None => {
                sqlx::query("DELETE FROM quota_overrides WHERE subject = $1 AND quota = $2")
                    .bind(subject.key())
                    .bind(quota.name())
                    .execute(&self.db)
                    .await
            }
        }
        .context("failed to set quota")?;
        Ok(())
    }

    /// Every tenant's database-bytes limit that differs from the default, and the default.
    pub async fn database_limits(&self) -> anyhow::Result<(i64, HashMap<String, i64>)> {
        let rows: Vec<(String, i64)> = sqlx::query_as("SELECT subject, value FROM quota_overrides WHERE quota = $1")
            .bind(Quota::DatabaseBytes.name())
            .fetch_all(&self.db)
            .await
            .context("failed to read quotas")?;
        let overrides =
            rows.into_iter().filter_map(|(s, v)| Some((s.strip_prefix("tenant:")?.to_string(), v))).collect();
        Ok((self.defaults.database_bytes_per_tenant, overrides))
    }
}

/// Destroy the quota overrides of a subject that is no more (within `tx`).
pub async fn forget_in(
    tx: &mut sqlx::Transaction<'_, crate::store::Backend>,
    subject: &Subject<'_>,
) -> anyhow::Result<()> {
    sqlx::query("DELETE FROM quota_overrides WHERE subject = $1")
        .bind(subject.key())
        .execute(&mut **tx)
        .await
        .context("failed to drop quota overrides")?;
    Ok(())
}
