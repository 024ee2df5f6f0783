//! The address-ordered AVL trees (Linux keeps red-black trees here): the
//! free tree `free_vmap_area_root`, augmented with `subtree_max_size`, and
//! the busy and unpurged trees, plain.
//!
//! Why AVL: lookups dominate (every allocation searches, every free finds
//! its area and its neighbours), and an AVL tree is at most 1.44 log2 n
//! deep against a red-black tree's 2 log2 n. The augmentation has to be
//! refreshed up to the root after every change anyway, so AVL's longer
//! rebalancing walk costs nothing extra. Iterative, with parent links: no
//! recursion, so the stack depth never depends on the number of areas.
//!
//! Keys are node starts; nodes in one tree never overlap. A node's start or
//! end may be changed in place (a split or merge) as long as the order
//! holds; [`Tree::refresh`] then restores the augmentation.
//!
//! Cost: `insert`, `remove`, `refresh`, `find_le`, `neighbours` and
//! `first` are
//! O(log n) (each stops climbing at the first subtree whose height and
//! maximum come out unchanged); `next` is O(1) amortised over an
//! in-order walk; `drain` is O(n).

use crate::arena::{Arena, Link, NodeId};
use kmm_api::ObjectSource;

/// One AVL tree whose nodes live in an [`Arena`]. `AUGMENTED` trees keep
/// `subtree_max`, the largest `end - start` under each node.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct Tree<const AUGMENTED: bool> {
    root: Link,
    len: usize,
}

/// Height of a link (an empty subtree has height 0).
pub(crate) fn height<S: ObjectSource>(arena: &Arena<S>, link: Link) -> u8 {
    link.map_or(0, |id| arena.get(id).height)
}

/// Height and largest free block under a link, in one read.
fn figures<S: ObjectSource>(arena: &Arena<S>, link: Link) -> (u8, usize) {
    link.map_or((0, 0), |id| {
        let node = arena.get(id);
        (node.height, node.subtree_max)
    })
}

/// The balance of a node whose subtrees have these figures (left height
/// less right, -1 to 1 in a balanced node).
fn balance_of(left: (u8, usize), right: (u8, usize)) -> i8 {
    // Heights stay below 64 (ids are 31 bits), so the difference fits.
    (i16::from(left.0) - i16::from(right.0)) as i8
}

/// The heights of the two subtrees of a balanced node of `height` and
/// `balance`.
fn child_heights(height: u8, balance: i8) -> (u8, u8) {
    let taller = height - 1;
    match balance {
        1.. => (taller, taller - 1),
        0 => (taller, taller),
        _ => (taller - 1, taller),
    }
}

/// Largest free block under a link (0 for an empty subtree).
pub(crate) fn subtree_max<S: ObjectSource>(arena: &Arena<S>, link: Link) -> usize {
    link.map_or(0, |id| arena.get(id).subtree_max)
}

impl<const AUGMENTED: bool> Tree<AUGMENTED> {
    /// An empty tree.
    pub(crate) const fn new() -> Self {
        Tree { root: None, len: 0 }
    }

    pub(crate) fn root(&self) -> Link {
        self.root
    }

    /// Nodes in the tree.
    pub(crate) fn len(&self) -> usize {
        self.len
    }

    /// Links a detached node in by its start.
    pub(crate) fn insert<S: ObjectSource>(&mut self, arena: &mut Arena<S>, id: NodeId) {
        let (below, above) = self.neighbours(arena, arena.get(id).start);
        self.insert_between(arena, id, below, above);
    }

    /// Links a detached node in just before `next` in address order (its
    /// range lies between `next` and `next`'s predecessor), descending
    /// only within `next`'s left subtree.
    pub(crate) fn insert_before<S: ObjectSource>(
        &mut self,
        arena: &mut Arena<S>,
        id: NodeId,
        next: NodeId,
    ) {
        // The predecessor below `next`, if any, is the rightmost of its
        // left subtree; one above it has its right slot taken.
        let below = arena.get(next).left.map(|mut at| {
            while let Some(right) = arena.get(at).right {
                at = right;
            }
            at
        });
        self.insert_between(arena, id, below, Some(next));
    }

    /// Links a detached node in between `below` and `above`, what
    /// [`Tree::neighbours`] just returned for its start, without a second
    /// descent: the descent ended at one of them with a free child slot
    /// on the node's side (`below`'s right when it has none, else the
    /// leftmost of its right subtree, `above`, whose left is free).
    pub(crate) fn insert_between<S: ObjectSource>(
        &mut self,
        arena: &mut Arena<S>,
        id: NodeId,
        below: Link,
        above: Link,
    ) {
        let parent = match (below, above) {
            (Some(below), _) if arena.get(below).right.is_none() => {
                arena.get_mut(below).right = Some(id);
                Some(below)
            }
            (_, Some(above)) => {
                debug_assert!(arena.get(above).left.is_none(), "not the neighbours");
                arena.get_mut(above).left = Some(id);
                Some(above)
            }
            _ => {
                debug_assert!(self.root.is_none(), "not the neighbours");
                self.root = Some(id);
                None
            }
        };
        let node = arena.get_mut(id);
        node.left = None;
        node.right = None;
        node.parent = parent;
        node.height = 1;
        node.balance = 0;
        // A leaf's augmentation is its own length.
        let max = if AUGMENTED { node.len() } else { 0 };
        node.subtree_max = max;
        self.len += 1;
        if parent.is_some() {
            // The parent's new child is the leaf: its figures are known.
            self.rebalance_above(arena, parent, Some((id, (1, max))));
        }
    }

    /// Unlinks a node; its links are cleared, its range kept.
    pub(crate) fn remove<S: ObjectSource>(&mut self, arena: &mut Arena<S>, id: NodeId) {
        let node = *arena.get(id);
        let (fix_from, moved_up) = match (node.left, node.right) {
            (None, child) | (child, None) => {
                self.replace_child(arena, node.parent, id, child);
                if let Some(child) = child {
                    arena.get_mut(child).parent = node.parent;
                }
                (node.parent, None)
            }
            (Some(left), Some(right)) => {
                // The successor, leftmost of the right subtree, takes the
                // removed node's place.
                let mut successor = right;
                while let Some(next) = arena.get(successor).left {
                    successor = next;
                }
                let fix_from = if successor == right {
                    successor
                } else {
                    let above = arena.get(successor).parent.unwrap_or(right);
                    let orphan = arena.get(successor).right;
                    arena.get_mut(above).left = orphan;
                    if let Some(orphan) = orphan {
                        arena.get_mut(orphan).parent = Some(above);
                    }
                    arena.get_mut(successor).right = Some(right);
                    arena.get_mut(right).parent = Some(successor);
                    above
                };
                arena.get_mut(successor).left = Some(left);
                arena.get_mut(left).parent = Some(successor);
                // It inherits the removed node's figures, so that the
                // walk from below compares against what stood there.
                let moved = arena.get_mut(successor);
                moved.parent = node.parent;
                moved.height = node.height;
                moved.balance = node.balance;
                moved.subtree_max = node.subtree_max;
                self.replace_child(arena, node.parent, id, Some(successor));
                (Some(fix_from), Some(successor))
            }
        };
        let detached = arena.get_mut(id);
        detached.left = None;
        detached.right = None;
        detached.parent = None;
        detached.height = 1;
        detached.balance = 0;
        self.len -= 1;
        self.rebalance_from(arena, fix_from);
        // The walk may have stopped below the successor, whose inherited
        // figures still count the removed node: recompute from it too.
        if moved_up.is_some() {
            self.rebalance_from(arena, moved_up);
        }
    }

    /// Empties the tree, handing each node to `take` in address order, in
    /// O(n): the tree is unrolled by right rotations instead of removing
    /// nodes one by one. `take` may relink the node it is given.
    pub(crate) fn drain<S: ObjectSource>(
        &mut self,
        arena: &mut Arena<S>,
        mut take: impl FnMut(&mut Arena<S>, NodeId),
    ) {
        let mut cursor = self.root.take();
        self.len = 0;
        while let Some(at) = cursor {
            match arena.get(at).left {
                Some(left) => {
                    // Lift the left child over `at`; `at` keeps its right.
                    let inner = arena.get(left).right;
                    arena.get_mut(at).left = inner;
                    arena.get_mut(left).right = Some(at);
                    cursor = Some(left);
                }
                None => {
                    cursor = arena.get(at).right;
                    let node = arena.get_mut(at);
                    node.left = None;
                    node.right = None;
                    node.parent = None;
                    node.height = 1;
                    node.balance = 0;
                    take(arena, at);
                }
            }
        }
    }

    /// Fills an empty tree with `len` detached nodes linked in address
    /// order through `right` from `head`, balanced by size (a node's two
    /// subtrees differ by at most one node, so by at most one in height):
    /// O(len), for a purge that rebuilds free space in one pass instead of
    /// inserting its batch node by node. It recurses once per level, so
    /// at most 31 frames deep (ids are 31 bits).
    pub(crate) fn build<S: ObjectSource>(&mut self, arena: &mut Arena<S>, head: Link, len: usize) {
        debug_assert!(self.root.is_none(), "build fills an empty tree");
        let mut cursor = head;
        let (root, _) = Self::build_subtree(arena, &mut cursor, len);
        debug_assert!(cursor.is_none(), "the list holds more than len nodes");
        if let Some(root) = root {
            arena.get_mut(root).parent = None;
        }
        self.root = root;
        self.len = len;
    }

    /// The subtree of the next `n` nodes of the list at `cursor`, which it
    /// advances past them; its root's parent is left to the caller.
    fn build_subtree<S: ObjectSource>(
        arena: &mut Arena<S>,
        cursor: &mut Link,
        n: usize,
    ) -> (Link, (u8, usize)) {
        if n == 0 {
            return (None, (0, 0));
        }
        let (left, left_figures) = Self::build_subtree(arena, cursor, n / 2);
        let id = cursor.expect("the list holds len nodes");
        let node = arena.get(id);
        let len = node.len();
        *cursor = node.right;
        let (right, right_figures) = Self::build_subtree(arena, cursor, n - n / 2 - 1);
        let figures = Self::combine(len, left_figures, right_figures);
        let node = arena.get_mut(id);
        (node.left, node.right) = (left, right);
        (node.height, node.subtree_max) = figures;
        if !AUGMENTED {
            node.balance = balance_of(left_figures, right_figures);
        }
        for child in [left, right].into_iter().flatten() {
            arena.get_mut(child).parent = Some(id);
        }
        (Some(id), figures)
    }

    /// Restores heights and `subtree_max` from `id` up to the root after
    /// its range changed in place.
    pub(crate) fn refresh<S: ObjectSource>(&mut self, arena: &mut Arena<S>, id: NodeId) {
        self.rebalance_from(arena, Some(id));
    }

    /// The node with the greatest start at or below `key`.
    pub(crate) fn find_le<S: ObjectSource>(&self, arena: &Arena<S>, key: usize) -> Link {
        let mut best = None;
        let mut cursor = self.root;
        while let Some(at) = cursor {
            let node = arena.get(at);
            if node.start <= key {
                best = Some(at);
                cursor = node.right;
            } else {
                cursor = node.left;
            }
        }
        best
    }

    /// The nodes either side of `key` in one descent: the one with the
    /// greatest start at or below it and the one with the least start
    /// above it (a free's neighbours, without a second walk for the
    /// successor).
    pub(crate) fn neighbours<S: ObjectSource>(&self, arena: &Arena<S>, key: usize) -> (Link, Link) {
        let (mut below, mut above) = (None, None);
        let mut cursor = self.root;
        while let Some(at) = cursor {
            let node = arena.get(at);
            if node.start <= key {
                below = Some(at);
                cursor = node.right;
            } else {
                above = Some(at);
                cursor = node.left;
            }
        }
        (below, above)
    }

    /// The lowest node.
    pub(crate) fn first<S: ObjectSource>(&self, arena: &Arena<S>) -> Link {
        let mut cursor = self.root?;
        while let Some(left) = arena.get(cursor).left {
            cursor = left;
        }
        Some(cursor)
    }

    /// The highest node.
    pub(crate) fn last<S: ObjectSource>(&self, arena: &Arena<S>) -> Link {
        let mut cursor = self.root?;
        while let Some(right) = arena.get(cursor).right {
            cursor = right;
        }
        Some(cursor)
    }

    /// The node after `id` in address order.
    pub(crate) fn next<S: ObjectSource>(arena: &Arena<S>, id: NodeId) -> Link {
        if let Some(mut cursor) = arena.get(id).right {
            while let Some(left) = arena.get(cursor).left {
                cursor = left;
            }
            return Some(cursor);
        }
        let mut child = id;
        while let Some(parent) = arena.get(child).parent {
            if arena.get(parent).left == Some(child) {
                return Some(parent);
            }
            child = parent;
        }
        None
    }

    /// Points `parent`'s link to `old` (or the root) at `new`.
    fn replace_child<S: ObjectSource>(
        &mut self,
        arena: &mut Arena<S>,
        parent: Link,
        old: NodeId,
        new: Link,
    ) {
        match parent {
            None => self.root = new,
            Some(parent) => {
                let node = arena.get_mut(parent);
                if node.left == Some(old) {
                    node.left = new;
                } else {
                    node.right = new;
                }
            }
        }
    }

    /// A node's height and augmentation from its length and its
    /// children's figures.
    fn combine(len: usize, left: (u8, usize), right: (u8, usize)) -> (u8, usize) {
        let max = if AUGMENTED {
            len.max(left.1).max(right.1)
        } else {
            0
        };
        (1 + left.0.max(right.0), max)
    }

    /// Walks from `from` towards the root, updating and rotating where a
    /// node's subtrees differ in height by two, and ends at the first
    /// subtree whose height and `subtree_max` come out as they were:
    /// nothing above depends on anything else below.
    fn rebalance_from<S: ObjectSource>(&mut self, arena: &mut Arena<S>, from: Link) {
        self.rebalance_above(arena, from, None);
    }

    /// [`Tree::rebalance_from`], with the figures of a child of `from`
    /// whose figures are already known.
    fn rebalance_above<S: ObjectSource>(
        &mut self,
        arena: &mut Arena<S>,
        from: Link,
        // The child the walk came up from and its figures, just written:
        // one of the two reads per level it spares.
        mut came_from: Option<(NodeId, (u8, usize))>,
    ) {
        let mut cursor = from;
        while let Some(at) = cursor {
            let node = arena.get(at);
            let (left, right, parent) = (node.left, node.right, node.parent);
            let (old_height, old_balance) = (node.height, node.balance);
            // A plain tree's augmentation is always zero: not read.
            let (old_max, len) = if AUGMENTED {
                (node.subtree_max, node.len())
            } else {
                (0, 0)
            };
            let (left, right) = match came_from {
                // In a plain tree the other child has not changed since
                // this node's figures were written, so its height follows
                // from them: no read of it.
                Some((child, figures)) if !AUGMENTED => {
                    let (left_height, right_height) = child_heights(old_height, old_balance);
                    if left == Some(child) {
                        (figures, (right_height, 0))
                    } else {
                        ((left_height, 0), figures)
                    }
                }
                _ => {
                    let known = |link: Link| match came_from {
                        Some((child, figures)) if link == Some(child) => figures,
                        _ => figures(arena, link),
                    };
                    (known(left), known(right))
                }
            };
            let balance = i16::from(left.0) - i16::from(right.0);
            if (-1..=1).contains(&balance) {
                let (height, max) = Self::combine(len, left, right);
                let balance = balance_of(left, right);
                if height == old_height && max == old_max {
                    if !AUGMENTED && balance != old_balance {
                        arena.get_mut(at).balance = balance;
                    }
                    return;
                }
                let updated = arena.get_mut(at);
                updated.height = height;
                if AUGMENTED {
                    updated.subtree_max = max;
                } else {
                    updated.balance = balance;
                }
                came_from = Some((at, (height, max)));
                cursor = parent;
            } else {
                let top = self.rotate_at(arena, at, balance);
                let moved = arena.get(top);
                if moved.height == old_height && (!AUGMENTED || moved.subtree_max == old_max) {
                    return;
                }
                came_from = Some((top, (moved.height, moved.subtree_max)));
                cursor = moved.parent;
            }
        }
    }

    /// Restores the AVL balance at `at`, whose subtrees differ in height by
    /// two (`balance` = left - right); returns the subtree's new root.
    fn rotate_at<S: ObjectSource>(
        &mut self,
        arena: &mut Arena<S>,
        at: NodeId,
        balance: i16,
    ) -> NodeId {
        let node = arena.get(at);
        match (node.left, node.right) {
            (Some(left), _) if balance > 0 => {
                let l = arena.get(left);
                if height(arena, l.left) < height(arena, l.right) {
                    self.rotate_left(arena, left);
                }
                self.rotate_right(arena, at)
            }
            (_, Some(right)) => {
                let r = arena.get(right);
                if height(arena, r.right) < height(arena, r.left) {
                    self.rotate_right(arena, right);
                }
                self.rotate_left(arena, at)
            }
            _ => at,
        }
    }

    /// Rotates `x`'s right child up into its place; returns that child.
    fn rotate_left<S: ObjectSource>(&mut self, arena: &mut Arena<S>, x: NodeId) -> NodeId {
        let node = arena.get(x);
        let (Some(y), x_left, x_len, parent) = (node.right, node.left, node.len(), node.parent)
        else {
            return x;
        };
        let node = arena.get(y);
        let (inner, y_right, y_len) = (node.left, node.right, node.len());
        // Both figures from the three subtrees that do not move, so no
        // node is read back after the relinking.
        let (x_left, inner_figures, y_right) = (
            figures(arena, x_left),
            figures(arena, inner),
            figures(arena, y_right),
        );
        let x_figures = Self::combine(x_len, x_left, inner_figures);
        let y_figures = Self::combine(y_len, x_figures, y_right);
        let node = arena.get_mut(x);
        (node.right, node.parent) = (inner, Some(y));
        (node.height, node.subtree_max) = x_figures;
        if !AUGMENTED {
            node.balance = balance_of(x_left, inner_figures);
        }
        if let Some(inner) = inner {
            arena.get_mut(inner).parent = Some(x);
        }
        let node = arena.get_mut(y);
        (node.left, node.parent) = (Some(x), parent);
        (node.height, node.subtree_max) = y_figures;
        if !AUGMENTED {
            node.balance = balance_of(x_figures, y_right);
        }
        self.replace_child(arena, parent, x, Some(y));
        y
    }

    /// Rotates `x`'s left child up into its place; returns that child.
    fn rotate_right<S: ObjectSource>(&mut self, arena: &mut Arena<S>, x: NodeId) -> NodeId {
        let node = arena.get(x);
        let (Some(y), x_right, x_len, parent) = (node.left, node.right, node.len(), node.parent)
        else {
            return x;
        };
        let node = arena.get(y);
        let (inner, y_left, y_len) = (node.right, node.left, node.len());
        // As in `rotate_left`, mirrored.
        let (inner_figures, x_right, y_left) = (
            figures(arena, inner),
            figures(arena, x_right),
            figures(arena, y_left),
        );
        let x_figures = Self::combine(x_len, inner_figures, x_right);
        let y_figures = Self::combine(y_len, y_left, x_figures);
        let node = arena.get_mut(x);
        (node.left, node.parent) = (inner, Some(y));
        (node.height, node.subtree_max) = x_figures;
        if !AUGMENTED {
            node.balance = balance_of(inner_figures, x_right);
        }
        if let Some(inner) = inner {
            arena.get_mut(inner).parent = Some(x);
        }
        let node = arena.get_mut(y);
        (node.right, node.parent) = (Some(x), parent);
        (node.height, node.subtree_max) = y_figures;
        if !AUGMENTED {
            node.balance = balance_of(y_left, x_figures);
        }
        self.replace_child(arena, parent, x, Some(y));
        y
    }
}
