//! The page allocator's hot paths on a host-memory test machine:
//! order-0 `alloc_pages` + `__free_pages` pairs (the per-CPU fast path),
//! the same at order 3, and order-4 pairs straight through the zone lock.

#![allow(missing_docs)] // criterion's macros generate undocumented items

use criterion::{criterion_group, criterion_main, Criterion};
use kmm_api::{Order, GFP_HIGHUSER, GFP_KERNEL};
use kmm_zones::testing::TestMachine;
use std::hint::black_box;

/// 512 MiB: a NORMAL zone large enough for Linux's full batch (63).
const FRAMES: usize = 1 << 17;

fn pairs(c: &mut Criterion) {
    let mut machine = TestMachine::i386_scaled(FRAMES);
    let zones = machine.boot().expect("boot");
    let mut group = c.benchmark_group("alloc_free_pair");
    for (name, gfp, order) in [
        ("order0_kernel", GFP_KERNEL, 0),
        ("order0_highuser", GFP_HIGHUSER, 0),
        ("order3_kernel", GFP_KERNEL, 3),
        ("order4_kernel_zone_lock", GFP_KERNEL, 4),
    ] {
        let order = Order::new(order).expect("order");
        group.bench_function(name, |b| {
            b.iter(|| {
                let pages = zones.alloc_pages(black_box(gfp), order).expect("alloc");
                zones.__free_pages(black_box(pages)).expect("free");
            })
        });
    }
    group.finish();
}

criterion_group!(benches, pairs);
criterion_main!(benches);
