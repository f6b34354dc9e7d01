//! Mints a signed JWT for load tests and manual trials (never for production identities).
//!
//! usage: mint_token ALG KEY [KID] [SUB] [TTL_SECS]
//!   ALG   HS256 | HS384 | HS512 | RS256 | PS256 | ES256 | ES384 | EdDSA ...
//!   KEY   HS*: a file holding the secret (one trailing newline ignored);
//!         others: a DER private key (RSA: PKCS#1, EC/Ed25519: PKCS#8), as in tests/fixtures/jwt
//!   KID   the header's kid, or "-" for none (default: none)
//!   SUB   the sub claim (default: bench-user)
//!   TTL   seconds until exp (default: 3600)
//! Claims: sub, iat, exp, and scope "read".

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use jsonwebtoken::{Algorithm, EncodingKey};
use std::str::FromStr;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.len() < 2 {
        eprintln!("usage: mint_token ALG KEY [KID] [SUB] [TTL_SECS]");
        std::process::exit(2);
    }
    let alg = Algorithm::from_str(&args[0]).unwrap_or_else(|_| {
        eprintln!("unknown algorithm {}", args[0]);
        std::process::exit(2);
    });
    let mut key_bytes = std::fs::read(&args[1]).unwrap_or_else(|e| {
        eprintln!("cannot read {}: {e}", args[1]);
        std::process::exit(2);
    });
    let kid = args.get(2).filter(|k| *k != "-");
    let sub = args.get(3).map_or("bench-user", String::as_str);
    let ttl: u64 = args.get(4).and_then(|t| t.parse().ok()).unwrap_or(3600);
    let key = match alg {
        Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512 => {
            if key_bytes.ends_with(b"\n") {
                key_bytes.pop();
            }
            EncodingKey::from_secret(&key_bytes)
        }
        Algorithm::RS256
        | Algorithm::RS384
        | Algorithm::RS512
        | Algorithm::PS256
        | Algorithm::PS384
        | Algorithm::PS512 => EncodingKey::from_rsa_der(&key_bytes),
        Algorithm::ES256 | Algorithm::ES384 => EncodingKey::from_ec_der(&key_bytes),
        Algorithm::EdDSA => EncodingKey::from_ed_der(&key_bytes),
        other => {
            eprintln!("{other:?} is not supported here");
            std::process::exit(2);
        }
    };
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let mut header = serde_json::json!({"alg": args[0], "typ": "JWT"});
    if let Some(k) = kid {
        header["kid"] = k.as_str().into();
    }
    let claims = serde_json::json!({"sub": sub, "iat": now, "exp": now + ttl, "scope": "read"});
    let msg = format!(
        "{}.{}",
        URL_SAFE_NO_PAD.encode(header.to_string()),
        URL_SAFE_NO_PAD.encode(claims.to_string())
    );
    match jsonwebtoken::crypto::sign(msg.as_bytes(), &key, alg) {
        Ok(sig) => println!("{msg}.{sig}"),
        Err(e) => {
            eprintln!("cannot sign: {e}");
            std::process::exit(1);
        }
    }
}
