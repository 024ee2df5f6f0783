//! O1 (one 64-byte alloc + free pair), O2 (100,000 64-byte allocations,
//! then their frees in a shuffled order) and O5 (2M objects allocated on
//! one thread and freed on another) as plain loops, for counting
//! instructions, and simulated cache misses, per operation with callgrind
//! (deterministic, unlike timings on a shared machine). Runs `N` pairs or
//! rounds of one contender on a worker thread (not the thread that booted
//! kmm's manager, as the benches do): `kmalloc` (checked `kmalloc` +
//! `kfree` of a hosted manager), `global` (`HostedGlobal`), `mimalloc` or
//! `glibc` (`System`), each `GlobalAlloc` called directly.
//!
//! Per operation: the difference of two runs over the difference of their
//! `N`, which cancels start-up and boot:
//!
//! ```sh
//! cargo build --profile bench --features std --example objects_ir
//! for n in 100000 200000; do
//!   valgrind --tool=callgrind --callgrind-out-file=/tmp/o1.$n \
//!     target/release/examples/objects_ir o1 kmalloc $n 2>&1 | grep Collected
//! done
//! # O2 rounds, with the cache simulated (D1 and LL misses per round):
//! for n in 2 4; do
//!   valgrind --tool=cachegrind --cache-sim=yes --cachegrind-out-file=/tmp/o2.$n \
//!     target/release/examples/objects_ir o2 global $n 2>&1 | grep -E 'I *refs|D1  misses|LLd misses'
//! done
//! ```

use kmm::{global::HostedGlobal, HostedMemoryManager, MemoryManager};
use kmm_api::GFP_KERNEL;
use mimalloc::MiMalloc;
use std::alloc::{GlobalAlloc, Layout, System};
use std::hint::black_box;
use std::ptr::NonNull;
use std::sync::OnceLock;

static MM: OnceLock<HostedMemoryManager> = OnceLock::new();
// SAFETY: `MM` is a `OnceLock`: once it holds a manager it always does.
static GLOBAL: HostedGlobal = unsafe { HostedGlobal::new(|| MM.get().map(MemoryManager::kmem)) };

/// O2's live set.
const O2_OBJECTS: usize = 100_000;
const LAYOUT: Layout = match Layout::from_size_align(64, 8) {
    Ok(l) => l,
    Err(_) => panic!("64 bytes at 8 is a layout"),
};

/// One contender: 64-byte allocations and their frees.
trait Objects {
    fn alloc(&self) -> NonNull<u8>;
    /// # Safety
    /// `p` came from `alloc` of the same contender and is freed once.
    unsafe fn free(&self, p: NonNull<u8>);
}

struct Kmalloc(&'static HostedMemoryManager);

impl Objects for Kmalloc {
    fn alloc(&self) -> NonNull<u8> {
        self.0.kmalloc(64, GFP_KERNEL).unwrap()
    }
    unsafe fn free(&self, p: NonNull<u8>) {
        // SAFETY: forwarded from our caller.
        unsafe { self.0.kfree(p.as_ptr()) }.unwrap();
    }
}

struct Global<A: GlobalAlloc + 'static>(&'static A);

impl<A: GlobalAlloc> Objects for Global<A> {
    fn alloc(&self) -> NonNull<u8> {
        // SAFETY: a non-zero size.
        NonNull::new(unsafe { self.0.alloc(LAYOUT) }).unwrap()
    }
    unsafe fn free(&self, p: NonNull<u8>) {
        // SAFETY: forwarded from our caller, with the layout it came with.
        unsafe { self.0.dealloc(p.as_ptr(), LAYOUT) }
    }
}

/// `n` alloc + free pairs.
fn o1(a: &impl Objects, n: usize) {
    for _ in 0..n {
        let p = black_box(a.alloc());
        // SAFETY: we hold `p` and give it up.
        unsafe { a.free(p) };
    }
}

/// `n` rounds of O2: every object allocated, then freed in a fixed
/// shuffled order (a linear congruential permutation, the same each run).
fn o2(a: &impl Objects, n: usize) {
    let mut order: Vec<usize> = (0..O2_OBJECTS).collect();
    let mut seed = 2u64;
    for i in (1..order.len()).rev() {
        seed = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        order.swap(i, (seed >> 33) as usize % (i + 1));
    }
    let mut ptrs = Vec::with_capacity(O2_OBJECTS);
    for _ in 0..n {
        ptrs.clear();
        ptrs.extend((0..O2_OBJECTS).map(|_| a.alloc()));
        for &i in &order {
            // SAFETY: each object is freed once per round.
            unsafe { a.free(ptrs[i]) };
        }
    }
}

/// `n` rounds of O5: one thread allocates 2M objects, in batches of 1000
/// sent over a channel (at most 16 in flight) to a second that frees them.
fn o5(a: &(impl Objects + Sync), n: usize) {
    /// A batch of objects crossing threads.
    struct Batch(Vec<NonNull<u8>>);
    // SAFETY: the objects are plain memory handed from one thread to the
    // next; only the receiver touches them.
    unsafe impl Send for Batch {}
    let (tx, rx) = std::sync::mpsc::sync_channel::<Batch>(16);
    let batches = n * 2_000_000 / 1000;
    std::thread::scope(|s| {
        s.spawn(move || {
            for _ in 0..batches {
                tx.send(Batch((0..1000).map(|_| a.alloc()).collect()))
                    .unwrap();
            }
        });
        for Batch(batch) in rx.iter() {
            for p in batch {
                // SAFETY: each object is freed once, by the receiver.
                unsafe { a.free(p) };
            }
        }
    });
}

fn run(workload: &str, a: &(impl Objects + Sync), n: usize) {
    match workload {
        "o1" => o1(a, n),
        "o2" => o2(a, n),
        "o5" => o5(a, n),
        _ => panic!("usage: objects_ir o1|o2|o5 kmalloc|global|mimalloc|glibc [N]"),
    }
}

fn main() {
    let mut args = std::env::args().skip(1);
    let workload = args.next().unwrap_or_default();
    let which = args.next().unwrap_or_default();
    let n: usize = args.next().and_then(|n| n.parse().ok()).unwrap_or(100_000);
    let mm = MM.get_or_init(|| MemoryManager::hosted(16 << 20, 2).unwrap());
    std::thread::scope(|s| {
        s.spawn(|| match which.as_str() {
            "kmalloc" => run(&workload, &Kmalloc(mm), n),
            "global" => run(&workload, &Global(&GLOBAL), n),
            "mimalloc" => run(&workload, &Global(&MiMalloc), n),
            "glibc" => run(&workload, &Global(&System), n),
            _ => panic!("usage: objects_ir o1|o2|o5 kmalloc|global|mimalloc|glibc [N]"),
        });
    });
}
