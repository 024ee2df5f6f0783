//! Unit tests of the page table over host memory: a handful of frames in
//! an aligned host buffer, directly mapped at `virt == phys`. Small and
//! syscall-free so they run under miri.
//!
//! The MMU hook is a [`Recorder`], which mirrors nothing: a mapping the
//! table makes is only an entry in its tables, and no test reaches a frame
//! through a mapped address. So the tests may map frames they do not hold
//! (including frames past the end of [`HostRam`]) and enter a direct map
//! at an address that is not `HostRam`'s: nothing is ever dereferenced
//! through those entries, which is what the `unsafe` contracts of `map`,
//! `unmap` and `map_direct` protect.

extern crate std;

use super::*;
use core::cell::Cell;
use kmm_api::sync::SpinLock;
use kmm_api::{
    AllocatorId, DirectMap, FrameAllocator, GfpFlags, KernelPageTable, Order, OwnerTag, OwnerWord,
    PageOwner, Pages, GFP_KERNEL, PAGE_SIZE,
};
use std::alloc::{alloc_zeroed, dealloc, Layout as AllocLayout};
use std::vec::Vec;

const FRAMES: usize = 8;
const FIRST: usize = 0xf880_0000;
const LAST: usize = 0xffbf_ffff;

/// Which frames are held and the owner word of each.
struct Held {
    /// Bit `i` set: frame `i` is held.
    used: u32,
    /// The owner word of each frame; `NONE` when handed out.
    words: [OwnerWord; FRAMES],
    /// Frees refused so far.
    refused: usize,
}

/// `FRAMES` page frames of host memory with a one-bit-per-frame allocator
/// and an owner word per frame.
struct HostRam {
    base: *mut u8,
    held: SpinLock<Held>,
    id: AllocatorId,
}

// SAFETY: `base` is an exclusive heap allocation owned by this value; all
// access to it goes through the DirectMap contract (per-frame ownership)
// and the bookkeeping is behind a lock.
unsafe impl Sync for HostRam {}

impl HostRam {
    fn new() -> Self {
        let layout = AllocLayout::from_size_align(FRAMES * PAGE_SIZE, PAGE_SIZE).unwrap();
        // SAFETY: the layout has a non-zero size.
        let base = unsafe { alloc_zeroed(layout) };
        assert!(!base.is_null());
        HostRam {
            base,
            held: SpinLock::new(Held {
                used: 0,
                words: [OwnerWord::NONE; FRAMES],
                refused: 0,
            }),
            id: AllocatorId::new().unwrap(),
        }
    }
    fn frames_in_use(&self) -> u32 {
        self.held.lock().used.count_ones()
    }
    fn held_frames(&self) -> Vec<Pfn> {
        let used = self.held.lock().used;
        (0..FRAMES)
            .filter(|&i| used & (1 << i) != 0)
            .map(Pfn::new)
            .collect()
    }
    fn refused_frees(&self) -> usize {
        self.held.lock().refused
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

// SAFETY: a frame is handed out only while its bit is clear, and the bit is
// set under the same lock before the one handle for it is made; it is
// cleared only by a free of a handle carrying this allocator's id, so no
// frame is handed out twice. Blocks are single frames, so none overlap.
unsafe impl FrameAllocator for HostRam {
    fn alloc_frames(&self, _gfp: GfpFlags, order: Order) -> Result<Pages, Error> {
        let mut held = self.held.lock();
        let free = (0..FRAMES).find(|&i| held.used & (1 << i) == 0);
        match free {
            Some(i) if order == Order::ZERO => {
                held.used |= 1 << i;
                held.words[i] = OwnerWord::NONE;
                // SAFETY: the frame's bit was clear (nobody held it) and is
                // set now: this is its one handle until it is freed.
                Ok(unsafe { Pages::from_raw(Pfn::new(i), order, self.id) })
            }
            _ => Err(Error::NoMemory { order }),
        }
    }
    fn free_frames(&self, pages: Pages) -> Result<(), Error> {
        let mut held = self.held.lock();
        let foreign = pages.allocator() != self.id;
        let (pfn, order) = pages.into_raw();
        let i = pfn.as_usize();
        let result = if foreign {
            Err(Error::Foreign { pfn })
        } else if i >= FRAMES || held.used & (1 << i) == 0 {
            Err(Error::NotAllocated { pfn })
        } else if order != Order::ZERO {
            Err(Error::WrongOrder {
                pfn,
                allocated: Order::ZERO,
                freed: order,
            })
        } else if !held.words[i].is_none() {
            Err(Error::Owned { pfn })
        } else {
            held.used &= !(1 << i);
            Ok(())
        };
        if result.is_err() {
            held.refused += 1;
        }
        result
    }
    fn allocator_id(&self) -> AllocatorId {
        self.id
    }
}

// SAFETY: `words[i]` is written only by `set_owner` (for a held frame) and
// reset to `NONE` when the frame is handed out, both under the lock;
// `owner` reports it only while the frame's bit is set.
unsafe impl PageOwner for HostRam {
    fn owner(&self, pfn: Pfn) -> Option<OwnerWord> {
        let held = self.held.lock();
        let i = pfn.as_usize();
        (i < FRAMES && held.used & (1 << i) != 0).then(|| held.words[i])
    }
    unsafe fn set_owner(&self, pfn: Pfn, word: OwnerWord) -> Result<(), Error> {
        let mut held = self.held.lock();
        let i = pfn.as_usize();
        if i >= FRAMES || held.used & (1 << i) == 0 {
            return Err(Error::NotAllocated { pfn });
        }
        held.words[i] = word;
        Ok(())
    }
    unsafe fn replace_owner(
        &self,
        pfn: Pfn,
        current: OwnerWord,
        new: OwnerWord,
    ) -> Result<bool, Error> {
        let mut held = self.held.lock();
        let i = pfn.as_usize();
        if i >= FRAMES || held.used & (1 << i) == 0 {
            return Err(Error::NotAllocated { pfn });
        }
        let matches = held.words[i] == current;
        if matches {
            held.words[i] = new;
        }
        Ok(matches)
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
    fn pte_cleared(&self, addr: VirtAddr, _pfn: Pfn) {
        self.log.lock().push((false, addr.as_usize()));
    }
    fn flush_tlb_range(&self, _start: VirtAddr, _end: VirtAddr) {}
}

fn table<'a>(
    ram: &'a HostRam,
    mmu: &'a Recorder,
) -> X86PageTable<&'a HostRam, &'a HostRam, &'a Recorder> {
    // SAFETY: `HostRam` is both the allocator and the direct map of its
    // own frames.
    unsafe { X86PageTable::new(ram, ram, mmu, (VirtAddr::new(FIRST), VirtAddr::new(LAST))) }
        .unwrap()
}

const HIGH_FRAME: Pfn = Pfn::new(0x7_0000);

/// The word the table marks its pages with.
const PAGE_TABLE_WORD: Option<OwnerWord> = OwnerWord::new(OwnerTag::PageTable, 0);

/// The page directory and every PTE page its entries point at, read from
/// the entries themselves.
fn table_page_frames(ram: &HostRam, pgd: Pfn) -> Vec<Pfn> {
    let mut frames = std::vec![pgd];
    for i in 0..PTRS_PER_PGD {
        let pde = ram.read_entry(pgd, i);
        if pde & 1 != 0 && pde & PteFlags::PSE.bits() == 0 {
            frames.push(Pfn::new((pde >> 12) as usize));
        }
    }
    frames.sort();
    frames
}

#[test]
fn map_then_translate_gives_back_the_frame_and_protection() {
    let (ram, mmu) = (HostRam::new(), Recorder::default());
    let pt = table(&ram, &mmu);
    let addr = VirtAddr::new(FIRST + 5 * PAGE_SIZE);
    // SAFETY: `addr` is in the table's range and no other mapping uses it;
    // the Recorder mirrors nothing, so nothing reaches the frame through it.
    unsafe { pt.map(addr, HIGH_FRAME, PageProt::KERNEL) }.unwrap();
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
    // SAFETY: a free page of the range; the mapping is only read back as
    // an entry, never dereferenced (the Recorder mirrors nothing).
    unsafe { pt.map(addr, Pfn::new(0x12345), PageProt::KERNEL_NOCACHE) }.unwrap();
    let pde = ram.read_entry(pt.pgd(), 0xffb0_3000 >> 22);
    assert_eq!(pde & 0xfff, PteFlags::KERNPG_TABLE.bits());
    let pte = ram.read_entry(Pfn::new((pde >> 12) as usize), (0xffb0_3000 >> 12) & 0x3ff);
    assert_eq!(
        pte,
        0x1234_5000 | 0x001 | 0x002 | 0x008 | 0x010 | 0x020 | 0x040 | 0x100
    );
}

#[test]
fn map_refuses_an_existing_mapping_and_keeps_it() {
    let (ram, mmu) = (HostRam::new(), Recorder::default());
    let pt = table(&ram, &mmu);
    let addr = VirtAddr::new(FIRST);
    // SAFETY: a free page of the range; nothing dereferences it (the
    // Recorder mirrors nothing).
    unsafe { pt.map(addr, Pfn::new(1), PageProt::KERNEL) }.unwrap();
    assert_eq!(
        // SAFETY: the second map is the refusal under test; had it
        // succeeded, still nothing would dereference the page.
        unsafe { pt.map(addr, Pfn::new(2), PageProt::KERNEL_RO) },
        Err(Error::AlreadyMapped { addr })
    );
    assert_eq!(pt.translate(addr).map(|(p, _)| p), Some(Pfn::new(1)));
}

#[test]
fn unmap_returns_the_frame_and_the_page_to_flush() {
    let (ram, mmu) = (HostRam::new(), Recorder::default());
    let pt = table(&ram, &mmu);
    let addr = VirtAddr::new(FIRST + PAGE_SIZE);
    // SAFETY: a free page of the range; nothing dereferences it (the
    // Recorder mirrors nothing).
    unsafe { pt.map(addr, HIGH_FRAME, PageProt::KERNEL) }.unwrap();
    // SAFETY: this test made the mapping and nothing uses it.
    let (pfn, flush) = unsafe { pt.unmap(addr) }.unwrap();
    assert_eq!(pfn, HIGH_FRAME);
    assert_eq!(
        flush.range(),
        (addr, VirtAddr::new(addr.as_usize() + PAGE_SIZE))
    );
    flush.flush(&pt);
    assert_eq!(pt.translate(addr), None);
    // SAFETY: nothing is mapped there any more; the refusal is under test.
    assert_eq!(unsafe { pt.unmap(addr) }, Err(Error::NotMapped { addr }));
    assert_eq!(mmu.log.lock().last(), Some(&(false, addr.as_usize())));
}

#[test]
fn addresses_outside_the_range_or_unaligned_are_refused() {
    let (ram, mmu) = (HostRam::new(), Recorder::default());
    let pt = table(&ram, &mmu);
    for bad in [FIRST - PAGE_SIZE, FIRST + 1, LAST + 1, 0xc000_0000] {
        let addr = VirtAddr::new(bad);
        assert_eq!(
            // SAFETY: a bad address, whose refusal is under test; nothing
            // is mapped or dereferenced.
            unsafe { pt.map(addr, Pfn::new(1), PageProt::KERNEL) },
            Err(Error::BadVirtAddr { addr })
        );
        assert_eq!(
            // SAFETY: as above: refused, nothing removed.
            unsafe { pt.unmap(addr) }.unwrap_err(),
            Error::BadVirtAddr { addr }
        );
    }
    assert_eq!(pt.mapped_pages(), 0);
}

#[test]
fn frames_beyond_32_bits_of_physical_address_are_refused() {
    let (ram, mmu) = (HostRam::new(), Recorder::default());
    let pt = table(&ram, &mmu);
    let too_high = Pfn::new(1 << 20);
    assert_eq!(
        // SAFETY: a frame the format cannot name, whose refusal is under
        // test; nothing is mapped or dereferenced.
        unsafe { pt.map(VirtAddr::new(FIRST), too_high, PageProt::KERNEL) },
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
    // SAFETY: free pages of the range; nothing dereferences them (the
    // Recorder mirrors nothing).
    unsafe {
        pt.map(VirtAddr::new(FIRST), Pfn::new(1), PageProt::KERNEL)
            .unwrap();
        pt.map(
            VirtAddr::new(FIRST + PAGE_SIZE),
            Pfn::new(1),
            PageProt::KERNEL,
        )
        .unwrap();
    }
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
    // SAFETY: a free page of the range; nothing dereferences it (the
    // Recorder mirrors nothing, and refuses this first one).
    assert!(unsafe { pt.map(addr, Pfn::new(1), PageProt::KERNEL) }.is_err());
    assert_eq!(pt.translate(addr), None);
    // SAFETY: as above; the page is still free after the refusal.
    unsafe { pt.map(addr, Pfn::new(1), PageProt::KERNEL) }.unwrap();
}

#[test]
fn running_out_of_table_pages_is_an_error_not_a_panic() {
    let (ram, mmu) = (HostRam::new(), Recorder::default());
    let pt = table(&ram, &mmu);
    let mut result = Ok(());
    for i in 0..=FRAMES {
        // SAFETY: a different free page of the range each time; nothing
        // dereferences it (the Recorder mirrors nothing).
        result = unsafe {
            pt.map(
                VirtAddr::new(FIRST + (i << 22)),
                Pfn::new(1),
                PageProt::KERNEL,
            )
        };
    }
    assert_eq!(result, Err(Error::NoMemory { order: Order::ZERO }));
}

#[test]
fn drop_reports_every_mapping_cleared_and_frees_the_table_pages() {
    let (ram, mmu) = (HostRam::new(), Recorder::default());
    {
        let pt = table(&ram, &mmu);
        // SAFETY: free pages of the range; nothing dereferences them (the
        // Recorder mirrors nothing).
        unsafe {
            pt.map(VirtAddr::new(FIRST), Pfn::new(1), PageProt::KERNEL)
                .unwrap();
            pt.map(VirtAddr::new(0xffb0_0000), Pfn::new(2), PageProt::KERNEL)
                .unwrap();
        }
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
    // SAFETY: the entries are only read back (by `translate` and
    // `read_entry`); the Recorder mirrors nothing and no test dereferences
    // an address at `DIRECT`, so no frame becomes reachable there.
    unsafe { pt.map_direct(VirtAddr::new(DIRECT), frames, PageProt::KERNEL) }.unwrap();
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
    // SAFETY: bad ranges whose refusal is under test, and one accepted
    // range whose entries nothing dereferences (the Recorder mirrors
    // nothing).
    unsafe {
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
    }
    assert_eq!(ram.frames_in_use(), 1);
    assert_eq!(
        // SAFETY: the direct map is outside the single-page range, so this
        // is refused (under test); nothing is mapped or dereferenced.
        unsafe { pt.map(at, Pfn::new(1), kernel) },
        Err(Error::BadVirtAddr { addr: at })
    );
    assert_eq!(
        // SAFETY: refused for the same reason; nothing is removed.
        unsafe { pt.unmap(at) }.unwrap_err(),
        Error::BadVirtAddr { addr: at }
    );
}

#[test]
fn drop_leaves_the_direct_map_to_the_machine_and_frees_its_pte_page() {
    let (ram, mmu) = (HostRam::new(), Recorder::default());
    {
        let pt = table(&ram, &mmu);
        // SAFETY: entries nothing dereferences (the Recorder mirrors
        // nothing), at a free page of the range for `map`.
        unsafe {
            pt.map_direct(VirtAddr::new(DIRECT), PTRS_PER_PTE + 1, PageProt::KERNEL)
                .unwrap();
            pt.map(VirtAddr::new(FIRST), Pfn::new(1), PageProt::KERNEL)
                .unwrap();
        }
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

#[test]
fn page_table_pages_carry_the_page_table_owner_word_while_the_table_lives() {
    let (ram, mmu) = (HostRam::new(), Recorder::default());
    let pt = table(&ram, &mmu);
    assert!(PAGE_TABLE_WORD.is_some());
    assert_eq!(ram.owner(pt.pgd()), PAGE_TABLE_WORD);
    // A PTE page from `map`, one from `populate`, and the direct map's
    // tail PTE page.
    // SAFETY: free pages of the range and direct-map entries, none of which
    // anything dereferences (the Recorder mirrors nothing).
    unsafe {
        pt.map(VirtAddr::new(FIRST), HIGH_FRAME, PageProt::KERNEL)
            .unwrap();
        pt.map_direct(VirtAddr::new(DIRECT), PTRS_PER_PTE + 1, PageProt::KERNEL)
            .unwrap();
    }
    pt.populate(VirtAddr::new(0xff80_0000), VirtAddr::new(LAST))
        .unwrap();
    let pages = table_page_frames(&ram, pt.pgd());
    assert_eq!(pages.len(), 4);
    assert_eq!(pages.len(), pt.table_pages());
    // The table holds exactly its pages, and each carries the word.
    assert_eq!(ram.held_frames(), pages);
    for &pfn in &pages {
        assert_eq!(ram.owner(pfn), PAGE_TABLE_WORD, "{pfn:?}");
    }
    // Unmapping keeps the PTE page, and its word.
    // SAFETY: this test made the mapping and nothing uses it.
    let (_, flush) = unsafe { pt.unmap(VirtAddr::new(FIRST)) }.unwrap();
    flush.flush(&pt);
    assert_eq!(table_page_frames(&ram, pt.pgd()), pages);
    for &pfn in &pages {
        assert_eq!(ram.owner(pfn), PAGE_TABLE_WORD, "{pfn:?}");
    }
}

#[test]
fn dropping_the_table_gives_back_every_page_table_page_with_its_owner_word_cleared() {
    let (ram, mmu) = (HostRam::new(), Recorder::default());
    // A frame the test holds itself, so "in use" does not start at zero.
    let mine = ram.alloc_frames(GFP_KERNEL, Order::ZERO).unwrap();
    let before = ram.frames_in_use();
    let pages = {
        let pt = table(&ram, &mmu);
        // SAFETY: free pages of the range and direct-map entries, none of
        // which anything dereferences (the Recorder mirrors nothing).
        unsafe {
            pt.map(VirtAddr::new(FIRST), HIGH_FRAME, PageProt::KERNEL)
                .unwrap();
            pt.map(VirtAddr::new(0xffb0_0000), HIGH_FRAME, PageProt::KERNEL)
                .unwrap();
            pt.map_direct(VirtAddr::new(DIRECT), PTRS_PER_PTE + 1, PageProt::KERNEL)
                .unwrap();
        }
        let pages = table_page_frames(&ram, pt.pgd());
        assert_eq!(pages.len(), 4);
        assert_eq!(ram.frames_in_use(), before + 4);
        pages
    };
    // Every page came back: the double refuses a frame whose word is still
    // set, so an accepted free is one whose word the table cleared.
    assert_eq!(ram.frames_in_use(), before);
    assert_eq!(ram.refused_frees(), 0);
    for &pfn in &pages {
        assert_eq!(ram.owner(pfn), None, "{pfn:?} still held");
    }
    // The test's own frame was left alone.
    assert_eq!(ram.owner(mine.pfn()), Some(OwnerWord::NONE));
    ram.free_frames(mine).unwrap();
    assert_eq!(ram.frames_in_use(), 0);
}

#[test]
fn the_allocator_refuses_a_page_table_page_while_the_table_holds_it() {
    let (ram, mmu) = (HostRam::new(), Recorder::default());
    let pt = table(&ram, &mmu);
    let pgd = pt.pgd();
    // SAFETY: deliberately outside `from_raw`'s contract: the table holds
    // this frame. The free below is the refusal under test: the double
    // refuses a frame whose owner word is set and changes nothing, so the
    // handle is used up without freeing anything.
    let stolen = unsafe { Pages::from_raw(pgd, Order::ZERO, ram.allocator_id()) };
    assert_eq!(ram.free_frames(stolen), Err(Error::Owned { pfn: pgd }));
    assert_eq!(ram.owner(pgd), PAGE_TABLE_WORD);
    // The table keeps working on the page directory it still holds.
    let addr = VirtAddr::new(FIRST);
    // SAFETY: a free page of the range; nothing dereferences it (the
    // Recorder mirrors nothing).
    unsafe { pt.map(addr, HIGH_FRAME, PageProt::KERNEL) }.unwrap();
    assert_eq!(pt.translate(addr).map(|(p, _)| p), Some(HIGH_FRAME));
    assert_eq!(pt.table_pages(), 2);
    drop(pt);
    assert_eq!(ram.frames_in_use(), 0);
    assert_eq!(ram.refused_frees(), 1);
}
