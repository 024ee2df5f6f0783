//! The simulated machine's TLB, as far as software can tell it apart from
//! the page table: translations that outlive their page-table entry.
//!
//! On hardware, clearing a PTE does not stop a CPU from using the
//! translation its TLB cached: the old frame stays reachable at the old
//! address until the kernel flushes that address (`flush_tlb_range`,
//! Linux `flush_tlb_kernel_range`). The model keeps exactly that gap
//! visible:
//!
//! - **unmap** (`pte_cleared`): the host mapping is left in place, so an
//!   access through the old address still reaches the old frame, and the
//!   page is recorded as *stale* (virtual page → frame);
//! - **flush** of `[start, end)`: every stale page in the range is dropped,
//!   its host page becomes an inaccessible reservation (touching it
//!   faults), and the flush is counted, as a call and in pages;
//! - **map** of a page that is still stale is refused with
//!   [`Error::StaleTlb`] and counted: reusing a virtual address before its
//!   flush lets a CPU see the old frame through what the caller believes is
//!   the new mapping. That is the bug the model catches.
//!
//! What it does not refuse: handing the old *frame* out again while a
//! stale translation to it remains. Linux's lazy vmalloc purge does just
//! that on purpose: `vfree` unmaps an area and frees its frames at once,
//! and only the virtual range waits (unusable) until a batched flush, since
//! nothing may legitimately access a freed area. So frame reuse is exposed
//! as a query (`has_stale_translation`), for tests of a layer whose design
//! says it must not happen (a kmap slot, say), rather than as an error.
//!
//! State: one map from virtual page number to frame (the stale pages) and
//! a count of stale translations per frame, behind one mutex taken after
//! the page table's lock (`pte_set` and `pte_cleared` run under it) or
//! alone (`flush`). Memory is bounded by the pages of the kernel map range;
//! every operation is O(log n) in the stale pages, a flush O(log n + k)
//! for the k pages it drops.

use super::host::HostMemory;
use kmm_api::{Error, Pfn, VirtAddr, PAGE_SIZE};
use std::collections::BTreeMap;

/// Stale translations and the counters that show whether callers flush.
#[derive(Default, Debug)]
pub(super) struct Tlb {
    /// Virtual page number → the frame its stale translation reaches.
    stale: BTreeMap<usize, Pfn>,
    /// Frame number → how many stale translations reach it (never 0).
    by_frame: BTreeMap<usize, usize>,
    /// `flush` calls.
    flushes: usize,
    /// Stale pages dropped by those calls.
    flushed_pages: usize,
    /// Maps refused because the page was still stale.
    refused_maps: usize,
}

/// The counters of the simulated TLB, read together ([`super::Machine::tlb_stats`]).
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default)]
pub struct TlbStats {
    /// TLB flushes requested (`flush_tlb_range` calls), whatever they covered.
    pub flushes: usize,
    /// Stale translations those flushes dropped.
    pub flushed_pages: usize,
    /// Translations unmapped but not flushed yet.
    pub stale_pages: usize,
    /// Maps refused with [`Error::StaleTlb`]: a virtual page reused before
    /// the flush its unmap owed.
    pub refused_maps: usize,
}

impl Tlb {
    /// Admits a map at `addr`, or refuses it (counted) while a stale
    /// translation for it remains.
    pub(super) fn check_map(&mut self, addr: VirtAddr) -> Result<(), Error> {
        if self.stale.contains_key(&vpn(addr)) {
            self.refused_maps += 1;
            return Err(Error::StaleTlb { addr });
        }
        Ok(())
    }

    /// `addr`'s entry, which mapped `pfn`, was cleared: its host mapping
    /// stays until a flush covers it.
    pub(super) fn cleared(&mut self, addr: VirtAddr, pfn: Pfn) {
        if let Some(old) = self.stale.insert(vpn(addr), pfn) {
            // Cannot happen: a stale page is never mapped again, so never
            // cleared again, before its flush. Keep the counts exact anyway.
            self.forget_frame(old);
        }
        *self.by_frame.entry(pfn.as_usize()).or_insert(0) += 1;
    }

    /// Drops every stale translation in `[start, end)` (whole pages
    /// touched by the range), making each page fault on the host. A page
    /// the host refuses to unmap stays stale. Counts one flush.
    pub(super) fn flush(&mut self, host: &HostMemory, start: VirtAddr, end: VirtAddr) {
        self.flushes += 1;
        let last = end.as_usize().div_ceil(PAGE_SIZE);
        self.flushed_pages += self.drop_pages(host, vpn(start), last);
    }

    /// Drops every stale translation (the table that made them is gone).
    /// Not counted as a flush: no caller asked for it.
    pub(super) fn flush_all(&mut self, host: &HostMemory) {
        self.drop_pages(host, 0, usize::MAX);
    }

    /// Drops the stale pages numbered `[first, last)`; returns how many.
    fn drop_pages(&mut self, host: &HostMemory, first: usize, last: usize) -> usize {
        let mut dropped = 0;
        let mut from = first;
        while from < last {
            let Some((&page, &pfn)) = self.stale.range(from..last).next() else {
                break;
            };
            from = page + 1;
            // Stale pages were admitted by `pte_set`, so the window accepts
            // them; only a host out of mappings could refuse, and then the
            // page stays stale (a later map is refused rather than reaching
            // the old frame).
            if host
                .unmap(VirtAddr::new(page * PAGE_SIZE), PAGE_SIZE)
                .is_ok()
            {
                self.stale.remove(&page);
                self.forget_frame(pfn);
                dropped += 1;
            }
        }
        dropped
    }

    fn forget_frame(&mut self, pfn: Pfn) {
        if let Some(n) = self.by_frame.get_mut(&pfn.as_usize()) {
            *n -= 1;
            if *n == 0 {
                self.by_frame.remove(&pfn.as_usize());
            }
        }
    }

    /// Whether some stale translation still reaches `pfn`.
    pub(super) fn reaches(&self, pfn: Pfn) -> bool {
        self.by_frame.contains_key(&pfn.as_usize())
    }

    /// The frame `addr`'s stale translation reaches, if it has one.
    pub(super) fn stale_at(&self, addr: VirtAddr) -> Option<Pfn> {
        self.stale.get(&vpn(addr)).copied()
    }

    /// The counters.
    pub(super) fn stats(&self) -> TlbStats {
        TlbStats {
            flushes: self.flushes,
            flushed_pages: self.flushed_pages,
            stale_pages: self.stale.len(),
            refused_maps: self.refused_maps,
        }
    }
}

fn vpn(addr: VirtAddr) -> usize {
    addr.as_usize() / PAGE_SIZE
}
