//! The allocator value: the cache table, the page source it draws on, and
//! the bridge between objects and page frames (owner words).
//!
//! Owner words (one per frame, `kmm_api::PageOwner`), with the tags
//! `kmm_api` allocates to the slab layer:
//!
//! | tag | frame | payload |
//! |---|---|---|
//! | `Slab` | any page of a slab | the slab header's direct-map address |
//! | `LargeKmalloc` | first page of a large kmalloc | its order, shifted by 3 |
//! | `LargeKmallocTail` | other page of a large kmalloc | page index, shifted by 3 |
//! | `SlabCache` | a page of a cache descriptor and its per-CPU arrays | none |
//!
//! The words are written (through the `unsafe` `set_owner`) only here, for
//! frames this allocator just took, and cleared before the frames go back;
//! a `Slab` word is still verified when read: the header it names must
//! carry this allocator's magic for that address before anything else in
//! it is trusted.
//!
//! Cache-table lock (`used`): held by create and destroy to claim and
//! release slots, and by every walk over the caches (shrink, drain,
//! reports, the checker) for the walk's length, so destroy can never free
//! a descriptor a walk is reading. Never taken by alloc or free, never held
//! across a page *allocation* (walks only free pages), and taken before any
//! node lock.

use crate::{
    cache::{Ctor, KmemCache},
    cpu::CpuArray,
    error::SlabError,
    fine::{fine_index, fine_size, is_kmalloc_class, FINE_MIN, FINE_NAMES, NR_FINE},
    flags::SlabFlags,
    freelist::FreePtr,
    geometry::Geometry,
    kmalloc::{
        kmalloc_index, DMA_KMALLOC_NAMES, KMALLOC_CLASSES, KMALLOC_MAX_CACHE_SIZE, KMALLOC_NAMES,
        NR_KMALLOC,
    },
    node::LockedNode,
    raw,
    slab::SlabHeader,
};
use core::{
    mem::size_of,
    ptr::{self, NonNull},
};
use kmm_api::{
    get_order,
    sync::{
        AtomicPtr, AtomicU32, AtomicUsize,
        Ordering::{Acquire, Relaxed, Release},
        SpinLock, SpinLockGuard,
    },
    AllocatorId, DirectMap, FrameAllocator, GfpFlags, ObjectSource, Order, OwnerTag, OwnerWord,
    PageOwner, Pages, Pfn, PreemptControl, VirtAddr, GFP_KERNEL, PAGE_SIZE,
};

/// Everything the slab layer needs from below: frames, their direct-map
/// addresses, one owner word per frame, and CPU pinning. All four are
/// `unsafe` traits: the slab dereferences what they answer.
pub trait SlabBackend: FrameAllocator + DirectMap + PageOwner + PreemptControl {}

impl<T: FrameAllocator + DirectMap + PageOwner + PreemptControl> SlabBackend for T {}

/// Caches the table can hold (kmalloc's 26 included).
pub const MAX_CACHES: usize = 64;

/// Boot-time settings.
#[derive(Clone, Copy, Debug, Default)]
pub struct KmemConfig {
    /// Debug flags added to every cache, kmalloc's included (the kernel's
    /// `slub_debug=` switch).
    pub slub_debug: SlabFlags,
    /// Entropy for the per-cache free-pointer secrets.
    pub seed: u64,
    /// Also make the fifteen caches between kmalloc's powers of two above
    /// 256 bytes (`kmalloc-fine-320` … `kmalloc-fine-7168`) that
    /// [`crate::KmallocGlobal`] serves from, so a Rust program's objects
    /// are rounded up by at most a fifth rather than up to half. Off by
    /// default: kmalloc itself keeps Linux's classes.
    pub fine_classes: bool,
}

/// A handle on a cache made by [`Kmem::kmem_cache_create`]. It names its
/// allocator: a handle of a destroyed cache, or of another allocator's
/// cache, is refused with [`SlabError::NoSuchCache`].
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub struct CacheId {
    kmem: AllocatorId,
    index: u16,
    generation: u32,
}

/// What owns an allocation (see [`Kmem::kmem_cache_of`]).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum ObjectOwner {
    /// An object of this cache (a kmalloc class or a `kmem_cache_create`d one).
    Cache(CacheId),
    /// A large kmalloc: a page block of this order, straight from the page
    /// allocator.
    Large {
        /// The block's order.
        order: kmm_api::Order,
    },
}

impl ObjectOwner {
    /// The cache, for a slab object.
    pub fn cache(self) -> Option<CacheId> {
        match self {
            ObjectOwner::Cache(id) => Some(id),
            ObjectOwner::Large { .. } => None,
        }
    }
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
    /// This allocator's identity, carried by every [`CacheId`] it makes.
    id: AllocatorId,
    /// XORed with a slab header's address into its magic.
    cookie: usize,
    table: [AtomicPtr<KmemCache>; MAX_CACHES],
    generations: [AtomicU32; MAX_CACHES],
    used: SpinLock<u64>,
    kmalloc: [NonNull<KmemCache>; 2 * NR_KMALLOC],
    /// The caches of the fine classes (kmalloc's own at the powers of
    /// two), if `KmemConfig::fine_classes` asked for them.
    fine: Option<[NonNull<KmemCache>; NR_FINE]>,
    /// Frees of the allocator's own memory that were refused (by the page
    /// source, which lost track of a block we held, or by our own checks):
    /// nothing can be undone then, so they are counted, never panicked on.
    internal_errors: AtomicUsize,
    /// Pages of live large kmallocs (Linux counts them as unreclaimable
    /// slab). A shared counter, but only on paths that allocate or free
    /// pages anyway.
    pub(crate) large_kmalloc_pages: AtomicUsize,
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
    ///
    /// Errors: [`SlabError::Page`] when the page source cannot provide the
    /// caches' descriptors (everything taken is given back), or when the
    /// platform declares so many CPUs that their arrays cannot be sized.
    pub fn new(backend: B, config: KmemConfig) -> Result<Self, SlabError> {
        let nr_cpus = backend.nr_cpus().max(1);
        let id = AllocatorId::new().ok_or(SlabError::Page(kmm_api::Error::IdsExhausted))?;
        let mut kmem = Self {
            backend,
            config,
            nr_cpus,
            id,
            cookie: secret(config.seed, usize::MAX, id.as_u32() as usize),
            table: core::array::from_fn(|_| AtomicPtr::new(ptr::null_mut())),
            generations: core::array::from_fn(|_| AtomicU32::new(0)),
            used: SpinLock::new(0),
            kmalloc: [NonNull::dangling(); 2 * NR_KMALLOC],
            fine: None,
            internal_errors: AtomicUsize::new(0),
            large_kmalloc_pages: AtomicUsize::new(0),
        };
        let made = kmem.create_kmalloc_caches();
        if let Err(e) = made.and_then(|()| kmem.create_fine_caches()) {
            // Nothing was handed out yet: give every descriptor back.
            for slot in &kmem.table {
                let c = slot.swap(ptr::null_mut(), Acquire);
                if !c.is_null() {
                    // SAFETY: published by `create`, now unpublished.
                    let (pfn, order) = unsafe { raw::as_ref(c) }.desc;
                    kmem.free_owned_block(pfn, order);
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

    /// Makes the fine classes' own caches if the configuration asks (see
    /// [`crate::fine`]); after the kmalloc caches, whose powers of two it
    /// shares.
    fn create_fine_caches(&mut self) -> Result<(), SlabError> {
        if !self.config.fine_classes {
            return Ok(());
        }
        let mut fine = [NonNull::dangling(); NR_FINE];
        for (i, cache) in fine.iter_mut().enumerate() {
            let size = fine_size(i);
            *cache = if is_kmalloc_class(i) {
                self.kmalloc[kmalloc_index(size)]
            } else {
                let align = size & size.wrapping_neg();
                let index =
                    self.create(FINE_NAMES[i], size, align, SlabFlags::empty(), None, true)?;
                NonNull::from(self.cache_at(index).ok_or(SlabError::NoSuchCache)?)
            };
        }
        self.fine = Some(fine);
        Ok(())
    }

    /// The fine class's cache for a request of `size` bytes aligned to
    /// `align`: `None` where kmalloc's classes serve (up to 256 bytes,
    /// above `KMALLOC_MAX_CACHE_SIZE`, no fine classes configured, or an
    /// alignment the class's objects do not have).
    #[inline]
    pub(crate) fn fine_cache(&self, size: usize, align: usize) -> Option<&KmemCache> {
        if size <= FINE_MIN || size > KMALLOC_MAX_CACHE_SIZE || !align.is_power_of_two() {
            return None;
        }
        let fine = self.fine.as_ref()?;
        let i = fine_index(size);
        // SAFETY: the fine caches, kmalloc's included, are made in `new`
        // and never destroyed.
        (fine_size(i) & (align - 1) == 0).then(|| unsafe { fine[i].as_ref() })
    }

    /// The page source.
    pub fn backend(&self) -> &B {
        &self.backend
    }

    /// CPUs with per-CPU arrays (the platform's `nr_cpus` at creation).
    pub(crate) fn nr_cpus(&self) -> usize {
        self.nr_cpus
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
        // SAFETY: a published descriptor stays valid until destroy, whose
        // caller promises no use of that cache races it; walks over the
        // table hold the table lock, which destroy takes to unpublish.
        (!p.is_null()).then(|| unsafe { raw::as_ref(p) })
    }

    /// The live cache a handle names; another allocator's handle, or one
    /// of a destroyed cache, is refused.
    #[inline]
    pub(crate) fn cache(&self, id: CacheId) -> Result<&KmemCache, SlabError> {
        let i = usize::from(id.index);
        if id.kmem != self.id
            || self.generations.get(i).map(|g| g.load(Acquire)) != Some(id.generation)
        {
            return Err(SlabError::NoSuchCache);
        }
        self.cache_at(i).ok_or(SlabError::NoSuchCache)
    }

    /// The handle of the cache in slot `index`.
    pub(crate) fn id_of(&self, index: usize) -> CacheId {
        CacheId {
            kmem: self.id,
            index: index as u16,
            generation: self.generations[index].load(Acquire),
        }
    }

    /// The table lock, for walks that need it across several steps.
    pub(crate) fn lock_table(&self) -> SpinLockGuard<'_, u64> {
        self.used.lock()
    }

    /// Every live cache, in table order; the caller holds the table lock.
    pub(crate) fn caches<'t>(
        &'t self,
        _table: &'t SpinLockGuard<'_, u64>,
    ) -> impl Iterator<Item = &'t KmemCache> {
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
        let too_many_cpus = SlabError::Page(kmm_api::Error::BadCpuCount {
            nr_cpus: self.nr_cpus,
            max: usize::MAX,
        });
        let bytes = self
            .nr_cpus
            .checked_mul(size_of::<CpuArray>())
            .and_then(|arrays| arrays.checked_add(arrays_at))
            .ok_or(too_many_cpus)
            .map_err(release)?;
        let order = get_order(bytes).map_err(|e| release(e.into()))?;
        let (pfn, base) = self.alloc_block(GFP_KERNEL, order).map_err(release)?;
        let claimed = self.set_block_owner(pfn, order, |_| {
            OwnerWord::new(OwnerTag::SlabCache, 0).unwrap_or(OwnerWord::NONE)
        });
        if let Err(e) = claimed {
            self.free_owned_block(pfn, order);
            return Err(release(e));
        }
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
                secret: secret(self.config.seed, index, base as usize ^ self.cookie),
                offset: geo.fp_offset,
            },
            debug: flags.intersects(SlabFlags::DEBUG),
            node: LockedNode::new(),
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

    /// Destroys a cache (Linux `kmem_cache_destroy`): every CPU's cached
    /// objects of it are drained first; refused while objects are
    /// allocated (or cached on a CPU the platform cannot reach); otherwise
    /// every slab and the descriptor go back to the page allocator, and
    /// the handle (and every copy of it) is refused from then on.
    ///
    /// # Safety
    ///
    /// No other use of this cache may run during the call: no allocation
    /// or free of its objects, and no other call naming its handle (as in
    /// Linux, the caller has quiesced its users). Walks over all caches
    /// (shrinkers, reports, the checker) may run; they are excluded by the
    /// table lock.
    pub unsafe fn kmem_cache_destroy(&self, id: CacheId) -> Result<(), SlabError> {
        let c = self.cache(id)?;
        if c.index < 2 * NR_KMALLOC {
            return Err(SlabError::NoSuchCache);
        }
        self.flush_all_cpus(c);
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
        let index = c.index;
        {
            // Unpublished under the table lock: once it is dropped, no walk
            // can still be reading the descriptor.
            let _table = self.used.lock();
            self.generations[index].fetch_add(1, Release);
            self.table[index].store(ptr::null_mut(), Release);
        }
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
            unsafe { self.discard(c, slab) };
        }
        let (pfn, order) = c.desc;
        self.free_owned_block(pfn, order);
        *self.used.lock() &= !(1u64 << index);
        Ok(())
    }

    /// Allocates `2^order` frames and returns them with their address; the
    /// block is held by this allocator as a raw frame from here on.
    pub(crate) fn alloc_block(
        &self,
        gfp: GfpFlags,
        order: Order,
    ) -> Result<(Pfn, *mut u8), SlabError> {
        if gfp.contains(GfpFlags::HIGHMEM) {
            return Err(SlabError::InvalidGfp { gfp });
        }
        let pages = self.backend.alloc_frames(gfp & !GfpFlags::ZERO, order)?;
        match self.backend.pfn_to_ptr(pages.pfn()) {
            Some(p) => Ok((pages.into_raw().0, p.as_ptr())),
            None => {
                self.give_back(pages);
                Err(SlabError::InvalidGfp { gfp })
            }
        }
    }

    /// Returns a block taken by `alloc_block` whose owner words are clear.
    pub(crate) fn free_block(&self, pfn: Pfn, order: Order) {
        // SAFETY: the block is one `alloc_block` took and this allocator
        // still holds (callers free each block once).
        let pages = unsafe { Pages::from_raw(pfn, order, self.backend.allocator_id()) };
        self.give_back(pages);
    }

    /// Frees a block; a refusal would mean the page source lost track of a
    /// block it gave us, and is counted (never a panic: this runs inside
    /// `GlobalAlloc::dealloc`).
    fn give_back(&self, pages: Pages) {
        if self.backend.free_frames(pages).is_err() {
            self.note_internal_error();
        }
    }

    /// Counts a refused free of the allocator's own memory.
    #[cold]
    pub(crate) fn note_internal_error(&self) {
        self.internal_errors.fetch_add(1, Relaxed);
    }

    /// Frees of the allocator's own memory refused since boot: always 0
    /// unless the page source misbehaves or the allocator has a bug (the
    /// model tests assert it).
    pub fn internal_errors(&self) -> usize {
        self.internal_errors.load(Relaxed)
    }

    /// Sets the owner word of every page of a block this allocator holds.
    fn set_block_owner(
        &self,
        pfn: Pfn,
        order: Order,
        word_of: impl Fn(usize) -> OwnerWord,
    ) -> Result<(), SlabError> {
        for k in 0..order.pages() {
            // SAFETY: the block is held by this allocator (taken by
            // `alloc_block`, not yet freed). The words are the slab layer's
            // own format, which `find` reads back: a `Slab` word names the
            // header just written for this slab, which stays live until
            // `discard` clears the words.
            unsafe { self.backend.set_owner(pfn.add(k), word_of(k)) }?;
        }
        Ok(())
    }

    /// Clears the owner words of a block this allocator holds, so the page
    /// allocator takes it back.
    fn clear_block_owner(&self, pfn: Pfn, order: Order) {
        for k in 0..order.pages() {
            // SAFETY: the block is held by this allocator; clearing a word
            // is always within the contract for its holder.
            let cleared = unsafe { self.backend.set_owner(pfn.add(k), OwnerWord::NONE) };
            if cleared.is_err() {
                self.note_internal_error();
            }
        }
    }

    /// Points every frame of a slab at its header.
    pub(crate) fn set_slab_owner(
        &self,
        pfn: Pfn,
        order: Order,
        slab: &SlabHeader,
    ) -> Result<(), SlabError> {
        let header = self.virt(ptr::from_ref(slab).cast()).as_usize();
        let word = OwnerWord::new(OwnerTag::Slab, header).ok_or(SlabError::InvalidPointer {
            addr: VirtAddr::new(header),
        })?;
        self.set_block_owner(pfn, order, |_| word)
    }

    /// Marks the frames of a large kmalloc.
    pub(crate) fn set_large_owner(&self, pfn: Pfn, order: Order) -> Result<(), SlabError> {
        self.set_block_owner(pfn, order, |k| match k {
            0 => large_head_word(order),
            // A value shifted by three always has a clear tag field.
            _ => OwnerWord::new(OwnerTag::LargeKmallocTail, k << 3).unwrap_or(OwnerWord::NONE),
        })
    }

    /// Frees a large kmalloc at `p`: its head's owner word goes from "a
    /// large kmalloc of `order`" to none in one compare-and-swap, so of two
    /// frees racing on the block exactly one proceeds and the other is
    /// refused as a double free (before the winner can free the block, and
    /// so before anyone else can be handed it).
    pub(crate) fn free_large(&self, p: *const u8, pfn: Pfn, order: Order) -> Result<(), SlabError> {
        // SAFETY: clearing a word is within the contract for its holder, and
        // the swap succeeds only for the one caller that still holds the
        // block as a large kmalloc.
        let claimed = unsafe {
            self.backend
                .replace_owner(pfn, large_head_word(order), OwnerWord::NONE)
        };
        if claimed != Ok(true) {
            return Err(SlabError::DoubleFree {
                cache: LARGE_KMALLOC,
                addr: self.virt(p),
            });
        }
        self.large_kmalloc_pages.fetch_sub(order.pages(), Relaxed);
        self.free_owned_block(pfn, order);
        Ok(())
    }

    /// Clears a slab's or large kmalloc's owner words and frees its pages.
    pub(crate) fn free_owned_block(&self, pfn: Pfn, order: Order) {
        self.clear_block_owner(pfn, order);
        self.free_block(pfn, order);
    }

    /// The magic a slab header at `header` carries for this allocator.
    #[inline(always)]
    pub(crate) fn header_magic(&self, header: *const SlabHeader) -> usize {
        (header as usize) ^ self.cookie
    }

    /// Finds who owns `p`, in O(1) through its frame's owner word.
    ///
    /// # Safety
    ///
    /// As for [`Kmem::kfree`]: if `p` lies in a slab, that slab is not
    /// discarded while the returned borrow is used.
    #[inline(always)]
    pub(crate) unsafe fn find(&self, p: *const u8) -> Result<Owned<'_>, SlabError> {
        let invalid = SlabError::InvalidPointer { addr: self.virt(p) };
        let pfn = self.backend.ptr_to_pfn(p).ok_or(invalid)?;
        let word = self.backend.owner(pfn).ok_or(invalid)?;
        // The slab case first and alone: every other word is the cold
        // path, so a slab free tests its tag once.
        if word.tag() != Some(OwnerTag::Slab) {
            return self.find_large(p, pfn, word);
        }
        let header: *const SlabHeader = self
            .backend
            .virt_to_ptr(VirtAddr::new(word.payload()))
            .cast_const()
            .cast();
        // SAFETY: `Slab` words are written (under `set_owner`'s contract)
        // only by `set_slab_owner`, naming a header that stays live until
        // `discard` clears the word; the caller keeps the slab from being
        // discarded meanwhile.
        let slab = unsafe { SlabHeader::from_ptr(header) };
        if slab.magic != self.header_magic(header) {
            return Err(invalid);
        }
        // SAFETY: the magic says the header is one of ours, and a live
        // slab's cache outlives it (destroy frees every slab before the
        // descriptor).
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

    /// [`Kmem::find`] for a frame whose owner word is not a slab's: the
    /// head of a large kmalloc, or a pointer no allocation of ours owns.
    #[cold]
    #[inline(never)]
    fn find_large(&self, p: *const u8, pfn: Pfn, word: OwnerWord) -> Result<Owned<'_>, SlabError> {
        let invalid = SlabError::InvalidPointer { addr: self.virt(p) };
        match word.tag() {
            Some(OwnerTag::LargeKmalloc) if self.virt(p).page_offset() == 0 => Ok(Owned::Large {
                pfn,
                order: Order::new((word.payload() >> 3) as u32).map_err(|_| invalid)?,
            }),
            _ => Err(invalid),
        }
    }

    /// The slab and index of an object known to be a slab object.
    ///
    /// # Safety
    ///
    /// As for [`Kmem::find`].
    pub(crate) unsafe fn slab_index(&self, p: *const u8) -> Option<(&SlabHeader, usize)> {
        // SAFETY: forwarded.
        match unsafe { self.find(p) } {
            Ok(Owned::Slab { slab, index, .. }) => Some((slab, index)),
            _ => None,
        }
    }

    /// What owns the allocation at `p` (Linux `virt_to_cache`, which
    /// answers NULL for a large kmalloc; here that case names its order):
    /// the cache of a slab object, or the page block of a large kmalloc.
    /// A pointer no slab or large kmalloc owns is
    /// [`SlabError::InvalidPointer`].
    ///
    /// # Safety
    ///
    /// As for [`Kmem::kfree`] (`p` is not given up here).
    pub unsafe fn kmem_cache_of(&self, p: *const u8) -> Result<ObjectOwner, SlabError> {
        // SAFETY: forwarded from our caller.
        match unsafe { self.find(p) }? {
            Owned::Slab { cache, .. } => Ok(ObjectOwner::Cache(self.id_of(cache.index))),
            Owned::Large { order, .. } => Ok(ObjectOwner::Large { order }),
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

/// What reports and errors call the page blocks of large kmallocs (they
/// have no cache).
pub(crate) const LARGE_KMALLOC: &str = "kmalloc-large";

/// The owner word of a large kmalloc's first frame: its order.
fn large_head_word(order: Order) -> OwnerWord {
    // A value shifted by three always has a clear tag field.
    OwnerWord::new(OwnerTag::LargeKmalloc, order.as_usize() << 3).unwrap_or(OwnerWord::NONE)
}

/// One cache as an [`ObjectSource`]: the fixed-size objects a layer that
/// may not use a heap takes its metadata from (Linux's `vmap_area_cachep`,
/// a `kmem_cache` of `vmap_area`s). Made by [`Kmem::cache_objects`].
pub struct CacheObjects<'k, B: SlabBackend> {
    kmem: &'k Kmem<B>,
    id: CacheId,
    size: usize,
    align: usize,
}

impl<B: SlabBackend> Kmem<B> {
    /// The cache `id` as an object source, for as long as `self` is
    /// borrowed. The cache must outlive the source: destroying it while
    /// the source lives breaks `kmem_cache_destroy`'s contract (nothing
    /// else uses the cache), and the source's allocations then fail.
    pub fn cache_objects(&self, id: CacheId) -> Result<CacheObjects<'_, B>, SlabError> {
        let info = self.kmem_cache_info(id)?;
        Ok(CacheObjects {
            kmem: self,
            id,
            size: info.object_size,
            align: info.align,
        })
    }
}

// SAFETY: objects come from `kmem_cache_alloc` of one cache, whose objects
// are `object_size` bytes at `align` (fixed when the cache was made) and
// are the caller's alone until `kmem_cache_free`; a foreign or repeated
// free is refused by the cache's checks.
unsafe impl<B: SlabBackend> ObjectSource for CacheObjects<'_, B> {
    fn object_size(&self) -> usize {
        self.size
    }

    fn object_align(&self) -> usize {
        self.align
    }

    fn alloc_object(&self, gfp: GfpFlags) -> Result<NonNull<u8>, kmm_api::Error> {
        self.kmem
            .kmem_cache_alloc(self.id, gfp)
            .map_err(|e| match e {
                SlabError::Page(e) => e,
                _ => kmm_api::Error::NoMemory { order: Order::ZERO },
            })
    }

    unsafe fn free_object(&self, obj: NonNull<u8>) -> Result<(), kmm_api::Error> {
        // SAFETY: our caller gives back an object this source handed out.
        unsafe { self.kmem.kmem_cache_free(self.id, obj.as_ptr()) }.map_err(|_| {
            kmm_api::Error::BadVirtAddr {
                addr: self.kmem.virt(obj.as_ptr()),
            }
        })
    }
}
