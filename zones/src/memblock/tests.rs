//! Unit tests of the boot allocator, one per rule.

extern crate std;
use super::*;
use kmm_api::Order;
use std::vec::Vec;

const KIB: u64 = 1 << 10;
const MIB: u64 = 1 << 20;
const GIB: u64 = 1 << 30;
const NO_LIMIT: PhysAddr = PhysAddr::new(u64::MAX);

fn pa(addr: u64) -> PhysAddr {
    PhysAddr::new(addr)
}

fn pfns(ranges: impl Iterator<Item = (Pfn, Pfn)>) -> Vec<(usize, usize)> {
    ranges.map(|(s, e)| (s.as_usize(), e.as_usize())).collect()
}

fn page(addr: u64) -> usize {
    (addr / PAGE) as usize
}

/// A 2 GiB PC as its BIOS describes it: conventional memory up to the
/// EBDA, the VGA/BIOS hole, RAM from 1 MiB up to the ACPI tables, and
/// the kernel image loaded at 1 MiB.
fn two_gib_pc() -> [MemoryRegion; 7] {
    [
        MemoryRegion::new(0, 0x9_fc00, RegionKind::Usable),
        MemoryRegion::new(0x9_fc00, 0xa_0000, RegionKind::Reserved),
        MemoryRegion::new(0xe_8000, MIB, RegionKind::Reserved),
        MemoryRegion::new(MIB, 2 * GIB - 64 * KIB, RegionKind::Usable),
        MemoryRegion::new(2 * GIB - 64 * KIB, 2 * GIB, RegionKind::Reserved),
        MemoryRegion::new(4 * GIB - 256 * KIB, 4 * GIB, RegionKind::Reserved),
        MemoryRegion::new(MIB, 0x5a_3456, RegionKind::KernelImage),
    ]
}

#[test]
fn pc_map_frees_all_ram_but_the_holes_and_the_kernel() {
    let mb = Memblock::from_memory_map(&two_gib_pc()).unwrap();
    let top = page(2 * GIB - 64 * KIB);
    // The EBDA's partial page is not RAM; the kernel's last partial page is in use.
    assert_eq!(pfns(mb.memory_ranges()), [(0, 0x9f), (0x100, top)]);
    assert_eq!(pfns(mb.reserved_ranges()), [(0x100, 0x5a4)]);
    assert_eq!(pfns(mb.free_ranges()), [(0, 0x9f), (0x5a4, top)]);
    assert_eq!((mb.start_pfn(), mb.end_pfn()), (Pfn::new(0), Pfn::new(top)));
    assert_eq!(mb.memory_pages(), 0x9f + top - 0x100);
    assert_eq!(mb.reserved_pages(), 0x5a4 - 0x100);
}

#[test]
fn map_order_does_not_matter() {
    let mut map = two_gib_pc();
    let expected = Memblock::from_memory_map(&map).unwrap();
    map.reverse();
    let reversed = Memblock::from_memory_map(&map).unwrap();
    map.rotate_left(3);
    let rotated = Memblock::from_memory_map(&map).unwrap();
    for mb in [reversed, rotated] {
        assert_eq!(pfns(mb.memory_ranges()), pfns(expected.memory_ranges()));
        assert_eq!(pfns(mb.free_ranges()), pfns(expected.free_ranges()));
    }
}

#[test]
fn overlapping_entries_reserved_beats_usable_and_kernel_beats_both() {
    let map = [
        MemoryRegion::new(0, 8 * MIB, RegionKind::Usable),
        MemoryRegion::new(4 * MIB, 12 * MIB, RegionKind::Usable),
        MemoryRegion::new(6 * MIB, 7 * MIB, RegionKind::Reserved),
        MemoryRegion::new(
            6 * MIB + 512 * KIB,
            6 * MIB + 520 * KIB,
            RegionKind::KernelImage,
        ),
    ];
    let mb = Memblock::from_memory_map(&map).unwrap();
    let (six, seven) = (page(6 * MIB), page(7 * MIB));
    let kernel = page(6 * MIB + 512 * KIB);
    assert_eq!(
        pfns(mb.memory_ranges()),
        [(0, six), (kernel, kernel + 2), (seven, page(12 * MIB))]
    );
    assert_eq!(pfns(mb.free_ranges()), [(0, six), (seven, page(12 * MIB))]);
}

#[test]
fn usable_shrinks_inward_and_reserved_grows_outward() {
    let mut mb = Memblock::new();
    mb.add(pa(0x1800), 0x3000).unwrap();
    assert_eq!(pfns(mb.memory_ranges()), [(2, 4)]);
    mb.add(pa(0x10_0100), 0x100).unwrap();
    assert_eq!(mb.memory_pages(), 2, "a sub-page range adds nothing");
    mb.reserve(pa(0x2fff), 2).unwrap();
    assert_eq!(pfns(mb.reserved_ranges()), [(2, 4)]);
}

#[test]
fn add_merges_overlapping_and_touching_ranges() {
    let mut mb = Memblock::new();
    mb.add(pa(8 * PAGE), 2 * PAGE).unwrap();
    mb.add(pa(0), 2 * PAGE).unwrap();
    mb.add(pa(4 * PAGE), 2 * PAGE).unwrap();
    assert_eq!(pfns(mb.memory_ranges()), [(0, 2), (4, 6), (8, 10)]);
    mb.add(pa(2 * PAGE), 2 * PAGE).unwrap();
    assert_eq!(pfns(mb.memory_ranges()), [(0, 6), (8, 10)]);
    mb.add(pa(PAGE), 8 * PAGE).unwrap();
    assert_eq!(pfns(mb.memory_ranges()), [(0, 10)]);
}

#[test]
fn remove_trims_and_splits() {
    let mut mb = Memblock::new();
    mb.add(pa(0), 10 * PAGE).unwrap();
    mb.remove(pa(4 * PAGE), PAGE).unwrap();
    assert_eq!(pfns(mb.memory_ranges()), [(0, 4), (5, 10)]);
    mb.remove(pa(3 * PAGE), 3 * PAGE).unwrap();
    assert_eq!(pfns(mb.memory_ranges()), [(0, 3), (6, 10)]);
    mb.remove(pa(0), 100 * PAGE).unwrap();
    assert_eq!(mb.memory_pages(), 0);
    assert_eq!((mb.start_pfn(), mb.end_pfn()), (Pfn::new(0), Pfn::new(0)));
}

#[test]
fn alloc_is_top_down_below_the_limit() {
    let mut mb = Memblock::from_memory_map(&two_gib_pc()).unwrap();
    let a = mb.alloc(3 * PAGE, PAGE, pa(896 * MIB)).unwrap();
    assert_eq!(a, pa(896 * MIB - 3 * PAGE));
    let b = mb.alloc(PAGE, 0, pa(896 * MIB)).unwrap();
    assert_eq!(b, pa(896 * MIB - 4 * PAGE), "the next one goes just below");
    let c = mb.alloc(100, 0, NO_LIMIT).unwrap();
    assert_eq!(c, pa(2 * GIB - 64 * KIB - PAGE), "no limit: the top of RAM");
}

#[test]
fn alloc_respects_alignment() {
    let mut mb = Memblock::from_memory_map(&two_gib_pc()).unwrap();
    let limit = pa(16 * MIB - PAGE);
    let a = mb.alloc(PAGE, MIB, limit).unwrap();
    assert_eq!(a, pa(15 * MIB));
    let b = mb.alloc(2 * MIB, 4 * MIB, NO_LIMIT).unwrap();
    assert!(b.is_aligned(4 * MIB));
    assert_eq!(b, pa(2 * GIB - 4 * MIB));
}

#[test]
fn alloc_skips_reservations_and_holes() {
    let mut mb = Memblock::new();
    mb.add(pa(0), 16 * PAGE).unwrap();
    mb.reserve(pa(12 * PAGE), 4 * PAGE).unwrap();
    mb.reserve(pa(6 * PAGE), 2 * PAGE).unwrap();
    // Free: [0, 6) and [8, 12); four pages fit only in the lower range.
    assert_eq!(mb.alloc(4 * PAGE, 0, NO_LIMIT), Ok(pa(8 * PAGE)));
    assert_eq!(mb.alloc(5 * PAGE, 0, NO_LIMIT), Ok(pa(PAGE)));
    assert_eq!(pfns(mb.free_ranges()), [(0, 1)]);
}

#[test]
fn region_straddling_the_limit_is_used_only_below_it() {
    let mut mb = Memblock::new();
    mb.add(pa(0), 32 * MIB).unwrap();
    let a = mb.alloc(MIB, 0, pa(16 * MIB + 5 * PAGE + 123)).unwrap();
    assert_eq!(
        a,
        pa(15 * MIB + 5 * PAGE),
        "ends at the limit, rounded down to a page"
    );
    assert!(mb.alloc(17 * MIB, 0, pa(16 * MIB)).is_err());
}

#[test]
fn failed_alloc_is_an_error_and_changes_nothing() {
    let mut mb = Memblock::new();
    mb.add(pa(0), 4 * PAGE).unwrap();
    mb.reserve(pa(PAGE), PAGE).unwrap();
    let before = (pfns(mb.free_ranges()), pfns(mb.reserved_ranges()));
    let order = Order::new(1).unwrap();
    assert_eq!(
        mb.alloc(3 * PAGE, 0, NO_LIMIT),
        Err(Error::NoMemory {
            order: Order::new(2).unwrap()
        })
    );
    assert_eq!(
        mb.alloc(2 * PAGE, 0, pa(PAGE)),
        Err(Error::NoMemory { order })
    );
    assert_eq!(mb.alloc(0, 0, NO_LIMIT), Err(Error::ZeroSize));
    assert_eq!(
        mb.alloc(PAGE, 3 * PAGE, NO_LIMIT),
        Err(Error::BadAlignment { align: 3 * PAGE })
    );
    assert!(matches!(
        mb.alloc(u64::MAX, 0, NO_LIMIT),
        Err(Error::SizeTooLarge { .. })
    ));
    assert_eq!((pfns(mb.free_ranges()), pfns(mb.reserved_ranges())), before);
}

#[test]
fn overflowing_and_inverted_ranges_are_errors() {
    let mut mb = Memblock::new();
    assert_eq!(
        mb.add(pa(u64::MAX - 10), 20),
        Err(Error::BadPhysAddr {
            addr: pa(u64::MAX - 10)
        })
    );
    assert!(
        mb.reserve(pa(u64::MAX - 10), 5).is_err(),
        "cannot round up past the top"
    );
    let inverted = [MemoryRegion::new(2 * MIB, MIB, RegionKind::Usable)];
    assert!(matches!(
        Memblock::from_memory_map(&inverted),
        Err(Error::BadPhysAddr { .. })
    ));
    assert_eq!(mb.memory_pages() + mb.reserved_pages(), 0);
}

#[test]
fn capacity_overflow_is_an_error_and_changes_nothing() {
    let mut mb = Memblock::new();
    for i in 0..MEMBLOCK_REGIONS as u64 {
        mb.add(pa(2 * i * PAGE), PAGE).unwrap();
    }
    let full = pfns(mb.memory_ranges());
    let err = Error::TooManyRegions {
        capacity: MEMBLOCK_REGIONS,
    };
    assert_eq!(mb.add(pa(1000 * PAGE), PAGE), Err(err));
    assert_eq!(pfns(mb.memory_ranges()), full);
    // Filling a gap merges three ranges into one: that still fits.
    mb.add(pa(PAGE), PAGE).unwrap();
    assert_eq!(mb.memory_ranges().count(), MEMBLOCK_REGIONS - 1);
    mb.add(pa(1000 * PAGE), PAGE).unwrap();
    // Splitting a range in a full set needs one more slot.
    let before = pfns(mb.memory_ranges());
    assert_eq!(mb.remove(pa(PAGE), PAGE), Err(err));
    assert_eq!(pfns(mb.memory_ranges()), before);
    let map: Vec<_> = (0..=MEMBLOCK_REGIONS as u64)
        .map(|i| MemoryRegion::new(2 * i * PAGE, (2 * i + 1) * PAGE, RegionKind::Usable))
        .collect();
    assert_eq!(Memblock::from_memory_map(&map).err(), Some(err));
}

#[test]
fn alloc_with_a_full_reserved_set_fails_cleanly() {
    let mut mb = Memblock::new();
    mb.add(pa(0), 4 * MEMBLOCK_REGIONS as u64 * PAGE).unwrap();
    for i in 0..MEMBLOCK_REGIONS as u64 {
        mb.reserve(pa(4 * i * PAGE), PAGE).unwrap();
    }
    let before = pfns(mb.free_ranges());
    // The top free range is not adjacent to a reservation only if the
    // allocation lands in its middle: ask for one page aligned to two.
    let err = Error::TooManyRegions {
        capacity: MEMBLOCK_REGIONS,
    };
    assert_eq!(mb.alloc(PAGE, 2 * PAGE, NO_LIMIT), Err(err));
    assert_eq!(pfns(mb.free_ranges()), before);
}

#[test]
fn free_returns_a_reservation_to_the_free_ranges() {
    let mut mb = Memblock::new();
    mb.add(pa(0), 8 * PAGE).unwrap();
    let a = mb.alloc(100, 0, NO_LIMIT).unwrap();
    assert_eq!(pfns(mb.free_ranges()), [(0, 7)]);
    mb.free(a, 100).unwrap();
    assert_eq!(pfns(mb.free_ranges()), [(0, 8)]);
    assert_eq!(mb.reserved_pages(), 0);
}

#[test]
fn reservations_outside_ram_do_not_make_free_ranges() {
    let mut mb = Memblock::new();
    mb.add(pa(4 * PAGE), 4 * PAGE).unwrap();
    mb.reserve(pa(0), 5 * PAGE).unwrap();
    mb.reserve(pa(7 * PAGE), 10 * PAGE).unwrap();
    assert_eq!(pfns(mb.free_ranges()), [(5, 7)]);
    assert_eq!(mb.reserved_pages(), 15);
}
