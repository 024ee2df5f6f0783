//! The seeds' layout figures and the ordering of the areas, checked from
//! the arithmetic.

use super::*;

#[test]
fn lowmem_limit_is_896_mib_from_the_split_minus_the_vmalloc_reserve() {
    assert_eq!(Layout::i386_maxmem(), 896 * MIB);
    let l = Layout::i386(4 * GIB, false).unwrap();
    assert_eq!(l.lowmem_bytes(), 896 * MIB);
    assert_eq!(l.max_low_pfn(), Pfn::new((896 * MIB / PAGE) as usize));
    assert_eq!(l.high_memory().as_usize(), 0xf800_0000);
}

#[test]
fn small_machine_maps_all_ram_and_vmalloc_starts_8_mib_above_it() {
    let l = Layout::i386(160 * MIB, false).unwrap();
    assert_eq!(l.lowmem_bytes(), 160 * MIB);
    assert_eq!(l.highmem_bytes(), 0);
    let expected = 3 * GIB + 160 * MIB + 8 * MIB;
    assert_eq!(l.vmalloc_start().as_usize() as u64, expected);
}

#[test]
fn two_gib_machine_has_16_mib_dma_880_mib_normal_1152_mib_highmem() {
    let l = Layout::i386(2 * GIB, false).unwrap();
    let mib = |p: Pfn| p.phys().as_u64() / MIB;
    let dma = mib(l.dma_end_pfn());
    let normal = mib(l.max_low_pfn()) - dma;
    let high = mib(l.max_pfn()) - mib(l.max_low_pfn());
    assert_eq!((dma, normal, high), (16, 880, 1152));
    assert_eq!(l.dma32_end_pfn(), None);
}

#[test]
fn pae_halves_last_pkmap_and_the_pmd_alignment() {
    let plain = Layout::i386(2 * GIB, false).unwrap();
    let pae = Layout::i386(2 * GIB, true).unwrap();
    assert_eq!(plain.last_pkmap(), 1024);
    assert_eq!(pae.last_pkmap(), 512);
    for (l, pmd) in [(plain, 4 << 20), (pae, 2 << 20)] {
        let base = l.pkmap_base().unwrap().as_usize();
        let last = l.pkmap_addr(l.last_pkmap() - 1).unwrap().as_usize();
        assert_eq!(base % pmd, 0);
        // One PTE page of slots: the whole pool sits in one PMD.
        assert_eq!(base / pmd, last / pmd);
    }
    // Half the slots and a finer alignment leave more room for vmalloc.
    assert!(pae.vmalloc_end() > plain.vmalloc_end());
}

#[test]
fn areas_are_ordered_and_disjoint_from_lowmem_to_the_fixmap() {
    for pae in [false, true] {
        let l = Layout::i386(2 * GIB, pae).unwrap();
        let pkmap_end = l.pkmap_addr(l.last_pkmap() - 1).unwrap().as_usize() + PAGE_SIZE;
        assert!(l.page_offset() < l.high_memory());
        assert_eq!(
            l.vmalloc_start().checked_sub_addr(l.high_memory()),
            Some(VMALLOC_OFFSET as usize)
        );
        assert!(l.vmalloc_start() < l.vmalloc_end());
        assert_eq!(
            l.pkmap_base().unwrap().checked_sub_addr(l.vmalloc_end()),
            Some(2 * PAGE_SIZE)
        );
        assert!(pkmap_end <= l.fixaddr_start().as_usize());
        assert_eq!(l.fixaddr_top().as_usize() as u64, I386_VA_SIZE - PAGE);
    }
}

#[test]
fn kmap_local_slots_are_distinct_fixmap_pages_below_the_hole() {
    let l = Layout::i386(GIB, false).unwrap();
    let first = l.kmap_local_addr(0, 0).unwrap();
    let last = l.kmap_local_addr(NR_CPUS - 1, KM_MAX_IDX - 1).unwrap();
    assert_eq!(l.fix_to_virt(FIX_HOLE), Some(l.fixaddr_top()));
    assert_eq!(first.as_usize() + PAGE_SIZE, l.fixaddr_top().as_usize());
    assert_eq!(last.as_usize(), l.fixaddr_start().as_usize() + PAGE_SIZE);
    assert_eq!(l.kmap_local_addr(NR_CPUS, 0), None);
    assert_eq!(l.kmap_local_addr(0, KM_MAX_IDX), None);
}

#[test]
fn ram_beyond_the_page_table_format_is_refused() {
    assert!(Layout::i386(0, false).is_err());
    assert!(Layout::i386(4 * GIB + PAGE, false).is_err());
    assert!(Layout::i386(8 * GIB, true).is_ok());
    assert!(Layout::i386(64 * GIB + PAGE, true).is_err());
}

#[test]
fn x86_64_maps_all_ram_with_dma32_below_4_gib() {
    let l = Layout::x86_64(8 * GIB).unwrap();
    assert_eq!(l.highmem_bytes(), 0);
    assert_eq!(l.max_low_pfn(), l.max_pfn());
    assert_eq!(l.dma32_end_pfn(), Some(pfn(4 * GIB)));
    assert_eq!(l.pkmap_base(), None);
    assert!(l.kmap_local_addr(0, 0).is_some());
    assert_eq!(l.fixaddr_top().as_usize(), 0xffff_ffff_ff7f_f000);
    let small = Layout::x86_64(64 * MIB).unwrap();
    assert_eq!(small.dma32_end_pfn(), Some(small.max_pfn()));
    assert!(Layout::x86_64_at(MIB, VirtAddr::new(0x1001)).is_err());
}

#[test]
fn display_prints_the_boot_banner_areas() {
    extern crate std;
    use std::string::ToString;
    let text = Layout::i386(2 * GIB, false).unwrap().to_string();
    assert!(text.starts_with("virtual kernel memory layout:\n"));
    assert!(text.contains("    lowmem  : 0xc0000000 - 0xf8000000   ( 896 MB)\n"));
    assert!(text.contains("    pkmap   : "));
    assert!(text.contains("( 4096 kB)") || text.contains("(4096 kB)"));
}

#[test]
fn zone_config_splits_at_dma_and_max_low_pfn() {
    let l = Layout::i386(2 * GIB, false).unwrap();
    let c = l.zone_config(Order::new(10).unwrap());
    assert_eq!(c.dma_end, pfn(16 * MIB));
    assert_eq!(c.dma32_end, None);
    assert_eq!(c.lowmem_end, pfn(896 * MIB));
    let small = Layout::i386(8 * MIB, false)
        .unwrap()
        .zone_config(Order::ZERO);
    assert_eq!(
        (small.dma_end, small.lowmem_end),
        (pfn(8 * MIB), pfn(8 * MIB))
    );
}

#[test]
fn x86_64_display_prints_64_bit_addresses_and_no_pkmap() {
    extern crate std;
    use std::string::ToString;
    let text = Layout::x86_64(4 * GIB).unwrap().to_string();
    assert!(text.contains("    lowmem  : 0xffff888000000000 - 0xffff888100000000   (4096 MB)\n"));
    assert!(text.contains("    vmalloc : 0xffffc90000000000 - "));
    assert!(!text.contains("pkmap"));
}
