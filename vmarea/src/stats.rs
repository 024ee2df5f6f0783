//! The allocator's figures, in O(1): counts kept as it goes.

use crate::vmap_area::VmapAreas;
use kmm_api::ObjectSource;

/// A snapshot of the allocator's counters.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct VmapStats {
    /// Live areas.
    pub nr_areas: usize,
    /// Free blocks (always merged: no two adjacent).
    pub nr_free_blocks: usize,
    /// Freed ranges awaiting their purge (adjacent ones merged).
    pub nr_unpurged: usize,
    /// Purged areas waiting in the pools for an allocation of exactly
    /// their size (not counted in `nr_free_blocks` nor `largest_free`).
    pub nr_pooled: usize,
    /// Pages of the pooled areas, guard pages included.
    pub pooled_pages: usize,
    /// Areas freed since the last purge.
    pub lazy_areas: u64,
    /// The largest free block, in bytes (the free tree's root
    /// `subtree_max_size`).
    pub largest_free: usize,
    /// Pages of the unpurged areas, guard pages included (`vmap_lazy_nr`).
    pub lazy_pages: usize,
    /// The purge threshold (`lazy_max_pages()`).
    pub lazy_max_pages: usize,
    /// Purges run.
    pub purges: u64,
    /// TLB-flush tokens handed to callers (one per purge).
    pub flush_tokens: u64,
    /// Areas returned to free space by purges.
    pub purged_areas: u64,
    /// Nodes in use (one per area, free block, unpurged range and pooled
    /// area).
    pub nodes: usize,
    /// Bytes taken from the object source (node chunks and directories).
    pub metadata_bytes: usize,
}

impl<S: ObjectSource> VmapAreas<S> {
    /// The counters now.
    pub fn stats(&self) -> VmapStats {
        VmapStats {
            nr_areas: self.vmap_area_root.len(),
            nr_free_blocks: self.free_vmap_area_root.len(),
            nr_unpurged: self.purge_vmap_area_root.len(),
            nr_pooled: self.pool.nr_areas,
            pooled_pages: self.pool.nr_pages,
            lazy_areas: self.lazy.nr_areas,
            largest_free: self
                .free_vmap_area_root
                .root()
                .map_or(0, |root| self.arena.get(root).subtree_max),
            lazy_pages: self.lazy.nr_pages,
            lazy_max_pages: self.lazy.max_pages,
            purges: self.lazy.purges,
            flush_tokens: self.lazy.flush_tokens,
            purged_areas: self.lazy.purged_areas,
            nodes: self.arena.nr_live(),
            metadata_bytes: self.arena.metadata_bytes(),
        }
    }
}
