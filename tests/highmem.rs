//! kmap and kmap_local on the simulated i386 machine, whose kernel
//! mappings are real host mappings and whose TLB is modelled: bytes
//! written through one mapping of a highmem frame are read through
//! another, a flushed pkmap slot really faults, and a full pool refuses or
//! parks the waiter until a kunmap wakes it.

use kmm::sim::{child_dies_of_sigsegv, MachineConfig};
use kmm::{
    DirectMap, Error, HighmemError, MemoryManager, PageProt, SimMemoryManager, VmFlags,
    GFP_HIGHUSER, GFP_KERNEL,
};
use std::sync::atomic::{AtomicBool, Ordering};

fn sim() -> SimMemoryManager {
    MemoryManager::sim(MachineConfig::default()).unwrap()
}

#[test]
fn bytes_through_kmap_show_through_kmap_local_and_a_vmap() {
    let mm = sim();
    let mut page = mm.alloc_page(GFP_HIGHUSER).unwrap();
    assert!(
        mm.zones().page_address(page.pfn()).is_none(),
        "a highmem frame"
    );
    let pkmap = {
        let mut map = mm.kmap(&mut page, 0).unwrap();
        map[..5].copy_from_slice(b"hello");
        map.addr()
    };
    let local = mm.kmap_local_page(&mut page, 0).unwrap();
    assert_ne!(local.addr(), pkmap, "a fixmap slot, not the pkmap one");
    assert_eq!(&local[..5], b"hello");
    drop(local);
    let vmapped = mm
        .vmap(
            std::slice::from_ref(&page),
            VmFlags::empty(),
            PageProt::KERNEL,
        )
        .unwrap();
    // SAFETY: our mapping of our frame.
    let through = unsafe { core::slice::from_raw_parts(vmapped.as_ptr(), 5) };
    assert_eq!(through, b"hello");
    // SAFETY: we made the vmap and are done with it.
    unsafe { mm.vunmap(vmapped.as_ptr()) }.unwrap();
    let mut back = [0u8; 5];
    mm.memcpy_from_page(&mut back, &page, 0).unwrap();
    assert_eq!(&back, b"hello");
    assert!(matches!(
        mm.memzero_page(&mut page, 4090, 10),
        Err(Error::Highmem(HighmemError::OutOfRange { .. }))
    ));
    mm.__free_page(page).unwrap();
    mm.check().unwrap();
}

#[test]
fn an_unused_pkmap_slot_really_faults_once_flushed() {
    let mm = sim();
    let mut page = mm.alloc_page(GFP_HIGHUSER).unwrap();
    let addr = {
        let mut map = mm.kmap(&mut page, 0).unwrap();
        map[0] = 7;
        map.addr()
    };
    // The slot is free but not yet flushed: its translation is stale.
    let km = mm.highmem().unwrap();
    km.kmap_flush_unused();
    assert!(km.stats().flushes >= 1);
    let ptr = mm.machine().virt_to_ptr(addr);
    assert!(child_dies_of_sigsegv(|| {
        // SAFETY: none: the flushed slot is expected to fault.
        unsafe { ptr.read_volatile() };
    }));
    mm.__free_page(page).unwrap();
}

#[test]
fn a_full_pool_refuses_kmap_try_and_a_blocking_kmap_waits_for_a_kunmap() {
    let mm = sim();
    let slots = mm.layout().last_pkmap();
    let mut pages: Vec<_> = (0..slots + 1)
        .map(|_| mm.alloc_page(GFP_HIGHUSER).unwrap())
        .collect();
    let mut last = pages.pop().unwrap();
    let maps: Vec<_> = pages
        .iter_mut()
        .map(|page| mm.kmap(page, 0).unwrap())
        .collect();
    assert!(matches!(
        mm.kmap_try(&mut last, 0),
        Err(Error::Highmem(HighmemError::PoolFull { .. }))
    ));
    let waiting = AtomicBool::new(true);
    std::thread::scope(|s| {
        let blocked = s.spawn(|| {
            let map = mm.kmap(&mut last, 0).map(|m| m.addr());
            waiting.store(false, Ordering::SeqCst);
            map
        });
        std::thread::sleep(std::time::Duration::from_millis(50));
        assert!(
            waiting.load(Ordering::SeqCst),
            "the kmap waits while the pool is full"
        );
        let mut maps = maps;
        mm.kunmap(maps.pop().unwrap()).unwrap();
        assert!(blocked.join().unwrap().is_ok(), "woken by the kunmap");
        drop(maps);
    });
    // One trip round kmap's wait loop: the waiter slept through the 50 ms
    // until the kunmap's wake (a waiter spinning in `wait_on` comes back
    // thousands of times).
    assert_eq!(mm.highmem().unwrap().stats().waits, 1);
    for page in pages.into_iter().chain([last]) {
        mm.__free_page(page).unwrap();
    }
    mm.check().unwrap();
}

#[test]
fn lowmem_pages_are_kmapped_at_their_direct_map_address() {
    let mm = sim();
    let mut page = mm.alloc_page(GFP_KERNEL).unwrap();
    let direct = mm.page_address(page.pfn()).unwrap();
    assert_eq!(mm.kmap(&mut page, 0).unwrap().addr(), direct);
    assert_eq!(mm.highmem().unwrap().stats().maps, 0, "no slot used");
    mm.__free_page(page).unwrap();
}
