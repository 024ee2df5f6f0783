//! The kinds of zone, named and ordered as Linux orders them: an allocation
//! may fall back from a higher zone to a lower one, never upward.

use core::fmt;

/// Number of zone kinds (`MAX_NR_ZONES`).
pub const MAX_NR_ZONES: usize = 4;

/// A zone kind. The discriminant is the zone index (`zone_idx`), so lower
/// zones compare smaller.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Debug)]
pub enum ZoneType {
    /// ZONE_DMA: frames below 16 MiB, reachable by ISA DMA.
    Dma = 0,
    /// ZONE_DMA32: frames below 4 GiB on 64-bit layouts.
    Dma32 = 1,
    /// ZONE_NORMAL: the rest of the permanently mapped memory.
    Normal = 2,
    /// ZONE_HIGHMEM: frames above the lowmem limit, not permanently mapped.
    HighMem = 3,
}

impl ZoneType {
    /// Every kind, lowest first.
    pub const ALL: [ZoneType; MAX_NR_ZONES] = [
        ZoneType::Dma,
        ZoneType::Dma32,
        ZoneType::Normal,
        ZoneType::HighMem,
    ];

    /// The zone index (`zone_idx`).
    pub const fn index(self) -> usize {
        self as usize
    }

    /// The kind at a zone index, `None` past `MAX_NR_ZONES`.
    pub const fn from_index(index: usize) -> Option<ZoneType> {
        match index {
            0 => Some(ZoneType::Dma),
            1 => Some(ZoneType::Dma32),
            2 => Some(ZoneType::Normal),
            3 => Some(ZoneType::HighMem),
            _ => None,
        }
    }

    /// The name Linux prints in `/proc/zoneinfo` and `/proc/buddyinfo`.
    pub const fn name(self) -> &'static str {
        match self {
            ZoneType::Dma => "DMA",
            ZoneType::Dma32 => "DMA32",
            ZoneType::Normal => "Normal",
            ZoneType::HighMem => "HighMem",
        }
    }

    /// Whether frames of this zone lie outside the direct map.
    pub const fn is_highmem(self) -> bool {
        matches!(self, ZoneType::HighMem)
    }
}

impl fmt::Display for ZoneType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}
