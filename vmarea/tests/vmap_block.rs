//! `vm_map_ram` / `vm_unmap_ram` and the per-CPU vmap blocks, one test per
//! rule, on the test doubles: frames the caller holds, a page table with a
//! modelled TLB (an unmapped page stays stale until a flush covers it, and
//! mapping over it is refused), and CPUs a test migrates between.

use kmm_api::{FrameAllocator, PageProt, Pages, Pfn, VirtAddr, PAGE_SIZE};
use kmm_vmarea::testing::{BufferSource, TestCpus, TestFrames, TestMemory, TestTable};
use kmm_vmarea::{
    vmap_bbmap_bits, VmFlags, Vmalloc, VmallocInfo, VmapAreas, VmareaError, VMAP_BBMAP_BITS_MAX,
    VMAP_BBMAP_BITS_MIN, VMAP_MAX_ALLOC,
};

const START: usize = 0xf880_0000;
const RANGE: usize = 4 << 20;
const CPUS: usize = 2;

type Blocks<'a> =
    Vmalloc<&'a TestFrames, &'a TestTable, BufferSource, &'a TestMemory, &'a TestCpus>;

struct Machine {
    frames: TestFrames,
    table: TestTable,
    memory: TestMemory,
    cpus: TestCpus,
}

impl Machine {
    fn new() -> Self {
        TestCpus::run_on(0);
        Machine {
            frames: TestFrames::new(4 * VMAP_MAX_ALLOC),
            table: TestTable::default(),
            memory: TestMemory::new(VirtAddr::new(START), RANGE),
            cpus: TestCpus::new(CPUS),
        }
    }

    fn areas() -> VmapAreas<BufferSource> {
        let (start, end) = (VirtAddr::new(START), VirtAddr::new(START + RANGE));
        VmapAreas::new(BufferSource::pages(64), start, end, CPUS).unwrap()
    }

    fn vmalloc(&self) -> Blocks<'_> {
        // SAFETY: the table maps this range only for this vmalloc, the
        // frames are the table's to map, and the memory stands for the range.
        unsafe {
            Vmalloc::with_vmap_blocks(
                Self::areas(),
                &self.frames,
                &self.table,
                &self.memory,
                &self.cpus,
            )
        }
        .unwrap()
    }

    /// `n` frames, held by the test.
    fn frames(&self, n: usize) -> Vec<Pages> {
        (0..n)
            .map(|_| {
                self.frames
                    .alloc_frames(kmm_api::GFP_KERNEL, kmm_api::Order::ZERO)
                    .unwrap()
            })
            .collect()
    }
}

/// Pages per block on the test machine.
fn bits() -> usize {
    vmap_bbmap_bits(RANGE, CPUS)
}

fn page(addr: VirtAddr, i: usize) -> VirtAddr {
    VirtAddr::new(addr.as_usize() + i * PAGE_SIZE)
}

fn mapped_pfns(v: &Blocks<'_>, addr: VirtAddr, n: usize) -> Vec<Option<Pfn>> {
    (0..n).map(|i| v.vmalloc_to_page(page(addr, i))).collect()
}

fn pfns(pages: &[Pages]) -> Vec<Option<Pfn>> {
    pages.iter().map(|p| Some(p.pfn())).collect()
}

#[test]
fn block_size_follows_linux_vmap_bbmap_bits() {
    // i386: the 111 MiB range counts as its 128 MiB reserve; 8 CPUs give
    // 256-page (1 MiB) blocks (REFERENCE-VM section 6).
    assert_eq!(vmap_bbmap_bits(111 << 20, 8), 256);
    assert_eq!(
        vmap_bbmap_bits(PAGE_SIZE, 1),
        VMAP_BBMAP_BITS_MIN,
        "clamped up"
    );
    assert_eq!(
        vmap_bbmap_bits(usize::MAX / 2 + 1, 1),
        VMAP_BBMAP_BITS_MAX,
        "clamped down"
    );
    assert_eq!(VMAP_BBMAP_BITS_MIN, 2 * VMAP_MAX_ALLOC);
    assert_eq!(VMAP_MAX_ALLOC, usize::BITS as usize, "BITS_PER_LONG");
    let m = Machine::new();
    assert_eq!(m.vmalloc().stats().vmap_block_pages, bits());
}

#[test]
fn a_small_vm_map_ram_maps_the_held_frames_from_the_cpus_block_and_unmap_leaves_them() {
    let m = Machine::new();
    let v = m.vmalloc();
    let held = m.frames(3);
    let addr = v.vm_map_ram(&held, PageProt::KERNEL).unwrap();
    assert_eq!(
        addr,
        VirtAddr::new(START),
        "the first block starts the range"
    );
    assert_eq!(mapped_pfns(&v, addr, 3), pfns(&held));
    assert_eq!(v.stats().vmap_blocks, 1);
    assert_eq!(v.stats().vm_map_ram, 1);
    assert_eq!(v.find_vm_area(addr), None, "vm_map_ram has no vm_struct");
    assert!(m.cpus.pins() > 0, "the per-CPU path pins its CPU");
    // SAFETY: we made the mapping and give it up.
    unsafe { v.vm_unmap_ram(addr, 3) }.unwrap();
    assert_eq!(mapped_pfns(&v, addr, 3), vec![None; 3], "unmapped at once");
    assert_eq!(m.table.stale(), 3, "flushed lazily");
    assert_eq!(m.frames.in_use(), 3, "the frames stay with their holder");
    assert_eq!(v.stats().vm_map_ram, 0);
    v.check().unwrap();
}

#[test]
fn requests_are_carved_in_order_rounded_to_their_order() {
    let m = Machine::new();
    let v = m.vmalloc();
    let (a, b) = (m.frames(3), m.frames(1));
    let first = v.vm_map_ram(&a, PageProt::KERNEL).unwrap();
    let second = v.vm_map_ram(&b, PageProt::KERNEL).unwrap();
    assert_eq!(second, page(first, 4), "3 pages reserve an order-2 range");
    assert_eq!(v.stats().vmap_blocks, 1, "one block serves both");
    assert_eq!(v.vmalloc_to_page(page(first, 3)), None, "the padding page");
    v.check().unwrap();
}

#[test]
fn each_cpu_maps_from_its_own_block_and_a_migrated_caller_uses_its_new_cpus() {
    let m = Machine::new();
    let v = m.vmalloc();
    let held = m.frames(3);
    let on0 = v.vm_map_ram(&held[..1], PageProt::KERNEL).unwrap();
    TestCpus::run_on(1);
    let on1 = v.vm_map_ram(&held[1..2], PageProt::KERNEL).unwrap();
    assert_eq!(v.stats().vmap_blocks, 2);
    assert_eq!(on1, page(on0, bits()), "CPU 1's block follows CPU 0's");
    // Back on CPU 0: its block again.
    TestCpus::run_on(0);
    let again = v.vm_map_ram(&held[2..], PageProt::KERNEL).unwrap();
    assert_eq!(again, page(on0, 1));
    // An unmap from another CPU than the one that mapped.
    TestCpus::run_on(1);
    // SAFETY: we made these mappings and give them up.
    unsafe {
        v.vm_unmap_ram(on0, 1).unwrap();
        v.vm_unmap_ram(again, 1).unwrap();
        v.vm_unmap_ram(on1, 1).unwrap();
    }
    TestCpus::run_on(0);
    assert_eq!(m.table.mapped(), 0);
    assert_eq!(
        v.stats().vmap_blocks,
        2,
        "both blocks still have unused pages"
    );
    v.check().unwrap();
}

#[test]
fn a_large_vm_map_ram_takes_an_area_of_its_own_without_a_guard() {
    let m = Machine::new();
    let v = m.vmalloc();
    let held = m.frames(VMAP_MAX_ALLOC + 1);
    let addr = v.vm_map_ram(&held, PageProt::KERNEL).unwrap();
    assert_eq!(v.stats().vmap_blocks, 0, "no block for a large request");
    assert_eq!(mapped_pfns(&v, addr, held.len()), pfns(&held));
    let area = v.areas().find_vmap_area(addr).unwrap();
    assert_eq!(area.size(), held.len() * PAGE_SIZE, "no guard page");
    assert!(area.flags().contains(VmFlags::MAP_RAM));
    assert_eq!(v.find_vm_area(addr), None, "no vm_struct");
    // SAFETY: we made the mapping and give it up.
    unsafe { v.vm_unmap_ram(addr, held.len()) }.unwrap();
    assert_eq!(m.table.mapped(), 0);
    assert_eq!(v.areas().stats().nr_areas, 0);
    assert!(v.purge());
    assert_eq!(m.table.stale(), 0);
    v.check().unwrap();
}

/// What a refused unmap must leave as it was.
fn snapshot(m: &Machine, v: &Blocks<'_>) -> (usize, usize, String, kmm_vmarea::VmallocStats) {
    (
        m.table.mapped(),
        m.table.stale(),
        VmallocInfo(v).to_string(),
        v.stats(),
    )
}

#[test]
fn vm_unmap_ram_with_a_wrong_count_is_refused_and_changes_nothing() {
    let m = Machine::new();
    let v = m.vmalloc();
    let (small, large) = (m.frames(3), m.frames(VMAP_MAX_ALLOC + 2));
    let s = v.vm_map_ram(&small, PageProt::KERNEL).unwrap();
    let l = v.vm_map_ram(&large, PageProt::KERNEL).unwrap();
    let before = snapshot(&m, &v);
    // SAFETY: each call is refused; nothing is given up.
    unsafe {
        for count in [1, 2, 4] {
            assert_eq!(
                v.vm_unmap_ram(s, count),
                Err(VmareaError::WrongCount {
                    addr: s,
                    count,
                    pages: 3
                }),
                "same order or not, the count must match"
            );
        }
        assert_eq!(
            v.vm_unmap_ram(l, VMAP_MAX_ALLOC + 1),
            Err(VmareaError::WrongCount {
                addr: l,
                count: VMAP_MAX_ALLOC + 1,
                pages: VMAP_MAX_ALLOC + 2
            })
        );
        assert_eq!(v.vm_unmap_ram(s, 0), Err(VmareaError::ZeroSize));
    }
    assert_eq!(snapshot(&m, &v), before);
    // SAFETY: now with the right counts.
    unsafe {
        v.vm_unmap_ram(s, 3).unwrap();
        v.vm_unmap_ram(l, VMAP_MAX_ALLOC + 2).unwrap();
    }
    assert_eq!(m.table.mapped(), 0);
    v.check().unwrap();
}

#[test]
fn vm_unmap_ram_of_an_address_it_did_not_return_or_twice_is_refused() {
    let m = Machine::new();
    let v = m.vmalloc();
    let held = m.frames(2);
    let addr = v.vm_map_ram(&held, PageProt::KERNEL).unwrap();
    let vmalloc = v.vmalloc(PAGE_SIZE).unwrap();
    let before = snapshot(&m, &v);
    // SAFETY: each call is refused; nothing is given up.
    unsafe {
        assert!(matches!(
            v.vm_unmap_ram(page(addr, 1), 1),
            Err(VmareaError::Interior { area, .. }) if area == addr
        ));
        assert!(matches!(
            v.vm_unmap_ram(VirtAddr::new(addr.as_usize() + 8), 2),
            Err(VmareaError::Misaligned { .. })
        ));
        assert!(matches!(
            v.vm_unmap_ram(VirtAddr::new(START + RANGE), 2),
            Err(VmareaError::OutOfRange { .. })
        ));
        assert!(matches!(
            v.vm_unmap_ram(page(addr, 5), 1),
            Err(VmareaError::NotAllocated { .. })
        ));
        assert!(matches!(
            v.vm_unmap_ram(vmalloc, 1),
            Err(VmareaError::WrongKind { .. })
        ));
        // Nor may another kind's free take a block or its ranges.
        assert!(matches!(v.vfree(addr), Err(VmareaError::WrongKind { .. })));
        assert!(matches!(v.vunmap(addr), Err(VmareaError::WrongKind { .. })));
        assert!(matches!(
            v.vfree(page(addr, 1)),
            Err(VmareaError::Interior { .. })
        ));
        let block = v.areas().find_vmap_area(addr).unwrap();
        assert!(matches!(
            v.free_vm_area(block),
            Err(VmareaError::WrongKind { .. })
        ));
        assert!(v.remove_vm_area(addr).is_err());
    }
    assert_eq!(snapshot(&m, &v), before);
    // SAFETY: the mapping is ours; the second unmap is refused.
    unsafe {
        v.vm_unmap_ram(addr, 2).unwrap();
        let after = snapshot(&m, &v);
        assert_eq!(
            v.vm_unmap_ram(addr, 2),
            Err(VmareaError::AlreadyFreed { addr })
        );
        assert_eq!(snapshot(&m, &v), after);
        v.vfree(vmalloc).unwrap();
    }
    v.check().unwrap();
}

#[test]
fn a_caller_cannot_forge_the_kmm_private_flags() {
    let m = Machine::new();
    let v = m.vmalloc();
    let forged = VmFlags::MAP_RAM | VmFlags::VMAP_BLOCK | VmFlags::FREEING;
    let area = v.get_vm_area(PAGE_SIZE, VmFlags::MAP | forged).unwrap();
    assert!(!area.flags().intersects(forged));
    let held = m.frames(1);
    let vmapped = v.vmap(&held, forged, PageProt::KERNEL).unwrap();
    let vmalloced = v
        .vmalloc_node_range(
            PAGE_SIZE,
            PAGE_SIZE,
            kmm_api::GFP_KERNEL,
            PageProt::KERNEL,
            forged,
            kmm_vmarea::NUMA_NO_NODE,
        )
        .unwrap();
    // SAFETY: each call is refused.
    unsafe {
        for addr in [area.start(), vmapped, vmalloced] {
            assert!(matches!(
                v.vm_unmap_ram(addr, 1),
                Err(VmareaError::WrongKind { .. })
            ));
        }
    }
    assert_eq!(m.table.mapped(), 2);
    v.check().unwrap();
}

#[test]
fn an_unmapped_range_is_never_handed_out_again_before_its_block_is_purged() {
    let m = Machine::new();
    let v = m.vmalloc();
    let held = m.frames(1);
    let first = v.vm_map_ram(&held, PageProt::KERNEL).unwrap();
    // SAFETY: we made the mapping and give it up.
    unsafe { v.vm_unmap_ram(first, 1) }.unwrap();
    let second = v.vm_map_ram(&held, PageProt::KERNEL).unwrap();
    assert_eq!(second, page(first, 1), "the dirty page is skipped");
    // The stale translation of `first` would have refused a map over it.
    assert_eq!(m.table.stale(), 1);
    v.check().unwrap();
}

#[test]
fn vm_unmap_aliases_flushes_the_dirty_ranges_of_live_blocks_in_one_flush() {
    let m = Machine::new();
    let v = m.vmalloc();
    let held = m.frames(2);
    let keep = v.vm_map_ram(&held[..1], PageProt::KERNEL).unwrap();
    let gone = v.vm_map_ram(&held[1..], PageProt::KERNEL).unwrap();
    let vmalloc = v.vmalloc(PAGE_SIZE).unwrap();
    // SAFETY: we give these up.
    unsafe {
        v.vm_unmap_ram(gone, 1).unwrap();
        v.vfree(vmalloc).unwrap();
    }
    assert_eq!(m.table.stale(), 2);
    let flushes = m.table.flushes();
    assert!(v.purge());
    assert_eq!(m.table.stale(), 0, "block ranges and lazy areas flushed");
    assert_eq!(m.table.flushes(), flushes + 1, "in one flush");
    assert_eq!(
        v.vmalloc_to_page(keep),
        Some(held[0].pfn()),
        "live range kept"
    );
    assert!(!v.purge(), "nothing left to flush");
    v.check().unwrap();
}

/// Fills CPU 0's block with two largest requests; returns their addresses.
fn fill_block(m: &Machine, v: &Blocks<'_>, held: &[Pages]) -> Vec<VirtAddr> {
    assert_eq!(bits(), 2 * VMAP_MAX_ALLOC, "the test machine's blocks");
    TestCpus::run_on(0);
    let _ = m;
    held.chunks(VMAP_MAX_ALLOC)
        .map(|chunk| v.vm_map_ram(chunk, PageProt::KERNEL).unwrap())
        .collect()
}

#[test]
fn a_block_whose_last_range_is_unmapped_from_another_cpu_is_freed_and_purged_lazily() {
    let m = Machine::new();
    let v = m.vmalloc();
    let held = m.frames(2 * VMAP_MAX_ALLOC);
    let ranges = fill_block(&m, &v, &held);
    assert_eq!(v.stats().vmap_blocks, 1);
    TestCpus::run_on(1);
    // SAFETY: we made the mappings and give them up.
    unsafe { v.vm_unmap_ram(ranges[0], VMAP_MAX_ALLOC) }.unwrap();
    assert_eq!(v.stats().vmap_blocks, 1, "one range still live");
    // SAFETY: as above.
    unsafe { v.vm_unmap_ram(ranges[1], VMAP_MAX_ALLOC) }.unwrap();
    let stats = v.stats();
    assert_eq!(stats.vmap_blocks, 0, "every page dirty: the block is freed");
    assert_eq!(stats.areas.nr_areas, 0);
    assert_eq!(stats.areas.lazy_pages, bits(), "its range awaits the purge");
    assert_eq!(m.table.stale(), bits());
    // A freed block's range is gone: a second unmap is refused.
    // SAFETY: refused; nothing is given up.
    let again = unsafe { v.vm_unmap_ram(ranges[1], VMAP_MAX_ALLOC) };
    assert!(matches!(again, Err(VmareaError::AlreadyFreed { .. })));
    assert!(v.purge());
    assert_eq!(m.table.stale(), 0);
    assert_eq!(v.areas().stats().nr_free_blocks, 1, "the whole range free");
    // The range is reusable: a new block maps over it without a stale hit.
    TestCpus::run_on(0);
    let again = v.vm_map_ram(&held[..1], PageProt::KERNEL).unwrap();
    assert_eq!(again, ranges[0]);
    v.check().unwrap();
}

#[test]
fn a_request_that_does_not_fit_retires_the_block_whose_unused_pages_never_return() {
    let m = Machine::new();
    let v = m.vmalloc();
    let held = m.frames(VMAP_MAX_ALLOC + 1 + VMAP_MAX_ALLOC);
    let big = v
        .vm_map_ram(&held[..VMAP_MAX_ALLOC], PageProt::KERNEL)
        .unwrap();
    let one = v
        .vm_map_ram(&held[VMAP_MAX_ALLOC..VMAP_MAX_ALLOC + 1], PageProt::KERNEL)
        .unwrap();
    // VMAP_MAX_ALLOC - 1 pages left: a largest request needs a new block.
    let next = v
        .vm_map_ram(&held[VMAP_MAX_ALLOC + 1..], PageProt::KERNEL)
        .unwrap();
    assert_eq!(next, page(big, bits()), "a new block");
    assert_eq!(v.stats().vmap_blocks, 2);
    // SAFETY: we made the mappings and give them up.
    unsafe {
        v.vm_unmap_ram(big, VMAP_MAX_ALLOC).unwrap();
        v.vm_unmap_ram(one, 1).unwrap();
    }
    assert_eq!(
        v.stats().vmap_blocks,
        1,
        "the retired block's unused pages counted dirty: freed with its last range"
    );
    let small = v.vm_map_ram(&held[..1], PageProt::KERNEL).unwrap();
    assert_eq!(
        small,
        page(next, VMAP_MAX_ALLOC),
        "the current block serves"
    );
    v.check().unwrap();
}

#[test]
fn a_vm_map_ram_that_fails_midway_leaves_nothing_mapped() {
    let m = Machine::new();
    let v = m.vmalloc();
    let held = m.frames(VMAP_MAX_ALLOC + 1);
    for count in [4, VMAP_MAX_ALLOC + 1] {
        m.table.fail_after(Some(2));
        assert!(matches!(
            v.vm_map_ram(&held[..count], PageProt::KERNEL),
            Err(VmareaError::Page { .. })
        ));
        m.table.fail_after(None);
        assert_eq!(m.table.mapped(), 0, "{count} pages");
        assert_eq!(v.stats().vm_map_ram, 0);
        assert_eq!(v.areas().stats().nr_areas, v.stats().vmap_blocks);
        v.check().unwrap();
    }
    assert_eq!(
        v.vm_map_ram(&[], PageProt::KERNEL),
        Err(VmareaError::ZeroSize)
    );
    // The failed small range is dirty: the next one follows it.
    let addr = v.vm_map_ram(&held[..1], PageProt::KERNEL).unwrap();
    assert_eq!(addr, page(VirtAddr::new(START), 4));
}

#[test]
fn vmallocinfo_prints_blocks_and_large_maps_as_vm_map_ram() {
    let m = Machine::new();
    let v = m.vmalloc();
    let held = m.frames(VMAP_MAX_ALLOC + 1);
    let small = v.vm_map_ram(&held[..1], PageProt::KERNEL).unwrap();
    let large = v.vm_map_ram(&held, PageProt::KERNEL).unwrap();
    let info = VmallocInfo(&v).to_string();
    let lines: Vec<&str> = info.lines().collect();
    let line = |start: usize, bytes: usize| {
        format!(
            "0x{start:08x}-0x{:08x} {bytes:>7} vm_map_ram",
            start + bytes
        )
    };
    assert_eq!(
        lines,
        [
            line(small.as_usize(), bits() * PAGE_SIZE),
            line(large.as_usize(), held.len() * PAGE_SIZE)
        ]
    );
}

#[test]
fn without_vmap_blocks_every_vm_map_ram_takes_its_own_area() {
    let m = Machine::new();
    // SAFETY: as in `Machine::vmalloc`.
    let v = unsafe { Vmalloc::new(Machine::areas(), &m.frames, &m.table, &m.memory) };
    let held = m.frames(2);
    let addr = v.vm_map_ram(&held, PageProt::KERNEL).unwrap();
    assert_eq!(v.stats().vmap_blocks, 0);
    assert_eq!(v.stats().vmap_block_pages, 0);
    assert_eq!(
        v.areas().find_vmap_area(addr).unwrap().size(),
        2 * PAGE_SIZE
    );
    // SAFETY: refused, then the right count.
    unsafe {
        assert!(matches!(
            v.vm_unmap_ram(addr, 1),
            Err(VmareaError::WrongCount { .. })
        ));
        v.vm_unmap_ram(addr, 2).unwrap();
    }
    assert_eq!(m.table.mapped(), 0);
    v.check().unwrap();
}

#[test]
fn a_source_whose_objects_cannot_hold_a_block_is_refused() {
    let m = Machine::new();
    let (start, end) = (VirtAddr::new(START), VirtAddr::new(START + RANGE));
    let tiny = BufferSource::new(kmm_vmarea::VMAP_AREA_NODE_BYTES, 64);
    let areas = VmapAreas::new(tiny, start, end, CPUS).unwrap();
    // SAFETY: as in `Machine::vmalloc`.
    let refused =
        unsafe { Vmalloc::with_vmap_blocks(areas, &m.frames, &m.table, &m.memory, &m.cpus) };
    assert!(matches!(refused, Err(VmareaError::ObjectTooSmall { .. })));
}

#[test]
fn blocks_are_aligned_to_their_size_and_vm_unmap_ram_finds_each_by_its_address() {
    let m = Machine::new();
    let v = m.vmalloc();
    let block_bytes = bits() * PAGE_SIZE;
    // A vmalloc area at the range's start: the lowest free page is no
    // longer aligned to a block.
    let vmalloc = v.vmalloc(PAGE_SIZE).unwrap();
    assert_eq!(vmalloc, VirtAddr::new(START));
    // Four blocks, each filled by two largest requests (the same held
    // frames mapped again: vm_map_ram only maps them).
    let held = m.frames(VMAP_MAX_ALLOC);
    let ranges: Vec<VirtAddr> = (0..8)
        .map(|_| v.vm_map_ram(&held, PageProt::KERNEL).unwrap())
        .collect();
    assert_eq!(v.stats().vmap_blocks, 4);
    for (i, block) in ranges.iter().step_by(2).enumerate() {
        assert!(block.is_aligned(block_bytes), "{block}");
        assert_eq!(*block, VirtAddr::new(START + (i + 1) * block_bytes));
    }
    v.check().unwrap();
    // Oldest first, so a list walk from the newest would pass every other
    // block: each is found by its address.
    for (i, &addr) in ranges.iter().enumerate() {
        // SAFETY: we made the mapping and give it up.
        unsafe { v.vm_unmap_ram(addr, VMAP_MAX_ALLOC) }.unwrap();
        // SAFETY: refused; nothing is given up.
        let again = unsafe { v.vm_unmap_ram(addr, VMAP_MAX_ALLOC) };
        // (Not allocated once a freed block's range has been purged.)
        assert!(
            matches!(
                again,
                Err(VmareaError::AlreadyFreed { .. } | VmareaError::NotAllocated { .. })
            ),
            "{again:?}"
        );
        assert_eq!(
            v.stats().vmap_blocks,
            4 - i.div_ceil(2),
            "freed with its last range"
        );
        v.check().unwrap();
    }
    assert_eq!(m.table.mapped(), 1, "only the vmalloc page");
}

#[test]
fn a_new_block_whose_index_node_cannot_be_had_is_undone_and_nothing_is_mapped() {
    let m = Machine::new();
    // 512-byte objects (64 slots a node) and a 1 GiB range of 4 MiB
    // blocks (256 keys): the index has two levels, and the first block
    // needs a node below the root. (At 1 GiB, so i386's words hold it.)
    let (start, end) = (VirtAddr::new(1 << 30), VirtAddr::new(2 << 30));
    let source = BufferSource::new(512, 256);
    let areas = VmapAreas::new(source, start, end, CPUS).unwrap();
    // SAFETY: as in `Machine::vmalloc`; nothing touches the memory.
    let v = unsafe { Vmalloc::with_vmap_blocks(areas, &m.frames, &m.table, &m.memory, &m.cpus) }
        .unwrap();
    let in_use = || v.areas().with_areas(|a| a.source().in_use());
    let before = in_use();
    let held = m.frames(1);
    // The descriptor is had; the index node is not.
    v.areas().with_areas(|a| a.source().fail_after(Some(1)));
    let refused = v.vm_map_ram(&held, PageProt::KERNEL);
    assert!(
        matches!(refused, Err(VmareaError::NoNodes { .. })),
        "{refused:?}"
    );
    let stats = v.stats();
    assert_eq!((stats.vmap_blocks, stats.vm_map_ram), (0, 0));
    assert_eq!(stats.areas.nr_areas, 0, "the block's range went back");
    assert_eq!(m.table.mapped(), 0);
    assert_eq!(
        in_use(),
        before,
        "the descriptor given back (the range's node is in a chunk already held)"
    );
    v.check().unwrap();
    v.areas().with_areas(|a| a.source().fail_after(None));
    let addr = v.vm_map_ram(&held, PageProt::KERNEL).unwrap();
    assert!(addr.is_aligned(4 << 20));
    // SAFETY: we made the mapping and give it up.
    unsafe { v.vm_unmap_ram(addr, 1) }.unwrap();
    v.check().unwrap();
}
