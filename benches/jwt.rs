//! JWT verification cost per algorithm: the full check (`token::verify`: parse, signature,
//! claims), the verified-token cache hit that repeat tokens take, and the authenticator's
//! whole miss path (check, identity, cache insert) for new tokens.

use std::hint::black_box;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use jsonwebtoken::{Algorithm, EncodingKey};
use portcullis::auth::keys::{jwks_entries, secret_entries, KeySet};
use portcullis::auth::token::{verify, TokenPolicy};
use portcullis::auth::{Authenticator, VERIFIED_CACHE_ENTRIES};
use portcullis::config::{HmacSecret, JwtAlgorithm, JwtConfig, SecretSource};

const SECRET: &[u8] = b"bench-secret-bench-secret-bench-secret-!!";

fn fixture(name: &str) -> Vec<u8> {
    std::fs::read(format!(
        "{}/tests/fixtures/jwt/{name}",
        env!("CARGO_MANIFEST_DIR")
    ))
    .unwrap()
}

fn token(alg: Algorithm, kid: Option<&str>, key: &EncodingKey, sub: &str) -> String {
    let mut header = serde_json::json!({"alg": format!("{alg:?}"), "typ": "JWT"});
    if let Some(k) = kid {
        header["kid"] = k.into();
    }
    let claims = serde_json::json!({"sub": sub, "iss": "https://issuer.test", "aud": "api",
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
    let hs = EncodingKey::from_secret(SECRET);
    let rsa = EncodingKey::from_rsa_der(&fixture("rsa1.der"));
    let ec256 = EncodingKey::from_ec_der(&fixture("ec256.der"));
    let ec384 = EncodingKey::from_ec_der(&fixture("ec384.der"));
    let ed = EncodingKey::from_ed_der(&fixture("ed25519.der"));
    // Every algorithm the gateway accepts (`JwtAlgorithm::ALL`), with the fixture keys.
    let algs: [(&str, Algorithm, Option<&str>, &EncodingKey); 12] = [
        ("HS256", Algorithm::HS256, None, &hs),
        ("HS384", Algorithm::HS384, None, &hs),
        ("HS512", Algorithm::HS512, None, &hs),
        ("RS256", Algorithm::RS256, Some("rsa1"), &rsa),
        ("RS384", Algorithm::RS384, Some("rsa1"), &rsa),
        ("RS512", Algorithm::RS512, Some("rsa1"), &rsa),
        ("PS256", Algorithm::PS256, Some("rsa1"), &rsa),
        ("PS384", Algorithm::PS384, Some("rsa1"), &rsa),
        ("PS512", Algorithm::PS512, Some("rsa1"), &rsa),
        ("ES256", Algorithm::ES256, Some("ec256"), &ec256),
        ("ES384", Algorithm::ES384, Some("ec384"), &ec384),
        ("EdDSA", Algorithm::EdDSA, Some("ed1"), &ed),
    ];
    assert_eq!(algs.len(), JwtAlgorithm::ALL.len());
    let cases: Vec<(&str, String)> = algs
        .iter()
        .map(|(name, alg, kid, key)| (*name, token(*alg, *kid, key, "user-42")))
        .collect();
    let mut group = c.benchmark_group("jwt_verify_uncached");
    group.throughput(Throughput::Elements(1));
    for (name, t) in &cases {
        assert!(verify(t, &keys, &policy, now).is_ok(), "{name}");
        group.bench_with_input(BenchmarkId::from_parameter(name), t, |b, t| {
            b.iter(|| verify(black_box(t), &keys, &policy, now))
        });
    }
    group.finish();

    // The gateway's path for a token seen before: one cache lookup.
    let auth = Authenticator::new(&cfg, None).unwrap();
    let mut group = c.benchmark_group("jwt_verify_cached");
    group.throughput(Throughput::Elements(1));
    for (name, t) in &cases {
        auth.verify(t, now).unwrap();
        group.bench_with_input(BenchmarkId::from_parameter(name), t, |b, t| {
            b.iter(|| auth.verify(black_box(t), now))
        });
    }
    group.finish();

    // The gateway's path for a token not seen before (`Authenticator::verify` on a miss):
    // the full check, plus the identity (scopes, forwarded headers) and the cache insert,
    // with the cache's empty-when-full included. One token more than the cache holds, in turn:
    // a token comes back only after the cache was emptied, so every lookup misses. Next to
    // it, `token::verify` on the same rotating tokens, for the authenticator's own share.
    let mut group = c.benchmark_group("jwt_distinct_tokens");
    group.throughput(Throughput::Elements(1));
    for (name, alg, kid, key) in algs
        .iter()
        .filter(|(n, ..)| ["HS256", "RS256", "ES256", "EdDSA"].contains(n))
    {
        let tokens: Vec<String> = (0..VERIFIED_CACHE_ENTRIES + 1)
            .map(|i| token(*alg, *kid, key, &format!("user-{i}")))
            .collect();
        let auth = Authenticator::new(&cfg, None).unwrap();
        let mut i = 0;
        group.bench_function(BenchmarkId::new("authenticator", name), |b| {
            b.iter(|| {
                i = (i + 1) % tokens.len();
                auth.verify(black_box(&tokens[i]), now).unwrap()
            })
        });
        // The same distinct tokens through the bare check: what the authenticator adds.
        group.bench_function(BenchmarkId::new("token_verify", name), |b| {
            b.iter(|| {
                i = (i + 1) % tokens.len();
                verify(black_box(&tokens[i]), &keys, &policy, now).unwrap()
            })
        });
    }
    group.finish();
}

criterion_group!(benches, verification);
criterion_main!(benches);
