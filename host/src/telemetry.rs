//! Traces: a span tree for each request (ingress → auth → guest → each platform
//! call with its backend) and each job run, and a span for each usage flush,
//! exported over OTLP/HTTP when `wharf serve --otlp-endpoint` is set.
//!
//! Every span has the target [`TARGET`]. The log never shows them, and a node
//! exporting nothing disables them where they are made: a request then pays a
//! load of a cached interest per span, nothing more.
//!
//! A client's W3C `traceparent` makes the request's span its child (one trace
//! across the client and Wharf), and the guest sees a `traceparent` naming its
//! own span. Whether a trace is exported is the node's decision, made at
//! random at the configured ratio before its first span, never the client's:
//! no flag or trace id in a header can make a node export every request of a
//! flood, and an unkept request makes no span.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use http::{HeaderMap, HeaderName, HeaderValue};
use opentelemetry::propagation::{Extractor, Injector, TextMapPropagator};
use opentelemetry::trace::{TraceContextExt, TracerProvider as _};
use opentelemetry::KeyValue;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use tracing::Span;
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::Layer;

pub use opentelemetry::trace::TraceId;

/// The target of every span of a trace.
pub const TARGET: &str = "wharf::trace";

/// The root span of a trace (disabled unless traces are exported). Takes what
/// `tracing::info_span!` takes after its target; the caller decides first
/// whether the trace is kept ([`sample`]).
macro_rules! trace_span {
    ($($arg:tt)*) => {
        tracing::info_span!(target: $crate::telemetry::TARGET, $($arg)*)
    };
}
pub(crate) use trace_span;

/// A span within the current one: none when the current trace is not kept
/// (or traces are off), so an unsampled request makes no spans at all.
macro_rules! child_span {
    ($($arg:tt)*) => {
        if $crate::telemetry::exporting() && !tracing::Span::current().is_none() {
            tracing::info_span!(target: $crate::telemetry::TARGET, $($arg)*)
        } else {
            tracing::Span::none()
        }
    };
}
pub(crate) use child_span;

/// Whether this process exports traces, and below which random value (of 63
/// bits) a trace is kept.
static EXPORTING: AtomicBool = AtomicBool::new(false);
static KEEP_BELOW: AtomicU64 = AtomicU64::new(0);

/// Whether traces are exported at all.
pub fn exporting() -> bool {
    EXPORTING.load(Ordering::Relaxed)
}

fn keep(low: u64) -> bool {
    exporting() && (low >> 1) < KEEP_BELOW.load(Ordering::Relaxed)
}

fn random_u64() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    std::collections::hash_map::RandomState::new().build_hasher().finish()
}

/// Whether a request's or job's trace is kept: at random, at the configured
/// ratio, decided before any span is made (so an unkept one costs nothing).
/// Never by what the client sent: neither a `traceparent`'s "sampled" flag nor
/// its trace id (a client choosing ids that a ratio-of-ids rule keeps would
/// have every request of a flood exported); the trace id still makes the
/// request's spans part of the client's trace.
pub fn sample() -> bool {
    exporting() && keep(random_u64())
}

/// Where and how a node exports its traces.
#[derive(Clone, Debug)]
pub struct Otlp {
    /// The collector's traces URL (`…/v1/traces`).
    pub endpoint: String,
    /// Protobuf (the OTLP default) or JSON bodies.
    pub json: bool,
    /// Share of traces exported, 0 to 1, decided by trace id.
    pub sample_ratio: f64,
    /// This node's name, as the resource's `service.instance.id`.
    pub node: String,
}

/// The traces URL of a collector given as its base URL
/// (`http://collector:4318`, to which `/v1/traces` is added) or as the full
/// URL of its traces endpoint.
pub fn traces_url(given: &str) -> Result<String, String> {
    let mut url = url::Url::parse(given).map_err(|e| {
        format!("{given:?} is not a URL ({e}); give the collector's OTLP/HTTP address, e.g. http://127.0.0.1:4318")
    })?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(format!(
            "{given:?}: traces are exported over OTLP/HTTP; give the collector's http:// or https:// address, e.g. \
             http://127.0.0.1:4318"
        ));
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err(format!("{given:?} names no host"));
    }
    if url.path() == "/" || url.path().is_empty() {
        url.set_path("/v1/traces");
    }
    Ok(url.to_string())
}

/// Exporting spans: flushes what is still queued when dropped (at shutdown).
pub struct Exporting {
    provider: opentelemetry_sdk::trace::SdkTracerProvider,
}

impl Drop for Exporting {
    fn drop(&mut self) {
        if let Err(e) = self.provider.shutdown() {
            eprintln!("traces not all exported at shutdown: {e}");
        }
    }
}

/// How long spans wait in the exporter's queue before a batch is sent, unless
/// `OTEL_BSP_SCHEDULE_DELAY` says otherwise (the SDK's own default is 5 s).
const BATCH_DELAY: Duration = Duration::from_secs(1);

/// The layer exporting this node's spans to `otlp`, and the guard that flushes
/// it at exit. Only spans of [`TARGET`] reach it.
pub fn exporter<S>(otlp: &Otlp) -> anyhow::Result<(impl Layer<S>, Exporting)>
where
    S: tracing::Subscriber + for<'span> tracing_subscriber::registry::LookupSpan<'span>,
{
    use opentelemetry_otlp::{Protocol, WithExportConfig};
    use opentelemetry_sdk::trace::{BatchConfigBuilder, BatchSpanProcessor, Sampler, SdkTracerProvider};
    let protocol = if otlp.json { Protocol::HttpJson } else { Protocol::HttpBinary };
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_protocol(protocol)
        .with_endpoint(otlp.endpoint.clone())
        .with_timeout(Duration::from_secs(10))
        .build()
        .map_err(|e| anyhow::anyhow!("cannot export traces to {}: {e}", otlp.endpoint))?;
    let mut batch = BatchConfigBuilder::default();
    if std::env::var_os("OTEL_BSP_SCHEDULE_DELAY").is_none() {
        batch = batch.with_scheduled_delay(BATCH_DELAY);
    }
    let processor = BatchSpanProcessor::builder(exporter).with_batch_config(batch.build()).build();
    let resource = opentelemetry_sdk::Resource::builder_empty()
        .with_service_name("wharf")
        .with_attributes([
            KeyValue::new("service.version", env!("CARGO_PKG_VERSION")),
            KeyValue::new("service.instance.id", otlp.node.clone()),
        ])
        .build();
    // Which traces are kept is decided before their first span (see
    // `sample`): the SDK records every span it is given.
    let ratio = otlp.sample_ratio.clamp(0.0, 1.0);
    let keep_below = if ratio >= 1.0 { u64::MAX } else { (ratio * (1u64 << 63) as f64) as u64 };
    KEEP_BELOW.store(keep_below, Ordering::Relaxed);
    EXPORTING.store(true, Ordering::Relaxed);
    let provider = SdkTracerProvider::builder()
        .with_span_processor(processor)
        .with_sampler(Sampler::AlwaysOn)
        .with_resource(resource)
        .build();
    let tracer = provider.tracer("wharf");
    let layer = tracing_opentelemetry::layer()
        .with_tracer(tracer)
        .with_location(false)
        .with_threads(false)
        .with_tracked_inactivity(false)
        .with_filter(tracing_subscriber::filter::Targets::new().with_target(TARGET, tracing::Level::TRACE));
    Ok((layer, Exporting { provider }))
}

struct Headers<'a>(&'a HeaderMap);

impl Extractor for Headers<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(HeaderName::as_str).collect()
    }
}

struct HeadersMut<'a>(&'a mut HeaderMap);

impl Injector for HeadersMut<'_> {
    fn set(&mut self, key: &str, value: String) {
        if let (Ok(name), Ok(value)) = (HeaderName::from_bytes(key.as_bytes()), HeaderValue::from_str(&value)) {
            self.0.insert(name, value);
        }
    }
}

/// Make `span` the child of the W3C `traceparent` (and `tracestate`) in
/// `headers`; a missing or malformed one leaves it a trace of its own.
pub fn adopt_remote_parent(span: &Span, headers: &HeaderMap) {
    if span.is_disabled() || !headers.contains_key("traceparent") {
        return;
    }
    let parent = TraceContextPropagator::new().extract(&Headers(headers));
    if parent.span().span_context().is_valid() {
        let _ = span.set_parent(parent);
    }
}

/// Replace the `traceparent` and `tracestate` in `headers` with `span`'s, so
/// whoever reads them (the guest) continues this trace. Nothing changes when
/// traces are off.
pub fn inject(span: &Span, headers: &mut HeaderMap) {
    if span.is_disabled() {
        return;
    }
    headers.remove("traceparent");
    headers.remove("tracestate");
    TraceContextPropagator::new().inject_context(&span.context(), &mut HeadersMut(headers));
}

/// `span`'s W3C `traceparent`, to be stored with work it starts later (a
/// job): none when its trace is not kept.
pub fn traceparent(span: &Span) -> Option<String> {
    if span.is_disabled() {
        return None;
    }
    let mut headers = HeaderMap::new();
    TraceContextPropagator::new().inject_context(&span.context(), &mut HeadersMut(&mut headers));
    headers.get("traceparent").and_then(|v| v.to_str().ok()).map(str::to_string)
}

/// Make `span` the child of a stored `traceparent` (see [`traceparent`]); a
/// malformed one leaves it a trace of its own.
pub fn continue_trace(span: &Span, traceparent: &str) {
    let Ok(value) = HeaderValue::from_str(traceparent) else { return };
    let mut headers = HeaderMap::new();
    headers.insert("traceparent", value);
    adopt_remote_parent(span, &headers);
}

/// The trace `span` belongs to, when traces are exported.
pub fn trace_id(span: &Span) -> Option<TraceId> {
    if span.is_disabled() {
        return None;
    }
    let id = span.context().span().span_context().trace_id();
    (id != TraceId::INVALID).then_some(id)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn a_collector_is_given_by_its_base_url_or_its_traces_url() {
        assert_eq!(traces_url("http://127.0.0.1:4318").unwrap(), "http://127.0.0.1:4318/v1/traces");
        assert_eq!(traces_url("http://c:4318/").unwrap(), "http://c:4318/v1/traces");
        assert_eq!(traces_url("https://c.example/otlp/v1/traces").unwrap(), "https://c.example/otlp/v1/traces");
        let e = traces_url("127.0.0.1:4318").unwrap_err();
        assert!(e.contains("http://"), "{e}");
        assert!(traces_url("grpc://c:4317").unwrap_err().contains("OTLP/HTTP"));
        assert!(traces_url("http://:4318").is_err());
        assert!(traces_url("not a url").unwrap_err().contains("not a URL"));
    }

    #[test]
    fn traces_are_kept_at_random_at_the_ratio() {
        KEEP_BELOW.store(1 << 62, Ordering::Relaxed); // a ratio of one half
        assert!(!sample(), "nothing is kept while not exporting");
        EXPORTING.store(true, Ordering::Relaxed);
        let kept = (0..2000).filter(|_| sample()).count();
        EXPORTING.store(false, Ordering::Relaxed);
        assert!((800..1200).contains(&kept), "about half: {kept}");
    }

    #[test]
    fn without_an_exporter_nothing_is_traced_or_injected() {
        let span = trace_span!("request");
        assert!(span.is_disabled());
        let mut headers = HeaderMap::new();
        headers
            .insert("traceparent", HeaderValue::from_static("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"));
        adopt_remote_parent(&span, &headers);
        inject(&span, &mut headers);
        assert_eq!(headers["traceparent"], "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01");
        assert_eq!(trace_id(&span), None);
    }
}
