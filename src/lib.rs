//! kmm: a kernel memory manager in the Linux mould, composed.
//!
//! This crate owns the parts that tie the layers to a machine: the virtual
//! [`layout`] (where lowmem, vmalloc, pkmap and the fixmap lie, and where the
//! zones end), the 32-bit [`x86`] page table, and, behind features, the
//! simulated i386 machine (`sim`) and the hosted 64-bit preset (`std`).
//!
//! Invariants: layouts are pure arithmetic over the RAM size; a kernel page
//! table maps each virtual page at most once and refuses anything outside
//! the range its layout gives it; every page-table page is reached through
//! the [`kmm_api::DirectMap`], never through a cast of a physical address.
//!
//! Costs: layout queries are O(1); page-table map, unmap and translate are
//! O(1) (two levels) under one short spin lock.
//!
//! Never: allocate from a global heap (`no_std` without features), hold a
//! singleton, or touch a frame outside the direct map without a mapping.
#![cfg_attr(not(feature = "std"), no_std)]
#![deny(unsafe_op_in_unsafe_fn)]

#[cfg(feature = "std")]
pub mod cpu;
pub mod e820;
#[cfg(all(feature = "std", target_pointer_width = "64"))]
pub mod hosted;
pub mod layout;
mod mm;
#[cfg(feature = "sim")]
pub mod sim;
#[cfg(feature = "std")]
pub mod workload;
pub mod x86;

pub use layout::Layout;
#[cfg(all(feature = "std", target_pointer_width = "64"))]
pub use mm::HostedMemoryManager;
#[cfg(feature = "sim")]
pub use mm::SimMemoryManager;
pub use mm::{BootMetadata, MemoryManager};
