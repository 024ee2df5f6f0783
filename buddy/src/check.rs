//! The invariant checker: walks every free list and every frame and reports
//! the first broken invariant as an [`Invariant`] value.
//!
//! It only reads, never trusts a link or a tag to be in range, and runs in
//! O(nr_frames + free blocks). Meant for tests, fuzzing and debug builds of
//! a kernel, not for the allocation path.

use crate::buddy::Buddy;
use crate::frame::{FrameMeta, FrameTag, Links};
use crate::free_area::{NR_AREAS, ORDERS};
use core::fmt;
use kmm_api::{Order, Pfn};

/// The first broken invariant [`Buddy::check`] found.
#[non_exhaustive]
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Invariant {
    /// A free-list link points outside the range, at a frame not tagged
    /// `Free(order)`, or disagrees with its neighbour's back link.
    BrokenLink {
        /// The list.
        order: Order,
        /// The frame whose links are wrong.
        pfn: Pfn,
    },
    /// A free list holds more blocks than its counter says (or loops).
    ListLongerThanCount {
        /// The list.
        order: Order,
        /// Its recorded block count.
        nr_free: usize,
    },
    /// A counter disagrees with what the lists or frames hold.
    CountMismatch {
        /// Which counter: `"nr_free"`, `"free_pages"`, `"managed_pages"`,
        /// `"nonempty"` or `"free blocks tagged"`.
        counter: &'static str,
        /// The list concerned (order 0 for totals).
        order: Order,
        /// The recorded value.
        recorded: usize,
        /// What the walk counted.
        counted: usize,
    },
    /// A block head whose order exceeds the maximum, which is not aligned
    /// to its order, or which runs past the end of the range.
    BadBlock {
        /// The block head.
        pfn: Pfn,
        /// Its tag.
        tag: FrameTag,
    },
    /// A frame inside a block is not `Tail`, or a `Tail` frame is in no block.
    BadTail {
        /// The frame.
        pfn: Pfn,
        /// Its tag.
        tag: FrameTag,
    },
    /// Two free buddies of the same order below the maximum were not merged.
    Unmerged {
        /// The lower of the two.
        pfn: Pfn,
        /// Their order.
        order: Order,
    },
}

impl fmt::Display for Invariant {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Invariant::BrokenLink { order, pfn } => {
                write!(f, "free list of {order}: broken link at {pfn}")
            }
            Invariant::ListLongerThanCount { order, nr_free } => write!(
                f,
                "free list of {order} holds more than its {nr_free} counted blocks"
            ),
            Invariant::CountMismatch {
                counter,
                order,
                recorded,
                counted,
            } => write!(
                f,
                "{counter} ({order}) records {recorded} but the walk counts {counted}"
            ),
            Invariant::BadBlock { pfn, tag } => {
                write!(
                    f,
                    "block at {pfn} tagged {tag:?} is oversized, misaligned or out of range"
                )
            }
            Invariant::BadTail { pfn, tag } => {
                write!(f, "{pfn} tagged {tag:?} breaks block tiling")
            }
            Invariant::Unmerged { pfn, order } => {
                write!(f, "free buddies of {order} at {pfn} were not merged")
            }
        }
    }
}

impl core::error::Error for Invariant {}

impl<M: FrameMeta> Buddy<M> {
    /// Checks every invariant of the buddy and reports the first broken one:
    /// each free list is a consistent doubly linked list of frames tagged
    /// `Free(order)` whose length is its counter; the summary counters
    /// (`free_pages`, the non-empty bitmap, `managed_pages`) match; every
    /// block head is aligned, inside the range, at most the maximum order,
    /// and followed by exactly its tails; no free block has a free buddy of
    /// its order below the maximum order. O(nr_frames + free blocks).
    pub fn check(&self) -> Result<(), Invariant> {
        let mut free_pages = 0;
        for order in 0..NR_AREAS {
            let on_list = self.check_list(order)?;
            free_pages += on_list << order;
            let nonempty = (self.free_area.nonempty >> order) & 1;
            if nonempty != usize::from(on_list > 0) as u32 {
                return Err(mismatch("nonempty", order, nonempty as usize, on_list));
            }
        }
        if free_pages != self.free_area.free_pages {
            return Err(mismatch(
                "free_pages",
                0,
                self.free_area.free_pages,
                free_pages,
            ));
        }
        self.check_frames()
    }

    /// Walks the list of `order` and returns its length.
    fn check_list(&self, order: usize) -> Result<usize, Invariant> {
        let area = &self.free_area.area[order];
        let order_value = ORDERS[order];
        let mut prev = Links::NIL;
        let mut cur = area.head;
        let mut len = 0;
        while cur != Links::NIL {
            let idx = cur as usize;
            let broken = Invariant::BrokenLink {
                order: order_value,
                pfn: Pfn::new(self.base.saturating_add(idx)),
            };
            if idx >= self.nr_frames || self.meta.tag(idx) != FrameTag::Free(order_value) {
                return Err(broken);
            }
            let links = self.meta.links(idx);
            if links.prev != prev {
                return Err(broken);
            }
            len += 1;
            if len > area.nr_free {
                return Err(Invariant::ListLongerThanCount {
                    order: order_value,
                    nr_free: area.nr_free,
                });
            }
            prev = cur;
            cur = links.next;
        }
        if len != area.nr_free {
            return Err(mismatch("nr_free", order, area.nr_free, len));
        }
        Ok(len)
    }

    /// Walks every frame: block tiling, alignment, merging, and the number
    /// of `Free` heads per order (each list entry is a distinct `Free` head,
    /// so equal counts mean every `Free` head is on its list).
    fn check_frames(&self) -> Result<(), Invariant> {
        let mut free_heads = [0usize; NR_AREAS];
        let mut owned = 0;
        let mut idx = 0;
        while idx < self.nr_frames {
            let pfn = Pfn::new(self.base + idx);
            let tag = self.meta.tag(idx);
            let order = match tag {
                FrameTag::Reserved => {
                    idx += 1;
                    continue;
                }
                FrameTag::Tail => return Err(Invariant::BadTail { pfn, tag }),
                FrameTag::Free(order) | FrameTag::Allocated(order) => order,
            };
            let pages = order.pages();
            if order > self.max_order
                || !pfn.is_aligned_to_order(order.as_u32())
                || pages > self.nr_frames - idx
            {
                return Err(Invariant::BadBlock { pfn, tag });
            }
            if let Some(tail) = (idx + 1..idx + pages).find(|&t| self.meta.tag(t) != FrameTag::Tail)
            {
                return Err(Invariant::BadTail {
                    pfn: Pfn::new(self.base + tail),
                    tag: self.meta.tag(tail),
                });
            }
            if let FrameTag::Free(_) = tag {
                free_heads[order.as_usize()] += 1;
                self.check_merged(idx, order)?;
            }
            owned += pages;
            idx += pages;
        }
        for (order, &heads) in free_heads.iter().enumerate() {
            let nr_free = self.free_area.area[order].nr_free;
            if heads != nr_free {
                return Err(mismatch("free blocks tagged", order, nr_free, heads));
            }
        }
        if owned != self.managed_pages {
            return Err(mismatch("managed_pages", 0, self.managed_pages, owned));
        }
        Ok(())
    }

    /// A free block below the maximum order must not have a free buddy of
    /// its order inside the range.
    fn check_merged(&self, idx: usize, order: Order) -> Result<(), Invariant> {
        if order >= self.max_order {
            return Ok(());
        }
        let pfn = self.base + idx;
        let buddy = (pfn ^ order.pages()).wrapping_sub(self.base);
        if buddy < self.nr_frames && self.meta.tag(buddy) == FrameTag::Free(order) {
            return Err(Invariant::Unmerged {
                pfn: Pfn::new(pfn.min(self.base + buddy)),
                order,
            });
        }
        Ok(())
    }
}

fn mismatch(counter: &'static str, order: usize, recorded: usize, counted: usize) -> Invariant {
    Invariant::CountMismatch {
        counter,
        order: ORDERS[order],
        recorded,
        counted,
    }
}
