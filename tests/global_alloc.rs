//! The hosted manager as this test binary's `#[global_allocator]`: `alloc`
//! collections run on kmalloc, and their buffers lie in the manager's RAM.

use kmm::global::HostedGlobal;
use kmm::{HostedMemoryManager, MemoryManager};
use kmm_api::{DirectMap, PAGE_SIZE};
use std::collections::BTreeMap;
use std::sync::OnceLock;

static MM: OnceLock<HostedMemoryManager> = OnceLock::new();

#[global_allocator]
static GLOBAL: HostedGlobal = HostedGlobal::new(|| MM.get().map(MemoryManager::kmem));

fn mm() -> &'static HostedMemoryManager {
    MM.get_or_init(|| MemoryManager::hosted(64 << 20, 2).unwrap())
}

fn in_ram<T>(p: *const T) -> bool {
    mm().zones().direct_map().ptr_to_pfn(p.cast()).is_some()
}

#[test]
fn vec_grows_through_krealloc_from_slab_classes_to_pages() {
    let mm = mm();
    let mut v: Vec<u64> = Vec::new();
    for i in 0..20_000u64 {
        v.push(i);
        assert!(in_ram(v.as_ptr()));
        // SAFETY: `v`'s buffer is this test's, held (not freed or grown)
        // for the call.
        let size = unsafe { mm.ksize(v.as_ptr().cast()) }.unwrap();
        assert!(size >= v.capacity() * 8);
    }
    assert!(v.iter().enumerate().all(|(i, &x)| x == i as u64));
    assert!(v.capacity() * 8 > 8192, "reached the page path");
}

#[test]
fn btreemap_of_strings_keeps_every_entry() {
    mm();
    let mut map = BTreeMap::new();
    for i in 0..5_000u32 {
        map.insert(
            format!("key-{i:05}"),
            i.to_string().repeat(i as usize % 7 + 1),
        );
    }
    for (k, v) in &map {
        assert!(in_ram(k.as_ptr()) && in_ram(v.as_ptr()));
    }
    for i in (0..5_000u32).step_by(2) {
        map.remove(&format!("key-{i:05}"));
    }
    assert_eq!(map.len(), 2_500);
    for (i, (k, v)) in map.iter().enumerate() {
        let n = 2 * i as u32 + 1;
        assert_eq!(k, &format!("key-{n:05}"));
        assert_eq!(v, &n.to_string().repeat(n as usize % 7 + 1));
    }
}

#[test]
fn string_concatenation_and_zeroed_and_page_aligned_blocks() {
    mm();
    let mut s = String::new();
    for i in 0..2_000 {
        s.push_str(&i.to_string());
    }
    assert!(in_ram(s.as_ptr()));
    assert!(s.starts_with("0123456789101112"));
    let zeroed = vec![0u8; 3 * PAGE_SIZE];
    assert!(in_ram(zeroed.as_ptr()) && zeroed.iter().all(|&b| b == 0));
    #[repr(align(4096))]
    struct Page([u8; PAGE_SIZE]);
    let pages: Vec<Page> = (0..3).map(|i| Page([i; PAGE_SIZE])).collect();
    assert_eq!(pages.as_ptr() as usize % PAGE_SIZE, 0);
    assert!(in_ram(pages.as_ptr()));
    assert!(pages
        .iter()
        .enumerate()
        .all(|(i, p)| p.0.iter().all(|&b| b == i as u8)));
}

#[test]
fn threads_allocate_and_free_each_others_blocks() {
    mm();
    let handles: Vec<_> = (0..4)
        .map(|t| {
            std::thread::spawn(move || {
                (0..2_000)
                    .map(|i| vec![t as u8; i % 300 + 1])
                    .collect::<Vec<_>>()
            })
        })
        .collect();
    let all: Vec<Vec<Vec<u8>>> = handles.into_iter().map(|h| h.join().unwrap()).collect();
    for (t, blocks) in all.iter().enumerate() {
        assert!(blocks
            .iter()
            .all(|b| in_ram(b.as_ptr()) && b.iter().all(|&x| x == t as u8)));
    }
    drop(all); // freed on this thread: remote frees
    mm().kmem().check_invariants().unwrap();
}
