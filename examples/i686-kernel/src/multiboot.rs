//! The Multiboot v1 information the loader leaves (its memory map, the
//! BIOS e820 table in Multiboot's framing), copied into the kernel before
//! anything can reuse the low memory it sits in.

use kmm::{MemoryRegion, RegionKind, VirtAddr};

/// Entries kept; QEMU's map has about six.
pub const MAX_ENTRIES: usize = 32;

/// `flags` bit 6: `mmap_length` and `mmap_addr` are valid.
const MULTIBOOT_INFO_MEM_MAP: u32 = 1 << 6;
/// Multiboot's (and e820's) type of usable RAM.
const E820_RAM: u32 = 1;

/// One entry as the BIOS reported it.
#[derive(Clone, Copy, Debug, Default)]
pub struct E820Entry {
    /// First byte.
    pub base: u64,
    /// Bytes.
    pub len: u64,
    /// e820 type: 1 RAM, 2 reserved, 3 ACPI, 4 NVS, 5 unusable.
    pub kind: u32,
}

impl E820Entry {
    /// The name Linux prints for the type.
    pub fn kind_name(&self) -> &'static str {
        match self.kind {
            E820_RAM => "usable",
            3 => "ACPI data",
            4 => "ACPI NVS",
            5 => "unusable",
            _ => "reserved",
        }
    }
}

/// The memory map, copied.
#[derive(Clone, Copy, Debug)]
pub struct MemoryMap {
    entries: [E820Entry; MAX_ENTRIES],
    len: usize,
}

impl MemoryMap {
    /// The entries, in the loader's order.
    pub fn entries(&self) -> &[E820Entry] {
        &self.entries[..self.len]
    }

    /// One past the last byte of usable RAM: the RAM size a layout is
    /// computed from.
    pub fn ram_end(&self) -> u64 {
        self.entries()
            .iter()
            .filter(|e| e.kind == E820_RAM)
            .map(|e| e.base.saturating_add(e.len))
            .max()
            .unwrap_or(0)
    }

    /// The map as kmm takes it: RAM usable, everything else reserved, and
    /// the kernel image `[image_start, image_end)` marked so the zones
    /// never hand it out. Returns the regions written.
    pub fn regions<'a>(
        &self,
        image_start: u64,
        image_end: u64,
        out: &'a mut [MemoryRegion; MAX_ENTRIES + 1],
    ) -> &'a [MemoryRegion] {
        let mut n = 0;
        for e in self.entries() {
            let kind = match e.kind {
                E820_RAM => RegionKind::Usable,
                _ => RegionKind::Reserved,
            };
            out[n] = MemoryRegion::new(e.base, e.base.saturating_add(e.len), kind);
            n += 1;
        }
        out[n] = MemoryRegion::new(image_start, image_end, RegionKind::KernelImage);
        &out[..=n]
    }
}

/// Reads the memory map from the Multiboot information at physical
/// `info`, reached at `page_offset + phys` (the boot page directory maps
/// lowmem there). `None` if the loader gave no map.
///
/// # Safety
///
/// `info` is the information pointer a Multiboot loader passed in EBX,
/// and the information and its map lie in lowmem mapped at `page_offset`
/// and are not yet overwritten.
pub unsafe fn memory_map(page_offset: VirtAddr, info: u32) -> Option<MemoryMap> {
    let at = |phys: u32| (page_offset.as_usize() + phys as usize) as *const u8;
    let word = |phys: u32| -> u32 {
        // SAFETY: the caller's contract: the information's words are
        // mapped at `page_offset + phys`; Multiboot aligns nothing, so read
        // unaligned.
        unsafe { at(phys).cast::<u32>().read_unaligned() }
    };
    let flags = word(info);
    if flags & MULTIBOOT_INFO_MEM_MAP == 0 {
        return None;
    }
    let (length, addr) = (word(info + 44), word(info + 48));
    let mut map = MemoryMap {
        entries: [E820Entry::default(); MAX_ENTRIES],
        len: 0,
    };
    let mut offset = 0;
    // Each entry: size (u32, not counting itself), base (u64), length
    // (u64), type (u32).
    while offset < length && map.len < MAX_ENTRIES {
        let entry = addr + offset;
        let size = word(entry);
        let lo = |o: u32| u64::from(word(entry + o));
        map.entries[map.len] = E820Entry {
            base: lo(4) | lo(8) << 32,
            len: lo(12) | lo(16) << 32,
            kind: word(entry + 20),
        };
        map.len += 1;
        offset += size + 4;
    }
    Some(map)
}
