//! The Redis store: one round trip per check, atomic on the server. A Lua script reads the
//! current and previous window counters (named from the server's clock, so every gateway
//! instance agrees on windows), decides, increments, and lets keys expire after two windows.
//! Every call is bounded by `redis.timeout`; the connection manager reconnects by itself.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use tokio::sync::OnceCell;

use super::window::{decide, Verdict};
use crate::config::RedisConfig;

const SCRIPT: &str = r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local window = tonumber(ARGV[1])
local limit = tonumber(ARGV[2])
local idx = math.floor(now / window)
local elapsed = now - idx * window
local cur_key = KEYS[1] .. ':' .. idx
local prev = tonumber(redis.call('GET', KEYS[1] .. ':' .. (idx - 1)) or '0')
local cur = tonumber(redis.call('GET', cur_key) or '0')
local est = prev * (window - elapsed) / window + cur
if est + 1 <= limit + 1e-9 then
  redis.call('INCR', cur_key)
  redis.call('PEXPIRE', cur_key, window * 2)
  return {1, prev, cur, elapsed}
end
return {0, prev, cur, elapsed}
"#;

pub struct RedisStore {
    client: redis::Client,
    timeout: Duration,
    script: redis::Script,
    conn: OnceCell<ConnectionManager>,
    errors: LogGate,
}

impl RedisStore {
    pub fn new(cfg: &RedisConfig) -> Result<RedisStore, String> {
        let client =
            redis::Client::open(cfg.url.as_str()).map_err(|e| format!("redis.url: {e}"))?;
        Ok(RedisStore {
            client,
            timeout: cfg.timeout,
            script: redis::Script::new(SCRIPT),
            conn: OnceCell::new(),
            errors: LogGate::default(),
        })
    }

    async fn connection(&self) -> Result<ConnectionManager, String> {
        self.conn
            .get_or_try_init(|| async {
                let config = ConnectionManagerConfig::new()
                    .set_connection_timeout(Some(self.timeout))
                    .set_response_timeout(Some(self.timeout))
                    .set_max_delay(Duration::from_secs(1));
                ConnectionManager::new_lazy_with_config(self.client.clone(), config)
                    .map_err(|e| e.to_string())
            })
            .await
            .cloned()
    }

    /// Counts one request for `key`. `Err` when Redis is slow, down or answers oddly.
    pub async fn check(&self, key: &str, window_ms: u64, limit: u32) -> Result<Verdict, String> {
        let call = async {
            let mut conn = self.connection().await?;
            let reply: Vec<i64> = self
                .script
                .key(key)
                .arg(window_ms)
                .arg(limit)
                .invoke_async(&mut conn)
                .await
                .map_err(|e| e.to_string())?;
            match reply.as_slice() {
                [allowed, prev, cur, elapsed] => {
                    let (prev, cur) = (*prev as u32, *cur as u32);
                    let mut v = decide(prev, cur, *elapsed as u64, window_ms, limit);
                    // The script decided; `decide` only adds the numbers for the headers.
                    v.allowed = *allowed == 1;
                    if v.allowed {
                        v.retry_after_ms = 0;
                    }
                    Ok(v)
                }
                other => Err(format!("unexpected script reply {other:?}")),
            }
        };
        match tokio::time::timeout(self.timeout, call).await {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => Err(self.errors.note(e)),
            Err(_) => Err(self
                .errors
                .note(format!("no answer within {:?}", self.timeout))),
        }
    }
}

/// Logs store errors at most once per 10 s, with the count of those it held back.
#[derive(Default)]
pub struct LogGate {
    last_ms: AtomicU64,
    held_back: AtomicU64,
}

impl LogGate {
    fn note(&self, err: String) -> String {
        let now = super::clock_ms();
        let last = self.last_ms.load(Ordering::Relaxed);
        if (last == 0 || now.saturating_sub(last) >= 10_000)
            && self
                .last_ms
                .compare_exchange(last, now.max(1), Ordering::AcqRel, Ordering::Relaxed)
                .is_ok()
        {
            let held = self.held_back.swap(0, Ordering::Relaxed);
            log::warn!("rate limit store (redis) failed: {err} ({held} more failures since the last report)");
        } else {
            self.held_back.fetch_add(1, Ordering::Relaxed);
        }
        err
    }
}
