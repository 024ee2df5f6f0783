//! kmm: a kernel memory manager in the Linux mould, composed.
//!
//! This crate owns what ties the layers to a machine: the [`MemoryManager`]
//! that boots the zones from a physical memory map and the slab layer over
//! them (kmalloc, `kmem_cache_*`, and the [`global`] allocator adaptor), the virtual [`layout`]
//! (where lowmem, vmalloc, pkmap and the fixmap lie, and where the zones
//! end), the PC memory map ([`e820`]), and the 32-bit [`x86`] kernel page
//! table. Behind features:
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
//! page-table pages only through the [`kmm_api::DirectMap`].
//!
//! Costs: layout queries O(1); boot O(frames) (descriptor initialisation)
//! plus the kmalloc caches' descriptors; kmalloc and kfree as `kmm-slab`
//! states them (O(1), no lock on the per-CPU path);
//! page-table map, unmap and translate O(1) (two levels) under one short
//! spin lock, plus one host `mmap` on the simulated machine.
//!
//! Never: allocate from a global heap without `std`, hold a singleton, or
//! touch a frame outside the direct map without a mapping.
//!
//! ```
//! # #[cfg(all(feature = "std", target_pointer_width = "64"))] {
//! use kmm::MemoryManager;
//! use kmm_api::{Order, GFP_KERNEL};
//! let mm = MemoryManager::hosted(16 << 20, 2)?;
//! let page = mm.zones().__get_free_pages(GFP_KERNEL, Order::ZERO)?;
//! // SAFETY: we hold the page `__get_free_pages` returned and give it up.
//! unsafe { mm.zones().free_pages(page, Order::ZERO)? };
//! print!("{}", mm.zones().meminfo());
//! # }
//! # Ok::<(), kmm_api::Error>(())
//! ```
#![cfg_attr(not(feature = "std"), no_std)]
#![deny(unsafe_op_in_unsafe_fn)]

#[cfg(feature = "std")]
pub mod cpu;
pub mod e820;
pub mod global;
#[cfg(all(feature = "std", target_pointer_width = "64"))]
pub mod hosted;
pub mod layout;
mod mm;
#[cfg(feature = "sim")]
pub mod sim;
mod slab;
#[cfg(feature = "std")]
pub mod workload;
pub mod x86;

pub use global::GlobalKmalloc;
pub use layout::Layout;
#[cfg(all(feature = "std", target_pointer_width = "64"))]
pub use mm::HostedMemoryManager;
#[cfg(feature = "sim")]
pub use mm::SimMemoryManager;
pub use mm::{BootMetadata, MemoryManager};
pub use slab::SlabPages;

/// The README's code, compiled as doctests so it cannot drift from the API.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;
