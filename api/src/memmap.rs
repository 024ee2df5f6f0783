//! The physical memory map an embedder hands to the manager at boot (the
//! BIOS e820 / UEFI map, or a device tree's memory nodes).

use crate::PhysAddr;

/// What a range of physical memory holds.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum RegionKind {
    /// Free RAM the manager may use.
    Usable,
    /// Firmware, device or otherwise unusable memory.
    Reserved,
    /// RAM holding the running kernel image: present, never allocated.
    KernelImage,
}

/// One entry of the physical memory map: `[start, end)`.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct MemoryRegion {
    /// First byte.
    pub start: PhysAddr,
    /// One past the last byte.
    pub end: PhysAddr,
    /// What the range holds.
    pub kind: RegionKind,
}

impl MemoryRegion {
    /// A region of `kind` covering `[start, end)`.
    pub const fn new(start: u64, end: u64, kind: RegionKind) -> Self {
        Self {
            start: PhysAddr::new(start),
            end: PhysAddr::new(end),
            kind,
        }
    }
    /// Bytes covered (0 for an inverted entry).
    pub const fn len(&self) -> u64 {
        self.end.as_u64().saturating_sub(self.start.as_u64())
    }
    /// Whether the entry covers no bytes.
    pub const fn is_empty(&self) -> bool {
        self.len() == 0
    }
}
