//! The early boot allocator (Linux's memblock): physical memory described as
//! two sets of ranges before any page descriptor exists.
//!
//! - `memory`: the RAM the machine has (present pages).
//! - `reserved`: ranges in use before the page allocator runs: the kernel
//!   image, and everything [`Memblock::alloc`] has handed out.
//!
//! Free memory is `memory` minus `reserved`; once the zones exist, every free
//! page is released into its zone's buddy allocator ([`Memblock::free_ranges`],
//! Linux's `memblock_free_all`) and the memblock is discarded.
//!
//! Invariants of each set, kept by every operation:
//! - ranges are page aligned, non-empty, sorted by address, and neither
//!   overlap nor touch (touching ranges are merged);
//! - at most [`MEMBLOCK_REGIONS`] ranges; an operation that would need more
//!   returns [`Error::TooManyRegions`] and changes nothing.
//!
//! Rounding is conservative: a range given as RAM shrinks inward to whole
//! pages (a partial page cannot be handed out), a range given as in use grows
//! outward (a partial page in use is not free).
//!
//! Cost: each update is O(n) in the ranges of one set (a binary search plus
//! one shift of the array); [`Memblock::alloc`] is O(n + m) over both sets.
//! It owns no memory and must never write to the memory it describes.

use core::fmt;
use kmm_api::{get_order, Error, MemoryRegion, Pfn, PhysAddr, RegionKind, PAGE_SHIFT, PAGE_SIZE};

/// Ranges each set can hold (Linux's `INIT_MEMBLOCK_REGIONS`). A full set is
/// an error, not a reallocation: there is no allocator to grow into yet.
pub const MEMBLOCK_REGIONS: usize = 128;

const PAGE: u64 = PAGE_SIZE as u64;

/// A page-aligned physical range `[base, end)`.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
struct Range {
    base: u64,
    end: u64,
}

impl Range {
    const EMPTY: Range = Range { base: 0, end: 0 };

    /// The bytes `[base, base + size)`, checked so that the end rounded up
    /// to a page neither overflows nor names a frame beyond `usize`.
    fn bytes(base: PhysAddr, size: u64) -> Result<(u64, u64), Error> {
        let start = base.as_u64();
        start
            .checked_add(size)
            .filter(|end| {
                end.checked_next_multiple_of(PAGE)
                    .is_some_and(|top| top >> PAGE_SHIFT <= usize::MAX as u64)
            })
            .map(|end| (start, end))
            .ok_or(Error::BadPhysAddr { addr: base })
    }

    /// Whole pages inside the bytes, `None` if there are none.
    fn inward(base: PhysAddr, size: u64) -> Result<Option<Range>, Error> {
        let (start, end) = Self::bytes(base, size)?;
        Ok(Self::nonempty(
            start.div_ceil(PAGE) * PAGE,
            end / PAGE * PAGE,
        ))
    }

    /// Every page the bytes touch, `None` if they are empty.
    fn outward(base: PhysAddr, size: u64) -> Result<Option<Range>, Error> {
        let (start, end) = Self::bytes(base, size)?;
        if start == end {
            return Ok(None);
        }
        Ok(Self::nonempty(
            start / PAGE * PAGE,
            end.div_ceil(PAGE) * PAGE,
        ))
    }

    fn nonempty(base: u64, end: u64) -> Option<Range> {
        (base < end).then_some(Range { base, end })
    }

    fn pages(self) -> usize {
        ((self.end - self.base) >> PAGE_SHIFT) as usize
    }

    fn pfns(self) -> (Pfn, Pfn) {
        (pfn_of(self.base), pfn_of(self.end))
    }
}

/// Frame number of a page-aligned address already checked to fit a `usize`.
fn pfn_of(addr: u64) -> Pfn {
    Pfn::new((addr >> PAGE_SHIFT) as usize)
}

/// One set of ranges (`struct memblock_type`).
#[derive(Clone)]
struct RegionSet {
    regions: [Range; MEMBLOCK_REGIONS],
    cnt: usize,
}

impl RegionSet {
    const fn new() -> Self {
        Self {
            regions: [Range::EMPTY; MEMBLOCK_REGIONS],
            cnt: 0,
        }
    }

    fn as_slice(&self) -> &[Range] {
        &self.regions[..self.cnt]
    }

    fn pages(&self) -> usize {
        self.as_slice().iter().map(|r| r.pages()).sum()
    }

    /// Adds `new`, merging every range it overlaps or touches.
    fn insert(&mut self, new: Range) -> Result<(), Error> {
        let set = self.as_slice();
        // Ranges [first, last) overlap or touch `new`.
        let first = set.partition_point(|r| r.end < new.base);
        let last = set.partition_point(|r| r.base <= new.end);
        if first == last {
            self.splice(first, first, &[new])
        } else {
            let merged = Range {
                base: new.base.min(set[first].base),
                end: new.end.max(set[last - 1].end),
            };
            self.splice(first, last, &[merged])
        }
    }

    /// Takes `gone` out, trimming or splitting the ranges it overlaps.
    fn remove(&mut self, gone: Range) -> Result<(), Error> {
        let set = self.as_slice();
        // Ranges [first, last) overlap `gone`.
        let first = set.partition_point(|r| r.end <= gone.base);
        let last = set.partition_point(|r| r.base < gone.end);
        if first >= last {
            return Ok(());
        }
        let head = Range::nonempty(set[first].base, gone.base);
        let tail = Range::nonempty(gone.end, set[last - 1].end);
        match (head, tail) {
            (Some(h), Some(t)) => self.splice(first, last, &[h, t]),
            (Some(one), None) | (None, Some(one)) => self.splice(first, last, &[one]),
            (None, None) => self.splice(first, last, &[]),
        }
    }

    /// Replaces ranges `[first, last)` with `with`, or fails unchanged when
    /// the result would not fit.
    fn splice(&mut self, first: usize, last: usize, with: &[Range]) -> Result<(), Error> {
        let cnt = self.cnt - (last - first) + with.len();
        if cnt > MEMBLOCK_REGIONS {
            return Err(Error::TooManyRegions {
                capacity: MEMBLOCK_REGIONS,
            });
        }
        let moved = first + with.len();
        self.regions.copy_within(last..self.cnt, moved);
        self.regions[first..moved].copy_from_slice(with);
        self.cnt = cnt;
        Ok(())
    }
}

/// The boot-time description of physical memory: RAM and what is in use.
///
/// ```
/// use kmm_api::{MemoryRegion, Pfn, PhysAddr, RegionKind};
/// use kmm_zones::memblock::Memblock;
///
/// const MIB: u64 = 1 << 20;
/// let map = [
///     MemoryRegion::new(0, 640 << 10, RegionKind::Usable),
///     MemoryRegion::new(MIB, 64 * MIB, RegionKind::Usable),
///     MemoryRegion::new(MIB, 3 * MIB, RegionKind::KernelImage),
/// ];
/// let mut mb = Memblock::from_memory_map(&map).unwrap();
/// assert_eq!(mb.end_pfn(), Pfn::new(16384));
/// let table = mb.alloc(8192, 4096, PhysAddr::new(16 * MIB)).unwrap();
/// assert_eq!(table, PhysAddr::new(16 * MIB - 8192));
/// assert_eq!(mb.reserved_pages(), 512 + 2);
/// ```
#[derive(Clone)]
pub struct Memblock {
    memory: RegionSet,
    reserved: RegionSet,
}

impl Memblock {
    /// No memory, nothing reserved.
    pub const fn new() -> Self {
        Self {
            memory: RegionSet::new(),
            reserved: RegionSet::new(),
        }
    }

    /// Builds the sets from an embedder's memory map (an e820 table, say).
    ///
    /// `Usable` and `KernelImage` entries are RAM; `KernelImage` is also
    /// reserved; `Reserved` entries are not RAM. Entries may come in any
    /// order and may overlap: `Reserved` wins over `Usable`, and the kernel
    /// image (which is certainly RAM: it is running) wins over both. Usable
    /// entries shrink inward to whole pages; reserved ones and the kernel
    /// image grow outward.
    ///
    /// Errors: [`Error::BadPhysAddr`] for an inverted or overflowing entry,
    /// [`Error::TooManyRegions`] if the map is too fragmented.
    pub fn from_memory_map(map: &[MemoryRegion]) -> Result<Self, Error> {
        let mut mb = Self::new();
        let of_kind = |kind| map.iter().filter(move |r| r.kind == kind);
        for entry in of_kind(RegionKind::Usable) {
            mb.add(entry.start, entry_len(entry)?)?;
        }
        for entry in of_kind(RegionKind::Reserved) {
            mb.remove(entry.start, entry_len(entry)?)?;
        }
        for entry in of_kind(RegionKind::KernelImage) {
            if let Some(image) = Range::outward(entry.start, entry_len(entry)?)? {
                mb.memory.insert(image)?;
                mb.reserved.insert(image)?;
            }
        }
        Ok(mb)
    }

    /// Records `[base, base + size)` as RAM (`memblock_add`), shrunk inward
    /// to whole pages. Merges with RAM it overlaps or touches.
    pub fn add(&mut self, base: PhysAddr, size: u64) -> Result<(), Error> {
        match Range::inward(base, size)? {
            Some(range) => self.memory.insert(range),
            None => Ok(()),
        }
    }

    /// Forgets `[base, base + size)` as RAM (`memblock_remove`), grown
    /// outward: a page partly missing is not RAM.
    pub fn remove(&mut self, base: PhysAddr, size: u64) -> Result<(), Error> {
        match Range::outward(base, size)? {
            Some(range) => self.memory.remove(range),
            None => Ok(()),
        }
    }

    /// Marks `[base, base + size)` in use (`memblock_reserve`), grown
    /// outward to whole pages. The range need not be RAM.
    pub fn reserve(&mut self, base: PhysAddr, size: u64) -> Result<(), Error> {
        match Range::outward(base, size)? {
            Some(range) => self.reserved.insert(range),
            None => Ok(()),
        }
    }

    /// Releases a reservation (`memblock_phys_free`): every page the range
    /// touches, as [`Memblock::reserve`] rounded it.
    pub fn free(&mut self, base: PhysAddr, size: u64) -> Result<(), Error> {
        match Range::outward(base, size)? {
            Some(range) => self.reserved.remove(range),
            None => Ok(()),
        }
    }

    /// Allocates and reserves `size` bytes (rounded up to pages) at the
    /// highest address aligned to `align` whose whole range is free RAM
    /// ending at or below `limit` (`memblock_phys_alloc_range`, top-down).
    ///
    /// An `align` below a page (0 included) means page alignment. Top-down
    /// keeps low memory, which DMA-limited devices need, free for longest.
    ///
    /// Errors, leaving everything unchanged: [`Error::ZeroSize`],
    /// [`Error::BadAlignment`] for an alignment that is not a power of two,
    /// [`Error::NoMemory`] when no free range fits ([`Error::SizeTooLarge`]
    /// if the size is beyond any order), [`Error::TooManyRegions`] when the
    /// reservation cannot be recorded.
    pub fn alloc(&mut self, size: u64, align: u64, limit: PhysAddr) -> Result<PhysAddr, Error> {
        if size == 0 {
            return Err(Error::ZeroSize);
        }
        if align != 0 && !align.is_power_of_two() {
            return Err(Error::BadAlignment { align });
        }
        let align = align.max(PAGE);
        let too_large = Error::SizeTooLarge {
            bytes: usize::try_from(size).unwrap_or(usize::MAX),
        };
        let size = size.checked_next_multiple_of(PAGE).ok_or(too_large)?;
        let limit = limit.as_u64() / PAGE * PAGE;
        // Free ranges come in ascending order, so the last fit is the highest.
        let best = self
            .free_byte_ranges()
            .filter_map(|free| {
                let top = free.end.min(limit).checked_sub(size)?;
                let base = top / align * align;
                (base >= free.base).then_some(base)
            })
            .last();
        let Some(base) = best else {
            let order = usize::try_from(size)
                .map_err(|_| too_large)
                .and_then(get_order)
                .map_err(|_| too_large)?;
            return Err(Error::NoMemory { order });
        };
        self.reserved.insert(Range {
            base,
            end: base + size,
        })?;
        Ok(PhysAddr::new(base))
    }

    /// Free page ranges `[start, end)`: RAM not reserved, ascending. What
    /// Linux's `memblock_free_all` releases to the buddy allocator.
    pub fn free_ranges(&self) -> impl Iterator<Item = (Pfn, Pfn)> + '_ {
        self.free_byte_ranges().map(Range::pfns)
    }

    /// RAM page ranges `[start, end)`, ascending: the present pages.
    pub fn memory_ranges(&self) -> impl Iterator<Item = (Pfn, Pfn)> + '_ {
        self.memory.as_slice().iter().map(|r| r.pfns())
    }

    /// Reserved page ranges `[start, end)`, ascending; they may lie outside RAM.
    pub fn reserved_ranges(&self) -> impl Iterator<Item = (Pfn, Pfn)> + '_ {
        self.reserved.as_slice().iter().map(|r| r.pfns())
    }

    /// The lowest RAM frame (`min_low_pfn` before any limit); 0 with no RAM.
    pub fn start_pfn(&self) -> Pfn {
        self.memory
            .as_slice()
            .first()
            .map_or(Pfn::new(0), |r| pfn_of(r.base))
    }

    /// One past the highest RAM frame (`max_pfn`); 0 with no RAM.
    pub fn end_pfn(&self) -> Pfn {
        self.memory
            .as_slice()
            .last()
            .map_or(Pfn::new(0), |r| pfn_of(r.end))
    }

    /// Pages of RAM.
    pub fn memory_pages(&self) -> usize {
        self.memory.pages()
    }

    /// Pages reserved, whether or not they are RAM.
    pub fn reserved_pages(&self) -> usize {
        self.reserved.pages()
    }

    /// `memory` minus `reserved`, ascending, by a merge walk of both sets.
    fn free_byte_ranges(&self) -> impl Iterator<Item = Range> + '_ {
        let (memory, reserved) = (self.memory.as_slice(), self.reserved.as_slice());
        let (mut mi, mut ri, mut cursor) = (0, 0, 0u64);
        core::iter::from_fn(move || loop {
            let ram = memory.get(mi)?;
            let start = cursor.max(ram.base);
            if start >= ram.end {
                mi += 1;
                continue;
            }
            while reserved.get(ri).is_some_and(|r| r.end <= start) {
                ri += 1;
            }
            match reserved.get(ri) {
                Some(r) if r.base <= start => cursor = r.end,
                Some(r) if r.base < ram.end => {
                    cursor = r.end;
                    return Some(Range {
                        base: start,
                        end: r.base,
                    });
                }
                _ => {
                    mi += 1;
                    return Some(Range {
                        base: start,
                        end: ram.end,
                    });
                }
            }
        })
    }
}

/// The length of a map entry; an inverted entry is malformed input.
fn entry_len(entry: &MemoryRegion) -> Result<u64, Error> {
    entry
        .end
        .as_u64()
        .checked_sub(entry.start.as_u64())
        .ok_or(Error::BadPhysAddr { addr: entry.start })
}

impl Default for Memblock {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Debug for Memblock {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        struct Ranges<'a>(&'a [Range]);
        impl fmt::Debug for Ranges<'_> {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.debug_list()
                    .entries(
                        self.0
                            .iter()
                            .map(|r| PhysAddr::new(r.base)..PhysAddr::new(r.end)),
                    )
                    .finish()
            }
        }
        f.debug_struct("Memblock")
            .field("memory", &Ranges(self.memory.as_slice()))
            .field("reserved", &Ranges(self.reserved.as_slice()))
            .finish()
    }
}

#[cfg(test)]
mod tests;
