//! Unit tests of the watermark arithmetic, one per rule.

use super::*;
use kmm_api::{__GFP_HIGH, GFP_ATOMIC, GFP_KERNEL, GFP_NOWAIT, PAGE_SIZE};

const MIB: usize = 1 << 20;
const fn pages(bytes: usize) -> usize {
    bytes / PAGE_SIZE
}
const DMA: usize = ZoneType::Dma as usize;
const DMA32: usize = ZoneType::Dma32 as usize;
const NORMAL: usize = ZoneType::Normal as usize;
const HIGHMEM: usize = ZoneType::HighMem as usize;

/// The 1 GiB i386 machine of the comment above Linux's
/// `sysctl_lowmem_reserve_ratio`: 16M DMA, 784M NORMAL, 224M HIGHMEM.
const ONE_GIB_I386: [usize; MAX_NR_ZONES] =
    [pages(16 * MIB), 0, pages(784 * MIB), pages(224 * MIB)];

fn order(n: u32) -> Order {
    Order::new(n).unwrap()
}

#[test]
fn int_sqrt_rounds_down_at_every_boundary() {
    for r in [0u64, 1, 2, 3, 255, 65535, 4_294_967_295] {
        assert_eq!(int_sqrt(r * r), r);
        if r > 0 {
            assert_eq!(int_sqrt(r * r - 1), r - 1);
        }
    }
    assert_eq!(int_sqrt(u64::MAX), 4_294_967_295);
}

#[test]
fn min_free_kbytes_grows_with_the_square_root_of_lowmem() {
    assert_eq!(min_free_kbytes(pages(16 * MIB)), 512);
    assert_eq!(min_free_kbytes(pages(1024 * MIB)), 4096);
    // 16 GiB of lowmem counted in pages: the byte count would overflow a
    // 32-bit usize, the page count does not.
    assert_eq!(min_free_kbytes(16 * 1024 * pages(MIB)), 16384);
}

#[test]
fn min_free_kbytes_is_clamped_to_128_and_256_mib() {
    assert_eq!(min_free_kbytes(0), 128);
    assert_eq!(min_free_kbytes(pages(MIB)), 128);
    assert_eq!(min_free_kbytes(usize::MAX), 262144);
}

#[test]
fn lowmem_min_is_the_zones_share_of_pages_min() {
    // lowmem = 204800 pages = 819200 KiB -> int_sqrt(13107200) = 3620 KiB
    // -> pages_min 905; DMA 905*4096/204800 = 18, NORMAL 905*200704/204800 = 886.
    let w = setup_per_zone_wmarks(&ONE_GIB_I386);
    assert_eq!(w[DMA].min, 18);
    assert_eq!(w[NORMAL].min, 886);
    assert_eq!(w[DMA32], Watermarks::default());
}

#[test]
fn gap_is_a_quarter_of_min_or_the_scale_factor_whichever_is_larger() {
    let w = setup_per_zone_wmarks(&ONE_GIB_I386);
    // NORMAL: max(886/4 = 221, 200704*10/10000 = 200) = 221.
    assert_eq!((w[NORMAL].low, w[NORMAL].high), (886 + 221, 886 + 442));
    // With a larger factor the scaled gap wins: 200704*100/10000 = 2007.
    let w = setup_per_zone_wmarks_with(&ONE_GIB_I386, 3620, 100);
    assert_eq!((w[NORMAL].low, w[NORMAL].high), (886 + 2007, 886 + 4014));
}

#[test]
fn highmem_min_is_a_thousandth_clamped_to_32_and_128() {
    let mut managed = ONE_GIB_I386;
    assert_eq!(setup_per_zone_wmarks(&managed)[HIGHMEM].min, 57344 / 1024);
    managed[HIGHMEM] = 1000;
    assert_eq!(setup_per_zone_wmarks(&managed)[HIGHMEM].min, 32);
    managed[HIGHMEM] = pages(3 * 1024 * MIB);
    assert_eq!(setup_per_zone_wmarks(&managed)[HIGHMEM].min, 128);
}

#[test]
fn highmem_gap_uses_its_proportional_share_as_linux_does() {
    // share = 905*57344/204800 = 253 -> 253/4 = 63 > 57344*10/10000 = 57.
    let w = setup_per_zone_wmarks(&ONE_GIB_I386);
    assert_eq!(
        w[HIGHMEM],
        Watermarks {
            min: 56,
            low: 119,
            high: 182
        }
    );
}

#[test]
fn absent_zones_get_zero_marks_and_no_lowmem_means_no_share() {
    let w = setup_per_zone_wmarks(&[0, 0, 0, 4096]);
    assert_eq!(w[DMA], Watermarks::default());
    // No lowmem to divide by: only the scale factor spaces the marks.
    assert_eq!(
        w[HIGHMEM],
        Watermarks {
            min: 32,
            low: 36,
            high: 40
        }
    );
}

#[test]
fn absurd_tunables_saturate_instead_of_overflowing() {
    let w = setup_per_zone_wmarks_with(&[usize::MAX; MAX_NR_ZONES], usize::MAX, usize::MAX);
    for mark in w {
        assert!(mark.min <= mark.low && mark.low <= mark.high, "{mark:?}");
    }
    assert_eq!(w[NORMAL].high, usize::MAX);
    let r = setup_per_zone_lowmem_reserve_with(&[usize::MAX; MAX_NR_ZONES], &[1; MAX_NR_ZONES]);
    assert_eq!(r[DMA][HIGHMEM], usize::MAX);
}

#[test]
fn lowmem_reserve_reproduces_the_1_gib_example() {
    let r = setup_per_zone_lowmem_reserve(&ONE_GIB_I386);
    // The comment's figures, in bytes, turned into pages.
    assert_eq!(r[DMA][NORMAL], pages(784 * MIB / 256));
    assert_eq!(r[NORMAL][HIGHMEM], pages(224 * MIB / 32));
    assert_eq!(r[DMA][HIGHMEM], pages((224 + 784) * MIB / 256));
    assert_eq!(
        (r[DMA][NORMAL], r[NORMAL][HIGHMEM], r[DMA][HIGHMEM]),
        (784, 1792, 1008)
    );
}

#[test]
fn lowmem_reserve_is_zero_on_and_below_the_diagonal() {
    let r = setup_per_zone_lowmem_reserve(&ONE_GIB_I386);
    for (i, row) in r.iter().enumerate() {
        assert!(row[..=i].iter().all(|&v| v == 0), "zone {i}: {row:?}");
    }
}

#[test]
fn lowmem_reserve_is_zero_for_absent_zones_and_zero_ratios() {
    let r = setup_per_zone_lowmem_reserve(&ONE_GIB_I386);
    assert_eq!(r[DMA32], [0; MAX_NR_ZONES]);
    assert_eq!(r[HIGHMEM], [0; MAX_NR_ZONES]);
    let r = setup_per_zone_lowmem_reserve_with(&ONE_GIB_I386, &[0, 256, 32, 0]);
    assert_eq!(r[DMA], [0; MAX_NR_ZONES]);
    assert_eq!(r[NORMAL][HIGHMEM], 1792);
}

#[test]
fn absent_upper_zone_keeps_the_cumulative_reserve_as_linux_does() {
    // No highmem: a HIGHMEM-capable request falling into DMA meets the
    // same reserve as a NORMAL one. DMA32 absent adds nothing.
    let r = setup_per_zone_lowmem_reserve(&[4096, 0, 200704, 0]);
    assert_eq!(r[DMA], [0, 0, 784, 784]);
    assert_eq!(r[NORMAL], [0; MAX_NR_ZONES]);
}

#[test]
fn order_zero_passes_only_strictly_above_mark_plus_reserve() {
    let f = AllocFlags::WMARK_MIN;
    assert!(watermark_ok(1101, Order::ZERO, 1000, 100, f));
    assert!(!watermark_ok(1100, Order::ZERO, 1000, 100, f));
}

#[test]
fn higher_orders_discount_all_but_the_first_page_of_the_block() {
    let f = AllocFlags::WMARK_MIN;
    assert!(watermark_ok(1000 + 8, order(3), 1000, 0, f));
    assert!(!watermark_ok(1000 + 7, order(3), 1000, 0, f));
}

#[test]
fn a_zone_short_of_the_block_or_of_a_saturated_mark_always_fails() {
    let f = AllocFlags::WMARK_MIN;
    // Fewer free pages than the block: Linux's signed count goes negative.
    assert!(!watermark_ok(6, order(3), 0, 0, f));
    assert!(watermark_ok(8, order(3), 0, 0, f));
    // Mark, reserve and block past usize::MAX: no zone passes.
    assert!(!watermark_ok(usize::MAX, order(3), usize::MAX - 4, 0, f));
    assert!(!watermark_ok(usize::MAX, Order::ZERO, usize::MAX, 1, f));
    assert!(watermark_ok(usize::MAX, order(3), usize::MAX - 8, 0, f));
}

#[test]
fn atomic_passes_just_under_min_where_kernel_fails() {
    let (kernel, atomic) = (
        gfp_to_alloc_flags(GFP_KERNEL),
        gfp_to_alloc_flags(GFP_ATOMIC),
    );
    assert!(!watermark_ok(999, Order::ZERO, 1000, 0, kernel));
    assert!(watermark_ok(999, Order::ZERO, 1000, 0, atomic));
    // 1000 - 500 = 500, then 500 - 125 = 375: GFP_ATOMIC needs 37.5 %.
    assert!(watermark_ok(376, Order::ZERO, 1000, 0, atomic));
    assert!(!watermark_ok(375, Order::ZERO, 1000, 0, atomic));
}

#[test]
fn high_priority_that_may_block_gets_only_half() {
    let flags = gfp_to_alloc_flags(GFP_KERNEL | __GFP_HIGH);
    assert_eq!(flags, AllocFlags::WMARK_MIN | AllocFlags::MIN_RESERVE);
    assert!(watermark_ok(501, Order::ZERO, 1000, 0, flags));
    assert!(!watermark_ok(500, Order::ZERO, 1000, 0, flags));
}

#[test]
fn nowait_gets_no_reduction() {
    let nowait = gfp_to_alloc_flags(GFP_NOWAIT);
    assert!(nowait.contains(AllocFlags::NON_BLOCK));
    assert!(!nowait.contains(AllocFlags::MIN_RESERVE));
    assert!(!watermark_ok(1000, Order::ZERO, 1000, 0, nowait));
    assert!(watermark_ok(1001, Order::ZERO, 1000, 0, nowait));
}

#[test]
fn watermark_check_never_underflows_or_overflows() {
    let f = AllocFlags::WMARK_MIN;
    assert!(!watermark_ok(0, order(10), 0, 0, f));
    assert!(!watermark_ok(
        usize::MAX,
        Order::ZERO,
        usize::MAX,
        usize::MAX,
        f
    ));
    assert!(watermark_ok(1, Order::ZERO, 0, 0, f));
}

#[test]
fn highest_wmark_bit_chooses_the_mark_and_none_means_min() {
    let w = Watermarks {
        min: 1,
        low: 2,
        high: 3,
    };
    assert_eq!(w.get(AllocFlags::empty().level()), 1);
    assert_eq!(w.get(AllocFlags::WMARK_LOW.level()), 2);
    assert_eq!(
        w.get((AllocFlags::WMARK_LOW | AllocFlags::WMARK_HIGH).level()),
        3
    );
    let atomic = gfp_to_alloc_flags(GFP_ATOMIC).with_level(WatermarkLevel::Low);
    assert_eq!(atomic.level(), WatermarkLevel::Low);
    assert!(atomic.contains(AllocFlags::MIN_RESERVE | AllocFlags::NON_BLOCK));
    assert!(!atomic.contains(AllocFlags::WMARK_MIN));
}
