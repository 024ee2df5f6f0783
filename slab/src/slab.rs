//! One slab (Linux `struct slab`): a block of `2^order` pages cut into
//! objects, with a header that records its free list, its place on the
//! node's lists, and one state byte per object.
//!
//! The header lives at the start of the slab (on-slab), or for large objects
//! in a small kmalloc object (off-slab); every frame of the slab carries the
//! header's address in its owner word, so `kfree(p)` reaches it in O(1).
//!
//! Object states (one byte each, the always-on double-free check):
//!
//! | state | meaning | who changes it |
//! |---|---|---|
//! | `Free` | on this slab's free list, or fresh (below) | node lock holder |
//! | `Cached` | in a per-CPU array, free to the user | that CPU, or the node lock holder draining it |
//! | `Allocated` | the user's | alloc (to), free (from) |
//! | `Quarantined` | found corrupted, never reused | debug checks |
//! | `Internal` | an off-slab header, the allocator's own | grow (to), discard (from) |
//!
//! The one transition no lock arbitrates is a checked free, `Allocated` →
//! `Cached`: two CPUs may free one object at once, each about to push it
//! on its own array. It is a compare-and-swap ([`SlabHeader::try_free`]):
//! one wins, the other is refused as a double free, and the object reaches
//! exactly one array. Every other change is a plain store by the state's
//! current owner (the table above).
//!
//! The free list, counters and list links change only under the owning
//! cache's node lock; the atomics exist so shared references are sound
//! (and, under `--cfg loom`, so the model sees every access), and are used
//! as plain loads and stores. Must never be handed an object of another
//! slab.
//!
//! Every header carries a magic, its address XOR its allocator's cookie,
//! checked by `kfree` before it trusts anything else in the header.

use crate::{cache::KmemCache, raw};
use core::mem::size_of;
use core::ptr;
use kmm_api::sync::{AtomicPtr, AtomicU8, AtomicUsize, Ordering::Relaxed};

/// State byte of an object (see the module table).
#[repr(u8)]
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) enum ObjState {
    /// On the slab's free list.
    Free = 0,
    /// In a per-CPU array.
    Cached = 1,
    /// Handed to a user.
    Allocated = 2,
    /// Corrupted; never handed out again.
    Quarantined = 3,
    /// Allocated by the slab layer for itself (an off-slab header): a
    /// caller's `kfree` of it is refused.
    Internal = 4,
}

impl ObjState {
    fn from_byte(b: u8) -> Self {
        match b {
            0 => ObjState::Free,
            1 => ObjState::Cached,
            2 => ObjState::Allocated,
            4 => ObjState::Internal,
            _ => ObjState::Quarantined,
        }
    }
}

/// Which node list a slab is on.
#[repr(u8)]
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) enum SlabList {
    /// Some objects free, some not.
    Partial = 0,
    /// Every object on the free list.
    Empty = 1,
    /// No object on the free list (not linked; counted only).
    Full = 2,
}

/// The header of one slab. `objects` state bytes follow it in memory.
#[repr(C)]
pub(crate) struct SlabHeader {
    /// This header's address XOR its allocator's cookie.
    pub magic: usize,
    /// First byte of the slab's pages.
    pub base: *mut u8,
    /// First object.
    pub s_mem: *mut u8,
    /// Objects in the slab.
    pub objects: usize,
    /// The owning cache's descriptor (saves `kfree` a table lookup).
    pub owner: *const KmemCache,
    /// The state bytes right after the fixed header (kept as a pointer so
    /// they are reached with the provenance of the whole header block).
    states: *const AtomicU8,
    /// First object on the free list (a plain pointer; links inside objects
    /// are encoded).
    freelist: AtomicPtr<u8>,
    /// Objects `fresh..objects` have never been handed out: `Free`, on no
    /// list. Only grows.
    fresh: AtomicUsize,
    /// Free objects: those on the free list plus the fresh ones.
    free: AtomicUsize,
    /// The node list this slab is on.
    list: AtomicU8,
    /// Neighbours on that list.
    pub prev: AtomicPtr<SlabHeader>,
    /// Neighbours on that list.
    pub next: AtomicPtr<SlabHeader>,
}

/// Bytes of the fixed part of a slab header (the state bytes follow).
pub(crate) const HEADER_SIZE: usize = size_of::<SlabHeader>().next_multiple_of(size_of::<usize>());

impl SlabHeader {
    /// Writes a header for a slab whose objects start at `s_mem`, with
    /// every object `Free` and fresh, and an empty free list.
    ///
    /// # Safety
    /// `at` must be valid for writes of `HEADER_SIZE + objects` bytes,
    /// aligned for a `SlabHeader`, and not shared until this returns.
    pub unsafe fn init<'a>(
        at: *mut SlabHeader,
        magic: usize,
        base: *mut u8,
        s_mem: *mut u8,
        objects: usize,
        owner: &KmemCache,
    ) -> &'a SlabHeader {
        #[cfg(not(loom))]
        let states = at.cast::<u8>().wrapping_add(HEADER_SIZE).cast::<AtomicU8>();
        // Loom's atomics are not bytes: the model keeps the state bytes in
        // a table of its own, so it sees every access to them.
        #[cfg(loom)]
        let states = loom_states::alloc(objects);
        let header = SlabHeader {
            magic,
            base,
            s_mem,
            objects,
            owner,
            states: states.cast_const(),
            freelist: AtomicPtr::new(ptr::null_mut()),
            fresh: AtomicUsize::new(0),
            free: AtomicUsize::new(objects),
            list: AtomicU8::new(SlabList::Full as u8),
            prev: AtomicPtr::new(ptr::null_mut()),
            next: AtomicPtr::new(ptr::null_mut()),
        };
        // SAFETY: `at` is valid for the header and its state bytes (caller).
        unsafe {
            raw::write(at, header);
            #[cfg(not(loom))]
            raw::fill(
                at.cast::<u8>().add(HEADER_SIZE),
                ObjState::Free as u8,
                objects,
            );
            raw::as_ref(at)
        }
    }

    /// Gives back what `init` took besides the header's own memory (the
    /// loom model's state table); called once, when the slab is discarded.
    pub fn release(&self) {
        #[cfg(loom)]
        // SAFETY: `states` came from `loom_states::alloc(objects)`, and the
        // slab is being discarded: nothing reads its states again.
        unsafe {
            loom_states::free(self.states, self.objects)
        };
    }

    /// The header at `at`, as found through a frame's owner word.
    ///
    /// # Safety
    /// `at` must be the address of a header written by [`SlabHeader::init`]
    /// whose slab is still live for `'a`.
    #[inline]
    pub unsafe fn from_ptr<'a>(at: *const SlabHeader) -> &'a SlabHeader {
        // SAFETY: guaranteed by the caller.
        unsafe { raw::as_ref(at) }
    }

    /// One state byte per object.
    #[inline]
    pub fn states(&self) -> &[AtomicU8] {
        // SAFETY: `init` wrote `objects` state bytes at `states`, and they
        // live as long as the header.
        unsafe { raw::as_slice(self.states, self.objects) }
    }

    /// The index of the object whose state byte is at `state`.
    #[inline]
    pub fn index_of_state(&self, state: *const AtomicU8) -> usize {
        (state as usize - self.states as usize) / size_of::<AtomicU8>()
    }

    /// The checked free's transition, `Allocated` → `Cached`, as one
    /// compare-and-swap: `false` (nothing changed) if the object was not
    /// allocated, so of two racing frees exactly one wins.
    #[inline(always)]
    pub fn try_free(state: &AtomicU8) -> bool {
        state
            .compare_exchange(
                ObjState::Allocated as u8,
                ObjState::Cached as u8,
                Relaxed,
                Relaxed,
            )
            .is_ok()
    }

    /// The state of object `index`.
    #[inline]
    pub fn state(&self, index: usize) -> ObjState {
        ObjState::from_byte(self.states()[index].load(Relaxed))
    }

    /// Sets the state of object `index`.
    #[inline]
    pub fn set_state(&self, index: usize, state: ObjState) {
        self.states()[index].store(state as u8, Relaxed);
    }

    /// The node list the slab is on.
    pub fn list(&self) -> SlabList {
        match self.list.load(Relaxed) {
            0 => SlabList::Partial,
            1 => SlabList::Empty,
            _ => SlabList::Full,
        }
    }

    /// Records the node list the slab is on (node lock held).
    pub fn set_list(&self, list: SlabList) {
        self.list.store(list as u8, Relaxed);
    }

    /// Free objects: on the free list or fresh.
    pub fn free_count(&self) -> usize {
        self.free.load(Relaxed)
    }

    /// The first fresh object: every object below it has been handed out
    /// at least once, every one from it up never has.
    pub fn fresh(&self) -> usize {
        self.fresh.load(Relaxed)
    }

    /// Takes the first fresh object, if any (node lock held).
    pub fn take_fresh(&self) -> Option<usize> {
        let index = self.fresh();
        (index < self.objects).then(|| {
            self.fresh.store(index + 1, Relaxed);
            self.free.store(self.free_count() - 1, Relaxed);
            index
        })
    }

    /// The raw head of the free list.
    pub fn freelist_head(&self) -> *mut u8 {
        self.freelist.load(Relaxed)
    }

    /// Replaces the free list head and the free count (node lock held).
    pub fn set_freelist(&self, head: *mut u8, free: usize) {
        self.freelist.store(head, Relaxed);
        self.free.store(free, Relaxed);
    }

    /// Object `index`'s first byte.
    #[inline]
    pub fn object(&self, index: usize, stride: usize) -> *mut u8 {
        self.s_mem.wrapping_add(index * stride)
    }
}

/// The state bytes of the loom build: loom atomics on the host heap, one
/// table per slab (see `SlabHeader::init`).
#[cfg(loom)]
mod loom_states {
    extern crate std;
    use super::{AtomicU8, ObjState};
    use std::boxed::Box;

    pub(super) fn alloc(objects: usize) -> *mut AtomicU8 {
        let table: Box<[AtomicU8]> = (0..objects)
            .map(|_| AtomicU8::new(ObjState::Free as u8))
            .collect();
        Box::into_raw(table).cast()
    }

    /// # Safety
    /// `states` came from `alloc(objects)` and is not used again.
    pub(super) unsafe fn free(states: *const AtomicU8, objects: usize) {
        let table = core::ptr::slice_from_raw_parts_mut(states.cast_mut(), objects);
        // SAFETY: the caller passes back what `alloc` leaked, once.
        drop(unsafe { Box::from_raw(table) });
    }
}
