//! The pool and kmap_local at two threads, on a two-CPU test machine with
//! each thread on its own CPU and page: kmap + kunmap hits contending on
//! the pool lock, beside kmap_local pairs, which share nothing (each CPU
//! its own stack, slots and cache lines). The figure is the wall time
//! per operation of each thread. Apart from `benches/kmap.rs` so that
//! these callers leave the one-thread loops' code as it was.
//!
//! `cargo bench -p kmm-highmem --bench kmap_threads`
#![allow(missing_docs)] // criterion_group! makes undocumented functions

use criterion::{criterion_group, criterion_main, Criterion};
use kmm_api::Pages;
use kmm_highmem::testing::{set_cpu, TestHighmem, TestMachine};
use std::hint::black_box;
use std::sync::Barrier;
use std::time::{Duration, Instant};

/// Runs `op` `iters` times on each of two threads (thread `t` on CPU `t`
/// with page `t`), started together; the wall time until both finish.
fn two_threads(
    hm: &TestHighmem<'_>,
    pages: &mut [Pages],
    iters: u64,
    op: fn(&TestHighmem<'_>, &mut Pages),
) -> Duration {
    let start = Barrier::new(3);
    // `scope` returns once both threads are joined: the time runs from
    // the barrier that starts them to the later one's end.
    let t0 = std::thread::scope(|s| {
        for (cpu, page) in pages.iter_mut().enumerate() {
            let start = &start;
            s.spawn(move || {
                set_cpu(cpu);
                start.wait();
                for _ in 0..iters {
                    op(hm, page);
                }
            });
        }
        start.wait();
        Instant::now()
    });
    t0.elapsed()
}

fn kmap_two_threads(c: &mut Criterion) {
    let m = TestMachine::new(2, 4, 8);
    let hm = m.highmem();
    let mut pages = m.alloc_highmem_n(2);
    for page in &mut pages {
        drop(hm.kmap(page, 0).unwrap());
    }
    let mut g = c.benchmark_group("2 threads");
    g.bench_function("kmap+kunmap hit, one pool lock", |b| {
        b.iter_custom(|iters| {
            two_threads(&hm, &mut pages, iters, |hm, page| {
                black_box(hm.kmap(black_box(page), 0).unwrap().addr());
            })
        })
    });
    g.bench_function("kmap_local_page+kunmap_local, per CPU", |b| {
        b.iter_custom(|iters| {
            two_threads(&hm, &mut pages, iters, |hm, page| {
                black_box(hm.kmap_local_page(black_box(page), 0).unwrap().addr());
            })
        })
    });
    g.finish();
    let stats = hm.stats();
    assert_eq!(stats.hits, stats.maps - 2, "every timed kmap was a hit");
    hm.check().unwrap();
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2));
    targets = kmap_two_threads
}
criterion_main!(benches);
