//! The fine size classes of the `GlobalAlloc` adaptor: four per doubling
//! above 256 bytes (320, 384, 448, 512, 640, …, 7168, 8192), so rounding
//! costs at most a fifth of an object where kmalloc's powers of two cost up
//! to half of it. Rust programs allocate many objects just above a power
//! of two: a `BTreeMap<String, _>` leaf of 632 bytes takes kmalloc-1k,
//! 640 bytes here. The powers of two are kmalloc's own caches; the fifteen
//! others are caches of their own, made at boot when
//! [`crate::KmemConfig::fine_classes`] asks for them. Linux keeps kmalloc
//! to powers of two (and 96, 192); a kernel's `kmalloc` callers see no
//! change, only the adaptor uses these classes.
//!
//! This module owns the class arithmetic and names, O(1), and must never
//! allocate.

/// Requests above this size (and up to `KMALLOC_MAX_CACHE_SIZE`) take a
/// fine class; those below, kmalloc's (already at most a third apart).
pub(crate) const FINE_MIN: usize = 256;

/// Fine classes: five doublings from 256 to 8192 bytes, four each.
pub(crate) const NR_FINE: usize = 20;

/// The fine class of `size`, in `FINE_MIN + 1..=KMALLOC_MAX_CACHE_SIZE`:
/// the doubling `size - 1` lies in, then which quarter of it.
#[inline]
pub(crate) const fn fine_index(size: usize) -> usize {
    let s = size - 1;
    let shift = usize::BITS - 1 - s.leading_zeros();
    (shift as usize - 8) * 4 + ((s >> (shift - 2)) & 3)
}

/// The object size of fine class `index`.
pub(crate) const fn fine_size(index: usize) -> usize {
    (5 + index % 4) << (index / 4 + 6)
}

/// Whether class `index` is one of kmalloc's powers of two, served by
/// kmalloc's own cache.
pub(crate) const fn is_kmalloc_class(index: usize) -> bool {
    index % 4 == 3
}

/// Cache names of the fine classes (the powers of two are kmalloc's and
/// keep kmalloc's names).
pub(crate) const FINE_NAMES: [&str; NR_FINE] = [
    "kmalloc-fine-320",
    "kmalloc-fine-384",
    "kmalloc-fine-448",
    "kmalloc-512",
    "kmalloc-fine-640",
    "kmalloc-fine-768",
    "kmalloc-fine-896",
    "kmalloc-1k",
    "kmalloc-fine-1280",
    "kmalloc-fine-1536",
    "kmalloc-fine-1792",
    "kmalloc-2k",
    "kmalloc-fine-2560",
    "kmalloc-fine-3072",
    "kmalloc-fine-3584",
    "kmalloc-4k",
    "kmalloc-fine-5120",
    "kmalloc-fine-6144",
    "kmalloc-fine-7168",
    "kmalloc-8k",
];

#[cfg(test)]
mod tests {
    extern crate std;
    use super::*;
    use crate::kmalloc::{kmalloc_index, KMALLOC_CLASSES, KMALLOC_MAX_CACHE_SIZE};

    #[test]
    fn every_size_takes_the_smallest_class_that_holds_it() {
        for size in FINE_MIN + 1..=KMALLOC_MAX_CACHE_SIZE {
            let i = fine_index(size);
            assert!(fine_size(i) >= size, "{size} in class {i}");
            assert!(
                i == 0 || fine_size(i - 1) < size,
                "{size}: a smaller class holds it"
            );
            // At most a fifth of an object is rounding.
            assert!((fine_size(i) - size) * 5 < fine_size(i), "{size}");
        }
        assert_eq!(fine_index(KMALLOC_MAX_CACHE_SIZE), NR_FINE - 1);
        assert_eq!(fine_size(fine_index(632)), 640);
    }

    #[test]
    fn the_powers_of_two_are_kmallocs_classes_and_names() {
        for (i, &name) in FINE_NAMES.iter().enumerate() {
            let size = fine_size(i);
            assert_eq!(is_kmalloc_class(i), size.is_power_of_two(), "{size}");
            if is_kmalloc_class(i) {
                assert_eq!(KMALLOC_CLASSES[kmalloc_index(size)], size);
                assert_eq!(name, crate::kmalloc::KMALLOC_NAMES[kmalloc_index(size)]);
            } else {
                assert_eq!(
                    name.strip_prefix("kmalloc-fine-"),
                    Some(&*std::format!("{size}"))
                );
            }
        }
    }
}
