//! `vm_struct` flags (Linux `include/linux/vmalloc.h`), the word
//! `/proc/vmallocinfo` prints. The area allocator itself reads only
//! [`VmFlags::NO_GUARD`]; it keeps the rest with the area for the layers
//! above (vmalloc, vmap, ioremap) to report.

use bitflags::bitflags;

bitflags! {
    /// The flags of one kernel virtual area, with Linux's values.
    #[derive(Clone, Copy, PartialEq, Eq, Hash, Debug, Default)]
    pub struct VmFlags: u16 {
        /// `VM_IOREMAP`: an ioremap of device memory ("ioremap").
        const IOREMAP = 0x1;
        /// `VM_ALLOC`: a vmalloc area ("vmalloc").
        const ALLOC = 0x2;
        /// `VM_MAP`: a vmap of given pages ("vmap").
        const MAP = 0x4;
        /// `VM_USERMAP`: may be mapped into user space ("user").
        const USERMAP = 0x8;
        /// `VM_DMA_COHERENT`: a coherent DMA buffer ("dma-coherent").
        const DMA_COHERENT = 0x10;
        /// `VM_UNINITIALIZED`: set up but not yet fully populated.
        const UNINITIALIZED = 0x20;
        /// `VM_NO_GUARD`: no trailing guard page.
        const NO_GUARD = 0x40;
        /// `VM_KASAN`: has shadow memory.
        const KASAN = 0x80;
        /// `VM_FLUSH_RESET_PERMS`: reset direct-map permissions on free.
        const FLUSH_RESET_PERMS = 0x100;
        /// `VM_MAP_PUT_PAGES`: vunmap puts the pages.
        const MAP_PUT_PAGES = 0x200;
        /// `VM_ALLOW_HUGE_VMAP`: may use huge mappings.
        const ALLOW_HUGE_VMAP = 0x400;
        /// `VM_SPARSE`: sparsely populated ("sparse").
        const SPARSE = 0x1000;
        /// kmm's own (Linux's `VMAP_BLOCK` vmap_area flag): the area is a
        /// per-CPU vmap block that `vm_map_ram` carves small ranges from.
        const VMAP_BLOCK = 0x2000;
        /// kmm's own (Linux's `VMAP_RAM` vmap_area flag): the area belongs
        /// to `vm_map_ram` (a whole area for a large request, or a vmap
        /// block); it has no `vm_struct` ("vm_map_ram" in vmallocinfo).
        const MAP_RAM = 0x4000;
        /// kmm's own: the area is being freed (detached from lookups while
        /// its pages are unmapped; a second free of it is refused).
        const FREEING = 0x8000;
    }
}

/// The flags only this crate sets: a caller's flags are stripped of them,
/// so no caller can forge a vmap block, a `vm_map_ram` area or a free in
/// progress.
pub(crate) const KMM_PRIVATE: VmFlags = VmFlags::VMAP_BLOCK
    .union(VmFlags::MAP_RAM)
    .union(VmFlags::FREEING);
