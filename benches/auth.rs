//! Benchmark of the API-key lookup every authenticated request makes, among 10
//! and 10,000 consumers: one SHA-256 of the presented key and one hash-map probe,
//! so the cost should not grow with the number of consumers.
//!
//! Run: `cargo bench --bench auth` (add `-- --warm-up-time 1 --measurement-time 2`
//! for a quick pass).

use criterion::{black_box, criterion_group, criterion_main, BenchmarkId, Criterion};
use portcullis::core::auth::{hash_key, KeyStore};

const CONSUMER_COUNTS: [usize; 2] = [10, 10_000];

fn keystore_find(c: &mut Criterion) {
    let mut group = c.benchmark_group("keystore_find");
    for n in CONSUMER_COUNTS {
        let key = |i: usize| format!("pk_live_{i:08}_0123456789abcdef0123456789abcdef");
        let mut store = KeyStore::default();
        for i in 0..n {
            let id = store.add_consumer(&format!("consumer-{i}"));
            store
                .add_key(id, hash_key(key(i).as_bytes()))
                .expect("unique keys");
        }
        let present = key(n - 1);
        let absent = "pk_live_notakey_0123456789abcdef0123456789abcdef".to_string();
        assert_eq!(store.find(present.as_bytes()), Some(n - 1));
        assert_eq!(store.find(absent.as_bytes()), None);

        group.bench_with_input(BenchmarkId::new("present", n), &present, |b, k| {
            b.iter(|| store.find(black_box(k.as_bytes())))
        });
        group.bench_with_input(BenchmarkId::new("absent", n), &absent, |b, k| {
            b.iter(|| store.find(black_box(k.as_bytes())))
        });
    }
    group.finish();
}

criterion_group!(benches, keystore_find);
criterion_main!(benches);
