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
    ///
    /// One compare-and-swap first, whose success falls straight through:
    /// the spin loop alone laid a second jump on every uncontended
    /// acquisition (F1 of the page bench: 198 -> 195 instructions per pair).
    #[inline]
    pub fn lock(&self) -> SpinLockGuard<'_, T> {
        #[cfg(not(loom))]
        return match self.inner.try_lock() {
            Some(guard) => guard,
            None => self.inner.lock(),
        };
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

/// Counters kept beside a [`SpinLock`] that mirror its data for readers
/// who take no lock (a slab node's counts, a CPU's page-list length).
pub trait Publish<T> {
    /// Stores the mirrored figures of `locked`; called with the lock held.
    fn publish(&self, locked: &T);
}

/// A held [`SpinLock`] that publishes its data's figures just before the
/// lock is released, so they change only under the lock and relaxed
/// stores suffice.
pub struct PublishGuard<'a, T, P: Publish<T>> {
    guard: SpinLockGuard<'a, T>,
    published: &'a P,
}

impl<'a, T, P: Publish<T>> PublishGuard<'a, T, P> {
    /// Wraps `guard`, whose unlock will publish through `published`.
    #[inline]
    pub fn new(guard: SpinLockGuard<'a, T>, published: &'a P) -> Self {
        Self { guard, published }
    }
}

impl<T, P: Publish<T>> core::ops::Deref for PublishGuard<'_, T, P> {
    type Target = T;
    #[inline]
    fn deref(&self) -> &T {
        &self.guard
    }
}

impl<T, P: Publish<T>> core::ops::DerefMut for PublishGuard<'_, T, P> {
    #[inline]
    fn deref_mut(&mut self) -> &mut T {
        &mut self.guard
    }
}

impl<T, P: Publish<T>> Drop for PublishGuard<'_, T, P> {
    /// Runs before the lock is released (fields drop after `drop`).
    #[inline]
    fn drop(&mut self) {
        self.published.publish(&self.guard);
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
