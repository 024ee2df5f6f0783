//! The public entry points: `kmem_cache_*` and the kmalloc family, each a
//! thin, checked front over the cache paths. Every refusal is an error
//! value with nothing changed.
//!
//! The calls that take an object pointer are `unsafe fn` with one
//! contract, stated in the crate documentation (*Freeing by pointer*): an
//! address is not a proof of ownership, so no check can tell a stale
//! pointer from the allocation now at that address.

use crate::{
    cache::FreeCheck,
    cpu::CpuGuard,
    debug::{Corruption, Track},
    error::SlabError,
    kmalloc::{
        kmalloc_index, kmalloc_index_aligned, KMALLOC_CLASSES, KMALLOC_MAX_CACHE_SIZE,
        KMALLOC_MAX_SIZE,
    },
    kmem::{CacheId, Kmem, Owned, SlabBackend},
    raw,
    slab::ObjState,
};
use core::{panic::Location, ptr::NonNull};
use kmm_api::{get_order, sync::Ordering::Relaxed, GfpFlags, MAX_PAGE_ORDER};

/// What kmalloc returns for a request of zero bytes (Linux `ZERO_SIZE_PTR`):
/// a distinct, never-dereferenceable address that `kfree` accepts.
pub const ZERO_SIZE_PTR: NonNull<u8> = {
    #[repr(align(16))]
    struct Sixteen;
    NonNull::<Sixteen>::dangling().cast()
};

fn is_zero_or_null(p: *const u8) -> bool {
    p.is_null() || p == ZERO_SIZE_PTR.as_ptr().cast_const()
}

/// A cache's layout, as `/proc/slabinfo` and tests see it.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct CacheInfo {
    /// The cache's name.
    pub name: &'static str,
    /// Bytes a caller may use per object.
    pub object_size: usize,
    /// Bytes from one object to the next (object plus metadata and padding).
    pub stride: usize,
    /// Alignment of every object.
    pub align: usize,
    /// Objects per slab.
    pub objects_per_slab: usize,
    /// Pages per slab.
    pub pages_per_slab: usize,
    /// Bytes of each slab no object or header uses.
    pub leftover: usize,
    /// Whether the slab header lives off the slab.
    pub off_slab: bool,
    /// Offset of the encoded free pointer in a free object's slot.
    pub free_pointer_offset: usize,
}

/// A cache's counters at one moment.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default)]
pub struct CacheStats {
    /// Objects allocated to users.
    pub active_objs: usize,
    /// Objects in all slabs.
    pub num_objs: usize,
    /// Slabs holding at least one object not on their free list.
    pub active_slabs: usize,
    /// All slabs.
    pub num_slabs: usize,
    /// Objects in per-CPU arrays.
    pub cached_objs: usize,
    /// Objects quarantined after corruption.
    pub quarantined: usize,
    /// Errors counted by debug checks.
    pub errors: usize,
}

impl<B: SlabBackend> Kmem<B> {
    /// Allocates an object (Linux `kmem_cache_alloc`).
    #[track_caller]
    #[inline]
    pub fn kmem_cache_alloc(&self, id: CacheId, gfp: GfpFlags) -> Result<NonNull<u8>, SlabError> {
        let c = self.cache(id)?;
        self.cache_alloc(c, gfp, c.geo.object_size, Location::caller())
    }

    /// Allocates a zeroed object (Linux `kmem_cache_zalloc`).
    #[track_caller]
    pub fn kmem_cache_zalloc(&self, id: CacheId, gfp: GfpFlags) -> Result<NonNull<u8>, SlabError> {
        self.kmem_cache_alloc(id, gfp | GfpFlags::ZERO)
    }

    /// Frees an object to its cache (Linux `kmem_cache_free`); refuses an
    /// object of another cache, a pointer that is not an object start, and
    /// an object already free. Null is a no-op.
    ///
    /// # Safety
    ///
    /// The pointer contract of the crate documentation (*Freeing by
    /// pointer*); met when the caller holds the object at `p` and gives it
    /// up here.
    #[track_caller]
    #[inline]
    pub unsafe fn kmem_cache_free(&self, id: CacheId, p: *const u8) -> Result<(), SlabError> {
        if p.is_null() {
            return Ok(());
        }
        let expected = self.cache(id)?;
        // SAFETY: forwarded from our caller.
        match unsafe { self.find(p) }? {
            Owned::Slab { cache, slab, index } if cache.index == expected.index => {
                self.cache_free(cache, slab, index, FreeCheck::Checked, Location::caller())
            }
            Owned::Slab { cache, .. } => Err(SlabError::WrongCache {
                addr: self.virt(p),
                expected: expected.name,
                found: cache.name,
            }),
            Owned::Large { .. } => Err(SlabError::WrongCache {
                addr: self.virt(p),
                expected: expected.name,
                found: "kmalloc (pages)",
            }),
        }
    }

    /// Linux `kmem_cache_shrink`: every CPU's cached objects of the cache
    /// back to their slabs (a CPU the platform cannot reach keeps its
    /// objects) and every empty slab to the page allocator; the pages
    /// freed.
    pub fn kmem_cache_shrink(&self, id: CacheId) -> Result<usize, SlabError> {
        Ok(self.shrink_cache(self.cache(id)?))
    }

    /// Linux `flush_all` over every cache: each CPU's cached objects back
    /// to their slabs, run as that CPU through `PreemptControl::on_cpu`
    /// (slabs beyond the few empty ones a cache keeps go back to the page
    /// allocator). Returns the CPUs the platform could not reach now, whose
    /// arrays keep their objects (0 on a kernel that implements `on_cpu`).
    pub fn flush_all(&self) -> usize {
        self.flush_every_cpu().1
    }

    /// [`Kmem::flush_all`]: the pages freed (surplus empty slabs) and the
    /// CPUs the platform could not reach.
    pub(crate) fn flush_every_cpu(&self) -> (usize, usize) {
        let table = self.lock_table();
        let mut pages = 0;
        let unreached = self.on_each_cpu(|pinned| {
            for c in self.caches(&table) {
                pages += self.drain_array(c, pinned);
            }
        });
        (pages, unreached)
    }

    /// Every CPU's cached objects back to their slabs ([`Kmem::flush_all`])
    /// and every empty slab of every cache to the page allocator; the
    /// pages freed. After it, with no object allocated and every CPU
    /// reachable, the slab layer holds only its caches' descriptors. This
    /// is Linux's `drop_slab` (`echo 2 > /proc/sys/vm/drop_caches`) for
    /// this layer: one call, every cache, every CPU.
    #[doc(alias = "drop_slab")]
    pub fn shrink_all(&self) -> usize {
        self.flush_every_cpu().0 + self.discard_empty_slabs(usize::MAX)
    }

    /// Every empty slab of every cache back to the page allocator, until
    /// `limit` pages are freed; the pages freed. An off-slab slab's header
    /// goes back into a small kmalloc cache that may have been visited
    /// already, so passes repeat until one frees nothing.
    pub(crate) fn discard_empty_slabs(&self, limit: usize) -> usize {
        let mut total = 0;
        while total < limit {
            let table = self.lock_table();
            let pass: usize = self.caches(&table).map(|c| self.discard_empty(c)).sum();
            if pass == 0 {
                break;
            }
            total += pass;
        }
        total
    }

    /// Returns the calling CPU's cached objects of every cache to their
    /// slabs (what Linux's `flush_cpu_slab` does on each CPU).
    pub fn drain_local(&self) {
        let table = self.lock_table();
        let guard = CpuGuard::new(self.backend());
        for c in self.caches(&table) {
            self.drain_array(c, &guard);
        }
    }

    /// The layout of a cache.
    pub fn kmem_cache_info(&self, id: CacheId) -> Result<CacheInfo, SlabError> {
        let c = self.cache(id)?;
        Ok(CacheInfo {
            name: c.name,
            object_size: c.geo.object_size,
            stride: c.geo.stride,
            align: c.geo.align,
            objects_per_slab: c.geo.objects,
            pages_per_slab: c.geo.pages(),
            leftover: c.geo.leftover(),
            off_slab: c.geo.off_slab,
            free_pointer_offset: c.geo.fp_offset,
        })
    }

    /// The counters of a cache.
    pub fn kmem_cache_stats(&self, id: CacheId) -> Result<CacheStats, SlabError> {
        Ok(self.stats_of(self.cache(id)?))
    }

    pub(crate) fn stats_of(&self, c: &crate::cache::KmemCache) -> CacheStats {
        let node = c.node.lock();
        CacheStats {
            active_objs: c.live_objects(&node),
            num_objs: node.total_objects,
            active_slabs: node.nr_slabs - node.nr_empty,
            num_slabs: node.nr_slabs,
            cached_objs: c.cached_objects(),
            quarantined: c.quarantined.load(Relaxed),
            errors: c.errors.load(Relaxed),
        }
    }

    /// The latest corruption report of a cache.
    pub fn kmem_cache_last_report(&self, id: CacheId) -> Result<Option<Corruption>, SlabError> {
        Ok(*self.cache(id)?.last_report.lock())
    }

    /// The recorded call sites of an object of a `SLAB_STORE_USER` cache.
    ///
    /// # Safety
    ///
    /// The pointer contract of the crate documentation (`p` is not given
    /// up here).
    pub unsafe fn kmem_obj_track(&self, p: *const u8) -> Result<Option<Track>, SlabError> {
        // SAFETY: forwarded from our caller.
        match unsafe { self.find(p) }? {
            Owned::Slab { cache, slab, index } => {
                Ok(cache.track(slab.object(index, cache.geo.stride)))
            }
            Owned::Large { .. } => Ok(None),
        }
    }

    /// The kmalloc cache serving `size` bytes with `gfp` (Linux
    /// `kmalloc_slab`); `None` above `KMALLOC_MAX_CACHE_SIZE` or for 0.
    pub fn kmalloc_slab(&self, size: usize, gfp: GfpFlags) -> Option<CacheId> {
        if size == 0 || size > KMALLOC_MAX_CACHE_SIZE {
            return None;
        }
        let c = self.kmalloc_cache(kmalloc_index(size), gfp.contains(GfpFlags::DMA));
        Some(self.id_of(c.index))
    }

    /// Allocates `size` bytes (Linux `kmalloc`): from the smallest size
    /// class that holds them (a `dma-kmalloc-*` class for `GFP_DMA`), from
    /// whole pages above `KMALLOC_MAX_CACHE_SIZE`, refused above
    /// `KMALLOC_MAX_SIZE`. Zero bytes give [`ZERO_SIZE_PTR`].
    ///
    /// ```
    /// use kmm_slab::{testing::HostMachine, Kmem, KmemConfig};
    /// use kmm_api::GFP_KERNEL;
    /// let machine = HostMachine::new(256, 1);
    /// let kmem = Kmem::new(&machine, KmemConfig::default()).unwrap();
    /// let p = kmem.kmalloc(100, GFP_KERNEL).unwrap();
    /// // SAFETY: we hold `p` until the first `kfree`; the second passes a
    /// // pointer nobody holds, refused as a double free.
    /// unsafe {
    ///     assert_eq!(kmem.ksize(p.as_ptr()).unwrap(), 128);
    ///     kmem.kfree(p.as_ptr()).unwrap();
    ///     assert!(kmem.kfree(p.as_ptr()).is_err()); // double free caught
    /// }
    /// ```
    #[track_caller]
    #[inline]
    pub fn kmalloc(&self, size: usize, gfp: GfpFlags) -> Result<NonNull<u8>, SlabError> {
        if size == 0 {
            return Ok(ZERO_SIZE_PTR);
        }
        if gfp.contains(GfpFlags::HIGHMEM) {
            return Err(SlabError::InvalidGfp { gfp });
        }
        if size > KMALLOC_MAX_CACHE_SIZE {
            return self.kmalloc_large(size, gfp);
        }
        let c = self.kmalloc_cache(kmalloc_index(size), gfp.contains(GfpFlags::DMA));
        self.cache_alloc(c, gfp, size, Location::caller())
    }

    /// Allocates `size` bytes aligned to `align` (a power of two up to a
    /// page): the class is raised until its natural alignment suffices.
    #[track_caller]
    pub fn kmalloc_aligned(
        &self,
        size: usize,
        align: usize,
        gfp: GfpFlags,
    ) -> Result<NonNull<u8>, SlabError> {
        if !align.is_power_of_two() || align > kmm_api::PAGE_SIZE {
            return Err(SlabError::BadGeometry { size, align });
        }
        match kmalloc_index_aligned(size, align) {
            Some(class) if !gfp.contains(GfpFlags::HIGHMEM) => {
                let c = self.kmalloc_cache(class, gfp.contains(GfpFlags::DMA));
                self.cache_alloc(c, gfp, size.max(1), Location::caller())
            }
            _ => self.kmalloc(size.max(align), gfp),
        }
    }

    /// [`Kmem::kmalloc_aligned`] from the fine classes where they serve
    /// the request (configured by [`crate::KmemConfig::fine_classes`],
    /// above 256 bytes and up to `KMALLOC_MAX_CACHE_SIZE`, the class's
    /// objects aligned enough, no `GFP_DMA` or `__GFP_HIGHMEM`): what
    /// [`crate::KmallocGlobal`] allocates with. Freed by `kfree` like any
    /// kmalloc object.
    #[track_caller]
    pub fn kmalloc_fine(
        &self,
        size: usize,
        align: usize,
        gfp: GfpFlags,
    ) -> Result<NonNull<u8>, SlabError> {
        match self.fine_or_kmalloc_cache(size, align, gfp) {
            Some(c) => self.cache_alloc(c, gfp, size.max(1), Location::caller()),
            // Whole pages, or the refusal.
            None => self.kmalloc_aligned(size, align, gfp),
        }
    }

    /// The cache [`Kmem::kmalloc_fine`] serves `size` bytes aligned to
    /// `align` from with `gfp` (`kmalloc_slab` with the fine classes and
    /// alignment); `None` where it takes whole pages or refuses.
    pub fn kmalloc_fine_slab(&self, size: usize, align: usize, gfp: GfpFlags) -> Option<CacheId> {
        self.fine_or_kmalloc_cache(size, align, gfp)
            .map(|c| self.id_of(c.index))
    }

    /// [`Kmem::kmalloc_fine_slab`]'s cache itself.
    #[inline]
    fn fine_or_kmalloc_cache(
        &self,
        size: usize,
        align: usize,
        gfp: GfpFlags,
    ) -> Option<&crate::cache::KmemCache> {
        if gfp.contains(GfpFlags::HIGHMEM) {
            return None;
        }
        let dma = gfp.contains(GfpFlags::DMA);
        match self.fine_cache(size, align) {
            Some(c) if !dma => Some(c),
            _ if !align.is_power_of_two() || align > kmm_api::PAGE_SIZE => None,
            _ => kmalloc_index_aligned(size, align).map(|class| self.kmalloc_cache(class, dma)),
        }
    }

    /// Fills `out` with objects of cache `id` (Linux
    /// `kmem_cache_alloc_bulk`), pinning the CPU once per run of its
    /// per-CPU array rather than once per object; the number filled,
    /// fewer than `out.len()` only when the cache cannot grow (or `id`
    /// names no cache). Each object is freed like one from
    /// [`Kmem::kmem_cache_alloc`].
    #[track_caller]
    pub fn kmem_cache_alloc_bulk(&self, id: CacheId, gfp: GfpFlags, out: &mut [*mut u8]) -> usize {
        match self.cache(id) {
            Ok(c) => self.cache_alloc_bulk(c, gfp, out, Location::caller()),
            Err(_) => 0,
        }
    }

    /// `kmalloc` with `__GFP_ZERO`.
    #[track_caller]
    pub fn kzalloc(&self, size: usize, gfp: GfpFlags) -> Result<NonNull<u8>, SlabError> {
        self.kmalloc(size, gfp | GfpFlags::ZERO)
    }

    /// An array of `n` elements of `size` bytes; overflow is an error.
    #[track_caller]
    pub fn kmalloc_array(
        &self,
        n: usize,
        size: usize,
        gfp: GfpFlags,
    ) -> Result<NonNull<u8>, SlabError> {
        let bytes = n.checked_mul(size).ok_or(SlabError::Overflow { n, size })?;
        self.kmalloc(bytes, gfp)
    }

    /// A zeroed array of `n` elements of `size` bytes; overflow is an error.
    #[track_caller]
    pub fn kcalloc(&self, n: usize, size: usize, gfp: GfpFlags) -> Result<NonNull<u8>, SlabError> {
        self.kmalloc_array(n, size, gfp | GfpFlags::ZERO)
    }

    /// Bytes usable at `p` (Linux `ksize`): the class size, or the pages of
    /// a large allocation.
    ///
    /// # Safety
    ///
    /// The pointer contract of the crate documentation (`p` is not given
    /// up here).
    pub unsafe fn ksize(&self, p: *const u8) -> Result<usize, SlabError> {
        if is_zero_or_null(p) {
            return Ok(0);
        }
        // SAFETY: forwarded from our caller.
        match unsafe { self.find(p) }? {
            Owned::Slab { cache, slab, index } => match slab.state(index) {
                ObjState::Allocated => Ok(cache.geo.object_size),
                _ => Err(self.not_allocated(cache, slab, index)),
            },
            Owned::Large { order, .. } => Ok(order.bytes()),
        }
    }

    /// Frees what kmalloc returned (Linux `kfree`); null and
    /// [`ZERO_SIZE_PTR`] are no-ops. The owner is found in O(1) through the
    /// page's owner word; a foreign pointer, a pointer inside an object,
    /// a pointer into the allocator's own metadata and a double free
    /// (racing ones included) are refused with nothing changed.
    ///
    /// ```
    /// use kmm_slab::{testing::HostMachine, Kmem, KmemConfig, SlabError};
    /// use kmm_api::GFP_KERNEL;
    /// let machine = HostMachine::new(256, 1);
    /// let kmem = Kmem::new(&machine, KmemConfig::default()).unwrap();
    /// let p = kmem.kmalloc(100, GFP_KERNEL).unwrap();
    /// // SAFETY: we hold `p` and give it up; the second call passes a
    /// // pointer nobody holds, which the contract allows and which is
    /// // refused.
    /// unsafe {
    ///     kmem.kfree(p.as_ptr()).unwrap();
    ///     assert!(matches!(kmem.kfree(p.as_ptr()), Err(SlabError::DoubleFree { .. })));
    /// }
    /// ```
    ///
    /// # Safety
    ///
    /// The pointer contract of the crate documentation (*Freeing by
    /// pointer*); met when the caller holds the allocation at `p` and
    /// gives it up here.
    #[track_caller]
    #[inline]
    pub unsafe fn kfree(&self, p: *const u8) -> Result<(), SlabError> {
        // SAFETY: forwarded from our caller.
        unsafe { self.free_ptr(p, FreeCheck::Checked, Location::caller()) }
    }

    /// Frees every pointer of `ptrs` as [`Kmem::kfree`] would (Linux
    /// `kfree_bulk`), pinning the CPU once per run of frees its per-CPU
    /// arrays absorb rather than once per object; the number refused
    /// (each refusal counted and reported as `kfree`'s).
    ///
    /// # Safety
    ///
    /// The pointer contract of [`Kmem::kfree`], for each pointer.
    #[track_caller]
    pub unsafe fn kfree_bulk(&self, ptrs: &[*mut u8]) -> usize {
        // SAFETY: forwarded from our caller.
        unsafe { self.free_bulk(ptrs, FreeCheck::Checked, Location::caller()) }
    }

    /// [`Kmem::kfree_bulk`] for a caller that vouches for every pointer,
    /// as `GlobalAlloc::dealloc`'s caller does (a cache in front of a
    /// [`KmallocGlobal`](crate::KmallocGlobal) giving back the blocks its
    /// `dealloc` took): each object's state is stored, not compared and
    /// swapped. The number refused (only pointers outside the allocator's
    /// objects can be).
    ///
    /// # Safety
    ///
    /// Each pointer is null, [`ZERO_SIZE_PTR`], outside this allocator's
    /// memory, or an allocation of this allocator that the caller holds
    /// and gives up here; no pointer appears twice.
    #[track_caller]
    pub unsafe fn kfree_bulk_trusted(&self, ptrs: &[*mut u8]) -> usize {
        // SAFETY: forwarded from our caller.
        unsafe { self.free_bulk(ptrs, FreeCheck::Trusted, Location::caller()) }
    }

    /// `kfree` for a caller that vouches for `p` (`GlobalAlloc::dealloc`):
    /// the object's state is stored, not compared and swapped.
    ///
    /// # Safety
    ///
    /// `p` is null, [`ZERO_SIZE_PTR`], a pointer outside this allocator's
    /// memory (refused before anything is read), or an allocation of this
    /// allocator that the caller holds and gives up here.
    #[inline]
    pub(crate) unsafe fn kfree_trusted(&self, p: *const u8) -> Result<(), SlabError> {
        // SAFETY: forwarded from our caller.
        unsafe { self.free_ptr(p, FreeCheck::Trusted, Location::caller()) }
    }

    /// The two frees by pointer.
    ///
    /// # Safety
    ///
    /// As for [`Kmem::kfree`].
    #[inline(always)]
    pub(crate) unsafe fn free_ptr(
        &self,
        p: *const u8,
        check: FreeCheck,
        site: &'static Location<'static>,
    ) -> Result<(), SlabError> {
        if is_zero_or_null(p) {
            return Ok(());
        }
        // SAFETY: forwarded from our caller.
        match unsafe { self.find(p) }? {
            Owned::Slab { cache, slab, index } => self.cache_free(cache, slab, index, check, site),
            Owned::Large { pfn, order } => self.free_large(p, pfn, order),
        }
    }

    /// Resizes an allocation (Linux `krealloc`): in place while the class
    /// still fits, otherwise a new allocation with the contents copied and
    /// the old one freed. On error the old allocation is untouched.
    ///
    /// # Safety
    ///
    /// The pointer contract of the crate documentation; the caller holds
    /// the allocation at `p` (its bytes are read and it may be freed).
    #[track_caller]
    pub unsafe fn krealloc(
        &self,
        p: *const u8,
        new_size: usize,
        gfp: GfpFlags,
    ) -> Result<NonNull<u8>, SlabError> {
        if is_zero_or_null(p) {
            return self.kmalloc(new_size, gfp);
        }
        // SAFETY: forwarded from our caller.
        let (src, old_size, fits) = match unsafe { self.find(p) }? {
            Owned::Slab { cache, slab, index } => {
                if slab.state(index) != ObjState::Allocated {
                    return Err(self.not_allocated(cache, slab, index));
                }
                let obj = slab.object(index, cache.geo.stride);
                let used = cache.requested_size(obj).unwrap_or(cache.geo.object_size);
                let fits = new_size <= cache.geo.object_size && new_size > 0;
                if fits && cache.debug {
                    // Move the kmalloc red zone to the new requested size.
                    cache.debug_on_alloc(obj, new_size, Location::caller());
                }
                (obj, used, fits)
            }
            Owned::Large { pfn, order } => {
                let base = self.backend().pfn_to_ptr(pfn);
                let base = base.ok_or(SlabError::InvalidPointer { addr: self.virt(p) })?;
                let fits = new_size <= order.bytes() && new_size > KMALLOC_MAX_CACHE_SIZE;
                (base.as_ptr(), order.bytes(), fits)
            }
        };
        if fits {
            return NonNull::new(p.cast_mut())
                .ok_or(SlabError::InvalidPointer { addr: self.virt(p) });
        }
        if new_size == 0 {
            // SAFETY: forwarded from our caller.
            unsafe { self.kfree(p) }?;
            return Ok(ZERO_SIZE_PTR);
        }
        let new = self.kmalloc(new_size, gfp)?;
        // SAFETY: `src` is the live allocation `p` (found through its owner
        // word, held by our caller), at least `old_size` bytes; `new` is a
        // distinct one of at least `new_size`.
        unsafe { raw::copy(src, new.as_ptr(), old_size.min(new_size)) };
        // SAFETY: forwarded from our caller; `p` was checked allocated.
        unsafe { self.kfree(p) }?;
        Ok(new)
    }

    /// A kmalloc used by the allocator itself (off-slab headers), marked
    /// `Internal` so no caller can free it.
    pub(crate) fn kmalloc_internal(
        &self,
        size: usize,
        gfp: GfpFlags,
    ) -> Result<NonNull<u8>, SlabError> {
        let c = self.kmalloc_cache(kmalloc_index(size), false);
        let p = self.cache_alloc(c, gfp, size, Location::caller())?;
        // SAFETY: we hold the object just allocated.
        if let Some((slab, index)) = unsafe { self.slab_index(p.as_ptr()) } {
            slab.set_state(index, ObjState::Internal);
        }
        Ok(p)
    }

    /// Frees what [`Kmem::kmalloc_internal`] returned, straight to its
    /// slab (not to a CPU's array, which a drain may just have emptied).
    pub(crate) fn kfree_internal(&self, p: *const u8) {
        // SAFETY: `p` is an internal object this allocator holds.
        if let Ok(Owned::Slab { cache, slab, index }) = unsafe { self.find(p) } {
            let freed = self.free_to_node(cache, slab, index, || {
                if slab.state(index) != ObjState::Internal {
                    return Err(self.not_allocated(cache, slab, index));
                }
                if cache.debug {
                    cache.debug_init_free(slab.object(index, cache.geo.stride));
                }
                Ok(())
            });
            if freed.is_err() {
                self.note_internal_error();
            }
        }
    }

    fn kmalloc_large(&self, size: usize, gfp: GfpFlags) -> Result<NonNull<u8>, SlabError> {
        let too_large = SlabError::SizeTooLarge {
            bytes: size,
            max: KMALLOC_MAX_SIZE,
        };
        let order = get_order(size).map_err(|_| too_large)?;
        if size > KMALLOC_MAX_SIZE || order > MAX_PAGE_ORDER {
            return Err(too_large);
        }
        let (pfn, base) =
            self.alloc_block(gfp & !GfpFlags::ZONE_MASK | (gfp & GfpFlags::DMA), order)?;
        if let Err(e) = self.set_large_owner(pfn, order) {
            self.free_owned_block(pfn, order);
            return Err(e);
        }
        if gfp.contains(GfpFlags::ZERO) {
            // SAFETY: the block is fresh and `order.bytes()` long.
            unsafe { raw::fill(base, 0, order.bytes()) };
        }
        self.large_kmalloc_pages.fetch_add(order.pages(), Relaxed);
        NonNull::new(base).ok_or(too_large)
    }
}

/// The class sizes, for reports and tests.
pub fn kmalloc_classes() -> &'static [usize] {
    &KMALLOC_CLASSES
}
