//! Per-CPU pages (Linux `per_cpu_pages`): for each zone and CPU, a small
//! cache of free blocks of orders `0..=PAGE_ALLOC_COSTLY_ORDER`, so the
//! common allocation and free take neither the zone lock nor a trip through
//! the buddy's split and merge.
//!
//! This module owns the lists, their sizing (`batch`, `high`) and the bulk
//! moves between a list and the zone's buddy. Lists are singly linked LIFO
//! stacks threaded through the descriptors' `word` (no memory of their own);
//! a block on a list is `Allocated(o)` to the buddy, has refcount 0 and
//! `PG_pcp` set. It must never hold a block of another zone, a block a
//! caller holds, or more than `high` pages after a free returns.
//!
//! # Pinned, not locked
//!
//! A CPU's lists are reached only with that CPU [`Pinned`]: inside
//! `PreemptControl::get_cpu` … `put_cpu` (an allocation or a free on the
//! CPU itself), or inside `PreemptControl::on_cpu` work for it (a drain
//! from elsewhere, Linux's `drain_all_pages` work queued on each CPU). The
//! platform promises that either is the CPU's only context, so a pop or a
//! push is plain loads and stores: no lock and no atomic read-modify-write
//! (Linux before 5.19 kept them so, under `local_irq_save`; its later
//! per-list spin lock serves remote drains without an IPI, which a kernel
//! embedding kmm makes through `on_cpu`). A list meets the other CPUs only
//! in the zone's buddy, under the zone lock: lock order **pin, then the
//! zone lock**.
//!
//! # Cost
//!
//! A pop or push is O(1); a refill or drain moves `batch` pages under one
//! zone-lock hold, O(batch × max_order).

use crate::check::Invariant;
use crate::page::{Page, ZoneMeta, NIL};
use crate::vmstat::ZoneEvents;
use crate::ZoneType;
use kmm_api::percpu::{Pinned, PinnedCell};
use kmm_api::sync::{AtomicUsize, Ordering::Relaxed};
use kmm_api::{Order, Pfn, PAGE_ALLOC_COSTLY_ORDER, PAGE_SIZE};
use kmm_buddy::{Buddy, FrameTag};

/// Orders cached per CPU: `0..=PAGE_ALLOC_COSTLY_ORDER`.
pub const NR_PCP_ORDERS: usize = PAGE_ALLOC_COSTLY_ORDER.as_usize() + 1;

/// Linux's `batch` and `high` of a zone's per-CPU lists, in pages.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct PcpSizing {
    /// Pages moved per refill or drain.
    pub batch: usize,
    /// A free that leaves this many pages or more on a list drains `batch`.
    pub high: usize,
}

impl PcpSizing {
    /// Linux `zone_batchsize` and `zone_highsize` (as from 5.14, before the
    /// 6.7 auto-tuning of `high`):
    /// `b = min(managed >> 10, 1 MiB / PAGE_SIZE) / 4`, then
    /// `batch = rounddown_pow_of_two(b + b/2) - 1`, at least 1 (Linux clamps
    /// the zero a tiny zone yields to 1 when it installs the value); `high`
    /// is the zone's low watermark shared among the CPUs, at least
    /// `4 * batch`, so that full per-CPU lists alone never hold the zone
    /// below its low watermark.
    ///
    /// ```
    /// use kmm_zones::PcpSizing;
    /// // 16 MiB DMA, low watermark 15, 2 CPUs: 15 / 2.
    /// assert_eq!(PcpSizing::new(3_977, 15, 2), PcpSizing { batch: 1, high: 7 });
    /// // The same zone shared by 8 CPUs: the 4 * batch floor.
    /// assert_eq!(PcpSizing::new(3_977, 15, 8), PcpSizing { batch: 1, high: 4 });
    /// // 880 MiB NORMAL, low watermark 1172, 2 CPUs.
    /// assert_eq!(PcpSizing::new(225_280, 1_172, 2), PcpSizing { batch: 63, high: 586 });
    /// ```
    pub const fn new(managed: usize, low_wmark: usize, nr_cpus: usize) -> PcpSizing {
        let cap = (1 << 20) / PAGE_SIZE;
        let mut b = managed >> 10;
        if b > cap {
            b = cap;
        }
        b /= 4;
        if b < 1 {
            b = 1;
        }
        let grown = b + b / 2;
        // rounddown_pow_of_two of a positive number.
        let pow = 1usize << (usize::BITS - 1 - grown.leading_zeros());
        let batch = if pow > 1 { pow - 1 } else { 1 };
        let shared = low_wmark / if nr_cpus > 0 { nr_cpus } else { 1 };
        PcpSizing {
            batch,
            high: if shared > 4 * batch {
                shared
            } else {
                4 * batch
            },
        }
    }

    /// Blocks of `order` one refill takes: `batch` at order 0, else
    /// `max(batch >> order, 2)` (Linux `nr_pcp_alloc`, without the scaling).
    pub const fn refill_blocks(&self, order: Order) -> usize {
        if order.as_u32() == 0 {
            self.batch
        } else {
            let blocks = self.batch >> order.as_u32();
            if blocks < 2 {
                2
            } else {
                blocks
            }
        }
    }
}

/// One CPU's lists for one zone, and the `/proc/vmstat` page events this
/// CPU counted for the zone.
pub struct PerCpuPages {
    /// Reached through [`PerCpuPages::with_lists`], with this CPU pinned.
    lists: PinnedCell<PcpLists>,
    /// Pages on `lists` as of the end of their last pinned section,
    /// readable from anywhere (Linux reads `pcp->count` racily in
    /// `__drain_all_pages` to skip the CPUs with nothing listed). Written
    /// only by the pinned CPU.
    nr_listed: AtomicUsize,
    /// Blocks of the per-CPU orders, allocated from or freed to `lists`:
    /// written only with this CPU pinned.
    pub(crate) listed: ZoneEvents,
    /// Blocks above the per-CPU orders, which go straight to the buddy:
    /// written only under the zone lock.
    pub(crate) direct: ZoneEvents,
}

impl PerCpuPages {
    /// Empty lists, counters at zero.
    pub fn new() -> Self {
        Self {
            lists: PinnedCell::new(PcpLists::EMPTY),
            nr_listed: AtomicUsize::new(0),
            listed: ZoneEvents::new(),
            direct: ZoneEvents::new(),
        }
    }

    /// Runs `f` on the lists, then publishes their page count.
    ///
    /// # Safety
    ///
    /// `pinned` is for the CPU these lists belong to (the caller took them
    /// at index `pinned.cpu()` of its zone's `pcp`, with the zones' own
    /// platform), and `f` does not reach them again.
    #[allow(unsafe_code)]
    #[inline(always)]
    pub(crate) unsafe fn with_lists<R>(
        &self,
        pinned: &Pinned,
        f: impl FnOnce(&mut PcpLists, &Pinned) -> R,
    ) -> R {
        // SAFETY: the caller holds the CPU these lists belong to (our
        // contract), so it is their one context until `f` returns.
        unsafe {
            self.lists.with_mut(|lists| {
                let r = f(lists, pinned);
                self.nr_listed.store(lists.count, Relaxed);
                r
            })
        }
    }

    /// Pages listed as of the end of the last pinned section; may be stale
    /// by the time the caller acts on it.
    #[inline]
    pub(crate) fn nr_listed(&self) -> usize {
        self.nr_listed.load(Relaxed)
    }
}

impl Default for PerCpuPages {
    fn default() -> Self {
        Self::new()
    }
}

/// The lists themselves, reached with their CPU pinned. Indices are
/// relative to the zone's first frame.
pub(crate) struct PcpLists {
    /// Pages (not blocks) on all lists.
    pub(crate) count: usize,
    head: [u32; NR_PCP_ORDERS],
    blocks: [u32; NR_PCP_ORDERS],
}

impl PcpLists {
    const EMPTY: PcpLists = PcpLists {
        count: 0,
        head: [NIL; NR_PCP_ORDERS],
        blocks: [0; NR_PCP_ORDERS],
    };

    /// Takes the most recently freed block of `order` (cache-hot first):
    /// its index and its head's descriptor, still flagged `PG_pcp`. The
    /// caller clears the flag with the CPU still pinned, with the store that
    /// gives the block its next state (`Page::set_held`, or before the buddy's free).
    #[inline]
    pub(crate) fn pop<'p>(&mut self, order: usize, pages: &'p [Page]) -> Option<(usize, &'p Page)> {
        let idx = self.head[order];
        let page = pages.get(idx as usize)?;
        self.head[order] = page.pcp_next();
        self.blocks[order] -= 1;
        self.count -= 1 << order;
        Some((idx as usize, page))
    }

    /// Puts a block of `order` whose head is `idx`, with descriptor
    /// `page`, on its list; the caller has flagged the head `PG_pcp` (a
    /// free with the store that marks it freed). Always inlined: it is
    /// most of a free, and the compiler otherwise left it a call there.
    #[inline(always)]
    pub(crate) fn push(&mut self, idx: usize, page: &Page, order: usize) {
        page.set_pcp_next(self.head[order]);
        self.head[order] = idx as u32;
        self.blocks[order] += 1;
        self.count += 1 << order;
    }

    /// Linux `rmqueue_bulk`: moves up to `blocks` blocks of `order` from the
    /// buddy onto the list, under the zone lock the caller holds. Returns
    /// the blocks moved.
    pub(crate) fn refill(
        &mut self,
        buddy: &mut Buddy<ZoneMeta<'_>>,
        pages: &[Page],
        order: Order,
        blocks: usize,
    ) -> usize {
        let base = buddy.base().as_usize();
        let mut moved = 0;
        while moved < blocks {
            let Ok(pfn) = buddy.alloc(order) else { break };
            let idx = pfn.as_usize() - base;
            pages[idx].set_pcp(true);
            self.push(idx, &pages[idx], order.as_usize());
            moved += 1;
        }
        moved
    }

    /// Linux `free_pcppages_bulk`: returns at least `nr_pages` pages (or all
    /// there are) to the buddy, under the zone lock the caller holds.
    /// Returns the pages moved.
    ///
    /// The list of order `first` goes first (the order whose free filled
    /// the lists: Linux's "requested pindex"), then the others in turn,
    /// each emptied while pages are still owed. The list that grew is the
    /// one with blocks to spare; taking the lowest order first instead
    /// would hand back the blocks the next allocation of that order then
    /// refills, a batch each way on every few frees of a mixed workload.
    pub(crate) fn drain(
        &mut self,
        buddy: &mut Buddy<ZoneMeta<'_>>,
        pages: &[Page],
        nr_pages: usize,
        first: Order,
    ) -> usize {
        let base = buddy.base();
        let first = first.as_usize();
        let mut moved = 0;
        for order in (first..NR_PCP_ORDERS).chain(0..first) {
            while moved < nr_pages {
                let Some((idx, page)) = self.pop(order, pages) else {
                    break;
                };
                page.set_pcp(false);
                // A listed block is Allocated(order) to the buddy (checked
                // by `check`), so this free cannot be refused.
                let freed = buddy.free(base.add(idx), PCP_ORDER[order]);
                debug_assert!(freed.is_ok(), "pcp block refused by its buddy: {freed:?}");
                moved += 1 << order;
            }
        }
        moved
    }

    /// Walks every list: each entry is a block of this zone tagged
    /// `Allocated(order)`, flagged `PG_pcp`, not held, and the counters
    /// match. Returns the pages listed.
    pub(crate) fn check(
        &self,
        zone: ZoneType,
        cpu: usize,
        pages: &[Page],
        base: Pfn,
    ) -> Result<usize, Invariant> {
        let mut listed = 0;
        for (order, &block_order) in PCP_ORDER.iter().enumerate() {
            let fault = |pfn: Option<Pfn>, problem| Invariant::PcpList {
                zone,
                cpu,
                order,
                pfn,
                problem,
            };
            let mut idx = self.head[order];
            let mut blocks = 0u32;
            while idx != NIL {
                let Some(page) = pages.get(idx as usize) else {
                    return Err(fault(None, "link points outside the zone"));
                };
                let pfn = base.add(idx as usize);
                if blocks >= self.blocks[order] {
                    return Err(fault(Some(pfn), "list is longer than its count (or loops)"));
                }
                if page.tag() != FrameTag::Allocated(block_order) {
                    return Err(fault(Some(pfn), "entry is not a block of the list's order"));
                }
                if !page.is_pcp() || page.is_held() || page.zone_type() != zone {
                    return Err(fault(
                        Some(pfn),
                        "entry lacks PG_pcp, is held, or is foreign",
                    ));
                }
                blocks += 1;
                idx = page.pcp_next();
            }
            if blocks != self.blocks[order] {
                return Err(fault(None, "list is shorter than its count"));
            }
            listed += (blocks as usize) << order;
        }
        if listed != self.count {
            return Err(Invariant::PcpCount {
                zone,
                cpu,
                recorded: self.count,
                counted: listed,
            });
        }
        Ok(listed)
    }
}

/// The per-CPU orders as [`Order`] values, indexed by order.
const PCP_ORDER: [Order; NR_PCP_ORDERS] = {
    let mut orders = [Order::ZERO; NR_PCP_ORDERS];
    let mut i = 0;
    while i < NR_PCP_ORDERS {
        orders[i] = match Order::new(i as u32) {
            Ok(order) => order,
            Err(_) => panic!("per-CPU orders are below Order::LIMIT"),
        };
        i += 1;
    }
    orders
};

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pcp_batch_and_high_follow_linux_sizing_for_several_zone_sizes() {
        // (managed pages, batch): tiny zones clamp to 1; 1 MiB / 4 caps b at 64.
        for (managed, batch) in [
            (0, 1),
            (3_977, 1),    // 16 MiB DMA: b = 3 / 4 = 0 -> 1 -> rounddown(1) - 1 = 0 -> 1
            (16_384, 3),   // 64 MiB: b = 4 -> 6 -> 4 - 1
            (32_768, 7),   // 128 MiB: b = 8 -> 12 -> 8 - 1
            (225_280, 63), // 880 MiB: b = 55 -> 82 -> 64 - 1
            (4 << 20, 63), // 16 GiB: capped at b = 64 -> 96 -> 64 - 1
        ] {
            let sizing = PcpSizing::new(managed, 0, 1);
            assert_eq!(sizing.batch, batch, "managed {managed}");
            assert_eq!(sizing.high, 4 * batch, "no watermark: the floor");
            let low = 40 * batch;
            assert_eq!(PcpSizing::new(managed, low, 2).high, 20 * batch);
            assert_eq!(PcpSizing::new(managed, low, 0).high, 40 * batch);
            assert!(sizing.high >= 4 * sizing.batch);
        }
    }

    #[test]
    fn refill_takes_batch_order0_blocks_and_at_least_two_of_higher_orders() {
        let sizing = PcpSizing {
            batch: 63,
            high: 378,
        };
        assert_eq!(sizing.refill_blocks(Order::ZERO), 63);
        assert_eq!(sizing.refill_blocks(Order::new(1).unwrap()), 31);
        assert_eq!(sizing.refill_blocks(Order::new(3).unwrap()), 7);
        let tiny = PcpSizing { batch: 1, high: 6 };
        assert_eq!(tiny.refill_blocks(Order::new(2).unwrap()), 2);
    }

    #[test]
    fn a_pinned_section_publishes_the_count_that_drain_all_pages_reads_without_running_as_the_cpu()
    {
        extern crate std;
        use crate::testing::{set_cpu, TestMachine};
        use kmm_api::{PreemptControl, GFP_KERNEL};
        use std::{sync::mpsc, thread, time::Duration};

        // Small enough for miri: the lists' batch is then one page.
        let mut machine = TestMachine::i386_scaled_smp(256, 2);
        let zones = machine.boot().unwrap();
        let normal = zones.zones[ZoneType::Normal.index()].as_ref().unwrap();
        set_cpu(0);
        let page = zones.alloc_pages(GFP_KERNEL, Order::ZERO).unwrap();
        let refilled = normal.pcp[0].nr_listed();
        zones.__free_pages(page).unwrap();
        let listed = normal.pcp[0].nr_listed();
        assert_eq!(listed, refilled + 1, "the freed page is listed");
        assert_eq!(normal.pcp[1].nr_listed(), 0);
        let free = zones.nr_free_pages();
        thread::scope(|s| {
            // CPU 1, its lists empty, pinned by a holder that never lets
            // go while the drain runs: the drain must not wait for it.
            set_cpu(1);
            let held = zones.platform().get_cpu();
            let (done, finished) = mpsc::channel();
            let zones = &zones;
            s.spawn(move || {
                zones.drain_all_pages();
                done.send(()).unwrap();
            });
            let drained = finished.recv_timeout(Duration::from_secs(10));
            zones.platform().put_cpu(held);
            assert!(
                drained.is_ok(),
                "drain_all_pages waited for an empty CPU's pin"
            );
        });
        assert_eq!(
            zones.nr_free_pages(),
            free + listed,
            "CPU 0's lists drained"
        );
        assert_eq!(normal.pcp[0].nr_listed(), 0);
    }

    #[test]
    fn a_drain_takes_the_freed_order_first_then_the_others_in_turn() {
        let pages: std::vec::Vec<Page> = (0..64).map(|_| Page::new(ZoneType::Normal)).collect();
        let meta = ZoneMeta { pages: &pages };
        let mut buddy = Buddy::new(meta, Pfn::new(0), pages.len(), PCP_ORDER[3]).unwrap();
        buddy.release_range(Pfn::new(0), Pfn::new(64)).unwrap();
        let mut lists = PcpLists::EMPTY;
        for (order, blocks) in [(0, 4), (1, 2), (2, 2)] {
            assert_eq!(
                lists.refill(&mut buddy, &pages, PCP_ORDER[order], blocks),
                blocks
            );
        }
        // A free of order 1 filled the lists: its list goes first.
        assert_eq!(lists.drain(&mut buddy, &pages, 4, PCP_ORDER[1]), 4);
        assert_eq!(lists.blocks, [4, 0, 2, 0]);
        // Then the orders above it, then round to the lowest.
        assert_eq!(lists.drain(&mut buddy, &pages, 10, PCP_ORDER[1]), 10);
        assert_eq!(lists.blocks, [2, 0, 0, 0]);
        let listed = lists.check(ZoneType::Normal, 0, &pages, Pfn::new(0));
        assert_eq!(listed, Ok(2));
        assert_eq!(buddy.free_pages(), 62);
    }
}
