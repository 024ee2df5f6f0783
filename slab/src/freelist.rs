//! The free list threaded through a slab's free objects, with hardened
//! links (Linux `SLAB_FREELIST_HARDENED`): each link is stored as
//! `next ^ secret ^ swab(slot address)`, so a use-after-free write cannot
//! point the allocator at an address of the attacker's choosing, and a
//! decoded link that is not an object start of the same slab is caught.
//! A slab's fresh objects (see `slab`) are on no list: a link may only name
//! an object below the slab's fresh cursor, or one object could be handed
//! out twice, once through the list and once as fresh.
//!
//! Called only with the owning cache's node lock held; never follows a link
//! without checking it lands on a free object of the same slab.

use crate::{
    geometry::Geometry,
    raw,
    slab::{ObjState, SlabHeader},
};
use core::ptr;

/// The per-cache link codec.
#[derive(Clone, Copy, Debug)]
pub(crate) struct FreePtr {
    /// The cache's random secret.
    pub secret: usize,
    /// Where the link lies in an object slot.
    pub offset: usize,
}

impl FreePtr {
    fn encode(&self, next: *mut u8, slot: *mut u8) -> usize {
        (next as usize) ^ self.secret ^ (slot as usize).swap_bytes()
    }

    /// Pushes a free object onto its slab's free list and marks it `Free`.
    pub fn push(&self, slab: &SlabHeader, geo: &Geometry, index: usize) {
        let obj = slab.object(index, geo.stride);
        let link = self.encode(slab.freelist_head(), obj);
        // SAFETY: `obj` is object `index` of a live slab and is free, so
        // the caller holds its link word exclusively.
        unsafe { raw::write_word(obj.wrapping_add(self.offset), link) };
        slab.set_state(index, ObjState::Free);
        slab.set_freelist(obj, slab.free_count() + 1);
    }

    /// Takes a free object: the first on the free list, or else the first
    /// fresh one. `Err(index)` names the object whose link is corrupt; the
    /// list has then been rebuilt from the state bytes without that object,
    /// which the caller quarantines.
    pub fn pop(&self, slab: &SlabHeader, geo: &Geometry) -> Result<Option<usize>, usize> {
        let head = slab.freelist_head();
        if head.is_null() {
            return Ok(slab.take_fresh());
        }
        let head_index = geo.by_stride.divide(head as usize - slab.s_mem as usize);
        // SAFETY: `head` is a free object of this live slab (checked when
        // it was linked), so its link word is readable.
        let stored = unsafe { raw::read_word(head.wrapping_add(self.offset)) };
        let next_addr = stored ^ self.secret ^ (head as usize).swap_bytes();
        let next = if next_addr == 0 {
            Some(ptr::null_mut())
        } else {
            self.linked_index(slab, geo, next_addr)
                .filter(|&i| i != head_index)
                .map(|i| slab.object(i, geo.stride))
        };
        match next {
            Some(next) => {
                slab.set_freelist(next, slab.free_count() - 1);
                Ok(Some(head_index))
            }
            None => {
                slab.set_state(head_index, ObjState::Quarantined);
                self.rebuild(slab, geo);
                Err(head_index)
            }
        }
    }

    /// The index of the object a decoded link names, if it may lie on the
    /// free list: an object start of this slab, `Free`, and not fresh.
    fn linked_index(&self, slab: &SlabHeader, geo: &Geometry, addr: usize) -> Option<usize> {
        addr.checked_sub(slab.s_mem as usize)
            .and_then(|off| geo.index_of(off).ok())
            .filter(|&i| i < slab.fresh() && slab.state(i) == ObjState::Free)
    }

    /// Relinks every `Free` object of `slab` below its fresh cursor (after
    /// a corrupt link).
    pub fn rebuild(&self, slab: &SlabHeader, geo: &Geometry) {
        slab.set_freelist(ptr::null_mut(), slab.objects - slab.fresh());
        for index in (0..slab.fresh()).rev() {
            if slab.state(index) == ObjState::Free {
                self.push(slab, geo, index);
            }
        }
    }

    /// Checks the whole free list, returning the index of the first object
    /// with a corrupt link.
    pub fn validate(&self, slab: &SlabHeader, geo: &Geometry) -> Result<(), usize> {
        let mut at = slab.freelist_head();
        let mut seen = 0;
        while !at.is_null() && seen <= slab.objects {
            let index = geo.by_stride.divide(at as usize - slab.s_mem as usize);
            // SAFETY: `at` was checked to be a free object of this slab
            // before it was followed (the head is set only by push/pop).
            let stored = unsafe { raw::read_word(at.wrapping_add(self.offset)) };
            let next_addr = stored ^ self.secret ^ (at as usize).swap_bytes();
            if next_addr == 0 {
                return Ok(());
            }
            match self.linked_index(slab, geo, next_addr) {
                Some(i) => at = slab.object(i, geo.stride),
                None => return Err(index),
            }
            seen += 1;
        }
        if seen > slab.objects {
            return Err(0);
        }
        Ok(())
    }
}
