//! The x86 32-bit two-level page table (non-PAE): one page directory (PGD)
//! of 1024 four-byte entries, each pointing at a PTE page of 1024 entries,
//! so one PTE page maps 4 MiB. Owns the kernel half's mappings: the direct
//! map of lowmem, entered once at boot with 4 MiB pages (PSE), and the
//! single pages of vmalloc, pkmap and the fixmap, mapped and unmapped one
//! by one in a range disjoint from it.
//!
//! Never: map over a present entry, map outside the range it was built
//! for, or dereference a physical address: page-table pages are reached
//! only through the [`kmm_api::DirectMap`] (module `raw`, the one place with
//! `unsafe`).
//!
//! PAE's three-level format (64-bit entries, 2 MiB PMDs, an NX bit) is not
//! implemented yet; the PAE *layout* arithmetic is, in [`crate::layout`].

mod pte;
mod raw;
mod table;

pub use pte::{PteFlags, PTRS_PER_PGD, PTRS_PER_PTE};
pub use table::X86PageTable;

use kmm_api::{Error, PageProt, Pfn, VirtAddr};

/// What the machine must do when the page table changes: the hook between
/// the table in memory and the translation hardware (or its simulation).
///
/// `pte_set` and `pte_cleared` are called with the table lock held, for one
/// page at a time; `flush_tlb_range` without it. None may call back into
/// the table. On hardware `pte_set` and `pte_cleared` do nothing (the MMU
/// walks the table itself) and `flush_tlb_range` invalidates the TLB; the
/// simulated machine mirrors each change into host mappings and models the
/// TLB: a cleared entry's translation stays usable until it is flushed.
pub trait Mmu: Sync {
    /// A not-present entry for `addr` became present, mapping `pfn`. An
    /// error undoes the entry and is returned to the caller of `map`
    /// (e.g. the simulated machine's [`Error::StaleTlb`] when `addr`'s
    /// previous translation was never flushed).
    fn pte_set(&self, addr: VirtAddr, pfn: Pfn, prot: PageProt) -> Result<(), Error> {
        let _ = (addr, pfn, prot);
        Ok(())
    }

    /// The present entry for `addr`, which mapped `pfn`, was cleared. A
    /// TLB may still hold the translation until `flush_tlb_range` covers
    /// `addr`.
    fn pte_cleared(&self, addr: VirtAddr, pfn: Pfn) {
        let _ = (addr, pfn);
    }

    /// Invalidates cached translations for `[start, end)`.
    fn flush_tlb_range(&self, start: VirtAddr, end: VirtAddr);
}

/// A table nobody walks (tests, or a table built before paging is on):
/// changes need no mirroring and there is no TLB to flush.
impl Mmu for () {
    fn flush_tlb_range(&self, _start: VirtAddr, _end: VirtAddr) {}
}

impl<T: Mmu + ?Sized> Mmu for &T {
    fn pte_set(&self, addr: VirtAddr, pfn: Pfn, prot: PageProt) -> Result<(), Error> {
        (**self).pte_set(addr, pfn, prot)
    }
    fn pte_cleared(&self, addr: VirtAddr, pfn: Pfn) {
        (**self).pte_cleared(addr, pfn)
    }
    fn flush_tlb_range(&self, start: VirtAddr, end: VirtAddr) {
        (**self).flush_tlb_range(start, end)
    }
}

#[cfg(test)]
mod tests;
