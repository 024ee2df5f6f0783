//! kmm-vmarea: the kernel virtual area allocator (Linux `mm/vmalloc.c`'s
//! `vmap_area` machinery, as redesigned in 5.2), the part of vmalloc, vmap
//! and ioremap that decides *where* an area goes.
//!
//! # What it owns
//!
//! The address range `[VMALLOC_START, VMALLOC_END)` the caller gives, as
//! three address-ordered AVL trees that tile it exactly: free blocks
//! (`free_vmap_area_root`, each node carrying `subtree_max_size`, the
//! largest free block beneath it), live areas (`vmap_area_root`) and
//! freed ranges awaiting their purge (`purge_vmap_area_root`, adjacent
//! ones merged as Linux kept them before 6.9); the pools of purged areas
//! (Linux 6.9's `vmap_pool`: after a purge, a range of up to
//! [`MAX_VA_SIZE_PAGES`] pages, guard included, waits in the pool of its
//! size for the next allocation of exactly that size, which takes the
//! lowest one if it has the alignment asked, instead of going back to the
//! free tree; every purge gives a quarter of each pool back to free space,
//! and an allocation that found no space gets all of it back before its
//! retry); the lazy
//! count of freed pages, and the purge figures. Its nodes, 48 bytes each
//! ([`VMAP_AREA_NODE_BYTES`]), live in an arena of chunks taken from an
//! [`kmm_api::ObjectSource`] (the slab's `vmap_area_cachep` in a composed
//! kernel): no heap.
//!
//! Above the allocator, [`Vmalloc`] maps areas (vmalloc, vmap, ioremap)
//! and keeps per-CPU vmap blocks for `vm_map_ram` (Linux `vb_alloc`:
//! small mappings carved from a CPU's own block, their descriptors from
//! the same object source).
//!
//! # Invariants
//!
//! - Free, live, unpurged and pooled ranges are page aligned, never
//!   overlap, and together cover the range exactly; no two free blocks
//!   touch, nor two unpurged ranges (a range is merged with its neighbours
//!   as it enters either tree); a pooled range is in no tree, has its
//!   pool's size and went through a purge's flush. Pooled ranges count as
//!   neither free blocks nor `largest_free` (the free tree's, what Linux
//!   reported as `VmallocChunk`): only an allocation of their exact size
//!   reuses them.
//! - Each tree is ordered by address and AVL balanced; every free node's
//!   `subtree_max_size` is the largest block in its subtree.
//! - A live area ends with one guard page unless [`VmFlags::NO_GUARD`]; the
//!   guard is reserved with it and returns with it.
//! - A freed range goes back to free space only through a purge, whose
//!   single [`kmm_api::TlbFlush`] the caller performs; the lazily freed
//!   pages never stay above [`lazy_max_pages`] after a free returns.
//!
//! [`VmapAreas::check`] verifies all of these and names the first broken one.
//!
//! # Cost
//!
//! | operation | cost |
//! |---|---|
//! | [`VmapAreas::alloc`], from a pool | O(1) plus the busy tree's insert, O(log n) |
//! | [`VmapAreas::alloc`], page alignment | O(log n) |
//! | [`VmapAreas::alloc`], larger alignment | O(log n) when the lowest long-enough block also fits aligned; each lower block that is long enough but not once aligned adds O(log n): worst case O(n), on a free space of many such blocks |
//! | [`VmapAreas::free`] | O(log n + log u) for u unpurged ranges |
//! | [`VmapAreas::find_vmap_area`] | O(log n) |
//! | [`VmapAreas::purge`] | O(min(u log n, u + n) + p log n) for u unpurged ranges and p pooled areas: one insert per range, or one rebuild of free space when the batch is large against it; one insert per decayed area (a quarter of the pools) |
//! | [`VmapAreas::stats`] | O(1) |
//! | [`VmapAreas::check`] | O(n) |
//!
//! n counts free blocks for allocation, live areas for lookups.
//!
//! # What it must never do
//!
//! Map, unmap or touch the memory of an area (that is vmalloc's, above
//! it); reuse a freed range before the flush covering it was handed out;
//! panic or change anything on a bad request (a zero or overflowing size,
//! a bad alignment, a free of an unknown, interior, misaligned or already
//! freed address: each is a [`VmareaError`] and the areas stay exactly as
//! they were); take a node from the source in the middle of a change (every
//! node an allocation needs is taken before the trees are touched).
//!
//! # Example
//!
//! ```
//! use kmm_api::{VirtAddr, GFP_KERNEL, PAGE_SIZE};
//! use kmm_vmarea::testing::{BufferSource, RecordingTlb};
//! use kmm_vmarea::{VmFlags, VmapAreas, VmareaError};
//!
//! let (start, end) = (VirtAddr::new(0xf880_0000), VirtAddr::new(0xff7f_e000));
//! let mut areas = VmapAreas::new(BufferSource::pages(64), start, end, 4)?;
//! // vmalloc(4096): one page plus its guard page, at the lowest address.
//! let area = areas.alloc(4096, PAGE_SIZE, VmFlags::ALLOC, GFP_KERNEL)?;
//! assert_eq!((area.start(), area.size(), area.usable_size()), (start, 8192, 4096));
//! assert_eq!(areas.find_vmap_area(VirtAddr::new(0xf880_0123)), Some(area));
//! // vfree: the range waits, unpurged, until a purge hands out its flush.
//! let freed = areas.free(area.start())?;
//! assert_eq!(freed.flush, None);
//! assert_eq!(areas.free(area.start()), Err(VmareaError::AlreadyFreed { addr: start }));
//! let flush = areas.purge().expect("one area was waiting");
//! flush.flush(&RecordingTlb::default());
//! areas.check().expect("invariants hold");
//! # Ok::<(), VmareaError>(())
//! ```

#![no_std]
#![deny(unsafe_code)]

#[cfg(any(test, feature = "testing"))]
extern crate std;

#[allow(unsafe_code)] // the node arena: the crate's one unsafe module
mod arena;
#[allow(unsafe_code)] // the vmap blocks' index nodes in source objects
mod block_index;
mod check;
mod error;
mod flags;
mod info;
mod locked;
#[cfg(loom)]
#[allow(unsafe_code)] // the loom build's link cells
mod loom_link;
mod pool;
mod purge;
mod stats;
#[cfg(any(test, feature = "testing"))]
#[allow(unsafe_code)] // test doubles over raw buffers
pub mod testing;
mod tree;
#[allow(unsafe_code)] // vfree_atomic's link in a queued area's first word
mod vmalloc;
mod vmap_area;
#[allow(unsafe_code)] // block descriptors and the per-CPU table in source objects
mod vmap_block;

pub use arena::VMAP_AREA_NODE_BYTES;
pub use check::{Invariant, TreeName};
pub use error::VmareaError;
pub use flags::VmFlags;
pub use info::VmallocInfo;
pub use locked::SharedVmapAreas;
pub use pool::MAX_VA_SIZE_PAGES;
pub use purge::{lazy_max_pages, LAZY_BYTES_PER_CPU_BIT, LAZY_RANGE_DIVISOR};
pub use stats::VmapStats;
pub use vmalloc::{Vmalloc, VmallocStats, NUMA_NO_NODE};
pub use vmap_area::{Freed, Ranges, VmapArea, VmapAreas};
pub use vmap_block::{
    vmap_bbmap_bits, NoVmapBlocks, VmapCpus, VMAP_BBMAP_BITS_MAX, VMAP_BBMAP_BITS_MIN,
    VMAP_BLOCK_BYTES, VMAP_MAX_ALLOC,
};
