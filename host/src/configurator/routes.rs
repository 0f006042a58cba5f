//! The routing table: built from the instances and their hostnames, swapped
//! whole into the router; rebuilt after every change and catch-up.

use super::*;

impl Configurator {
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
    pub(super) async fn add_routes(&self, instance: &str) -> Result<(), ConfigError> {
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
    pub(super) async fn load_pinned(&self, rows: &[RouteRow]) -> Result<(), ConfigError> {
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

    pub(super) async fn load_challenges(&self) -> Result<(), ConfigError> {
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
    pub(super) async fn route_rows(&self, instance: Option<&str>) -> Result<Vec<RouteRow>, ConfigError> {
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

    pub(super) fn routes_of(&self, rows: Vec<RouteRow>) -> (HashMap<String, Arc<Route>>, HashMap<String, Arc<Route>>) {
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
                                queue: queue.clone() as Arc<dyn crate::runtime::JobQueue>,
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
pub(super) type RouteRow = (
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
