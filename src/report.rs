//! What the [`MemoryManager`] reports about itself and its self-checks:
//! `/proc/meminfo` over every layer, `/proc/vmstat`, `/proc/buddyinfo` and
//! `/proc/zoneinfo`, one [`MemoryManager::check`] over every layer's
//! invariant checker, `drop_caches`, and the page allocator's shrinker
//! registry.
//!
//! Reads every layer's state and writes none, except `drop_caches`, which
//! gives cached memory back exactly as the layers' own shrinkers would.

use crate::layout::Arch;
use crate::x86::Mmu;
use crate::{CheckReport, Error, MemoryManager};
use core::fmt;
use kmm_api::{DirectMap, OwnerTag, PreemptControl, Shrinker, PAGE_SHIFT};
use kmm_zones::{VmStat, ZoneReport};

/// `/proc/meminfo`: every line the layers can fill, in Linux's order and
/// format. Counts are pages unless named `_bytes`.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct MemInfo {
    /// `MemTotal`: pages the zones manage (`totalram_pages`).
    pub total: usize,
    /// `MemFree`: pages on the zones' free lists.
    pub free: usize,
    /// `MemAvailable`: Linux's `si_mem_available` estimate of what can be
    /// allocated without swapping: free pages above the reserves, plus the
    /// part of reclaimable slab a shrink would give back.
    pub available: usize,
    /// `HighTotal` and `HighFree`, on a layout with highmem (32-bit x86,
    /// Linux's `CONFIG_HIGHMEM`); `None` on 64-bit, where Linux prints
    /// neither them nor `LowTotal`/`LowFree`.
    pub high: Option<(usize, usize)>,
    /// `SReclaimable`: slabs of caches a shrinker may give back.
    pub slab_reclaimable: usize,
    /// `SUnreclaim`: every other slab, and large kmallocs.
    pub slab_unreclaimable: usize,
    /// `PageTables`: frames held as page-table pages.
    pub page_tables: usize,
    /// `VmallocTotal`: bytes of the vmalloc range.
    pub vmalloc_total_bytes: usize,
    /// `VmallocUsed`: pages mapped by live vmalloc areas.
    pub vmalloc_used: usize,
    /// `Percpu`: bytes of per-CPU structures (page lists, event counters,
    /// slab object arrays).
    pub percpu_bytes: usize,
}

impl fmt::Display for MemInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kb = |pages: usize| (pages as u64) << (PAGE_SHIFT - 10);
        let line = |f: &mut fmt::Formatter<'_>, label: &str, kbytes: u64| {
            // Linux pads the label to 16 columns and the value to 8.
            writeln!(f, "{label:<16}{kbytes:>8} kB")
        };
        line(f, "MemTotal:", kb(self.total))?;
        line(f, "MemFree:", kb(self.free))?;
        line(f, "MemAvailable:", kb(self.available))?;
        // No page cache and no swap: their lines say so.
        for label in ["Buffers:", "Cached:", "SwapCached:"] {
            line(f, label, 0)?;
        }
        if let Some((high_total, high_free)) = self.high {
            line(f, "HighTotal:", kb(high_total))?;
            line(f, "HighFree:", kb(high_free))?;
            line(f, "LowTotal:", kb(self.total.saturating_sub(high_total)))?;
            line(f, "LowFree:", kb(self.free.saturating_sub(high_free)))?;
        }
        line(f, "SwapTotal:", 0)?;
        line(f, "SwapFree:", 0)?;
        let slab = self
            .slab_reclaimable
            .saturating_add(self.slab_unreclaimable);
        line(f, "KReclaimable:", kb(self.slab_reclaimable))?;
        line(f, "Slab:", kb(slab))?;
        line(f, "SReclaimable:", kb(self.slab_reclaimable))?;
        line(f, "SUnreclaim:", kb(self.slab_unreclaimable))?;
        line(f, "PageTables:", kb(self.page_tables))?;
        line(f, "VmallocTotal:", (self.vmalloc_total_bytes >> 10) as u64)?;
        line(f, "VmallocUsed:", kb(self.vmalloc_used))?;
        // Linux has printed 0 here since 4.4: finding the largest free
        // chunk walked every area.
        line(f, "VmallocChunk:", 0)?;
        line(f, "Percpu:", (self.percpu_bytes >> 10) as u64)
    }
}

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

impl<P: PreemptControl + 'static, D: DirectMap + 'static, M: Mmu + 'static> MemoryManager<P, D, M> {
    /// `/proc/meminfo`, from the zones, the slab layer and the layout.
    /// O(zones + caches); each layer is read under its own locks in turn,
    /// so the lines are each exact but not one atomic snapshot.
    ///
    /// ```
    /// # #[cfg(all(feature = "std", target_pointer_width = "64"))] {
    /// # let mm = kmm::MemoryManager::hosted(32 << 20, 1)?;
    /// let info = mm.meminfo();
    /// assert_eq!(info.total, mm.totalram_pages());
    /// assert_eq!(info.high, None, "a 64-bit machine has no highmem lines");
    /// assert!(info.available <= info.free + info.slab_reclaimable);
    /// let text = info.to_string();
    /// assert!(text.starts_with(&format!("MemTotal:       {:>8} kB\n", info.total * 4)));
    /// assert!(text.contains("\nSwapTotal:             0 kB\n"));
    /// # }
    /// # Ok::<(), kmm::Error>(())
    /// ```
    pub fn meminfo(&self) -> MemInfo {
        let zones = self.zones();
        let report = zones.zone_report();
        let totals = report.meminfo();
        let slab = self.kmem().nr_slab_pages();
        let free = zones.nr_free_pages();
        let wmark_low: usize = report.zones().iter().map(|z| z.watermarks.low).sum();
        // Linux `si_mem_available`: free pages above the reserves, plus the
        // half (at most) of reclaimable slab that a shrink would not keep.
        let reclaimable = slab.nr_slab_reclaimable;
        let available = free
            .saturating_sub(zones.totalreserve_pages())
            .saturating_add(reclaimable - (reclaimable / 2).min(wmark_low));
        let layout = self.layout();
        MemInfo {
            total: totals.total_pages,
            free,
            available,
            high: matches!(layout.arch(), Arch::I386 { .. })
                .then_some((totals.high_total_pages, totals.high_free_pages)),
            slab_reclaimable: slab.nr_slab_reclaimable,
            slab_unreclaimable: slab.nr_slab_unreclaimable,
            page_tables: zones.nr_owned_pages(OwnerTag::PageTable),
            vmalloc_total_bytes: layout.vmalloc_end().as_usize()
                - layout.vmalloc_start().as_usize(),
            vmalloc_used: self
                .vmalloc_layer()
                .map_or(0, |vm| vm.stats().vmalloc_pages),
            percpu_bytes: zones.percpu_bytes() + self.kmem().percpu_bytes(),
        }
    }

    /// `/proc/vmstat`: the zones' counters (free pages, `pgalloc_*`,
    /// `pgfree`, `allocstall_*`, ...) with the slab layer's page counts.
    /// Counters are per CPU and summed here, so a read racing allocations
    /// is a moment stale, never torn.
    ///
    /// ```
    /// # #[cfg(all(feature = "std", target_pointer_width = "64"))] {
    /// # let mm = kmm::MemoryManager::hosted(32 << 20, 1)?;
    /// let before = mm.vmstat();
    /// let block = mm.alloc_pages(kmm::GFP_KERNEL, kmm::Order::new(4)?)?;
    /// mm.__free_pages(block)?;
    /// let after = mm.vmstat();
    /// assert_eq!(after.pgalloc_total() - before.pgalloc_total(), 16);
    /// assert_eq!(after.pgfree - before.pgfree, 16);
    /// assert!(after.to_string().contains("\npgalloc_normal "));
    /// # }
    /// # Ok::<(), kmm::Error>(())
    /// ```
    pub fn vmstat(&self) -> VmStat {
        let slab = self.kmem().nr_slab_pages();
        let mut stat = self.zones().vmstat();
        stat.nr_slab_reclaimable = Some(slab.nr_slab_reclaimable);
        stat.nr_slab_unreclaimable = Some(slab.nr_slab_unreclaimable);
        stat
    }

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
    // The report is the point (each layer's first broken invariant), on a
    // cold O(memory) path; the manager's `Error` carries only the layers.
    #[allow(clippy::result_large_err)]
    pub fn check(&self) -> Result<(), CheckReport> {
        let report = CheckReport {
            zones: self.zones().check().err(),
            slab: self.kmem().check_invariants().err(),
            vmalloc: self.vmalloc_layer().and_then(|vm| vm.check().err()),
        };
        if report.is_clean() {
            Ok(())
        } else {
            Err(report)
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
