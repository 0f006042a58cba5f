//! Failed-login limiting, per client address and per account: after too many
//! failures in a window, logins answer 429 with `Retry-After` until it passes.

use std::time::{Duration, Instant};

use dashmap::DashMap;

/// A fixed-window counter of failures per key.
pub struct FailureLimiter {
    max_failures: u32,
    window: Duration,
    failures: DashMap<String, (u32, Instant)>,
}

impl FailureLimiter {
    pub fn new(max_failures: u32, window: Duration) -> Self {
        Self { max_failures, window, failures: DashMap::new() }
    }

    /// `Some(wait)` if `key` is locked out for `wait` more.
    pub fn check(&self, key: &str) -> Option<Duration> {
        let entry = self.failures.get(key)?;
        let (count, since) = *entry;
        let elapsed = since.elapsed();
        if elapsed >= self.window {
            drop(entry);
            self.failures.remove(key);
            return None;
        }
        (count >= self.max_failures).then(|| self.window - elapsed)
    }

    /// Count a failure.
    pub fn fail(&self, key: &str) {
        let now = Instant::now();
        let mut entry = self.failures.entry(key.to_string()).or_insert((0, now));
        if entry.1.elapsed() >= self.window {
            *entry = (0, now);
        }
        entry.0 += 1;
    }

    /// Forget the failures of `key` (after a successful login).
    pub fn clear(&self, key: &str) {
        self.failures.remove(key);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn locks_out_after_the_limit_until_the_window_passes() {
        let limiter = FailureLimiter::new(2, Duration::from_millis(50));
        assert!(limiter.check("a").is_none());
        limiter.fail("a");
        assert!(limiter.check("a").is_none());
        limiter.fail("a");
        assert!(limiter.check("a").is_some());
        assert!(limiter.check("b").is_none());
        std::thread::sleep(Duration::from_millis(60));
        assert!(limiter.check("a").is_none());
    }
}
