//! A node: the rooms wired together, the two listeners, the usage flusher, and a
//! graceful shutdown that lets in-flight requests finish.

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context as _;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::access::Access;
use crate::admin::AdminState;
use crate::audit::Audit;
use crate::config::NodeConfig;
use crate::configurator::Configurator;
use crate::identity::Identity;
use crate::ingress::Ingress;
use crate::listener::{self, ConnectionCaps};
use crate::registry::Registry;
use crate::router::Router;
use crate::runtime::Runtime;
use crate::store;
use crate::usage::Usage;

pub use crate::listener::Addresses;

/// The composition root: [`Node::start`] builds every room of a node, hands
/// each the handles it uses, and starts the listeners and background passes.
/// Nothing imports it; the admin API gets its own state ([`AdminState`]).
pub struct Node;

/// A started node; [`RunningNode::shutdown`] stops it gracefully.
pub struct RunningNode {
    pub node: Arc<AdminState>,
    /// The API key of the operator created by `init_admin`, if one was created.
    pub initial_admin_key: Option<String>,
    shutdown: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
}

impl Node {
    /// Open the data directory, load every version and route every instance, bind
    /// both listeners and start serving.
    pub async fn start(config: NodeConfig) -> anyhow::Result<RunningNode> {
        crate::sched::keep_large_allocations_in_arenas();
        std::fs::create_dir_all(&config.data_dir)
            .with_context(|| format!("failed to create data directory {:?}", config.data_dir))?;
        let mut config = config;
        let (ingress_listener, admin_listener, addresses) = bind(&mut config).await?;
        let (node, clock, initial_admin_key) = build(config, addresses).await?;
        let (shutdown, tasks) = spawn(&node, clock, ingress_listener, admin_listener);
        tracing::info!(ingress = %addresses.ingress, admin = %addresses.admin, routes = node.router.len(), "wharf is serving");
        Ok(RunningNode { node, initial_admin_key, shutdown, tasks })
    }
}

/// Bind both listeners and settle what depends on their addresses. Bound
/// first: a node asked to verify hostnames through its own ingress
/// (`--challenge-connect` with port 0) needs the port it got.
async fn bind(config: &mut NodeConfig) -> anyhow::Result<(TcpListener, TcpListener, Addresses)> {
    let ingress_listener = TcpListener::bind(config.ingress_addr)
        .await
        .with_context(|| format!("failed to listen on {} (ingress)", config.ingress_addr))?;
    let admin_listener = TcpListener::bind(config.admin_addr)
        .await
        .with_context(|| format!("failed to listen on {} (admin API)", config.admin_addr))?;
    let addresses = Addresses { ingress: ingress_listener.local_addr()?, admin: admin_listener.local_addr()? };
    for domain in config.trust.domains.iter_mut() {
        *domain = crate::router::normalize(domain)
            .ok()
            .map(std::borrow::Cow::into_owned)
            .filter(|d| !d.starts_with('['))
            .with_context(|| format!("--domain {domain:?} is not a DNS name"))?;
    }
    if let Some(connect) = config.trust.challenge_connect.as_mut() {
        if connect.port() == 0 {
            let ip = if connect.ip().is_unspecified() { addresses.ingress.ip() } else { connect.ip() };
            *connect = SocketAddr::new(ip, addresses.ingress.port());
        }
    }
    Ok((ingress_listener, admin_listener, addresses))
}

/// Build every room and hand each what it uses; returns the admin API's state
/// (which holds them all), the billing clock and the first operator's key.
async fn build(
    config: NodeConfig,
    addresses: Addresses,
) -> anyhow::Result<(Arc<AdminState>, Arc<crate::clock::Clock>, Option<String>)> {
    check_jobs(&config)?;
    let db =
        store::open_with(&config.data_dir, config.database_url.as_deref(), config.control_plane_connections).await?;
    let runtime = Arc::new(Runtime::new(config.limits.clone(), &config.pool)?);
    // Read before anything is loaded: a change landing meanwhile is caught up with later.
    let generation = crate::store::generation(&db).await.context("failed to read the platform generation")?;
    let seen = Arc::new(crate::store::Seen::new(generation));
    let registry = Arc::new(Registry::open(db.clone(), runtime.clone(), &config.data_dir, seen.clone()).await?);
    let router = Arc::new(Router::default());
    let clock = Arc::new(if config.billing.settable_clock {
        tracing::warn!("--settable-clock: operators may move this node's billing clock (tests and demos only)");
        crate::clock::Clock::settable()
    } else {
        crate::clock::Clock::real()
    });
    let Instances { configurator, billing, usage, queue, redis } =
        instances(&config, &db, &registry, &router, &clock, &seen, &runtime).await?;
    let identity = Arc::new(Identity::new(db.clone(), &config.trust, redis.clone()));
    let mailer = match &config.trust.smtp_url {
        Some(url) => Some(crate::identity::invitations::Mailer::new(url, &config.trust.mail_from)?),
        None => None,
    };
    let fleet = crate::rollout::Fleet::join(
        db.clone(),
        &addresses.ingress.to_string(),
        &addresses.admin.to_string(),
        seen.get(),
    )
    .await?;
    let rollout = Arc::new(crate::rollout::Rollout::new(
        db.clone(),
        registry.clone(),
        configurator.clone(),
        fleet.clone(),
        seen.clone(),
    ));
    // One node at a time does what only one needs to do.
    let passes = Arc::new(crate::store::Lease::new(db.clone(), "passes", &fleet.id, crate::store::Lease::TTL));
    let billing_passes = Arc::new(crate::billing::Passes {
        billing: billing.clone(),
        configurator: configurator.clone(),
        seen: seen.clone(),
        config: config.billing.clone(),
        lease: passes.clone(),
        synced: Default::default(),
    });
    let workers = Arc::new(crate::jobs::Workers {
        db: db.clone(),
        queue: queue.clone(),
        router: router.clone(),
        registry: registry.clone(),
        runtime: runtime.clone(),
        configurator: configurator.clone(),
        seen: seen.clone(),
        lease: passes.clone(),
    });
    let audit = Arc::new(Audit::new(db.clone()));
    let initial_admin_key = first_operator(&config, &identity, &audit).await?;
    let node = Arc::new(AdminState {
        config,
        addresses,
        access: Arc::new(Access::with_epoch(db.clone(), identity.epoch.clone())),
        db,
        runtime,
        registry,
        configurator,
        router,
        usage,
        billing,
        identity,
        audit,
        mailer,
        generation: seen,
        // 10 changes a second per account, 50 at once.
        admin_throttle: crate::admin::throttle::Throttle::new(10.0, 50.0),
        readiness: tokio::sync::Mutex::new(None),
        metrics: Arc::default(),
        queue,
        fleet,
        rollout,
        billing_passes,
        workers,
    });
    Ok((node, clock, initial_admin_key))
}

/// The rooms that keep instances and follow them.
struct Instances {
    configurator: Arc<Configurator>,
    billing: Arc<crate::billing::Billing>,
    usage: Arc<Usage>,
    queue: Arc<crate::jobs::Queue>,
    redis: Option<Arc<crate::shared::Redis>>,
}

/// Build the configurator over the instances' data (their directories and
/// the shared backends), with the usage journal, billing and the job queue
/// that follow instances; the routing table is built.
async fn instances(
    config: &NodeConfig,
    db: &store::Db,
    registry: &Arc<Registry>,
    router: &Arc<Router>,
    clock: &Arc<crate::clock::Clock>,
    seen: &Arc<crate::store::Seen>,
    runtime: &Runtime,
) -> anyhow::Result<Instances> {
    let billing = Arc::new(crate::billing::Billing::new(db.clone(), clock.clone(), registry.clone()));
    let usage = Arc::new(Usage::open(db.clone(), &config.data_dir.join("usage"), clock.clone(), config.usage_journal)?);
    // What a previous run journaled but did not apply (it was killed) counts now.
    usage.flush().await.context("failed to apply the usage journal of the previous run")?;
    // Heavy statements are watched with heavy guests (either starving says
    // light load saturates the node), and statements count in their tenant's
    // share of the node's work as guests do.
    let db_threads = crate::instancedb::DbThreads::start_beside(
        config.db_threads,
        runtime.idle_tier().clone(),
        runtime.guest_time().clone(),
    )
    .context("failed to start the database threads")?;
    let (redis, postgres) = shared_backends(config, db).await?;
    let mut jobs_config = config.jobs.clone();
    // A job may do ten requests' worth of work.
    jobs_config.fuel = config.limits.fuel_per_request.saturating_mul(10);
    let queue = Arc::new(crate::jobs::Queue::new(db.clone(), jobs_config, config.trust.quotas));
    let parts = crate::configurator::Parts {
        db: db.clone(),
        registry: registry.clone(),
        router: router.clone(),
        usage: usage.clone(),
        db_threads,
        backends: crate::instancedb::Backends { postgres, redis: redis.clone(), calls: Arc::default() },
        seen: seen.clone(),
        followers: crate::configurator::hooks::Followers {
            queue: Some(queue.clone()),
            subscriptions: Some(billing.clone()),
        },
    };
    let configurator = Arc::new(Configurator::new(parts, config)?);
    configurator.rebuild_routes().await.context("failed to build the routing table")?;
    Ok(Instances { configurator, billing, usage, queue, redis })
}

/// Refuse job settings that cannot work, and say what a node without workers does.
fn check_jobs(config: &NodeConfig) -> anyhow::Result<()> {
    anyhow::ensure!(
        config.jobs.lease > config.jobs.timeout,
        "--job-lease ({} s) must be longer than --job-timeout ({} s): a live worker must finish before another may take its job",
        config.jobs.lease.as_secs(),
        config.jobs.timeout.as_secs()
    );
    if config.jobs.concurrency == 0 {
        tracing::warn!(
            "--job-workers 0: this node runs no jobs; instances are set up (migrations, seeders) and jobs run \
             only on nodes with workers"
        );
    }
    Ok(())
}

/// What several nodes share besides the control plane: Redis (key-value
/// stores, login limits) and, with a PostgreSQL control plane, the instances'
/// PostgreSQL databases.
async fn shared_backends(
    config: &NodeConfig,
    db: &store::Db,
) -> anyhow::Result<(Option<Arc<crate::shared::Redis>>, Option<Arc<crate::instancedb::PgDatabases>>)> {
    let redis = match &config.redis_url {
        Some(url) => {
            let platform = crate::store::platform_id(db).await.context("failed to read the platform id")?;
            Some(Arc::new(crate::shared::Redis::connect(url, &platform).await?))
        }
        None => None,
    };
    let postgres =
        match config.database_url.as_deref().filter(|_| crate::store::dialect(db) == crate::store::Dialect::Postgres) {
            Some(url) => {
                Some(crate::instancedb::PgDatabases::open(db.clone(), url, config.instance_connections).await?)
            }
            None => None,
        };
    Ok((redis, postgres))
}

/// Create the operator `--init-admin` names if no operator exists; its API key
/// is returned (and shown) only now.
async fn first_operator(config: &NodeConfig, identity: &Identity, audit: &Audit) -> anyhow::Result<Option<String>> {
    let Some(email) = &config.init_admin else { return Ok(None) };
    match identity.init_operator(email).await.map_err(|e| anyhow::anyhow!("{e}"))? {
        Some((user, key)) => {
            audit.record(&user.email, "operator.init", &user.id, None, "ok").await;
            Ok(Some(key))
        }
        None => {
            tracing::info!("an operator exists already; --init-admin ignored");
            Ok(None)
        }
    }
}

/// Start serving and every background pass; returns the shutdown signal and
/// the tasks to wait for.
fn spawn(
    node: &Arc<AdminState>,
    clock: Arc<crate::clock::Clock>,
    ingress_listener: TcpListener,
    admin_listener: TcpListener,
) -> (watch::Sender<bool>, Vec<JoinHandle<()>>) {
    let (shutdown, watcher) = watch::channel(false);
    let config = &node.config;
    let mut tasks = Vec::new();
    let (unhealthy, unhealthy_rx) = tokio::sync::mpsc::unbounded_channel();
    tasks.push(tokio::spawn(crate::rollout::health_rollbacks(node.rollout.clone(), unhealthy_rx)));
    let ingress = Arc::new(Ingress::new(
        node.router.clone(),
        node.runtime.clone(),
        node.identity.clone(),
        node.access.clone(),
        clock,
        unhealthy,
        config.edges.clone(),
        config.pool.max_instances,
        node.metrics.clone(),
    ));
    tasks.push(tokio::spawn(ingress.serve(ingress_listener, watcher.clone(), config.shutdown_grace)));
    tasks.push(tokio::spawn(serve_admin(node.clone(), admin_listener, watcher.clone())));
    if crate::store::dialect(&node.db) == crate::store::Dialect::Postgres {
        if let Some(url) = config.database_url.clone() {
            let follower = crate::cluster::Follower {
                url,
                db: node.db.clone(),
                registry: node.registry.clone(),
                configurator: node.configurator.clone(),
                fleet: node.fleet.clone(),
                seen: node.generation.clone(),
                epoch: node.identity.epoch.clone(),
                metrics: node.metrics.clone(),
                jobs: node.queue.wake.clone(),
            };
            tasks.push(tokio::spawn(crate::cluster::follow(follower, watcher.clone())));
        }
    }
    tasks.push(tokio::spawn(crate::jobs::worker::run(node.workers.clone(), watcher.clone(), config.shutdown_grace)));
    tasks.push(tokio::spawn(crate::billing::run(node.billing_passes.clone(), watcher.clone())));
    tasks.push(tokio::spawn(crate::rollout::run(node.rollout.clone(), config.unload_interval, watcher.clone())));
    let purge_every =
        config.deletion_grace.clamp(std::time::Duration::from_secs(1), std::time::Duration::from_secs(60));
    tasks.push(tokio::spawn(purge_deleted(
        node.configurator.clone(),
        node.workers.lease.clone(),
        purge_every,
        watcher.clone(),
    )));
    tasks.push(tokio::spawn(keep_history(
        node.metrics.clone(),
        node.queue.clone(),
        config.history_interval,
        watcher.clone(),
    )));
    tasks.push(tokio::spawn(close_idle_databases(
        node.configurator.databases.clone(),
        config.database_idle,
        watcher.clone(),
    )));
    tasks.push(tokio::spawn(flush_usage(node.usage.clone(), config.usage_flush_interval, watcher)));
    (shutdown, tasks)
}

/// Close the databases of instances idle for `idle` (and the least recently
/// used past [`crate::instancedb::MAX_OPENED`]), looking a few times per `idle`
/// (at most every 30 s).
async fn close_idle_databases(
    databases: Arc<crate::instancedb::Databases>,
    idle: std::time::Duration,
    mut stop: watch::Receiver<bool>,
) {
    let mut every =
        tokio::time::interval((idle / 4).clamp(std::time::Duration::from_secs(1), std::time::Duration::from_secs(30)));
    loop {
        tokio::select! {
            _ = every.tick() => {}
            _ = stop.wait_for(|stop| *stop) => break,
        }
        let closed = databases.close_idle(idle, crate::instancedb::MAX_OPENED);
        if closed > 0 {
            tracing::debug!(closed, open = databases.open_count(), "closed idle instance databases");
        }
    }
}

/// The admin API on its listener, until `stop`.
async fn serve_admin(node: Arc<AdminState>, listener: TcpListener, stop: watch::Receiver<bool>) {
    let edges = &node.config.edges;
    let caps = ConnectionCaps::new(edges.admin_max_connections, edges.admin_max_connections, edges.header_timeout);
    let grace = node.config.shutdown_grace;
    let app = crate::admin::router(node);
    listener::serve("admin", listener, caps, stop, grace, move |peer, _after_flush| {
        let app = app.clone();
        hyper::service::service_fn(move |mut req: hyper::Request<hyper::body::Incoming>| {
            // Login rate limits key on the client's address.
            req.extensions_mut().insert(axum::extract::ConnectInfo(peer));
            tower::ServiceExt::oneshot(app.clone(), req)
        })
    })
    .await
}

/// Destroy the data of deleted instances whose grace has ended, every
/// `every`, until `stop`.
/// (On the node holding the passes' lease.)
async fn purge_deleted(
    configurator: Arc<Configurator>,
    lease: Arc<crate::store::Lease>,
    every: std::time::Duration,
    mut stop: watch::Receiver<bool>,
) {
    let mut every = tokio::time::interval(every);
    loop {
        tokio::select! {
            _ = every.tick() => {}
            _ = stop.wait_for(|stop| *stop) => break,
        }
        if !lease.held().await {
            continue;
        }
        if let Err(e) = configurator.purge_due().await {
            tracing::warn!("failed to purge deleted instances: {e}");
        }
    }
}

/// Apply the usage journal to the control plane every `every`, until `stop`.
/// Take a point of the dashboard's history every `every`: this node's requests
/// per version, and the platform's job queue (left out when the control plane
/// does not answer within a second).
async fn keep_history(
    metrics: Arc<crate::metrics::Metrics>,
    queue: Arc<crate::jobs::Queue>,
    every: std::time::Duration,
    mut stop: watch::Receiver<bool>,
) {
    let mut every = tokio::time::interval(every);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    every.tick().await;
    loop {
        tokio::select! {
            _ = every.tick() => {}
            _ = stop.wait_for(|stop| *stop) => break,
        }
        let depth = tokio::time::timeout(std::time::Duration::from_secs(1), queue.stats(None)).await;
        let depth = match depth {
            Ok(Ok(services)) => Some(services.iter().fold((0, 0), |(q, r), s| (q + s.queued, r + s.running))),
            _ => {
                metrics.control_plane_error(crate::metrics::ControlPlaneUse::History);
                None
            }
        };
        let now = crate::store::now_millis() as f64 / 1000.0;
        metrics.history.sample(&metrics, now, depth);
    }
}

async fn flush_usage(usage: Arc<Usage>, every: std::time::Duration, mut stop: watch::Receiver<bool>) {
    let mut every = tokio::time::interval(every);
    loop {
        tokio::select! {
            _ = every.tick() => {}
            _ = stop.wait_for(|stop| *stop) => break,
        }
        if let Err(e) = usage.flush().await {
            tracing::warn!("{e:#}");
        }
    }
}

impl RunningNode {
    /// Stop accepting, let in-flight requests finish, write pending usage.
    pub async fn shutdown(self) -> anyhow::Result<()> {
        let _ = self.shutdown.send(true);
        for task in self.tasks {
            let _ = task.await;
        }
        // Guests still finishing their bodies record usage as they end; the grace
        // period above covered them, so this flush writes the last amounts.
        self.node.usage.flush().await?;
        // Another node takes over the passes at once.
        self.node.workers.lease.release().await;
        self.node.db.close().await;
        tracing::info!("wharf stopped");
        Ok(())
    }

    /// The bound ingress address.
    pub fn ingress_addr(&self) -> SocketAddr {
        self.node.addresses.ingress
    }

    /// The bound admin API address.
    pub fn admin_addr(&self) -> SocketAddr {
        self.node.addresses.admin
    }
}
