//! Unit tests of the page table over host memory: a handful of frames in
//! an aligned host buffer, directly mapped at `virt == phys`. Small and
//! syscall-free so they run under miri.

extern crate std;

use super::*;
use core::cell::Cell;
use kmm_api::sync::SpinLock;
use kmm_api::{DirectMap, FrameAllocator, GfpFlags, KernelPageTable, Order, PAGE_SIZE};
use std::alloc::{alloc_zeroed, dealloc, Layout as AllocLayout};
use std::vec::Vec;

const FRAMES: usize = 8;
const FIRST: usize = 0xf880_0000;
const LAST: usize = 0xffbf_ffff;

/// `FRAMES` page frames of host memory with a one-bit-per-frame allocator.
struct HostRam {
    base: *mut u8,
    used: SpinLock<u32>,
}

// SAFETY: `base` is an exclusive heap allocation owned by this value; all
// access to it goes through the DirectMap contract (per-frame ownership)
// and the bitmap is behind a lock.
unsafe impl Sync for HostRam {}

impl HostRam {
    fn new() -> Self {
        let layout = AllocLayout::from_size_align(FRAMES * PAGE_SIZE, PAGE_SIZE).unwrap();
        // SAFETY: the layout has a non-zero size.
        let base = unsafe { alloc_zeroed(layout) };
        assert!(!base.is_null());
        HostRam {
            base,
            used: SpinLock::new(0),
        }
    }
    fn frames_in_use(&self) -> u32 {
        self.used.lock().count_ones()
    }
    fn read_entry(&self, table: Pfn, index: usize) -> u32 {
        let ptr = self.pfn_to_ptr(table).unwrap().as_ptr().cast::<u32>();
        // SAFETY: index < 1024 stays inside the frame, which is aligned.
        unsafe { ptr.add(index).read() }
    }
}

impl Drop for HostRam {
    fn drop(&mut self) {
        let layout = AllocLayout::from_size_align(FRAMES * PAGE_SIZE, PAGE_SIZE).unwrap();
        // SAFETY: allocated in `new` with this layout.
        unsafe { dealloc(self.base, layout) }
    }
}

// SAFETY: frame `pfn < FRAMES` is bytes `[pfn * PAGE_SIZE, +PAGE_SIZE)` of
// the buffer, which lives as long as `self`; virt == phys is a bijection.
unsafe impl DirectMap for HostRam {
    fn pfn_to_virt(&self, pfn: Pfn) -> Option<VirtAddr> {
        (pfn.as_usize() < FRAMES).then(|| VirtAddr::new(pfn.as_usize() * PAGE_SIZE))
    }
    fn virt_to_pfn(&self, addr: VirtAddr) -> Option<Pfn> {
        let pfn = addr.as_usize() / PAGE_SIZE;
        (pfn < FRAMES).then(|| Pfn::new(pfn))
    }
    fn window_base(&self) -> usize {
        self.base as usize
    }
    fn virt_to_ptr(&self, addr: VirtAddr) -> *mut u8 {
        self.base.wrapping_add(addr.as_usize())
    }
}

impl FrameAllocator for HostRam {
    fn alloc_frames(&self, _gfp: GfpFlags, order: Order) -> Result<Pfn, Error> {
        let mut used = self.used.lock();
        let free = (0..FRAMES).find(|&i| *used & (1 << i) == 0);
        match free {
            Some(i) if order == Order::ZERO => {
                *used |= 1 << i;
                Ok(Pfn::new(i))
            }
            _ => Err(Error::NoMemory { order }),
        }
    }
    fn free_frames(&self, pfn: Pfn, _order: Order) -> Result<(), Error> {
        let mut used = self.used.lock();
        let bit = 1u32.checked_shl(pfn.as_usize() as u32).unwrap_or(0);
        if *used & bit == 0 {
            return Err(Error::NotAllocated { pfn });
        }
        *used &= !bit;
        Ok(())
    }
}

/// Records what the table reported, and can refuse the next `pte_set`.
#[derive(Default)]
struct Recorder {
    log: SpinLock<Vec<(bool, usize)>>,
    refuse: SpinLock<Cell<bool>>,
}

impl Mmu for Recorder {
    fn pte_set(&self, addr: VirtAddr, _pfn: Pfn, _prot: PageProt) -> Result<(), Error> {
        if self.refuse.lock().replace(false) {
            return Err(Error::NoMemory { order: Order::ZERO });
        }
        self.log.lock().push((true, addr.as_usize()));
        Ok(())
    }
    fn pte_cleared(&self, addr: VirtAddr) {
        self.log.lock().push((false, addr.as_usize()));
    }
    fn flush_tlb_range(&self, _start: VirtAddr, _end: VirtAddr) {}
}

fn table<'a>(
    ram: &'a HostRam,
    mmu: &'a Recorder,
) -> X86PageTable<&'a HostRam, &'a HostRam, &'a Recorder> {
    X86PageTable::new(ram, ram, mmu, (VirtAddr::new(FIRST), VirtAddr::new(LAST))).unwrap()
}

const HIGH_FRAME: Pfn = Pfn::new(0x7_0000);

#[test]
fn map_then_translate_gives_back_the_frame_and_protection() {
    let (ram, mmu) = (HostRam::new(), Recorder::default());
    let pt = table(&ram, &mmu);
    let addr = VirtAddr::new(FIRST + 5 * PAGE_SIZE);
    pt.map(addr, HIGH_FRAME, PageProt::KERNEL).unwrap();
    let (pfn, prot) = pt
        .translate(VirtAddr::new(addr.as_usize() + 0x123))
        .unwrap();
    assert_eq!(pfn, HIGH_FRAME);
    assert_eq!(prot, PageProt::KERNEL | PageProt::EXEC);
    assert_eq!(pt.translate(VirtAddr::new(FIRST)), None);
    assert_eq!(*mmu.log.lock(), [(true, addr.as_usize())]);
}

#[test]
fn entries_are_written_in_the_x86_two_level_format() {
    let (ram, mmu) = (HostRam::new(), Recorder::default());
    let pt = table(&ram, &mmu);
    let addr = VirtAddr::new(0xffb0_3000);
    pt.map(addr, Pfn::new(0x12345), PageProt::KERNEL_NOCACHE)
        .unwrap();
    let pde = ram.read_entry(pt.pgd(), 0xffb0_3000 >> 22);
    assert_eq!(pde & 0xfff, PteFlags::KERNPG_TABLE.bits());
    let pte = ram.read_entry(Pfn::new((pde >> 12) as usize), (0xffb0_3000 >> 12) & 0x3ff);
    assert_eq!(
        pte,
        0x1234_5000 | 0x001 | 0x002 | 0x010 | 0x020 | 0x040 | 0x100
    );
}

#[test]
fn map_refuses_an_existing_mapping_and_keeps_it() {
    let (ram, mmu) = (HostRam::new(), Recorder::default());
    let pt = table(&ram, &mmu);
    let addr = VirtAddr::new(FIRST);
    pt.map(addr, Pfn::new(1), PageProt::KERNEL).unwrap();
    assert_eq!(
        pt.map(addr, Pfn::new(2), PageProt::KERNEL_RO),
        Err(Error::AlreadyMapped { addr })
    );
    assert_eq!(pt.translate(addr).map(|(p, _)| p), Some(Pfn::new(1)));
}

#[test]
fn unmap_returns_the_frame_and_the_page_to_flush() {
    let (ram, mmu) = (HostRam::new(), Recorder::default());
    let pt = table(&ram, &mmu);
    let addr = VirtAddr::new(FIRST + PAGE_SIZE);
    pt.map(addr, HIGH_FRAME, PageProt::KERNEL).unwrap();
    let (pfn, flush) = pt.unmap(addr).unwrap();
    assert_eq!(pfn, HIGH_FRAME);
    assert_eq!(
        flush.range(),
        (addr, VirtAddr::new(addr.as_usize() + PAGE_SIZE))
    );
    flush.flush(&pt);
    assert_eq!(pt.translate(addr), None);
    assert_eq!(pt.unmap(addr), Err(Error::NotMapped { addr }));
    assert_eq!(mmu.log.lock().last(), Some(&(false, addr.as_usize())));
}

#[test]
fn addresses_outside_the_range_or_unaligned_are_refused() {
    let (ram, mmu) = (HostRam::new(), Recorder::default());
    let pt = table(&ram, &mmu);
    for bad in [FIRST - PAGE_SIZE, FIRST + 1, LAST + 1, 0xc000_0000] {
        let addr = VirtAddr::new(bad);
        assert_eq!(
            pt.map(addr, Pfn::new(1), PageProt::KERNEL),
            Err(Error::BadVirtAddr { addr })
        );
        assert_eq!(pt.unmap(addr).unwrap_err(), Error::BadVirtAddr { addr });
    }
    assert_eq!(pt.mapped_pages(), 0);
}

#[test]
fn frames_beyond_32_bits_of_physical_address_are_refused() {
    let (ram, mmu) = (HostRam::new(), Recorder::default());
    let pt = table(&ram, &mmu);
    let too_high = Pfn::new(1 << 20);
    assert_eq!(
        pt.map(VirtAddr::new(FIRST), too_high, PageProt::KERNEL),
        Err(Error::BadPhysAddr {
            addr: too_high.phys()
        })
    );
}

#[test]
fn one_pte_page_serves_each_4_mib_and_populate_preallocates() {
    let (ram, mmu) = (HostRam::new(), Recorder::default());
    let pt = table(&ram, &mmu);
    assert_eq!(pt.table_pages(), 1);
    pt.map(VirtAddr::new(FIRST), Pfn::new(1), PageProt::KERNEL)
        .unwrap();
    pt.map(
        VirtAddr::new(FIRST + PAGE_SIZE),
        Pfn::new(1),
        PageProt::KERNEL,
    )
    .unwrap();
    assert_eq!(pt.table_pages(), 2);
    pt.populate(VirtAddr::new(0xff80_0000), VirtAddr::new(LAST))
        .unwrap();
    assert_eq!(pt.table_pages(), 3);
    assert_eq!(ram.frames_in_use(), 3);
}

#[test]
fn a_refused_mirror_leaves_the_entry_clear() {
    let (ram, mmu) = (HostRam::new(), Recorder::default());
    let pt = table(&ram, &mmu);
    mmu.refuse.lock().set(true);
    let addr = VirtAddr::new(FIRST);
    assert!(pt.map(addr, Pfn::new(1), PageProt::KERNEL).is_err());
    assert_eq!(pt.translate(addr), None);
    pt.map(addr, Pfn::new(1), PageProt::KERNEL).unwrap();
}

#[test]
fn running_out_of_table_pages_is_an_error_not_a_panic() {
    let (ram, mmu) = (HostRam::new(), Recorder::default());
    let pt = table(&ram, &mmu);
    let mut result = Ok(());
    for i in 0..=FRAMES {
        result = pt.map(
            VirtAddr::new(FIRST + (i << 22)),
            Pfn::new(1),
            PageProt::KERNEL,
        );
    }
    assert_eq!(result, Err(Error::NoMemory { order: Order::ZERO }));
}

#[test]
fn drop_reports_every_mapping_cleared_and_frees_the_table_pages() {
    let (ram, mmu) = (HostRam::new(), Recorder::default());
    {
        let pt = table(&ram, &mmu);
        pt.map(VirtAddr::new(FIRST), Pfn::new(1), PageProt::KERNEL)
            .unwrap();
        pt.map(VirtAddr::new(0xffb0_0000), Pfn::new(2), PageProt::KERNEL)
            .unwrap();
        assert_eq!(ram.frames_in_use(), 3);
    }
    assert_eq!(ram.frames_in_use(), 0);
    let cleared = mmu.log.lock().iter().filter(|(set, _)| !set).count();
    assert_eq!(cleared, 2);
}

const DIRECT: usize = 0xc000_0000;

#[test]
fn the_direct_map_uses_4_mib_pages_and_a_pte_page_for_the_tail() {
    let (ram, mmu) = (HostRam::new(), Recorder::default());
    let pt = table(&ram, &mmu);
    let frames = 2 * PTRS_PER_PTE + 3;
    pt.map_direct(VirtAddr::new(DIRECT), frames, PageProt::KERNEL)
        .unwrap();
    let pde = ram.read_entry(pt.pgd(), DIRECT >> 22);
    assert_eq!(pde & PteFlags::PSE.bits(), PteFlags::PSE.bits());
    assert_eq!(pde >> 22, 0);
    let (pfn, prot) = pt.translate(VirtAddr::new(DIRECT + 0x40_1234)).unwrap();
    assert_eq!(pfn, Pfn::new(0x401));
    assert!(prot.contains(PageProt::WRITE));
    let tail = VirtAddr::new(DIRECT + (2 * PTRS_PER_PTE + 2) * PAGE_SIZE);
    assert_eq!(
        pt.translate(tail).map(|(p, _)| p),
        Some(Pfn::new(2 * PTRS_PER_PTE + 2))
    );
    let past = VirtAddr::new(DIRECT + frames * PAGE_SIZE);
    assert_eq!(pt.translate(past), None);
    assert_eq!(pt.table_pages(), 2);
    assert_eq!(pt.mapped_pages(), 0);
    assert!(mmu.log.lock().is_empty(), "the machine maps lowmem itself");
}

#[test]
fn the_direct_map_must_be_aligned_disjoint_and_entered_once() {
    let (ram, mmu) = (HostRam::new(), Recorder::default());
    let pt = table(&ram, &mmu);
    let kernel = PageProt::KERNEL;
    let at = VirtAddr::new(DIRECT);
    assert!(pt
        .map_direct(VirtAddr::new(DIRECT + PAGE_SIZE), 1, kernel)
        .is_err());
    assert!(pt.map_direct(at, 0, kernel).is_err());
    // Reaching into the single-page range's 4 MiB regions is refused.
    let too_many = (FIRST - DIRECT) / PAGE_SIZE + 1;
    assert!(pt.map_direct(at, too_many, kernel).is_err());
    pt.map_direct(at, PTRS_PER_PTE, kernel).unwrap();
    assert_eq!(
        pt.map_direct(at, 1, kernel),
        Err(Error::AlreadyMapped { addr: at })
    );
    assert_eq!(ram.frames_in_use(), 1);
    assert_eq!(
        pt.map(at, Pfn::new(1), kernel),
        Err(Error::BadVirtAddr { addr: at })
    );
    assert_eq!(pt.unmap(at).unwrap_err(), Error::BadVirtAddr { addr: at });
}

#[test]
fn drop_leaves_the_direct_map_to_the_machine_and_frees_its_pte_page() {
    let (ram, mmu) = (HostRam::new(), Recorder::default());
    {
        let pt = table(&ram, &mmu);
        pt.map_direct(VirtAddr::new(DIRECT), PTRS_PER_PTE + 1, PageProt::KERNEL)
            .unwrap();
        pt.map(VirtAddr::new(FIRST), Pfn::new(1), PageProt::KERNEL)
            .unwrap();
        assert_eq!(ram.frames_in_use(), 3);
    }
    assert_eq!(ram.frames_in_use(), 0);
    let cleared: Vec<_> = mmu
        .log
        .lock()
        .iter()
        .filter(|(set, _)| !set)
        .map(|e| e.1)
        .collect();
    assert_eq!(cleared, [FIRST]);
}
