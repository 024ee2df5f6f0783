//! The errors that cross layer boundaries: what the traits in this crate
//! return. Layer crates keep richer error enums of their own and convert.
//!
//! Every variant names the address or size at fault, and every operation
//! that returns one leaves its structures exactly as they were.

use crate::{GfpFlags, Order, Pfn, PhysAddr, VirtAddr};
use core::fmt;

/// Why a memory-management operation was refused.
#[non_exhaustive]
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Error {
    /// No block of this order could be found under the request's rules.
    NoMemory {
        /// The order asked for.
        order: Order,
    },
    /// An order above the allocator's configured maximum.
    OrderTooLarge {
        /// The order asked for.
        order: u32,
        /// The largest order allowed.
        max: u32,
    },
    /// A size that no allocation of this kind can satisfy.
    SizeTooLarge {
        /// The size asked for, in bytes.
        bytes: usize,
    },
    /// A GFP combination this request cannot honour (e.g. `__GFP_DMA |
    /// __GFP_HIGHMEM`, or `__GFP_HIGHMEM` where an address must be returned).
    InvalidGfp {
        /// The flags given.
        gfp: GfpFlags,
    },
    /// A frame outside every range this allocator manages.
    PfnOutOfRange {
        /// The frame given.
        pfn: Pfn,
    },
    /// A free of a frame that is not the start of an allocated block.
    NotAllocated {
        /// The frame given.
        pfn: Pfn,
    },
    /// A free of a block that is already free.
    DoubleFree {
        /// The frame given.
        pfn: Pfn,
    },
    /// A free whose order differs from the order the block was allocated with.
    WrongOrder {
        /// The frame given.
        pfn: Pfn,
        /// The order it was allocated with.
        allocated: Order,
        /// The order given to the free.
        freed: Order,
    },
    /// A frame that must be free for this request (a range allocation,
    /// Linux `alloc_contig_range`'s `-EBUSY`) is allocated or reserved.
    Busy {
        /// The first such frame.
        pfn: Pfn,
    },
    /// A frame not aligned to the order given.
    Misaligned {
        /// The frame given.
        pfn: Pfn,
        /// The order given.
        order: Order,
    },
    /// A physical address outside memory or not page aligned.
    BadPhysAddr {
        /// The address given.
        addr: PhysAddr,
    },
    /// A virtual address outside the range this operation covers, or not
    /// page aligned.
    BadVirtAddr {
        /// The address given.
        addr: VirtAddr,
    },
    /// An unmap or translate of an address that has no mapping.
    NotMapped {
        /// The address given.
        addr: VirtAddr,
    },
    /// A map over an address that is already mapped.
    AlreadyMapped {
        /// The address given.
        addr: VirtAddr,
    },
    /// A map of a page whose previous translation may still sit in a TLB:
    /// it was unmapped, but the flush its unmap returned has not run yet,
    /// so a CPU could still reach the old frame through it.
    StaleTlb {
        /// The address given.
        addr: VirtAddr,
    },
    /// A fixed-capacity table of ranges (such as the boot allocator's region
    /// arrays) has no slot left for the range that was to be recorded.
    TooManyRegions {
        /// Slots the table has.
        capacity: usize,
    },
    /// An alignment that is not a power of two.
    BadAlignment {
        /// The alignment given, in bytes.
        align: u64,
    },
    /// A request for zero bytes where a real range must be returned.
    ZeroSize,
    /// A handle made by another allocator (another machine's, or one
    /// already dropped): this allocator never handed the block out.
    Foreign {
        /// The block's first frame.
        pfn: Pfn,
    },
    /// A free (or split) of a block a layer still claims through its owner
    /// word (a slab, a page table): only that layer may free it.
    Owned {
        /// The block's first frame.
        pfn: Pfn,
    },
    /// Every allocator identity has been handed out (2^32 - 1 allocators
    /// made in this process); identities are never reused.
    IdsExhausted,
    /// A CPU count the structures cannot be sized for: none, more than
    /// the platform supports, or so many that per-CPU arrays overflow.
    BadCpuCount {
        /// The CPU count given.
        nr_cpus: usize,
        /// The most allowed, where there is a fixed limit (else `usize::MAX`).
        max: usize,
    },
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Error::NoMemory { order } => write!(f, "out of memory: no free block of {order}"),
            Error::OrderTooLarge { order, max } => {
                write!(f, "order {order} is above the maximum order {max}")
            }
            Error::SizeTooLarge { bytes } => write!(f, "size {bytes} bytes is too large"),
            Error::InvalidGfp { gfp } => {
                write!(f, "GFP flags {gfp:?} are invalid for this request")
            }
            Error::PfnOutOfRange { pfn } => write!(f, "{pfn} is outside managed memory"),
            Error::NotAllocated { pfn } => {
                write!(f, "{pfn} is not the start of an allocated block")
            }
            Error::DoubleFree { pfn } => write!(f, "double free of {pfn}"),
            Error::WrongOrder {
                pfn,
                allocated,
                freed,
            } => write!(
                f,
                "{pfn} was allocated with {allocated} but freed with {freed}"
            ),
            Error::Busy { pfn } => write!(f, "{pfn} is in use"),
            Error::Misaligned { pfn, order } => write!(f, "{pfn} is not aligned to {order}"),
            Error::BadPhysAddr { addr } => write!(f, "bad physical address {addr}"),
            Error::BadVirtAddr { addr } => write!(f, "bad virtual address {addr}"),
            Error::NotMapped { addr } => write!(f, "{addr} is not mapped"),
            Error::AlreadyMapped { addr } => write!(f, "{addr} is already mapped"),
            Error::StaleTlb { addr } => write!(
                f,
                "{addr} may still have a stale TLB entry: its unmap was not flushed yet"
            ),
            Error::TooManyRegions { capacity } => {
                write!(f, "region table is full: all {capacity} slots are in use")
            }
            Error::BadAlignment { align } => {
                write!(f, "alignment {align:#x} is not a power of two")
            }
            Error::ZeroSize => f.write_str("a zero-sized request cannot be satisfied"),
            Error::Foreign { pfn } => {
                write!(f, "{pfn} was handed out by another allocator")
            }
            Error::Owned { pfn } => write!(
                f,
                "{pfn} is held by a layer (its owner word is set); only that layer may free it"
            ),
            Error::IdsExhausted => f.write_str("no allocator identity is left to hand out"),
            Error::BadCpuCount { nr_cpus, max } if max == usize::MAX => {
                write!(
                    f,
                    "{nr_cpus} CPUs: per-CPU structures cannot be sized for so many"
                )
            }
            Error::BadCpuCount { nr_cpus, max } => {
                write!(f, "{nr_cpus} CPUs: from 1 to {max} are supported")
            }
        }
    }
}

impl core::error::Error for Error {}
