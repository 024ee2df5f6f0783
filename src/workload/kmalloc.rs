//! The seed's slab example, run on a booted manager: `kmalloc(100)` is
//! served by kmalloc-128 from a slab in lowmem, `get_free_page` returns a
//! page by its direct-map address, and a second `kfree` of the same object
//! is refused. Owns the two allocations it makes and gives both back (and
//! the slab page, by shrinking), so the zones end as they began; never
//! reaches into the slab layer's internals.

use crate::{Error, MemoryManager};
use kmm_api::{DirectMap, Pfn, PreemptControl, VirtAddr, GFP_KERNEL};
use kmm_zones::ZoneType;
use std::string::{String, ToString};

/// What [`seed_example`] saw.
#[derive(Clone, Debug)]
pub struct SeedExample {
    /// Where `kmalloc(100, GFP_KERNEL)` put the object.
    pub kmalloc_addr: VirtAddr,
    /// The cache that served it.
    pub cache: &'static str,
    /// `ksize` of the object.
    pub ksize: usize,
    /// Objects per slab of that cache.
    pub objects_per_slab: usize,
    /// Pages per slab of that cache.
    pub pages_per_slab: usize,
    /// The first frame of the slab holding the object.
    pub slab_pfn: Pfn,
    /// The zone of that slab.
    pub slab_zone: ZoneType,
    /// What `get_free_page(GFP_KERNEL)` returned.
    pub page_addr: VirtAddr,
    /// Its frame.
    pub page_pfn: Pfn,
    /// Its zone.
    pub page_zone: ZoneType,
    /// The refusal of a second `kfree` of the object.
    pub double_free: Option<Error>,
    /// `/proc/slabinfo` while the object was live.
    pub slabinfo: String,
    /// Free pages before the example and after it gave everything back,
    /// shrank the caches and drained the per-CPU lists.
    pub free_before_after: (usize, usize),
}

/// Runs the example on `mm`; see the module documentation.
pub fn seed_example<P: PreemptControl, D: DirectMap, M: crate::x86::Mmu>(
    mm: &MemoryManager<P, D, M>,
) -> Result<SeedExample, Error> {
    let zones = mm.zones();
    zones.drain_all_pages();
    let free_before = zones.nr_free_pages();
    let obj = mm.kmalloc(100, GFP_KERNEL)?;
    let kmalloc_addr = zones.direct_map().ptr_to_virt(obj.as_ptr());
    // SAFETY: we hold `obj` (until the `kfree` below).
    let owner = unsafe { mm.kmem_cache_of(obj.as_ptr()) }?;
    let cache = owner
        .cache()
        .ok_or(kmm_slab::SlabError::InvalidPointer { addr: kmalloc_addr })?;
    let info = mm.kmem().kmem_cache_info(cache)?;
    // SAFETY: as above.
    let ksize = unsafe { mm.ksize(obj.as_ptr()) }?;
    let pfn = zones.virt_to_page(kmalloc_addr)?;
    // A slab is one buddy block, aligned to its own size.
    let slab_pfn = Pfn::new(pfn.as_usize() & !(info.pages_per_slab - 1));
    let slabinfo = mm.slabinfo().to_string();
    let page_addr = mm.get_free_page(GFP_KERNEL)?;
    let page_pfn = zones.virt_to_page(page_addr)?;
    let zone_of = |pfn| {
        zones
            .page_zone(pfn)
            .ok_or(kmm_api::Error::PfnOutOfRange { pfn })
    };
    let (slab_zone, page_zone) = (zone_of(slab_pfn)?, zone_of(page_pfn)?);
    // SAFETY: we hold the page and the object and give them up; the second
    // `kfree` passes a pointer nobody holds, which no other thread can
    // reallocate meanwhile (this example runs alone), and is refused.
    let double_free = unsafe {
        mm.free_page(page_addr)?;
        mm.kfree(obj.as_ptr())?;
        mm.kfree(obj.as_ptr()).err()
    };
    mm.kmem().shrink_all();
    zones.drain_all_pages();
    Ok(SeedExample {
        kmalloc_addr,
        cache: info.name,
        ksize,
        objects_per_slab: info.objects_per_slab,
        pages_per_slab: info.pages_per_slab,
        slab_pfn,
        slab_zone,
        page_addr,
        page_pfn,
        page_zone,
        double_free,
        slabinfo,
        free_before_after: (free_before, zones.nr_free_pages()),
    })
}
