//! Billing endpoints: plans (operators set, anyone signed in reads), a tenant's
//! account (details, spending limit, running total), subscriptions, invoices
//! (JSON or HTML), discounts, the hourly usage ledger, and the billing clock.
//! Members with `wharf.billing.read` see their tenants'; another tenant's
//! answers 404, like one that does not exist.

use std::sync::Arc;

use super::extract::{ApiPath, ApiQuery, Object};
use axum::extract::rejection::JsonRejection;
use axum::extract::State;
use axum::response::{Html, IntoResponse, Response};
use axum::Json;
use http::StatusCode;
use serde::Deserialize;
use serde_json::{json, Value};

use super::auth::Authed;
use super::AdminState;
use super::{body, instance_for, ApiError, ApiResult};
use crate::access::{AccessError, Platform};
use crate::billing::{invoice, BillingError, Details, NewDiscount, Prices};
use crate::clock::Period;
use crate::clock::{format_utc, parse_time};
use crate::configurator::ConfigError;

/// Require `permission` in `tenant`: a tenant the caller cannot see is 404.
async fn tenant_access(
    node: &AdminState,
    caller: &crate::identity::Caller,
    tenant: &str,
    permission: Platform,
) -> ApiResult<()> {
    node.access.require(caller, tenant, permission).await.map_err(|e| match e {
        AccessError::NoSuchTenant(t) => ApiError::from(ConfigError::UnknownTenant(t)),
        other => other.into(),
    })?;
    // Operators may name tenants that do not exist: say so. A purged
    // tenant's billing records stay.
    node.configurator.tenant_on_record(tenant).await?;
    Ok(())
}

fn json_of<T: serde::Serialize>(value: &T) -> ApiResult<Json<Value>> {
    Ok(Json(serde_json::to_value(value).map_err(anyhow::Error::from)?))
}

#[utoipa::path(
    get,
    path = "/v1/services/{name}/plan",
    tag = "billing",
    operation_id = "get_plan",
    summary = "A service's prices",
    params(
        ("name" = String, Path, description = "The service's name"),
    ),
    responses(
        (status = 200, description = "The plan", body = super::openapi::PlanView, content_type = "application/json"),
        (status = "default", description = "An error: the message says what is wrong and how to fix it", body = super::openapi::ErrorBody),
    ),
)]
pub(crate) async fn get_plan(
    State(node): State<Arc<AdminState>>,
    Authed(_caller): Authed,
    ApiPath(service): ApiPath<String>,
) -> ApiResult<Json<Value>> {
    let history = node.billing.plan_history(&service).await?;
    let current = history.last().cloned();
    Ok(Json(json!({ "service": service, "plan": current, "history": history })))
}

#[utoipa::path(
    put,
    path = "/v1/services/{name}/plan",
    tag = "billing",
    operation_id = "set_plan",
    summary = "Set a service's prices (operators; revisions kept)",
    params(
        ("name" = String, Path, description = "The service's name"),
    ),
    request_body = crate::billing::Prices,
    responses(
        (status = 200, description = "The plan", body = crate::billing::Plan, content_type = "application/json"),
        (status = "default", description = "An error: the message says what is wrong and how to fix it", body = super::openapi::ErrorBody),
    ),
)]
pub(crate) async fn set_plan(
    State(node): State<Arc<AdminState>>,
    Authed(caller): Authed,
    ApiPath(service): ApiPath<String>,
    payload: Result<Json<Object<Prices>>, JsonRejection>,
) -> ApiResult<Json<Value>> {
    node.access.require_operator(&caller, Platform::BillingOperate)?;
    let prices = body(payload)?;
    let plan = node.billing.set_plan(&service, prices, &caller.email).await?;
    node.audit.record(&caller.email, "plan.set", &format!("{service} revision {}", plan.revision), None, "ok").await;
    json_of(&plan)
}

#[utoipa::path(
    get,
    path = "/v1/tenants/{id}/billing",
    tag = "billing",
    operation_id = "account",
    summary = "Billing details, spending limit, suspension, running total",
    params(
        ("id" = String, Path, description = "Its id"),
    ),
    responses(
        (status = 200, description = "The account", body = super::openapi::AccountView, content_type = "application/json"),
        (status = "default", description = "An error: the message says what is wrong and how to fix it", body = super::openapi::ErrorBody),
    ),
)]
pub(crate) async fn account(
    State(node): State<Arc<AdminState>>,
    Authed(caller): Authed,
    ApiPath(tenant): ApiPath<String>,
) -> ApiResult<Json<Value>> {
    tenant_access(&node, &caller, &tenant, Platform::BillingRead).await?;
    let account = node.billing.account(&tenant).await?;
    let running = node.billing.running(&tenant).await?;
    Ok(Json(json!({
        "tenant": tenant,
        "details": account.details,
        "spending_limit": account.spending_limit,
        "limit_currency": account.limit_currency,
        "suspended": account.suspended,
        "period": running.period,
        // Owed so far (what spending limits apply to), and what the month
        // comes to at its end if nothing changes.
        "running_totals": running.totals,
        "accrued_until": running.accrued_until,
        "projected_totals": running.projected,
        "now": node.billing.now(),
        "now_utc": format_utc(node.billing.now()),
    })))
}

#[utoipa::path(
    put,
    path = "/v1/tenants/{id}/billing/details",
    tag = "billing",
    operation_id = "set_details",
    summary = "Set the billing details",
    params(
        ("id" = String, Path, description = "Its id"),
    ),
    request_body = crate::billing::Details,
    responses(
        (status = 200, description = "The account", body = crate::billing::Account, content_type = "application/json"),
        (status = "default", description = "An error: the message says what is wrong and how to fix it", body = super::openapi::ErrorBody),
    ),
)]
pub(crate) async fn set_details(
    State(node): State<Arc<AdminState>>,
    Authed(caller): Authed,
    ApiPath(tenant): ApiPath<String>,
    payload: Result<Json<Object<Details>>, JsonRejection>,
) -> ApiResult<Json<Value>> {
    let details = body(payload)?;
    tenant_access(&node, &caller, &tenant, Platform::BillingManage).await?;
    let account = node.billing.set_details(&tenant, details).await?;
    node.audit.record(&caller.email, "billing.details", &tenant, Some(&tenant), "ok").await;
    json_of(&account)
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct LimitChange {
    amount: Option<i64>,
    #[serde(default)]
    currency: Option<String>,
}

#[utoipa::path(
    put,
    path = "/v1/tenants/{id}/billing/limit",
    tag = "billing",
    operation_id = "set_limit",
    summary = "Set or clear the spending limit",
    params(
        ("id" = String, Path, description = "Its id"),
    ),
    request_body = LimitChange,
    responses(
        (status = 200, description = "The account", body = crate::billing::Account, content_type = "application/json"),
        (status = "default", description = "An error: the message says what is wrong and how to fix it", body = super::openapi::ErrorBody),
    ),
)]
pub(crate) async fn set_limit(
    State(node): State<Arc<AdminState>>,
    Authed(caller): Authed,
    ApiPath(tenant): ApiPath<String>,
    payload: Result<Json<Object<LimitChange>>, JsonRejection>,
) -> ApiResult<Json<Value>> {
    let change = body(payload)?;
    tenant_access(&node, &caller, &tenant, Platform::BillingManage).await?;
    let limit = match (change.amount, change.currency) {
        (None, _) => None,
        (Some(amount), Some(currency)) => Some((amount, currency)),
        (Some(_), None) => {
            return Err(ApiError::bad_request(
                "a spending limit needs its currency, e.g. {\"amount\": 5000, \"currency\": \"USD\"}",
            ))
        }
    };
    let described = limit.as_ref().map(|(a, c)| crate::billing::money::format(*a, c)).unwrap_or_else(|| "none".into());
    let mut account = node.billing.set_limit(&tenant, limit).await?;
    // Applied at once, not at the next pass.
    node.billing_passes.enforce_limits().await?;
    account.suspended = node.billing.account(&tenant).await?.suspended;
    node.audit.record(&caller.email, "billing.limit", &format!("{tenant} {described}"), Some(&tenant), "ok").await;
    json_of(&account)
}

#[utoipa::path(
    get,
    path = "/v1/tenants/{id}/subscriptions",
    tag = "billing",
    operation_id = "subscriptions",
    summary = "Subscription events",
    params(
        ("id" = String, Path, description = "Its id"),
        ("instance" = Option<String>, Query, description = "Only this instance's"),
    ),
    responses(
        (status = 200, description = "The events", body = super::openapi::EventList, content_type = "application/json"),
        (status = "default", description = "An error: the message says what is wrong and how to fix it", body = super::openapi::ErrorBody),
    ),
)]
pub(crate) async fn subscriptions(
    State(node): State<Arc<AdminState>>,
    Authed(caller): Authed,
    ApiPath(tenant): ApiPath<String>,
    ApiQuery(query): ApiQuery<InstanceQuery>,
) -> ApiResult<Json<Value>> {
    tenant_access(&node, &caller, &tenant, Platform::BillingRead).await?;
    let events = node.billing.events(&tenant, query.instance.as_deref(), i64::MAX).await?;
    Ok(Json(json!({ "tenant": tenant, "events": events })))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct InstanceQuery {
    instance: Option<String>,
}

#[utoipa::path(
    get,
    path = "/v1/tenants/{id}/invoices",
    tag = "billing",
    operation_id = "list_invoices",
    summary = "Invoices",
    params(
        ("id" = String, Path, description = "Its id"),
    ),
    responses(
        (status = 200, description = "The invoices", body = super::openapi::InvoiceList, content_type = "application/json"),
        (status = "default", description = "An error: the message says what is wrong and how to fix it", body = super::openapi::ErrorBody),
    ),
)]
pub(crate) async fn list_invoices(
    State(node): State<Arc<AdminState>>,
    Authed(caller): Authed,
    ApiPath(tenant): ApiPath<String>,
) -> ApiResult<Json<Value>> {
    tenant_access(&node, &caller, &tenant, Platform::BillingRead).await?;
    Ok(Json(json!({ "tenant": tenant, "invoices": node.billing.invoices(&tenant).await? })))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct InvoiceQuery {
    format: Option<String>,
}

fn period_named(node: &AdminState, name: &str) -> Result<Period, BillingError> {
    if name == "current" {
        return Ok(Period::containing(node.billing.now()));
    }
    Period::parse(name).ok_or_else(|| BillingError::InvalidPeriod(name.to_string()))
}

#[utoipa::path(
    get,
    path = "/v1/tenants/{id}/invoices/{period}",
    tag = "billing",
    operation_id = "get_invoice",
    summary = "One invoice: a month (YYYY-MM) or `current`",
    params(
        ("id" = String, Path, description = "Its id"),
        ("period" = String, Path, description = "A month, YYYY-MM, or current"),
        ("format" = Option<String>, Query, description = "json (default) or html"),
    ),
    responses(
        (status = 200, description = "The invoice", body = crate::billing::invoice::Invoice, content_type = "application/json"),
        (status = "default", description = "An error: the message says what is wrong and how to fix it", body = super::openapi::ErrorBody),
    ),
)]
pub(crate) async fn get_invoice(
    State(node): State<Arc<AdminState>>,
    Authed(caller): Authed,
    ApiPath((tenant, period)): ApiPath<(String, String)>,
    ApiQuery(query): ApiQuery<InvoiceQuery>,
    headers: http::HeaderMap,
) -> ApiResult<Response> {
    tenant_access(&node, &caller, &tenant, Platform::BillingRead).await?;
    let period = period_named(&node, &period)?;
    let invoice = node.billing.invoice(&tenant, period).await?;
    let wants_html = match query.format.as_deref() {
        Some("html") => true,
        Some("json") => false,
        Some(other) => return Err(ApiError::bad_request(format!("format {other:?}: use json or html"))),
        None => {
            headers.get(http::header::ACCEPT).and_then(|a| a.to_str().ok()).is_some_and(|a| a.contains("text/html"))
        }
    };
    if wants_html {
        return Ok(Html(invoice::html(&invoice)).into_response());
    }
    Ok(json_of(&invoice)?.into_response())
}

/// A tenant's invoices (each as JSON and as HTML) and its subscription
/// events, in one tar archive: what a tenant takes when it leaves.
#[utoipa::path(
    get,
    path = "/v1/tenants/{id}/invoices/export",
    tag = "billing",
    operation_id = "export_invoices",
    summary = "Every invoice (JSON and HTML) and the subscription events, as a tar",
    params(
        ("id" = String, Path, description = "Its id"),
    ),
    responses(
        (status = 200, description = "The archive", body = Vec<u8>, content_type = "application/x-tar"),
        (status = "default", description = "An error: the message says what is wrong and how to fix it", body = super::openapi::ErrorBody),
    ),
)]
pub(crate) async fn export_invoices(
    State(node): State<Arc<AdminState>>,
    Authed(caller): Authed,
    ApiPath(tenant): ApiPath<String>,
) -> ApiResult<Response> {
    tenant_access(&node, &caller, &tenant, Platform::BillingRead).await?;
    let mut files: Vec<(String, Vec<u8>)> = Vec::new();
    for summary in node.billing.invoices(&tenant).await? {
        let Some(period) = Period::parse(&summary.period) else { continue };
        let invoice = node.billing.invoice(&tenant, period).await?;
        let json = serde_json::to_vec_pretty(&invoice).map_err(anyhow::Error::from)?;
        files.push((format!("invoices/{period}.json"), json));
        files.push((format!("invoices/{period}.html"), invoice::html(&invoice).into_bytes()));
    }
    let events = node.billing.events(&tenant, None, i64::MAX).await?;
    files.push(("subscriptions.json".into(), serde_json::to_vec_pretty(&events).map_err(anyhow::Error::from)?));
    let named: Vec<(&str, &[u8])> = files.iter().map(|(n, b)| (n.as_str(), b.as_slice())).collect();
    let archive = crate::configurator::export::tar_of(&named)?;
    let headers = [
        (http::header::CONTENT_TYPE, "application/x-tar".to_string()),
        (http::header::CONTENT_DISPOSITION, format!("attachment; filename=\"{tenant}-invoices.tar\"")),
    ];
    Ok((headers, archive).into_response())
}

#[utoipa::path(
    post,
    path = "/v1/tenants/{id}/invoices/{period}/close",
    tag = "billing",
    operation_id = "close_invoice",
    summary = "Close an ended month's invoice (operators)",
    params(
        ("id" = String, Path, description = "Its id"),
        ("period" = String, Path, description = "A month, YYYY-MM, or current"),
    ),
    responses(
        (status = 200, description = "The invoice", body = crate::billing::invoice::Invoice, content_type = "application/json"),
        (status = "default", description = "An error: the message says what is wrong and how to fix it", body = super::openapi::ErrorBody),
    ),
)]
pub(crate) async fn close_invoice(
    State(node): State<Arc<AdminState>>,
    Authed(caller): Authed,
    ApiPath((tenant, period)): ApiPath<(String, String)>,
) -> ApiResult<Json<Value>> {
    node.access.require_operator(&caller, Platform::BillingOperate)?;
    node.configurator.tenant(&tenant).await?;
    let period = period_named(&node, &period)?;
    let invoice = node.billing.close(&tenant, period).await?;
    node.audit.record(&caller.email, "invoice.close", &invoice.id, Some(&tenant), "ok").await;
    json_of(&invoice)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct DiscountQuery {
    tenant: Option<String>,
}

#[utoipa::path(
    get,
    path = "/v1/discounts",
    tag = "billing",
    operation_id = "list_discounts",
    summary = "Discounts",
    params(
        ("tenant" = Option<String>, Query, description = "Only this tenant's"),
    ),
    responses(
        (status = 200, description = "The discounts", body = super::openapi::DiscountList, content_type = "application/json"),
        (status = "default", description = "An error: the message says what is wrong and how to fix it", body = super::openapi::ErrorBody),
    ),
)]
pub(crate) async fn list_discounts(
    State(node): State<Arc<AdminState>>,
    Authed(caller): Authed,
    ApiQuery(query): ApiQuery<DiscountQuery>,
) -> ApiResult<Json<Value>> {
    match &query.tenant {
        Some(tenant) => tenant_access(&node, &caller, tenant, Platform::BillingRead).await?,
        None => node.access.require_operator(&caller, Platform::BillingOperate)?,
    }
    Ok(Json(json!({ "discounts": node.billing.discounts(query.tenant.as_deref()).await? })))
}

#[utoipa::path(
    post,
    path = "/v1/discounts",
    tag = "billing",
    operation_id = "add_discount",
    summary = "Add a discount (operators)",
    request_body = crate::billing::NewDiscount,
    responses(
        (status = 201, description = "The discount", body = crate::billing::Discount, content_type = "application/json"),
        (status = "default", description = "An error: the message says what is wrong and how to fix it", body = super::openapi::ErrorBody),
    ),
)]
pub(crate) async fn add_discount(
    State(node): State<Arc<AdminState>>,
    Authed(caller): Authed,
    payload: Result<Json<Object<NewDiscount>>, JsonRejection>,
) -> ApiResult<(StatusCode, Json<Value>)> {
    node.access.require_operator(&caller, Platform::BillingOperate)?;
    let new = body(payload)?;
    if let Some(tenant) = &new.tenant {
        node.configurator.tenant(tenant).await?;
    }
    let discount = node.billing.add_discount(new, &caller.email).await?;
    node.audit.record(&caller.email, "discount.add", &discount.id, discount.tenant.as_deref(), "ok").await;
    Ok((StatusCode::CREATED, json_of(&discount)?))
}

#[utoipa::path(
    delete,
    path = "/v1/discounts/{id}",
    tag = "billing",
    operation_id = "remove_discount",
    summary = "Remove a discount (operators)",
    params(
        ("id" = String, Path, description = "Its id"),
    ),
    responses(
        (status = 200, description = "Removed", body = super::openapi::DiscountRemoved, content_type = "application/json"),
        (status = "default", description = "An error: the message says what is wrong and how to fix it", body = super::openapi::ErrorBody),
    ),
)]
pub(crate) async fn remove_discount(
    State(node): State<Arc<AdminState>>,
    Authed(caller): Authed,
    ApiPath(id): ApiPath<String>,
) -> ApiResult<Json<Value>> {
    node.access.require_operator(&caller, Platform::BillingOperate)?;
    node.billing.remove_discount(&id).await?;
    node.audit.record(&caller.email, "discount.remove", &id, None, "ok").await;
    Ok(Json(json!({ "removed": id })))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct LedgerQuery {
    from: Option<String>,
    to: Option<String>,
}

#[utoipa::path(
    get,
    path = "/v1/instances/{id}/usage/hourly",
    tag = "billing",
    operation_id = "ledger",
    summary = "The usage ledger's hourly rows",
    params(
        ("id" = String, Path, description = "Its id"),
        ("from" = Option<String>, Query, description = "Unix seconds or a UTC time"),
        ("to" = Option<String>, Query, description = "Unix seconds or a UTC time"),
    ),
    responses(
        (status = 200, description = "The rows", body = super::openapi::LedgerView, content_type = "application/json"),
        (status = "default", description = "An error: the message says what is wrong and how to fix it", body = super::openapi::ErrorBody),
    ),
)]
pub(crate) async fn ledger(
    State(node): State<Arc<AdminState>>,
    Authed(caller): Authed,
    ApiPath(id): ApiPath<String>,
    ApiQuery(query): ApiQuery<LedgerQuery>,
) -> ApiResult<Json<Value>> {
    let instance = instance_for(&node, &caller, &id, Platform::BillingRead).await?;
    let time = |t: &Option<String>, default: i64| -> ApiResult<i64> {
        match t {
            None => Ok(default),
            Some(t) => parse_time(t).or_else(|| Period::parse(t).map(Period::start)).ok_or_else(|| {
                ApiError::bad_request(format!("{t:?} is not a time: use Unix seconds, 2027-01-10 or 2027-01"))
            }),
        }
    };
    let period = Period::containing(node.billing.now());
    let (from, to) = (time(&query.from, period.start())?, time(&query.to, period.end())?);
    let rows = node.billing.ledger(&instance.id, from, to).await?;
    Ok(Json(json!({ "instance": instance.id, "from": from, "to": to, "rows": rows })))
}

#[utoipa::path(
    get,
    path = "/v1/clock",
    tag = "billing",
    operation_id = "clock",
    summary = "The billing clock",
    responses(
        (status = 200, description = "The clock", body = super::openapi::ClockView, content_type = "application/json"),
        (status = "default", description = "An error: the message says what is wrong and how to fix it", body = super::openapi::ErrorBody),
    ),
)]
pub(crate) async fn clock(State(node): State<Arc<AdminState>>, Authed(_caller): Authed) -> Json<Value> {
    let now = node.billing.now();
    Json(json!({ "now": now, "utc": format_utc(now), "settable": node.billing.clock.is_settable() }))
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct ClockChange {
    /// Unix seconds or a UTC date/time.
    #[serde(default)]
    #[schema(schema_with = crate::clock::time_or_null_schema)]
    now: Option<Value>,
    /// Seconds to move forward.
    #[serde(default)]
    advance: Option<i64>,
}

#[utoipa::path(
    post,
    path = "/v1/clock",
    tag = "billing",
    operation_id = "set_clock",
    summary = "Move the billing clock (operators; with serve --settable-clock)",
    request_body = ClockChange,
    responses(
        (status = 200, description = "The clock", body = super::openapi::ClockView, content_type = "application/json"),
        (status = "default", description = "An error: the message says what is wrong and how to fix it", body = super::openapi::ErrorBody),
    ),
)]
pub(crate) async fn set_clock(
    State(node): State<Arc<AdminState>>,
    Authed(caller): Authed,
    payload: Result<Json<Object<ClockChange>>, JsonRejection>,
) -> ApiResult<Json<Value>> {
    node.access.require_operator(&caller, Platform::BillingOperate)?;
    let change = body(payload)?;
    let target = match (change.now, change.advance) {
        (Some(now), None) => crate::clock::time_value(&now)
            .ok_or_else(|| ApiError::bad_request("now is Unix seconds or a UTC date such as 2027-01-10T08:00Z"))?,
        (None, Some(secs)) if secs >= 0 => node.billing.now().saturating_add(secs),
        (None, Some(_)) => return Err(ApiError::bad_request("the clock only moves forward: advance is ≥ 0")),
        _ => return Err(ApiError::bad_request("give either now (a time) or advance (seconds)")),
    };
    let now = node.billing.clock.set(target).map_err(BillingError::from)?;
    tracing::info!(now = %format_utc(now), by = %caller.email, "billing clock set");
    Ok(Json(json!({ "now": now, "utc": format_utc(now), "settable": true })))
}
