//! [`Error`]: the one error type at the [`MemoryManager`](crate::MemoryManager)'s
//! surface. Each layer keeps its own richer error (the page allocator's
//! [`kmm_api::Error`], the slab layer's [`SlabError`]) and converts into
//! this one with `From`, keeping every detail (the pfn, the address, the
//! cache's name), so `?` flows from any layer into a caller returning
//! [`Error`].
//!
//! Owns no state; must never lose a layer's detail in a conversion.

use core::fmt;
use kmm_highmem::HighmemError;
use kmm_slab::{SlabError, Violation};
use kmm_vmarea::VmareaError;
use kmm_zones::{Invariant, SysctlError};

/// Why an operation of the memory manager was refused. Every operation
/// that returns one has left all structures as they were.
///
/// ```
/// use kmm::Error;
/// use kmm_api::{Order, Pfn};
///
/// // A slab error that wraps a page-allocator error converts to the page
/// // form, so one match arm covers "out of memory" from either layer.
/// let from_slab = Error::from(kmm_slab::SlabError::Page(kmm_api::Error::NoMemory { order: Order::ZERO }));
/// assert_eq!(from_slab, Error::Page(kmm_api::Error::NoMemory { order: Order::ZERO }));
/// let e = Error::from(kmm_api::Error::DoubleFree { pfn: Pfn::new(0x1234) });
/// assert_eq!(e.to_string(), "page allocator: double free of pfn 0x1234");
/// ```
#[non_exhaustive]
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Error {
    /// The page allocator, an address translation, the boot memory map or
    /// the machine refused (Linux's page-level `-ENOMEM`, `-EINVAL`, ...).
    Page(kmm_api::Error),
    /// The slab layer refused: kmalloc, `kmem_cache_*`, or an invalid,
    /// double or cross-cache free it caught.
    Slab(SlabError),
    /// vmalloc, vmap or ioremap refused (a bad size or address, a double
    /// or mismatched free, no range left).
    Vmalloc(VmareaError),
    /// kmap or kmap_local refused (a full pool for a caller that cannot
    /// wait, an unmap of what is not mapped or out of order, a range past
    /// the page).
    Highmem(HighmemError),
    /// A `/proc/sys/vm` tunable was written with a value Linux refuses
    /// (`-EINVAL`); nothing changed.
    Sysctl(SysctlError),
    /// [`MemoryManager::check`](crate::MemoryManager::check) found broken
    /// invariants in these layers (its report has the detail).
    Check(BrokenLayers),
}

/// Which layers [`MemoryManager::check`](crate::MemoryManager::check)
/// found broken, as the manager's error carries it (the full
/// [`CheckReport`], with each layer's first broken invariant, is what
/// `check` returns).
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default)]
pub struct BrokenLayers {
    /// The zones failed their checker.
    pub zones: bool,
    /// The slab layer failed its checker.
    pub slab: bool,
    /// vmalloc's areas failed their checker.
    pub vmalloc: bool,
}

impl fmt::Display for BrokenLayers {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("invariants broken in")?;
        let layers = [
            (self.zones, "zones"),
            (self.slab, "slab"),
            (self.vmalloc, "vmalloc"),
        ];
        for (_, name) in layers.iter().filter(|(broken, _)| *broken) {
            write!(f, " [{name}]")?;
        }
        Ok(())
    }
}

impl From<VmareaError> for Error {
    /// A vmalloc that failed because the page allocator did becomes that
    /// failure: out of memory reads the same from any layer.
    fn from(e: VmareaError) -> Self {
        match e {
            VmareaError::Page { cause } | VmareaError::NoNodes { cause } => Error::Page(cause),
            e => Error::Vmalloc(e),
        }
    }
}

impl From<HighmemError> for Error {
    fn from(e: HighmemError) -> Self {
        match e {
            HighmemError::PageTable(e) => Error::Page(e),
            e => Error::Highmem(e),
        }
    }
}

impl From<SysctlError> for Error {
    fn from(e: SysctlError) -> Self {
        Error::Sysctl(e)
    }
}

impl From<kmm_api::Error> for Error {
    fn from(e: kmm_api::Error) -> Self {
        Error::Page(e)
    }
}

impl From<SlabError> for Error {
    /// A slab error that only carries the page allocator's refusal
    /// becomes that refusal: out of memory reads the same from any layer.
    fn from(e: SlabError) -> Self {
        match e {
            SlabError::Page(e) => Error::Page(e),
            e => Error::Slab(e),
        }
    }
}

impl From<CheckReport> for Error {
    /// Keeps which layers failed; the invariants themselves stay in the
    /// report `check` returned.
    fn from(report: CheckReport) -> Self {
        Error::Check(BrokenLayers {
            zones: report.zones.is_some(),
            slab: report.slab.is_some(),
            vmalloc: report.vmalloc.is_some(),
        })
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Page(e) => write!(f, "page allocator: {e}"),
            Error::Slab(e) => write!(f, "slab: {e}"),
            Error::Sysctl(e) => write!(f, "sysctl: {e}"),
            Error::Vmalloc(e) => write!(f, "vmalloc: {e}"),
            Error::Highmem(e) => write!(f, "kmap: {e}"),
            Error::Check(layers) => layers.fmt(f),
        }
    }
}

impl core::error::Error for Error {
    fn source(&self) -> Option<&(dyn core::error::Error + 'static)> {
        match self {
            Error::Page(e) => Some(e),
            Error::Slab(e) => Some(e),
            Error::Sysctl(e) => Some(e),
            Error::Vmalloc(e) => Some(e),
            Error::Highmem(e) => Some(e),
            Error::Check(_) => None,
        }
    }
}

/// What [`MemoryManager::check`](crate::MemoryManager::check) found: the
/// first broken invariant of each layer that failed (`None` for a layer
/// whose structures are sound).
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default)]
pub struct CheckReport {
    /// The zones: buddies, per-CPU lists, page descriptors, counters.
    pub zones: Option<Invariant>,
    /// The slab layer: every cache's slab lists, counters and state bytes.
    pub slab: Option<Violation>,
    /// vmalloc's areas: the trees, their order and balance, and that free,
    /// live and unpurged ranges tile the vmalloc range.
    pub vmalloc: Option<kmm_vmarea::Invariant>,
}

impl CheckReport {
    /// Whether every layer passed.
    pub fn is_clean(&self) -> bool {
        self.zones.is_none() && self.slab.is_none() && self.vmalloc.is_none()
    }
}

impl fmt::Display for CheckReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.is_clean() {
            return f.write_str("every layer's invariants hold");
        }
        f.write_str("invariants broken:")?;
        if let Some(e) = &self.zones {
            write!(f, " [zones] {e}")?;
        }
        if let Some(e) = &self.slab {
            write!(f, " [slab] {e}")?;
        }
        if let Some(e) = &self.vmalloc {
            write!(f, " [vmalloc] {e}")?;
        }
        Ok(())
    }
}
