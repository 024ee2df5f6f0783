//! What the [`MemoryManager`] reports about itself and its self-checks:
//! one [`MemoryManager::check`] over every layer's invariant checker, and
//! `drop_caches`.
//!
//! Reads every layer's state and writes none, except `drop_caches`, which
//! gives cached memory back exactly as the layers' own shrinkers would.

use crate::{CheckReport, Error, MemoryManager};
use kmm_api::{DirectMap, PreemptControl};

impl<P: PreemptControl + 'static, D: DirectMap + 'static> MemoryManager<P, D> {
    /// Runs every layer's invariant checker (the zones' buddies, per-CPU
    /// lists, descriptors and counters; every slab cache's lists, counters
    /// and object states) and reports each layer that failed, with the
    /// first broken invariant of each. Takes each layer's locks in turn,
    /// so it sees every structure at rest; O(frames + objects).
    ///
    /// ```
    /// # #[cfg(all(feature = "std", target_pointer_width = "64"))] {
    /// # let mm = kmm::MemoryManager::hosted(8 << 20, 1)?;
    /// let p = mm.kmalloc(64, kmm::GFP_KERNEL)?;
    /// mm.check()?;
    /// # unsafe { mm.kfree(p.as_ptr())? };
    /// # }
    /// # Ok::<(), kmm::Error>(())
    /// ```
    pub fn check(&self) -> Result<(), Error> {
        let report = CheckReport {
            zones: self.zones().check().err(),
            slab: self.kmem().check_invariants().err(),
        };
        if report.is_clean() {
            Ok(())
        } else {
            Err(Error::Check(report))
        }
    }

    /// Linux `drop_caches` (`echo 2 > /proc/sys/vm/drop_caches`, the slab
    /// part, `drop_slab`): every CPU's cached objects of every cache back to
    /// their slabs, every empty slab back to the zones, then every CPU's
    /// cached pages back to the buddy. Returns the slab pages freed. A CPU
    /// the platform cannot reach now keeps its cached objects (see
    /// `PreemptControl::on_cpu`).
    ///
    /// ```
    /// # #[cfg(all(feature = "std", target_pointer_width = "64"))] {
    /// # let mm = kmm::MemoryManager::hosted(8 << 20, 1)?;
    /// mm.drop_caches();
    /// let free = mm.nr_free_pages();
    /// let objects: Vec<_> = (0..500).map(|_| mm.kmalloc(256, kmm::GFP_KERNEL)).collect::<Result<_, _>>()?;
    /// for p in objects {
    ///     // SAFETY: we hold each object and give it up.
    ///     unsafe { mm.kfree(p.as_ptr())? };
    /// }
    /// assert!(mm.nr_free_pages() < free, "the slabs are still cached");
    /// assert!(mm.drop_caches() > 0);
    /// assert_eq!(mm.nr_free_pages(), free);
    /// # }
    /// # Ok::<(), kmm::Error>(())
    /// ```
    pub fn drop_caches(&self) -> usize {
        let freed = self.kmem().shrink_all();
        self.zones().drain_all_pages();
        freed
    }
}
