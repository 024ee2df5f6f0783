//! [`SlabPages`]: the page source `kmm-slab` draws on inside the
//! [`MemoryManager`](crate::MemoryManager): the manager's zones for frames
//! and owner words, its platform for CPU pinning and its direct map for
//! addresses. The object API itself is on the manager (`kmalloc.rs`).
//!
//! Owns nothing but the pointer to the zones; never hands that pointer, or
//! anything borrowed from it, out past the `&self` it was reached through.

use core::ptr::NonNull;
use kmm_api::{
    AllocatorId, DirectMap, Error, FrameAllocator, GfpFlags, Order, OwnerWord, PageOwner, Pages,
    Pfn, Platform, PreemptControl, VirtAddr,
};
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
    #[inline]
    unsafe fn replace_owner(
        &self,
        pfn: Pfn,
        current: OwnerWord,
        new: OwnerWord,
    ) -> Result<bool, Error> {
        // SAFETY: our caller's contract is the zones'.
        unsafe { self.zones().replace_owner(pfn, current, new) }
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
    fn wait_on(&self, word: &kmm_api::sync::AtomicU32, seen: u32) {
        self.zones().platform().wait_on(word, seen)
    }
    fn wake_on(&self, word: &kmm_api::sync::AtomicU32) {
        self.zones().platform().wake_on(word)
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
