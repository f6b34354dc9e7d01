//! Verifying one compact JWS token: the pure core, driven by tests without a socket.
//!
//! The checks, in order, each failing closed: size; exactly three non-empty segments of
//! unpadded base64url; a JSON object header whose `alg` is on the allow-list exactly as
//! written (so `none`, `None` and `nOnE` are all refused); no `crit` (no extension is
//! understood, RFC 7515 4.1.11) and no `b64`; `kid` only as a lookup key into the configured
//! keys; `jku`, `x5u`, `jwk` and `x5c` are ignored, never fetched nor trusted; a signature
//! check with keys of the algorithm's own family only (an RSA public key is never an HMAC
//! secret); a JSON object payload; `exp` required; registered claims of the right JSON type.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use serde_json::{Map, Value};

use super::keys::KeySet;
use crate::config::JwtAlgorithm;

/// What every token must satisfy, from `auth.jwt`.
#[derive(Debug, Clone)]
pub struct TokenPolicy {
    pub algorithms: Vec<JwtAlgorithm>,
    pub issuer: Option<String>,
    pub audiences: Vec<String>,
    pub leeway_secs: u64,
    pub max_token_bytes: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenError {
    TooLarge,
    Malformed,
    /// `alg` not on the allow-list (including every spelling of `none`).
    AlgorithmNotAllowed,
    /// A `crit` or `b64` header: extensions this gateway does not implement.
    UnsupportedExtension,
    /// A `kid` no configured key has.
    UnknownKey,
    BadSignature,
    MissingExpiry,
    Expired,
    NotYetValid,
    IssuedInFuture,
    WrongIssuer,
    WrongAudience,
    /// A registered claim of the wrong JSON type.
    BadClaimType,
}

impl TokenError {
    /// A stable reason, for logs and metrics.
    pub fn reason(self) -> &'static str {
        match self {
            TokenError::TooLarge => "too_large",
            TokenError::Malformed => "malformed",
            TokenError::AlgorithmNotAllowed => "algorithm_not_allowed",
            TokenError::UnsupportedExtension => "unsupported_extension",
            TokenError::UnknownKey => "unknown_key",
            TokenError::BadSignature => "bad_signature",
            TokenError::MissingExpiry => "missing_exp",
            TokenError::Expired => "expired",
            TokenError::NotYetValid => "not_yet_valid",
            TokenError::IssuedInFuture => "issued_in_future",
            TokenError::WrongIssuer => "wrong_issuer",
            TokenError::WrongAudience => "wrong_audience",
            TokenError::BadClaimType => "bad_claim_type",
        }
    }

    /// What the client is told in `error_description`: enough to act on (refresh an expired
    /// token, check a clock), nothing that helps forge one.
    pub fn description(self) -> &'static str {
        match self {
            TokenError::Expired => "the token has expired",
            TokenError::NotYetValid | TokenError::IssuedInFuture => "the token is not valid yet",
            _ => "the token is invalid",
        }
    }
}

/// A verified token's claims and expiry.
#[derive(Debug, Clone, PartialEq)]
pub struct Verified {
    pub claims: Map<String, Value>,
    pub exp: u64,
}

/// The parsed header fields that matter.
struct Header<'t> {
    alg: JwtAlgorithm,
    kid: Option<String>,
    signing_input: &'t str,
    signature: &'t str,
    payload: &'t str,
}

fn is_b64url(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

fn decode_json_object(segment: &str) -> Result<Map<String, Value>, TokenError> {
    let bytes = URL_SAFE_NO_PAD
        .decode(segment)
        .map_err(|_| TokenError::Malformed)?;
    // serde_json refuses nesting deeper than 128 levels: deep claims cannot exhaust the stack.
    match serde_json::from_slice::<Value>(&bytes) {
        Ok(Value::Object(m)) => Ok(m),
        _ => Err(TokenError::Malformed),
    }
}

/// Checks shape and header; returns what the signature check needs.
fn parse_header<'t>(token: &'t str, policy: &TokenPolicy) -> Result<Header<'t>, TokenError> {
    if token.len() > policy.max_token_bytes {
        return Err(TokenError::TooLarge);
    }
    let mut parts = token.split('.');
    let (Some(h), Some(p), Some(s), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(TokenError::Malformed);
    };
    if !is_b64url(h) || !is_b64url(p) || !is_b64url(s) {
        return Err(TokenError::Malformed);
    }
    let header = decode_json_object(h)?;
    if header.contains_key("crit") || header.contains_key("b64") {
        return Err(TokenError::UnsupportedExtension);
    }
    let alg = match header.get("alg") {
        Some(Value::String(name)) => JwtAlgorithm::from_name(name)
            .filter(|a| policy.algorithms.contains(a))
            .ok_or(TokenError::AlgorithmNotAllowed)?,
        _ => return Err(TokenError::Malformed),
    };
    let kid = match header.get("kid") {
        None => None,
        Some(Value::String(k)) => Some(k.clone()),
        Some(_) => return Err(TokenError::Malformed),
    };
    if header.get("typ").is_some_and(|t| !t.is_string()) {
        return Err(TokenError::Malformed);
    }
    Ok(Header {
        alg,
        kid,
        signing_input: &token[..h.len() + 1 + p.len()],
        signature: s,
        payload: p,
    })
}

/// Verifies a token completely. `now` is Unix seconds.
pub fn verify(
    token: &str,
    keys: &KeySet,
    policy: &TokenPolicy,
    now: u64,
) -> Result<Verified, TokenError> {
    let header = parse_header(token, policy)?;
    let mut candidates = keys
        .candidates(header.kid.as_deref(), header.alg)
        .peekable();
    if candidates.peek().is_none() {
        return Err(match &header.kid {
            Some(kid) if !keys.knows_kid(kid) => TokenError::UnknownKey,
            _ => TokenError::BadSignature,
        });
    }
    let algorithm = to_jsonwebtoken(header.alg);
    let signed = candidates.any(|entry| {
        jsonwebtoken::crypto::verify(
            header.signature,
            header.signing_input.as_bytes(),
            &entry.key,
            algorithm,
        )
        .unwrap_or(false)
    });
    if !signed {
        return Err(TokenError::BadSignature);
    }
    let claims = decode_json_object(header.payload)?;
    let exp = check_claims(&claims, policy, now)?;
    Ok(Verified { claims, exp })
}

/// Whether a token's `kid` is unknown to these keys: a reason to refresh them.
pub fn has_unknown_kid(token: &str, keys: &KeySet, policy: &TokenPolicy) -> bool {
    parse_header(token, policy)
        .ok()
        .and_then(|h| h.kid)
        .is_some_and(|kid| !keys.knows_kid(&kid))
}

/// A NumericDate: a non-negative JSON number (fractions allowed, RFC 7519 2).
fn numeric_date(v: &Value) -> Result<u64, TokenError> {
    match v {
        Value::Number(n) => {
            if let Some(u) = n.as_u64() {
                Ok(u)
            } else {
                match n.as_f64() {
                    Some(f) if f.is_finite() && f >= 0.0 => {
                        Ok(f.floor().min(u64::MAX as f64) as u64)
                    }
                    _ => Err(TokenError::BadClaimType),
                }
            }
        }
        _ => Err(TokenError::BadClaimType),
    }
}

fn check_claims(
    claims: &Map<String, Value>,
    policy: &TokenPolicy,
    now: u64,
) -> Result<u64, TokenError> {
    let leeway = policy.leeway_secs;
    let exp = numeric_date(claims.get("exp").ok_or(TokenError::MissingExpiry)?)?;
    let nbf = claims.get("nbf").map(numeric_date).transpose()?;
    let iat = claims.get("iat").map(numeric_date).transpose()?;
    for name in ["iss", "sub", "jti"] {
        if claims.get(name).is_some_and(|v| !v.is_string()) {
            return Err(TokenError::BadClaimType);
        }
    }
    let aud: Vec<&str> = match claims.get("aud") {
        None => Vec::new(),
        Some(Value::String(s)) => vec![s.as_str()],
        Some(Value::Array(items)) => items
            .iter()
            .map(|v| v.as_str().ok_or(TokenError::BadClaimType))
            .collect::<Result<_, _>>()?,
        Some(_) => return Err(TokenError::BadClaimType),
    };
    match claims.get("scope") {
        None | Some(Value::String(_)) => {}
        Some(_) => return Err(TokenError::BadClaimType),
    }
    match claims.get("scp") {
        None => {}
        Some(Value::Array(items)) if items.iter().all(Value::is_string) => {}
        Some(_) => return Err(TokenError::BadClaimType),
    }

    if now > exp.saturating_add(leeway) {
        return Err(TokenError::Expired);
    }
    if nbf.is_some_and(|nbf| nbf > now.saturating_add(leeway)) {
        return Err(TokenError::NotYetValid);
    }
    if iat.is_some_and(|iat| iat > now.saturating_add(leeway)) {
        return Err(TokenError::IssuedInFuture);
    }
    if let Some(want) = &policy.issuer {
        if claims.get("iss").and_then(Value::as_str) != Some(want.as_str()) {
            return Err(TokenError::WrongIssuer);
        }
    }
    if !policy.audiences.is_empty() && !aud.iter().any(|a| policy.audiences.iter().any(|w| w == a))
    {
        return Err(TokenError::WrongAudience);
    }
    Ok(exp)
}

/// The scopes a token grants: `scope` (space-separated string) and `scp` (array).
pub fn scopes(claims: &Map<String, Value>) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    if let Some(Value::String(s)) = claims.get("scope") {
        out.extend(s.split_ascii_whitespace().map(str::to_string));
    }
    if let Some(Value::Array(items)) = claims.get("scp") {
        out.extend(items.iter().filter_map(Value::as_str).map(str::to_string));
    }
    out
}

pub fn to_jsonwebtoken(a: JwtAlgorithm) -> jsonwebtoken::Algorithm {
    use jsonwebtoken::Algorithm as A;
    match a {
        JwtAlgorithm::HS256 => A::HS256,
        JwtAlgorithm::HS384 => A::HS384,
        JwtAlgorithm::HS512 => A::HS512,
        JwtAlgorithm::RS256 => A::RS256,
        JwtAlgorithm::RS384 => A::RS384,
        JwtAlgorithm::RS512 => A::RS512,
        JwtAlgorithm::PS256 => A::PS256,
        JwtAlgorithm::PS384 => A::PS384,
        JwtAlgorithm::PS512 => A::PS512,
        JwtAlgorithm::ES256 => A::ES256,
        JwtAlgorithm::ES384 => A::ES384,
        JwtAlgorithm::EdDSA => A::EdDSA,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::keys::secret_entries;
    use crate::config::{HmacSecret, SecretSource};
    use serde_json::json;

    const SECRET: &[u8] = b"unit-test-secret-unit-test-secret-1234";
    const NOW: u64 = 1_800_000_000;

    fn keys() -> KeySet {
        let secret = HmacSecret {
            kid: None,
            source: SecretSource::Env("X".into()),
            bytes: SECRET.to_vec(),
        };
        KeySet {
            entries: secret_entries(&[secret], &[JwtAlgorithm::HS256]),
            generation: 1,
        }
    }

    fn policy() -> TokenPolicy {
        TokenPolicy {
            algorithms: vec![JwtAlgorithm::HS256],
            issuer: Some("iss".into()),
            audiences: vec!["api".into()],
            leeway_secs: 30,
            max_token_bytes: 4096,
        }
    }

    fn token(header: serde_json::Value, claims: serde_json::Value) -> String {
        let msg = format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(header.to_string()),
            URL_SAFE_NO_PAD.encode(claims.to_string())
        );
        let key = jsonwebtoken::EncodingKey::from_secret(SECRET);
        let sig = jsonwebtoken::crypto::sign(msg.as_bytes(), &key, jsonwebtoken::Algorithm::HS256)
            .unwrap();
        format!("{msg}.{sig}")
    }

    fn claims() -> serde_json::Value {
        json!({"iss": "iss", "aud": ["x", "api"], "exp": NOW + 60, "sub": "u"})
    }

    fn check(t: &str) -> Result<Verified, TokenError> {
        verify(t, &keys(), &policy(), NOW)
    }

    #[test]
    fn a_good_token_verifies() {
        let v = check(&token(json!({"alg": "HS256"}), claims())).unwrap();
        assert_eq!(v.exp, NOW + 60);
        assert_eq!(v.claims["sub"], "u");
    }

    #[test]
    fn time_claims_with_leeway() {
        let at = |k: &str, v: u64| {
            check(&token(json!({"alg": "HS256"}), {
                let mut c = claims();
                c[k] = json!(v);
                c
            }))
        };
        assert!(at("exp", NOW - 30).is_ok());
        assert_eq!(at("exp", NOW - 31).unwrap_err(), TokenError::Expired);
        assert!(at("nbf", NOW + 30).is_ok());
        assert_eq!(at("nbf", NOW + 31).unwrap_err(), TokenError::NotYetValid);
        assert_eq!(at("iat", NOW + 31).unwrap_err(), TokenError::IssuedInFuture);
    }

    #[test]
    fn header_rules() {
        let c = claims();
        assert_eq!(
            check(&token(json!({"alg": "none"}), c.clone())).unwrap_err(),
            TokenError::AlgorithmNotAllowed
        );
        assert_eq!(
            check(&token(json!({"alg": "hs256"}), c.clone())).unwrap_err(),
            TokenError::AlgorithmNotAllowed
        );
        assert_eq!(
            check(&token(json!({"alg": "HS256", "crit": ["x"]}), c.clone())).unwrap_err(),
            TokenError::UnsupportedExtension
        );
        assert_eq!(
            check(&token(json!({"alg": "HS256", "kid": "k9"}), c.clone())).unwrap_err(),
            TokenError::UnknownKey
        );
        assert_eq!(
            check(&token(json!({"typ": "JWT"}), c)).unwrap_err(),
            TokenError::Malformed
        );
    }

    #[test]
    fn shape_rules() {
        let t = token(json!({"alg": "HS256"}), claims());
        assert_eq!(check(&format!("{t}=")).unwrap_err(), TokenError::Malformed);
        assert_eq!(check(&format!("{t}.x")).unwrap_err(), TokenError::Malformed);
        assert_eq!(
            check(&t.replacen('.', "..", 1)).unwrap_err(),
            TokenError::Malformed
        );
        assert_eq!(check(&"a".repeat(5000)).unwrap_err(), TokenError::TooLarge);
        let mut tampered = t.clone();
        tampered.insert(t.find('.').unwrap() + 2, 'A');
        assert!(check(&tampered).is_err());
    }

    #[test]
    fn claim_types() {
        let with = |k: &str, v: serde_json::Value| {
            check(&token(json!({"alg": "HS256"}), {
                let mut c = claims();
                c[k] = v;
                c
            }))
        };
        assert_eq!(
            with("exp", json!("soon")).unwrap_err(),
            TokenError::BadClaimType
        );
        assert_eq!(with("aud", json!(5)).unwrap_err(), TokenError::BadClaimType);
        assert_eq!(
            with("aud", json!("nope")).unwrap_err(),
            TokenError::WrongAudience
        );
        assert_eq!(
            with("iss", json!("other")).unwrap_err(),
            TokenError::WrongIssuer
        );
        assert_eq!(
            with("scp", json!("a b")).unwrap_err(),
            TokenError::BadClaimType
        );
        let mut c = claims();
        c.as_object_mut().unwrap().remove("exp");
        assert_eq!(
            check(&token(json!({"alg": "HS256"}), c)).unwrap_err(),
            TokenError::MissingExpiry
        );
    }

    #[test]
    fn scopes_from_scope_and_scp() {
        let c = json!({"scope": "a  b", "scp": ["c"]});
        assert_eq!(scopes(c.as_object().unwrap()), vec!["a", "b", "c"]);
    }
}
