//! The typed config model and the code that reads it from YAML, checking as it goes.
//!
//! Defaults live here, next to the keys they belong to; `docs/config.md` mirrors them.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::time::Duration;

use http::{HeaderName, Method};
use serde_yaml::Value;

use super::aggregate::{read_aggregate, AggregateConfig};
use super::auth::{read_auth, string_list, AuthMode, JwtConfig};
use super::limits::{
    read_rate_limits, read_redis, LimitKey, LimitStore, RateLimitConfig, RedisConfig,
};
use super::reader::{index_path, key_path, ConfigErrors, Reader, Table};
use crate::routing::pattern::{PathPattern, PrefixPattern};

/// The whole gateway configuration, validated.
#[derive(Debug, Clone)]
pub struct Config {
    pub server: ServerConfig,
    /// `auth.jwt`; `None`: no route may authenticate.
    pub jwt: Option<JwtConfig>,
    pub rate_limits: Vec<RateLimitConfig>,
    pub redis: Option<RedisConfig>,
    pub upstreams: Vec<UpstreamConfig>,
    pub routes: Vec<RouteConfig>,
}

/// `server`: listeners, process settings and client-side limits.
#[derive(Debug, Clone, PartialEq)]
pub struct ServerConfig {
    pub listen: Vec<SocketAddr>,
    pub admin_listen: SocketAddr,
    pub threads: usize,
    pub pid_file: String,
    pub upgrade_sock: String,
    pub grace_period: Duration,
    pub graceful_shutdown_timeout: Duration,
    pub max_request_header_bytes: usize,
    pub max_request_body_bytes: u64,
    pub request_header_timeout: Duration,
    pub idle_timeout: Duration,
    pub keepalive_requests: u32,
    pub access_log: AccessLogTarget,
    /// Client connections open at once; beyond: 503 and close.
    pub max_connections: usize,
    /// The whole request body must arrive within this after the head (408).
    pub request_body_timeout: Duration,
    /// A client that takes longer than this to accept a write of the response is cut off.
    pub response_write_timeout: Duration,
    /// First allocation for a request head, made when a request's first bytes arrive.
    pub request_head_buffer_bytes: usize,
    /// Pingora's per-connection L4 read buffer (0: none).
    pub connection_read_buffer_bytes: usize,
    /// Pingora's per-connection L4 write buffer (0: none).
    pub connection_write_buffer_bytes: usize,
}

/// `server.access_log`: where the one-JSON-line-per-request log goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AccessLogTarget {
    Off,
    Stdout,
    /// Appended to; reopened on SIGHUP so that log rotation works.
    File(std::path::PathBuf),
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            listen: vec![SocketAddr::from(([0, 0, 0, 0], 8080))],
            admin_listen: SocketAddr::from(([127, 0, 0, 1], 9091)),
            threads: std::thread::available_parallelism().map_or(1, |n| n.get()),
            pid_file: "/run/portcullis/portcullis.pid".into(),
            upgrade_sock: "/run/portcullis/upgrade.sock".into(),
            grace_period: Duration::from_secs(30),
            graceful_shutdown_timeout: Duration::from_secs(10),
            max_request_header_bytes: 65536,
            max_request_body_bytes: 10 * 1024 * 1024,
            request_header_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(60),
            keepalive_requests: 10_000,
            access_log: AccessLogTarget::Off,
            max_connections: 100_000,
            request_body_timeout: Duration::from_secs(30),
            response_write_timeout: Duration::from_secs(30),
            request_head_buffer_bytes: 1024,
            connection_read_buffer_bytes: 0,
            connection_write_buffer_bytes: 0,
        }
    }
}

/// `upstreams.<name>`: a cluster of interchangeable backends.
#[derive(Debug, Clone, PartialEq)]
pub struct UpstreamConfig {
    pub name: String,
    pub backends: Vec<BackendConfig>,
    pub lb: LbPolicy,
    pub hash_key: HashKey,
    pub health_check: Option<HealthCheckConfig>,
    pub connect_timeout: Duration,
    pub read_timeout: Duration,
    pub pool_idle_timeout: Duration,
    pub retries: u32,
    pub tls: bool,
    pub sni: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackendConfig {
    pub addr: SocketAddr,
    pub weight: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LbPolicy {
    RoundRobin,
    Random,
    ConsistentHash,
}

/// What a consistent-hash cluster hashes on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HashKey {
    ClientIp,
    Header(HeaderName),
    /// A claim of the verified JWT; anonymous requests hash on the client IP.
    Jwt(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HealthCheckKind {
    Http { path: String, expect_status: u16 },
    Tcp,
}

/// `upstreams.<name>.health_check`: an active check run in the background.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HealthCheckConfig {
    pub kind: HealthCheckKind,
    pub interval: Duration,
    pub timeout: Duration,
    pub healthy_threshold: usize,
    pub unhealthy_threshold: usize,
}

/// `routes[i]`: which requests go where.
#[derive(Debug, Clone)]
pub struct RouteConfig {
    pub name: String,
    pub path: RoutePath,
    /// `None`: any method.
    pub methods: Option<Vec<Method>>,
    /// Lower-cased, without port. `None`: any host.
    pub host: Option<String>,
    /// The cluster requests go to; `None` for a composite route.
    pub upstream: Option<String>,
    /// A composite endpoint instead of an upstream.
    pub aggregate: Option<AggregateConfig>,
    pub strip_prefix: Option<String>,
    pub auth: AuthMode,
    /// Names of `rate_limits` policies; every one must allow the request.
    pub rate_limit: Vec<String>,
    /// All must be granted by the token's `scope` (space-separated) or `scp` (array).
    pub required_scopes: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RoutePath {
    /// `match.path`: an exact path, possibly with `{param}` segments.
    Exact(PathPattern),
    /// `match.path_prefix`: a segment-aware literal prefix.
    Prefix(PrefixPattern),
}

pub(super) fn read(root: &Value) -> Result<Config, ConfigErrors> {
    let mut r = Reader::default();
    let empty = Value::Mapping(Default::default());
    let root = if root.is_null() { &empty } else { root };
    let Some(top) = r.table(
        "",
        root,
        &[
            "server",
            "auth",
            "redis",
            "rate_limits",
            "upstreams",
            "routes",
        ],
    ) else {
        return Err(r.into_errors());
    };

    let server = match top.get("server") {
        Some(v) => read_server(&mut r, "server", v),
        None => ServerConfig::default(),
    };

    let jwt = top.get("auth").and_then(|v| read_auth(&mut r, "auth", v));
    let has_jwt = jwt.is_some();
    let redis = top
        .get("redis")
        .and_then(|v| read_redis(&mut r, "redis", v));
    let rate_limits = top
        .get("rate_limits")
        .map(|v| read_rate_limits(&mut r, "rate_limits", v))
        .unwrap_or_default();
    for rl in &rate_limits {
        let p = key_path("rate_limits", &rl.name);
        if rl.store == LimitStore::Redis && redis.is_none() {
            r.error(
                &key_path(&p, "store"),
                "store: redis needs the redis section",
            );
        }
        if matches!(rl.key, LimitKey::Jwt(_)) && !has_jwt {
            r.error(&key_path(&p, "key"), "jwt: keys need auth.jwt");
        }
    }
    let policy_names: Vec<String> = rate_limits.iter().map(|p| p.name.clone()).collect();

    let mut upstreams = Vec::new();
    let mut upstream_names = Vec::new();
    match top.get("upstreams") {
        Some(v) => {
            for (name, value) in r.named_table("upstreams", v) {
                upstream_names.push(name.clone());
                let path = key_path("upstreams", &name);
                if let Some(u) = read_upstream(&mut r, &path, name, value) {
                    if matches!(u.hash_key, HashKey::Jwt(_)) && !has_jwt {
                        r.error(&key_path(&path, "hash_key"), "jwt: keys need auth.jwt");
                    }
                    upstreams.push(u);
                }
            }
        }
        None => r.error("upstreams", "at least one upstream is required"),
    }

    let mut routes = Vec::new();
    match top.get("routes") {
        Some(v) => {
            let items = r.list("routes", v);
            if items.is_empty() && matches!(v, Value::Sequence(_)) {
                r.error("routes", "at least one route is required");
            }
            check_route_references(&mut r, items, &upstream_names);
            for (i, item) in items.iter().enumerate() {
                if let Some(route) = read_route(
                    &mut r,
                    &index_path("routes", i),
                    item,
                    has_jwt,
                    &policy_names,
                    &upstream_names,
                ) {
                    routes.push((i, route));
                }
            }
        }
        None => r.error("routes", "at least one route is required"),
    }

    check_overlaps(&mut r, &routes);
    r.finish()?;
    Ok(Config {
        server,
        jwt,
        rate_limits,
        redis,
        upstreams,
        routes: routes.into_iter().map(|(_, route)| route).collect(),
    })
}

fn read_server(r: &mut Reader, path: &str, value: &Value) -> ServerConfig {
    let mut s = ServerConfig::default();
    let Some(t) = r.table(
        path,
        value,
        &[
            "listen",
            "admin_listen",
            "threads",
            "pid_file",
            "upgrade_sock",
            "grace_period",
            "graceful_shutdown_timeout",
            "max_request_header_bytes",
            "max_request_body_bytes",
            "request_header_timeout",
            "idle_timeout",
            "keepalive_requests",
            "access_log",
            "max_connections",
            "request_body_timeout",
            "response_write_timeout",
            "request_head_buffer_bytes",
            "connection_read_buffer_bytes",
            "connection_write_buffer_bytes",
        ],
    ) else {
        return s;
    };
    if let Some(v) = t.get("listen") {
        let p = key_path(path, "listen");
        let items = r.list(&p, v);
        if items.is_empty() && matches!(v, Value::Sequence(_)) {
            r.error(&p, "at least one address is required");
        }
        let mut listen = Vec::new();
        for (i, item) in items.iter().enumerate() {
            if let Some(a) = read_addr(r, &index_path(&p, i), item) {
                if listen.contains(&a) {
                    r.error(&index_path(&p, i), format!("{a} is listed twice"));
                }
                listen.push(a);
            }
        }
        s.listen = listen;
    }
    if let Some(v) = t.get("admin_listen") {
        if let Some(a) = read_addr(r, &key_path(path, "admin_listen"), v) {
            if s.listen.contains(&a) {
                r.error(
                    &key_path(path, "admin_listen"),
                    format!("{a} is also in server.listen"),
                );
            }
            s.admin_listen = a;
        }
    }
    set(
        &mut s.threads,
        int(r, &t, path, "threads", 1, 1024).map(|n| n as usize),
    );
    set(&mut s.pid_file, abs_path(r, &t, path, "pid_file"));
    set(&mut s.upgrade_sock, abs_path(r, &t, path, "upgrade_sock"));
    set(&mut s.grace_period, dur(r, &t, path, "grace_period"));
    set(
        &mut s.graceful_shutdown_timeout,
        dur(r, &t, path, "graceful_shutdown_timeout"),
    );
    set(
        &mut s.max_request_header_bytes,
        int(r, &t, path, "max_request_header_bytes", 1024, 1 << 20).map(|n| n as usize),
    );
    set(
        &mut s.max_request_body_bytes,
        int(r, &t, path, "max_request_body_bytes", 0, u64::MAX >> 1),
    );
    set(
        &mut s.request_header_timeout,
        dur(r, &t, path, "request_header_timeout"),
    );
    set(&mut s.idle_timeout, dur(r, &t, path, "idle_timeout"));
    set(
        &mut s.keepalive_requests,
        int(r, &t, path, "keepalive_requests", 1, u32::MAX as u64).map(|n| n as u32),
    );
    set(
        &mut s.max_connections,
        int(r, &t, path, "max_connections", 1, 10_000_000).map(|n| n as usize),
    );
    set(
        &mut s.request_body_timeout,
        dur(r, &t, path, "request_body_timeout"),
    );
    set(
        &mut s.response_write_timeout,
        dur(r, &t, path, "response_write_timeout"),
    );
    set(
        &mut s.request_head_buffer_bytes,
        int(r, &t, path, "request_head_buffer_bytes", 64, 1 << 20).map(|n| n as usize),
    );
    set(
        &mut s.connection_read_buffer_bytes,
        int(r, &t, path, "connection_read_buffer_bytes", 0, 1 << 20).map(|n| n as usize),
    );
    set(
        &mut s.connection_write_buffer_bytes,
        int(r, &t, path, "connection_write_buffer_bytes", 0, 1 << 20).map(|n| n as usize),
    );
    if let Some(v) = t.get("access_log") {
        let p = key_path(path, "access_log");
        match r.string(&p, v).as_deref() {
            None => {}
            Some("off") => s.access_log = AccessLogTarget::Off,
            Some("stdout") => s.access_log = AccessLogTarget::Stdout,
            Some(file) if file.starts_with('/') => {
                s.access_log = AccessLogTarget::File(file.into());
            }
            Some(_) => r.error(&p, "must be off, stdout or an absolute file path"),
        }
    }
    s
}

fn read_upstream(
    r: &mut Reader,
    path: &str,
    name: String,
    value: &Value,
) -> Option<UpstreamConfig> {
    if !is_name(&name) {
        r.error(path, "names use letters, digits, '_' and '-' only");
    }
    let t = r.table(
        path,
        value,
        &[
            "backends",
            "lb",
            "hash_key",
            "health_check",
            "connect_timeout",
            "read_timeout",
            "pool_idle_timeout",
            "retries",
            "tls",
            "sni",
        ],
    )?;
    let mut backends = Vec::new();
    let bp = key_path(path, "backends");
    match t.get("backends") {
        Some(v) => {
            for (i, item) in r.list(&bp, v).iter().enumerate() {
                let ip = index_path(&bp, i);
                if let Some(b) = read_backend(r, &ip, item) {
                    if backends.iter().any(|x: &BackendConfig| x.addr == b.addr) {
                        r.error(&ip, format!("{} is listed twice", b.addr));
                    }
                    backends.push(b);
                }
            }
            if matches!(v, Value::Sequence(seq) if seq.is_empty()) {
                r.error(&bp, "at least one backend is required");
            }
        }
        None => r.error(&bp, "at least one backend is required"),
    }

    let lb = r.choice(
        &key_path(path, "lb"),
        t.get("lb"),
        "policy",
        &[
            ("round_robin", LbPolicy::RoundRobin),
            ("random", LbPolicy::Random),
            ("consistent_hash", LbPolicy::ConsistentHash),
        ],
        LbPolicy::RoundRobin,
    );
    let hp = key_path(path, "hash_key");
    let hash_key = match t.get("hash_key") {
        None => HashKey::ClientIp,
        Some(v) => {
            if lb != LbPolicy::ConsistentHash {
                r.error(&hp, "only applies with lb: consistent_hash");
            }
            match r.string(&hp, v) {
                Some(s) => parse_hash_key(r, &hp, &s),
                None => HashKey::ClientIp,
            }
        }
    };
    let health_check = t
        .get("health_check")
        .and_then(|v| read_health_check(r, &key_path(path, "health_check"), v));
    let tls = t
        .get("tls")
        .and_then(|v| r.boolean(&key_path(path, "tls"), v))
        .unwrap_or(false);
    let sni = t
        .get("sni")
        .and_then(|v| r.string(&key_path(path, "sni"), v))
        .unwrap_or_default();
    if !sni.is_empty() && !tls {
        r.error(&key_path(path, "sni"), "only applies with tls: true");
    }
    if tls && sni.is_empty() {
        // Without a name Pingora cannot verify the backend's certificate.
        r.error(
            &key_path(path, "sni"),
            "is required with tls: true (the name to verify)",
        );
    }
    Some(UpstreamConfig {
        name,
        backends,
        lb,
        hash_key,
        health_check,
        connect_timeout: dur(r, &t, path, "connect_timeout").unwrap_or(Duration::from_secs(1)),
        read_timeout: dur(r, &t, path, "read_timeout").unwrap_or(Duration::from_secs(10)),
        pool_idle_timeout: dur(r, &t, path, "pool_idle_timeout").unwrap_or(Duration::from_secs(30)),
        retries: int(r, &t, path, "retries", 0, 16).map_or(1, |n| n as u32),
        tls,
        sni,
    })
}

fn parse_hash_key(r: &mut Reader, path: &str, text: &str) -> HashKey {
    if text == "client_ip" {
        return HashKey::ClientIp;
    }
    if let Some(claim) = text.strip_prefix("jwt:") {
        if claim.trim().is_empty() {
            r.error(path, "jwt: needs a claim name, e.g. jwt:sub");
        }
        return HashKey::Jwt(claim.trim().to_string());
    }
    if let Some(name) = text.strip_prefix("header:") {
        match HeaderName::from_bytes(name.trim().as_bytes()) {
            Ok(h) => return HashKey::Header(h),
            Err(_) => {
                r.error(path, format!("\"{name}\" is not a valid header name"));
                return HashKey::ClientIp;
            }
        }
    }
    r.error(
        path,
        format!("unknown hash key \"{text}\" (client_ip, header:<Name> or jwt:<claim>)"),
    );
    HashKey::ClientIp
}

fn read_backend(r: &mut Reader, path: &str, value: &Value) -> Option<BackendConfig> {
    match value {
        Value::String(_) => read_addr(r, path, value).map(|addr| BackendConfig { addr, weight: 1 }),
        Value::Mapping(_) => {
            let t = r.table(path, value, &["addr", "weight"])?;
            let addr = match t.get("addr") {
                Some(v) => read_addr(r, &key_path(path, "addr"), v),
                None => {
                    r.error(&key_path(path, "addr"), "is required");
                    None
                }
            };
            let weight = int(r, &t, path, "weight", 1, 1000).map_or(1, |n| n as usize);
            addr.map(|addr| BackendConfig { addr, weight })
        }
        other => {
            r.error(
                path,
                format!(
                    "expected \"host:port\" or {{ addr, weight }}, found {}",
                    super::reader::kind(other)
                ),
            );
            None
        }
    }
}

fn read_health_check(r: &mut Reader, path: &str, value: &Value) -> Option<HealthCheckConfig> {
    let t = r.table(
        path,
        value,
        &[
            "kind",
            "path",
            "expect_status",
            "interval",
            "timeout",
            "healthy_threshold",
            "unhealthy_threshold",
        ],
    )?;
    let kp = key_path(path, "kind");
    let is_http = r.choice(
        &kp,
        t.get("kind"),
        "kind",
        &[("http", true), ("tcp", false)],
        true,
    );
    let kind = if is_http {
        let pp = key_path(path, "path");
        let check_path = t
            .get("path")
            .and_then(|v| r.string(&pp, v))
            .unwrap_or_else(|| "/health".into());
        if !check_path.starts_with('/') || check_path.bytes().any(|b| b <= b' ' || b >= 0x7f) {
            r.error(
                &pp,
                "must start with '/' and contain no spaces or control characters",
            );
        }
        let expect_status = int(r, &t, path, "expect_status", 100, 599).map_or(200, |n| n as u16);
        HealthCheckKind::Http {
            path: check_path,
            expect_status,
        }
    } else {
        for key in ["path", "expect_status"] {
            if t.get(key).is_some() {
                r.error(&key_path(path, key), "only applies with kind: http");
            }
        }
        HealthCheckKind::Tcp
    };
    let interval = dur(r, &t, path, "interval").unwrap_or(Duration::from_secs(2));
    let timeout = dur(r, &t, path, "timeout").unwrap_or(Duration::from_secs(1));
    Some(HealthCheckConfig {
        kind,
        interval,
        timeout,
        healthy_threshold: int(r, &t, path, "healthy_threshold", 1, 100).map_or(2, |n| n as usize),
        unhealthy_threshold: int(r, &t, path, "unhealthy_threshold", 1, 100)
            .map_or(3, |n| n as usize),
    })
}

fn read_route(
    r: &mut Reader,
    path: &str,
    value: &Value,
    has_jwt: bool,
    policies: &[String],
    upstream_names: &[String],
) -> Option<RouteConfig> {
    let t = r.table(
        path,
        value,
        &[
            "name",
            "match",
            "upstream",
            "strip_prefix",
            "auth",
            "required_scopes",
            "rate_limit",
            "aggregate",
        ],
    )?;
    let ap = key_path(path, "auth");
    let default_mode = if has_jwt {
        AuthMode::Required
    } else {
        AuthMode::None
    };
    let auth = r.choice(
        &ap,
        t.get("auth"),
        "mode",
        &[
            ("required", AuthMode::Required),
            ("optional", AuthMode::Optional),
            ("none", AuthMode::None),
        ],
        default_mode,
    );
    if auth != AuthMode::None && !has_jwt {
        r.error(&ap, "needs auth.jwt to be configured");
    }
    let rp = key_path(path, "rate_limit");
    let rate_limit = t
        .get("rate_limit")
        .map(|v| {
            let names = string_list(r, &rp, v);
            for (i, n) in names.iter().enumerate() {
                if !policies.contains(n) {
                    r.error(&index_path(&rp, i), format!("unknown rate limit \"{n}\""));
                } else if names[..i].contains(n) {
                    r.error(&index_path(&rp, i), format!("{n} is listed twice"));
                }
            }
            names
        })
        .unwrap_or_default();
    let required_scopes = t
        .get("required_scopes")
        .map(|v| {
            let sp = key_path(path, "required_scopes");
            let scopes = string_list(r, &sp, v);
            if auth == AuthMode::None {
                r.error(&sp, "needs auth: required or optional");
            }
            if let Some(bad) = scopes
                .iter()
                .find(|s| s.is_empty() || s.contains(char::is_whitespace))
            {
                r.error(&sp, format!("\"{bad}\" is not a scope (no spaces)"));
            }
            scopes
        })
        .unwrap_or_default();
    let np = key_path(path, "name");
    let name = match t.get("name") {
        Some(v) => r.string(&np, v),
        None => {
            r.error(&np, "is required");
            None
        }
    };
    if let Some(n) = &name {
        if !is_name(n) {
            r.error(&np, "names use letters, digits, '_' and '-' only");
        }
    }
    let mp = key_path(path, "match");
    let Some(mv) = t.get("match") else {
        r.error(&mp, "is required");
        return None;
    };
    let m = r.table(&mp, mv, &["path", "path_prefix", "methods", "host"])?;
    let route_path = match (m.get("path"), m.get("path_prefix")) {
        (Some(_), Some(_)) => {
            r.error(&mp, "give either path or path_prefix, not both");
            None
        }
        (None, None) => {
            r.error(&mp, "needs path or path_prefix");
            None
        }
        (Some(v), None) => {
            let p = key_path(&mp, "path");
            r.string(&p, v).and_then(|s| match PathPattern::parse(&s) {
                Ok(pattern) => Some(RoutePath::Exact(pattern)),
                Err(e) => {
                    r.error(&p, e);
                    None
                }
            })
        }
        (None, Some(v)) => {
            let p = key_path(&mp, "path_prefix");
            r.string(&p, v)
                .and_then(|s| match PrefixPattern::parse(&s) {
                    Ok(pattern) => Some(RoutePath::Prefix(pattern)),
                    Err(e) => {
                        r.error(&p, e);
                        None
                    }
                })
        }
    };
    let methods = m.get("methods").map(|v| {
        let p = key_path(&mp, "methods");
        let mut out: Vec<Method> = Vec::new();
        for (i, item) in r.list(&p, v).iter().enumerate() {
            let ip = index_path(&p, i);
            if let Some(s) = r.string(&ip, item) {
                match parse_method(&s) {
                    Some(method) if out.contains(&method) => {
                        r.error(&ip, format!("{s} is listed twice"))
                    }
                    Some(method) => out.push(method),
                    None => r.error(&ip, format!("unknown method \"{s}\"")),
                }
            }
        }
        if out.is_empty() && matches!(v, Value::Sequence(s) if s.is_empty()) {
            r.error(
                &p,
                "an empty list matches nothing; leave the key out to allow any method",
            );
        }
        out
    });
    let host = m.get("host").and_then(|v| {
        let p = key_path(&mp, "host");
        let h = r.string(&p, v)?.to_ascii_lowercase();
        if h.is_empty()
            || h.contains(':')
            || h.bytes()
                .any(|b| !(b.is_ascii_alphanumeric() || b == b'.' || b == b'-'))
        {
            r.error(
                &p,
                format!("\"{h}\" is not a host name (no port, no scheme)"),
            );
            return None;
        }
        Some(h)
    });
    let up = key_path(path, "upstream");
    let upstream = t.get("upstream").and_then(|v| r.string(&up, v));
    let aggregate = t.get("aggregate").and_then(|v| {
        let params: Vec<&str> = match &route_path {
            Some(RoutePath::Exact(p)) => p.param_names().collect(),
            _ => Vec::new(),
        };
        read_aggregate(
            r,
            &key_path(path, "aggregate"),
            v,
            &params,
            has_jwt,
            upstream_names,
        )
    });
    match (t.get("upstream").is_some(), t.get("aggregate").is_some()) {
        (true, true) => r.error(path, "give either upstream or aggregate, not both"),
        (false, false) => r.error(&up, "is required (or aggregate, for a composite route)"),
        (false, true) => {
            if t.get("strip_prefix").is_some() {
                r.error(
                    &key_path(path, "strip_prefix"),
                    "does not apply to composite routes",
                );
            }
            // Composite routes answer GET and HEAD; a body has no part to go to.
            if let Some(bad) = methods
                .iter()
                .flatten()
                .find(|m| **m != Method::GET && **m != Method::HEAD)
            {
                r.error(
                    &key_path(&mp, "methods"),
                    format!("composite routes answer GET and HEAD only, not {bad}"),
                );
            }
        }
        (true, false) => {}
    }
    let methods = if t.get("aggregate").is_some() && methods.is_none() {
        Some(vec![Method::GET, Method::HEAD])
    } else {
        methods
    };
    let sp = key_path(path, "strip_prefix");
    let strip_prefix = t
        .get("strip_prefix")
        .and_then(|v| r.string(&sp, v))
        .and_then(|s| {
            let trimmed = s.trim_end_matches('/');
            if !s.starts_with('/') || trimmed.is_empty() {
                r.error(&sp, "must start with '/' and be more than '/'");
                return None;
            }
            if let Some(rp) = &route_path {
                if !rp.starts_with_segments(trimmed) {
                    r.error(
                        &sp,
                        format!("\"{s}\" is not a leading part of the route's path"),
                    );
                    return None;
                }
            }
            Some(trimmed.to_string())
        });
    Some(RouteConfig {
        name: name?,
        path: route_path?,
        methods,
        host,
        upstream,
        aggregate,
        strip_prefix,
        auth,
        rate_limit,
        required_scopes,
    })
}

/// Names must be unique and upstreams must exist; checked on the raw entries so that a route
/// with other problems is still checked.
fn check_route_references(r: &mut Reader, items: &[Value], upstream_names: &[String]) {
    let mut names = HashSet::new();
    for (i, item) in items.iter().enumerate() {
        let path = index_path("routes", i);
        if let Some(name) = item.get("name").and_then(Value::as_str) {
            if !names.insert(name) {
                r.error(
                    &key_path(&path, "name"),
                    format!("duplicate route name \"{name}\""),
                );
            }
        }
        if let Some(up) = item.get("upstream").and_then(Value::as_str) {
            if !upstream_names.iter().any(|u| u == up) {
                r.error(
                    &key_path(&path, "upstream"),
                    format!("unknown upstream \"{up}\""),
                );
            }
        }
    }
}

/// No two routes may match exactly the same requests: one of them could never be reached.
fn check_overlaps(r: &mut Reader, routes: &[(usize, RouteConfig)]) {
    for (i, route) in routes {
        for (j, other) in routes.iter().take_while(|(j, _)| j < i) {
            let same_path = route.path.same_requests(&other.path);
            let overlap = match (&route.methods, &other.methods) {
                (Some(a), Some(b)) => a.iter().any(|m| b.contains(m)),
                _ => true,
            };
            if same_path && route.host == other.host && overlap {
                r.error(
                    &key_path(&index_path("routes", *i), "match"),
                    format!(
                        "matches the same requests as routes[{j}] (\"{}\")",
                        other.name
                    ),
                );
            }
        }
    }
}

fn parse_method(s: &str) -> Option<Method> {
    const KNOWN: [&str; 9] = [
        "GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "TRACE", "CONNECT",
    ];
    KNOWN
        .iter()
        .find(|k| k.eq_ignore_ascii_case(s))
        .and_then(|k| Method::from_bytes(k.as_bytes()).ok())
}

fn read_addr(r: &mut Reader, path: &str, value: &Value) -> Option<SocketAddr> {
    let s = r.string(path, value)?;
    match s.trim().parse::<SocketAddr>() {
        Ok(a) => Some(a),
        Err(_) => {
            r.error(path, format!("\"{s}\" is not an address (expected ip:port, e.g. 127.0.0.1:8080 or [::1]:8080)"));
            None
        }
    }
}

pub(super) fn is_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

fn set<T>(slot: &mut T, value: Option<T>) {
    if let Some(v) = value {
        *slot = v;
    }
}

fn int(r: &mut Reader, t: &Table, parent: &str, key: &str, min: u64, max: u64) -> Option<u64> {
    t.get(key)
        .and_then(|v| r.integer(&key_path(parent, key), v, min, max))
}

fn dur(r: &mut Reader, t: &Table, parent: &str, key: &str) -> Option<Duration> {
    t.get(key)
        .and_then(|v| r.duration(&key_path(parent, key), v))
}

fn abs_path(r: &mut Reader, t: &Table, parent: &str, key: &str) -> Option<String> {
    let p = key_path(parent, key);
    let s = t.get(key).and_then(|v| r.string(&p, v))?;
    if !s.starts_with('/') {
        r.error(&p, "must be an absolute path");
        return None;
    }
    Some(s)
}
