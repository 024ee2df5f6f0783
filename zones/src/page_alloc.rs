//! [`Zones`] and the heart of Linux's `mm/page_alloc.c`: `alloc_pages`
//! (fast path, slow path with reserves, reclaim and retry) and
//! `__free_pages`.
//!
//! # The allocation path
//!
//! 1. `gfp_zone()` picks the highest zone; the zonelist walks down from it.
//! 2. Fast path: the first zone whose free pages stay above its **low**
//!    mark plus `lowmem_reserve[highest]` after the request gives a block
//!    (its per-CPU list for orders `0..=3`).
//! 3. Slow path: the same walk against **min**, lowered for `__GFP_HIGH`
//!    (by half) and for a request that cannot block (a further quarter).
//! 4. A request that cannot block fails here: it never calls a hook that
//!    may sleep. One that can calls the shrinkers and `Platform::reclaim`,
//!    retries, drains the per-CPU lists, retries, and then decides:
//!    `__GFP_NOFAIL` waits (`Platform::wait`) and goes round forever;
//!    `__GFP_NORETRY` fails after that one attempt; a costly order (> 3)
//!    fails unless `__GFP_RETRY_MAYFAIL`; otherwise it goes round while
//!    reclaim makes progress, at most [`MAX_RECLAIM_RETRIES`] rounds. There
//!    is no OOM killer, so a plain `GFP_KERNEL` request behaves like
//!    `__GFP_RETRY_MAYFAIL` once reclaim stops making progress.
//!
//! A `__GFP_NOFAIL` request that cannot block, or whose order is above the
//! maximum, could only spin or never succeed: it is refused up front with
//! an error, the only failure a `__GFP_NOFAIL` caller ever sees. (A
//! `__GFP_NOFAIL` request larger than every block the zones could ever
//! form waits forever, as in Linux.)
//!
//! This module must never sleep or call a hook for a request without
//! `__GFP_DIRECT_RECLAIM`, and never hold a lock across a hook.

use crate::page::Page;
use crate::shrinker::ShrinkerRegistry;
use crate::sysctl::Tunables;
use crate::vmstat::VmEvents;
use crate::watermark::{gfp_to_alloc_flags, watermark_ok, AllocFlags};
use crate::zone::Zone;
use crate::{gfp_zone, ZoneConfig, ZoneType, MAX_NR_ZONES};
use kmm_api::sync::{AtomicUsize, Ordering::Relaxed, SpinLock};
use kmm_api::{
    AllocatorId, DirectMap, Error, GfpFlags, Order, Pages, Pfn, PreemptControl,
    PAGE_ALLOC_COSTLY_ORDER,
};

/// Reclaim rounds a retrying request makes at most (Linux's value).
pub const MAX_RECLAIM_RETRIES: usize = 16;

/// The zoned page allocator of one machine: `mem_map`, the zones, the
/// platform hooks and the direct map. See the [crate documentation](crate).
pub struct Zones<'a, P: PreemptControl, D: DirectMap> {
    pub(crate) mem_map: &'a [Page],
    pub(crate) start_pfn: Pfn,
    pub(crate) zones: [Option<Zone<'a>>; MAX_NR_ZONES],
    pub(crate) config: ZoneConfig,
    pub(crate) platform: P,
    pub(crate) direct_map: D,
    pub(crate) shrinkers: ShrinkerRegistry<'a>,
    /// Frees refused so far (double, foreign, wrong order, ...).
    pub(crate) bad_frees: AtomicUsize,
    /// Frames held under each owner tag (indexed by the tag's bits), kept
    /// by `set_owner`: Linux's `NR_PAGETABLE` and friends.
    pub(crate) owned_pages: [AtomicUsize; kmm_api::OwnerWord::TAG_MASK + 1],
    /// The identity every [`Pages`] of this allocator carries.
    pub(crate) id: AllocatorId,
    /// The `/proc/sys/vm` tunables; its lock serialises their writers.
    pub(crate) tuning: SpinLock<Tunables>,
    /// `/proc/vmstat` events of the slow path, one set per CPU.
    pub(crate) vm_events: &'a [VmEvents],
}

impl<'a, P: PreemptControl, D: DirectMap> Zones<'a, P, D> {
    /// Linux `alloc_pages`: a block of `2^order` frames under the rules of
    /// `gfp` (see the module documentation), zeroed for `__GFP_ZERO`, as
    /// the handle that proves the caller holds it.
    ///
    /// Errors: [`Error::OrderTooLarge`], [`Error::InvalidGfp`] (contradictory
    /// zone modifiers, no zone at or below the requested one, or
    /// `__GFP_NOFAIL` without `__GFP_DIRECT_RECLAIM`), [`Error::NoMemory`];
    /// an error from [`kmm_api::Platform::zero_frame`] for a highmem frame that
    /// could not be zeroed (the block is then freed again).
    ///
    /// Always inlined down to the per-CPU list's pop (with
    /// `get_page_from_freelist` and `Zone::rmqueue`): out of line, each
    /// level was a call with its own frame, and its result went back
    /// through memory. The slow path, the refill and the zeroing are calls.
    #[inline(always)]
    pub fn alloc_pages(&self, gfp: GfpFlags, order: Order) -> Result<Pages, Error> {
        let pfn = self.alloc_block(gfp, order)?;
        if gfp.contains(GfpFlags::ZERO) {
            self.zero_new_block(pfn, order)?;
        }
        // SAFETY: the block was just handed out by this allocator and this
        // is its only handle.
        #[allow(unsafe_code)]
        Ok(unsafe { Pages::from_raw(pfn, order, self.id) })
    }

    /// Linux `alloc_page`: one page, as `alloc_pages(gfp, 0)`.
    #[inline]
    pub fn alloc_page(&self, gfp: GfpFlags) -> Result<Pages, Error> {
        self.alloc_pages(gfp, Order::ZERO)
    }

    /// Linux `__free_pages`: returns a block to its zone.
    ///
    /// The handle proves the block is the caller's, so the only refusals
    /// are [`Error::Foreign`] (another allocator's handle) and
    /// [`Error::Owned`] (a layer still claims the block through its owner
    /// word); either leaves the block allocated and nothing changed.
    #[inline]
    pub fn __free_pages(&self, pages: Pages) -> Result<(), Error> {
        if pages.allocator() != self.id {
            self.bad_frees.fetch_add(1, Relaxed);
            return Err(Error::Foreign { pfn: pages.pfn() });
        }
        let (pfn, order) = pages.into_raw();
        self.free_block(pfn, order)
    }

    /// The identity the handles of this allocator carry (for
    /// [`Pages::from_raw`]).
    pub fn allocator_id(&self) -> AllocatorId {
        self.id
    }

    /// Frees the block of `order` at `pfn`: every free, by handle or raw,
    /// ends here and is validated here.
    ///
    /// Errors, with nothing changed: [`Error::PfnOutOfRange`] (not a frame
    /// of any zone), [`Error::OrderTooLarge`], [`Error::Misaligned`],
    /// [`Error::DoubleFree`] (already free, in the buddy or on a per-CPU
    /// list), [`Error::NotAllocated`], [`Error::WrongOrder`],
    /// [`Error::Owned`].
    ///
    /// Always inlined, with [`Zone::try_free_listed`]: the caller of a
    /// valid free of the lists' orders runs their fast path with no call.
    /// Every other free is [`Zones::free_block_checked`].
    #[inline(always)]
    pub(crate) fn free_block(&self, pfn: Pfn, order: Order) -> Result<(), Error> {
        if let Ok((zone, idx)) = self.zone_and_index(pfn) {
            if zone.try_free_listed(idx, order, self.config.max_order, &self.platform) {
                return Ok(());
            }
        }
        self.free_block_checked(pfn, order)
    }

    /// [`Zones::free_block`] with every check made in turn, naming the
    /// error of a refused free (and counting it).
    #[inline(never)]
    fn free_block_checked(&self, pfn: Pfn, order: Order) -> Result<(), Error> {
        self.zone_and_index(pfn)
            .and_then(|(zone, idx)| zone.free(idx, order, self.config.max_order, &self.platform))
            .inspect_err(|_| {
                self.bad_frees.fetch_add(1, Relaxed);
            })
    }

    /// Frees refused with an error since boot (each left everything as it
    /// was); a kernel would warn about each.
    pub fn bad_frees(&self) -> usize {
        self.bad_frees.load(Relaxed)
    }

    /// Linux `__alloc_pages` without the zeroing (always inlined: see
    /// [`Zones::alloc_pages`]).
    #[inline(always)]
    fn alloc_block(&self, gfp: GfpFlags, order: Order) -> Result<Pfn, Error> {
        if order > self.config.max_order {
            return Err(Error::OrderTooLarge {
                order: order.as_u32(),
                max: self.config.max_order.as_u32(),
            });
        }
        if gfp.contains(GfpFlags::NOFAIL) && !gfp.allows_blocking() {
            return Err(Error::InvalidGfp { gfp });
        }
        let highest = self.gfp_zone(gfp)?;
        if let Some(pfn) = self.get_page_from_freelist(order, highest, AllocFlags::WMARK_LOW) {
            return Ok(pfn);
        }
        if !self.zones[..=highest.index()].iter().any(Option::is_some) {
            return Err(Error::InvalidGfp { gfp });
        }
        self.alloc_pages_slowpath(gfp, order, highest)
            .inspect_err(|_| self.this_cpu_events().count_pgalloc_fail())
    }

    /// The `/proc/vmstat` event counters of the CPU the caller runs on now.
    #[inline]
    fn this_cpu_events(&self) -> &VmEvents {
        let cpu = self.platform.cpu_id();
        // `Zones::new` carves one set per CPU, at least one.
        &self.vm_events[cpu.min(self.vm_events.len() - 1)]
    }

    /// `gfp_zone()` on this machine's layout: `__GFP_DMA32` means NORMAL
    /// when there is no DMA32 zone.
    #[inline]
    pub fn gfp_zone(&self, gfp: GfpFlags) -> Result<ZoneType, Error> {
        gfp_zone(gfp, self.config.dma32_end.is_some())
    }

    /// Walks the zonelist from `highest` down and takes a block from the
    /// first zone that passes the watermark check.
    ///
    /// Always inlined, so the fast path's constant flags (`WMARK_LOW`
    /// alone) fold the mark's choice and the reserve arithmetic of
    /// [`watermark_ok`] away; out of line, every call paid for the slow
    /// path's cases and the loop state they keep alive. Only the preferred
    /// zone (the first present one, Linux's `ac->preferred_zoneref`) is
    /// tried inline; the zones below it, which serve a request only when
    /// the preferred one is short of pages, are a call.
    #[inline(always)]
    fn get_page_from_freelist(
        &self,
        order: Order,
        highest: ZoneType,
        flags: AllocFlags,
    ) -> Option<Pfn> {
        let reserve_idx = highest.index();
        let preferred = self.zonelist(reserve_idx).next()?;
        if let Some(pfn) = self.zone_alloc(preferred, order, reserve_idx, flags) {
            return Some(pfn);
        }
        self.fallback_alloc(order, reserve_idx, flags)
    }

    /// The zonelist's zones after the preferred one, in turn. (It finds
    /// them again rather than take the preferred one's place: the fast
    /// path then keeps no state alive for this call.)
    #[inline(never)]
    fn fallback_alloc(&self, order: Order, reserve_idx: usize, flags: AllocFlags) -> Option<Pfn> {
        self.zonelist(reserve_idx)
            .skip(1)
            .find_map(|zone| self.zone_alloc(zone, order, reserve_idx, flags))
    }

    /// The present zones a request whose highest zone has index
    /// `reserve_idx` may use, highest first.
    #[inline(always)]
    fn zonelist(&self, reserve_idx: usize) -> impl Iterator<Item = &Zone<'a>> {
        self.zones[..=reserve_idx].iter().rev().flatten()
    }

    /// A block of `zone`, if it passes the watermark check for a request
    /// whose highest zone has index `reserve_idx`.
    #[inline(always)]
    fn zone_alloc(
        &self,
        zone: &Zone<'a>,
        order: Order,
        reserve_idx: usize,
        flags: AllocFlags,
    ) -> Option<Pfn> {
        let mark = zone.marks.get(flags.level());
        let reserve = zone.marks.lowmem_reserve(reserve_idx);
        if !watermark_ok(zone.free_pages(), order, mark, reserve, flags) {
            return None;
        }
        zone.rmqueue(order, &self.platform)
    }

    /// Linux `__alloc_pages_slowpath`, without kswapd, compaction or the
    /// OOM killer.
    #[cold]
    fn alloc_pages_slowpath(
        &self,
        gfp: GfpFlags,
        order: Order,
        highest: ZoneType,
    ) -> Result<Pfn, Error> {
        let flags = gfp_to_alloc_flags(gfp);
        let mut rounds = 0;
        loop {
            if let Some(pfn) = self.get_page_from_freelist(order, highest, flags) {
                return Ok(pfn);
            }
            if !gfp.allows_blocking() {
                return Err(Error::NoMemory { order });
            }
            let progress = self.direct_reclaim(gfp, order, highest);
            if let Some(pfn) = self.get_page_from_freelist(order, highest, flags) {
                return Ok(pfn);
            }
            // Pages may sit on other CPUs' lists (Linux drains after a
            // reclaim round that did not help).
            self.drain_all_pages();
            if let Some(pfn) = self.get_page_from_freelist(order, highest, flags) {
                return Ok(pfn);
            }
            rounds += 1;
            if gfp.contains(GfpFlags::NOFAIL) {
                self.platform.wait();
                continue;
            }
            let costly = order > PAGE_ALLOC_COSTLY_ORDER;
            let give_up = gfp.contains(GfpFlags::NORETRY)
                || (costly && !gfp.contains(GfpFlags::RETRY_MAYFAIL))
                || progress == 0
                || rounds >= MAX_RECLAIM_RETRIES;
            if give_up {
                return Err(Error::NoMemory { order });
            }
        }
    }

    /// One round of direct reclaim: every registered shrinker, then the
    /// platform's hook. Returns the pages they report freed. Counted as an
    /// `allocstall` of the request's highest zone (Linux counts it against
    /// `gfp_zone(gfp)`, the reclaim index, not the zone that will give).
    fn direct_reclaim(&self, gfp: GfpFlags, order: Order, highest: ZoneType) -> usize {
        self.this_cpu_events().count_allocstall(highest);
        self.shrinkers.shrink_slab(gfp, order) + self.platform.reclaim(gfp, order)
    }

    /// Linux `drain_all_pages`: empties every CPU's per-CPU lists of every
    /// zone into the buddies, each drained as its CPU through
    /// [`PreemptControl::on_cpu`] (Linux queues the drain on each CPU). A
    /// CPU whose lists held nothing at the end of their last use is
    /// skipped without running as it, as Linux skips the CPUs without
    /// `pcp->count`: a failing allocation drains after every reclaim
    /// round, and near exhaustion the lists are mostly empty. A CPU the
    /// platform cannot run as now (a live hosted thread's) keeps its
    /// lists, at most `high` pages a zone. Pages listed during the call
    /// may stay listed. Called with no CPU pinned. O(pages listed).
    pub fn drain_all_pages(&self) {
        for zone in self.zones.iter().flatten() {
            for (cpu, pcp) in zone.pcp.iter().enumerate() {
                if pcp.nr_listed() != 0 {
                    zone.drain_pcp(cpu, &self.platform);
                }
            }
        }
    }

    /// The zone `pfn` belongs to and its index there.
    #[inline]
    pub(crate) fn zone_and_index(&self, pfn: Pfn) -> Result<(&Zone<'a>, usize), Error> {
        let page = pfn
            .checked_offset_from(self.start_pfn)
            .and_then(|i| self.mem_map.get(i))
            .ok_or(Error::PfnOutOfRange { pfn })?;
        let zone = self.zones[page.zone_type().index()]
            .as_ref()
            .ok_or(Error::PfnOutOfRange { pfn })?;
        let idx = zone.index(pfn).ok_or(Error::PfnOutOfRange { pfn })?;
        Ok((zone, idx))
    }

    /// `__GFP_ZERO` for the block just allocated at `pfn`; should the
    /// platform fail to zero a frame, the block is freed again.
    #[inline(never)]
    fn zero_new_block(&self, pfn: Pfn, order: Order) -> Result<(), Error> {
        self.zero_block(pfn, order).inspect_err(|_| {
            // Just allocated and still held by us: this free succeeds.
            let _ = self.free_block(pfn, order);
        })
    }

    /// `__GFP_ZERO`: through the direct map where the frame has an
    /// address, else through [`Platform::zero_frame`].
    #[allow(unsafe_code)]
    fn zero_block(&self, pfn: Pfn, order: Order) -> Result<(), Error> {
        for frame in (0..order.pages()).map(|i| pfn.add(i)) {
            match self.direct_map.pfn_to_ptr(frame) {
                Some(ptr) => zero_mapped_frame(ptr),
                // SAFETY: the block was just allocated for the caller of
                // `alloc_pages`, who cannot reach it before it is returned.
                None => unsafe { self.platform.zero_frame(frame)? },
            }
        }
        Ok(())
    }

    /// The platform this allocator calls (CPU ids, hooks).
    pub fn platform(&self) -> &P {
        &self.platform
    }

    /// The direct map this allocator translates through.
    pub fn direct_map(&self) -> &D {
        &self.direct_map
    }
}

/// Zeroes one direct-mapped frame we hold.
#[allow(unsafe_code)]
fn zero_mapped_frame(ptr: core::ptr::NonNull<u8>) {
    // SAFETY: the `DirectMap` contract makes `ptr` point at the frame's
    // PAGE_SIZE bytes, valid for writes while the map lives; the frame was
    // just allocated, so no one else reads or writes it.
    unsafe { ptr.as_ptr().write_bytes(0, kmm_api::PAGE_SIZE) };
}
