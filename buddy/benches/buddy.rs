//! kmm-buddy beside `buddy_system_allocator::FrameAllocator` (free lists as
//! `BTreeSet`s) on the same workloads:
//!
//! - F1: one order-0 alloc + free per iteration;
//! - F2: 65,536 live blocks of random order 0..=3; each iteration frees one
//!   and allocates a new random order in its slot;
//! - F3: 2 GiB of frames allocated one by one, freed in shuffled order, then
//!   one order-10 block allocated (which must succeed: all merged back).
//!
//! Random choices come from a fixed seed and are drawn before timing.

// `criterion_group!` defines an undocumented public function.
#![allow(missing_docs)]

use buddy_system_allocator::FrameAllocator as BsaFrameAllocator;
use criterion::{criterion_group, criterion_main, Criterion};
use kmm_api::{Order, Pfn, MAX_PAGE_ORDER};
use kmm_buddy::{Buddy, BuddyFrame};
use rand::rngs::SmallRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use std::hint::black_box;

/// The other allocator at its default of 32 lists. With 11 (blocks up to
/// 1024 pages, kmm's and Linux's default) it loses memory: when two free
/// buddies of its top order meet, the merged block goes on no list. kmm-buddy
/// runs with orders `0..=10`.
type Bsa = BsaFrameAllocator<32>;

const F2_LIVE: usize = 65_536;
const F2_MAX_ORDER: u32 = 3;
/// 4 GiB of frames: room for 64k blocks of up to 8 pages.
const F2_FRAMES: usize = 1 << 20;
/// 2 GiB of 4 KiB frames.
const F3_FRAMES: usize = 2 << 30 >> kmm_api::PAGE_SHIFT;

fn seeded() -> SmallRng {
    SmallRng::seed_from_u64(0x6b6d_6d00)
}

/// A kmm buddy over `[0, frames)`, everything released.
fn kmm(storage: &mut [BuddyFrame]) -> Buddy<&mut [BuddyFrame]> {
    let frames = storage.len();
    let mut buddy = Buddy::new(storage, Pfn::new(0), frames, MAX_PAGE_ORDER).expect("buddy");
    buddy
        .release_range(Pfn::new(0), Pfn::new(frames))
        .expect("release");
    buddy
}

fn bsa(frames: usize) -> Bsa {
    let mut alloc = Bsa::new();
    alloc.add_frame(0, frames);
    alloc
}

fn order(o: u32) -> Order {
    Order::new(o).expect("bench orders are small")
}

fn f1_order0_pair(c: &mut Criterion) {
    let mut group = c.benchmark_group("F1_order0_pair");
    let mut storage = vec![BuddyFrame::EMPTY; 1 << 16];
    let mut buddy = kmm(&mut storage);
    group.bench_function("kmm-buddy", |b| {
        b.iter(|| {
            let pfn = buddy.alloc(Order::ZERO).expect("free frames");
            buddy.free(black_box(pfn), Order::ZERO).expect("valid free");
        })
    });
    let mut other = bsa(1 << 16);
    group.bench_function("buddy_system_allocator", |b| {
        b.iter(|| {
            let frame = other.alloc(1).expect("free frames");
            other.dealloc(black_box(frame), 1);
        })
    });
    group.finish();
}

/// The churn script: for each step, the slot to replace and its new order.
fn f2_script() -> (Vec<u32>, Vec<(usize, u32)>) {
    let mut rng = seeded();
    let initial = (0..F2_LIVE)
        .map(|_| rng.gen_range(0..=F2_MAX_ORDER))
        .collect();
    let steps = (0..1 << 20)
        .map(|_| (rng.gen_range(0..F2_LIVE), rng.gen_range(0..=F2_MAX_ORDER)))
        .collect();
    (initial, steps)
}

fn f2_churn_64k(c: &mut Criterion) {
    let mut group = c.benchmark_group("F2_churn_64k");
    let (initial, steps) = f2_script();

    let mut storage = vec![BuddyFrame::EMPTY; F2_FRAMES];
    let mut buddy = kmm(&mut storage);
    let mut live: Vec<(Pfn, Order)> = initial
        .iter()
        .map(|&o| (buddy.alloc(order(o)).expect("pre-fill fits"), order(o)))
        .collect();
    let mut step = steps.iter().cycle();
    group.bench_function("kmm-buddy", |b| {
        b.iter(|| {
            let &(slot, new) = step.next().expect("cycle");
            let (pfn, old) = live[slot];
            buddy.free(pfn, old).expect("valid free");
            let new = order(new);
            live[slot] = (buddy.alloc(new).expect("churn fits"), new);
        })
    });

    let mut other = bsa(F2_FRAMES);
    let mut live: Vec<(usize, usize)> = initial
        .iter()
        .map(|&o| (other.alloc(1 << o).expect("pre-fill fits"), 1 << o))
        .collect();
    let mut step = steps.iter().cycle();
    group.bench_function("buddy_system_allocator", |b| {
        b.iter(|| {
            let &(slot, new) = step.next().expect("cycle");
            let (frame, count) = live[slot];
            other.dealloc(frame, count);
            live[slot] = (other.alloc(1 << new).expect("churn fits"), 1 << new);
        })
    });
    group.finish();
}

fn f3_fill_shuffle_free_2gib(c: &mut Criterion) {
    let mut group = c.benchmark_group("F3_fill_shuffle_free_2GiB");
    group.sample_size(10);
    let mut permutation: Vec<usize> = (0..F3_FRAMES).collect();
    permutation.shuffle(&mut seeded());

    let mut storage = vec![BuddyFrame::EMPTY; F3_FRAMES];
    let mut buddy = kmm(&mut storage);
    let mut taken = Vec::with_capacity(F3_FRAMES);
    group.bench_function("kmm-buddy", |b| {
        b.iter(|| {
            taken.clear();
            while let Ok(pfn) = buddy.alloc(Order::ZERO) {
                taken.push(pfn);
            }
            for &i in &permutation {
                buddy.free(taken[i], Order::ZERO).expect("valid free");
            }
            let block = buddy.alloc(MAX_PAGE_ORDER).expect("all frames merged back");
            buddy.free(block, MAX_PAGE_ORDER).expect("valid free");
        })
    });
    assert_eq!(buddy.free_pages(), F3_FRAMES);
    assert_eq!(
        buddy.nr_free(MAX_PAGE_ORDER),
        F3_FRAMES >> MAX_PAGE_ORDER.as_u32()
    );

    let mut other = bsa(F3_FRAMES);
    let mut taken = Vec::with_capacity(F3_FRAMES);
    group.bench_function("buddy_system_allocator", |b| {
        b.iter(|| {
            taken.clear();
            while let Some(frame) = other.alloc(1) {
                taken.push(frame);
            }
            for &i in &permutation {
                other.dealloc(taken[i], 1);
            }
            let block = other
                .alloc(MAX_PAGE_ORDER.pages())
                .expect("all frames merged back");
            other.dealloc(block, MAX_PAGE_ORDER.pages());
        })
    });
    group.finish();
}

criterion_group!(
    benches,
    f1_order0_pair,
    f2_churn_64k,
    f3_fill_shuffle_free_2gib
);
criterion_main!(benches);
