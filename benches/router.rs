//! Router lookup cost as the route table grows: 1 route against 1,000 and 10,000.
//!
//! A table of N routes mixes what a large gateway config holds (`route`): exact literal paths,
//! `{param}` templates with one and two parameters, literal prefixes, and host-specific routes
//! over 50 tenant hosts, most of them under one shared `/api/v1` node (a 6,000-way fan-out at
//! 10,000 routes). The request kinds (`Kind`) are hits of each sort and a miss.
//!
//! For every kind, the 1-route table holds exactly the route the request is about (for the
//! miss: the template route whose subtree the miss walks), and the larger tables hold that same
//! route among the others, so a ratio compares the same lookup with an empty and a full table:
//! - `hot/KIND/N`: one request, repeated (the trie path it walks stays in L1);
//! - `spread/KIND/N`: 1,024 requests in turn; with N >= 1,000 each one names a different
//!   route of that kind (so the walk touches cold parts of the trie), with 1 route they vary
//!   the parameter values only;
//! - `mix/N`: 1,024 requests of all kinds in one stream (40% template, 10% two-parameter
//!   template, 20% exact, 10% prefix, 10% host-specific, 10% miss), against the one N-route
//!   router; for N = 1, each request goes to the 1-route router of its kind.
//!
//! The ratio the performance target is about: time per lookup with 1 route / with 10,000.

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use http::Method;
use portcullis::config::{AuthMode, RouteConfig, RoutePath};
use portcullis::routing::pattern::{PathPattern, PrefixPattern};
use portcullis::routing::{normalize_path, Lookup, Router};

const SIZES: [usize; 3] = [1, 1_000, 10_000];
const STREAM: usize = 1_024;
/// The host of requests that are not for a tenant host (wrk, curl: the gateway's own name).
const API_HOST: &str = "api.example.com";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Template,
    Template2,
    Exact,
    Prefix,
    Host,
    Miss,
}

impl Kind {
    const ALL: [Kind; 6] = [
        Kind::Template,
        Kind::Template2,
        Kind::Exact,
        Kind::Prefix,
        Kind::Host,
        Kind::Miss,
    ];

    fn name(self) -> &'static str {
        match self {
            Kind::Template => "template",
            Kind::Template2 => "template2",
            Kind::Exact => "exact",
            Kind::Prefix => "prefix",
            Kind::Host => "host",
            Kind::Miss => "miss",
        }
    }

    /// Route indexes `i` with `i % 10` in this set have the shape this kind hits.
    fn slots(self) -> &'static [usize] {
        match self {
            Kind::Template | Kind::Miss => &[0, 1, 2],
            Kind::Template2 => &[3],
            Kind::Exact => &[4, 5],
            Kind::Prefix => &[6],
            Kind::Host => &[8],
        }
    }

    /// Share of the `mix` stream, in tenths.
    fn weight(self) -> usize {
        match self {
            Kind::Template => 4,
            Kind::Exact => 2,
            _ => 1,
        }
    }
}

fn tenant(i: usize) -> String {
    format!("tenant{}.example.com", i % 50)
}

/// Route `i` of a big table; its shape depends on `i % 10`.
fn route(i: usize) -> RouteConfig {
    let exact = |p: String| RoutePath::Exact(PathPattern::parse(&p).unwrap());
    let prefix = |p: String| RoutePath::Prefix(PrefixPattern::parse(&p).unwrap());
    let (path, methods, host): (RoutePath, Option<Vec<Method>>, Option<String>) = match i % 10 {
        0..=2 => (
            exact(format!("/api/v1/svc{i}/items/{{id}}")),
            Some(vec![Method::GET, Method::POST]),
            None,
        ),
        3 => (
            exact(format!("/api/v1/svc{i}/users/{{user}}/orders/{{order}}")),
            Some(vec![Method::GET]),
            None,
        ),
        4 | 5 => (
            exact(format!("/api/v1/svc{i}/status")),
            Some(vec![Method::GET]),
            None,
        ),
        6 => (
            prefix(format!("/static/svc{i}")),
            Some(vec![Method::GET, Method::HEAD]),
            None,
        ),
        7 => (prefix(format!("/api/v2/svc{i}")), None, None),
        8 => (
            exact(format!("/api/v1/svc{i}/items/{{id}}")),
            Some(vec![Method::GET]),
            Some(tenant(i)),
        ),
        _ => (
            exact(format!("/svc{i}/health")),
            Some(vec![Method::GET]),
            Some(tenant(i)),
        ),
    };
    RouteConfig {
        name: format!("r{i}"),
        path,
        methods,
        host,
        upstream: Some("u".into()),
        aggregate: None,
        strip_prefix: None,
        auth: AuthMode::None,
        rate_limit: Vec::new(),
        required_scopes: Vec::new(),
    }
}

/// The request of `kind` for route `i` (which has that kind's shape); `v` varies the values.
fn request(kind: Kind, i: usize, v: usize) -> (String, String) {
    let api = API_HOST.to_string();
    match kind {
        Kind::Template => (api, format!("/api/v1/svc{i}/items/{}", 10_000 + v)),
        Kind::Template2 => (
            api,
            format!("/api/v1/svc{i}/users/u-{}/orders/{}", v, 900_000 + v),
        ),
        Kind::Exact => (api, format!("/api/v1/svc{i}/status")),
        Kind::Prefix => (api, format!("/static/svc{i}/css/site.v{v}.css")),
        Kind::Host => (tenant(i), format!("/api/v1/svc{i}/items/{v}")),
        Kind::Miss => (api, format!("/api/v1/svc{i}/nothing/{v}")),
    }
}

/// A route index of `kind`'s shape in a table of `n` (n >= 10), from a pseudo-random `r`.
fn pick(kind: Kind, n: usize, r: usize) -> usize {
    let slots = kind.slots();
    (r % (n / 10)) * 10 + slots[(r / (n / 10)) % slots.len()]
}

/// The route every `hot` request is about: in the middle of the 10,000-route table.
fn hot_index(kind: Kind) -> usize {
    5_000 + kind.slots()[0]
}

/// A small deterministic generator (no dependency): xorshift64*.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> usize {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        (self.0.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 33) as usize
    }
}

/// The table of `n` routes that holds route `keep`: `route(0..n)`, or just `keep` for n = 1.
fn table(n: usize, keep: usize) -> Router {
    if n == 1 {
        Router::build(&[route(keep)])
    } else {
        assert!(keep < n);
        Router::build(&(0..n).map(route).collect::<Vec<_>>())
    }
}

struct Req {
    router: usize,
    host: String,
    path: String,
    kind: Kind,
}

fn check(router: &Router, r: &Req) {
    let got = router.lookup(Some(&r.host), &Method::GET, &r.path);
    match (r.kind, got) {
        (Kind::Miss, Lookup::NotFound) => {}
        (Kind::Miss, other) => panic!("{} should miss, got {other:?}", r.path),
        (_, Lookup::Found { .. }) => {}
        (_, other) => panic!("{} {} should hit, got {other:?}", r.host, r.path),
    }
}

fn bench_stream(c: &mut Criterion, group: &str, id: BenchmarkId, routers: &[Router], reqs: &[Req]) {
    for r in reqs {
        check(&routers[r.router], r);
    }
    let mut g = c.benchmark_group(group);
    g.throughput(Throughput::Elements(1));
    let mut i = 0;
    g.bench_function(id, |b| {
        b.iter(|| {
            i = (i + 1) % reqs.len();
            let r = &reqs[i];
            black_box(routers[r.router].lookup(
                Some(black_box(&r.host)),
                &Method::GET,
                black_box(&r.path),
            ));
        })
    });
    g.finish();
}

fn lookups(c: &mut Criterion) {
    let big: Vec<Router> = SIZES[1..].iter().map(|&n| table(n, 0)).collect();
    let router_for = |n: usize| &big[SIZES[1..].iter().position(|&m| m == n).unwrap()];
    for kind in Kind::ALL {
        let hot = hot_index(kind);
        let single = table(1, hot);
        for &n in &SIZES {
            let router = if n == 1 { &single } else { router_for(n) };
            let at = if n == 1 { hot } else { hot % n };
            let (host, path) = request(kind, at, 7);
            let one = [Req {
                router: 0,
                host,
                path,
                kind,
            }];
            // The routers are shared; `bench_stream` takes a slice, so index 0 is this one.
            let routers = std::slice::from_ref(router);
            bench_stream(
                c,
                &format!("hot/{}", kind.name()),
                BenchmarkId::from_parameter(n),
                routers,
                &one,
            );
            let mut rng = Rng(0x9E37_79B9_7F4A_7C15 ^ n as u64);
            let reqs: Vec<Req> = (0..STREAM)
                .map(|v| {
                    let i = if n == 1 {
                        hot
                    } else {
                        pick(kind, n, rng.next())
                    };
                    let (host, path) = request(kind, i, v);
                    Req {
                        router: 0,
                        host,
                        path,
                        kind,
                    }
                })
                .collect();
            bench_stream(
                c,
                &format!("spread/{}", kind.name()),
                BenchmarkId::from_parameter(n),
                routers,
                &reqs,
            );
        }
    }
    // One stream of all kinds in their weights.
    let kinds: Vec<Kind> = Kind::ALL
        .iter()
        .flat_map(|&k| std::iter::repeat_n(k, k.weight()))
        .collect();
    let singles: Vec<Router> = Kind::ALL.iter().map(|&k| table(1, hot_index(k))).collect();
    for &n in &SIZES {
        let mut rng = Rng(0xD1B5_4A32_D192_ED03 ^ n as u64);
        let reqs: Vec<Req> = (0..STREAM)
            .map(|v| {
                let kind = kinds[rng.next() % kinds.len()];
                let k = Kind::ALL.iter().position(|&x| x == kind).unwrap();
                let i = if n == 1 {
                    hot_index(kind)
                } else {
                    pick(kind, n, rng.next())
                };
                let (host, path) = request(kind, i, v);
                Req {
                    router: if n == 1 { k } else { 0 },
                    host,
                    path,
                    kind,
                }
            })
            .collect();
        let routers = if n == 1 {
            &singles[..]
        } else {
            std::slice::from_ref(router_for(n))
        };
        bench_stream(c, "mix", BenchmarkId::from_parameter(n), routers, &reqs);
    }
}

fn normalisation(c: &mut Criterion) {
    let mut group = c.benchmark_group("normalize_path");
    for p in ["/api/users/7", "/api/./users//%37/../8"] {
        group.bench_with_input(BenchmarkId::from_parameter(p), &p, |b, p| {
            b.iter(|| normalize_path(black_box(p)))
        });
    }
    group.finish();
}

criterion_group!(benches, lookups, normalisation);
criterion_main!(benches);
