//! Machine layouts: where the kernel puts the direct map, vmalloc, the pkmap
//! pool and the fixmap, and where the zones end. Owns only arithmetic; it
//! maps nothing and must never hold a figure that could be computed (the
//! 896 MiB lowmem limit falls out of `4 GiB - PAGE_OFFSET - VMALLOC_RESERVE`).
//!
//! The i386 preset follows `arch/x86/include/asm/page_32_types.h` and
//! `pgtable_32_areas.h` in their classic form (before the cpu-entry-area and
//! LDT remap carved more out of the top), from the top of the address space
//! down:
//!
//! ```text
//! FIXADDR_TOP  0xfffff000   fixmap index 0 (FIX_HOLE), then the per-CPU
//!                           kmap_local slots growing down
//! FIXADDR_START             = FIXADDR_TOP - (fixmap entries) * PAGE_SIZE
//! PKMAP_BASE                = (FIXADDR_START - (LAST_PKMAP + 1) pages) & PMD_MASK
//! VMALLOC_END               = PKMAP_BASE - 2 pages
//! VMALLOC_START             = high_memory + VMALLOC_OFFSET (8 MiB hole)
//! high_memory               = PAGE_OFFSET + min(RAM, MAXMEM)
//! PAGE_OFFSET  0xc0000000   start of the direct map of lowmem
//! ```
//!
//! The 64-bit preset maps all RAM linearly, has no highmem and no pkmap, and
//! keeps a vmalloc range and the kmap_local fixmap slots.
//!
//! Every range here is half-open, `[start, end)`, including the 64-bit
//! `VMALLOC_END` that Linux writes as an inclusive bound.

use core::fmt;
use kmm_api::{Error, Order, Pfn, PhysAddr, VirtAddr, PAGE_SHIFT, PAGE_SIZE};
use kmm_zones::ZoneConfig;

const KIB: u64 = 1 << 10;
const MIB: u64 = 1 << 20;
const GIB: u64 = 1 << 30;
#[cfg(target_pointer_width = "64")] // the 64-bit layout only
const TIB: u64 = 1 << 40;
const PAGE: u64 = PAGE_SIZE as u64;

/// Compile-time CPU limit the fixmap is sized for (Linux `CONFIG_NR_CPUS`):
/// each CPU owns [`KM_MAX_IDX`] kmap_local slots whether or not it exists,
/// so the layout does not depend on the CPUs found at boot.
pub const NR_CPUS: usize = 8;
/// kmap_local slots per CPU (Linux `KM_MAX_IDX`).
pub const KM_MAX_IDX: usize = 16;
/// Fixmap index 0: an unmapped page at `FIXADDR_TOP` (Linux `FIX_HOLE`).
pub const FIX_HOLE: usize = 0;
/// First fixmap index of the kmap_local slots (Linux `FIX_KMAP_BEGIN`).
pub const FIX_KMAP_BEGIN: usize = FIX_HOLE + 1;
/// Last fixmap index of the kmap_local slots (Linux `FIX_KMAP_END`).
pub const FIX_KMAP_END: usize = FIX_KMAP_BEGIN + KM_MAX_IDX * NR_CPUS - 1;
/// Number of fixmap entries (Linux `__end_of_fixed_addresses`).
pub const NR_FIX_ENTRIES: usize = FIX_KMAP_END + 1;

/// i386 `__PAGE_OFFSET`: the user/kernel split at 3 GiB.
pub const I386_PAGE_OFFSET: u64 = 0xc000_0000;
/// i386 `__VMALLOC_RESERVE`: virtual space kept for vmalloc, pkmap and fixmap.
pub const VMALLOC_RESERVE: u64 = 128 * MIB;
/// i386 `VMALLOC_OFFSET`: the unmapped hole between lowmem and vmalloc that
/// catches stray accesses past `high_memory`.
pub const VMALLOC_OFFSET: u64 = 8 * MIB;
/// Physical end of `ZONE_DMA` (ISA DMA reaches 16 MiB).
pub const MAX_DMA_ADDRESS: u64 = 16 * MIB;
/// Physical end of `ZONE_DMA32` on 64-bit layouts.
pub const MAX_DMA32_ADDRESS: u64 = 4 * GIB;
/// The largest physical address a 32-bit PAE page table reaches (36 bits).
const PAE_PHYS_LIMIT: u64 = 64 * GIB;
/// The 32-bit virtual address space.
const I386_VA_SIZE: u64 = 4 * GIB;

/// x86-64 `__PAGE_OFFSET_BASE_L4`: the direct map with 4-level paging.
pub const X86_64_PAGE_OFFSET: u64 = 0xffff_8880_0000_0000;
/// x86-64 direct-map size with 4-level paging (the RAM it can map).
#[cfg(target_pointer_width = "64")] // the 64-bit layout only
const X86_64_DIRECT_MAP_SIZE: u64 = 64 * TIB;
/// x86-64 `VMALLOC_START` with 4-level paging.
#[cfg(target_pointer_width = "64")] // the 64-bit layout only
const X86_64_VMALLOC_START: u64 = 0xffff_c900_0000_0000;
/// x86-64 `VMALLOC_SIZE_TB` with 4-level paging.
#[cfg(target_pointer_width = "64")] // the 64-bit layout only
const X86_64_VMALLOC_SIZE: u64 = 32 * TIB;
/// x86-64 `VSYSCALL_ADDR` (`-10 MiB`), which the fixmap top is derived from.
#[cfg(target_pointer_width = "64")] // the 64-bit layout only
const X86_64_VSYSCALL_ADDR: u64 = 0u64.wrapping_sub(10 * MIB);
/// x86-64 PMD size (2 MiB).
#[cfg(target_pointer_width = "64")] // the 64-bit layout only
const X86_64_PMD_SIZE: u64 = 2 * MIB;

/// Which page-table format a layout is for.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Arch {
    /// 32-bit x86; `pae` selects the three-level 64-bit-PTE format.
    I386 {
        /// Physical Address Extension.
        pae: bool,
    },
    /// 64-bit x86 with 4-level paging.
    X86_64,
}

/// A machine's virtual memory layout and zone limits, all derived from the
/// RAM size and the architecture.
///
/// ```
/// use kmm::layout::Layout;
/// let l = Layout::i386(2 << 30, false)?;
/// assert_eq!(l.lowmem_bytes(), 896 << 20);
/// assert_eq!(l.high_memory().as_usize(), 0xf800_0000);
/// assert_eq!(l.vmalloc_start().as_usize(), 0xf880_0000);
/// # Ok::<(), kmm_api::Error>(())
/// ```
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct Layout {
    arch: Arch,
    ram_bytes: u64,
    page_offset: u64,
    lowmem_bytes: u64,
    vmalloc_start: u64,
    vmalloc_end: u64,
    pkmap_base: Option<u64>,
    last_pkmap: usize,
    fixaddr_top: u64,
    dma32_end: Option<u64>,
}

impl Layout {
    /// The i386 layout of a machine with `ram_bytes` of RAM (rounded down to
    /// whole pages), with or without PAE.
    ///
    /// Refused with [`Error::BadPhysAddr`] (naming the end of RAM) when the
    /// RAM is empty or more than the page-table format can address: 4 GiB
    /// without PAE, 64 GiB with it.
    pub fn i386(ram_bytes: u64, pae: bool) -> Result<Layout, Error> {
        let ram_bytes = ram_bytes & !(PAGE - 1);
        let phys_limit = if pae { PAE_PHYS_LIMIT } else { I386_VA_SIZE };
        if ram_bytes == 0 || ram_bytes > phys_limit {
            return Err(Error::BadPhysAddr {
                addr: PhysAddr::new(ram_bytes),
            });
        }
        let lowmem_bytes = ram_bytes.min(Self::i386_maxmem());
        let high_memory = I386_PAGE_OFFSET + lowmem_bytes;
        let fixaddr_top = I386_VA_SIZE - PAGE;
        let fixaddr_start = fixaddr_top - NR_FIX_ENTRIES as u64 * PAGE;
        let last_pkmap = Self::i386_ptrs_per_pte(pae) as usize;
        let pkmap_base =
            (fixaddr_start - (last_pkmap as u64 + 1) * PAGE) & !(Self::i386_pmd_size(pae) - 1);
        Ok(Layout {
            arch: Arch::I386 { pae },
            ram_bytes,
            page_offset: I386_PAGE_OFFSET,
            lowmem_bytes,
            vmalloc_start: high_memory + VMALLOC_OFFSET,
            vmalloc_end: pkmap_base - 2 * PAGE,
            pkmap_base: Some(pkmap_base),
            last_pkmap,
            fixaddr_top,
            dma32_end: None,
        })
    }

    /// Linux `MAXMEM` on i386: the kernel's 1 GiB of virtual space minus the
    /// vmalloc reserve, the most RAM the direct map can hold (896 MiB).
    pub const fn i386_maxmem() -> u64 {
        (I386_VA_SIZE - I386_PAGE_OFFSET) - VMALLOC_RESERVE
    }

    /// One PTE page maps a PMD: 1024 four-byte entries (4 MiB), or 512
    /// eight-byte entries with PAE (2 MiB). `LAST_PKMAP` is one PTE page of
    /// slots, so it follows the same split.
    const fn i386_pmd_size(pae: bool) -> u64 {
        Self::i386_ptrs_per_pte(pae) * PAGE
    }

    /// Entries in one PTE page (Linux `PTRS_PER_PTE`).
    const fn i386_ptrs_per_pte(pae: bool) -> u64 {
        let pte_bytes = if pae { 8 } else { 4 };
        PAGE / pte_bytes
    }

    /// The 64-bit layout of Linux with 4-level paging: all `ram_bytes` mapped
    /// at `0xffff_8880_0000_0000`.
    #[cfg(target_pointer_width = "64")]
    pub fn x86_64(ram_bytes: u64) -> Result<Layout, Error> {
        Self::x86_64_at(ram_bytes, VirtAddr::new(X86_64_PAGE_OFFSET as usize))
    }

    /// The 64-bit layout with the direct map at `page_offset` instead, e.g.
    /// the address of a host buffer standing in for RAM. `page_offset` must
    /// be page aligned and the direct map must not reach the vmalloc range
    /// or wrap; otherwise [`Error::BadVirtAddr`].
    #[cfg(target_pointer_width = "64")]
    pub fn x86_64_at(ram_bytes: u64, page_offset: VirtAddr) -> Result<Layout, Error> {
        let ram_bytes = ram_bytes & !(PAGE - 1);
        if ram_bytes == 0 || ram_bytes > X86_64_DIRECT_MAP_SIZE {
            return Err(Error::BadPhysAddr {
                addr: PhysAddr::new(ram_bytes),
            });
        }
        let base = page_offset.as_usize() as u64;
        let fits = base
            .checked_add(ram_bytes)
            .is_some_and(|end| end <= X86_64_VMALLOC_START || base >= X86_64_VMALLOC_START);
        if !page_offset.is_aligned(PAGE_SIZE) || !fits {
            return Err(Error::BadVirtAddr { addr: page_offset });
        }
        let fixaddr_top = (X86_64_VSYSCALL_ADDR + PAGE).next_multiple_of(X86_64_PMD_SIZE) - PAGE;
        Ok(Layout {
            arch: Arch::X86_64,
            ram_bytes,
            page_offset: base,
            lowmem_bytes: ram_bytes,
            vmalloc_start: X86_64_VMALLOC_START,
            vmalloc_end: X86_64_VMALLOC_START + X86_64_VMALLOC_SIZE,
            pkmap_base: None,
            last_pkmap: 0,
            fixaddr_top,
            dma32_end: Some(ram_bytes.min(MAX_DMA32_ADDRESS)),
        })
    }

    /// The architecture.
    pub const fn arch(&self) -> Arch {
        self.arch
    }
    /// RAM covered by the layout, in bytes (whole pages).
    pub const fn ram_bytes(&self) -> u64 {
        self.ram_bytes
    }
    /// Start of the direct map (`PAGE_OFFSET`); user space lies below it.
    pub const fn page_offset(&self) -> VirtAddr {
        va(self.page_offset)
    }
    /// Bytes of RAM in the direct map (lowmem).
    pub const fn lowmem_bytes(&self) -> u64 {
        self.lowmem_bytes
    }
    /// Bytes of RAM outside the direct map (highmem).
    pub const fn highmem_bytes(&self) -> u64 {
        self.ram_bytes - self.lowmem_bytes
    }
    /// End of the direct map (Linux `high_memory`).
    pub const fn high_memory(&self) -> VirtAddr {
        va(self.page_offset + self.lowmem_bytes)
    }
    /// First vmalloc address (`VMALLOC_START`).
    pub const fn vmalloc_start(&self) -> VirtAddr {
        va(self.vmalloc_start)
    }
    /// One past the last vmalloc address (`VMALLOC_END`).
    pub const fn vmalloc_end(&self) -> VirtAddr {
        va(self.vmalloc_end)
    }
    /// Start of the pkmap pool (`PKMAP_BASE`); `None` without highmem support.
    pub const fn pkmap_base(&self) -> Option<VirtAddr> {
        match self.pkmap_base {
            Some(b) => Some(va(b)),
            None => None,
        }
    }
    /// Number of pkmap slots (`LAST_PKMAP`); 0 without a pkmap pool.
    pub const fn last_pkmap(&self) -> usize {
        self.last_pkmap
    }
    /// The virtual address of pkmap slot `nr` (Linux `PKMAP_ADDR`), `None`
    /// past `LAST_PKMAP` or without a pool.
    pub const fn pkmap_addr(&self, nr: usize) -> Option<VirtAddr> {
        match self.pkmap_base {
            Some(base) if nr < self.last_pkmap => Some(va(base + nr as u64 * PAGE)),
            _ => None,
        }
    }
    /// Top of the fixmap (`FIXADDR_TOP`): the address of fixmap index 0.
    pub const fn fixaddr_top(&self) -> VirtAddr {
        va(self.fixaddr_top)
    }
    /// Bottom of the fixmap (`FIXADDR_START`).
    pub const fn fixaddr_start(&self) -> VirtAddr {
        va(self.fixaddr_top - NR_FIX_ENTRIES as u64 * PAGE)
    }
    /// The address of fixmap index `idx` (Linux `__fix_to_virt`): indices
    /// grow downward from `FIXADDR_TOP`. `None` past the last index.
    pub const fn fix_to_virt(&self, idx: usize) -> Option<VirtAddr> {
        if idx < NR_FIX_ENTRIES {
            Some(va(self.fixaddr_top - ((idx as u64) << PAGE_SHIFT)))
        } else {
            None
        }
    }
    /// The fixmap address of kmap_local slot `slot` of `cpu`, `None` if
    /// either is out of range.
    pub const fn kmap_local_addr(&self, cpu: usize, slot: usize) -> Option<VirtAddr> {
        if cpu >= NR_CPUS || slot >= KM_MAX_IDX {
            return None;
        }
        self.fix_to_virt(FIX_KMAP_BEGIN + cpu * KM_MAX_IDX + slot)
    }
    /// The range a kernel page table maps single pages into, as `(first
    /// byte, last byte)`: from `VMALLOC_START` to the page below
    /// `FIXADDR_TOP` (the top page is the fixmap's hole, never mapped). The
    /// direct map and user space lie below it. An inclusive bound, because
    /// on a 32-bit machine the exclusive one would be 4 GiB.
    pub const fn kernel_map_range(&self) -> (VirtAddr, VirtAddr) {
        (va(self.vmalloc_start), va(self.fixaddr_top - 1))
    }
    /// First frame above `ZONE_DMA` (or the end of RAM, if smaller).
    pub const fn dma_end_pfn(&self) -> Pfn {
        pfn(min(self.ram_bytes, MAX_DMA_ADDRESS))
    }
    /// First frame above `ZONE_DMA32`; `None` on layouts without one.
    pub const fn dma32_end_pfn(&self) -> Option<Pfn> {
        match self.dma32_end {
            Some(e) => Some(pfn(e)),
            None => None,
        }
    }
    /// First frame outside the direct map (Linux `max_low_pfn`).
    pub const fn max_low_pfn(&self) -> Pfn {
        pfn(self.lowmem_bytes)
    }
    /// One past the last frame of RAM (Linux `max_pfn`).
    pub const fn max_pfn(&self) -> Pfn {
        pfn(self.ram_bytes)
    }
    /// The zone limits of this layout for `kmm-zones`, with buddy orders
    /// up to `max_order`.
    pub const fn zone_config(&self, max_order: Order) -> ZoneConfig {
        ZoneConfig {
            dma_end: self.dma_end_pfn(),
            dma32_end: self.dma32_end_pfn(),
            lowmem_end: self.max_low_pfn(),
            max_order,
        }
    }

    /// The physical address below which frames are permanently mapped (for
    /// early allocations that must be reachable through the direct map).
    pub const fn lowmem_limit(&self) -> PhysAddr {
        PhysAddr::new(self.lowmem_bytes)
    }
}

const fn min(a: u64, b: u64) -> u64 {
    if a < b {
        a
    } else {
        b
    }
}

const fn pfn(bytes: u64) -> Pfn {
    Pfn::new((bytes >> PAGE_SHIFT) as usize)
}

/// Every address a layout holds was computed inside the address space of
/// its own architecture, and the 64-bit presets only exist on 64-bit
/// targets, so the value always fits `usize`.
const fn va(addr: u64) -> VirtAddr {
    VirtAddr::new(addr as usize)
}

/// Prints the layout as Linux prints it at boot (`mem_init` on i386):
/// one line per area, with its size in kB or MB.
impl fmt::Display for Layout {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let width = match self.arch {
            Arch::I386 { .. } => 8,
            Arch::X86_64 => 16,
        };
        let line = |f: &mut fmt::Formatter<'_>, name: &str, start: u64, end: u64, mb: bool| {
            let size = end - start;
            let (n, unit) = if mb {
                (size / MIB, "MB")
            } else {
                (size / KIB, "kB")
            };
            writeln!(
                f,
                "    {name:<8}: {start:#0w$x} - {end:#0w$x}   ({n:>4} {unit})",
                w = width + 2
            )
        };
        writeln!(f, "virtual kernel memory layout:")?;
        line(
            f,
            "fixmap",
            self.fixaddr_start().as_usize() as u64,
            self.fixaddr_top,
            false,
        )?;
        if let Some(base) = self.pkmap_base {
            line(
                f,
                "pkmap",
                base,
                base + self.last_pkmap as u64 * PAGE,
                false,
            )?;
        }
        line(f, "vmalloc", self.vmalloc_start, self.vmalloc_end, true)?;
        line(
            f,
            "lowmem",
            self.page_offset,
            self.page_offset + self.lowmem_bytes,
            true,
        )
    }
}

#[cfg(test)]
mod tests;
