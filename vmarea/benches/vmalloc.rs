//! Linux `lib/test_vmalloc.c` workloads at the vmalloc level: every area
//! backed by frames, mapped page by page into a page table that records
//! each entry without a system call (`ArrayTable`: one atomic per entry,
//! as a last-level table), freed with its frames, and (for kmm) its range
//! purged lazily. Beside kmm, in the same run, a first-fit peer doing the
//! same work, so only the range allocator differs:
//!
//! - `kmm`: [`Vmalloc`] with per-CPU vmap blocks, on a 4 GiB range at the
//!   x86-64 `VMALLOC_START` (room for 10^5 1-page areas, their guards and
//!   holes; the 64-bit preset's 32 TiB would need a 64 GiB flat table),
//!   2 CPUs: frees are lazy, purges (one counted flush each) run inside
//!   the loop, as in Linux;
//! - `first-fit`: the range from `common::FirstFitRanges`, then the same
//!   frame allocations, owner words and entry writes; a free unmaps, frees
//!   the frames and flushes the range at once (it has no lazy purge, so it
//!   must flush before the range is reused; the flush here is only
//!   counted, on both sides).
//!
//! Workloads: `common::test_vmalloc`'s, and `vm_map_ram_<n>`: Linux's
//! `vm_map_ram_test`, `vm_map_ram` + `vm_unmap_ram` of n held frames (kmm
//! carves them from its CPU's vmap block; the peer takes a range each);
//! `vm_map_ram_fifo`: 3,200 live 64-page mappings (200 kmm blocks), the
//! oldest unmapped and a new one mapped each iteration.
//!
//! Before the timings the bench prints the metadata bytes per live area:
//! kmm's from its object source (every node chunk, directory, block
//! descriptor and per-CPU table it holds), the peer's as the heap bytes
//! its two `BTreeMap`s hold, counted by this bench's global allocator.

// `criterion_group!` defines an undocumented public function.
#![allow(missing_docs)]

mod common;

use common::{populate, Areas, FirstFitRanges, Layout, CPUS, LIVE, PAGE, VMALLOC_START};
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use kmm_api::{
    FrameAllocator, GfpFlags, KernelPageTable, ObjectSource, Order, OwnerTag, OwnerWord, PageOwner,
    PageProt, Pages, VirtAddr, GFP_KERNEL,
};
use kmm_vmarea::testing::{ArrayTable, BufferSource, TestCpus, TestFrames, TestMemory};
use kmm_vmarea::{VmFlags, Vmalloc, VmapAreas, NUMA_NO_NODE};
use std::alloc::{GlobalAlloc, Layout as AllocLayout, System};
use std::hint::black_box;
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};

/// The benchmarked range: 4 GiB, a flat table of 1 Mi entries.
const RANGE: usize = 4 << 30;

/// Frames: 10^5 live 1-page areas and their one-page holes, with room.
const FRAMES: usize = 300_000;

/// vmalloc's frames: highmem first (what `vmalloc` asks for).
const GFP: GfpFlags = GFP_KERNEL.union(GfpFlags::HIGHMEM);

/// The system allocator, counting the bytes it holds, so the peer's
/// `BTreeMap` nodes can be measured.
struct Counting;

static HEAP_BYTES: AtomicUsize = AtomicUsize::new(0);

// SAFETY: forwards every call to `System` unchanged; the counter only
// observes sizes.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: AllocLayout) -> *mut u8 {
        HEAP_BYTES.fetch_add(layout.size(), Relaxed);
        // SAFETY: our caller's contract, forwarded.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: AllocLayout) {
        HEAP_BYTES.fetch_sub(layout.size(), Relaxed);
        // SAFETY: our caller's contract, forwarded.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

/// The benchmarked machine's parts, fresh: frames, the flat table over the
/// range, and the range's start.
fn parts() -> (TestFrames, ArrayTable, VirtAddr) {
    let start = VirtAddr::new(VMALLOC_START);
    (
        TestFrames::new(FRAMES),
        ArrayTable::new(start, RANGE / PAGE),
        start,
    )
}

/// What `vm_map_ram_test` needs beside [`Areas`].
trait MapRam: Areas {
    fn frames(&self) -> &TestFrames;
    /// Maps the held `pages` at a new address.
    fn map_ram(&mut self, pages: &[Pages]) -> usize;
    /// Removes the `count`-page mapping `map_ram` made at `addr`.
    fn unmap_ram(&mut self, addr: usize, count: usize);
}

type KmmVmalloc = Vmalloc<TestFrames, ArrayTable, BufferSource, TestMemory, TestCpus>;

struct Kmm(KmmVmalloc);

impl Kmm {
    fn new() -> Self {
        TestCpus::run_on(0);
        let (frames, table, start) = parts();
        let end = VirtAddr::new(start.as_usize() + RANGE);
        let source = BufferSource::pages(8192);
        let areas = VmapAreas::new(source, start, end, CPUS).expect("a valid range");
        // vfree_atomic's link is the only use of the memory: one page.
        let memory = TestMemory::new(start, PAGE);
        let cpus = TestCpus::new(CPUS);
        // SAFETY: the table maps this range for this vmalloc alone, the
        // frames are the table's to map, and the memory stands for the
        // range's first page (no workload calls vfree_atomic).
        let v = unsafe { Vmalloc::with_vmap_blocks(areas, frames, table, memory, cpus) };
        Kmm(v.expect("page-sized objects hold a block"))
    }
}

impl Areas for Kmm {
    const NAME: &'static str = "kmm";
    fn alloc_area(&mut self, size: usize, align: usize, guard: bool) -> usize {
        let flags = if guard {
            VmFlags::ALLOC
        } else {
            VmFlags::ALLOC | VmFlags::NO_GUARD
        };
        let addr =
            self.0
                .vmalloc_node_range(size, align, GFP, PageProt::KERNEL, flags, NUMA_NO_NODE);
        addr.expect("the workloads fit").as_usize()
    }
    fn free(&mut self, addr: usize) {
        // SAFETY: the workload gives the area up.
        unsafe { self.0.vfree(VirtAddr::new(addr)) }.expect("a live area");
    }
    fn settle(&mut self) {
        self.0.purge();
    }
}

impl MapRam for Kmm {
    fn frames(&self) -> &TestFrames {
        self.0.frames()
    }
    fn map_ram(&mut self, pages: &[Pages]) -> usize {
        let addr = self.0.vm_map_ram(pages, PageProt::KERNEL);
        addr.expect("the workload fits").as_usize()
    }
    fn unmap_ram(&mut self, addr: usize, count: usize) {
        // SAFETY: the workload made this mapping and gives it up.
        unsafe { self.0.vm_unmap_ram(VirtAddr::new(addr), count) }.expect("a live mapping");
    }
}

/// The peer: first-fit ranges, then the same frame and page-table work
/// as kmm's vmalloc.
struct FirstFit {
    ranges: FirstFitRanges,
    frames: TestFrames,
    table: ArrayTable,
}

impl FirstFit {
    fn new() -> Self {
        let (frames, table, start) = parts();
        FirstFit {
            ranges: FirstFitRanges::new(start.as_usize(), RANGE),
            frames,
            table,
        }
    }

    /// The owner word of a vmalloc frame, as kmm's vmalloc writes it.
    fn vmalloc_word() -> OwnerWord {
        OwnerWord::new(OwnerTag::Vmalloc, 0).expect("a tag with no payload")
    }

    /// Maps `pfns` from `addr` on.
    fn map(&self, addr: usize, pfns: impl Iterator<Item = kmm_api::Pfn>) {
        for (i, pfn) in pfns.enumerate() {
            let at = VirtAddr::new(addr + i * PAGE);
            // SAFETY: the page is of a range just taken for us, unmapped,
            // and the frame is held (by us or the workload).
            unsafe { self.table.map(at, pfn, PageProt::KERNEL) }.expect("a fresh page");
        }
    }

    /// Unmaps the `len` bytes from `addr` (a page that is not mapped, as
    /// the guard page, is passed over), freeing the frames if `owned`,
    /// and flushes the range: first fit has no lazy purge, so the flush
    /// comes before anyone can reuse the range. One thread: the range,
    /// already back in the free map, is not taken in between.
    fn unmap(&self, addr: usize, len: usize, owned: bool) {
        for page in (addr..addr + len).step_by(PAGE) {
            // SAFETY: a page of a range we mapped and the workload gave up.
            let Ok((pfn, flush)) = (unsafe { self.table.unmap(VirtAddr::new(page)) }) else {
                continue;
            };
            flush.defer();
            if owned {
                // SAFETY: clearing the word we set.
                let ours = unsafe {
                    self.frames
                        .replace_owner(pfn, Self::vmalloc_word(), OwnerWord::NONE)
                };
                assert_eq!(ours, Ok(true), "a frame vmalloc took");
                // SAFETY: an order-0 frame we took from `frames` and held
                // through the mapping.
                let frame =
                    unsafe { Pages::from_raw(pfn, Order::ZERO, self.frames.allocator_id()) };
                self.frames.free_frames(frame).expect("our frame");
            }
        }
        let end = VirtAddr::new(addr + len);
        self.table.flush_tlb_range(VirtAddr::new(addr), end);
    }
}

impl Areas for FirstFit {
    const NAME: &'static str = "first-fit";
    fn alloc_area(&mut self, size: usize, align: usize, guard: bool) -> usize {
        let pages = size.div_ceil(PAGE);
        let addr = self
            .ranges
            .alloc((pages + usize::from(guard)) * PAGE, align);
        for i in 0..pages {
            let frame = self.frames.alloc_frames(GFP, Order::ZERO).expect("frames");
            // SAFETY: we hold the frame, just allocated.
            unsafe { self.frames.set_owner(frame.pfn(), Self::vmalloc_word()) }
                .expect("a held frame");
            self.map(addr + i * PAGE, [frame.pfn()].into_iter());
            let _ = frame.into_raw(); // held from here on through the mapping
        }
        addr
    }
    fn free(&mut self, addr: usize) {
        let len = self.ranges.free(addr);
        self.unmap(addr, len, true);
    }
    fn settle(&mut self) {}
}

impl MapRam for FirstFit {
    fn frames(&self) -> &TestFrames {
        &self.frames
    }
    fn map_ram(&mut self, pages: &[Pages]) -> usize {
        let addr = self.ranges.alloc(pages.len() * PAGE, PAGE);
        self.map(addr, pages.iter().map(Pages::pfn));
        addr
    }
    fn unmap_ram(&mut self, addr: usize, count: usize) {
        let len = self.ranges.free(addr);
        assert_eq!(len, count * PAGE, "vm_unmap_ram's count is the mapped one");
        self.unmap(addr, len, false);
    }
}

/// `n` frames held by the workload.
fn hold<A: MapRam>(vm: &A, n: usize) -> Vec<Pages> {
    (0..n)
        .map(|_| vm.frames().alloc_frames(GFP_KERNEL, Order::ZERO))
        .collect::<Result<_, _>>()
        .expect("frames")
}

/// Live 64-page mappings of the `vm_map_ram_fifo` workload: 16 to a kmm
/// block of 1,024 pages, so 200 live blocks.
const FIFO_MAPPINGS: usize = 3200;

/// Linux's `vm_map_ram_test`: `vm_map_ram` + `vm_unmap_ram` of `n` frames
/// the workload holds (Linux's default is 1); and `vm_map_ram_fifo`:
/// [`FIFO_MAPPINGS`] live mappings of [`kmm_vmarea::VMAP_MAX_ALLOC`] pages,
/// each iteration unmapping the oldest (in kmm, in the oldest live block,
/// which `vm_unmap_ram` must find among 200) and mapping a new one.
fn vm_map_ram_test<A: MapRam>(c: &mut Criterion, make: impl Fn() -> A) {
    let mut group = c.benchmark_group("vmalloc");
    for n in [1, 16] {
        let mut vm = make();
        let held = hold(&vm, n);
        group.bench_function(BenchmarkId::new(format!("vm_map_ram_{n}"), A::NAME), |b| {
            b.iter(|| {
                let addr = vm.map_ram(black_box(&held));
                vm.unmap_ram(addr, n);
            })
        });
        for frame in held {
            vm.frames().free_frames(frame).expect("held frames");
        }
    }
    let mut vm = make();
    // The same frames in every mapping: vm_map_ram only maps them.
    let held = hold(&vm, kmm_vmarea::VMAP_MAX_ALLOC);
    let mut live: std::collections::VecDeque<usize> =
        (0..FIFO_MAPPINGS).map(|_| vm.map_ram(&held)).collect();
    group.bench_function(BenchmarkId::new("vm_map_ram_fifo", A::NAME), |b| {
        b.iter(|| {
            let oldest = live.pop_front().expect("live mappings");
            vm.unmap_ram(oldest, held.len());
            live.push_back(vm.map_ram(black_box(&held)));
        })
    });
    for addr in live {
        vm.unmap_ram(addr, held.len());
    }
    for frame in held {
        vm.frames().free_frames(frame).expect("held frames");
    }
    group.finish();
}

/// Metadata bytes per live area with `LIVE` live 1-page areas, packed and
/// with exact-fit holes: kmm's objects taken from its source, and the
/// peer's `BTreeMap` bytes on the heap.
fn report_metadata() {
    for (layout, how) in [("packed", Layout::Packed), ("fit_holes", Layout::FitHoles)] {
        for (count, live) in LIVE {
            let mut kmm = Kmm::new();
            populate(&mut kmm, live, how);
            let source = kmm.0.areas().with_areas(|a| {
                let source = a.source();
                source.in_use() * source.object_size()
            });
            let stats = kmm.0.stats().areas;
            drop(kmm);
            let mut peer = FirstFit::new();
            let before = HEAP_BYTES.load(Relaxed);
            drop(populate(&mut peer, live, how));
            let peer_bytes = HEAP_BYTES.load(Relaxed) - before;
            println!(
                "metadata, {count} live areas {layout}: kmm {} nodes, {source} bytes from the source \
                 ({:.1} per live area); first-fit {peer_bytes} heap bytes ({:.1} per live area)",
                stats.nodes,
                source as f64 / stats.nr_areas as f64,
                peer_bytes as f64 / live as f64,
            );
        }
    }
}

fn vmalloc(c: &mut Criterion) {
    report_metadata();
    common::test_vmalloc(c, "vmalloc", Kmm::new);
    common::test_vmalloc(c, "vmalloc", FirstFit::new);
    vm_map_ram_test(c, Kmm::new);
    vm_map_ram_test(c, FirstFit::new);
}

criterion_group!(benches, vmalloc);
criterion_main!(benches);
