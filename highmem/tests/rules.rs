//! One test per rule of the pkmap pool, kmap_local and the helpers, on the
//! host test machine (`kmm_highmem::testing`).

use kmm_api::{Error, KernelPageTable, Order, PageProt, Pages, Pfn, VirtAddr, PAGE_SIZE};
use kmm_highmem::testing::{TestMachine, WaitMode, PKMAP_BASE};
use kmm_highmem::{HighmemError, SlotState, KM_MAX_IDX, LAST_PKMAP_MAX};
use std::time::Duration;

fn small(slots: usize) -> TestMachine {
    TestMachine::with_pool(2, 4, 64, slots, WaitMode::Futex)
}

#[test]
fn a_lowmem_page_gets_its_direct_map_address_and_no_slot() {
    let m = TestMachine::new(1, 4, 4);
    let hm = m.highmem();
    let mut low = m.alloc_lowmem();
    let direct = hm.page_address(&low).unwrap();
    let k = hm.kmap(&mut low, 0).unwrap();
    assert_eq!(k.addr(), direct);
    drop(k);
    let l = hm.kmap_local_page(&mut low, 0).unwrap();
    assert_eq!(l.addr(), direct);
    drop(l);
    assert_eq!(hm.stats().maps, 0);
    assert_eq!(hm.local_maps(), 0);
    assert_eq!(m.table().maps(), 0);
    hm.check().unwrap();
}

#[test]
fn a_mapped_page_gets_its_slot_back_with_the_count_raised() {
    let m = small(8);
    let hm = m.highmem();
    let page = m.alloc_highmem();
    let a = hm.kmap_ref(&page, 0).unwrap();
    let b = hm.kmap_ref(&page, 0).unwrap();
    assert_eq!(a.addr(), b.addr());
    let nr = hm.pkmap_nr(a.addr()).unwrap();
    assert_eq!(
        hm.pkmap_slot(nr),
        Some(SlotState::Mapped {
            pfn: page.pfn(),
            users: 2
        })
    );
    let stats = hm.stats();
    assert_eq!((stats.maps, stats.hits), (2, 1));
    assert_eq!(m.table().maps(), 1);
    hm.check().unwrap();
    drop((a, b));
    assert_eq!(hm.pkmap_slot(nr), Some(SlotState::Unflushed(page.pfn())));
}

#[test]
fn the_last_kunmap_leaves_count_1_and_the_address_until_the_wrap() {
    let m = small(4);
    let hm = m.highmem();
    let mut page = m.alloc_highmem();
    let addr = hm.kmap(&mut page, 0).unwrap().addr();
    assert_eq!(hm.page_address(&page), Some(addr));
    assert_eq!(m.table().translate(addr).map(|t| t.0), Some(page.pfn()));
    // A kmap of the same page now is a hit on the unflushed slot.
    assert_eq!(hm.kmap(&mut page, 0).unwrap().addr(), addr);
    assert_eq!(hm.stats().hits, 1);
    hm.kmap_flush_unused();
    assert_eq!(hm.page_address(&page), None);
    assert_eq!(m.table().translate(addr), None);
    hm.check().unwrap();
}

#[test]
fn kunmap_of_a_page_not_mapped_is_an_error_and_changes_nothing() {
    let m = small(4);
    let hm = m.highmem();
    let page = m.alloc_highmem();
    let pfn = page.pfn();
    // SAFETY: never mapped: the call must be refused.
    let never = unsafe { hm.kunmap_pfn(pfn) };
    assert_eq!(never, Err(HighmemError::NotMapped { pfn }));
    // SAFETY: the test holds the frame; one kmap, one kunmap.
    let addr = unsafe { hm.kmap_pfn(pfn) }.unwrap();
    // SAFETY: undoes the kmap above.
    unsafe { hm.kunmap_pfn(pfn) }.unwrap();
    let nr = hm.pkmap_nr(addr).unwrap();
    assert_eq!(hm.pkmap_slot(nr), Some(SlotState::Unflushed(pfn)));
    // A second kunmap: no user left, refused, the count stays at 1.
    // SAFETY: refused, as the test expects.
    let again = unsafe { hm.kunmap_pfn(pfn) };
    assert_eq!(again, Err(HighmemError::NotMapped { pfn }));
    assert_eq!(hm.pkmap_slot(nr), Some(SlotState::Unflushed(pfn)));
    hm.check().unwrap();
}

#[test]
fn last_pkmap_nr_cycles_and_one_flush_per_wrap_frees_every_unused_slot() {
    let m = small(4);
    let hm = m.highmem();
    let mut pages: Vec<Pages> = m.alloc_highmem_n(12);
    let (first, rest) = pages.split_at_mut(4);
    let live: Vec<_> = first.iter_mut().map(|p| hm.kmap(p, 0).unwrap()).collect();
    let slots: Vec<_> = live
        .iter()
        .map(|k| hm.pkmap_nr(k.addr()).unwrap())
        .collect();
    // Slot 1, 2, 3, then the wrap to 0 (flushing nothing: all in use).
    assert_eq!(slots, [1, 2, 3, 0]);
    assert_eq!(hm.last_pkmap_nr(), 0);
    assert_eq!(hm.stats().flushes, 0);
    drop(live);
    // All four unused (count 1): the next miss walks to the wrap at 0...
    let flushes = m.table().flushes();
    for p in rest.iter_mut().take(4) {
        drop(hm.kmap(p, 0).unwrap());
    }
    // ...slots 1, 2, 3 were count 1, so no free slot until the wrap:
    // one flush of the whole pool freed all four.
    assert_eq!(hm.stats().flushes, 1);
    assert_eq!(m.table().flushes(), flushes + 1);
    for (i, p) in pages.iter().take(4).enumerate() {
        assert_eq!(hm.page_address(p), None, "page {i} still has its slot");
    }
    hm.check().unwrap();
}

#[test]
fn cycling_a_million_kmaps_over_100000_pages_flushes_once_per_wrap() {
    let kmaps: usize = if cfg!(miri) { 5_000 } else { 1_000_000 };
    let distinct: usize = if cfg!(miri) { 3_000 } else { 100_000 };
    let m = TestMachine::new(1, 4, 4);
    let hm = m.highmem();
    let base = m.first_highmem().as_usize() + 1_000_000;
    for i in 0..kmaps {
        let pfn = Pfn::new(base + i % distinct);
        // SAFETY: the test page table only records these frames; nothing
        // reaches their bytes. One kmap, one kunmap each.
        unsafe {
            hm.kmap_pfn(pfn).unwrap();
            hm.kunmap_pfn(pfn).unwrap();
        }
    }
    let stats = hm.stats();
    // Every kmap is a miss (a page comes back long after its slot was
    // flushed), and miss k takes slot k mod 1024: the wraps are the
    // multiples of 1024, each flushing the whole pool once.
    assert_eq!(stats.hits, 0);
    assert_eq!(stats.maps, kmaps as u64);
    let wraps = (kmaps / LAST_PKMAP_MAX) as u64;
    assert_eq!(stats.flushes, wraps);
    assert_eq!(m.table().flushes() as u64, wraps);
    println!(
        "{} flushes per {kmaps} kmaps over {distinct} pages",
        stats.flushes
    );
    hm.check().unwrap();
}

#[test]
fn a_full_pool_fails_kmap_try_and_blocks_kmap_until_a_kunmap_wakes_it() {
    let slots = if cfg!(miri) { 16 } else { LAST_PKMAP_MAX };
    let m = TestMachine::with_pool(2, 4, slots + 2, slots, WaitMode::Futex);
    let hm = m.highmem();
    let mut pages = m.alloc_highmem_n(slots);
    let mut extra = m.alloc_highmem();
    let mut live: Vec<_> = pages.iter_mut().map(|p| hm.kmap(p, 0).unwrap()).collect();
    assert_eq!(
        hm.kmap_try(&mut extra, 0).unwrap_err(),
        HighmemError::PoolFull { slots }
    );
    std::thread::scope(|s| {
        let waiter = s.spawn(|| {
            let k = hm.kmap(&mut extra, 0).unwrap();
            k.addr()
        });
        while m.platform().waits() == 0 {
            std::thread::yield_now();
        }
        std::thread::sleep(Duration::from_millis(if cfg!(miri) { 1 } else { 20 }));
        assert!(!waiter.is_finished(), "kmap returned from a full pool");
        assert_eq!(hm.stats().waits, 1);
        let freed = live.pop().unwrap().addr();
        let got = waiter.join().unwrap();
        assert_eq!(got, freed, "the waiter takes the slot the kunmap freed");
    });
    assert!(m.platform().wakes() >= 1);
    drop(live);
    hm.check().unwrap();
}

#[test]
fn the_modelled_tlb_refuses_a_map_over_a_page_unmapped_but_not_flushed() {
    let m = small(4);
    let t = m.table();
    let addr = VirtAddr::new(PKMAP_BASE);
    let pfn = m.first_highmem();
    // SAFETY: the test owns the window's first page (no Highmem exists).
    unsafe {
        t.map(addr, pfn, PageProt::KERNEL).unwrap();
        let (_, flush) = t.unmap(addr).unwrap();
        assert_eq!(
            t.map(addr, pfn, PageProt::KERNEL),
            Err(Error::StaleTlb { addr })
        );
        flush.flush(t);
        t.map(addr, pfn, PageProt::KERNEL).unwrap();
        t.unmap(addr).unwrap().1.flush(t);
    }
}

#[test]
fn a_slot_is_reused_only_after_the_wrap_flushed_it() {
    let m = small(2);
    let hm = m.highmem();
    let mut pages = m.alloc_highmem_n(6);
    for round in 0..3 {
        for p in pages.iter_mut() {
            // Every map succeeds: the pool never maps over a stale entry
            // (the table would refuse with StaleTlb).
            let k = hm.kmap(p, 0).unwrap();
            assert!(!m.table().is_stale(k.addr()), "round {round}");
        }
    }
    assert!(m.table().flushed_pages() > 0);
    hm.check().unwrap();
}

#[test]
fn an_unused_slot_stays_reachable_until_the_flush_then_reaches_nothing() {
    let m = small(4);
    let hm = m.highmem();
    let mut page = m.alloc_highmem();
    let addr = {
        let mut k = hm.kmap(&mut page, 0).unwrap();
        k[7] = 0x5a;
        k.addr()
    };
    hm.kmap_flush_unused();
    assert_eq!(m.table().reach(addr), None);
    // A map at a stale address would have been refused; a new kmap works.
    assert_eq!(hm.kmap(&mut page, 0).unwrap()[7], 0x5a);
}

#[test]
fn bytes_written_through_kmap_are_read_back_through_a_later_kmap_local() {
    let m = TestMachine::new(2, 4, 8);
    let hm = m.highmem();
    let mut page = m.alloc_highmem();
    let kaddr = {
        let mut k = hm.kmap(&mut page, 0).unwrap();
        k[..5].copy_from_slice(b"hello");
        k[PAGE_SIZE - 1] = 0xee;
        k.addr()
    };
    let l = hm.kmap_local_page(&mut page, 0).unwrap();
    assert_ne!(l.addr(), kaddr, "kmap_local uses its own fixmap slot");
    assert_eq!(&l[..5], b"hello");
    assert_eq!(l[PAGE_SIZE - 1], 0xee);
    assert_eq!(Some(l.addr()), hm.kmap_local_addr(0, 0));
    drop(l);
    hm.check().unwrap();
}

#[test]
fn kmap_local_is_strict_lifo_and_an_out_of_order_unmap_is_refused() {
    let m = TestMachine::new(1, 4, 8);
    let hm = m.highmem();
    let (p, q) = (m.alloc_highmem(), m.alloc_highmem());
    // SAFETY: the test holds both frames and unmaps in the order shown.
    unsafe {
        let a = hm.kmap_local_pfn(p.pfn()).unwrap();
        let b = hm.kmap_local_pfn(q.pfn()).unwrap();
        assert_eq!(
            hm.kunmap_local_addr(a),
            Err(HighmemError::NotTopOfStack {
                addr: a,
                top: Some(b)
            })
        );
        assert_eq!(hm.local_depth(0), Some(2));
        hm.check().unwrap();
        hm.kunmap_local_addr(b).unwrap();
        // A double unmap: refused.
        assert_eq!(
            hm.kunmap_local_addr(b),
            Err(HighmemError::NotTopOfStack {
                addr: b,
                top: Some(a)
            })
        );
        hm.kunmap_local_addr(a).unwrap();
        assert_eq!(
            hm.kunmap_local_addr(a),
            Err(HighmemError::NotTopOfStack { addr: a, top: None })
        );
    }
    assert_eq!(hm.local_depth(0), Some(0));
    assert!(!m.platform().is_pinned(0), "every pin was undone");
    hm.check().unwrap();
}

#[test]
fn kunmap_local_of_a_guard_out_of_order_hands_it_back_still_mapped() {
    let m = TestMachine::new(1, 4, 8);
    let hm = m.highmem();
    let (mut p, mut q) = (m.alloc_highmem(), m.alloc_highmem());
    let mut a = hm.kmap_local_page(&mut p, 0).unwrap();
    let b = hm.kmap_local_page(&mut q, 0).unwrap();
    a[0] = 1;
    let (err, mut a) = hm.kunmap_local(a).unwrap_err();
    assert!(matches!(err, HighmemError::NotTopOfStack { .. }));
    a[1] = 2;
    hm.kunmap_local(b).unwrap();
    hm.kunmap_local(a).unwrap();
    assert_eq!(hm.local_depth(0), Some(0));
    assert_eq!(
        hm.with_kmap_local(&mut p, |x| (x[0], x[1])).unwrap(),
        (1, 2)
    );
}

#[test]
fn a_guard_dropped_out_of_order_stays_mapped_until_the_ones_above_go() {
    let m = TestMachine::new(1, 4, 8);
    let hm = m.highmem();
    let (mut p, mut q, mut r) = (m.alloc_highmem(), m.alloc_highmem(), m.alloc_highmem());
    let a = hm.kmap_local_page(&mut p, 0).unwrap();
    let b = hm.kmap_local_page(&mut q, 0).unwrap();
    let c = hm.kmap_local_page(&mut r, 0).unwrap();
    let (a_addr, b_addr) = (a.addr(), b.addr());
    drop(b);
    // Released, not unmapped: c is still above it.
    assert_eq!(hm.local_depth(0), Some(3));
    assert!(m.table().translate(b_addr).is_some());
    hm.check().unwrap();
    drop(c);
    // c and the released b go together; a stays.
    assert_eq!(hm.local_depth(0), Some(1));
    assert!(m.table().translate(b_addr).is_none());
    assert!(m.table().translate(a_addr).is_some());
    drop(a);
    assert_eq!(hm.local_depth(0), Some(0));
    assert!(!m.platform().is_pinned(0));
    hm.check().unwrap();
}

#[test]
fn a_cpu_has_km_max_idx_local_slots_then_kmap_local_fails() {
    let m = TestMachine::new(1, 4, KM_MAX_IDX + 1);
    let hm = m.highmem();
    let mut pages = m.alloc_highmem_n(KM_MAX_IDX + 1);
    let (last, rest) = pages.split_last_mut().unwrap();
    let live: Vec<_> = rest
        .iter_mut()
        .map(|p| hm.kmap_local_page(p, 0).unwrap())
        .collect();
    assert_eq!(
        hm.kmap_local_page(last, 0).unwrap_err(),
        HighmemError::LocalStackFull { cpu: 0 }
    );
    assert_eq!(hm.local_depth(0), Some(KM_MAX_IDX));
    hm.check().unwrap();
    // Dropping the Vec drops first to last: out of order, so the early
    // ones are released and all go with the top.
    drop(live);
    assert_eq!(hm.local_depth(0), Some(0));
    assert!(!m.platform().is_pinned(0));
    hm.check().unwrap();
}

#[test]
fn a_kmap_local_keeps_its_cpu_pinned_until_the_unmap() {
    let m = TestMachine::new(2, 4, 8);
    let hm = m.highmem();
    let mut p = m.alloc_highmem();
    let l = hm.kmap_local_page(&mut p, 0).unwrap();
    assert!(m.platform().is_pinned(0));
    drop(l);
    assert!(!m.platform().is_pinned(0));
}

#[test]
fn every_cpu_has_its_own_stack() {
    let m = TestMachine::new(2, 4, 8);
    let hm = m.highmem();
    let (mut p, mut q) = (m.alloc_highmem(), m.alloc_highmem());
    std::thread::scope(|s| {
        let (hm, q) = (&hm, &mut q);
        let other = s.spawn(move || {
            kmm_highmem::testing::set_cpu(1);
            let l = hm.kmap_local_page(q, 0).unwrap();
            l.addr()
        });
        let mine = hm.kmap_local_page(&mut p, 0).unwrap().addr();
        let theirs = other.join().unwrap();
        assert_eq!(mine, hm.kmap_local_addr(0, 0).unwrap());
        assert_eq!(theirs, hm.kmap_local_addr(1, 0).unwrap());
    });
    assert_eq!(hm.local_maps(), 2);
    hm.check().unwrap();
}

#[test]
fn a_handle_of_another_allocator_is_refused() {
    let m = TestMachine::new(1, 4, 8);
    let other = TestMachine::new(1, 4, 8);
    let hm = m.highmem();
    let mut foreign = other.alloc_highmem();
    let pfn = foreign.pfn();
    assert_eq!(
        hm.kmap(&mut foreign, 0).unwrap_err(),
        HighmemError::Foreign { pfn }
    );
    assert_eq!(
        hm.kmap_local_page(&mut foreign, 0).unwrap_err(),
        HighmemError::Foreign { pfn }
    );
    assert_eq!(hm.page_address(&foreign), None);
    assert_eq!(m.table().maps(), 0);
}

#[test]
fn a_page_index_past_the_block_is_refused() {
    let m = TestMachine::new(1, 4, 8);
    let hm = m.highmem();
    // SAFETY: frames 4..8 of this machine, held by nobody else.
    let mut block = unsafe { Pages::from_raw(Pfn::new(4), Order::new(2).unwrap(), m.allocator()) };
    let k = hm.kmap(&mut block, 3).unwrap();
    assert_eq!(
        hm.pkmap_slot(hm.pkmap_nr(k.addr()).unwrap()),
        Some(SlotState::Mapped {
            pfn: Pfn::new(7),
            users: 1
        })
    );
    drop(k);
    assert_eq!(
        hm.kmap_local_page(&mut block, 4).unwrap_err(),
        HighmemError::PageIndex {
            index: 4,
            nr_pages: 4
        }
    );
    let _ = block.into_raw();
}

#[test]
fn one_highmem_per_set_of_stacks() {
    let m = TestMachine::new(1, 4, 8);
    let hm = m.highmem();
    assert!(matches!(
        m.try_highmem(),
        Err(HighmemError::BadConfig { .. })
    ));
    drop(hm);
    let _again = m.highmem();
}

#[test]
fn helpers_copy_set_and_zero_within_the_page_and_refuse_ranges_past_it() {
    let m = TestMachine::new(1, 4, 8);
    let hm = m.highmem();
    let (mut a, mut b, mut low) = (m.alloc_highmem(), m.alloc_highmem(), m.alloc_lowmem());
    hm.memset_page(&mut a, 0, 0x11, PAGE_SIZE).unwrap();
    hm.memcpy_to_page(&mut a, 100, b"kmap").unwrap();
    hm.copy_highpage(&mut b, &a).unwrap();
    let mut buf = [0u8; 6];
    hm.memcpy_from_page(&mut buf, &b, 99).unwrap();
    assert_eq!(&buf, b"\x11kmap\x11");
    hm.memcpy_page(&mut low, 10, &a, 100, 4).unwrap();
    hm.memcpy_from_page(&mut buf[..4], &low, 10).unwrap();
    assert_eq!(&buf[..4], b"kmap");
    hm.memzero_page(&mut b, 100, 2).unwrap();
    hm.memcpy_from_page(&mut buf[..4], &b, 100).unwrap();
    assert_eq!(&buf[..4], b"\0\0ap");
    hm.clear_highpage(&mut a).unwrap();
    assert!(hm
        .with_kmap_local_ref(&a, |x| x.iter().all(|&v| v == 0))
        .unwrap());

    // Past the end: refused, nothing touched.
    let before = hm.with_kmap_local_ref(&b, |x| *x).unwrap();
    let oob = HighmemError::OutOfRange {
        offset: PAGE_SIZE - 1,
        len: 2,
    };
    assert_eq!(hm.memzero_page(&mut b, PAGE_SIZE - 1, 2), Err(oob));
    assert_eq!(hm.memset_page(&mut b, PAGE_SIZE - 1, 7, 2), Err(oob));
    assert_eq!(hm.memcpy_to_page(&mut b, PAGE_SIZE - 1, b"ab"), Err(oob));
    assert_eq!(
        hm.memcpy_from_page(&mut buf[..2], &b, PAGE_SIZE - 1),
        Err(oob)
    );
    assert_eq!(hm.memcpy_page(&mut b, PAGE_SIZE - 1, &a, 0, 2), Err(oob));
    assert_eq!(
        hm.memzero_page(&mut b, usize::MAX, 2),
        Err(HighmemError::OutOfRange {
            offset: usize::MAX,
            len: 2
        })
    );
    assert_eq!(hm.with_kmap_local_ref(&b, |x| *x).unwrap(), before);
    assert_eq!(hm.local_depth(0), Some(0));
    hm.check().unwrap();
}

#[test]
fn page_address_is_the_slot_while_mapped_and_none_otherwise() {
    let m = small(4);
    let hm = m.highmem();
    let mut page = m.alloc_highmem();
    assert_eq!(hm.page_address(&page), None);
    let k = hm.kmap(&mut page, 0).unwrap();
    let addr = k.addr();
    drop(k);
    assert_eq!(hm.page_address_pfn(page.pfn()), Some(addr));
    // kmap_local does not give a page a page_address.
    hm.kmap_flush_unused();
    let l = hm.kmap_local_page(&mut page, 0).unwrap();
    drop(l);
    assert_eq!(hm.page_address(&page), None);
}

#[test]
fn bad_configurations_are_refused() {
    let m = TestMachine::new(1, 4, 8);
    for slots in [0, LAST_PKMAP_MAX + 1] {
        let m = TestMachine::with_pool(1, 4, 8, slots.min(LAST_PKMAP_MAX + 1), WaitMode::Futex);
        assert!(matches!(
            m.try_highmem(),
            Err(HighmemError::BadConfig { .. })
        ));
    }
    // A slot already mapped at construction.
    let addr = VirtAddr::new(PKMAP_BASE + PAGE_SIZE);
    // SAFETY: no Highmem exists on this machine yet.
    unsafe { m.table().map(addr, Pfn::new(5), PageProt::KERNEL).unwrap() };
    assert!(matches!(
        m.try_highmem(),
        Err(HighmemError::BadConfig { .. })
    ));
}
