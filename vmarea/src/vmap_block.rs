//! Per-CPU vmap blocks (Linux `mm/vmalloc.c`'s `vmap_block`, `vb_alloc`,
//! `vb_free`): `vm_map_ram` / `vm_unmap_ram` of a few pages without a
//! trip through the area allocator's lock each time.
//!
//! # What it owns
//!
//! - The blocks: each is one area of [`vmap_bbmap_bits`] pages
//!   ([`VmFlags::MAP_RAM`] | [`VmFlags::VMAP_BLOCK`], no guard page) and a
//!   descriptor in one object from the area allocator's
//!   [`kmm_api::ObjectSource`] (no heap): the offset of its first unused
//!   page, its dirty count and dirty range, and two bitmaps marking the
//!   first and the last page of every live range, so `vm_unmap_ram`
//!   checks the address and the count exactly.
//! - `vmap_blocks`, the list of every block (for the walks of a purge and
//!   the checker), the address index of every block (module
//!   `block_index`, Linux's `vmap_blocks` xarray: blocks are aligned to
//!   their size, so the block holding an address is found by its key,
//!   `addr_to_vb_idx`), and the per-CPU table of each CPU's current block
//!   (one object from the same source, `nr_cpus` slots).
//!
//! It owns no frame: `vm_map_ram` maps frames its caller holds, and
//! `vm_unmap_ram` leaves them to it.
//!
//! # How a block lives
//!
//! A request of at most [`VMAP_MAX_ALLOC`] pages is rounded up to a power
//! of two (its order, as Linux) and carved from the current CPU's block at
//! the first unused page; a block that cannot hold it is *retired*: its
//! unused pages count as dirty (they are never handed out), it leaves its
//! CPU's slot, and a new block takes its place, with the request carved
//! from it at once. An unmapped range is unmapped at once (its flush
//! deferred) and counted dirty; it is never handed out again. When every
//! page of a block is dirty, the block is freed: its descriptor goes back
//! to the source and its area to the lazy purge, which flushes it before
//! reuse. [`crate::Vmalloc::purge`] (Linux `vm_unmap_aliases`) also
//! flushes the dirty ranges of the blocks still live, in the same single
//! flush as the lazy purge.
//!
//! States of a block: *current* (in one CPU's slot; it has unused pages)
//! → *retired* (no unused pages; on `vmap_blocks` only, while it has a
//! live range) → *freed* (all dirty). Only a retired block can be freed,
//! so a pointer read from a CPU's slot while pinned to it is always live.
//!
//! # Locks, in order
//!
//! 1. `vmap_blocks` (the list lock, Linux's `vmap_blocks` xarray lock):
//!    held to find a block by address (in the index) and to link or
//!    unlink one (list and index together).
//! 2. a block's own lock (Linux `vb->lock`): its counters and bitmaps.
//!
//! The area allocator's lock is never taken with either held. A CPU's slot
//! is read and written only by a context pinned to that CPU
//! ([`VmapCpus::get_cpu`]), so it needs no lock; it is an atomic only so
//! that loom sees it.
//!
//! # Cost
//!
//! `vm_map_ram` of a small count: O(1) on the current block, plus one area
//! allocation (O(log n), aligned to the block) and an index insertion
//! (O(levels)) when a new block is needed; `vm_unmap_ram` of a small
//! count: O(levels) to find the block in the index (a constant of the
//! range: 1 level on i386, 3 on x86-64) plus O(count). Both plus O(count)
//! page-table work.
//!
//! # What it must never do
//!
//! Hand out a page of a block twice before the block's area has been
//! purged; free a block that a CPU's slot names or that has a live range;
//! unmap anything on a `vm_unmap_ram` that it refuses (a wrong count, an
//! address that no `vm_map_ram` returned, a second unmap).

use crate::block_index::{BlockIndex, NeedNode};
use crate::error::VmareaError;
use crate::flags::VmFlags;
use crate::locked::SharedVmapAreas;
use core::mem::{align_of, size_of};
use core::ptr::{self, NonNull};
use kmm_api::sync::{AtomicPtr, AtomicUsize, Ordering::Relaxed, SpinLock};
use kmm_api::{
    KernelPageTable, ObjectSource, PreemptControl, TlbFlush, VirtAddr, GFP_KERNEL, PAGE_SIZE,
};

/// The most pages one `vm_map_ram` takes from a vmap block (Linux
/// `VMAP_MAX_ALLOC`, `BITS_PER_LONG`); larger requests get an area each.
pub const VMAP_MAX_ALLOC: usize = usize::BITS as usize;

/// The largest block, in pages (Linux `VMAP_BBMAP_BITS_MAX`).
pub const VMAP_BBMAP_BITS_MAX: usize = 1024;

/// The smallest block, in pages (Linux `VMAP_BBMAP_BITS_MIN`): two of the
/// largest requests.
pub const VMAP_BBMAP_BITS_MIN: usize = VMAP_MAX_ALLOC * 2;

/// Pages per vmap block for a vmalloc range of `range_bytes` and `nr_cpus`
/// CPUs (Linux `VMAP_BBMAP_BITS`): a sixteenth of the range's share per
/// CPU, clamped to [`VMAP_BBMAP_BITS_MIN`, `VMAP_BBMAP_BITS_MAX`]. The range
/// counts as the power of two it rounds up to (Linux uses the reserve,
/// `VMALLOC_SPACE`, not the range left after the direct map), so the
/// figure is a power of two: i386's 111 MiB range on 8 CPUs gives 256.
pub const fn vmap_bbmap_bits(range_bytes: usize, nr_cpus: usize) -> usize {
    let space = match (range_bytes / PAGE_SIZE).checked_next_power_of_two() {
        Some(pages) => pages,
        None => usize::MAX / 2 + 1,
    };
    let cpus = match nr_cpus.checked_next_power_of_two() {
        Some(cpus) => cpus,
        None => usize::MAX / 2 + 1,
    };
    let bits = space / cpus / 16;
    if bits < VMAP_BBMAP_BITS_MIN {
        VMAP_BBMAP_BITS_MIN
    } else if bits > VMAP_BBMAP_BITS_MAX {
        VMAP_BBMAP_BITS_MAX
    } else {
        bits
    }
}

/// Words of one bitmap of a block.
const MAP_WORDS: usize = VMAP_BBMAP_BITS_MAX / 64;

/// Bytes of a block descriptor (what the object source must hold).
pub const VMAP_BLOCK_BYTES: usize = size_of::<VmapBlock>();

/// The CPUs a [`crate::Vmalloc`] keeps vmap blocks for.
///
/// Implemented by every [`PreemptControl`] (one block queue per CPU) and
/// by [`NoVmapBlocks`] (none: every `vm_map_ram` takes its own area).
///
/// # Safety
///
/// As [`PreemptControl`]: a CPU id [`VmapCpus::get_cpu`] returns is below
/// [`VmapCpus::nr_cpus`] and held exclusively until the matching
/// [`VmapCpus::put_cpu`]. The per-CPU slots rely on it.
pub unsafe trait VmapCpus: Sync {
    /// CPUs with a block queue; 0 for none.
    fn nr_cpus(&self) -> usize;
    /// Pins the caller to its CPU and returns the id.
    fn get_cpu(&self) -> usize;
    /// Ends the section [`VmapCpus::get_cpu`] began.
    fn put_cpu(&self, cpu: usize);
}

// SAFETY: forwards to `P`, whose contract is the same.
unsafe impl<P: PreemptControl> VmapCpus for P {
    fn nr_cpus(&self) -> usize {
        kmm_api::Platform::nr_cpus(self)
    }
    fn get_cpu(&self) -> usize {
        PreemptControl::get_cpu(self)
    }
    fn put_cpu(&self, cpu: usize) {
        PreemptControl::put_cpu(self, cpu)
    }
}

/// A vmalloc without per-CPU vmap blocks (the default): `vm_map_ram`
/// takes a whole area for every request.
#[derive(Clone, Copy, Default, Debug)]
pub struct NoVmapBlocks;

// SAFETY: there are no CPU ids to hand out (`nr_cpus` is 0), and with no
// slots nothing calls `get_cpu`.
unsafe impl VmapCpus for NoVmapBlocks {
    fn nr_cpus(&self) -> usize {
        0
    }
    fn get_cpu(&self) -> usize {
        0
    }
    fn put_cpu(&self, _cpu: usize) {}
}

/// One block's descriptor, in an object from the source.
struct VmapBlock {
    /// The block area's first byte; fixed for the block's life.
    va_start: usize,
    /// `vmap_blocks` links, read and written under the list lock only.
    next: AtomicPtr<VmapBlock>,
    prev: AtomicPtr<VmapBlock>,
    state: SpinLock<VbState>,
}

/// A block's counters and bitmaps (under `vb->lock`).
struct VbState {
    /// Pages not yet handed out, at the top of the block (`vb->free`).
    free: usize,
    /// Pages unmapped or retired, never handed out again (`vb->dirty`).
    dirty: usize,
    /// Unmapped pages not yet flushed by `vm_unmap_aliases`, as a page
    /// range `[dirty_min, dirty_max)` (empty when `dirty_min >= dirty_max`).
    dirty_min: usize,
    dirty_max: usize,
    /// The first page of each live range.
    starts: [u64; MAP_WORDS],
    /// The last mapped page of each live range.
    ends: [u64; MAP_WORDS],
}

fn test_bit(map: &[u64; MAP_WORDS], bit: usize) -> bool {
    map[bit / 64] & (1 << (bit % 64)) != 0
}

fn set_bit(map: &mut [u64; MAP_WORDS], bit: usize, on: bool) {
    if on {
        map[bit / 64] |= 1 << (bit % 64);
    } else {
        map[bit / 64] &= !(1 << (bit % 64));
    }
}

/// Pages a request of `count` pages reserves in a block (its order).
fn reserved(count: usize) -> usize {
    count.next_power_of_two()
}

/// The page address `page` pages from `start`.
fn page_at(start: usize, page: usize) -> VirtAddr {
    VirtAddr::new(start + page * PAGE_SIZE)
}

/// A range handed out of a block: where, and which block.
pub(crate) struct BlockRange {
    block: NonNull<VmapBlock>,
    pub(crate) addr: VirtAddr,
}

/// What `vb_free` found and claimed: the block, the range's first page and
/// its page count.
pub(crate) struct Claimed {
    block: NonNull<VmapBlock>,
    offset: usize,
    pub(crate) count: usize,
}

/// The per-CPU vmap blocks of one [`crate::Vmalloc`].
pub(crate) struct VmapBlocks {
    /// Pages per block; 0 when blocks are off.
    bits: usize,
    /// `nr_cpus` slots in one object from the source (each CPU's current
    /// block, null for none); `None` when blocks are off.
    percpu: Option<NonNull<AtomicPtr<VmapBlock>>>,
    nr_cpus: usize,
    /// `vmap_blocks`: the first block of the list.
    list: SpinLock<BlockList>,
    /// Blocks alive (for the figures).
    nr_blocks: AtomicUsize,
}

struct BlockList {
    head: *mut VmapBlock,
    /// Every block on the list by address; `None` when blocks are off.
    index: Option<BlockIndex>,
}

// SAFETY: the list head is read and written under its lock; the slots and
// the descriptors are objects this value owns (from the source), reached
// under the rules of the module documentation (list lock, block lock,
// a pinned CPU for its own slot).
unsafe impl Send for VmapBlocks {}
// SAFETY: as above.
unsafe impl Sync for VmapBlocks {}

impl VmapBlocks {
    /// No blocks: every `vm_map_ram` takes its own area.
    pub(crate) fn off() -> Self {
        VmapBlocks {
            bits: 0,
            percpu: None,
            nr_cpus: 0,
            list: SpinLock::new(BlockList {
                head: ptr::null_mut(),
                index: None,
            }),
            nr_blocks: AtomicUsize::new(0),
        }
    }

    /// Blocks for `nr_cpus` CPUs over the range of `areas`, the per-CPU
    /// table taken from its source. Refused when the source's objects
    /// cannot hold a descriptor or the table.
    pub(crate) fn new<S: ObjectSource>(
        areas: &SharedVmapAreas<S>,
        nr_cpus: usize,
    ) -> Result<Self, VmareaError> {
        if nr_cpus == 0 {
            return Err(VmareaError::NoCpus);
        }
        let (start, end) = areas.range();
        let bits = vmap_bbmap_bits(end.as_usize() - start.as_usize(), nr_cpus);
        let (table, index) = areas.with_areas(|a| {
            let source = a.source();
            let (size, align) = (source.object_size(), source.object_align());
            let table_bytes = nr_cpus.checked_mul(size_of::<AtomicPtr<VmapBlock>>());
            let fits = |bytes: usize, need_align: usize| bytes <= size && need_align <= align;
            if !fits(VMAP_BLOCK_BYTES, align_of::<VmapBlock>())
                || !table_bytes.is_some_and(|t| fits(t, align_of::<AtomicPtr<VmapBlock>>()))
            {
                return Err(VmareaError::ObjectTooSmall { size, align });
            }
            let table = source.alloc_object(GFP_KERNEL)?;
            let block_bytes = bits * PAGE_SIZE;
            match BlockIndex::new(source, start.as_usize(), end.as_usize(), block_bytes) {
                Ok(index) => Ok((table, index)),
                Err(e) => {
                    // SAFETY: taken from this source just above, unused.
                    let _ = unsafe { source.free_object(table) };
                    Err(e)
                }
            }
        })?;
        let slots = table.cast::<AtomicPtr<VmapBlock>>();
        for cpu in 0..nr_cpus {
            // SAFETY: the object holds `nr_cpus` slots, aligned (checked
            // above), and is ours: nobody else reads it yet.
            unsafe {
                slots
                    .as_ptr()
                    .add(cpu)
                    .write(AtomicPtr::new(ptr::null_mut()))
            };
        }
        Ok(VmapBlocks {
            bits,
            percpu: Some(slots),
            nr_cpus,
            list: SpinLock::new(BlockList {
                head: ptr::null_mut(),
                index: Some(index),
            }),
            nr_blocks: AtomicUsize::new(0),
        })
    }

    /// Whether a request of `count` pages is served from a block.
    pub(crate) fn serves(&self, count: usize) -> bool {
        self.percpu.is_some() && count <= VMAP_MAX_ALLOC
    }

    /// Pages per block (0: blocks are off).
    pub(crate) fn bits(&self) -> usize {
        self.bits
    }

    /// Blocks alive now.
    pub(crate) fn nr_blocks(&self) -> usize {
        self.nr_blocks.load(Relaxed)
    }

    /// CPU `cpu`'s slot.
    fn slot(&self, cpu: usize) -> Option<&AtomicPtr<VmapBlock>> {
        let slots = self.percpu?;
        if cpu >= self.nr_cpus {
            return None;
        }
        // SAFETY: `cpu` is below `nr_cpus`, and the table's slots were
        // written in `new` and live as long as `self`.
        Some(unsafe { &*slots.as_ptr().add(cpu) })
    }

    /// Linux `vb_alloc`: `count` pages (1 to [`VMAP_MAX_ALLOC`]) from the
    /// current CPU's block, or from a new block.
    #[track_caller]
    pub(crate) fn vb_alloc<S: ObjectSource, C: VmapCpus>(
        &self,
        count: usize,
        cpus: &C,
        areas: &SharedVmapAreas<S>,
        tlb: &(impl KernelPageTable + ?Sized),
    ) -> Result<BlockRange, VmareaError> {
        let need = reserved(count);
        let cpu = cpus.get_cpu();
        if let Some(slot) = self.slot(cpu) {
            if let Some(block) = NonNull::new(slot.load(Relaxed)) {
                // SAFETY: a block in a slot is current, and only its CPU,
                // which we hold pinned, retires it: it is alive.
                let vb = unsafe { block.as_ref() };
                let mut state = vb.state.lock();
                if state.free >= need {
                    let offset = self.take(&mut state, need, count);
                    let exhausted = state.free == 0;
                    drop(state);
                    if exhausted {
                        slot.store(ptr::null_mut(), Relaxed);
                    }
                    cpus.put_cpu(cpu);
                    return Ok(BlockRange {
                        block,
                        addr: page_at(vb.va_start, offset),
                    });
                }
                // Retire it: its unused pages are never handed out.
                state.dirty += state.free;
                state.free = 0;
                let dead = state.dirty == self.bits;
                drop(state);
                slot.store(ptr::null_mut(), Relaxed);
                cpus.put_cpu(cpu);
                if dead {
                    self.free_vmap_block(block, areas, tlb);
                }
            } else {
                cpus.put_cpu(cpu);
            }
        } else {
            cpus.put_cpu(cpu);
        }
        self.new_vmap_block(need, count, cpus, areas, tlb)
    }

    /// Carves `need` pages (`count` of them mapped) at the block's first
    /// unused page; the caller checked they fit.
    fn take(&self, state: &mut VbState, need: usize, count: usize) -> usize {
        let offset = self.bits - state.free;
        state.free -= need;
        set_bit(&mut state.starts, offset, true);
        set_bit(&mut state.ends, offset + count - 1, true);
        offset
    }

    /// Linux `new_vmap_block`: a new block whose first `need` pages are
    /// the request, aligned to its size (so its index key is exact),
    /// linked on `vmap_blocks` and in the index and made the current CPU's
    /// block (retired at once if another block got there first). The area,
    /// the descriptor and any index node are taken unpinned (they may wait
    /// on the area lock and the source).
    #[track_caller]
    fn new_vmap_block<S: ObjectSource, C: VmapCpus>(
        &self,
        need: usize,
        count: usize,
        cpus: &C,
        areas: &SharedVmapAreas<S>,
        tlb: &(impl KernelPageTable + ?Sized),
    ) -> Result<BlockRange, VmareaError> {
        let flags = VmFlags::MAP_RAM | VmFlags::VMAP_BLOCK | VmFlags::NO_GUARD;
        let block_bytes = self.bits * PAGE_SIZE;
        let area = areas.alloc(block_bytes, block_bytes, flags, GFP_KERNEL, tlb)?;
        // Nothing is mapped on a failure below: the range goes straight back.
        let give_back = || {
            if let Ok(detached) = areas.detach(area.start(), flags) {
                areas.release(detached, tlb);
            }
        };
        let object = match areas.with_areas(|a| a.source().alloc_object(GFP_KERNEL)) {
            Ok(object) => object,
            Err(cause) => {
                give_back();
                return Err(VmareaError::NoNodes { cause });
            }
        };
        let mut state = VbState {
            free: self.bits,
            dirty: 0,
            dirty_min: self.bits,
            dirty_max: 0,
            starts: [0; MAP_WORDS],
            ends: [0; MAP_WORDS],
        };
        let offset = self.take(&mut state, need, count);
        let block = object.cast::<VmapBlock>();
        // SAFETY: the object is ours, large and aligned enough for a
        // descriptor (checked in `new`); nothing reads it before this.
        unsafe {
            block.as_ptr().write(VmapBlock {
                va_start: area.start().as_usize(),
                next: AtomicPtr::new(ptr::null_mut()),
                prev: AtomicPtr::new(ptr::null_mut()),
                state: SpinLock::new(state),
            })
        };
        if let Err(cause) = self.link(block, areas) {
            // SAFETY: written just above and never linked: ours alone.
            unsafe { ptr::drop_in_place(block.as_ptr()) };
            // SAFETY: taken from this source just above.
            let _ = areas.with_areas(|a| unsafe { a.source().free_object(object) });
            give_back();
            return Err(VmareaError::NoNodes { cause });
        }
        self.nr_blocks.fetch_add(1, Relaxed);
        // SAFETY: linked just now, and it has our live range: nobody
        // frees it before we return it.
        let vb = unsafe { block.as_ref() };
        let cpu = cpus.get_cpu();
        match self.slot(cpu) {
            Some(slot) if slot.load(Relaxed).is_null() => slot.store(block.as_ptr(), Relaxed),
            _ => {
                // Another context of this CPU installed a block while we
                // were unpinned: this one is retired at once.
                let mut state = vb.state.lock();
                state.dirty += state.free;
                state.free = 0;
            }
        }
        cpus.put_cpu(cpu);
        Ok(BlockRange {
            block,
            addr: page_at(vb.va_start, offset),
        })
    }

    /// Links `block` at the head of `vmap_blocks` and indexes it by its
    /// start. An index node it needs is taken from the source with the
    /// list lock dropped (as Linux's `xa_insert` drops its lock to
    /// allocate), then the insertion is retried; if the source fails,
    /// nothing is linked and the nodes taken for it are given back.
    fn link<S: ObjectSource>(
        &self,
        block: NonNull<VmapBlock>,
        areas: &SharedVmapAreas<S>,
    ) -> Result<(), kmm_api::Error> {
        // SAFETY: a written descriptor, not yet shared.
        let va_start = unsafe { block.as_ref().va_start };
        let mut spare = None;
        loop {
            let mut list = self.list.lock();
            let Some(index) = list.index.as_mut() else {
                return Ok(()); // blocks are off: never reached
            };
            match index.insert(va_start, block.cast(), &mut spare) {
                Ok(()) => {
                    // SAFETY: `block` is a written descriptor not yet on
                    // the list; the head, if any, is a live block on it,
                    // and links change only under the lock we hold.
                    unsafe {
                        let vb = block.as_ref();
                        vb.next.store(list.head, Relaxed);
                        if let Some(head) = list.head.as_ref() {
                            head.prev.store(block.as_ptr(), Relaxed);
                        }
                    }
                    list.head = block.as_ptr();
                    break;
                }
                Err(NeedNode) => {
                    drop(list);
                    match areas.with_areas(|a| a.source().alloc_object(GFP_KERNEL)) {
                        Ok(node) => spare = Some(node),
                        Err(cause) => {
                            let mut list = self.list.lock();
                            let emptied = list.index.as_mut().and_then(|i| i.remove(va_start));
                            drop(list);
                            areas.with_areas(|a| BlockIndex::free_chain(a.source(), emptied));
                            return Err(cause);
                        }
                    }
                }
            }
        }
        if let Some(node) = spare {
            // SAFETY: taken from this source above and never linked.
            let _ = areas.with_areas(|a| unsafe { a.source().free_object(node) });
        }
        Ok(())
    }

    /// Linux `free_vmap_block`: unlinks a block with every page dirty,
    /// gives its descriptor back and its area to the lazy purge.
    fn free_vmap_block<S: ObjectSource>(
        &self,
        block: NonNull<VmapBlock>,
        areas: &SharedVmapAreas<S>,
        tlb: &(impl KernelPageTable + ?Sized),
    ) {
        // SAFETY: every page is dirty, so no range of it is live and no
        // slot names it (only a block without unused pages reaches all
        // dirty, and such a block has left its slot): only the list and
        // the index reach it, and we unlink it from both.
        let va_start = unsafe { block.as_ref().va_start };
        let emptied = {
            let mut list = self.list.lock();
            let emptied = list.index.as_mut().and_then(|index| index.remove(va_start));
            // SAFETY: the block is on the list (linked before its first
            // range was returned) and its neighbours are live blocks; we
            // hold the list lock.
            unsafe {
                let vb = block.as_ref();
                let (prev, next) = (vb.prev.load(Relaxed), vb.next.load(Relaxed));
                match prev.as_ref() {
                    Some(prev) => prev.next.store(next, Relaxed),
                    None => list.head = next,
                }
                if let Some(next) = next.as_ref() {
                    next.prev.store(prev, Relaxed);
                }
            }
            emptied
        };
        self.nr_blocks.fetch_sub(1, Relaxed);
        // SAFETY: as above, and it is off the list and out of the index:
        // nobody can reach it any more; the descriptor is dropped once.
        unsafe { ptr::drop_in_place(block.as_ptr()) };
        areas.with_areas(|a| {
            // SAFETY: the object came from this source in
            // `new_vmap_block`, and its descriptor is dropped.
            let _ = unsafe { a.source().free_object(block.cast()) };
            BlockIndex::free_chain(a.source(), emptied);
        });
        // Every page was unmapped as it became dirty (or never mapped):
        // the range may go to the purge.
        let flags = VmFlags::MAP_RAM | VmFlags::VMAP_BLOCK;
        if let Ok(area) = areas.detach(VirtAddr::new(va_start), flags) {
            areas.release(area, tlb);
        }
    }

    /// Linux `vb_free`'s first half, with `vm_unmap_ram`'s checks: finds
    /// the block holding `addr` and claims the range starting there, if
    /// it maps exactly `count` pages. `Ok(None)`: `addr` is in no block.
    /// Nothing changes on an error.
    pub(crate) fn vb_claim(
        &self,
        addr: VirtAddr,
        count: usize,
    ) -> Result<Option<Claimed>, VmareaError> {
        if self.percpu.is_none() {
            return Ok(None);
        }
        let raw = addr.as_usize();
        let span = self.bits * PAGE_SIZE;
        let list = self.list.lock();
        let Some(block) = list.index.as_ref().and_then(|index| index.get(raw)) else {
            return Ok(None);
        };
        let block = block.cast::<VmapBlock>();
        // SAFETY: every indexed block is live while we hold the list lock.
        // `block` keeps the pointer the index stored (and its provenance):
        // the block may be freed through it later.
        let vb = unsafe { block.as_ref() };
        if !(vb.va_start <= raw && raw - vb.va_start < span) {
            return Ok(None); // unreachable: blocks are aligned to `span`
        }
        let offset = (raw - vb.va_start) / PAGE_SIZE;
        let mut state = vb.state.lock();
        let pages = self.live_range_at(&state, vb.va_start, offset, addr)?;
        if pages != count {
            return Err(VmareaError::WrongCount { addr, count, pages });
        }
        set_bit(&mut state.starts, offset, false);
        set_bit(&mut state.ends, offset + pages - 1, false);
        Ok(Some(Claimed {
            block,
            offset,
            count,
        }))
    }

    /// The pages of the live range starting at page `offset`, or why
    /// there is none.
    fn live_range_at(
        &self,
        state: &VbState,
        va_start: usize,
        offset: usize,
        addr: VirtAddr,
    ) -> Result<usize, VmareaError> {
        if test_bit(&state.starts, offset) {
            let end = (offset..self.bits)
                .find(|&page| test_bit(&state.ends, page))
                .unwrap_or(offset);
            return Ok(end - offset + 1);
        }
        // Inside a live range? Its start is the last start below, and it
        // is live through its end bit.
        let below = (offset.saturating_sub(VMAP_MAX_ALLOC)..offset)
            .rev()
            .find(|&page| test_bit(&state.starts, page));
        if let Some(start) = below {
            let end = (start..self.bits).find(|&page| test_bit(&state.ends, page));
            if end.is_some_and(|end| offset <= end) {
                return Err(VmareaError::Interior {
                    addr,
                    area: page_at(va_start, start),
                });
            }
        }
        if offset < self.bits - state.free {
            Err(VmareaError::AlreadyFreed { addr })
        } else {
            Err(VmareaError::NotAllocated { addr })
        }
    }

    /// Linux `vb_free`'s second half: the claimed range, already
    /// unmapped, counts as dirty; the block is freed if that was its last
    /// page.
    pub(crate) fn vb_dirty<S: ObjectSource>(
        &self,
        claimed: Claimed,
        areas: &SharedVmapAreas<S>,
        tlb: &(impl KernelPageTable + ?Sized),
    ) {
        let need = reserved(claimed.count);
        // SAFETY: the claimed range is still counted as handed out, so the
        // block cannot reach all dirty and be freed before this.
        let vb = unsafe { claimed.block.as_ref() };
        let mut state = vb.state.lock();
        state.dirty += need;
        state.dirty_min = state.dirty_min.min(claimed.offset);
        state.dirty_max = state.dirty_max.max(claimed.offset + need);
        let dead = state.dirty == self.bits;
        drop(state);
        if dead {
            self.free_vmap_block(claimed.block, areas, tlb);
        }
    }

    /// Gives back a range `vb_alloc` returned that was never handed to the
    /// caller (its mapping failed; the pages mapped are unmapped).
    pub(crate) fn vb_abandon<S: ObjectSource>(
        &self,
        range: BlockRange,
        count: usize,
        areas: &SharedVmapAreas<S>,
        tlb: &(impl KernelPageTable + ?Sized),
    ) {
        // SAFETY: the range is live (ours), so its block is.
        let vb = unsafe { range.block.as_ref() };
        let offset = (range.addr.as_usize() - vb.va_start) / PAGE_SIZE;
        {
            let mut state = vb.state.lock();
            set_bit(&mut state.starts, offset, false);
            set_bit(&mut state.ends, offset + count - 1, false);
        }
        self.vb_dirty(
            Claimed {
                block: range.block,
                offset,
                count,
            },
            areas,
            tlb,
        );
    }

    /// The flush `vm_unmap_aliases` owes the blocks: their dirty ranges
    /// not yet flushed, as one range; each block's is reset.
    pub(crate) fn take_dirty_ranges(&self) -> Option<TlbFlush> {
        let list = self.list.lock();
        let mut flush: Option<TlbFlush> = None;
        let mut at = list.head;
        // SAFETY: every block on the list is live while we hold its lock.
        while let Some(vb) = unsafe { at.as_ref() } {
            let mut state = vb.state.lock();
            if state.dirty_min < state.dirty_max {
                let range = TlbFlush::new(
                    page_at(vb.va_start, state.dirty_min),
                    page_at(vb.va_start, state.dirty_max),
                );
                flush = Some(flush.map_or(range, |f| f.merge(range)));
                state.dirty_min = self.bits;
                state.dirty_max = 0;
            }
            drop(state);
            at = vb.next.load(Relaxed);
        }
        flush
    }

    /// Gives every descriptor and the per-CPU table back to the source
    /// (the vmalloc is going away; its areas go with it).
    pub(crate) fn release_all<S: ObjectSource>(&mut self, source: &S) {
        if let Some(mut index) = self.list.get_mut().index.take() {
            index.release_all(source);
        }
        let mut at = core::mem::replace(&mut self.list.get_mut().head, ptr::null_mut());
        while let Some(block) = NonNull::new(at) {
            // SAFETY: we have `&mut self`: nobody else reaches the blocks;
            // each is dropped and given back once, after reading its link.
            unsafe {
                at = block.as_ref().next.load(Relaxed);
                ptr::drop_in_place(block.as_ptr());
                let _ = source.free_object(block.cast());
            }
        }
        if let Some(slots) = self.percpu.take() {
            for cpu in 0..self.nr_cpus {
                // SAFETY: written in `new`, dropped once here.
                unsafe { ptr::drop_in_place(slots.as_ptr().add(cpu)) };
            }
            // SAFETY: the table came from this source in `new`.
            let _ = unsafe { source.free_object(slots.cast()) };
        }
        self.nr_blocks.store(0, Relaxed);
    }

    /// Checks every block: free, dirty and live pages add up to the block,
    /// live ranges are well formed, no block is all dirty, and the block
    /// count agrees. For tests and fuzzing, with no `vm_unmap_ram` in
    /// flight (between its claim and its dirty count a block is short).
    pub(crate) fn check(&self) -> Result<(), &'static str> {
        let list = self.list.lock();
        let mut at = list.head;
        let mut blocks = 0;
        // SAFETY: every block on the list is live while we hold its lock.
        while let Some(vb) = unsafe { at.as_ref() } {
            let state = vb.state.lock();
            let mut live = 0;
            let mut open: Option<usize> = None;
            for page in 0..self.bits - state.free {
                if test_bit(&state.starts, page) {
                    if open.is_some() {
                        return Err("a live range starts inside another");
                    }
                    open = Some(page);
                }
                if test_bit(&state.ends, page) {
                    let Some(start) = open.take() else {
                        return Err("a live range ends without a start");
                    };
                    live += reserved(page - start + 1);
                }
            }
            if open.is_some() {
                return Err("a live range has no end");
            }
            if state.free + state.dirty + live != self.bits {
                return Err("free + dirty + live pages are not the block");
            }
            if state.dirty == self.bits {
                return Err("a block with every page dirty was not freed");
            }
            let indexed = list.index.as_ref().and_then(|i| i.get(vb.va_start));
            if indexed != NonNull::new(at.cast()) {
                return Err("a block is not indexed at its start");
            }
            if vb.va_start % (self.bits * PAGE_SIZE) != 0 {
                return Err("a block is not aligned to its size");
            }
            blocks += 1;
            drop(state);
            at = vb.next.load(Relaxed);
        }
        if blocks != self.nr_blocks() {
            return Err("the block count disagrees with vmap_blocks");
        }
        Ok(())
    }
}

impl<F, T, S, D, P> crate::Vmalloc<F, T, S, D, P>
where
    F: kmm_api::FrameAllocator + kmm_api::PageOwner,
    T: KernelPageTable,
    S: ObjectSource,
    D: kmm_api::DirectMap,
    P: VmapCpus,
{
    /// Linux `vm_map_ram`: maps the frames of `pages` (held by the caller,
    /// who keeps them: the handles prove it) at one new address, without
    /// a guard page. Up to [`VMAP_MAX_ALLOC`] pages come from the current
    /// CPU's vmap block (O(1) but for a new block); more take an area of
    /// their own. Release with [`Vmalloc::vm_unmap_ram`] and the same page
    /// count. A failure (no space, no descriptor, the page table refusing)
    /// leaves nothing mapped.
    ///
    /// [`Vmalloc::vm_unmap_ram`]: crate::Vmalloc::vm_unmap_ram
    #[track_caller]
    pub fn vm_map_ram(
        &self,
        pages: &[kmm_api::Pages],
        prot: kmm_api::PageProt,
    ) -> Result<VirtAddr, VmareaError> {
        let pfns = pages
            .iter()
            .flat_map(|p| (0..p.nr_pages()).map(|i| p.pfn().add(i)));
        let count = pfns.clone().count();
        if count == 0 {
            return Err(VmareaError::ZeroSize);
        }
        if !self.blocks.serves(count) {
            let flags = VmFlags::MAP_RAM | VmFlags::NO_GUARD;
            // SAFETY: each frame belongs to a block whose handle the
            // caller lends us for the call: it holds them.
            let addr = unsafe { self.map_frames(pfns, flags, prot) }?;
            self.nr_vm_map_ram.fetch_add(1, Relaxed);
            return Ok(addr);
        }
        let range = self
            .blocks
            .vb_alloc(count, &self.cpus, &self.areas, &self.table)?;
        for (i, pfn) in pfns.enumerate() {
            let at = VirtAddr::new(range.addr.as_usize() + i * PAGE_SIZE);
            // SAFETY: our caller holds `pfn`; the page is of the range just
            // carved for us, never mapped since its block's area was
            // purged.
            if let Err(cause) = unsafe { self.table.map(at, pfn, prot) } {
                self.unmap_pages(range.addr, i);
                self.blocks
                    .vb_abandon(range, count, &self.areas, &self.table);
                return Err(VmareaError::Page { cause });
            }
        }
        self.nr_vm_map_ram.fetch_add(1, Relaxed);
        Ok(range.addr)
    }

    /// Linux `vm_unmap_ram`: removes the mapping `vm_map_ram` made at
    /// `addr` of `count` pages, leaving the frames to their holder. The
    /// range is unmapped at once and flushed lazily. A count that is not
    /// the one mapped there ([`VmareaError::WrongCount`]), an address no
    /// `vm_map_ram` returned (interior, unaligned, unknown, of another
    /// kind) or a second unmap is an error and changes nothing.
    ///
    /// # Safety
    ///
    /// The caller made the mapping (or holds it from whoever did) and
    /// nothing uses it any more.
    pub unsafe fn vm_unmap_ram(&self, addr: VirtAddr, count: usize) -> Result<(), VmareaError> {
        if count == 0 {
            return Err(VmareaError::ZeroSize);
        }
        if !addr.is_aligned(PAGE_SIZE) {
            return Err(VmareaError::Misaligned { addr });
        }
        if !self.is_vmalloc_addr(addr) {
            return Err(VmareaError::OutOfRange { addr });
        }
        if let Some(claimed) = self.blocks.vb_claim(addr, count)? {
            self.unmap_pages(addr, claimed.count);
            self.blocks.vb_dirty(claimed, &self.areas, &self.table);
        } else {
            let area = self.areas.detach_map_ram(addr, count)?;
            self.unmap_and_release(area, count, false);
        }
        self.nr_vm_map_ram.fetch_sub(1, Relaxed);
        Ok(())
    }

    /// Unmaps `count` pages from `start`, deferring their flush (the
    /// block's purge, or `vm_unmap_aliases`, flushes them).
    fn unmap_pages(&self, start: VirtAddr, count: usize) {
        for i in 0..count {
            let at = VirtAddr::new(start.as_usize() + i * PAGE_SIZE);
            // SAFETY: a page of a block range we hold (claimed or just
            // carved), mapped by `vm_map_ram`.
            if let Ok((_, flush)) = unsafe { self.table.unmap(at) } {
                flush.defer();
            }
        }
    }

    /// Checks the vmap blocks (counts, live ranges, the block count) and
    /// then the area allocator; for tests and fuzzing.
    pub fn check(&self) -> Result<(), crate::Invariant> {
        self.blocks
            .check()
            .map_err(|what| crate::Invariant::VmapBlock { what })?;
        self.areas.check()
    }
}
