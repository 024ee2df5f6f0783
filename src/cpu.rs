//! CPU identity for hosted code (the simulated machine and the hosted
//! preset), keeping [`kmm_api::PreemptControl`]'s promise the way the
//! DESIGN states it: each thread gets its own CPU.
//!
//! A [`HostCpus`] made for `n` CPUs has `n + 1` CPU ids: `n` *owned* ids
//! and one *overflow* id. Each id has a state word:
//!
//! | state | meaning | who moves it |
//! |---|---|---|
//! | `FREE` (0) | nobody has the CPU | a claim or a remote hold takes it |
//! | `owned(t)` | thread `t` owns it until `t` exits or releases it | `t`'s exit or [`HostCpus::release`] frees it |
//! | `held(t)` | thread `t` runs as it for a moment (`on_cpu`, or a pin of the overflow CPU) | `t` frees it |
//!
//! A thread's first request claims the first free owned id (a
//! compare-and-swap from `FREE`), remembered in the thread's own storage,
//! so afterwards `get_cpu` and `put_cpu` are thread-local reads with no
//! atomic read-modify-write: nobody else can take an id while its owner
//! lives. When every owned id is taken, the thread shares the overflow id,
//! pinned by holding its state word for the pinned section (acquire on
//! `get_cpu`, release on `put_cpu`, nesting counted). So
//! [`HostCpus::nr_cpus`] reports `n + 1`, and per-CPU structures sized by
//! it have a slot for the overflow CPU.
//!
//! A thread's exit frees the ids it owns (release store), so a later
//! thread may claim them; so does [`HostCpus::release`] while the thread
//! lives (the hosted preset's booting thread releases CPU 0 once boot is
//! over, so the program's first worker owns it rather than sharing the
//! overflow CPU; should the booting thread allocate again, it claims afresh
//! like any other thread). [`HostCpus::on_cpu`], which holds an id that is
//! free for the length of the work, can drain per-CPU caches a finished
//! thread left behind (Linux `flush_all`). It cannot run work as the CPU of
//! a thread that is still alive (nothing can interrupt that thread), and
//! then says so (`false`).
//!
//! One process may hold several `HostCpus` (one per machine): each has an
//! id never reused, and a thread remembers its CPU in a small direct-mapped
//! table of [`REMEMBERED`] entries indexed by that id, so any
//! `REMEMBERED` values made one after another never evict each other. A
//! thread that uses two values sharing an entry alternately forgets its
//! claim in one and claims afresh (another owned id while any is free,
//! else the overflow CPU); a forgotten id stays owned by the thread until
//! it exits, never handed to a second live thread. The overflow CPU's
//! holder is recorded in its state word, not the table, so forgetting
//! never loses a pin.
//!
//! Never blocks in `cpu_id`; `get_cpu` spins only for the overflow CPU,
//! while another thread holds it, and `on_cpu` only for an id another
//! thread holds for a moment.
//!
//! Lock order: a thread holds at most one CPU of a `HostCpus` at a time
//! (nested `get_cpu` on the same thread return the same id; `on_cpu` is
//! called with none pinned), and kmm's own locks may be taken inside it,
//! never the reverse.

use core::cell::{Cell, RefCell};
use core::sync::atomic::{AtomicU64, AtomicUsize as CoreAtomicUsize};
use kmm_api::sync::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::vec::Vec;

/// `HostCpus` values a thread remembers its CPU in at once.
pub const REMEMBERED: usize = 4;

/// State of an id nobody has.
const FREE: usize = 0;
/// Low bit of a state word: a momentary hold rather than ownership.
const HELD: usize = 1;

// Plain `core` counters: each is touched once per thread or per value, and
// a loom model cannot hold a static; the state words, which threads race
// on, are the loom-swappable atomics.
static NEXT_THREAD: CoreAtomicUsize = CoreAtomicUsize::new(0);
static NEXT_INSTANCE: AtomicU64 = AtomicU64::new(1);

/// The state words of one `HostCpus`, shared with the threads that own
/// ids so their exit can free them after the `HostCpus` is gone.
type States = Arc<[AtomicUsize]>;

/// The CPUs a thread has claimed: `(instance id, cpu)` in entry
/// `id % REMEMBERED`, id 0 for none.
struct Claims([Cell<(u64, usize)>; REMEMBERED]);

impl Claims {
    const fn new() -> Self {
        Claims([const { Cell::new((0, 0)) }; REMEMBERED])
    }
}

/// Every owned id of the thread, freed when the thread exits.
struct Owned(RefCell<Vec<(States, usize)>>);

impl Drop for Owned {
    fn drop(&mut self) {
        // Forget the claims first: a destructor that runs after this one
        // (registered before the thread's first claim) and pins a CPU must
        // not find a freed id remembered and use it beside its next owner;
        // its request claims afresh, and a claim with `OWNED` gone takes
        // the overflow CPU. `CLAIMS` has no destructor, so it outlives us.
        let _ = CLAIMS.try_with(|claims| claims.0.iter().for_each(|entry| entry.set((0, 0))));
        for (states, cpu) in self.0.get_mut().drain(..) {
            // Release: the thread's last per-CPU writes happen before the
            // next holder's acquire of this id.
            states[cpu].store(FREE, Ordering::Release);
        }
    }
}

#[cfg(not(loom))]
std::thread_local! {
    static THREAD_SLOT: usize = NEXT_THREAD.fetch_add(1, Ordering::Relaxed);
    static CLAIMS: Claims = const { Claims::new() };
    static OWNED: Owned = const { Owned(RefCell::new(Vec::new())) };
}

#[cfg(loom)]
loom::thread_local! {
    static THREAD_SLOT: usize = NEXT_THREAD.fetch_add(1, Ordering::Relaxed);
    static CLAIMS: Claims = Claims::new();
    static OWNED: Owned = Owned(RefCell::new(Vec::new()));
}

/// The calling thread's slot: 0 for the first thread that asks, 1 for the
/// next, and so on, for the thread's lifetime.
pub fn thread_slot() -> usize {
    THREAD_SLOT.with(|slot| *slot)
}

/// The state word of the calling thread owning an id.
fn owned_by_me() -> usize {
    (thread_slot() + 1) << 1
}

/// The state word of the calling thread holding an id for a moment.
fn held_by_me() -> usize {
    owned_by_me() | HELD
}

/// `n` CPUs owned by the threads that use them, plus one overflow CPU
/// shared by any further thread; see the module documentation.
#[derive(Debug)]
pub struct HostCpus {
    /// Unique in the process, never 0.
    id: u64,
    /// `n`: ids `0..n` are owned, id `n` is the overflow CPU.
    owned: usize,
    /// One state word per id, the overflow CPU's last.
    states: States,
    /// Nested `get_cpu` calls of the overflow CPU's holder beyond the
    /// first; read and written only by the holder.
    depth: AtomicUsize,
}

impl HostCpus {
    /// `nr_owned` CPUs for owning threads (at least one) plus the overflow
    /// CPU.
    pub fn new(nr_owned: usize) -> Self {
        let owned = nr_owned.max(1);
        HostCpus {
            id: NEXT_INSTANCE.fetch_add(1, Ordering::Relaxed),
            owned,
            states: (0..=owned).map(|_| AtomicUsize::new(FREE)).collect(),
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
        // The closure only reads the entry: a small one lets the
        // thread-local access inline into every pin (a larger one, with
        // the claim, left `LocalKey::with` an out-of-line call).
        match CLAIMS.with(|claims| claims.0[self.id as usize % REMEMBERED].get()) {
            (id, cpu) if id == self.id => cpu,
            _ => self.claim_and_remember(),
        }
    }

    /// A thread's first request (or one whose entry another value took):
    /// claims a CPU and remembers it in the thread's table.
    #[cold]
    #[inline(never)]
    fn claim_and_remember(&self) -> usize {
        let cpu = self.claim();
        CLAIMS.with(|claims| claims.0[self.id as usize % REMEMBERED].set((self.id, cpu)));
        cpu
    }

    /// A new claim: the first free owned id, else the overflow CPU. A
    /// thread whose storage is already being torn down (a destructor that
    /// allocates) could not free an id at exit, so it takes the overflow
    /// CPU. So does a claim made while this thread's list of owned ids is
    /// borrowed: recording a claim may grow the list, and when the manager
    /// is the global allocator that allocation asks for a CPU again before
    /// the first claim is remembered; the nested request is served on the
    /// overflow CPU rather than claiming a second id (or panicking on the
    /// borrow).
    #[cold]
    fn claim(&self) -> usize {
        let me = owned_by_me();
        let claimed = OWNED.try_with(|owned| {
            let mut owned = owned.0.try_borrow_mut().ok()?;
            let cpu = (0..self.owned).find(|&cpu| {
                self.states[cpu]
                    .compare_exchange(FREE, me, Ordering::Acquire, Ordering::Relaxed)
                    .is_ok()
            })?;
            owned.push((self.states.clone(), cpu));
            Some(cpu)
        });
        claimed.ok().flatten().unwrap_or(self.owned)
    }

    /// Frees every id of this value the calling thread owns, as its exit
    /// would, and forgets its claim, so other threads may claim them at
    /// once; the caller's next request claims afresh.
    ///
    /// # Safety
    ///
    /// No section pinned to a CPU of this value is open on the calling
    /// thread (a `get_cpu` without its `put_cpu`): another thread may
    /// claim the id and enter its per-CPU state as soon as it is freed.
    pub unsafe fn release(&self) {
        CLAIMS.with(|claims| {
            let entry = &claims.0[self.id as usize % REMEMBERED];
            if entry.get().0 == self.id {
                entry.set((0, 0));
            }
        });
        // A thread whose storage is being torn down has nothing to free:
        // its exit frees (or has freed) its ids.
        let _ = OWNED.try_with(|owned| {
            owned.0.borrow_mut().retain(|(states, cpu)| {
                if !Arc::ptr_eq(states, &self.states) {
                    return true;
                }
                // Release: as at thread exit, our per-CPU writes happen
                // before the next claimer's acquire.
                states[*cpu].store(FREE, Ordering::Release);
                false
            })
        });
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

    /// Runs `work` as CPU `cpu`, exclusive with every section pinned to it:
    /// at once for the caller's own CPU; for another, once the caller holds
    /// its state word (waiting out a momentary holder). Returns `false`,
    /// without running `work`, for a CPU a live thread owns, or an id out
    /// of range. Called with no CPU of this value pinned.
    pub fn on_cpu(&self, cpu: usize, work: &mut dyn FnMut()) -> bool {
        let Some(word) = self.states.get(cpu) else {
            return false;
        };
        let me = held_by_me();
        loop {
            match word.compare_exchange_weak(FREE, me, Ordering::Acquire, Ordering::Relaxed) {
                Ok(_) => break,
                Err(state) if state == owned_by_me() => {
                    // Our own CPU, and (by the caller's contract) we are not
                    // inside a section pinned to it.
                    work();
                    return true;
                }
                Err(state) if state != FREE && state & HELD == 0 => return false,
                Err(_) => spin(),
            }
        }
        work();
        self.states[cpu].store(FREE, Ordering::Release);
        true
    }

    #[cold]
    fn hold_overflow(&self) {
        let me = held_by_me();
        let word = &self.states[self.owned];
        // Only this thread ever stores `me`, so seeing it means we hold it.
        if word.load(Ordering::Relaxed) == me {
            let depth = self.depth.load(Ordering::Relaxed);
            self.depth.store(depth + 1, Ordering::Relaxed);
            return;
        }
        while word
            .compare_exchange_weak(FREE, me, Ordering::Acquire, Ordering::Relaxed)
            .is_err()
        {
            spin();
        }
    }

    #[cold]
    fn release_overflow(&self) {
        let word = &self.states[self.owned];
        if word.load(Ordering::Relaxed) != held_by_me() {
            return; // not ours: an unpaired put_cpu changes nothing
        }
        match self.depth.load(Ordering::Relaxed) {
            0 => word.store(FREE, Ordering::Release),
            depth => self.depth.store(depth - 1, Ordering::Relaxed),
        }
    }
}

/// Waits a moment for another thread's hold to end.
fn spin() {
    #[cfg(loom)]
    loom::thread::yield_now();
    #[cfg(not(loom))]
    std::thread::yield_now();
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    fn on_new_thread<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
        std::thread::spawn(f).join().unwrap()
    }

    #[test]
    fn a_finished_threads_cpu_is_free_again_and_later_threads_claim_it() {
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
        assert_eq!(ids, [0, 0, 0, 0], "each thread frees CPU 0 as it exits");
    }

    #[test]
    fn a_released_cpu_goes_to_the_next_thread_and_the_releaser_claims_afresh() {
        let cpus = Arc::new(HostCpus::new(1));
        assert_eq!(cpus.cpu_id(), 0);
        // SAFETY: nothing is pinned on this thread.
        unsafe { cpus.release() };
        let c = cpus.clone();
        let (tx, rx) = std::sync::mpsc::channel();
        let (done_tx, done_rx) = std::sync::mpsc::channel::<()>();
        let other = std::thread::spawn(move || {
            tx.send(c.cpu_id()).unwrap();
            done_rx.recv().unwrap();
        });
        assert_eq!(rx.recv().unwrap(), 0, "the released CPU is claimable");
        assert_eq!(cpus.cpu_id(), cpus.overflow_cpu(), "CPU 0 is theirs now");
        done_tx.send(()).unwrap();
        other.join().unwrap();
    }

    #[test]
    fn threads_alive_together_own_distinct_cpus_then_share_the_overflow_cpu() {
        let cpus = Arc::new(HostCpus::new(2));
        let barrier = Arc::new(std::sync::Barrier::new(4));
        let handles: Vec<_> = (0..4)
            .map(|_| {
                let (cpus, barrier) = (cpus.clone(), barrier.clone());
                std::thread::spawn(move || {
                    let cpu = cpus.cpu_id();
                    barrier.wait(); // everyone has claimed before anyone exits
                    cpu
                })
            })
            .collect();
        let mut ids: Vec<usize> = handles.into_iter().map(|h| h.join().unwrap()).collect();
        ids.sort_unstable();
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
            let word = c.states[c.overflow_cpu()].load(Ordering::Relaxed);
            assert_ne!(word, FREE, "still held once");
            c.put_cpu(cpu);
            cpu
        });
        assert_eq!((owner, overflow), (0, cpus.overflow_cpu()));
        let word = cpus.states[cpus.overflow_cpu()].load(Ordering::Relaxed);
        assert_eq!(word, FREE, "released");
    }

    #[test]
    fn on_cpu_reaches_its_own_cpu_free_cpus_and_the_overflow_cpu_but_not_a_live_owners() {
        let cpus = Arc::new(HostCpus::new(2));
        let mine = cpus.cpu_id();
        let (tx, rx) = std::sync::mpsc::channel();
        let (done_tx, done_rx) = std::sync::mpsc::channel::<()>();
        let c = cpus.clone();
        let owner = std::thread::spawn(move || {
            tx.send(c.cpu_id()).unwrap();
            done_rx.recv().unwrap();
        });
        let theirs = rx.recv().unwrap();
        let mut ran = 0;
        assert!(cpus.on_cpu(mine, &mut || ran += 1));
        assert!(
            !cpus.on_cpu(theirs, &mut || ran += 100),
            "a live owner's CPU"
        );
        assert!(cpus.on_cpu(cpus.overflow_cpu(), &mut || ran += 1));
        assert!(!cpus.on_cpu(cpus.nr_cpus(), &mut || ran += 100));
        done_tx.send(()).unwrap();
        owner.join().unwrap();
        assert!(cpus.on_cpu(theirs, &mut || ran += 1), "freed at exit");
        assert_eq!(ran, 3);
    }

    #[test]
    fn a_thread_remembers_its_cpu_in_several_machines() {
        // Among REMEMBERED + 1 values two share a table entry.
        let all: Vec<HostCpus> = (0..=REMEMBERED).map(|_| HostCpus::new(2)).collect();
        let entry = |c: &HostCpus| c.id as usize % REMEMBERED;
        let (a, b) = (0..all.len())
            .flat_map(|i| (i + 1..all.len()).map(move |j| (i, j)))
            .find(|&(i, j)| entry(&all[i]) == entry(&all[j]))
            .unwrap();
        let (a, b) = (&all[a], &all[b]);
        let seen: Vec<usize> = (0..3).flat_map(|_| [a.cpu_id(), b.cpu_id()]).collect();
        // A forgotten claim stays this thread's (never another live
        // thread's), so each re-claim moves on to the next free id.
        assert_eq!(seen, [0, 0, 1, 1, 2, 2], "each forgotten claim moves on");
        assert!(all.iter().all(|c| c.cpu_id() < c.nr_cpus()));
    }

    /// A thread-local destructor that pins a CPU after the thread's owned
    /// ids were freed (its key registered before the thread's first claim,
    /// so it runs after the destructor that frees them) must not run as
    /// the freed id, which a live thread may already own.
    #[test]
    fn a_destructor_after_the_threads_ids_are_freed_takes_the_overflow_cpu() {
        type Late = (Arc<HostCpus>, std::sync::mpsc::Sender<usize>);
        struct AtExit(RefCell<Option<Late>>);
        impl Drop for AtExit {
            fn drop(&mut self) {
                if let Some((cpus, tx)) = self.0.borrow_mut().take() {
                    let _ = tx.send(cpus.cpu_id());
                }
            }
        }
        std::thread_local! {
            static AT_EXIT: AtExit = const { AtExit(RefCell::new(None)) };
        }
        let cpus = Arc::new(HostCpus::new(1));
        let (tx, rx) = std::sync::mpsc::channel();
        let c = cpus.clone();
        let owned = on_new_thread(move || {
            AT_EXIT.with(|late| *late.0.borrow_mut() = Some((c.clone(), tx)));
            c.cpu_id()
        });
        assert_eq!(owned, 0);
        assert_eq!(rx.recv().unwrap(), cpus.overflow_cpu());
    }

    #[test]
    fn threads_get_distinct_stable_slots() {
        let mine = thread_slot();
        assert_eq!(thread_slot(), mine);
        let other = on_new_thread(thread_slot);
        assert_ne!(other, mine);
    }
}
