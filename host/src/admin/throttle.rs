//! A bound on how fast one account may change things through the admin API.
//! Every change reaches every node (a routing-table rebuild, a catch-up), so a
//! signed-in user looping `PATCH` would otherwise keep a core of every node busy.
//! Reads are not bounded here; operators are not bound at all.

use std::time::{Duration, Instant};

use dashmap::DashMap;

/// A token bucket per account.
pub struct Throttle {
    per_second: f64,
    burst: f64,
    buckets: DashMap<String, (f64, Instant)>,
}

impl Throttle {
    pub fn new(per_second: f64, burst: f64) -> Self {
        Self { per_second, burst, buckets: DashMap::new() }
    }

    /// Take a token for `account`; `Err(wait)` when none is left.
    pub fn take(&self, account: &str) -> Result<(), Duration> {
        if self.buckets.len() > 100_000 {
            // Full buckets forget nothing by going: drop the idle ones.
            let idle = Duration::from_secs_f64(self.burst / self.per_second);
            self.buckets.retain(|_, (_, at)| at.elapsed() < idle);
        }
        let now = Instant::now();
        let mut bucket = self.buckets.entry(account.to_string()).or_insert((self.burst, now));
        let (tokens, at) = *bucket;
        let tokens = (tokens + now.duration_since(at).as_secs_f64() * self.per_second).min(self.burst);
        if tokens < 1.0 {
            *bucket = (tokens, now);
            return Err(Duration::from_secs_f64((1.0 - tokens) / self.per_second));
        }
        *bucket = (tokens - 1.0, now);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_then_the_rate() {
        let throttle = Throttle::new(10.0, 5.0);
        let admitted = (0..20).filter(|_| throttle.take("a").is_ok()).count();
        assert_eq!(admitted, 5);
        assert!(throttle.take("b").is_ok(), "accounts are apart");
        std::thread::sleep(Duration::from_millis(120));
        assert!(throttle.take("a").is_ok(), "tokens come back at the rate");
    }
}
