//! The tour's vmalloc example, run on a booted manager: `vmalloc(1 MiB)`
//! over scattered frames (highmem first), the same bytes read through the
//! vmalloc address and through each frame's own mapping, an `ioremap` of
//! a device range, `/proc/vmallocinfo`, and `vfree` with the lazy purge.
//! Owns what it maps and allocates and gives it all back; the zones end as
//! they began but for the page-table pages the kernel's table keeps.

use crate::x86::Mmu;
use crate::{Error, MemoryManager};
use kmm_api::{DirectMap, Pfn, PhysAddr, PreemptControl, PAGE_SIZE};
use kmm_zones::ZoneType;
use std::string::{String, ToString};
use std::vec::Vec;

/// Bytes the example vmallocs.
pub const VMALLOC_EXAMPLE_BYTES: usize = 1 << 20;

/// What [`vmalloc_example`] saw.
#[derive(Clone, Debug)]
pub struct VmallocExample {
    /// The machine address `vmalloc` returned.
    pub addr: kmm_api::VirtAddr,
    /// The frame behind each page, in order.
    pub frames: Vec<Pfn>,
    /// How many of them are highmem frames.
    pub highmem_frames: usize,
    /// Pages whose bytes through the vmalloc address equal the bytes
    /// through the frame's own mapping (all of them, or the example
    /// failed).
    pub pages_compared: usize,
    /// The device range `ioremap` mapped, the address it returned, and the
    /// byte the device saw after a write through it.
    pub ioremap: Option<(PhysAddr, kmm_api::VirtAddr, u8)>,
    /// `/proc/vmallocinfo` while both were live.
    pub vmallocinfo: String,
    /// TLB flushes the `vfree`, `iounmap` and purge cost together.
    pub flushes: u64,
    /// Free pages before, and after everything was given back and purged
    /// (less the page-table pages the table keeps).
    pub free_before_after: (usize, usize),
}

/// How the example reads a byte of device memory back (the device's side
/// of the ioremap).
pub type DeviceRead<'a> = &'a dyn Fn(PhysAddr) -> Option<u8>;

/// Runs the example; `device` is a device range to `ioremap` (the
/// simulated machine's window), with a way to read what the device saw.
pub fn vmalloc_example<P: PreemptControl, D: DirectMap, M: Mmu>(
    mm: &MemoryManager<P, D, M>,
    device: Option<(PhysAddr, DeviceRead<'_>)>,
) -> Result<VmallocExample, Error> {
    let table = mm
        .kernel_page_table()
        .ok_or(Error::Vmalloc(kmm_vmarea::VmareaError::NoVmalloc))?;
    mm.drain_all_pages();
    let free_before = mm.nr_free_pages();
    let tables_before = table.table_pages();
    let flushes_before = mm
        .vmalloc_layer()
        .map_or(0, |vm| vm.stats().areas.flush_tokens);
    let area = mm.vmalloc(VMALLOC_EXAMPLE_BYTES)?;
    let dm = mm.zones().direct_map();
    let addr = dm.ptr_to_virt(area.as_ptr());
    let pages = VMALLOC_EXAMPLE_BYTES / PAGE_SIZE;
    // SAFETY: the area is ours, `VMALLOC_EXAMPLE_BYTES` long.
    let bytes = unsafe { core::slice::from_raw_parts_mut(area.as_ptr(), VMALLOC_EXAMPLE_BYTES) };
    for (i, b) in bytes.iter_mut().enumerate() {
        *b = (i % 251) as u8;
    }
    let frames: Vec<Pfn> = (0..pages)
        .map(|i| mm.vmalloc_to_pfn(area.as_ptr().wrapping_add(i * PAGE_SIZE)))
        .collect::<Option<_>>()
        .ok_or(Error::Vmalloc(kmm_vmarea::VmareaError::NotAllocated {
            addr,
        }))?;
    let highmem_frames = frames
        .iter()
        .filter(|&&pfn| mm.zones().page_zone(pfn) == Some(ZoneType::HighMem))
        .count();
    let pages_compared = compare_through_own_mappings(mm, bytes, &frames)?;
    let ioremap = match device {
        Some((phys, seen)) => {
            let regs = mm.ioremap(phys, 16)?;
            // SAFETY: our fresh mapping of 16 bytes of device memory.
            unsafe { regs.as_ptr().write_volatile(0x5a) };
            Some((phys, dm.ptr_to_virt(regs.as_ptr()), seen(phys).unwrap_or(0)))
        }
        None => None,
    };
    let vmallocinfo = mm.vmallocinfo().to_string();
    // SAFETY: we give up the area and the mapping; nothing uses them now.
    unsafe {
        mm.vfree(area.as_ptr())?;
        if let Some((_, regs, _)) = ioremap {
            mm.iounmap(dm.virt_to_ptr(regs))?;
        }
    }
    if let Some(vm) = mm.vmalloc_layer() {
        vm.purge();
    }
    let flushes = mm
        .vmalloc_layer()
        .map_or(0, |vm| vm.stats().areas.flush_tokens)
        - flushes_before;
    mm.drain_all_pages();
    let kept = table.table_pages() - tables_before;
    Ok(VmallocExample {
        addr,
        frames,
        highmem_frames,
        pages_compared,
        ioremap,
        vmallocinfo,
        flushes,
        free_before_after: (free_before, mm.nr_free_pages() + kept),
    })
}

/// Compares each page of `bytes` with its frame seen through the frame's
/// own mapping: the direct map for lowmem, a kmap for highmem. Returns the
/// pages equal.
fn compare_through_own_mappings<P: PreemptControl, D: DirectMap, M: Mmu>(
    mm: &MemoryManager<P, D, M>,
    bytes: &[u8],
    frames: &[Pfn],
) -> Result<usize, Error> {
    let dm = mm.zones().direct_map();
    let mut equal = 0;
    for (i, &pfn) in frames.iter().enumerate() {
        let expected = &bytes[i * PAGE_SIZE..(i + 1) * PAGE_SIZE];
        let same = match (dm.pfn_to_ptr(pfn), mm.highmem()) {
            // SAFETY: a frame of our area, in the direct map.
            (Some(own), _) => unsafe {
                core::slice::from_raw_parts(own.as_ptr(), PAGE_SIZE) == expected
            },
            // SAFETY: the frame is our area's (we hold the area, so its
            // frames), and the kmap is undone just after the read.
            (None, Some(km)) => unsafe {
                let own = dm.virt_to_ptr(km.kmap_pfn(pfn)?);
                let same = core::slice::from_raw_parts(own, PAGE_SIZE) == expected;
                km.kunmap_pfn(pfn)?;
                same
            },
            (None, None) => false,
        };
        equal += usize::from(same);
    }
    Ok(equal)
}
