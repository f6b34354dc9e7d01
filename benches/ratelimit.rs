//! Cost of one rate-limit check in the local store: uncontended (many keys, one thread) and
//! contended (two threads on one hot key).

use std::hint::black_box;
use std::sync::Arc;
use std::time::Instant;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use portcullis::ratelimit::local::LocalStore;

fn checks(c: &mut Criterion) {
    let mut group = c.benchmark_group("ratelimit_check");
    group.throughput(Throughput::Elements(1));

    let store = LocalStore::new(60_000, u32::MAX, 1_000_000);
    let keys: Vec<[u8; 5]> = (0..10_000u32)
        .map(|i| {
            let b = i.to_be_bytes();
            [b'i', b[0], b[1], b[2], b[3]]
        })
        .collect();
    let mut i = 0;
    group.bench_function("uncontended_10k_keys", |b| {
        b.iter(|| {
            i = (i + 1) % keys.len();
            black_box(store.check(&keys[i], 1_000))
        })
    });

    let hot = Arc::new(LocalStore::new(60_000, u32::MAX, 1_000));
    group.bench_function("one_hot_key_two_threads", |b| {
        b.iter_custom(|iters| {
            let start = Instant::now();
            let workers: Vec<_> = (0..2)
                .map(|_| {
                    let s = hot.clone();
                    std::thread::spawn(move || {
                        for _ in 0..iters / 2 {
                            black_box(s.check(b"hot", 1_000));
                        }
                    })
                })
                .collect();
            for w in workers {
                w.join().unwrap();
            }
            start.elapsed()
        })
    });
    group.finish();
}

criterion_group!(benches, checks);
criterion_main!(benches);
