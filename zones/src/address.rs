//! The address side of the page allocator API: the calls that hand out or
//! take back kernel virtual addresses (`__get_free_pages`, `free_pages`,
//! `alloc_pages_exact`), `split_page`, and the direct-map translations
//! (`page_address`, `virt_to_phys`, `phys_to_virt`, `virt_to_page`).
//!
//! Only lowmem has addresses: a request that could return a highmem page
//! where an address is expected is refused with [`Error::InvalidGfp`]. This
//! module never dereferences an address; it only translates through the
//! [`DirectMap`].
//!
//! An address is not a proof of ownership (anyone can make one), so the
//! frees that take an address (`free_pages`, `free_pages_exact`) are
//! `unsafe fn`: their caller promises it holds what it frees. Their checks
//! still refuse what they can see (a double free, a wrong order, a block a
//! layer claims) with an error and nothing changed.

use crate::{ZoneType, Zones};
use kmm_api::{
    get_order, AllocatorId, DirectMap, Error, GfpFlags, Order, Pages, Pfn, PhysAddr,
    PreemptControl, VirtAddr, PAGE_SIZE,
};
use kmm_buddy::FrameTag;

impl<P: PreemptControl, D: DirectMap> Zones<'_, P, D> {
    /// Linux `__get_free_pages`: a block of `2^order` lowmem frames, by
    /// its direct-map address. `__GFP_HIGHMEM` is refused with
    /// [`Error::InvalidGfp`]: a highmem page has no address to return.
    pub fn __get_free_pages(&self, gfp: GfpFlags, order: Order) -> Result<VirtAddr, Error> {
        if gfp.contains(GfpFlags::HIGHMEM) {
            return Err(Error::InvalidGfp { gfp });
        }
        let pages = self.alloc_pages(gfp, order)?;
        match self.page_address(pages.pfn()) {
            Some(addr) => {
                // From here the block is known by its address.
                let _ = pages.into_raw();
                Ok(addr)
            }
            None => {
                // A lowmem zone outside the direct map: a misconfigured
                // machine. Give the block back and say which frame.
                let pfn = pages.pfn();
                let _ = self.__free_pages(pages);
                Err(Error::PfnOutOfRange { pfn })
            }
        }
    }

    /// Linux `get_zeroed_page`: one zeroed lowmem page.
    pub fn get_zeroed_page(&self, gfp: GfpFlags) -> Result<VirtAddr, Error> {
        self.__get_free_pages(gfp | GfpFlags::ZERO, Order::ZERO)
    }

    /// Linux `free_pages`: frees a block by its direct-map address.
    /// [`Error::BadVirtAddr`] for an address outside the direct map or not
    /// page aligned; otherwise as [`Zones::__free_pages`], plus the checks
    /// a raw free needs ([`Error::DoubleFree`], [`Error::NotAllocated`],
    /// [`Error::WrongOrder`], [`Error::Misaligned`]).
    ///
    /// # Safety
    ///
    /// The caller holds the block at `addr` (from
    /// [`Zones::__get_free_pages`] with this `order`, or a handle it gave
    /// up with [`Pages::into_raw`]) and gives it up here. A block nobody
    /// holds is refused; a block *someone else* holds cannot be told from
    /// the caller's own.
    #[allow(unsafe_code)]
    pub unsafe fn free_pages(&self, addr: VirtAddr, order: Order) -> Result<(), Error> {
        let pfn = self.virt_to_page(addr)?;
        if addr.page_offset() != 0 {
            return Err(Error::BadVirtAddr { addr });
        }
        self.free_block(pfn, order)
    }

    /// Linux `alloc_pages_exact`: `size` bytes of lowmem rounded up to whole
    /// pages: a block of `get_order(size)` is split and the pages past the
    /// end are freed at once. Free with [`Zones::free_pages_exact`].
    ///
    /// Errors: [`Error::ZeroSize`], [`Error::SizeTooLarge`],
    /// [`Error::InvalidGfp`] for `__GFP_HIGHMEM`, else as `__get_free_pages`.
    pub fn alloc_pages_exact(&self, size: usize, gfp: GfpFlags) -> Result<VirtAddr, Error> {
        if size == 0 {
            return Err(Error::ZeroSize);
        }
        let order = get_order(size)?;
        let addr = self.__get_free_pages(gfp, order)?;
        let pfn = self.virt_to_page(addr)?;
        // SAFETY: `__get_free_pages` just handed this block to us.
        #[allow(unsafe_code)]
        let pages = unsafe { Pages::from_raw(pfn, order, self.id) };
        let used = size.div_ceil(PAGE_SIZE);
        for (i, page) in self.split_page(pages)?.enumerate() {
            if i < used {
                // Kept, and known by its address from here on.
                let _ = page.into_raw();
            } else {
                self.__free_pages(page)?;
            }
        }
        Ok(addr)
    }

    /// Linux `free_pages_exact`: frees what [`Zones::alloc_pages_exact`]
    /// returned for the same `size`. Every page is checked before any is
    /// freed, so a bad call changes nothing.
    ///
    /// # Safety
    ///
    /// As for [`Zones::free_pages`]: the caller holds those pages.
    #[allow(unsafe_code)]
    pub unsafe fn free_pages_exact(&self, addr: VirtAddr, size: usize) -> Result<(), Error> {
        if size == 0 {
            return Err(Error::ZeroSize);
        }
        if addr.page_offset() != 0 {
            return Err(Error::BadVirtAddr { addr });
        }
        let first = self.virt_to_page(addr)?;
        let pages = size.div_ceil(PAGE_SIZE);
        for i in 0..pages {
            let pfn = first
                .checked_add(i)
                .ok_or(Error::SizeTooLarge { bytes: size })?;
            if self.page_address(pfn).is_none() {
                return Err(Error::SizeTooLarge { bytes: size });
            }
            self.check_held_page(pfn)?;
        }
        for i in 0..pages {
            self.free_block(first.add(i), Order::ZERO)?;
        }
        Ok(())
    }

    /// That `pfn` is a held order-0 page no layer claims, as after
    /// `split_page`.
    fn check_held_page(&self, pfn: Pfn) -> Result<(), Error> {
        let (zone, idx) = self.zone_and_index(pfn)?;
        let page = &zone.pages[idx];
        match page.tag() {
            FrameTag::Allocated(_) if page.is_held() && page.is_owned() => {
                Err(Error::Owned { pfn })
            }
            FrameTag::Allocated(order) if page.is_held() && order == Order::ZERO => Ok(()),
            FrameTag::Allocated(order) if page.is_held() => Err(Error::WrongOrder {
                pfn,
                allocated: order,
                freed: Order::ZERO,
            }),
            _ if page.is_pcp() => Err(Error::DoubleFree { pfn }),
            FrameTag::Free(_) => Err(Error::DoubleFree { pfn }),
            _ => Err(Error::NotAllocated { pfn }),
        }
    }

    /// Linux `split_page`: the held block becomes `2^order` order-0 pages,
    /// each its own handle, freed on its own. Refused with
    /// [`Error::Foreign`] or [`Error::Owned`], the block left as it was.
    pub fn split_page(&self, pages: Pages) -> Result<SplitPages, Error> {
        if pages.allocator() != self.id {
            return Err(Error::Foreign { pfn: pages.pfn() });
        }
        let (pfn, order) = pages.into_raw();
        let (zone, idx) = self.zone_and_index(pfn)?;
        zone.split(idx, order, &self.platform)?;
        Ok(SplitPages {
            next: pfn,
            end: pfn.add(order.pages()),
            allocator: self.id,
        })
    }

    /// Linux `page_address`: the direct-map address of `pfn`, `None` for a
    /// highmem frame or a frame outside memory.
    #[inline]
    pub fn page_address(&self, pfn: Pfn) -> Option<VirtAddr> {
        match self.page_zone(pfn)? {
            ZoneType::HighMem => None,
            _ => self.direct_map.pfn_to_virt(pfn),
        }
    }

    /// Linux `page_zone`: the zone of a frame of `mem_map`.
    #[inline]
    pub fn page_zone(&self, pfn: Pfn) -> Option<ZoneType> {
        let idx = pfn.checked_offset_from(self.start_pfn)?;
        Some(self.mem_map.get(idx)?.zone_type())
    }

    /// Linux `pfn_to_page`: the descriptor of a frame of `mem_map`.
    #[inline]
    pub fn pfn_to_page(&self, pfn: Pfn) -> Option<&crate::Page> {
        self.mem_map.get(pfn.checked_offset_from(self.start_pfn)?)
    }

    /// Linux `virt_to_page` (as a frame number): the frame a direct-map
    /// address lies in; [`Error::BadVirtAddr`] outside the direct map.
    pub fn virt_to_page(&self, addr: VirtAddr) -> Result<Pfn, Error> {
        self.direct_map
            .virt_to_pfn(addr)
            .filter(|&pfn| self.page_zone(pfn).is_some_and(|z| !z.is_highmem()))
            .ok_or(Error::BadVirtAddr { addr })
    }

    /// Linux `virt_to_phys` for the direct map.
    pub fn virt_to_phys(&self, addr: VirtAddr) -> Result<PhysAddr, Error> {
        let pfn = self.virt_to_page(addr)?;
        pfn.phys()
            .checked_add(addr.page_offset() as u64)
            .ok_or(Error::BadVirtAddr { addr })
    }

    /// Linux `phys_to_virt` for the direct map; [`Error::BadPhysAddr`] for
    /// an address that is not direct-mapped lowmem.
    pub fn phys_to_virt(&self, addr: PhysAddr) -> Result<VirtAddr, Error> {
        let base = self
            .page_address(addr.pfn())
            .ok_or(Error::BadPhysAddr { addr })?;
        base.checked_add(addr.page_offset())
            .ok_or(Error::BadPhysAddr { addr })
    }
}

/// The pages of a block [`Zones::split_page`] split, each as its own
/// order-0 handle, lowest first. Pages not taken stay allocated (leaked),
/// as dropped handles do.
#[must_use = "the pages not taken from a split stay allocated"]
#[derive(Debug)]
pub struct SplitPages {
    next: Pfn,
    end: Pfn,
    allocator: AllocatorId,
}

impl Iterator for SplitPages {
    type Item = Pages;

    fn next(&mut self) -> Option<Pages> {
        if self.next >= self.end {
            return None;
        }
        let pfn = self.next;
        self.next = pfn.add(1);
        // SAFETY: `split_page` made every page of the block its own held
        // order-0 block, and each is yielded once.
        #[allow(unsafe_code)]
        Some(unsafe { Pages::from_raw(pfn, Order::ZERO, self.allocator) })
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        let left = self.end.as_usize() - self.next.as_usize();
        (left, Some(left))
    }
}

impl ExactSizeIterator for SplitPages {}
