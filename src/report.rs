//! What the [`MemoryManager`] reports about itself and its self-checks:
//! `/proc/buddyinfo` and `/proc/zoneinfo`, one [`MemoryManager::check`]
//! over every layer's invariant checker, `drop_caches`, and the page
//! allocator's shrinker registry.
//!
//! Reads every layer's state and writes none, except `drop_caches`, which
//! gives cached memory back exactly as the layers' own shrinkers would.

use crate::{CheckReport, Error, MemoryManager};
use core::fmt;
use kmm_api::{DirectMap, PreemptControl, Shrinker};
use kmm_zones::ZoneReport;

/// `/proc/buddyinfo`: free blocks per order in each zone, from one
/// snapshot of the zones.
#[derive(Clone, Copy, Debug)]
pub struct BuddyInfo(ZoneReport);

impl fmt::Display for BuddyInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.buddyinfo().fmt(f)
    }
}

/// The watermark part of `/proc/zoneinfo`, from one snapshot of the zones.
#[derive(Clone, Copy, Debug)]
pub struct ZoneInfo(ZoneReport);

impl fmt::Display for ZoneInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.zoneinfo().fmt(f)
    }
}

impl<P: PreemptControl + 'static, D: DirectMap + 'static> MemoryManager<P, D> {
    /// `/proc/buddyinfo`.
    ///
    /// ```
    /// # #[cfg(all(feature = "std", target_pointer_width = "64"))] {
    /// # let mm = kmm::MemoryManager::hosted(32 << 20, 1)?;
    /// let text = mm.buddyinfo().to_string();
    /// assert!(text.starts_with("Node 0, zone      DMA "));
    /// // Blocks of each order, weighted by their size, are the free pages.
    /// let pages: usize = text
    ///     .lines()
    ///     .flat_map(|line| line.split_whitespace().skip(4).enumerate())
    ///     .map(|(order, blocks)| blocks.parse::<usize>().unwrap() << order)
    ///     .sum();
    /// assert_eq!(pages, mm.nr_free_pages());
    /// # }
    /// # Ok::<(), kmm::Error>(())
    /// ```
    pub fn buddyinfo(&self) -> BuddyInfo {
        BuddyInfo(self.zones().zone_report())
    }

    /// The watermark part of `/proc/zoneinfo`.
    pub fn zoneinfo(&self) -> ZoneInfo {
        ZoneInfo(self.zones().zone_report())
    }

    /// Linux `drain_all_pages`: every CPU's cached pages back to the buddy.
    pub fn drain_all_pages(&self) {
        self.zones().drain_all_pages()
    }

    /// Linux `register_shrinker`: the page allocator calls `shrinker` from
    /// the slow path of requests that may block (the manager's own slab
    /// layer is registered at boot).
    pub fn register_shrinker(&self, shrinker: &'static dyn Shrinker) -> Result<(), Error> {
        Ok(self.zones().register_shrinker(shrinker)?)
    }

    /// Linux `unregister_shrinker`; `false` if it was not registered.
    pub fn unregister_shrinker(&self, shrinker: &'static dyn Shrinker) -> bool {
        self.zones().unregister_shrinker(shrinker)
    }

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
