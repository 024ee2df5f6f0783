//! The simulated machine on real host memory: mappings share bytes, unmapped
//! and flushed addresses fault, the page table is mirrored, and drop
//! releases the host. The TLB model has its own file (`tlb`), the device
//! window too (`device`); the helpers here serve all three.
//!
//! Most tests build a bare [`Machine`] with no zones: its RAM has no other
//! user, so a test owns every frame outside the [`Frames`] pool and may map
//! it. The last test boots the whole manager, to check the page table
//! against the real zones.

use super::*;
use crate::MemoryManager;
use kmm_api::sync::SpinLock;
use kmm_api::{
    AllocatorId, GfpFlags, KernelPageTable, Order, OwnerTag, OwnerWord, Pages, GFP_KERNEL,
};
use std::vec::Vec;

mod device;
mod tlb;

const MIB: u64 = 1 << 20;

/// The free frames of the pool and the held ones with their owner words.
struct Pool {
    free: Vec<Pfn>,
    held: Vec<(Pfn, OwnerWord)>,
}

/// A few lowmem frames for page-table pages, before any zone exists.
struct Frames {
    pool: SpinLock<Pool>,
    id: AllocatorId,
}

impl Frames {
    fn new() -> Self {
        Frames {
            pool: SpinLock::new(Pool {
                free: (0x800..0x810).map(Pfn::new).collect(),
                held: Vec::new(),
            }),
            id: AllocatorId::new().unwrap(),
        }
    }
}

// SAFETY: a frame moves from `free` to `held` under the lock as its one
// handle is made, and back only when a handle with this allocator's id is
// freed, so no frame is handed out twice; blocks are single frames.
unsafe impl FrameAllocator for Frames {
    fn alloc_frames(&self, _gfp: GfpFlags, order: Order) -> Result<Pages, Error> {
        let mut pool = self.pool.lock();
        if order != Order::ZERO {
            return Err(Error::NoMemory { order });
        }
        let pfn = pool.free.pop().ok_or(Error::NoMemory { order })?;
        pool.held.push((pfn, OwnerWord::NONE));
        // SAFETY: the frame just left the free list and is held by the
        // handle made here alone.
        Ok(unsafe { Pages::from_raw(pfn, order, self.id) })
    }
    fn free_frames(&self, pages: Pages) -> Result<(), Error> {
        let mut pool = self.pool.lock();
        if pages.allocator() != self.id {
            return Err(Error::Foreign { pfn: pages.pfn() });
        }
        let (pfn, order) = pages.into_raw();
        let Some(i) = pool.held.iter().position(|&(p, _)| p == pfn) else {
            return Err(Error::NotAllocated { pfn });
        };
        if order != Order::ZERO {
            return Err(Error::WrongOrder {
                pfn,
                allocated: Order::ZERO,
                freed: order,
            });
        }
        if !pool.held[i].1.is_none() {
            return Err(Error::Owned { pfn });
        }
        pool.held.swap_remove(i);
        pool.free.push(pfn);
        Ok(())
    }
    fn allocator_id(&self) -> AllocatorId {
        self.id
    }
}

// SAFETY: a held frame's word is written only by `set_owner`, starts as
// `NONE` when the frame is handed out, and is reported only while the
// frame is held (all under the lock).
unsafe impl PageOwner for Frames {
    fn owner(&self, pfn: Pfn) -> Option<OwnerWord> {
        let pool = self.pool.lock();
        pool.held.iter().find(|&&(p, _)| p == pfn).map(|&(_, w)| w)
    }
    unsafe fn set_owner(&self, pfn: Pfn, word: OwnerWord) -> Result<(), Error> {
        let mut pool = self.pool.lock();
        let held = pool.held.iter_mut().find(|(p, _)| *p == pfn);
        let (_, w) = held.ok_or(Error::NotAllocated { pfn })?;
        *w = word;
        Ok(())
    }
    unsafe fn replace_owner(
        &self,
        pfn: Pfn,
        current: OwnerWord,
        new: OwnerWord,
    ) -> Result<bool, Error> {
        let mut pool = self.pool.lock();
        let held = pool.held.iter_mut().find(|(p, _)| *p == pfn);
        let (_, w) = held.ok_or(Error::NotAllocated { pfn })?;
        let matches = *w == current;
        if matches {
            *w = new;
        }
        Ok(matches)
    }
}

/// The machine's kernel page table over the `Frames` pool.
fn table<'a>(m: &Machine, frames: &'a Frames) -> Result<SimPageTable<&'a Frames>, Error> {
    // SAFETY: `Frames` hands out frames of this machine's RAM (its fixed
    // pool), which the machine's direct map reaches.
    unsafe { m.kernel_page_table(frames) }
}

fn machine(ram_bytes: u64) -> Machine {
    Machine::new(MachineConfig {
        ram_bytes,
        ..MachineConfig::default()
    })
    .unwrap()
}

fn read(m: &Machine, addr: VirtAddr) -> u8 {
    // SAFETY: callers pass mapped addresses or stale ones, which the host
    // still maps until their flush (or run this in a child that is
    // expected to fault).
    unsafe { m.virt_to_ptr(addr).read_volatile() }
}

fn write(m: &Machine, addr: VirtAddr, value: u8) {
    // SAFETY: callers pass addresses mapped writable, or still stale from
    // such a mapping.
    unsafe { m.virt_to_ptr(addr).write_volatile(value) }
}

#[test]
fn a_frame_mapped_at_a_vmalloc_address_shows_its_direct_map_bytes() {
    let m = machine(64 * MIB);
    let frames = Frames::new();
    let pt = table(&m, &frames).unwrap();
    let pfn = Pfn::new(0x1234);
    let direct = m.pfn_to_virt(pfn).unwrap();
    write(&m, direct.checked_add(10).unwrap(), 0xab);
    let vaddr = m.layout().vmalloc_start();
    // SAFETY: the machine has no zones, so the test owns `pfn` (outside
    // the `Frames` pool); `vaddr` is a free page of the kernel range.
    unsafe { pt.map(vaddr, pfn, PageProt::KERNEL) }.unwrap();
    assert_eq!(read(&m, vaddr.checked_add(10).unwrap()), 0xab);
    write(&m, vaddr.checked_add(11).unwrap(), 0xcd);
    assert_eq!(read(&m, direct.checked_add(11).unwrap()), 0xcd);
}

#[test]
fn a_highmem_frame_keeps_its_bytes_across_mappings() {
    let m = machine(1 << 30);
    let frames = Frames::new();
    let pt = table(&m, &frames).unwrap();
    let high = m.layout().max_low_pfn().add(5);
    assert_eq!(m.pfn_to_virt(high), None);
    let a = m.layout().vmalloc_start();
    let b = m.layout().pkmap_addr(3).unwrap();
    // SAFETY: the machine has no zones, so the test owns the highmem
    // frame; `a` is a free page of the kernel range.
    unsafe { pt.map(a, high, PageProt::KERNEL) }.unwrap();
    write(&m, a, 0x5a);
    // SAFETY: this test made the mapping and is done with it.
    let (pfn, flush) = unsafe { pt.unmap(a) }.unwrap();
    flush.flush(&pt);
    assert_eq!(pfn, high);
    // SAFETY: as for `a`: the test's own frame at a free pkmap page.
    unsafe { pt.map(b, high, PageProt::KERNEL) }.unwrap();
    assert_eq!(read(&m, b), 0x5a);
    assert_eq!(m.tlb_flushes(), 1);
}

#[test]
fn translate_follows_map_and_unmap() {
    let m = machine(64 * MIB);
    let frames = Frames::new();
    let pt = table(&m, &frames).unwrap();
    let addr = m.layout().kmap_local_addr(1, 2).unwrap();
    assert_eq!(pt.translate(addr), None);
    // SAFETY: the machine has no zones, so the test owns frame 0x2000
    // (outside the `Frames` pool); `addr` is a free kmap_local slot.
    unsafe { pt.map(addr, Pfn::new(0x2000), PageProt::KERNEL_RO) }.unwrap();
    let (pfn, prot) = pt.translate(addr).unwrap();
    assert_eq!(pfn, Pfn::new(0x2000));
    assert!(!prot.contains(PageProt::WRITE));
    // SAFETY: this test made the mapping and is done with it.
    unsafe { pt.unmap(addr) }.unwrap().1.flush(&pt);
    assert_eq!(pt.translate(addr), None);
}

#[test]
fn the_kernel_page_table_translates_the_direct_map_too() {
    let m = machine(102 * MIB);
    let frames = Frames::new();
    let pt = table(&m, &frames).unwrap();
    let last = Pfn::new(m.layout().max_low_pfn().as_usize() - 1);
    for pfn in [Pfn::new(0), Pfn::new(0x1234), last] {
        let addr = m.pfn_to_virt(pfn).unwrap();
        assert_eq!(pt.translate(addr).map(|(p, _)| p), Some(pfn));
    }
    assert_eq!(pt.translate(m.layout().high_memory()), None);
    // 102 MiB is 25 whole 4 MiB pages and a 2 MiB tail in one PTE page.
    assert_eq!(pt.table_pages(), 2);
}

#[test]
fn touching_an_address_nobody_mapped_faults() {
    let m = machine(1 << 30);
    let frames = Frames::new();
    let pt = table(&m, &frames).unwrap();
    let addr = m.layout().vmalloc_start();
    assert!(child_dies_of_sigsegv(|| {
        read(&m, addr);
    }));
    // SAFETY: the machine has no zones, so the test owns the first
    // highmem frame; `addr` is a free page of the kernel range.
    unsafe { pt.map(addr, m.layout().max_low_pfn(), PageProt::KERNEL) }.unwrap();
    assert!(!child_dies_of_sigsegv(|| {
        read(&m, addr);
    }));
    // SAFETY: this test made the mapping; the only later access is the
    // child's, which is expected to fault.
    unsafe { pt.unmap(addr) }.unwrap().1.flush(&pt);
    assert!(child_dies_of_sigsegv(|| {
        read(&m, addr);
    }));
}

#[test]
fn writing_through_a_read_only_mapping_faults() {
    let m = machine(64 * MIB);
    let frames = Frames::new();
    let pt = table(&m, &frames).unwrap();
    let addr = m.layout().vmalloc_start();
    // SAFETY: the machine has no zones, so the test owns frame 0x1000
    // (outside the `Frames` pool); `addr` is a free page of the kernel range.
    unsafe { pt.map(addr, Pfn::new(0x1000), PageProt::KERNEL_RO) }.unwrap();
    assert!(child_dies_of_sigsegv(|| write(&m, addr, 1)));
}

#[test]
fn the_direct_map_covers_lowmem_exactly() {
    let m = machine(1 << 30);
    let l = *m.layout();
    let last = Pfn::new(l.max_low_pfn().as_usize() - 1);
    let top = m.pfn_to_virt(last).unwrap();
    assert_eq!(top.as_usize() + PAGE_SIZE, l.high_memory().as_usize());
    assert_eq!(m.virt_to_pfn(top), Some(last));
    assert_eq!(m.pfn_to_virt(l.max_low_pfn()), None);
    assert_eq!(m.virt_to_pfn(l.high_memory()), None);
    assert_eq!(m.virt_to_pfn(VirtAddr::new(0xbfff_f000)), None);
    write(&m, top, 9);
    assert_eq!(read(&m, top), 9);
}

#[test]
fn the_mmu_hook_refuses_the_direct_map_and_frames_beyond_ram() {
    let m = machine(64 * MIB);
    let mmu = SimMmu(m.clone());
    let direct = m.layout().page_offset();
    assert_eq!(
        mmu.pte_set(direct, Pfn::new(1), PageProt::KERNEL),
        Err(Error::BadVirtAddr { addr: direct })
    );
    let beyond = m.layout().max_pfn();
    assert_eq!(
        mmu.pte_set(m.layout().vmalloc_start(), beyond, PageProt::KERNEL),
        Err(Error::PfnOutOfRange { pfn: beyond })
    );
}

#[test]
fn only_one_kernel_page_table_is_attached_at_a_time() {
    let m = machine(64 * MIB);
    let frames = Frames::new();
    let first = table(&m, &frames).unwrap();
    let start = m.layout().kernel_map_range().0;
    assert_eq!(
        table(&m, &frames).err(),
        Some(Error::AlreadyMapped { addr: start })
    );
    drop(first);
    assert!(table(&m, &frames).is_ok());
}

#[test]
fn the_memory_map_is_a_pc_with_the_kernel_at_1_mib() {
    let m = machine(160 * MIB);
    let map = m.memory_map();
    let ram_end = map
        .iter()
        .filter(|r| r.kind != kmm_api::RegionKind::Reserved)
        .map(|r| r.end.as_u64())
        .max();
    assert_eq!(ram_end, Some(160 * MIB));
    assert!(map
        .iter()
        .any(|r| r.kind == kmm_api::RegionKind::KernelImage && r.start.as_u64() == MIB));
    assert_eq!(m.layout().highmem_bytes(), 0);
}

#[test]
fn cpu_ids_stay_below_the_cpu_count() {
    let m = Machine::new(MachineConfig {
        ram_bytes: 32 * MIB,
        pae: false,
        nr_cpus: 3,
    })
    .unwrap();
    // Three CPUs owned by the first three threads, plus the overflow CPU.
    assert_eq!(m.nr_cpus(), 4);
    // A thread's exit frees the CPU it owns (see `crate::cpu`), so the six
    // threads stay alive until every one has claimed and this thread has
    // asked too.
    let claimed = std::sync::Arc::new(std::sync::Barrier::new(7));
    let done = std::sync::Arc::new(std::sync::Barrier::new(7));
    let threads: Vec<_> = (0..6)
        .map(|_| {
            let (m, claimed, done) = (m.clone(), claimed.clone(), done.clone());
            std::thread::spawn(move || {
                let cpu = m.cpu_id();
                claimed.wait();
                done.wait();
                cpu
            })
        })
        .collect();
    claimed.wait();
    let cpu = m.get_cpu();
    m.put_cpu(cpu);
    done.wait();
    let mut ids: Vec<usize> = threads.into_iter().map(|t| t.join().unwrap()).collect();
    ids.sort_unstable();
    assert_eq!(ids, [0, 1, 2, 3, 3, 3]);
    assert_eq!(cpu, 3, "this thread came after the owners");
}

#[test]
fn impossible_configurations_are_refused() {
    for config in [
        MachineConfig {
            nr_cpus: 0,
            ..MachineConfig::default()
        },
        MachineConfig {
            nr_cpus: NR_CPUS + 1,
            ..MachineConfig::default()
        },
        MachineConfig {
            ram_bytes: 0,
            ..MachineConfig::default()
        },
        MachineConfig {
            ram_bytes: 5 << 30,
            ..MachineConfig::default()
        },
        MachineConfig {
            ram_bytes: 2 * MIB,
            ..MachineConfig::default()
        },
    ] {
        assert!(
            matches!(Machine::new(config), Err(SimError::Config(_))),
            "{config:?}"
        );
    }
}

fn ram_mappings() -> usize {
    std::fs::read_to_string("/proc/self/maps")
        .unwrap()
        .lines()
        .filter(|l| l.contains("memfd:kmm-ram"))
        .count()
}

#[test]
fn dropping_the_machine_releases_every_host_mapping() {
    // Other tests build machines concurrently, so compare this machine's
    // window rather than global counts.
    let m = machine(64 * MIB);
    let window = m.window_base();
    let frames = Frames::new();
    {
        let pt = table(&m, &frames).unwrap();
        // SAFETY: the machine has no zones, so the test owns frame 0x1000
        // (outside the `Frames` pool); the page is a free one of the
        // kernel range, left mapped for the table's drop to clear.
        unsafe {
            pt.map(
                m.layout().vmalloc_start(),
                Pfn::new(0x1000),
                PageProt::KERNEL,
            )
        }
        .unwrap();
    }
    assert!(ram_mappings() >= 1);
    // This machine's memory files, by inode: once it is dropped none may
    // stay mapped. (Its window's range itself may be reused at once by a
    // machine another test builds, so the range is not what is checked.)
    let ours = memfd_inodes_in(window);
    assert!(!ours.is_empty(), "the machine maps its RAM file");
    drop(m);
    let left = memfd_inodes_in(0)
        .into_iter()
        .filter(|inode| ours.contains(inode))
        .count();
    assert_eq!(
        left, 0,
        "a memory file of the dropped machine is still mapped"
    );
}

/// Inodes of the `memfd:kmm-*` files mapped at or above `from` in the 4 GiB
/// window starting there (anywhere, for `from` 0).
fn memfd_inodes_in(from: usize) -> Vec<u64> {
    let maps = std::fs::read_to_string("/proc/self/maps").unwrap();
    maps.lines()
        .filter(|l| l.contains("memfd:kmm-"))
        .filter(|l| {
            let start = usize::from_str_radix(l.split('-').next().unwrap(), 16).unwrap();
            from == 0 || (start >= from && start < from + (1 << 32))
        })
        .filter_map(|l| l.split_whitespace().nth(4)?.parse().ok())
        .collect()
}

#[test]
fn a_raw_free_of_a_page_table_page_through_the_zones_is_refused_and_the_table_keeps_working() {
    let mm = MemoryManager::sim(MachineConfig {
        ram_bytes: 64 * MIB,
        ..MachineConfig::default()
    })
    .unwrap();
    let (zones, m) = (mm.zones(), mm.machine());
    zones.drain_all_pages();
    let free = zones.nr_free_pages();
    let word = OwnerWord::new(OwnerTag::PageTable, 0);
    let kept = {
        let pt = mm.kernel_page_table().unwrap();
        // The manager's table since boot: its directory, the direct map in
        // 4 MiB entries.
        let tables_before = pt.table_pages();
        let addr = m.layout().vmalloc_start();
        let page = zones.alloc_page(GFP_KERNEL).unwrap();
        // SAFETY: `page` is held by this test; `addr` is a free page of the
        // kernel range.
        unsafe { pt.map(addr, page.pfn(), PageProt::KERNEL) }.unwrap();
        let pgd = pt.pgd();
        let pgd_addr = m.pfn_to_virt(pgd).unwrap();
        let pde_ptr = m
            .virt_to_ptr(pgd_addr)
            .cast::<u32>()
            .wrapping_add(addr.as_usize() >> 22);
        // SAFETY: the directory entry for `addr`, inside the page directory,
        // which the table holds until it drops and nothing writes now.
        let pde = unsafe { pde_ptr.read_volatile() };
        let pte_page = Pfn::new((pde >> 12) as usize);
        let bad_frees = zones.bad_frees();
        for table_page in [pgd, pte_page] {
            assert_eq!(zones.owner(table_page), word, "{table_page:?}");
            let table_addr = m.pfn_to_virt(table_page).unwrap();
            // SAFETY: deliberately outside `free_pages`' contract: the table,
            // not the test, holds this page. The refusal is what is under
            // test; it leaves the page allocated and unchanged, and if the
            // rule regressed the asserts below fail before anything else
            // could be handed the page.
            let raw = unsafe { zones.free_pages(table_addr, Order::ZERO) };
            assert!(matches!(raw, Err(Error::Owned { .. })), "{raw:?}");
            // SAFETY: deliberately outside `from_raw`'s contract, as above:
            // the handle names the table's page, and the free below is the
            // refusal under test, which uses the handle up and changes
            // nothing.
            let stolen = unsafe { Pages::from_raw(table_page, Order::ZERO, zones.allocator_id()) };
            assert_eq!(
                zones.__free_pages(stolen),
                Err(Error::Owned { pfn: table_page })
            );
            assert_eq!(zones.owner(table_page), word, "{table_page:?}");
        }
        assert_eq!(zones.bad_frees(), bad_frees + 4);
        // The table keeps working: the mapping shows the page's bytes, the
        // direct map still translates, and mapping and unmapping go on.
        let direct = m.pfn_to_virt(page.pfn()).unwrap();
        write(m, addr, 0x77);
        assert_eq!(read(m, direct), 0x77);
        assert_eq!(pt.translate(pgd_addr).map(|(p, _)| p), Some(pgd));
        let next = addr.checked_add(PAGE_SIZE).unwrap();
        // SAFETY: `page` is held by this test; `next` is a free page of the
        // kernel range.
        unsafe { pt.map(next, page.pfn(), PageProt::KERNEL) }.unwrap();
        assert_eq!(read(m, next), 0x77);
        assert_eq!(pt.table_pages(), tables_before + 1, "one PTE page for both");
        for mapped in [addr, next] {
            // SAFETY: this test made the mapping and is done with it.
            unsafe { pt.unmap(mapped) }.unwrap().1.flush(pt);
        }
        zones.__free_pages(page).unwrap();
        pt.table_pages() - tables_before
    };
    // Every page came back but the PTE page, which the kernel's table
    // keeps once allocated (as Linux does).
    zones.drain_all_pages();
    assert_eq!(zones.nr_free_pages(), free - kept);
    zones.check().unwrap();
}
