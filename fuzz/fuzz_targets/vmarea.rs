//! Arbitrary alloc / free / purge sequences on the vmap_area allocator,
//! valid and invalid alike (sizes of 0, `usize::MAX`, sizes whose guard
//! page overflows, any alignment, any address to free, a starved node
//! source), each checked against the sorted-interval reference of
//! kmm-vmarea's tests.
//!
//! State is reused across inputs: four machines (ranges, CPU counts, node
//! object sizes) are built once, and each input ends by freeing every live
//! area and purging, which must give the whole range back as one free
//! block. Check cadence: every result (success or the exact error) and the
//! counters after every step; the checker, every range against the model
//! and a refused operation's state against its snapshot every
//! [`CHECK_EVERY`] steps and at the end of each input.

#![no_main]

use arbitrary::Arbitrary;
use kmm_api::{PAGE_MASK, PAGE_SIZE};
use libfuzzer_sys::fuzz_target;
use std::cell::RefCell;

#[path = "../../vmarea/tests/support/mod.rs"]
mod support;

use support::{Harness, Op};

#[derive(Arbitrary, Debug)]
struct Input {
    machine: u8,
    ops: Vec<(u8, u64, u64)>,
}

/// Steps between two runs of the O(n) checks.
const CHECK_EVERY: usize = 16;

/// (first page, pages, CPUs, node object bytes): a tiny range with
/// one-node objects, an unaligned one, and two with page-sized objects.
const MACHINES: [(usize, usize, usize, usize); 4] = [
    (1, 64, 1, kmm_vmarea::VMAP_AREA_NODE_BYTES),
    (0x1001, 300, 4, 64),
    (7, 1024, 64, PAGE_SIZE),
    (0x10000, 4096, 2, PAGE_SIZE),
];

thread_local! {
    static HARNESSES: RefCell<Vec<Harness>> = RefCell::new(
        MACHINES
            .iter()
            .map(|&(base, pages, cpus, object)| {
                Harness::new(base, pages, cpus, object).check_every(CHECK_EVERY)
            })
            .collect(),
    );
}

fn size(a: u64) -> usize {
    match a % 8 {
        0 => 0,
        1 => usize::MAX,
        2 => usize::MAX & PAGE_MASK,
        3 => (a >> 3) as usize,
        _ => ((a >> 3) as usize % 64 + 1) * PAGE_SIZE,
    }
}

fn align(b: u64) -> usize {
    match b % 4 {
        0 => PAGE_SIZE,
        1 => 1usize << ((b >> 2) % u64::from(usize::BITS)),
        2 => (b >> 2) as usize,
        _ => PAGE_SIZE << ((b >> 2) % 8),
    }
}

fn op(kind: u8, a: u64, b: u64) -> Op {
    match kind % 10 {
        0..=2 => Op::Alloc {
            size: size(a),
            align: align(b),
            no_guard: b & 0x100 != 0,
        },
        3 => Op::AllocStarved {
            size: ((a as usize) % 8 + 1) * PAGE_SIZE,
            successes: (b % 3) as usize,
        },
        4 | 5 => Op::FreeLive { pick: a as usize },
        6 => Op::FreeInside {
            pick: a as usize,
            offset: b as usize,
        },
        7 => Op::Free {
            offset: a as usize,
        },
        8 => Op::Free {
            offset: (a as usize % (8192 * PAGE_SIZE)) & PAGE_MASK,
        },
        // A full decay of the pools one purge in four.
        _ if a % 4 == 0 => Op::ReclaimAndPurge,
        _ => Op::Purge,
    }
}

fuzz_target!(|input: Input| {
    HARNESSES.with(|harnesses| {
        let mut harnesses = harnesses.borrow_mut();
        let harness = &mut harnesses[input.machine as usize % MACHINES.len()];
        for &(kind, a, b) in input.ops.iter().take(256) {
            harness.apply(op(kind, a, b));
        }
        harness.finish();
    });
});
