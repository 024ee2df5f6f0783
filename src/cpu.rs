//! CPU identity for hosted code (the simulated machine and the hosted
//! preset), keeping [`kmm_api::PreemptControl`]'s promise the way the
//! DESIGN states it: each thread gets its own CPU.
//!
//! A [`HostCpus`] made for `n` CPUs has `n + 1` CPU ids. The first `n`
//! threads that ask it for a CPU each *own* one of ids `0..n` for the
//! value's whole life: the claim is one `fetch_add` on a counter the first
//! time, remembered in the thread's own storage, so afterwards `get_cpu`
//! and `put_cpu` are thread-local reads with no atomic read-modify-write.
//! Every later thread shares the *overflow* CPU, id `n`, pinned by an
//! uncontended holder word (acquire on `get_cpu`, release on `put_cpu`,
//! nesting counted). So [`HostCpus::nr_cpus`] reports `n + 1`, and per-CPU
//! structures sized by it have a slot for the overflow CPU.
//!
//! One process may hold several `HostCpus` (one per machine): each has an
//! id never reused, and a thread remembers its CPU in a small direct-mapped
//! table of [`REMEMBERED`] entries indexed by that id, so any
//! `REMEMBERED` values made one after another never evict each other. A
//! thread that uses two values sharing an entry alternately forgets its
//! claim in one and claims afresh (another owned id while any remain, else
//! the overflow CPU); a forgotten id stays unused, never handed to a
//! second thread. Owned ids are handed out by the counter exactly once,
//! and the overflow CPU's holder is recorded in the `HostCpus`, not the
//! table, so forgetting never loses a pin.
//!
//! Never blocks in `cpu_id`; `get_cpu` spins only for the overflow CPU,
//! while another thread holds it.
//!
//! Lock order: a thread holds at most one CPU of a `HostCpus` at a time
//! (nested `get_cpu` on the same thread return the same id), and kmm's own
//! locks may be taken inside it, never the reverse.

use core::cell::Cell;
use core::sync::atomic::{AtomicU64, AtomicUsize as CoreAtomicUsize};
use kmm_api::sync::{AtomicUsize, Ordering};

/// `HostCpus` values a thread remembers its CPU in at once.
pub const REMEMBERED: usize = 4;

// Plain `core` counters: each is touched once per thread or per value, and
// a loom model cannot hold a static; the claim counter and the overflow
// holder, which threads race on, are the loom-swappable atomics.
static NEXT_THREAD: CoreAtomicUsize = CoreAtomicUsize::new(0);
static NEXT_INSTANCE: AtomicU64 = AtomicU64::new(1);

/// The CPUs a thread has claimed: `(instance id, cpu)` in entry
/// `id % REMEMBERED`, id 0 for none.
struct Claims([Cell<(u64, usize)>; REMEMBERED]);

impl Claims {
    const fn new() -> Self {
        Claims([const { Cell::new((0, 0)) }; REMEMBERED])
    }
}

#[cfg(not(loom))]
std::thread_local! {
    static THREAD_SLOT: usize = NEXT_THREAD.fetch_add(1, Ordering::Relaxed);
    static CLAIMS: Claims = const { Claims::new() };
}

#[cfg(loom)]
loom::thread_local! {
    static THREAD_SLOT: usize = NEXT_THREAD.fetch_add(1, Ordering::Relaxed);
    static CLAIMS: Claims = Claims::new();
}

/// The calling thread's slot: 0 for the first thread that asks, 1 for the
/// next, and so on, for the thread's lifetime.
pub fn thread_slot() -> usize {
    THREAD_SLOT.with(|slot| *slot)
}

/// `n` CPUs owned by the first `n` threads that use them, plus one
/// overflow CPU shared by any further thread; see the module documentation.
#[derive(Debug)]
pub struct HostCpus {
    /// Unique in the process, never 0.
    id: u64,
    /// `n`: ids `0..n` are owned, id `n` is the overflow CPU.
    owned: usize,
    /// Claims handed out so far; claim `k < n` is CPU `k`.
    claimed: AtomicUsize,
    /// The overflow CPU's holder: 0 when free, else `thread_slot() + 1`.
    holder: AtomicUsize,
    /// Nested `get_cpu` calls of the holder beyond the first; read and
    /// written only by the holder.
    depth: AtomicUsize,
}

impl HostCpus {
    /// `nr_owned` CPUs for owning threads (at least one) plus the overflow
    /// CPU.
    pub fn new(nr_owned: usize) -> Self {
        HostCpus {
            id: NEXT_INSTANCE.fetch_add(1, Ordering::Relaxed),
            owned: nr_owned.max(1),
            claimed: AtomicUsize::new(0),
            holder: AtomicUsize::new(0),
            depth: AtomicUsize::new(0),
        }
    }

    /// Number of CPU ids: the owned ones plus the overflow CPU.
    pub fn nr_cpus(&self) -> usize {
        self.owned + 1
    }

    /// The id of the CPU threads share once every owned CPU is taken.
    pub fn overflow_cpu(&self) -> usize {
        self.owned
    }

    /// The calling thread's CPU: the one it owns, or the overflow CPU.
    /// Claims one on the thread's first call.
    #[inline]
    pub fn cpu_id(&self) -> usize {
        CLAIMS.with(|claims| {
            let entry = &claims.0[self.id as usize % REMEMBERED];
            match entry.get() {
                (id, cpu) if id == self.id => cpu,
                _ => {
                    let cpu = self.claim();
                    entry.set((self.id, cpu));
                    cpu
                }
            }
        })
    }

    /// A new claim: the next owned CPU while any remain, else the overflow.
    #[cold]
    fn claim(&self) -> usize {
        // Once every owned CPU is taken, later threads skip the RMW.
        if self.claimed.load(Ordering::Relaxed) < self.owned {
            self.claimed.fetch_add(1, Ordering::Relaxed).min(self.owned)
        } else {
            self.owned
        }
    }

    /// Pins the caller to its CPU: an owned CPU at once; the overflow CPU
    /// once no other thread holds it (spinning meanwhile). Nested calls on
    /// one thread return the same id.
    #[inline]
    pub fn get_cpu(&self) -> usize {
        let cpu = self.cpu_id();
        if cpu == self.owned {
            self.hold_overflow();
        }
        cpu
    }

    /// Ends the section begun by the [`HostCpus::get_cpu`] that returned
    /// `cpu` on this thread.
    #[inline]
    pub fn put_cpu(&self, cpu: usize) {
        if cpu == self.owned {
            self.release_overflow();
        }
    }

    #[cold]
    fn hold_overflow(&self) {
        let me = thread_slot() + 1;
        // Only this thread ever stores `me`, so seeing it means we hold it.
        if self.holder.load(Ordering::Relaxed) == me {
            let depth = self.depth.load(Ordering::Relaxed);
            self.depth.store(depth + 1, Ordering::Relaxed);
            return;
        }
        while self
            .holder
            .compare_exchange_weak(0, me, Ordering::Acquire, Ordering::Relaxed)
            .is_err()
        {
            #[cfg(loom)]
            loom::thread::yield_now();
            #[cfg(not(loom))]
            core::hint::spin_loop();
        }
    }

    #[cold]
    fn release_overflow(&self) {
        if self.holder.load(Ordering::Relaxed) != thread_slot() + 1 {
            return; // not ours: an unpaired put_cpu changes nothing
        }
        match self.depth.load(Ordering::Relaxed) {
            0 => self.holder.store(0, Ordering::Release),
            depth => self.depth.store(depth - 1, Ordering::Relaxed),
        }
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;
    use std::sync::Arc;

    fn on_new_thread<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
        std::thread::spawn(f).join().unwrap()
    }

    #[test]
    fn the_first_threads_own_distinct_cpus_and_later_ones_share_the_overflow_cpu() {
        let cpus = Arc::new(HostCpus::new(2));
        assert_eq!(cpus.nr_cpus(), 3);
        let ids: Vec<usize> = (0..4)
            .map(|_| {
                let cpus = cpus.clone();
                on_new_thread(move || {
                    let cpu = cpus.get_cpu();
                    cpus.put_cpu(cpu);
                    cpu
                })
            })
            .collect();
        assert_eq!(ids, [0, 1, 2, 2]);
    }

    #[test]
    fn a_thread_keeps_its_cpu_and_nested_pins_return_it() {
        let cpus = HostCpus::new(1);
        let mine = cpus.get_cpu();
        assert_eq!(cpus.get_cpu(), mine);
        cpus.put_cpu(mine);
        cpus.put_cpu(mine);
        assert_eq!(cpus.cpu_id(), mine);
    }

    #[test]
    fn the_overflow_cpu_is_held_by_one_thread_at_a_time_even_nested() {
        let cpus = Arc::new(HostCpus::new(1));
        let owner = cpus.cpu_id();
        let c = cpus.clone();
        let overflow = on_new_thread(move || {
            let cpu = c.get_cpu();
            assert_eq!(c.get_cpu(), cpu, "nested");
            c.put_cpu(cpu);
            assert_ne!(c.holder.load(Ordering::Relaxed), 0, "still held once");
            c.put_cpu(cpu);
            cpu
        });
        assert_eq!((owner, overflow), (0, cpus.overflow_cpu()));
        assert_eq!(cpus.holder.load(Ordering::Relaxed), 0, "released");
    }

    #[test]
    fn a_thread_remembers_its_cpu_in_several_machines_and_never_reuses_a_forgotten_one() {
        // Among REMEMBERED + 1 values two share a table entry.
        let all: Vec<HostCpus> = (0..=REMEMBERED).map(|_| HostCpus::new(2)).collect();
        let entry = |c: &HostCpus| c.id as usize % REMEMBERED;
        let (a, b) = (0..all.len())
            .flat_map(|i| (i + 1..all.len()).map(move |j| (i, j)))
            .find(|&(i, j)| entry(&all[i]) == entry(&all[j]))
            .unwrap();
        let (a, b) = (&all[a], &all[b]);
        let seen: Vec<usize> = (0..3).flat_map(|_| [a.cpu_id(), b.cpu_id()]).collect();
        assert_eq!(seen, [0, 0, 1, 1, 2, 2], "each forgotten claim moves on");
        assert!(all.iter().all(|c| c.cpu_id() < c.nr_cpus()));
    }

    #[test]
    fn threads_get_distinct_stable_slots() {
        let mine = thread_slot();
        assert_eq!(thread_slot(), mine);
        let other = on_new_thread(thread_slot);
        assert_ne!(other, mine);
    }
}
