//! `struct zone`: one zone's buddy (under the zone lock), its lock-free
//! free-page counter, watermarks, lowmem reserves and per-CPU lists, and the
//! zone-level halves of allocation (`rmqueue`) and free.
//!
//! # Locks and states
//!
//! Lock order: **the CPU pinned, then the zone lock** (the `buddy` spin
//! lock), which is taken with interrupts saved, because atomic allocations
//! take it too. A CPU's per-CPU lists are reached with that CPU pinned
//! (see [`crate::pcp`]). A block is in exactly one state, recorded in its
//! head's descriptor:
//!
//! | state | buddy tag | `PG_pcp` | refcount |
//! |---|---|---|---|
//! | free in the buddy | `Free(o)` | no | 0 |
//! | on a per-CPU list | `Allocated(o)` | yes | 0 |
//! | held by a caller | `Allocated(o)` | no | 1 |
//!
//! `free_pages` mirrors the buddy's count after every change under the zone
//! lock, so watermark checks read it without the lock (Linux
//! `NR_FREE_PAGES`; pages on per-CPU lists are not counted as free).
//!
//! The watermarks, the lowmem reserves and the per-CPU `high` are tunable
//! at run time (`/proc/sys/vm`, see [`crate::sysctl`]), so they are
//! atomics too: every allocation reads them with relaxed loads and no
//! lock; a writer stores them holding the tuning lock and then the zone
//! lock. A check racing a write may combine an old value of one with a new
//! value of another (old `min`, new reserve): each value it reads was
//! current at some moment, so the check is one the zone would have made
//! just before or just after the write, as in Linux, whose readers take no
//! lock either.
//!
//! It must never hand out a block twice, take a block of another zone, or
//! change anything when it refuses a free.

use crate::check::Invariant;
use crate::page::{Page, ZoneMeta};
use crate::pcp::{PcpLists, PcpSizing, PerCpuPages, NR_PCP_ORDERS};
use crate::watermark::{WatermarkLevel, Watermarks};
use crate::{ZoneType, MAX_NR_ZONES};
use kmm_api::percpu::{CpuGuard, Pinned};
use kmm_api::sync::{AtomicUsize, Ordering::Relaxed, SpinLock, SpinLockGuard};
use kmm_api::{Error, IrqGuard, Order, Pfn, Platform, PreemptControl};
use kmm_buddy::{Buddy, FrameTag};

/// One zone.
pub(crate) struct Zone<'a> {
    pub(crate) zone_type: ZoneType,
    pub(crate) start_pfn: Pfn,
    /// Frames from the first to one past the last (holes included).
    pub(crate) spanned: usize,
    /// RAM frames in the span.
    pub(crate) present: usize,
    /// Frames released to the buddy (present minus reserved).
    pub(crate) managed: usize,
    /// This zone's slice of `mem_map`.
    pub(crate) pages: &'a [Page],
    pub(crate) buddy: SpinLock<Buddy<ZoneMeta<'a>>>,
    free_pages: AtomicUsize,
    pub(crate) marks: ZoneMarks,
    /// Pages a refill or drain moves (fixed: it depends on `managed` only).
    pcp_batch: usize,
    /// A free that leaves this many pages on a list drains; follows the
    /// low watermark, so it is rewritten with the marks.
    pcp_high: AtomicUsize,
    /// One list set per CPU.
    pub(crate) pcp: &'a [PerCpuPages],
}

/// A zone's watermarks and lowmem reserves, read lock-free on every
/// allocation and rewritten by the `/proc/sys/vm` tunables (see the module
/// documentation for what a racing reader may see).
pub(crate) struct ZoneMarks {
    /// `min`, `low`, `high`, in that order.
    wmark: [AtomicUsize; 3],
    lowmem_reserve: [AtomicUsize; MAX_NR_ZONES],
}

impl ZoneMarks {
    /// All zero: the zone gives pages to anyone until the marks are set up.
    fn zero() -> Self {
        Self {
            wmark: core::array::from_fn(|_| AtomicUsize::new(0)),
            lowmem_reserve: core::array::from_fn(|_| AtomicUsize::new(0)),
        }
    }

    /// The mark at `level`.
    #[inline]
    pub(crate) fn get(&self, level: WatermarkLevel) -> usize {
        let slot = match level {
            WatermarkLevel::Min => 0,
            WatermarkLevel::Low => 1,
            WatermarkLevel::High => 2,
        };
        self.wmark[slot].load(Relaxed)
    }

    /// The three marks (each read on its own: see the module documentation).
    pub(crate) fn watermarks(&self) -> Watermarks {
        Watermarks {
            min: self.get(WatermarkLevel::Min),
            low: self.get(WatermarkLevel::Low),
            high: self.get(WatermarkLevel::High),
        }
    }

    /// Pages kept back from a request whose highest usable zone is `highest`.
    #[inline]
    pub(crate) fn lowmem_reserve(&self, highest: usize) -> usize {
        self.lowmem_reserve[highest].load(Relaxed)
    }

    /// Every reserve of the zone, by the request's highest zone.
    pub(crate) fn lowmem_reserves(&self) -> [usize; MAX_NR_ZONES] {
        core::array::from_fn(|j| self.lowmem_reserve(j))
    }
}

/// Gives the tails of `block` (all its frames but the head) owner word
/// `NONE`.
#[inline(always)]
fn clear_tails(block: &[Page]) {
    for tail in &block[1..] {
        tail.set_owner_word(kmm_api::OwnerWord::NONE);
    }
}

/// What a zone is built from at boot.
pub(crate) struct ZoneInit<'a> {
    pub(crate) zone_type: ZoneType,
    pub(crate) present: usize,
    pub(crate) pages: &'a [Page],
    pub(crate) buddy: Buddy<ZoneMeta<'a>>,
    pub(crate) pcp: &'a [PerCpuPages],
}

impl<'a> Zone<'a> {
    /// A zone with zero marks and reserves: boot sets them up right after
    /// (`Zones::init_per_zone_wmark_min`), before any allocation.
    pub(crate) fn new(init: ZoneInit<'a>) -> Self {
        let managed = init.buddy.managed_pages();
        let sizing = PcpSizing::new(managed, 0, init.pcp.len());
        Zone {
            zone_type: init.zone_type,
            start_pfn: init.buddy.base(),
            spanned: init.pages.len(),
            present: init.present,
            managed,
            pages: init.pages,
            free_pages: AtomicUsize::new(init.buddy.free_pages()),
            buddy: SpinLock::new(init.buddy),
            marks: ZoneMarks::zero(),
            pcp_batch: sizing.batch,
            pcp_high: AtomicUsize::new(sizing.high),
            pcp: init.pcp,
        }
    }

    /// The per-CPU lists' `batch` and current `high`.
    pub(crate) fn pcp_sizing(&self) -> PcpSizing {
        PcpSizing {
            batch: self.pcp_batch,
            high: self.pcp_high.load(Relaxed),
        }
    }

    /// Installs new marks and the per-CPU `high` that follows the low one
    /// (Linux `__setup_per_zone_wmarks` for one zone, then
    /// `zone_pcp_update`). The caller holds the tuning lock, so writers
    /// never interleave; the zone lock makes the three marks change
    /// together for whoever reads them under it (reports, the checker).
    pub(crate) fn set_watermarks<P: Platform>(&self, marks: Watermarks, platform: &P) {
        {
            let _irq = IrqGuard::new(platform);
            let _zone = self.buddy.lock();
            for (slot, value) in self
                .marks
                .wmark
                .iter()
                .zip([marks.min, marks.low, marks.high])
            {
                slot.store(value, Relaxed);
            }
        }
        let high = PcpSizing::new(self.managed, marks.low, self.pcp.len()).high;
        self.pcp_high.store(high, Relaxed);
    }

    /// Installs new lowmem reserves (Linux `setup_per_zone_lowmem_reserve`
    /// for one zone); locking as [`Zone::set_watermarks`].
    pub(crate) fn set_lowmem_reserve<P: Platform>(
        &self,
        reserve: &[usize; MAX_NR_ZONES],
        platform: &P,
    ) {
        let _irq = IrqGuard::new(platform);
        let _zone = self.buddy.lock();
        for (slot, &value) in self.marks.lowmem_reserve.iter().zip(reserve) {
            slot.store(value, Relaxed);
        }
    }

    /// Pages on the buddy's free lists, without the lock.
    #[inline]
    pub(crate) fn free_pages(&self) -> usize {
        self.free_pages.load(Relaxed)
    }

    #[inline]
    fn sync_free(&self, buddy: &Buddy<ZoneMeta<'a>>) {
        self.free_pages.store(buddy.free_pages(), Relaxed);
    }

    /// The index of `pfn` in this zone, if it lies in the span.
    #[inline]
    pub(crate) fn index(&self, pfn: Pfn) -> Option<usize> {
        pfn.checked_offset_from(self.start_pfn)
            .filter(|&idx| idx < self.pages.len())
    }

    /// The CPU whose `direct` counters count a request that bypasses the
    /// lists: the caller's, or CPU 0 for an id beyond the zones' CPUs.
    /// Written under the zone lock, so no pin is needed.
    #[inline]
    fn direct_events_cpu<P: Platform>(&self, platform: &P) -> Option<&PerCpuPages> {
        self.pcp.get(platform.cpu_id()).or(self.pcp.first())
    }

    /// Runs `f` on the lists of the pinned CPU and the counters they go
    /// with, or returns `None` if this zone has no lists for it (a CPU id
    /// beyond the ones the zones were booted for; the caller then goes to
    /// the buddy). The one way to a CPU's lists: picking them by the pin's
    /// own id is what makes the access exclusive.
    #[allow(unsafe_code)]
    #[inline(always)]
    fn with_pcp<R>(
        &self,
        pinned: &Pinned,
        f: impl FnOnce(&PerCpuPages, &mut PcpLists, &Pinned) -> R,
    ) -> Option<R> {
        let pcp = self.pcp.get(pinned.cpu())?;
        // SAFETY: `pcp` is the pinned CPU's own set (indexed by its id,
        // pinned through the zones' platform by our callers), and `f` has
        // no other way to it.
        Some(unsafe { pcp.with_lists(pinned, |lists, pinned| f(pcp, lists, pinned)) })
    }

    /// Linux `rmqueue`: takes a block of `order` for a caller, from this
    /// CPU's list (refilled by a batch if empty) or, above the per-CPU
    /// orders, straight from the buddy. The watermark check is the caller's.
    ///
    /// Always inlined, with the list's pop: every allocation runs it, and
    /// out of line it was a call with its own frame per zone tried. The
    /// refill and the orders above the lists are calls.
    #[inline(always)]
    pub(crate) fn rmqueue<P: PreemptControl>(&self, order: Order, platform: &P) -> Option<Pfn> {
        let _irq = IrqGuard::new(platform);
        let idx = if order.as_usize() < NR_PCP_ORDERS {
            let pinned = CpuGuard::new(platform);
            // The head becomes held with the CPU pinned, so a drain (which
            // runs as this CPU) never sees it in between states. `pgalloc`
            // is counted by the pinned CPU, its only writer.
            let listed = self.with_pcp(&pinned, |pcp, lists, pinned| {
                let (idx, page) = match lists.pop(order.as_usize(), self.pages) {
                    Some(block) => block,
                    None => self.rmqueue_refill(lists, order)?,
                };
                page.set_held();
                pcp.listed.pgalloc.add(order.pages(), pinned);
                Some(idx)
            });
            match listed {
                Some(idx) => idx?,
                None => self.rmqueue_buddy(None, order)?,
            }
        } else {
            self.rmqueue_buddy(self.direct_events_cpu(platform), order)?
        };
        self.clear_tail_owners(idx, order);
        Some(self.start_pfn.add(idx))
    }

    /// A new holder starts with no layer's claim on any of its frames: the
    /// tails of the block of `order` at `idx` get owner word `NONE`. They
    /// are the caller's alone by now: no lock is needed.
    ///
    /// Each order of the lists slices the block at a constant size, so
    /// the compiler writes its tails straight, with one bounds check and
    /// no loop (a loop over a variable count cost 35 instructions at
    /// orders 1 to 3). An order-0 block has no tails.
    #[inline(always)]
    fn clear_tail_owners(&self, idx: usize, order: Order) {
        match order.as_u32() {
            0 => {}
            1 => clear_tails(self.block::<2>(idx)),
            2 => clear_tails(self.block::<4>(idx)),
            3 => clear_tails(self.block::<8>(idx)),
            _ => clear_tails(&self.pages[idx..idx + order.pages()]),
        }
    }

    /// The descriptors of the `N`-page block at `idx`.
    #[inline(always)]
    fn block<const N: usize>(&self, idx: usize) -> &[Page; N] {
        self.pages[idx..]
            .first_chunk()
            .expect("a block of the buddy lies inside its zone")
    }

    /// Linux `rmqueue_bulk` for an empty list: a batch of `order` from the
    /// buddy onto `lists`, and one block of it for the caller: its index
    /// and head. Out of line: one allocation in hundreds refills.
    #[inline(never)]
    fn rmqueue_refill(&self, lists: &mut PcpLists, order: Order) -> Option<(usize, &Page)> {
        let mut buddy = self.buddy.lock();
        lists.refill(
            &mut buddy,
            self.pages,
            order,
            self.pcp_sizing().refill_blocks(order),
        );
        self.sync_free(&buddy);
        drop(buddy);
        lists.pop(order.as_usize(), self.pages)
    }

    /// An allocation above the per-CPU orders (or on a CPU without lists):
    /// a block straight from the buddy under the zone lock, held before
    /// the lock drops. Its index.
    #[inline(never)]
    fn rmqueue_buddy(&self, cpu: Option<&PerCpuPages>, order: Order) -> Option<usize> {
        let mut buddy = self.buddy.lock();
        let pfn = buddy.alloc(order).ok()?;
        self.sync_free(&buddy);
        let idx = pfn.as_usize() - self.start_pfn.as_usize();
        self.pages[idx].set_held();
        if let Some(pcp) = cpu {
            pcp.direct.pgalloc.add(order.pages(), &buddy);
        }
        Some(idx)
    }

    /// The common free, which has no error to carry: a valid block of the
    /// lists' orders, listed on this CPU's list (draining a batch at
    /// `high`). `false`, with nothing changed, for anything else: the
    /// caller then takes [`Zone::free`], which makes the same checks one
    /// by one and names the error (a refused free is checked twice).
    ///
    /// Always inlined into the caller: a valid free is then no call and
    /// passes no `Result` through memory, as one through [`Zone::free`]
    /// did (its error is 24 bytes). The drain is a call.
    #[inline(always)]
    pub(crate) fn try_free_listed<P: PreemptControl>(
        &self,
        idx: usize,
        order: Order,
        max_order: Order,
        platform: &P,
    ) -> bool {
        if order > max_order
            || order.as_usize() >= NR_PCP_ORDERS
            || !self.start_pfn.add(idx).is_aligned_to_order(order.as_u32())
        {
            return false;
        }
        let page = &self.pages[idx];
        let _irq = IrqGuard::new(platform);
        let pinned = CpuGuard::new(platform);
        self.with_pcp(&pinned, |pcp, lists, pinned| {
            if self.release(page, idx, order).is_err() {
                return false;
            }
            self.list_freed(pcp, lists, pinned, page, idx, order);
            true
        })
        .unwrap_or(false)
    }

    /// Linux `__free_pages` for a pfn of this zone: validates, then puts
    /// the block on this CPU's list (draining a batch at `high`) or, above
    /// the per-CPU orders, back into the buddy. The path of every free
    /// [`Zone::try_free_listed`] declines: out of line.
    ///
    /// Errors, with nothing changed: [`Error::OrderTooLarge`],
    /// [`Error::Misaligned`], [`Error::DoubleFree`] (free in the buddy, or
    /// on a per-CPU list), [`Error::NotAllocated`], [`Error::WrongOrder`],
    /// [`Error::Owned`].
    #[inline(never)]
    pub(crate) fn free<P: PreemptControl>(
        &self,
        idx: usize,
        order: Order,
        max_order: Order,
        platform: &P,
    ) -> Result<(), Error> {
        let pfn = self.start_pfn.add(idx);
        if order > max_order {
            return Err(Error::OrderTooLarge {
                order: order.as_u32(),
                max: max_order.as_u32(),
            });
        }
        if !pfn.is_aligned_to_order(order.as_u32()) {
            return Err(Error::Misaligned { pfn, order });
        }
        let page = &self.pages[idx];
        let _irq = IrqGuard::new(platform);
        if order.as_usize() < NR_PCP_ORDERS {
            let pinned = CpuGuard::new(platform);
            let listed = self.with_pcp(&pinned, |pcp, lists, pinned| {
                self.release(page, idx, order)?;
                self.list_freed(pcp, lists, pinned, page, idx, order);
                Ok(())
            });
            match listed {
                Some(Ok(())) => return Ok(()),
                Some(Err(Some(err))) => return Err(err),
                Some(Err(None)) => return Err(self.bad_free(idx, platform)),
                None => {}
            }
        }
        self.free_to_buddy(self.direct_events_cpu(platform), page, idx, order)
    }

    /// Lists the block at `idx` (descriptor `page`) that a free just took
    /// back from its caller on `pcp`, the pinned CPU's set, and drains a
    /// batch if its lists reached `high`.
    #[inline(always)]
    fn list_freed(
        &self,
        pcp: &PerCpuPages,
        lists: &mut PcpLists,
        pinned: &Pinned,
        page: &Page,
        idx: usize,
        order: Order,
    ) {
        page.set_freed(true);
        lists.push(idx, page, order.as_usize());
        pcp.listed.pgfree.add(order.pages(), pinned);
        // Tuning may lower `high` at any time: the drain still leaves
        // fewer than whichever value it read.
        let high = self.pcp_high.load(Relaxed);
        if lists.count >= high {
            self.drain_above_high(lists, high, order);
        }
    }

    /// The drain of a free that left `high` pages or more on `lists`: a
    /// batch, or more if a higher-order refill overfilled the lists, so a
    /// free always leaves fewer than `high`. Out of line: one free in
    /// hundreds drains.
    #[inline(never)]
    fn drain_above_high(&self, lists: &mut PcpLists, high: usize, order: Order) {
        let excess = lists.count + 1 - high;
        let mut buddy = self.buddy.lock();
        lists.drain(&mut buddy, self.pages, excess.max(self.pcp_batch), order);
        self.sync_free(&buddy);
    }

    /// A free above the per-CPU orders (or on a CPU without lists): the
    /// block goes straight back into the buddy under the zone lock.
    #[inline(never)]
    fn free_to_buddy(
        &self,
        cpu: Option<&PerCpuPages>,
        page: &Page,
        idx: usize,
        order: Order,
    ) -> Result<(), Error> {
        let mut buddy = self.buddy.lock();
        match self.release(page, idx, order) {
            Ok(()) => {}
            Err(Some(err)) => return Err(err),
            Err(None) => return Err(self.classify_bad_free(idx, &buddy)),
        }
        let freed = buddy.free(self.start_pfn.add(idx), order);
        self.sync_free(&buddy);
        match (&freed, cpu) {
            (Err(_), _) => page.set_refcount(1),
            (Ok(()), cpu) => {
                page.set_freed(false);
                if let Some(pcp) = cpu {
                    pcp.direct.pgfree.add(order.pages(), &buddy);
                }
            }
        }
        freed
    }

    /// Takes the block at `idx` (descriptor `page`) back from its caller
    /// (refcount 1 → 0) if it is held with this order and no layer claims
    /// it (`PG_owned`). The refcount is taken back by compare-and-swap, so
    /// two frees of one block racing on two CPUs (under two different pcp
    /// locks) cannot both succeed: the loser is refused as a double free
    /// and the block reaches exactly one list. The winner marks the head
    /// with [`Page::set_freed`] where the block goes.
    ///
    /// `Err(None)`: the block is not held; the caller names the error with
    /// [`Zone::bad_free`] (which needs the zone lock).
    ///
    /// Always inlined: inside the inlined [`Zone::try_free_listed`], the
    /// compiler left this one load and swap as a call.
    #[inline(always)]
    fn release(&self, page: &Page, idx: usize, order: Order) -> Result<(), Option<Error>> {
        // A valid free passes with one load of `flags` and the swap; if
        // either fails nothing has changed, and the checks are made again
        // one by one to say why.
        if page.is_unclaimed_block(order) && page.try_release() {
            return Ok(());
        }
        self.refused_release(page, idx, order)
    }

    /// [`Zone::release`] one check at a time, in the order that names the
    /// error: not held, claimed by a layer, then the tag.
    #[cold]
    fn refused_release(&self, page: &Page, idx: usize, order: Order) -> Result<(), Option<Error>> {
        if !page.is_held() {
            return Err(None);
        }
        if page.is_owned() {
            return Err(Some(Error::Owned {
                pfn: self.start_pfn.add(idx),
            }));
        }
        match page.tag() {
            FrameTag::Allocated(allocated) if allocated == order => {
                if page.try_release() {
                    Ok(())
                } else {
                    Err(None)
                }
            }
            FrameTag::Allocated(allocated) => Err(Some(Error::WrongOrder {
                pfn: self.start_pfn.add(idx),
                allocated,
                freed: order,
            })),
            _ => Err(Some(Error::NotAllocated {
                pfn: self.start_pfn.add(idx),
            })),
        }
    }

    /// Why a free of a block nobody holds was refused.
    #[cold]
    fn bad_free<P: Platform>(&self, idx: usize, platform: &P) -> Error {
        let _irq = IrqGuard::new(platform);
        self.classify_bad_free(idx, &self.buddy.lock())
    }

    /// [`Zone::bad_free`] with the zone lock held.
    #[cold]
    fn classify_bad_free(&self, idx: usize, buddy: &Buddy<ZoneMeta<'a>>) -> Error {
        let pfn = self.start_pfn.add(idx);
        let head = self.enclosing_head(idx);
        let on_pcp = head.is_some_and(|head| self.pages[head].is_pcp());
        // The head of an allocated block nobody holds is on its way to a
        // per-CPU list: a free racing ours took it back a moment ago.
        let being_freed = head == Some(idx)
            && matches!(self.pages[idx].tag(), FrameTag::Allocated(_))
            && !self.pages[idx].is_held();
        // A free frame is a double free only if it was freed as a block's
        // head since it was last handed out; a frame nobody was ever given
        // (or only inside a larger block) was never allocated.
        let freed_before = buddy.is_free(pfn) && self.pages[idx].was_freed();
        if on_pcp || being_freed || freed_before {
            Error::DoubleFree { pfn }
        } else {
            Error::NotAllocated { pfn }
        }
    }

    /// The head of the block `idx` lies in, walking up the aligned blocks
    /// that could contain it. O(max_order).
    pub(crate) fn enclosing_head(&self, idx: usize) -> Option<usize> {
        let pfn = self.start_pfn.as_usize() + idx;
        for order in 0..=kmm_api::Order::LIMIT {
            let head_pfn = pfn & !((1usize << order) - 1);
            let head = head_pfn.checked_sub(self.start_pfn.as_usize())?;
            match self.pages[head].tag() {
                FrameTag::Tail => continue,
                FrameTag::Free(o) | FrameTag::Allocated(o) if o.as_u32() >= order => {
                    return Some(head)
                }
                _ => return None,
            }
        }
        None
    }

    /// Linux `split_page`: the held block of `order` at `idx` becomes
    /// `2^order` held pages. Errors as [`Zone::free`], nothing changed.
    pub(crate) fn split<P: Platform>(
        &self,
        idx: usize,
        order: Order,
        platform: &P,
    ) -> Result<(), Error> {
        let pfn = self.start_pfn.add(idx);
        if !self.pages[idx].is_held() {
            return Err(self.bad_free(idx, platform));
        }
        if self.pages[idx].is_owned() {
            return Err(Error::Owned { pfn });
        }
        let _irq = IrqGuard::new(platform);
        let mut buddy = self.buddy.lock();
        buddy.split(pfn, order)?;
        // Under the zone lock, so the checker never sees a split page unheld.
        for page in &self.pages[idx + 1..idx + order.pages()] {
            page.set_refcount(1);
        }
        Ok(())
    }

    /// Runs `f` on `cpu`'s lists as that CPU, through
    /// [`PreemptControl::on_cpu`]: `None` if the platform cannot run as it
    /// now (a live hosted thread's CPU) or the zone has no lists for it.
    /// Called with no CPU pinned.
    fn on_cpu_lists<P: PreemptControl, R>(
        &self,
        cpu: usize,
        platform: &P,
        f: impl FnOnce(&mut PcpLists) -> R,
    ) -> Option<R> {
        let (mut f, mut result) = (Some(f), None);
        platform.on_cpu(cpu, &mut || {
            // SAFETY: `on_cpu` runs this as `cpu`, exclusive with every
            // section pinned to it, and nothing else here claims it.
            #[allow(unsafe_code)]
            let pinned = unsafe { Pinned::new(cpu) };
            if let Some(f) = f.take() {
                result = self.with_pcp(&pinned, |_, lists, _| f(lists));
            }
        });
        result
    }

    /// Empties `cpu`'s lists into the buddy (Linux `drain_pages_zone`),
    /// running as that CPU. A CPU the platform cannot run as now (a live
    /// hosted thread's) keeps its lists. Called with no CPU pinned.
    pub(crate) fn drain_pcp<P: PreemptControl>(&self, cpu: usize, platform: &P) {
        self.on_cpu_lists(cpu, platform, |lists| {
            if lists.count != 0 {
                let _irq = IrqGuard::new(platform);
                let mut buddy = self.buddy.lock();
                lists.drain(&mut buddy, self.pages, usize::MAX, Order::ZERO);
                self.sync_free(&buddy);
            }
        });
    }

    /// The invariant checker for this zone: every per-CPU list (each walked
    /// as its CPU, through [`PreemptControl::on_cpu`]), the buddy, the free
    /// counter, and the accounting of every frame.
    ///
    /// Exact on a quiet zone. Blocks move between the lists, the buddy and
    /// their holders without a common lock, so a check racing allocations
    /// or frees may count a block twice or miss it, and report an
    /// accounting fault that is not there (never miss a broken list). A
    /// CPU the platform cannot run as now (a live hosted thread's) counts
    /// its listed pages from their descriptors, unwalked. Called with no
    /// CPU pinned.
    pub(crate) fn check<P: PreemptControl>(&self, platform: &P) -> Result<(), Invariant> {
        let mut listed = Some(0);
        for cpu in 0..self.pcp.len() {
            let walked = self.on_cpu_lists(cpu, platform, |lists| {
                lists.check(self.zone_type, cpu, self.pages, self.start_pfn)
            });
            match walked {
                Some(here) => {
                    let here = here?;
                    listed = listed.map(|sum| sum + here);
                }
                None => listed = None,
            }
        }
        let _irq = IrqGuard::new(platform);
        self.check_locked(&self.buddy.lock(), listed)
    }

    fn check_locked(
        &self,
        buddy: &SpinLockGuard<'_, Buddy<ZoneMeta<'a>>>,
        listed: Option<usize>,
    ) -> Result<(), Invariant> {
        let zone = self.zone_type;
        buddy
            .check()
            .map_err(|broken| Invariant::Buddy { zone, broken })?;
        if self.free_pages() != buddy.free_pages() {
            return Err(Invariant::FreeCounter {
                zone,
                recorded: self.free_pages(),
                counted: buddy.free_pages(),
            });
        }
        let (mut free, mut pcp, mut held) = (0, 0, 0);
        // One past the last frame of the held block being walked: only
        // frames of held blocks may be claimed by a layer (`PG_owned`).
        let mut held_until = 0;
        for (idx, page) in self.pages.iter().enumerate() {
            let pfn = self.start_pfn.add(idx);
            let fault = |problem| Invariant::Descriptor { pfn, problem };
            if page.zone_type() != zone {
                return Err(fault("descriptor names another zone"));
            }
            match (page.tag(), page.is_pcp(), page.is_held()) {
                (FrameTag::Free(o), false, false) => free += o.pages(),
                (FrameTag::Allocated(o), true, false) => pcp += o.pages(),
                (FrameTag::Allocated(o), false, true) => {
                    held += o.pages();
                    held_until = idx + o.pages();
                }
                (FrameTag::Reserved | FrameTag::Tail, false, false) => {}
                _ => return Err(fault("tag, PG_pcp and refcount disagree")),
            }
            if page.is_owned() && idx >= held_until {
                return Err(fault(
                    "a layer claims a frame nobody holds (free, listed or reserved)",
                ));
            }
        }
        let walked_all = listed.map_or(true, |listed| listed == pcp);
        if !walked_all || free + pcp + held != self.managed {
            return Err(Invariant::Accounting {
                zone,
                free,
                pcp: listed.unwrap_or(pcp),
                held,
                managed: self.managed,
            });
        }
        Ok(())
    }
}
