//! Model-based test: random sequences of valid and invalid operations run on
//! the buddy and on a reference model (`support`), with every invariant
//! checked after every step and the maximal blocks checked at the end.

mod support;

use proptest::prelude::*;
use support::{Harness, Op};

/// Orders up to one past the largest configured maximum, so refusals of
/// too-large orders are exercised.
const ORDERS: u32 = 8;

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => (0..=ORDERS).prop_map(|order| Op::Alloc { order }),
        5 => any::<usize>().prop_map(|pick| Op::FreeLive { pick }),
        1 => any::<usize>().prop_map(|pick| Op::FreeTwice { pick }),
        1 => (any::<usize>(), any::<usize>(), 0..=ORDERS)
            .prop_map(|(pick, offset, order)| Op::FreeInside { pick, offset, order }),
        2 => (any::<u16>(), 0..=ORDERS).prop_map(|(pos, order)| Op::Free { pos, order }),
        1 => any::<usize>().prop_map(|pick| Op::Split { pick }),
        1 => (any::<u16>(), 0..40u16).prop_map(|(pos, len)| Op::AllocRange { pos, len }),
        1 => (any::<u16>(), 0..40u16).prop_map(|(pos, len)| Op::FreeRange { pos, len }),
        1 => any::<usize>().prop_map(|pick| Op::FreeLiveRange { pick }),
        1 => (any::<u16>(), 0..40u16).prop_map(|(pos, len)| Op::Release { pos, len }),
    ]
}

/// A range with an unaligned base, a hole left reserved at first, and
/// orders small enough that blocks reach the range edges.
fn machine() -> impl Strategy<Value = (usize, usize, u32, usize, usize)> {
    (0usize..100, 1usize..200, 0u32..ORDERS).prop_flat_map(|(base, nr, max_order)| {
        (Just(base), Just(nr), Just(max_order), 0..=nr, 0..=nr)
    })
}

fn config() -> ProptestConfig {
    let mut config = ProptestConfig::with_cases(if cfg!(miri) { 4 } else { 1000 });
    if cfg!(miri) {
        // Miri's isolation forbids the file system a failure record needs.
        config.failure_persistence = None;
    }
    config
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn buddy_matches_the_reference_model(
        (base, nr, max_order, a, b) in machine(),
        ops in proptest::collection::vec(op(), 1..80),
    ) {
        let mut harness = Harness::new(base, nr, max_order);
        let (hole_start, hole_end) = (a.min(b), a.max(b));
        harness.release_frames(0, hole_start);
        harness.release_frames(hole_end, nr);
        for op in ops {
            harness.apply(op);
        }
        harness.finish();
    }
}
