//! Load balancing: spread, weights, stickiness.

use crate::support::*;

fn cluster_yaml(backends: &str, extra: &str) -> String {
    format!(
        r#"
upstreams:
  pool:
    backends: [{backends}]
    {extra}
routes:
  - {{ name: all, match: {{ path_prefix: / }}, upstream: pool }}
"#
    )
}

#[test]
fn round_robin_spreads_evenly() {
    let a = TestBackend::start("a");
    let b = TestBackend::start("b");
    let c = TestBackend::start("c");
    let gw = Gateway::start(&cluster_yaml(
        &format!("\"{}\", \"{}\", \"{}\"", a.addr, b.addr, c.addr),
        "lb: round_robin",
    ));
    let m = spread(&gw, "/x", 30);
    assert_eq!(m.get("a"), Some(&10), "{m:?}");
    assert_eq!(m.get("b"), Some(&10), "{m:?}");
    assert_eq!(m.get("c"), Some(&10), "{m:?}");
}

#[test]
fn weighted_round_robin_honours_weights() {
    let a = TestBackend::start("a");
    let b = TestBackend::start("b");
    let gw = Gateway::start(&cluster_yaml(
        &format!(
            "{{ addr: \"{}\", weight: 1 }}, {{ addr: \"{}\", weight: 3 }}",
            a.addr, b.addr
        ),
        "lb: round_robin",
    ));
    let m = spread(&gw, "/x", 40);
    assert_eq!(m.get("a"), Some(&10), "{m:?}");
    assert_eq!(m.get("b"), Some(&30), "{m:?}");
}

#[test]
fn random_uses_every_backend_and_honours_weights() {
    let a = TestBackend::start("a");
    let b = TestBackend::start("b");
    let gw = Gateway::start(&cluster_yaml(
        &format!(
            "{{ addr: \"{}\", weight: 1 }}, {{ addr: \"{}\", weight: 4 }}",
            a.addr, b.addr
        ),
        "lb: random",
    ));
    let m = spread(&gw, "/x", 200);
    let (na, nb) = (
        m.get("a").copied().unwrap_or(0),
        m.get("b").copied().unwrap_or(0),
    );
    // Expected 40/160; bounds are about six standard deviations wide.
    assert!((10..=75).contains(&na), "{m:?}");
    assert!(nb > na, "{m:?}");
}

#[test]
fn consistent_hash_by_header_is_sticky() {
    let (_backends, list) = backends(4);
    let gw = Gateway::start(&cluster_yaml(
        &list,
        "lb: consistent_hash\n    hash_key: \"header:X-User\"",
    ));
    assert_sticky(20, 5, |user| {
        gw.send(&format!(
            "GET /x HTTP/1.1\r\nHost: t\r\nX-User: user-{user}\r\nConnection: close\r\n\r\n"
        ))
        .backend()
    });
}

#[test]
fn consistent_hash_by_client_ip_is_sticky() {
    let (_backends, list) = backends(3);
    let gw = Gateway::start(&cluster_yaml(
        &list,
        "lb: consistent_hash\n    hash_key: client_ip",
    ));
    let m = spread(&gw, "/x", 15);
    assert_eq!(m.len(), 1, "one client IP, one backend: {m:?}");
}
