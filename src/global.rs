//! kmalloc as Rust's global allocator: [`GlobalKmalloc`] (kmm-slab's
//! `KmallocGlobal` over a manager's slab layer) for kernels, and, on the
//! hosted preset, [`HostedGlobal`], which also serves what the manager
//! cannot (before it is booted, and requests kmalloc refuses) from the
//! host's allocator. Classes up to 8 KiB, whole pages above, `alloc_zeroed`
//! through kzalloc, `realloc` through krealloc, alignment up to a page.
//! `GlobalKmalloc` holds no state beyond how to reach the manager;
//! `HostedGlobal` keeps per-thread magazines of small objects in front of
//! kmalloc (the `thread_cache` module). Never panics (failures are null
//! pointers).
//!
//! A kernel needs three lines (its own platform and direct-map types, and
//! a `Once` from the `spin` crate), then boots the manager into `MM`:
//!
//! ```ignore
//! static MM: spin::Once<kmm::MemoryManager<MyPlatform, MyDirectMap>> = spin::Once::new();
//! #[global_allocator]
//! static GLOBAL: kmm::GlobalKmalloc<MyPlatform, MyDirectMap> = kmm::GlobalKmalloc::new(|| MM.get().map(kmm::MemoryManager::kmem));
//! ```

use crate::SlabPages;
use kmm_slab::KmallocGlobal;

/// A `#[global_allocator]` over the kmalloc family of a
/// [`crate::MemoryManager`]; see the module documentation.
pub type GlobalKmalloc<P, D> = KmallocGlobal<SlabPages<P, D>>;

#[cfg(all(feature = "std", target_pointer_width = "64"))]
pub use hosted_global::HostedGlobal;
#[cfg(all(feature = "std", target_pointer_width = "64"))]
pub use thread_cache::ThreadCacheStats;

#[cfg(all(feature = "std", target_pointer_width = "64"))]
mod thread_cache;

#[cfg(all(feature = "std", target_pointer_width = "64"))]
mod depot;

#[cfg(all(feature = "std", target_pointer_width = "64"))]
mod hosted_global {
    use super::thread_cache::{self, class_of, ThreadCacheStats};
    use super::GlobalKmalloc;
    use crate::hosted::Hosted;
    use core::alloc::{GlobalAlloc, Layout};
    use kmm_api::{DirectMap, GfpFlags, __GFP_NOWARN, GFP_NOWAIT};
    use kmm_slab::Kmem;
    use std::alloc::System;

    pub(super) type HostedKmem = Kmem<crate::SlabPages<Hosted, Hosted>>;

    /// What kmalloc is asked with (see [`HostedGlobal`]).
    const GFP: GfpFlags = GFP_NOWAIT.union(__GFP_NOWARN);

    /// The global allocator of a process running on a hosted manager.
    ///
    /// Ownership of each block is decided by its address: a pointer inside
    /// the manager's RAM is kmalloc's, any other the host's. So what the
    /// host served before the manager existed (the runtime's own start-up,
    /// the manager's RAM and handles) is freed to the host, and a request
    /// kmalloc refuses (beyond `KMALLOC_MAX_SIZE`, or the machine out of
    /// memory) falls back to the host instead of aborting.
    ///
    /// kmalloc is asked with `GFP_NOWAIT | __GFP_NOWARN`: the same
    /// watermark as `GFP_KERNEL` before it reclaims, but no direct reclaim.
    /// A request the manager cannot serve then fails at once and the host
    /// serves it, as Linux's `kvmalloc` spares its kmalloc attempt the
    /// reclaim retries when vmalloc can serve. With `GFP_KERNEL` every
    /// such request near exhaustion ran a reclaim round (the shrinkers and
    /// a drain of every CPU's page lists) for nothing (BENCHMARKS.md, "Near
    /// exhaustion", has the cost). Nothing is left unreclaimed
    /// for want of it: the slab layer gives empty slabs beyond its partial
    /// minimum back as they empty, and the per-CPU lists are bounded.
    ///
    /// Requests up to 1 KiB (size and alignment) go through the calling
    /// thread's magazines (the `thread_cache` module): a pop or push with
    /// no CPU pin and no owner look-up, kmalloc reached in batches, and
    /// full batches traded between threads through the process's
    /// magazine depot. What the magazines hold is bounded (32 objects a
    /// class, at most 181 KiB a thread), returned at the thread's exit or
    /// by [`HostedGlobal::flush_thread_cache`]; what the depot holds is
    /// bounded too (128 objects a class, 723 KiB), returned by
    /// [`HostedGlobal::drain_depot`]; both are counted by
    /// [`HostedGlobal::thread_cache_stats`]. `realloc` keeps a block of
    /// those sizes in place only while the new layout has the same class.
    ///
    /// ```
    /// use kmm::{global::HostedGlobal, HostedMemoryManager, MemoryManager};
    /// use std::sync::OnceLock;
    ///
    /// static MM: OnceLock<HostedMemoryManager> = OnceLock::new();
    /// #[global_allocator]
    /// // SAFETY: `MM` is a `OnceLock`: once it holds a manager it always does.
    /// static GLOBAL: HostedGlobal = unsafe { HostedGlobal::new(|| MM.get().map(MemoryManager::kmem)) };
    ///
    /// fn main() {
    ///     let mm = MM.get_or_init(|| MemoryManager::hosted(16 << 20, 2).unwrap());
    ///     let v: Vec<u32> = (0..100).collect();
    ///     // SAFETY: `v` holds the allocation and outlives the call.
    ///     assert!(unsafe { mm.kmem().ksize(v.as_ptr().cast()) }.unwrap() >= 400);
    /// }
    /// ```
    pub struct HostedGlobal {
        slab: GlobalKmalloc<Hosted, Hosted>,
        kmem: fn() -> Option<&'static HostedKmem>,
    }

    impl HostedGlobal {
        /// An allocator serving through the manager `kmem` returns, once it
        /// returns one.
        ///
        /// # Safety
        ///
        /// Once `kmem` returns a manager, it must return that same manager
        /// on every later call (as a `OnceLock`'s `get` does). Blocks are
        /// told apart by address, so a block of a manager `kmem` no longer
        /// returned would be handed to the host's allocator, which never
        /// served it.
        pub const unsafe fn new(kmem: fn() -> Option<&'static HostedKmem>) -> Self {
            HostedGlobal {
                slab: GlobalKmalloc::new(kmem).with_gfp(GFP),
                kmem,
            }
        }

        /// Returns every object the calling thread's magazines hold to
        /// kmalloc (as its exit would); the number returned.
        pub fn flush_thread_cache() -> usize {
            thread_cache::flush()
        }

        /// What every thread's magazines hold, as of each thread's last
        /// refill or flush, and what the depot holds.
        pub fn thread_cache_stats() -> ThreadCacheStats {
            thread_cache::stats()
        }

        /// Returns every batch the process's magazine depot holds of this
        /// allocator's manager to kmalloc; the number of objects returned.
        pub fn drain_depot(&self) -> usize {
            (self.kmem)().map_or(0, thread_cache::drain_depot)
        }

        /// Whether `p` lies in the manager's RAM (and so is kmalloc's).
        pub(super) fn is_ours(&self, p: *const u8) -> bool {
            (self.kmem)().is_some_and(|k| k.backend().ptr_to_pfn(p).is_some())
        }

        /// `alloc` when the calling thread's magazine cannot serve: its
        /// refill, kmalloc, or the host.
        ///
        /// # Safety
        ///
        /// As for [`GlobalAlloc::alloc`].
        #[cold]
        #[inline(never)]
        unsafe fn alloc_slow(&self, layout: Layout) -> *mut u8 {
            let p = match ((self.kmem)(), class_of(layout)) {
                (Some(kmem), Some(class)) => thread_cache::alloc(kmem, class, GFP),
                // SAFETY: forwarded from our caller.
                _ => unsafe { self.slab.alloc(layout) },
            };
            if p.is_null() {
                // SAFETY: as above.
                return unsafe { System.alloc(layout) };
            }
            p
        }

        /// `dealloc` when the calling thread's magazine cannot take `p`:
        /// its flush, kmalloc, or the host.
        ///
        /// # Safety
        ///
        /// As for [`GlobalAlloc::dealloc`].
        #[cold]
        #[inline(never)]
        unsafe fn dealloc_slow(&self, p: *mut u8, layout: Layout) {
            let host = |p| {
                // SAFETY: `p` lies outside the manager's RAM, so the host
                // served it with `layout`.
                unsafe { System.dealloc(p, layout) }
            };
            if let (Some(kmem), Some(class)) = ((self.kmem)(), class_of(layout)) {
                if kmem.backend().ptr_to_pfn(p).is_some() {
                    let direct = |p| {
                        // SAFETY: kmalloc served `p`, which our caller
                        // gives up.
                        unsafe { self.slab.dealloc(p, layout) }
                    };
                    // SAFETY: our caller gives up `p`, in the manager's
                    // RAM and so served by kmalloc for a layout of `class`
                    // (or kept by `realloc` only within it).
                    return unsafe { thread_cache::free(kmem, class, p, direct) };
                }
                return host(p);
            }
            // SAFETY: our caller gives up `p`, served by kmalloc or, if it
            // lies outside the manager's RAM, by the host.
            unsafe { self.slab.dealloc_or(p, host) }
        }
    }

    // SAFETY: each block is served by one of two allocators and returned
    // to the same one, told apart by address (the manager's RAM is a host
    // allocation the host never hands out twice); both honour `layout`.
    // kmalloc's blocks of the magazine classes pass through the calling
    // thread's magazines, which hold each only while no caller does, and
    // satisfy every layout of their class (see `thread_cache`).
    unsafe impl GlobalAlloc for HostedGlobal {
        /// The magazine's pop inline, with no call on the way; the rest
        /// out of line.
        #[inline]
        unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
            if let (Some(kmem), Some(class)) = ((self.kmem)(), class_of(layout)) {
                if let Some(p) = thread_cache::pop(kmem, class) {
                    return p;
                }
            }
            // SAFETY: forwarded from our caller.
            unsafe { self.alloc_slow(layout) }
        }

        unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
            if class_of(layout).is_some() {
                // SAFETY: forwarded from our caller.
                let p = unsafe { self.alloc(layout) };
                if !p.is_null() {
                    // SAFETY: `p` is a fresh block of `layout.size()` bytes.
                    unsafe { core::ptr::write_bytes(p, 0, layout.size()) };
                }
                return p;
            }
            // SAFETY: forwarded from our caller.
            let p = unsafe { self.slab.alloc_zeroed(layout) };
            if p.is_null() {
                // SAFETY: as above.
                return unsafe { System.alloc_zeroed(layout) };
            }
            p
        }

        /// The magazine's push inline, with no call on the way; the rest
        /// out of line.
        #[inline]
        unsafe fn dealloc(&self, p: *mut u8, layout: Layout) {
            if let (Some(kmem), Some(class)) = ((self.kmem)(), class_of(layout)) {
                if kmem.backend().ptr_to_pfn(p).is_some()
                    // SAFETY: our caller gives up `p`, which lies in the
                    // manager's RAM and so was served by kmalloc for a
                    // layout of `class` (or kept by `realloc` only within
                    // it).
                    && unsafe { thread_cache::push(kmem, class, p) }
                {
                    return;
                }
            }
            // SAFETY: forwarded from our caller.
            unsafe { self.dealloc_slow(p, layout) }
        }

        unsafe fn realloc(&self, p: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
            if !self.is_ours(p) {
                // SAFETY: the host served `p` with `layout`; it keeps it.
                return unsafe { System.realloc(p, layout, new_size) };
            }
            let Ok(new_layout) = Layout::from_size_align(new_size, layout.align()) else {
                return core::ptr::null_mut();
            };
            let (class, new_class) = (class_of(layout), class_of(new_layout));
            if class.is_some() || new_class.is_some() {
                // The magazines' rule: a block stays only within its class.
                if class == new_class {
                    return p;
                }
                // SAFETY: a non-zero size (the caller's contract).
                let q = unsafe { self.alloc(new_layout) };
                if !q.is_null() {
                    // SAFETY: `p` holds `layout.size()` bytes, `q` at least
                    // `new_size`; distinct blocks, and `p` is ours to free.
                    unsafe {
                        core::ptr::copy_nonoverlapping(p, q, layout.size().min(new_size));
                        self.dealloc(p, layout);
                    }
                }
                return q;
            }
            // SAFETY: kmalloc served `p` with `layout`.
            let q = unsafe { self.slab.realloc(p, layout, new_size) };
            if !q.is_null() {
                return q;
            }
            // kmalloc refused the new size: move the block to the host.
            // SAFETY: a non-zero size (the caller's contract).
            let q = unsafe { System.alloc(new_layout) };
            if !q.is_null() {
                // SAFETY: `p` holds `layout.size()` bytes and is still
                // live (a failed realloc leaves it), `q` at least
                // `new_size`; distinct blocks.
                unsafe {
                    core::ptr::copy_nonoverlapping(p, q, layout.size().min(new_size));
                    self.slab.dealloc(p, layout);
                }
            }
            q
        }
    }

    #[cfg(test)]
    mod tests {
        use super::*;
        use crate::{HostedMemoryManager, MemoryManager};
        use std::sync::OnceLock;

        static MM: OnceLock<HostedMemoryManager> = OnceLock::new();
        // SAFETY: `MM` is a `OnceLock`: once it holds a manager it always
        // does.
        static GLOBAL: HostedGlobal =
            unsafe { HostedGlobal::new(|| MM.get().map(MemoryManager::kmem)) };

        /// The adaptor called directly (miri-sized): the host before boot,
        /// kmalloc after, each block returned to whoever served it, and a
        /// request kmalloc refuses served by the host.
        #[test]
        fn blocks_go_back_to_whichever_allocator_served_them() {
            let small = Layout::from_size_align(100, 64).unwrap();
            // SAFETY: non-zero sizes; every block freed with its layout.
            // `ksize(p)` asks about a block this test holds; `kfree(q)`
            // passes a block nobody holds (realloc moved it to the host),
            // and only this test uses this manager, so nothing can
            // allocate it meanwhile: kfree's contract, and it is refused.
            unsafe {
                let early = GLOBAL.alloc(small);
                assert!(!early.is_null() && !GLOBAL.is_ours(early));
                let mm = MM.get_or_init(|| MemoryManager::hosted(4 << 20, 1).unwrap());
                let p = GLOBAL.alloc_zeroed(small);
                assert!(GLOBAL.is_ours(p) && p as usize % 64 == 0);
                assert_eq!(mm.ksize(p).unwrap(), 128);
                let q = GLOBAL.realloc(p, small, 3000);
                assert!(GLOBAL.is_ours(q));
                let huge = GLOBAL.realloc(q, Layout::from_size_align(3000, 64).unwrap(), 5 << 20);
                assert!(
                    !huge.is_null() && !GLOBAL.is_ours(huge),
                    "beyond KMALLOC_MAX_SIZE"
                );
                assert!(mm.kfree(q).is_err(), "moved to the host");
                GLOBAL.dealloc(huge, Layout::from_size_align(5 << 20, 64).unwrap());
                GLOBAL.dealloc(early, small);
                mm.kmem().check_invariants().unwrap();
            }
        }

        static SMALL: OnceLock<HostedMemoryManager> = OnceLock::new();
        // SAFETY: as for `GLOBAL`.
        static SMALL_GLOBAL: HostedGlobal =
            unsafe { HostedGlobal::new(|| SMALL.get().map(MemoryManager::kmem)) };

        /// Near exhaustion a request the manager cannot serve goes to the
        /// host without a reclaim round: no `allocstall`, and the refusal
        /// counted in `pgalloc_fail`.
        #[test]
        fn a_request_the_manager_cannot_serve_fails_over_without_reclaim() {
            let mm = SMALL.get_or_init(|| MemoryManager::hosted(4 << 20, 1).unwrap());
            // Above KMALLOC_MAX_CACHE_SIZE: page blocks, few of them.
            let block = Layout::from_size_align(64 << 10, 4096).unwrap();
            let before = mm.vmstat();
            let mut ours = Vec::new();
            // SAFETY: non-zero sizes; every block freed with its layout.
            let host = unsafe {
                loop {
                    let p = SMALL_GLOBAL.alloc(block);
                    assert!(!p.is_null());
                    if !SMALL_GLOBAL.is_ours(p) {
                        break p;
                    }
                    ours.push(p);
                }
            };
            let after = mm.vmstat();
            assert!(ours.len() > 10, "the manager served first");
            assert_eq!(after.allocstall_total(), before.allocstall_total());
            assert!(after.pgalloc_fail > before.pgalloc_fail);
            // SAFETY: each block was served with `block` and is freed once.
            unsafe {
                SMALL_GLOBAL.dealloc(host, block);
                for p in ours {
                    SMALL_GLOBAL.dealloc(p, block);
                }
            }
            mm.kmem().check_invariants().unwrap();
        }
    }
}
