//! State several nodes share in Redis (`wharf serve --redis redis://…`): each
//! instance's key-value store, and the login limits. Without Redis, a single
//! node keeps both itself (the key-value store in each instance's `kv.sqlite`,
//! the limits in memory).
//!
//! Keys are namespaced by the platform's id and, for an instance, by its id in a
//! hash tag (`wharf:<platform>:{<instance>}:k:<key>`), so one Redis can serve
//! several platforms and a Redis Cluster keeps an instance's keys on one shard.
//! Each instance also keeps a sorted index of its keys (listing never scans the
//! keyspace) and a byte count, checked by the same script that writes, so an
//! instance holds at most [`MAX_KV_BYTES`] however many nodes write at once.
//! Expired keys leave the index lazily and the count when it is next recounted.

use std::time::Duration;

use anyhow::Context as _;
use redis::aio::ConnectionManager;
use redis::Script;

/// Largest string or blob (and table row) of an instance's SQL, and largest
/// key-value value.
pub const MAX_VALUE_BYTES: usize = 1 << 20;
/// Longest key-value key.
pub const MAX_KEY_BYTES: usize = 512;
/// Largest key-value store of one instance (a `kv.sqlite` file, or its keys in Redis).
pub const MAX_KV_BYTES: u64 = 64 << 20;

/// Longest a Redis call may take before the guest hears "busy".
const CALL_TIMEOUT: Duration = Duration::from_secs(1);

/// A connection to the shared Redis, namespaced for one platform.
pub struct Redis {
    conn: ConnectionManager,
    prefix: String,
    set: Script,
    delete: Script,
    list: Script,
    increment: Script,
    attempt: Script,
}

/// Set `KEYS[1]` to `ARGV[1]` (expiring after `ARGV[2]` ms unless 0) if the
/// instance's byte count (`KEYS[2]`) stays within `ARGV[3]`; index it in `KEYS[3]`
/// as `ARGV[4]`. Returns the new count, or -1 over the limit.
const SET: &str = r"
local cost = string.len(ARGV[1]) + string.len(ARGV[4])
local old = 0
if redis.call('EXISTS', KEYS[1]) == 1 then old = redis.call('STRLEN', KEYS[1]) + string.len(ARGV[4]) end
local total = tonumber(redis.call('GET', KEYS[2]) or '0') - old + cost
if total > tonumber(ARGV[3]) then return -1 end
if tonumber(ARGV[2]) > 0 then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
else
  redis.call('SET', KEYS[1], ARGV[1])
end
redis.call('SET', KEYS[2], total)
redis.call('ZADD', KEYS[3], 0, ARGV[4])
return total
";

/// Delete `KEYS[1]` (indexed in `KEYS[3]` as `ARGV[1]`), keeping the count
/// (`KEYS[2]`) right; 1 if it existed.
const DELETE: &str = r"
redis.call('ZREM', KEYS[3], ARGV[1])
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
local cost = redis.call('STRLEN', KEYS[1]) + string.len(ARGV[1])
redis.call('DEL', KEYS[1])
local total = tonumber(redis.call('GET', KEYS[2]) or '0') - cost
if total < 0 then total = 0 end
redis.call('SET', KEYS[2], total)
return 1
";

/// Up to `ARGV[3]` live keys of the index `KEYS[1]` starting with `ARGV[1]`
/// (`ARGV[2]` is the prefix followed by the highest byte); `ARGV[4]` is the key
/// prefix under which the values live. Dead entries leave the index.
const LIST: &str = r"
local found = {}
local start = '[' .. ARGV[1]
local limit = tonumber(ARGV[3])
for _ = 1, 20 do
  local batch = redis.call('ZRANGEBYLEX', KEYS[1], start, '[' .. ARGV[2], 'LIMIT', 0, limit)
  if #batch == 0 then break end
  for _, name in ipairs(batch) do
    if redis.call('EXISTS', ARGV[4] .. name) == 1 then
      table.insert(found, name)
      if #found >= limit then return found end
    else
      redis.call('ZREM', KEYS[1], name)
    end
    start = '(' .. name
  end
end
return found
";

/// Add `ARGV[1]` to the integer at `KEYS[1]` (keeping its expiry), indexing a new
/// key in `KEYS[3]` as `ARGV[2]` and counting it in `KEYS[2]`.
const INCREMENT: &str = r"
local existed = redis.call('EXISTS', KEYS[1])
local value = redis.call('INCRBY', KEYS[1], ARGV[1])
if existed == 0 then
  redis.call('ZADD', KEYS[3], 0, ARGV[2])
  redis.call('INCRBY', KEYS[2], redis.call('STRLEN', KEYS[1]) + string.len(ARGV[2]))
end
return value
";

/// Count an attempt at `KEYS[1]` in a window of `ARGV[2]` ms; over `ARGV[1]`
/// attempts, take it back and return the ms left (else -1).
const ATTEMPT: &str = r"
local n = redis.call('INCR', KEYS[1])
if n == 1 then redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
if n > tonumber(ARGV[1]) then
  redis.call('DECR', KEYS[1])
  local left = redis.call('PTTL', KEYS[1])
  if left < 0 then left = tonumber(ARGV[2]) end
  return left
end
return -1
";

impl Redis {
    /// Connect to `url` for the platform `platform_id`.
    pub async fn connect(url: &str, platform_id: &str) -> anyhow::Result<Self> {
        let client = redis::Client::open(url).context("invalid Redis URL")?;
        let config = redis::aio::ConnectionManagerConfig::new()
            .set_connection_timeout(Duration::from_secs(2))
            .set_response_timeout(CALL_TIMEOUT)
            .set_number_of_retries(2);
        let conn = tokio::time::timeout(Duration::from_secs(5), ConnectionManager::new_with_config(client, config))
            .await
            .context("Redis did not answer within 5 s")?
            .context("failed to connect to Redis")?;
        Ok(Self {
            conn,
            prefix: format!("wharf:{platform_id}"),
            set: Script::new(SET),
            delete: Script::new(DELETE),
            list: Script::new(LIST),
            increment: Script::new(INCREMENT),
            attempt: Script::new(ATTEMPT),
        })
    }

    fn instance_keys(&self, instance: &str) -> (String, String, String) {
        let base = format!("{}:{{{instance}}}", self.prefix);
        (format!("{base}:k:"), format!("{base}:bytes"), format!("{base}:index"))
    }

    async fn run<T>(
        &self,
        what: &str,
        call: impl std::future::Future<Output = redis::RedisResult<T>>,
    ) -> Result<T, String> {
        match tokio::time::timeout(CALL_TIMEOUT, call).await {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(e)) if e.kind() == redis::ErrorKind::TypeError || e.to_string().contains("not an integer") => {
                Err(format!("the value at {what} is not an integer"))
            }
            Ok(Err(e)) if e.to_string().contains("overflow") => Err("the counter would overflow".into()),
            Ok(Err(e)) => {
                tracing::warn!("Redis call failed: {e}");
                Err("the key-value store is unavailable; retry".into())
            }
            Err(_) => Err("the key-value store is busy; retry".into()),
        }
    }

    /// The value at `key` of `instance`.
    pub async fn get(&self, instance: &str, key: &str) -> Result<Option<Vec<u8>>, String> {
        let (values, _, _) = self.instance_keys(instance);
        let mut conn = self.conn.clone();
        self.run(key, redis::cmd("GET").arg(format!("{values}{key}")).query_async(&mut conn)).await
    }

    /// Set `key` of `instance`, optionally expiring.
    pub async fn set(&self, instance: &str, key: &str, value: &[u8], ttl: Option<Duration>) -> Result<(), String> {
        if ttl.is_some_and(|t| t.is_zero()) {
            // Expired at once: nothing to keep.
            return self.delete(instance, key).await.map(drop);
        }
        let (values, bytes, index) = self.instance_keys(instance);
        let px = ttl.map(|t| t.as_millis().min(i64::MAX as u128) as i64).unwrap_or(0);
        let mut conn = self.conn.clone();
        let mut invocation = self.set.prepare_invoke();
        invocation.key(format!("{values}{key}")).key(&bytes).key(&index);
        invocation.arg(value).arg(px).arg(MAX_KV_BYTES).arg(key);
        let total: i64 = self.run(key, invocation.invoke_async(&mut conn)).await?;
        if total < 0 {
            // Expired keys may still be counted: recount once, then retry.
            if self.recount(instance).await? {
                let mut invocation = self.set.prepare_invoke();
                invocation.key(format!("{values}{key}")).key(&bytes).key(&index);
                invocation.arg(value).arg(px).arg(MAX_KV_BYTES).arg(key);
                if self.run::<i64>(key, invocation.invoke_async(&mut conn)).await? >= 0 {
                    return Ok(());
                }
            }
            return Err(format!("the key-value store is full ({} MiB per instance)", MAX_KV_BYTES >> 20));
        }
        Ok(())
    }

    /// Recount an instance's bytes from its live keys; whether the count fell.
    async fn recount(&self, instance: &str) -> Result<bool, String> {
        let (values, bytes, index) = self.instance_keys(instance);
        let mut conn = self.conn.clone();
        let names: Vec<String> =
            self.run("the index", redis::cmd("ZRANGE").arg(&index).arg(0).arg(-1).query_async(&mut conn)).await?;
        let mut total: i64 = 0;
        for chunk in names.chunks(500) {
            let mut pipe = redis::pipe();
            for name in chunk {
                pipe.cmd("STRLEN").arg(format!("{values}{name}"));
            }
            let lengths: Vec<i64> = self.run("the index", pipe.query_async(&mut conn)).await?;
            for (name, len) in chunk.iter().zip(lengths) {
                if len > 0 {
                    total += len + name.len() as i64;
                }
            }
        }
        let before: Option<i64> = self.run("the count", redis::cmd("GET").arg(&bytes).query_async(&mut conn)).await?;
        let _: () = self.run("the count", redis::cmd("SET").arg(&bytes).arg(total).query_async(&mut conn)).await?;
        Ok(before.unwrap_or(0) > total)
    }

    /// Delete `key` of `instance`; whether it existed.
    pub async fn delete(&self, instance: &str, key: &str) -> Result<bool, String> {
        let (values, bytes, index) = self.instance_keys(instance);
        let mut conn = self.conn.clone();
        let mut invocation = self.delete.prepare_invoke();
        invocation.key(format!("{values}{key}")).key(&bytes).key(&index).arg(key);
        let existed: i64 = self.run(key, invocation.invoke_async(&mut conn)).await?;
        Ok(existed == 1)
    }

    /// Live entries of `instance` after `after` in key order, at most
    /// `limit`: (key, value, when it expires in Unix milliseconds).
    pub async fn entries(
        &self,
        instance: &str,
        after: &str,
        limit: u32,
    ) -> Result<Vec<(String, Vec<u8>, Option<i64>)>, String> {
        let (values, _, index) = self.instance_keys(instance);
        let mut conn = self.conn.clone();
        let mut found = Vec::new();
        let mut from = format!("({after}");
        // Index entries whose value expired are skipped; read on until `limit`.
        while found.len() < limit as usize {
            let names: Vec<String> = self
                .run(
                    "the index",
                    redis::cmd("ZRANGEBYLEX")
                        .arg(&index)
                        .arg(&from)
                        .arg("+")
                        .arg("LIMIT")
                        .arg(0)
                        .arg(limit)
                        .query_async(&mut conn),
                )
                .await?;
            let Some(last) = names.last() else { break };
            from = format!("({last}");
            let mut pipe = redis::pipe();
            for name in &names {
                pipe.cmd("GET").arg(format!("{values}{name}"));
                pipe.cmd("PTTL").arg(format!("{values}{name}"));
            }
            let answers: Vec<redis::Value> = self.run("the values", pipe.query_async(&mut conn)).await?;
            let now = crate::store::now_millis();
            for (name, pair) in names.iter().zip(answers.chunks(2)) {
                let value: Option<Vec<u8>> = redis::from_redis_value(&pair[0]).map_err(|e| e.to_string())?;
                let ttl: i64 = redis::from_redis_value(&pair[1]).map_err(|e| e.to_string())?;
                if let Some(value) = value {
                    found.push((name.clone(), value, (ttl >= 0).then_some(now + ttl)));
                }
            }
        }
        found.truncate(limit as usize);
        Ok(found)
    }

    /// Live keys of `instance` starting with `prefix`, sorted, at most `limit`.
    pub async fn list(&self, instance: &str, prefix: &str, limit: u32) -> Result<Vec<String>, String> {
        let (values, _, index) = self.instance_keys(instance);
        let mut upper = prefix.as_bytes().to_vec();
        upper.push(0xff);
        let mut conn = self.conn.clone();
        let mut invocation = self.list.prepare_invoke();
        invocation.key(&index).arg(prefix).arg(upper).arg(limit.clamp(1, 1000)).arg(&values);
        self.run(prefix, invocation.invoke_async(&mut conn)).await
    }

    /// Add `delta` to the integer at `key` of `instance`, atomically, keeping its expiry.
    pub async fn increment(&self, instance: &str, key: &str, delta: i64) -> Result<i64, String> {
        let (values, bytes, index) = self.instance_keys(instance);
        let mut conn = self.conn.clone();
        let mut invocation = self.increment.prepare_invoke();
        invocation.key(format!("{values}{key}")).key(&bytes).key(&index).arg(delta).arg(key);
        self.run(key, invocation.invoke_async(&mut conn)).await
    }

    /// Delete every key of `instance` (its values, their index and its byte
    /// count); how many. Keys are found with `SCAN` under the instance's hash
    /// tag, never `KEYS`.
    pub async fn forget_instance(&self, instance: &str) -> anyhow::Result<u64> {
        let pattern = format!("{}:{{{instance}}}:*", self.prefix);
        let mut conn = self.conn.clone();
        let mut cursor: u64 = 0;
        let mut deleted = 0;
        loop {
            let (next, keys): (u64, Vec<String>) = redis::cmd("SCAN")
                .arg(cursor)
                .arg("MATCH")
                .arg(&pattern)
                .arg("COUNT")
                .arg(1000)
                .query_async(&mut conn)
                .await
                .context("failed to list the instance's keys in Redis")?;
            if !keys.is_empty() {
                let gone: u64 = redis::cmd("DEL")
                    .arg(&keys)
                    .query_async(&mut conn)
                    .await
                    .context("failed to delete the instance's keys in Redis")?;
                deleted += gone;
            }
            if next == 0 {
                return Ok(deleted);
            }
            cursor = next;
        }
    }

    /// Count a login attempt under `name`; `Err(wait)` once `max` were counted in `window`.
    pub async fn attempt(&self, name: &str, max: u32, window: Duration) -> Result<Result<(), Duration>, String> {
        let mut conn = self.conn.clone();
        let mut invocation = self.attempt.prepare_invoke();
        invocation.key(format!("{}:login:{name}", self.prefix)).arg(max).arg(window.as_millis() as u64);
        let left: i64 = self.run(name, invocation.invoke_async(&mut conn)).await?;
        Ok(if left < 0 { Ok(()) } else { Err(Duration::from_millis(left as u64)) })
    }

    /// Give back an attempt counted under `name`.
    pub async fn refund(&self, name: &str) {
        let mut conn = self.conn.clone();
        let key = format!("{}:login:{name}", self.prefix);
        let _ = self.run::<i64>(name, redis::cmd("DECR").arg(key).query_async(&mut conn)).await;
    }

    /// Forget the attempts counted under `name`.
    pub async fn clear(&self, name: &str) {
        let mut conn = self.conn.clone();
        let key = format!("{}:login:{name}", self.prefix);
        let _ = self.run::<i64>(name, redis::cmd("DEL").arg(key).query_async(&mut conn)).await;
    }
}

/// The limits a stored value must meet, whichever store keeps it.
pub fn check_value(key: &str, value: &[u8]) -> Result<(), String> {
    if key.is_empty() || key.len() > MAX_KEY_BYTES {
        return Err(format!("keys are 1 to {MAX_KEY_BYTES} bytes"));
    }
    if value.len() > MAX_VALUE_BYTES {
        return Err(format!("the value is larger than {} MiB", MAX_VALUE_BYTES >> 20));
    }
    Ok(())
}
