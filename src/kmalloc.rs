//! The slab layer's object API on the [`MemoryManager`], by Linux name: the
//! kmalloc family (`kmalloc`, `kzalloc`, `kcalloc`, `kmalloc_array`,
//! `krealloc`, `krealloc_array`, `kmemdup`, `kstrdup`, `kstrndup`,
//! `ksize`, `kmalloc_size_roundup`, `kfree`, `kfree_sensitive`) and the
//! `kmem_cache_*` calls (bulk ones included).
//!
//! Each call forwards to the manager's [`kmm_slab::Kmem`] (see `kmm-slab`
//! for costs, error cases and the pointer contract) and converts the error
//! into the manager's [`Error`]. This module owns no state; the calls that
//! copy (`kmemdup`, `kstrdup`) or zero (`kfree_sensitive`) touch only the
//! allocation they made or were given.
//!
//! ```
//! # #[cfg(all(feature = "std", target_pointer_width = "64"))] {
//! use kmm::{MemoryManager, SlabFlags, GFP_KERNEL, PAGE_SIZE};
//! let mm = MemoryManager::hosted(8 << 20, 1)?;
//! let inodes = mm.kmem_cache_create("inode_cache", 600, 8, SlabFlags::HWCACHE_ALIGN, None)?;
//! let inode = mm.kmem_cache_zalloc(inodes, GFP_KERNEL)?;
//! let page = mm.get_free_page(GFP_KERNEL)?;
//! assert!(page.is_aligned(PAGE_SIZE));
//! // SAFETY: we hold `inode` and `page` and give them up; nothing else
//! // uses the cache while it is destroyed.
//! unsafe {
//!     mm.kmem_cache_free(inodes, inode.as_ptr())?;
//!     mm.kmem_cache_destroy(inodes)?;
//!     mm.free_page(page)?;
//! }
//! # }
//! # Ok::<(), kmm::Error>(())
//! ```

use crate::x86::Mmu;
use crate::{Error, MemoryManager, SlabPages};
use core::ptr::{self, NonNull};
use kmm_api::{get_order, DirectMap, GfpFlags, PreemptControl, GFP_KERNEL, PAGE_SIZE};
use kmm_slab::{
    CacheId, Ctor, ObjectOwner, SlabError, SlabFlags, SlabInfo, KMALLOC_MAX_CACHE_SIZE,
    KMALLOC_MAX_SIZE,
};

impl<P: PreemptControl + 'static, D: DirectMap + 'static, M: Mmu + 'static> MemoryManager<P, D, M> {
    /// Linux `kmalloc`: `size` bytes from the smallest size class that
    /// holds them, whole pages above `KMALLOC_MAX_CACHE_SIZE`; 0 bytes give
    /// `ZERO_SIZE_PTR`.
    #[track_caller]
    #[inline]
    pub fn kmalloc(&self, size: usize, gfp: GfpFlags) -> Result<NonNull<u8>, Error> {
        self.kmem().kmalloc(size, gfp).map_err(Error::from)
    }

    /// Linux `kzalloc`: `kmalloc` zeroed.
    #[track_caller]
    pub fn kzalloc(&self, size: usize, gfp: GfpFlags) -> Result<NonNull<u8>, Error> {
        Ok(self.kmem().kzalloc(size, gfp)?)
    }

    /// Linux `kcalloc`: a zeroed array; `n * size` overflowing is an error.
    #[track_caller]
    pub fn kcalloc(&self, n: usize, size: usize, gfp: GfpFlags) -> Result<NonNull<u8>, Error> {
        Ok(self.kmem().kcalloc(n, size, gfp)?)
    }

    /// Linux `kmalloc_array`: an array; `n * size` overflowing is an error.
    #[track_caller]
    pub fn kmalloc_array(
        &self,
        n: usize,
        size: usize,
        gfp: GfpFlags,
    ) -> Result<NonNull<u8>, Error> {
        Ok(self.kmem().kmalloc_array(n, size, gfp)?)
    }

    /// Linux `kmalloc_size_roundup`: the bytes `kmalloc(size)` really
    /// provides (its class size, or whole pages for a large kmalloc), so a
    /// caller can ask for all of it up front. 0 and sizes above
    /// `KMALLOC_MAX_SIZE` come back unchanged, as in Linux (those
    /// allocations give `ZERO_SIZE_PTR` or fail).
    ///
    /// ```
    /// # #[cfg(all(feature = "std", target_pointer_width = "64"))] {
    /// # let mm = kmm::MemoryManager::hosted(8 << 20, 1)?;
    /// assert_eq!(mm.kmalloc_size_roundup(100), 128);
    /// assert_eq!(mm.kmalloc_size_roundup(129), 192);
    /// assert_eq!(mm.kmalloc_size_roundup(9000), 16384, "a large kmalloc: whole pages");
    /// assert_eq!(mm.kmalloc_size_roundup(0), 0);
    /// assert_eq!(mm.kmalloc_size_roundup(usize::MAX), usize::MAX);
    /// # }
    /// # Ok::<(), kmm::Error>(())
    /// ```
    pub fn kmalloc_size_roundup(&self, size: usize) -> usize {
        if size == 0 || size > KMALLOC_MAX_SIZE {
            return size;
        }
        if size <= KMALLOC_MAX_CACHE_SIZE {
            let class = self.kmem().kmalloc_slab(size, GFP_KERNEL);
            if let Some(info) = class.and_then(|id| self.kmem().kmem_cache_info(id).ok()) {
                return info.object_size;
            }
        }
        get_order(size).map_or(size, |order| PAGE_SIZE << order.as_u32())
    }

    /// Linux `kmemdup`: a kmalloc'd copy of `src`.
    ///
    /// ```
    /// # #[cfg(all(feature = "std", target_pointer_width = "64"))] {
    /// # let mm = kmm::MemoryManager::hosted(8 << 20, 1)?;
    /// let copy = mm.kmemdup(b"superblock", kmm::GFP_KERNEL)?;
    /// // SAFETY: `copy` holds the 10 bytes just copied, and is ours.
    /// unsafe {
    ///     assert_eq!(std::slice::from_raw_parts(copy.as_ptr(), 10), b"superblock");
    ///     mm.kfree(copy.as_ptr())?;
    /// }
    /// # }
    /// # Ok::<(), kmm::Error>(())
    /// ```
    #[track_caller]
    pub fn kmemdup(&self, src: &[u8], gfp: GfpFlags) -> Result<NonNull<u8>, Error> {
        let dst = self.kmalloc(src.len(), gfp)?;
        if !src.is_empty() {
            // SAFETY: `dst` is a fresh allocation of at least `src.len()`
            // bytes (not `ZERO_SIZE_PTR`: the length is not 0), distinct
            // from the caller's slice.
            unsafe { ptr::copy_nonoverlapping(src.as_ptr(), dst.as_ptr(), src.len()) };
        }
        Ok(dst)
    }

    /// Linux `kstrdup`: a kmalloc'd, NUL-terminated copy of the C string in
    /// `s` (up to its first NUL, or all of it if it has none).
    ///
    /// ```
    /// # #[cfg(all(feature = "std", target_pointer_width = "64"))] {
    /// # let mm = kmm::MemoryManager::hosted(8 << 20, 1)?;
    /// let name = mm.kstrdup(b"eth0\0junk", kmm::GFP_KERNEL)?;
    /// // SAFETY: `name` holds the NUL-terminated copy, and is ours.
    /// unsafe {
    ///     assert_eq!(std::ffi::CStr::from_ptr(name.as_ptr().cast()).to_bytes(), b"eth0");
    ///     assert_eq!(mm.ksize(name.as_ptr())?, 8, "5 bytes in kmalloc-8");
    ///     mm.kfree(name.as_ptr())?;
    /// }
    /// # }
    /// # Ok::<(), kmm::Error>(())
    /// ```
    #[track_caller]
    pub fn kstrdup(&self, s: &[u8], gfp: GfpFlags) -> Result<NonNull<u8>, Error> {
        self.kstrndup(s, usize::MAX, gfp)
    }

    /// Linux `kstrndup`: as [`MemoryManager::kstrdup`], at most `max`
    /// bytes of the string, then a NUL.
    ///
    /// ```
    /// # #[cfg(all(feature = "std", target_pointer_width = "64"))] {
    /// # let mm = kmm::MemoryManager::hosted(8 << 20, 1)?;
    /// let p = mm.kstrndup(b"kworker/0:1", 7, kmm::GFP_KERNEL)?;
    /// // SAFETY: `p` holds the NUL-terminated copy, and is ours.
    /// unsafe {
    ///     assert_eq!(std::ffi::CStr::from_ptr(p.as_ptr().cast()).to_bytes(), b"kworker");
    ///     mm.kfree(p.as_ptr())?;
    /// }
    /// # }
    /// # Ok::<(), kmm::Error>(())
    /// ```
    #[track_caller]
    pub fn kstrndup(&self, s: &[u8], max: usize, gfp: GfpFlags) -> Result<NonNull<u8>, Error> {
        let len = s
            .iter()
            .take(max)
            .position(|&b| b == 0)
            .unwrap_or(s.len().min(max));
        let dst = self.kmalloc(len + 1, gfp)?;
        // SAFETY: `dst` is a fresh allocation of `len + 1` bytes (never
        // `ZERO_SIZE_PTR`), distinct from `s`, which has at least `len`.
        unsafe {
            ptr::copy_nonoverlapping(s.as_ptr(), dst.as_ptr(), len);
            dst.as_ptr().add(len).write(0);
        }
        Ok(dst)
    }

    /// Linux `krealloc`: in place while the class fits, else a new
    /// allocation with the contents copied; on error `p` is untouched.
    ///
    /// # Safety
    ///
    /// The pointer contract of `kmm-slab` (*Freeing by pointer*): the
    /// caller holds the allocation at `p` (or passes null).
    #[track_caller]
    pub unsafe fn krealloc(
        &self,
        p: *const u8,
        new_size: usize,
        gfp: GfpFlags,
    ) -> Result<NonNull<u8>, Error> {
        // SAFETY: forwarded from our caller.
        Ok(unsafe { self.kmem().krealloc(p, new_size, gfp) }?)
    }

    /// Linux `krealloc_array`: `krealloc` to `new_n * size` bytes; an
    /// overflowing product is an error and `p` is untouched.
    ///
    /// ```
    /// # #[cfg(all(feature = "std", target_pointer_width = "64"))] {
    /// # let mm = kmm::MemoryManager::hosted(8 << 20, 1)?;
    /// let a = mm.kmalloc_array(4, 8, kmm::GFP_KERNEL)?;
    /// // SAFETY: we hold `a`; each call gives it up only on success.
    /// unsafe {
    ///     assert!(mm.krealloc_array(a.as_ptr(), usize::MAX, 2, kmm::GFP_KERNEL).is_err());
    ///     let b = mm.krealloc_array(a.as_ptr(), 100, 8, kmm::GFP_KERNEL)?;
    ///     assert_eq!(mm.ksize(b.as_ptr())?, 1024);
    ///     mm.kfree(b.as_ptr())?;
    /// }
    /// # }
    /// # Ok::<(), kmm::Error>(())
    /// ```
    ///
    /// # Safety
    ///
    /// As for [`MemoryManager::krealloc`].
    #[track_caller]
    pub unsafe fn krealloc_array(
        &self,
        p: *const u8,
        new_n: usize,
        size: usize,
        gfp: GfpFlags,
    ) -> Result<NonNull<u8>, Error> {
        let bytes = new_n
            .checked_mul(size)
            .ok_or(SlabError::Overflow { n: new_n, size })?;
        // SAFETY: forwarded from our caller.
        unsafe { self.krealloc(p, bytes, gfp) }
    }

    /// Linux `ksize`: the bytes usable at `p` (its class size, or the
    /// block's bytes for a large kmalloc).
    ///
    /// # Safety
    ///
    /// The pointer contract of `kmm-slab` (*Freeing by pointer*).
    pub unsafe fn ksize(&self, p: *const u8) -> Result<usize, Error> {
        // SAFETY: forwarded from our caller.
        Ok(unsafe { self.kmem().ksize(p) }?)
    }

    /// Linux `kfree`: null and `ZERO_SIZE_PTR` are no-ops; a foreign
    /// pointer, an interior pointer or a double free is refused with
    /// nothing changed.
    ///
    /// # Safety
    ///
    /// The pointer contract of `kmm-slab` (*Freeing by pointer*): met when
    /// the caller holds the allocation at `p` and gives it up here.
    #[track_caller]
    #[inline]
    pub unsafe fn kfree(&self, p: *const u8) -> Result<(), Error> {
        // SAFETY: forwarded from our caller.
        unsafe { self.kmem().kfree(p) }.map_err(Error::from)
    }

    /// Linux `kfree_sensitive`: zeroes every byte [`MemoryManager::ksize`]
    /// reports (not only those asked for), in writes the compiler keeps,
    /// then frees. A pointer `kfree` would refuse is refused before any
    /// byte is written.
    ///
    /// ```
    /// # #[cfg(all(feature = "std", target_pointer_width = "64"))] {
    /// # let mm = kmm::MemoryManager::hosted(8 << 20, 1)?;
    /// let key = mm.kmemdup(&[0xa5; 20], kmm::GFP_KERNEL)?;
    /// // SAFETY: we hold `key` and give it up.
    /// unsafe { mm.kfree_sensitive(key.as_ptr())? };
    /// // The same object comes back from this CPU's cache, zeroed.
    /// let again = mm.kmalloc(20, kmm::GFP_KERNEL)?;
    /// assert_eq!(again, key);
    /// // SAFETY: `again` is ours, 32 bytes (kmalloc-32).
    /// unsafe {
    ///     let cache = mm.kmem_cache_of(again.as_ptr())?.cache().unwrap();
    ///     let fp = mm.kmem().kmem_cache_info(cache)?.free_pointer_offset;
    ///     let bytes = std::slice::from_raw_parts(again.as_ptr(), 32);
    ///     let kept = |i: usize| (fp..fp + 8).contains(&i); // the free pointer's slot
    ///     assert!(bytes.iter().enumerate().all(|(i, &b)| b == 0 || kept(i)));
    ///     mm.kfree(again.as_ptr())?;
    /// }
    /// # }
    /// # Ok::<(), kmm::Error>(())
    /// ```
    ///
    /// # Safety
    ///
    /// As for [`MemoryManager::kfree`].
    #[track_caller]
    pub unsafe fn kfree_sensitive(&self, p: *const u8) -> Result<(), Error> {
        // SAFETY: forwarded from our caller; `ksize` also refuses a pointer
        // that is not a live allocation, before anything is written.
        let size = unsafe { self.ksize(p) }?;
        let base = p.cast_mut();
        for i in 0..size {
            // SAFETY: `p` is a live allocation of `size` usable bytes
            // (checked just above) that our caller holds and gives up.
            // Volatile: the bytes are dead after the free, and a plain
            // store would be optimised away (Linux `memzero_explicit`).
            unsafe { base.add(i).write_volatile(0) };
        }
        // SAFETY: forwarded from our caller.
        unsafe { self.kfree(p) }
    }

    /// What owns the allocation at `p`: the cache of a slab object, or the
    /// page block of a large kmalloc (Linux `virt_to_cache`, which answers
    /// only for the first).
    ///
    /// ```
    /// # #[cfg(all(feature = "std", target_pointer_width = "64"))] {
    /// use kmm::ObjectOwner;
    /// # let mm = kmm::MemoryManager::hosted(8 << 20, 1)?;
    /// let small = mm.kmalloc(100, kmm::GFP_KERNEL)?;
    /// let large = mm.kmalloc(20_000, kmm::GFP_KERNEL)?;
    /// // SAFETY: we hold both objects; the kfrees give them up.
    /// unsafe {
    ///     let cache = mm.kmem_cache_of(small.as_ptr())?.cache().unwrap();
    ///     assert_eq!(mm.kmem().kmem_cache_info(cache)?.name, "kmalloc-128");
    ///     assert_eq!(mm.kmem_cache_of(large.as_ptr())?, ObjectOwner::Large { order: kmm::Order::new(3)? });
    ///     mm.kfree(small.as_ptr())?;
    ///     mm.kfree(large.as_ptr())?;
    /// }
    /// # }
    /// # Ok::<(), kmm::Error>(())
    /// ```
    ///
    /// # Safety
    ///
    /// As for [`MemoryManager::ksize`] (`p` is not given up here).
    pub unsafe fn kmem_cache_of(&self, p: *const u8) -> Result<ObjectOwner, Error> {
        // SAFETY: forwarded from our caller.
        Ok(unsafe { self.kmem().kmem_cache_of(p) }?)
    }

    /// Linux `kmem_cache_create`: a cache of `size`-byte objects aligned
    /// to `align` (0: word alignment), each built once by `ctor`.
    pub fn kmem_cache_create(
        &self,
        name: &'static str,
        size: usize,
        align: usize,
        flags: SlabFlags,
        ctor: Option<Ctor>,
    ) -> Result<CacheId, Error> {
        Ok(self
            .kmem()
            .kmem_cache_create(name, size, align, flags, ctor)?)
    }

    /// Linux `kmem_cache_alloc`.
    #[track_caller]
    #[inline]
    pub fn kmem_cache_alloc(&self, cache: CacheId, gfp: GfpFlags) -> Result<NonNull<u8>, Error> {
        self.kmem()
            .kmem_cache_alloc(cache, gfp)
            .map_err(Error::from)
    }

    /// Linux `kmem_cache_zalloc`: `kmem_cache_alloc` zeroed.
    ///
    /// ```
    /// # #[cfg(all(feature = "std", target_pointer_width = "64"))] {
    /// # let mm = kmm::MemoryManager::hosted(8 << 20, 1)?;
    /// let cache = mm.kmem_cache_create("inode", 600, 0, kmm::SlabFlags::empty(), None)?;
    /// let dirty = mm.kmem_cache_alloc(cache, kmm::GFP_KERNEL)?;
    /// // SAFETY: ours (600 bytes); freed, and the zalloc reuses it.
    /// unsafe {
    ///     dirty.as_ptr().write_bytes(0xff, 600);
    ///     mm.kmem_cache_free(cache, dirty.as_ptr())?;
    /// }
    /// let inode = mm.kmem_cache_zalloc(cache, kmm::GFP_KERNEL)?;
    /// assert_eq!(inode, dirty, "the same object, from this CPU's array");
    /// // SAFETY: ours, 600 bytes.
    /// assert!(unsafe { std::slice::from_raw_parts(inode.as_ptr(), 600) }.iter().all(|&b| b == 0));
    /// # unsafe { mm.kmem_cache_free(cache, inode.as_ptr())? };
    /// # }
    /// # Ok::<(), kmm::Error>(())
    /// ```
    #[track_caller]
    pub fn kmem_cache_zalloc(&self, cache: CacheId, gfp: GfpFlags) -> Result<NonNull<u8>, Error> {
        Ok(self.kmem().kmem_cache_zalloc(cache, gfp)?)
    }

    /// Linux `kmem_cache_alloc_bulk`: fills every slot of `objects` with a
    /// new object of `cache` and returns how many (all of them), or frees
    /// what it took and fails (Linux returns 0 then).
    ///
    /// ```
    /// # #[cfg(all(feature = "std", target_pointer_width = "64"))] {
    /// # let mm = kmm::MemoryManager::hosted(8 << 20, 1)?;
    /// let cache = mm.kmem_cache_create("bio", 200, 0, kmm::SlabFlags::empty(), None)?;
    /// let mut objects = [core::ptr::null_mut(); 16];
    /// assert_eq!(mm.kmem_cache_alloc_bulk(cache, kmm::GFP_KERNEL, &mut objects)?, 16);
    /// assert_eq!(mm.kmem().kmem_cache_stats(cache)?.active_objs, 16);
    /// // SAFETY: we hold the 16 objects and give them up.
    /// unsafe { mm.kmem_cache_free_bulk(cache, &objects)? };
    /// assert_eq!(mm.kmem().kmem_cache_stats(cache)?.active_objs, 0);
    /// # }
    /// # Ok::<(), kmm::Error>(())
    /// ```
    #[track_caller]
    pub fn kmem_cache_alloc_bulk(
        &self,
        cache: CacheId,
        gfp: GfpFlags,
        objects: &mut [*mut u8],
    ) -> Result<usize, Error> {
        for i in 0..objects.len() {
            match self.kmem_cache_alloc(cache, gfp) {
                Ok(object) => objects[i] = object.as_ptr(),
                Err(e) => {
                    // SAFETY: the objects before `i` were allocated just
                    // now and are held by nobody else.
                    let _ = unsafe { self.kmem_cache_free_bulk(cache, &objects[..i]) };
                    objects[..i].fill(ptr::null_mut());
                    return Err(e);
                }
            }
        }
        Ok(objects.len())
    }

    /// Linux `kmem_cache_free_bulk`: frees every object of `objects`. Each
    /// one the cache refuses (foreign, interior, already free) is left as
    /// it was, and the first refusal is returned after the rest are freed.
    ///
    /// # Safety
    ///
    /// As for [`MemoryManager::kmem_cache_free`], for each object.
    #[track_caller]
    pub unsafe fn kmem_cache_free_bulk(
        &self,
        cache: CacheId,
        objects: &[*mut u8],
    ) -> Result<(), Error> {
        let mut first_refusal = Ok(());
        for &object in objects {
            // SAFETY: forwarded from our caller, object by object.
            let freed = unsafe { self.kmem_cache_free(cache, object) };
            if first_refusal.is_ok() {
                first_refusal = freed;
            }
        }
        first_refusal
    }

    /// Linux `kmem_cache_free`: refuses an object of another cache.
    ///
    /// # Safety
    ///
    /// The pointer contract of `kmm-slab` (*Freeing by pointer*): met when
    /// the caller holds the object at `p` and gives it up here.
    #[track_caller]
    #[inline]
    pub unsafe fn kmem_cache_free(&self, cache: CacheId, p: *const u8) -> Result<(), Error> {
        // SAFETY: forwarded from our caller.
        unsafe { self.kmem().kmem_cache_free(cache, p) }.map_err(Error::from)
    }

    /// Linux `kmem_cache_shrink`: the pages given back to the zones.
    pub fn kmem_cache_shrink(&self, cache: CacheId) -> Result<usize, Error> {
        Ok(self.kmem().kmem_cache_shrink(cache)?)
    }

    /// Linux `kmem_cache_destroy`: refused, naming the count, while objects
    /// are live.
    ///
    /// # Safety
    ///
    /// No other use of the cache runs during the call (`kmm-slab`'s
    /// `Kmem::kmem_cache_destroy`).
    pub unsafe fn kmem_cache_destroy(&self, cache: CacheId) -> Result<(), Error> {
        // SAFETY: forwarded from our caller.
        Ok(unsafe { self.kmem().kmem_cache_destroy(cache) }?)
    }

    /// Linux `validate_slab_cache` (`/sys/kernel/slab/<cache>/validate`):
    /// checks every object and free list of `cache` (with `slub_debug`,
    /// its red zones and poison too); each corruption found is reported,
    /// repaired and counted, and the count of this call returned.
    pub fn kmem_cache_validate(&self, cache: CacheId) -> Result<usize, Error> {
        Ok(self.kmem().kmem_cache_validate(cache)?)
    }

    /// `/proc/slabinfo` (version 2.1).
    pub fn slabinfo(&self) -> SlabInfo<'_, SlabPages<P, D>> {
        SlabInfo(self.kmem())
    }
}
