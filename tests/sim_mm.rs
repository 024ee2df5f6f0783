//! The memory manager on a simulated i386 machine: boot bookkeeping, the
//! seeds' zone sizes, and the kernel page table fed by the zones.

use kmm::sim::MachineConfig;
use kmm::{MemoryManager, SimMemoryManager};
use kmm_api::{
    DirectMap, KernelPageTable, Order, PageProt, Pfn, __GFP_ZERO, GFP_HIGHUSER, GFP_KERNEL,
    PAGE_SIZE,
};
use kmm_zones::ZoneType;

const MIB: u64 = 1 << 20;

fn sim(ram_bytes: u64) -> SimMemoryManager {
    MemoryManager::sim(MachineConfig {
        ram_bytes,
        ..MachineConfig::default()
    })
    .unwrap()
}

#[test]
fn a_2_gib_machine_spans_16_mib_dma_880_mib_normal_1152_mib_highmem() {
    let mm = sim(2 << 30);
    let stats = mm.zones().zone_stats();
    let mib = |z: ZoneType| (stats[z.index()].unwrap().spanned * PAGE_SIZE) as u64 / MIB;
    assert_eq!(mib(ZoneType::Dma), 16);
    assert_eq!(mib(ZoneType::Normal), 880);
    assert_eq!(mib(ZoneType::HighMem), 1152);
    assert!(stats[ZoneType::Dma32.index()].is_none());
}

#[test]
fn boot_metadata_is_reserved_lowmem_and_not_managed() {
    let mm = sim(1 << 30);
    let meta = mm.boot_metadata();
    let end = meta.base.as_u64() + meta.bytes as u64;
    assert!(end <= mm.layout().lowmem_limit().as_u64());
    assert!(meta.bytes >= (mm.layout().max_pfn().as_usize()) * 16);
    let managed = mm.zones().managed_pages();
    assert_eq!(managed, mm.memory_pages() - mm.reserved_pages());
    let meta_pages = meta.bytes.div_ceil(PAGE_SIZE);
    assert!(mm.reserved_pages() >= meta_pages);
}

#[test]
fn page_table_pages_come_from_the_zones_and_are_kept_as_linux_keeps_them() {
    let mm = sim(1 << 30);
    let zones = mm.zones();
    zones.drain_all_pages();
    let free = zones.nr_free_pages();
    let pt = mm.kernel_page_table().unwrap();
    let tables_before = pt.table_pages();
    assert_eq!(mm.meminfo().page_tables, tables_before);
    {
        let high = zones.alloc_pages(GFP_HIGHUSER, Order::ZERO).unwrap();
        assert_eq!(zones.page_zone(high.pfn()), Some(ZoneType::HighMem));
        let a = mm.layout().vmalloc_start();
        let b = a.checked_add(4 << 20).unwrap(); // the next PTE page's range
                                                 // SAFETY: this test holds `high` and owns the kernel range: it is
                                                 // the only user of this machine's page table.
        unsafe {
            pt.map(a, high.pfn(), PageProt::KERNEL).unwrap();
            pt.map(b, high.pfn(), PageProt::KERNEL).unwrap();
        }
        assert_eq!(pt.table_pages(), tables_before + 2, "a PTE page each");
        let pa = mm.machine().virt_to_ptr(a);
        let pb = mm.machine().virt_to_ptr(b);
        // SAFETY: both addresses map `high`, held by this test.
        unsafe {
            pa.add(100).write_volatile(0x42);
            assert_eq!(pb.add(100).read_volatile(), 0x42);
        }
        // SAFETY: this test made both mappings and uses neither again.
        unsafe {
            pt.unmap(a).unwrap().1.flush(pt);
            pt.unmap(b).unwrap().1.flush(pt);
        }
        zones.__free_pages(high).unwrap();
    }
    zones.drain_all_pages();
    assert_eq!(zones.nr_free_pages(), free - 2, "the two PTE pages stay");
    assert_eq!(mm.meminfo().page_tables, tables_before + 2);
    mm.check().unwrap();
}

#[test]
fn gfp_zero_clears_highmem_frames_through_the_platform() {
    let mm = sim(1 << 30);
    let zones = mm.zones();
    let pt = mm.kernel_page_table().unwrap();
    let addr = mm.layout().vmalloc_start();
    let dirty = zones.alloc_pages(GFP_HIGHUSER, Order::ZERO).unwrap();
    let dirty_pfn = dirty.pfn();
    // SAFETY: this test holds `dirty` and owns the kernel range (the only
    // user of this machine's page table); it writes through the mapping,
    // then removes it and uses it no more before freeing the frame.
    unsafe {
        pt.map(addr, dirty_pfn, PageProt::KERNEL).unwrap();
        mm.machine().virt_to_ptr(addr).write_bytes(0xee, PAGE_SIZE);
        pt.unmap(addr).unwrap().1.flush(pt);
    }
    zones.__free_pages(dirty).unwrap();
    // The per-CPU list hands the same frame back first.
    let clean = zones
        .alloc_pages(GFP_HIGHUSER | __GFP_ZERO, Order::ZERO)
        .unwrap();
    // SAFETY: this test holds `clean` and owns the kernel range; `addr`
    // was unmapped above.
    unsafe { pt.map(addr, clean.pfn(), PageProt::KERNEL) }.unwrap();
    let ptr = mm.machine().virt_to_ptr(addr);
    // SAFETY: `addr` maps `clean`, PAGE_SIZE bytes, held by this test.
    let bytes = unsafe { core::slice::from_raw_parts(ptr, PAGE_SIZE) };
    assert!(bytes.iter().all(|&b| b == 0));
    assert_eq!(clean.pfn(), dirty_pfn);
    // SAFETY: this test made the mapping and uses it no more.
    unsafe { pt.unmap(addr) }.unwrap().1.flush(pt);
    zones.__free_pages(clean).unwrap();
}

#[test]
fn direct_map_addresses_are_real_pointers_into_the_same_ram() {
    let mm = sim(64 * MIB);
    let zones = mm.zones();
    let addr = zones
        .__get_free_pages(GFP_KERNEL, Order::new(1).unwrap())
        .unwrap();
    let pfn = zones.virt_to_page(addr).unwrap();
    assert_eq!(zones.page_address(pfn), Some(addr));
    let ptr = mm.machine().virt_to_ptr(addr);
    // SAFETY: two pages just allocated, mapped in the direct map.
    unsafe { ptr.add(PAGE_SIZE).write(9) };
    let second = mm
        .machine()
        .pfn_to_ptr(Pfn::new(pfn.as_usize() + 1))
        .unwrap();
    // SAFETY: the second page of the block, held by this test.
    assert_eq!(unsafe { second.as_ptr().read() }, 9);
    // SAFETY: this test holds the block `__get_free_pages` returned at
    // `addr`, with this order, and gives it up.
    unsafe { zones.free_pages(addr, Order::new(1).unwrap()) }.unwrap();
}
