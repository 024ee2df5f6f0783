//! The raw-pointer side of the page table: a page-table page seen as 1024
//! atomic 32-bit entries through its direct-map pointer. The only `unsafe`
//! of the table lives here; callers pass frames the table owns.
//!
//! Entries are atomics because on hardware the MMU reads (and sets the
//! accessed/dirty bits of) entries concurrently with the kernel; relaxed
//! ordering suffices since every change is followed by the table lock's
//! release and, for removals, a TLB flush. They are `core` atomics, not
//! the loom-swappable ones: they overlay real memory, which loom cannot.

use super::pte::{Pte, PTRS_PER_PTE};
use core::marker::PhantomData;
use core::ptr::NonNull;
use core::sync::atomic::{AtomicU32, Ordering};
use kmm_api::{DirectMap, Pfn};

/// One page-table page (a PGD or a PTE page), borrowed for `'a`.
pub(super) struct TablePage<'a> {
    entries: NonNull<AtomicU32>,
    _table: PhantomData<&'a AtomicU32>,
}

impl<'a> TablePage<'a> {
    /// The page-table page in frame `pfn`, or `None` if the direct map does
    /// not reach it.
    ///
    /// # Safety
    ///
    /// `pfn` must be a frame owned by the page table for at least `'a` (no
    /// one else reads or writes it as anything but entries), and `'a` must
    /// not outlive `direct_map`.
    pub(super) unsafe fn new<D: DirectMap>(direct_map: &'a D, pfn: Pfn) -> Option<Self> {
        let ptr = direct_map.pfn_to_ptr(pfn)?;
        Some(TablePage {
            entries: ptr.cast(),
            _table: PhantomData,
        })
    }

    fn entry(&self, index: usize) -> &AtomicU32 {
        let index = index % PTRS_PER_PTE;
        // SAFETY: by `new`'s contract the frame is PAGE_SIZE bytes, valid
        // while the DirectMap lives (at least 'a) and used only as entries;
        // the direct map hands out page-aligned pointers, so 4-byte entry
        // `index` < 1024 is aligned and in bounds.
        unsafe { &*self.entries.as_ptr().add(index) }
    }

    /// Entry `index` (taken modulo the entries per page).
    pub(super) fn get(&self, index: usize) -> Pte {
        Pte(self.entry(index).load(Ordering::Relaxed))
    }

    /// Sets entry `index` (taken modulo the entries per page).
    pub(super) fn set(&self, index: usize, pte: Pte) {
        self.entry(index).store(pte.0, Ordering::Relaxed);
    }

    /// Clears every entry: a new page-table page maps nothing.
    pub(super) fn clear(&self) {
        for i in 0..PTRS_PER_PTE {
            self.set(i, Pte(0));
        }
    }
}
