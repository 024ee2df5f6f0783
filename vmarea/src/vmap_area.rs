//! The `vmap_area` allocator (Linux `mm/vmalloc.c` since 5.2): kernel
//! virtual ranges carved out of `[VMALLOC_START, VMALLOC_END)`.
//!
//! It owns three trees of nodes from its arena: free blocks
//! (`free_vmap_area_root`, augmented with `subtree_max_size`), live areas
//! (`vmap_area_root`), and freed areas awaiting their purge
//! (`purge_vmap_area_root`). Together they tile the range exactly. It never
//! maps, unmaps or touches the memory behind an address, and never puts a
//! freed range back into free space before the TLB flush that covers it
//! has been handed to the caller.
//!
//! # States of a range
//!
//! free → (alloc) → busy → (free) → unpurged → (purge) → free, or, for a
//! range of up to [`crate::MAX_VA_SIZE_PAGES`] pages, (purge) → pooled
//! (see [`crate`]) → (alloc of exactly its size) → busy, or
//! (decay) → free. An unpurged range may still have stale TLB entries on
//! some CPU, so it is reused only after a purge, whose one [`TlbFlush`]
//! covers the whole batch.

use crate::arena::{Arena, Node, NodeId};
use crate::error::VmareaError;
use crate::flags::VmFlags;
use crate::pool::{Decay, VmapPools};
use crate::purge::LazyPurge;
use crate::tree::{subtree_max, Tree};
use core::panic::Location;
use kmm_api::{GfpFlags, KernelPageTable, ObjectSource, TlbFlush, VirtAddr, GFP_KERNEL, PAGE_SIZE};

/// One reserved range: `[start, end)` with the trailing guard page, if
/// any, inside it (as `/proc/vmallocinfo` prints it).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct VmapArea {
    start: VirtAddr,
    end: VirtAddr,
    flags: VmFlags,
    caller: Option<&'static Location<'static>>,
}

impl VmapArea {
    pub(crate) fn of(node: &Node) -> Self {
        VmapArea {
            start: VirtAddr::new(node.start),
            end: VirtAddr::new(node.end),
            flags: node.flags,
            caller: node.caller,
        }
    }

    /// Where the area was allocated (the caller of the allocating call,
    /// as `/proc/vmallocinfo` names it); `None` for a free or unpurged
    /// range.
    pub const fn caller(&self) -> Option<&'static Location<'static>> {
        self.caller
    }

    /// The first byte (`va_start`), aligned as requested.
    pub const fn start(&self) -> VirtAddr {
        self.start
    }

    /// One past the last byte reserved, guard page included (`va_end`).
    pub const fn end(&self) -> VirtAddr {
        self.end
    }

    /// Bytes reserved, guard page included (vmallocinfo's SIZE).
    pub const fn size(&self) -> usize {
        self.end.as_usize() - self.start.as_usize()
    }

    /// Bytes the caller may use: the size without the guard page
    /// (Linux `get_vm_area_size`).
    pub const fn usable_size(&self) -> usize {
        self.size() - guard_bytes(self.flags)
    }

    /// The flags the area was allocated with.
    pub const fn flags(&self) -> VmFlags {
        self.flags
    }

    /// Whether `addr` lies in the reserved range (guard page included).
    pub const fn contains(&self, addr: VirtAddr) -> bool {
        self.start.as_usize() <= addr.as_usize() && addr.as_usize() < self.end.as_usize()
    }
}

/// What a free did: the area it released, and the flush its purge owes
/// when this free pushed the lazily freed pages past `lazy_max_pages`.
#[must_use = "a purge's TLB flush must run before its ranges are reused"]
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct Freed {
    /// The area released (now unpurged, or free if a purge ran).
    pub area: VmapArea,
    /// The flush owed by the purge this free triggered, if any.
    pub flush: Option<TlbFlush>,
}

/// How an allocation splits the free block it takes (Linux's fit types).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Fit {
    /// The area is the whole block: the node moves to the busy tree.
    Full,
    /// The area starts the block: the block's start moves up.
    LeftEdge,
    /// The area ends the block: the block's end moves down.
    RightEdge,
    /// Free space stays on both sides: the block keeps the upper part and
    /// a new node, linked in just before it, the lower (the lower part is
    /// the alignment padding, usually small, and the block is often the
    /// rightmost, so this needs no descent from the root).
    Middle,
}

/// Bytes of guard page an area with `flags` carries.
pub(crate) const fn guard_bytes(flags: VmFlags) -> usize {
    if flags.contains(VmFlags::NO_GUARD) {
        0
    } else {
        PAGE_SIZE
    }
}

/// The kernel virtual area allocator over one range, `&mut self` (see
/// [`crate::SharedVmapAreas`] for the locked form).
pub struct VmapAreas<S: ObjectSource> {
    pub(crate) arena: Arena<S>,
    pub(crate) free_vmap_area_root: Tree<true>,
    pub(crate) vmap_area_root: Tree<false>,
    /// Where the busy tree last changed (see [`BusyFinger`]); `None` when
    /// not known. Only `alloc` and `free_node` change the busy tree, and
    /// both keep it.
    busy_finger: Option<BusyFinger>,
    pub(crate) purge_vmap_area_root: Tree<false>,
    /// The unpurged node that took the last free and its successor there
    /// (see [`merge_or_add_vmap_area`]), so that frees in address order
    /// need no descent; `None` after a purge or a merge upwards. Only
    /// `free_node` and `purge` change the unpurged tree, and both keep it.
    unpurged_finger: Option<Finger>,
    /// Purged areas of up to [`crate::MAX_VA_SIZE_PAGES`] pages, by size,
    /// waiting for an allocation of exactly their size.
    pub(crate) pool: VmapPools,
    pub(crate) start: usize,
    pub(crate) end: usize,
    pub(crate) lazy: LazyPurge,
}

impl<S: ObjectSource> VmapAreas<S> {
    /// An allocator over `[start, end)`, all free, whose lazy-purge
    /// threshold is [`crate::lazy_max_pages`] for `nr_cpus` CPUs. Takes its
    /// first node from `source`.
    pub fn new(
        source: S,
        start: VirtAddr,
        end: VirtAddr,
        nr_cpus: usize,
    ) -> Result<Self, VmareaError> {
        if !start.is_aligned(PAGE_SIZE) || !end.is_aligned(PAGE_SIZE) || start >= end {
            return Err(VmareaError::BadRange { start, end });
        }
        let lazy = LazyPurge::new(nr_cpus, end.as_usize() - start.as_usize())?;
        let mut arena = Arena::new(source)?;
        let whole = arena.alloc(
            Node::new(start.as_usize(), end.as_usize(), VmFlags::empty()),
            GFP_KERNEL,
        )?;
        let mut areas = VmapAreas {
            arena,
            free_vmap_area_root: Tree::new(),
            vmap_area_root: Tree::new(),
            busy_finger: None,
            purge_vmap_area_root: Tree::new(),
            unpurged_finger: None,
            pool: VmapPools::new(),
            start: start.as_usize(),
            end: end.as_usize(),
            lazy,
        };
        areas.free_vmap_area_root.insert(&mut areas.arena, whole);
        Ok(areas)
    }

    /// The range managed, `[VMALLOC_START, VMALLOC_END)`.
    pub fn range(&self) -> (VirtAddr, VirtAddr) {
        (VirtAddr::new(self.start), VirtAddr::new(self.end))
    }

    /// The object source the nodes come from.
    pub fn source(&self) -> &S {
        self.arena.source()
    }

    /// Reserves `size` bytes (rounded up to pages), plus a trailing guard
    /// page unless [`VmFlags::NO_GUARD`], at an address aligned to `align`
    /// (Linux `alloc_vmap_area`): the lowest pooled area of exactly that
    /// size if its start is so aligned (Linux `node_alloc`), else the
    /// lowest fit in free space. Nodes come from the object source with
    /// `gfp`. Lazily freed ranges are not reused: on
    /// [`VmareaError::NoSpace`] the caller may
    /// [`VmapAreas::reclaim_and_purge`] and retry, which
    /// [`VmapAreas::alloc_purging`] does.
    ///
    /// O(log n) when `align` is a page; see [`crate`] for larger ones.
    #[track_caller]
    pub fn alloc(
        &mut self,
        size: usize,
        align: usize,
        flags: VmFlags,
        gfp: GfpFlags,
    ) -> Result<VmapArea, VmareaError> {
        let need = self.reserved_size(size, align, flags)?;
        if self.pool.nr_areas != 0 {
            if let Some(area) = self.node_alloc(need, align, flags) {
                return Ok(area);
            }
        }
        let Some((block, addr)) = self.find_vmap_lowest_match(need, align) else {
            return Err(VmareaError::NoSpace {
                size: need,
                align,
                lazy_pages: self.lazy.nr_pages,
            });
        };
        let free = *self.arena.get(block);
        let area_end = addr + need;
        let fit = match (addr > free.start, area_end < free.end) {
            (false, false) => Fit::Full,
            (false, true) => Fit::LeftEdge,
            (true, false) => Fit::RightEdge,
            (true, true) => Fit::Middle,
        };
        // Every node is taken before anything changes, so a source that
        // fails leaves the trees as they were.
        let busy = match fit {
            Fit::Full => block,
            _ => self.arena.alloc(Node::new(addr, area_end, flags), gfp)?,
        };
        if fit == Fit::Middle {
            let lower = match self
                .arena
                .alloc(Node::new(free.start, addr, VmFlags::empty()), gfp)
            {
                Ok(lower) => lower,
                Err(error) => {
                    self.arena.free(busy);
                    return Err(error);
                }
            };
            self.arena.get_mut(block).start = area_end;
            self.free_vmap_area_root.refresh(&mut self.arena, block);
            self.free_vmap_area_root
                .insert_before(&mut self.arena, lower, block);
        }
        match fit {
            Fit::Full => {
                self.free_vmap_area_root.remove(&mut self.arena, block);
                let node = self.arena.get_mut(block);
                node.flags = flags;
                node.subtree_max = 0;
            }
            Fit::LeftEdge => {
                self.arena.get_mut(block).start = area_end;
                self.free_vmap_area_root.refresh(&mut self.arena, block);
            }
            Fit::RightEdge => {
                self.arena.get_mut(block).end = addr;
                self.free_vmap_area_root.refresh(&mut self.arena, block);
            }
            Fit::Middle => {}
        }
        self.arena.get_mut(busy).caller = Some(Location::caller());
        self.insert_busy(busy, addr);
        Ok(VmapArea::of(self.arena.get(busy)))
    }

    /// The lowest pooled area of exactly `need` bytes, if aligned to
    /// `align`, made live (Linux `node_alloc`).
    #[track_caller]
    fn node_alloc(&mut self, need: usize, align: usize, flags: VmFlags) -> Option<VmapArea> {
        let id = self.pool.node_alloc(&mut self.arena, need, align)?;
        let node = self.arena.get_mut(id);
        node.flags = flags;
        node.caller = Some(Location::caller());
        let addr = node.start;
        self.insert_busy(id, addr);
        Some(VmapArea::of(self.arena.get(id)))
    }

    /// [`VmapAreas::alloc`], and if no block fits while lazily freed or
    /// pooled areas wait, one [`VmapAreas::reclaim_and_purge`] (flushed
    /// on `tlb` before any range is reused) and one retry, as Linux's
    /// `alloc_vmap_area` does: no space is ever lost to the pools.
    #[track_caller]
    pub fn alloc_purging(
        &mut self,
        size: usize,
        align: usize,
        flags: VmFlags,
        gfp: GfpFlags,
        tlb: &(impl KernelPageTable + ?Sized),
    ) -> Result<VmapArea, VmareaError> {
        match self.alloc(size, align, flags, gfp) {
            Err(VmareaError::NoSpace { lazy_pages, .. })
                if lazy_pages > 0 || self.pool.nr_areas > 0 =>
            {
                if let Some(flush) = self.reclaim_and_purge() {
                    flush.flush(tlb);
                }
                self.alloc(size, align, flags, gfp)
            }
            result => result,
        }
    }

    /// Releases the area starting at `addr` (Linux `free_vmap_area_noflush`):
    /// its range joins the unpurged tree (merged with unpurged neighbours)
    /// and its pages, guard included, the lazy count; past [`crate::lazy_max_pages`] every unpurged area is
    /// purged and [`Freed::flush`] carries the flush owed. An address that
    /// is not an area's start is refused and nothing changes. O(log n),
    /// plus the purge when one runs.
    pub fn free(&mut self, addr: VirtAddr) -> Result<Freed, VmareaError> {
        let id = self.busy_area_at(addr)?;
        Ok(self.free_node(id))
    }

    /// The first step of a free that must unmap before the range may be
    /// reused (Linux `remove_vm_area`'s unlink): the live area at `addr`,
    /// if its flags contain `kind`, is marked [`VmFlags::FREEING`], so
    /// lookups no longer find it and a second free is refused, while its
    /// range stays reserved. [`VmapAreas::release`] finishes the free. An
    /// area of another kind is [`VmareaError::WrongKind`]; nothing changes
    /// on any error. O(log n).
    pub fn detach(&mut self, addr: VirtAddr, kind: VmFlags) -> Result<VmapArea, VmareaError> {
        let id = self.busy_area_at(addr)?;
        let node = self.arena.get_mut(id);
        if kind.is_empty() || !node.flags.contains(kind) {
            return Err(VmareaError::WrongKind {
                addr,
                flags: node.flags,
            });
        }
        node.flags |= VmFlags::FREEING;
        Ok(VmapArea::of(node))
    }

    /// [`VmapAreas::detach`] of a large `vm_map_ram` area (flags
    /// [`VmFlags::MAP_RAM`], not a vmap block) that maps exactly `pages`
    /// pages: a wrong count is [`VmareaError::WrongCount`], another kind
    /// [`VmareaError::WrongKind`]; nothing changes on any error. O(log n).
    pub fn detach_map_ram(
        &mut self,
        addr: VirtAddr,
        pages: usize,
    ) -> Result<VmapArea, VmareaError> {
        let id = self.busy_area_at(addr)?;
        let area = VmapArea::of(self.arena.get(id));
        if !area.flags().contains(VmFlags::MAP_RAM) || area.flags().contains(VmFlags::VMAP_BLOCK) {
            return Err(VmareaError::WrongKind {
                addr,
                flags: area.flags(),
            });
        }
        let mapped = area.usable_size() / PAGE_SIZE;
        if mapped != pages {
            return Err(VmareaError::WrongCount {
                addr,
                count: pages,
                pages: mapped,
            });
        }
        self.detach(addr, VmFlags::MAP_RAM)
    }

    /// Finishes the free of the area [`VmapAreas::detach`] detached at
    /// `addr`, as [`VmapAreas::free`] does; [`VmareaError::NotAllocated`]
    /// if no detached area starts there.
    pub fn release(&mut self, addr: VirtAddr) -> Result<Freed, VmareaError> {
        let raw = addr.as_usize();
        let id = self
            .vmap_area_root
            .find_le(&self.arena, raw)
            .filter(|&id| {
                let node = self.arena.get(id);
                node.start == raw && node.flags.contains(VmFlags::FREEING)
            })
            .ok_or(VmareaError::NotAllocated { addr })?;
        Ok(self.free_node(id))
    }

    /// Moves a live node to the unpurged ranges and counts its pages as
    /// lazily freed, purging past the threshold.
    fn free_node(&mut self, id: NodeId) -> Freed {
        let area = VmapArea::of(self.arena.get(id));
        self.busy_finger = self.busy_finger.and_then(|finger| finger.without(id));
        self.vmap_area_root.remove(&mut self.arena, id);
        self.unpurged_finger = merge_or_add_vmap_area(
            &mut self.purge_vmap_area_root,
            &mut self.arena,
            id,
            self.unpurged_finger,
        );
        self.lazy.nr_pages += area.size() / PAGE_SIZE;
        self.lazy.nr_areas += 1;
        let flush = if self.lazy.nr_pages > self.lazy.max_pages {
            self.purge()
        } else {
            None
        };
        Freed { area, flush }
    }

    /// Decays the pools by a quarter (see [`crate`]), then ends the
    /// wait of every unpurged range (Linux `__purge_vmap_area_lazy`): one
    /// of up to [`crate::MAX_VA_SIZE_PAGES`] pages goes to its size's
    /// pool, a larger one back to free space, merged with its neighbours;
    /// hands back the one flush that covers the batch, `None` if nothing
    /// was waiting (the decay runs anyway, as Linux's does). O((u + p/4)
    /// log n + p) for u unpurged ranges, n free blocks and p pooled
    /// areas, or O(u + n) for the ranges when that is less (free space is
    /// then rebuilt in one pass).
    pub fn purge(&mut self) -> Option<TlbFlush> {
        self.purge_vmap_areas(Decay::Quarter)
    }

    /// [`VmapAreas::purge`] with a full decay: every pooled area and every
    /// unpurged range goes back to free space (Linux
    /// `reclaim_and_purge_vmap_areas`, what an allocation that found no
    /// space runs before its one retry).
    pub fn reclaim_and_purge(&mut self) -> Option<TlbFlush> {
        self.purge_vmap_areas(Decay::Full)
    }

    fn purge_vmap_areas(&mut self, decay: Decay) -> Option<TlbFlush> {
        // Decay first, as Linux does, so that the batch pooled below
        // waits at least one purge before any of it decays. A pool's
        // areas come in address order: a range in the same gap of free
        // space as the last one is linked without a descent.
        let mut finger = None;
        let free = &mut self.free_vmap_area_root;
        self.pool.decay(&mut self.arena, decay, |arena, id| {
            finger = merge_or_add_vmap_area(free, arena, id, finger);
        });
        let first = self.purge_vmap_area_root.first(&self.arena)?;
        let last = self.purge_vmap_area_root.last(&self.arena)?;
        let flush = TlbFlush::new(
            VirtAddr::new(self.arena.get(first).start),
            VirtAddr::new(self.arena.get(last).end),
        );
        let mut unpurged = core::mem::take(&mut self.purge_vmap_area_root);
        self.unpurged_finger = None;
        let mut batch = Run::default();
        let pool = &mut self.pool;
        unpurged.drain(&mut self.arena, |arena, id| {
            if decay == Decay::Full || !pool.stage(arena, id) {
                batch.push(arena, id);
            }
        });
        self.pool.settle(&mut self.arena);
        if rebuild_pays(batch.len, self.free_vmap_area_root.len()) {
            self.purge_rebuilding(batch);
        } else {
            // The batch comes in address order, as the pools' areas did.
            let mut finger = None;
            let mut next = batch.head;
            while let Some(id) = next {
                next = self.arena.get(id).right;
                finger = merge_or_add_vmap_area(
                    &mut self.free_vmap_area_root,
                    &mut self.arena,
                    id,
                    finger,
                );
            }
        }
        self.lazy.purged_areas += self.lazy.nr_areas;
        self.lazy.nr_areas = 0;
        self.lazy.nr_pages = 0;
        self.lazy.purges += 1;
        self.lazy.flush_tokens += 1;
        Some(flush)
    }

    /// The purge of a batch large against free space: free space is
    /// unrolled in address order and merged with the batch (a run in
    /// address order) into one run, touching ranges joined as
    /// `merge_or_add_vmap_area` joins them, and the free tree is built
    /// again from the run. O(u + n) for u ranges and n free blocks,
    /// against O(u log n) for one insert per range.
    fn purge_rebuilding(&mut self, batch: Run) {
        let mut pending = batch.head;
        let mut merged = Run::default();
        let mut free = core::mem::take(&mut self.free_vmap_area_root);
        free.drain(&mut self.arena, |arena, block| {
            let start = arena.get(block).start;
            while let Some(id) = pending.filter(|&id| arena.get(id).start < start) {
                pending = arena.get(id).right;
                merged.push(arena, id);
            }
            merged.push(arena, block);
        });
        while let Some(id) = pending {
            pending = self.arena.get(id).right;
            merged.push(&mut self.arena, id);
        }
        self.free_vmap_area_root
            .build(&mut self.arena, merged.head, merged.len);
    }

    /// The live area containing `addr`, guard page included (Linux
    /// `find_vmap_area`). O(log n).
    pub fn find_vmap_area(&self, addr: VirtAddr) -> Option<VmapArea> {
        let id = self.vmap_area_root.find_le(&self.arena, addr.as_usize())?;
        let area = VmapArea::of(self.arena.get(id));
        (area.contains(addr) && !area.flags().contains(VmFlags::FREEING)).then_some(area)
    }

    /// Live areas in address order.
    pub fn areas(&self) -> Ranges<'_, S> {
        Ranges::new(&self.arena, self.vmap_area_root.first(&self.arena))
    }

    /// Freed ranges awaiting their purge, in address order, adjacent ones
    /// merged (as Linux keeps `purge_vmap_area_root`), without flags.
    pub fn unpurged_areas(&self) -> Ranges<'_, S> {
        Ranges::new(&self.arena, self.purge_vmap_area_root.first(&self.arena))
    }

    /// Free blocks in address order (as ranges with no flags).
    pub fn free_blocks(&self) -> Ranges<'_, S> {
        Ranges::new(&self.arena, self.free_vmap_area_root.first(&self.arena))
    }

    /// Pooled areas (purged, waiting for an allocation of exactly their
    /// size) without flags, by size from the smallest, each size in
    /// address order. They are free space that only an allocation of
    /// their size reuses: [`VmapAreas::free_blocks`] and the stats'
    /// `largest_free` leave them out.
    pub fn pooled_areas(&self) -> impl Iterator<Item = VmapArea> + '_ {
        self.pool.pool.iter().flat_map(move |pool| {
            core::iter::successors(pool.head, move |&id| self.arena.get(id).right)
                .map(move |id| VmapArea::of(self.arena.get(id)))
        })
    }

    /// Bytes reserved for `size` at `align`: pages plus the guard page.
    fn reserved_size(
        &self,
        size: usize,
        align: usize,
        flags: VmFlags,
    ) -> Result<usize, VmareaError> {
        if size == 0 {
            return Err(VmareaError::ZeroSize);
        }
        if !align.is_power_of_two() || align < PAGE_SIZE {
            return Err(VmareaError::BadAlignment { align });
        }
        size.checked_next_multiple_of(PAGE_SIZE)
            .and_then(|pages| pages.checked_add(guard_bytes(flags)))
            .filter(|&need| need <= self.end - self.start)
            .ok_or(VmareaError::SizeTooLarge { size })
    }

    /// The lowest free block holding `need` bytes at `align`, and the
    /// address in it (Linux `find_vmap_lowest_match`). An in-order walk
    /// that skips every subtree whose `subtree_max_size` is below `need`:
    /// with page alignment every block it visits fits, so it ends on the
    /// first leaf-ward path; a larger alignment may visit blocks that are
    /// long enough but whose aligned start leaves too little.
    fn find_vmap_lowest_match(&self, need: usize, align: usize) -> Option<(NodeId, usize)> {
        let arena = &self.arena;
        let mut at = self.free_vmap_area_root.root()?;
        if arena.get(at).subtree_max < need {
            return None;
        }
        'descend: loop {
            while let Some(left) = arena.get(at).left {
                if subtree_max(arena, Some(left)) < need {
                    break;
                }
                at = left;
            }
            loop {
                if let Some(addr) = fit_in(arena.get(at), need, align) {
                    return Some((at, addr));
                }
                if let Some(right) = arena.get(at).right {
                    if arena.get(right).subtree_max >= need {
                        at = right;
                        continue 'descend;
                    }
                }
                // Climb to the first ancestor reached from its left: the
                // next block in address order not yet looked at.
                loop {
                    let parent = arena.get(at).parent?;
                    let from_left = arena.get(parent).left == Some(at);
                    at = parent;
                    if from_left {
                        break;
                    }
                }
            }
        }
    }

    /// Links a new live area starting at `start` into the busy tree: in
    /// the gap the finger names, or the one after it (allocations in
    /// address order), without a descent from the root when it falls
    /// there.
    fn insert_busy(&mut self, id: NodeId, start: usize) {
        let arena = &self.arena;
        let fits = |below: Option<NodeId>, above: Option<NodeId>| {
            below.map_or(true, |below| arena.get(below).start <= start)
                && above.map_or(true, |above| start < arena.get(above).start)
        };
        let gap = self.busy_finger.and_then(|finger| {
            let (below, above) = match finger.mid {
                Some(mid) => (Some(mid), finger.above),
                None => (finger.below, finger.above),
            };
            if fits(below, above) {
                return Some((below, above));
            }
            let next = above.map(|above| (Some(above), Tree::<false>::next(arena, above)))?;
            fits(next.0, next.1).then_some(next)
        });
        let (below, above) =
            gap.unwrap_or_else(|| self.vmap_area_root.neighbours(&self.arena, start));
        self.vmap_area_root
            .insert_between(&mut self.arena, id, below, above);
        self.busy_finger = Some(BusyFinger {
            below,
            mid: Some(id),
            above,
        });
    }

    /// The live area that starts at `addr`, or why `addr` names none.
    fn busy_area_at(&self, addr: VirtAddr) -> Result<NodeId, VmareaError> {
        if !addr.is_aligned(PAGE_SIZE) {
            return Err(VmareaError::Misaligned { addr });
        }
        let raw = addr.as_usize();
        if raw < self.start || raw >= self.end {
            return Err(VmareaError::OutOfRange { addr });
        }
        // The area allocated last, if still live, needs no descent.
        let last = self
            .busy_finger
            .and_then(|finger| finger.mid)
            .filter(|&mid| self.arena.get(mid).start == raw);
        if let Some(id) = last.or_else(|| self.vmap_area_root.find_le(&self.arena, raw)) {
            let node = self.arena.get(id);
            if node.start == raw && node.flags.contains(VmFlags::FREEING) {
                return Err(VmareaError::AlreadyFreed { addr });
            }
            if node.start == raw {
                return Ok(id);
            }
            if raw < node.end {
                return Err(VmareaError::Interior {
                    addr,
                    area: VirtAddr::new(node.start),
                });
            }
        }
        match self.purge_vmap_area_root.find_le(&self.arena, raw) {
            Some(id) if raw < self.arena.get(id).end => Err(VmareaError::AlreadyFreed { addr }),
            _ => Err(VmareaError::NotAllocated { addr }),
        }
    }
}

/// Puts a detached node's range into `tree` (free space, or the unpurged
/// ranges), merged with the ranges it touches (Linux
/// `merge_or_add_vmap_area`). Never allocates.
///
/// A `finger` is what the last call on `tree` returned, the tree unchanged
/// since: the node that holds that call's range and its successor in
/// `tree`, adjacent in address order (rotations keep the order). When the
/// range starts between them, they are its neighbours and no descent is
/// needed; otherwise it descends from the root. The returned finger is
/// `None` when the successor is not known (after a merge upwards).
fn merge_or_add_vmap_area<S: ObjectSource, const AUGMENTED: bool>(
    free: &mut Tree<AUGMENTED>,
    arena: &mut Arena<S>,
    id: NodeId,
    finger: Option<Finger>,
) -> Option<Finger> {
    let Node { start, end, .. } = *arena.get(id);
    let (below, above) = match finger {
        Some((below, above))
            if arena.get(below).start <= start
                && above.map_or(true, |above| start < arena.get(above).start) =>
        {
            (Some(below), above)
        }
        _ => free.neighbours(arena, start),
    };
    let touching_below = below.filter(|&b| arena.get(b).end == start);
    let touching_above = above.filter(|&a| arena.get(a).start == end);
    match (touching_below, touching_above) {
        (Some(below), Some(above)) => {
            let merged_end = arena.get(above).end;
            free.remove(arena, above);
            arena.free(above);
            arena.get_mut(below).end = merged_end;
            free.refresh(arena, below);
            arena.free(id);
            None
        }
        (Some(below), None) => {
            arena.get_mut(below).end = end;
            free.refresh(arena, below);
            arena.free(id);
            Some((below, above))
        }
        (None, Some(above)) => {
            arena.get_mut(above).start = start;
            free.refresh(arena, above);
            arena.free(id);
            None
        }
        (None, None) => {
            let node = arena.get_mut(id);
            node.flags = VmFlags::empty();
            node.caller = None;
            free.insert_between(arena, id, below, above);
            Some((id, above))
        }
    }
}

/// Whether a purge of `batch` unpurged ranges into `blocks` free blocks
/// is cheaper as one rebuild, O(batch + blocks), than as one insert per
/// range, O(batch log (batch + blocks)). Counted with callgrind on
/// `examples/area_ir`, a node of the rebuild (both unrolls, the merge and
/// the build) costs about as much as [`REBUILD_LEVELS_PER_NODE`] levels
/// of an insert's descent and climb.
fn rebuild_pays(batch: usize, blocks: usize) -> bool {
    // The inserts descend a tree that grows to `batch + blocks` nodes.
    let nodes = batch.saturating_add(blocks);
    let levels = (usize::BITS - nodes.leading_zeros()) as usize;
    nodes.saturating_mul(REBUILD_LEVELS_PER_NODE) < batch.saturating_mul(levels)
}

/// Insert levels one node of a rebuild costs as much as (see
/// [`rebuild_pays`]).
const REBUILD_LEVELS_PER_NODE: usize = 4;

/// Ranges in address order, linked through `right`, a touching range
/// joined to the one before it (its node given back to the arena).
#[derive(Default)]
struct Run {
    head: Option<NodeId>,
    tail: Option<NodeId>,
    len: usize,
}

impl Run {
    /// Appends a detached node (or joins it to the last range).
    fn push<S: ObjectSource>(&mut self, arena: &mut Arena<S>, id: NodeId) {
        let Node { start, end, .. } = *arena.get(id);
        match self.tail {
            Some(tail) if arena.get(tail).end == start => {
                arena.get_mut(tail).end = end;
                arena.free(id);
            }
            tail => {
                match tail {
                    Some(tail) => arena.get_mut(tail).right = Some(id),
                    None => self.head = Some(id),
                }
                arena.get_mut(id).right = None;
                self.tail = Some(id);
                self.len += 1;
            }
        }
    }
}

/// Three nodes of the busy tree, consecutive in address order: the area
/// allocated last (`mid`, `None` once freed) and the nodes either side of
/// it (`None` past either end of the tree).
#[derive(Clone, Copy, Debug)]
struct BusyFinger {
    below: Option<NodeId>,
    mid: Option<NodeId>,
    above: Option<NodeId>,
}

impl BusyFinger {
    /// The finger once `id` leaves the busy tree, if still known.
    fn without(self, id: NodeId) -> Option<Self> {
        if self.mid == Some(id) {
            Some(BusyFinger { mid: None, ..self })
        } else if self.below == Some(id) || self.above == Some(id) {
            None
        } else {
            Some(self)
        }
    }
}

/// A node of a tree and its successor there (see
/// [`merge_or_add_vmap_area`]).
type Finger = (NodeId, Option<NodeId>);

/// The address in `block` where `need` bytes aligned to `align` start, if
/// they fit.
fn fit_in(block: &Node, need: usize, align: usize) -> Option<usize> {
    let start = VirtAddr::new(block.start).align_up(align)?.as_usize();
    (start.checked_add(need)? <= block.end).then_some(start)
}

/// The ranges of one tree in address order.
pub struct Ranges<'a, S: ObjectSource> {
    arena: &'a Arena<S>,
    next: Option<NodeId>,
}

impl<'a, S: ObjectSource> Ranges<'a, S> {
    fn new(arena: &'a Arena<S>, first: Option<NodeId>) -> Self {
        Ranges { arena, next: first }
    }
}

impl<S: ObjectSource> Iterator for Ranges<'_, S> {
    type Item = VmapArea;

    fn next(&mut self) -> Option<VmapArea> {
        let id = self.next?;
        self.next = Tree::<false>::next(self.arena, id);
        Some(VmapArea::of(self.arena.get(id)))
    }
}
