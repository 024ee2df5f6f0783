//! The slab layer inside the composed manager, on both presets: kmalloc's
//! size classes, refused frees, pages back to the zones after a shrink,
//! reclaim through the registered shrinker, and both invariant checkers
//! after a mixed workload.

use kmm::MemoryManager;
use kmm_api::{DirectMap, PreemptControl, Shrinker, GFP_KERNEL, PAGE_SIZE};
use kmm_slab::{SlabError, SlabFlags};

fn hosted() -> kmm::HostedMemoryManager {
    MemoryManager::hosted(16 << 20, 2).unwrap()
}

#[cfg(feature = "sim")]
fn sim() -> kmm::SimMemoryManager {
    MemoryManager::sim(kmm::sim::MachineConfig {
        ram_bytes: 64 << 20,
        ..Default::default()
    })
    .unwrap()
}

/// Runs `rule` on the hosted preset and, with feature `sim`, on the
/// simulated i386 machine.
macro_rules! on_both_presets {
    ($($name:ident => $rule:ident;)*) => {
        mod hosted_preset {
            $(#[test] fn $name() { super::$rule(&super::hosted()); })*
        }
        #[cfg(feature = "sim")]
        mod sim_preset {
            $(#[test] fn $name() { super::$rule(&super::sim()); })*
        }
    };
}

on_both_presets! {
    kmalloc_100_is_served_by_kmalloc_128 => kmalloc_100_uses_kmalloc_128;
    kfree_of_a_foreign_pointer_or_twice_is_an_error => foreign_and_double_frees_are_refused;
    shrink_gives_every_slab_page_back_to_the_zones => shrink_returns_pages;
    page_reclaim_shrinks_empty_slabs => reclaim_calls_the_slab_shrinker;
    zone_and_slab_invariants_hold_after_a_workload => invariants_hold_after_workload;
}

fn kmalloc_100_uses_kmalloc_128<P: PreemptControl, D: DirectMap, M: kmm::x86::Mmu>(
    mm: &MemoryManager<P, D, M>,
) {
    let p = mm.kmalloc(100, GFP_KERNEL).unwrap();
    // SAFETY: this test holds the object at `p`.
    let cache = unsafe { mm.kmem_cache_of(p.as_ptr()) }
        .unwrap()
        .cache()
        .unwrap();
    let info = mm.kmem().kmem_cache_info(cache).unwrap();
    assert_eq!(info.name, "kmalloc-128");
    // SAFETY: as above.
    assert_eq!(unsafe { mm.ksize(p.as_ptr()) }.unwrap(), 128);
    assert_eq!(p.as_ptr() as usize % 128, 0, "natural alignment");
    let pfn = mm.zones().direct_map().ptr_to_pfn(p.as_ptr()).unwrap();
    assert!(mm.zones().page_zone(pfn).is_some(), "a frame of the zones");
    // SAFETY: this test holds the object at `p` and gives it up.
    unsafe { mm.kfree(p.as_ptr()) }.unwrap();
}

fn foreign_and_double_frees_are_refused<P: PreemptControl, D: DirectMap, M: kmm::x86::Mmu>(
    mm: &MemoryManager<P, D, M>,
) {
    // Every bad free below passes memory this test holds (a stack
    // variable, a page, the inside of an object) or memory nobody holds
    // (a freed object); only this thread uses the manager. So each call
    // is within kfree's contract, and each is refused.
    let on_stack = 0u64;
    // SAFETY: see above: the variable is this test's own.
    let stack_free = unsafe { mm.kfree(core::ptr::from_ref(&on_stack).cast()) };
    assert!(matches!(
        stack_free,
        Err(kmm::Error::Slab(SlabError::InvalidPointer { .. }))
    ));
    let page = mm.get_free_page(GFP_KERNEL).unwrap();
    let page_ptr = mm.zones().direct_map().virt_to_ptr(page);
    // SAFETY: see above: this test holds the page.
    let page_free = unsafe { mm.kfree(page_ptr) };
    assert!(
        matches!(
            page_free,
            Err(kmm::Error::Slab(SlabError::InvalidPointer { .. }))
        ),
        "a page from the page allocator is not kmalloc's"
    );
    // SAFETY: this test holds the page `get_free_page` returned and gives
    // it up.
    unsafe { mm.free_page(page) }.unwrap();

    let p = mm.kmalloc(64, GFP_KERNEL).unwrap();
    // SAFETY: see above: this test holds the object `p` points into.
    let inside = unsafe { mm.kfree(p.as_ptr().wrapping_add(8)) };
    assert!(matches!(
        inside,
        Err(kmm::Error::Slab(SlabError::NotObjectStart { .. }))
    ));
    // SAFETY: this test holds the object at `p` and gives it up.
    unsafe { mm.kfree(p.as_ptr()) }.unwrap();
    // SAFETY: see above: nobody holds the object at `p` any more, and no
    // other thread allocates from this manager meanwhile.
    let double = unsafe { mm.kfree(p.as_ptr()) };
    assert!(matches!(
        double,
        Err(kmm::Error::Slab(SlabError::DoubleFree { .. }))
    ));
    mm.zones().check().unwrap();
    mm.kmem().check_invariants().unwrap();
}

fn shrink_returns_pages<P: PreemptControl, D: DirectMap, M: kmm::x86::Mmu>(
    mm: &MemoryManager<P, D, M>,
) {
    mm.zones().drain_all_pages();
    let before = mm.zones().nr_free_pages();
    let cache = mm
        .kmem_cache_create("dentry", 192, 8, SlabFlags::empty(), None)
        .unwrap();
    let objects: Vec<_> = (0..500)
        .map(|_| mm.kmem_cache_alloc(cache, GFP_KERNEL).unwrap())
        .collect();
    let in_use = before - mm.zones().nr_free_pages();
    assert!(in_use > 0);
    for p in &objects {
        // SAFETY: this test holds each object and gives it up, once.
        unsafe { mm.kmem_cache_free(cache, p.as_ptr()) }.unwrap();
    }
    let freed = mm.kmem_cache_shrink(cache).unwrap();
    assert!(freed > 0, "empty slabs go back on shrink");
    // SAFETY: every object of the cache was freed, and nothing else uses
    // the cache.
    unsafe { mm.kmem_cache_destroy(cache) }.unwrap();
    mm.zones().drain_all_pages();
    assert_eq!(mm.zones().nr_free_pages(), before);
    mm.zones().check().unwrap();
}

fn reclaim_calls_the_slab_shrinker<P: PreemptControl, D: DirectMap, M: kmm::x86::Mmu>(
    mm: &MemoryManager<P, D, M>,
) {
    let objects: Vec<_> = (0..200)
        .map(|_| mm.kmalloc(1024, GFP_KERNEL).unwrap())
        .collect();
    for p in objects {
        // SAFETY: this test holds each object and gives it up, once.
        unsafe { mm.kfree(p.as_ptr()) }.unwrap();
    }
    mm.kmem().drain_local();
    assert!(mm.kmem().count_objects() > 0, "empty slabs to reclaim");
    // Exhaust lowmem: the blocking slow path calls the shrinkers first.
    let mut pages = Vec::new();
    while let Ok(page) = mm.get_free_page(GFP_KERNEL) {
        pages.push(page);
    }
    assert_eq!(mm.kmem().count_objects(), 0, "reclaim emptied the caches");
    for page in pages {
        // SAFETY: this test holds each page `get_free_page` returned and
        // gives it up, once.
        unsafe { mm.free_page(page) }.unwrap();
    }
    mm.zones().check().unwrap();
    mm.kmem().check_invariants().unwrap();
}

fn invariants_hold_after_workload<P: PreemptControl, D: DirectMap, M: kmm::x86::Mmu>(
    mm: &MemoryManager<P, D, M>,
) {
    let sizes = [8, 24, 96, 100, 200, 500, 1000, 3000, 8192, 9000, 20000];
    let mut live = Vec::new();
    for round in 0..20 {
        for &size in &sizes {
            let p = mm.kzalloc(size, GFP_KERNEL).unwrap();
            // SAFETY: `size` fresh bytes of ours.
            unsafe { p.as_ptr().write_bytes(round as u8, size) };
            live.push((p, size, round as u8));
        }
        // Free every other object, growing a few of the rest.
        let mut kept = Vec::new();
        for (i, (p, size, fill)) in live.drain(..).enumerate() {
            if i % 2 == 0 {
                // SAFETY: this test holds the object at `p` (drained out
                // of `live`) and gives it up.
                unsafe { mm.kfree(p.as_ptr()) }.unwrap();
            } else if i % 3 == 0 {
                // SAFETY: this test holds the object at `p` and gives it
                // up for the one returned.
                let q = unsafe { mm.krealloc(p.as_ptr(), size + PAGE_SIZE, GFP_KERNEL) }.unwrap();
                // SAFETY: krealloc kept the first `size` bytes.
                let bytes = unsafe { core::slice::from_raw_parts(q.as_ptr(), size) };
                assert!(bytes.iter().all(|&b| b == fill));
                kept.push((q, size, fill));
            } else {
                kept.push((p, size, fill));
            }
        }
        live = kept;
        mm.zones().check().unwrap();
        mm.kmem().check_invariants().unwrap();
    }
    for (p, size, fill) in live {
        // SAFETY: a live allocation of at least `size` bytes.
        let bytes = unsafe { core::slice::from_raw_parts(p.as_ptr(), size) };
        assert!(bytes.iter().all(|&b| b == fill), "contents intact");
        // SAFETY: this test holds the object at `p` and gives it up.
        unsafe { mm.kfree(p.as_ptr()) }.unwrap();
    }
    mm.kmem().shrink_all();
    mm.zones().check().unwrap();
    mm.kmem().check_invariants().unwrap();
    assert!(mm.slabinfo().to_string().contains("kmalloc-128"));
}
