//! The one error type of the crate: every refusal is a value naming the
//! page, address or slot at fault, and every call that returns one leaves
//! the pool and the per-CPU stacks exactly as they were.

use core::fmt;
use kmm_api::{Pfn, VirtAddr};

/// Why a kmap, kunmap or helper call was refused.
#[non_exhaustive]
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum HighmemError {
    /// Every pkmap slot has users: a non-blocking [`crate::Highmem::kmap_try`]
    /// (or an atomic-context caller) cannot wait for one.
    PoolFull {
        /// Slots in the pool (`LAST_PKMAP`).
        slots: usize,
    },
    /// A kunmap of a page that has no pkmap user: not mapped at all, or
    /// mapped with a count of 1 (no users, only a TLB entry to flush).
    NotMapped {
        /// The frame given.
        pfn: Pfn,
    },
    /// A handle made by another allocator: its frame number names some
    /// other machine's frame here, so mapping it would reach memory the
    /// caller does not hold.
    Foreign {
        /// The block's first frame.
        pfn: Pfn,
    },
    /// A page index past the end of the block.
    PageIndex {
        /// The index given.
        index: usize,
        /// Pages in the block.
        nr_pages: usize,
    },
    /// A page's pkmap count would overflow (about 4 billion users).
    TooManyUsers {
        /// The frame given.
        pfn: Pfn,
    },
    /// All `KM_MAX_IDX` kmap_local slots of this CPU are in use.
    LocalStackFull {
        /// The CPU.
        cpu: usize,
    },
    /// A kunmap_local that is not of the most recent kmap_local of its CPU
    /// (strict LIFO), or of an address that is not mapped at all.
    NotTopOfStack {
        /// The address given.
        addr: VirtAddr,
        /// The address that must be unmapped next, if any.
        top: Option<VirtAddr>,
    },
    /// A helper's byte range runs past the page: `offset + len > PAGE_SIZE`.
    OutOfRange {
        /// The offset given.
        offset: usize,
        /// The length given.
        len: usize,
    },
    /// A construction parameter the pool cannot work with (a slot count
    /// outside `1..=LAST_PKMAP_MAX`, an unaligned or overlapping address,
    /// too few per-CPU stacks, a slot already mapped).
    BadConfig {
        /// What is wrong.
        reason: &'static str,
    },
    /// The kernel page table refused a map or unmap.
    PageTable(kmm_api::Error),
}

impl From<kmm_api::Error> for HighmemError {
    fn from(e: kmm_api::Error) -> Self {
        HighmemError::PageTable(e)
    }
}

impl fmt::Display for HighmemError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            HighmemError::PoolFull { slots } => {
                write!(f, "all {slots} pkmap slots are in use")
            }
            HighmemError::NotMapped { pfn } => write!(f, "{pfn} has no kmap to undo"),
            HighmemError::Foreign { pfn } => {
                write!(f, "{pfn} was handed out by another allocator")
            }
            HighmemError::PageIndex { index, nr_pages } => {
                write!(f, "page {index} of a block of {nr_pages} pages")
            }
            HighmemError::TooManyUsers { pfn } => write!(f, "{pfn} has too many kmap users"),
            HighmemError::LocalStackFull { cpu } => {
                write!(f, "all kmap_local slots of CPU {cpu} are in use")
            }
            HighmemError::NotTopOfStack {
                addr,
                top: Some(top),
            } => write!(
                f,
                "kunmap_local({addr}) out of order: {top} must be unmapped first"
            ),
            HighmemError::NotTopOfStack { addr, top: None } => {
                write!(f, "kunmap_local({addr}): nothing is mapped there")
            }
            HighmemError::OutOfRange { offset, len } => write!(
                f,
                "bytes {offset}..{offset}+{len} run past the end of the page"
            ),
            HighmemError::BadConfig { reason } => write!(f, "bad highmem configuration: {reason}"),
            HighmemError::PageTable(e) => write!(f, "page table: {e}"),
        }
    }
}

impl core::error::Error for HighmemError {}
