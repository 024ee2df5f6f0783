//! The slab layer on the real machine: kmalloc's size classes and its
//! refusal of a double free, a `kmem_cache` of the kernel's own objects
//! (filled, verified, validated, destroyed), and kmalloc as Rust's global
//! allocator behind a `Vec` and a `BTreeMap`. Everything is given back.

use super::step;
use crate::{check, println, Mm};
use alloc::collections::BTreeMap;
use alloc::format;
use alloc::string::{String, ToString};
use alloc::vec::Vec;
use kmm::{SlabFlags, VirtAddr, GFP_KERNEL};

pub fn run(mm: &Mm) {
    kmalloc(mm);
    cache(mm);
    global_allocator(mm);
}

fn kmalloc(mm: &Mm) {
    let Some(p) = step("kmalloc(100, GFP_KERNEL)", mm.kmalloc(100, GFP_KERNEL)) else {
        return;
    };
    let addr = VirtAddr::new(p.as_ptr() as usize);
    // SAFETY: we hold the object at `p` (100 bytes, ksize 128).
    let size = unsafe { mm.ksize(p.as_ptr()) };
    // SAFETY: as above; the object is ours to write.
    unsafe { p.as_ptr().write_bytes(0xab, 100) };
    check!(
        size.as_ref().ok() == Some(&128) && mm.virt_to_page(addr).is_ok(),
        "kmalloc(100, GFP_KERNEL) = {addr} in the direct map, ksize {:?} (kmalloc-128)",
        size
    );
    // SAFETY: we give the object up. The second kfree passes a pointer
    // nobody holds, and nothing else allocates meanwhile (one CPU, no
    // interrupts), which is kfree's contract: it must be refused.
    let (first, second) = unsafe { (mm.kfree(p.as_ptr()), mm.kfree(p.as_ptr())) };
    check!(
        first.is_ok() && second.is_err(),
        "kfree once: ok; the same object a second time refused: {}",
        second
            .err()
            .map_or(String::from("accepted!"), |e| e.to_string())
    );
    if let Some(z) = step("kzalloc(600, GFP_KERNEL)", mm.kzalloc(600, GFP_KERNEL)) {
        // SAFETY: we hold the 600-byte object at `z`.
        let zeroed = unsafe { core::slice::from_raw_parts(z.as_ptr(), 600) }
            .iter()
            .all(|&b| b == 0);
        // SAFETY: as above.
        let size = unsafe { mm.ksize(z.as_ptr()) };
        check!(
            zeroed && size.as_ref().ok() == Some(&1024),
            "kzalloc(600) zeroed, ksize {size:?} (kmalloc-1k)"
        );
        // SAFETY: we give it up.
        step("kfree", unsafe { mm.kfree(z.as_ptr()) });
    }
}

/// A kernel object: what a `struct inode`-like cache holds.
#[repr(C)]
struct Inode {
    ino: u64,
    mode: u32,
    name: [u8; 180],
}

fn cache(mm: &Mm) {
    let size = core::mem::size_of::<Inode>();
    let align = core::mem::align_of::<Inode>();
    let Some(cache) = step(
        "kmem_cache_create(\"kmm_inode\")",
        mm.kmem_cache_create("kmm_inode", size, align, SlabFlags::HWCACHE_ALIGN, None),
    ) else {
        return;
    };
    let mut objects = Vec::new();
    for i in 0..200u64 {
        let Some(p) = step("kmem_cache_alloc", mm.kmem_cache_alloc(cache, GFP_KERNEL)) else {
            break;
        };
        let inode = p.cast::<Inode>().as_ptr();
        // SAFETY: a fresh object of the cache, sized and aligned for Inode.
        unsafe {
            inode.write(Inode {
                ino: i,
                mode: 0o100644,
                name: [i as u8; 180],
            })
        };
        objects.push(inode);
    }
    let intact = objects.iter().enumerate().all(|(i, &inode)| {
        // SAFETY: each object is ours and was initialised above.
        let inode = unsafe { &*inode };
        inode.ino == i as u64 && inode.mode == 0o100644 && inode.name.iter().all(|&b| b == i as u8)
    });
    let validated = mm.kmem_cache_validate(cache);
    check!(
        objects.len() == 200 && intact && validated.is_ok(),
        "kmem_cache \"kmm_inode\" ({size}-byte objects): 200 allocated, written and read back intact; validate: {validated:?}"
    );
    let info = format!("{}", mm.slabinfo());
    let line = info
        .lines()
        .find(|l| l.starts_with("kmm_inode"))
        .unwrap_or("");
    check!(!line.is_empty(), "/proc/slabinfo lists it: {line}");
    let mut freed = true;
    for inode in objects {
        // SAFETY: each object came from this cache and is given up once.
        freed &= unsafe { mm.kmem_cache_free(cache, inode.cast()) }.is_ok();
    }
    // SAFETY: every object was freed and nothing else uses the cache.
    let destroyed = unsafe { mm.kmem_cache_destroy(cache) };
    check!(
        freed && destroyed.is_ok(),
        "freed all 200 and destroyed the cache: {destroyed:?}"
    );
}

fn global_allocator(mm: &Mm) {
    let v: Vec<u64> = (0..10_000).map(|i| i * i).collect();
    let sum: u64 = v.iter().sum();
    let expected = (0..10_000u64).map(|i| i * i).sum::<u64>();
    // SAFETY: `v` holds the allocation and outlives the call.
    let ksize = unsafe { mm.ksize(v.as_ptr().cast()) };
    check!(
        sum == expected && ksize.as_ref().is_ok_and(|&k| k >= 80_000),
        "Vec<u64> of 10000 through #[global_allocator] = kmalloc: at {:p}, ksize {ksize:?}, sum {sum}",
        v.as_ptr()
    );
    let mut map = BTreeMap::new();
    for i in 0..2000u32 {
        map.insert(i.wrapping_mul(2_654_435_761), format!("node-{i}"));
    }
    let ordered = map.keys().zip(map.keys().skip(1)).all(|(a, b)| a < b);
    let found = (0..2000u32).all(|i| {
        map.get(&i.wrapping_mul(2_654_435_761))
            .is_some_and(|s| *s == format!("node-{i}"))
    });
    check!(
        map.len() == 2000 && ordered && found,
        "BTreeMap<u32, String> of 2000 entries through kmalloc: ordered, every key found"
    );
    drop(map);
    drop(v);
    println!("  (the Vec and the BTreeMap are freed back to their kmalloc caches)");
}
