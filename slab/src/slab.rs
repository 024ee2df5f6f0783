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
//! | `Free` | on this slab's free list | node lock holder |
//! | `Cached` | in a per-CPU array, free to the user | that CPU, or the node lock holder draining it |
//! | `Allocated` | the user's | alloc (to), free (from) |
//! | `Quarantined` | found corrupted, never reused | debug checks |
//! | `Internal` | an off-slab header, the allocator's own | grow (to), discard (from) |
//!
//! The free list, counters and list links change only under the owning
//! cache's node lock; the atomics exist so shared references are sound, and
//! are used as plain loads and stores (no read-modify-write). Must never be
//! handed an object of another slab.

use crate::{cache::KmemCache, raw};
use core::mem::size_of;
use core::ptr;
use core::sync::atomic::{AtomicPtr, AtomicU8, AtomicUsize, Ordering::Relaxed};

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
    /// First byte of the slab's pages.
    pub base: *mut u8,
    /// First object.
    pub s_mem: *mut u8,
    /// Objects in the slab.
    pub objects: usize,
    /// Index of the owning cache in the cache table.
    pub cache: usize,
    /// The owning cache's descriptor (saves `kfree` a table lookup).
    pub owner: *const KmemCache,
    /// The state bytes right after the fixed header (kept as a pointer so
    /// they are reached with the provenance of the whole header block).
    states: *const AtomicU8,
    /// First object on the free list (a plain pointer; links inside objects
    /// are encoded).
    freelist: AtomicPtr<u8>,
    /// Objects on the free list.
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
    /// every object `Free` and no free list yet (see [`SlabHeader::push`]).
    ///
    /// # Safety
    /// `at` must be valid for writes of `HEADER_SIZE + objects` bytes,
    /// aligned for a `SlabHeader`, and not shared until this returns.
    pub unsafe fn init<'a>(
        at: *mut SlabHeader,
        base: *mut u8,
        s_mem: *mut u8,
        objects: usize,
        owner: &KmemCache,
    ) -> &'a SlabHeader {
        let states = at.cast::<u8>().wrapping_add(HEADER_SIZE);
        let header = SlabHeader {
            base,
            s_mem,
            objects,
            cache: owner.index,
            owner,
            states: states.cast_const().cast(),
            freelist: AtomicPtr::new(ptr::null_mut()),
            free: AtomicUsize::new(0),
            list: AtomicU8::new(SlabList::Full as u8),
            prev: AtomicPtr::new(ptr::null_mut()),
            next: AtomicPtr::new(ptr::null_mut()),
        };
        // SAFETY: `at` is valid for the header and its state bytes (caller).
        unsafe {
            raw::write(at, header);
            raw::fill(
                at.cast::<u8>().add(HEADER_SIZE),
                ObjState::Free as u8,
                objects,
            );
            raw::as_ref(at)
        }
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
        state as usize - self.states as usize
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

    /// Objects on the free list.
    pub fn free_count(&self) -> usize {
        self.free.load(Relaxed)
    }

    /// The raw head of the free list.
    pub fn freelist_head(&self) -> *mut u8 {
        self.freelist.load(Relaxed)
    }

    /// Replaces the free list head and count (node lock held).
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
