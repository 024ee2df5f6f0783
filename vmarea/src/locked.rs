//! [`SharedVmapAreas`]: the allocator behind one [`SpinLock`] (Linux's
//! `free_vmap_area_lock` and `vmap_area_lock` folded into one), with the
//! lazy count kept under it.
//!
//! # Lock order and context
//!
//! One lock; nothing else is taken while it is held except the object
//! source (for nodes) and the TLB flush of a purge. The flush runs before
//! the lock is dropped, so no CPU can be handed a purged range while stale
//! translations of it may remain (Linux orders the same way: flush, then
//! merge into free space). Like Linux's vmalloc paths this is for process
//! context: the lock does not disable interrupts.
//!
//! Nothing here is lock-free (the loom model in `tests/loom.rs` covers
//! vmalloc's deferred list and vmap blocks around it): every shared
//! word is read and written under the lock.

use crate::check::Invariant;
use crate::error::VmareaError;
use crate::flags::VmFlags;
use crate::stats::VmapStats;
use crate::vmap_area::{VmapArea, VmapAreas};
use kmm_api::sync::SpinLock;
use kmm_api::{GfpFlags, KernelPageTable, ObjectSource, VirtAddr};

/// A [`VmapAreas`] shared by every CPU, `&self` throughout.
pub struct SharedVmapAreas<S: ObjectSource> {
    areas: SpinLock<VmapAreas<S>>,
}

impl<S: ObjectSource> SharedVmapAreas<S> {
    /// Shares `areas`.
    pub fn new(areas: VmapAreas<S>) -> Self {
        SharedVmapAreas {
            areas: SpinLock::new(areas),
        }
    }

    /// [`VmapAreas::alloc_purging`] under the lock: one purge (flushed on
    /// `tlb`) and one retry when no block fits.
    #[track_caller]
    pub fn alloc(
        &self,
        size: usize,
        align: usize,
        flags: VmFlags,
        gfp: GfpFlags,
        tlb: &(impl KernelPageTable + ?Sized),
    ) -> Result<VmapArea, VmareaError> {
        self.areas
            .lock()
            .alloc_purging(size, align, flags, gfp, tlb)
    }

    /// [`VmapAreas::free`] under the lock; a purge it triggers is flushed
    /// on `tlb` before the lock is released.
    pub fn free(
        &self,
        addr: VirtAddr,
        tlb: &(impl KernelPageTable + ?Sized),
    ) -> Result<VmapArea, VmareaError> {
        let mut areas = self.areas.lock();
        let freed = areas.free(addr)?;
        if let Some(flush) = freed.flush {
            flush.flush(tlb);
        }
        Ok(freed.area)
    }

    /// [`VmapAreas::detach`] under the lock.
    pub fn detach(&self, addr: VirtAddr, kind: VmFlags) -> Result<VmapArea, VmareaError> {
        self.areas.lock().detach(addr, kind)
    }

    /// [`VmapAreas::detach_map_ram`] under the lock.
    pub fn detach_map_ram(&self, addr: VirtAddr, pages: usize) -> Result<VmapArea, VmareaError> {
        self.areas.lock().detach_map_ram(addr, pages)
    }

    /// [`VmapAreas::release`] of a detached `area` under the lock; a purge
    /// it triggers is flushed on `tlb` before the lock is released. An area
    /// that is not detached is left alone.
    pub fn release(&self, area: VmapArea, tlb: &(impl KernelPageTable + ?Sized)) {
        let mut areas = self.areas.lock();
        if let Ok(freed) = areas.release(area.start()) {
            if let Some(flush) = freed.flush {
                flush.flush(tlb);
            }
        }
    }

    /// The range the areas tile, `[start, end)`.
    pub fn range(&self) -> (VirtAddr, VirtAddr) {
        self.areas.lock().range()
    }

    /// Purges every unpurged area now, flushing on `tlb` (Linux
    /// `vm_unmap_aliases`); whether anything was waiting.
    pub fn purge(&self, tlb: &(impl KernelPageTable + ?Sized)) -> bool {
        self.purge_merging(None, tlb)
    }

    /// [`SharedVmapAreas::purge`], with `extra` (a flush another part of
    /// vmalloc owes, as the vmap blocks' dirty ranges) folded into the
    /// same single flush; whether anything was flushed.
    pub fn purge_merging(
        &self,
        extra: Option<kmm_api::TlbFlush>,
        tlb: &(impl KernelPageTable + ?Sized),
    ) -> bool {
        let mut areas = self.areas.lock();
        let flush = match (areas.purge(), extra) {
            (Some(a), Some(b)) => Some(a.merge(b)),
            (a, b) => a.or(b),
        };
        match flush {
            Some(flush) => {
                flush.flush(tlb);
                true
            }
            None => false,
        }
    }

    /// [`VmapAreas::find_vmap_area`] under the lock.
    pub fn find_vmap_area(&self, addr: VirtAddr) -> Option<VmapArea> {
        self.areas.lock().find_vmap_area(addr)
    }

    /// [`VmapAreas::stats`] under the lock.
    pub fn stats(&self) -> VmapStats {
        self.areas.lock().stats()
    }

    /// [`VmapAreas::check`] under the lock.
    pub fn check(&self) -> Result<(), Invariant> {
        self.areas.lock().check()
    }

    /// Runs `report` on the allocator under the lock (to walk the areas
    /// for `/proc/vmallocinfo`).
    pub fn with_areas<R>(&self, report: impl FnOnce(&VmapAreas<S>) -> R) -> R {
        report(&self.areas.lock())
    }
}
