//! The allocator itself: [`Buddy`], its construction, `alloc` (take the
//! smallest fitting block, split it: Linux `expand`), `free` (merge with free
//! buddies: Linux `__free_one_page`), `split_page`, and the O(1) queries.
//!
//! Frames are addressed internally by their index relative to `base`; buddy
//! arithmetic is done on ABSOLUTE pfns so blocks are aligned as Linux aligns
//! them, whatever the base. This module never touches a frame's contents and
//! never changes anything before a request has been fully validated.

use crate::frame::{FrameMeta, FrameTag};
use crate::free_area::{FreeAreas, ORDERS};
use core::fmt;
use kmm_api::{Error, Order, Pfn};

/// A binary-buddy allocator over the frames `[base, base + nr_frames)`.
///
/// See the [crate documentation](crate) for the invariants and costs.
pub struct Buddy<M: FrameMeta> {
    pub(crate) meta: M,
    /// First managed pfn, as a raw number for the buddy arithmetic.
    pub(crate) base: usize,
    /// Frames managed; `base + nr_frames` does not overflow and
    /// `nr_frames < u32::MAX`, so every index fits a [`crate::Links`] field.
    pub(crate) nr_frames: usize,
    pub(crate) max_order: Order,
    pub(crate) free_area: FreeAreas,
    /// Pages ever released by [`Buddy::release_range`] (free + allocated).
    pub(crate) managed_pages: usize,
}

impl<M: FrameMeta> Buddy<M> {
    /// Makes a buddy over `[base, base + nr_frames)` with orders
    /// `0..=max_order` (Linux uses [`kmm_api::MAX_PAGE_ORDER`]).
    ///
    /// Every frame starts `Reserved`: `new` writes that tag to each frame,
    /// O(nr_frames) once, so the storage may hold anything beforehand. Nothing
    /// is free until [`Buddy::release_range`].
    ///
    /// Errors: [`Error::PfnOutOfRange`] if `nr_frames` is 0 (naming `base`),
    /// if `base + nr_frames` overflows, or if `nr_frames` exceeds
    /// `u32::MAX - 1` or the storage's [`FrameMeta::capacity`] (naming the
    /// first frame that cannot be described). `max_order` needs no check:
    /// an [`Order`] never exceeds [`Order::LIMIT`].
    pub fn new(mut meta: M, base: Pfn, nr_frames: usize, max_order: Order) -> Result<Self, Error> {
        let limit = meta.capacity().min(u32::MAX as usize - 1);
        if nr_frames == 0 {
            return Err(Error::PfnOutOfRange { pfn: base });
        }
        if nr_frames > limit || base.checked_add(nr_frames).is_none() {
            return Err(Error::PfnOutOfRange {
                pfn: Pfn::new(base.as_usize().saturating_add(limit.min(nr_frames))),
            });
        }
        for idx in 0..nr_frames {
            meta.set_tag(idx, FrameTag::Reserved);
        }
        Ok(Buddy {
            meta,
            base: base.as_usize(),
            nr_frames,
            max_order,
            free_area: FreeAreas::new(),
            managed_pages: 0,
        })
    }

    /// Allocates a block of `2^order` frames, aligned to its size, from the
    /// smallest free block that fits; the unused upper halves go back to the
    /// lower free lists. O(max_order); an order-0 request with order-0
    /// blocks free is a list pop.
    ///
    /// Errors: [`Error::OrderTooLarge`] above the maximum order,
    /// [`Error::NoMemory`] if no free block is large enough.
    #[inline]
    pub fn alloc(&mut self, order: Order) -> Result<Pfn, Error> {
        if order > self.max_order {
            return Err(self.order_too_large(order));
        }
        let Some(found) = self.free_area.lowest_nonempty(order) else {
            return Err(Error::NoMemory { order });
        };
        let Some(idx) = self.free_area.pop(&mut self.meta, found) else {
            return Err(Error::NoMemory { order });
        };
        self.expand(idx, found, order.as_usize());
        self.meta.set_tag(idx, FrameTag::Allocated(order));
        Ok(Pfn::new(self.base + idx))
    }

    /// Frees the block of `2^order` frames at `pfn`, merging it with its
    /// buddy while the buddy is a free block of the same order inside the
    /// range. O(max_order).
    ///
    /// Errors, with nothing changed: [`Error::PfnOutOfRange`],
    /// [`Error::OrderTooLarge`], [`Error::Misaligned`], [`Error::DoubleFree`]
    /// (`pfn` is free, as a block head or inside one), [`Error::NotAllocated`]
    /// (reserved, or inside an allocated block), [`Error::WrongOrder`].
    #[inline]
    pub fn free(&mut self, pfn: Pfn, order: Order) -> Result<(), Error> {
        let idx = self.allocated_head(pfn, order)?;
        self.free_block(idx, order.as_usize());
        Ok(())
    }

    /// Linux `split_page`: the allocated block of `order` at `pfn` becomes
    /// `2^order` allocated order-0 frames, each freeable alone. O(2^order).
    /// Errors as [`Buddy::free`], nothing changed.
    pub fn split(&mut self, pfn: Pfn, order: Order) -> Result<(), Error> {
        let idx = self.allocated_head(pfn, order)?;
        for frame in idx..idx + order.pages() {
            self.meta.set_tag(frame, FrameTag::Allocated(Order::ZERO));
        }
        Ok(())
    }

    /// The order of the allocated block whose head is `pfn`; `None` for any
    /// other frame. O(1).
    #[inline]
    pub fn allocated_order(&self, pfn: Pfn) -> Option<Order> {
        match self.meta.tag(self.index(pfn).ok()?) {
            FrameTag::Allocated(order) => Some(order),
            _ => None,
        }
    }

    /// Whether `pfn` lies inside a free block. O(max_order): walks up the
    /// aligned blocks that could contain it.
    pub fn is_free(&self, pfn: Pfn) -> bool {
        self.index(pfn)
            .is_ok_and(|idx| self.free_block_containing(idx).is_some())
    }

    /// Blocks on the free list of `order` (0 above the maximum order).
    pub fn nr_free(&self, order: Order) -> usize {
        self.free_area.area[order.as_usize()].nr_free
    }

    /// Pages on all free lists. O(1).
    pub fn free_pages(&self) -> usize {
        self.free_area.free_pages
    }

    /// Pages ever released to the buddy, free or allocated. O(1).
    pub fn managed_pages(&self) -> usize {
        self.managed_pages
    }

    /// The first frame of the range.
    pub fn base(&self) -> Pfn {
        Pfn::new(self.base)
    }

    /// The first frame past the range.
    pub fn end(&self) -> Pfn {
        Pfn::new(self.base + self.nr_frames)
    }

    /// The largest order this buddy hands out and merges up to.
    pub fn max_order(&self) -> Order {
        self.max_order
    }

    /// The frame storage, for callers that keep their own fields beside the
    /// buddy's (page descriptors).
    pub fn meta(&self) -> &M {
        &self.meta
    }

    /// Mutable access to the storage. The buddy's tags and the links of free
    /// frames must be left as they are, or [`Buddy::check`] will say so.
    pub fn meta_mut(&mut self) -> &mut M {
        &mut self.meta
    }

    /// The index of `pfn`, or [`Error::PfnOutOfRange`].
    #[inline]
    pub(crate) fn index(&self, pfn: Pfn) -> Result<usize, Error> {
        match pfn.as_usize().checked_sub(self.base) {
            Some(idx) if idx < self.nr_frames => Ok(idx),
            _ => Err(Error::PfnOutOfRange { pfn }),
        }
    }

    pub(crate) fn order_too_large(&self, order: Order) -> Error {
        Error::OrderTooLarge {
            order: order.as_u32(),
            max: self.max_order.as_u32(),
        }
    }

    /// Validates a free of `(pfn, order)` and returns the block's index.
    #[inline]
    fn allocated_head(&self, pfn: Pfn, order: Order) -> Result<usize, Error> {
        let idx = self.index(pfn)?;
        if order > self.max_order {
            return Err(self.order_too_large(order));
        }
        if !pfn.is_aligned_to_order(order.as_u32()) {
            return Err(Error::Misaligned { pfn, order });
        }
        match self.meta.tag(idx) {
            FrameTag::Allocated(allocated) if allocated == order => Ok(idx),
            FrameTag::Allocated(allocated) => Err(Error::WrongOrder {
                pfn,
                allocated,
                freed: order,
            }),
            FrameTag::Free(_) => Err(Error::DoubleFree { pfn }),
            FrameTag::Tail if self.free_block_containing(idx).is_some() => {
                Err(Error::DoubleFree { pfn })
            }
            FrameTag::Tail | FrameTag::Reserved => Err(Error::NotAllocated { pfn }),
        }
    }

    /// Splits the block at `idx` from order `high` down to `low`, putting
    /// each upper half on its free list (Linux `expand`). The head keeps no
    /// tag; the caller sets it.
    #[inline]
    pub(crate) fn expand(&mut self, idx: usize, high: usize, low: usize) {
        let mut order = high;
        while order > low {
            order -= 1;
            self.free_area
                .push(&mut self.meta, idx + (1 << order), order);
        }
    }

    /// Puts the block of `order` at `idx`, whose frames are all tagged
    /// (head anything, the rest `Tail`), on the free lists, merging it with
    /// free buddies of equal order up to the maximum order. A buddy outside
    /// the range is never looked at.
    #[inline]
    pub(crate) fn free_block(&mut self, mut idx: usize, mut order: usize) {
        let max = self.max_order.as_usize();
        while order < max {
            let buddy = ((self.base + idx) ^ (1 << order)).wrapping_sub(self.base);
            if buddy >= self.nr_frames || self.meta.tag(buddy) != FrameTag::Free(ORDERS[order]) {
                break;
            }
            self.free_area.remove(&mut self.meta, buddy, order);
            // The merged block starts at the lower of the two; the upper
            // head becomes a tail of it.
            let (lower, upper) = if buddy < idx {
                (buddy, idx)
            } else {
                (idx, buddy)
            };
            self.meta.set_tag(upper, FrameTag::Tail);
            idx = lower;
            order += 1;
        }
        self.free_area.push(&mut self.meta, idx, order);
    }

    /// The free block containing frame `idx`, as `(head index, order)`.
    /// O(max_order): a free block containing `idx` is the aligned block of
    /// its order around `idx`, so each order is one tag read.
    pub(crate) fn free_block_containing(&self, idx: usize) -> Option<(usize, usize)> {
        let pfn = self.base + idx;
        for order in 0..=self.max_order.as_usize() {
            let head = (pfn & !((1 << order) - 1)).checked_sub(self.base)?;
            match self.meta.tag(head) {
                FrameTag::Free(o) if o.as_usize() >= order => return Some((head, o.as_usize())),
                // The block headed here holds `idx` and is not free.
                FrameTag::Allocated(o) if o.as_usize() >= order => return None,
                FrameTag::Reserved if order == 0 => return None,
                _ => {}
            }
        }
        None
    }
}

/// The range, the counters, and the block count of each order up to the
/// maximum (the storage is not printed).
impl<M: FrameMeta> fmt::Debug for Buddy<M> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let orders = &self.free_area.area[..=self.max_order.as_usize()];
        f.debug_struct("Buddy")
            .field("base", &self.base())
            .field("end", &self.end())
            .field("max_order", &self.max_order)
            .field("free_pages", &self.free_area.free_pages)
            .field("managed_pages", &self.managed_pages)
            .field("nr_free", &DebugCounts(orders))
            .finish()
    }
}

struct DebugCounts<'a>(&'a [crate::free_area::FreeArea]);

impl fmt::Debug for DebugCounts<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list()
            .entries(self.0.iter().map(|area| area.nr_free))
            .finish()
    }
}
