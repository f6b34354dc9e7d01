//! Routing through the real gateway: the backend's echo shows which route and path won.

use crate::support::*;

fn two_backends() -> (TestBackend, TestBackend, String) {
    let a = TestBackend::start("a");
    let b = TestBackend::start("b");
    let yaml = format!(
        r#"
upstreams:
  a: {{ backends: ["{}"] }}
  b: {{ backends: ["{}"] }}
routes:
  - {{ name: users, match: {{ path_prefix: /api/users, methods: [GET, POST] }}, upstream: a, strip_prefix: /api }}
  - {{ name: user, match: {{ path: "/api/users/{{id}}/profile", methods: [GET] }}, upstream: b }}
  - {{ name: me, match: {{ path: /api/users/me }}, upstream: b }}
  - {{ name: admin, match: {{ path_prefix: /admin, host: admin.example.com }}, upstream: b }}
  - {{ name: exact, match: {{ path: /exact }}, upstream: a }}
  - {{ name: delete-only, match: {{ path: "/items/{{id}}", methods: [DELETE] }}, upstream: a }}
  - {{ name: put-items, match: {{ path: "/items/{{id}}", methods: [PUT] }}, upstream: b }}
"#,
        a.addr, b.addr
    );
    (a, b, yaml)
}

fn get_host(gw: &Gateway, host: &str, path: &str) -> Response {
    gw.send(&format!(
        "GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"
    ))
}

#[test]
fn prefix_template_exact_and_strip_prefix() {
    let (_a, _b, yaml) = two_backends();
    let gw = Gateway::start(&yaml);

    let r = gw.get("/api/users/7?x=1");
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["backend"], "a");
    assert_eq!(
        r.json()["path"],
        "/users/7?x=1",
        "prefix stripped, query kept"
    );

    let r = gw.get("/api/users");
    assert_eq!(r.json()["path"], "/users");

    let r = gw.get("/api/users/7/profile");
    assert_eq!(r.json()["backend"], "b", "template beats prefix");
    assert_eq!(
        r.json()["path"],
        "/api/users/7/profile",
        "no strip_prefix on this route"
    );

    let r = gw.get("/api/users/me");
    assert_eq!(r.json()["backend"], "b", "exact beats prefix");

    assert_eq!(gw.get("/exact").json()["backend"], "a");
    gw.get("/exact/more").assert_error(404, "not_found");
}

#[test]
fn prefixes_are_segment_aware() {
    let (_a, _b, yaml) = two_backends();
    let gw = Gateway::start(&yaml);
    gw.get("/api/usersx").assert_error(404, "not_found");
    gw.get("/api/user").assert_error(404, "not_found");
    assert_eq!(gw.get("/api/users/").json()["path"], "/users/");
}

#[test]
fn host_matching() {
    let (_a, _b, yaml) = two_backends();
    let gw = Gateway::start(&yaml);
    assert_eq!(
        get_host(&gw, "admin.example.com", "/admin/x").json()["backend"],
        "b"
    );
    assert_eq!(
        get_host(&gw, "ADMIN.example.com:8080", "/admin").json()["backend"],
        "b"
    );
    get_host(&gw, "other.example.com", "/admin/x").assert_error(404, "not_found");
}

#[test]
fn method_mismatch_is_405_with_allow() {
    let (_a, _b, yaml) = two_backends();
    let gw = Gateway::start(&yaml);
    let r = gw.send("DELETE /api/users/7 HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n");
    r.assert_error(405, "method_not_allowed");
    assert_eq!(r.header("allow"), Some("GET, POST"));

    let r = gw.send("GET /items/3 HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n");
    r.assert_error(405, "method_not_allowed");
    assert_eq!(r.header("allow"), Some("PUT, DELETE"));

    let r = gw
        .send("PUT /items/3 HTTP/1.1\r\nHost: t\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
    assert_eq!(
        r.json()["backend"],
        "b",
        "a method picks among routes on one path"
    );
}

#[test]
fn unknown_path_is_404_json() {
    let (_a, _b, yaml) = two_backends();
    let gw = Gateway::start(&yaml);
    gw.get("/nothing/here").assert_error(404, "not_found");
}

/// Each raw path, what the router must do with it, and the path the backend must see.
#[test]
fn dot_segments_and_encoded_tricks() {
    let (_a, _b, yaml) = two_backends();
    let gw = Gateway::start(&yaml);
    let cases: &[(&str, Option<(&str, &str)>)] = &[
        // (raw path, Some((backend, path seen upstream)) or None for 400)
        ("/api/users/../users/1", Some(("a", "/users/1"))),
        ("/api/users/./1", Some(("a", "/users/1"))),
        ("/api//users//1", Some(("a", "/users/1"))),
        ("/api/%75sers/1", Some(("a", "/users/1"))),
        ("/api/users/%2e%2e/users/2", Some(("a", "/users/2"))),
        ("/api/users/7/%2E%2e/8", Some(("a", "/users/8"))),
        ("/exact/../api/users/me", Some(("b", "/api/users/me"))),
        ("/api/users/a%2fb", Some(("a", "/users/a%2Fb"))),
        ("/../api/users", None),
        ("/api/users/../../../etc/passwd", None),
        ("/api/%2e%2e/%2e%2e/x", None),
        ("/api/users/..;/admin", None),
        ("/api/users/%zz", None),
        ("/api/users\\..\\admin", None),
    ];
    for (raw, want) in cases {
        let r = gw.send(&format!(
            "GET {raw} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n"
        ));
        match want {
            Some((backend, path)) => {
                assert_eq!(r.status, 200, "{raw}: {}", String::from_utf8_lossy(&r.body));
                let v = r.json();
                assert_eq!(v["backend"], *backend, "{raw}");
                assert_eq!(v["path"], *path, "{raw}");
            }
            None => {
                r.assert_error(400, "bad_request");
            }
        }
    }
}

/// Fully percent-decodes a path (repeatedly), as the most credulous upstream would.
fn credulous_decode(path: &str) -> String {
    let mut cur = path.to_string();
    for _ in 0..4 {
        let bytes = cur.as_bytes();
        let mut out = Vec::with_capacity(bytes.len());
        let mut i = 0;
        while i < bytes.len() {
            let hex = |b: u8| (b as char).to_digit(16);
            match (
                bytes[i],
                bytes.get(i + 1).and_then(|&b| hex(b)),
                bytes.get(i + 2).and_then(|&b| hex(b)),
            ) {
                (b'%', Some(h), Some(l)) => {
                    out.push((h * 16 + l) as u8);
                    i += 3;
                }
                (b, _, _) => {
                    out.push(b);
                    i += 1;
                }
            }
        }
        cur = String::from_utf8_lossy(&out).replace('\\', "/");
    }
    // Resolve dot segments and parameters the way a lenient server would.
    let mut segs: Vec<&str> = Vec::new();
    for seg in cur.split('/') {
        match seg.split(';').next().unwrap_or(seg) {
            "" | "." => {}
            ".." => {
                segs.pop();
            }
            s => segs.push(s),
        }
    }
    format!("/{}", segs.join("/")).to_ascii_lowercase()
}

/// No spelling of a protected path reaches the (shared) upstream without the protected
/// route's auth and limit: every answer is checked, and so is every path the upstream saw.
#[test]
fn no_spelling_reaches_a_protected_route_around_its_auth_or_limit() {
    let b = TestBackend::start("shared");
    let dir = temp_dir("confusion");
    std::fs::write(dir.join("hs.key"), [b'k'; 32]).unwrap();
    let gw = Gateway::start(&format!(
        r#"
auth:
  jwt: {{ algorithms: [HS256], secrets: [ {{ file: {key} }} ] }}
rate_limits:
  once: {{ key: route, limit: 1, window: 60s }}
upstreams:
  pool: {{ backends: ["{b}"] }}
routes:
  - {{ name: admin, match: {{ path_prefix: /admin }}, upstream: pool }}
  - {{ name: limited, match: {{ path_prefix: /limited }}, upstream: pool, auth: none, rate_limit: [once] }}
  - {{ name: public, match: {{ path_prefix: /public }}, upstream: pool, auth: none }}
"#,
        key = dir.join("hs.key").display(),
        b = b.addr
    ));
    // The one request the limit allows, spent up front.
    assert_eq!(gw.get("/limited/x").status, 200);
    let cases: &[(&str, u16)] = &[
        ("/admin/users", 401),
        ("/public/../admin/users", 401),
        ("/public/%2e%2e/admin/users", 401),
        ("/public/%2E%2e/admin", 401),
        ("/public/.%2e/admin", 401),
        ("//admin//users", 401),
        ("/public;x=1/../admin", 401),
        ("/public/;/../../admin", 401),
        ("/%61dmin", 401),
        ("/%61%64%6D%69%6E/users", 401),
        ("/public/%252e%252e/admin", 400),
        ("/public/%25252e%25252e/admin", 400),
        ("/public/..%2fadmin", 400),
        ("/public/..%2Fadmin", 400),
        ("/public/..%5cadmin", 400),
        ("/public/..;/admin", 400),
        ("/public\\..\\admin", 400),
        ("/public/%c0%ae%c0%ae/admin", 400),
        ("/public/%e0%80%ae%e0%80%ae/admin", 400),
        ("/public/..%c0%afadmin", 400),
        ("/ADMIN/users", 404),
        ("/Admin", 404),
        ("/admin;jsessionid=1", 404),
        ("/public/../limited/x", 429),
        ("/public/%2e%2e/limited", 429),
        ("//limited", 429),
        ("/%6cimited/x", 429),
        ("/public/ok", 200),
        ("/public/a%2fb", 200),
    ];
    let mut forwarded = 1;
    for (raw, want) in cases {
        let r = gw.send(&format!(
            "GET {raw} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n"
        ));
        assert_eq!(
            r.status,
            *want,
            "{raw}: {}",
            String::from_utf8_lossy(&r.body)
        );
        if r.status == 200 {
            forwarded += 1;
            let seen = r.json()["path"].as_str().unwrap().to_string();
            let resolved = credulous_decode(&seen);
            assert!(
                !resolved.starts_with("/admin") && !resolved.starts_with("/limited"),
                "{raw} reached the upstream as {seen} ({resolved})"
            );
        }
    }
    // Nothing else was forwarded behind the gateway's back.
    assert_eq!(b.requests(), forwarded);
}

#[test]
fn pipelined_requests_are_answered_in_order_on_one_connection() {
    use std::io::{Read, Write};
    let (_a, _b, yaml) = two_backends();
    let gw = Gateway::start(&yaml);
    let mut s = std::net::TcpStream::connect(gw.addr).unwrap();
    s.set_read_timeout(Some(std::time::Duration::from_secs(5)))
        .unwrap();
    // Three requests in one write: the gateway must answer each, in order, and not read the
    // second one as part of the first.
    s.write_all(
        b"GET /api/users/7/profile HTTP/1.1\r\nHost: x\r\n\r\n\
          GET /exact HTTP/1.1\r\nHost: x\r\n\r\n\
          GET /api/users/me HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    )
    .unwrap();
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).unwrap();
    let text = String::from_utf8_lossy(&raw);
    assert_eq!(text.matches("HTTP/1.1 200").count(), 3, "{text}");
    let at = |needle: &str| {
        text.find(needle)
            .unwrap_or_else(|| panic!("{needle} missing: {text}"))
    };
    let (first, second, third) = (
        at("\"path\":\"/api/users/7/profile\""),
        at("\"path\":\"/exact\""),
        at("\"path\":\"/api/users/me\""),
    );
    assert!(first < second && second < third, "{text}");
}
