//! Rate limiting: named sliding-window policies, keyed by client IP, a header, a JWT claim or
//! the route, counted in a sharded in-memory store or in Redis when several gateway instances
//! share one limit.
//!
//! A request whose key is missing (no such header, no token for a `jwt:` key) is counted by
//! its client IP. A route's policies are checked in order and all must allow; a refusal stops
//! the checks, so policies before it have already counted the request.

pub mod local;
pub mod redis_store;
pub mod window;

use std::net::IpAddr;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use http::{HeaderName, HeaderValue};
use pingora_core::server::ShutdownWatch;
use pingora_core::services::background::BackgroundService;

use crate::auth::Identity;
use crate::config::{LimitKey, LimitStore, RateLimitConfig, RedisConfig};
use crate::request::HeaderView;
use local::LocalStore;
use redis_store::RedisStore;
pub use window::Verdict;

/// Milliseconds on the process's monotonic clock.
pub fn clock_ms() -> u64 {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    EPOCH.get_or_init(Instant::now).elapsed().as_millis() as u64
}

enum Store {
    Local(LocalStore),
    Redis {
        store: Arc<RedisStore>,
        allow_on_error: bool,
    },
}

pub struct Policy {
    pub name: Box<str>,
    /// What it was built from: a reload keeps the policy (and its counters) when unchanged.
    config: RateLimitConfig,
    /// `portcullis_rate_limited_total{policy}`.
    pub rejections: prometheus::IntCounter,
    key: LimitKey,
    limit: u32,
    window_ms: u64,
    store: Store,
    /// `RateLimit-Policy` value, built once.
    policy_header: HeaderValue,
    /// The lean path's lines that do not change between requests, built once:
    /// `ratelimit-limit: N\r\n`, `ratelimit-policy: ...\r\n` and `ratelimit: "name";r=`.
    limit_line: Box<[u8]>,
    policy_line: Box<[u8]>,
    ratelimit_prefix: Box<[u8]>,
}

/// What identifies a request, for keys.
pub struct KeyParts<'a> {
    pub client_ip: Option<IpAddr>,
    pub headers: HeaderView<'a>,
    pub identity: Option<&'a Identity>,
    pub route: &'a str,
}

/// A route's verdict: the refusing policy, or the tightest one that allowed.
#[derive(Debug, Clone, Copy)]
pub struct RouteVerdict {
    pub policy: usize,
    pub verdict: Verdict,
}

pub struct RateLimits {
    policies: Vec<Arc<Policy>>,
    /// The Redis connection and the config it was made from, when a policy uses Redis.
    redis: Option<(RedisConfig, Arc<RedisStore>)>,
}

impl RateLimits {
    /// Builds the policies. With `previous` (a reload), a policy whose config is unchanged is
    /// kept as it is, counters and all, and so is an unchanged Redis connection.
    pub fn build(
        cfgs: &[RateLimitConfig],
        redis: Option<&RedisConfig>,
        previous: Option<&RateLimits>,
    ) -> Result<RateLimits, String> {
        let shared = match redis {
            Some(r) if cfgs.iter().any(|c| c.store == LimitStore::Redis) => {
                match previous.and_then(|p| p.redis.as_ref()) {
                    Some((old, store)) if old == r => Some((r.clone(), store.clone())),
                    _ => Some((r.clone(), Arc::new(RedisStore::new(r)?))),
                }
            }
            _ => None,
        };
        let same_redis = match (previous.and_then(|p| p.redis.as_ref()), &shared) {
            (Some((a, _)), Some((b, _))) => a == b,
            _ => false,
        };
        let mut policies = Vec::with_capacity(cfgs.len());
        for c in cfgs {
            let kept = previous
                .and_then(|p| p.policies.iter().find(|old| old.config == *c))
                .filter(|old| matches!(old.store, Store::Local(_)) || same_redis);
            if let Some(old) = kept {
                policies.push(old.clone());
                continue;
            }
            let window_ms = c.window.as_millis().max(1) as u64;
            let store = match (c.store, &shared) {
                (LimitStore::Redis, Some((_, s))) => Store::Redis {
                    store: s.clone(),
                    allow_on_error: c.allow_on_store_error,
                },
                _ => Store::Local(LocalStore::new(window_ms, c.limit, c.max_keys)),
            };
            let policy_header = HeaderValue::from_str(&format!(
                "\"{}\";q={};w={}",
                c.name,
                c.limit,
                c.window.as_secs().max(1)
            ))
            .map_err(|e| e.to_string())?;
            let limit_line = format!("ratelimit-limit: {}\r\n", c.limit)
                .into_bytes()
                .into();
            let policy_line = [
                b"ratelimit-policy: ".as_slice(),
                policy_header.as_bytes(),
                b"\r\n",
            ]
            .concat()
            .into();
            let ratelimit_prefix = format!("ratelimit: \"{}\";r=", c.name).into_bytes().into();
            policies.push(Arc::new(Policy {
                name: c.name.as_str().into(),
                config: c.clone(),
                rejections: crate::observability::metrics().rate_limited(&c.name),
                key: c.key.clone(),
                limit: c.limit,
                window_ms,
                store,
                policy_header,
                limit_line,
                policy_line,
                ratelimit_prefix,
            }));
        }
        Ok(RateLimits {
            policies,
            redis: shared,
        })
    }

    pub fn index_of(&self, name: &str) -> Option<usize> {
        self.policies.iter().position(|p| &*p.name == name)
    }

    pub fn policy(&self, i: usize) -> &Policy {
        &self.policies[i]
    }

    /// Checks every listed policy; stops at the first refusal.
    pub async fn check_route(
        &self,
        indexes: &[usize],
        parts: &KeyParts<'_>,
    ) -> Option<RouteVerdict> {
        let mut tightest: Option<RouteVerdict> = None;
        let mut key = Vec::with_capacity(64);
        for &i in indexes {
            let p = &self.policies[i];
            key.clear();
            p.key_bytes(parts, &mut key);
            bound_key(&mut key);
            let verdict = match &p.store {
                Store::Local(s) => s.check(&key, clock_ms()),
                Store::Redis {
                    store,
                    allow_on_error,
                } => {
                    // Boxed: a Redis round trip's future is large, and a local-store request's
                    // future would otherwise carry (and, when boxed, copy) its size.
                    let redis_key = redis_key(&p.name, &key);
                    match Box::pin(store.check(&redis_key, p.window_ms, p.limit)).await {
                        Ok(v) => v,
                        // Failing open: this policy says nothing, neither a refusal nor headers.
                        Err(_) if *allow_on_error => continue,
                        Err(_) => Verdict {
                            allowed: false,
                            limit: p.limit,
                            remaining: 0,
                            reset_ms: p.window_ms,
                            retry_after_ms: 1000,
                        },
                    }
                }
            };
            let this = RouteVerdict { policy: i, verdict };
            if !verdict.allowed {
                p.rejections.inc();
                return Some(this);
            }
            if tightest.is_none_or(|t| verdict.remaining < t.verdict.remaining) {
                tightest = Some(this);
            }
        }
        tightest
    }

    /// The response headers for a verdict (IETF draft fields plus the common pair).
    pub fn headers(&self, v: &RouteVerdict) -> Vec<(HeaderName, HeaderValue)> {
        let mut out = Vec::with_capacity(6);
        self.each_header(v, |name, value| {
            if let Ok(value) = HeaderValue::from_bytes(value) {
                out.push((HeaderName::from_static(name), value));
            }
        });
        out
    }

    /// The same headers as `name: value` lines, for the lean HTTP/1.1 path, which writes
    /// heads as bytes (no header map, no allocation per value).
    pub fn write_header_lines(&self, v: &RouteVerdict, out: &mut Vec<u8>) {
        let Some(p) = self.policies.get(v.policy) else {
            return;
        };
        // The lines of `each_header`, with what never changes written once per policy.
        let reset = v.verdict.reset_ms.div_ceil(1000);
        let (mut num, mut remaining) = (itoa::Buffer::new(), itoa::Buffer::new());
        let remaining = remaining.format(v.verdict.remaining).as_bytes();
        out.extend_from_slice(&p.limit_line);
        out.extend_from_slice(b"ratelimit-remaining: ");
        out.extend_from_slice(remaining);
        out.extend_from_slice(b"\r\nratelimit-reset: ");
        out.extend_from_slice(num.format(reset).as_bytes());
        out.extend_from_slice(b"\r\n");
        out.extend_from_slice(&p.policy_line);
        out.extend_from_slice(&p.ratelimit_prefix);
        out.extend_from_slice(remaining);
        out.extend_from_slice(b";t=");
        out.extend_from_slice(num.format(reset).as_bytes());
        out.extend_from_slice(b"\r\n");
        if !v.verdict.allowed {
            let secs = v.verdict.retry_after_ms.div_ceil(1000).max(1);
            out.extend_from_slice(b"retry-after: ");
            out.extend_from_slice(num.format(secs).as_bytes());
            out.extend_from_slice(b"\r\n");
        }
    }

    /// Every response header of a verdict, in order; numbers are formatted on the stack.
    fn each_header(&self, v: &RouteVerdict, mut emit: impl FnMut(&'static str, &[u8])) {
        let p = &self.policies[v.policy];
        let reset = v.verdict.reset_ms.div_ceil(1000);
        let mut num = itoa::Buffer::new();
        emit("ratelimit-limit", num.format(p.limit).as_bytes());
        emit(
            "ratelimit-remaining",
            num.format(v.verdict.remaining).as_bytes(),
        );
        emit("ratelimit-reset", num.format(reset).as_bytes());
        emit("ratelimit-policy", p.policy_header.as_bytes());
        // `"name";r=N;t=N`, assembled without `format!` (this runs on every limited
        // request). Names are at most 64 bytes, so it fits; were it not to, the field
        // would be left out rather than cut.
        let mut line = [0u8; 192];
        let mut at = 0;
        let mut push = |part: &[u8]| {
            let end = at + part.len();
            let fits = line.get_mut(at..end).map(|s| s.copy_from_slice(part));
            at = if fits.is_some() { end } else { line.len() + 1 };
        };
        push(b"\"");
        push(p.name.as_bytes());
        push(b"\";r=");
        push(num.format(v.verdict.remaining).as_bytes());
        push(b";t=");
        push(num.format(reset).as_bytes());
        if let Some(text) = line.get(..at) {
            emit("ratelimit", text);
        }
        if !v.verdict.allowed {
            let secs = v.verdict.retry_after_ms.div_ceil(1000).max(1);
            emit("retry-after", num.format(secs).as_bytes());
        }
    }
    /// Sweeps idle keys from every local store.
    pub fn sweep(&self) -> usize {
        let now = clock_ms();
        self.policies
            .iter()
            .map(|p| match &p.store {
                Store::Local(s) => s.sweep(now),
                Store::Redis { .. } => 0,
            })
            .sum()
    }

    pub fn is_empty(&self) -> bool {
        self.policies.is_empty()
    }
}

impl Policy {
    /// The request's key for this policy, tagged by kind so that kinds never collide.
    fn key_bytes(&self, parts: &KeyParts<'_>, out: &mut Vec<u8>) {
        match &self.key {
            LimitKey::Route => {
                out.push(b'r');
                out.extend_from_slice(parts.route.as_bytes());
                return;
            }
            LimitKey::Header(name) => {
                if let Some(v) = parts.headers.get(name) {
                    out.push(b'h');
                    out.extend_from_slice(v);
                    return;
                }
            }
            LimitKey::Jwt(claim) => {
                if let Some(v) = parts.identity.and_then(|id| id.claim_bytes(claim)) {
                    out.push(b'j');
                    out.extend_from_slice(&v);
                    return;
                }
            }
            LimitKey::ClientIp => {}
        }
        out.push(b'i');
        match parts.client_ip {
            Some(IpAddr::V4(a)) => out.extend_from_slice(&a.octets()),
            Some(IpAddr::V6(a)) => out.extend_from_slice(&a.octets()),
            None => {}
        }
    }
}

/// Longest key stored as it is; longer ones (a huge header value) are stored as a 128-bit
/// hash, so that the memory bound of a store is in keys and a key's size is bounded too.
pub const MAX_KEY_BYTES: usize = 64;

fn bound_key(key: &mut Vec<u8>) {
    use std::hash::{Hash, Hasher};
    if key.len() <= MAX_KEY_BYTES {
        return;
    }
    // SipHash with fixed keys: the same on every instance of this binary (Redis keys must
    // agree across gateways); collisions at 128 bits are not a practical concern.
    let mut h1 = std::collections::hash_map::DefaultHasher::new();
    key.hash(&mut h1);
    let mut h2 = std::collections::hash_map::DefaultHasher::new();
    0xA5u8.hash(&mut h2);
    key.hash(&mut h2);
    let (a, b) = (h1.finish(), h2.finish());
    key.clear();
    key.push(b'#');
    key.extend_from_slice(&a.to_be_bytes());
    key.extend_from_slice(&b.to_be_bytes());
}

/// A Redis key: a hash tag of policy and key, hex-encoded so any bytes are safe.
fn redis_key(policy: &str, key: &[u8]) -> String {
    let mut s = String::with_capacity(16 + policy.len() + key.len() * 2);
    s.push_str("portcullis:rl:{");
    s.push_str(policy);
    s.push(':');
    for b in key {
        s.push_str(&format!("{b:02x}"));
    }
    s.push('}');
    s
}

/// Sweeps idle keys from the current runtime's local stores every few seconds.
pub struct Sweeper {
    pub shared: Arc<crate::runtime::SharedRuntime>,
}

#[async_trait]
impl BackgroundService for Sweeper {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        loop {
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_secs(5)) => {}
                _ = shutdown.changed() => return,
            }
            let removed = self.shared.load().rate_limits.sweep();
            if removed > 0 {
                log::debug!("rate limits: swept {removed} idle keys");
            }
        }
    }
}

/// The names [`RateLimits::write_header_lines`] may write: an upstream's own copies are dropped.
pub const HEADER_NAMES: [&str; 6] = [
    "ratelimit-limit",
    "ratelimit-remaining",
    "ratelimit-reset",
    "ratelimit-policy",
    "ratelimit",
    "retry-after",
];

#[cfg(test)]
mod tests {
    use super::{bound_key, RateLimits, RouteVerdict};
    use crate::ratelimit::window::Verdict;

    fn limits(name: &str) -> RateLimits {
        let yaml = format!(
            "upstreams:\n  u: {{ backends: [\"127.0.0.1:9\"] }}\n\
             rate_limits:\n  {name}: {{ key: client_ip, limit: 10, window: 1m }}\n\
             routes:\n  - {{ name: r, match: {{ path_prefix: / }}, upstream: u, rate_limit: [{name}] }}\n"
        );
        let cfg = crate::config::parse(&yaml).unwrap_or_else(|e| panic!("{e:?}"));
        RateLimits::build(&cfg.rate_limits, None, None).unwrap()
    }

    #[test]
    fn header_lines_spell_the_verdict() {
        let refused = RouteVerdict {
            policy: 0,
            verdict: Verdict {
                allowed: false,
                limit: 10,
                remaining: 0,
                reset_ms: 1500,
                retry_after_ms: 1001,
            },
        };
        let mut out = Vec::new();
        limits("per_ip").write_header_lines(&refused, &mut out);
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "ratelimit-limit: 10\r\nratelimit-remaining: 0\r\nratelimit-reset: 2\r\n\
             ratelimit-policy: \"per_ip\";q=10;w=60\r\nratelimit: \"per_ip\";r=0;t=2\r\nretry-after: 2\r\n"
        );
        let allowed = RouteVerdict {
            policy: 0,
            verdict: Verdict {
                allowed: true,
                limit: 10,
                remaining: 1234567,
                reset_ms: 60_000,
                retry_after_ms: 0,
            },
        };
        // Both renderings (lines for the lean path, a header list for Pingora's) agree.
        for v in [&refused, &allowed] {
            let limits = limits("per_ip");
            let mut lines = Vec::new();
            limits.write_header_lines(v, &mut lines);
            let from_list: String = limits
                .headers(v)
                .iter()
                .map(|(n, v)| format!("{n}: {}\r\n", v.to_str().unwrap()))
                .collect();
            assert_eq!(String::from_utf8(lines).unwrap(), from_list);
        }
        // The longest name a config allows still fits the line whole.
        let longest = "p".repeat(64);
        let headers = limits(&longest).headers(&allowed);
        let field = |n: &str| headers.iter().find(|(h, _)| h == n).map(|(_, v)| v.clone());
        assert_eq!(field("ratelimit-remaining").unwrap(), "1234567");
        assert_eq!(field("retry-after"), None);
        assert_eq!(
            field("ratelimit").unwrap(),
            format!("\"{longest}\";r=1234567;t=60").as_str()
        );
    }

    #[test]
    fn long_keys_are_hashed_to_a_fixed_size() {
        let mut short = b"hshort".to_vec();
        bound_key(&mut short);
        assert_eq!(short, b"hshort");
        let mut a = [b"h".as_slice(), &[b'x'; 5000]].concat();
        let mut b = [b"h".as_slice(), &[b'x'; 4999], b"y"].concat();
        bound_key(&mut a);
        bound_key(&mut b);
        assert_eq!(a.len(), 17);
        assert_ne!(a, b);
    }
}
