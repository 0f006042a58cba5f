//! Login limiting, per client address and per account: after too many attempts
//! in a window, logins answer 429 with `Retry-After` until it passes. An attempt
//! is counted before its password is checked (and given back if it succeeds), so
//! concurrent guesses cannot all slip past the check; expired entries are swept,
//! so the maps stay bounded by recent traffic.

use std::time::{Duration, Instant};

use dashmap::DashMap;

/// Attempts counted per key: in Redis when the platform has one (so every node
/// counts together), else in this node's memory. If Redis fails, the node's own
/// count stands in, so logins are never left unlimited.
pub struct Limiter {
    name: &'static str,
    local: FailureLimiter,
    redis: Option<std::sync::Arc<crate::shared::Redis>>,
}

impl Limiter {
    pub fn new(
        name: &'static str,
        max_failures: u32,
        window: Duration,
        redis: Option<std::sync::Arc<crate::shared::Redis>>,
    ) -> Self {
        Self { name, local: FailureLimiter::new(max_failures, window), redis }
    }

    fn shared_key(&self, key: &str) -> String {
        format!("{}:{key}", self.name)
    }

    /// Count an attempt of `key`; `Err(wait)` if it is locked out.
    pub async fn attempt(&self, key: &str) -> Result<(), Duration> {
        if let Some(redis) = &self.redis {
            match redis.attempt(&self.shared_key(key), self.local.max_failures, self.local.window).await {
                Ok(outcome) => return outcome,
                Err(e) => tracing::warn!("login limits fall back to this node's count: {e}"),
            }
        }
        self.local.attempt(key)
    }

    /// Give back an attempt that turned out legitimate.
    pub async fn refund(&self, key: &str) {
        match &self.redis {
            Some(redis) => redis.refund(&self.shared_key(key)).await,
            None => self.local.refund(key),
        }
    }

    /// Forget the attempts of `key`.
    pub async fn clear(&self, key: &str) {
        match &self.redis {
            Some(redis) => redis.clear(&self.shared_key(key)).await,
            None => self.local.clear(key),
        }
    }
}

/// A fixed-window counter of attempts per key.
pub struct FailureLimiter {
    max_failures: u32,
    window: Duration,
    failures: DashMap<String, (u32, Instant)>,
    calls: std::sync::atomic::AtomicU64,
}

/// Entries swept from the maps every this many attempts.
const SWEEP_EVERY: u64 = 1024;

impl FailureLimiter {
    pub fn new(max_failures: u32, window: Duration) -> Self {
        Self { max_failures, window, failures: DashMap::new(), calls: Default::default() }
    }

    /// Count an attempt of `key` before it is checked; `Err(wait)` if `key` is
    /// locked out (the refused attempt is not counted).
    pub fn attempt(&self, key: &str) -> Result<(), Duration> {
        if self.calls.fetch_add(1, std::sync::atomic::Ordering::Relaxed).is_multiple_of(SWEEP_EVERY) {
            self.failures.retain(|_, (_, since)| since.elapsed() < self.window);
        }
        let now = Instant::now();
        let mut entry = self.failures.entry(key.to_string()).or_insert((0, now));
        if entry.1.elapsed() >= self.window {
            *entry = (0, now);
        }
        if entry.0 >= self.max_failures {
            return Err(self.window.saturating_sub(entry.1.elapsed()));
        }
        entry.0 += 1;
        Ok(())
    }

    /// Give back an attempt that turned out legitimate.
    pub fn refund(&self, key: &str) {
        if let Some(mut entry) = self.failures.get_mut(key) {
            entry.0 = entry.0.saturating_sub(1);
        }
    }

    /// Keys tracked now.
    #[cfg(test)]
    fn len(&self) -> usize {
        self.failures.len()
    }

    /// Forget the failures of `key` (after a successful login).
    pub fn clear(&self, key: &str) {
        self.failures.remove(key);
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn concurrent_attempts_are_counted_before_they_are_checked() {
        let limiter = std::sync::Arc::new(FailureLimiter::new(5, Duration::from_secs(60)));
        let admitted: usize = (0..8)
            .map(|_| {
                let limiter = limiter.clone();
                std::thread::spawn(move || (0..25).filter(|_| limiter.attempt("a").is_ok()).count())
            })
            .collect::<Vec<_>>()
            .into_iter()
            .map(|t| t.join().unwrap())
            .sum();
        assert_eq!(admitted, 5);
        limiter.refund("a");
        assert!(limiter.attempt("a").is_ok(), "a refunded attempt frees a place");
    }

    #[test]
    fn expired_entries_are_swept() {
        let limiter = FailureLimiter::new(5, Duration::from_millis(20));
        for i in 0..2000 {
            let _ = limiter.attempt(&format!("k{i}"));
        }
        std::thread::sleep(Duration::from_millis(30));
        for i in 0..SWEEP_EVERY {
            let _ = limiter.attempt(&format!("new{i}"));
        }
        assert!(limiter.len() <= SWEEP_EVERY as usize + 1, "{} keys kept", limiter.len());
    }

    #[test]
    fn locks_out_after_the_limit_until_the_window_passes() {
        let limiter = FailureLimiter::new(2, Duration::from_millis(50));
        assert!(limiter.attempt("a").is_ok());
        assert!(limiter.attempt("a").is_ok());
        assert!(limiter.attempt("a").is_err());
        assert!(limiter.attempt("b").is_ok());
        std::thread::sleep(Duration::from_millis(60));
        assert!(limiter.attempt("a").is_ok());
    }
}
