//! Tenants and their instances: an instance is a tenant's copy of a service, bound
//! to hostnames, following the service's active version or pinned to one.
//!
//! Every change rebuilds the router's table from the database and swaps it in, so
//! the next request sees it without a restart and no request ever queries.

mod claims;
mod deletion;
pub mod export;
pub mod hooks;
pub mod hostnames;
mod instances;
mod routes;
pub mod setups;
mod tenant_deletion;
mod tenants;

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use anyhow::Context as _;
use serde::Serialize;

use crate::instancedb as database;
use crate::quota::{Quota, QuotaUse, Quotas, Subject};
use crate::registry::{manifest::validate_name, LoadedVersion, Registry, RegistryError};
use crate::router::{self, InstanceRoutes, InstanceSetup, Route, Router, SetupState, VersionTarget};
use crate::runtime::Features;
use crate::store::{self, Db};
use crate::usage::Usage;
use hostnames::{Method, PendingHost, Policy, Verifier, TXT_LABEL, TXT_PREFIX};
pub use tenant_deletion::TenantDeletion;

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
    #[error("tenant {0:?} is deleted: restore it first (wharf tenant restore {0})")]
    TenantDeleted(String),
    #[error("tenant {0:?} is not deleted")]
    TenantNotDeleted(String),
    #[error("instance {0:?} is deleted: restore it first (wharf instance restore {0})")]
    Deleted(String),
    #[error("instance {0:?} is not deleted")]
    NotDeleted(String),
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
    #[error("this is not an export Wharf can import: {0}")]
    InvalidExport(String),
    #[error("instance {0:?} cannot be exported: {1}")]
    NotExportable(String, String),
    #[error(transparent)]
    Registry(#[from] RegistryError),
    #[error(transparent)]
    Internal(#[from] anyhow::Error),
}

impl From<sqlx::Error> for ConfigError {
    fn from(e: sqlx::Error) -> Self {
        Self::Internal(anyhow::Error::from(e).context("the control plane refused a change"))
    }
}

const MAX_HOSTS: usize = 100;

/// A tenant as the API shows it.
#[derive(Debug, Clone, Serialize, sqlx::FromRow, utoipa::ToSchema)]
pub struct Tenant {
    pub id: String,
    pub display_name: String,
    pub created_at: i64,
    /// When it was deleted: its people lost access, its instances were deleted
    /// with it, and it is restorable until `purge_at`.
    pub deleted_at: Option<i64>,
    pub purge_at: Option<i64>,
}

/// The columns of a [`Tenant`].
const TENANT_COLUMNS: &str = "id, display_name, created_at, deleted_at, purge_at";

/// An instance as the API shows it.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
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
    /// When it was deleted: it routes nothing, and is restorable until
    /// `purge_at`, when its data is destroyed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub deleted_at: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub purge_at: Option<i64>,
}

/// Where an instance's setup stands, as the API shows it.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
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
#[derive(Debug, Clone, serde::Deserialize, utoipa::ToSchema)]
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
    #[serde(default, deserialize_with = "crate::clock::time_opt")]
    #[schema(schema_with = crate::clock::time_or_null_schema)]
    pub ends_at: Option<i64>,
}

/// What to change; absent fields stay as they are.
#[derive(Debug, Clone, Default, serde::Deserialize, utoipa::ToSchema)]
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
    #[serde(default, deserialize_with = "crate::clock::time_change")]
    #[schema(schema_with = crate::clock::time_or_null_schema)]
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
    deleted_at: Option<i64>,
    purge_at: Option<i64>,
}

const INSTANCE_COLUMNS: &str = "id, name, tenant_id, service, pinned_version, modules, settings, \
     (CASE WHEN enabled THEN 1 ELSE 0 END) AS enabled, created_at, setup_state, setup_target, setup_error, \
     applied_migrations, settled_version, seeded_at, ends_at, pinned_by, pin_reason, deleted_at, purge_at";

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
    /// Instances' databases, opened on first use and closed when idle.
    pub databases: Arc<database::Databases>,
    registry: Arc<Registry>,
    router: Arc<Router>,
    usage: Arc<Usage>,
    /// The job queue and billing, which follow instances.
    followers: hooks::Followers,
    /// Where instances keep their SQL (PostgreSQL with a PostgreSQL control
    /// plane) and key-value stores (Redis in a cluster), besides their directories.
    backends: database::Backends,
    /// The platform generation this node has applied.
    seen: Arc<store::Seen>,
    pub quotas: Quotas,
    policy: Policy,
    verifier: Verifier,
    /// How long a released hostname stays reserved to its tenant.
    reservation: std::time::Duration,
    /// How long a deleted instance stays restorable before its data is destroyed.
    deletion_grace: std::time::Duration,
    /// The longest a request runs: what one still in flight when its instance
    /// was purged may write meanwhile is swept after this.
    request_timeout: std::time::Duration,
    tenant_creation: crate::config::TenantCreation,
    // Changes are serialised so two rebuilds never race to swap the table.
    change_lock: tokio::sync::Mutex<()>,
}

/// What a configurator is made of: the control plane, the rooms below it that
/// it reads and feeds, and the rooms above it that follow its instances.
pub struct Parts {
    pub db: Db,
    pub registry: Arc<Registry>,
    pub router: Arc<Router>,
    pub usage: Arc<Usage>,
    pub db_threads: Arc<database::DbThreads>,
    pub backends: database::Backends,
    pub seen: Arc<store::Seen>,
    pub followers: hooks::Followers,
}

impl Configurator {
    /// A configurator over `parts.db`, feeding `parts.router`.
    pub fn new(parts: Parts, config: &crate::config::NodeConfig) -> anyhow::Result<Self> {
        let Parts { db, registry, router, usage, db_threads, backends, seen, followers } = parts;
        let trust = &config.trust;
        let databases =
            database::Databases::new(config.data_dir.join("instances"), db_threads, backends.clone(), db.clone());
        Ok(Self {
            backends,
            followers,
            seen,
            quotas: Quotas::new(db.clone(), trust.quotas),
            policy: Policy::new(trust),
            verifier: Verifier::new(trust.challenge_connect, &trust.platform_addresses, trust.dns_server)
                .context("failed to set up the DNS resolver for hostname challenges")?,
            reservation: trust.hostname_reservation,
            deletion_grace: config.deletion_grace,
            request_timeout: config.limits.request_timeout,
            tenant_creation: trust.tenant_creation,
            db,
            instances_dir: config.data_dir.join("instances"),
            databases,
            registry,
            router,
            usage,
            change_lock: tokio::sync::Mutex::new(()),
        })
    }

    /// Connections to instance databases on PostgreSQL: open now, and the most
    /// this node opens (`None` on SQLite).
    pub fn instance_connections(&self) -> Option<(usize, usize)> {
        self.backends.postgres.as_ref().map(|pg| (pg.open_count(), pg.max()))
    }

    /// Guests' database calls on this node, per backend.
    pub fn database_calls(&self) -> &database::Calls {
        &self.backends.calls
    }

    /// SQLite statements that turned out heavy, and of those, the ones raised
    /// from idle priority, starved (see [`database::DbThreads::heavy_statements`]).
    pub fn heavy_statements(&self) -> (u64, u64) {
        self.databases.threads().heavy_statements()
    }

    /// The databases of `tenant`'s instance, open.
    pub(super) async fn open_database(
        &self,
        instance: &str,
        tenant: &str,
    ) -> Result<Arc<database::Opened>, ConfigError> {
        self.databases.handle(&Arc::from(instance), &Arc::from(tenant)).open().await.map_err(|e| {
            ConfigError::Internal(anyhow::anyhow!("failed to open the databases of instance {instance}: {e}"))
        })
    }
}

/// `$first, $first+1, ...`: `count` numbered parameters.
fn marks(first: usize, count: usize) -> String {
    (first..first + count).map(|i| format!("${i}")).collect::<Vec<_>>().join(", ")
}

fn json_text(value: &impl Serialize) -> String {
    serde_json::to_string(value).unwrap_or_default()
}

#[cfg(test)]
mod tests;
