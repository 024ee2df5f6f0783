//! The slab layer of the [`MemoryManager`]: [`SlabPages`], the page source
//! `kmm-slab` draws on (the manager's zones for frames and owner words, its
//! platform for CPU pinning and its direct map for addresses), and the
//! Linux object API on the manager itself, each call forwarded to the
//! manager's [`Kmem`].
//!
//! Owns nothing but the pointer to the zones; never hands that pointer, or
//! anything borrowed from it, out past the `&self` it was reached through.
//!
//! ```
//! # #[cfg(all(feature = "std", target_pointer_width = "64"))] {
//! use kmm::MemoryManager;
//! use kmm_api::{GFP_KERNEL, PAGE_SIZE};
//! use kmm_slab::SlabFlags;
//! let mm = MemoryManager::hosted(8 << 20, 1)?;
//! let inodes = mm.kmem_cache_create("inode_cache", 600, 8, SlabFlags::HWCACHE_ALIGN, None).unwrap();
//! let inode = mm.kmem_cache_zalloc(inodes, GFP_KERNEL).unwrap();
//! let page = mm.get_free_page(GFP_KERNEL)?;
//! assert!(page.is_aligned(PAGE_SIZE));
//! // SAFETY: we hold `inode` and `page` and give them up; nothing else
//! // uses the cache while it is destroyed.
//! unsafe {
//!     mm.kmem_cache_free(inodes, inode.as_ptr()).unwrap();
//!     mm.kmem_cache_destroy(inodes).unwrap();
//!     mm.free_page(page)?;
//! }
//! # }
//! # Ok::<(), kmm_api::Error>(())
//! ```

use crate::MemoryManager;
use core::ptr::NonNull;
use kmm_api::{
    AllocatorId, DirectMap, Error, FrameAllocator, GfpFlags, Order, OwnerWord, PageOwner, Pages,
    Pfn, Platform, PreemptControl, VirtAddr,
};
use kmm_slab::{CacheId, Ctor, SlabError, SlabFlags, SlabInfo};
use kmm_zones::Zones;

/// The manager's zones and machine as one `kmm-slab` backend: frames and
/// owner words from the zones, addresses from their direct map, CPU ids
/// from their platform. Made only by the manager, which keeps the zones at
/// a fixed address for as long as this value lives.
pub struct SlabPages<P: PreemptControl + 'static, D: DirectMap + 'static> {
    zones: NonNull<Zones<'static, P, D>>,
}

// SAFETY: a `SlabPages` is a shared reference to the zones in all but name,
// so it may cross threads when `&Zones` may.
unsafe impl<P: PreemptControl, D: DirectMap> Send for SlabPages<P, D> where
    Zones<'static, P, D>: Sync
{
}
// SAFETY: as above.
unsafe impl<P: PreemptControl, D: DirectMap> Sync for SlabPages<P, D> where
    Zones<'static, P, D>: Sync
{
}

impl<P: PreemptControl, D: DirectMap> SlabPages<P, D> {
    /// # Safety
    ///
    /// `zones` is initialised and stays at this address, unmoved and not
    /// dropped, for as long as the value made here lives.
    pub(crate) unsafe fn new(zones: NonNull<Zones<'static, P, D>>) -> Self {
        SlabPages { zones }
    }

    /// The zones the slab layer draws on.
    pub fn zones(&self) -> &Zones<'static, P, D> {
        // SAFETY: `new`'s contract: the zones outlive `self`.
        unsafe { self.zones.as_ref() }
    }
}

// SAFETY: forwards to the zones, which keep the contract themselves.
unsafe impl<P: PreemptControl, D: DirectMap> FrameAllocator for SlabPages<P, D> {
    #[inline]
    fn alloc_frames(&self, gfp: GfpFlags, order: Order) -> Result<Pages, Error> {
        self.zones().alloc_pages(gfp, order)
    }
    #[inline]
    fn free_frames(&self, pages: Pages) -> Result<(), Error> {
        self.zones().__free_pages(pages)
    }
    #[inline]
    fn allocator_id(&self) -> AllocatorId {
        self.zones().allocator_id()
    }
}

// SAFETY: forwards to the zones, which keep the contract themselves.
unsafe impl<P: PreemptControl, D: DirectMap> PageOwner for SlabPages<P, D> {
    #[inline]
    fn owner(&self, pfn: Pfn) -> Option<OwnerWord> {
        self.zones().owner(pfn)
    }
    #[inline]
    unsafe fn set_owner(&self, pfn: Pfn, word: OwnerWord) -> Result<(), Error> {
        // SAFETY: our caller's contract is the zones'.
        unsafe { self.zones().set_owner(pfn, word) }
    }
}

// SAFETY: every method forwards to the zones' direct map `D`, which keeps
// the contract itself for as long as the zones live (longer than `self`).
unsafe impl<P: PreemptControl, D: DirectMap> DirectMap for SlabPages<P, D> {
    #[inline]
    fn pfn_to_virt(&self, pfn: Pfn) -> Option<VirtAddr> {
        self.zones().direct_map().pfn_to_virt(pfn)
    }
    #[inline]
    fn virt_to_pfn(&self, addr: VirtAddr) -> Option<Pfn> {
        self.zones().direct_map().virt_to_pfn(addr)
    }
    #[inline]
    fn window_base(&self) -> usize {
        self.zones().direct_map().window_base()
    }
    #[inline]
    fn virt_to_ptr(&self, addr: VirtAddr) -> *mut u8 {
        self.zones().direct_map().virt_to_ptr(addr)
    }
    #[inline]
    fn ptr_to_virt(&self, ptr: *const u8) -> VirtAddr {
        self.zones().direct_map().ptr_to_virt(ptr)
    }
}

impl<P: PreemptControl, D: DirectMap> Platform for SlabPages<P, D> {
    fn nr_cpus(&self) -> usize {
        self.zones().platform().nr_cpus()
    }
    fn cpu_id(&self) -> usize {
        self.zones().platform().cpu_id()
    }
    fn irq_save(&self) -> usize {
        self.zones().platform().irq_save()
    }
    fn irq_restore(&self, flags: usize) {
        self.zones().platform().irq_restore(flags)
    }
    fn wait(&self) {
        self.zones().platform().wait()
    }
    fn wake_all(&self) {
        self.zones().platform().wake_all()
    }
    fn reclaim(&self, gfp: GfpFlags, order: Order) -> usize {
        self.zones().platform().reclaim(gfp, order)
    }
    unsafe fn zero_frame(&self, pfn: Pfn) -> Result<(), Error> {
        // SAFETY: our caller's contract is the platform's.
        unsafe { self.zones().platform().zero_frame(pfn) }
    }
}

// SAFETY: forwards to the platform `P`, which keeps the contract itself.
unsafe impl<P: PreemptControl, D: DirectMap> PreemptControl for SlabPages<P, D> {
    #[inline]
    fn get_cpu(&self) -> usize {
        self.zones().platform().get_cpu()
    }
    #[inline]
    fn put_cpu(&self, cpu: usize) {
        self.zones().platform().put_cpu(cpu)
    }
    fn on_cpu(&self, cpu: usize, work: &mut dyn FnMut()) -> bool {
        self.zones().platform().on_cpu(cpu, work)
    }
}

/// The Linux object API: the kmalloc family, `kmem_cache_*`, and the
/// address-returning page calls. Each forwards to [`MemoryManager::kmem`]
/// or the zones; see `kmm-slab` for costs and error cases.
impl<P: PreemptControl + 'static, D: DirectMap + 'static> MemoryManager<P, D> {
    /// Linux `kmalloc`: `size` bytes from the smallest size class that holds
    /// them, whole pages above 8 KiB.
    #[track_caller]
    #[inline]
    pub fn kmalloc(&self, size: usize, gfp: GfpFlags) -> Result<NonNull<u8>, SlabError> {
        self.kmem().kmalloc(size, gfp)
    }

    /// Linux `kzalloc`: `kmalloc` zeroed.
    #[track_caller]
    pub fn kzalloc(&self, size: usize, gfp: GfpFlags) -> Result<NonNull<u8>, SlabError> {
        self.kmem().kzalloc(size, gfp)
    }

    /// Linux `kcalloc`: a zeroed array; `n * size` overflowing is an error.
    #[track_caller]
    pub fn kcalloc(&self, n: usize, size: usize, gfp: GfpFlags) -> Result<NonNull<u8>, SlabError> {
        self.kmem().kcalloc(n, size, gfp)
    }

    /// Linux `kmalloc_array`: an array; `n * size` overflowing is an error.
    #[track_caller]
    pub fn kmalloc_array(
        &self,
        n: usize,
        size: usize,
        gfp: GfpFlags,
    ) -> Result<NonNull<u8>, SlabError> {
        self.kmem().kmalloc_array(n, size, gfp)
    }

    /// Linux `krealloc`: in place while the class fits; on error `p` is
    /// untouched.
    ///
    /// # Safety
    ///
    /// The pointer contract of `kmm-slab` (*Freeing by pointer*): the
    /// caller holds the allocation at `p`.
    #[track_caller]
    pub unsafe fn krealloc(
        &self,
        p: *const u8,
        new_size: usize,
        gfp: GfpFlags,
    ) -> Result<NonNull<u8>, SlabError> {
        // SAFETY: forwarded from our caller.
        unsafe { self.kmem().krealloc(p, new_size, gfp) }
    }

    /// Linux `ksize`: the bytes usable at `p`.
    ///
    /// # Safety
    ///
    /// The pointer contract of `kmm-slab` (*Freeing by pointer*).
    pub unsafe fn ksize(&self, p: *const u8) -> Result<usize, SlabError> {
        // SAFETY: forwarded from our caller.
        unsafe { self.kmem().ksize(p) }
    }

    /// Linux `kfree`: null is a no-op; a foreign pointer, an interior
    /// pointer or a double free is refused with nothing changed.
    ///
    /// # Safety
    ///
    /// The pointer contract of `kmm-slab` (*Freeing by pointer*): met when
    /// the caller holds the allocation at `p` and gives it up here.
    #[track_caller]
    #[inline]
    pub unsafe fn kfree(&self, p: *const u8) -> Result<(), SlabError> {
        // SAFETY: forwarded from our caller.
        unsafe { self.kmem().kfree(p) }
    }

    /// Linux `kmem_cache_create`.
    pub fn kmem_cache_create(
        &self,
        name: &'static str,
        size: usize,
        align: usize,
        flags: SlabFlags,
        ctor: Option<Ctor>,
    ) -> Result<CacheId, SlabError> {
        self.kmem()
            .kmem_cache_create(name, size, align, flags, ctor)
    }

    /// Linux `kmem_cache_alloc`.
    #[track_caller]
    #[inline]
    pub fn kmem_cache_alloc(
        &self,
        cache: CacheId,
        gfp: GfpFlags,
    ) -> Result<NonNull<u8>, SlabError> {
        self.kmem().kmem_cache_alloc(cache, gfp)
    }

    /// Linux `kmem_cache_zalloc`.
    #[track_caller]
    pub fn kmem_cache_zalloc(
        &self,
        cache: CacheId,
        gfp: GfpFlags,
    ) -> Result<NonNull<u8>, SlabError> {
        self.kmem().kmem_cache_zalloc(cache, gfp)
    }

    /// Linux `kmem_cache_free`: refuses an object of another cache.
    ///
    /// # Safety
    ///
    /// The pointer contract of `kmm-slab` (*Freeing by pointer*): met when
    /// the caller holds the object at `p` and gives it up here.
    #[track_caller]
    #[inline]
    pub unsafe fn kmem_cache_free(&self, cache: CacheId, p: *const u8) -> Result<(), SlabError> {
        // SAFETY: forwarded from our caller.
        unsafe { self.kmem().kmem_cache_free(cache, p) }
    }

    /// Linux `kmem_cache_shrink`: the pages given back to the zones.
    pub fn kmem_cache_shrink(&self, cache: CacheId) -> Result<usize, SlabError> {
        self.kmem().kmem_cache_shrink(cache)
    }

    /// Linux `kmem_cache_destroy`: refused, naming the count, while objects
    /// are live.
    ///
    /// # Safety
    ///
    /// No other use of the cache runs during the call (`kmm-slab`'s
    /// `Kmem::kmem_cache_destroy`).
    pub unsafe fn kmem_cache_destroy(&self, cache: CacheId) -> Result<(), SlabError> {
        // SAFETY: forwarded from our caller.
        unsafe { self.kmem().kmem_cache_destroy(cache) }
    }

    /// `/proc/slabinfo` (version 2.1).
    pub fn slabinfo(&self) -> SlabInfo<'_, SlabPages<P, D>> {
        SlabInfo(self.kmem())
    }

    /// Linux `__get_free_page`: one page, by its direct-map address.
    pub fn get_free_page(&self, gfp: GfpFlags) -> Result<VirtAddr, Error> {
        self.zones().__get_free_pages(gfp, Order::ZERO)
    }

    /// Linux `__get_free_pages`: `2^order` pages, by their address.
    pub fn __get_free_pages(&self, gfp: GfpFlags, order: Order) -> Result<VirtAddr, Error> {
        self.zones().__get_free_pages(gfp, order)
    }

    /// Linux `free_page`.
    ///
    /// # Safety
    ///
    /// The caller holds the page at `addr` and gives it up (the zones'
    /// `free_pages`).
    pub unsafe fn free_page(&self, addr: VirtAddr) -> Result<(), Error> {
        // SAFETY: forwarded from our caller.
        unsafe { self.zones().free_pages(addr, Order::ZERO) }
    }

    /// Linux `free_pages`.
    ///
    /// # Safety
    ///
    /// The caller holds the block at `addr` and gives it up (the zones'
    /// `free_pages`).
    pub unsafe fn free_pages(&self, addr: VirtAddr, order: Order) -> Result<(), Error> {
        // SAFETY: forwarded from our caller.
        unsafe { self.zones().free_pages(addr, order) }
    }
}

#[cfg(all(test, feature = "std", target_pointer_width = "64"))]
mod tests {
    use crate::MemoryManager;
    use kmm_api::{Shrinker, GFP_KERNEL};

    /// Boot places the zones and the slab layer in machine RAM, the slab
    /// layer's page source points at those zones, and drop tears them down
    /// in order: run under miri, this checks the placement and teardown.
    #[test]
    fn the_slab_layer_draws_on_the_managers_own_zones_and_drops_first() {
        let mm = MemoryManager::hosted(if cfg!(miri) { 4 << 20 } else { 16 << 20 }, 1).unwrap();
        let free = mm.zones().nr_free_pages();
        let p = mm.kmalloc(3000, GFP_KERNEL).unwrap();
        // SAFETY: 3000 fresh bytes of ours.
        unsafe { p.as_ptr().write_bytes(0x5a, 3000) };
        assert!(
            mm.zones().nr_free_pages() < free,
            "the slab came from these zones"
        );
        // SAFETY: we hold `p` and give it up.
        unsafe { mm.kfree(p.as_ptr()) }.unwrap();
        mm.kmem().drain_local();
        assert!(mm.kmem().count_objects() > 0);
        assert!(mm.kmem().scan_objects(GFP_KERNEL, usize::MAX) > 0);
        mm.zones().check().unwrap();
        let moved = mm;
        assert!(
            moved.kmalloc(8, GFP_KERNEL).is_ok(),
            "a moved manager still works"
        );
    }
}
