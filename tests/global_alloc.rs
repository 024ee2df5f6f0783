//! The hosted manager as this test binary's `#[global_allocator]`: `alloc`
//! collections run on kmalloc, and their buffers lie in the manager's RAM;
//! and a model test of the allocator itself, its per-thread magazines
//! included.

use kmm::global::HostedGlobal;
use kmm::{HostedMemoryManager, MemoryManager};
use kmm_api::{DirectMap, PAGE_SIZE};
use proptest::prelude::*;
use std::alloc::{GlobalAlloc, Layout};
use std::collections::BTreeMap;
use std::sync::OnceLock;

static MM: OnceLock<HostedMemoryManager> = OnceLock::new();

#[global_allocator]
// SAFETY: `MM` is a `OnceLock`: once it holds a manager it always does.
static GLOBAL: HostedGlobal = unsafe { HostedGlobal::new(|| MM.get().map(MemoryManager::kmem)) };

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

/// A thread's first allocation refills its magazine, and the refill's
/// kmalloc claims the thread a CPU and records the claim, which allocates
/// through this very allocator: the nested request goes straight to
/// kmalloc, and both are served.
#[test]
fn a_threads_first_refill_survives_the_allocation_its_cpu_claim_makes() {
    mm();
    let (first, then) = std::thread::spawn(|| {
        let first = Box::new(7u64);
        let then: Vec<u64> = (0..100).collect();
        (*first, then.iter().sum::<u64>())
    })
    .join()
    .unwrap();
    assert_eq!((first, then), (7, 4950));
    mm().kmem().check_invariants().unwrap();
}

/// A producer and a consumer thread at once, the consumer freeing what the
/// producer allocated (Box<[u64; 8]> here, through this binary's global
/// allocator), so full batches stream through the magazine depot while
/// both run: every block still holds the number the producer wrote, so
/// none was handed out twice.
#[test]
fn blocks_freed_on_another_thread_come_back_through_the_depot_intact() {
    mm();
    let (tx, rx) = std::sync::mpsc::sync_channel::<Vec<Box<[u64; 8]>>>(8);
    let producer = std::thread::spawn(move || {
        for batch in 0..2_000u64 {
            let blocks = (0..100).map(|i| Box::new([batch * 100 + i; 8])).collect();
            tx.send(blocks).unwrap();
        }
    });
    let mut expect = 0u64;
    for blocks in rx {
        for b in blocks {
            assert!(in_ram(&*b));
            assert_eq!(*b, [expect; 8], "a block handed out twice");
            expect += 1;
        }
    }
    producer.join().unwrap();
    assert_eq!(expect, 200_000);
    mm().kmem().check_invariants().unwrap();
}

#[derive(Clone, Debug)]
enum Op {
    Alloc {
        size: usize,
        align_log2: u32,
        zeroed: bool,
    },
    Free {
        pick: usize,
    },
    Realloc {
        pick: usize,
        size: usize,
    },
    Flush,
    /// `count` blocks of one size at once: enough to take batches from
    /// the depot.
    Burst {
        size: usize,
        count: usize,
    },
    /// Every live block freed: enough to give batches to the depot.
    FreeAll,
    DrainDepot,
}

fn op() -> impl Strategy<Value = Op> {
    // Mostly the magazines' sizes, some beyond them and up to pages.
    let size = prop_oneof![8 => 1..=1100usize, 1 => 1100..=9000usize];
    prop_oneof![
        6 => (size.clone(), 0..=8u32, any::<bool>())
            .prop_map(|(size, align_log2, zeroed)| Op::Alloc { size, align_log2, zeroed }),
        4 => any::<usize>().prop_map(|pick| Op::Free { pick }),
        3 => (any::<usize>(), size).prop_map(|(pick, size)| Op::Realloc { pick, size }),
        1 => Just(Op::Flush),
        1 => (1..=1024usize, 1..=100usize).prop_map(|(size, count)| Op::Burst { size, count }),
        1 => Just(Op::FreeAll),
        1 => Just(Op::DrainDepot),
    ]
}

/// A live block of the model: its address, layout and the byte it holds.
struct Block {
    p: *mut u8,
    layout: Layout,
    fill: u8,
}

/// Every live block still holds its byte, and no two overlap.
fn check(live: &[Block]) -> Result<(), TestCaseError> {
    for b in live {
        // SAFETY: a live block of `b.layout.size()` bytes, held by the test.
        let bytes = unsafe { std::slice::from_raw_parts(b.p, b.layout.size()) };
        prop_assert!(
            bytes.iter().all(|&x| x == b.fill),
            "block at {:p} changed",
            b.p
        );
        prop_assert_eq!(b.p as usize % b.layout.align(), 0);
    }
    let mut spans: Vec<(usize, usize)> = live
        .iter()
        .map(|b| (b.p as usize, b.p as usize + b.layout.size()))
        .collect();
    spans.sort_unstable();
    for w in spans.windows(2) {
        prop_assert!(w[0].1 <= w[1].0, "{:x?} overlaps {:x?}", w[0], w[1]);
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    /// Random alloc / dealloc / realloc / flush / burst / depot-drain
    /// sequences through the
    /// allocator: after every step each live block holds what was written
    /// into it, at its alignment, and no two live blocks overlap.
    #[test]
    fn blocks_keep_their_contents_and_never_overlap(ops in proptest::collection::vec(op(), 1..200)) {
        mm();
        let mut live: Vec<Block> = Vec::new();
        for (step, op) in ops.into_iter().enumerate() {
            let fill = step as u8 | 1;
            match op {
                Op::Alloc { size, align_log2, zeroed } => {
                    let layout = Layout::from_size_align(size, 1 << align_log2).unwrap();
                    // SAFETY: a non-zero size; the block is freed once,
                    // with its layout, below.
                    let p = unsafe {
                        if zeroed { GLOBAL.alloc_zeroed(layout) } else { GLOBAL.alloc(layout) }
                    };
                    prop_assert!(!p.is_null());
                    // SAFETY: a fresh block of `size` bytes.
                    unsafe {
                        if zeroed {
                            prop_assert!(std::slice::from_raw_parts(p, size).iter().all(|&x| x == 0));
                        }
                        p.write_bytes(fill, size);
                    }
                    live.push(Block { p, layout, fill });
                }
                Op::Free { pick } if !live.is_empty() => {
                    let b = live.swap_remove(pick % live.len());
                    // SAFETY: a live block, freed once with its layout.
                    unsafe { GLOBAL.dealloc(b.p, b.layout) };
                }
                Op::Realloc { pick, size } if !live.is_empty() => {
                    let i = pick % live.len();
                    let b = &mut live[i];
                    // SAFETY: a live block with its layout; a non-zero size.
                    let q = unsafe { GLOBAL.realloc(b.p, b.layout, size) };
                    prop_assert!(!q.is_null());
                    let kept = b.layout.size().min(size);
                    // SAFETY: `q` holds `size` bytes, the first `kept` of
                    // them copied from the old block.
                    unsafe {
                        prop_assert!(std::slice::from_raw_parts(q, kept).iter().all(|&x| x == b.fill));
                        q.write_bytes(fill, size);
                    }
                    *b = Block { p: q, layout: Layout::from_size_align(size, b.layout.align()).unwrap(), fill };
                }
                Op::Flush => {
                    HostedGlobal::flush_thread_cache();
                }
                Op::Burst { size, count } => {
                    let layout = Layout::from_size_align(size, 8).unwrap();
                    for _ in 0..count {
                        // SAFETY: a non-zero size; freed once, with its
                        // layout, below.
                        let p = unsafe { GLOBAL.alloc(layout) };
                        prop_assert!(!p.is_null());
                        // SAFETY: a fresh block of `size` bytes.
                        unsafe { p.write_bytes(fill, size) };
                        live.push(Block { p, layout, fill });
                    }
                }
                Op::FreeAll => {
                    for b in live.drain(..) {
                        // SAFETY: a live block, freed once with its layout.
                        unsafe { GLOBAL.dealloc(b.p, b.layout) };
                    }
                }
                Op::DrainDepot => {
                    GLOBAL.drain_depot();
                }
                Op::Free { .. } | Op::Realloc { .. } => {}
            }
            check(&live)?;
        }
        for b in live {
            // SAFETY: a live block, freed once with its layout.
            unsafe { GLOBAL.dealloc(b.p, b.layout) };
        }
    }
}
