//! Composite endpoints end to end: parallel parts, stitching, templates with hostile values,
//! each failure kind, deadlines, routing around a dead backend, identity and request ids on
//! every part, pooled connections, and concurrent composite requests.

use std::time::{Duration, Instant};

use jsonwebtoken::Algorithm;
use serde_json::json;

use crate::support::*;
use crate::tokens::*;

struct Setup {
    gw: Gateway,
    users: TestBackend,
    orders: TestBackend,
    recs: TestBackend,
    _dir: std::path::PathBuf,
}

fn setup(parts: &str, agg_extra: &str, users_extra: &str) -> Setup {
    let users = TestBackend::start("users");
    let orders = TestBackend::start("orders");
    let recs = TestBackend::start("recs");
    let dir = temp_dir("agg");
    std::fs::write(dir.join("hs.key"), HS_SECRET).unwrap();
    let gw = Gateway::start(&format!(
        r#"
auth:
  jwt:
    algorithms: [HS256]
    secrets: [{{ file: {d}/hs.key }}]
    forward_claims: {{ sub: X-User-Id }}
upstreams:
  users: {{ backends: ["{u}"{users_extra}] }}
  orders: {{ backends: ["{o}"], read_timeout: 5s }}
  recs: {{ backends: ["{r}"] }}
routes:
  - name: home
    match: {{ path: "/api/home/{{user_id}}" }}
    auth: optional
    aggregate:
      timeout: 800ms
{agg_extra}
      parts:
{parts}
"#,
        d = dir.display(),
        u = users.addr,
        o = orders.addr,
        r = recs.addr,
    ));
    Setup {
        gw,
        users,
        orders,
        recs,
        _dir: dir,
    }
}

const THREE: &str = r#"        - { name: profile, upstream: users, path: "/users/{path.user_id}", required: true }
        - { name: orders, upstream: orders, path: "/orders?user={path.user_id}&limit={query.limit}" }
        - { name: recs, upstream: recs, path: "/recs/{path.user_id}" }"#;

#[test]
fn parts_run_in_parallel_and_stitch_in_order() {
    let s = setup(THREE, "", "");
    for b in [&s.users, &s.orders, &s.recs] {
        b.set_delay(Duration::from_millis(300));
    }
    let start = Instant::now();
    let r = s.gw.get("/api/home/42?limit=5");
    let took = start.elapsed();
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    assert!(
        took < Duration::from_millis(600),
        "three 300 ms parts took {took:?}"
    );
    let text = String::from_utf8(r.body.clone()).unwrap();
    let (p, o, rc) = (
        text.find("\"profile\"").unwrap(),
        text.find("\"orders\"").unwrap(),
        text.find("\"recs\"").unwrap(),
    );
    assert!(p < o && o < rc, "parts in configured order: {text}");
    let v = r.json();
    assert_eq!(v["profile"]["path"], "/users/42");
    assert_eq!(v["orders"]["path"], "/orders?user=42&limit=5");
    assert_eq!(v["recs"]["path"], "/recs/42");
    assert!(r.header("x-aggregate-failed").is_none());
    assert_eq!(r.header("content-type"), Some("application/json"));
}

#[test]
fn hostile_values_cannot_escape_their_slot() {
    let s = setup(
        r#"        - { name: a, upstream: users, path: "/users/{path.user_id}/x?q={query.q}&h={header.x-tag}", required: true }"#,
        "",
        "",
    );
    // (value as sent in the query string, value as sent in a header, expected encoding)
    let cases = [
        ("..", "..", "%2E%2E"),
        ("..%2Fadmin", "../admin", "%2E%2E%2Fadmin"),
        ("a%2Fb", "a/b", "a%2Fb"),
        ("%252F", "%2F", "%252F"),
        ("a%3Fx%3D1", "a?x=1", "a%3Fx%3D1"),
        ("a%23frag", "a#frag", "a%23frag"),
        ("a%26z%3D1", "a&z=1", "a%26z%3D1"),
        ("caf%C3%A9", "caf\u{e9}", "caf%C3%A9"),
    ];
    for (in_query, in_header, encoded) in cases {
        let r = s.gw.send(&format!(
            "GET /api/home/42?q={in_query} HTTP/1.1\r\nHost: t\r\nX-Tag: {in_header}\r\nConnection: close\r\n\r\n"
        ));
        assert_eq!(
            r.status,
            200,
            "{in_query}: {}",
            String::from_utf8_lossy(&r.body)
        );
        let path = r.json()["a"]["path"].as_str().unwrap().to_string();
        assert_eq!(
            path,
            format!("/users/42/x?q={encoded}&h={encoded}"),
            "{in_query}"
        );
    }
    // A path parameter holding an encoded slash stays one segment.
    let r = s.gw.get("/api/home/a%2Fb?q=1");
    assert_eq!(r.json()["a"]["path"], "/users/a%2Fb/x?q=1&h=");
}

#[test]
fn failed_optional_parts_are_null_and_named() {
    let parts = r#"        - { name: profile, upstream: users, path: "/users/{path.user_id}", required: true }
        - { name: status, upstream: orders, path: "/__status/500" }
        - { name: text, upstream: orders, path: "/__text" }
        - { name: big, upstream: orders, path: "/__big/5000" }
        - { name: slow, upstream: recs, path: "/recs", timeout: 200ms }
        - { name: dead, upstream: dead, path: "/x" }
        - { name: missing, upstream: orders, path: "/o/{header.x-absent}" }"#;
    let dead = free_port();
    let users = TestBackend::start("users");
    let orders = TestBackend::start("orders");
    let recs = TestBackend::start("recs");
    recs.set_delay(Duration::from_millis(600));
    let gw = Gateway::start(&format!(
        "upstreams:\n  users: {{ backends: [\"{}\"] }}\n  orders: {{ backends: [\"{}\"] }}\n  recs: {{ backends: [\"{}\"] }}\n  dead: {{ backends: [\"127.0.0.1:{dead}\"] }}\nroutes:\n  - name: home\n    match: {{ path: \"/api/home/{{user_id}}\" }}\n    aggregate:\n      timeout: 2s\n      max_part_bytes: 1000\n      parts:\n{parts}\n",
        users.addr, orders.addr, recs.addr
    ));
    let start = Instant::now();
    let r = gw.get("/api/home/1");
    assert!(
        start.elapsed() < Duration::from_millis(1000),
        "the slow part is cut at 200 ms"
    );
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    let v = r.json();
    assert_eq!(v["profile"]["path"], "/users/1");
    for name in ["status", "text", "big", "slow", "dead", "missing"] {
        assert!(v[name].is_null(), "{name}: {v}");
    }
    assert_eq!(
        r.header("x-aggregate-failed"),
        Some("status,text,big,slow,dead,missing")
    );
}

#[test]
fn failed_required_parts_fail_the_answer() {
    let dead = free_port();
    let users = TestBackend::start("users");
    let slow = TestBackend::start("slow");
    slow.set_delay(Duration::from_secs(2));
    let make = |part: &str| {
        Gateway::start(&format!(
            "upstreams:\n  users: {{ backends: [\"{}\"] }}\n  slow: {{ backends: [\"{}\"] }}\n  dead: {{ backends: [\"127.0.0.1:{dead}\"], retries: 0 }}\nroutes:\n  - name: home\n    match: {{ path: /home }}\n    aggregate:\n      timeout: 500ms\n      parts:\n        - {{ name: other, upstream: slow, path: /other }}\n        - {part}\n",
            users.addr, slow.addr
        ))
    };
    let cases = [
        (
            "{ name: p, upstream: users, path: /__status/503, required: true }",
            502,
            "bad_gateway",
            "bad_status",
        ),
        (
            "{ name: p, upstream: users, path: /__text, required: true }",
            502,
            "bad_gateway",
            "not_json",
        ),
        (
            "{ name: p, upstream: dead, path: /x, required: true }",
            502,
            "bad_gateway",
            "connect_error",
        ),
        (
            "{ name: p, upstream: slow, path: /x, required: true, timeout: 200ms }",
            504,
            "gateway_timeout",
            "timeout",
        ),
    ];
    for (part, status, code, reason) in cases {
        let gw = make(part);
        let start = Instant::now();
        let r = gw.get("/home");
        let v = r.assert_error(status, code);
        assert_eq!(
            v["message"],
            format!("part \"p\" failed: {reason}"),
            "{part}"
        );
        // The other part (2 s) is cancelled at once, not awaited.
        assert!(
            start.elapsed() < Duration::from_millis(450),
            "{part}: took {:?}",
            start.elapsed()
        );
    }
    // The whole deadline: a required part that outlives aggregate.timeout is a 504 at 500 ms.
    let gw = make("{ name: p, upstream: slow, path: /x, required: true }");
    gw.assert_timeout_after(
        "/home",
        Duration::from_millis(450)..Duration::from_millis(1200),
    );
}

#[test]
fn a_dead_backend_behind_a_part_is_routed_around() {
    let dead = free_port();
    let s = setup(THREE, "", &format!(", \"127.0.0.1:{dead}\""));
    for _ in 0..10 {
        let r = s.gw.get("/api/home/7");
        assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
        assert!(r.header("x-aggregate-failed").is_none());
    }
}

#[test]
fn identity_request_id_and_forwarding_reach_every_part() {
    let s = setup(THREE, "", "");
    let token = sign(
        &json!({"sub": "alice", "exp": now() + 60}),
        &Key::Hmac(HS_SECRET),
        Algorithm::HS256,
        None,
    );
    let r = s.gw.send(&format!(
        "GET /api/home/9 HTTP/1.1\r\nHost: shop.test\r\nAuthorization: Bearer {token}\r\nX-Request-Id: rid-123\r\nX-User-Id: spoofed\r\nConnection: close\r\n\r\n"
    ));
    assert_eq!(r.header("x-request-id"), Some("rid-123"));
    let v = r.json();
    for part in ["profile", "orders", "recs"] {
        let h = &v[part]["headers"];
        assert_eq!(h["x-request-id"], "rid-123", "{part}");
        assert_eq!(
            h["x-user-id"], "alice",
            "{part}: the token's identity, not the spoofed header"
        );
        assert_eq!(h["x-forwarded-for"], "127.0.0.1", "{part}");
        assert_eq!(h["x-forwarded-host"], "shop.test", "{part}");
    }
}

#[test]
fn connections_are_pooled_and_concurrency_holds() {
    let s = setup(THREE, "", "");
    for _ in 0..20 {
        assert_eq!(s.gw.get("/api/home/1").status, 200);
    }
    for b in [&s.users, &s.orders, &s.recs] {
        assert_eq!(b.requests(), 20);
        assert!(
            b.accepted() <= 2,
            "{} accepted {} connections for 20 sequential requests",
            b.name,
            b.accepted()
        );
    }
    let addr = s.gw.addr;
    let threads: Vec<_> = (0..50)
        .map(|i| {
            std::thread::spawn(move || {
                let r = send(
                    addr,
                    format!("GET /api/home/{i} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
                        .as_bytes(),
                )
                .unwrap();
                assert_eq!(r.status, 200);
                let v = r.json();
                assert_eq!(v["profile"]["path"], format!("/users/{i}"));
                assert!(r.header("x-aggregate-failed").is_none());
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    assert_eq!(s.users.requests(), 70);
}

#[test]
fn other_methods_get_405() {
    let s = setup(THREE, "", "");
    let r = s.gw.send(
        "POST /api/home/1 HTTP/1.1\r\nHost: t\r\nContent-Length: 2\r\nConnection: close\r\n\r\n{}",
    );
    r.assert_error(405, "method_not_allowed");
    assert_eq!(r.header("allow"), Some("GET, HEAD"));
}

#[test]
fn parts_honour_the_clusters_hash_key() {
    let (_backends, list) = backends(4);
    let gw = Gateway::start(&format!(
        "upstreams:\n  pool: {{ backends: [{list}], lb: consistent_hash, hash_key: \"header:X-User\" }}\nroutes:\n  - name: c\n    match: {{ path: /c }}\n    aggregate:\n      parts:\n        - {{ name: p, upstream: pool, path: /p, required: true }}\n"
    ));
    assert_sticky(12, 3, |user| {
        gw.send(&format!(
            "GET /c HTTP/1.1\r\nHost: t\r\nX-User: u{user}\r\nConnection: close\r\n\r\n"
        ))
        .json()["p"]["backend"]
            .as_str()
            .unwrap()
            .to_string()
    });
}
