//! The composed `MemoryManager` under hostile use: kmalloc, kmem caches and
//! page allocations mixed with frees of pointers into the manager's own
//! metadata, its slab headers, a page table's pages, another manager's
//! objects, and anything in RAM; raw page frees of pages the slab layer or
//! a page table holds; cache handles of another manager; `ksize` and
//! `krealloc` on anything; cache sizes up to `usize::MAX`.
//!
//! Checked against a model of what the fuzzer holds: every hostile call is
//! refused (unless it names an allocation the fuzzer holds, which it then
//! gives up), and every `CHECK_EVERY` steps and at the end of each input
//! every live object keeps its bytes and both layers' checkers pass. The
//! managers are booted once and reused: each input gives everything back at
//! its end, and the free page count must return exactly to where it
//! started.
//!
//! The pointer-taking calls are `unsafe fn`s whose contract forbids naming
//! an allocation someone else holds; the hostile pointers here name memory
//! the manager itself or a page table holds, deliberately, because the
//! checks must refuse those without touching it. Nothing runs concurrently.

#![no_main]

use arbitrary::Arbitrary;
use kmm::hosted::Hosted;
use kmm::x86::X86PageTable;
use kmm::{HostedMemoryManager, MemoryManager};
use kmm_api::{
    DirectMap, Order, OwnerTag, OwnerWord, PageOwner, Pages, Pfn, VirtAddr, __GFP_HIGHMEM,
    __GFP_ZERO, GFP_DMA, GFP_KERNEL, PAGE_SIZE,
};
use kmm_slab::{CacheId, SlabFlags};
use libfuzzer_sys::fuzz_target;
use std::sync::OnceLock;

/// RAM of each manager: small, so shrinking and checking stay cheap.
const RAM: usize = 8 << 20;

/// Steps between runs of the O(memory) checkers (every step checks the
/// model; the checkers also run at the end of every input).
const CHECK_EVERY: usize = 16;

type HostedZones = kmm_zones::Zones<'static, Hosted, Hosted>;

/// A manager with a kernel page table over its zones, both leaked: they
/// live for the whole run and are reused by every input.
struct Machine {
    mm: &'static HostedMemoryManager,
    /// The tunables at boot, written back after every input.
    sysctl: (usize, usize, [usize; 4]),
    /// Kept alive so its pages stay page-table pages.
    _table: X86PageTable<&'static HostedZones, Hosted, ()>,
    /// The page table's pages (found by their owner words).
    table_pages: Vec<Pfn>,
}

fn machine(slot: &'static OnceLock<Machine>) -> &'static Machine {
    slot.get_or_init(|| {
        let mm: &'static HostedMemoryManager =
            Box::leak(Box::new(MemoryManager::hosted(RAM, 1).expect("boot")));
        let range = (VirtAddr::new(0xf880_0000), VirtAddr::new(0xfffe_efff));
        let zones = mm.zones();
        let table = X86PageTable::for_zones(zones, (), range).expect("page table");
        table
            .populate(VirtAddr::new(0xf880_0000), VirtAddr::new(0xf8c0_0000))
            .expect("PTE pages");
        let frames = RAM / PAGE_SIZE;
        let table_pages = (0..frames)
            .map(Pfn::new)
            .filter(|&pfn| zones.owner(pfn).and_then(OwnerWord::tag) == Some(OwnerTag::PageTable))
            .collect();
        Machine {
            mm,
            sysctl: (
                mm.min_free_kbytes(),
                mm.watermark_scale_factor(),
                mm.lowmem_reserve_ratio(),
            ),
            _table: table,
            table_pages,
        }
    })
}

#[derive(Arbitrary, Debug)]
enum Target {
    /// A live object, at an offset into it.
    Live {
        which: u16,
        offset: u16,
    },
    /// An object freed earlier in this input.
    Freed {
        which: u16,
    },
    /// The manager's boot metadata (its core, `mem_map`, per-CPU lists).
    Metadata {
        offset: u32,
    },
    /// The page directory or a PTE page of the page table.
    PageTable {
        which: u8,
        offset: u16,
    },
    /// The first page of a live object's slab (its header, if on-slab).
    SlabPage {
        which: u16,
        offset: u16,
    },
    /// An object of the other manager.
    Foreign,
    /// Anywhere in RAM.
    Ram {
        offset: u32,
    },
    /// A page the fuzzer holds through the page API.
    HeldPage {
        which: u16,
        offset: u16,
    },
    Null,
    ZeroSizePtr,
}

#[derive(Arbitrary, Debug)]
enum Op {
    Kmalloc {
        size: u16,
        dma: bool,
        zero: bool,
    },
    KmallocLarge {
        pages: u8,
    },
    Kfree {
        target: Target,
    },
    Ksize {
        target: Target,
    },
    Krealloc {
        target: Target,
        size: u16,
    },
    CacheCreate {
        size: u64,
        align: u8,
        flags: u8,
    },
    CacheAlloc {
        which: u8,
        foreign: bool,
    },
    CacheFree {
        which: u8,
        target: Target,
    },
    CacheDestroy {
        which: u8,
    },
    AllocPages {
        order: u8,
        highmem: bool,
    },
    FreePages {
        which: u16,
    },
    RawFreePages {
        target: Target,
        order: u8,
    },
    KfreeSensitive {
        target: Target,
    },
    Kstrndup {
        len: u8,
        nul_at: u8,
        max: u8,
    },
    KreallocArray {
        target: Target,
        n: u32,
        size: u32,
    },
    CacheAllocBulk {
        which: u8,
        count: u8,
    },
    CacheFreeBulk {
        which: u8,
        count: u8,
        stranger: Option<Target>,
    },
    FlushAll,
    ShrinkAll,
    DrainAllPages,
    DropCaches,
    Check,
    /// `/proc/sys/vm` writes, any value: refused or applied, never broken.
    MinFreeKbytes {
        kbytes: u32,
    },
    WatermarkScaleFactor {
        factor: u16,
    },
    LowmemReserveRatio {
        ratio: [u32; 4],
    },
}

/// An object the fuzzer holds, with the byte it is filled with.
struct Live {
    p: *mut u8,
    size: usize,
    fill: u8,
}

struct Model {
    live: Vec<Live>,
    freed: Vec<*mut u8>,
    pages: Vec<Pages>,
    caches: Vec<CacheId>,
    stamp: u8,
}

fn fill(l: &Live) {
    // SAFETY: the object is live and the fuzzer's, `size` bytes.
    unsafe { l.p.write_bytes(l.fill, l.size) };
}

fn intact(l: &Live) -> bool {
    // SAFETY: as above.
    unsafe { std::slice::from_raw_parts(l.p, l.size) }
        .iter()
        .all(|&b| b == l.fill)
}

impl Model {
    fn hold(&mut self, p: *mut u8, size: usize) {
        self.stamp = self.stamp.wrapping_add(1).max(1);
        self.freed.retain(|&f| f != p);
        let live = Live {
            p,
            size,
            fill: self.stamp,
        };
        fill(&live);
        self.live.push(live);
    }

    /// The live record at exactly `p`, if the fuzzer holds an object there.
    fn live_at(&self, p: *const u8) -> Option<usize> {
        self.live.iter().position(|l| l.p.cast_const() == p)
    }
}

/// The address a target names, or `None` when there is nothing to name.
/// A `Foreign` target allocates an object on the other manager, kept until
/// [`release_foreign`].
fn address(m: &Machine, other: &Machine, model: &Model, target: &Target) -> Option<*const u8> {
    let dm = m.mm.zones().direct_map();
    let pick = |n: usize, which: u16| (n > 0).then(|| usize::from(which) % n);
    let in_frame = |pfn: Pfn, offset: usize| {
        dm.pfn_to_ptr(pfn)
            .map(|p| p.as_ptr().wrapping_add(offset).cast_const())
    };
    match *target {
        Target::Live { which, offset } => {
            let l = &model.live[pick(model.live.len(), which)?];
            Some(
                l.p.wrapping_add(usize::from(offset) % (l.size + 1))
                    .cast_const(),
            )
        }
        Target::Freed { which } => Some(model.freed[pick(model.freed.len(), which)?].cast_const()),
        Target::Metadata { offset } => {
            let meta = m.mm.boot_metadata();
            let offset = offset as usize % meta.bytes;
            in_frame(meta.base.pfn(), offset)
        }
        Target::PageTable { which, offset } => {
            let pfn = m.table_pages[usize::from(which) % m.table_pages.len()];
            in_frame(pfn, usize::from(offset) % PAGE_SIZE)
        }
        Target::SlabPage { which, offset } => {
            let l = &model.live[pick(model.live.len(), which)?];
            let page = (l.p as usize) & !(PAGE_SIZE - 1);
            Some(
                l.p.wrapping_sub(l.p as usize - page)
                    .wrapping_add(usize::from(offset) % 256)
                    .cast_const(),
            )
        }
        Target::Foreign => {
            let q = other.mm.kmalloc(64, GFP_KERNEL).ok()?;
            FOREIGN.with(|f| f.set(q.as_ptr()));
            Some(q.as_ptr().cast_const())
        }
        Target::Ram { offset } => in_frame(Pfn::new(0), offset as usize % RAM),
        Target::HeldPage { which, offset } => {
            let page = &model.pages[pick(model.pages.len(), which)?];
            in_frame(page.pfn(), usize::from(offset) % PAGE_SIZE)
        }
        Target::Null => Some(std::ptr::null()),
        Target::ZeroSizePtr => Some(kmm_slab::ZERO_SIZE_PTR.as_ptr().cast_const()),
    }
}

std::thread_local! {
    /// The other manager's object a `Foreign` target made, freed after use.
    static FOREIGN: std::cell::Cell<*mut u8> = const { std::cell::Cell::new(std::ptr::null_mut()) };
}

/// Gives back the object a `Foreign` target made, if any.
fn release_foreign(other: &Machine) {
    let p = FOREIGN.with(|f| f.replace(std::ptr::null_mut()));
    if !p.is_null() {
        // SAFETY: the fuzzer made this object on the other manager and
        // gives it back once.
        unsafe { other.mm.kfree(p) }.expect("foreign object freed");
    }
}

/// Frees through `free` whatever `target` names: the fuzzer's own object
/// (given up, so it must succeed) or anything else (refused, nothing
/// changed).
fn free_any(
    m: &Machine,
    other: &Machine,
    model: &mut Model,
    target: &Target,
    free: impl FnOnce(*const u8) -> bool,
) {
    let Some(p) = address(m, other, model, target) else {
        return;
    };
    let own = model.live_at(p);
    let null = p.is_null() || p == kmm_slab::ZERO_SIZE_PTR.as_ptr().cast_const();
    let ok = free(p);
    match own {
        Some(i) => {
            assert!(ok, "a free of the fuzzer's own object at {p:?} was refused");
            model.freed.push(model.live.swap_remove(i).p);
        }
        None => assert!(ok == null, "a free of {p:?} ({target:?}) was accepted"),
    }
    release_foreign(other);
}

fn step(m: &Machine, other: &Machine, model: &mut Model, op: &Op) {
    let mm = &m.mm;
    match *op {
        Op::Kmalloc { size, dma, zero } => {
            let size = usize::from(size) % 9000;
            let gfp = GFP_KERNEL
                | if dma { GFP_DMA } else { GFP_KERNEL }
                | if zero { __GFP_ZERO } else { GFP_KERNEL };
            if let Ok(p) = mm.kmalloc(size, gfp) {
                if size > 0 {
                    model.hold(p.as_ptr(), size);
                }
            }
        }
        Op::KmallocLarge { pages } => {
            let size = (usize::from(pages) % 64 + 3) * PAGE_SIZE;
            if let Ok(p) = mm.kmalloc(size, GFP_KERNEL) {
                model.hold(p.as_ptr(), size);
            }
        }
        Op::Kfree { ref target } => free_any(m, other, model, target, |p| {
            // SAFETY: single-threaded; `p` is the fuzzer's own object (given
            // up) or memory it does not hold (see the module docs).
            unsafe { mm.kfree(p) }.is_ok()
        }),
        Op::Ksize { ref target } => {
            let Some(p) = address(m, other, model, target) else {
                return;
            };
            // SAFETY: as for `Kfree`; nothing is given up.
            let size = unsafe { mm.ksize(p) };
            if let Some(i) = model.live_at(p) {
                assert!(size.unwrap() >= model.live[i].size);
            }
            release_foreign(other);
        }
        Op::Krealloc { ref target, size } => {
            let Some(p) = address(m, other, model, target) else {
                return;
            };
            let own = model.live_at(p);
            let new_size = usize::from(size) % 9000 + 1;
            // SAFETY: as for `Kfree`: the fuzzer's own object or memory it
            // does not hold (refused).
            let result = unsafe { mm.krealloc(p, new_size, GFP_KERNEL) };
            match (own, result) {
                (Some(i), Ok(q)) => {
                    let old = model.live.swap_remove(i);
                    let kept = old.size.min(new_size);
                    // SAFETY: `q` is the fuzzer's now, at least `new_size`.
                    let bytes = unsafe { std::slice::from_raw_parts(q.as_ptr(), kept) };
                    assert!(
                        bytes.iter().all(|&b| b == old.fill),
                        "krealloc lost contents"
                    );
                    if q.as_ptr() != old.p {
                        model.freed.push(old.p);
                    }
                    model.hold(q.as_ptr(), new_size);
                }
                (Some(_), Err(_)) => {}
                (None, Ok(q))
                    if p.is_null() || p == kmm_slab::ZERO_SIZE_PTR.as_ptr().cast_const() =>
                {
                    model.hold(q.as_ptr(), new_size);
                }
                (None, Ok(_)) => panic!("krealloc of {p:?} ({target:?}) was accepted"),
                (None, Err(_)) => {}
            }
            release_foreign(other);
        }
        Op::CacheCreate { size, align, flags } => {
            let size = match size % 4 {
                0 => usize::MAX - (size as usize % 64),
                _ => (size % 6000) as usize,
            };
            let align = 1usize << (align % 14);
            let flags = SlabFlags::from_bits_truncate(u32::from(flags) << 8)
                & (SlabFlags::RED_ZONE
                    | SlabFlags::POISON
                    | SlabFlags::STORE_USER
                    | SlabFlags::HWCACHE_ALIGN);
            let made = mm.kmem_cache_create("fuzz", size, align, flags, None);
            match made {
                Ok(_) if size > 1 << 20 => panic!("a cache of {size} bytes was made"),
                Ok(id) if model.caches.len() < 8 => model.caches.push(id),
                // SAFETY: just made, never used.
                Ok(id) => unsafe { mm.kmem_cache_destroy(id) }.expect("destroy an unused cache"),
                Err(_) => {}
            }
        }
        Op::CacheAlloc { which, foreign } => {
            let Some(&id) = model
                .caches
                .get(usize::from(which) % model.caches.len().max(1))
            else {
                return;
            };
            if foreign {
                assert!(
                    other.mm.kmem_cache_alloc(id, GFP_KERNEL).is_err(),
                    "a foreign cache handle was accepted"
                );
                return;
            }
            if let Ok(p) = mm.kmem_cache_alloc(id, GFP_KERNEL) {
                let size = mm.kmem().kmem_cache_info(id).unwrap().object_size;
                model.hold(p.as_ptr(), size);
            }
        }
        Op::CacheFree { which, ref target } => {
            let Some(&id) = model
                .caches
                .get(usize::from(which) % model.caches.len().max(1))
            else {
                return;
            };
            let Some(p) = address(m, other, model, target) else {
                return;
            };
            let own = model.live_at(p);
            // SAFETY: as for `Kfree`.
            let ok = unsafe { mm.kmem_cache_free(id, p) }.is_ok();
            // SAFETY: the fuzzer's own object, still held if the free was
            // refused (another cache's object).
            let of_this_cache = own.is_some()
                && unsafe { mm.kmem().kmem_cache_of(p) } == Ok(kmm_slab::ObjectOwner::Cache(id));
            match own {
                Some(i) if of_this_cache => {
                    assert!(ok);
                    model.freed.push(model.live.swap_remove(i).p);
                }
                _ => assert!(
                    ok == p.is_null(),
                    "kmem_cache_free of {p:?} ({target:?}) accepted"
                ),
            }
            release_foreign(other);
        }
        Op::CacheDestroy { which } => {
            if model.caches.is_empty() {
                return;
            }
            let id = model.caches[usize::from(which) % model.caches.len()];
            // SAFETY: single-threaded: nothing else uses the cache.
            if unsafe { mm.kmem_cache_destroy(id) }.is_ok() {
                model.caches.retain(|&c| c != id);
                // SAFETY: as above; a destroyed handle is refused.
                assert!(mm.kmem_cache_alloc(id, GFP_KERNEL).is_err());
            }
        }
        Op::AllocPages { order, highmem } => {
            let gfp = if highmem {
                GFP_KERNEL | __GFP_HIGHMEM
            } else {
                GFP_KERNEL
            };
            if let Ok(order) = Order::new(u32::from(order % 4)) {
                if let Ok(pages) = mm.zones().alloc_pages(gfp, order) {
                    model.pages.push(pages);
                }
            }
        }
        Op::FreePages { which } => {
            if !model.pages.is_empty() {
                let pages = model
                    .pages
                    .swap_remove(usize::from(which) % model.pages.len());
                mm.zones().__free_pages(pages).expect("free a held block");
            }
        }
        Op::RawFreePages { ref target, order } => {
            let Some(p) = address(m, other, model, target) else {
                return;
            };
            release_foreign(other);
            let Some(pfn) = mm.zones().direct_map().ptr_to_pfn(p) else {
                return;
            };
            let order = Order::new(u32::from(order % 4)).unwrap();
            // A block the fuzzer holds by handle is freed through its
            // handle below; every other block must be refused here.
            if model
                .pages
                .iter()
                .any(|b| (b.pfn()..b.pfn().add(b.nr_pages())).contains(&pfn))
            {
                return;
            }
            // SAFETY: the fuzzer holds no block at `pfn` (checked above), so
            // this names memory someone else (the slab layer, the page
            // table, the manager) holds or nobody does: every such free
            // must be refused before anything is touched.
            let freed = unsafe {
                mm.zones()
                    .__free_pages(Pages::from_raw(pfn, order, mm.zones().allocator_id()))
            };
            assert!(
                freed.is_err(),
                "a raw free of {pfn} ({target:?}) was accepted"
            );
        }
        Op::KfreeSensitive { ref target } => free_any(m, other, model, target, |p| {
            // SAFETY: as for `Kfree`.
            unsafe { mm.kfree_sensitive(p) }.is_ok()
        }),
        Op::Kstrndup { len, nul_at, max } => {
            let mut src = vec![b'k'; usize::from(len)];
            if let Some(b) = src.get_mut(usize::from(nul_at)) {
                *b = 0;
            }
            let want = src
                .iter()
                .take(usize::from(max))
                .take_while(|&&b| b != 0)
                .count();
            if let Ok(p) = mm.kstrndup(&src, usize::from(max), GFP_KERNEL) {
                // SAFETY: `p` holds `want + 1` bytes, the fuzzer's now.
                let copy = unsafe { std::slice::from_raw_parts(p.as_ptr(), want + 1) };
                assert!(copy[..want].iter().all(|&b| b == b'k') && copy[want] == 0);
                model.hold(p.as_ptr(), want + 1);
            }
        }
        Op::KreallocArray {
            ref target,
            n,
            size,
        } => {
            let Some(p) = address(m, other, model, target) else {
                return;
            };
            let own = model.live_at(p);
            let (n, size) = (n as usize, size as usize);
            let bytes = n.checked_mul(size);
            // SAFETY: as for `Krealloc`.
            let result = unsafe { mm.krealloc_array(p, n, size, GFP_KERNEL) };
            match (own, bytes, result) {
                (_, None, r) => assert!(r.is_err(), "an overflowing array was allocated"),
                (Some(i), Some(bytes), Ok(q)) => {
                    let old = model.live.swap_remove(i);
                    if bytes == 0 || q.as_ptr() != old.p {
                        model.freed.push(old.p);
                    }
                    if bytes > 0 {
                        model.hold(q.as_ptr(), bytes);
                    }
                }
                (None, Some(bytes), Ok(q))
                    if p.is_null() || p == kmm_slab::ZERO_SIZE_PTR.as_ptr().cast_const() =>
                {
                    if bytes > 0 {
                        model.hold(q.as_ptr(), bytes);
                    }
                }
                (None, _, Ok(_)) => panic!("krealloc_array of {p:?} ({target:?}) was accepted"),
                (_, _, Err(_)) => {}
            }
            release_foreign(other);
        }
        Op::CacheAllocBulk { which, count } => {
            let Some(&id) = model
                .caches
                .get(usize::from(which) % model.caches.len().max(1))
            else {
                return;
            };
            let mut objects = vec![std::ptr::null_mut(); usize::from(count % 64)];
            if mm
                .kmem_cache_alloc_bulk(id, GFP_KERNEL, &mut objects)
                .is_ok()
            {
                let size = mm.kmem().kmem_cache_info(id).unwrap().object_size;
                for p in objects {
                    model.hold(p, size);
                }
            } else {
                assert!(
                    objects.iter().all(|p| p.is_null()),
                    "a failed bulk kept objects"
                );
            }
        }
        Op::CacheFreeBulk {
            which,
            count,
            ref stranger,
        } => {
            let Some(&id) = model
                .caches
                .get(usize::from(which) % model.caches.len().max(1))
            else {
                return;
            };
            // Up to `count` of the fuzzer's objects of this cache, and maybe
            // one pointer it does not hold, which must be refused alone.
            let mut mine = Vec::new();
            for l in &model.live {
                // SAFETY: the fuzzer's own object; nothing is given up.
                let of_this =
                    unsafe { mm.kmem().kmem_cache_of(l.p) } == Ok(kmm_slab::ObjectOwner::Cache(id));
                if of_this && mine.len() < usize::from(count % 32) {
                    mine.push(l.p);
                }
            }
            let mut objects = mine.clone();
            let odd = stranger
                .as_ref()
                .and_then(|t| address(m, other, model, t))
                .filter(|&p| model.live_at(p).is_none() && !p.is_null());
            if let Some(p) = odd {
                objects.insert(objects.len() / 2, p.cast_mut());
            }
            // SAFETY: the fuzzer gives up `mine`; the stranger is memory it
            // does not hold, refused without being touched.
            let freed = unsafe { mm.kmem_cache_free_bulk(id, &objects) };
            assert_eq!(freed.is_err(), odd.is_some(), "bulk free of {objects:?}");
            for p in mine {
                let i = model.live_at(p).unwrap();
                model.freed.push(model.live.swap_remove(i).p);
            }
            release_foreign(other);
        }
        Op::DropCaches => {
            mm.drop_caches();
        }
        Op::Check => mm.check().expect("every layer's invariants"),
        Op::MinFreeKbytes { kbytes } => {
            let before = mm.min_free_kbytes();
            match mm.set_min_free_kbytes(kbytes as usize) {
                Ok(()) => assert_eq!(mm.min_free_kbytes(), kbytes as usize),
                Err(_) => assert_eq!(mm.min_free_kbytes(), before, "a refused write changed it"),
            }
        }
        Op::WatermarkScaleFactor { factor } => {
            let accepted = mm.set_watermark_scale_factor(usize::from(factor)).is_ok();
            assert_eq!(accepted, (1..=3000).contains(&factor));
        }
        Op::LowmemReserveRatio { ratio } => {
            let ratio = ratio.map(|r| r as usize);
            if mm.set_lowmem_reserve_ratio(&ratio).is_ok() {
                assert_eq!(mm.lowmem_reserve_ratio(), ratio);
            }
        }
        Op::FlushAll => assert_eq!(mm.kmem().flush_all(), 0),
        Op::ShrinkAll => {
            mm.kmem().shrink_all();
        }
        Op::DrainAllPages => mm.zones().drain_all_pages(),
    }
}

fn check(m: &Machine, model: &Model) {
    m.mm.kmem().check_invariants().expect("slab invariants");
    m.mm.zones().check().expect("zone invariants");
    assert_eq!(m.mm.kmem().internal_errors(), 0);
    for l in &model.live {
        assert!(intact(l), "object {:?} was overwritten", l.p);
    }
}

/// Gives back everything the input took, and checks the manager is back
/// where it started.
fn release(m: &Machine, model: Model, baseline: usize) {
    for l in model.live {
        // SAFETY: the fuzzer's own objects, given up once.
        unsafe { m.mm.kfree(l.p) }.expect("free a live object");
    }
    for pages in model.pages {
        m.mm.zones().__free_pages(pages).expect("free a held block");
    }
    for id in model.caches {
        // SAFETY: single-threaded; the cache is empty now.
        unsafe { m.mm.kmem_cache_destroy(id) }.expect("destroy an emptied cache");
    }
    m.mm.kmem().shrink_all();
    m.mm.zones().drain_all_pages();
    assert_eq!(
        m.mm.zones().nr_free_pages(),
        baseline,
        "memory did not come back"
    );
    let (min_free, scale, ratio) = m.sysctl;
    m.mm.set_min_free_kbytes(min_free).expect("the boot value");
    m.mm.set_watermark_scale_factor(scale)
        .expect("the boot value");
    m.mm.set_lowmem_reserve_ratio(&ratio)
        .expect("the boot value");
}

fn baseline(m: &Machine) -> usize {
    m.mm.kmem().shrink_all();
    m.mm.zones().drain_all_pages();
    m.mm.zones().nr_free_pages()
}

static MAIN: OnceLock<Machine> = OnceLock::new();
static OTHER: OnceLock<Machine> = OnceLock::new();

fuzz_target!(|ops: Vec<Op>| {
    let (m, other) = (machine(&MAIN), machine(&OTHER));
    let start = baseline(m);
    let mut model = Model {
        live: Vec::new(),
        freed: Vec::new(),
        pages: Vec::new(),
        caches: Vec::new(),
        stamp: 0,
    };
    for (i, op) in ops.iter().take(200).enumerate() {
        step(m, other, &mut model, op);
        if i % CHECK_EVERY == CHECK_EVERY - 1 {
            check(m, &model);
        }
    }
    check(m, &model);
    release(m, model, start);
});
