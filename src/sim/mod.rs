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
//!   table's [`Mmu`]): `map` maps the frame's file page at that address,
//!   `unmap` turns the page back into an inaccessible reservation.
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
//! Never: maps anything outside the window, maps a frame beyond RAM, or
//! lets the page table's hook touch the direct map (`pte_set` refuses
//! addresses outside [`Layout::kernel_map_range`]). Dropping the last
//! handle unmaps the window and closes the RAM file.

mod host;
#[cfg(test)]
mod tests;

use crate::cpu::HostCpus;
use crate::e820::{pc_memory_map, DEFAULT_KERNEL_IMAGE_BYTES};
use crate::layout::{Layout, NR_CPUS};
use crate::x86::{Mmu, X86PageTable};
use core::fmt;
use host::HostMemory;
use kmm_api::sync::{AtomicBool, AtomicUsize, Ordering};
use kmm_api::{
    DirectMap, Error, FrameAllocator, MemoryRegion, PageOwner, PageProt, Pfn, Platform,
    PreemptControl, VirtAddr, PAGE_SIZE,
};
use std::sync::Arc;

/// What to build.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct MachineConfig {
    /// RAM in bytes (rounded down to pages); at most 4 GiB, 64 GiB with PAE.
    pub ram_bytes: u64,
    /// Use the PAE layout (the page table itself is the two-level one, so
    /// frames above 4 GiB cannot be mapped outside the direct map yet).
    pub pae: bool,
    /// CPUs, `1..=NR_CPUS`.
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
    memory_map: [MemoryRegion; 4],
    cpus: HostCpus,
    tlb_flushes: AtomicUsize,
    table_attached: AtomicBool,
    host: HostMemory,
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
    /// Builds the machine: RAM file, window, the PC memory map (see
    /// [`crate::e820`]), and the direct map of lowmem.
    pub fn new(config: MachineConfig) -> Result<Machine, SimError> {
        if config.nr_cpus == 0 || config.nr_cpus > NR_CPUS {
            return Err(SimError::Config(Error::SizeTooLarge {
                bytes: config.nr_cpus,
            }));
        }
        let layout = Layout::i386(config.ram_bytes, config.pae).map_err(SimError::Config)?;
        let memory_map = pc_memory_map(layout.ram_bytes(), DEFAULT_KERNEL_IMAGE_BYTES)
            .map_err(SimError::Config)?;
        let host = HostMemory::new(layout.ram_bytes()).map_err(SimError::Host)?;
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
                cpus: HostCpus::new(config.nr_cpus),
                tlb_flushes: AtomicUsize::new(0),
                table_attached: AtomicBool::new(false),
                host,
            }),
        })
    }

    /// The machine's layout.
    pub fn layout(&self) -> &Layout {
        &self.inner.layout
    }

    /// The e820 memory map the firmware reports.
    pub fn memory_map(&self) -> &[MemoryRegion] {
        &self.inner.memory_map
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
        let attached = &self.inner.table_attached;
        if attached.swap(true, Ordering::Acquire) {
            return Err(Error::AlreadyMapped { addr: range.0 });
        }
        // From here the flag is cleared by `SimMmu`'s drop, whether `new`
        // fails (dropping its arguments) or the table drops later.
        // SAFETY: our caller's promise: `alloc`'s frames are this machine's,
        // which `self` (the direct map) reaches.
        let table = unsafe { X86PageTable::new(alloc, self.clone(), SimMmu(self.clone()), range) }?;
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

    /// TLB flushes requested so far (a simulated TLB has nothing to drop,
    /// but the count shows whether callers flush).
    pub fn tlb_flushes(&self) -> usize {
        self.inner.tlb_flushes.load(Ordering::Relaxed)
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
/// become host mappings. Made only by [`Machine::kernel_page_table`], one at
/// a time; dropping it (with its table) lets the next table attach.
pub struct SimMmu(Machine);

impl Drop for SimMmu {
    fn drop(&mut self) {
        self.0.inner.table_attached.store(false, Ordering::Release);
    }
}

impl fmt::Debug for SimMmu {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("SimMmu").field(&self.0).finish()
    }
}

impl Mmu for SimMmu {
    fn pte_set(&self, addr: VirtAddr, pfn: Pfn, prot: PageProt) -> Result<(), Error> {
        let inner = &self.0.inner;
        let (first, last) = inner.layout.kernel_map_range();
        if addr < first || addr > last {
            return Err(Error::BadVirtAddr { addr });
        }
        if pfn >= inner.layout.max_pfn() {
            return Err(Error::PfnOutOfRange { pfn });
        }
        inner
            .host
            .map(addr, pfn.phys(), PAGE_SIZE, prot.contains(PageProt::WRITE))
    }

    fn pte_cleared(&self, addr: VirtAddr) {
        // `pte_set` admitted this address, so the window accepts it.
        let unmapped = self.0.inner.host.unmap(addr, PAGE_SIZE);
        debug_assert!(unmapped.is_ok(), "unmap of {addr} refused");
    }

    fn flush_tlb_range(&self, _start: VirtAddr, _end: VirtAddr) {
        self.0.inner.tlb_flushes.fetch_add(1, Ordering::Relaxed);
    }
}
