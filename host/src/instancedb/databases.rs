//! Every instance's databases on this node, as routes and jobs name them. A
//! route holds a handle of a few words ([`InstanceDb`]); what stands behind it
//! — the files' connections, the instance's line on the database threads, its
//! tenant's line and database bytes — is made on the instance's first call
//! ([`Opened`]) and dropped once the instance has been idle for a while
//! ([`Databases::close_idle`]), so a node holding a million instances pays for
//! the ones in use.
//!
//! A tenant's database quota counts every instance of the tenant, opened here
//! or not: the first time one of its instances opens, the tenant's other
//! instances are listed from the control plane and their files measured.

use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use dashmap::DashMap;

use super::threads::TenantSlots;
use super::*;

/// Every instance's databases on this node (see the module's text).
pub struct Databases {
    /// `<data>/instances`: each instance's directory is named by its id.
    root: PathBuf,
    threads: Arc<DbThreads>,
    budget: Arc<OpenDatabases>,
    backends: Backends,
    /// The control plane, to list a tenant's instances.
    control: crate::store::Db,
    opened: DashMap<Arc<str>, Arc<Opened>>,
    /// The clock of [`Opened::used`].
    started: Instant,
}

impl Databases {
    /// The databases of the instances whose directories are in `root`, kept
    /// where `backends` say, their SQLite work on `threads`.
    pub fn new(root: PathBuf, threads: Arc<DbThreads>, backends: Backends, control: crate::store::Db) -> Arc<Self> {
        Arc::new(Self {
            root,
            threads,
            budget: OpenDatabases::new(MAX_OPEN_DATABASES),
            backends,
            control,
            opened: DashMap::new(),
            started: Instant::now(),
        })
    }

    /// The handle of `tenant`'s `instance` (nothing is opened until it is used).
    pub fn handle(self: &Arc<Self>, instance: &Arc<str>, tenant: &Arc<str>) -> Arc<InstanceDb> {
        Arc::new(InstanceDb {
            databases: self.clone(),
            instance: instance.clone(),
            tenant: tenant.clone(),
            recent: Arc::default(),
        })
    }

    /// Instances whose databases are open on this node now.
    pub fn open_count(&self) -> usize {
        self.opened.len()
    }

    /// Close the databases of instances unused for `idle` (none of their calls
    /// waiting or running); how many were closed.
    pub fn close_idle(&self, idle: Duration) -> usize {
        let now = self.now();
        let before = self.opened.len();
        self.opened.retain(|_, opened| {
            Arc::strong_count(opened) > 1
                || opened.busy()
                || now.saturating_sub(opened.used.load(Ordering::Relaxed)) < idle.as_secs()
        });
        before.saturating_sub(self.opened.len())
    }

    /// Set every tenant's database quota (see [`DbThreads::set_quotas`]).
    pub fn set_quotas(&self, bytes: u64, overrides: &std::collections::HashMap<String, i64>) {
        self.threads.set_quotas(bytes, overrides);
    }

    /// Set `tenant`'s database quota, in bytes.
    pub fn set_tenant_quota(&self, tenant: &str, bytes: u64) {
        self.threads.set_tenant_quota(tenant, bytes);
    }

    /// The database bytes of every instance of `tenant` on this node.
    pub async fn tenant_bytes(&self, tenant: &str) -> Result<u64, String> {
        let slots = self.threads.tenant(tenant);
        self.count_tenant(tenant, &slots).await?;
        Ok(slots.storage.total())
    }

    /// Forget a purged instance: its databases close (once no call holds
    /// them) and its files count as nothing against its tenant's quota.
    pub fn forget(&self, instance: &str, tenant: &str) {
        self.opened.remove(instance);
        let storage = &self.threads.tenant(tenant).storage;
        let dir = self.root.join(instance);
        for file in ["data.sqlite", "kv.sqlite"] {
            storage.record(&dir.join(file), 0);
        }
    }

    /// Seconds since this node's databases were set up.
    fn now(&self) -> u64 {
        self.started.elapsed().as_secs()
    }

    /// The open databases of `instance`, opened now if they are not.
    fn opened(&self, instance: &Arc<str>, tenant: &str, recent: &Arc<crate::sched::RecentUse>) -> Arc<Opened> {
        let opened = match self.opened.get(&**instance) {
            Some(opened) => opened.clone(),
            None => self
                .opened
                .entry(instance.clone())
                .or_insert_with(|| {
                    Arc::new(Opened::new(
                        &self.root.join(&**instance),
                        instance,
                        tenant,
                        self.threads.clone(),
                        self.budget.clone(),
                        &self.backends,
                        recent.clone(),
                    ))
                })
                .clone(),
        };
        opened.used.store(self.now(), Ordering::Relaxed);
        opened
    }

    /// Count every instance of `tenant` in its database bytes (once): those
    /// not opened on this node are measured from their files.
    async fn count_tenant(&self, tenant: &str, slots: &Arc<TenantSlots>) -> Result<(), String> {
        if slots.counted.initialized() {
            return Ok(());
        }
        let unavailable = |e: &dyn std::fmt::Display| {
            tracing::warn!(tenant, "failed to count the tenant's databases: {e}");
            "the database is unavailable; retry".to_string()
        };
        slots
            .counted
            .get_or_try_init(|| async {
                let ids: Vec<(String,)> =
                    sqlx::query_as("SELECT id FROM instances WHERE tenant_id = $1 AND deleted_at IS NULL")
                        .bind(tenant)
                        .fetch_all(&self.control)
                        .await
                        .map_err(|e| unavailable(&e))?;
                let (root, slots) = (self.root.clone(), slots.clone());
                tokio::task::spawn_blocking(move || {
                    for (id,) in ids {
                        slots.storage.register(&root.join(id));
                    }
                })
                .await
                .map_err(|e| unavailable(&e))
            })
            .await
            .map(drop)
    }
}

/// One instance's databases as its route names them: opened on the first
/// call, closed when idle, opened again on the next.
pub struct InstanceDb {
    databases: Arc<Databases>,
    instance: Arc<str>,
    tenant: Arc<str>,
    /// The instance's recent CPU use, shared by its guests and its SQL.
    recent: Arc<crate::sched::RecentUse>,
}

impl std::fmt::Debug for InstanceDb {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InstanceDb").field("instance", &self.instance).field("tenant", &self.tenant).finish()
    }
}

impl InstanceDb {
    /// The instance's id.
    pub fn instance(&self) -> &Arc<str> {
        &self.instance
    }

    /// Its tenant's id.
    pub fn tenant(&self) -> &Arc<str> {
        &self.tenant
    }

    /// Whether this handle names `tenant`'s `instance`.
    pub fn names(&self, instance: &str, tenant: &str) -> bool {
        &*self.instance == instance && &*self.tenant == tenant
    }

    /// The instance's databases, opened if they are not (and its tenant's
    /// other instances counted against its quota, the first time).
    pub async fn open(&self) -> Result<Arc<Opened>, String> {
        let opened = self.databases.opened(&self.instance, &self.tenant, &self.recent);
        self.databases.count_tenant(&self.tenant, opened.tenant_slots()).await?;
        Ok(opened)
    }

    /// The instance's recent CPU use, shared with its guests' scheduling.
    pub fn recent_use(&self) -> &Arc<crate::sched::RecentUse> {
        &self.recent
    }

    /// The dialect the guest's SQL is in.
    pub fn dialect(&self) -> Dialect {
        if self.databases.backends.postgres.is_some() {
            Dialect::Postgres
        } else {
            Dialect::Sqlite
        }
    }

    /// Create both files now, so the instance starts with its databases in
    /// place (its tenant's others are counted on its first call).
    pub async fn provision(&self) -> Result<(), String> {
        let opened = self.databases.opened(&self.instance, &self.tenant, &self.recent);
        tokio::task::spawn_blocking(move || opened.provision())
            .await
            .map_err(|e| format!("provisioning task failed: {e}"))?
    }

    /// Run a statement that returns rows.
    pub async fn query(&self, statement: String, params: Vec<SqlValue>, call: &Call) -> Result<SqlRows, String> {
        self.open().await?.query(statement, params, call).await
    }

    /// Run a statement that changes data or schema; returns rows changed.
    pub async fn execute(&self, statement: String, params: Vec<SqlValue>, call: &Call) -> Result<u64, String> {
        self.open().await?.execute(statement, params, call).await
    }

    /// Run statements in one transaction.
    pub async fn batch(&self, statements: Vec<(String, Vec<SqlValue>)>, call: &Call) -> Result<Vec<u64>, String> {
        self.open().await?.batch(statements, call).await
    }

    /// A key-value entry, unless absent or expired.
    pub async fn kv_get(&self, key: String, call: &Call) -> Result<Option<Vec<u8>>, String> {
        self.open().await?.kv_get(key, call).await
    }

    /// Set a key-value entry, optionally expiring.
    pub async fn kv_set(&self, key: String, value: Vec<u8>, ttl: Option<Duration>, call: &Call) -> Result<(), String> {
        self.open().await?.kv_set(key, value, ttl, call).await
    }

    /// Delete a key-value entry; whether a live one existed.
    pub async fn kv_delete(&self, key: String, call: &Call) -> Result<bool, String> {
        self.open().await?.kv_delete(key, call).await
    }

    /// Live keys starting with `prefix`, sorted.
    pub async fn kv_list(&self, prefix: String, limit: u32, call: &Call) -> Result<Vec<String>, String> {
        self.open().await?.kv_list(prefix, limit, call).await
    }

    /// Add `delta` to the integer at `key` (0 if absent or expired), atomically.
    pub async fn kv_increment(&self, key: String, delta: i64, call: &Call) -> Result<i64, String> {
        self.open().await?.kv_increment(key, delta, call).await
    }
}
