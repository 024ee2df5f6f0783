//! The per-thread magazines of [`super::HostedGlobal`] (Bonwick's magazine
//! layer, glibc's tcache): for each small class, each thread keeps a
//! bounded stack of kmalloc objects that it hands out and takes back with
//! no CPU pin, no owner look-up and no atomic operation. kmalloc counts
//! the objects a magazine holds as allocated; they move between a
//! magazine and kmalloc only in batches.
//!
//! Owns the calling thread's magazines and the process-wide count of what
//! all threads' magazines hold. Must never hand one object to two callers,
//! never keep an object past its thread's exit, and never let a nested
//! request (kmalloc may allocate through the global allocator while a
//! refill or flush calls it) touch a magazine: while the thread is inside
//! kmalloc for its magazines it is *busy*, and its requests go straight to
//! kmalloc. Like glibc's malloc it is not async-signal-safe: a signal
//! handler that allocates could interrupt a pop or push of its own thread.
//!
//! **Classes.** A layout with `max(size, align)` up to [`CACHED_MAX`] takes
//! the smallest class of [`CLASS_SIZE`] that holds it and whose natural
//! alignment (the largest power of two dividing the class size, as
//! kmalloc's own classes) is at least `align`. Objects of class `c` are
//! asked of kmalloc as `CLASS_SIZE[c]` bytes at that natural alignment on
//! every path (refill, and the direct path of a busy or exiting thread),
//! so each block a program holds under a layout of class `c` has at least
//! `CLASS_SIZE[c]` bytes at that alignment, whichever cache served it.
//! `HostedGlobal::realloc` keeps the rule: a block stays in place only
//! while its new layout has the same class. So `dealloc` pushes a block
//! onto its layout's class, no look-up needed, and any later request of
//! that class may have it. A block's real cache can differ (without fine
//! classes, 320 bytes come from kmalloc-512); kfree finds it when the
//! block leaves.
//!
//! **Costs.** Pop and push: a thread-local access, the class table, a few
//! loads and stores, inlined into `GlobalAlloc::alloc` and `dealloc` with
//! no call on the way ([`pop`], [`push`]): everything else (binding,
//! refills, flushes, the direct path) is out of line in [`alloc`] and
//! [`free`]. The magazines' thread-local has no destructor of its own, so
//! reaching it is a plain thread-local load with no registration check;
//! a second thread-local, [`ExitFlush`], registered when the magazines
//! are bound, flushes them at the thread's exit.
//!
//! An empty magazine takes a full batch from the process's depot (the
//! `depot` module) if it has one, else [`BATCH`] objects from kmalloc, and
//! one for the caller, in one `kmem_cache_alloc_bulk`. A push onto a full
//! magazine first gives its `BATCH` oldest to the depot, or, when the
//! depot has no room, frees them in one `kfree_bulk_trusted` (as
//! `dealloc` frees, trusting its caller). So objects one thread frees
//! serve another thread's allocations through the depot, one short lock
//! hold per batch, without passing through kmalloc. kmalloc's bulk calls pin the CPU once per run
//! of its own per-CPU array rather than once per object. The process-wide
//! count is published at those batches, not per object.
//!
//! **Bounds.** [`CAPACITY`] objects per class: at most 32 × 5,784 bytes
//! (181 KiB) per thread, whatever the program does; the depot keeps at
//! most `DEPOT_BATCHES` batches of each class (723 KiB). A thread's exit
//! (its thread-local destructor) flushes its magazines to kmalloc;
//! [`super::HostedGlobal::flush_thread_cache`] flushes the caller's at
//! once, and [`super::HostedGlobal::drain_depot`] empties the depot.
//!
//! **Binding.** A thread's magazines serve the first manager that uses
//! them and hold only its objects; a flush that empties them unbinds
//! them. A thread using a second manager meanwhile reaches it directly.

use super::depot::{Depot, DEPOT};
use super::hosted_global::HostedKmem;
use core::alloc::Layout;
use core::cell::Cell;
use core::ptr;
use kmm_api::GfpFlags;
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};

/// The largest `max(size, align)` the magazines serve: the classes up to
/// here are where a program's allocations crowd (BENCHMARKS.md, "A real
/// program"), and a full set of magazines stays near 181 KiB.
pub(super) const CACHED_MAX: usize = 1024;

/// kmalloc's classes up to 256 bytes and the fine classes above.
pub(super) const CLASS_SIZE: [usize; 16] = [
    8, 16, 32, 64, 96, 128, 192, 256, 320, 384, 448, 512, 640, 768, 896, 1024,
];

/// Objects per magazine: the slab's per-CPU arrays beneath hold 64 small
/// objects (54 from 512 bytes up); a thread's magazine is one of many a
/// CPU may run, so half that.
const CAPACITY: usize = 32;

/// Objects a refill takes and a flush at capacity returns.
pub(super) const BATCH: usize = CAPACITY / 2;

/// The smallest class holding each size in `1..=CACHED_MAX`, indexed by
/// `(size - 1) / 8` (every class size is a multiple of 8).
const CLASS_OF: [u8; CACHED_MAX / 8] = {
    let mut table = [0; CACHED_MAX / 8];
    let (mut i, mut class) = (0, 0);
    while i < table.len() {
        while CLASS_SIZE[class] < (i + 1) * 8 {
            class += 1;
        }
        table[i] = class as u8;
        i += 1;
    }
    table
};

/// The class serving `layout`, `None` where kmalloc serves it directly.
#[inline]
pub(super) fn class_of(layout: Layout) -> Option<usize> {
    let size = layout.size().max(layout.align());
    if size > CACHED_MAX {
        return None;
    }
    let mut class = usize::from(*CLASS_OF.get((size - 1) / 8)?);
    // Every class is a multiple of 8. Past 96, 192, 320, … a power-of-two
    // class at least `size` (so at least `align`) comes before CACHED_MAX
    // runs out, so `?` never gives up here.
    while CLASS_SIZE.get(class)? & (layout.align() - 1) != 0 {
        class += 1;
    }
    Some(class)
}

/// What the magazines of every thread and the depot hold, as published at
/// each thread's last refill or flush and at each depot trade (a thread's
/// pops and pushes since then move its share by less than a magazine's 32
/// objects per class). kmalloc's own statistics (`/proc/slabinfo`'s
/// active objects) count these objects as allocated.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ThreadCacheStats {
    /// Objects held.
    pub objects: usize,
    /// Their class sizes, summed.
    pub bytes: usize,
}

// The process's totals: a thread has one set of magazines whichever
// `HostedGlobal` fills them, so the count is the process's too.
static HELD_OBJECTS: AtomicUsize = AtomicUsize::new(0);
static HELD_BYTES: AtomicUsize = AtomicUsize::new(0);

/// Moves the process totals by `objects` objects of `class` (negative:
/// fewer), for what enters or leaves the depot.
pub(super) fn publish_held(objects: isize, class: usize) {
    HELD_OBJECTS.fetch_add(objects as usize, Relaxed);
    HELD_BYTES.fetch_add((objects * CLASS_SIZE[class] as isize) as usize, Relaxed);
}

/// What every thread's magazines and the depot hold.
pub(super) fn stats() -> ThreadCacheStats {
    ThreadCacheStats {
        objects: HELD_OBJECTS.load(Relaxed),
        bytes: HELD_BYTES.load(Relaxed),
    }
}

/// One class's stack: `slots[..len]` hold objects nobody else holds, the
/// most recently freed on top.
struct Magazine {
    len: Cell<usize>,
    slots: [Cell<*mut u8>; CAPACITY],
}

/// One thread's magazines.
struct ThreadCache {
    /// The manager whose objects the magazines hold, if any.
    owner: Cell<Option<&'static HostedKmem>>,
    /// Inside kmalloc for a refill or flush: the magazines are off limits.
    busy: Cell<bool>,
    /// The manager the fast paths may serve now: `owner` while bound and
    /// not busy, else null (see [`ThreadCache::reopen`]). One comparison
    /// then stands for the three tests.
    open: Cell<*const HostedKmem>,
    /// This thread's share of the process totals.
    published: Cell<ThreadCacheStats>,
    mags: [Magazine; CLASS_SIZE.len()],
}

/// The thread's exit: its magazines go back to kmalloc and are unbound.
/// Requests made from then on (later destructors) cannot bind them again
/// (`EXIT` is gone, see [`ThreadCache::serves`]) and go straight to
/// kmalloc.
struct ExitFlush;

impl Drop for ExitFlush {
    fn drop(&mut self) {
        flush();
    }
}

std::thread_local! {
    static CACHE: ThreadCache = const { ThreadCache::new() };
    static EXIT: ExitFlush = const { ExitFlush };
}

/// The size and alignment kmalloc is asked for objects of `class`: the
/// class size at its natural alignment.
fn request(class: usize) -> (usize, usize) {
    let size = CLASS_SIZE[class];
    (size, 1 << size.trailing_zeros())
}

/// An object for `class` straight from kmalloc, null if it has none.
fn direct_alloc(kmem: &HostedKmem, class: usize, gfp: GfpFlags) -> *mut u8 {
    let (size, align) = request(class);
    kmem.kmalloc_fine(size, align, gfp)
        .map_or(ptr::null_mut(), |p| p.as_ptr())
}

/// The fast path of an allocation: a block of `class` off the calling
/// thread's magazine, if it is open to `kmem` and not empty. Never calls
/// out; `None` sends the caller to [`alloc`].
#[inline(always)]
pub(super) fn pop(kmem: &'static HostedKmem, class: usize) -> Option<*mut u8> {
    CACHE.with(|cache| {
        if !ptr::eq(cache.open.get(), kmem) {
            return None;
        }
        let mag = cache.mags.get(class)?;
        let len = mag.len.get().checked_sub(1)?;
        let p = mag.slots.get(len)?.get();
        mag.len.set(len);
        Some(p)
    })
}

/// The fast path of a free: `p` onto the calling thread's magazine, if it
/// is open to `kmem` and not full. Never calls out; `false` (nothing done)
/// sends the caller to [`free`].
///
/// # Safety
///
/// As for [`free`].
#[inline(always)]
pub(super) unsafe fn push(kmem: &'static HostedKmem, class: usize, p: *mut u8) -> bool {
    CACHE.with(|cache| {
        if !ptr::eq(cache.open.get(), kmem) {
            return false;
        }
        let Some(mag) = cache.mags.get(class) else {
            return false;
        };
        let len = mag.len.get();
        let Some(slot) = mag.slots.get(len) else {
            return false;
        };
        slot.set(p);
        mag.len.set(len + 1);
        true
    })
}

/// A block of `class` for the caller when [`pop`] could not serve: the
/// magazine bound to `kmem` and refilled, else straight from kmalloc;
/// null if kmalloc has none.
#[cold]
#[inline(never)]
pub(super) fn alloc(kmem: &'static HostedKmem, class: usize, gfp: GfpFlags) -> *mut u8 {
    CACHE.with(|cache| cache.alloc(kmem, &DEPOT, class, gfp))
}

/// Takes back `p`, a block of `kmem` held under a layout of `class`, when
/// [`push`] could not: onto the calling thread's magazine (flushing half
/// of it first when full), or, where the magazines cannot take it (busy,
/// serving another manager, or past the thread's exit flush), to `direct`.
///
/// # Safety
///
/// The caller holds `p`, a block of `kmem` with at least
/// `CLASS_SIZE[class]` bytes at the class's natural alignment (see the
/// module documentation), and gives it up here.
#[cold]
#[inline(never)]
pub(super) unsafe fn free(
    kmem: &'static HostedKmem,
    class: usize,
    p: *mut u8,
    direct: impl FnOnce(*mut u8),
) {
    if !CACHE.with(|cache| cache.free(kmem, &DEPOT, class, p)) {
        direct(p);
    }
}

/// Returns every object of the calling thread's magazines to kmalloc and
/// unbinds them; the number returned.
pub(super) fn flush() -> usize {
    CACHE.with(|cache| if cache.busy.get() { 0 } else { cache.flush() })
}

impl Magazine {
    const fn new() -> Self {
        Magazine {
            len: Cell::new(0),
            slots: [const { Cell::new(ptr::null_mut()) }; CAPACITY],
        }
    }
}

impl ThreadCache {
    const fn new() -> Self {
        ThreadCache {
            owner: Cell::new(None),
            busy: Cell::new(false),
            open: Cell::new(ptr::null()),
            published: Cell::new(ThreadCacheStats {
                objects: 0,
                bytes: 0,
            }),
            mags: [const { Magazine::new() }; CLASS_SIZE.len()],
        }
    }

    /// Whether the magazines may serve `kmem` now, binding them to it if
    /// they serve nobody. Binding registers the exit flush; a thread
    /// already past it (its destructors running) is not bound.
    fn serves(&self, kmem: &'static HostedKmem) -> bool {
        if self.busy.get() {
            return false;
        }
        match self.owner.get() {
            Some(owner) => ptr::eq(owner, kmem),
            None if EXIT.try_with(|_| ()).is_ok() => {
                self.owner.set(Some(kmem));
                self.reopen();
                true
            }
            None => false,
        }
    }

    /// Enters or leaves kmalloc for the magazines (see the module
    /// documentation): while busy they are closed to every request.
    fn set_busy(&self, busy: bool) {
        self.busy.set(busy);
        self.reopen();
    }

    /// Recomputes `open` from `owner` and `busy`.
    fn reopen(&self) {
        let open = match self.owner.get() {
            Some(owner) if !self.busy.get() => ptr::from_ref(owner),
            _ => ptr::null(),
        };
        self.open.set(open);
    }

    fn alloc(
        &self,
        kmem: &'static HostedKmem,
        depot: &Depot,
        class: usize,
        gfp: GfpFlags,
    ) -> *mut u8 {
        if !self.serves(kmem) {
            return direct_alloc(kmem, class, gfp);
        }
        // `pop` could not serve, and a magazine it could not reach was
        // unbound (a flush empties it) or busy: it is empty.
        self.refill(kmem, depot, class, gfp)
    }

    /// Whether the magazine took `p`.
    fn free(&self, kmem: &'static HostedKmem, depot: &Depot, class: usize, p: *mut u8) -> bool {
        if !self.serves(kmem) {
            return false;
        }
        let mag = &self.mags[class];
        let mut len = mag.len.get();
        if len == CAPACITY {
            len = self.flush_batch(kmem, depot, class);
        }
        mag.slots[len].set(p);
        mag.len.set(len + 1);
        true
    }

    /// An empty magazine's refill: a batch from the depot if it has one
    /// (an object for the caller, the rest for the magazine), else an
    /// object for the caller and up to `BATCH` for the magazine from
    /// kmalloc; the caller's is null if kmalloc has none.
    #[cold]
    #[inline(never)]
    fn refill(
        &self,
        kmem: &'static HostedKmem,
        depot: &Depot,
        class: usize,
        gfp: GfpFlags,
    ) -> *mut u8 {
        let mag = &self.mags[class];
        if let Some(batch) = depot.take(kmem, class) {
            for (slot, &p) in mag.slots.iter().zip(&batch[1..]) {
                slot.set(p);
            }
            mag.len.set(BATCH - 1);
            self.publish();
            return batch[0];
        }
        self.set_busy(true);
        let (size, align) = request(class);
        let mut batch = [ptr::null_mut(); BATCH + 1];
        // One bulk request: the CPU pinned once per run of kmalloc's own
        // per-CPU array, not once per object.
        let got = kmem.kmalloc_fine_slab(size, align, gfp).map_or(0, |cache| {
            kmem.kmem_cache_alloc_bulk(cache, gfp, &mut batch)
        });
        for (slot, &p) in mag.slots.iter().zip(&batch[1..got.max(1)]) {
            slot.set(p);
        }
        mag.len.set(got.saturating_sub(1));
        self.publish();
        self.set_busy(false);
        batch[0]
    }

    /// A full magazine's flush: its `BATCH` oldest objects go to the
    /// depot, or back to kmalloc if the depot has no room, and the rest
    /// move down. The new length.
    #[cold]
    #[inline(never)]
    fn flush_batch(&self, kmem: &HostedKmem, depot: &Depot, class: usize) -> usize {
        self.set_busy(true);
        let slots = &self.mags[class].slots;
        let oldest: [*mut u8; BATCH] = core::array::from_fn(|i| slots[i].get());
        if !depot.put(kmem, class, &oldest) {
            give_back(kmem, &oldest);
        }
        for i in BATCH..CAPACITY {
            slots[i - BATCH].set(slots[i].get());
        }
        self.mags[class].len.set(CAPACITY - BATCH);
        self.publish();
        self.set_busy(false);
        CAPACITY - BATCH
    }

    /// Returns every object to the owner and unbinds; the number returned.
    fn flush(&self) -> usize {
        let Some(owner) = self.owner.get() else {
            return 0;
        };
        self.set_busy(true);
        let mut flushed = 0;
        for mag in &self.mags {
            let mut objs = [ptr::null_mut(); CAPACITY];
            for (obj, slot) in objs.iter_mut().zip(&mag.slots[..mag.len.get()]) {
                *obj = slot.get();
            }
            give_back(owner, &objs[..mag.len.get()]);
            flushed += mag.len.replace(0);
        }
        self.publish();
        self.owner.set(None);
        self.set_busy(false);
        flushed
    }

    /// Moves this thread's share of the process totals to what its
    /// magazines hold now.
    fn publish(&self) {
        let now = self.held();
        let was = self.published.replace(now);
        // Wrapping adds of the differences: a share that shrank subtracts.
        HELD_OBJECTS.fetch_add(now.objects.wrapping_sub(was.objects), Relaxed);
        HELD_BYTES.fetch_add(now.bytes.wrapping_sub(was.bytes), Relaxed);
    }

    /// What this thread's magazines hold now.
    fn held(&self) -> ThreadCacheStats {
        let mut now = ThreadCacheStats::default();
        for (mag, size) in self.mags.iter().zip(CLASS_SIZE) {
            now.objects += mag.len.get();
            now.bytes += mag.len.get() * size;
        }
        now
    }
}

/// Objects of a magazine or the depot back to kmalloc, in one bulk free.
fn give_back(kmem: &HostedKmem, objs: &[*mut u8]) {
    // SAFETY: a magazine's or the depot's objects are blocks kmalloc
    // served that nobody else holds (each left its holder's hands by
    // `GlobalAlloc::dealloc`, whose caller vouched for it), and the caller
    // gives each back once, then drops it. A refusal (only corruption
    // elsewhere could cause one) leaves its object allocated, as
    // `HostedGlobal::dealloc` does; it cannot be reported from here.
    unsafe { kmem.kfree_bulk_trusted(objs) };
}

/// Returns every batch of `kmem` the depot holds to kmalloc; the number
/// of objects returned.
pub(super) fn drain_depot(kmem: &HostedKmem) -> usize {
    DEPOT.drain(kmem, |objs| give_back(kmem, objs))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::global::depot::DEPOT_BATCHES;
    use crate::global::HostedGlobal;
    use crate::{HostedMemoryManager, MemoryManager};
    use core::alloc::GlobalAlloc;
    use std::sync::{atomic::AtomicPtr, OnceLock};

    /// What this thread's magazines hold now.
    fn held_here() -> ThreadCacheStats {
        CACHE.with(ThreadCache::held)
    }

    /// Objects kmalloc's classes (fine ones included) count as allocated,
    /// once every empty slab is given back: an off-slab slab's header is a
    /// kmalloc object too, and lives as long as its slab. Read from each
    /// cache's counters, not the rendered slabinfo, whose formatting takes
    /// seconds under miri.
    fn kmalloc_in_use(mm: &HostedMemoryManager) -> usize {
        let kmem = mm.kmem();
        kmem.shrink_all();
        let gfp = kmm_api::GFP_KERNEL;
        let lookups: [&dyn Fn(usize) -> _; 2] = [&|size| kmem.kmalloc_slab(size, gfp), &|size| {
            kmem.kmalloc_fine_slab(size, 8, gfp)
        }];
        // Each class once: the next size to ask for is one past the last
        // class's object size.
        let mut caches = Vec::new();
        for lookup in lookups {
            let mut size = 1;
            while let Some(id) = lookup(size) {
                if !caches.contains(&id) {
                    caches.push(id);
                }
                size = kmem.kmem_cache_info(id).unwrap().object_size + 1;
            }
        }
        caches
            .into_iter()
            .map(|id| kmem.kmem_cache_stats(id).unwrap().active_objs)
            .sum()
    }

    /// Runs `f` on a new thread (fresh magazines) and joins it: its exit,
    /// the magazines' flush included, is over on return (a scope's end
    /// alone does not wait for thread-local destructors).
    fn on_new_thread<T: Send>(f: impl FnOnce() -> T + Send) -> T {
        std::thread::scope(|s| s.spawn(f).join().unwrap())
    }

    fn layout(size: usize, align: usize) -> Layout {
        Layout::from_size_align(size, align).unwrap()
    }

    /// A manager and a `HostedGlobal` over it, one pair per test (statics,
    /// since the allocator reaches its manager through a `fn`).
    macro_rules! manager {
        ($mm:ident, $global:ident) => {
            static $mm: OnceLock<HostedMemoryManager> = OnceLock::new();
            static $global: HostedGlobal =
                // SAFETY: the manager is a `OnceLock`'s: once it holds one
                // it always does.
                unsafe { HostedGlobal::new(|| $mm.get().map(MemoryManager::kmem)) };
        };
    }

    #[test]
    fn a_layout_takes_the_smallest_class_that_holds_it_at_its_alignment() {
        let class = |size, align| class_of(layout(size, align)).map(|c| CLASS_SIZE[c]);
        assert_eq!(class(1, 1), Some(8));
        assert_eq!(class(64, 8), Some(64));
        assert_eq!(class(65, 8), Some(96));
        assert_eq!(class(80, 64), Some(128), "96 is only 32-aligned");
        assert_eq!(class(300, 8), Some(320));
        assert_eq!(class(300, 128), Some(384));
        assert_eq!(class(8, 512), Some(512));
        assert_eq!(class(1024, 8), Some(1024));
        assert_eq!(class(1025, 8), None);
        assert_eq!(class(8, 2048), None);
        // Every size natively; under miri every seventh.
        let step = if cfg!(miri) { 7 } else { 1 };
        for size in (1..=CACHED_MAX).step_by(step) {
            for align in [1, 8, 16, 32, 64, 128, 256, 512, 1024] {
                let c = class_of(layout(size, align)).unwrap();
                let natural = 1 << CLASS_SIZE[c].trailing_zeros();
                assert!(CLASS_SIZE[c] >= size && natural >= align, "{size}, {align}");
                assert!(
                    CLASS_SIZE[..c]
                        .iter()
                        .all(|&s| s < size || (1 << s.trailing_zeros()) < align),
                    "{size}, {align}: a smaller class serves"
                );
            }
        }
    }

    #[test]
    fn a_freed_block_is_the_next_one_its_class_hands_out() {
        manager!(MM, GLOBAL);
        let mm = MM.get_or_init(|| MemoryManager::hosted(4 << 20, 1).unwrap());
        on_new_thread(|| {
            let l = layout(40, 8);
            // SAFETY: non-zero sizes; each block freed once with its
            // layout.
            unsafe {
                let p = GLOBAL.alloc(l);
                let in_use = kmalloc_in_use(mm);
                GLOBAL.dealloc(p, l);
                assert_eq!(GLOBAL.alloc(layout(48, 16)), p, "same class, LIFO");
                GLOBAL.dealloc(p, layout(48, 16));
                assert_eq!(kmalloc_in_use(mm), in_use, "kmalloc not reached");
            }
        });
        mm.kmem().check_invariants().unwrap();
    }

    #[test]
    fn an_empty_magazine_takes_a_batch_and_a_full_one_gives_a_batch_to_the_depot() {
        manager!(MM, GLOBAL);
        let mm = MM.get_or_init(|| MemoryManager::hosted(4 << 20, 1).unwrap());
        on_new_thread(|| {
            let l = layout(200, 8);
            let before = kmalloc_in_use(mm);
            // SAFETY: non-zero sizes; each block freed once with its
            // layout.
            unsafe {
                let first = GLOBAL.alloc(l);
                assert_eq!(held_here().objects, BATCH);
                assert_eq!(held_here().bytes, BATCH * 256);
                assert_eq!(kmalloc_in_use(mm), before + BATCH + 1);
                // Drain the magazine, refill it, and hold CAPACITY + 1.
                let mut blocks: Vec<*mut u8> = vec![first];
                blocks.extend((0..CAPACITY).map(|_| GLOBAL.alloc(l)));
                // BATCH pops, a refill (one out, BATCH in), then the
                // rest popped: one left.
                assert_eq!(held_here().objects, 1);
                let in_use = kmalloc_in_use(mm);
                let held = held_here().objects;
                for &p in &blocks[..CAPACITY - held] {
                    GLOBAL.dealloc(p, l);
                }
                assert_eq!(held_here().objects, CAPACITY, "full, nothing freed");
                assert_eq!(kmalloc_in_use(mm), in_use);
                GLOBAL.dealloc(blocks[CAPACITY - held], l);
                assert_eq!(held_here().objects, CAPACITY - BATCH + 1);
                assert_eq!(kmalloc_in_use(mm), in_use, "a batch to the depot");
                assert_eq!(GLOBAL.drain_depot(), BATCH);
                assert_eq!(kmalloc_in_use(mm), in_use - BATCH, "and back");
                for &p in &blocks[CAPACITY - held + 1..] {
                    GLOBAL.dealloc(p, l);
                }
            }
            assert!(HostedGlobal::flush_thread_cache() > 0);
            assert_eq!(held_here(), ThreadCacheStats::default());
            assert_eq!(kmalloc_in_use(mm), before);
        });
        mm.kmem().check_invariants().unwrap();
    }

    /// The batches a freeing thread's magazine gives up serve another
    /// thread's refills, most recent first, without passing through
    /// kmalloc; the depot keeps at most `DEPOT_BATCHES` of a class and
    /// sends the rest to kmalloc, and a drain returns what it holds.
    #[test]
    fn a_batch_one_thread_gives_up_serves_another_threads_refill() {
        manager!(MM, GLOBAL);
        let mm = MM.get_or_init(|| MemoryManager::hosted(4 << 20, 1).unwrap());
        let l = layout(64, 8);
        let before = kmalloc_in_use(mm);
        let n = CAPACITY + (DEPOT_BATCHES + 2) * BATCH;
        // Allocated on one thread, freed on another (an `AtomicPtr` each:
        // a raw pointer is not `Send`).
        let blocks: Vec<AtomicPtr<u8>> = on_new_thread(|| {
            // SAFETY: a non-zero size.
            (0..n)
                .map(|_| AtomicPtr::new(unsafe { GLOBAL.alloc(l) }))
                .collect()
        });
        let last_batch: Vec<usize> = on_new_thread(|| {
            for b in &blocks {
                // SAFETY: each block is freed once, with its layout.
                unsafe { GLOBAL.dealloc(b.load(Relaxed), l) };
            }
            // Each flush gives up the magazine's oldest batch: blocks
            // 0..16 first. The first `DEPOT_BATCHES` batches go to the
            // depot, the next two to kmalloc, and the magazine keeps the
            // last CAPACITY.
            let at = (DEPOT_BATCHES - 1) * BATCH;
            blocks[at..at + BATCH]
                .iter()
                .map(|b| b.load(Relaxed) as usize)
                .collect()
        });
        let in_use = kmalloc_in_use(mm);
        assert_eq!(in_use, before + DEPOT_BATCHES * BATCH, "the depot's");
        on_new_thread(|| {
            // SAFETY: a non-zero size; the block freed once with its layout.
            unsafe {
                let p = GLOBAL.alloc(l);
                assert_eq!(p as usize, last_batch[0], "the depot's most recent batch");
                assert_eq!(kmalloc_in_use(mm), in_use, "not through kmalloc");
                GLOBAL.dealloc(p, l);
            }
        });
        assert_eq!(GLOBAL.drain_depot(), (DEPOT_BATCHES - 1) * BATCH);
        assert_eq!(kmalloc_in_use(mm), before);
        mm.kmem().check_invariants().unwrap();
    }

    /// A depot holds one manager's batches of a class at a time.
    #[test]
    fn a_depot_class_holds_one_managers_batches_at_a_time() {
        static MM_A: OnceLock<HostedMemoryManager> = OnceLock::new();
        static MM_B: OnceLock<HostedMemoryManager> = OnceLock::new();
        let a = MM_A
            .get_or_init(|| MemoryManager::hosted(4 << 20, 1).unwrap())
            .kmem();
        let b = MM_B
            .get_or_init(|| MemoryManager::hosted(4 << 20, 1).unwrap())
            .kmem();
        let depot = Depot::new();
        // Never dereferenced: the depot only stores and returns them.
        let batch: [*mut u8; BATCH] =
            core::array::from_fn(|i| ptr::without_provenance_mut(64 * (i + 1)));
        assert!(depot.put(a, 3, &batch));
        assert!(!depot.put(b, 3, &batch), "another manager's");
        assert!(depot.put(b, 4, &batch), "another class");
        assert_eq!(depot.take(b, 3), None);
        assert_eq!(depot.take(a, 3), Some(batch));
        assert!(depot.put(b, 3, &batch), "empty again, any manager's");
        assert_eq!(depot.take(b, 3), Some(batch));
        assert_eq!(depot.take(b, 4), Some(batch));
        for _ in 0..DEPOT_BATCHES {
            assert!(depot.put(a, 5, &batch));
        }
        assert!(!depot.put(a, 5, &batch), "full");
        let mut n = 0;
        while depot.take(a, 5).is_some() {
            n += 1;
        }
        assert_eq!(n, DEPOT_BATCHES);
    }

    #[test]
    fn a_threads_exit_returns_every_object_its_magazines_held() {
        manager!(MM, GLOBAL);
        let mm = MM.get_or_init(|| MemoryManager::hosted(4 << 20, 1).unwrap());
        let before = kmalloc_in_use(mm);
        on_new_thread(|| {
            // Every class, some blocks kept across the refills.
            let mut kept = Vec::new();
            for (i, &size) in CLASS_SIZE.iter().cycle().take(200).enumerate() {
                let l = layout(size, 8);
                // SAFETY: non-zero sizes; each block freed once with
                // its layout.
                unsafe {
                    let p = GLOBAL.alloc(l);
                    assert!(GLOBAL.is_ours(p));
                    if i % 3 == 0 {
                        kept.push((p, l));
                    } else {
                        GLOBAL.dealloc(p, l);
                    }
                }
            }
            for (p, l) in kept {
                // SAFETY: as above.
                unsafe { GLOBAL.dealloc(p, l) };
            }
            assert!(held_here().objects > CLASS_SIZE.len());
        });
        assert_eq!(kmalloc_in_use(mm), before, "all returned at exit");
        mm.kmem().check_invariants().unwrap();
    }

    /// A thread-local destructor that runs after the exit flush (one
    /// first touched before the magazines were bound: destructors run in
    /// the reverse order of registration) finds them unbound, and cannot
    /// bind them again: its requests
    /// go straight to kmalloc, and nothing is stranded in a dead thread's
    /// magazines.
    #[test]
    fn a_destructor_after_the_exit_flush_goes_straight_to_kmalloc() {
        manager!(MM, GLOBAL);
        struct Late;
        impl Drop for Late {
            fn drop(&mut self) {
                let l = layout(64, 8);
                // SAFETY: a non-zero size; the block freed once with its
                // layout.
                unsafe {
                    let p = GLOBAL.alloc(l);
                    assert!(GLOBAL.is_ours(p));
                    GLOBAL.dealloc(p, l);
                }
                let unbound = CACHE.with(|c| c.owner.get().is_none() && c.open.get().is_null());
                LATE_SAW_UNBOUND.store(unbound, Relaxed);
            }
        }
        std::thread_local!(static LATE: Late = const { Late });
        static LATE_SAW_UNBOUND: std::sync::atomic::AtomicBool =
            std::sync::atomic::AtomicBool::new(false);
        let mm = MM.get_or_init(|| MemoryManager::hosted(4 << 20, 1).unwrap());
        let before = kmalloc_in_use(mm);
        on_new_thread(|| {
            LATE.with(|_| ());
            let l = layout(64, 8);
            // SAFETY: as above.
            unsafe {
                let p = GLOBAL.alloc(l);
                GLOBAL.dealloc(p, l);
            }
            assert!(held_here().objects > 0);
        });
        assert!(LATE_SAW_UNBOUND.load(Relaxed), "the flush ran first");
        assert_eq!(kmalloc_in_use(mm), before, "nothing stranded");
        mm.kmem().check_invariants().unwrap();
    }

    #[test]
    fn a_block_freed_on_another_thread_serves_that_threads_next_request() {
        manager!(MM, GLOBAL);
        let mm = MM.get_or_init(|| MemoryManager::hosted(4 << 20, 1).unwrap());
        let before = kmalloc_in_use(mm);
        let l = layout(100, 8);
        // An `AtomicPtr` carries the block between threads (a raw pointer
        // is not `Send`).
        let alloc = || {
            // SAFETY: a non-zero size; the block is freed on the next
            // thread.
            AtomicPtr::new(unsafe { GLOBAL.alloc(l) })
        };
        let block = on_new_thread(alloc);
        on_new_thread(|| {
            let p = block.into_inner();
            // SAFETY: the block the first thread allocated and left to
            // us; freed once with its layout.
            unsafe {
                GLOBAL.dealloc(p, l);
                assert_eq!(GLOBAL.alloc(l), p);
                GLOBAL.dealloc(p, l);
            }
            assert_eq!(held_here().objects, 1);
        });
        assert_eq!(kmalloc_in_use(mm), before);
        mm.kmem().check_invariants().unwrap();
    }

    #[test]
    fn a_host_block_never_enters_a_magazine() {
        manager!(MM, GLOBAL);
        on_new_thread(|| {
            let l = layout(64, 8);
            // SAFETY: non-zero sizes; each block freed once with its
            // layout.
            unsafe {
                let early = GLOBAL.alloc(l);
                assert!(!GLOBAL.is_ours(early));
                MM.get_or_init(|| MemoryManager::hosted(4 << 20, 1).unwrap());
                GLOBAL.dealloc(early, l);
                assert_eq!(held_here(), ThreadCacheStats::default());
                let p = GLOBAL.alloc(l);
                assert!(GLOBAL.is_ours(p));
                GLOBAL.dealloc(p, l);
            }
        });
    }

    #[test]
    fn realloc_keeps_a_block_only_within_its_class() {
        manager!(MM, GLOBAL);
        let mm = MM.get_or_init(|| MemoryManager::hosted(4 << 20, 1).unwrap());
        on_new_thread(|| {
            // SAFETY: non-zero sizes; each block freed once with the
            // layout it has last.
            unsafe {
                let p = GLOBAL.alloc(layout(150, 64));
                p.write_bytes(7, 150);
                // 192-byte objects are only 64-aligned: shrunk to a
                // 128-byte class, the block moves to an object that
                // class's requests (128-aligned ones too) may have.
                let q = GLOBAL.realloc(p, layout(150, 64), 100);
                assert_ne!(q, p);
                assert!((0..100).all(|i| *q.add(i) == 7));
                assert_eq!(GLOBAL.realloc(q, layout(100, 64), 120), q, "same class");
                let big = GLOBAL.realloc(q, layout(120, 64), 3000);
                assert!(GLOBAL.is_ours(big) && (0..100).all(|i| *big.add(i) == 7));
                let back = GLOBAL.realloc(big, layout(3000, 64), 128);
                assert!((0..100).all(|i| *back.add(i) == 7));
                GLOBAL.dealloc(back, layout(128, 64));
                // Every block the magazines give a 128-aligned request is
                // 128-aligned.
                let blocks: Vec<_> = (0..CAPACITY)
                    .map(|_| GLOBAL.alloc(layout(128, 128)))
                    .collect();
                assert!(blocks.iter().all(|&b| b as usize % 128 == 0));
                for b in blocks {
                    GLOBAL.dealloc(b, layout(128, 128));
                }
            }
            HostedGlobal::flush_thread_cache();
        });
        mm.kmem().check_invariants().unwrap();
    }

    #[test]
    fn a_busy_threads_requests_go_straight_to_kmalloc() {
        manager!(MM, GLOBAL);
        let mm = MM.get_or_init(|| MemoryManager::hosted(4 << 20, 1).unwrap());
        on_new_thread(|| {
            let l = layout(32, 8);
            // SAFETY: non-zero sizes; each block freed once with its
            // layout.
            unsafe {
                let p = GLOBAL.alloc(l);
                GLOBAL.dealloc(p, l);
                let held = held_here();
                // As inside a refill's kmalloc.
                CACHE.with(|c| c.set_busy(true));
                let in_use = kmalloc_in_use(mm);
                let q = GLOBAL.alloc(l);
                assert_ne!(q, p, "the magazine is off limits");
                assert_eq!(kmalloc_in_use(mm), in_use + 1);
                GLOBAL.dealloc(q, l);
                assert_eq!(kmalloc_in_use(mm), in_use);
                assert_eq!(HostedGlobal::flush_thread_cache(), 0);
                assert_eq!(held_here(), held);
                CACHE.with(|c| c.set_busy(false));
            }
        });
        mm.kmem().check_invariants().unwrap();
    }

    #[test]
    fn the_process_count_follows_each_batch() {
        manager!(MM, GLOBAL);
        MM.get_or_init(|| MemoryManager::hosted(4 << 20, 1).unwrap());
        on_new_thread(|| {
            let l = layout(512, 8);
            // Other tests' threads move the totals too; this thread's
            // share is what its batches published.
            // SAFETY: a non-zero size; freed once with its layout.
            unsafe {
                let p = GLOBAL.alloc(l);
                let mine = CACHE.with(|c| c.published.get());
                assert_eq!(mine, held_here());
                assert_eq!(mine.bytes, BATCH * 512);
                assert!(HostedGlobal::thread_cache_stats().bytes >= mine.bytes);
                GLOBAL.dealloc(p, l);
            }
            assert_eq!(
                CACHE.with(|c| c.published.get()).objects,
                BATCH,
                "per batch"
            );
            assert_eq!(HostedGlobal::flush_thread_cache(), BATCH + 1);
            assert_eq!(
                CACHE.with(|c| c.published.get()),
                ThreadCacheStats::default()
            );
        });
    }
}
