//! Cache creation flags with Linux's names and meanings, and the debug
//! byte patterns of `include/linux/poison.h`.

use bitflags::bitflags;

bitflags! {
    /// Flags given to `kmem_cache_create` (Linux `slab_flags_t`).
    #[derive(Clone, Copy, PartialEq, Eq, Hash, Debug, Default)]
    pub struct SlabFlags: u32 {
        /// Align objects to a cache line (or the largest power of two that
        /// still packs small objects two per line).
        const HWCACHE_ALIGN = 1 << 0;
        /// Fill free objects with `POISON_FREE`/`POISON_END` and check the
        /// pattern on allocation (catches writes after free).
        const POISON = 1 << 1;
        /// Surround objects with red zones checked on free and validation.
        const RED_ZONE = 1 << 2;
        /// Record the allocating and freeing call sites.
        const STORE_USER = 1 << 3;
        /// Pages are reclaimable (`__GFP_RECLAIMABLE`).
        const RECLAIM_ACCOUNT = 1 << 4;
        /// Slabs come from ZONE_DMA.
        const CACHE_DMA = 1 << 5;
    }
}

/// `SLAB_HWCACHE_ALIGN`
pub const SLAB_HWCACHE_ALIGN: SlabFlags = SlabFlags::HWCACHE_ALIGN;
/// `SLAB_POISON`
pub const SLAB_POISON: SlabFlags = SlabFlags::POISON;
/// `SLAB_RED_ZONE`
pub const SLAB_RED_ZONE: SlabFlags = SlabFlags::RED_ZONE;
/// `SLAB_STORE_USER`
pub const SLAB_STORE_USER: SlabFlags = SlabFlags::STORE_USER;
/// `SLAB_RECLAIM_ACCOUNT`
pub const SLAB_RECLAIM_ACCOUNT: SlabFlags = SlabFlags::RECLAIM_ACCOUNT;
/// `SLAB_CACHE_DMA`
pub const SLAB_CACHE_DMA: SlabFlags = SlabFlags::CACHE_DMA;

impl SlabFlags {
    /// The flags that turn on debugging (and take a cache off the per-CPU
    /// fast path, as in SLUB).
    pub const DEBUG: SlabFlags = SlabFlags::POISON
        .union(SlabFlags::RED_ZONE)
        .union(SlabFlags::STORE_USER);
}

/// Byte written over a free object (`POISON_FREE`).
pub const POISON_FREE: u8 = 0x6b;
/// Last byte of a poisoned free object (`POISON_END`).
pub const POISON_END: u8 = 0xa5;
/// Byte written into padding no object uses (`POISON_INUSE`).
pub const POISON_INUSE: u8 = 0x5a;
/// Red-zone byte while the object is free (`SLUB_RED_INACTIVE`).
pub const SLUB_RED_INACTIVE: u8 = 0xbb;
/// Red-zone byte while the object is allocated (`SLUB_RED_ACTIVE`).
pub const SLUB_RED_ACTIVE: u8 = 0xcc;

/// The cache line size alignment `SLAB_HWCACHE_ALIGN` aims for.
pub const CACHE_LINE_SIZE: usize = 64;
