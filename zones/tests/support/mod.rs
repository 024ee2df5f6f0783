//! The zones reference model shared by `tests/model.rs` (proptest) and the
//! `zones` fuzz target: operations with arbitrary GFP flags, valid and
//! invalid frees, splits, drains and migrations, each checked against a
//! model of the held blocks, and every refusal must have left all state
//! unchanged. [`run`] runs the allocator's invariant checker and compares
//! every descriptor around each refusal after every step; the fuzz target,
//! which needs speed to go deep, uses [`run_checking_every`] to do those
//! O(frames) checks every N steps and at the end, and the cheap ones (the
//! model's bookkeeping, and that a refusal left every zone counter and the
//! descriptors around the frame it named unchanged) after every step.
//! Each run boots fresh zones over this thread's machine, whose RAM and
//! metadata buffer are allocated once, and ends by freeing everything and
//! requiring every descriptor and counter back as at boot.
//! Also home of [`free_raw`], the one free by raw frame the tests make
//! (`tests/rules.rs` uses it too).

#![allow(dead_code)] // each user takes the parts it needs

/// `ensure!(cond, fmt...)`: fail the step with a message.
macro_rules! ensure {
    ($cond:expr $(,)?) => {
        if !$cond {
            return Err(format!("{} failed at {}:{}", stringify!($cond), file!(), line!()));
        }
    };
    ($cond:expr, $($msg:tt)+) => {
        if !$cond {
            return Err(format!($($msg)+));
        }
    };
}

/// `ensure_eq!(left, right)`.
macro_rules! ensure_eq {
    ($left:expr, $right:expr $(,)?) => {{
        let (left, right) = (&$left, &$right);
        if left != right {
            return Err(format!("{left:?} != {right:?} at {}:{}", file!(), line!()));
        }
    }};
    ($left:expr, $right:expr, $($msg:tt)+) => {{
        let (left, right) = (&$left, &$right);
        if left != right {
            return Err(format!("{left:?} != {right:?}: {}", format!($($msg)+)));
        }
    }};
}

use kmm_api::{Error, FrameAllocator, GfpFlags, Order, Pages, Pfn};
use kmm_buddy::FrameTag;
use kmm_zones::report::ZoneStats;
use kmm_zones::testing::{set_cpu, TestMachine, TestZones};
use kmm_zones::{gfp_zone, ZoneType, MAX_NR_ZONES};
use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet};
use std::ops::Range;

/// Frees the block of `order` at `pfn` by raw frame, as `unsafe` callers
/// of `Zones::__free_pages(Pages::from_raw(..))` do: for the tests that
/// deliberately free what they do not hold as that block (a block freed
/// already, a tail, a wrong order or alignment, a frame of no zone), which
/// the allocator's checks must refuse with nothing changed.
///
/// Callers pass only frames they hold themselves or that nobody holds.
pub fn free_raw<A: FrameAllocator + ?Sized>(
    alloc: &A,
    pfn: Pfn,
    order: Order,
) -> Result<(), Error> {
    // SAFETY: the frames are the calling test's own or nobody's, never a
    // block another holder uses; a test machine's frames are host memory no
    // test borrows, so not even a free the allocator wrongly accepted could
    // reach a frame in use. The handle is consumed by this one free.
    unsafe { alloc.free_frames(Pages::from_raw(pfn, order, alloc.allocator_id())) }
}

/// Machine size: small enough that miri finishes in a minute.
pub const FRAMES: usize = if cfg!(miri) { 256 } else { 1024 };
pub const MAX_TEST_ORDER: u32 = 5;

/// The GFP bits a request may carry here: everything but `__GFP_NOFAIL`,
/// which would wait forever for a free that a single-threaded model never
/// makes (it has its own tests).
const GFP_BITS: [GfpFlags; 14] = [
    GfpFlags::DMA,
    GfpFlags::HIGHMEM,
    GfpFlags::DMA32,
    GfpFlags::MOVABLE,
    GfpFlags::HIGH,
    GfpFlags::IO,
    GfpFlags::FS,
    GfpFlags::ZERO,
    GfpFlags::DIRECT_RECLAIM,
    GfpFlags::KSWAPD_RECLAIM,
    GfpFlags::NOWARN,
    GfpFlags::RETRY_MAYFAIL,
    GfpFlags::NORETRY,
    GfpFlags::COMP,
];

/// One step of the model.
#[derive(Clone, Debug)]
pub enum Op {
    Alloc { gfp: u16, order: u32 },
    Free { which: usize },
    FreeWrongOrder { which: usize, order: u32 },
    FreeTail { which: usize },
    FreeAgain { which: usize },
    FreeForeign { pfn: usize },
    Split { which: usize },
    Drain,
    Migrate { cpu: usize },
}

pub fn gfp_of(bits: u16) -> GfpFlags {
    GFP_BITS
        .iter()
        .enumerate()
        .filter(|(i, _)| bits & (1 << i) != 0)
        .fold(GfpFlags::empty(), |acc, (_, &flag)| acc | flag)
}

fn order(o: u32) -> Order {
    Order::new(o).unwrap()
}

/// Every zone counter and the descriptors (tag, per-CPU flag, count) of a
/// range of frames, to prove a refusal changed nothing.
#[derive(PartialEq, Debug)]
pub struct Fingerprint {
    stats: [Option<ZoneStats>; MAX_NR_ZONES],
    pages: Vec<(FrameTag, bool, u32)>,
}

/// Every zone counter and every descriptor.
pub fn fingerprint(zones: &TestZones<'_>) -> Fingerprint {
    fingerprint_of(zones, 0..FRAMES)
}

/// Every zone counter and the descriptors of `frames`.
fn fingerprint_of(zones: &TestZones<'_>, frames: Range<usize>) -> Fingerprint {
    Fingerprint {
        stats: zones.zone_stats(),
        pages: frames
            .filter_map(|pfn| zones.pfn_to_page(Pfn::new(pfn)))
            .map(|page| (page.tag(), page.is_pcp(), page.page_count()))
            .collect(),
    }
}

/// The frames a refused free at `pfn` could disturb if the refusal were
/// broken: the aligned block of order `MAX_TEST_ORDER + 1` around `pfn`,
/// which holds `pfn` (the head a wrongly accepted free of any order would
/// retag), the held block enclosing it (of order at most `MAX_TEST_ORDER`)
/// and that block's buddy. What a wrongly accepted free does further away
/// (merging, list moves) shows in the zone counters.
fn around(pfn: Pfn) -> Range<usize> {
    let size = 1usize << (MAX_TEST_ORDER + 1);
    let start = pfn.as_usize() & !(size - 1);
    start..start.saturating_add(size)
}

/// The reference model: the handles of the held blocks by head pfn, and
/// freed heads that have not been handed out again (a second free of them
/// is a double free).
#[derive(Default)]
pub struct Model {
    pub held: BTreeMap<usize, Pages>,
    pub freed: BTreeSet<usize>,
}

impl Model {
    fn nth(&self, which: usize) -> Option<(usize, Order)> {
        let n = self.held.len();
        (n > 0).then(|| {
            self.held
                .iter()
                .nth(which % n)
                .map(|(&p, page)| (p, page.order()))
        })?
    }

    /// Records a new held block; it must overlap no held block.
    fn take(&mut self, page: Pages) -> Result<(), String> {
        let pfn = page.pfn().as_usize();
        let end = pfn + page.nr_pages();
        if let Some((&prev, held)) = self.held.range(..end).next_back() {
            ensure!(
                prev + held.nr_pages() <= pfn,
                "{pfn:#x} overlaps held {prev:#x}"
            );
        }
        self.freed.retain(|&f| f < pfn || f >= end);
        self.held.insert(pfn, page);
        Ok(())
    }
}

/// Frees `(pfn, o)` by raw frame and requires the refusal `want` with
/// nothing changed: every zone counter and, with `full`, every descriptor,
/// else those [`around`] the frame.
fn expect_refused(
    zones: &TestZones<'_>,
    pfn: Pfn,
    o: Order,
    want: Error,
    full: bool,
) -> Result<(), String> {
    let frames = if full { 0..FRAMES } else { around(pfn) };
    let before = fingerprint_of(zones, frames.clone());
    ensure_eq!(free_raw(zones, pfn, o), Err(want));
    ensure!(
        fingerprint_of(zones, frames) == before,
        "refused free changed state"
    );
    Ok(())
}

/// One step with every check ([`step_checking`] with `full`).
pub fn step(zones: &TestZones<'_>, model: &mut Model, op: Op) -> Result<(), String> {
    step_checking(zones, model, op, true)
}

/// One step on the allocator and the model. The model's checks run
/// always, and a refusal must leave every zone counter and the
/// descriptors around the frame it named unchanged; with `full`, every
/// descriptor, and the invariant checker runs after the step.
pub fn step_checking(
    zones: &TestZones<'_>,
    model: &mut Model,
    op: Op,
    full: bool,
) -> Result<(), String> {
    match op {
        Op::Alloc { gfp, order: o } => {
            let gfp = gfp_of(gfp);
            let o = order(o);
            match zones.alloc_pages(gfp, o) {
                Ok(page) => {
                    let pfn = page.pfn();
                    let highest = zones.gfp_zone(gfp).unwrap();
                    let zone = zones.page_zone(pfn).unwrap();
                    ensure!(
                        zone <= highest,
                        "{:?} from {:?} above {:?}",
                        gfp,
                        zone,
                        highest
                    );
                    if highest == ZoneType::Dma {
                        ensure_eq!(zone, ZoneType::Dma);
                    }
                    ensure!(pfn.is_aligned_to_order(o.as_u32()));
                    ensure_eq!(page.order(), o);
                    model.take(page)?;
                }
                Err(Error::InvalidGfp { .. }) => {
                    ensure!(gfp_zone(gfp, false).is_err());
                }
                Err(err) => ensure_eq!(err, Error::NoMemory { order: o }),
            }
        }
        Op::Free { which } => {
            if let Some((pfn, _)) = model.nth(which) {
                let page = model.held.remove(&pfn).unwrap();
                ensure_eq!(zones.__free_pages(page), Ok(()));
                model.freed.insert(pfn);
            }
        }
        Op::FreeWrongOrder {
            which,
            order: wrong,
        } => {
            if let Some((pfn, o)) = model.nth(which) {
                let wrong = order(wrong);
                let p = Pfn::new(pfn);
                let want = if wrong == o {
                    return Ok(());
                } else if wrong.as_u32() > 10 {
                    Error::OrderTooLarge {
                        order: wrong.as_u32(),
                        max: 10,
                    }
                } else if !p.is_aligned_to_order(wrong.as_u32()) {
                    Error::Misaligned {
                        pfn: p,
                        order: wrong,
                    }
                } else {
                    Error::WrongOrder {
                        pfn: p,
                        allocated: o,
                        freed: wrong,
                    }
                };
                expect_refused(zones, p, wrong, want, full)?;
            }
        }
        Op::FreeTail { which } => {
            if let Some((pfn, o)) = model.nth(which).filter(|&(_, o)| o.as_u32() > 0) {
                let tail = Pfn::new(pfn + o.pages() - 1);
                expect_refused(
                    zones,
                    tail,
                    Order::ZERO,
                    Error::NotAllocated { pfn: tail },
                    full,
                )?;
            }
        }
        Op::FreeAgain { which } => {
            let n = model.freed.len();
            if n > 0 {
                let pfn = Pfn::new(*model.freed.iter().nth(which % n).unwrap());
                expect_refused(zones, pfn, Order::ZERO, Error::DoubleFree { pfn }, full)?;
            }
        }
        Op::FreeForeign { pfn } => {
            let pfn = Pfn::new(pfn);
            expect_refused(zones, pfn, Order::ZERO, Error::PfnOutOfRange { pfn }, full)?;
        }
        Op::Split { which } => {
            if let Some((pfn, o)) = model.nth(which) {
                let block = model.held.remove(&pfn).unwrap();
                let pages = zones
                    .split_page(block)
                    .map_err(|e| format!("split of {pfn:#x}: {e}"))?;
                ensure_eq!(pages.len(), o.pages());
                for (i, page) in pages.enumerate() {
                    ensure_eq!((page.pfn(), page.order()), (Pfn::new(pfn + i), Order::ZERO));
                    model.held.insert(pfn + i, page);
                }
            }
        }
        Op::Drain => zones.drain_all_pages(),
        Op::Migrate { cpu } => set_cpu(cpu),
    }
    if !full {
        return Ok(());
    }
    zones
        .check()
        .map_err(|broken| format!("invariant broken: {broken}"))
}

std::thread_local! {
    /// This thread's machine and the fingerprint of its zones at boot. The
    /// RAM and metadata buffer are allocated once (the costly part); each
    /// run boots fresh zones over them, which rewrites every descriptor
    /// and list, so no run sees another's state, and every boot of the
    /// same machine gives the same fingerprint.
    static MACHINE: RefCell<(TestMachine, Option<Fingerprint>)> =
        RefCell::new((TestMachine::i386_scaled(FRAMES), None));
}

/// Runs `ops` on freshly booted zones with every check after every step,
/// then frees everything, drains, and requires the boot-time free lists
/// and descriptors back.
pub fn run(ops: impl IntoIterator<Item = Op>) -> Result<(), String> {
    run_checking_every(ops, 1)
}

/// [`run`], with the O(frames) checks (the invariant checker, and every
/// descriptor compared across a refusal) after every `every`-th step only,
/// the cheap ones after every step, and all of them at the end.
pub fn run_checking_every(ops: impl IntoIterator<Item = Op>, every: usize) -> Result<(), String> {
    MACHINE.with_borrow_mut(|(machine, at_boot)| {
        let zones = machine.boot().map_err(|e| e.to_string())?;
        let boot = at_boot.get_or_insert_with(|| fingerprint(&zones));
        let mut model = Model::default();
        set_cpu(0);
        for (i, op) in ops.into_iter().enumerate() {
            step_checking(&zones, &mut model, op, (i + 1) % every.max(1) == 0)?;
        }
        zones
            .check()
            .map_err(|broken| format!("invariant broken: {broken}"))?;
        for page in std::mem::take(&mut model.held).into_values() {
            ensure_eq!(zones.__free_pages(page), Ok(()));
        }
        zones.drain_all_pages();
        let end = fingerprint(&zones);
        ensure_eq!(
            end.stats,
            boot.stats,
            "free lists hold the maximal blocks again"
        );
        ensure!(end == *boot, "every descriptor as at boot");
        zones.check().map_err(|broken| broken.to_string())
    })
}
