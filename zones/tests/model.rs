//! State-machine model test: random allocations with arbitrary GFP flags,
//! valid and invalid frees, splits, drains and CPU migrations against a
//! reference model of the held blocks. After every step: `check()` passes,
//! no two held blocks overlap, every allocation came from a zone its GFP
//! flags allow, every refused free names the error the model predicts and
//! left every descriptor and counter as it was. At the end, freeing
//! everything and draining gives back the boot-time free lists.

use kmm_api::{Error, GfpFlags, Order, Pfn};
use kmm_zones::testing::{set_cpu, TestMachine, TestZones};
use kmm_zones::{gfp_zone, ZoneType};
use proptest::prelude::*;
use std::collections::{BTreeMap, BTreeSet};

/// Machine size: small enough that miri finishes in a minute.
const FRAMES: usize = if cfg!(miri) { 256 } else { 1024 };
const MAX_TEST_ORDER: u32 = 5;

/// The GFP bits a request may carry here: everything but `__GFP_NOFAIL`,
/// which would wait forever for a free that a single-threaded model never
/// makes (it has its own tests).
const GFP_BITS: [GfpFlags; 14] = [
    GfpFlags::DMA,
    GfpFlags::HIGHMEM,
    GfpFlags::DMA32,
    GfpFlags::MOVABLE,
    GfpFlags::HIGH,
    GfpFlags::IO,
    GfpFlags::FS,
    GfpFlags::ZERO,
    GfpFlags::DIRECT_RECLAIM,
    GfpFlags::KSWAPD_RECLAIM,
    GfpFlags::NOWARN,
    GfpFlags::RETRY_MAYFAIL,
    GfpFlags::NORETRY,
    GfpFlags::COMP,
];

#[derive(Clone, Debug)]
enum Op {
    Alloc { gfp: u16, order: u32 },
    Free { which: usize },
    FreeWrongOrder { which: usize, order: u32 },
    FreeTail { which: usize },
    FreeAgain { which: usize },
    FreeForeign { pfn: usize },
    Split { which: usize },
    Drain,
    Migrate { cpu: usize },
}

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

fn gfp_of(bits: u16) -> GfpFlags {
    GFP_BITS
        .iter()
        .enumerate()
        .filter(|(i, _)| bits & (1 << i) != 0)
        .fold(GfpFlags::empty(), |acc, (_, &flag)| acc | flag)
}

fn order(o: u32) -> Order {
    Order::new(o).unwrap()
}

/// Every descriptor and zone counter, to prove a refusal changed nothing.
fn fingerprint(zones: &TestZones<'_>) -> Vec<(String, bool, u32)> {
    let mut state: Vec<_> = zones
        .zone_stats()
        .iter()
        .map(|s| (format!("{s:?}"), false, 0))
        .collect();
    for page in (0..FRAMES).filter_map(|pfn| zones.pfn_to_page(Pfn::new(pfn))) {
        state.push((
            format!("{:?}", page.tag()),
            page.is_pcp(),
            page.page_count(),
        ));
    }
    state
}

/// The reference model: held blocks by head pfn, and freed heads that have
/// not been handed out again (a second free of them is a double free).
#[derive(Default)]
struct Model {
    held: BTreeMap<usize, Order>,
    freed: BTreeSet<usize>,
}

impl Model {
    fn nth(&self, which: usize) -> Option<(usize, Order)> {
        let n = self.held.len();
        (n > 0).then(|| self.held.iter().nth(which % n).map(|(&p, &o)| (p, o)))?
    }

    fn take(&mut self, pfn: usize, o: Order) {
        let end = pfn + o.pages();
        if let Some((&prev, &po)) = self.held.range(..end).next_back() {
            assert!(
                prev + po.pages() <= pfn || prev >= end,
                "{pfn:#x} overlaps held {prev:#x}"
            );
        }
        self.freed.retain(|&f| f < pfn || f >= end);
        self.held.insert(pfn, o);
    }
}

fn expect_refused(
    zones: &TestZones<'_>,
    pfn: Pfn,
    o: Order,
    want: Error,
) -> Result<(), TestCaseError> {
    let before = fingerprint(zones);
    prop_assert_eq!(zones.__free_pages(pfn, o), Err(want));
    prop_assert!(fingerprint(zones) == before, "refused free changed state");
    Ok(())
}

fn step(zones: &TestZones<'_>, model: &mut Model, op: Op) -> Result<(), TestCaseError> {
    match op {
        Op::Alloc { gfp, order: o } => {
            let gfp = gfp_of(gfp);
            let o = order(o);
            match zones.alloc_pages(gfp, o) {
                Ok(pfn) => {
                    let highest = zones.gfp_zone(gfp).unwrap();
                    let zone = zones.page_zone(pfn).unwrap();
                    prop_assert!(
                        zone <= highest,
                        "{:?} from {:?} above {:?}",
                        gfp,
                        zone,
                        highest
                    );
                    if highest == ZoneType::Dma {
                        prop_assert_eq!(zone, ZoneType::Dma);
                    }
                    prop_assert!(pfn.is_aligned_to_order(o.as_u32()));
                    model.take(pfn.as_usize(), o);
                }
                Err(Error::InvalidGfp { .. }) => {
                    prop_assert!(gfp_zone(gfp, false).is_err());
                }
                Err(err) => prop_assert_eq!(err, Error::NoMemory { order: o }),
            }
        }
        Op::Free { which } => {
            if let Some((pfn, o)) = model.nth(which) {
                prop_assert_eq!(zones.__free_pages(Pfn::new(pfn), o), Ok(()));
                model.held.remove(&pfn);
                model.freed.insert(pfn);
            }
        }
        Op::FreeWrongOrder {
            which,
            order: wrong,
        } => {
            if let Some((pfn, o)) = model.nth(which) {
                let wrong = order(wrong);
                let p = Pfn::new(pfn);
                let want = if wrong == o {
                    return Ok(());
                } else if wrong.as_u32() > 10 {
                    Error::OrderTooLarge {
                        order: wrong.as_u32(),
                        max: 10,
                    }
                } else if !p.is_aligned_to_order(wrong.as_u32()) {
                    Error::Misaligned {
                        pfn: p,
                        order: wrong,
                    }
                } else {
                    Error::WrongOrder {
                        pfn: p,
                        allocated: o,
                        freed: wrong,
                    }
                };
                expect_refused(zones, p, wrong, want)?;
            }
        }
        Op::FreeTail { which } => {
            if let Some((pfn, o)) = model.nth(which).filter(|&(_, o)| o.as_u32() > 0) {
                let tail = Pfn::new(pfn + o.pages() - 1);
                expect_refused(zones, tail, Order::ZERO, Error::NotAllocated { pfn: tail })?;
            }
        }
        Op::FreeAgain { which } => {
            let n = model.freed.len();
            if n > 0 {
                let pfn = Pfn::new(*model.freed.iter().nth(which % n).unwrap());
                expect_refused(zones, pfn, Order::ZERO, Error::DoubleFree { pfn })?;
            }
        }
        Op::FreeForeign { pfn } => {
            let pfn = Pfn::new(pfn);
            expect_refused(zones, pfn, Order::ZERO, Error::PfnOutOfRange { pfn })?;
        }
        Op::Split { which } => {
            if let Some((pfn, o)) = model.nth(which) {
                prop_assert_eq!(zones.split_page(Pfn::new(pfn), o), Ok(()));
                model.held.remove(&pfn);
                for i in 0..o.pages() {
                    model.held.insert(pfn + i, Order::ZERO);
                }
            }
        }
        Op::Drain => zones.drain_all_pages(),
        Op::Migrate { cpu } => set_cpu(cpu),
    }
    if let Err(broken) = zones.check() {
        return Err(TestCaseError::fail(format!("invariant broken: {broken}")));
    }
    Ok(())
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
        let mut machine = TestMachine::i386_scaled(FRAMES);
        let zones = machine.boot().unwrap();
        let boot = zones.zone_stats();
        let mut model = Model::default();
        set_cpu(0);
        for op in ops {
            step(&zones, &mut model, op)?;
        }
        for (&pfn, &o) in &model.held {
            prop_assert_eq!(zones.__free_pages(Pfn::new(pfn), o), Ok(()));
        }
        zones.drain_all_pages();
        prop_assert_eq!(zones.zone_stats(), boot, "free lists hold the maximal blocks again");
        prop_assert!(zones.check().is_ok());
    }
}
