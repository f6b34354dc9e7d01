//! JWT verification cost per algorithm: the full check (`token::verify`: parse, signature,
//! claims) and the verified-token cache hit that repeat tokens take.

use std::hint::black_box;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use jsonwebtoken::{Algorithm, EncodingKey};
use portcullis::auth::keys::{jwks_entries, secret_entries, KeySet};
use portcullis::auth::token::{verify, TokenPolicy};
use portcullis::auth::Authenticator;
use portcullis::config::{HmacSecret, JwtAlgorithm, JwtConfig, SecretSource};

const SECRET: &[u8] = b"bench-secret-bench-secret-bench-secret-!!";

fn fixture(name: &str) -> Vec<u8> {
    std::fs::read(format!(
        "{}/tests/fixtures/jwt/{name}",
        env!("CARGO_MANIFEST_DIR")
    ))
    .unwrap()
}

fn token(alg: Algorithm, kid: Option<&str>, key: &EncodingKey) -> String {
    let mut header = serde_json::json!({"alg": format!("{alg:?}"), "typ": "JWT"});
    if let Some(k) = kid {
        header["kid"] = k.into();
    }
    let claims = serde_json::json!({"sub": "user-42", "iss": "https://issuer.test", "aud": "api",
        "exp": 4_000_000_000u64, "iat": 1_700_000_000u64, "scope": "read write"});
    let msg = format!(
        "{}.{}",
        URL_SAFE_NO_PAD.encode(header.to_string()),
        URL_SAFE_NO_PAD.encode(claims.to_string())
    );
    let sig = jsonwebtoken::crypto::sign(msg.as_bytes(), key, alg).unwrap();
    format!("{msg}.{sig}")
}

fn jwt_config() -> JwtConfig {
    JwtConfig {
        issuer: Some("https://issuer.test".into()),
        audiences: vec!["api".into()],
        algorithms: JwtAlgorithm::ALL.to_vec(),
        leeway: std::time::Duration::from_secs(30),
        jwks_file: Some(
            format!(
                "{}/tests/fixtures/jwt/jwks.json",
                env!("CARGO_MANIFEST_DIR")
            )
            .into(),
        ),
        jwks_url: None,
        jwks_refresh: std::time::Duration::from_secs(300),
        secrets: vec![HmacSecret {
            kid: None,
            source: SecretSource::Env("BENCH".into()),
            bytes: SECRET.to_vec(),
        }],
        forward_claims: vec![("sub".into(), http::HeaderName::from_static("x-user-id"))],
        max_token_bytes: 8192,
    }
}

fn verification(c: &mut Criterion) {
    let cfg = jwt_config();
    let mut entries = secret_entries(&cfg.secrets, &cfg.algorithms);
    entries.extend(
        jwks_entries(&fixture("jwks.json"), &cfg.algorithms)
            .unwrap()
            .0,
    );
    let keys = KeySet {
        entries,
        generation: 1,
    };
    let policy = TokenPolicy {
        algorithms: cfg.algorithms.clone(),
        issuer: cfg.issuer.clone(),
        audiences: cfg.audiences.clone(),
        leeway_secs: 30,
        max_token_bytes: 8192,
    };
    let now = 1_800_000_000;
    let cases = [
        (
            "HS256",
            token(Algorithm::HS256, None, &EncodingKey::from_secret(SECRET)),
        ),
        (
            "RS256",
            token(
                Algorithm::RS256,
                Some("rsa1"),
                &EncodingKey::from_rsa_der(&fixture("rsa1.der")),
            ),
        ),
        (
            "PS256",
            token(
                Algorithm::PS256,
                Some("rsa1"),
                &EncodingKey::from_rsa_der(&fixture("rsa1.der")),
            ),
        ),
        (
            "ES256",
            token(
                Algorithm::ES256,
                Some("ec256"),
                &EncodingKey::from_ec_der(&fixture("ec256.der")),
            ),
        ),
        (
            "ES384",
            token(
                Algorithm::ES384,
                Some("ec384"),
                &EncodingKey::from_ec_der(&fixture("ec384.der")),
            ),
        ),
        (
            "EdDSA",
            token(
                Algorithm::EdDSA,
                Some("ed1"),
                &EncodingKey::from_ed_der(&fixture("ed25519.der")),
            ),
        ),
    ];
    let mut group = c.benchmark_group("jwt_verify_uncached");
    group.throughput(Throughput::Elements(1));
    for (name, t) in &cases {
        assert!(verify(t, &keys, &policy, now).is_ok(), "{name}");
        group.bench_with_input(BenchmarkId::from_parameter(name), t, |b, t| {
            b.iter(|| verify(black_box(t), &keys, &policy, now))
        });
    }
    group.finish();

    let auth = Authenticator::new(&cfg, None).unwrap();
    let mut group = c.benchmark_group("jwt_verify_cached");
    group.throughput(Throughput::Elements(1));
    for (name, t) in cases.iter().filter(|(n, _)| *n == "HS256" || *n == "ES256") {
        auth.verify(t, now).unwrap();
        group.bench_with_input(BenchmarkId::from_parameter(name), t, |b, t| {
            b.iter(|| auth.verify(black_box(t), now))
        });
    }
    group.finish();
}

criterion_group!(benches, verification);
criterion_main!(benches);
