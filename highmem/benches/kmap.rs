//! The pool's own cost on the host test machine, whose page table writes
//! PTE words in memory (no host mappings, no system calls): kmap + kunmap
//! of a page already mapped (a pool hit), kmap + kunmap of a page without
//! a slot (a miss: a new slot, its PTE write, and 1/1024 of a wrap's scan
//! and flush), and kmap_local_page + kunmap_local (PTE write, PTE clear,
//! one-page flush, CPU pin and unpin), the unmap by an explicit
//! `kunmap_local` as Linux code spells it (dropping the guard does the
//! same through drop glue the compiler keeps out of line: 14 instructions
//! more).
//!
//! The two-thread figures are `benches/kmap_threads.rs`: a second caller
//! of the same kmap functions in this executable changed the layout of
//! the loops here and doubled the kmap_local time (same instructions).
//!
//! `cargo bench -p kmm-highmem --bench kmap`
#![allow(missing_docs)] // criterion_group! makes undocumented functions

use criterion::{criterion_group, criterion_main, Criterion};
use kmm_api::Pfn;
use kmm_highmem::testing::TestMachine;
use std::hint::black_box;
use std::time::Duration;

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
            assert!(hm.kunmap_local(l).is_ok());
        })
    });
    hm.check().unwrap();
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2));
    targets = kmap
}
criterion_main!(benches);
