//! Validation (Linux `validate_slab_cache`) and the invariant checker: walks
//! a cache's slabs under its node lock, checks each object's debug patterns
//! and each slab's free list, and checks that lists, counters and state
//! bytes agree. Read-only except for repairs of what it reports.

use crate::{
    cache::KmemCache,
    error::SlabError,
    kmem::{CacheId, Kmem, SlabBackend},
    node::Node,
    slab::{ObjState, SlabHeader, SlabList},
};
use core::fmt;
use kmm_api::sync::Ordering::Relaxed;

/// The first broken invariant found by [`Kmem::check_invariants`].
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct Violation {
    /// The cache.
    pub cache: &'static str,
    /// The rule broken.
    pub rule: &'static str,
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: invariant broken: {}", self.cache, self.rule)
    }
}

/// Calls `f` on every slab of `node`, reading each slab's successor first
/// so `f` may move the slab to another list.
fn walk(node: &mut Node, mut f: impl FnMut(&mut Node, &SlabHeader)) {
    for list in 0..3 {
        let mut at = node.heads()[list];
        while !at.is_null() {
            // SAFETY: slabs on a node list are live (node invariant).
            let slab = unsafe { SlabHeader::from_ptr(at) };
            at = slab.next.load(Relaxed);
            f(node, slab);
        }
    }
}

impl<B: SlabBackend> Kmem<B> {
    /// Checks every object and free list of a cache (Linux
    /// `validate_slab_cache`): each corruption found is reported, repaired
    /// and counted; returns the errors counted by this call.
    pub fn kmem_cache_validate(&self, id: CacheId) -> Result<usize, SlabError> {
        let c = self.cache(id)?;
        let before = c.errors.load(Relaxed);
        let mut node = c.node.lock();
        walk(&mut node, |node, slab| self.validate_slab(c, node, slab));
        Ok(c.errors.load(Relaxed) - before)
    }

    fn validate_slab(&self, c: &KmemCache, node: &mut Node, slab: &SlabHeader) {
        let g = &c.geo;
        if let Err(index) = c.fp.validate(slab, g) {
            let virt = self.virt(slab.object(index, g.stride));
            let before = slab.free_count();
            slab.set_state(index, ObjState::Quarantined);
            c.quarantined.fetch_add(1, Relaxed);
            c.fp.rebuild(slab, g);
            node.relist(slab, slab.free_count() as isize - before as isize);
            *c.last_report.lock() = Some(c.free_pointer_corrupt(virt));
        }
        if !c.debug {
            return;
        }
        for index in 0..slab.objects {
            let obj = slab.object(index, g.stride);
            let checked = match slab.state(index) {
                ObjState::Free => c.check_free_object(obj, self.virt(obj)),
                ObjState::Allocated => c.check_live_object(obj, self.virt(obj)),
                ObjState::Cached | ObjState::Quarantined | ObjState::Internal => Ok(()),
            };
            if let Err(report) = checked {
                *c.last_report.lock() = Some(report);
            }
        }
    }

    /// Checks every cache's lists, counters, state bytes and free lists
    /// against each other; the first broken invariant, if any.
    pub fn check_invariants(&self) -> Result<(), Violation> {
        let table = self.lock_table();
        for c in self.caches(&table) {
            let mut node = c.node.lock();
            let broken = |rule| Violation {
                cache: c.name,
                rule,
            };
            let mut seen = [0usize; 3];
            let (mut slabs, mut objects, mut free) = (0, 0, 0);
            let mut bad = None;
            walk(&mut node, |_, slab| {
                let list = slab.list() as usize;
                seen[list] += 1;
                slabs += 1;
                objects += slab.objects;
                free += slab.free_count();
                let free_states = (0..slab.objects)
                    .filter(|&i| slab.state(i) == ObjState::Free)
                    .count();
                let want = match slab.free_count() {
                    0 => SlabList::Full,
                    n if n == slab.objects => SlabList::Empty,
                    _ => SlabList::Partial,
                };
                let fresh_not_free =
                    (slab.fresh()..slab.objects).any(|i| slab.state(i) != ObjState::Free);
                if free_states != slab.free_count() {
                    bad = bad.or(Some(
                        "a slab's free count differs from its Free state bytes",
                    ));
                } else if slab.list() != want {
                    bad = bad.or(Some("a slab sits on the wrong list for its free count"));
                } else if fresh_not_free {
                    bad = bad.or(Some("a fresh object is not free"));
                } else if c.fp.validate(slab, &c.geo).is_err() {
                    bad = bad.or(Some("a slab's free list is corrupt"));
                } else if !core::ptr::eq(slab.owner, c) {
                    bad = bad.or(Some("a slab names another cache"));
                }
            });
            if let Some(rule) = bad {
                return Err(broken(rule));
            }
            // Listed slabs are counted per list: partial, empty, full.
            if seen != node.list_counts() || slabs != node.nr_slabs {
                return Err(broken("list lengths differ from the node's counters"));
            }
            if objects != node.total_objects || free != node.free_objects {
                return Err(broken("object counters differ from the slabs"));
            }
            if c.cached_objects() > c.nr_cpus * crate::cpu::CPU_ARRAY_CAP {
                return Err(broken("a per-CPU array holds more than its capacity"));
            }
        }
        Ok(())
    }
}
