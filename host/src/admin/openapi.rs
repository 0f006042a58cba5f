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

// The shapes of the answers handlers build as JSON objects: described here,
// checked against what the node answers by the fuzzing test (schemathesis's
// response conformance) on both backends.

/// `{tenant, role}`: a membership as an account sees it.
#[derive(ToSchema, serde::Serialize)]
#[allow(dead_code)]
pub struct Joined {
    tenant: String,
    role: crate::access::Role,
}

/// A new account (and the tenant it joined by its invitation).
#[derive(ToSchema, serde::Serialize)]
#[allow(dead_code)]
pub struct Registered {
    #[schema(inline)]
    #[serde(flatten)]
    user: crate::identity::User,
    /// The membership the invitation gave, when it came with one.
    joined: Option<Joined>,
}

/// An invitation accepted.
#[derive(ToSchema)]
#[allow(dead_code)]
pub struct Accepted {
    tenant: String,
    role: String,
    email: String,
}

/// How to accept an invitation.
#[derive(ToSchema)]
#[allow(dead_code)]
pub struct HowToAccept {
    /// The CLI command for someone without an account.
    new_account: String,
    /// The CLI command for someone signed in with the invited address.
    existing_account: String,
    /// The API calls.
    api: String,
}

/// What an invitation link shows.
#[derive(ToSchema)]
#[allow(dead_code)]
pub struct InvitationView {
    tenant: String,
    email: String,
    role: String,
    invited_by: String,
    expires_at: i64,
    accept: HowToAccept,
}

/// A tenant's pending invitations.
#[derive(ToSchema)]
#[allow(dead_code)]
pub struct InvitationList {
    invitations: Vec<crate::identity::invitations::Invitation>,
}

/// A new invitation (its token and link only when no email was sent).
#[derive(ToSchema)]
#[allow(dead_code)]
pub struct Invited {
    invitation: crate::identity::invitations::NewInvitation,
}

/// The caller.
#[derive(ToSchema)]
#[allow(dead_code)]
pub struct Me {
    user_id: String,
    email: String,
    email_verified: bool,
    operator: bool,
    /// `session` or `api-key`.
    credential: String,
    tenants: Vec<Joined>,
    quotas: Vec<crate::quota::QuotaUse>,
}

/// A tenant's members.
#[derive(ToSchema)]
#[allow(dead_code)]
pub struct MemberList {
    members: Vec<crate::access::Member>,
}

/// A tenant's members after a hand-over.
#[derive(ToSchema)]
#[allow(dead_code)]
pub struct Transferred {
    tenant: String,
    members: Vec<crate::access::Member>,
}

/// A member added (or their role changed).
#[derive(ToSchema)]
#[allow(dead_code)]
pub struct MemberAdded {
    tenant: String,
    email: String,
    user_id: String,
    role: crate::access::Role,
}

/// An account deleted.
#[derive(ToSchema)]
#[allow(dead_code)]
pub struct UserDeleted {
    /// Its email address.
    deleted: String,
}

/// A grant and whether it applies.
#[derive(ToSchema)]
#[allow(dead_code)]
pub struct GrantView {
    tenant: String,
    email: String,
    /// `service.permission`
    permission: String,
    created_at: i64,
    /// `active`, or `inactive: ` and why (the service's active version does not declare it).
    status: String,
}

/// A tenant's grants.
#[derive(ToSchema)]
#[allow(dead_code)]
pub struct GrantList {
    grants: Vec<GrantView>,
}

/// A grant made.
#[derive(ToSchema)]
#[allow(dead_code)]
pub struct GrantAdded {
    tenant: String,
    email: String,
    permission: String,
}

/// A permission a service version declares.
#[derive(ToSchema)]
#[allow(dead_code)]
pub struct PermissionView {
    /// `service.name`, as it is granted.
    permission: String,
    name: String,
    description: String,
    /// The routes it guards (`METHOD /path`).
    routes: Vec<String>,
}

/// The permissions of a service version.
#[derive(ToSchema)]
#[allow(dead_code)]
pub struct PermissionList {
    service: String,
    version: String,
    permissions: Vec<PermissionView>,
}

/// Audit log entries, newest first.
#[derive(ToSchema)]
#[allow(dead_code)]
pub struct AuditLog {
    entries: Vec<crate::audit::Entry>,
}

/// Liveness.
#[derive(ToSchema)]
#[allow(dead_code)]
pub struct Live {
    /// `live`
    status: String,
}

/// Readiness.
#[derive(ToSchema)]
#[allow(dead_code)]
pub struct Readiness {
    /// `ready` or `not ready`
    status: String,
    /// `sqlite` or `postgres`
    control_plane: String,
    /// The platform generation this node has applied.
    generation: i64,
    routes: u64,
    /// Why it is not ready (null when ready).
    error: Option<String>,
}

/// The node's limits.
#[derive(ToSchema)]
#[allow(dead_code)]
pub struct NodeLimits {
    fuel_per_request: u64,
    max_memory_bytes: u64,
    request_timeout_ms: u64,
    output_bytes: u64,
    guest_memory_bytes: u64,
    guest_memory_per_tenant_bytes: u64,
    host_call_fuel_per_ms: u64,
    guests: u64,
    guests_per_tenant: u64,
    guests_per_instance: u64,
    max_connections: u64,
    max_connections_per_ip: u64,
    db_threads: u64,
}

/// Open and most connections to instance databases (PostgreSQL).
#[derive(ToSchema)]
#[allow(dead_code)]
pub struct Connections {
    open: u64,
    max: u64,
}

/// The node's place in the cluster.
#[derive(ToSchema)]
#[allow(dead_code)]
pub struct NodeCluster {
    control_plane: String,
    generation: i64,
    redis: bool,
    /// The instance databases' SQL dialect.
    instance_databases: String,
    instance_connections: Option<Connections>,
}

/// The node's trust settings.
#[derive(ToSchema)]
#[allow(dead_code)]
pub struct NodeTrust {
    /// The platform's domains (hostnames under them are given, not proven).
    domains: Vec<String>,
    /// Who may register (`open`, `invite` or `closed`).
    registration: String,
    /// Who may create tenants.
    tenant_creation: String,
    hostname_reservation_days: u64,
    smtp: bool,
    trusted_proxies: u64,
}

/// Embedded SQLite's memory.
#[derive(ToSchema)]
#[allow(dead_code)]
pub struct NodeSqlite {
    memory_bytes: i64,
    highwater_bytes: i64,
    heap_limit_bytes: i64,
}

/// This node.
#[derive(ToSchema)]
#[allow(dead_code)]
pub struct NodeView {
    wharf_version: String,
    ingress: String,
    admin: String,
    routes: u64,
    /// What this node routes where, as a digest: nodes that route alike have
    /// the same (`count-hash`).
    routes_digest: String,
    /// Whether this node holds the lease on the platform's passes (billing,
    /// queueing setups and scheduled jobs, purges): one node at a time does.
    runs_passes: bool,
    /// Instances whose databases are open on this node now (opened on an
    /// instance's first call, closed once it is idle: `--database-idle-secs`).
    instance_databases_open: u64,
    versions_compiled: u64,
    versions_loaded_from_cache: u64,
    limits: NodeLimits,
    guest_memory_granted_bytes: u64,
    /// Login outcomes counted by this node.
    #[schema(value_type = Object)]
    logins: serde_json::Value,
    cluster: NodeCluster,
    trust: NodeTrust,
    sqlite: NodeSqlite,
}

/// The node's last hour, in columns.
#[derive(ToSchema, serde::Serialize)]
pub struct NodeHistory {
    #[serde(flatten)]
    pub charted: crate::metrics::history::Charted,
    /// Seconds between points.
    pub interval_seconds: f64,
}

/// A version deleted.
#[derive(ToSchema)]
#[allow(dead_code)]
pub struct VersionDeleted {
    deleted: crate::registry::VersionInfo,
}

/// A tenant's quotas.
#[derive(ToSchema)]
#[allow(dead_code)]
pub struct TenantQuotas {
    tenant: String,
    quotas: Vec<crate::quota::QuotaUse>,
}

/// A user's quotas.
#[derive(ToSchema)]
#[allow(dead_code)]
pub struct UserQuotas {
    email: String,
    quotas: Vec<crate::quota::QuotaUse>,
}

/// A page of usage.
#[derive(ToSchema)]
#[allow(dead_code)]
pub struct UsagePage {
    usage: Vec<crate::usage::InstanceUsage>,
    /// The cursor of the next page (`?after=`), or null on the last.
    next: Option<String>,
}

/// The queue per service.
#[derive(ToSchema)]
#[allow(dead_code)]
pub struct QueueStats {
    services: Vec<crate::jobs::ServiceQueue>,
    /// Jobs each node runs at once.
    workers: u64,
}

/// A service's price plan and its revisions.
#[derive(ToSchema)]
#[allow(dead_code)]
pub struct PlanView {
    service: String,
    /// The current plan (null if it has none).
    plan: Option<crate::billing::Plan>,
    history: Vec<crate::billing::Plan>,
}

/// A tenant's billing account with the running month.
#[derive(ToSchema)]
#[allow(dead_code)]
pub struct AccountView {
    tenant: String,
    details: crate::billing::Details,
    spending_limit: Option<i64>,
    limit_currency: Option<String>,
    /// Why it is suspended (null if it is not).
    suspended: Option<String>,
    /// The running month, `2027-01`.
    period: String,
    /// Owed so far (what spending limits apply to).
    running_totals: Vec<crate::billing::invoice::Total>,
    accrued_until: Option<i64>,
    /// What the month comes to at its end if nothing changes.
    projected_totals: Option<Vec<crate::billing::invoice::Total>>,
    now: i64,
    now_utc: String,
}

/// A tenant's subscription events.
#[derive(ToSchema)]
#[allow(dead_code)]
pub struct EventList {
    tenant: String,
    events: Vec<crate::billing::SubscriptionEvent>,
}

/// A tenant's invoices.
#[derive(ToSchema)]
#[allow(dead_code)]
pub struct InvoiceList {
    tenant: String,
    invoices: Vec<crate::billing::invoice::InvoiceSummary>,
}

/// Discounts.
#[derive(ToSchema)]
#[allow(dead_code)]
pub struct DiscountList {
    discounts: Vec<crate::billing::Discount>,
}

/// A discount removed.
#[derive(ToSchema)]
#[allow(dead_code)]
pub struct DiscountRemoved {
    removed: String,
}

/// An instance's hourly usage rows.
#[derive(ToSchema)]
#[allow(dead_code)]
pub struct LedgerView {
    instance: String,
    from: i64,
    to: i64,
    rows: Vec<crate::billing::LedgerRow>,
}

/// The billing clock.
#[derive(ToSchema)]
#[allow(dead_code)]
pub struct ClockView {
    /// Unix seconds.
    now: i64,
    utc: String,
    /// Whether an operator may set it (a node started with a settable clock).
    settable: bool,
}

/// The live nodes.
#[derive(ToSchema)]
#[allow(dead_code)]
pub struct NodeList {
    this_node: String,
    nodes: Vec<crate::rollout::fleet::NodeInfo>,
}

/// A canary ended.
#[derive(ToSchema)]
#[allow(dead_code)]
pub struct CanaryEnded {
    service: String,
    /// The instances that follow the active version again.
    released: Vec<String>,
}

/// A node as a rollout sees it.
#[derive(ToSchema)]
#[allow(dead_code)]
pub struct RolloutNode {
    id: String,
    ingress: String,
    generation: i64,
    /// Whether it has applied the platform's current generation.
    caught_up: bool,
}

/// An instance pinned to a version.
#[derive(ToSchema)]
#[allow(dead_code)]
pub struct Pin {
    instance: String,
    /// Who pinned it (`canary`, `health`, an operator).
    by: Option<String>,
    reason: Option<String>,
}

/// One version of a service across the fleet.
#[derive(ToSchema)]
#[allow(dead_code)]
pub struct RolloutVersion {
    version: String,
    active: bool,
    /// When it was staged (Unix seconds), if it was.
    staged_at: Option<i64>,
    /// Whether a rollback would make it active.
    previous: bool,
    ready_on: u64,
    nodes: Vec<crate::rollout::fleet::VersionOnNode>,
    requests: i64,
    errors: i64,
    pinned: Vec<Pin>,
}

/// A promotion, rollback or canary in a service's history.
#[derive(ToSchema)]
#[allow(dead_code)]
pub struct Promotion {
    /// `promote`, `rollback`, `canary`, `health`…
    kind: String,
    version: String,
    previous: Option<String>,
    generation: i64,
    actor: String,
    detail: String,
    at_ms: i64,
    instance: Option<String>,
    /// The nodes that had acknowledged it.
    nodes: Vec<String>,
}

/// Where each version of a service stands on each live node.
#[derive(ToSchema)]
#[allow(dead_code)]
pub struct RolloutStatus {
    service: String,
    active_version: Option<String>,
    previous_version: Option<String>,
    generation: i64,
    nodes: Vec<RolloutNode>,
    versions: Vec<RolloutVersion>,
    /// The newest 20, newest first.
    history: Vec<Promotion>,
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
