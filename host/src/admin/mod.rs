//! The admin API: JSON over HTTP, for the CLI, scripts and the dashboard
//! (`/dashboard`, a page over this API).
//!
//! Every endpoint but registration and login needs `Authorization: Bearer <token>`
//! (a session token from `/v1/login` or an API key) and is authorized: operators
//! may do everything; other callers see and change only their tenants, as their
//! role allows. A tenant the caller is not a member of answers 404, exactly like
//! one that does not exist. The README has the full reference.
//!
//! | method | path | what |
//! | --- | --- | --- |
//! | GET | `/healthz`, `/readyz` | liveness; readiness (control plane reachable, routes loaded), no credential |
//! | GET | `/v1/node` | this node: addresses, routes, compile-cache counters, limits |
//! | GET | `/metrics` | Prometheus metrics (OpenMetrics text): the scrape token or an operator |
//! | GET | `/v1/services` | services with their versions |
//! | GET | `/v1/services/{name}` | one service |
//! | POST | `/v1/services/{name}/versions` | publish (multipart: `manifest`, `component`; `?activate=true`) |
//! | GET | `/v1/services/{name}/versions/{version}` | one version |
//! | POST | `/v1/services/{name}/activate` | `{"version": "1.1.0"}`: switch the active version |
//! | POST | `/v1/tenants` | `{"id": "acme", "display_name": "Acme"}` |
//! | GET | `/v1/tenants`, `/v1/tenants/{id}` | tenants |
//! | DELETE | `/v1/me` | `{"password"}`: delete one's own account (refused while the last owner of a tenant) |
//! | DELETE | `/v1/users/{email}` | delete an account (operators) |
//! | POST | `/v1/tenants/{id}/transfer` | `{"email"}`: make a member owner; the owner handing over becomes admin |
//! | DELETE | `/v1/tenants/{id}[?now=true]` | delete a tenant and its instances (owners; restorable for the grace; `now`: operators) |
//! | POST | `/v1/tenants/{id}/restore` | bring back a deleted tenant with its instances (owners, operators) |
//! | POST | `/v1/instances` | `{"tenant", "service", "hosts": [...], "version"?}` |
//! | GET | `/v1/instances[?tenant=T]`, `/v1/instances/{id}` | instances |
//! | DELETE | `/v1/services/{name}/versions/{version}` | delete a version nothing needs (operators; `409` naming what needs it) |
//! | PATCH | `/v1/instances/{id}` | `{"hosts"?: [...], "version"?: "1.0.0" or "active"}` |
//! | DELETE | `/v1/instances/{id}[?now=true]` | delete (restorable for the grace; `now`: operators, data destroyed at once) |
//! | POST | `/v1/instances/{id}/restore` | bring back a deleted instance during its grace |
//! | GET | `/v1/instances/{id}/export` | the instance's data: a tar of `instance.json`, `data.sql`, `kv.jsonl` (owners, admins) |
//! | POST | `/v1/instances/import?tenant=T[&name=N&hosts=a,b]` | an export (the body) into a new instance (operators) |
//! | POST | `/v1/instances/{id}/hosts/verify` | `{"hostname", "method"?: "http" or "dns"}`: prove a claimed name |
//! | GET, PUT | `/v1/tenants/{id}/quotas[/{quota}]` | quotas with usage; `{"limit": n or null}` (operators) |
//! | GET, PUT | `/v1/users/{email}/quotas[/{quota}]` | a user's tenants quota |
//! | GET | `/v1/instances/{id}/usage`, `/v1/usage[?tenant=T]` | requests, fuel and errors |
//! | POST | `/v1/instances/{id}/jobs` | `{"kind", "payload"?, "version"?, "delay_ms"?, "idempotency_key"?}`: queue a job |
//! | GET | `/v1/jobs[?tenant&instance&kind&state&service&before&limit]`, `/v1/jobs/{id}` | jobs, newest first |
//! | GET | `/v1/jobs/stats[?tenant=T]` | queue depth, running, dead and oldest ready job's wait per service |
//! | POST | `/v1/jobs/{id}/retry`, `/v1/jobs/{id}/cancel` | retry a dead job; cancel one not running |
//! | GET, PUT | `/v1/services/{name}/plan` | a service's prices (operators set; revisions kept) |
//! | GET | `/v1/tenants/{id}/billing` | billing details, spending limit, suspension, running total |
//! | PUT | `/v1/tenants/{id}/billing/details`, `/v1/tenants/{id}/billing/limit` | `{name, address, tax_id, email}`; `{"amount", "currency"}` or `{"amount": null}` |
//! | GET | `/v1/tenants/{id}/subscriptions[?instance=I]` | subscription events |
//! | GET | `/v1/tenants/{id}/invoices`, `/v1/tenants/{id}/invoices/{YYYY-MM or current}[?format=html]` | invoices |
//! | GET | `/v1/tenants/{id}/invoices/export` | every invoice (JSON and HTML) and the subscription events, as a tar |
//! | POST | `/v1/tenants/{id}/invoices/{YYYY-MM}/close` | close an ended period's invoice (operators) |
//! | GET | `/v1/instances/{id}/usage/hourly[?from&to]` | the usage ledger's hourly rows |
//! | GET, POST, DELETE | `/v1/discounts[?tenant=T]`, `/v1/discounts/{id}` | discounts (operators create and remove) |
//! | POST | `/v1/backup` | `{"to": "/abs/dir"}`: back up this node while it serves (operators; SQLite nodes) |
//! | GET | `/v1/nodes` | the fleet: live nodes, their generation (operators) |
//! | POST | `/v1/services/{name}/stage`, `/promote`, `/rollback` | two-phase updates across the fleet (operators) |
//! | POST, DELETE | `/v1/services/{name}/canary` | pin chosen instances (or a percent) to a version first; end it |
//! | GET | `/v1/services/{name}/rollout` | each version per node: ready, active, requests, errors, pins, history |
//! | GET, POST | `/v1/clock` | the billing clock; `{"now"}` or `{"advance"}` with `--settable-clock` (operators) |

mod auth;
mod billing_api;
pub mod dashboard;
mod error;
mod extract;
mod identity_api;
mod jobs_api;
mod metrics_api;
mod openapi;
mod rollout_api;
mod state;
pub mod throttle;

use std::sync::atomic::Ordering;
use std::sync::Arc;

use axum::extract::rejection::JsonRejection;
use axum::extract::{DefaultBodyLimit, Multipart, Query, State};
use axum::routing::{get, post};
use axum::{Json, Router};
use http::StatusCode;
use serde::Deserialize;
use serde_json::{json, Value};

use crate::access::{AccessError, Platform, Role};
use crate::configurator::{Actor, ConfigError, Instance, InstanceChange, NewInstance, Page};
use crate::quota::{Quota, MAX_QUOTA};
use crate::usage::InstanceUsage;
use auth::Authed;
pub use error::ApiError;
use extract::{ApiPath, ApiQuery, Object};
pub use state::AdminState;

/// The admin API's OpenAPI 3.1 description (JSON).
pub fn openapi_document() -> &'static str {
    openapi::document()
}

/// Largest body of a registration or login (an email and a password).
pub const MAX_CREDENTIALS_BYTES: usize = 4 << 10;

/// Largest upload accepted: components are a few MiB; this leaves a wide margin.
pub const MAX_UPLOAD_BYTES: usize = 64 << 20;

type ApiResult<T> = Result<T, ApiError>;

/// The admin API's routes.
pub fn router(node: Arc<AdminState>) -> Router {
    Router::new()
        // Registration and login are open to anyone: their bodies are small.
        .route("/v1/users", post(identity_api::register).layer(DefaultBodyLimit::max(MAX_CREDENTIALS_BYTES)))
        .route("/v1/login", post(identity_api::login).layer(DefaultBodyLimit::max(MAX_CREDENTIALS_BYTES)))
        .route("/v1/logout", post(identity_api::logout))
        .route("/v1/me", get(identity_api::me).delete(identity_api::delete_me))
        .route("/v1/users/{email}", axum::routing::delete(identity_api::delete_user))
        .route("/v1/keys", get(identity_api::list_keys).post(identity_api::create_key))
        .route("/v1/keys/{id}", axum::routing::delete(identity_api::revoke_key))
        .route("/v1/invitations/accept", post(identity_api::accept_invitation))
        .route("/v1/invitations/{token}", get(identity_api::show_invitation))
        .route("/v1/tenants/{id}/invitations", get(identity_api::list_invitations))
        .route("/v1/tenants/{id}/invitations/{invitation}", axum::routing::delete(identity_api::cancel_invitation))
        .route("/v1/tenants/{id}/members", get(identity_api::list_members).post(identity_api::add_member))
        .route("/v1/tenants/{id}/members/{email}", axum::routing::delete(identity_api::remove_member))
        .route("/v1/tenants/{id}/transfer", post(identity_api::transfer))
        .route("/v1/tenants/{id}/grants", get(identity_api::list_grants).post(identity_api::add_grant))
        .route("/v1/tenants/{id}/grants/{email}/{permission}", axum::routing::delete(identity_api::remove_grant))
        .route("/v1/services/{name}/permissions", get(identity_api::service_permissions))
        .route("/v1/audit", get(identity_api::audit))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/v1/node", get(node_info))
        .route("/v1/node/history", get(node_history))
        .route("/metrics", get(metrics_api::metrics))
        .route("/v1/openapi.json", get(openapi::openapi_json))
        .route("/v1/services", get(list_services))
        .route("/v1/services/{name}", get(get_service))
        .route("/v1/services/{name}/versions", post(publish).layer(DefaultBodyLimit::max(MAX_UPLOAD_BYTES)))
        .route("/v1/services/{name}/versions/{version}", get(get_version).delete(delete_version))
        .route("/v1/services/{name}/activate", post(activate))
        .route("/v1/tenants", get(list_tenants).post(create_tenant))
        .route("/v1/tenants/{id}", get(get_tenant).delete(delete_tenant))
        .route("/v1/tenants/{id}/restore", post(restore_tenant))
        .route("/v1/backup", post(take_backup))
        .route("/v1/tenants/{id}/quotas", get(tenant_quotas))
        .route("/v1/tenants/{id}/quotas/{quota}", axum::routing::put(set_tenant_quota))
        .route("/v1/users/{email}/quotas", get(user_quotas))
        .route("/v1/users/{email}/quotas/{quota}", axum::routing::put(set_user_quota))
        .route("/v1/instances", get(list_instances).post(create_instance))
        .route("/v1/instances/{id}", get(get_instance).patch(update_instance).delete(delete_instance))
        .route("/v1/instances/{id}/restore", post(restore_instance))
        .route("/v1/instances/{id}/export", get(export_instance))
        .route(
            "/v1/instances/import",
            post(import_instance).layer(DefaultBodyLimit::max(crate::configurator::export::MAX_IMPORT_BYTES)),
        )
        .route("/v1/instances/{id}/hosts/verify", post(verify_host))
        .route("/v1/instances/{id}/usage", get(instance_usage))
        .route("/v1/usage", get(all_usage))
        .route("/v1/instances/{id}/jobs", post(jobs_api::enqueue))
        .route("/v1/jobs", get(jobs_api::list))
        .route("/v1/jobs/stats", get(jobs_api::stats))
        .route("/v1/jobs/{id}", get(jobs_api::get))
        .route("/v1/jobs/{id}/retry", post(jobs_api::retry))
        .route("/v1/jobs/{id}/cancel", post(jobs_api::cancel))
        .route("/v1/services/{name}/plan", get(billing_api::get_plan).put(billing_api::set_plan))
        .route("/v1/tenants/{id}/billing", get(billing_api::account))
        .route("/v1/tenants/{id}/billing/details", axum::routing::put(billing_api::set_details))
        .route("/v1/tenants/{id}/billing/limit", axum::routing::put(billing_api::set_limit))
        .route("/v1/tenants/{id}/subscriptions", get(billing_api::subscriptions))
        .route("/v1/tenants/{id}/invoices", get(billing_api::list_invoices))
        .route("/v1/tenants/{id}/invoices/export", get(billing_api::export_invoices))
        .route("/v1/tenants/{id}/invoices/{period}", get(billing_api::get_invoice))
        .route("/v1/tenants/{id}/invoices/{period}/close", post(billing_api::close_invoice))
        .route("/v1/instances/{id}/usage/hourly", get(billing_api::ledger))
        .route("/v1/discounts", get(billing_api::list_discounts).post(billing_api::add_discount))
        .route("/v1/discounts/{id}", axum::routing::delete(billing_api::remove_discount))
        .route("/v1/clock", get(billing_api::clock).post(billing_api::set_clock))
        .route("/v1/nodes", get(rollout_api::nodes))
        .route("/v1/services/{name}/stage", post(rollout_api::stage))
        .route("/v1/services/{name}/promote", post(rollout_api::promote))
        .route("/v1/services/{name}/rollback", post(rollout_api::rollback))
        .route("/v1/services/{name}/canary", post(rollout_api::canary).delete(rollout_api::abort_canary))
        .route("/v1/services/{name}/rollout", get(rollout_api::status))
        .merge(dashboard::routes())
        .fallback(|| async {
            ApiError::new(StatusCode::NOT_FOUND, "no such endpoint; see the README's admin API reference")
        })
        .layer(axum::middleware::from_fn_with_state(node.clone(), after_changes))
        .layer(axum::middleware::from_fn(extract::refuse_nul))
        .with_state(node)
}

/// Whatever a request that may change something did (a tenant deleted, a
/// member added, a key revoked…), the credentials and memberships this node
/// cached before it are not used again: the rooms that change them say so
/// themselves, and this is the net under them.
async fn after_changes(
    State(node): State<Arc<AdminState>>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    // (A login opens a session and changes nothing cached.)
    let changes = !matches!(*request.method(), http::Method::GET | http::Method::HEAD | http::Method::OPTIONS)
        && request.uri().path() != "/v1/login";
    let response = next.run(request).await;
    if response.status() == StatusCode::INTERNAL_SERVER_ERROR {
        // The admin API answers 500 only for the node's own failures: nearly
        // always the control plane's.
        node.metrics.control_plane_error(crate::metrics::ControlPlaneUse::Admin);
    }
    if changes {
        announce_change(&node).await;
    }
    response
}

/// This node's caches are stale; on a shared control plane, wait (at most
/// `CLUSTER_MAX_AGE`) until every live node has invalidated its own, so that
/// what was revoked here is refused everywhere once the answer is sent.
async fn announce_change(node: &AdminState) {
    use crate::identity::cache;
    let value = match cache::publish(&node.db, &node.identity.epoch).await {
        Ok(Some(value)) => value,
        Ok(None) => return,
        Err(e) => {
            tracing::warn!("other nodes may answer from their caches for {:?}: {e:#}", cache::CLUSTER_MAX_AGE);
            return;
        }
    };
    if let Err(e) = node.fleet.ack_identity(value).await {
        tracing::warn!("failed to acknowledge a change here: {e:#}");
    }
    match node.fleet.wait_identity(value, cache::CLUSTER_MAX_AGE).await {
        Ok(pending) if pending.is_empty() => {}
        Ok(pending) => tracing::warn!(?pending, "nodes did not acknowledge a change to credentials in time"),
        Err(e) => tracing::warn!("failed to wait for the nodes' acknowledgements: {e:#}"),
    }
}

/// Queue the instance setups a change made due (migrations of a version just
/// activated or pinned), so they start now rather than at the next periodic
/// check: of one instance, or of every instance of a service.
pub(crate) async fn setups_due(node: &AdminState, due: crate::jobs::setup::Due<'_>) -> usize {
    match crate::jobs::setup::reconcile_some(&node.workers, due).await {
        Ok(started) => started,
        Err(e) => {
            tracing::warn!("failed to queue instance setups (retried shortly): {e:#}");
            0
        }
    }
}

/// Record the subscription changes an activation of `service` made (each
/// follower runs another version; modules the new version lacks stop being
/// billed at once).
pub(crate) async fn subscriptions_due(node: &AdminState, service: &str) {
    if let Err(e) = node.billing_passes.sync_service(service).await {
        tracing::warn!("failed to record subscription changes (retried by the billing pass): {e:#}");
    }
}

/// A JSON body, with the rejection turned into a 400 that says what is wrong.
pub(crate) fn body<T>(payload: Result<Json<Object<T>>, JsonRejection>) -> ApiResult<T> {
    payload.map(|Json(Object(v))| v).map_err(|e| {
        if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, "the request body is too large for this endpoint")
        } else {
            ApiError::bad_request(format!("invalid JSON body: {}", e.body_text()))
        }
    })
}

/// Liveness: the process answers.
#[utoipa::path(
    get,
    path = "/healthz",
    tag = "node",
    operation_id = "healthz",
    summary = "Liveness: the process answers",
    responses(
        (status = 200, description = "Live", body = openapi::Live, content_type = "application/json"),
        (status = "default", description = "An error: the message says what is wrong and how to fix it", body = openapi::ErrorBody),
    ),
    security(()),
)]
async fn healthz() -> Json<Value> {
    Json(json!({ "status": "live" }))
}

/// Readiness: the control plane answers within a second and this node has caught
/// up with every change (routes and versions loaded); a load balancer sends
/// traffic only to ready nodes.
#[utoipa::path(
    get,
    path = "/readyz",
    tag = "node",
    operation_id = "readyz",
    summary = "Readiness: the control plane answers and this node has caught up",
    responses(
        (status = 200, description = "Ready", body = openapi::Readiness, content_type = "application/json"),
        (status = 503, description = "Not ready, and why", body = openapi::Readiness, content_type = "application/json"),
        (status = "default", description = "An error: the message says what is wrong and how to fix it", body = openapi::ErrorBody),
    ),
    security(()),
)]
async fn readyz(State(node): State<Arc<AdminState>>) -> (StatusCode, Json<Value>) {
    // One probe at a time, its answer shared for a quarter second: anyone may ask,
    // and a flood of asks must not become a flood of control-plane queries.
    let probe = {
        let mut last = node.readiness.lock().await;
        match &*last {
            Some((at, answer)) if at.elapsed() < std::time::Duration::from_millis(250) => answer.clone(),
            _ => {
                let answer =
                    match tokio::time::timeout(std::time::Duration::from_secs(1), crate::store::generation(&node.db))
                        .await
                    {
                        Ok(Ok(current)) => Ok(current),
                        Ok(Err(e)) => {
                            // The reason stays in the log: this endpoint answers anyone.
                            tracing::warn!("readiness: the control plane refused: {e}");
                            Err("the control plane refused the query (see the node's log)".to_string())
                        }
                        Err(_) => Err("the control plane did not answer within 1 s".to_string()),
                    };
                *last = Some((std::time::Instant::now(), answer.clone()));
                answer
            }
        }
    };
    let seen = node.generation.get();
    let problem = match probe {
        Ok(current) if current > seen => {
            Some(format!("catching up with the platform (generation {seen} of {current})"))
        }
        Ok(_) => None,
        Err(e) => Some(e),
    };
    let body = json!({
        "status": if problem.is_none() { "ready" } else { "not ready" },
        "control_plane": crate::store::dialect(&node.db),
        "generation": seen,
        "routes": node.router.len(),
        "error": problem,
    });
    let status = if problem.is_none() { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    (status, Json(body))
}

#[utoipa::path(
    get,
    path = "/v1/node",
    tag = "node",
    operation_id = "node_info",
    summary = "This node: addresses, routes, compile cache, limits (operators)",
    responses(
        (status = 200, description = "The node", body = openapi::NodeView, content_type = "application/json"),
        (status = "default", description = "An error: the message says what is wrong and how to fix it", body = openapi::ErrorBody),
    ),
)]
async fn node_info(State(node): State<Arc<AdminState>>, Authed(caller): Authed) -> ApiResult<Json<Value>> {
    node.access.require_operator(&caller, Platform::NodeRead)?;
    let stats = node.registry.stats();
    let limits = node.runtime.limits();
    let edges = &node.config.edges;
    let (sqlite_used, sqlite_highwater) = crate::instancedb::sqlite_memory();
    Ok(Json(json!({
        "wharf_version": env!("CARGO_PKG_VERSION"),
        "ingress": node.addresses.ingress.to_string(),
        "admin": node.addresses.admin.to_string(),
        "routes": node.router.len(),
        "routes_digest": node.router.digest(),
        "runs_passes": node.workers.lease.was_held(),
        "instance_databases_open": node.configurator.databases.open_count(),
        "versions_compiled": stats.compiled.load(Ordering::Relaxed),
        "versions_loaded_from_cache": stats.loaded_from_cache.load(Ordering::Relaxed),
        "limits": {
            "fuel_per_request": limits.fuel_per_request,
            "max_memory_bytes": limits.max_memory_bytes,
            "request_timeout_ms": limits.request_timeout.as_millis() as u64,
            "output_bytes": limits.output_bytes,
            "guest_memory_bytes": node.runtime.memory().limit(),
            "guest_memory_per_tenant_bytes": node.runtime.memory().per_tenant(),
            "host_call_fuel_per_ms": crate::runtime::HOST_CALL_FUEL_PER_MS,
            "guests": node.config.pool.max_instances,
            "guests_per_tenant": edges.guests_per_tenant(node.config.pool.max_instances),
            "guests_per_instance": edges.guests_per_instance(node.config.pool.max_instances),
            "max_connections": edges.max_connections,
            "max_connections_per_ip": edges.max_connections_per_ip,
            "db_threads": node.config.db_threads,
        },
        "guest_memory_granted_bytes": node.runtime.memory().granted(),
        "logins": node.identity.counters,
        "cluster": {
            "control_plane": crate::store::dialect(&node.db),
            "generation": node.generation.get(),
            "redis": node.config.redis_url.is_some(),
            "instance_databases": node.registry.sql_dialect(),
            "instance_connections": node.configurator.instance_connections().map(|(open, max)| json!({
                "open": open,
                "max": max,
            })),
        },
        "trust": {
            "domains": node.config.trust.domains,
            "registration": node.config.trust.registration,
            "tenant_creation": node.config.trust.tenant_creation,
            "hostname_reservation_days": node.config.trust.hostname_reservation.as_secs() / 86_400,
            "smtp": node.mailer.is_some(),
            "trusted_proxies": node.config.trust.trusted_proxies.len(),
        },
        "sqlite": {
            "memory_bytes": sqlite_used,
            "highwater_bytes": sqlite_highwater,
            "heap_limit_bytes": crate::instancedb::SQLITE_HEAP_LIMIT,
        },
    })))
}

#[utoipa::path(
    get,
    path = "/v1/node/history",
    tag = "node",
    operation_id = "node_history",
    summary = "This node's last hour for the dashboard's charts: per service version, requests, server errors and latency percentiles per interval; the platform's job queue (operators)",
    responses(
        (status = 200, description = "The points in columns (times in Unix seconds; null where a version had no requests)", body = openapi::NodeHistory, content_type = "application/json"),
        (status = "default", description = "An error: the message says what is wrong and how to fix it", body = openapi::ErrorBody),
    ),
)]
async fn node_history(State(node): State<Arc<AdminState>>, Authed(caller): Authed) -> ApiResult<Json<Value>> {
    node.access.require_operator(&caller, Platform::NodeRead)?;
    let history = openapi::NodeHistory {
        charted: node.metrics.history.charted(),
        interval_seconds: node.config.history_interval.as_secs_f64(),
    };
    Ok(Json(serde_json::to_value(history).map_err(anyhow::Error::from)?))
}

#[utoipa::path(
    get,
    path = "/v1/services",
    tag = "services",
    operation_id = "list_services",
    summary = "Services with their versions",
    responses(
        (status = 200, description = "The services", body = openapi::ServiceList, content_type = "application/json"),
        (status = "default", description = "An error: the message says what is wrong and how to fix it", body = openapi::ErrorBody),
    ),
)]
async fn list_services(State(node): State<Arc<AdminState>>, Authed(_caller): Authed) -> ApiResult<Json<Value>> {
    Ok(Json(json!({ "services": node.registry.list(None).await? })))
}

#[utoipa::path(
    get,
    path = "/v1/services/{name}",
    tag = "services",
    operation_id = "get_service",
    summary = "One service",
    params(
        ("name" = String, Path, description = "The service's name"),
    ),
    responses(
        (status = 200, description = "The service", body = crate::registry::ServiceInfo, content_type = "application/json"),
        (status = "default", description = "An error: the message says what is wrong and how to fix it", body = openapi::ErrorBody),
    ),
)]
async fn get_service(
    State(node): State<Arc<AdminState>>,
    Authed(_caller): Authed,
    ApiPath(name): ApiPath<String>,
) -> ApiResult<Json<Value>> {
    Ok(Json(serde_json::to_value(node.registry.service(&name).await?).map_err(anyhow::Error::from)?))
}

#[utoipa::path(
    get,
    path = "/v1/services/{name}/versions/{version}",
    tag = "services",
    operation_id = "get_version",
    summary = "One version",
    params(
        ("name" = String, Path, description = "The service's name"),
        ("version" = String, Path, description = "A version (semver)"),
    ),
    responses(
        (status = 200, description = "The version", body = crate::registry::VersionInfo, content_type = "application/json"),
        (status = "default", description = "An error: the message says what is wrong and how to fix it", body = openapi::ErrorBody),
    ),
)]
async fn get_version(
    State(node): State<Arc<AdminState>>,
    Authed(_caller): Authed,
    ApiPath((name, version)): ApiPath<(String, String)>,
) -> ApiResult<Json<Value>> {
    Ok(Json(serde_json::to_value(node.registry.version(&name, &version).await?).map_err(anyhow::Error::from)?))
}

#[derive(Deserialize)]
struct PublishQuery {
    #[serde(default)]
    activate: bool,
}

#[utoipa::path(
    post,
    path = "/v1/services/{name}/versions",
    tag = "services",
    operation_id = "publish",
    summary = "Publish a version (operators): a wharf.toml and a component",
    params(
        ("name" = String, Path, description = "The service's name"),
        ("activate" = Option<bool>, Query, description = "Make it the active version at once"),
    ),
    request_body(content = openapi::Upload, content_type = "multipart/form-data"),
    responses(
        (status = 201, description = "Published (compiled, ready on this node)", body = crate::registry::Published, content_type = "application/json"),
        (status = 200, description = "The same version was published already", body = crate::registry::Published, content_type = "application/json"),
        (status = "default", description = "An error: the message says what is wrong and how to fix it", body = openapi::ErrorBody),
    ),
)]
async fn publish(
    State(node): State<Arc<AdminState>>,
    Authed(caller): Authed,
    ApiPath(name): ApiPath<String>,
    ApiQuery(query): ApiQuery<PublishQuery>,
    multipart: Result<Multipart, axum::extract::multipart::MultipartRejection>,
) -> ApiResult<(StatusCode, Json<Value>)> {
    node.access.require_operator(&caller, Platform::ServicesPublish)?;
    let mut multipart = multipart.map_err(|e| {
        ApiError::bad_request(format!(
            "{}; send multipart/form-data with a `manifest` part (wharf.toml) and a `component` part (the .wasm)",
            e.body_text()
        ))
    })?;
    let mut manifest = None;
    let mut component = None;
    loop {
        let field = match multipart.next_field().await {
            Ok(Some(field)) => field,
            Ok(None) => break,
            Err(e) => return Err(upload_error(e)),
        };
        match field.name() {
            Some("manifest") => manifest = Some(field.text().await.map_err(upload_error)?),
            Some("component") => component = Some(field.bytes().await.map_err(upload_error)?.to_vec()),
            other => {
                return Err(ApiError::bad_request(format!(
                    "unexpected form field {:?}; expected `manifest` and `component`",
                    other.unwrap_or("")
                )))
            }
        }
    }
    let manifest = manifest.ok_or_else(|| ApiError::bad_request("missing the `manifest` part (wharf.toml)"))?;
    if manifest.contains('\0') || manifest.contains("\\u0000") || manifest.contains("\\U00000000") {
        return Err(ApiError::bad_request(format!("wharf.toml: {}", extract::NUL_IN_TEXT)));
    }
    let component = component.ok_or_else(|| ApiError::bad_request("missing the `component` part (the .wasm file)"))?;
    let published = node.registry.publish(Some(&name), &manifest, component, query.activate).await?;
    // Compiled here already: the fleet hears it is ready with this beat, not the next.
    node.fleet.wake.notify_one();
    if published.version.active {
        setups_due(&node, crate::jobs::setup::Due::Service(&name)).await;
        subscriptions_due(&node, &name).await;
    }
    if published.created {
        node.audit
            .record(&caller.email, "version.publish", &format!("{name} {}", published.version.version), None, "ok")
            .await;
    }
    let status = if published.created { StatusCode::CREATED } else { StatusCode::OK };
    Ok((status, Json(serde_json::to_value(published).map_err(anyhow::Error::from)?)))
}

fn upload_error(e: axum::extract::multipart::MultipartError) -> ApiError {
    let status = e.status();
    let status = if status == StatusCode::PAYLOAD_TOO_LARGE { status } else { StatusCode::BAD_REQUEST };
    ApiError::new(status, format!("could not read the upload: {}", e.body_text()))
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct Activate {
    version: String,
}

#[utoipa::path(
    post,
    path = "/v1/services/{name}/activate",
    tag = "services",
    operation_id = "activate",
    summary = "Switch the active version, atomically (operators)",
    params(
        ("name" = String, Path, description = "The service's name"),
    ),
    request_body = Activate,
    responses(
        (status = 200, description = "The service with its new active version", body = crate::registry::VersionInfo, content_type = "application/json"),
        (status = "default", description = "An error: the message says what is wrong and how to fix it", body = openapi::ErrorBody),
    ),
)]
async fn activate(
    State(node): State<Arc<AdminState>>,
    Authed(caller): Authed,
    ApiPath(name): ApiPath<String>,
    payload: Result<Json<Object<Activate>>, JsonRejection>,
) -> ApiResult<Json<Value>> {
    node.access.require_operator(&caller, Platform::ServicesPublish)?;
    let Activate { version } = body(payload)?;
    let activated = node.registry.activate(&name, &version).await?;
    setups_due(&node, crate::jobs::setup::Due::Service(&name)).await;
    // A version that drops a module ends that module's charge now.
    subscriptions_due(&node, &name).await;
    node.audit.record(&caller.email, "version.activate", &format!("{name} {version}"), None, "ok").await;
    Ok(Json(serde_json::to_value(activated).map_err(anyhow::Error::from)?))
}

/// Delete a service version nothing needs any more (operators).
#[utoipa::path(
    delete,
    path = "/v1/services/{name}/versions/{version}",
    tag = "services",
    operation_id = "delete_version",
    summary = "Delete a version nothing needs (operators); 409 names what needs it",
    params(
        ("name" = String, Path, description = "The service's name"),
        ("version" = String, Path, description = "A version (semver)"),
    ),
    responses(
        (status = 200, description = "Deleted", body = openapi::VersionDeleted, content_type = "application/json"),
        (status = "default", description = "An error: the message says what is wrong and how to fix it", body = openapi::ErrorBody),
    ),
)]
async fn delete_version(
    State(node): State<Arc<AdminState>>,
    Authed(caller): Authed,
    ApiPath((name, version)): ApiPath<(String, String)>,
) -> ApiResult<Json<Value>> {
    node.access.require_operator(&caller, Platform::ServicesPublish)?;
    let deleted = node.registry.delete_version(&name, &version).await?;
    node.audit.record(&caller.email, "version.delete", &format!("{name} {version}"), None, "ok").await;
    Ok(Json(json!({ "deleted": deleted })))
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct NewTenant {
    id: String,
    #[serde(default)]
    display_name: Option<String>,
}

#[utoipa::path(
    post,
    path = "/v1/tenants",
    tag = "tenants",
    operation_id = "create_tenant",
    summary = "Create a tenant: its creator owns it",
    request_body = NewTenant,
    responses(
        (status = 201, description = "The tenant", body = crate::configurator::Tenant, content_type = "application/json"),
        (status = "default", description = "An error: the message says what is wrong and how to fix it", body = openapi::ErrorBody),
    ),
)]
async fn create_tenant(
    State(node): State<Arc<AdminState>>,
    Authed(caller): Authed,
    payload: Result<Json<Object<NewTenant>>, JsonRejection>,
) -> ApiResult<(StatusCode, Json<Value>)> {
    let new = body(payload)?;
    let tenant = node.configurator.create_tenant(&new.id, new.display_name.as_deref(), actor(&caller)).await?;
    // Whoever creates a tenant owns it.
    node.access.set_member(&tenant.id, &caller.user_id, Role::Owner).await?;
    node.audit.record(&caller.email, "tenant.create", &tenant.id, Some(&tenant.id), "ok").await;
    Ok((StatusCode::CREATED, Json(serde_json::to_value(tenant).map_err(anyhow::Error::from)?)))
}

/// The caller as the configurator sees them.
fn actor(caller: &crate::identity::Caller) -> Actor<'_> {
    Actor { user_id: &caller.user_id, operator: caller.operator }
}

/// `?after=<cursor>&limit=<n>` on list endpoints.
#[derive(Deserialize)]
pub(crate) struct PageQuery {
    after: Option<String>,
    limit: Option<i64>,
    tenant: Option<String>,
}

impl PageQuery {
    fn page(&self) -> Page {
        Page::new(self.after.clone().filter(|a| !a.is_empty()), self.limit)
    }
}

/// The cursor of the next page: the last item's key when the page is full.
fn next_cursor<T>(items: &[T], page: &Page, key: impl Fn(&T) -> &str) -> Value {
    match items.last() {
        Some(last) if items.len() as i64 >= page.limit => Value::String(key(last).to_string()),
        _ => Value::Null,
    }
}

#[utoipa::path(
    get,
    path = "/v1/tenants",
    tag = "tenants",
    operation_id = "list_tenants",
    summary = "Tenants the caller may see, a page at a time",
    params(
        ("after" = Option<String>, Query, description = "The `next` cursor of the previous page"),
        ("limit" = Option<i64>, Query, description = "Page size (default 100, at most 1000)"),
    ),
    responses(
        (status = 200, description = "A page of tenants and the next cursor", body = openapi::TenantPage, content_type = "application/json"),
        (status = "default", description = "An error: the message says what is wrong and how to fix it", body = openapi::ErrorBody),
    ),
)]
async fn list_tenants(
    State(node): State<Arc<AdminState>>,
    Authed(caller): Authed,
    ApiQuery(query): ApiQuery<PageQuery>,
) -> ApiResult<Json<Value>> {
    let page = query.page();
    let visible = node.access.visible_tenants(&caller).await?;
    let tenants = node.configurator.tenants(visible.as_deref(), &page).await?;
    let next = next_cursor(&tenants, &page, |t| &t.id);
    Ok(Json(json!({ "tenants": tenants, "next": next })))
}

#[utoipa::path(
    get,
    path = "/v1/tenants/{id}",
    tag = "tenants",
    operation_id = "get_tenant",
    summary = "One tenant",
    params(
        ("id" = String, Path, description = "Its id"),
    ),
    responses(
        (status = 200, description = "The tenant", body = crate::configurator::Tenant, content_type = "application/json"),
        (status = "default", description = "An error: the message says what is wrong and how to fix it", body = openapi::ErrorBody),
    ),
)]
async fn get_tenant(
    State(node): State<Arc<AdminState>>,
    Authed(caller): Authed,
    ApiPath(id): ApiPath<String>,
) -> ApiResult<Json<Value>> {
    node.access.require(&caller, &id, Platform::TenantRead).await?;
    Ok(Json(serde_json::to_value(node.configurator.tenant(&id).await?).map_err(anyhow::Error::from)?))
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct BackupRequest {
    /// An absolute directory on the node's machine, new or empty.
    #[schema(value_type = String)]
    to: std::path::PathBuf,
}

/// Back up this node's whole state while it serves (operators).
#[utoipa::path(
    post,
    path = "/v1/backup",
    tag = "node",
    operation_id = "take_backup",
    summary = "Back up this node while it serves (operators; SQLite nodes)",
    request_body = BackupRequest,
    responses(
        (status = 200, description = "The backup's manifest", body = crate::backup::Manifest, content_type = "application/json"),
        (status = "default", description = "An error: the message says what is wrong and how to fix it", body = openapi::ErrorBody),
    ),
)]
async fn take_backup(
    State(node): State<Arc<AdminState>>,
    Authed(caller): Authed,
    payload: Result<Json<Object<BackupRequest>>, JsonRejection>,
) -> ApiResult<Json<Value>> {
    node.access.require_operator(&caller, Platform::NodeRead)?;
    let request = body(payload)?;
    // What the node counted so far goes into the control plane first.
    if let Err(e) = node.usage.flush().await {
        tracing::warn!("backup: failed to flush usage first (it is in the journal): {e:#}");
    }
    let manifest = crate::backup::take(&node.db, &node.config.data_dir, &request.to).await.map_err(|e| match e {
        crate::backup::BackupError::Refused(message) => ApiError::new(StatusCode::CONFLICT, message),
        crate::backup::BackupError::Internal(e) => ApiError::internal(&e),
    })?;
    node.audit.record(&caller.email, "node.backup", &request.to.display().to_string(), None, "ok").await;
    Ok(Json(serde_json::to_value(manifest).map_err(anyhow::Error::from)?))
}

/// Delete a tenant: its people lose access and its instances stop serving at
/// once; restorable until the grace ends; `?now=true` (operators) destroys
/// its data at once.
#[utoipa::path(
    delete,
    path = "/v1/tenants/{id}",
    tag = "tenants",
    operation_id = "delete_tenant",
    summary = "Delete a tenant and its instances (owners); restorable during the grace",
    params(
        ("id" = String, Path, description = "Its id"),
        ("now" = Option<bool>, Query, description = "Destroy its data at once (operators)"),
    ),
    responses(
        (status = 202, description = "Deleted", body = crate::configurator::TenantDeletion, content_type = "application/json"),
        (status = "default", description = "An error: the message says what is wrong and how to fix it", body = openapi::ErrorBody),
    ),
)]
async fn delete_tenant(
    State(node): State<Arc<AdminState>>,
    Authed(caller): Authed,
    ApiPath(id): ApiPath<String>,
    query: Result<Query<DeleteQuery>, axum::extract::rejection::QueryRejection>,
) -> ApiResult<(StatusCode, Json<Value>)> {
    let Query(query) = query.map_err(|e| ApiError::bad_request(format!("{e}: the only option is ?now=true")))?;
    node.access.require(&caller, &id, Platform::TenantDelete).await?;
    if query.now {
        node.access.require_operator(&caller, Platform::TenantDelete)?;
    }
    let deletion = node.configurator.delete_tenant(&id, actor(&caller), query.now).await?;
    let action = if deletion.purged { "tenant.purge" } else { "tenant.delete" };
    node.audit.record(&caller.email, action, &id, Some(&id), "ok").await;
    Ok((StatusCode::ACCEPTED, Json(serde_json::to_value(deletion).map_err(anyhow::Error::from)?)))
}

/// Bring back a deleted tenant during its grace (its owners or an operator).
#[utoipa::path(
    post,
    path = "/v1/tenants/{id}/restore",
    tag = "tenants",
    operation_id = "restore_tenant",
    summary = "Bring back a deleted tenant with its instances during the grace",
    params(
        ("id" = String, Path, description = "Its id"),
    ),
    responses(
        (status = 200, description = "Restored", body = crate::configurator::TenantDeletion, content_type = "application/json"),
        (status = "default", description = "An error: the message says what is wrong and how to fix it", body = openapi::ErrorBody),
    ),
)]
async fn restore_tenant(
    State(node): State<Arc<AdminState>>,
    Authed(caller): Authed,
    ApiPath(id): ApiPath<String>,
) -> ApiResult<Json<Value>> {
    node.access.require_restorer(&caller, &id).await?;
    let restored = node.configurator.restore_tenant(&id, actor(&caller)).await?;
    node.audit.record(&caller.email, "tenant.restore", &id, Some(&id), "ok").await;
    Ok(Json(serde_json::to_value(restored).map_err(anyhow::Error::from)?))
}

#[utoipa::path(
    get,
    path = "/v1/tenants/{id}/quotas",
    tag = "tenants",
    operation_id = "tenant_quotas",
    summary = "A tenant's quotas with their usage",
    params(
        ("id" = String, Path, description = "Its id"),
    ),
    responses(
        (status = 200, description = "The quotas", body = openapi::TenantQuotas, content_type = "application/json"),
        (status = "default", description = "An error: the message says what is wrong and how to fix it", body = openapi::ErrorBody),
    ),
)]
async fn tenant_quotas(
    State(node): State<Arc<AdminState>>,
    Authed(caller): Authed,
    ApiPath(id): ApiPath<String>,
) -> ApiResult<Json<Value>> {
    node.access.require(&caller, &id, Platform::TenantRead).await?;
    Ok(Json(json!({ "tenant": id, "quotas": node.configurator.tenant_quotas(&id).await? })))
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct QuotaChange {
    /// The new limit, or `null` for the default.
    limit: Option<i64>,
}

fn quota_named(name: &str, per_user: bool) -> ApiResult<Quota> {
    let holder = if per_user { "user" } else { "tenant" };
    Quota::parse(name).filter(|q| q.per_user() == per_user).ok_or_else(|| {
        let known = if per_user { "tenants" } else { "instances, hostnames, database_bytes, pending_jobs, job_bytes" };
        ApiError::bad_request(format!("{name:?} is not a {holder} quota; use one of: {known}"))
    })
}

fn quota_change(payload: Result<Json<Object<QuotaChange>>, JsonRejection>) -> ApiResult<Option<i64>> {
    let QuotaChange { limit } = body(payload)?;
    if limit.is_some_and(|l| !(0..=MAX_QUOTA).contains(&l)) {
        return Err(ApiError::bad_request(format!("a quota's limit is 0 to {MAX_QUOTA}, or null for the default")));
    }
    Ok(limit)
}

#[utoipa::path(
    put,
    path = "/v1/tenants/{id}/quotas/{quota}",
    tag = "tenants",
    operation_id = "set_tenant_quota",
    summary = "Set one of a tenant's quotas (operators)",
    params(
        ("id" = String, Path, description = "Its id"),
        ("quota" = String, Path, description = "The quota's name"),
    ),
    request_body = QuotaChange,
    responses(
        (status = 200, description = "The quotas", body = openapi::TenantQuotas, content_type = "application/json"),
        (status = "default", description = "An error: the message says what is wrong and how to fix it", body = openapi::ErrorBody),
    ),
)]
async fn set_tenant_quota(
    State(node): State<Arc<AdminState>>,
    Authed(caller): Authed,
    ApiPath((id, name)): ApiPath<(String, String)>,
    payload: Result<Json<Object<QuotaChange>>, JsonRejection>,
) -> ApiResult<Json<Value>> {
    node.access.require_operator(&caller, Platform::QuotasManage)?;
    let quota = quota_named(&name, false)?;
    let limit = quota_change(payload)?;
    node.configurator.set_tenant_quota(&id, quota, limit).await?;
    let outcome = limit.map(|l| l.to_string()).unwrap_or_else(|| "default".into());
    node.audit.record(&caller.email, "quota.set", &format!("{name} = {outcome}"), Some(&id), "ok").await;
    Ok(Json(json!({ "tenant": id, "quotas": node.configurator.tenant_quotas(&id).await? })))
}

#[utoipa::path(
    get,
    path = "/v1/users/{email}/quotas",
    tag = "identity",
    operation_id = "user_quotas",
    summary = "A user's quotas (themselves or operators)",
    params(
        ("email" = String, Path, description = "An account's email address"),
    ),
    responses(
        (status = 200, description = "The quotas", body = openapi::UserQuotas, content_type = "application/json"),
        (status = "default", description = "An error: the message says what is wrong and how to fix it", body = openapi::ErrorBody),
    ),
)]
async fn user_quotas(
    State(node): State<Arc<AdminState>>,
    Authed(caller): Authed,
    ApiPath(email): ApiPath<String>,
) -> ApiResult<Json<Value>> {
    // Checked before the lookup: whether an address has an account is not
    // anyone else's business.
    if !caller.operator && !email.trim().eq_ignore_ascii_case(&caller.email) {
        return Err(ApiError::new(StatusCode::FORBIDDEN, "you may read only your own quotas"));
    }
    let user = node.identity.user_by_email(&email).await?;
    Ok(Json(json!({ "email": user.email, "quotas": node.configurator.user_quotas(&user.id).await? })))
}

#[utoipa::path(
    put,
    path = "/v1/users/{email}/quotas/{quota}",
    tag = "identity",
    operation_id = "set_user_quota",
    summary = "Set a user's quota (operators)",
    params(
        ("email" = String, Path, description = "An account's email address"),
        ("quota" = String, Path, description = "The quota's name"),
    ),
    request_body = QuotaChange,
    responses(
        (status = 200, description = "The quotas", body = openapi::UserQuotas, content_type = "application/json"),
        (status = "default", description = "An error: the message says what is wrong and how to fix it", body = openapi::ErrorBody),
    ),
)]
async fn set_user_quota(
    State(node): State<Arc<AdminState>>,
    Authed(caller): Authed,
    ApiPath((email, name)): ApiPath<(String, String)>,
    payload: Result<Json<Object<QuotaChange>>, JsonRejection>,
) -> ApiResult<Json<Value>> {
    node.access.require_operator(&caller, Platform::QuotasManage)?;
    let quota = quota_named(&name, true)?;
    let limit = quota_change(payload)?;
    let user = node.identity.user_by_email(&email).await?;
    node.configurator.quotas.set(&crate::quota::Subject::User(&user.id), quota, limit).await.map_err(ApiError::from)?;
    let outcome = limit.map(|l| l.to_string()).unwrap_or_else(|| "default".into());
    node.audit.record(&caller.email, "quota.set", &format!("{} {name} = {outcome}", user.email), None, "ok").await;
    Ok(Json(json!({ "email": user.email, "quotas": node.configurator.user_quotas(&user.id).await? })))
}

#[utoipa::path(
    post,
    path = "/v1/instances",
    tag = "instances",
    operation_id = "create_instance",
    summary = "Create an instance of a service for a tenant",
    request_body = crate::configurator::NewInstance,
    responses(
        (status = 201, description = "The instance", body = crate::configurator::Instance, content_type = "application/json"),
        (status = "default", description = "An error: the message says what is wrong and how to fix it", body = openapi::ErrorBody),
    ),
)]
async fn create_instance(
    State(node): State<Arc<AdminState>>,
    Authed(caller): Authed,
    payload: Result<Json<Object<NewInstance>>, JsonRejection>,
) -> ApiResult<(StatusCode, Json<Value>)> {
    let new = body(payload)?;
    if new.ends_at.is_some() {
        node.access.require_operator(&caller, Platform::BillingOperate)?;
    }
    node.access.require(&caller, &new.tenant, Platform::InstancesManage).await.map_err(|e| match e {
        AccessError::NoSuchTenant(t) => ApiError::from(ConfigError::UnknownTenant(t)),
        other => other.into(),
    })?;
    let instance = node.configurator.create_instance(new, actor(&caller)).await?;
    node.audit.record(&caller.email, "instance.create", &instance.id, Some(&instance.tenant), "ok").await;
    Ok((StatusCode::CREATED, Json(serde_json::to_value(instance).map_err(anyhow::Error::from)?)))
}

/// A page of the instances of `tenant` (or of every tenant) that `caller` may
/// see with `permission`, filtered in the database.
async fn visible_instances(
    node: &AdminState,
    caller: &crate::identity::Caller,
    query: &PageQuery,
    permission: Platform,
) -> ApiResult<(Vec<Instance>, Value)> {
    let page = query.page();
    let tenants = match &query.tenant {
        Some(tenant) => {
            node.access.require(caller, tenant, permission).await?;
            Some(vec![tenant.clone()])
        }
        None => node.access.tenants_holding(caller, permission).await?,
    };
    let instances = node.configurator.instances(tenants.as_deref(), &page).await?;
    let next = next_cursor(&instances, &page, |i| &i.id);
    Ok((instances, next))
}

/// An instance the caller may act on with `permission`: 404 unless the caller is
/// a member of its tenant, so other tenants' instance ids reveal nothing.
async fn instance_for(
    node: &AdminState,
    caller: &crate::identity::Caller,
    id: &str,
    permission: Platform,
) -> ApiResult<Instance> {
    let instance = node.configurator.instance(id).await?;
    node.access.require(caller, &instance.tenant, permission).await.map_err(|e| match e {
        AccessError::NoSuchTenant(_) => ApiError::from(ConfigError::UnknownInstance(id.to_string())),
        other => other.into(),
    })?;
    Ok(instance)
}

#[utoipa::path(
    get,
    path = "/v1/instances",
    tag = "instances",
    operation_id = "list_instances",
    summary = "Instances the caller may see, a page at a time",
    params(
        ("tenant" = Option<String>, Query, description = "Only this tenant's"),
        ("after" = Option<String>, Query, description = "The `next` cursor of the previous page"),
        ("limit" = Option<i64>, Query, description = "Page size (default 100, at most 1000)"),
    ),
    responses(
        (status = 200, description = "A page of instances and the next cursor", body = openapi::InstancePage, content_type = "application/json"),
        (status = "default", description = "An error: the message says what is wrong and how to fix it", body = openapi::ErrorBody),
    ),
)]
async fn list_instances(
    State(node): State<Arc<AdminState>>,
    Authed(caller): Authed,
    ApiQuery(query): ApiQuery<PageQuery>,
) -> ApiResult<Json<Value>> {
    let (instances, next) = visible_instances(&node, &caller, &query, Platform::TenantRead).await?;
    Ok(Json(json!({ "instances": instances, "next": next })))
}

#[utoipa::path(
    get,
    path = "/v1/instances/{id}",
    tag = "instances",
    operation_id = "get_instance",
    summary = "One instance, and what this node serves for it now",
    params(
        ("id" = String, Path, description = "Its id"),
    ),
    responses(
        (status = 200, description = "The instance", body = crate::configurator::Instance, content_type = "application/json"),
        (status = "default", description = "An error: the message says what is wrong and how to fix it", body = openapi::ErrorBody),
    ),
)]
async fn get_instance(
    State(node): State<Arc<AdminState>>,
    Authed(caller): Authed,
    ApiPath(id): ApiPath<String>,
) -> ApiResult<Json<Value>> {
    let instance = instance_for(&node, &caller, &id, Platform::TenantRead).await?;
    let mut value = serde_json::to_value(instance).map_err(anyhow::Error::from)?;
    // What this node's ingress does for the instance right now (it follows the
    // records above within moments).
    let serving = match node.router.instance(&id).map(|route| route.serving()) {
        Some(crate::router::Serving::Version(version)) => json!({ "state": "serving", "version": version.version }),
        Some(crate::router::Serving::Maintenance) => json!({ "state": "maintenance" }),
        Some(crate::router::Serving::Nothing) => json!({ "state": "no active version" }),
        None => json!({ "state": "not routed" }),
    };
    value["serving_here"] = serving;
    Ok(Json(value))
}

#[utoipa::path(
    patch,
    path = "/v1/instances/{id}",
    tag = "instances",
    operation_id = "update_instance",
    summary = "Change hostnames, version pin, modules, settings, enabled, end date",
    params(
        ("id" = String, Path, description = "Its id"),
    ),
    request_body = crate::configurator::InstanceChange,
    responses(
        (status = 200, description = "The instance", body = crate::configurator::Instance, content_type = "application/json"),
        (status = "default", description = "An error: the message says what is wrong and how to fix it", body = openapi::ErrorBody),
    ),
)]
async fn update_instance(
    State(node): State<Arc<AdminState>>,
    Authed(caller): Authed,
    ApiPath(id): ApiPath<String>,
    payload: Result<Json<Object<InstanceChange>>, JsonRejection>,
) -> ApiResult<Json<Value>> {
    let change = body(payload)?;
    instance_for(&node, &caller, &id, Platform::InstancesManage).await?;
    // A trial's or prepaid period's end is the platform's to set.
    if change.ends_at.is_some() {
        node.access.require_operator(&caller, Platform::BillingOperate)?;
    }
    let mut instance = node.configurator.update_instance(&id, change, actor(&caller)).await?;
    if setups_due(&node, crate::jobs::setup::Due::Instance(&id)).await > 0 {
        instance = node.configurator.instance(&id).await?;
    }
    node.audit.record(&caller.email, "instance.update", &instance.id, Some(&instance.tenant), "ok").await;
    Ok(Json(serde_json::to_value(instance).map_err(anyhow::Error::from)?))
}

/// `?now=true` on `DELETE /v1/instances/{id}`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct DeleteQuery {
    #[serde(default)]
    now: bool,
}

/// Delete an instance: it stops serving at once and is restorable until its
/// grace ends; `?now=true` (operators) destroys its data at once.
#[utoipa::path(
    delete,
    path = "/v1/instances/{id}",
    tag = "instances",
    operation_id = "delete_instance",
    summary = "Delete an instance; restorable during the grace",
    params(
        ("id" = String, Path, description = "Its id"),
        ("now" = Option<bool>, Query, description = "Destroy its data at once (operators)"),
    ),
    responses(
        (status = 202, description = "Deleted", body = crate::configurator::Instance, content_type = "application/json"),
        (status = "default", description = "An error: the message says what is wrong and how to fix it", body = openapi::ErrorBody),
    ),
)]
async fn delete_instance(
    State(node): State<Arc<AdminState>>,
    Authed(caller): Authed,
    ApiPath(id): ApiPath<String>,
    query: Result<Query<DeleteQuery>, axum::extract::rejection::QueryRejection>,
) -> ApiResult<(StatusCode, Json<Value>)> {
    let Query(query) = query.map_err(|e| ApiError::bad_request(format!("{e}: the only option is ?now=true")))?;
    instance_for(&node, &caller, &id, Platform::InstancesManage).await?;
    if query.now {
        node.access.require_operator(&caller, Platform::InstancesManage)?;
    }
    let instance = node.configurator.delete_instance(&id, actor(&caller), query.now).await?;
    let action = if query.now { "instance.purge" } else { "instance.delete" };
    node.audit.record(&caller.email, action, &instance.id, Some(&instance.tenant), "ok").await;
    let mut value = serde_json::to_value(instance).map_err(anyhow::Error::from)?;
    value["purged"] = json!(query.now);
    Ok((StatusCode::ACCEPTED, Json(value)))
}

/// Download an instance's data (its tenant's owners and admins).
#[utoipa::path(
    get,
    path = "/v1/instances/{id}/export",
    tag = "instances",
    operation_id = "export_instance",
    summary = "The instance's data: a tar of instance.json, data.sql, kv.jsonl (owners, admins)",
    params(
        ("id" = String, Path, description = "Its id"),
    ),
    responses(
        (status = 200, description = "The archive", body = Vec<u8>, content_type = "application/x-tar"),
        (status = "default", description = "An error: the message says what is wrong and how to fix it", body = openapi::ErrorBody),
    ),
)]
async fn export_instance(
    State(node): State<Arc<AdminState>>,
    Authed(caller): Authed,
    ApiPath(id): ApiPath<String>,
) -> ApiResult<axum::response::Response> {
    let instance = instance_for(&node, &caller, &id, Platform::InstancesManage).await?;
    let (name, archive) = node.configurator.export_instance(&id).await?;
    node.audit.record(&caller.email, "instance.export", &id, Some(&instance.tenant), "ok").await;
    let headers = [
        (http::header::CONTENT_TYPE, "application/x-tar".to_string()),
        (http::header::CONTENT_DISPOSITION, format!("attachment; filename=\"{name}\"")),
    ];
    Ok(axum::response::IntoResponse::into_response((headers, archive)))
}

/// `?tenant=T&name=N&hosts=a,b` on `POST /v1/instances/import`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ImportQuery {
    tenant: String,
    name: Option<String>,
    hosts: Option<String>,
}

/// Import an export into a new instance (operators).
#[utoipa::path(
    post,
    path = "/v1/instances/import",
    tag = "instances",
    operation_id = "import_instance",
    summary = "Import an export (the body) into a new instance (operators)",
    params(
        ("tenant" = String, Query, description = "The tenant receiving it (required)"),
        ("name" = Option<String>, Query, description = "The new instance's name"),
        ("hosts" = Option<String>, Query, description = "Hostnames, comma-separated"),
    ),
    request_body(content = Vec<u8>, content_type = "application/x-tar", description = "An export of `GET /v1/instances/{id}/export`"),
    responses(
        (status = 201, description = "The new instance", body = crate::configurator::Instance, content_type = "application/json"),
        (status = "default", description = "An error: the message says what is wrong and how to fix it", body = openapi::ErrorBody),
    ),
)]
async fn import_instance(
    State(node): State<Arc<AdminState>>,
    Authed(caller): Authed,
    query: Result<Query<ImportQuery>, axum::extract::rejection::QueryRejection>,
    archive: axum::body::Bytes,
) -> ApiResult<(StatusCode, Json<Value>)> {
    node.access.require_operator(&caller, Platform::InstancesManage)?;
    let Query(query) =
        query.map_err(|e| ApiError::bad_request(format!("{e}: send ?tenant=T[&name=N&hosts=a.example,b.example]")))?;
    node.access.require(&caller, &query.tenant, Platform::InstancesManage).await?;
    let hosts =
        query.hosts.map(|h| h.split(',').filter(|h| !h.is_empty()).map(str::to_string).collect()).unwrap_or_default();
    let target = crate::configurator::export::ImportTarget { tenant: query.tenant, name: query.name, hosts };
    let instance = node.configurator.import_instance(&archive, target, actor(&caller)).await?;
    node.audit.record(&caller.email, "instance.import", &instance.id, Some(&instance.tenant), "ok").await;
    Ok((StatusCode::CREATED, Json(serde_json::to_value(instance).map_err(anyhow::Error::from)?)))
}

/// Bring back a deleted instance during its grace.
#[utoipa::path(
    post,
    path = "/v1/instances/{id}/restore",
    tag = "instances",
    operation_id = "restore_instance",
    summary = "Bring back a deleted instance during its grace",
    params(
        ("id" = String, Path, description = "Its id"),
    ),
    responses(
        (status = 200, description = "Restored", body = crate::configurator::Instance, content_type = "application/json"),
        (status = "default", description = "An error: the message says what is wrong and how to fix it", body = openapi::ErrorBody),
    ),
)]
async fn restore_instance(
    State(node): State<Arc<AdminState>>,
    Authed(caller): Authed,
    ApiPath(id): ApiPath<String>,
) -> ApiResult<Json<Value>> {
    instance_for(&node, &caller, &id, Platform::InstancesManage).await?;
    let instance = node.configurator.restore_instance(&id, actor(&caller)).await?;
    node.audit.record(&caller.email, "instance.restore", &instance.id, Some(&instance.tenant), "ok").await;
    Ok(Json(serde_json::to_value(instance).map_err(anyhow::Error::from)?))
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct VerifyHost {
    hostname: String,
    #[serde(default)]
    method: Option<crate::configurator::hostnames::Method>,
}

#[utoipa::path(
    post,
    path = "/v1/instances/{id}/hosts/verify",
    tag = "instances",
    operation_id = "verify_host",
    summary = "Prove a claimed hostname; it routes from then on",
    params(
        ("id" = String, Path, description = "Its id"),
    ),
    request_body = VerifyHost,
    responses(
        (status = 200, description = "The instance", body = crate::configurator::Instance, content_type = "application/json"),
        (status = "default", description = "An error: the message says what is wrong and how to fix it", body = openapi::ErrorBody),
    ),
)]
async fn verify_host(
    State(node): State<Arc<AdminState>>,
    Authed(caller): Authed,
    ApiPath(id): ApiPath<String>,
    payload: Result<Json<Object<VerifyHost>>, JsonRejection>,
) -> ApiResult<Json<Value>> {
    let request = body(payload)?;
    instance_for(&node, &caller, &id, Platform::InstancesManage).await?;
    let instance = node.configurator.verify_hostname(&id, &request.hostname, request.method).await?;
    node.audit.record(&caller.email, "hostname.verify", &request.hostname, Some(&instance.tenant), "ok").await;
    Ok(Json(serde_json::to_value(instance).map_err(anyhow::Error::from)?))
}

#[utoipa::path(
    get,
    path = "/v1/instances/{id}/usage",
    tag = "billing",
    operation_id = "instance_usage",
    summary = "An instance's requests, job runs, fuel and errors",
    params(
        ("id" = String, Path, description = "Its id"),
    ),
    responses(
        (status = 200, description = "The usage", body = crate::usage::InstanceUsage, content_type = "application/json"),
        (status = "default", description = "An error: the message says what is wrong and how to fix it", body = openapi::ErrorBody),
    ),
)]
async fn instance_usage(
    State(node): State<Arc<AdminState>>,
    Authed(caller): Authed,
    ApiPath(id): ApiPath<String>,
) -> ApiResult<Json<Value>> {
    let instance = instance_for(&node, &caller, &id, Platform::BillingRead).await?;
    let totals = node.usage.totals(&instance.id).await?;
    let usage = InstanceUsage { instance: instance.id, tenant: instance.tenant, service: instance.service, totals };
    Ok(Json(serde_json::to_value(usage).map_err(anyhow::Error::from)?))
}

#[utoipa::path(
    get,
    path = "/v1/usage",
    tag = "billing",
    operation_id = "all_usage",
    summary = "Usage of every instance the caller may see, a page at a time",
    params(
        ("tenant" = Option<String>, Query, description = "Only this tenant's"),
        ("after" = Option<String>, Query, description = "The `next` cursor of the previous page"),
        ("limit" = Option<i64>, Query, description = "Page size"),
    ),
    responses(
        (status = 200, description = "A page of usage", body = openapi::UsagePage, content_type = "application/json"),
        (status = "default", description = "An error: the message says what is wrong and how to fix it", body = openapi::ErrorBody),
    ),
)]
async fn all_usage(
    State(node): State<Arc<AdminState>>,
    Authed(caller): Authed,
    ApiQuery(query): ApiQuery<PageQuery>,
) -> ApiResult<Json<Value>> {
    let (instances, next) = visible_instances(&node, &caller, &query, Platform::BillingRead).await?;
    let mut usage = Vec::new();
    for instance in instances {
        let totals = node.usage.totals(&instance.id).await?;
        usage.push(InstanceUsage { instance: instance.id, tenant: instance.tenant, service: instance.service, totals });
    }
    Ok(Json(json!({ "usage": usage, "next": next })))
}
