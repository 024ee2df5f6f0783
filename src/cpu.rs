//! CPU identity for hosted code (the simulated machine and the hosted
//! preset): each host thread is given a slot index when it first asks, and
//! runs as CPU `slot % nr_cpus`. Owns one uncontended lock per CPU so that
//! `get_cpu` hands an id to one thread at a time, as disabled preemption
//! does in a kernel. Never blocks in `cpu_id`.
//!
//! Lock order: a thread holds at most one CPU slot (from `get_cpu` to
//! `put_cpu`); kmm's own locks may be taken inside it, never the reverse.

use core::sync::atomic::AtomicUsize;
use kmm_api::sync::{AtomicBool, Ordering};
use std::boxed::Box;

// The slot counter is plain `core` (a loom model cannot hold a static);
// the per-CPU flags are the loom-swappable atomics the model checks.
static NEXT_THREAD: AtomicUsize = AtomicUsize::new(0);

std::thread_local! {
    static THREAD_SLOT: usize = NEXT_THREAD.fetch_add(1, Ordering::Relaxed);
}

/// The calling thread's slot: 0 for the first thread that asks, 1 for the
/// next, and so on, for the thread's lifetime.
pub fn thread_slot() -> usize {
    THREAD_SLOT.with(|slot| *slot)
}

/// `nr_cpus` CPUs shared by any number of host threads.
#[derive(Debug)]
pub struct HostCpus {
    pinned: Box<[AtomicBool]>,
}

impl HostCpus {
    /// `nr_cpus` CPUs (at least one).
    pub fn new(nr_cpus: usize) -> Self {
        HostCpus {
            pinned: (0..nr_cpus.max(1))
                .map(|_| AtomicBool::new(false))
                .collect(),
        }
    }

    /// Number of CPUs.
    pub fn nr_cpus(&self) -> usize {
        self.pinned.len()
    }

    /// The calling thread's CPU: its slot modulo the CPU count.
    pub fn cpu_id(&self) -> usize {
        thread_slot() % self.pinned.len()
    }

    /// Pins the caller to a CPU no other caller holds: its own if free (the
    /// common, uncontended case), else the next free one, spinning while
    /// every CPU is held.
    pub fn get_cpu(&self) -> usize {
        let n = self.pinned.len();
        let home = self.cpu_id();
        loop {
            for i in 0..n {
                let cpu = (home + i) % n;
                if self.pinned[cpu]
                    .compare_exchange(false, true, Ordering::Acquire, Ordering::Relaxed)
                    .is_ok()
                {
                    return cpu;
                }
            }
            #[cfg(loom)]
            loom::thread::yield_now();
            #[cfg(not(loom))]
            core::hint::spin_loop();
        }
    }

    /// Releases the CPU returned by [`HostCpus::get_cpu`].
    pub fn put_cpu(&self, cpu: usize) {
        if let Some(flag) = self.pinned.get(cpu) {
            flag.store(false, Ordering::Release);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pinned_cpu_is_never_handed_to_a_second_caller() {
        let cpus = HostCpus::new(2);
        let a = cpus.get_cpu();
        let b = cpus.get_cpu();
        assert_ne!(a, b);
        cpus.put_cpu(a);
        assert_eq!(cpus.get_cpu(), a);
        assert!(a < 2 && b < 2);
    }

    #[test]
    fn threads_get_distinct_stable_slots() {
        let mine = thread_slot();
        assert_eq!(thread_slot(), mine);
        let other = std::thread::spawn(thread_slot).join().unwrap();
        assert_ne!(other, mine);
    }
}
