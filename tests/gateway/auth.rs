//! JWT authentication end to end: hostile tokens, each with its exact answer; every algorithm;
//! optional routes, scopes, identity forwarding and spoofing; JWKS rotation through a URL.

use jsonwebtoken::Algorithm;
use serde_json::json;

use crate::support::*;
use crate::tokens::*;

const INVALID: &str = "Bearer realm=\"portcullis\", error=\"invalid_token\", error_description=\"the token is invalid\"";
const EXPIRED: &str = "Bearer realm=\"portcullis\", error=\"invalid_token\", error_description=\"the token has expired\"";
const NOT_YET: &str = "Bearer realm=\"portcullis\", error=\"invalid_token\", error_description=\"the token is not valid yet\"";
const MISSING: &str = "Bearer realm=\"portcullis\"";

struct AuthGateway {
    gw: Gateway,
    backend: TestBackend,
    _dir: std::path::PathBuf,
}

fn auth_gateway(extra_jwt: &str) -> AuthGateway {
    let backend = TestBackend::start("b");
    let dir = temp_dir("secrets");
    std::fs::write(dir.join("hs.key"), HS_SECRET).unwrap();
    std::fs::write(dir.join("hs1.key"), [HS1_SECRET, b"\n"].concat()).unwrap();
    let gw = Gateway::start(&format!(
        r#"
auth:
  jwt:
    issuer: https://issuer.test
    audiences: [api, other-api]
    algorithms: [HS256, HS512, RS256, PS256, ES256, ES384, EdDSA]
    leeway: 30s
    jwks_file: {jwks}
    secrets:
      - {{ file: {d}/hs.key }}
      - {{ kid: hs1, file: {d}/hs1.key }}
    forward_claims: {{ sub: X-User-Id, scope: X-User-Scopes }}
{extra_jwt}
upstreams:
  pool: {{ backends: ["{b}"] }}
routes:
  - {{ name: secure, match: {{ path_prefix: /secure }}, upstream: pool }}
  - {{ name: opt, match: {{ path_prefix: /opt }}, upstream: pool, auth: optional }}
  - {{ name: open, match: {{ path_prefix: /open }}, upstream: pool, auth: none }}
  - {{ name: admin, match: {{ path_prefix: /admin }}, upstream: pool, required_scopes: [admin:write] }}
"#,
        jwks = fixture("jwt/jwks.json").display(),
        d = dir.display(),
        b = backend.addr
    ));
    AuthGateway {
        gw,
        backend,
        _dir: dir,
    }
}

fn with_token(gw: &Gateway, path: &str, auth_header: &str) -> Response {
    gw.send(&format!(
        "GET {path} HTTP/1.1\r\nHost: t\r\nAuthorization: {auth_header}\r\nConnection: close\r\n\r\n"
    ))
}

fn bearer(gw: &Gateway, path: &str, token: &str) -> Response {
    with_token(gw, path, &format!("Bearer {token}"))
}

fn assert_401(r: &Response, www: &str, what: &str) {
    assert_eq!(
        r.status,
        401,
        "{what}: {}",
        String::from_utf8_lossy(&r.body)
    );
    r.assert_error(401, "unauthorized");
    assert_eq!(r.header("www-authenticate"), Some(www), "{what}");
}

#[test]
fn every_configured_algorithm_verifies() {
    let a = auth_gateway("");
    let c = good_claims();
    let cases = [
        (
            "HS256 without kid",
            sign(&c, &Key::Hmac(HS_SECRET), Algorithm::HS256, None),
        ),
        (
            "HS512 without kid",
            sign(&c, &Key::Hmac(HS_SECRET), Algorithm::HS512, None),
        ),
        (
            "HS256 kid hs1",
            sign(&c, &Key::Hmac(HS1_SECRET), Algorithm::HS256, Some("hs1")),
        ),
        (
            "RS256",
            sign(&c, &Key::Rsa1, Algorithm::RS256, Some("rsa1")),
        ),
        (
            "PS256",
            sign(&c, &Key::Rsa1, Algorithm::PS256, Some("rsa1")),
        ),
        (
            "ES256",
            sign(&c, &Key::Ec256, Algorithm::ES256, Some("ec256")),
        ),
        (
            "ES384",
            sign(&c, &Key::Ec384, Algorithm::ES384, Some("ec384")),
        ),
        ("EdDSA", sign(&c, &Key::Ed, Algorithm::EdDSA, Some("ed1"))),
    ];
    for (what, token) in cases {
        let r = bearer(&a.gw, "/secure/x", &token);
        assert_eq!(
            r.status,
            200,
            "{what}: {}",
            String::from_utf8_lossy(&r.body)
        );
        assert_eq!(r.json()["headers"]["x-user-id"], "alice", "{what}");
        // Twice: the second answer comes from the verified-token cache.
        assert_eq!(
            bearer(&a.gw, "/secure/x", &token).status,
            200,
            "{what} (cached)"
        );
    }
}

/// The hostile-token table: each token, its exact status and WWW-Authenticate.
#[test]
fn hostile_tokens_are_refused_with_exact_answers() {
    let trap = JsonServer::start("{\"keys\": []}");
    let a = auth_gateway("");
    let c = good_claims();
    let hs =
        |claims: &serde_json::Value| sign(claims, &Key::Hmac(HS_SECRET), Algorithm::HS256, None);
    let good = hs(&c);
    let (h, p, s) = {
        let mut it = good.split('.');
        (
            it.next().unwrap().to_string(),
            it.next().unwrap().to_string(),
            it.next().unwrap().to_string(),
        )
    };
    let rsa_pem = std::fs::read(fixture("jwt/rsa1.pub.pem")).unwrap();
    let nested = {
        let mut v = json!(1);
        for _ in 0..200 {
            v = json!([v]);
        }
        with(c.clone(), "deep", v)
    };
    let trap_url = format!("http://{}/jwks.json", trap.addr);
    let attacker_jwk = json!({"kty": "oct", "k": b64(b"attacker-secret-attacker-secret-attacker")});
    let now = now();

    let cases: Vec<(&str, String, u16, &str)> = vec![
        (
            "alg none",
            unsigned(&json!({"alg": "none", "typ": "JWT"}), &c, ""),
            401,
            INVALID,
        ),
        (
            "alg None",
            unsigned(&json!({"alg": "None"}), &c, ""),
            401,
            INVALID,
        ),
        (
            "alg NONE with a signature",
            unsigned(&json!({"alg": "NONE"}), &c, &s),
            401,
            INVALID,
        ),
        (
            "alg nOnE",
            unsigned(&json!({"alg": "nOnE"}), &c, "x"),
            401,
            INVALID,
        ),
        ("empty signature", format!("{h}.{p}."), 401, INVALID),
        (
            "wrong key",
            sign(
                &c,
                &Key::Hmac(b"not-the-right-secret-not-the-right-secret"),
                Algorithm::HS256,
                None,
            ),
            401,
            INVALID,
        ),
        (
            "RS256 public key used as HS256 secret, kid rsa1",
            sign(
                &c,
                &Key::HmacBytes(rsa_pem.clone()),
                Algorithm::HS256,
                Some("rsa1"),
            ),
            401,
            INVALID,
        ),
        (
            "RS256 public key used as HS256 secret, no kid",
            sign(&c, &Key::HmacBytes(rsa_pem), Algorithm::HS256, None),
            401,
            INVALID,
        ),
        (
            "alg not on the allow-list (HS384)",
            sign(&c, &Key::Hmac(HS_SECRET), Algorithm::HS384, None),
            401,
            INVALID,
        ),
        (
            "RS256 signed by an unknown key",
            sign(&c, &Key::Rsa2, Algorithm::RS256, Some("rsa1")),
            401,
            INVALID,
        ),
        (
            "unknown kid",
            sign(&c, &Key::Rsa1, Algorithm::RS256, Some("nope")),
            401,
            INVALID,
        ),
        (
            "expired an hour ago",
            hs(&with(c.clone(), "exp", json!(now - 3600))),
            401,
            EXPIRED,
        ),
        (
            "expired beyond the leeway",
            hs(&with(c.clone(), "exp", json!(now - 60))),
            401,
            EXPIRED,
        ),
        (
            "nbf in the future",
            hs(&with(c.clone(), "nbf", json!(now + 3600))),
            401,
            NOT_YET,
        ),
        (
            "iat in the future",
            hs(&with(c.clone(), "iat", json!(now + 3600))),
            401,
            NOT_YET,
        ),
        (
            "wrong iss",
            hs(&with(c.clone(), "iss", json!("https://evil.test"))),
            401,
            INVALID,
        ),
        ("missing iss", hs(&without(c.clone(), "iss")), 401, INVALID),
        (
            "iss as a number",
            hs(&with(c.clone(), "iss", json!(7))),
            401,
            INVALID,
        ),
        (
            "wrong aud",
            hs(&with(c.clone(), "aud", json!("someone-else"))),
            401,
            INVALID,
        ),
        (
            "aud array without ours",
            hs(&with(c.clone(), "aud", json!(["x", "y"]))),
            401,
            INVALID,
        ),
        (
            "aud as an object",
            hs(&with(c.clone(), "aud", json!({"api": true}))),
            401,
            INVALID,
        ),
        ("missing aud", hs(&without(c.clone(), "aud")), 401, INVALID),
        ("missing exp", hs(&without(c.clone(), "exp")), 401, INVALID),
        (
            "exp as a string",
            hs(&with(c.clone(), "exp", json!((now + 600).to_string()))),
            401,
            INVALID,
        ),
        (
            "exp negative",
            hs(&with(c.clone(), "exp", json!(-1))),
            401,
            INVALID,
        ),
        (
            "nbf as a string",
            hs(&with(c.clone(), "nbf", json!("0"))),
            401,
            INVALID,
        ),
        (
            "sub as a number",
            hs(&with(c.clone(), "sub", json!(42))),
            401,
            INVALID,
        ),
        (
            "scope as an array",
            hs(&with(c.clone(), "scope", json!(["read"]))),
            401,
            INVALID,
        ),
        (
            "unknown crit",
            sign_raw(
                &json!({"alg": "HS256", "crit": ["exp"], "exp": 1}),
                &c,
                &Key::Hmac(HS_SECRET),
                Algorithm::HS256,
            ),
            401,
            INVALID,
        ),
        (
            "b64: false",
            sign_raw(
                &json!({"alg": "HS256", "b64": false, "crit": ["b64"]}),
                &c,
                &Key::Hmac(HS_SECRET),
                Algorithm::HS256,
            ),
            401,
            INVALID,
        ),
        (
            "jku to a key server",
            sign_raw(
                &json!({"alg": "HS256", "jku": trap_url}),
                &c,
                &Key::Hmac(b"attacker-secret-attacker-secret-attacker"),
                Algorithm::HS256,
            ),
            401,
            INVALID,
        ),
        (
            "x5u to a key server",
            sign_raw(
                &json!({"alg": "HS256", "x5u": trap_url}),
                &c,
                &Key::Hmac(b"attacker-secret-attacker-secret-attacker"),
                Algorithm::HS256,
            ),
            401,
            INVALID,
        ),
        (
            "embedded jwk",
            sign_raw(
                &json!({"alg": "HS256", "jwk": attacker_jwk}),
                &c,
                &Key::Hmac(b"attacker-secret-attacker-secret-attacker"),
                Algorithm::HS256,
            ),
            401,
            INVALID,
        ),
        (
            "x5c chain",
            sign_raw(
                &json!({"alg": "RS256", "x5c": ["MIIB"]}),
                &c,
                &Key::Rsa2,
                Algorithm::RS256,
            ),
            401,
            INVALID,
        ),
        ("two segments", format!("{h}.{p}"), 401, INVALID),
        ("four segments", format!("{h}.{p}.{s}.{s}"), 401, INVALID),
        ("padded base64", format!("{h}=.{p}.{s}"), 401, INVALID),
        (
            "non-URL-safe base64",
            format!("{}.{p}.{s}", h.replace('-', "+").replace('_', "/") + "+/"),
            401,
            INVALID,
        ),
        (
            "oversized token",
            format!("{h}.{}.{s}", "A".repeat(9000)),
            401,
            INVALID,
        ),
        ("deeply nested claims", hs(&nested), 401, INVALID),
        (
            "JSON-serialised JWS",
            json!({"payload": p, "protected": h, "signature": s})
                .to_string()
                .replace(' ', ""),
            401,
            INVALID,
        ),
        (
            "header not JSON",
            format!("{}.{p}.{s}", b64(b"not json")),
            401,
            INVALID,
        ),
        (
            "kid as a number",
            sign_raw(
                &json!({"alg": "HS256", "kid": 5}),
                &c,
                &Key::Hmac(HS_SECRET),
                Algorithm::HS256,
            ),
            401,
            INVALID,
        ),
        (
            "within the leeway",
            hs(&with(c.clone(), "exp", json!(now - 10))),
            200,
            "",
        ),
        (
            "aud array with ours",
            hs(&with(c.clone(), "aud", json!(["x", "api"]))),
            200,
            "",
        ),
        (
            "fractional exp",
            hs(&with(c.clone(), "exp", json!(now as f64 + 600.5))),
            200,
            "",
        ),
    ];
    for (what, token, status, www) in &cases {
        let r = bearer(&a.gw, "/secure/x", token);
        if *status == 200 {
            assert_eq!(
                r.status,
                200,
                "{what}: {}",
                String::from_utf8_lossy(&r.body)
            );
        } else {
            assert_401(&r, www, what);
        }
    }
    assert_eq!(
        trap.accepted.load(std::sync::atomic::Ordering::SeqCst),
        0,
        "jku/x5u must never be fetched"
    );
    let passed = cases.iter().filter(|c| c.2 == 200).count();
    assert_eq!(
        a.backend.requests(),
        passed,
        "refused tokens never reach the backend"
    );
}

#[test]
fn missing_and_non_bearer_credentials() {
    let a = auth_gateway("");
    let r = a.gw.get("/secure/x");
    assert_401(&r, MISSING, "no Authorization");
    assert_401(
        &with_token(&a.gw, "/secure/x", "Basic YWxpY2U6c2VjcmV0"),
        MISSING,
        "Basic",
    );
    assert_401(
        &with_token(&a.gw, "/secure/x", "Bearer"),
        INVALID,
        "Bearer without token",
    );
    let token = sign(
        &good_claims(),
        &Key::Hmac(HS_SECRET),
        Algorithm::HS256,
        None,
    );
    for scheme in ["bearer", "BEARER", "BeArEr"] {
        let r = with_token(&a.gw, "/secure/x", &format!("{scheme} {token}"));
        assert_eq!(r.status, 200, "scheme {scheme}");
    }
    let two = a.gw.send(&format!(
        "GET /secure/x HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer {token}\r\nAuthorization: Bearer {token}\r\nConnection: close\r\n\r\n"
    ));
    assert_401(&two, INVALID, "two Authorization headers");
    assert_eq!(a.backend.requests(), 3);
}

#[test]
fn rfc7515_a1_token_is_expired_with_its_key_and_invalid_without() {
    // A verified external vector, copied from shared/fixtures so the suite is self-contained.
    let fx: serde_json::Value =
        serde_json::from_slice(&std::fs::read(fixture("rfc7515-a1.json")).unwrap()).unwrap();
    let token = fx["token"].as_str().unwrap();
    let key = base64::Engine::decode(
        &base64::engine::general_purpose::URL_SAFE_NO_PAD,
        fx["jwk"]["k"].as_str().unwrap(),
    )
    .unwrap();
    let backend = TestBackend::start("b");
    let dir = temp_dir("a1");
    std::fs::write(dir.join("a1.key"), &key).unwrap();
    let gw = Gateway::start(&format!(
        "auth:\n  jwt:\n    algorithms: [HS256]\n    secrets: [{{ file: {}/a1.key }}]\nupstreams:\n  pool: {{ backends: [\"{}\"] }}\nroutes:\n  - {{ name: r, match: {{ path_prefix: / }}, upstream: pool }}\n",
        dir.display(),
        backend.addr
    ));
    assert_401(&bearer(&gw, "/x", token), EXPIRED, "A.1 with its key");
    let a = auth_gateway("");
    assert_401(
        &bearer(&a.gw, "/secure/x", token),
        INVALID,
        "A.1 with another key",
    );
}

#[test]
fn optional_none_and_scopes() {
    let a = auth_gateway("");
    let good = sign(
        &good_claims(),
        &Key::Hmac(HS_SECRET),
        Algorithm::HS256,
        None,
    );
    // optional: anonymous passes, a bad token does not, a good one forwards identity.
    let r = a.gw.get("/opt/x");
    assert_eq!(r.status, 200);
    assert!(r.json()["headers"].get("x-user-id").is_none());
    assert_401(
        &bearer(&a.gw, "/opt/x", "garbage"),
        INVALID,
        "optional with a bad token",
    );
    assert_eq!(
        bearer(&a.gw, "/opt/x", &good).json()["headers"]["x-user-id"],
        "alice"
    );
    // none: tokens are not even looked at.
    assert_eq!(bearer(&a.gw, "/open/x", "garbage").status, 200);

    // scopes: `scope` string or `scp` array.
    assert_eq!(bearer(&a.gw, "/admin/x", &good).status, 200);
    let read_only = sign(
        &with(good_claims(), "scope", json!("read")),
        &Key::Hmac(HS_SECRET),
        Algorithm::HS256,
        None,
    );
    let r = bearer(&a.gw, "/admin/x", &read_only);
    r.assert_error(403, "forbidden");
    assert_eq!(
        r.header("www-authenticate"),
        Some("Bearer realm=\"portcullis\", error=\"insufficient_scope\", error_description=\"the token lacks a required scope\", scope=\"admin:write\"")
    );
    let scp = sign(
        &with(
            without(good_claims(), "scope"),
            "scp",
            json!(["admin:write"]),
        ),
        &Key::Hmac(HS_SECRET),
        Algorithm::HS256,
        None,
    );
    assert_eq!(bearer(&a.gw, "/admin/x", &scp).status, 200);
}

#[test]
fn identity_headers_cannot_be_spoofed() {
    let a = auth_gateway("");
    let spoof = "X-User-Id: admin\r\nx-user-id: root\r\nX-User-Scopes: everything\r\n";
    for path in ["/open/x", "/opt/x"] {
        let r = a.gw.send(&format!(
            "GET {path} HTTP/1.1\r\nHost: t\r\n{spoof}Connection: close\r\n\r\n"
        ));
        let h = &r.json()["headers"];
        assert!(h.get("x-user-id").is_none(), "{path}: {h}");
        assert!(h.get("x-user-scopes").is_none(), "{path}: {h}");
    }
    let token = sign(
        &good_claims(),
        &Key::Hmac(HS_SECRET),
        Algorithm::HS256,
        None,
    );
    let r = a.gw.send(&format!(
        "GET /secure/x HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer {token}\r\n{spoof}Connection: close\r\n\r\n"
    ));
    let h = &r.json()["headers"];
    assert_eq!(h["x-user-id"], "alice");
    assert_eq!(h["x-user-scopes"], "read admin:write");
    // Documented choice: the token itself goes upstream too.
    assert_eq!(h["authorization"], format!("Bearer {token}"));
}

#[test]
fn jwks_url_rotation_and_unknown_kid_storms() {
    let jwks1 = std::fs::read_to_string(fixture("jwt/jwks.json")).unwrap();
    let jwks2 = std::fs::read_to_string(fixture("jwt/jwks-rotated.json")).unwrap();
    let server = JsonServer::start(&jwks1);
    let backend = TestBackend::start("b");
    let gw = Gateway::start(&format!(
        "auth:\n  jwt:\n    algorithms: [RS256]\n    jwks_url: http://{}/.well-known/jwks.json\n    jwks_refresh: 1h\nupstreams:\n  pool: {{ backends: [\"{}\"] }}\nroutes:\n  - {{ name: r, match: {{ path_prefix: / }}, upstream: pool }}\n",
        server.addr, backend.addr
    ));
    let claims = json!({"sub": "alice", "exp": now() + 600});
    let old = sign(&claims, &Key::Rsa1, Algorithm::RS256, Some("rsa1"));
    let new = sign(&claims, &Key::Rsa2, Algorithm::RS256, Some("rsa2"));
    assert_eq!(server.hits(), 1, "fetched once at start");
    assert_eq!(bearer(&gw, "/x", &old).status, 200);

    server.set_body(&jwks2);
    // The first token with the new kid triggers one refresh and passes.
    assert_eq!(bearer(&gw, "/x", &new).status, 200);
    assert_eq!(server.hits(), 2);

    // A storm of random kids right after: no more fetches inside the refresh interval.
    for i in 0..50 {
        let t = sign(
            &claims,
            &Key::Rsa2,
            Algorithm::RS256,
            Some(&format!("random-{i}")),
        );
        assert_401(&bearer(&gw, "/x", &t), INVALID, "random kid");
    }
    assert_eq!(
        server.hits(),
        2,
        "unknown kids must not hammer the key server"
    );
    // The rotated-out key no longer verifies, even though its token was cached.
    assert_401(&bearer(&gw, "/x", &old), INVALID, "rotated-out key");
    assert_eq!(bearer(&gw, "/x", &new).status, 200);
}

#[test]
fn unreachable_jwks_url_at_start() {
    let dead = free_port();
    let b = TestBackend::start("b");
    let rest = |extra: &str| {
        format!(
            "auth:\n  jwt:\n    algorithms: [RS256]\n    jwks_url: http://127.0.0.1:{dead}/jwks\n{extra}upstreams:\n  pool: {{ backends: [\"{}\"] }}\nroutes:\n  - {{ name: r, match: {{ path_prefix: / }}, upstream: pool }}\n",
            b.addr
        )
    };
    let (code, log) = Gateway::start_failing(&rest(""));
    assert_eq!(code, 1, "{log}");
    assert!(log.contains("auth.jwt.jwks_url"), "{log}");

    // With a jwks_file beside it, the gateway starts on the file's keys.
    let gw = Gateway::start(&rest(&format!(
        "    jwks_file: {}\n",
        fixture("jwt/jwks.json").display()
    )));
    let t = sign(
        &json!({"exp": now() + 60}),
        &Key::Rsa1,
        Algorithm::RS256,
        Some("rsa1"),
    );
    assert_eq!(bearer(&gw, "/x", &t).status, 200);
}

#[test]
fn consistent_hash_on_a_jwt_claim() {
    let (_backends, list) = backends(3);
    let dir = temp_dir("hash");
    std::fs::write(dir.join("hs.key"), HS_SECRET).unwrap();
    let gw = Gateway::start(&format!(
        "auth:\n  jwt:\n    algorithms: [HS256]\n    secrets: [{{ file: {}/hs.key }}]\nupstreams:\n  pool: {{ backends: [{list}], lb: consistent_hash, hash_key: \"jwt:sub\" }}\nroutes:\n  - {{ name: r, match: {{ path_prefix: / }}, upstream: pool }}\n",
        dir.display()
    ));
    assert_sticky(12, 3, |user| {
        let t = sign(
            &json!({"sub": format!("user-{user}"), "exp": now() + 60}),
            &Key::Hmac(HS_SECRET),
            Algorithm::HS256,
            None,
        );
        bearer(&gw, "/x", &t).backend()
    });
}
