//! What a node is doing, for Prometheus: `GET /metrics` on the admin listener
//! (an operator's credential or the node's scrape token), in the OpenMetrics
//! text format.
//!
//! The request path counts into series it resolved once per loaded version
//! ([`VersionSeries`]: atomics, no label lookup per request); everything else
//! is read from the rooms' own counters when Prometheus scrapes.
//!
//! Label sets are bounded: request series are per service *version*, never per
//! tenant or instance, so 10,000 tenants add no series; a node keeps at most
//! [`MAX_VERSION_SERIES`] versions' series, and versions past that count under
//! `service="_other", version="_other"`. Status is a class (`2xx`…`5xx`).

pub mod history;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

/// Service versions with series of their own on one node; later ones share
/// the `_other` series.
pub const MAX_VERSION_SERIES: usize = 256;

/// Upper bounds of the request latency histogram, in seconds: 100 µs to ~52 s.
const LATENCY_BUCKETS: [f64; 14] =
    [0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0, 5.0, 30.0];

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct VersionLabels {
    service: String,
    version: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StatusLabels {
    service: String,
    version: String,
    status: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabels {
    service: String,
    version: String,
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ClassLabels {
    status: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RoomLabels {
    room: &'static str,
}

/// Where a node's reads and writes of the control plane can fail, as the
/// `room` label of `wharf_control_plane_errors_total`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ControlPlaneUse {
    /// Following the platform's changes (several nodes).
    Follow,
    /// An admin request answered 500.
    Admin,
    /// The dashboard history's read of the job queue.
    History,
}

impl ControlPlaneUse {
    fn label(self) -> &'static str {
        match self {
            ControlPlaneUse::Follow => "follow",
            ControlPlaneUse::Admin => "admin",
            ControlPlaneUse::History => "history",
        }
    }
}

/// Upper bounds of the catch-up histogram, in seconds.
const CATCH_UP_BUCKETS: [f64; 10] = [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0, 5.0];

/// How a guest's run ended (its discriminant indexes [`GuestOutcome::ALL`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GuestOutcome {
    Ok,
    Trap,
    OutOfFuel,
    MemoryLimit,
    Timeout,
    NoResponse,
    Abandoned,
    AtCapacity,
    HostError,
}

impl GuestOutcome {
    const ALL: [GuestOutcome; 9] = [
        GuestOutcome::Ok,
        GuestOutcome::Trap,
        GuestOutcome::OutOfFuel,
        GuestOutcome::MemoryLimit,
        GuestOutcome::Timeout,
        GuestOutcome::NoResponse,
        GuestOutcome::Abandoned,
        GuestOutcome::AtCapacity,
        GuestOutcome::HostError,
    ];

    /// The outcome's name, as in the `outcome` label.
    pub fn label(self) -> &'static str {
        match self {
            GuestOutcome::Ok => "ok",
            GuestOutcome::Trap => "trap",
            GuestOutcome::OutOfFuel => "out_of_fuel",
            GuestOutcome::MemoryLimit => "memory_limit",
            GuestOutcome::Timeout => "timeout",
            GuestOutcome::NoResponse => "no_response",
            GuestOutcome::Abandoned => "abandoned",
            GuestOutcome::AtCapacity => "at_capacity",
            GuestOutcome::HostError => "host_error",
        }
    }
}

const CLASSES: [&str; 5] = ["1xx", "2xx", "3xx", "4xx", "5xx"];

/// The class index of an HTTP status (1xx → 0 … 5xx → 4).
fn class(status: u16) -> usize {
    usize::from(status / 100).clamp(1, 5) - 1
}

/// One service version's request series, resolved once.
#[derive(Debug)]
pub struct VersionSeries {
    status: [Counter; 5],
    latency: Histogram,
    /// The histogram's counts again, per bucket (then +Inf), for the
    /// dashboard's history: the histogram itself cannot be read back.
    buckets: [AtomicU64; LATENCY_BUCKETS.len() + 1],
    outcomes: [Counter; 9],
    fuel: Counter,
}

impl VersionSeries {
    /// A request this version answered with `status` after `elapsed`.
    pub fn request(&self, status: u16, elapsed: Duration) {
        let seconds = elapsed.as_secs_f64();
        self.status[class(status)].inc();
        self.latency.observe(seconds);
        self.buckets[LATENCY_BUCKETS.partition_point(|bound| *bound < seconds)].fetch_add(1, Ordering::Relaxed);
    }

    /// A guest of this version ended with `outcome` after burning `fuel`.
    pub fn guest(&self, outcome: GuestOutcome, fuel: u64) {
        self.outcomes[outcome as usize].inc();
        self.fuel.inc_by(fuel);
    }
}

/// One running guest in a gauge, from [`Running::new`] until dropped.
#[derive(Debug)]
pub struct Running(Gauge);

impl Running {
    pub fn new(gauge: &Gauge) -> Self {
        gauge.inc();
        Self(gauge.clone())
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// The node's request metrics.
#[derive(Debug)]
pub struct Metrics {
    requests: Family<StatusLabels, Counter>,
    latency: Family<VersionLabels, Histogram, fn() -> Histogram>,
    outcomes: Family<OutcomeLabels, Counter>,
    fuel: Family<VersionLabels, Counter>,
    /// Every ingress response by class, including those refused before any
    /// version (unknown host, 401/403, suspended, busy).
    responses: Family<ClassLabels, Counter>,
    classes: [Counter; 5],
    versions: Mutex<HashMap<(String, String), Arc<VersionSeries>>>,
    /// Guests running now (started by the ingress, not yet done).
    pub guests_running: Gauge,
    /// Requests that waited for their tenant's or instance's guest slot, and
    /// those answered 503 after waiting in vain.
    pub slot_waits: Counter,
    pub slot_timeouts: Counter,
    /// The last hour, for the dashboard's charts.
    pub history: history::History,
    control_plane_errors: Family<RoomLabels, Counter>,
    /// Changes of the platform applied here, and the time each took from
    /// finding this node behind to serving the new state.
    pub catch_ups: Counter,
    catch_up_seconds: Histogram,
    /// Catch-ups that rebuilt everything (versions changed, or this node
    /// missed part of the change log) rather than re-reading what changed.
    pub full_reloads: Counter,
}

impl Default for Metrics {
    fn default() -> Self {
        let responses = Family::<ClassLabels, Counter>::default();
        let classes = CLASSES.map(|status| responses.get_or_create(&ClassLabels { status }).clone());
        Self {
            requests: Family::default(),
            latency: Family::new_with_constructor(|| Histogram::new(LATENCY_BUCKETS)),
            outcomes: Family::default(),
            fuel: Family::default(),
            responses,
            classes,
            versions: Mutex::default(),
            guests_running: Gauge::default(),
            slot_waits: Counter::default(),
            slot_timeouts: Counter::default(),
            history: history::History::default(),
            control_plane_errors: Family::default(),
            catch_ups: Counter::default(),
            catch_up_seconds: Histogram::new(CATCH_UP_BUCKETS),
            full_reloads: Counter::default(),
        }
    }
}

impl Metrics {
    /// `service`@`version`'s series (the shared `_other` ones past
    /// [`MAX_VERSION_SERIES`]).
    pub fn version(&self, service: &str, version: &str) -> Arc<VersionSeries> {
        let mut versions = self.versions.lock().unwrap_or_else(|e| e.into_inner());
        let key = if versions.len() >= MAX_VERSION_SERIES && !versions.contains_key(&(service.into(), version.into())) {
            ("_other".to_string(), "_other".to_string())
        } else {
            (service.to_string(), version.to_string())
        };
        if let Some(series) = versions.get(&key) {
            return series.clone();
        }
        let (service, version) = key.clone();
        let status = CLASSES.map(|status| {
            self.requests
                .get_or_create(&StatusLabels { service: service.clone(), version: version.clone(), status })
                .clone()
        });
        let outcomes = GuestOutcome::ALL.map(|o| {
            self.outcomes
                .get_or_create(&OutcomeLabels {
                    service: service.clone(),
                    version: version.clone(),
                    outcome: o.label(),
                })
                .clone()
        });
        let labels = VersionLabels { service, version };
        let series = Arc::new(VersionSeries {
            status,
            latency: self.latency.get_or_create(&labels).clone(),
            buckets: Default::default(),
            outcomes,
            fuel: self.fuel.get_or_create(&labels).clone(),
        });
        versions.insert(key, series.clone());
        series
    }

    /// A failed read or write of the control plane, by what needed it.
    pub fn control_plane_error(&self, room: ControlPlaneUse) {
        self.control_plane_errors.get_or_create(&RoomLabels { room: room.label() }).inc();
    }

    /// This node caught up with a platform change in `took`.
    pub fn caught_up(&self, took: Duration) {
        self.catch_ups.inc();
        self.catch_up_seconds.observe(took.as_secs_f64());
    }

    /// A catch-up that rebuilt everything.
    pub fn reloaded(&self) {
        self.full_reloads.inc();
    }

    /// A response the ingress sent, whatever answered it.
    pub fn response(&self, status: u16) {
        self.classes[class(status)].inc();
    }

    /// The exposition: these series, then what `more` adds (read from the
    /// other rooms at scrape time).
    pub fn render(&self, more: impl FnOnce(&mut Registry)) -> String {
        let mut registry = Registry::with_prefix("wharf");
        registry.register(
            "http_responses",
            "Responses the ingress sent, by status class, including requests refused before reaching a service",
            self.responses.clone(),
        );
        registry.register(
            "http_requests",
            "Requests answered by a service version, by status class",
            self.requests.clone(),
        );
        registry.register(
            "http_request_duration_seconds",
            "Time from a request's arrival to its response head, per service version",
            self.latency.clone(),
        );
        registry.register(
            "guest_outcomes",
            "How guest runs ended (ok, trap, out_of_fuel, memory_limit, timeout, no_response, abandoned, at_capacity, host_error)",
            self.outcomes.clone(),
        );
        registry.register("guest_fuel", "Fuel guests burned, per service version", self.fuel.clone());
        registry.register(
            "control_plane_errors",
            "Failed reads and writes of the control plane, by what needed them (follow, admin, history)",
            self.control_plane_errors.clone(),
        );
        registry.register(
            "catch_up_seconds",
            "Time from finding this node behind the platform to serving the new state, per change applied",
            self.catch_up_seconds.clone(),
        );
        registry.register(
            "full_reloads",
            "Catch-ups that reloaded every version and route (versions changed, or part of the change log was missed) instead of re-reading the instances that changed",
            self.full_reloads.clone(),
        );
        registry.register("guests_running", "Guests of requests running now", self.guests_running.clone());
        registry.register(
            "guest_slot_waits",
            "Requests that waited for their tenant's or instance's guest slot",
            self.slot_waits.clone(),
        );
        registry.register(
            "guest_slot_timeouts",
            "Requests answered 503 after waiting for a guest slot in vain",
            self.slot_timeouts.clone(),
        );
        more(&mut registry);
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &registry);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_past_the_bound_share_one_series() {
        let metrics = Metrics::default();
        for i in 0..MAX_VERSION_SERIES + 10 {
            metrics.version("svc", &format!("1.0.{i}")).request(200, Duration::from_millis(1));
        }
        let first = metrics.version("svc", "1.0.0");
        first.request(503, Duration::from_millis(2));
        first.guest(GuestOutcome::OutOfFuel, 7);
        let text = metrics.render(|_| {});
        assert!(
            text.contains(r#"wharf_http_requests_total{service="_other",version="_other",status="2xx"} 10"#),
            "{text}"
        );
        assert!(text.contains(r#"wharf_http_requests_total{service="svc",version="1.0.0",status="5xx"} 1"#));
        assert!(text.contains(r#"wharf_guest_outcomes_total{service="svc",version="1.0.0",outcome="out_of_fuel"} 1"#));
        assert!(text.contains(r#"wharf_guest_fuel_total{service="svc",version="1.0.0"} 7"#));
        let versions = text.lines().filter(|l| l.starts_with("wharf_guest_fuel_total{")).count();
        assert_eq!(versions, MAX_VERSION_SERIES + 1, "the bound and the shared series");
        assert!(text.ends_with("# EOF\n"));
    }
}
