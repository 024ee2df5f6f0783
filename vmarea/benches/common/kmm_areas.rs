//! kmm's contender in the area bench and its callgrind driver: the area
//! allocator alone (`VmapAreas`, no pages) over the x86-64 vmalloc range.
//! The purge's flushes are deferred: there is no page table to flush.

use crate::common::{Areas, CPUS, VMALLOC_START};
use kmm_api::{VirtAddr, GFP_KERNEL};
use kmm_vmarea::testing::BufferSource;
use kmm_vmarea::{VmFlags, VmapAreas};

/// The x86-64 vmalloc size.
pub const VMALLOC_SIZE: usize = 32 << 40;

pub struct Kmm(VmapAreas<BufferSource>);

impl Kmm {
    pub fn new() -> Self {
        let source = BufferSource::pages(8192);
        let start = VirtAddr::new(VMALLOC_START);
        let end = VirtAddr::new(VMALLOC_START + VMALLOC_SIZE);
        Kmm(VmapAreas::new(source, start, end, CPUS).expect("a valid range"))
    }

    /// The allocator, for its counters.
    pub fn areas(&self) -> &VmapAreas<BufferSource> {
        &self.0
    }
}

impl Areas for Kmm {
    const NAME: &'static str = "kmm";
    fn alloc_area(&mut self, size: usize, align: usize, guard: bool) -> usize {
        let flags = if guard {
            VmFlags::ALLOC
        } else {
            VmFlags::MAP | VmFlags::NO_GUARD
        };
        let area = self.0.alloc(size, align, flags, GFP_KERNEL);
        area.expect("32 TiB never runs out").start().as_usize()
    }
    fn free(&mut self, addr: usize) {
        let freed = self.0.free(VirtAddr::new(addr)).expect("a live area");
        // No page table here: the purge's flush is owed to nobody.
        if let Some(flush) = freed.flush {
            flush.defer();
        }
    }
    fn settle(&mut self) {
        if let Some(flush) = self.0.purge() {
            flush.defer();
        }
    }
}
