//! F1 (one order-0 alloc + free pair) and F2 (the 64k-block churn of
//! orders 0..=3) of `benches/pages.rs` as plain loops, for counting
//! instructions per step with callgrind (deterministic, unlike timings on
//! a shared machine). The loops and kmm's contender are the bench's own
//! (`benches/common/pages.rs`): `MemoryManager::hosted` over 2 GiB, one
//! CPU, on the thread that booted it, as criterion runs them.
//!
//! Instructions per step: the difference of two runs over the difference
//! of their `N`, which cancels boot, the churn script and the pre-fill.
//! F2's lists and free lists take a while to settle into their steady
//! mix, so its `N` is the script's length (1,048,576 steps): the second
//! run's extra steps are the script once more, from a settled state.
//!
//! ```sh
//! cargo build --profile bench --features std --example pages_ir
//! for run in "f1 100000" "f1 200000" "f2 1048576" "f2 2097152"; do
//!   valgrind --tool=callgrind --callgrind-out-file=/tmp/pages.out \
//!     target/release/examples/pages_ir $run 2>&1 | grep Collected
//! done
//! ```

// The bench's helpers are shared whole; the driver uses kmm's only.
#[allow(dead_code)]
#[path = "../benches/common/pages.rs"]
mod common;

use common::{f1_pair, Churn, ChurnRun, Kmm};

const USAGE: &str = "usage: pages_ir f1|f2 N";

/// The counted loop of F1.
#[inline(never)]
fn f1(kmm: &mut Kmm, n: usize) {
    (0..n).for_each(|_| f1_pair(kmm));
}

/// The counted loop of F2.
#[inline(never)]
fn f2(run: &mut ChurnRun<'_, Kmm>, n: usize) {
    (0..n).for_each(|_| run.step());
}

fn main() {
    let mut args = std::env::args().skip(1);
    let workload = args.next().unwrap_or_default();
    let n: usize = args.next().and_then(|n| n.parse().ok()).expect(USAGE);
    let mut kmm = Kmm::new();
    match workload.as_str() {
        "f1" => f1(&mut kmm, n),
        "f2" => f2(&mut ChurnRun::new(&Churn::new(), kmm), n),
        _ => panic!("{USAGE}"),
    }
}
