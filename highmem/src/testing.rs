//! Test doubles for the tests, benchmarks, doctests, loom models and the
//! fuzz target (feature `testing`, std). Nothing outside tests should use
//! this module.
//!
//! - [`TestPageTable`]: one PTE word per page of a kernel window holding
//!   the pkmap range and the fixmap slots, with the TLB modelled as the
//!   simulated machine models it: an unmapped page stays reachable (and
//!   blocks a new map with [`Error::StaleTlb`]) until a flush covers it.
//!   Counts maps, flush calls and pages flushed, per CPU.
//! - [`TestDirectMap`]: lowmem frames at `PAGE_OFFSET + phys`; every
//!   machine address reaches host memory through it: a direct-map address
//!   by arithmetic, a window address by walking the test page table (stale
//!   entries included), like an MMU.
//! - [`TestPlatform`]: CPUs pinned exclusively per thread (nested pins of
//!   one thread return its CPU), and a real wait: [`Platform::wait_on`]
//!   sleeps on a condition variable while the word is unchanged.
//! - [`TestMachine`]: RAM (lowmem then highmem frames), the three above,
//!   and the kmap_local stacks; [`TestMachine::highmem`] builds a
//!   [`Highmem`] over them.

use crate::{Highmem, HighmemConfig, LocalStack, KM_MAX_IDX, LAST_PKMAP_MAX};
use core::cell::Cell;
use kmm_api::sync::{AtomicBool, AtomicU32, AtomicUsize, Ordering};
use kmm_api::{
    AllocatorId, DirectMap, Error, KernelPageTable, Order, PageProt, Pages, Pfn, Platform,
    PreemptControl, TlbFlush, VirtAddr, PAGE_SIZE,
};
use std::alloc::{alloc_zeroed, dealloc, Layout};
use std::boxed::Box;
use std::sync::Arc;
use std::vec::Vec;

#[cfg(loom)]
use loom::sync::{Condvar, Mutex};
#[cfg(not(loom))]
use std::sync::{Condvar, Mutex};

/// Where the direct map starts (the i386 `PAGE_OFFSET`).
pub const PAGE_OFFSET: usize = 0xc000_0000;
/// Where the pkmap pool starts.
pub const PKMAP_BASE: usize = 0xff80_0000;

const PRESENT: usize = 1;
const STALE: usize = 2;

/// A kernel page table over `[PKMAP_BASE, PKMAP_BASE + pages)`, one word
/// per page: 0 empty, `pfn << 2 | PRESENT` mapped, `pfn << 2 | STALE`
/// unmapped but not yet flushed. Each word is touched only by the context
/// that owns its page (the trait's rule), so plain loads and stores do.
pub struct TestPageTable {
    ptes: Box<[AtomicUsize]>,
    /// The counters, one set per CPU as a kernel keeps its event counters
    /// (Linux `count_vm_event`): a thread bumps those of its CPU
    /// ([`set_cpu`], modulo [`COUNTER_CPUS`]), so threads on two CPUs
    /// never write one cache line; a read sums them.
    counters: [CpuCounters; COUNTER_CPUS],
}

/// CPUs with counters of their own in a [`TestPageTable`] (further CPUs
/// share them, modulo).
pub const COUNTER_CPUS: usize = 8;

/// One CPU's counters, on a cache line of their own.
#[repr(align(64))]
struct CpuCounters {
    maps: AtomicUsize,
    flushes: AtomicUsize,
    flushed_pages: AtomicUsize,
}

impl TestPageTable {
    /// A table over `pages` pages from [`PKMAP_BASE`].
    pub fn new(pages: usize) -> Self {
        TestPageTable {
            ptes: (0..pages).map(|_| AtomicUsize::new(0)).collect(),
            counters: core::array::from_fn(|_| CpuCounters {
                maps: AtomicUsize::new(0),
                flushes: AtomicUsize::new(0),
                flushed_pages: AtomicUsize::new(0),
            }),
        }
    }

    /// The calling thread's CPU's counters.
    #[inline]
    fn mine(&self) -> &CpuCounters {
        &self.counters[CPU.with(Cell::get) % COUNTER_CPUS]
    }

    /// One counter summed over the CPUs.
    fn sum(&self, counter: impl Fn(&CpuCounters) -> &AtomicUsize) -> usize {
        self.counters
            .iter()
            .map(|c| counter(c).load(Ordering::Relaxed))
            .sum()
    }

    /// The PTE of `addr`'s page; `None` outside the window (an address
    /// below it wraps to an index past the end).
    #[inline]
    fn pte(&self, addr: VirtAddr) -> Option<&AtomicUsize> {
        self.ptes
            .get(addr.as_usize().wrapping_sub(PKMAP_BASE) / PAGE_SIZE)
    }

    /// One past the window's last byte.
    pub fn end(&self) -> usize {
        PKMAP_BASE + self.ptes.len() * PAGE_SIZE
    }

    /// The frame a CPU reaches at `addr`: mapped, or unmapped but still
    /// in the TLB.
    pub fn reach(&self, addr: VirtAddr) -> Option<Pfn> {
        let word = self.pte(addr)?.load(Ordering::Relaxed);
        (word != 0).then(|| Pfn::new(word >> 2))
    }

    /// Whether `addr` was unmapped and not flushed since.
    pub fn is_stale(&self, addr: VirtAddr) -> bool {
        self.pte(addr)
            .is_some_and(|p| p.load(Ordering::Relaxed) & STALE != 0)
    }

    /// Successful maps so far.
    pub fn maps(&self) -> usize {
        self.sum(|c| &c.maps)
    }
    /// `flush_tlb_range` calls so far.
    pub fn flushes(&self) -> usize {
        self.sum(|c| &c.flushes)
    }
    /// Stale pages those flushes cleared.
    pub fn flushed_pages(&self) -> usize {
        self.sum(|c| &c.flushed_pages)
    }

    /// Adds `n` by a load and a store, not a read-modify-write: exact
    /// while one context at a time updates a CPU's counters (every test
    /// that reads them; threads on distinct CPUs never share them), and
    /// cheap for the benchmarks.
    fn add(counter: &AtomicUsize, n: usize) {
        counter.store(counter.load(Ordering::Relaxed) + n, Ordering::Relaxed);
    }

    /// A flush reaching `ptes`: clears the stale ones, and counts the
    /// flush and the pages it cleared for the calling thread.
    fn flush_ptes(&self, ptes: &[AtomicUsize]) {
        let counters = self.mine();
        Self::add(&counters.flushes, 1);
        let mut cleared = 0;
        for pte in ptes {
            if pte.load(Ordering::Relaxed) & STALE != 0 {
                pte.store(0, Ordering::Relaxed);
                cleared += 1;
            }
        }
        if cleared != 0 {
            Self::add(&counters.flushed_pages, cleared);
        }
    }
}

// SAFETY: a test double: `map` records the frame and `translate` reports
// it; the frame's bytes are reached through `TestDirectMap::virt_to_ptr`,
// which walks these words, so a mapped page reaches exactly its frame.
unsafe impl KernelPageTable for TestPageTable {
    unsafe fn map(&self, addr: VirtAddr, pfn: Pfn, _prot: PageProt) -> Result<(), Error> {
        if !addr.is_aligned(PAGE_SIZE) {
            return Err(Error::BadVirtAddr { addr });
        }
        let pte = self.pte(addr).ok_or(Error::BadVirtAddr { addr })?;
        let word = pte.load(Ordering::Relaxed);
        if word & PRESENT != 0 {
            return Err(Error::AlreadyMapped { addr });
        }
        if word & STALE != 0 {
            return Err(Error::StaleTlb { addr });
        }
        pte.store(pfn.as_usize() << 2 | PRESENT, Ordering::Relaxed);
        Self::add(&self.mine().maps, 1);
        Ok(())
    }

    unsafe fn unmap(&self, addr: VirtAddr) -> Result<(Pfn, TlbFlush), Error> {
        let pte = self.pte(addr).ok_or(Error::BadVirtAddr { addr })?;
        let word = pte.load(Ordering::Relaxed);
        if word & PRESENT == 0 {
            return Err(Error::NotMapped { addr });
        }
        pte.store(word & !PRESENT | STALE, Ordering::Relaxed);
        let end = VirtAddr::new(addr.as_usize() + PAGE_SIZE);
        Ok((Pfn::new(word >> 2), TlbFlush::new(addr, end)))
    }

    fn translate(&self, addr: VirtAddr) -> Option<(Pfn, PageProt)> {
        let word = self.pte(addr)?.load(Ordering::Relaxed);
        (word & PRESENT != 0).then(|| (Pfn::new(word >> 2), PageProt::KERNEL))
    }

    fn flush_tlb_range(&self, start: VirtAddr, end: VirtAddr) {
        // The window's pages that meet `[start, end)`, as PTE indices.
        let first = start.as_usize().saturating_sub(PKMAP_BASE) / PAGE_SIZE;
        let last = end
            .as_usize()
            .saturating_sub(PKMAP_BASE)
            .div_ceil(PAGE_SIZE)
            .min(self.ptes.len());
        self.flush_ptes(self.ptes.get(first..last).unwrap_or_default());
    }

    /// One page (`invlpg`, kunmap_local's flush): its PTE alone. The TLB
    /// modelled here is the machine's, so a local flush clears it for
    /// every CPU, which only makes the model more forgiving of a missing
    /// shootdown, never of a missing flush.
    fn flush_tlb_one_kernel(&self, addr: VirtAddr) {
        self.flush_ptes(
            self.pte(addr)
                .map(core::slice::from_ref)
                .unwrap_or_default(),
        );
    }
}

/// The machine's RAM: page-aligned zeroed host memory, lowmem frames
/// first.
pub struct TestRam {
    /// Host pointer to physical address 0; every pointer into RAM derives
    /// from it (miri's strict provenance).
    ptr: *mut u8,
    layout: Layout,
    frames: usize,
}

// SAFETY: owned host memory; who touches which bytes is governed by the
// frames' holders.
unsafe impl Send for TestRam {}
// SAFETY: as above; the fields never change.
unsafe impl Sync for TestRam {}

impl TestRam {
    fn new(frames: usize) -> Self {
        let layout = Layout::from_size_align(frames.max(1) * PAGE_SIZE, PAGE_SIZE).unwrap();
        // SAFETY: the layout has a non-zero size.
        let ptr = unsafe { alloc_zeroed(layout) };
        assert!(!ptr.is_null(), "test RAM allocation failed");
        TestRam {
            ptr,
            layout,
            frames,
        }
    }
}

impl Drop for TestRam {
    fn drop(&mut self) {
        // SAFETY: allocated in `new` with this layout.
        unsafe { dealloc(self.ptr, self.layout) }
    }
}

/// The direct map of the test machine (see the module documentation).
pub struct TestDirectMap {
    ram: TestRam,
    lowmem: usize,
    table: Arc<TestPageTable>,
}

/// The direct map: lowmem at `PAGE_OFFSET + phys`; window addresses
/// through the page table.
impl TestDirectMap {
    fn table(&self) -> &TestPageTable {
        &self.table
    }
}

// SAFETY: lowmem frame `pfn` is RAM bytes `[pfn * PAGE_SIZE, +PAGE_SIZE)`,
// distinct per frame, alive with the machine; `virt_to_pfn` inverts
// `pfn_to_virt`. Other addresses reach the frame the table maps there.
unsafe impl DirectMap for TestDirectMap {
    fn pfn_to_virt(&self, pfn: Pfn) -> Option<VirtAddr> {
        (pfn.as_usize() < self.lowmem)
            .then(|| VirtAddr::new(PAGE_OFFSET + pfn.as_usize() * PAGE_SIZE))
    }
    fn virt_to_pfn(&self, addr: VirtAddr) -> Option<Pfn> {
        let pfn = addr.as_usize().checked_sub(PAGE_OFFSET)? / PAGE_SIZE;
        (pfn < self.lowmem).then(|| Pfn::new(pfn))
    }
    fn virt_to_ptr(&self, addr: VirtAddr) -> *mut u8 {
        // The window first: the kmap paths ask about it, lowmem callers
        // have the direct map.
        let pfn = match self.table().reach(addr) {
            Some(pfn) if pfn.as_usize() < self.ram.frames => pfn,
            Some(_) => return core::ptr::null_mut(),
            None => match self.virt_to_pfn(addr) {
                Some(pfn) => pfn,
                None => return core::ptr::null_mut(),
            },
        };
        self.ram
            .ptr
            .wrapping_add(pfn.as_usize() * PAGE_SIZE + addr.page_offset())
    }
}

#[cfg(not(loom))]
std::thread_local! {
    static CPU: Cell<usize> = const { Cell::new(0) };
    /// (machine id, pinned CPU, nesting depth).
    static PIN: Cell<(usize, usize, usize)> = const { Cell::new((0, 0, 0)) };
}
#[cfg(loom)]
loom::thread_local! {
    static CPU: Cell<usize> = Cell::new(0);
    static PIN: Cell<(usize, usize, usize)> = Cell::new((0, 0, 0));
}

/// Makes the calling thread run on `cpu` from its next pin on.
pub fn set_cpu(cpu: usize) {
    CPU.with(|c| c.set(cpu));
}

fn yield_now() {
    #[cfg(loom)]
    loom::thread::yield_now();
    #[cfg(not(loom))]
    std::thread::yield_now();
}

/// How [`TestPlatform::wait_on`] waits.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum WaitMode {
    /// A futex: sleeps while the word equals the value seen.
    Futex,
    /// Broken on purpose (check-then-wait without the word): sleeps until
    /// the next wake whatever the word says, so a wake between the
    /// caller's check and this call is lost. For the loom model that
    /// shows the loss.
    IgnoreWord,
}

/// A CPU's pin flag, on a cache line of its own (as per-CPU data is), so
/// threads pinning two CPUs never write one line.
#[repr(align(64))]
struct PinFlag(AtomicBool);

/// How a [`TestPlatform`] pins CPUs.
enum Pins {
    /// Any thread may pin any CPU, exclusively: a pin takes the CPU's flag
    /// by compare-and-swap (a thread-local count for nested pins).
    Smp(Box<[PinFlag]>),
    /// One CPU and one thread, as a kernel's `preempt_count`: a pin is a
    /// load and a store of one counter, after a check that the caller is
    /// the thread the platform was made on.
    Up {
        /// That thread's [`thread_key`].
        thread: usize,
        /// Pins held now.
        depth: AtomicUsize,
    },
}

/// CPUs pinned per thread and a real wait (see the module documentation).
pub struct TestPlatform {
    nr_cpus: usize,
    id: usize,
    pins: Pins,
    mode: WaitMode,
    lock: Mutex<()>,
    cond: Condvar,
    waits: AtomicUsize,
    wakes: AtomicUsize,
}

static NEXT_PLATFORM: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(1);

impl TestPlatform {
    /// A platform of `nr_cpus` CPUs waiting as `mode` says.
    pub fn new(nr_cpus: usize, mode: WaitMode) -> Self {
        TestPlatform {
            nr_cpus,
            id: NEXT_PLATFORM.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
            pins: Pins::Smp(
                (0..nr_cpus)
                    .map(|_| PinFlag(AtomicBool::new(false)))
                    .collect(),
            ),
            mode,
            lock: Mutex::new(()),
            cond: Condvar::new(),
            waits: AtomicUsize::new(0),
            wakes: AtomicUsize::new(0),
        }
    }
    /// `wait_on` calls so far.
    pub fn waits(&self) -> usize {
        self.waits.load(Ordering::SeqCst)
    }
    /// One CPU that only the calling thread may pin (others panic), so a
    /// pin is a count, as `preempt_disable` is a per-CPU one: for
    /// benchmarks.
    pub fn uniprocessor(mode: WaitMode) -> Self {
        TestPlatform {
            pins: Pins::Up {
                thread: thread_key(),
                depth: AtomicUsize::new(0),
            },
            ..Self::new(1, mode)
        }
    }

    /// Whether `cpu` is pinned by some thread now.
    pub fn is_pinned(&self, cpu: usize) -> bool {
        match &self.pins {
            Pins::Smp(pinned) => pinned[cpu].0.load(Ordering::SeqCst),
            Pins::Up { depth, .. } => depth.load(Ordering::SeqCst) > 0,
        }
    }
    /// `wake_on` calls so far.
    pub fn wakes(&self) -> usize {
        self.wakes.load(Ordering::SeqCst)
    }
}

impl Platform for TestPlatform {
    fn nr_cpus(&self) -> usize {
        self.nr_cpus
    }
    fn cpu_id(&self) -> usize {
        CPU.with(Cell::get) % self.nr_cpus
    }
    fn wait_on(&self, word: &AtomicU32, seen: u32) {
        self.waits.fetch_add(1, Ordering::SeqCst);
        let mut guard = self.lock.lock().unwrap();
        match self.mode {
            WaitMode::Futex => {
                while word.load(Ordering::SeqCst) == seen {
                    guard = self.cond.wait(guard).unwrap();
                }
            }
            WaitMode::IgnoreWord => drop(self.cond.wait(guard).unwrap()),
        }
    }
    fn wake_on(&self, _word: &AtomicU32) {
        self.wakes.fetch_add(1, Ordering::SeqCst);
        let _guard = self.lock.lock().unwrap();
        self.cond.notify_all();
    }
}

/// The calling thread's key: the address of one of its thread-locals,
/// distinct among live threads (a thread's exit may free it for a later
/// one, which cannot overlap the first).
#[inline]
fn thread_key() -> usize {
    CPU.with(|c| core::ptr::from_ref(c) as usize)
}

// SAFETY: a CPU id is handed out only while its flag is held by the
// calling thread (taken by compare-and-swap, released by the last
// `put_cpu`), or, on a uniprocessor platform, only to its one thread;
// nested pins of the holder return the same id.
unsafe impl PreemptControl for TestPlatform {
    #[inline]
    fn get_cpu(&self) -> usize {
        let pinned = match &self.pins {
            Pins::Up { thread, depth } => {
                assert_eq!(
                    thread_key(),
                    *thread,
                    "uniprocessor test platform: one thread"
                );
                // Only that thread touches the count: no read-modify-write.
                depth.store(depth.load(Ordering::Relaxed) + 1, Ordering::Relaxed);
                return 0;
            }
            Pins::Smp(pinned) => pinned,
        };
        let (id, cpu, depth) = PIN.with(Cell::get);
        if depth > 0 {
            assert_eq!(id, self.id, "test platform: one machine pinned per thread");
            PIN.with(|p| p.set((id, cpu, depth + 1)));
            return cpu;
        }
        let cpu = self.cpu_id();
        while pinned[cpu]
            .0
            .compare_exchange(false, true, Ordering::Acquire, Ordering::Relaxed)
            .is_err()
        {
            yield_now();
        }
        PIN.with(|p| p.set((self.id, cpu, 1)));
        cpu
    }
    #[inline]
    fn put_cpu(&self, cpu: usize) {
        let pinned = match &self.pins {
            // Exclusion is get_cpu's thread check (no other thread is
            // ever handed CPU 0), so the unpin only checks the count.
            Pins::Up { depth, .. } => {
                let d = depth.load(Ordering::Relaxed);
                assert!(cpu == 0 && d > 0, "put_cpu without get_cpu");
                depth.store(d - 1, Ordering::Relaxed);
                return;
            }
            Pins::Smp(pinned) => pinned,
        };
        let (id, held, depth) = PIN.with(Cell::get);
        assert!(
            id == self.id && held == cpu && depth > 0,
            "put_cpu without get_cpu"
        );
        PIN.with(|p| p.set((id, cpu, depth - 1)));
        if depth == 1 {
            pinned[cpu].0.store(false, Ordering::Release);
        }
    }
}

/// A test machine: RAM, page table, direct map, platform, kmap_local
/// stacks, and a frame "allocator" handing out order-0 handles in order.
pub struct TestMachine {
    direct: TestDirectMap,
    table: Arc<TestPageTable>,
    platform: TestPlatform,
    stacks: Box<[LocalStack]>,
    slots: usize,
    allocator: AllocatorId,
    next_low: AtomicUsize,
    next_high: AtomicUsize,
}

impl TestMachine {
    /// `nr_cpus` CPUs, `lowmem` + `highmem` frames of RAM, and a pkmap
    /// pool of `slots` (at most [`LAST_PKMAP_MAX`]); `wait_on` a futex.
    pub fn new(nr_cpus: usize, lowmem: usize, highmem: usize) -> Self {
        Self::with_pool(nr_cpus, lowmem, highmem, LAST_PKMAP_MAX, WaitMode::Futex)
    }

    /// As [`TestMachine::new`] on a [`TestPlatform::uniprocessor`]: only
    /// the calling thread may use it (for benchmarks).
    pub fn uniprocessor(lowmem: usize, highmem: usize) -> Self {
        let mut m = Self::new(1, lowmem, highmem);
        m.platform = TestPlatform::uniprocessor(WaitMode::Futex);
        m
    }

    /// As [`TestMachine::new`] with a pool of `slots` and a wait mode.
    pub fn with_pool(
        nr_cpus: usize,
        lowmem: usize,
        highmem: usize,
        slots: usize,
        mode: WaitMode,
    ) -> Self {
        // The pool, the fixmap slots, and a hole page at the top.
        let table = Arc::new(TestPageTable::new(slots + nr_cpus * KM_MAX_IDX + 1));
        TestMachine {
            direct: TestDirectMap {
                ram: TestRam::new(lowmem + highmem),
                lowmem,
                table: table.clone(),
            },
            table,
            platform: TestPlatform::new(nr_cpus, mode),
            stacks: (0..nr_cpus).map(|_| LocalStack::new()).collect(),
            slots,
            allocator: AllocatorId::new().unwrap(),
            next_low: AtomicUsize::new(0),
            next_high: AtomicUsize::new(lowmem),
        }
    }

    /// The fixmap address of kmap_local slot `slot` of `cpu`: from the
    /// top of the window down, as Linux's fixmap grows.
    pub fn local_addr(&self, cpu: usize, slot: usize) -> Option<VirtAddr> {
        (cpu < self.platform.nr_cpus && slot < KM_MAX_IDX)
            .then(|| VirtAddr::new(self.table.end() - (2 + cpu * KM_MAX_IDX + slot) * PAGE_SIZE))
    }

    /// The [`Highmem`] of this machine. Panics if one is alive already.
    pub fn highmem(&self) -> TestHighmem<'_> {
        self.try_highmem()
            .expect("one Highmem per test machine at a time")
    }

    /// The [`Highmem`] of this machine, or why not.
    pub fn try_highmem(&self) -> Result<TestHighmem<'_>, crate::HighmemError> {
        let config = HighmemConfig {
            pkmap_base: VirtAddr::new(PKMAP_BASE),
            last_pkmap: self.slots,
            allocator: self.allocator,
        };
        // SAFETY: the window's pages are this machine's, mapped only by
        // its one Highmem at a time (the stacks' claim); the direct map
        // reaches what the table maps; handles come from `allocator`.
        unsafe {
            Highmem::new(
                &*self.table,
                &self.platform,
                &self.direct,
                config,
                &self.stacks,
                |cpu, slot| self.local_addr(cpu, slot),
            )
        }
    }

    /// The page table.
    pub fn table(&self) -> &TestPageTable {
        &self.table
    }
    /// The platform.
    pub fn platform(&self) -> &TestPlatform {
        &self.platform
    }
    /// The allocator identity the machine's handles carry.
    pub fn allocator(&self) -> AllocatorId {
        self.allocator
    }
    /// First highmem frame.
    pub fn first_highmem(&self) -> Pfn {
        Pfn::new(self.direct.lowmem)
    }
    /// Frames of RAM.
    pub fn frames(&self) -> usize {
        self.direct.ram.frames
    }

    /// The next lowmem frame's handle (each handed out once).
    pub fn alloc_lowmem(&self) -> Pages {
        let pfn = self.next_low.fetch_add(1, Ordering::Relaxed);
        assert!(pfn < self.direct.lowmem, "test machine: out of lowmem");
        // SAFETY: each frame is handed out once.
        unsafe { Pages::from_raw(Pfn::new(pfn), Order::ZERO, self.allocator) }
    }

    /// The next highmem frame's handle (each handed out once).
    pub fn alloc_highmem(&self) -> Pages {
        let pfn = self.next_high.fetch_add(1, Ordering::Relaxed);
        assert!(pfn < self.direct.ram.frames, "test machine: out of highmem");
        // SAFETY: each frame is handed out once.
        unsafe { Pages::from_raw(Pfn::new(pfn), Order::ZERO, self.allocator) }
    }

    /// `n` highmem handles.
    pub fn alloc_highmem_n(&self, n: usize) -> Vec<Pages> {
        (0..n).map(|_| self.alloc_highmem()).collect()
    }
}

/// The [`Highmem`] of a [`TestMachine`].
pub type TestHighmem<'m> = Highmem<'m, &'m TestPageTable, &'m TestPlatform, &'m TestDirectMap>;
