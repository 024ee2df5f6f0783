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
//! refusal (double free, foreign or interior pointer, wrong cache, live
//! objects at destroy, bad sizes) returns a [`SlabError`] and changes
//! nothing.
//!
//! **Costs.** `kmalloc`/`kmem_cache_alloc` and `kfree`/`kmem_cache_free`
//! are O(1): CPU pinned by the platform's `get_cpu` (an exclusive CPU id,
//! [`kmm_api::PreemptControl`]), one pop or push, one state-byte check and
//! store; no lock and no atomic read-modify-write. Every `batch` operations
//! a refill or flush takes the cache's node lock once. A new slab costs one
//! page allocation and O(objects) to link. Large kmallocs cost one page
//! allocation plus one owner-word store per page. Debug caches do every
//! operation under the node lock, plus O(object size) byte checks.
//!
//! **Metadata.** Per frame: the one owner word of the page descriptor
//! (4 bytes on i386, 8 on 64-bit). Per slab: a header of
//! [`slab_header_bytes`] plus one state byte per object, on the slab for
//! small objects, in a small kmalloc object for objects of 512 bytes or
//! more. Per cache: a descriptor and one array of 64 entries per CPU,
//! in pages of their own.
//!
//! **Never.** Never touches a frame it was not given, never dereferences a
//! pointer before its frame's owner word has placed it inside a live slab,
//! never holds a lock or a pinned CPU across a page-allocator call, never
//! panics on a caller's bad pointer.
//!
//! ```
//! use kmm_slab::{testing::HostMachine, Kmem, KmemConfig, SlabFlags};
//! use kmm_api::GFP_KERNEL;
//!
//! let machine = HostMachine::new(512, 2);
//! let kmem = Kmem::new(&machine, KmemConfig::default()).unwrap();
//! let inodes = kmem.kmem_cache_create("inode_cache", 600, 8, SlabFlags::HWCACHE_ALIGN, None).unwrap();
//! let inode = kmem.kmem_cache_alloc(inodes, GFP_KERNEL).unwrap();
//! kmem.kmem_cache_free(inodes, inode.as_ptr()).unwrap();
//! assert!(kmem.kmem_cache_free(inodes, inode.as_ptr()).is_err()); // double free
//! kmem.kmem_cache_destroy(inodes).unwrap();
//! ```

#![no_std]
#![deny(unsafe_op_in_unsafe_fn)]
#![warn(missing_docs)]

mod api;
mod cache;
mod cpu;
mod debug;
mod error;
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
pub use kmem::{CacheId, Kmem, KmemConfig, SlabBackend, MAX_CACHES};
pub use slabinfo::SlabInfo;
pub use validate::Violation;

/// Bytes of a slab header's fixed part (one state byte per object follows).
pub const fn slab_header_bytes() -> usize {
    slab::HEADER_SIZE
}
