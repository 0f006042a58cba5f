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
            let tenant = &row.tenant_id;
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
            let bytes = self.quotas.limit(&Subject::Tenant(&row.tenant_id), Quota::DatabaseBytes).await?;
            self.db_threads.set_tenant_quota(&row.tenant_id, bytes.max(0) as u64);
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
            for version in [&row.pinned_version, &row.settled_version].into_iter().flatten() {
                wanted.insert((row.service.clone(), version.clone()));
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
        let custom = format!(
            "SELECT h.hostname, {ROUTE_COLUMNS} FROM instance_hosts h JOIN instances i ON i.id = h.instance_id \
                     LEFT JOIN billing_accounts b ON b.tenant_id = i.tenant_id WHERE i.deleted_at IS NULL"
        );
        let platform = format!(
            "SELECT '' AS hostname, {ROUTE_COLUMNS} FROM instances i \
                     LEFT JOIN billing_accounts b ON b.tenant_id = i.tenant_id WHERE i.deleted_at IS NULL"
        );
        let rows = match instance {
            Some(id) => {
                let mut rows: Vec<RouteRow> = sqlx::query_as(&format!("{custom} AND i.id = $1"))
                    .bind(id)
                    .fetch_all(&self.db)
                    .await
                    .context("failed to load routes")?;
                // Every instance has a route (its jobs run through it), with
                // or without hostnames.
                rows.extend(
                    sqlx::query_as::<_, RouteRow>(&format!("{platform} AND i.id = $1"))
                        .bind(id)
                        .fetch_all(&self.db)
                        .await
                        .context("failed to load routes")?,
                );
                rows
            }
            None => {
                let mut rows: Vec<RouteRow> =
                    sqlx::query_as(&custom).fetch_all(&self.db).await.context("failed to load routes")?;
                rows.extend(
                    sqlx::query_as::<_, RouteRow>(&platform)
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
        for row in rows {
            let route = match by_instance.get(&row.instance_id) {
                Some(route) => route.clone(),
                None => {
                    let Some(route) = self.route_of(&row) else { continue };
                    by_instance.insert(row.instance_id.clone(), route.clone());
                    route
                }
            };
            if row.hostname.is_empty() {
                for platform_host in self.policy.platform_names(&row.name, &row.tenant_id) {
                    routes.entry(platform_host).or_insert_with(|| route.clone());
                }
            } else {
                routes.insert(row.hostname, route);
            }
        }
        (routes, by_instance)
    }

    /// The route of the instance `row` describes; `None` (logged) when its
    /// service or pinned version is unknown here.
    fn route_of(&self, row: &RouteRow) -> Option<Arc<Route>> {
        let (instance, tenant, service) = (&row.instance_id, &row.tenant_id, &row.service);
        let Some(slot) = self.registry.slot(service) else {
            tracing::warn!(%instance, %service, "instance of an unknown service is not routed");
            return None;
        };
        let target = match row.pinned_version.as_deref() {
            None => VersionTarget::Follow(slot.clone()),
            Some(version) => match slot.version(version) {
                Some(loaded) => VersionTarget::Pinned(loaded),
                None => {
                    tracing::warn!(%instance, %service, %version, "instance pinned to an unknown version is not routed");
                    return None;
                }
            },
        };
        Some(Arc::new(Route {
            instance: instance.as_str().into(),
            tenant: tenant.as_str().into(),
            target,
            usage: self.usage.counters(instance, tenant),
            enabled: store::flag(row.enabled),
            ends_at: row.ends_at,
            suspended: row.suspended_reason.as_deref().map(Arc::from),
            recent: self.database(instance, tenant).recent_use(),
            db: self.database(instance, tenant),
            features: Arc::new(Features {
                modules: serde_json::from_str(&row.modules).unwrap_or_default(),
                settings: serde_json::from_str::<BTreeMap<String, String>>(&row.settings)
                    .unwrap_or_default()
                    .into_iter()
                    .collect(),
            }),
            setup: InstanceSetup {
                state: SetupState::parse(&row.setup_state),
                target: row.setup_target.clone(),
                applied: serde_json::from_str(&row.applied_migrations).unwrap_or_default(),
                settled: row.settled_version.as_deref().and_then(|v| slot.version(v)),
            },
            health: Some(self.router.instance(instance).and_then(|r| r.health.clone()).unwrap_or_default()),
            gate: match (row.pinned_version.as_deref(), row.pinned_by.as_deref()) {
                (None, _) => Some(crate::router::health::GateBack::Previous(slot.clone())),
                (Some(_), Some("canary")) => Some(crate::router::health::GateBack::Active(slot.clone())),
                _ => None,
            },
            jobs: self.followers.queue.as_ref().map(|queue| {
                Arc::new(crate::runtime::InstanceJobs {
                    queue: queue.clone() as Arc<dyn crate::runtime::JobQueue>,
                    tenant: tenant.as_str().into(),
                    instance: instance.as_str().into(),
                })
            }),
        }))
    }
}

/// The columns of a [`RouteRow`] (after the hostname), from `instances i` and
/// `billing_accounts b`.
const ROUTE_COLUMNS: &str = "i.id AS instance_id, i.tenant_id, i.service, i.pinned_version, i.modules, i.settings, \
     (CASE WHEN i.enabled THEN 1 ELSE 0 END) AS enabled, i.name, i.applied_migrations, i.settled_version, \
     i.setup_state, i.setup_target, i.ends_at, b.suspended_reason, i.pinned_by";

/// One routed hostname of an instance (`''` for its platform names), with what
/// its route is built from.
#[derive(sqlx::FromRow)]
pub(super) struct RouteRow {
    hostname: String,
    instance_id: String,
    tenant_id: String,
    service: String,
    pinned_version: Option<String>,
    modules: String,
    settings: String,
    /// `(CASE WHEN enabled THEN 1 ELSE 0 END)`: see [`store::flag`].
    enabled: i64,
    name: String,
    applied_migrations: String,
    settled_version: Option<String>,
    setup_state: String,
    setup_target: Option<String>,
    ends_at: Option<i64>,
    /// The tenant's suspension (its spending limit).
    suspended_reason: Option<String>,
    pinned_by: Option<String>,
}
