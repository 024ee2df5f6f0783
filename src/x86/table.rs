//! [`X86PageTable`]: map, unmap and translate single kernel pages in the
//! two-level table, taking PTE pages from a [`FrameAllocator`].
//!
//! Lock: one spin lock (`lock`) serialises every change and walk of the
//! table, including the [`Mmu`] hook calls. Allocation of a PTE page is done
//! with the lock dropped (it may reclaim), then installed under it; a racing
//! installer wins and the spare page is freed.
//!
//! Entry states: a directory entry is zero, a PTE page the table owns
//! until it drops, or (direct map only, see `map_direct`) a 4 MiB page. A PTE is zero or present;
//! `map` only moves zero → present, `unmap` only present → zero. PTE pages
//! are kept once allocated, as Linux keeps kernel page tables.
//!
//! Ownership: every page-table page is held by the table as a raw frame
//! (its `Pages` handle given up at allocation) and carries the
//! `OwnerTag::PageTable` owner word, so the page allocator refuses any
//! free of it but the table's own, which clears the word first. Mapping
//! a frame makes it reachable at a second address, so `map`, `unmap` and
//! `map_direct` are `unsafe fn`: their caller holds what it maps.

use super::pte::{Pte, PteFlags, MAX_PTE_PFN, PGDIR_SHIFT, PTRS_PER_PGD, PTRS_PER_PTE};
use super::raw::TablePage;
use super::Mmu;
use kmm_api::sync::SpinLock;
use kmm_api::{
    DirectMap, Error, FrameAllocator, KernelPageTable, Order, OwnerTag, OwnerWord, PageOwner,
    PageProt, Pages, Pfn, PreemptControl, TlbFlush, VirtAddr, GFP_KERNEL, PAGE_SHIFT, PAGE_SIZE,
};
use kmm_zones::Zones;

/// A kernel page table over frames from `A`, reached through `D`, with
/// changes reported to `M`.
///
/// ```
/// # use kmm::x86::X86PageTable;
/// # use kmm_api::*;
/// # fn demo(alloc: impl FrameAllocator + PageOwner, dm: impl DirectMap, frame: Pages) -> Result<(), Error> {
/// // SAFETY: `dm` is the direct map of the machine `alloc` allocates from.
/// let pt = unsafe { X86PageTable::new(alloc, dm, (), (VirtAddr::new(0xf880_0000), VirtAddr::new(0xfffe_efff))) }?;
/// // SAFETY: we hold `frame` and the address is ours to map.
/// unsafe { pt.map(VirtAddr::new(0xf880_0000), frame.pfn(), PageProt::KERNEL)? };
/// assert_eq!(pt.translate(VirtAddr::new(0xf880_0123)).map(|(p, _)| p), Some(frame.pfn()));
/// // SAFETY: we made that mapping and nothing uses it any more.
/// let (_, flush) = unsafe { pt.unmap(VirtAddr::new(0xf880_0000))? };
/// flush.flush(&pt);
/// # let _ = frame.into_raw();
/// # Ok(()) }
/// ```
pub struct X86PageTable<A: FrameAllocator + PageOwner, D: DirectMap, M: Mmu> {
    pgd: Pfn,
    first: VirtAddr,
    last: VirtAddr,
    alloc: A,
    direct_map: D,
    mmu: M,
    lock: SpinLock<()>,
}

impl<A: FrameAllocator + PageOwner, D: DirectMap, M: Mmu> X86PageTable<A, D, M> {
    /// An empty table whose `map` accepts page addresses in
    /// `[range.0, range.1]` (e.g. [`crate::Layout::kernel_map_range`]). The
    /// page directory is one `GFP_KERNEL` page from `alloc`, which must be
    /// in the direct map (else [`Error::PfnOutOfRange`], the page freed).
    /// [`X86PageTable::for_zones`] is the safe form for the usual pairing.
    ///
    /// # Safety
    ///
    /// `direct_map` reaches the frames `alloc` hands out (one machine's
    /// allocator and its direct map): the table writes its pages through
    /// it, and a direct map of other memory would be written instead.
    pub unsafe fn new(
        alloc: A,
        direct_map: D,
        mmu: M,
        range: (VirtAddr, VirtAddr),
    ) -> Result<Self, Error> {
        let (first, last) = range;
        if first > last || u32::try_from(last.as_usize()).is_err() {
            return Err(Error::BadVirtAddr { addr: last });
        }
        let pgd = alloc_table_page(&alloc, &direct_map)?;
        Ok(X86PageTable {
            pgd,
            first: first.align_down(PAGE_SIZE),
            last,
            alloc,
            direct_map,
            mmu,
            lock: SpinLock::new(()),
        })
    }

    /// The frame of the page directory (what CR3 would hold).
    pub fn pgd(&self) -> Pfn {
        self.pgd
    }

    /// Allocates the PTE pages covering `[first, last]` now, so that later
    /// maps there never allocate (Linux `page_table_range_init`, used for
    /// the pkmap and fixmap, which atomic contexts map into).
    pub fn populate(&self, first: VirtAddr, last: VirtAddr) -> Result<(), Error> {
        self.check_addr(first.align_down(PAGE_SIZE))?;
        self.check_addr(last.align_down(PAGE_SIZE))?;
        let pgd_span = 1usize << PGDIR_SHIFT;
        let mut addr = first.align_down(pgd_span);
        while addr <= last {
            self.pte_page_for(addr)?;
            match addr.checked_add(pgd_span) {
                Some(next) => addr = next,
                None => break,
            }
        }
        Ok(())
    }

    fn check_addr(&self, addr: VirtAddr) -> Result<(), Error> {
        if !addr.is_aligned(PAGE_SIZE) || addr < self.first || addr > self.last {
            return Err(Error::BadVirtAddr { addr });
        }
        Ok(())
    }

    fn pgd_page(&self) -> TablePage<'_> {
        // SAFETY: the PGD frame is owned by this table until it drops, and
        // the borrow of `self` keeps the DirectMap alive as long as the view.
        // `new` checked that the direct map reaches it.
        unsafe { TablePage::new(&self.direct_map, self.pgd) }
            .expect("the page directory was checked to be in the direct map at creation")
    }

    fn pte_page(&self, pde: Pte) -> TablePage<'_> {
        // SAFETY: a present directory entry names a PTE page this table
        // allocated, owns until it drops, and checked to be in the direct map.
        unsafe { TablePage::new(&self.direct_map, pde.pfn()) }
            .expect("PTE pages were checked to be in the direct map when allocated")
    }

    /// The directory entry covering `addr`, allocating and installing a PTE
    /// page if there is none.
    fn pte_page_for(&self, addr: VirtAddr) -> Result<Pte, Error> {
        let index = pgd_index(addr);
        let existing = self.pgd_page().get(index);
        if existing.is_present() {
            return Ok(existing);
        }
        let page = alloc_table_page(&self.alloc, &self.direct_map)?;
        let _guard = self.lock.lock();
        let pgd = self.pgd_page();
        let raced = pgd.get(index);
        if raced.is_present() {
            // Another mapper installed one while we allocated.
            free_table_page(&self.alloc, page);
            return Ok(raced);
        }
        let pde = Pte::new(page, PteFlags::KERNPG_TABLE);
        pgd.set(index, pde);
        Ok(pde)
    }

    /// Calls `f` on every present PTE of the single-page range with its
    /// address (the direct map lies outside it, see `map_direct`).
    fn for_each_present(&self, mut f: impl FnMut(VirtAddr, Pte)) {
        let pgd = self.pgd_page();
        for i in pgd_index(self.first)..=pgd_index(self.last) {
            let pde = pgd.get(i);
            if !is_table(pde) {
                continue;
            }
            let ptes = self.pte_page(pde);
            for j in 0..PTRS_PER_PTE {
                let pte = ptes.get(j);
                if pte.is_present() {
                    f(VirtAddr::new((i << PGDIR_SHIFT) | (j << PAGE_SHIFT)), pte);
                }
            }
        }
    }

    /// Enters the direct map: `frames` frames from physical 0 at
    /// `page_offset` (Linux `kernel_physical_mapping_init`), as 4 MiB pages
    /// (PSE) for every whole 4 MiB and one PTE page for the rest. The MMU
    /// hook is not told: the machine maps lowmem itself at boot (or, on
    /// hardware, walks these entries).
    ///
    /// The range must start on a 4 MiB boundary, end below 4 GiB, and share
    /// no 4 MiB region with the single-page range, else
    /// [`Error::BadVirtAddr`]; an entry already there gives
    /// [`Error::AlreadyMapped`]. Either way nothing changes. O(frames / 1024).
    ///
    /// # Safety
    ///
    /// Frames `[0, frames)` are the machine's lowmem and `page_offset` is
    /// where its [`DirectMap`] promises them: the mapping only states in
    /// the table what that contract already makes true.
    pub unsafe fn map_direct(
        &self,
        page_offset: VirtAddr,
        frames: usize,
        prot: PageProt,
    ) -> Result<(), Error> {
        let span = 1usize << PGDIR_SHIFT;
        let bad = Error::BadVirtAddr { addr: page_offset };
        if frames == 0 {
            return Err(bad);
        }
        let bytes = frames.checked_mul(PAGE_SIZE).ok_or(bad)?;
        let end = page_offset.checked_add(bytes).ok_or(bad)?;
        let regions = bytes.div_ceil(span);
        let disjoint = end.as_usize() <= self.first.align_down(span).as_usize()
            || page_offset.as_usize() > self.last.as_usize();
        let fits = u32::try_from(end.as_usize() - 1).is_ok() && frames <= MAX_PTE_PFN;
        if !page_offset.is_aligned(span) || !disjoint || !fits {
            return Err(bad);
        }
        let (whole, tail) = (frames / PTRS_PER_PTE, frames % PTRS_PER_PTE);
        let tail_page = match tail {
            0 => None,
            _ => Some(alloc_table_page(&self.alloc, &self.direct_map)?),
        };
        let _guard = self.lock.lock();
        let pgd = self.pgd_page();
        let first = pgd_index(page_offset);
        if let Some(i) = (first..first + regions).find(|&i| pgd.get(i).is_present()) {
            if let Some(page) = tail_page {
                free_table_page(&self.alloc, page);
            }
            return Err(Error::AlreadyMapped {
                addr: VirtAddr::new(i << PGDIR_SHIFT),
            });
        }
        let large = PteFlags::from_prot(prot) | PteFlags::PSE;
        for r in 0..whole {
            pgd.set(first + r, Pte::new(Pfn::new(r * PTRS_PER_PTE), large));
        }
        if let Some(page) = tail_page {
            let pde = Pte::new(page, PteFlags::KERNPG_TABLE);
            let ptes = self.pte_page(pde);
            for j in 0..tail {
                let pfn = Pfn::new(whole * PTRS_PER_PTE + j);
                ptes.set(j, Pte::new(pfn, PteFlags::from_prot(prot)));
            }
            pgd.set(first + whole, pde);
        }
        Ok(())
    }

    /// Pages of page-table memory in use (the PGD plus PTE pages).
    pub fn table_pages(&self) -> usize {
        let _guard = self.lock.lock();
        let pgd = self.pgd_page();
        1 + (0..PTRS_PER_PGD).filter(|&i| is_table(pgd.get(i))).count()
    }

    /// Pages currently mapped.
    pub fn mapped_pages(&self) -> usize {
        let _guard = self.lock.lock();
        let mut n = 0;
        self.for_each_present(|_, _| n += 1);
        n
    }
}

impl<'z, 'a, P: PreemptControl, D: DirectMap + Clone, M: Mmu>
    X86PageTable<&'z Zones<'a, P, D>, D, M>
{
    /// A table whose pages come from `zones` and are reached through the
    /// zones' own direct map (the pairing [`X86PageTable::new`] asks its
    /// caller to promise, which booted zones keep by construction).
    pub fn for_zones(
        zones: &'z Zones<'a, P, D>,
        mmu: M,
        range: (VirtAddr, VirtAddr),
    ) -> Result<Self, Error> {
        // SAFETY: zones hand out frames of the machine their direct map
        // maps (`Zones::new`'s contract).
        unsafe { Self::new(zones, zones.direct_map().clone(), mmu, range) }
    }
}

/// Whether a directory entry points at a PTE page (rather than being
/// empty or a 4 MiB page).
fn is_table(pde: Pte) -> bool {
    pde.is_present() && !pde.flags().contains(PteFlags::PSE)
}

fn pgd_index(addr: VirtAddr) -> usize {
    (addr.as_usize() >> PGDIR_SHIFT) % PTRS_PER_PGD
}

fn pte_index(addr: VirtAddr) -> usize {
    (addr.as_usize() >> PAGE_SHIFT) % PTRS_PER_PTE
}

/// One zeroed page for the table, from lowmem, claimed with the
/// `PageTable` owner word and held from here on as a raw frame.
fn alloc_table_page(
    alloc: &(impl FrameAllocator + PageOwner),
    direct_map: &impl DirectMap,
) -> Result<Pfn, Error> {
    let pages = alloc.alloc_frames(GFP_KERNEL, Order::ZERO)?;
    let pfn = pages.pfn();
    // SAFETY: the frame was just allocated for the table and nobody else
    // holds it; the view ends with this function.
    let Some(page) = (unsafe { TablePage::new(direct_map, pfn) }) else {
        let _ = alloc.free_frames(pages);
        return Err(Error::PfnOutOfRange { pfn });
    };
    page.clear();
    let word = OwnerWord::new(OwnerTag::PageTable, 0).unwrap_or(OwnerWord::NONE);
    // SAFETY: we hold the frame; a `PageTable` word carries no payload
    // anyone dereferences.
    if let Err(e) = unsafe { alloc.set_owner(pfn, word) } {
        let _ = alloc.free_frames(pages);
        return Err(e);
    }
    Ok(pages.into_raw().0)
}

/// Gives back a page-table page `alloc_table_page` made: its owner word
/// cleared, then freed. A refusal would mean the allocator lost track of a
/// frame we held; nothing can be undone then (this runs in `drop`).
fn free_table_page(alloc: &(impl FrameAllocator + PageOwner), pfn: Pfn) {
    // SAFETY: the table holds the frame (made by `alloc_table_page`, freed
    // once, here) and clears its own word.
    let cleared = unsafe { alloc.set_owner(pfn, OwnerWord::NONE) };
    // SAFETY: as above: the table's own frame, given up here.
    let pages = unsafe { Pages::from_raw(pfn, Order::ZERO, alloc.allocator_id()) };
    let freed = cleared.and_then(|()| alloc.free_frames(pages));
    debug_assert!(
        freed.is_ok(),
        "page-table page {pfn:?} not freeable: {freed:?}"
    );
}

// SAFETY: `map` enters the PTE and reports it to the MMU hook before it
// returns `Ok` (undoing it if the hook fails), `unmap` clears it, and
// `translate` walks the same entries under the same lock.
unsafe impl<A: FrameAllocator + PageOwner, D: DirectMap, M: Mmu> KernelPageTable
    for X86PageTable<A, D, M>
{
    unsafe fn map(&self, addr: VirtAddr, pfn: Pfn, prot: PageProt) -> Result<(), Error> {
        self.check_addr(addr)?;
        if pfn.as_usize() >= MAX_PTE_PFN {
            return Err(Error::BadPhysAddr { addr: pfn.phys() });
        }
        let pde = self.pte_page_for(addr)?;
        let _guard = self.lock.lock();
        let ptes = self.pte_page(pde);
        let index = pte_index(addr);
        if ptes.get(index).is_present() {
            return Err(Error::AlreadyMapped { addr });
        }
        ptes.set(index, Pte::new(pfn, PteFlags::from_prot(prot)));
        if let Err(e) = self.mmu.pte_set(addr, pfn, prot) {
            ptes.set(index, Pte(0));
            return Err(e);
        }
        Ok(())
    }

    unsafe fn unmap(&self, addr: VirtAddr) -> Result<(Pfn, TlbFlush), Error> {
        self.check_addr(addr)?;
        let _guard = self.lock.lock();
        let pde = self.pgd_page().get(pgd_index(addr));
        if !pde.is_present() {
            return Err(Error::NotMapped { addr });
        }
        let ptes = self.pte_page(pde);
        let index = pte_index(addr);
        let pte = ptes.get(index);
        if !pte.is_present() {
            return Err(Error::NotMapped { addr });
        }
        ptes.set(index, Pte(0));
        self.mmu.pte_cleared(addr, pte.pfn());
        // `check_addr` bounds `addr` by `last`, which is below 4 GiB and
        // not in the top page, so the end does not wrap.
        let end = VirtAddr::new(addr.as_usize() + PAGE_SIZE);
        Ok((pte.pfn(), TlbFlush::new(addr, end)))
    }

    fn translate(&self, addr: VirtAddr) -> Option<(Pfn, PageProt)> {
        u32::try_from(addr.as_usize()).ok()?;
        let _guard = self.lock.lock();
        let pde = self.pgd_page().get(pgd_index(addr));
        if !pde.is_present() {
            return None;
        }
        if pde.flags().contains(PteFlags::PSE) {
            let pfn = pde.pfn().add(pte_index(addr));
            return Some((pfn, pde.flags().to_prot()));
        }
        let pte = self.pte_page(pde).get(pte_index(addr));
        pte.is_present().then(|| (pte.pfn(), pte.flags().to_prot()))
    }

    fn flush_tlb_range(&self, start: VirtAddr, end: VirtAddr) {
        self.mmu.flush_tlb_range(start, end);
    }
}

/// Unmaps every page of the single-page range (reporting each to the
/// [`Mmu`]) and frees the PTE pages and the page directory back to the
/// allocator. The direct map is left to the machine that made it.
impl<A: FrameAllocator + PageOwner, D: DirectMap, M: Mmu> Drop for X86PageTable<A, D, M> {
    fn drop(&mut self) {
        self.for_each_present(|addr, pte| self.mmu.pte_cleared(addr, pte.pfn()));
        let pgd = self.pgd_page();
        for i in 0..PTRS_PER_PGD {
            let pde = pgd.get(i);
            if is_table(pde) {
                free_table_page(&self.alloc, pde.pfn());
            }
        }
        free_table_page(&self.alloc, self.pgd);
    }
}
