//! Rollout endpoints (operators): the fleet, staging, promotion and rollback,
//! canaries, and where each version stands on each node.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::rejection::JsonRejection;
use axum::extract::{Path, State};
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};

use super::auth::Authed;
use super::AdminState;
use super::{body, setups_due, ApiError, ApiResult};
use crate::access::Platform;
use crate::rollout;

/// Longest a caller may ask stage or promote to wait for the nodes.
const MAX_WAIT_MS: u64 = 120_000;

pub(crate) async fn nodes(State(node): State<Arc<AdminState>>, Authed(caller): Authed) -> ApiResult<Json<Value>> {
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

/// Every live node fetches and compiles the version; wait until each reports it
/// ready (or failed).
pub(crate) async fn stage(
    State(node): State<Arc<AdminState>>,
    Authed(caller): Authed,
    Path(service): Path<String>,
    payload: Result<Json<Stage>, JsonRejection>,
) -> ApiResult<Json<Value>> {
    node.access.require_operator(&caller, Platform::ServicesPublish)?;
    let Stage { version, wait_ms } = body(payload)?;
    let staged = node.rollout.stage(&service, &version, wait(wait_ms, 30_000)?).await?;
    node.audit.record(&caller.email, "version.stage", &format!("{service} {version}"), None, "ok").await;
    Ok(Json(serde_json::to_value(staged).map_err(anyhow::Error::from)?))
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
    State(node): State<Arc<AdminState>>,
    Authed(caller): Authed,
    Path(service): Path<String>,
    payload: Result<Json<Promote>, JsonRejection>,
) -> ApiResult<Json<Value>> {
    node.access.require_operator(&caller, Platform::ServicesPublish)?;
    let Promote { version, wait_ms } = body(payload)?;
    promote_to(&node, &caller.email, &service, &version, "promote", wait(wait_ms, 10_000)?).await
}

pub(crate) async fn rollback(
    State(node): State<Arc<AdminState>>,
    Authed(caller): Authed,
    Path(service): Path<String>,
    payload: Result<Json<Rollback>, JsonRejection>,
) -> ApiResult<Json<Value>> {
    node.access.require_operator(&caller, Platform::ServicesPublish)?;
    let Rollback { wait_ms } = payload.map(|Json(r)| r).unwrap_or_default();
    let previous = node.rollout.previous(&service).await?;
    promote_to(&node, &caller.email, &service, &previous, "rollback", wait(wait_ms, 10_000)?).await
}

/// Make `version` active on every node, then queue the setups and record the
/// subscription changes it brings.
async fn promote_to(
    node: &AdminState,
    actor: &str,
    service: &str,
    version: &str,
    kind: &str,
    wait: Duration,
) -> ApiResult<Json<Value>> {
    let promoted = node.rollout.promote(actor, service, version, kind, wait).await?;
    setups_due(node).await;
    super::subscriptions_due(node).await;
    node.audit.record(actor, &format!("version.{kind}"), &format!("{service} {version}"), None, "ok").await;
    Ok(Json(serde_json::to_value(promoted).map_err(anyhow::Error::from)?))
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
    State(node): State<Arc<AdminState>>,
    Authed(caller): Authed,
    Path(service): Path<String>,
    payload: Result<Json<Canary>, JsonRejection>,
) -> ApiResult<Json<Value>> {
    node.access.require_operator(&caller, Platform::ServicesPublish)?;
    let Canary { version, instances, percent } = body(payload)?;
    let canaried = node.rollout.canary(&caller.email, &service, &version, instances, percent).await?;
    setups_due(&node).await;
    super::subscriptions_due(&node).await;
    node.audit.record(&caller.email, "version.canary", &format!("{service} {version}"), None, "ok").await;
    Ok(Json(serde_json::to_value(canaried).map_err(anyhow::Error::from)?))
}

/// End a canary: its instances follow the active version again.
pub(crate) async fn abort_canary(
    State(node): State<Arc<AdminState>>,
    Authed(caller): Authed,
    Path(service): Path<String>,
) -> ApiResult<Json<Value>> {
    node.access.require_operator(&caller, Platform::ServicesPublish)?;
    let released = node.rollout.end_canary(&service).await?;
    node.audit.record(&caller.email, "version.canary.abort", &service, None, "ok").await;
    Ok(Json(json!({ "service": service, "released": released })))
}

/// Where each version of a service stands on each live node.
pub(crate) async fn status(
    State(node): State<Arc<AdminState>>,
    Authed(caller): Authed,
    Path(service): Path<String>,
) -> ApiResult<Json<Value>> {
    node.access.require_operator(&caller, Platform::ServicesPublish)?;
    Ok(Json(node.rollout.status(&service).await?))
}
