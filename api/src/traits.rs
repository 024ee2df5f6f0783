//! The contracts the layers meet through.
//!
//! Each trait says who calls it, in what context, and what an implementation
//! must never do. All take `&self` and are `Sync`: an implementation owns its
//! locking, so callers never hold a lock on an allocator's behalf.

use crate::sync::AtomicU32;
use crate::{
    AllocatorId, Error, GfpFlags, Order, OwnerWord, PageProt, Pages, Pfn, VirtAddr, PAGE_SIZE,
};
use core::ptr::NonNull;

/// Allocates and frees blocks of `2^order` physically contiguous frames
/// (Linux `alloc_pages` / `__free_pages`). Implemented by kmm-zones.
///
/// Called from any context the `gfp` allows: a request without
/// `__GFP_DIRECT_RECLAIM` may come from interrupt context, and then the
/// implementation must neither sleep nor call anything that may.
///
/// # Safety
///
/// Layers build on what this trait hands out (the slab carves objects out
/// of the frames and writes them), so an implementation promises that a
/// block [`FrameAllocator::alloc_frames`] returns is held by nobody else
/// until it comes back through [`FrameAllocator::free_frames`]: the handle
/// names the block's first frame and order exactly, carries
/// [`FrameAllocator::allocator_id`], and no block overlaps another that is
/// held.
#[allow(unsafe_code)] // declares a contract
pub unsafe trait FrameAllocator: Sync {
    /// Allocates `2^order` contiguous frames aligned to their size, honouring
    /// the zone and action modifiers of `gfp`.
    fn alloc_frames(&self, gfp: GfpFlags, order: Order) -> Result<Pages, Error>;

    /// Frees a block this allocator handed out. A handle of another
    /// allocator ([`Error::Foreign`]) or of a block a layer still claims
    /// with its owner word ([`Error::Owned`]) is refused: the block stays
    /// allocated and nothing changes.
    fn free_frames(&self, pages: Pages) -> Result<(), Error>;

    /// The identity every handle of this allocator carries (for
    /// [`Pages::from_raw`] when a layer keeps its blocks as raw frames).
    fn allocator_id(&self) -> AllocatorId;
}

/// The kernel's permanent linear mapping of low memory (Linux `page_address`,
/// `virt_to_page`), and the one offset between machine addresses and the
/// pointers this code dereferences.
///
/// # Safety
///
/// An implementation promises that for every frame it maps,
/// `pfn_to_ptr(pfn)` points at `PAGE_SIZE` bytes that are valid for reads
/// and writes for as long as the implementation lives, that those bytes are
/// that frame's contents (no two frames share a pointer), and that
/// `virt_to_pfn` is the exact inverse of `pfn_to_virt`.
#[allow(unsafe_code)] // declares a contract
pub unsafe trait DirectMap: Sync {
    /// The kernel virtual address where `pfn` is permanently mapped, or
    /// `None` if the frame lies outside the direct map (highmem).
    fn pfn_to_virt(&self, pfn: Pfn) -> Option<VirtAddr>;

    /// The frame a direct-map address lies in, or `None` for an address
    /// outside the direct map.
    fn virt_to_pfn(&self, addr: VirtAddr) -> Option<Pfn>;

    /// Where machine virtual address 0 lies in the address space this code
    /// runs in: 0 on hardware; the host window in the simulated machine.
    fn window_base(&self) -> usize {
        0
    }

    /// The pointer through which this code reaches machine address `addr`.
    fn virt_to_ptr(&self, addr: VirtAddr) -> *mut u8 {
        self.window_base().wrapping_add(addr.as_usize()) as *mut u8
    }

    /// The machine virtual address of a pointer obtained from
    /// [`DirectMap::virt_to_ptr`] (for reports and `virt_to_page`).
    fn ptr_to_virt(&self, ptr: *const u8) -> VirtAddr {
        VirtAddr::new((ptr as usize).wrapping_sub(self.window_base()))
    }

    /// A pointer to the first byte of a direct-mapped frame.
    fn pfn_to_ptr(&self, pfn: Pfn) -> Option<NonNull<u8>> {
        NonNull::new(self.virt_to_ptr(self.pfn_to_virt(pfn)?))
    }

    /// The frame a pointer into the direct map lies in.
    fn ptr_to_pfn(&self, ptr: *const u8) -> Option<Pfn> {
        self.virt_to_pfn(self.ptr_to_virt(ptr))
    }
}

/// One word per allocated frame that the layer holding the frame records
/// (Linux overlays `struct slab` on `struct page` for this). It is how
/// `kfree(p)` finds its slab in O(1), tells a slab object from a large
/// kmalloc, and how the page allocator knows a layer holds a block: a block
/// whose first frame carries a word other than [`OwnerWord::NONE`] is
/// refused by every free until its holder clears the word. Implemented by
/// kmm-zones' page descriptors.
///
/// # Safety
///
/// Layers dereference what they read back (a slab header's address), so an
/// implementation promises that [`PageOwner::owner`] returns, for a frame of
/// a held block, exactly the word last given to [`PageOwner::set_owner`]
/// for that frame since the block was handed out ([`OwnerWord::NONE`]
/// before any), and `None` for a frame that is not held.
#[allow(unsafe_code)] // declares a contract
pub unsafe trait PageOwner: Sync {
    /// The owner word of an allocated frame; `None` if the frame is free, not
    /// managed, or otherwise not allocated. Lock-free.
    fn owner(&self, pfn: Pfn) -> Option<OwnerWord>;

    /// Sets the owner word of an allocated frame. Refused with an error, and
    /// nothing changed, if the frame is not allocated.
    ///
    /// # Safety
    ///
    /// The caller holds the block `pfn` lies in, or nobody holds it (then
    /// the call is refused and changes nothing). A word it sets is trusted
    /// by whoever reads it back with the same tag: a [`crate::OwnerTag::Slab`]
    /// word must name a live slab header of the reading slab allocator for
    /// as long as it is set, and the other tags' payloads must be what
    /// their documentation says. Clearing a word ([`OwnerWord::NONE`]) is
    /// always within this contract for the frame's holder.
    #[allow(unsafe_code)]
    unsafe fn set_owner(&self, pfn: Pfn, word: OwnerWord) -> Result<(), Error>;

    /// Replaces the owner word of an allocated frame with `new` if it is
    /// `current`, in one atomic step: of callers racing to replace the same
    /// word, exactly one gets `Ok(true)` (how a layer makes "this is still
    /// mine, and now it is being freed" a single transition). `Ok(false)`,
    /// nothing changed, if the word is not `current`; refused with an
    /// error if the frame is not allocated.
    ///
    /// # Safety
    ///
    /// As for [`PageOwner::set_owner`], for `new`.
    #[allow(unsafe_code)]
    unsafe fn replace_owner(
        &self,
        pfn: Pfn,
        current: OwnerWord,
        new: OwnerWord,
    ) -> Result<bool, Error>;
}

/// The kernel half of the page tables: map, unmap and translate one page,
/// and flush the TLB. Consumed by vmarea (vmalloc, ioremap) and highmem
/// (pkmap, kmap_local). Callers serialise use of any one virtual page; the
/// implementation serialises its own table updates.
///
/// # Safety
///
/// Layers dereference the addresses they map, so an implementation promises
/// that after [`KernelPageTable::map`] returns `Ok` the page at `addr`
/// reaches exactly `pfn`'s bytes with `prot` until the matching `unmap`, and
/// that [`KernelPageTable::translate`] reports what is mapped.
#[allow(unsafe_code)] // declares a contract
pub unsafe trait KernelPageTable: Sync {
    /// Maps the page at `addr` to `pfn`. Allocating a page-table page may
    /// fail with [`Error::NoMemory`]; an existing mapping is refused with
    /// [`Error::AlreadyMapped`].
    ///
    /// # Safety
    ///
    /// The caller holds `pfn` (or it is device memory the caller may map),
    /// and `addr` is a page of the kernel range the caller owns: a mapping
    /// makes the frame reachable at a second address.
    #[allow(unsafe_code)]
    unsafe fn map(&self, addr: VirtAddr, pfn: Pfn, prot: PageProt) -> Result<(), Error>;

    /// Removes the mapping at `addr` and returns the frame it mapped with the
    /// TLB range that must be flushed before the frame is reused.
    ///
    /// # Safety
    ///
    /// The caller made the mapping at `addr` (or holds it from whoever did),
    /// and nothing still uses it: code reaching `addr` afterwards faults.
    #[allow(unsafe_code)]
    unsafe fn unmap(&self, addr: VirtAddr) -> Result<(Pfn, TlbFlush), Error>;

    /// The frame and protection mapped at `addr`, if any.
    fn translate(&self, addr: VirtAddr) -> Option<(Pfn, PageProt)>;

    /// Invalidates cached translations for `[start, end)` on every CPU.
    fn flush_tlb_range(&self, start: VirtAddr, end: VirtAddr);

    /// Invalidates the calling CPU's cached translation of the page at
    /// `addr` (Linux `flush_tlb_one_kernel`, one `invlpg`), for a page no
    /// other CPU reaches, such as its own kmap_local slots: there a flush
    /// of every CPU (an IPI to each on SMP) would be wasted. The default
    /// flushes the page on every CPU.
    #[inline]
    fn flush_tlb_one_kernel(&self, addr: VirtAddr) {
        let end = VirtAddr::new(addr.as_usize().saturating_add(PAGE_SIZE));
        self.flush_tlb_range(addr, end);
    }
}

/// A TLB range still to be flushed after an unmap: a forgotten flush is a
/// compile warning, not a stale mapping.
#[must_use = "stale TLB entries remain until this range is flushed"]
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct TlbFlush {
    start: VirtAddr,
    end: VirtAddr,
}

impl TlbFlush {
    /// The flush owed for `[start, end)`.
    pub const fn new(start: VirtAddr, end: VirtAddr) -> Self {
        Self { start, end }
    }
    /// The range owed.
    pub const fn range(&self) -> (VirtAddr, VirtAddr) {
        (self.start, self.end)
    }
    /// One flush covering both ranges (and whatever lies between).
    pub fn merge(self, other: TlbFlush) -> TlbFlush {
        TlbFlush {
            start: self.start.min(other.start),
            end: self.end.max(other.end),
        }
    }
    /// Flushes the range now.
    pub fn flush(self, table: &(impl KernelPageTable + ?Sized)) {
        table.flush_tlb_range(self.start, self.end);
    }
    /// Flushes the range on the calling CPU only, for a range no other CPU
    /// reaches (see [`KernelPageTable::flush_tlb_one_kernel`]): one local
    /// invalidation for a single page, else the whole range on every CPU.
    #[inline]
    pub fn flush_local(self, table: &(impl KernelPageTable + ?Sized)) {
        if self.end.as_usize().wrapping_sub(self.start.as_usize()) <= PAGE_SIZE {
            table.flush_tlb_one_kernel(self.start);
        } else {
            self.flush(table);
        }
    }
    /// Defers the flush: the caller takes responsibility (lazy purging
    /// batches many unmaps into one flush).
    pub fn defer(self) {}
}

/// What the embedding kernel provides: CPU identity, interrupt masking, and
/// optional hooks to wait, wake and reclaim.
///
/// Called from every context, including interrupt context for `cpu_id`,
/// `irq_save` and `irq_restore`, which must therefore never sleep.
pub trait Platform: Sync {
    /// Number of CPUs; per-CPU structures are sized by it.
    fn nr_cpus(&self) -> usize;

    /// The current CPU, below `nr_cpus()`. Without preemption disabled the
    /// caller may be migrated right after reading it, so per-CPU structures
    /// reached through it must stay correct when used from another CPU.
    fn cpu_id(&self) -> usize;

    /// Disables local interrupts and returns the previous state, for locks
    /// that atomic allocations can also take. The default does nothing (no
    /// interrupts).
    fn irq_save(&self) -> usize {
        0
    }

    /// Restores the interrupt state returned by [`Platform::irq_save`].
    fn irq_restore(&self, _flags: usize) {}

    /// Pauses for progress elsewhere (an allocation that must not fail
    /// retries after it). Only called where `gfp` allows blocking. It
    /// names no condition, so a [`Platform::wake_all`] between the caller's
    /// check and this call is lost: only callers that retry whatever
    /// happened (a `__GFP_NOFAIL` allocation loop) may use it; a wait for
    /// a condition uses [`Platform::wait_on`]. The default spins once.
    fn wait(&self) {
        core::hint::spin_loop();
    }

    /// Wakes every waiter of [`Platform::wait`].
    fn wake_all(&self) {}

    /// Sleeps while `*word == seen` (a futex wait): the race-free way to
    /// wait for a condition another context changes (a full kmap pool).
    ///
    /// The protocol: the waiter reads `word` while it holds the lock that
    /// guards its condition, finds the condition unmet, releases the lock
    /// and calls `wait_on(word, value read)`; whoever changes the
    /// condition also changes `word` (under that lock) and then calls
    /// [`Platform::wake_on`]. An implementation compares `*word` with
    /// `seen` and goes to sleep as one step with respect to `wake_on` of
    /// the same word, so a change made after the waiter read the word is
    /// never lost: either the comparison sees it and the call returns at
    /// once, or the sleeper is woken by the `wake_on` that follows it. The
    /// call may also return spuriously; callers recheck their condition in
    /// a loop.
    ///
    /// Only called where the caller may sleep: never from interrupt
    /// context, with a kmm lock held, or with interrupts disabled. The
    /// default spins once and returns (a busy wait, correct because callers
    /// loop); a kernel parks the thread on a wait queue keyed by the word's
    /// address.
    fn wait_on(&self, word: &AtomicU32, seen: u32) {
        let _ = (word, seen);
        core::hint::spin_loop();
    }

    /// Wakes every context sleeping in [`Platform::wait_on`] on `word`.
    /// Called after `word` was changed; must not sleep (it may be called
    /// from any context that unmaps a kmap). The default does nothing,
    /// which suits the default `wait_on`.
    fn wake_on(&self, word: &AtomicU32) {
        let _ = word;
    }

    /// Frees memory under pressure (page cache, swap), honouring `__GFP_IO`
    /// and `__GFP_FS`; returns the pages freed. Only called where `gfp`
    /// allows blocking. The default frees nothing.
    fn reclaim(&self, _gfp: GfpFlags, _order: Order) -> usize {
        0
    }

    /// Zeroes a frame that lies outside the direct map (for `__GFP_ZERO` on
    /// highmem). The default refuses, and the allocation then fails cleanly.
    ///
    /// # Safety
    ///
    /// The caller holds the frame (the page allocator calls this only for
    /// a block it is handing out): nothing else reads or writes it.
    #[allow(unsafe_code)]
    unsafe fn zero_frame(&self, pfn: Pfn) -> Result<(), Error> {
        Err(Error::PfnOutOfRange { pfn })
    }
}

/// A [`Platform`] on which a caller can pin itself to its CPU (Linux
/// `get_cpu` / `put_cpu`), so that per-CPU data reached inside the pinned
/// section needs no atomic read-modify-write.
///
/// # Safety
///
/// An implementation promises that a CPU id returned by
/// [`PreemptControl::get_cpu`] is below `nr_cpus()` and is held exclusively
/// until the matching [`PreemptControl::put_cpu`]: no other execution
/// context that calls into kmm (another thread, an interrupt handler) is
/// handed the same id in between, and no [`PreemptControl::on_cpu`] work
/// for that id runs in between; and that whatever one holder of an id did
/// happens before the next holder's section begins (as a scheduler's
/// barriers order a task's accesses across a migration), since per-CPU
/// data is read and written there with plain accesses. A kernel keeps the promise by disabling
/// preemption and local interrupts; a hosted embedder by giving each thread
/// its own id, or by an uncontended lock per id.
#[allow(unsafe_code)] // declares a contract
pub unsafe trait PreemptControl: Platform {
    /// Pins the caller to its current CPU and returns that CPU's id.
    fn get_cpu(&self) -> usize;

    /// Ends the section begun by the [`PreemptControl::get_cpu`] that
    /// returned `cpu`.
    fn put_cpu(&self, cpu: usize);

    /// Runs `work` as CPU `cpu`: exclusive with every section pinned to
    /// that CPU, as if the caller had pinned it (Linux queues such work
    /// with `schedule_work_on` and waits, or sends an IPI to a CPU that
    /// pins with interrupts off). Returns whether `work` ran: a platform
    /// that cannot reach that CPU now (a hosted thread owning it is alive
    /// and cannot be interrupted) returns `false` without running it.
    ///
    /// Called with no CPU pinned and no kmm lock held (per-CPU caches use
    /// it to drain other CPUs, Linux `flush_all`). The default reaches
    /// only the caller's own CPU.
    fn on_cpu(&self, cpu: usize, work: &mut dyn FnMut()) -> bool {
        let mine = self.get_cpu();
        let here = mine == cpu;
        if here {
            work();
        }
        self.put_cpu(mine);
        here
    }
}

/// Interrupts disabled for the guard's lifetime (Linux `local_irq_save` /
/// `local_irq_restore`).
pub struct IrqGuard<'a, P: Platform + ?Sized> {
    platform: &'a P,
    flags: usize,
}

impl<'a, P: Platform + ?Sized> IrqGuard<'a, P> {
    /// Disables interrupts until the guard is dropped.
    pub fn new(platform: &'a P) -> Self {
        Self {
            flags: platform.irq_save(),
            platform,
        }
    }
}

impl<P: Platform + ?Sized> Drop for IrqGuard<'_, P> {
    fn drop(&mut self) {
        self.platform.irq_restore(self.flags);
    }
}

/// A cache that can give memory back under pressure (Linux `struct
/// shrinker`). Zones call registered shrinkers from the reclaim path, only
/// for requests that may block.
pub trait Shrinker: Sync {
    /// Pages that [`Shrinker::scan_objects`] could free now (an estimate).
    fn count_objects(&self) -> usize;

    /// Frees up to `nr_to_scan` pages, honouring `__GFP_IO` / `__GFP_FS` in
    /// `gfp`; returns the pages freed.
    fn scan_objects(&self, gfp: GfpFlags, nr_to_scan: usize) -> usize;
}

// A reference to an implementation is an implementation, so layers can hold
// either an owned value or a borrow of one shared with other layers.

// SAFETY: forwards every method to `T`, which upholds the contract itself.
#[allow(unsafe_code)]
unsafe impl<T: FrameAllocator + ?Sized> FrameAllocator for &T {
    fn alloc_frames(&self, gfp: GfpFlags, order: Order) -> Result<Pages, Error> {
        (**self).alloc_frames(gfp, order)
    }
    fn free_frames(&self, pages: Pages) -> Result<(), Error> {
        (**self).free_frames(pages)
    }
    fn allocator_id(&self) -> AllocatorId {
        (**self).allocator_id()
    }
}

// SAFETY: forwards every method to `T`, which upholds the contract itself.
#[allow(unsafe_code)]
unsafe impl<T: DirectMap + ?Sized> DirectMap for &T {
    fn pfn_to_virt(&self, pfn: Pfn) -> Option<VirtAddr> {
        (**self).pfn_to_virt(pfn)
    }
    fn virt_to_pfn(&self, addr: VirtAddr) -> Option<Pfn> {
        (**self).virt_to_pfn(addr)
    }
    fn window_base(&self) -> usize {
        (**self).window_base()
    }
    // Forwarded too, so an implementation's own pointer derivation (e.g.
    // one that keeps a buffer's provenance) is not replaced by the default.
    fn virt_to_ptr(&self, addr: VirtAddr) -> *mut u8 {
        (**self).virt_to_ptr(addr)
    }
    fn ptr_to_virt(&self, ptr: *const u8) -> VirtAddr {
        (**self).ptr_to_virt(ptr)
    }
}

// SAFETY: forwards both methods to `T`, which upholds the contract itself.
#[allow(unsafe_code)]
unsafe impl<T: PageOwner + ?Sized> PageOwner for &T {
    fn owner(&self, pfn: Pfn) -> Option<OwnerWord> {
        (**self).owner(pfn)
    }
    unsafe fn set_owner(&self, pfn: Pfn, word: OwnerWord) -> Result<(), Error> {
        // SAFETY: our caller's contract is `T`'s.
        unsafe { (**self).set_owner(pfn, word) }
    }
    unsafe fn replace_owner(
        &self,
        pfn: Pfn,
        current: OwnerWord,
        new: OwnerWord,
    ) -> Result<bool, Error> {
        // SAFETY: our caller's contract is `T`'s.
        unsafe { (**self).replace_owner(pfn, current, new) }
    }
}

// SAFETY: forwards every method to `T`, which upholds the contract itself.
#[allow(unsafe_code)]
unsafe impl<T: KernelPageTable + ?Sized> KernelPageTable for &T {
    #[inline]
    unsafe fn map(&self, addr: VirtAddr, pfn: Pfn, prot: PageProt) -> Result<(), Error> {
        // SAFETY: our caller's contract is `T`'s.
        unsafe { (**self).map(addr, pfn, prot) }
    }
    #[inline]
    unsafe fn unmap(&self, addr: VirtAddr) -> Result<(Pfn, TlbFlush), Error> {
        // SAFETY: our caller's contract is `T`'s.
        unsafe { (**self).unmap(addr) }
    }
    fn translate(&self, addr: VirtAddr) -> Option<(Pfn, PageProt)> {
        (**self).translate(addr)
    }
    #[inline]
    fn flush_tlb_range(&self, start: VirtAddr, end: VirtAddr) {
        (**self).flush_tlb_range(start, end)
    }
    #[inline]
    fn flush_tlb_one_kernel(&self, addr: VirtAddr) {
        (**self).flush_tlb_one_kernel(addr)
    }
}

// SAFETY: forwards both methods to `T`, which upholds the contract itself.
#[allow(unsafe_code)]
unsafe impl<T: PreemptControl + ?Sized> PreemptControl for &T {
    #[inline]
    fn get_cpu(&self) -> usize {
        (**self).get_cpu()
    }
    #[inline]
    fn put_cpu(&self, cpu: usize) {
        (**self).put_cpu(cpu)
    }
    fn on_cpu(&self, cpu: usize, work: &mut dyn FnMut()) -> bool {
        (**self).on_cpu(cpu, work)
    }
}

impl<T: Platform + ?Sized> Platform for &T {
    fn nr_cpus(&self) -> usize {
        (**self).nr_cpus()
    }
    fn cpu_id(&self) -> usize {
        (**self).cpu_id()
    }
    #[inline]
    fn irq_save(&self) -> usize {
        (**self).irq_save()
    }
    #[inline]
    fn irq_restore(&self, flags: usize) {
        (**self).irq_restore(flags)
    }
    fn wait(&self) {
        (**self).wait()
    }
    fn wake_all(&self) {
        (**self).wake_all()
    }
    fn wait_on(&self, word: &AtomicU32, seen: u32) {
        (**self).wait_on(word, seen)
    }
    fn wake_on(&self, word: &AtomicU32) {
        (**self).wake_on(word)
    }
    fn reclaim(&self, gfp: GfpFlags, order: Order) -> usize {
        (**self).reclaim(gfp, order)
    }
    #[allow(unsafe_code)]
    unsafe fn zero_frame(&self, pfn: Pfn) -> Result<(), Error> {
        // SAFETY: our caller's contract is `T`'s.
        unsafe { (**self).zero_frame(pfn) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use core::sync::atomic::{AtomicUsize, Ordering::Relaxed};

    /// Records the flushes asked of it; maps nothing.
    #[derive(Default)]
    struct FlushLog {
        one: AtomicUsize,
        ranges: AtomicUsize,
    }

    // SAFETY: it maps nothing, so no address it reports is dereferenced.
    #[allow(unsafe_code)]
    unsafe impl KernelPageTable for FlushLog {
        unsafe fn map(&self, addr: VirtAddr, _: Pfn, _: PageProt) -> Result<(), Error> {
            Err(Error::BadVirtAddr { addr })
        }
        unsafe fn unmap(&self, addr: VirtAddr) -> Result<(Pfn, TlbFlush), Error> {
            Err(Error::NotMapped { addr })
        }
        fn translate(&self, _: VirtAddr) -> Option<(Pfn, PageProt)> {
            None
        }
        fn flush_tlb_range(&self, _: VirtAddr, _: VirtAddr) {
            self.ranges.fetch_add(1, Relaxed);
        }
        fn flush_tlb_one_kernel(&self, _: VirtAddr) {
            self.one.fetch_add(1, Relaxed);
        }
    }

    #[test]
    fn a_local_flush_of_one_page_invalidates_it_on_this_cpu_and_a_longer_range_everywhere() {
        let log = FlushLog::default();
        let page = VirtAddr::new(0xffc0_0000);
        let end = VirtAddr::new(0xffc0_0000 + PAGE_SIZE);
        TlbFlush::new(page, end).flush_local(&log);
        assert_eq!((log.one.load(Relaxed), log.ranges.load(Relaxed)), (1, 0));
        let two = VirtAddr::new(0xffc0_0000 + 2 * PAGE_SIZE);
        TlbFlush::new(page, two).flush_local(&log);
        assert_eq!((log.one.load(Relaxed), log.ranges.load(Relaxed)), (1, 1));
    }
}
