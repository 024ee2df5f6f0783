//! Cache geometry: where each part of an object slot lies, how large a slab
//! is and how many objects it holds (Linux `calculate_sizes` and
//! `calculate_order`). Pure arithmetic, computed once at cache creation;
//! must never touch memory.
//!
//! An object slot, in order:
//!
//! ```text
//! [0, object_size)        the object the caller uses (ksize)
//! [object_size, red_end)  right red zone (SLAB_RED_ZONE), at least a word
//! fp_offset               free pointer: mid-object normally; after the red
//!                         zone when the object must keep its bytes while
//!                         free (poison, constructor, red zone)
//! track_offset            alloc and free call sites (SLAB_STORE_USER)
//! orig_offset             the size kmalloc was asked for (kmalloc + red zone)
//! [.., stride)            padding up to the alignment
//! ```

use crate::{error::SlabError, flags::SlabFlags, slab::HEADER_SIZE};
use core::mem::size_of;
use kmm_api::{Order, PAGE_ALLOC_COSTLY_ORDER, PAGE_SIZE};

const WORD: usize = size_of::<usize>();

/// Objects at least this large keep their slab header off the slab (in a
/// small kmalloc object), so page-sized objects pack without a wasted page.
pub(crate) const OFF_SLAB_MIN_SIZE: usize = PAGE_SIZE / 8;

/// The largest slab order: objects needing more are refused at creation.
pub(crate) const MAX_SLAB_ORDER: u32 = 5;

/// Where everything lies in an object slot and a slab.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Geometry {
    /// Bytes the caller may use (`ksize`).
    pub object_size: usize,
    /// End of the right red zone (equals `object_size` without one).
    pub red_end: usize,
    /// Offset of the encoded free pointer within the slot.
    pub fp_offset: usize,
    /// Offset of the two call-site words, if `SLAB_STORE_USER`.
    pub track_offset: Option<usize>,
    /// Offset of the remembered kmalloc request size, if tracked.
    pub orig_offset: Option<usize>,
    /// Bytes from one object's start to the next's.
    pub stride: usize,
    /// Alignment of every object start.
    pub align: usize,
    /// Divides an offset by the stride with a multiply and a shift.
    pub by_stride: Reciprocal,
    /// The slab's order.
    pub order: Order,
    /// Objects per slab.
    pub objects: usize,
    /// Bytes the objects span from the first one's start (`objects * stride`).
    pub span: usize,
    /// Whether the slab header lives in a separate kmalloc object.
    pub off_slab: bool,
    /// Offset of the first object from the slab's first byte.
    pub s_mem_offset: usize,
    /// Bytes of slab header (fixed part plus one state byte per object).
    pub header_bytes: usize,
}

impl Geometry {
    /// Lays out a cache of `size`-byte objects aligned to `align`.
    /// `track_request` remembers kmalloc's requested size (red zone only).
    pub fn new(
        size: usize,
        align: usize,
        flags: SlabFlags,
        has_ctor: bool,
        track_request: bool,
    ) -> Result<Self, SlabError> {
        let bad = SlabError::BadGeometry { size, align };
        if size == 0 || !align.is_power_of_two() || align > PAGE_SIZE {
            return Err(bad);
        }
        let mut align = align.max(WORD);
        if flags.contains(SlabFlags::HWCACHE_ALIGN) {
            align = align.max(hwcache_align(size));
        }
        // Every sum below is on the caller's size: each is checked, so a
        // size near `usize::MAX` is refused instead of wrapping.
        let add = |a: usize, b: usize| a.checked_add(b).ok_or(bad);
        let object_size = size.checked_next_multiple_of(WORD).ok_or(bad)?;
        let red_zone = flags.contains(SlabFlags::RED_ZONE);
        let red_end = if red_zone {
            add(object_size, WORD)?
        } else {
            object_size
        };
        let fp_outside = red_zone || has_ctor || flags.contains(SlabFlags::POISON);
        let (fp_offset, mut end) = if fp_outside {
            (red_end, add(red_end, WORD)?)
        } else {
            ((object_size / 2) & !(WORD - 1), red_end)
        };
        let track_offset = match flags.contains(SlabFlags::STORE_USER) {
            true => {
                let at = end;
                end = add(end, 2 * WORD)?;
                Some(at)
            }
            false => None,
        };
        let orig_offset = match track_request && red_zone {
            true => {
                let at = end;
                end = add(end, WORD)?;
                Some(at)
            }
            false => None,
        };
        let stride = end.checked_next_multiple_of(align).ok_or(bad)?;
        let off_slab = stride >= OFF_SLAB_MIN_SIZE;
        let (order, objects, s_mem_offset) = choose_order(stride, align, off_slab).ok_or(bad)?;
        Ok(Self {
            object_size,
            red_end,
            fp_offset,
            track_offset,
            orig_offset,
            stride,
            align,
            by_stride: Reciprocal::new(stride),
            order,
            objects,
            span: objects * stride,
            off_slab,
            s_mem_offset,
            header_bytes: HEADER_SIZE + objects,
        })
    }

    /// Pages per slab.
    pub fn pages(&self) -> usize {
        self.order.pages()
    }

    /// The index of the object at `offset` from the first object, or the
    /// distance past an object's start when `offset` is not on a boundary
    /// (or, at or past the span, the offset itself).
    #[inline(always)]
    pub fn index_of(&self, offset: usize) -> Result<usize, usize> {
        if offset >= self.span {
            return Err(offset);
        }
        let index = self.by_stride.divide(offset);
        match offset - index * self.stride {
            0 => Ok(index),
            into => Err(into),
        }
    }

    /// Bytes of each slab no object or header uses.
    pub fn leftover(&self) -> usize {
        let header = if self.off_slab { 0 } else { self.s_mem_offset };
        self.order.bytes() - header - self.objects * self.stride
    }
}

/// Division by a fixed divisor as a multiply and a shift (Linux
/// `reciprocal_divide`, which `obj_to_index` uses for the same reason): an
/// object's index is computed on every free, and a hardware divide costs
/// tens of cycles where the multiply costs three.
///
/// Exact for every dividend below `2^DIVIDEND_BITS` (Granlund and
/// Montgomery, 1994, theorem 4.2): with `l = ceil(log2 d)` and
/// `m = ceil(2^(N + l) / d)`, `m * d - 2^(N + l) < d <= 2^l`, which is the
/// theorem's condition for `floor(n * m / 2^(N + l)) == floor(n / d)`.
/// Slab offsets are below `2^(PAGE_SHIFT + MAX_SLAB_ORDER)`, far inside.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Reciprocal {
    mul: u64,
    shift: u32,
}

const _: () = assert!((PAGE_SIZE << MAX_SLAB_ORDER) <= 1 << Reciprocal::DIVIDEND_BITS);

impl Reciprocal {
    /// Dividends must be below `2^DIVIDEND_BITS`; `N + l <= 24 + 40`
    /// keeps `m` within 25 bits and `n * m` within 49.
    pub const DIVIDEND_BITS: u32 = 24;

    /// The reciprocal of `divisor` (non-zero, below `2^40`).
    pub fn new(divisor: usize) -> Self {
        let d = divisor as u64;
        let l = d.next_power_of_two().trailing_zeros();
        let shift = Self::DIVIDEND_BITS + l;
        Self {
            mul: (1u64 << shift).div_ceil(d),
            shift,
        }
    }

    /// `n / divisor`, for `n` below `2^DIVIDEND_BITS`.
    #[inline(always)]
    pub fn divide(&self, n: usize) -> usize {
        debug_assert!((n as u64) < 1 << Self::DIVIDEND_BITS);
        ((n as u64 * self.mul) >> self.shift) as usize
    }
}

/// SLUB's `calculate_alignment` for `SLAB_HWCACHE_ALIGN`: a cache line, or
/// the largest power of two that still packs small objects into one line.
fn hwcache_align(size: usize) -> usize {
    let mut align = crate::flags::CACHE_LINE_SIZE;
    while size <= align / 2 && align > WORD {
        align /= 2;
    }
    align
}

/// Objects of `stride` bytes in a slab of `order`, with the first object
/// at the returned offset (after the on-slab header and its state bytes).
fn fit(stride: usize, align: usize, off_slab: bool, order: Order) -> (usize, usize) {
    let bytes = order.bytes();
    if off_slab {
        return (bytes / stride, 0);
    }
    // Each object costs its stride plus one state byte in the header.
    let mut n = bytes.saturating_sub(HEADER_SIZE) / (stride + 1);
    loop {
        let s_mem = (HEADER_SIZE + n).next_multiple_of(align);
        if n == 0 || s_mem + n * stride <= bytes {
            return (n, s_mem);
        }
        n -= 1;
    }
}

/// The smallest order up to `PAGE_ALLOC_COSTLY_ORDER` whose unused tail is
/// at most 1/16 of the slab; failing that, the least wasteful of those
/// orders; objects larger than that get the smallest order that holds one.
/// As in SLUB, waste is the tail no object fits in: the header and its
/// state bytes are metadata, not waste (counting them would push the
/// smallest classes, whose state bytes are 1/9 of the slab, to order 3).
fn choose_order(stride: usize, align: usize, off_slab: bool) -> Option<(Order, usize, usize)> {
    let mut best: Option<(Order, usize, usize, usize)> = None;
    for order in PAGE_ALLOC_COSTLY_ORDER.up_to() {
        let (n, s_mem) = fit(stride, align, off_slab, order);
        if n == 0 {
            continue;
        }
        let waste = order.bytes() - s_mem - n * stride;
        if waste * 16 <= order.bytes() {
            return Some((order, n, s_mem));
        }
        // Compare waste as a fraction of the slab: waste/bytes.
        let better = best.map_or(true, |(o, _, _, w)| waste * o.bytes() < w * order.bytes());
        if better {
            best = Some((order, n, s_mem, waste));
        }
    }
    if let Some((order, n, s_mem, _)) = best {
        return Some((order, n, s_mem));
    }
    let mut order = PAGE_ALLOC_COSTLY_ORDER.higher()?;
    while order.as_u32() <= MAX_SLAB_ORDER {
        let (n, s_mem) = fit(stride, align, off_slab, order);
        if n > 0 {
            return Some((order, n, s_mem));
        }
        order = order.higher()?;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plain(size: usize, align: usize) -> Geometry {
        Geometry::new(size, align, SlabFlags::empty(), false, false).unwrap()
    }

    #[test]
    fn tail_waste_is_at_most_a_sixteenth_when_an_order_allows() {
        for size in [
            8, 16, 32, 64, 96, 128, 192, 256, 512, 1024, 2048, 4096, 8192, 700,
        ] {
            let g = plain(size, size.min(PAGE_SIZE).next_power_of_two().min(PAGE_SIZE));
            assert!(g.objects >= 1);
            assert!(
                g.leftover() * 16 <= g.order.bytes(),
                "size {size}: {} of {} bytes wasted",
                g.leftover(),
                g.order.bytes()
            );
        }
    }

    #[test]
    fn the_smallest_classes_fit_in_one_page_because_state_bytes_are_not_waste() {
        for size in [8, 16, 32, 64] {
            let g = plain(size, size);
            assert_eq!(g.order, Order::ZERO, "size {size}");
            assert!(
                g.objects * size > PAGE_SIZE * 3 / 4,
                "size {size}: {} objects",
                g.objects
            );
        }
    }

    #[test]
    fn page_sized_objects_keep_their_header_off_slab() {
        let g = plain(4096, 4096);
        assert!(g.off_slab);
        assert_eq!(g.s_mem_offset, 0);
        assert_eq!(g.objects, g.pages());
    }

    #[test]
    fn object_starts_honour_the_alignment() {
        let g = plain(96, 32);
        assert_eq!(g.s_mem_offset % 32, 0);
        assert_eq!(g.stride % 32, 0);
    }

    #[test]
    fn index_of_accepts_only_object_starts() {
        let g = plain(96, 32);
        assert_eq!(g.index_of(0), Ok(0));
        assert_eq!(g.index_of(96 * 3), Ok(3));
        assert_eq!(g.index_of(96 * 3 + 5), Err(5));
        assert!(g.index_of(96 * g.objects).is_err());
    }

    #[test]
    fn index_of_refuses_offsets_at_or_past_the_span() {
        let g = plain(320, 8);
        assert_eq!(g.index_of(g.span - 320), Ok(g.objects - 1));
        assert_eq!(g.index_of(g.span), Err(g.span));
        assert_eq!(g.index_of(usize::MAX), Err(usize::MAX));
    }

    /// The reciprocal is the hardware division for every stride a cache can
    /// have and every offset within the largest slab.
    #[test]
    fn reciprocal_division_is_exact_for_every_slab_offset() {
        let max_span = PAGE_SIZE << MAX_SLAB_ORDER;
        // A step of 7 is coprime to every multiple of a word, so each
        // stride's residues all occur.
        let (strides, step) = if cfg!(miri) { (64, 997) } else { (1024, 7) };
        for stride in (1..=strides).map(|k| k * WORD).chain([3, 5, 4095]) {
            let r = Reciprocal::new(stride);
            for n in (0..max_span).step_by(step).chain([max_span - 1]) {
                assert_eq!(r.divide(n), n / stride, "{n} / {stride}");
            }
        }
        let r = Reciprocal::new(12345);
        let top = (1 << Reciprocal::DIVIDEND_BITS) - 1;
        assert_eq!(r.divide(top), top / 12345);
    }

    #[test]
    fn debug_metadata_lies_outside_the_object() {
        let flags = SlabFlags::RED_ZONE | SlabFlags::POISON | SlabFlags::STORE_USER;
        let g = Geometry::new(64, 8, flags, false, true).unwrap();
        assert_eq!(g.red_end, 64 + WORD);
        assert!(g.fp_offset >= g.red_end);
        assert!(g.track_offset.unwrap() > g.fp_offset);
        assert!(g.orig_offset.unwrap() > g.track_offset.unwrap());
        assert!(g.stride >= g.orig_offset.unwrap() + WORD);
    }

    #[test]
    fn impossible_geometry_is_an_error() {
        let err = |s, a| Geometry::new(s, a, SlabFlags::empty(), false, false).is_err();
        assert!(err(0, 8));
        assert!(err(64, 3));
        assert!(err(64, 2 * PAGE_SIZE));
        assert!(err(1 << 30, 8));
    }

    #[test]
    fn sizes_near_usize_max_are_refused_with_every_debug_flag() {
        let all = SlabFlags::RED_ZONE | SlabFlags::POISON | SlabFlags::STORE_USER;
        for flags in [
            SlabFlags::empty(),
            SlabFlags::RED_ZONE,
            SlabFlags::POISON,
            SlabFlags::STORE_USER,
            all,
        ] {
            for size in [
                usize::MAX,
                usize::MAX - 7,
                usize::MAX - 64,
                usize::MAX / 2 + 1,
            ] {
                for track_request in [false, true] {
                    let geo = Geometry::new(size, 8, flags, true, track_request);
                    assert!(
                        matches!(geo, Err(SlabError::BadGeometry { .. })),
                        "size {size:#x} with {flags:?}: {geo:?}"
                    );
                }
            }
        }
    }
}
