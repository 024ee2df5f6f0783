//! One object cache (Linux `struct kmem_cache`): its descriptor, and the
//! allocation and free paths that run through the per-CPU array (fast),
//! the node's slabs (refill, flush) and the page allocator (grow, discard).
//!
//! Paths and costs:
//! - alloc fast: pin CPU, pop an entry, mark it allocated: O(1), no lock,
//!   no atomic read-modify-write.
//! - free fast (checked, `kfree`): one compare-and-swap of the state byte
//!   (`Allocated` → `Cached`, so racing double frees are refused), pin
//!   CPU, push: O(1), no lock. The unchecked free (`GlobalAlloc`, whose
//!   caller promises a live pointer) stores the state instead: no atomic
//!   read-modify-write at all.
//! - refill / flush: one node-lock hold for `batch` objects.
//! - grow: one `alloc_frames` plus an O(objects) slab build, CPU unpinned
//!   (the page allocator may sleep).
//! - drain of every CPU (Linux `flush_all`): each CPU's array emptied as
//!   that CPU, through `PreemptControl::on_cpu`.
//! - debug caches (`SLAB_POISON | SLAB_RED_ZONE | SLAB_STORE_USER`) bypass
//!   the per-CPU arrays and run every alloc and free under the node lock.
//!
//! The node lock is never held across a page allocation and the CPU is
//! never pinned across one; a path never pins the CPU twice. Slabs are
//! freed (their pages returned) with no node lock held.

use crate::{
    cpu::{CpuArray, CpuGuard, Entries, Entry, Pinned},
    debug::Corruption,
    error::SlabError,
    flags::SlabFlags,
    freelist::FreePtr,
    geometry::Geometry,
    kmem::{Kmem, Owned, SlabBackend},
    node::{LockedNode, Node, MIN_PARTIAL},
    slab::{ObjState, SlabHeader},
};
use core::{panic::Location, ptr, ptr::NonNull};
use kmm_api::{
    sync::{AtomicU8, AtomicUsize, Ordering::Relaxed, SpinLock},
    GfpFlags, Order, Pfn,
};

/// Whether the fast path keeps the state bytes (the always-on double-free
/// check). Off only in a build with `RUSTFLAGS="--cfg kmm_no_free_checks"`,
/// which exists to measure what the check costs; never ship one.
const FREE_CHECKS: bool = !cfg!(kmm_no_free_checks);

/// An object constructor, run once per object when its slab is populated.
pub type Ctor = fn(NonNull<u8>);

/// A cache descriptor. It lives at the start of a page block taken from the
/// page allocator, followed by one [`CpuArray`] per CPU.
pub(crate) struct KmemCache {
    /// The cache's name (`/proc/slabinfo`).
    pub name: &'static str,
    /// Its slot in the cache table.
    pub index: usize,
    /// Creation flags, including the global debug flags.
    pub flags: SlabFlags,
    /// Object and slab layout.
    pub geo: Geometry,
    /// The constructor, if any.
    pub ctor: Option<Ctor>,
    /// Zone flags for slab pages (`GFP_DMA` for DMA caches).
    pub gfp: GfpFlags,
    /// Per-CPU array limit and refill/flush batch (`/proc/slabinfo` tunables).
    pub limit: usize,
    /// Objects moved per refill or flush.
    pub batch: usize,
    /// Free-pointer codec with the cache's secret.
    pub fp: FreePtr,
    /// Whether the cache runs its debug checks (and skips the fast path).
    pub debug: bool,
    /// The slab lists.
    pub node: LockedNode,
    /// Objects quarantined after a corruption report.
    pub quarantined: AtomicUsize,
    /// Errors counted by debug checks (reports and repairs).
    pub errors: AtomicUsize,
    /// The latest corruption report.
    pub last_report: SpinLock<Option<Corruption>>,
    /// The per-CPU arrays, `nr_cpus` of them.
    pub cpus: *const CpuArray,
    /// Number of per-CPU arrays.
    pub nr_cpus: usize,
    /// The page block holding this descriptor.
    pub desc: (Pfn, Order),
}

// SAFETY: the raw `cpus` pointer names per-CPU arrays owned by this
// descriptor, reached only as the `cpu` module allows.
unsafe impl Sync for KmemCache {}
// SAFETY: as above.
unsafe impl Send for KmemCache {}

/// Empty slabs unlinked from a node under its lock (and with the CPU
/// pinned, for a flush), chained through their `next` links, to be freed
/// once both are released. Every surplus slab goes on it, however many
/// went empty at once.
#[derive(Default)]
pub(crate) struct Discards {
    head: Option<NonNull<SlabHeader>>,
}

impl Discards {
    /// Unlinks every empty slab of `node` beyond the `keep` it holds on to.
    pub(crate) fn take_surplus(node: &mut Node, keep: usize) -> Self {
        let mut out = Self::default();
        while let Some(slab) = node.surplus_empty(keep) {
            let p = NonNull::from(slab);
            // SAFETY: `p` is a listed slab, live under the lock; once
            // unlinked its `next` link is ours to chain with.
            let slab = unsafe { p.as_ref() };
            node.remove_slab(slab);
            let next = out.head.map_or(core::ptr::null_mut(), NonNull::as_ptr);
            slab.next.store(next, Relaxed);
            out.head = Some(p);
        }
        out
    }

    /// The next slab of the chain.
    fn pop(&mut self) -> Option<NonNull<SlabHeader>> {
        let p = self.head?;
        // SAFETY: a chained slab is unlinked, live and ours alone until
        // discarded, which happens only after it leaves the chain.
        self.head = NonNull::new(unsafe { p.as_ref() }.next.load(Relaxed));
        Some(p)
    }
}

impl KmemCache {
    /// The per-CPU array of the pinned CPU.
    #[inline]
    fn cpu_array(&self, pinned: &Pinned) -> &CpuArray {
        // A platform reporting a CPU id past `nr_cpus` broke its contract;
        // clamping keeps the access in bounds.
        let cpu = pinned.cpu().min(self.nr_cpus - 1);
        // SAFETY: `cpus` points at `nr_cpus` initialised arrays living as
        // long as the descriptor; `cpu` is in range.
        unsafe { crate::raw::as_ref(self.cpus.add(cpu)) }
    }

    /// Every CPU's array (for counting; entries are not touched).
    pub fn all_cpu_arrays(&self) -> impl Iterator<Item = &CpuArray> {
        // SAFETY: as in `cpu_array`, for each index below `nr_cpus`.
        (0..self.nr_cpus).map(move |cpu| unsafe { crate::raw::as_ref(self.cpus.add(cpu)) })
    }

    /// Objects held by per-CPU arrays.
    pub fn cached_objects(&self) -> usize {
        self.all_cpu_arrays().map(CpuArray::avail).sum()
    }

    /// Objects handed to users and not yet freed.
    pub fn live_objects(&self, node: &Node) -> usize {
        node.total_objects
            .saturating_sub(node.free_objects)
            .saturating_sub(self.cached_objects())
            .saturating_sub(self.quarantined.load(Relaxed))
    }

    pub(crate) fn record(&self, report: Corruption) {
        *self.last_report.lock() = Some(report);
    }

    /// Takes up to `want` objects off the node's slabs into `out`, marking
    /// them `taken_as` (`Cached` for a CPU's array, `Allocated` for a
    /// caller); returns how many. Each slab is taken from until it runs
    /// out or `want` is met, and moved between lists once.
    #[inline]
    pub(crate) fn take_from_node<B: SlabBackend>(
        &self,
        kmem: &Kmem<B>,
        node: &mut Node,
        want: usize,
        taken_as: ObjState,
        mut out: impl FnMut(*mut u8, &SlabHeader, usize),
    ) -> usize {
        let mut taken = 0;
        while taken < want {
            let Some(slab) = node.slab_with_free() else {
                break;
            };
            let slab: &SlabHeader = {
                let p: *const SlabHeader = slab;
                // SAFETY: listed slabs stay live while the node lock is held.
                unsafe { SlabHeader::from_ptr(p) }
            };
            // Objects off this slab's free list, quarantined ones included.
            let mut popped = 0;
            while taken < want {
                match self.fp.pop(slab, &self.geo) {
                    Ok(Some(index)) => {
                        slab.set_state(index, taken_as);
                        out(slab.object(index, self.geo.stride), slab, index);
                        taken += 1;
                    }
                    Ok(None) => break,
                    Err(index) => {
                        self.quarantined.fetch_add(1, Relaxed);
                        let virt = kmem.virt(slab.object(index, self.geo.stride));
                        self.record(self.free_pointer_corrupt(virt));
                    }
                }
                popped += 1;
            }
            if popped == 0 {
                // A slab listed as having free objects had none: stop
                // rather than pick it again.
                break;
            }
            node.relist(slab, -(popped as isize));
        }
        taken
    }

    /// Puts object `index` of `slab`, which no one else holds, back on its
    /// slab's free list under the node lock.
    #[inline]
    fn return_to_slab(&self, node: &mut Node, slab: &SlabHeader, index: usize) {
        self.fp.push(slab, &self.geo, index);
        node.relist(slab, 1);
    }

    /// Returns the oldest `n` entries of a per-CPU array to their slabs.
    fn flush(&self, e: &mut Entries, avail: &mut usize, n: usize) -> Discards {
        let n = n.min(*avail);
        let mut node = self.node.lock();
        for entry in &e.slots[..n] {
            // SAFETY: an entry's slab is live while the entry exists (a slab
            // with cached objects is never empty, so never discarded).
            let slab = unsafe { SlabHeader::from_ptr(entry.slab) };
            self.return_to_slab(&mut node, slab, slab.index_of_state(entry.state));
        }
        e.slots.copy_within(n..*avail, 0);
        *avail -= n;
        Discards::take_surplus(&mut node, MIN_PARTIAL)
    }
}

/// Whether a free checks that its object is allocated (the `kfree` path)
/// or trusts its caller (`GlobalAlloc::dealloc`, whose caller promises a
/// live pointer).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) enum FreeCheck {
    /// Refuse an object that is not allocated, atomically.
    Checked,
    /// The caller vouches for the object.
    Trusted,
}

impl FreeCheck {
    /// Moves a freed object's state byte from `Allocated` to `Cached` as
    /// this check asks: checked, by compare-and-swap, `false` (nothing
    /// changed) when the object was not allocated; trusted, by a store.
    #[inline(always)]
    fn mark_freed(self, state: &AtomicU8) -> bool {
        match self {
            _ if !FREE_CHECKS => true,
            FreeCheck::Checked => SlabHeader::try_free(state),
            FreeCheck::Trusted => {
                state.store(ObjState::Cached as u8, Relaxed);
                true
            }
        }
    }
}

impl<B: SlabBackend> Kmem<B> {
    /// Allocates one object of `c`: the fast path, inlined into callers.
    #[inline(always)]
    pub(crate) fn cache_alloc(
        &self,
        c: &KmemCache,
        gfp: GfpFlags,
        requested: usize,
        site: &'static Location<'static>,
    ) -> Result<NonNull<u8>, SlabError> {
        if !c.debug && !gfp.contains(GfpFlags::ZERO) {
            let guard = CpuGuard::new(self.backend());
            if let Some(entry) = c.cpu_array(&guard).pop(&guard) {
                drop(guard);
                return Ok(Self::hand_out(entry));
            }
        }
        self.cache_alloc_slow(c, gfp, requested, site)
    }

    /// Fills `out` with objects of `c` (Linux `kmem_cache_alloc_bulk`):
    /// what the CPU's array holds first (the cache-hot objects), under one
    /// pin; then, while more than one is still wanted, a run straight from
    /// the slabs under one node-lock hold; the slow path (which refills
    /// the array, or grows the cache) when the slabs have none. The number
    /// filled, short of `out.len()` only when `c` cannot grow.
    pub(crate) fn cache_alloc_bulk(
        &self,
        c: &KmemCache,
        gfp: GfpFlags,
        out: &mut [*mut u8],
        site: &'static Location<'static>,
    ) -> usize {
        let mut n = 0;
        while n < out.len() {
            if !c.debug && !gfp.contains(GfpFlags::ZERO) {
                let guard = CpuGuard::new(self.backend());
                let array = c.cpu_array(&guard);
                while let Some(slot) = out.get_mut(n) {
                    let Some(entry) = array.pop(&guard) else {
                        break;
                    };
                    *slot = Self::hand_out(entry).as_ptr();
                    n += 1;
                }
                drop(guard);
                // The array is empty and a run is still wanted: take it
                // straight from the slabs under one hold of the node lock,
                // not through the array.
                if out.len() - n > 1 {
                    let mut node = c.node.lock();
                    let want = out.len() - n;
                    let mut slots = out[n..].iter_mut();
                    // As `hand_out` marks them: allocated, where frees check.
                    let taken_as = if FREE_CHECKS {
                        ObjState::Allocated
                    } else {
                        ObjState::Cached
                    };
                    n += c.take_from_node(self, &mut node, want, taken_as, |obj, _, _| {
                        // `take_from_node` gives at most `want`, one per slot.
                        if let Some(slot) = slots.next() {
                            *slot = obj;
                        }
                    });
                }
            }
            let Some(slot) = out.get_mut(n) else {
                break;
            };
            match self.cache_alloc_slow(c, gfp, c.geo.object_size, site) {
                Ok(p) => *slot = p.as_ptr(),
                Err(_) => break,
            }
            n += 1;
        }
        n
    }

    /// Marks a cached entry allocated and returns its object.
    #[inline(always)]
    fn hand_out(entry: Entry) -> NonNull<u8> {
        if FREE_CHECKS {
            // SAFETY: the entry's state pointer names the state byte of its
            // object in a live slab header.
            unsafe { &*entry.state }.store(ObjState::Allocated as u8, Relaxed);
        }
        // SAFETY: entries only ever hold object addresses inside slabs.
        unsafe { NonNull::new_unchecked(entry.obj) }
    }

    /// Allocation when the fast path cannot serve: debug caches, zeroing,
    /// and an empty per-CPU array (refill from the node, or grow).
    #[cold]
    #[inline(never)]
    fn cache_alloc_slow(
        &self,
        c: &KmemCache,
        gfp: GfpFlags,
        requested: usize,
        site: &'static Location<'static>,
    ) -> Result<NonNull<u8>, SlabError> {
        let obj = if c.debug {
            self.debug_alloc(c, gfp, requested, site)?
        } else {
            loop {
                let got = {
                    let guard = CpuGuard::new(self.backend());
                    let array = c.cpu_array(&guard);
                    if array.avail() == 0 {
                        array.with(&guard, |e, avail| {
                            let mut node = c.node.lock();
                            let mut n = 0;
                            let cached = ObjState::Cached;
                            c.take_from_node(self, &mut node, c.batch, cached, |obj, slab, i| {
                                e.slots[n] = Entry::new(slab, i, obj);
                                n += 1;
                            });
                            *avail = n;
                        });
                    }
                    array.pop(&guard)
                };
                match got {
                    Some(entry) => break Self::hand_out(entry).as_ptr(),
                    None => self.grow(c, gfp)?,
                }
            }
        };
        if gfp.contains(GfpFlags::ZERO) {
            // SAFETY: `obj` is a freshly allocated object of `object_size` bytes.
            unsafe { crate::raw::fill(obj, 0, c.geo.object_size) };
        }
        NonNull::new(obj).ok_or(SlabError::Page(kmm_api::Error::NoMemory {
            order: c.geo.order,
        }))
    }

    /// Frees object `index` of `slab`, which the caller found through the
    /// object's page owner word and checked to belong to `c`.
    #[inline(always)]
    pub(crate) fn cache_free(
        &self,
        c: &KmemCache,
        slab: &SlabHeader,
        index: usize,
        check: FreeCheck,
        site: &'static Location<'static>,
    ) -> Result<(), SlabError> {
        if c.debug {
            return self.debug_free(c, slab, index, site);
        }
        let state = &slab.states()[index];
        if !check.mark_freed(state) {
            return Err(self.not_allocated(c, slab, index));
        }
        let entry = Entry {
            obj: slab.object(index, c.geo.stride),
            state,
            slab,
        };
        let pushed = {
            let guard = CpuGuard::new(self.backend());
            c.cpu_array(&guard).push(&guard, entry, c.limit)
        };
        match pushed {
            Ok(()) => Ok(()),
            Err(entry) => {
                self.cache_free_flush(c, entry);
                Ok(())
            }
        }
    }

    /// Frees `ptrs` as `free_ptr` would with `check`, one at a time, with
    /// the CPU pinned once per run of frees its arrays absorb (Linux
    /// `kfree_bulk`). An object its array has no room for goes on, with
    /// the objects of its cache after it, straight to the slabs
    /// ([`Kmem::free_run_to_node`]); one that needs more (a debug cache, a
    /// large kmalloc, a refusal) takes the ordinary path with nothing
    /// pinned. The number refused.
    ///
    /// # Safety
    ///
    /// The pointer contract of [`Kmem::kfree`] for each pointer, and with
    /// `FreeCheck::Trusted` that of `Kmem::kfree_trusted`.
    pub(crate) unsafe fn free_bulk(
        &self,
        ptrs: &[*mut u8],
        check: FreeCheck,
        site: &'static Location<'static>,
    ) -> usize {
        /// What ended a run.
        enum Spill<'a> {
            /// An object its cache's array had no room for, already marked
            /// freed.
            Full(&'a KmemCache, Entry),
            /// A pointer for the ordinary free.
            Ptr(*mut u8),
        }
        let (mut rest, mut refused) = (ptrs, 0);
        loop {
            let spill = {
                let guard = CpuGuard::new(self.backend());
                loop {
                    let Some((&p, tail)) = rest.split_first() else {
                        break None;
                    };
                    rest = tail;
                    // SAFETY: forwarded from our caller.
                    let Ok(Owned::Slab { cache, slab, index }) = (unsafe { self.find(p) }) else {
                        break Some(Spill::Ptr(p));
                    };
                    let state = &slab.states()[index];
                    if cache.debug || !check.mark_freed(state) {
                        break Some(Spill::Ptr(p));
                    }
                    let entry = Entry {
                        obj: slab.object(index, cache.geo.stride),
                        state,
                        slab,
                    };
                    if let Err(entry) = cache.cpu_array(&guard).push(&guard, entry, cache.limit) {
                        break Some(Spill::Full(cache, entry));
                    }
                }
            };
            match spill {
                None => return refused,
                Some(Spill::Full(cache, entry)) => {
                    // SAFETY: forwarded from our caller.
                    unsafe { self.free_run_to_node(cache, entry, &mut rest, check) }
                }
                Some(Spill::Ptr(p)) => {
                    // SAFETY: forwarded from our caller; the run left `p`
                    // as it was.
                    if unsafe { self.free_ptr(p, check, site) }.is_err() {
                        refused += 1;
                    }
                }
            }
        }
    }

    /// The rest of a bulk free whose CPU array is full: `entry`, and the
    /// pointers after it in `rest` while they are objects of `c` it may
    /// free, go straight back to their slabs under one hold of the node
    /// lock, while their headers are still in the CPU's cache, rather than
    /// pushing out the array's oldest entries, whose headers have gone
    /// cold. `rest` is left at the first pointer the run stopped before.
    ///
    /// # Safety
    ///
    /// As for `free_bulk`, for each pointer of `rest`.
    #[cold]
    #[inline(never)]
    unsafe fn free_run_to_node(
        &self,
        c: &KmemCache,
        entry: Entry,
        rest: &mut &[*mut u8],
        check: FreeCheck,
    ) {
        let discards = {
            let mut node = c.node.lock();
            // SAFETY: an entry's slab is live while the entry exists.
            let slab = unsafe { SlabHeader::from_ptr(entry.slab) };
            c.return_to_slab(&mut node, slab, slab.index_of_state(entry.state));
            while let Some((&p, tail)) = rest.split_first() {
                // SAFETY: forwarded from our caller.
                let Ok(Owned::Slab { cache, slab, index }) = (unsafe { self.find(p) }) else {
                    break;
                };
                if !ptr::eq(cache, c) || !check.mark_freed(&slab.states()[index]) {
                    break;
                }
                *rest = tail;
                c.return_to_slab(&mut node, slab, index);
            }
            Discards::take_surplus(&mut node, MIN_PARTIAL)
        };
        self.discard_all(c, discards);
    }

    /// Why object `index` cannot be freed by a caller: already free, or
    /// the allocator's own.
    #[cold]
    pub(crate) fn not_allocated(
        &self,
        c: &KmemCache,
        slab: &SlabHeader,
        index: usize,
    ) -> SlabError {
        let addr = self.virt(slab.object(index, c.geo.stride));
        match slab.state(index) {
            ObjState::Internal => SlabError::InvalidPointer { addr },
            _ => SlabError::DoubleFree {
                cache: c.name,
                addr,
            },
        }
    }

    /// Free when this CPU's array is full: flush its older half to the
    /// node, push, and return surplus empty slabs to the page allocator.
    #[cold]
    #[inline(never)]
    fn cache_free_flush(&self, c: &KmemCache, entry: Entry) {
        let discards = {
            let guard = CpuGuard::new(self.backend());
            c.cpu_array(&guard).with(&guard, |e, avail| {
                let discards = if *avail >= c.limit {
                    c.flush(e, avail, c.batch)
                } else {
                    Discards::default()
                };
                e.slots[*avail] = entry;
                *avail += 1;
                discards
            })
        };
        self.discard_all(c, discards);
    }

    /// Puts object `index` of `slab` straight back on its slab's free list
    /// under the node lock, after `release` (run under the lock) has
    /// checked and prepared it; returns a surplus empty slab to the page
    /// allocator afterwards. The path of debug caches, and of the
    /// allocator's own objects, which must not refill a CPU's array.
    pub(crate) fn free_to_node(
        &self,
        c: &KmemCache,
        slab: &SlabHeader,
        index: usize,
        release: impl FnOnce() -> Result<(), SlabError>,
    ) -> Result<(), SlabError> {
        let discards = {
            let mut node = c.node.lock();
            release()?;
            c.return_to_slab(&mut node, slab, index);
            Discards::take_surplus(&mut node, MIN_PARTIAL)
        };
        self.discard_all(c, discards);
        Ok(())
    }

    /// Builds a new slab for `c` with the CPU unpinned and no lock held.
    pub(crate) fn grow(&self, c: &KmemCache, gfp: GfpFlags) -> Result<(), SlabError> {
        let action = gfp & !(GfpFlags::ZONE_MASK | GfpFlags::ZERO);
        let g = &c.geo;
        let (pfn, base) = self.alloc_block(c.gfp | action, g.order)?;
        let header: *mut SlabHeader = if g.off_slab {
            match self.kmalloc_internal(g.header_bytes, action) {
                Ok(h) => h.as_ptr().cast(),
                Err(e) => {
                    self.free_block(pfn, g.order);
                    return Err(e);
                }
            }
        } else {
            base.cast()
        };
        let s_mem = base.wrapping_add(g.s_mem_offset);
        // SAFETY: `header` is either the slab's first page (on-slab: the
        // geometry reserved `header_bytes` before `s_mem`) or a fresh
        // kmalloc object of `header_bytes`; both word aligned and unshared.
        let slab = unsafe {
            SlabHeader::init(header, self.header_magic(header), base, s_mem, g.objects, c)
        };
        // The objects start fresh, on no list; only debug patterns and a
        // constructor (run once per object, as Linux's `setup_object`)
        // need them touched now.
        if c.debug || c.ctor.is_some() {
            for index in 0..g.objects {
                let obj = slab.object(index, g.stride);
                if c.debug {
                    c.debug_init_slot(obj);
                    c.debug_init_free(obj);
                }
                if let Some(ctor) = c.ctor {
                    if let Some(obj) = NonNull::new(obj) {
                        ctor(obj);
                    }
                }
            }
        }
        if let Err(e) = self.set_slab_owner(pfn, g.order, slab) {
            slab.release();
            self.free_owned_block(pfn, g.order);
            if g.off_slab {
                self.kfree_internal(header.cast());
            }
            return Err(e);
        }
        c.node.lock().add_slab(slab);
        Ok(())
    }

    /// Returns an unlinked slab's pages (and off-slab header): its owner
    /// words are cleared first, so the page allocator takes the pages back
    /// and `kfree` of a stale pointer into them finds no slab. Takes the
    /// header by pointer: an on-slab header lies in the pages freed, so no
    /// reference to it may live across the free.
    ///
    /// # Safety
    ///
    /// `slab` is a slab of `c` unlinked from its node: the caller's alone.
    pub(crate) unsafe fn discard(&self, c: &KmemCache, slab: NonNull<SlabHeader>) {
        let base = {
            // SAFETY: the slab is the caller's alone and still live; the
            // reference ends before its memory is freed.
            let slab = unsafe { slab.as_ref() };
            slab.release();
            slab.base
        };
        if let Some(pfn) = self.backend().ptr_to_pfn(base) {
            self.free_owned_block(pfn, c.geo.order);
        }
        if c.geo.off_slab {
            self.kfree_internal(slab.as_ptr().cast_const().cast());
        }
    }

    /// Discards the slabs unlinked onto `discards`; the pages freed.
    pub(crate) fn discard_all(&self, c: &KmemCache, mut discards: Discards) -> usize {
        let mut pages = 0;
        while let Some(slab) = discards.pop() {
            // SAFETY: `take_surplus` unlinked the slab from its node; ours
            // alone.
            unsafe { self.discard(c, slab) };
            pages += c.geo.pages();
        }
        pages
    }

    /// Returns the pinned CPU's cached objects of `c` to their slabs (and
    /// slabs beyond `MIN_PARTIAL` empty ones to the page allocator); the
    /// pages freed.
    pub(crate) fn drain_array(&self, c: &KmemCache, pinned: &Pinned) -> usize {
        if c.debug {
            return 0;
        }
        let discards = c.cpu_array(pinned).with(pinned, |e, avail| {
            let n = *avail;
            c.flush(e, avail, n)
        });
        self.discard_all(c, discards)
    }

    /// Runs `drain` as every CPU in turn, through the platform's `on_cpu`
    /// (Linux `flush_all`); returns the CPUs the platform could not reach.
    pub(crate) fn on_each_cpu(&self, mut drain: impl FnMut(&Pinned)) -> usize {
        let mut unreached = 0;
        for cpu in 0..self.nr_cpus() {
            let ran = self.backend().on_cpu(cpu, &mut || {
                // SAFETY: the platform runs this work as `cpu`, exclusive
                // with every section pinned to it (`PreemptControl`).
                let pinned = unsafe { Pinned::new(cpu) };
                drain(&pinned);
            });
            if !ran {
                unreached += 1;
            }
        }
        unreached
    }

    /// Every CPU's cached objects of `c` back to their slabs; the pages
    /// freed (a CPU the platform cannot reach keeps its objects).
    pub(crate) fn flush_all_cpus(&self, c: &KmemCache) -> usize {
        let mut pages = 0;
        self.on_each_cpu(|pinned| pages += self.drain_array(c, pinned));
        pages
    }

    /// Every empty slab of `c` back to the page allocator; the pages freed.
    pub(crate) fn discard_empty(&self, c: &KmemCache) -> usize {
        let discards = Discards::take_surplus(&mut c.node.lock(), 0);
        self.discard_all(c, discards)
    }

    /// Linux `kmem_cache_shrink`: every CPU's cached objects of `c` back to
    /// their slabs, and every empty slab to the page allocator; the pages
    /// freed.
    pub(crate) fn shrink_cache(&self, c: &KmemCache) -> usize {
        self.flush_all_cpus(c) + self.discard_empty(c)
    }
}
