//! Router lookup cost as the route table grows: 10, 1,000 and 10,000 routes.
//!
//! Each table mixes exact paths, `{param}` templates and prefixes over a few hosts, like a
//! real gateway's. The lookups hit a template deep in the table, a prefix, and a miss.

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use http::Method;
use portcullis::config::{RouteConfig, RoutePath};
use portcullis::routing::pattern::{PathPattern, PrefixPattern};
use portcullis::routing::{normalize_path, Router};

fn routes(n: usize) -> Vec<RouteConfig> {
    (0..n)
        .map(|i| {
            let path = match i % 3 {
                0 => {
                    RoutePath::Exact(PathPattern::parse(&format!("/svc{i}/items/{{id}}")).unwrap())
                }
                1 => RoutePath::Exact(PathPattern::parse(&format!("/svc{i}/status")).unwrap()),
                _ => RoutePath::Prefix(PrefixPattern::parse(&format!("/svc{i}/files")).unwrap()),
            };
            RouteConfig {
                name: format!("r{i}"),
                path,
                methods: Some(vec![Method::GET, Method::POST]),
                host: (i % 10 == 9).then(|| format!("h{}.example.com", i % 7)),
                upstream: Some("u".into()),
                aggregate: None,
                strip_prefix: None,
                auth: portcullis::config::AuthMode::None,
                rate_limit: Vec::new(),
                required_scopes: Vec::new(),
            }
        })
        .collect()
}

fn lookups(c: &mut Criterion) {
    let mut group = c.benchmark_group("router_lookup");
    group.throughput(Throughput::Elements(1));
    for n in [10usize, 1_000, 10_000] {
        let router = Router::build(&routes(n));
        let last = (n - 1) / 3 * 3; // the last exact-template route
        let template = format!("/svc{last}/items/42");
        let prefix = format!("/svc{}/files/a/b/c.txt", (n - 1) / 3 * 3 + 2);
        let prefix = if n > 2 {
            prefix
        } else {
            "/svc2/files/x".into()
        };
        group.bench_with_input(BenchmarkId::new("template", n), &template, |b, p| {
            b.iter(|| router.lookup(Some("api.example.com"), &Method::GET, black_box(p)))
        });
        group.bench_with_input(BenchmarkId::new("prefix", n), &prefix, |b, p| {
            b.iter(|| router.lookup(Some("api.example.com"), &Method::GET, black_box(p)))
        });
        group.bench_with_input(
            BenchmarkId::new("miss", n),
            &"/nothing/here".to_string(),
            |b, p| b.iter(|| router.lookup(Some("api.example.com"), &Method::GET, black_box(p))),
        );
    }
    group.finish();
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
