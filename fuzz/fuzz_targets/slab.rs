//! Arbitrary sequences of kmalloc / kfree / krealloc / kmem_cache
//! operations, including double, interior, foreign and wrong-cache frees,
//! checked against a model of the live objects (contents intact, no
//! overlap, refusals change nothing) and the allocator's invariant checker.
//!
//! Two allocators are booted once per thread (libFuzzer runs every input
//! on one thread): a plain one and one with slub_debug red zones and
//! poisoning; `Input::debug` picks one. Each input gives back everything
//! it took (frees its objects, destroys its caches, shrinks) and must
//! leave its allocator as it found it: the same frames in use, every
//! kmalloc cache's counters as at boot, no internal error.
//!
//! Check cadence: after every step, the model's own checks (contents of
//! each object freed or reallocated intact, `ksize` covering each new
//! object) and, for a refused free, that the frames in use, the internal
//! error count and the counters of every cache the input has used (the
//! kmalloc classes it allocated from, its own caches) are unchanged; every
//! [`CHECK_EVERY`] steps and at the end of each input the allocator's
//! O(memory) invariant checker; at the end of each input also, for the
//! debug allocator, `kmem_cache_validate` of every cache (red zones of
//! live objects, poison of free ones), and every live object's contents.
//!
//! The pointer calls are `unsafe fn`s (kmm-slab's *Freeing by pointer*).
//! An allocator is used only by the thread that booted it, one input at a
//! time, so no other thread allocates or frees during a call, and the
//! target passes only objects it holds (to free them, or to see a free of
//! their inside or through the wrong cache refused), addresses of objects
//! this input freed that no live object covers (nobody holds them:
//! `freed` forgets an address as soon as a new object covers it, and every
//! earlier input gave all its objects back), or its own stack. A free that
//! should have been refused but was accepted panics at once, so the object
//! is never used after it.

#![no_main]

use arbitrary::Arbitrary;
use kmm_api::{GFP_DMA, GFP_KERNEL};
use kmm_slab::{
    kmalloc_classes, testing::HostMachine, CacheId, CacheStats, Kmem, KmemConfig, SlabBackend,
    SlabFlags,
};
use libfuzzer_sys::fuzz_target;

/// Steps between two runs of the O(memory) invariant checker.
const CHECK_EVERY: usize = 16;

/// Frames of each machine (64 MiB): room for the most an input can hold,
/// 400 objects each in a block or slab of at most 128 KiB (a 40,000-byte
/// kmalloc takes an order-4 block, a slab is at most order 5), 50 MiB, so
/// an allocation the target unwraps does not fail for want of memory (on
/// 16 MiB, 256 large kmallocs did). Booted once, its size costs nothing
/// per input.
const FRAMES: usize = 16_384;

/// An allocator booted once and reused by every input.
struct Machine {
    m: &'static HostMachine,
    k: Kmem<&'static HostMachine>,
    /// Every kmalloc cache, normal and DMA.
    kmalloc: Vec<CacheId>,
    /// The counters right after boot, which every input must leave as it
    /// found them.
    boot: Counters,
}

/// What a refused operation must leave unchanged, and what an input must
/// give back: frames in use, internal errors, and the counters (objects,
/// slabs, cached, quarantined, errors) of some caches.
#[derive(PartialEq, Debug)]
struct Counters {
    frames: usize,
    internal_errors: usize,
    caches: Vec<CacheStats>,
}

impl Machine {
    fn boot(debug: bool) -> &'static Machine {
        let m: &'static HostMachine = Box::leak(Box::new(HostMachine::new(FRAMES, 2)));
        let config = KmemConfig {
            slub_debug: if debug {
                SlabFlags::RED_ZONE | SlabFlags::POISON
            } else {
                SlabFlags::empty()
            },
            seed: 1,
            fine_classes: false,
        };
        let k = Kmem::new(m, config).unwrap();
        let kmalloc = kmalloc_classes()
            .iter()
            .flat_map(|&size| {
                [GFP_KERNEL, GFP_KERNEL | GFP_DMA].map(|gfp| k.kmalloc_slab(size, gfp).unwrap())
            })
            .collect();
        let mut machine = Machine {
            m,
            k,
            kmalloc,
            boot: Counters {
                frames: 0,
                internal_errors: 0,
                caches: Vec::new(),
            },
        };
        machine.boot = machine.counters_all();
        Box::leak(Box::new(machine))
    }

    /// The counters, with those of `caches`.
    fn counters(&self, caches: impl IntoIterator<Item = CacheId>) -> Counters {
        Counters {
            frames: self.m.frames_in_use(),
            internal_errors: self.k.internal_errors(),
            caches: caches
                .into_iter()
                .map(|id| self.k.kmem_cache_stats(id).unwrap())
                .collect(),
        }
    }

    /// The counters of every kmalloc cache, as after boot.
    fn counters_all(&self) -> Counters {
        self.counters(self.kmalloc.iter().copied())
    }
}

/// The caches an input has used: the kmalloc caches it allocated from, in
/// first-use order, and its own caches.
fn used(kmalloc: &[CacheId], caches: &[(CacheId, usize)]) -> Vec<CacheId> {
    let own = caches.iter().map(|&(id, _)| id);
    kmalloc.iter().copied().chain(own).collect()
}

/// Records that an input allocated from the kmalloc cache `id` (`None`: a
/// large kmalloc, whole pages, which the frame count covers).
fn touch(kmalloc: &mut Vec<CacheId>, id: Option<CacheId>) {
    if let Some(id) = id.filter(|id| !kmalloc.contains(id)) {
        kmalloc.push(id);
    }
}

thread_local! {
    /// This thread's allocators, plain and slub_debug.
    static MACHINES: [&'static Machine; 2] = [Machine::boot(false), Machine::boot(true)];
}

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
    let machine = MACHINES.with(|machines| machines[usize::from(input.debug)]);
    let k = &machine.k;
    assert_eq!(machine.counters_all(), machine.boot, "left as booted");
    let mut kmalloc: Vec<CacheId> = Vec::new();
    let mut caches: Vec<(CacheId, usize)> = Vec::new();
    let mut live: Vec<Live> = Vec::new();
    let mut freed: Vec<*mut u8> = Vec::new();
    let mut stamp = 0u8;
    for (i, &(kind, a, b)) in input.ops.iter().take(400).enumerate() {
        let (a, b) = (a as usize, b as usize);
        match kind % 10 {
            0 | 1 => {
                let size = 1 + a % if b % 8 == 0 { 40_000 } else { 2_000 };
                let gfp = if b % 13 == 0 {
                    GFP_KERNEL | GFP_DMA
                } else {
                    GFP_KERNEL
                };
                touch(&mut kmalloc, k.kmalloc_slab(size, gfp));
                let p = k.kmalloc(size, gfp).unwrap().as_ptr();
                stamp = stamp.wrapping_add(1);
                reuse(k, &mut freed, p, size);
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
                reuse(k, &mut freed, p, size);
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
                let before = machine.counters(used(&kmalloc, &caches));
                // SAFETY: single-threaded: only this thread uses its
                // allocator. `p` is the start of an object this input freed
                // that no live object covers (nobody holds it), the inside
                // of an object the target holds, or a variable on the
                // target's stack: never an allocation someone else holds.
                // Were it accepted, the assert panics before anything is
                // used again.
                let refused = unsafe { k.kfree(p) }.is_err();
                assert!(refused, "invalid free accepted");
                assert_eq!(machine.counters(used(&kmalloc, &caches)), before);
            }
            6 if !live.is_empty() => {
                let idx = a % live.len();
                if live[idx].cache.is_none() {
                    let l = live.swap_remove(idx);
                    assert!(intact(&l));
                    let size = 1 + b % 12_000;
                    touch(&mut kmalloc, k.kmalloc_slab(size, GFP_KERNEL));
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
                    reuse(k, &mut freed, q, size);
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
                    // SAFETY: single-threaded: only this thread uses its
                    // allocator, so nothing else uses the cache during the
                    // call. A refused destroy changes nothing.
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
                    let before = machine.counters(used(&kmalloc, &caches));
                    // SAFETY: single-threaded: only this thread uses its
                    // allocator; the target holds the object at `l.p`.
                    // Were the free accepted, the assert panics before the
                    // object is used again.
                    let refused = unsafe { k.kmem_cache_free(id, l.p) }.is_err();
                    assert!(refused, "wrong-cache free accepted");
                    assert_eq!(machine.counters(used(&kmalloc, &caches)), before);
                }
            }
            _ => {}
        }
        if (i + 1) % CHECK_EVERY == 0 {
            k.check_invariants().unwrap();
        }
    }
    k.check_invariants().unwrap();
    if input.debug {
        for id in used(&machine.kmalloc, &caches) {
            let errors = k.kmem_cache_validate(id);
            assert_eq!(errors, Ok(0), "red zones and poison intact");
        }
    }
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
    k.check_invariants().unwrap();
    assert_eq!(machine.counters_all(), machine.boot, "every page returned");
});
