//! [`MemoryManager`]: the composed memory manager of one machine, booted
//! from a physical memory map and a [`Layout`]. Owns the zones and the slab
//! layer over them (and, in later layers, vmalloc and kmap); never
//! allocates before the zones exist, except the one early carve-out below.
//!
//! # Boot sequence (Linux `setup_arch` → `mm_core_init`)
//!
//! 1. `Memblock::from_memory_map`: RAM and reservations (the firmware hole,
//!    the kernel image) as page ranges.
//! 2. `Zones::metadata_bytes`: the bytes `mem_map` and the per-CPU lists
//!    need for this machine and CPU count, plus the manager's core (the
//!    `Zones` and `Kmem` values themselves).
//! 3. `memblock.alloc(bytes, PAGE_SIZE, lowmem limit)`: the highest free
//!    lowmem range that fits, now reserved, so it is never released.
//! 4. That range, seen through the direct map, becomes the `BootMem` the
//!    zones carve their metadata from.
//! 5. `Zones::new` releases every other free frame into its zone; the
//!    zones are written into the core.
//! 6. `Kmem::new` builds the kmalloc caches from the zones (Linux
//!    `kmem_cache_init`), is written into the core, and is registered as
//!    the zones' shrinker.
//! 7. On a layout whose kernel range a two-level table maps (i386), the
//!    kernel page table (its pages from the zones), vmalloc over it (its
//!    nodes from a `vmap_area` slab cache, Linux `vmalloc_init`), and the
//!    kmap pool with one kmap_local stack per CPU (the stacks carved from
//!    the boot range after the core, Linux `kmap_init`).
//!
//! The core never moves: the slab layer's page source points at the zones,
//! the zones' shrinker table at the slab layer, the page table at the
//! zones and vmalloc at all three. Teardown runs the other way (see
//! `drop_core`).
//!
//! The metadata lives in the machine's own RAM, as in a kernel: no host
//! allocation and no static array is sized for the machine.

use crate::layout::Layout;
use crate::slab_pages::SlabPages;
use crate::x86::{Mmu, X86PageTable};
use core::marker::PhantomData;
use core::mem::{align_of, size_of, MaybeUninit};
use core::ptr::{self, addr_of, addr_of_mut, NonNull};
use kmm_api::{
    DirectMap, Error, MemoryRegion, PhysAddr, PreemptControl, MAX_PAGE_ORDER, PAGE_SIZE,
};
use kmm_highmem::{Highmem, HighmemConfig, LocalStack};
use kmm_slab::{CacheObjects, Kmem, KmemConfig, SlabError, SlabFlags};
use kmm_vmarea::{Vmalloc, VmapAreas};
use kmm_zones::boot::BootMem;
use kmm_zones::memblock::Memblock;
use kmm_zones::Zones;

/// Where boot put the manager's metadata: a physical range inside lowmem.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct BootMetadata {
    /// First byte.
    pub base: PhysAddr,
    /// Bytes reserved: the zones and slab descriptors themselves, then
    /// what `Zones::metadata_bytes` asked for (`mem_map`, per-CPU lists).
    pub bytes: usize,
}

/// The kernel page table of a manager: a two-level x86 table whose pages
/// come from the manager's zones, with the machine's MMU hook `M`.
pub type KernelTable<P, D, M> = X86PageTable<&'static Zones<'static, P, D>, D, M>;

/// The vmalloc of a manager: frames from its zones, mapped in its kernel
/// page table, area nodes (and vmap blocks) from its `vmap_area` slab
/// cache, per-CPU vmap blocks pinned through its platform.
pub type KernelVmalloc<P, D, M> = Vmalloc<
    &'static Zones<'static, P, D>,
    &'static KernelTable<P, D, M>,
    CacheObjects<'static, SlabPages<P, D>>,
    D,
    &'static P,
>;

/// The kmap pool and kmap_local stacks of a manager, mapping in its
/// kernel page table.
pub type KernelHighmem<P, D, M> = Highmem<'static, &'static KernelTable<P, D, M>, &'static P, D>;

/// The part of the manager that must not move, kept at the start of the
/// boot range (as Linux keeps `contig_page_data` and the boot
/// `kmem_cache`s in static storage): the slab layer's page source points
/// at the zones, the zones' shrinker table at the slab layer, the page
/// table at the zones, and vmalloc at the zones, the table and a cache.
struct Core<P: PreemptControl + 'static, D: DirectMap + 'static, M: Mmu + 'static> {
    zones: Zones<'static, P, D>,
    kmem: Kmem<SlabPages<P, D>>,
    /// `None` on a layout whose kernel range a two-level table cannot map
    /// (the 64-bit preset).
    table: Option<KernelTable<P, D, M>>,
    /// Present exactly when `table` is.
    vmalloc: Option<KernelVmalloc<P, D, M>>,
    /// Present when `table` is and the layout has a pkmap range.
    highmem: Option<KernelHighmem<P, D, M>>,
}

/// The memory manager of one machine.
///
/// The zones API (Linux names: `alloc_pages`, `__free_pages`,
/// `__get_free_pages`, watermarks, reports) is reached through
/// [`MemoryManager::zones`]; the kmalloc family and `kmem_cache_*` are
/// methods of the manager itself (see the `slab` methods below), backed by
/// a [`Kmem`] over the zones that is registered as their shrinker.
///
/// Ownership: the zones and the slab allocator live in machine RAM that
/// boot reserved in memblock, at an address fixed for the manager's life.
/// Dropping the manager unregisters the shrinker, drops the slab allocator,
/// then moves the zones out of RAM and drops them (which releases the
/// platform and direct-map handles last).
///
/// ```
/// # #[cfg(all(feature = "std", target_pointer_width = "64"))] {
/// use kmm::MemoryManager;
/// use kmm_api::{Order, GFP_KERNEL};
/// let mm = MemoryManager::hosted(8 << 20, 1)?;
/// let page = mm.zones().alloc_pages(GFP_KERNEL, Order::ZERO)?;
/// mm.zones().__free_pages(page)?; // consumes the handle
/// let p = mm.kmalloc(100, GFP_KERNEL).unwrap();
/// // SAFETY: we hold the object at `p`, and give it up with the kfree.
/// unsafe {
///     assert_eq!(mm.ksize(p.as_ptr()).unwrap(), 128);
///     mm.kfree(p.as_ptr()).unwrap();
/// }
/// # }
/// # Ok::<(), kmm_api::Error>(())
/// ```
pub struct MemoryManager<P: PreemptControl + 'static, D: DirectMap + 'static, M: Mmu + 'static = ()>
{
    // Initialised by `boot`, valid until `drop`; the `'static` inside is a
    // private promise, never handed out past `&self`.
    core: NonNull<Core<P, D, M>>,
    layout: Layout,
    metadata: BootMetadata,
    memory_pages: usize,
    reserved_pages: usize,
    _owns: PhantomData<Core<P, D, M>>,
    // A handle on the direct map that outlives the core: the zones inside
    // the core hold references into the RAM it maps while they drop, so
    // their own handle must not be the last (fields drop after `Drop`).
    _mapped: D,
}

// SAFETY: the manager owns its `Core` exclusively (nothing else holds the
// pointer), so sending it sends the zones, the slab allocator (whose page
// source is a shared reference to the zones), the kernel page table,
// vmalloc and the kmap pool (whose references point into the same core);
// each of those is required to be `Send`/`Sync` below, where the
// `'static` references they hold make them cross threads as shared ones.
unsafe impl<P: PreemptControl, D: DirectMap, M: Mmu + Send> Send for MemoryManager<P, D, M>
where
    Zones<'static, P, D>: Send + Sync,
    KernelTable<P, D, M>: Send + Sync,
    KernelVmalloc<P, D, M>: Send + Sync,
    KernelHighmem<P, D, M>: Send + Sync,
{
}
// SAFETY: `&MemoryManager` gives only shared references to the core's
// parts (`&Zones`, `&Kmem`, `&KernelTable`, `&KernelVmalloc`,
// `&KernelHighmem`), each required to be `Sync` here.
unsafe impl<P: PreemptControl, D: DirectMap, M: Mmu> Sync for MemoryManager<P, D, M>
where
    Zones<'static, P, D>: Sync,
    KernelTable<P, D, M>: Sync,
    KernelVmalloc<P, D, M>: Sync,
    KernelHighmem<P, D, M>: Sync,
{
}

impl<P: PreemptControl + 'static, D: DirectMap + Clone + 'static> MemoryManager<P, D, ()> {
    /// Boots the zones of a machine from its memory map, with the zone
    /// limits of `layout` and orders up to `MAX_PAGE_ORDER`, then the slab
    /// layer over them with a free-pointer seed taken from the boot range's
    /// address (see [`MemoryManager::boot_with`] to choose it).
    ///
    /// Errors: the memory map's ([`Error::TooManyRegions`], ...), RAM in the
    /// map beyond `layout` ([`Error::BadPhysAddr`]), no lowmem range large
    /// enough for the metadata ([`Error::NoMemory`]), a direct map that does
    /// not map that range contiguously ([`Error::PfnOutOfRange`]), and
    /// those of `Zones::new` and `Kmem::new`.
    ///
    /// # Safety
    ///
    /// The RAM the map calls usable must belong to this manager alone from
    /// now on (nothing else reads or writes it), and `direct_map`'s
    /// mappings must stay valid until the manager is dropped, which the
    /// [`DirectMap`] contract already requires for as long as `direct_map`
    /// (or a clone of it: the manager keeps one) lives.
    pub unsafe fn boot(
        map: &[MemoryRegion],
        layout: Layout,
        platform: P,
        direct_map: D,
    ) -> Result<Self, Error> {
        // SAFETY: forwarded from our caller.
        unsafe { Self::boot_with(map, layout, platform, direct_map, None) }
    }

    /// [`MemoryManager::boot`] with the slab layer's settings (`slub_debug`
    /// flags, the free-pointer seed a kernel draws from its entropy pool).
    ///
    /// # Safety
    ///
    /// As for [`MemoryManager::boot`].
    pub unsafe fn boot_with(
        map: &[MemoryRegion],
        layout: Layout,
        platform: P,
        direct_map: D,
        kmem_config: Option<KmemConfig>,
    ) -> Result<Self, Error> {
        // SAFETY: forwarded from our caller; `()` is the MMU hook of a
        // table nobody walks.
        unsafe { Self::boot_with_mmu(map, layout, platform, direct_map, (), kmem_config) }
    }
}

impl<P: PreemptControl + 'static, D: DirectMap + Clone + 'static, M: Mmu + 'static>
    MemoryManager<P, D, M>
{
    /// [`MemoryManager::boot_with`] on a machine whose MMU must hear of
    /// page-table changes: `mmu` is told of every entry set or cleared and
    /// flushes the TLB (on hardware `invlpg`; on the simulated machine the
    /// host mappings). The kernel page table and vmalloc are built when the
    /// layout's kernel range fits a two-level table (i386).
    ///
    /// # Safety
    ///
    /// As for [`MemoryManager::boot`], and `mmu` belongs to the machine
    /// whose RAM `map` describes and `direct_map` maps.
    pub unsafe fn boot_with_mmu(
        map: &[MemoryRegion],
        layout: Layout,
        platform: P,
        direct_map: D,
        mmu: M,
        kmem_config: Option<KmemConfig>,
    ) -> Result<Self, Error> {
        const { assert!(align_of::<Core<P, D, M>>() <= PAGE_SIZE) };
        let mut memblock = Memblock::from_memory_map(map)?;
        if memblock.end_pfn() > layout.max_pfn() {
            return Err(Error::BadPhysAddr {
                addr: memblock.end_pfn().phys(),
            });
        }
        let config = layout.zone_config(MAX_PAGE_ORDER);
        let zone_bytes = Zones::<P, D>::metadata_bytes(&memblock, &config, platform.nr_cpus());
        let core_bytes = size_of::<Core<P, D, M>>().next_multiple_of(align_of::<LocalStack>());
        let nr_stacks = platform.nr_cpus();
        let stack_bytes = nr_stacks
            .checked_mul(size_of::<LocalStack>())
            .ok_or(Error::BadCpuCount {
                nr_cpus: nr_stacks,
                max: usize::MAX,
            })?
            .next_multiple_of(align_of::<u64>());
        let bytes = core_bytes + stack_bytes + zone_bytes;
        let base = memblock.alloc(bytes as u64, PAGE_SIZE as u64, layout.lowmem_limit())?;
        let region = direct_map_region(&direct_map, base, bytes)?;
        let core = region.cast::<Core<P, D, M>>();
        // SAFETY: `region` is `bytes` bytes of RAM starting at `base`,
        // contiguous in the direct map (checked frame by frame above). It
        // was reserved in memblock just now, so `Zones::new` never releases
        // it and no other part of the manager touches it; the caller
        // promised usable RAM is ours alone. The DirectMap contract keeps it
        // valid while `direct_map` lives, and `direct_map` moves into the
        // zones that hold the slice: the slice is used only through those
        // zones, which are private to this manager and reached only through
        // `&self`, so no use outlives the mapping. The first `core_bytes`
        // hold the `Core`; the slice is the rest. `MaybeUninit<u8>` has no
        // validity requirement on the bytes.
        let boot_mem: &'static mut [MaybeUninit<u8>] = unsafe {
            core::slice::from_raw_parts_mut(region.add(core_bytes + stack_bytes).cast(), zone_bytes)
        };
        let stacks_at = region.wrapping_add(core_bytes).cast::<LocalStack>();
        for i in 0..nr_stacks {
            // SAFETY: the stacks' bytes follow the core inside the region
            // (above), aligned for `LocalStack` (`core_bytes` is a multiple
            // of its alignment and the region is page aligned), ours alone
            // and not yet initialised.
            unsafe { stacks_at.add(i).write(LocalStack::new()) };
        }
        // SAFETY: initialised just above; they live in the reserved range
        // for the manager's life, and only shared references are made.
        let stacks: &'static [LocalStack] =
            unsafe { core::slice::from_raw_parts(stacks_at, nr_stacks) };
        let memory_pages = memblock.memory_pages();
        let reserved_pages = memblock.reserved_pages();
        let keep_mapped = direct_map.clone();
        let vmalloc_map = direct_map.clone();
        // SAFETY: our caller gave us the usable RAM alone and the direct map
        // of this machine; the metadata range is reserved in memblock, so
        // the zones never hand it out.
        let zones = unsafe {
            Zones::new(
                &memblock,
                config,
                BootMem::new(boot_mem),
                platform,
                direct_map,
            )
        }?;
        // SAFETY: a field address inside the range above; nothing is read.
        let zones_at = unsafe { addr_of_mut!((*core).zones) };
        // SAFETY: `core` is page aligned (the range is) and `Core` needs no
        // more; its bytes are ours (above) and not yet initialised.
        unsafe { zones_at.write(zones) };
        let seed = base.as_u64() ^ (region as u64).rotate_left(17);
        // The fine classes: the manager offers kmalloc as Rust's global
        // allocator (`GlobalKmalloc`, `HostedGlobal`).
        let kmem_config = kmem_config.unwrap_or(KmemConfig {
            seed,
            fine_classes: true,
            ..KmemConfig::default()
        });
        // SAFETY: the zones were written just above at an address that stays
        // fixed until `Drop`, which drops the slab layer first.
        let pages = unsafe { SlabPages::new(NonNull::new_unchecked(zones_at)) };
        match Kmem::new(pages, kmem_config) {
            // SAFETY: the `kmem` field is ours, aligned, not yet initialised;
            // so are the last two, which stay empty until built below.
            Ok(kmem) => unsafe {
                addr_of_mut!((*core).kmem).write(kmem);
                addr_of_mut!((*core).table).write(None);
                addr_of_mut!((*core).vmalloc).write(None);
                addr_of_mut!((*core).highmem).write(None);
            },
            Err(e) => {
                // SAFETY: the zones were initialised above and nothing else
                // refers to them any more (`Kmem::new` failed and dropped
                // its page source); moved out once, then dropped.
                drop(unsafe { ptr::read(zones_at) });
                return Err(slab_boot_error(e));
            }
        }
        // SAFETY: both fields are initialised now, and the core stays at
        // this address until `Drop` unregisters the shrinker before
        // dropping anything. Only this shared borrow is made here; the
        // manager keeps the raw pointer, from which teardown derives its
        // own access.
        let (zones, kmem): (&Zones<'static, P, D>, &'static Kmem<SlabPages<P, D>>) =
            unsafe { (&*zones_at, &*addr_of!((*core).kmem)) };
        // SAFETY: `core` came from a non-null direct-map pointer.
        let core = unsafe { NonNull::new_unchecked(core) };
        let built = zones.register_shrinker(kmem).and_then(|()| {
            // SAFETY: the core is initialised and stays put until `Drop`.
            unsafe { kernel_vm_init(core, &layout, mmu, vmalloc_map, stacks) }
        });
        if let Err(e) = built {
            // SAFETY: as in `Drop`: nothing else refers to the core.
            unsafe { drop_core(core) };
            return Err(e);
        }
        Ok(MemoryManager {
            core,
            layout,
            metadata: BootMetadata { base, bytes },
            memory_pages,
            reserved_pages,
            _owns: PhantomData,
            _mapped: keep_mapped,
        })
    }
}

impl<P: PreemptControl + 'static, D: DirectMap + 'static, M: Mmu + 'static> MemoryManager<P, D, M> {
    fn core(&self) -> &Core<P, D, M> {
        // SAFETY: initialised by `boot`, dropped only by `Drop`, and only
        // shared references are ever made to it.
        unsafe { self.core.as_ref() }
    }

    /// The zoned page allocator. Its `'static` only says the metadata is
    /// not borrowed from the caller (it lives in machine RAM); nothing it
    /// returns outlives `&self`. Shrinkers registered with it must be
    /// `'static` for the same reason.
    pub fn zones(&self) -> &Zones<'static, P, D> {
        &self.core().zones
    }

    /// The slab allocator over the zones, for its full API (cache layouts
    /// and counters, validation, the invariant checker).
    pub fn kmem(&self) -> &Kmem<SlabPages<P, D>> {
        &self.core().kmem
    }

    /// The kernel page table (vmalloc, pkmap and fixmap pages), its pages
    /// from the zones; `None` on a layout a two-level table cannot map.
    pub fn kernel_page_table(&self) -> Option<&KernelTable<P, D, M>> {
        self.core().table.as_ref()
    }

    /// vmalloc, for its full API; `None` where there is no kernel page
    /// table (the manager's own vmalloc calls then refuse).
    pub fn vmalloc_layer(&self) -> Option<&KernelVmalloc<P, D, M>> {
        self.core().vmalloc.as_ref()
    }

    /// The kmap pool and kmap_local stacks, for their full API; `None`
    /// where there is no pkmap range (the 64-bit preset maps all RAM).
    pub fn highmem(&self) -> Option<&KernelHighmem<P, D, M>> {
        self.core().highmem.as_ref()
    }

    /// The machine's layout.
    pub fn layout(&self) -> &Layout {
        &self.layout
    }

    /// Where boot put the manager's core, `mem_map` and the per-CPU lists.
    pub fn boot_metadata(&self) -> BootMetadata {
        self.metadata
    }

    /// Pages of RAM the memory map reported (memblock `memory`).
    pub fn memory_pages(&self) -> usize {
        self.memory_pages
    }

    /// Pages reserved at boot: firmware, kernel image and the metadata.
    pub fn reserved_pages(&self) -> usize {
        self.reserved_pages
    }
}

impl<P: PreemptControl + 'static, D: DirectMap + 'static, M: Mmu + 'static> Drop
    for MemoryManager<P, D, M>
{
    fn drop(&mut self) {
        // SAFETY: the core was initialised by `boot`; `&mut self` means no
        // borrow through `&self` is alive, and the pointer is not used again.
        unsafe { drop_core(self.core) }
    }
}

/// Tears a core down in dependency order: vmalloc (whose nodes live in a
/// slab cache and whose entries in the table), the page table (whose pages
/// go back to the zones), the shrinker entry, the slab layer (whose page
/// source points at the zones), then the zones, moved out of the RAM they
/// describe before they drop, since dropping them may release the last
/// handle on that RAM.
///
/// # Safety
///
/// `core` is fully initialised, nothing refers to it any more, and it is
/// not used afterwards.
unsafe fn drop_core<P: PreemptControl + 'static, D: DirectMap + 'static, M: Mmu + 'static>(
    core: NonNull<Core<P, D, M>>,
) {
    let core = core.as_ptr();
    // SAFETY: initialised and unaliased by the caller's promise; the kmap
    // pool and vmalloc refer to the table, so they go first.
    unsafe {
        ptr::drop_in_place(addr_of_mut!((*core).highmem));
        ptr::drop_in_place(addr_of_mut!((*core).vmalloc));
        ptr::drop_in_place(addr_of_mut!((*core).table));
    }
    {
        // SAFETY: initialised and unaliased by the caller's promise; these
        // borrows end before anything is dropped.
        let (zones, kmem): (&Zones<'static, P, D>, &'static Kmem<SlabPages<P, D>>) =
            unsafe { (&(*core).zones, &*addr_of!((*core).kmem)) };
        zones.unregister_shrinker(kmem);
    }
    // SAFETY: as above; each field is dropped exactly once, the slab layer
    // first while the zones it points at are still in place.
    unsafe {
        ptr::drop_in_place(addr_of_mut!((*core).kmem));
        drop(ptr::read(addr_of!((*core).zones)));
    }
}

/// Builds the kernel page table, vmalloc and the kmap pool into `core`
/// (Linux `vmalloc_init`, `kmap_init`), when `layout`'s kernel range fits
/// a two-level table; leaves them empty otherwise.
///
/// # Safety
///
/// `core`'s zones and slab layer are initialised, its table, vmalloc and
/// kmap pool are `None`, and it stays at this address until `drop_core`;
/// `mmu` and `memory` belong to the machine of those zones, and `stacks`
/// are the manager's own, one per CPU id.
unsafe fn kernel_vm_init<P: PreemptControl + 'static, D: DirectMap + Clone + 'static, M: Mmu>(
    core: NonNull<Core<P, D, M>>,
    layout: &Layout,
    mmu: M,
    memory: D,
    stacks: &'static [LocalStack],
) -> Result<(), Error> {
    let core = core.as_ptr();
    // SAFETY: initialised (our caller) and never moved or dropped before
    // `drop_core`, which drops vmalloc and the table first; the `'static`
    // borrows are the private promise the manager's other parts also make.
    let (zones, kmem): (
        &'static Zones<'static, P, D>,
        &'static Kmem<SlabPages<P, D>>,
    ) = unsafe { (&*addr_of!((*core).zones), &*addr_of!((*core).kmem)) };
    let range = layout.kernel_map_range();
    if u32::try_from(range.1.as_usize()).is_err() {
        return Ok(());
    }
    let table = X86PageTable::for_zones(zones, mmu, range)?;
    // SAFETY: `boot`'s contract: the direct map maps lowmem, the frames
    // below `max_low_pfn`, at `PAGE_OFFSET + phys`; the table only records
    // that mapping (Linux's `kernel_physical_mapping_init`).
    unsafe {
        table.map_direct(
            layout.page_offset(),
            layout.max_low_pfn().as_usize(),
            kmm_api::PageProt::KERNEL,
        )?;
    }
    // SAFETY: the field is ours and holds `None` (nothing to drop).
    let table: &'static KernelTable<P, D, M> = unsafe {
        let at = addr_of_mut!((*core).table);
        at.write(Some(table));
        (*at).as_ref().unwrap_unchecked()
    };
    // The nodes' chunks: page-sized objects, as the arena takes them.
    let cache = kmem
        .kmem_cache_create("vmap_area", PAGE_SIZE, PAGE_SIZE, SlabFlags::empty(), None)
        .map_err(slab_boot_error)?;
    let source = kmem.cache_objects(cache).map_err(slab_boot_error)?;
    let nr_cpus = zones.platform().nr_cpus();
    let areas = VmapAreas::new(
        source,
        layout.vmalloc_start(),
        layout.vmalloc_end(),
        nr_cpus,
    )
    .map_err(Error::from)?;
    // SAFETY: the table maps the vmalloc range for this vmalloc alone (the
    // manager's other mappers, pkmap and the fixmap, lie above it); the
    // zones hand out frames of this machine, which the table may map;
    // `memory` is this machine's direct map, whose `virt_to_ptr` reaches
    // every mapped kernel address (the window, or identity on hardware);
    // the platform pins CPUs as `PreemptControl` promises.
    let vmalloc =
        unsafe { Vmalloc::with_vmap_blocks(areas, zones, table, memory.clone(), zones.platform()) }
            .map_err(Error::from)?;
    // SAFETY: the field is ours and holds `None`.
    unsafe { addr_of_mut!((*core).vmalloc).write(Some(vmalloc)) };
    let Some(pkmap_base) = layout.pkmap_base() else {
        return Ok(());
    };
    // The pkmap and fixmap PTE pages now, so a kmap_local in atomic
    // context never allocates one (Linux `page_table_range_init`).
    table.populate(pkmap_base, layout.kernel_map_range().1)?;
    let config = HighmemConfig {
        pkmap_base,
        last_pkmap: layout.last_pkmap(),
        allocator: zones.allocator_id(),
    };
    // SAFETY: the pkmap range and the fixmap's kmap_local slots are pages
    // of the kernel table that nothing else of the manager maps (vmalloc
    // stays below PKMAP_BASE); `memory` reaches what the table maps (this
    // machine's direct map and window) and the zones are of the same
    // machine; the platform's `get_cpu` nests (the `PreemptControl`
    // contract of a CPU pinned by preemption, or a held hosted slot).
    let highmem = unsafe {
        Highmem::new(
            table,
            zones.platform(),
            memory,
            config,
            stacks,
            |cpu, slot| layout.kmap_local_addr(cpu, slot),
        )
    }
    .map_err(|_| Error::BadVirtAddr { addr: pkmap_base })?;
    // SAFETY: the field is ours and holds `None`.
    unsafe { addr_of_mut!((*core).highmem).write(Some(highmem)) };
    Ok(())
}

/// A slab boot failure as the manager's error: the page allocator's own
/// error where there is one, else the allocator could not be built.
fn slab_boot_error(e: SlabError) -> Error {
    match e {
        SlabError::Page(e) => e,
        _ => Error::NoMemory {
            order: kmm_api::Order::ZERO,
        },
    }
}

/// The host pointer to `[base, base + bytes)` through the direct map,
/// provided every frame of it is mapped at consecutive addresses.
fn direct_map_region(
    direct_map: &impl DirectMap,
    base: PhysAddr,
    bytes: usize,
) -> Result<*mut u8, Error> {
    let first = base.pfn();
    let start = direct_map
        .pfn_to_ptr(first)
        .ok_or(Error::PfnOutOfRange { pfn: first })?
        .as_ptr();
    for i in 1..bytes.div_ceil(PAGE_SIZE) {
        let pfn = first.add(i);
        let ptr = direct_map.pfn_to_ptr(pfn).map(|p| p.as_ptr());
        if ptr != Some(start.wrapping_add(i * PAGE_SIZE)) {
            return Err(Error::PfnOutOfRange { pfn });
        }
    }
    Ok(start)
}

#[cfg(feature = "sim")]
mod sim_preset {
    use super::*;
    use crate::sim::{Machine, MachineConfig, SimError, SimMmu};
    use std::vec::Vec;

    /// The manager of a simulated i386 machine.
    pub type SimMemoryManager = MemoryManager<Machine, Machine, SimMmu>;

    impl MemoryManager<Machine, Machine, SimMmu> {
        /// Builds a simulated i386 machine and boots the manager on it,
        /// with the kernel page table mirrored into host mappings.
        pub fn sim(config: MachineConfig) -> Result<Self, SimError> {
            let machine = Machine::new(config)?;
            let map: Vec<MemoryRegion> = machine.memory_map().to_vec();
            let layout = *machine.layout();
            let mmu = machine.mmu().map_err(SimError::Config)?;
            // SAFETY: the machine was just built and nothing else uses its
            // RAM; its mappings live while any handle does, and the
            // handles passed here (the MMU hook is the same machine's) live
            // inside the manager.
            unsafe { Self::boot_with_mmu(&map, layout, machine.clone(), machine, mmu, None) }
                .map_err(SimError::Config)
        }

        /// The simulated machine.
        pub fn machine(&self) -> &Machine {
            self.zones().direct_map()
        }
    }
}

#[cfg(feature = "sim")]
pub use sim_preset::SimMemoryManager;

#[cfg(all(feature = "std", target_pointer_width = "64"))]
mod hosted_preset {
    use super::*;
    use crate::hosted::Hosted;

    /// The manager of the hosted 64-bit preset.
    pub type HostedMemoryManager = MemoryManager<Hosted, Hosted>;

    impl MemoryManager<Hosted, Hosted> {
        /// `ram_bytes` of host memory as a 64-bit machine with `nr_cpus`
        /// CPUs, all of it directly mapped. The calling thread gives up the
        /// CPU boot claimed before returning, so `nr_cpus` threads that
        /// use the manager afterwards each own a CPU (the caller, should
        /// it allocate again, claims one afresh like any of them).
        pub fn hosted(ram_bytes: usize, nr_cpus: usize) -> Result<Self, Error> {
            let host = Hosted::new(ram_bytes, nr_cpus)?;
            let map = host.memory_map();
            let layout = *host.layout();
            // SAFETY: the buffer was just allocated and nothing else uses
            // it; it lives while any handle does, and the two handles passed
            // here live inside the manager.
            let mm = unsafe { Self::boot(&map, layout, host.clone(), host.clone()) }?;
            // SAFETY: boot has returned, so every section it pinned on this
            // thread is closed.
            unsafe { host.release_cpu() };
            Ok(mm)
        }
    }
}

#[cfg(all(feature = "std", target_pointer_width = "64"))]
pub use hosted_preset::HostedMemoryManager;
