//! `/proc/vmallocinfo`: one line per live area, then one per range
//! awaiting its purge, in Linux's format. Reads the areas under their lock
//! and the page table for an ioremap's physical address; writes nothing.

use crate::flags::VmFlags;
use crate::vmalloc::Vmalloc;
use crate::vmap_block::{NoVmapBlocks, VmapCpus};
use core::fmt;
use kmm_api::{DirectMap, FrameAllocator, KernelPageTable, ObjectSource, PageOwner, PAGE_SIZE};

/// `/proc/vmallocinfo` of a [`Vmalloc`], printed in the kernel's format:
///
/// ```text
/// 0xf8800000-0xf8902000 1056768 src/tour.rs:42:9 pages=257 vmalloc
/// 0xf8902000-0xf8904000    8192 src/tour.rs:50:9 phys=0xfebc0000 ioremap
/// 0xf8906000-0xf8986000  524288 vm_map_ram
/// 0xf8904000-0xf8906000    8192 unpurged vm_area
/// ```
///
/// Sizes include the guard page; the caller is the source line of the call
/// that made the area (Linux prints its symbol); `pages=` counts the
/// frames of a vmalloc area, `phys=` gives an ioremap's physical address.
/// A `vm_map_ram` area (a per-CPU vmap block, or a large request's own
/// area) has no `vm_struct` and prints as Linux prints it: its range, its
/// size and `vm_map_ram`.
pub struct VmallocInfo<'a, F, T, S, D, P = NoVmapBlocks>(pub &'a Vmalloc<F, T, S, D, P>)
where
    F: FrameAllocator + PageOwner,
    T: KernelPageTable,
    S: ObjectSource,
    D: DirectMap,
    P: VmapCpus;

impl<F, T, S, D, P> fmt::Display for VmallocInfo<'_, F, T, S, D, P>
where
    F: FrameAllocator + PageOwner,
    T: KernelPageTable,
    S: ObjectSource,
    D: DirectMap,
    P: VmapCpus,
{
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let vm = self.0;
        // Linux's %pK: as wide as the machine's addresses.
        let width = if vm.areas().range().1.as_usize() as u64 <= 1 << 32 {
            8
        } else {
            16
        };
        vm.areas().with_areas(|areas| {
            for area in areas.areas() {
                let (start, end) = (area.start().as_usize(), area.end().as_usize());
                write!(f, "0x{start:0width$x}-0x{end:0width$x} {:>7}", area.size())?;
                if area.flags().contains(VmFlags::MAP_RAM) {
                    f.write_str(" vm_map_ram\n")?;
                    continue;
                }
                if let Some(caller) = area.caller() {
                    write!(
                        f,
                        " {}:{}:{}",
                        caller.file(),
                        caller.line(),
                        caller.column()
                    )?;
                }
                let flags = area.flags();
                if flags.contains(VmFlags::ALLOC) {
                    write!(f, " pages={}", area.usable_size() / PAGE_SIZE)?;
                }
                if flags.contains(VmFlags::IOREMAP) {
                    if let Some((pfn, _)) = vm.table().translate(area.start()) {
                        write!(f, " phys=0x{:0width$x}", pfn.phys().as_u64())?;
                    }
                }
                for (flag, word) in [
                    (VmFlags::IOREMAP, "ioremap"),
                    (VmFlags::SPARSE, "sparse"),
                    (VmFlags::ALLOC, "vmalloc"),
                    (VmFlags::MAP, "vmap"),
                    (VmFlags::USERMAP, "user"),
                    (VmFlags::DMA_COHERENT, "dma-coherent"),
                ] {
                    if flags.contains(flag) {
                        write!(f, " {word}")?;
                    }
                }
                f.write_str("\n")?;
            }
            for range in areas.unpurged_areas() {
                let (start, end) = (range.start().as_usize(), range.end().as_usize());
                writeln!(
                    f,
                    "0x{start:0width$x}-0x{end:0width$x} {:>7} unpurged vm_area",
                    range.size()
                )?;
            }
            Ok(())
        })
    }
}
