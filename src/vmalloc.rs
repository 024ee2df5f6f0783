//! vmalloc on the [`MemoryManager`], by Linux name: `vmalloc` and its
//! variants, `vfree`, `vmap`, `ioremap` and their frees, the `vm_area`
//! calls, the translations, and `kvmalloc` / `kvfree`, which pick kmalloc
//! or vmalloc by size and tell them apart in O(1).
//!
//! Each call forwards to the manager's vmalloc layer (`kmm-vmarea`'s
//! `Vmalloc`, over the manager's zones and kernel page table) and returns
//! pointers as the kmalloc family does (through the machine's direct map:
//! the window on the simulated machine, the address itself on hardware).
//! A machine without a kernel page table (the 64-bit preset) refuses the
//! vmalloc calls with [`VmareaError::NoVmalloc`]; `kvmalloc` then stays
//! with kmalloc. This module owns no state and checks what only the
//! manager knows: that `ioremap` is never handed RAM the zones manage.

use crate::x86::Mmu;
use crate::{Error, MemoryManager};
use core::ptr::NonNull;
use kmm_api::{
    DirectMap, GfpFlags, PageProt, Pages, Pfn, PhysAddr, PreemptControl, VirtAddr, PAGE_SIZE,
};
use kmm_vmarea::{VmFlags, VmapArea, VmareaError};

/// `/proc/vmallocinfo` of a manager (see [`MemoryManager::vmallocinfo`]).
pub struct VmallocInfoReport<'a, P, D, M>(Option<&'a crate::mm::KernelVmalloc<P, D, M>>)
where
    P: PreemptControl + 'static,
    D: DirectMap + 'static,
    M: Mmu + 'static;

impl<P: PreemptControl + 'static, D: DirectMap + 'static, M: Mmu + 'static> core::fmt::Display
    for VmallocInfoReport<'_, P, D, M>
{
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self.0 {
            Some(vm) => kmm_vmarea::VmallocInfo(vm).fmt(f),
            None => Ok(()),
        }
    }
}

/// What a vmalloc call needs: the layer and the pointer conversion.
impl<P: PreemptControl + 'static, D: DirectMap + 'static, M: Mmu + 'static> MemoryManager<P, D, M> {
    fn vm(&self) -> Result<&crate::mm::KernelVmalloc<P, D, M>, Error> {
        self.vmalloc_layer()
            .ok_or(Error::Vmalloc(VmareaError::NoVmalloc))
    }

    fn to_ptr(&self, addr: VirtAddr) -> Result<NonNull<u8>, Error> {
        NonNull::new(self.zones().direct_map().virt_to_ptr(addr))
            .ok_or(Error::Vmalloc(VmareaError::NotAllocated { addr }))
    }

    fn to_virt(&self, p: *const u8) -> VirtAddr {
        self.zones().direct_map().ptr_to_virt(p)
    }

    /// Linux `vmalloc`: `size` bytes, virtually contiguous over single
    /// frames (highmem first), with a guard page after them.
    ///
    /// ```
    /// # #[cfg(feature = "sim")] {
    /// let mm = kmm::MemoryManager::sim(kmm::sim::MachineConfig::default())?;
    /// let p = mm.vmalloc(3 * kmm::PAGE_SIZE)?;
    /// let addr = mm.zones().direct_map().ptr_to_virt(p.as_ptr());
    /// assert!(mm.is_vmalloc_addr(addr));
    /// // Three frames, not contiguous (or not necessarily), all highmem here.
    /// let frames: Vec<_> = (0..3).map(|i| mm.vmalloc_to_pfn(p.as_ptr().wrapping_add(i * kmm::PAGE_SIZE)).unwrap()).collect();
    /// assert!(frames.iter().all(|&f| mm.zones().page_zone(f) == Some(kmm::ZoneType::HighMem)));
    /// // SAFETY: we hold the area and write within it, then give it up.
    /// unsafe {
    ///     p.as_ptr().add(5000).write(7);
    ///     mm.vfree(p.as_ptr())?;
    /// }
    /// # use kmm::DirectMap;
    /// # }
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    #[track_caller]
    pub fn vmalloc(&self, size: usize) -> Result<NonNull<u8>, Error> {
        self.to_ptr(self.vm()?.vmalloc(size)?)
    }

    /// Linux `vzalloc`: `vmalloc`, zeroed.
    #[track_caller]
    pub fn vzalloc(&self, size: usize) -> Result<NonNull<u8>, Error> {
        self.to_ptr(self.vm()?.vzalloc(size)?)
    }

    /// Linux `vmalloc_user`: zeroed, marked for mapping into user space.
    #[track_caller]
    pub fn vmalloc_user(&self, size: usize) -> Result<NonNull<u8>, Error> {
        self.to_ptr(self.vm()?.vmalloc_user(size)?)
    }

    /// Linux `vmalloc_32`: frames from lowmem only.
    #[track_caller]
    pub fn vmalloc_32(&self, size: usize) -> Result<NonNull<u8>, Error> {
        self.to_ptr(self.vm()?.vmalloc_32(size)?)
    }

    /// Linux `__vmalloc`: with the caller's GFP action flags
    /// (`__GFP_ZERO` zeroes; the zone is vmalloc's choice).
    #[track_caller]
    pub fn __vmalloc(&self, size: usize, gfp: GfpFlags) -> Result<NonNull<u8>, Error> {
        self.to_ptr(self.vm()?.__vmalloc(size, gfp)?)
    }

    /// Linux `vmalloc_node`: on NUMA node `node` (0, or
    /// [`kmm_vmarea::NUMA_NO_NODE`]: there is one node).
    #[track_caller]
    pub fn vmalloc_node(&self, size: usize, node: i32) -> Result<NonNull<u8>, Error> {
        let gfp = kmm_api::GFP_KERNEL;
        self.to_ptr(self.vm()?.vmalloc_node(size, gfp, node)?)
    }

    /// Linux `vfree`: null is a no-op; anything but a live vmalloc area's
    /// start is refused and changes nothing. The TLB flush is lazy.
    ///
    /// # Safety
    ///
    /// The caller gives the area up: nothing uses it any more.
    pub unsafe fn vfree(&self, p: *const u8) -> Result<(), Error> {
        if p.is_null() {
            return Ok(());
        }
        // SAFETY: forwarded from our caller.
        Ok(unsafe { self.vm()?.vfree(self.to_virt(p)) }?)
    }

    /// Linux `vfree_atomic`: `vfree` from a context that may not sleep;
    /// the area is freed by the next vmalloc call that may.
    ///
    /// # Safety
    ///
    /// As for [`MemoryManager::vfree`], and `p` is the start of a live
    /// vmalloc area (its first word becomes the queue's link).
    pub unsafe fn vfree_atomic(&self, p: *const u8) -> Result<(), Error> {
        // SAFETY: forwarded from our caller.
        unsafe { self.vm()?.vfree_atomic(self.to_virt(p)) };
        Ok(())
    }

    /// Linux `vmap`: maps the blocks of `pages` (the caller keeps them) at
    /// one new virtually contiguous area.
    #[track_caller]
    pub fn vmap(
        &self,
        pages: &[Pages],
        flags: VmFlags,
        prot: PageProt,
    ) -> Result<NonNull<u8>, Error> {
        self.to_ptr(self.vm()?.vmap(pages, flags, prot)?)
    }

    /// Linux `vunmap`: removes a `vmap` mapping; the pages stay the
    /// caller's.
    ///
    /// # Safety
    ///
    /// The caller made the mapping and nothing uses it any more.
    pub unsafe fn vunmap(&self, p: *const u8) -> Result<(), Error> {
        // SAFETY: forwarded from our caller.
        Ok(unsafe { self.vm()?.vunmap(self.to_virt(p)) }?)
    }

    /// Linux `vm_map_ram`: maps the blocks of `pages` (the caller keeps
    /// them) at one virtually contiguous range, small counts from this
    /// CPU's vmap block (no lock shared with other CPUs), larger ones at an
    /// area of their own; no guard page.
    ///
    /// ```
    /// # #[cfg(feature = "sim")] {
    /// let mm = kmm::MemoryManager::sim(kmm::sim::MachineConfig::default())?;
    /// let pages: Vec<_> = (0..2).map(|_| mm.alloc_page(kmm::GFP_HIGHUSER)).collect::<Result<_, _>>()?;
    /// let p = mm.vm_map_ram(&pages, kmm::PageProt::KERNEL)?;
    /// assert_eq!(mm.vmalloc_to_pfn(p.as_ptr().wrapping_add(kmm::PAGE_SIZE)), Some(pages[1].pfn()));
    /// assert!(mm.vmallocinfo().to_string().contains(" vm_map_ram\n"));
    /// // SAFETY: we made the mapping and are done with it.
    /// unsafe { mm.vm_unmap_ram(p.as_ptr(), 2)? };
    /// for page in pages {
    ///     mm.__free_page(page)?;
    /// }
    /// # }
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn vm_map_ram(&self, pages: &[Pages], prot: PageProt) -> Result<NonNull<u8>, Error> {
        self.to_ptr(self.vm()?.vm_map_ram(pages, prot)?)
    }

    /// Linux `vm_unmap_ram`: removes a `vm_map_ram` mapping of `count`
    /// pages (the count it was made with; anything else is refused); the
    /// TLB flush is lazy.
    ///
    /// # Safety
    ///
    /// The caller made the mapping and nothing uses it any more.
    pub unsafe fn vm_unmap_ram(&self, p: *const u8, count: usize) -> Result<(), Error> {
        // SAFETY: forwarded from our caller.
        Ok(unsafe { self.vm()?.vm_unmap_ram(self.to_virt(p), count) }?)
    }

    /// Linux `ioremap`: `size` bytes of device memory at `phys`, uncached
    /// (`PCD|PWT`), the sub-page offset kept. RAM the zones manage is
    /// refused ([`kmm_api::Error::Busy`] naming the first such frame).
    ///
    /// ```
    /// # #[cfg(feature = "sim")] {
    /// let mm = kmm::MemoryManager::sim(kmm::sim::MachineConfig::default())?;
    /// let regs = mm.ioremap(kmm::PhysAddr::new(0xfebc_0123), 16)?;
    /// assert_eq!(regs.as_ptr() as usize & 0xfff, 0x123);
    /// // SAFETY: the mapping is ours; the device window is the sim's.
    /// unsafe {
    ///     regs.as_ptr().write_volatile(0x5a);
    ///     let mut byte = [0];
    ///     mm.machine().read_device(kmm::PhysAddr::new(0xfebc_0123), &mut byte)?;
    ///     assert_eq!(byte, [0x5a]);
    ///     mm.iounmap(regs.as_ptr())?;
    /// }
    /// assert!(mm.ioremap(kmm::PhysAddr::new(0x200_0000), 16).is_err(), "RAM the zones manage");
    /// # }
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    #[track_caller]
    pub fn ioremap(&self, phys: PhysAddr, size: usize) -> Result<NonNull<u8>, Error> {
        self.ioremap_prot(phys, size, PageProt::KERNEL_NOCACHE)
    }

    /// Linux `ioremap_wc`: write-combining.
    #[track_caller]
    pub fn ioremap_wc(&self, phys: PhysAddr, size: usize) -> Result<NonNull<u8>, Error> {
        self.ioremap_prot(phys, size, PageProt::KERNEL_WC)
    }

    /// Linux `ioremap_cache`: cached (write-back).
    #[track_caller]
    pub fn ioremap_cache(&self, phys: PhysAddr, size: usize) -> Result<NonNull<u8>, Error> {
        self.ioremap_prot(phys, size, PageProt::KERNEL)
    }

    /// Linux `ioremap_prot`: device memory at `phys` with `prot`.
    #[track_caller]
    pub fn ioremap_prot(
        &self,
        phys: PhysAddr,
        size: usize,
        prot: PageProt,
    ) -> Result<NonNull<u8>, Error> {
        let vm = self.vm()?;
        let last = phys
            .as_u64()
            .checked_add(size.max(1) as u64 - 1)
            .ok_or(Error::Vmalloc(VmareaError::SizeTooLarge { size }))?;
        let (first, last) = (phys.pfn(), PhysAddr::new(last).pfn());
        let pages = last.as_usize() - first.as_usize() + 1;
        if let Some(ram) = (0..pages).map(|i| first.add(i)).find(|&pfn| {
            self.pfn_to_page(pfn)
                .is_some_and(|page| !page.is_reserved())
        }) {
            return Err(Error::Page(kmm_api::Error::Busy { pfn: ram }));
        }
        // SAFETY: not a frame the zones manage (checked above): device
        // memory, a hole, or a reserved range, which the caller may map.
        self.to_ptr(unsafe { vm.ioremap_prot(phys, size, prot) }?)
    }

    /// Linux `iounmap`: by the pointer `ioremap` returned.
    ///
    /// # Safety
    ///
    /// The caller made the mapping and nothing uses it any more.
    pub unsafe fn iounmap(&self, p: *const u8) -> Result<(), Error> {
        // SAFETY: forwarded from our caller.
        Ok(unsafe { self.vm()?.iounmap(self.to_virt(p)) }?)
    }

    /// Linux `get_vm_area`: reserves `size` bytes (and a guard page) of
    /// the vmalloc range, mapping nothing.
    #[track_caller]
    pub fn get_vm_area(&self, size: usize, flags: VmFlags) -> Result<VmapArea, Error> {
        Ok(self.vm()?.get_vm_area(size, flags)?)
    }

    /// Linux `free_vm_area`.
    ///
    /// # Safety
    ///
    /// Nothing is mapped in the area any more, and nothing uses it.
    pub unsafe fn free_vm_area(&self, area: VmapArea) -> Result<(), Error> {
        // SAFETY: forwarded from our caller.
        Ok(unsafe { self.vm()?.free_vm_area(area) }?)
    }

    /// Linux `find_vm_area`: the live area starting at `p`.
    pub fn find_vm_area(&self, p: *const u8) -> Option<VmapArea> {
        self.vm().ok()?.find_vm_area(self.to_virt(p))
    }

    /// Linux `remove_vm_area`: unmaps the area at `p` and takes it out of
    /// the live tree without freeing any frame.
    ///
    /// # Safety
    ///
    /// As for [`MemoryManager::vunmap`]; the caller frees the frames of a
    /// vmalloc area it removes.
    pub unsafe fn remove_vm_area(&self, p: *const u8) -> Result<VmapArea, Error> {
        // SAFETY: forwarded from our caller.
        Ok(unsafe { self.vm()?.remove_vm_area(self.to_virt(p)) }?)
    }

    /// Linux `vmalloc_to_page` (as the frame number): the frame behind a
    /// vmalloc pointer.
    pub fn vmalloc_to_page(&self, p: *const u8) -> Option<Pfn> {
        self.vm().ok()?.vmalloc_to_page(self.to_virt(p))
    }

    /// Linux `vmalloc_to_pfn`.
    pub fn vmalloc_to_pfn(&self, p: *const u8) -> Option<Pfn> {
        self.vmalloc_to_page(p)
    }

    /// `/proc/vmallocinfo`: every live area (its range with the guard
    /// page, size, caller, `pages=` or `phys=`, kind), then the ranges
    /// awaiting their purge; empty on a machine without vmalloc.
    ///
    /// ```
    /// # #[cfg(feature = "sim")] {
    /// let mm = kmm::MemoryManager::sim(kmm::sim::MachineConfig::default())?;
    /// let p = mm.vmalloc(1 << 20)?;
    /// let info = mm.vmallocinfo().to_string();
    /// let line = info.lines().find(|l| l.ends_with(" vmalloc")).unwrap();
    /// assert!(line.contains(" 1052672 ") && line.contains(" pages=256 "), "{line}");
    /// # unsafe { mm.vfree(p.as_ptr())? };
    /// # }
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn vmallocinfo(&self) -> VmallocInfoReport<'_, P, D, M> {
        VmallocInfoReport(self.vmalloc_layer())
    }

    /// Linux `is_vmalloc_addr`, for a machine address. O(1).
    pub fn is_vmalloc_addr(&self, addr: VirtAddr) -> bool {
        self.vm().is_ok_and(|vm| vm.is_vmalloc_addr(addr))
    }

    /// Linux `kvmalloc`: kmalloc, without retrying hard above a page, and
    /// vmalloc when that fails (if `gfp` may sleep and the machine has
    /// vmalloc).
    ///
    /// ```
    /// # #[cfg(feature = "sim")] {
    /// let mm = kmm::MemoryManager::sim(kmm::sim::MachineConfig::default())?;
    /// let small = mm.kvmalloc(100, kmm::GFP_KERNEL)?;
    /// let huge = mm.kvzalloc(8 << 20, kmm::GFP_KERNEL)?; // above KMALLOC_MAX_SIZE
    /// assert!(mm.find_vm_area(huge.as_ptr()).is_some());
    /// // SAFETY: ours, given up.
    /// unsafe {
    ///     mm.kvfree(small.as_ptr())?;
    ///     mm.kvfree(huge.as_ptr())?;
    /// }
    /// # }
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    #[track_caller]
    pub fn kvmalloc(&self, size: usize, gfp: GfpFlags) -> Result<NonNull<u8>, Error> {
        let kmalloc_gfp = if size > PAGE_SIZE {
            (gfp | GfpFlags::NOWARN | GfpFlags::NORETRY) - GfpFlags::NOFAIL
        } else {
            gfp
        };
        match self.kmalloc(size, kmalloc_gfp) {
            Ok(p) => Ok(p),
            Err(e) if !gfp.contains(GfpFlags::DIRECT_RECLAIM) || self.vm().is_err() => Err(e),
            Err(_) => self.__vmalloc(size, gfp),
        }
    }

    /// Linux `kvzalloc`: `kvmalloc`, zeroed.
    #[track_caller]
    pub fn kvzalloc(&self, size: usize, gfp: GfpFlags) -> Result<NonNull<u8>, Error> {
        self.kvmalloc(size, gfp | GfpFlags::ZERO)
    }

    /// Linux `kvfree`: `vfree` for a vmalloc pointer, `kfree` otherwise,
    /// told apart by address in O(1).
    ///
    /// # Safety
    ///
    /// As for [`MemoryManager::kfree`] and [`MemoryManager::vfree`].
    pub unsafe fn kvfree(&self, p: *const u8) -> Result<(), Error> {
        if self.is_vmalloc_addr(self.to_virt(p)) {
            // SAFETY: forwarded from our caller.
            unsafe { self.vfree(p) }
        } else {
            // SAFETY: forwarded from our caller.
            unsafe { self.kfree(p) }
        }
    }
}
