//! The simulated machine on real host memory: mappings share bytes, unmapped
//! addresses fault, the page table is mirrored, and drop releases the host.

use super::*;
use kmm_api::sync::SpinLock;
use kmm_api::{GfpFlags, KernelPageTable, Order};
use std::vec::Vec;

const MIB: u64 = 1 << 20;

/// A few lowmem frames for page-table pages, before any zone exists.
struct Frames(SpinLock<Vec<Pfn>>);

impl Frames {
    fn new() -> Self {
        Frames(SpinLock::new((0x800..0x810).map(Pfn::new).collect()))
    }
}

impl FrameAllocator for Frames {
    fn alloc_frames(&self, _gfp: GfpFlags, order: Order) -> Result<Pfn, Error> {
        self.0.lock().pop().ok_or(Error::NoMemory { order })
    }
    fn free_frames(&self, pfn: Pfn, _order: Order) -> Result<(), Error> {
        self.0.lock().push(pfn);
        Ok(())
    }
}

fn machine(ram_bytes: u64) -> Machine {
    Machine::new(MachineConfig {
        ram_bytes,
        ..MachineConfig::default()
    })
    .unwrap()
}

/// Runs `touch` in a forked child; true if the child died of SIGSEGV.
fn child_dies_of_sigsegv(touch: impl FnOnce()) -> bool {
    // SAFETY: the child only runs `touch` (a raw access, no allocation or
    // locks) and `_exit`s, so forking a multi-threaded test is harmless.
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0, "fork failed");
    if pid == 0 {
        touch();
        // SAFETY: ends the child without running the parent's destructors.
        unsafe { libc::_exit(0) };
    }
    let mut status = 0;
    // SAFETY: waits for the child just forked; `status` is a valid out-pointer.
    assert_eq!(unsafe { libc::waitpid(pid, &mut status, 0) }, pid);
    libc::WIFSIGNALED(status) && libc::WTERMSIG(status) == libc::SIGSEGV
}

fn read(m: &Machine, addr: VirtAddr) -> u8 {
    // SAFETY: callers pass mapped addresses (or run this in a child that
    // is expected to fault).
    unsafe { m.virt_to_ptr(addr).read_volatile() }
}

fn write(m: &Machine, addr: VirtAddr, value: u8) {
    // SAFETY: callers pass addresses mapped writable.
    unsafe { m.virt_to_ptr(addr).write_volatile(value) }
}

#[test]
fn a_frame_mapped_at_a_vmalloc_address_shows_its_direct_map_bytes() {
    let m = machine(64 * MIB);
    let frames = Frames::new();
    let pt = m.kernel_page_table(&frames).unwrap();
    let pfn = Pfn::new(0x1234);
    let direct = m.pfn_to_virt(pfn).unwrap();
    write(&m, direct.checked_add(10).unwrap(), 0xab);
    let vaddr = m.layout().vmalloc_start();
    pt.map(vaddr, pfn, PageProt::KERNEL).unwrap();
    assert_eq!(read(&m, vaddr.checked_add(10).unwrap()), 0xab);
    write(&m, vaddr.checked_add(11).unwrap(), 0xcd);
    assert_eq!(read(&m, direct.checked_add(11).unwrap()), 0xcd);
}

#[test]
fn a_highmem_frame_keeps_its_bytes_across_mappings() {
    let m = machine(1 << 30);
    let frames = Frames::new();
    let pt = m.kernel_page_table(&frames).unwrap();
    let high = m.layout().max_low_pfn().add(5);
    assert_eq!(m.pfn_to_virt(high), None);
    let a = m.layout().vmalloc_start();
    let b = m.layout().pkmap_addr(3).unwrap();
    pt.map(a, high, PageProt::KERNEL).unwrap();
    write(&m, a, 0x5a);
    let (pfn, flush) = pt.unmap(a).unwrap();
    flush.flush(&pt);
    assert_eq!(pfn, high);
    pt.map(b, high, PageProt::KERNEL).unwrap();
    assert_eq!(read(&m, b), 0x5a);
    assert_eq!(m.tlb_flushes(), 1);
}

#[test]
fn translate_follows_map_and_unmap() {
    let m = machine(64 * MIB);
    let frames = Frames::new();
    let pt = m.kernel_page_table(&frames).unwrap();
    let addr = m.layout().kmap_local_addr(1, 2).unwrap();
    assert_eq!(pt.translate(addr), None);
    pt.map(addr, Pfn::new(0x2000), PageProt::KERNEL_RO).unwrap();
    let (pfn, prot) = pt.translate(addr).unwrap();
    assert_eq!(pfn, Pfn::new(0x2000));
    assert!(!prot.contains(PageProt::WRITE));
    pt.unmap(addr).unwrap().1.flush(&pt);
    assert_eq!(pt.translate(addr), None);
}

#[test]
fn the_kernel_page_table_translates_the_direct_map_too() {
    let m = machine(102 * MIB);
    let frames = Frames::new();
    let pt = m.kernel_page_table(&frames).unwrap();
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
    let pt = m.kernel_page_table(&frames).unwrap();
    let addr = m.layout().vmalloc_start();
    assert!(child_dies_of_sigsegv(|| {
        read(&m, addr);
    }));
    pt.map(addr, m.layout().max_low_pfn(), PageProt::KERNEL)
        .unwrap();
    assert!(!child_dies_of_sigsegv(|| {
        read(&m, addr);
    }));
    pt.unmap(addr).unwrap().1.flush(&pt);
    assert!(child_dies_of_sigsegv(|| {
        read(&m, addr);
    }));
}

#[test]
fn writing_through_a_read_only_mapping_faults() {
    let m = machine(64 * MIB);
    let frames = Frames::new();
    let pt = m.kernel_page_table(&frames).unwrap();
    let addr = m.layout().vmalloc_start();
    pt.map(addr, Pfn::new(0x1000), PageProt::KERNEL_RO).unwrap();
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
    let first = m.kernel_page_table(&frames).unwrap();
    let start = m.layout().kernel_map_range().0;
    assert_eq!(
        m.kernel_page_table(&frames).err(),
        Some(Error::AlreadyMapped { addr: start })
    );
    drop(first);
    assert!(m.kernel_page_table(&frames).is_ok());
}

#[test]
fn the_memory_map_is_a_pc_with_the_kernel_at_1_mib() {
    let m = machine(160 * MIB);
    let map = m.memory_map();
    assert_eq!(map.last().unwrap().end.as_u64(), 160 * MIB);
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
    let ids: Vec<usize> = (0..6)
        .map(|_| {
            let m = m.clone();
            std::thread::spawn(move || m.cpu_id()).join().unwrap()
        })
        .collect();
    assert_eq!(ids, [0, 1, 2, 3, 3, 3]);
    let cpu = m.get_cpu();
    assert_eq!(cpu, 3, "this thread came after the owners");
    m.put_cpu(cpu);
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
        let pt = m.kernel_page_table(&frames).unwrap();
        pt.map(
            m.layout().vmalloc_start(),
            Pfn::new(0x1000),
            PageProt::KERNEL,
        )
        .unwrap();
    }
    assert!(ram_mappings() >= 1);
    drop(m);
    let maps = std::fs::read_to_string("/proc/self/maps").unwrap();
    let still_there = maps.lines().any(|l| {
        let start = usize::from_str_radix(l.split('-').next().unwrap(), 16).unwrap();
        start >= window && start < window + (1 << 32)
    });
    assert!(!still_there, "window {window:#x} still mapped");
}
