//! The per-cache slab lists (Linux `struct kmem_cache_node`): partial slabs
//! (some objects free), empty slabs (all free, kept up to `MIN_PARTIAL` for
//! reuse) and full slabs (linked too, so validation and reports see them).
//!
//! [`LockedNode`] holds a node behind its lock and publishes the slab
//! counts at every unlock, for readers that must not take the lock: the
//! zones' reclaim asks how many pages empty slabs hold before each retry.
//!
//! Lock order: a cache's node lock is the innermost lock of the slab layer;
//! it is taken with the caller's CPU pinned or not, and never held across a
//! call into the page allocator (new slabs are built before it is taken,
//! discarded slabs are freed after it is dropped). It must never be taken
//! twice, nor while holding another cache's node lock. The only lock taken
//! inside it is the same cache's `last_report` lock (a leaf).

use crate::slab::{SlabHeader, SlabList};
use core::ptr;
use core::sync::atomic::Ordering::Relaxed;
use kmm_api::sync::{AtomicUsize, Publish, PublishGuard, SpinLock};

/// Empty slabs a node keeps for reuse before returning them to the page
/// allocator (Linux `MIN_PARTIAL`).
pub(crate) const MIN_PARTIAL: usize = 5;

/// A cache's node behind its lock, with the counts its unlocks publish.
pub(crate) struct LockedNode {
    lists: SpinLock<Node>,
    nr_slabs: AtomicUsize,
    nr_empty: AtomicUsize,
}

impl LockedNode {
    /// An unlocked empty node.
    pub fn new() -> Self {
        Self {
            lists: SpinLock::new(Node::new()),
            nr_slabs: AtomicUsize::new(0),
            nr_empty: AtomicUsize::new(0),
        }
    }

    /// Locks the node.
    #[inline]
    pub fn lock(&self) -> NodeGuard<'_> {
        PublishGuard::new(self.lists.lock(), self)
    }

    /// All slabs of the cache as of the last unlock; takes no lock.
    pub fn nr_slabs(&self) -> usize {
        self.nr_slabs.load(Relaxed)
    }

    /// Empty slabs as of the last unlock; takes no lock.
    pub fn nr_empty(&self) -> usize {
        self.nr_empty.load(Relaxed)
    }
}

/// A locked node; its unlock publishes the counts.
pub(crate) type NodeGuard<'n> = PublishGuard<'n, Node, LockedNode>;

impl Publish<Node> for LockedNode {
    fn publish(&self, node: &Node) {
        self.nr_slabs.store(node.nr_slabs, Relaxed);
        self.nr_empty.store(node.nr_empty, Relaxed);
    }
}

/// The lists and counters of one cache's slabs.
pub(crate) struct Node {
    partial: *mut SlabHeader,
    empty: *mut SlabHeader,
    full: *mut SlabHeader,
    /// Slabs on the partial list.
    pub nr_partial: usize,
    /// Slabs on the empty list.
    pub nr_empty: usize,
    /// All slabs of the cache.
    pub nr_slabs: usize,
    /// Objects in all slabs.
    pub total_objects: usize,
    /// Objects on slab free lists.
    pub free_objects: usize,
}

// SAFETY: the raw list heads point at slab headers owned by this node; the
// node is only reached through its cache's lock.
unsafe impl Send for Node {}

impl Node {
    /// An empty node.
    pub const fn new() -> Self {
        Self {
            partial: ptr::null_mut(),
            empty: ptr::null_mut(),
            full: ptr::null_mut(),
            nr_partial: 0,
            nr_empty: 0,
            nr_slabs: 0,
            total_objects: 0,
            free_objects: 0,
        }
    }

    fn head(&mut self, list: SlabList) -> &mut *mut SlabHeader {
        match list {
            SlabList::Partial => &mut self.partial,
            SlabList::Empty => &mut self.empty,
            SlabList::Full => &mut self.full,
        }
    }

    fn count(&mut self, list: SlabList) -> Option<&mut usize> {
        match list {
            SlabList::Partial => Some(&mut self.nr_partial),
            SlabList::Empty => Some(&mut self.nr_empty),
            SlabList::Full => None,
        }
    }

    fn link(&mut self, slab: &SlabHeader, list: SlabList) {
        slab.set_list(list);
        let me = slab as *const SlabHeader as *mut SlabHeader;
        let head = self.head(list);
        let old = *head;
        *head = me;
        slab.prev.store(ptr::null_mut(), Relaxed);
        slab.next.store(old, Relaxed);
        if !old.is_null() {
            // SAFETY: slabs on a node list are live (node invariant).
            unsafe { SlabHeader::from_ptr(old) }.prev.store(me, Relaxed);
        }
        if let Some(n) = self.count(list) {
            *n += 1;
        }
    }

    fn unlink(&mut self, slab: &SlabHeader) {
        let list = slab.list();
        let prev = slab.prev.load(Relaxed);
        let next = slab.next.load(Relaxed);
        if !next.is_null() {
            // SAFETY: slabs on a node list are live (node invariant).
            unsafe { SlabHeader::from_ptr(next) }
                .prev
                .store(prev, Relaxed);
        }
        if !prev.is_null() {
            // SAFETY: as above.
            unsafe { SlabHeader::from_ptr(prev) }
                .next
                .store(next, Relaxed);
        } else {
            *self.head(list) = next;
        }
        if let Some(n) = self.count(list) {
            *n -= 1;
        }
    }

    /// Adds a freshly built slab (every object free).
    pub fn add_slab(&mut self, slab: &SlabHeader) {
        self.nr_slabs += 1;
        self.total_objects += slab.objects;
        self.free_objects += slab.free_count();
        self.link(slab, Self::list_for(slab));
    }

    /// Removes an empty slab for freeing.
    pub fn remove_slab(&mut self, slab: &SlabHeader) {
        self.unlink(slab);
        self.nr_slabs -= 1;
        self.total_objects -= slab.objects;
        self.free_objects -= slab.free_count();
    }

    fn list_for(slab: &SlabHeader) -> SlabList {
        match slab.free_count() {
            0 => SlabList::Full,
            n if n == slab.objects => SlabList::Empty,
            _ => SlabList::Partial,
        }
    }

    /// Moves `slab` to the list its free count calls for, after that count
    /// changed by `delta` objects.
    pub fn relist(&mut self, slab: &SlabHeader, delta: isize) {
        self.free_objects = self.free_objects.wrapping_add_signed(delta);
        let want = Self::list_for(slab);
        if slab.list() != want {
            self.unlink(slab);
            self.link(slab, want);
        }
    }

    /// The slab to take free objects from: partial first (to let empty ones
    /// go back to the page allocator), then empty.
    pub fn slab_with_free(&self) -> Option<&SlabHeader> {
        let at = if self.partial.is_null() {
            self.empty
        } else {
            self.partial
        };
        // SAFETY: slabs on a node list are live (node invariant).
        (!at.is_null()).then(|| unsafe { SlabHeader::from_ptr(at) })
    }

    /// An empty slab beyond the `keep` the node holds on to.
    pub fn surplus_empty(&self, keep: usize) -> Option<&SlabHeader> {
        // SAFETY: slabs on a node list are live (node invariant).
        (self.nr_empty > keep && !self.empty.is_null())
            .then(|| unsafe { SlabHeader::from_ptr(self.empty) })
    }

    /// Any slab of the cache (for teardown).
    pub fn any_slab(&self) -> Option<&SlabHeader> {
        let at = [self.partial, self.empty, self.full]
            .into_iter()
            .find(|p| !p.is_null())?;
        // SAFETY: slabs on a node list are live (node invariant).
        Some(unsafe { SlabHeader::from_ptr(at) })
    }

    /// The heads of the partial, empty and full lists (for walks that
    /// read each slab's `next` before touching the slab).
    pub fn heads(&self) -> [*mut SlabHeader; 3] {
        [self.partial, self.empty, self.full]
    }

    /// The counters of the lists given by [`Node::heads`]; full is derived.
    pub fn list_counts(&self) -> [usize; 3] {
        [
            self.nr_partial,
            self.nr_empty,
            self.nr_slabs - self.nr_partial - self.nr_empty,
        ]
    }
}
