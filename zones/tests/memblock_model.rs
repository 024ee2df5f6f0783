//! State-machine test of the boot allocator against a page-by-page model.
//!
//! The model keeps one "is RAM" and one "is reserved" bit per page of a small
//! machine and applies each operation with the documented rounding (RAM
//! inward, reservations and removals outward). After every step the memblock
//! must report exactly the model's maximal runs of RAM, reserved and free
//! pages, its totals and bounds; every allocation must land at the highest
//! aligned free fit below its limit, or fail exactly when the model finds none.

use kmm_api::{get_order, Error, Pfn, PhysAddr, PAGE_SIZE};
use kmm_zones::memblock::Memblock;
use proptest::prelude::*;
use std::ops::Range;

const PAGE: u64 = PAGE_SIZE as u64;
/// Pages the operations aim at; the model has room for ranges running past.
const PAGES: usize = 80;

#[derive(Clone, Debug)]
enum Op {
    Add(u64, u64),
    Remove(u64, u64),
    Reserve(u64, u64),
    Free(u64, u64),
    Alloc {
        size: u64,
        align_shift: u32,
        limit: u64,
    },
}

fn op() -> impl Strategy<Value = Op> {
    let span = PAGES as u64 * PAGE;
    // Byte-granular bases and sizes, so every rounding rule is exercised.
    let range = (0..span, 0..span / 4);
    prop_oneof![
        3 => range.clone().prop_map(|(b, s)| Op::Add(b, s)),
        1 => range.clone().prop_map(|(b, s)| Op::Remove(b, s)),
        2 => range.clone().prop_map(|(b, s)| Op::Reserve(b, s)),
        1 => range.prop_map(|(b, s)| Op::Free(b, s)),
        3 => (0..8 * PAGE, 0..4u32, 0..span + PAGE)
            .prop_map(|(size, align_shift, limit)| Op::Alloc { size, align_shift, limit }),
    ]
}

fn page(addr: u64) -> usize {
    (addr / PAGE) as usize
}

/// Whole pages inside `[base, base + size)`.
fn inward(base: u64, size: u64) -> Range<usize> {
    let start = page(base.div_ceil(PAGE) * PAGE);
    start..page(base + size).max(start)
}

/// Every page `[base, base + size)` touches.
fn outward(base: u64, size: u64) -> Range<usize> {
    if size == 0 {
        return 0..0;
    }
    page(base)..page((base + size).div_ceil(PAGE) * PAGE)
}

/// Maximal runs of set pages as `(start, end)` pairs.
fn runs(pages: impl Iterator<Item = bool>) -> Vec<(usize, usize)> {
    let mut out: Vec<(usize, usize)> = Vec::new();
    for (i, set) in pages.enumerate() {
        match out.last_mut() {
            Some(run) if set && run.1 == i => run.1 = i + 1,
            _ if set => out.push((i, i + 1)),
            _ => {}
        }
    }
    out
}

fn pfns(ranges: impl Iterator<Item = (Pfn, Pfn)>) -> Vec<(usize, usize)> {
    ranges.map(|(s, e)| (s.as_usize(), e.as_usize())).collect()
}

struct Model {
    memory: Vec<bool>,
    reserved: Vec<bool>,
}

impl Model {
    fn new() -> Self {
        Self {
            memory: vec![false; 2 * PAGES],
            reserved: vec![false; 2 * PAGES],
        }
    }

    fn alloc(&mut self, size: u64, align_shift: u32, limit: u64) -> Result<PhysAddr, Error> {
        if size == 0 {
            return Err(Error::ZeroSize);
        }
        let pages = page(size.div_ceil(PAGE) * PAGE);
        let align = 1usize << align_shift;
        let top = page(limit).min(self.memory.len());
        let free = |p: usize| self.memory[p] && !self.reserved[p];
        let found = (0..=top.saturating_sub(pages))
            .rev()
            .filter(|b| b % align == 0 && b + pages <= top)
            .find(|&b| (b..b + pages).all(free));
        match found {
            Some(b) => {
                self.reserved[b..b + pages].fill(true);
                Ok(PhysAddr::new(b as u64 * PAGE))
            }
            None => Err(Error::NoMemory {
                order: get_order(pages * PAGE_SIZE).expect("small sizes have an order"),
            }),
        }
    }

    fn check(&self, mb: &Memblock) {
        let ram = runs(self.memory.iter().copied());
        let free = self
            .memory
            .iter()
            .zip(&self.reserved)
            .map(|(&m, &r)| m && !r);
        assert_eq!(pfns(mb.memory_ranges()), ram);
        assert_eq!(
            pfns(mb.reserved_ranges()),
            runs(self.reserved.iter().copied())
        );
        assert_eq!(pfns(mb.free_ranges()), runs(free));
        assert_eq!(
            mb.memory_pages(),
            self.memory.iter().filter(|&&m| m).count()
        );
        assert_eq!(
            mb.reserved_pages(),
            self.reserved.iter().filter(|&&r| r).count()
        );
        let start = ram.first().map_or(0, |r| r.0);
        let end = ram.last().map_or(0, |r| r.1);
        assert_eq!(
            (mb.start_pfn(), mb.end_pfn()),
            (Pfn::new(start), Pfn::new(end))
        );
    }
}

/// A few cases under miri, which also cannot read the regression files.
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
    fn memblock_matches_a_page_model_after_every_step(ops in proptest::collection::vec(op(), 1..60)) {
        let (mut mb, mut model) = (Memblock::new(), Model::new());
        for op in ops {
            match op {
                Op::Add(b, s) => {
                    mb.add(PhysAddr::new(b), s).unwrap();
                    model.memory[inward(b, s)].fill(true);
                }
                Op::Remove(b, s) => {
                    mb.remove(PhysAddr::new(b), s).unwrap();
                    model.memory[outward(b, s)].fill(false);
                }
                Op::Reserve(b, s) => {
                    mb.reserve(PhysAddr::new(b), s).unwrap();
                    model.reserved[outward(b, s)].fill(true);
                }
                Op::Free(b, s) => {
                    mb.free(PhysAddr::new(b), s).unwrap();
                    model.reserved[outward(b, s)].fill(false);
                }
                Op::Alloc { size, align_shift, limit } => {
                    let got = mb.alloc(size, PAGE << align_shift, PhysAddr::new(limit));
                    prop_assert_eq!(got, model.alloc(size, align_shift, limit));
                }
            }
            model.check(&mb);
        }
    }
}
