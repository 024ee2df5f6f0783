//! A host-memory test machine, so tests, fuzz targets and benchmarks can
//! boot [`Zones`] without the composition crate (feature `testing`, std).
//!
//! - [`TestRam`]: the machine's RAM, one page-aligned host allocation
//!   (physical address 0 is its first byte).
//! - [`TestDirectMap`]: the direct map covers RAM below the lowmem limit at
//!   virtual address = host address of the byte (window base 0), as the
//!   hosted 64-bit preset does; frames above it have no address (highmem).
//! - [`TestPlatform`]: `nr_cpus` CPUs, a per-thread CPU id set with
//!   [`set_cpu`] and pinned by holding that id's lock (so threads set to
//!   one CPU take turns at it), counters of reclaim and wait calls, and an
//!   optional reclaim action.
//! - [`TestMachine`]: a memory map plus zone limits; [`TestMachine::boot`]
//!   builds `Zones` over it, its metadata in a host buffer.
//!
//! The unsafe here is the host allocation itself, its byte accesses, and the
//! `DirectMap` promise; each block says why it holds. Nothing outside tests
//! should use this module.

use crate::boot::BootMem;
use crate::memblock::Memblock;
use crate::{ZoneConfig, Zones};
use core::cell::Cell;
use core::mem::MaybeUninit;
use kmm_api::{
    DirectMap, Error, GfpFlags, MemoryRegion, Order, Pfn, Platform, PreemptControl, RegionKind,
    VirtAddr, MAX_PAGE_ORDER, PAGE_SIZE,
};
use std::alloc::{alloc_zeroed, dealloc, Layout};
use std::boxed::Box;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::vec::Vec;

/// The machine's RAM: `frames` zeroed, page-aligned host pages.
pub struct TestRam {
    /// Host pointer to physical address 0; every pointer into RAM is
    /// derived from it, so it keeps the allocation's provenance (the tests
    /// run under miri's strict provenance).
    ptr: *mut u8,
    /// Its address, which the direct map uses as virtual addresses.
    base: usize,
    layout: Layout,
}

// SAFETY: the RAM is an exclusively owned host allocation; who may touch
// which bytes is governed by the frames' holders (the `DirectMap` contract).
#[allow(unsafe_code)]
unsafe impl Send for TestRam {}
// SAFETY: as above; the fields never change after creation.
#[allow(unsafe_code)]
unsafe impl Sync for TestRam {}

impl TestRam {
    /// RAM of `frames` pages (at least one).
    pub fn new(frames: usize) -> Arc<TestRam> {
        let bytes = frames
            .max(1)
            .checked_mul(PAGE_SIZE)
            .expect("RAM size overflows");
        let layout = Layout::from_size_align(bytes, PAGE_SIZE).expect("valid RAM layout");
        #[allow(unsafe_code)]
        // SAFETY: `layout` has a non-zero size.
        let ptr = unsafe { alloc_zeroed(layout) };
        assert!(!ptr.is_null(), "host allocation of {bytes} bytes failed");
        Arc::new(TestRam {
            ptr,
            base: ptr as usize,
            layout,
        })
    }

    /// Frames of RAM.
    pub fn frames(&self) -> usize {
        self.layout.size() / PAGE_SIZE
    }

    /// The host pointer to the first byte of `pfn`, if it is RAM.
    fn frame_ptr(&self, pfn: Pfn) -> Option<*mut u8> {
        (pfn.as_usize() < self.frames()).then(|| self.ptr.wrapping_add(pfn.as_usize() * PAGE_SIZE))
    }

    /// Fills frame `pfn` with `byte`; `false` outside RAM.
    ///
    /// # Safety
    ///
    /// The caller holds the frame (tests: a frame they allocated): nothing
    /// else reads or writes it during the call.
    #[allow(unsafe_code)]
    pub unsafe fn fill_frame(&self, pfn: Pfn, byte: u8) -> bool {
        let Some(ptr) = self.frame_ptr(pfn) else {
            return false;
        };
        #[allow(unsafe_code)]
        // SAFETY: `ptr` starts a whole page inside the live allocation; the
        // caller holds the frame, so nothing else accesses these bytes now.
        unsafe {
            ptr.write_bytes(byte, PAGE_SIZE)
        };
        true
    }

    /// A copy of frame `pfn`'s bytes, `None` outside RAM.
    ///
    /// # Safety
    ///
    /// Nothing writes the frame during the call (tests: a frame they hold).
    #[allow(unsafe_code)]
    pub unsafe fn frame_bytes(&self, pfn: Pfn) -> Option<Vec<u8>> {
        let ptr = self.frame_ptr(pfn)?;
        let mut copy = std::vec![0u8; PAGE_SIZE];
        #[allow(unsafe_code)]
        // SAFETY: `ptr` starts a whole page inside the live allocation that
        // nothing writes now (the caller's promise); `copy` is a distinct
        // buffer of PAGE_SIZE bytes.
        unsafe {
            ptr.copy_to_nonoverlapping(copy.as_mut_ptr(), PAGE_SIZE)
        };
        Some(copy)
    }
}

impl Drop for TestRam {
    fn drop(&mut self) {
        #[allow(unsafe_code)]
        // SAFETY: `base` came from `alloc_zeroed(self.layout)` and is freed
        // once, here.
        unsafe {
            dealloc(self.ptr, self.layout)
        };
    }
}

/// The direct map of a [`TestRam`]: frames below `lowmem_end`, at virtual
/// address = host address.
#[derive(Clone)]
pub struct TestDirectMap {
    ram: Arc<TestRam>,
    lowmem_end: Pfn,
}

impl TestDirectMap {
    fn mapped_frames(&self) -> usize {
        self.lowmem_end.as_usize().min(self.ram.frames())
    }
}

// SAFETY: every mapped frame lies inside the RAM allocation, which lives as
// long as this map (it holds an `Arc`); distinct frames get distinct,
// non-overlapping pages; `virt_to_pfn` inverts `pfn_to_virt` exactly.
#[allow(unsafe_code)]
unsafe impl DirectMap for TestDirectMap {
    fn pfn_to_virt(&self, pfn: Pfn) -> Option<VirtAddr> {
        (pfn.as_usize() < self.mapped_frames())
            .then(|| VirtAddr::new(self.ram.base + pfn.as_usize() * PAGE_SIZE))
    }

    fn virt_to_pfn(&self, addr: VirtAddr) -> Option<Pfn> {
        let offset = addr.as_usize().checked_sub(self.ram.base)?;
        let pfn = offset / PAGE_SIZE;
        (pfn < self.mapped_frames()).then_some(Pfn::new(pfn))
    }

    /// Derived from the RAM pointer rather than cast from the address, so
    /// pointers keep the allocation's provenance.
    fn virt_to_ptr(&self, addr: VirtAddr) -> *mut u8 {
        self.ram
            .ptr
            .wrapping_add(addr.as_usize().wrapping_sub(self.ram.base))
    }
}

std::thread_local! {
    static CPU: Cell<usize> = const { Cell::new(0) };
}

/// Makes the calling thread run "on" `cpu` from now on (clamped to the
/// platform's CPUs when read).
pub fn set_cpu(cpu: usize) {
    CPU.with(|c| c.set(cpu));
}

/// What a reclaim action does: given the request, returns pages "freed".
pub type ReclaimAction = Box<dyn Fn(GfpFlags, Order) -> usize + Send + Sync>;

/// The platform double.
pub struct TestPlatform {
    nr_cpus: usize,
    /// One per CPU: held while a thread is pinned to it or runs as it.
    cpu_locks: Box<[AtomicBool]>,
    ram: Arc<TestRam>,
    reclaim_calls: AtomicUsize,
    wait_calls: AtomicUsize,
    reclaim: Option<ReclaimAction>,
}

impl TestPlatform {
    /// `nr_cpus` CPUs over `ram`, reclaim freeing nothing.
    pub fn new(nr_cpus: usize, ram: Arc<TestRam>) -> Self {
        Self {
            nr_cpus: nr_cpus.max(1),
            cpu_locks: (0..nr_cpus.max(1))
                .map(|_| AtomicBool::new(false))
                .collect(),
            ram,
            reclaim_calls: AtomicUsize::new(0),
            wait_calls: AtomicUsize::new(0),
            reclaim: None,
        }
    }

    /// The same platform with `action` run on every reclaim call.
    pub fn with_reclaim(
        mut self,
        action: impl Fn(GfpFlags, Order) -> usize + Send + Sync + 'static,
    ) -> Self {
        self.reclaim = Some(Box::new(action));
        self
    }

    /// Calls of [`Platform::reclaim`] so far.
    pub fn reclaim_calls(&self) -> usize {
        self.reclaim_calls.load(Ordering::SeqCst)
    }

    /// Calls of [`Platform::wait`] so far.
    pub fn wait_calls(&self) -> usize {
        self.wait_calls.load(Ordering::SeqCst)
    }
}

impl Platform for TestPlatform {
    fn nr_cpus(&self) -> usize {
        self.nr_cpus
    }
    fn cpu_id(&self) -> usize {
        CPU.with(Cell::get).min(self.nr_cpus - 1)
    }
    fn wait(&self) {
        self.wait_calls.fetch_add(1, Ordering::SeqCst);
        std::thread::yield_now();
    }
    fn reclaim(&self, gfp: GfpFlags, order: Order) -> usize {
        self.reclaim_calls.fetch_add(1, Ordering::SeqCst);
        self.reclaim.as_ref().map_or(0, |action| action(gfp, order))
    }
    #[allow(unsafe_code)]
    unsafe fn zero_frame(&self, pfn: Pfn) -> Result<(), Error> {
        // SAFETY: the zones call this only for a frame they are handing out
        // (our caller's contract): nobody else touches it.
        if unsafe { self.ram.fill_frame(pfn, 0) } {
            Ok(())
        } else {
            Err(Error::PfnOutOfRange { pfn })
        }
    }
}

// SAFETY: a CPU id is handed out only while holding that id's lock,
// released by `put_cpu`; `on_cpu` work runs holding the same lock. Ids are
// clamped below `nr_cpus`.
#[allow(unsafe_code)]
unsafe impl PreemptControl for TestPlatform {
    fn get_cpu(&self) -> usize {
        let cpu = self.cpu_id();
        hold(&self.cpu_locks[cpu]);
        cpu
    }
    fn put_cpu(&self, cpu: usize) {
        self.cpu_locks[cpu].store(false, Ordering::Release);
    }
    fn on_cpu(&self, cpu: usize, work: &mut dyn FnMut()) -> bool {
        let Some(lock) = self.cpu_locks.get(cpu) else {
            return false;
        };
        hold(lock);
        work();
        lock.store(false, Ordering::Release);
        true
    }
}

/// Takes a CPU's lock, yielding while another thread holds it.
fn hold(lock: &AtomicBool) {
    while lock
        .compare_exchange_weak(false, true, Ordering::Acquire, Ordering::Relaxed)
        .is_err()
    {
        std::thread::yield_now();
    }
}

/// The zones of a test machine.
pub type TestZones<'m> = Zones<'m, TestPlatform, TestDirectMap>;

/// A machine: RAM, its memory map, zone limits, CPUs, and a metadata buffer.
pub struct TestMachine {
    /// The RAM (shared with the platform and the direct map).
    pub ram: Arc<TestRam>,
    memblock: Memblock,
    config: ZoneConfig,
    nr_cpus: usize,
    meta: Vec<MaybeUninit<u8>>,
}

impl TestMachine {
    /// A machine with RAM up to the highest address of `map`.
    pub fn new(map: &[MemoryRegion], config: ZoneConfig, nr_cpus: usize) -> Result<Self, Error> {
        let memblock = Memblock::from_memory_map(map)?;
        let ram = TestRam::new(memblock.end_pfn().as_usize());
        let bytes = TestZones::metadata_bytes(&memblock, &config, nr_cpus);
        Ok(Self {
            ram,
            memblock,
            config,
            nr_cpus,
            meta: std::vec![MaybeUninit::uninit(); bytes],
        })
    }

    /// An i386-shaped machine of `frames` pages (at least 8), scaled down:
    /// DMA the first quarter, NORMAL up to three quarters, HIGHMEM the rest;
    /// page 0 reserved (as the BIOS keeps it, so not RAM); a two-page kernel
    /// image at [`TestMachine::kernel_image`] (RAM, never released); two
    /// CPUs; orders up to 10.
    pub fn i386_scaled(frames: usize) -> Self {
        Self::i386_scaled_smp(frames, 2)
    }

    /// [`TestMachine::i386_scaled`] with `nr_cpus` CPUs (more CPUs share
    /// the low watermark, so each gets a smaller per-CPU `high`).
    pub fn i386_scaled_smp(frames: usize, nr_cpus: usize) -> Self {
        let frames = frames.max(16);
        let end = (frames * PAGE_SIZE) as u64;
        let kernel = Self::kernel_image(frames).phys().as_u64();
        let map = [
            MemoryRegion::new(0, PAGE_SIZE as u64, RegionKind::Reserved),
            MemoryRegion::new(PAGE_SIZE as u64, end, RegionKind::Usable),
            MemoryRegion::new(
                kernel,
                kernel + 2 * PAGE_SIZE as u64,
                RegionKind::KernelImage,
            ),
        ];
        let config = ZoneConfig {
            dma_end: Pfn::new(frames / 4),
            dma32_end: None,
            lowmem_end: Pfn::new(frames * 3 / 4),
            max_order: MAX_PAGE_ORDER,
        };
        Self::new(&map, config, nr_cpus).expect("a well-formed test machine")
    }

    /// First frame of the kernel image of [`TestMachine::i386_scaled`]`(frames)`
    /// (in ZONE_DMA).
    pub fn kernel_image(frames: usize) -> Pfn {
        Pfn::new(frames.max(16) / 8)
    }

    /// The zone limits.
    pub fn config(&self) -> ZoneConfig {
        self.config
    }

    /// The early allocator's view of the machine.
    pub fn memblock(&self) -> &Memblock {
        &self.memblock
    }

    /// A fresh platform for this machine.
    pub fn platform(&self) -> TestPlatform {
        TestPlatform::new(self.nr_cpus, Arc::clone(&self.ram))
    }

    /// The direct map of this machine.
    pub fn direct_map(&self) -> TestDirectMap {
        TestDirectMap {
            ram: Arc::clone(&self.ram),
            lowmem_end: self.config.lowmem_end,
        }
    }

    /// Boots zones with a fresh platform.
    pub fn boot(&mut self) -> Result<TestZones<'_>, Error> {
        let platform = self.platform();
        self.boot_with(platform)
    }

    /// Boots zones with `platform`.
    pub fn boot_with(&mut self, platform: TestPlatform) -> Result<TestZones<'_>, Error> {
        let direct_map = self.direct_map();
        // SAFETY: the RAM is this machine's own allocation, and `&mut self`
        // (borrowed by the zones returned, through the metadata buffer)
        // lets only one set of zones over it live at a time; the direct map
        // is this RAM's.
        #[allow(unsafe_code)]
        unsafe {
            Zones::new(
                &self.memblock,
                self.config,
                BootMem::new(&mut self.meta),
                platform,
                direct_map,
            )
        }
    }
}
