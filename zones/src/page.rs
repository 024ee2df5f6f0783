//! `mem_map`: one [`Page`] descriptor per frame, 16 bytes each, and the
//! [`FrameMeta`] view through which a zone's buddy keeps its tags and free
//! list links inside them.
//!
//! This module owns the descriptor layout and the rules for who may write
//! which field when. It must never read or write a frame's contents.
//!
//! # Layout (16 bytes; Linux's `struct page` is 64)
//!
//! | field | bits | meaning |
//! |---|---|---|
//! | `flags` | 0..8 | the buddy's [`FrameTag`] byte |
//! | | 8..10 | zone index (fixed at boot) |
//! | | 16 | `PG_pcp`: head of a block on a per-CPU list |
//! | | 17 | `PG_owned`: a layer claims the frame (its owner word is not `NONE`) |
//! | | 18 | `PG_freed`: freed as a block's head since it was last handed out (a second free is a double free; a free of a frame never handed out is not) |
//! | `refcount` | 32 | 1 while a caller holds the block (head, or each page after `split_page`), else 0 |
//! | `word` | 64 | free block: buddy links (`prev << 32 \| next`); on a per-CPU list: next index; allocated: the owner word |
//!
//! # Who writes what (the ordering argument)
//!
//! At any moment a frame belongs to exactly one domain: the zone's buddy
//! (free, reserved or tail: zone lock), one per-CPU list (that CPU, pinned),
//! or the caller holding it. A field is written only from the frame's
//! domain, or at a transition holding both (pcp refill and drain: the CPU
//! pinned and the zone lock). Every change of domain passes through a
//! release/acquire (the zone lock's, the hand-over of a CPU from one
//! pinned context to the next, or the holder's own hand-over of the
//! block; an allocation sets `refcount` after taking the block off a list,
//! a free takes it back before its block enters a list), so `Relaxed`
//! accesses suffice. Readers without a lock (`page_zone`,
//! `owner`) see some recent value and are only relied upon by the frame's
//! holder. `PG_owned` and the owner word are written by the holder alone
//! (through the `unsafe` `PageOwner::set_owner`), and a free refuses a
//! block whose head still has `PG_owned`: a layer's frames go back only
//! after that layer clears its words. The one transition no lock arbitrates is a free: two frees of
//! one block may run on two CPUs at once, each pinned to its own.
//! So a free takes the block back with a compare-and-swap of `refcount`
//! from 1 to 0 ([`Page::try_release`], Linux's `put_page_testzero`): one
//! wins, the other sees 0 and is refused as a double free, and the block
//! never reaches two lists.

use crate::ZoneType;
use kmm_api::sync::{AtomicU32, AtomicU64, Ordering::Relaxed};
use kmm_api::Order;
use kmm_buddy::{FrameMeta, FrameTag, Links};

/// Bits of `flags` holding the buddy's tag byte.
const TAG_MASK: u32 = 0xff;
/// Shift and mask of the zone index in `flags`.
const ZONE_SHIFT: u32 = 8;
const ZONE_MASK: u32 = 0x3 << ZONE_SHIFT;
/// Linux `PG_pcp`-like flag: the block sits on a per-CPU list.
const PG_PCP: u32 = 1 << 16;
/// A layer claims the frame through its owner word (kmm's own flag; Linux
/// reads the same fact off `PG_slab` and friends).
const PG_OWNED: u32 = 1 << 17;
/// The frame headed a block that was freed, and has not been handed out
/// since (kmm's own flag: it tells a double free from a free of a frame
/// nobody was ever given).
const PG_FREED: u32 = 1 << 18;

/// The "no next" value of a per-CPU list link.
pub(crate) const NIL: u32 = u32::MAX;

/// The descriptor of one page frame (Linux `struct page`, compacted).
///
/// All fields are atomics so `mem_map` is `Sync` and readable without a
/// lock; see the module documentation for who writes what.
#[derive(Debug)]
pub struct Page {
    flags: AtomicU32,
    refcount: AtomicU32,
    word: AtomicU64,
}

// Loom's model atomics are larger; the layout holds for the real ones.
#[cfg(not(loom))]
static_assertions::const_assert!(core::mem::size_of::<Page>() <= 16);

impl Page {
    /// A reserved frame of `zone`, as every descriptor starts at boot.
    pub(crate) fn new(zone: ZoneType) -> Self {
        Self {
            flags: AtomicU32::new(
                (zone.index() as u32) << ZONE_SHIFT | FrameTag::Reserved.encode() as u32,
            ),
            refcount: AtomicU32::new(0),
            word: AtomicU64::new(0),
        }
    }

    /// The buddy's view of the frame.
    #[inline]
    pub fn tag(&self) -> FrameTag {
        FrameTag::decode((self.flags.load(Relaxed) & TAG_MASK) as u8)
    }

    /// The zone the frame belongs to (Linux `page_zonenum`).
    #[inline]
    pub fn zone_type(&self) -> ZoneType {
        let index = ((self.flags.load(Relaxed) & ZONE_MASK) >> ZONE_SHIFT) as usize;
        // Every two-bit value is a zone index.
        ZoneType::from_index(index).unwrap_or(ZoneType::Dma)
    }

    /// Linux `PageReserved`: the frame was never released to the buddy
    /// (firmware, the kernel image, the manager's metadata, holes).
    #[inline]
    pub fn is_reserved(&self) -> bool {
        self.tag() == FrameTag::Reserved
    }

    /// Whether the frame heads a block on a per-CPU list.
    #[inline]
    pub fn is_pcp(&self) -> bool {
        self.flags.load(Relaxed) & PG_PCP != 0
    }

    /// Whether a layer claims the frame with a non-`NONE` owner word.
    #[inline]
    pub fn is_owned(&self) -> bool {
        self.flags.load(Relaxed) & PG_OWNED != 0
    }

    /// Linux `page_count`: 1 while a caller holds the block, else 0.
    #[inline]
    pub fn page_count(&self) -> u32 {
        self.refcount.load(Relaxed)
    }

    /// Whether the frame headed a block that was freed and has not been
    /// handed out since.
    #[inline]
    pub(crate) fn was_freed(&self) -> bool {
        self.flags.load(Relaxed) & PG_FREED != 0
    }

    /// Whether the frame heads an allocated block of `order` that no layer
    /// claims (tag `Allocated(order)`, `PG_owned` clear), read with one
    /// load: every check of a free but the refcount, which
    /// [`Page::try_release`] takes.
    #[inline]
    pub(crate) fn is_unclaimed_block(&self, order: Order) -> bool {
        let block = FrameTag::Allocated(order).encode() as u32;
        self.flags.load(Relaxed) & (TAG_MASK | PG_OWNED) == block
    }

    /// Whether a caller holds this frame as the head of a block.
    #[inline]
    pub(crate) fn is_held(&self) -> bool {
        self.page_count() != 0
    }

    #[inline]
    fn set_tag(&self, tag: FrameTag) {
        // Load and store, not a read-modify-write: only the frame's domain
        // writes `flags` (module documentation).
        let flags = self.flags.load(Relaxed);
        self.flags
            .store((flags & !TAG_MASK) | tag.encode() as u32, Relaxed);
    }

    #[inline]
    pub(crate) fn set_pcp(&self, on: bool) {
        self.set_flag(PG_PCP, on);
    }

    /// Load and store, not a read-modify-write: only the frame's domain
    /// writes `flags` (module documentation).
    #[inline]
    fn set_flag(&self, flag: u32, on: bool) {
        let flags = self.flags.load(Relaxed);
        let flags = if on { flags | flag } else { flags & !flag };
        self.flags.store(flags, Relaxed);
    }

    /// Hands the block to a caller (refcount 0 → 1), off any per-CPU list
    /// (`PG_pcp` clear), with no layer's claim (owner word `NONE`,
    /// `PG_owned` clear: a flag a careless layer left on a tail it did not
    /// clear is dropped here, after the checker could see it on the free
    /// frame).
    #[inline]
    pub(crate) fn set_held(&self) {
        self.word
            .store(kmm_api::OwnerWord::NONE.to_bits() as u64, Relaxed);
        // One store clears all three: off the list, no claim, and not
        // freed since handed out.
        let flags = self.flags.load(Relaxed);
        self.flags
            .store(flags & !(PG_PCP | PG_OWNED | PG_FREED), Relaxed);
        self.refcount.store(1, Relaxed);
    }

    /// Takes the block back from its caller: refcount 1 → 0 atomically, so
    /// of two frees racing on two CPUs exactly one succeeds. `false` if
    /// nobody held it. The winner then records where the block went with
    /// [`Page::set_freed`].
    #[inline]
    pub(crate) fn try_release(&self) -> bool {
        self.refcount
            .compare_exchange(1, 0, Relaxed, Relaxed)
            .is_ok()
    }

    /// Marks the head of a block a free took back (`PG_freed`), and
    /// `PG_pcp` too if it went onto a per-CPU list: one store for both.
    /// The free's winner alone owns the frame (its domain: module
    /// documentation), so a load and a store suffice.
    #[inline]
    pub(crate) fn set_freed(&self, listed: bool) {
        self.set_flag(if listed { PG_FREED | PG_PCP } else { PG_FREED }, true);
    }

    /// Sets the refcount: 0 when the block leaves its caller, 1 for each
    /// page `split_page` makes (module documentation: in the domain the
    /// transition goes through).
    #[inline]
    pub(crate) fn set_refcount(&self, count: u32) {
        self.refcount.store(count, Relaxed);
    }

    /// The owner word (meaningful only while the frame is held).
    #[inline]
    pub(crate) fn word(&self) -> u64 {
        self.word.load(Relaxed)
    }

    /// The holder records a layer's owner word (`PG_owned` follows it).
    #[inline]
    pub(crate) fn set_owner_word(&self, word: kmm_api::OwnerWord) {
        self.word.store(word.to_bits() as u64, Relaxed);
        self.set_flag(PG_OWNED, !word.is_none());
    }

    /// The holder, or one of several callers racing to claim the same word,
    /// swaps the owner word from `current` to `new` atomically (`PG_owned`
    /// follows it, written by the one that swapped). Whether it swapped.
    #[inline]
    pub(crate) fn replace_owner_word(
        &self,
        current: kmm_api::OwnerWord,
        new: kmm_api::OwnerWord,
    ) -> bool {
        let swapped = self
            .word
            .compare_exchange(
                current.to_bits() as u64,
                new.to_bits() as u64,
                Relaxed,
                Relaxed,
            )
            .is_ok();
        if swapped {
            self.set_flag(PG_OWNED, !new.is_none());
        }
        swapped
    }

    /// Next index on a per-CPU list.
    #[inline]
    pub(crate) fn pcp_next(&self) -> u32 {
        self.word.load(Relaxed) as u32
    }

    #[inline]
    pub(crate) fn set_pcp_next(&self, next: u32) {
        self.word.store(u64::from(next), Relaxed);
    }
}

/// A zone's slice of `mem_map` as its buddy's [`FrameMeta`]: index `i` is
/// the zone's `i`-th frame. Mutation goes through the atomics, so the view
/// is a shared borrow; the zone lock serialises the buddy's writes.
#[derive(Clone, Copy)]
pub(crate) struct ZoneMeta<'a> {
    pub(crate) pages: &'a [Page],
}

impl FrameMeta for ZoneMeta<'_> {
    #[inline]
    fn tag(&self, idx: usize) -> FrameTag {
        self.pages[idx].tag()
    }
    #[inline]
    fn set_tag(&mut self, idx: usize, tag: FrameTag) {
        self.pages[idx].set_tag(tag);
    }
    #[inline]
    fn links(&self, idx: usize) -> Links {
        let word = self.pages[idx].word.load(Relaxed);
        Links {
            prev: (word >> 32) as u32,
            next: word as u32,
        }
    }
    #[inline]
    fn set_links(&mut self, idx: usize, links: Links) {
        let word = (u64::from(links.prev) << 32) | u64::from(links.next);
        self.pages[idx].word.store(word, Relaxed);
    }
    fn capacity(&self) -> usize {
        self.pages.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn page_descriptor_is_at_most_16_bytes() {
        assert_eq!(core::mem::size_of::<Page>(), 16);
    }

    #[test]
    fn tag_zone_and_pcp_flag_share_flags_without_clobbering() {
        let page = Page::new(ZoneType::HighMem);
        let order = Order::new(3).unwrap();
        page.set_tag(FrameTag::Allocated(order));
        page.set_pcp(true);
        assert_eq!(page.tag(), FrameTag::Allocated(order));
        assert_eq!(page.zone_type(), ZoneType::HighMem);
        assert!(page.is_pcp());
        page.set_tag(FrameTag::Free(order));
        page.set_pcp(false);
        assert_eq!(page.tag(), FrameTag::Free(order));
        assert!(!page.is_pcp());
        assert_eq!(page.zone_type(), ZoneType::HighMem);
    }

    #[test]
    fn pg_owned_follows_the_owner_word() {
        let page = Page::new(ZoneType::Normal);
        page.set_held();
        let word = kmm_api::OwnerWord::new(kmm_api::OwnerTag::PageTable, 0).unwrap();
        page.set_owner_word(word);
        assert!(page.is_owned());
        assert_eq!(page.word(), word.to_bits() as u64);
        page.set_owner_word(kmm_api::OwnerWord::NONE);
        assert!(!page.is_owned());
        assert_eq!(page.tag(), FrameTag::Reserved, "the tag byte is untouched");
    }

    #[test]
    fn an_unclaimed_block_has_the_freed_order_and_no_owner() {
        let page = Page::new(ZoneType::Normal);
        let order = Order::new(2).unwrap();
        page.set_tag(FrameTag::Allocated(order));
        page.set_held();
        page.set_pcp(true);
        assert!(page.is_unclaimed_block(order), "other flags do not matter");
        assert!(!page.is_unclaimed_block(Order::ZERO));
        page.set_owner_word(kmm_api::OwnerWord::new(kmm_api::OwnerTag::PageTable, 0).unwrap());
        assert!(!page.is_unclaimed_block(order));
        page.set_owner_word(kmm_api::OwnerWord::NONE);
        page.set_tag(FrameTag::Free(order));
        assert!(!page.is_unclaimed_block(order));
    }

    #[test]
    fn a_page_is_held_from_set_held_until_its_refcount_drops() {
        let page = Page::new(ZoneType::Normal);
        assert!(!page.is_held());
        page.set_owner_word(kmm_api::OwnerWord::from_bits(0x1001));
        page.set_held();
        assert!(page.is_held());
        assert_eq!(page.word(), 0, "a new holder starts with a zero owner word");
        page.set_refcount(0);
        assert!(!page.is_held());
    }

    #[test]
    fn buddy_links_round_trip_through_the_word() {
        let pages = [Page::new(ZoneType::Dma), Page::new(ZoneType::Dma)];
        let mut meta = ZoneMeta { pages: &pages };
        let links = Links { prev: 7, next: 1 };
        meta.set_links(1, links);
        assert_eq!(meta.links(1), links);
        assert_eq!(meta.capacity(), 2);
    }
}
