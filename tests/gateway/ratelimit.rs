//! Rate limits end to end: exact bursts, sliding windows, keys, headers, JWT users, CORS
//! preflights, and a Redis-backed limit shared by two gateway processes.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::Duration;

use jsonwebtoken::Algorithm;
use serde_json::json;

use crate::support::*;
use crate::tokens::*;

fn limited(policies: &str, route_limits: &str, extra: &str) -> (TestBackend, Gateway) {
    let b = TestBackend::start("b");
    let gw = Gateway::start(&format!(
        "{extra}rate_limits:\n{policies}\nupstreams:\n  pool: {{ backends: [\"{}\"] }}\nroutes:\n  - {{ name: limited, match: {{ path_prefix: /l }}, upstream: pool, rate_limit: [{route_limits}] }}\n  - {{ name: free, match: {{ path_prefix: /free }}, upstream: pool }}\n",
        b.addr
    ));
    (b, gw)
}

fn get_with(gw: &Gateway, path: &str, headers: &str) -> Response {
    gw.send(&format!(
        "GET {path} HTTP/1.1\r\nHost: t\r\n{headers}Connection: close\r\n\r\n"
    ))
}

#[test]
fn a_burst_gets_exactly_the_limit_with_headers() {
    let (b, gw) = limited(
        "  per_ip: { key: client_ip, limit: 20, window: 1m }",
        "per_ip",
        "",
    );
    let mut ok = 0;
    let mut last_remaining = 20;
    for i in 0..30 {
        let r = gw.get("/l/x");
        assert_eq!(r.header("ratelimit-limit"), Some("20"), "request {i}");
        assert_eq!(r.header("ratelimit-policy"), Some("\"per_ip\";q=20;w=60"));
        let reset: u64 = r.header("ratelimit-reset").unwrap().parse().unwrap();
        assert!((1..=60).contains(&reset), "reset {reset}");
        let remaining: u32 = r.header("ratelimit-remaining").unwrap().parse().unwrap();
        assert!(r
            .header("ratelimit")
            .is_some_and(|v| v.starts_with("\"per_ip\";r=")));
        if r.status == 200 {
            ok += 1;
            assert!(remaining < last_remaining, "remaining must fall");
            last_remaining = remaining;
            assert!(r.header("retry-after").is_none());
        } else {
            r.assert_error(429, "rate_limited");
            assert_eq!(remaining, 0);
            let retry: u64 = r
                .header("retry-after")
                .expect("Retry-After")
                .parse()
                .unwrap();
            // Until the next window (<= 60 s) plus the time the old window weighs too much (3 s).
            assert!((1..=63).contains(&retry), "retry-after {retry}");
        }
    }
    assert_eq!(ok, 20);
    assert_eq!(b.requests(), 20, "refused requests never reach the backend");
    let free = gw.get("/free/x");
    assert_eq!(free.status, 200);
    assert!(
        free.header("ratelimit-limit").is_none(),
        "unlimited routes carry no RateLimit headers"
    );
}

#[test]
fn concurrent_clients_on_one_key_get_exactly_the_limit() {
    let (_b, gw) = limited(
        "  shared: { key: route, limit: 50, window: 1m }",
        "shared",
        "",
    );
    let ok = Arc::new(AtomicUsize::new(0));
    let addr = gw.addr;
    let threads: Vec<_> = (0..8)
        .map(|_| {
            let ok = ok.clone();
            thread::spawn(move || {
                let mut c = Conn::open(addr).unwrap();
                for _ in 0..12 {
                    let r = c.request("GET /l/x HTTP/1.1\r\nHost: t\r\n\r\n").unwrap();
                    if r.status == 200 {
                        ok.fetch_add(1, Ordering::SeqCst);
                    } else {
                        assert_eq!(r.status, 429);
                    }
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    assert_eq!(ok.load(Ordering::SeqCst), 50);
}

#[test]
fn the_window_slides_and_recovers_after_idle() {
    let (_b, gw) = limited("  w: { key: client_ip, limit: 10, window: 2s }", "w", "");
    let burst = |n: usize| (0..n).filter(|_| gw.get("/l/x").status == 200).count();
    assert_eq!(burst(10), 10);
    assert_eq!(burst(5), 0);
    // Half a window later the first burst still weighs at least half: at most 5 pass.
    thread::sleep(Duration::from_secs(1));
    let second = burst(10);
    assert!(
        second <= 5,
        "{second} passed half a window after a full burst"
    );
    // After two idle windows the full limit is back.
    thread::sleep(Duration::from_millis(4100));
    assert_eq!(burst(12), 10);
}

#[test]
fn keys_are_independent_and_missing_keys_fall_back_to_the_client_ip() {
    let (_b, gw) = limited(
        "  api_key: { key: \"header:X-Api-Key\", limit: 3, window: 1m }",
        "api_key",
        "",
    );
    let count = |h: &str| {
        (0..5)
            .filter(|_| get_with(&gw, "/l/x", h).status == 200)
            .count()
    };
    assert_eq!(count("X-Api-Key: alpha\r\n"), 3);
    assert_eq!(count("X-Api-Key: beta\r\n"), 3);
    assert_eq!(count(""), 3, "no key: counted by client IP");
    assert_eq!(count(""), 0);
    assert_eq!(count("X-Api-Key: gamma\r\n"), 3);
}

#[test]
fn per_user_limits_from_jwt_claims() {
    let dir = temp_dir("rl-jwt");
    std::fs::write(dir.join("hs.key"), HS_SECRET).unwrap();
    let extra = format!(
        "auth:\n  jwt:\n    algorithms: [HS256]\n    secrets: [{{ file: {}/hs.key }}]\n",
        dir.display()
    );
    let b = TestBackend::start("b");
    let gw = Gateway::start(&format!(
        "{extra}rate_limits:\n  per_user: {{ key: \"jwt:sub\", limit: 2, window: 1m }}\nupstreams:\n  pool: {{ backends: [\"{}\"] }}\nroutes:\n  - {{ name: r, match: {{ path_prefix: / }}, upstream: pool, auth: optional, rate_limit: [per_user] }}\n",
        b.addr
    ));
    let token = |sub: &str| {
        sign(
            &json!({"sub": sub, "exp": now() + 60}),
            &Key::Hmac(HS_SECRET),
            Algorithm::HS256,
            None,
        )
    };
    let (alice, bob) = (token("alice"), token("bob"));
    let count = |t: &str| {
        (0..4)
            .filter(|_| {
                get_with(&gw, "/x", &format!("Authorization: Bearer {t}\r\n")).status == 200
            })
            .count()
    };
    assert_eq!(count(&alice), 2);
    assert_eq!(count(&bob), 2);
    assert_eq!(count(&alice), 0);
    // Anonymous requests share their client IP's budget.
    assert_eq!((0..4).filter(|_| gw.get("/x").status == 200).count(), 2);
}

#[test]
fn cors_preflights_do_not_spend_the_budget() {
    let (_b, gw) = limited("  p: { key: client_ip, limit: 2, window: 1m }", "p", "");
    for _ in 0..5 {
        let r = gw.send("OPTIONS /l/x HTTP/1.1\r\nHost: t\r\nOrigin: https://app.test\r\nAccess-Control-Request-Method: POST\r\nConnection: close\r\n\r\n");
        assert_eq!(r.status, 200);
        assert!(r.header("ratelimit-limit").is_none());
    }
    assert_eq!((0..4).filter(|_| gw.get("/l/x").status == 200).count(), 2);
}

#[test]
fn every_policy_must_allow() {
    let (_b, gw) = limited(
        "  wide: { key: route, limit: 100, window: 1m }\n  narrow: { key: client_ip, limit: 3, window: 1m }",
        "wide, narrow",
        "",
    );
    let rs: Vec<Response> = (0..5).map(|_| gw.get("/l/x")).collect();
    assert_eq!(rs.iter().filter(|r| r.status == 200).count(), 3);
    // The tightest policy speaks in the headers.
    assert_eq!(rs[0].header("ratelimit-limit"), Some("3"));
    assert_eq!(
        rs[4].header("ratelimit-policy"),
        Some("\"narrow\";q=3;w=60")
    );
}

fn redis_gateway(
    redis: &RedisServer,
    backend: &TestBackend,
    on_error: &str,
    limit: u32,
) -> Gateway {
    Gateway::start(&format!(
        "redis: {{ url: \"{}\", timeout: 200ms }}\nrate_limits:\n  shared: {{ key: client_ip, limit: {limit}, window: 1m, store: redis, on_store_error: {on_error} }}\nupstreams:\n  pool: {{ backends: [\"{}\"] }}\nroutes:\n  - {{ name: r, match: {{ path_prefix: / }}, upstream: pool, rate_limit: [shared] }}\n",
        redis.url(),
        backend.addr
    ))
}

#[test]
fn two_gateways_share_one_redis_limit() {
    let redis = RedisServer::start();
    let b = TestBackend::start("b");
    let g1 = redis_gateway(&redis, &b, "deny", 20);
    let g2 = redis_gateway(&redis, &b, "deny", 20);
    let mut ok = 0;
    for i in 0..40 {
        let gw = if i % 2 == 0 { &g1 } else { &g2 };
        let r = gw.get("/x");
        match r.status {
            200 => ok += 1,
            429 => {
                r.assert_error(429, "rate_limited");
            }
            s => panic!("unexpected {s}: {}", String::from_utf8_lossy(&r.body)),
        }
    }
    assert_eq!(ok, 20, "the combined allowance equals the limit");
}

#[test]
fn redis_down_allow_then_recovers() {
    let mut redis = RedisServer::start();
    let port = redis.port;
    let b = TestBackend::start("b");
    let gw = redis_gateway(&redis, &b, "allow", 5);
    assert_eq!((0..8).filter(|_| gw.get("/x").status == 200).count(), 5);
    redis.kill();
    // Fail open: every request passes while Redis is gone, each within the timeout.
    for _ in 0..10 {
        let start = std::time::Instant::now();
        assert_eq!(gw.get("/x").status, 200);
        assert!(start.elapsed() < Duration::from_millis(1500));
    }
    // Redis returns (empty): limiting resumes by itself.
    let _redis = RedisServer::start_on(port);
    assert!(
        wait_until(Duration::from_secs(10), || gw.get("/x").status == 429),
        "limiting never resumed after Redis came back"
    );
    assert!(
        gw.log().contains("rate limit store (redis) failed"),
        "{}",
        gw.log()
    );
}

#[test]
fn redis_down_deny() {
    let mut redis = RedisServer::start();
    let b = TestBackend::start("b");
    let gw = redis_gateway(&redis, &b, "deny", 100);
    assert_eq!(gw.get("/x").status, 200);
    redis.kill();
    for _ in 0..5 {
        let r = gw.get("/x");
        r.assert_error(429, "rate_limited");
        assert!(r.header("retry-after").is_some());
    }
    assert_eq!(b.requests(), 1);
}
