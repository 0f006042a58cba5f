//! The public listener: every request is routed by its `Host` to an instance and
//! run in a fresh guest. Errors the host produces are short plain-text bodies.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use http::{HeaderValue, StatusCode};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::watch;
use wasmtime_wasi_http::p2::body::HyperOutgoingBody;

use crate::access::Access;
use crate::identity::Identity;
use crate::registry::LoadedVersion;
use crate::router::{self, Router};
use crate::runtime::Handled;
use crate::runtime::{plain_body, GuestCaller, GuestContext, GuestFailure, RequestIdentity, Runtime};

/// What the ingress needs from the node.
pub struct Ingress {
    pub(crate) router: Arc<Router>,
    pub(crate) runtime: Arc<Runtime>,
    identity: Arc<Identity>,
    access: Arc<Access>,
    next_request_id: AtomicU64,
}

/// How long a client may take to send a request's headers.
const HEADER_READ_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

/// Response header carrying the request id, to match a client's report to the log.
pub const REQUEST_ID_HEADER: &str = "x-wharf-request-id";

impl Ingress {
    /// An ingress routing through `router` into `runtime`.
    pub fn new(router: Arc<Router>, runtime: Arc<Runtime>, identity: Arc<Identity>, access: Arc<Access>) -> Self {
        Self { router, runtime, identity, access, next_request_id: AtomicU64::new(1) }
    }

    /// Serve connections from `listener` until `shutdown` turns true, then let
    /// in-flight requests finish (up to `grace`).
    pub async fn serve(
        self: Arc<Self>,
        listener: TcpListener,
        mut shutdown: watch::Receiver<bool>,
        grace: std::time::Duration,
    ) {
        let graceful = hyper_util::server::graceful::GracefulShutdown::new();
        loop {
            let (stream, peer) = tokio::select! {
                accepted = listener.accept() => match accepted {
                    Ok(pair) => pair,
                    Err(e) => {
                        // Out of file descriptors and the like: back off instead of spinning.
                        tracing::warn!("accept failed: {e}");
                        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                        continue;
                    }
                },
                _ = shutdown.changed() => break,
            };
            let _ = stream.set_nodelay(true);
            let ingress = self.clone();
            let service = hyper::service::service_fn(move |req| {
                let ingress = ingress.clone();
                async move { Ok::<_, std::convert::Infallible>(ingress.handle(req).await) }
            });
            let conn = http1::Builder::new()
                .keep_alive(true)
                // A client gets this long to send a request's headers (slowloris).
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_READ_TIMEOUT)
                .serve_connection(TokioIo::new(stream), service);
            let conn = graceful.watch(conn);
            tokio::spawn(async move {
                if let Err(e) = conn.await {
                    tracing::debug!(%peer, "connection ended: {e}");
                }
            });
        }
        drop(listener);
        tokio::select! {
            _ = graceful.shutdown() => tracing::info!("ingress drained"),
            _ = tokio::time::sleep(grace) => tracing::warn!("ingress shutdown grace period elapsed with requests in flight"),
        }
    }

    /// Route and run one request.
    pub async fn handle(&self, mut req: hyper::Request<Incoming>) -> hyper::Response<HyperOutgoingBody> {
        let request_id = self.next_request_id.fetch_add(1, Ordering::Relaxed);
        let host = match router::request_host(&req) {
            Ok(host) => host,
            Err(e) => return plain(StatusCode::BAD_REQUEST, format!("{e}\n"), request_id),
        };
        let Some(route) = self.router.lookup(&host) else {
            return plain(StatusCode::NOT_FOUND, format!("no service is bound to host {host:?}\n"), request_id);
        };
        if !route.enabled {
            return plain(StatusCode::GONE, "this site is disabled by its owner\n", request_id);
        }
        let Some(version) = route.version() else {
            return plain(StatusCode::SERVICE_UNAVAILABLE, "the service has no active version\n", request_id);
        };
        // A module's routes exist only where the instance enabled the module.
        if !version.module_routes.is_empty() {
            let modules = version.module_routes.required(req.method().as_str(), req.uri().path());
            if modules.iter().any(|m| !route.features.modules.iter().any(|enabled| enabled == m)) {
                return plain(StatusCode::NOT_FOUND, "not found\n", request_id);
            }
        }
        // Resolve a Wharf credential once: guards check it, and the guest learns
        // who is calling through wharf:platform/identity.
        let needed = version.guards.required(req.method().as_str(), req.uri().path());
        let caller = match self.caller(&route.tenant, &version, req.headers()).await {
            Ok(caller) => caller,
            Err(denied) => return denied.response(request_id),
        };
        if !needed.is_empty() {
            match &caller {
                Resolved::Anonymous => {
                    return Denied::Unauthenticated("this route needs a credential: send Authorization: Bearer <token>")
                        .response(request_id)
                }
                Resolved::Invalid => {
                    return Denied::Unauthenticated("the credential is invalid, expired or revoked")
                        .response(request_id)
                }
                Resolved::Outsider => {
                    return Denied::Forbidden(format!("{}.{}", version.service, needed[0])).response(request_id)
                }
                Resolved::Member(member) => {
                    if let Some(missing) = needed.iter().find(|n| !member.permissions.iter().any(|p| p == *n)) {
                        return Denied::Forbidden(format!("{}.{missing}", version.service)).response(request_id);
                    }
                }
            }
        }
        // A Wharf credential is for Wharf: the guest never sees it (it could
        // replay it against the admin API).
        if wharf_credential(req.headers()) {
            req.headers_mut().remove(http::header::AUTHORIZATION);
        }
        let guest_caller = match caller {
            Resolved::Member(member) => Some(member),
            _ => None,
        };
        let who = RequestIdentity { tenant: route.tenant.clone(), instance: route.instance.clone(), request_id };
        let usage = route.usage.clone();
        // The version (an Arc) rides along for the failure log: no per-request copies.
        let logged = version.clone();
        let handled = self
            .runtime
            .handle(
                &version.pre,
                who,
                GuestContext { caller: guest_caller, features: route.features.clone(), db: Some(route.db.clone()) },
                req,
                move |who, outcome| {
                    // A request refused for lack of capacity never ran: the node's
                    // shortage, not the tenant's usage.
                    if outcome.failure != Some(GuestFailure::AtCapacity) {
                        usage.record(outcome.fuel, outcome.failure.is_some());
                    }
                    if let Some(failure) = &outcome.failure {
                        tracing::warn!(
                            tenant = %who.tenant,
                            instance = %who.instance,
                            request_id = who.request_id,
                            service = %logged.service,
                            version = %logged.version,
                            fuel = outcome.fuel,
                            "guest failed: {failure:?}"
                        );
                    }
                },
            )
            .await;
        match handled {
            Handled::Response(mut response) => {
                response.headers_mut().insert(REQUEST_ID_HEADER, HeaderValue::from(request_id));
                response
            }
            Handled::Failed(failure) => failure_response(&failure, request_id),
        }
    }
}

/// Why a guarded route refused a request.
enum Denied {
    Unauthenticated(&'static str),
    Forbidden(String),
    Internal,
}

impl Denied {
    fn response(&self, request_id: u64) -> hyper::Response<HyperOutgoingBody> {
        match self {
            Denied::Unauthenticated(why) => {
                let mut response = plain(StatusCode::UNAUTHORIZED, format!("{why}\n"), request_id);
                response
                    .headers_mut()
                    .insert(http::header::WWW_AUTHENTICATE, HeaderValue::from_static(crate::admin::WWW_AUTHENTICATE));
                response
            }
            Denied::Forbidden(permission) => {
                plain(StatusCode::FORBIDDEN, format!("this route needs the permission {permission}\n"), request_id)
            }
            Denied::Internal => plain(StatusCode::INTERNAL_SERVER_ERROR, "internal error\n", request_id),
        }
    }
}

/// What a request's credential resolved to.
enum Resolved {
    /// No Wharf credential.
    Anonymous,
    /// A Wharf credential that is unknown, expired or revoked.
    Invalid,
    /// A valid credential of someone outside the instance's tenant.
    Outsider,
    /// A member of the instance's tenant, with their grants for this version.
    Member(GuestCaller),
}

impl Ingress {
    /// Resolve the request's Wharf credential against the instance's tenant. The
    /// caller's grants are kept only where the running version declares them, so a
    /// permission a version dropped grants nothing while that version runs.
    async fn caller(
        &self,
        tenant: &str,
        version: &LoadedVersion,
        headers: &http::HeaderMap,
    ) -> Result<Resolved, Denied> {
        if !wharf_credential(headers) {
            return Ok(Resolved::Anonymous);
        }
        let Some(token) = crate::admin::bearer(headers) else { return Ok(Resolved::Anonymous) };
        let user = match self.identity.authenticate(token).await {
            Ok(Some(user)) => user,
            Ok(None) => return Ok(Resolved::Invalid),
            Err(e) => {
                tracing::error!("authentication failed: {e}");
                return Err(Denied::Internal);
            }
        };
        match self.access.service_grants(tenant, &user.user_id, &version.service).await {
            Ok(Some(granted)) => Ok(Resolved::Member(GuestCaller {
                user_id: user.user_id,
                email: user.email,
                permissions: granted.into_iter().filter(|p| version.declares(p)).collect(),
            })),
            Ok(None) => Ok(Resolved::Outsider),
            Err(e) => {
                tracing::error!("permission check failed: {e}");
                Err(Denied::Internal)
            }
        }
    }
}

/// Whether the request carries a Wharf session token or API key.
fn wharf_credential(headers: &http::HeaderMap) -> bool {
    crate::admin::bearer(headers).is_some_and(|t| {
        t.starts_with(crate::identity::secrets::SESSION_PREFIX) || t.starts_with(crate::identity::secrets::KEY_PREFIX)
    })
}

fn failure_response(failure: &GuestFailure, request_id: u64) -> hyper::Response<HyperOutgoingBody> {
    let (status, message) = failure.status_and_message();
    plain(status, message, request_id)
}

/// A short plain-text response made by the host.
fn plain(status: StatusCode, body: impl Into<bytes::Bytes>, request_id: u64) -> hyper::Response<HyperOutgoingBody> {
    let mut response = hyper::Response::new(plain_body(body));
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(http::header::CONTENT_TYPE, HeaderValue::from_static("text/plain; charset=utf-8"));
    headers.insert(REQUEST_ID_HEADER, HeaderValue::from(request_id));
    response
}
