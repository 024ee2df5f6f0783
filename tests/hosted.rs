//! The hosted 64-bit preset: boot, zones DMA and DMA32, and real bytes
//! through the direct map. Small enough for miri.

use kmm::MemoryManager;
use kmm_api::{DirectMap, Order, __GFP_ZERO, GFP_DMA, GFP_KERNEL, PAGE_SIZE};
use kmm_zones::ZoneType;

fn ram_bytes() -> usize {
    if cfg!(miri) {
        20 << 20
    } else {
        64 << 20
    }
}

#[test]
fn hosted_machine_has_dma_and_dma32_and_no_highmem() {
    let mm = MemoryManager::hosted(ram_bytes(), 2).unwrap();
    let populated = mm.zones().populated_zones();
    assert!(populated[ZoneType::Dma.index()]);
    assert!(populated[ZoneType::Dma32.index()]);
    assert!(!populated[ZoneType::HighMem.index()]);
    assert_eq!(mm.layout().highmem_bytes(), 0);
    let pfn = mm.zones().alloc_pages(GFP_DMA, Order::ZERO).unwrap();
    assert_eq!(mm.zones().page_zone(pfn), Some(ZoneType::Dma));
    mm.zones().__free_pages(pfn, Order::ZERO).unwrap();
}

#[test]
fn hosted_pages_are_host_memory_and_zeroed_on_request() {
    let mm = MemoryManager::hosted(ram_bytes(), 1).unwrap();
    let zones = mm.zones();
    let pfn = zones.alloc_pages(GFP_KERNEL, Order::ZERO).unwrap();
    let ptr = zones.direct_map().pfn_to_ptr(pfn).unwrap().as_ptr();
    // SAFETY: the frame was just allocated by this test.
    unsafe { ptr.write_bytes(0xaa, PAGE_SIZE) };
    zones.__free_pages(pfn, Order::ZERO).unwrap();
    let again = zones
        .alloc_pages(GFP_KERNEL | __GFP_ZERO, Order::ZERO)
        .unwrap();
    let ptr = zones.direct_map().pfn_to_ptr(again).unwrap().as_ptr();
    // SAFETY: the frame was just allocated by this test.
    let bytes = unsafe { core::slice::from_raw_parts(ptr, PAGE_SIZE) };
    assert!(bytes.iter().all(|&b| b == 0));
    zones.__free_pages(again, Order::ZERO).unwrap();
    zones.check().unwrap();
}

#[test]
fn boot_refuses_ram_beyond_the_layout_and_a_map_without_room_for_metadata() {
    use kmm::hosted::Hosted;
    use kmm::Layout;
    use kmm_api::{Error, MemoryRegion, RegionKind};
    let host = Hosted::new(ram_bytes(), 1).unwrap();
    let half = Layout::x86_64_at(ram_bytes() as u64 / 2, host.layout().page_offset()).unwrap();
    // SAFETY: the buffer is used by nothing else, and the handles passed
    // keep it alive for as long as a manager could.
    let beyond =
        unsafe { MemoryManager::boot(&host.memory_map(), half, host.clone(), host.clone()) };
    assert!(matches!(beyond.err(), Some(Error::BadPhysAddr { .. })));
    let all_kernel = [
        MemoryRegion::new(0, 2 * PAGE_SIZE as u64, RegionKind::Usable),
        MemoryRegion::new(0, 2 * PAGE_SIZE as u64, RegionKind::KernelImage),
    ];
    // SAFETY: as above.
    let full = unsafe { MemoryManager::boot(&all_kernel, *host.layout(), host.clone(), host) };
    assert!(full.is_err(), "no free RAM for mem_map");
}

#[test]
fn boot_metadata_lies_in_reserved_ram_and_the_rest_is_managed() {
    let mm = MemoryManager::hosted(ram_bytes(), 2).unwrap();
    let meta = mm.boot_metadata();
    assert!(meta.base.as_u64() + meta.bytes as u64 <= ram_bytes() as u64);
    let managed = mm.zones().managed_pages();
    assert_eq!(managed, mm.memory_pages() - mm.reserved_pages());
    assert_eq!(mm.reserved_pages(), meta.bytes.div_ceil(PAGE_SIZE));
}
