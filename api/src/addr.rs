//! Physical and virtual addresses and page frame numbers as distinct types,
//! so a physical address can never be passed where a virtual one is meant.
//!
//! All arithmetic here is checked or wrapping-free by construction: helpers
//! that could overflow return `Option`.

use core::fmt;

/// log2 of the page size.
pub const PAGE_SHIFT: u32 = 12;
/// Bytes in a page (4 KiB on x86).
pub const PAGE_SIZE: usize = 1 << PAGE_SHIFT;
/// Mask that clears the offset within a page.
pub const PAGE_MASK: usize = !(PAGE_SIZE - 1);

/// A physical address. 64 bits wide so that i386 PAE (36-bit) and 64-bit
/// machines share one type.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct PhysAddr(u64);

/// A kernel (or user) virtual address as the machine sees it.
///
/// On hardware this is the pointer value. In the simulated machine it is the
/// simulated 32-bit address; [`crate::DirectMap::virt_to_ptr`] turns it into a
/// host pointer.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct VirtAddr(usize);

/// A page frame number: a physical address divided by [`PAGE_SIZE`].
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Pfn(usize);

impl PhysAddr {
    /// Wraps a raw physical address.
    pub const fn new(addr: u64) -> Self {
        Self(addr)
    }
    /// The raw address.
    pub const fn as_u64(self) -> u64 {
        self.0
    }
    /// The frame this address lies in.
    pub const fn pfn(self) -> Pfn {
        Pfn((self.0 >> PAGE_SHIFT) as usize)
    }
    /// Offset within its page.
    pub const fn page_offset(self) -> usize {
        (self.0 as usize) & !PAGE_MASK
    }
    /// Whether the address is a multiple of `align` (a power of two).
    pub const fn is_aligned(self, align: u64) -> bool {
        self.0 & (align - 1) == 0
    }
    /// Rounds down to a multiple of `align` (a power of two).
    pub const fn align_down(self, align: u64) -> Self {
        Self(self.0 & !(align - 1))
    }
    /// Rounds up to a multiple of `align` (a power of two); `None` on overflow.
    pub const fn align_up(self, align: u64) -> Option<Self> {
        match self.0.checked_add(align - 1) {
            Some(v) => Some(Self(v & !(align - 1))),
            None => None,
        }
    }
    /// `self + bytes`, `None` on overflow.
    pub const fn checked_add(self, bytes: u64) -> Option<Self> {
        match self.0.checked_add(bytes) {
            Some(v) => Some(Self(v)),
            None => None,
        }
    }
}

impl VirtAddr {
    /// Wraps a raw virtual address.
    pub const fn new(addr: usize) -> Self {
        Self(addr)
    }
    /// The raw address.
    pub const fn as_usize(self) -> usize {
        self.0
    }
    /// Offset within its page.
    pub const fn page_offset(self) -> usize {
        self.0 & !PAGE_MASK
    }
    /// Whether the address is a multiple of `align` (a power of two).
    pub const fn is_aligned(self, align: usize) -> bool {
        self.0 & (align - 1) == 0
    }
    /// Rounds down to a multiple of `align` (a power of two).
    pub const fn align_down(self, align: usize) -> Self {
        Self(self.0 & !(align - 1))
    }
    /// Rounds up to a multiple of `align` (a power of two); `None` on overflow.
    pub const fn align_up(self, align: usize) -> Option<Self> {
        match self.0.checked_add(align - 1) {
            Some(v) => Some(Self(v & !(align - 1))),
            None => None,
        }
    }
    /// `self + bytes`, `None` on overflow.
    pub const fn checked_add(self, bytes: usize) -> Option<Self> {
        match self.0.checked_add(bytes) {
            Some(v) => Some(Self(v)),
            None => None,
        }
    }
    /// `self - other` in bytes, `None` if `other` lies above `self`.
    pub const fn checked_sub_addr(self, other: VirtAddr) -> Option<usize> {
        self.0.checked_sub(other.0)
    }
}

impl Pfn {
    /// Wraps a raw frame number.
    pub const fn new(pfn: usize) -> Self {
        Self(pfn)
    }
    /// The raw frame number.
    pub const fn as_usize(self) -> usize {
        self.0
    }
    /// The physical address of the first byte of the frame.
    pub const fn phys(self) -> PhysAddr {
        PhysAddr((self.0 as u64) << PAGE_SHIFT)
    }
    /// The frame `n` frames above, `None` on overflow.
    pub const fn checked_add(self, n: usize) -> Option<Self> {
        match self.0.checked_add(n) {
            Some(v) => Some(Self(v)),
            None => None,
        }
    }
    /// The frame `n` frames above. Panics on overflow in debug builds; for
    /// arithmetic inside a range already known to be valid.
    pub const fn add(self, n: usize) -> Self {
        Self(self.0 + n)
    }
    /// Frames from `base` up to `self`, `None` if `self < base`.
    pub const fn checked_offset_from(self, base: Pfn) -> Option<usize> {
        self.0.checked_sub(base.0)
    }
    /// Whether the frame number is a multiple of `2^order` (never for an
    /// order of `usize::BITS` or more).
    pub const fn is_aligned_to_order(self, order: u32) -> bool {
        // The top bit caps the count of trailing zeros at BITS - 1, which
        // refuses the orders no shift could mask, with no branch of their own.
        (self.0 | 1 << (usize::BITS - 1)).trailing_zeros() >= order
    }
}

impl fmt::Debug for PhysAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PhysAddr({:#x})", self.0)
    }
}
impl fmt::Display for PhysAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:#010x}", self.0)
    }
}
impl fmt::Debug for VirtAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "VirtAddr({:#x})", self.0)
    }
}
impl fmt::Display for VirtAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:#010x}", self.0)
    }
}
impl fmt::Debug for Pfn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Pfn({:#x})", self.0)
    }
}
impl fmt::Display for Pfn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "pfn {:#x}", self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pfn_and_phys_round_trip() {
        let p = PhysAddr::new(0x1234_5678);
        assert_eq!(p.pfn(), Pfn::new(0x12345));
        assert_eq!(p.page_offset(), 0x678);
        assert_eq!(Pfn::new(0x12345).phys(), PhysAddr::new(0x1234_5000));
    }

    #[test]
    fn alignment_helpers_round_correctly_and_report_overflow() {
        assert_eq!(
            VirtAddr::new(0x1001).align_up(0x1000),
            Some(VirtAddr::new(0x2000))
        );
        assert_eq!(
            VirtAddr::new(0x1fff).align_down(0x1000),
            VirtAddr::new(0x1000)
        );
        assert_eq!(VirtAddr::new(usize::MAX).align_up(0x1000), None);
        assert!(Pfn::new(8).is_aligned_to_order(3));
        assert!(!Pfn::new(12).is_aligned_to_order(3));
        assert!(!Pfn::new(0).is_aligned_to_order(usize::BITS));
        assert!(Pfn::new(0).is_aligned_to_order(usize::BITS - 1));
        assert!(Pfn::new(1 << (usize::BITS - 1)).is_aligned_to_order(usize::BITS - 1));
        assert!(!Pfn::new(1 << (usize::BITS - 2)).is_aligned_to_order(usize::BITS - 1));
    }
}
