//! The `/proc/sys/vm` tunables on booted zones, one test per rule. Every
//! expected figure is computed here from Linux's formulas (written out
//! again in this file, independently of `kmm_zones::watermark`), on the
//! 1 GiB i386 machine of the comment above Linux's
//! `setup_per_zone_lowmem_reserve` (16 MiB DMA, 784 MiB NORMAL, 224 MiB
//! HIGHMEM), except where behaviour is checked on a small machine.

use kmm_api::{
    MemoryRegion, Order, Pfn, RegionKind, GFP_HIGHUSER, GFP_KERNEL, PAGE_SHIFT, PAGE_SIZE,
};
use kmm_zones::sysctl::{SysctlError, WATERMARK_SCALE_FACTOR_RANGE};
use kmm_zones::testing::{TestMachine, TestZones};
use kmm_zones::watermark::{Watermarks, LOWMEM_RESERVE_RATIO, WATERMARK_SCALE_FACTOR};
use kmm_zones::{PcpSizing, ZoneConfig, ZoneType, MAX_NR_ZONES};

const MIB: usize = 1 << 20;
const DMA: usize = 0;
const NORMAL: usize = 2;
const HIGHMEM: usize = 3;

fn pages(bytes: usize) -> usize {
    bytes >> PAGE_SHIFT
}

/// All of the 1 GiB usable and nothing reserved (the zones' metadata is in
/// a host buffer), so each zone manages exactly its size.
fn machine_1gib() -> TestMachine {
    let map = [MemoryRegion::new(0, 1 << 30, RegionKind::Usable)];
    let config = ZoneConfig::i386(Pfn::new(pages(800 * MIB)));
    TestMachine::new(&map, config, 2).unwrap()
}

fn managed(zones: &TestZones<'_>) -> [usize; MAX_NR_ZONES] {
    zones.zone_stats().map(|s| s.map_or(0, |s| s.managed))
}

fn marks(zones: &TestZones<'_>) -> [Watermarks; MAX_NR_ZONES] {
    zones
        .zone_stats()
        .map(|s| s.map_or(Watermarks::default(), |s| s.watermarks))
}

fn reserves(zones: &TestZones<'_>) -> [[usize; MAX_NR_ZONES]; MAX_NR_ZONES] {
    zones
        .zone_stats()
        .map(|s| s.map_or([0; MAX_NR_ZONES], |s| s.lowmem_reserve))
}

/// Linux's `int_sqrt`: the largest r with r * r <= x.
fn int_sqrt(x: u64) -> u64 {
    let mut r = (x as f64).sqrt() as u64;
    while r * r > x {
        r -= 1;
    }
    while (r + 1) * (r + 1) <= x {
        r += 1;
    }
    r
}

/// Linux's `calculate_min_free_kbytes` for `lowmem_pages` (before any
/// user value): `int_sqrt(lowmem_kbytes * 16)` clamped to 128..=262144.
fn linux_min_free_kbytes(lowmem_pages: usize) -> usize {
    let kbytes = (lowmem_pages * (PAGE_SIZE >> 10)) as u64;
    int_sqrt(kbytes * 16).clamp(128, 262_144) as usize
}

/// Linux's `__setup_per_zone_wmarks`, as its source reads.
fn linux_wmarks(
    managed: [usize; MAX_NR_ZONES],
    min_free_kbytes: usize,
    scale_factor: usize,
) -> [Watermarks; MAX_NR_ZONES] {
    let pages_min = min_free_kbytes >> (PAGE_SHIFT - 10);
    let lowmem: usize = managed[..HIGHMEM].iter().sum();
    std::array::from_fn(|z| {
        if managed[z] == 0 {
            return Watermarks::default();
        }
        let tmp = pages_min * managed[z] / lowmem;
        let min = if z == HIGHMEM {
            (managed[z] / 1024).clamp(32, 128)
        } else {
            tmp
        };
        let gap = (tmp / 4).max(managed[z] * scale_factor / 10_000);
        Watermarks {
            min,
            low: min + gap,
            high: min + 2 * gap,
        }
    })
}

/// Linux's `setup_per_zone_lowmem_reserve`.
fn linux_reserve(
    managed: [usize; MAX_NR_ZONES],
    ratio: [usize; MAX_NR_ZONES],
) -> [[usize; MAX_NR_ZONES]; MAX_NR_ZONES] {
    std::array::from_fn(|i| {
        let mut above = 0;
        std::array::from_fn(|j| {
            if j <= i {
                return 0;
            }
            above += managed[j];
            if ratio[i] == 0 || managed[i] == 0 {
                0
            } else {
                above / ratio[i]
            }
        })
    })
}

/// The marks, reserves, tunables and pcp sizing: everything a write can change.
fn tuned_state(zones: &TestZones<'_>) -> impl PartialEq + std::fmt::Debug {
    (
        marks(zones),
        reserves(zones),
        zones.min_free_kbytes(),
        zones.user_min_free_kbytes(),
        zones.watermark_scale_factor(),
        zones.lowmem_reserve_ratio(),
        zones.pcp_sizing(ZoneType::Normal),
        zones.totalreserve_pages(),
    )
}

fn assert_linux_1gib_figures(zones: &TestZones<'_>) {
    let managed = managed(zones);
    assert_eq!(
        managed,
        [pages(16 * MIB), 0, pages(784 * MIB), pages(224 * MIB)]
    );
    let lowmem = managed[DMA] + managed[NORMAL];
    // Hand-worked: lowmem is 800 MiB = 819200 KiB; 819200 * 16 = 13107200,
    // and 3620^2 = 13104400 <= 13107200 < 3621^2 = 13111641.
    assert_eq!(zones.min_free_kbytes(), 3620);
    assert_eq!(zones.min_free_kbytes(), linux_min_free_kbytes(lowmem));
    assert_eq!(
        marks(zones),
        linux_wmarks(managed, zones.min_free_kbytes(), WATERMARK_SCALE_FACTOR)
    );
    let reserve = reserves(zones);
    assert_eq!(reserve, linux_reserve(managed, LOWMEM_RESERVE_RATIO));
    // Hand-worked in Linux's comment: 784M / 256 = 784 pages, (784M + 224M)
    // / 256 = 1008 pages, 224M / 32 = 1792 pages.
    assert_eq!(
        (
            reserve[DMA][NORMAL],
            reserve[DMA][HIGHMEM],
            reserve[NORMAL][HIGHMEM]
        ),
        (784, 1008, 1792)
    );
    for z in [DMA, NORMAL, HIGHMEM] {
        let zone = ZoneType::from_index(z).unwrap();
        let low = marks(zones)[z].low;
        assert_eq!(
            zones.pcp_sizing(zone),
            Some(PcpSizing::new(managed[z], low, 2))
        );
    }
    let totalreserve: usize = (0..MAX_NR_ZONES)
        .map(|z| {
            let biggest = reserve[z].iter().copied().max().unwrap();
            (biggest + marks(zones)[z].high).min(managed[z])
        })
        .sum();
    assert_eq!(zones.totalreserve_pages(), totalreserve);
}

#[test]
fn boot_and_the_defaults_written_back_give_linux_1_gib_figures() {
    let mut machine = machine_1gib();
    let zones = machine.boot().unwrap();
    assert_linux_1gib_figures(&zones);
    assert_eq!(zones.user_min_free_kbytes(), None);

    let boot_min_free = zones.min_free_kbytes();
    zones.set_min_free_kbytes(65_536).unwrap();
    zones.set_watermark_scale_factor(200).unwrap();
    zones.set_lowmem_reserve_ratio(&[1, 2, 3, 4]).unwrap();
    assert_ne!(
        reserves(&zones),
        linux_reserve(managed(&zones), LOWMEM_RESERVE_RATIO)
    );

    zones.set_min_free_kbytes(boot_min_free).unwrap();
    zones
        .set_watermark_scale_factor(WATERMARK_SCALE_FACTOR)
        .unwrap();
    zones
        .set_lowmem_reserve_ratio(&LOWMEM_RESERVE_RATIO)
        .unwrap();
    assert_linux_1gib_figures(&zones);
    assert_eq!(zones.user_min_free_kbytes(), Some(boot_min_free));
    zones.check().unwrap();
}

#[test]
fn min_free_kbytes_write_gives_linux_marks_and_moves_pcp_high() {
    let mut machine = machine_1gib();
    let zones = machine.boot().unwrap();
    let managed = managed(&zones);
    // REFERENCE's 1 GB figure.
    zones.set_min_free_kbytes(4096).unwrap();
    assert_eq!(zones.min_free_kbytes(), 4096);
    assert_eq!(zones.user_min_free_kbytes(), Some(4096));
    let want = linux_wmarks(managed, 4096, WATERMARK_SCALE_FACTOR);
    assert_eq!(marks(&zones), want);
    // Hand-worked for NORMAL: pages_min = 1024; 1024 * 200704 / 204800 =
    // 1003 (1003.52); gap = max(1003 / 4, 200704 * 10 / 10000) =
    // max(250, 200) = 250.
    assert_eq!(
        marks(&zones)[NORMAL],
        Watermarks {
            min: 1003,
            low: 1253,
            high: 1503
        }
    );
    let high = zones.pcp_sizing(ZoneType::Normal).unwrap().high;
    assert_eq!(
        high,
        PcpSizing::new(managed[NORMAL], want[NORMAL].low, 2).high
    );
    // The reserves do not depend on min_free_kbytes.
    assert_eq!(
        reserves(&zones),
        linux_reserve(managed, LOWMEM_RESERVE_RATIO)
    );
}

#[test]
fn a_recompute_keeps_the_users_min_free_kbytes_unless_it_computes_more() {
    let mut machine = machine_1gib();
    let zones = machine.boot().unwrap();
    let managed = managed(&zones);
    // Linux's nr_free_buffer_pages: lowmem managed pages above the high marks.
    let above_high = |zones: &TestZones<'_>| {
        let m = marks(zones);
        (managed[DMA] - m[DMA].high) + (managed[NORMAL] - m[NORMAL].high)
    };

    zones.set_min_free_kbytes(8192).unwrap();
    let computed = linux_min_free_kbytes(above_high(&zones));
    assert!(computed < 8192);
    zones.init_per_zone_wmark_min();
    assert_eq!(
        zones.min_free_kbytes(),
        8192,
        "the user's larger value stays"
    );
    assert_eq!(
        marks(&zones),
        linux_wmarks(managed, 8192, WATERMARK_SCALE_FACTOR)
    );

    zones.set_min_free_kbytes(128).unwrap();
    let computed = linux_min_free_kbytes(above_high(&zones));
    assert!(computed > 128);
    zones.init_per_zone_wmark_min();
    assert_eq!(zones.min_free_kbytes(), computed, "a larger figure wins");
    assert_eq!(zones.user_min_free_kbytes(), Some(128));
    assert_eq!(
        marks(&zones),
        linux_wmarks(managed, computed, WATERMARK_SCALE_FACTOR)
    );
}

#[test]
fn watermark_scale_factor_moves_low_and_high_as_linux() {
    let mut machine = machine_1gib();
    let zones = machine.boot().unwrap();
    let managed = managed(&zones);
    let before = marks(&zones);
    let min_free = zones.min_free_kbytes();
    for factor in [
        WATERMARK_SCALE_FACTOR_RANGE.0,
        1000,
        WATERMARK_SCALE_FACTOR_RANGE.1,
    ] {
        zones.set_watermark_scale_factor(factor).unwrap();
        assert_eq!(zones.watermark_scale_factor(), factor);
        let now = marks(&zones);
        assert_eq!(now, linux_wmarks(managed, min_free, factor));
        for z in [DMA, NORMAL, HIGHMEM] {
            assert_eq!(now[z].min, before[z].min, "min does not move");
        }
    }
    // At 30 % the gap is the scale term: 200704 * 3000 / 10000 pages.
    let normal = marks(&zones)[NORMAL];
    assert_eq!(normal.low - normal.min, managed[NORMAL] * 3000 / 10_000);
    assert_eq!(normal.high - normal.low, normal.low - normal.min);
}

/// Allocates order-0 pages with `gfp` until it fails; returns them.
fn exhaust(zones: &TestZones<'_>, gfp: kmm_api::GfpFlags) -> Vec<kmm_api::Pages> {
    std::iter::from_fn(|| zones.alloc_pages(gfp, Order::ZERO).ok()).collect()
}

#[test]
fn lowmem_reserve_ratio_turns_a_refused_allocation_into_an_allowed_one_and_back() {
    let mut machine = TestMachine::i386_scaled(4096);
    let zones = machine.boot().unwrap();
    // Highmem then normal requests fill every zone down to its mark plus
    // its reserve against NORMAL requests.
    let mut held = exhaust(&zones, GFP_HIGHUSER);
    held.extend(exhaust(&zones, GFP_KERNEL));
    assert!(reserves(&zones)[DMA][NORMAL] > 0);
    assert!(zones.alloc_pages(GFP_KERNEL, Order::ZERO).is_err());
    let state = |zones: &TestZones<'_>| zones.zone_stats().map(|s| s.map(|s| s.free));
    let exhausted = state(&zones);

    // No DMA reserve: the same request now gets a DMA page.
    zones.set_lowmem_reserve_ratio(&[0, 256, 32, 0]).unwrap();
    assert_eq!(reserves(&zones)[DMA], [0; MAX_NR_ZONES]);
    let page = zones.alloc_pages(GFP_KERNEL, Order::ZERO).unwrap();
    assert_eq!(zones.page_zone(page.pfn()), Some(ZoneType::Dma));
    zones.__free_pages(page).unwrap();
    zones.drain_all_pages();
    assert_eq!(state(&zones), exhausted, "back where it was refused");

    // The default reserve again: refused again, in that very state.
    zones
        .set_lowmem_reserve_ratio(&LOWMEM_RESERVE_RATIO)
        .unwrap();
    assert!(zones.alloc_pages(GFP_KERNEL, Order::ZERO).is_err());
    assert_eq!(state(&zones), exhausted);

    zones.check().unwrap();
    for page in held {
        zones.__free_pages(page).unwrap();
    }
}

#[test]
fn invalid_values_are_errors_and_change_nothing() {
    let mut machine = machine_1gib();
    let zones = machine.boot().unwrap();
    zones.set_watermark_scale_factor(77).unwrap();
    let before = tuned_state(&zones);
    let int_max = i32::MAX as usize;
    let (lo, hi) = WATERMARK_SCALE_FACTOR_RANGE;
    for bad in [0, hi + 1, usize::MAX] {
        let err = zones.set_watermark_scale_factor(bad).unwrap_err();
        assert_eq!(
            err,
            SysctlError::OutOfRange {
                name: "watermark_scale_factor",
                value: bad,
                min: lo,
                max: hi
            }
        );
    }
    assert!(zones.set_min_free_kbytes(int_max + 1).is_err());
    let mut ratio = LOWMEM_RESERVE_RATIO;
    ratio[NORMAL] = int_max + 1;
    let err = zones.set_lowmem_reserve_ratio(&ratio).unwrap_err();
    assert!(err.to_string().contains("lowmem_reserve_ratio"), "{err}");
    assert_eq!(tuned_state(&zones), before);
}
