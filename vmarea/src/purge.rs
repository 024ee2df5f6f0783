//! Lazy purge bookkeeping (Linux `vmap_lazy_nr`, `lazy_max_pages`): a
//! freed area's TLB entries are not flushed one by one; its pages are
//! counted, and once the count passes the threshold every unpurged range
//! goes back to free space behind one flush.
//!
//! Owns only counters; the ranges themselves are in the unpurged tree.

use crate::error::VmareaError;
use kmm_api::PAGE_SIZE;

/// Lazily freed bytes allowed per bit of the CPU count (Linux's 32 MiB).
pub const LAZY_BYTES_PER_CPU_BIT: usize = 32 << 20;

/// The threshold never exceeds this fraction (1/4) of the range: on i386
/// Linux's figure is close to the whole 111 MiB vmalloc area, and the
/// allocator must not sit on most of its space between purges.
pub const LAZY_RANGE_DIVISOR: usize = 4;

/// Lazily freed pages that trigger a purge when exceeded: Linux's
/// `fls(nr_cpus) * 32 MiB / PAGE_SIZE`, capped at a quarter of the range's
/// pages.
pub const fn lazy_max_pages(nr_cpus: usize, range_bytes: usize) -> usize {
    let fls = (usize::BITS - nr_cpus.leading_zeros()) as usize;
    let linux = fls * (LAZY_BYTES_PER_CPU_BIT / PAGE_SIZE);
    let cap = range_bytes / PAGE_SIZE / LAZY_RANGE_DIVISOR;
    if linux < cap {
        linux
    } else {
        cap
    }
}

/// The lazy counter and the purge figures.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) struct LazyPurge {
    pub(crate) max_pages: usize,
    pub(crate) nr_pages: usize,
    /// Areas freed since the last purge (their ranges may have merged).
    pub(crate) nr_areas: u64,
    pub(crate) purges: u64,
    pub(crate) flush_tokens: u64,
    pub(crate) purged_areas: u64,
}

impl LazyPurge {
    pub(crate) fn new(nr_cpus: usize, range_bytes: usize) -> Result<Self, VmareaError> {
        if nr_cpus == 0 {
            return Err(VmareaError::NoCpus);
        }
        Ok(LazyPurge {
            max_pages: lazy_max_pages(nr_cpus, range_bytes),
            nr_pages: 0,
            nr_areas: 0,
            purges: 0,
            flush_tokens: 0,
            purged_areas: 0,
        })
    }
}
