//! The public listener: every request is routed by its `Host` to an instance and
//! run in a fresh guest. Errors the host produces are short plain-text bodies.
//!
//! The edges are bounded: connections node-wide and per client address
//! ([`listener`]), the time to send headers and the pace of bodies ([`body`]; the
//! first part of a body is read before a guest starts), and the guests one tenant
//! and one instance may run at once, so a tenant holds at most its share of the
//! node.

pub mod body;

mod loggate;

use std::hash::BuildHasher;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use dashmap::DashMap;
use http::{HeaderValue, StatusCode};
use hyper::body::Incoming;
use tokio::net::TcpListener;
use tokio::sync::{watch, OwnedSemaphorePermit, Semaphore};
use wasmtime_wasi_http::p2::body::HyperOutgoingBody;

use tracing::field::Empty;
use tracing::Instrument;

use crate::config::EdgeLimits;
use crate::listener;
use crate::telemetry::{child_span, trace_span};
use body::{BodyPace, PacedBody};

use crate::access::Access;
use crate::identity::cache::Memo;
use crate::identity::{credentials, Identity};
use crate::registry::LoadedVersion;
use crate::router::{self, Router, Serving};
use crate::runtime::Handled;
use crate::runtime::{
    plain_body, GuestCaller, GuestContext, GuestFailure, JobsContext, RequestIdentity, Reuse, Runtime,
};

/// What the ingress needs from the node.
pub struct Ingress {
    pub(crate) router: Arc<Router>,
    pub(crate) runtime: Arc<Runtime>,
    identity: Arc<Identity>,
    access: Arc<Access>,
    /// Billing time, for end dates.
    clock: Arc<crate::clock::Clock>,
    /// Where a version failing its health gate is reported.
    unhealthy: tokio::sync::mpsc::UnboundedSender<crate::router::health::Unhealthy>,
    next_request_id: AtomicU64,
    /// Request ids are the sequence hashed with a key of this process, so they are
    /// unique without telling anyone how many requests came before.
    ids: std::collections::hash_map::RandomState,
    edges: EdgeLimits,
    caps: listener::ConnectionCaps,
    per_tenant: u32,
    per_instance: u32,
    tenant_guests: DashMap<Arc<str>, Arc<Semaphore>>,
    instance_guests: DashMap<Arc<str>, Arc<Semaphore>>,
    /// Responses and guest outcomes, for `GET /metrics`.
    metrics: Arc<crate::metrics::Metrics>,
    /// Looked up only when a guest fails, off the common path.
    failure_logs: Arc<DashMap<Arc<str>, Arc<loggate::LogGate>>>,
    /// Credentials as requests need them: resolved against one tenant and
    /// one loaded version. Kept under the identity room's epoch, which every
    /// change to a session, key, membership, role or grant ends (on every
    /// node), for at most a session's or key's own lifetime; refusals briefly.
    credentials: Memo<CredentialKey, Resolved>,
}

/// A credential's SHA-256, the tenant it is used in and the loaded version
/// (its serial) it runs: what a credential resolves to depends on all three.
type CredentialKey = ([u8; 32], Arc<str>, u64);

/// Longest a request waits for its tenant's or instance's guest slot before it
/// is answered 503.
const GUEST_SLOT_WAIT: std::time::Duration = std::time::Duration::from_millis(500);

/// Response header carrying the request id, to match a client's report to the log.
pub const REQUEST_ID_HEADER: &str = "x-wharf-request-id";

/// The service version that answered a request.
pub const VERSION_HEADER: &str = "x-wharf-version";

/// The two as header names, made once (a name built from a `&str` is copied
/// on every insert).
const REQUEST_ID_NAME: http::HeaderName = http::HeaderName::from_static(REQUEST_ID_HEADER);
const VERSION_NAME: http::HeaderName = http::HeaderName::from_static(VERSION_HEADER);

impl Ingress {
    /// An ingress routing through `router` into `runtime`.
    #[allow(clippy::too_many_arguments)] // one per part of the node it ties together
    pub fn new(
        router: Arc<Router>,
        runtime: Arc<Runtime>,
        identity: Arc<Identity>,
        access: Arc<Access>,
        clock: Arc<crate::clock::Clock>,
        unhealthy: tokio::sync::mpsc::UnboundedSender<crate::router::health::Unhealthy>,
        edges: EdgeLimits,
        pool: u32,
        metrics: Arc<crate::metrics::Metrics>,
    ) -> Self {
        let caps =
            listener::ConnectionCaps::new(edges.max_connections, edges.max_connections_per_ip, edges.header_timeout);
        Self {
            router,
            runtime,
            access,
            clock,
            unhealthy,
            next_request_id: AtomicU64::new(1),
            ids: Default::default(),
            per_tenant: edges.guests_per_tenant(pool),
            per_instance: edges.guests_per_instance(pool),
            edges,
            caps,
            tenant_guests: DashMap::new(),
            instance_guests: DashMap::new(),
            failure_logs: Arc::default(),
            metrics,
            credentials: Memo::new(identity.epoch.clone()),
            identity,
        }
    }

    /// A guest slot of `tenant` and of `instance`, waiting at most
    /// [`GUEST_SLOT_WAIT`] while either runs its most.
    async fn guest_slots(&self, tenant: &Arc<str>, instance: &Arc<str>) -> Option<GuestSlots> {
        fn permits(map: &DashMap<Arc<str>, Arc<Semaphore>>, key: &Arc<str>, size: u32) -> Arc<Semaphore> {
            match map.get(key) {
                Some(permits) => permits.clone(),
                None => map.entry(key.clone()).or_insert_with(|| Arc::new(Semaphore::new(size as usize))).clone(),
            }
        }
        let tenant = permits(&self.tenant_guests, tenant, self.per_tenant);
        let instance = permits(&self.instance_guests, instance, self.per_instance);
        // The common case takes both at once without a timer.
        if let (Ok(t), Ok(i)) = (tenant.clone().try_acquire_owned(), instance.clone().try_acquire_owned()) {
            return Some((t, i));
        }
        self.metrics.slot_waits.inc();
        tokio::time::timeout(GUEST_SLOT_WAIT, async {
            let t = tenant.acquire_owned().await.ok()?;
            let i = instance.acquire_owned().await.ok()?;
            Some((t, i))
        })
        .await
        .ok()
        .flatten()
    }

    /// Serve connections from `listener` until `shutdown` turns true, then let
    /// in-flight requests finish (up to `grace`).
    pub async fn serve(
        self: Arc<Self>,
        listener: TcpListener,
        shutdown: watch::Receiver<bool>,
        grace: std::time::Duration,
    ) {
        let caps = self.caps.clone();
        listener::serve("ingress", listener, caps, shutdown, grace, move |_peer, after_flush| {
            let ingress = self.clone();
            hyper::service::service_fn(move |req| {
                let (ingress, after_flush) = (ingress.clone(), after_flush.clone());
                async move { Ok::<_, std::convert::Infallible>(ingress.handle_on(req, Some(after_flush)).await) }
            })
        })
        .await
    }

    /// Route and run one request.
    pub async fn handle(&self, req: hyper::Request<Incoming>) -> hyper::Response<HyperOutgoingBody> {
        self.handle_on(req, None).await
    }

    /// Route and run one request of a connection whose flushes `after_flush`
    /// hears of: its usage counts once its response has left. The steps, in
    /// order: resolve the host, admit the request (the instance's state and
    /// the version it serves), authorize it (modules, credential, permissions),
    /// read the start of its body, run the guest, account for it.
    async fn handle_on(
        &self,
        req: hyper::Request<Incoming>,
        after_flush: Option<Arc<listener::AfterFlush>>,
    ) -> hyper::Response<HyperOutgoingBody> {
        // The request's span, a child of the client's `traceparent` if any; it
        // ends when the guest is done (its children hold it).
        let span = if crate::telemetry::sample() {
            trace_span!(
                "request",
                otel.name = req.method().as_str(),
                otel.kind = "server",
                http.request.method = req.method().as_str(),
                url.path = req.uri().path(),
                server.address = Empty,
                wharf.request_id = Empty,
                wharf.tenant = Empty,
                wharf.instance = Empty,
                wharf.service = Empty,
                wharf.version = Empty,
                http.response.status_code = Empty,
                otel.status_code = Empty,
            )
        } else {
            tracing::Span::none()
        };
        crate::telemetry::adopt_remote_parent(&span, req.headers());
        let response = self.steps(req, after_flush, &span).instrument(span.clone()).await;
        let status = response.status().as_u16();
        self.metrics.response(status);
        span.record("http.response.status_code", i64::from(status));
        if status >= 500 {
            span.record("otel.status_code", "error");
        }
        response
    }

    /// The steps of [`Ingress::handle_on`].
    async fn steps(
        &self,
        mut req: hyper::Request<Incoming>,
        after_flush: Option<Arc<listener::AfterFlush>>,
        span: &tracing::Span,
    ) -> hyper::Response<HyperOutgoingBody> {
        let arrived = std::time::Instant::now();
        let request_id = self.ids.hash_one(self.next_request_id.fetch_add(1, Ordering::Relaxed));
        span.record("wharf.request_id", request_id);
        let route = match self.resolve(&req, request_id) {
            Ok(route) => route,
            Err(response) => return response,
        };
        if !span.is_disabled() {
            if let Ok(host) = router::request_host(&req) {
                span.record("server.address", &*host);
            }
            span.record("wharf.tenant", &*route.tenant);
            span.record("wharf.instance", &*route.instance);
        }
        let version = match self.admit(&req, &route, request_id) {
            Ok(version) => version,
            Err(response) => return response,
        };
        if !span.is_disabled() {
            span.record("wharf.service", &*version.service);
            span.record("wharf.version", &*version.version);
        }
        let auth = child_span!("auth", wharf.caller = Empty, http.response.status_code = Empty);
        let caller = match self.authorize(&req, &route, &version, request_id).instrument(auth.clone()).await {
            Ok(caller) => {
                auth.record("wharf.caller", if caller.is_some() { "member" } else { "anonymous" });
                caller
            }
            Err(response) => {
                auth.record("wharf.caller", "refused");
                auth.record("http.response.status_code", i64::from(response.status().as_u16()));
                return response;
            }
        };
        drop(auth);
        // A Wharf credential is for Wharf: the guest never sees it (it could
        // replay it against the admin API).
        credentials::strip_wharf_credentials(req.headers_mut());
        let req = match self.read_body(req, request_id).await {
            Ok(req) => req,
            Err(response) => return response,
        };
        // A tenant (and an instance) runs at most its share of the node's guests;
        // a burst waits briefly for a slot rather than failing at once.
        let Some(slots) = self.guest_slots(&route.tenant, &route.instance).await else {
            self.metrics.slot_timeouts.inc();
            let mut response = plain(
                StatusCode::SERVICE_UNAVAILABLE,
                "this site is handling as many requests as it may at once; retry shortly\n",
                request_id,
            );
            response.headers_mut().insert(http::header::RETRY_AFTER, HeaderValue::from_static("1"));
            return response;
        };
        // Counted once the guest is done and its response handed over in full,
        // whichever comes last: a node killed in between bills nothing the
        // client did not get.
        let tally = Arc::new(Tally::new(route.usage().clone()));
        // If this future is dropped before a response (the client left), the
        // hand-over is over then.
        let handover = Handover(Some(tally.clone()));
        let handled = self.run_guest(req, &route, &version, caller, slots, tally, request_id).await;
        let response = self.account(&route, &version, handled, handover, after_flush, request_id);
        self.series(&version).request(response.status().as_u16(), arrived.elapsed());
        response
    }

    /// `version`'s request series (resolved on its first request).
    fn series<'v>(&self, version: &'v LoadedVersion) -> &'v Arc<crate::metrics::VersionSeries> {
        version.metrics.get_or_init(|| self.metrics.version(&version.service, &version.version))
    }

    /// The instance `Host` names; a claimed name's challenge, or 400/404.
    #[allow(clippy::result_large_err)]
    fn resolve(
        &self,
        req: &hyper::Request<Incoming>,
        request_id: u64,
    ) -> Result<Arc<router::Route>, hyper::Response<HyperOutgoingBody>> {
        let host = match router::request_host(req) {
            Ok(host) => host,
            Err(e) => return Err(plain(StatusCode::BAD_REQUEST, format!("{e}\n"), request_id)),
        };
        if let Some(route) = self.router.lookup(&host) {
            return Ok(route);
        }
        // A claimed name proves it reaches the platform by answering its token.
        if let Some(token) = req.uri().path().strip_prefix(crate::configurator::hostnames::CHALLENGE_PATH) {
            if req.method() == http::Method::GET && self.router.challenge(&host, token) {
                return Err(plain(StatusCode::OK, token.to_string(), request_id));
            }
        }
        Err(plain(StatusCode::NOT_FOUND, format!("no service is bound to host {host:?}\n"), request_id))
    }

    /// The version the request runs on, if the instance takes requests now: not
    /// disabled (410), suspended or past its end (402), being set up (503), and
    /// the route's module enabled (404 otherwise).
    #[allow(clippy::result_large_err)]
    fn admit(
        &self,
        req: &hyper::Request<Incoming>,
        route: &router::Route,
        request_id: u64,
    ) -> Result<Arc<LoadedVersion>, hyper::Response<HyperOutgoingBody>> {
        if !route.enabled {
            return Err(plain(StatusCode::GONE, "this site is disabled by its owner\n", request_id));
        }
        if let Some(reason) = &route.suspended {
            return Err(plain(
                StatusCode::PAYMENT_REQUIRED,
                format!("this site is suspended: {reason}; its owner can raise the limit (wharf billing limit)\n"),
                request_id,
            ));
        }
        if let Some(ends_at) = route.ends_at.filter(|end| self.clock.now() >= *end) {
            return Err(plain(
                StatusCode::PAYMENT_REQUIRED,
                format!(
                    "this site's subscription ended at {}; its owner can renew it with the platform's operators\n",
                    crate::clock::format_utc(ends_at)
                ),
                request_id,
            ));
        }
        let version = match route.serving() {
            Serving::Version(version) => version,
            Serving::Nothing => {
                return Err(plain(StatusCode::SERVICE_UNAVAILABLE, "the service has no active version\n", request_id))
            }
            Serving::Maintenance => return Err(maintenance(request_id)),
        };
        // A module's routes exist only where the instance enabled the module.
        if !version.module_routes.is_empty() {
            let modules = version.module_routes.required(req.method().as_str(), req.uri().path());
            if modules.iter().any(|m| !route.features.modules.iter().any(|enabled| enabled == m)) {
                return Err(plain(StatusCode::NOT_FOUND, "not found\n", request_id));
            }
        }
        Ok(version)
    }

    /// Resolve a Wharf credential once (guards check it, and the guest learns
    /// who is calling through wharf:platform/identity) and check the
    /// permissions guarding the route: 401 or 403 when they are not held.
    #[allow(clippy::result_large_err)]
    async fn authorize(
        &self,
        req: &hyper::Request<Incoming>,
        route: &router::Route,
        version: &LoadedVersion,
        request_id: u64,
    ) -> Result<Option<Arc<GuestCaller>>, hyper::Response<HyperOutgoingBody>> {
        let needed = version.guards.required(req.method().as_str(), req.uri().path());
        let caller = self.caller(&route.tenant, version, req.headers()).await.map_err(|d| d.response(request_id))?;
        if !needed.is_empty() {
            let denied = match &caller {
                Resolved::Anonymous => {
                    Some(Denied::Unauthenticated("this route needs a credential: send Authorization: Bearer <token>"))
                }
                Resolved::Invalid => Some(Denied::Unauthenticated("the credential is invalid, expired or revoked")),
                Resolved::Outsider => Some(Denied::Forbidden(format!("{}.{}", version.service, needed[0]))),
                Resolved::Member(member) => needed
                    .iter()
                    .find(|n| !member.permissions.iter().any(|p| p == *n))
                    .map(|missing| Denied::Forbidden(format!("{}.{missing}", version.service))),
            };
            if let Some(denied) = denied {
                return Err(denied.response(request_id));
            }
        }
        Ok(match caller {
            Resolved::Member(member) => Some(member),
            _ => None,
        })
    }

    /// The first part of the body arrives before a guest is started: a client
    /// that trickles holds its connection, never a guest (408 if too slow).
    #[allow(clippy::result_large_err)]
    async fn read_body(
        &self,
        req: hyper::Request<Incoming>,
        request_id: u64,
    ) -> Result<hyper::Request<PacedBody>, hyper::Response<HyperOutgoingBody>> {
        let (parts, incoming) = req.into_parts();
        let pace = BodyPace { idle: self.edges.body_idle_timeout, min_rate: self.edges.min_body_rate };
        let mut body = PacedBody::new(incoming, pace);
        if let Err(e) = body.read_ahead(self.edges.body_prefetch_bytes).await {
            tracing::debug!(request_id, "request body not received: {e}");
            return Err(plain(StatusCode::REQUEST_TIMEOUT, "the request body arrived too slowly\n", request_id));
        }
        Ok(hyper::Request::from_parts(parts, body))
    }

    /// Run the guest on a fresh store; when it is done its slots are freed, its
    /// fuel tallied, and a failure logged (a few per instance, then counted).
    #[allow(clippy::too_many_arguments)]
    async fn run_guest(
        &self,
        req: hyper::Request<PacedBody>,
        route: &router::Route,
        version: &Arc<LoadedVersion>,
        caller: Option<Arc<GuestCaller>>,
        slots: GuestSlots,
        tally: Arc<Tally>,
        request_id: u64,
    ) -> Handled {
        let span = child_span!(
            "guest",
            wharf.fuel = Empty,
            wharf.outcome = Empty,
            wharf.reused = Empty,
            otel.status_code = Empty,
        );
        // The guest continues the trace: its `traceparent` names its own span.
        let mut req = req;
        crate::telemetry::inject(&span, req.headers_mut());
        let who = RequestIdentity::new(route.tenant.clone(), route.instance.clone(), request_id).traced(span);
        let failure_logs = self.failure_logs.clone();
        // The version (an Arc) rides along for the failure log: no per-request copies.
        let logged = version.clone();
        let series = self.series(version).clone();
        // Counted until the guest is done (or never started: the closure is dropped).
        let running = crate::metrics::Running::new(&self.metrics.guests_running);
        let context = GuestContext {
            caller,
            features: route.features.clone(),
            db: Some(route.db.clone()),
            jobs: route.jobs.as_ref().map(|door| JobsContext { instance: door.clone(), version: version.clone() }),
        };
        let reuse = version.reuse.map(|policy| Reuse {
            policy,
            instance: route.instance.clone(),
            version: version.serial,
            features: route.features.clone(),
        });
        self.runtime
            .handle(&version.pre, who, context, req, route.db.recent_use(), reuse, move |who, outcome| {
                // The guest is done: its slots are free for the next request.
                drop(slots);
                // A request refused for lack of capacity never ran: the node's
                // shortage, not the tenant's usage.
                if outcome.failure != Some(GuestFailure::AtCapacity) {
                    tally.guest_done(outcome.fuel, outcome.failure.is_some());
                }
                let ended = guest_outcome(outcome.failure.as_ref());
                series.guest(ended, outcome.fuel);
                who.span.record("wharf.fuel", i64::try_from(outcome.fuel).unwrap_or(i64::MAX));
                who.span.record("wharf.outcome", ended.label());
                if outcome.failure.is_some() {
                    who.span.record("otel.status_code", "error");
                }
                drop(running);
                match &outcome.failure {
                    // The client left: nothing went wrong with the guest.
                    Some(GuestFailure::Abandoned) => {
                        tracing::debug!(tenant = %who.tenant, instance = %who.instance, request_id = who.request_id, "client went away; guest stopped");
                    }
                    Some(failure) => {
                        let gate = failure_logs.entry(who.instance.clone()).or_default().clone();
                        if let loggate::Verdict::Log { suppressed } = gate.check() {
                            if suppressed > 0 {
                                tracing::warn!(tenant = %who.tenant, instance = %who.instance, "{suppressed} more guest failures were not logged");
                            }
                            tracing::warn!(
                                tenant = %who.tenant,
                                instance = %who.instance,
                                request_id = who.request_id,
                                trace_id = who.trace_field(),
                                service = %logged.service,
                                version = %logged.version,
                                fuel = outcome.fuel,
                                "guest failed: {failure:?}"
                            );
                        }
                    }
                    None => {}
                }
            })
            .await
    }

    /// Count the request on its version (what `wharf status` shows) and in the
    /// health gate of a version the instance newly serves; answer with the
    /// version that answered, the body tallied as it leaves.
    fn account(
        &self,
        route: &router::Route,
        version: &Arc<LoadedVersion>,
        handled: Handled,
        handover: Handover,
        after_flush: Option<Arc<listener::AfterFlush>>,
        request_id: u64,
    ) -> hyper::Response<HyperOutgoingBody> {
        let failed = match &handled {
            Handled::Response(response) => response.status().is_server_error(),
            Handled::Failed(GuestFailure::AtCapacity) => false,
            Handled::Failed(_) => true,
        };
        version.served.fetch_add(1, Ordering::Relaxed);
        if failed {
            version.failed.fetch_add(1, Ordering::Relaxed);
        }
        if let (Some(window), Some(back_to)) = (&route.health, &route.gate) {
            if let Some(unhealthy) = window.observe(&route.instance, version, failed, back_to) {
                let _ = self.unhealthy.send(unhealthy);
            }
        }
        let mut response = match handled {
            Handled::Response(mut response) => {
                response.headers_mut().insert(REQUEST_ID_NAME, HeaderValue::from(request_id));
                response
            }
            Handled::Failed(failure) => failure_response(&failure, request_id),
        };
        // Which version answered: one of two during a rollout, never a mix.
        if let Some(value) = &version.version_header {
            response.headers_mut().insert(VERSION_NAME, value.clone());
        }
        response.map(|body| {
            http_body_util::BodyExt::boxed_unsync(TalliedBody { inner: body, handover: Some(handover), after_flush })
        })
    }
}

/// How a guest's run ended, as the metrics count it.
fn guest_outcome(failure: Option<&GuestFailure>) -> crate::metrics::GuestOutcome {
    use crate::metrics::GuestOutcome as O;
    match failure {
        None => O::Ok,
        Some(GuestFailure::OutOfFuel) => O::OutOfFuel,
        Some(GuestFailure::Timeout) => O::Timeout,
        Some(GuestFailure::MemoryLimit) => O::MemoryLimit,
        Some(GuestFailure::Trap(_)) => O::Trap,
        Some(GuestFailure::AtCapacity) => O::AtCapacity,
        Some(GuestFailure::NoResponse) => O::NoResponse,
        Some(GuestFailure::Host(_)) => O::HostError,
        Some(GuestFailure::Abandoned) => O::Abandoned,
    }
}

/// A running guest's place in its tenant's and its instance's share of the node.
type GuestSlots = (OwnedSemaphorePermit, OwnedSemaphorePermit);

/// One request's usage, recorded when both its guest is done and its response
/// body has been handed to the connection (or dropped: the client left).
struct Tally {
    usage: Arc<crate::usage::UsageCounters>,
    /// The billing hour the request arrived in.
    hour: i64,
    /// The guest's fuel and failure, once done; whether the body is over.
    state: std::sync::Mutex<(Option<(u64, bool)>, bool)>,
}

impl Tally {
    fn new(usage: Arc<crate::usage::UsageCounters>) -> Self {
        Self { hour: usage.hour(), usage, state: std::sync::Mutex::new((None, false)) }
    }

    fn guest_done(&self, fuel: u64, failed: bool) {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        state.0 = Some((fuel, failed));
        if state.1 {
            self.usage.record(self.hour, fuel, failed);
        }
    }

    fn body_done(&self) {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if state.1 {
            return;
        }
        state.1 = true;
        if let Some((fuel, failed)) = state.0 {
            self.usage.record(self.hour, fuel, failed);
        }
    }
}

/// Tells a [`Tally`] that the response is over: when finished, or when dropped.
struct Handover(Option<Arc<Tally>>);

impl Handover {
    fn finish(&mut self) {
        if let Some(tally) = self.0.take() {
            tally.body_done();
        }
    }
}

impl Drop for Handover {
    fn drop(&mut self) {
        // Dropped before its end: the client went away, or hyper saw the end
        // from the size hint without polling for it.
        self.finish();
    }
}

/// A response body that tells its [`Tally`] when it is over and has left: at
/// the connection's next flush.
struct TalliedBody {
    inner: HyperOutgoingBody,
    handover: Option<Handover>,
    after_flush: Option<Arc<listener::AfterFlush>>,
}

impl TalliedBody {
    fn over(&mut self) {
        let Some(handover) = self.handover.take() else { return };
        match &self.after_flush {
            Some(after_flush) => after_flush.push(Box::new(move || drop(handover))),
            None => drop(handover),
        }
    }
}

impl Drop for TalliedBody {
    fn drop(&mut self) {
        self.over();
    }
}

impl hyper::body::Body for TalliedBody {
    type Data = bytes::Bytes;
    type Error = wasmtime_wasi_http::Error;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<Self::Data>, Self::Error>>> {
        let polled = std::pin::Pin::new(&mut self.inner).poll_frame(cx);
        if matches!(polled, std::task::Poll::Ready(None) | std::task::Poll::Ready(Some(Err(_)))) {
            self.over();
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.inner.size_hint()
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
                    .insert(http::header::WWW_AUTHENTICATE, HeaderValue::from_static(credentials::WWW_AUTHENTICATE));
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
#[derive(Clone)]
enum Resolved {
    /// No Wharf credential.
    Anonymous,
    /// A Wharf credential that is unknown, expired or revoked.
    Invalid,
    /// A valid credential of someone outside the instance's tenant.
    Outsider,
    /// A member of the instance's tenant, with their grants for this version.
    Member(Arc<GuestCaller>),
}

impl Ingress {
    /// Resolve the request's Wharf credential against the instance's tenant. The
    /// caller's grants are kept only where the running version declares them, so a
    /// permission a version dropped grants nothing while that version runs.
    async fn caller(
        &self,
        tenant: &Arc<str>,
        version: &LoadedVersion,
        headers: &http::HeaderMap,
    ) -> Result<Resolved, Denied> {
        let Some(token) = credentials::wharf_bearer(headers) else { return Ok(Resolved::Anonymous) };
        let key = (crate::identity::secrets::token_digest(token), tenant.clone(), version.serial);
        if let Some(known) = self.credentials.get(&key) {
            return Ok(known);
        }
        // Read under the epoch from before both lookups: a change meanwhile
        // leaves nothing remembered.
        let read_under = self.credentials.begin();
        let user = match self.identity.authenticate_shared(token).await {
            Ok(Some(user)) => user,
            Ok(None) => {
                self.credentials.put(key, read_under, Resolved::Invalid, true, None);
                return Ok(Resolved::Invalid);
            }
            Err(e) => {
                tracing::error!("authentication failed: {e}");
                return Err(Denied::Internal);
            }
        };
        let resolved = match self.access.service_grants(tenant, &user.user_id, &version.service).await {
            Ok(Some(granted)) => Resolved::Member(Arc::new(GuestCaller {
                user_id: user.user_id.clone(),
                email: user.email.clone(),
                permissions: granted.into_iter().filter(|p| version.declares(p)).collect(),
            })),
            Ok(None) => Resolved::Outsider,
            Err(e) => {
                tracing::error!("permission check failed: {e}");
                return Err(Denied::Internal);
            }
        };
        let refused = matches!(resolved, Resolved::Outsider);
        self.credentials.put(key, read_under, resolved.clone(), refused, user.expires_at);
        Ok(resolved)
    }
}

fn failure_response(failure: &GuestFailure, request_id: u64) -> hyper::Response<HyperOutgoingBody> {
    let (status, message) = failure.status_and_message();
    plain(status, message, request_id)
}

/// A short plain-text response made by the host.
/// An instance being set up (its migrations and seeder running) answers this:
/// every other instance keeps serving.
fn maintenance(request_id: u64) -> hyper::Response<HyperOutgoingBody> {
    const PAGE: &str = "<!doctype html><meta charset=utf-8><title>Updating</title>\
        <h1>This site is being updated</h1><p>It will be back in a few seconds.</p>\n";
    let mut response = plain(StatusCode::SERVICE_UNAVAILABLE, PAGE, request_id);
    response.headers_mut().insert(http::header::RETRY_AFTER, HeaderValue::from_static("5"));
    response.headers_mut().insert(http::header::CONTENT_TYPE, HeaderValue::from_static("text/html; charset=utf-8"));
    response
}

fn plain(status: StatusCode, body: impl Into<bytes::Bytes>, request_id: u64) -> hyper::Response<HyperOutgoingBody> {
    let mut response = hyper::Response::new(plain_body(body));
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(http::header::CONTENT_TYPE, HeaderValue::from_static("text/plain; charset=utf-8"));
    headers.insert(REQUEST_ID_NAME, HeaderValue::from(request_id));
    response
}
