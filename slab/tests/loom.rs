//! loom models of the slab layer's concurrency: the per-CPU arrays (alloc
//! and free on two CPUs with remote frees, a flush racing a refill on the
//! node lock, a thread migrating between CPUs), the checked free's state
//! transition (two CPUs freeing one object: exactly one wins, on the fast
//! path and on the debug path, and for a large kmalloc, whose head's owner
//! word is claimed by compare-and-swap), a remote free racing a flush, a
//! flush racing a drain of the same CPU from another CPU (`flush_all`),
//! and a bulk free that overflows its CPU's array racing a `kfree` of one
//! of its objects and another CPU's bulk free.
//!
//! Every shared word the slab layer touches is a loom object here: the
//! slab headers' atomics and the cache locks come from `kmm_api::sync`,
//! the state bytes live in a loom table under `--cfg loom`, every owner-word
//! access passes a loom lock of the model machine, and each CPU's
//! array is a loom `UnsafeCell`, so loom sees every access and reports two
//! contexts touching one array at once. Each model counts the
//! interleavings it explored and asserts a floor that shows the racy
//! window was covered.
//!
//! `RUSTFLAGS="--cfg loom" cargo test -p kmm-slab --test loom --release`
#![cfg(loom)]

use kmm_api::{
    sync::{AtomicBool, Ordering},
    AllocatorId, DirectMap, Error, FrameAllocator, GfpFlags, Order, OwnerWord, PageOwner, Pages,
    Pfn, Platform, PreemptControl, VirtAddr, GFP_KERNEL,
};
use kmm_slab::{testing::HostMachine, CacheId, Kmem, KmemConfig, SlabError, SlabFlags};
use loom::{cell::Cell, sync::Arc, thread};
use std::sync::atomic::{AtomicUsize as StdAtomicUsize, Ordering as StdOrdering};

loom::thread_local!(static CPU: Cell<usize> = Cell::new(0));

/// The host machine with loom-visible CPU pinning: each loom thread names
/// its CPU (and may migrate between sections); the id is held exclusively
/// through a loom atomic, as the `PreemptControl` contract demands, and
/// `on_cpu` work for a CPU holds the same flag.
struct LoomMachine {
    host: HostMachine,
    pinned: [AtomicBool; NR_CPUS],
    /// Taken around every owner-word access, so loom sees each one (the
    /// host machine's words are plain atomics) and can interleave layers
    /// between them.
    owner_words: loom::sync::Mutex<()>,
}

/// CPUs of the model machine.
const NR_CPUS: usize = 3;

fn on_cpu(cpu: usize) {
    CPU.with(|c| c.set(cpu));
}

// SAFETY: forwards to the host machine, which keeps the contract.
unsafe impl FrameAllocator for LoomMachine {
    fn alloc_frames(&self, gfp: GfpFlags, order: Order) -> Result<Pages, Error> {
        self.host.alloc_frames(gfp, order)
    }
    fn free_frames(&self, pages: Pages) -> Result<(), Error> {
        self.host.free_frames(pages)
    }
    fn allocator_id(&self) -> AllocatorId {
        self.host.allocator_id()
    }
}

// SAFETY: forwards to the host machine, which keeps the contract.
unsafe impl DirectMap for LoomMachine {
    fn pfn_to_virt(&self, pfn: Pfn) -> Option<VirtAddr> {
        self.host.pfn_to_virt(pfn)
    }
    fn virt_to_pfn(&self, addr: VirtAddr) -> Option<Pfn> {
        self.host.virt_to_pfn(addr)
    }
    fn virt_to_ptr(&self, addr: VirtAddr) -> *mut u8 {
        self.host.virt_to_ptr(addr)
    }
}

// SAFETY: forwards to the host machine, which keeps the contract.
unsafe impl PageOwner for LoomMachine {
    fn owner(&self, pfn: Pfn) -> Option<OwnerWord> {
        let _seen = self.owner_words.lock().unwrap();
        self.host.owner(pfn)
    }
    unsafe fn set_owner(&self, pfn: Pfn, word: OwnerWord) -> Result<(), Error> {
        let _seen = self.owner_words.lock().unwrap();
        // SAFETY: our caller's contract is the host machine's.
        unsafe { self.host.set_owner(pfn, word) }
    }
    unsafe fn replace_owner(
        &self,
        pfn: Pfn,
        current: OwnerWord,
        new: OwnerWord,
    ) -> Result<bool, Error> {
        let _seen = self.owner_words.lock().unwrap();
        // SAFETY: our caller's contract is the host machine's.
        unsafe { self.host.replace_owner(pfn, current, new) }
    }
}

impl Platform for LoomMachine {
    fn nr_cpus(&self) -> usize {
        NR_CPUS
    }
    fn cpu_id(&self) -> usize {
        CPU.with(Cell::get)
    }
}

impl LoomMachine {
    fn hold(&self, cpu: usize) {
        while self.pinned[cpu]
            .compare_exchange(false, true, Ordering::Acquire, Ordering::Relaxed)
            .is_err()
        {
            thread::yield_now();
        }
    }
}

// SAFETY: an id is handed out, and `on_cpu` work runs, only while its flag
// is held; `put_cpu` (or the end of the work) releases it.
unsafe impl PreemptControl for LoomMachine {
    fn get_cpu(&self) -> usize {
        let cpu = self.cpu_id();
        self.hold(cpu);
        cpu
    }
    fn put_cpu(&self, cpu: usize) {
        self.pinned[cpu].store(false, Ordering::Release);
    }
    fn on_cpu(&self, cpu: usize, work: &mut dyn FnMut()) -> bool {
        self.hold(cpu);
        work();
        self.put_cpu(cpu);
        true
    }
}

/// Runs `f` under loom with at most three preemptions and returns how
/// many interleavings were explored.
fn explore(f: impl Fn() + Sync + Send + 'static) -> usize {
    let runs = std::sync::Arc::new(StdAtomicUsize::new(0));
    let counter = runs.clone();
    let mut builder = loom::model::Builder::new();
    if builder.preemption_bound.is_none() {
        builder.preemption_bound = Some(3);
    }
    builder.max_branches = 1_000_000;
    builder.check(move || {
        counter.fetch_add(1, StdOrdering::Relaxed);
        f();
    });
    runs.load(StdOrdering::Relaxed)
}

/// Asserts a model explored at least `floor` interleavings: loom's search
/// is deterministic, so each floor sits a little under the count the model
/// explores today, and a change that hides shared state from loom (or
/// stops the threads from meeting) drops below it.
fn assert_explored(name: &str, explored: usize, floor: usize) {
    println!("{name}: loom explored {explored} interleavings");
    assert!(
        explored >= floor,
        "{name}: only {explored} interleavings explored (floor {floor})"
    );
}

fn build(slub_debug: SlabFlags) -> Arc<Kmem<LoomMachine>> {
    let machine = LoomMachine {
        host: HostMachine::new(160, NR_CPUS),
        pinned: std::array::from_fn(|_| AtomicBool::new(false)),
        owner_words: loom::sync::Mutex::new(()),
    };
    let config = KmemConfig {
        slub_debug,
        seed: 1,
        fine_classes: false,
    };
    Arc::new(Kmem::new(machine, config).unwrap())
}

/// Frees `p` on `kmem`.
///
/// # Safety
/// As `Kmem::kfree`: the caller holds `p` and gives it up.
unsafe fn kfree(kmem: &Kmem<LoomMachine>, p: usize) -> Result<(), SlabError> {
    // SAFETY: forwarded from our caller.
    unsafe { kmem.kfree(p as *const u8) }
}

/// A cache of 5000-byte objects: three to a slab, per-CPU limit 8 and
/// batch 4, so a few frees overflow an array and flush to the node.
fn big_cache(k: &Kmem<LoomMachine>) -> CacheId {
    k.kmem_cache_create("big", 5000, 8, SlabFlags::empty(), None)
        .unwrap()
}

/// `n` objects of `id`, allocated on CPU 0.
fn alloc_n(k: &Kmem<LoomMachine>, id: CacheId, n: usize) -> Vec<usize> {
    on_cpu(0);
    (0..n)
        .map(|_| k.kmem_cache_alloc(id, GFP_KERNEL).unwrap().as_ptr() as usize)
        .collect()
}

/// Frees `objs` on `cpu`.
///
/// # Safety
/// The caller holds every object and gives them up.
unsafe fn free_on(k: &Kmem<LoomMachine>, id: CacheId, cpu: usize, objs: &[usize]) {
    on_cpu(cpu);
    for &p in objs {
        // SAFETY: forwarded from our caller.
        unsafe { k.kmem_cache_free(id, p as *const u8) }.unwrap();
    }
}

#[test]
fn remote_free_flushes_race_the_owners_refill() {
    let explored = explore(|| {
        let k = build(SlabFlags::empty());
        let id = big_cache(&k);
        let objs = alloc_n(&k, id, 18);
        // CPU 0's array is empty; CPUs 1 and 2 are one short of their
        // limit, holding alternate objects, so the four each flushes lie
        // in the same slabs.
        // SAFETY: we hold the objects and give these up.
        unsafe {
            for cpu in 1..NR_CPUS {
                let dealt: Vec<usize> = objs[..14]
                    .iter()
                    .copied()
                    .skip(cpu - 1)
                    .step_by(2)
                    .collect();
                free_on(&k, id, cpu, &dealt);
            }
        }
        let flushers: Vec<_> = [(1, objs[14..16].to_vec()), (2, objs[16..].to_vec())]
            .into_iter()
            .map(|(cpu, remote)| {
                let k = k.clone();
                thread::spawn(move || {
                    // Remote frees of objects CPU 0 allocated: the second
                    // overflows the array, which flushes four to the node.
                    // SAFETY: this thread holds the objects handed to it.
                    unsafe { free_on(&k, id, cpu, &remote) };
                })
            })
            .collect();
        // Meanwhile CPU 0 refills its empty array from the same slabs.
        on_cpu(0);
        let q = k.kmem_cache_alloc(id, GFP_KERNEL).unwrap();
        for t in flushers {
            t.join().unwrap();
        }
        // SAFETY: we hold `q`.
        unsafe { k.kmem_cache_free(id, q.as_ptr()) }.unwrap();
        k.check_invariants().unwrap();
        assert_eq!(k.kmem_cache_stats(id).unwrap().active_objs, 0);
    });
    assert_explored("remote free flushes vs refill", explored, 8000);
}

#[test]
fn a_thread_migrating_between_sections_never_shares_a_cpu_array() {
    let explored = explore(|| {
        let k = build(SlabFlags::empty());
        let k2 = k.clone();
        let t = thread::spawn(move || {
            on_cpu(0);
            let p = k2.kmalloc(32, GFP_KERNEL).unwrap();
            // Migrated after reading the CPU id and using CPU 0's array.
            on_cpu(1);
            // SAFETY: this thread holds `p`.
            unsafe { kfree(&k2, p.as_ptr() as usize) }.unwrap();
        });
        on_cpu(0);
        let q = k.kmalloc(32, GFP_KERNEL).unwrap();
        // SAFETY: we hold `q`.
        unsafe { kfree(&k, q.as_ptr() as usize) }.unwrap();
        t.join().unwrap();
        k.check_invariants().unwrap();
    });
    assert_explored("migration", explored, 600);
}

/// Slab size of the big cache: objects of one slab lie in one aligned
/// block of this many bytes.
const BIG_SLAB_BYTES: usize = 4 * 4096;

/// `n` objects of `id` split as [`two_and_a_keeper`] does, with the rest.
fn contested_keeper_rest(
    k: &Kmem<LoomMachine>,
    id: CacheId,
    n: usize,
) -> ([usize; 2], usize, Vec<usize>) {
    let objs = alloc_n(k, id, n);
    let (contested, keep) = two_and_a_keeper(&objs);
    let rest = objs
        .into_iter()
        .filter(|p| !contested.contains(p) && *p != keep)
        .collect();
    (contested, keep, rest)
}

/// Two objects of one slab and a third of the same slab, from `objs`.
fn two_and_a_keeper(objs: &[usize]) -> ([usize; 2], usize) {
    let slab = |p: usize| p & !(BIG_SLAB_BYTES - 1);
    let same: Vec<usize> = objs
        .iter()
        .copied()
        .filter(|&p| slab(p) == slab(objs[0]))
        .collect();
    assert!(same.len() >= 3, "three objects of one slab");
    ([same[0], same[1]], same[2])
}

/// Three CPUs free the same two objects at once, in different orders: of
/// each object's three frees exactly one succeeds, the others are double
/// frees, and every object is free exactly once afterwards. The arrays
/// start one short of their limit, so a CPU that wins both objects
/// overflows and flushes while the losing frees of those objects run.
/// Nothing that could hand a contested object out again runs during the
/// race, and a third object keeps their slab alive (the `kfree`
/// contract); with six slabs of which one stays live, no slab can become a
/// surplus empty one either.
fn racing_double_frees(slub_debug: SlabFlags) -> usize {
    let wins: std::sync::Arc<[StdAtomicUsize; NR_CPUS]> =
        std::sync::Arc::new(std::array::from_fn(|_| StdAtomicUsize::new(0)));
    let seen = wins.clone();
    let explored = explore(move || {
        let k = build(slub_debug);
        let id = big_cache(&k);
        let (contested, keep, rest) = contested_keeper_rest(&k, id, 17);
        // SAFETY: we hold these objects and give them up: seven to each of
        // two CPUs' arrays (a debug cache has none: they go to their slabs).
        unsafe {
            free_on(&k, id, 0, &rest[..7]);
            free_on(&k, id, 1, &rest[7..14]);
        }
        let race = move |k: &Kmem<LoomMachine>, cpu: usize| {
            on_cpu(cpu);
            let order = match cpu {
                1 => [contested[1], contested[0]],
                _ => contested,
            };
            // SAFETY: racing double frees (every thread gives the objects
            // up); nobody allocates during the race.
            order.map(|p| unsafe { k.kmem_cache_free(id, p as *const u8) })
        };
        let others: Vec<_> = (1..NR_CPUS)
            .map(|cpu| {
                let k = k.clone();
                thread::spawn(move || race(&k, cpu))
            })
            .collect();
        let mut results = vec![race(&k, 0)];
        results.extend(others.into_iter().map(|t| t.join().unwrap()));
        for (i, &p) in contested.iter().enumerate() {
            let outcomes: Vec<_> = results
                .iter()
                .enumerate()
                .map(|(cpu, r)| &r[if cpu == 1 { 1 - i } else { i }])
                .collect();
            let winners: Vec<usize> = (0..NR_CPUS).filter(|&c| outcomes[c].is_ok()).collect();
            assert_eq!(
                winners.len(),
                1,
                "object {p:#x}: one free wins: {outcomes:?}"
            );
            assert!(
                outcomes
                    .iter()
                    .all(|r| r.is_ok() || matches!(r, Err(SlabError::DoubleFree { .. }))),
                "{outcomes:?}"
            );
            seen[winners[0]].fetch_add(1, StdOrdering::Relaxed);
        }
        k.check_invariants().unwrap();
        // Every object is free exactly once: only `keep` is still live.
        assert_eq!(k.flush_all(), 0);
        k.check_invariants().unwrap();
        assert_eq!(k.kmem_cache_stats(id).unwrap().active_objs, 1);
        // SAFETY: we hold `keep`.
        unsafe { free_on(&k, id, 0, &[keep]) };
    });
    let won: Vec<usize> = wins.iter().map(|w| w.load(StdOrdering::Relaxed)).collect();
    assert!(
        won.iter().all(|&w| w > 0),
        "the race went every way: frees won per CPU {won:?}"
    );
    explored
}

/// A bulk free that finds its CPU's array full frees the rest of its run
/// straight to the slabs under the node lock, with the same state-byte
/// compare-and-swap as `kfree` for each object: racing a `kfree` of one of
/// its objects on another CPU, exactly one of the two frees wins, while a
/// third CPU's bulk free overflows its own array into the same slabs.
/// Nothing allocates during the race (an allocation could hand a freed
/// contested object out again, and a later free of it would rightly
/// succeed).
#[test]
fn a_bulk_free_overflowing_its_array_races_kfree_and_another_bulk_free() {
    // How often each free won: [the kfree, the bulk free].
    let wins: std::sync::Arc<[StdAtomicUsize; 2]> =
        std::sync::Arc::new(std::array::from_fn(|_| StdAtomicUsize::new(0)));
    let seen = wins.clone();
    let explored = explore(move || {
        let k = build(SlabFlags::empty());
        let id = big_cache(&k);
        let (contested, keep, rest) = contested_keeper_rest(&k, id, 23);
        // CPU 0's and CPU 2's arrays exactly full.
        k.drain_local();
        // SAFETY: we hold these objects and give them up.
        unsafe {
            free_on(&k, id, 0, &rest[..8]);
            free_on(&k, id, 2, &rest[8..16]);
        }
        let bulk_free = |cpu: usize, ptrs: Vec<usize>| {
            let k = k.clone();
            thread::spawn(move || {
                on_cpu(cpu);
                let ptrs: Vec<*mut u8> = ptrs.into_iter().map(|p| p as *mut u8).collect();
                // SAFETY: this thread gives these objects up; the other
                // free of `contested[1]` is a racing double free.
                unsafe { k.kfree_bulk(&ptrs) }
            })
        };
        let contending = bulk_free(0, contested.to_vec());
        let beside = bulk_free(2, rest[16..19].to_vec());
        on_cpu(1);
        // SAFETY: as above.
        let single = unsafe { kfree(&k, contested[1]) };
        let refused = contending.join().unwrap();
        assert_eq!(beside.join().unwrap(), 0);
        let winner = match single {
            Ok(()) => 0,
            Err(SlabError::DoubleFree { .. }) => 1,
            Err(e) => panic!("{e:?}"),
        };
        assert_eq!(refused, 1 - winner, "exactly one free of the object wins");
        seen[winner].fetch_add(1, StdOrdering::Relaxed);
        k.check_invariants().unwrap();
        // SAFETY: we hold `keep` and the objects never freed.
        unsafe {
            free_on(&k, id, 1, &rest[19..]);
            free_on(&k, id, 1, &[keep]);
        }
        k.check_invariants().unwrap();
        assert_eq!(k.kmem_cache_stats(id).unwrap().active_objs, 0);
    });
    let won = wins.each_ref().map(|w| w.load(StdOrdering::Relaxed));
    assert!(
        won.iter().all(|&w| w > 0),
        "the race went both ways: {won:?}"
    );
    assert_explored(
        "bulk free overflowing its array vs kfree vs bulk free",
        explored,
        1000,
    );
}

#[test]
fn racing_frees_of_one_object_let_exactly_one_win_even_mid_flush() {
    let explored = racing_double_frees(SlabFlags::empty());
    assert_explored("racing double frees", explored, 1700);
}

#[test]
fn racing_frees_of_one_debug_object_let_exactly_one_win() {
    let explored = racing_double_frees(SlabFlags::POISON);
    assert_explored("racing double frees (debug)", explored, 4100);
}

#[test]
fn remote_frees_race_the_owners_flush() {
    let explored = explore(|| {
        let k = build(SlabFlags::empty());
        let id = big_cache(&k);
        let objs = alloc_n(&k, id, 27);
        // Every array one short of its limit. Objects are dealt round the
        // CPUs (object `i` to CPU `i % 3`), so each slab of three has one
        // object in each array, and the oldest four each CPU flushes lie in
        // the same four slabs: the three flushes push onto the same free
        // lists. Each CPU's next two frees overflow its array.
        // SAFETY: we hold the objects and give these up.
        unsafe {
            for cpu in 0..NR_CPUS {
                let dealt: Vec<usize> = objs[..21]
                    .iter()
                    .copied()
                    .skip(cpu)
                    .step_by(NR_CPUS)
                    .collect();
                free_on(&k, id, cpu, &dealt);
            }
        }
        let remote: Vec<_> = (1..NR_CPUS)
            .map(|cpu| {
                let (k, mine) = (k.clone(), objs[21 + 2 * cpu..23 + 2 * cpu].to_vec());
                // Remote frees (allocated on CPU 0) flushing into the
                // slabs CPU 0 flushes into.
                // SAFETY: this thread holds the objects handed to it.
                thread::spawn(move || unsafe { free_on(&k, id, cpu, &mine) })
            })
            .collect();
        // SAFETY: we hold these objects.
        unsafe { free_on(&k, id, 0, &objs[21..23]) };
        for t in remote {
            t.join().unwrap();
        }
        k.check_invariants().unwrap();
        assert_eq!(k.kmem_cache_stats(id).unwrap().active_objs, 0);
    });
    assert_explored("remote frees vs flush", explored, 9000);
}

#[test]
fn a_flush_races_a_drain_of_the_same_cpu_from_another_cpu() {
    let explored = explore(|| {
        let k = build(SlabFlags::empty());
        let id = big_cache(&k);
        let objs = alloc_n(&k, id, 9);
        let k2 = k.clone();
        let t = thread::spawn(move || {
            // Eight frees fill CPU 0's array, the ninth flushes it.
            // SAFETY: this thread holds the nine objects.
            unsafe { free_on(&k2, id, 0, &objs) };
        });
        // From CPU 1: drain every CPU's array, CPU 0's included, as CPU 0.
        on_cpu(1);
        assert_eq!(k.flush_all(), 0, "the model's platform reaches every CPU");
        t.join().unwrap();
        k.check_invariants().unwrap();
        assert_eq!(k.kmem_cache_stats(id).unwrap().active_objs, 0);
    });
    assert_explored("flush vs remote drain", explored, 120);
}

/// Two CPUs free one large kmalloc at once: its head's owner word is
/// claimed by one compare-and-swap, so exactly one free wins, the other is
/// refused (a double free, or an invalid pointer if the block is already
/// gone), and the block goes back to the page allocator once.
#[test]
fn racing_frees_of_one_large_kmalloc_let_exactly_one_win() {
    let explored = explore(|| {
        let k = build(SlabFlags::empty());
        on_cpu(0);
        let base = k.backend().host.frames_in_use();
        let p = k
            .kmalloc(kmm_slab::KMALLOC_MAX_CACHE_SIZE + 1, GFP_KERNEL)
            .unwrap()
            .as_ptr() as usize;
        let k2 = k.clone();
        let other = thread::spawn(move || {
            on_cpu(1);
            // SAFETY: racing double frees: both threads give `p` up, and
            // nobody allocates during the race.
            unsafe { kfree(&k2, p) }
        });
        // SAFETY: as above.
        let mine = unsafe { kfree(&k, p) };
        let theirs = other.join().unwrap();
        let refused = |r: &Result<(), SlabError>| {
            matches!(
                r,
                Err(SlabError::DoubleFree { .. } | SlabError::InvalidPointer { .. })
            )
        };
        assert!(
            (mine.is_ok() && refused(&theirs)) || (refused(&mine) && theirs.is_ok()),
            "exactly one free wins: {mine:?} {theirs:?}"
        );
        assert_eq!(
            k.backend().host.frames_in_use(),
            base,
            "the block back once"
        );
        assert_eq!(k.internal_errors(), 0);
    });
    assert_explored("racing frees of a large kmalloc", explored, 45);
}
