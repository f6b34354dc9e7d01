//! Authentication at the front door: JWT verification against configured keys, the route's
//! policy (`required`/`optional`/`none`, scopes), and the identity forwarded upstream.
//!
//! `token` is the pure verifier; `keys` turns secrets and JWKS into ready keys; `jwks`
//! fetches and refreshes. This module owns the live key set (swapped whole on refresh), a
//! bounded cache of verified tokens (a repeat token costs a hash lookup, not a signature
//! check), and the rate limit on refreshes triggered by unknown `kid`s.

pub mod jwks;
pub mod keys;
pub mod token;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use arc_swap::ArcSwap;
use dashmap::DashMap;
use http::{header, HeaderName, HeaderValue};
use serde_json::{Map, Value};

use crate::config::{AuthMode, JwtConfig};
use crate::request::{visible_ascii, HeaderView};
use crate::respond::{ErrorCode, GatewayError};
use keys::KeySet;
use token::{TokenError, TokenPolicy};

/// Verified tokens kept; past this the cache is emptied (only validly signed tokens enter it,
/// so filling it takes real tokens, and emptying it only costs re-verification).
pub const VERIFIED_CACHE_ENTRIES: usize = 10_000;

/// Least time between two key refreshes triggered by unknown `kid`s.
pub const UNKNOWN_KID_REFRESH_INTERVAL: Duration = Duration::from_secs(5);

/// How long one JWKS fetch may take.
pub const JWKS_FETCH_TIMEOUT: Duration = Duration::from_secs(3);

/// Who the request is, once its token checked out.
#[derive(Debug)]
pub struct Identity {
    pub claims: Map<String, Value>,
    pub scopes: Vec<String>,
    /// `forward_claims`, ready to send upstream.
    pub headers: Vec<(HeaderName, HeaderValue)>,
    exp: u64,
    generation: u64,
}

impl Identity {
    /// A claim as bytes, for hashing and rate-limit keys: strings as they are, other values
    /// as JSON.
    pub fn claim_bytes(&self, name: &str) -> Option<std::borrow::Cow<'_, [u8]>> {
        match self.claims.get(name)? {
            Value::String(s) => Some(std::borrow::Cow::Borrowed(s.as_bytes())),
            Value::Null => None,
            other => Some(std::borrow::Cow::Owned(other.to_string().into_bytes())),
        }
    }
}

/// Why a request was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Rejection {
    /// No bearer token on a route that requires one.
    Missing,
    Invalid(TokenError),
    /// The token lacks these scopes.
    InsufficientScope(Vec<String>),
}

impl Rejection {
    /// The 401/403 answer with its RFC 6750 `WWW-Authenticate` header.
    pub fn to_error(&self) -> GatewayError {
        match self {
            Rejection::Missing => {
                GatewayError::with_message(ErrorCode::Unauthorized, "a bearer token is required")
                    .with_header(
                        header::WWW_AUTHENTICATE,
                        HeaderValue::from_static("Bearer realm=\"portcullis\""),
                    )
            }
            Rejection::Invalid(e) => {
                let value = format!(
                    "Bearer realm=\"portcullis\", error=\"invalid_token\", error_description=\"{}\"",
                    e.description()
                );
                GatewayError::with_message(ErrorCode::Unauthorized, e.description()).with_header(
                    header::WWW_AUTHENTICATE,
                    HeaderValue::from_str(&value).unwrap_or(HeaderValue::from_static("Bearer")),
                )
            }
            Rejection::InsufficientScope(missing) => {
                let scope = missing.join(" ");
                let value = format!(
                    "Bearer realm=\"portcullis\", error=\"insufficient_scope\", error_description=\"the token lacks a required scope\", scope=\"{scope}\""
                );
                GatewayError::with_message(ErrorCode::Forbidden, "the token lacks a required scope")
                    .with_header(
                        header::WWW_AUTHENTICATE,
                        HeaderValue::from_str(&value).unwrap_or(HeaderValue::from_static("Bearer")),
                    )
            }
        }
    }

    /// A stable reason, for logs and metrics.
    pub fn reason(&self) -> &'static str {
        match self {
            Rejection::Missing => "missing",
            Rejection::Invalid(e) => e.reason(),
            Rejection::InsufficientScope(_) => "insufficient_scope",
        }
    }
}

/// The bearer token of a request: `Ok(None)` without one (or with another scheme), an error
/// for an ambiguous or broken `Authorization`.
pub fn bearer_token(headers: HeaderView<'_>) -> Result<Option<&str>, TokenError> {
    let Some(value) = headers
        .get_unique(&header::AUTHORIZATION)
        .map_err(|_| TokenError::Malformed)?
    else {
        return Ok(None);
    };
    let text = visible_ascii(value).ok_or(TokenError::Malformed)?;
    let (scheme, rest) = match memchr::memchr(b' ', text.as_bytes()) {
        Some(i) => (
            text.get(..i).unwrap_or(text),
            text.get(i + 1..).unwrap_or(""),
        ),
        None => (text, ""),
    };
    if !scheme.eq_ignore_ascii_case("bearer") {
        return Ok(None);
    }
    let token = rest.trim_matches(' ');
    if token.is_empty() || memchr::memchr(b' ', token.as_bytes()).is_some() {
        return Err(TokenError::Malformed);
    }
    Ok(Some(token))
}

pub struct Authenticator {
    policy: TokenPolicy,
    config: JwtConfig,
    keys: ArcSwap<KeySet>,
    generation: AtomicU64,
    /// Keyed by the token. Hashed with a randomly seeded foldhash, not SipHash: only tokens
    /// whose signature verified enter, so an attacker cannot choose the keys without a key.
    cache: DashMap<Box<str>, Arc<Identity>, foldhash::fast::RandomState>,
    last_kid_refresh_ms: AtomicU64,
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn unix_now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

impl Authenticator {
    /// Builds the authenticator with its first keys. With a `jwks_url`, the caller fetches the
    /// document first (`initial_jwks`); without it, a failure to fetch is only fatal when no
    /// `jwks_file` is configured.
    pub fn new(config: &JwtConfig, initial_jwks: Option<&[u8]>) -> Result<Authenticator, String> {
        let auth = Authenticator {
            policy: TokenPolicy {
                algorithms: config.algorithms.clone(),
                issuer: config.issuer.clone(),
                audiences: config.audiences.clone(),
                leeway_secs: config.leeway.as_secs(),
                max_token_bytes: config.max_token_bytes,
            },
            config: config.clone(),
            keys: ArcSwap::from_pointee(KeySet::default()),
            generation: AtomicU64::new(0),
            cache: DashMap::default(),
            last_kid_refresh_ms: AtomicU64::new(0),
        };
        let set = auth.build_keys(initial_jwks)?;
        if set.is_empty() {
            return Err("auth.jwt: no usable key (check secrets, jwks_file and jwks_url)".into());
        }
        auth.keys.store(Arc::new(set));
        Ok(auth)
    }

    pub fn config(&self) -> &JwtConfig {
        &self.config
    }

    pub fn key_count(&self) -> usize {
        self.keys.load().len()
    }

    /// Secrets, the JWKS file (read now) and a fetched JWKS document, as one key set.
    fn build_keys(&self, fetched: Option<&[u8]>) -> Result<KeySet, String> {
        let allowed = &self.config.algorithms;
        let mut entries = keys::secret_entries(&self.config.secrets, allowed);
        if let Some(path) = &self.config.jwks_file {
            let doc = std::fs::read(path)
                .map_err(|e| format!("auth.jwt.jwks_file: cannot read {}: {e}", path.display()))?;
            let (more, notes) = keys::jwks_entries(&doc, allowed)
                .map_err(|e| format!("auth.jwt.jwks_file: {e}"))?;
            for n in notes {
                log::warn!("auth.jwt.jwks_file: {n}");
            }
            entries.extend(more);
        }
        if let Some(doc) = fetched {
            let (more, notes) =
                keys::jwks_entries(doc, allowed).map_err(|e| format!("auth.jwt.jwks_url: {e}"))?;
            for n in notes {
                log::warn!("auth.jwt.jwks_url: {n}");
            }
            entries.extend(more);
        }
        Ok(KeySet {
            entries,
            generation: self.generation.fetch_add(1, Ordering::Relaxed) + 1,
        })
    }

    /// Re-reads the key sources and swaps the key set in; on failure the old keys stay.
    pub async fn refresh(&self) -> Result<(), String> {
        let fetched = match &self.config.jwks_url {
            Some(url) => Some(jwks::fetch(url, JWKS_FETCH_TIMEOUT).await?),
            None => None,
        };
        let set = self.build_keys(fetched.as_deref())?;
        if set.is_empty() {
            return Err("the refreshed key set is empty".into());
        }
        log::info!("JWT keys refreshed: {} key(s)", set.len());
        self.keys.store(Arc::new(set));
        Ok(())
    }

    /// Authenticates a request for a route. `Ok(None)`: anonymous, allowed (`optional` or
    /// `none`). A token whose `kid` is unknown triggers at most one key refresh per
    /// `UNKNOWN_KID_REFRESH_INTERVAL`, then one more try.
    pub async fn authenticate(
        &self,
        headers: HeaderView<'_>,
        mode: AuthMode,
        required_scopes: &[String],
    ) -> Result<Option<Arc<Identity>>, Rejection> {
        if mode == AuthMode::None {
            return Ok(None);
        }
        let token = match bearer_token(headers) {
            Ok(Some(t)) => t,
            Ok(None) if mode == AuthMode::Optional => return Ok(None),
            Ok(None) => return Err(Rejection::Missing),
            Err(e) => return Err(Rejection::Invalid(e)),
        };
        let identity = match self.verify(token, unix_now()) {
            Err(TokenError::UnknownKey) if self.may_refresh_for_unknown_kid(token) => {
                // Boxed: the JWKS fetch is a large future (an HTTP client's), and every
                // request's future would otherwise carry its size (and copy it when boxed).
                if let Err(e) = Box::pin(self.refresh()).await {
                    log::warn!("JWKS refresh for an unknown kid failed: {e}");
                }
                self.verify(token, unix_now())
            }
            other => other,
        }
        .map_err(Rejection::Invalid)?;
        let missing: Vec<String> = required_scopes
            .iter()
            .filter(|s| !identity.scopes.contains(s))
            .cloned()
            .collect();
        if !missing.is_empty() {
            return Err(Rejection::InsufficientScope(missing));
        }
        Ok(Some(identity))
    }

    fn may_refresh_for_unknown_kid(&self, token: &str) -> bool {
        if self.config.jwks_url.is_none() && self.config.jwks_file.is_none() {
            return false;
        }
        if !token::has_unknown_kid(token, &self.keys.load(), &self.policy) {
            return false;
        }
        let now = unix_now_ms();
        let last = self.last_kid_refresh_ms.load(Ordering::Relaxed);
        now.saturating_sub(last) >= UNKNOWN_KID_REFRESH_INTERVAL.as_millis() as u64
            && self
                .last_kid_refresh_ms
                .compare_exchange(last, now, Ordering::AcqRel, Ordering::Relaxed)
                .is_ok()
    }

    /// Verifies a token, through the cache of tokens already verified with the current keys.
    pub fn verify(&self, token: &str, now: u64) -> Result<Arc<Identity>, TokenError> {
        let keys = self.keys.load();
        if let Some(hit) = self.cache.get(token) {
            let id = hit.value();
            if id.generation == keys.generation
                && now <= id.exp.saturating_add(self.policy.leeway_secs)
            {
                return Ok(id.clone());
            }
        }
        if token.len() > self.policy.max_token_bytes {
            return Err(TokenError::TooLarge);
        }
        let verified = token::verify(token, &keys, &self.policy, now)?;
        let identity = Arc::new(Identity {
            scopes: token::scopes(&verified.claims),
            headers: self.forwarded_headers(&verified.claims),
            claims: verified.claims,
            exp: verified.exp,
            generation: keys.generation,
        });
        if self.cache.len() >= VERIFIED_CACHE_ENTRIES {
            self.cache.clear();
        }
        self.cache.insert(token.into(), identity.clone());
        Ok(identity)
    }

    /// The `forward_claims` headers for these claims. A claim that cannot be a header value
    /// (control characters) is left out rather than mangled.
    fn forwarded_headers(&self, claims: &Map<String, Value>) -> Vec<(HeaderName, HeaderValue)> {
        let mut out = Vec::with_capacity(self.config.forward_claims.len());
        for (claim, name) in &self.config.forward_claims {
            let text = match claims.get(claim) {
                None | Some(Value::Null) => continue,
                Some(Value::String(s)) => s.clone(),
                Some(Value::Array(items)) if items.iter().all(Value::is_string) => items
                    .iter()
                    .filter_map(Value::as_str)
                    .collect::<Vec<_>>()
                    .join(" "),
                Some(other) => other.to_string(),
            };
            if let Ok(v) = HeaderValue::from_str(&text) {
                out.push((name.clone(), v));
            }
        }
        out
    }

    /// Header names that only the gateway may set upstream.
    pub fn identity_header_names(&self) -> impl Iterator<Item = &HeaderName> {
        self.config.forward_claims.iter().map(|(_, h)| h)
    }
}

#[cfg(test)]
mod tests {
    use super::bearer_token;
    use crate::auth::token::TokenError;
    use crate::request::HeaderView;

    fn token_of(values: &[&[u8]]) -> Result<Option<String>, TokenError> {
        let raw: Vec<httparse::Header<'_>> = values
            .iter()
            .map(|v| httparse::Header {
                name: "Authorization",
                value: v,
            })
            .collect();
        let mut map = http::HeaderMap::new();
        for v in values {
            map.append(
                http::header::AUTHORIZATION,
                http::HeaderValue::from_bytes(v).unwrap(),
            );
        }
        let from_raw = bearer_token(HeaderView::Raw(&raw)).map(|t| t.map(str::to_owned));
        let from_map = bearer_token(HeaderView::Map(&map)).map(|t| t.map(str::to_owned));
        assert_eq!(from_raw, from_map, "{values:?}");
        from_raw
    }

    #[test]
    fn bearer_credentials() {
        let some = |t: &str| Ok(Some(t.to_owned()));
        assert_eq!(token_of(&[]), Ok(None));
        assert_eq!(token_of(&[b"Bearer abc.def"]), some("abc.def"));
        assert_eq!(token_of(&[b"bEARER   abc  "]), some("abc"));
        assert_eq!(token_of(&[b"Basic dXNlcg=="]), Ok(None));
        assert_eq!(token_of(&[b"Bearer\tabc"]), Ok(None));
        assert_eq!(token_of(&[b"Bearer"]), Err(TokenError::Malformed));
        assert_eq!(token_of(&[b"Bearer    "]), Err(TokenError::Malformed));
        assert_eq!(token_of(&[b"Bearer a b"]), Err(TokenError::Malformed));
        assert_eq!(
            token_of(&[b"Bearer caf\xc3\xa9"]),
            Err(TokenError::Malformed)
        );
        assert_eq!(
            token_of(&[b"Bearer abc", b"Bearer abc"]),
            Err(TokenError::Malformed)
        );
        // A tab inside the token is not a separator: the token goes on to fail verification.
        assert_eq!(token_of(&[b"Bearer a\tb"]), some("a\tb"));
    }
}
