//! The simulated i386 machine (feature `sim`): real host memory behind the
//! real data structures, so every layer is tested on real bytes.
//!
//! RAM is a host memory file of the machine's size; the machine's 4 GiB
//! virtual address space is one reserved host window; every kernel mapping
//! is a host mapping of the RAM file at `window + virtual address`:
//!
//! - at boot, the direct map of lowmem (one mapping of `[0, lowmem)` at
//!   `PAGE_OFFSET`);
//! - afterwards, each page the x86 page table maps ([`SimMmu`] is the
//!   table's [`Mmu`]): `map` maps the frame's file page at that address;
//!   `unmap` leaves it reachable, as a stale TLB entry would, until a TLB
//!   flush covering it turns the page back into an inaccessible
//!   reservation (module `tlb`).
//!
//! The TLB model: an unmapped page stays *stale* (still reaching its old
//! frame) until `flush_tlb_range` covers it; mapping a stale page again is
//! refused with [`Error::StaleTlb`] and counted. So a forgotten flush shows
//! up as a refused map (and in [`Machine::stale_translations`]) instead of
//! passing unseen. Frames are not policed: a frame may be handed out again
//! while a stale translation still reaches it, as Linux's lazy vmalloc
//! purge does by design; [`Machine::has_stale_translation`] lets a test
//! check it where its layer promises otherwise.
//!
//! The device window: physical `[0xfeb0_0000, 0xfec0_0000)` (see
//! [`crate::e820::pc_device_window`]) is device memory, backed by its own
//! host memory file, reported as reserved in the memory map (so the zones
//! never manage it) and mappable by the page table like RAM (what `ioremap`
//! needs): a write through one mapping of a device page shows through any
//! other and through [`Machine::read_device`]. Caching bits
//! ([`PageProt::NOCACHE`], [`PageProt::WRITE_THROUGH`]) are kept in the
//! entries; host memory is coherent, so they change nothing here.
//!
//! Each mapped page that does not continue its neighbour's mapping is one
//! host mapping, so the host's `vm.max_map_count` (65530 by default)
//! bounds how many scattered pages can be mapped at once; past it `map`
//! fails with [`Error::NoMemory`] rather than faulting.
//!
//! So a direct-map address is a real pointer, a page mapped at two
//! addresses shows the same bytes, and touching an address nobody mapped
//! (a highmem page without a kmap, a vmalloc guard page) raises SIGSEGV.
//! [`kmm_api::DirectMap::window_base`] is the window: the one offset
//! between this machine and real i386 hardware, where it is 0.
//!
//! CPUs: the first `nr_cpus` host threads each own a CPU, later threads
//! share one overflow CPU, so the machine reports `nr_cpus + 1` CPU ids
//! (see [`crate::cpu`]).
//!
//! Never: maps anything outside the window, maps a frame that is neither
//! RAM nor device window, maps a page whose stale translation was not
//! flushed, or lets the page table's hook touch the direct map (`pte_set`
//! refuses addresses outside [`Layout::kernel_map_range`]). Dropping the
//! last handle unmaps the window and closes the memory files.

mod host;
#[cfg(test)]
mod tests;
mod tlb;

pub use tlb::TlbStats;

/// Runs `touch` in a forked child process and reports whether the child
/// died of SIGSEGV: how tests show that an access really faults on this
/// machine (an unmapped highmem page, a guard page, a flushed slot)
/// without taking the test process down.
///
/// The child runs only `touch` and then `_exit`s, so `touch` should be a
/// raw access: no allocation, no lock (a forked multi-threaded process
/// may hold neither safely).
pub fn child_dies_of_sigsegv(touch: impl FnOnce()) -> bool {
    // SAFETY: the child only runs `touch` (a raw access, no allocation or
    // locks, as documented) and `_exit`s, so forking a multi-threaded
    // process is harmless.
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0, "fork failed");
    if pid == 0 {
        touch();
        // SAFETY: ends the child without running the parent's destructors.
        unsafe { libc::_exit(0) };
    }
    let mut status = 0;
    // SAFETY: waits for the child just forked; `status` is a valid out-pointer.
    let waited = unsafe { libc::waitpid(pid, &mut status, 0) };
    assert_eq!(waited, pid, "waitpid failed");
    libc::WIFSIGNALED(status) && libc::WTERMSIG(status) == libc::SIGSEGV
}

use crate::cpu::HostCpus;
use crate::e820::{pc_device_window, pc_memory_map, DEFAULT_KERNEL_IMAGE_BYTES};
use crate::layout::{Layout, NR_CPUS};
use crate::park::WaitQueues;
use crate::x86::{Mmu, X86PageTable};
use core::fmt;
use host::HostMemory;
use kmm_api::sync::{AtomicBool, AtomicU32, Ordering};
use kmm_api::{
    DirectMap, Error, FrameAllocator, MemoryRegion, PageOwner, PageProt, Pfn, PhysAddr, Platform,
    PreemptControl, VirtAddr, PAGE_SIZE,
};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::vec::Vec;
use tlb::Tlb;

/// What to build.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct MachineConfig {
    /// RAM in bytes (rounded down to pages); at most 4 GiB, 64 GiB with PAE.
    pub ram_bytes: u64,
    /// Use the PAE layout (the page table itself is the two-level one, so
    /// frames above 4 GiB cannot be mapped outside the direct map yet).
    pub pae: bool,
    /// CPUs, `1..NR_CPUS`: the machine adds one overflow CPU id for the
    /// threads beyond them (see [`crate::cpu`]), and every CPU id needs
    /// its kmap_local slots in the fixmap, which has `NR_CPUS` CPUs' worth.
    pub nr_cpus: usize,
}

impl Default for MachineConfig {
    /// A 2 GiB, two-CPU machine without PAE: 896 MiB lowmem, 1152 MiB highmem.
    fn default() -> Self {
        MachineConfig {
            ram_bytes: 2 << 30,
            pae: false,
            nr_cpus: 2,
        }
    }
}

/// Why a machine could not be built.
#[derive(Debug)]
pub enum SimError {
    /// The configuration has no valid layout or CPU count.
    Config(Error),
    /// The host refused the memory file or the window.
    Host(std::io::Error),
}

impl fmt::Display for SimError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SimError::Config(e) => write!(f, "invalid machine configuration: {e}"),
            SimError::Host(e) => write!(f, "host memory: {e}"),
        }
    }
}

impl std::error::Error for SimError {}

struct Inner {
    layout: Layout,
    memory_map: Vec<MemoryRegion>,
    /// The device window, `(base, bytes)`, if RAM leaves room for it.
    device_window: Option<(PhysAddr, usize)>,
    cpus: HostCpus,
    /// `wait_on` / `wake_on` (a full kmap pool's waiters park here).
    waits: WaitQueues,
    /// Lock order: after the page table's lock (the MMU hooks run under
    /// it), before nothing.
    tlb: Mutex<Tlb>,
    table_attached: AtomicBool,
    host: HostMemory,
}

impl Inner {
    fn tlb(&self) -> MutexGuard<'_, Tlb> {
        // A panic while holding the lock leaves the model consistent (each
        // method updates it last), so a poisoned lock is still usable.
        self.tlb.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// A handle on a simulated i386 machine; clones share the machine, which
/// lives until the last handle drops.
///
/// ```
/// use kmm::sim::{Machine, MachineConfig};
/// use kmm_api::{DirectMap, Pfn};
/// let m = Machine::new(MachineConfig { ram_bytes: 32 << 20, ..Default::default() })?;
/// let p = m.pfn_to_ptr(Pfn::new(0x400)).unwrap();
/// // SAFETY: a direct-mapped frame of the machine, alive while `m` is.
/// unsafe { p.as_ptr().write(7) };
/// assert_eq!(m.pfn_to_virt(Pfn::new(0x400)).unwrap().as_usize(), 0xc040_0000);
/// # Ok::<(), kmm::sim::SimError>(())
/// ```
#[derive(Clone)]
pub struct Machine {
    inner: Arc<Inner>,
}

/// The kernel page table of a simulated machine: the x86 table in
/// simulated RAM, mirrored into host mappings by the machine.
pub type SimPageTable<A> = X86PageTable<A, Machine, SimMmu>;

impl Machine {
    /// Builds the machine: RAM file, device window and its file (when RAM
    /// ends below it), window, the PC memory map (see [`crate::e820`]),
    /// and the direct map of lowmem.
    pub fn new(config: MachineConfig) -> Result<Machine, SimError> {
        if config.nr_cpus == 0 || config.nr_cpus >= NR_CPUS {
            return Err(SimError::Config(Error::BadCpuCount {
                nr_cpus: config.nr_cpus,
                max: NR_CPUS - 1,
            }));
        }
        let layout = Layout::i386(config.ram_bytes, config.pae).map_err(SimError::Config)?;
        let mut memory_map: Vec<MemoryRegion> =
            pc_memory_map(layout.ram_bytes(), DEFAULT_KERNEL_IMAGE_BYTES)
                .map_err(SimError::Config)?
                .to_vec();
        let window = pc_device_window(layout.ram_bytes());
        memory_map.extend(window);
        let window = window.map(|w| (w.start, w.len()));
        let host = HostMemory::new(layout.ram_bytes(), window).map_err(SimError::Host)?;
        // The window lies below 4 GiB, so its size fits a `usize`.
        let device_window = window.map(|(base, bytes)| (base, bytes as usize));
        let lowmem = usize::try_from(layout.lowmem_bytes()).map_err(|_| {
            SimError::Config(Error::BadPhysAddr {
                addr: layout.lowmem_limit(),
            })
        })?;
        host.map(
            layout.page_offset(),
            kmm_api::PhysAddr::new(0),
            lowmem,
            true,
        )
        .map_err(SimError::Config)?;
        Ok(Machine {
            inner: Arc::new(Inner {
                layout,
                memory_map,
                device_window,
                cpus: HostCpus::new(config.nr_cpus),
                waits: WaitQueues::new(),
                tlb: Mutex::new(Tlb::default()),
                table_attached: AtomicBool::new(false),
                host,
            }),
        })
    }

    /// The machine's layout.
    pub fn layout(&self) -> &Layout {
        &self.inner.layout
    }

    /// The e820 memory map the firmware reports, in address order: RAM,
    /// the BIOS hole and the kernel image, then the device window as a
    /// reserved entry (when the machine has one).
    pub fn memory_map(&self) -> &[MemoryRegion] {
        &self.inner.memory_map
    }

    /// The device window: its first physical address and its size in
    /// bytes, `None` when RAM reaches past its base (see
    /// [`crate::e820::pc_device_window`]). O(1).
    pub fn device_window(&self) -> Option<(PhysAddr, usize)> {
        self.inner.device_window
    }

    /// Whether `pfn` is a page of the device window. O(1).
    pub fn is_device(&self, pfn: Pfn) -> bool {
        self.inner.host.is_device(pfn.phys(), PAGE_SIZE as u64)
    }

    /// Reads device memory at `phys` into `buf`, as the device sees it:
    /// straight from the device's backing memory, no mapping involved (for
    /// tests checking what a write through a mapping delivered).
    /// [`Error::BadPhysAddr`] unless all of `[phys, phys + buf.len())` lies
    /// in the device window. O(`buf.len()`).
    pub fn read_device(&self, phys: PhysAddr, buf: &mut [u8]) -> Result<(), Error> {
        self.inner.host.read_device(phys, buf)
    }

    /// Writes `bytes` into device memory at `phys`, as the device would
    /// (for tests: what a read through a mapping must then see).
    /// [`Error::BadPhysAddr`] unless the whole range lies in the device
    /// window. O(`bytes.len()`).
    pub fn write_device(&self, phys: PhysAddr, bytes: &[u8]) -> Result<(), Error> {
        self.inner.host.write_device(phys, bytes)
    }

    /// The kernel page table, with page-table pages from `alloc` (normally
    /// the zones): the direct map of lowmem already entered (4 MiB pages),
    /// and single pages mapped anywhere in [`Layout::kernel_map_range`]. Like the hardware, the machine has one
    /// kernel half: while a table is alive a second one is refused with
    /// [`Error::AlreadyMapped`] (naming the start of that range), since
    /// two would overwrite each other's host mappings.
    ///
    /// # Safety
    ///
    /// `alloc` hands out frames of this machine's RAM (its zones, or a
    /// part of RAM the caller holds): the table writes its pages through
    /// this machine's direct map.
    pub unsafe fn kernel_page_table<A: FrameAllocator + PageOwner>(
        &self,
        alloc: A,
    ) -> Result<SimPageTable<A>, Error> {
        let range = self.inner.layout.kernel_map_range();
        let mmu = self.mmu()?;
        // SAFETY: our caller's promise: `alloc`'s frames are this machine's,
        // which `self` (the direct map) reaches.
        let table = unsafe { X86PageTable::new(alloc, self.clone(), mmu, range) }?;
        let layout = &self.inner.layout;
        // SAFETY: frames below `max_low_pfn` are lowmem, mapped by this
        // machine at `PAGE_OFFSET + phys` (its `DirectMap`): the table only
        // records that mapping.
        unsafe {
            table.map_direct(
                layout.page_offset(),
                layout.max_low_pfn().as_usize(),
                PageProt::KERNEL,
            )?;
        }
        Ok(table)
    }

    /// The machine's MMU hook for a kernel page table: one at a time
    /// ([`Error::AlreadyMapped`] while another lives); dropping it (with
    /// its table) drops every stale translation and lets the next attach.
    /// A table built over it must take its pages from this machine's RAM
    /// (which [`crate::x86::X86PageTable::for_zones`] over zones booted on
    /// this machine does).
    pub fn mmu(&self) -> Result<SimMmu, Error> {
        let attached = &self.inner.table_attached;
        if attached.swap(true, Ordering::Acquire) {
            let range = self.inner.layout.kernel_map_range();
            return Err(Error::AlreadyMapped { addr: range.0 });
        }
        // From here the flag is cleared by `SimMmu`'s drop.
        Ok(SimMmu(self.clone()))
    }

    /// TLB flushes requested so far: `flush_tlb_range` calls, whatever
    /// they covered (see [`Machine::tlb_stats`] for the pages).
    pub fn tlb_flushes(&self) -> usize {
        self.inner.tlb().stats().flushes
    }

    /// The TLB model's counters, read together: flushes, pages flushed,
    /// pages stale now, maps refused for a stale page. O(1).
    pub fn tlb_stats(&self) -> TlbStats {
        self.inner.tlb().stats()
    }

    /// Pages unmapped whose translation has not been flushed yet: each
    /// still reaches its old frame, and mapping it again is refused. O(1).
    pub fn stale_translations(&self) -> usize {
        self.inner.tlb().stats().stale_pages
    }

    /// Whether some stale translation still reaches `pfn`: for a test of
    /// a layer that promises never to reuse a frame before its flush (the
    /// machine itself allows it, as Linux's lazy purge does). O(log n).
    pub fn has_stale_translation(&self, pfn: Pfn) -> bool {
        self.inner.tlb().reaches(pfn)
    }

    /// The frame the stale translation of the page at `addr` still
    /// reaches, or `None` if that page is mapped, flushed or never was.
    /// O(log n).
    pub fn stale_translation(&self, addr: VirtAddr) -> Option<Pfn> {
        self.inner.tlb().stale_at(addr.align_down(PAGE_SIZE))
    }
}

impl fmt::Debug for Machine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Machine")
            .field("layout", &self.inner.layout)
            .field("nr_cpus", &self.inner.cpus.nr_cpus())
            .field("window", &self.inner.host.window())
            .finish()
    }
}

// SAFETY: frames below `max_low_pfn` are file pages `[0, lowmem)` mapped
// read/write at `window + PAGE_OFFSET + phys` from `new` until the last
// handle drops, so each pointer is valid for PAGE_SIZE bytes for as long as
// any handle lives, and distinct frames have distinct pointers.
// `virt_to_pfn` inverts `pfn_to_virt` exactly over that range. The page
// table's hook refuses to remap anything inside it.
unsafe impl DirectMap for Machine {
    fn pfn_to_virt(&self, pfn: Pfn) -> Option<VirtAddr> {
        let l = &self.inner.layout;
        (pfn < l.max_low_pfn())
            .then(|| VirtAddr::new(l.page_offset().as_usize() + pfn.as_usize() * PAGE_SIZE))
    }

    fn virt_to_pfn(&self, addr: VirtAddr) -> Option<Pfn> {
        let l = &self.inner.layout;
        if addr < l.page_offset() || addr >= l.high_memory() {
            return None;
        }
        Some(Pfn::new(
            (addr.as_usize() - l.page_offset().as_usize()) / PAGE_SIZE,
        ))
    }

    fn window_base(&self) -> usize {
        self.inner.host.window() as usize
    }
}

impl Platform for Machine {
    fn nr_cpus(&self) -> usize {
        self.inner.cpus.nr_cpus()
    }
    fn cpu_id(&self) -> usize {
        self.inner.cpus.cpu_id()
    }
    /// Parks the thread (see [`crate::park`]).
    fn wait_on(&self, word: &AtomicU32, seen: u32) {
        self.inner.waits.wait_on(word, seen)
    }
    fn wake_on(&self, word: &AtomicU32) {
        self.inner.waits.wake_on(word)
    }
    /// Zeroes a highmem frame (for `__GFP_ZERO`) in the RAM file itself,
    /// where a kernel would borrow a `kmap_local` slot.
    unsafe fn zero_frame(&self, pfn: Pfn) -> Result<(), Error> {
        if pfn >= self.inner.layout.max_pfn() {
            return Err(Error::PfnOutOfRange { pfn });
        }
        self.inner.host.zero(pfn.phys(), PAGE_SIZE)
    }
}

// SAFETY: `HostCpus` keeps the contract (see `crate::cpu`): an owned id
// belongs to one live thread, the overflow id to one holder at a time,
// and `on_cpu` runs work only as a CPU it holds.
unsafe impl PreemptControl for Machine {
    #[inline]
    fn get_cpu(&self) -> usize {
        self.inner.cpus.get_cpu()
    }
    #[inline]
    fn put_cpu(&self, cpu: usize) {
        self.inner.cpus.put_cpu(cpu)
    }
    fn on_cpu(&self, cpu: usize, work: &mut dyn FnMut()) -> bool {
        self.inner.cpus.on_cpu(cpu, work)
    }
}

/// The machine's MMU as its kernel page table sees it: page-table changes
/// become host mappings, and cleared entries stay reachable until flushed
/// (the TLB model in the module documentation). Made only by
/// [`Machine::kernel_page_table`], one at a time; dropping it (with its
/// table) drops every stale translation, as the teardown of the kernel
/// half, and lets the next table attach.
pub struct SimMmu(Machine);

impl Drop for SimMmu {
    fn drop(&mut self) {
        let inner = &self.0.inner;
        inner.tlb().flush_all(&inner.host);
        inner.table_attached.store(false, Ordering::Release);
    }
}

impl fmt::Debug for SimMmu {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("SimMmu").field(&self.0).finish()
    }
}

/// `pte_set` maps a RAM frame from the RAM file and a device-window page
/// from the device file; any other frame is [`Error::PfnOutOfRange`]. A
/// page whose stale translation was never flushed is
/// [`Error::StaleTlb`]. Each hook holds the TLB model's lock across its
/// host call, so a flush never unmaps a page a map is putting back.
impl Mmu for SimMmu {
    fn pte_set(&self, addr: VirtAddr, pfn: Pfn, prot: PageProt) -> Result<(), Error> {
        let inner = &self.0.inner;
        let (first, last) = inner.layout.kernel_map_range();
        if addr < first || addr > last {
            return Err(Error::BadVirtAddr { addr });
        }
        if pfn >= inner.layout.max_pfn() && !self.0.is_device(pfn) {
            return Err(Error::PfnOutOfRange { pfn });
        }
        let mut tlb = inner.tlb();
        tlb.check_map(addr)?;
        inner
            .host
            .map(addr, pfn.phys(), PAGE_SIZE, prot.contains(PageProt::WRITE))
    }

    fn pte_cleared(&self, addr: VirtAddr, pfn: Pfn) {
        // The host mapping stays: the translation is stale until flushed.
        self.0.inner.tlb().cleared(addr, pfn);
    }

    fn flush_tlb_range(&self, start: VirtAddr, end: VirtAddr) {
        let inner = &self.0.inner;
        inner.tlb().flush(&inner.host, start, end);
    }
}
