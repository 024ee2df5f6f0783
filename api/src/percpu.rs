//! Per-CPU data reached with its CPU pinned (Linux `get_cpu()` …
//! `put_cpu()` around `this_cpu_ptr`): the proof that a CPU is pinned, the
//! guard that pins the caller's CPU, and the cell one CPU's data lives in.
//!
//! This module owns the rule every per-CPU fast path of kmm relies on: a
//! CPU's cell is reached only by the holder of a [`Pinned`] for that CPU,
//! and the platform's [`PreemptControl`] contract makes that holder the
//! only context running as the CPU. So the data needs no lock and no atomic
//! read-modify-write. It must never make a [`Pinned`] that no `get_cpu` or
//! `on_cpu` stands behind.

use crate::PreemptControl;
use core::marker::PhantomData;

/// Proof that one CPU is held exclusively by the holder of this value. Not
/// `Send`: the hold belongs to the context that took it.
pub struct Pinned {
    cpu: usize,
    _not_send: PhantomData<*mut ()>,
}

impl Pinned {
    /// The proof for `cpu`.
    ///
    /// # Safety
    ///
    /// The caller holds `cpu` exclusively for the value's life: it is
    /// inside `get_cpu`/`put_cpu` for it, or inside `on_cpu` work for it
    /// (the [`PreemptControl`] contract), and makes no second `Pinned` for
    /// it meanwhile.
    #[allow(unsafe_code)]
    #[inline]
    pub unsafe fn new(cpu: usize) -> Self {
        Pinned {
            cpu,
            _not_send: PhantomData,
        }
    }

    /// The pinned CPU's id.
    #[inline]
    pub fn cpu(&self) -> usize {
        self.cpu
    }
}

/// The caller's CPU, pinned until the guard drops (Linux `get_cpu()` …
/// `put_cpu()`).
pub struct CpuGuard<'a, P: PreemptControl + ?Sized> {
    pinned: Pinned,
    platform: &'a P,
}

impl<'a, P: PreemptControl + ?Sized> CpuGuard<'a, P> {
    /// Pins the caller to its CPU.
    #[inline]
    pub fn new(platform: &'a P) -> Self {
        let cpu = platform.get_cpu();
        Self {
            // SAFETY: `get_cpu` hands `cpu` to us alone until the
            // `put_cpu` in `drop` (the `PreemptControl` contract).
            #[allow(unsafe_code)]
            pinned: unsafe { Pinned::new(cpu) },
            platform,
        }
    }
}

impl<P: PreemptControl + ?Sized> core::ops::Deref for CpuGuard<'_, P> {
    type Target = Pinned;
    #[inline]
    fn deref(&self) -> &Pinned {
        &self.pinned
    }
}

impl<P: PreemptControl + ?Sized> Drop for CpuGuard<'_, P> {
    #[inline]
    fn drop(&mut self) {
        self.platform.put_cpu(self.pinned.cpu);
    }
}

/// One CPU's data: reached only by the holder of a [`Pinned`] for that
/// CPU, so without a lock. Under `--cfg loom` the cell is loom's, which
/// checks that no two contexts reach it at once.
pub struct PinnedCell<T> {
    #[cfg(loom)]
    inner: loom::cell::UnsafeCell<T>,
    #[cfg(not(loom))]
    inner: core::cell::UnsafeCell<T>,
}

// SAFETY: the value is reached only through `with_mut`, whose contract
// makes one context at a time its user (the pinned CPU's); moving that
// access between threads is moving the value, hence `T: Send`.
#[allow(unsafe_code)]
unsafe impl<T: Send> Sync for PinnedCell<T> {}

impl<T> PinnedCell<T> {
    /// A cell holding `value`.
    #[cfg(not(loom))]
    pub const fn new(value: T) -> Self {
        Self {
            inner: core::cell::UnsafeCell::new(value),
        }
    }

    /// A cell holding `value`.
    #[cfg(loom)]
    pub fn new(value: T) -> Self {
        Self {
            inner: loom::cell::UnsafeCell::new(value),
        }
    }

    /// Runs `f` on the value.
    ///
    /// # Safety
    ///
    /// The caller holds a [`Pinned`] for the CPU this cell belongs to, on
    /// the platform whose CPU ids index it, and reaches the cell from
    /// nowhere else until `f` returns (no nested `with_mut` of this cell).
    #[allow(unsafe_code)]
    #[inline(always)]
    pub unsafe fn with_mut<R>(&self, f: impl FnOnce(&mut T) -> R) -> R {
        #[cfg(loom)]
        return self.inner.with_mut(|p| {
            // SAFETY: the caller is the pinned CPU's one context (our
            // contract); loom checks that claim.
            f(unsafe { &mut *p })
        });
        #[cfg(not(loom))]
        {
            // SAFETY: the caller is the pinned CPU's one context (our
            // contract), so this is the only reference to the value.
            f(unsafe { &mut *self.inner.get() })
        }
    }
}
