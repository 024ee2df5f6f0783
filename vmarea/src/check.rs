//! The invariant checker: walks the three trees, the pools and the arena
//! and reports the first broken invariant as an [`Invariant`] value.
//!
//! It only reads, bounds every walk by the nodes in use, and runs in
//! O(n) with no allocation. Meant for tests, fuzzing and debug builds, not
//! for the allocation path.

use crate::arena::{Arena, Link, NodeId};
use crate::tree::{height, subtree_max, Tree};
use crate::vmap_area::{guard_bytes, VmapAreas};
use core::fmt;
use kmm_api::{ObjectSource, VirtAddr, PAGE_SIZE};

/// Which tree an [`Invariant`] concerns.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum TreeName {
    /// `free_vmap_area_root`: free blocks.
    Free,
    /// `vmap_area_root`: live areas.
    Busy,
    /// `purge_vmap_area_root`: freed ranges awaiting their purge.
    Unpurged,
    /// The pools of purged areas (`vmap_pool`: lists, not a tree).
    Pooled,
}

/// The first broken invariant [`VmapAreas::check`] found.
#[non_exhaustive]
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Invariant {
    /// A child whose parent link does not point back at its parent, or a
    /// walk longer than the nodes in use (a cycle).
    BrokenLink {
        /// The tree.
        tree: TreeName,
        /// Start of the node whose link is wrong.
        at: VirtAddr,
    },
    /// A range that is empty, not page aligned, or outside the allocator.
    BadRange {
        /// The tree.
        tree: TreeName,
        /// Its start.
        start: VirtAddr,
        /// Its end.
        end: VirtAddr,
    },
    /// A node that does not start after the end of the one before it.
    Unordered {
        /// The tree.
        tree: TreeName,
        /// Start of the out-of-order node.
        at: VirtAddr,
    },
    /// A stored height (or, in a plain tree, balance) that is wrong, or
    /// subtrees differing by two or more.
    Unbalanced {
        /// The tree.
        tree: TreeName,
        /// Start of the node.
        at: VirtAddr,
    },
    /// A free node whose `subtree_max_size` is not the largest block under it.
    WrongSubtreeMax {
        /// Start of the node.
        at: VirtAddr,
        /// The value stored.
        recorded: usize,
        /// The largest block under it.
        computed: usize,
    },
    /// A pooled area whose size is not its pool's.
    WrongPoolSize {
        /// Its start.
        at: VirtAddr,
        /// Its pages.
        pages: usize,
        /// The pages of its pool's areas.
        pool_pages: usize,
    },
    /// A live area too small to hold a page and its guard page.
    NoRoomForGuard {
        /// Its start.
        at: VirtAddr,
    },
    /// A counter that disagrees with what the walk found.
    CountMismatch {
        /// Which: `"free tree"`, `"busy tree"`, `"unpurged tree"`,
        /// `"pool length"`, `"pooled areas"`, `"pooled pages"`, `"nodes"`,
        /// `"node free list"` or `"lazy pages"`.
        counter: &'static str,
        /// The recorded value.
        recorded: usize,
        /// What the walk counted.
        counted: usize,
    },
    /// More lazily freed pages than the threshold (a purge was missed).
    PurgeMissed {
        /// Lazily freed pages.
        lazy_pages: usize,
        /// The threshold.
        lazy_max_pages: usize,
    },
    /// Part of the range in no tree.
    Gap {
        /// The first uncovered address.
        at: VirtAddr,
    },
    /// Part of the range in two trees.
    Overlap {
        /// Where the second range starts.
        at: VirtAddr,
    },
    /// Two adjacent free blocks, or two adjacent unpurged ranges, left
    /// unmerged.
    Unmerged {
        /// The tree.
        tree: TreeName,
        /// Where they meet.
        at: VirtAddr,
    },
    /// A per-CPU vmap block whose counters or live ranges are broken
    /// (`Vmalloc::check`).
    VmapBlock {
        /// What is wrong.
        what: &'static str,
    },
}

impl fmt::Display for Invariant {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Invariant::BrokenLink { tree, at } => write!(f, "{tree:?} tree: broken link at {at}"),
            Invariant::BadRange { tree, start, end } => {
                write!(f, "{tree:?} tree: bad range [{start}, {end})")
            }
            Invariant::Unordered { tree, at } => write!(f, "{tree:?} tree: {at} out of order"),
            Invariant::Unbalanced { tree, at } => {
                write!(f, "{tree:?} tree: wrong height or imbalance at {at}")
            }
            Invariant::WrongSubtreeMax {
                at,
                recorded,
                computed,
            } => write!(
                f,
                "free tree: subtree_max_size at {at} is {recorded:#x}, not {computed:#x}"
            ),
            Invariant::WrongPoolSize {
                at,
                pages,
                pool_pages,
            } => write!(
                f,
                "the pooled area at {at} has {pages} pages, in the pool of {pool_pages}"
            ),
            Invariant::NoRoomForGuard { at } => {
                write!(f, "the area at {at} cannot hold a page and its guard")
            }
            Invariant::CountMismatch {
                counter,
                recorded,
                counted,
            } => write!(f, "{counter}: recorded {recorded}, counted {counted}"),
            Invariant::PurgeMissed {
                lazy_pages,
                lazy_max_pages,
            } => write!(
                f,
                "{lazy_pages} lazily freed pages exceed lazy_max_pages {lazy_max_pages}"
            ),
            Invariant::Gap { at } => write!(f, "{at} is in no tree"),
            Invariant::Overlap { at } => write!(f, "the range at {at} overlaps another"),
            Invariant::Unmerged { tree, at } => {
                write!(f, "{tree:?} tree: ranges meeting at {at} are not merged")
            }
            Invariant::VmapBlock { what } => write!(f, "vmap block: {what}"),
        }
    }
}

impl<S: ObjectSource> VmapAreas<S> {
    /// Verifies every invariant: each tree ordered, balanced, linked both
    /// ways and (the free tree) with correct `subtree_max_size`; each pool
    /// in address order, its areas of its size and in no tree; the trees
    /// and the pools tiling the range exactly, with no two free blocks
    /// adjacent; every counter. O(n) for n nodes, plus
    /// O([`crate::MAX_VA_SIZE_PAGES`]) per pooled area.
    pub fn check(&self) -> Result<(), Invariant> {
        self.check_tree(&self.free_vmap_area_root, TreeName::Free)?;
        self.check_tree(&self.vmap_area_root, TreeName::Busy)?;
        let lazy_bytes = self.check_tree(&self.purge_vmap_area_root, TreeName::Unpurged)?;
        self.check_pools()?;
        let counted = self.free_vmap_area_root.len()
            + self.vmap_area_root.len()
            + self.purge_vmap_area_root.len()
            + self.pool.nr_areas;
        count("nodes", self.arena.nr_live(), counted)?;
        match self.arena.free_list_len() {
            Some(len) => count("node free list", self.arena.nr_free(), len)?,
            None => count("node free list", self.arena.nr_free(), usize::MAX)?,
        }
        count("lazy pages", self.lazy.nr_pages, lazy_bytes / PAGE_SIZE)?;
        if self.lazy.nr_pages > self.lazy.max_pages {
            return Err(Invariant::PurgeMissed {
                lazy_pages: self.lazy.nr_pages,
                lazy_max_pages: self.lazy.max_pages,
            });
        }
        self.check_tiling()
    }

    /// Walks one tree in order checking every node; returns the bytes it
    /// covers.
    fn check_tree<const AUGMENTED: bool>(
        &self,
        tree: &Tree<AUGMENTED>,
        name: TreeName,
    ) -> Result<usize, Invariant> {
        let arena = &self.arena;
        let budget = arena.nr_live();
        let mut visited = 0;
        let mut covered = 0;
        let mut previous_end = self.start;
        if let Some(root) = tree.root() {
            if arena.get(root).parent.is_some() {
                return Err(Invariant::BrokenLink {
                    tree: name,
                    at: start_of(arena, root),
                });
            }
        }
        let mut walk = Walk::new(arena, name);
        let mut cursor = walk.first(tree.root())?;
        while let Some(id) = cursor {
            visited += 1;
            if visited > budget {
                return Err(Invariant::BrokenLink {
                    tree: name,
                    at: start_of(arena, id),
                });
            }
            let node = arena.get(id);
            let at = VirtAddr::new(node.start);
            for child in [node.left, node.right].into_iter().flatten() {
                if arena.get(child).parent != Some(id) {
                    return Err(Invariant::BrokenLink { tree: name, at });
                }
            }
            let parent_points_back = match node.parent {
                None => tree.root() == Some(id),
                Some(parent) => {
                    let parent = arena.get(parent);
                    parent.left == Some(id) || parent.right == Some(id)
                }
            };
            if !parent_points_back {
                return Err(Invariant::BrokenLink { tree: name, at });
            }
            if node.start >= node.end
                || node.start % PAGE_SIZE != 0
                || node.end % PAGE_SIZE != 0
                || node.start < self.start
                || node.end > self.end
            {
                return Err(Invariant::BadRange {
                    tree: name,
                    start: at,
                    end: VirtAddr::new(node.end),
                });
            }
            if node.start < previous_end {
                return Err(Invariant::Unordered { tree: name, at });
            }
            previous_end = node.end;
            let (left, right) = (height(arena, node.left), height(arena, node.right));
            if node.height != 1 + left.max(right)
                || left.abs_diff(right) > 1
                || (!AUGMENTED && i16::from(node.balance) != i16::from(left) - i16::from(right))
            {
                return Err(Invariant::Unbalanced { tree: name, at });
            }
            if AUGMENTED {
                let computed = node
                    .len()
                    .max(subtree_max(arena, node.left))
                    .max(subtree_max(arena, node.right));
                if node.subtree_max != computed {
                    return Err(Invariant::WrongSubtreeMax {
                        at,
                        recorded: node.subtree_max,
                        computed,
                    });
                }
            }
            if name == TreeName::Busy && node.len() < PAGE_SIZE + guard_bytes(node.flags) {
                return Err(Invariant::NoRoomForGuard { at });
            }
            covered += node.len();
            cursor = walk.next(id)?;
        }
        let counter = match name {
            TreeName::Free => "free tree",
            TreeName::Busy => "busy tree",
            TreeName::Unpurged => "unpurged tree",
            TreeName::Pooled => "pools",
        };
        count(counter, tree.len(), visited)?;
        Ok(covered)
    }

    /// Walks every pool: each area in the range, of its pool's size,
    /// detached from the trees, above the one before it; the lengths and
    /// totals as recorded.
    fn check_pools(&self) -> Result<(), Invariant> {
        let arena = &self.arena;
        let mut budget = arena.nr_live();
        let (mut areas, mut pages) = (0, 0);
        for (index, pool) in self.pool.pool.iter().enumerate() {
            let mut len = 0;
            let mut previous_end = self.start;
            let mut cursor = pool.head;
            while let Some(id) = cursor {
                let node = arena.get(id);
                let at = VirtAddr::new(node.start);
                budget = budget.checked_sub(1).ok_or(Invariant::BrokenLink {
                    tree: TreeName::Pooled,
                    at,
                })?;
                if node.left.is_some() || node.parent.is_some() {
                    return Err(Invariant::BrokenLink {
                        tree: TreeName::Pooled,
                        at,
                    });
                }
                if node.start >= node.end
                    || node.start % PAGE_SIZE != 0
                    || node.end % PAGE_SIZE != 0
                    || node.start < self.start
                    || node.end > self.end
                {
                    return Err(Invariant::BadRange {
                        tree: TreeName::Pooled,
                        start: at,
                        end: VirtAddr::new(node.end),
                    });
                }
                if node.len() != (index + 1) * PAGE_SIZE {
                    return Err(Invariant::WrongPoolSize {
                        at,
                        pages: node.len() / PAGE_SIZE,
                        pool_pages: index + 1,
                    });
                }
                if node.start < previous_end {
                    return Err(Invariant::Unordered {
                        tree: TreeName::Pooled,
                        at,
                    });
                }
                previous_end = node.end;
                len += 1;
                cursor = node.right;
            }
            count("pool length", pool.len as usize, len)?;
            areas += len;
            pages += len * (index + 1);
        }
        count("pooled areas", self.pool.nr_areas, areas)?;
        count("pooled pages", self.pool.nr_pages, pages)
    }

    /// Walks the three trees and the pools together: each range must start
    /// where the one before ended, from the range's start to its end.
    fn check_tiling(&self) -> Result<(), Invariant> {
        let arena = &self.arena;
        let mut cursors = [
            self.free_vmap_area_root.first(arena),
            self.vmap_area_root.first(arena),
            self.purge_vmap_area_root.first(arena),
        ];
        let mut pools = self.pool.pool.map(|pool| pool.head);
        let mut at = self.start;
        let mut previous = None;
        loop {
            let next = cursors.iter().enumerate().find_map(|(tree, &cursor)| {
                cursor
                    .filter(|&id| arena.get(id).start == at)
                    .map(|id| (tree, id))
            });
            let Some((tree, id)) = next else {
                // A range in no tree must be the lowest area of a pool.
                let pooled = pools
                    .iter_mut()
                    .find(|cursor| cursor.is_some_and(|id| arena.get(id).start == at));
                if let Some(cursor) = pooled {
                    let id = cursor.expect("found by its start");
                    previous = Some(TreeName::Pooled);
                    at = arena.get(id).end;
                    *cursor = arena.get(id).right;
                    continue;
                }
                let lowest = cursors
                    .iter()
                    .chain(pools.iter())
                    .flatten()
                    .map(|&id| arena.get(id).start)
                    .min();
                return match lowest {
                    None if at == self.end => Ok(()),
                    Some(start) if start < at => Err(Invariant::Overlap {
                        at: VirtAddr::new(start),
                    }),
                    _ => Err(Invariant::Gap {
                        at: VirtAddr::new(at),
                    }),
                };
            };
            let name = [TreeName::Free, TreeName::Busy, TreeName::Unpurged][tree];
            if name != TreeName::Busy && previous == Some(name) {
                return Err(Invariant::Unmerged {
                    tree: name,
                    at: VirtAddr::new(at),
                });
            }
            previous = Some(name);
            at = arena.get(id).end;
            cursors[tree] = Tree::<false>::next(arena, id);
        }
    }
}

/// An in-order walk that trusts no link: every step counts against a
/// budget of three per node in use (a sound walk takes at most two), so a
/// cycle is reported instead of followed forever.
struct Walk<'a, S: ObjectSource> {
    arena: &'a Arena<S>,
    tree: TreeName,
    steps_left: usize,
}

impl<'a, S: ObjectSource> Walk<'a, S> {
    fn new(arena: &'a Arena<S>, tree: TreeName) -> Self {
        Walk {
            arena,
            tree,
            steps_left: 3 * arena.nr_live() + 3,
        }
    }

    fn step(&mut self, at: NodeId) -> Result<(), Invariant> {
        match self.steps_left.checked_sub(1) {
            Some(left) => {
                self.steps_left = left;
                Ok(())
            }
            None => Err(Invariant::BrokenLink {
                tree: self.tree,
                at: start_of(self.arena, at),
            }),
        }
    }

    fn first(&mut self, root: Link) -> Result<Link, Invariant> {
        let Some(mut at) = root else {
            return Ok(None);
        };
        while let Some(left) = self.arena.get(at).left {
            self.step(at)?;
            at = left;
        }
        Ok(Some(at))
    }

    fn next(&mut self, id: NodeId) -> Result<Link, Invariant> {
        if let Some(right) = self.arena.get(id).right {
            self.step(id)?;
            return self.first(Some(right));
        }
        let mut child = id;
        while let Some(parent) = self.arena.get(child).parent {
            self.step(child)?;
            if self.arena.get(parent).left == Some(child) {
                return Ok(Some(parent));
            }
            child = parent;
        }
        Ok(None)
    }
}

fn start_of<S: ObjectSource>(arena: &Arena<S>, id: NodeId) -> VirtAddr {
    VirtAddr::new(arena.get(id).start)
}

fn count(counter: &'static str, recorded: usize, counted: usize) -> Result<(), Invariant> {
    if recorded == counted {
        Ok(())
    } else {
        Err(Invariant::CountMismatch {
            counter,
            recorded,
            counted,
        })
    }
}

#[cfg(test)]
mod tests {
    //! Each invariant broken by hand, to show the checker reports it.

    use super::*;
    use crate::arena::Node;
    use crate::testing::BufferSource;
    use crate::VmFlags;
    use kmm_api::GFP_KERNEL;

    const BASE: usize = 0x1000_0000;

    /// Three areas with a free block between the first two, one unpurged.
    fn populated() -> VmapAreas<BufferSource> {
        let range = (VirtAddr::new(BASE), VirtAddr::new(BASE + 64 * PAGE_SIZE));
        let mut areas = VmapAreas::new(BufferSource::pages(8), range.0, range.1, 1).unwrap();
        let mut starts = [0; 4];
        for start in &mut starts {
            *start = areas
                .alloc(PAGE_SIZE, PAGE_SIZE, VmFlags::ALLOC, GFP_KERNEL)
                .unwrap()
                .start()
                .as_usize();
        }
        let _ = areas.free(VirtAddr::new(starts[1])).unwrap();
        areas.reclaim_and_purge().unwrap().defer();
        let _ = areas.free(VirtAddr::new(starts[3])).unwrap();
        areas.check().unwrap();
        areas
    }

    fn node_at<const A: bool>(
        areas: &VmapAreas<BufferSource>,
        tree: &Tree<A>,
        start: usize,
    ) -> NodeId {
        tree.find_le(&areas.arena, start).unwrap()
    }

    #[test]
    fn a_wrong_subtree_max_size_is_reported() {
        let mut areas = populated();
        let root = areas.free_vmap_area_root.root().unwrap();
        areas.arena.get_mut(root).subtree_max += PAGE_SIZE;
        assert!(matches!(
            areas.check(),
            Err(Invariant::WrongSubtreeMax { .. })
        ));
    }

    #[test]
    fn a_shrunk_free_block_leaves_a_gap() {
        let mut areas = populated();
        let id = node_at(&areas, &areas.free_vmap_area_root, BASE + 2 * PAGE_SIZE);
        areas.arena.get_mut(id).end -= PAGE_SIZE;
        let mut tree = areas.free_vmap_area_root;
        tree.refresh(&mut areas.arena, id);
        areas.free_vmap_area_root = tree;
        let at = VirtAddr::new(BASE + 3 * PAGE_SIZE);
        assert_eq!(areas.check(), Err(Invariant::Gap { at }));
    }

    #[test]
    fn a_grown_area_overlapping_a_free_block_is_reported() {
        let mut areas = populated();
        let id = node_at(&areas, &areas.vmap_area_root, BASE);
        areas.arena.get_mut(id).end += PAGE_SIZE;
        let at = VirtAddr::new(BASE + 2 * PAGE_SIZE);
        assert_eq!(areas.check(), Err(Invariant::Overlap { at }));
    }

    #[test]
    fn two_adjacent_free_blocks_are_reported_unmerged() {
        let mut areas = populated();
        // Split the top free block in two adjacent nodes.
        let id = node_at(&areas, &areas.free_vmap_area_root, BASE + 63 * PAGE_SIZE);
        let end = areas.arena.get(id).end;
        let middle = areas.arena.get(id).start + PAGE_SIZE;
        areas.arena.get_mut(id).end = middle;
        let mut tree = areas.free_vmap_area_root;
        tree.refresh(&mut areas.arena, id);
        let upper = areas
            .arena
            .alloc(Node::new(middle, end, VmFlags::empty()), GFP_KERNEL)
            .unwrap();
        tree.insert(&mut areas.arena, upper);
        areas.free_vmap_area_root = tree;
        let at = VirtAddr::new(middle);
        assert_eq!(
            areas.check(),
            Err(Invariant::Unmerged {
                tree: TreeName::Free,
                at
            })
        );
    }

    #[test]
    fn a_wrong_lazy_count_is_reported() {
        let mut areas = populated();
        areas.lazy.nr_pages += 1;
        assert_eq!(
            areas.check(),
            Err(Invariant::CountMismatch {
                counter: "lazy pages",
                recorded: 3,
                counted: 2
            })
        );
    }

    #[test]
    fn a_broken_parent_link_is_reported() {
        let mut areas = populated();
        let root = areas.vmap_area_root.root().unwrap();
        let child = areas.arena.get(root).left.unwrap();
        areas.arena.get_mut(child).parent = Some(child);
        assert!(matches!(
            areas.check(),
            Err(Invariant::BrokenLink {
                tree: TreeName::Busy,
                ..
            })
        ));
    }

    #[test]
    fn a_wrong_stored_balance_in_a_plain_tree_is_reported_unbalanced() {
        let mut areas = populated();
        let root = areas.vmap_area_root.root().unwrap();
        areas.arena.get_mut(root).balance += 1;
        assert!(matches!(
            areas.check(),
            Err(Invariant::Unbalanced {
                tree: TreeName::Busy,
                ..
            })
        ));
    }

    #[test]
    fn a_wrong_height_is_reported_unbalanced() {
        let mut areas = populated();
        let root = areas.vmap_area_root.root().unwrap();
        areas.arena.get_mut(root).height += 1;
        assert!(matches!(
            areas.check(),
            Err(Invariant::Unbalanced {
                tree: TreeName::Busy,
                ..
            })
        ));
    }

    /// `populated`, with the free area at `BASE + 2 pages` pooled.
    fn with_a_pooled_area() -> (VmapAreas<BufferSource>, NodeId) {
        let mut areas = populated();
        let id = areas
            .arena
            .alloc(
                Node::new(
                    BASE + 64 * PAGE_SIZE,
                    BASE + 66 * PAGE_SIZE,
                    VmFlags::empty(),
                ),
                GFP_KERNEL,
            )
            .unwrap();
        // Grow the range by two pages, held in the 2-page pool.
        areas.end += 2 * PAGE_SIZE;
        let pool = &mut areas.pool;
        assert!(pool.stage(&mut areas.arena, id));
        pool.settle(&mut areas.arena);
        areas.check().unwrap();
        (areas, id)
    }

    #[test]
    fn a_pooled_area_of_another_size_is_reported() {
        let (mut areas, id) = with_a_pooled_area();
        areas.arena.get_mut(id).end += PAGE_SIZE;
        areas.end += PAGE_SIZE;
        let at = VirtAddr::new(BASE + 64 * PAGE_SIZE);
        assert_eq!(
            areas.check(),
            Err(Invariant::WrongPoolSize {
                at,
                pages: 3,
                pool_pages: 2
            })
        );
    }

    #[test]
    fn a_pooled_area_overlapping_a_tree_is_reported() {
        let (mut areas, id) = with_a_pooled_area();
        // Shift it down by a page, over the top free block.
        let node = areas.arena.get_mut(id);
        node.start -= PAGE_SIZE;
        node.end -= PAGE_SIZE;
        assert!(matches!(areas.check(), Err(Invariant::Overlap { .. })));
    }

    #[test]
    fn a_wrong_pool_length_is_reported() {
        let (mut areas, _) = with_a_pooled_area();
        areas.pool.pool[1].len += 1;
        assert!(matches!(
            areas.check(),
            Err(Invariant::CountMismatch {
                counter: "pool length",
                ..
            })
        ));
    }

    #[test]
    fn a_purge_missed_past_the_threshold_is_reported() {
        let mut areas = populated();
        areas.lazy.max_pages = 1;
        assert!(matches!(areas.check(), Err(Invariant::PurgeMissed { .. })));
    }
}
