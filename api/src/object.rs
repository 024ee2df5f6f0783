//! The object source: where a layer that may not use a heap gets its
//! fixed-size metadata records (Linux's `kmem_cache`, as `mm/vmalloc.c`
//! takes each `vmap_area` from `vmap_area_cachep`).
//!
//! Implemented by kmm-slab's caches (or a kernel's own); consumed by
//! kmm-vmarea for its tree nodes. An implementation owns its locking and
//! must never hand the same object out twice, touch an object while a
//! caller holds it, or call back into the layer that is asking.

use crate::{Error, GfpFlags};
use core::ptr::NonNull;

/// A source of fixed-size objects, Linux's `kmem_cache` as
/// `vmap_area_cachep` uses it.
///
/// Called with no lock of the caller held that the source itself could
/// need. The caller passes the GFP flags of the request it is serving, so
/// an atomic request never sleeps in the source.
///
/// # Safety
///
/// Layers write their records into what this trait hands out and follow
/// pointers stored there, so an implementation promises:
///
/// - every object [`ObjectSource::alloc_object`] returns is valid for reads
///   and writes of [`ObjectSource::object_size`] bytes and aligned to
///   [`ObjectSource::object_align`], a power of two;
/// - it is exclusively the caller's from its return until it is given back
///   through [`ObjectSource::free_object`]: no other caller is handed memory
///   overlapping it, and the source neither reads nor writes it meanwhile;
/// - `object_size` and `object_align` never change over the source's life.
#[allow(unsafe_code)] // declares a contract
pub unsafe trait ObjectSource: Sync {
    /// Bytes in each object.
    fn object_size(&self) -> usize;

    /// Alignment of each object in bytes (a power of two).
    fn object_align(&self) -> usize;

    /// Hands out one object, honouring the action modifiers of `gfp` (an
    /// atomic request fails with [`Error::NoMemory`] rather than sleep).
    /// Its contents are unspecified.
    fn alloc_object(&self, gfp: GfpFlags) -> Result<NonNull<u8>, Error>;

    /// Takes back an object. A pointer this source never handed out is
    /// refused with an error where the source can tell, and changes nothing.
    ///
    /// # Safety
    ///
    /// `obj` came from this source's [`ObjectSource::alloc_object`], has not
    /// been given back since, and the caller keeps no reference into it.
    #[allow(unsafe_code)]
    unsafe fn free_object(&self, obj: NonNull<u8>) -> Result<(), Error>;
}

// SAFETY: forwards every method to `T`, which upholds the contract itself.
#[allow(unsafe_code)]
unsafe impl<T: ObjectSource + ?Sized> ObjectSource for &T {
    fn object_size(&self) -> usize {
        (**self).object_size()
    }
    fn object_align(&self) -> usize {
        (**self).object_align()
    }
    fn alloc_object(&self, gfp: GfpFlags) -> Result<NonNull<u8>, Error> {
        (**self).alloc_object(gfp)
    }
    unsafe fn free_object(&self, obj: NonNull<u8>) -> Result<(), Error> {
        // SAFETY: our caller's contract is `T`'s.
        unsafe { (**self).free_object(obj) }
    }
}
