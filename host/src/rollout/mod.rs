//! Updates across the fleet: which nodes are live, what each has loaded, and
//! the two phases of an update.
//!
//! - Every node joins the fleet at start ([`fleet`]), beats every second, and
//!   writes the platform generation it has caught up with as soon as it has:
//!   that write is its acknowledgement of a promotion. It reports every version
//!   it loaded (or failed to load) in `node_versions`, with the requests and
//!   errors it served with it.
//! - **Stage**: every node fetches and compiles a published version (in the
//!   background, on publishing); [`Rollout::stage`] waits until every live node
//!   reports it ready, or names those that failed and why.
//! - **Promote**: refused unless every live node has the version ready; then one
//!   transaction makes it active (keeping the version it replaces for
//!   rollback) and bumps the generation, which notifies every node; each swaps
//!   its pointer atomically and acknowledges. [`Rollout::promote`] returns once
//!   every node live when it began has, or names those that have not (`/readyz`
//!   keeps a node that has not caught up out of HAProxy's rotation meanwhile).
//!   **Rollback** promotes the previous version the same way.
//! - **Canary**: pin chosen instances (or a share of them) to the new version
//!   first; promoting clears those pins.
//! - **Health gate** ([`health`]): after a promotion or canary, an instance
//!   whose first requests on the new version fail (5xx, traps) above a
//!   threshold is pinned back to the previous version by itself, with the
//!   reason recorded ([`history`]).
//!
//! The room receives what it uses (the control plane, the registry, the
//! configurator, this node's fleet membership and generation); the admin API
//! parses, authorizes and calls it.

pub mod fleet;
pub mod health;
pub mod history;

use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;
use serde_json::{json, Value};
use tokio::sync::watch;

pub use fleet::*;
pub use health::*;
pub use history::*;

use crate::configurator::{ConfigError, Configurator};
use crate::registry::{Registry, RegistryError};
use crate::store::{self, Db, Seen};

/// Why a rollout operation was refused.
#[derive(Debug, thiserror::Error)]
pub enum RolloutError {
    #[error(
        "{service} {version} is not ready on every node: {nodes}; stage it first (wharf stage {service} {version})"
    )]
    NotReady { service: String, version: String, nodes: String },
    #[error("{0} has no previous version to roll back to")]
    NoPrevious(String),
    #[error("{0}")]
    InvalidCanary(String),
    #[error(transparent)]
    Registry(#[from] RegistryError),
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Internal(#[from] anyhow::Error),
}

impl From<sqlx::Error> for RolloutError {
    fn from(e: sqlx::Error) -> Self {
        Self::Internal(e.into())
    }
}

/// What a stage came to.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Staged {
    pub service: String,
    pub version: String,
    /// Every live node has it ready.
    pub ready: bool,
    /// Live nodes that have it ready, of `live_nodes`.
    pub ready_on: usize,
    pub live_nodes: usize,
    /// Each live node that does not, and why.
    pub not_ready: Vec<String>,
    pub nodes: Vec<VersionOnNode>,
}

/// What a promotion (or rollback) came to.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Promoted {
    pub service: String,
    pub version: String,
    pub previous: Option<String>,
    pub generation: i64,
    pub acknowledged: Vec<String>,
    /// Nodes live when it began that have not acknowledged it.
    pub pending: Vec<String>,
    pub released_pins: Vec<String>,
    pub took_ms: u64,
}

/// What a canary came to.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Canaried {
    pub service: String,
    pub version: String,
    pub instances: Vec<String>,
    pub acknowledged: Vec<String>,
    pub pending: Vec<String>,
}

/// The rollout room of one node.
pub struct Rollout {
    db: Db,
    registry: Arc<Registry>,
    configurator: Arc<Configurator>,
    /// This node's membership of the fleet.
    pub fleet: Arc<Fleet>,
    seen: Arc<Seen>,
}

impl Rollout {
    pub fn new(
        db: Db,
        registry: Arc<Registry>,
        configurator: Arc<Configurator>,
        fleet: Arc<Fleet>,
        seen: Arc<Seen>,
    ) -> Self {
        Self { db, registry, configurator, fleet, seen }
    }

    /// Refuse a version whose SQL dialects this platform's instance databases
    /// do not speak (as activating it would). This node's failure to load it
    /// is reported with the others' (its beat names it), not here.
    async fn runnable_here(&self, service: &str, version: &str) -> Result<(), RolloutError> {
        match self.registry.ensure_loaded(service, version).await {
            Ok(()) | Err(RegistryError::NotLoadable { .. }) => {}
            Err(e) => return Err(e.into()),
        }
        if let Some(loaded) = self.registry.slot(service).and_then(|s| s.version(version)) {
            self.registry.check_dialect(&loaded)?;
        }
        Ok(())
    }

    /// Every live node fetches and compiles `version`; wait (at most `wait`)
    /// until each reports it ready, or one failed.
    pub async fn stage(&self, service: &str, version: &str, wait: Duration) -> Result<Staged, RolloutError> {
        self.registry.version(service, version).await?;
        self.runnable_here(service, version).await?;
        let mut tx = store::begin(&self.db).await?;
        sqlx::query("UPDATE service_versions SET staged_at = $1 WHERE service = $2 AND version = $3")
            .bind(store::now())
            .bind(service)
            .bind(version)
            .execute(&mut *tx)
            .await?;
        // Nodes that missed the version load it when they catch up.
        store::commit_change_for(tx, &self.seen, store::Change::Service(service), || async {
            Ok::<_, RolloutError>(())
        })
        .await?;
        self.fleet.wake.notify_one();
        let deadline = tokio::time::Instant::now() + wait;
        let pending = loop {
            let pending = not_ready(&self.db, service, version).await?;
            let failed = pending.iter().any(|p| p.contains("(failed"));
            if pending.is_empty() || failed || tokio::time::Instant::now() >= deadline {
                break pending;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        let nodes = versions_on_nodes(&self.db, service).await?.remove(version).unwrap_or_default();
        let live = live_nodes(&self.db).await?;
        Ok(Staged {
            service: service.to_string(),
            version: version.to_string(),
            ready: pending.is_empty(),
            ready_on: nodes.iter().filter(|n| n.state == "ready" && live.contains(&n.node)).count(),
            live_nodes: live.len(),
            not_ready: pending,
            nodes,
        })
    }

    /// The version `service` rolls back to.
    pub async fn previous(&self, service: &str) -> Result<String, RolloutError> {
        let (previous,): (Option<String>,) = sqlx::query_as("SELECT previous_version FROM services WHERE name = $1")
            .bind(service)
            .fetch_optional(&self.db)
            .await?
            .ok_or_else(|| RegistryError::UnknownService(service.to_string()))?;
        previous.ok_or_else(|| RolloutError::NoPrevious(service.to_string()))
    }

    /// Make `version` active on every node (`kind`: `promote` or `rollback`):
    /// refused unless every live node has it ready; returns once every node
    /// live now has acknowledged, or after `wait`, naming those that have not.
    pub async fn promote(
        &self,
        actor: &str,
        service: &str,
        version: &str,
        kind: &str,
        wait: Duration,
    ) -> Result<Promoted, RolloutError> {
        self.registry.version(service, version).await?;
        self.require_ready(service, version).await?;
        let previous = self.registry.slot(service).and_then(|s| s.active()).map(|v| v.version.clone());
        // Every node live now must apply it; one that freezes meanwhile is named.
        let expected = live_nodes(&self.db).await?;
        let started = std::time::Instant::now();
        // One transaction: the version becomes active and canary and health pins
        // end (every instance follows it), under one generation.
        let mut activation = self.registry.begin_activation(service, version).await?;
        let released = Configurator::release_rollout_pins_in(&mut activation.tx, service).await?;
        activation.instances = released.clone();
        activation.commit().await?;
        let generation = self.seen.get();
        self.configurator.reroute(&released).await?;
        self.fleet.ack(generation).await?;
        let (acknowledged, pending) = wait_for_acks(&self.db, &expected, generation, wait).await?;
        let took_ms = started.elapsed().as_millis() as u64;
        let detail = format!("{} nodes acknowledged in {took_ms} ms", acknowledged.len());
        let entry = Promotion {
            service,
            kind,
            version,
            previous: previous.as_deref(),
            generation,
            actor,
            detail: &detail,
            instance: None,
            node: &self.fleet.id,
        };
        record(&self.db, &entry).await?;
        Ok(Promoted {
            service: service.to_string(),
            version: version.to_string(),
            previous,
            generation,
            acknowledged,
            pending,
            released_pins: released,
            took_ms,
        })
    }

    async fn require_ready(&self, service: &str, version: &str) -> Result<(), RolloutError> {
        let nodes = not_ready(&self.db, service, version).await?;
        if nodes.is_empty() {
            return Ok(());
        }
        Err(RolloutError::NotReady {
            service: service.to_string(),
            version: version.to_string(),
            nodes: nodes.join(", "),
        })
    }

    /// Run `version` on chosen `instances` of `service`, or on `percent` of
    /// those following its active version (a stable choice), before promoting it.
    pub async fn canary(
        &self,
        actor: &str,
        service: &str,
        version: &str,
        instances: Vec<String>,
        percent: Option<u32>,
    ) -> Result<Canaried, RolloutError> {
        self.registry.version(service, version).await?;
        self.runnable_here(service, version).await?;
        self.require_ready(service, version).await?;
        let followers = self.configurator.followers(service).await?;
        let chosen = choose_canaries(service, followers, instances, percent)?;
        let reason = format!("canary of {service} {version}");
        let expected = live_nodes(&self.db).await?;
        let (pinned, generation) = self.configurator.rollout_pin(service, &chosen, version, "canary", &reason).await?;
        self.fleet.ack(self.seen.get()).await?;
        let (acknowledged, pending) = wait_for_acks(&self.db, &expected, generation, Duration::from_secs(10)).await?;
        let previous = self.registry.slot(service).and_then(|s| s.active()).map(|v| v.version.clone());
        let detail = format!("{} instances", pinned.len());
        let entry = Promotion {
            service,
            kind: "canary",
            version,
            previous: previous.as_deref(),
            generation,
            actor,
            detail: &detail,
            instance: None,
            node: &self.fleet.id,
        };
        record(&self.db, &entry).await?;
        Ok(Canaried {
            service: service.to_string(),
            version: version.to_string(),
            instances: pinned,
            acknowledged,
            pending,
        })
    }

    /// End a canary: its instances follow the active version again.
    pub async fn end_canary(&self, service: &str) -> Result<Vec<String>, RolloutError> {
        Ok(self.configurator.rollout_unpin(service, &["canary"]).await?.0)
    }

    /// Where each version of `service` stands on each live node, its pins,
    /// and the latest history.
    pub async fn status(&self, service: &str) -> Result<Value, RolloutError> {
        let info = self.registry.service(service).await?;
        let (previous,): (Option<String>,) = sqlx::query_as("SELECT previous_version FROM services WHERE name = $1")
            .bind(service)
            .fetch_one(&self.db)
            .await?;
        let nodes: Vec<_> = nodes(&self.db).await?.into_iter().filter(|n| n.live).collect();
        let current = store::generation(&self.db).await?;
        let mut on_nodes = versions_on_nodes(&self.db, service).await?;
        let pins: Vec<Pin> = sqlx::query_as(
            "SELECT id, pinned_version, pinned_by, pin_reason FROM instances WHERE service = $1 \
             AND pinned_version IS NOT NULL AND deleted_at IS NULL",
        )
        .bind(service)
        .fetch_all(&self.db)
        .await?;
        let staged: std::collections::HashMap<String, Option<i64>> = sqlx::query_as::<_, (String, Option<i64>)>(
            "SELECT version, staged_at FROM service_versions WHERE service = $1",
        )
        .bind(service)
        .fetch_all(&self.db)
        .await?
        .into_iter()
        .collect();
        let versions: Vec<Value> = info
            .versions
            .iter()
            .map(|v| {
                let states = on_nodes.remove(&v.version).unwrap_or_default();
                let requests: i64 = states.iter().map(|s| s.requests).sum();
                let errors: i64 = states.iter().map(|s| s.errors).sum();
                let pinned: Vec<Value> = pins
                    .iter()
                    .filter(|p| p.pinned_version.as_deref() == Some(v.version.as_str()))
                    .map(|p| json!({ "instance": p.id, "by": p.pinned_by, "reason": p.pin_reason }))
                    .collect();
                json!({
                    "version": v.version,
                    "active": info.active_version.as_deref() == Some(v.version.as_str()),
                    "staged_at": staged.get(&v.version).copied().flatten(),
                    "previous": previous.as_deref() == Some(v.version.as_str()),
                    "ready_on": states.iter().filter(|s| s.state == "ready").count(),
                    "nodes": states,
                    "requests": requests,
                    "errors": errors,
                    "pinned": pinned,
                })
            })
            .collect();
        Ok(json!({
            "service": service,
            "active_version": info.active_version,
            "previous_version": previous,
            "generation": current,
            "nodes": nodes.iter().map(|n| json!({
                "id": n.id, "ingress": n.ingress, "generation": n.generation, "caught_up": n.generation >= current,
            })).collect::<Vec<_>>(),
            "versions": versions,
            "history": history(&self.db, service, 20).await?,
        }))
    }
}

/// An instance pinned to a version, by whom and why.
#[derive(sqlx::FromRow)]
struct Pin {
    id: String,
    pinned_version: Option<String>,
    pinned_by: Option<String>,
    pin_reason: Option<String>,
}

/// The canary's instances: those named (each must follow the active version),
/// or a stable `percent` of the followers.
fn choose_canaries(
    service: &str,
    followers: Vec<String>,
    instances: Vec<String>,
    percent: Option<u32>,
) -> Result<Vec<String>, RolloutError> {
    match (instances.is_empty(), percent) {
        (false, None) => {
            if let Some(stranger) = instances.iter().find(|i| !followers.contains(i)) {
                return Err(RolloutError::InvalidCanary(format!(
                    "instance {stranger:?} is not an instance of {service} following its active version"
                )));
            }
            Ok(instances)
        }
        (true, Some(p)) if (1..=100).contains(&p) => {
            // A stable choice: the same instances for the same share.
            let mut ranked: Vec<(u64, String)> = followers
                .into_iter()
                .map(|id| {
                    use sha2::Digest as _;
                    let digest = sha2::Sha256::digest(id.as_bytes());
                    (u64::from_be_bytes(digest[..8].try_into().unwrap_or_default()), id)
                })
                .collect();
            ranked.sort();
            let count = (ranked.len() * p as usize).div_ceil(100);
            Ok(ranked.into_iter().take(count).map(|(_, id)| id).collect())
        }
        (true, Some(_)) => Err(RolloutError::InvalidCanary("percent is 1 to 100".into())),
        _ => Err(RolloutError::InvalidCanary("name the canary instances, or a percent of them, not both".into())),
    }
}

/// The node's beat, until it stops; then it leaves the fleet. Every
/// `unload_interval` it unloads the versions nothing uses; every beat it
/// retries, in the background, versions whose load failed and whose backoff
/// passed.
pub async fn run(rollout: Arc<Rollout>, unload_interval: Duration, mut stop: watch::Receiver<bool>) {
    let Rollout { registry, fleet, configurator, seen, .. } = &*rollout;
    let mut last_unload = tokio::time::Instant::now();
    loop {
        if last_unload.elapsed() >= unload_interval {
            last_unload = tokio::time::Instant::now();
            match registry.unload_unused().await {
                Ok(unloaded) if !unloaded.is_empty() => fleet.wake.notify_one(),
                Ok(_) => {}
                Err(e) => tracing::warn!("fleet: failed to unload unused versions: {e:#}"),
            }
        }
        if let Err(e) = registry.retry_due().await {
            tracing::warn!("fleet: failed to retry versions that did not load: {e:#}");
        }
        if let Err(e) = fleet.beat(seen, registry).await {
            tracing::warn!("fleet: {e:#}");
        }
        let loaded = tokio::select! {
            _ = tokio::time::sleep(BEAT) => false,
            _ = fleet.wake.notified() => false,
            _ = registry.loaded.notified() => true,
            _ = stop.wait_for(|stop| *stop) => break,
        };
        // A version loaded in the background: routes pinned to it (skipped
        // while it was missing) may use it now.
        if loaded {
            if let Err(e) = configurator.refresh_routes().await {
                tracing::warn!("fleet: failed to rebuild routes after a load: {e}");
            }
        }
    }
    fleet.leave().await;
}
