//! GFP ("get free pages") flags: what an allocation may do to succeed.
//!
//! The bits follow Linux's `gfp_types.h`. Zone modifiers pick the highest
//! zone a request may use (`gfp_zone()` lives in kmm-zones, which owns zone
//! policy); action modifiers say whether it may sleep, start I/O, call into
//! file systems, dip into reserves, or must not fail. The Linux spellings
//! (`GFP_KERNEL`, `__GFP_ZERO`, …) are provided as constants so kernel code
//! reads as it does in Linux.

use bitflags::bitflags;

bitflags! {
    /// A set of GFP flags. Prefer the Linux-named constants such as
    /// [`GFP_KERNEL`] and [`__GFP_ZERO`].
    #[derive(Clone, Copy, PartialEq, Eq, Hash, Debug, Default)]
    pub struct GfpFlags: u32 {
        /// Zone modifier: only ZONE_DMA (the first 16 MiB).
        const DMA = 1 << 0;
        /// Zone modifier: ZONE_HIGHMEM allowed (the page may lack a kernel mapping).
        const HIGHMEM = 1 << 1;
        /// Zone modifier: ZONE_DMA32 (below 4 GiB) on 64-bit layouts.
        const DMA32 = 1 << 2;
        /// Mobility hint; accepted, no effect here.
        const MOVABLE = 1 << 3;
        /// Mobility hint (`__GFP_RECLAIMABLE`); accepted, no effect here.
        const RECLAIMABLE = 1 << 4;
        /// High priority: may use half of the `min` reserve.
        const HIGH = 1 << 5;
        /// May start physical I/O to reclaim.
        const IO = 1 << 6;
        /// May call into file systems to reclaim.
        const FS = 1 << 7;
        /// Return zeroed memory.
        const ZERO = 1 << 8;
        /// May sleep and reclaim directly.
        const DIRECT_RECLAIM = 1 << 10;
        /// May wake the background reclaimer.
        const KSWAPD_RECLAIM = 1 << 11;
        /// Suppress allocation-failure reports; accepted, kmm never prints.
        const NOWARN = 1 << 13;
        /// Retry hard, but failure is allowed.
        const RETRY_MAYFAIL = 1 << 14;
        /// Must not fail: retries forever.
        const NOFAIL = 1 << 15;
        /// One reclaim attempt, then fail.
        const NORETRY = 1 << 16;
        /// Compound page metadata (head/tail); accepted.
        const COMP = 1 << 18;
        /// Enforce the cpuset; accepted, no effect here.
        const HARDWALL = 1 << 20;
        /// Cache-cold hint (removed from Linux 4.15); accepted, no effect.
        const COLD = 1 << 24;
    }
}

impl GfpFlags {
    /// The zone-modifier bits only.
    pub const ZONE_MASK: GfpFlags = GfpFlags::DMA
        .union(GfpFlags::HIGHMEM)
        .union(GfpFlags::DMA32)
        .union(GfpFlags::MOVABLE);
    /// Both reclaim bits (`__GFP_RECLAIM`).
    pub const RECLAIM: GfpFlags = GfpFlags::DIRECT_RECLAIM.union(GfpFlags::KSWAPD_RECLAIM);

    /// Linux's `gfpflags_allow_blocking`: the caller may sleep.
    pub const fn allows_blocking(self) -> bool {
        self.contains(GfpFlags::DIRECT_RECLAIM)
    }
}

/// `__GFP_DMA`
pub const __GFP_DMA: GfpFlags = GfpFlags::DMA;
/// `__GFP_HIGHMEM`
pub const __GFP_HIGHMEM: GfpFlags = GfpFlags::HIGHMEM;
/// `__GFP_DMA32`
pub const __GFP_DMA32: GfpFlags = GfpFlags::DMA32;
/// `__GFP_HIGH`
pub const __GFP_HIGH: GfpFlags = GfpFlags::HIGH;
/// `__GFP_IO`
pub const __GFP_IO: GfpFlags = GfpFlags::IO;
/// `__GFP_FS`
pub const __GFP_FS: GfpFlags = GfpFlags::FS;
/// `__GFP_ZERO`
pub const __GFP_ZERO: GfpFlags = GfpFlags::ZERO;
/// `__GFP_DIRECT_RECLAIM`
pub const __GFP_DIRECT_RECLAIM: GfpFlags = GfpFlags::DIRECT_RECLAIM;
/// `__GFP_KSWAPD_RECLAIM`
pub const __GFP_KSWAPD_RECLAIM: GfpFlags = GfpFlags::KSWAPD_RECLAIM;
/// `__GFP_RECLAIM`
pub const __GFP_RECLAIM: GfpFlags = GfpFlags::RECLAIM;
/// `__GFP_NOWARN`
pub const __GFP_NOWARN: GfpFlags = GfpFlags::NOWARN;
/// `__GFP_NOFAIL`
pub const __GFP_NOFAIL: GfpFlags = GfpFlags::NOFAIL;
/// `__GFP_NORETRY`
pub const __GFP_NORETRY: GfpFlags = GfpFlags::NORETRY;
/// `__GFP_RETRY_MAYFAIL`
pub const __GFP_RETRY_MAYFAIL: GfpFlags = GfpFlags::RETRY_MAYFAIL;
/// `__GFP_COMP`
pub const __GFP_COMP: GfpFlags = GfpFlags::COMP;
/// `__GFP_COLD` (a no-op hint)
pub const __GFP_COLD: GfpFlags = GfpFlags::COLD;

/// Interrupt context: never sleeps, may use part of the reserves.
pub const GFP_ATOMIC: GfpFlags = GfpFlags::HIGH.union(GfpFlags::KSWAPD_RECLAIM);
/// Ordinary kernel allocation: may sleep, do I/O and call file systems.
pub const GFP_KERNEL: GfpFlags = GfpFlags::RECLAIM.union(GfpFlags::IO).union(GfpFlags::FS);
/// Never sleeps and uses no reserves.
pub const GFP_NOWAIT: GfpFlags = GfpFlags::KSWAPD_RECLAIM;
/// May sleep but start no I/O.
pub const GFP_NOIO: GfpFlags = GfpFlags::RECLAIM;
/// May sleep and do I/O but not re-enter file systems.
pub const GFP_NOFS: GfpFlags = GfpFlags::RECLAIM.union(GfpFlags::IO);
/// User-space allocation that needs a kernel mapping.
pub const GFP_USER: GfpFlags = GFP_KERNEL.union(GfpFlags::HARDWALL);
/// User-space allocation that may come from high memory.
pub const GFP_HIGHUSER: GfpFlags = GFP_USER.union(GfpFlags::HIGHMEM);
/// From ZONE_DMA only (add the action flags you need, as in Linux).
pub const GFP_DMA: GfpFlags = GfpFlags::DMA;
/// From ZONE_DMA32 or below.
pub const GFP_DMA32: GfpFlags = GfpFlags::DMA32;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn composites_have_linux_meanings() {
        assert!(GFP_KERNEL.allows_blocking());
        assert!(!GFP_ATOMIC.allows_blocking());
        assert!(!GFP_NOWAIT.allows_blocking());
        assert!(GFP_ATOMIC.contains(__GFP_HIGH));
        assert!(!GFP_NOIO.contains(__GFP_IO) && !GFP_NOIO.contains(__GFP_FS));
        assert!(GFP_NOFS.contains(__GFP_IO) && !GFP_NOFS.contains(__GFP_FS));
        assert!(GFP_HIGHUSER.contains(GFP_USER | __GFP_HIGHMEM));
        assert_eq!(GFP_KERNEL & GfpFlags::ZONE_MASK, GfpFlags::empty());
    }
}
