//! Host test doubles (feature `testing`): an [`ObjectSource`] over one
//! fixed buffer that can be told to fail, and a [`KernelPageTable`] that
//! only records TLB flushes. Shared by the tests, benches and fuzz target.

use core::ptr::NonNull;
use kmm_api::{
    Error, GfpFlags, KernelPageTable, ObjectSource, Order, PageProt, Pfn, TlbFlush, VirtAddr,
};
use std::sync::Mutex;
use std::vec::Vec;

/// An object source carving fixed-size objects out of one buffer
/// allocated up front (pointers keep the buffer's provenance, for miri).
pub struct BufferSource {
    state: Mutex<BufferState>,
    object_size: usize,
    objects: usize,
}

struct BufferState {
    /// The buffer as `u64`s, so every object is 8-byte aligned.
    base: NonNull<u64>,
    /// Objects not handed out, as indices.
    free: Vec<usize>,
    /// Which objects are handed out.
    live: Vec<bool>,
    /// Successful allocations left before every further one fails.
    fail_after: Option<usize>,
}

// SAFETY: the buffer is owned by the source and every access to the
// bookkeeping goes through the mutex.
unsafe impl Send for BufferState {}

impl BufferSource {
    /// `objects` objects of `object_size` bytes (rounded up to 8).
    pub fn new(object_size: usize, objects: usize) -> Self {
        let words = object_size.div_ceil(8);
        let buffer = std::vec![0u64; words * objects].into_boxed_slice();
        let base = NonNull::from(std::boxed::Box::leak(buffer)).cast::<u64>();
        BufferSource {
            state: Mutex::new(BufferState {
                base,
                free: (0..objects).rev().collect(),
                live: std::vec![false; objects],
                fail_after: None,
            }),
            object_size: words * 8,
            objects,
        }
    }

    /// Page-sized objects, as a slab cache of 4 KiB objects gives.
    pub fn pages(objects: usize) -> Self {
        Self::new(kmm_api::PAGE_SIZE, objects)
    }

    /// Lets `successes` more allocations succeed, then fails every one
    /// (`None`: never fail).
    pub fn fail_after(&self, successes: Option<usize>) {
        self.lock().fail_after = successes;
    }

    /// Objects handed out now.
    pub fn in_use(&self) -> usize {
        let state = self.lock();
        self.objects - state.free.len()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BufferState> {
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

impl Drop for BufferSource {
    fn drop(&mut self) {
        let state = self.lock();
        let words = self.object_size / 8 * self.objects;
        let slice = core::ptr::slice_from_raw_parts_mut(state.base.as_ptr(), words);
        // SAFETY: `base` came from `Box::leak` of exactly this slice in
        // `new`, and the source is going away: nobody uses it any more.
        drop(unsafe { std::boxed::Box::from_raw(slice) });
    }
}

// SAFETY: each index is on the free list or marked live, never both, so an
// object is handed to one caller at a time; objects are disjoint
// `object_size`-byte pieces of the buffer, 8-byte aligned, and the source
// never touches their contents.
unsafe impl ObjectSource for BufferSource {
    fn object_size(&self) -> usize {
        self.object_size
    }

    fn object_align(&self) -> usize {
        8
    }

    fn alloc_object(&self, _gfp: GfpFlags) -> Result<NonNull<u8>, Error> {
        let mut state = self.lock();
        match state.fail_after {
            Some(0) => return Err(Error::NoMemory { order: Order::ZERO }),
            Some(n) => state.fail_after = Some(n - 1),
            None => {}
        }
        let index = state
            .free
            .pop()
            .ok_or(Error::NoMemory { order: Order::ZERO })?;
        state.live[index] = true;
        // SAFETY: `index < objects`, so the object lies inside the buffer.
        let object = unsafe { state.base.as_ptr().add(index * self.object_size / 8) };
        NonNull::new(object.cast::<u8>()).ok_or(Error::NoMemory { order: Order::ZERO })
    }

    unsafe fn free_object(&self, obj: NonNull<u8>) -> Result<(), Error> {
        let mut state = self.lock();
        let offset = (obj.as_ptr() as usize).wrapping_sub(state.base.as_ptr() as usize);
        let index = offset / self.object_size;
        let foreign = Error::BadVirtAddr {
            addr: VirtAddr::new(obj.as_ptr() as usize),
        };
        if offset % self.object_size != 0 || index >= self.objects || !state.live[index] {
            return Err(foreign);
        }
        state.live[index] = false;
        state.free.push(index);
        Ok(())
    }
}

/// A page table that maps nothing and records every TLB flush asked of it.
#[derive(Default)]
pub struct RecordingTlb {
    flushes: Mutex<Vec<TlbFlush>>,
}

impl RecordingTlb {
    /// The flushes so far, in order.
    pub fn flushes(&self) -> Vec<TlbFlush> {
        self.flushes
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone()
    }

    /// How many flushes so far.
    pub fn count(&self) -> usize {
        self.flushes().len()
    }
}

// SAFETY: `map` never succeeds and `translate` reports nothing mapped,
// which is exactly what this table holds.
unsafe impl KernelPageTable for RecordingTlb {
    unsafe fn map(&self, addr: VirtAddr, _pfn: Pfn, _prot: PageProt) -> Result<(), Error> {
        Err(Error::BadVirtAddr { addr })
    }

    unsafe fn unmap(&self, addr: VirtAddr) -> Result<(Pfn, TlbFlush), Error> {
        Err(Error::NotMapped { addr })
    }

    fn translate(&self, _addr: VirtAddr) -> Option<(Pfn, PageProt)> {
        None
    }

    fn flush_tlb_range(&self, start: VirtAddr, end: VirtAddr) {
        self.flushes
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .push(TlbFlush::new(start, end));
    }
}
