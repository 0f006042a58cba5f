//! `GET /metrics`: the node's Prometheus series (see `crate::metrics`), for
//! the scrape token or an operator: what the ingress counted, and what the
//! other rooms count, read at scrape time.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use axum::extract::State;

use super::{AdminState, ApiResult, Authed};
use crate::access::Platform;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;

/// This node's metrics for Prometheus, to the scrape token (`--metrics-token`)
/// or an operator's credential: what the ingress counted, and what the other
/// rooms count, read now.
#[utoipa::path(
    get,
    path = "/metrics",
    tag = "node",
    operation_id = "metrics",
    summary = "Prometheus metrics in the OpenMetrics text format (the scrape token or an operator)",
    responses(
        (status = 200, description = "The metrics", body = String, content_type = "application/openmetrics-text; version=1.0.0; charset=utf-8"),
        (status = "default", description = "An error: the message says what is wrong and how to fix it", body = super::openapi::ErrorBody),
    ),
)]
pub(super) async fn metrics(
    State(node): State<Arc<AdminState>>,
    mut parts: http::request::Parts,
) -> ApiResult<axum::response::Response> {
    use axum::extract::FromRequestParts;
    use prometheus_client::metrics::{counter::ConstCounter, gauge::ConstGauge};
    let scraper = match (crate::identity::credentials::bearer(&parts.headers), &node.config.metrics_token) {
        (Some(sent), Some(token)) => {
            use crate::identity::secrets::{hash_token, same};
            same(&hash_token(sent), &hash_token(token))
        }
        _ => false,
    };
    if !scraper {
        let Authed(caller) = Authed::from_request_parts(&mut parts, &node).await?;
        node.access.require_operator(&caller, Platform::NodeRead)?;
    }
    let stats = node.registry.stats();
    let memory = node.runtime.memory();
    let logins = &node.identity.counters;
    // The control plane's view (its queue, its generation), within a second: when
    // it does not answer, the node's own series are served without it, and
    // `wharf_control_plane_up` says so.
    let platform = tokio::time::timeout(std::time::Duration::from_secs(1), async {
        let queues = node.queue.stats(None).await.map_err(|e| e.to_string())?;
        let generation = crate::store::generation(&node.db).await.map_err(|e| e.to_string())?;
        Ok::<_, String>((queues, generation))
    })
    .await
    .unwrap_or_else(|_| Err("no answer within a second".into()))
    .inspect_err(|e| tracing::warn!("metrics without the control plane's series: {e}"))
    .ok();
    let text = node.metrics.render(|registry| {
        let gauge = |v: usize| ConstGauge::new(i64::try_from(v).unwrap_or(i64::MAX));
        registry.register(
            "build",
            "This node's Wharf version",
            prometheus_client::metrics::info::Info::new(vec![("version", env!("CARGO_PKG_VERSION"))]),
        );
        let seen = node.generation.get();
        registry.register("generation", "The platform generation this node has caught up with", ConstGauge::new(seen));
        registry.register(
            "control_plane_up",
            "Whether the control plane answered this scrape's reads within a second",
            ConstGauge::new(i64::from(platform.is_some())),
        );
        if let Some((_, generation)) = &platform {
            registry.register(
                "platform_generation",
                "The control plane's generation now",
                ConstGauge::new(*generation),
            );
            registry.register(
                "generations_behind",
                "Changes this node has not applied yet (0 when caught up)",
                ConstGauge::new((generation - seen).max(0)),
            );
        }
        registry.register("routes", "Hostnames this node routes", gauge(node.router.len()));
        registry.register(
            "versions_compiled",
            "Service versions this node compiled",
            ConstCounter::new(stats.compiled.load(Ordering::Relaxed)),
        );
        registry.register(
            "versions_loaded_from_cache",
            "Service versions this node loaded from its compile cache",
            ConstCounter::new(stats.loaded_from_cache.load(Ordering::Relaxed)),
        );
        registry.register(
            "guest_memory_granted_bytes",
            "Linear memory granted to running guests",
            gauge(memory.granted()),
        );
        registry.register(
            "guest_memory_limit_bytes",
            "Linear memory all guests may hold together",
            gauge(memory.limit()),
        );
        let outcomes = by_outcome(&[
            ("succeeded", &logins.succeeded),
            ("failed", &logins.failed),
            ("rate_limited", &logins.rate_limited),
            ("busy", &logins.busy),
            ("invalid", &logins.invalid),
        ]);
        registry.register("logins", "Login attempts by outcome", outcomes);

        let starts = &node.runtime.starts;
        registry.register(
            "guest_instantiations",
            "Fresh guest instances started",
            ConstCounter::new(starts.fresh.load(Ordering::Relaxed)),
        );
        registry.register(
            "guest_instantiation_seconds",
            "Time spent instantiating fresh guests, in all (divide by guest_instantiations_total)",
            ConstCounter::new(starts.fresh_nanos.load(Ordering::Relaxed) as f64 / 1e9),
        );
        registry.register(
            "guest_sandboxes_reused",
            "Requests served by a reused sandbox",
            ConstCounter::new(starts.reused.load(Ordering::Relaxed)),
        );
        let (heavy, rescued) = node.runtime.heavy_guests();
        registry.register(
            "guests_heavy",
            "Guest runs moved to the heavy-guest threads (CPU-heavy, or their instance was lately)",
            ConstCounter::new(heavy),
        );
        registry.register(
            "guests_heavy_rescued",
            "Heavy guest runs starved on the idle-priority threads and moved on to the lowered ones",
            ConstCounter::new(rescued),
        );
        registry.register(
            "instances_flooding",
            "Times an instance was sent to the heavy-guest threads because its tenant took most of a saturated node's guest time beside others",
            ConstCounter::new(node.runtime.flooding_marks()),
        );
        let (statements, raised) = node.configurator.heavy_statements();
        registry.register(
            "statements_heavy",
            "SQLite statements that ran past 5 ms of CPU, their database thread lowered (idle priority first)",
            ConstCounter::new(statements),
        );
        registry.register(
            "statements_heavy_rescued",
            "Heavy SQLite statements starved at idle priority and raised to the lowered threads' bounded share",
            ConstCounter::new(raised),
        );
        let (idle, idle_bytes) = node.runtime.idle_sandboxes();
        registry.register("guest_sandboxes_idle", "Sandboxes waiting for their instance's next request", gauge(idle));
        registry.register("guest_sandboxes_idle_bytes", "Linear memory idle sandboxes hold", gauge(idle_bytes));

        registry.register(
            "usage_flushes",
            "Usage-journal flushes into the control plane that applied",
            ConstCounter::new(node.usage.flushes.load(Ordering::Relaxed)),
        );
        registry.register(
            "usage_flush_failures",
            "Usage-journal flushes that failed (the journal stays for the next)",
            ConstCounter::new(node.usage.failed_flushes.load(Ordering::Relaxed)),
        );

        let ended = &node.queue.outcomes;
        let finished = by_outcome(&[
            ("succeeded", &ended.succeeded),
            ("failed", &ended.failed),
            ("deferred", &ended.deferred),
            ("dead", &ended.dead),
            ("recorded", &ended.recorded),
        ]);
        registry.register("job_attempts", "Job attempts this node finished, by outcome", finished);

        let calls = node.configurator.database_calls();
        let (counted, failed) = (
            Family::<Vec<(&'static str, &'static str)>, Counter>::default(),
            Family::<Vec<(&'static str, &'static str)>, Counter>::default(),
        );
        let seconds =
            Family::<Vec<(&'static str, &'static str)>, Counter<f64, std::sync::atomic::AtomicU64>>::default();
        for backend in crate::instancedb::Backend::ALL {
            let (store, on) = backend.labels();
            let (count, errors, nanos) = calls.of(backend);
            let labels = vec![("store", store), ("backend", on)];
            counted.get_or_create(&labels).inc_by(count);
            failed.get_or_create(&labels).inc_by(errors);
            seconds.get_or_create(&labels).inc_by(nanos as f64 / 1e9);
        }
        registry.register("database_calls", "Guests' SQL and key-value calls by store and backend", counted);
        registry.register("database_call_errors", "Guests' database calls that returned an error", failed);
        registry.register(
            "database_call_seconds",
            "Time guests' database calls took in all, waiting for a thread or connection included",
            seconds,
        );
        // Per service, at most MAX_VERSION_SERIES services.
        let depth = Family::<Vec<(&'static str, String)>, prometheus_client::metrics::gauge::Gauge>::default();
        let lag = Family::<
            Vec<(&'static str, String)>,
            prometheus_client::metrics::gauge::Gauge<f64, std::sync::atomic::AtomicU64>,
        >::default();
        let queues = platform.as_ref().map(|(queues, _)| queues.as_slice()).unwrap_or_default();
        for queue in queues.iter().take(crate::metrics::MAX_VERSION_SERIES) {
            for (state, count) in [("queued", queue.queued), ("running", queue.running), ("dead", queue.dead)] {
                depth.get_or_create(&vec![("service", queue.service.clone()), ("state", state.to_string())]).set(count);
            }
            lag.get_or_create(&vec![("service", queue.service.clone())]).set(queue.oldest_ready_ms as f64 / 1e3);
        }
        registry.register("jobs", "Jobs in the platform's queue by service and state (every node's)", depth);
        registry.register(
            "jobs_oldest_ready_seconds",
            "How long the oldest ready job of each service has waited past its run time",
            lag,
        );
    });
    let kind = "application/openmetrics-text; version=1.0.0; charset=utf-8";
    Ok(axum::response::IntoResponse::into_response(([(http::header::CONTENT_TYPE, kind)], text)))
}

/// Counters labelled `outcome`.
type ByOutcome = Family<Vec<(&'static str, &'static str)>, Counter>;

/// A room's counters as one family labelled `outcome`.
fn by_outcome(counts: &[(&'static str, &std::sync::atomic::AtomicU64)]) -> ByOutcome {
    let family = ByOutcome::default();
    for (outcome, count) in counts {
        family.get_or_create(&vec![("outcome", *outcome)]).inc_by(count.load(Ordering::Relaxed));
    }
    family
}
