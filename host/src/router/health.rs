//! An instance's health gate on this node: the window of its first requests on
//! a newly served version, counted as they are served. The rollout decides what
//! a failed window does (the rollout's health gate pins the instance back).

use std::sync::Arc;

use crate::store;

/// Requests an instance's new version is judged on.
pub const HEALTH_WINDOW: u32 = 20;
/// Judged once it has served this many of them.
pub const HEALTH_MIN: u32 = 10;
/// Rolled back when more than this share of them failed (5xx or trap), in percent.
pub const HEALTH_THRESHOLD_PERCENT: u32 = 50;

/// An instance's health gate on this node: the first [`HEALTH_WINDOW`]
/// requests of each version it newly serves are counted; too many failures
/// and the instance goes back to the version it served before.
#[derive(Default)]
pub struct HealthWindow {
    /// Address of the version that passed (or needs no) judgement: the fast path.
    settled: std::sync::atomic::AtomicUsize,
    state: std::sync::Mutex<WindowState>,
}

#[derive(Default)]
struct WindowState {
    /// The version judged, by address (holding it would keep it loaded).
    judged: usize,
    previous: Option<String>,
    seen: u32,
    failed: u32,
}

/// Where the health gate sends an instance back to.
pub enum GateBack {
    /// An instance following the active version: the version active before it.
    Previous(Arc<crate::registry::ServiceSlot>),
    /// A canary: the active version.
    Active(Arc<crate::registry::ServiceSlot>),
}

/// A promotion is judged by the health gate for this long after it.
pub const HEALTH_FRESH_MS: i64 = 10 * 60 * 1000;

impl GateBack {
    /// The version to go back to if `judged` fails, when it is judged at all.
    fn version(&self, judged: &crate::registry::LoadedVersion) -> Option<String> {
        match self {
            GateBack::Previous(slot) => {
                let since = judged.activated_ms.load(std::sync::atomic::Ordering::Relaxed);
                (store::now_millis() - since < HEALTH_FRESH_MS).then(|| slot.previous()).flatten()
            }
            GateBack::Active(slot) => slot.active().map(|v| v.version.clone()),
        }
    }
}

/// A version that failed its instance's health gate.
#[derive(Debug, Clone)]
pub struct Unhealthy {
    pub instance: String,
    pub service: String,
    pub version: String,
    pub previous: String,
    pub reason: String,
}

impl HealthWindow {
    /// Count one request `version` served for `instance`; `Some` when that
    /// tips it over the threshold (once per version).
    pub fn observe(
        &self,
        instance: &str,
        version: &Arc<crate::registry::LoadedVersion>,
        failed: bool,
        back_to: &GateBack,
    ) -> Option<Unhealthy> {
        let address = Arc::as_ptr(version) as usize;
        if self.settled.load(std::sync::atomic::Ordering::Relaxed) == address {
            return None;
        }
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if state.judged != address {
            // A version this instance did not serve before here: judge it,
            // unless there is nothing to go back to.
            let previous = back_to.version(version);
            *state = WindowState { judged: address, previous, seen: 0, failed: 0 };
            if state.previous.is_none() || state.previous.as_deref() == Some(version.version.as_str()) {
                self.settled.store(address, std::sync::atomic::Ordering::Relaxed);
                return None;
            }
        }
        state.seen += 1;
        state.failed += u32::from(failed);
        let (seen, bad) = (state.seen, state.failed);
        if seen >= HEALTH_MIN && bad * 100 > seen * HEALTH_THRESHOLD_PERCENT {
            self.settled.store(address, std::sync::atomic::Ordering::Relaxed);
            return Some(Unhealthy {
                instance: instance.to_string(),
                service: version.service.clone(),
                version: version.version.clone(),
                previous: state.previous.clone().unwrap_or_default(),
                reason: format!(
                    "{bad} of its first {seen} requests on {} failed (5xx or trap; the gate is over {HEALTH_THRESHOLD_PERCENT}%)",
                    version.version
                ),
            });
        }
        if seen >= HEALTH_WINDOW {
            self.settled.store(address, std::sync::atomic::Ordering::Relaxed);
        }
        None
    }
}
