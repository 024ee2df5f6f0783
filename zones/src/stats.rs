//! The read side and the trait glue: counters, the invariant checker,
//! shrinker registration, and the [`FrameAllocator`] and [`PageOwner`]
//! implementations other layers consume (the `unsafe` contracts of those
//! traits are kept by the page allocator as a whole; the impls only say
//! why).
//!
//! Counters are read without locks (a snapshot may be a moment stale);
//! [`Zones::check`] takes every lock of a zone in the documented order.
//! Nothing here changes allocator state, except `set_owner`, which writes
//! only the owner word (and `PG_owned`) of a frame its caller holds.

use crate::report::{BuddyInfo, MemInfo, ZoneInfo, ZoneStats};
use crate::zone::Zone;
use crate::{Invariant, Zones, MAX_NR_ZONES};
use kmm_api::sync::Ordering::Relaxed;
use kmm_api::{
    AllocatorId, DirectMap, Error, FrameAllocator, GfpFlags, IrqGuard, Order, OwnerTag, OwnerWord,
    PageOwner, Pages, Pfn, Platform, PreemptControl, Shrinker,
};

/// A snapshot of every present zone, lowest first, from which the `/proc`
/// reports render.
#[derive(Clone, Copy, Debug)]
pub struct ZoneReport {
    stats: [Option<ZoneStats>; MAX_NR_ZONES],
    dense: [ZoneStats; MAX_NR_ZONES],
    len: usize,
}

impl ZoneReport {
    /// The present zones' snapshots, lowest first.
    pub fn zones(&self) -> &[ZoneStats] {
        &self.dense[..self.len]
    }
    /// The snapshot of one zone, if present.
    pub fn zone(&self, zone: crate::ZoneType) -> Option<&ZoneStats> {
        self.stats[zone.index()].as_ref()
    }
    /// `/proc/buddyinfo`.
    pub fn buddyinfo(&self) -> BuddyInfo<'_> {
        BuddyInfo(self.zones())
    }
    /// The watermark part of `/proc/zoneinfo`.
    pub fn zoneinfo(&self) -> ZoneInfo<'_> {
        ZoneInfo(self.zones())
    }
    /// The memory lines of `/proc/meminfo`.
    pub fn meminfo(&self) -> MemInfo {
        MemInfo::from_zones(self.zones())
    }
}

impl Zone<'_> {
    /// This zone's counters, read under the zone lock.
    fn stats<P: Platform>(&self, platform: &P) -> ZoneStats {
        let _irq = IrqGuard::new(platform);
        let buddy = self.buddy.lock();
        let max_order = buddy.max_order();
        ZoneStats {
            zone: self.zone_type,
            start_pfn: self.start_pfn,
            spanned: self.spanned,
            present: self.present,
            managed: self.managed,
            free: buddy.free_pages(),
            nr_free: core::array::from_fn(|o| {
                Order::new(o as u32)
                    .ok()
                    .filter(|&order| order <= max_order)
                    .map_or(0, |order| buddy.nr_free(order))
            }),
            max_order,
            watermarks: self.marks.watermarks(),
            lowmem_reserve: self.marks.lowmem_reserves(),
        }
    }
}

impl<'a, P: PreemptControl, D: DirectMap> Zones<'a, P, D> {
    /// Linux `nr_free_pages`: pages on every zone's free lists (pages on
    /// per-CPU lists are not counted, as in Linux).
    pub fn nr_free_pages(&self) -> usize {
        self.zones.iter().flatten().map(|z| z.free_pages()).sum()
    }

    /// A frame moved from owner-tag bits `old` to `new`.
    fn count_owned(&self, old: usize, new: usize) {
        if old != new {
            // Frames of different holders change at once: read-modify-writes.
            self.owned_pages[new].fetch_add(1, Relaxed);
            self.owned_pages[old].fetch_sub(1, Relaxed);
        }
    }

    /// Bytes of per-CPU memory the zones use (meminfo `Percpu`): every
    /// zone's per-CPU page lists and every CPU's event counters, carved at
    /// boot.
    pub fn percpu_bytes(&self) -> usize {
        let lists: usize = self
            .zones
            .iter()
            .flatten()
            .map(|z| core::mem::size_of_val(z.pcp))
            .sum();
        lists + core::mem::size_of_val(self.vm_events)
    }

    /// Frames held under `tag`'s owner words now (Linux's `NR_PAGETABLE`
    /// for [`OwnerTag::PageTable`]). Exact for layers that clear their
    /// words before freeing, as the checker requires of them.
    pub fn nr_owned_pages(&self, tag: OwnerTag) -> usize {
        let bits = OwnerWord::new(tag, 0).map_or(0, OwnerWord::to_bits);
        self.owned_pages[bits].load(Relaxed)
    }

    /// Linux `totalram_pages`: pages released to the zones at boot (free,
    /// on per-CPU lists, or held), over every zone. Fixed after boot.
    pub fn managed_pages(&self) -> usize {
        self.zones.iter().flatten().map(|z| z.managed).sum()
    }

    /// A snapshot of every zone's counters, each zone read under its lock.
    pub fn zone_stats(&self) -> [Option<ZoneStats>; MAX_NR_ZONES] {
        core::array::from_fn(|z| {
            self.zones[z]
                .as_ref()
                .map(|zone| zone.stats(&self.platform))
        })
    }

    /// A snapshot of all zones for the `/proc` reports.
    pub fn zone_report(&self) -> ZoneReport {
        let stats = self.zone_stats();
        let mut dense = [ZoneStats::empty(crate::ZoneType::Dma); MAX_NR_ZONES];
        let mut len = 0;
        for s in stats.iter().flatten() {
            dense[len] = *s;
            len += 1;
        }
        ZoneReport { stats, dense, len }
    }

    /// `/proc/meminfo`'s memory lines (MemTotal = managed pages).
    pub fn meminfo(&self) -> MemInfo {
        self.zone_report().meminfo()
    }

    /// Which zones this machine has (Linux `populated_zone`), by zone index.
    pub fn populated_zones(&self) -> [bool; MAX_NR_ZONES] {
        core::array::from_fn(|z| self.zones[z].is_some())
    }

    /// The per-CPU list sizing (`batch`, `high`) of a zone, `None` if the
    /// machine has no such zone. `high` follows the low watermark, so it
    /// changes with the `/proc/sys/vm` tunables.
    pub fn pcp_sizing(&self, zone: crate::ZoneType) -> Option<crate::PcpSizing> {
        self.zones[zone.index()].as_ref().map(Zone::pcp_sizing)
    }

    /// The invariant checker: for every zone, each per-CPU list (only
    /// `PG_pcp` blocks of the zone and the list's order, counts right), the
    /// buddy's own check, the free counter, every descriptor, and
    /// free + per-CPU + held == managed. O(frames); takes each zone lock,
    /// and runs as each CPU in turn (`PreemptControl::on_cpu`) to walk its
    /// lists, so it is called with no CPU pinned.
    ///
    /// Exact on a quiet manager: blocks move between the lists, the buddy
    /// and their holders under no common lock, so a check racing
    /// allocations or frees may report an accounting fault that is not
    /// there. A CPU the platform cannot run as now (a live hosted thread's)
    /// has its lists counted from their descriptors instead of walked.
    pub fn check(&self) -> Result<(), Invariant> {
        for zone in self.zones.iter().flatten() {
            zone.check(&self.platform)?;
        }
        Ok(())
    }

    /// Linux `register_shrinker`: `shrinker` is called by the slow path of
    /// requests that may block. [`Error::TooManyRegions`] when all
    /// [`crate::MAX_SHRINKERS`] slots are taken.
    pub fn register_shrinker(&self, shrinker: &'a dyn Shrinker) -> Result<(), Error> {
        self.shrinkers.register(shrinker)
    }

    /// Linux `unregister_shrinker`; `false` if `shrinker` was not registered.
    pub fn unregister_shrinker(&self, shrinker: &'a dyn Shrinker) -> bool {
        self.shrinkers.unregister(shrinker)
    }

    /// The descriptor of `pfn` if it lies in a held block: the one whose
    /// owner word the frame's holder may use. O(1) for the head of a block
    /// (the page `kfree` asks about for every slab of order 0), O(max_order)
    /// for a tail page, which has to find its head.
    #[inline]
    fn held_frame(&self, pfn: Pfn) -> Option<&crate::Page> {
        let page = self.pfn_to_page(pfn)?;
        if page.is_held() {
            return Some(page);
        }
        let (zone, idx) = self.zone_and_index(pfn).ok()?;
        let head = zone.enclosing_head(idx)?;
        zone.pages[head].is_held().then_some(page)
    }
}

// SAFETY: `alloc_pages` hands out each block once, as the one handle made
// with this allocator's id, until `__free_pages` takes it back; the buddy
// never lets two held blocks overlap.
#[allow(unsafe_code)]
unsafe impl<P: PreemptControl, D: DirectMap> FrameAllocator for Zones<'_, P, D> {
    #[inline]
    fn alloc_frames(&self, gfp: GfpFlags, order: Order) -> Result<Pages, Error> {
        self.alloc_pages(gfp, order)
    }
    #[inline]
    fn free_frames(&self, pages: Pages) -> Result<(), Error> {
        self.__free_pages(pages)
    }
    fn allocator_id(&self) -> AllocatorId {
        self.id
    }
}

// SAFETY: the owner word of every frame of a held block (head and tails)
// is its descriptor's `word`, written only by `set_owner`, reset to `NONE`
// when the block is handed out, and not reported once the block is freed
// (`held_frame` finds only frames of held blocks).
#[allow(unsafe_code)]
unsafe impl<P: PreemptControl, D: DirectMap> PageOwner for Zones<'_, P, D> {
    #[inline]
    fn owner(&self, pfn: Pfn) -> Option<OwnerWord> {
        self.held_frame(pfn)
            .map(|page| OwnerWord::from_bits(page.word() as usize))
    }
    unsafe fn set_owner(&self, pfn: Pfn, word: OwnerWord) -> Result<(), Error> {
        let page = self.held_frame(pfn).ok_or(Error::NotAllocated { pfn })?;
        let old = page.word() as usize & OwnerWord::TAG_MASK;
        let new = word.to_bits() & OwnerWord::TAG_MASK;
        page.set_owner_word(word);
        self.count_owned(old, new);
        Ok(())
    }
    unsafe fn replace_owner(
        &self,
        pfn: Pfn,
        current: OwnerWord,
        new: OwnerWord,
    ) -> Result<bool, Error> {
        let page = self.held_frame(pfn).ok_or(Error::NotAllocated { pfn })?;
        let swapped = page.replace_owner_word(current, new);
        if swapped {
            let tag = |word: OwnerWord| word.to_bits() & OwnerWord::TAG_MASK;
            self.count_owned(tag(current), tag(new));
        }
        Ok(swapped)
    }
}
