//! Loading versions on a node: at start, on a catch-up (what routes need at
//! once, the rest compiled in the background), on demand, retried with backoff
//! when a load fails, and unloaded when nothing uses them.

use super::*;

impl Registry {
    pub(super) async fn load_all(&self) -> anyhow::Result<()> {
        self.load_versions().await?;
        let previous: Vec<(String, Option<String>)> = sqlx::query_as("SELECT name, previous_version FROM services")
            .fetch_all(&self.db)
            .await
            .context("failed to read previous versions")?;
        for (service, version) in previous {
            if let Some(slot) = self.slot(&service) {
                slot.set_previous(version);
            }
        }
        Ok(())
    }

    pub(super) async fn load_versions(&self) -> anyhow::Result<()> {
        let rows: Vec<VersionRow> = sqlx::query_as(&format!("SELECT {VERSION_COLUMNS}"))
            .fetch_all(&self.db)
            .await
            .context("failed to list published versions")?;
        let total = rows.len();
        if total > 0 {
            tracing::info!(versions = total, "loading published versions");
        }
        for (i, row) in rows.iter().enumerate() {
            // A version this node cannot load (over its limits, say) is
            // reported and retried later; the node serves everything else.
            let Ok(loaded) = self.load_recorded(row).await else { continue };
            let slot = self.slot_or_new(&row.service);
            if row.active_version.as_deref() == Some(row.version.as_str()) {
                slot.active.store(Some(loaded.clone()));
            }
            slot.versions.insert(row.version.clone(), loaded);
            tracing::debug!(service = %row.service, version = %row.version, "loaded {}/{total}", i + 1);
        }
        Ok(())
    }

    /// Load one version: deserialize the cached artifact, or compile and cache it.
    pub(super) async fn load_version(&self, row: &VersionRow) -> anyhow::Result<Arc<LoadedVersion>> {
        let compiled = self.compiled_path(&row.sha256);
        let runtime = self.runtime.clone();
        let source = self.components_dir.join(format!("{}.wasm", row.sha256));
        if !compiled.exists() && !source.exists() {
            // Published through another node: the control plane holds the bytes.
            self.fetch_component(&row.sha256, &source).await?;
        }
        let (component, from_cache) = tokio::task::spawn_blocking(move || {
            if compiled.exists() {
                // SAFETY: the cache directory is private to this node and holds only
                // artifacts serialized by an engine with the same fingerprint (it is
                // in the file name).
                match unsafe { runtime.load_compiled(&compiled) } {
                    Ok(component) => return Ok((component, true)),
                    Err(e) => tracing::warn!("recompiling: {e:#}"),
                }
            }
            let bytes = std::fs::read(&source).with_context(|| format!("failed to read {source:?}"))?;
            let component = runtime.compile(&bytes)?;
            write_atomically(&compiled, &component.serialize().map_err(|e| anyhow::anyhow!("{e:#}"))?)?;
            anyhow::Ok((component, false))
        })
        .await
        .context("compile task failed")??;
        let counter = if from_cache { &self.stats.loaded_from_cache } else { &self.stats.compiled };
        counter.fetch_add(1, Ordering::Relaxed);
        if row.initial_memory_bytes.is_none() {
            self.record_initial_memory(row, &component).await;
        }
        let pre = self.runtime.prepare(&component)?;
        let manifest = Manifest::parse(&row.manifest).context("the stored manifest no longer parses")?;
        let worker = self.runtime.prepare_worker(&pre);
        Ok(Arc::new(LoadedVersion::new(row.sha256.clone(), pre, manifest, worker)))
    }

    /// Record the memory a version published before it was measured starts
    /// with. Only informative: a failure is logged, and the next load tries again.
    async fn record_initial_memory(&self, row: &VersionRow, component: &wasmtime::component::Component) {
        let Some(bytes) = Runtime::initial_memory_bytes(component).and_then(|b| i64::try_from(b).ok()) else {
            return;
        };
        let recorded = sqlx::query(
            "UPDATE service_versions SET initial_memory_bytes = $1 \
             WHERE service = $2 AND version = $3 AND initial_memory_bytes IS NULL",
        )
        .bind(bytes)
        .bind(&row.service)
        .bind(&row.version)
        .execute(&self.db)
        .await;
        if let Err(e) = recorded {
            tracing::warn!(service = %row.service, version = %row.version, "failed to record its initial memory: {e:#}");
        }
    }

    /// Copy a component's bytes from the control plane to `path`, checking its hash.
    pub(super) async fn fetch_component(&self, sha256: &str, path: &Path) -> anyhow::Result<()> {
        let row: Option<(Vec<u8>,)> = sqlx::query_as("SELECT bytes FROM component_blobs WHERE sha256 = $1")
            .bind(sha256)
            .fetch_optional(&self.db)
            .await
            .context("failed to fetch the component from the control plane")?;
        let (bytes,) =
            row.with_context(|| format!("component {sha256} is neither on this node nor in the control plane"))?;
        anyhow::ensure!(hex::encode(Sha256::digest(&bytes)) == sha256, "component {sha256} arrived corrupted");
        let path = path.to_path_buf();
        tokio::task::spawn_blocking(move || write_atomically(&path, &bytes)).await.context("write task failed")??;
        tracing::info!(%sha256, "fetched a component from the control plane");
        Ok(())
    }

    /// Bring this node up to date with versions published and activated through
    /// other nodes: load now what routes need (active, pinned and settled
    /// versions), compile the rest (published, staged, previous) in the
    /// background, and point each service at its recorded active version.
    ///
    /// So a catch-up — and with it `/readyz` — waits for compiles only when a
    /// route cannot do without them: publishing a version no instance runs
    /// never takes a node out of rotation. A version that failed to load is
    /// not tried again here but by [`Registry::retry_due`], with backoff.
    pub async fn refresh(self: &Arc<Self>) -> anyhow::Result<()> {
        self.refresh_some(None).await
    }

    /// [`Registry::refresh`] of one service's versions (published, deleted,
    /// staged or activated through another node): the cost does not grow with
    /// the other services or with instances that do not pin a version.
    pub async fn refresh_service(self: &Arc<Self>, service: &str) -> anyhow::Result<()> {
        self.refresh_some(Some(service)).await
    }

    async fn refresh_some(self: &Arc<Self>, service: Option<&str>) -> anyhow::Result<()> {
        let rows: Vec<VersionRow> =
            sqlx::query_as(&format!("SELECT {VERSION_COLUMNS} WHERE ($1 = '' OR v.service = $1)"))
                .bind(service.unwrap_or(""))
                .fetch_all(&self.db)
                .await
                .context("failed to list published versions")?;
        self.forget_deleted(&rows, service).await?;
        let needed = if self.unloaded.is_empty() { Default::default() } else { self.needed().await? };
        let mut routed: Option<std::collections::HashSet<(String, String)>> = None;
        for row in &rows {
            let slot = self.slot_or_new(&row.service);
            let key = (row.service.clone(), row.version.clone());
            if self.unloaded.contains_key(&key) && !needed.contains(&key) {
                continue;
            }
            if slot.version(&row.version).is_some() || self.failed.contains_key(&key) {
                continue;
            }
            let routed = match &routed {
                Some(routed) => routed,
                None => routed.insert(self.routed(service).await?),
            };
            if routed.contains(&key) {
                self.unloaded.remove(&key);
                // Reported, not fatal: the node keeps following every other change.
                let _ = self.load_recorded(row).await;
            } else {
                self.load_in_background(row.clone());
            }
        }
        self.point_active().await
    }

    /// Point each service at its recorded active version, where loaded.
    pub(super) async fn point_active(&self) -> anyhow::Result<()> {
        // Read the active versions under the lock local activations hold while
        // they write and swap: a stale read can never undo a newer activation.
        let _guard = self.activate_lock.lock().await;
        let active: Vec<(String, Option<String>, Option<String>)> =
            sqlx::query_as("SELECT name, active_version, previous_version FROM services")
                .fetch_all(&self.db)
                .await
                .context("failed to read active versions")?;
        for (service, version, previous) in active {
            let Some(version) = version else { continue };
            let slot = self.slot_or_new(&service);
            slot.set_previous(previous);
            let current = slot.active().map(|a| a.version.clone());
            if current.as_deref() != Some(version.as_str()) {
                if let Some(loaded) = slot.version(&version) {
                    loaded.served.store(0, std::sync::atomic::Ordering::Relaxed);
                    loaded.failed.store(0, std::sync::atomic::Ordering::Relaxed);
                    loaded.activated_ms.store(store::now_millis(), std::sync::atomic::Ordering::Relaxed);
                    slot.active.store(Some(loaded));
                    tracing::info!(%service, %version, "activated through another node");
                }
            }
        }
        Ok(())
    }

    /// Versions routes point at: active ones, and those instances are pinned
    /// to or settled on (a route to a version not loaded is skipped).
    /// (`service`: of that service only.)
    pub(super) async fn routed(
        &self,
        service: Option<&str>,
    ) -> anyhow::Result<std::collections::HashSet<(String, String)>> {
        let mut routed = std::collections::HashSet::new();
        for sql in [
            "SELECT name, active_version FROM services WHERE active_version IS NOT NULL AND ($1 = '' OR name = $1)",
            "SELECT DISTINCT service, pinned_version FROM instances WHERE pinned_version IS NOT NULL \
             AND ($1 = '' OR service = $1)",
            "SELECT DISTINCT service, settled_version FROM instances WHERE settled_version IS NOT NULL \
             AND ($1 = '' OR service = $1)",
        ] {
            let rows: Vec<(String, String)> = sqlx::query_as(sql)
                .bind(service.unwrap_or(""))
                .fetch_all(&self.db)
                .await
                .context("failed to read the versions routes use")?;
            routed.extend(rows);
        }
        Ok(routed)
    }

    /// Load `row` unless it is loaded (waiting for a load of it under way),
    /// recording a failure for the fleet and for a later retry.
    pub(super) async fn load_recorded(&self, row: &VersionRow) -> anyhow::Result<Arc<LoadedVersion>> {
        let key = (row.service.clone(), row.version.clone());
        let lock = self.loading.entry(key.clone()).or_default().clone();
        let _one_at_a_time = lock.lock().await;
        let slot = self.slot_or_new(&row.service);
        if let Some(loaded) = slot.version(&row.version) {
            return Ok(loaded);
        }
        match self.load_version(row).await {
            Ok(loaded) => {
                slot.versions.insert(row.version.clone(), loaded.clone());
                self.failed.remove(&key);
                self.retry.remove(&key);
                self.unloaded.remove(&key);
                Ok(loaded)
            }
            Err(e) => {
                let attempts = self.retry.get(&key).map_or(0, |r| r.0) + 1;
                let wait = RETRY_FIRST.saturating_mul(1 << (attempts - 1).min(10)).min(RETRY_MAX);
                if attempts == 1 {
                    tracing::error!(service = %row.service, version = %row.version, "failed to load (retrying in {} s, then less often): {e:#}", wait.as_secs());
                } else {
                    tracing::warn!(service = %row.service, version = %row.version, attempts, "failed to load again: {e:#}");
                }
                self.failed.insert(key.clone(), format!("{e:#}"));
                self.retry.insert(key, (attempts, std::time::Instant::now() + wait));
                Err(e)
            }
        }
    }

    /// Load `row` on a background task, one such load at a time.
    pub(super) fn load_in_background(self: &Arc<Self>, row: VersionRow) {
        let key = (row.service.clone(), row.version.clone());
        if self.queued.insert(key.clone(), ()).is_some() {
            return;
        }
        let registry = self.clone();
        tokio::spawn(async move {
            let permit = registry.background.clone().acquire_owned().await;
            let loaded = registry.load_recorded(&row).await.is_ok();
            drop(permit);
            registry.queued.remove(&key);
            if loaded {
                tracing::info!(service = %row.service, version = %row.version, "loaded in the background");
                if let Err(e) = registry.point_active().await {
                    tracing::warn!("{e:#}");
                }
                registry.loaded.notify_one();
            }
        });
    }

    /// Try again, in the background, the versions whose load failed and whose
    /// backoff has passed (called every second; never on a catch-up's path).
    pub async fn retry_due(self: &Arc<Self>) -> anyhow::Result<()> {
        let now = std::time::Instant::now();
        let due: Vec<(String, String)> = self
            .retry
            .iter()
            .filter(|r| r.value().1 <= now && !self.queued.contains_key(r.key()))
            .map(|r| r.key().clone())
            .collect();
        for (service, version) in due {
            match self.find_version(&service, &version).await.map_err(|e| anyhow::anyhow!("{e}"))? {
                Some(row) => self.load_in_background(row),
                None => {
                    self.retry.remove(&(service.clone(), version.clone()));
                    self.failed.remove(&(service, version));
                }
            }
        }
        Ok(())
    }

    /// Versions something needs loaded: active and previous ones, those
    /// instances are pinned to or set up with, those with jobs that may still
    /// run, and those staged in the last hour.
    pub async fn needed(&self) -> anyhow::Result<std::collections::HashSet<(String, String)>> {
        let mut needed = std::collections::HashSet::new();
        let queries = [
            "SELECT name, active_version FROM services WHERE active_version IS NOT NULL",
            "SELECT name, previous_version FROM services WHERE previous_version IS NOT NULL",
            "SELECT service, pinned_version FROM instances WHERE pinned_version IS NOT NULL",
            "SELECT service, settled_version FROM instances WHERE settled_version IS NOT NULL",
            "SELECT service, setup_target FROM instances WHERE setup_target IS NOT NULL",
            "SELECT DISTINCT service, enqueued_by FROM jobs WHERE state IN ('queued', 'running', 'failed', 'dead')",
        ];
        for sql in queries {
            let rows: Vec<(String, String)> =
                sqlx::query_as(sql).fetch_all(&self.db).await.context("failed to read what versions are used")?;
            needed.extend(rows);
        }
        let staged: Vec<(String, String)> =
            sqlx::query_as("SELECT service, version FROM service_versions WHERE staged_at > $1")
                .bind(store::now() - 3600)
                .fetch_all(&self.db)
                .await
                .context("failed to read staged versions")?;
        needed.extend(staged);
        Ok(needed)
    }

    /// Unload versions nothing uses: not needed (see [`Registry::needed`]), not
    /// newer than the active version (a candidate for promotion), and held by
    /// no request, job or route. Returns them.
    pub async fn unload_unused(&self) -> anyhow::Result<Vec<(String, String)>> {
        let needed = self.needed().await?;
        let mut unloaded = Vec::new();
        for slot in self.slots() {
            let Some(active) = slot.active() else { continue };
            let active_key = semver_key(&active.version);
            let candidates: Vec<String> = slot
                .versions
                .iter()
                .filter(|v| !needed.contains(&(slot.name.clone(), v.key().clone())))
                .filter(|v| semver_key(v.key()) < active_key)
                // Asked for a moment ago: a pin or activation may be on its way.
                .filter(|v| store::now_millis() - v.touched_ms.load(std::sync::atomic::Ordering::Relaxed) > 60_000)
                .map(|v| v.key().clone())
                .collect();
            for version in candidates {
                // Only the table holds it: no request, job or route does.
                let removed = slot.versions.remove_if(&version, |_, v| Arc::strong_count(v) == 1);
                if removed.is_some() {
                    tracing::info!(service = %slot.name, %version, "unloaded: nothing uses it");
                    self.unloaded.insert((slot.name.clone(), version.clone()), ());
                    unloaded.push((slot.name.clone(), version));
                }
            }
        }
        Ok(unloaded)
    }

    /// Load `version` now if this node has not (it unloaded it, is compiling
    /// it in the background, or could not load it): something needs it.
    pub async fn ensure_loaded(&self, service: &str, version: &str) -> Result<(), RegistryError> {
        if let Some(loaded) = self.slot(service).and_then(|s| s.version(version)) {
            loaded.touched_ms.store(store::now_millis(), std::sync::atomic::Ordering::Relaxed);
            return Ok(());
        }
        // Unknown versions are the caller's to report.
        let Some(row) = self.find_version(service, version).await? else { return Ok(()) };
        let loaded = self.load_recorded(&row).await.map_err(|e| RegistryError::NotLoadable {
            service: service.to_string(),
            version: version.to_string(),
            reason: format!("{e:#}"),
        })?;
        loaded.touched_ms.store(store::now_millis(), std::sync::atomic::Ordering::Relaxed);
        tracing::info!(%service, %version, "loaded on demand");
        Ok(())
    }
}
