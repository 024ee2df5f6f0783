//! F1 (one order-0 alloc + free pair) and F2 (the 64k-block churn of
//! orders 0..=3) of `benches/pages.rs` as plain loops, for counting
//! instructions per step with callgrind (deterministic, unlike timings on
//! a shared machine). The loops and the contenders are the bench's own
//! (`benches/common/pages.rs`): kmm is `MemoryManager::hosted` over 2 GiB,
//! one CPU, on the thread that booted it, as criterion runs it; the peer,
//! `buddy_system_allocator` without a lock, is named as a third argument.
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

// The bench's helpers are shared whole; the driver uses two contenders.
#[allow(dead_code)]
#[path = "../benches/common/pages.rs"]
mod common;

use common::{bsa, f1_pair, Churn, ChurnRun, Kmm, Pages};

const USAGE: &str = "usage: pages_ir f1|f2 N [kmm|buddy_system_allocator]";

/// The counted loop of F1.
#[inline(never)]
fn f1<P: Pages>(pages: &mut P, n: usize) {
    (0..n).for_each(|_| f1_pair(pages));
}

/// The counted loop of F2.
#[inline(never)]
fn f2<P: Pages>(run: &mut ChurnRun<'_, P>, n: usize) {
    (0..n).for_each(|_| run.step());
}

/// Runs `n` steps of `workload` on `pages`.
fn run<P: Pages>(workload: &str, n: usize, mut pages: P) {
    match workload {
        "f1" => f1(&mut pages, n),
        "f2" => f2(&mut ChurnRun::new(&Churn::new(), pages), n),
        _ => panic!("{USAGE}"),
    }
}

fn main() {
    let mut args = std::env::args().skip(1);
    let workload = args.next().unwrap_or_default();
    let n: usize = args.next().and_then(|n| n.parse().ok()).expect(USAGE);
    match args.next().as_deref().unwrap_or(Kmm::NAME) {
        Kmm::NAME => run(&workload, n, Kmm::new()),
        common::Bsa::NAME => run(&workload, n, bsa()),
        _ => panic!("{USAGE}"),
    }
}
