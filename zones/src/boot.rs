//! Typed boot metadata carved out of raw memory: the step between the early
//! boot allocator ([`crate::memblock`]) handing out a byte range and the zones
//! holding their page descriptors and per-CPU arrays in it.
//!
//! A [`BootMem`] owns the not-yet-used tail of one raw region. Each
//! [`BootMem::carve`] cuts an aligned piece off the front, initialises every
//! element, and returns it as an ordinary `&'a mut [T]` that lives as long as
//! the region itself. Pieces never overlap, because each one is split off the
//! remaining tail with the safe slice splitting of `core`.
//!
//! The unsafe code is confined to [`BootMem::carve`]: writing each value into
//! bytes just split off the region, then viewing those bytes as the `&mut [T]`
//! they now hold. Raw memory has no safe typed view, so this cannot be avoided;
//! the crate root denies `unsafe_code` and `carve` alone carries an item-level
//! `allow`, so any other unsafe in this module would be refused.
//!
//! It must never hand out memory it has not initialised, never hand out the
//! same byte twice, and never take bytes when it returns an error. Carved
//! values are never dropped: boot metadata lives as long as the machine, as
//! `memblock` allocations do in Linux.
//!
//! Cost: `carve` is O(n) in the elements initialised; everything else O(1).

use core::fmt;
use core::mem::{align_of, size_of, MaybeUninit};
use core::ptr::NonNull;
use kmm_api::Error;

/// The unused tail of a raw region handed over at boot (for example the
/// direct-map view of a range returned by [`crate::memblock::Memblock::alloc`]).
///
/// ```
/// use core::mem::MaybeUninit;
/// use kmm_zones::boot::BootMem;
///
/// let mut raw = [MaybeUninit::<u8>::uninit(); 256];
/// let mut boot = BootMem::new(&mut raw);
/// let flags: &mut [u32] = boot.carve(8, |i| i as u32 * 2).unwrap();
/// let counts: &mut [u16] = boot.carve(4, |_| 0).unwrap();
/// flags[7] += 1;
/// counts[0] = 5;
/// assert_eq!(flags[7], 15);
/// assert!(boot.remaining() <= 256 - 8 * 4 - 4 * 2);
/// assert!(boot.carve(1000, |_| 0u64).is_err());
/// ```
pub struct BootMem<'a> {
    /// Bytes not yet carved; everything before it has been handed out.
    rest: &'a mut [MaybeUninit<u8>],
}

impl fmt::Debug for BootMem<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BootMem")
            .field("remaining", &self.rest.len())
            .finish()
    }
}

impl<'a> BootMem<'a> {
    /// Takes ownership of `region` for carving.
    pub fn new(region: &'a mut [MaybeUninit<u8>]) -> Self {
        Self { rest: region }
    }

    /// Bytes that `carve::<T>(n)` needs in the worst case: the values
    /// themselves plus the largest alignment padding. Saturates at
    /// `usize::MAX` when the product overflows (no region is that large).
    ///
    /// ```
    /// use kmm_zones::boot::BootMem;
    /// // A u64 is 8-aligned on x86-64 but only 4-aligned on i386.
    /// let padding = core::mem::align_of::<u64>() - 1;
    /// assert_eq!(BootMem::footprint::<u64>(4), 4 * 8 + padding);
    /// assert_eq!(BootMem::footprint::<u8>(10), 10);
    /// ```
    pub const fn footprint<T>(n: usize) -> usize {
        n.saturating_mul(size_of::<T>())
            .saturating_add(align_of::<T>() - 1)
    }

    /// Bytes not yet carved (some may be lost to the next piece's alignment).
    pub fn remaining(&self) -> usize {
        self.rest.len()
    }

    /// Carves `n` values of `T`, the `i`-th initialised to `init(i)`, aligned
    /// for `T`. Zero-sized types and `n == 0` take no bytes.
    ///
    /// Returns [`Error::SizeTooLarge`] (with the bytes the piece would have
    /// needed, padding included) when the remaining region is too small; the
    /// region is then untouched and `init` is never called.
    ///
    /// If `init` panics, the piece already cut off is leaked, never exposed.
    #[allow(unsafe_code)]
    pub fn carve<T>(
        &mut self,
        n: usize,
        mut init: impl FnMut(usize) -> T,
    ) -> Result<&'a mut [T], Error> {
        let bytes = n
            .checked_mul(size_of::<T>())
            .ok_or(Error::SizeTooLarge { bytes: usize::MAX })?;
        let first: NonNull<T> = if bytes == 0 {
            // Nothing to store: a dangling, aligned pointer is a valid base
            // for an empty slice or a slice of zero-sized values.
            NonNull::dangling()
        } else {
            let piece = self.take_aligned(bytes, align_of::<T>())?;
            NonNull::from(piece).cast::<T>()
        };
        for i in 0..n {
            // SAFETY: `first` points to `bytes = n * size_of::<T>()` bytes cut
            // off `rest` by `take_aligned` (or is dangling with `bytes == 0`,
            // where every write is zero-sized), aligned for `T`; the bytes are
            // exclusively ours for `'a` and no reference to them exists yet,
            // so writing element `i < n` stays in bounds and aliases nothing.
            unsafe { first.as_ptr().add(i).write(init(i)) };
        }
        // SAFETY: all `n` elements were initialised just above; the memory is
        // aligned for `T`, spans `n * size_of::<T>()` bytes that no other
        // reference can reach (they were split off `rest`, which lives for
        // `'a`), and that size fits in `isize` because it came from a slice.
        Ok(unsafe { core::slice::from_raw_parts_mut(first.as_ptr(), n) })
    }

    /// Splits `bytes` bytes aligned to `align` off the front of `rest`,
    /// leaving `rest` unchanged on error.
    fn take_aligned(
        &mut self,
        bytes: usize,
        align: usize,
    ) -> Result<&'a mut [MaybeUninit<u8>], Error> {
        // Only the address is inspected, to compute the padding.
        let addr = self.rest.as_ptr() as usize;
        let pad = addr.wrapping_neg() & (align - 1);
        let needed = pad.saturating_add(bytes);
        if needed > self.rest.len() {
            return Err(Error::SizeTooLarge { bytes: needed });
        }
        let rest = core::mem::take(&mut self.rest);
        let (piece, tail) = rest.split_at_mut(needed);
        self.rest = tail;
        Ok(&mut piece[pad..])
    }
}

#[cfg(test)]
mod tests {
    extern crate std;
    use super::*;
    use std::vec;
    use std::vec::Vec;

    fn region(len: usize) -> Vec<MaybeUninit<u8>> {
        vec![MaybeUninit::uninit(); len]
    }

    fn span<T>(s: &[T]) -> (usize, usize) {
        let start = s.as_ptr() as usize;
        (start, start + core::mem::size_of_val(s))
    }

    #[repr(align(64))]
    struct CacheLine([u8; 64]);

    #[test]
    fn carved_pieces_are_aligned_initialised_and_disjoint() {
        let mut raw = region(1024);
        let whole = span(&raw);
        let mut boot = BootMem::new(&mut raw);
        let bytes: &mut [u8] = boot.carve(3, |i| i as u8).unwrap();
        let words: &mut [u64] = boot.carve(5, |i| (i * 10) as u64).unwrap();
        let lines: &mut [CacheLine] = boot.carve(2, |i| CacheLine([i as u8; 64])).unwrap();
        let halves: &mut [u16] = boot.carve(7, |_| 0xabcd).unwrap();

        assert_eq!(bytes, &[0, 1, 2]);
        assert_eq!(words, &[0, 10, 20, 30, 40]);
        assert!(lines.iter().enumerate().all(|(i, l)| l.0 == [i as u8; 64]));
        assert!(halves.iter().all(|&h| h == 0xabcd));
        assert_eq!(words.as_ptr() as usize % align_of::<u64>(), 0);
        assert_eq!(lines.as_ptr() as usize % 64, 0);
        assert_eq!(halves.as_ptr() as usize % align_of::<u16>(), 0);

        // Writing through one piece never shows up in another.
        words.iter_mut().for_each(|w| *w = u64::MAX);
        lines[1].0[63] = 7;
        assert_eq!(bytes, &[0, 1, 2]);
        assert!(halves.iter().all(|&h| h == 0xabcd));

        let mut spans = [span(bytes), span(words), span(lines), span(halves)];
        spans.sort();
        assert!(spans.windows(2).all(|w| w[0].1 <= w[1].0));
        assert!(spans.iter().all(|s| s.0 >= whole.0 && s.1 <= whole.1));
    }

    #[test]
    fn too_small_region_is_an_error_and_takes_nothing() {
        let mut raw = region(40);
        let mut boot = BootMem::new(&mut raw);
        let mut called = false;
        let r = boot.carve(64, |_| {
            called = true;
            0u32
        });
        assert!(matches!(r, Err(Error::SizeTooLarge { .. })));
        assert!(!called);
        assert_eq!(boot.remaining(), 40);
        // The same region still serves a request that fits.
        assert_eq!(boot.carve(4, |i| i as u32).unwrap(), &[0, 1, 2, 3]);
    }

    #[test]
    fn overflowing_element_count_is_an_error() {
        let mut raw = region(16);
        let mut boot = BootMem::new(&mut raw);
        assert!(boot.carve(usize::MAX, |_| 0u64).is_err());
        assert_eq!(boot.remaining(), 16);
    }

    #[test]
    fn zero_sized_values_and_empty_requests_take_no_bytes() {
        let mut raw = region(8);
        let mut boot = BootMem::new(&mut raw);
        let mut seen = Vec::new();
        let units: &mut [()] = boot.carve(1000, |i| seen.push(i)).unwrap();
        assert_eq!(units.len(), 1000);
        assert_eq!(seen.len(), 1000);
        let empty: &mut [[u64; 0]] = boot.carve(3, |_| []).unwrap();
        assert_eq!(empty.len(), 3);
        let none: &mut [u64] = boot.carve(0, |_| 1).unwrap();
        assert!(none.is_empty());
        assert_eq!(boot.remaining(), 8);
    }

    #[test]
    fn footprint_is_enough_whatever_the_start_alignment() {
        for offset in 0..8 {
            let mut raw = region(BootMem::footprint::<u64>(5) + offset);
            let mut boot = BootMem::new(&mut raw[offset..]);
            assert!(boot.carve(5, |i| i as u64).is_ok());
        }
        assert_eq!(BootMem::footprint::<u64>(usize::MAX), usize::MAX);
    }
}
