//! The fleet: which nodes are live, at which generation, and where each version
//! stands on each node (every node beats every second and reports them).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use serde::Serialize;
use tokio::sync::Notify;

use crate::registry::Registry;
use crate::store::{self, Db, Seen};

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
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
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

/// A node's row.
#[derive(sqlx::FromRow)]
struct NodeRow {
    id: String,
    ingress: String,
    admin: String,
    started_at: i64,
    /// Unix milliseconds of its last beat.
    seen_at: i64,
    generation: i64,
    stopped_at: Option<i64>,
}

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

    /// Acknowledge the identity generation this node's caches were
    /// invalidated for.
    pub async fn ack_identity(&self, value: i64) -> anyhow::Result<()> {
        sqlx::query("UPDATE nodes SET identity_generation = $1 WHERE id = $2 AND identity_generation < $1")
            .bind(value)
            .bind(&self.id)
            .execute(&self.db)
            .await
            .context("failed to acknowledge the identity generation")?;
        Ok(())
    }

    /// Wait until every live node has invalidated its caches for identity
    /// generation `value`, or `wait` has passed; the nodes still pending.
    pub async fn wait_identity(&self, value: i64, wait: Duration) -> anyhow::Result<Vec<String>> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let pending: Vec<(String,)> = sqlx::query_as(
                "SELECT id FROM nodes WHERE stopped_at IS NULL AND seen_at > $1 AND identity_generation < $2",
            )
            .bind(store::now_millis() - LIVE_MS)
            .bind(value)
            .fetch_all(&self.db)
            .await
            .context("failed to read the nodes' acknowledgements")?;
            if pending.is_empty() || tokio::time::Instant::now() >= deadline {
                return Ok(pending.into_iter().map(|(id,)| id).collect());
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }

    /// Beat: say this node is live, at which generation, and report the
    /// versions whose state changed since the last beat.
    pub async fn beat(&self, seen: &Seen, registry: &Registry) -> anyhow::Result<()> {
        let now = store::now_millis();
        sqlx::query("UPDATE nodes SET seen_at = $1, generation = $2, stopped_at = NULL WHERE id = $3")
            .bind(now)
            .bind(seen.get())
            .bind(&self.id)
            .execute(&self.db)
            .await
            .context("failed to beat")?;
        let mut current = Reports::new();
        for slot in registry.slots() {
            for version in slot.versions() {
                let served = version.served.load(std::sync::atomic::Ordering::Relaxed);
                let failed = version.failed.load(std::sync::atomic::Ordering::Relaxed);
                current.insert(
                    (version.service.clone(), version.version.clone()),
                    ("ready".to_string(), None, served, failed),
                );
            }
        }
        for entry in registry.unloaded.iter() {
            current.insert(entry.key().clone(), ("unloaded".to_string(), None, 0, 0));
        }
        for entry in registry.failed.iter() {
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
        .map(|row| NodeInfo {
            live: row.stopped_at.is_none() && now - row.seen_at < LIVE_MS,
            stopped: row.stopped_at.is_some(),
            id: row.id,
            ingress: row.ingress,
            admin: row.admin,
            started_at: row.started_at,
            seen_at: row.seen_at,
            generation: row.generation,
        })
        .collect();
    nodes.sort_by_key(|n| !n.live);
    Ok(nodes)
}

/// One version's state on one node.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
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
