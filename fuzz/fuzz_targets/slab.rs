//! Arbitrary sequences of kmalloc / kfree / krealloc / kmem_cache
//! operations, including double, interior, foreign and wrong-cache frees,
//! checked against a model of the live objects (contents intact, no
//! overlap, refusals change nothing) and the allocator's invariant checker.
//!
//! The pointer calls are `unsafe fn`s (kmm-slab's *Freeing by pointer*).
//! Each run is single-threaded on a machine of its own, so no other thread
//! allocates or frees during a call, and the target passes only objects it
//! holds (to free them, or to see a free of their inside or through the
//! wrong cache refused), addresses of freed objects no live object covers
//! (nobody holds them; `freed` forgets an address as soon as a new object
//! covers it), or its own stack. A free that should have been refused but
//! was accepted panics at once, so the object is never used after it.

#![no_main]

use arbitrary::Arbitrary;
use kmm_api::{GFP_DMA, GFP_KERNEL};
use kmm_slab::{testing::HostMachine, CacheId, Kmem, KmemConfig, SlabBackend, SlabFlags};
use libfuzzer_sys::fuzz_target;

#[derive(Arbitrary, Debug)]
struct Input {
    debug: bool,
    ops: Vec<(u8, u16, u16)>,
}

struct Live {
    p: *mut u8,
    size: usize,
    cache: Option<CacheId>,
    fill: u8,
}

fn intact(l: &Live) -> bool {
    // SAFETY: the object is live and holds `size` bytes.
    unsafe { std::slice::from_raw_parts(l.p, l.size) }
        .iter()
        .all(|&b| b == l.fill)
}

fn fill(l: &Live) {
    // SAFETY: the object is live and holds `size` bytes.
    unsafe { l.p.write_bytes(l.fill, l.size) };
}

/// Records a new object at `p`: forgets every freed address it covers,
/// which from now on names memory the target holds, not memory nobody
/// holds.
fn reuse<B: SlabBackend>(k: &Kmem<B>, freed: &mut Vec<*mut u8>, p: *mut u8, size: usize) {
    // SAFETY: the target holds the object just allocated at `p`.
    let extent = unsafe { k.ksize(p) }.unwrap_or(size).max(size);
    let covered = p as usize..p as usize + extent;
    freed.retain(|&f| !covered.contains(&(f as usize)));
}

fuzz_target!(|input: Input| {
    let m = HostMachine::new(4096, 2);
    let config = KmemConfig {
        slub_debug: if input.debug {
            SlabFlags::RED_ZONE | SlabFlags::POISON
        } else {
            SlabFlags::empty()
        },
        seed: 1,
    };
    let k = Kmem::new(&m, config).unwrap();
    let baseline = m.frames_in_use();
    let mut caches: Vec<(CacheId, usize)> = Vec::new();
    let mut live: Vec<Live> = Vec::new();
    let mut freed: Vec<*mut u8> = Vec::new();
    let mut stamp = 0u8;
    for (i, &(kind, a, b)) in input.ops.iter().take(400).enumerate() {
        let (a, b) = (a as usize, b as usize);
        let before = (m.frames_in_use(), k.check_invariants());
        match kind % 10 {
            0 | 1 => {
                let size = 1 + a % if b % 8 == 0 { 40_000 } else { 2_000 };
                let gfp = if b % 13 == 0 {
                    GFP_KERNEL | GFP_DMA
                } else {
                    GFP_KERNEL
                };
                let p = k.kmalloc(size, gfp).unwrap().as_ptr();
                stamp = stamp.wrapping_add(1);
                reuse(&k, &mut freed, p, size);
                let l = Live {
                    p,
                    size,
                    cache: None,
                    fill: stamp,
                };
                fill(&l);
                live.push(l);
            }
            2 if !caches.is_empty() => {
                let (id, size) = caches[a % caches.len()];
                let p = k.kmem_cache_alloc(id, GFP_KERNEL).unwrap().as_ptr();
                stamp = stamp.wrapping_add(1);
                reuse(&k, &mut freed, p, size);
                let l = Live {
                    p,
                    size,
                    cache: Some(id),
                    fill: stamp,
                };
                fill(&l);
                live.push(l);
            }
            3 | 4 if !live.is_empty() => {
                let l = live.swap_remove(a % live.len());
                assert!(intact(&l), "contents changed while live");
                match l.cache {
                    // SAFETY: the target holds the object (just taken out
                    // of `live`) and gives it up here.
                    Some(id) => unsafe { k.kmem_cache_free(id, l.p) }.unwrap(),
                    // SAFETY: as above.
                    None => unsafe { k.kfree(l.p) }.unwrap(),
                }
                freed.push(l.p);
            }
            5 => {
                // Invalid frees: double, interior, foreign. Each is refused
                // and changes nothing.
                let p = match (b % 3, freed.is_empty(), live.is_empty()) {
                    (0, false, _) => freed[a % freed.len()],
                    (1, _, false) => {
                        let l = &live[a % live.len()];
                        if l.size < 2 {
                            continue;
                        }
                        l.p.wrapping_add(1 + b % (l.size - 1))
                    }
                    _ => std::ptr::from_ref(&stamp).cast_mut(),
                };
                // SAFETY: single-threaded, on this run's own machine. `p` is
                // the start of a freed object no live object covers (nobody
                // holds it), the inside of an object the target holds, or a
                // variable on the target's stack: never an allocation
                // someone else holds. Were it accepted, the assert panics
                // before anything is used again.
                let refused = unsafe { k.kfree(p) }.is_err();
                assert!(refused, "invalid free accepted");
                assert_eq!((m.frames_in_use(), k.check_invariants()), before);
            }
            6 if !live.is_empty() => {
                let idx = a % live.len();
                if live[idx].cache.is_none() {
                    let l = live.swap_remove(idx);
                    assert!(intact(&l));
                    let size = 1 + b % 12_000;
                    // SAFETY: the target holds the object (just taken out of
                    // `live`) and gives it up for the one returned.
                    let q = unsafe { k.krealloc(l.p, size, GFP_KERNEL) }
                        .unwrap()
                        .as_ptr();
                    let kept = size.min(l.size);
                    // SAFETY: `q` holds at least `size` bytes.
                    let bytes = unsafe { std::slice::from_raw_parts(q, kept) };
                    assert!(bytes.iter().all(|&x| x == l.fill), "krealloc lost contents");
                    if q != l.p {
                        freed.push(l.p);
                    }
                    reuse(&k, &mut freed, q, size);
                    let nl = Live {
                        p: q,
                        size,
                        cache: None,
                        fill: l.fill,
                    };
                    fill(&nl);
                    live.push(nl);
                }
            }
            7 => {
                let size = 1 + a % 3000;
                if let Ok(id) =
                    k.kmem_cache_create("fuzz", size, 1 << (b % 7), SlabFlags::empty(), None)
                {
                    caches.push((id, size));
                }
            }
            8 if !caches.is_empty() => {
                let ci = a % caches.len();
                let (id, _) = caches[ci];
                if b % 2 == 0 {
                    k.kmem_cache_shrink(id).unwrap();
                } else {
                    let n = live.iter().filter(|l| l.cache == Some(id)).count();
                    // SAFETY: single-threaded: nothing else uses the cache
                    // during the call. A refused destroy changes nothing.
                    match unsafe { k.kmem_cache_destroy(id) } {
                        Ok(()) => {
                            assert_eq!(n, 0);
                            caches.swap_remove(ci);
                        }
                        Err(_) => assert!(n > 0),
                    }
                }
            }
            9 if !live.is_empty() && !caches.is_empty() => {
                let l = &live[a % live.len()];
                let (id, _) = caches[b % caches.len()];
                if l.cache != Some(id) {
                    // SAFETY: single-threaded; the target holds the object
                    // at `l.p`. Were the free accepted, the assert panics
                    // before the object is used again.
                    let refused = unsafe { k.kmem_cache_free(id, l.p) }.is_err();
                    assert!(refused, "wrong-cache free accepted");
                    assert_eq!((m.frames_in_use(), k.check_invariants()), before);
                }
            }
            _ => {}
        }
        if i % 16 == 0 {
            k.check_invariants().unwrap();
        }
    }
    k.check_invariants().unwrap();
    for l in live.drain(..) {
        assert!(intact(&l));
        match l.cache {
            // SAFETY: the target holds every object left in `live` and
            // gives each up here, once.
            Some(id) => unsafe { k.kmem_cache_free(id, l.p) }.unwrap(),
            // SAFETY: as above.
            None => unsafe { k.kfree(l.p) }.unwrap(),
        }
    }
    for (id, _) in caches.drain(..) {
        // SAFETY: single-threaded, and every object of the cache was freed
        // above: nothing else uses it during the call.
        unsafe { k.kmem_cache_destroy(id) }.unwrap();
    }
    k.shrink_all();
    assert_eq!(m.frames_in_use(), baseline, "every page returned");
});
