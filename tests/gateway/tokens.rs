//! Building JWTs for tests, including malformed and hostile ones.

#![allow(dead_code)]

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use jsonwebtoken::{Algorithm, EncodingKey};
use serde_json::{json, Value};

use crate::support::fixture;

pub const HS_SECRET: &[u8] = b"test-secret-for-hs256-at-least-32-bytes-long!";
pub const HS1_SECRET: &[u8] = b"another-secret-with-kid-hs1-32-bytes-or-more";

pub fn b64(bytes: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

pub fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// Claims that pass the test gateway's policy; tweak with `with`.
pub fn good_claims() -> Value {
    json!({"iss": "https://issuer.test", "aud": "api", "sub": "alice", "exp": now() + 600, "iat": now(), "scope": "read admin:write"})
}

pub fn with(mut v: Value, key: &str, val: Value) -> Value {
    v[key] = val;
    v
}

pub fn without(mut v: Value, key: &str) -> Value {
    v.as_object_mut().unwrap().remove(key);
    v
}

pub enum Key {
    Hmac(&'static [u8]),
    HmacBytes(Vec<u8>),
    Rsa1,
    Rsa2,
    Ec256,
    Ec384,
    Ed,
}

fn encoding_key(key: &Key) -> EncodingKey {
    let der = |name: &str| std::fs::read(fixture(&format!("jwt/{name}"))).unwrap();
    match key {
        Key::Hmac(s) => EncodingKey::from_secret(s),
        Key::HmacBytes(s) => EncodingKey::from_secret(s),
        Key::Rsa1 => EncodingKey::from_rsa_der(&der("rsa1.der")),
        Key::Rsa2 => EncodingKey::from_rsa_der(&der("rsa2.der")),
        Key::Ec256 => EncodingKey::from_ec_der(&der("ec256.der")),
        Key::Ec384 => EncodingKey::from_ec_der(&der("ec384.der")),
        Key::Ed => EncodingKey::from_ed_der(&der("ed25519.der")),
    }
}

/// A compact JWS with exactly this header and these claims, signed with `key` as `alg`.
pub fn sign_raw(header: &Value, claims: &Value, key: &Key, alg: Algorithm) -> String {
    let msg = format!(
        "{}.{}",
        b64(header.to_string().as_bytes()),
        b64(claims.to_string().as_bytes())
    );
    let sig = jsonwebtoken::crypto::sign(msg.as_bytes(), &encoding_key(key), alg).unwrap();
    format!("{msg}.{sig}")
}

/// The usual case: header `{"alg", "typ": "JWT", "kid"?}`.
pub fn sign(claims: &Value, key: &Key, alg: Algorithm, kid: Option<&str>) -> String {
    let mut header = json!({"alg": format!("{alg:?}"), "typ": "JWT"});
    if let Some(k) = kid {
        header["kid"] = json!(k);
    }
    sign_raw(&header, claims, key, alg)
}

/// Header and claims with a signature that signs nothing.
pub fn unsigned(header: &Value, claims: &Value, signature: &str) -> String {
    format!(
        "{}.{}.{signature}",
        b64(header.to_string().as_bytes()),
        b64(claims.to_string().as_bytes())
    )
}
