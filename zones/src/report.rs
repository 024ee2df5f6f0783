//! The kernel's own report formats over plain snapshots of the zones:
//! `/proc/buddyinfo`, the watermark part of `/proc/zoneinfo`, and the
//! memory totals of `/proc/meminfo`.
//!
//! A [`ZoneStats`] is a copy of one zone's counters taken by whoever holds
//! the zone; the renderers here only format it, so a report never takes a
//! lock, never allocates, and can never disturb the allocator. Column widths
//! follow Linux's `mm/vmstat.c` and `fs/proc/meminfo.c`, so tools that parse
//! those files parse these. Lines for mechanisms kmm does not have (per-node
//! statistics, watermark boost, CMA, per-CPU sets) are left out rather than
//! printed as made-up zeros.

use crate::watermark::Watermarks;
use crate::{ZoneType, MAX_NR_ZONES};
use core::fmt;
use kmm_api::{Order, Pfn, PAGE_SHIFT};

/// Linux prints every zone as part of node 0 on a machine without NUMA.
const NODE: usize = 0;

/// One zone's counters at one moment, in pages.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct ZoneStats {
    /// Which zone.
    pub zone: ZoneType,
    /// First frame the zone spans.
    pub start_pfn: Pfn,
    /// Frames from the first to one past the last, holes included.
    pub spanned: usize,
    /// Frames of RAM in the span (holes excluded).
    pub present: usize,
    /// Frames the buddy allocator manages (present minus boot reservations).
    pub managed: usize,
    /// Frames free now.
    pub free: usize,
    /// Free blocks of each order (`free_area[order].nr_free`).
    pub nr_free: [usize; Order::LIMIT as usize + 1],
    /// The zone's largest order; buddyinfo prints orders `0..=max_order`.
    pub max_order: Order,
    /// The zone's marks.
    pub watermarks: Watermarks,
    /// Pages kept back from requests by their highest usable zone.
    pub lowmem_reserve: [usize; MAX_NR_ZONES],
}

impl ZoneStats {
    /// The snapshot of a zone with no memory.
    pub const fn empty(zone: ZoneType) -> Self {
        Self {
            zone,
            start_pfn: Pfn::new(0),
            spanned: 0,
            present: 0,
            managed: 0,
            free: 0,
            nr_free: [0; Order::LIMIT as usize + 1],
            max_order: Order::ZERO,
            watermarks: Watermarks {
                min: 0,
                low: 0,
                high: 0,
            },
            lowmem_reserve: [0; MAX_NR_ZONES],
        }
    }

    /// Whether the zone has any RAM (Linux's `populated_zone`).
    pub const fn is_populated(&self) -> bool {
        self.present != 0
    }

    /// Free blocks per order, `0..=max_order`.
    fn free_blocks(&self) -> &[usize] {
        &self.nr_free[..=self.max_order.as_usize()]
    }
}

/// `/proc/buddyinfo`: free blocks per order of each populated zone.
///
/// ```
/// use kmm_api::Order;
/// use kmm_zones::report::{BuddyInfo, ZoneStats};
/// use kmm_zones::ZoneType;
///
/// let mut dma = ZoneStats::empty(ZoneType::Dma);
/// dma.present = 4096;
/// dma.max_order = Order::new(2).unwrap();
/// dma.nr_free[..3].copy_from_slice(&[3, 0, 12]);
/// assert_eq!(
///     BuddyInfo(&[dma]).to_string(),
///     "Node 0, zone      DMA      3      0     12 \n"
/// );
/// ```
#[derive(Clone, Copy, Debug)]
pub struct BuddyInfo<'a>(pub &'a [ZoneStats]);

impl fmt::Display for BuddyInfo<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for zone in self.0.iter().filter(|z| z.is_populated()) {
            write!(f, "Node {NODE}, zone {:>8} ", zone.zone.name())?;
            for blocks in zone.free_blocks() {
                write!(f, "{blocks:>6} ")?;
            }
            f.write_str("\n")?;
        }
        Ok(())
    }
}

/// The watermark part of `/proc/zoneinfo`, every zone given (Linux lists
/// empty zones too, since their protection still shows the reserve ratios).
///
/// ```
/// use kmm_zones::report::{ZoneInfo, ZoneStats};
/// use kmm_zones::ZoneType;
///
/// let text = ZoneInfo(&[ZoneStats::empty(ZoneType::Dma32)]).to_string();
/// assert!(text.starts_with("Node 0, zone    DMA32\n  pages free     0\n"));
/// assert!(text.ends_with("        protection: (0, 0, 0, 0)\n"));
/// ```
#[derive(Clone, Copy, Debug)]
pub struct ZoneInfo<'a>(pub &'a [ZoneStats]);

impl fmt::Display for ZoneInfo<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for zone in self.0 {
            let w = zone.watermarks;
            write!(f, "Node {NODE}, zone {:>8}", zone.zone.name())?;
            write!(f, "\n  pages free     {}", zone.free)?;
            write!(f, "\n        min      {}", w.min)?;
            write!(f, "\n        low      {}", w.low)?;
            write!(f, "\n        high     {}", w.high)?;
            write!(f, "\n        spanned  {}", zone.spanned)?;
            write!(f, "\n        present  {}", zone.present)?;
            write!(f, "\n        managed  {}", zone.managed)?;
            f.write_str("\n        protection: (")?;
            for (i, reserve) in zone.lowmem_reserve.iter().enumerate() {
                let sep = if i == 0 { "" } else { ", " };
                write!(f, "{sep}{reserve}")?;
            }
            f.write_str(")")?;
            if zone.is_populated() {
                write!(f, "\n  start_pfn:           {}", zone.start_pfn.as_usize())?;
            }
            f.write_str("\n")?;
        }
        Ok(())
    }
}

/// The memory totals of `/proc/meminfo`, in pages; printed in KiB.
///
/// ```
/// use kmm_zones::report::MemInfo;
///
/// let info = MemInfo { total_pages: 515270, free_pages: 1000, high_total_pages: 0, high_free_pages: 0 };
/// assert!(info.to_string().starts_with("MemTotal:        2061080 kB\nMemFree:            4000 kB\n"));
/// ```
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default)]
pub struct MemInfo {
    /// Pages the allocator manages (Linux's `totalram_pages`).
    pub total_pages: usize,
    /// Pages free now.
    pub free_pages: usize,
    /// Managed pages of high memory (`totalhigh_pages`).
    pub high_total_pages: usize,
    /// Free pages of high memory.
    pub high_free_pages: usize,
}

impl MemInfo {
    /// Totals over zone snapshots: managed and free pages of all zones, and
    /// of the highmem ones.
    pub fn from_zones(stats: &[ZoneStats]) -> MemInfo {
        stats.iter().fold(MemInfo::default(), |sum, z| {
            let high = z.zone.is_highmem();
            MemInfo {
                total_pages: sum.total_pages.saturating_add(z.managed),
                free_pages: sum.free_pages.saturating_add(z.free),
                high_total_pages: sum.high_total_pages.saturating_add(if high {
                    z.managed
                } else {
                    0
                }),
                high_free_pages: sum
                    .high_free_pages
                    .saturating_add(if high { z.free } else { 0 }),
            }
        })
    }
}

impl fmt::Display for MemInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let lines = [
            ("MemTotal:", self.total_pages),
            ("MemFree:", self.free_pages),
            ("HighTotal:", self.high_total_pages),
            ("HighFree:", self.high_free_pages),
            (
                "LowTotal:",
                self.total_pages.saturating_sub(self.high_total_pages),
            ),
            (
                "LowFree:",
                self.free_pages.saturating_sub(self.high_free_pages),
            ),
        ];
        for (label, pages) in lines {
            // Linux pads the label to 16 columns and the value to 8.
            let kbytes = (pages as u64) << (PAGE_SHIFT - 10);
            writeln!(f, "{label:<16}{kbytes:>8} kB")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    extern crate std;
    use super::*;
    use std::string::ToString;

    fn order(n: u32) -> Order {
        Order::new(n).unwrap()
    }

    /// A small i386 machine: 16 MiB DMA, 112 MiB NORMAL, 64 MiB HIGHMEM,
    /// with DMA32 absent (it only exists on 64-bit layouts). Each zone's
    /// free count is the sum of its free blocks.
    fn machine() -> [ZoneStats; MAX_NR_ZONES] {
        let mut dma = ZoneStats::empty(ZoneType::Dma);
        dma.start_pfn = Pfn::new(1);
        (dma.spanned, dma.present, dma.managed, dma.free) = (4095, 3998, 3977, 2956);
        dma.max_order = order(10);
        dma.nr_free[..11].copy_from_slice(&[2, 1, 0, 1, 2, 1, 1, 0, 1, 1, 2]);
        dma.watermarks = Watermarks {
            min: 18,
            low: 22,
            high: 26,
        };
        dma.lowmem_reserve = [0, 0, 112, 368];

        let mut normal = ZoneStats::empty(ZoneType::Normal);
        normal.start_pfn = Pfn::new(4096);
        (normal.spanned, normal.present, normal.managed, normal.free) =
            (28672, 28672, 27000, 23180);
        normal.max_order = order(10);
        normal.nr_free[..11].copy_from_slice(&[100, 50, 25, 12, 6, 3, 1, 0, 0, 0, 22]);
        normal.watermarks = Watermarks {
            min: 304,
            low: 380,
            high: 456,
        };
        normal.lowmem_reserve = [0, 0, 0, 512];

        let mut high = ZoneStats::empty(ZoneType::HighMem);
        high.start_pfn = Pfn::new(32768);
        (high.spanned, high.present, high.managed, high.free) = (16384, 16384, 16384, 16000);
        high.max_order = order(3);
        high.nr_free[..4].copy_from_slice(&[0, 0, 0, 2000]);
        high.watermarks = Watermarks {
            min: 32,
            low: 48,
            high: 64,
        };

        [dma, ZoneStats::empty(ZoneType::Dma32), normal, high]
    }

    #[test]
    fn buddyinfo_lists_populated_zones_with_linux_widths() {
        let text = BuddyInfo(&machine()).to_string();
        let lines: std::vec::Vec<&str> = text.lines().collect();
        assert_eq!(
            lines,
            [
                "Node 0, zone      DMA      2      1      0      1      2      1      1      0      1      1      2 ",
                "Node 0, zone   Normal    100     50     25     12      6      3      1      0      0      0     22 ",
                "Node 0, zone  HighMem      0      0      0   2000 ",
            ]
        );
        assert!(text.ends_with(" \n"));
    }

    #[test]
    fn buddyinfo_widens_columns_for_large_counts_like_printf() {
        let mut zone = ZoneStats::empty(ZoneType::Normal);
        zone.present = 1;
        zone.nr_free[0] = 12_345_678;
        assert_eq!(
            BuddyInfo(&[zone]).to_string(),
            "Node 0, zone   Normal 12345678 \n"
        );
    }

    #[test]
    fn zoneinfo_prints_marks_sizes_and_protection_for_every_zone() {
        let text = ZoneInfo(&machine()).to_string();
        let expected = "\
Node 0, zone      DMA
  pages free     2956
        min      18
        low      22
        high     26
        spanned  4095
        present  3998
        managed  3977
        protection: (0, 0, 112, 368)
  start_pfn:           1
Node 0, zone    DMA32
  pages free     0
        min      0
        low      0
        high     0
        spanned  0
        present  0
        managed  0
        protection: (0, 0, 0, 0)
Node 0, zone   Normal
  pages free     23180
        min      304
        low      380
        high     456
        spanned  28672
        present  28672
        managed  27000
        protection: (0, 0, 0, 512)
  start_pfn:           4096
Node 0, zone  HighMem
  pages free     16000
        min      32
        low      48
        high     64
        spanned  16384
        present  16384
        managed  16384
        protection: (0, 0, 0, 0)
  start_pfn:           32768
";
        assert_eq!(text, expected);
    }

    #[test]
    fn meminfo_totals_are_managed_pages_split_at_highmem() {
        let info = MemInfo::from_zones(&machine());
        assert_eq!(
            info,
            MemInfo {
                total_pages: 3977 + 27000 + 16384,
                free_pages: 2956 + 23180 + 16000,
                high_total_pages: 16384,
                high_free_pages: 16000,
            }
        );
    }

    #[test]
    fn meminfo_pads_labels_to_16_and_values_to_8_columns() {
        let text = MemInfo::from_zones(&machine()).to_string();
        let expected = "\
MemTotal:         189444 kB
MemFree:          168544 kB
HighTotal:         65536 kB
HighFree:          64000 kB
LowTotal:         123908 kB
LowFree:          104544 kB
";
        assert_eq!(text, expected);
        let big = MemInfo {
            total_pages: 1 << 30,
            ..MemInfo::default()
        };
        assert!(big
            .to_string()
            .starts_with("MemTotal:       4294967296 kB\n"));
    }
}
