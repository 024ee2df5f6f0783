//! The vocabulary of kmm: the types every layer speaks and the traits the
//! layers meet through.
//!
//! kmm is a kernel memory manager built as independent crates (buddy, zones,
//! slab, vmarea, highmem). None of them depends on another layer; each states
//! what it needs as one of the traits here, and the composition crate (or your
//! kernel) plugs implementations in:
//!
//! | trait | Linux counterpart | implemented by | consumed by |
//! |---|---|---|---|
//! | [`FrameAllocator`] | `alloc_pages` / `__free_pages` | kmm-zones | slab, vmarea, page tables |
//! | [`DirectMap`] | `page_address`, `virt_to_page` | the machine layout | slab, zones (`__GFP_ZERO`) |
//! | [`PageOwner`] | `struct page` → `slab`, `folio` | kmm-zones' `mem_map` | slab (`kfree` in O(1)) |
//! | [`KernelPageTable`] | `set_pte`, `flush_tlb_kernel_range` | x86 page tables | vmarea, highmem |
//! | [`Platform`] | `smp_processor_id`, `local_irq_save` | the embedder | every layer with a lock |
//! | [`Shrinker`] | `struct shrinker` | caches (slab) | zones, under memory pressure |
//! | [`ObjectSource`] | `kmem_cache` (`vmap_area_cachep`) | kmm-slab | vmarea (tree nodes) |
//!
//! # The soundness rule every layer keeps
//!
//! No sequence of calls to safe functions — in any order, from any number
//! of threads, with any argument values — may cause undefined behaviour,
//! hand the same memory out twice, lose memory silently, or break an
//! invariant the checkers verify. Where correctness depends on the caller
//! (Linux's contract), the function or trait is `unsafe` with a `# Safety`
//! section, and the safe API around it does not leak that obligation:
//!
//! - A safe function that frees, maps or touches a block takes the move-only
//!   handle its allocator made ([`Pages`]); the forms that take a raw
//!   [`Pfn`] or an address are `unsafe fn`, because an address is not a
//!   proof of ownership (after a free it may name someone else's block).
//! - The traits whose answers another layer dereferences ([`FrameAllocator`],
//!   [`DirectMap`], [`PageOwner`], [`KernelPageTable`], [`PreemptControl`],
//!   [`ObjectSource`])
//!   are `unsafe trait`s; writing an owner word another layer will trust is
//!   an `unsafe fn`, and the reader still verifies what it finds.
//! - A layer's frames carry its [`OwnerWord`], and the page allocator refuses
//!   to free a block whose owner word is set: only the holding layer frees.
//! - Raw forms keep their checks: a double free, a foreign pointer or a wrong
//!   order is refused with an error and changes nothing, so misuse inside
//!   their contract is reported, not undefined.
//!
//! This crate owns no memory and holds no state but the counter behind
//! [`AllocatorId`]; it must stay small and stable: types, traits, and the
//! lock primitive every layer shares. Its only `unsafe` blocks forward a
//! contract through a reference (`impl Trait for &T`).

#![no_std]
#![deny(unsafe_code)]

mod addr;
mod error;
mod frame;
mod gfp;
mod memmap;
mod object;
mod order;
pub mod percpu;
mod prot;
pub mod sync;
mod traits;

pub use addr::{Pfn, PhysAddr, VirtAddr, PAGE_MASK, PAGE_SHIFT, PAGE_SIZE};
pub use error::Error;
pub use frame::{AllocatorId, OwnerTag, OwnerWord, Pages};
pub use gfp::*;
pub use memmap::{MemoryRegion, RegionKind};
pub use object::ObjectSource;
pub use order::{get_order, Order, MAX_PAGE_ORDER, NR_PAGE_ORDERS, PAGE_ALLOC_COSTLY_ORDER};
pub use prot::PageProt;
pub use traits::{
    DirectMap, FrameAllocator, IrqGuard, KernelPageTable, PageOwner, Platform, PreemptControl,
    Shrinker, TlbFlush,
};
