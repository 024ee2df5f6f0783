//! The pools of purged areas (Linux 6.9's `struct vmap_pool`, one per size
//! up to [`MAX_VA_SIZE_PAGES`] pages): after a purge, a freed range of a
//! small size waits here, off every tree, for the next allocation of
//! exactly its size, instead of merging back into free space only to be
//! split off again.
//!
//! Owns only the pool lists: each pool is a singly linked list of detached
//! nodes threaded through their `right` link (a pooled node is in no tree,
//! so its tree links are free), kept in address order, with its length.
//! The nodes themselves stay the arena's.
//!
//! # Rules
//!
//! - [`VmapPools::node_alloc`] takes the lowest area of exactly the size
//!   asked, and only if its start has the alignment asked; otherwise the
//!   caller searches the free tree. Linux moves a refused head to the
//!   tail; kept in address order, the pool leaves it where it is, so a
//!   refused request changes nothing.
//! - [`VmapPools::decay`] hands back to free space the lowest quarter of
//!   every pool (Linux `decay_va_pool_node`, `len >> 2`; Linux takes the
//!   newest, here the head costs no walk past what is decayed), or every
//!   pooled area for a full decay, so a pool that is not used drains and
//!   an allocation that found no space can get every pooled page back
//!   before its retry.
//! - [`VmapPools::stage`] then [`VmapPools::settle`] pool a purge's batch
//!   (Linux `node_pool_add_va`): a range of more pages goes to free space.
//!
//! # Where this differs from Linux
//!
//! Linux keeps a set of pools per vmap node (a group of CPUs) and serves
//! from them only requests over the whole vmalloc range, sending areas
//! of narrower requests back to free space at the purge. Here there is
//! one node, and every request is over the allocator's whole range (it
//! has no narrower form), so every request may be served from the pools.
//! Linux 6.9 also stopped merging touching ranges in its lazy tree, so
//! that each freed area is pooled whole; the unpurged tree here still
//! merges them (fewer nodes, one merged range per run of frees), so a
//! pooled area may be several freed areas joined, pooled by their total
//! size.
//!
//! # Cost
//!
//! `node_alloc` O(1); a purge's `stage` O(1) per range and its `settle`
//! O(p + b) for the p areas already pooled in the sizes the batch of b
//! touches (O(b) when the batch lies below them); `decay` O(d) for the d
//! areas it decays, plus one look at each of the 256 pools. Memory: 12
//! bytes a size, 3 KiB in all, inside the allocator.
//!
//! # Never
//!
//! Holds a range that has not been through a purge's flush (only a purge
//! stages), holds a node that is also in a tree, or lets a lookup find a
//! pooled range: to `find_vmap_area` and `free` a pooled range is free.

use crate::arena::{Arena, Link, NodeId};
use kmm_api::{ObjectSource, PAGE_SIZE};

/// Pages (guard included) of the largest area a pool keeps (Linux's
/// `MAX_VA_SIZE_PAGES`); larger ranges always go back to free space.
pub const MAX_VA_SIZE_PAGES: usize = 256;

/// One size's pool (Linux `struct vmap_pool`): its areas in address
/// order, and, during a purge, the batch's ranges of its size waiting to
/// be merged in.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct VmapPool {
    pub(crate) head: Link,
    pub(crate) len: u32,
    /// A purge's ranges of this size, highest first (each is pushed on
    /// the front as the batch comes in address order); `None` between
    /// purges.
    staged: Link,
}

/// How much of the pools a purge gives back to free space.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) enum Decay {
    /// A quarter of every pool (every purge).
    Quarter,
    /// Everything, and the purge's batch goes to free space too (before
    /// the one retry of an allocation that found no space).
    Full,
}

/// The pools of one allocator, indexed by pages minus one.
pub(crate) struct VmapPools {
    pub(crate) pool: [VmapPool; MAX_VA_SIZE_PAGES],
    /// Pooled areas and pages over every pool, for the stats in O(1).
    pub(crate) nr_areas: usize,
    pub(crate) nr_pages: usize,
}

static_assertions::const_assert!(core::mem::size_of::<VmapPool>() == 12);

/// The pool index of an area of `bytes` (a whole number of pages), if a
/// pool keeps that size (Linux `size_to_va_pool`).
pub(crate) fn size_to_va_pool(bytes: usize) -> Option<usize> {
    let index = (bytes / PAGE_SIZE).checked_sub(1)?;
    (index < MAX_VA_SIZE_PAGES).then_some(index)
}

impl VmapPools {
    pub(crate) const fn new() -> Self {
        VmapPools {
            pool: [VmapPool {
                head: None,
                len: 0,
                staged: None,
            }; MAX_VA_SIZE_PAGES],
            nr_areas: 0,
            nr_pages: 0,
        }
    }

    /// The lowest pooled area of exactly `size` bytes, detached, if its
    /// start is aligned to `align` (a power of two); `None` leaves the
    /// pools unchanged.
    pub(crate) fn node_alloc<S: ObjectSource>(
        &mut self,
        arena: &mut Arena<S>,
        size: usize,
        align: usize,
    ) -> Option<NodeId> {
        let pool = &mut self.pool[size_to_va_pool(size)?];
        let id = pool.head?;
        let node = arena.get_mut(id);
        if node.start & (align - 1) != 0 {
            return None;
        }
        pool.head = node.right.take();
        pool.len -= 1;
        self.nr_areas -= 1;
        self.nr_pages -= size / PAGE_SIZE;
        Some(id)
    }

    /// Takes a purged range into its size's pool, or refuses it (`false`)
    /// when no pool keeps its size. The range is only staged: the purge
    /// calls [`VmapPools::settle`] after its last one. Ranges must come in
    /// address order.
    pub(crate) fn stage<S: ObjectSource>(&mut self, arena: &mut Arena<S>, id: NodeId) -> bool {
        let node = arena.get_mut(id);
        let Some(index) = size_to_va_pool(node.len()) else {
            return false;
        };
        let pool = &mut self.pool[index];
        node.right = pool.staged;
        pool.staged = Some(id);
        pool.len += 1;
        self.nr_areas += 1;
        self.nr_pages += index + 1;
        true
    }

    /// Merges every pool's staged ranges into it, in address order.
    pub(crate) fn settle<S: ObjectSource>(&mut self, arena: &mut Arena<S>) {
        for pool in &mut self.pool {
            // Staged highest first: reversed, then merged as two sorted
            // lists.
            let mut staged = None;
            let mut cursor = pool.staged.take();
            while let Some(id) = cursor {
                cursor = core::mem::replace(&mut arena.get_mut(id).right, staged);
                staged = Some(id);
            }
            if staged.is_none() {
                continue;
            }
            let (mut a, mut b) = (pool.head, staged);
            let mut tail: Option<NodeId> = None;
            loop {
                let next = match (a, b) {
                    (Some(x), Some(y)) if arena.get(x).start < arena.get(y).start => {
                        a = arena.get(x).right;
                        x
                    }
                    (_, Some(y)) => {
                        b = arena.get(y).right;
                        y
                    }
                    (Some(x), None) => {
                        // The rest of the pool is already linked.
                        link(arena, &mut pool.head, tail, x);
                        break;
                    }
                    (None, None) => break,
                };
                link(arena, &mut pool.head, tail, next);
                tail = Some(next);
            }
        }
    }

    /// Detaches the lowest quarter of every pool (every area for
    /// [`Decay::Full`]) and hands each to `reclaim`, a pool's in address
    /// order.
    pub(crate) fn decay<S: ObjectSource>(
        &mut self,
        arena: &mut Arena<S>,
        decay: Decay,
        mut reclaim: impl FnMut(&mut Arena<S>, NodeId),
    ) {
        if self.nr_areas == 0 {
            return;
        }
        for (index, pool) in self.pool.iter_mut().enumerate() {
            let len = pool.len as usize;
            let n_decay = match decay {
                Decay::Quarter => len >> 2,
                Decay::Full => len,
            };
            if n_decay == 0 {
                continue;
            }
            pool.len = (len - n_decay) as u32;
            self.nr_areas -= n_decay;
            self.nr_pages -= n_decay * (index + 1);
            for _ in 0..n_decay {
                let id = pool.head.expect("a pool holds len areas");
                pool.head = arena.get_mut(id).right.take();
                reclaim(arena, id);
            }
        }
    }
}

/// Appends `id` after `tail`, or makes it the head.
fn link<S: ObjectSource>(arena: &mut Arena<S>, head: &mut Link, tail: Link, id: NodeId) {
    match tail {
        Some(tail) => arena.get_mut(tail).right = Some(id),
        None => *head = Some(id),
    }
}
