//! `auth.jwt` and the route keys `auth` and `required_scopes`: schema and validation.
//!
//! Secrets are read here, at load, from the environment or files the config names, so that
//! `portcullis -t` reports a missing secret before a deploy rather than after.

use std::path::PathBuf;
use std::time::Duration;

use http::HeaderName;
use serde_yaml::Value;

use super::reader::{index_path, key_path, Reader};

/// JWT algorithms the gateway can verify. `none` is not among them and cannot be configured.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum JwtAlgorithm {
    HS256,
    HS384,
    HS512,
    RS256,
    RS384,
    RS512,
    PS256,
    PS384,
    PS512,
    ES256,
    ES384,
    EdDSA,
}

impl JwtAlgorithm {
    pub const ALL: [JwtAlgorithm; 12] = [
        JwtAlgorithm::HS256,
        JwtAlgorithm::HS384,
        JwtAlgorithm::HS512,
        JwtAlgorithm::RS256,
        JwtAlgorithm::RS384,
        JwtAlgorithm::RS512,
        JwtAlgorithm::PS256,
        JwtAlgorithm::PS384,
        JwtAlgorithm::PS512,
        JwtAlgorithm::ES256,
        JwtAlgorithm::ES384,
        JwtAlgorithm::EdDSA,
    ];

    /// The name as it appears in a token's `alg`; matched exactly (case-sensitive).
    pub fn name(self) -> &'static str {
        match self {
            JwtAlgorithm::HS256 => "HS256",
            JwtAlgorithm::HS384 => "HS384",
            JwtAlgorithm::HS512 => "HS512",
            JwtAlgorithm::RS256 => "RS256",
            JwtAlgorithm::RS384 => "RS384",
            JwtAlgorithm::RS512 => "RS512",
            JwtAlgorithm::PS256 => "PS256",
            JwtAlgorithm::PS384 => "PS384",
            JwtAlgorithm::PS512 => "PS512",
            JwtAlgorithm::ES256 => "ES256",
            JwtAlgorithm::ES384 => "ES384",
            JwtAlgorithm::EdDSA => "EdDSA",
        }
    }

    pub fn from_name(name: &str) -> Option<JwtAlgorithm> {
        Self::ALL.into_iter().find(|a| a.name() == name)
    }

    pub fn is_hmac(self) -> bool {
        matches!(
            self,
            JwtAlgorithm::HS256 | JwtAlgorithm::HS384 | JwtAlgorithm::HS512
        )
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SecretSource {
    Env(String),
    File(PathBuf),
}

/// One HMAC secret, already read.
#[derive(Clone, PartialEq, Eq)]
pub struct HmacSecret {
    pub kid: Option<String>,
    pub source: SecretSource,
    pub bytes: Vec<u8>,
}

impl std::fmt::Debug for HmacSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print the secret itself.
        f.debug_struct("HmacSecret")
            .field("kid", &self.kid)
            .field("source", &self.source)
            .field("len", &self.bytes.len())
            .finish()
    }
}

/// `auth.jwt`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JwtConfig {
    pub issuer: Option<String>,
    pub audiences: Vec<String>,
    pub algorithms: Vec<JwtAlgorithm>,
    pub leeway: Duration,
    pub jwks_file: Option<PathBuf>,
    pub jwks_url: Option<String>,
    pub jwks_refresh: Duration,
    pub secrets: Vec<HmacSecret>,
    /// claim -> upstream request header, in config order.
    pub forward_claims: Vec<(String, HeaderName)>,
    pub max_token_bytes: usize,
}

/// Shortest HMAC secret accepted: RFC 7518 3.2 asks for a key at least as long as the hash.
pub const MIN_SECRET_BYTES: usize = 32;

/// Headers a claim may never be forwarded as: they frame or route the request.
const RESERVED_HEADERS: [&str; 9] = [
    "host",
    "content-length",
    "transfer-encoding",
    "connection",
    "te",
    "upgrade",
    "authorization",
    "x-request-id",
    "x-forwarded-for",
];

/// A route's `auth`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthMode {
    Required,
    Optional,
    None,
}

pub(super) fn read_auth(r: &mut Reader, path: &str, value: &Value) -> Option<JwtConfig> {
    let t = r.table(path, value, &["jwt"])?;
    let v = t.get("jwt")?;
    read_jwt(r, &key_path(path, "jwt"), v)
}

fn read_jwt(r: &mut Reader, path: &str, value: &Value) -> Option<JwtConfig> {
    let t = r.table(
        path,
        value,
        &[
            "issuer",
            "audiences",
            "algorithms",
            "leeway",
            "jwks_file",
            "jwks_url",
            "jwks_refresh",
            "secrets",
            "forward_claims",
            "max_token_bytes",
        ],
    )?;
    let issuer = t
        .get("issuer")
        .and_then(|v| r.string(&key_path(path, "issuer"), v));
    let audiences = t
        .get("audiences")
        .map(|v| string_list(r, &key_path(path, "audiences"), v))
        .unwrap_or_default();

    let ap = key_path(path, "algorithms");
    let mut algorithms = Vec::new();
    match t.get("algorithms") {
        None => r.error(&ap, "is required: the allow-list of token algorithms"),
        Some(v) => {
            for (i, name) in string_list(r, &ap, v).into_iter().enumerate() {
                let ip = index_path(&ap, i);
                if name.eq_ignore_ascii_case("none") {
                    r.error(&ip, "\"none\" can never be allowed");
                } else if let Some(a) = JwtAlgorithm::from_name(&name) {
                    if algorithms.contains(&a) {
                        r.error(&ip, format!("{name} is listed twice"));
                    }
                    algorithms.push(a);
                } else {
                    let known: Vec<&str> = JwtAlgorithm::ALL.iter().map(|a| a.name()).collect();
                    r.error(
                        &ip,
                        format!("unknown algorithm \"{name}\" (one of {})", known.join(", ")),
                    );
                }
            }
            if algorithms.is_empty() && matches!(v, Value::Sequence(s) if s.is_empty()) {
                r.error(&ap, "at least one algorithm is required");
            }
        }
    }

    let leeway = match t.get("leeway") {
        // Zero leeway is a legitimate choice; the reader refuses zero durations.
        Some(Value::String(s)) if s.trim() == "0s" => Duration::ZERO,
        Some(v) => r.duration(&key_path(path, "leeway"), v).unwrap_or_default(),
        None => Duration::from_secs(30),
    };
    if leeway > Duration::from_secs(600) {
        r.error(&key_path(path, "leeway"), "at most 10m");
    }
    let jwks_file = t
        .get("jwks_file")
        .and_then(|v| r.string(&key_path(path, "jwks_file"), v))
        .map(|p| absolute(PathBuf::from(p)));
    let jwks_url = t.get("jwks_url").and_then(|v| {
        let p = key_path(path, "jwks_url");
        let s = r.string(&p, v)?;
        match s.parse::<http::Uri>() {
            Ok(u) if matches!(u.scheme_str(), Some("http" | "https")) && u.host().is_some() => {
                Some(s)
            }
            _ => {
                r.error(&p, format!("\"{s}\" is not an http:// or https:// URL"));
                None
            }
        }
    });
    let jwks_refresh = t
        .get("jwks_refresh")
        .and_then(|v| r.duration(&key_path(path, "jwks_refresh"), v))
        .unwrap_or(Duration::from_secs(300));

    let sp = key_path(path, "secrets");
    let mut secrets = Vec::new();
    if let Some(v) = t.get("secrets") {
        for (i, item) in r.list(&sp, v).iter().enumerate() {
            if let Some(s) = read_secret(r, &index_path(&sp, i), item) {
                secrets.push(s);
            }
        }
    }

    let fp = key_path(path, "forward_claims");
    let mut forward_claims = Vec::new();
    if let Some(v) = t.get("forward_claims") {
        for (claim, hv) in r.named_table(&fp, v) {
            let cp = key_path(&fp, &claim);
            let Some(name) = r.string(&cp, hv) else {
                continue;
            };
            match HeaderName::from_bytes(name.trim().as_bytes()) {
                Ok(h) if RESERVED_HEADERS.contains(&h.as_str()) => {
                    r.error(&cp, format!("{name} cannot carry a claim"));
                }
                Ok(h) if forward_claims.iter().any(|(_, x)| *x == h) => {
                    r.error(&cp, format!("header {name} already carries another claim"));
                }
                Ok(h) => forward_claims.push((claim, h)),
                Err(_) => r.error(&cp, format!("\"{name}\" is not a valid header name")),
            }
        }
    }
    let max_token_bytes = t
        .get("max_token_bytes")
        .and_then(|v| r.integer(&key_path(path, "max_token_bytes"), v, 256, 65536))
        .map_or(8192, |n| n as usize);

    let wants_hmac = algorithms.iter().any(|a| a.is_hmac());
    let wants_public = algorithms.iter().any(|a| !a.is_hmac());
    // When secrets were listed but failed, their own errors say why; this would only repeat it.
    if wants_hmac && t.get("secrets").is_none() && jwks_file.is_none() && jwks_url.is_none() {
        r.error(
            &sp,
            "an HS* algorithm is allowed but no secret is configured",
        );
    }
    if wants_public && jwks_file.is_none() && jwks_url.is_none() {
        r.error(
            path,
            "an RS/PS/ES/EdDSA algorithm is allowed but neither jwks_file nor jwks_url is set",
        );
    }
    if !secrets.is_empty() && !wants_hmac {
        r.error(
            &sp,
            "secrets are configured but no HS* algorithm is allowed",
        );
    }
    Some(JwtConfig {
        issuer,
        audiences,
        algorithms,
        leeway,
        jwks_file,
        jwks_url,
        jwks_refresh,
        secrets,
        forward_claims,
        max_token_bytes,
    })
}

fn read_secret(r: &mut Reader, path: &str, value: &Value) -> Option<HmacSecret> {
    let t = r.table(path, value, &["kid", "env", "file"])?;
    let kid = t
        .get("kid")
        .and_then(|v| r.string(&key_path(path, "kid"), v));
    let (source, bytes) = match (t.get("env"), t.get("file")) {
        (Some(_), Some(_)) | (None, None) => {
            r.error(path, "give exactly one of env or file");
            return None;
        }
        (Some(v), None) => {
            let p = key_path(path, "env");
            let name = r.string(&p, v)?;
            match std::env::var(&name) {
                Ok(val) if !val.is_empty() => (SecretSource::Env(name), val.into_bytes()),
                _ => {
                    r.error(&p, format!("environment variable {name} is not set"));
                    return None;
                }
            }
        }
        (None, Some(v)) => {
            let p = key_path(path, "file");
            let name = r.string(&p, v)?;
            match std::fs::read(&name) {
                Ok(mut bytes) => {
                    // One trailing newline, as `echo secret > file` writes, is not part of the
                    // secret; anything else is, byte for byte.
                    if bytes.ends_with(b"\r\n") {
                        bytes.truncate(bytes.len() - 2);
                    } else if bytes.ends_with(b"\n") {
                        bytes.pop();
                    }
                    (SecretSource::File(name.into()), bytes)
                }
                Err(e) => {
                    r.error(&p, format!("cannot read {name}: {e}"));
                    return None;
                }
            }
        }
    };
    if bytes.len() < MIN_SECRET_BYTES {
        r.error(
            path,
            format!(
                "the secret is {} bytes; HMAC keys need at least {MIN_SECRET_BYTES}",
                bytes.len()
            ),
        );
        return None;
    }
    Some(HmacSecret { kid, source, bytes })
}

pub(super) fn string_list(r: &mut Reader, path: &str, value: &Value) -> Vec<String> {
    r.list(path, value)
        .iter()
        .enumerate()
        .filter_map(|(i, v)| r.string(&index_path(path, i), v))
        .collect()
}

/// Resolves a relative path against the working directory at load: a daemonised Pingora
/// changes directory to `/`, and refreshes read the file again later.
fn absolute(p: PathBuf) -> PathBuf {
    std::path::absolute(&p).unwrap_or(p)
}
