//! The raw-memory primitives of the slab layer: every dereference of a slab
//! page, slab header, object or per-CPU array goes through this module, so
//! the unsafe code is one short file. Callers establish validity (a pointer
//! into a live slab, found through its page's owner word) before calling;
//! these functions must never be handed an address that was not checked.

use core::ptr;

/// Writes `value` at `dst`.
///
/// # Safety
/// `dst` must be valid for writes of a `T` and aligned for it.
#[inline]
pub(crate) unsafe fn write<T>(dst: *mut T, value: T) {
    // SAFETY: the caller guarantees `dst` is valid and aligned.
    unsafe { ptr::write(dst, value) }
}

/// Reads the `T` at `src` (keeping a pointer's provenance, unlike a word).
///
/// # Safety
/// `src` must be valid for reads of an initialised `T` and aligned for it.
#[inline]
pub(crate) unsafe fn read<T>(src: *const T) -> T {
    // SAFETY: the caller guarantees `src` is valid and aligned.
    unsafe { ptr::read(src) }
}

/// A shared reference to a `T` the caller has initialised at `src`.
///
/// # Safety
/// `src` must point at an initialised `T` that stays valid, and is only
/// mutated through interior mutability, for the lifetime `'a`.
#[inline]
pub(crate) unsafe fn as_ref<'a, T>(src: *const T) -> &'a T {
    // SAFETY: guaranteed by the caller.
    unsafe { &*src }
}

/// A slice of `len` initialised `T`s at `src`.
///
/// # Safety
/// As [`as_ref`], for `len` consecutive values.
#[inline]
pub(crate) unsafe fn as_slice<'a, T>(src: *const T, len: usize) -> &'a [T] {
    // SAFETY: guaranteed by the caller.
    unsafe { core::slice::from_raw_parts(src, len) }
}

/// Reads the word stored at `src` (an object's free pointer or metadata).
///
/// # Safety
/// `src` must be valid for reads of a word and word aligned; the slot must
/// not be in use by a caller concurrently.
#[inline]
pub(crate) unsafe fn read_word(src: *const u8) -> usize {
    // SAFETY: guaranteed by the caller; object slots are word aligned.
    unsafe { ptr::read(src.cast::<usize>()) }
}

/// Writes a word at `dst`.
///
/// # Safety
/// As [`read_word`], for writes.
#[inline]
pub(crate) unsafe fn write_word(dst: *mut u8, value: usize) {
    // SAFETY: guaranteed by the caller; object slots are word aligned.
    unsafe { ptr::write(dst.cast::<usize>(), value) }
}

/// Fills `len` bytes at `dst` with `byte`.
///
/// # Safety
/// `dst` must be valid for writes of `len` bytes.
#[inline]
pub(crate) unsafe fn fill(dst: *mut u8, byte: u8, len: usize) {
    // SAFETY: guaranteed by the caller.
    unsafe { ptr::write_bytes(dst, byte, len) }
}

/// The first of `len` bytes at `src` that differs from `byte`, as an
/// offset and the byte found.
///
/// # Safety
/// `src` must be valid for reads of `len` initialised bytes.
#[inline]
pub(crate) unsafe fn find_mismatch(src: *const u8, byte: u8, len: usize) -> Option<(usize, u8)> {
    // SAFETY: guaranteed by the caller.
    let bytes = unsafe { core::slice::from_raw_parts(src, len) };
    bytes
        .iter()
        .position(|&b| b != byte)
        .map(|at| (at, bytes[at]))
}

/// Copies `len` bytes from `src` to `dst` (distinct objects).
///
/// # Safety
/// Both ranges must be valid for `len` bytes and must not overlap.
#[inline]
pub(crate) unsafe fn copy(src: *const u8, dst: *mut u8, len: usize) {
    // SAFETY: guaranteed by the caller.
    unsafe { ptr::copy_nonoverlapping(src, dst, len) }
}
