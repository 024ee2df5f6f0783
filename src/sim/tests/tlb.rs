//! The TLB model: an unmapped page keeps reaching its old frame until a
//! flush covers it, a map of such a page is refused, and the counters say
//! exactly what was flushed and refused.

use super::*;
use crate::sim::TlbStats;
use kmm_api::TlbFlush;

/// Page `n` of the vmalloc area.
fn page(m: &Machine, n: usize) -> VirtAddr {
    m.layout()
        .vmalloc_start()
        .checked_add(n * PAGE_SIZE)
        .unwrap()
}

/// Maps `pfn` at `addr` with `PAGE_KERNEL`.
fn map(pt: &SimPageTable<&Frames>, addr: VirtAddr, pfn: Pfn) -> Result<(), Error> {
    // SAFETY: the machine of every test here has no zones, so the test owns
    // each frame outside the `Frames` pool it maps; `addr` is a page of the
    // kernel range that this test alone uses.
    unsafe { pt.map(addr, pfn, PageProt::KERNEL) }
}

/// Unmaps `addr` and hands back the flush it owes, not yet done.
fn unmap(pt: &SimPageTable<&Frames>, addr: VirtAddr) -> (Pfn, TlbFlush) {
    // SAFETY: the test made the mapping; its later accesses through `addr`
    // are the stale-TLB behaviour under test, on a frame it still owns.
    unsafe { pt.unmap(addr) }.unwrap()
}

fn stats(flushes: usize, flushed_pages: usize, stale_pages: usize, refused: usize) -> TlbStats {
    TlbStats {
        flushes,
        flushed_pages,
        stale_pages,
        refused_maps: refused,
    }
}

#[test]
fn an_unmapped_page_keeps_reaching_its_old_frame_until_flushed() {
    let m = machine(64 * MIB);
    let frames = Frames::new();
    let pt = table(&m, &frames).unwrap();
    let (a, pfn) = (page(&m, 0), Pfn::new(0x1000));
    map(&pt, a, pfn).unwrap();
    write(&m, a, 0x5a);
    let (got, flush) = unmap(&pt, a);
    assert_eq!(got, pfn);
    assert_eq!(pt.translate(a), None, "the entry itself is gone");
    // The stale translation still reaches the frame, old bytes and new.
    assert_eq!(read(&m, a), 0x5a);
    write(&m, m.pfn_to_virt(pfn).unwrap(), 0x6b);
    assert_eq!(read(&m, a), 0x6b);
    assert_eq!(m.stale_translations(), 1);
    assert_eq!(
        m.stale_translation(a.checked_add(0x123).unwrap()),
        Some(pfn)
    );
    assert!(m.has_stale_translation(pfn));
    assert_eq!(m.tlb_stats(), stats(0, 0, 1, 0));

    flush.flush(&pt);
    assert!(child_dies_of_sigsegv(|| {
        read(&m, a);
    }));
    assert_eq!(m.stale_translations(), 0);
    assert_eq!(m.stale_translation(a), None);
    assert!(!m.has_stale_translation(pfn));
    assert_eq!(m.tlb_stats(), stats(1, 1, 0, 0));
    assert_eq!(m.tlb_flushes(), 1);
}

#[test]
fn a_page_mapped_again_before_its_flush_is_refused_and_after_it_maps() {
    let m = machine(64 * MIB);
    let frames = Frames::new();
    let pt = table(&m, &frames).unwrap();
    let (a, old, new) = (page(&m, 0), Pfn::new(0x1000), Pfn::new(0x1001));
    write(&m, m.pfn_to_virt(old).unwrap(), 1);
    write(&m, m.pfn_to_virt(new).unwrap(), 2);
    map(&pt, a, old).unwrap();
    let (_, flush) = unmap(&pt, a);
    assert_eq!(map(&pt, a, new), Err(Error::StaleTlb { addr: a }));
    // Refused without a trace: no entry, and the address still shows the
    // old frame, not the new one.
    assert_eq!(pt.translate(a), None);
    assert_eq!(read(&m, a), 1);
    assert_eq!(
        map(&pt, a, old),
        Err(Error::StaleTlb { addr: a }),
        "same frame too"
    );
    assert_eq!(m.tlb_stats(), stats(0, 0, 1, 2));

    flush.flush(&pt);
    map(&pt, a, new).unwrap();
    assert_eq!(read(&m, a), 2);
    assert_eq!(pt.translate(a).map(|(p, _)| p), Some(new));
    assert_eq!(m.tlb_stats(), stats(1, 1, 0, 2));
}

#[test]
fn a_flush_drops_only_the_stale_pages_in_its_range() {
    let m = machine(64 * MIB);
    let frames = Frames::new();
    let pt = table(&m, &frames).unwrap();
    let pfn = |n: usize| Pfn::new(0x1000 + n);
    let mut owed = Vec::new();
    for n in 0..4 {
        map(&pt, page(&m, n), pfn(n)).unwrap();
        write(&m, page(&m, n), n as u8 + 10);
    }
    for n in 0..4 {
        owed.push(unmap(&pt, page(&m, n)).1);
    }
    assert_eq!(m.stale_translations(), 4);
    // An unaligned range touching pages 1 and 2 only.
    let start = page(&m, 1).checked_add(100).unwrap();
    let end = page(&m, 2).checked_add(1).unwrap();
    pt.flush_tlb_range(start, end);
    assert_eq!(m.tlb_stats(), stats(1, 2, 2, 0));
    for n in [1, 2] {
        let addr = page(&m, n);
        assert_eq!(m.stale_translation(addr), None);
        assert!(!m.has_stale_translation(pfn(n)));
        assert!(
            child_dies_of_sigsegv(|| {
                read(&m, addr);
            }),
            "page {n}"
        );
    }
    for n in [0, 3] {
        let addr = page(&m, n);
        assert_eq!(m.stale_translation(addr), Some(pfn(n)));
        assert_eq!(read(&m, addr), n as u8 + 10);
    }
    map(&pt, page(&m, 1), pfn(1)).unwrap();
    assert_eq!(
        map(&pt, page(&m, 3), pfn(3)),
        Err(Error::StaleTlb { addr: page(&m, 3) })
    );
    // The tokens merge into one flush of pages 0..4: it drops the two
    // stale pages and leaves page 1, mapped again meanwhile, alone.
    let all = owed.into_iter().reduce(TlbFlush::merge).unwrap();
    assert_eq!(all.range(), (page(&m, 0), page(&m, 4)));
    all.flush(&pt);
    assert_eq!(m.tlb_stats(), stats(2, 4, 0, 1));
    assert_eq!(read(&m, page(&m, 1)), 11);
    assert_eq!(pt.translate(page(&m, 1)).map(|(p, _)| p), Some(pfn(1)));
    map(&pt, page(&m, 3), pfn(3)).unwrap();
}

#[test]
fn a_flush_of_nothing_stale_is_counted_and_leaves_mappings_alone() {
    let m = machine(64 * MIB);
    let frames = Frames::new();
    let pt = table(&m, &frames).unwrap();
    let a = page(&m, 0);
    map(&pt, a, Pfn::new(0x1000)).unwrap();
    write(&m, a, 3);
    // Over a live mapping, over the whole kernel range and the direct map,
    // and an empty range.
    pt.flush_tlb_range(a, page(&m, 1));
    pt.flush_tlb_range(m.layout().page_offset(), m.layout().kernel_map_range().1);
    pt.flush_tlb_range(page(&m, 1), page(&m, 1));
    assert_eq!(m.tlb_stats(), stats(3, 0, 0, 0));
    assert_eq!(read(&m, a), 3);
    let direct = m.pfn_to_virt(Pfn::new(0x1000)).unwrap();
    assert_eq!(
        read(&m, direct),
        3,
        "the direct map is no TLB model's business"
    );
}

#[test]
fn a_frame_may_be_mapped_elsewhere_while_a_stale_translation_reaches_it() {
    // Lazy purge's pattern: the frame moves on at once, only the old
    // virtual page waits for the flush. Allowed, and visible in the query.
    let m = machine(64 * MIB);
    let frames = Frames::new();
    let pt = table(&m, &frames).unwrap();
    let (a, b, pfn) = (page(&m, 0), page(&m, 8), Pfn::new(0x1000));
    map(&pt, a, pfn).unwrap();
    let (_, flush) = unmap(&pt, a);
    map(&pt, b, pfn).unwrap();
    assert!(m.has_stale_translation(pfn));
    write(&m, b, 0x42);
    assert_eq!(read(&m, a), 0x42, "the stale translation sees the new use");
    // Two stale translations of one frame are both counted.
    let (_, flush_b) = unmap(&pt, b);
    assert_eq!(m.stale_translations(), 2);
    flush.flush(&pt);
    assert!(m.has_stale_translation(pfn), "b is still stale");
    flush_b.flush(&pt);
    assert!(!m.has_stale_translation(pfn));
    assert_eq!(m.tlb_stats(), stats(2, 2, 0, 0));
}

#[test]
fn dropping_the_table_drops_its_stale_translations_without_counting_a_flush() {
    let m = machine(64 * MIB);
    let frames = Frames::new();
    let a = page(&m, 0);
    {
        let pt = table(&m, &frames).unwrap();
        map(&pt, a, Pfn::new(0x1000)).unwrap();
        map(&pt, page(&m, 1), Pfn::new(0x1001)).unwrap();
        unmap(&pt, a).1.defer();
        assert_eq!(m.stale_translations(), 1);
        // Page 1 stays mapped: the table's drop clears it.
    }
    assert_eq!(m.tlb_stats(), stats(0, 0, 0, 0));
    assert!(child_dies_of_sigsegv(|| {
        read(&m, a);
    }));
    let pt = table(&m, &frames).unwrap();
    map(&pt, a, Pfn::new(0x1002)).unwrap();
    map(&pt, page(&m, 1), Pfn::new(0x1003)).unwrap();
}
