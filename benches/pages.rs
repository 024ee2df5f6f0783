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

use buddy_system_allocator::{
    FrameAllocator as BsaFrameAllocator, LockedFrameAllocator as BsaLockedFrameAllocator,
};
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use kmm::HostedMemoryManager;
use kmm_api::{Order, Pages as KmmPages, Pfn, GFP_KERNEL, GFP_NOWAIT, MAX_PAGE_ORDER, PAGE_SHIFT};
use kmm_buddy::{Buddy, BuddyFrame};
use rand::rngs::SmallRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use std::hint::black_box;

/// 2 GiB of 4 KiB frames: the machine every workload runs on.
const FRAMES: usize = 2 << 30 >> PAGE_SHIFT;
const F2_LIVE: usize = 65_536;
const F2_MAX_ORDER: u32 = 3;
const F2_STEPS: usize = 1 << 20;

/// The peer at its default of 32 lists: with 11 (kmm's and Linux's orders
/// 0..=10) it loses memory when two free buddies of its top order meet.
type Bsa = BsaFrameAllocator<32>;
type BsaLocked = BsaLockedFrameAllocator<32>;

/// What the workloads need of a page allocator. Generic, so each contender
/// is measured through static dispatch.
trait Pages {
    const NAME: &'static str;
    /// Any frame of `2^order` pages, or `None` when none is left.
    fn alloc(&mut self, order: u32) -> Option<usize>;
    fn free(&mut self, frame: usize, order: u32);
}

fn order(o: u32) -> Order {
    Order::new(o).expect("benchmark orders are small")
}

struct Kmm(HostedMemoryManager);

impl Pages for Kmm {
    const NAME: &'static str = "kmm";
    fn alloc(&mut self, o: u32) -> Option<usize> {
        // GFP_NOWAIT so that F3's fill ends at the watermark instead of
        // entering reclaim; below the watermark both flags take the same path.
        let gfp = if o == 0 { GFP_NOWAIT } else { GFP_KERNEL };
        // The workloads keep frames as numbers, as they do for every
        // contender: the handle is given up here and rebuilt in `free`.
        self.0
            .zones()
            .alloc_pages(gfp, order(o))
            .ok()
            .map(|pages| pages.into_raw().0.as_usize())
    }
    fn free(&mut self, frame: usize, o: u32) {
        let zones = self.0.zones();
        // SAFETY: the workloads free only a frame `alloc` handed them with
        // the same order, once, and never use it afterwards: the block is
        // held by the caller and handed to the handle rebuilt here, the
        // one `alloc` gave up (the same `__free_pages` path as a kept
        // handle).
        let pages = unsafe { KmmPages::from_raw(Pfn::new(frame), order(o), zones.allocator_id()) };
        zones.__free_pages(pages).expect("valid free");
    }
}

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

impl Pages for Bsa {
    const NAME: &'static str = "buddy_system_allocator";
    fn alloc(&mut self, o: u32) -> Option<usize> {
        BsaFrameAllocator::alloc(self, 1 << o)
    }
    fn free(&mut self, frame: usize, o: u32) {
        self.dealloc(frame, 1 << o);
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

fn kmm() -> Kmm {
    Kmm(HostedMemoryManager::hosted(FRAMES << PAGE_SHIFT, 1).expect("hosted machine boots"))
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

fn bsa() -> Bsa {
    let mut alloc = Bsa::new();
    alloc.add_frame(0, FRAMES);
    alloc
}

fn bsa_locked() -> BsaLocked {
    let alloc = BsaLocked::new();
    alloc.lock().add_frame(0, FRAMES);
    alloc
}

fn seeded() -> SmallRng {
    SmallRng::seed_from_u64(0x6b6d_6d00)
}

fn f1<P: Pages>(c: &mut Criterion, mut pages: P) {
    c.benchmark_group("F1_order0_pair")
        .bench_function(BenchmarkId::from_parameter(P::NAME), |b| {
            b.iter(|| {
                let frame = pages.alloc(0).expect("free frames");
                pages.free(black_box(frame), 0);
            })
        });
}

/// The churn script: the initial orders, then for each step the slot to
/// replace and its new order.
struct Churn {
    initial: Vec<u32>,
    steps: Vec<(usize, u32)>,
}

impl Churn {
    fn new() -> Self {
        let mut rng = seeded();
        let initial = (0..F2_LIVE)
            .map(|_| rng.gen_range(0..=F2_MAX_ORDER))
            .collect();
        let steps = (0..F2_STEPS)
            .map(|_| (rng.gen_range(0..F2_LIVE), rng.gen_range(0..=F2_MAX_ORDER)))
            .collect();
        Churn { initial, steps }
    }
}

fn f2<P: Pages>(c: &mut Criterion, churn: &Churn, mut pages: P) {
    let mut live: Vec<(usize, u32)> = churn
        .initial
        .iter()
        .map(|&o| (pages.alloc(o).expect("pre-fill fits"), o))
        .collect();
    let mut step = churn.steps.iter().cycle();
    c.benchmark_group("F2_churn_64k")
        .bench_function(BenchmarkId::from_parameter(P::NAME), |b| {
            b.iter(|| {
                let &(slot, new) = step.next().expect("cycle");
                let (frame, old) = live[slot];
                pages.free(frame, old);
                live[slot] = (pages.alloc(new).expect("churn fits"), new);
            })
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
    f1(c, kmm());
    f1(c, kmm_buddy());
    f1(c, bsa());
    f1(c, bsa_locked());

    let churn = Churn::new();
    f2(c, &churn, kmm());
    f2(c, &churn, kmm_buddy());
    f2(c, &churn, bsa());
    f2(c, &churn, bsa_locked());

    f3(c, kmm());
    f3(c, kmm_buddy());
    f3(c, bsa());
    f3(c, bsa_locked());
}

criterion_group!(benches, page_allocators);
criterion_main!(benches);
