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
