//! `/v1/jobs`: list, inspect, retry and cancel jobs, queue depth per service,
//! and enqueueing a job for an instance. Members see their tenants' jobs
//! (`wharf.tenants.read`) and act on them with `wharf.instances.manage`; a job
//! of another tenant answers 404, like one that does not exist.

use std::sync::Arc;

use super::extract::{ApiPath, Object};
use axum::extract::rejection::JsonRejection;
use axum::extract::{Query, State};
use axum::Json;
use http::StatusCode;
use serde::Deserialize;
use serde_json::{json, Value};

use super::auth::Authed;
use super::AdminState;
use super::{body, instance_for, ApiError, ApiResult};
use crate::access::{AccessError, Platform};
use crate::jobs::{JobError, JobFilter, JobInfo, NewJob, SETUP_KIND};
use crate::router::Serving;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct JobQuery {
    tenant: Option<String>,
    instance: Option<String>,
    kind: Option<String>,
    state: Option<String>,
    service: Option<String>,
    /// A job id: list the jobs created before it (the `next` of a page).
    before: Option<String>,
    limit: Option<i64>,
}

/// The tenants whose jobs the caller may see (`None`: every tenant).
async fn visible(
    node: &AdminState,
    caller: &crate::identity::Caller,
    tenant: Option<&str>,
) -> ApiResult<Option<Vec<String>>> {
    Ok(match tenant {
        Some(tenant) => {
            node.access.require(caller, tenant, Platform::TenantRead).await?;
            Some(vec![tenant.to_string()])
        }
        None => node.access.tenants_holding(caller, Platform::TenantRead).await?,
    })
}

#[utoipa::path(
    get,
    path = "/v1/jobs",
    tag = "jobs",
    operation_id = "jobs_list",
    summary = "Jobs, newest first",
    params(
        ("tenant" = Option<String>, Query),
        ("instance" = Option<String>, Query),
        ("kind" = Option<String>, Query),
        ("state" = Option<String>, Query, description = "queued, running, succeeded, failed, dead or cancelled"),
        ("service" = Option<String>, Query),
        ("before" = Option<String>, Query, description = "A job id: the jobs created before it (the `next` of a page)"),
        ("limit" = Option<i64>, Query, description = "Page size"),
    ),
    responses(
        (status = 200, description = "A page of jobs", body = super::openapi::JobPage, content_type = "application/json"),
        (status = "default", description = "An error: the message says what is wrong and how to fix it", body = super::openapi::ErrorBody),
    ),
)]
pub(crate) async fn list(
    State(node): State<Arc<AdminState>>,
    Authed(caller): Authed,
    query: Result<Query<JobQuery>, axum::extract::rejection::QueryRejection>,
) -> ApiResult<Json<Value>> {
    let Query(query) = query.map_err(|e| ApiError::bad_request(e.body_text()))?;
    let tenants = visible(&node, &caller, query.tenant.as_deref()).await?;
    let limit = query.limit.unwrap_or(100).clamp(1, 1000);
    let filter = JobFilter {
        tenants,
        instance: query.instance,
        kind: query.kind,
        state: query.state,
        service: query.service,
        before: query.before.filter(|b| !b.is_empty()),
        limit,
    };
    let jobs = node.queue.list(&filter).await?;
    let next = match jobs.last() {
        Some(last) if jobs.len() as i64 == limit => json!(last.id),
        _ => Value::Null,
    };
    Ok(Json(json!({ "jobs": jobs, "next": next })))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct StatsQuery {
    tenant: Option<String>,
}

#[utoipa::path(
    get,
    path = "/v1/jobs/stats",
    tag = "jobs",
    operation_id = "jobs_stats",
    summary = "Queue depth, running and dead jobs, and the oldest ready job's wait, per service",
    params(
        ("tenant" = Option<String>, Query, description = "Only this tenant's"),
    ),
    responses(
        (status = 200, description = "The queue", body = super::openapi::QueueStats, content_type = "application/json"),
        (status = "default", description = "An error: the message says what is wrong and how to fix it", body = super::openapi::ErrorBody),
    ),
)]
pub(crate) async fn stats(
    State(node): State<Arc<AdminState>>,
    Authed(caller): Authed,
    query: Result<Query<StatsQuery>, axum::extract::rejection::QueryRejection>,
) -> ApiResult<Json<Value>> {
    let Query(query) = query.map_err(|e| ApiError::bad_request(e.body_text()))?;
    let tenants = visible(&node, &caller, query.tenant.as_deref()).await?;
    let services = node.queue.stats(tenants.as_deref()).await?;
    Ok(Json(json!({ "services": services, "workers": node.queue.config.concurrency })))
}

/// A job the caller may act on with `permission`: 404 for other tenants' jobs.
async fn job_for(
    node: &AdminState,
    caller: &crate::identity::Caller,
    id: &str,
    permission: Platform,
) -> ApiResult<JobInfo> {
    let job = node.queue.get(id).await?;
    node.access.require(caller, &job.tenant, permission).await.map_err(|e| match e {
        AccessError::NoSuchTenant(_) => ApiError::from(JobError::UnknownJob(id.to_string())),
        other => other.into(),
    })?;
    Ok(job)
}

#[utoipa::path(
    get,
    path = "/v1/jobs/{id}",
    tag = "jobs",
    operation_id = "jobs_get",
    summary = "One job with its attempts",
    params(
        ("id" = String, Path, description = "Its id"),
    ),
    responses(
        (status = 200, description = "The job", body = crate::jobs::JobInfo, content_type = "application/json"),
        (status = "default", description = "An error: the message says what is wrong and how to fix it", body = super::openapi::ErrorBody),
    ),
)]
pub(crate) async fn get(
    State(node): State<Arc<AdminState>>,
    Authed(caller): Authed,
    ApiPath(id): ApiPath<String>,
) -> ApiResult<Json<Value>> {
    let job = job_for(&node, &caller, &id, Platform::TenantRead).await?;
    Ok(Json(serde_json::to_value(job).map_err(anyhow::Error::from)?))
}

#[utoipa::path(
    post,
    path = "/v1/jobs/{id}/retry",
    tag = "jobs",
    operation_id = "jobs_retry",
    summary = "Queue a dead, failed or cancelled job again",
    params(
        ("id" = String, Path, description = "Its id"),
    ),
    responses(
        (status = 200, description = "The job", body = crate::jobs::JobInfo, content_type = "application/json"),
        (status = "default", description = "An error: the message says what is wrong and how to fix it", body = super::openapi::ErrorBody),
    ),
)]
pub(crate) async fn retry(
    State(node): State<Arc<AdminState>>,
    Authed(caller): Authed,
    ApiPath(id): ApiPath<String>,
) -> ApiResult<Json<Value>> {
    act(&node, &caller, &id, Action::Retry).await
}

#[utoipa::path(
    post,
    path = "/v1/jobs/{id}/cancel",
    tag = "jobs",
    operation_id = "jobs_cancel",
    summary = "Cancel a job that is not running",
    params(
        ("id" = String, Path, description = "Its id"),
    ),
    responses(
        (status = 200, description = "The job", body = crate::jobs::JobInfo, content_type = "application/json"),
        (status = "default", description = "An error: the message says what is wrong and how to fix it", body = super::openapi::ErrorBody),
    ),
)]
pub(crate) async fn cancel(
    State(node): State<Arc<AdminState>>,
    Authed(caller): Authed,
    ApiPath(id): ApiPath<String>,
) -> ApiResult<Json<Value>> {
    act(&node, &caller, &id, Action::Cancel).await
}

#[derive(Clone, Copy)]
enum Action {
    Retry,
    Cancel,
}

/// Retry or cancel a job the caller may manage; a setup job's instance is
/// re-routed at once (it enters or leaves maintenance).
async fn act(node: &AdminState, caller: &crate::identity::Caller, id: &str, action: Action) -> ApiResult<Json<Value>> {
    let job = job_for(node, caller, id, Platform::InstancesManage).await?;
    let (changed, audited) = match action {
        Action::Retry => (node.queue.retry(id).await?, "job.retry"),
        Action::Cancel => (node.queue.cancel(id).await?, "job.cancel"),
    };
    if job.kind == SETUP_KIND {
        node.configurator.refresh_routes().await?;
    }
    node.audit.record(&caller.email, audited, id, Some(&job.tenant), "ok").await;
    Ok(Json(serde_json::to_value(changed).map_err(anyhow::Error::from)?))
}

/// A job to queue through the API.
#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct Enqueue {
    kind: String,
    /// Text (often JSON) handed to the job as its payload bytes.
    #[serde(default)]
    payload: String,
    #[serde(default = "one")]
    version: u32,
    #[serde(default)]
    delay_ms: u64,
    #[serde(default)]
    idempotency_key: Option<String>,
    #[serde(default)]
    priority: i32,
    #[serde(default)]
    max_attempts: Option<u32>,
}

fn one() -> u32 {
    1
}

#[utoipa::path(
    post,
    path = "/v1/instances/{id}/jobs",
    tag = "jobs",
    operation_id = "jobs_enqueue",
    summary = "Queue a job the instance's version declares",
    params(
        ("id" = String, Path, description = "Its id"),
    ),
    request_body = Enqueue,
    responses(
        (status = 201, description = "Queued", body = crate::jobs::Enqueued, content_type = "application/json"),
        (status = 200, description = "A job with this idempotency key exists already", body = crate::jobs::Enqueued, content_type = "application/json"),
        (status = "default", description = "An error: the message says what is wrong and how to fix it", body = super::openapi::ErrorBody),
    ),
)]
pub(crate) async fn enqueue(
    State(node): State<Arc<AdminState>>,
    Authed(caller): Authed,
    ApiPath(id): ApiPath<String>,
    payload: Result<Json<Object<Enqueue>>, JsonRejection>,
) -> ApiResult<(StatusCode, Json<Value>)> {
    let request = body(payload)?;
    let instance = instance_for(&node, &caller, &id, Platform::InstancesManage).await?;
    let route = node.router.instance(&id).ok_or_else(|| ApiError::not_found(format!("no instance {id:?}")))?;
    // Checked and recorded against the version that serves the instance (as
    // the guest's own enqueue is), not the one it should run: after a failed
    // setup it still serves the old version on the old schema, and a job only
    // the new version accepts would run the new code against it.
    let version = match route.serving() {
        Serving::Version(version) => version,
        Serving::Maintenance => {
            let mut error = ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                format!("instance {id:?} is being set up (migrations); queue the job once it serves again"),
            );
            error.retry_after = Some(2);
            return Err(error);
        }
        Serving::Nothing => return Err(ApiError::new(StatusCode::CONFLICT, "the service has no active version")),
    };
    if !version.manifest.accepts(&request.kind, request.version) {
        return Err(JobError::NotDeclared {
            service: version.service.clone(),
            version: version.version.clone(),
            kind: request.kind,
            job_version: request.version,
        }
        .into());
    }
    let job = NewJob {
        tenant: instance.tenant.clone(),
        instance: instance.id.clone(),
        service: instance.service.clone(),
        kind: request.kind,
        payload: request.payload.into_bytes(),
        job_version: request.version,
        enqueued_by: version.version.clone(),
        delay: std::time::Duration::from_millis(request.delay_ms),
        idempotency_key: request.idempotency_key,
        priority: request.priority,
        max_attempts: request.max_attempts,
        trace_parent: None,
    };
    let enqueued = node.queue.enqueue_for_tenant(job).await?;
    if enqueued.created {
        node.audit.record(&caller.email, "job.enqueue", &enqueued.id, Some(&instance.tenant), "ok").await;
    }
    let status = if enqueued.created { StatusCode::CREATED } else { StatusCode::OK };
    Ok((status, Json(serde_json::to_value(enqueued).map_err(anyhow::Error::from)?)))
}
