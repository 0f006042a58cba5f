//! Services and their versions: upload validation, compilation, the on-disk cache
//! of compiled artifacts, and the atomic switch of a service's active version.
//!
//! Versions are immutable and content-addressed: the component's bytes live in
//! `components/<sha256>.wasm`, its compiled form in
//! `compiled/<sha256>-<engine fingerprint>.cwasm`, so a restart deserializes
//! instead of compiling. Each loaded version holds a `ProxyPre`; a service's active
//! version sits behind an `ArcSwap`, so activation is one pointer store and
//! requests already running finish on the version they started with.

mod deletion;
pub mod guards;
mod loading;
pub mod manifest;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use crate::runtime::ProxyPre;
use anyhow::Context as _;
use arc_swap::ArcSwapOption;
use dashmap::DashMap;
use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::runtime::{InvalidComponent, Runtime};
use crate::store::{self, Db};
pub use guards::RouteGuards;
pub use manifest::{validate_name, SqlDialect};
pub use manifest::{JobDecl, Manifest, ManifestError, MigrationDecl, ModuleDecl, PermissionDecl};

/// A version compiled and linked, ready to serve.
pub struct LoadedVersion {
    /// Service name.
    pub service: String,
    /// Semantic version.
    pub version: String,
    /// The version as the `x-wharf-version` response header (built once).
    pub version_header: Option<http::HeaderValue>,
    /// sha256 of the component bytes, hex.
    pub sha256: String,
    /// The pre-instantiated component.
    pub pre: ProxyPre,
    /// The manifest published with it.
    pub manifest: Manifest,
    /// Routes guarded by the manifest's permissions.
    pub guards: RouteGuards,
    /// Routes that belong to a module.
    pub module_routes: RouteGuards,
    /// The job entry points, when the component exports `wharf:platform/worker`.
    pub worker: Option<crate::runtime::WorkerPre>,
    /// Unique per loaded version in this process: a reused sandbox is lent
    /// only to requests of the version it was started from.
    pub serial: u64,
    /// Whether (and how far) its manifest lets an instance's sandbox serve
    /// several requests.
    pub reuse: Option<crate::runtime::ReusePolicy>,
    /// Requests this node served with it since it last became active here, and
    /// how many of those failed (5xx); a promotion's health gate reads them.
    pub served: std::sync::atomic::AtomicU64,
    pub failed: std::sync::atomic::AtomicU64,
    /// Its request series, resolved by the ingress on its first request.
    pub metrics: std::sync::OnceLock<std::sync::Arc<crate::metrics::VersionSeries>>,
    /// When it last became the active version on this node (Unix ms; 0: before
    /// this node started). The health gate judges only fresh promotions.
    pub activated_ms: std::sync::atomic::AtomicI64,
    /// When something last asked for it to be loaded (a pin, an activation):
    /// it is not unloaded for a minute after, whatever the tables say.
    touched_ms: std::sync::atomic::AtomicI64,
}

impl LoadedVersion {
    /// Whether an instance at `applied` migrations (and `seeded` or not) needs
    /// a setup (its migrations, its seeder) before it runs this version.
    pub fn needs_setup(&self, applied: &[String], seeded: bool) -> bool {
        self.manifest.migrations.iter().any(|m| !applied.contains(&m.name)) || (!seeded && self.worker.is_some())
    }

    fn new(sha256: String, pre: ProxyPre, manifest: Manifest, worker: Option<crate::runtime::WorkerPre>) -> Self {
        let guards = RouteGuards::permissions(&manifest);
        let module_routes = RouteGuards::modules(&manifest);
        static SERIAL: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
        let reuse = manifest.service.reuse.map(|r| crate::runtime::ReusePolicy {
            requests: r.requests,
            idle: std::time::Duration::from_secs(u64::from(r.idle_seconds)),
        });
        Self {
            worker,
            serial: SERIAL.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
            reuse,
            served: Default::default(),
            failed: Default::default(),
            metrics: Default::default(),
            activated_ms: Default::default(),
            touched_ms: Default::default(),
            module_routes,
            service: manifest.service.name.clone(),
            version: manifest.service.version.clone(),
            version_header: http::HeaderValue::from_str(&manifest.service.version).ok(),
            sha256,
            pre,
            manifest,
            guards,
        }
    }

    /// Whether this version declares `permission` (a name within the service).
    pub fn declares(&self, permission: &str) -> bool {
        self.manifest.permissions.iter().any(|p| p.name == permission)
    }
}

/// What the job queue checks of the version a guest queues a job from.
impl crate::runtime::Enqueuer for LoadedVersion {
    fn service(&self) -> &str {
        &self.service
    }

    fn version(&self) -> &str {
        &self.version
    }

    fn accepts(&self, kind: &str, job_version: u32) -> bool {
        self.manifest.accepts(kind, job_version)
    }
}

/// A service's loaded versions and the one following instances run.
pub struct ServiceSlot {
    /// Service name.
    pub name: String,
    active: ArcSwapOption<LoadedVersion>,
    /// The version active before the current one (`wharf rollback` returns to it).
    previous: std::sync::Mutex<Option<String>>,
    versions: DashMap<String, Arc<LoadedVersion>>,
}

impl ServiceSlot {
    fn new(name: &str) -> Self {
        Self {
            name: name.to_string(),
            active: ArcSwapOption::empty(),
            previous: std::sync::Mutex::new(None),
            versions: DashMap::new(),
        }
    }

    /// The active version, if any (one atomic load).
    pub fn active(&self) -> Option<Arc<LoadedVersion>> {
        self.active.load_full()
    }

    /// A specific loaded version.
    pub fn version(&self, version: &str) -> Option<Arc<LoadedVersion>> {
        self.versions.get(version).map(|v| v.clone())
    }

    /// The version active before the current one.
    pub fn previous(&self) -> Option<String> {
        self.previous.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    fn set_previous(&self, version: Option<String>) {
        *self.previous.lock().unwrap_or_else(|e| e.into_inner()) = version;
    }

    /// Every version loaded on this node.
    pub fn versions(&self) -> Vec<Arc<LoadedVersion>> {
        self.versions.iter().map(|v| v.clone()).collect()
    }

    /// Every module any loaded version declares.
    pub fn declared_modules(&self) -> std::collections::BTreeSet<String> {
        self.versions.iter().flat_map(|v| v.manifest.modules.iter().map(|m| m.id.clone()).collect::<Vec<_>>()).collect()
    }
}

/// Why a registry operation was refused.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error(transparent)]
    Manifest(#[from] ManifestError),
    #[error(transparent)]
    Component(#[from] InvalidComponent),
    #[error("{service} {version} is already published with different content (sha256 {existing}); versions are immutable, publish a new version number")]
    VersionConflict { service: String, version: String, existing: String },
    #[error("the manifest names service {manifest:?} but the upload is for {path:?}")]
    NameMismatch { manifest: String, path: String },
    #[error("no service named {0:?}; publish it first with `wharf publish`")]
    UnknownService(String),
    #[error("service {service:?} has no version {version:?} (published: {known})")]
    UnknownVersion { service: String, version: String, known: String },
    #[error(
        "{service} {version} declares SQL dialects [{declared}], but this platform keeps instance databases in \
         {}: add \"{platform}\" to `sql` under [service] in wharf.toml (with statements it accepts; \
         `sql::dialect()` tells the guest which database it has) and publish a new version",
        platform.product()
    )]
    Dialect { service: String, version: String, declared: String, platform: SqlDialect },
    #[error(
        "{service} {version} declares [[jobs]] but its component does not export `wharf:platform/worker`: \
         export it (with the SDK, `wharf_sdk::worker!(run_job)`) or remove the [[jobs]] entries"
    )]
    NoWorker { service: String, version: String },
    #[error("{service} {version} cannot be deleted: {reason}")]
    InUse { service: String, version: String, reason: String },
    #[error("{service} {version} cannot be loaded on this node: {reason}")]
    NotLoadable { service: String, version: String, reason: String },
    #[error(transparent)]
    Internal(#[from] anyhow::Error),
}

/// A version as the API shows it.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct VersionInfo {
    pub service: String,
    pub version: String,
    pub sha256: String,
    pub size_bytes: i64,
    pub description: Option<String>,
    pub created_at: i64,
    pub active: bool,
    /// Whether an instance's sandbox serves several requests (`reuse` in its manifest).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reuse: Option<crate::registry::manifest::ReuseDecl>,
    /// The linear memory its component starts with (its largest memory's
    /// initial size, in bytes): what each fresh sandbox is given and resets
    /// after its request, so what a request without `reuse` pays for beyond the
    /// handler's own work. `null` until a node has loaded the version.
    pub initial_memory_bytes: Option<i64>,
}

/// A service as the API shows it.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct ServiceInfo {
    pub name: String,
    pub active_version: Option<String>,
    pub versions: Vec<VersionInfo>,
}

/// Result of a publish.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Published {
    /// `false` when the same bytes were already published under this version.
    pub created: bool,
    #[serde(flatten)]
    pub version: VersionInfo,
}

/// Counters showing whether versions were compiled or loaded from the cache.
#[derive(Debug, Default, Serialize)]
pub struct CacheStats {
    pub compiled: AtomicU64,
    pub loaded_from_cache: AtomicU64,
}

/// The registry of one node.
pub struct Registry {
    /// The platform generation this node has applied.
    seen: Arc<store::Seen>,
    db: Db,
    runtime: Arc<Runtime>,
    components_dir: PathBuf,
    compiled_dir: PathBuf,
    services: DashMap<String, Arc<ServiceSlot>>,
    // Publishes are rare and check-then-insert; one at a time keeps that atomic.
    publish_lock: tokio::sync::Mutex<()>,
    /// Held while the active version changes in the database and in memory.
    activate_lock: tokio::sync::Mutex<()>,
    stats: CacheStats,
    /// Versions this node failed to load, with why (reported to the fleet).
    pub failed: DashMap<(String, String), String>,
    /// Versions this node unloaded because nothing used them; loaded again when
    /// something needs them.
    pub unloaded: DashMap<(String, String), ()>,
    /// One load per version at a time: a catch-up that needs a version being
    /// compiled in the background waits for that compile instead of starting
    /// another.
    loading: DashMap<(String, String), Arc<tokio::sync::Mutex<()>>>,
    /// Versions waiting for (or in) a background load.
    queued: DashMap<(String, String), ()>,
    /// Failed versions: attempts so far, and when the next may start.
    retry: DashMap<(String, String), (u32, std::time::Instant)>,
    /// Background loads run one at a time: a compile already uses every core.
    background: Arc<tokio::sync::Semaphore>,
    /// Signalled when a background load finished: routes that had to skip a
    /// version (pinned to one this node could not load) may use it now.
    pub loaded: Arc<tokio::sync::Notify>,
}

/// First wait before a failed version is tried again; doubled each time.
const RETRY_FIRST: std::time::Duration = std::time::Duration::from_secs(5);
/// Longest wait between two tries of a failed version.
const RETRY_MAX: std::time::Duration = std::time::Duration::from_secs(300);

#[derive(Clone, sqlx::FromRow)]
struct VersionRow {
    service: String,
    version: String,
    sha256: String,
    size_bytes: i64,
    manifest: String,
    created_at: i64,
    active_version: Option<String>,
    initial_memory_bytes: Option<i64>,
}

impl VersionRow {
    fn info(&self) -> VersionInfo {
        let service = Manifest::parse(&self.manifest).ok().map(|m| m.service);
        let reuse = service.as_ref().and_then(|s| s.reuse);
        let description = service.and_then(|s| s.description);
        VersionInfo {
            service: self.service.clone(),
            version: self.version.clone(),
            sha256: self.sha256.clone(),
            size_bytes: self.size_bytes,
            description,
            created_at: self.created_at,
            active: self.active_version.as_deref() == Some(self.version.as_str()),
            reuse,
            initial_memory_bytes: self.initial_memory_bytes,
        }
    }
}

const VERSION_COLUMNS: &str =
    "v.service, v.version, v.sha256, v.size_bytes, v.manifest, v.created_at, s.active_version, \
     v.initial_memory_bytes FROM service_versions v JOIN services s ON s.name = v.service";

impl Registry {
    /// Open the registry and load every published version, from the compiled cache
    /// where possible.
    pub async fn open(db: Db, runtime: Arc<Runtime>, data_dir: &Path, seen: Arc<store::Seen>) -> anyhow::Result<Self> {
        let components_dir = data_dir.join("components");
        let compiled_dir = data_dir.join("compiled");
        for dir in [&components_dir, &compiled_dir] {
            std::fs::create_dir_all(dir).with_context(|| format!("failed to create {dir:?}"))?;
        }
        let registry = Self {
            seen,
            db,
            runtime,
            components_dir,
            compiled_dir,
            services: DashMap::new(),
            publish_lock: tokio::sync::Mutex::new(()),
            activate_lock: tokio::sync::Mutex::new(()),
            stats: CacheStats::default(),
            failed: DashMap::new(),
            unloaded: DashMap::new(),
            loading: DashMap::new(),
            queued: DashMap::new(),
            retry: DashMap::new(),
            background: Arc::new(tokio::sync::Semaphore::new(1)),
            loaded: Arc::new(tokio::sync::Notify::new()),
        };
        registry.load_all().await?;
        Ok(registry)
    }

    fn compiled_path(&self, sha256: &str) -> PathBuf {
        self.compiled_dir.join(format!("{sha256}-{}.cwasm", self.runtime.engine_fingerprint()))
    }

    fn slot_or_new(&self, name: &str) -> Arc<ServiceSlot> {
        self.services.entry(name.to_string()).or_insert_with(|| Arc::new(ServiceSlot::new(name))).clone()
    }

    /// Every service slot on this node.
    pub fn slots(&self) -> Vec<Arc<ServiceSlot>> {
        self.services.iter().map(|s| s.clone()).collect()
    }

    /// The slot of a service, if it has been published.
    pub fn slot(&self, name: &str) -> Option<Arc<ServiceSlot>> {
        self.services.get(name).map(|s| s.clone())
    }

    /// How many versions were compiled vs loaded from the cache since start.
    pub fn stats(&self) -> &CacheStats {
        &self.stats
    }

    /// Publish a version: validate the manifest and component, compile once, cache
    /// the artifact and record the version. Nothing is stored unless all checks pass.
    /// The first version of a service becomes active; later ones when `activate`.
    pub async fn publish(
        &self,
        expected_service: Option<&str>,
        manifest_text: &str,
        component: Vec<u8>,
        activate: bool,
    ) -> Result<Published, RegistryError> {
        let manifest = Manifest::parse(manifest_text)?;
        let service = manifest.service.name.clone();
        let version = manifest.service.version.clone();
        if let Some(expected) = expected_service {
            if expected != service {
                return Err(RegistryError::NameMismatch { manifest: service, path: expected.to_string() });
            }
        }
        let sha256 = hex::encode(Sha256::digest(&component));
        let _guard = self.publish_lock.lock().await;

        if let Some(existing) = self.find_version(&service, &version).await? {
            if existing.sha256 == sha256 {
                let version = if activate { self.activate(&service, &version).await? } else { existing.info() };
                return Ok(Published { created: false, version });
            }
            return Err(RegistryError::VersionConflict { service, version, existing: existing.sha256 });
        }

        let (pre, component_bytes, initial_memory) = self.compile_new(component, &sha256).await?;
        self.stats.compiled.fetch_add(1, Ordering::Relaxed);
        let worker = self.runtime.prepare_worker(&pre);
        if !manifest.jobs.is_empty() && worker.is_none() {
            return Err(RegistryError::NoWorker { service, version });
        }

        let _activating = self.activate_lock.lock().await;
        let mut tx = crate::store::begin(&self.db).await.context("failed to begin transaction")?;
        let record = NewVersion {
            service: &service,
            version: &version,
            sha256: &sha256,
            manifest_text,
            component: &component_bytes,
            initial_memory,
        };
        let activated = record.insert(&mut tx, store::dialect(&self.db), activate).await?;
        let loaded = Arc::new(LoadedVersion::new(sha256.clone(), pre, manifest, worker));
        store::commit_change_for(tx, &self.seen, store::Change::Service(&service), || async {
            let slot = self.slot_or_new(&service);
            slot.versions.insert(version.clone(), loaded.clone());
            if activated {
                slot.active.store(Some(loaded));
            }
            anyhow::Ok(())
        })
        .await
        .context("failed to commit publish")?;
        tracing::info!(%service, %version, %sha256, activated, "published");
        let info = self
            .find_version(&service, &version)
            .await?
            .map(|row| row.info())
            .ok_or_else(|| anyhow::anyhow!("published version vanished"))?;
        Ok(Published { created: true, version: info })
    }

    /// The dialect instance databases speak on this platform: PostgreSQL with a
    /// PostgreSQL control plane, SQLite otherwise.
    pub fn sql_dialect(&self) -> SqlDialect {
        match store::dialect(&self.db) {
            store::Dialect::Postgres => SqlDialect::Postgres,
            store::Dialect::Sqlite => SqlDialect::Sqlite,
        }
    }

    /// Refuse a version whose statements are not written for this platform's
    /// instance databases.
    pub fn check_dialect(&self, loaded: &LoadedVersion) -> Result<(), RegistryError> {
        let platform = self.sql_dialect();
        if loaded.manifest.runs_on(platform) {
            return Ok(());
        }
        let declared = loaded.manifest.sql_dialects().iter().map(|d| format!("\"{d}\"")).collect::<Vec<_>>();
        Err(RegistryError::Dialect {
            service: loaded.service.clone(),
            version: loaded.version.clone(),
            declared: declared.join(", "),
            platform,
        })
    }

    /// Make `version` the one every instance following `service` runs, at once.
    pub async fn activate(&self, service: &str, version: &str) -> Result<VersionInfo, RegistryError> {
        self.begin_activation(service, version).await?.commit().await
    }

    /// Start activating `version`: its record changes in the activation's
    /// transaction, where other rooms may change theirs (the rollout releases
    /// its pins there), and this node runs it once [`Activation::commit`]
    /// commits. Two activations never run at once: the database never names
    /// one version while the node runs another.
    pub async fn begin_activation(&self, service: &str, version: &str) -> Result<Activation<'_>, RegistryError> {
        let slot = self.slot(service).ok_or_else(|| RegistryError::UnknownService(service.to_string()))?;
        self.ensure_loaded(service, version).await?;
        let Some(loaded) = slot.version(version) else {
            return Err(self.unknown_version(service, version).await);
        };
        self.check_dialect(&loaded)?;
        let guard = self.activate_lock.lock().await;
        let mut tx = crate::store::begin(&self.db).await.context("failed to begin transaction")?;
        // The version it replaces is kept: `wharf rollback` returns to it.
        sqlx::query(
            "UPDATE services SET previous_version = CASE WHEN active_version = $1 THEN previous_version \
             ELSE active_version END, active_version = $1 WHERE name = $2",
        )
        .bind(version)
        .bind(service)
        .execute(&mut *tx)
        .await
        .context("failed to record the active version")?;
        Ok(Activation { registry: self, _guard: guard, tx, instances: Vec::new(), slot, loaded })
    }

    /// Compile a new component, and keep its bytes and compiled artifact on
    /// disk; the bytes come back to be recorded.
    async fn compile_new(
        &self,
        component: Vec<u8>,
        sha256: &str,
    ) -> Result<(ProxyPre, Vec<u8>, Option<u64>), RegistryError> {
        let runtime = self.runtime.clone();
        let compiled_path = self.compiled_path(sha256);
        let source_path = self.components_dir.join(format!("{sha256}.wasm"));
        let compiled = tokio::task::spawn_blocking(move || -> Result<_, RegistryError> {
            let compiled = runtime.compile(&component)?;
            let pre = runtime.prepare(&compiled)?;
            write_atomically(&source_path, &component)?;
            let artifact = compiled.serialize().map_err(|e| anyhow::anyhow!("{e:#}"))?;
            write_atomically(&compiled_path, &artifact)?;
            Ok((pre, component, Runtime::initial_memory_bytes(&compiled)))
        })
        .await
        .map_err(|e| anyhow::anyhow!("compile task failed: {e}"))??;
        Ok(compiled)
    }

    /// The error for a version that does not exist, listing the ones that do.
    pub async fn unknown_version(&self, service: &str, version: &str) -> RegistryError {
        let known = match self.service(service).await {
            Ok(info) => info.versions.iter().map(|v| v.version.clone()).collect::<Vec<_>>().join(", "),
            Err(e) => return e,
        };
        RegistryError::UnknownVersion { service: service.to_string(), version: version.to_string(), known }
    }

    async fn find_version(&self, service: &str, version: &str) -> Result<Option<VersionRow>, RegistryError> {
        Ok(sqlx::query_as(&format!("SELECT {VERSION_COLUMNS} WHERE v.service = $1 AND v.version = $2"))
            .bind(service)
            .bind(version)
            .fetch_optional(&self.db)
            .await
            .context("failed to look up version")?)
    }

    /// One version.
    pub async fn version(&self, service: &str, version: &str) -> Result<VersionInfo, RegistryError> {
        match self.find_version(service, version).await? {
            Some(row) => Ok(row.info()),
            None if self.slot(service).is_none() => Err(RegistryError::UnknownService(service.to_string())),
            None => Err(self.unknown_version(service, version).await),
        }
    }

    /// One service with its versions, newest first.
    pub async fn service(&self, name: &str) -> Result<ServiceInfo, RegistryError> {
        let mut all = self.list(Some(name)).await?;
        all.pop().ok_or_else(|| RegistryError::UnknownService(name.to_string()))
    }

    /// Every service (or one, by name) with its versions, newest first.
    pub async fn list(&self, only: Option<&str>) -> Result<Vec<ServiceInfo>, RegistryError> {
        let rows: Vec<VersionRow> = match only {
            Some(name) => {
                sqlx::query_as(&format!("SELECT {VERSION_COLUMNS} WHERE v.service = $1"))
                    .bind(name)
                    .fetch_all(&self.db)
                    .await
            }
            None => sqlx::query_as(&format!("SELECT {VERSION_COLUMNS}")).fetch_all(&self.db).await,
        }
        .context("failed to list versions")?;
        let mut services: std::collections::BTreeMap<String, ServiceInfo> = Default::default();
        for row in &rows {
            let entry = services.entry(row.service.clone()).or_insert_with(|| ServiceInfo {
                name: row.service.clone(),
                active_version: row.active_version.clone(),
                versions: Vec::new(),
            });
            entry.versions.push(row.info());
        }
        let mut out: Vec<ServiceInfo> = services.into_values().collect();
        for service in &mut out {
            service.versions.sort_by_key(|v| std::cmp::Reverse(semver_key(&v.version)));
        }
        Ok(out)
    }
}

fn semver_key(version: &str) -> Option<semver::Version> {
    semver::Version::parse(version).ok()
}

/// Write a file so that readers never see it half-written: write a temporary file
/// beside it, then rename.
fn write_atomically(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    let tmp = path.with_extension(format!("tmp-{}", std::process::id()));
    std::fs::write(&tmp, bytes).with_context(|| format!("failed to write {tmp:?}"))?;
    std::fs::rename(&tmp, path).with_context(|| format!("failed to move {tmp:?} to {path:?}"))?;
    Ok(())
}

/// A version being published, as recorded.
struct NewVersion<'a> {
    service: &'a str,
    version: &'a str,
    sha256: &'a str,
    manifest_text: &'a str,
    component: &'a [u8],
    initial_memory: Option<u64>,
}

impl NewVersion<'_> {
    /// Record the version (its service too, if new, and on PostgreSQL its bytes
    /// for other nodes to fetch); whether it became active (`activate`, or the
    /// service's first).
    async fn insert(
        &self,
        tx: &mut sqlx::Transaction<'static, crate::store::Backend>,
        dialect: store::Dialect,
        activate: bool,
    ) -> Result<bool, RegistryError> {
        let now = store::now();
        sqlx::query("INSERT INTO services (name, active_version, created_at) VALUES ($1, NULL, $2) ON CONFLICT (name) DO NOTHING")
            .bind(self.service)
            .bind(now)
            .execute(&mut **tx)
            .await
            .context("failed to record service")?;
        if dialect == store::Dialect::Postgres {
            sqlx::query(
                "INSERT INTO component_blobs (sha256, bytes, created_at) VALUES ($1, $2, $3) ON CONFLICT (sha256) DO NOTHING",
            )
            .bind(self.sha256)
            .bind(self.component)
            .bind(now)
            .execute(&mut **tx)
            .await
            .context("failed to store the component")?;
        }
        sqlx::query(
            "INSERT INTO service_versions (service, version, sha256, size_bytes, manifest, created_at, \
             initial_memory_bytes) VALUES ($1, $2, $3, $4, $5, $6, $7)",
        )
        .bind(self.service)
        .bind(self.version)
        .bind(self.sha256)
        .bind(self.component.len() as i64)
        .bind(self.manifest_text)
        .bind(now)
        .bind(self.initial_memory.and_then(|bytes| i64::try_from(bytes).ok()))
        .execute(&mut **tx)
        .await
        .context("failed to record version")?;
        let activated =
            sqlx::query("UPDATE services SET active_version = $1 WHERE name = $2 AND ($3 OR active_version IS NULL)")
                .bind(self.version)
                .bind(self.service)
                .bind(activate)
                .execute(&mut **tx)
                .await
                .context("failed to activate version")?
                .rows_affected()
                > 0;
        Ok(activated)
    }
}

/// A version being activated (from [`Registry::begin_activation`]).
pub struct Activation<'r> {
    registry: &'r Registry,
    _guard: tokio::sync::MutexGuard<'r, ()>,
    /// The transaction the activation commits in.
    pub tx: sqlx::Transaction<'static, crate::store::Backend>,
    /// Instances whose routes changed in the same transaction (pins released):
    /// logged with the activation, so other nodes re-read just them.
    pub instances: Vec<String>,
    slot: Arc<ServiceSlot>,
    loaded: Arc<LoadedVersion>,
}

impl Activation<'_> {
    /// Commit the activation (a change: a new generation) and run the version
    /// on this node.
    pub async fn commit(self) -> Result<VersionInfo, RegistryError> {
        let Activation { registry, _guard, tx, instances, slot, loaded } = self;
        let (service, version) = (loaded.service.clone(), loaded.version.clone());
        let mut previous = None;
        let changes: Vec<store::Change> = std::iter::once(store::Change::Service(&service))
            .chain(instances.iter().map(|id| store::Change::Instance(id)))
            .collect();
        store::commit_changes(tx, &registry.seen, &changes, || async {
            if slot.active().is_none_or(|a| a.version != loaded.version) {
                loaded.served.store(0, std::sync::atomic::Ordering::Relaxed);
                loaded.failed.store(0, std::sync::atomic::Ordering::Relaxed);
                loaded.activated_ms.store(store::now_millis(), std::sync::atomic::Ordering::Relaxed);
            }
            previous = slot.active.swap(Some(loaded));
            if let Some(previous) = previous.as_ref().filter(|p| p.version != version) {
                slot.set_previous(Some(previous.version.clone()));
            }
            anyhow::Ok(())
        })
        .await
        .context("failed to commit activation")?;
        drop(_guard);
        tracing::info!(
            %service,
            %version,
            previous = previous.as_ref().map(|p| p.version.as_str()).unwrap_or("none"),
            "activated"
        );
        registry
            .find_version(&service, &version)
            .await?
            .map(|row| row.info())
            .ok_or_else(|| RegistryError::Internal(anyhow::anyhow!("activated version vanished")))
    }
}
