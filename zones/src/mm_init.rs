//! Bringing the zones up (Linux `free_area_init`, `memblock_free_all`):
//! [`ZoneConfig`] says where the zones split; [`Zones::new`] carves
//! `mem_map` and the per-CPU lists from boot memory, builds one buddy per
//! populated zone, releases every free memblock range into its zone, and
//! computes managed pages, then `min_free_kbytes`, watermarks, lowmem
//! reserves and pcp sizing through the same code the `/proc/sys/vm`
//! tunables run ([`Zones::init_per_zone_wmark_min`]).
//!
//! Nothing here is sized for one machine: every array comes from the
//! [`BootMem`] the caller hands over, sized with [`Zones::metadata_bytes`].
//! This module runs once, single-threaded, before any allocation. It must
//! never release a frame memblock keeps reserved (the boot metadata among
//! them), nor need more boot memory than `metadata_bytes` promised.

use crate::boot::BootMem;
use crate::memblock::Memblock;
use crate::page::{Page, ZoneMeta};
use crate::pcp::PerCpuPages;
use crate::shrinker::ShrinkerRegistry;
use crate::sysctl::Tunables;
use crate::vmstat::VmEvents;
use crate::zone::{Zone, ZoneInit};
use crate::{ZoneType, Zones, MAX_NR_ZONES};
use kmm_api::sync::{AtomicUsize, SpinLock};
use kmm_api::{
    AllocatorId, DirectMap, Error, Order, Pfn, PreemptControl, MAX_PAGE_ORDER, PAGE_SHIFT,
};
use kmm_buddy::Buddy;

/// First frame above ZONE_DMA (Linux `MAX_DMA_PFN`: 16 MiB).
pub const MAX_DMA_PFN: Pfn = Pfn::new((16 << 20) >> PAGE_SHIFT);
/// First frame above ZONE_DMA32 (Linux `MAX_DMA32_PFN`: 4 GiB).
pub const MAX_DMA32_PFN: Pfn = Pfn::new(1 << (32 - PAGE_SHIFT));

/// Where the zones split: frames below `dma_end` are DMA, then DMA32 up to
/// `dma32_end` (64-bit layouts only), NORMAL up to `lowmem_end` (Linux
/// `max_low_pfn`), HIGHMEM above. As in Linux's `zone_sizes_init`, the DMA
/// zones are clamped to lowmem (an 8 MiB i386 machine is all ZONE_DMA) and
/// a limit below the previous one leaves its zone empty.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct ZoneConfig {
    /// One past the last DMA frame.
    pub dma_end: Pfn,
    /// One past the last DMA32 frame; `None` for layouts without DMA32.
    pub dma32_end: Option<Pfn>,
    /// One past the last frame of the direct map (`max_low_pfn`).
    pub lowmem_end: Pfn,
    /// Largest buddy order (Linux `MAX_PAGE_ORDER`).
    pub max_order: Order,
}

impl ZoneConfig {
    /// The i386 split: DMA below 16 MiB, NORMAL up to `lowmem_end`, HIGHMEM
    /// above, orders up to 10.
    pub const fn i386(lowmem_end: Pfn) -> Self {
        Self {
            dma_end: MAX_DMA_PFN,
            dma32_end: None,
            lowmem_end,
            max_order: MAX_PAGE_ORDER,
        }
    }

    /// The x86-64 split for memory ending at `end_pfn`: DMA below 16 MiB,
    /// DMA32 below 4 GiB, NORMAL above, everything direct-mapped.
    pub const fn x86_64(end_pfn: Pfn) -> Self {
        Self {
            dma_end: MAX_DMA_PFN,
            dma32_end: Some(MAX_DMA32_PFN),
            lowmem_end: if end_pfn.as_usize() > MAX_DMA32_PFN.as_usize() {
                end_pfn
            } else {
                MAX_DMA32_PFN
            },
            max_order: MAX_PAGE_ORDER,
        }
    }

    /// Each zone's `[start, end)` inside `[start, end)`, by zone index;
    /// together they tile the range.
    fn spans(&self, start: Pfn, end: Pfn) -> [(Pfn, Pfn); MAX_NR_ZONES] {
        // Each clamp below has its lower bound at or under its upper one.
        let end = end.max(start);
        let lowmem_end = self.lowmem_end.clamp(start, end);
        let dma_end = self.dma_end.clamp(start, lowmem_end);
        let dma32_end = self.dma32_end.unwrap_or(dma_end).clamp(dma_end, lowmem_end);
        let limits = [start, dma_end, dma32_end, lowmem_end, end];
        core::array::from_fn(|z| (limits[z], limits[z + 1]))
    }
}

/// RAM frames of each zone span.
fn present_pages(memblock: &Memblock, spans: &[(Pfn, Pfn); MAX_NR_ZONES]) -> [usize; MAX_NR_ZONES] {
    core::array::from_fn(|z| {
        let (lo, hi) = spans[z];
        memblock
            .memory_ranges()
            .map(|(s, e)| overlap((s, e), (lo, hi)).map_or(0, |(s, e)| e.as_usize() - s.as_usize()))
            .sum()
    })
}

/// The common part of two ranges, if any.
fn overlap(a: (Pfn, Pfn), b: (Pfn, Pfn)) -> Option<(Pfn, Pfn)> {
    let (lo, hi) = (a.0.max(b.0), a.1.min(b.1));
    (lo < hi).then_some((lo, hi))
}

impl<'a, P: PreemptControl, D: DirectMap> Zones<'a, P, D> {
    /// Bytes of boot memory [`Zones::new`] needs at worst: `mem_map` for
    /// `[memblock.start_pfn(), memblock.end_pfn())` plus one per-CPU list set
    /// per populated zone and CPU and one set of `/proc/vmstat` event
    /// counters per CPU, alignment padding included.
    pub fn metadata_bytes(memblock: &Memblock, config: &ZoneConfig, nr_cpus: usize) -> usize {
        let (start, end) = (memblock.start_pfn(), memblock.end_pfn());
        let frames = end.as_usize().saturating_sub(start.as_usize());
        let spans = config.spans(start, end);
        let populated = present_pages(memblock, &spans)
            .iter()
            .filter(|&&p| p > 0)
            .count();
        BootMem::footprint::<Page>(frames)
            .saturating_add(BootMem::footprint::<PerCpuPages>(
                populated.saturating_mul(nr_cpus.max(1)),
            ))
            .saturating_add(BootMem::footprint::<VmEvents>(nr_cpus.max(1)))
    }

    /// Boots the zones of the machine `memblock` describes. The caller has
    /// already reserved (in `memblock`) the range `boot_mem` lies in, so it
    /// is not released.
    ///
    /// Errors: [`Error::NoMemory`] for a memblock without RAM,
    /// [`Error::SizeTooLarge`] when `boot_mem` is smaller than
    /// [`Zones::metadata_bytes`], and the buddy's errors for a range it
    /// cannot describe (more than `u32::MAX - 1` frames in one zone).
    ///
    /// # Safety
    ///
    /// The frames `memblock` leaves free belong to these zones alone for
    /// their whole life (no other allocator, and no other `Zones`, hands
    /// them out or uses them), and `direct_map` maps this machine's lowmem:
    /// its `pfn_to_ptr(pfn)` reaches the frame these zones call `pfn`. The
    /// zones hand those frames out as exclusively the caller's and zero
    /// them through `direct_map`.
    #[allow(unsafe_code)]
    pub unsafe fn new(
        memblock: &Memblock,
        config: ZoneConfig,
        mut boot_mem: BootMem<'a>,
        platform: P,
        direct_map: D,
    ) -> Result<Self, Error> {
        let (start, end) = (memblock.start_pfn(), memblock.end_pfn());
        if end <= start {
            return Err(Error::NoMemory { order: Order::ZERO });
        }
        let spans = config.spans(start, end);
        let present = present_pages(memblock, &spans);
        let zone_of = |pfn: Pfn| {
            let z = spans.iter().position(|&(lo, hi)| lo <= pfn && pfn < hi);
            ZoneType::from_index(z.unwrap_or(0)).unwrap_or(ZoneType::Dma)
        };
        let frames = end.as_usize() - start.as_usize();
        let mem_map: &'a [Page] = boot_mem.carve(frames, |i| Page::new(zone_of(start.add(i))))?;
        let nr_cpus = platform.nr_cpus().max(1);
        let populated = present.iter().filter(|&&p| p > 0).count();
        // A CPU count whose lists cannot even be counted is refused, as a
        // count too large for `boot_mem` is.
        let lists = populated.checked_mul(nr_cpus).ok_or(Error::BadCpuCount {
            nr_cpus,
            max: usize::MAX,
        })?;
        let mut pcp: &'a [PerCpuPages] = boot_mem.carve(lists, |_| PerCpuPages::new())?;
        let vm_events: &'a [VmEvents] = boot_mem.carve(nr_cpus, |_| VmEvents::new())?;

        let mut buddies: [Option<Buddy<ZoneMeta<'a>>>; MAX_NR_ZONES] = [None, None, None, None];
        for (z, &(lo, hi)) in spans.iter().enumerate() {
            if present[z] > 0 {
                let pages =
                    &mem_map[lo.as_usize() - start.as_usize()..hi.as_usize() - start.as_usize()];
                let frames = hi.as_usize() - lo.as_usize();
                buddies[z] = Some(Buddy::new(
                    ZoneMeta { pages },
                    lo,
                    frames,
                    config.max_order,
                )?);
            }
        }
        for range in memblock.free_ranges() {
            for (z, buddy) in buddies.iter_mut().enumerate() {
                if let (Some(buddy), Some((lo, hi))) = (buddy, overlap(range, spans[z])) {
                    buddy.release_range(lo, hi)?;
                }
            }
        }

        let mut zones: [Option<Zone<'a>>; MAX_NR_ZONES] = [None, None, None, None];
        for (z, buddy) in buddies.into_iter().enumerate() {
            let Some(buddy) = buddy else { continue };
            let (lo, hi) = spans[z];
            let (mine, rest) = pcp.split_at(nr_cpus);
            pcp = rest;
            zones[z] = Some(Zone::new(ZoneInit {
                zone_type: ZoneType::from_index(z).unwrap_or(ZoneType::Dma),
                present: present[z],
                pages: &mem_map[lo.as_usize() - start.as_usize()..hi.as_usize() - start.as_usize()],
                buddy,
                pcp: mine,
            }));
        }
        let zones = Zones {
            mem_map,
            start_pfn: start,
            zones,
            config,
            platform,
            direct_map,
            shrinkers: ShrinkerRegistry::new(),
            bad_frees: AtomicUsize::new(0),
            owned_pages: core::array::from_fn(|_| AtomicUsize::new(0)),
            id: AllocatorId::new().ok_or(Error::IdsExhausted)?,
            tuning: SpinLock::new(Tunables::BOOT),
            vm_events,
        };
        // The marks start at zero, so this computes them from the managed
        // pages alone, as Linux's boot call of the same function does.
        zones.init_per_zone_wmark_min();
        Ok(zones)
    }

    /// The configuration the zones were built with.
    pub fn config(&self) -> &ZoneConfig {
        &self.config
    }

    /// Bytes of descriptor memory per frame of `mem_map` (16).
    pub const PAGE_DESCRIPTOR_BYTES: usize = core::mem::size_of::<Page>();
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spans(config: ZoneConfig, end: usize) -> [(usize, usize); MAX_NR_ZONES] {
        config
            .spans(Pfn::new(0), Pfn::new(end))
            .map(|(lo, hi)| (lo.as_usize(), hi.as_usize()))
    }

    fn mib(n: usize) -> usize {
        (n << 20) >> PAGE_SHIFT
    }

    #[test]
    fn i386_zones_split_at_16_mib_and_max_low_pfn() {
        let spans = spans(ZoneConfig::i386(Pfn::new(mib(896))), mib(2048));
        let want = [
            (0, mib(16)),
            (mib(16), mib(16)),
            (mib(16), mib(896)),
            (mib(896), mib(2048)),
        ];
        assert_eq!(spans, want);
    }

    #[test]
    fn a_machine_below_16_mib_is_all_zone_dma() {
        let spans = spans(ZoneConfig::i386(Pfn::new(mib(8))), mib(8));
        assert_eq!(spans[ZoneType::Dma.index()], (0, mib(8)));
        assert!(spans[1..].iter().all(|&(lo, hi)| lo == hi));
    }

    #[test]
    fn dma_zones_are_clamped_to_lowmem() {
        let config = ZoneConfig {
            dma_end: Pfn::new(64),
            dma32_end: Some(Pfn::new(32)),
            lowmem_end: Pfn::new(48),
            max_order: MAX_PAGE_ORDER,
        };
        assert_eq!(spans(config, 100), [(0, 48), (48, 48), (48, 48), (48, 100)]);
    }

    #[test]
    fn x86_64_has_dma32_below_4_gib_and_no_highmem() {
        let end = 2 * MAX_DMA32_PFN.as_usize();
        let spans = spans(ZoneConfig::x86_64(Pfn::new(end)), end);
        let (dma, dma32) = (MAX_DMA_PFN.as_usize(), MAX_DMA32_PFN.as_usize());
        assert_eq!(spans, [(0, dma), (dma, dma32), (dma32, end), (end, end)]);
    }
}
