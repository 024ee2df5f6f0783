//! Whole-range operations: the boot release of reserved frames (Linux
//! `memblock_free_all`), and allocating or freeing an exact frame range
//! (`alloc_contig_range` / `free_contig_range`).
//!
//! A range is cut into its canonical blocks: from the low end, each block is
//! the largest one that is aligned (on absolute pfns), no larger than the
//! maximum order, and ends inside the range. Every operation here validates
//! the whole range before it changes anything.

use crate::buddy::Buddy;
use crate::frame::{FrameMeta, FrameTag};
use crate::free_area::ORDERS;
use kmm_api::{Error, Pfn};

impl<M: FrameMeta> Buddy<M> {
    /// Boot release: every frame of `[start, end)`, all `Reserved`, becomes
    /// free, merged into the largest aligned blocks (including with free
    /// blocks released earlier). Returns the pages released. O(end - start).
    ///
    /// Errors, with nothing changed: [`Error::PfnOutOfRange`] if the range
    /// is reversed or leaves `[base, end)`; [`Error::DoubleFree`] naming the
    /// first frame already released.
    pub fn release_range(&mut self, start: Pfn, end: Pfn) -> Result<usize, Error> {
        let (first, last) = self.range(start, end)?;
        if let Some(idx) = (first..last).find(|&idx| self.meta.tag(idx) != FrameTag::Reserved) {
            return Err(Error::DoubleFree {
                pfn: Pfn::new(self.base + idx),
            });
        }
        let mut idx = first;
        while idx < last {
            let order = self.canonical_order(idx, last);
            for tail in idx + 1..idx + (1 << order) {
                self.meta.set_tag(tail, FrameTag::Tail);
            }
            self.free_block(idx, order);
            idx += 1 << order;
        }
        self.managed_pages += last - first;
        Ok(last - first)
    }

    /// Allocates exactly the frames `[start, end)`, all of which must be
    /// free. The range is recorded as its canonical blocks, each head
    /// `Allocated(order)`, so [`Buddy::free_range`] undoes it and
    /// [`Buddy::allocated_order`] reports each block.
    /// O(blocks × max_order).
    ///
    /// Errors, with nothing changed: [`Error::PfnOutOfRange`] if the range
    /// is reversed or leaves `[base, end)`; [`Error::Busy`] naming the first
    /// frame that is not free.
    pub fn alloc_range(&mut self, start: Pfn, end: Pfn) -> Result<(), Error> {
        let (first, last) = self.range(start, end)?;
        let mut idx = first;
        while idx < last {
            let order = self.canonical_order(idx, last);
            // A block whose frames are all free lies inside one free block
            // (free buddies are always merged), so only its head is looked up.
            match self.free_block_containing(idx) {
                Some((_, free_order)) if free_order >= order => idx += 1 << order,
                _ => {
                    let busy = (idx..idx + (1 << order))
                        .find(|&frame| self.free_block_containing(frame).is_none())
                        .unwrap_or(idx);
                    return Err(Error::Busy {
                        pfn: Pfn::new(self.base + busy),
                    });
                }
            }
        }
        let mut idx = first;
        while idx < last {
            let order = self.canonical_order(idx, last);
            if let Some((head, free_order)) = self.free_block_containing(idx) {
                self.carve(head, free_order, idx, order);
            }
            idx += 1 << order;
        }
        Ok(())
    }

    /// Frees `[start, end)`, which must be tiled exactly by allocated blocks
    /// (the canonical blocks of [`Buddy::alloc_range`], pages made by
    /// [`Buddy::split`], or any blocks from [`Buddy::alloc`]). Each block is
    /// merged as by [`Buddy::free`]. O(blocks × max_order).
    ///
    /// Errors, with nothing changed: [`Error::PfnOutOfRange`];
    /// [`Error::DoubleFree`] / [`Error::NotAllocated`] for a frame where a
    /// block should start; [`Error::WrongOrder`] for a block that runs past
    /// `end` (naming the canonical order the range has there).
    pub fn free_range(&mut self, start: Pfn, end: Pfn) -> Result<(), Error> {
        let (first, last) = self.range(start, end)?;
        let mut idx = first;
        while idx < last {
            let pfn = Pfn::new(self.base + idx);
            match self.meta.tag(idx) {
                FrameTag::Allocated(order) if order.pages() <= last - idx => {
                    idx += order.pages();
                }
                FrameTag::Allocated(allocated) => {
                    return Err(Error::WrongOrder {
                        pfn,
                        allocated,
                        freed: ORDERS[self.canonical_order(idx, last)],
                    })
                }
                FrameTag::Free(_) => return Err(Error::DoubleFree { pfn }),
                FrameTag::Tail if self.free_block_containing(idx).is_some() => {
                    return Err(Error::DoubleFree { pfn })
                }
                FrameTag::Tail | FrameTag::Reserved => return Err(Error::NotAllocated { pfn }),
            }
        }
        let mut idx = first;
        while idx < last {
            let pages = match self.meta.tag(idx) {
                FrameTag::Allocated(order) => order,
                // Validated above: every block head here is allocated.
                _ => break,
            };
            self.free_block(idx, pages.as_usize());
            idx += pages.pages();
        }
        Ok(())
    }

    /// `[start, end)` as indices, or [`Error::PfnOutOfRange`] naming the
    /// offending end.
    fn range(&self, start: Pfn, end: Pfn) -> Result<(usize, usize), Error> {
        let first = match start.as_usize().checked_sub(self.base) {
            Some(first) if first <= self.nr_frames => first,
            _ => return Err(Error::PfnOutOfRange { pfn: start }),
        };
        match end.as_usize().checked_sub(self.base) {
            Some(last) if last >= first && last <= self.nr_frames => Ok((first, last)),
            _ => Err(Error::PfnOutOfRange { pfn: end }),
        }
    }

    /// The order of the canonical block at `idx` in a range ending at
    /// `last`: limited by the alignment of the absolute pfn, by the frames
    /// left, and by the maximum order.
    fn canonical_order(&self, idx: usize, last: usize) -> usize {
        let align = (self.base + idx).trailing_zeros() as usize;
        let fits = (usize::BITS - 1 - (last - idx).leading_zeros()) as usize;
        align.min(fits).min(self.max_order.as_usize())
    }

    /// Takes the block of `order` at `idx` out of the free block of
    /// `free_order` at `head` that contains it: the free block is unlinked,
    /// and at each halving the half without `idx` goes back on its list.
    fn carve(&mut self, head: usize, free_order: usize, idx: usize, order: usize) {
        self.free_area.remove(&mut self.meta, head, free_order);
        self.meta.set_tag(head, FrameTag::Tail);
        let mut block = head;
        let mut block_order = free_order;
        while block_order > order {
            block_order -= 1;
            let upper = block + (1 << block_order);
            if idx >= upper {
                self.free_area.push(&mut self.meta, block, block_order);
                block = upper;
            } else {
                self.free_area.push(&mut self.meta, upper, block_order);
            }
        }
        self.meta.set_tag(idx, FrameTag::Allocated(ORDERS[order]));
    }
}
