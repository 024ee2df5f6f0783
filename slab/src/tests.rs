//! Unit tests, one per rule of the slab layer and kmalloc.

extern crate std;

use crate::{testing::HostMachine, *};
use core::{
    alloc::{GlobalAlloc, Layout},
    cell::Cell,
    marker::PhantomData,
    ops::Deref,
    ptr::{self, NonNull},
    sync::atomic::{AtomicPtr, AtomicUsize, Ordering},
};
use kmm_api::{
    AllocatorId, DirectMap, Error, FrameAllocator, GfpFlags, Order, OwnerTag, OwnerWord, PageOwner,
    Pages, Pfn, Platform, PreemptControl, VirtAddr, __GFP_ZERO, GFP_ATOMIC, GFP_DMA, GFP_HIGHUSER,
    GFP_KERNEL, PAGE_SIZE,
};
use std::{
    collections::VecDeque,
    string::ToString,
    sync::{Barrier, Mutex, OnceLock},
    thread,
    time::Instant,
    vec::Vec,
};

/// Bytes in a machine word: 8 on x86-64, 4 on i386 (`usize` is the word).
const WORD_BYTES: usize = core::mem::size_of::<usize>();

fn frames() -> usize {
    if cfg!(miri) {
        160
    } else {
        2048
    }
}

/// A [`Kmem`] with one user: the thread that made it (the type is not
/// `Sync`, so it cannot be shared with another), which passes the calls
/// that take an object pointer only pointers it holds (and, to a free,
/// gives up) or pointers nobody holds (double frees, interior, foreign and
/// stale pointers, a forged owner word's page), to check they are refused.
/// That meets the crate's *Freeing by pointer* contract: with no other
/// thread, nobody else holds, allocates or discards anything during a
/// call, and no other use of a cache can run during its destroy. So this
/// wrapper offers those calls as safe methods of the same names, and the
/// tests read as the specification. Multi-threaded tests use a plain
/// [`Kmem`] and justify each call where they make it.
pub(crate) struct SoleUser<'m> {
    kmem: Kmem<&'m HostMachine>,
    _one_thread: PhantomData<Cell<()>>,
}

impl<'m> SoleUser<'m> {
    /// The allocator over `m` with `config`, used by this thread alone.
    pub(crate) fn new(m: &'m HostMachine, config: KmemConfig) -> Self {
        Self {
            kmem: Kmem::new(m, config).unwrap(),
            _one_thread: PhantomData,
        }
    }

    #[track_caller]
    pub(crate) fn kfree(&self, p: *const u8) -> Result<(), SlabError> {
        // SAFETY: the `SoleUser` contract (one thread; `p` held and given
        // up, or held by nobody).
        unsafe { self.kmem.kfree(p) }
    }

    #[track_caller]
    pub(crate) fn kmem_cache_free(&self, id: CacheId, p: *const u8) -> Result<(), SlabError> {
        // SAFETY: the `SoleUser` contract, as for `kfree`.
        unsafe { self.kmem.kmem_cache_free(id, p) }
    }

    #[track_caller]
    pub(crate) fn krealloc(
        &self,
        p: *const u8,
        size: usize,
        gfp: GfpFlags,
    ) -> Result<NonNull<u8>, SlabError> {
        // SAFETY: the `SoleUser` contract, as for `kfree`.
        unsafe { self.kmem.krealloc(p, size, gfp) }
    }

    pub(crate) fn ksize(&self, p: *const u8) -> Result<usize, SlabError> {
        // SAFETY: the `SoleUser` contract (`p` held and kept, or held by
        // nobody).
        unsafe { self.kmem.ksize(p) }
    }

    pub(crate) fn kmem_cache_of(&self, p: *const u8) -> Result<ObjectOwner, SlabError> {
        // SAFETY: the `SoleUser` contract, as for `ksize`.
        unsafe { self.kmem.kmem_cache_of(p) }
    }

    pub(crate) fn kmem_obj_track(&self, p: *const u8) -> Result<Option<Track>, SlabError> {
        // SAFETY: the `SoleUser` contract, as for `ksize`.
        unsafe { self.kmem.kmem_obj_track(p) }
    }

    pub(crate) fn kmem_cache_destroy(&self, id: CacheId) -> Result<(), SlabError> {
        // SAFETY: the `SoleUser` contract: no other thread can use the
        // cache during the call.
        unsafe { self.kmem.kmem_cache_destroy(id) }
    }
}

impl<'m> Deref for SoleUser<'m> {
    type Target = Kmem<&'m HostMachine>;
    fn deref(&self) -> &Self::Target {
        &self.kmem
    }
}

fn kmem(m: &HostMachine) -> SoleUser<'_> {
    SoleUser::new(m, KmemConfig::default())
}

/// An allocator several threads share; each of their pointer calls is
/// justified where it is made.
fn shared_kmem(m: &HostMachine) -> Kmem<&HostMachine> {
    Kmem::new(m, KmemConfig::default()).unwrap()
}

fn class_of(k: &SoleUser<'_>, p: NonNull<u8>) -> &'static str {
    let id = k.kmem_cache_of(p.as_ptr()).unwrap().cache().unwrap();
    k.kmem_cache_info(id).unwrap().name
}

/// Every kmalloc cache (normal and DMA) of `k`.
fn kmalloc_caches<B: SlabBackend>(k: &Kmem<B>) -> Vec<CacheId> {
    kmalloc_classes()
        .iter()
        .flat_map(|&size| {
            [GFP_KERNEL, GFP_KERNEL | GFP_DMA].map(|gfp| k.kmalloc_slab(size, gfp).unwrap())
        })
        .collect()
}

/// An object pointer moved to another thread, which then holds it.
struct Held(NonNull<u8>);
// SAFETY: slab memory is plain memory; whoever holds the value holds the
// object.
unsafe impl Send for Held {}

/// The host machine on a platform that cannot run work on another CPU
/// (no IPIs): `on_cpu` is the trait's default, which reaches only the
/// caller's own CPU. It declares `nr_cpus` CPUs (the host's, unless a test
/// asks for an absurd count); everything else is the host machine's.
struct LocalOnly<'m> {
    host: &'m HostMachine,
    nr_cpus: usize,
}

impl<'m> LocalOnly<'m> {
    fn new(host: &'m HostMachine) -> Self {
        LocalOnly {
            host,
            nr_cpus: host.nr_cpus(),
        }
    }
}

// SAFETY: forwards to the host machine, which keeps the contract.
unsafe impl FrameAllocator for LocalOnly<'_> {
    fn alloc_frames(&self, gfp: GfpFlags, order: Order) -> Result<Pages, Error> {
        self.host.alloc_frames(gfp, order)
    }
    fn free_frames(&self, pages: Pages) -> Result<(), Error> {
        self.host.free_frames(pages)
    }
    fn allocator_id(&self) -> AllocatorId {
        self.host.allocator_id()
    }
}

// SAFETY: forwards to the host machine (its own pointer derivation
// included), which keeps the contract.
unsafe impl DirectMap for LocalOnly<'_> {
    fn pfn_to_virt(&self, pfn: Pfn) -> Option<VirtAddr> {
        self.host.pfn_to_virt(pfn)
    }
    fn virt_to_pfn(&self, addr: VirtAddr) -> Option<Pfn> {
        self.host.virt_to_pfn(addr)
    }
    fn window_base(&self) -> usize {
        self.host.window_base()
    }
    fn virt_to_ptr(&self, addr: VirtAddr) -> *mut u8 {
        self.host.virt_to_ptr(addr)
    }
    fn ptr_to_virt(&self, ptr: *const u8) -> VirtAddr {
        self.host.ptr_to_virt(ptr)
    }
}

// SAFETY: forwards to the host machine, which keeps the contract.
unsafe impl PageOwner for LocalOnly<'_> {
    fn owner(&self, pfn: Pfn) -> Option<OwnerWord> {
        self.host.owner(pfn)
    }
    unsafe fn set_owner(&self, pfn: Pfn, word: OwnerWord) -> Result<(), Error> {
        // SAFETY: our caller's contract is the host machine's.
        unsafe { self.host.set_owner(pfn, word) }
    }
    unsafe fn replace_owner(
        &self,
        pfn: Pfn,
        current: OwnerWord,
        new: OwnerWord,
    ) -> Result<bool, Error> {
        // SAFETY: our caller's contract is the host machine's.
        unsafe { self.host.replace_owner(pfn, current, new) }
    }
}

impl Platform for LocalOnly<'_> {
    fn nr_cpus(&self) -> usize {
        self.nr_cpus
    }
    fn cpu_id(&self) -> usize {
        self.host.cpu_id()
    }
}

// SAFETY: pinning is the host machine's; `on_cpu` is the trait's default,
// which runs work only on the CPU the caller itself has pinned.
unsafe impl PreemptControl for LocalOnly<'_> {
    fn get_cpu(&self) -> usize {
        self.host.get_cpu()
    }
    fn put_cpu(&self, cpu: usize) {
        self.host.put_cpu(cpu)
    }
}

#[test]
fn kmalloc_96_uses_kmalloc_96_and_100_uses_kmalloc_128() {
    let m = HostMachine::new(frames(), 1);
    let k = kmem(&m);
    let cases = [
        (96, "kmalloc-96"),
        (100, "kmalloc-128"),
        (150, "kmalloc-192"),
        (1, "kmalloc-8"),
    ];
    for (size, name) in cases {
        let p = k.kmalloc(size, GFP_KERNEL).unwrap();
        assert_eq!(class_of(&k, p), name, "kmalloc({size})");
        k.kfree(p.as_ptr()).unwrap();
    }
}

#[test]
fn gfp_dma_requests_use_the_dma_kmalloc_caches() {
    let m = HostMachine::new(frames(), 1);
    let k = kmem(&m);
    let p = k.kmalloc(100, GFP_KERNEL | GFP_DMA).unwrap();
    assert_eq!(class_of(&k, p), "dma-kmalloc-128");
    k.kfree(p.as_ptr()).unwrap();
}

#[test]
fn every_class_honours_its_natural_alignment() {
    let m = HostMachine::new(frames(), 1);
    let k = kmem(&m);
    for &class in kmalloc_classes() {
        let natural = class & class.wrapping_neg();
        let p = k.kmalloc(class, GFP_KERNEL).unwrap();
        assert_eq!(
            p.as_ptr() as usize % natural.min(PAGE_SIZE),
            0,
            "kmalloc-{class}"
        );
        k.kfree(p.as_ptr()).unwrap();
    }
    let p = k.kmalloc_aligned(80, 64, GFP_KERNEL).unwrap();
    assert_eq!(p.as_ptr() as usize % 64, 0);
    k.kfree(p.as_ptr()).unwrap();
}

#[test]
fn a_bulk_allocation_fills_across_array_refills_and_new_slabs_with_distinct_objects() {
    let m = HostMachine::new(frames(), 1);
    let k = kmem(&m);
    let id = k.kmalloc_slab(64, GFP_KERNEL).unwrap();
    let mut out = [ptr::null_mut(); 200];
    assert_eq!(k.kmem_cache_alloc_bulk(id, GFP_KERNEL, &mut out), out.len());
    let mut sorted = out.to_vec();
    sorted.sort_unstable();
    sorted.dedup();
    assert_eq!(sorted.len(), out.len(), "no object twice");
    assert_eq!(k.kmem_cache_stats(id).unwrap().active_objs, out.len());
    for p in out {
        assert_eq!(class_of(&k, NonNull::new(p).unwrap()), "kmalloc-64");
        k.kfree(p).unwrap();
    }
    k.check_invariants().unwrap();
}

#[test]
fn a_bulk_free_frees_like_kfree_and_refuses_what_kfree_refuses() {
    let m = HostMachine::new(frames(), 1);
    let k = kmem(&m);
    // More objects than a CPU's array holds, of two caches, and a large
    // kmalloc.
    let mut ptrs: Vec<*mut u8> = (0..150)
        .map(|i| {
            k.kmalloc(if i % 2 == 0 { 64 } else { 200 }, GFP_KERNEL)
                .unwrap()
                .as_ptr()
        })
        .collect();
    ptrs.push(k.kmalloc(3 * PAGE_SIZE, GFP_KERNEL).unwrap().as_ptr());
    let twice = ptrs[3];
    ptrs.push(twice);
    let mut foreign = 0u64;
    ptrs.push(ptr::addr_of_mut!(foreign).cast());
    // SAFETY: the `SoleUser` contract: this thread holds every object
    // above and gives each up once; `twice` (then freed) and `foreign`
    // are pointers nobody holds, which must be refused.
    let refused = unsafe { k.kfree_bulk(&ptrs) };
    assert_eq!(refused, 2, "the double free and the foreign pointer");
    for id in kmalloc_caches(&k) {
        assert_eq!(k.kmem_cache_stats(id).unwrap().active_objs, 0);
    }
    k.check_invariants().unwrap();
}

#[test]
fn a_trusted_bulk_free_frees_every_object_and_refuses_only_foreign_pointers() {
    let m = HostMachine::new(frames(), 1);
    let k = kmem(&m);
    // More objects than a CPU's array holds, of two caches, a large
    // kmalloc and a debug cache's object (freed through its own path).
    let debug = k
        .kmem_cache_create("trusted-debug", 48, 0, SlabFlags::RED_ZONE, None)
        .unwrap();
    let mut ptrs: Vec<*mut u8> = (0..150)
        .map(|i| {
            k.kmalloc(if i % 2 == 0 { 64 } else { 200 }, GFP_KERNEL)
                .unwrap()
                .as_ptr()
        })
        .collect();
    ptrs.push(k.kmalloc(3 * PAGE_SIZE, GFP_KERNEL).unwrap().as_ptr());
    ptrs.push(k.kmem_cache_alloc(debug, GFP_KERNEL).unwrap().as_ptr());
    let mut foreign = 0u64;
    ptrs.insert(40, ptr::addr_of_mut!(foreign).cast());
    // SAFETY: this thread holds every object above and gives each up
    // once; `foreign` lies outside the allocator's memory.
    let refused = unsafe { k.kfree_bulk_trusted(&ptrs) };
    assert_eq!(refused, 1, "the foreign pointer");
    for id in kmalloc_caches(&k).into_iter().chain([debug]) {
        assert_eq!(k.kmem_cache_stats(id).unwrap().active_objs, 0);
    }
    k.check_invariants().unwrap();
    // Every object came back: the next allocations reuse them.
    let again = k.kmalloc(64, GFP_KERNEL).unwrap();
    assert!(ptrs.contains(&again.as_ptr()));
    k.kfree(again.as_ptr()).unwrap();
}

/// A bulk request hands out what the CPU's array holds (the cache-hot
/// objects) before it refills the array.
#[test]
fn a_bulk_allocation_hands_out_the_arrays_objects_first() {
    let m = HostMachine::new(frames(), 1);
    let k = kmem(&m);
    let id = k.kmalloc_slab(64, GFP_KERNEL).unwrap();
    let warm: Vec<*mut u8> = (0..8)
        .map(|_| k.kmalloc(64, GFP_KERNEL).unwrap().as_ptr())
        .collect();
    for &p in &warm {
        k.kfree(p).unwrap();
    }
    let cached = k.kmem_cache_stats(id).unwrap().cached_objs;
    assert!(cached >= warm.len(), "the frees went to the array");
    let mut out = [ptr::null_mut(); 100];
    assert_eq!(k.kmem_cache_alloc_bulk(id, GFP_KERNEL, &mut out), out.len());
    assert_eq!(k.kmem_cache_stats(id).unwrap().active_objs, out.len());
    assert!(
        warm.iter().all(|p| out[..cached].contains(p)),
        "the hot objects first"
    );
    k.check_invariants().unwrap();
    for p in out {
        k.kfree(p).unwrap();
    }
    k.check_invariants().unwrap();
}

/// A bulk free that starts with the CPU's array full frees its run
/// straight to the slabs, leaving the array as it was; a refusal in the
/// middle of the run is refused alone, and an object of another cache
/// goes to its own cache.
#[test]
fn a_bulk_free_into_a_full_array_goes_to_the_slabs_and_refuses_alone() {
    let m = HostMachine::new(frames(), 1);
    let k = kmem(&m);
    let id = k.kmalloc_slab(64, GFP_KERNEL).unwrap();
    let other = k.kmalloc(200, GFP_KERNEL).unwrap().as_ptr();
    let limit = k.cache(id).unwrap().limit;
    let objs: Vec<*mut u8> = (0..limit + 40)
        .map(|_| k.kmalloc(64, GFP_KERNEL).unwrap().as_ptr())
        .collect();
    k.drain_local();
    let (fill, rest) = objs.split_at(limit);
    for &p in fill {
        k.kfree(p).unwrap();
    }
    assert_eq!(k.kmem_cache_stats(id).unwrap().cached_objs, limit);
    let mut ptrs = rest.to_vec();
    ptrs.insert(10, fill[0]);
    ptrs.insert(20, rest[0]);
    let mut foreign = 0u64;
    ptrs.insert(30, ptr::addr_of_mut!(foreign).cast());
    ptrs.insert(35, other);
    // SAFETY: the `SoleUser` contract: this thread holds each of `rest`
    // and `other` and gives it up once; `fill[0]`, `rest[0]` (a second
    // time) and `foreign` are pointers nobody holds, which must be refused.
    let refused = unsafe { k.kfree_bulk(&ptrs) };
    assert_eq!(refused, 3, "two double frees and the foreign pointer");
    let stats = k.kmem_cache_stats(id).unwrap();
    assert_eq!(stats.active_objs, 0);
    assert_eq!(stats.cached_objs, limit, "the array kept its objects");
    let other_id = k.kmalloc_slab(200, GFP_KERNEL).unwrap();
    assert_eq!(k.kmem_cache_stats(other_id).unwrap().active_objs, 0);
    k.check_invariants().unwrap();
}

#[test]
fn kmalloc_fine_slab_names_the_cache_kmalloc_fine_serves_from() {
    let m = HostMachine::new(frames(), 1);
    let k = SoleUser::new(
        &m,
        KmemConfig {
            fine_classes: true,
            ..KmemConfig::default()
        },
    );
    for (size, align) in [(8, 1), (80, 64), (300, 8), (300, 128), (5000, 8), (8, 4096)] {
        let p = k.kmalloc_fine(size, align, GFP_KERNEL).unwrap();
        let id = k.kmalloc_fine_slab(size, align, GFP_KERNEL).unwrap();
        assert_eq!(
            k.kmem_cache_info(id).unwrap().name,
            class_of(&k, p),
            "{size}, {align}"
        );
        k.kfree(p.as_ptr()).unwrap();
    }
    assert_eq!(k.kmalloc_fine_slab(9000, 8, GFP_KERNEL), None, "pages");
    assert_eq!(k.kmalloc_fine_slab(64, 8, GFP_HIGHUSER), None, "refused");
}

#[test]
fn kcalloc_overflow_is_an_error_and_allocates_nothing() {
    let m = HostMachine::new(frames(), 1);
    let k = kmem(&m);
    let before = m.frames_in_use();
    let err = k.kcalloc(usize::MAX / 2, 3, GFP_KERNEL).unwrap_err();
    assert_eq!(
        err,
        SlabError::Overflow {
            n: usize::MAX / 2,
            size: 3
        }
    );
    assert_eq!(m.frames_in_use(), before);
}

#[test]
fn kcalloc_and_kzalloc_return_zeroed_memory_even_after_reuse() {
    let m = HostMachine::new(frames(), 1);
    let k = kmem(&m);
    let p = k.kmalloc(64, GFP_KERNEL).unwrap();
    // SAFETY: 64 bytes were allocated at `p`.
    unsafe { p.as_ptr().write_bytes(0xee, 64) };
    k.kfree(p.as_ptr()).unwrap();
    let q = k.kcalloc(8, 8, GFP_KERNEL).unwrap();
    // SAFETY: 64 bytes were allocated at `q`.
    let bytes = unsafe { core::slice::from_raw_parts(q.as_ptr(), 64) };
    assert!(bytes.iter().all(|&b| b == 0));
    k.kfree(q.as_ptr()).unwrap();
}

#[test]
fn krealloc_stays_in_place_while_the_class_fits_and_copies_when_it_moves() {
    let m = HostMachine::new(frames(), 1);
    let k = kmem(&m);
    let p = k.kmalloc(100, GFP_KERNEL).unwrap();
    // SAFETY: 100 bytes were allocated at `p`.
    unsafe { (0..100u8).for_each(|i| p.as_ptr().add(usize::from(i)).write(i)) };
    let same = k.krealloc(p.as_ptr(), 128, GFP_KERNEL).unwrap();
    assert_eq!(same, p);
    let moved = k.krealloc(p.as_ptr(), 300, GFP_KERNEL).unwrap();
    assert_ne!(moved, p);
    assert_eq!(k.ksize(moved.as_ptr()).unwrap(), 512);
    // SAFETY: 300 bytes were allocated at `moved`, the first 100 copied.
    let bytes = unsafe { core::slice::from_raw_parts(moved.as_ptr(), 100) };
    assert!(bytes.iter().enumerate().all(|(i, &b)| b == i as u8));
    assert!(matches!(
        k.kfree(p.as_ptr()),
        Err(SlabError::DoubleFree { .. })
    ));
    k.kfree(moved.as_ptr()).unwrap();
}

#[test]
fn ksize_reports_the_class_size_and_the_pages_of_large_allocations() {
    let m = HostMachine::new(frames(), 1);
    let k = kmem(&m);
    let p = k.kmalloc(33, GFP_KERNEL).unwrap();
    assert_eq!(k.ksize(p.as_ptr()).unwrap(), 64);
    let big = k.kmalloc(3 * PAGE_SIZE, GFP_KERNEL).unwrap();
    assert_eq!(k.ksize(big.as_ptr()).unwrap(), 4 * PAGE_SIZE);
    k.kfree(p.as_ptr()).unwrap();
    k.kfree(big.as_ptr()).unwrap();
}

#[test]
fn kfree_of_null_and_zero_size_ptr_is_a_no_op() {
    let m = HostMachine::new(frames(), 1);
    let k = kmem(&m);
    assert_eq!(k.kmalloc(0, GFP_KERNEL).unwrap(), ZERO_SIZE_PTR);
    assert_eq!(k.kfree(core::ptr::null()), Ok(()));
    assert_eq!(k.kfree(ZERO_SIZE_PTR.as_ptr()), Ok(()));
    assert_eq!(k.ksize(ZERO_SIZE_PTR.as_ptr()), Ok(0));
}

#[test]
fn large_kmalloc_takes_whole_pages_and_kfree_returns_them() {
    let m = HostMachine::new(frames(), 1);
    let k = kmem(&m);
    let before = m.frames_in_use();
    let p = k.kmalloc(KMALLOC_MAX_CACHE_SIZE + 1, GFP_KERNEL).unwrap();
    assert_eq!(p.as_ptr() as usize % PAGE_SIZE, 0);
    assert_eq!(m.frames_in_use(), before + 4);
    // An address inside the block is not an allocation.
    let inside = p.as_ptr().wrapping_add(PAGE_SIZE);
    assert!(matches!(
        k.kfree(inside),
        Err(SlabError::InvalidPointer { .. })
    ));
    k.kfree(p.as_ptr()).unwrap();
    assert_eq!(m.frames_in_use(), before);
}

#[test]
fn kmalloc_above_kmalloc_max_size_is_an_error() {
    let m = HostMachine::new(frames(), 1);
    let k = kmem(&m);
    let err = k.kmalloc(KMALLOC_MAX_SIZE + 1, GFP_KERNEL).unwrap_err();
    assert_eq!(
        err,
        SlabError::SizeTooLarge {
            bytes: KMALLOC_MAX_SIZE + 1,
            max: KMALLOC_MAX_SIZE
        }
    );
    assert!(k.kmalloc(usize::MAX, GFP_KERNEL).is_err());
}

#[test]
fn highmem_gfp_is_refused_because_slab_memory_needs_the_direct_map() {
    let m = HostMachine::new(frames(), 1);
    let k = kmem(&m);
    assert!(matches!(
        k.kmalloc(64, GFP_HIGHUSER),
        Err(SlabError::InvalidGfp { .. })
    ));
}

#[test]
fn constructor_runs_when_a_slab_is_populated_not_on_every_allocation() {
    fn ctor(p: NonNull<u8>) {
        // SAFETY: the constructor is given a whole 32-byte object.
        unsafe { p.as_ptr().cast::<u64>().write(0xc0ffee) };
    }
    let m = HostMachine::new(frames(), 1);
    let k = kmem(&m);
    let id = k
        .kmem_cache_create("ctor_cache", 32, 8, SlabFlags::empty(), Some(ctor))
        .unwrap();
    let p = k.kmem_cache_alloc(id, GFP_KERNEL).unwrap();
    // SAFETY: a live 32-byte object.
    unsafe {
        assert_eq!(p.as_ptr().cast::<u64>().read(), 0xc0ffee);
        p.as_ptr().cast::<u64>().write(7);
    }
    k.kmem_cache_free(id, p.as_ptr()).unwrap();
    let q = k.kmem_cache_alloc(id, GFP_KERNEL).unwrap();
    assert_eq!(q, p, "LIFO reuse of the hot object");
    // SAFETY: a live 32-byte object.
    let word = unsafe { q.as_ptr().cast::<u64>().read() };
    assert_eq!(word, 7, "no constructor on reuse");
    k.kmem_cache_free(id, q.as_ptr()).unwrap();
    k.kmem_cache_destroy(id).unwrap();
}

#[test]
fn shrink_returns_every_empty_slab_and_counts_its_pages() {
    let m = HostMachine::new(frames(), 1);
    let k = kmem(&m);
    let id = k
        .kmem_cache_create("shrinkme", 256, 0, SlabFlags::empty(), None)
        .unwrap();
    let before = m.frames_in_use();
    let objs: Vec<_> = (0..100)
        .map(|_| k.kmem_cache_alloc(id, GFP_KERNEL).unwrap())
        .collect();
    let grown = m.frames_in_use() - before;
    assert!(grown > 0);
    for p in objs {
        k.kmem_cache_free(id, p.as_ptr()).unwrap();
    }
    let returned_early = before + grown - m.frames_in_use();
    assert_eq!(k.kmem_cache_shrink(id).unwrap() + returned_early, grown);
    assert_eq!(m.frames_in_use(), before);
    assert_eq!(k.kmem_cache_stats(id).unwrap().num_slabs, 0);
}

#[test]
fn destroy_refuses_with_the_live_count_and_succeeds_once_freed() {
    let m = HostMachine::new(frames(), 1);
    let k = kmem(&m);
    let before = m.frames_in_use();
    let id = k
        .kmem_cache_create("busy", 48, 0, SlabFlags::empty(), None)
        .unwrap();
    let a = k.kmem_cache_alloc(id, GFP_KERNEL).unwrap();
    let b = k.kmem_cache_alloc(id, GFP_KERNEL).unwrap();
    assert_eq!(
        k.kmem_cache_destroy(id),
        Err(SlabError::CacheBusy {
            cache: "busy",
            live: 2
        })
    );
    k.kmem_cache_free(id, a.as_ptr()).unwrap();
    k.kmem_cache_free(id, b.as_ptr()).unwrap();
    k.kmem_cache_destroy(id).unwrap();
    assert_eq!(m.frames_in_use(), before, "slabs and descriptor returned");
    assert_eq!(
        k.kmem_cache_alloc(id, GFP_KERNEL),
        Err(SlabError::NoSuchCache)
    );
}

#[test]
fn double_free_is_refused_and_changes_nothing() {
    let m = HostMachine::new(frames(), 1);
    let k = kmem(&m);
    let p = k.kmalloc(64, GFP_KERNEL).unwrap();
    let q = k.kmalloc(64, GFP_KERNEL).unwrap();
    k.kfree(p.as_ptr()).unwrap();
    let id = k.kmalloc_slab(64, GFP_KERNEL).unwrap();
    let stats = k.kmem_cache_stats(id).unwrap();
    assert!(matches!(
        k.kfree(p.as_ptr()),
        Err(SlabError::DoubleFree {
            cache: "kmalloc-64",
            ..
        })
    ));
    assert_eq!(k.kmem_cache_stats(id).unwrap(), stats);
    // The object is handed out once, not twice.
    let r = k.kmalloc(64, GFP_KERNEL).unwrap();
    let s = k.kmalloc(64, GFP_KERNEL).unwrap();
    assert!(r != s && r != q && s != q);
    for x in [q, r, s] {
        k.kfree(x.as_ptr()).unwrap();
    }
    k.check_invariants().unwrap();
}

#[test]
fn a_pointer_inside_an_object_is_refused_with_its_offset() {
    let m = HostMachine::new(frames(), 1);
    let k = kmem(&m);
    let p = k.kmalloc(96, GFP_KERNEL).unwrap();
    let err = k.kfree(p.as_ptr().wrapping_add(40)).unwrap_err();
    assert!(matches!(
        err,
        SlabError::NotObjectStart {
            cache: "kmalloc-96",
            offset: 40,
            ..
        }
    ));
    assert!(err.to_string().contains("40 bytes into an object"));
    k.kfree(p.as_ptr()).unwrap();
}

#[test]
fn a_pointer_no_slab_owns_is_refused() {
    let m = HostMachine::new(frames(), 1);
    let k = kmem(&m);
    let local = 5u64;
    let err = k.kfree(core::ptr::from_ref(&local).cast()).unwrap_err();
    assert!(matches!(err, SlabError::InvalidPointer { .. }));
    // A free frame of the machine is not an allocation either.
    let pages = m.alloc_frames(GFP_KERNEL, Order::ZERO).unwrap();
    let page = m.pfn_to_ptr(pages.pfn()).unwrap();
    m.free_frames(pages).unwrap();
    assert!(matches!(
        k.kfree(page.as_ptr()),
        Err(SlabError::InvalidPointer { .. })
    ));
}

#[test]
fn kmem_cache_free_to_the_wrong_cache_is_refused() {
    let m = HostMachine::new(frames(), 1);
    let k = kmem(&m);
    let a = k
        .kmem_cache_create("cache_a", 64, 0, SlabFlags::empty(), None)
        .unwrap();
    let b = k
        .kmem_cache_create("cache_b", 64, 0, SlabFlags::empty(), None)
        .unwrap();
    let p = k.kmem_cache_alloc(a, GFP_KERNEL).unwrap();
    let err = k.kmem_cache_free(b, p.as_ptr()).unwrap_err();
    assert_eq!(
        err,
        SlabError::WrongCache {
            addr: kmm_api::VirtAddr::new(p.as_ptr() as usize),
            expected: "cache_b",
            found: "cache_a"
        }
    );
    k.kmem_cache_free(a, p.as_ptr()).unwrap();
}

#[test]
fn a_failing_page_allocator_leaves_every_structure_unchanged() {
    let m = HostMachine::new(frames(), 1);
    let k = kmem(&m);
    let id = k
        .kmem_cache_create("starved", 1024, 0, SlabFlags::empty(), None)
        .unwrap();
    m.fail_after(0);
    assert!(matches!(
        k.kmem_cache_alloc(id, GFP_ATOMIC),
        Err(SlabError::Page(_))
    ));
    assert!(matches!(
        k.kmalloc(64 << 10, GFP_ATOMIC),
        Err(SlabError::Page(_))
    ));
    assert_eq!(k.kmem_cache_stats(id).unwrap(), CacheStats::default());
    m.fail_after(usize::MAX);
    k.check_invariants().unwrap();
}

#[test]
fn free_pointers_in_objects_are_encoded_with_the_cache_secret() {
    let m = HostMachine::new(frames(), 1);
    let k = kmem(&m);
    let id = k
        .kmem_cache_create("hardened", 64, 0, SlabFlags::POISON, None)
        .unwrap();
    let info = k.kmem_cache_info(id).unwrap();
    let p = k.kmem_cache_alloc(id, GFP_KERNEL).unwrap();
    let q = k.kmem_cache_alloc(id, GFP_KERNEL).unwrap();
    k.kmem_cache_free(id, p.as_ptr()).unwrap();
    k.kmem_cache_free(id, q.as_ptr()).unwrap();
    // SAFETY: the free pointer word lies inside q's slot.
    let stored = unsafe {
        q.as_ptr()
            .add(info.free_pointer_offset)
            .cast::<usize>()
            .read()
    };
    assert_ne!(
        stored,
        p.as_ptr() as usize,
        "a raw pointer would be steerable"
    );
    assert_ne!(stored, 0);
}

#[test]
fn a_link_forged_to_name_a_fresh_object_is_refused() {
    // A write after free that names one of the slab's fresh objects,
    // encoded with the cache's own secret, must not put it on the free
    // list: it would be handed out through the list and again as fresh.
    let m = HostMachine::new(frames(), 1);
    let k = kmem(&m);
    // A debug cache frees straight to the slab's list.
    let id = k
        .kmem_cache_create("forged", 64, 0, SlabFlags::POISON, None)
        .unwrap();
    let p = k.kmem_cache_alloc(id, GFP_KERNEL).unwrap();
    k.kmem_cache_free(id, p.as_ptr()).unwrap();
    let (fp, stride, objects) = {
        let c = k.cache(id).unwrap();
        (c.fp, c.geo.stride, c.geo.objects)
    };
    let fresh = p.as_ptr().wrapping_add(5 * stride) as usize;
    let forged = fresh ^ fp.secret ^ (p.as_ptr() as usize).swap_bytes();
    // SAFETY: the free pointer word lies inside p's slot, slab memory.
    unsafe { p.as_ptr().add(fp.offset).cast::<usize>().write(forged) };
    let got: Vec<_> = (0..objects)
        .map(|_| k.kmem_cache_alloc(id, GFP_KERNEL).unwrap())
        .collect();
    assert!(
        !got.contains(&p),
        "the object with the forged link came back"
    );
    let mut distinct = got.clone();
    distinct.sort();
    distinct.dedup();
    assert_eq!(distinct.len(), got.len(), "an object was handed out twice");
    assert_eq!(k.kmem_cache_stats(id).unwrap().quarantined, 1);
    assert_eq!(
        k.kmem_cache_last_report(id).unwrap().unwrap().kind,
        CorruptionKind::FreePointer
    );
    k.check_invariants().unwrap();
    for q in got {
        k.kmem_cache_free(id, q.as_ptr()).unwrap();
    }
}

#[test]
fn remote_frees_on_another_cpu_are_correct() {
    let m = HostMachine::new(frames(), 2);
    let k = shared_kmem(&m);
    let n = if cfg!(miri) { 20 } else { 2000 };
    HostMachine::set_thread_cpu(0);
    let objs: Vec<Held> = (0..n)
        .map(|_| Held(k.kmalloc(64, GFP_KERNEL).unwrap()))
        .collect();
    let k = &k;
    thread::scope(|s| {
        s.spawn(move || {
            HostMachine::set_thread_cpu(1);
            for Held(p) in objs {
                // SAFETY: this thread holds every object moved to it and
                // gives each up once; no other thread touches them.
                unsafe { k.kfree(p.as_ptr()) }.unwrap();
            }
            k.drain_local();
        });
    });
    let id = k.kmalloc_slab(64, GFP_KERNEL).unwrap();
    assert_eq!(k.kmem_cache_stats(id).unwrap().active_objs, 0);
    k.check_invariants().unwrap();
}

#[test]
fn slabinfo_prints_the_version_2_1_header_and_one_line_per_cache() {
    let m = HostMachine::new(frames(), 1);
    let k = kmem(&m);
    let p = k.kmalloc(100, GFP_KERNEL).unwrap();
    let text = SlabInfo(&*k).to_string();
    let mut lines = text.lines();
    assert_eq!(lines.next(), Some("slabinfo - version: 2.1"));
    assert!(lines
        .next()
        .unwrap()
        .starts_with("# name            <active_objs> <num_objs> <objsize>"));
    let line = text
        .lines()
        .find(|l| l.starts_with("kmalloc-128 "))
        .unwrap();
    let fields: Vec<&str> = line.split_whitespace().collect();
    assert_eq!(fields[1], "1", "one active object");
    assert_eq!(fields[3], "128");
    assert_eq!(text.lines().count(), 2 + 26);
    k.kfree(p.as_ptr()).unwrap();
}

#[test]
fn zalloc_from_a_cache_zeroes_the_object() {
    let m = HostMachine::new(frames(), 1);
    let k = kmem(&m);
    let p = k.kmalloc(200, GFP_KERNEL | __GFP_ZERO).unwrap();
    // SAFETY: 200 bytes allocated.
    assert!(unsafe { core::slice::from_raw_parts(p.as_ptr(), 200) }
        .iter()
        .all(|&b| b == 0));
    k.kfree(p.as_ptr()).unwrap();
}

#[test]
fn churn_keeps_every_invariant_and_returns_every_page() {
    let m = HostMachine::new(frames(), 1);
    let k = kmem(&m);
    let base = m.frames_in_use();
    let rounds = if cfg!(miri) { 60 } else { 5000 };
    let mut live = Vec::new();
    let mut x = 12345u64;
    for _ in 0..rounds {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        if x % 3 == 0 && !live.is_empty() {
            let p: NonNull<u8> = live.swap_remove((x as usize / 3) % live.len());
            k.kfree(p.as_ptr()).unwrap();
        } else {
            let size = 1 + (x as usize >> 8) % 3000;
            live.push(k.kmalloc(size, GFP_KERNEL).unwrap());
        }
    }
    k.check_invariants().unwrap();
    for p in live {
        k.kfree(p.as_ptr()).unwrap();
    }
    k.shrink_all();
    assert_eq!(m.frames_in_use(), base);
}

#[test]
fn destroy_refuses_while_another_cpu_caches_objects_until_it_drains() {
    // Only on a platform that cannot run work on the other CPU: one that
    // can is drained by destroy itself (the next test).
    let host = HostMachine::new(frames(), 2);
    let k = Kmem::new(LocalOnly::new(&host), KmemConfig::default()).unwrap();
    HostMachine::set_thread_cpu(0);
    let id = k
        .kmem_cache_create("percpu", 64, 0, SlabFlags::empty(), None)
        .unwrap();
    let (to_main, from_worker) = std::sync::mpsc::channel();
    let (to_worker, from_main) = std::sync::mpsc::channel::<()>();
    let k = &k;
    thread::scope(|s| {
        s.spawn(move || {
            HostMachine::set_thread_cpu(1);
            let p = k.kmem_cache_alloc(id, GFP_KERNEL).unwrap();
            // SAFETY: this thread holds `p` and gives it up.
            unsafe { k.kmem_cache_free(id, p.as_ptr()) }.unwrap();
            to_main.send(()).unwrap();
            from_main.recv().unwrap();
            k.drain_local();
        });
        from_worker.recv().unwrap();
        assert_eq!(k.flush_all(), 1, "CPU 1 cannot be reached");
        // SAFETY: the worker is parked on `from_main` and touches the
        // cache again only after this call returns.
        let err = unsafe { k.kmem_cache_destroy(id) }.unwrap_err();
        assert!(matches!(
            err,
            SlabError::CachedElsewhere {
                cache: "percpu",
                objects: 1..
            }
        ));
        to_worker.send(()).unwrap();
    });
    // SAFETY: the worker has been joined; nothing else uses the cache.
    unsafe { k.kmem_cache_destroy(id) }.unwrap();
}

#[test]
fn destroy_drains_every_cpu_the_platform_can_reach() {
    let m = HostMachine::new(frames(), 2);
    let k = shared_kmem(&m);
    let before = m.frames_in_use();
    HostMachine::set_thread_cpu(0);
    let id = k
        .kmem_cache_create("percpu", 64, 0, SlabFlags::empty(), None)
        .unwrap();
    let k = &k;
    thread::scope(|s| {
        s.spawn(move || {
            HostMachine::set_thread_cpu(1);
            let p = k.kmem_cache_alloc(id, GFP_KERNEL).unwrap();
            // SAFETY: this thread holds `p` and gives it up.
            unsafe { k.kmem_cache_free(id, p.as_ptr()) }.unwrap();
        });
    });
    assert!(
        k.kmem_cache_stats(id).unwrap().cached_objs > 0,
        "CPU 1 caches"
    );
    // SAFETY: the worker has been joined; nothing else uses the cache.
    unsafe { k.kmem_cache_destroy(id) }.unwrap();
    assert_eq!(m.frames_in_use(), before, "slab and descriptor returned");
}

#[test]
fn an_off_slab_header_is_the_allocators_own_and_kfree_refuses_it() {
    let m = HostMachine::new(frames(), 1);
    let k = kmem(&m);
    let p = k.kmalloc(5000, GFP_KERNEL).unwrap();
    assert!(
        k.kmem_cache_info(k.kmem_cache_of(p.as_ptr()).unwrap().cache().unwrap())
            .unwrap()
            .off_slab
    );
    let word = m.owner(m.ptr_to_pfn(p.as_ptr()).unwrap()).unwrap();
    assert_eq!(word.tag(), Some(OwnerTag::Slab));
    let header = m.virt_to_ptr(VirtAddr::new(word.payload()));
    assert!(matches!(
        k.kfree(header),
        Err(SlabError::InvalidPointer { .. })
    ));
    k.kfree(p.as_ptr()).unwrap();
    k.check_invariants().unwrap();
}

#[test]
fn a_slab_header_is_twelve_words_plus_a_state_byte_per_object() {
    // Eleven words of lists, counters, the fresh cursor and pointers, and
    // the magic that `kfree` checks before trusting the rest.
    assert_eq!(slab_header_bytes(), 12 * core::mem::size_of::<usize>());
    let m = HostMachine::new(frames(), 1);
    let k = kmem(&m);
    let info = k
        .kmem_cache_info(k.kmalloc_slab(64, GFP_KERNEL).unwrap())
        .unwrap();
    // Each object costs its 64 bytes and a state byte: 61 objects per
    // page with 8-byte words (a 96-byte header), 62 with 4-byte words
    // (48 bytes), as on i386.
    let expected = (PAGE_SIZE - slab_header_bytes()) / (64 + 1);
    assert_eq!(expected, if WORD_BYTES == 8 { 61 } else { 62 });
    assert_eq!(info.objects_per_slab, expected);
    assert!(!info.off_slab);
}

#[test]
fn a_failed_boot_returns_every_page_it_took() {
    let m = HostMachine::new(frames(), 1);
    m.fail_after(7);
    assert!(matches!(
        Kmem::new(&m, KmemConfig::default()),
        Err(SlabError::Page(_))
    ));
    assert_eq!(m.frames_in_use(), 0);
}

#[test]
fn ksize_of_a_freed_object_is_a_double_free_error() {
    let m = HostMachine::new(frames(), 1);
    let k = kmem(&m);
    let p = k.kmalloc(40, GFP_KERNEL).unwrap();
    k.kfree(p.as_ptr()).unwrap();
    assert!(matches!(
        k.ksize(p.as_ptr()),
        Err(SlabError::DoubleFree { .. })
    ));
}

#[test]
fn a_cache_id_of_another_kmem_is_refused_even_in_the_same_slot() {
    let m = HostMachine::new(frames(), 1);
    let (k1, k2) = (kmem(&m), kmem(&m));
    // Each allocator's first cache after its kmalloc caches: the same
    // table slot (and generation), with different object sizes.
    let small = k1
        .kmem_cache_create("small", 64, 0, SlabFlags::empty(), None)
        .unwrap();
    let large = k2
        .kmem_cache_create("large", 256, 0, SlabFlags::empty(), None)
        .unwrap();
    assert_ne!(small, large, "a handle names its allocator");
    let p = k2.kmem_cache_alloc(large, GFP_KERNEL).unwrap();
    let q = k1.kmem_cache_alloc(small, GFP_KERNEL).unwrap();
    let before = (
        m.frames_in_use(),
        k1.kmem_cache_stats(small).unwrap(),
        k2.kmem_cache_stats(large).unwrap(),
    );
    // k1's handles, kmalloc's included, given to k2 (and k2's to k1).
    let foreign = [small, k1.kmalloc_slab(64, GFP_KERNEL).unwrap()];
    for id in foreign {
        assert_eq!(
            k2.kmem_cache_alloc(id, GFP_KERNEL),
            Err(SlabError::NoSuchCache)
        );
        assert_eq!(
            k2.kmem_cache_free(id, p.as_ptr()),
            Err(SlabError::NoSuchCache)
        );
        assert_eq!(k2.kmem_cache_info(id), Err(SlabError::NoSuchCache));
        assert_eq!(k2.kmem_cache_stats(id), Err(SlabError::NoSuchCache));
        assert_eq!(k2.kmem_cache_shrink(id), Err(SlabError::NoSuchCache));
        assert_eq!(k2.kmem_cache_validate(id), Err(SlabError::NoSuchCache));
        assert!(matches!(
            k2.kmem_cache_last_report(id),
            Err(SlabError::NoSuchCache)
        ));
        assert_eq!(k2.kmem_cache_destroy(id), Err(SlabError::NoSuchCache));
    }
    assert_eq!(
        k1.kmem_cache_free(large, q.as_ptr()),
        Err(SlabError::NoSuchCache)
    );
    assert_eq!(k1.kmem_cache_destroy(large), Err(SlabError::NoSuchCache));
    assert_eq!(
        (
            m.frames_in_use(),
            k1.kmem_cache_stats(small).unwrap(),
            k2.kmem_cache_stats(large).unwrap(),
        ),
        before,
        "the refusals changed nothing"
    );
    // Each allocator's own handle still names its own cache.
    assert_eq!(k2.kmem_cache_info(large).unwrap().object_size, 256);
    assert_eq!(k1.kmem_cache_info(small).unwrap().object_size, 64);
    k2.kmem_cache_free(large, p.as_ptr()).unwrap();
    k1.kmem_cache_free(small, q.as_ptr()).unwrap();
    k2.kmem_cache_destroy(large).unwrap();
    k1.kmem_cache_destroy(small).unwrap();
    k1.check_invariants().unwrap();
    k2.check_invariants().unwrap();
}

#[test]
fn a_cache_id_of_a_destroyed_cache_is_refused() {
    let m = HostMachine::new(frames(), 1);
    let k = kmem(&m);
    let old = k
        .kmem_cache_create("old", 64, 0, SlabFlags::empty(), None)
        .unwrap();
    k.kmem_cache_destroy(old).unwrap();
    // The slot is reused by a cache of the same size.
    let new = k
        .kmem_cache_create("new", 64, 0, SlabFlags::empty(), None)
        .unwrap();
    assert_ne!(old, new);
    let p = k.kmem_cache_alloc(new, GFP_KERNEL).unwrap();
    let before = (m.frames_in_use(), k.kmem_cache_stats(new).unwrap());
    assert_eq!(
        k.kmem_cache_alloc(old, GFP_KERNEL),
        Err(SlabError::NoSuchCache)
    );
    assert_eq!(
        k.kmem_cache_free(old, p.as_ptr()),
        Err(SlabError::NoSuchCache)
    );
    assert_eq!(k.kmem_cache_info(old), Err(SlabError::NoSuchCache));
    assert_eq!(k.kmem_cache_stats(old), Err(SlabError::NoSuchCache));
    assert_eq!(k.kmem_cache_shrink(old), Err(SlabError::NoSuchCache));
    assert_eq!(k.kmem_cache_destroy(old), Err(SlabError::NoSuchCache));
    assert_eq!(
        (m.frames_in_use(), k.kmem_cache_stats(new).unwrap()),
        before
    );
    assert_eq!(k.kmem_cache_info(new).unwrap().name, "new");
    k.kmem_cache_free(new, p.as_ptr()).unwrap();
    k.kmem_cache_destroy(new).unwrap();
    k.check_invariants().unwrap();
}

#[test]
fn sizes_near_usize_max_are_refused_with_bad_geometry_and_change_nothing() {
    fn ctor(_: NonNull<u8>) {}
    let flag_sets = [
        SlabFlags::empty(),
        SLAB_POISON,
        SLAB_RED_ZONE,
        SLAB_STORE_USER,
        SlabFlags::DEBUG,
        SlabFlags::DEBUG | SLAB_HWCACHE_ALIGN,
    ];
    for slub_debug in flag_sets {
        let m = HostMachine::new(frames(), 1);
        let k = SoleUser::new(
            &m,
            KmemConfig {
                slub_debug,
                seed: 3,
                fine_classes: false,
            },
        );
        let before = m.frames_in_use();
        for size in [usize::MAX, usize::MAX - 7] {
            for flags in flag_sets {
                for c in [None, Some(ctor as Ctor)] {
                    let r = k.kmem_cache_create("huge", size, 0, flags, c);
                    assert!(
                        matches!(r, Err(SlabError::BadGeometry { size: s, .. }) if s == size),
                        "size {size:#x}, {flags:?}, slub_debug {slub_debug:?}: {r:?}"
                    );
                }
            }
        }
        assert_eq!(m.frames_in_use(), before);
        k.check_invariants().unwrap();
        let text = SlabInfo(&*k).to_string();
        assert_eq!(text.lines().count(), 2 + 26, "no cache was made");
    }
}

#[test]
fn a_slab_header_is_verified_before_it_is_trusted() {
    let m = HostMachine::new(frames(), 1);
    let k = kmem(&m);
    let pages = m.alloc_frames(GFP_KERNEL, Order::ZERO).unwrap();
    let pfn = pages.pfn();
    let page = m.pfn_to_ptr(pfn).unwrap().as_ptr();
    // SAFETY: the test holds the page, `PAGE_SIZE` bytes of the machine.
    unsafe { page.write_bytes(0, PAGE_SIZE) };
    let own = m.pfn_to_virt(pfn).unwrap().as_usize();
    let forged = OwnerWord::new(OwnerTag::Slab, own).unwrap();
    // SAFETY: this deliberately breaks `set_owner`'s promise for a `Slab`
    // word (that it names a live slab header of the reading allocator) to
    // prove the allocator checks a header's magic before trusting it: the
    // word names the page itself, zero-filled memory the test holds and
    // nothing else touches, so every read the check makes is defined
    // (all-zero bytes are a valid `SlabHeader` value), just not a header.
    unsafe { m.set_owner(pfn, forged) }.unwrap();
    let before = m.frames_in_use();
    for offset in [0, 8, 88, 128, PAGE_SIZE - 8] {
        let p = page.wrapping_add(offset);
        assert!(
            matches!(k.kfree(p), Err(SlabError::InvalidPointer { .. })),
            "kfree at offset {offset}"
        );
        assert!(matches!(k.ksize(p), Err(SlabError::InvalidPointer { .. })));
        assert!(matches!(
            k.kmem_cache_of(p),
            Err(SlabError::InvalidPointer { .. })
        ));
        assert!(matches!(
            k.krealloc(p, 64, GFP_KERNEL),
            Err(SlabError::InvalidPointer { .. })
        ));
    }
    // SAFETY: the page is the test's; nothing else writes it.
    let bytes = unsafe { core::slice::from_raw_parts(page, PAGE_SIZE) };
    assert!(bytes.iter().all(|&b| b == 0), "nothing was written");
    assert_eq!(m.frames_in_use(), before);
    k.check_invariants().unwrap();
    assert_eq!(k.internal_errors(), 0);
    // SAFETY: clearing the word of a frame the test holds.
    unsafe { m.set_owner(pfn, OwnerWord::NONE) }.unwrap();
    m.free_frames(pages).unwrap();
}

#[test]
fn memory_comes_back_after_cross_cpu_frees_flush_all_and_shrink_all() {
    const THREADS: usize = 4;
    // Objects of 512 bytes and more keep their slab header off the slab,
    // in a small kmalloc object; 20_000 takes whole pages.
    const SIZES: [usize; 9] = [600, 1024, 3000, 64, 8, 96, 128, 5000, 20_000];
    let m = HostMachine::new(frames(), THREADS);
    let k = shared_kmem(&m);
    let baseline = m.frames_in_use();
    let rounds = if cfg!(miri) { 10 } else { 2000 };
    // Objects on offer to other threads: (allocating thread, size, object).
    let pool: Mutex<Vec<(usize, usize, Held)>> = Mutex::new(Vec::new());
    let cross_frees = AtomicUsize::new(0);
    thread::scope(|s| {
        for t in 0..THREADS {
            let (k, pool, cross_frees) = (&k, &pool, &cross_frees);
            s.spawn(move || {
                HostMachine::set_thread_cpu(t);
                let mut mine = VecDeque::new();
                for r in 0..rounds {
                    let size = SIZES[(r * 7 + t) % SIZES.len()];
                    let p = k.kmalloc(size, GFP_KERNEL).unwrap();
                    // SAFETY: a fresh object of at least `size` bytes.
                    unsafe { p.as_ptr().write_bytes(t as u8, size) };
                    if r % 2 == 0 {
                        pool.lock().unwrap().push((t, size, Held(p)));
                    } else {
                        mine.push_back((size, p));
                    }
                    let theirs = {
                        let mut pool = pool.lock().unwrap();
                        let at = pool.iter().position(|&(by, _, _)| by != t);
                        at.map(|i| pool.swap_remove(i))
                    };
                    if let Some((by, size, Held(q))) = theirs {
                        // SAFETY: `q` was filled by its allocator and moved
                        // to this thread through the pool.
                        let last = unsafe { q.as_ptr().add(size - 1).read() };
                        assert_eq!(last, by as u8, "contents kept across CPUs");
                        // SAFETY: taken out of the pool, this thread alone
                        // holds `q`, and gives it up.
                        unsafe { k.kfree(q.as_ptr()) }.unwrap();
                        cross_frees.fetch_add(1, Ordering::Relaxed);
                    }
                    if mine.len() > 16 {
                        let (_, p) = mine.pop_front().unwrap();
                        // SAFETY: this thread allocated `p`, never shared
                        // it, and gives it up.
                        unsafe { k.kfree(p.as_ptr()) }.unwrap();
                    }
                }
                for (_, p) in mine {
                    // SAFETY: as above.
                    unsafe { k.kfree(p.as_ptr()) }.unwrap();
                }
            });
        }
    });
    for (_, _, Held(p)) in pool.into_inner().unwrap() {
        // SAFETY: the workers are joined; the pool's objects are ours.
        unsafe { k.kfree(p.as_ptr()) }.unwrap();
    }
    assert!(cross_frees.into_inner() > 0);
    assert_eq!(k.flush_all(), 0, "the host machine reaches every CPU");
    k.shrink_all();
    for id in kmalloc_caches(&k) {
        let s = k.kmem_cache_stats(id).unwrap();
        let name = k.kmem_cache_info(id).unwrap().name;
        assert_eq!(
            (s.active_objs, s.cached_objs, s.num_slabs),
            (0, 0, 0),
            "{name}"
        );
    }
    assert_eq!(m.frames_in_use(), baseline, "every page came back");
    assert_eq!(k.internal_errors(), 0);
    k.check_invariants().unwrap();
}

#[test]
fn off_slab_header_frees_do_not_refill_a_drained_cpu_array() {
    let m = HostMachine::new(frames(), 2);
    let k = kmem(&m);
    let baseline = m.frames_in_use();
    let n = if cfg!(miri) { 12 } else { 200 };
    // A cache of 15 objects per slab; it and kmalloc's large classes keep
    // their slab headers in objects of one kmalloc class: kmalloc-128 with
    // 8-byte words (12 words and 15 state bytes, 111 bytes), kmalloc-64
    // with 4-byte words (63 bytes), as on i386.
    let big = k
        .kmem_cache_create("off_slab_520", 520, 8, SlabFlags::empty(), None)
        .unwrap();
    let with_big = m.frames_in_use();
    let header_class = |id| {
        let info = k.kmem_cache_info(id).unwrap();
        assert!(info.off_slab, "{}", info.name);
        k.kmalloc_slab(slab_header_bytes() + info.objects_per_slab, GFP_KERNEL)
            .unwrap()
    };
    let headers = header_class(big);
    let expected = if WORD_BYTES == 8 {
        "kmalloc-128"
    } else {
        "kmalloc-64"
    };
    assert_eq!(k.kmem_cache_info(headers).unwrap().name, expected);
    let k1k = k.kmalloc_slab(1024, GFP_KERNEL).unwrap();
    assert_eq!(header_class(k1k), headers);
    let k96 = k.kmalloc_slab(96, GFP_KERNEL).unwrap();
    let k128 = k.kmalloc_slab(128, GFP_KERNEL).unwrap();
    // The test's own objects of the header class (kmalloc-128 holds n).
    let own_in_headers = [k96, k128].iter().filter(|&&id| id == headers).count() * n;
    let mut objs = Vec::new();
    for i in 0..n {
        HostMachine::set_thread_cpu(i % 2);
        let size = [600, 1024, 3000, 5000][i % 4];
        objs.push((None, k.kmalloc(size, GFP_KERNEL).unwrap()));
        objs.push((Some(big), k.kmem_cache_alloc(big, GFP_KERNEL).unwrap()));
        objs.push((None, k.kmalloc(96, GFP_KERNEL).unwrap()));
        objs.push((None, k.kmalloc(128, GFP_KERNEL).unwrap()));
    }
    // The headers are live objects of their class, beyond the test's.
    assert!(k.kmem_cache_stats(headers).unwrap().active_objs > own_in_headers);
    for (i, (cache, p)) in objs.into_iter().enumerate() {
        // Frees land in both CPUs' arrays.
        HostMachine::set_thread_cpu(i % 3 % 2);
        match cache {
            Some(id) => k.kmem_cache_free(id, p.as_ptr()).unwrap(),
            None => k.kfree(p.as_ptr()).unwrap(),
        }
    }
    for id in [k96, k128, headers] {
        assert!(
            k.kmem_cache_stats(id).unwrap().cached_objs > 0,
            "arrays in use"
        );
    }
    k.shrink_all();
    for id in kmalloc_caches(&k).into_iter().chain([big]) {
        let s = k.kmem_cache_stats(id).unwrap();
        let name = k.kmem_cache_info(id).unwrap().name;
        assert_eq!((s.cached_objs, s.num_slabs), (0, 0), "{name}");
    }
    assert_eq!(m.frames_in_use(), with_big, "only the descriptor is left");
    k.kmem_cache_destroy(big).unwrap();
    assert_eq!(m.frames_in_use(), baseline);
    assert_eq!(k.internal_errors(), 0);
    k.check_invariants().unwrap();
}

/// Two threads on distinct CPUs `kfree` one `size`-byte object at once,
/// `rounds` times, while `keep`, another object of the same slab, stays
/// allocated; checks that of each pair exactly one free succeeded and the
/// other was refused as a double free, and returns how many each side won.
/// `debug` says the kmalloc caches are debug caches (which free straight
/// to the slab, under the node lock). A size above the kmalloc classes
/// races frees of a large kmalloc, whose loser may also find the block
/// already gone (an invalid pointer by then).
fn race_double_frees(
    k: &Kmem<&HostMachine>,
    debug: bool,
    rounds: usize,
    size: usize,
) -> [usize; 2] {
    let class = k.kmalloc_slab(size, GFP_KERNEL);
    let slab_bytes = match class {
        Some(id) => k.kmem_cache_info(id).unwrap().pages_per_slab * PAGE_SIZE,
        None => size.next_power_of_two(),
    };
    // Slabs are naturally aligned blocks of the host machine.
    let slab_of = |p: *const u8| p as usize / slab_bytes;
    let keep = k.kmalloc(size, GFP_KERNEL).unwrap();
    let keep_slab = slab_of(keep.as_ptr());
    let slot = AtomicPtr::new(ptr::null_mut());
    let barrier = Barrier::new(2);
    let (slot, barrier) = (&slot, &barrier);
    // SAFETY (for the two racing `kfree` calls below): the pointer
    // contract holds for both. Thread 0 allocates `p` and both threads
    // give it up; neither uses it afterwards. Between the two barriers
    // nobody allocates (thread 0 allocates only before the first), so `p`
    // cannot be handed out again while either call runs. And the slab
    // around `p` is never discarded meanwhile: on the fast path the winner
    // keeps `p` in its CPU's array, and on a debug cache (which frees
    // straight to the slab) `p` is raced only if it shares the slab of
    // `keep`, which stays allocated, so the slab never becomes empty.
    // (A round whose `p` is not raced publishes null, a no-op free for
    // both, and fails the test after the join instead of hanging it.)
    let ([a, b], unraced) = thread::scope(|s| {
        let racers = [0, 1].map(|cpu| {
            s.spawn(move || {
                HostMachine::set_thread_cpu(cpu);
                let mut results = Vec::with_capacity(rounds);
                let mut unraced = Vec::new();
                for _ in 0..rounds {
                    if cpu == 0 {
                        let p = match k.kmalloc(size, GFP_KERNEL) {
                            Ok(p) if !debug || slab_of(p.as_ptr()) == keep_slab => p.as_ptr(),
                            other => {
                                // The address, for the report.
                                unraced.push(other.map(|p| p.as_ptr() as usize));
                                ptr::null_mut()
                            }
                        };
                        slot.store(p, Ordering::Release);
                    }
                    barrier.wait();
                    let p = slot.load(Ordering::Acquire);
                    // SAFETY: see above.
                    results.push(unsafe { k.kfree(p) });
                    barrier.wait();
                }
                (results, unraced)
            })
        });
        let [(a, unraced), (b, _)] = racers.map(|r| r.join().unwrap());
        ([a, b], unraced)
    });
    assert!(unraced.is_empty(), "rounds not raced: {unraced:?}");
    let refused = |e: &SlabError| match e {
        SlabError::DoubleFree { .. } => true,
        SlabError::InvalidPointer { .. } => class.is_none(),
        _ => false,
    };
    let mut wins = [0, 0];
    for (round, pair) in a.iter().zip(&b).enumerate() {
        match pair {
            (Ok(()), Err(e)) if refused(e) => wins[0] += 1,
            (Err(e), Ok(())) if refused(e) => wins[1] += 1,
            other => panic!("round {round}: {other:?}"),
        }
    }
    // SAFETY: the racers are joined; this thread holds `keep`.
    unsafe { k.kfree(keep.as_ptr()) }.unwrap();
    if let Some(id) = class {
        assert_eq!(k.kmem_cache_stats(id).unwrap().active_objs, 0);
    }
    k.check_invariants().unwrap();
    assert_eq!(k.internal_errors(), 0);
    wins
}

fn race_rounds() -> usize {
    if cfg!(miri) {
        20
    } else {
        20_000
    }
}

#[test]
fn racing_double_frees_let_exactly_one_win() {
    let m = HostMachine::new(frames(), 2);
    let k = shared_kmem(&m);
    let start = Instant::now();
    let wins = race_double_frees(&k, false, race_rounds(), 64);
    std::eprintln!(
        "racing double frees (fast path): {} rounds in {:?}, wins {wins:?}",
        race_rounds(),
        start.elapsed()
    );
}

#[test]
fn racing_double_frees_on_a_debug_cache_let_exactly_one_win() {
    let m = HostMachine::new(frames(), 2);
    let config = KmemConfig {
        slub_debug: SLAB_POISON,
        seed: 11,
        fine_classes: false,
    };
    let k = Kmem::new(&m, config).unwrap();
    let start = Instant::now();
    let wins = race_double_frees(&k, true, race_rounds(), 64);
    std::eprintln!(
        "racing double frees (debug cache): {} rounds in {:?}, wins {wins:?}",
        race_rounds(),
        start.elapsed()
    );
}

/// The same race on a large kmalloc, whose free claims the block's head
/// owner word by compare-and-swap (the loom model explores its window;
/// this runs it on real threads).
#[test]
fn racing_double_frees_of_a_large_kmalloc_let_exactly_one_win() {
    let m = HostMachine::new(frames(), 2);
    let k = shared_kmem(&m);
    let base = m.frames_in_use();
    let rounds = race_rounds();
    let wins = race_double_frees(&k, false, rounds, KMALLOC_MAX_CACHE_SIZE + 1);
    std::eprintln!("racing double frees (large kmalloc): {rounds} rounds, wins {wins:?}");
    assert_eq!(m.frames_in_use(), base, "every block back once");
}

#[test]
fn kmalloc_global_deallocs_are_never_refused() {
    static KMEM: OnceLock<Kmem<HostMachine>> = OnceLock::new();
    static GLOBAL: KmallocGlobal<HostMachine> = KmallocGlobal::new(|| KMEM.get());
    let k = KMEM
        .get_or_init(|| Kmem::new(HostMachine::new(frames(), 2), KmemConfig::default()).unwrap());
    let baseline = k.backend().frames_in_use();
    let rounds = if cfg!(miri) { 60 } else { 5000 };
    let mut live: Vec<(*mut u8, Layout)> = Vec::new();
    let mut x = 0x9e37_79b9_u64;
    for _ in 0..rounds {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let size = match x % 16 {
            0 => 9000 + (x >> 8) as usize % 20_000,
            _ => 1 + (x >> 8) as usize % 3000,
        };
        let align = 1 << ((x >> 40) % 8);
        let layout = Layout::from_size_align(size, align).unwrap();
        match x % 5 {
            0 | 1 if !live.is_empty() => {
                let (p, l) = live.swap_remove((x >> 20) as usize % live.len());
                // SAFETY: `p` was allocated by `GLOBAL` with `l` and is
                // given up here.
                unsafe { GLOBAL.dealloc(p, l) };
            }
            2 if !live.is_empty() => {
                let i = (x >> 20) as usize % live.len();
                let (p, l) = live[i];
                // SAFETY: `p` was allocated by `GLOBAL` with `l`; on
                // success it is given up for the returned block.
                let q = unsafe { GLOBAL.realloc(p, l, size) };
                assert!(!q.is_null());
                live[i] = (q, Layout::from_size_align(size, l.align()).unwrap());
            }
            _ => {
                // SAFETY: a non-zero size.
                let p = unsafe { GLOBAL.alloc(layout) };
                assert!(!p.is_null() && p as usize % align == 0);
                live.push((p, layout));
            }
        }
    }
    k.check_invariants().unwrap();
    for (p, l) in live {
        // SAFETY: allocated by `GLOBAL` with `l`, given up here.
        unsafe { GLOBAL.dealloc(p, l) };
    }
    k.shrink_all();
    // A refused dealloc would leave its object allocated (and its pages
    // held): `dealloc` cannot report it.
    for id in kmalloc_caches(k) {
        let s = k.kmem_cache_stats(id).unwrap();
        let name = k.kmem_cache_info(id).unwrap().name;
        assert_eq!((s.active_objs, s.num_slabs), (0, 0), "{name}");
    }
    assert_eq!(
        k.backend().frames_in_use(),
        baseline,
        "every page came back"
    );
    assert_eq!(k.internal_errors(), 0);
    k.check_invariants().unwrap();
}

#[test]
fn kmem_cache_shrink_flushes_every_cpus_array_of_the_cache() {
    let m = HostMachine::new(frames(), 2);
    let k = shared_kmem(&m);
    HostMachine::set_thread_cpu(0);
    let id = k
        .kmem_cache_create("remote", 64, 0, SlabFlags::empty(), None)
        .unwrap();
    let before = m.frames_in_use();
    let n = if cfg!(miri) { 10 } else { 100 };
    let k = &k;
    thread::scope(|s| {
        s.spawn(move || {
            HostMachine::set_thread_cpu(1);
            let objs: Vec<_> = (0..n)
                .map(|_| k.kmem_cache_alloc(id, GFP_KERNEL).unwrap())
                .collect();
            for p in objs {
                // SAFETY: this thread allocated `p`, never shared it, and
                // gives it up.
                unsafe { k.kmem_cache_free(id, p.as_ptr()) }.unwrap();
            }
        });
    });
    assert!(k.kmem_cache_stats(id).unwrap().cached_objs > 0);
    k.drain_local();
    assert!(
        k.kmem_cache_stats(id).unwrap().cached_objs > 0,
        "drain_local drains only the calling CPU"
    );
    k.kmem_cache_shrink(id).unwrap();
    let s = k.kmem_cache_stats(id).unwrap();
    assert_eq!((s.cached_objs, s.num_slabs), (0, 0));
    assert_eq!(m.frames_in_use(), before);
    // SAFETY: the worker is joined; nothing else uses the cache.
    unsafe { k.kmem_cache_destroy(id) }.unwrap();
}

#[test]
fn an_absurd_cpu_count_is_an_error_not_an_overflow() {
    let m = HostMachine::new(frames(), 1);
    for nr_cpus in [usize::MAX, usize::MAX / 2, usize::MAX / 64 + 1] {
        let platform = LocalOnly { host: &m, nr_cpus };
        let made = Kmem::new(platform, KmemConfig::default());
        assert!(
            matches!(made, Err(SlabError::Page(kmm_api::Error::BadCpuCount { nr_cpus: n, .. })) if n == nr_cpus),
            "{nr_cpus} CPUs: {:?}",
            made.err()
        );
        assert_eq!(m.frames_in_use(), 0, "a failed boot gives everything back");
    }
}

/// Walks over every cache (the shrinker the page allocator may call at any
/// time, reports, the checker) run while another thread creates and
/// destroys caches: destroy unpublishes a cache under the table lock the
/// walks hold, so no walk reads a freed descriptor.
#[test]
fn walks_over_the_caches_never_read_a_destroyed_descriptor() {
    use kmm_api::Shrinker;
    let m = HostMachine::new(frames(), 2);
    let k = Kmem::new(&m, KmemConfig::default()).unwrap();
    let rounds = if cfg!(miri) { 3 } else { 2_000 };
    let done = core::sync::atomic::AtomicBool::new(false);
    std::thread::scope(|s| {
        s.spawn(|| {
            HostMachine::set_thread_cpu(0);
            for _ in 0..rounds {
                let id = k
                    .kmem_cache_create("short-lived", 200, 8, SlabFlags::empty(), None)
                    .unwrap();
                let p = k.kmem_cache_alloc(id, GFP_KERNEL).unwrap();
                // SAFETY: this thread holds `p`, and is the cache's only
                // user (the walks touch it only under the table lock).
                unsafe {
                    k.kmem_cache_free(id, p.as_ptr()).unwrap();
                    k.kmem_cache_destroy(id).unwrap();
                }
            }
            done.store(true, core::sync::atomic::Ordering::Release);
        });
        HostMachine::set_thread_cpu(1);
        while !done.load(core::sync::atomic::Ordering::Acquire) {
            k.scan_objects(GFP_KERNEL, usize::MAX);
            let _ = SlabInfo(&k).to_string();
            k.check_invariants().unwrap();
        }
    });
    assert_eq!(k.internal_errors(), 0);
}

#[test]
fn slab_pages_split_by_reclaim_account_and_drop_slab_returns_every_page() {
    let m = HostMachine::new(frames(), 2);
    let k = kmem(&m);
    let dentry = k
        .kmem_cache_create("dentry", 192, 8, SLAB_RECLAIM_ACCOUNT, None)
        .unwrap();
    let task = k
        .kmem_cache_create("task_struct", 700, 8, SlabFlags::empty(), None)
        .unwrap();
    // Cache descriptors are not slab pages: the baseline is taken after.
    let base = m.frames_in_use();
    assert_eq!(k.nr_slab_pages(), NrSlabPages::default());

    let rounds = if cfg!(miri) { 20 } else { 300 };
    let mut dentries = Vec::new();
    let mut others = Vec::new();
    for i in 0..rounds {
        HostMachine::set_thread_cpu(i % 2);
        dentries.push(k.kmem_cache_alloc(dentry, GFP_KERNEL).unwrap());
        others.push(k.kmem_cache_alloc(task, GFP_KERNEL).unwrap().as_ptr());
        others.push(k.kmalloc(1 + i * 37 % 3000, GFP_KERNEL).unwrap().as_ptr());
    }
    let large = k.kmalloc(5 * PAGE_SIZE, GFP_KERNEL).unwrap();
    let large_pages = get_order_pages(5 * PAGE_SIZE);

    let pages = k.nr_slab_pages();
    let per_cache = |id| {
        let info = k.kmem_cache_info(id).unwrap();
        k.kmem_cache_stats(id).unwrap().num_slabs * info.pages_per_slab
    };
    assert_eq!(pages.nr_slab_reclaimable, per_cache(dentry));
    let unreclaimable: usize =
        kmalloc_caches(&k).into_iter().map(per_cache).sum::<usize>() + per_cache(task);
    assert_eq!(pages.nr_slab_unreclaimable, unreclaimable + large_pages);
    assert_eq!(
        pages.total(),
        m.frames_in_use() - base,
        "every page counted once"
    );

    for p in dentries {
        k.kmem_cache_free(dentry, p.as_ptr()).unwrap();
    }
    k.kfree(large.as_ptr()).unwrap();
    assert_eq!(
        k.nr_slab_pages().nr_slab_unreclaimable,
        unreclaimable,
        "the large kmalloc's pages went straight back"
    );
    for p in others {
        k.kfree(p).unwrap();
    }
    // drop_slab: one call, every cache, every CPU.
    k.shrink_all();
    assert_eq!(k.nr_slab_pages(), NrSlabPages::default());
    assert_eq!(m.frames_in_use(), base, "every slab page came back");
    k.check_invariants().unwrap();
}

/// Pages of the block a kmalloc of `bytes` above the largest class takes.
fn get_order_pages(bytes: usize) -> usize {
    kmm_api::get_order(bytes).unwrap().pages()
}

#[test]
fn a_cache_serves_as_an_object_source() {
    use kmm_api::ObjectSource;
    let m = HostMachine::new(frames(), 1);
    let k = kmem(&m);
    let id = k
        .kmem_cache_create("vmap_area", 40, 8, SlabFlags::empty(), None)
        .unwrap();
    let source = k.kmem.cache_objects(id).unwrap();
    assert_eq!((source.object_size(), source.object_align()), (40, 8));
    let a = source.alloc_object(GFP_KERNEL).unwrap();
    let b = source.alloc_object(GFP_KERNEL).unwrap();
    assert_ne!(a, b);
    assert_eq!(k.kmem_cache_stats(id).unwrap().active_objs, 2);
    // SAFETY: both came from this source; the second free of `a` is
    // refused as the cache refuses it.
    unsafe {
        source.free_object(a).unwrap();
        assert!(source.free_object(a).is_err());
        source.free_object(b).unwrap();
    }
    assert_eq!(k.kmem_cache_stats(id).unwrap().active_objs, 0);
}

/// SLUB's `min_partial`: a free that leaves more empty slabs than the node
/// keeps hands the surplus to the page allocator at once, every one of
/// them, with no shrink asked for. What stays after every object is freed
/// is the kept empty slabs and at most one slab per object still in the
/// CPU's array.
// Needs hundreds of slabs to mean anything, more than miri's small machine
// holds; miri runs the same discard chain through the shrink tests.
#[cfg_attr(miri, ignore)]
#[test]
fn freeing_everything_returns_every_surplus_empty_slab_without_a_shrink() {
    let m = HostMachine::new(frames(), 1);
    let k = kmem(&m);
    let id = k.kmalloc_slab(64, GFP_KERNEL).unwrap();
    let n = 20_000;
    let mut objs: Vec<_> = (0..n).map(|_| k.kmalloc(64, GFP_KERNEL).unwrap()).collect();
    // A fixed shuffle (xorshift), so frees land on slabs all over the
    // cache and each flush empties several slabs at once.
    let mut x = 0x9e37_79b9_u32;
    for i in (1..objs.len()).rev() {
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        objs.swap(i, x as usize % (i + 1));
    }
    let peak = k.kmem_cache_stats(id).unwrap().num_slabs;
    for p in objs {
        k.kfree(p.as_ptr()).unwrap();
    }
    let after = k.kmem_cache_stats(id).unwrap();
    assert_eq!(after.active_objs, 0);
    assert!(peak > 4 * (crate::node::MIN_PARTIAL + after.cached_objs));
    assert!(
        after.num_slabs <= crate::node::MIN_PARTIAL + after.cached_objs,
        "{} of {peak} slabs still held with {} objects cached",
        after.num_slabs,
        after.cached_objs
    );
    k.check_invariants().unwrap();
}

#[test]
fn kmalloc_fine_takes_kmallocs_class_without_the_fine_caches() {
    let m = HostMachine::new(if cfg!(miri) { 160 } else { 1024 }, 1);
    let coarse = Kmem::new(&m, KmemConfig::default()).unwrap();
    let fine = Kmem::new(
        &m,
        KmemConfig {
            fine_classes: true,
            ..KmemConfig::default()
        },
    )
    .unwrap();
    for (k, usable) in [(&coarse, 1024), (&fine, 640)] {
        let p = k.kmalloc_fine(632, 8, GFP_KERNEL).unwrap();
        // SAFETY: this test holds `p` and gives it up.
        unsafe {
            assert_eq!(k.ksize(p.as_ptr()).unwrap(), usable);
            k.kfree(p.as_ptr()).unwrap();
        }
        // GFP_DMA has no fine classes: kmalloc's DMA class serves.
        let d = k.kmalloc_fine(632, 8, GFP_KERNEL | GFP_DMA).unwrap();
        // SAFETY: as above.
        unsafe {
            assert_eq!(k.ksize(d.as_ptr()).unwrap(), 1024);
            k.kfree(d.as_ptr()).unwrap();
        }
    }
    let fine_lines = |k: &Kmem<&HostMachine>| {
        SlabInfo(k)
            .to_string()
            .lines()
            .filter(|l| l.starts_with("kmalloc-fine-"))
            .count()
    };
    assert_eq!((fine_lines(&coarse), fine_lines(&fine)), (0, 15));
}
