//! The simulated machine's TLB model and device window under the booted
//! manager, as the vmalloc and ioremap layer will use them: frames from
//! the zones, the kernel page table the manager hands out, lazy flushing,
//! and a device page mapped uncached.

use kmm::e820::{DEVICE_WINDOW_BASE, DEVICE_WINDOW_BYTES};
use kmm::sim::{MachineConfig, TlbStats};
use kmm::{MemoryManager, SimMemoryManager};
use kmm_api::{
    DirectMap, Error, KernelPageTable, Order, PageProt, PhysAddr, TlbFlush, GFP_HIGHUSER,
    GFP_KERNEL, PAGE_SIZE,
};

fn sim() -> SimMemoryManager {
    MemoryManager::sim(MachineConfig {
        ram_bytes: 1 << 30,
        ..MachineConfig::default()
    })
    .unwrap()
}

#[test]
fn lazy_purge_frees_frames_at_once_and_reuses_the_range_only_after_one_flush() {
    let mm = sim();
    let (zones, m) = (mm.zones(), mm.machine());
    let pt = mm.kernel_page_table().unwrap();
    let start = mm.layout().vmalloc_start();
    let addr = |n: usize| start.checked_add(n * PAGE_SIZE).unwrap();
    let mut frames = Vec::new();
    for n in 0..4 {
        let page = zones.alloc_pages(GFP_HIGHUSER, Order::ZERO).unwrap();
        // SAFETY: this test holds `page` and is the only user of the
        // machine's page table, so `addr(n)` is free.
        unsafe { pt.map(addr(n), page.pfn(), PageProt::KERNEL) }.unwrap();
        frames.push(page);
    }
    // vfree with a lazy purge: unmap, defer the flush, free the frames.
    let mut owed: Option<TlbFlush> = None;
    for n in 0..4 {
        // SAFETY: this test made the mapping and uses it no more.
        let (_, flush) = unsafe { pt.unmap(addr(n)) }.unwrap();
        owed = Some(owed.map_or(flush, |o| o.merge(flush)));
    }
    let pfns: Vec<_> = frames.iter().map(|p| p.pfn()).collect();
    for page in frames {
        zones.__free_pages(page).unwrap();
    }
    assert!(pfns.iter().all(|&pfn| m.has_stale_translation(pfn)));
    assert_eq!(m.stale_translations(), 4);
    // The range is not reusable yet: a map there is refused, visibly.
    let other = zones.alloc_pages(GFP_KERNEL, Order::ZERO).unwrap();
    // SAFETY: this test holds `other`; the map is refused.
    let refused = unsafe { pt.map(addr(2), other.pfn(), PageProt::KERNEL) };
    assert_eq!(refused, Err(Error::StaleTlb { addr: addr(2) }));
    let message = kmm::Error::from(refused.unwrap_err()).to_string();
    assert!(message.contains("stale TLB entry"), "{message}");
    // One flush for the whole batch.
    let owed = owed.unwrap();
    assert_eq!(owed.range(), (addr(0), addr(4)));
    owed.flush(&pt);
    assert_eq!(
        m.tlb_stats(),
        TlbStats {
            flushes: 1,
            flushed_pages: 4,
            stale_pages: 0,
            refused_maps: 1,
        }
    );
    assert!(pfns.iter().all(|&pfn| !m.has_stale_translation(pfn)));
    // SAFETY: this test holds `other`, and `addr(2)` is free and flushed.
    unsafe { pt.map(addr(2), other.pfn(), PageProt::KERNEL) }.unwrap();
    // SAFETY: this test made the mapping and uses it no more.
    unsafe { pt.unmap(addr(2)) }.unwrap().1.flush(&pt);
    zones.__free_pages(other).unwrap();
    zones.check().unwrap();
}

#[test]
fn an_ioremap_style_mapping_reaches_the_device_and_not_ram() {
    let mm = sim();
    let (zones, m) = (mm.zones(), mm.machine());
    assert_eq!(
        m.device_window(),
        Some((
            PhysAddr::new(DEVICE_WINDOW_BASE),
            DEVICE_WINDOW_BYTES as usize
        ))
    );
    let pt = mm.kernel_page_table().unwrap();
    // Linux's example: ioremap(0xfebc_0123, 16) maps the page and returns
    // the address plus the offset into it.
    let phys = PhysAddr::new(0xfebc_0123);
    let pfn = phys.pfn();
    assert!(m.is_device(pfn));
    assert!(
        zones.pfn_to_page(pfn).is_none(),
        "the zones do not manage it"
    );
    let base = mm.layout().vmalloc_start();
    // SAFETY: device memory nothing else maps; this test is the only user
    // of the machine's page table, so `base` is free.
    unsafe { pt.map(base, pfn, PageProt::KERNEL_UC_MINUS) }.unwrap();
    let io = m.virt_to_ptr(base).wrapping_add(phys.page_offset());
    for i in 0..16 {
        // SAFETY: the 16 bytes at `io` lie in the page mapped above.
        unsafe { io.add(i).write_volatile(i as u8 + 1) };
    }
    let mut seen = [0u8; 16];
    m.read_device(phys, &mut seen).unwrap();
    assert_eq!(seen, core::array::from_fn(|i| i as u8 + 1));
    assert_eq!(
        pt.translate(base),
        Some((pfn, PageProt::KERNEL_UC_MINUS | PageProt::EXEC))
    );
    // SAFETY: this test made the mapping and uses it no more (iounmap).
    unsafe { pt.unmap(base) }.unwrap().1.flush(&pt);
    assert_eq!(m.stale_translations(), 0);
    // The device keeps its bytes once nobody maps it.
    m.read_device(phys, &mut seen).unwrap();
    assert_eq!(seen[15], 16);
    zones.check().unwrap();
}
