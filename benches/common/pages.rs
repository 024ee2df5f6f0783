//! The page workloads F1 and F2, kmm's contender in them and the
//! unlocked peer, shared by the bench (`benches/pages.rs`) and the
//! callgrind driver (`examples/pages_ir.rs`), so the instructions the
//! driver counts are those of the loops the bench times.

use buddy_system_allocator::FrameAllocator as BsaFrameAllocator;
use kmm::HostedMemoryManager;
use kmm_api::{Order, Pages as KmmPages, Pfn, GFP_KERNEL, GFP_NOWAIT, PAGE_SHIFT};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use std::hint::black_box;
use std::iter::Cycle;
use std::slice::Iter;

/// 2 GiB of 4 KiB frames: the machine every workload runs on.
pub const FRAMES: usize = 2 << 30 >> PAGE_SHIFT;
const F2_LIVE: usize = 65_536;
const F2_MAX_ORDER: u32 = 3;
const F2_STEPS: usize = 1 << 20;

/// What the workloads need of a page allocator. Generic, so each contender
/// is measured through static dispatch.
pub trait Pages {
    const NAME: &'static str;
    /// Any frame of `2^order` pages, or `None` when none is left.
    fn alloc(&mut self, order: u32) -> Option<usize>;
    fn free(&mut self, frame: usize, order: u32);
}

pub fn order(o: u32) -> Order {
    Order::new(o).expect("benchmark orders are small")
}

/// kmm's full page path: `alloc_pages` / `__free_pages` of the hosted
/// preset with one CPU.
pub struct Kmm(HostedMemoryManager);

impl Kmm {
    pub fn new() -> Kmm {
        Kmm(HostedMemoryManager::hosted(FRAMES << PAGE_SHIFT, 1).expect("hosted machine boots"))
    }
}

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

/// The peer at its default of 32 lists: with 11 (kmm's and Linux's orders
/// 0..=10) it loses memory when two free buddies of its top order meet.
pub type Bsa = BsaFrameAllocator<32>;

impl Pages for Bsa {
    const NAME: &'static str = "buddy_system_allocator";
    fn alloc(&mut self, o: u32) -> Option<usize> {
        BsaFrameAllocator::alloc(self, 1 << o)
    }
    fn free(&mut self, frame: usize, o: u32) {
        self.dealloc(frame, 1 << o);
    }
}

/// The peer over the same frames as kmm's machine.
pub fn bsa() -> Bsa {
    let mut alloc = Bsa::new();
    alloc.add_frame(0, FRAMES);
    alloc
}

pub fn seeded() -> SmallRng {
    SmallRng::seed_from_u64(0x6b6d_6d00)
}

/// F1: one order-0 alloc + free.
#[inline]
pub fn f1_pair<P: Pages>(pages: &mut P) {
    let frame = pages.alloc(0).expect("free frames");
    pages.free(black_box(frame), 0);
}

/// The F2 churn script: the initial orders, then for each step the slot
/// to replace and its new order. Drawn from a fixed seed.
pub struct Churn {
    initial: Vec<u32>,
    steps: Vec<(usize, u32)>,
}

impl Churn {
    pub fn new() -> Self {
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

/// F2 on one contender: the live blocks, filled from the script's initial
/// orders, and the script's steps, repeated once exhausted.
pub struct ChurnRun<'c, P: Pages> {
    pages: P,
    live: Vec<(usize, u32)>,
    steps: Cycle<Iter<'c, (usize, u32)>>,
}

impl<'c, P: Pages> ChurnRun<'c, P> {
    pub fn new(churn: &'c Churn, mut pages: P) -> Self {
        let live = churn
            .initial
            .iter()
            .map(|&o| (pages.alloc(o).expect("pre-fill fits"), o))
            .collect();
        ChurnRun {
            pages,
            live,
            steps: churn.steps.iter().cycle(),
        }
    }

    /// One F2 step: frees a slot's block, allocates the new order into it.
    #[inline]
    pub fn step(&mut self) {
        let &(slot, new) = self.steps.next().expect("cycle");
        let (frame, old) = self.live[slot];
        self.pages.free(frame, old);
        self.live[slot] = (self.pages.alloc(new).expect("churn fits"), new);
    }
}
