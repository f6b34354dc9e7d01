//! The compiled router: a segment trie per host, built once at load.
//!
//! Matching rule (also in the README): a route with a `host` equal to the request's host is
//! preferred to a route without `host`; within a host, an exact or template `path` beats any
//! `path_prefix`, and a longer prefix (in segments) beats a shorter one; at one position a
//! literal segment beats a `{param}`. A route whose methods do not include the request's
//! method does not match, and the next candidate is tried; if a path matched but no method
//! did, the answer is 405 with `Allow` listing the methods those paths accept.
//!
//! Lookup walks the path's segments once (plus backtracking where a literal and a parameter
//! branch meet), so its work follows the path's depth, not the number of routes; what grows
//! with a big table is cache misses (`benches/router.rs`, `load-tests/scaling.md`).

use std::collections::hash_map::RandomState;
use std::collections::HashMap;
use std::hash::{BuildHasher, Hasher};

use http::Method;

use super::pattern::{Segment, MAX_PARAMS};
use crate::config::{RouteConfig, RoutePath};

/// A set of methods as a bit mask; extension methods share one bit and only match "any".
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MethodSet(u16);

const METHODS: [Method; 9] = [
    Method::GET,
    Method::HEAD,
    Method::POST,
    Method::PUT,
    Method::DELETE,
    Method::PATCH,
    Method::OPTIONS,
    Method::TRACE,
    Method::CONNECT,
];
const OTHER_BIT: u16 = 1 << 15;

impl MethodSet {
    pub const ANY: MethodSet = MethodSet(u16::MAX);

    fn bit(method: &Method) -> u16 {
        METHODS
            .iter()
            .position(|m| m == method)
            .map_or(OTHER_BIT, |i| 1 << i)
    }

    pub fn from_methods(methods: Option<&[Method]>) -> MethodSet {
        match methods {
            None => MethodSet::ANY,
            Some(list) => MethodSet(list.iter().fold(0, |acc, m| acc | Self::bit(m))),
        }
    }

    pub fn contains(self, method: &Method) -> bool {
        self.0 & Self::bit(method) != 0
    }

    fn union(self, other: MethodSet) -> MethodSet {
        MethodSet(self.0 | other.0)
    }

    /// The `Allow` header value: known methods in a fixed order.
    pub fn allow_header(self) -> String {
        let names: Vec<&str> = METHODS
            .iter()
            .enumerate()
            .filter(|(i, _)| self.0 & (1 << i) != 0)
            .map(|(_, m)| m.as_str())
            .collect();
        names.join(", ")
    }
}

/// Index of a route in config order.
pub type RouteId = usize;

/// The parameters a template captured: values are slices of the normalised path.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Params<'p> {
    pairs: Vec<(&'p str, &'p str)>,
}

impl<'p> Params<'p> {
    pub fn get(&self, name: &str) -> Option<&'p str> {
        self.pairs.iter().find(|(n, _)| *n == name).map(|(_, v)| *v)
    }

    pub fn iter(&self) -> impl Iterator<Item = (&'p str, &'p str)> + '_ {
        self.pairs.iter().copied()
    }

    pub fn is_empty(&self) -> bool {
        self.pairs.is_empty()
    }
}

#[derive(Debug, PartialEq, Eq)]
pub enum Lookup<'p> {
    Found {
        route: RouteId,
        params: Params<'p>,
    },
    /// The path matched, no method did: the `Allow` header's value.
    MethodNotAllowed(String),
    NotFound,
}

#[derive(Debug, Default)]
struct Endpoint {
    routes: Vec<(MethodSet, RouteId)>,
}

impl Endpoint {
    fn pick(&self, method: &Method) -> Option<RouteId> {
        self.routes
            .iter()
            .find(|(m, _)| m.contains(method))
            .map(|(_, id)| *id)
    }

    fn methods(&self) -> MethodSet {
        self.routes
            .iter()
            .fold(MethodSet(0), |acc, (m, _)| acc.union(*m))
    }
}

/// The hash of the router's maps (path segments, hosts). A lookup hashes every segment it
/// walks, and the host too once any route has a `host`; with the default SipHash-1-3 that
/// was over a third of its time (`benches/router.rs`: 140-230 ns a lookup, 87-135 ns with
/// this hash). These maps are built from the config and never grow at run time, so a
/// request can only probe them, never lengthen their probe sequences; a multiply-fold hash
/// is enough, and its per-map random seed keeps a segment's slot unpredictable from outside.
#[derive(Debug, Clone)]
struct SegState {
    seed: u64,
}

impl Default for SegState {
    fn default() -> Self {
        SegState {
            seed: RandomState::new().hash_one(0x5EED_u64) | 1,
        }
    }
}

impl BuildHasher for SegState {
    type Hasher = SegHasher;

    fn build_hasher(&self) -> SegHasher {
        SegHasher(self.seed)
    }
}

struct SegHasher(u64);

/// A 64x64->128-bit multiply, folded: every input bit reaches the low and the high bits,
/// which hashbrown uses for the slot and the tag.
#[inline]
fn fold(x: u64) -> u64 {
    let m = u128::from(x) * 0x9E37_79B9_7F4A_7C15_u128;
    (m >> 64) as u64 ^ m as u64
}

/// `bytes[i..i + N]` as a little-endian integer (the caller checks the bounds).
#[inline]
fn read<const N: usize>(bytes: &[u8], i: usize) -> [u8; N] {
    let mut out = [0u8; N];
    out.copy_from_slice(&bytes[i..i + N]);
    out
}

impl Hasher for SegHasher {
    #[inline]
    fn write(&mut self, bytes: &[u8]) {
        // Whole words, then the last 1-8 bytes read as (possibly overlapping) fixed-size
        // words, so that no call copies a variable-length tail; the length goes in as well.
        let n = bytes.len();
        let mut h = self.0 ^ (n as u64).wrapping_mul(0xA076_1D64_78BD_642F);
        let tail = if n > 8 {
            let mut i = 0;
            while i + 8 < n {
                h = fold(h ^ u64::from_le_bytes(read::<8>(bytes, i)));
                i += 8;
            }
            u64::from_le_bytes(read::<8>(bytes, n - 8))
        } else if n >= 4 {
            let lo = u32::from_le_bytes(read::<4>(bytes, 0));
            let hi = u32::from_le_bytes(read::<4>(bytes, n - 4));
            u64::from(lo) | u64::from(hi) << 32
        } else if n > 0 {
            u64::from(bytes[0]) | u64::from(bytes[n / 2]) << 8 | u64::from(bytes[n - 1]) << 16
        } else {
            0
        };
        self.0 = fold(h ^ tail);
    }

    #[inline]
    fn write_u8(&mut self, i: u8) {
        // `str` hashes end with a 0xff byte; the length is already in, so a cheap mix does.
        self.0 = self.0.rotate_left(8) ^ u64::from(i);
    }

    #[inline]
    fn finish(&self) -> u64 {
        fold(self.0)
    }
}

#[derive(Debug, Default)]
struct Node {
    literal: HashMap<Box<str>, Node, SegState>,
    param: Option<Box<Node>>,
    exact: Option<Endpoint>,
    prefix: Option<Endpoint>,
}

#[derive(Debug, Default)]
struct Table {
    root: Node,
}

/// The router for one config.
#[derive(Debug, Default)]
pub struct Router {
    by_host: HashMap<Box<str>, Table, SegState>,
    any_host: Table,
    /// Per route: the names of its template parameters, in path order.
    param_names: Vec<Vec<Box<str>>>,
}

impl Router {
    /// Builds the trie. Routes are assumed validated (no duplicates; see `config`).
    pub fn build(routes: &[RouteConfig]) -> Router {
        let mut router = Router::default();
        for (id, route) in routes.iter().enumerate() {
            let methods = MethodSet::from_methods(route.methods.as_deref());
            let table = match &route.host {
                Some(h) => router.by_host.entry(h.as_str().into()).or_default(),
                None => &mut router.any_host,
            };
            let mut names = Vec::new();
            let mut node = &mut table.root;
            match &route.path {
                RoutePath::Exact(p) => {
                    for seg in &p.segments {
                        node = match seg {
                            Segment::Literal(l) => node.literal.entry(l.clone()).or_default(),
                            Segment::Param(n) => {
                                names.push(n.clone());
                                node.param.get_or_insert_with(Default::default)
                            }
                        };
                    }
                    node.exact
                        .get_or_insert_with(Default::default)
                        .routes
                        .push((methods, id));
                }
                RoutePath::Prefix(p) => {
                    for seg in &p.segments {
                        node = node.literal.entry(seg.clone()).or_default();
                    }
                    node.prefix
                        .get_or_insert_with(Default::default)
                        .routes
                        .push((methods, id));
                }
            }
            router.param_names.push(names);
        }
        router
    }

    /// Finds the route for a request. `host` is the Host header without port, any case;
    /// `path` must be normalised (see `normalize_path`).
    pub fn lookup<'p>(&'p self, host: Option<&str>, method: &Method, path: &'p str) -> Lookup<'p> {
        let mut allowed = MethodSet(0);
        if let Some(table) = host.and_then(|h| self.host_table(h)) {
            if let Some(found) = self.lookup_table(table, method, path, &mut allowed) {
                return found;
            }
        }
        if let Some(found) = self.lookup_table(&self.any_host, method, path, &mut allowed) {
            return found;
        }
        if allowed.0 != 0 {
            Lookup::MethodNotAllowed(allowed.allow_header())
        } else {
            Lookup::NotFound
        }
    }

    fn host_table(&self, host: &str) -> Option<&Table> {
        if self.by_host.is_empty() {
            return None;
        }
        if host.bytes().any(|b| b.is_ascii_uppercase()) {
            self.by_host.get(host.to_ascii_lowercase().as_str())
        } else {
            self.by_host.get(host)
        }
    }

    fn lookup_table<'p>(
        &'p self,
        table: &Table,
        method: &Method,
        path: &'p str,
        allowed: &mut MethodSet,
    ) -> Option<Lookup<'p>> {
        let body = path.strip_prefix('/').unwrap_or(path);
        let mut captured: [&'p str; MAX_PARAMS] = [""; MAX_PARAMS];
        if let Some(id) = exact(&table.root, body, method, &mut captured, 0, allowed) {
            let names = &self.param_names[id];
            let params = Params {
                pairs: names
                    .iter()
                    .zip(captured.iter())
                    .map(|(n, v)| (&**n, *v))
                    .collect(),
            };
            return Some(Lookup::Found { route: id, params });
        }
        // Longest literal prefix whose methods fit.
        let mut node = &table.root;
        let mut best = None;
        let mut consider = |node: &Node, best: &mut Option<RouteId>| {
            if let Some(ep) = &node.prefix {
                match ep.pick(method) {
                    Some(id) => *best = Some(id),
                    None => *allowed = allowed.union(ep.methods()),
                }
            }
        };
        consider(node, &mut best);
        for seg in body.split('/') {
            match node.literal.get(seg) {
                Some(child) => {
                    node = child;
                    consider(node, &mut best);
                }
                None => break,
            }
        }
        best.map(|route| Lookup::Found {
            route,
            params: Params::default(),
        })
    }
}

// The lifetime 'n is only the trie's; 'p is the request path's.
/// Depth-first match of the remaining path `rest` against exact/template endpoints: literal
/// children first, then the parameter child.
fn exact<'p>(
    node: &Node,
    rest: &'p str,
    method: &Method,
    captured: &mut [&'p str; MAX_PARAMS],
    depth: usize,
    allowed: &mut MethodSet,
) -> Option<RouteId> {
    let (seg, tail) = match rest.find('/') {
        Some(i) => (&rest[..i], Some(&rest[i + 1..])),
        None => (rest, None),
    };
    if let Some(child) = node.literal.get(seg) {
        if let Some(id) = step(child, tail, method, captured, depth, allowed) {
            return Some(id);
        }
    }
    if let Some(child) = &node.param {
        if !seg.is_empty() && depth < MAX_PARAMS {
            captured[depth] = seg;
            if let Some(id) = step(child, tail, method, captured, depth + 1, allowed) {
                return Some(id);
            }
        }
    }
    None
}

fn step<'p>(
    child: &Node,
    tail: Option<&'p str>,
    method: &Method,
    captured: &mut [&'p str; MAX_PARAMS],
    depth: usize,
    allowed: &mut MethodSet,
) -> Option<RouteId> {
    match tail {
        Some(t) => exact(child, t, method, captured, depth, allowed),
        None => {
            let ep = child.exact.as_ref()?;
            let picked = ep.pick(method);
            if picked.is_none() {
                *allowed = allowed.union(ep.methods());
            }
            picked
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::routing::pattern::{PathPattern, PrefixPattern};

    fn route(path: &str, methods: Option<&[&str]>, host: Option<&str>) -> RouteConfig {
        let rp = if let Some(p) = path.strip_prefix("prefix:") {
            RoutePath::Prefix(PrefixPattern::parse(p).unwrap())
        } else {
            RoutePath::Exact(PathPattern::parse(path).unwrap())
        };
        RouteConfig {
            name: path.into(),
            path: rp,
            methods: methods.map(|ms| ms.iter().map(|m| m.parse().unwrap()).collect()),
            host: host.map(Into::into),
            upstream: Some("u".into()),
            aggregate: None,
            strip_prefix: None,
            auth: crate::config::AuthMode::None,
            rate_limit: Vec::new(),
            required_scopes: Vec::new(),
        }
    }

    fn found(l: Lookup) -> RouteId {
        match l {
            Lookup::Found { route, .. } => route,
            other => panic!("expected a route, got {other:?}"),
        }
    }

    #[test]
    fn exact_template_prefix_precedence() {
        let r = Router::build(&[
            route("prefix:/api", None, None),                    // 0
            route("prefix:/api/users", None, None),              // 1
            route("/api/users/{id}", Some(&["GET"]), None),      // 2
            route("/api/users/me", Some(&["GET"]), None),        // 3
            route("prefix:/", None, None),                       // 4
            route("/api/users/{id}/orders/{order}", None, None), // 5
        ]);
        assert_eq!(found(r.lookup(None, &Method::GET, "/api/users/me")), 3);
        assert_eq!(found(r.lookup(None, &Method::GET, "/api/users/7")), 2);
        assert_eq!(found(r.lookup(None, &Method::POST, "/api/users/7")), 1);
        assert_eq!(found(r.lookup(None, &Method::GET, "/api/users")), 1);
        assert_eq!(found(r.lookup(None, &Method::GET, "/api/usersx")), 0);
        assert_eq!(found(r.lookup(None, &Method::GET, "/apix")), 4);
        assert_eq!(found(r.lookup(None, &Method::GET, "/")), 4);
        match r.lookup(None, &Method::GET, "/api/users/7/orders/9") {
            Lookup::Found { route, params } => {
                assert_eq!(route, 5);
                assert_eq!(params.get("id"), Some("7"));
                assert_eq!(params.get("order"), Some("9"));
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn segment_aware_prefix_and_404() {
        let r = Router::build(&[route("prefix:/api/users", None, None)]);
        assert_eq!(found(r.lookup(None, &Method::GET, "/api/users")), 0);
        assert_eq!(found(r.lookup(None, &Method::GET, "/api/users/")), 0);
        assert_eq!(found(r.lookup(None, &Method::GET, "/api/users/7/x")), 0);
        assert_eq!(
            r.lookup(None, &Method::GET, "/api/usersx"),
            Lookup::NotFound
        );
        assert_eq!(r.lookup(None, &Method::GET, "/api"), Lookup::NotFound);
    }

    #[test]
    fn method_mismatch_is_405_with_allow() {
        let r = Router::build(&[
            route("/a/{x}", Some(&["GET", "POST"]), None),
            route("prefix:/a", Some(&["DELETE"]), None),
        ]);
        assert_eq!(
            r.lookup(None, &Method::PUT, "/a/1"),
            Lookup::MethodNotAllowed("GET, POST, DELETE".into())
        );
        assert_eq!(found(r.lookup(None, &Method::DELETE, "/a/1")), 1);
        let ext = Method::from_bytes(b"PURGE").unwrap();
        assert_eq!(
            r.lookup(None, &ext, "/a/1"),
            Lookup::MethodNotAllowed("GET, POST, DELETE".into())
        );
    }

    #[test]
    fn template_does_not_match_empty_segment_or_extra_depth() {
        let r = Router::build(&[route("/u/{id}", None, None)]);
        assert_eq!(r.lookup(None, &Method::GET, "/u/"), Lookup::NotFound);
        assert_eq!(r.lookup(None, &Method::GET, "/u/1/2"), Lookup::NotFound);
        assert_eq!(r.lookup(None, &Method::GET, "/u"), Lookup::NotFound);
    }

    #[test]
    fn host_routes_win_and_fall_back() {
        let r = Router::build(&[
            route("prefix:/", None, Some("api.example.com")),
            route("prefix:/x", None, None),
        ]);
        assert_eq!(
            found(r.lookup(Some("api.example.com"), &Method::GET, "/x")),
            0
        );
        assert_eq!(
            found(r.lookup(Some("API.Example.COM"), &Method::GET, "/x")),
            0
        );
        assert_eq!(found(r.lookup(Some("other"), &Method::GET, "/x/1")), 1);
        assert_eq!(
            r.lookup(Some("other"), &Method::GET, "/y"),
            Lookup::NotFound
        );
        assert_eq!(r.lookup(None, &Method::GET, "/y"), Lookup::NotFound);
    }

    #[test]
    fn every_route_of_a_large_table_is_found() {
        let routes: Vec<RouteConfig> = (0..5_000)
            .map(|i| match i % 3 {
                0 => route(&format!("/api/v1/svc{i}/items/{{id}}"), None, None),
                1 => route(&format!("/api/v1/svc{i}"), None, Some("h.example")),
                _ => route(&format!("prefix:/static/s{i}"), None, None),
            })
            .collect();
        let r = Router::build(&routes);
        for i in 0..5_000 {
            let (host, path) = match i % 3 {
                0 => (None, format!("/api/v1/svc{i}/items/x")),
                1 => (Some("h.example"), format!("/api/v1/svc{i}")),
                _ => (None, format!("/static/s{i}/a/b")),
            };
            assert_eq!(found(r.lookup(host, &Method::GET, &path)), i, "{path}");
        }
        assert_eq!(
            r.lookup(None, &Method::GET, "/api/v1/svc1"),
            Lookup::NotFound
        );
        assert_eq!(
            r.lookup(None, &Method::GET, "/api/v1/svc5000/items/x"),
            Lookup::NotFound
        );
    }

    #[test]
    fn trailing_slash_is_a_different_exact_path() {
        let r = Router::build(&[route("/a", None, None), route("/b/", None, None)]);
        assert_eq!(found(r.lookup(None, &Method::GET, "/a")), 0);
        assert_eq!(r.lookup(None, &Method::GET, "/a/"), Lookup::NotFound);
        assert_eq!(found(r.lookup(None, &Method::GET, "/b/")), 1);
    }
}
