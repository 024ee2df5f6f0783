//! kmm-highmem: temporary kernel mappings of pages outside the direct map
//! (Linux `mm/highmem.c`, `include/linux/highmem*.h`): the pkmap pool
//! behind `kmap` / `kunmap`, `page_address` of a kmapped page, the per-CPU
//! `kmap_local_page` / `kunmap_local` stacks, and the `memcpy_page` family
//! over them.
//!
//! # What it owns
//!
//! A [`Highmem`] owns two kinds of kernel virtual pages, given at
//! construction: the pkmap range, `LAST_PKMAP` pages from `PKMAP_BASE`
//! (1024, or 512 with PAE), and [`KM_MAX_IDX`] fixmap pages per CPU id the
//! platform can hand out. It maps frames there through a
//! [`KernelPageTable`] and nothing else; it holds no frame, allocates
//! nothing (no `alloc`), and keeps its metadata in fixed tables: the pool's
//! `pkmap_count`, slot → page and the 128-bucket `page_address` hash (owned,
//! sized [`LAST_PKMAP_MAX`]), and one [`LocalStack`] per CPU (borrowed from
//! the caller, sized by `nr_cpus()`).
//!
//! # Rules it keeps
//!
//! - **Lowmem is never mapped here**: a frame the [`DirectMap`] maps gets
//!   its direct-map address, no slot and no count (on a 64-bit machine every
//!   page is lowmem and every kmap is `page_address`).
//! - **pkmap** ([`pkmap`] module): `pkmap_count` 0 = free and flushed,
//!   1 = free but maybe stale, n = n − 1 users; a mapped page's slot is
//!   reused with its count raised; one TLB flush of the whole pool per wrap
//!   of `last_pkmap_nr`; a full pool makes [`Highmem::kmap`] sleep in
//!   [`kmm_api::Platform::wait_on`] (race-free) and [`Highmem::kmap_try`] fail; a
//!   kunmap without a user is an error and never takes a count below 1.
//! - **kmap_local** ([`local`] module): strict LIFO per CPU, never sleeps,
//!   any context; the CPU stays pinned (`get_cpu`) from map to unmap.
//! - **Ownership**: the safe forms take the [`Pages`] handle (of the one
//!   allocator this `Highmem` serves: a foreign handle is refused), by
//!   `&mut` for a writable mapping and by `&` for a read-only one, and the
//!   guard borrows it for the mapping's life, so safe code can never hold
//!   two writable views of one page. The raw-[`Pfn`] forms are `unsafe fn`.
//!
//! Errors are [`HighmemError`] values; bad input never panics and never
//! changes state.
//!
//! # Costs
//!
//! kmap of a mapped page (a hit): one lock, one hash-chain walk (mapped
//! pages / 128 long on average). A miss: one PTE write, plus, once per wrap,
//! a scan of the pool and one range flush. kunmap: one lock, one hash
//! lookup. kmap_local / kunmap_local: no lock, no atomic read-modify-write:
//! a PTE write and a one-page flush each. `page_address`: one lock, one
//! hash lookup.
//!
//! # Lock order
//!
//! The platform's CPU pin (`get_cpu`) is taken before the pool lock; the
//! pool lock before the page table's own. No lock is held while waiting or
//! across a call into user code (`with_kmap_local`'s closure runs with the
//! CPU pinned and no lock held).
//!
//! # Must never
//!
//! Hand a slot to two pages; unmap a mapping while a guard or a counted
//! user holds it; reuse a slot before its TLB entry was flushed; sleep in
//! `kmap_try`, kmap_local or any unmap; reach a frame's bytes without the
//! caller's proof that it holds the frame.

#![no_std]

#[cfg(any(test, feature = "std"))]
extern crate std;

mod error;
mod helpers;
pub mod local;
mod mapping;
pub mod pkmap;
#[cfg(feature = "testing")]
pub mod testing;

pub use error::HighmemError;
pub use local::{LocalStack, KM_MAX_IDX};
pub use mapping::{Kmap, KmapLocal, KmapLocalRef, KmapRef};
pub use pkmap::{PkmapStats, SlotState, LAST_PKMAP_MAX, PA_HASH_SIZE};

use kmm_api::{
    AllocatorId, DirectMap, KernelPageTable, Pages, Pfn, PreemptControl, VirtAddr, PAGE_SIZE,
};
use mapping::LocalPin;
use pkmap::{Blocking, Pkmap};

/// Where a [`Highmem`] maps, and whose frames it accepts.
#[derive(Clone, Copy, Debug)]
pub struct HighmemConfig {
    /// `PKMAP_BASE`: the first pkmap page.
    pub pkmap_base: VirtAddr,
    /// `LAST_PKMAP`: pkmap slots, 1..=[`LAST_PKMAP_MAX`] (1024 on i386,
    /// 512 with PAE).
    pub last_pkmap: usize,
    /// The frame allocator whose [`Pages`] handles the safe forms accept.
    pub allocator: AllocatorId,
}

/// The kmap pool and kmap_local stacks of one machine.
///
/// `T` is the kernel page table the slots are mapped in, `P` the platform
/// (CPU pinning, interrupt masking, the wait), `D` the direct map (which
/// frames are lowmem, and the pointer through which this code reaches a
/// machine address).
pub struct Highmem<'a, T: KernelPageTable, P: PreemptControl, D: DirectMap> {
    table: T,
    platform: P,
    direct: D,
    allocator: AllocatorId,
    pool: Pkmap,
    /// One claimed stack per CPU id below `nr_cpus()`.
    local: &'a [LocalStack],
}

/// Frees the pool's unused slots (one flush) and gives the stacks back.
/// Slots with raw users (`kmap_pfn` not undone) stay mapped.
impl<T: KernelPageTable, P: PreemptControl, D: DirectMap> Drop for Highmem<'_, T, P, D> {
    fn drop(&mut self) {
        self.kmap_flush_unused();
        self.local.iter().for_each(LocalStack::release);
    }
}

impl<'a, T: KernelPageTable, P: PreemptControl, D: DirectMap> Highmem<'a, T, P, D> {
    /// The pool over `config`'s pkmap range and the kmap_local stacks in
    /// `local` (one per CPU id below `platform.nr_cpus()`), whose slot
    /// `slot` of CPU `cpu` lies at `local_addr(cpu, slot)` (the machine
    /// layout's `kmap_local_addr`).
    ///
    /// Refused with [`HighmemError::BadConfig`] if the slot count is
    /// outside `1..=LAST_PKMAP_MAX`, an address is unaligned, missing,
    /// overlaps another or the direct map, or is already mapped, or there
    /// are fewer stacks than CPUs.
    ///
    /// # Safety
    ///
    /// - The pkmap range and every kmap_local address are kernel pages of
    ///   `table` that nothing but this value maps or unmaps while it lives.
    /// - `direct.virt_to_ptr(addr)` reaches what `table` maps at `addr` (on
    ///   hardware the identity; the simulated machine's window), and
    ///   `table`, `direct` and `config.allocator` are of one machine: a
    ///   handle of that allocator names frames `table` maps by number.
    /// - `platform`'s [`PreemptControl::get_cpu`] nests: a context that has
    ///   its CPU pinned and pins again is handed the same id and stays
    ///   pinned until its last `put_cpu` (as Linux's `preempt_disable`
    ///   nests; the hosted and simulated platforms do).
    pub unsafe fn new(
        table: T,
        platform: P,
        direct: D,
        config: HighmemConfig,
        local: &'a [LocalStack],
        local_addr: impl Fn(usize, usize) -> Option<VirtAddr>,
    ) -> Result<Self, HighmemError> {
        let bad = |reason| Err(HighmemError::BadConfig { reason });
        let slots = config.last_pkmap;
        if slots == 0 || slots > LAST_PKMAP_MAX {
            return bad("LAST_PKMAP must be 1..=1024");
        }
        let base = config.pkmap_base;
        if !base.is_aligned(PAGE_SIZE) {
            return bad("PKMAP_BASE is not page aligned");
        }
        let Some(pool_end) = base.checked_add(slots * PAGE_SIZE) else {
            return bad("the pkmap range wraps the address space");
        };
        let nr_cpus = platform.nr_cpus();
        if nr_cpus == 0 || local.len() < nr_cpus {
            return bad("fewer kmap_local stacks than CPUs");
        }
        let local = &local[..nr_cpus];
        for (i, stack) in local.iter().enumerate() {
            if !stack.claim() {
                local[..i].iter().for_each(LocalStack::release);
                return bad("a kmap_local stack is in use by another Highmem");
            }
        }
        let release = || local.iter().for_each(LocalStack::release);
        if let Err(reason) =
            Self::set_local_addrs(&table, &direct, base, pool_end, local, local_addr)
        {
            release();
            return bad(reason);
        }
        let pool = Pkmap::new(base, slots);
        for nr in 0..slots {
            let addr = pool.addr(nr);
            if table.translate(addr).is_some() || direct.virt_to_pfn(addr).is_some() {
                release();
                return bad("a pkmap slot is already mapped or in the direct map");
            }
        }
        Ok(Highmem {
            table,
            platform,
            direct,
            allocator: config.allocator,
            pool,
            local,
        })
    }

    /// Records each stack's slot addresses, refusing bad ones.
    fn set_local_addrs(
        table: &T,
        direct: &D,
        base: VirtAddr,
        pool_end: VirtAddr,
        local: &[LocalStack],
        local_addr: impl Fn(usize, usize) -> Option<VirtAddr>,
    ) -> Result<(), &'static str> {
        for (cpu, stack) in local.iter().enumerate() {
            if stack.depth() != 0 {
                return Err("a kmap_local stack is not empty");
            }
            for slot in 0..KM_MAX_IDX {
                let addr = local_addr(cpu, slot)
                    .ok_or("a CPU below nr_cpus has no kmap_local slot address")?;
                if !addr.is_aligned(PAGE_SIZE) || addr.as_usize() == 0 {
                    return Err("a kmap_local slot address is not page aligned");
                }
                if (addr >= base && addr < pool_end) || direct.virt_to_pfn(addr).is_some() {
                    return Err("a kmap_local slot overlaps the pkmap range or the direct map");
                }
                if table.translate(addr).is_some() {
                    return Err("a kmap_local slot is already mapped");
                }
                stack.set_addr(slot, addr);
            }
        }
        // Distinct addresses: two slots at one address would map two pages
        // over each other.
        let all = local
            .iter()
            .flat_map(|s| (0..KM_MAX_IDX).map(|i| s.addr(i)));
        for (i, a) in all.clone().enumerate() {
            if all.clone().skip(i + 1).any(|b| b == a) {
                return Err("two kmap_local slots share an address");
            }
        }
        Ok(())
    }
    /// The page table.
    pub fn table(&self) -> &T {
        &self.table
    }

    /// The platform.
    pub fn platform(&self) -> &P {
        &self.platform
    }

    /// The direct map.
    pub fn direct_map(&self) -> &D {
        &self.direct
    }

    /// `LAST_PKMAP`.
    pub fn last_pkmap(&self) -> usize {
        self.pool.slots()
    }

    /// Linux `PKMAP_ADDR(nr)`, `None` past the pool.
    pub fn pkmap_addr(&self, nr: usize) -> Option<VirtAddr> {
        (nr < self.pool.slots()).then(|| self.pool.addr(nr))
    }

    /// Linux `PKMAP_NR(addr)`, `None` outside the pool.
    pub fn pkmap_nr(&self, addr: VirtAddr) -> Option<usize> {
        self.pool.nr(addr)
    }

    /// The fixmap address of kmap_local slot `slot` of `cpu`.
    pub fn kmap_local_addr(&self, cpu: usize, slot: usize) -> Option<VirtAddr> {
        (slot < KM_MAX_IDX)
            .then(|| self.local.get(cpu).map(|s| s.addr(slot)))
            .flatten()
    }

    /// Slot `nr`'s `pkmap_count`, decoded; `None` past the pool.
    pub fn pkmap_slot(&self, nr: usize) -> Option<SlotState> {
        self.pool.slot(&self.platform, nr)
    }

    /// Linux `last_pkmap_nr`: the slot handed out last.
    pub fn last_pkmap_nr(&self) -> usize {
        self.pool.last_pkmap_nr(&self.platform)
    }

    /// The pool's counters.
    pub fn stats(&self) -> PkmapStats {
        self.pool.stats(&self.platform)
    }

    /// kmap_local calls of highmem pages so far, summed over the CPUs.
    pub fn local_maps(&self) -> usize {
        self.stacks().iter().map(LocalStack::maps).sum()
    }

    /// Entries on `cpu`'s kmap_local stack.
    pub fn local_depth(&self, cpu: usize) -> Option<usize> {
        self.stacks().get(cpu).map(LocalStack::depth)
    }

    fn stacks(&self) -> &[LocalStack] {
        self.local
    }

    /// Whether `pfn` is outside the direct map.
    #[inline]
    pub fn is_highmem(&self, pfn: Pfn) -> bool {
        self.direct.pfn_to_virt(pfn).is_none()
    }

    /// The frame `index` of `pages`, refused if the handle is another
    /// allocator's or the index is past the block.
    #[inline]
    fn frame(&self, pages: &Pages, index: usize) -> Result<Pfn, HighmemError> {
        if pages.allocator() != self.allocator {
            return Err(HighmemError::Foreign { pfn: pages.pfn() });
        }
        if index >= pages.nr_pages() {
            return Err(HighmemError::PageIndex {
                index,
                nr_pages: pages.nr_pages(),
            });
        }
        Ok(pages.pfn().add(index))
    }

    // ---- page_address ------------------------------------------------

    /// Linux `page_address`: the direct-map address of a lowmem page; the
    /// pkmap address of a kmapped highmem page (count ≥ 1); `None` for a
    /// highmem page with no slot. O(1): one hash-bucket walk. Only an
    /// address: reaching its bytes needs a kmap.
    pub fn page_address(&self, pages: &Pages) -> Option<VirtAddr> {
        let pfn = self.frame(pages, 0).ok()?;
        self.page_address_pfn(pfn)
    }

    /// [`Highmem::page_address`] of a raw frame (safe: it only reads).
    pub fn page_address_pfn(&self, pfn: Pfn) -> Option<VirtAddr> {
        match self.direct.pfn_to_virt(pfn) {
            Some(addr) => Some(addr),
            None => self.pool.page_address(&self.platform, pfn),
        }
    }

    // ---- pkmap: raw forms ------------------------------------------------

    /// Linux `kmap` of a raw frame: its direct-map address if lowmem, else
    /// a pkmap slot (the page's own if it has one, its count raised),
    /// sleeping in [`kmm_api::Platform::wait_on`] while every slot has
    /// users. Not for atomic context.
    ///
    /// # Safety
    ///
    /// The caller holds `pfn` for as long as it is mapped, and undoes the
    /// map with exactly one [`Highmem::kunmap_pfn`], after which it stops
    /// using the address.
    pub unsafe fn kmap_pfn(&self, pfn: Pfn) -> Result<VirtAddr, HighmemError> {
        // SAFETY: forwarded from our caller.
        unsafe { self.kmap_inner(pfn, Blocking::MaySleep) }
    }

    /// [`Highmem::kmap_pfn`] that never sleeps: [`HighmemError::PoolFull`]
    /// when every slot has users. Usable from atomic context.
    ///
    /// # Safety
    ///
    /// As [`Highmem::kmap_pfn`].
    pub unsafe fn kmap_try_pfn(&self, pfn: Pfn) -> Result<VirtAddr, HighmemError> {
        // SAFETY: forwarded from our caller.
        unsafe { self.kmap_inner(pfn, Blocking::Atomic) }
    }

    #[inline]
    unsafe fn kmap_inner(&self, pfn: Pfn, blocking: Blocking) -> Result<VirtAddr, HighmemError> {
        if let Some(addr) = self.direct.pfn_to_virt(pfn) {
            return Ok(addr);
        }
        // SAFETY: our caller holds `pfn`; the pool's range is ours and the
        // table is the one it was made over (the contract of `new`).
        unsafe {
            self.pool
                .kmap_high(&self.table, &self.platform, pfn, blocking)
        }
    }

    /// Linux `kunmap` of a raw frame: one user fewer (lowmem: nothing).
    /// A page with no kmap user is refused with
    /// [`HighmemError::NotMapped`] and nothing changes.
    ///
    /// # Safety
    ///
    /// The caller is a user of `pfn`'s kmap (a [`Highmem::kmap_pfn`] it has
    /// not undone) and stops using the address now; it must not undo a
    /// guard's mapping.
    pub unsafe fn kunmap_pfn(&self, pfn: Pfn) -> Result<(), HighmemError> {
        if self.direct.pfn_to_virt(pfn).is_some() {
            return Ok(());
        }
        // SAFETY: forwarded from our caller.
        unsafe { self.pool.kunmap_high(&self.platform, pfn) }
    }

    /// Linux `kmap_flush_unused`: unmaps every pkmap slot that has no
    /// users (one TLB flush), so their pages lose their pkmap address.
    pub fn kmap_flush_unused(&self) {
        self.pool.kmap_flush_unused(&self.table, &self.platform)
    }

    // ---- kmap_local: raw forms -------------------------------------------

    /// Linux `kmap_local_pfn`: maps `pfn` at this CPU's next kmap_local
    /// slot (lowmem: its direct-map address, no slot) and keeps the CPU
    /// pinned until the matching [`Highmem::kunmap_local_addr`]. Never
    /// sleeps; [`HighmemError::LocalStackFull`] past [`KM_MAX_IDX`].
    ///
    /// # Safety
    ///
    /// The caller holds `pfn` while it is mapped, uses the address only on
    /// this thread, and unmaps in strict reverse order of mapping with
    /// [`Highmem::kunmap_local_addr`], never a guard's mapping.
    pub unsafe fn kmap_local_pfn(&self, pfn: Pfn) -> Result<VirtAddr, HighmemError> {
        if let Some(addr) = self.direct.pfn_to_virt(pfn) {
            return Ok(addr);
        }
        // SAFETY: forwarded from our caller.
        unsafe { self.local_push(pfn) }.map(|(_, addr)| addr)
    }

    /// Linux `kunmap_local(addr)`: unmaps the most recent kmap_local of
    /// this CPU and unpins it once. A direct-map address is ignored (as
    /// Linux ignores lowmem); any other address that is not the top of
    /// this CPU's stack (an out-of-order or double unmap) is refused with
    /// [`HighmemError::NotTopOfStack`] and nothing changes.
    ///
    /// # Safety
    ///
    /// `addr` came from [`Highmem::kmap_local_pfn`] on this thread and the
    /// caller stops using it now.
    pub unsafe fn kunmap_local_addr(&self, addr: VirtAddr) -> Result<(), HighmemError> {
        if self.direct.virt_to_pfn(addr).is_some() {
            return Ok(());
        }
        let cpu = self.platform.get_cpu();
        let stack = &self.local[cpu];
        let result = match stack.top() {
            Some(top) if top == addr => {
                // SAFETY: we hold the CPU pinned; the caller ends its use
                // of the top entry.
                unsafe { stack.pop(&self.table, stack.depth() - 1, false) }
            }
            top => Err(HighmemError::NotTopOfStack { addr, top }),
        };
        if result.is_ok() {
            // The pin the map took.
            self.platform.put_cpu(cpu);
        }
        self.platform.put_cpu(cpu);
        result.map(|_| ())
    }

    /// Pins the CPU and maps `pfn` (highmem) on its stack; unpins on error.
    ///
    /// # Safety
    ///
    /// The caller holds `pfn` while it is mapped.
    #[inline]
    unsafe fn local_push(&self, pfn: Pfn) -> Result<(LocalPin<'_>, VirtAddr), HighmemError> {
        let cpu = self.platform.get_cpu();
        let stack = &self.local[cpu];
        // SAFETY: CPU `cpu` is pinned by us (the stack is ours alone), the
        // caller holds `pfn`, the addresses are this table's (`new`).
        match unsafe { stack.push(cpu, &self.table, pfn) } {
            Ok((slot, addr)) => Ok((LocalPin { stack, cpu, slot }, addr)),
            Err(e) => {
                self.platform.put_cpu(cpu);
                Err(e)
            }
        }
    }

    // ---- the invariant checker ---------------------------------------

    /// Every invariant of the pool and of each CPU's kmap_local stack,
    /// against the page table: the first broken one. For quiescent states
    /// (no kmap_local in progress on another thread).
    pub fn check(&self) -> Result<(), &'static str> {
        self.pool.check(&self.table, &self.platform)?;
        for stack in self.stacks() {
            stack.check(&self.table)?;
        }
        Ok(())
    }
}
