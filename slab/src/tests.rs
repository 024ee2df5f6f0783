//! Unit tests, one per rule of the slab layer and kmalloc.

extern crate std;

use crate::{testing::HostMachine, *};
use core::ptr::NonNull;
use kmm_api::{__GFP_ZERO, GFP_ATOMIC, GFP_DMA, GFP_HIGHUSER, GFP_KERNEL, PAGE_SIZE};
use std::{string::ToString, vec::Vec};

fn frames() -> usize {
    if cfg!(miri) {
        160
    } else {
        2048
    }
}

fn kmem(m: &HostMachine) -> Kmem<&HostMachine> {
    Kmem::new(m, KmemConfig::default()).unwrap()
}

fn class_of(k: &Kmem<&HostMachine>, p: NonNull<u8>) -> &'static str {
    let id = k.kmem_cache_of(p.as_ptr()).unwrap();
    k.kmem_cache_info(id).unwrap().name
}

#[test]
fn kmalloc_96_uses_kmalloc_96_and_100_uses_kmalloc_128() {
    let m = HostMachine::new(frames(), 1);
    let k = kmem(&m);
    let cases = [
        (96, "kmalloc-96"),
        (100, "kmalloc-128"),
        (150, "kmalloc-192"),
        (1, "kmalloc-8"),
    ];
    for (size, name) in cases {
        let p = k.kmalloc(size, GFP_KERNEL).unwrap();
        assert_eq!(class_of(&k, p), name, "kmalloc({size})");
        k.kfree(p.as_ptr()).unwrap();
    }
}

#[test]
fn gfp_dma_requests_use_the_dma_kmalloc_caches() {
    let m = HostMachine::new(frames(), 1);
    let k = kmem(&m);
    let p = k.kmalloc(100, GFP_KERNEL | GFP_DMA).unwrap();
    assert_eq!(class_of(&k, p), "dma-kmalloc-128");
    k.kfree(p.as_ptr()).unwrap();
}

#[test]
fn every_class_honours_its_natural_alignment() {
    let m = HostMachine::new(frames(), 1);
    let k = kmem(&m);
    for &class in kmalloc_classes() {
        let natural = class & class.wrapping_neg();
        let p = k.kmalloc(class, GFP_KERNEL).unwrap();
        assert_eq!(
            p.as_ptr() as usize % natural.min(PAGE_SIZE),
            0,
            "kmalloc-{class}"
        );
        k.kfree(p.as_ptr()).unwrap();
    }
    let p = k.kmalloc_aligned(80, 64, GFP_KERNEL).unwrap();
    assert_eq!(p.as_ptr() as usize % 64, 0);
    k.kfree(p.as_ptr()).unwrap();
}

#[test]
fn kcalloc_overflow_is_an_error_and_allocates_nothing() {
    let m = HostMachine::new(frames(), 1);
    let k = kmem(&m);
    let before = m.frames_in_use();
    let err = k.kcalloc(usize::MAX / 2, 3, GFP_KERNEL).unwrap_err();
    assert_eq!(
        err,
        SlabError::Overflow {
            n: usize::MAX / 2,
            size: 3
        }
    );
    assert_eq!(m.frames_in_use(), before);
}

#[test]
fn kcalloc_and_kzalloc_return_zeroed_memory_even_after_reuse() {
    let m = HostMachine::new(frames(), 1);
    let k = kmem(&m);
    let p = k.kmalloc(64, GFP_KERNEL).unwrap();
    // SAFETY: 64 bytes were allocated at `p`.
    unsafe { p.as_ptr().write_bytes(0xee, 64) };
    k.kfree(p.as_ptr()).unwrap();
    let q = k.kcalloc(8, 8, GFP_KERNEL).unwrap();
    // SAFETY: 64 bytes were allocated at `q`.
    let bytes = unsafe { core::slice::from_raw_parts(q.as_ptr(), 64) };
    assert!(bytes.iter().all(|&b| b == 0));
    k.kfree(q.as_ptr()).unwrap();
}

#[test]
fn krealloc_stays_in_place_while_the_class_fits_and_copies_when_it_moves() {
    let m = HostMachine::new(frames(), 1);
    let k = kmem(&m);
    let p = k.kmalloc(100, GFP_KERNEL).unwrap();
    // SAFETY: 100 bytes were allocated at `p`.
    unsafe { (0..100u8).for_each(|i| p.as_ptr().add(usize::from(i)).write(i)) };
    let same = k.krealloc(p.as_ptr(), 128, GFP_KERNEL).unwrap();
    assert_eq!(same, p);
    let moved = k.krealloc(p.as_ptr(), 300, GFP_KERNEL).unwrap();
    assert_ne!(moved, p);
    assert_eq!(k.ksize(moved.as_ptr()).unwrap(), 512);
    // SAFETY: 300 bytes were allocated at `moved`, the first 100 copied.
    let bytes = unsafe { core::slice::from_raw_parts(moved.as_ptr(), 100) };
    assert!(bytes.iter().enumerate().all(|(i, &b)| b == i as u8));
    assert!(matches!(
        k.kfree(p.as_ptr()),
        Err(SlabError::DoubleFree { .. })
    ));
    k.kfree(moved.as_ptr()).unwrap();
}

#[test]
fn ksize_reports_the_class_size_and_the_pages_of_large_allocations() {
    let m = HostMachine::new(frames(), 1);
    let k = kmem(&m);
    let p = k.kmalloc(33, GFP_KERNEL).unwrap();
    assert_eq!(k.ksize(p.as_ptr()).unwrap(), 64);
    let big = k.kmalloc(3 * PAGE_SIZE, GFP_KERNEL).unwrap();
    assert_eq!(k.ksize(big.as_ptr()).unwrap(), 4 * PAGE_SIZE);
    k.kfree(p.as_ptr()).unwrap();
    k.kfree(big.as_ptr()).unwrap();
}

#[test]
fn kfree_of_null_and_zero_size_ptr_is_a_no_op() {
    let m = HostMachine::new(frames(), 1);
    let k = kmem(&m);
    assert_eq!(k.kmalloc(0, GFP_KERNEL).unwrap(), ZERO_SIZE_PTR);
    assert_eq!(k.kfree(core::ptr::null()), Ok(()));
    assert_eq!(k.kfree(ZERO_SIZE_PTR.as_ptr()), Ok(()));
    assert_eq!(k.ksize(ZERO_SIZE_PTR.as_ptr()), Ok(0));
}

#[test]
fn large_kmalloc_takes_whole_pages_and_kfree_returns_them() {
    let m = HostMachine::new(frames(), 1);
    let k = kmem(&m);
    let before = m.frames_in_use();
    let p = k.kmalloc(KMALLOC_MAX_CACHE_SIZE + 1, GFP_KERNEL).unwrap();
    assert_eq!(p.as_ptr() as usize % PAGE_SIZE, 0);
    assert_eq!(m.frames_in_use(), before + 4);
    // An address inside the block is not an allocation.
    let inside = p.as_ptr().wrapping_add(PAGE_SIZE);
    assert!(matches!(
        k.kfree(inside),
        Err(SlabError::InvalidPointer { .. })
    ));
    k.kfree(p.as_ptr()).unwrap();
    assert_eq!(m.frames_in_use(), before);
}

#[test]
fn kmalloc_above_kmalloc_max_size_is_an_error() {
    let m = HostMachine::new(frames(), 1);
    let k = kmem(&m);
    let err = k.kmalloc(KMALLOC_MAX_SIZE + 1, GFP_KERNEL).unwrap_err();
    assert_eq!(
        err,
        SlabError::SizeTooLarge {
            bytes: KMALLOC_MAX_SIZE + 1,
            max: KMALLOC_MAX_SIZE
        }
    );
    assert!(k.kmalloc(usize::MAX, GFP_KERNEL).is_err());
}

#[test]
fn highmem_gfp_is_refused_because_slab_memory_needs_the_direct_map() {
    let m = HostMachine::new(frames(), 1);
    let k = kmem(&m);
    assert!(matches!(
        k.kmalloc(64, GFP_HIGHUSER),
        Err(SlabError::InvalidGfp { .. })
    ));
}

#[test]
fn constructor_runs_when_a_slab_is_populated_not_on_every_allocation() {
    fn ctor(p: NonNull<u8>) {
        // SAFETY: the constructor is given a whole 32-byte object.
        unsafe { p.as_ptr().cast::<u64>().write(0xc0ffee) };
    }
    let m = HostMachine::new(frames(), 1);
    let k = kmem(&m);
    let id = k
        .kmem_cache_create("ctor_cache", 32, 8, SlabFlags::empty(), Some(ctor))
        .unwrap();
    let p = k.kmem_cache_alloc(id, GFP_KERNEL).unwrap();
    // SAFETY: a live 32-byte object.
    unsafe {
        assert_eq!(p.as_ptr().cast::<u64>().read(), 0xc0ffee);
        p.as_ptr().cast::<u64>().write(7);
    }
    k.kmem_cache_free(id, p.as_ptr()).unwrap();
    let q = k.kmem_cache_alloc(id, GFP_KERNEL).unwrap();
    assert_eq!(q, p, "LIFO reuse of the hot object");
    // SAFETY: a live 32-byte object.
    let word = unsafe { q.as_ptr().cast::<u64>().read() };
    assert_eq!(word, 7, "no constructor on reuse");
    k.kmem_cache_free(id, q.as_ptr()).unwrap();
    k.kmem_cache_destroy(id).unwrap();
}

#[test]
fn shrink_returns_every_empty_slab_and_counts_its_pages() {
    let m = HostMachine::new(frames(), 1);
    let k = kmem(&m);
    let id = k
        .kmem_cache_create("shrinkme", 256, 0, SlabFlags::empty(), None)
        .unwrap();
    let before = m.frames_in_use();
    let objs: Vec<_> = (0..100)
        .map(|_| k.kmem_cache_alloc(id, GFP_KERNEL).unwrap())
        .collect();
    let grown = m.frames_in_use() - before;
    assert!(grown > 0);
    for p in objs {
        k.kmem_cache_free(id, p.as_ptr()).unwrap();
    }
    let returned_early = before + grown - m.frames_in_use();
    assert_eq!(k.kmem_cache_shrink(id).unwrap() + returned_early, grown);
    assert_eq!(m.frames_in_use(), before);
    assert_eq!(k.kmem_cache_stats(id).unwrap().num_slabs, 0);
}

#[test]
fn destroy_refuses_with_the_live_count_and_succeeds_once_freed() {
    let m = HostMachine::new(frames(), 1);
    let k = kmem(&m);
    let before = m.frames_in_use();
    let id = k
        .kmem_cache_create("busy", 48, 0, SlabFlags::empty(), None)
        .unwrap();
    let a = k.kmem_cache_alloc(id, GFP_KERNEL).unwrap();
    let b = k.kmem_cache_alloc(id, GFP_KERNEL).unwrap();
    assert_eq!(
        k.kmem_cache_destroy(id),
        Err(SlabError::CacheBusy {
            cache: "busy",
            live: 2
        })
    );
    k.kmem_cache_free(id, a.as_ptr()).unwrap();
    k.kmem_cache_free(id, b.as_ptr()).unwrap();
    k.kmem_cache_destroy(id).unwrap();
    assert_eq!(m.frames_in_use(), before, "slabs and descriptor returned");
    assert_eq!(
        k.kmem_cache_alloc(id, GFP_KERNEL),
        Err(SlabError::NoSuchCache)
    );
}

#[test]
fn double_free_is_refused_and_changes_nothing() {
    let m = HostMachine::new(frames(), 1);
    let k = kmem(&m);
    let p = k.kmalloc(64, GFP_KERNEL).unwrap();
    let q = k.kmalloc(64, GFP_KERNEL).unwrap();
    k.kfree(p.as_ptr()).unwrap();
    let id = k.kmalloc_slab(64, GFP_KERNEL).unwrap();
    let stats = k.kmem_cache_stats(id).unwrap();
    assert!(matches!(
        k.kfree(p.as_ptr()),
        Err(SlabError::DoubleFree {
            cache: "kmalloc-64",
            ..
        })
    ));
    assert_eq!(k.kmem_cache_stats(id).unwrap(), stats);
    // The object is handed out once, not twice.
    let r = k.kmalloc(64, GFP_KERNEL).unwrap();
    let s = k.kmalloc(64, GFP_KERNEL).unwrap();
    assert!(r != s && r != q && s != q);
    for x in [q, r, s] {
        k.kfree(x.as_ptr()).unwrap();
    }
    k.check_invariants().unwrap();
}

#[test]
fn a_pointer_inside_an_object_is_refused_with_its_offset() {
    let m = HostMachine::new(frames(), 1);
    let k = kmem(&m);
    let p = k.kmalloc(96, GFP_KERNEL).unwrap();
    let err = k.kfree(p.as_ptr().wrapping_add(40)).unwrap_err();
    assert!(matches!(
        err,
        SlabError::NotObjectStart {
            cache: "kmalloc-96",
            offset: 40,
            ..
        }
    ));
    assert!(err.to_string().contains("40 bytes into an object"));
    k.kfree(p.as_ptr()).unwrap();
}

#[test]
fn a_pointer_no_slab_owns_is_refused() {
    let m = HostMachine::new(frames(), 1);
    let k = kmem(&m);
    let local = 5u64;
    let err = k.kfree(core::ptr::from_ref(&local).cast()).unwrap_err();
    assert!(matches!(err, SlabError::InvalidPointer { .. }));
    // A free frame of the machine is not an allocation either.
    let pfn = kmm_api::FrameAllocator::alloc_frames(&m, GFP_KERNEL, kmm_api::Order::ZERO).unwrap();
    let page = kmm_api::DirectMap::pfn_to_ptr(&m, pfn).unwrap();
    kmm_api::FrameAllocator::free_frames(&m, pfn, kmm_api::Order::ZERO).unwrap();
    assert!(matches!(
        k.kfree(page.as_ptr()),
        Err(SlabError::InvalidPointer { .. })
    ));
}

#[test]
fn kmem_cache_free_to_the_wrong_cache_is_refused() {
    let m = HostMachine::new(frames(), 1);
    let k = kmem(&m);
    let a = k
        .kmem_cache_create("cache_a", 64, 0, SlabFlags::empty(), None)
        .unwrap();
    let b = k
        .kmem_cache_create("cache_b", 64, 0, SlabFlags::empty(), None)
        .unwrap();
    let p = k.kmem_cache_alloc(a, GFP_KERNEL).unwrap();
    let err = k.kmem_cache_free(b, p.as_ptr()).unwrap_err();
    assert_eq!(
        err,
        SlabError::WrongCache {
            addr: kmm_api::VirtAddr::new(p.as_ptr() as usize),
            expected: "cache_b",
            found: "cache_a"
        }
    );
    k.kmem_cache_free(a, p.as_ptr()).unwrap();
}

#[test]
fn a_failing_page_allocator_leaves_every_structure_unchanged() {
    let m = HostMachine::new(frames(), 1);
    let k = kmem(&m);
    let id = k
        .kmem_cache_create("starved", 1024, 0, SlabFlags::empty(), None)
        .unwrap();
    m.fail_after(0);
    assert!(matches!(
        k.kmem_cache_alloc(id, GFP_ATOMIC),
        Err(SlabError::Page(_))
    ));
    assert!(matches!(
        k.kmalloc(64 << 10, GFP_ATOMIC),
        Err(SlabError::Page(_))
    ));
    assert_eq!(k.kmem_cache_stats(id).unwrap(), CacheStats::default());
    m.fail_after(usize::MAX);
    k.check_invariants().unwrap();
}

#[test]
fn free_pointers_in_objects_are_encoded_with_the_cache_secret() {
    let m = HostMachine::new(frames(), 1);
    let k = kmem(&m);
    let id = k
        .kmem_cache_create("hardened", 64, 0, SlabFlags::POISON, None)
        .unwrap();
    let info = k.kmem_cache_info(id).unwrap();
    let p = k.kmem_cache_alloc(id, GFP_KERNEL).unwrap();
    let q = k.kmem_cache_alloc(id, GFP_KERNEL).unwrap();
    k.kmem_cache_free(id, p.as_ptr()).unwrap();
    k.kmem_cache_free(id, q.as_ptr()).unwrap();
    // SAFETY: the free pointer word lies inside q's slot.
    let stored = unsafe {
        q.as_ptr()
            .add(info.free_pointer_offset)
            .cast::<usize>()
            .read()
    };
    assert_ne!(
        stored,
        p.as_ptr() as usize,
        "a raw pointer would be steerable"
    );
    assert_ne!(stored, 0);
}

#[test]
fn remote_frees_on_another_cpu_are_correct() {
    let m = HostMachine::new(frames(), 2);
    let k = kmem(&m);
    let n = if cfg!(miri) { 20 } else { 2000 };
    /// Objects handed to another thread (the allocator is `Sync`).
    struct Objects(Vec<NonNull<u8>>);
    // SAFETY: the objects are plain slab memory owned by this test.
    unsafe impl Send for Objects {}
    let objs = Objects((0..n).map(|_| k.kmalloc(64, GFP_KERNEL).unwrap()).collect());
    let k = &k;
    std::thread::scope(|s| {
        s.spawn(move || {
            let objs = objs;
            for p in objs.0 {
                k.kfree(p.as_ptr()).unwrap();
            }
            k.drain_local();
        });
    });
    let id = k.kmalloc_slab(64, GFP_KERNEL).unwrap();
    assert_eq!(k.kmem_cache_stats(id).unwrap().active_objs, 0);
    k.check_invariants().unwrap();
}

#[test]
fn slabinfo_prints_the_version_2_1_header_and_one_line_per_cache() {
    let m = HostMachine::new(frames(), 1);
    let k = kmem(&m);
    let p = k.kmalloc(100, GFP_KERNEL).unwrap();
    let text = SlabInfo(&k).to_string();
    let mut lines = text.lines();
    assert_eq!(lines.next(), Some("slabinfo - version: 2.1"));
    assert!(lines
        .next()
        .unwrap()
        .starts_with("# name            <active_objs> <num_objs> <objsize>"));
    let line = text
        .lines()
        .find(|l| l.starts_with("kmalloc-128 "))
        .unwrap();
    let fields: Vec<&str> = line.split_whitespace().collect();
    assert_eq!(fields[1], "1", "one active object");
    assert_eq!(fields[3], "128");
    assert_eq!(text.lines().count(), 2 + 26);
    k.kfree(p.as_ptr()).unwrap();
}

#[test]
fn zalloc_from_a_cache_zeroes_the_object() {
    let m = HostMachine::new(frames(), 1);
    let k = kmem(&m);
    let p = k.kmalloc(200, GFP_KERNEL | __GFP_ZERO).unwrap();
    // SAFETY: 200 bytes allocated.
    assert!(unsafe { core::slice::from_raw_parts(p.as_ptr(), 200) }
        .iter()
        .all(|&b| b == 0));
    k.kfree(p.as_ptr()).unwrap();
}

#[test]
fn churn_keeps_every_invariant_and_returns_every_page() {
    let m = HostMachine::new(frames(), 1);
    let k = kmem(&m);
    let base = m.frames_in_use();
    let rounds = if cfg!(miri) { 60 } else { 5000 };
    let mut live = Vec::new();
    let mut x = 12345u64;
    for _ in 0..rounds {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        if x % 3 == 0 && !live.is_empty() {
            let p: NonNull<u8> = live.swap_remove((x as usize / 3) % live.len());
            k.kfree(p.as_ptr()).unwrap();
        } else {
            let size = 1 + (x as usize >> 8) % 3000;
            live.push(k.kmalloc(size, GFP_KERNEL).unwrap());
        }
    }
    k.check_invariants().unwrap();
    for p in live {
        k.kfree(p.as_ptr()).unwrap();
    }
    k.shrink_all();
    assert_eq!(m.frames_in_use(), base);
}

#[test]
fn destroy_refuses_while_another_cpu_caches_objects_until_it_drains() {
    let m = HostMachine::new(frames(), 2);
    let k = kmem(&m);
    HostMachine::set_thread_cpu(0);
    let id = k
        .kmem_cache_create("percpu", 64, 0, SlabFlags::empty(), None)
        .unwrap();
    let (to_main, from_worker) = std::sync::mpsc::channel();
    let (to_worker, from_main) = std::sync::mpsc::channel::<()>();
    let k = &k;
    std::thread::scope(|s| {
        s.spawn(move || {
            HostMachine::set_thread_cpu(1);
            let p = k.kmem_cache_alloc(id, GFP_KERNEL).unwrap();
            k.kmem_cache_free(id, p.as_ptr()).unwrap();
            to_main.send(()).unwrap();
            from_main.recv().unwrap();
            k.drain_local();
        });
        from_worker.recv().unwrap();
        let err = k.kmem_cache_destroy(id).unwrap_err();
        assert!(matches!(
            err,
            SlabError::CachedElsewhere {
                cache: "percpu",
                ..
            }
        ));
        to_worker.send(()).unwrap();
    });
    k.kmem_cache_destroy(id).unwrap();
}

#[test]
fn an_off_slab_header_is_the_allocators_own_and_kfree_refuses_it() {
    use kmm_api::{DirectMap, PageOwner, VirtAddr};
    let m = HostMachine::new(frames(), 1);
    let k = kmem(&m);
    let p = k.kmalloc(5000, GFP_KERNEL).unwrap();
    assert!(
        k.kmem_cache_info(k.kmem_cache_of(p.as_ptr()).unwrap())
            .unwrap()
            .off_slab
    );
    let word = m.owner(m.ptr_to_pfn(p.as_ptr()).unwrap()).unwrap();
    let header = m.virt_to_ptr(VirtAddr::new(word & !7));
    assert!(matches!(
        k.kfree(header),
        Err(SlabError::InvalidPointer { .. })
    ));
    k.kfree(p.as_ptr()).unwrap();
    k.check_invariants().unwrap();
}

#[test]
fn a_slab_header_is_eleven_words_plus_a_state_byte_per_object() {
    // The figure BENCHMARKS.md and the crate documentation give.
    assert_eq!(slab_header_bytes(), 11 * core::mem::size_of::<usize>());
    let m = HostMachine::new(frames(), 1);
    let k = kmem(&m);
    let info = k
        .kmem_cache_info(k.kmalloc_slab(64, GFP_KERNEL).unwrap())
        .unwrap();
    assert_eq!(info.objects_per_slab, 61);
    assert!(!info.off_slab);
}

#[test]
fn a_failed_boot_returns_every_page_it_took() {
    let m = HostMachine::new(frames(), 1);
    m.fail_after(7);
    assert!(matches!(
        Kmem::new(&m, KmemConfig::default()),
        Err(SlabError::Page(_))
    ));
    assert_eq!(m.frames_in_use(), 0);
}

#[test]
fn ksize_of_a_freed_object_is_a_double_free_error() {
    let m = HostMachine::new(frames(), 1);
    let k = kmem(&m);
    let p = k.kmalloc(40, GFP_KERNEL).unwrap();
    k.kfree(p.as_ptr()).unwrap();
    assert!(matches!(
        k.ksize(p.as_ptr()),
        Err(SlabError::DoubleFree { .. })
    ));
}
