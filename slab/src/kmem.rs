//! The allocator value: the cache table, the page source it draws on, and
//! the bridge between objects and page frames (owner words).
//!
//! Owner-word format (one word per frame, `kmm_api::PageOwner`), low three
//! bits a tag:
//!
//! | tag | frame | upper bits |
//! |---|---|---|
//! | 1 | any page of a slab | the slab header's direct-map address |
//! | 2 | first page of a large kmalloc | its order |
//! | 3 | other page of a large kmalloc | page index in the block |
//!
//! Cache-table lock: taken only by create and destroy, never by alloc or
//! free; it is never held across a page-allocator call and nests no lock.

use crate::{
    cache::{Ctor, KmemCache},
    cpu::CpuArray,
    error::SlabError,
    flags::SlabFlags,
    freelist::FreePtr,
    geometry::Geometry,
    kmalloc::{DMA_KMALLOC_NAMES, KMALLOC_CLASSES, KMALLOC_NAMES, NR_KMALLOC},
    node::Node,
    raw,
    slab::SlabHeader,
};
use core::{
    mem::size_of,
    ptr::{self, NonNull},
    sync::atomic::{
        AtomicPtr, AtomicU32, AtomicUsize,
        Ordering::{Acquire, Release},
    },
};
use kmm_api::{
    get_order, sync::SpinLock, DirectMap, FrameAllocator, GfpFlags, Order, PageOwner, Pfn,
    PreemptControl, VirtAddr, GFP_KERNEL, PAGE_SIZE,
};

/// Everything the slab layer needs from below: frames, their direct-map
/// addresses, one owner word per frame, and CPU pinning.
pub trait SlabBackend: FrameAllocator + DirectMap + PageOwner + PreemptControl {}

impl<T: FrameAllocator + DirectMap + PageOwner + PreemptControl> SlabBackend for T {}

/// Caches the table can hold (kmalloc's 26 included).
pub const MAX_CACHES: usize = 64;

pub(crate) const TAG_MASK: usize = 0b111;
pub(crate) const TAG_SLAB: usize = 1;
pub(crate) const TAG_LARGE: usize = 2;
pub(crate) const TAG_TAIL: usize = 3;

/// Boot-time settings.
#[derive(Clone, Copy, Debug, Default)]
pub struct KmemConfig {
    /// Debug flags added to every cache, kmalloc's included (the kernel's
    /// `slub_debug=` switch).
    pub slub_debug: SlabFlags,
    /// Entropy for the per-cache free-pointer secrets.
    pub seed: u64,
}

/// A handle on a cache made by [`Kmem::kmem_cache_create`]. A handle of a
/// destroyed cache is refused with [`SlabError::NoSuchCache`].
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub struct CacheId {
    index: u16,
    generation: u32,
}

/// The slab allocator: object caches and the kmalloc family over a page
/// source `B`. See the crate documentation for the mechanism.
///
/// Dropping it returns nothing to the page source: destroy the caches and
/// call [`Kmem::shrink_all`] first if the pages must go back (kmalloc's
/// cache descriptors stay with the page source's own lifetime).
pub struct Kmem<B> {
    backend: B,
    config: KmemConfig,
    nr_cpus: usize,
    table: [AtomicPtr<KmemCache>; MAX_CACHES],
    generations: [AtomicU32; MAX_CACHES],
    used: SpinLock<u64>,
    kmalloc: [NonNull<KmemCache>; 2 * NR_KMALLOC],
}

// SAFETY: the descriptors the raw pointers name are `Sync` and live as
// long as the allocator; the backend is shared only as `B: Sync` allows.
unsafe impl<B: Sync> Sync for Kmem<B> {}
// SAFETY: as above; nothing is tied to the creating thread.
unsafe impl<B: Send> Send for Kmem<B> {}

/// Where an address was found.
pub(crate) enum Owned<'a> {
    /// Object `index` of a slab of `cache`.
    Slab {
        cache: &'a KmemCache,
        slab: &'a SlabHeader,
        index: usize,
    },
    /// The first page of a large kmalloc.
    Large { pfn: Pfn, order: Order },
}

impl<B: SlabBackend> Kmem<B> {
    /// Builds the allocator and its kmalloc caches over `backend`.
    pub fn new(backend: B, config: KmemConfig) -> Result<Self, SlabError> {
        let nr_cpus = backend.nr_cpus().max(1);
        let mut kmem = Self {
            backend,
            config,
            nr_cpus,
            table: core::array::from_fn(|_| AtomicPtr::new(ptr::null_mut())),
            generations: core::array::from_fn(|_| AtomicU32::new(0)),
            used: SpinLock::new(0),
            kmalloc: [NonNull::dangling(); 2 * NR_KMALLOC],
        };
        if let Err(e) = kmem.create_kmalloc_caches() {
            // Nothing was handed out yet: give every descriptor back.
            for slot in &kmem.table {
                let c = slot.swap(ptr::null_mut(), Acquire);
                if !c.is_null() {
                    // SAFETY: published by `create`, now unpublished.
                    let (pfn, order) = unsafe { raw::as_ref(c) }.desc;
                    kmem.free_block(pfn, order);
                }
            }
            return Err(e);
        }
        Ok(kmem)
    }

    /// Makes the normal and DMA kmalloc caches, in class order.
    fn create_kmalloc_caches(&mut self) -> Result<(), SlabError> {
        for (i, &size) in KMALLOC_CLASSES.iter().enumerate() {
            let align = if size.is_power_of_two() {
                size.min(PAGE_SIZE)
            } else {
                size & size.wrapping_neg()
            };
            let normal = self.create(
                KMALLOC_NAMES[i],
                size,
                align,
                SlabFlags::empty(),
                None,
                true,
            )?;
            let dma = self.create(
                DMA_KMALLOC_NAMES[i],
                size,
                align,
                SlabFlags::CACHE_DMA,
                None,
                true,
            )?;
            self.kmalloc[i] = NonNull::from(self.cache_at(normal).ok_or(SlabError::NoSuchCache)?);
            self.kmalloc[NR_KMALLOC + i] =
                NonNull::from(self.cache_at(dma).ok_or(SlabError::NoSuchCache)?);
        }
        Ok(())
    }

    /// The page source.
    pub fn backend(&self) -> &B {
        &self.backend
    }

    /// The kmalloc cache of class `class` (DMA variant if `dma`).
    #[inline]
    pub(crate) fn kmalloc_cache(&self, class: usize, dma: bool) -> &KmemCache {
        let i = class + if dma { NR_KMALLOC } else { 0 };
        // SAFETY: kmalloc caches are made in `new` and never destroyed.
        unsafe { self.kmalloc[i].as_ref() }
    }

    /// The machine address of a pointer (for reports).
    #[inline]
    pub(crate) fn virt(&self, p: *const u8) -> VirtAddr {
        self.backend.ptr_to_virt(p)
    }

    /// The live cache in table slot `index`.
    #[inline]
    pub(crate) fn cache_at(&self, index: usize) -> Option<&KmemCache> {
        let p = self.table.get(index)?.load(Acquire);
        // SAFETY: a published descriptor stays valid until destroy, which
        // the caller must not race with uses of the same cache (as in Linux).
        (!p.is_null()).then(|| unsafe { raw::as_ref(p) })
    }

    /// The live cache a handle names.
    pub(crate) fn cache(&self, id: CacheId) -> Result<&KmemCache, SlabError> {
        let i = usize::from(id.index);
        if self.generations.get(i).map(|g| g.load(Acquire)) != Some(id.generation) {
            return Err(SlabError::NoSuchCache);
        }
        self.cache_at(i).ok_or(SlabError::NoSuchCache)
    }

    /// The handle of the cache in slot `index`.
    pub(crate) fn id_of(&self, index: usize) -> CacheId {
        CacheId {
            index: index as u16,
            generation: self.generations[index].load(Acquire),
        }
    }

    /// Every live cache, in table order.
    pub(crate) fn caches(&self) -> impl Iterator<Item = &KmemCache> {
        (0..MAX_CACHES).filter_map(move |i| self.cache_at(i))
    }

    /// Creates a cache (Linux `kmem_cache_create`): objects of `size`
    /// bytes aligned to `align` (0 for the default word alignment), built
    /// by `ctor` once per object when a slab is populated.
    pub fn kmem_cache_create(
        &self,
        name: &'static str,
        size: usize,
        align: usize,
        flags: SlabFlags,
        ctor: Option<Ctor>,
    ) -> Result<CacheId, SlabError> {
        let index = self.create(name, size, align.max(1), flags, ctor, false)?;
        Ok(self.id_of(index))
    }

    fn create(
        &self,
        name: &'static str,
        size: usize,
        align: usize,
        flags: SlabFlags,
        ctor: Option<Ctor>,
        track_request: bool,
    ) -> Result<usize, SlabError> {
        let flags = flags | self.config.slub_debug;
        let geo = Geometry::new(size, align, flags, ctor.is_some(), track_request)?;
        let index = {
            let mut used = self.used.lock();
            let free = (!*used).trailing_zeros() as usize;
            if free >= MAX_CACHES {
                return Err(SlabError::TooManyCaches { max: MAX_CACHES });
            }
            *used |= 1 << free;
            free
        };
        let release = |e| {
            *self.used.lock() &= !(1u64 << index);
            e
        };
        let arrays_at = size_of::<KmemCache>().next_multiple_of(64);
        let bytes = arrays_at + self.nr_cpus * size_of::<CpuArray>();
        let order = get_order(bytes).map_err(|e| release(e.into()))?;
        let (pfn, base) = self.alloc_block(GFP_KERNEL, order).map_err(release)?;
        let cpus = base.wrapping_add(arrays_at).cast::<CpuArray>();
        let (limit, batch) = tunables(geo.stride);
        let gfp = if flags.contains(SlabFlags::CACHE_DMA) {
            GfpFlags::DMA
        } else {
            GfpFlags::empty()
        } | if flags.contains(SlabFlags::RECLAIM_ACCOUNT) {
            GfpFlags::RECLAIMABLE
        } else {
            GfpFlags::empty()
        };
        let cache = KmemCache {
            name,
            index,
            flags,
            geo,
            ctor,
            gfp,
            limit,
            batch,
            fp: FreePtr {
                secret: secret(self.config.seed, index, base as usize),
                offset: geo.fp_offset,
            },
            debug: flags.intersects(SlabFlags::DEBUG),
            node: SpinLock::new(Node::new()),
            quarantined: AtomicUsize::new(0),
            errors: AtomicUsize::new(0),
            last_report: SpinLock::new(None),
            cpus,
            nr_cpus: self.nr_cpus,
            desc: (pfn, order),
        };
        // SAFETY: the block is fresh, unshared, and `bytes` long: the
        // descriptor at its start, `nr_cpus` arrays from `arrays_at`, both
        // suitably aligned (page start, 64-byte offset).
        unsafe {
            raw::write(base.cast::<KmemCache>(), cache);
            for cpu in 0..self.nr_cpus {
                raw::write(cpus.add(cpu), CpuArray::new());
            }
        }
        self.table[index].store(base.cast(), Release);
        Ok(index)
    }

    /// Destroys a cache (Linux `kmem_cache_destroy`): refused while objects
    /// are allocated; otherwise every slab and the descriptor go back to
    /// the page allocator. Must not race with other uses of the cache.
    pub fn kmem_cache_destroy(&self, id: CacheId) -> Result<(), SlabError> {
        let c = self.cache(id)?;
        if c.index < 2 * NR_KMALLOC {
            return Err(SlabError::NoSuchCache);
        }
        self.shrink_cache(c);
        {
            let node = c.node.lock();
            let live = c.live_objects(&node);
            if live > 0 {
                return Err(SlabError::CacheBusy {
                    cache: c.name,
                    live,
                });
            }
            let cached = c.cached_objects();
            if cached > 0 {
                return Err(SlabError::CachedElsewhere {
                    cache: c.name,
                    objects: cached,
                });
            }
        }
        self.generations[c.index].fetch_add(1, Release);
        self.table[c.index].store(ptr::null_mut(), Release);
        loop {
            let slab = {
                let mut node = c.node.lock();
                let Some(s) = node.any_slab() else { break };
                let p = NonNull::from(s);
                // SAFETY: a listed slab, live under the lock.
                node.remove_slab(unsafe { p.as_ref() });
                p
            };
            // SAFETY: unlinked above; ours alone.
            self.discard(c, unsafe { slab.as_ref() });
        }
        let (pfn, order, index) = (c.desc.0, c.desc.1, c.index);
        self.free_block(pfn, order);
        *self.used.lock() &= !(1u64 << index);
        Ok(())
    }

    /// Allocates `2^order` frames and returns them with their address.
    pub(crate) fn alloc_block(
        &self,
        gfp: GfpFlags,
        order: Order,
    ) -> Result<(Pfn, *mut u8), SlabError> {
        if gfp.contains(GfpFlags::HIGHMEM) {
            return Err(SlabError::InvalidGfp { gfp });
        }
        let pfn = self.backend.alloc_frames(gfp & !GfpFlags::ZERO, order)?;
        match self.backend.pfn_to_ptr(pfn) {
            Some(p) => Ok((pfn, p.as_ptr())),
            None => {
                self.free_block(pfn, order);
                Err(SlabError::InvalidGfp { gfp })
            }
        }
    }

    /// Returns a block to the page allocator. A refusal would mean the
    /// page source lost track of a block it gave us; nothing can be undone
    /// then, so it is only asserted in debug builds.
    pub(crate) fn free_block(&self, pfn: Pfn, order: Order) {
        let freed = self.backend.free_frames(pfn, order);
        debug_assert!(
            freed.is_ok(),
            "page source refused {pfn} {order}: {freed:?}"
        );
    }

    /// Points every frame of a slab at its header.
    pub(crate) fn set_slab_owner(
        &self,
        pfn: Pfn,
        order: Order,
        slab: &SlabHeader,
    ) -> Result<(), SlabError> {
        let word = self.virt(ptr::from_ref(slab).cast()).as_usize() | TAG_SLAB;
        for k in 0..order.pages() {
            self.backend.set_owner(pfn.add(k), word)?;
        }
        Ok(())
    }

    /// Marks the frames of a large kmalloc.
    pub(crate) fn set_large_owner(&self, pfn: Pfn, order: Order) -> Result<(), SlabError> {
        self.backend
            .set_owner(pfn, (order.as_usize() << 3) | TAG_LARGE)?;
        for k in 1..order.pages() {
            self.backend.set_owner(pfn.add(k), (k << 3) | TAG_TAIL)?;
        }
        Ok(())
    }

    /// Finds who owns `p`, in O(1) through its frame's owner word.
    #[inline(always)]
    pub(crate) fn find(&self, p: *const u8) -> Result<Owned<'_>, SlabError> {
        let invalid = SlabError::InvalidPointer { addr: self.virt(p) };
        let pfn = self.backend.ptr_to_pfn(p).ok_or(invalid)?;
        let word = self.backend.owner(pfn).ok_or(invalid)?;
        match word & TAG_MASK {
            TAG_SLAB => {
                let header = self.backend.virt_to_ptr(VirtAddr::new(word & !TAG_MASK));
                // SAFETY: slab-tagged owner words are written only by
                // `set_slab_owner`, for slabs live until their frames are
                // freed (which forgets the word).
                let slab = unsafe { SlabHeader::from_ptr(header.cast_const().cast()) };
                // SAFETY: a live slab's cache outlives it (destroy frees
                // every slab before the descriptor).
                let cache = unsafe { raw::as_ref(slab.owner) };
                let offset = (p as usize)
                    .checked_sub(slab.s_mem as usize)
                    .ok_or(invalid)?;
                if offset >= cache.geo.span {
                    return Err(invalid);
                }
                match cache.geo.index_of(offset) {
                    Ok(index) => Ok(Owned::Slab { cache, slab, index }),
                    Err(into) => Err(SlabError::NotObjectStart {
                        cache: cache.name,
                        addr: self.virt(p),
                        offset: into,
                    }),
                }
            }
            TAG_LARGE if self.virt(p).page_offset() == 0 => Ok(Owned::Large {
                pfn,
                order: Order::new((word >> 3) as u32).map_err(|_| invalid)?,
            }),
            _ => Err(invalid),
        }
    }

    /// The slab and index of an object known to be a slab object.
    pub(crate) fn slab_index(&self, p: *const u8) -> Option<(&SlabHeader, usize)> {
        match self.find(p) {
            Ok(Owned::Slab { slab, index, .. }) => Some((slab, index)),
            _ => None,
        }
    }

    /// The handle of the cache owning `p`.
    pub fn kmem_cache_of(&self, p: *const u8) -> Result<CacheId, SlabError> {
        match self.find(p)? {
            Owned::Slab { cache, .. } => Ok(self.id_of(cache.index)),
            Owned::Large { .. } => Err(SlabError::InvalidPointer { addr: self.virt(p) }),
        }
    }
}

/// Per-CPU array limit and batch by object size (SLAB's `enable_cpucache`).
fn tunables(stride: usize) -> (usize, usize) {
    let limit = match stride {
        s if s > PAGE_SIZE => 8,
        s if s > 1024 => 24,
        s if s > 256 => 54,
        _ => crate::cpu::CPU_ARRAY_CAP,
    }
    .min(crate::cpu::CPU_ARRAY_CAP);
    (limit, limit.div_ceil(2))
}

/// A per-cache secret from the boot seed (splitmix64 finaliser).
fn secret(seed: u64, index: usize, salt: usize) -> usize {
    let mut z = seed ^ (index as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ salt as u64;
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    (z ^ (z >> 31)) as usize | 1
}
