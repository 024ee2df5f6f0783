//! The page allocator's API on the [`MemoryManager`], by Linux name: the
//! block handles (`alloc_pages`, `__free_pages`), the address-returning
//! calls (`__get_free_pages`, `get_zeroed_page`, `alloc_pages_exact`), the
//! translations between handles, frame numbers, direct-map and physical
//! addresses (`page_to_pfn`, `virt_to_page`, `__pa`, `__va`, ...), and the
//! totals (`totalram_pages`, `nr_free_pages`, `si_meminfo`).
//!
//! Each call forwards to the manager's zones (see `kmm-zones` for costs and
//! error cases) and converts the error into the manager's [`Error`]. This
//! module owns no state and never touches a frame's contents.
//!
//! A safe free takes the [`Pages`] handle the allocator made; the forms
//! that take an address are `unsafe fn` (an address is not a proof of
//! ownership), and still refuse what they can see.

use crate::x86::Mmu;
use crate::{Error, MemoryManager};
use kmm_api::{DirectMap, GfpFlags, Order, Pages, Pfn, PhysAddr, PreemptControl, VirtAddr};
use kmm_zones::{Page, SplitPages};

/// The memory part of Linux's `struct sysinfo`, as [`MemoryManager::si_meminfo`]
/// fills it: counts in units of `mem_unit` bytes (one page).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct SysInfo {
    /// Pages the allocator manages (`totalram_pages`).
    pub totalram: usize,
    /// Pages free now (`nr_free_pages`).
    pub freeram: usize,
    /// Shared memory pages: 0, there is no shmem.
    pub sharedram: usize,
    /// Block-device buffer pages: 0, there is no page cache.
    pub bufferram: usize,
    /// Swap pages: 0, there is no swap.
    pub totalswap: usize,
    /// Free swap pages: 0.
    pub freeswap: usize,
    /// Managed highmem pages (`totalhigh_pages`).
    pub totalhigh: usize,
    /// Free highmem pages.
    pub freehigh: usize,
    /// Bytes per unit of the counts above: `PAGE_SIZE`.
    pub mem_unit: usize,
}

/// The page allocator's API by Linux name.
///
/// ```
/// # #[cfg(all(feature = "std", target_pointer_width = "64"))] {
/// use kmm::{MemoryManager, GFP_KERNEL, Order, PAGE_SIZE};
/// let mm = MemoryManager::hosted(8 << 20, 1)?;
/// let free = mm.nr_free_pages();
/// let page = mm.alloc_pages(GFP_KERNEL, Order::new(2)?)?;
/// assert_eq!(page.nr_pages(), 4);
/// let addr = mm.page_address(mm.page_to_pfn(&page)).unwrap();
/// assert_eq!(mm.virt_to_page(addr)?, page.pfn());
/// assert_eq!(mm.__pa(addr)?, page.phys());
/// assert_eq!(mm.__va(page.phys())?, addr);
/// mm.__free_pages(page)?;
/// mm.zones().drain_all_pages();
/// assert_eq!(mm.nr_free_pages(), free);
/// # }
/// # Ok::<(), kmm::Error>(())
/// ```
impl<P: PreemptControl + 'static, D: DirectMap + 'static, M: Mmu + 'static> MemoryManager<P, D, M> {
    /// Linux `alloc_pages`: a block of `2^order` frames under the rules of
    /// `gfp` (zone modifiers, watermarks, reclaim), zeroed for
    /// `__GFP_ZERO`, as the handle that proves the caller holds it.
    #[inline]
    pub fn alloc_pages(&self, gfp: GfpFlags, order: Order) -> Result<Pages, Error> {
        Ok(self.zones().alloc_pages(gfp, order)?)
    }

    /// Linux `alloc_page`: one frame.
    ///
    /// ```
    /// # #[cfg(all(feature = "std", target_pointer_width = "64"))] {
    /// # let mm = kmm::MemoryManager::hosted(8 << 20, 1)?;
    /// use kmm::DirectMap;
    /// let page = mm.alloc_page(kmm::GFP_KERNEL | kmm::GfpFlags::ZERO)?;
    /// assert_eq!(page.order(), kmm::Order::ZERO);
    /// let bytes = mm.page_address(page.pfn()).unwrap();
    /// // SAFETY: we hold the page; it is mapped in the direct map.
    /// let first = unsafe { *mm.zones().direct_map().virt_to_ptr(bytes) };
    /// assert_eq!(first, 0, "__GFP_ZERO zeroed it");
    /// mm.__free_page(page)?;
    /// # }
    /// # Ok::<(), kmm::Error>(())
    /// ```
    #[inline]
    pub fn alloc_page(&self, gfp: GfpFlags) -> Result<Pages, Error> {
        self.alloc_pages(gfp, Order::ZERO)
    }

    /// Linux `__free_pages`: gives a block back. Refused, the block still
    /// held, for another allocator's handle ([`kmm_api::Error::Foreign`])
    /// or a block a layer still claims ([`kmm_api::Error::Owned`]).
    #[inline]
    pub fn __free_pages(&self, pages: Pages) -> Result<(), Error> {
        Ok(self.zones().__free_pages(pages)?)
    }

    /// Linux `__free_page`: gives one page back (any block handle, as
    /// Linux's macro passes order 0 and this handle knows its order).
    #[inline]
    pub fn __free_page(&self, page: Pages) -> Result<(), Error> {
        self.__free_pages(page)
    }

    /// Linux `split_page`: a held block as `2^order` order-0 handles.
    ///
    /// ```
    /// # #[cfg(all(feature = "std", target_pointer_width = "64"))] {
    /// # let mm = kmm::MemoryManager::hosted(8 << 20, 1)?;
    /// let block = mm.alloc_pages(kmm::GFP_KERNEL, kmm::Order::new(1)?)?;
    /// let first = block.pfn();
    /// let pages: Vec<_> = mm.split_page(block)?.collect();
    /// assert_eq!(pages.iter().map(|p| p.pfn()).collect::<Vec<_>>(), [first, first.add(1)]);
    /// for page in pages {
    ///     mm.__free_page(page)?;
    /// }
    /// # }
    /// # Ok::<(), kmm::Error>(())
    /// ```
    pub fn split_page(&self, pages: Pages) -> Result<SplitPages, Error> {
        Ok(self.zones().split_page(pages)?)
    }

    /// Linux `__get_free_page`: one lowmem page, by its direct-map address.
    pub fn get_free_page(&self, gfp: GfpFlags) -> Result<VirtAddr, Error> {
        self.__get_free_pages(gfp, Order::ZERO)
    }

    /// Linux `__get_free_pages`: `2^order` lowmem pages, by their address;
    /// `__GFP_HIGHMEM` is refused (a highmem page has no address).
    pub fn __get_free_pages(&self, gfp: GfpFlags, order: Order) -> Result<VirtAddr, Error> {
        Ok(self.zones().__get_free_pages(gfp, order)?)
    }

    /// Linux `get_zeroed_page`: one zeroed lowmem page, by its address.
    ///
    /// ```
    /// # #[cfg(all(feature = "std", target_pointer_width = "64"))] {
    /// # let mm = kmm::MemoryManager::hosted(8 << 20, 1)?;
    /// use kmm::DirectMap;
    /// let addr = mm.get_zeroed_page(kmm::GFP_KERNEL)?;
    /// assert!(addr.is_aligned(kmm::PAGE_SIZE));
    /// let ptr = mm.zones().direct_map().virt_to_ptr(addr);
    /// // SAFETY: we hold the page at `addr`, mapped in the direct map.
    /// let page = unsafe { std::slice::from_raw_parts(ptr, kmm::PAGE_SIZE) };
    /// assert!(page.iter().all(|&b| b == 0));
    /// // SAFETY: we hold the page and give it up.
    /// unsafe { mm.free_page(addr)? };
    /// # }
    /// # Ok::<(), kmm::Error>(())
    /// ```
    pub fn get_zeroed_page(&self, gfp: GfpFlags) -> Result<VirtAddr, Error> {
        Ok(self.zones().get_zeroed_page(gfp)?)
    }

    /// Linux `free_page`: gives back the page at `addr`.
    ///
    /// # Safety
    ///
    /// The caller holds the page at `addr` and gives it up (the zones'
    /// `free_pages`).
    pub unsafe fn free_page(&self, addr: VirtAddr) -> Result<(), Error> {
        // SAFETY: forwarded from our caller.
        unsafe { self.free_pages(addr, Order::ZERO) }
    }

    /// Linux `free_pages`: gives back the block of `order` at `addr`. A
    /// block nobody holds is refused: [`kmm_api::Error::DoubleFree`] if it
    /// was freed before, [`kmm_api::Error::NotAllocated`] if it was never
    /// handed out.
    ///
    /// # Safety
    ///
    /// The caller holds the block at `addr` and gives it up (the zones'
    /// `free_pages`).
    pub unsafe fn free_pages(&self, addr: VirtAddr, order: Order) -> Result<(), Error> {
        // SAFETY: forwarded from our caller.
        Ok(unsafe { self.zones().free_pages(addr, order) }?)
    }

    /// Linux `alloc_pages_exact`: `size` bytes of lowmem rounded up to whole
    /// pages, not to a power of two (the pages past the end are freed).
    ///
    /// ```
    /// # #[cfg(all(feature = "std", target_pointer_width = "64"))] {
    /// # let mm = kmm::MemoryManager::hosted(8 << 20, 1)?;
    /// mm.zones().drain_all_pages();
    /// let free = mm.nr_free_pages();
    /// let addr = mm.alloc_pages_exact(5 * kmm::PAGE_SIZE, kmm::GFP_KERNEL)?;
    /// mm.zones().drain_all_pages();
    /// assert_eq!(free - mm.nr_free_pages(), 5, "5 pages, not 8");
    /// // SAFETY: we hold those 5 pages and give them up.
    /// unsafe { mm.free_pages_exact(addr, 5 * kmm::PAGE_SIZE)? };
    /// # }
    /// # Ok::<(), kmm::Error>(())
    /// ```
    pub fn alloc_pages_exact(&self, size: usize, gfp: GfpFlags) -> Result<VirtAddr, Error> {
        Ok(self.zones().alloc_pages_exact(size, gfp)?)
    }

    /// Linux `free_pages_exact`: gives back what `alloc_pages_exact`
    /// returned for the same `size`; every page is checked before any is
    /// freed.
    ///
    /// # Safety
    ///
    /// The caller holds those pages and gives them up.
    pub unsafe fn free_pages_exact(&self, addr: VirtAddr, size: usize) -> Result<(), Error> {
        // SAFETY: forwarded from our caller.
        Ok(unsafe { self.zones().free_pages_exact(addr, size) }?)
    }

    /// Linux `page_to_pfn`: the first frame of a held block.
    #[inline]
    pub fn page_to_pfn(&self, page: &Pages) -> Pfn {
        page.pfn()
    }

    /// Linux `pfn_to_page`: the descriptor of a frame (its zone, flags and
    /// count, read-only), `None` outside the managed memory map.
    ///
    /// ```
    /// # #[cfg(all(feature = "std", target_pointer_width = "64"))] {
    /// # let mm = kmm::MemoryManager::hosted(8 << 20, 1)?;
    /// let page = mm.alloc_page(kmm::GFP_KERNEL)?;
    /// assert_eq!(mm.pfn_to_page(page.pfn()).unwrap().page_count(), 1);
    /// assert!(mm.pfn_to_page(kmm::Pfn::new(usize::MAX)).is_none());
    /// mm.__free_page(page)?;
    /// # }
    /// # Ok::<(), kmm::Error>(())
    /// ```
    #[inline]
    pub fn pfn_to_page(&self, pfn: Pfn) -> Option<&Page> {
        self.zones().pfn_to_page(pfn)
    }

    /// Linux `virt_to_page`: the frame a direct-map address lies in (as
    /// its frame number; [`MemoryManager::pfn_to_page`] gives its
    /// descriptor); an address outside the direct map is
    /// [`kmm_api::Error::BadVirtAddr`].
    #[inline]
    pub fn virt_to_page(&self, addr: VirtAddr) -> Result<Pfn, Error> {
        Ok(self.zones().virt_to_page(addr)?)
    }

    /// Linux `page_address`: the direct-map address of a lowmem frame; for
    /// a highmem frame its pkmap address while it is kmapped, else `None`
    /// (it needs a kmap); `None` outside memory. O(1).
    #[inline]
    pub fn page_address(&self, pfn: Pfn) -> Option<VirtAddr> {
        self.zones()
            .page_address(pfn)
            .or_else(|| self.highmem()?.page_address_pfn(pfn))
    }

    /// Linux `virt_to_phys`: the physical address behind a direct-map
    /// address, sub-page offset kept.
    ///
    /// ```
    /// # #[cfg(all(feature = "std", target_pointer_width = "64"))] {
    /// # let mm = kmm::MemoryManager::hosted(8 << 20, 1)?;
    /// let addr = mm.get_free_page(kmm::GFP_KERNEL)?;
    /// let inside = addr.checked_add(0x123).unwrap();
    /// let phys = mm.virt_to_phys(inside)?;
    /// assert_eq!(phys.page_offset(), 0x123);
    /// assert_eq!(mm.phys_to_virt(phys)?, inside);
    /// assert!(mm.virt_to_phys(kmm::VirtAddr::new(8)).is_err());
    /// # unsafe { mm.free_page(addr)? };
    /// # }
    /// # Ok::<(), kmm::Error>(())
    /// ```
    #[inline]
    pub fn virt_to_phys(&self, addr: VirtAddr) -> Result<PhysAddr, Error> {
        Ok(self.zones().virt_to_phys(addr)?)
    }

    /// Linux `phys_to_virt`: the direct-map address of a lowmem physical
    /// address; [`kmm_api::Error::BadPhysAddr`] for highmem or a hole.
    #[inline]
    pub fn phys_to_virt(&self, addr: PhysAddr) -> Result<VirtAddr, Error> {
        Ok(self.zones().phys_to_virt(addr)?)
    }

    /// Linux `__pa`: [`MemoryManager::virt_to_phys`] (the macro's checked
    /// form: an address outside the direct map is an error, not garbage).
    #[inline]
    pub fn __pa(&self, addr: VirtAddr) -> Result<PhysAddr, Error> {
        self.virt_to_phys(addr)
    }

    /// Linux `__va`: [`MemoryManager::phys_to_virt`], checked likewise.
    #[inline]
    pub fn __va(&self, addr: PhysAddr) -> Result<VirtAddr, Error> {
        self.phys_to_virt(addr)
    }

    /// Linux `totalram_pages`: pages the zones manage (released at boot),
    /// fixed after boot.
    pub fn totalram_pages(&self) -> usize {
        self.zones().managed_pages()
    }

    /// Linux `totalhigh_pages`: managed pages of `ZONE_HIGHMEM` (0 on a
    /// machine without highmem).
    ///
    /// ```
    /// # #[cfg(all(feature = "std", target_pointer_width = "64"))] {
    /// # let mm = kmm::MemoryManager::hosted(8 << 20, 1)?;
    /// assert_eq!(mm.totalhigh_pages(), 0, "a 64-bit machine maps all RAM");
    /// assert!(mm.totalram_pages() <= mm.memory_pages());
    /// assert!(mm.nr_free_pages() < mm.totalram_pages());
    /// # }
    /// # Ok::<(), kmm::Error>(())
    /// ```
    pub fn totalhigh_pages(&self) -> usize {
        self.zones().meminfo().high_total_pages
    }

    /// Linux `nr_free_pages`: pages on the zones' free lists (pages cached
    /// on per-CPU lists are not counted, as in Linux).
    pub fn nr_free_pages(&self) -> usize {
        self.zones().nr_free_pages()
    }

    /// Linux `si_meminfo`: the memory fields of `struct sysinfo`.
    ///
    /// ```
    /// # #[cfg(all(feature = "std", target_pointer_width = "64"))] {
    /// # let mm = kmm::MemoryManager::hosted(8 << 20, 1)?;
    /// let info = mm.si_meminfo();
    /// assert_eq!(info.mem_unit, kmm::PAGE_SIZE);
    /// assert_eq!(info.totalram, mm.totalram_pages());
    /// assert_eq!((info.totalhigh, info.freehigh, info.totalswap), (0, 0, 0));
    /// assert!(info.freeram <= info.totalram);
    /// # }
    /// # Ok::<(), kmm::Error>(())
    /// ```
    pub fn si_meminfo(&self) -> SysInfo {
        let totals = self.zones().meminfo();
        SysInfo {
            totalram: totals.total_pages,
            freeram: totals.free_pages,
            sharedram: 0,
            bufferram: 0,
            totalswap: 0,
            freeswap: 0,
            totalhigh: totals.high_total_pages,
            freehigh: totals.high_free_pages,
            mem_unit: kmm_api::PAGE_SIZE,
        }
    }
}
