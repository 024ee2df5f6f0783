//! Zone watermarks and lowmem reserves: the arithmetic that decides whether a
//! zone may give away pages (Linux's `setup_per_zone_wmarks`,
//! `setup_per_zone_lowmem_reserve` and `__zone_watermark_ok`).
//!
//! Every figure is in pages. The functions here are pure: they take managed
//! page counts and return the marks, so the zone code computes them once at
//! boot (and again if its sizes change) and keeps them beside its free count.
//! This module owns no state, takes no lock and must never touch a zone.
//!
//! Three marks per zone:
//! - `min`: below it only requests allowed to dip into reserves succeed. The
//!   lowmem zones share `min_free_kbytes` in proportion to their size; highmem
//!   gets a small fixed slice, because its pages cannot serve the kernel's own
//!   allocations and reserving them would mostly waste them.
//! - `low`: the fast path's mark; falling below it would wake the reclaimer.
//! - `high`: where background reclaim would stop.
//!
//! The lowmem reserve keeps a lower zone from being drained by requests that
//! could have been served higher up: a request whose highest usable zone is
//! `j`, falling back into zone `i < j`, must leave `lowmem_reserve[j]` pages
//! of zone `i` untouched on top of the watermark.
//!
//! Cost: every function is O(`MAX_NR_ZONES`^2) at most, with no allocation.

use crate::{ZoneType, MAX_NR_ZONES};
use bitflags::bitflags;
use kmm_api::{GfpFlags, Order, PAGE_SHIFT};

/// The three marks of one zone, in pages. An absent zone has all zeros.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default)]
pub struct Watermarks {
    /// Only reserve-dipping requests may allocate below this.
    pub min: usize,
    /// The fast path's mark.
    pub low: usize,
    /// The mark background reclaim works back up to.
    pub high: usize,
}

/// Which of the three marks a check is made against.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum WatermarkLevel {
    /// [`Watermarks::min`]
    Min,
    /// [`Watermarks::low`]
    Low,
    /// [`Watermarks::high`]
    High,
}

impl Watermarks {
    /// The mark at `level`.
    pub const fn get(&self, level: WatermarkLevel) -> usize {
        match level {
            WatermarkLevel::Min => self.min,
            WatermarkLevel::Low => self.low,
            WatermarkLevel::High => self.high,
        }
    }
}

/// Divisors of the lowmem reserve, by zone index (`sysctl_lowmem_reserve_ratio`):
/// a zone keeps 1/ratio of the managed pages above it back from requests that
/// could have used those higher zones. 0 means no reserve.
pub const LOWMEM_RESERVE_RATIO: [usize; MAX_NR_ZONES] = [256, 256, 32, 0];

/// Spacing between the marks in ten-thousandths of a zone's managed pages
/// (`watermark_scale_factor`; the default 10 is 0.1 %).
pub const WATERMARK_SCALE_FACTOR: usize = 10;

/// The smallest and largest `min_free_kbytes` Linux computes at boot.
pub(crate) const MIN_FREE_KBYTES_RANGE: (usize, usize) = (128, 256 * 1024);

/// Highmem's `min` is a thousandth of the zone, kept within these bounds
/// (the lower one is `SWAP_CLUSTER_MAX`, one reclaim batch).
const HIGHMEM_MIN_PAGES: (usize, usize) = (32, 128);
const HIGHMEM_MIN_DIVISOR: usize = 1024;

/// KiB in one page.
const PAGE_KBYTES: usize = 1 << (PAGE_SHIFT - 10);

/// Linux's boot-time `min_free_kbytes`: `int_sqrt(lowmem_kbytes * 16)`,
/// clamped to 128..=262144. It grows with the square root of lowmem, so large
/// machines do not reserve a fixed fraction.
///
/// ```
/// use kmm_zones::watermark::min_free_kbytes;
/// let pages_per_mib = 256;
/// assert_eq!(min_free_kbytes(16 * pages_per_mib), 512);
/// assert_eq!(min_free_kbytes(1024 * pages_per_mib), 4096);
/// ```
pub fn min_free_kbytes(lowmem_pages: usize) -> usize {
    let (lo, hi) = MIN_FREE_KBYTES_RANGE;
    min_free_kbytes_unclamped(lowmem_pages).clamp(lo, hi)
}

/// `int_sqrt(lowmem_kbytes * 16)` before the clamp: Linux compares this
/// figure with a user's `min_free_kbytes` and clamps only what it installs.
pub(crate) fn min_free_kbytes_unclamped(lowmem_pages: usize) -> usize {
    let lowmem_kbytes = (lowmem_pages as u64).saturating_mul(PAGE_KBYTES as u64);
    let root = int_sqrt(lowmem_kbytes.saturating_mul(16));
    // The square root of a u64 is below 2^32, but usize may be 32 bits.
    usize::try_from(root).unwrap_or(usize::MAX)
}

/// Watermarks of every zone from its managed pages (`managed[i]` for zone
/// index `i`, 0 when absent), with the boot-time `min_free_kbytes` and the
/// default scale factor. See [`setup_per_zone_wmarks_with`] for the rules.
pub fn setup_per_zone_wmarks(managed: &[usize; MAX_NR_ZONES]) -> [Watermarks; MAX_NR_ZONES] {
    setup_per_zone_wmarks_with(
        managed,
        min_free_kbytes(lowmem_pages(managed)),
        WATERMARK_SCALE_FACTOR,
    )
}

/// Watermarks for a chosen `min_free_kbytes` and `watermark_scale_factor`
/// (what writing the two sysctls does in Linux).
///
/// - `pages_min = min_free_kbytes / 4`; a lowmem zone's share is
///   `pages_min * managed / lowmem_pages`, and that share is its `min`.
/// - highmem `min = clamp(managed / 1024, 32, 128)`.
/// - `gap = max(share / 4, managed * scale_factor / 10000)`,
///   `low = min + gap`, `high = low + gap`.
///
/// The gap uses the zone's proportional share even for highmem, whose `min`
/// is clamped instead, exactly as Linux does: the spacing of a large highmem
/// zone is not shrunk by its small `min`.
///
/// ```
/// use kmm_zones::watermark::setup_per_zone_wmarks_with;
/// // 1 GiB of lowmem in ZONE_NORMAL only, min_free_kbytes 4096.
/// let w = setup_per_zone_wmarks_with(&[0, 0, 262144, 0], 4096, 10);
/// assert_eq!((w[2].min, w[2].low, w[2].high), (1024, 1286, 1548));
/// assert_eq!(w[0], Default::default());
/// ```
pub fn setup_per_zone_wmarks_with(
    managed: &[usize; MAX_NR_ZONES],
    min_free_kbytes: usize,
    watermark_scale_factor: usize,
) -> [Watermarks; MAX_NR_ZONES] {
    // u128 keeps every product exact, whatever the tunables and the target;
    // results beyond usize saturate.
    let pages_min = (min_free_kbytes / PAGE_KBYTES) as u128;
    let lowmem = lowmem_pages(managed) as u128;
    let mut marks = [Watermarks::default(); MAX_NR_ZONES];
    for (index, (mark, &pages)) in marks.iter_mut().zip(managed).enumerate() {
        if pages == 0 {
            continue;
        }
        let share = (pages_min * pages as u128).checked_div(lowmem).unwrap_or(0);
        let min = if is_highmem(index) {
            let (lo, hi) = HIGHMEM_MIN_PAGES;
            (pages / HIGHMEM_MIN_DIVISOR).clamp(lo, hi) as u128
        } else {
            share
        };
        let gap = (share / 4).max(pages as u128 * watermark_scale_factor as u128 / 10000);
        *mark = Watermarks {
            min: saturate(min),
            low: saturate(min + gap),
            high: saturate(min + 2 * gap),
        };
    }
    marks
}

/// Lowmem reserves with the default [`LOWMEM_RESERVE_RATIO`]. See
/// [`setup_per_zone_lowmem_reserve_with`].
pub fn setup_per_zone_lowmem_reserve(
    managed: &[usize; MAX_NR_ZONES],
) -> [[usize; MAX_NR_ZONES]; MAX_NR_ZONES] {
    setup_per_zone_lowmem_reserve_with(managed, &LOWMEM_RESERVE_RATIO)
}

/// `reserve[i][j]`: pages zone `i` keeps back from a request whose highest
/// usable zone is `j`. For `j > i` it is the managed pages of zones
/// `i+1..=j` divided by `ratio[i]`; it is 0 for `j <= i`, and for every `j`
/// when `ratio[i]` is 0 or zone `i` is absent.
///
/// An absent zone between `i` and `j` adds nothing to the sum but still gets
/// the running value, as in Linux: a request naming an absent top zone falls
/// back through the present ones and must meet the same reserve.
///
/// ```
/// use kmm_zones::watermark::setup_per_zone_lowmem_reserve;
/// // 16 MiB DMA, 784 MiB NORMAL, 224 MiB HIGHMEM, in pages.
/// let r = setup_per_zone_lowmem_reserve(&[4096, 0, 200704, 57344]);
/// assert_eq!(r[0], [0, 0, 784, 1008]);
/// assert_eq!(r[2], [0, 0, 0, 1792]);
/// ```
pub fn setup_per_zone_lowmem_reserve_with(
    managed: &[usize; MAX_NR_ZONES],
    ratio: &[usize; MAX_NR_ZONES],
) -> [[usize; MAX_NR_ZONES]; MAX_NR_ZONES] {
    let mut reserve = [[0; MAX_NR_ZONES]; MAX_NR_ZONES];
    for (i, row) in reserve.iter_mut().enumerate() {
        if ratio[i] == 0 || managed[i] == 0 {
            continue;
        }
        let mut above = 0usize;
        for j in i + 1..MAX_NR_ZONES {
            above = above.saturating_add(managed[j]);
            row[j] = above / ratio[i];
        }
    }
    reserve
}

bitflags! {
    /// How an allocation is checked against a zone's marks (Linux's
    /// `ALLOC_*` flags, the part that concerns watermarks).
    ///
    /// The `WMARK_*` bits choose the mark; with none set the check is against
    /// `min`, as Linux's `ALLOC_WMARK_MIN` is its zero value. If several are
    /// set the highest wins.
    #[derive(Clone, Copy, PartialEq, Eq, Hash, Debug, Default)]
    pub struct AllocFlags: u32 {
        /// Check against `min` (the slow path).
        const WMARK_MIN = 1 << 0;
        /// Check against `low` (the fast path).
        const WMARK_LOW = 1 << 1;
        /// Check against `high`.
        const WMARK_HIGH = 1 << 2;
        /// May use half of `min` (`ALLOC_MIN_RESERVE`, from `__GFP_HIGH`).
        const MIN_RESERVE = 1 << 3;
        /// Cannot sleep or reclaim (`ALLOC_NON_BLOCK`); with `MIN_RESERVE`
        /// it may use a further quarter of what is left of `min`.
        const NON_BLOCK = 1 << 4;
    }
}

impl AllocFlags {
    /// The bits that choose the mark.
    pub const WMARK_MASK: AllocFlags = AllocFlags::WMARK_MIN
        .union(AllocFlags::WMARK_LOW)
        .union(AllocFlags::WMARK_HIGH);

    /// The mark these flags check against.
    pub const fn level(self) -> WatermarkLevel {
        if self.contains(AllocFlags::WMARK_HIGH) {
            WatermarkLevel::High
        } else if self.contains(AllocFlags::WMARK_LOW) {
            WatermarkLevel::Low
        } else {
            WatermarkLevel::Min
        }
    }

    /// These flags checking against `level` instead.
    pub const fn with_level(self, level: WatermarkLevel) -> AllocFlags {
        let rest = self.difference(AllocFlags::WMARK_MASK);
        rest.union(match level {
            WatermarkLevel::Min => AllocFlags::WMARK_MIN,
            WatermarkLevel::Low => AllocFlags::WMARK_LOW,
            WatermarkLevel::High => AllocFlags::WMARK_HIGH,
        })
    }
}

/// The slow path's flags for a request (the watermark part of Linux's
/// `gfp_to_alloc_flags`): checked against `min`; `__GFP_HIGH` grants
/// [`AllocFlags::MIN_RESERVE`]; a request without `__GFP_DIRECT_RECLAIM`
/// cannot block and gets [`AllocFlags::NON_BLOCK`].
///
/// The fast path checks [`AllocFlags::WMARK_LOW`] alone: reserves are only
/// opened once the easy attempt has failed.
///
/// ```
/// use kmm_api::{GFP_ATOMIC, GFP_KERNEL, GFP_NOWAIT};
/// use kmm_zones::watermark::{gfp_to_alloc_flags, AllocFlags};
/// assert_eq!(gfp_to_alloc_flags(GFP_KERNEL), AllocFlags::WMARK_MIN);
/// assert_eq!(
///     gfp_to_alloc_flags(GFP_ATOMIC),
///     AllocFlags::WMARK_MIN | AllocFlags::MIN_RESERVE | AllocFlags::NON_BLOCK
/// );
/// assert_eq!(gfp_to_alloc_flags(GFP_NOWAIT), AllocFlags::WMARK_MIN | AllocFlags::NON_BLOCK);
/// ```
pub fn gfp_to_alloc_flags(gfp: GfpFlags) -> AllocFlags {
    let mut flags = AllocFlags::WMARK_MIN;
    if gfp.contains(GfpFlags::HIGH) {
        flags |= AllocFlags::MIN_RESERVE;
    }
    if !gfp.allows_blocking() {
        flags |= AllocFlags::NON_BLOCK;
    }
    flags
}

/// The arithmetic of Linux's `__zone_watermark_ok`: whether a zone with
/// `free_pages` free may give away a block of `order` and stay above `mark`
/// plus `lowmem_reserve` (the zone's reserve for the request's highest zone).
///
/// With [`AllocFlags::MIN_RESERVE`] the mark is lowered by half, and then, if
/// also [`AllocFlags::NON_BLOCK`], by a quarter of the rest: `GFP_ATOMIC`
/// needs 37.5 % of it; `GFP_NOWAIT`, lacking `__GFP_HIGH`, gets nothing off.
/// The check is `free_pages - (2^order - 1) > mark + lowmem_reserve`; the
/// pages of the block beyond its first cannot count towards staying above.
///
/// For `order > 0` Linux also requires a free block of at least `order`
/// somewhere in the zone; that needs the free lists and is the caller's.
///
/// ```
/// use kmm_api::{Order, GFP_ATOMIC, GFP_KERNEL};
/// use kmm_zones::watermark::{gfp_to_alloc_flags, watermark_ok};
/// let (min, free) = (1000, 999);
/// assert!(!watermark_ok(free, Order::ZERO, min, 0, gfp_to_alloc_flags(GFP_KERNEL)));
/// assert!(watermark_ok(free, Order::ZERO, min, 0, gfp_to_alloc_flags(GFP_ATOMIC)));
/// ```
pub fn watermark_ok(
    free_pages: usize,
    order: Order,
    mark: usize,
    lowmem_reserve: usize,
    flags: AllocFlags,
) -> bool {
    let mut min = mark;
    if flags.contains(AllocFlags::MIN_RESERVE) {
        min -= min / 2;
        if flags.contains(AllocFlags::NON_BLOCK) {
            min -= min / 4;
        }
    }
    // `free_pages - (2^order - 1) > min + lowmem_reserve`, with the block's
    // extra pages moved to the right: a zone with fewer free pages than
    // the block needs fails as Linux's signed count, gone negative, does,
    // and a sum past `usize::MAX` fails every zone.
    free_pages
        > min
            .saturating_add(lowmem_reserve)
            .saturating_add(order.pages() - 1)
}

/// Managed pages of the zones the kernel can address directly.
fn lowmem_pages(managed: &[usize; MAX_NR_ZONES]) -> usize {
    managed
        .iter()
        .enumerate()
        .filter(|&(index, _)| !is_highmem(index))
        .fold(0usize, |sum, (_, &pages)| sum.saturating_add(pages))
}

fn is_highmem(index: usize) -> bool {
    ZoneType::from_index(index).is_some_and(ZoneType::is_highmem)
}

fn saturate(pages: u128) -> usize {
    usize::try_from(pages).unwrap_or(usize::MAX)
}

/// Integer square root, rounded down (Linux's `int_sqrt`), by the
/// digit-by-digit method: exact for every `u64`, no floating point.
fn int_sqrt(x: u64) -> u64 {
    let mut rem = x;
    let mut root = 0u64;
    // The largest power of four not above x.
    let mut bit = if x == 0 {
        0
    } else {
        1u64 << ((63 - x.leading_zeros()) & !1)
    };
    while bit != 0 {
        if rem >= root + bit {
            rem -= root + bit;
            root = (root >> 1) + bit;
        } else {
            root >>= 1;
        }
        bit >>= 2;
    }
    root
}

#[cfg(test)]
mod tests;
