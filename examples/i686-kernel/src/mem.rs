//! The C memory primitives the compiler calls (`memcpy`, `memmove`,
//! `memset`, `memcmp`, `bcmp`). The i686-unknown-linux-gnu target expects
//! them from libc, and there is no libc here. String instructions, so the
//! compiler cannot turn them back into calls to themselves.

use core::arch::asm;

/// C `memcpy`.
///
/// # Safety
///
/// `dest` and `src` are valid for `n` bytes and do not overlap.
#[no_mangle]
pub unsafe extern "C" fn memcpy(dest: *mut u8, src: *const u8, n: usize) -> *mut u8 {
    // SAFETY: the caller's contract; `rep movsb` copies `n` bytes forward
    // (DF is clear: the ABI keeps it so, and the trap stubs `cld`).
    unsafe {
        // ESI is LLVM's on i686: swap it in and back out around the copy.
        asm!("xchgl %esi, {s}", "rep movsb", "movl {s}, %esi",
             s = inout(reg) src => _, inout("ecx") n => _, inout("edi") dest => _,
             options(att_syntax, nostack, preserves_flags));
    }
    dest
}

/// C `memmove`.
///
/// # Safety
///
/// `dest` and `src` are valid for `n` bytes; they may overlap.
#[no_mangle]
pub unsafe extern "C" fn memmove(dest: *mut u8, src: *const u8, n: usize) -> *mut u8 {
    if (dest as usize) <= (src as usize) || (dest as usize) >= (src as usize).wrapping_add(n) {
        // SAFETY: copying forward never overwrites a byte before it is
        // read when `dest` is below `src` or the ranges are disjoint.
        return unsafe { memcpy(dest, src, n) };
    }
    // SAFETY: the caller's contract; copying backward from the last byte
    // (DF set for the copy, cleared again) handles `dest` above `src`.
    unsafe {
        asm!("xchgl %esi, {s}", "std", "rep movsb", "cld", "movl {s}, %esi",
             s = inout(reg) src.wrapping_add(n).wrapping_sub(1) => _,
             inout("ecx") n => _,
             inout("edi") dest.wrapping_add(n).wrapping_sub(1) => _,
             options(att_syntax, nostack));
    }
    dest
}

/// C `memset`.
///
/// # Safety
///
/// `dest` is valid for `n` bytes of writes.
#[no_mangle]
pub unsafe extern "C" fn memset(dest: *mut u8, c: i32, n: usize) -> *mut u8 {
    // SAFETY: the caller's contract; `rep stosb` stores AL `n` times.
    unsafe {
        asm!("rep stosb", inout("ecx") n => _, inout("edi") dest => _, in("al") c as u8,
             options(att_syntax, nostack, preserves_flags));
    }
    dest
}

/// C `memcmp`.
///
/// # Safety
///
/// `a` and `b` are valid for `n` bytes of reads.
#[no_mangle]
pub unsafe extern "C" fn memcmp(a: *const u8, b: *const u8, n: usize) -> i32 {
    for i in 0..n {
        // SAFETY: `i < n`, inside both ranges by the caller's contract.
        let (x, y) = unsafe { (a.add(i).read(), b.add(i).read()) };
        if x != y {
            return i32::from(x) - i32::from(y);
        }
    }
    0
}

/// C `bcmp`: zero if equal.
///
/// # Safety
///
/// As for [`memcmp`].
#[no_mangle]
pub unsafe extern "C" fn bcmp(a: *const u8, b: *const u8, n: usize) -> i32 {
    // SAFETY: forwarded.
    unsafe { memcmp(a, b, n) }
}
