//! kmalloc against peer allocators. Single-threaded workloads of the slab
//! issue: O1 64-byte alloc+free pairs, O2 100,000 64-byte allocations
//! freed in shuffled order, O3 churn over 50,000 live objects of a
//! kernel-like size mix (8 B to 4 KiB). Threaded workloads: O4, O3's churn
//! on two threads at once; O5, remote frees (one thread allocates 64-byte
//! objects, another frees them).
//!
//! The peers: glibc (`System`) and mimalloc, each called through its
//! `GlobalAlloc`, and (single-threaded workloads only) talc, slabmalloc,
//! linked_list_allocator and buddy_system_allocator, each over its own
//! arena and driven through `&mut` without a lock. kmm is the hosted
//! `MemoryManager` (zones and slab composed), twice: `kmm-kmalloc` frees
//! with the checked `kfree` (one compare-and-swap of the object's state,
//! so racing double frees are refused), `kmm-global` through the hosted
//! preset's `HostedGlobal`, whose trusted free stores the state instead.
//!
//! Every contender runs on worker threads spawned for its benchmark, never
//! on the thread that booted kmm's manager, as in a program that boots its
//! allocator in `main` and works in threads: so kmm's per-CPU fast path is
//! measured with the CPU the hosted CPU model gives such a thread (an owned
//! one for the first `nr_cpus` of them, the booting thread having given
//! its CPU back; the shared overflow CPU beyond). Workers live across samples (live sets,
//! caches and per-CPU arrays warm for every contender alike). Prints O3's
//! memory efficiency for kmm before the runs.
//!
//! `cargo bench --bench kmalloc --features std -- --warm-up-time 1 --measurement-time 3`

#![allow(missing_docs)] // criterion's macros generate undocumented items

use criterion::{
    black_box, criterion_group, criterion_main, measurement::WallTime, BenchmarkGroup, Criterion,
    Throughput,
};
use kmm::{global::HostedGlobal, HostedMemoryManager, MemoryManager};
use kmm_api::{GFP_KERNEL, PAGE_SIZE};
use mimalloc::MiMalloc;
use rand::{rngs::SmallRng, seq::SliceRandom, Rng, SeedableRng};
use std::{
    alloc::{GlobalAlloc, Layout, System},
    ptr::NonNull,
    sync::{mpsc, Barrier, OnceLock},
    thread,
    time::{Duration, Instant},
};

const ARENA: usize = 256 << 20;
const O2_OBJECTS: usize = 100_000;
const O3_LIVE: usize = 50_000;
/// Threads of O4 (O5 has a producer and a consumer).
const THREADS: usize = 2;
const O5_OBJECTS: usize = 2_000_000;
const O5_BATCH: usize = 1000;
/// O5's channel bound in batches: the producer waits beyond it.
const O5_IN_FLIGHT: usize = 16;

/// A kernel-like size mix: mostly small objects (dentries, list nodes,
/// skb heads), a tail of buffers up to a page.
const MIX: [(usize, u32); 12] = [
    (8, 10),
    (16, 15),
    (32, 20),
    (64, 20),
    (96, 8),
    (128, 10),
    (192, 5),
    (256, 5),
    (512, 3),
    (1024, 2),
    (2048, 1),
    (4096, 1),
];

/// What the single-threaded workloads need of an allocator; `&mut self`, so
/// the single-threaded peers (talc, slabmalloc, linked_list_allocator,
/// buddy_system_allocator) run without a lock, as a kernel would not run
/// them.
trait Bench {
    fn alloc(&mut self, size: usize) -> NonNull<u8>;
    fn free(&mut self, p: NonNull<u8>, size: usize);
}

/// An allocator any number of threads share through `&self`: kmm and the
/// host allocators. Each is a [`Bench`] through a shared reference.
trait Shared: Sync {
    fn alloc(&self, size: usize) -> NonNull<u8>;
    /// `p` came from `alloc(size)` of this allocator and is freed once
    /// (the workloads' promise, not checked here).
    fn free(&self, p: NonNull<u8>, size: usize);
}

impl<S: Shared> Bench for &S {
    #[inline]
    fn alloc(&mut self, size: usize) -> NonNull<u8> {
        Shared::alloc(*self, size)
    }
    #[inline]
    fn free(&mut self, p: NonNull<u8>, size: usize) {
        Shared::free(*self, p, size)
    }
}

fn layout(size: usize) -> Layout {
    Layout::from_size_align(size, 8).unwrap()
}

/// `kmalloc` / `kfree` of a hosted manager.
struct Kmm(HostedMemoryManager);
impl Shared for Kmm {
    #[inline]
    fn alloc(&self, size: usize) -> NonNull<u8> {
        self.0.kmalloc(size, GFP_KERNEL).unwrap()
    }
    #[inline]
    fn free(&self, p: NonNull<u8>, _size: usize) {
        // SAFETY: the workloads free only what `alloc` returned, once, and
        // drop it from their live set: the caller holds the object and
        // gives it up.
        unsafe { self.0.kfree(p.as_ptr()) }.unwrap()
    }
}

/// A `GlobalAlloc` called directly (never installed as the process's
/// allocator): glibc (`System`), mimalloc, and kmm's `HostedGlobal`.
struct Global<A: 'static>(&'static A);
impl<A: GlobalAlloc + Sync> Shared for Global<A> {
    #[inline]
    fn alloc(&self, size: usize) -> NonNull<u8> {
        // SAFETY: non-zero size.
        NonNull::new(unsafe { self.0.alloc(layout(size)) }).unwrap()
    }
    #[inline]
    fn free(&self, p: NonNull<u8>, size: usize) {
        // SAFETY: allocated by this allocator with this layout (the
        // workloads' promise), freed once.
        unsafe { self.0.dealloc(p.as_ptr(), layout(size)) }
    }
}

fn arena() -> &'static mut [u8] {
    Box::leak(vec![0u8; ARENA].into_boxed_slice())
}

struct Talc(talc::Talc<talc::ErrOnOom>);
impl Bench for Talc {
    #[inline]
    fn alloc(&mut self, size: usize) -> NonNull<u8> {
        // SAFETY: non-zero size.
        unsafe { self.0.malloc(layout(size)) }.unwrap()
    }
    #[inline]
    fn free(&mut self, p: NonNull<u8>, size: usize) {
        // SAFETY: allocated above with this layout.
        unsafe { self.0.free(p, layout(size)) }
    }
}

struct LinkedList(linked_list_allocator::Heap);
impl Bench for LinkedList {
    #[inline]
    fn alloc(&mut self, size: usize) -> NonNull<u8> {
        self.0.allocate_first_fit(layout(size)).unwrap()
    }
    #[inline]
    fn free(&mut self, p: NonNull<u8>, size: usize) {
        // SAFETY: allocated above with this layout.
        unsafe { self.0.deallocate(p, layout(size)) }
    }
}

/// slabmalloc's zone allocator, refilled on demand with 4 KiB pages (up
/// to 256 B) and 2 MiB pages (above), bump-allocated from its arena.
struct SlabMalloc {
    zone: slabmalloc::ZoneAllocator<'static>,
    next: usize,
    end: usize,
}
impl SlabMalloc {
    #[cold]
    fn refill(&mut self, size: usize) {
        use slabmalloc::{Allocator, LargeObjectPage, ObjectPage, ZoneAllocator};
        let page = if size <= ZoneAllocator::MAX_BASE_ALLOC_SIZE {
            4096
        } else {
            2 << 20
        };
        let at = self.next.next_multiple_of(page);
        assert!(at + page <= self.end, "slabmalloc arena exhausted");
        self.next = at + page;
        // SAFETY: a fresh, zeroed, suitably aligned page of the leaked
        // arena, handed to the zone for good.
        unsafe {
            if page == 4096 {
                let p = &mut *(at as *mut ObjectPage<'static>);
                self.zone.refill(layout(size), p).unwrap();
            } else {
                let p = &mut *(at as *mut LargeObjectPage<'static>);
                self.zone.refill_large(layout(size), p).unwrap();
            }
        }
    }
}
impl Bench for SlabMalloc {
    #[inline]
    fn alloc(&mut self, size: usize) -> NonNull<u8> {
        use slabmalloc::Allocator;
        loop {
            match self.zone.allocate(layout(size)) {
                Ok(p) => return p,
                Err(_) => self.refill(size),
            }
        }
    }
    #[inline]
    fn free(&mut self, p: NonNull<u8>, size: usize) {
        use slabmalloc::Allocator;
        self.zone.deallocate(p, layout(size)).unwrap()
    }
}

struct Buddy(buddy_system_allocator::Heap<32>);
impl Bench for Buddy {
    #[inline]
    fn alloc(&mut self, size: usize) -> NonNull<u8> {
        self.0.alloc(layout(size)).unwrap()
    }
    #[inline]
    fn free(&mut self, p: NonNull<u8>, size: usize) {
        self.0.dealloc(p, layout(size))
    }
}

/// A hosted manager over [`ARENA`] with `nr_cpus` owned CPUs, booted on
/// the calling thread.
fn boot(nr_cpus: usize) -> HostedMemoryManager {
    MemoryManager::hosted(ARENA, nr_cpus).unwrap()
}

fn kmm() -> Kmm {
    Kmm(boot(1))
}

/// The CPU counts the `kmm-global` managers are booted with: one for the
/// single-threaded workloads, two and eight for the threaded ones.
const GLOBAL_CPUS: [usize; 3] = [1, 2, 8];

/// A hosted manager with `nr_cpus` CPUs (one of [`GLOBAL_CPUS`]) behind
/// the hosted preset's global allocator, `HostedGlobal`, as a program
/// installs it: kmalloc classes and the trusted free, after the address
/// check that tells the manager's blocks from the host's. One manager
/// serves every workload of the contender.
fn kmm_global(nr_cpus: usize) -> Global<HostedGlobal> {
    static MMS: [OnceLock<HostedMemoryManager>; 3] = [const { OnceLock::new() }; 3];
    // SAFETY: each manager is a `OnceLock`'s: once it holds one it always
    // does.
    static GLOBALS: [HostedGlobal; 3] = unsafe {
        [
            HostedGlobal::new(|| MMS[0].get().map(MemoryManager::kmem)),
            HostedGlobal::new(|| MMS[1].get().map(MemoryManager::kmem)),
            HostedGlobal::new(|| MMS[2].get().map(MemoryManager::kmem)),
        ]
    };
    let i = GLOBAL_CPUS.iter().position(|&n| n == nr_cpus).unwrap();
    MMS[i].get_or_init(|| boot(nr_cpus));
    Global(&GLOBALS[i])
}

/// Empties the process's magazine depot of the `kmm-global` manager with
/// `nr_cpus` CPUs at the end of its workload. A depot class holds one
/// manager's batches at a time, and this process runs three managers one
/// after another (a program has one): without the drain, the batches a
/// workload's tear-down left would keep the next manager's objects out of
/// those classes.
fn drain_depot(nr_cpus: usize) {
    kmm_global(nr_cpus).0.drain_depot();
}

fn talc() -> Talc {
    let mut t = talc::Talc::new(talc::ErrOnOom);
    // SAFETY: the arena is leaked, so valid for the program.
    unsafe { t.claim(arena().into()) }.unwrap();
    Talc(t)
}

fn linked_list() -> LinkedList {
    let a = arena();
    // SAFETY: the arena is leaked and used by this heap alone.
    LinkedList(unsafe { linked_list_allocator::Heap::new(a.as_mut_ptr(), a.len()) })
}

fn slabmalloc() -> SlabMalloc {
    let a = arena();
    let next = a.as_mut_ptr() as usize;
    SlabMalloc {
        zone: slabmalloc::ZoneAllocator::new(),
        next,
        end: next + a.len(),
    }
}

fn buddy() -> Buddy {
    let a = arena();
    let mut h = buddy_system_allocator::Heap::<32>::new();
    // SAFETY: the arena is leaked and used by this heap alone.
    unsafe { h.init(a.as_mut_ptr() as usize, a.len()) };
    Buddy(h)
}

/// Runs `workload` once per allocator, each a concrete type (no dynamic
/// dispatch in the measured loop); the arena-based peers each over their
/// own arena.
macro_rules! each_allocator {
    ($group:expr, $workload:ident) => {
        $workload(&mut $group, "kmm-kmalloc", &kmm());
        $workload(&mut $group, "kmm-global", &kmm_global(1));
        drain_depot(1);
        $workload(&mut $group, "system-malloc", &Global(&System));
        $workload(&mut $group, "mimalloc", &Global(&MiMalloc));
        $workload(&mut $group, "talc", talc());
        $workload(&mut $group, "slabmalloc", slabmalloc());
        $workload(&mut $group, "linked_list_allocator", linked_list());
        $workload(&mut $group, "buddy_system_allocator", buddy());
    };
}

/// Runs a threaded `workload` once per thread-safe allocator: kmm with two
/// and with eight CPUs (with two, each of two workers owns a CPU only
/// because the booting thread gives its CPU back after boot), glibc and
/// mimalloc.
macro_rules! each_shared_allocator {
    ($group:expr, $workload:ident) => {
        for cpus in [2, 8] {
            $workload(
                &mut $group,
                &format!("kmm-kmalloc-cpus{cpus}"),
                &Kmm(boot(cpus)),
            );
            $workload(
                &mut $group,
                &format!("kmm-global-cpus{cpus}"),
                &kmm_global(cpus),
            );
            drain_depot(cpus);
        }
        $workload(&mut $group, "system-malloc", &Global(&System));
        $workload(&mut $group, "mimalloc", &Global(&MiMalloc));
    };
}

type Group<'a> = BenchmarkGroup<'a, WallTime>;

fn mix_size(rng: &mut SmallRng) -> usize {
    let total: u32 = MIX.iter().map(|&(_, w)| w).sum();
    let mut pick = rng.gen_range(0..total);
    for &(size, w) in &MIX {
        if pick < w {
            // Sizes spread within the class, as kernel requests are.
            return rng.gen_range(size / 2 + 1..=size);
        }
        pick -= w;
    }
    8
}

fn o1<A: Bench + Send>(g: &mut Group<'_>, name: &str, mut a: A) {
    let worker: Worker<'_> = Box::new(move |samples| {
        // Warm the caches so the pair is the steady-state fast path.
        let p = a.alloc(64);
        a.free(p, 64);
        samples.each(|iters| {
            for _ in 0..iters {
                let p = a.alloc(black_box(64));
                a.free(black_box(p), 64);
            }
        });
    });
    threaded(g, name, vec![worker]);
}

fn o1_pairs(c: &mut Criterion) {
    let mut g = c.benchmark_group("O1 64B alloc+free pair");
    each_allocator!(g, o1);
    g.finish();
}

fn o2<A: Bench + Send>(g: &mut Group<'_>, name: &str, mut a: A) {
    let mut order: Vec<usize> = (0..O2_OBJECTS).collect();
    order.shuffle(&mut SmallRng::seed_from_u64(2));
    let worker: Worker<'_> = Box::new(move |samples| {
        let mut ptrs = Vec::with_capacity(O2_OBJECTS);
        samples.each(|iters| {
            for _ in 0..iters {
                ptrs.clear();
                for _ in 0..O2_OBJECTS {
                    ptrs.push(a.alloc(64));
                }
                for &i in &order {
                    a.free(ptrs[i], 64);
                }
            }
        });
    });
    threaded(g, name, vec![worker]);
}

fn o2_shuffled(c: &mut Criterion) {
    let mut g = c.benchmark_group("O2 100k x 64B, shuffled frees");
    g.throughput(Throughput::Elements(O2_OBJECTS as u64));
    g.sample_size(10);
    each_allocator!(g, o2);
    g.finish();
}

/// O3's churn over one live set: the script of (slot, new size) steps and
/// the initial sizes, drawn from `seed` before timing, and the live
/// objects.
struct Churn {
    steps: Vec<(usize, usize)>,
    live: Vec<(NonNull<u8>, usize)>,
    at: usize,
}

impl Churn {
    fn new<A: Bench>(a: &mut A, seed: u64) -> Self {
        let mut rng = SmallRng::seed_from_u64(seed);
        let steps = (0..1 << 16)
            .map(|_| (rng.gen_range(0..O3_LIVE), mix_size(&mut rng)))
            .collect();
        let live = (0..O3_LIVE)
            .map(|_| {
                let s = mix_size(&mut rng);
                (a.alloc(s), s)
            })
            .collect();
        Churn { steps, live, at: 0 }
    }

    /// Frees one live object and allocates its replacement.
    #[inline]
    fn step<A: Bench>(&mut self, a: &mut A) {
        let (slot, size) = self.steps[self.at & (self.steps.len() - 1)];
        self.at += 1;
        let (p, old) = self.live[slot];
        a.free(p, old);
        self.live[slot] = (a.alloc(size), size);
    }

    fn free_all<A: Bench>(self, a: &mut A) {
        for (p, size) in self.live {
            a.free(p, size);
        }
    }
}

/// O3's churn as one worker: its own live set (seeded by `seed`), one
/// step per iteration; frees the live set when the benchmark ends.
fn churn_worker<'a, A: Bench + Send + 'a>(mut a: A, seed: u64) -> Worker<'a> {
    Box::new(move |samples| {
        let mut churn = Churn::new(&mut a, seed);
        samples.each(|iters| {
            for _ in 0..iters {
                churn.step(&mut a);
            }
        });
        churn.free_all(&mut a);
    })
}

fn o3<A: Bench + Send>(g: &mut Group<'_>, name: &str, a: A) {
    threaded(g, name, vec![churn_worker(a, 3)]);
}

fn o3_churn(c: &mut Criterion) {
    let mut g = c.benchmark_group("O3 churn, 50k live, 8B-4KiB mix");
    each_allocator!(g, o3);
    g.finish();
}

/// A worker thread's side of the samples of a threaded workload.
struct Samples<'a> {
    iters: mpsc::Receiver<u64>,
    spans: mpsc::Sender<(Instant, Instant)>,
    barrier: &'a Barrier,
}

impl Samples<'_> {
    /// Runs `work(iters)` for every sample until the benchmark ends, all
    /// workers starting together, and reports its span.
    fn each(&self, mut work: impl FnMut(u64)) {
        for iters in &self.iters {
            self.barrier.wait();
            let start = Instant::now();
            work(iters);
            self.spans.send((start, Instant::now())).unwrap();
        }
    }
}

/// One thread of a threaded workload, alive for the whole benchmark: its
/// set-up, then [`Samples::each`], then its tear-down.
type Worker<'a> = Box<dyn FnOnce(&Samples<'_>) + Send + 'a>;

/// Benchmarks a threaded workload, each worker on its own thread. The
/// workers live across samples, so their live sets and caches stay warm as
/// in the single-threaded workloads; a sample's time runs from the first
/// worker's start to the last one's end.
fn threaded(g: &mut Group<'_>, name: &str, workers: Vec<Worker<'_>>) {
    let threads = workers.len();
    let barrier = Barrier::new(threads);
    let (span_tx, spans) = mpsc::channel();
    thread::scope(|s| {
        let orders: Vec<mpsc::Sender<u64>> = workers
            .into_iter()
            .map(|worker| {
                let (order, iters) = mpsc::channel();
                let samples = Samples {
                    iters,
                    spans: span_tx.clone(),
                    barrier: &barrier,
                };
                s.spawn(move || worker(&samples));
                order
            })
            .collect();
        g.bench_function(name, |b| {
            b.iter_custom(|iters| {
                for order in &orders {
                    order.send(iters).unwrap();
                }
                let spans: Vec<(Instant, Instant)> = spans.iter().take(threads).collect();
                let start = spans.iter().map(|&(start, _)| start).min().unwrap();
                let end = spans.iter().map(|&(_, end)| end).max().unwrap();
                end - start
            })
        });
        // Dropping `orders` ends the workers' samples; the scope joins them.
    });
}

/// O4: O3's churn on [`THREADS`] threads at once, each over its own live
/// set; an iteration is one step on every thread.
fn o4<S: Shared>(g: &mut Group<'_>, name: &str, a: &S) {
    let workers = (0..THREADS).map(|t| churn_worker(a, 4 + t as u64));
    threaded(g, name, workers.collect());
}

fn o4_threaded_churn(c: &mut Criterion) {
    let mut g = c.benchmark_group("O4 churn, 2 threads x 50k live, 8B-4KiB mix");
    g.throughput(Throughput::Elements(THREADS as u64));
    each_shared_allocator!(g, o4);
    g.finish();
}

/// An object on its way from the thread that allocated it to the one
/// that frees it.
struct Object(NonNull<u8>);
// SAFETY: the producer gives the object up when it sends it; only the
// consumer touches it afterwards (to free it).
unsafe impl Send for Object {}

/// O5: thread 0 allocates 64-byte objects and sends them in batches of
/// [`O5_BATCH`] over a channel (at most [`O5_IN_FLIGHT`] batches queued, so
/// the live set stays bounded); thread 1 frees them. An iteration is a
/// round of [`O5_OBJECTS`] objects, timed from the producer's first
/// allocation to the consumer's last free.
fn o5<S: Shared>(g: &mut Group<'_>, name: &str, a: &S) {
    let (tx, rx) = mpsc::sync_channel::<Vec<Object>>(O5_IN_FLIGHT);
    let batches = |iters: u64| iters as usize * O5_OBJECTS / O5_BATCH;
    let producer: Worker<'_> = Box::new(move |samples| {
        samples.each(|iters| {
            for _ in 0..batches(iters) {
                let batch = (0..O5_BATCH).map(|_| Object(a.alloc(64))).collect();
                tx.send(batch).unwrap();
            }
        })
    });
    let consumer: Worker<'_> = Box::new(move |samples| {
        samples.each(|iters| {
            for batch in rx.iter().take(batches(iters)) {
                for Object(p) in batch {
                    a.free(p, 64);
                }
            }
        })
    });
    threaded(g, name, vec![producer, consumer]);
}

fn o5_remote_free(c: &mut Criterion) {
    let mut g = c.benchmark_group("O5 remote free, 64B, batches of 1000");
    g.throughput(Throughput::Elements(O5_OBJECTS as u64));
    g.sample_size(10);
    each_shared_allocator!(g, o5);
    g.finish();
}

/// O3's memory efficiency for kmm: bytes requested by live objects over
/// bytes of slab pages held (cache descriptors excluded), pages counted by
/// the zones with their per-CPU lists drained.
fn o3_efficiency() {
    let Kmm(k) = kmm();
    let free_pages = || {
        k.zones().drain_all_pages();
        k.zones().nr_free_pages()
    };
    let base = free_pages();
    let mut rng = SmallRng::seed_from_u64(3);
    let mut live: Vec<(NonNull<u8>, usize)> = (0..O3_LIVE)
        .map(|_| {
            let s = mix_size(&mut rng);
            (k.kmalloc(s, GFP_KERNEL).unwrap(), s)
        })
        .collect();
    for _ in 0..200_000 {
        let slot = rng.gen_range(0..O3_LIVE);
        // SAFETY: `live[slot]` is an object kmalloc returned and nothing
        // else holds; it is freed once and replaced at once.
        unsafe { k.kfree(live[slot].0.as_ptr()) }.unwrap();
        let s = mix_size(&mut rng);
        live[slot] = (k.kmalloc(s, GFP_KERNEL).unwrap(), s);
    }
    let requested: usize = live.iter().map(|&(_, s)| s).sum();
    // SAFETY: every `live` object is allocated and held by this loop.
    let usable: usize = live
        .iter()
        .map(|&(p, _)| unsafe { k.ksize(p.as_ptr()) }.unwrap())
        .sum();
    let held = (base - free_pages()) * PAGE_SIZE;
    eprintln!(
        "O3 memory efficiency: {requested} bytes requested, {usable} bytes of ksize / \
         {held} bytes of slab pages = {:.3} requested, {:.3} ksize",
        requested as f64 / held as f64,
        usable as f64 / held as f64
    );
    for (p, _) in live {
        // SAFETY: as above; each object is freed once.
        unsafe { k.kfree(p.as_ptr()) }.unwrap();
    }
    // What stays with nothing allocated and no shrink asked for: the
    // per-CPU arrays' objects and the empty slabs each cache keeps.
    let kept = base - free_pages();
    eprintln!(
        "O3 after every object is freed, before any shrink: {kept} pages held ({:.1} MiB)",
        (kept * PAGE_SIZE) as f64 / f64::from(1 << 20)
    );
}

fn config() -> Criterion {
    o3_efficiency();
    Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3))
}

criterion_group! {
    name = benches;
    config = config();
    targets = o1_pairs, o2_shuffled, o3_churn, o4_threaded_churn, o5_remote_free
}
criterion_main!(benches);
