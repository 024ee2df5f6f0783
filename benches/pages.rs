//! Page allocation, F1–F3 from the foundation issue, in one run, beside
//! `buddy_system_allocator::FrameAllocator` (free lists as `BTreeSet`s):
//!
//! - `kmm`: `alloc_pages` / `__free_pages` on the hosted 64-bit preset — the
//!   full path a kernel calls: GFP → zonelist → watermark check → per-CPU
//!   page list (orders 0..=3) → the zone's buddy, with every invalid-free
//!   check on;
//! - `kmm-buddy`: the bare buddy of one zone, no policy, for reference;
//! - `buddy_system_allocator`: the peer, as `&mut` single-threaded code;
//! - `buddy_system_allocator+lock`: the peer as a kernel must share it
//!   between CPUs (`LockedFrameAllocator`, a spin lock around it), which is
//!   the like-for-like comparison with kmm's `&self`, `Sync` allocator.
//!
//! Workloads:
//! - F1: one order-0 alloc + free per iteration;
//! - F2: 65,536 live blocks of random order 0..=3; each iteration frees one
//!   and allocates a new random order into its slot;
//! - F3: every frame of a 2 GiB machine allocated one by one, freed in
//!   shuffled order, then one order-10 block allocated (it must succeed).
//!
//! Random choices come from a fixed seed and are drawn before timing.

// `criterion_group!` defines an undocumented public function.
#![allow(missing_docs)]

#[path = "common/pages.rs"]
mod common;

use buddy_system_allocator::LockedFrameAllocator as BsaLockedFrameAllocator;
use common::{bsa, f1_pair, order, seeded, Churn, ChurnRun, Kmm, Pages, FRAMES};
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use kmm_api::{Pfn, MAX_PAGE_ORDER};
use kmm_buddy::{Buddy, BuddyFrame};
use rand::seq::SliceRandom;

/// The peer behind its lock, with the unlocked one's 32 lists.
type BsaLocked = BsaLockedFrameAllocator<32>;

struct KmmBuddy(Buddy<&'static mut [BuddyFrame]>);

impl Pages for KmmBuddy {
    const NAME: &'static str = "kmm-buddy";
    fn alloc(&mut self, o: u32) -> Option<usize> {
        self.0.alloc(order(o)).ok().map(Pfn::as_usize)
    }
    fn free(&mut self, frame: usize, o: u32) {
        self.0.free(Pfn::new(frame), order(o)).expect("valid free");
    }
}

impl Pages for BsaLocked {
    const NAME: &'static str = "buddy_system_allocator+lock";
    fn alloc(&mut self, o: u32) -> Option<usize> {
        self.lock().alloc(1 << o)
    }
    fn free(&mut self, frame: usize, o: u32) {
        self.lock().dealloc(frame, 1 << o);
    }
}

fn kmm_buddy() -> KmmBuddy {
    // Leaked: one 6 MiB table per benchmark process.
    let storage = Vec::leak(vec![BuddyFrame::EMPTY; FRAMES]);
    let mut buddy = Buddy::new(storage, Pfn::new(0), FRAMES, MAX_PAGE_ORDER).expect("buddy");
    buddy
        .release_range(Pfn::new(0), Pfn::new(FRAMES))
        .expect("release");
    KmmBuddy(buddy)
}

fn bsa_locked() -> BsaLocked {
    let alloc = BsaLocked::new();
    alloc.lock().add_frame(0, FRAMES);
    alloc
}

fn f1<P: Pages>(c: &mut Criterion, mut pages: P) {
    c.benchmark_group("F1_order0_pair")
        .bench_function(BenchmarkId::from_parameter(P::NAME), |b| {
            b.iter(|| f1_pair(&mut pages))
        });
}

fn f2<P: Pages>(c: &mut Criterion, churn: &Churn, pages: P) {
    let mut run = ChurnRun::new(churn, pages);
    c.benchmark_group("F2_churn_64k")
        .bench_function(BenchmarkId::from_parameter(P::NAME), |b| {
            b.iter(|| run.step())
        });
}

fn f3<P: Pages>(c: &mut Criterion, mut pages: P) {
    let mut taken = Vec::with_capacity(FRAMES);
    let mut permutation = Vec::with_capacity(FRAMES);
    let mut group = c.benchmark_group("F3_fill_shuffle_free_2GiB");
    group.sample_size(10);
    group.bench_function(BenchmarkId::from_parameter(P::NAME), |b| {
        b.iter(|| {
            taken.clear();
            while let Some(frame) = pages.alloc(0) {
                taken.push(frame);
            }
            if permutation.len() != taken.len() {
                permutation = (0..taken.len()).collect();
                permutation.shuffle(&mut seeded());
            }
            for &i in &permutation {
                pages.free(taken[i], 0);
            }
            let block = pages
                .alloc(MAX_PAGE_ORDER.as_u32())
                .expect("every frame merged back into order-10 blocks");
            pages.free(block, MAX_PAGE_ORDER.as_u32());
        })
    });
    group.finish();
    println!(
        "F3 {}: {} of {} frames handed out before the first failure",
        P::NAME,
        taken.len(),
        FRAMES
    );
}

fn page_allocators(c: &mut Criterion) {
    f1(c, Kmm::new());
    f1(c, kmm_buddy());
    f1(c, bsa());
    f1(c, bsa_locked());

    let churn = Churn::new();
    f2(c, &churn, Kmm::new());
    f2(c, &churn, kmm_buddy());
    f2(c, &churn, bsa());
    f2(c, &churn, bsa_locked());

    f3(c, Kmm::new());
    f3(c, kmm_buddy());
    f3(c, bsa());
    f3(c, bsa_locked());
}

criterion_group!(benches, page_allocators);
criterion_main!(benches);
