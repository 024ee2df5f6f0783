//! State-machine model test: random allocations with arbitrary GFP flags,
//! valid and invalid frees, splits, drains and CPU migrations against a
//! reference model of the held blocks. After every step: `check()` passes,
//! no two held blocks overlap, every allocation came from a zone its GFP
//! flags allow, every refused free names the error the model predicts and
//! left every descriptor and counter as it was. At the end, freeing
//! everything and draining gives back the boot-time free lists.

mod support;

use proptest::prelude::*;
use support::{Op, FRAMES, MAX_TEST_ORDER};

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => (any::<u16>(), 0..=MAX_TEST_ORDER).prop_map(|(gfp, order)| Op::Alloc { gfp, order }),
        4 => any::<usize>().prop_map(|which| Op::Free { which }),
        1 => (any::<usize>(), 0..=11u32).prop_map(|(which, order)| Op::FreeWrongOrder { which, order }),
        1 => any::<usize>().prop_map(|which| Op::FreeTail { which }),
        1 => any::<usize>().prop_map(|which| Op::FreeAgain { which }),
        1 => (FRAMES..FRAMES * 2).prop_map(|pfn| Op::FreeForeign { pfn }),
        1 => any::<usize>().prop_map(|which| Op::Split { which }),
        1 => Just(Op::Drain),
        1 => (0..2usize).prop_map(|cpu| Op::Migrate { cpu }),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: if cfg!(miri) { 1 } else { 128 },
        // Miri's isolation forbids the regression file's path lookup.
        failure_persistence: if cfg!(miri) { None } else { ProptestConfig::default().failure_persistence },
        ..ProptestConfig::default()
    })]

    #[test]
    fn zones_match_the_model_after_every_step(ops in proptest::collection::vec(op(), 1..if cfg!(miri) { 24 } else { 160 })) {
        support::run(ops).map_err(TestCaseError::fail)?;
    }
}
