//! Per-CPU object arrays (Linux SLAB's `array_cache`, Bonwick's loaded
//! magazine): the fast path of every non-debug cache.
//!
//! Each CPU owns one array per cache, reached only between
//! `PreemptControl::get_cpu` and `put_cpu` (the [`CpuGuard`]), which the
//! platform promises is exclusive: allocation pops and free pushes with
//! plain loads and stores, no lock and no atomic read-modify-write. When
//! the array is empty, a batch is refilled from the node under its lock;
//! when it is full, the older half is flushed back. An object may be freed
//! on any CPU (a remote free simply lands in that CPU's array).
//!
//! `avail` is an atomic only so that validation and reports may read
//! another CPU's count; it is written by its owner alone. This module must
//! never touch another CPU's entries.

use crate::slab::SlabHeader;
use core::marker::PhantomData;
use core::sync::atomic::{AtomicU8, AtomicUsize, Ordering::Relaxed};
use kmm_api::PreemptControl;

#[cfg(loom)]
use loom::cell::UnsafeCell;

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
    entries: Cell<Entries>,
}

impl CpuArray {
    /// An empty array.
    pub fn new() -> Self {
        Self {
            avail: AtomicUsize::new(0),
            entries: Cell::new(Entries {
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
    pub fn pop<P: PreemptControl>(&self, guard: &CpuGuard<'_, P>) -> Option<Entry> {
        self.with(guard, |e, avail| {
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
    pub fn push<P: PreemptControl>(
        &self,
        guard: &CpuGuard<'_, P>,
        entry: Entry,
        limit: usize,
    ) -> Result<(), Entry> {
        self.with(guard, |e, avail| {
            if *avail >= limit {
                return Err(entry);
            }
            e.slots[*avail] = entry;
            *avail += 1;
            Ok(())
        })
    }

    /// Runs `f` on the entries and the count, with the CPU pinned by `guard`.
    #[inline(always)]
    pub fn with<P: PreemptControl, R>(
        &self,
        _guard: &CpuGuard<'_, P>,
        f: impl FnOnce(&mut Entries, &mut usize) -> R,
    ) -> R {
        let mut avail = self.avail.load(Relaxed);
        let r = self.entries.with_mut(|e| f(e, &mut avail));
        self.avail.store(avail, Relaxed);
        r
    }
}

/// This CPU, pinned (Linux `get_cpu()` … `put_cpu()`); per-CPU arrays are
/// reached only through it.
pub(crate) struct CpuGuard<'a, P: PreemptControl> {
    cpu: usize,
    platform: &'a P,
    _not_send: PhantomData<*mut ()>,
}

impl<'a, P: PreemptControl> CpuGuard<'a, P> {
    /// Pins the caller to its CPU.
    #[inline]
    pub fn new(platform: &'a P) -> Self {
        Self {
            cpu: platform.get_cpu(),
            platform,
            _not_send: PhantomData,
        }
    }

    /// The pinned CPU's id.
    #[inline]
    pub fn cpu(&self) -> usize {
        self.cpu
    }
}

impl<P: PreemptControl> Drop for CpuGuard<'_, P> {
    #[inline]
    fn drop(&mut self) {
        self.platform.put_cpu(self.cpu);
    }
}

/// Interior mutability for the entries: loom's checked cell in models,
/// a plain `UnsafeCell` otherwise.
pub(crate) struct Cell<T> {
    #[cfg(loom)]
    inner: UnsafeCell<T>,
    #[cfg(not(loom))]
    inner: core::cell::UnsafeCell<T>,
}

impl<T> Cell<T> {
    fn new(value: T) -> Self {
        Self {
            #[cfg(loom)]
            inner: UnsafeCell::new(value),
            #[cfg(not(loom))]
            inner: core::cell::UnsafeCell::new(value),
        }
    }

    #[inline]
    fn with_mut<R>(&self, f: impl FnOnce(&mut T) -> R) -> R {
        #[cfg(loom)]
        return self.inner.with_mut(|p| {
            // SAFETY: only the CPU pinned by a `CpuGuard` reaches its cell
            // (the `PreemptControl` contract); loom checks that claim.
            f(unsafe { &mut *p })
        });
        #[cfg(not(loom))]
        {
            // SAFETY: only the CPU pinned by a `CpuGuard` reaches its cell,
            // and the platform promises that CPU id is exclusive.
            f(unsafe { &mut *self.inner.get() })
        }
    }
}
