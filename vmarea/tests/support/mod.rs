//! A reference model of the area allocator and a harness that runs one
//! operation on both and checks them against each other. Shared by
//! `tests/model.rs` (proptest) and the `vmarea` fuzz target, which includes
//! this file.
//!
//! The model is a sorted list of intervals, each free, busy, unpurged or
//! pooled, searched linearly: an allocation takes the lowest pooled
//! interval of exactly its size (guard included) if its start has the
//! alignment asked, else the lowest fit, the first free interval, in
//! address order, where the aligned start plus the size ends inside it. A
//! purge first turns the lowest quarter of each size's pooled intervals
//! (all of them for a full decay) free, then each unpurged interval pooled
//! if it has at most `MAX_VA_SIZE_PAGES` pages (free for a full decay),
//! free otherwise. Every
//! result the allocator returns, success or error, is predicted from that
//! alone, except a node-source failure, after which the allocator must be
//! exactly as it was.

#![allow(dead_code)] // each includer uses a different subset

use kmm_api::{TlbFlush, VirtAddr, GFP_KERNEL, PAGE_SIZE};
use kmm_vmarea::testing::{BufferSource, RecordingTlb};
use kmm_vmarea::{
    lazy_max_pages, VmFlags, VmapArea, VmapAreas, VmapStats, VmareaError, MAX_VA_SIZE_PAGES,
};

/// What an interval of the model holds.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum State {
    Free,
    Busy(VmFlags),
    /// Freed, awaiting the purge; adjacent unpurged intervals merge.
    Unpurged,
    /// Purged, in the pool of its size; never merged.
    Pooled,
}

/// The reference: intervals tiling `[start, end)` in address order, with
/// adjacent free intervals, and adjacent unpurged ones, always joined.
#[derive(Clone, Debug)]
pub struct Model {
    pub intervals: Vec<(usize, usize, State)>,
    pub start: usize,
    pub end: usize,
    pub lazy_pages: usize,
    pub lazy_max: usize,
    pub lazy_areas: u64,
    pub purged_areas: u64,
    pub purges: u64,
}

impl Model {
    pub fn new(start: usize, end: usize, nr_cpus: usize) -> Self {
        Model {
            intervals: vec![(start, end, State::Free)],
            start,
            end,
            lazy_pages: 0,
            lazy_max: lazy_max_pages(nr_cpus, end - start),
            lazy_areas: 0,
            purged_areas: 0,
            purges: 0,
        }
    }

    /// Where `alloc` must put the area, or the error it must return.
    pub fn alloc(
        &mut self,
        size: usize,
        align: usize,
        flags: VmFlags,
    ) -> Result<Span, VmareaError> {
        let need = self.reserved(size, align, flags)?;
        let pooled = self
            .intervals
            .iter()
            .position(|&(start, end, state)| state == State::Pooled && end - start == need);
        if let Some(index) = pooled.filter(|&i| self.intervals[i].0 % align == 0) {
            let start = self.intervals[index].0;
            self.intervals[index].2 = State::Busy(flags);
            return Ok(self.area(start).expect("just taken"));
        }
        let (index, addr, need) = self.place(size, align, flags)?;
        let (start, end, _) = self.intervals[index];
        let mut pieces = Vec::new();
        if start < addr {
            pieces.push((start, addr, State::Free));
        }
        pieces.push((addr, addr + need, State::Busy(flags)));
        if addr + need < end {
            pieces.push((addr + need, end, State::Free));
        }
        self.intervals.splice(index..=index, pieces);
        Ok(self.area(addr).expect("just placed"))
    }

    /// The interval index, address and reserved bytes of the lowest fit.
    pub fn place(
        &self,
        size: usize,
        align: usize,
        flags: VmFlags,
    ) -> Result<(usize, usize, usize), VmareaError> {
        let need = self.reserved(size, align, flags)?;
        for (index, &(start, end, state)) in self.intervals.iter().enumerate() {
            if state != State::Free {
                continue;
            }
            let Some(addr) = start.checked_add(align - 1).map(|a| a & !(align - 1)) else {
                continue;
            };
            if addr.checked_add(need).is_some_and(|e| e <= end) {
                return Ok((index, addr, need));
            }
        }
        Err(VmareaError::NoSpace {
            size: need,
            align,
            lazy_pages: self.lazy_pages,
        })
    }

    /// The bytes an allocation reserves (guard included), or why it is
    /// refused before any search.
    fn reserved(&self, size: usize, align: usize, flags: VmFlags) -> Result<usize, VmareaError> {
        if size == 0 {
            return Err(VmareaError::ZeroSize);
        }
        if !align.is_power_of_two() || align < PAGE_SIZE {
            return Err(VmareaError::BadAlignment { align });
        }
        let guard = if flags.contains(VmFlags::NO_GUARD) {
            0
        } else {
            PAGE_SIZE
        };
        size.checked_add(PAGE_SIZE - 1)
            .map(|s| s / PAGE_SIZE * PAGE_SIZE)
            .and_then(|s| s.checked_add(guard))
            .filter(|&need| need <= self.end - self.start)
            .ok_or(VmareaError::SizeTooLarge { size })
    }

    /// The live area starting at `addr`.
    pub fn area(&self, addr: usize) -> Option<Span> {
        self.intervals
            .iter()
            .find_map(|&(start, end, state)| match state {
                State::Busy(flags) if start == addr => Some(area(start, end, flags)),
                _ => None,
            })
    }

    /// What `free(addr)` must return (the area and the flush of the purge
    /// it triggers), applied to the model.
    pub fn free(&mut self, addr: usize) -> Result<(Span, Option<TlbFlush>), VmareaError> {
        let va = VirtAddr::new(addr);
        if addr % PAGE_SIZE != 0 {
            return Err(VmareaError::Misaligned { addr: va });
        }
        if addr < self.start || addr >= self.end {
            return Err(VmareaError::OutOfRange { addr: va });
        }
        let index = self
            .intervals
            .iter()
            .position(|&(start, end, _)| start <= addr && addr < end)
            .expect("the intervals tile the range");
        let (start, end, state) = self.intervals[index];
        let flags = match state {
            State::Busy(flags) if start == addr => flags,
            State::Busy(_) => {
                return Err(VmareaError::Interior {
                    addr: va,
                    area: VirtAddr::new(start),
                })
            }
            State::Unpurged => return Err(VmareaError::AlreadyFreed { addr: va }),
            State::Free | State::Pooled => return Err(VmareaError::NotAllocated { addr: va }),
        };
        self.intervals[index].2 = State::Unpurged;
        self.intervals = merged(&self.intervals, State::Unpurged);
        self.lazy_pages += (end - start) / PAGE_SIZE;
        self.lazy_areas += 1;
        let flush = if self.lazy_pages > self.lazy_max {
            self.purge(false)
        } else {
            None
        };
        Ok((area(start, end, flags), flush))
    }

    /// What `purge` (`full`: `reclaim_and_purge`) must return, applied to
    /// the model.
    pub fn purge(&mut self, full: bool) -> Option<TlbFlush> {
        for pages in 1..=MAX_VA_SIZE_PAGES {
            let of_size: Vec<usize> = (0..self.intervals.len())
                .filter(|&i| {
                    let (start, end, state) = self.intervals[i];
                    state == State::Pooled && end - start == pages * PAGE_SIZE
                })
                .collect();
            let n_decay = if full {
                of_size.len()
            } else {
                of_size.len() >> 2
            };
            for &i in &of_size[..n_decay] {
                self.intervals[i].2 = State::Free;
            }
        }
        self.intervals = merged(&self.intervals, State::Free);
        let unpurged = || self.intervals.iter().filter(|i| i.2 == State::Unpurged);
        let low = unpurged().map(|i| i.0).min()?;
        let high = unpurged().map(|i| i.1).max()?;
        for interval in &mut self.intervals {
            if interval.2 == State::Unpurged {
                let poolable = interval.1 - interval.0 <= MAX_VA_SIZE_PAGES * PAGE_SIZE;
                interval.2 = if poolable && !full {
                    State::Pooled
                } else {
                    State::Free
                };
            }
        }
        self.intervals = merged(&self.intervals, State::Free);
        self.lazy_pages = 0;
        self.purged_areas += self.lazy_areas;
        self.lazy_areas = 0;
        self.purges += 1;
        Some(TlbFlush::new(VirtAddr::new(low), VirtAddr::new(high)))
    }

    /// The intervals in one state class, as the allocator lists them.
    pub fn ranges(&self, pick: fn(State) -> Option<VmFlags>) -> Vec<Span> {
        self.intervals
            .iter()
            .filter_map(|&(start, end, state)| pick(state).map(|flags| area(start, end, flags)))
            .collect()
    }

    pub fn live_starts(&self) -> Vec<usize> {
        self.intervals
            .iter()
            .filter(|i| matches!(i.2, State::Busy(_)))
            .map(|i| i.0)
            .collect()
    }
}

/// The intervals with adjacent ones in `state` joined.
fn merged(intervals: &[(usize, usize, State)], state: State) -> Vec<(usize, usize, State)> {
    let mut joined: Vec<(usize, usize, State)> = Vec::new();
    for &(start, end, this) in intervals {
        match joined.last_mut() {
            Some(last) if last.2 == state && this == state => last.1 = end,
            _ => joined.push((start, end, this)),
        }
    }
    joined
}

pub fn busy(state: State) -> Option<VmFlags> {
    match state {
        State::Busy(flags) => Some(flags),
        _ => None,
    }
}

pub fn unpurged(state: State) -> Option<VmFlags> {
    (state == State::Unpurged).then_some(VmFlags::empty())
}

pub fn pooled(state: State) -> Option<VmFlags> {
    (state == State::Pooled).then_some(VmFlags::empty())
}

pub fn free_state(state: State) -> Option<VmFlags> {
    (state == State::Free).then_some(VmFlags::empty())
}

/// An area as the model and the comparisons see it: start, end, flags.
pub type Span = (usize, usize, VmFlags);

fn area(start: usize, end: usize, flags: VmFlags) -> Span {
    (start, end, flags)
}

/// The span of an area the allocator returned.
pub fn span(area: VmapArea) -> Span {
    (area.start().as_usize(), area.end().as_usize(), area.flags())
}

/// Everything observable about an allocator, to compare before and after
/// a refused operation. Only `metadata_bytes` is left out: a refused
/// allocation may keep a chunk it took as spare capacity.
#[derive(Clone, PartialEq, Debug)]
pub struct Snapshot {
    pub areas: Vec<Span>,
    pub unpurged: Vec<Span>,
    pub free: Vec<Span>,
    pub pooled: Vec<Span>,
    pub stats: VmapStats,
}

pub fn snapshot<S: kmm_api::ObjectSource>(areas: &VmapAreas<S>) -> Snapshot {
    let mut stats = areas.stats();
    stats.metadata_bytes = 0;
    Snapshot {
        areas: areas.areas().map(span).collect(),
        unpurged: areas.unpurged_areas().map(span).collect(),
        free: areas.free_blocks().map(span).collect(),
        pooled: areas.pooled_areas().map(span).collect(),
        stats,
    }
}

/// One operation of the model test and the fuzz target.
#[derive(Clone, Debug)]
pub enum Op {
    /// Allocate `size` bytes aligned to `align`, with or without guard.
    Alloc {
        size: usize,
        align: usize,
        no_guard: bool,
    },
    /// Allocate while the node source fails after `successes` objects.
    AllocStarved { size: usize, successes: usize },
    /// Free the `pick`-th live area (modulo their number).
    FreeLive { pick: usize },
    /// Free the `pick`-th live area plus `offset` bytes (modulo its size).
    FreeInside { pick: usize, offset: usize },
    /// Free an arbitrary address: offset from the range start, wrapping.
    Free { offset: usize },
    /// Purge now.
    Purge,
    /// Purge now with a full decay of the pools.
    ReclaimAndPurge,
}

/// The allocator and its model side by side.
pub struct Harness {
    pub areas: VmapAreas<BufferSource>,
    pub model: Model,
    pub tlb: RecordingTlb,
    check_every: usize,
    steps: usize,
}

impl Harness {
    /// An allocator over `pages` pages at page `base_page`, nodes in
    /// objects of `object_size` bytes.
    pub fn new(base_page: usize, pages: usize, nr_cpus: usize, object_size: usize) -> Self {
        let start = base_page * PAGE_SIZE;
        let end = start + pages * PAGE_SIZE;
        let areas = VmapAreas::new(
            BufferSource::new(object_size, 2048),
            VirtAddr::new(start),
            VirtAddr::new(end),
            nr_cpus,
        )
        .expect("a valid range");
        Harness {
            areas,
            model: Model::new(start, end, nr_cpus),
            tlb: RecordingTlb::default(),
            check_every: 1,
            steps: 0,
        }
    }

    /// Runs the full O(n) comparison every `steps` steps instead of after
    /// each one (the fuzz target's cadence).
    pub fn check_every(mut self, steps: usize) -> Self {
        self.check_every = steps.max(1);
        self
    }

    pub fn apply(&mut self, op: Op) {
        match op {
            Op::Alloc {
                size,
                align,
                no_guard,
            } => {
                let flags = if no_guard {
                    VmFlags::ALLOC | VmFlags::NO_GUARD
                } else {
                    VmFlags::ALLOC
                };
                let before = self.refusal_baseline();
                let got = self.areas.alloc(size, align, flags, GFP_KERNEL).map(span);
                let want = self.model.alloc(size, align, flags);
                assert_eq!(got, want, "alloc({size:#x}, {align:#x}, {flags:?})");
                self.unchanged_if_refused(got.is_err(), before);
            }
            Op::AllocStarved { size, successes } => {
                let before = snapshot(&self.areas);
                self.areas.source().fail_after(Some(successes));
                let got = self
                    .areas
                    .alloc(size, PAGE_SIZE, VmFlags::ALLOC, GFP_KERNEL);
                self.areas.source().fail_after(None);
                match got {
                    Err(VmareaError::NoNodes { .. } | VmareaError::NodeTableFull { .. }) => {
                        assert_eq!(
                            snapshot(&self.areas),
                            before,
                            "a starved alloc changed state"
                        );
                    }
                    got => {
                        let want = self.model.alloc(size, PAGE_SIZE, VmFlags::ALLOC);
                        assert_eq!(got.map(span), want, "starved alloc({size:#x})");
                    }
                }
            }
            Op::FreeLive { pick } => {
                let live = self.model.live_starts();
                if let Some(&addr) = live.get(pick % live.len().max(1)) {
                    self.free(addr);
                }
            }
            Op::FreeInside { pick, offset } => {
                let live = self.model.live_starts();
                if let Some(&addr) = live.get(pick % live.len().max(1)) {
                    let size = self.model.area(addr).map_or(1, |a| a.1 - a.0);
                    self.free(addr + offset % size);
                }
            }
            Op::Free { offset } => self.free(self.model.start.wrapping_add(offset)),
            Op::Purge => {
                let got = self.areas.purge();
                let want = self.model.purge(false);
                assert_eq!(got, want, "purge");
            }
            Op::ReclaimAndPurge => {
                let got = self.areas.reclaim_and_purge();
                let want = self.model.purge(true);
                assert_eq!(got, want, "reclaim_and_purge");
            }
        }
        self.steps += 1;
        self.cheap_checks();
        if self.steps % self.check_every == 0 {
            self.full_checks();
        }
    }

    fn free(&mut self, addr: usize) {
        let before = self.refusal_baseline();
        let got = self
            .areas
            .free(VirtAddr::new(addr))
            .map(|freed| (span(freed.area), freed.flush));
        let want = self.model.free(addr);
        assert_eq!(got, want, "free({addr:#x})");
        self.unchanged_if_refused(got.is_err(), before);
    }

    /// A snapshot to compare with after the operation, taken only when the
    /// full checks run (it is O(n)).
    fn refusal_baseline(&self) -> Option<Snapshot> {
        ((self.steps + 1) % self.check_every == 0).then(|| snapshot(&self.areas))
    }

    fn unchanged_if_refused(&self, refused: bool, before: Option<Snapshot>) {
        if let (true, Some(before)) = (refused, before) {
            assert_eq!(
                snapshot(&self.areas),
                before,
                "a refused operation changed state"
            );
        }
    }

    /// O(1): the counters against the model.
    fn cheap_checks(&self) {
        let stats = self.areas.stats();
        assert_eq!(stats.lazy_pages, self.model.lazy_pages, "lazy pages");
        assert_eq!(stats.purges, self.model.purges, "purges");
        assert_eq!(
            stats.flush_tokens, self.model.purges,
            "one flush token per purge"
        );
        assert!(stats.lazy_pages <= stats.lazy_max_pages);
    }

    /// O(n): the checker, and every range against the model.
    pub fn full_checks(&self) {
        if let Err(broken) = self.areas.check() {
            panic!("invariant broken: {broken}");
        }
        assert_eq!(
            self.areas.areas().map(span).collect::<Vec<_>>(),
            self.model.ranges(busy)
        );
        assert_eq!(
            self.areas.unpurged_areas().map(span).collect::<Vec<_>>(),
            self.model.ranges(unpurged)
        );
        assert_eq!(
            self.areas.free_blocks().map(span).collect::<Vec<_>>(),
            self.model.ranges(free_state)
        );
        let mut pool = self.areas.pooled_areas().map(span).collect::<Vec<_>>();
        pool.sort_by_key(|s| s.0);
        let want_pool = self.model.ranges(pooled);
        assert_eq!(pool, want_pool, "pooled areas");
        let stats = self.areas.stats();
        assert_eq!(stats.nr_areas, self.model.ranges(busy).len());
        assert_eq!(stats.nr_pooled, want_pool.len(), "pooled areas");
        let pages = want_pool.iter().map(|s| (s.1 - s.0) / PAGE_SIZE).sum();
        assert_eq!(stats.pooled_pages, pages, "pooled pages");
        let largest = self
            .model
            .ranges(free_state)
            .iter()
            .map(|s| s.1 - s.0)
            .max()
            .unwrap_or(0);
        assert_eq!(stats.largest_free, largest, "largest free block");
    }

    /// Frees every live area, purges with a full decay, and requires the
    /// whole range free again as one block.
    pub fn finish(&mut self) {
        for addr in self.model.live_starts() {
            self.free(addr);
        }
        self.apply(Op::ReclaimAndPurge);
        self.full_checks();
        assert_eq!(
            self.areas.free_blocks().map(span).collect::<Vec<_>>(),
            vec![(self.model.start, self.model.end, VmFlags::empty())]
        );
    }
}
