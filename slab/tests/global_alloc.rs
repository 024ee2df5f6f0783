//! `KmallocGlobal` as the process's `#[global_allocator]`: alloc
//! collections run on kmalloc over the host machine once it is built.

use kmm_api::GFP_KERNEL;
use kmm_slab::{testing::HostMachine, KmallocGlobal, Kmem, KmemConfig};
use std::{
    alloc::{GlobalAlloc, Layout, System},
    collections::BTreeMap,
    sync::atomic::{AtomicPtr, Ordering},
    sync::Once,
};

type Machine = &'static HostMachine;

static KMEM: AtomicPtr<Kmem<Machine>> = AtomicPtr::new(std::ptr::null_mut());
static MACHINE: AtomicPtr<HostMachine> = AtomicPtr::new(std::ptr::null_mut());
static INIT: Once = Once::new();

fn kmem() -> Option<&'static Kmem<Machine>> {
    // SAFETY: published once, never freed.
    unsafe { KMEM.load(Ordering::Acquire).as_ref() }
}

fn machine() -> Option<&'static HostMachine> {
    // SAFETY: published once, never freed.
    unsafe { MACHINE.load(Ordering::Acquire).as_ref() }
}

static KMALLOC: KmallocGlobal<Machine> = KmallocGlobal::new(kmem);

/// Before the allocator exists (the test harness starts first), requests
/// go to the system allocator; afterwards every request goes to kmalloc,
/// and each pointer is returned to whichever allocator made it.
struct Boot;

// SAFETY: each pointer is freed by the allocator that produced it, told
// apart by whether it lies in the machine's memory.
unsafe impl GlobalAlloc for Boot {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        // SAFETY: forwarded contract.
        unsafe {
            match kmem() {
                Some(_) => KMALLOC.alloc(l),
                None => System.alloc(l),
            }
        }
    }
    unsafe fn alloc_zeroed(&self, l: Layout) -> *mut u8 {
        // SAFETY: forwarded contract.
        unsafe {
            match kmem() {
                Some(_) => KMALLOC.alloc_zeroed(l),
                None => System.alloc_zeroed(l),
            }
        }
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        // SAFETY: forwarded contract; `p` goes back to its maker.
        unsafe {
            match machine() {
                Some(m) if m.contains(p) => KMALLOC.dealloc(p, l),
                _ => System.dealloc(p, l),
            }
        }
    }
    unsafe fn realloc(&self, p: *mut u8, l: Layout, n: usize) -> *mut u8 {
        // SAFETY: forwarded contract; `p` is resized by its maker.
        unsafe {
            match machine() {
                Some(m) if m.contains(p) => KMALLOC.realloc(p, l, n),
                _ => System.realloc(p, l, n),
            }
        }
    }
}

#[global_allocator]
static GLOBAL: Boot = Boot;

fn boot() -> &'static HostMachine {
    INIT.call_once(|| {
        let m: &'static HostMachine = Box::leak(Box::new(HostMachine::new(
            if cfg!(miri) { 1024 } else { 4096 },
            4,
        )));
        let config = KmemConfig {
            fine_classes: true,
            ..KmemConfig::default()
        };
        let k = Box::leak(Box::new(Kmem::new(m, config).unwrap()));
        MACHINE.store(std::ptr::from_ref(m).cast_mut(), Ordering::Release);
        KMEM.store(k, Ordering::Release);
    });
    machine().unwrap()
}

#[test]
fn vec_btreemap_and_string_run_on_kmalloc() {
    let m = boot();
    // Under miri a tenth: every allocation of the test harness runs on
    // kmalloc too.
    let n: u64 = if cfg!(miri) { 1_000 } else { 10_000 };
    let mut v: Vec<u64> = Vec::new();
    for i in 0..n {
        v.push(i);
    }
    assert!(
        m.contains(v.as_ptr().cast()),
        "Vec storage comes from kmalloc pages"
    );
    assert_eq!(v.iter().sum::<u64>(), n * (n - 1) / 2);
    let mut map = BTreeMap::new();
    for i in 0..n as u32 / 5 {
        map.insert(i, format!("value {i}"));
    }
    assert_eq!(map[&123], "value 123");
    let mut s = String::new();
    for _ in 0..1000 {
        s.push_str("kmalloc ");
    }
    assert!(m.contains(s.as_ptr()));
    assert_eq!(s.len(), 8000);
}

#[test]
fn over_aligned_layouts_up_to_a_page_are_honoured() {
    boot();
    for align in [16, 32, 64, 128, 1024, 4096] {
        for size in [1, 24, 80, 100, 5000] {
            let l = Layout::from_size_align(size, align).unwrap();
            // SAFETY: non-zero size; freed below with the same layout.
            unsafe {
                let p = GLOBAL.alloc(l);
                assert!(!p.is_null());
                assert_eq!(p as usize % align, 0, "size {size} align {align}");
                let q = GLOBAL.realloc(p, l, size * 3);
                assert_eq!(q as usize % align, 0, "realloc keeps align {align}");
                GLOBAL.dealloc(q, Layout::from_size_align(size * 3, align).unwrap());
            }
        }
    }
}

#[test]
fn alloc_zeroed_is_zero_and_large_requests_take_pages() {
    let m = boot();
    let l = Layout::from_size_align(64 << 10, 8).unwrap();
    // SAFETY: non-zero size; freed below. `ksize` is given `p` while this
    // thread holds it (no other thread ever sees it), as its pointer
    // contract asks.
    unsafe {
        let p = GLOBAL.alloc_zeroed(l);
        assert!(m.contains(p));
        assert!(std::slice::from_raw_parts(p, l.size())
            .iter()
            .all(|&b| b == 0));
        assert_eq!(kmem().unwrap().ksize(p).unwrap(), 64 << 10);
        GLOBAL.dealloc(p, l);
    }
    let p = kmem().unwrap().kmalloc(10, GFP_KERNEL).unwrap();
    // SAFETY: this thread holds `p` (no other thread ever sees it) and
    // gives it up.
    unsafe { kmem().unwrap().kfree(p.as_ptr()) }.unwrap();
}

#[test]
fn requests_above_256_bytes_take_the_smallest_fine_class_that_holds_them() {
    boot();
    let k = kmem().unwrap();
    // (size, align, usable): a fine class, kmalloc's power of two, or, where
    // the fine class's objects are not aligned enough, kmalloc's class.
    let cases = [
        (200, 8, 256),
        (257, 8, 320),
        (632, 8, 640),
        (641, 16, 768),
        (1000, 8, 1024),
        (5000, 8, 5120),
        (8192, 8, 8192),
        (320, 128, 512),
        (640, 256, 1024),
    ];
    for (size, align, usable) in cases {
        let l = Layout::from_size_align(size, align).unwrap();
        // SAFETY: non-zero size; `ksize` is given `p` while this thread
        // holds it; freed once with its layout.
        unsafe {
            let p = GLOBAL.alloc(l);
            assert_eq!(p as usize % align, 0);
            assert_eq!(
                k.ksize(p).unwrap(),
                usable,
                "{size} bytes aligned to {align}"
            );
            GLOBAL.dealloc(p, l);
        }
    }
}

#[test]
fn realloc_keeps_a_block_less_than_twice_the_new_size_and_moves_the_rest() {
    boot();
    let k = kmem().unwrap();
    let l = Layout::from_size_align(600, 8).unwrap();
    // SAFETY: non-zero sizes; each block is resized or freed once with the
    // layout it has, and `ksize` is given blocks this thread holds.
    unsafe {
        let p = GLOBAL.alloc(l);
        p.write_bytes(7, 600);
        let same = GLOBAL.realloc(p, l, 640);
        assert_eq!(same, p, "600 -> 640 fits kmalloc-fine-640");
        let shrunk = GLOBAL.realloc(same, Layout::from_size_align(640, 8).unwrap(), 100);
        assert_ne!(shrunk, same, "640 -> 100 moves to a class of its size");
        assert_eq!(k.ksize(shrunk).unwrap(), 128);
        assert!(std::slice::from_raw_parts(shrunk, 100)
            .iter()
            .all(|&b| b == 7));
        let grown = GLOBAL.realloc(shrunk, Layout::from_size_align(100, 8).unwrap(), 3000);
        assert_eq!(k.ksize(grown).unwrap(), 3072);
        assert!(std::slice::from_raw_parts(grown, 100)
            .iter()
            .all(|&b| b == 7));
        GLOBAL.dealloc(grown, Layout::from_size_align(3000, 8).unwrap());
    }
}

#[test]
fn collections_churn_leaves_every_invariant_and_no_refused_free() {
    boot();
    let k = kmem().unwrap();
    let rounds = if cfg!(miri) { 50 } else { 4000 };
    let mut boxes: Vec<Box<[u8]>> = Vec::new();
    for i in 0..rounds {
        let size = [1, 24, 100, 600, 3000, 9000][i % 6];
        boxes.push(vec![i as u8; size].into_boxed_slice());
        if i % 3 == 0 {
            let gone = boxes.swap_remove((i * 7) % boxes.len());
            assert!(gone.iter().all(|&b| b == gone[0]), "contents kept");
        }
    }
    drop(boxes);
    // Other tests run concurrently on the same allocator: the counters
    // are not at rest, but the invariants hold at every moment, and no
    // free of the allocator's own memory is ever refused.
    k.check_invariants().unwrap();
    assert_eq!(k.internal_errors(), 0);
}
