//! Host test doubles (feature `testing`): an [`ObjectSource`] over one
//! fixed buffer that can be told to fail, a [`KernelPageTable`] that
//! only records TLB flushes, one with a modelled TLB, and a flat one for
//! benchmarks; frames, memory and CPUs. Shared by the tests, benches and
//! fuzz target.

use core::ptr::NonNull;
use kmm_api::{
    Error, GfpFlags, KernelPageTable, ObjectSource, Order, PageProt, Pfn, TlbFlush, VirtAddr,
};
use std::sync::Mutex;
use std::vec::Vec;

/// An object source carving fixed-size objects out of one buffer
/// allocated up front (pointers keep the buffer's provenance, for miri).
pub struct BufferSource {
    state: Mutex<BufferState>,
    object_size: usize,
    objects: usize,
}

struct BufferState {
    /// The buffer as `u64`s, so every object is 8-byte aligned.
    base: NonNull<u64>,
    /// Objects not handed out, as indices.
    free: Vec<usize>,
    /// Which objects are handed out.
    live: Vec<bool>,
    /// Successful allocations left before every further one fails.
    fail_after: Option<usize>,
}

// SAFETY: the buffer is owned by the source and every access to the
// bookkeeping goes through the mutex.
unsafe impl Send for BufferState {}

impl BufferSource {
    /// `objects` objects of `object_size` bytes (rounded up to 8).
    pub fn new(object_size: usize, objects: usize) -> Self {
        let words = object_size.div_ceil(8);
        let buffer = std::vec![0u64; words * objects].into_boxed_slice();
        let base = NonNull::from(std::boxed::Box::leak(buffer)).cast::<u64>();
        BufferSource {
            state: Mutex::new(BufferState {
                base,
                free: (0..objects).rev().collect(),
                live: std::vec![false; objects],
                fail_after: None,
            }),
            object_size: words * 8,
            objects,
        }
    }

    /// Page-sized objects, as a slab cache of 4 KiB objects gives.
    pub fn pages(objects: usize) -> Self {
        Self::new(kmm_api::PAGE_SIZE, objects)
    }

    /// Lets `successes` more allocations succeed, then fails every one
    /// (`None`: never fail).
    pub fn fail_after(&self, successes: Option<usize>) {
        self.lock().fail_after = successes;
    }

    /// Objects handed out now.
    pub fn in_use(&self) -> usize {
        let state = self.lock();
        self.objects - state.free.len()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BufferState> {
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

impl Drop for BufferSource {
    fn drop(&mut self) {
        let state = self.lock();
        let words = self.object_size / 8 * self.objects;
        let slice = core::ptr::slice_from_raw_parts_mut(state.base.as_ptr(), words);
        // SAFETY: `base` came from `Box::leak` of exactly this slice in
        // `new`, and the source is going away: nobody uses it any more.
        drop(unsafe { std::boxed::Box::from_raw(slice) });
    }
}

// SAFETY: each index is on the free list or marked live, never both, so an
// object is handed to one caller at a time; objects are disjoint
// `object_size`-byte pieces of the buffer, 8-byte aligned, and the source
// never touches their contents.
unsafe impl ObjectSource for BufferSource {
    fn object_size(&self) -> usize {
        self.object_size
    }

    fn object_align(&self) -> usize {
        8
    }

    fn alloc_object(&self, _gfp: GfpFlags) -> Result<NonNull<u8>, Error> {
        let mut state = self.lock();
        match state.fail_after {
            Some(0) => return Err(Error::NoMemory { order: Order::ZERO }),
            Some(n) => state.fail_after = Some(n - 1),
            None => {}
        }
        let index = state
            .free
            .pop()
            .ok_or(Error::NoMemory { order: Order::ZERO })?;
        state.live[index] = true;
        // SAFETY: `index < objects`, so the object lies inside the buffer.
        let object = unsafe { state.base.as_ptr().add(index * self.object_size / 8) };
        NonNull::new(object.cast::<u8>()).ok_or(Error::NoMemory { order: Order::ZERO })
    }

    unsafe fn free_object(&self, obj: NonNull<u8>) -> Result<(), Error> {
        let mut state = self.lock();
        let offset = (obj.as_ptr() as usize).wrapping_sub(state.base.as_ptr() as usize);
        let index = offset / self.object_size;
        let foreign = Error::BadVirtAddr {
            addr: VirtAddr::new(obj.as_ptr() as usize),
        };
        if offset % self.object_size != 0 || index >= self.objects || !state.live[index] {
            return Err(foreign);
        }
        state.live[index] = false;
        state.free.push(index);
        Ok(())
    }
}

/// A page table that maps nothing and records every TLB flush asked of it.
#[derive(Default)]
pub struct RecordingTlb {
    flushes: Mutex<Vec<TlbFlush>>,
}

impl RecordingTlb {
    /// The flushes so far, in order.
    pub fn flushes(&self) -> Vec<TlbFlush> {
        self.flushes
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone()
    }

    /// How many flushes so far.
    pub fn count(&self) -> usize {
        self.flushes().len()
    }
}

// SAFETY: `map` never succeeds and `translate` reports nothing mapped,
// which is exactly what this table holds.
unsafe impl KernelPageTable for RecordingTlb {
    unsafe fn map(&self, addr: VirtAddr, _pfn: Pfn, _prot: PageProt) -> Result<(), Error> {
        Err(Error::BadVirtAddr { addr })
    }

    unsafe fn unmap(&self, addr: VirtAddr) -> Result<(Pfn, TlbFlush), Error> {
        Err(Error::NotMapped { addr })
    }

    fn translate(&self, _addr: VirtAddr) -> Option<(Pfn, PageProt)> {
        None
    }

    fn flush_tlb_range(&self, start: VirtAddr, end: VirtAddr) {
        self.flushes
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .push(TlbFlush::new(start, end));
    }
}

/// A frame allocator over `frames` numbered frames that keeps owner words
/// and the GFP flags of every request, and can be told to fail.
pub struct TestFrames {
    state: Mutex<FrameState>,
    id: kmm_api::AllocatorId,
}

struct FrameState {
    /// Owner word of each held frame; `None` for a free one.
    held: Vec<Option<kmm_api::OwnerWord>>,
    /// The free frames' indices as a stack: a fresh allocator hands out
    /// 0x100, 0x101, ... in order, and the last frame freed goes next.
    /// O(1) either way, as a benchmark holding 10^5 frames needs.
    free: Vec<usize>,
    /// Frames handed out since the last `fail_after`.
    successes_left: Option<usize>,
    /// The GFP flags of the last request.
    last_gfp: GfpFlags,
}

impl TestFrames {
    /// `frames` free frames, numbered from 0x100 (so no frame is pfn 0).
    pub fn new(frames: usize) -> Self {
        TestFrames {
            state: Mutex::new(FrameState {
                held: std::vec![None; frames],
                free: (0..frames).rev().collect(),
                successes_left: None,
                last_gfp: GfpFlags::empty(),
            }),
            id: kmm_api::AllocatorId::new().expect("allocator ids"),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, FrameState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Lets `successes` more allocations succeed, then fails each one.
    pub fn fail_after(&self, successes: Option<usize>) {
        self.lock().successes_left = successes;
    }

    /// Frames held now.
    pub fn in_use(&self) -> usize {
        let state = self.lock();
        state.held.len() - state.free.len()
    }

    /// The GFP flags of the last request.
    pub fn last_gfp(&self) -> GfpFlags {
        self.lock().last_gfp
    }

    fn index(pfn: Pfn) -> usize {
        pfn.as_usize().wrapping_sub(0x100)
    }
}

// SAFETY: each free frame is handed out once, as an order-0 handle (the
// only order these tests ask for), until it comes back.
unsafe impl kmm_api::FrameAllocator for TestFrames {
    fn alloc_frames(&self, gfp: GfpFlags, order: Order) -> Result<kmm_api::Pages, Error> {
        let mut state = self.lock();
        state.last_gfp = gfp;
        if order != Order::ZERO || state.successes_left == Some(0) {
            return Err(Error::NoMemory { order });
        }
        let i = state.free.pop().ok_or(Error::NoMemory { order })?;
        state.held[i] = Some(kmm_api::OwnerWord::NONE);
        if let Some(left) = state.successes_left.as_mut() {
            *left -= 1;
        }
        // SAFETY: the frame was free and is now held by this handle alone.
        Ok(unsafe { kmm_api::Pages::from_raw(Pfn::new(0x100 + i), order, self.id) })
    }

    fn free_frames(&self, pages: kmm_api::Pages) -> Result<(), Error> {
        let pfn = pages.pfn();
        if pages.allocator() != self.id {
            return Err(Error::Foreign { pfn });
        }
        let mut state = self.lock();
        match state.held.get(Self::index(pfn)).copied().flatten() {
            None => Err(Error::DoubleFree { pfn }),
            Some(word) if !word.is_none() => Err(Error::Owned { pfn }),
            Some(_) => {
                state.held[Self::index(pfn)] = None;
                state.free.push(Self::index(pfn));
                Ok(())
            }
        }
    }

    fn allocator_id(&self) -> kmm_api::AllocatorId {
        self.id
    }
}

// SAFETY: the word of a held frame is exactly the last one set.
unsafe impl kmm_api::PageOwner for TestFrames {
    fn owner(&self, pfn: Pfn) -> Option<kmm_api::OwnerWord> {
        self.lock().held.get(Self::index(pfn)).copied().flatten()
    }

    unsafe fn set_owner(&self, pfn: Pfn, word: kmm_api::OwnerWord) -> Result<(), Error> {
        let mut state = self.lock();
        match state.held.get_mut(Self::index(pfn)) {
            Some(Some(held)) => {
                *held = word;
                Ok(())
            }
            _ => Err(Error::NotAllocated { pfn }),
        }
    }

    unsafe fn replace_owner(
        &self,
        pfn: Pfn,
        current: kmm_api::OwnerWord,
        new: kmm_api::OwnerWord,
    ) -> Result<bool, Error> {
        let mut state = self.lock();
        match state.held.get_mut(Self::index(pfn)) {
            Some(Some(held)) if *held == current => {
                *held = new;
                Ok(true)
            }
            Some(Some(_)) => Ok(false),
            _ => Err(Error::NotAllocated { pfn }),
        }
    }
}

/// A kernel page table kept in a map, with a modelled TLB: an unmapped
/// page stays stale until a flush covers it, and a map over a stale page
/// is refused (as the simulated machine does). Can be told to fail maps
/// (as running out of page-table pages would).
#[derive(Default)]
pub struct TestTable {
    state: Mutex<TableState>,
}

#[derive(Default)]
struct TableState {
    mapped: std::collections::BTreeMap<usize, (Pfn, PageProt)>,
    stale: std::collections::BTreeSet<usize>,
    flushes: usize,
    maps_left: Option<usize>,
}

impl TestTable {
    fn lock(&self) -> std::sync::MutexGuard<'_, TableState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Lets `maps` more maps succeed, then refuses each one.
    pub fn fail_after(&self, maps: Option<usize>) {
        self.lock().maps_left = maps;
    }

    /// Pages mapped now.
    pub fn mapped(&self) -> usize {
        self.lock().mapped.len()
    }

    /// Pages unmapped but not yet flushed.
    pub fn stale(&self) -> usize {
        self.lock().stale.len()
    }

    /// Flushes so far.
    pub fn flushes(&self) -> usize {
        self.lock().flushes
    }
}

// SAFETY: `translate` reports exactly what `map` entered and `unmap` has
// not removed; no memory is reached through it.
unsafe impl KernelPageTable for TestTable {
    unsafe fn map(&self, addr: VirtAddr, pfn: Pfn, prot: PageProt) -> Result<(), Error> {
        let mut state = self.lock();
        if state.maps_left == Some(0) {
            return Err(Error::NoMemory { order: Order::ZERO });
        }
        if state.stale.contains(&addr.as_usize()) {
            return Err(Error::StaleTlb { addr });
        }
        if state.mapped.contains_key(&addr.as_usize()) {
            return Err(Error::AlreadyMapped { addr });
        }
        if let Some(left) = state.maps_left.as_mut() {
            *left -= 1;
        }
        state.mapped.insert(addr.as_usize(), (pfn, prot));
        Ok(())
    }

    unsafe fn unmap(&self, addr: VirtAddr) -> Result<(Pfn, TlbFlush), Error> {
        let mut state = self.lock();
        let (pfn, _) = state
            .mapped
            .remove(&addr.as_usize())
            .ok_or(Error::NotMapped { addr })?;
        state.stale.insert(addr.as_usize());
        let end = VirtAddr::new(addr.as_usize() + kmm_api::PAGE_SIZE);
        Ok((pfn, TlbFlush::new(addr, end)))
    }

    fn translate(&self, addr: VirtAddr) -> Option<(Pfn, PageProt)> {
        let page = addr.align_down(kmm_api::PAGE_SIZE).as_usize();
        self.lock().mapped.get(&page).copied()
    }

    fn flush_tlb_range(&self, start: VirtAddr, end: VirtAddr) {
        let mut state = self.lock();
        state.flushes += 1;
        let flushed: Vec<usize> = state
            .stale
            .range(start.as_usize()..end.as_usize())
            .copied()
            .collect();
        for page in flushed {
            state.stale.remove(&page);
        }
    }
}

/// A kernel page table as one flat array of entries over a range, as a
/// last-level page table is: `map` and `unmap` are one atomic each on the
/// page's entry, and a flush is only counted. It records every mapping a
/// real table would, with no system call, lock or map lookup (and no TLB
/// model, which [`TestTable`] has): for benchmarks, where those would
/// outweigh the allocator measured.
pub struct ArrayTable {
    start: usize,
    /// One entry per page: `(pfn + 1) << 8 | prot`, 0 for none.
    entries: Vec<core::sync::atomic::AtomicUsize>,
    flushes: core::sync::atomic::AtomicUsize,
}

/// Bits of an [`ArrayTable`] entry below its frame number.
const PROT_BITS: u32 = 8;

impl ArrayTable {
    /// A table of `pages` entries covering the pages from `start`.
    pub fn new(start: VirtAddr, pages: usize) -> Self {
        ArrayTable {
            start: start.as_usize(),
            entries: (0..pages)
                .map(|_| core::sync::atomic::AtomicUsize::new(0))
                .collect(),
            flushes: core::sync::atomic::AtomicUsize::new(0),
        }
    }

    /// Pages mapped now (O(entries)).
    pub fn mapped(&self) -> usize {
        use core::sync::atomic::Ordering::Relaxed;
        self.entries.iter().filter(|e| e.load(Relaxed) != 0).count()
    }

    /// Flushes so far.
    pub fn flushes(&self) -> usize {
        self.flushes.load(core::sync::atomic::Ordering::Relaxed)
    }

    fn entry(&self, addr: VirtAddr) -> Option<&core::sync::atomic::AtomicUsize> {
        let page = addr.as_usize().wrapping_sub(self.start) / kmm_api::PAGE_SIZE;
        self.entries.get(page)
    }
}

// SAFETY: `translate` reports exactly what `map` entered and `unmap` has
// not removed; no memory is reached through it.
unsafe impl KernelPageTable for ArrayTable {
    unsafe fn map(&self, addr: VirtAddr, pfn: Pfn, prot: PageProt) -> Result<(), Error> {
        use core::sync::atomic::Ordering::Relaxed;
        let entry = self.entry(addr).ok_or(Error::BadVirtAddr { addr })?;
        let pte = (pfn.as_usize() + 1) << PROT_BITS | usize::from(prot.bits());
        entry
            .compare_exchange(0, pte, Relaxed, Relaxed)
            .map(drop)
            .map_err(|_| Error::AlreadyMapped { addr })
    }

    unsafe fn unmap(&self, addr: VirtAddr) -> Result<(Pfn, TlbFlush), Error> {
        let entry = self.entry(addr).ok_or(Error::NotMapped { addr })?;
        match entry.swap(0, core::sync::atomic::Ordering::Relaxed) {
            0 => Err(Error::NotMapped { addr }),
            pte => {
                let end = VirtAddr::new(addr.as_usize() + kmm_api::PAGE_SIZE);
                Ok((Pfn::new((pte >> PROT_BITS) - 1), TlbFlush::new(addr, end)))
            }
        }
    }

    fn translate(&self, addr: VirtAddr) -> Option<(Pfn, PageProt)> {
        match self
            .entry(addr)?
            .load(core::sync::atomic::Ordering::Relaxed)
        {
            0 => None,
            pte => Some((
                Pfn::new((pte >> PROT_BITS) - 1),
                PageProt::from_bits_truncate(pte as u8),
            )),
        }
    }

    fn flush_tlb_range(&self, _start: VirtAddr, _end: VirtAddr) {
        self.flushes
            .fetch_add(1, core::sync::atomic::Ordering::Relaxed);
    }
}

/// The kernel's virtual memory from `start`, as a host buffer: a
/// [`kmm_api::DirectMap`] whose `virt_to_ptr` reaches any address of the
/// range (what `vfree_atomic` writes its link through).
pub struct TestMemory {
    base: NonNull<u64>,
    start: usize,
    bytes: usize,
}

// SAFETY: plain memory owned by the value; writers are the tests, through
// pointers they are handed.
unsafe impl Send for TestMemory {}
// SAFETY: as above.
unsafe impl Sync for TestMemory {}

impl TestMemory {
    /// `bytes` of memory standing for the addresses from `start`.
    pub fn new(start: VirtAddr, bytes: usize) -> Self {
        let buffer = std::vec![0u64; bytes.div_ceil(8)].into_boxed_slice();
        TestMemory {
            base: NonNull::from(std::boxed::Box::leak(buffer)).cast(),
            start: start.as_usize(),
            bytes,
        }
    }
}

impl Drop for TestMemory {
    fn drop(&mut self) {
        let slice = core::ptr::slice_from_raw_parts_mut(self.base.as_ptr(), self.bytes.div_ceil(8));
        // SAFETY: `base` came from `Box::leak` of exactly this slice in
        // `new`, and the memory is going away: nobody uses it any more.
        drop(unsafe { std::boxed::Box::from_raw(slice) });
    }
}

// SAFETY: every address of the range maps to its own byte of the buffer,
// which lives as long as the value; outside the range there is no frame.
unsafe impl kmm_api::DirectMap for TestMemory {
    fn pfn_to_virt(&self, _pfn: Pfn) -> Option<VirtAddr> {
        None
    }

    fn virt_to_pfn(&self, _addr: VirtAddr) -> Option<Pfn> {
        None
    }

    fn virt_to_ptr(&self, addr: VirtAddr) -> *mut u8 {
        let offset = addr.as_usize().wrapping_sub(self.start);
        assert!(offset < self.bytes, "{addr} outside the test memory");
        self.base.as_ptr().cast::<u8>().wrapping_add(offset)
    }

    fn ptr_to_virt(&self, ptr: *const u8) -> VirtAddr {
        VirtAddr::new((ptr as usize).wrapping_sub(self.base.as_ptr() as usize) + self.start)
    }
}

std::thread_local! {
    /// The CPU the calling thread runs on, for [`TestCpus`].
    static CURRENT_CPU: core::cell::Cell<usize> = const { core::cell::Cell::new(0) };
}

/// CPUs for the per-CPU vmap blocks: each thread says which CPU it runs
/// on ([`TestCpus::run_on`], which is how a test migrates), and a CPU id
/// is held exclusively between `get_cpu` and `put_cpu` by a flag per CPU,
/// as the [`kmm_api::PreemptControl`] contract demands of a hosted
/// embedder.
pub struct TestCpus {
    pinned: Vec<std::sync::atomic::AtomicBool>,
    pins: std::sync::atomic::AtomicUsize,
}

impl TestCpus {
    /// `nr_cpus` CPUs, none pinned.
    pub fn new(nr_cpus: usize) -> Self {
        TestCpus {
            pinned: (0..nr_cpus)
                .map(|_| std::sync::atomic::AtomicBool::new(false))
                .collect(),
            pins: std::sync::atomic::AtomicUsize::new(0),
        }
    }

    /// The calling thread runs on `cpu` from now on (a migration).
    pub fn run_on(cpu: usize) {
        CURRENT_CPU.with(|c| c.set(cpu));
    }

    /// `get_cpu` calls so far.
    pub fn pins(&self) -> usize {
        self.pins.load(std::sync::atomic::Ordering::Relaxed)
    }
}

impl kmm_api::Platform for TestCpus {
    fn nr_cpus(&self) -> usize {
        self.pinned.len()
    }
    fn cpu_id(&self) -> usize {
        CURRENT_CPU.with(core::cell::Cell::get) % self.pinned.len().max(1)
    }
}

// SAFETY: an id is handed out only while its flag is held (taken by
// compare-and-swap, released by `put_cpu`), and ids are below `nr_cpus`.
unsafe impl kmm_api::PreemptControl for TestCpus {
    fn get_cpu(&self) -> usize {
        use std::sync::atomic::Ordering::{Acquire, Relaxed};
        let cpu = kmm_api::Platform::cpu_id(self);
        while self.pinned[cpu]
            .compare_exchange(false, true, Acquire, Relaxed)
            .is_err()
        {
            std::thread::yield_now();
        }
        self.pins.fetch_add(1, Relaxed);
        cpu
    }
    fn put_cpu(&self, cpu: usize) {
        self.pinned[cpu].store(false, std::sync::atomic::Ordering::Release);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn array_table_maps_a_page_once_and_unmap_returns_its_frame_and_flush() {
        let start = VirtAddr::new(0xf880_0000);
        let table = ArrayTable::new(start, 4);
        let page = VirtAddr::new(start.as_usize() + kmm_api::PAGE_SIZE);
        let (pfn, prot) = (Pfn::new(0x1234), PageProt::KERNEL_NOCACHE);
        // SAFETY: nothing is reached through this table.
        unsafe {
            table.map(page, pfn, prot).unwrap();
            assert_eq!(
                table.map(page, pfn, prot),
                Err(Error::AlreadyMapped { addr: page })
            );
            let outside = VirtAddr::new(start.as_usize() + 4 * kmm_api::PAGE_SIZE);
            assert!(table.map(outside, pfn, prot).is_err());
            assert_eq!(table.translate(page), Some((pfn, prot)));
            assert_eq!(table.mapped(), 1);
            let (unmapped, flush) = table.unmap(page).unwrap();
            let end = VirtAddr::new(page.as_usize() + kmm_api::PAGE_SIZE);
            assert_eq!((unmapped, flush.range()), (pfn, (page, end)));
            assert_eq!(table.unmap(page), Err(Error::NotMapped { addr: page }));
        }
        assert_eq!((table.translate(page), table.mapped()), (None, 0));
    }
}
