//! Model-based test: random cache creation, allocation, frees (valid,
//! double, interior, foreign, to the wrong cache — including a cache of
//! the very same object size), flushes, shrinks and destroys, checked
//! after every step against a model of the live objects: no overlap,
//! every object's bytes intact until freed, constructor state on objects
//! of constructed caches, refusals change nothing, the allocator never
//! refuses a free of its own memory, and at the end every page goes back
//! to the page source.
//!
//! Caches come in same-size pairs (two user caches of one size, and a user
//! cache of a kmalloc class's size), so an identity check that compared
//! object sizes instead of caches would accept a free routed to the wrong
//! cache, and the model would catch it.

use kmm_api::{GfpFlags, GFP_DMA, GFP_KERNEL};
use kmm_slab::{
    kmalloc_classes, testing::HostMachine, CacheId, CacheStats, Kmem, KmemConfig, SlabError,
    SlabFlags,
};
use proptest::prelude::*;
use std::{ops::Deref, ptr::NonNull};

const CTOR_WORD: u64 = 0x5eed_c7c7_c7c7_5eed;

fn ctor(p: NonNull<u8>) {
    // SAFETY: constructed caches hold objects of at least 8 bytes.
    unsafe { p.as_ptr().cast::<u64>().write_unaligned(CTOR_WORD) };
}

/// The allocator under test, used by the one thread that runs the model.
/// Every pointer the model passes is one it holds (a live object: given
/// up by a free that succeeds, kept by `ksize` and by a free that must be
/// refused) or one nobody holds (a freed object not handed out again, a
/// pointer into an object's middle, a stack address). That meets the
/// crate's *Freeing by pointer* contract, and with no other thread no
/// use of a cache can race its destroy; so the calls are offered here as
/// safe methods of the same names.
struct SoleUser<'m>(Kmem<&'m HostMachine>);

impl<'m> SoleUser<'m> {
    fn kfree(&self, p: *const u8) -> Result<(), SlabError> {
        // SAFETY: the `SoleUser` contract.
        unsafe { self.0.kfree(p) }
    }

    fn kmem_cache_free(&self, id: CacheId, p: *const u8) -> Result<(), SlabError> {
        // SAFETY: the `SoleUser` contract.
        unsafe { self.0.kmem_cache_free(id, p) }
    }

    fn krealloc(&self, p: *const u8, size: usize, gfp: GfpFlags) -> Result<NonNull<u8>, SlabError> {
        // SAFETY: the `SoleUser` contract.
        unsafe { self.0.krealloc(p, size, gfp) }
    }

    fn ksize(&self, p: *const u8) -> Result<usize, SlabError> {
        // SAFETY: the `SoleUser` contract.
        unsafe { self.0.ksize(p) }
    }

    fn kmem_cache_destroy(&self, id: CacheId) -> Result<(), SlabError> {
        // SAFETY: the `SoleUser` contract.
        unsafe { self.0.kmem_cache_destroy(id) }
    }
}

impl<'m> Deref for SoleUser<'m> {
    type Target = Kmem<&'m HostMachine>;
    fn deref(&self) -> &Self::Target {
        &self.0
    }
}

#[derive(Clone, Debug)]
enum Op {
    Create {
        size: usize,
        align_shift: u32,
        ctor: bool,
        debug: bool,
        /// Two caches of this one size and these flags.
        twin: bool,
    },
    CacheAlloc {
        cache: usize,
    },
    Kmalloc {
        size: usize,
        dma: bool,
    },
    Free {
        pick: usize,
    },
    DoubleFree {
        pick: usize,
    },
    InteriorFree {
        pick: usize,
        offset: usize,
    },
    ForeignFree,
    WrongCacheFree {
        pick: usize,
        cache: usize,
    },
    /// A free through another cache of the object's own size.
    SameSizeWrongCacheFree {
        pick: usize,
        cache: usize,
    },
    Realloc {
        pick: usize,
        size: usize,
    },
    Shrink {
        cache: usize,
    },
    FlushAll,
    ShrinkAll,
    Destroy {
        cache: usize,
    },
}

/// Object sizes for new caches: any, or exactly a kmalloc class's.
fn cache_size() -> impl Strategy<Value = usize> {
    prop_oneof![
        8usize..1500,
        prop::sample::select(kmalloc_classes()[..10].to_vec()),
    ]
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        1 => (cache_size(), 0u32..7, any::<bool>(), any::<bool>(), any::<bool>())
            .prop_map(|(size, align_shift, ctor, debug, twin)| Op::Create { size, align_shift, ctor, debug, twin }),
        6 => any::<usize>().prop_map(|cache| Op::CacheAlloc { cache }),
        6 => (1usize..10_000, prop::bool::weighted(0.1)).prop_map(|(size, dma)| Op::Kmalloc { size, dma }),
        6 => any::<usize>().prop_map(|pick| Op::Free { pick }),
        1 => any::<usize>().prop_map(|pick| Op::DoubleFree { pick }),
        1 => (any::<usize>(), 1usize..64).prop_map(|(pick, offset)| Op::InteriorFree { pick, offset }),
        1 => Just(Op::ForeignFree),
        1 => (any::<usize>(), any::<usize>()).prop_map(|(pick, cache)| Op::WrongCacheFree { pick, cache }),
        2 => (any::<usize>(), any::<usize>()).prop_map(|(pick, cache)| Op::SameSizeWrongCacheFree { pick, cache }),
        2 => (any::<usize>(), 1usize..10_000).prop_map(|(pick, size)| Op::Realloc { pick, size }),
        1 => any::<usize>().prop_map(|cache| Op::Shrink { cache }),
        1 => Just(Op::FlushAll),
        1 => Just(Op::ShrinkAll),
        1 => any::<usize>().prop_map(|cache| Op::Destroy { cache }),
    ]
}

#[derive(Clone, Copy, Debug)]
struct Live {
    p: *mut u8,
    size: usize,
    cache: Option<CacheId>,
    has_ctor: bool,
    fill: u8,
}

/// Frames in use, and the counters of every user and kmalloc cache.
type Snapshot = (usize, Vec<Option<CacheStats>>);

struct Model<'m> {
    m: &'m HostMachine,
    k: SoleUser<'m>,
    /// User caches: handle, requested size, constructed.
    caches: Vec<(CacheId, usize, bool)>,
    /// The kmalloc caches (normal and DMA).
    kmalloc: Vec<CacheId>,
    live: Vec<Live>,
    freed: Vec<*mut u8>,
    next_fill: u8,
}

impl Model<'_> {
    /// Bytes a test owns in an object: constructed objects keep their
    /// first word for the constructor's state.
    fn user_range(l: &Live) -> (usize, usize) {
        if l.has_ctor {
            (8, l.size)
        } else {
            (0, l.size)
        }
    }

    fn fill(&mut self, l: &mut Live) {
        self.next_fill = self.next_fill.wrapping_add(1);
        l.fill = self.next_fill;
        let (from, to) = Self::user_range(l);
        // SAFETY: the object is live and holds `size` bytes.
        unsafe { l.p.add(from).write_bytes(l.fill, to - from) };
    }

    fn intact(l: &Live) -> bool {
        let (from, to) = Self::user_range(l);
        // SAFETY: the object is live and holds `size` bytes.
        let bytes = unsafe { std::slice::from_raw_parts(l.p.add(from), to - from) };
        // SAFETY: as above; constructed objects hold at least 8 bytes.
        let ctor_ok = !l.has_ctor || unsafe { l.p.cast::<u64>().read_unaligned() } == CTOR_WORD;
        ctor_ok && bytes.iter().all(|&b| b == l.fill)
    }

    fn all_caches(&self) -> impl Iterator<Item = CacheId> + '_ {
        self.caches
            .iter()
            .map(|&(id, _, _)| id)
            .chain(self.kmalloc.iter().copied())
    }

    fn snapshot(&self) -> Snapshot {
        let stats = self
            .all_caches()
            .map(|id| self.k.kmem_cache_stats(id).ok())
            .collect();
        (self.m.frames_in_use(), stats)
    }

    fn create(&mut self, name: &'static str, size: usize, align: usize, flags: SlabFlags, c: bool) {
        let with = c.then_some(ctor as kmm_slab::Ctor);
        match self.k.kmem_cache_create(name, size, align, flags, with) {
            Ok(id) => self.caches.push((id, size, c)),
            Err(e) => assert!(matches!(e, SlabError::TooManyCaches { .. }), "{e}"),
        }
    }

    fn admit(&mut self, p: NonNull<u8>, size: usize, cache: Option<CacheId>, has_ctor: bool) {
        let p = p.as_ptr();
        self.freed.retain(|&f| f != p);
        let mut l = Live {
            p,
            size,
            cache,
            has_ctor,
            fill: 0,
        };
        if has_ctor {
            // SAFETY: a fresh object of a constructed cache, 8+ bytes.
            let word = unsafe { p.cast::<u64>().read_unaligned() };
            assert_eq!(word, CTOR_WORD, "constructor state");
        }
        self.fill(&mut l);
        self.live.push(l);
    }

    fn refused_unchanged(&self, before: &Snapshot, r: Result<(), SlabError>) {
        assert!(r.is_err(), "an invalid free was accepted");
        assert_eq!(&self.snapshot(), before, "a refusal changed state: {r:?}");
    }

    /// Bytes of the objects of the cache holding live object `l`.
    fn object_size(&self, l: &Live) -> usize {
        match l.cache {
            Some(id) => self.k.kmem_cache_info(id).unwrap().object_size,
            None => self.k.ksize(l.p).unwrap(),
        }
    }

    /// Frees live object `l` through user cache `id`, which is not its
    /// own: refused as a wrong cache, with nothing changed.
    fn free_to_wrong_cache(&self, l: &Live, id: CacheId) {
        assert_ne!(l.cache, Some(id));
        let before = self.snapshot();
        let r = self.k.kmem_cache_free(id, l.p);
        assert!(
            matches!(r, Err(SlabError::WrongCache { .. })),
            "a free through another cache of {} bytes (object of {} bytes): {r:?}",
            self.k.kmem_cache_info(id).unwrap().object_size,
            self.object_size(l),
        );
        self.refused_unchanged(&before, r);
        assert!(Self::intact(l), "a refused free changed the object");
    }

    fn step(&mut self, op: Op) {
        match op {
            Op::Create {
                size,
                align_shift,
                ctor: with_ctor,
                debug,
                twin,
            } => {
                let flags = if debug {
                    SlabFlags::RED_ZONE | SlabFlags::POISON
                } else {
                    SlabFlags::empty()
                };
                let name = if twin { "twin" } else { "model" };
                for _ in 0..1 + usize::from(twin) {
                    self.create(name, size, 1 << align_shift, flags, with_ctor);
                }
            }
            Op::CacheAlloc { cache } if !self.caches.is_empty() => {
                let (id, size, has_ctor) = self.caches[cache % self.caches.len()];
                let p = self.k.kmem_cache_alloc(id, GFP_KERNEL).unwrap();
                self.admit(p, size, Some(id), has_ctor);
            }
            Op::Kmalloc { size, dma } => {
                let gfp = if dma {
                    GFP_KERNEL | GFP_DMA
                } else {
                    GFP_KERNEL
                };
                let p = self.k.kmalloc(size, gfp).unwrap();
                assert!(self.k.ksize(p.as_ptr()).unwrap() >= size);
                self.admit(p, size, None, false);
            }
            Op::Free { pick } if !self.live.is_empty() => {
                let l = self.live.swap_remove(pick % self.live.len());
                assert!(Self::intact(&l), "object bytes changed while live");
                match l.cache {
                    Some(id) => self.k.kmem_cache_free(id, l.p).unwrap(),
                    None => self.k.kfree(l.p).unwrap(),
                }
                self.freed.push(l.p);
            }
            Op::DoubleFree { pick } if !self.freed.is_empty() => {
                let p = self.freed[pick % self.freed.len()];
                let before = self.snapshot();
                let r = self.k.kfree(p);
                self.refused_unchanged(&before, r);
            }
            Op::InteriorFree { pick, offset } if !self.live.is_empty() => {
                let l = self.live[pick % self.live.len()];
                if offset < l.size {
                    let before = self.snapshot();
                    let r = self.k.kfree(l.p.wrapping_add(offset));
                    self.refused_unchanged(&before, r);
                }
            }
            Op::ForeignFree => {
                let on_stack = 0u64;
                let before = self.snapshot();
                let r = self.k.kfree(std::ptr::from_ref(&on_stack).cast());
                self.refused_unchanged(&before, r);
            }
            Op::WrongCacheFree { pick, cache }
                if !self.live.is_empty() && !self.caches.is_empty() =>
            {
                let l = self.live[pick % self.live.len()];
                let (id, _, _) = self.caches[cache % self.caches.len()];
                if l.cache != Some(id) {
                    self.free_to_wrong_cache(&l, id);
                }
            }
            Op::SameSizeWrongCacheFree { pick, cache } if !self.live.is_empty() => {
                let l = self.live[pick % self.live.len()];
                let size = self.object_size(&l);
                let same_size: Vec<CacheId> = self
                    .caches
                    .iter()
                    .map(|&(id, _, _)| id)
                    .filter(|&id| Some(id) != l.cache)
                    .filter(|&id| self.k.kmem_cache_info(id).unwrap().object_size == size)
                    .collect();
                if !same_size.is_empty() {
                    self.free_to_wrong_cache(&l, same_size[cache % same_size.len()]);
                }
            }
            Op::Realloc { pick, size } if !self.live.is_empty() => {
                let i = pick % self.live.len();
                let l = self.live[i];
                if l.cache.is_none() {
                    assert!(Self::intact(&l));
                    let q = self.k.krealloc(l.p, size, GFP_KERNEL).unwrap().as_ptr();
                    let kept = l.size.min(size);
                    // SAFETY: the new allocation holds at least `size` bytes.
                    let bytes = unsafe { std::slice::from_raw_parts(q, kept) };
                    assert!(bytes.iter().all(|&b| b == l.fill), "krealloc lost contents");
                    self.live.swap_remove(i);
                    if q != l.p {
                        self.freed.push(l.p);
                    }
                    self.admit(NonNull::new(q).unwrap(), size, None, false);
                }
            }
            Op::Shrink { cache } if !self.caches.is_empty() => {
                let (id, _, _) = self.caches[cache % self.caches.len()];
                self.k.kmem_cache_shrink(id).unwrap();
                assert_eq!(self.k.kmem_cache_stats(id).unwrap().cached_objs, 0);
            }
            Op::FlushAll => {
                assert_eq!(self.k.flush_all(), 0, "the host machine reaches every CPU");
                for id in self.all_caches() {
                    assert_eq!(self.k.kmem_cache_stats(id).unwrap().cached_objs, 0);
                }
            }
            Op::ShrinkAll => {
                self.k.shrink_all();
                for id in self.all_caches() {
                    let s = self.k.kmem_cache_stats(id).unwrap();
                    assert_eq!(s.cached_objs, 0, "shrink_all flushes every CPU");
                    assert_eq!(s.num_slabs, s.active_slabs, "no empty slab is kept");
                }
            }
            Op::Destroy { cache } if !self.caches.is_empty() => {
                let i = cache % self.caches.len();
                let (id, _, _) = self.caches[i];
                let live = self.live.iter().filter(|l| l.cache == Some(id)).count();
                match self.k.kmem_cache_destroy(id) {
                    Ok(()) => {
                        assert_eq!(live, 0, "destroyed with live objects");
                        self.caches.swap_remove(i);
                        assert_eq!(
                            self.k.kmem_cache_alloc(id, GFP_KERNEL),
                            Err(SlabError::NoSuchCache)
                        );
                    }
                    Err(SlabError::CacheBusy { live: n, .. }) => assert_eq!(n, live),
                    Err(e) => panic!("destroy: {e}"),
                }
            }
            _ => {}
        }
    }

    fn check(&self) {
        self.k.check_invariants().unwrap();
        assert_eq!(
            self.k.internal_errors(),
            0,
            "a free of the allocator's own memory was refused"
        );
        let mut spans: Vec<(usize, usize)> = self
            .live
            .iter()
            .map(|l| (l.p as usize, l.p as usize + l.size))
            .collect();
        spans.sort_unstable();
        assert!(
            spans.windows(2).all(|w| w[0].1 <= w[1].0),
            "live objects overlap"
        );
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: if cfg!(miri) { 2 } else { 48 }, ..ProptestConfig::default() })]

    #[test]
    fn slab_matches_its_model(
        twin_size in cache_size(),
        twin_debug in any::<bool>(),
        class in prop::sample::select(kmalloc_classes()[..10].to_vec()),
        ops in prop::collection::vec(op(), 1..if cfg!(miri) { 20 } else { 300 }),
    ) {
        let m = HostMachine::new(4096, 2);
        let k = SoleUser(Kmem::new(&m, KmemConfig::default()).unwrap());
        let baseline = m.frames_in_use();
        let kmalloc = kmalloc_classes()
            .iter()
            .flat_map(|&size| [GFP_KERNEL, GFP_KERNEL | GFP_DMA].map(|gfp| k.kmalloc_slab(size, gfp).unwrap()))
            .collect();
        let mut model = Model { m: &m, k, caches: Vec::new(), kmalloc, live: Vec::new(), freed: Vec::new(), next_fill: 0 };
        // Two caches of one size, and one of a kmalloc class's size.
        model.step(Op::Create { size: twin_size, align_shift: 0, ctor: false, debug: twin_debug, twin: true });
        model.create("kmalloc-twin", class, 0, SlabFlags::empty(), false);
        for op in ops {
            model.step(op);
            model.check();
        }
        for l in std::mem::take(&mut model.live) {
            assert!(Model::intact(&l));
            match l.cache {
                Some(id) => model.k.kmem_cache_free(id, l.p).unwrap(),
                None => model.k.kfree(l.p).unwrap(),
            }
        }
        for (id, _, _) in std::mem::take(&mut model.caches) {
            model.k.kmem_cache_destroy(id).unwrap();
        }
        model.k.shrink_all();
        model.check();
        prop_assert_eq!(m.frames_in_use(), baseline, "every page returned");
    }
}
