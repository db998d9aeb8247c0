//! Benchmark of the route lookup every request makes, among 10, 100 and 1000
//! routes: the segment trie should keep the cost nearly flat, not linear in the
//! table size. `router_lookup` has no `match` conditions (its numbers compare
//! with earlier runs); `router_lookup_match` gives every `{param}` route a twin
//! with header and query conditions. (Key lookups: `benches/auth.rs`.)
//!
//! Run: `cargo bench --bench router` (add `-- --warm-up-time 1 --measurement-time 2`
//! for a quick pass).

use criterion::{black_box, criterion_group, criterion_main, BenchmarkId, Criterion};
use http::{HeaderMap, HeaderName, HeaderValue, Method};
use portcullis::core::route_match::{Conditions, Want};
use portcullis::core::router::{Lookup, Pattern, Request, RouteSpec, Router};

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
        conditions: Conditions::default(),
    }
}

/// The `match` a canary twin of a route carries: a header and a query flag.
fn canary() -> Conditions {
    Conditions {
        headers: vec![(HeaderName::from_static("x-api-version"), Want::of("2"))],
        query: vec![("beta".to_string(), Want::of("*"))],
    }
}

/// A realistic client head: a few headers, none of them the canary's.
fn client_headers() -> HeaderMap {
    let mut h = HeaderMap::new();
    for (k, v) in [
        ("accept", "application/json"),
        ("user-agent", "bench/1.0"),
        ("x-api-key", "k-0123456789"),
        ("accept-encoding", "gzip"),
    ] {
        h.insert(HeaderName::from_static(k), HeaderValue::from_static(v));
    }
    h
}

/// A request as admission builds it, once per request: the lookup is timed,
/// not the building of its argument (black-boxed, so nothing is folded away).
fn request<'a>(path: &'a str, query: Option<&'a str>, headers: &'a HeaderMap) -> Request<'a> {
    Request {
        method: &Method::GET,
        path,
        host: Some("api.example.com"),
        query,
        headers,
    }
}

fn lookup(router: &Router, path: &str, query: Option<&str>, headers: &HeaderMap) -> Lookup {
    router.lookup(&request(path, query, headers))
}

fn router_lookup(c: &mut Criterion) {
    let mut group = c.benchmark_group("router_lookup");
    let headers = client_headers();
    for n in ROUTE_COUNTS {
        let router = Router::new((0..n).map(route).collect());
        // The last `{param}` route: defined deep in the table, matched through a
        // literal prefix and a parameter segment, with a method check.
        let deep = (0..n).rev().find(|i| i % 4 == 1).expect("n >= 2");
        let hit = format!("/svc{deep}/v1/items/42");
        let miss = "/nowhere/v1/items/42";
        assert_eq!(lookup(&router, &hit, None, &headers), Lookup::Found(deep));
        assert_eq!(lookup(&router, miss, None, &headers), Lookup::NotFound);

        let hit = request(&hit, None, &headers);
        group.bench_with_input(BenchmarkId::new("hit", n), &hit, |b, req| {
            b.iter(|| router.lookup(black_box(req)))
        });
        let miss = request(miss, None, &headers);
        group.bench_with_input(BenchmarkId::new("miss", n), &miss, |b, req| {
            b.iter(|| router.lookup(black_box(req)))
        });
    }
    group.finish();
}

fn router_lookup_match(c: &mut Criterion) {
    let mut group = c.benchmark_group("router_lookup_match");
    let plain = client_headers();
    let mut canary_headers = client_headers();
    canary_headers.insert("x-api-version", HeaderValue::from_static("2"));
    let query = Some("page=2&beta");
    for n in ROUTE_COUNTS {
        // `n` routes: the table above, with a canary twin after each `{param}`
        // route (about n/4 of them carry conditions).
        let mut specs = Vec::with_capacity(n);
        // The last `{param}` route with a twin: (its number, its index, the twin's).
        let mut deep = None;
        for i in 0.. {
            if specs.len() + 2 > n {
                break;
            }
            specs.push(route(i));
            if i % 4 == 1 {
                deep = Some((i, specs.len() - 1, specs.len()));
                specs.push(RouteSpec {
                    conditions: canary(),
                    ..route(i)
                });
            }
        }
        let (i, plain_index, twin_index) = deep.expect("n >= 4");
        let router = Router::new(specs);
        let path = format!("/svc{i}/v1/items/42");
        // Conditions hold: the twin wins; they fail: checked, then the plain route.
        assert_eq!(
            lookup(&router, &path, query, &canary_headers),
            Lookup::Found(twin_index)
        );
        assert_eq!(
            lookup(&router, &path, query, &plain),
            Lookup::Found(plain_index)
        );

        let hold = request(&path, query, &canary_headers);
        group.bench_with_input(BenchmarkId::new("conditions_hold", n), &hold, |b, req| {
            b.iter(|| router.lookup(black_box(req)))
        });
        let fail = request(&path, query, &plain);
        group.bench_with_input(BenchmarkId::new("conditions_fail", n), &fail, |b, req| {
            b.iter(|| router.lookup(black_box(req)))
        });
    }
    group.finish();
}

criterion_group!(benches, router_lookup, router_lookup_match);
criterion_main!(benches);
