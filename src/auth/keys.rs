//! Key material: HMAC secrets and JWKS documents, parsed once into `DecodingKey`s, each with
//! the algorithms it may verify (its family, its JWK `alg`, and the configured allow-list).

use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, Jwk, KeyAlgorithm, PublicKeyUse};
use jsonwebtoken::DecodingKey;

use crate::config::{HmacSecret, JwtAlgorithm};

/// Largest JWKS document accepted, from a file or a URL.
pub const MAX_JWKS_BYTES: usize = 1 << 20;

pub struct KeyEntry {
    pub kid: Option<String>,
    pub key: DecodingKey,
    pub algorithms: Vec<JwtAlgorithm>,
}

/// Every key the gateway trusts right now. Replaced whole when a JWKS refresh succeeds.
#[derive(Default)]
pub struct KeySet {
    pub entries: Vec<KeyEntry>,
    /// Changes whenever the set is rebuilt, so cached verdicts from older keys are ignored.
    pub generation: u64,
}

impl KeySet {
    /// Keys that may verify a token with this `kid` and `alg`. A token without `kid` is
    /// served by keys without `kid`.
    pub fn candidates<'a>(
        &'a self,
        kid: Option<&'a str>,
        alg: JwtAlgorithm,
    ) -> impl Iterator<Item = &'a KeyEntry> + 'a {
        self.entries
            .iter()
            .filter(move |e| e.kid.as_deref() == kid && e.algorithms.contains(&alg))
    }

    pub fn knows_kid(&self, kid: &str) -> bool {
        self.entries.iter().any(|e| e.kid.as_deref() == Some(kid))
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

/// HMAC secrets as key entries.
pub fn secret_entries(secrets: &[HmacSecret], allowed: &[JwtAlgorithm]) -> Vec<KeyEntry> {
    let algorithms: Vec<JwtAlgorithm> = allowed.iter().copied().filter(|a| a.is_hmac()).collect();
    secrets
        .iter()
        .map(|s| KeyEntry {
            kid: s.kid.clone(),
            key: DecodingKey::from_secret(&s.bytes),
            algorithms: algorithms.clone(),
        })
        .collect()
}

/// Parses a JWKS document. Keys that are unusable here (encryption keys, unknown types,
/// algorithms outside the allow-list) are skipped and named in the returned notes; a document
/// that is not a key set at all is an error.
pub fn jwks_entries(
    doc: &[u8],
    allowed: &[JwtAlgorithm],
) -> Result<(Vec<KeyEntry>, Vec<String>), String> {
    if doc.len() > MAX_JWKS_BYTES {
        return Err(format!("JWKS larger than {MAX_JWKS_BYTES} bytes"));
    }
    let value: serde_json::Value =
        serde_json::from_slice(doc).map_err(|e| format!("JWKS is not JSON: {e}"))?;
    let keys = value
        .get("keys")
        .and_then(|k| k.as_array())
        .ok_or("JWKS has no \"keys\" array")?;
    let mut entries = Vec::new();
    let mut notes = Vec::new();
    for (i, raw) in keys.iter().enumerate() {
        let jwk: Jwk = match serde_json::from_value(raw.clone()) {
            Ok(j) => j,
            Err(e) => {
                notes.push(format!("key {i}: skipped ({e})"));
                continue;
            }
        };
        let name = jwk.common.key_id.clone().unwrap_or_else(|| format!("#{i}"));
        if matches!(jwk.common.public_key_use, Some(PublicKeyUse::Encryption)) {
            notes.push(format!("key {name}: skipped (use: enc)"));
            continue;
        }
        let algorithms: Vec<JwtAlgorithm> = algorithms_for(&jwk)
            .into_iter()
            .filter(|a| allowed.contains(a))
            .collect();
        if algorithms.is_empty() {
            notes.push(format!(
                "key {name}: skipped (no allowed algorithm fits it)"
            ));
            continue;
        }
        match DecodingKey::from_jwk(&jwk) {
            Ok(key) => entries.push(KeyEntry {
                kid: jwk.common.key_id.clone(),
                key,
                algorithms,
            }),
            Err(e) => notes.push(format!("key {name}: skipped ({e})")),
        }
    }
    Ok((entries, notes))
}

/// What a JWK may verify: its declared `alg`, else everything its type and curve allow.
fn algorithms_for(jwk: &Jwk) -> Vec<JwtAlgorithm> {
    use JwtAlgorithm::*;
    let by_type: Vec<JwtAlgorithm> = match &jwk.algorithm {
        AlgorithmParameters::RSA(_) => vec![RS256, RS384, RS512, PS256, PS384, PS512],
        AlgorithmParameters::EllipticCurve(p) => match p.curve {
            EllipticCurve::P256 => vec![ES256],
            EllipticCurve::P384 => vec![ES384],
            _ => vec![],
        },
        AlgorithmParameters::OctetKeyPair(p) => match p.curve {
            EllipticCurve::Ed25519 => vec![EdDSA],
            _ => vec![],
        },
        AlgorithmParameters::OctetKey(_) => vec![HS256, HS384, HS512],
        _ => vec![],
    };
    match &jwk.common.key_algorithm {
        None => by_type,
        Some(declared) => {
            let declared = match declared {
                KeyAlgorithm::HS256 => Some(HS256),
                KeyAlgorithm::HS384 => Some(HS384),
                KeyAlgorithm::HS512 => Some(HS512),
                KeyAlgorithm::ES256 => Some(ES256),
                KeyAlgorithm::ES384 => Some(ES384),
                KeyAlgorithm::RS256 => Some(RS256),
                KeyAlgorithm::RS384 => Some(RS384),
                KeyAlgorithm::RS512 => Some(RS512),
                KeyAlgorithm::PS256 => Some(PS256),
                KeyAlgorithm::PS384 => Some(PS384),
                KeyAlgorithm::PS512 => Some(PS512),
                KeyAlgorithm::EdDSA => Some(EdDSA),
                _ => None,
            };
            declared
                .into_iter()
                .filter(|a| by_type.contains(a))
                .collect()
        }
    }
}
