//! Per-CPU object arrays (Linux SLAB's `array_cache`, Bonwick's loaded
//! magazine): the fast path of every non-debug cache.
//!
//! Each CPU owns one array per cache, reached only with that CPU [`Pinned`]:
//! between `PreemptControl::get_cpu` and `put_cpu` (the [`CpuGuard`]), or
//! inside `PreemptControl::on_cpu` work for that CPU (Linux `flush_all`
//! draining another CPU). The platform promises both are exclusive, so
//! allocation pops and free pushes with plain loads and stores, no lock
//! and no atomic read-modify-write. When the array is empty, a batch is
//! refilled from the node under its lock; when it is full, the older half
//! is flushed back. An object may be freed on any CPU (a remote free simply
//! lands in that CPU's array).
//!
//! `avail` is an atomic only so that validation and reports may read
//! another CPU's count; it is written only with its CPU pinned. This module
//! must never touch the entries of a CPU it has not pinned.

use crate::slab::SlabHeader;
use kmm_api::percpu::PinnedCell;
pub(crate) use kmm_api::percpu::{CpuGuard, Pinned};
use kmm_api::sync::{AtomicU8, AtomicUsize, Ordering::Relaxed};

/// Entries a per-CPU array can hold; a cache's `limit` is at most this.
pub(crate) const CPU_ARRAY_CAP: usize = 64;

/// An object in a per-CPU array, with its state byte and slab (so neither
/// allocation nor a flush has to find its slab again).
#[derive(Clone, Copy)]
pub(crate) struct Entry {
    /// The object.
    pub obj: *mut u8,
    /// Its state byte in the slab header.
    pub state: *const AtomicU8,
    /// Its slab.
    pub slab: *const SlabHeader,
}

impl Entry {
    const EMPTY: Entry = Entry {
        obj: core::ptr::null_mut(),
        state: core::ptr::null(),
        slab: core::ptr::null(),
    };

    /// The entry of object `index` of `slab`.
    #[inline(always)]
    pub fn new(slab: &SlabHeader, index: usize, obj: *mut u8) -> Self {
        Entry {
            obj,
            state: &slab.states()[index],
            slab,
        }
    }
}

/// The entries of one CPU's array.
pub(crate) struct Entries {
    /// Objects, oldest first.
    pub slots: [Entry; CPU_ARRAY_CAP],
}

/// One CPU's array for one cache.
pub(crate) struct CpuArray {
    avail: AtomicUsize,
    entries: PinnedCell<Entries>,
}

impl CpuArray {
    /// An empty array.
    pub fn new() -> Self {
        Self {
            avail: AtomicUsize::new(0),
            entries: PinnedCell::new(Entries {
                slots: [Entry::EMPTY; CPU_ARRAY_CAP],
            }),
        }
    }

    /// Objects cached (may be stale when read for another CPU).
    pub fn avail(&self) -> usize {
        self.avail.load(Relaxed)
    }

    /// Pops the newest entry (the fast allocation path).
    #[inline(always)]
    pub fn pop(&self, pinned: &Pinned) -> Option<Entry> {
        self.with(pinned, |e, avail| {
            if *avail == 0 {
                return None;
            }
            *avail -= 1;
            Some(e.slots[*avail])
        })
    }

    /// Pushes an entry unless the array holds `limit` (the fast free path);
    /// gives the entry back when full.
    #[inline(always)]
    pub fn push(&self, pinned: &Pinned, entry: Entry, limit: usize) -> Result<(), Entry> {
        self.with(pinned, |e, avail| {
            if *avail >= limit {
                return Err(entry);
            }
            e.slots[*avail] = entry;
            *avail += 1;
            Ok(())
        })
    }

    /// Runs `f` on the entries and the count, with this array's CPU
    /// pinned (the caller picked the array by `pinned.cpu()`).
    #[inline(always)]
    pub fn with<R>(&self, _pinned: &Pinned, f: impl FnOnce(&mut Entries, &mut usize) -> R) -> R {
        let mut avail = self.avail.load(Relaxed);
        // SAFETY: the caller holds `_pinned` for this array's CPU (it
        // picked the array by `pinned.cpu()` of its own platform) and
        // reaches the entries only through this call.
        let r = unsafe { self.entries.with_mut(|e| f(e, &mut avail)) };
        self.avail.store(avail, Relaxed);
        r
    }
}
