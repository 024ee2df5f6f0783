//! vmalloc, vmap and ioremap on the simulated i386 machine, whose kernel
//! mappings are real host mappings: an area is really contiguous over
//! scattered frames, its guard page really faults, a freed range really
//! faults once the lazy purge flushed it, and every frame comes back.

use kmm::sim::{child_dies_of_sigsegv, MachineConfig};
use kmm::KernelPageTable;
use kmm::{
    DirectMap, Error, MemoryManager, Order, PhysAddr, SimMemoryManager, VmFlags, VmareaError,
    ZoneType, GFP_HIGHUSER, GFP_KERNEL, PAGE_SIZE,
};

const MIB: u64 = 1 << 20;

fn sim(ram_bytes: u64) -> SimMemoryManager {
    MemoryManager::sim(MachineConfig {
        ram_bytes,
        ..MachineConfig::default()
    })
    .unwrap()
}

/// Free pages with every CPU's lists drained.
fn free_pages(mm: &SimMemoryManager) -> usize {
    mm.drain_all_pages();
    mm.nr_free_pages()
}

#[test]
fn an_area_is_contiguous_over_scattered_frames_byte_for_byte() {
    let mm = sim(64 * MIB);
    // Scatter the free frames: take 256 pages and give back every other.
    let held: Vec<_> = (0..256)
        .map(|_| mm.alloc_page(GFP_KERNEL).unwrap())
        .collect();
    let mut kept = Vec::new();
    for (i, page) in held.into_iter().enumerate() {
        if i % 2 == 0 {
            mm.__free_page(page).unwrap();
        } else {
            kept.push(page);
        }
    }
    let pages = 64;
    let area = mm.vmalloc(pages * PAGE_SIZE).unwrap();
    let frames: Vec<_> = (0..pages)
        .map(|i| {
            mm.vmalloc_to_pfn(area.as_ptr().wrapping_add(i * PAGE_SIZE))
                .unwrap()
        })
        .collect();
    let contiguous = frames.windows(2).filter(|w| w[1] == w[0].add(1)).count();
    assert!(contiguous < pages / 2, "scattered frames: {frames:?}");
    // SAFETY: the area is ours, `pages` pages long.
    let bytes = unsafe { core::slice::from_raw_parts_mut(area.as_ptr(), pages * PAGE_SIZE) };
    for (i, b) in bytes.iter_mut().enumerate() {
        *b = (i * 7 % 251) as u8;
    }
    for (i, &pfn) in frames.iter().enumerate() {
        // Lowmem frames: their own mapping is the direct map.
        let own = mm.machine().pfn_to_ptr(pfn).unwrap();
        // SAFETY: a frame of our area, reached through the direct map.
        let frame = unsafe { core::slice::from_raw_parts(own.as_ptr(), PAGE_SIZE) };
        assert_eq!(
            frame,
            &bytes[i * PAGE_SIZE..(i + 1) * PAGE_SIZE],
            "page {i}"
        );
    }
    // SAFETY: we give the area up.
    unsafe { mm.vfree(area.as_ptr()) }.unwrap();
    for page in kept {
        mm.__free_page(page).unwrap();
    }
    mm.check().unwrap();
}

#[test]
fn vmalloc_takes_highmem_first_and_the_bytes_show_through_a_second_mapping() {
    let mm = sim(2 << 30);
    let area = mm.vmalloc(MIB as usize).unwrap();
    let first = mm.vmalloc_to_pfn(area.as_ptr()).unwrap();
    for i in 0..256 {
        let pfn = mm
            .vmalloc_to_pfn(area.as_ptr().wrapping_add(i * PAGE_SIZE))
            .unwrap();
        assert_eq!(mm.zones().page_zone(pfn), Some(ZoneType::HighMem));
    }
    // SAFETY: ours.
    unsafe { area.as_ptr().add(0x123).write(0x5a) };
    // A second mapping of the first frame: a kmap.
    let km = mm.highmem().unwrap();
    // SAFETY: the frame is ours (the area's); the kmap is undone below,
    // before the vfree.
    let alias = unsafe { km.kmap_pfn(first) }.unwrap();
    assert!(alias >= mm.layout().pkmap_base().unwrap(), "a pkmap slot");
    let through = mm.machine().virt_to_ptr(alias);
    // SAFETY: mapped just above.
    assert_eq!(unsafe { through.add(0x123).read_volatile() }, 0x5a);
    // SAFETY: we made the kmap and are done with it; then the area.
    unsafe {
        km.kunmap_pfn(first).unwrap();
        mm.vfree(area.as_ptr()).unwrap();
    }
    assert_eq!(mm.meminfo().vmalloc_used, 0);
}

#[test]
fn the_guard_page_faults_and_a_freed_range_faults_once_purged() {
    let mm = sim(64 * MIB);
    let before = free_pages(&mm);
    let tables_before = mm.kernel_page_table().unwrap().table_pages();
    let area = mm.vmalloc(3 * PAGE_SIZE).unwrap();
    let guard = area.as_ptr().wrapping_add(3 * PAGE_SIZE);
    // SAFETY: the last byte of our area.
    unsafe { area.as_ptr().add(3 * PAGE_SIZE - 1).write(1) };
    assert!(child_dies_of_sigsegv(|| {
        // SAFETY: none: the guard page is expected to fault.
        unsafe { guard.read_volatile() };
    }));
    assert_eq!(mm.meminfo().vmalloc_used, 3);
    // SAFETY: we give the area up; nothing here touches it again but the
    // child that must fault.
    unsafe { mm.vfree(area.as_ptr()) }.unwrap();
    let stale = mm.machine().stale_translations();
    assert_eq!(stale, 3, "unmapped, the flush is lazy");
    let flushes = mm.machine().tlb_flushes();
    assert!(mm.vmalloc_layer().unwrap().purge());
    assert_eq!(
        mm.machine().tlb_flushes(),
        flushes + 1,
        "one flush for the batch"
    );
    assert_eq!(mm.machine().stale_translations(), 0);
    let old = area.as_ptr();
    assert!(child_dies_of_sigsegv(|| {
        // SAFETY: none: the purged range is expected to fault.
        unsafe { old.read_volatile() };
    }));
    // Every frame came back; the PTE page stays with the kernel's table.
    let kept = mm.kernel_page_table().unwrap().table_pages() - tables_before;
    assert_eq!(free_pages(&mm), before - kept);
    assert_eq!(mm.meminfo().page_tables, tables_before + kept);
    mm.check().unwrap();
}

#[test]
fn frees_are_refused_by_kind_and_twice_and_nothing_changes() {
    let mm = sim(64 * MIB);
    let area = mm.vmalloc(PAGE_SIZE).unwrap();
    let before = (free_pages(&mm), mm.meminfo().vmalloc_used);
    // SAFETY: each refused call changes nothing.
    unsafe {
        assert!(matches!(
            mm.vfree(area.as_ptr().add(8)),
            Err(Error::Vmalloc(VmareaError::Misaligned { .. }))
        ));
        assert!(matches!(
            mm.vunmap(area.as_ptr()),
            Err(Error::Vmalloc(VmareaError::WrongKind { .. }))
        ));
        assert!(matches!(
            mm.iounmap(area.as_ptr()),
            Err(Error::Vmalloc(VmareaError::WrongKind { .. }))
        ));
        assert_eq!(mm.vfree(core::ptr::null()), Ok(()));
    }
    assert_eq!((free_pages(&mm), mm.meminfo().vmalloc_used), before);
    // SAFETY: ours; the second vfree names what nobody holds.
    unsafe {
        mm.vfree(area.as_ptr()).unwrap();
        assert!(matches!(
            mm.vfree(area.as_ptr()),
            Err(Error::Vmalloc(VmareaError::AlreadyFreed { .. }))
        ));
    }
    mm.check().unwrap();
}

#[test]
fn vmap_maps_highmem_frames_the_caller_keeps() {
    let mm = sim(2 << 30);
    let pages: Vec<_> = (0..4)
        .map(|_| mm.alloc_pages(GFP_HIGHUSER, Order::ZERO).unwrap())
        .collect();
    let p = mm
        .vmap(&pages, VmFlags::empty(), kmm::PageProt::KERNEL)
        .unwrap();
    // SAFETY: the mapping covers 4 pages of frames we hold.
    unsafe { p.as_ptr().add(3 * PAGE_SIZE + 9).write(0x33) };
    assert_eq!(
        mm.vmalloc_to_pfn(p.as_ptr().wrapping_add(3 * PAGE_SIZE)),
        Some(pages[3].pfn())
    );
    // SAFETY: we made the mapping and are done with it.
    unsafe { mm.vunmap(p.as_ptr()) }.unwrap();
    for page in pages {
        mm.__free_page(page).unwrap();
    }
    mm.check().unwrap();
}

#[test]
fn ioremap_reaches_the_device_and_refuses_managed_ram() {
    let mm = sim(64 * MIB);
    let (base, _) = mm.machine().device_window().unwrap();
    let phys = PhysAddr::new(base.as_u64() + 0xc_0123);
    let regs = mm.ioremap(phys, 16).unwrap();
    assert_eq!(regs.as_ptr() as usize & 0xfff, 0x123);
    let at = mm.machine().ptr_to_virt(regs.as_ptr());
    let (_, prot) = mm.kernel_page_table().unwrap().translate(at).unwrap();
    let uncached = kmm::PageProt::NOCACHE | kmm::PageProt::WRITE_THROUGH;
    assert!(prot.contains(uncached), "uncached: PCD | PWT, got {prot:?}");
    // SAFETY: our mapping of device memory, 16 bytes.
    unsafe { regs.as_ptr().add(4).write_volatile(0xa7) };
    let mut seen = [0u8; 1];
    mm.machine()
        .read_device(PhysAddr::new(phys.as_u64() + 4), &mut seen)
        .unwrap();
    assert_eq!(seen, [0xa7]);
    let free = mm.alloc_page(GFP_KERNEL).unwrap();
    assert!(matches!(
        mm.ioremap(free.phys(), 16),
        Err(Error::Page(kmm::api::Error::Busy { .. }))
    ));
    mm.__free_page(free).unwrap();
    // SAFETY: we made the mapping and are done with it.
    unsafe { mm.iounmap(regs.as_ptr()) }.unwrap();
    mm.check().unwrap();
}

#[test]
fn kvmalloc_picks_the_allocator_and_kvfree_tells_them_apart() {
    let mm = sim(2 << 30);
    let small = mm.kvmalloc(64, GFP_KERNEL).unwrap();
    let large = mm.kvzalloc(16 << 20, GFP_KERNEL).unwrap();
    let addr = |p: core::ptr::NonNull<u8>| mm.machine().ptr_to_virt(p.as_ptr());
    assert!(!mm.is_vmalloc_addr(addr(small)));
    assert!(mm.is_vmalloc_addr(addr(large)));
    assert_eq!(mm.meminfo().vmalloc_used, 4096);
    // SAFETY: 16 MiB of ours, zeroed.
    let bytes = unsafe { core::slice::from_raw_parts(large.as_ptr(), 16 << 20) };
    assert!(bytes.iter().step_by(4093).all(|&b| b == 0));
    assert!(
        mm.kvmalloc(16 << 20, kmm::GFP_ATOMIC).is_err(),
        "an atomic request never falls back to vmalloc"
    );
    // SAFETY: ours, given up.
    unsafe {
        mm.kvfree(small.as_ptr()).unwrap();
        mm.kvfree(large.as_ptr()).unwrap();
    }
    assert_eq!(mm.meminfo().vmalloc_used, 0);
    mm.check().unwrap();
}

#[test]
fn vfrees_flush_the_tlb_once_per_lazy_batch() {
    let mm = sim(64 * MIB);
    let vm = mm.vmalloc_layer().unwrap();
    let max = vm.stats().areas.lazy_max_pages;
    // Each area is two pages and its guard: a purge runs when the lazily
    // freed pages pass `lazy_max_pages`, every `ceil((max + 1) / 3)` frees.
    let per_batch = (max + 1).div_ceil(3);
    let rounds = 2 * per_batch + 100;
    let flushes = mm.machine().tlb_flushes();
    for _ in 0..rounds {
        let p = mm.vmalloc(2 * PAGE_SIZE).unwrap();
        // SAFETY: ours.
        unsafe { mm.vfree(p.as_ptr()) }.unwrap();
    }
    let done = mm.machine().tlb_flushes() - flushes;
    let stats = vm.stats();
    assert_eq!(stats.vfrees, rounds);
    assert_eq!(done, rounds / per_batch, "one flush per batch");
    assert_eq!(done as u64, stats.areas.flush_tokens);
    eprintln!(
        "{rounds} vmalloc+vfree of 2 pages: {done} TLB flushes (lazy_max_pages {max}): {:.5} per vfree",
        done as f64 / rounds as f64
    );
}
