//! The vmap blocks' address index (Linux's `vmap_blocks` xarray, keyed by
//! `addr_to_vb_idx`): `vm_unmap_ram` finds the block holding an address
//! in O(levels), a constant of the range, instead of walking every block.
//!
//! # What it owns
//!
//! A radix tree of nodes, each one object from the area allocator's
//! [`ObjectSource`] (no heap) holding `fanout` slots, the largest power of
//! two of pointers the object holds. Blocks are aligned to their size, so
//! the block holding `addr` is the one whose key is `(addr - base) /
//! block_bytes`, with `base` the range's start rounded down to a block
//! (Linux's `addr_to_vb_idx`); the key's digits, `fanout_bits` at a time
//! from the top, pick a slot per level, and the last level's slot names
//! the block's descriptor. The root exists from `new` to `release_all`;
//! a lower node exists while some block under it does (a removal gives
//! back every node it empties).
//!
//! # Cost
//!
//! `get`, `insert` and `remove`: O(levels) = ⌈log_fanout(keys)⌉, 1 for
//! i386's 111 MiB range (111 keys), 3 for x86-64's 32 TiB with page-sized
//! objects (8 Mi keys of 4 MiB blocks, 512 slots a node).
//!
//! # Locks and what it never does
//!
//! Every call is made under the vmap blocks' list lock, which orders all
//! access to the nodes. The index never takes a node from the source or
//! gives one back itself: [`BlockIndex::insert`] asks for a spare its
//! caller took without the lock, and [`BlockIndex::remove`] hands back
//! the nodes it emptied as a chain for the caller to free after the lock
//! (the source sits behind the area allocator's lock, which is never taken
//! with the list lock held). It never reads a slot of a node it did not
//! write whole first.

use crate::error::VmareaError;
use core::mem::{align_of, size_of};
use core::ptr::{self, NonNull};
use kmm_api::{ObjectSource, GFP_KERNEL};

/// Levels at most: a key has at most `usize::BITS` bits and a node at
/// least four slots (two bits).
const MAX_LEVELS: usize = usize::BITS as usize / 2;

/// One slot: a lower node, a block's descriptor (last level), or null.
type Slot = *mut u8;

/// An insertion needs one more node: take a spare from the source without
/// the lock, and retry.
pub(crate) struct NeedNode;

/// The radix tree from block keys to descriptors.
pub(crate) struct BlockIndex {
    root: NonNull<Slot>,
    /// Slots per node, `1 << fanout_bits`.
    fanout_bits: u32,
    levels: u32,
    /// The range's start rounded down to a block.
    base: usize,
    /// Bytes per block, a power of two: `1 << block_shift`.
    block_shift: u32,
    /// Keys the range holds.
    keys: usize,
}

impl BlockIndex {
    /// An index over blocks of `block_bytes` (a power of two) in
    /// `[start, end)`, its root taken from `source`. Refused when the
    /// source's objects cannot hold four aligned slots.
    pub(crate) fn new<S: ObjectSource>(
        source: &S,
        start: usize,
        end: usize,
        block_bytes: usize,
    ) -> Result<Self, VmareaError> {
        let (size, align) = (source.object_size(), source.object_align());
        let slots = size / size_of::<Slot>();
        if slots < 4 || align < align_of::<Slot>() || !block_bytes.is_power_of_two() {
            return Err(VmareaError::ObjectTooSmall { size, align });
        }
        let fanout_bits = slots.ilog2();
        let base = start & !(block_bytes - 1);
        let keys = (end - base).div_ceil(block_bytes);
        let mut levels = 1;
        while levels * fanout_bits < usize::BITS && keys > 1 << (levels * fanout_bits) {
            levels += 1;
        }
        let root = source.alloc_object(GFP_KERNEL)?.cast::<Slot>();
        let index = BlockIndex {
            root,
            fanout_bits,
            levels,
            base,
            block_shift: block_bytes.trailing_zeros(),
            keys,
        };
        // SAFETY: a fresh object, aligned and large enough for a node.
        unsafe { index.clear(root) };
        Ok(index)
    }

    /// Slots per node.
    fn fanout(&self) -> usize {
        1 << self.fanout_bits
    }

    /// Nulls every slot of `node`.
    ///
    /// # Safety
    ///
    /// `node` is an object of the source, ours, aligned and holding
    /// `fanout` slots.
    unsafe fn clear(&self, node: NonNull<Slot>) {
        for i in 0..self.fanout() {
            // SAFETY: `i` is below the slots the object holds.
            unsafe { node.as_ptr().add(i).write(ptr::null_mut()) };
        }
    }

    /// The key of the block that would hold `addr`, if the range has one.
    fn key(&self, addr: usize) -> Option<usize> {
        let key = addr.checked_sub(self.base)? >> self.block_shift;
        (key < self.keys).then_some(key)
    }

    /// The slot `key` picks at `level` (counted from the root, 0).
    fn digit(&self, key: usize, level: u32) -> usize {
        let shift = (self.levels - 1 - level) * self.fanout_bits;
        (key >> shift) & (self.fanout() - 1)
    }

    /// The slot of `node` that `key` picks at `level`.
    ///
    /// # Safety
    ///
    /// `node` is a written node of this index.
    unsafe fn slot(&self, node: NonNull<Slot>, key: usize, level: u32) -> *mut Slot {
        // SAFETY: the digit is below `fanout`, the node's slot count.
        unsafe { node.as_ptr().add(self.digit(key, level)) }
    }

    /// The descriptor of the block holding `addr`, if one is indexed.
    pub(crate) fn get(&self, addr: usize) -> Option<NonNull<u8>> {
        let key = self.key(addr)?;
        let mut node = self.root;
        for level in 0..self.levels {
            // SAFETY: `node` is the root or a node a slot of a written
            // node names: written whole before it was linked.
            let entry = unsafe { *self.slot(node, key, level) };
            if level + 1 == self.levels {
                return NonNull::new(entry);
            }
            node = NonNull::new(entry)?.cast();
        }
        None
    }

    /// Indexes `block` at `addr`, its start (aligned to a block, in the
    /// range). A missing node is made from `spare` (taken); with no spare
    /// left, [`NeedNode`]: nothing indexed yet, nodes made so far kept.
    pub(crate) fn insert(
        &mut self,
        addr: usize,
        block: NonNull<u8>,
        spare: &mut Option<NonNull<u8>>,
    ) -> Result<(), NeedNode> {
        let Some(key) = self.key(addr) else {
            return Ok(()); // unreachable: blocks lie in the range
        };
        let mut node = self.root;
        for level in 0..self.levels {
            // SAFETY: `node` is a written node of this index.
            let slot = unsafe { self.slot(node, key, level) };
            if level + 1 == self.levels {
                // SAFETY: as above; the slot is ours under the list lock.
                unsafe { slot.write(block.as_ptr()) };
                return Ok(());
            }
            // SAFETY: as above.
            node = match NonNull::new(unsafe { *slot }) {
                Some(lower) => lower.cast(),
                None => {
                    let fresh = spare.take().ok_or(NeedNode)?.cast::<Slot>();
                    // SAFETY: a spare is an object of the source, ours,
                    // as large and aligned as the root (checked in `new`);
                    // written whole before it is linked.
                    unsafe {
                        self.clear(fresh);
                        slot.write(fresh.as_ptr().cast());
                    }
                    fresh
                }
            };
        }
        Ok(())
    }

    /// Unindexes the block at `addr` (if indexed) and unlinks every node
    /// below the root left empty on its path; returns them chained through
    /// their first slots, for the caller to give back.
    pub(crate) fn remove(&mut self, addr: usize) -> Option<NonNull<u8>> {
        let key = self.key(addr)?;
        let mut path = [self.root; MAX_LEVELS];
        for level in 1..self.levels as usize {
            // SAFETY: the node above is written; its slot names this one.
            let entry = unsafe { *self.slot(path[level - 1], key, level as u32 - 1) };
            path[level] = NonNull::new(entry)?.cast();
        }
        let mut emptied: Slot = ptr::null_mut();
        for level in (0..self.levels).rev() {
            let node = path[level as usize];
            // SAFETY: a written node on the path, ours under the list lock.
            unsafe { self.slot(node, key, level).write(ptr::null_mut()) };
            // SAFETY: as above; every slot of a written node is written.
            let empty =
                (0..self.fanout()).all(|i| unsafe { node.as_ptr().add(i).read() }.is_null());
            if level == 0 || !empty {
                break;
            }
            // SAFETY: the node is unlinked just below (its parent's slot
            // is nulled on the next turn) and empty: its first slot may
            // carry the chain.
            unsafe { node.as_ptr().write(emptied) };
            emptied = node.as_ptr().cast();
        }
        NonNull::new(emptied)
    }

    /// Gives back a chain [`BlockIndex::remove`] returned.
    pub(crate) fn free_chain<S: ObjectSource>(source: &S, mut chain: Option<NonNull<u8>>) {
        while let Some(node) = chain {
            // SAFETY: a node `remove` unlinked and chained through its
            // first slot; nobody else reaches it.
            chain = NonNull::new(unsafe { node.cast::<Slot>().as_ptr().read() });
            // SAFETY: an object of this source, given back once.
            let _ = unsafe { source.free_object(node) };
        }
    }

    /// Gives every node back to `source` (the vmalloc is going away; the
    /// blocks' descriptors are given back by their list).
    pub(crate) fn release_all<S: ObjectSource>(&mut self, source: &S) {
        self.release_below(source, self.root, 0);
        // SAFETY: the root came from this source in `new`; given back once.
        let _ = unsafe { source.free_object(self.root.cast()) };
    }

    /// Gives back the nodes below `node` (at `level`), depth first: the
    /// recursion is at most `levels` deep.
    fn release_below<S: ObjectSource>(&self, source: &S, node: NonNull<Slot>, level: u32) {
        if level + 1 >= self.levels {
            return; // its slots name descriptors
        }
        for i in 0..self.fanout() {
            // SAFETY: a written node; every slot is written.
            if let Some(lower) = NonNull::new(unsafe { node.as_ptr().add(i).read() }) {
                self.release_below(source, lower.cast(), level + 1);
                // SAFETY: a node of this index, unlinked with its parent.
                let _ = unsafe { source.free_object(lower) };
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::BufferSource;

    const BLOCK: usize = 1 << 20;
    const START: usize = 0xf880_0000;

    /// 32-byte objects: four slots a node, so 100 blocks take four levels.
    fn small_nodes() -> (BufferSource, BlockIndex) {
        let source = BufferSource::new(4 * size_of::<Slot>(), 64);
        let index = BlockIndex::new(&source, START, START + 100 * BLOCK, BLOCK).unwrap();
        (source, index)
    }

    /// A stand-in descriptor pointer (the index never dereferences one).
    fn descriptor(n: usize) -> NonNull<u8> {
        let fake = NonNull::<u64>::dangling().as_ptr().wrapping_add(n);
        NonNull::new(fake.cast()).unwrap()
    }

    /// Inserts, taking a node from `source` each time one is asked for.
    fn insert(source: &BufferSource, index: &mut BlockIndex, addr: usize, block: NonNull<u8>) {
        let mut spare = None;
        while index.insert(addr, block, &mut spare).is_err() {
            spare = Some(source.alloc_object(GFP_KERNEL).unwrap());
        }
        assert!(spare.is_none(), "every node taken was used");
    }

    #[test]
    fn every_address_of_a_block_finds_it_through_each_level() {
        let (source, mut index) = small_nodes();
        assert_eq!(index.levels, 4, "4^3 < 100 keys <= 4^4");
        for n in [0, 1, 63, 64, 99] {
            insert(&source, &mut index, START + n * BLOCK, descriptor(n));
        }
        for n in [0, 1, 63, 64, 99] {
            let block = START + n * BLOCK;
            for addr in [block, block + 0x1000, block + BLOCK - 1] {
                assert_eq!(index.get(addr), Some(descriptor(n)), "{addr:#x}");
            }
        }
        for addr in [
            START + 2 * BLOCK,
            START - 1,
            START + 100 * BLOCK,
            usize::MAX,
        ] {
            assert_eq!(index.get(addr), None, "{addr:#x}");
        }
        index.release_all(&source);
        assert_eq!(source.in_use(), 0, "every node given back");
    }

    #[test]
    fn an_insertion_short_of_a_node_asks_for_one_and_indexes_nothing() {
        let (source, mut index) = small_nodes();
        let mut spare = None;
        assert!(index
            .insert(START + 5 * BLOCK, descriptor(5), &mut spare)
            .is_err());
        assert_eq!(index.get(START + 5 * BLOCK), None);
        index.release_all(&source);
        assert_eq!(source.in_use(), 0);
    }

    #[test]
    fn a_removal_gives_back_the_nodes_it_empties_and_no_other() {
        let (source, mut index) = small_nodes();
        let root_only = source.in_use();
        insert(&source, &mut index, START, descriptor(0));
        insert(&source, &mut index, START + BLOCK, descriptor(1));
        let with_two = source.in_use();
        assert_eq!(with_two, root_only + 3, "one node per level below the root");
        BlockIndex::free_chain(&source, index.remove(START + BLOCK));
        assert_eq!(source.in_use(), with_two, "the leaf still holds block 0");
        assert_eq!(index.get(START), Some(descriptor(0)));
        BlockIndex::free_chain(&source, index.remove(START));
        assert_eq!(source.in_use(), root_only);
        assert_eq!(index.get(START), None);
        index.release_all(&source);
    }
}
