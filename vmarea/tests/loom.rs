//! loom models of what vmalloc's CPUs share: `vfree_atomic`'s lock-free
//! deferred list (two CPUs pushing while a third drains), and the per-CPU
//! vmap blocks of `vm_map_ram` (two CPUs mapping and unmapping small
//! ranges from their blocks, one of them migrating, while the ranges of a
//! retired block are unmapped from both, so whichever CPU unmaps the last
//! one frees the block).
//!
//! Every shared word is a loom object here: the area allocator's lock and
//! the vmap blocks' list and block locks are `kmm_api::sync::SpinLock`s
//! (loom mutexes under `--cfg loom`), the deferred head, the per-CPU slots
//! and the block links are `kmm_api::sync` atomics, the link written into
//! a queued area's first word is a loom cell (kmm-vmarea's `loom_link`),
//! and the CPUs' pins are loom atomics; the one exception, the vmap
//! blocks' address index (plain words in source objects), is read and
//! written only under the list lock. The test doubles' own std locks
//! (frames, page table, object source) are held only inside one call and
//! add no ordering loom could rely on. Each model counts the interleavings
//! it explored and asserts a floor.
//!
//! `RUSTFLAGS="--cfg loom" cargo test -p kmm-vmarea --features testing --test loom --release`
#![cfg(loom)]

use kmm_api::sync::{AtomicBool, Ordering};
use kmm_api::{FrameAllocator, PageProt, Pages, Platform, PreemptControl, VirtAddr, PAGE_SIZE};
use kmm_vmarea::testing::{BufferSource, TestFrames, TestMemory, TestTable};
use kmm_vmarea::{Vmalloc, VmapAreas, VMAP_MAX_ALLOC};
use loom::{cell::Cell, sync::Arc, thread};
use std::sync::atomic::{AtomicUsize as StdAtomicUsize, Ordering as StdOrdering};

loom::thread_local!(static CPU: Cell<usize> = Cell::new(0));

/// CPUs of the model machine.
const NR_CPUS: usize = 2;

fn on_cpu(cpu: usize) {
    CPU.with(|c| c.set(cpu));
}

/// Loom-visible CPU pinning: each loom thread names its CPU (and may
/// migrate between sections); the id is held exclusively through a loom
/// atomic, as the `PreemptControl` contract demands.
struct LoomCpus {
    pinned: [AtomicBool; NR_CPUS],
}

impl Platform for LoomCpus {
    fn nr_cpus(&self) -> usize {
        NR_CPUS
    }
    fn cpu_id(&self) -> usize {
        CPU.with(Cell::get)
    }
}

// SAFETY: an id is handed out only while its flag is held.
unsafe impl PreemptControl for LoomCpus {
    fn get_cpu(&self) -> usize {
        let cpu = self.cpu_id();
        while self.pinned[cpu]
            .compare_exchange(false, true, Ordering::Acquire, Ordering::Relaxed)
            .is_err()
        {
            thread::yield_now();
        }
        cpu
    }
    fn put_cpu(&self, cpu: usize) {
        self.pinned[cpu].store(false, Ordering::Release);
    }
}

/// Runs `f` under loom with at most `bound` preemptions and returns how
/// many interleavings were explored.
fn explore(bound: usize, f: impl Fn() + Sync + Send + 'static) -> usize {
    let runs = std::sync::Arc::new(StdAtomicUsize::new(0));
    let counter = runs.clone();
    let mut builder = loom::model::Builder::new();
    if builder.preemption_bound.is_none() {
        builder.preemption_bound = Some(bound);
    }
    builder.max_branches = 1_000_000;
    builder.check(move || {
        counter.fetch_add(1, StdOrdering::Relaxed);
        f();
    });
    runs.load(StdOrdering::Relaxed)
}

/// Asserts a model explored at least `floor` interleavings: loom's search
/// is deterministic, so each floor sits a little under today's count, and
/// a change that hides shared state from loom (or stops the threads from
/// meeting) drops below it.
fn assert_explored(name: &str, explored: usize, floor: usize) {
    println!("{name}: loom explored {explored} interleavings");
    assert!(
        explored >= floor,
        "{name}: only {explored} interleavings explored (floor {floor})"
    );
}

const START: usize = 0xf880_0000;

type Plain = Vmalloc<TestFrames, TestTable, BufferSource, TestMemory>;
type Blocks = Vmalloc<TestFrames, TestTable, BufferSource, TestMemory, LoomCpus>;

fn parts(
    pages: usize,
    frames: usize,
) -> (VmapAreas<BufferSource>, TestFrames, TestTable, TestMemory) {
    let (start, end) = (
        VirtAddr::new(START),
        VirtAddr::new(START + pages * PAGE_SIZE),
    );
    let areas = VmapAreas::new(BufferSource::pages(16), start, end, NR_CPUS).unwrap();
    (
        areas,
        TestFrames::new(frames),
        TestTable::default(),
        TestMemory::new(start, PAGE_SIZE),
    )
}

/// Two CPUs `vfree_atomic` one area each while a third drains the list:
/// every area is freed exactly once, by one of the two drains, and no
/// frame or mapping is left behind.
#[test]
fn vfree_atomic_pushes_race_a_drain_and_no_area_is_lost_or_freed_twice() {
    let explored = explore(3, || {
        let (areas, frames, table, memory) = parts(64, 8);
        // SAFETY: the table maps the range for this vmalloc alone.
        let v: Arc<Plain> = Arc::new(unsafe { Vmalloc::new(areas, frames, table, memory) });
        let [a, b, warm] = [(); 3].map(|_| v.vmalloc(PAGE_SIZE).unwrap());
        // One push and drain before the race: the link table exists.
        // SAFETY: we give `warm` up.
        unsafe { v.vfree_atomic(warm) };
        assert_eq!(v.drain_deferred(), 1);
        let pushers: Vec<_> = [a, b]
            .into_iter()
            .map(|addr| {
                let v = v.clone();
                // SAFETY: each thread gives its own live area up.
                thread::spawn(move || unsafe { v.vfree_atomic(addr) })
            })
            .collect();
        let mut drained = v.drain_deferred();
        for t in pushers {
            t.join().unwrap();
        }
        drained += v.drain_deferred();
        assert_eq!(drained, 2, "each queued area freed once");
        assert_eq!(v.stats().vfrees, 3);
        assert_eq!(v.frames().in_use(), 0, "no frame lost");
        assert_eq!(v.table().mapped(), 0);
        v.check().unwrap();
    });
    assert_explored("vfree_atomic vs drain", explored, 500);
}

/// `n` frames held by the caller.
fn hold(v: &Blocks, n: usize) -> Vec<Pages> {
    (0..n)
        .map(|_| {
            v.frames()
                .alloc_frames(kmm_api::GFP_KERNEL, kmm_api::Order::ZERO)
                .unwrap()
        })
        .collect()
}

/// CPU 0 fills a block with two largest requests (it is retired, on the
/// block list only). Then thread 1 maps a page on CPU 0, migrates to
/// CPU 1, maps another and unmaps the first large range; thread 2, on
/// CPU 1, maps two pages, unmaps the second large range and its own. The
/// full block is freed exactly once, by whichever unmaps last; the CPUs'
/// own blocks stay; nothing is mapped that should not be.
#[test]
fn per_cpu_blocks_map_and_unmap_across_a_migration_and_a_remote_block_free() {
    let explored = explore(3, || {
        on_cpu(0);
        let (areas, frames, table, memory) = parts(512, 2 * VMAP_MAX_ALLOC + 4);
        let cpus = LoomCpus {
            pinned: std::array::from_fn(|_| AtomicBool::new(false)),
        };
        // SAFETY: the table maps the range for this vmalloc alone.
        let v: Arc<Blocks> = Arc::new(
            unsafe { Vmalloc::with_vmap_blocks(areas, frames, table, memory, cpus) }.unwrap(),
        );
        let block_pages = v.stats().vmap_block_pages;
        assert_eq!(block_pages, 2 * VMAP_MAX_ALLOC);
        let big = hold(&v, 2 * VMAP_MAX_ALLOC);
        let [x, y] = [0, 1].map(|i| {
            v.vm_map_ram(
                &big[i * VMAP_MAX_ALLOC..(i + 1) * VMAP_MAX_ALLOC],
                PageProt::KERNEL,
            )
            .unwrap()
        });
        assert_eq!(v.stats().vmap_blocks, 1);
        let small = hold(&v, 4);
        let (p_page, q_page, r_pages) = (
            small[0].pfn(),
            small[1].pfn(),
            [small[2].pfn(), small[3].pfn()],
        );
        let v1 = v.clone();
        let t1 = thread::spawn(move || {
            on_cpu(0);
            // SAFETY: the frames are held by the model for its whole run.
            let p = [unsafe {
                Pages::from_raw(p_page, kmm_api::Order::ZERO, v1.frames().allocator_id())
            }];
            let pa = v1.vm_map_ram(&p, PageProt::KERNEL).unwrap();
            on_cpu(1); // migrated
                       // SAFETY: as above.
            let q = [unsafe {
                Pages::from_raw(q_page, kmm_api::Order::ZERO, v1.frames().allocator_id())
            }];
            let qa = v1.vm_map_ram(&q, PageProt::KERNEL).unwrap();
            // SAFETY: this thread gives up the first large range and `p`.
            unsafe {
                v1.vm_unmap_ram(x, VMAP_MAX_ALLOC).unwrap();
                v1.vm_unmap_ram(pa, 1).unwrap();
            }
            let _ = p.map(Pages::into_raw);
            let _ = q.map(Pages::into_raw);
            qa
        });
        let v2 = v.clone();
        let t2 = thread::spawn(move || {
            on_cpu(1);
            // SAFETY: as above.
            let r = r_pages.map(|pfn| unsafe {
                Pages::from_raw(pfn, kmm_api::Order::ZERO, v2.frames().allocator_id())
            });
            let ra = v2.vm_map_ram(&r, PageProt::KERNEL).unwrap();
            // SAFETY: this thread gives up the second large range and `r`.
            unsafe {
                v2.vm_unmap_ram(y, VMAP_MAX_ALLOC).unwrap();
                v2.vm_unmap_ram(ra, 2).unwrap();
            }
            let _ = r.map(Pages::into_raw);
        });
        let qa = t1.join().unwrap();
        t2.join().unwrap();
        v.check().unwrap();
        assert_eq!(v.table().mapped(), 1, "only q is mapped");
        assert_eq!(v.vmalloc_to_page(qa), Some(q_page));
        assert_eq!(v.stats().vm_map_ram, 1);
        let stats = v.stats();
        assert_eq!(
            v.areas().find_vmap_area(x),
            None,
            "the full block was freed: {stats:?}"
        );
        // Each CPU's current block, and at most one more: the block a
        // thread made while another context of its CPU installed one,
        // retired at once, kept while `q` lives in it.
        assert!((1..=NR_CPUS + 1).contains(&stats.vmap_blocks), "{stats:?}");
        assert!(
            stats.areas.lazy_pages >= block_pages || stats.areas.purges > 0,
            "the freed block's range went to the lazy purge: {stats:?}"
        );
        // SAFETY: we give q up.
        unsafe { v.vm_unmap_ram(qa, 1) }.unwrap();
        assert!(v.purge());
        assert_eq!(v.table().stale(), 0);
        v.check().unwrap();
    });
    // 7,427 today: fewer than when vm_unmap_ram walked the block list,
    // whose link loads were loom atomics; the address index that replaced
    // the walk is read and written only under the list lock, a loom mutex.
    assert_explored("vmap blocks", explored, 7000);
}
