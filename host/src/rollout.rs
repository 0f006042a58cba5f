//! Updates across the fleet: which nodes are live, what each has loaded, and
//! the two phases of an update.
//!
//! - Every node joins the fleet at start (`nodes`), beats every second, and
//!   writes the platform generation it has caught up with as soon as it has:
//!   that write is its acknowledgement of a promotion. It reports every version
//!   it loaded (or failed to load) in `node_versions`, with the requests and
//!   errors it served with it.
//! - **Stage**: every node fetches and compiles a published version (they do on
//!   publishing); `stage` waits until every live node reports it ready, or
//!   names those that failed and why.
//! - **Promote**: refused unless every live node has the version ready; then one
//!   transaction makes it active (keeping the version it replaces for
//!   rollback) and bumps the generation, which notifies every node; each swaps
//!   its pointer atomically and acknowledges. `promote` returns once every live
//!   node has, or names those that have not (`/readyz` keeps a node that has
//!   not caught up out of HAProxy's rotation meanwhile). **Rollback** promotes
//!   the previous version the same way.
//! - **Canary**: pin chosen instances (or a share of them) to the new version
//!   first; promoting clears those pins.
//! - **Health gate**: after a promotion or canary, an instance whose first
//!   requests on the new version fail (5xx, traps) above a threshold is pinned
//!   back to the previous version by itself, with the reason recorded.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use serde::Serialize;
use tokio::sync::{watch, Notify};

use crate::node::Node;
use crate::store::{self, Db};

/// A node that has not beaten for this long is not live.
pub const LIVE_MS: i64 = 5_000;
/// How often a node beats (and reports its versions).
pub const BEAT: Duration = Duration::from_secs(1);

/// This node's membership of the fleet.
pub struct Fleet {
    pub id: String,
    db: Db,
    /// Wakes the beat at once (a version loaded, a generation caught up).
    pub wake: Notify,
    /// What was last written to `node_versions`, to write only changes.
    reported: std::sync::Mutex<Reports>,
}

/// (service, version) → (state, error, requests, errors), as reported.
type Reports = BTreeMap<(String, String), (String, Option<String>, u64, u64)>;

/// A node as the fleet sees it.
#[derive(Debug, Clone, Serialize)]
pub struct NodeInfo {
    pub id: String,
    pub ingress: String,
    pub admin: String,
    pub started_at: i64,
    pub seen_at: i64,
    pub generation: i64,
    pub live: bool,
    /// It left the fleet gracefully (no promotion waits for it).
    pub stopped: bool,
}

type NodeRow = (String, String, String, i64, i64, i64, Option<i64>);

impl Fleet {
    /// Join the fleet as a new node.
    pub async fn join(db: Db, ingress: &str, admin: &str, generation: i64) -> anyhow::Result<Arc<Self>> {
        let id = format!("node-{}", &uuid::Uuid::new_v4().simple().to_string()[..10]);
        let now = store::now_millis();
        sqlx::query(
            "INSERT INTO nodes (id, ingress, admin, started_at, seen_at, generation) VALUES ($1, $2, $3, $4, $5, $6)",
        )
        .bind(&id)
        .bind(ingress)
        .bind(admin)
        .bind(now)
        .bind(now)
        .bind(generation)
        .execute(&db)
        .await
        .context("failed to join the fleet")?;
        // Nodes gone for a day are forgotten.
        sqlx::query("DELETE FROM node_versions WHERE node_id IN (SELECT id FROM nodes WHERE seen_at < $1)")
            .bind(now - 86_400_000)
            .execute(&db)
            .await
            .context("failed to forget old nodes")?;
        sqlx::query("DELETE FROM nodes WHERE seen_at < $1")
            .bind(now - 86_400_000)
            .execute(&db)
            .await
            .context("failed to forget old nodes")?;
        tracing::info!(node = %id, "joined the fleet");
        Ok(Arc::new(Self { id, db, wake: Notify::new(), reported: Default::default() }))
    }

    /// Acknowledge `generation`: this node has applied every change up to it.
    pub async fn ack(&self, generation: i64) -> anyhow::Result<()> {
        sqlx::query("UPDATE nodes SET generation = $1, seen_at = $2 WHERE id = $3 AND generation < $1")
            .bind(generation)
            .bind(store::now_millis())
            .bind(&self.id)
            .execute(&self.db)
            .await
            .context("failed to acknowledge the generation")?;
        Ok(())
    }

    /// Beat: say this node is live, at which generation, and report the
    /// versions whose state changed since the last beat.
    pub async fn beat(&self, node: &Node) -> anyhow::Result<()> {
        let now = store::now_millis();
        sqlx::query("UPDATE nodes SET seen_at = $1, generation = $2, stopped_at = NULL WHERE id = $3")
            .bind(now)
            .bind(node.generation.get())
            .bind(&self.id)
            .execute(&self.db)
            .await
            .context("failed to beat")?;
        let mut current = Reports::new();
        for slot in node.registry.slots() {
            for version in slot.versions() {
                let served = version.served.load(std::sync::atomic::Ordering::Relaxed);
                let failed = version.failed.load(std::sync::atomic::Ordering::Relaxed);
                current.insert(
                    (version.service.clone(), version.version.clone()),
                    ("ready".to_string(), None, served, failed),
                );
            }
        }
        for entry in node.registry.unloaded.iter() {
            current.insert(entry.key().clone(), ("unloaded".to_string(), None, 0, 0));
        }
        for entry in node.registry.failed.iter() {
            current.insert(entry.key().clone(), ("failed".to_string(), Some(entry.value().clone()), 0, 0));
        }
        let changed: Vec<_> = {
            let reported = self.reported.lock().unwrap_or_else(|e| e.into_inner());
            current.iter().filter(|(k, v)| reported.get(*k) != Some(*v)).map(|(k, v)| (k.clone(), v.clone())).collect()
        };
        for ((service, version), (state, error, served, failed)) in &changed {
            sqlx::query(
                "INSERT INTO node_versions (node_id, service, version, state, error, requests, errors, updated_at) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8) ON CONFLICT (node_id, service, version) DO UPDATE SET \
                 state = excluded.state, error = excluded.error, requests = excluded.requests, \
                 errors = excluded.errors, updated_at = excluded.updated_at",
            )
            .bind(&self.id)
            .bind(service)
            .bind(version)
            .bind(state)
            .bind(error)
            .bind(*served as i64)
            .bind(*failed as i64)
            .bind(now)
            .execute(&self.db)
            .await
            .context("failed to report a version")?;
        }
        let mut reported = self.reported.lock().unwrap_or_else(|e| e.into_inner());
        for (key, value) in changed {
            reported.insert(key, value);
        }
        Ok(())
    }

    /// Leave the fleet (a graceful stop): no promotion waits for this node.
    pub async fn leave(&self) {
        let _ = sqlx::query("UPDATE nodes SET stopped_at = $1 WHERE id = $2")
            .bind(store::now_millis())
            .bind(&self.id)
            .execute(&self.db)
            .await;
    }
}

/// Every node seen in the last day, live ones first.
pub async fn nodes(db: &Db) -> anyhow::Result<Vec<NodeInfo>> {
    let rows: Vec<NodeRow> = sqlx::query_as(
        "SELECT id, ingress, admin, started_at, seen_at, generation, stopped_at FROM nodes ORDER BY started_at",
    )
    .fetch_all(db)
    .await
    .context("failed to read the fleet")?;
    let now = store::now_millis();
    let mut nodes: Vec<NodeInfo> = rows
        .into_iter()
        .map(|(id, ingress, admin, started_at, seen_at, generation, stopped_at)| NodeInfo {
            live: stopped_at.is_none() && now - seen_at < LIVE_MS,
            stopped: stopped_at.is_some(),
            id,
            ingress,
            admin,
            started_at,
            seen_at,
            generation,
        })
        .collect();
    nodes.sort_by_key(|n| !n.live);
    Ok(nodes)
}

/// The node's beat, until it stops; then it leaves the fleet.
pub async fn run(node: Arc<Node>, mut stop: watch::Receiver<bool>) {
    let mut last_unload = tokio::time::Instant::now();
    loop {
        if last_unload.elapsed() >= node.config.unload_interval {
            last_unload = tokio::time::Instant::now();
            match node.registry.unload_unused().await {
                Ok(unloaded) if !unloaded.is_empty() => node.fleet.wake.notify_one(),
                Ok(_) => {}
                Err(e) => tracing::warn!("fleet: failed to unload unused versions: {e:#}"),
            }
        }
        if let Err(e) = node.registry.retry_due().await {
            tracing::warn!("fleet: failed to retry versions that did not load: {e:#}");
        }
        if let Err(e) = node.fleet.beat(&node).await {
            tracing::warn!("fleet: {e:#}");
        }
        let loaded = tokio::select! {
            _ = tokio::time::sleep(BEAT) => false,
            _ = node.fleet.wake.notified() => false,
            _ = node.registry.loaded.notified() => true,
            _ = stop.wait_for(|stop| *stop) => break,
        };
        // A version loaded in the background: routes pinned to it (skipped
        // while it was missing) may use it now.
        if loaded {
            if let Err(e) = node.configurator.refresh_routes().await {
                tracing::warn!("fleet: failed to rebuild routes after a load: {e}");
            }
        }
    }
    node.fleet.leave().await;
}

/// One version's state on one node.
#[derive(Debug, Clone, Serialize)]
pub struct VersionOnNode {
    pub node: String,
    pub state: String,
    pub error: Option<String>,
    pub requests: i64,
    pub errors: i64,
}

/// Each version of `service` on each node: (version → its state per node).
pub async fn versions_on_nodes(db: &Db, service: &str) -> anyhow::Result<BTreeMap<String, Vec<VersionOnNode>>> {
    let rows: Vec<(String, String, String, Option<String>, i64, i64)> = sqlx::query_as(
        "SELECT v.version, v.node_id, v.state, v.error, v.requests, v.errors FROM node_versions v \
         JOIN nodes n ON n.id = v.node_id WHERE v.service = $1 AND n.stopped_at IS NULL AND n.seen_at > $2 \
         ORDER BY v.node_id",
    )
    .bind(service)
    .bind(store::now_millis() - LIVE_MS)
    .fetch_all(db)
    .await
    .context("failed to read the versions on nodes")?;
    let mut out: BTreeMap<String, Vec<VersionOnNode>> = BTreeMap::new();
    for (version, node, state, error, requests, errors) in rows {
        out.entry(version).or_default().push(VersionOnNode { node, state, error, requests, errors });
    }
    Ok(out)
}

/// Why a version cannot be promoted yet: each live node that does not have it ready.
pub async fn not_ready(db: &Db, service: &str, version: &str) -> anyhow::Result<Vec<String>> {
    let live: Vec<NodeInfo> = nodes(db).await?.into_iter().filter(|n| n.live).collect();
    let states = versions_on_nodes(db, service).await?;
    let on = states.get(version).cloned().unwrap_or_default();
    Ok(live
        .iter()
        .filter_map(|n| match on.iter().find(|v| v.node == n.id) {
            Some(v) if v.state == "ready" => None,
            Some(v) => Some(format!("{} ({}: {})", n.id, v.state, v.error.as_deref().unwrap_or("no detail"))),
            None => Some(format!("{} (not loaded yet)", n.id)),
        })
        .collect())
}

/// The nodes live now: those a change made now must reach.
pub async fn live_nodes(db: &Db) -> anyhow::Result<Vec<String>> {
    Ok(nodes(db).await?.into_iter().filter(|n| n.live).map(|n| n.id).collect())
}

/// Wait until every node of `expected` (the nodes live when the change was
/// made) has acknowledged `generation`, at most `wait`. A node that falls
/// silent meanwhile (frozen, partitioned) is still waited for and named as
/// pending — it has not applied the change — while one that left the fleet
/// gracefully is not. Returns (acknowledged, pending) node ids.
pub async fn wait_for_acks(
    db: &Db,
    expected: &[String],
    generation: i64,
    wait: Duration,
) -> anyhow::Result<(Vec<String>, Vec<String>)> {
    let deadline = tokio::time::Instant::now() + wait;
    loop {
        let all = nodes(db).await?;
        let mut acked = Vec::new();
        let mut pending = Vec::new();
        for node in &all {
            if node.generation >= generation && (node.live || expected.contains(&node.id)) {
                acked.push(node.id.clone());
            } else if expected.contains(&node.id) && !node.stopped {
                pending.push(node.id.clone());
            }
        }
        if pending.is_empty() || tokio::time::Instant::now() >= deadline {
            return Ok((acked, pending));
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// An entry of a service's rollout history.
pub struct Promotion<'a> {
    pub service: &'a str,
    /// `promote`, `rollback`, `canary` or `health`.
    pub kind: &'a str,
    pub version: &'a str,
    pub previous: Option<&'a str>,
    pub generation: i64,
    pub actor: &'a str,
    pub detail: &'a str,
    /// The instance a health rollback moved.
    pub instance: Option<&'a str>,
    /// The node that recorded it.
    pub node: &'a str,
}

/// Record a promotion, rollback, canary or health rollback.
pub async fn record(db: &Db, entry: &Promotion<'_>) -> anyhow::Result<()> {
    sqlx::query(
        "INSERT INTO promotions (id, service, kind, version, previous, generation, actor, detail, at, instance_id, nodes) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)",
    )
    .bind(format!("prm-{}", &uuid::Uuid::new_v4().simple().to_string()[..12]))
    .bind(entry.service)
    .bind(entry.kind)
    .bind(entry.version)
    .bind(entry.previous)
    .bind(entry.generation)
    .bind(entry.actor)
    .bind(entry.detail)
    .bind(store::now_millis())
    .bind(entry.instance)
    .bind(entry.node)
    .execute(db)
    .await
    .context("failed to record the promotion")?;
    Ok(())
}

/// Add `node` to the latest health rollback of `instance` to `version`: it
/// reached the same verdict as the node that moved it. Returns whether there
/// was such an entry.
async fn seen_by(db: &Db, service: &str, instance: &str, version: &str, node: &str) -> anyhow::Result<bool> {
    let latest: Option<(String, String)> = sqlx::query_as(
        "SELECT id, nodes FROM promotions WHERE service = $1 AND kind = 'health' AND instance_id = $2 \
         AND version = $3 ORDER BY at DESC LIMIT 1",
    )
    .bind(service)
    .bind(instance)
    .bind(version)
    .fetch_optional(db)
    .await
    .context("failed to read the health rollbacks")?;
    let Some((id, nodes)) = latest else { return Ok(false) };
    if nodes.split(',').any(|n| n == node) {
        return Ok(true);
    }
    sqlx::query("UPDATE promotions SET nodes = nodes || ',' || $1 WHERE id = $2")
        .bind(node)
        .bind(&id)
        .execute(db)
        .await
        .context("failed to record the node's verdict")?;
    Ok(true)
}

/// A service's latest promotions, newest first.
pub async fn history(db: &Db, service: &str, limit: i64) -> anyhow::Result<Vec<serde_json::Value>> {
    type Row = (String, String, Option<String>, i64, String, String, i64, Option<String>, String);
    let rows: Vec<Row> = sqlx::query_as(
        "SELECT kind, version, previous, generation, actor, detail, at, instance_id, nodes FROM promotions \
         WHERE service = $1 ORDER BY at DESC LIMIT $2",
    )
    .bind(service)
    .bind(limit)
    .fetch_all(db)
    .await
    .context("failed to read promotions")?;
    Ok(rows
        .into_iter()
        .map(|(kind, version, previous, generation, actor, detail, at, instance, nodes)| {
            let nodes: Vec<&str> = nodes.split(',').filter(|n| !n.is_empty()).collect();
            serde_json::json!({
                "kind": kind, "version": version, "previous": previous, "generation": generation,
                "actor": actor, "detail": detail, "at_ms": at, "instance": instance, "nodes": nodes,
            })
        })
        .collect())
}

/// Requests an instance's new version is judged on.
pub const HEALTH_WINDOW: u32 = 20;
/// Judged once it has served this many of them.
pub const HEALTH_MIN: u32 = 10;
/// Rolled back when more than this share of them failed (5xx or trap), in percent.
pub const HEALTH_THRESHOLD_PERCENT: u32 = 50;

/// An instance's health gate on this node: the first [`HEALTH_WINDOW`]
/// requests of each version it newly serves are counted; too many failures
/// and the instance goes back to the version it served before.
#[derive(Default)]
pub struct HealthWindow {
    /// Address of the version that passed (or needs no) judgement: the fast path.
    settled: std::sync::atomic::AtomicUsize,
    state: std::sync::Mutex<WindowState>,
}

#[derive(Default)]
struct WindowState {
    /// The version judged, by address (holding it would keep it loaded).
    judged: usize,
    previous: Option<String>,
    seen: u32,
    failed: u32,
}

/// Where the health gate sends an instance back to.
pub enum GateBack {
    /// An instance following the active version: the version active before it.
    Previous(Arc<crate::registry::ServiceSlot>),
    /// A canary: the active version.
    Active(Arc<crate::registry::ServiceSlot>),
}

/// A promotion is judged by the health gate for this long after it.
pub const HEALTH_FRESH_MS: i64 = 10 * 60 * 1000;

impl GateBack {
    /// The version to go back to if `judged` fails, when it is judged at all.
    fn version(&self, judged: &crate::registry::LoadedVersion) -> Option<String> {
        match self {
            GateBack::Previous(slot) => {
                let since = judged.activated_ms.load(std::sync::atomic::Ordering::Relaxed);
                (store::now_millis() - since < HEALTH_FRESH_MS).then(|| slot.previous()).flatten()
            }
            GateBack::Active(slot) => slot.active().map(|v| v.version.clone()),
        }
    }
}

/// A version that failed its instance's health gate.
#[derive(Debug, Clone)]
pub struct Unhealthy {
    pub instance: String,
    pub service: String,
    pub version: String,
    pub previous: String,
    pub reason: String,
}

impl HealthWindow {
    /// Count one request `version` served for `instance`; `Some` when that
    /// tips it over the threshold (once per version).
    pub fn observe(
        &self,
        instance: &str,
        version: &Arc<crate::registry::LoadedVersion>,
        failed: bool,
        back_to: &GateBack,
    ) -> Option<Unhealthy> {
        let address = Arc::as_ptr(version) as usize;
        if self.settled.load(std::sync::atomic::Ordering::Relaxed) == address {
            return None;
        }
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if state.judged != address {
            // A version this instance did not serve before here: judge it,
            // unless there is nothing to go back to.
            let previous = back_to.version(version);
            *state = WindowState { judged: address, previous, seen: 0, failed: 0 };
            if state.previous.is_none() || state.previous.as_deref() == Some(version.version.as_str()) {
                self.settled.store(address, std::sync::atomic::Ordering::Relaxed);
                return None;
            }
        }
        state.seen += 1;
        state.failed += u32::from(failed);
        let (seen, bad) = (state.seen, state.failed);
        if seen >= HEALTH_MIN && bad * 100 > seen * HEALTH_THRESHOLD_PERCENT {
            self.settled.store(address, std::sync::atomic::Ordering::Relaxed);
            return Some(Unhealthy {
                instance: instance.to_string(),
                service: version.service.clone(),
                version: version.version.clone(),
                previous: state.previous.clone().unwrap_or_default(),
                reason: format!(
                    "{bad} of its first {seen} requests on {} failed (5xx or trap; the gate is over {HEALTH_THRESHOLD_PERCENT}%)",
                    version.version
                ),
            });
        }
        if seen >= HEALTH_WINDOW {
            self.settled.store(address, std::sync::atomic::Ordering::Relaxed);
        }
        None
    }
}

/// Pin instances whose new version failed its health gate back to the version
/// they served before, recording why.
pub async fn health_rollbacks(node: Arc<Node>, mut unhealthy: tokio::sync::mpsc::UnboundedReceiver<Unhealthy>) {
    while let Some(bad) = unhealthy.recv().await {
        tracing::warn!(instance = %bad.instance, version = %bad.version, back_to = %bad.previous, "health gate: {}", bad.reason);
        let pinned = node
            .configurator
            .rollout_pin(&bad.service, std::slice::from_ref(&bad.instance), &bad.previous, "health", &bad.reason)
            .await;
        match pinned {
            Ok((ids, generation)) if !ids.is_empty() => {
                let detail = format!("instance {} back to {}: {}", bad.instance, bad.previous, bad.reason);
                let entry = Promotion {
                    service: &bad.service,
                    kind: "health",
                    version: &bad.previous,
                    previous: Some(&bad.version),
                    generation,
                    actor: "health gate",
                    detail: &detail,
                    instance: Some(&bad.instance),
                    node: &node.fleet.id,
                };
                if let Err(e) = record(&node.db, &entry).await {
                    tracing::warn!("{e:#}");
                }
                let _ = node.fleet.ack(generation).await;
            }
            Ok(_) => {
                // Another node moved it first (one entry per rollback, naming
                // every node that saw it fail), or its owner pinned it.
                let mut seen = false;
                for _ in 0..10 {
                    match seen_by(&node.db, &bad.service, &bad.instance, &bad.previous, &node.fleet.id).await {
                        Ok(true) => {
                            seen = true;
                            break;
                        }
                        Ok(false) => tokio::time::sleep(Duration::from_millis(200)).await,
                        Err(e) => {
                            tracing::warn!("{e:#}");
                            break;
                        }
                    }
                }
                if !seen {
                    tracing::info!(instance = %bad.instance, "health gate: the instance was pinned by its owner; left alone")
                }
            }
            Err(e) => tracing::warn!(instance = %bad.instance, "health gate: failed to roll back: {e}"),
        }
    }
}
