//! An instance's key-value store in Redis (a cluster's nodes share it), under
//! its instance's id; the limits are enforced there too ([`crate::shared::Redis`]).

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use super::types::{Call, GuestKv, KvEntry};
use crate::shared::Redis;

/// The key-value store of one instance, in Redis.
pub struct RedisKv {
    redis: Arc<Redis>,
    instance: Arc<str>,
}

impl RedisKv {
    pub fn new(redis: Arc<Redis>, instance: &str) -> Self {
        Self { redis, instance: instance.into() }
    }
}

#[async_trait::async_trait]
impl GuestKv for RedisKv {
    async fn get(&self, key: String, call: &Call) -> Result<Option<Vec<u8>>, String> {
        let value = self.redis.get(&self.instance, &key).await;
        charge_remote(call, value.as_ref().ok().and_then(Option::as_ref).map_or(0, Vec::len));
        value
    }

    async fn set(&self, key: String, value: Vec<u8>, ttl: Option<Duration>, call: &Call) -> Result<(), String> {
        charge_remote(call, value.len());
        self.redis.set(&self.instance, &key, &value, ttl).await
    }

    async fn delete(&self, key: String, call: &Call) -> Result<bool, String> {
        charge_remote(call, 0);
        self.redis.delete(&self.instance, &key).await
    }

    async fn list(&self, prefix: String, limit: u32, call: &Call) -> Result<Vec<String>, String> {
        let keys = self.redis.list(&self.instance, &prefix, limit).await;
        charge_remote(call, keys.as_ref().map_or(0, |k| k.iter().map(String::len).sum()));
        keys
    }

    async fn increment(&self, key: String, delta: i64, call: &Call) -> Result<i64, String> {
        charge_remote(call, 0);
        self.redis.increment(&self.instance, &key, delta).await
    }

    async fn entries(&self, after: String, limit: u32, call: &Call) -> Result<Vec<KvEntry>, String> {
        charge_remote(call, 0);
        let entries = self.redis.entries(&self.instance, &after, limit).await?;
        Ok(entries.into_iter().map(|(key, value, expires_at_ms)| KvEntry { key, value, expires_at_ms }).collect())
    }
}

/// What a call to the shared store costs the request, as CPU nanoseconds (and
/// so fuel): a fixed share for the round trip and one for every KiB moved. The
/// node spends little CPU on it; the charge keeps a guest from calling it for free.
fn charge_remote(call: &Call, bytes: usize) {
    let nanos = 20_000 + (bytes as u64 / 1024) * 1_000;
    call.cpu_nanos.fetch_add(nanos, Ordering::Relaxed);
}
