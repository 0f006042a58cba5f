//! A bound on how often one instance's failures are logged: a guest that fails
//! thousands of times a second must not turn the node's log (and the CPU that
//! writes it) into its weapon.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Failures logged per instance per window; the rest are counted.
const PER_WINDOW: u64 = 10;
const WINDOW: Duration = Duration::from_secs(10);

/// Whether a failure may be logged now.
pub enum Verdict {
    /// Log it; `suppressed` failures of the previous window were not logged.
    Log { suppressed: u64 },
    /// Count it only.
    Suppress,
}

/// One instance's failure-log budget.
pub struct LogGate {
    window: Mutex<Instant>,
    logged: AtomicU64,
    suppressed: AtomicU64,
}

impl Default for LogGate {
    fn default() -> Self {
        Self { window: Mutex::new(Instant::now()), logged: AtomicU64::new(0), suppressed: AtomicU64::new(0) }
    }
}

impl LogGate {
    /// Take one line of the budget, starting a new window when the last is over.
    pub fn check(&self) -> Verdict {
        let mut previous = 0;
        if let Ok(mut started) = self.window.lock() {
            if started.elapsed() >= WINDOW {
                *started = Instant::now();
                self.logged.store(0, Ordering::Relaxed);
                previous = self.suppressed.swap(0, Ordering::Relaxed);
            }
        }
        if self.logged.fetch_add(1, Ordering::Relaxed) < PER_WINDOW {
            Verdict::Log { suppressed: previous }
        } else {
            self.suppressed.fetch_add(1, Ordering::Relaxed);
            Verdict::Suppress
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_logs_ten_lines_and_counts_the_rest() {
        let gate = LogGate::default();
        let logged = (0..1000).filter(|_| matches!(gate.check(), Verdict::Log { .. })).count();
        assert_eq!(logged, 10);
        assert_eq!(gate.suppressed.load(Ordering::Relaxed), 990);
    }
}
