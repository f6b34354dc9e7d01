//! Active health checks, retries on connect failure, readiness.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use crate::support::*;

const INTERVAL_MS: u64 = 200;
const UNHEALTHY: u64 = 2;
const HEALTHY: u64 = 2;

fn checked_pool(a: &TestBackend, b: &TestBackend) -> String {
    format!(
        r#"
upstreams:
  pool:
    backends: ["{}", "{}"]
    health_check: {{ kind: http, path: /health, expect_status: 200, interval: {INTERVAL_MS}ms, timeout: 150ms, healthy_threshold: {HEALTHY}, unhealthy_threshold: {UNHEALTHY} }}
routes:
  - {{ name: all, match: {{ path_prefix: / }}, upstream: pool }}
"#,
        a.addr, b.addr
    )
}

/// Requests until `n` in a row were answered by `who`; returns how long that took.
fn time_until_streak(gw: &Gateway, who: &str, n: usize, limit: Duration) -> Option<Duration> {
    let start = Instant::now();
    let mut streak = 0;
    while start.elapsed() < limit {
        let r = gw.get("/x");
        assert_eq!(r.status, 200);
        if r.backend() == who {
            streak += 1;
            if streak == n {
                return Some(start.elapsed());
            }
        } else {
            streak = 0;
        }
        thread::sleep(Duration::from_millis(10));
    }
    None
}

#[test]
fn unhealthy_backend_is_ejected_then_readmitted() {
    let a = TestBackend::start("a");
    let b = TestBackend::start("b");
    let gw = Gateway::start(&checked_pool(&a, &b));
    let both = spread(&gw, "/x", 10);
    assert_eq!(both.len(), 2, "{both:?}");

    a.set_healthy(false);
    let slack = Duration::from_millis(1500);
    let eject_budget = Duration::from_millis(INTERVAL_MS * UNHEALTHY) + slack;
    let took = time_until_streak(&gw, "b", 20, Duration::from_secs(10)).expect("a never ejected");
    // The streak of 20 itself takes a little; ejection must come within the budget.
    assert!(
        took < eject_budget + Duration::from_millis(600),
        "ejection took {took:?}"
    );
    let before = a.requests();
    let m = spread(&gw, "/x", 20);
    assert_eq!(m.get("b"), Some(&20), "{m:?}");
    assert_eq!(a.requests(), before, "an ejected backend gets no traffic");

    a.set_healthy(true);
    let start = Instant::now();
    assert!(
        wait_until(Duration::from_secs(10), || gw.get("/x").backend() == "a"),
        "a never came back"
    );
    let back = start.elapsed();
    assert!(
        back < Duration::from_millis(INTERVAL_MS * HEALTHY) + slack,
        "re-admission took {back:?}"
    );
}

#[test]
fn readyz_and_503_when_every_backend_is_down() {
    let a = TestBackend::start("a");
    let b = TestBackend::start("b");
    let gw = Gateway::start(&checked_pool(&a, &b));
    let r = get(gw.admin, "/readyz").unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["status"], "ready");

    a.set_healthy(false);
    b.set_healthy(false);
    assert!(
        wait_until(Duration::from_secs(5), || get(gw.admin, "/readyz")
            .unwrap()
            .status
            == 503),
        "readyz never turned 503"
    );
    let v = get(gw.admin, "/readyz").unwrap().json();
    assert_eq!(v["unready_upstreams"], serde_json::json!(["pool"]));
    let start = Instant::now();
    gw.get("/x").assert_error(503, "service_unavailable");
    assert!(
        start.elapsed() < Duration::from_millis(500),
        "503 must be immediate"
    );
    assert_eq!(get(gw.admin, "/healthz").unwrap().status, 200);
}

#[test]
fn killed_backend_costs_no_failed_request() {
    let a = TestBackend::start("a");
    let b = TestBackend::start("b");
    let gw = Gateway::start(&format!(
        r#"
upstreams:
  pool:
    backends: ["{}", "{}"]
    retries: 1
routes:
  - {{ name: all, match: {{ path_prefix: / }}, upstream: pool }}
"#,
        a.addr, b.addr
    ));
    let stop = Arc::new(AtomicBool::new(false));
    let ok = Arc::new(AtomicUsize::new(0));
    let failed = Arc::new(Mutex::new(Vec::new()));
    let workers: Vec<_> = (0..4)
        .map(|_| {
            let (stop, ok, failed, addr) = (stop.clone(), ok.clone(), failed.clone(), gw.addr);
            thread::spawn(move || {
                // Keep-alive connections, like real clients.
                let mut conn = Conn::open(addr).unwrap();
                while !stop.load(Ordering::SeqCst) {
                    let r = conn.request("GET /x HTTP/1.1\r\nHost: t\r\n\r\n");
                    match r {
                        Ok(r) if r.status == 200 => {
                            ok.fetch_add(1, Ordering::SeqCst);
                        }
                        Ok(r) => failed.lock().unwrap().push(format!(
                            "{} {}",
                            r.status,
                            String::from_utf8_lossy(&r.body)
                        )),
                        Err(e) => {
                            failed.lock().unwrap().push(e.to_string());
                            conn = Conn::open(addr).unwrap();
                        }
                    }
                }
            })
        })
        .collect();
    assert!(wait_until(Duration::from_secs(5), || a.requests() > 50
        && b.requests() > 50));
    a.kill();
    let at_kill = ok.load(Ordering::SeqCst);
    assert!(wait_until(Duration::from_secs(10), || ok
        .load(Ordering::SeqCst)
        > at_kill + 500));
    stop.store(true, Ordering::SeqCst);
    for w in workers {
        w.join().unwrap();
    }
    let failed = failed.lock().unwrap();
    assert!(
        failed.is_empty(),
        "{} failed requests: {:?}",
        failed.len(),
        &failed[..failed.len().min(5)]
    );
}

use std::sync::Mutex;

#[test]
fn backend_down_at_start_costs_no_failed_request() {
    let b = TestBackend::start("b");
    let dead = free_port();
    let gw = Gateway::start(&format!(
        r#"
upstreams:
  pool:
    backends: ["127.0.0.1:{dead}", "{}"]
    retries: 1
routes:
  - {{ name: all, match: {{ path_prefix: / }}, upstream: pool }}
"#,
        b.addr
    ));
    let m = spread(&gw, "/x", 30);
    assert_eq!(m.get("b"), Some(&30), "{m:?}");
}

#[test]
fn tcp_health_check_ejects_a_closed_port() {
    let a = TestBackend::start("a");
    let b = TestBackend::start("b");
    let gw = Gateway::start(&format!(
        r#"
upstreams:
  pool:
    backends: ["{}", "{}"]
    retries: 0
    health_check: {{ kind: tcp, interval: {INTERVAL_MS}ms, timeout: 150ms, healthy_threshold: 1, unhealthy_threshold: 1 }}
routes:
  - {{ name: all, match: {{ path_prefix: / }}, upstream: pool }}
"#,
        a.addr, b.addr
    ));
    a.kill();
    // No request reaches a meanwhile, so only the active check can notice it is gone.
    assert!(
        wait_until(Duration::from_secs(5), || {
            get(gw.admin, "/readyz").unwrap().json()["upstreams"]["pool"]["healthy"] == 1
        }),
        "the tcp check never noticed a closed port"
    );
    // With retries: 0, a request sent to a would fail: every one must go to b.
    let m = spread(&gw, "/x", 20);
    assert_eq!(m.get("b"), Some(&20), "{m:?}");
}
