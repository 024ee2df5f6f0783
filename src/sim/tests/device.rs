//! The device window: reserved in the memory map, backed by its own host
//! memory, mappable at several addresses with the cache bits kept, and
//! told apart from RAM and from nothing at all.

use super::*;
use crate::e820::{DEVICE_WINDOW_BASE, DEVICE_WINDOW_BYTES};
use kmm_api::{PhysAddr, RegionKind};

/// The page of Linux's `ioremap(0xfebc_0123, 16)` example.
const IOREMAP_PFN: Pfn = Pfn::new(0xfebc0);

fn phys(addr: u64) -> PhysAddr {
    PhysAddr::new(addr)
}

#[test]
fn the_device_window_is_reserved_in_the_memory_map_and_is_not_ram() {
    let m = machine(64 * MIB);
    let (base, bytes) = m.device_window().unwrap();
    assert_eq!((base, bytes), (phys(0xfeb0_0000), 1 << 20));
    let map = m.memory_map();
    let entry = map.last().unwrap();
    assert_eq!(
        (entry.start, entry.end, entry.kind),
        (base, phys(0xfec0_0000), RegionKind::Reserved)
    );
    assert!(map.windows(2).all(|w| w[0].end <= w[1].start), "in order");
    for (pfn, device) in [
        (0xfeb00, true),
        (0xfebc0, true),
        (0xfebff, true),
        (0xfeaff, false),
        (0xfec00, false),
        (0x1000, false),
    ] {
        assert_eq!(m.is_device(Pfn::new(pfn)), device, "{pfn:#x}");
    }
}

#[test]
fn a_device_page_mapped_twice_shows_one_set_of_bytes_the_device_sees() {
    let m = machine(64 * MIB);
    let frames = Frames::new();
    let pt = table(&m, &frames).unwrap();
    let a = m.layout().vmalloc_start();
    let b = a.checked_add(4 * PAGE_SIZE).unwrap();
    // SAFETY: device memory nothing else uses; `a` and `b` are free pages
    // of the kernel range, used by this test alone.
    unsafe {
        pt.map(a, IOREMAP_PFN, PageProt::KERNEL_UC_MINUS).unwrap();
        pt.map(b, IOREMAP_PFN, PageProt::KERNEL_NOCACHE).unwrap();
    }
    let (pfn, prot) = pt.translate(a).unwrap();
    assert_eq!(pfn, IOREMAP_PFN);
    assert!(prot.contains(PageProt::NOCACHE) && !prot.contains(PageProt::WRITE_THROUGH));
    let prot = pt.translate(b).unwrap().1;
    assert!(prot.contains(PageProt::NOCACHE | PageProt::WRITE_THROUGH));

    write(&m, a.checked_add(0x123).unwrap(), 0xd1);
    assert_eq!(read(&m, b.checked_add(0x123).unwrap()), 0xd1);
    let mut seen = [0u8; 2];
    m.read_device(phys(0xfebc_0123), &mut seen).unwrap();
    assert_eq!(seen, [0xd1, 0]);
    m.write_device(phys(0xfebc_0ffe), &[7, 8]).unwrap();
    assert_eq!(read(&m, a.checked_add(0xfff).unwrap()), 8);
    assert_eq!(read(&m, b.checked_add(0xffe).unwrap()), 7);
    // Device memory is its own: the RAM frame at the device page's offset
    // in the window (0xc0) did not receive the write.
    let same_offset = m.pfn_to_virt(Pfn::new(0xc0)).unwrap();
    assert_eq!(read(&m, same_offset.checked_add(0x123).unwrap()), 0);

    for addr in [a, b] {
        // SAFETY: this test made the mapping; the only later access is
        // the child's, which is expected to fault.
        unsafe { pt.unmap(addr) }.unwrap().1.flush(&pt);
        assert!(child_dies_of_sigsegv(|| {
            read(&m, addr);
        }));
    }
    // The device keeps its bytes when nobody maps it.
    m.read_device(phys(0xfebc_0123), &mut seen).unwrap();
    assert_eq!(seen, [0xd1, 0]);
    assert_eq!(m.tlb_stats().flushed_pages, 2);
}

#[test]
fn ram_frames_still_map_ram_and_frames_of_neither_are_refused() {
    let m = machine(64 * MIB);
    let frames = Frames::new();
    let pt = table(&m, &frames).unwrap();
    let a = m.layout().vmalloc_start();
    let ram = Pfn::new(0x1000);
    write(&m, m.pfn_to_virt(ram).unwrap(), 0x99);
    // SAFETY: the machine has no zones, so the test owns the RAM frame;
    // `a` is a free page of the kernel range.
    unsafe { pt.map(a, ram, PageProt::KERNEL) }.unwrap();
    assert_eq!(read(&m, a), 0x99);
    let next = a.checked_add(PAGE_SIZE).unwrap();
    for pfn in [
        m.layout().max_pfn(),
        Pfn::new(0xfeaff),
        Pfn::new(0xfec00),
        Pfn::new(0xfffff),
    ] {
        assert_eq!(
            // SAFETY: refused (nothing is mapped), which is under test.
            unsafe { pt.map(next, pfn, PageProt::KERNEL_NOCACHE) },
            Err(Error::PfnOutOfRange { pfn }),
            "{pfn:?}"
        );
        assert_eq!(pt.translate(next), None);
    }
    assert_eq!(pt.mapped_pages(), 1);
}

#[test]
fn device_accessors_refuse_ranges_outside_the_window() {
    let m = machine(64 * MIB);
    let end = DEVICE_WINDOW_BASE + DEVICE_WINDOW_BYTES;
    let mut buf = [0u8; 4];
    for (at, len) in [
        (DEVICE_WINDOW_BASE - 1, 2),
        (end - 3, 4),
        (end, 1),
        (0x1000, 4),
        (u64::MAX - 1, 4),
    ] {
        let bad = Err(Error::BadPhysAddr { addr: phys(at) });
        assert_eq!(m.read_device(phys(at), &mut buf[..len]), bad, "{at:#x}");
        assert_eq!(m.write_device(phys(at), &buf[..len]), bad, "{at:#x}");
    }
    m.write_device(phys(end - 4), &[1, 2, 3, 4]).unwrap();
    m.read_device(phys(end - 4), &mut buf).unwrap();
    assert_eq!(buf, [1, 2, 3, 4]);
}

#[test]
fn a_machine_whose_ram_reaches_the_window_has_none() {
    let ram = DEVICE_WINDOW_BASE + PAGE_SIZE as u64;
    let m = machine(ram);
    assert_eq!(m.device_window(), None);
    assert!(!m.memory_map().iter().any(|r| r.end.as_u64() > ram));
    assert!(!m.is_device(IOREMAP_PFN));
    let mut buf = [0u8; 1];
    assert_eq!(
        m.read_device(phys(0xfebc_0123), &mut buf),
        Err(Error::BadPhysAddr {
            addr: phys(0xfebc_0123)
        })
    );
}

#[test]
fn the_booted_zones_never_manage_the_device_window() {
    let mm = MemoryManager::sim(MachineConfig {
        ram_bytes: 64 * MIB,
        ..MachineConfig::default()
    })
    .unwrap();
    let zones = mm.zones();
    for pfn in [0xfeb00, 0xfebc0, 0xfebff] {
        assert!(zones.pfn_to_page(Pfn::new(pfn)).is_none(), "{pfn:#x}");
    }
    assert!(zones.pfn_to_page(Pfn::new(0x1000)).is_some());
}
