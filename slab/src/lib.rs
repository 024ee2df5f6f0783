//! kmm-slab: object caches (`kmem_cache`) and the kmalloc family over any
//! page source, in the mould of Linux SLUB with SLAB's per-CPU arrays.
//!
//! **What it owns.** Slabs (blocks of `2^order` frames taken from a
//! [`kmm_api::FrameAllocator`] with the cache's GFP flags, never
//! `__GFP_HIGHMEM`), cut into objects of one size; per-CPU arrays of free
//! objects in front of them; the cache table; and the owner word of every
//! frame it holds, which names the slab header (or marks a large kmalloc),
//! so `kfree(p)` finds its cache in O(1) without a global lock.
//!
//! **Invariants.** Every object is in exactly one state, recorded in a
//! state byte in its slab header: on its slab's free list, in one CPU's
//! array, allocated, or quarantined after a corruption report. Live objects
//! never overlap. A slab is on exactly one of its node's lists (partial,
//! empty, full) and its free count equals its `Free` state bytes. Every
//! frame the layer holds carries its owner word, and no frame it has given
//! back does. Every refusal (double free, foreign or interior pointer,
//! wrong cache, a cache handle of another allocator, live objects at
//! destroy, bad sizes) returns a [`SlabError`] and changes nothing.
//!
//! **Costs.** `kmalloc`/`kmem_cache_alloc` are O(1): CPU pinned by the
//! platform's `get_cpu` (an exclusive CPU id, [`kmm_api::PreemptControl`]),
//! one pop, one state-byte store; no lock and no atomic read-modify-write.
//! `kfree`/`kmem_cache_free` are O(1) with exactly one atomic
//! read-modify-write, the compare-and-swap of the object's state byte that
//! makes two racing frees of one object refuse one of them; the trusted
//! free of [`KmallocGlobal`] and [`Kmem::kfree_bulk_trusted`] (whose
//! callers promise live pointers) needs none. The bulk forms
//! (`kmem_cache_alloc_bulk`, `kfree_bulk`) cost the same per object but
//! pin the CPU once per run of its array rather than once per object.
//! Every `batch` operations a refill or flush takes the cache's node lock
//! once. A new slab costs one page allocation and the fill of its state
//! bytes; its objects join the free list only once freed.
//! Large kmallocs cost one page allocation plus one owner-word store per
//! page. Debug caches do every operation under the node lock, plus
//! O(object size) byte checks. [`Kmem::flush_all`] runs one drain per CPU
//! through `PreemptControl::on_cpu`.
//!
//! **Metadata.** Per frame: the one owner word of the page descriptor
//! (4 bytes on i386, 8 on 64-bit). Per slab: a header of
//! [`slab_header_bytes`] plus one state byte per object, on the slab for
//! small objects, in a small kmalloc object for objects of 512 bytes or
//! more. Per cache: a descriptor and one array of 64 entries per CPU,
//! in pages of their own.
//!
//! **Freeing by pointer.** An address is not a proof of ownership: after
//! `kfree(p)`, `p` may be handed out again, and a second `kfree(p)` would
//! then free the new holder's object, which no check can tell from a
//! legitimate free. So every call that takes an object pointer (`kfree`,
//! `kfree_bulk`, `kmem_cache_free`, `krealloc`, `ksize`, `kmem_cache_of`,
//! `kmem_obj_track`) is an `unsafe fn` with this contract: **`p` must not
//! name an allocation someone other than the caller holds and goes on
//! using, and if `p` names memory nobody holds, no other thread may
//! allocate it or free the slab around it during the call.** Both hold
//! when the caller holds the allocation at `p` (and, for the frees, gives
//! it up). Inside the contract every misuse the allocator can see is
//! refused with an error and changes nothing: a double free (two racing
//! ones included: one wins), a pointer into the middle of an object, into
//! the allocator's own metadata, into another cache's object, into a page
//! no slab owns, or outside the allocator's memory. The safe way to hold
//! kmalloc memory is through [`KmallocGlobal`] (`Box`, `Vec`).
//!
//! **Never.** Never touches a frame it was not given, never trusts a slab
//! header its owner word names before checking the header's magic, never
//! holds a lock or a pinned CPU across a page allocation, never panics on
//! a caller's bad pointer (nor at all on the `GlobalAlloc` paths).
//!
//! ```
//! use kmm_slab::{testing::HostMachine, Kmem, KmemConfig, SlabFlags};
//! use kmm_api::GFP_KERNEL;
//!
//! let machine = HostMachine::new(512, 2);
//! let kmem = Kmem::new(&machine, KmemConfig::default()).unwrap();
//! let inodes = kmem.kmem_cache_create("inode_cache", 600, 8, SlabFlags::HWCACHE_ALIGN, None).unwrap();
//! let inode = kmem.kmem_cache_alloc(inodes, GFP_KERNEL).unwrap();
//! // SAFETY: we hold `inode` and give it up; the second free passes a
//! // pointer nobody holds (refused), and nothing else uses the cache
//! // while it is destroyed.
//! unsafe {
//!     kmem.kmem_cache_free(inodes, inode.as_ptr()).unwrap();
//!     assert!(kmem.kmem_cache_free(inodes, inode.as_ptr()).is_err()); // double free
//!     kmem.kmem_cache_destroy(inodes).unwrap();
//! }
//! ```

#![no_std]
#![deny(unsafe_op_in_unsafe_fn)]
#![warn(missing_docs)]

mod api;
mod cache;
mod cpu;
mod debug;
mod error;
mod fine;
mod flags;
mod freelist;
mod geometry;
mod global;
mod kmalloc;
mod kmem;
mod node;
mod raw;
mod shrinker;
mod slab;
mod slabinfo;
mod validate;
mod vmstat;

#[cfg(any(test, feature = "testing"))]
pub mod testing;

#[cfg(test)]
mod kunit;
#[cfg(test)]
mod tests;

pub use api::{kmalloc_classes, CacheInfo, CacheStats, ZERO_SIZE_PTR};
pub use cache::Ctor;
pub use debug::{Corruption, CorruptionKind, Track};
pub use error::SlabError;
pub use flags::*;
pub use global::KmallocGlobal;
pub use kmalloc::{KMALLOC_MAX_CACHE_SIZE, KMALLOC_MAX_SIZE, KMALLOC_MIN_SIZE};
pub use kmem::{CacheId, CacheObjects, Kmem, KmemConfig, ObjectOwner, SlabBackend, MAX_CACHES};
pub use slabinfo::SlabInfo;
pub use validate::Violation;
pub use vmstat::NrSlabPages;

/// Bytes of a slab header's fixed part (one state byte per object follows).
pub const fn slab_header_bytes() -> usize {
    slab::HEADER_SIZE
}
