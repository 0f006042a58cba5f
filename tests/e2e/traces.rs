//! Traces over OTLP: the real `wharf serve` exports to a collector started
//! here (an OTLP/HTTP receiver decoding what arrives with the protocol's own
//! message types), and the spans must arrive with the right parents and
//! attributes.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::any_value::Value as AnyValue;
use opentelemetry_proto::tonic::trace::v1::status::StatusCode as OtelStatus;
use reqwest::StatusCode;

use crate::harness::{redis_url, Served};

/// One span as the collector received it.
#[derive(Clone, Debug)]
struct Received {
    trace: String,
    id: String,
    parent: String,
    name: String,
    error: bool,
    attributes: HashMap<String, String>,
    resource: HashMap<String, String>,
}

impl Received {
    fn attr(&self, key: &str) -> &str {
        self.attributes.get(key).map(String::as_str).unwrap_or_else(|| panic!("span {self:#?} has no {key}"))
    }
}

/// An OTLP/HTTP collector on an ephemeral port, keeping every span sent to
/// `/v1/traces` (protobuf or JSON bodies) and the content types they came with.
#[derive(Clone, Default)]
struct Collector {
    spans: Arc<Mutex<Vec<Received>>>,
    content_types: Arc<Mutex<Vec<String>>>,
}

fn text(value: &Option<opentelemetry_proto::tonic::common::v1::AnyValue>) -> String {
    match value.as_ref().and_then(|v| v.value.as_ref()) {
        Some(AnyValue::StringValue(s)) => s.clone(),
        Some(AnyValue::IntValue(n)) => n.to_string(),
        Some(AnyValue::BoolValue(b)) => b.to_string(),
        Some(AnyValue::DoubleValue(d)) => d.to_string(),
        other => format!("{other:?}"),
    }
}

impl Collector {
    async fn start() -> (Self, String) {
        use axum::body::Bytes;
        use axum::http::HeaderMap;
        let collector = Collector::default();
        let state = collector.clone();
        let app = axum::Router::new().route(
            "/v1/traces",
            axum::routing::post(move |headers: HeaderMap, body: Bytes| {
                let state = state.clone();
                async move {
                    let content_type =
                        headers.get("content-type").and_then(|v| v.to_str().ok()).unwrap_or("").to_string();
                    let request: ExportTraceServiceRequest = if content_type.contains("json") {
                        serde_json::from_slice(&body).expect("an OTLP JSON body")
                    } else {
                        prost::Message::decode(body).expect("an OTLP protobuf body")
                    };
                    state.content_types.lock().unwrap().push(content_type);
                    state.keep(request);
                    ([("content-type", "application/x-protobuf")], Vec::<u8>::new())
                }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await });
        (collector, format!("http://{address}"))
    }

    fn keep(&self, request: ExportTraceServiceRequest) {
        let mut spans = self.spans.lock().unwrap();
        for resource_spans in request.resource_spans {
            let resource: HashMap<String, String> = resource_spans
                .resource
                .map(|r| r.attributes.into_iter().map(|kv| (kv.key, text(&kv.value))).collect())
                .unwrap_or_default();
            for scope in resource_spans.scope_spans {
                for span in scope.spans {
                    spans.push(Received {
                        trace: hex::encode(&span.trace_id),
                        id: hex::encode(&span.span_id),
                        parent: hex::encode(&span.parent_span_id),
                        name: span.name,
                        error: span.status.is_some_and(|s| s.code == OtelStatus::Error as i32),
                        attributes: span.attributes.into_iter().map(|kv| (kv.key, text(&kv.value))).collect(),
                        resource: resource.clone(),
                    });
                }
            }
        }
    }

    /// The spans received so far.
    fn spans(&self) -> Vec<Received> {
        self.spans.lock().unwrap().clone()
    }

    /// Wait (up to 15 s) until `done` holds for the spans received.
    async fn until(&self, what: &str, done: impl Fn(&[Received]) -> bool) -> Vec<Received> {
        let started = Instant::now();
        loop {
            let spans = self.spans();
            if done(&spans) {
                return spans;
            }
            assert!(started.elapsed() < Duration::from_secs(15), "{what}: not received; got {spans:#?}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

fn one<'a>(spans: &'a [Received], what: &str, pick: impl Fn(&Received) -> bool) -> &'a Received {
    let found: Vec<&Received> = spans.iter().filter(|s| pick(s)).collect();
    assert_eq!(found.len(), 1, "{what}: expected one span, got {found:#?}");
    found[0]
}

const TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const CLIENT_SPAN: &str = "00f067aa0ba902b7";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_and_jobs_arrive_as_span_trees_continuing_the_clients_trace() {
    let (collector, endpoint) = Collector::start().await;
    let served = Served::start(&["--otlp-endpoint", &endpoint, "--log-format", "json"]).await;
    served.tenant_with("misbehave", "misbehave", "acme", "acme.test").await;
    let http = crate::harness::client();
    let send = |method: reqwest::Method, path: &str, traceparent: Option<&str>| {
        let mut request = http.request(method, format!("http://{}{path}", served.ingress)).header("host", "acme.test");
        if let Some(value) = traceparent {
            request = request.header("traceparent", value.to_string());
        }
        request
    };
    let parent = format!("00-{TRACE}-{CLIENT_SPAN}-01");

    // A key-value write in the client's trace.
    let put = send(reqwest::Method::PUT, "/kv/colour", Some(&parent)).body("teal").send().await.unwrap();
    assert_eq!(put.status(), StatusCode::NO_CONTENT);
    // The guest sees its own span as the parent of whatever it does next.
    let seen = send(reqwest::Method::GET, "/traceparent", Some(&parent)).send().await.unwrap();
    assert_eq!(seen.status(), StatusCode::OK);
    let seen = seen.text().await.unwrap();
    // A trap, in a trace of its own (no traceparent), and a malformed
    // traceparent, which starts a trace of its own too.
    let trapped = send(reqwest::Method::GET, "/trap", None).send().await.unwrap();
    assert_eq!(trapped.status(), StatusCode::INTERNAL_SERVER_ERROR);
    let trap_request_id = trapped.headers()["x-wharf-request-id"].to_str().unwrap().to_string();
    let garbled = send(reqwest::Method::GET, "/ok", Some("00-zz-not-a-trace")).send().await.unwrap();
    assert_eq!(garbled.status(), StatusCode::OK);
    // A refusal before any guest: a host nobody serves.
    let unknown = http.get(format!("http://{}/", served.ingress)).header("host", "nobody.test").send().await.unwrap();
    assert_eq!(unknown.status(), StatusCode::NOT_FOUND);

    let spans = collector
        .until("the four requests' guests", |spans| spans.iter().filter(|s| s.name == "guest").count() >= 4)
        .await;

    // The write: request → auth, guest → platform call, all in the client's trace.
    let requests: Vec<&Received> = spans
        .iter()
        .filter(|s| s.name == "PUT" && s.attributes.get("url.path").is_some_and(|p| p == "/kv/colour"))
        .collect();
    assert_eq!(requests.len(), 1, "{spans:#?}");
    let request = requests[0];
    assert_eq!(request.trace, TRACE, "the request continues the client's trace");
    assert_eq!(request.parent, CLIENT_SPAN, "the client's span is the request's parent");
    assert_eq!(request.attr("wharf.tenant"), "acme");
    assert!(request.attr("wharf.instance").starts_with("inst-"), "{request:#?}");
    assert_eq!(request.attr("wharf.service"), "misbehave");
    assert_eq!(request.attr("wharf.version"), "1.0.0");
    assert_eq!(request.attr("http.response.status_code"), "204");
    assert_eq!(request.attr("http.request.method"), "PUT");
    assert_eq!(request.attr("server.address"), "acme.test");
    assert!(!request.error);
    assert_eq!(request.resource["service.name"], "wharf");
    let auth = one(&spans, "the write's auth", |s| s.name == "auth" && s.parent == request.id);
    assert_eq!(auth.trace, TRACE);
    assert_eq!(auth.attr("wharf.caller"), "anonymous");
    let guest = one(&spans, "the write's guest", |s| s.name == "guest" && s.parent == request.id);
    assert_eq!(guest.attr("wharf.outcome"), "ok");
    assert!(guest.attr("wharf.fuel").parse::<u64>().unwrap() > 0, "{guest:#?}");
    let call = one(&spans, "the write's kv.set", |s| s.name == "kv.set" && s.parent == guest.id);
    assert_eq!(call.trace, TRACE);
    let kv_backend = if redis_url().is_some() { "redis" } else { "sqlite" };
    assert_eq!(call.attr("db.system.name"), kv_backend);
    assert_eq!(call.attr("wharf.store"), "kv");
    // The instantiation is the guest's child too (a fresh sandbox).
    one(&spans, "the write's instantiation", |s| s.name == "instantiate" && s.parent == guest.id);

    // The guest was handed a traceparent naming its own span in the client's trace.
    let traced = one(&spans, "the traceparent request", |s| {
        s.name == "GET" && s.attributes.get("url.path").is_some_and(|p| p == "/traceparent")
    });
    assert_eq!(traced.trace, TRACE);
    let its_guest = one(&spans, "its guest", |s| s.name == "guest" && s.parent == traced.id);
    assert_eq!(seen, format!("00-{TRACE}-{}-01", its_guest.id), "what the guest saw");

    // The trap: a trace of its own, its guest span an error with its outcome.
    let trap = one(&spans, "the trap", |s| s.attributes.get("url.path").is_some_and(|p| p == "/trap"));
    assert_ne!(trap.trace, TRACE);
    assert!(trap.parent.is_empty() || trap.parent == "0000000000000000", "a root span: {trap:#?}");
    assert_eq!(trap.attr("http.response.status_code"), "500");
    assert!(trap.error, "a 5xx is an error span");
    let trap_guest = one(&spans, "the trap's guest", |s| s.name == "guest" && s.parent == trap.id);
    assert_eq!(trap_guest.attr("wharf.outcome"), "trap");
    assert!(trap_guest.error);
    assert_eq!(trap.attr("wharf.request_id"), trap_request_id);

    // A malformed traceparent is ignored: a fresh trace, the request served.
    let garbled = one(&spans, "the garbled request", |s| s.attributes.get("url.path").is_some_and(|p| p == "/ok"));
    assert_ne!(garbled.trace, TRACE);
    assert_eq!(garbled.attr("http.response.status_code"), "200");

    // Refused before a service: the request span alone, with its status.
    let refused = collector
        .until("the refused request", |spans| {
            spans.iter().any(|s| s.attributes.get("http.response.status_code").is_some_and(|c| c == "404"))
        })
        .await;
    let refused = one(&refused, "the refused request", |s| {
        s.attributes.get("http.response.status_code").is_some_and(|c| c == "404")
    });
    assert!(!refused.attributes.contains_key("wharf.tenant"), "{refused:#?}");

    // A job: its run continues the trace of the request that queued it (the
    // job's span a child of the enqueue call), and is the parent of its guest
    // and the guest's SQL.
    served
        .tenant_with_manifest(
            &crate::jobs::lab_manifest("lab", "1.0.0", "[1]", ""),
            "jobs-lab",
            "lab",
            "lab-co",
            "lab.test",
        )
        .await;
    let lab = |method: reqwest::Method, path: &str| {
        http.request(method, format!("http://{}{path}", served.ingress)).header("host", "lab.test").send()
    };
    let started = Instant::now();
    while lab(reqwest::Method::GET, "/").await.unwrap().status() != StatusCode::OK {
        assert!(started.elapsed() < Duration::from_secs(20), "the lab instance never served");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let queued = lab(reqwest::Method::POST, "/enqueue?kind=record&payload=traced").await.unwrap();
    assert_eq!(queued.status(), StatusCode::CREATED);
    let job_id = queued.json::<serde_json::Value>().await.unwrap()["ids"][0].as_str().unwrap().to_string();
    let spans = collector
        .until("the job's span", |spans| {
            spans.iter().any(|s| s.name == "job" && s.attributes.get("wharf.job") == Some(&job_id))
        })
        .await;
    let job = one(&spans, "the job", |s| s.name == "job" && s.attributes.get("wharf.job") == Some(&job_id));
    assert_eq!(job.attr("wharf.kind"), "record");
    assert_eq!(job.attr("wharf.tenant"), "lab-co");
    assert_eq!(job.attr("wharf.service"), "lab");
    assert_eq!(job.attr("wharf.outcome"), "succeeded");
    assert_eq!(job.attr("wharf.version"), "1.0.0");
    let job_guest = one(&spans, "the job's guest", |s| s.name == "guest" && s.parent == job.id);
    assert_eq!(job_guest.trace, job.trace);
    let sql = spans.iter().filter(|s| s.parent == job_guest.id && s.name.starts_with("sql.")).count();
    assert!(sql >= 2, "the job's SQL calls are its guest's children: {spans:#?}");
    // Enqueueing was a platform call of the request that queued it, and the
    // job's run is that call's child, in the request's trace.
    let enqueue = one(&spans, "the enqueue call", |s| s.name == "jobs.enqueue" && s.id == job.parent);
    assert_eq!(enqueue.trace, job.trace, "the job continues the request's trace");
    let request = one(&spans, "the request that queued it", |s| {
        s.trace == job.trace && s.attributes.get("url.path").is_some_and(|p| p == "/enqueue")
    });
    assert!(
        spans.iter().any(|s| s.id == enqueue.parent && s.parent == request.id),
        "enqueue under the request's guest"
    );
    // The usage flush that billed them is a trace of its own.
    collector.until("a usage flush", |spans| spans.iter().any(|s| s.name == "usage.flush")).await;

    // Every span came as protobuf, the OTLP default.
    assert!(collector.content_types.lock().unwrap().iter().all(|c| c == "application/x-protobuf"));

    // The JSON log names the trace of the failed request.
    let logs = served.stop();
    let failed = logs
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .find(|l| l["message"].as_str().is_some_and(|m| m.starts_with("guest failed")))
        .unwrap_or_else(|| panic!("the trap is logged: {logs}"));
    assert_eq!(failed["trace_id"], trap.trace.as_str(), "{failed}");
    let output = logs
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .find(|l| l["text"].as_str().is_some_and(|t| t.contains("tracing along")))
        .unwrap_or_else(|| panic!("the guest's output is logged: {logs}"));
    assert_eq!(output["trace_id"], TRACE, "{output}");
}

/// A trace id ending in `low` (the half a keep-by-trace-id rule reads).
fn trace_id(n: u32, low: u64) -> String {
    format!("{:016x}{:016x}", 0xabcd_0000_0000_0000u64 + u64::from(n), low)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_node_decides_which_traces_are_exported_not_the_client() {
    let (collector, endpoint) = Collector::start().await;
    let served = Served::start(&[
        "--otlp-endpoint",
        &format!("{endpoint}/v1/traces"),
        "--otlp-protocol",
        "http-json",
        "--trace-sample-ratio",
        "0.5",
    ])
    .await;
    served.tenant_with("misbehave", "misbehave", "acme", "acme.test").await;
    let http = crate::harness::client();
    // A client asking for every request to be exported: each flagged
    // "sampled", each trace id's low half tiny (what a keep-by-trace-id rule
    // at 0.5 would always keep).
    const SENT: u32 = 60;
    let ids: Vec<String> = (0..SENT).map(|n| trace_id(n, 1)).collect();
    for id in &ids {
        let response = http
            .get(format!("http://{}/ok", served.ingress))
            .header("host", "acme.test")
            .header("traceparent", format!("00-{id}-{CLIENT_SPAN}-01"))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::OK);
    }
    // Stopping flushes what is queued.
    served.stop();
    let spans = collector.spans();
    let kept: Vec<&String> = ids.iter().filter(|id| spans.iter().any(|s| &s.trace == *id && s.name == "GET")).collect();
    // About half, at random (60 draws at 0.5: outside 15..=45 once in ~10,000 runs).
    assert!((15..=45).contains(&kept.len()), "{} of {SENT} exported: the client chose", kept.len());
    // An unkept request makes no span at all: no orphan guest or auth span
    // starting a trace of its own, nothing outside the kept traces.
    for name in ["guest", "auth", "instantiate"] {
        assert_eq!(spans.iter().filter(|s| s.name == name).count(), kept.len(), "{name} spans: {spans:#?}");
    }
    let kept_or_flush = |s: &Received| kept.contains(&&s.trace) || s.name == "usage.flush";
    assert!(spans.iter().all(kept_or_flush), "spans outside the kept traces: {spans:#?}");
    let types = collector.content_types.lock().unwrap().clone();
    assert!(!types.is_empty() && types.iter().all(|c| c.contains("application/json")), "{types:?}");
}

#[test]
fn a_bad_otlp_endpoint_is_refused_with_the_form_it_takes() {
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_wharf"))
        .args(["serve", "--otlp-endpoint", "collector:4318"])
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("http://127.0.0.1:4318"), "{stderr}");
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_wharf"))
        .args(["serve", "--otlp-endpoint", "http://127.0.0.1:4318", "--trace-sample-ratio", "2"])
        .output()
        .unwrap();
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("between 0 and 1"));
}
