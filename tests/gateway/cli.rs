//! `portcullis -t -c FILE`: every problem at once, each naming its key path.

use std::process::Command;

use crate::support::*;

fn check(yaml: &str) -> (i32, String) {
    let dir = temp_dir("cli");
    let f = dir.join("c.yaml");
    std::fs::write(&f, yaml).unwrap();
    let out = Command::new(BIN)
        .arg("-t")
        .arg("-c")
        .arg(&f)
        .output()
        .unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.code().unwrap_or(-1), text)
}

const GOOD: &str = r#"
upstreams:
  users: { backends: ["127.0.0.1:8001"] }
routes:
  - { name: users, match: { path_prefix: /api/users }, upstream: users }
"#;

#[test]
fn a_good_file_passes() {
    let (code, out) = check(GOOD);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("ok"), "{out}");
}

#[test]
fn shipped_configs_are_valid() {
    for f in ["conf/demo.yaml", "conf/gateway.yaml"] {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(f);
        let out = Command::new(BIN)
            .arg("-t")
            .arg("-c")
            .arg(&path)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{f}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

/// Each bad config and the exact line(s) it must produce.
#[test]
fn bad_configs_name_their_key_paths() {
    let cases: &[(&str, &[&str])] = &[
        (
            "upstreams:\n  users: { backends: [\"127.0.0.1:1\"] }\nroutes:\n  - { name: a, match: { path: /a }, upstream: users }\n  - { name: b, match: { path: /b }, upstream: ghost }\n",
            &["routes[1].upstream: unknown upstream \"ghost\""],
        ),
        (
            "server: { listen: [\"127.0.0.1:8080\"], bogus: 1 }\nupstreams:\n  u: { backends: [\"127.0.0.1:1\"], colour: red }\nroutes:\n  - { name: a, match: { path: /a, hots: x }, upstream: u }\n",
            &["server.bogus: unknown key", "upstreams.u.colour: unknown key", "routes[0].match.hots: unknown key"],
        ),
        (
            "server: { grace_period: 5 parsecs, idle_timeout: 10, request_header_timeout: 0s }\nupstreams:\n  u: { backends: [\"127.0.0.1:1\"], connect_timeout: \"-1s\" }\nroutes:\n  - { name: a, match: { path: /a }, upstream: u }\n",
            &[
                "server.grace_period: invalid duration \"5 parsecs\"",
                "server.idle_timeout: expected a duration string like \"250ms\" or \"2s\", found a number",
                "server.request_header_timeout: must be greater than zero",
                "upstreams.u.connect_timeout: invalid duration \"-1s\"",
            ],
        ),
        (
            "server: { listen: [\"nope\", \"127.0.0.1:99999\"], admin_listen: \"localhost\" }\nupstreams:\n  u: { backends: [\"10.0.0.1\"] }\nroutes:\n  - { name: a, match: { path: /a }, upstream: u }\n",
            &[
                "server.listen[0]: \"nope\" is not an address",
                "server.listen[1]: \"127.0.0.1:99999\" is not an address",
                "server.admin_listen: \"localhost\" is not an address",
                "upstreams.u.backends[0]: \"10.0.0.1\" is not an address",
            ],
        ),
        (
            "upstreams:\n  u: { backends: [] }\n  v: {}\nroutes:\n  - { name: a, match: { path: /a }, upstream: u }\n",
            &["upstreams.u.backends: at least one backend is required", "upstreams.v.backends: at least one backend is required"],
        ),
        (
            "upstreams:\n  u: { backends: [\"127.0.0.1:1\"] }\nroutes:\n  - { name: a, match: { path: /a }, upstream: u }\n  - { name: a, match: { path: /b }, upstream: u }\n  - { name: c, match: { path: /a }, upstream: u }\n",
            &[
                "routes[1].name: duplicate route name \"a\"",
                "routes[2].match: matches the same requests as routes[0] (\"a\")",
            ],
        ),
        (
            "upstreams:\n  u:\n    backends: [\"127.0.0.1:1\"]\n    health_check: { kind: http, interval: 2s, timeout: 0ms, healthy_threshold: 0, unhealthy_threshold: -1 }\n    retries: 99\nroutes:\n  - { name: a, match: { path: /a }, upstream: u }\n",
            &[
                "upstreams.u.health_check.timeout: must be greater than zero",
                "upstreams.u.health_check.healthy_threshold: 0 is out of range (1 to 100)",
                "upstreams.u.health_check.unhealthy_threshold: expected a whole number, found a number",
                "upstreams.u.retries: 99 is out of range (0 to 16)",
            ],
        ),
        (
            "upstreams:\n  u: { backends: [\"127.0.0.1:1\"], lb: fastest, hash_key: client_ip }\nroutes:\n  - { name: a, match: { path: \"/a/{x\" }, upstream: u }\n  - { name: b, match: { path_prefix: \"/b/{x}\" }, upstream: u }\n  - { name: c, match: { path: /c, path_prefix: /c }, upstream: u }\n  - { name: d, match: { path_prefix: /d }, upstream: u, strip_prefix: /e }\n  - { name: e, match: { path: \"/e/{id}/{id}\", methods: [GET, FETCH] }, upstream: u }\n",
            &[
                "upstreams.u.lb: unknown policy \"fastest\"",
                "upstreams.u.hash_key: only applies with lb: consistent_hash",
                "routes[0].match.path: \"{x\": a parameter is a whole segment",
                "routes[1].match.path_prefix: prefixes are literal",
                "routes[2].match: give either path or path_prefix, not both",
                "routes[3].strip_prefix: \"/e\" is not a leading part of the route's path",
                "routes[4].match.path: parameter {id} appears twice",
                "routes[4].match.methods[1]: unknown method \"FETCH\"",
            ],
        ),
        (
            "auth:\n  jwt:\n    algorithms: [none, HS257, HS256, HS256]\n    secrets: [{ env: PORTCULLIS_TEST_UNSET_VAR }, { file: /nonexistent/hs.key }, { kid: a }]\n    forward_claims: { sub: Host, name: \"bad header\" }\n    leeway: 1h\n    jwks_url: ftp://keys.example.com/jwks\nupstreams:\n  u: { backends: [\"127.0.0.1:1\"] }\nroutes:\n  - { name: a, match: { path: /a }, upstream: u, auth: maybe }\n",
            &[
                "auth.jwt.algorithms[0]: \"none\" can never be allowed",
                "auth.jwt.algorithms[1]: unknown algorithm \"HS257\"",
                "auth.jwt.algorithms[3]: HS256 is listed twice",
                "auth.jwt.leeway: at most 10m",
                "auth.jwt.jwks_url: \"ftp://keys.example.com/jwks\" is not an http:// or https:// URL",
                "auth.jwt.secrets[0].env: environment variable PORTCULLIS_TEST_UNSET_VAR is not set",
                "auth.jwt.secrets[1].file: cannot read /nonexistent/hs.key",
                "auth.jwt.secrets[2]: give exactly one of env or file",
                "auth.jwt.forward_claims.sub: Host cannot carry a claim",
                "auth.jwt.forward_claims.name: \"bad header\" is not a valid header name",
                "routes[0].auth: unknown mode \"maybe\"",
            ],
        ),
        (
            "auth:\n  jwt:\n    algorithms: [ES256]\nupstreams:\n  u: { backends: [\"127.0.0.1:1\"] }\nroutes:\n  - { name: a, match: { path: /a }, upstream: u }\n",
            &["auth.jwt: an RS/PS/ES/EdDSA algorithm is allowed but neither jwks_file nor jwks_url is set"],
        ),
        (
            "upstreams:\n  u: { backends: [\"127.0.0.1:1\"], lb: consistent_hash, hash_key: \"jwt:sub\" }\nroutes:\n  - { name: a, match: { path: /a }, upstream: u, auth: required }\n  - { name: b, match: { path: /b }, upstream: u, required_scopes: [x] }\n",
            &[
                "upstreams.u.hash_key: jwt: keys need auth.jwt",
                "routes[0].auth: needs auth.jwt to be configured",
                "routes[1].required_scopes: needs auth: required or optional",
            ],
        ),
        (
            "upstreams:\n  u: { backends: [\"127.0.0.1:1\"] }\nroutes:\n  - name: a\n    match: { path: \"/a/{id}\", methods: [GET, POST] }\n    upstream: u\n    strip_prefix: /a\n    aggregate:\n      timeout: 1s\n      parts:\n        - { name: p, upstream: ghost, path: \"/x/{path.nope}\" }\n        - { name: p, upstream: u, path: \"/y/{jwt.sub}\" }\n        - { name: q, upstream: u, path: /z, timeout: 2s }\n",
            &[
                "routes[0]: give either upstream or aggregate, not both",
                "routes[0].aggregate.parts[0].upstream: unknown upstream \"ghost\"",
                "routes[0].aggregate.parts[0].path: {path.nope}: the route's path has no {nope} parameter",
                "routes[0].aggregate.parts[1].name: duplicate part name \"p\"",
                "routes[0].aggregate.parts[1].path: {jwt.sub}: jwt values need auth.jwt",
                "routes[0].aggregate.parts[2].timeout: is longer than aggregate.timeout",
            ],
        ),
        (
            "upstreams:\n  u: { backends: [\"127.0.0.1:1\"] }\nroutes:\n  - name: a\n    match: { path_prefix: /a, methods: [POST] }\n    strip_prefix: /a\n    aggregate: { parts: [] }\n",
            &[
                "routes[0].aggregate.parts: at least one part is required",
                "routes[0].strip_prefix: does not apply to composite routes",
                "routes[0].match.methods: composite routes answer GET and HEAD only, not POST",
            ],
        ),
        ("routes: []\n", &["upstreams: at least one upstream is required", "routes: at least one route is required"]),
        ("server:\n  listen: [\n", &["YAML syntax error at line 3, column 1"]),
        ("- just\n- a list\n", &["expected a mapping, found a list"]),
    ];
    for (yaml, expected) in cases {
        let (code, out) = check(yaml);
        assert_eq!(code, 1, "exit code for:\n{yaml}\n{out}");
        for line in *expected {
            assert!(
                out.contains(line),
                "missing {line:?} for:\n{yaml}\ngot:\n{out}"
            );
        }
        let reported = out.lines().filter(|l| l.starts_with("  ")).count();
        assert_eq!(
            reported,
            expected.len(),
            "exactly the expected problems for:\n{yaml}\ngot:\n{out}"
        );
    }
}

#[test]
fn a_missing_file_is_an_error() {
    let out = Command::new(BIN)
        .args(["-t", "-c", "/nonexistent/portcullis.yaml"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("cannot read /nonexistent/portcullis.yaml")
    );
}

#[test]
fn short_hmac_secrets_are_refused() {
    let dir = temp_dir("short");
    std::fs::write(dir.join("short.key"), "too-short\n").unwrap();
    let (code, out) = check(&format!(
        "auth:\n  jwt:\n    algorithms: [HS256]\n    secrets: [{{ file: {}/short.key }}]\nupstreams:\n  u: {{ backends: [\"127.0.0.1:1\"] }}\nroutes:\n  - {{ name: a, match: {{ path: /a }}, upstream: u }}\n",
        dir.display()
    ));
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains("auth.jwt.secrets[0]: the secret is 9 bytes; HMAC keys need at least 32"),
        "{out}"
    );
}
