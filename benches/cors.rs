//! Benchmark of what CORS costs a request on a route with `cors`: judging a
//! preflight, and stamping an answer (the upstream's `access-control-*` out,
//! ours in, `vary` merged) for an allowed origin and for a request without
//! one. A route without `cors` pays nothing of this (one `Option` check).
//!
//! Run: `cargo bench --bench cors` (add `-- --warm-up-time 1 --measurement-time 2`
//! for a quick pass).

use criterion::{black_box, criterion_group, criterion_main, Criterion};
use http::{HeaderName, HeaderValue, Method};
use pingora_http::ResponseHeader;
use portcullis::core::cors::{Policy, Spec};

fn policy() -> Policy {
    Policy::new(&Spec {
        origins: vec![
            "https://app.example.com".into(),
            "https://admin.example.com".into(),
            "http://127.0.0.1:3000".into(),
        ],
        methods: Some(vec![Method::GET, Method::POST]),
        headers: vec![
            HeaderName::from_static("x-api-key"),
            HeaderName::from_static("authorization"),
            HeaderName::from_static("content-type"),
        ],
        expose_headers: vec![
            HeaderName::from_static("x-request-id"),
            HeaderName::from_static("ratelimit-remaining"),
        ],
        credentials: false,
        max_age_secs: Some(600),
    })
}

/// An upstream's answer as `response_filter` sees it.
fn answer() -> ResponseHeader {
    let mut resp = ResponseHeader::build(200, Some(8)).expect("a head");
    for (name, value) in [
        ("content-type", "application/json"),
        ("content-length", "42"),
        ("vary", "accept-encoding"),
        ("x-request-id", "0123456789abcdef0123456789abcdef"),
    ] {
        resp.insert_header(name, value).expect("a header");
    }
    resp
}

fn cors(c: &mut Criterion) {
    let policy = policy();
    let origin = HeaderValue::from_static("http://127.0.0.1:3000");
    let asked = HeaderValue::from_static("x-api-key, content-type");
    let mut group = c.benchmark_group("cors");
    group.bench_function("preflight_allowed", |b| {
        b.iter(|| policy.preflight(black_box(&origin), &Method::POST, Some(black_box(&asked))))
    });
    group.bench_function("stamp_allowed_origin", |b| {
        b.iter_batched_ref(
            answer,
            |resp| policy.stamp(resp, Some(black_box(&origin))),
            criterion::BatchSize::SmallInput,
        )
    });
    group.bench_function("stamp_no_origin", |b| {
        b.iter_batched_ref(
            answer,
            |resp| policy.stamp(resp, None),
            criterion::BatchSize::SmallInput,
        )
    });
    group.finish();
}

criterion_group!(benches, cors);
criterion_main!(benches);
