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

/// Instances whose databases a node keeps open at most (beyond it, the least
/// recently used close, whatever `--database-idle-secs` says): what a flood of
/// calls to many instances can make a node hold is bounded.
pub const MAX_OPENED: usize = 20_000;

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
    /// Each tenant's share of guest time, shared by its instances' handles
    /// (dropped with the last of them, see [`Databases::close_idle`]).
    tenant_use: DashMap<Arc<str>, Arc<crate::sched::TenantUse>>,
    /// Each instance's recent CPU use, one for all its handles (the route's,
    /// the one that provisioned it, its open connections'): what its guests
    /// turned out to be tells its statements, and the other way round.
    recent_use: DashMap<Arc<str>, Arc<crate::sched::RecentUse>>,
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
            tenant_use: DashMap::new(),
            recent_use: DashMap::new(),
            started: Instant::now(),
        })
    }

    /// The handle of `tenant`'s `instance` (nothing is opened until it is used).
    pub fn handle(self: &Arc<Self>, instance: &Arc<str>, tenant: &Arc<str>) -> Arc<InstanceDb> {
        Arc::new(InstanceDb {
            databases: self.clone(),
            instance: instance.clone(),
            tenant: tenant.clone(),
            recent: self
                .recent_use
                .entry(instance.clone())
                .or_insert_with(|| {
                    let tenant = self.tenant_use.entry(tenant.clone()).or_default().clone();
                    Arc::new(crate::sched::RecentUse::of_tenant(tenant))
                })
                .clone(),
        })
    }

    /// Instances whose databases are open on this node now.
    pub fn open_count(&self) -> usize {
        self.opened.len()
    }

    /// Close the databases of instances unused for `idle`, and beyond `most`
    /// open the least recently used (only those with no call waiting or
    /// running); how many were closed.
    pub fn close_idle(&self, idle: Duration, most: usize) -> usize {
        let now = self.now();
        let before = self.opened.len();
        let in_use = |opened: &Arc<Opened>| Arc::strong_count(opened) > 1 || opened.busy();
        let used = |opened: &Arc<Opened>| opened.used.load(Ordering::Relaxed);
        self.opened.retain(|_, opened| in_use(opened) || now.saturating_sub(used(opened)) < idle.as_secs());
        let over = self.opened.len().saturating_sub(most);
        if over > 0 {
            let mut by_use: Vec<(u64, Arc<str>)> =
                self.opened.iter().map(|entry| (used(entry.value()), entry.key().clone())).collect();
            by_use.sort_unstable();
            for (_, instance) in by_use.into_iter().take(over) {
                self.opened.remove_if(&instance, |_, opened| !in_use(opened));
            }
        }
        // Shares held by no handle and no open connection any more (the open
        // ones hold theirs, and each instance's holds its tenant's).
        self.recent_use.retain(|_, recent| Arc::strong_count(recent) > 1);
        self.tenant_use.retain(|_, share| Arc::strong_count(share) > 1);
        before.saturating_sub(self.opened.len())
    }

    /// The database threads SQLite work runs on.
    pub fn threads(&self) -> &Arc<DbThreads> {
        &self.threads
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

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    /// Databases on SQLite in `dir`, and their control plane (kept while they are).
    async fn databases(dir: &tempfile::TempDir) -> (Arc<Databases>, crate::testdb::TestDb) {
        let plane = crate::testdb::control_planes().await.remove(0);
        let threads = DbThreads::start(2).unwrap();
        (Databases::new(dir.path().to_path_buf(), threads, Backends::default(), plane.db.clone()), plane)
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn databases_open_on_first_use_and_close_when_idle_or_past_the_most() {
        let dir = tempfile::tempdir().unwrap();
        let (databases, _plane) = databases(&dir).await;
        let tenant: Arc<str> = "t".into();
        let handles: Vec<Arc<InstanceDb>> =
            ["a", "b", "c"].iter().map(|i| databases.handle(&Arc::from(*i), &tenant)).collect();
        assert_eq!(databases.open_count(), 0, "a handle opens nothing");
        let call = Call::until(std::time::Instant::now() + Duration::from_secs(10));
        for handle in &handles {
            handle.kv_set("k".into(), b"v".to_vec(), None, &call).await.unwrap();
        }
        assert_eq!(databases.open_count(), 3);
        assert_eq!(databases.close_idle(Duration::from_secs(60), 10), 0, "used just now");
        // Past the most, the least recently used close first; one in use never.
        databases.opened.get("a").unwrap().used.store(0, Ordering::Relaxed);
        let held = databases.opened.get("b").unwrap().clone();
        held.used.store(0, Ordering::Relaxed);
        assert_eq!(databases.close_idle(Duration::from_secs(60), 1), 1);
        assert!(databases.opened.contains_key("b") && databases.opened.contains_key("c"), "b is in use");
        drop(held);
        assert_eq!(databases.close_idle(Duration::ZERO, 10), 2, "idle: every one closes");
        // Opened again on the next call, with its data.
        assert_eq!(handles[0].kv_get("k".into(), &call).await.unwrap(), Some(b"v".to_vec()));
        assert_eq!(databases.open_count(), 1);
    }

    /// An instance's handles (the route's, the one that provisioned it, the
    /// one its connections were opened with) share one recent CPU use: a
    /// statement that turned out heavy lowers the guests' next requests, and a
    /// guest's mark lowers the next statements.
    #[tokio::test]
    async fn every_handle_of_an_instance_shares_its_recent_use() {
        let dir = tempfile::tempdir().unwrap();
        let (databases, _plane) = databases(&dir).await;
        let (instance, tenant): (Arc<str>, Arc<str>) = ("a".into(), "t".into());
        let provisioner = databases.handle(&instance, &tenant);
        provisioner.provision().await.unwrap();
        let route = databases.handle(&instance, &tenant);
        let other = databases.handle(&Arc::from("b"), &tenant);
        route.recent_use().mark_heavy();
        assert!(provisioner.recent_use().is_heavy() && !other.recent_use().is_heavy());
        assert!(Arc::ptr_eq(databases.opened.get("a").unwrap().local.recent_use(), route.recent_use()));
        drop((provisioner, route, other));
        databases.close_idle(Duration::ZERO, 10);
        assert!(databases.recent_use.is_empty() && databases.tenant_use.is_empty(), "dropped with the last handle");
    }
}
