//! Tenants and their instances: an instance is a tenant's copy of a service, bound
//! to hostnames, following the service's active version or pinned to one.
//!
//! Every change rebuilds the router's table from the database and swaps it in, so
//! the next request sees it without a restart and no request ever queries.

pub mod database;

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use anyhow::Context as _;
use serde::Serialize;

use crate::billing::Usage;
use crate::registry::{manifest::validate_name, LoadedVersion, Registry, RegistryError};
use crate::router::{self, Route, Router, VersionTarget};
use crate::runtime::Features;
use crate::store::{self, Db};

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
    #[error("an instance needs at least one hostname (--host)")]
    NoHostnames,
    #[error("at most {MAX_HOSTS} hostnames per instance")]
    TooManyHostnames,
    #[error("hostname {0:?} is already in use by another instance")]
    HostnameTaken(String),
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
    pub tenant: String,
    pub service: String,
    pub hosts: Vec<String>,
    /// The version the instance is pinned to; `None` follows the active version.
    pub pinned_version: Option<String>,
    /// The version requests run now.
    pub running_version: Option<String>,
    /// Enabled modules.
    pub modules: Vec<String>,
    /// Settings (site name, language, ...).
    pub settings: BTreeMap<String, String>,
    /// A disabled instance answers 410; its data is kept.
    pub enabled: bool,
    pub created_at: i64,
}

/// What to create.
#[derive(Debug, Clone, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewInstance {
    pub tenant: String,
    pub service: String,
    pub hosts: Vec<String>,
    #[serde(default)]
    pub version: Option<String>,
    /// Modules to enable (ids the service's manifest declares).
    #[serde(default)]
    pub modules: Vec<String>,
    /// Settings.
    #[serde(default)]
    pub settings: BTreeMap<String, String>,
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
}

#[derive(sqlx::FromRow)]
struct InstanceRow {
    id: String,
    tenant_id: String,
    service: String,
    pinned_version: Option<String>,
    modules: String,
    settings: String,
    enabled: bool,
    created_at: i64,
}

const INSTANCE_COLUMNS: &str = "id, tenant_id, service, pinned_version, modules, settings, enabled, created_at";

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
    // Changes are serialised so two rebuilds never race to swap the table.
    change_lock: tokio::sync::Mutex<()>,
}

impl Configurator {
    /// A configurator over `db`, feeding `router`.
    pub fn new(
        db: Db,
        registry: Arc<Registry>,
        router: Arc<Router>,
        usage: Arc<Usage>,
        data_dir: &std::path::Path,
        db_threads: Arc<database::DbThreads>,
    ) -> Self {
        Self {
            db,
            instances_dir: data_dir.join("instances"),
            databases: dashmap::DashMap::new(),
            open_databases: database::OpenDatabases::new(database::MAX_OPEN_DATABASES),
            db_threads,
            registry,
            router,
            usage,
            change_lock: tokio::sync::Mutex::new(()),
        }
    }

    /// The databases of `tenant`'s instance (opened on first use).
    pub fn database(&self, instance: &str, tenant: &str) -> Arc<database::InstanceDb> {
        self.databases
            .entry(instance.to_string())
            .or_insert_with(|| {
                Arc::new(database::InstanceDb::new(
                    &self.instances_dir.join(instance),
                    tenant,
                    self.db_threads.clone(),
                    self.open_databases.clone(),
                ))
            })
            .clone()
    }

    /// Create a tenant.
    pub async fn create_tenant(&self, id: &str, display_name: Option<&str>) -> Result<Tenant, ConfigError> {
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
        let inserted = sqlx::query("INSERT INTO tenants (id, display_name, created_at) VALUES ($1, $2, $3)")
            .bind(&tenant.id)
            .bind(&tenant.display_name)
            .bind(tenant.created_at)
            .execute(&self.db)
            .await;
        match inserted {
            Ok(_) => Ok(tenant),
            Err(e) if store::is_unique_violation(&e) => Err(ConfigError::TenantExists(id.to_string())),
            Err(e) => Err(anyhow::Error::from(e).context("failed to create tenant").into()),
        }
    }

    /// The tenants among `ids` (filtered in the database, not after loading all).
    pub async fn tenants_in(&self, ids: &[String]) -> Result<Vec<Tenant>, ConfigError> {
        let mut tenants = Vec::with_capacity(ids.len());
        // In chunks, within SQLite's bound on parameters.
        for chunk in ids.chunks(500) {
            let marks: Vec<String> = (1..=chunk.len()).map(|i| format!("${i}")).collect();
            let sql = format!(
                "SELECT id, display_name, created_at FROM tenants WHERE id IN ({}) ORDER BY id",
                marks.join(", ")
            );
            let mut query = sqlx::query_as::<_, Tenant>(&sql);
            for id in chunk {
                query = query.bind(id);
            }
            tenants.extend(query.fetch_all(&self.db).await.context("failed to list tenants")?);
        }
        tenants.sort_by(|a, b| a.id.cmp(&b.id));
        Ok(tenants)
    }

    /// Every tenant.
    pub async fn tenants(&self) -> Result<Vec<Tenant>, ConfigError> {
        Ok(sqlx::query_as("SELECT id, display_name, created_at FROM tenants ORDER BY id")
            .fetch_all(&self.db)
            .await
            .context("failed to list tenants")?)
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

    /// Create an instance and route its hostnames.
    pub async fn create_instance(&self, new: NewInstance) -> Result<Instance, ConfigError> {
        self.tenant(&new.tenant).await?;
        let slot =
            self.registry.slot(&new.service).ok_or_else(|| RegistryError::UnknownService(new.service.clone()))?;
        if let Some(version) = &new.version {
            if slot.version(version).is_none() {
                return Err(self.registry.unknown_version(&new.service, version).await.into());
            }
        }
        let hosts = normalize_hosts(&new.hosts)?;
        let version = match &new.version {
            Some(v) => slot.version(v),
            None => slot.active(),
        };
        let modules = check_modules(version.as_deref(), &new.service, &new.modules)?;
        check_settings(&new.settings)?;
        let id = format!("inst-{}", &uuid::Uuid::new_v4().simple().to_string()[..12]);

        let _guard = self.change_lock.lock().await;
        let mut tx = self.db.begin().await.context("failed to begin transaction")?;
        sqlx::query(
            "INSERT INTO instances (id, tenant_id, service, pinned_version, modules, settings, enabled, created_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
        )
        .bind(&id)
        .bind(&new.tenant)
        .bind(&new.service)
        .bind(&new.version)
        .bind(json_text(&modules))
        .bind(json_text(&new.settings))
        .bind(true)
        .bind(store::now())
        .execute(&mut *tx)
        .await
        .context("failed to create instance")?;
        insert_hosts(&mut tx, &id, &hosts).await?;
        // The instance's own database exists before anyone can reach the instance.
        let db = self.database(&id, &new.tenant);
        tokio::task::spawn_blocking(move || db.provision())
            .await
            .context("provisioning task failed")?
            .map_err(|e| anyhow::anyhow!("failed to provision the instance database: {e}"))?;
        tx.commit().await.context("failed to commit instance")?;
        self.add_routes(&id).await?;
        tracing::info!(instance = %id, tenant = %new.tenant, service = %new.service, ?hosts, "instance created");
        self.instance(&id).await
    }

    /// Change an instance's hostnames or version policy.
    pub async fn update_instance(&self, id: &str, change: InstanceChange) -> Result<Instance, ConfigError> {
        // Read and write under one lock: two concurrent changes of different
        // fields both land, neither is lost to the other's stale copy.
        let _guard = self.change_lock.lock().await;
        let current = self.instance(id).await?;
        let pinned = match change.version.as_deref() {
            None => current.pinned_version.clone(),
            Some("active") => None,
            Some(version) => {
                let known = self.registry.slot(&current.service).and_then(|s| s.version(version));
                if known.is_none() {
                    return Err(self.registry.unknown_version(&current.service, version).await.into());
                }
                Some(version.to_string())
            }
        };
        let hosts = change.hosts.as_deref().map(normalize_hosts).transpose()?;
        let slot = self.registry.slot(&current.service);
        let version = match &pinned {
            Some(v) => slot.as_ref().and_then(|s| s.version(v)),
            None => slot.as_ref().and_then(|s| s.active()),
        };
        let modules = match &change.modules {
            Some(modules) => check_modules(version.as_deref(), &current.service, modules)?,
            None => current.modules.clone(),
        };
        let settings = change.settings.clone().unwrap_or_else(|| current.settings.clone());
        check_settings(&settings)?;
        let enabled = change.enabled.unwrap_or(current.enabled);

        let mut tx = self.db.begin().await.context("failed to begin transaction")?;
        sqlx::query(
            "UPDATE instances SET pinned_version = $1, modules = $2, settings = $3, enabled = $4 WHERE id = $5",
        )
        .bind(&pinned)
        .bind(json_text(&modules))
        .bind(json_text(&settings))
        .bind(enabled)
        .bind(id)
        .execute(&mut *tx)
        .await
        .context("failed to update instance")?;
        if let Some(hosts) = &hosts {
            sqlx::query("DELETE FROM instance_hosts WHERE instance_id = $1")
                .bind(id)
                .execute(&mut *tx)
                .await
                .context("failed to replace hostnames")?;
            insert_hosts(&mut tx, id, hosts).await?;
        }
        tx.commit().await.context("failed to commit instance change")?;
        self.rebuild_routes().await?;
        self.instance(id).await
    }

    /// One instance.
    pub async fn instance(&self, id: &str) -> Result<Instance, ConfigError> {
        let row: InstanceRow = sqlx::query_as(&format!("SELECT {INSTANCE_COLUMNS} FROM instances WHERE id = $1"))
            .bind(id)
            .fetch_optional(&self.db)
            .await
            .context("failed to read instance")?
            .ok_or_else(|| ConfigError::UnknownInstance(id.to_string()))?;
        let mut hosts = self.hosts_by_instance(Some(id)).await?;
        Ok(self.describe(row, hosts.remove(id).unwrap_or_default()))
    }

    /// Every instance, or a tenant's.
    pub async fn instances(&self, tenant: Option<&str>) -> Result<Vec<Instance>, ConfigError> {
        let rows: Vec<InstanceRow> = match tenant {
            Some(t) => {
                self.tenant(t).await?;
                sqlx::query_as(&format!(
                    "SELECT {INSTANCE_COLUMNS} FROM instances WHERE tenant_id = $1 ORDER BY created_at, id"
                ))
                .bind(t)
                .fetch_all(&self.db)
                .await
            }
            None => {
                sqlx::query_as(&format!("SELECT {INSTANCE_COLUMNS} FROM instances ORDER BY created_at, id"))
                    .fetch_all(&self.db)
                    .await
            }
        }
        .context("failed to list instances")?;
        let mut hosts = self.hosts_by_instance(None).await?;
        Ok(rows
            .into_iter()
            .map(|row| {
                let h = hosts.remove(&row.id).unwrap_or_default();
                self.describe(row, h)
            })
            .collect())
    }

    fn describe(&self, row: InstanceRow, hosts: Vec<String>) -> Instance {
        let running_version = match &row.pinned_version {
            Some(v) => Some(v.clone()),
            None => self.registry.slot(&row.service).and_then(|s| s.active()).map(|v| v.version.clone()),
        };
        Instance {
            id: row.id,
            tenant: row.tenant_id,
            service: row.service,
            hosts,
            pinned_version: row.pinned_version,
            running_version,
            modules: serde_json::from_str(&row.modules).unwrap_or_default(),
            settings: serde_json::from_str(&row.settings).unwrap_or_default(),
            enabled: row.enabled,
            created_at: row.created_at,
        }
    }

    async fn hosts_by_instance(&self, only: Option<&str>) -> Result<HashMap<String, Vec<String>>, ConfigError> {
        let rows: Vec<(String, String)> = match only {
            Some(id) => {
                sqlx::query_as(
                    "SELECT instance_id, hostname FROM instance_hosts WHERE instance_id = $1 ORDER BY hostname",
                )
                .bind(id)
                .fetch_all(&self.db)
                .await
            }
            None => {
                sqlx::query_as("SELECT instance_id, hostname FROM instance_hosts ORDER BY hostname")
                    .fetch_all(&self.db)
                    .await
            }
        }
        .context("failed to read hostnames")?;
        let mut map: HashMap<String, Vec<String>> = HashMap::new();
        for (instance, host) in rows {
            map.entry(instance).or_default().push(host);
        }
        Ok(map)
    }

    /// Rebuild the router's table from the database and swap it in.
    pub async fn rebuild_routes(&self) -> Result<(), ConfigError> {
        let rows = self.route_rows(None).await?;
        self.router.replace(self.routes_of(rows));
        Ok(())
    }

    /// Route a newly created instance: only its rows are read, and the table is
    /// copied and swapped (creating many instances stays linear).
    async fn add_routes(&self, instance: &str) -> Result<(), ConfigError> {
        let rows = self.route_rows(Some(instance)).await?;
        self.router.extend(self.routes_of(rows));
        Ok(())
    }

    async fn route_rows(&self, instance: Option<&str>) -> Result<Vec<RouteRow>, ConfigError> {
        let sql =
            "SELECT h.hostname, i.id, i.tenant_id, i.service, i.pinned_version, i.modules, i.settings, i.enabled \
                   FROM instance_hosts h JOIN instances i ON i.id = h.instance_id";
        let rows = match instance {
            Some(id) => sqlx::query_as(&format!("{sql} WHERE i.id = $1")).bind(id).fetch_all(&self.db).await,
            None => sqlx::query_as(sql).fetch_all(&self.db).await,
        };
        Ok(rows.context("failed to load routes")?)
    }

    fn routes_of(&self, rows: Vec<RouteRow>) -> HashMap<String, Arc<Route>> {
        let mut routes: HashMap<String, Arc<Route>> = HashMap::new();
        let mut by_instance: HashMap<String, Arc<Route>> = HashMap::new();
        for (host, instance, tenant, service, pinned, modules, settings, enabled) in rows {
            let route = match by_instance.get(&instance) {
                Some(route) => route.clone(),
                None => {
                    let Some(slot) = self.registry.slot(&service) else {
                        tracing::warn!(%instance, %service, "instance of an unknown service is not routed");
                        continue;
                    };
                    let target = match pinned.as_deref() {
                        None => VersionTarget::Follow(slot),
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
                        usage: self.usage.counters(&instance),
                        enabled,
                        recent: self.database(&instance, &tenant).recent_use(),
                        db: self.database(&instance, &tenant),
                        features: Arc::new(Features {
                            modules: serde_json::from_str(&modules).unwrap_or_default(),
                            settings: serde_json::from_str::<BTreeMap<String, String>>(&settings)
                                .unwrap_or_default()
                                .into_iter()
                                .collect(),
                        }),
                    });
                    by_instance.insert(instance, route.clone());
                    route
                }
            };
            routes.insert(host, route);
        }
        routes
    }
}

/// hostname, instance, tenant, service, pinned version, modules, settings, enabled
type RouteRow = (String, String, String, String, Option<String>, String, String, bool);

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
    if raw.is_empty() {
        return Err(ConfigError::NoHostnames);
    }
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

async fn insert_hosts(
    tx: &mut sqlx::Transaction<'_, sqlx::Sqlite>,
    instance: &str,
    hosts: &[String],
) -> Result<(), ConfigError> {
    for host in hosts {
        let inserted = sqlx::query("INSERT INTO instance_hosts (hostname, instance_id) VALUES ($1, $2)")
            .bind(host)
            .bind(instance)
            .execute(&mut **tx)
            .await;
        match inserted {
            Ok(_) => {}
            Err(e) if store::is_unique_violation(&e) => return Err(ConfigError::HostnameTaken(host.clone())),
            Err(e) => return Err(anyhow::Error::from(e).context("failed to bind hostname").into()),
        }
    }
    Ok(())
}
