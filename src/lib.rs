//! kmm: a kernel memory manager in the Linux mould, composed.
//!
//! Boot a machine from its physical memory map, then allocate the way a
//! kernel does, by the Linux names:
//!
//! ```
//! # #[cfg(all(feature = "std", target_pointer_width = "64"))] {
//! use kmm::{MemoryManager, Order, GFP_KERNEL, GFP_ATOMIC};
//!
//! // 16 MiB of RAM, 2 CPUs (the hosted preset; a kernel calls
//! // `MemoryManager::boot` with its own memory map, platform and direct map).
//! let mm = MemoryManager::hosted(16 << 20, 2)?;
//!
//! let block = mm.alloc_pages(GFP_KERNEL, Order::new(2)?)?; // 4 frames, a handle
//! let inode = mm.kzalloc(600, GFP_ATOMIC)?;                // kmalloc-1k, zeroed
//! // SAFETY: we hold `inode` (and nothing else uses it).
//! assert_eq!(unsafe { mm.ksize(inode.as_ptr()) }?, 1024);
//!
//! mm.__free_pages(block)?;                 // the handle moves into the free
//! // SAFETY: we hold `inode` and give it up.
//! unsafe { mm.kfree(inode.as_ptr()) }?;
//! mm.check()?;                              // every layer's invariants
//! # }
//! # Ok::<(), kmm::Error>(())
//! ```
//!
//! The [`MemoryManager`] is the front door: the page allocator
//! (`alloc_pages`, `__get_free_pages`, `virt_to_page`, `si_meminfo`, ...),
//! the slab layer (`kmalloc`, `kmem_cache_*`, ...), the reports
//! (`/proc/meminfo`, `/proc/vmstat`, `/proc/slabinfo`, ...), the checkers
//! and the runtime tuning of `/proc/sys/vm`, all returning one [`Error`].
//! The layer crates stay usable alone and are re-exported here ([`api`],
//! [`zones`], [`slab`]) with the types an embedder names, so this one
//! dependency suffices.
//!
//! This crate owns what ties the layers to a machine: the manager that
//! boots the zones from a physical memory map and the slab layer over them
//! (and the [`global`] allocator adaptor), the virtual [`layout`] (where
//! lowmem, vmalloc, pkmap and the fixmap lie, and where the zones end), the
//! PC memory map ([`e820`]), and the 32-bit [`x86`] kernel page table.
//! Behind features:
//!
//! | feature | module | what |
//! |---|---|---|
//! | (none) | `layout`, `e820`, `x86`, `global`, `MemoryManager::boot` | `no_std`, for kernels |
//! | `std` | `hosted`, `cpu`, `workload`, `global::HostedGlobal` | the hosted 64-bit preset over a host buffer; host CPU slots; the tour's workload; kmalloc as a host process's global allocator |
//! | `sim` | `sim` | the simulated i386 machine: memfd RAM in a reserved 4 GiB host window |
//!
//! Invariants: layouts are pure arithmetic over the RAM size; the zones'
//! metadata lives in the machine's own lowmem, reserved in memblock before
//! the zones release the rest; a kernel page table maps each virtual page at
//! most once, only inside the range its layout gives it, and reaches its
//! page-table pages only through the [`DirectMap`].
//!
//! Costs: layout queries O(1); boot O(frames) (descriptor initialisation)
//! plus the kmalloc caches' descriptors; kmalloc and kfree as `kmm-slab`
//! states them (O(1), no lock on the per-CPU path);
//! page-table map, unmap and translate O(1) (two levels) under one short
//! spin lock, plus one host `mmap` on the simulated machine.
//!
//! Never: allocate from a global heap without `std`, hold a singleton, or
//! touch a frame outside the direct map without a mapping.
#![cfg_attr(not(feature = "std"), no_std)]
#![deny(unsafe_op_in_unsafe_fn)]

#[cfg(feature = "std")]
pub mod cpu;
pub mod e820;
mod error;
pub mod global;
mod highmem;
#[cfg(all(feature = "std", target_pointer_width = "64"))]
pub mod hosted;
mod kmalloc;
pub mod layout;
mod mm;
mod page;
#[cfg(feature = "std")]
pub mod park;
mod report;
#[cfg(feature = "sim")]
pub mod sim;
mod slab_pages;
mod sysctl;
mod vmalloc;
#[cfg(feature = "std")]
pub mod workload;
pub mod x86;

pub use error::{BrokenLayers, CheckReport, Error};
pub use global::GlobalKmalloc;
pub use highmem::{KmapLocalOf, KmapOf};
pub use kmm_highmem::HighmemError;
pub use layout::Layout;
#[cfg(all(feature = "std", target_pointer_width = "64"))]
pub use mm::HostedMemoryManager;
#[cfg(feature = "sim")]
pub use mm::SimMemoryManager;
pub use mm::{BootMetadata, KernelHighmem, KernelTable, KernelVmalloc, MemoryManager};
pub use page::SysInfo;
pub use report::{BuddyInfo, MemInfo, ZoneInfo};
pub use slab_pages::SlabPages;
pub use vmalloc::VmallocInfoReport;

/// The layer crates, for their full APIs.
pub use {
    kmm_api as api, kmm_highmem as highmem_layer, kmm_slab as slab, kmm_vmarea as vmarea,
    kmm_zones as zones,
};

// The types an embedder names, so `kmm` is the one dependency it needs.
pub use kmm_api::{
    get_order, DirectMap, FrameAllocator, GfpFlags, KernelPageTable, MemoryRegion, Order,
    PageOwner, PageProt, Pages, Pfn, PhysAddr, Platform, PreemptControl, RegionKind, Shrinker,
    TlbFlush, VirtAddr, __GFP_COMP, __GFP_DMA, __GFP_DMA32, __GFP_HIGH, __GFP_HIGHMEM,
    __GFP_NOFAIL, __GFP_NORETRY, __GFP_NOWARN, __GFP_RETRY_MAYFAIL, __GFP_ZERO, GFP_ATOMIC,
    GFP_DMA, GFP_DMA32, GFP_HIGHUSER, GFP_KERNEL, GFP_NOFS, GFP_NOIO, GFP_NOWAIT, GFP_USER,
    MAX_PAGE_ORDER, PAGE_SHIFT, PAGE_SIZE,
};
pub use kmm_slab::{
    CacheId, CacheInfo, CacheStats, Ctor, KmallocGlobal, ObjectOwner, SlabError, SlabFlags,
    KMALLOC_MAX_CACHE_SIZE, KMALLOC_MAX_SIZE, KMALLOC_MIN_SIZE, ZERO_SIZE_PTR,
};
pub use kmm_vmarea::{VmFlags, VmapArea, VmareaError};
pub use kmm_zones::{Invariant, Page, SplitPages, SysctlError, VmStat, ZoneType};

/// The README's code, compiled as doctests so it cannot drift from the API.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;

/// What safe code cannot do, as doctests that must fail to compile (each
/// was a defect of a safe API once; see `kmm-api`'s soundness rule). Each
/// refused snippet is followed by its twin that compiles, so the refusal
/// is for the reason given and not another.
///
/// A block is freed once: the handle moves into the free.
///
/// ```compile_fail
/// # let mm = kmm::MemoryManager::hosted(8 << 20, 1).unwrap();
/// let page = mm.zones().alloc_page(kmm_api::GFP_KERNEL).unwrap();
/// mm.zones().__free_pages(page).unwrap();
/// mm.zones().__free_pages(page).unwrap();
/// ```
///
/// ```
/// # let mm = kmm::MemoryManager::hosted(8 << 20, 1).unwrap();
/// let page = mm.zones().alloc_page(kmm_api::GFP_KERNEL).unwrap();
/// mm.zones().__free_pages(page).unwrap();
/// ```
///
/// An owner word another layer trusts is written only under a contract.
///
/// ```compile_fail
/// # use kmm_api::{OwnerTag, OwnerWord, PageOwner};
/// # let mm = kmm::MemoryManager::hosted(8 << 20, 1).unwrap();
/// let page = mm.zones().alloc_page(kmm_api::GFP_KERNEL).unwrap();
/// let word = OwnerWord::new(OwnerTag::PageTable, 0).unwrap();
/// mm.zones().set_owner(page.pfn(), word).unwrap();
/// ```
///
/// ```
/// # use kmm_api::{OwnerTag, OwnerWord, PageOwner};
/// # let mm = kmm::MemoryManager::hosted(8 << 20, 1).unwrap();
/// let page = mm.zones().alloc_page(kmm_api::GFP_KERNEL).unwrap();
/// let word = OwnerWord::new(OwnerTag::PageTable, 0).unwrap();
/// // SAFETY: we hold the page; no layer reads a `PageTable` word's payload.
/// unsafe { mm.zones().set_owner(page.pfn(), word) }.unwrap();
/// # unsafe { mm.zones().set_owner(page.pfn(), OwnerWord::NONE) }.unwrap();
/// # mm.zones().__free_pages(page).unwrap();
/// ```
///
/// A frame's contents are written only by its holder: zeroing a frame by
/// number is `unsafe`.
///
/// ```compile_fail
/// # use kmm_api::Platform;
/// # let mm = kmm::MemoryManager::hosted(8 << 20, 1).unwrap();
/// let page = mm.zones().alloc_page(kmm_api::GFP_KERNEL).unwrap();
/// let _ = mm.zones().platform().zero_frame(page.pfn());
/// ```
///
/// ```
/// # use kmm_api::Platform;
/// # let mm = kmm::MemoryManager::hosted(8 << 20, 1).unwrap();
/// let page = mm.zones().alloc_page(kmm_api::GFP_KERNEL).unwrap();
/// // SAFETY: we hold the page.
/// let _ = unsafe { mm.zones().platform().zero_frame(page.pfn()) };
/// # mm.zones().__free_pages(page).unwrap();
/// ```
///
/// Frees by address are `unsafe`: an address is not a proof of ownership.
///
/// ```compile_fail
/// # let mm = kmm::MemoryManager::hosted(8 << 20, 1).unwrap();
/// let p = mm.kmalloc(64, kmm_api::GFP_KERNEL).unwrap();
/// mm.kfree(p.as_ptr()).unwrap();
/// ```
///
/// ```compile_fail
/// # let mm = kmm::MemoryManager::hosted(8 << 20, 1).unwrap();
/// let addr = mm.get_free_page(kmm_api::GFP_KERNEL).unwrap();
/// mm.free_page(addr).unwrap();
/// ```
///
/// ```
/// # let mm = kmm::MemoryManager::hosted(8 << 20, 1).unwrap();
/// let p = mm.kmalloc(64, kmm_api::GFP_KERNEL).unwrap();
/// let addr = mm.get_free_page(kmm_api::GFP_KERNEL).unwrap();
/// // SAFETY: we hold both and give them up.
/// unsafe {
///     mm.kfree(p.as_ptr()).unwrap();
///     mm.free_page(addr).unwrap();
/// }
/// ```
///
/// A cache is destroyed only by a caller that has quiesced its users.
///
/// ```compile_fail
/// # let mm = kmm::MemoryManager::hosted(8 << 20, 1).unwrap();
/// let cache = mm.kmem_cache_create("c", 64, 8, kmm_slab::SlabFlags::empty(), None).unwrap();
/// mm.kmem_cache_destroy(cache).unwrap();
/// ```
///
/// ```
/// # let mm = kmm::MemoryManager::hosted(8 << 20, 1).unwrap();
/// let cache = mm.kmem_cache_create("c", 64, 8, kmm_slab::SlabFlags::empty(), None).unwrap();
/// // SAFETY: nothing else uses the cache.
/// unsafe { mm.kmem_cache_destroy(cache) }.unwrap();
/// ```
///
/// A page table writes its pages through a direct map the caller vouches
/// for, unless it takes both from the same zones.
///
/// ```compile_fail
/// # let mm = kmm::MemoryManager::hosted(8 << 20, 1).unwrap();
/// # let other = kmm::MemoryManager::hosted(8 << 20, 1).unwrap();
/// let range = (kmm_api::VirtAddr::new(0xf880_0000), kmm_api::VirtAddr::new(0xfffe_efff));
/// let table = kmm::x86::X86PageTable::new(mm.zones(), other.zones().direct_map(), (), range);
/// ```
///
/// ```
/// # let mm = kmm::MemoryManager::hosted(8 << 20, 1).unwrap();
/// let range = (kmm_api::VirtAddr::new(0xf880_0000), kmm_api::VirtAddr::new(0xfffe_efff));
/// let table = kmm::x86::X86PageTable::for_zones(mm.zones(), (), range).unwrap();
/// ```
#[cfg(all(doctest, feature = "std", target_pointer_width = "64"))]
pub struct SoundnessDoctests;
