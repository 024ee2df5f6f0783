//! The zone-policy workload the tour runs (feature `std`): each step
//! exercises one rule of the page allocator on a booted manager and returns
//! what it saw, so `examples/tour.rs` prints it and the integration tests
//! assert it from the same run. Owns only the blocks it allocates, and
//! gives every one back in [`Held::release`]; never reaches into the
//! allocator's internals.
//!
//! The rules shown, in the order [`run`] shows them:
//!
//! 1. each GFP zone modifier is served by its zone ([`placements`]);
//! 2. `GFP_KERNEL` never goes upward into HIGHMEM, however much is free
//!    there ([`never_upward`]);
//! 3. a HIGHMEM request falls back to NORMAL once HIGHMEM is down to its
//!    watermark, and DMA is not touched ([`drain_zone`]);
//! 4. NORMAL requests leave DMA alone until NORMAL is down to its
//!    watermark, then fall back to DMA ([`drain_zone`]);
//! 5. when `GFP_KERNEL` fails, `GFP_ATOMIC` still succeeds by dipping
//!    below `min` ([`atomic_reserve`]);
//! 6. `__get_free_pages(__GFP_HIGHMEM)` is refused: a highmem page has no
//!    address to return ([`highmem_address_refused`]).
//!
//! Then the slab layer's seed example ([`seed_example`], in `kmalloc`),
//! vmalloc's ([`vmalloc_example`], in `vmalloc`) and kmap's
//! ([`highmem_example`], in `highmem`).

use crate::MemoryManager;
use kmm_api::{
    DirectMap, Error, GfpFlags, Order, Pages, Pfn, PreemptControl, __GFP_HIGHMEM, GFP_ATOMIC,
    GFP_DMA, GFP_DMA32, GFP_HIGHUSER, GFP_KERNEL,
};
use kmm_zones::report::ZoneStats;
use kmm_zones::{ZoneType, Zones, MAX_NR_ZONES};
use std::vec::Vec;

mod highmem;
mod kmalloc;
mod vmalloc;
pub use highmem::{highmem_example, HighmemExample};
pub use kmalloc::{seed_example, SeedExample};
pub use vmalloc::{vmalloc_example, DeviceRead, VmallocExample, VMALLOC_EXAMPLE_BYTES};

type ZonesOf<P, D> = Zones<'static, P, D>;

/// Blocks the workload holds, freed together at the end.
#[derive(Default, Debug)]
pub struct Held(Vec<Pages>);

impl Held {
    /// Pages held.
    pub fn pages(&self) -> usize {
        self.0.iter().map(Pages::nr_pages).sum()
    }

    /// Frees every block; the first error is returned after trying all.
    pub fn release<P: PreemptControl, D: DirectMap>(
        &mut self,
        zones: &ZonesOf<P, D>,
    ) -> Result<(), Error> {
        let mut result = Ok(());
        for pages in self.0.drain(..) {
            let freed = zones.__free_pages(pages);
            if result.is_ok() {
                result = freed;
            }
        }
        result
    }
}

/// Free pages of every zone (0 for absent zones).
pub fn free_pages<P: PreemptControl, D: DirectMap>(zones: &ZonesOf<P, D>) -> [usize; MAX_NR_ZONES] {
    zones.zone_stats().map(|s| s.map_or(0, |s| s.free))
}

fn stats<P: PreemptControl, D: DirectMap>(
    zones: &ZonesOf<P, D>,
    zone: ZoneType,
) -> Option<ZoneStats> {
    zones.zone_stats()[zone.index()]
}

/// Where one request was served.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct Placement {
    /// The flags' Linux name.
    pub name: &'static str,
    /// The flags.
    pub gfp: GfpFlags,
    /// The frame returned.
    pub pfn: Pfn,
    /// Its zone.
    pub zone: ZoneType,
}

/// Step 1: one page for each common GFP combination, freed again.
pub fn placements<P: PreemptControl, D: DirectMap>(
    zones: &ZonesOf<P, D>,
) -> Result<Vec<Placement>, Error> {
    let requests = [
        ("GFP_DMA", GFP_DMA),
        ("GFP_DMA32", GFP_DMA32),
        ("GFP_KERNEL", GFP_KERNEL),
        ("GFP_HIGHUSER", GFP_HIGHUSER),
    ];
    let mut out = Vec::new();
    for (name, gfp) in requests {
        let page = zones.alloc_pages(gfp, Order::ZERO)?;
        let pfn = page.pfn();
        let zone = zones.page_zone(pfn).ok_or(Error::PfnOutOfRange { pfn })?;
        zones.__free_pages(page)?;
        out.push(Placement {
            name,
            gfp,
            pfn,
            zone,
        });
    }
    Ok(out)
}

/// Step 2: what `count` `GFP_KERNEL` pages were served from while HIGHMEM
/// had `highmem_free` pages free.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct NeverUpward {
    /// Pages requested.
    pub count: usize,
    /// Pages served per zone, by zone index.
    pub served: [usize; MAX_NR_ZONES],
    /// HIGHMEM's free pages at the start.
    pub highmem_free: usize,
}

/// Step 2: `count` `GFP_KERNEL` pages, freed again.
pub fn never_upward<P: PreemptControl, D: DirectMap>(
    zones: &ZonesOf<P, D>,
    count: usize,
) -> Result<NeverUpward, Error> {
    zones.drain_all_pages();
    let highmem_free = free_pages(zones)[ZoneType::HighMem.index()];
    let mut held = Held::default();
    let mut served = [0; MAX_NR_ZONES];
    for _ in 0..count {
        let page = zones.alloc_pages(GFP_KERNEL, Order::ZERO)?;
        if let Some(z) = zones.page_zone(page.pfn()) {
            served[z.index()] += 1;
        }
        held.0.push(page);
    }
    held.release(zones)?;
    Ok(NeverUpward {
        count,
        served,
        highmem_free,
    })
}

/// What draining one zone with one kind of request showed.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct Drain {
    /// The request's Linux name.
    pub name: &'static str,
    /// The zone being drained.
    pub zone: ZoneType,
    /// Pages taken from it before the first fallback.
    pub taken: usize,
    /// Its snapshot (per-CPU lists drained) when a single page could no
    /// longer come from it.
    pub at_fallback: ZoneStats,
    /// The single page that came from elsewhere, and its zone.
    pub fallback: Option<(Pfn, ZoneType)>,
    /// Free pages of every zone when the drain started.
    pub free_before: [usize; MAX_NR_ZONES],
    /// Free pages of every zone just before the fallback page was taken
    /// (the other zones' per-CPU lists were empty: they served nothing).
    pub free_at_fallback: [usize; MAX_NR_ZONES],
}

/// Steps 3 and 4: takes blocks with `gfp` from `zone`, largest orders
/// first, until even one page comes from another zone. Larger blocks that
/// fall back are given back at once (the zone may still hold smaller
/// ones), so the recorded fallback is a single page the zone truly could
/// not give above its watermark. Everything taken stays in `held`.
pub fn drain_zone<P: PreemptControl, D: DirectMap>(
    zones: &ZonesOf<P, D>,
    name: &'static str,
    gfp: GfpFlags,
    zone: ZoneType,
    held: &mut Held,
) -> Result<Drain, Error> {
    zones.drain_all_pages();
    let free_before = free_pages(zones);
    let max_order = zones.config().max_order;
    let mut taken = 0;
    for order in max_order.up_to().rev() {
        loop {
            let before = free_pages(zones);
            let Ok(pages) = zones.alloc_pages(gfp, order) else {
                break;
            };
            let pfn = pages.pfn();
            let got = zones.page_zone(pfn).ok_or(Error::PfnOutOfRange { pfn })?;
            if got == zone {
                held.0.push(pages);
                taken += order.pages();
                continue;
            }
            if order != Order::ZERO {
                // Back to the buddy itself, not a per-CPU list, so the free
                // counts show the other zones as they were.
                zones.__free_pages(pages)?;
                zones.drain_all_pages();
                break;
            }
            held.0.push(pages);
            // The zone's own per-CPU lists back on its free lists: what it
            // really had left when it refused.
            zones.drain_all_pages();
            let at_fallback = stats(zones, zone).ok_or(Error::InvalidGfp { gfp })?;
            return Ok(Drain {
                name,
                zone,
                taken,
                at_fallback,
                fallback: Some((pfn, got)),
                free_before,
                free_at_fallback: before,
            });
        }
    }
    let at_fallback = stats(zones, zone).ok_or(Error::InvalidGfp { gfp })?;
    Ok(Drain {
        name,
        zone,
        taken,
        at_fallback,
        fallback: None,
        free_before,
        free_at_fallback: free_pages(zones),
    })
}

/// Step 5: the reserve below `min` that only atomic requests may use.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct AtomicReserve {
    /// Pages `GFP_KERNEL` still got before it failed.
    pub kernel_pages: usize,
    /// Why `GFP_KERNEL` failed.
    pub kernel_error: Error,
    /// The page `GFP_ATOMIC` got right after, and its zone.
    pub atomic: (Pfn, ZoneType),
    /// That zone after the atomic allocation: its free pages are below min.
    pub after: ZoneStats,
}

/// Step 5: `GFP_KERNEL` pages until it fails, then one `GFP_ATOMIC` page;
/// all kept in `held`. Per-CPU lists are drained first so every free page
/// is on a free list and counted against the watermarks.
pub fn atomic_reserve<P: PreemptControl, D: DirectMap>(
    zones: &ZonesOf<P, D>,
    held: &mut Held,
) -> Result<AtomicReserve, Error> {
    zones.drain_all_pages();
    let mut kernel_pages = 0;
    let kernel_error = loop {
        match zones.alloc_pages(GFP_KERNEL, Order::ZERO) {
            Ok(page) => {
                held.0.push(page);
                kernel_pages += 1;
            }
            Err(e) => break e,
        }
    };
    let page = zones.alloc_pages(GFP_ATOMIC, Order::ZERO)?;
    let pfn = page.pfn();
    held.0.push(page);
    let zone = zones.page_zone(pfn).ok_or(Error::PfnOutOfRange { pfn })?;
    let after = stats(zones, zone).ok_or(Error::PfnOutOfRange { pfn })?;
    Ok(AtomicReserve {
        kernel_pages,
        kernel_error,
        atomic: (pfn, zone),
        after,
    })
}

/// Step 6: the refusal of `__get_free_pages(__GFP_HIGHMEM, 0)`; `None` if
/// it was (wrongly) granted, in which case the page is freed again.
pub fn highmem_address_refused<P: PreemptControl, D: DirectMap>(
    zones: &ZonesOf<P, D>,
) -> Option<Error> {
    match zones.__get_free_pages(__GFP_HIGHMEM, Order::ZERO) {
        Err(e) => Some(e),
        Ok(addr) => {
            // SAFETY: the page was just handed to us and nothing else knows
            // its address.
            let _ = unsafe { zones.free_pages(addr, Order::ZERO) };
            None
        }
    }
}

/// Everything [`run`] saw.
#[derive(Clone, Debug)]
pub struct Report {
    /// Step 1.
    pub placements: Vec<Placement>,
    /// Step 2.
    pub never_upward: NeverUpward,
    /// Step 3 (on machines with HIGHMEM).
    pub highmem: Option<Drain>,
    /// Step 4.
    pub normal: Drain,
    /// Step 5.
    pub atomic: AtomicReserve,
    /// Step 6.
    pub highmem_address: Option<Error>,
    /// Pages the workload held at its peak.
    pub peak_held: usize,
    /// Free pages (all zones) before the workload and after it released
    /// everything and drained the per-CPU lists.
    pub free_before_after: (usize, usize),
}

/// Runs every step in order on `mm`, then releases every block and drains
/// the per-CPU lists, so the zones end as they began.
pub fn run<P: PreemptControl, D: DirectMap, M: crate::x86::Mmu>(
    mm: &MemoryManager<P, D, M>,
) -> Result<Report, Error> {
    let zones = mm.zones();
    zones.drain_all_pages();
    let start_free = zones.nr_free_pages();
    let placements = placements(zones)?;
    let never_upward = never_upward(zones, 256)?;
    let mut held = Held::default();
    let result: Result<_, Error> = (|| {
        let highmem = match zones.populated_zones()[ZoneType::HighMem.index()] {
            true => Some(drain_zone(
                zones,
                "GFP_HIGHUSER",
                GFP_HIGHUSER,
                ZoneType::HighMem,
                &mut held,
            )?),
            false => None,
        };
        let normal = drain_zone(zones, "GFP_KERNEL", GFP_KERNEL, ZoneType::Normal, &mut held)?;
        let atomic = atomic_reserve(zones, &mut held)?;
        Ok((highmem, normal, atomic))
    })();
    let peak_held = held.pages();
    held.release(zones)?;
    let (highmem, normal, atomic) = result?;
    let highmem_address = highmem_address_refused(zones);
    zones.drain_all_pages();
    Ok(Report {
        placements,
        never_upward,
        highmem,
        normal,
        atomic,
        highmem_address,
        peak_held,
        free_before_after: (start_free, zones.nr_free_pages()),
    })
}
