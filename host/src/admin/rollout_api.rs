//! Rollout endpoints (operators): the fleet, staging, promotion and rollback,
//! canaries, and where each version stands on each node.

use std::sync::Arc;
use std::time::Duration;

use super::extract::{ApiPath, Object};
use axum::extract::rejection::JsonRejection;
use axum::extract::State;
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};

use super::auth::Authed;
use super::AdminState;
use super::{body, setups_due, ApiError, ApiResult};
use crate::access::Platform;
use crate::jobs::setup::Due;
use crate::rollout;

/// Longest a caller may ask stage or promote to wait for the nodes.
const MAX_WAIT_MS: u64 = 120_000;

#[utoipa::path(
    get,
    path = "/v1/nodes",
    tag = "fleet",
    operation_id = "nodes",
    summary = "The fleet: live nodes and their generations (operators)",
    responses(
        (status = 200, description = "The nodes", body = super::openapi::NodeList, content_type = "application/json"),
        (status = "default", description = "An error: the message says what is wrong and how to fix it", body = super::openapi::ErrorBody),
    ),
)]
pub(crate) async fn nodes(State(node): State<Arc<AdminState>>, Authed(caller): Authed) -> ApiResult<Json<Value>> {
    node.access.require_operator(&caller, Platform::NodeRead)?;
    Ok(Json(json!({ "this_node": node.fleet.id, "nodes": rollout::nodes(&node.db).await? })))
}

#[derive(Deserialize, utoipa::ToSchema)]
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
#[utoipa::path(
    post,
    path = "/v1/services/{name}/stage",
    tag = "fleet",
    operation_id = "stage",
    summary = "Compile a version on every node without serving it (operators)",
    params(
        ("name" = String, Path, description = "The service's name"),
    ),
    request_body = Stage,
    responses(
        (status = 200, description = "Each node's readiness", body = crate::rollout::Staged, content_type = "application/json"),
        (status = "default", description = "An error: the message says what is wrong and how to fix it", body = super::openapi::ErrorBody),
    ),
)]
pub(crate) async fn stage(
    State(node): State<Arc<AdminState>>,
    Authed(caller): Authed,
    ApiPath(service): ApiPath<String>,
    payload: Result<Json<Object<Stage>>, JsonRejection>,
) -> ApiResult<Json<Value>> {
    node.access.require_operator(&caller, Platform::ServicesPublish)?;
    let Stage { version, wait_ms } = body(payload)?;
    let staged = node.rollout.stage(&service, &version, wait(wait_ms, 30_000)?).await?;
    node.audit.record(&caller.email, "version.stage", &format!("{service} {version}"), None, "ok").await;
    Ok(Json(serde_json::to_value(staged).map_err(anyhow::Error::from)?))
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct Promote {
    version: String,
    #[serde(default)]
    wait_ms: Option<u64>,
}

#[derive(Deserialize, Default, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct Rollback {
    #[serde(default)]
    wait_ms: Option<u64>,
}

#[utoipa::path(
    post,
    path = "/v1/services/{name}/promote",
    tag = "fleet",
    operation_id = "promote",
    summary = "Make a staged version active on every node (operators)",
    params(
        ("name" = String, Path, description = "The service's name"),
    ),
    request_body = Promote,
    responses(
        (status = 200, description = "The promotion", body = crate::rollout::Promoted, content_type = "application/json"),
        (status = "default", description = "An error: the message says what is wrong and how to fix it", body = super::openapi::ErrorBody),
    ),
)]
pub(crate) async fn promote(
    State(node): State<Arc<AdminState>>,
    Authed(caller): Authed,
    ApiPath(service): ApiPath<String>,
    payload: Result<Json<Object<Promote>>, JsonRejection>,
) -> ApiResult<Json<Value>> {
    node.access.require_operator(&caller, Platform::ServicesPublish)?;
    let Promote { version, wait_ms } = body(payload)?;
    promote_to(&node, &caller.email, &service, &version, "promote", wait(wait_ms, 10_000)?).await
}

#[utoipa::path(
    post,
    path = "/v1/services/{name}/rollback",
    tag = "fleet",
    operation_id = "rollback",
    summary = "Make the previous version active again (operators)",
    params(
        ("name" = String, Path, description = "The service's name"),
    ),
    request_body = Rollback,
    responses(
        (status = 200, description = "The rollback", body = crate::rollout::Promoted, content_type = "application/json"),
        (status = "default", description = "An error: the message says what is wrong and how to fix it", body = super::openapi::ErrorBody),
    ),
)]
pub(crate) async fn rollback(
    State(node): State<Arc<AdminState>>,
    Authed(caller): Authed,
    ApiPath(service): ApiPath<String>,
    payload: Result<Json<Object<Rollback>>, JsonRejection>,
) -> ApiResult<Json<Value>> {
    node.access.require_operator(&caller, Platform::ServicesPublish)?;
    let Rollback { wait_ms } = payload.map(|Json(Object(r))| r).unwrap_or_default();
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
    setups_due(node, Due::Service(service)).await;
    super::subscriptions_due(node, service).await;
    node.audit.record(actor, &format!("version.{kind}"), &format!("{service} {version}"), None, "ok").await;
    Ok(Json(serde_json::to_value(promoted).map_err(anyhow::Error::from)?))
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct Canary {
    version: String,
    #[serde(default)]
    instances: Vec<String>,
    #[serde(default)]
    percent: Option<u32>,
}

/// Promote a version to chosen instances, or a share of them, first.
#[utoipa::path(
    post,
    path = "/v1/services/{name}/canary",
    tag = "fleet",
    operation_id = "canary",
    summary = "Pin chosen instances (or a percent) to a version first (operators)",
    params(
        ("name" = String, Path, description = "The service's name"),
    ),
    request_body = Canary,
    responses(
        (status = 200, description = "The canary", body = crate::rollout::Canaried, content_type = "application/json"),
        (status = "default", description = "An error: the message says what is wrong and how to fix it", body = super::openapi::ErrorBody),
    ),
)]
pub(crate) async fn canary(
    State(node): State<Arc<AdminState>>,
    Authed(caller): Authed,
    ApiPath(service): ApiPath<String>,
    payload: Result<Json<Object<Canary>>, JsonRejection>,
) -> ApiResult<Json<Value>> {
    node.access.require_operator(&caller, Platform::ServicesPublish)?;
    let Canary { version, instances, percent } = body(payload)?;
    let canaried = node.rollout.canary(&caller.email, &service, &version, instances, percent).await?;
    setups_due(&node, Due::Service(&service)).await;
    super::subscriptions_due(&node, &service).await;
    node.audit.record(&caller.email, "version.canary", &format!("{service} {version}"), None, "ok").await;
    Ok(Json(serde_json::to_value(canaried).map_err(anyhow::Error::from)?))
}

/// End a canary: its instances follow the active version again.
#[utoipa::path(
    delete,
    path = "/v1/services/{name}/canary",
    tag = "fleet",
    operation_id = "abort_canary",
    summary = "End a canary: its instances follow the active version again",
    params(
        ("name" = String, Path, description = "The service's name"),
    ),
    responses(
        (status = 200, description = "Ended", body = super::openapi::CanaryEnded, content_type = "application/json"),
        (status = "default", description = "An error: the message says what is wrong and how to fix it", body = super::openapi::ErrorBody),
    ),
)]
pub(crate) async fn abort_canary(
    State(node): State<Arc<AdminState>>,
    Authed(caller): Authed,
    ApiPath(service): ApiPath<String>,
) -> ApiResult<Json<Value>> {
    node.access.require_operator(&caller, Platform::ServicesPublish)?;
    let released = node.rollout.end_canary(&service).await?;
    node.audit.record(&caller.email, "version.canary.abort", &service, None, "ok").await;
    Ok(Json(json!({ "service": service, "released": released })))
}

/// Where each version of a service stands on each live node.
#[utoipa::path(
    get,
    path = "/v1/services/{name}/rollout",
    tag = "fleet",
    operation_id = "status",
    summary = "Each version per node: ready, active, requests, errors, pins, history",
    params(
        ("name" = String, Path, description = "The service's name"),
    ),
    responses(
        (status = 200, description = "The rollout", body = super::openapi::RolloutStatus, content_type = "application/json"),
        (status = "default", description = "An error: the message says what is wrong and how to fix it", body = super::openapi::ErrorBody),
    ),
)]
pub(crate) async fn status(
    State(node): State<Arc<AdminState>>,
    Authed(caller): Authed,
    ApiPath(service): ApiPath<String>,
) -> ApiResult<Json<Value>> {
    node.access.require_operator(&caller, Platform::ServicesPublish)?;
    Ok(Json(node.rollout.status(&service).await?))
}
