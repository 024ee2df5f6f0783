//! The one lock primitive every kmm layer uses, and the atomics, swapped for
//! loom's under `--cfg loom` so the concurrent structures can be
//! model-checked without changing their code.
//!
//! [`SpinLock`] never sleeps: it is safe to take with interrupts disabled,
//! and must be held only for a bounded, short critical section.

#[cfg(loom)]
pub use loom::sync::atomic::{
    fence, AtomicBool, AtomicPtr, AtomicU32, AtomicU64, AtomicU8, AtomicUsize, Ordering,
};

#[cfg(not(loom))]
pub use core::sync::atomic::{
    fence, AtomicBool, AtomicPtr, AtomicU32, AtomicU64, AtomicU8, AtomicUsize, Ordering,
};

/// A spinning mutual-exclusion lock.
pub struct SpinLock<T> {
    #[cfg(not(loom))]
    inner: spin::mutex::SpinMutex<T>,
    #[cfg(loom)]
    inner: loom::sync::Mutex<T>,
}

/// The guard of a held [`SpinLock`]; the lock is released when it drops.
#[cfg(not(loom))]
pub type SpinLockGuard<'a, T> = spin::mutex::SpinMutexGuard<'a, T>;
/// The guard of a held [`SpinLock`]; the lock is released when it drops.
#[cfg(loom)]
pub type SpinLockGuard<'a, T> = loom::sync::MutexGuard<'a, T>;

impl<T> SpinLock<T> {
    /// A new, unlocked lock holding `value`.
    #[cfg(not(loom))]
    pub const fn new(value: T) -> Self {
        Self {
            inner: spin::mutex::SpinMutex::new(value),
        }
    }

    /// A new, unlocked lock holding `value`.
    #[cfg(loom)]
    pub fn new(value: T) -> Self {
        Self {
            inner: loom::sync::Mutex::new(value),
        }
    }

    /// Spins until the lock is free, then holds it.
    #[inline]
    pub fn lock(&self) -> SpinLockGuard<'_, T> {
        #[cfg(not(loom))]
        return self.inner.lock();
        #[cfg(loom)]
        return self
            .inner
            .lock()
            .expect("a loom model thread panicked holding the lock");
    }

    /// Holds the lock if it is free right now.
    #[inline]
    pub fn try_lock(&self) -> Option<SpinLockGuard<'_, T>> {
        #[cfg(not(loom))]
        return self.inner.try_lock();
        #[cfg(loom)]
        return self.inner.try_lock().ok();
    }

    /// The value, through exclusive access (no locking needed).
    pub fn get_mut(&mut self) -> &mut T {
        #[cfg(not(loom))]
        return self.inner.get_mut();
        #[cfg(loom)]
        return self
            .inner
            .get_mut()
            .expect("a loom model thread panicked holding the lock");
    }
}

impl<T: Default> Default for SpinLock<T> {
    fn default() -> Self {
        Self::new(T::default())
    }
}

impl<T> core::fmt::Debug for SpinLock<T> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str("SpinLock { .. }")
    }
}
