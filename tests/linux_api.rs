//! The manager's API as a kernel developer calls it, by Linux name, checked
//! against Linux's documented behaviour: return values, error cases,
//! zeroing, rounding; then the one error type, `mm.check()` catching a
//! corrupted structure in each layer, and memory coming back.

use kmm::{
    api, CheckReport, Error, MemoryManager, ObjectOwner, Order, Pfn, SlabError, SlabFlags,
    VirtAddr, ZoneType, __GFP_ZERO, GFP_DMA, GFP_KERNEL, KMALLOC_MAX_CACHE_SIZE, PAGE_SIZE,
    ZERO_SIZE_PTR,
};
use kmm_api::DirectMap;

fn mm() -> kmm::HostedMemoryManager {
    MemoryManager::hosted(if cfg!(miri) { 8 << 20 } else { 32 << 20 }, 1).unwrap()
}

fn order(n: u32) -> Order {
    Order::new(n).unwrap()
}

/// The bytes at a direct-map address (the test holds them).
fn bytes(mm: &kmm::HostedMemoryManager, addr: VirtAddr, len: usize) -> &[u8] {
    let ptr = mm.zones().direct_map().virt_to_ptr(addr);
    // SAFETY: every caller holds `len` bytes at `addr`, mapped in the
    // direct map, and does not write them while the slice lives.
    unsafe { core::slice::from_raw_parts(ptr, len) }
}

/// Where `cache` keeps a free object's (hardened) free pointer.
fn free_pointer_offset(mm: &kmm::HostedMemoryManager, cache: kmm::CacheId) -> usize {
    mm.kmem()
        .kmem_cache_info(cache)
        .unwrap()
        .free_pointer_offset
}

fn free_after_drain(mm: &kmm::HostedMemoryManager) -> usize {
    mm.zones().drain_all_pages();
    mm.nr_free_pages()
}

#[test]
fn alloc_pages_takes_two_to_the_order_frames_aligned_and_free_gives_them_back() {
    let mm = mm();
    let before = free_after_drain(&mm);
    for n in 0..=4 {
        let block = mm.alloc_pages(GFP_KERNEL, order(n)).unwrap();
        assert_eq!(block.nr_pages(), 1 << n);
        assert!(
            block.pfn().is_aligned_to_order(n),
            "order {n} block aligned"
        );
        assert_eq!(mm.page_to_pfn(&block), block.pfn());
        assert_eq!(before - free_after_drain(&mm), 1 << n);
        assert_eq!(mm.pfn_to_page(block.pfn()).unwrap().page_count(), 1);
        mm.__free_pages(block).unwrap();
        assert_eq!(free_after_drain(&mm), before);
    }
    let page = mm.alloc_page(GFP_DMA).unwrap();
    assert!(page.phys().as_u64() < 16 << 20, "GFP_DMA: the first 16 MiB");
    assert_eq!(
        mm.pfn_to_page(page.pfn()).unwrap().zone_type(),
        ZoneType::Dma
    );
    mm.__free_page(page).unwrap();
}

#[test]
fn gfp_zero_and_get_zeroed_page_return_zeroed_memory() {
    let mm = mm();
    // Dirty a page, give it back, and ask again: the same frame comes back
    // from this CPU's list, and must be zeroed on request.
    let addr = mm.get_free_page(GFP_KERNEL).unwrap();
    let ptr = mm.zones().direct_map().virt_to_ptr(addr);
    // SAFETY: we hold the page at `addr`.
    unsafe { ptr.write_bytes(0xee, PAGE_SIZE) };
    // SAFETY: we hold it and give it up.
    unsafe { mm.free_page(addr) }.unwrap();
    let zeroed = mm.get_zeroed_page(GFP_KERNEL).unwrap();
    assert_eq!(zeroed, addr, "the hot page comes back first");
    assert!(bytes(&mm, zeroed, PAGE_SIZE).iter().all(|&b| b == 0));
    // SAFETY: as above.
    unsafe { mm.free_page(zeroed) }.unwrap();

    let block = mm.alloc_pages(GFP_KERNEL | __GFP_ZERO, order(2)).unwrap();
    let at = mm.page_address(block.pfn()).unwrap();
    assert!(bytes(&mm, at, 4 * PAGE_SIZE).iter().all(|&b| b == 0));
    mm.__free_pages(block).unwrap();
}

#[test]
fn a_page_never_allocated_is_not_allocated_and_a_second_free_is_a_double_free() {
    let mm = mm();
    let addr = mm.get_free_page(GFP_KERNEL).unwrap();
    // A frame 2 MiB away, in untouched RAM: free in the buddy, and never
    // handed out since boot.
    let never = [
        addr.as_usize() + (512 * PAGE_SIZE),
        addr.as_usize() - (512 * PAGE_SIZE),
    ]
    .into_iter()
    .map(VirtAddr::new)
    .find(|&a| mm.virt_to_page(a).is_ok())
    .unwrap();
    let never_pfn = mm.virt_to_page(never).unwrap();
    let descriptor = mm.pfn_to_page(never_pfn).unwrap();
    assert_eq!((descriptor.page_count(), descriptor.is_pcp()), (0, false));
    // SAFETY: freeing what nobody holds is within the contract (refused).
    let refused = unsafe { mm.free_page(never) };
    assert_eq!(
        refused,
        Err(Error::Page(api::Error::NotAllocated { pfn: never_pfn }))
    );
    // SAFETY: we hold the page; the second free passes a page nobody holds.
    unsafe {
        mm.free_page(addr).unwrap();
        let twice = mm.free_page(addr);
        let pfn = mm.virt_to_page(addr).unwrap();
        assert_eq!(twice, Err(Error::Page(api::Error::DoubleFree { pfn })));
    }
    // Once it reached the buddy too, not only while on a per-CPU list.
    mm.zones().drain_all_pages();
    // SAFETY: as above.
    let after_drain = unsafe { mm.free_page(addr) };
    assert!(matches!(
        after_drain,
        Err(Error::Page(api::Error::DoubleFree { .. }))
    ));
    mm.check().unwrap();
}

#[test]
fn alloc_pages_exact_rounds_to_pages_not_to_a_power_of_two() {
    let mm = mm();
    let before = free_after_drain(&mm);
    let addr = mm.alloc_pages_exact(3 * PAGE_SIZE + 1, GFP_KERNEL).unwrap();
    assert_eq!(before - free_after_drain(&mm), 4, "4 pages, not 8");
    // SAFETY: the size does not match what was allocated: refused whole.
    assert!(unsafe { mm.free_pages_exact(addr, 9 * PAGE_SIZE) }.is_err());
    assert_eq!(
        before - free_after_drain(&mm),
        4,
        "a refused free changes nothing"
    );
    // SAFETY: we hold those pages and give them up.
    unsafe { mm.free_pages_exact(addr, 3 * PAGE_SIZE + 1) }.unwrap();
    assert_eq!(free_after_drain(&mm), before);
    assert_eq!(
        mm.alloc_pages_exact(0, GFP_KERNEL),
        Err(Error::Page(api::Error::ZeroSize))
    );
}

#[test]
fn the_address_translations_agree_with_each_other() {
    let mm = mm();
    let page = mm.alloc_page(GFP_KERNEL).unwrap();
    let addr = mm.page_address(page.pfn()).unwrap();
    let inside = VirtAddr::new(addr.as_usize() + 0x7ff);
    assert_eq!(mm.virt_to_page(inside).unwrap(), page.pfn());
    let phys = mm.__pa(inside).unwrap();
    assert_eq!(phys.as_u64(), page.phys().as_u64() + 0x7ff);
    assert_eq!(mm.virt_to_phys(inside).unwrap(), phys);
    assert_eq!(mm.__va(phys).unwrap(), inside);
    assert_eq!(mm.phys_to_virt(phys).unwrap(), inside);
    // Outside the direct map: errors naming the address.
    let stray = VirtAddr::new(0x1000);
    assert_eq!(
        mm.virt_to_page(stray),
        Err(Error::Page(api::Error::BadVirtAddr { addr: stray }))
    );
    let beyond = kmm::PhysAddr::new(1 << 40);
    assert_eq!(
        mm.__va(beyond),
        Err(Error::Page(api::Error::BadPhysAddr { addr: beyond }))
    );
    assert!(mm.pfn_to_page(Pfn::new(1 << 40)).is_none());
    assert!(mm.page_address(Pfn::new(1 << 40)).is_none());
    mm.__free_page(page).unwrap();
}

#[test]
fn the_totals_add_up() {
    let mm = mm();
    let zones: usize = mm
        .zones()
        .zone_stats()
        .iter()
        .flatten()
        .map(|z| z.managed)
        .sum();
    assert_eq!(mm.totalram_pages(), zones);
    assert!(mm.totalram_pages() + mm.reserved_pages() >= mm.memory_pages());
    assert_eq!(mm.totalhigh_pages(), 0);
    let free = free_after_drain(&mm);
    let block = mm.alloc_pages(GFP_KERNEL, order(3)).unwrap();
    // The per-CPU lists took a batch; Linux's free count leaves them out.
    mm.zones().drain_all_pages();
    let info = mm.si_meminfo();
    assert_eq!(info.mem_unit, PAGE_SIZE);
    assert_eq!(info.totalram, mm.totalram_pages());
    assert_eq!(info.freeram, free - 8);
    assert_eq!(
        (
            info.sharedram,
            info.bufferram,
            info.totalswap,
            info.freeswap
        ),
        (0, 0, 0, 0)
    );
    mm.__free_pages(block).unwrap();
}

#[cfg(feature = "sim")]
#[test]
fn a_2_gib_i386_machine_has_1152_mib_of_highmem() {
    let mm = MemoryManager::sim(kmm::sim::MachineConfig::default()).unwrap();
    assert_eq!(mm.totalhigh_pages(), 294_912);
    let info = mm.si_meminfo();
    assert_eq!(info.totalhigh, 294_912);
    assert_eq!(info.freehigh, 294_912, "nothing allocated from highmem yet");
    assert!(info.totalram > info.totalhigh);
}

#[test]
// Pure bookkeeping over many allocations: too slow under miri for what
// it adds to the unsafe paths the other tests cover.
#[cfg_attr(miri, ignore)]
fn kmalloc_size_roundup_is_what_kmalloc_gives() {
    let mm = mm();
    for size in (1..=KMALLOC_MAX_CACHE_SIZE).step_by(37).chain([
        1,
        8,
        9,
        96,
        97,
        192,
        193,
        KMALLOC_MAX_CACHE_SIZE,
        KMALLOC_MAX_CACHE_SIZE + 1,
        5 * PAGE_SIZE,
    ]) {
        let p = mm.kmalloc(size, GFP_KERNEL).unwrap();
        // SAFETY: we hold `p`, and give it up.
        let ksize = unsafe { mm.ksize(p.as_ptr()) }.unwrap();
        assert_eq!(mm.kmalloc_size_roundup(size), ksize, "size {size}");
        // SAFETY: as above.
        unsafe { mm.kfree(p.as_ptr()) }.unwrap();
    }
    assert_eq!(mm.kmalloc_size_roundup(0), 0);
    assert_eq!(mm.kmalloc(0, GFP_KERNEL).unwrap(), ZERO_SIZE_PTR);
}

#[test]
fn kmemdup_and_kstrdup_copy_and_terminate() {
    let mm = mm();
    let src: Vec<u8> = (0..300).map(|i| i as u8).collect();
    let dup = mm.kmemdup(&src, GFP_KERNEL).unwrap();
    // SAFETY: `dup` holds 300 bytes, ours.
    let copy = unsafe { core::slice::from_raw_parts(dup.as_ptr(), 300) };
    assert_eq!(copy, &src[..]);
    // SAFETY: ours, given up.
    unsafe { mm.kfree(dup.as_ptr()) }.unwrap();
    assert_eq!(mm.kmemdup(&[], GFP_KERNEL).unwrap(), ZERO_SIZE_PTR);

    for (s, max, expect) in [
        (&b"swapper/0"[..], usize::MAX, &b"swapper/0"[..]),
        (b"ab\0cd", usize::MAX, b"ab"),
        (b"kthreadd", 3, b"kth"),
        (b"", 10, b""),
    ] {
        let p = mm.kstrndup(s, max, GFP_KERNEL).unwrap();
        // SAFETY: `p` holds `expect.len() + 1` bytes, ours.
        let copy = unsafe { core::slice::from_raw_parts(p.as_ptr(), expect.len() + 1) };
        assert_eq!(&copy[..expect.len()], expect);
        assert_eq!(copy[expect.len()], 0, "NUL-terminated");
        // SAFETY: ours, given up.
        unsafe { mm.kfree(p.as_ptr()) }.unwrap();
    }
}

#[test]
fn krealloc_array_refuses_an_overflow_and_keeps_the_contents() {
    let mm = mm();
    let p = mm.kmalloc_array(10, 4, GFP_KERNEL).unwrap();
    // SAFETY: we hold `p` (40 bytes); each resize gives it up on success.
    unsafe {
        for i in 0..40 {
            p.as_ptr().add(i).write(i as u8);
        }
        assert_eq!(
            mm.krealloc_array(p.as_ptr(), usize::MAX / 2, 4, GFP_KERNEL),
            Err(Error::Slab(SlabError::Overflow {
                n: usize::MAX / 2,
                size: 4
            }))
        );
        let q = mm.krealloc_array(p.as_ptr(), 1000, 4, GFP_KERNEL).unwrap();
        assert_eq!(mm.ksize(q.as_ptr()).unwrap(), 4096);
        assert!((0..40).all(|i| *q.as_ptr().add(i) == i as u8));
        mm.kfree(q.as_ptr()).unwrap();
    }
    assert!(matches!(
        mm.kcalloc(usize::MAX, 2, GFP_KERNEL),
        Err(Error::Slab(SlabError::Overflow { .. }))
    ));
}

#[test]
fn kfree_sensitive_zeroes_all_of_ksize_and_refuses_before_writing() {
    let mm = mm();
    let cache = mm
        .kmem_cache_create("keys", 48, 0, SlabFlags::empty(), None)
        .unwrap();
    let fp = free_pointer_offset(&mm, cache);
    let key = mm.kmem_cache_alloc(cache, GFP_KERNEL).unwrap();
    // SAFETY: we hold `key` (48 bytes).
    unsafe { key.as_ptr().write_bytes(0xa5, 48) };
    // An interior pointer is refused, and nothing is written.
    // SAFETY: a pointer into our object, which we keep.
    let interior = unsafe { mm.kfree_sensitive(key.as_ptr().add(8)) };
    assert!(matches!(
        interior,
        Err(Error::Slab(
            SlabError::InvalidPointer { .. } | SlabError::NotObjectStart { .. }
        ))
    ));
    // SAFETY: still ours.
    assert!(unsafe { core::slice::from_raw_parts(key.as_ptr(), 48) }
        .iter()
        .all(|&b| b == 0xa5));
    // SAFETY: ours, given up.
    unsafe { mm.kfree_sensitive(key.as_ptr()) }.unwrap();
    let again = mm.kmem_cache_alloc(cache, GFP_KERNEL).unwrap();
    assert_eq!(again, key, "the object comes back from this CPU's array");
    // SAFETY: ours again.
    let seen = unsafe { core::slice::from_raw_parts(again.as_ptr(), 48) };
    let kept = |i: usize| (fp..fp + core::mem::size_of::<usize>()).contains(&i);
    assert!(seen.iter().enumerate().all(|(i, &b)| b == 0 || kept(i)));
    // SAFETY: ours, given up; then no use of the cache remains.
    unsafe {
        mm.kmem_cache_free(cache, again.as_ptr()).unwrap();
        mm.kmem_cache_destroy(cache).unwrap();
        assert_eq!(mm.kfree_sensitive(core::ptr::null()), Ok(()));
    }
}

#[test]
// Pure bookkeeping over many allocations: too slow under miri for what
// it adds to the unsafe paths the other tests cover.
#[cfg_attr(miri, ignore)]
fn kmem_cache_zalloc_zeroes_and_bulk_calls_take_and_give_all() {
    let mm = mm();
    let cache = mm
        .kmem_cache_create("dentry", 192, 8, SlabFlags::HWCACHE_ALIGN, None)
        .unwrap();
    let dirty = mm.kmem_cache_alloc(cache, GFP_KERNEL).unwrap();
    // SAFETY: ours; freed, then the zalloc below reuses it.
    unsafe {
        dirty.as_ptr().write_bytes(0xff, 192);
        mm.kmem_cache_free(cache, dirty.as_ptr()).unwrap();
    }
    let zeroed = mm.kmem_cache_zalloc(cache, GFP_KERNEL).unwrap();
    assert_eq!(zeroed, dirty);
    // SAFETY: ours.
    assert!(unsafe { core::slice::from_raw_parts(zeroed.as_ptr(), 192) }
        .iter()
        .all(|&b| b == 0));

    let mut objects = [core::ptr::null_mut(); 100];
    assert_eq!(
        mm.kmem_cache_alloc_bulk(cache, GFP_KERNEL, &mut objects),
        Ok(100)
    );
    let mut distinct = objects.to_vec();
    distinct.sort();
    distinct.dedup();
    assert_eq!(distinct.len(), 100, "100 distinct objects");
    assert_eq!(mm.kmem().kmem_cache_stats(cache).unwrap().active_objs, 101);
    // A bulk free with one object of another cache: the rest are freed,
    // the stranger is refused and left as it was.
    let stranger = mm.kmalloc(192, GFP_KERNEL).unwrap();
    let mut mixed = objects.to_vec();
    mixed.insert(50, stranger.as_ptr());
    // SAFETY: we hold every object in `mixed` and give them up.
    let freed = unsafe { mm.kmem_cache_free_bulk(cache, &mixed) };
    assert!(matches!(
        freed,
        Err(Error::Slab(SlabError::WrongCache { .. }))
    ));
    assert_eq!(mm.kmem().kmem_cache_stats(cache).unwrap().active_objs, 1);
    // SAFETY: the stranger is still ours, and so is `zeroed`.
    unsafe {
        mm.kfree(stranger.as_ptr()).unwrap();
        mm.kmem_cache_free(cache, zeroed.as_ptr()).unwrap();
        mm.kmem_cache_destroy(cache).unwrap();
    }
}

#[test]
fn kmem_cache_of_names_the_cache_or_the_large_block() {
    let mm = mm();
    let small = mm.kmalloc(100, GFP_KERNEL).unwrap();
    let large = mm.kmalloc(KMALLOC_MAX_CACHE_SIZE + 1, GFP_KERNEL).unwrap();
    // SAFETY: we hold both; the frees give them up.
    unsafe {
        let id = mm.kmem_cache_of(small.as_ptr()).unwrap().cache().unwrap();
        assert_eq!(mm.kmem().kmem_cache_info(id).unwrap().name, "kmalloc-128");
        assert_eq!(
            mm.kmem_cache_of(large.as_ptr()),
            Ok(ObjectOwner::Large { order: order(2) })
        );
        let stray = mm.get_free_page(GFP_KERNEL).unwrap();
        let stray_ptr = mm.zones().direct_map().virt_to_ptr(stray);
        assert!(matches!(
            mm.kmem_cache_of(stray_ptr),
            Err(Error::Slab(SlabError::InvalidPointer { .. }))
        ));
        mm.free_page(stray).unwrap();
        mm.kfree(small.as_ptr()).unwrap();
        mm.kfree(large.as_ptr()).unwrap();
    }
}

/// `?` carries every layer's error into one function's `Result<_, Error>`,
/// with the detail intact and a message a kernel developer reads.
#[test]
fn errors_from_every_layer_flow_through_question_mark() {
    fn mixed(mm: &kmm::HostedMemoryManager) -> Result<(), Error> {
        let page = mm.alloc_page(GFP_KERNEL)?; // kmm_api::Error inside
        let obj = mm.kmalloc(64, GFP_KERNEL)?; // SlabError inside
        mm.__free_page(page)?;
        // SAFETY: ours, given up; the second kfree is a double free.
        unsafe {
            mm.kfree(obj.as_ptr())?;
            mm.kfree(obj.as_ptr())?;
        }
        Ok(())
    }
    let mm = mm();
    let e = mixed(&mm).unwrap_err();
    let Error::Slab(SlabError::DoubleFree { cache, .. }) = e else {
        panic!("{e:?}");
    };
    assert_eq!(cache, "kmalloc-64");
    let text = e.to_string();
    assert!(
        text.starts_with("slab: kmalloc-64: double free of object "),
        "{text}"
    );
    assert!(core::error::Error::source(&e).is_some());

    let oom = Error::from(SlabError::Page(api::Error::NoMemory { order: order(3) }));
    assert_eq!(oom, Error::Page(api::Error::NoMemory { order: order(3) }));
    assert_eq!(
        oom.to_string(),
        "page allocator: out of memory: no free block of order 3"
    );
}

#[test]
fn boot_errors_say_what_is_wrong() {
    let refused = MemoryManager::hosted(8 << 20, 9).err();
    assert_eq!(
        refused,
        Some(api::Error::BadCpuCount {
            nr_cpus: 9,
            max: kmm::layout::NR_CPUS
        })
    );
}

#[test]
fn check_names_the_layer_whose_structures_are_broken() {
    let mm = mm();
    mm.check().unwrap();

    // The zones: a careless layer frees a block whose tail it still
    // claims (the free checks the head only).
    let block = mm.alloc_pages(GFP_KERNEL, order(1)).unwrap();
    let tail = block.pfn().add(1);
    let word = api::OwnerWord::new(api::OwnerTag::PageTable, 0).unwrap();
    // SAFETY: we hold the block; nothing reads a page-table word's payload.
    unsafe { api::PageOwner::set_owner(mm.zones(), tail, word) }.unwrap();
    mm.__free_pages(block).unwrap();
    mm.zones().drain_all_pages();
    let Err(report) = mm.check() else {
        panic!("a free frame with a claim went unnoticed");
    };
    assert!(matches!(report.zones, Some(kmm::Invariant::Descriptor { pfn, .. }) if pfn == tail));
    assert_eq!(report.slab, None);
    assert!(report.to_string().contains("[zones]"));
    // Repair, as the next holder of the frame would.
    let mut taken = Vec::new();
    while let Ok(page) = mm.alloc_page(GFP_KERNEL) {
        let found = page.pfn() == tail;
        taken.push(page);
        if found {
            break;
        }
    }
    for page in taken {
        mm.__free_page(page).unwrap();
    }
    mm.zones().drain_all_pages();
    mm.check().unwrap();

    // The slab: a use-after-free write over the free pointer of an object
    // that went back to its slab's free list.
    let cache = mm
        .kmem_cache_create("victim", 64, 0, SlabFlags::empty(), None)
        .unwrap();
    let fp = free_pointer_offset(&mm, cache);
    let keep = mm.kmem_cache_alloc(cache, GFP_KERNEL).unwrap();
    let freed = mm.kmem_cache_alloc(cache, GFP_KERNEL).unwrap();
    // SAFETY: ours, given up.
    unsafe { mm.kmem_cache_free(cache, freed.as_ptr()) }.unwrap();
    mm.kmem().drain_local();
    let slot = freed.as_ptr().wrapping_add(fp).cast::<usize>();
    // SAFETY: the kernel bug under test: a stray write into a free object
    // (host RAM of the machine, alive; the slab is partial, so it stays).
    let saved = unsafe { slot.read_unaligned() };
    // SAFETY: as above.
    unsafe { slot.write_unaligned(saved ^ 0x5a5a_5a5a_5a5a_5a5a) };
    let Err(report) = mm.check() else {
        panic!("a corrupt free list went unnoticed");
    };
    assert_eq!(report.zones, None);
    let broken = report.slab.unwrap();
    assert_eq!(
        (broken.cache, broken.rule),
        ("victim", "a slab's free list is corrupt")
    );
    assert!(!report.is_clean());
    // SAFETY: undo the stray write.
    unsafe { slot.write_unaligned(saved) };
    mm.check().unwrap();
    assert_eq!(
        CheckReport::default().to_string(),
        "every layer's invariants hold"
    );
    // SAFETY: ours, given up; no use of the cache remains.
    unsafe {
        mm.kmem_cache_free(cache, keep.as_ptr()).unwrap();
        mm.kmem_cache_destroy(cache).unwrap();
    }
}

#[test]
// Pure bookkeeping over many allocations: too slow under miri for what
// it adds to the unsafe paths the other tests cover.
#[cfg_attr(miri, ignore)]
fn drop_caches_gives_every_cached_page_back() {
    let mm = mm();
    mm.drop_caches();
    let before = mm.nr_free_pages();
    let mut live = Vec::new();
    for i in 0..if cfg!(miri) { 200 } else { 2000usize } {
        live.push(mm.kmalloc(8 << (i % 10), GFP_KERNEL).unwrap());
    }
    let pages = mm.alloc_pages(GFP_KERNEL, order(2)).unwrap();
    for p in live {
        // SAFETY: ours, given up.
        unsafe { mm.kfree(p.as_ptr()) }.unwrap();
    }
    mm.__free_pages(pages).unwrap();
    assert!(mm.drop_caches() > 0);
    assert_eq!(mm.nr_free_pages(), before);
    mm.check().unwrap();
}

/// `name value` pairs of a `/proc` file (meminfo's `kB` suffix dropped).
fn parse(text: &str) -> std::collections::BTreeMap<String, usize> {
    text.lines()
        .map(|line| {
            let mut words = line.split_whitespace();
            let name = words.next().unwrap().trim_end_matches(':').to_string();
            let value = words.next().unwrap().parse().unwrap();
            assert!(matches!(words.next(), None | Some("kB")), "{line}");
            (name, value)
        })
        .collect()
}

#[test]
// Pure bookkeeping over many allocations: too slow under miri for what
// it adds to the unsafe paths the other tests cover.
#[cfg_attr(miri, ignore)]
fn meminfo_and_vmstat_parse_back_and_add_up_after_a_mixed_workload() {
    let mm = mm();
    let before = mm.vmstat();
    let dentry = mm
        .kmem_cache_create("dentry", 192, 0, SlabFlags::RECLAIM_ACCOUNT, None)
        .unwrap();
    let dentries: Vec<_> = (0..300)
        .map(|_| mm.kmem_cache_alloc(dentry, GFP_KERNEL).unwrap())
        .collect();
    let objects: Vec<_> = (0..300)
        .map(|i| mm.kmalloc(16 << (i % 8), GFP_KERNEL).unwrap())
        .collect();
    let large = mm.kmalloc(40_000, GFP_KERNEL).unwrap();
    let blocks: Vec<_> = (0..5)
        .map(|n| mm.alloc_pages(GFP_KERNEL, order(n)).unwrap())
        .collect();
    let range = (VirtAddr::new(0xf880_0000), VirtAddr::new(0xfffe_efff));
    let table = kmm::x86::X86PageTable::for_zones(mm.zones(), (), range).unwrap();
    table
        .populate(VirtAddr::new(0xf880_0000), VirtAddr::new(0xf8ff_f000))
        .unwrap();
    mm.zones().drain_all_pages();

    let info = mm.meminfo();
    let lines = parse(&info.to_string());
    let kb = |pages: usize| pages * PAGE_SIZE / 1024;
    assert_eq!(lines["MemTotal"], kb(mm.totalram_pages()));
    assert_eq!(lines["MemFree"], kb(mm.nr_free_pages()));
    assert_eq!(
        lines["Slab"],
        lines["SReclaimable"] + lines["SUnreclaim"],
        "Slab is both kinds"
    );
    assert_eq!(lines["KReclaimable"], lines["SReclaimable"]);
    let stats = mm.kmem().kmem_cache_stats(dentry).unwrap();
    let per_slab = mm.kmem().kmem_cache_info(dentry).unwrap().pages_per_slab;
    assert_eq!(
        lines["SReclaimable"],
        kb(stats.num_slabs * per_slab),
        "the one reclaimable cache"
    );
    assert!(
        lines["SUnreclaim"] >= kb(16),
        "the large kmalloc's 16 pages at least"
    );
    // The page directory and two PTE pages (4 MiB each).
    assert_eq!(lines["PageTables"], kb(table.table_pages()));
    assert_eq!(table.table_pages(), 3);
    assert_eq!(
        lines["VmallocTotal"],
        (mm.layout().vmalloc_end().as_usize() - mm.layout().vmalloc_start().as_usize()) / 1024
    );
    assert!(
        !lines.contains_key("HighTotal"),
        "no highmem lines on 64-bit"
    );
    assert_eq!((lines["SwapTotal"], lines["Cached"]), (0, 0));
    assert!(lines["Percpu"] > 0);
    // Linux's si_mem_available, from the parts.
    let wmark_low: usize = mm
        .zones()
        .zone_report()
        .zones()
        .iter()
        .map(|z| z.watermarks.low)
        .sum();
    let reclaimable = info.slab_reclaimable;
    let expected = mm
        .nr_free_pages()
        .saturating_sub(mm.zones().totalreserve_pages())
        + reclaimable
        - (reclaimable / 2).min(wmark_low);
    assert_eq!(lines["MemAvailable"], kb(expected));

    let after = mm.vmstat();
    let stat = parse(&after.to_string());
    assert_eq!(stat["nr_free_pages"], mm.nr_free_pages());
    assert_eq!(stat["nr_slab_reclaimable"], info.slab_reclaimable);
    assert_eq!(stat["nr_slab_unreclaimable"], info.slab_unreclaimable);
    let pgalloc: usize = stat
        .iter()
        .filter(|(name, _)| name.starts_with("pgalloc_") && *name != "pgalloc_fail")
        .map(|(_, n)| n)
        .sum();
    assert_eq!(pgalloc, after.pgalloc_total());
    assert!(after.pgalloc_total() - before.pgalloc_total() >= 31 + 16 + 3);

    drop(table);
    for block in blocks {
        mm.__free_pages(block).unwrap();
    }
    // SAFETY: ours, given up; then nothing uses the cache.
    unsafe {
        mm.kfree(large.as_ptr()).unwrap();
        for p in objects {
            mm.kfree(p.as_ptr()).unwrap();
        }
        mm.kmem_cache_free_bulk(
            dentry,
            &dentries.iter().map(|p| p.as_ptr()).collect::<Vec<_>>(),
        )
        .unwrap();
        mm.kmem_cache_destroy(dentry).unwrap();
    }
    mm.drop_caches();
    let empty = mm.meminfo();
    assert_eq!((empty.page_tables, empty.slab_reclaimable), (0, 0));
    // Both snapshots were taken with the per-CPU lists drained: what the
    // free lists gained is what was freed less what was allocated since.
    let freed = mm.vmstat();
    assert_eq!(
        freed.nr_free_pages() - after.nr_free_pages(),
        (freed.pgfree - after.pgfree) - (freed.pgalloc_total() - after.pgalloc_total())
    );
}

#[cfg(feature = "sim")]
#[test]
fn meminfo_on_i386_has_the_highmem_lines() {
    let mm = MemoryManager::sim(kmm::sim::MachineConfig::default()).unwrap();
    let lines = parse(&mm.meminfo().to_string());
    assert_eq!(lines["HighTotal"], 294_912 * 4);
    assert_eq!(lines["LowTotal"] + lines["HighTotal"], lines["MemTotal"]);
    assert_eq!(lines["LowFree"] + lines["HighFree"], lines["MemFree"]);
}

#[test]
// Pure bookkeeping over many allocations: too slow under miri for what
// it adds to the unsafe paths the other tests cover.
#[cfg_attr(miri, ignore)]
fn the_vm_sysctls_round_trip_and_refuse_what_linux_refuses() {
    let mm = mm();
    let min = mm.min_free_kbytes();
    let ratio = mm.lowmem_reserve_ratio();
    let wmarks = |mm: &kmm::HostedMemoryManager| {
        mm.zones()
            .zone_report()
            .zones()
            .iter()
            .map(|z| z.watermarks)
            .collect::<Vec<_>>()
    };
    let marks = wmarks(&mm);
    assert!(matches!(
        mm.set_watermark_scale_factor(3001),
        Err(Error::Sysctl(kmm::SysctlError::OutOfRange {
            name: "watermark_scale_factor",
            value: 3001,
            ..
        }))
    ));
    assert_eq!(wmarks(&mm), marks, "a refused write changes nothing");
    mm.set_watermark_scale_factor(100).unwrap();
    assert_eq!(mm.watermark_scale_factor(), 100);
    let wider = wmarks(&mm);
    assert!(wider
        .iter()
        .zip(&marks)
        .all(|(w, m)| w.min == m.min && w.high - w.low >= m.high - m.low));
    mm.set_min_free_kbytes(min * 2).unwrap();
    assert_eq!(mm.min_free_kbytes(), min * 2);
    let mut doubled = ratio;
    doubled[0] *= 2;
    mm.set_lowmem_reserve_ratio(&doubled).unwrap();
    assert_eq!(mm.lowmem_reserve_ratio(), doubled);
    mm.check().unwrap();
}

#[test]
fn kmem_cache_validate_finds_a_write_after_free_in_a_poisoned_cache() {
    let mm = mm();
    let cache = mm
        .kmem_cache_create("poisoned", 128, 0, SlabFlags::POISON, None)
        .unwrap();
    let keep = mm.kmem_cache_alloc(cache, GFP_KERNEL).unwrap();
    let victim = mm.kmem_cache_alloc(cache, GFP_KERNEL).unwrap();
    // SAFETY: ours, given up.
    unsafe { mm.kmem_cache_free(cache, victim.as_ptr()) }.unwrap();
    assert_eq!(mm.kmem_cache_validate(cache), Ok(0));
    let fp = free_pointer_offset(&mm, cache);
    let byte = if fp == 0 { 64 } else { 0 };
    // SAFETY: the bug under test, a write after free into the slab's
    // memory (host RAM of the machine, alive; `keep` keeps the slab).
    unsafe { victim.as_ptr().add(byte).write(0x42) };
    // Linux counts a damaged object twice, the report and the repair (what
    // lib/slub_kunit.c expects).
    assert_eq!(mm.kmem_cache_validate(cache), Ok(2), "found");
    let report = mm.kmem().kmem_cache_last_report(cache).unwrap().unwrap();
    assert_eq!((report.offset, report.found), (byte, 0x42));
    assert_eq!(mm.kmem_cache_validate(cache), Ok(0), "and repaired");
    // SAFETY: ours, given up; nothing else uses the cache.
    unsafe {
        mm.kmem_cache_free(cache, keep.as_ptr()).unwrap();
        mm.kmem_cache_destroy(cache).unwrap();
    }
}
