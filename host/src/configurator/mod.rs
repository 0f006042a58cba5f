//! Tenants and their instances: an instance is a tenant's copy of a service, bound
//! to hostnames, following the service's active version or pinned to one.
//!
//! Every change rebuilds the router's table from the database and swaps it in, so
//! the next request sees it without a restart and no request ever queries.

pub mod database;
pub mod hostnames;
pub mod quota;

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use anyhow::Context as _;
use serde::Serialize;

use crate::billing::Usage;
use crate::registry::{manifest::validate_name, LoadedVersion, Registry, RegistryError};
use crate::router::{self, InstanceSetup, Route, Router, SetupState, VersionTarget};
use crate::runtime::Features;
use crate::store::{self, Db};
use hostnames::{Method, PendingHost, Policy, Verifier, TXT_LABEL, TXT_PREFIX};
use quota::{Quota, QuotaUse, Quotas, Subject};

/// Why a configuration change was refused.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("tenant id {0:?} is not valid: use 1 to 63 lower-case letters, digits and '-', starting with a letter")]
    InvalidTenantId(String),
    #[error("the display name must be 1 to 100 characters, without control characters")]
    InvalidDisplayName,
    #[error("tenant {0:?} already exists")]
    TenantExists(String),
    #[error("no tenant {0:?}; create it with `wharf tenant create`")]
    UnknownTenant(String),
    #[error("no instance {0:?}")]
    UnknownInstance(String),
    #[error("hostname {0:?} is not valid: use a DNS name like shop.example.com (IDNs in their xn-- form)")]
    InvalidHostname(String),
    #[error("an instance needs at least one hostname (--host): this platform has no domain of its own (wharf serve --domain)")]
    NoHostnames,
    #[error("at most {MAX_HOSTS} hostnames per instance")]
    TooManyHostnames,
    #[error("hostname {0:?} is already in use by another instance")]
    HostnameTaken(String),
    #[error("hostname {0:?} cannot be claimed: {1}")]
    HostnameRefused(String, String),
    #[error("hostname {0:?} was released recently and stays reserved to its previous tenant until {1} (Unix time)")]
    HostnameReserved(String, i64),
    #[error("instance {0:?} has no claim on hostname {1:?}; add it to the instance's hosts first")]
    NoClaim(String, String),
    #[error("hostname {0:?} is not verified yet: {1}")]
    NotVerified(String, String),
    #[error("the {quota} quota of {holder} is {limit} ({used} in use); ask an operator to raise it (wharf quota set)")]
    QuotaExceeded { quota: &'static str, holder: String, limit: i64, used: i64 },
    #[error("only platform operators may create tenants on this platform")]
    TenantCreationClosed,
    #[error(
        "instance name {0:?} is not valid: use 1 to 63 lower-case letters, digits and '-', starting with a letter"
    )]
    InvalidInstanceName(String),
    #[error("tenant {0:?} already has an instance named {1:?}; choose another name")]
    InstanceNameTaken(String, String),
    #[error("{service} {version} has no module {module:?} (it declares: {known})")]
    UnknownModule { service: String, version: String, module: String, known: String },
    #[error("setting {0:?} is not valid: keys are 1 to 64 lower-case letters, digits, '-', '_' or '.', values at most 4096 bytes, at most 100 settings")]
    InvalidSetting(String),
    #[error(transparent)]
    Registry(#[from] RegistryError),
    #[error(transparent)]
    Internal(#[from] anyhow::Error),
}

const MAX_HOSTS: usize = 100;

/// A tenant as the API shows it.
#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct Tenant {
    pub id: String,
    pub display_name: String,
    pub created_at: i64,
}

/// An instance as the API shows it.
#[derive(Debug, Clone, Serialize)]
pub struct Instance {
    pub id: String,
    /// Unique within the tenant; names the instance under the platform domains.
    pub name: String,
    pub tenant: String,
    pub service: String,
    /// Custom hostnames that route (verified, or bound by an operator).
    pub hosts: Vec<String>,
    /// `<name>.<tenant>.<domain>` for each platform domain.
    pub platform_hosts: Vec<String>,
    /// Custom hostnames claimed but not proven yet: they route nothing.
    pub pending_hosts: Vec<PendingHost>,
    /// The version the instance is pinned to; `None` follows the active version.
    pub pinned_version: Option<String>,
    /// Who pinned it when not its tenant or an operator: `canary` or `health`
    /// (the rollout's pins, released by the next promotion), with why.
    pub pinned_by: Option<String>,
    pub pin_reason: Option<String>,
    /// The version requests run now: the wanted one once it is set up; while
    /// a setup to it runs, the wanted one (requests wait in maintenance); after
    /// its setup failed, the version set up last.
    pub running_version: Option<String>,
    /// The version the instance should run (its pin, or the service's active
    /// version); `setup` says how far it is from running it.
    pub wanted_version: Option<String>,
    /// Enabled modules.
    pub modules: Vec<String>,
    /// Settings (site name, language, ...).
    pub settings: BTreeMap<String, String>,
    /// A disabled instance answers 410; its data is kept.
    pub enabled: bool,
    /// End of a trial or prepaid period: past it the instance answers 402 and
    /// is not billed.
    pub ends_at: Option<i64>,
    pub created_at: i64,
    /// Its database's migrations and the setup in progress or failed.
    pub setup: SetupInfo,
}

/// Where an instance's setup stands, as the API shows it.
#[derive(Debug, Clone, Serialize)]
pub struct SetupInfo {
    /// `ready`, `migrating` (in maintenance: 503) or `failed` (serving its
    /// settled version; retry the setup job).
    pub state: String,
    /// The version the setup brings (or failed to bring) the instance to.
    pub target: Option<String>,
    pub error: Option<String>,
    /// Migrations the instance's database has, in order.
    pub applied_migrations: Vec<String>,
    /// The last version set up successfully.
    pub settled_version: Option<String>,
    /// When the seeder ran (Unix seconds).
    pub seeded_at: Option<i64>,
}

/// What to create.
#[derive(Debug, Clone, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewInstance {
    pub tenant: String,
    pub service: String,
    /// Name within the tenant (default: the service's, numbered if taken).
    #[serde(default)]
    pub name: Option<String>,
    /// Custom hostnames: operators' bind at once, others' wait for proof.
    #[serde(default)]
    pub hosts: Vec<String>,
    #[serde(default)]
    pub version: Option<String>,
    /// Modules to enable (ids the service's manifest declares).
    #[serde(default)]
    pub modules: Vec<String>,
    /// Settings.
    #[serde(default)]
    pub settings: BTreeMap<String, String>,
    /// End of a trial or prepaid period (operators): Unix seconds or a UTC date.
    #[serde(default, deserialize_with = "crate::billing::time_opt")]
    pub ends_at: Option<i64>,
}

/// What to change; absent fields stay as they are.
#[derive(Debug, Clone, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InstanceChange {
    /// Replace the hostnames.
    #[serde(default)]
    pub hosts: Option<Vec<String>>,
    /// Pin to a version (`"1.2.0"`) or follow the active one (`"active"`).
    #[serde(default)]
    pub version: Option<String>,
    /// Replace the enabled modules.
    #[serde(default)]
    pub modules: Option<Vec<String>>,
    /// Replace the settings.
    #[serde(default)]
    pub settings: Option<BTreeMap<String, String>>,
    /// Disable (`false`) or re-enable (`true`) the instance.
    #[serde(default)]
    pub enabled: Option<bool>,
    /// Set (a time) or remove (`null`) the end of a trial or prepaid period (operators).
    #[serde(default, deserialize_with = "crate::billing::time_change")]
    pub ends_at: Option<Option<i64>>,
}

#[derive(sqlx::FromRow)]
struct InstanceRow {
    id: String,
    name: String,
    tenant_id: String,
    service: String,
    pinned_version: Option<String>,
    modules: String,
    settings: String,
    /// `(CASE WHEN enabled THEN 1 ELSE 0 END)`: see [`store::flag`].
    enabled: i64,
    created_at: i64,
    setup_state: String,
    setup_target: Option<String>,
    setup_error: Option<String>,
    applied_migrations: String,
    settled_version: Option<String>,
    seeded_at: Option<i64>,
    ends_at: Option<i64>,
    pinned_by: Option<String>,
    pin_reason: Option<String>,
}

const INSTANCE_COLUMNS: &str = "id, name, tenant_id, service, pinned_version, modules, settings, \
     (CASE WHEN enabled THEN 1 ELSE 0 END) AS enabled, created_at, setup_state, setup_target, setup_error, \
     applied_migrations, settled_version, seeded_at, ends_at, pinned_by, pin_reason";

/// Who asks for a change: operators are bound by no quota and prove no hostname.
#[derive(Debug, Clone, Copy)]
pub struct Actor<'a> {
    pub user_id: &'a str,
    pub operator: bool,
}

/// A page of a list: at most `limit` items after the cursor `after`.
#[derive(Debug, Clone, Default)]
pub struct Page {
    pub after: Option<String>,
    pub limit: i64,
}

impl Page {
    /// Most items one page holds.
    pub const MAX: i64 = 1000;
    /// Items in a page unless the client asks for fewer or more.
    pub const DEFAULT: i64 = 100;

    pub fn new(after: Option<String>, limit: Option<i64>) -> Self {
        Self { after, limit: limit.unwrap_or(Self::DEFAULT).clamp(1, Self::MAX) }
    }
}

/// The configurator of one node.
pub struct Configurator {
    db: Db,
    /// Where instance databases live: `<data>/instances/<id>/`.
    instances_dir: std::path::PathBuf,
    /// Open instance databases, kept across route rebuilds.
    databases: dashmap::DashMap<String, Arc<database::InstanceDb>>,
    open_databases: Arc<database::OpenDatabases>,
    db_threads: Arc<database::DbThreads>,
    registry: Arc<Registry>,
    router: Arc<Router>,
    usage: Arc<Usage>,
    /// Records subscription changes.
    billing: Option<Arc<crate::billing::Billing>>,
    /// In a cluster, where instances keep their key-value stores.
    redis: Option<Arc<crate::shared::Redis>>,
    /// With a PostgreSQL control plane, where instances keep their SQL databases.
    postgres: Option<Arc<database::PgDatabases>>,
    /// The job queue guests enqueue into.
    queue: Option<Arc<crate::jobs::Queue>>,
    /// The platform generation this node has applied.
    seen: Arc<store::Seen>,
    pub quotas: Quotas,
    policy: Policy,
    verifier: Verifier,
    /// How long a released hostname stays reserved to its tenant.
    reservation: std::time::Duration,
    tenant_creation: crate::config::TenantCreation,
    // Changes are serialised so two rebuilds never race to swap the table.
    change_lock: tokio::sync::Mutex<()>,
}

impl Configurator {
    /// A configurator over `db`, feeding `router`.
    #[allow(clippy::too_many_arguments)] // one per part of the node it ties together
    pub fn new(
        db: Db,
        registry: Arc<Registry>,
        router: Arc<Router>,
        usage: Arc<Usage>,
        db_threads: Arc<database::DbThreads>,
        redis: Option<Arc<crate::shared::Redis>>,
        postgres: Option<Arc<database::PgDatabases>>,
        queue: Option<Arc<crate::jobs::Queue>>,
        billing: Option<Arc<crate::billing::Billing>>,
        seen: Arc<store::Seen>,
        config: &crate::config::NodeConfig,
    ) -> anyhow::Result<Self> {
        let trust = &config.trust;
        Ok(Self {
            redis,
            postgres,
            queue,
            seen,
            quotas: Quotas::new(db.clone(), trust.quotas),
            policy: Policy::new(trust),
            verifier: Verifier::new(trust.challenge_connect, &trust.platform_addresses, trust.dns_server)
                .context("failed to set up the DNS resolver for hostname challenges")?,
            reservation: trust.hostname_reservation,
            tenant_creation: trust.tenant_creation,
            db,
            instances_dir: config.data_dir.join("instances"),
            databases: dashmap::DashMap::new(),
            open_databases: database::OpenDatabases::new(database::MAX_OPEN_DATABASES),
            db_threads,
            registry,
            router,
            usage,
            billing,
            change_lock: tokio::sync::Mutex::new(()),
        })
    }

    /// Connections to instance databases on PostgreSQL: open now, and the most
    /// this node opens (`None` on SQLite).
    pub fn instance_connections(&self) -> Option<(usize, usize)> {
        self.postgres.as_ref().map(|pg| (pg.open_count(), pg.max()))
    }

    /// The databases of `tenant`'s instance (opened on first use).
    pub fn database(&self, instance: &str, tenant: &str) -> Arc<database::InstanceDb> {
        self.databases
            .entry(instance.to_string())
            .or_insert_with(|| {
                Arc::new(
                    database::InstanceDb::new(
                        &self.instances_dir.join(instance),
                        tenant,
                        self.db_threads.clone(),
                        self.open_databases.clone(),
                    )
                    .with_redis(self.redis.clone(), instance)
                    .with_postgres(self.postgres.clone(), instance, tenant),
                )
            })
            .clone()
    }

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
                sqlx::query_as::<_, Tenant>(
                    "SELECT id, display_name, created_at FROM tenants WHERE id > $1 ORDER BY id LIMIT $2",
                )
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
                        "SELECT id, display_name, created_at FROM tenants WHERE id > $1 AND id IN ({}) ORDER BY id LIMIT {}",
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
        sqlx::query_as("SELECT id, display_name, created_at FROM tenants WHERE id = $1")
            .bind(id)
            .fetch_optional(&self.db)
            .await
            .context("failed to read tenant")?
            .ok_or_else(|| ConfigError::UnknownTenant(id.to_string()))
    }

    /// A tenant's quotas with what it uses of each.
    pub async fn tenant_quotas(&self, tenant: &str) -> Result<Vec<QuotaUse>, ConfigError> {
        self.tenant(tenant).await?;
        let limits = self.quotas.limits(&Subject::Tenant(tenant)).await?;
        // On PostgreSQL the server knows every node's writes.
        let shared_bytes = match &self.postgres {
            Some(pg) => Some(pg.tenant_sizes(tenant).await?.iter().map(|(_, b)| *b as i64).sum::<i64>()),
            None => None,
        };
        let mut out = Vec::new();
        for quota in Quota::TENANT {
            let used = match quota {
                Quota::Instances => self.count_instances(&self.db, tenant).await?,
                Quota::Hostnames => self.count_hostnames(&self.db, tenant).await?,
                Quota::PendingJobs => self.job_counters(tenant).await?.0,
                Quota::JobBytes => self.job_counters(tenant).await?.1,
                _ => shared_bytes.unwrap_or_else(|| self.db_threads.tenant_bytes(tenant) as i64),
            };
            let (limit, source) = limits[&quota];
            out.push(QuotaUse { quota: quota.name(), limit, used, source });
        }
        Ok(out)
    }

    /// A tenant's unfinished jobs and the bytes of payload kept for it.
    async fn job_counters(&self, tenant: &str) -> Result<(i64, i64), ConfigError> {
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
            self.db_threads.set_tenant_quota(tenant, bytes.max(0) as u64);
            // Other nodes apply it when they catch up.
            let generation = store::bump(&self.db).await.context("failed to record the change")?;
            self.seen.applied_own(generation);
        }
        Ok(())
    }

    async fn count_instances<'e, E>(&self, db: E, tenant: &str) -> Result<i64, ConfigError>
    where
        E: sqlx::Executor<'e, Database = crate::store::Backend>,
    {
        let (count,): (i64,) = sqlx::query_as("SELECT COUNT(*) FROM instances WHERE tenant_id = $1")
            .bind(tenant)
            .fetch_one(db)
            .await
            .context("failed to count instances")?;
        Ok(count)
    }

    async fn count_hostnames<'e, E>(&self, db: E, tenant: &str) -> Result<i64, ConfigError>
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

    /// The name an instance gets: the one asked for, else the service's, numbered
    /// if the tenant has one of that name already.
    async fn instance_name(&self, tenant: &str, wanted: Option<&str>, service: &str) -> Result<String, ConfigError> {
        let taken: Vec<(String,)> = sqlx::query_as("SELECT name FROM instances WHERE tenant_id = $1")
            .bind(tenant)
            .fetch_all(&self.db)
            .await
            .context("failed to read instance names")?;
        let taken = |name: &str| taken.iter().any(|(n,)| n == name);
        match wanted {
            Some(name) => {
                if validate_name(name).is_err() {
                    return Err(ConfigError::InvalidInstanceName(name.chars().take(64).collect()));
                }
                if taken(name) {
                    return Err(ConfigError::InstanceNameTaken(tenant.to_string(), name.to_string()));
                }
                Ok(name.to_string())
            }
            None => Ok(std::iter::once(service.to_string())
                .chain((2..).map(|n| format!("{service}-{n}")))
                .find(|name| !taken(name))
                .unwrap_or_else(|| service.to_string())),
        }
    }

    /// Create an instance and route its hostnames.
    pub async fn create_instance(&self, new: NewInstance, actor: Actor<'_>) -> Result<Instance, ConfigError> {
        self.tenant(&new.tenant).await?;
        let slot =
            self.registry.slot(&new.service).ok_or_else(|| RegistryError::UnknownService(new.service.clone()))?;
        if let Some(version) = &new.version {
            self.registry.ensure_loaded(&new.service, version).await?;
            if slot.version(version).is_none() {
                return Err(self.registry.unknown_version(&new.service, version).await.into());
            }
        }
        let hosts = normalize_hosts(&new.hosts)?;
        if hosts.is_empty() && !self.policy.has_domains() {
            return Err(ConfigError::NoHostnames);
        }
        let version = match &new.version {
            Some(v) => slot.version(v),
            None => slot.active(),
        };
        if let Some(version) = &version {
            self.registry.check_dialect(version)?;
        }
        let modules = check_modules(version.as_deref(), &new.service, &new.modules)?;
        check_settings(&new.settings)?;
        let id = format!("inst-{}", &uuid::Uuid::new_v4().simple().to_string()[..12]);

        let _guard = self.change_lock.lock().await;
        let name = self.instance_name(&new.tenant, new.name.as_deref(), &new.service).await?;
        let mut tx = crate::store::begin(&self.db).await.context("failed to begin transaction")?;
        store::lock_row(&mut tx, "tenants", "id", &new.tenant).await.context("failed to lock the tenant")?;
        if !actor.operator {
            let limit = self.quotas.limit(&Subject::Tenant(&new.tenant), Quota::Instances).await?;
            let used = self.count_instances(&mut *tx, &new.tenant).await?;
            if used >= limit {
                return Err(ConfigError::QuotaExceeded {
                    quota: Quota::Instances.name(),
                    holder: format!("tenant {:?}", new.tenant),
                    limit,
                    used,
                });
            }
        }
        let inserted = sqlx::query(
            "INSERT INTO instances (id, name, tenant_id, service, pinned_version, modules, settings, enabled, created_at, ends_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
        )
        .bind(&id)
        .bind(&name)
        .bind(&new.tenant)
        .bind(&new.service)
        .bind(&new.version)
        .bind(json_text(&modules))
        .bind(json_text(&new.settings))
        .bind(true)
        .bind(store::now())
        .bind(new.ends_at)
        .execute(&mut *tx)
        .await;
        match inserted {
            Ok(_) => {}
            Err(e) if store::is_unique_violation(&e) => {
                return Err(ConfigError::InstanceNameTaken(new.tenant.clone(), name));
            }
            Err(e) => return Err(anyhow::Error::from(e).context("failed to create instance").into()),
        }
        self.apply_hosts(&mut tx, &id, &new.tenant, &hosts, actor).await?;
        // The instance's own database exists before anyone can reach the instance.
        if self.postgres.is_some() {
            // In the same transaction: if the instance is not created, neither is its database.
            database::PgDatabases::create(&mut tx, &id).await?;
        } else {
            let db = self.database(&id, &new.tenant);
            tokio::task::spawn_blocking(move || db.provision())
                .await
                .context("provisioning task failed")?
                .map_err(|e| anyhow::anyhow!("failed to provision the instance database: {e}"))?;
        }
        // Migrations and the seeder run before the instance serves its first request.
        if let (Some(queue), Some(version)) = (&self.queue, &version) {
            if crate::jobs::setup::needed(version, &[], false) {
                crate::jobs::setup::begin_in(&mut tx, queue, &id, &new.tenant, &new.service, &version.version).await?;
            }
        }
        let generation = store::bump_generation(&mut tx).await.context("failed to record the change")?;
        tx.commit().await.context("failed to commit instance")?;
        if let Some(queue) = &self.queue {
            queue.wake.notify_one();
        }
        self.add_routes(&id).await?;
        self.seen.applied_own(generation);
        tracing::info!(instance = %id, %name, tenant = %new.tenant, service = %new.service, ?hosts, "instance created");
        let instance = self.instance(&id).await?;
        self.subscriptions_changed(std::slice::from_ref(&instance)).await;
        Ok(instance)
    }

    /// Make `desired` the custom hostnames of `instance`: names kept stay as they
    /// are; removed ones are released (verified names stay reserved to the
    /// tenant); added ones are bound at once for operators and for names the
    /// tenant released lately, and claimed (pending proof) otherwise.
    async fn apply_hosts(
        &self,
        tx: &mut sqlx::Transaction<'_, crate::store::Backend>,
        instance: &str,
        tenant: &str,
        desired: &[String],
        actor: Actor<'_>,
    ) -> Result<(), ConfigError> {
        let now = store::now();
        let before = self.count_hostnames(&mut **tx, tenant).await?;
        let verified: Vec<(String,)> = sqlx::query_as("SELECT hostname FROM instance_hosts WHERE instance_id = $1")
            .bind(instance)
            .fetch_all(&mut **tx)
            .await
            .context("failed to read hostnames")?;
        let pending: Vec<(String,)> = sqlx::query_as("SELECT hostname FROM hostname_claims WHERE instance_id = $1")
            .bind(instance)
            .fetch_all(&mut **tx)
            .await
            .context("failed to read hostname claims")?;
        for (host,) in &verified {
            if !desired.contains(host) {
                sqlx::query("DELETE FROM instance_hosts WHERE hostname = $1")
                    .bind(host)
                    .execute(&mut **tx)
                    .await
                    .context("failed to release hostname")?;
                sqlx::query(
                    "INSERT INTO hostname_reservations (hostname, tenant_id, until_at) VALUES ($1, $2, $3) \
                     ON CONFLICT (hostname) DO UPDATE SET tenant_id = excluded.tenant_id, until_at = excluded.until_at",
                )
                .bind(host)
                .bind(tenant)
                .bind(now + self.reservation.as_secs() as i64)
                .execute(&mut **tx)
                .await
                .context("failed to reserve hostname")?;
            }
        }
        for (host,) in &pending {
            if !desired.contains(host) {
                sqlx::query("DELETE FROM hostname_claims WHERE hostname = $1 AND instance_id = $2")
                    .bind(host)
                    .bind(instance)
                    .execute(&mut **tx)
                    .await
                    .context("failed to drop hostname claim")?;
            }
        }
        for host in desired {
            if verified.iter().chain(&pending).any(|(h,)| h == host) {
                continue;
            }
            let taken: Option<(String,)> = sqlx::query_as("SELECT instance_id FROM instance_hosts WHERE hostname = $1")
                .bind(host)
                .fetch_optional(&mut **tx)
                .await
                .context("failed to read hostname")?;
            if taken.is_some() {
                return Err(ConfigError::HostnameTaken(host.clone()));
            }
            let reserved: Option<(String, i64)> = sqlx::query_as(
                "SELECT tenant_id, until_at FROM hostname_reservations WHERE hostname = $1 AND until_at > $2",
            )
            .bind(host)
            .bind(now)
            .fetch_optional(&mut **tx)
            .await
            .context("failed to read hostname reservation")?;
            let bind_now = match &reserved {
                _ if actor.operator => true,
                Some((holder, _)) if holder == tenant => true,
                Some((_, until)) => return Err(ConfigError::HostnameReserved(host.clone(), *until)),
                None => false,
            };
            if bind_now {
                insert_verified(tx, instance, host).await?;
                continue;
            }
            if let Some(reason) = hostnames::refusal(&self.policy, host) {
                return Err(ConfigError::HostnameRefused(host.clone(), reason));
            }
            sqlx::query(
                "INSERT INTO hostname_claims (hostname, instance_id, tenant_id, token, created_at) VALUES ($1, $2, $3, $4, $5)",
            )
            .bind(host)
            .bind(instance)
            .bind(tenant)
            .bind(hostnames::new_token())
            .bind(now)
            .execute(&mut **tx)
            .await
            .context("failed to claim hostname")?;
        }
        if !actor.operator {
            let limit = self.quotas.limit(&Subject::Tenant(tenant), Quota::Hostnames).await?;
            let used = self.count_hostnames(&mut **tx, tenant).await?;
            if used > limit {
                return Err(ConfigError::QuotaExceeded {
                    quota: Quota::Hostnames.name(),
                    holder: format!("tenant {tenant:?}"),
                    limit,
                    used: before,
                });
            }
        }
        Ok(())
    }

    /// Prove a claimed hostname of `instance` (by `method`, or HTTP then DNS) and
    /// route it; `NotVerified` says what each method found.
    pub async fn verify_hostname(
        &self,
        instance: &str,
        hostname: &str,
        method: Option<Method>,
    ) -> Result<Instance, ConfigError> {
        let host = router::normalize(hostname).map_err(|_| ConfigError::InvalidHostname(hostname.to_string()))?;
        let claim: Option<(String, Option<i64>)> =
            sqlx::query_as("SELECT token, checked_at FROM hostname_claims WHERE hostname = $1 AND instance_id = $2")
                .bind(&host)
                .bind(instance)
                .fetch_optional(&self.db)
                .await
                .context("failed to read hostname claim")?;
        let Some((token, checked_at)) = claim else {
            let current = self.instance(instance).await?;
            if current.hosts.contains(&host) {
                return Ok(current);
            }
            return Err(ConfigError::NoClaim(instance.to_string(), host));
        };
        // One check per claim every few seconds: the checks reach out to
        // whatever the name points at.
        if checked_at.is_some_and(|at| store::now() - at < 3) {
            return Err(ConfigError::NotVerified(host, "checked less than 3 seconds ago; retry shortly".into()));
        }
        sqlx::query("UPDATE hostname_claims SET checked_at = $1 WHERE hostname = $2 AND instance_id = $3")
            .bind(store::now())
            .bind(&host)
            .bind(instance)
            .execute(&self.db)
            .await
            .context("failed to record the check")?;
        // A name several tenants claim is disputed: the HTTP proof shows only
        // that the name reaches the platform, which is true for every claimant
        // at once, so the first to ask would win. Only the name's owner can
        // publish its TXT record.
        let (claimants,): (i64,) =
            sqlx::query_as("SELECT COUNT(DISTINCT tenant_id) FROM hostname_claims WHERE hostname = $1")
                .bind(&host)
                .fetch_one(&self.db)
                .await
                .context("failed to count the name's claims")?;
        let disputed = claimants > 1;
        let mut failures = Vec::new();
        let methods = match method {
            Some(Method::Http) if disputed => {
                failures.push(format!(
                    "http: {host} is claimed by more than one tenant, so an HTTP check proves nothing; publish \
                     {TXT_LABEL}.{host} TXT \"{TXT_PREFIX}{token}\" and verify with --method dns"
                ));
                vec![]
            }
            Some(m) => vec![m],
            None if disputed => {
                failures.push(format!(
                    "http: not tried: {host} is claimed by more than one tenant, and only its TXT record proves it"
                ));
                vec![Method::Dns]
            }
            None => vec![Method::Http, Method::Dns],
        };
        let mut proven = false;
        for method in methods {
            match self.verifier.check(&host, &token, method).await {
                Ok(()) => {
                    proven = true;
                    break;
                }
                Err(why) => failures.push(why),
            }
        }
        if !proven {
            let why = failures.join("; ");
            sqlx::query("UPDATE hostname_claims SET last_error = $1 WHERE hostname = $2 AND instance_id = $3")
                .bind(&why)
                .bind(&host)
                .bind(instance)
                .execute(&self.db)
                .await
                .context("failed to record the check")?;
            return Err(ConfigError::NotVerified(host, why));
        }
        let _guard = self.change_lock.lock().await;
        let mut tx = crate::store::begin(&self.db).await.context("failed to begin transaction")?;
        // The claim may have been withdrawn, or another tenant proven first.
        let still: Option<(String,)> =
            sqlx::query_as("SELECT token FROM hostname_claims WHERE hostname = $1 AND instance_id = $2")
                .bind(&host)
                .bind(instance)
                .fetch_optional(&mut *tx)
                .await
                .context("failed to read hostname claim")?;
        if still.is_none() {
            return Err(ConfigError::NoClaim(instance.to_string(), host));
        }
        insert_verified(&mut tx, instance, &host).await?;
        let generation = store::bump_generation(&mut tx).await.context("failed to record the change")?;
        tx.commit().await.context("failed to commit hostname")?;
        self.rebuild_routes().await?;
        self.seen.applied_own(generation);
        tracing::info!(%instance, hostname = %host, "hostname verified");
        self.instance(instance).await
    }

    /// Change an instance's hostnames or version policy.
    pub async fn update_instance(
        &self,
        id: &str,
        change: InstanceChange,
        actor: Actor<'_>,
    ) -> Result<Instance, ConfigError> {
        // Read and write under one lock: two concurrent changes of different
        // fields both land, neither is lost to the other's stale copy.
        let _guard = self.change_lock.lock().await;
        let current = self.instance(id).await?;
        let pinned = match change.version.as_deref() {
            None => current.pinned_version.clone(),
            Some("active") => None,
            Some(version) => {
                self.registry.ensure_loaded(&current.service, version).await?;
                let known = self.registry.slot(&current.service).and_then(|s| s.version(version));
                if known.is_none() {
                    return Err(self.registry.unknown_version(&current.service, version).await.into());
                }
                Some(version.to_string())
            }
        };
        let hosts = change.hosts.as_deref().map(normalize_hosts).transpose()?;
        if hosts.as_ref().is_some_and(Vec::is_empty) && !self.policy.has_domains() {
            return Err(ConfigError::NoHostnames);
        }
        let slot = self.registry.slot(&current.service);
        let version = match &pinned {
            Some(v) => slot.as_ref().and_then(|s| s.version(v)),
            None => slot.as_ref().and_then(|s| s.active()),
        };
        if let Some(version) = version.as_ref().filter(|_| pinned != current.pinned_version) {
            self.registry.check_dialect(version)?;
        }
        let modules = match &change.modules {
            Some(modules) => check_modules(version.as_deref(), &current.service, modules)?,
            None => current.modules.clone(),
        };
        let settings = change.settings.clone().unwrap_or_else(|| current.settings.clone());
        check_settings(&settings)?;
        let enabled = change.enabled.unwrap_or(current.enabled);
        let ends_at = change.ends_at.unwrap_or(current.ends_at);

        let mut tx = crate::store::begin(&self.db).await.context("failed to begin transaction")?;
        store::lock_row(&mut tx, "tenants", "id", &current.tenant).await.context("failed to lock the tenant")?;
        sqlx::query(
            "UPDATE instances SET pinned_version = $1, modules = $2, settings = $3, enabled = $4, ends_at = $5, \
             pinned_by = CASE WHEN $7 THEN NULL ELSE pinned_by END, pin_reason = CASE WHEN $7 THEN NULL ELSE pin_reason END \
             WHERE id = $6",
        )
        .bind(&pinned)
        .bind(json_text(&modules))
        .bind(json_text(&settings))
        .bind(enabled)
        .bind(ends_at)
        .bind(id)
        // A pin set here is the owner's: it replaces the rollout's.
        .bind(change.version.is_some())
        .execute(&mut *tx)
        .await
        .context("failed to update instance")?;
        if let Some(hosts) = &hosts {
            self.apply_hosts(&mut tx, id, &current.tenant, hosts, actor).await?;
        }
        let generation = store::bump_generation(&mut tx).await.context("failed to record the change")?;
        tx.commit().await.context("failed to commit instance change")?;
        self.rebuild_routes().await?;
        self.seen.applied_own(generation);
        let instance = self.instance(id).await?;
        self.subscriptions_changed(std::slice::from_ref(&instance)).await;
        Ok(instance)
    }

    /// Pin `instances` of `service` to `version` on the rollout's behalf (`by`:
    /// `canary` or `health`, with `reason`). Instances their owner pinned are
    /// left alone. Returns the instances pinned and the generation.
    pub async fn rollout_pin(
        &self,
        service: &str,
        instances: &[String],
        version: &str,
        by: &str,
        reason: &str,
    ) -> Result<(Vec<String>, i64), ConfigError> {
        let _guard = self.change_lock.lock().await;
        let mut tx = crate::store::begin(&self.db).await.context("failed to begin transaction")?;
        let mut pinned = Vec::new();
        for id in instances {
            let changed = sqlx::query(
                // The health gate of several nodes may judge one instance at
                // once: the first moves it, the others find it moved.
                "UPDATE instances SET pinned_version = $1, pinned_by = $2, pin_reason = $3 \
                 WHERE id = $4 AND service = $5 AND (pinned_version IS NULL OR pinned_by IS NOT NULL) \
                 AND NOT ($2 = 'health' AND COALESCE(pinned_by, '') = 'health' AND COALESCE(pinned_version, '') = $1)",
            )
            .bind(version)
            .bind(by)
            .bind(reason)
            .bind(id)
            .bind(service)
            .execute(&mut *tx)
            .await
            .context("failed to pin")?
            .rows_affected();
            if changed > 0 {
                pinned.push(id.clone());
            }
        }
        let generation = store::bump_generation(&mut tx).await.context("failed to record the change")?;
        tx.commit().await.context("failed to commit the pins")?;
        self.rebuild_routes().await?;
        self.seen.applied_own(generation);
        drop(_guard);
        self.rollout_changed(&pinned).await;
        Ok((pinned, generation))
    }

    /// Release the rollout's pins (`kinds`: `canary`, `health`) of `service`:
    /// those instances follow the active version again. Returns them and the
    /// generation (`None` when there were none).
    pub async fn rollout_unpin(
        &self,
        service: &str,
        kinds: &[&str],
    ) -> Result<(Vec<String>, Option<i64>), ConfigError> {
        let _guard = self.change_lock.lock().await;
        let mut tx = crate::store::begin(&self.db).await.context("failed to begin transaction")?;
        let mut released = Vec::new();
        for kind in kinds {
            let ids: Vec<(String,)> = sqlx::query_as("SELECT id FROM instances WHERE service = $1 AND pinned_by = $2")
                .bind(service)
                .bind(kind)
                .fetch_all(&mut *tx)
                .await
                .context("failed to read pins")?;
            sqlx::query(
                "UPDATE instances SET pinned_version = NULL, pinned_by = NULL, pin_reason = NULL \
                 WHERE service = $1 AND pinned_by = $2",
            )
            .bind(service)
            .bind(kind)
            .execute(&mut *tx)
            .await
            .context("failed to release pins")?;
            released.extend(ids.into_iter().map(|(id,)| id));
        }
        if released.is_empty() {
            return Ok((released, None));
        }
        let generation = store::bump_generation(&mut tx).await.context("failed to record the change")?;
        tx.commit().await.context("failed to commit the pins")?;
        self.rebuild_routes().await?;
        self.seen.applied_own(generation);
        drop(_guard);
        self.rollout_changed(&released).await;
        Ok((released, Some(generation)))
    }

    /// After the rollout moved instances: their subscriptions (billing).
    async fn rollout_changed(&self, ids: &[String]) {
        let mut instances = Vec::new();
        for id in ids {
            if let Ok(instance) = self.instance(id).await {
                instances.push(instance);
            }
        }
        self.subscriptions_changed(&instances).await;
    }

    /// Instances of `service` following its active version (none pinned), by id.
    pub async fn followers(&self, service: &str) -> Result<Vec<String>, ConfigError> {
        let rows: Vec<(String,)> = sqlx::query_as(
            "SELECT id FROM instances WHERE service = $1 AND (pinned_version IS NULL OR pinned_by = 'canary') ORDER BY id",
        )
        .bind(service)
        .fetch_all(&self.db)
        .await
        .context("failed to list instances")?;
        Ok(rows.into_iter().map(|(id,)| id).collect())
    }

    /// Record what changed in these instances' subscriptions (billing). A
    /// failure is logged: billing's periodic pass records it shortly after.
    pub async fn subscriptions_changed(&self, instances: &[Instance]) {
        if let Some(billing) = &self.billing {
            if let Err(e) = billing.sync(instances).await {
                tracing::warn!("failed to record a subscription change (retried by the next billing pass): {e:#}");
            }
        }
    }

    /// One instance.
    pub async fn instance(&self, id: &str) -> Result<Instance, ConfigError> {
        let row: InstanceRow = sqlx::query_as(&format!("SELECT {INSTANCE_COLUMNS} FROM instances WHERE id = $1"))
            .bind(id)
            .fetch_optional(&self.db)
            .await
            .context("failed to read instance")?
            .ok_or_else(|| ConfigError::UnknownInstance(id.to_string()))?;
        Ok(self.describe_all(vec![row]).await?.remove(0))
    }

    /// A page of the instances of `tenants` (`None`: every instance), oldest first.
    pub async fn instances(&self, tenants: Option<&[String]>, page: &Page) -> Result<Vec<Instance>, ConfigError> {
        // The cursor is an instance id; rows sort by (created_at, id).
        let after = "($1 = '' OR (created_at, id) > (SELECT created_at, id FROM instances WHERE id = $1))";
        let after_id = page.after.clone().unwrap_or_default();
        let rows: Vec<InstanceRow> = match tenants {
            None => sqlx::query_as(&format!(
                "SELECT {INSTANCE_COLUMNS} FROM instances WHERE {after} ORDER BY created_at, id LIMIT {}",
                page.limit
            ))
            .bind(&after_id)
            .fetch_all(&self.db)
            .await
            .context("failed to list instances")?,
            Some(tenants) => {
                let mut rows: Vec<InstanceRow> = Vec::new();
                for chunk in tenants.chunks(500) {
                    let sql = format!(
                        "SELECT {INSTANCE_COLUMNS} FROM instances WHERE {after} AND tenant_id IN ({}) \
                         ORDER BY created_at, id LIMIT {}",
                        marks(2, chunk.len()),
                        page.limit
                    );
                    let mut query = sqlx::query_as::<_, InstanceRow>(&sql).bind(&after_id);
                    for t in chunk {
                        query = query.bind(t);
                    }
                    rows.extend(query.fetch_all(&self.db).await.context("failed to list instances")?);
                }
                rows.sort_by(|a, b| (a.created_at, &a.id).cmp(&(b.created_at, &b.id)));
                rows.truncate(page.limit as usize);
                rows
            }
        };
        self.describe_all(rows).await
    }

    /// Instances as the API shows them, with their hostnames (read for these
    /// instances only).
    async fn describe_all(&self, rows: Vec<InstanceRow>) -> Result<Vec<Instance>, ConfigError> {
        let ids: Vec<String> = rows.iter().map(|r| r.id.clone()).collect();
        let mut hosts: HashMap<String, Vec<String>> = HashMap::new();
        let mut pending: HashMap<String, Vec<PendingHost>> = HashMap::new();
        for chunk in ids.chunks(500) {
            let sql = format!(
                "SELECT instance_id, hostname FROM instance_hosts WHERE instance_id IN ({}) ORDER BY hostname",
                marks(1, chunk.len())
            );
            let mut query = sqlx::query_as::<_, (String, String)>(&sql);
            for id in chunk {
                query = query.bind(id);
            }
            for (instance, host) in query.fetch_all(&self.db).await.context("failed to read hostnames")? {
                hosts.entry(instance).or_default().push(host);
            }
            let sql = format!(
                "SELECT instance_id, hostname, token, created_at, checked_at, last_error FROM hostname_claims \
                 WHERE instance_id IN ({}) ORDER BY hostname",
                marks(1, chunk.len())
            );
            let mut query = sqlx::query_as::<_, ClaimRow>(&sql);
            for id in chunk {
                query = query.bind(id);
            }
            for (instance, host, token, created_at, checked_at, last_error) in
                query.fetch_all(&self.db).await.context("failed to read hostname claims")?
            {
                pending
                    .entry(instance)
                    .or_default()
                    .push(PendingHost::new(host, token, created_at, checked_at, last_error));
            }
        }
        Ok(rows
            .into_iter()
            .map(|row| {
                let h = hosts.remove(&row.id).unwrap_or_default();
                let p = pending.remove(&row.id).unwrap_or_default();
                self.describe(row, h, p)
            })
            .collect())
    }

    fn describe(&self, row: InstanceRow, hosts: Vec<String>, pending_hosts: Vec<PendingHost>) -> Instance {
        let slot = self.registry.slot(&row.service);
        let wanted = match &row.pinned_version {
            Some(v) => slot.as_ref().and_then(|s| s.version(v)),
            None => slot.as_ref().and_then(|s| s.active()),
        };
        let wanted_version = wanted.as_ref().map(|v| v.version.clone()).or_else(|| row.pinned_version.clone());
        let applied: Vec<String> = serde_json::from_str(&row.applied_migrations).unwrap_or_default();
        // What the ingress serves, decided the same way it decides.
        let setup = InstanceSetup {
            state: SetupState::parse(&row.setup_state),
            target: row.setup_target.clone(),
            applied: applied.clone(),
            settled: row.settled_version.as_deref().and_then(|v| slot.as_ref().and_then(|s| s.version(v))),
        };
        let running_version = match router::serving(wanted, &setup) {
            router::Serving::Version(v) => Some(v.version.clone()),
            router::Serving::Maintenance | router::Serving::Nothing => wanted_version.clone(),
        };
        Instance {
            platform_hosts: self.policy.platform_names(&row.name, &row.tenant_id),
            id: row.id,
            name: row.name,
            tenant: row.tenant_id,
            service: row.service,
            hosts,
            pending_hosts,
            pinned_version: row.pinned_version,
            pinned_by: row.pinned_by,
            pin_reason: row.pin_reason,
            running_version,
            wanted_version,
            modules: serde_json::from_str(&row.modules).unwrap_or_default(),
            settings: serde_json::from_str(&row.settings).unwrap_or_default(),
            enabled: store::flag(row.enabled),
            ends_at: row.ends_at,
            created_at: row.created_at,
            setup: SetupInfo {
                state: row.setup_state,
                target: row.setup_target,
                error: row.setup_error,
                applied_migrations: applied,
                settled_version: row.settled_version,
                seeded_at: row.seeded_at,
            },
        }
    }

    /// Rebuild the routing table after changes made through other nodes; waits
    /// for this node's own change in progress, so a stale read never replaces a
    /// newer table.
    pub async fn refresh_routes(&self) -> Result<(), ConfigError> {
        let _guard = self.change_lock.lock().await;
        self.rebuild_routes().await
    }

    /// Rebuild the router's table from the database and swap it in.
    pub async fn rebuild_routes(&self) -> Result<(), ConfigError> {
        let (default_bytes, overrides) = self.quotas.database_limits().await?;
        let rows = self.route_rows(None).await?;
        self.load_pinned(&rows).await?;
        for row in &rows {
            let tenant = &row.2;
            let bytes = overrides.get(tenant).copied().unwrap_or(default_bytes);
            self.db_threads.set_tenant_quota(tenant, bytes.max(0) as u64);
        }
        let (routes, instances) = self.routes_of(rows);
        self.router.replace(routes, instances);
        self.load_challenges().await
    }

    /// Route a newly created instance: only its rows are read, and the table is
    /// copied and swapped (creating many instances stays linear).
    async fn add_routes(&self, instance: &str) -> Result<(), ConfigError> {
        let rows = self.route_rows(Some(instance)).await?;
        self.load_pinned(&rows).await?;
        if let Some(row) = rows.first() {
            let bytes = self.quotas.limit(&Subject::Tenant(&row.2), Quota::DatabaseBytes).await?;
            self.db_threads.set_tenant_quota(&row.2, bytes.max(0) as u64);
        }
        let (routes, instances) = self.routes_of(rows);
        self.router.extend(routes, instances);
        self.load_challenges().await
    }

    /// Versions routes are pinned to (or settled on) that this node unloaded:
    /// load them again before the table is built.
    async fn load_pinned(&self, rows: &[RouteRow]) -> Result<(), ConfigError> {
        let mut wanted = std::collections::BTreeSet::new();
        for row in rows {
            for version in [&row.4, &row.10].into_iter().flatten() {
                wanted.insert((row.3.clone(), version.clone()));
            }
        }
        for (service, version) in wanted {
            if self.registry.unloaded.contains_key(&(service.clone(), version.clone())) {
                self.registry.ensure_loaded(&service, &version).await?;
            }
        }
        Ok(())
    }

    async fn load_challenges(&self) -> Result<(), ConfigError> {
        let rows: Vec<(String, String)> = sqlx::query_as("SELECT hostname, token FROM hostname_claims")
            .fetch_all(&self.db)
            .await
            .context("failed to load hostname claims")?;
        let mut challenges: HashMap<String, Vec<String>> = HashMap::new();
        for (host, token) in rows {
            challenges.entry(host).or_default().push(token);
        }
        self.router.replace_challenges(challenges);
        Ok(())
    }

    /// One row per routed hostname: verified custom names, then each instance's
    /// platform names (no custom name can shadow them: tenants cannot claim
    /// names under a platform domain).
    async fn route_rows(&self, instance: Option<&str>) -> Result<Vec<RouteRow>, ConfigError> {
        let custom =
            "SELECT h.hostname, i.id, i.tenant_id, i.service, i.pinned_version, i.modules, i.settings, (CASE WHEN i.enabled THEN 1 ELSE 0 END), i.name, \
                   i.applied_migrations, i.settled_version, i.setup_state, i.setup_target, i.ends_at, b.suspended_reason, i.pinned_by \
                   FROM instance_hosts h JOIN instances i ON i.id = h.instance_id \
                   LEFT JOIN billing_accounts b ON b.tenant_id = i.tenant_id";
        let platform =
            "SELECT '', i.id, i.tenant_id, i.service, i.pinned_version, i.modules, i.settings, (CASE WHEN i.enabled THEN 1 ELSE 0 END), i.name, \
                   i.applied_migrations, i.settled_version, i.setup_state, i.setup_target, i.ends_at, b.suspended_reason, i.pinned_by \
                   FROM instances i LEFT JOIN billing_accounts b ON b.tenant_id = i.tenant_id";
        let rows = match instance {
            Some(id) => {
                let mut rows: Vec<RouteRow> = sqlx::query_as(&format!("{custom} WHERE i.id = $1"))
                    .bind(id)
                    .fetch_all(&self.db)
                    .await
                    .context("failed to load routes")?;
                // Every instance has a route (its jobs run through it), with
                // or without hostnames.
                rows.extend(
                    sqlx::query_as::<_, RouteRow>(&format!("{platform} WHERE i.id = $1"))
                        .bind(id)
                        .fetch_all(&self.db)
                        .await
                        .context("failed to load routes")?,
                );
                rows
            }
            None => {
                let mut rows: Vec<RouteRow> =
                    sqlx::query_as(custom).fetch_all(&self.db).await.context("failed to load routes")?;
                rows.extend(
                    sqlx::query_as::<_, RouteRow>(platform)
                        .fetch_all(&self.db)
                        .await
                        .context("failed to load routes")?,
                );
                rows
            }
        };
        Ok(rows)
    }

    fn routes_of(&self, rows: Vec<RouteRow>) -> (HashMap<String, Arc<Route>>, HashMap<String, Arc<Route>>) {
        let mut routes: HashMap<String, Arc<Route>> = HashMap::new();
        let mut by_instance: HashMap<String, Arc<Route>> = HashMap::new();
        for (
            host,
            instance,
            tenant,
            service,
            pinned,
            modules,
            settings,
            enabled,
            name,
            applied,
            settled,
            state,
            setup_target,
            ends_at,
            suspended,
            pinned_by,
        ) in rows
        {
            let route = match by_instance.get(&instance) {
                Some(route) => route.clone(),
                None => {
                    let Some(slot) = self.registry.slot(&service) else {
                        tracing::warn!(%instance, %service, "instance of an unknown service is not routed");
                        continue;
                    };
                    let target = match pinned.as_deref() {
                        None => VersionTarget::Follow(slot.clone()),
                        Some(version) => match slot.version(version) {
                            Some(loaded) => VersionTarget::Pinned(loaded),
                            None => {
                                tracing::warn!(%instance, %service, %version, "instance pinned to an unknown version is not routed");
                                continue;
                            }
                        },
                    };
                    let route = Arc::new(Route {
                        instance: instance.as_str().into(),
                        tenant: tenant.as_str().into(),
                        target,
                        usage: self.usage.counters(&instance, &tenant),
                        enabled: store::flag(enabled),
                        ends_at,
                        suspended: suspended.map(Arc::from),
                        recent: self.database(&instance, &tenant).recent_use(),
                        db: self.database(&instance, &tenant),
                        features: Arc::new(Features {
                            modules: serde_json::from_str(&modules).unwrap_or_default(),
                            settings: serde_json::from_str::<BTreeMap<String, String>>(&settings)
                                .unwrap_or_default()
                                .into_iter()
                                .collect(),
                        }),
                        setup: InstanceSetup {
                            state: SetupState::parse(&state),
                            target: setup_target,
                            applied: serde_json::from_str(&applied).unwrap_or_default(),
                            settled: settled.and_then(|v| slot.version(&v)),
                        },
                        health: Some(
                            self.router.instance(&instance).and_then(|r| r.health.clone()).unwrap_or_default(),
                        ),
                        gate: match (pinned.as_deref(), pinned_by.as_deref()) {
                            (None, _) => Some(crate::rollout::GateBack::Previous(slot.clone())),
                            (Some(_), Some("canary")) => Some(crate::rollout::GateBack::Active(slot.clone())),
                            _ => None,
                        },
                        jobs: self.queue.as_ref().map(|queue| {
                            Arc::new(crate::runtime::InstanceJobs {
                                queue: queue.clone(),
                                tenant: tenant.as_str().into(),
                                instance: instance.as_str().into(),
                            })
                        }),
                    });
                    by_instance.insert(instance.clone(), route.clone());
                    route
                }
            };
            if host.is_empty() {
                for platform_host in self.policy.platform_names(&name, &tenant) {
                    routes.entry(platform_host).or_insert_with(|| route.clone());
                }
            } else {
                routes.insert(host, route);
            }
        }
        (routes, by_instance)
    }
}

/// hostname ('' for the platform names), instance, tenant, service, pinned
/// version, modules, settings, enabled, instance name, applied migrations,
/// settled version, setup state, setup target, end date, the tenant's suspension, who pinned it
type RouteRow = (
    String,
    String,
    String,
    String,
    Option<String>,
    String,
    String,
    i64,
    String,
    String,
    Option<String>,
    String,
    Option<String>,
    Option<i64>,
    Option<String>,
    Option<String>,
);

/// instance, hostname, token, created_at, checked_at, last_error
type ClaimRow = (String, String, String, i64, Option<i64>, Option<String>);

/// `$first, $first+1, ...`: `count` numbered parameters.
fn marks(first: usize, count: usize) -> String {
    (first..first + count).map(|i| format!("${i}")).collect::<Vec<_>>().join(", ")
}

/// Bind a proven (or operator-bound) hostname to `instance`: other tenants'
/// claims on it end, and so does any reservation.
async fn insert_verified(
    tx: &mut sqlx::Transaction<'_, crate::store::Backend>,
    instance: &str,
    host: &str,
) -> Result<(), ConfigError> {
    let inserted = sqlx::query("INSERT INTO instance_hosts (hostname, instance_id) VALUES ($1, $2)")
        .bind(host)
        .bind(instance)
        .execute(&mut **tx)
        .await;
    match inserted {
        Ok(_) => {}
        Err(e) if store::is_unique_violation(&e) => return Err(ConfigError::HostnameTaken(host.to_string())),
        Err(e) => return Err(anyhow::Error::from(e).context("failed to bind hostname").into()),
    }
    for sql in
        ["DELETE FROM hostname_claims WHERE hostname = $1", "DELETE FROM hostname_reservations WHERE hostname = $1"]
    {
        sqlx::query(sql).bind(host).execute(&mut **tx).await.context("failed to settle hostname")?;
    }
    Ok(())
}

fn json_text(value: &impl Serialize) -> String {
    serde_json::to_string(value).unwrap_or_default()
}

/// Modules must be declared by the version the instance runs.
fn check_modules(
    version: Option<&LoadedVersion>,
    service: &str,
    wanted: &[String],
) -> Result<Vec<String>, ConfigError> {
    let mut modules: Vec<String> = Vec::new();
    for module in wanted {
        let declared = version.is_some_and(|v| v.manifest.declares_module(module));
        if !declared {
            let known = version
                .map(|v| v.manifest.modules.iter().map(|m| m.id.clone()).collect::<Vec<_>>().join(", "))
                .filter(|k| !k.is_empty())
                .unwrap_or_else(|| "none".into());
            return Err(ConfigError::UnknownModule {
                service: service.to_string(),
                version: version.map(|v| v.version.clone()).unwrap_or_else(|| "-".into()),
                module: module.clone(),
                known,
            });
        }
        if !modules.contains(module) {
            modules.push(module.clone());
        }
    }
    modules.sort();
    Ok(modules)
}

fn check_settings(settings: &BTreeMap<String, String>) -> Result<(), ConfigError> {
    if settings.len() > 100 {
        return Err(ConfigError::InvalidSetting(format!("{} settings", settings.len())));
    }
    for (key, value) in settings {
        let key_ok = !key.is_empty()
            && key.len() <= 64
            && key.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '-' | '_' | '.'));
        if !key_ok || value.len() > 4096 {
            return Err(ConfigError::InvalidSetting(key.clone()));
        }
    }
    Ok(())
}

fn normalize_hosts(raw: &[String]) -> Result<Vec<String>, ConfigError> {
    if raw.len() > MAX_HOSTS {
        return Err(ConfigError::TooManyHostnames);
    }
    let mut hosts = Vec::with_capacity(raw.len());
    for host in raw {
        // Configured hostnames carry no port: a port in the Host header is ignored.
        let bare = host.trim();
        let normalized = router::normalize(bare).map_err(|_| ConfigError::InvalidHostname(host.clone()))?;
        if bare.contains(':') || normalized.starts_with('[') {
            return Err(ConfigError::InvalidHostname(host.clone()));
        }
        if !hosts.contains(&normalized) {
            hosts.push(normalized);
        }
    }
    Ok(hosts)
}
