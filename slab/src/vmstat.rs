//! The slab layer's lines of `/proc/meminfo` (`Slab`, `SReclaimable`,
//! `SUnreclaim`) and `/proc/vmstat` (`nr_slab_reclaimable`,
//! `nr_slab_unreclaimable`), in pages. Reads each cache's slab count as
//! published at its node's last unlock, with the table lock held for the
//! walk and no node lock; never changes anything.

use crate::{
    flags::SlabFlags,
    kmem::{Kmem, SlabBackend},
};
use core::fmt;
use kmm_api::sync::Ordering::Relaxed;

/// Pages the slab layer holds as Linux counts them for `/proc/meminfo`
/// and `/proc/vmstat`.
///
/// Slab pages are those of the slabs on the caches' lists (a slab being
/// built or discarded at the moment of the walk is not among them). The
/// pages of the cache descriptors and their per-CPU arrays are not counted:
/// Linux keeps those in a `kmem_cache` slab of its own and in per-CPU
/// memory (`Percpu` in meminfo), not in the caches a kernel creates.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default)]
pub struct NrSlabPages {
    /// `nr_slab_reclaimable` (meminfo `SReclaimable`): slabs of
    /// `SLAB_RECLAIM_ACCOUNT` caches, which a shrinker can give back.
    pub nr_slab_reclaimable: usize,
    /// `nr_slab_unreclaimable` (meminfo `SUnreclaim`): slabs of every other
    /// cache, and the pages of large kmallocs (above
    /// [`crate::KMALLOC_MAX_CACHE_SIZE`]), which Linux counts here too.
    pub nr_slab_unreclaimable: usize,
}

impl NrSlabPages {
    /// meminfo `Slab`: both kinds together.
    pub fn total(&self) -> usize {
        self.nr_slab_reclaimable
            .saturating_add(self.nr_slab_unreclaimable)
    }
}

/// The two `/proc/vmstat` lines, `name value` each.
impl fmt::Display for NrSlabPages {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "nr_slab_reclaimable {}", self.nr_slab_reclaimable)?;
        writeln!(f, "nr_slab_unreclaimable {}", self.nr_slab_unreclaimable)
    }
}

impl<B: SlabBackend> Kmem<B> {
    /// The slab pages by kind (see [`NrSlabPages`]). O(caches), no node
    /// lock; never taken by an allocation or a free.
    ///
    /// ```
    /// use kmm_slab::{testing::HostMachine, Kmem, KmemConfig, SlabFlags};
    /// use kmm_api::GFP_KERNEL;
    ///
    /// let machine = HostMachine::new(512, 1);
    /// let kmem = Kmem::new(&machine, KmemConfig::default()).unwrap();
    /// let dentries = kmem
    ///     .kmem_cache_create("dentry", 192, 8, SlabFlags::RECLAIM_ACCOUNT, None)
    ///     .unwrap();
    /// let d = kmem.kmem_cache_alloc(dentries, GFP_KERNEL).unwrap();
    /// let pages = kmem.nr_slab_pages();
    /// let per_slab = kmem.kmem_cache_info(dentries).unwrap().pages_per_slab;
    /// assert_eq!(pages.nr_slab_reclaimable, per_slab);
    /// assert!(pages.to_string().starts_with("nr_slab_reclaimable "));
    /// // SAFETY: we hold `d` and give it up.
    /// unsafe { kmem.kmem_cache_free(dentries, d.as_ptr()).unwrap() };
    /// kmem.shrink_all();
    /// assert_eq!(kmem.nr_slab_pages().total(), 0);
    /// ```
    pub fn nr_slab_pages(&self) -> NrSlabPages {
        let mut pages = NrSlabPages {
            nr_slab_reclaimable: 0,
            nr_slab_unreclaimable: self.large_kmalloc_pages.load(Relaxed),
        };
        let table = self.lock_table();
        for c in self.caches(&table) {
            let slab_pages = c.node.nr_slabs() * c.geo.pages();
            let kind = if c.flags.contains(SlabFlags::RECLAIM_ACCOUNT) {
                &mut pages.nr_slab_reclaimable
            } else {
                &mut pages.nr_slab_unreclaimable
            };
            *kind = kind.saturating_add(slab_pages);
        }
        pages
    }

    /// Bytes of per-CPU memory the caches use (meminfo `Percpu`): every
    /// live cache's per-CPU object arrays, one per CPU. O(caches).
    pub fn percpu_bytes(&self) -> usize {
        let table = self.lock_table();
        self.caches(&table)
            .map(|c| {
                c.nr_cpus
                    .saturating_mul(core::mem::size_of::<crate::cpu::CpuArray>())
            })
            .fold(0, usize::saturating_add)
    }
}
