//! Rollout endpoints (operators): the fleet, staging, promotion and rollback,
//! canaries, and where each version stands on each node.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::rejection::JsonRejection;
use axum::extract::{Path, State};
use axum::Json;
use http::StatusCode;
use serde::Deserialize;
use serde_json::{json, Value};

use super::auth::Authed;
use super::{body, setups_due, ApiError, ApiResult};
use crate::access::Platform;
use crate::node::Node;
use crate::rollout;

/// Longest a caller may ask stage or promote to wait for the nodes.
const MAX_WAIT_MS: u64 = 120_000;

pub(crate) async fn nodes(State(node): State<Arc<Node>>, Authed(caller): Authed) -> ApiResult<Json<Value>> {
    node.access.require_operator(&caller, Platform::NodeRead)?;
    Ok(Json(json!({ "this_node": node.fleet.id, "nodes": rollout::nodes(&node.db).await? })))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Stage {
    version: String,
    #[serde(default)]
    wait_ms: Option<u64>,
}

fn wait(ms: Option<u64>, default: u64) -> ApiResult<Duration> {
    match ms {
        Some(ms) if ms > MAX_WAIT_MS => Err(ApiError::bad_request(format!("wait_ms is at most {MAX_WAIT_MS}"))),
        Some(ms) => Ok(Duration::from_millis(ms)),
        None => Ok(Duration::from_millis(default)),
    }
}

/// Refuse a version whose SQL dialects this platform's instance databases do
/// not speak (as activating it would).
async fn runnable_here(node: &Node, service: &str, version: &str) -> ApiResult<()> {
    match node.registry.ensure_loaded(service, version).await {
        // This node's failure is reported with the others' (its beat names it).
        Ok(()) | Err(crate::registry::RegistryError::NotLoadable { .. }) => {}
        Err(e) => return Err(e.into()),
    }
    if let Some(loaded) = node.registry.slot(service).and_then(|s| s.version(version)) {
        node.registry.check_dialect(&loaded)?;
    }
    Ok(())
}

/// Every live node fetches and compiles the version; wait until each reports it
/// ready (or failed).
pub(crate) async fn stage(
    State(node): State<Arc<Node>>,
    Authed(caller): Authed,
    Path(service): Path<String>,
    payload: Result<Json<Stage>, JsonRejection>,
) -> ApiResult<Json<Value>> {
    node.access.require_operator(&caller, Platform::ServicesPublish)?;
    let Stage { version, wait_ms } = body(payload)?;
    let wait = wait(wait_ms, 30_000)?;
    node.registry.version(&service, &version).await?;
    runnable_here(&node, &service, &version).await?;
    {
        let mut tx = crate::store::begin(&node.db).await.map_err(anyhow::Error::from)?;
        sqlx::query("UPDATE service_versions SET staged_at = $1 WHERE service = $2 AND version = $3")
            .bind(crate::store::now())
            .bind(&service)
            .bind(&version)
            .execute(&mut *tx)
            .await
            .map_err(anyhow::Error::from)?;
        // Nodes that missed the version load it when they catch up.
        let generation = crate::store::bump_generation(&mut tx).await.map_err(anyhow::Error::from)?;
        tx.commit().await.map_err(anyhow::Error::from)?;
        node.generation.applied_own(generation);
    }
    node.fleet.wake.notify_one();
    let deadline = tokio::time::Instant::now() + wait;
    let pending = loop {
        let pending = rollout::not_ready(&node.db, &service, &version).await?;
        let failed = pending.iter().any(|p| p.contains("(failed"));
        if pending.is_empty() || failed || tokio::time::Instant::now() >= deadline {
            break pending;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let on_nodes = rollout::versions_on_nodes(&node.db, &service).await?.remove(&version).unwrap_or_default();
    let live = rollout::live_nodes(&node.db).await?;
    let ready_on = on_nodes.iter().filter(|n| n.state == "ready" && live.contains(&n.node)).count();
    node.audit.record(&caller.email, "version.stage", &format!("{service} {version}"), None, "ok").await;
    Ok(Json(json!({
        "service": service,
        "version": version,
        "ready": pending.is_empty(),
        "ready_on": ready_on,
        "live_nodes": live.len(),
        "not_ready": pending,
        "nodes": on_nodes,
    })))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Promote {
    version: String,
    #[serde(default)]
    wait_ms: Option<u64>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(crate) struct Rollback {
    #[serde(default)]
    wait_ms: Option<u64>,
}

pub(crate) async fn promote(
    State(node): State<Arc<Node>>,
    Authed(caller): Authed,
    Path(service): Path<String>,
    payload: Result<Json<Promote>, JsonRejection>,
) -> ApiResult<Json<Value>> {
    node.access.require_operator(&caller, Platform::ServicesPublish)?;
    let Promote { version, wait_ms } = body(payload)?;
    promote_to(&node, &caller.email, &service, &version, "promote", wait(wait_ms, 10_000)?).await
}

pub(crate) async fn rollback(
    State(node): State<Arc<Node>>,
    Authed(caller): Authed,
    Path(service): Path<String>,
    payload: Result<Json<Rollback>, JsonRejection>,
) -> ApiResult<Json<Value>> {
    node.access.require_operator(&caller, Platform::ServicesPublish)?;
    let Rollback { wait_ms } = payload.map(|Json(r)| r).unwrap_or_default();
    let (previous,): (Option<String>,) = sqlx::query_as("SELECT previous_version FROM services WHERE name = $1")
        .bind(&service)
        .fetch_optional(&node.db)
        .await
        .map_err(anyhow::Error::from)?
        .ok_or_else(|| ApiError::from(crate::registry::RegistryError::UnknownService(service.clone())))?;
    let previous = previous.ok_or_else(|| {
        ApiError::new(StatusCode::CONFLICT, format!("{service} has no previous version to roll back to"))
    })?;
    promote_to(&node, &caller.email, &service, &previous, "rollback", wait(wait_ms, 10_000)?).await
}

/// Make `version` active on every node: refused unless every live node has it
/// ready; returns once every live node acknowledged, or names those that did not.
async fn promote_to(
    node: &Node,
    actor: &str,
    service: &str,
    version: &str,
    kind: &str,
    wait: Duration,
) -> ApiResult<Json<Value>> {
    node.registry.version(service, version).await?;
    let not_ready = rollout::not_ready(&node.db, service, version).await?;
    if !not_ready.is_empty() {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            format!(
                "{service} {version} is not ready on every node: {}; stage it first (wharf stage {service} {version})",
                not_ready.join(", ")
            ),
        ));
    }
    let previous = node.registry.slot(service).and_then(|s| s.active()).map(|v| v.version.clone());
    // Every node live now must apply it; one that freezes meanwhile is named.
    let expected = rollout::live_nodes(&node.db).await?;
    let started = std::time::Instant::now();
    // One transaction: the version becomes active and canary and health pins
    // end (every instance follows it), under one generation.
    let (_, released) = node.registry.promote(service, version, true).await?;
    let generation = node.generation.get();
    if !released.is_empty() {
        node.configurator.refresh_routes().await?;
    }
    node.fleet.ack(generation).await?;
    let (acknowledged, pending) = rollout::wait_for_acks(&node.db, &expected, generation, wait).await?;
    let took_ms = started.elapsed().as_millis() as u64;
    let detail = format!("{} nodes acknowledged in {took_ms} ms", acknowledged.len());
    let entry = rollout::Promotion {
        service,
        kind,
        version,
        previous: previous.as_deref(),
        generation,
        actor,
        detail: &detail,
        instance: None,
        node: &node.fleet.id,
    };
    rollout::record(&node.db, &entry).await?;
    setups_due(node).await;
    super::subscriptions_due(node).await;
    node.audit.record(actor, &format!("version.{kind}"), &format!("{service} {version}"), None, "ok").await;
    Ok(Json(json!({
        "service": service,
        "version": version,
        "previous": previous,
        "generation": generation,
        "acknowledged": acknowledged,
        "pending": pending,
        "released_pins": released,
        "took_ms": took_ms,
    })))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Canary {
    version: String,
    #[serde(default)]
    instances: Vec<String>,
    #[serde(default)]
    percent: Option<u32>,
}

/// Promote a version to chosen instances, or a share of them, first.
pub(crate) async fn canary(
    State(node): State<Arc<Node>>,
    Authed(caller): Authed,
    Path(service): Path<String>,
    payload: Result<Json<Canary>, JsonRejection>,
) -> ApiResult<Json<Value>> {
    node.access.require_operator(&caller, Platform::ServicesPublish)?;
    let Canary { version, instances, percent } = body(payload)?;
    node.registry.version(&service, &version).await?;
    runnable_here(&node, &service, &version).await?;
    let not_ready = rollout::not_ready(&node.db, &service, &version).await?;
    if !not_ready.is_empty() {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            format!("{service} {version} is not ready on every node: {}; stage it first", not_ready.join(", ")),
        ));
    }
    let followers = node.configurator.followers(&service).await?;
    let chosen: Vec<String> = match (instances.is_empty(), percent) {
        (false, None) => {
            if let Some(stranger) = instances.iter().find(|i| !followers.contains(i)) {
                return Err(ApiError::bad_request(format!(
                    "instance {stranger:?} is not an instance of {service} following its active version"
                )));
            }
            instances
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
            ranked.into_iter().take(count).map(|(_, id)| id).collect()
        }
        (true, Some(_)) => return Err(ApiError::bad_request("percent is 1 to 100")),
        _ => return Err(ApiError::bad_request("name the canary instances, or a percent of them, not both")),
    };
    let reason = format!("canary of {service} {version}");
    let expected = rollout::live_nodes(&node.db).await?;
    let (pinned, generation) = node.configurator.rollout_pin(&service, &chosen, &version, "canary", &reason).await?;
    node.fleet.ack(node.generation.get()).await?;
    let (acknowledged, pending) =
        rollout::wait_for_acks(&node.db, &expected, generation, Duration::from_secs(10)).await?;
    let previous = node.registry.slot(&service).and_then(|s| s.active()).map(|v| v.version.clone());
    let detail = format!("{} instances", pinned.len());
    let entry = rollout::Promotion {
        service: &service,
        kind: "canary",
        version: &version,
        previous: previous.as_deref(),
        generation,
        actor: &caller.email,
        detail: &detail,
        instance: None,
        node: &node.fleet.id,
    };
    rollout::record(&node.db, &entry).await?;
    setups_due(&node).await;
    super::subscriptions_due(&node).await;
    node.audit.record(&caller.email, "version.canary", &format!("{service} {version}"), None, "ok").await;
    Ok(Json(json!({
        "service": service, "version": version, "instances": pinned,
        "acknowledged": acknowledged, "pending": pending,
    })))
}

/// End a canary: its instances follow the active version again.
pub(crate) async fn abort_canary(
    State(node): State<Arc<Node>>,
    Authed(caller): Authed,
    Path(service): Path<String>,
) -> ApiResult<Json<Value>> {
    node.access.require_operator(&caller, Platform::ServicesPublish)?;
    let (released, _) = node.configurator.rollout_unpin(&service, &["canary"]).await?;
    node.audit.record(&caller.email, "version.canary.abort", &service, None, "ok").await;
    Ok(Json(json!({ "service": service, "released": released })))
}

/// Where each version of a service stands on each live node.
pub(crate) async fn status(
    State(node): State<Arc<Node>>,
    Authed(caller): Authed,
    Path(service): Path<String>,
) -> ApiResult<Json<Value>> {
    node.access.require_operator(&caller, Platform::ServicesPublish)?;
    let info = node.registry.service(&service).await?;
    let (previous,): (Option<String>,) = sqlx::query_as("SELECT previous_version FROM services WHERE name = $1")
        .bind(&service)
        .fetch_one(&node.db)
        .await
        .map_err(anyhow::Error::from)?;
    let nodes: Vec<_> = rollout::nodes(&node.db).await?.into_iter().filter(|n| n.live).collect();
    let current = crate::store::generation(&node.db).await.map_err(anyhow::Error::from)?;
    let mut on_nodes = rollout::versions_on_nodes(&node.db, &service).await?;
    // (instance, version, by, reason)
    type Pin = (String, Option<String>, Option<String>, Option<String>);
    let pins: Vec<Pin> = sqlx::query_as(
        "SELECT id, pinned_version, pinned_by, pin_reason FROM instances WHERE service = $1 AND pinned_version IS NOT NULL",
    )
    .bind(&service)
    .fetch_all(&node.db)
    .await
    .map_err(anyhow::Error::from)?;
    let staged: std::collections::HashMap<String, Option<i64>> = sqlx::query_as::<_, (String, Option<i64>)>(
        "SELECT version, staged_at FROM service_versions WHERE service = $1",
    )
    .bind(&service)
    .fetch_all(&node.db)
    .await
    .map_err(anyhow::Error::from)?
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
                .filter(|p| p.1.as_deref() == Some(v.version.as_str()))
                .map(|p| json!({ "instance": p.0, "by": p.2, "reason": p.3 }))
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
    Ok(Json(json!({
        "service": service,
        "active_version": info.active_version,
        "previous_version": previous,
        "generation": current,
        "nodes": nodes.iter().map(|n| json!({
            "id": n.id, "ingress": n.ingress, "generation": n.generation, "caught_up": n.generation >= current,
        })).collect::<Vec<_>>(),
        "versions": versions,
        "history": rollout::history(&node.db, &service, 20).await?,
    })))
}
