//! The last hour of this node's traffic in memory, for the dashboard's charts:
//! every interval (10 s by default) a point with each service version's
//! requests, server errors and latency percentiles over that interval, and the
//! platform's job queue. Bounded: [`POINTS`] points, each naming only the
//! versions that had requests in it (at most [`super::MAX_VERSION_SERIES`]).

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::atomic::Ordering;
use std::sync::Mutex;

use serde::Serialize;

use super::{Metrics, LATENCY_BUCKETS};

/// Points kept: an hour at the default interval.
pub const POINTS: usize = 360;

/// One version's counters when last sampled.
#[derive(Clone, Default)]
struct Totals {
    requests: u64,
    errors: u64,
    buckets: Vec<u64>,
}

/// One version over one interval.
#[derive(Clone, Debug)]
struct VersionPoint {
    requests: u64,
    errors: u64,
    /// Latency percentiles in milliseconds (p50, p95, p99).
    percentiles: [f64; 3],
}

#[derive(Debug)]
struct Point {
    at: f64,
    versions: HashMap<(String, String), VersionPoint>,
    queue: Option<(i64, i64)>,
}

/// The points, and the counters they are differences of.
#[derive(Default)]
pub struct History {
    inner: Mutex<Inner>,
}

impl std::fmt::Debug for History {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let points = self.inner.lock().map(|i| i.points.len()).unwrap_or(0);
        f.debug_struct("History").field("points", &points).finish()
    }
}

#[derive(Default)]
struct Inner {
    last: HashMap<(String, String), Totals>,
    points: VecDeque<Point>,
}

/// A version's track, aligned with [`Charted::times`] (null where it had no
/// requests).
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Track {
    pub service: String,
    pub version: String,
    pub requests: Vec<Option<u64>>,
    pub errors: Vec<Option<u64>>,
    pub p50_ms: Vec<Option<f64>>,
    pub p95_ms: Vec<Option<f64>>,
    pub p99_ms: Vec<Option<f64>>,
}

/// The history in columns, as a chart wants it.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Charted {
    /// Each point's end, Unix seconds (to the millisecond).
    pub times: Vec<f64>,
    pub versions: Vec<Track>,
    /// Jobs queued (ready or waiting to retry) and running on the platform.
    pub queued: Vec<Option<i64>>,
    pub running: Vec<Option<i64>>,
}

/// The latency below which the share `q` of `counts` (per bucket of
/// [`LATENCY_BUCKETS`], then +Inf) fell, in milliseconds, interpolated within
/// its bucket.
fn percentile(counts: &[u64], q: f64) -> f64 {
    let total: u64 = counts.iter().sum();
    let rank = q * total as f64;
    let mut below = 0u64;
    for (i, count) in counts.iter().enumerate() {
        if *count > 0 && (below + count) as f64 >= rank {
            let lower = if i == 0 { 0.0 } else { LATENCY_BUCKETS[i - 1] };
            let upper = LATENCY_BUCKETS.get(i).copied().unwrap_or(lower);
            let within = ((rank - below as f64) / *count as f64).clamp(0.0, 1.0);
            return (lower + (upper - lower) * within) * 1000.0;
        }
        below += count;
    }
    0.0
}

impl History {
    /// Add a point ending `at` (Unix seconds) from `metrics`' counters, with
    /// the job queue's `(queued, running)` if it was read.
    pub fn sample(&self, metrics: &Metrics, at: f64, queue: Option<(i64, i64)>) {
        let now: Vec<((String, String), Totals)> = {
            let versions = metrics.versions.lock().unwrap_or_else(|e| e.into_inner());
            versions
                .iter()
                .map(|(key, series)| {
                    let totals = Totals {
                        requests: series.status.iter().map(|c| c.get()).sum(),
                        errors: series.status[4].get(),
                        buckets: series.buckets.iter().map(|b| b.load(Ordering::Relaxed)).collect(),
                    };
                    (key.clone(), totals)
                })
                .collect()
        };
        let mut inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        let mut point = Point { at, versions: HashMap::new(), queue };
        for (key, totals) in now {
            let before = inner.last.get(&key).cloned().unwrap_or_default();
            let requests = totals.requests.saturating_sub(before.requests);
            if requests > 0 {
                let counts: Vec<u64> = totals
                    .buckets
                    .iter()
                    .enumerate()
                    .map(|(i, n)| n.saturating_sub(before.buckets.get(i).copied().unwrap_or(0)))
                    .collect();
                let percentiles = [0.5, 0.95, 0.99].map(|q| percentile(&counts, q));
                let errors = totals.errors.saturating_sub(before.errors);
                point.versions.insert(key.clone(), VersionPoint { requests, errors, percentiles });
            }
            inner.last.insert(key, totals);
        }
        inner.points.push_back(point);
        while inner.points.len() > POINTS {
            inner.points.pop_front();
        }
    }

    /// The points in columns.
    pub fn charted(&self) -> Charted {
        let inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        let times: Vec<f64> = inner.points.iter().map(|p| p.at).collect();
        let keys: BTreeMap<(String, String), ()> =
            inner.points.iter().flat_map(|p| p.versions.keys().cloned()).map(|k| (k, ())).collect();
        let versions = keys
            .into_keys()
            .map(|key| {
                let column = |f: &dyn Fn(&VersionPoint) -> f64| -> Vec<Option<f64>> {
                    inner.points.iter().map(|p| p.versions.get(&key).map(f)).collect()
                };
                let round =
                    |v: Vec<Option<f64>>| v.into_iter().map(|x| x.map(|ms| (ms * 1000.0).round() / 1000.0)).collect();
                Track {
                    requests: inner.points.iter().map(|p| p.versions.get(&key).map(|v| v.requests)).collect(),
                    errors: inner.points.iter().map(|p| p.versions.get(&key).map(|v| v.errors)).collect(),
                    p50_ms: round(column(&|v| v.percentiles[0])),
                    p95_ms: round(column(&|v| v.percentiles[1])),
                    p99_ms: round(column(&|v| v.percentiles[2])),
                    service: key.0,
                    version: key.1,
                }
            })
            .collect();
        Charted {
            times,
            versions,
            queued: inner.points.iter().map(|p| p.queue.map(|q| q.0)).collect(),
            running: inner.points.iter().map(|p| p.queue.map(|q| q.1)).collect(),
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn percentiles_fall_in_the_buckets_their_requests_did() {
        let mut counts = vec![0u64; LATENCY_BUCKETS.len() + 1];
        counts[3] = 90; // 0.5–1 ms
        counts[8] = 10; // 25–50 ms
        let p50 = percentile(&counts, 0.5);
        assert!((0.5..=1.0).contains(&p50), "{p50}");
        let p99 = percentile(&counts, 0.99);
        assert!((25.0..=50.0).contains(&p99), "{p99}");
        assert_eq!(percentile(&vec![0; LATENCY_BUCKETS.len() + 1], 0.5), 0.0);
    }

    #[test]
    fn each_point_holds_the_interval_not_the_total_and_the_history_is_bounded() {
        let metrics = Metrics::default();
        let history = History::default();
        let series = metrics.version("shop", "1.0.0");
        for _ in 0..5 {
            series.request(200, Duration::from_micros(700));
        }
        series.request(503, Duration::from_millis(30));
        history.sample(&metrics, 10.0, Some((3, 1)));
        history.sample(&metrics, 20.0, None);
        series.request(200, Duration::from_micros(700));
        history.sample(&metrics, 30.5, Some((0, 0)));
        let charted = history.charted();
        assert_eq!(charted.times, vec![10.0, 20.0, 30.5]);
        let track = &charted.versions[0];
        assert_eq!((track.service.as_str(), track.version.as_str()), ("shop", "1.0.0"));
        assert_eq!(track.requests, vec![Some(6), None, Some(1)]);
        assert_eq!(track.errors, vec![Some(1), None, Some(0)]);
        assert!(track.p50_ms[0].unwrap() <= 1.0 && track.p99_ms[0].unwrap() >= 25.0, "{track:?}");
        assert_eq!(charted.queued, vec![Some(3), None, Some(0)]);
        for at in 0..(POINTS as i64 + 10) {
            history.sample(&metrics, 40.0 + at as f64, None);
        }
        assert_eq!(history.charted().times.len(), POINTS);
    }
}
