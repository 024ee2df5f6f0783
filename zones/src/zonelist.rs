//! `gfp_zone()` and the zonelist: which zones a request may use, in the
//! order it tries them.
//!
//! A request names its highest usable zone through its zone modifiers; the
//! zonelist walks from there down (HIGHMEM → NORMAL → DMA32 → DMA), skipping
//! zones the machine lacks, and never goes upward. This module owns only
//! that arithmetic; it holds no state and takes no lock.

use crate::{ZoneType, MAX_NR_ZONES};
use kmm_api::{Error, GfpFlags};

/// Linux `gfp_zone()`: the highest zone a request may allocate from.
///
/// | modifiers | zone |
/// |---|---|
/// | none (or only `__GFP_MOVABLE`) | NORMAL |
/// | `__GFP_HIGHMEM` | HIGHMEM |
/// | `__GFP_DMA32` | DMA32, or NORMAL where the layout has no DMA32 (as i386) |
/// | `__GFP_DMA` | DMA only |
///
/// Two of `__GFP_DMA`, `__GFP_DMA32`, `__GFP_HIGHMEM` together contradict
/// each other and are refused with [`Error::InvalidGfp`] (Linux's
/// `GFP_ZONE_BAD`). `__GFP_MOVABLE` is a mobility hint here: there is no
/// ZONE_MOVABLE.
///
/// ```
/// use kmm_api::{GFP_DMA, GFP_DMA32, GFP_HIGHUSER, GFP_KERNEL, __GFP_DMA, __GFP_HIGHMEM};
/// use kmm_zones::{gfp_zone, ZoneType};
/// assert_eq!(gfp_zone(GFP_KERNEL, false), Ok(ZoneType::Normal));
/// assert_eq!(gfp_zone(GFP_HIGHUSER, false), Ok(ZoneType::HighMem));
/// assert_eq!(gfp_zone(GFP_DMA, false), Ok(ZoneType::Dma));
/// assert_eq!(gfp_zone(GFP_DMA32, false), Ok(ZoneType::Normal));
/// assert_eq!(gfp_zone(GFP_DMA32, true), Ok(ZoneType::Dma32));
/// assert!(gfp_zone(__GFP_DMA | __GFP_HIGHMEM, false).is_err());
/// ```
#[inline]
pub fn gfp_zone(gfp: GfpFlags, has_dma32: bool) -> Result<ZoneType, Error> {
    let dma = gfp.contains(GfpFlags::DMA);
    let dma32 = gfp.contains(GfpFlags::DMA32);
    let highmem = gfp.contains(GfpFlags::HIGHMEM);
    match (dma, dma32, highmem) {
        (false, false, false) => Ok(ZoneType::Normal),
        (true, false, false) => Ok(ZoneType::Dma),
        (false, true, false) if has_dma32 => Ok(ZoneType::Dma32),
        (false, true, false) => Ok(ZoneType::Normal),
        (false, false, true) => Ok(ZoneType::HighMem),
        _ => Err(Error::InvalidGfp { gfp }),
    }
}

/// The zones a request whose highest zone is `highest` tries, highest
/// first, among those `present` (indexed by zone index). O(MAX_NR_ZONES).
///
/// ```
/// use kmm_zones::{zonelist, ZoneType};
/// let present = [true, false, true, true]; // i386: DMA, NORMAL, HIGHMEM
/// let order: Vec<_> = zonelist(ZoneType::HighMem, present).collect();
/// assert_eq!(order, [ZoneType::HighMem, ZoneType::Normal, ZoneType::Dma]);
/// assert_eq!(zonelist(ZoneType::Dma, present).collect::<Vec<_>>(), [ZoneType::Dma]);
/// ```
pub fn zonelist(
    highest: ZoneType,
    present: [bool; MAX_NR_ZONES],
) -> impl Iterator<Item = ZoneType> {
    ZoneType::ALL[..=highest.index()]
        .iter()
        .rev()
        .copied()
        .filter(move |zone| present[zone.index()])
}

#[cfg(test)]
mod tests {
    use super::*;
    use kmm_api::{__GFP_DMA, __GFP_DMA32, __GFP_HIGHMEM, GFP_ATOMIC, GFP_HIGHUSER, GFP_KERNEL};

    #[test]
    fn contradictory_zone_modifiers_are_invalid_gfp() {
        for gfp in [
            __GFP_DMA | __GFP_HIGHMEM,
            __GFP_DMA | __GFP_DMA32,
            __GFP_DMA32 | __GFP_HIGHMEM,
            __GFP_DMA | __GFP_DMA32 | __GFP_HIGHMEM,
        ] {
            assert_eq!(gfp_zone(gfp, true), Err(Error::InvalidGfp { gfp }));
        }
    }

    #[test]
    fn dma32_means_normal_on_a_layout_without_dma32() {
        assert_eq!(
            gfp_zone(GFP_KERNEL | __GFP_DMA32, false),
            Ok(ZoneType::Normal)
        );
        assert_eq!(
            gfp_zone(GFP_KERNEL | __GFP_DMA32, true),
            Ok(ZoneType::Dma32)
        );
    }

    #[test]
    fn action_modifiers_do_not_change_the_zone() {
        assert_eq!(gfp_zone(GFP_ATOMIC, false), Ok(ZoneType::Normal));
        assert_eq!(gfp_zone(GFP_HIGHUSER, false), Ok(ZoneType::HighMem));
        assert_eq!(gfp_zone(GFP_ATOMIC | __GFP_DMA, false), Ok(ZoneType::Dma));
    }

    #[test]
    fn zonelist_falls_back_downward_only_and_skips_absent_zones() {
        let all = [true; MAX_NR_ZONES];
        let down: std::vec::Vec<_> = zonelist(ZoneType::HighMem, all).collect();
        assert_eq!(
            down,
            ZoneType::ALL
                .iter()
                .rev()
                .copied()
                .collect::<std::vec::Vec<_>>()
        );
        let normal: std::vec::Vec<_> = zonelist(ZoneType::Normal, all).collect();
        assert!(!normal.contains(&ZoneType::HighMem), "never upward");
        let dma_only = [false, false, true, true];
        assert_eq!(zonelist(ZoneType::Dma, dma_only).count(), 0);
    }
}
