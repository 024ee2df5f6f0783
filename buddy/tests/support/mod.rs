//! A reference model of the buddy and a harness that runs one operation on
//! both and checks every invariant after it. Shared by `tests/model.rs`
//! (proptest) and the `buddy` fuzz target, which includes this file.
//!
//! By default every step ends with the full O(frames) check; the fuzz
//! target, which needs speed to go deep, uses [`Harness::check_every`] to
//! run it every N steps (and at the end), the cheap checks after every
//! step: each result as the model predicts, the counters against the
//! model, and a refused operation leaving the buddy's storage and
//! counters byte for byte as they were.
//!
//! The model knows nothing of free lists: a frame is unreleased, free, or
//! inside one live (allocated) block, kept in a `BTreeMap` from head index to
//! order. Every result the buddy returns, success or error, is predicted from
//! that alone.

#![allow(dead_code)] // each includer uses a different subset

use kmm_api::{Error, Order, Pfn};
use kmm_buddy::{Buddy, BuddyFrame, FrameMeta, FrameTag, Links};
use std::collections::BTreeMap;

/// Owned storage for the harness (`Vec` is not `FrameMeta`: the crate has
/// no `alloc`).
#[derive(Clone, PartialEq, Debug)]
pub struct Frames(pub Vec<BuddyFrame>);

impl FrameMeta for Frames {
    fn tag(&self, idx: usize) -> FrameTag {
        self.0.as_slice().tag(idx)
    }
    fn set_tag(&mut self, idx: usize, tag: FrameTag) {
        self.0.as_mut_slice().set_tag(idx, tag)
    }
    fn links(&self, idx: usize) -> Links {
        self.0.as_slice().links(idx)
    }
    fn set_links(&mut self, idx: usize, links: Links) {
        self.0.as_mut_slice().set_links(idx, links)
    }
    fn capacity(&self) -> usize {
        self.0.len()
    }
}

/// A buddy over `[base, base + nr)` on owned storage, nothing released.
pub fn buddy(base: usize, nr: usize, max_order: u32) -> Buddy<Frames> {
    let frames = Frames(vec![BuddyFrame::EMPTY; nr]);
    Buddy::new(frames, Pfn::new(base), nr, order(max_order)).expect("valid buddy")
}

/// Everything a buddy holds, byte for byte: storage, per-order block
/// counts, free pages, managed pages.
#[derive(PartialEq, Debug)]
pub struct Snapshot(Frames, Vec<usize>, usize, usize);

pub fn snapshot(buddy: &Buddy<Frames>) -> Snapshot {
    let counts = (0..=Order::LIMIT)
        .map(|o| buddy.nr_free(order(o)))
        .collect();
    Snapshot(
        buddy.meta().clone(),
        counts,
        buddy.free_pages(),
        buddy.managed_pages(),
    )
}

/// The per-order free block counts, orders `0..=max`.
pub fn free_counts(buddy: &Buddy<Frames>, max: u32) -> Vec<usize> {
    (0..=max).map(|o| buddy.nr_free(order(o))).collect()
}

/// One step. Positions (`pos`) are mapped onto the range with a margin of
/// frames outside it on both sides; `pick` selects a live block.
#[derive(Clone, Copy, Debug)]
pub enum Op {
    Alloc {
        order: u32,
    },
    FreeLive {
        pick: usize,
    },
    FreeTwice {
        pick: usize,
    },
    FreeInside {
        pick: usize,
        offset: usize,
        order: u32,
    },
    Free {
        pos: u16,
        order: u32,
    },
    Split {
        pick: usize,
    },
    AllocRange {
        pos: u16,
        len: u16,
    },
    FreeRange {
        pos: u16,
        len: u16,
    },
    FreeLiveRange {
        pick: usize,
    },
    Release {
        pos: u16,
        len: u16,
    },
}

/// Frames outside the range, each side, that positions can reach.
const MARGIN: usize = 4;

/// What a frame is, as the model sees it.
#[derive(Clone, Copy, PartialEq, Debug)]
enum State {
    Unreleased,
    Free,
    Head(u32),
    Inside,
}

pub struct Harness {
    pub buddy: Buddy<Frames>,
    base: usize,
    nr: usize,
    max_order: u32,
    released: Vec<bool>,
    live: BTreeMap<usize, u32>,
    /// Frames released, and frames in live blocks (the model's counters,
    /// kept as `released` and `live` change).
    nr_released: usize,
    nr_live: usize,
    /// The buddy before an operation the model expects refused (a buffer
    /// reused from step to step).
    before: Snapshot,
    /// The full check runs after every `every`-th step: `to_full` more.
    every: usize,
    to_full: usize,
}

pub fn order(o: u32) -> Order {
    Order::new(o).expect("model orders stay within Order::LIMIT")
}

impl Harness {
    pub fn new(base: usize, nr: usize, max_order: u32) -> Self {
        Harness {
            buddy: buddy(base, nr, max_order),
            base,
            nr,
            max_order,
            released: vec![false; nr],
            live: BTreeMap::new(),
            nr_released: 0,
            nr_live: 0,
            before: Snapshot(Frames(Vec::new()), Vec::new(), 0, 0),
            every: 1,
            to_full: 1,
        }
    }

    /// Runs the full O(frames) check ([`Harness::check`]) after every
    /// `every`-th step only (and in [`Harness::finish`]); the other steps
    /// end with the cheap checks of [`Harness::check_counters`].
    pub fn check_every(mut self, every: usize) -> Self {
        self.every = every.max(1);
        self.to_full = self.every;
        self
    }

    /// Records a new live block of order `o` at index `idx`.
    fn add_live(&mut self, idx: usize, o: u32) {
        if let Some(old) = self.live.insert(idx, o) {
            self.nr_live -= 1 << old;
        }
        self.nr_live += 1 << o;
    }

    /// Forgets the live block at index `idx`, if any.
    fn remove_live(&mut self, idx: usize) {
        if let Some(o) = self.live.remove(&idx) {
            self.nr_live -= 1 << o;
        }
    }

    /// Releases the frames with indices `[first, last)` and checks.
    pub fn release_frames(&mut self, first: usize, last: usize) {
        self.release(self.base + first, self.base + last);
        self.checks();
    }

    fn pfn_at(&self, pos: u16) -> usize {
        self.base.saturating_sub(MARGIN) + pos as usize % (self.nr + 2 * MARGIN)
    }

    fn pick(&self, pick: usize) -> Option<(usize, u32)> {
        let n = self.live.len();
        (n > 0).then(|| self.live.iter().nth(pick % n).map(|(&h, &o)| (h, o)))?
    }

    fn state(&self, idx: usize) -> State {
        if !self.released[idx] {
            return State::Unreleased;
        }
        match self.live.range(..=idx).next_back() {
            Some((&head, &o)) if head == idx => State::Head(o),
            Some((&head, &o)) if idx < head + (1 << o) => State::Inside,
            _ => State::Free,
        }
    }

    /// [`Harness::state`] of every frame, in one pass (live blocks do not
    /// overlap).
    fn states(&self) -> Vec<State> {
        let mut states: Vec<State> = self
            .released
            .iter()
            .map(|&r| if r { State::Free } else { State::Unreleased })
            .collect();
        for (&head, &o) in &self.live {
            states[head] = State::Head(o);
            for state in &mut states[head + 1..head + (1 << o)] {
                if *state != State::Unreleased {
                    *state = State::Inside;
                }
            }
        }
        states
    }

    fn canonical_order(&self, idx: usize, last: usize) -> u32 {
        let align = (self.base + idx).trailing_zeros();
        let fits = usize::BITS - 1 - (last - idx).leading_zeros();
        align.min(fits).min(self.max_order)
    }

    /// Runs `op` on the buddy and the model, then checks (everything, or
    /// the cheap checks between two full ones: [`Harness::check_every`]).
    pub fn apply(&mut self, op: Op) {
        match op {
            Op::Alloc { order } => self.alloc(order),
            Op::FreeLive { pick } => {
                if let Some((head, o)) = self.pick(pick) {
                    self.free(self.base + head, o);
                }
            }
            Op::FreeTwice { pick } => {
                if let Some((head, o)) = self.pick(pick) {
                    self.free(self.base + head, o);
                    self.free(self.base + head, o);
                }
            }
            Op::FreeInside {
                pick,
                offset,
                order,
            } => {
                if let Some((head, o)) = self.pick(pick) {
                    self.free(self.base + head + offset % (1 << o), order);
                }
            }
            Op::Free { pos, order } => self.free(self.pfn_at(pos), order),
            Op::Split { pick } => {
                if let Some((head, o)) = self.pick(pick) {
                    self.split(self.base + head, o);
                }
            }
            Op::AllocRange { pos, len } => {
                let start = self.pfn_at(pos);
                self.alloc_range(start, start + len as usize);
            }
            Op::FreeRange { pos, len } => {
                let start = self.pfn_at(pos);
                self.free_range(start, start + len as usize);
            }
            Op::FreeLiveRange { pick } => {
                if let Some((head, o)) = self.pick(pick) {
                    let start = self.base + head;
                    self.free_range(start, start + (1 << o));
                }
            }
            Op::Release { pos, len } => {
                let start = self.pfn_at(pos);
                self.release(start, start + len as usize);
            }
        }
        self.checks();
    }

    /// The checks after a step: the full ones after every `every`-th.
    fn checks(&mut self) {
        self.to_full -= 1;
        if self.to_full == 0 {
            self.to_full = self.every;
            self.check();
        } else {
            self.check_counters();
        }
    }

    fn alloc(&mut self, o: u32) {
        self.save();
        let got = self.buddy.alloc(order(o));
        if o > self.max_order {
            assert!(matches!(got, Err(Error::OrderTooLarge { .. })), "{got:?}");
        } else if got.is_err() {
            // Refused: only when no aligned block of order `o` is free (the
            // O(frames) search runs only here: a block handed out is
            // checked free below, which proves one fit).
            assert!(!self.fits(o), "{got:?} though a block fits");
            assert_eq!(got, Err(Error::NoMemory { order: order(o) }));
        } else {
            let pfn = got.expect("checked above").as_usize();
            let idx = pfn - self.base;
            assert!(
                pfn & ((1 << o) - 1) == 0 && idx + (1 << o) <= self.nr,
                "bad block {pfn:#x}"
            );
            assert!(
                (idx..idx + (1 << o)).all(|f| self.state(f) == State::Free),
                "overlap at {pfn:#x}"
            );
            self.add_live(idx, o);
            return;
        }
        self.assert_unchanged();
    }

    /// Whether some aligned block of order `o` inside the range is all free.
    fn fits(&self, o: u32) -> bool {
        let size = 1usize << o;
        let first = self.base.div_ceil(size) * size;
        (first..self.base + self.nr)
            .step_by(size)
            .take_while(|&pfn| pfn + size <= self.base + self.nr)
            .any(|pfn| {
                (pfn - self.base..pfn - self.base + size).all(|f| self.state(f) == State::Free)
            })
    }

    /// The error a free (or split) of `(pfn, o)` must give, `None` if valid.
    fn free_error(&self, pfn: usize, o: u32) -> Option<Error> {
        let p = Pfn::new(pfn);
        let idx = match pfn.checked_sub(self.base) {
            Some(idx) if idx < self.nr => idx,
            _ => return Some(Error::PfnOutOfRange { pfn: p }),
        };
        if o > self.max_order {
            return Some(Error::OrderTooLarge {
                order: o,
                max: self.max_order,
            });
        }
        if pfn & ((1 << o) - 1) != 0 {
            return Some(Error::Misaligned {
                pfn: p,
                order: order(o),
            });
        }
        match self.state(idx) {
            State::Head(a) if a == o => None,
            State::Head(a) => Some(Error::WrongOrder {
                pfn: p,
                allocated: order(a),
                freed: order(o),
            }),
            State::Free => Some(Error::DoubleFree { pfn: p }),
            State::Inside | State::Unreleased => Some(Error::NotAllocated { pfn: p }),
        }
    }

    fn free(&mut self, pfn: usize, o: u32) {
        let expected = self.free_error(pfn, o);
        if expected.is_some() {
            self.save();
        }
        let got = self.buddy.free(Pfn::new(pfn), order(o));
        match expected {
            None => {
                assert_eq!(got, Ok(()));
                self.remove_live(pfn - self.base);
            }
            Some(err) => {
                assert_eq!(got, Err(err));
                self.assert_unchanged();
            }
        }
    }

    fn split(&mut self, pfn: usize, o: u32) {
        assert_eq!(self.free_error(pfn, o), None);
        self.buddy
            .split(Pfn::new(pfn), order(o))
            .expect("split of a live block");
        let head = pfn - self.base;
        self.remove_live(head);
        for idx in head..head + (1 << o) {
            self.add_live(idx, 0);
        }
    }

    /// `[start, end)` as indices, or the error the buddy must give.
    fn range(&self, start: usize, end: usize) -> Result<(usize, usize), Error> {
        let first = match start.checked_sub(self.base) {
            Some(first) if first <= self.nr => first,
            _ => {
                return Err(Error::PfnOutOfRange {
                    pfn: Pfn::new(start),
                })
            }
        };
        match end.checked_sub(self.base) {
            Some(last) if last >= first && last <= self.nr => Ok((first, last)),
            _ => Err(Error::PfnOutOfRange { pfn: Pfn::new(end) }),
        }
    }

    fn alloc_range(&mut self, start: usize, end: usize) {
        let expected = self.range(start, end).and_then(|(first, last)| {
            match (first..last).find(|&f| self.state(f) != State::Free) {
                Some(busy) => Err(Error::Busy {
                    pfn: Pfn::new(self.base + busy),
                }),
                None => Ok((first, last)),
            }
        });
        if expected.is_err() {
            self.save();
        }
        let got = self.buddy.alloc_range(Pfn::new(start), Pfn::new(end));
        match expected {
            Ok((first, last)) => {
                assert_eq!(got, Ok(()));
                let mut idx = first;
                while idx < last {
                    let o = self.canonical_order(idx, last);
                    assert_eq!(
                        self.buddy.allocated_order(Pfn::new(self.base + idx)),
                        Some(order(o))
                    );
                    self.add_live(idx, o);
                    idx += 1 << o;
                }
            }
            Err(err) => {
                assert_eq!(got, Err(err));
                self.assert_unchanged();
            }
        }
    }

    fn free_range(&mut self, start: usize, end: usize) {
        let expected = self.free_range_blocks(start, end);
        if expected.is_err() {
            self.save();
        }
        let got = self.buddy.free_range(Pfn::new(start), Pfn::new(end));
        match expected {
            Ok(heads) => {
                assert_eq!(got, Ok(()));
                for head in heads {
                    self.remove_live(head);
                }
            }
            Err(err) => {
                assert_eq!(got, Err(err));
                self.assert_unchanged();
            }
        }
    }

    /// The live blocks tiling `[start, end)`, or the error the buddy must give.
    fn free_range_blocks(&self, start: usize, end: usize) -> Result<Vec<usize>, Error> {
        let (first, last) = self.range(start, end)?;
        let mut heads = Vec::new();
        let mut idx = first;
        while idx < last {
            let pfn = Pfn::new(self.base + idx);
            match self.state(idx) {
                State::Head(o) if idx + (1 << o) <= last => {
                    heads.push(idx);
                    idx += 1 << o;
                }
                State::Head(o) => {
                    let freed = order(self.canonical_order(idx, last));
                    return Err(Error::WrongOrder {
                        pfn,
                        allocated: order(o),
                        freed,
                    });
                }
                State::Free => return Err(Error::DoubleFree { pfn }),
                State::Inside | State::Unreleased => return Err(Error::NotAllocated { pfn }),
            }
        }
        Ok(heads)
    }

    fn release(&mut self, start: usize, end: usize) {
        let expected = self.range(start, end).and_then(|(first, last)| {
            match (first..last).find(|&f| self.released[f]) {
                Some(f) => Err(Error::DoubleFree {
                    pfn: Pfn::new(self.base + f),
                }),
                None => Ok((first, last)),
            }
        });
        if expected.is_err() {
            self.save();
        }
        let got = self.buddy.release_range(Pfn::new(start), Pfn::new(end));
        match expected {
            Ok((first, last)) => {
                assert_eq!(got, Ok(last - first));
                self.released[first..last].fill(true);
                self.nr_released += last - first;
            }
            Err(err) => {
                assert_eq!(got, Err(err));
                self.assert_unchanged();
            }
        }
    }

    /// Saves the buddy, byte for byte, in `before` (reusing its buffers).
    fn save(&mut self) {
        let Snapshot(frames, counts, free, managed) = &mut self.before;
        frames.0.clone_from(&self.buddy.meta().0);
        counts.clear();
        counts.extend((0..=Order::LIMIT).map(|o| self.buddy.nr_free(order(o))));
        *free = self.buddy.free_pages();
        *managed = self.buddy.managed_pages();
    }

    /// Requires the buddy as [`Harness::save`] saved it.
    fn assert_unchanged(&self) {
        let Snapshot(frames, counts, free, managed) = &self.before;
        assert!(
            self.buddy.meta() == frames
                && (0..=Order::LIMIT).all(|o| self.buddy.nr_free(order(o)) == counts[o as usize])
                && self.buddy.free_pages() == *free
                && self.buddy.managed_pages() == *managed,
            "a refused operation changed the buddy"
        );
    }

    /// The cheap invariants, O(orders): the buddy's counters against the
    /// model's, and the per-order free block counts adding up to its free
    /// pages.
    fn check_counters(&self) {
        assert_eq!(self.buddy.managed_pages(), self.nr_released);
        assert_eq!(self.buddy.free_pages() + self.nr_live, self.nr_released);
        let listed: usize = (0..=Order::LIMIT)
            .map(|o| self.buddy.nr_free(order(o)) << o)
            .sum();
        assert_eq!(listed, self.buddy.free_pages(), "free lists vs free pages");
    }

    /// The full invariants, O(frames): the buddy's own checker, counters
    /// against the model, and every frame's state against the model.
    fn check(&self) {
        if let Err(broken) = self.buddy.check() {
            panic!("invariant broken: {broken}");
        }
        let managed = self.released.iter().filter(|&&r| r).count();
        let live: usize = self.live.values().map(|&o| 1usize << o).sum();
        assert_eq!((self.nr_released, self.nr_live), (managed, live));
        self.check_counters();
        let mut end_of_last = 0;
        for (&head, &o) in &self.live {
            assert!(head >= end_of_last, "live blocks overlap at index {head}");
            end_of_last = head + (1 << o);
        }
        for (idx, state) in self.states().into_iter().enumerate() {
            let pfn = Pfn::new(self.base + idx);
            assert_eq!(
                self.buddy.is_free(pfn),
                state == State::Free,
                "is_free({pfn})"
            );
            let head = match state {
                State::Head(o) => Some(order(o)),
                _ => None,
            };
            assert_eq!(
                self.buddy.allocated_order(pfn),
                head,
                "allocated_order({pfn})"
            );
        }
    }

    /// Frees every live block, then checks the free lists hold exactly the
    /// canonical blocks of each run of released frames.
    pub fn finish(mut self) {
        let live: Vec<(usize, u32)> = self.live.iter().map(|(&h, &o)| (h, o)).collect();
        for (head, o) in live {
            self.free(self.base + head, o);
        }
        self.check();
        let mut expected = Vec::new();
        let mut idx = 0;
        while idx < self.nr {
            if !self.released[idx] {
                idx += 1;
                continue;
            }
            let run_end = (idx..self.nr)
                .find(|&f| !self.released[f])
                .unwrap_or(self.nr);
            while idx < run_end {
                let o = self.canonical_order(idx, run_end);
                expected.push((idx, o));
                idx += 1 << o;
            }
        }
        let heads: Vec<(usize, u32)> = (0..self.nr)
            .filter_map(|idx| match self.buddy.meta().tag(idx) {
                FrameTag::Free(o) => Some((idx, o.as_u32())),
                _ => None,
            })
            .collect();
        assert_eq!(
            heads, expected,
            "free blocks are not the maximal aligned blocks"
        );
    }
}
