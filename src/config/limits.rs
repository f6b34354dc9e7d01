//! `rate_limits`, `redis` and the route key `rate_limit`: schema and validation.

use std::time::Duration;

use http::HeaderName;
use serde_yaml::Value;

use super::reader::{key_path, Reader};

/// What a policy counts requests by.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LimitKey {
    ClientIp,
    Header(HeaderName),
    /// A claim of the verified JWT.
    Jwt(String),
    /// The route itself: one budget shared by every client of the route.
    Route,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LimitStore {
    Local,
    Redis,
}

/// `rate_limits.<name>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RateLimitConfig {
    pub name: String,
    pub key: LimitKey,
    pub limit: u32,
    pub window: Duration,
    pub store: LimitStore,
    /// Redis only: whether requests pass (`true`) or are refused when Redis fails.
    pub allow_on_store_error: bool,
    /// Local only: most distinct keys tracked; past it, new keys share one overflow budget.
    pub max_keys: usize,
}

/// `redis`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RedisConfig {
    pub url: String,
    pub timeout: Duration,
}

pub const DEFAULT_MAX_KEYS: usize = 100_000;

pub(super) fn read_rate_limits(r: &mut Reader, path: &str, value: &Value) -> Vec<RateLimitConfig> {
    let mut out = Vec::new();
    for (name, v) in r.named_table(path, value) {
        let p = key_path(path, &name);
        if !super::schema::is_name(&name) {
            r.error(&p, "names use letters, digits, '_' and '-' only");
        }
        let Some(t) = r.table(
            &p,
            v,
            &[
                "key",
                "limit",
                "window",
                "store",
                "on_store_error",
                "max_keys",
            ],
        ) else {
            continue;
        };
        let kp = key_path(&p, "key");
        let key = match t.get("key").map(|v| r.string(&kp, v)) {
            None => {
                r.error(
                    &kp,
                    "is required (client_ip, header:<Name>, jwt:<claim> or route)",
                );
                None
            }
            Some(None) => None,
            Some(Some(text)) => parse_limit_key(r, &kp, &text),
        };
        let lp = key_path(&p, "limit");
        let limit = match t.get("limit") {
            Some(v) => r.integer(&lp, v, 1, u32::MAX as u64).map(|n| n as u32),
            None => {
                r.error(&lp, "is required");
                None
            }
        };
        let wp = key_path(&p, "window");
        let window = match t.get("window") {
            Some(v) => r.duration(&wp, v),
            None => {
                r.error(&wp, "is required");
                None
            }
        };
        if let Some(w) = window {
            if w < Duration::from_millis(100) || w > Duration::from_secs(86_400) {
                r.error(&wp, "must be between 100ms and 24h");
            }
        }
        let sp = key_path(&p, "store");
        let store = r.choice(
            &sp,
            t.get("store"),
            "store",
            &[("local", LimitStore::Local), ("redis", LimitStore::Redis)],
            LimitStore::Local,
        );
        let ep = key_path(&p, "on_store_error");
        let allow_on_store_error = r.choice(
            &ep,
            t.get("on_store_error"),
            "choice",
            &[("allow", true), ("deny", false)],
            true,
        );
        if t.get("on_store_error").is_some() && store != LimitStore::Redis {
            r.error(&ep, "only applies with store: redis");
        }
        let max_keys = match t.get("max_keys") {
            Some(v) => {
                if store != LimitStore::Local {
                    r.error(&key_path(&p, "max_keys"), "only applies with store: local");
                }
                r.integer(&key_path(&p, "max_keys"), v, 1, 100_000_000)
                    .map_or(DEFAULT_MAX_KEYS, |n| n as usize)
            }
            None => DEFAULT_MAX_KEYS,
        };
        if let (Some(key), Some(limit), Some(window)) = (key, limit, window) {
            out.push(RateLimitConfig {
                name,
                key,
                limit,
                window,
                store,
                allow_on_store_error,
                max_keys,
            });
        }
    }
    out
}

fn parse_limit_key(r: &mut Reader, path: &str, text: &str) -> Option<LimitKey> {
    match text {
        "client_ip" => return Some(LimitKey::ClientIp),
        "route" => return Some(LimitKey::Route),
        _ => {}
    }
    if let Some(claim) = text.strip_prefix("jwt:") {
        if claim.trim().is_empty() {
            r.error(path, "jwt: needs a claim name, e.g. jwt:sub");
            return None;
        }
        return Some(LimitKey::Jwt(claim.trim().to_string()));
    }
    if let Some(name) = text.strip_prefix("header:") {
        return match HeaderName::from_bytes(name.trim().as_bytes()) {
            Ok(h) => Some(LimitKey::Header(h)),
            Err(_) => {
                r.error(path, format!("\"{name}\" is not a valid header name"));
                None
            }
        };
    }
    r.error(
        path,
        format!("unknown key \"{text}\" (client_ip, header:<Name>, jwt:<claim> or route)"),
    );
    None
}

pub(super) fn read_redis(r: &mut Reader, path: &str, value: &Value) -> Option<RedisConfig> {
    let t = r.table(path, value, &["url", "timeout"])?;
    let up = key_path(path, "url");
    let url = match t.get("url") {
        Some(v) => r.string(&up, v)?,
        None => {
            r.error(&up, "is required");
            return None;
        }
    };
    if url.starts_with("rediss://") {
        r.error(
            &up,
            "rediss:// (TLS to Redis) is not supported by this build; use redis:// or unix://",
        );
    } else if !(url.starts_with("redis://") || url.starts_with("unix://")) {
        r.error(&up, format!("\"{url}\" is not a redis:// or unix:// URL"));
    }
    let timeout = t
        .get("timeout")
        .and_then(|v| r.duration(&key_path(path, "timeout"), v))
        .unwrap_or(Duration::from_millis(50));
    Some(RedisConfig { url, timeout })
}
