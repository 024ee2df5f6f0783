//! Arbitrary operation sequences on one buddy, valid and invalid alike,
//! each checked against the reference model of kmm-buddy's tests.
//!
//! Check cadence: after every step, each result (success or the exact
//! error) as the model predicts, a refused operation leaving the buddy's
//! storage and counters byte for byte unchanged, and the buddy's counters
//! against the model's; every [`CHECK_EVERY`] steps and at the end of each
//! input, the O(frames) checks too: the buddy's own invariant checker and
//! every frame's state against the model. Each input ends by freeing every
//! live block and requiring the free lists to hold exactly the maximal
//! aligned blocks of each released run.

#![no_main]

use arbitrary::Arbitrary;
use kmm_api::Order;
use libfuzzer_sys::fuzz_target;

#[path = "../../buddy/tests/support/mod.rs"]
mod support;

use support::{Harness, Op};

#[derive(Arbitrary, Debug)]
struct Input {
    base: u8,
    frames: u16,
    max_order: u8,
    hole: (u16, u16),
    ops: Vec<(u8, u16, u16)>,
}

/// Frames per buddy: enough for order-10 blocks, small enough that the
/// model checks stay fast.
const MAX_FRAMES: usize = 2048;

/// Steps between two runs of the O(frames) checks.
const CHECK_EVERY: usize = 16;

fn op(kind: u8, a: u16, b: u16) -> Op {
    let pick = a as usize;
    // Orders reach one past the maximum configured below, and beyond.
    let order = u32::from(b) % (Order::LIMIT + 1);
    match kind % 10 {
        0 | 1 => Op::Alloc { order: order % 12 },
        2 | 3 => Op::FreeLive { pick },
        4 => Op::FreeTwice { pick },
        5 => Op::FreeInside {
            pick,
            offset: b as usize,
            order: order % 12,
        },
        6 => Op::Free { pos: a, order },
        7 => Op::Split { pick },
        8 => match b % 4 {
            0 => Op::AllocRange {
                pos: a,
                len: b >> 2,
            },
            1 => Op::FreeRange {
                pos: a,
                len: b >> 2,
            },
            2 => Op::FreeLiveRange { pick },
            _ => Op::Release {
                pos: a,
                len: b >> 2,
            },
        },
        _ => Op::Alloc { order: 0 },
    }
}

fuzz_target!(|input: Input| {
    let nr = 1 + input.frames as usize % MAX_FRAMES;
    let max_order = u32::from(input.max_order) % 11;
    let mut harness = Harness::new(input.base as usize, nr, max_order).check_every(CHECK_EVERY);
    let (a, b) = (
        input.hole.0 as usize % (nr + 1),
        input.hole.1 as usize % (nr + 1),
    );
    harness.release_frames(0, a.min(b));
    harness.release_frames(a.max(b), nr);
    for &(kind, a, b) in input.ops.iter().take(256) {
        harness.apply(op(kind, a, b));
    }
    harness.finish();
});
