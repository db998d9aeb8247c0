//! Benchmark of the route lookup every request makes, among 10, 100 and 1000
//! routes: the segment trie should keep the cost nearly flat, not linear in the
//! table size. (Key lookups: `benches/auth.rs`.)
//!
//! Run: `cargo bench --bench router` (add `-- --warm-up-time 1 --measurement-time 2`
//! for a quick pass).

use criterion::{black_box, criterion_group, criterion_main, BenchmarkId, Criterion};
use http::Method;
use portcullis::core::router::{Lookup, Pattern, RouteSpec, Router};

const ROUTE_COUNTS: [usize; 3] = [10, 100, 1000];

/// Route `i` of a realistic table: a rotation of prefix routes, `{param}` routes
/// with methods, exact routes and host-bound routes, each under its own service.
fn route(i: usize) -> RouteSpec {
    let (path, exact, methods, host) = match i % 4 {
        0 => (format!("/svc{i}/v1/items"), false, None, None),
        1 => (
            format!("/svc{i}/v1/items/{{id}}"),
            false,
            Some(vec![Method::GET, Method::PUT]),
            None,
        ),
        2 => (format!("/svc{i}/status"), true, None, None),
        _ => (
            format!("/svc{i}/v2/orders"),
            false,
            Some(vec![Method::GET, Method::POST]),
            Some("api.example.com".to_string()),
        ),
    };
    RouteSpec {
        pattern: Pattern::parse(&path).expect("benchmark route paths are valid"),
        exact,
        methods,
        host,
    }
}

fn router_lookup(c: &mut Criterion) {
    let mut group = c.benchmark_group("router_lookup");
    for n in ROUTE_COUNTS {
        let router = Router::new((0..n).map(route).collect());
        // The last `{param}` route: defined deep in the table, matched through a
        // literal prefix and a parameter segment, with a method check.
        let deep = (0..n).rev().find(|i| i % 4 == 1).expect("n >= 2");
        let hit = format!("/svc{deep}/v1/items/42");
        let miss = "/nowhere/v1/items/42";
        let host = Some("api.example.com");
        assert_eq!(router.lookup(&Method::GET, &hit, host), Lookup::Found(deep));
        assert_eq!(router.lookup(&Method::GET, miss, host), Lookup::NotFound);

        group.bench_with_input(BenchmarkId::new("hit", n), &hit, |b, path| {
            b.iter(|| router.lookup(black_box(&Method::GET), black_box(path), black_box(host)))
        });
        group.bench_with_input(BenchmarkId::new("miss", n), &miss, |b, path| {
            b.iter(|| router.lookup(black_box(&Method::GET), black_box(path), black_box(host)))
        });
    }
    group.finish();
}

criterion_group!(benches, router_lookup);
criterion_main!(benches);
