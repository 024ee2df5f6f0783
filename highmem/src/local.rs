//! Per-CPU kmap_local slots (Linux `kmap_local_page` / `kunmap_local`,
//! `__kmap_local_pfn_prot`, `kmap_local_idx_push` / `_pop`): each CPU has a
//! stack of [`KM_MAX_IDX`] fixmap pages of its own.
//!
//! # States
//!
//! A CPU's stack has a depth `d` in `0..=KM_MAX_IDX`. Entries `0..d` are
//! mapped (the page table maps entry `i`'s address to `pfn[i]`); entries
//! `d..` are unmapped and flushed. An entry below the top may be
//! *released*: its guard was dropped out of order, so it stays mapped,
//! unused, until every entry above it is unmapped, and is then popped with
//! them. The top entry is never released (releasing it pops it).
//!
//! # Concurrency
//!
//! A stack is touched only by the context that holds its CPU through
//! [`kmm_api::PreemptControl::get_cpu`] (each mapping keeps the CPU
//! pinned until its unmap, like Linux's `migrate_disable`), so every
//! access is a relaxed load or store: no lock, no read-modify-write. The
//! words are atomics so that sharing is sound whatever a broken platform
//! does, and so that loom sees them.
//!
//! # Must never
//!
//! Unmap an entry that is not the top of its stack, map over an entry
//! still mapped, sleep, or take a lock.

use crate::HighmemError;
use kmm_api::sync::{
    AtomicBool, AtomicUsize, Ordering::Acquire, Ordering::Relaxed, Ordering::Release,
};
use kmm_api::{KernelPageTable, PageProt, Pfn, VirtAddr};

/// kmap_local slots per CPU (Linux `KM_MAX_IDX`).
pub const KM_MAX_IDX: usize = 16;

/// One CPU's kmap_local stack: its slot addresses, what each maps, and the
/// depth. The caller provides one per CPU id the platform can hand out
/// (see [`crate::Highmem::new`]), e.g. a `static` array made with
/// [`LocalStack::new`]; 320 bytes each on 64-bit (about 270 used), aligned to a
/// cache line so that two CPUs' stacks side by side never share one (each
/// kmap_local writes its CPU's depth and counter).
#[repr(align(64))]
pub struct LocalStack {
    /// Held by the one [`crate::Highmem`] using the stack.
    claimed: AtomicBool,
    depth: AtomicUsize,
    /// Bit `i`: entry `i` was released out of order.
    released: AtomicUsize,
    /// The frame entry `i` maps.
    pfn: [AtomicUsize; KM_MAX_IDX],
    /// The fixmap address of entry `i`, set at construction.
    addr: [AtomicUsize; KM_MAX_IDX],
    /// kmap_local calls of highmem pages on this CPU.
    maps: AtomicUsize,
}

impl LocalStack {
    /// An empty stack (its addresses are set by [`crate::Highmem::new`]).
    #[cfg(not(loom))]
    pub const fn new() -> Self {
        #[allow(clippy::declare_interior_mutable_const)] // only an initialiser
        const ZERO: AtomicUsize = AtomicUsize::new(0);
        LocalStack {
            claimed: AtomicBool::new(false),
            depth: ZERO,
            released: ZERO,
            pfn: [ZERO; KM_MAX_IDX],
            addr: [ZERO; KM_MAX_IDX],
            maps: ZERO,
        }
    }

    /// An empty stack (its addresses are set by [`crate::Highmem::new`]).
    #[cfg(loom)]
    pub fn new() -> Self {
        LocalStack {
            claimed: AtomicBool::new(false),
            depth: AtomicUsize::new(0),
            released: AtomicUsize::new(0),
            pfn: core::array::from_fn(|_| AtomicUsize::new(0)),
            addr: core::array::from_fn(|_| AtomicUsize::new(0)),
            maps: AtomicUsize::new(0),
        }
    }

    /// Takes the stack for one `Highmem`; `false` if another has it.
    pub(crate) fn claim(&self) -> bool {
        self.claimed
            .compare_exchange(false, true, Acquire, Relaxed)
            .is_ok()
    }

    /// Gives the stack back.
    pub(crate) fn release(&self) {
        self.claimed.store(false, Release);
    }

    pub(crate) fn set_addr(&self, slot: usize, addr: VirtAddr) {
        self.addr[slot].store(addr.as_usize(), Relaxed);
    }

    /// The fixmap address of entry `slot`.
    #[inline]
    pub(crate) fn addr(&self, slot: usize) -> VirtAddr {
        VirtAddr::new(self.addr[slot].load(Relaxed))
    }

    /// Entries mapped now.
    pub fn depth(&self) -> usize {
        self.depth.load(Relaxed)
    }

    /// kmap_local calls of highmem pages on this CPU so far.
    pub fn maps(&self) -> usize {
        self.maps.load(Relaxed)
    }

    /// The address of the entry that must be unmapped next.
    pub(crate) fn top(&self) -> Option<VirtAddr> {
        self.depth().checked_sub(1).map(|d| self.addr(d))
    }

    /// Maps `pfn` at the next entry; returns the entry.
    ///
    /// # Safety
    ///
    /// The caller holds this stack's CPU pinned (nobody else touches the
    /// stack), holds `pfn`, and `table` is the table the stack's addresses
    /// belong to.
    #[inline]
    pub(crate) unsafe fn push<T: KernelPageTable>(
        &self,
        cpu: usize,
        table: &T,
        pfn: Pfn,
    ) -> Result<(usize, VirtAddr), HighmemError> {
        let d = self.depth.load(Relaxed);
        if d >= KM_MAX_IDX {
            return Err(HighmemError::LocalStackFull { cpu });
        }
        let addr = self.addr(d);
        // SAFETY: the caller holds `pfn`; entry `d` is above the top, so
        // unmapped and flushed (every pop flushes), and only this pinned
        // context maps there.
        unsafe { table.map(addr, pfn, PageProt::KERNEL)? };
        self.pfn[d].store(pfn.as_usize(), Relaxed);
        self.depth.store(d + 1, Relaxed);
        self.maps
            .store(self.maps.load(Relaxed).wrapping_add(1), Relaxed);
        Ok((d, addr))
    }

    /// Ends entry `slot`'s use. The top is unmapped (with every released
    /// entry under it); an entry below the top is refused if `defer` is
    /// false, else released to be popped later. Returns whether the entry
    /// was unmapped now.
    ///
    /// # Safety
    ///
    /// As [`LocalStack::push`]; the caller was the user of entry `slot`
    /// and stops using its address now.
    #[inline]
    pub(crate) unsafe fn pop<T: KernelPageTable>(
        &self,
        table: &T,
        slot: usize,
        defer: bool,
    ) -> Result<bool, HighmemError> {
        let d = self.depth.load(Relaxed);
        let released = self.released.load(Relaxed);
        // The common case, kept small enough to inline: the top, with no
        // released entry under it (`released` has no bit at or above the
        // top, so zero means none at all).
        if slot + 1 == d && released == 0 {
            // SAFETY: the top entry is mapped, and its user (our caller)
            // is done.
            unsafe { self.unmap_entry(table, slot) };
            self.depth.store(slot, Relaxed);
            return Ok(true);
        }
        // SAFETY: forwarded from our caller.
        unsafe { self.pop_slow(table, slot, defer, d, released) }
    }

    /// [`LocalStack::pop`] of an entry below the top, or of the top with
    /// released entries under it; `d` and `released` as just read.
    ///
    /// # Safety
    ///
    /// As [`LocalStack::pop`].
    #[cold]
    #[inline(never)]
    unsafe fn pop_slow<T: KernelPageTable>(
        &self,
        table: &T,
        slot: usize,
        defer: bool,
        mut d: usize,
        mut released: usize,
    ) -> Result<bool, HighmemError> {
        if slot + 1 != d {
            if slot < d && defer && released & (1 << slot) == 0 {
                self.released.store(released | (1 << slot), Relaxed);
                return Ok(false);
            }
            return Err(HighmemError::NotTopOfStack {
                addr: if slot < KM_MAX_IDX {
                    self.addr(slot)
                } else {
                    VirtAddr::new(0)
                },
                top: self.top(),
            });
        }
        // SAFETY: the top entry is mapped, and its user (our caller) is done.
        unsafe { self.unmap_entry(table, slot) };
        d -= 1;
        while d > 0 && released & (1 << (d - 1)) != 0 {
            released &= !(1 << (d - 1));
            // SAFETY: a released entry has no user and is mapped.
            unsafe { self.unmap_entry(table, d - 1) };
            d -= 1;
        }
        self.released.store(released, Relaxed);
        self.depth.store(d, Relaxed);
        Ok(true)
    }

    /// Unmaps entry `slot` and flushes its page at once, on this CPU only
    /// (Linux `kunmap_local`'s `flush_tlb_one_kernel`: no other CPU
    /// reaches this CPU's slots), so the next push may map there.
    ///
    /// # Safety
    ///
    /// Entry `slot` is mapped and nobody uses it.
    #[inline]
    unsafe fn unmap_entry<T: KernelPageTable>(&self, table: &T, slot: usize) {
        // SAFETY: forwarded from our caller.
        if let Ok((_, flush)) = unsafe { table.unmap(self.addr(slot)) } {
            flush.flush_local(table);
        }
    }

    /// Every invariant of the stack against `table` (quiescent: nobody
    /// mapping on this CPU meanwhile).
    pub(crate) fn check<T: KernelPageTable>(&self, table: &T) -> Result<(), &'static str> {
        let d = self.depth();
        if d > KM_MAX_IDX {
            return Err("a kmap_local stack is deeper than KM_MAX_IDX");
        }
        let released = self.released.load(Relaxed);
        if released >> d.saturating_sub(1) != 0 {
            return Err("a released kmap_local entry at or above the top");
        }
        for slot in 0..KM_MAX_IDX {
            let mapped = table.translate(self.addr(slot)).map(|(pfn, _)| pfn);
            if slot < d {
                if mapped != Some(Pfn::new(self.pfn[slot].load(Relaxed))) {
                    return Err("a kmap_local entry does not map its page");
                }
            } else if mapped.is_some() {
                return Err("a kmap_local slot above the top is still mapped");
            }
        }
        Ok(())
    }
}

impl Default for LocalStack {
    fn default() -> Self {
        Self::new()
    }
}
