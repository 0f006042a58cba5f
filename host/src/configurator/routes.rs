//! The routing table: built from the instances and their hostnames. A change
//! to some instances re-reads just theirs and swaps them into the router; a
//! node that cannot tell what changed (it missed part of the change log)
//! rebuilds the whole table.

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
        let routed = self.route_rows(RouteScope::All).await?;
        self.load_pinned(&routed.rows).await?;
        self.databases.set_quotas(default_bytes.max(0) as u64, &overrides);
        self.router.replace(self.routes_of(routed));
        self.load_challenges().await
    }

    /// Re-read the routes of the instances named and swap just them in: the
    /// cost of a change to a few instances does not grow with the platform.
    pub async fn refresh_instances(&self, ids: &[&str]) -> Result<(), ConfigError> {
        let mut tenants = std::collections::BTreeSet::new();
        for id in ids {
            let routed = self.route_rows(RouteScope::Instance(id)).await?;
            self.load_pinned(&routed.rows).await?;
            if let Some(row) = routed.rows.first() {
                tenants.insert(row.tenant_id.clone());
            }
            let routes = self.routes_of(routed).into_iter().find(|(instance, _)| instance == id);
            self.router.set_instance(id, routes.map(|(_, routes)| routes));
        }
        for tenant in tenants {
            let bytes = self.quotas.limit(&Subject::Tenant(&tenant), Quota::DatabaseBytes).await?;
            self.databases.set_tenant_quota(&tenant, bytes.max(0) as u64);
        }
        self.load_challenges().await
    }

    /// [`Self::refresh_instances`] of one.
    pub async fn refresh_instance(&self, id: &str) -> Result<(), ConfigError> {
        self.refresh_instances(&[id]).await
    }

    /// Re-read the routes of every instance of `tenant` (its suspension,
    /// deletion or quotas changed), deleted ones included.
    pub async fn refresh_tenant(&self, tenant: &str) -> Result<(), ConfigError> {
        let ids: Vec<(String,)> = sqlx::query_as("SELECT id FROM instances WHERE tenant_id = $1")
            .bind(tenant)
            .fetch_all(&self.db)
            .await
            .context("failed to list the tenant's instances")?;
        let ids: Vec<&str> = ids.iter().map(|(id,)| id.as_str()).collect();
        self.refresh_instances(&ids).await?;
        let bytes = self.quotas.limit(&Subject::Tenant(tenant), Quota::DatabaseBytes).await?;
        self.databases.set_tenant_quota(tenant, bytes.max(0) as u64);
        Ok(())
    }

    /// Apply other nodes' changes to some instances and tenants (read from
    /// the change log); waits for this node's own change in progress, like
    /// [`Self::refresh_routes`].
    pub async fn apply_changes(&self, changes: &[store::Changed]) -> Result<(), ConfigError> {
        let _guard = self.change_lock.lock().await;
        let mut instances = Vec::new();
        for change in changes {
            match change {
                store::Changed::Instance(id) => instances.push(id.as_str()),
                store::Changed::Tenant(tenant) => self.refresh_tenant(tenant).await?,
                // The registry's (routes follow a service's active version by reference).
                store::Changed::Service(_) => {}
            }
        }
        self.refresh_instances(&instances).await
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

    /// One row per routed instance (each has a route: its jobs run through it,
    /// with or without hostnames), and the verified custom hostnames of those
    /// instances as (instance, hostname): each instance's wide row is read
    /// once, its names in a narrow read of their own.
    pub(super) async fn route_rows(&self, scope: RouteScope<'_>) -> Result<RouteRows, ConfigError> {
        let (filter, bind) = match scope {
            RouteScope::All => ("", None),
            RouteScope::Instance(id) => (" AND i.id = $1", Some(id)),
        };
        let sql = format!(
            "SELECT {ROUTE_COLUMNS} FROM instances i \
             LEFT JOIN billing_accounts b ON b.tenant_id = i.tenant_id WHERE i.deleted_at IS NULL{filter}"
        );
        let mut query = sqlx::query_as::<_, RouteRow>(&sql);
        if let Some(value) = bind {
            query = query.bind(value);
        }
        let rows = query.fetch_all(&self.db).await.context("failed to load routes")?;
        let sql = format!(
            "SELECT h.instance_id, h.hostname FROM instance_hosts h JOIN instances i ON i.id = h.instance_id \
             WHERE i.deleted_at IS NULL{filter}"
        );
        let mut query = sqlx::query_as::<_, (String, String)>(&sql);
        if let Some(value) = bind {
            query = query.bind(value);
        }
        let custom = query.fetch_all(&self.db).await.context("failed to load hostnames")?;
        Ok(RouteRows { rows, custom })
    }

    /// Each instance's route and hostnames, by instance id: its verified custom
    /// names, then its platform names (no custom name can shadow them: tenants
    /// cannot claim names under a platform domain).
    pub(super) fn routes_of(&self, routed: RouteRows) -> Vec<(String, InstanceRoutes)> {
        // Keyed by instance ids (the platform's, not a client's): a fast hash.
        let mut custom: HashMap<String, Vec<String>, foldhash::fast::RandomState> =
            HashMap::with_capacity_and_hasher(routed.custom.len(), Default::default());
        for (instance, hostname) in routed.custom {
            custom.entry(instance).or_default().push(hostname);
        }
        let mut by_instance = Vec::with_capacity(routed.rows.len());
        for row in routed.rows {
            let Some(route) = self.route_of(&row) else { continue };
            let mut hosts = custom.remove(&row.instance_id).unwrap_or_default();
            let custom = hosts.len();
            hosts.extend(self.policy.platform_names(&row.name, &row.tenant_id));
            by_instance.push((row.instance_id, InstanceRoutes { route, hosts, custom }));
        }
        by_instance
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
        // What an instance keeps across its routes: its database handle (and
        // with it its recent CPU use) and its health window.
        let previous = self.router.instance(instance);
        let db = match &previous {
            Some(route) if route.db.names(instance, tenant) => route.db.clone(),
            _ => self.databases.handle(&Arc::from(instance.as_str()), &Arc::from(tenant.as_str())),
        };
        let features = Features {
            modules: serde_json::from_str(&row.modules).unwrap_or_default(),
            settings: serde_json::from_str::<BTreeMap<String, String>>(&row.settings)
                .unwrap_or_default()
                .into_iter()
                .collect(),
        };
        Some(Arc::new(Route {
            instance: db.instance().clone(),
            tenant: db.tenant().clone(),
            target,
            usage: crate::usage::UsageCell::new(self.usage.clone()),
            enabled: store::flag(row.enabled),
            ends_at: row.ends_at,
            suspended: row.suspended_reason.as_deref().map(Arc::from),
            features: Features::shared(features),
            setup: InstanceSetup {
                state: SetupState::parse(&row.setup_state),
                target: row.setup_target.clone(),
                applied: serde_json::from_str(&row.applied_migrations).unwrap_or_default(),
                settled: row.settled_version.as_deref().and_then(|v| slot.version(v)),
            },
            health: Some(previous.and_then(|r| r.health.clone()).unwrap_or_default()),
            gate: match (row.pinned_version.as_deref(), row.pinned_by.as_deref()) {
                (None, _) => Some(crate::router::health::GateBack::Previous(slot.clone())),
                (Some(_), Some("canary")) => Some(crate::router::health::GateBack::Active(slot.clone())),
                _ => None,
            },
            jobs: self.followers.queue.as_ref().map(|queue| {
                Arc::new(crate::runtime::InstanceJobs {
                    queue: queue.clone() as Arc<dyn crate::runtime::JobQueue>,
                    tenant: db.tenant().clone(),
                    instance: db.instance().clone(),
                })
            }),
            db,
        }))
    }
}

/// Which instances' routes to read.
#[derive(Clone, Copy)]
pub(super) enum RouteScope<'a> {
    All,
    Instance(&'a str),
}

/// The columns of a [`RouteRow`], from `instances i` and
/// `billing_accounts b`.
const ROUTE_COLUMNS: &str = "i.id AS instance_id, i.tenant_id, i.service, i.pinned_version, i.modules, i.settings, \
     (CASE WHEN i.enabled THEN 1 ELSE 0 END) AS enabled, i.name, i.applied_migrations, i.settled_version, \
     i.setup_state, i.setup_target, i.ends_at, b.suspended_reason, i.pinned_by";

/// The routed instances' rows and their custom hostnames (see
/// [`Configurator::route_rows`]).
pub(super) struct RouteRows {
    rows: Vec<RouteRow>,
    /// (instance, hostname), verified custom names.
    custom: Vec<(String, String)>,
}

/// One routed instance, with what its route is built from.
#[derive(sqlx::FromRow)]
pub(super) struct RouteRow {
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
