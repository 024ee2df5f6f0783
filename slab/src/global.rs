//! A `GlobalAlloc` over any [`Kmem`]: kmalloc classes up to 256 bytes,
//! the fine classes above where configured ([`crate::KmemConfig::fine_classes`]),
//! kmalloc's up to `KMALLOC_MAX_CACHE_SIZE` otherwise, whole pages above;
//! alignment up to a page honoured by moving to a class whose natural
//! alignment suffices. `alloc_zeroed` is kzalloc; `realloc` keeps a block
//! that holds the new size and is less than twice it, else moves it to a
//! new one. Holds no state of its own beyond how to reach the
//! allocator; must never panic (failures are null pointers). `dealloc`
//! takes the trusted free: its caller promises a live pointer, so the
//! object's state is stored rather than compared and swapped.

use crate::kmem::{Kmem, SlabBackend};
use core::{alloc::GlobalAlloc, alloc::Layout, ptr};
use kmm_api::{GfpFlags, GFP_KERNEL};

/// A `#[global_allocator]` over the kmalloc family of a [`Kmem`] reached
/// through `kmem`, which returns `None` until the allocator is built (and
/// allocation then fails with a null pointer).
///
/// A kernel writes three lines (with its own machine type and a `Once`):
///
/// ```ignore
/// static KMEM: spin::Once<Kmem<MyMachine>> = spin::Once::new();
/// #[global_allocator]
/// static GLOBAL: KmallocGlobal<MyMachine> = KmallocGlobal::new(|| KMEM.get());
/// ```
///
/// The adaptor itself, over the host test machine:
///
/// ```
/// use core::alloc::{GlobalAlloc, Layout};
/// use kmm_slab::{testing::HostMachine, KmallocGlobal, Kmem, KmemConfig};
/// use std::sync::OnceLock;
///
/// static KMEM: OnceLock<Kmem<HostMachine>> = OnceLock::new();
/// static GLOBAL: KmallocGlobal<HostMachine> = KmallocGlobal::new(|| KMEM.get());
///
/// let layout = Layout::from_size_align(100, 64).unwrap();
/// // SAFETY: a non-zero size; the allocator does not exist yet.
/// assert!(unsafe { GLOBAL.alloc(layout) }.is_null());
/// KMEM.set(Kmem::new(HostMachine::new(256, 1), KmemConfig::default()).unwrap()).ok();
/// // SAFETY: a non-zero size; freed with the same layout.
/// unsafe {
///     let p = GLOBAL.alloc(layout);
///     assert_eq!(p as usize % 64, 0);
///     GLOBAL.dealloc(p, layout);
/// }
/// ```
pub struct KmallocGlobal<B: 'static> {
    kmem: fn() -> Option<&'static Kmem<B>>,
    gfp: GfpFlags,
}

impl<B: 'static> KmallocGlobal<B> {
    /// An adaptor allocating with `GFP_KERNEL`.
    pub const fn new(kmem: fn() -> Option<&'static Kmem<B>>) -> Self {
        Self {
            kmem,
            gfp: GFP_KERNEL,
        }
    }

    /// The same adaptor allocating with `gfp` (e.g. `GFP_ATOMIC` where
    /// allocations may come from interrupt context).
    pub const fn with_gfp(self, gfp: GfpFlags) -> Self {
        Self { gfp, ..self }
    }
}

impl<B: SlabBackend + 'static> KmallocGlobal<B> {
    /// `dealloc` for an adaptor sharing the program with another
    /// allocator (the hosted preset's `HostedGlobal`): frees `p` if it
    /// lies in the allocator's memory, else hands it to `foreign`. The
    /// free's own owner look-up tells the two apart, so a block of ours
    /// costs one look-up, not a range check and then the free's.
    ///
    /// # Safety
    ///
    /// `p` is a live block the caller holds and gives up here: one this
    /// adaptor returned, or one `foreign` may free (which lies outside
    /// the allocator's memory).
    #[inline]
    pub unsafe fn dealloc_or(&self, p: *mut u8, foreign: impl FnOnce(*mut u8)) {
        let Some(k) = (self.kmem)() else {
            return foreign(p);
        };
        // SAFETY: our caller holds `p` and gives it up: a block we
        // returned, or one outside our memory, which the free refuses
        // before touching anything.
        if unsafe { k.kfree_trusted(p) }.is_err() {
            // A refusal cannot be reported from `dealloc` and must never
            // panic (unwinding out of the global allocator is undefined
            // behaviour): a block of ours refused stays allocated.
            if k.backend().ptr_to_pfn(p).is_none() {
                foreign(p);
            }
        }
    }
}

// SAFETY: every pointer returned comes from `kmalloc_aligned`, is valid for
// `layout.size()` bytes and aligned to `layout.align()` (or is null);
// `dealloc` and `realloc` hand it back to the same allocator.
unsafe impl<B: SlabBackend + 'static> GlobalAlloc for KmallocGlobal<B> {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        match (self.kmem)() {
            Some(k) => k
                .kmalloc_fine(layout.size(), layout.align(), self.gfp)
                .map_or(ptr::null_mut(), |p| p.as_ptr()),
            None => ptr::null_mut(),
        }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        match (self.kmem)() {
            Some(k) => k
                .kmalloc_fine(layout.size(), layout.align(), self.gfp | GfpFlags::ZERO)
                .map_or(ptr::null_mut(), |p| p.as_ptr()),
            None => ptr::null_mut(),
        }
    }

    #[inline]
    unsafe fn dealloc(&self, p: *mut u8, _layout: Layout) {
        // SAFETY: our caller promises `p` is a live block we returned,
        // given up here; none is foreign.
        unsafe { self.dealloc_or(p, |_| {}) }
    }

    unsafe fn realloc(&self, p: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let Some(k) = (self.kmem)() else {
            return ptr::null_mut();
        };
        // In place while the block holds the new size and is less than
        // twice it (a smaller class, or fewer pages, would do beyond):
        // then krealloc keeps it (and moves a debug cache's red zone).
        // SAFETY: our caller promises `p` is a live block we returned,
        // given up only if krealloc moves it (it does not: it fits).
        if let Ok(usable) = unsafe { k.ksize(p) } {
            if new_size <= usable && new_size > usable / 2 {
                // SAFETY: as above.
                return unsafe { k.krealloc(p, new_size, self.gfp) }
                    .map_or(ptr::null_mut(), |q| q.as_ptr());
            }
        }
        let Ok(new_layout) = Layout::from_size_align(new_size, layout.align()) else {
            return ptr::null_mut();
        };
        // SAFETY: forwarded from our caller's contract.
        let q = unsafe { self.alloc(new_layout) };
        if !q.is_null() {
            // SAFETY: `p` holds `layout.size()` bytes, `q` at least
            // `new_size`; distinct allocations.
            unsafe { ptr::copy_nonoverlapping(p, q, layout.size().min(new_size)) };
            // SAFETY: `p` was allocated by us with `layout`.
            unsafe { self.dealloc(p, layout) };
        }
        q
    }
}
