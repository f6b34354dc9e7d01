//! Production operation, end to end: SIGHUP reload under load (valid and invalid files),
//! the SIGUSR2 binary upgrade through `upgrade_sock`, SIGTERM draining, the metrics a
//! scripted mix of requests moves, and the access log.

use std::time::Duration;

use crate::support::*;

fn routes(backend: &TestBackend, extra_routes: &str) -> String {
    format!(
        r#"
rate_limits:
  per_route: {{ key: route, limit: 1000, window: 60s }}
upstreams:
  pool: {{ backends: ["{b}"] }}
routes:
  - {{ name: api, match: {{ path_prefix: /api }}, upstream: pool }}
  - {{ name: limited, match: {{ path_prefix: /limited }}, upstream: pool, rate_limit: [per_route] }}
{extra_routes}"#,
        b = backend.addr
    )
}

fn remaining(gw: &Gateway) -> u32 {
    let r = gw.get("/limited");
    assert_eq!(r.status, 200);
    r.header("ratelimit-remaining").unwrap().parse().unwrap()
}

#[test]
fn a_reload_adds_a_route_under_load_and_keeps_limiter_counts() {
    let b = TestBackend::start("b");
    let gw = Gateway::start(&routes(&b, ""));
    for _ in 0..3 {
        remaining(&gw);
    }
    assert_eq!(remaining(&gw), 996);
    assert_eq!(gw.get("/extra").status, 404);

    let load = LoadGen::start(gw.addr, "/api/x", 4);
    assert!(load.wait_for_more(200, Duration::from_secs(10)));
    gw.write_config(
        "  access_log: stdout\n",
        &routes(
            &b,
            "  - { name: extra, match: { path_prefix: /extra }, upstream: pool }\n",
        ),
    );
    gw.signal("HUP");
    assert!(
        wait_until(Duration::from_secs(10), || gw
            .metric("portcullis_config_reloads_total", &[("result", "ok")])
            == 1.0),
        "no reload:\n{}",
        gw.log()
    );
    assert_eq!(gw.get("/extra").status, 200);
    assert!(load.wait_for_more(200, Duration::from_secs(10)));
    let report = load.stop();
    assert_eq!(report.failed, 0, "{report:?}");

    // The unchanged policy kept its counters: the fifth request of the window.
    assert_eq!(remaining(&gw), 995);
    // The access log target is opened at start: the change is reported, not applied silently.
    assert!(
        gw.log().contains("server.access_log changed"),
        "{}",
        gw.log()
    );
}

#[test]
fn a_changed_policy_starts_fresh_and_an_unchanged_cluster_keeps_its_health() {
    let b = TestBackend::start("b");
    b.set_healthy(false);
    // Marked down by the first check; with this healthy_threshold it never comes back on its
    // own, while a rebuilt cluster would start healthy again.
    let config = |limit: u32| {
        format!(
            r#"
rate_limits:
  per_route: {{ key: route, limit: {limit}, window: 60s }}
upstreams:
  pool:
    backends: ["{b}"]
    health_check: {{ kind: http, path: /health, interval: 60s, timeout: 500ms, unhealthy_threshold: 1, healthy_threshold: 100 }}
  spare: {{ backends: ["{b}"] }}
routes:
  - {{ name: api, match: {{ path_prefix: /api }}, upstream: pool }}
  - {{ name: limited, match: {{ path_prefix: /limited }}, upstream: spare, rate_limit: [per_route] }}
"#,
            b = b.addr
        )
    };
    let gw = Gateway::start(&config(1000));
    assert!(wait_until(Duration::from_secs(5), || gw.get("/api").status == 503));
    b.set_healthy(true);
    assert_eq!(remaining(&gw), 999);
    let connections = b.accepted();

    gw.write_config("", &config(500));
    gw.signal("HUP");
    assert!(wait_until(Duration::from_secs(10), || gw
        .metric("portcullis_config_reloads_total", &[("result", "ok")])
        == 1.0));
    // The changed policy counts afresh; the unchanged cluster kept its health verdict.
    assert_eq!(remaining(&gw), 499);
    gw.get("/api").assert_error(503, "service_unavailable");
    // ... and its pooled upstream connection: no new connection (nor a new health check).
    for _ in 0..5 {
        remaining(&gw);
    }
    assert_eq!(b.accepted(), connections);
}

#[test]
fn an_invalid_reload_is_refused_and_the_old_config_keeps_serving() {
    let b = TestBackend::start("b");
    let gw = Gateway::start(&routes(&b, ""));
    let load = LoadGen::start(gw.addr, "/api/x", 2);
    assert!(load.wait_for_more(100, Duration::from_secs(10)));
    gw.write_config(
        "  idle_timeout: soon\n",
        &routes(
            &b,
            "  - { name: broken, match: { path_prefix: /broken }, upstream: nowhere }\n",
        ),
    );
    gw.signal("HUP");
    assert!(
        wait_until(Duration::from_secs(10), || gw
            .metric("portcullis_config_reloads_total", &[("result", "error")])
            == 1.0),
        "{}",
        gw.log()
    );
    assert!(load.wait_for_more(100, Duration::from_secs(10)));
    let report = load.stop();
    assert_eq!(report.failed, 0, "{report:?}");
    let log = gw.log();
    assert!(
        log.contains("config reload refused, the running config stays"),
        "{log}"
    );
    // Every problem, each with its key path.
    assert!(log.contains("2 problem(s)"), "{log}");
    assert!(log.contains("server.idle_timeout"), "{log}");
    assert!(log.contains("routes[2].upstream"), "{log}");
    assert_eq!(gw.get("/api/still").status, 200);
    assert_eq!(gw.get("/broken").status, 404);
    assert_eq!(
        gw.metric("portcullis_config_reloads_total", &[("result", "ok")]),
        0.0
    );

    // Fixed, it loads.
    gw.write_config(
        "",
        &routes(
            &b,
            "  - { name: fixed, match: { path_prefix: /fixed }, upstream: pool }\n",
        ),
    );
    gw.signal("HUP");
    assert!(wait_until(Duration::from_secs(10), || gw
        .metric("portcullis_config_reloads_total", &[("result", "ok")])
        == 1.0));
    assert_eq!(gw.get("/fixed").status, 200);
}

#[test]
fn a_binary_upgrade_hands_over_without_a_failed_request_or_refused_connection() {
    let b = TestBackend::start("b");
    let mut gw = Gateway::start(&routes(&b, ""));
    let old_pid = gw.pid();
    let pid_file = gw.dir.join("gw.pid");
    assert!(wait_until(Duration::from_secs(10), || {
        std::fs::read_to_string(&pid_file).is_ok_and(|p| p.trim() == old_pid.to_string())
    }));
    let load = LoadGen::start(gw.addr, "/api/x", 4);
    assert!(load.wait_for_more(200, Duration::from_secs(10)));

    gw.signal("USR2");
    let mut new_pid = 0;
    assert!(
        wait_until(Duration::from_secs(20), || {
            new_pid = std::fs::read_to_string(&pid_file)
                .ok()
                .and_then(|p| p.trim().parse().ok())
                .unwrap_or(0);
            new_pid != 0 && new_pid != old_pid
        }),
        "no successor:\n{}",
        gw.log()
    );
    let _successor = PidGuard(new_pid);
    // The old process drains (Pingora's fixed 5 s hand-over wait, then grace_period) and exits.
    assert!(
        wait_until(Duration::from_secs(30), || gw.exited()),
        "the old process did not exit:\n{}",
        gw.log()
    );
    assert!(pid_alive(new_pid));
    // Load keeps flowing to the successor alone.
    assert!(load.wait_for_more(200, Duration::from_secs(10)));
    let report = load.stop();
    assert_eq!(report.failed, 0, "{report:?}\n{}", gw.log());
    assert!(report.connections > 40, "{report:?}");
    eprintln!("upgrade under load: {report:?}");
    // The admin listener moved too.
    assert_eq!(get(gw.admin, "/healthz").unwrap().status, 200);

    signal_pid(new_pid, "INT");
    assert!(wait_until(Duration::from_secs(10), || !pid_alive(new_pid)));
}

#[test]
fn an_upgrade_with_a_config_the_binary_refuses_keeps_the_old_process() {
    let b = TestBackend::start("b");
    let mut gw = Gateway::start(&routes(&b, ""));
    gw.write_config("  keepalive_requests: zero\n", &routes(&b, ""));
    gw.signal("USR2");
    assert!(
        wait_until(Duration::from_secs(10), || gw
            .log()
            .contains("upgrade refused, this process keeps serving")),
        "{}",
        gw.log()
    );
    assert!(
        gw.log().contains("server.keepalive_requests"),
        "{}",
        gw.log()
    );
    assert!(!gw.exited());
    assert_eq!(gw.get("/api/x").status, 200);

    // Valid for `-t`, but the successor cannot start (its access log cannot be opened): it
    // must fail before the sockets are handed over, and the old process keeps serving.
    gw.write_config(
        "  access_log: /nonexistent-dir/access.log\n",
        &routes(&b, ""),
    );
    gw.signal("USR2");
    assert!(
        wait_until(Duration::from_secs(15), || gw
            .log()
            .contains("the successor exited at start")),
        "{}",
        gw.log()
    );
    assert!(!gw.exited());
    let load = LoadGen::start(gw.addr, "/api/x", 2);
    // A hand-over would end this process after Pingora's fixed 5 s wait plus grace_period:
    // watch past that, under load.
    assert!(!wait_until(Duration::from_secs(7), || gw.exited()));
    let report = load.stop();
    assert_eq!(report.failed, 0, "{report:?}");
    assert!(report.ok > 100, "{report:?}");
}

#[test]
fn sigterm_lets_requests_in_flight_finish() {
    let b = TestBackend::start("b");
    let mut gw = Gateway::start(&routes(&b, ""));
    b.set_delay(Duration::from_millis(700));
    let addr = gw.addr;
    let in_flight = std::thread::spawn(move || get(addr, "/api/slow"));
    assert!(wait_until(Duration::from_secs(5), || b.requests() == 1));
    gw.signal("TERM");
    let r = in_flight
        .join()
        .unwrap()
        .expect("the request in flight was cut");
    assert_eq!(r.status, 200);
    assert_eq!(r.backend(), "b");
    // New connections are refused once the listener is gone, and the process ends.
    assert!(wait_until(Duration::from_secs(10), || {
        std::net::TcpStream::connect(addr).is_err()
    }));
    assert!(wait_until(Duration::from_secs(15), || gw.exited()));
}

#[test]
fn sigterm_closes_idle_keepalive_connections_at_once() {
    // A long grace period keeps the process alive well past the assertion: only the edge's
    // own shutdown wake can close the idle connection this soon.
    let (_b, mut gw) = one_backend_gateway("  grace_period: 30s\n");
    let mut idle = Conn::open(gw.addr).unwrap();
    let r = idle.request("GET /x HTTP/1.1\r\nHost: t\r\n\r\n").unwrap();
    assert_eq!(r.status, 200);
    // Whether the connection still holds its head buffer (the first 100 ms) or waits on
    // the idle clock already, shutdown reaches it through the clock.
    let start = std::time::Instant::now();
    gw.signal("TERM");
    assert!(idle.closed_by_peer());
    let closed = start.elapsed();
    assert!(closed < Duration::from_secs(5), "closed after {closed:?}");
    assert!(!gw.exited(), "the process ended: {}", gw.log());
}

const METRICS_CONFIG: &str = r#"
auth:
  jwt:
    algorithms: [HS256]
    secrets: [ { file: SECRET } ]
rate_limits:
  two: { key: route, limit: 2, window: 60s }
upstreams:
  pool: { backends: ["BACKEND"], health_check: { kind: http, path: /health, interval: 100ms, timeout: 150ms, unhealthy_threshold: 1 } }
  dead: { backends: ["DEAD"], retries: 0 }
  half: { backends: ["DEAD", "BACKEND"], retries: 1 }
routes:
  - { name: api, match: { path_prefix: /api }, upstream: pool, auth: none }
  - { name: limited, match: { path_prefix: /limited }, upstream: pool, auth: none, rate_limit: [two] }
  - { name: secure, match: { path_prefix: /secure }, upstream: pool }
  - { name: broken, match: { path_prefix: /broken }, upstream: dead, auth: none }
  - { name: half, match: { path_prefix: /half }, upstream: half, auth: none }
  - name: combo
    match: { path: /combo }
    auth: none
    aggregate:
      timeout: 2s
      parts:
        - { name: ok, upstream: pool, path: /api/part }
        - { name: gone, upstream: dead, path: /x, required: false }
"#;

#[test]
fn metrics_count_a_scripted_mix_of_requests() {
    let b = TestBackend::start("b");
    let dead = free_port();
    let dir = temp_dir("metrics");
    std::fs::write(dir.join("hs.key"), [b'k'; 32]).unwrap();
    let gw = Gateway::start(
        &METRICS_CONFIG
            .replace("SECRET", &dir.join("hs.key").display().to_string())
            .replace("BACKEND", &b.addr.to_string())
            .replace("DEAD", &format!("127.0.0.1:{dead}")),
    );
    for _ in 0..3 {
        assert_eq!(gw.get("/api/a").status, 200);
    }
    assert_eq!(
        gw.send("POST /api/a HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\nhi")
            .status,
        200
    );
    assert_eq!(gw.get("/nowhere").status, 404);
    for expect in [200, 200, 429] {
        assert_eq!(gw.get("/limited").status, expect);
    }
    assert_eq!(gw.get("/secure").status, 401);
    assert_eq!(
        gw.send("GET /secure HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer a.b.c\r\n\r\n")
            .status,
        401
    );
    assert_eq!(gw.get("/broken").status, 502);
    assert_eq!(gw.get("/combo").status, 200);
    // One of the two meets the dead backend first and is retried on the live one; the other
    // goes to the live one directly (round robin, then the dead one is passively ejected).
    assert_eq!(gw.get("/half/1").status, 200);
    assert_eq!(gw.get("/half/2").status, 200);

    let text = gw.metrics();
    let half = |name: &str, extra: &[(&str, &str)]| {
        let mut labels = vec![("upstream", "half")];
        labels.extend_from_slice(extra);
        metric_value(&text, name, &labels)
    };
    assert_eq!(half("portcullis_upstream_attempts_total", &[]), 3.0);
    assert_eq!(half("portcullis_upstream_retries_total", &[]), 1.0);
    assert_eq!(
        half(
            "portcullis_upstream_failures_total",
            &[("reason", "connect_refused")]
        ),
        1.0
    );
    parse_exposition(&text).unwrap_or_else(|e| panic!("{e}\n{text}"));
    let m = |name: &str, labels: &[(&str, &str)]| metric_value(&text, name, labels);
    let requests = "portcullis_requests_total";
    assert_eq!(
        m(
            requests,
            &[("route", "api"), ("method", "GET"), ("status", "2xx")]
        ),
        3.0
    );
    assert_eq!(
        m(
            requests,
            &[("route", "api"), ("method", "POST"), ("status", "2xx")]
        ),
        1.0
    );
    assert_eq!(
        m(
            requests,
            &[("route", "-"), ("method", "GET"), ("status", "4xx")]
        ),
        1.0
    );
    assert_eq!(
        m(
            requests,
            &[("route", "limited"), ("method", "GET"), ("status", "2xx")]
        ),
        2.0
    );
    assert_eq!(
        m(
            requests,
            &[("route", "limited"), ("method", "GET"), ("status", "4xx")]
        ),
        1.0
    );
    assert_eq!(
        m(
            requests,
            &[("route", "secure"), ("method", "GET"), ("status", "4xx")]
        ),
        2.0
    );
    assert_eq!(
        m(
            requests,
            &[("route", "broken"), ("method", "GET"), ("status", "5xx")]
        ),
        1.0
    );
    assert_eq!(
        m(
            "portcullis_request_duration_seconds_count",
            &[("route", "api")]
        ),
        4.0
    );
    assert_eq!(
        m("portcullis_rate_limited_total", &[("policy", "two")]),
        1.0
    );
    assert_eq!(
        m("portcullis_auth_failures_total", &[("reason", "missing")]),
        1.0
    );
    assert_eq!(
        m("portcullis_auth_failures_total", &[("reason", "malformed")]),
        1.0
    );
    assert_eq!(
        m(
            "portcullis_upstream_failures_total",
            &[("upstream", "dead"), ("reason", "connect_refused")]
        ),
        2.0,
        "one proxied request and one composite part\n{text}"
    );
    assert_eq!(
        m(
            "portcullis_upstream_attempts_total",
            &[("upstream", "dead")]
        ),
        2.0
    );
    // 3 GET + 1 POST + 2 allowed /limited + 1 composite part.
    assert_eq!(
        m(
            "portcullis_upstream_attempts_total",
            &[("upstream", "pool")]
        ),
        7.0
    );
    assert_eq!(
        m(
            "portcullis_composite_part_failures_total",
            &[
                ("route", "combo"),
                ("part", "gone"),
                ("reason", "connect_error")
            ]
        ),
        1.0
    );
    assert_eq!(
        m(
            "portcullis_backend_healthy",
            &[("upstream", "pool"), ("backend", &b.addr.to_string())]
        ),
        1.0
    );
    // The last request leaves the gauge just after its answer is sent.
    assert!(wait_until(Duration::from_secs(5), || gw
        .metric("portcullis_requests_in_flight", &[])
        == 0.0));

    // A failing health check shows on the next scrape.
    b.set_healthy(false);
    assert!(wait_until(Duration::from_secs(5), || gw.metric(
        "portcullis_backend_healthy",
        &[("upstream", "pool"), ("backend", &b.addr.to_string())]
    ) == 0.0));
}

#[test]
fn the_access_log_has_one_json_line_per_request() {
    let b = TestBackend::start("b");
    let gw = Gateway::start_with(
        "  access_log: ACCESS\n"
            .replace(
                "ACCESS",
                &std::env::temp_dir()
                    .join(format!("portcullis-access-{}.log", std::process::id()))
                    .display()
                    .to_string(),
            )
            .as_str(),
        &routes(&b, ""),
    );
    let path = std::env::temp_dir().join(format!("portcullis-access-{}.log", std::process::id()));
    let ok = gw.get("/api/items?token=secret");
    assert_eq!(gw.get("/nowhere").status, 404);
    assert_eq!(
        gw.send("POST /limited HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello")
            .status,
        200
    );
    let mut lines = Vec::new();
    assert!(
        wait_until(Duration::from_secs(5), || {
            lines = std::fs::read_to_string(&path)
                .unwrap_or_default()
                .lines()
                .map(str::to_string)
                .collect();
            lines.len() >= 3
        }),
        "{lines:?}"
    );
    assert_eq!(lines.len(), 3, "{lines:?}");
    // Rotation: the file is moved away, SIGHUP (config unchanged), the next line goes to a
    // new file at the configured path.
    let rotated = path.with_extension("log.1");
    std::fs::rename(&path, &rotated).unwrap();
    gw.signal("HUP");
    assert!(wait_until(Duration::from_secs(10), || gw
        .metric("portcullis_config_reloads_total", &[("result", "ok")])
        == 1.0));
    let after = gw.get("/api/after-rotation");
    assert!(
        wait_until(Duration::from_secs(5), || std::fs::read_to_string(&path)
            .is_ok_and(|t| t.contains(after.header("x-request-id").unwrap()))),
        "{}",
        gw.log()
    );
    assert_eq!(
        std::fs::read_to_string(&rotated).unwrap().lines().count(),
        3
    );
    let _ = std::fs::remove_file(&path);
    let _ = std::fs::remove_file(&rotated);
    let parsed: Vec<serde_json::Value> = lines
        .iter()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let first = &parsed[0];
    assert_eq!(first["request_id"], ok.header("x-request-id").unwrap());
    assert_eq!(first["method"], "GET");
    assert_eq!(first["path"], "/api/items");
    assert_eq!(first["route"], "api");
    assert_eq!(first["upstream"], "pool");
    assert_eq!(first["backend"], b.addr.to_string());
    assert_eq!(first["status"], 200);
    assert_eq!(first["rate_limit"], "none");
    assert_eq!(first["auth"], "none");
    assert!(first["duration_ms"].as_f64().unwrap() > 0.0);
    assert!(first["client"].as_str().unwrap().starts_with("127.0.0.1:"));
    assert!(!lines[0].contains("secret"));
    assert_eq!(parsed[1]["status"], 404);
    assert_eq!(parsed[1]["route"], serde_json::Value::Null);
    assert_eq!(parsed[2]["route"], "limited");
    assert_eq!(parsed[2]["rate_limit"], "allowed");
    assert_eq!(parsed[2]["bytes_in"], 5);
    assert!(parsed[2]["bytes_out"].as_u64().unwrap() > 0);
}
