//! `/proc/vmstat`: the page allocator's event counters (Linux's
//! `vm_event_states`) and the free-page gauge, kept per CPU and summed when
//! read ([`Zones::vmstat`]), rendered by [`VmStat`]'s `Display`.
//!
//! # Where each counter lives, and its one writer
//!
//! | counter | kept in | written by |
//! |---|---|---|
//! | `pgalloc_<zone>`, `pgfree`, orders `0..NR_PCP_ORDERS` | the zone's `PerCpuPages::listed` of the CPU | the context that has that CPU pinned |
//! | the same, larger orders | the zone's `PerCpuPages::direct` of the CPU | the holder of the zone lock |
//! | `allocstall_<zone>`, `pgalloc_fail` | `VmEvents`, one per CPU | whoever read that CPU id |
//!
//! A counter with one writer at a time (the pinned CPU's context, or the
//! zone lock's holder) is bumped with a relaxed load and a store: no atomic
//! read-modify-write. The allocation and free paths pin the CPU or hold
//! the lock anyway, and the counter sits in the same per-CPU structure as
//! the lists, so counting adds no lock, no shared cache line and no atomic
//! instruction to them. The hand-over of a CPU (or of the lock) orders one
//! writer's store before the next one's load, so no increment is lost.
//!
//! The slow-path counters are counted with no CPU pinned (the slow path
//! reclaims and waits, which no pinned section may): two contexts may read
//! the same id, so these use a relaxed `fetch_add`, on a cache line of
//! their own per CPU, and only on paths that are about to reclaim or fail.
//!
//! Readers sum every CPU's counters with relaxed loads and no lock. Each
//! counter only grows (wrapping at `usize::MAX`, as Linux's `unsigned long`
//! does), so a sum read while others count lies between the totals before
//! and after the read; once the counting contexts are joined with the
//! reader it is exact.

use crate::{ZoneType, Zones, MAX_NR_ZONES};
use core::fmt;
use kmm_api::sync::{AtomicUsize, Ordering::Relaxed};
use kmm_api::{DirectMap, PreemptControl};

/// A counter with one writer at a time: the holder of one lock, or the
/// context with one CPU pinned (named where the counter is declared).
pub(crate) struct OneWriterCounter(AtomicUsize);

impl OneWriterCounter {
    fn new() -> Self {
        Self(AtomicUsize::new(0))
    }

    /// Adds `n`. `_held` is what makes the caller this counter's only
    /// writer (the lock's guard, or the CPU's [`kmm_api::percpu::Pinned`]):
    /// a load and a store suffice.
    #[inline]
    pub(crate) fn add<G>(&self, n: usize, _held: &G) {
        self.0.store(self.0.load(Relaxed).wrapping_add(n), Relaxed);
    }

    /// The count, from anywhere.
    #[inline]
    pub(crate) fn read(&self) -> usize {
        self.0.load(Relaxed)
    }
}

/// Page events of one zone counted by one CPU.
pub(crate) struct ZoneEvents {
    /// Pages handed to callers (`pgalloc_<zone>`).
    pub(crate) pgalloc: OneWriterCounter,
    /// Pages given back by callers (`pgfree`).
    pub(crate) pgfree: OneWriterCounter,
}

impl ZoneEvents {
    pub(crate) fn new() -> Self {
        Self {
            pgalloc: OneWriterCounter::new(),
            pgfree: OneWriterCounter::new(),
        }
    }
}

/// One CPU's slow-path events. A cache line of its own, so CPUs counting
/// at once do not bounce each other's line.
#[repr(align(64))]
pub(crate) struct VmEvents {
    allocstall: [AtomicUsize; MAX_NR_ZONES],
    pgalloc_fail: AtomicUsize,
}

impl VmEvents {
    pub(crate) fn new() -> Self {
        Self {
            allocstall: core::array::from_fn(|_| AtomicUsize::new(0)),
            pgalloc_fail: AtomicUsize::new(0),
        }
    }

    /// An entry into direct reclaim by a request whose highest zone is
    /// `highest`.
    pub(crate) fn count_allocstall(&self, highest: ZoneType) {
        self.allocstall[highest.index()].fetch_add(1, Relaxed);
    }

    /// A request that ends without memory.
    pub(crate) fn count_pgalloc_fail(&self) {
        self.pgalloc_fail.fetch_add(1, Relaxed);
    }
}

/// The `/proc/vmstat` figures of the zones at one moment (and, when the
/// caller fills them in, the slab layer's), printed by `Display` as Linux
/// prints them: one `name value` line each, in Linux's order and spelling.
///
/// Per-zone lines are printed for the zones a kernel built for this layout
/// has (`_dma` and `_normal` always, `_dma32` on layouts with ZONE_DMA32,
/// `_high` on 32-bit layouts, which have `CONFIG_HIGHMEM`), and for any
/// other zone whose count is not zero; `_movable` is left out, as kmm has
/// no ZONE_MOVABLE.
///
/// ```
/// use kmm_api::{Order, GFP_KERNEL};
/// use kmm_zones::testing::TestMachine;
///
/// let mut machine = TestMachine::i386_scaled(4096);
/// let zones = machine.boot()?;
/// let before = zones.vmstat();
/// let page = zones.alloc_pages(GFP_KERNEL, Order::new(2)?)?;
/// zones.__free_pages(page)?;
/// let after = zones.vmstat();
/// assert_eq!(after.pgalloc_total() - before.pgalloc_total(), 4);
/// assert_eq!(after.pgfree - before.pgfree, 4);
/// let text = after.to_string();
/// assert!(text.starts_with("nr_free_pages "));
/// assert!(text.contains("\npgalloc_normal 4\n"));
/// # Ok::<(), kmm_api::Error>(())
/// ```
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default)]
pub struct VmStat {
    /// Free pages of each zone, by zone index (Linux's per-zone
    /// `NR_FREE_PAGES`; pages on per-CPU lists are not free).
    pub nr_free: [usize; MAX_NR_ZONES],
    /// Slab pages of `SLAB_RECLAIM_ACCOUNT` caches; the zones do not know
    /// it: whoever composes them with a slab layer fills it in.
    pub nr_slab_reclaimable: Option<usize>,
    /// Slab pages of every other cache (and large kmallocs); as above.
    pub nr_slab_unreclaimable: Option<usize>,
    /// Pages handed out from each zone, by the zone they came from (Linux
    /// `PGALLOC`, counted `2^order` per block in `rmqueue`).
    pub pgalloc: [usize; MAX_NR_ZONES],
    /// Entries into direct reclaim, by the request's highest zone (Linux
    /// `ALLOCSTALL`, counted against `gfp_zone(gfp)`).
    pub allocstall: [usize; MAX_NR_ZONES],
    /// Pages freed back to the zones, `2^order` per block (Linux `PGFREE`).
    /// Refused frees free nothing and are not counted.
    pub pgfree: usize,
    /// Requests that failed for want of memory ([`kmm_api::Error::NoMemory`]
    /// after the slow path). Linux has no such counter: it reports each
    /// failure in the kernel log (`warn_alloc`, "page allocation failure")
    /// instead. It is printed last, after every Linux line, so tools that
    /// parse Linux's file by name are not disturbed.
    pub pgalloc_fail: usize,
    /// The zones whose per-zone lines a kernel built for this layout prints.
    pub zone_lines: [bool; MAX_NR_ZONES],
}

impl VmStat {
    /// Linux `nr_free_pages`: free pages of every zone.
    pub fn nr_free_pages(&self) -> usize {
        self.nr_free.iter().fold(0, |sum, &n| sum.wrapping_add(n))
    }

    /// Pages handed out from every zone (the sum of the `pgalloc_*` lines).
    pub fn pgalloc_total(&self) -> usize {
        self.pgalloc.iter().fold(0, |sum, &n| sum.wrapping_add(n))
    }

    /// Entries into direct reclaim for every zone (the `allocstall_*` lines).
    pub fn allocstall_total(&self) -> usize {
        self.allocstall
            .iter()
            .fold(0, |sum, &n| sum.wrapping_add(n))
    }

    /// The `name value` pairs `Display` prints, in its order.
    pub fn lines(&self) -> impl Iterator<Item = (&'static str, usize)> + '_ {
        let slab = [
            ("nr_slab_reclaimable", self.nr_slab_reclaimable),
            ("nr_slab_unreclaimable", self.nr_slab_unreclaimable),
        ];
        let per_zone = |names: [&'static str; MAX_NR_ZONES], counts: [usize; MAX_NR_ZONES]| {
            (0..MAX_NR_ZONES)
                .filter(move |&z| self.prints_zone(z))
                .map(move |z| (names[z], counts[z]))
        };
        core::iter::once(("nr_free_pages", self.nr_free_pages()))
            .chain(slab.into_iter().filter_map(|(name, v)| Some((name, v?))))
            .chain(per_zone(PGALLOC_NAMES, self.pgalloc))
            .chain(per_zone(ALLOCSTALL_NAMES, self.allocstall))
            .chain([("pgfree", self.pgfree), ("pgalloc_fail", self.pgalloc_fail)])
    }

    /// Whether zone `z`'s lines are printed: built for, or counted in.
    fn prints_zone(&self, z: usize) -> bool {
        self.zone_lines[z] || self.pgalloc[z] != 0 || self.allocstall[z] != 0
    }
}

/// `pgalloc_<zone>`, by zone index.
const PGALLOC_NAMES: [&str; MAX_NR_ZONES] = [
    "pgalloc_dma",
    "pgalloc_dma32",
    "pgalloc_normal",
    "pgalloc_high",
];
/// `allocstall_<zone>`, by zone index.
const ALLOCSTALL_NAMES: [&str; MAX_NR_ZONES] = [
    "allocstall_dma",
    "allocstall_dma32",
    "allocstall_normal",
    "allocstall_high",
];

impl fmt::Display for VmStat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (name, value) in self.lines() {
            writeln!(f, "{name} {value}")?;
        }
        Ok(())
    }
}

impl<P: PreemptControl, D: DirectMap> Zones<'_, P, D> {
    /// The `/proc/vmstat` figures: every CPU's counters summed, and each
    /// zone's free pages, all read with relaxed loads and no lock, so it
    /// never slows an allocation. O(zones × CPUs).
    ///
    /// Counts are exact once the contexts that counted are joined with the
    /// caller; taken while others allocate, each lies between its values
    /// before and after the call (see the [`vmstat`](crate::vmstat) module).
    pub fn vmstat(&self) -> VmStat {
        let mut stat = VmStat {
            zone_lines: [
                true,
                self.config.dma32_end.is_some(),
                true,
                self.config.dma32_end.is_none(),
            ],
            ..VmStat::default()
        };
        for (z, zone) in self.zones.iter().enumerate() {
            let Some(zone) = zone else { continue };
            stat.nr_free[z] = zone.free_pages();
            for pcp in zone.pcp {
                for events in [&pcp.listed, &pcp.direct] {
                    stat.pgalloc[z] = stat.pgalloc[z].wrapping_add(events.pgalloc.read());
                    stat.pgfree = stat.pgfree.wrapping_add(events.pgfree.read());
                }
            }
        }
        for cpu in self.vm_events {
            for (sum, count) in stat.allocstall.iter_mut().zip(&cpu.allocstall) {
                *sum = sum.wrapping_add(count.load(Relaxed));
            }
            stat.pgalloc_fail = stat
                .pgalloc_fail
                .wrapping_add(cpu.pgalloc_fail.load(Relaxed));
        }
        stat
    }
}

#[cfg(test)]
mod tests {
    extern crate std;
    use super::*;
    use std::string::ToString;
    use std::vec::Vec;

    #[test]
    fn display_prints_linux_names_in_linux_order_for_a_32_bit_layout() {
        let stat = VmStat {
            nr_free: [10, 0, 20, 30],
            nr_slab_reclaimable: Some(4),
            nr_slab_unreclaimable: Some(5),
            pgalloc: [1, 0, 2, 3],
            allocstall: [0, 0, 6, 7],
            pgfree: 8,
            pgalloc_fail: 9,
            zone_lines: [true, false, true, true],
        };
        let names: Vec<&str> = stat.lines().map(|(name, _)| name).collect();
        assert_eq!(
            names,
            [
                "nr_free_pages",
                "nr_slab_reclaimable",
                "nr_slab_unreclaimable",
                "pgalloc_dma",
                "pgalloc_normal",
                "pgalloc_high",
                "allocstall_dma",
                "allocstall_normal",
                "allocstall_high",
                "pgfree",
                "pgalloc_fail",
            ]
        );
        let text = stat.to_string();
        assert!(text.starts_with("nr_free_pages 60\nnr_slab_reclaimable 4\n"));
        assert!(text.ends_with("allocstall_high 7\npgfree 8\npgalloc_fail 9\n"));
    }

    #[test]
    fn a_zone_outside_the_layout_is_printed_only_once_counted() {
        let mut stat = VmStat {
            zone_lines: [true, true, true, false],
            ..VmStat::default()
        };
        assert!(!stat.to_string().contains("_high"));
        assert!(!stat.to_string().contains("nr_slab"), "unknown: left out");
        stat.allocstall[ZoneType::HighMem.index()] = 1;
        let text = stat.to_string();
        assert!(text.contains("\npgalloc_high 0\n") && text.contains("\nallocstall_high 1\n"));
        assert!(text.contains("\npgalloc_dma32 0\n"));
    }
}
