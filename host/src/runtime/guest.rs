//! The state one request's guest runs with: a flat struct holding every context
//! the guest may touch, plus the limiter and the hooks that keep it contained.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Instant;

use bytes::Bytes;
use tokio::io::AsyncWrite;
use wasmtime::component::ResourceTable;
use wasmtime_wasi::cli::{IsTerminal, StdoutStream};
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};
use wasmtime_wasi_http::{WasiHttpCtx, WasiHttpCtxView, WasiHttpHooks, WasiHttpView};

/// Who a request runs for; carried into logs and usage.
#[derive(Debug, Clone)]
pub struct RequestIdentity {
    /// Tenant owning the instance.
    pub tenant: Arc<str>,
    /// Instance serving the request.
    pub instance: Arc<str>,
    /// Request id (also sent back as `x-wharf-request-id`): unique, and not a
    /// sequence, so it reveals nothing of the node's traffic.
    pub request_id: u64,
    /// The guest's span: platform calls are its children (disabled when the
    /// node exports no traces).
    pub span: tracing::Span,
    /// The trace the request belongs to, for logs (when traces are exported).
    pub trace_id: Option<crate::telemetry::TraceId>,
}

impl RequestIdentity {
    /// A run for `tenant`'s `instance`, not traced.
    pub fn new(tenant: Arc<str>, instance: Arc<str>, request_id: u64) -> Self {
        Self { tenant, instance, request_id, span: tracing::Span::none(), trace_id: None }
    }

    /// The same run, traced as `span`.
    pub fn traced(mut self, span: tracing::Span) -> Self {
        self.trace_id = crate::telemetry::trace_id(&span);
        self.span = span;
        self
    }

    /// The same run without its span, for what outlives the request (the
    /// output log of a sandbox kept for the next one must not hold the span,
    /// and so the trace, open).
    pub fn for_logs(&self) -> Self {
        Self {
            tenant: self.tenant.clone(),
            instance: self.instance.clone(),
            request_id: self.request_id,
            span: tracing::Span::none(),
            trace_id: self.trace_id,
        }
    }

    /// The trace id as a log field (absent when not traced).
    pub fn trace_field(&self) -> Option<tracing::field::DisplayValue<crate::telemetry::TraceId>> {
        self.trace_id.map(tracing::field::display)
    }
}

/// Store data of one request.
pub struct GuestState {
    pub(crate) table: ResourceTable,
    pub(crate) wasi: WasiCtx,
    pub(crate) http: WasiHttpCtx,
    pub(crate) hooks: DenyOutgoing,
    pub(crate) limiter: MemoryLimiter,
    /// Past this instant the epoch callback interrupts the guest.
    pub(crate) deadline: Instant,
    /// Caller and instance configuration, for `wharf:platform`.
    pub(crate) context: super::GuestContext,
    /// Fuel owed for time spent in host calls, taken at the next epoch tick.
    pub(crate) host_fuel_debt: u64,
    /// Set when nobody waits for the response any more: stop at the next tick.
    pub(crate) abandoned: Arc<AtomicBool>,
    /// Whom the guest's output is logged for, and how much more it may write.
    log: Arc<LogBudget>,
}

impl GuestState {
    pub(crate) fn new(
        who: &RequestIdentity,
        limits: &crate::config::GuestLimits,
        memory: Arc<MemoryBudget>,
        deadline: Instant,
        context: super::GuestContext,
    ) -> Self {
        // WASI with nothing granted: no preopened directories, no environment, no
        // network. stdout and stderr go to the host's log, tagged with the request,
        // within one budget for both.
        let budget = Arc::new(LogBudget {
            who: Mutex::new(who.for_logs()),
            per_request: limits.output_bytes,
            left: AtomicUsize::new(limits.output_bytes),
            dropped: AtomicUsize::new(0),
        });
        let wasi = WasiCtx::builder()
            .stdout(GuestLog { budget: budget.clone(), stream: "stdout" })
            .stderr(GuestLog { budget: budget.clone(), stream: "stderr" })
            .allow_tcp(false)
            .allow_udp(false)
            .allow_ip_name_lookup(false)
            .build();
        Self {
            table: ResourceTable::new(),
            wasi,
            http: WasiHttpCtx::new(),
            hooks: DenyOutgoing,
            limiter: MemoryLimiter::new(limits.max_memory_bytes, memory, &who.tenant),
            deadline,
            context,
            host_fuel_debt: 0,
            abandoned: Arc::new(AtomicBool::new(false)),
            log: budget,
        }
    }

    /// Make a reused sandbox's state this request's: its caller and context,
    /// its deadline, its log identity and budget, no debt, nobody gone.
    pub(crate) fn begin_request(&mut self, who: &RequestIdentity, deadline: Instant, context: super::GuestContext) {
        self.context = context;
        self.deadline = deadline;
        self.host_fuel_debt = 0;
        // The flag the last request's run shared is reset in place when nothing
        // else holds it any more (the usual case), else replaced.
        match Arc::get_mut(&mut self.abandoned) {
            Some(flag) => *flag.get_mut() = false,
            None => self.abandoned = Arc::new(AtomicBool::new(false)),
        }
        self.limiter.hit = false;
        self.log.begin(who);
    }

    /// The request is over: report output it could not log, and let go of its
    /// context (its caller, the instance's database), so a sandbox waiting for
    /// its next request holds neither.
    pub(crate) fn end_request(&mut self) {
        self.log.report_dropped();
        self.context = super::GuestContext::default();
    }
}

impl WasiView for GuestState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView { ctx: &mut self.wasi, table: &mut self.table }
    }
}

impl WasiHttpView for GuestState {
    fn http(&mut self) -> WasiHttpCtxView<'_> {
        WasiHttpCtxView { ctx: &mut self.http, table: &mut self.table, hooks: &mut self.hooks }
    }
}

/// Refuses outgoing HTTP: a guest reaches nothing outside the host unless a later
/// capability grants it.
pub(crate) struct DenyOutgoing;

impl WasiHttpHooks for DenyOutgoing {
    /// wasi:http's default forbidden headers, checked directly: the default
    /// method builds a shared closure (an allocation) for every header a guest
    /// sets or receives.
    fn is_forbidden_header(&mut self, name: &http::HeaderName) -> bool {
        wasmtime_wasi_http::DEFAULT_FORBIDDEN_HEADERS.contains(name)
    }

    fn send_request(
        &mut self,
        _request: http::Request<wasmtime_wasi_http::WasiBody>,
        _options: Option<wasmtime_wasi_http::RequestOptions>,
        _fut: Box<dyn Future<Output = Result<(), wasmtime_wasi_http::Error>> + Send>,
    ) -> Box<
        dyn Future<
                Output = Result<
                    (
                        http::Response<wasmtime_wasi_http::WasiBody>,
                        Box<dyn Future<Output = Result<(), wasmtime_wasi_http::Error>> + Send>,
                    ),
                    wasmtime_wasi_http::Error,
                >,
            > + Send,
    > {
        Box::new(async { Err(wasmtime_wasi_http::Error::HttpRequestDenied) })
    }
}

/// Linear memory granted to every guest of the node together, against a budget,
/// and to each tenant's guests against its share: many guests each under their
/// own cap still cannot exhaust the node, and one tenant's cannot take the memory
/// its neighbours need.
#[derive(Debug)]
pub struct MemoryBudget {
    limit: usize,
    per_tenant: usize,
    granted: AtomicUsize,
    tenants: dashmap::DashMap<Arc<str>, Arc<AtomicUsize>>,
}

impl MemoryBudget {
    /// A budget of `limit` bytes, of which one tenant holds at most `per_tenant`.
    pub fn new(limit: usize, per_tenant: usize) -> Arc<Self> {
        Arc::new(Self {
            limit,
            per_tenant: per_tenant.min(limit),
            granted: AtomicUsize::new(0),
            tenants: dashmap::DashMap::new(),
        })
    }

    /// Bytes granted to running guests now.
    pub fn granted(&self) -> usize {
        self.granted.load(Ordering::Relaxed)
    }

    /// The budget, in bytes.
    pub fn limit(&self) -> usize {
        self.limit
    }

    /// What one tenant may hold, in bytes.
    pub fn per_tenant(&self) -> usize {
        self.per_tenant
    }

    fn tenant(&self, tenant: &Arc<str>) -> Arc<AtomicUsize> {
        match self.tenants.get(tenant) {
            Some(granted) => granted.clone(),
            None => self.tenants.entry(tenant.clone()).or_default().clone(),
        }
    }

    fn take(counter: &AtomicUsize, bytes: usize, limit: usize) -> bool {
        counter
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |granted| {
                granted.checked_add(bytes).filter(|total| *total <= limit)
            })
            .is_ok()
    }
}

/// Caps linear memory growth, per guest, per tenant and against the node's
/// budget, and remembers whether a cap was hit, so a trap that follows a refused
/// `memory.grow` is reported as "memory limit", not a bug.
pub(crate) struct MemoryLimiter {
    max_bytes: usize,
    budget: Arc<MemoryBudget>,
    tenant: Arc<AtomicUsize>,
    /// What this guest holds of the budgets.
    holding: usize,
    pub(crate) hit: bool,
}

impl MemoryLimiter {
    pub(crate) fn new(max_bytes: usize, budget: Arc<MemoryBudget>, tenant: &Arc<str>) -> Self {
        let tenant = budget.tenant(tenant);
        Self { max_bytes, budget, tenant, holding: 0, hit: false }
    }

    fn take(&mut self, bytes: usize) -> bool {
        if !MemoryBudget::take(&self.tenant, bytes, self.budget.per_tenant) {
            return false;
        }
        if !MemoryBudget::take(&self.budget.granted, bytes, self.budget.limit) {
            self.tenant.fetch_sub(bytes, Ordering::Relaxed);
            return false;
        }
        self.holding += bytes;
        true
    }
}

impl MemoryLimiter {
    /// Bytes of linear memory this guest holds of the budgets.
    pub(crate) fn holding(&self) -> usize {
        self.holding
    }
}

impl Drop for MemoryLimiter {
    fn drop(&mut self) {
        self.tenant.fetch_sub(self.holding, Ordering::Relaxed);
        self.budget.granted.fetch_sub(self.holding, Ordering::Relaxed);
    }
}

impl wasmtime::ResourceLimiter for MemoryLimiter {
    fn memory_growing(&mut self, current: usize, desired: usize, _maximum: Option<usize>) -> wasmtime::Result<bool> {
        if desired > self.max_bytes {
            self.hit = true;
            return Ok(false);
        }
        if !self.take(desired.saturating_sub(current)) {
            self.hit = true;
            return Ok(false);
        }
        Ok(true)
    }

    fn table_growing(&mut self, _current: usize, desired: usize, _maximum: Option<usize>) -> wasmtime::Result<bool> {
        // Tables hold function references; a million entries is far beyond any
        // real service and bounds what a guest can make the host allocate.
        if desired > 1_000_000 {
            self.hit = true;
            return Ok(false);
        }
        Ok(true)
    }
}

/// What one request may still write to the log, shared by stdout and stderr
/// (and reset for each request a reused sandbox serves).
struct LogBudget {
    who: Mutex<RequestIdentity>,
    per_request: usize,
    left: AtomicUsize,
    dropped: AtomicUsize,
}

impl LogBudget {
    fn who(&self) -> RequestIdentity {
        self.who.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    fn begin(&self, who: &RequestIdentity) {
        *self.who.lock().unwrap_or_else(|e| e.into_inner()) = who.for_logs();
        self.left.store(self.per_request, Ordering::Relaxed);
        self.dropped.store(0, Ordering::Relaxed);
    }

    fn report_dropped(&self) {
        let dropped = self.dropped.swap(0, Ordering::Relaxed);
        if dropped > 0 {
            let who = self.who();
            tracing::warn!(
                target: "wharf::guest",
                tenant = %who.tenant,
                instance = %who.instance,
                request_id = who.request_id,
                trace_id = who.trace_field(),
                dropped_bytes = dropped,
                "guest output over its budget: {dropped} bytes dropped"
            );
        }
    }

    /// How many of `wanted` bytes may be logged; the rest is counted as dropped.
    fn take(&self, wanted: usize) -> usize {
        let granted = match self
            .left
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |left| Some(left.saturating_sub(wanted)))
        {
            Ok(left) | Err(left) => left.min(wanted),
        };
        if granted < wanted {
            self.dropped.fetch_add(wanted - granted, Ordering::Relaxed);
        }
        granted
    }
}

impl Drop for LogBudget {
    fn drop(&mut self) {
        self.report_dropped();
    }
}

/// A guest's stdout or stderr: each line becomes a log event with the tenant,
/// instance and request id.
#[derive(Clone)]
struct GuestLog {
    budget: Arc<LogBudget>,
    stream: &'static str,
}

impl IsTerminal for GuestLog {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl StdoutStream for GuestLog {
    fn async_stream(&self) -> Box<dyn AsyncWrite + Send + Sync> {
        Box::new(LineLogger { log: self.clone(), pending: Vec::new() })
    }
}

/// Longest line kept from a guest; longer output is cut so a guest cannot make
/// the host buffer without bound.
const MAX_LOG_LINE: usize = 8 << 10;

struct LineLogger {
    log: GuestLog,
    pending: Vec<u8>,
}

impl LineLogger {
    fn emit(&self, line: &[u8]) {
        let text = String::from_utf8_lossy(line);
        let who = self.log.budget.who();
        // The guest's text is a quoted, escaped field (Debug), never the message:
        // no newline, control character or `key=value` of its own can forge a
        // log line or a field.
        tracing::info!(
            target: "wharf::guest",
            tenant = %who.tenant,
            instance = %who.instance,
            request_id = who.request_id,
            trace_id = who.trace_field(),
            stream = self.log.stream,
            text = ?text.trim_end(),
            "guest output"
        );
    }
}

impl AsyncWrite for LineLogger {
    fn poll_write(mut self: Pin<&mut Self>, _cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        // Output past the budget is accepted and dropped: the guest is not told,
        // so it cannot tell a full log from a slow one.
        let granted = self.log.budget.take(buf.len());
        let mut rest = &buf[..granted];
        while let Some(newline) = rest.iter().position(|b| *b == b'\n') {
            let (line, tail) = rest.split_at(newline);
            if self.pending.is_empty() {
                self.emit(line);
            } else {
                let mut whole = std::mem::take(&mut self.pending);
                whole.extend_from_slice(line);
                self.emit(&whole);
            }
            rest = &tail[1..];
        }
        let room = MAX_LOG_LINE.saturating_sub(self.pending.len());
        let keep = rest.len().min(room);
        self.pending.extend_from_slice(&rest[..keep]);
        if self.pending.len() >= MAX_LOG_LINE {
            let whole = std::mem::take(&mut self.pending);
            self.emit(&whole);
        }
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        if !self.pending.is_empty() {
            let whole = std::mem::take(&mut self.pending);
            self.emit(&whole);
        }
        Poll::Ready(Ok(()))
    }
}

impl Drop for LineLogger {
    fn drop(&mut self) {
        if !self.pending.is_empty() {
            let whole = std::mem::take(&mut self.pending);
            self.emit(&whole);
        }
    }
}

/// A plain-text body for responses the host makes itself.
pub fn plain_body(text: impl Into<Bytes>) -> wasmtime_wasi_http::p2::body::HyperOutgoingBody {
    use http_body_util::BodyExt;
    http_body_util::Full::new(text.into()).map_err(|never| match never {}).boxed_unsync()
}
