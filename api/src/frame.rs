//! Who holds a frame: the handle an allocator gives for a block it hands
//! out ([`Pages`]), the identity that ties a handle to its allocator
//! ([`AllocatorId`]), and the owner word a layer records in the frames it
//! holds ([`OwnerWord`]).
//!
//! # The ownership rule
//!
//! No sequence of calls to safe functions may free a block twice, free a
//! block its caller does not hold, or reach a frame's contents without
//! holding it. So every safe function that frees, maps or touches a block
//! takes a [`Pages`]: a move-only handle that only an allocator creates, one
//! per block handed out, consumed by the free. The forms that take a raw
//! [`crate::Pfn`] or address are `unsafe fn`: their caller promises it holds
//! the block. A handle names its allocator, so a block of one machine can
//! never be freed into another.
//!
//! Dropping a [`Pages`] leaks its block, as `core::mem::forget` leaks a
//! `Box`: safe, but the frames stay allocated. The type is `#[must_use]`.
//!
//! This module owns no memory and holds no state beyond the counter that
//! makes allocator identities unique.

use crate::{Order, Pfn, PhysAddr};
use core::num::NonZeroU32;
use core::sync::atomic::{AtomicU32, Ordering};

/// The identity of one allocator instance: unique in the process for its
/// whole life, so a handle made by one allocator is refused by any other.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub struct AllocatorId(NonZeroU32);

/// Identities handed out so far. A plain `core` atomic even in loom
/// models: it is touched once per allocator, never raced on in a model.
static NEXT_ALLOCATOR_ID: AtomicU32 = AtomicU32::new(1);

impl AllocatorId {
    /// A new identity, never handed out before in this process; `None`
    /// once 2^32 - 1 have been made (never reused, so never ambiguous).
    pub fn new() -> Option<Self> {
        let mut id = NEXT_ALLOCATOR_ID.load(Ordering::Relaxed);
        loop {
            let next = id.checked_add(1)?;
            match NEXT_ALLOCATOR_ID.compare_exchange_weak(
                id,
                next,
                Ordering::Relaxed,
                Ordering::Relaxed,
            ) {
                Ok(_) => return NonZeroU32::new(id).map(AllocatorId),
                Err(seen) => id = seen,
            }
        }
    }

    /// The identity as a number (for reports and for mixing into
    /// secrets); an identity can only be made by [`AllocatorId::new`].
    pub const fn as_u32(self) -> u32 {
        self.0.get()
    }
}

/// A block of `2^order` contiguous frames held by whoever holds this value
/// (Linux: the `struct page *` of a block `alloc_pages` returned). Only an
/// allocator makes one, for a block it has just handed out; freeing the
/// block consumes it. Not `Clone`: there is exactly one per held block.
///
/// ```
/// use kmm_api::{AllocatorId, Order, Pages, Pfn};
/// let allocator = AllocatorId::new().unwrap();
/// // SAFETY: a block this (pretend) allocator just handed out.
/// let pages = unsafe { Pages::from_raw(Pfn::new(0x100), Order::new(2)?, allocator) };
/// assert_eq!((pages.pfn(), pages.nr_pages()), (Pfn::new(0x100), 4));
/// assert_eq!(pages.into_raw(), (Pfn::new(0x100), Order::new(2)?));
/// # Ok::<(), kmm_api::Error>(())
/// ```
#[must_use = "dropping a Pages leaks its block; free it through its allocator"]
#[derive(PartialEq, Eq, Hash, Debug)]
pub struct Pages {
    pfn: Pfn,
    allocator: AllocatorId,
    order: Order,
}

impl Pages {
    /// The handle of the block of `order` at `pfn`, held from `allocator`.
    ///
    /// # Safety
    ///
    /// Nobody else may hold the block: it is one the caller holds and
    /// hands to the value returned (handed out by `allocator`, or given up
    /// with [`Pages::into_raw`]), or one nobody holds at all, which the
    /// allocator then refuses to free (`DoubleFree`, `NotAllocated`). A
    /// handle for a block someone else holds would let two holders free
    /// or use it at once.
    #[allow(unsafe_code)] // declares a contract
    pub const unsafe fn from_raw(pfn: Pfn, order: Order, allocator: AllocatorId) -> Self {
        Pages {
            pfn,
            allocator,
            order,
        }
    }

    /// Gives up the handle, keeping the block held: the caller becomes
    /// responsible for freeing it (through [`Pages::from_raw`] and its
    /// allocator) and for never using it after that.
    pub fn into_raw(self) -> (Pfn, Order) {
        (self.pfn, self.order)
    }

    /// The block's first frame.
    pub const fn pfn(&self) -> Pfn {
        self.pfn
    }

    /// The block's order.
    pub const fn order(&self) -> Order {
        self.order
    }

    /// Frames in the block.
    pub const fn nr_pages(&self) -> usize {
        self.order.pages()
    }

    /// The physical address of the block's first byte.
    pub const fn phys(&self) -> PhysAddr {
        self.pfn.phys()
    }

    /// The allocator that handed the block out.
    pub const fn allocator(&self) -> AllocatorId {
        self.allocator
    }
}

/// Which layer holds a frame, as the low three bits of its owner word.
/// Tags are allocated here, once for every layer, so no layer can read
/// another's word as its own.
#[non_exhaustive]
#[repr(u8)]
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub enum OwnerTag {
    /// A page of a slab; the payload is its slab header's address.
    Slab = 1,
    /// The first page of a large kmalloc; the payload is its order,
    /// shifted past the tag.
    LargeKmalloc = 2,
    /// Another page of a large kmalloc; the payload is its index in the
    /// block, shifted past the tag.
    LargeKmallocTail = 3,
    /// A page of a page table.
    PageTable = 4,
    /// A page of a slab cache's own descriptor (and its per-CPU arrays).
    SlabCache = 5,
    /// A page of a vmalloc area (mapped at a vmalloc address); no payload.
    Vmalloc = 6,
}

impl OwnerTag {
    const fn from_bits(bits: usize) -> Option<Self> {
        match bits {
            1 => Some(OwnerTag::Slab),
            2 => Some(OwnerTag::LargeKmalloc),
            3 => Some(OwnerTag::LargeKmallocTail),
            4 => Some(OwnerTag::PageTable),
            5 => Some(OwnerTag::SlabCache),
            6 => Some(OwnerTag::Vmalloc),
            _ => None,
        }
    }
}

/// The owner word of a held frame: an [`OwnerTag`] in the low three bits
/// and the tag's payload above them. [`OwnerWord::NONE`] means the frame's
/// holder is a plain caller of the page allocator, not a layer.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug, Default)]
pub struct OwnerWord(usize);

impl OwnerWord {
    /// Bits of the word holding the tag.
    pub const TAG_MASK: usize = 0b111;

    /// No layer holds the frame.
    pub const NONE: OwnerWord = OwnerWord(0);

    /// The word of `tag` with `payload`, whose low three bits must be zero
    /// (an aligned address, or a number shifted left by three); `None`
    /// otherwise.
    ///
    /// ```
    /// use kmm_api::{OwnerTag, OwnerWord};
    /// let word = OwnerWord::new(OwnerTag::LargeKmalloc, 3 << 3).unwrap();
    /// assert_eq!((word.tag(), word.payload()), (Some(OwnerTag::LargeKmalloc), 3 << 3));
    /// assert_eq!(OwnerWord::new(OwnerTag::Slab, 0x1001), None);
    /// ```
    pub const fn new(tag: OwnerTag, payload: usize) -> Option<Self> {
        if payload & Self::TAG_MASK != 0 {
            return None;
        }
        Some(OwnerWord(payload | tag as usize))
    }

    /// The word as stored, for page descriptors.
    pub const fn to_bits(self) -> usize {
        self.0
    }

    /// A word as stored; an untagged non-zero word reads as no tag.
    pub const fn from_bits(bits: usize) -> Self {
        OwnerWord(bits)
    }

    /// The layer the word names, `None` for [`OwnerWord::NONE`] or bits
    /// no layer uses.
    pub const fn tag(self) -> Option<OwnerTag> {
        OwnerTag::from_bits(self.0 & Self::TAG_MASK)
    }

    /// The payload (the word without its tag).
    pub const fn payload(self) -> usize {
        self.0 & !Self::TAG_MASK
    }

    /// Whether no layer holds the frame.
    pub const fn is_none(self) -> bool {
        self.0 == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allocator_ids_are_never_handed_out_twice() {
        let a = AllocatorId::new().unwrap();
        let b = AllocatorId::new().unwrap();
        assert_ne!(a, b);
    }

    #[test]
    fn owner_words_keep_tag_and_payload_apart() {
        for tag in [
            OwnerTag::Slab,
            OwnerTag::LargeKmalloc,
            OwnerTag::LargeKmallocTail,
            OwnerTag::PageTable,
            OwnerTag::SlabCache,
        ] {
            let word = OwnerWord::new(tag, 0xdead_b000).unwrap();
            assert_eq!(word.tag(), Some(tag));
            assert_eq!(word.payload(), 0xdead_b000);
            assert!(!word.is_none());
            assert_eq!(OwnerWord::from_bits(word.to_bits()), word);
        }
        assert_eq!(OwnerWord::NONE.tag(), None);
        assert!(OwnerWord::new(OwnerTag::Slab, 4).is_none());
        assert_eq!(OwnerWord::from_bits(7).tag(), None);
    }

    #[test]
    fn a_handle_fits_in_two_registers_on_64_bit() {
        assert!(core::mem::size_of::<Pages>() <= 16);
    }
}
