//! The pool's own cost on the host test machine, whose page table writes
//! PTE words in memory (no host mappings, no system calls): kmap + kunmap
//! of a page already mapped (a pool hit), kmap + kunmap of a page without
//! a slot (a miss: a new slot, its PTE write, and 1/1024 of a wrap's scan
//! and flush), and kmap_local_page + kunmap_local (PTE write, PTE clear,
//! one-page flush, CPU pin and unpin).
//!
//! At two threads (a two-CPU test machine, each thread on its own CPU and
//! page): kmap + kunmap hits contending on the pool lock, beside
//! kmap_local pairs, which share nothing (each CPU its own stack and
//! slots). The figure is the wall time per operation of each thread.
//!
//! `cargo bench -p kmm-highmem --bench kmap`
#![allow(missing_docs)] // criterion_group! makes undocumented functions

use criterion::{criterion_group, criterion_main, Criterion};
use kmm_api::Pages;
use kmm_api::Pfn;
use kmm_highmem::testing::{set_cpu, TestHighmem, TestMachine};
use std::hint::black_box;
use std::sync::Barrier;
use std::time::{Duration, Instant};

fn kmap(c: &mut Criterion) {
    let m = TestMachine::uniprocessor(4, 8);
    let hm = m.highmem();
    let mut page = m.alloc_highmem();
    // Mapped once: every kmap below finds its slot (count 1 -> 2 -> 1).
    drop(hm.kmap(&mut page, 0).unwrap());
    c.bench_function("kmap+kunmap hit", |b| {
        b.iter(|| {
            let k = hm.kmap(black_box(&mut page), 0).unwrap();
            black_box(k.addr());
        })
    });
    assert_eq!(hm.stats().hits, hm.stats().maps - 1);

    let base = m.first_highmem().as_usize() + 1_000_000;
    let mut i = 0usize;
    c.bench_function("kmap+kunmap miss", |b| {
        b.iter(|| {
            // 100,000 distinct frames: each comes back long after its
            // slot was flushed, so every kmap takes a new slot.
            let pfn = Pfn::new(base + i % 100_000);
            i += 1;
            // SAFETY: the test page table only records these frames;
            // nothing reaches their bytes. One kmap, one kunmap.
            unsafe {
                black_box(hm.kmap_pfn(pfn).unwrap());
                hm.kunmap_pfn(pfn).unwrap();
            }
        })
    });

    c.bench_function("kmap_local_page+kunmap_local", |b| {
        b.iter(|| {
            let l = hm.kmap_local_page(black_box(&mut page), 0).unwrap();
            black_box(l.addr());
        })
    });
    hm.check().unwrap();
}

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
    targets = kmap, kmap_two_threads
}
criterion_main!(benches);
