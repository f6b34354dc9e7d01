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
