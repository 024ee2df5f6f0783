//! Wait queues keyed by a word's address, behind the hosted platforms'
//! [`kmm_api::Platform::wait_on`] / [`kmm_api::Platform::wake_on`] (the
//! hosted preset and the simulated machine): a waiter parks its thread on
//! a condition variable instead of spinning, as a kernel sleeps on a wait
//! queue (Linux `wait_event` on `pkmap_map_wait`).
//!
//! # What it owns
//!
//! A fixed table of [`BUCKETS`] buckets, each a mutex and a condition
//! variable; a word's address picks its bucket (words sharing a bucket
//! only cost each other spurious wake-ups, which callers absorb by
//! rechecking). No allocation after construction, no singleton: each
//! machine has its own table.
//!
//! # Why no wake-up is lost
//!
//! [`WaitQueues::wait_on`] compares `*word` with `seen` while holding the
//! bucket's mutex and goes to sleep by releasing that mutex atomically in
//! the condition variable's wait; [`WaitQueues::wake_on`] takes the same
//! mutex before it notifies. The waker changed the word before calling
//! `wake_on`, so either the waiter's comparison comes after the change and
//! sees it (no sleep), or it comes before, and then the waiter is asleep
//! by the time `wake_on` gets the mutex, and is woken. Wake-ups of the
//! condition variable without a change of the word (spurious, or for
//! another word of the bucket) send the waiter back to sleep inside
//! `wait_on`, so it returns only once the word differs from `seen`.
//!
//! Lock order: a bucket's mutex is a leaf; it is never held across
//! anything but the comparison and the notify.
//!
//! Must never: sleep on a word that no longer holds `seen`, or spin.

#[cfg(loom)]
use loom::sync::{Condvar, Mutex};
#[cfg(not(loom))]
use std::sync::{Condvar, Mutex};

use kmm_api::sync::{AtomicU32, AtomicUsize, Ordering};
use std::sync::PoisonError;

/// Buckets of a table: a power of two.
pub const BUCKETS: usize = 16;

/// One wait queue: the mutex that orders a waiter's comparison against a
/// waker's notify, and the condition variable the waiter sleeps on.
struct Bucket {
    lock: Mutex<()>,
    cond: Condvar,
}

/// The wait queues of one machine (see the module documentation).
pub struct WaitQueues {
    buckets: [Bucket; BUCKETS],
    /// Times a waiter went to sleep, for tests that check it parked.
    sleeps: AtomicUsize,
}

impl Default for WaitQueues {
    fn default() -> Self {
        Self::new()
    }
}

impl core::fmt::Debug for WaitQueues {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("WaitQueues")
            .field("sleeps", &self.sleeps())
            .finish()
    }
}

impl WaitQueues {
    /// A table with nobody waiting.
    pub fn new() -> Self {
        WaitQueues {
            buckets: core::array::from_fn(|_| Bucket {
                lock: Mutex::new(()),
                cond: Condvar::new(),
            }),
            sleeps: AtomicUsize::new(0),
        }
    }

    /// The bucket of `word` (Fibonacci hashing of its address).
    fn bucket(&self, word: &AtomicU32) -> &Bucket {
        let addr = core::ptr::from_ref(word) as usize as u64;
        let shift = 64 - BUCKETS.trailing_zeros();
        &self.buckets[(addr.wrapping_mul(0x9e37_79b9_7f4a_7c15) >> shift) as usize]
    }

    /// Sleeps while `*word == seen` (see the module documentation for why
    /// a change made after the caller read `seen` is never missed).
    pub fn wait_on(&self, word: &AtomicU32, seen: u32) {
        let bucket = self.bucket(word);
        // A poisoned bucket only means another waiter panicked; the `()`
        // it guards cannot be left inconsistent.
        let mut guard = bucket.lock.lock().unwrap_or_else(PoisonError::into_inner);
        while word.load(Ordering::SeqCst) == seen {
            self.sleeps.fetch_add(1, Ordering::Relaxed);
            guard = bucket
                .cond
                .wait(guard)
                .unwrap_or_else(PoisonError::into_inner);
        }
    }

    /// Wakes every thread sleeping in [`WaitQueues::wait_on`] on `word`
    /// (and any other word of its bucket, which rechecks and sleeps
    /// again). Call after changing `word`.
    pub fn wake_on(&self, word: &AtomicU32) {
        let bucket = self.bucket(word);
        // Taking the mutex orders this wake after any comparison already
        // made under it: that waiter is asleep now and gets the notify.
        let _guard = bucket.lock.lock().unwrap_or_else(PoisonError::into_inner);
        bucket.cond.notify_all();
    }

    /// Times a waiter went to sleep so far (each sleep ends with a wake).
    pub fn sleeps(&self) -> usize {
        self.sleeps.load(Ordering::Relaxed)
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn a_word_that_changed_before_the_wait_returns_at_once() {
        let q = WaitQueues::new();
        let word = AtomicU32::new(1);
        q.wait_on(&word, 0);
        assert_eq!(q.sleeps(), 0, "never slept");
    }

    #[test]
    fn a_waiter_parks_once_and_returns_after_the_change_and_wake() {
        let q = WaitQueues::new();
        let word = AtomicU32::new(0);
        std::thread::scope(|s| {
            let waiter = s.spawn(|| q.wait_on(&word, 0));
            while q.sleeps() == 0 {
                std::thread::yield_now();
            }
            std::thread::sleep(Duration::from_millis(20));
            assert!(
                !waiter.is_finished(),
                "returned while the word was unchanged"
            );
            // A wake without a change sends it back to sleep.
            q.wake_on(&word);
            while q.sleeps() < 2 {
                std::thread::yield_now();
            }
            assert!(!waiter.is_finished());
            word.store(1, Ordering::SeqCst);
            q.wake_on(&word);
            waiter.join().unwrap();
        });
        // Asleep between the wakes, not spinning (a spurious wake of the
        // condition variable would add a sleep or two, never thousands).
        assert!((2..=4).contains(&q.sleeps()), "{} sleeps", q.sleeps());
    }
}
