//! The slab layer as a [`Shrinker`]: under memory pressure the zones' reclaim
//! path asks how many pages empty slabs hold and has them returned. The
//! count reads each cache's published counters under the cache-table lock,
//! taking no node lock (reclaim asks before every retry of a failing
//! request); the scan takes each cache's node lock in turn. Never blocks.

use crate::kmem::{Kmem, SlabBackend};
use kmm_api::{GfpFlags, Shrinker};

impl<B: SlabBackend> Shrinker for Kmem<B> {
    fn count_objects(&self) -> usize {
        let table = self.lock_table();
        self.caches(&table)
            .map(|c| c.node.nr_empty() * c.geo.pages())
            .sum()
    }

    fn scan_objects(&self, _gfp: GfpFlags, nr_to_scan: usize) -> usize {
        let flushed = self.flush_every_cpu().0;
        flushed + self.discard_empty_slabs(nr_to_scan.saturating_sub(flushed))
    }
}

#[cfg(test)]
mod tests {
    extern crate std;
    use crate::{testing::HostMachine, Kmem, KmemConfig};
    use kmm_api::{Shrinker, GFP_KERNEL};

    #[test]
    fn reclaim_through_the_shrinker_returns_empty_slabs() {
        let m = HostMachine::new(if cfg!(miri) { 200 } else { 1024 }, 1);
        let k = Kmem::new(&m, KmemConfig::default()).unwrap();
        let objs: std::vec::Vec<_> = (0..40)
            .map(|_| k.kmalloc(1024, GFP_KERNEL).unwrap())
            .collect();
        for p in objs {
            // SAFETY: a single-threaded test freeing what it allocated.
            unsafe { k.kfree(p.as_ptr()) }.unwrap();
        }
        k.drain_local();
        let empty = k.count_objects();
        assert!(empty > 0, "drained slabs are empty and reclaimable");
        let before = m.frames_in_use();
        assert!(k.scan_objects(GFP_KERNEL, usize::MAX) >= empty);
        assert_eq!(k.count_objects(), 0);
        assert!(m.frames_in_use() <= before - empty);
    }
}
