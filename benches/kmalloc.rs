//! kmalloc against peer allocators on the workloads of the slab issue:
//! O1 64-byte alloc+free pairs, O2 100,000 64-byte allocations freed in
//! shuffled order, O3 churn over 50,000 live objects of a kernel-like size
//! mix (8 B to 4 KiB). The peers: glibc (`System`) and mimalloc, each
//! called through its `GlobalAlloc`, and talc, slabmalloc,
//! linked_list_allocator and buddy_system_allocator, each over its own
//! arena. kmm is the hosted
//! `MemoryManager` (zones and slab composed), driven from the thread that
//! owns its CPU 0, so pinning is a thread-local read (as a kernel with
//! preemption disabled). kmm runs twice: `kmm-kmalloc` frees with the
//! checked `kfree` (one compare-and-swap of the object's state, so racing
//! double frees are refused), `kmm-global` through the `GlobalAlloc`
//! adaptor, whose trusted free stores the state instead. Prints O3's
//! memory efficiency for kmm before the runs.
//!
//! `cargo bench --bench kmalloc --features std -- --warm-up-time 1 --measurement-time 3`

#![allow(missing_docs)] // criterion's macros generate undocumented items

use criterion::{
    black_box, criterion_group, criterion_main, measurement::WallTime, BenchmarkGroup, Criterion,
    Throughput,
};
use kmm::{HostedMemoryManager, MemoryManager};
use kmm_api::{GFP_KERNEL, PAGE_SIZE};
use mimalloc::MiMalloc;
use rand::{rngs::SmallRng, seq::SliceRandom, Rng, SeedableRng};
use std::{
    alloc::{GlobalAlloc, Layout, System},
    ptr::NonNull,
    time::Duration,
};

const ARENA: usize = 256 << 20;
const O2_OBJECTS: usize = 100_000;
const O3_LIVE: usize = 50_000;

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
/// allocator): glibc (`System`), mimalloc, and kmm through its adaptor
/// (kmalloc classes, trusted free).
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

fn kmm() -> Kmm {
    Kmm(MemoryManager::hosted(ARENA, 1).unwrap())
}

/// The hosted manager behind the `GlobalKmalloc` adaptor, reached as a
/// kernel reaches its own (a `'static` once-initialised slot); one manager
/// serves every workload of this contender.
fn kmm_global() -> Global<kmm::GlobalKmalloc<kmm::hosted::Hosted, kmm::hosted::Hosted>> {
    static MM: std::sync::OnceLock<HostedMemoryManager> = std::sync::OnceLock::new();
    static GLOBAL: kmm::GlobalKmalloc<kmm::hosted::Hosted, kmm::hosted::Hosted> =
        kmm::GlobalKmalloc::new(|| MM.get().map(MemoryManager::kmem));
    MM.get_or_init(|| kmm().0);
    Global(&GLOBAL)
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
/// dispatch in the measured loop), each over its own arena.
macro_rules! each_allocator {
    ($group:expr, $workload:ident) => {
        $workload(&mut $group, "kmm-kmalloc", &kmm());
        $workload(&mut $group, "kmm-global", &kmm_global());
        $workload(&mut $group, "system-malloc", &Global(&System));
        $workload(&mut $group, "mimalloc", &Global(&MiMalloc));
        $workload(&mut $group, "talc", talc());
        $workload(&mut $group, "slabmalloc", slabmalloc());
        $workload(&mut $group, "linked_list_allocator", linked_list());
        $workload(&mut $group, "buddy_system_allocator", buddy());
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

fn o1<A: Bench>(g: &mut Group<'_>, name: &str, mut a: A) {
    // Warm the caches so the pair is the steady-state fast path.
    let p = a.alloc(64);
    a.free(p, 64);
    g.bench_function(name, |b| {
        b.iter(|| {
            let p = a.alloc(black_box(64));
            a.free(black_box(p), 64);
        })
    });
}

fn o1_pairs(c: &mut Criterion) {
    let mut g = c.benchmark_group("O1 64B alloc+free pair");
    each_allocator!(g, o1);
    g.finish();
}

fn o2<A: Bench>(g: &mut Group<'_>, name: &str, mut a: A) {
    let mut order: Vec<usize> = (0..O2_OBJECTS).collect();
    order.shuffle(&mut SmallRng::seed_from_u64(2));
    let mut ptrs = Vec::with_capacity(O2_OBJECTS);
    g.bench_function(name, |b| {
        b.iter(|| {
            ptrs.clear();
            for _ in 0..O2_OBJECTS {
                ptrs.push(a.alloc(64));
            }
            for &i in &order {
                a.free(ptrs[i], 64);
            }
        })
    });
}

fn o2_shuffled(c: &mut Criterion) {
    let mut g = c.benchmark_group("O2 100k x 64B, shuffled frees");
    g.throughput(Throughput::Elements(O2_OBJECTS as u64));
    g.sample_size(10);
    each_allocator!(g, o2);
    g.finish();
}

fn o3<A: Bench>(g: &mut Group<'_>, name: &str, mut a: A) {
    let mut rng = SmallRng::seed_from_u64(3);
    let steps: Vec<(usize, usize)> = (0..1 << 16)
        .map(|_| (rng.gen_range(0..O3_LIVE), mix_size(&mut rng)))
        .collect();
    let mut live: Vec<(NonNull<u8>, usize)> = (0..O3_LIVE)
        .map(|_| {
            let s = mix_size(&mut rng);
            (a.alloc(s), s)
        })
        .collect();
    let mut at = 0;
    g.bench_function(name, |b| {
        b.iter(|| {
            let (slot, size) = steps[at & (steps.len() - 1)];
            at += 1;
            let (p, old) = live[slot];
            a.free(p, old);
            live[slot] = (a.alloc(size), size);
        })
    });
}

fn o3_churn(c: &mut Criterion) {
    let mut g = c.benchmark_group("O3 churn, 50k live, 8B-4KiB mix");
    each_allocator!(g, o3);
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
    let held = (base - free_pages()) * PAGE_SIZE;
    eprintln!(
        "O3 memory efficiency: {requested} bytes requested / {held} bytes of slab pages = {:.3}",
        requested as f64 / held as f64
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
    targets = o1_pairs, o2_shuffled, o3_churn
}
criterion_main!(benches);
