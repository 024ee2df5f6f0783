//! Model-based test: random cache creation, allocation, frees (valid,
//! double, interior, foreign, to the wrong cache), shrink and destroy,
//! checked after every step against a model of the live objects:
//! no overlap, every object's bytes intact until freed, constructor state
//! on objects of constructed caches, refusals change nothing, and at the
//! end every page goes back to the page source.

use kmm_api::{GFP_DMA, GFP_KERNEL};
use kmm_slab::{testing::HostMachine, CacheId, Kmem, KmemConfig, SlabError, SlabFlags};
use proptest::prelude::*;
use std::ptr::NonNull;

const CTOR_WORD: u64 = 0x5eed_c7c7_c7c7_5eed;

fn ctor(p: NonNull<u8>) {
    // SAFETY: constructed caches hold objects of at least 8 bytes.
    unsafe { p.as_ptr().cast::<u64>().write_unaligned(CTOR_WORD) };
}

#[derive(Clone, Debug)]
enum Op {
    Create {
        size: usize,
        align_shift: u32,
        ctor: bool,
        debug: bool,
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
    Realloc {
        pick: usize,
        size: usize,
    },
    Shrink {
        cache: usize,
    },
    Destroy {
        cache: usize,
    },
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        1 => (8usize..1500, 0u32..7, any::<bool>(), any::<bool>())
            .prop_map(|(size, align_shift, ctor, debug)| Op::Create { size, align_shift, ctor, debug }),
        6 => any::<usize>().prop_map(|cache| Op::CacheAlloc { cache }),
        6 => (1usize..10_000, prop::bool::weighted(0.1)).prop_map(|(size, dma)| Op::Kmalloc { size, dma }),
        6 => any::<usize>().prop_map(|pick| Op::Free { pick }),
        1 => any::<usize>().prop_map(|pick| Op::DoubleFree { pick }),
        1 => (any::<usize>(), 1usize..64).prop_map(|(pick, offset)| Op::InteriorFree { pick, offset }),
        1 => Just(Op::ForeignFree),
        1 => (any::<usize>(), any::<usize>()).prop_map(|(pick, cache)| Op::WrongCacheFree { pick, cache }),
        2 => (any::<usize>(), 1usize..10_000).prop_map(|(pick, size)| Op::Realloc { pick, size }),
        1 => any::<usize>().prop_map(|cache| Op::Shrink { cache }),
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

struct Model<'m> {
    m: &'m HostMachine,
    k: Kmem<&'m HostMachine>,
    caches: Vec<(CacheId, usize, bool)>,
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

    fn snapshot(&self) -> (usize, Vec<Option<kmm_slab::CacheStats>>) {
        let stats = self
            .caches
            .iter()
            .map(|&(id, _, _)| self.k.kmem_cache_stats(id).ok())
            .collect();
        (self.m.frames_in_use(), stats)
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

    fn refused_unchanged(
        &self,
        before: &(usize, Vec<Option<kmm_slab::CacheStats>>),
        r: Result<(), SlabError>,
    ) {
        assert!(r.is_err(), "an invalid free was accepted");
        assert_eq!(&self.snapshot(), before, "a refusal changed state: {r:?}");
    }

    fn step(&mut self, op: Op) {
        match op {
            Op::Create {
                size,
                align_shift,
                ctor: with_ctor,
                debug,
            } => {
                let flags = if debug {
                    SlabFlags::RED_ZONE | SlabFlags::POISON
                } else {
                    SlabFlags::empty()
                };
                let c = with_ctor.then_some(ctor as kmm_slab::Ctor);
                match self
                    .k
                    .kmem_cache_create("model", size, 1 << align_shift, flags, c)
                {
                    Ok(id) => self.caches.push((id, size, with_ctor)),
                    Err(e) => assert!(matches!(e, SlabError::TooManyCaches { .. }), "{e}"),
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
                    let before = self.snapshot();
                    let r = self.k.kmem_cache_free(id, l.p);
                    self.refused_unchanged(&before, r);
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
    fn slab_matches_its_model(ops in prop::collection::vec(op(), 1..if cfg!(miri) { 20 } else { 300 })) {
        let m = HostMachine::new(4096, 2);
        let k = Kmem::new(&m, KmemConfig::default()).unwrap();
        let baseline = m.frames_in_use();
        let mut model = Model { m: &m, k, caches: Vec::new(), live: Vec::new(), freed: Vec::new(), next_fill: 0 };
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
