//! The kmalloc size classes (Linux `kmalloc_caches[]`, `kmalloc_index`):
//! which cache serves a request of `n` bytes. Pure table arithmetic, O(1);
//! must never allocate.

use kmm_api::{MAX_PAGE_ORDER, PAGE_SIZE};

/// Number of kmalloc size classes (of each kind: normal and DMA).
pub(crate) const NR_KMALLOC: usize = 13;

/// The object sizes of the kmalloc caches.
pub const KMALLOC_CLASSES: [usize; NR_KMALLOC] = [
    8, 16, 32, 64, 96, 128, 192, 256, 512, 1024, 2048, 4096, 8192,
];

/// Cache names of the normal classes.
pub(crate) const KMALLOC_NAMES: [&str; NR_KMALLOC] = [
    "kmalloc-8",
    "kmalloc-16",
    "kmalloc-32",
    "kmalloc-64",
    "kmalloc-96",
    "kmalloc-128",
    "kmalloc-192",
    "kmalloc-256",
    "kmalloc-512",
    "kmalloc-1k",
    "kmalloc-2k",
    "kmalloc-4k",
    "kmalloc-8k",
];

/// Cache names of the `GFP_DMA` classes.
pub(crate) const DMA_KMALLOC_NAMES: [&str; NR_KMALLOC] = [
    "dma-kmalloc-8",
    "dma-kmalloc-16",
    "dma-kmalloc-32",
    "dma-kmalloc-64",
    "dma-kmalloc-96",
    "dma-kmalloc-128",
    "dma-kmalloc-192",
    "dma-kmalloc-256",
    "dma-kmalloc-512",
    "dma-kmalloc-1k",
    "dma-kmalloc-2k",
    "dma-kmalloc-4k",
    "dma-kmalloc-8k",
];

/// The smallest kmalloc object.
pub const KMALLOC_MIN_SIZE: usize = KMALLOC_CLASSES[0];
/// The largest request served from a cache; larger ones take whole pages.
pub const KMALLOC_MAX_CACHE_SIZE: usize = KMALLOC_CLASSES[NR_KMALLOC - 1];
/// The largest kmalloc: one block of the largest buddy order.
pub const KMALLOC_MAX_SIZE: usize = MAX_PAGE_ORDER.bytes();

/// Class of each size in `1..=192`, by `(size - 1) / 8` (Linux `size_index`).
const SMALL_INDEX: [u8; 24] = [
    0, 1, 2, 2, 3, 3, 3, 3, 4, 4, 4, 4, 5, 5, 5, 5, 6, 6, 6, 6, 6, 6, 6, 6,
];

/// The class serving `size` bytes (`1..=KMALLOC_MAX_CACHE_SIZE`).
#[inline]
pub(crate) fn kmalloc_index(size: usize) -> usize {
    debug_assert!((1..=KMALLOC_MAX_CACHE_SIZE).contains(&size));
    if size <= 192 {
        usize::from(SMALL_INDEX[(size - 1) / 8])
    } else {
        // 256 is class 7, and each power of two above is one more.
        (usize::BITS - (size - 1).leading_zeros()) as usize - 1
    }
}

/// The class an allocation of `size` bytes aligned to `align` needs: the
/// size class, moved up to a power of two when 96 or 192 would not honour
/// the alignment. `None` when only pages will do. `align` is a power of
/// two (a `Layout`'s), so the alignment test is a mask, not a division.
#[inline]
pub(crate) fn kmalloc_index_aligned(size: usize, align: usize) -> Option<usize> {
    debug_assert!(align.is_power_of_two());
    let size = size.max(align).max(1);
    if size > KMALLOC_MAX_CACHE_SIZE || align > PAGE_SIZE {
        return None;
    }
    let class = kmalloc_index(size);
    if KMALLOC_CLASSES[class] & (align - 1) == 0 {
        Some(class)
    } else {
        Some(kmalloc_index(size.next_power_of_two()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_map_to_the_smallest_class_that_holds_them() {
        assert_eq!(KMALLOC_CLASSES[kmalloc_index(96)], 96);
        assert_eq!(KMALLOC_CLASSES[kmalloc_index(100)], 128);
        assert_eq!(KMALLOC_CLASSES[kmalloc_index(65)], 96);
        assert_eq!(KMALLOC_CLASSES[kmalloc_index(129)], 192);
        assert_eq!(KMALLOC_CLASSES[kmalloc_index(193)], 256);
        assert_eq!(KMALLOC_CLASSES[kmalloc_index(8192)], 8192);
        // Every size natively; under miri every size near a class edge.
        let step = if cfg!(miri) { 7 } else { 1 };
        for size in (1..=KMALLOC_MAX_CACHE_SIZE)
            .step_by(step)
            .chain(KMALLOC_CLASSES.iter().flat_map(|&c| [c - 1, c, c + 1]))
            .filter(|&s| (1..=KMALLOC_MAX_CACHE_SIZE).contains(&s))
        {
            let class = KMALLOC_CLASSES[kmalloc_index(size)];
            assert!(class >= size);
            let smaller = KMALLOC_CLASSES.iter().filter(|&&c| c >= size).min();
            assert_eq!(Some(&class), smaller, "size {size}");
        }
    }

    #[test]
    fn alignment_moves_96_and_192_up_to_a_power_of_two() {
        assert_eq!(
            kmalloc_index_aligned(80, 32).map(|c| KMALLOC_CLASSES[c]),
            Some(96)
        );
        assert_eq!(
            kmalloc_index_aligned(80, 64).map(|c| KMALLOC_CLASSES[c]),
            Some(128)
        );
        assert_eq!(
            kmalloc_index_aligned(8, 4096).map(|c| KMALLOC_CLASSES[c]),
            Some(4096)
        );
        assert_eq!(kmalloc_index_aligned(9000, 8), None);
        assert_eq!(kmalloc_index_aligned(8, 8192), None);
    }
}
