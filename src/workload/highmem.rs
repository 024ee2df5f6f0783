//! The tour's kmap example, run on a booted i386 manager: a frame above
//! 896 MiB kmapped and written through its pkmap address, unmapped, mapped
//! again through kmap_local at another address and read back; then the
//! pool filled past its size to show a wrap that costs one TLB flush, and
//! the pool's counters. Gives back every frame it took.

use crate::x86::Mmu;
use crate::{Error, MemoryManager};
use kmm_api::{DirectMap, Pfn, PreemptControl, VirtAddr, GFP_HIGHUSER};
use kmm_highmem::PkmapStats;
use std::vec::Vec;

/// What [`highmem_example`] saw.
#[derive(Clone, Debug)]
pub struct HighmemExample {
    /// The frame, above 896 MiB.
    pub pfn: Pfn,
    /// Its pkmap address while kmapped.
    pub pkmap_addr: VirtAddr,
    /// Its kmap_local (fixmap) address afterwards.
    pub local_addr: VirtAddr,
    /// The bytes read back through kmap_local.
    pub read_back: [u8; 8],
    /// Distinct pages kmapped in turn to wrap the pool.
    pub cycled: usize,
    /// The pool's counters before and after the cycle.
    pub stats_before_after: (PkmapStats, PkmapStats),
}

/// Runs the example.
pub fn highmem_example<P: PreemptControl, D: DirectMap, M: Mmu>(
    mm: &MemoryManager<P, D, M>,
) -> Result<HighmemExample, Error> {
    let km = mm
        .highmem()
        .ok_or(Error::Highmem(kmm_highmem::HighmemError::BadConfig {
            reason: "this machine has no pkmap range",
        }))?;
    let mut page = mm.alloc_page(GFP_HIGHUSER)?;
    let pfn = page.pfn();
    let pkmap_addr = {
        let mut map = mm.kmap(&mut page, 0)?;
        map[..8].copy_from_slice(b"highmem!");
        map.addr()
    };
    let (local_addr, read_back) = {
        let local = mm.kmap_local_page(&mut page, 0)?;
        let mut bytes = [0; 8];
        bytes.copy_from_slice(&local[..8]);
        (local.addr(), bytes)
    };
    // Enough distinct pages, kmapped and kunmapped one after another, to
    // go round the pool once more than it has slots.
    let cycled = mm.layout().last_pkmap() + 1;
    let before = km.stats();
    let mut pages = Vec::with_capacity(cycled);
    let mut taken = Ok(());
    for _ in 0..cycled {
        match mm.alloc_page(GFP_HIGHUSER) {
            Ok(mut p) => {
                taken = taken.and(mm.kmap(&mut p, 0).map(drop));
                pages.push(p);
            }
            Err(e) => taken = Err(e),
        }
    }
    let after = km.stats();
    for p in pages.into_iter().chain([page]) {
        mm.__free_page(p)?;
    }
    taken?;
    Ok(HighmemExample {
        pfn,
        pkmap_addr,
        local_addr,
        read_back,
        cycled,
        stats_before_after: (before, after),
    })
}
