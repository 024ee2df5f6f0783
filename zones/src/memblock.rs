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
mod tests {
    extern crate std;
    use super::*;
    use kmm_api::Order;
    use std::vec;
    use std::vec::Vec;

    const KIB: u64 = 1 << 10;
    const MIB: u64 = 1 << 20;
    const GIB: u64 = 1 << 30;
    const NO_LIMIT: PhysAddr = PhysAddr::new(u64::MAX);

    fn pa(addr: u64) -> PhysAddr {
        PhysAddr::new(addr)
    }

    fn pfns(ranges: impl Iterator<Item = (Pfn, Pfn)>) -> Vec<(usize, usize)> {
        ranges.map(|(s, e)| (s.as_usize(), e.as_usize())).collect()
    }

    fn page(addr: u64) -> usize {
        (addr / PAGE) as usize
    }

    /// A 2 GiB PC as its BIOS describes it: conventional memory up to the
    /// EBDA, the VGA/BIOS hole, RAM from 1 MiB up to the ACPI tables, and
    /// the kernel image loaded at 1 MiB.
    fn two_gib_pc() -> [MemoryRegion; 7] {
        [
            MemoryRegion::new(0, 0x9_fc00, RegionKind::Usable),
            MemoryRegion::new(0x9_fc00, 0xa_0000, RegionKind::Reserved),
            MemoryRegion::new(0xe_8000, MIB, RegionKind::Reserved),
            MemoryRegion::new(MIB, 2 * GIB - 64 * KIB, RegionKind::Usable),
            MemoryRegion::new(2 * GIB - 64 * KIB, 2 * GIB, RegionKind::Reserved),
            MemoryRegion::new(4 * GIB - 256 * KIB, 4 * GIB, RegionKind::Reserved),
            MemoryRegion::new(MIB, 0x5a_3456, RegionKind::KernelImage),
        ]
    }

    #[test]
    fn pc_map_frees_all_ram_but_the_holes_and_the_kernel() {
        let mb = Memblock::from_memory_map(&two_gib_pc()).unwrap();
        let top = page(2 * GIB - 64 * KIB);
        // The EBDA's partial page is not RAM; the kernel's last partial page is in use.
        assert_eq!(pfns(mb.memory_ranges()), [(0, 0x9f), (0x100, top)]);
        assert_eq!(pfns(mb.reserved_ranges()), [(0x100, 0x5a4)]);
        assert_eq!(pfns(mb.free_ranges()), [(0, 0x9f), (0x5a4, top)]);
        assert_eq!((mb.start_pfn(), mb.end_pfn()), (Pfn::new(0), Pfn::new(top)));
        assert_eq!(mb.memory_pages(), 0x9f + top - 0x100);
        assert_eq!(mb.reserved_pages(), 0x5a4 - 0x100);
    }

    #[test]
    fn map_order_does_not_matter() {
        let mut map = two_gib_pc();
        let expected = Memblock::from_memory_map(&map).unwrap();
        map.reverse();
        let reversed = Memblock::from_memory_map(&map).unwrap();
        map.rotate_left(3);
        let rotated = Memblock::from_memory_map(&map).unwrap();
        for mb in [reversed, rotated] {
            assert_eq!(pfns(mb.memory_ranges()), pfns(expected.memory_ranges()));
            assert_eq!(pfns(mb.free_ranges()), pfns(expected.free_ranges()));
        }
    }

    #[test]
    fn overlapping_entries_reserved_beats_usable_and_kernel_beats_both() {
        let map = [
            MemoryRegion::new(0, 8 * MIB, RegionKind::Usable),
            MemoryRegion::new(4 * MIB, 12 * MIB, RegionKind::Usable),
            MemoryRegion::new(6 * MIB, 7 * MIB, RegionKind::Reserved),
            MemoryRegion::new(
                6 * MIB + 512 * KIB,
                6 * MIB + 520 * KIB,
                RegionKind::KernelImage,
            ),
        ];
        let mb = Memblock::from_memory_map(&map).unwrap();
        let (six, seven) = (page(6 * MIB), page(7 * MIB));
        let kernel = page(6 * MIB + 512 * KIB);
        assert_eq!(
            pfns(mb.memory_ranges()),
            [(0, six), (kernel, kernel + 2), (seven, page(12 * MIB))]
        );
        assert_eq!(pfns(mb.free_ranges()), [(0, six), (seven, page(12 * MIB))]);
    }

    #[test]
    fn usable_shrinks_inward_and_reserved_grows_outward() {
        let mut mb = Memblock::new();
        mb.add(pa(0x1800), 0x3000).unwrap();
        assert_eq!(pfns(mb.memory_ranges()), [(2, 4)]);
        mb.add(pa(0x10_0100), 0x100).unwrap();
        assert_eq!(mb.memory_pages(), 2, "a sub-page range adds nothing");
        mb.reserve(pa(0x2fff), 2).unwrap();
        assert_eq!(pfns(mb.reserved_ranges()), [(2, 4)]);
    }

    #[test]
    fn add_merges_overlapping_and_touching_ranges() {
        let mut mb = Memblock::new();
        mb.add(pa(8 * PAGE), 2 * PAGE).unwrap();
        mb.add(pa(0), 2 * PAGE).unwrap();
        mb.add(pa(4 * PAGE), 2 * PAGE).unwrap();
        assert_eq!(pfns(mb.memory_ranges()), [(0, 2), (4, 6), (8, 10)]);
        mb.add(pa(2 * PAGE), 2 * PAGE).unwrap();
        assert_eq!(pfns(mb.memory_ranges()), [(0, 6), (8, 10)]);
        mb.add(pa(PAGE), 8 * PAGE).unwrap();
        assert_eq!(pfns(mb.memory_ranges()), [(0, 10)]);
    }

    #[test]
    fn remove_trims_and_splits() {
        let mut mb = Memblock::new();
        mb.add(pa(0), 10 * PAGE).unwrap();
        mb.remove(pa(4 * PAGE), PAGE).unwrap();
        assert_eq!(pfns(mb.memory_ranges()), [(0, 4), (5, 10)]);
        mb.remove(pa(3 * PAGE), 3 * PAGE).unwrap();
        assert_eq!(pfns(mb.memory_ranges()), [(0, 3), (6, 10)]);
        mb.remove(pa(0), 100 * PAGE).unwrap();
        assert_eq!(mb.memory_pages(), 0);
        assert_eq!((mb.start_pfn(), mb.end_pfn()), (Pfn::new(0), Pfn::new(0)));
    }

    #[test]
    fn alloc_is_top_down_below_the_limit() {
        let mut mb = Memblock::from_memory_map(&two_gib_pc()).unwrap();
        let a = mb.alloc(3 * PAGE, PAGE, pa(896 * MIB)).unwrap();
        assert_eq!(a, pa(896 * MIB - 3 * PAGE));
        let b = mb.alloc(PAGE, 0, pa(896 * MIB)).unwrap();
        assert_eq!(b, pa(896 * MIB - 4 * PAGE), "the next one goes just below");
        let c = mb.alloc(100, 0, NO_LIMIT).unwrap();
        assert_eq!(c, pa(2 * GIB - 64 * KIB - PAGE), "no limit: the top of RAM");
    }

    #[test]
    fn alloc_respects_alignment() {
        let mut mb = Memblock::from_memory_map(&two_gib_pc()).unwrap();
        let limit = pa(16 * MIB - PAGE);
        let a = mb.alloc(PAGE, MIB, limit).unwrap();
        assert_eq!(a, pa(15 * MIB));
        let b = mb.alloc(2 * MIB, 4 * MIB, NO_LIMIT).unwrap();
        assert!(b.is_aligned(4 * MIB));
        assert_eq!(b, pa(2 * GIB - 4 * MIB));
    }

    #[test]
    fn alloc_skips_reservations_and_holes() {
        let mut mb = Memblock::new();
        mb.add(pa(0), 16 * PAGE).unwrap();
        mb.reserve(pa(12 * PAGE), 4 * PAGE).unwrap();
        mb.reserve(pa(6 * PAGE), 2 * PAGE).unwrap();
        // Free: [0, 6) and [8, 12); four pages fit only in the lower range.
        assert_eq!(mb.alloc(4 * PAGE, 0, NO_LIMIT), Ok(pa(8 * PAGE)));
        assert_eq!(mb.alloc(5 * PAGE, 0, NO_LIMIT), Ok(pa(PAGE)));
        assert_eq!(pfns(mb.free_ranges()), [(0, 1)]);
    }

    #[test]
    fn region_straddling_the_limit_is_used_only_below_it() {
        let mut mb = Memblock::new();
        mb.add(pa(0), 32 * MIB).unwrap();
        let a = mb.alloc(MIB, 0, pa(16 * MIB + 5 * PAGE + 123)).unwrap();
        assert_eq!(
            a,
            pa(15 * MIB + 5 * PAGE),
            "ends at the limit, rounded down to a page"
        );
        assert!(mb.alloc(17 * MIB, 0, pa(16 * MIB)).is_err());
    }

    #[test]
    fn failed_alloc_is_an_error_and_changes_nothing() {
        let mut mb = Memblock::new();
        mb.add(pa(0), 4 * PAGE).unwrap();
        mb.reserve(pa(PAGE), PAGE).unwrap();
        let before = (pfns(mb.free_ranges()), pfns(mb.reserved_ranges()));
        let order = Order::new(1).unwrap();
        assert_eq!(
            mb.alloc(3 * PAGE, 0, NO_LIMIT),
            Err(Error::NoMemory {
                order: Order::new(2).unwrap()
            })
        );
        assert_eq!(
            mb.alloc(2 * PAGE, 0, pa(PAGE)),
            Err(Error::NoMemory { order })
        );
        assert_eq!(mb.alloc(0, 0, NO_LIMIT), Err(Error::ZeroSize));
        assert_eq!(
            mb.alloc(PAGE, 3 * PAGE, NO_LIMIT),
            Err(Error::BadAlignment { align: 3 * PAGE })
        );
        assert!(matches!(
            mb.alloc(u64::MAX, 0, NO_LIMIT),
            Err(Error::SizeTooLarge { .. })
        ));
        assert_eq!((pfns(mb.free_ranges()), pfns(mb.reserved_ranges())), before);
    }

    #[test]
    fn overflowing_and_inverted_ranges_are_errors() {
        let mut mb = Memblock::new();
        assert_eq!(
            mb.add(pa(u64::MAX - 10), 20),
            Err(Error::BadPhysAddr {
                addr: pa(u64::MAX - 10)
            })
        );
        assert!(
            mb.reserve(pa(u64::MAX - 10), 5).is_err(),
            "cannot round up past the top"
        );
        let inverted = [MemoryRegion::new(2 * MIB, MIB, RegionKind::Usable)];
        assert!(matches!(
            Memblock::from_memory_map(&inverted),
            Err(Error::BadPhysAddr { .. })
        ));
        assert_eq!(mb.memory_pages() + mb.reserved_pages(), 0);
    }

    #[test]
    fn capacity_overflow_is_an_error_and_changes_nothing() {
        let mut mb = Memblock::new();
        for i in 0..MEMBLOCK_REGIONS as u64 {
            mb.add(pa(2 * i * PAGE), PAGE).unwrap();
        }
        let full = pfns(mb.memory_ranges());
        let err = Error::TooManyRegions {
            capacity: MEMBLOCK_REGIONS,
        };
        assert_eq!(mb.add(pa(1000 * PAGE), PAGE), Err(err));
        assert_eq!(pfns(mb.memory_ranges()), full);
        // Filling a gap merges three ranges into one: that still fits.
        mb.add(pa(PAGE), PAGE).unwrap();
        assert_eq!(mb.memory_ranges().count(), MEMBLOCK_REGIONS - 1);
        mb.add(pa(1000 * PAGE), PAGE).unwrap();
        // Splitting a range in a full set needs one more slot.
        let before = pfns(mb.memory_ranges());
        assert_eq!(mb.remove(pa(PAGE), PAGE), Err(err));
        assert_eq!(pfns(mb.memory_ranges()), before);
        let map: Vec<_> = (0..=MEMBLOCK_REGIONS as u64)
            .map(|i| MemoryRegion::new(2 * i * PAGE, (2 * i + 1) * PAGE, RegionKind::Usable))
            .collect();
        assert_eq!(Memblock::from_memory_map(&map).err(), Some(err));
    }

    #[test]
    fn alloc_with_a_full_reserved_set_fails_cleanly() {
        let mut mb = Memblock::new();
        mb.add(pa(0), 4 * MEMBLOCK_REGIONS as u64 * PAGE).unwrap();
        for i in 0..MEMBLOCK_REGIONS as u64 {
            mb.reserve(pa(4 * i * PAGE), PAGE).unwrap();
        }
        let before = pfns(mb.free_ranges());
        // The top free range is not adjacent to a reservation only if the
        // allocation lands in its middle: ask for one page aligned to two.
        let err = Error::TooManyRegions {
            capacity: MEMBLOCK_REGIONS,
        };
        assert_eq!(mb.alloc(PAGE, 2 * PAGE, NO_LIMIT), Err(err));
        assert_eq!(pfns(mb.free_ranges()), before);
    }

    #[test]
    fn free_returns_a_reservation_to_the_free_ranges() {
        let mut mb = Memblock::new();
        mb.add(pa(0), 8 * PAGE).unwrap();
        let a = mb.alloc(100, 0, NO_LIMIT).unwrap();
        assert_eq!(pfns(mb.free_ranges()), [(0, 7)]);
        mb.free(a, 100).unwrap();
        assert_eq!(pfns(mb.free_ranges()), [(0, 8)]);
        assert_eq!(mb.reserved_pages(), 0);
    }

    /// A page-by-page model of a small machine for the state-machine test.
    mod model {
        use super::*;
        use proptest::prelude::*;

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

        #[derive(Default)]
        struct Model {
            memory: Vec<bool>,
            reserved: Vec<bool>,
        }

        fn inward(base: u64, size: u64) -> core::ops::Range<usize> {
            let start = page(base.div_ceil(PAGE) * PAGE);
            start..page(base + size).max(start)
        }

        fn outward(base: u64, size: u64) -> core::ops::Range<usize> {
            if size == 0 {
                return 0..0;
            }
            page(base)..page((base + size).div_ceil(PAGE) * PAGE)
        }

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

        impl Model {
            fn new() -> Self {
                Self {
                    memory: vec![false; 2 * PAGES],
                    reserved: vec![false; 2 * PAGES],
                }
            }

            fn alloc(
                &mut self,
                size: u64,
                align_shift: u32,
                limit: u64,
            ) -> Result<PhysAddr, Error> {
                if size == 0 {
                    return Err(Error::ZeroSize);
                }
                let pages = page(size.div_ceil(PAGE) * PAGE);
                let align = 1usize << align_shift;
                let top = page(limit).min(self.memory.len());
                let fits =
                    |b: &usize| (*b..*b + pages).all(|p| self.memory[p] && !self.reserved[p]);
                let found = (0..=top.saturating_sub(pages))
                    .rev()
                    .filter(|b| b % align == 0 && b + pages <= top)
                    .find(fits);
                match found {
                    Some(b) => {
                        self.reserved[b..b + pages]
                            .iter_mut()
                            .for_each(|r| *r = true);
                        Ok(pa(b as u64 * PAGE))
                    }
                    None => Err(Error::NoMemory {
                        order: get_order(pages * PAGE_SIZE).unwrap(),
                    }),
                }
            }

            fn check(&self, mb: &Memblock) {
                let free = self
                    .memory
                    .iter()
                    .zip(&self.reserved)
                    .map(|(&m, &r)| m && !r);
                assert_eq!(pfns(mb.memory_ranges()), runs(self.memory.iter().copied()));
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
                let ram = runs(self.memory.iter().copied());
                let start = ram.first().map_or(0, |r| r.0);
                let end = ram.last().map_or(0, |r| r.1);
                assert_eq!(
                    (mb.start_pfn(), mb.end_pfn()),
                    (Pfn::new(start), Pfn::new(end))
                );
                for set in [&mb.memory, &mb.reserved] {
                    let s = set.as_slice();
                    assert!(s
                        .iter()
                        .all(|r| r.base < r.end && r.base % PAGE == 0 && r.end % PAGE == 0));
                    assert!(
                        s.windows(2).all(|w| w[0].end < w[1].base),
                        "sorted, merged: {s:?}"
                    );
                }
            }
        }

        fn set(bits: &mut [bool], pages: core::ops::Range<usize>, value: bool) {
            bits[pages].iter_mut().for_each(|b| *b = value);
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(if cfg!(miri) { 4 } else { 256 }))]
            #[test]
            fn memblock_matches_a_page_model_after_every_step(ops in proptest::collection::vec(op(), 1..60)) {
                let (mut mb, mut model) = (Memblock::new(), Model::new());
                for op in ops {
                    match op {
                        Op::Add(b, s) => {
                            mb.add(pa(b), s).unwrap();
                            set(&mut model.memory, inward(b, s), true);
                        }
                        Op::Remove(b, s) => {
                            mb.remove(pa(b), s).unwrap();
                            set(&mut model.memory, outward(b, s), false);
                        }
                        Op::Reserve(b, s) => {
                            mb.reserve(pa(b), s).unwrap();
                            set(&mut model.reserved, outward(b, s), true);
                        }
                        Op::Free(b, s) => {
                            mb.free(pa(b), s).unwrap();
                            set(&mut model.reserved, outward(b, s), false);
                        }
                        Op::Alloc { size, align_shift, limit } => {
                            let got = mb.alloc(size, PAGE << align_shift, pa(limit));
                            prop_assert_eq!(got, model.alloc(size, align_shift, limit));
                        }
                    }
                    model.check(&mb);
                }
            }
        }
    }

    #[test]
    fn reservations_outside_ram_do_not_make_free_ranges() {
        let mut mb = Memblock::new();
        mb.add(pa(4 * PAGE), 4 * PAGE).unwrap();
        mb.reserve(pa(0), 5 * PAGE).unwrap();
        mb.reserve(pa(7 * PAGE), 10 * PAGE).unwrap();
        assert_eq!(pfns(mb.free_ranges()), [(5, 7)]);
        assert_eq!(mb.reserved_pages(), 15);
    }
}
