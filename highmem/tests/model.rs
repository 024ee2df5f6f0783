//! A proptest model of the pool and one CPU's kmap_local stack against a
//! plain reference: after every step the `pkmap_count` of each slot, the
//! page → slot map (`page_address`), `last_pkmap_nr`, the counters and the
//! kmap_local stack equal the reference's, and `check()` is clean.
//!
//! The reference is Linux's algorithm written as directly as possible:
//! `map_new_virtual` walks `last_pkmap_nr` forward, flushing every count-1
//! slot on the wrap; a hit raises the count; kunmap without a user is
//! refused.

use kmm_api::VirtAddr;
use kmm_highmem::testing::{TestMachine, WaitMode};
use kmm_highmem::{HighmemError, SlotState, KM_MAX_IDX};
use proptest::prelude::*;

const PAGES: usize = 12;

#[derive(Clone, Debug)]
enum Op {
    Kmap(usize),
    Kunmap(usize),
    FlushUnused,
    KmapLocal(usize),
    /// Unmap entry `i` of the local stack (counted from the bottom):
    /// out of order unless it is the top; past the top, a double unmap.
    KunmapLocal(usize),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (0..PAGES).prop_map(Op::Kmap),
        3 => (0..PAGES).prop_map(Op::Kunmap),
        1 => Just(Op::FlushUnused),
        2 => (0..PAGES).prop_map(Op::KmapLocal),
        2 => (0..KM_MAX_IDX + 1).prop_map(Op::KunmapLocal),
    ]
}

/// The reference pool.
struct Reference {
    count: Vec<u32>,
    page: Vec<Option<usize>>,
    last: usize,
    maps: u64,
    hits: u64,
    flushes: u64,
    /// Pages on the local stack, bottom first.
    local: Vec<usize>,
}

impl Reference {
    fn new(slots: usize) -> Self {
        Reference {
            count: vec![0; slots],
            page: vec![None; slots],
            last: 0,
            maps: 0,
            hits: 0,
            flushes: 0,
            local: Vec::new(),
        }
    }

    fn slot_of(&self, page: usize) -> Option<usize> {
        self.page.iter().position(|&p| p == Some(page))
    }

    fn flush(&mut self) {
        let mut any = false;
        for nr in 0..self.count.len() {
            if self.count[nr] == 1 {
                self.count[nr] = 0;
                self.page[nr] = None;
                any = true;
            }
        }
        if any {
            self.flushes += 1;
        }
    }

    /// The slot kmap gives, or `None` for a full pool.
    fn kmap(&mut self, page: usize) -> Option<usize> {
        if let Some(nr) = self.slot_of(page) {
            self.count[nr] += 1;
            self.maps += 1;
            self.hits += 1;
            return Some(nr);
        }
        let n = self.count.len();
        let mut left = n;
        loop {
            self.last = (self.last + 1) % n;
            if self.last == 0 {
                self.flush();
                left = n;
            }
            if self.count[self.last] == 0 {
                break;
            }
            left -= 1;
            if left == 0 {
                return None;
            }
        }
        self.count[self.last] = 2;
        self.page[self.last] = Some(page);
        self.maps += 1;
        Some(self.last)
    }

    fn kunmap(&mut self, page: usize) -> bool {
        match self.slot_of(page) {
            Some(nr) if self.count[nr] >= 2 => {
                self.count[nr] -= 1;
                true
            }
            _ => false,
        }
    }
}

fn run(slots: usize, ops: &[Op]) -> Result<(), TestCaseError> {
    let m = TestMachine::with_pool(1, 2, PAGES, slots, WaitMode::Futex);
    let hm = m.highmem();
    let pfn = |i: usize| m.first_highmem().add(i);
    let mut r = Reference::new(slots);
    let mut local_addrs: Vec<VirtAddr> = Vec::new();
    for op in ops {
        match *op {
            Op::Kmap(i) => {
                // SAFETY: the test holds every highmem frame; each kmap it
                // makes is undone at most once (the reference's count).
                let got = unsafe { hm.kmap_try_pfn(pfn(i)) };
                match r.kmap(i) {
                    Some(nr) => prop_assert_eq!(got, Ok(hm.pkmap_addr(nr).unwrap())),
                    None => prop_assert_eq!(got, Err(HighmemError::PoolFull { slots })),
                }
            }
            Op::Kunmap(i) => {
                // SAFETY: undoes one of the test's kmaps of the frame, or
                // is refused (no user left).
                let got = unsafe { hm.kunmap_pfn(pfn(i)) };
                if r.kunmap(i) {
                    prop_assert_eq!(got, Ok(()));
                } else {
                    prop_assert_eq!(got, Err(HighmemError::NotMapped { pfn: pfn(i) }));
                }
            }
            Op::FlushUnused => {
                hm.kmap_flush_unused();
                r.flush();
            }
            Op::KmapLocal(i) => {
                // SAFETY: the test holds the frame and unmaps in the
                // order the model checks (out of order is refused).
                let got = unsafe { hm.kmap_local_pfn(pfn(i)) };
                if r.local.len() < KM_MAX_IDX {
                    let want = hm.kmap_local_addr(0, r.local.len()).unwrap();
                    prop_assert_eq!(got, Ok(want));
                    r.local.push(i);
                    local_addrs.push(want);
                } else {
                    prop_assert_eq!(got, Err(HighmemError::LocalStackFull { cpu: 0 }));
                }
            }
            Op::KunmapLocal(e) => {
                let addr = hm
                    .kmap_local_addr(0, e)
                    .unwrap_or(VirtAddr::new(0xdead_0000));
                // SAFETY: unmaps the test's own mapping or is refused.
                let got = unsafe { hm.kunmap_local_addr(addr) };
                if e + 1 == r.local.len() {
                    prop_assert_eq!(got, Ok(()));
                    r.local.pop();
                    local_addrs.pop();
                } else {
                    prop_assert_eq!(
                        got,
                        Err(HighmemError::NotTopOfStack {
                            addr,
                            top: local_addrs.last().copied()
                        })
                    );
                }
            }
        }
        // The state, slot by slot and page by page.
        for nr in 0..slots {
            let want = match (r.count[nr], r.page[nr]) {
                (0, _) => SlotState::Free,
                (1, Some(p)) => SlotState::Unflushed(pfn(p)),
                (n, Some(p)) => SlotState::Mapped {
                    pfn: pfn(p),
                    users: n - 1,
                },
                _ => unreachable!(),
            };
            prop_assert_eq!(hm.pkmap_slot(nr), Some(want), "slot {}", nr);
        }
        for i in 0..PAGES {
            let want = r.slot_of(i).map(|nr| hm.pkmap_addr(nr).unwrap());
            prop_assert_eq!(hm.page_address_pfn(pfn(i)), want, "page {}", i);
        }
        prop_assert_eq!(hm.last_pkmap_nr(), r.last);
        let s = hm.stats();
        prop_assert_eq!((s.maps, s.hits, s.flushes), (r.maps, r.hits, r.flushes));
        prop_assert_eq!(hm.local_depth(0), Some(r.local.len()));
        prop_assert_eq!(m.platform().is_pinned(0), !r.local.is_empty());
        if let Err(e) = hm.check() {
            return Err(TestCaseError::fail(e));
        }
    }
    // Unwind the local stack so the platform's pins are balanced.
    while let Some(addr) = local_addrs.pop() {
        // SAFETY: the test's own mappings, top first.
        unsafe { hm.kunmap_local_addr(addr) }.unwrap();
    }
    Ok(())
}

/// 256 cases; 4 under miri, which cannot write regression files.
fn config() -> ProptestConfig {
    let mut config = ProptestConfig::with_cases(if cfg!(miri) { 4 } else { 256 });
    if cfg!(miri) {
        config.failure_persistence = None;
    }
    config
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn the_pool_and_a_kmap_local_stack_match_the_reference(
        slots in 1usize..6,
        ops in proptest::collection::vec(op(), 1..if cfg!(miri) { 20 } else { 120 }),
    ) {
        run(slots, &ops)?;
    }
}
