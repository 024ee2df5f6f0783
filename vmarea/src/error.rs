//! Why the area allocator refused a request. Every refusal leaves the
//! areas, the free blocks, the unpurged areas and the counters exactly as
//! they were (a refused allocation may leave spare node capacity behind: a
//! chunk it took from the object source, never a changed range).

use core::fmt;
use kmm_api::{get_order, Error, VirtAddr};

/// A refused area-allocator operation, naming the size or address at fault.
#[non_exhaustive]
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum VmareaError {
    /// A request for zero bytes.
    ZeroSize,
    /// A size whose page rounding or guard page overflows, or which is
    /// larger than the whole range: no purge can make it fit.
    SizeTooLarge {
        /// The size asked for, in bytes.
        size: usize,
    },
    /// An alignment that is not a power of two, or is below `PAGE_SIZE`.
    BadAlignment {
        /// The alignment asked for, in bytes.
        align: usize,
    },
    /// No free block holds the size at the alignment. A purge may help
    /// when `lazy_pages` is not zero (Linux purges once and retries).
    NoSpace {
        /// Bytes the area needed, guard page included.
        size: usize,
        /// The alignment asked for.
        align: usize,
        /// Lazily freed pages a purge would give back.
        lazy_pages: usize,
    },
    /// The object source could not supply a node.
    NoNodes {
        /// What the source said.
        cause: Error,
    },
    /// Every node id is in use (the arena's directories are full).
    NodeTableFull {
        /// Nodes in the arena.
        nodes: usize,
    },
    /// The object source's objects are too small or too loosely aligned to
    /// hold a node.
    ObjectTooSmall {
        /// Its object size in bytes.
        size: usize,
        /// Its object alignment in bytes.
        align: usize,
    },
    /// A range for the allocator that is empty or not page aligned.
    BadRange {
        /// Its start.
        start: VirtAddr,
        /// Its end.
        end: VirtAddr,
    },
    /// A CPU count of zero (the lazy-purge threshold scales with it).
    NoCpus,
    /// An address that is not page aligned.
    Misaligned {
        /// The address given.
        addr: VirtAddr,
    },
    /// An address outside the allocator's range.
    OutOfRange {
        /// The address given.
        addr: VirtAddr,
    },
    /// An address inside a live area that is not its start.
    Interior {
        /// The address given.
        addr: VirtAddr,
        /// The start of the area it lies in.
        area: VirtAddr,
    },
    /// A second free: the address lies in a freed range awaiting its purge.
    AlreadyFreed {
        /// The address given.
        addr: VirtAddr,
    },
    /// An address at which no area starts.
    NotAllocated {
        /// The address given.
        addr: VirtAddr,
    },
    /// An area freed through the call of another kind (a `vfree` of a
    /// vmap or ioremap area, an `iounmap` of a vmalloc area, ...).
    WrongKind {
        /// The address given.
        addr: VirtAddr,
        /// The area's flags.
        flags: crate::VmFlags,
    },
    /// A `vm_unmap_ram` whose page count is not the one `vm_map_ram`
    /// mapped at that address.
    WrongCount {
        /// The address given.
        addr: VirtAddr,
        /// The count given.
        count: usize,
        /// The pages mapped there.
        pages: usize,
    },
    /// The page allocator or the page table refused while an area was
    /// being backed or mapped (everything taken was given back).
    Page {
        /// What it said.
        cause: Error,
    },
    /// A NUMA node that does not exist (there is one: node 0).
    BadNode {
        /// The node asked for.
        node: i32,
    },
    /// The machine has no vmalloc (no kernel page table for its layout,
    /// as on the 64-bit preset).
    NoVmalloc,
}

impl fmt::Display for VmareaError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            VmareaError::ZeroSize => f.write_str("a zero-sized area cannot be allocated"),
            VmareaError::SizeTooLarge { size } => {
                write!(f, "size {size:#x} bytes cannot fit in the range")
            }
            VmareaError::BadAlignment { align } => write!(
                f,
                "alignment {align:#x} is not a power of two of at least a page"
            ),
            VmareaError::NoSpace {
                size,
                align,
                lazy_pages,
            } => write!(
                f,
                "no free block holds {size:#x} bytes aligned to {align:#x} \
                 ({lazy_pages} lazily freed pages await a purge)"
            ),
            VmareaError::NoNodes { cause } => write!(f, "no node for the area: {cause}"),
            VmareaError::NodeTableFull { nodes } => {
                write!(f, "the node table is full at {nodes} nodes")
            }
            VmareaError::ObjectTooSmall { size, align } => write!(
                f,
                "objects of {size} bytes aligned to {align} cannot hold a vmap_area node"
            ),
            VmareaError::BadRange { start, end } => {
                write!(f, "[{start}, {end}) is empty or not page aligned")
            }
            VmareaError::NoCpus => f.write_str("the CPU count is zero"),
            VmareaError::Misaligned { addr } => write!(f, "{addr} is not page aligned"),
            VmareaError::OutOfRange { addr } => write!(f, "{addr} is outside the vmalloc range"),
            VmareaError::Interior { addr, area } => {
                write!(f, "{addr} lies inside the area at {area}, not at its start")
            }
            VmareaError::AlreadyFreed { addr } => {
                write!(f, "double free at {addr}: its range awaits the purge")
            }
            VmareaError::NotAllocated { addr } => write!(f, "no area starts at {addr}"),
            VmareaError::WrongKind { addr, flags } => {
                write!(f, "the area at {addr} ({flags:?}) is not of this kind")
            }
            VmareaError::WrongCount { addr, count, pages } => write!(
                f,
                "vm_unmap_ram of {count} pages at {addr}, where {pages} were mapped"
            ),
            VmareaError::Page { cause } => write!(f, "backing the area failed: {cause}"),
            VmareaError::BadNode { node } => write!(f, "NUMA node {node} does not exist"),
            VmareaError::NoVmalloc => f.write_str("this machine has no vmalloc range mapped"),
        }
    }
}

impl core::error::Error for VmareaError {}

impl From<Error> for VmareaError {
    fn from(cause: Error) -> Self {
        VmareaError::NoNodes { cause }
    }
}

impl From<VmareaError> for Error {
    fn from(error: VmareaError) -> Self {
        match error {
            VmareaError::ZeroSize => Error::ZeroSize,
            VmareaError::SizeTooLarge { size } => Error::SizeTooLarge { bytes: size },
            VmareaError::BadAlignment { align } => Error::BadAlignment {
                align: align as u64,
            },
            VmareaError::NoSpace { size, .. } => match get_order(size) {
                Ok(order) => Error::NoMemory { order },
                Err(_) => Error::SizeTooLarge { bytes: size },
            },
            VmareaError::NoNodes { cause } => cause,
            VmareaError::NodeTableFull { nodes } => Error::TooManyRegions { capacity: nodes },
            VmareaError::ObjectTooSmall { size, .. } => Error::SizeTooLarge { bytes: size },
            VmareaError::BadRange { start, .. } => Error::BadVirtAddr { addr: start },
            VmareaError::NoCpus => Error::ZeroSize,
            VmareaError::Misaligned { addr }
            | VmareaError::OutOfRange { addr }
            | VmareaError::Interior { addr, .. }
            | VmareaError::AlreadyFreed { addr }
            | VmareaError::NotAllocated { addr }
            | VmareaError::WrongKind { addr, .. }
            | VmareaError::WrongCount { addr, .. } => Error::BadVirtAddr { addr },
            VmareaError::Page { cause } => cause,
            VmareaError::BadNode { .. } => Error::InvalidGfp {
                gfp: kmm_api::GfpFlags::empty(),
            },
            VmareaError::NoVmalloc => Error::NoMemory {
                order: kmm_api::Order::ZERO,
            },
        }
    }
}
