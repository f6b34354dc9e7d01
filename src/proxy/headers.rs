//! Request and response header hygiene: request ids, X-Forwarded-*, hop-by-hop removal.

use std::cell::Cell;
use std::hash::BuildHasher;
use std::net::IpAddr;

use http::header::{self, HeaderName, HeaderValue};
use pingora_http::{RequestHeader, ResponseHeader};

use crate::request::HeaderView;

pub const X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
pub const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
pub const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");

/// Longest client-supplied request id that is kept.
pub const MAX_REQUEST_ID_LEN: usize = 128;

/// Headers that describe one hop (RFC 9110 7.6.1), never forwarded. `Upgrade` is kept when
/// the request really asks for one (WebSocket).
const HOP_BY_HOP: [HeaderName; 6] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::TE,
    header::TRAILER,
    header::PROXY_AUTHORIZATION,
];

/// The client's X-Request-Id when it is a sane token, else a fresh one.
pub fn request_id(req: &RequestHeader) -> HeaderValue {
    match req.headers.get(X_REQUEST_ID) {
        Some(v) if is_sane_id(v.as_bytes()) => v.clone(),
        _ => new_request_id(),
    }
}

/// [`request_id`] held inline rather than as a header value: the lean path writes ids as
/// bytes, and this costs it no allocation (and no borrow of the client's buffer).
pub struct RequestId {
    bytes: [u8; MAX_REQUEST_ID_LEN],
    len: usize,
}

impl RequestId {
    pub fn of(headers: HeaderView<'_>) -> RequestId {
        let mut id = RequestId {
            bytes: [0; MAX_REQUEST_ID_LEN],
            len: 0,
        };
        let client = headers.get(&X_REQUEST_ID).filter(|v| is_sane_id(v));
        let fresh;
        let chosen = match client {
            Some(v) => v,
            None => {
                fresh = fresh_request_id();
                &fresh[..]
            }
        };
        // A sane id fits (it is at most MAX_REQUEST_ID_LEN bytes).
        if let Some(slot) = id.bytes.get_mut(..chosen.len()) {
            slot.copy_from_slice(chosen);
            id.len = chosen.len();
        }
        id
    }

    /// Visible ASCII.
    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes[..self.len]
    }

    pub fn to_header_value(&self) -> HeaderValue {
        HeaderValue::from_bytes(self.as_bytes()).unwrap_or_else(|_| HeaderValue::from_static("0"))
    }
}

fn is_sane_id(id: &[u8]) -> bool {
    !id.is_empty()
        && id.len() <= MAX_REQUEST_ID_LEN
        && id
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b':'))
}

thread_local! {
    /// Per-thread random seed and counter: unique ids without a shared atomic.
    static ID_STATE: Cell<(u64, u64)> = Cell::new((std::collections::hash_map::RandomState::new().hash_one(std::thread::current().id()), 0));
}

/// Length of a fresh request id.
pub const FRESH_ID_LEN: usize = 20;

/// A fresh request id: 20 hex digits, unique per process with overwhelming probability.
pub fn new_request_id() -> HeaderValue {
    HeaderValue::from_bytes(&fresh_request_id()).unwrap_or_else(|_| HeaderValue::from_static("0"))
}

fn fresh_request_id() -> [u8; FRESH_ID_LEN] {
    let (seed, n) = ID_STATE.with(|s| {
        let (seed, n) = s.get();
        s.set((seed, n.wrapping_add(1)));
        (seed, n)
    });
    let mixed = splitmix64(seed ^ n.wrapping_mul(0x9E37_79B9_7F4A_7C15));
    let mut buf = [0u8; FRESH_ID_LEN];
    const HEX: &[u8; 16] = b"0123456789abcdef";
    for (i, slot) in buf.iter_mut().enumerate().take(16) {
        *slot = HEX[((mixed >> (60 - 4 * i)) & 0xf) as usize];
    }
    // Four more digits from the counter keep ids distinct even if two mixes ever collide.
    for (i, slot) in buf[16..].iter_mut().enumerate() {
        *slot = HEX[((n >> (12 - 4 * i)) & 0xf) as usize];
    }
    buf
}

fn splitmix64(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^ (x >> 31)
}

/// Rewrites the upstream request's headers: hop-by-hop out, identity of the hop in.
///
/// Names are inserted as `&'static str`: Pingora copies and re-parses a `HeaderName` it is
/// given (to keep its case map), which costs allocations on every request.
pub fn prepare_upstream_request(
    req: &mut RequestHeader,
    client_ip: Option<IpAddr>,
    request_id: &HeaderValue,
    host: Option<&HeaderValue>,
) {
    let upgrade = is_upgrade(&req.headers);
    remove_hop_by_hop(req, upgrade);
    if let Some(v) = forwarded_for(req, client_ip) {
        let _ = req.insert_header("x-forwarded-for", v);
    }
    let _ = req.insert_header("x-forwarded-proto", HeaderValue::from_static("http"));
    match host {
        Some(h) => {
            let _ = req.insert_header("x-forwarded-host", h.clone());
        }
        None => {
            req.remove_header(&X_FORWARDED_HOST);
        }
    }
    let _ = req.insert_header("x-request-id", request_id.clone());
}

/// X-Forwarded-For with the client's address appended to what the request carried.
pub fn forwarded_for(req: &RequestHeader, client_ip: Option<IpAddr>) -> Option<HeaderValue> {
    let ip = client_ip?;
    let value = match req
        .headers
        .get(X_FORWARDED_FOR)
        .and_then(|v| v.to_str().ok())
    {
        Some(prev) if !prev.trim().is_empty() => format!("{prev}, {ip}"),
        _ => ip.to_string(),
    };
    HeaderValue::from_str(&value).ok()
}

/// Cleans an upstream response before it reaches the client.
pub fn prepare_response(resp: &mut ResponseHeader, request_id: &HeaderValue) {
    let upgraded = resp.status == http::StatusCode::SWITCHING_PROTOCOLS;
    remove_hop_by_hop(resp, upgraded);
    let _ = resp.insert_header("x-request-id", request_id.clone());
}

fn is_upgrade(headers: &http::HeaderMap) -> bool {
    headers.contains_key(header::UPGRADE)
        && headers.get_all(header::CONNECTION).iter().any(|v| {
            v.to_str().is_ok_and(|s| {
                s.split(',')
                    .any(|t| t.trim().eq_ignore_ascii_case("upgrade"))
            })
        })
}

/// Header maps Pingora lets us edit: removal goes through the owner so that its
/// case-preserving name map stays in step.
trait EditHeaders {
    fn headers(&self) -> &http::HeaderMap;
    fn remove(&mut self, name: &HeaderName);
}

impl EditHeaders for RequestHeader {
    fn headers(&self) -> &http::HeaderMap {
        &self.headers
    }
    fn remove(&mut self, name: &HeaderName) {
        self.remove_header(name);
    }
}

impl EditHeaders for ResponseHeader {
    fn headers(&self) -> &http::HeaderMap {
        &self.headers
    }
    fn remove(&mut self, name: &HeaderName) {
        self.remove_header(name);
    }
}

fn remove_hop_by_hop(msg: &mut impl EditHeaders, keep_upgrade: bool) {
    // Headers the Connection header names are hop-by-hop too. Collected first: the map
    // cannot be read while it is changed. Most requests name none beyond keep-alive/close.
    let mut named: Vec<HeaderName> = Vec::new();
    for v in msg.headers().get_all(header::CONNECTION) {
        let Ok(s) = v.to_str() else { continue };
        for token in s.split(',').map(str::trim) {
            if token.is_empty()
                || token.eq_ignore_ascii_case("keep-alive")
                || token.eq_ignore_ascii_case("close")
                || (keep_upgrade && token.eq_ignore_ascii_case("upgrade"))
            {
                continue;
            }
            if let Ok(name) = HeaderName::from_bytes(token.as_bytes()) {
                named.push(name);
            }
        }
    }
    for name in &named {
        msg.remove(name);
    }
    for name in HOP_BY_HOP.iter() {
        if keep_upgrade && *name == header::CONNECTION {
            continue;
        }
        if msg.headers().contains_key(name) {
            msg.remove(name);
        }
    }
    if !keep_upgrade && msg.headers().contains_key(header::UPGRADE) {
        msg.remove(&header::UPGRADE);
    }
}

/// Most header bytes an upstream answer may carry (Pingora itself allows about 1 MiB): a
/// broken or hostile backend cannot make the gateway relay a huge head to every client.
pub const MAX_UPSTREAM_HEADER_BYTES: usize = 64 * 1024;

/// The size of a response head's fields, as sent (name, ": ", value, CRLF).
pub fn header_bytes(resp: &ResponseHeader) -> usize {
    resp.headers
        .iter()
        .map(|(name, value)| name.as_str().len() + value.len() + 4)
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_sane_ids_and_replaces_others() {
        let mut req = RequestHeader::build("GET", b"/", None).unwrap();
        req.insert_header("x-request-id", "abc-123_x.y:z").unwrap();
        assert_eq!(request_id(&req), "abc-123_x.y:z");
        for bad in ["has space", "quote\"", &"a".repeat(129), "semi;colon"] {
            req.insert_header("x-request-id", bad).unwrap();
            let id = request_id(&req);
            assert_ne!(id, bad);
            assert_eq!(id.len(), 20);
        }
    }

    #[test]
    fn fresh_ids_differ() {
        let ids: std::collections::HashSet<_> = (0..10_000).map(|_| new_request_id()).collect();
        assert_eq!(ids.len(), 10_000);
    }

    #[test]
    fn hop_by_hop_and_forwarded() {
        let mut req = RequestHeader::build("GET", b"/", None).unwrap();
        req.insert_header("connection", "keep-alive, x-secret")
            .unwrap();
        req.insert_header("x-secret", "1").unwrap();
        req.insert_header("keep-alive", "timeout=5").unwrap();
        req.insert_header("te", "trailers").unwrap();
        req.insert_header("upgrade", "h2c").unwrap();
        req.insert_header("x-forwarded-for", "203.0.113.9").unwrap();
        let host = HeaderValue::from_static("api.example.com");
        prepare_upstream_request(
            &mut req,
            Some("127.0.0.1".parse().unwrap()),
            &HeaderValue::from_static("rid"),
            Some(&host),
        );
        for gone in ["connection", "x-secret", "keep-alive", "te", "upgrade"] {
            assert!(req.headers.get(gone).is_none(), "{gone}");
        }
        assert_eq!(req.headers["x-forwarded-for"], "203.0.113.9, 127.0.0.1");
        assert_eq!(req.headers["x-forwarded-proto"], "http");
        assert_eq!(req.headers["x-forwarded-host"], "api.example.com");
        assert_eq!(req.headers["x-request-id"], "rid");
    }

    #[test]
    fn websocket_upgrade_survives() {
        let mut req = RequestHeader::build("GET", b"/", None).unwrap();
        req.insert_header("connection", "Upgrade").unwrap();
        req.insert_header("upgrade", "websocket").unwrap();
        prepare_upstream_request(&mut req, None, &HeaderValue::from_static("r"), None);
        assert_eq!(req.headers["upgrade"], "websocket");
        assert_eq!(req.headers["connection"], "Upgrade");
    }
}
