//! O1 (one 64-byte alloc + free pair) as a plain loop, for counting
//! instructions per pair with callgrind (deterministic, unlike timings on
//! a shared machine). Runs `N` pairs of one contender on a worker thread
//! (not the thread that booted kmm's manager, as the benches do):
//! `kmalloc` (checked `kmalloc` + `kfree` of a hosted manager), `global`
//! (`HostedGlobal`), `mimalloc` or `glibc` (`System`), each `GlobalAlloc`
//! called directly.
//!
//! Instructions per pair: the difference of two runs over the difference
//! of their `N`, which cancels start-up and boot:
//!
//! ```sh
//! cargo build --release --features std --example o1_ir
//! for n in 100000 200000; do
//!   valgrind --tool=callgrind --callgrind-out-file=/tmp/o1.$n \
//!     target/release/examples/o1_ir kmalloc $n 2>&1 | grep Collected
//! done
//! ```

use kmm::{global::HostedGlobal, HostedMemoryManager, MemoryManager};
use kmm_api::GFP_KERNEL;
use mimalloc::MiMalloc;
use std::alloc::{GlobalAlloc, Layout, System};
use std::hint::black_box;
use std::sync::OnceLock;

static MM: OnceLock<HostedMemoryManager> = OnceLock::new();
static GLOBAL: HostedGlobal = HostedGlobal::new(|| MM.get().map(MemoryManager::kmem));

/// `n` alloc + dealloc pairs of a 64-byte layout through `a`.
fn global_pairs(a: &impl GlobalAlloc, n: usize) {
    let layout = Layout::from_size_align(64, 8).unwrap();
    for _ in 0..n {
        // SAFETY: a non-zero size; the block is freed once, with its layout.
        unsafe {
            let p = black_box(a.alloc(layout));
            assert!(!p.is_null());
            a.dealloc(p, layout);
        }
    }
}

fn main() {
    let mut args = std::env::args().skip(1);
    let which = args.next().unwrap_or_default();
    let n: usize = args.next().and_then(|n| n.parse().ok()).unwrap_or(100_000);
    let mm = MM.get_or_init(|| MemoryManager::hosted(16 << 20, 1).unwrap());
    std::thread::scope(|s| {
        s.spawn(|| match which.as_str() {
            "kmalloc" => {
                for _ in 0..n {
                    let p = black_box(mm.kmalloc(64, GFP_KERNEL).unwrap());
                    // SAFETY: we hold `p` and give it up.
                    unsafe { mm.kfree(p.as_ptr()) }.unwrap();
                }
            }
            "global" => global_pairs(&GLOBAL, n),
            "mimalloc" => global_pairs(&MiMalloc, n),
            "glibc" => global_pairs(&System, n),
            _ => panic!("usage: o1_ir kmalloc|global|mimalloc|glibc [N]"),
        });
    });
}
