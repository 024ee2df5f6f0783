//! The node arena: every tree node of the allocator lives here, in chunks
//! taken from the machine's [`ObjectSource`] (no heap), and is named by a
//! [`NodeId`], a 32-bit index, rather than a pointer.
//!
//! This is the crate's only `unsafe` code. Its soundness is local to this
//! file: a chunk is never given back while the arena lives, and every id is
//! checked against the slots already written before it is dereferenced
//! (like a slice index), so a stale id from a bug in the tree code reads a
//! recycled node (which the checker reports) but never memory the arena
//! does not own or has not initialised.
//!
//! # Layout
//!
//! An id is `[directory | entry | slot]`: [`DIRECTORIES`] directory
//! pointers live in the arena itself; each directory is one object holding
//! chunk pointers; each chunk is one object holding nodes. With page-sized
//! objects that is 85 nodes a chunk and 512 chunks a directory, about
//! 1.4 million nodes; smaller objects give fewer (the source chooses).
//! Freed nodes go on a free list (linked through `left`) and are reused
//! first; chunks go back to the source when the arena is dropped.
//!
//! # Cost
//!
//! [`Arena::get`] is two dependent loads (directory entry, node); `alloc`
//! and `free` are O(1), `alloc` taking at most two objects from the source.
//!
//! # Never
//!
//! Reads a slot it has not written, hands out a slot twice, or gives a
//! chunk back while an id could still name it.

use crate::error::VmareaError;
use crate::flags::VmFlags;
use core::mem::{align_of, size_of};
use core::num::NonZeroU32;
use core::ptr::NonNull;
use kmm_api::{GfpFlags, ObjectSource};

/// Directory pointers kept in the arena itself.
pub(crate) const DIRECTORIES: usize = 32;

/// Bits of an id at most (ids are stored plus one in a `NonZeroU32`).
const ID_BITS: u32 = 31;

/// The name of a node: only the arena makes one.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) struct NodeId(NonZeroU32);

/// A tree link: a child, a parent, or nothing.
pub(crate) type Link = Option<NodeId>;

impl NodeId {
    fn index(self) -> usize {
        (self.0.get() - 1) as usize
    }
}

/// One `vmap_area`: a range `[start, end)` in the free, busy or unpurged
/// tree, with its AVL links. `subtree_max` is the largest free block under
/// it (the free tree's augmentation; zero in the other trees).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) struct Node {
    pub(crate) start: usize,
    pub(crate) end: usize,
    pub(crate) subtree_max: usize,
    pub(crate) left: Link,
    pub(crate) right: Link,
    pub(crate) parent: Link,
    pub(crate) flags: VmFlags,
    pub(crate) height: u8,
    /// The left subtree's height less the right's (-1, 0 or 1), kept
    /// with `height` in the plain trees so that a climb from one child
    /// knows the other's height without reading it (the free tree reads
    /// the other child anyway, for its `subtree_max`, and leaves this 0).
    pub(crate) balance: i8,
    /// Where a live area was allocated (`/proc/vmallocinfo`'s caller).
    pub(crate) caller: Option<&'static core::panic::Location<'static>>,
}

impl Node {
    /// A detached node for `[start, end)`.
    pub(crate) const fn new(start: usize, end: usize, flags: VmFlags) -> Self {
        Node {
            start,
            end,
            subtree_max: 0,
            left: None,
            right: None,
            parent: None,
            flags,
            height: 1,
            balance: 0,
            caller: None,
        }
    }

    /// Bytes the range covers.
    pub(crate) const fn len(&self) -> usize {
        self.end - self.start
    }
}

/// Bytes of metadata one `vmap_area` node takes in its chunk.
pub const VMAP_AREA_NODE_BYTES: usize = size_of::<Node>();

static_assertions::const_assert!(VMAP_AREA_NODE_BYTES <= 48);

/// Tree nodes in chunks from an [`ObjectSource`].
pub(crate) struct Arena<S: ObjectSource> {
    source: S,
    directories: [Option<NonNull<NonNull<Node>>>; DIRECTORIES],
    slot_bits: u32,
    entry_bits: u32,
    /// `(1 << slot_bits) - 1` and `(1 << entry_bits) - 1`, kept because
    /// every lookup needs them.
    slot_mask: usize,
    entry_mask: usize,
    nodes_per_chunk: usize,
    /// Chunks installed; every slot of all but the last one is written.
    chunks: usize,
    /// The index of the next slot to write (the last chunk's first index
    /// plus its slots written so far): every lookup checks against it, so
    /// it is kept whole rather than recomputed from `chunks`.
    issued: usize,
    /// Recycled nodes, linked through `left`.
    free: Link,
    nr_free: usize,
}

// SAFETY: the arena holds its chunks exclusively (the source's contract:
// nobody else touches them until they are given back), so moving it to
// another thread moves that ownership whole; the source moves with it.
unsafe impl<S: ObjectSource + Send> Send for Arena<S> {}

impl<S: ObjectSource> Arena<S> {
    /// An empty arena over `source`; takes nothing from it yet. Refuses a
    /// source whose objects cannot hold a node.
    pub(crate) fn new(source: S) -> Result<Self, VmareaError> {
        let size = source.object_size();
        let align = source.object_align();
        if size < size_of::<Node>() || !align.is_power_of_two() || align < align_of::<Node>() {
            return Err(VmareaError::ObjectTooSmall { size, align });
        }
        let slot_bits = (size / size_of::<Node>())
            .next_power_of_two()
            .trailing_zeros()
            .min(ID_BITS - DIRECTORIES.trailing_zeros());
        let nodes_per_chunk = (size / size_of::<Node>()).min(1 << slot_bits);
        let entries = size / size_of::<NonNull<Node>>();
        let entry_bits = (usize::BITS - 1 - entries.leading_zeros())
            .min(ID_BITS - DIRECTORIES.trailing_zeros() - slot_bits);
        Ok(Arena {
            source,
            directories: [None; DIRECTORIES],
            slot_bits,
            entry_bits,
            slot_mask: (1 << slot_bits) - 1,
            entry_mask: (1 << entry_bits) - 1,
            nodes_per_chunk,
            chunks: 0,
            issued: 0,
            free: None,
            nr_free: 0,
        })
    }

    /// The object source.
    pub(crate) fn source(&self) -> &S {
        &self.source
    }

    /// Stores `node` in a free slot, taking a chunk (and a directory) from
    /// the source when none is left. On failure nothing changes.
    pub(crate) fn alloc(&mut self, node: Node, gfp: GfpFlags) -> Result<NodeId, VmareaError> {
        if let Some(id) = self.free {
            self.free = self.get(id).left;
            self.nr_free -= 1;
            *self.get_mut(id) = node;
            return Ok(id);
        }
        if self.chunks == 0 || self.fresh() == self.nodes_per_chunk {
            self.grow(gfp)?;
        }
        let index = self.issued;
        let ptr = self.chunk_ptr(self.chunks - 1).as_ptr();
        // SAFETY: `fresh() < nodes_per_chunk`, so the slot lies inside the
        // chunk (an object of at least `nodes_per_chunk` nodes, aligned for
        // them), which this arena holds exclusively; writing initialises it.
        unsafe { ptr.add(self.fresh()).write(node) };
        self.issued += 1;
        Ok(id_of(index))
    }

    /// Puts a node back on the free list. The caller has unlinked it.
    pub(crate) fn free(&mut self, id: NodeId) {
        let mut node = Node::new(0, 0, VmFlags::empty());
        node.left = self.free;
        *self.get_mut(id) = node;
        self.free = Some(id);
        self.nr_free += 1;
    }

    /// The node `id` names.
    #[inline]
    pub(crate) fn get(&self, id: NodeId) -> &Node {
        // SAFETY: `slot` checked the slot is written and lies in a chunk
        // this arena holds; `&self` keeps every `&mut` to it away.
        unsafe { &*self.slot(id) }
    }

    /// The node `id` names, for writing.
    #[inline]
    pub(crate) fn get_mut(&mut self, id: NodeId) -> &mut Node {
        // SAFETY: as in `get`; `&mut self` makes this the only reference
        // into the arena's nodes.
        unsafe { &mut *self.slot(id) }
    }

    /// Nodes handed out and not freed.
    pub(crate) fn nr_live(&self) -> usize {
        self.nr_written() - self.nr_free
    }

    /// Nodes on the free list.
    pub(crate) fn nr_free(&self) -> usize {
        self.nr_free
    }

    /// The free list, for the checker: its length if every link is a
    /// written slot and it ends within `nr_free` steps, else `None`.
    pub(crate) fn free_list_len(&self) -> Option<usize> {
        let mut len = 0;
        let mut cursor = self.free;
        while let Some(id) = cursor {
            if len == self.nr_free || !self.is_written(id) {
                return None;
            }
            len += 1;
            cursor = self.get(id).left;
        }
        Some(len)
    }

    /// Bytes taken from the source: chunks and directories.
    pub(crate) fn metadata_bytes(&self) -> usize {
        let directories = self.directories.iter().flatten().count();
        (self.chunks + directories) * self.source.object_size()
    }

    fn nr_written(&self) -> usize {
        match self.chunks {
            0 => 0,
            chunks => (chunks - 1) * self.nodes_per_chunk + self.fresh(),
        }
    }

    /// Slots of the last chunk written so far.
    fn fresh(&self) -> usize {
        self.issued - (self.chunks.saturating_sub(1) << self.slot_bits)
    }

    #[inline]
    fn is_written(&self, id: NodeId) -> bool {
        // Ids are `chunk << slot_bits | slot`: the written ones are those
        // below the next fresh slot's id whose slot lies in a chunk.
        let index = id.index();
        index < self.issued && index & self.slot_mask < self.nodes_per_chunk
    }

    /// The slot of a written node.
    #[inline]
    fn slot(&self, id: NodeId) -> *mut Node {
        // An id is only made by `alloc`, for a slot it wrote, and slots are
        // never unwritten; this check makes that local to the arena.
        if !self.is_written(id) {
            not_issued(id);
        }
        let index = id.index();
        let chunk = self.chunk_ptr(index >> self.slot_bits);
        // SAFETY: the slot index is below `nodes_per_chunk` (checked
        // above), so the pointer stays inside the chunk object.
        unsafe { chunk.as_ptr().add(index & self.slot_mask) }
    }

    /// The first node of installed chunk `chunk`.
    #[inline]
    fn chunk_ptr(&self, chunk: usize) -> NonNull<Node> {
        // Chunk numbers stay below `DIRECTORIES << entry_bits` (`Arena::new`
        // sized the bits so), so the mask changes nothing but spares the
        // bounds check on every lookup.
        let entries = self.directories[(chunk >> self.entry_bits) & (DIRECTORIES - 1)]
            .expect("an installed chunk has its directory");
        // SAFETY: the chunk is installed, so `grow` wrote its entry into
        // this directory (an object holding at least `1 << entry_bits`
        // pointers) before counting it.
        unsafe { entries.as_ptr().add(chunk & self.entry_mask).read() }
    }

    /// Installs one more chunk, and the directory it needs if it is the
    /// first of one. On failure whatever was taken goes back.
    fn grow(&mut self, gfp: GfpFlags) -> Result<(), VmareaError> {
        let chunk = self.chunks;
        let directory = chunk >> self.entry_bits;
        if directory >= DIRECTORIES {
            return Err(VmareaError::NodeTableFull {
                nodes: self.nr_written(),
            });
        }
        let (entries, new_directory) = match self.directories[directory] {
            Some(entries) => (entries, false),
            None => (self.source.alloc_object(gfp)?.cast::<NonNull<Node>>(), true),
        };
        let nodes = match self.source.alloc_object(gfp) {
            Ok(nodes) => nodes,
            Err(error) => {
                if new_directory {
                    // SAFETY: taken from this source just above, never
                    // installed, no reference into it exists.
                    let _ = unsafe { self.source.free_object(entries.cast::<u8>()) };
                }
                return Err(error.into());
            }
        };
        if new_directory {
            self.directories[directory] = Some(entries);
        }
        // SAFETY: the entry index is below `1 << entry_bits`, which fits in
        // the directory object (`Arena::new` sized it), an object the arena
        // holds exclusively and aligned for pointers.
        unsafe {
            entries
                .as_ptr()
                .add(chunk & self.entry_mask)
                .write(nodes.cast::<Node>())
        };
        self.issued = chunk << self.slot_bits;
        self.chunks += 1;
        Ok(())
    }
}

/// The panic of a lookup with a foreign id, out of line so that the
/// lookup's fast path keeps the id in a register.
#[cold]
#[inline(never)]
fn not_issued(id: NodeId) -> ! {
    panic!("node id {id:?} not issued by this arena")
}

fn id_of(index: usize) -> NodeId {
    // `Arena::new` keeps every index below 2^31, so index + 1 is a
    // non-zero u32.
    NodeId(NonZeroU32::new(index as u32 + 1).expect("ids stay below 2^31"))
}

impl<S: ObjectSource> Drop for Arena<S> {
    fn drop(&mut self) {
        for chunk in 0..self.chunks {
            let nodes = self.chunk_ptr(chunk).cast::<u8>();
            // SAFETY: every chunk came from this source and is given back
            // once; the arena is going away, so no id can name it again.
            let released = unsafe { self.source.free_object(nodes) };
            debug_assert!(released.is_ok(), "the source refused its own chunk");
        }
        for entries in self.directories.iter().flatten() {
            // SAFETY: as above, for the directory objects, after the last
            // read of their entries.
            let released = unsafe { self.source.free_object(entries.cast::<u8>()) };
            debug_assert!(released.is_ok(), "the source refused its own directory");
        }
    }
}
