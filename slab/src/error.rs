//! The slab layer's error values. Every variant names the cache, address or
//! size at fault, and every operation that returns one has left all slab
//! structures exactly as they were (a corruption report additionally counts
//! the error and quarantines the damaged object, which is the point).

use crate::debug::Corruption;
use core::fmt;
use kmm_api::{GfpFlags, VirtAddr};

/// Why a slab or kmalloc operation was refused.
#[non_exhaustive]
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum SlabError {
    /// The page allocator refused to provide a slab or a large allocation.
    Page(kmm_api::Error),
    /// A size above what this cache or `KMALLOC_MAX_SIZE` can hold.
    SizeTooLarge {
        /// Bytes asked for.
        bytes: usize,
        /// The largest size allowed.
        max: usize,
    },
    /// `n * size` overflowed (`kcalloc`, `kmalloc_array`).
    Overflow {
        /// Number of elements.
        n: usize,
        /// Bytes per element.
        size: usize,
    },
    /// GFP flags slab memory cannot honour (`__GFP_HIGHMEM`: slab memory
    /// must stay in the direct map).
    InvalidGfp {
        /// The flags given.
        gfp: GfpFlags,
    },
    /// A free of an address that no slab or large kmalloc owns.
    InvalidPointer {
        /// The address given.
        addr: VirtAddr,
    },
    /// A free of an address inside a slab but not at an object's start.
    NotObjectStart {
        /// The cache owning the slab.
        cache: &'static str,
        /// The address given.
        addr: VirtAddr,
        /// How far past the start of its object the address lies.
        offset: usize,
    },
    /// A free of an object that is already free.
    DoubleFree {
        /// The cache owning the object.
        cache: &'static str,
        /// The object's address.
        addr: VirtAddr,
    },
    /// `kmem_cache_free` given an object of another cache.
    WrongCache {
        /// The object's address.
        addr: VirtAddr,
        /// The cache named by the caller.
        expected: &'static str,
        /// The cache that owns the object.
        found: &'static str,
    },
    /// `kmem_cache_destroy` of a cache that still has live objects.
    CacheBusy {
        /// The cache.
        cache: &'static str,
        /// Objects still allocated.
        live: usize,
    },
    /// `kmem_cache_destroy` of a cache whose objects are still cached by
    /// other CPUs; each must drain (`Kmem::drain_local`) first.
    CachedElsewhere {
        /// The cache.
        cache: &'static str,
        /// Objects held in other CPUs' arrays.
        objects: usize,
    },
    /// A cache handle that names no live cache (destroyed, or never made).
    NoSuchCache,
    /// Every slot of the cache table is taken.
    TooManyCaches {
        /// The table's size.
        max: usize,
    },
    /// Object size or alignment that no slab can hold (zero size, alignment
    /// not a power of two or above a page, object above the largest slab).
    BadGeometry {
        /// Object size asked for.
        size: usize,
        /// Alignment asked for.
        align: usize,
    },
    /// A debug check found an object's red zone, poison or free pointer
    /// overwritten; the object has been quarantined.
    Corrupted(Corruption),
}

impl From<kmm_api::Error> for SlabError {
    fn from(e: kmm_api::Error) -> Self {
        SlabError::Page(e)
    }
}

impl fmt::Display for SlabError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            SlabError::Page(e) => write!(f, "page allocator: {e}"),
            SlabError::SizeTooLarge { bytes, max } => {
                write!(f, "size {bytes} bytes is above the maximum {max}")
            }
            SlabError::Overflow { n, size } => {
                write!(f, "{n} elements of {size} bytes overflow the address space")
            }
            SlabError::InvalidGfp { gfp } => {
                write!(
                    f,
                    "GFP flags {gfp:?} cannot back slab memory (no direct map)"
                )
            }
            SlabError::InvalidPointer { addr } => {
                write!(f, "{addr} was not allocated by kmalloc or any cache")
            }
            SlabError::NotObjectStart {
                cache,
                addr,
                offset,
            } => write!(
                f,
                "{cache}: {addr} is {offset} bytes into an object, not its start"
            ),
            SlabError::DoubleFree { cache, addr } => {
                write!(f, "{cache}: double free of object {addr}")
            }
            SlabError::WrongCache {
                addr,
                expected,
                found,
            } => write!(
                f,
                "object {addr} freed to cache {expected} but belongs to {found}"
            ),
            SlabError::CacheBusy { cache, live } => {
                write!(f, "{cache}: cannot destroy, {live} objects still allocated")
            }
            SlabError::CachedElsewhere { cache, objects } => write!(
                f,
                "{cache}: cannot destroy, {objects} objects still cached on other CPUs"
            ),
            SlabError::NoSuchCache => f.write_str("cache handle names no live cache"),
            SlabError::TooManyCaches { max } => write!(f, "all {max} cache slots in use"),
            SlabError::BadGeometry { size, align } => {
                write!(
                    f,
                    "no slab can hold objects of {size} bytes aligned to {align}"
                )
            }
            SlabError::Corrupted(c) => c.fmt(f),
        }
    }
}

impl core::error::Error for SlabError {}
