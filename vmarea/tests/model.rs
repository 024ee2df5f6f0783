//! Model-based test: random sequences of allocations (sizes, alignments,
//! with and without guard, starved of nodes), frees (live, interior,
//! arbitrary addresses, twice), purges and full decays of the pools run on
//! the allocator and on a sorted-interval reference (`support`): every
//! result must match (the same address for every allocation: the lowest
//! pooled area of exactly its size if aligned, else the lowest fit), and
//! the checker and every range, pooled ones included, are compared after
//! every step.

mod support;

use kmm_api::PAGE_SIZE;
use proptest::prelude::*;
use support::{Harness, Op};

/// Sizes: mostly a few pages (some not page multiples), sometimes the
/// edge cases that must be refused.
fn size() -> impl Strategy<Value = usize> {
    prop_oneof![
        8 => (1usize..12).prop_map(|pages| pages * PAGE_SIZE),
        2 => 1usize..(40 * PAGE_SIZE),
        1 => Just(0usize),
        1 => Just(usize::MAX),
        1 => Just(usize::MAX & !(PAGE_SIZE - 1)),
        1 => Just(usize::MAX - PAGE_SIZE - 1),
    ]
}

/// Alignments: mostly pages, then powers of two up to 2^20 bytes (some
/// below a page, refused), and a few that are not powers of two.
fn align() -> impl Strategy<Value = usize> {
    prop_oneof![
        6 => Just(PAGE_SIZE),
        4 => (10u32..21).prop_map(|shift| 1usize << shift),
        1 => Just(3 * PAGE_SIZE),
        1 => Just(0usize),
        1 => Just(1usize << (usize::BITS - 1)),
    ]
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        8 => (size(), align(), any::<bool>())
            .prop_map(|(size, align, no_guard)| Op::Alloc { size, align, no_guard }),
        1 => ((1usize..6).prop_map(|p| p * PAGE_SIZE), 0usize..3)
            .prop_map(|(size, successes)| Op::AllocStarved { size, successes }),
        6 => any::<usize>().prop_map(|pick| Op::FreeLive { pick }),
        1 => (any::<usize>(), 1usize..(16 * PAGE_SIZE))
            .prop_map(|(pick, offset)| Op::FreeInside { pick, offset }),
        2 => prop_oneof![
            (0usize..(300 * PAGE_SIZE)).prop_map(|o| o & !(PAGE_SIZE - 1)),
            any::<usize>(),
        ]
        .prop_map(|offset| Op::Free { offset }),
        1 => Just(Op::Purge),
        1 => Just(Op::ReclaimAndPurge),
    ]
}

/// A range at an arbitrary page (so alignments fall in different places),
/// small enough to exhaust; node objects of one node or of a page; 1 to 64
/// CPUs (the lazy threshold is capped to a quarter of the range).
fn machine() -> impl Strategy<Value = (usize, usize, usize, usize)> {
    (
        1usize..4096,
        8usize..300,
        1usize..65,
        prop_oneof![
            Just(kmm_vmarea::VMAP_AREA_NODE_BYTES),
            Just(64),
            Just(PAGE_SIZE)
        ],
    )
}

fn config() -> ProptestConfig {
    let mut config = ProptestConfig::with_cases(if cfg!(miri) { 6 } else { 1000 });
    if cfg!(miri) {
        // Miri's isolation forbids the file system a failure record needs.
        config.failure_persistence = None;
    }
    config
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn vmap_areas_match_the_reference_model(
        (base_page, pages, nr_cpus, object_size) in machine(),
        ops in proptest::collection::vec(op(), 1..if cfg!(miri) { 40 } else { 120 }),
    ) {
        let mut harness = Harness::new(base_page, pages, nr_cpus, object_size);
        for op in ops {
            harness.apply(op);
        }
        harness.finish();
    }
}
