//! Zone operations with arbitrary GFP flags (allocations of orders 0..=5,
//! valid and invalid frees, splits, drains, CPU migrations) on a test
//! machine, each checked against the reference model of kmm-zones' tests.
//!
//! Check cadence: after every step the model's own checks (zone and
//! alignment of each allocation, no overlap with a held block, the error
//! each refusal must give) and, for a refusal, that every zone counter and
//! the descriptors around the frame it named are unchanged; after every
//! [`CHECK_EVERY`]-th step the O(frames) checks too: the allocator's
//! invariant checker, and every descriptor compared across a refusal made
//! in that step. At the end of each input the invariant checker runs, then
//! everything is freed and drained, and every descriptor and counter must
//! be back as at boot, the invariant checker passing again. Each input
//! boots fresh zones over one machine per thread (libFuzzer runs every
//! input on one), whose RAM and metadata are allocated once.

#![no_main]

use libfuzzer_sys::fuzz_target;

#[path = "../../zones/tests/support/mod.rs"]
mod support;

use support::{Op, FRAMES, MAX_TEST_ORDER};

/// Steps between two runs of the O(frames) checks.
const CHECK_EVERY: usize = 16;

fn op(kind: u8, a: u16, b: u16) -> Op {
    let which = usize::from(a);
    match kind % 12 {
        0..=3 => Op::Alloc {
            gfp: b,
            order: u32::from(a) % (MAX_TEST_ORDER + 1),
        },
        4..=6 => Op::Free { which },
        7 => Op::FreeWrongOrder {
            which,
            order: u32::from(b) % 12,
        },
        8 => Op::FreeTail { which },
        9 => Op::FreeAgain { which },
        10 => match b % 4 {
            0 => Op::FreeForeign {
                pfn: FRAMES + usize::from(a),
            },
            1 => Op::Split { which },
            2 => Op::Drain,
            _ => Op::Migrate { cpu: which % 2 },
        },
        _ => Op::Migrate {
            cpu: usize::from(b) % 2,
        },
    }
}

fuzz_target!(|ops: Vec<(u8, u16, u16)>| {
    let ops = ops.into_iter().take(256).map(|(k, a, b)| op(k, a, b));
    if let Err(broken) = support::run_checking_every(ops, CHECK_EVERY) {
        panic!("{broken}");
    }
});
