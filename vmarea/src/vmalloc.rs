//! [`Vmalloc`]: kernel virtual memory over the area allocator (Linux
//! `mm/vmalloc.c` above `vmap_area`): `vmalloc` and its variants, which
//! back an area with single frames (highmem first) mapped one by one;
//! `vmap`, which maps frames the caller holds; `ioremap`, which maps device
//! memory; and their frees, which unmap at once and leave the TLB flush to
//! the lazy purge.
//!
//! # What it owns
//!
//! The areas (through [`SharedVmapAreas`]), the frames of every `vmalloc`
//! area (each claimed with the [`OwnerTag::Vmalloc`] owner word, so the page
//! allocator refuses any other free of them), the page-table entries of
//! every live area, the list of frees deferred from atomic context, and
//! the per-CPU vmap blocks of `vm_map_ram` (module `vmap_block`, which
//! adds `vm_map_ram` / `vm_unmap_ram` to [`Vmalloc`]).
//! It never owns a `vmap`'s, a `vm_map_ram`'s or an `ioremap`'s frames, and never touches an
//! area's memory, except the first word of an area `vfree_atomic` queues
//! (its link on the deferred list: the area is being given up, as Linux's
//! `llist` reuses it).
//!
//! # The order of a free (why a double free is caught)
//!
//! A free detaches the area from the live tree first (a second free of the
//! same address now fails), then unmaps its pages and frees its frames,
//! and only then hands its range to the lazy purge: a purge can never
//! merge a range that still has entries, so no allocation is ever handed
//! a range with someone else's pages in it. Frames go back before the TLB
//! flush (as in Linux): only the range waits for the flush.
//!
//! Nothing half-done survives a failure: a `vmalloc` that runs out of
//! frames or page-table pages midway unmaps and frees what it took, and the
//! range goes back through the purge, flushed before it is reused.

use crate::error::VmareaError;
use crate::flags::{VmFlags, KMM_PRIVATE};
use crate::locked::SharedVmapAreas;
use crate::vmap_area::{VmapArea, VmapAreas};
use crate::vmap_block::{NoVmapBlocks, VmapBlocks, VmapCpus};
use crate::VmapStats;
use kmm_api::sync::{AtomicUsize, Ordering::Relaxed};
use kmm_api::{
    DirectMap, FrameAllocator, GfpFlags, KernelPageTable, ObjectSource, Order, OwnerTag, OwnerWord,
    PageOwner, PageProt, Pages, Pfn, PhysAddr, VirtAddr, GFP_KERNEL, PAGE_SIZE,
};

/// The only NUMA node there is (Linux `NUMA_NO_NODE` means "any").
pub const NUMA_NO_NODE: i32 = -1;

/// vmalloc, vmap and ioremap over one machine's kernel page table.
///
/// `F` hands out the frames (and keeps their owner words), `T` is the
/// kernel page table the areas are mapped in, `S` the object source of the
/// area allocator's nodes (and of the vmap blocks' descriptors), `D`
/// reaches a live vmalloc area's memory (for `vfree_atomic`'s list link
/// only), and `P` names the CPUs that keep per-CPU vmap blocks for
/// `vm_map_ram` (the default, [`NoVmapBlocks`], keeps none; see
/// [`Vmalloc::with_vmap_blocks`]).
pub struct Vmalloc<F, T, S, D, P = NoVmapBlocks>
where
    F: FrameAllocator + PageOwner,
    T: KernelPageTable,
    S: ObjectSource,
    D: DirectMap,
    P: VmapCpus,
{
    pub(crate) areas: SharedVmapAreas<S>,
    frames: F,
    pub(crate) table: T,
    memory: D,
    /// The CPUs of the vmap blocks.
    pub(crate) cpus: P,
    /// The per-CPU vmap blocks of `vm_map_ram`.
    pub(crate) blocks: VmapBlocks,
    /// Pages mapped by live `vmalloc` areas (meminfo `VmallocUsed`).
    nr_vmalloc_pages: AtomicUsize,
    /// `vfree` calls that freed an area, for the flushes-per-vfree figure.
    nr_vfrees: AtomicUsize,
    /// Live `vm_map_ram` mappings.
    pub(crate) nr_vm_map_ram: AtomicUsize,
    /// Areas queued by `vfree_atomic`, linked through their first words
    /// (0: empty); drained by the next call that may sleep.
    deferred: AtomicUsize,
}

/// The figures of a [`Vmalloc`]: the area allocator's, and its own.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct VmallocStats {
    /// The area allocator's figures (areas, lazy pages, purges, flushes).
    pub areas: VmapStats,
    /// Pages mapped by live vmalloc areas (meminfo `VmallocUsed`).
    pub vmalloc_pages: usize,
    /// Areas freed by `vfree` so far.
    pub vfrees: usize,
    /// Live `vm_map_ram` mappings (from blocks or with an area each).
    pub vm_map_ram: usize,
    /// Live per-CPU vmap blocks.
    pub vmap_blocks: usize,
    /// Pages per vmap block (0: no blocks; see
    /// [`crate::vmap_bbmap_bits`]).
    pub vmap_block_pages: usize,
}

/// The owner word of a vmalloc page: the tag alone.
fn vmalloc_word() -> OwnerWord {
    OwnerWord::new(OwnerTag::Vmalloc, 0).unwrap_or(OwnerWord::NONE)
}

impl<F, T, S, D> Vmalloc<F, T, S, D, NoVmapBlocks>
where
    F: FrameAllocator + PageOwner,
    T: KernelPageTable,
    S: ObjectSource,
    D: DirectMap,
{
    /// vmalloc over `areas` (the vmalloc range), taking frames from
    /// `frames` and mapping them in `table`; `memory` reaches the kernel's
    /// virtual addresses (for `vfree_atomic`). No per-CPU vmap blocks:
    /// every `vm_map_ram` takes an area of its own.
    ///
    /// # Safety
    ///
    /// `table` maps the range of `areas` and nothing else maps into that
    /// range; `frames` hands out frames `table` may map; `memory` turns a
    /// mapped kernel address of `table` into a pointer to its bytes.
    pub unsafe fn new(areas: VmapAreas<S>, frames: F, table: T, memory: D) -> Self {
        let areas = SharedVmapAreas::new(areas);
        // SAFETY: forwarded from our caller.
        unsafe {
            Self::assemble(
                areas,
                frames,
                table,
                memory,
                NoVmapBlocks,
                VmapBlocks::off(),
            )
        }
    }
}

impl<F, T, S, D, P> Vmalloc<F, T, S, D, P>
where
    F: FrameAllocator + PageOwner,
    T: KernelPageTable,
    S: ObjectSource,
    D: DirectMap,
    P: VmapCpus,
{
    /// [`Vmalloc::new`] with per-CPU vmap blocks for `vm_map_ram`, one
    /// queue per CPU of `cpus` (a [`kmm_api::PreemptControl`]). The
    /// per-CPU table (one object) and each block's descriptor come from
    /// the source of `areas`; its objects must hold a descriptor
    /// ([`crate::VMAP_BLOCK_BYTES`]) and one pointer per CPU, else
    /// [`VmareaError::ObjectTooSmall`].
    ///
    /// # Safety
    ///
    /// As for [`Vmalloc::new`].
    pub unsafe fn with_vmap_blocks(
        areas: VmapAreas<S>,
        frames: F,
        table: T,
        memory: D,
        cpus: P,
    ) -> Result<Self, VmareaError> {
        let areas = SharedVmapAreas::new(areas);
        let blocks = VmapBlocks::new(&areas, cpus.nr_cpus())?;
        // SAFETY: forwarded from our caller.
        Ok(unsafe { Self::assemble(areas, frames, table, memory, cpus, blocks) })
    }

    /// # Safety
    ///
    /// As for [`Vmalloc::new`].
    unsafe fn assemble(
        areas: SharedVmapAreas<S>,
        frames: F,
        table: T,
        memory: D,
        cpus: P,
        blocks: VmapBlocks,
    ) -> Self {
        Vmalloc {
            areas,
            frames,
            table,
            memory,
            cpus,
            blocks,
            nr_vmalloc_pages: AtomicUsize::new(0),
            nr_vfrees: AtomicUsize::new(0),
            nr_vm_map_ram: AtomicUsize::new(0),
            deferred: AtomicUsize::new(0),
        }
    }

    /// The page table the areas are mapped in.
    pub fn table(&self) -> &T {
        &self.table
    }

    /// The frame source.
    pub fn frames(&self) -> &F {
        &self.frames
    }

    /// The area allocator, for reports and checks.
    pub fn areas(&self) -> &SharedVmapAreas<S> {
        &self.areas
    }

    /// Linux `vmalloc`: `size` bytes of virtually contiguous, physically
    /// scattered memory, highmem frames first. O(log n) for the range plus
    /// O(pages) to back it.
    #[track_caller]
    pub fn vmalloc(&self, size: usize) -> Result<VirtAddr, VmareaError> {
        self.__vmalloc(size, GFP_KERNEL)
    }

    /// Linux `vzalloc`: `vmalloc`, zeroed.
    #[track_caller]
    pub fn vzalloc(&self, size: usize) -> Result<VirtAddr, VmareaError> {
        self.__vmalloc(size, GFP_KERNEL | GfpFlags::ZERO)
    }

    /// Linux `vmalloc_user`: zeroed, and marked `VM_USERMAP` (it may be
    /// mapped into user space).
    #[track_caller]
    pub fn vmalloc_user(&self, size: usize) -> Result<VirtAddr, VmareaError> {
        self.vmalloc_node_range(
            size,
            PAGE_SIZE,
            GFP_KERNEL | GfpFlags::ZERO | GfpFlags::HIGHMEM,
            PageProt::KERNEL,
            VmFlags::ALLOC | VmFlags::USERMAP,
            NUMA_NO_NODE,
        )
    }

    /// Linux `vmalloc_32`: frames from lowmem only (32-bit addressable;
    /// `ZONE_DMA32` where a machine has one).
    #[track_caller]
    pub fn vmalloc_32(&self, size: usize) -> Result<VirtAddr, VmareaError> {
        self.vmalloc_node_range(
            size,
            PAGE_SIZE,
            GFP_KERNEL,
            PageProt::KERNEL,
            VmFlags::ALLOC,
            NUMA_NO_NODE,
        )
    }

    /// Linux `__vmalloc`: `vmalloc` with the caller's GFP flags (their zone
    /// modifiers are replaced by highmem-first; `__GFP_ZERO` zeroes).
    #[track_caller]
    pub fn __vmalloc(&self, size: usize, gfp: GfpFlags) -> Result<VirtAddr, VmareaError> {
        self.vmalloc_node(size, gfp, NUMA_NO_NODE)
    }

    /// Linux `vmalloc_node`-shaped: `__vmalloc` on NUMA node `node`. There
    /// is one node: `0` and [`NUMA_NO_NODE`] are accepted.
    #[track_caller]
    pub fn vmalloc_node(
        &self,
        size: usize,
        gfp: GfpFlags,
        node: i32,
    ) -> Result<VirtAddr, VmareaError> {
        let gfp = (gfp & !GfpFlags::ZONE_MASK) | GfpFlags::HIGHMEM;
        self.vmalloc_node_range(size, PAGE_SIZE, gfp, PageProt::KERNEL, VmFlags::ALLOC, node)
    }

    /// Linux `__vmalloc_node_range`: the one path every vmalloc variant
    /// takes. Reserves the range, then takes and maps one frame at a time;
    /// on any failure everything taken is given back and the range goes
    /// to the purge.
    #[track_caller]
    pub fn vmalloc_node_range(
        &self,
        size: usize,
        align: usize,
        gfp: GfpFlags,
        prot: PageProt,
        flags: VmFlags,
        node: i32,
    ) -> Result<VirtAddr, VmareaError> {
        if node != 0 && node != NUMA_NO_NODE {
            return Err(VmareaError::BadNode { node });
        }
        self.drain_deferred();
        let flags = (flags - KMM_PRIVATE) | VmFlags::ALLOC;
        let area = self.areas.alloc(size, align, flags, gfp, &self.table)?;
        let pages = area.usable_size() / PAGE_SIZE;
        for i in 0..pages {
            if let Err(cause) = self.map_new_frame(page_addr(area.start(), i), gfp, prot) {
                self.abandon(area, i, true);
                return Err(VmareaError::Page { cause });
            }
        }
        self.nr_vmalloc_pages.fetch_add(pages, Relaxed);
        Ok(area.start())
    }

    /// One frame, claimed for vmalloc and mapped at `addr`; on failure
    /// nothing is left behind.
    fn map_new_frame(
        &self,
        addr: VirtAddr,
        gfp: GfpFlags,
        prot: PageProt,
    ) -> Result<(), kmm_api::Error> {
        let page = self.frames.alloc_frames(gfp, Order::ZERO)?;
        let pfn = page.pfn();
        // SAFETY: we hold the frame (just allocated); the word has no
        // payload any layer reads.
        if let Err(e) = unsafe { self.frames.set_owner(pfn, vmalloc_word()) } {
            let _ = self.frames.free_frames(page);
            return Err(e);
        }
        // SAFETY: we hold the frame, and `addr` is a page of an area we
        // reserved and have not mapped yet.
        if let Err(e) = unsafe { self.table.map(addr, pfn, prot) } {
            self.release_frame(page);
            return Err(e);
        }
        let _ = page.into_raw(); // held from here on through the mapping
        Ok(())
    }

    /// Clears a vmalloc frame's owner word and frees it. A frame that
    /// does not carry the vmalloc word (someone else's, mapped into an area
    /// by hand) is left alone: only vmalloc's own frames are freed here.
    fn release_frame(&self, page: Pages) {
        // SAFETY: clearing our own word is always allowed; the swap fails,
        // changing nothing, for a frame that is not vmalloc's.
        let ours = unsafe {
            self.frames
                .replace_owner(page.pfn(), vmalloc_word(), OwnerWord::NONE)
        };
        if ours == Ok(true) {
            let _ = self.frames.free_frames(page);
        } else {
            let _ = page.into_raw();
        }
    }

    /// Undoes an area being set up that failed after `mapped` pages: it was
    /// never handed out, so it is detached here and released like a free.
    pub(crate) fn abandon(&self, area: VmapArea, mapped: usize, owns_frames: bool) {
        let kind =
            area.flags() & (VmFlags::ALLOC | VmFlags::MAP | VmFlags::IOREMAP | VmFlags::MAP_RAM);
        if let Ok(detached) = self.areas.detach(area.start(), kind) {
            self.unmap_and_release(detached, mapped, owns_frames);
        }
    }

    /// Unmaps the first `mapped` pages of `area` (freeing their frames if
    /// `owns_frames`), then releases the range to the lazy purge. The area
    /// is detached ([`SharedVmapAreas::detach`]): nobody else reaches it.
    pub(crate) fn unmap_and_release(&self, area: VmapArea, mapped: usize, owns_frames: bool) {
        for i in 0..mapped {
            // SAFETY: we mapped this page of our area, and the area is
            // detached: no longer reachable by anyone.
            if let Ok((pfn, flush)) = unsafe { self.table.unmap(page_addr(area.start(), i)) } {
                // The lazy purge flushes the whole range before reuse.
                flush.defer();
                if owns_frames {
                    // SAFETY: a vmalloc frame we hold through this mapping,
                    // allocated order 0 from `frames`.
                    let page =
                        unsafe { Pages::from_raw(pfn, Order::ZERO, self.frames.allocator_id()) };
                    self.release_frame(page);
                }
            }
        }
        self.areas.release(area, &self.table);
    }

    /// Linux `vfree`: unmaps and frees a `vmalloc` area (null is a no-op).
    /// An address that is not a live vmalloc area's start (unknown,
    /// interior, unaligned, already freed, or a vmap or ioremap area) is an
    /// error and changes nothing. The range is flushed lazily.
    ///
    /// # Safety
    ///
    /// The caller gives the area up: nothing uses its memory any more
    /// (an address is not a proof of ownership; see `kmm-api`'s rule).
    pub unsafe fn vfree(&self, addr: VirtAddr) -> Result<(), VmareaError> {
        if addr.as_usize() == 0 {
            return Ok(());
        }
        self.drain_deferred();
        self.free_kind(addr, VmFlags::ALLOC)
    }

    /// Frees an area of `kind` at `addr`: detach, unmap, release.
    fn free_kind(&self, addr: VirtAddr, kind: VmFlags) -> Result<(), VmareaError> {
        let area = self.areas.detach(addr, kind)?;
        let pages = area.usable_size() / PAGE_SIZE;
        let owns_frames = kind == VmFlags::ALLOC;
        self.unmap_and_release(area, pages, owns_frames);
        if owns_frames {
            self.nr_vmalloc_pages.fetch_sub(pages, Relaxed);
            self.nr_vfrees.fetch_add(1, Relaxed);
        }
        Ok(())
    }

    /// Linux `vfree_atomic`: a `vfree` from a context that may not sleep
    /// (or take the area lock): the area is queued, linked through its
    /// first word, and freed by the next vmalloc or vfree. The address is
    /// checked when the queue drains; a bad one is counted there, not
    /// here. Lock-free.
    ///
    /// # Safety
    ///
    /// As for [`Vmalloc::vfree`], and `addr` must be the start of a live
    /// vmalloc area: its first word is written.
    pub unsafe fn vfree_atomic(&self, addr: VirtAddr) {
        if addr.as_usize() == 0 {
            return;
        }
        let mut head = self.deferred.load(Relaxed);
        loop {
            // SAFETY: our caller gives up this live vmalloc area, so its
            // first word (page aligned, mapped) is ours to write.
            unsafe { self.write_link(addr, head) };
            match self.deferred.compare_exchange_weak(
                head,
                addr.as_usize(),
                kmm_api::sync::Ordering::Release,
                Relaxed,
            ) {
                Ok(_) => return,
                Err(now) => head = now,
            }
        }
    }

    /// Writes the deferred list's link into the first word of the area at
    /// `addr`.
    ///
    /// # Safety
    ///
    /// The area is live, queued by its owner, and its first word is ours.
    #[cfg(not(loom))]
    unsafe fn write_link(&self, addr: VirtAddr, next: usize) {
        let link: *mut usize = self.memory.virt_to_ptr(addr).cast();
        // SAFETY: the caller's contract; the word is page aligned.
        unsafe { link.write(next) }
    }

    /// Reads the link `write_link` left in the area at `addr`.
    ///
    /// # Safety
    ///
    /// `write_link` wrote it, and a Release/Acquire pair orders that write
    /// before this read; the area is still mapped.
    #[cfg(not(loom))]
    unsafe fn read_link(&self, addr: VirtAddr) -> usize {
        let link: *mut usize = self.memory.virt_to_ptr(addr).cast();
        // SAFETY: the caller's contract.
        unsafe { link.read() }
    }

    /// The loom build: the link word is a loom cell keyed by the address,
    /// so the model sees (and checks the ordering of) every access.
    ///
    /// # Safety
    ///
    /// As the non-loom form.
    #[cfg(loom)]
    unsafe fn write_link(&self, addr: VirtAddr, next: usize) {
        let _ = &self.memory;
        crate::loom_link::write(addr.as_usize(), next);
    }

    /// The loom build of `read_link`.
    ///
    /// # Safety
    ///
    /// As the non-loom form.
    #[cfg(loom)]
    unsafe fn read_link(&self, addr: VirtAddr) -> usize {
        crate::loom_link::read(addr.as_usize())
    }

    /// Frees every area `vfree_atomic` queued (Linux `delayed_vfree_work`).
    /// Returns how many it freed.
    pub fn drain_deferred(&self) -> usize {
        let mut next = self.deferred.swap(0, kmm_api::sync::Ordering::Acquire);
        let mut freed = 0;
        while next != 0 {
            let addr = VirtAddr::new(next);
            // SAFETY: `vfree_atomic` wrote this link into the first word of
            // the queued area before publishing it (Release/Acquire), and
            // the area stays mapped until we free it just below.
            next = unsafe { self.read_link(addr) };
            if self.free_kind(addr, VmFlags::ALLOC).is_ok() {
                freed += 1;
            }
        }
        freed
    }

    /// Linux `vmap`: maps the frames of `pages` (held by the caller, who
    /// keeps them) at one new area; `vunmap` removes the mapping and
    /// leaves the frames to their holder.
    #[track_caller]
    pub fn vmap(
        &self,
        pages: &[Pages],
        flags: VmFlags,
        prot: PageProt,
    ) -> Result<VirtAddr, VmareaError> {
        let pfns = pages
            .iter()
            .flat_map(|p| (0..p.nr_pages()).map(|i| p.pfn().add(i)));
        // Only vmap's own kind: a vfree must never take these frames.
        let flags = (flags - (VmFlags::ALLOC | VmFlags::IOREMAP | KMM_PRIVATE)) | VmFlags::MAP;
        // SAFETY: each frame belongs to a block whose handle the caller
        // lends us for the call: it holds them.
        unsafe { self.map_frames(pfns, flags, prot) }
    }

    /// Maps `pfns` at one new area of `flags`.
    ///
    /// # Safety
    ///
    /// The caller holds every frame of `pfns` (or may map it: device
    /// memory).
    #[track_caller]
    pub(crate) unsafe fn map_frames(
        &self,
        pfns: impl Iterator<Item = Pfn> + Clone,
        flags: VmFlags,
        prot: PageProt,
    ) -> Result<VirtAddr, VmareaError> {
        let count = pfns.clone().count();
        let size = count
            .checked_mul(PAGE_SIZE)
            .ok_or(VmareaError::SizeTooLarge { size: usize::MAX })?;
        self.drain_deferred();
        let area = self
            .areas
            .alloc(size, PAGE_SIZE, flags, GFP_KERNEL, &self.table)?;
        for (i, pfn) in pfns.enumerate() {
            // SAFETY: our caller holds `pfn`; the page is of our new area.
            if let Err(cause) = unsafe { self.table.map(page_addr(area.start(), i), pfn, prot) } {
                self.abandon(area, i, false);
                return Err(VmareaError::Page { cause });
            }
        }
        Ok(area.start())
    }

    /// Linux `vunmap`: removes a `vmap` area's mapping; the frames stay
    /// with their holder.
    ///
    /// # Safety
    ///
    /// The caller made the mapping (or holds it from whoever did) and
    /// nothing uses it any more.
    pub unsafe fn vunmap(&self, addr: VirtAddr) -> Result<(), VmareaError> {
        self.free_kind(addr, VmFlags::MAP)
    }

    /// Linux `ioremap_prot`: maps `size` bytes of device memory at `phys`
    /// with `prot`, keeping the sub-page offset in the address returned.
    ///
    /// # Safety
    ///
    /// `[phys, phys + size)` is device memory the caller may map (not RAM
    /// an allocator manages), and stays so until `iounmap`.
    #[track_caller]
    pub unsafe fn ioremap_prot(
        &self,
        phys: PhysAddr,
        size: usize,
        prot: PageProt,
    ) -> Result<VirtAddr, VmareaError> {
        let offset = phys.page_offset();
        let end = size
            .checked_add(offset)
            .filter(|_| size > 0)
            .ok_or(VmareaError::SizeTooLarge { size })?;
        let first = phys.pfn();
        let pfns = (0..end.div_ceil(PAGE_SIZE)).map(move |i| first.add(i));
        // SAFETY: forwarded from our caller.
        let start = unsafe { self.map_frames(pfns, VmFlags::IOREMAP, prot) }?;
        Ok(VirtAddr::new(start.as_usize() + offset))
    }

    /// Linux `iounmap`: removes an ioremap's mapping, by the address
    /// `ioremap` returned (its sub-page offset included).
    ///
    /// # Safety
    ///
    /// As for [`Vmalloc::vunmap`].
    pub unsafe fn iounmap(&self, addr: VirtAddr) -> Result<(), VmareaError> {
        self.free_kind(addr.align_down(PAGE_SIZE), VmFlags::IOREMAP)
    }

    /// Linux `get_vm_area`: reserves a range with its guard page and maps
    /// nothing (the caller maps into it through the page table).
    #[track_caller]
    pub fn get_vm_area(&self, size: usize, flags: VmFlags) -> Result<VmapArea, VmareaError> {
        self.areas.alloc(
            size,
            PAGE_SIZE,
            flags - KMM_PRIVATE,
            GFP_KERNEL,
            &self.table,
        )
    }

    /// Linux `free_vm_area`: releases a range `get_vm_area` reserved,
    /// which the caller has unmapped.
    ///
    /// # Safety
    ///
    /// Nothing is mapped in the area any more, and nothing uses it.
    pub unsafe fn free_vm_area(&self, area: VmapArea) -> Result<(), VmareaError> {
        if area.flags().contains(VmFlags::MAP_RAM) {
            // vm_map_ram's areas have no vm_struct: vm_unmap_ram frees them.
            return Err(VmareaError::WrongKind {
                addr: area.start(),
                flags: area.flags(),
            });
        }
        let kind = area.flags() & !VmFlags::FREEING;
        let detached = self.areas.detach(area.start(), kind)?;
        self.areas.release(detached, &self.table);
        Ok(())
    }

    /// Linux `find_vm_area`: the live area starting at `addr` (`None` for
    /// `vm_map_ram`'s, which have no `vm_struct`).
    pub fn find_vm_area(&self, addr: VirtAddr) -> Option<VmapArea> {
        self.areas
            .find_vmap_area(addr)
            .filter(|area| area.start() == addr && !area.flags().contains(VmFlags::MAP_RAM))
    }

    /// Linux `remove_vm_area`: takes the area at `addr` out of the live
    /// tree and unmaps it, without freeing any frame; returns it.
    ///
    /// # Safety
    ///
    /// As for [`Vmalloc::vunmap`]; the caller frees the frames of a
    /// `vmalloc` area it removes this way.
    pub unsafe fn remove_vm_area(&self, addr: VirtAddr) -> Result<VmapArea, VmareaError> {
        let area = self
            .find_vm_area(addr)
            .ok_or(VmareaError::NotAllocated { addr })?;
        let kind = area.flags() & (VmFlags::ALLOC | VmFlags::MAP | VmFlags::IOREMAP);
        let detached = self.areas.detach(addr, kind)?;
        let pages = detached.usable_size() / PAGE_SIZE;
        if kind == VmFlags::ALLOC {
            self.nr_vmalloc_pages.fetch_sub(pages, Relaxed);
        }
        self.unmap_and_release(detached, pages, false);
        Ok(area)
    }

    /// Linux `vmalloc_to_page` (as a frame number): the frame mapped at a
    /// vmalloc address, `None` if nothing is.
    pub fn vmalloc_to_page(&self, addr: VirtAddr) -> Option<Pfn> {
        if !self.is_vmalloc_addr(addr) {
            return None;
        }
        self.table.translate(addr).map(|(pfn, _)| pfn)
    }

    /// Linux `vmalloc_to_pfn`.
    pub fn vmalloc_to_pfn(&self, addr: VirtAddr) -> Option<Pfn> {
        self.vmalloc_to_page(addr)
    }

    /// Linux `is_vmalloc_addr`: whether `addr` lies in the vmalloc range.
    /// O(1).
    pub fn is_vmalloc_addr(&self, addr: VirtAddr) -> bool {
        let (start, end) = self.areas.range();
        start <= addr && addr < end
    }

    /// Purges every lazily freed range now, and the vmap blocks' dirty
    /// ranges, with one TLB flush (Linux `vm_unmap_aliases`); whether
    /// anything was waiting.
    pub fn purge(&self) -> bool {
        let dirty = self.blocks.take_dirty_ranges();
        self.areas.purge_merging(dirty, &self.table)
    }

    /// The figures, for reports.
    pub fn stats(&self) -> VmallocStats {
        VmallocStats {
            areas: self.areas.stats(),
            vmalloc_pages: self.nr_vmalloc_pages.load(Relaxed),
            vfrees: self.nr_vfrees.load(Relaxed),
            vm_map_ram: self.nr_vm_map_ram.load(Relaxed),
            vmap_blocks: self.blocks.nr_blocks(),
            vmap_block_pages: self.blocks.bits(),
        }
    }
}

impl<F, T, S, D, P> Drop for Vmalloc<F, T, S, D, P>
where
    F: FrameAllocator + PageOwner,
    T: KernelPageTable,
    S: ObjectSource,
    D: DirectMap,
    P: VmapCpus,
{
    /// Gives the vmap blocks' descriptors and per-CPU table back to the
    /// source (the areas' nodes go back as the area allocator drops).
    fn drop(&mut self) {
        let Vmalloc { areas, blocks, .. } = self;
        areas.with_areas(|a| blocks.release_all(a.source()));
    }
}

/// The address of page `i` of an area at `start`.
fn page_addr(start: VirtAddr, i: usize) -> VirtAddr {
    VirtAddr::new(start.as_usize() + i * PAGE_SIZE)
}
