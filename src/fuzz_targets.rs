//! The bodies of the fuzz targets (`fuzz/fuzz_targets/*.rs`), kept in the library so that the
//! same code also replays the committed corpora and crash regressions in an ordinary test
//! (`tests/fuzz_regressions.rs`). Each takes arbitrary bytes and must never panic; where an
//! invariant holds for every input, it is asserted here.

use std::borrow::Cow;
use std::sync::OnceLock;

use http::Method;

use crate::aggregate::template::{Source, Template, Values};
use crate::auth::keys::{jwks_entries, secret_entries, KeySet};
use crate::auth::token::{has_unknown_kid, verify, TokenPolicy};
use crate::config::{HmacSecret, JwtAlgorithm, SecretSource};
use crate::routing::{normalize_path, Lookup, Router};

/// A target's body: arbitrary bytes in, a panic on a bug.
pub type Target = fn(&[u8]);

/// Every target, by the name of its fuzz binary and corpus folder.
pub const TARGETS: &[(&str, Target)] = &[
    ("config", config),
    ("path_routing", path_routing),
    ("jwt", jwt),
    ("jwks", jwks),
    ("template", template),
];

/// Config parsing and validation: any text, never a panic.
pub fn config(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let _ = crate::config::parse(&text);
}

const ROUTES: &str = r#"
upstreams:
  u: { backends: ["127.0.0.1:9"] }
routes:
  - { name: a, match: { path: "/users/{id}" }, upstream: u }
  - { name: b, match: { path_prefix: /api, methods: [GET, POST] }, upstream: u, strip_prefix: /api }
  - { name: c, match: { path: "/api/items/{item}/parts/{part}", host: shop.example.com }, upstream: u }
  - { name: d, match: { path_prefix: / }, upstream: u }
"#;

fn router() -> &'static Router {
    static ROUTER: OnceLock<Router> = OnceLock::new();
    ROUTER.get_or_init(|| {
        let cfg = crate::config::parse(ROUTES).expect("the fuzz routes are valid");
        Router::build(&cfg.routes)
    })
}

/// Path normalisation and routing. Input: `host \n method \n path`. Invariants: a normalised
/// path is idempotent (normalising it again changes nothing) and has no dot segment, and
/// routing it never panics.
pub fn path_routing(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let mut parts = text.splitn(3, '\n');
    let (host, method, path) = (parts.next(), parts.next(), parts.next());
    let path = path.or(method).or(host).unwrap_or("");
    let method = Method::from_bytes(method.unwrap_or("GET").as_bytes()).unwrap_or(Method::GET);
    let Ok(normal) = normalize_path(path) else {
        return;
    };
    let again = normalize_path(&normal).expect("a normalised path normalises");
    assert_eq!(again, normal, "normalisation is idempotent");
    assert!(
        !normal.split('/').any(|s| s == "." || s == ".."),
        "no dot segment survives: {normal}"
    );
    match router().lookup(host, &method, &normal) {
        Lookup::Found { params, .. } => {
            for (_, value) in params.iter() {
                assert!(!value.contains('/'), "a parameter is one segment");
            }
        }
        Lookup::MethodNotAllowed(allow) => assert!(!allow.is_empty()),
        Lookup::NotFound => {}
    }
}

const JWKS: &[u8] = include_bytes!("../tests/fixtures/jwt/jwks.json");

fn keys() -> &'static (KeySet, TokenPolicy) {
    static KEYS: OnceLock<(KeySet, TokenPolicy)> = OnceLock::new();
    KEYS.get_or_init(|| {
        let all = JwtAlgorithm::ALL.to_vec();
        let mut entries = secret_entries(
            &[HmacSecret {
                kid: None,
                source: SecretSource::Env("FUZZ".into()),
                bytes: vec![b'k'; 32],
            }],
            &all,
        );
        if let Ok((more, _)) = jwks_entries(JWKS, &all) {
            entries.extend(more);
        }
        let policy = TokenPolicy {
            algorithms: all,
            issuer: Some("https://issuer.test".into()),
            audiences: vec!["api".into()],
            leeway_secs: 30,
            max_token_bytes: 8192,
        };
        (
            KeySet {
                entries,
                generation: 1,
            },
            policy,
        )
    })
}

/// Token verification against real keys (HMAC, RSA, EC, Ed25519): any string, never a panic,
/// and never a success (the fuzzer cannot sign).
pub fn jwt(data: &[u8]) {
    let token = String::from_utf8_lossy(data);
    let (keys, policy) = keys();
    let _ = has_unknown_kid(&token, keys, policy);
    // HS256 with a 32-byte secret of 'k' could in principle be hit by a fuzzer that learns
    // HMAC; it cannot, so any success means the verifier accepted something unsigned.
    assert!(
        verify(&token, keys, policy, 1_700_000_000).is_err(),
        "an unsigned token verified: {token}"
    );
}

/// JWKS documents as a refresh would fetch them: never a panic.
pub fn jwks(data: &[u8]) {
    let _ = jwks_entries(data, &JwtAlgorithm::ALL);
}

struct FuzzValues<'a>(&'a str);

impl Values for FuzzValues<'_> {
    fn get(&self, _source: Source, _name: &str) -> Option<Cow<'_, str>> {
        Some(Cow::Borrowed(self.0))
    }
}

/// Part path templates: parse any text; fill a valid one with any value. Invariant: a value
/// never adds a path segment, query parameter or fragment of its own.
pub fn template(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let (tpl, value) = text.split_once('\n').unwrap_or((&text, "x/../y?z=1#f"));
    let Ok(t) = Template::parse(tpl, &["id", "name"], true) else {
        return;
    };
    let Ok(filled) = t.fill(&FuzzValues(value)) else {
        return;
    };
    let Ok(empty) = t.fill(&FuzzValues("")) else {
        return;
    };
    let count = |s: &str, c: char| s.matches(c).count();
    for c in ['/', '?', '#', '&'] {
        assert_eq!(
            count(&filled, c),
            count(&empty, c),
            "the value {value:?} added a {c:?}: {filled}"
        );
    }
}
