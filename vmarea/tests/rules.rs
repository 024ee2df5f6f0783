//! One test per rule of the area allocator, named after the rule.

mod support;

use kmm_api::{TlbFlush, VirtAddr, GFP_KERNEL, PAGE_SIZE};
use kmm_vmarea::testing::{BufferSource, RecordingTlb};
use kmm_vmarea::{
    lazy_max_pages, SharedVmapAreas, VmFlags, VmapAreas, VmareaError, LAZY_BYTES_PER_CPU_BIT,
    VMAP_AREA_NODE_BYTES,
};
use support::{snapshot, span, Span};

const BASE: usize = 0x1000_0000;
const PAGE: usize = PAGE_SIZE;

/// Objects that hold exactly one tree node: 64 bytes for the 48-byte node
/// of 64-bit words, 32 bytes for the 32-byte node of 4-byte words (i386).
const ONE_NODE_OBJECT: usize = VMAP_AREA_NODE_BYTES.next_power_of_two();

fn va(addr: usize) -> VirtAddr {
    VirtAddr::new(addr)
}

/// An allocator over `pages` pages at `BASE`, on one CPU.
fn areas(pages: usize) -> VmapAreas<BufferSource> {
    VmapAreas::new(
        BufferSource::pages(64),
        va(BASE),
        va(BASE + pages * PAGE),
        1,
    )
    .unwrap()
}

fn alloc(a: &mut VmapAreas<BufferSource>, pages: usize, align: usize) -> Result<Span, VmareaError> {
    a.alloc(pages * PAGE, align, VmFlags::ALLOC, GFP_KERNEL)
        .map(span)
}

fn free_blocks(a: &VmapAreas<BufferSource>) -> Vec<(usize, usize)> {
    a.free_blocks()
        .map(|b| (b.start().as_usize(), b.end().as_usize()))
        .collect()
}

/// Frees an area and purges with a full decay, so its range is back in
/// free space rather than in a pool.
fn release(a: &mut VmapAreas<BufferSource>, addr: usize) {
    let freed = a.free(va(addr)).unwrap();
    assert_eq!(freed.flush, None);
    a.reclaim_and_purge().expect("the area was waiting").defer();
}

#[test]
fn alloc_takes_the_lowest_block_that_fits() {
    let mut a = areas(64);
    let first = alloc(&mut a, 1, PAGE).unwrap();
    let second = alloc(&mut a, 3, PAGE).unwrap();
    let third = alloc(&mut a, 1, PAGE).unwrap();
    release(&mut a, first.0);
    release(&mut a, second.0);
    // Freed: [BASE, BASE + 6 pages) merged. A 2-page area goes at BASE.
    assert_eq!(alloc(&mut a, 2, PAGE).unwrap().0, BASE);
    assert_eq!(third.0, BASE + 6 * PAGE);
    a.check().unwrap();
}

#[test]
fn exact_fit_moves_the_whole_free_block_to_the_busy_tree() {
    let mut a = areas(8);
    let area = alloc(&mut a, 7, PAGE).unwrap();
    assert_eq!(area, (BASE, BASE + 8 * PAGE, VmFlags::ALLOC));
    assert_eq!(free_blocks(&a), []);
    assert_eq!(a.stats().nodes, 1, "the free node itself became the area");
    a.check().unwrap();
}

#[test]
fn left_edge_fit_moves_the_free_block_start_up() {
    let mut a = areas(16);
    alloc(&mut a, 1, PAGE).unwrap();
    assert_eq!(free_blocks(&a), [(BASE + 2 * PAGE, BASE + 16 * PAGE)]);
    assert_eq!(a.stats().nodes, 2);
    a.check().unwrap();
}

#[test]
fn right_edge_fit_moves_the_free_block_end_down() {
    // A range starting one page past a 16-page boundary: a 15-page area
    // (with guard, 16) aligned to 16 pages ends exactly at the range end.
    let start = BASE + PAGE;
    let mut a = VmapAreas::new(BufferSource::pages(8), va(start), va(BASE + 32 * PAGE), 1).unwrap();
    let area = alloc(&mut a, 15, 16 * PAGE).unwrap();
    assert_eq!(area.0, BASE + 16 * PAGE);
    assert_eq!(area.1, BASE + 32 * PAGE);
    assert_eq!(free_blocks(&a), [(start, BASE + 16 * PAGE)]);
    assert_eq!(a.stats().nodes, 2);
    a.check().unwrap();
}

#[test]
fn middle_fit_splits_the_free_block_with_a_new_node() {
    let mut a = VmapAreas::new(
        BufferSource::pages(8),
        va(BASE + PAGE),
        va(BASE + 64 * PAGE),
        1,
    )
    .unwrap();
    let area = alloc(&mut a, 1, 16 * PAGE).unwrap();
    assert_eq!(area.0, BASE + 16 * PAGE);
    assert_eq!(
        free_blocks(&a),
        [
            (BASE + PAGE, BASE + 16 * PAGE),
            (BASE + 18 * PAGE, BASE + 64 * PAGE)
        ]
    );
    assert_eq!(a.stats().nodes, 3, "lower block, area, new upper block");
    a.check().unwrap();
}

#[test]
fn a_purged_range_merges_with_the_free_block_below() {
    let mut a = areas(8);
    let low = alloc(&mut a, 1, PAGE).unwrap();
    let high = alloc(&mut a, 1, PAGE).unwrap();
    let _top = alloc(&mut a, 1, PAGE).unwrap();
    release(&mut a, low.0);
    release(&mut a, high.0);
    assert_eq!(
        free_blocks(&a),
        [(BASE, BASE + 4 * PAGE), (BASE + 6 * PAGE, BASE + 8 * PAGE)]
    );
    a.check().unwrap();
}

#[test]
fn a_purged_range_merges_with_the_free_block_above() {
    let mut a = areas(8);
    let _low = alloc(&mut a, 1, PAGE).unwrap();
    let high = alloc(&mut a, 1, PAGE).unwrap();
    release(&mut a, high.0);
    assert_eq!(free_blocks(&a), [(BASE + 2 * PAGE, BASE + 8 * PAGE)]);
    assert_eq!(a.stats().nr_free_blocks, 1);
    a.check().unwrap();
}

#[test]
fn a_purged_range_between_two_free_blocks_joins_them_into_one() {
    let mut a = areas(8);
    let low = alloc(&mut a, 1, PAGE).unwrap();
    let mid = alloc(&mut a, 1, PAGE).unwrap();
    release(&mut a, low.0);
    assert_eq!(
        free_blocks(&a),
        [(BASE, BASE + 2 * PAGE), (BASE + 4 * PAGE, BASE + 8 * PAGE)]
    );
    release(&mut a, mid.0);
    assert_eq!(free_blocks(&a), [(BASE, BASE + 8 * PAGE)]);
    assert_eq!(
        a.stats().nodes,
        1,
        "both merged nodes went back to the arena"
    );
    a.check().unwrap();
}

#[test]
fn a_purged_range_between_two_areas_becomes_its_own_free_block() {
    let mut a = areas(8);
    let _low = alloc(&mut a, 1, PAGE).unwrap();
    let mid = alloc(&mut a, 1, PAGE).unwrap();
    let _high = alloc(&mut a, 1, PAGE).unwrap();
    release(&mut a, mid.0);
    assert_eq!(
        free_blocks(&a),
        [
            (BASE + 2 * PAGE, BASE + 4 * PAGE),
            (BASE + 6 * PAGE, BASE + 8 * PAGE)
        ]
    );
    a.check().unwrap();
}

#[test]
fn a_large_purge_rebuilds_free_space_merging_exactly_as_one_insert_per_range_would() {
    // 100 areas of one page and its guard; the last 56 pages stay free.
    let mut a = areas(256);
    let starts: Vec<usize> = (0..100)
        .map(|_| alloc(&mut a, 1, PAGE).unwrap().0)
        .collect();
    let mut live = [true; 100];
    let mut free_and_purge = |a: &mut VmapAreas<BufferSource>, which: &[usize]| {
        for &i in which {
            let freed = a.free(va(starts[i])).unwrap();
            assert_eq!(freed.flush, None, "under the lazy threshold");
            live[i] = false;
        }
        a.reclaim_and_purge().expect("areas were waiting").defer();
        // Free space is exactly what no live area covers, one block per gap.
        let mut expected: Vec<(usize, usize)> = Vec::new();
        let mut gaps = (0..100)
            .filter(|&i| !live[i])
            .map(|i| (starts[i], starts[i] + 2 * PAGE))
            .collect::<Vec<_>>();
        gaps.push((BASE + 200 * PAGE, BASE + 256 * PAGE));
        for (start, end) in gaps {
            match expected.last_mut() {
                Some(last) if last.1 == start => last.1 = end,
                _ => expected.push((start, end)),
            }
        }
        assert_eq!(free_blocks(a), expected);
        let nr_live = live.iter().filter(|&&l| l).count();
        assert_eq!(
            a.stats().nodes,
            nr_live + expected.len(),
            "merged nodes went back"
        );
        a.check().unwrap();
    };
    // A small batch (one insert per range) leaves some free blocks...
    free_and_purge(&mut a, &[0, 1, 5, 99]);
    // ...then a batch large against them is merged by a rebuild: ranges
    // touching a block below, above, both, each other, or nothing.
    let mut batch = vec![2, 4, 6, 98, 97];
    batch.extend((10..50).step_by(2));
    free_and_purge(&mut a, &batch);
}

#[test]
fn frees_in_any_order_join_the_unpurged_ranges_they_touch() {
    // Ten back-to-back areas of one page and its guard.
    let mut a = areas(64);
    let starts: Vec<usize> = (0..10).map(|_| alloc(&mut a, 1, PAGE).unwrap().0).collect();
    // Ascending, then a gap filled (a merge both ways), then below the
    // last one (a merge upwards), then ascending again.
    for i in [0, 2, 1, 6, 5, 8, 9] {
        let freed = a.free(va(starts[i])).unwrap();
        assert_eq!(freed.flush, None, "under the lazy threshold");
        a.check().unwrap();
    }
    let unpurged: Vec<(usize, usize)> = a
        .unpurged_areas()
        .map(|r| (r.start().as_usize(), r.end().as_usize()))
        .collect();
    assert_eq!(
        unpurged,
        [
            (starts[0], starts[3]),
            (starts[5], starts[7]),
            (starts[8], starts[9] + 2 * PAGE)
        ]
    );
}

#[test]
fn the_area_allocated_last_is_found_freed_and_refused_a_second_free_like_any_other() {
    let mut a = areas(64);
    let low = alloc(&mut a, 1, PAGE).unwrap().0;
    let high = alloc(&mut a, 1, PAGE).unwrap().0;
    // Its neighbour goes first, then itself, then again.
    assert_eq!(a.free(va(low)).unwrap().flush, None);
    assert_eq!(
        a.free(va(high + PAGE)),
        Err(VmareaError::Interior {
            addr: va(high + PAGE),
            area: va(high)
        })
    );
    assert_eq!(a.free(va(high)).unwrap().flush, None);
    assert_eq!(
        a.free(va(high)),
        Err(VmareaError::AlreadyFreed { addr: va(high) })
    );
    // Allocations in address order after frees below them.
    let again = alloc(&mut a, 1, PAGE).unwrap().0;
    assert_eq!(again, high + 2 * PAGE, "freed ranges wait for the purge");
    assert_eq!(a.free(va(again)).unwrap().flush, None);
    a.check().unwrap();
}

#[test]
fn alignment_passes_over_a_long_enough_block_whose_aligned_start_leaves_too_little() {
    let mut a = areas(32);
    let first = alloc(&mut a, 4, PAGE).unwrap(); // [BASE, BASE + 5 pages)
    let _fence = alloc(&mut a, 1, PAGE).unwrap(); // [BASE + 5, BASE + 7 pages)
    release(&mut a, first.0);
    let pin = a
        .alloc(PAGE, PAGE, VmFlags::MAP | VmFlags::NO_GUARD, GFP_KERNEL)
        .unwrap();
    assert_eq!(pin.start(), va(BASE));
    // [BASE + 1, BASE + 5 pages) holds the 4 pages a 3-page area and its
    // guard need, but aligned to 4 pages it starts at BASE + 4 pages.
    assert_eq!(free_blocks(&a)[0], (BASE + PAGE, BASE + 5 * PAGE));
    let area = a
        .alloc(3 * PAGE, 4 * PAGE, VmFlags::ALLOC, GFP_KERNEL)
        .unwrap();
    assert_eq!(area.start(), va(BASE + 8 * PAGE));
    // Unaligned, the same request takes the lower block exactly.
    let exact = a.alloc(3 * PAGE, PAGE, VmFlags::ALLOC, GFP_KERNEL).unwrap();
    assert_eq!(exact.start(), va(BASE + PAGE));
    a.check().unwrap();
}

#[test]
fn alignment_uses_a_block_whose_aligned_start_still_fits() {
    let mut a = areas(64);
    let area = a
        .alloc(5 * PAGE, 1 << 20, VmFlags::ALLOC, GFP_KERNEL)
        .unwrap();
    assert_eq!(area.start(), va(BASE), "BASE is 1 MiB aligned");
    let next = a
        .alloc(5 * PAGE, 16 * PAGE, VmFlags::ALLOC, GFP_KERNEL)
        .unwrap();
    assert_eq!(next.start(), va(BASE + 16 * PAGE));
    a.check().unwrap();
}

#[test]
fn an_alignment_beyond_the_address_space_fails_cleanly() {
    let mut a = areas(64);
    let before = snapshot(&a);
    let huge = 1usize << (usize::BITS - 1);
    let got = a.alloc(PAGE, huge, VmFlags::ALLOC, GFP_KERNEL);
    assert_eq!(
        got,
        Err(VmareaError::NoSpace {
            size: 2 * PAGE,
            align: huge,
            lazy_pages: 0
        })
    );
    assert_eq!(snapshot(&a), before);
}

#[test]
fn each_area_reserves_one_trailing_guard_page_that_its_usable_size_excludes() {
    let mut a = areas(64);
    let first = a.alloc(PAGE, PAGE, VmFlags::ALLOC, GFP_KERNEL).unwrap();
    assert_eq!((first.size(), first.usable_size()), (2 * PAGE, PAGE));
    let second = a.alloc(100, PAGE, VmFlags::ALLOC, GFP_KERNEL).unwrap();
    assert_eq!(
        second.start(),
        va(BASE + 2 * PAGE),
        "the guard page separates them"
    );
    assert_eq!(
        a.find_vmap_area(va(BASE + PAGE + 12)),
        Some(first),
        "the guard is the area's"
    );
}

#[test]
fn vm_no_guard_areas_are_adjacent() {
    let mut a = areas(64);
    let flags = VmFlags::MAP | VmFlags::NO_GUARD;
    let first = a.alloc(PAGE, PAGE, flags, GFP_KERNEL).unwrap();
    let second = a.alloc(PAGE, PAGE, flags, GFP_KERNEL).unwrap();
    assert_eq!((first.size(), first.usable_size()), (PAGE, PAGE));
    assert_eq!(second.start(), first.end());
    a.check().unwrap();
}

#[test]
fn an_exhausted_range_reports_no_space_and_the_lazy_pages_a_purge_would_return() {
    // 64 pages, a lazy threshold of 16: eight 8-page areas fill it.
    let mut a = areas(64);
    let area = alloc(&mut a, 7, PAGE).unwrap();
    for _ in 1..8 {
        alloc(&mut a, 7, PAGE).unwrap();
    }
    assert_eq!(
        alloc(&mut a, 1, PAGE),
        Err(VmareaError::NoSpace {
            size: 2 * PAGE,
            align: PAGE,
            lazy_pages: 0
        })
    );
    let _ = a.free(va(area.0)).unwrap();
    assert_eq!(
        alloc(&mut a, 1, PAGE),
        Err(VmareaError::NoSpace {
            size: 2 * PAGE,
            align: PAGE,
            lazy_pages: 8
        }),
        "an unpurged range is not reused"
    );
}

#[test]
fn alloc_purging_purges_once_flushes_then_retries() {
    let mut a = areas(64);
    let tlb = RecordingTlb::default();
    let area = alloc(&mut a, 7, PAGE).unwrap();
    for _ in 1..8 {
        alloc(&mut a, 7, PAGE).unwrap();
    }
    let _ = a.free(va(area.0)).unwrap();
    let again = a
        .alloc_purging(PAGE, PAGE, VmFlags::ALLOC, GFP_KERNEL, &tlb)
        .unwrap();
    assert_eq!(again.start(), va(BASE));
    assert_eq!(
        tlb.flushes(),
        [TlbFlush::new(va(BASE), va(BASE + 8 * PAGE))]
    );
    assert_eq!((a.stats().purges, a.stats().flush_tokens), (1, 1));
    // Nothing left to purge: no second flush, the error stands.
    let err = a.alloc_purging(64 * PAGE, PAGE, VmFlags::ALLOC, GFP_KERNEL, &tlb);
    assert_eq!(err, Err(VmareaError::SizeTooLarge { size: 64 * PAGE }));
    assert_eq!(
        a.alloc_purging(6 * PAGE, PAGE, VmFlags::ALLOC, GFP_KERNEL, &tlb)
            .map(span),
        Err(VmareaError::NoSpace {
            size: 7 * PAGE,
            align: PAGE,
            lazy_pages: 0
        })
    );
    assert_eq!(tlb.count(), 1);
}

#[test]
fn bad_sizes_are_refused_and_change_nothing() {
    let mut a = areas(64);
    alloc(&mut a, 2, PAGE).unwrap();
    let before = snapshot(&a);
    let cases = [
        (0, VmareaError::ZeroSize),
        (usize::MAX, VmareaError::SizeTooLarge { size: usize::MAX }),
        // Rounds to the top page, then the guard page overflows.
        (
            usize::MAX & !(PAGE - 1),
            VmareaError::SizeTooLarge {
                size: usize::MAX & !(PAGE - 1),
            },
        ),
        // Larger than the whole range.
        (64 * PAGE, VmareaError::SizeTooLarge { size: 64 * PAGE }),
    ];
    for (size, error) in cases {
        assert_eq!(
            a.alloc(size, PAGE, VmFlags::ALLOC, GFP_KERNEL),
            Err(error),
            "size {size:#x}"
        );
        assert_eq!(snapshot(&a), before);
    }
    // Without a guard, the top page alone fits the arithmetic but not the range.
    let top = usize::MAX & !(PAGE - 1);
    let got = a.alloc(top, PAGE, VmFlags::NO_GUARD, GFP_KERNEL);
    assert_eq!(got, Err(VmareaError::SizeTooLarge { size: top }));
    assert_eq!(snapshot(&a), before);
}

#[test]
fn bad_alignments_are_refused_and_change_nothing() {
    let mut a = areas(64);
    let before = snapshot(&a);
    for align in [0, 1, 512, PAGE / 2, 3 * PAGE, PAGE + 1] {
        let got = a.alloc(PAGE, align, VmFlags::ALLOC, GFP_KERNEL);
        assert_eq!(
            got,
            Err(VmareaError::BadAlignment { align }),
            "align {align:#x}"
        );
        assert_eq!(snapshot(&a), before);
    }
}

#[test]
fn bad_frees_are_refused_and_change_nothing() {
    let mut a = areas(64);
    let area = alloc(&mut a, 2, PAGE).unwrap();
    let freed = alloc(&mut a, 1, PAGE).unwrap();
    let _ = a.free(va(freed.0)).unwrap();
    let before = snapshot(&a);
    let cases = [
        (BASE + 1, VmareaError::Misaligned { addr: va(BASE + 1) }),
        (
            BASE - PAGE,
            VmareaError::OutOfRange {
                addr: va(BASE - PAGE),
            },
        ),
        (
            BASE + 64 * PAGE,
            VmareaError::OutOfRange {
                addr: va(BASE + 64 * PAGE),
            },
        ),
        (
            BASE + PAGE,
            VmareaError::Interior {
                addr: va(BASE + PAGE),
                area: va(BASE),
            },
        ),
        // The guard page is inside the area too.
        (
            BASE + 2 * PAGE,
            VmareaError::Interior {
                addr: va(BASE + 2 * PAGE),
                area: va(area.0),
            },
        ),
        (freed.0, VmareaError::AlreadyFreed { addr: va(freed.0) }),
        // Any address in a freed range awaiting the purge, its guard too.
        (
            freed.0 + PAGE,
            VmareaError::AlreadyFreed {
                addr: va(freed.0 + PAGE),
            },
        ),
        (
            BASE + 10 * PAGE,
            VmareaError::NotAllocated {
                addr: va(BASE + 10 * PAGE),
            },
        ),
    ];
    for (addr, error) in cases {
        assert_eq!(
            a.free(va(addr)).map(|f| f.area),
            Err(error),
            "free({addr:#x})"
        );
        assert_eq!(snapshot(&a), before);
    }
    a.purge().unwrap().defer();
    let after_purge = a.free(va(freed.0)).map(|f| f.area);
    assert_eq!(
        after_purge,
        Err(VmareaError::NotAllocated { addr: va(freed.0) })
    );
}

#[test]
fn lazy_max_pages_is_fls_of_the_cpu_count_times_32_mib_capped_at_a_quarter_of_the_range() {
    let per_bit = LAZY_BYTES_PER_CPU_BIT / PAGE;
    assert_eq!(per_bit, 8192);
    // A range so large its quarter never binds, on 32- and 64-bit words.
    let huge = usize::MAX;
    for (cpus, fls) in [
        (1, 1),
        (2, 2),
        (3, 2),
        (4, 3),
        (7, 3),
        (8, 4),
        (64, 7),
        (65, 7),
    ] {
        assert_eq!(lazy_max_pages(cpus, huge), fls * per_bit, "{cpus} CPUs");
    }
    // i386, 8 CPUs: Linux's 128 MiB exceeds the 111 MiB vmalloc area.
    let i386 = 111 << 20;
    assert_eq!(lazy_max_pages(8, i386), i386 / PAGE / 4);
}

#[test]
fn a_purge_runs_when_the_lazy_pages_exceed_lazy_max_pages_not_when_they_reach_it() {
    // 64 pages: the threshold is a quarter, 16 pages.
    let mut a = areas(64);
    assert_eq!(a.stats().lazy_max_pages, 16);
    let starts: Vec<usize> = (0..9).map(|_| alloc(&mut a, 1, PAGE).unwrap().0).collect();
    for &addr in &starts[..8] {
        let freed = a.free(va(addr)).unwrap();
        assert_eq!(freed.flush, None);
    }
    assert_eq!(
        a.stats().lazy_pages,
        16,
        "exactly lazy_max_pages: no purge yet"
    );
    assert_eq!(a.stats().lazy_areas, 8);
    assert_eq!(a.stats().nr_unpurged, 1, "adjacent freed ranges merge");
    let freed = a.free(va(starts[8])).unwrap();
    assert_eq!(
        freed.flush,
        Some(TlbFlush::new(va(BASE), va(BASE + 18 * PAGE))),
        "one flush for the batch"
    );
    let stats = a.stats();
    assert_eq!(
        (
            stats.lazy_pages,
            stats.nr_unpurged,
            stats.purges,
            stats.flush_tokens,
            stats.purged_areas
        ),
        (0, 0, 1, 1, 9)
    );
    // The batch, one range of 18 pages, waits in its pool.
    assert_eq!(free_blocks(&a), [(BASE + 18 * PAGE, BASE + 64 * PAGE)]);
    assert_eq!((stats.nr_pooled, stats.pooled_pages), (1, 18));
    a.check().unwrap();
}

#[test]
fn a_purge_with_nothing_waiting_returns_no_flush_and_counts_nothing() {
    let mut a = areas(8);
    assert_eq!(a.purge(), None);
    assert_eq!(a.stats().purges, 0);
}

#[test]
fn a_node_source_failure_midway_leaves_every_range_as_it_was() {
    let mut a = VmapAreas::new(
        BufferSource::new(ONE_NODE_OBJECT, 64),
        va(BASE + PAGE),
        va(BASE + 64 * PAGE),
        1,
    )
    .unwrap();
    let before = snapshot(&a);
    // The middle case needs two nodes; the source gives one, then fails.
    a.source().fail_after(Some(1));
    let got = a.alloc(PAGE, 16 * PAGE, VmFlags::ALLOC, GFP_KERNEL);
    assert!(matches!(got, Err(VmareaError::NoNodes { .. })), "{got:?}");
    assert_eq!(snapshot(&a), before);
    a.check().unwrap();
    a.source().fail_after(None);
    assert_eq!(
        a.alloc(PAGE, 16 * PAGE, VmFlags::ALLOC, GFP_KERNEL)
            .unwrap()
            .start(),
        va(BASE + 16 * PAGE)
    );
    a.check().unwrap();
}

#[test]
fn a_full_node_table_is_refused_and_changes_nothing() {
    // One-node objects: 32 directories of 8 chunks (an object of pointers:
    // 64 / 8 or 32 / 4 of them) of one node each.
    let chunks_per_directory = ONE_NODE_OBJECT / core::mem::size_of::<usize>();
    let nodes = 32 * chunks_per_directory;
    assert_eq!(nodes, 256);
    let mut a = VmapAreas::new(
        BufferSource::new(ONE_NODE_OBJECT, 1024),
        va(BASE),
        va(BASE + 4096 * PAGE),
        1,
    )
    .unwrap();
    let flags = VmFlags::MAP | VmFlags::NO_GUARD;
    // Every other page: each area after the first takes a busy node and
    // leaves a new free block node below the next one, two nodes an area.
    let mut live = 0;
    let error = loop {
        match a.alloc(PAGE, 2 * PAGE, flags, GFP_KERNEL) {
            Ok(_) => live += 1,
            Err(error) => break error,
        }
    };
    assert_eq!(error, VmareaError::NodeTableFull { nodes });
    assert_eq!(live, nodes / 2);
    let before = snapshot(&a);
    assert_eq!(a.alloc(PAGE, 2 * PAGE, flags, GFP_KERNEL), Err(error));
    assert_eq!(snapshot(&a), before);
    a.check().unwrap();
}

#[test]
fn find_vmap_area_finds_an_area_by_any_address_in_it_and_nothing_else() {
    let mut a = areas(64);
    let area = a.alloc(3 * PAGE, PAGE, VmFlags::ALLOC, GFP_KERNEL).unwrap();
    let gone = a.alloc(PAGE, PAGE, VmFlags::ALLOC, GFP_KERNEL).unwrap();
    let _ = a.free(gone.start()).unwrap();
    for addr in [BASE, BASE + 1, BASE + 2 * PAGE + 7, BASE + 4 * PAGE - 1] {
        assert_eq!(a.find_vmap_area(va(addr)), Some(area), "{addr:#x}");
    }
    assert_eq!(a.find_vmap_area(gone.start()), None, "unpurged");
    assert_eq!(a.find_vmap_area(va(BASE + 10 * PAGE)), None, "free");
    assert_eq!(a.find_vmap_area(va(0)), None, "below the range");
}

#[test]
fn construction_refuses_bad_ranges_cpu_counts_and_object_sources() {
    let source = || BufferSource::pages(4);
    let cases = [
        (
            va(BASE + 1),
            va(BASE + PAGE),
            VmareaError::BadRange {
                start: va(BASE + 1),
                end: va(BASE + PAGE),
            },
        ),
        (
            va(BASE),
            va(BASE),
            VmareaError::BadRange {
                start: va(BASE),
                end: va(BASE),
            },
        ),
        (
            va(BASE + PAGE),
            va(BASE),
            VmareaError::BadRange {
                start: va(BASE + PAGE),
                end: va(BASE),
            },
        ),
    ];
    for (start, end, error) in cases {
        assert_eq!(VmapAreas::new(source(), start, end, 1).err(), Some(error));
    }
    assert_eq!(
        VmapAreas::new(source(), va(BASE), va(BASE + PAGE), 0).err(),
        Some(VmareaError::NoCpus)
    );
    let tiny = BufferSource::new(8, 4);
    assert_eq!(
        VmapAreas::new(tiny, va(BASE), va(BASE + PAGE), 1).err(),
        Some(VmareaError::ObjectTooSmall { size: 8, align: 8 })
    );
}

/// Page-sized chunks (and one directory) `nodes` nodes take.
fn chunk_objects(nodes: usize) -> usize {
    nodes.div_ceil(PAGE / VMAP_AREA_NODE_BYTES) + 1
}

#[test]
fn dropping_the_allocator_gives_every_object_back() {
    let source = BufferSource::pages(64);
    let n = if cfg!(miri) { 150 } else { 500 };
    {
        let mut a = VmapAreas::new(&source, va(BASE), va(BASE + (1 << 30)), 2).unwrap();
        for _ in 0..n {
            a.alloc(PAGE, PAGE, VmFlags::ALLOC, GFP_KERNEL).unwrap();
        }
        assert_eq!(source.in_use(), chunk_objects(n + 1));
    }
    assert_eq!(source.in_use(), 0);
}

#[test]
fn metadata_per_live_area_is_one_node_plus_chunk_slack() {
    let mut a =
        VmapAreas::new(BufferSource::pages(128), va(BASE), va(BASE + (1 << 30)), 2).unwrap();
    let n = if cfg!(miri) { 200 } else { 10_000 };
    for _ in 0..n {
        a.alloc(PAGE, PAGE, VmFlags::ALLOC, GFP_KERNEL).unwrap();
    }
    let stats = a.stats();
    assert_eq!(stats.nodes, n + 1, "one node per area and one free block");
    assert_eq!(stats.metadata_bytes, chunk_objects(n + 1) * PAGE);
    if !cfg!(miri) {
        let per_area = stats.metadata_bytes as f64 / n as f64;
        assert!(
            per_area < VMAP_AREA_NODE_BYTES as f64 * 1.1,
            "{per_area} bytes per area"
        );
    }
}

#[test]
fn shared_areas_serve_threads_and_flush_each_purge_before_unlocking() {
    let shared = SharedVmapAreas::new(
        VmapAreas::new(BufferSource::pages(64), va(BASE), va(BASE + 256 * PAGE), 4).unwrap(),
    );
    let tlb = RecordingTlb::default();
    let rounds = if cfg!(miri) { 5 } else { 500 };
    std::thread::scope(|scope| {
        for thread in 0..4 {
            let (shared, tlb) = (&shared, &tlb);
            scope.spawn(move || {
                for round in 0..rounds {
                    let pages = 1 + (thread + round) % 4;
                    let area = shared
                        .alloc(pages * PAGE, PAGE, VmFlags::ALLOC, GFP_KERNEL, tlb)
                        .unwrap();
                    assert_eq!(shared.find_vmap_area(area.start()), Some(area));
                    assert_eq!(shared.free(area.start(), tlb), Ok(area));
                }
            });
        }
    });
    shared.check().unwrap();
    let stats = shared.stats();
    assert_eq!(stats.nr_areas, 0);
    assert_eq!(
        stats.flush_tokens as usize,
        tlb.count(),
        "every token was flushed"
    );
    assert!(stats.purges > 0, "the 64-page threshold was passed");
    assert!(shared.purge(&tlb) || stats.lazy_pages == 0);
    assert_eq!(shared.with_areas(|a| a.free_blocks().count()), 1);
}

#[test]
fn thousands_of_areas_keep_every_tree_balanced_and_merged() {
    use rand::{rngs::SmallRng, Rng, SeedableRng};
    let mut rng = SmallRng::seed_from_u64(0x5eed);
    let mut a = VmapAreas::new(
        BufferSource::pages(if cfg!(miri) { 64 } else { 512 }),
        va(BASE),
        va(BASE + (1 << 30)),
        4,
    )
    .unwrap();
    let mut live = Vec::new();
    let steps = if cfg!(miri) { 150 } else { 20_000 };
    for _ in 0..steps {
        if live.is_empty() || rng.gen_bool(0.6) {
            let pages = rng.gen_range(1..=16);
            let align = PAGE << rng.gen_range(0..6);
            live.push(
                a.alloc(pages * PAGE, align, VmFlags::ALLOC, GFP_KERNEL)
                    .unwrap()
                    .start(),
            );
        } else {
            let addr = live.swap_remove(rng.gen_range(0..live.len()));
            let _ = a.free(addr).unwrap();
        }
    }
    a.check().unwrap();
    assert_eq!(a.stats().nr_areas, live.len());
    for addr in live {
        let _ = a.free(addr).unwrap();
    }
    a.reclaim_and_purge().unwrap().defer();
    a.check().unwrap();
    assert_eq!(free_blocks(&a), [(BASE, BASE + (1 << 30))]);
}

// The pools of purged areas (Linux 6.9's `vmap_pool`).

fn pooled(a: &VmapAreas<BufferSource>) -> Vec<(usize, usize)> {
    let mut pooled: Vec<_> = a
        .pooled_areas()
        .map(|p| (p.start().as_usize(), p.end().as_usize()))
        .collect();
    pooled.sort();
    pooled
}

/// `n` one-page areas back to back from `BASE`, two pages each.
fn one_page_areas(a: &mut VmapAreas<BufferSource>, n: usize) -> Vec<usize> {
    (0..n).map(|_| alloc(a, 1, PAGE).unwrap().0).collect()
}

#[test]
fn a_purged_small_area_waits_in_its_pool_and_an_alloc_of_exactly_its_size_takes_it() {
    let mut a = areas(64);
    let starts = one_page_areas(&mut a, 3);
    let _ = a.free(va(starts[1])).unwrap();
    a.purge().unwrap().defer();
    assert_eq!(pooled(&a), [(BASE + 2 * PAGE, BASE + 4 * PAGE)]);
    assert_eq!(free_blocks(&a), [(BASE + 6 * PAGE, BASE + 64 * PAGE)]);
    let stats = a.stats();
    assert_eq!((stats.nr_pooled, stats.pooled_pages), (1, 2));
    assert_eq!(
        stats.largest_free,
        58 * PAGE,
        "pooled pages are not free blocks"
    );
    a.check().unwrap();
    // Another size leaves the pool alone; its own size takes the area.
    assert_eq!(alloc(&mut a, 2, PAGE).unwrap().0, BASE + 6 * PAGE);
    assert_eq!(alloc(&mut a, 1, PAGE).unwrap().0, BASE + 2 * PAGE);
    assert_eq!(a.stats().nr_pooled, 0);
    a.check().unwrap();
}

#[test]
fn a_pooled_area_whose_start_lacks_the_alignment_is_refused_and_the_tree_serves() {
    let mut a = areas(64);
    let starts = one_page_areas(&mut a, 3);
    let _ = a.free(va(starts[1])).unwrap();
    a.purge().unwrap().defer();
    let before = pooled(&a);
    // BASE + 2 pages is not 4-page aligned: the lowest aligned fit is.
    assert_eq!(alloc(&mut a, 1, 4 * PAGE).unwrap().0, BASE + 8 * PAGE);
    assert_eq!(pooled(&a), before, "the pool is unchanged");
    // At 2-page alignment the pooled area fits.
    assert_eq!(alloc(&mut a, 1, 2 * PAGE).unwrap().0, BASE + 2 * PAGE);
    a.check().unwrap();
}

#[test]
fn every_purge_gives_the_lowest_quarter_of_each_pool_back_to_free_space() {
    let mut a = areas(256);
    let starts = one_page_areas(&mut a, 16);
    for &start in starts.iter().step_by(2) {
        let _ = a.free(va(start)).unwrap();
    }
    a.purge().unwrap().defer();
    assert_eq!(
        a.stats().nr_pooled,
        8,
        "the first purge pools its batch whole"
    );
    // Nothing waits, but the pools decay: 8 >> 2 = 2 areas, the lowest.
    assert_eq!(a.purge(), None);
    let want: Vec<_> = starts
        .iter()
        .step_by(2)
        .skip(2)
        .map(|&s| (s, s + 2 * PAGE))
        .collect();
    assert_eq!(pooled(&a), want);
    assert_eq!(
        free_blocks(&a),
        [
            (BASE, BASE + 2 * PAGE),
            (starts[2], starts[2] + 2 * PAGE),
            (BASE + 32 * PAGE, BASE + 256 * PAGE)
        ]
    );
    // A pool of fewer than four areas keeps them all.
    for _ in 0..3 {
        assert_eq!(a.purge(), None);
    }
    assert_eq!(a.stats().nr_pooled, 3, "6 → 5 → 4 → 3");
    assert_eq!(a.purge(), None);
    assert_eq!(a.stats().nr_pooled, 3);
    a.check().unwrap();
}

#[test]
fn an_alloc_that_finds_no_space_decays_the_pools_fully_before_its_one_retry() {
    // 16 pages: eight one-page areas fill them; lazy_max_pages is 4.
    let mut a = areas(16);
    let tlb = RecordingTlb::default();
    let starts = one_page_areas(&mut a, 8);
    for &start in &starts[..2] {
        let _ = a.free(va(start)).unwrap();
        a.purge().unwrap().defer();
    }
    assert_eq!(
        pooled(&a),
        [(BASE, BASE + 2 * PAGE), (BASE + 2 * PAGE, BASE + 4 * PAGE)]
    );
    // Three pages and a guard: no pool and no free block holds them.
    let before = snapshot(&a);
    assert!(matches!(
        alloc(&mut a, 3, PAGE),
        Err(VmareaError::NoSpace { .. })
    ));
    assert_eq!(snapshot(&a), before, "a failed alloc changes nothing");
    let area = a
        .alloc_purging(3 * PAGE, PAGE, VmFlags::ALLOC, GFP_KERNEL, &tlb)
        .unwrap();
    assert_eq!(area.start(), va(BASE), "the two pooled areas merged back");
    assert_eq!(a.stats().nr_pooled, 0);
    a.check().unwrap();
}

#[test]
fn a_full_decay_sends_the_purged_batch_to_free_space_too() {
    let mut a = areas(64);
    let starts = one_page_areas(&mut a, 3);
    let _ = a.free(va(starts[1])).unwrap();
    a.reclaim_and_purge().unwrap().defer();
    assert_eq!(a.stats().nr_pooled, 0);
    assert_eq!(
        free_blocks(&a),
        [
            (BASE + 2 * PAGE, BASE + 4 * PAGE),
            (BASE + 6 * PAGE, BASE + 64 * PAGE)
        ]
    );
}

#[test]
fn a_purged_range_larger_than_max_va_size_pages_goes_back_to_free_space() {
    let mut a = areas(2048);
    let big = alloc(&mut a, kmm_vmarea::MAX_VA_SIZE_PAGES, PAGE).unwrap();
    let _guard = alloc(&mut a, 1, PAGE).unwrap();
    let _ = a.free(va(big.0)).unwrap();
    a.purge().unwrap().defer();
    assert_eq!(a.stats().nr_pooled, 0, "257 pages with the guard");
    assert_eq!(free_blocks(&a)[0], (big.0, big.1));
}

#[test]
fn a_pooled_range_is_free_to_lookups_and_frees() {
    let mut a = areas(64);
    let starts = one_page_areas(&mut a, 3);
    let _ = a.free(va(starts[1])).unwrap();
    a.purge().unwrap().defer();
    assert_eq!(a.find_vmap_area(va(starts[1])), None);
    assert_eq!(
        a.free(va(starts[1])),
        Err(VmareaError::NotAllocated {
            addr: va(starts[1])
        })
    );
    a.check().unwrap();
}
