//! Linux `lib/test_vmalloc.c` workloads at the area level (alloc + free of
//! the virtual range only, no pages), beside a first-fit range allocator
//! as today's Rust kernels have one (`common::FirstFitRanges`). Both
//! reserve the same guard page.
//!
//! - `kmm`: [`VmapAreas`] on a 32 TiB range (the x86-64 vmalloc size), 2
//!   CPUs (lazy threshold 16,384 pages): frees are lazy and purges happen
//!   inside the loop, as in Linux;
//! - `first-fit`: the peer, frees immediate: a kernel using it must flush
//!   the TLB on every free (an IPI to every CPU), a cost this area-only
//!   benchmark charges to neither side.
//!
//! The workloads are `common::test_vmalloc`'s. The metadata bytes per
//! live area are printed from the allocator's counters.

// `criterion_group!` defines an undocumented public function.
#![allow(missing_docs)]

mod common;

#[path = "common/kmm_areas.rs"]
mod kmm_areas;

use common::{populate, Areas, FirstFitRanges, Layout, PAGE, VMALLOC_START};
use criterion::{criterion_group, criterion_main, Criterion};
use kmm_areas::{Kmm, VMALLOC_SIZE};

/// The peer: the first-fit ranges alone, each area with its guard page.
struct FirstFit(FirstFitRanges);

impl Areas for FirstFit {
    const NAME: &'static str = "first-fit";
    fn alloc_area(&mut self, size: usize, align: usize, guard: bool) -> usize {
        let need = size.next_multiple_of(PAGE) + if guard { PAGE } else { 0 };
        self.0.alloc(need, align)
    }
    fn free(&mut self, addr: usize) {
        self.0.free(addr);
    }
    fn settle(&mut self) {}
}

/// Metadata bytes per live area, from the allocator's own counters.
fn report_metadata() {
    for (layout, how) in [("packed", Layout::Packed), ("fragmented", Layout::FitHoles)] {
        let mut areas = Kmm::new();
        populate(&mut areas, 15_000, how);
        let stats = areas.areas().stats();
        println!(
            "kmm metadata, 15,000 live areas {layout}: {} nodes, {} bytes from the source, {:.1} bytes per live area",
            stats.nodes,
            stats.metadata_bytes,
            stats.metadata_bytes as f64 / stats.nr_areas as f64
        );
    }
}

fn area_allocators(c: &mut Criterion) {
    report_metadata();
    common::test_vmalloc(c, "test_vmalloc", Kmm::new);
    common::test_vmalloc(c, "test_vmalloc", || {
        FirstFit(FirstFitRanges::new(VMALLOC_START, VMALLOC_SIZE))
    });
}

criterion_group!(benches, area_allocators);
criterion_main!(benches);
