//! Debug checks of `SLAB_POISON`, `SLAB_RED_ZONE` and `SLAB_STORE_USER`
//! caches (Linux `check_object`, `init_object`, `set_track`): byte patterns
//! written when an object changes hands and verified at the next change,
//! the reports they produce, and the allocation and free paths of debug
//! caches, which run under the node lock instead of the per-CPU arrays.
//!
//! A detection counts two errors, as SLUB counts them under kunit: the
//! report and the repair (the damaged bytes are restored, so one overwrite
//! is reported once). An object found damaged on allocation or free is
//! quarantined, never handed out again. Runs only under the cache's node
//! lock, never on the per-CPU fast path (debug caches bypass it).

use crate::{
    cache::KmemCache,
    error::SlabError,
    flags::{SlabFlags, POISON_END, POISON_FREE, SLUB_RED_ACTIVE, SLUB_RED_INACTIVE},
    kmem::{Kmem, SlabBackend},
    raw,
    slab::{ObjState, SlabHeader},
};
use core::{fmt, panic::Location, ptr};
use kmm_api::{sync::Ordering::Relaxed, GfpFlags, VirtAddr};

/// What a debug check found overwritten.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum CorruptionKind {
    /// The red zone after the object (write past the end).
    RightRedzone,
    /// Bytes between kmalloc's requested size and the class size.
    KmallocRedzone,
    /// The poison of a free object (write after free).
    Poison,
    /// A free object's encoded free pointer.
    FreePointer,
}

/// A corruption report: which cache, which object, where, and what.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct Corruption {
    /// The cache.
    pub cache: &'static str,
    /// What was overwritten.
    pub kind: CorruptionKind,
    /// The object's address.
    pub object: VirtAddr,
    /// Offset of the first bad byte from the object's start.
    pub offset: usize,
    /// The byte found there.
    pub found: u8,
    /// The byte that should have been there.
    pub expected: u8,
}

impl fmt::Display for Corruption {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let what = match self.kind {
            CorruptionKind::RightRedzone => "right red zone overwritten",
            CorruptionKind::KmallocRedzone => "kmalloc red zone overwritten",
            CorruptionKind::Poison => "poison overwritten (write after free)",
            CorruptionKind::FreePointer => "free pointer corrupt",
        };
        write!(
            f,
            "BUG {}: {} in object {} at offset {}: found {:#04x}, expected {:#04x}",
            self.cache, what, self.object, self.offset, self.found, self.expected
        )
    }
}

/// Call sites recorded by `SLAB_STORE_USER`.
#[derive(Clone, Copy, Debug, Default)]
pub struct Track {
    /// Where the object was last allocated.
    pub alloc: Option<&'static Location<'static>>,
    /// Where the object was last freed.
    pub free: Option<&'static Location<'static>>,
}

type Site = *const Location<'static>;

impl KmemCache {
    /// Whether objects carry poison (a constructor's state must survive
    /// free, so constructed caches are not poisoned, as in SLUB).
    fn poisons(&self) -> bool {
        self.flags.contains(SlabFlags::POISON) && self.ctor.is_none()
    }

    /// Writes the free-object patterns (slab population and free).
    pub(crate) fn debug_init_free(&self, obj: *mut u8) {
        let g = &self.geo;
        // SAFETY: `obj` is a free object of a live slab of this cache,
        // owned by the caller under the node lock; all ranges lie in its slot.
        unsafe {
            if self.poisons() {
                raw::fill(obj, POISON_FREE, g.object_size - 1);
                raw::fill(obj.add(g.object_size - 1), POISON_END, 1);
            }
            if self.flags.contains(SlabFlags::RED_ZONE) {
                raw::fill(
                    obj.add(g.object_size),
                    SLUB_RED_INACTIVE,
                    g.red_end - g.object_size,
                );
            }
        }
    }

    /// Marks an object allocated: active red zone, the kmalloc gap from
    /// `requested` to the class size, the allocating call site.
    pub(crate) fn debug_on_alloc(&self, obj: *mut u8, requested: usize, site: Site) {
        let g = &self.geo;
        // SAFETY: as in `debug_init_free`; the object is being handed out.
        unsafe {
            if self.flags.contains(SlabFlags::RED_ZONE) {
                raw::fill(
                    obj.add(g.object_size),
                    SLUB_RED_ACTIVE,
                    g.red_end - g.object_size,
                );
                if let Some(at) = g.orig_offset {
                    let requested = requested.min(g.object_size);
                    raw::fill(
                        obj.add(requested),
                        SLUB_RED_ACTIVE,
                        g.object_size - requested,
                    );
                    raw::write_word(obj.add(at), requested);
                }
            }
            if let Some(at) = g.track_offset {
                raw::write(obj.add(at).cast::<Site>(), site);
                raw::write(obj.add(at).cast::<Site>().add(1), core::ptr::null());
            }
        }
    }

    /// Records the freeing call site.
    pub(crate) fn debug_on_free(&self, obj: *mut u8, site: Site) {
        if let Some(at) = self.geo.track_offset {
            // SAFETY: the track words lie in this object's slot.
            unsafe { raw::write(obj.add(at).cast::<Site>().add(1), site) };
        }
        self.debug_init_free(obj);
    }

    /// The size kmalloc was asked for, if this cache remembers it.
    pub(crate) fn requested_size(&self, obj: *mut u8) -> Option<usize> {
        let at = self.geo.orig_offset?;
        // SAFETY: the word lies in this object's slot; written at allocation.
        Some(unsafe { raw::read_word(obj.add(at)) })
    }

    /// The recorded call sites of an object.
    pub(crate) fn track(&self, obj: *mut u8) -> Option<Track> {
        let at = self.geo.track_offset?;
        // SAFETY: the track words lie in this object's slot and hold null
        // or a `&'static Location` written by `debug_on_alloc`/`_free`;
        // freshly populated slabs zero them in `debug_init_slot`.
        unsafe {
            let alloc = raw::read(obj.add(at).cast::<Site>());
            let free = raw::read(obj.add(at).cast::<Site>().add(1));
            Some(Track {
                alloc: alloc.as_ref(),
                free: free.as_ref(),
            })
        }
    }

    /// Zeroes a fresh slot's track words.
    pub(crate) fn debug_init_slot(&self, obj: *mut u8) {
        if let Some(at) = self.geo.track_offset {
            // SAFETY: the track words lie in this object's slot.
            unsafe {
                raw::write(obj.add(at).cast::<Site>(), core::ptr::null());
                raw::write(obj.add(at).cast::<Site>().add(1), core::ptr::null());
            }
        }
    }

    /// Checks one byte range for `expected`; on a mismatch restores it,
    /// counts the report and the repair, and returns the report.
    fn check_range(
        &self,
        obj: *mut u8,
        virt: VirtAddr,
        kind: CorruptionKind,
        range: core::ops::Range<usize>,
        expected: u8,
    ) -> Result<(), Corruption> {
        // SAFETY: `range` lies in this object's slot.
        let bad = unsafe { raw::find_mismatch(obj.add(range.start), expected, range.len()) };
        let Some((at, found)) = bad else {
            return Ok(());
        };
        // SAFETY: as above.
        unsafe { raw::fill(obj.add(range.start), expected, range.len()) };
        self.errors.fetch_add(2, Relaxed);
        Err(Corruption {
            cache: self.name,
            kind,
            object: virt,
            offset: range.start + at,
            found,
            expected,
        })
    }

    /// Checks a free object's poison and inactive red zone.
    pub(crate) fn check_free_object(&self, obj: *mut u8, virt: VirtAddr) -> Result<(), Corruption> {
        let g = &self.geo;
        if self.poisons() {
            self.check_range(
                obj,
                virt,
                CorruptionKind::Poison,
                0..g.object_size - 1,
                POISON_FREE,
            )?;
            let end = g.object_size - 1..g.object_size;
            self.check_range(obj, virt, CorruptionKind::Poison, end, POISON_END)?;
        }
        if self.flags.contains(SlabFlags::RED_ZONE) {
            let rz = g.object_size..g.red_end;
            self.check_range(
                obj,
                virt,
                CorruptionKind::RightRedzone,
                rz,
                SLUB_RED_INACTIVE,
            )?;
        }
        Ok(())
    }

    /// Checks an allocated object's active red zones.
    pub(crate) fn check_live_object(&self, obj: *mut u8, virt: VirtAddr) -> Result<(), Corruption> {
        let g = &self.geo;
        if !self.flags.contains(SlabFlags::RED_ZONE) {
            return Ok(());
        }
        let rz = g.object_size..g.red_end;
        self.check_range(obj, virt, CorruptionKind::RightRedzone, rz, SLUB_RED_ACTIVE)?;
        if let Some(requested) = self.requested_size(obj) {
            let gap = requested.min(g.object_size)..g.object_size;
            self.check_range(
                obj,
                virt,
                CorruptionKind::KmallocRedzone,
                gap,
                SLUB_RED_ACTIVE,
            )?;
        }
        Ok(())
    }

    /// Counts a corrupt free pointer (reported and repaired by rebuilding
    /// the free list).
    pub(crate) fn free_pointer_corrupt(&self, virt: VirtAddr) -> Corruption {
        self.errors.fetch_add(2, Relaxed);
        Corruption {
            cache: self.name,
            kind: CorruptionKind::FreePointer,
            object: virt,
            offset: self.geo.fp_offset,
            found: 0,
            expected: 0,
        }
    }
}

impl<B: SlabBackend> Kmem<B> {
    /// The debug allocation path: node lock held, free objects checked.
    pub(crate) fn debug_alloc(
        &self,
        c: &KmemCache,
        gfp: GfpFlags,
        requested: usize,
        site: &'static Location<'static>,
    ) -> Result<*mut u8, SlabError> {
        loop {
            {
                let mut node = c.node.lock();
                loop {
                    let mut got = None;
                    c.take_from_node(self, &mut node, 1, ObjState::Cached, |obj, slab, i| {
                        got = Some((obj, ptr::from_ref(slab), i))
                    });
                    let Some((obj, slab, index)) = got else { break };
                    // SAFETY: the slab is listed and live under the lock.
                    let slab = unsafe { SlabHeader::from_ptr(slab) };
                    if let Err(report) = c.check_free_object(obj, self.virt(obj)) {
                        slab.set_state(index, ObjState::Quarantined);
                        c.quarantined.fetch_add(1, Relaxed);
                        c.record(report);
                        continue;
                    }
                    slab.set_state(index, ObjState::Allocated);
                    c.debug_on_alloc(obj, requested, site);
                    return Ok(obj);
                }
            }
            self.grow(c, gfp)?;
        }
    }

    /// The debug free path: under the node lock, the object checked to be
    /// allocated (so of two racing frees one is refused) and its red zones
    /// checked, its patterns rewritten, and the object returned straight to
    /// its slab.
    pub(crate) fn debug_free(
        &self,
        c: &KmemCache,
        slab: &SlabHeader,
        index: usize,
        site: &'static Location<'static>,
    ) -> Result<(), SlabError> {
        let obj = slab.object(index, c.geo.stride);
        self.free_to_node(c, slab, index, || {
            if slab.state(index) != ObjState::Allocated {
                return Err(self.not_allocated(c, slab, index));
            }
            if let Err(report) = c.check_live_object(obj, self.virt(obj)) {
                slab.set_state(index, ObjState::Quarantined);
                c.quarantined.fetch_add(1, Relaxed);
                c.record(report);
                return Err(SlabError::Corrupted(report));
            }
            c.debug_on_free(obj, ptr::from_ref(site));
            Ok(())
        })
    }
}
