//! Instances: creating and changing them (modules, settings, version policy,
//! end dates), the rollout's pins, and how the API shows them.

use super::claims::normalize_hosts;
use super::*;

impl Configurator {
    /// The name an instance gets: the one asked for, else the service's, numbered
    /// if the tenant has one of that name already.
    pub(super) async fn instance_name(
        &self,
        tenant: &str,
        wanted: Option<&str>,
        service: &str,
    ) -> Result<String, ConfigError> {
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

    /// Refuse a new instance of `tenant` past its instances quota (`tx` holds
    /// the tenant's row, so two creations cannot both take the last one).
    pub(super) async fn check_instance_quota(
        &self,
        tx: &mut sqlx::Transaction<'_, crate::store::Backend>,
        tenant: &str,
    ) -> Result<(), ConfigError> {
        let limit = self.quotas.limit(&Subject::Tenant(tenant), Quota::Instances).await?;
        let used = self.count_instances(&mut **tx, tenant).await?;
        if used >= limit {
            return Err(ConfigError::QuotaExceeded {
                quota: Quota::Instances.name(),
                holder: format!("tenant {tenant:?}"),
                limit,
                used,
            });
        }
        Ok(())
    }

    /// Make the new instance's own database: its PostgreSQL schema and role in
    /// `tx` (not created unless the instance is), or its SQLite files.
    async fn provision_database(
        &self,
        tx: &mut sqlx::Transaction<'_, crate::store::Backend>,
        id: &str,
        tenant: &str,
    ) -> Result<(), ConfigError> {
        if self.backends.postgres.is_some() {
            database::PgDatabases::create(tx, id).await?;
        } else {
            self.databases
                .handle(&Arc::from(id), &Arc::from(tenant))
                .provision()
                .await
                .map_err(|e| anyhow::anyhow!("failed to provision the instance database: {e}"))?;
        }
        Ok(())
    }

    /// Create an instance and route its hostnames.
    pub async fn create_instance(&self, new: NewInstance, actor: Actor<'_>) -> Result<Instance, ConfigError> {
        self.create_instance_as(new, actor, None).await
    }

    /// Create an instance; with `preset` (an import's), it is recorded as set
    /// up already and created disabled, for its data to be loaded first.
    pub(super) async fn create_instance_as(
        &self,
        new: NewInstance,
        actor: Actor<'_>,
        preset: Option<super::export::Preset>,
    ) -> Result<Instance, ConfigError> {
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
        self.live_tenant_in(&mut tx, &new.tenant).await?;
        if !actor.operator {
            self.check_instance_quota(&mut tx, &new.tenant).await?;
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
        .bind(preset.is_none())
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
        self.provision_database(&mut tx, &id, &new.tenant).await?;
        if let (Some(preset), Some(version)) = (&preset, &version) {
            setups::preset(&mut tx, &id, &version.version, &preset.applied, preset.seeded).await?;
        }
        // Migrations and the seeder run before the instance serves its first request.
        if let (Some(queue), Some(version), None) = (&self.followers.queue, &version, &preset) {
            if version.needs_setup(&[], false) {
                let setup = hooks::SetupStart {
                    instance: &id,
                    tenant: &new.tenant,
                    service: &new.service,
                    version: &version.version,
                };
                queue.begin_in(&mut tx, setup).await?;
            }
        }
        store::commit_change_for(tx, &self.seen, store::Change::Instance(&id), || async {
            if let Some(queue) = &self.followers.queue {
                queue.wake();
            }
            self.refresh_instance(&id).await
        })
        .await?;
        tracing::info!(instance = %id, %name, tenant = %new.tenant, service = %new.service, ?hosts, "instance created");
        let instance = self.instance(&id).await?;
        self.subscriptions_changed(std::slice::from_ref(&instance)).await;
        Ok(instance)
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
        if current.deleted_at.is_some() {
            return Err(ConfigError::Deleted(id.to_string()));
        }
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
        store::commit_change_for(tx, &self.seen, store::Change::Instance(id), || self.refresh_instance(id)).await?;
        let instance = self.instance(id).await?;
        self.subscriptions_changed(std::slice::from_ref(&instance)).await;
        Ok(instance)
    }

    /// Release the rollout's pins (canary, health) of `service`'s instances in
    /// `tx` (the promotion's): every instance follows the active version again.
    /// Returns the instances released (routes to rebuild once committed).
    pub async fn release_rollout_pins_in(
        tx: &mut sqlx::Transaction<'_, crate::store::Backend>,
        service: &str,
    ) -> anyhow::Result<Vec<String>> {
        let rows: Vec<(String,)> = sqlx::query_as(
            "UPDATE instances SET pinned_version = NULL, pinned_by = NULL, pin_reason = NULL \
             WHERE service = $1 AND pinned_by IN ('canary', 'health') RETURNING id",
        )
        .bind(service)
        .fetch_all(&mut **tx)
        .await
        .context("failed to release the rollout's pins")?;
        let mut released: Vec<String> = rows.into_iter().map(|(id,)| id).collect();
        released.sort();
        Ok(released)
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
        let generation = self.commit_pins(tx, &pinned).await?;
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
        let generation = self.commit_pins(tx, &released).await?;
        drop(_guard);
        self.rollout_changed(&released).await;
        Ok((released, Some(generation)))
    }

    /// Commit a change of the rollout's pins of `ids`: logged as a change of
    /// each (other nodes re-read just those), their routes re-read here.
    async fn commit_pins(&self, tx: sqlx::Transaction<'_, store::Backend>, ids: &[String]) -> Result<i64, ConfigError> {
        let changes: Vec<store::Change> = ids.iter().map(|id| store::Change::Instance(id)).collect();
        store::commit_changes(tx, &self.seen, &changes, || self.reroute_held(ids)).await
    }

    /// Re-read the routes of `ids` (all of them, past [`store::MOST_CHANGED`]),
    /// after a change made elsewhere (a promotion's released pins); waits for
    /// this node's own change in progress, so a stale read never lands last.
    pub async fn reroute(&self, ids: &[String]) -> Result<(), ConfigError> {
        if ids.is_empty() {
            return Ok(());
        }
        let _guard = self.change_lock.lock().await;
        self.reroute_held(ids).await
    }

    /// [`Self::reroute`] with the change lock held.
    async fn reroute_held(&self, ids: &[String]) -> Result<(), ConfigError> {
        if ids.is_empty() {
            return Ok(());
        }
        if ids.len() > store::MOST_CHANGED {
            return self.rebuild_routes().await;
        }
        let ids: Vec<&str> = ids.iter().map(String::as_str).collect();
        self.refresh_instances(&ids).await
    }

    /// After the rollout moved instances: their subscriptions (billing).
    pub(super) async fn rollout_changed(&self, ids: &[String]) {
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
            "SELECT id FROM instances WHERE service = $1 AND (pinned_version IS NULL OR pinned_by = 'canary') \
             AND deleted_at IS NULL ORDER BY id",
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
        if let Some(billing) = &self.followers.subscriptions {
            if let Err(e) = billing.changed(instances).await {
                tracing::warn!("failed to record a subscription change (retried by the next billing pass): {e:#}");
            }
        }
    }

    /// One instance.
    pub async fn instance(&self, id: &str) -> Result<Instance, ConfigError> {
        let row: InstanceRow =
            sqlx::query_as(&format!("SELECT {INSTANCE_COLUMNS} FROM instances WHERE id = $1 AND purged_at IS NULL"))
                .bind(id)
                .fetch_optional(&self.db)
                .await
                .context("failed to read instance")?
                .ok_or_else(|| ConfigError::UnknownInstance(id.to_string()))?;
        Ok(self.describe_all(vec![row]).await?.remove(0))
    }

    /// Up to `limit` instances of `service` with a module enabled, after the
    /// id `after` (`""`: from the first), in id order, as billing sees them:
    /// without their hostnames (not read). An activation walks them.
    pub async fn instances_with_modules(
        &self,
        service: &str,
        after: &str,
        limit: i64,
    ) -> Result<Vec<Instance>, ConfigError> {
        let rows: Vec<InstanceRow> = sqlx::query_as(&format!(
            "SELECT {INSTANCE_COLUMNS} FROM instances WHERE service = $1 AND id > $2 AND purged_at IS NULL \
             AND modules <> '[]' ORDER BY id LIMIT {limit}"
        ))
        .bind(service)
        .bind(after)
        .fetch_all(&self.db)
        .await
        .context("failed to list the service's instances")?;
        Ok(rows.into_iter().map(|row| self.describe(row, Vec::new(), Vec::new())).collect())
    }

    /// A page of the instances of `tenants` (`None`: every instance), oldest first.
    pub async fn instances(&self, tenants: Option<&[String]>, page: &Page) -> Result<Vec<Instance>, ConfigError> {
        // The cursor is an instance id; rows sort by (created_at, id).
        let after = "($1 = '' OR (created_at, id) > (SELECT created_at, id FROM instances WHERE id = $1))";
        let after_id = page.after.clone().unwrap_or_default();
        let rows: Vec<InstanceRow> = match tenants {
            None => sqlx::query_as(&format!(
                "SELECT {INSTANCE_COLUMNS} FROM instances WHERE purged_at IS NULL AND {after} \
                 ORDER BY created_at, id LIMIT {}",
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
                        "SELECT {INSTANCE_COLUMNS} FROM instances WHERE purged_at IS NULL AND {after} AND tenant_id IN ({}) \
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
    pub(super) async fn describe_all(&self, rows: Vec<InstanceRow>) -> Result<Vec<Instance>, ConfigError> {
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
            for claim in query.fetch_all(&self.db).await.context("failed to read hostname claims")? {
                let ClaimRow { instance_id, hostname, token, created_at, checked_at, last_error } = claim;
                pending
                    .entry(instance_id)
                    .or_default()
                    .push(PendingHost::new(hostname, token, created_at, checked_at, last_error));
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

    pub(super) fn describe(&self, row: InstanceRow, hosts: Vec<String>, pending_hosts: Vec<PendingHost>) -> Instance {
        let slot = self.registry.slot(&row.service);
        let wanted = match &row.pinned_version {
            Some(v) => slot.as_ref().and_then(|s| s.version(v)),
            None => slot.as_ref().and_then(|s| s.active()),
        };
        let wanted_version = wanted.as_ref().map(|v| v.version.clone()).or_else(|| row.pinned_version.clone());
        // What the ingress serves, decided the same way it decides.
        let setup = InstanceSetup {
            state: SetupState::parse(&row.setup_state),
            target: row.setup_target.clone(),
            applied: serde_json::from_str(&row.applied_migrations).unwrap_or_default(),
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
                applied_migrations: setup.applied,
                settled_version: row.settled_version,
                seeded_at: row.seeded_at,
            },
            deleted_at: row.deleted_at,
            purge_at: row.purge_at,
        }
    }
}

/// A hostname claim awaiting proof.
#[derive(sqlx::FromRow)]
pub(super) struct ClaimRow {
    instance_id: String,
    hostname: String,
    token: String,
    created_at: i64,
    checked_at: Option<i64>,
    last_error: Option<String>,
}

/// Modules must be declared by the version the instance runs.
pub(super) fn check_modules(
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

pub(super) fn check_settings(settings: &BTreeMap<String, String>) -> Result<(), ConfigError> {
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
