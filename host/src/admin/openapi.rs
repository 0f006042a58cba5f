//! The admin API's OpenAPI 3.1 description, generated from the handlers'
//! annotations and the request types (`GET /v1/openapi.json`), and the page
//! that shows it to people (`/docs`).

use utoipa::openapi::security::{Http, HttpAuthScheme, SecurityScheme};
use utoipa::{Modify, OpenApi, ToSchema};

/// Every error of the API: a status and this body.
#[derive(ToSchema)]
#[allow(dead_code)] // described, never built: errors are made by `ApiError`
pub struct ErrorBody {
    /// What is wrong and how to fix it.
    error: String,
}

/// `POST /v1/services/{name}/versions`: the service's manifest and component.
#[derive(ToSchema)]
#[allow(dead_code)]
pub struct Upload {
    /// The version's wharf.toml.
    manifest: String,
    /// The component (.wasm), compiled for wasm32-wasip2.
    #[schema(content_media_type = "application/wasm", value_type = String, format = Binary)]
    component: Vec<u8>,
}

/// A page of tenants.
#[derive(ToSchema)]
#[allow(dead_code)]
pub struct TenantPage {
    tenants: Vec<crate::configurator::Tenant>,
    /// The cursor of the next page (`?after=`), or null on the last.
    next: Option<String>,
}

/// A page of instances.
#[derive(ToSchema)]
#[allow(dead_code)]
pub struct InstancePage {
    instances: Vec<crate::configurator::Instance>,
    /// The cursor of the next page (`?after=`), or null on the last.
    next: Option<String>,
}

/// The services.
#[derive(ToSchema)]
#[allow(dead_code)]
pub struct ServiceList {
    services: Vec<crate::registry::ServiceInfo>,
}

/// A page of jobs, newest first.
#[derive(ToSchema)]
#[allow(dead_code)]
pub struct JobPage {
    jobs: Vec<crate::jobs::JobInfo>,
    /// The cursor of the next page (`?before=`), or null on the last.
    next: Option<String>,
}

/// The caller's API keys.
#[derive(ToSchema)]
#[allow(dead_code)]
pub struct KeyList {
    keys: Vec<crate::identity::KeyInfo>,
}

struct Bearer;

impl Modify for Bearer {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        let mut scheme = Http::new(HttpAuthScheme::Bearer);
        scheme.description = Some(
            "A session token (POST /v1/login) or an API key (POST /v1/keys); /metrics also takes the node's scrape token"
                .into(),
        );
        components.add_security_scheme("bearer", SecurityScheme::Http(scheme));
    }
}

#[derive(OpenApi)]
#[openapi(
    info(
        title = "Wharf admin API",
        description = "The admin API of a Wharf node: services and their versions, tenants, instances, people and \
                       permissions, jobs, billing, the fleet. JSON over HTTP; every error is `{\"error\": \"...\"}` \
                       with a message that says how to fix it. Operators may do everything; other callers see and \
                       change only their tenants, as their role allows (a tenant they are not a member of answers \
                       404, like one that does not exist).",
        license(name = "Apache-2.0", identifier = "Apache-2.0"),
    ),
    security(("bearer" = [])),
    modifiers(&Bearer),
    tags(
        (name = "identity", description = "Accounts, sessions, API keys"),
        (name = "members", description = "A tenant's people: members, invitations, service permissions"),
        (name = "services", description = "Services and their versions"),
        (name = "tenants", description = "Tenants and their quotas"),
        (name = "instances", description = "Instances: hostnames, modules, settings, data"),
        (name = "jobs", description = "The job queue"),
        (name = "billing", description = "Usage, prices, invoices, discounts"),
        (name = "fleet", description = "Updates across the fleet"),
        (name = "node", description = "This node: health, metrics, backups, the audit log"),
    ),
    paths(
        openapi_json,
        super::identity_api::register,
        super::identity_api::login,
        super::identity_api::logout,
        super::identity_api::me,
        super::identity_api::delete_me,
        super::identity_api::delete_user,
        super::identity_api::list_keys,
        super::identity_api::create_key,
        super::identity_api::revoke_key,
        super::identity_api::accept_invitation,
        super::identity_api::show_invitation,
        super::identity_api::list_invitations,
        super::identity_api::cancel_invitation,
        super::identity_api::list_members,
        super::identity_api::add_member,
        super::identity_api::remove_member,
        super::identity_api::transfer,
        super::identity_api::list_grants,
        super::identity_api::add_grant,
        super::identity_api::remove_grant,
        super::identity_api::service_permissions,
        super::identity_api::audit,
        super::healthz,
        super::readyz,
        super::node_info,
        super::node_history,
        super::metrics_api::metrics,
        super::list_services,
        super::get_service,
        super::publish,
        super::get_version,
        super::delete_version,
        super::activate,
        super::list_tenants,
        super::create_tenant,
        super::get_tenant,
        super::delete_tenant,
        super::restore_tenant,
        super::take_backup,
        super::tenant_quotas,
        super::set_tenant_quota,
        super::user_quotas,
        super::set_user_quota,
        super::list_instances,
        super::create_instance,
        super::get_instance,
        super::update_instance,
        super::delete_instance,
        super::restore_instance,
        super::export_instance,
        super::import_instance,
        super::verify_host,
        super::instance_usage,
        super::all_usage,
        super::jobs_api::enqueue,
        super::jobs_api::list,
        super::jobs_api::stats,
        super::jobs_api::get,
        super::jobs_api::retry,
        super::jobs_api::cancel,
        super::billing_api::get_plan,
        super::billing_api::set_plan,
        super::billing_api::account,
        super::billing_api::set_details,
        super::billing_api::set_limit,
        super::billing_api::subscriptions,
        super::billing_api::list_invoices,
        super::billing_api::export_invoices,
        super::billing_api::get_invoice,
        super::billing_api::close_invoice,
        super::billing_api::ledger,
        super::billing_api::list_discounts,
        super::billing_api::add_discount,
        super::billing_api::remove_discount,
        super::billing_api::clock,
        super::billing_api::set_clock,
        super::rollout_api::nodes,
        super::rollout_api::stage,
        super::rollout_api::promote,
        super::rollout_api::rollback,
        super::rollout_api::canary,
        super::rollout_api::abort_canary,
        super::rollout_api::status,
    ),
)]
pub struct ApiDoc;

/// The description, built once.
pub fn document() -> &'static str {
    static TEXT: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    TEXT.get_or_init(|| ApiDoc::openapi().to_pretty_json().unwrap_or_else(|e| format!("{{\"error\": \"{e}\"}}")))
}

#[utoipa::path(
    get,
    path = "/v1/openapi.json",
    tag = "node",
    operation_id = "openapi",
    summary = "This description (OpenAPI 3.1)",
    responses(
        (status = 200, description = "The description", body = Object, content_type = "application/json"),
        (status = "default", description = "An error", body = ErrorBody),
    ),
    security(()),
)]
pub(super) async fn openapi_json() -> impl axum::response::IntoResponse {
    ([(http::header::CONTENT_TYPE, "application/json")], document())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::collections::BTreeSet;

    /// (method, path) of every route the admin router declares, read from its source.
    fn routes() -> BTreeSet<(String, String)> {
        let source = include_str!("mod.rs");
        let router = &source[source.find("pub fn router(").unwrap()..];
        let router = &router[..router.find(".merge(dashboard::routes())").unwrap()];
        let mut routes = BTreeSet::new();
        for call in router.split(".route(").skip(1) {
            let path = call.split('"').nth(1).unwrap().to_string();
            let handlers = &call[call.find(',').unwrap()..];
            for method in ["get", "post", "put", "patch", "delete"] {
                let calls = handlers.matches(&format!("{method}(")).count();
                let layered = handlers.matches(&format!("max({method}(")).count();
                if calls > layered {
                    routes.insert((method.to_string(), path.clone()));
                }
            }
        }
        routes
    }

    #[test]
    fn the_description_is_openapi_3_1_and_covers_every_route() {
        let doc: serde_json::Value = serde_json::from_str(super::document()).unwrap();
        assert_eq!(doc["openapi"], "3.1.0");
        let mut described = BTreeSet::new();
        for (path, item) in doc["paths"].as_object().unwrap() {
            for method in item.as_object().unwrap().keys() {
                described.insert((method.clone(), path.clone()));
            }
        }
        let routes = routes();
        assert!(routes.len() > 70, "the routes were not found: {routes:?}");
        let undescribed: Vec<_> = routes.difference(&described).collect();
        assert!(undescribed.is_empty(), "routes without a description: {undescribed:?}");
        let unrouted: Vec<_> = described.difference(&routes).collect();
        assert!(unrouted.is_empty(), "described but not routed: {unrouted:?}");
        // Every operation answers errors in the one shape.
        for (path, item) in doc["paths"].as_object().unwrap() {
            for (method, operation) in item.as_object().unwrap() {
                let default = &operation["responses"]["default"]["content"]["application/json"]["schema"]["$ref"];
                assert_eq!(default, "#/components/schemas/ErrorBody", "{method} {path}");
            }
        }
    }
}
