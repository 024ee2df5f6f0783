//! Per-frame metadata as the buddy sees it: the [`FrameTag`] of every frame,
//! the free-list [`Links`] of free block heads, the [`FrameMeta`] trait through
//! which the caller stores both, and [`BuddyFrame`], a ready-made storage.
//!
//! This module owns the one-byte tag encoding. It never looks at a frame's
//! contents: all of this lives in the caller's descriptor array.

use crate::free_area::ORDERS;
use kmm_api::Order;

/// State of one frame as the buddy sees it.
///
/// Every managed frame is exactly one of these, and the frames of a block
/// other than its head are [`FrameTag::Tail`]:
///
/// | tag | meaning |
/// |---|---|
/// | `Reserved` | not owned by the buddy (hole, firmware, boot metadata); the initial state of every frame |
/// | `Free(o)` | head of a free block of order `o`, linked on `free_area[o]` |
/// | `Allocated(o)` | head of an allocated block of order `o` |
/// | `Tail` | inside a block whose head is elsewhere |
///
/// Transitions: `Reserved → Free` (boot release only); `Free ↔ Allocated`
/// (alloc/free of a whole block); `Free/Allocated ↔ Tail` when blocks split
/// or merge. Nothing ever returns to `Reserved`.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Hash)]
pub enum FrameTag {
    /// Not owned by the buddy.
    Reserved,
    /// Inside a block whose head is another frame.
    Tail,
    /// Head of a free block of this order.
    Free(Order),
    /// Head of an allocated block of this order.
    Allocated(Order),
}

/// The encoding: bits 7..6 hold the kind, bits 4..0 the order. Only these
/// bytes, with an order up to [`Order::LIMIT`], decode as a tag other than
/// `Reserved`.
const RESERVED: u8 = 0x00;
const TAIL: u8 = 0x40;
const FREE: u8 = 0x80;
const ALLOCATED: u8 = 0xc0;
const ORDER_MASK: u8 = 0x1f;
const FREE_LAST: u8 = FREE | Order::LIMIT as u8;
const ALLOCATED_LAST: u8 = ALLOCATED | Order::LIMIT as u8;

// The order field must hold every order an allocator can be configured for.
const _: () = assert!(Order::LIMIT <= ORDER_MASK as u32);

impl FrameTag {
    /// The one-byte encoding a storage keeps. `Reserved` encodes as 0, so
    /// zero-filled descriptor memory is a valid "nothing released yet" state.
    ///
    /// ```
    /// use kmm_buddy::FrameTag;
    /// use kmm_api::Order;
    /// let tag = FrameTag::Free(Order::new(3).unwrap());
    /// assert_eq!(FrameTag::decode(tag.encode()), tag);
    /// assert_eq!(FrameTag::Reserved.encode(), 0);
    /// ```
    #[inline]
    pub const fn encode(self) -> u8 {
        match self {
            FrameTag::Reserved => RESERVED,
            FrameTag::Tail => TAIL,
            FrameTag::Free(o) => FREE | o.as_u32() as u8,
            FrameTag::Allocated(o) => ALLOCATED | o.as_u32() as u8,
        }
    }

    /// Decodes any byte. Bytes that no tag encodes to (an order above
    /// [`Order::LIMIT`], stray bits) decode as `Reserved`, so a corrupted
    /// byte can never make the buddy treat a frame as its own.
    #[inline]
    pub const fn decode(byte: u8) -> FrameTag {
        match byte {
            TAIL => FrameTag::Tail,
            FREE..=FREE_LAST => FrameTag::Free(ORDERS[(byte & ORDER_MASK) as usize]),
            ALLOCATED..=ALLOCATED_LAST => FrameTag::Allocated(ORDERS[(byte & ORDER_MASK) as usize]),
            _ => FrameTag::Reserved,
        }
    }
}

/// Free-list links of a free block head: frame indices relative to the
/// buddy's base, [`Links::NIL`] for "none".
#[derive(Clone, Copy, PartialEq, Eq, Debug, Hash)]
pub struct Links {
    /// The previous block on the same free list.
    pub prev: u32,
    /// The next block on the same free list.
    pub next: u32,
}

impl Links {
    /// No neighbour. Never a valid index: a buddy manages at most
    /// `u32::MAX - 1` frames.
    pub const NIL: u32 = u32::MAX;
    /// Links of a block alone on its list.
    pub const UNLINKED: Links = Links {
        prev: Self::NIL,
        next: Self::NIL,
    };
}

/// Where the buddy keeps its per-frame metadata.
///
/// `idx` is relative to the buddy's base and always `< nr_frames`. The buddy
/// reads and writes [`Links`] only of frames it has tagged `Free`, so a
/// storage may overlay the links on fields that mean something else while a
/// frame is allocated (kmm-zones keeps them in its page descriptors).
pub trait FrameMeta {
    /// The tag of frame `idx`.
    fn tag(&self, idx: usize) -> FrameTag;
    /// Sets the tag of frame `idx`.
    fn set_tag(&mut self, idx: usize, tag: FrameTag);
    /// The free-list links of frame `idx` (tagged `Free`).
    fn links(&self, idx: usize) -> Links;
    /// Sets the free-list links of frame `idx` (tagged `Free`).
    fn set_links(&mut self, idx: usize, links: Links);
    /// How many frames this storage can describe; [`crate::Buddy::new`]
    /// refuses a larger range. Storage that cannot tell keeps the default
    /// (unbounded) and is trusted to cover the range.
    fn capacity(&self) -> usize {
        usize::MAX
    }
}

/// A ready-made frame storage for users without page descriptors (tests,
/// benchmarks, kernels using the buddy alone): 12 bytes per frame (a tag
/// byte, padding, and two `u32` links).
///
/// ```
/// use kmm_buddy::{BuddyFrame, FrameMeta, FrameTag};
/// assert_eq!(core::mem::size_of::<BuddyFrame>(), 12);
/// let mut frames = [BuddyFrame::EMPTY; 4];
/// assert_eq!(frames.tag(3), FrameTag::Reserved);
/// ```
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct BuddyFrame {
    tag: u8,
    links: Links,
}

impl BuddyFrame {
    /// A `Reserved` frame, the state every frame starts in.
    pub const EMPTY: BuddyFrame = BuddyFrame {
        tag: FrameTag::Reserved.encode(),
        links: Links::UNLINKED,
    };
}

impl Default for BuddyFrame {
    fn default() -> Self {
        Self::EMPTY
    }
}

impl FrameMeta for [BuddyFrame] {
    #[inline]
    fn tag(&self, idx: usize) -> FrameTag {
        FrameTag::decode(self[idx].tag)
    }
    #[inline]
    fn set_tag(&mut self, idx: usize, tag: FrameTag) {
        self[idx].tag = tag.encode();
    }
    #[inline]
    fn links(&self, idx: usize) -> Links {
        self[idx].links
    }
    #[inline]
    fn set_links(&mut self, idx: usize, links: Links) {
        self[idx].links = links;
    }
    fn capacity(&self) -> usize {
        self.len()
    }
}

impl<const N: usize> FrameMeta for [BuddyFrame; N] {
    #[inline]
    fn tag(&self, idx: usize) -> FrameTag {
        self.as_slice().tag(idx)
    }
    #[inline]
    fn set_tag(&mut self, idx: usize, tag: FrameTag) {
        self.as_mut_slice().set_tag(idx, tag);
    }
    #[inline]
    fn links(&self, idx: usize) -> Links {
        self.as_slice().links(idx)
    }
    #[inline]
    fn set_links(&mut self, idx: usize, links: Links) {
        self.as_mut_slice().set_links(idx, links);
    }
    fn capacity(&self) -> usize {
        N
    }
}

/// A borrowed storage (`Buddy<&mut [BuddyFrame]>`) behaves as the storage.
impl<T: FrameMeta + ?Sized> FrameMeta for &mut T {
    #[inline]
    fn tag(&self, idx: usize) -> FrameTag {
        (**self).tag(idx)
    }
    #[inline]
    fn set_tag(&mut self, idx: usize, tag: FrameTag) {
        (**self).set_tag(idx, tag);
    }
    #[inline]
    fn links(&self, idx: usize) -> Links {
        (**self).links(idx)
    }
    #[inline]
    fn set_links(&mut self, idx: usize, links: Links) {
        (**self).set_links(idx, links);
    }
    fn capacity(&self) -> usize {
        (**self).capacity()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_tag_round_trips_through_its_byte() {
        for o in 0..=Order::LIMIT {
            let order = Order::new(o).unwrap();
            for tag in [FrameTag::Free(order), FrameTag::Allocated(order)] {
                assert_eq!(FrameTag::decode(tag.encode()), tag);
            }
        }
        assert_eq!(FrameTag::decode(FrameTag::Tail.encode()), FrameTag::Tail);
        assert_eq!(FrameTag::decode(0), FrameTag::Reserved);
    }

    #[test]
    fn bytes_no_tag_encodes_to_decode_as_reserved() {
        for byte in 0..=u8::MAX {
            let tag = FrameTag::decode(byte);
            if tag != FrameTag::Reserved {
                assert_eq!(tag.encode(), byte, "byte {byte:#x} decoded to {tag:?}");
            }
        }
        assert_eq!(FrameTag::decode(0xff), FrameTag::Reserved);
        assert_eq!(FrameTag::decode(0x41), FrameTag::Reserved);
    }
}
