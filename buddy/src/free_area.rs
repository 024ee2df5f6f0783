//! `free_area[]`: one doubly linked list of free block heads per order, the
//! per-order block counts, the total of free pages, and a bitmap of the
//! orders whose list is not empty (so the smallest fitting order is one
//! `trailing_zeros`, not a scan).
//!
//! This module owns the list links and the counters. It tags a block
//! `Free(order)` when it links it; whoever unlinks a block retags it. It
//! never decides what to split or merge: that is the allocator's.

use crate::frame::{FrameMeta, FrameTag, Links};
use kmm_api::Order;

/// Number of per-order lists: every order up to [`Order::LIMIT`], so any
/// configured maximum order indexes without a check.
pub(crate) const NR_AREAS: usize = Order::LIMIT as usize + 1;

/// One order's free list (Linux `struct free_area`).
#[derive(Clone, Copy, Debug)]
pub(crate) struct FreeArea {
    /// The first block on the list, [`Links::NIL`] when empty.
    pub(crate) head: u32,
    /// Blocks on the list.
    pub(crate) nr_free: usize,
}

/// All the free lists of one buddy, with their summary counters.
///
/// Invariants: bit `o` of `nonempty` is set iff `area[o].head != NIL` iff
/// `area[o].nr_free > 0`; `free_pages == Σ area[o].nr_free << o`.
#[derive(Clone, Debug)]
pub(crate) struct FreeAreas {
    pub(crate) area: [FreeArea; NR_AREAS],
    pub(crate) nonempty: u32,
    pub(crate) free_pages: usize,
}

impl FreeAreas {
    pub(crate) const fn new() -> Self {
        FreeAreas {
            area: [FreeArea {
                head: Links::NIL,
                nr_free: 0,
            }; NR_AREAS],
            nonempty: 0,
            free_pages: 0,
        }
    }

    /// The smallest order `>= order` whose list holds a block.
    #[inline]
    pub(crate) fn lowest_nonempty(&self, order: Order) -> Option<usize> {
        let above = self.nonempty >> order.as_u32();
        if above == 0 {
            None
        } else {
            Some(order.as_usize() + above.trailing_zeros() as usize)
        }
    }

    /// Tags `idx` as the head of a free block of `order` and links it first
    /// on its list (most recently freed first: its descriptor is cache-hot).
    #[inline]
    pub(crate) fn push<M: FrameMeta>(&mut self, meta: &mut M, idx: usize, order: usize) {
        let area = &mut self.area[order];
        let old = area.head;
        if old != Links::NIL {
            let mut links = meta.links(old as usize);
            links.prev = idx as u32;
            meta.set_links(old as usize, links);
        }
        meta.set_links(
            idx,
            Links {
                prev: Links::NIL,
                next: old,
            },
        );
        meta.set_tag(idx, FrameTag::Free(ORDERS[order]));
        area.head = idx as u32;
        area.nr_free += 1;
        self.nonempty |= 1 << order;
        self.free_pages += 1 << order;
    }

    /// Unlinks the first block of `order`. The caller retags it.
    #[inline]
    pub(crate) fn pop<M: FrameMeta>(&mut self, meta: &mut M, order: usize) -> Option<usize> {
        let head = self.area[order].head;
        if head == Links::NIL {
            return None;
        }
        let next = meta.links(head as usize).next;
        if next != Links::NIL {
            let mut links = meta.links(next as usize);
            links.prev = Links::NIL;
            meta.set_links(next as usize, links);
        }
        self.area[order].head = next;
        self.unlinked(order);
        Some(head as usize)
    }

    /// Unlinks block `idx`, known to be on the list of `order`. The caller
    /// retags it.
    #[inline]
    pub(crate) fn remove<M: FrameMeta>(&mut self, meta: &mut M, idx: usize, order: usize) {
        let Links { prev, next } = meta.links(idx);
        if prev == Links::NIL {
            self.area[order].head = next;
        } else {
            let mut links = meta.links(prev as usize);
            links.next = next;
            meta.set_links(prev as usize, links);
        }
        if next != Links::NIL {
            let mut links = meta.links(next as usize);
            links.prev = prev;
            meta.set_links(next as usize, links);
        }
        self.unlinked(order);
    }

    #[inline]
    fn unlinked(&mut self, order: usize) {
        let area = &mut self.area[order];
        area.nr_free -= 1;
        if area.nr_free == 0 {
            self.nonempty &= !(1 << order);
        }
        self.free_pages -= 1 << order;
    }
}

/// Every order a list can hold, indexed by list number, so turning a list
/// index back into an [`Order`] is a table load rather than a fallible
/// conversion.
pub(crate) const ORDERS: [Order; NR_AREAS] = {
    let mut orders = [Order::ZERO; NR_AREAS];
    let mut o = 0;
    while o < NR_AREAS {
        orders[o] = match Order::new(o as u32) {
            Ok(order) => order,
            Err(_) => panic!("NR_AREAS exceeds Order::LIMIT"),
        };
        o += 1;
    }
    orders
};
