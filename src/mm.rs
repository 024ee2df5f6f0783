//! [`MemoryManager`]: the composed memory manager of one machine, booted
//! from a physical memory map and a [`Layout`]. Owns the zones (and, in
//! later layers, slab, vmalloc and kmap); never allocates before the zones
//! exist, except the one early carve-out below.
//!
//! # Boot sequence (Linux `setup_arch` → `mm_core_init`)
//!
//! 1. `Memblock::from_memory_map`: RAM and reservations (the firmware hole,
//!    the kernel image) as page ranges.
//! 2. `Zones::metadata_bytes`: the bytes `mem_map` and the per-CPU lists
//!    need for this machine and CPU count.
//! 3. `memblock.alloc(bytes, PAGE_SIZE, lowmem limit)`: the highest free
//!    lowmem range that fits, now reserved, so it is never released.
//! 4. That range, seen through the direct map, becomes the `BootMem` the
//!    zones carve their metadata from.
//! 5. `Zones::new` releases every other free frame into its zone.
//!
//! The metadata lives in the machine's own RAM, as in a kernel: no host
//! allocation and no static array is sized for the machine.

use crate::layout::Layout;
use core::mem::MaybeUninit;
use kmm_api::{DirectMap, Error, MemoryRegion, PhysAddr, Platform, MAX_PAGE_ORDER, PAGE_SIZE};
use kmm_zones::boot::BootMem;
use kmm_zones::memblock::Memblock;
use kmm_zones::Zones;

/// Where boot put the zones' metadata: a physical range inside lowmem.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct BootMetadata {
    /// First byte.
    pub base: PhysAddr,
    /// Bytes reserved (what `Zones::metadata_bytes` asked for).
    pub bytes: usize,
}

/// The memory manager of one machine.
///
/// The zones API (Linux names: `alloc_pages`, `__free_pages`,
/// `__get_free_pages`, watermarks, reports) is reached through
/// [`MemoryManager::zones`]; the manager adds the layout and the boot
/// record, and is where later layers attach.
///
/// ```
/// # #[cfg(all(feature = "std", target_pointer_width = "64"))] {
/// use kmm::MemoryManager;
/// use kmm_api::{Order, GFP_KERNEL};
/// let mm = MemoryManager::hosted(8 << 20, 1)?;
/// let pfn = mm.zones().alloc_pages(GFP_KERNEL, Order::ZERO)?;
/// mm.zones().__free_pages(pfn, Order::ZERO)?;
/// # }
/// # Ok::<(), kmm_api::Error>(())
/// ```
pub struct MemoryManager<P: Platform, D: DirectMap> {
    // 'static is a private promise: the metadata slice lives in machine RAM
    // that `D` keeps reachable, and nothing hands it out past `&self`.
    zones: Zones<'static, P, D>,
    layout: Layout,
    metadata: BootMetadata,
    memory_pages: usize,
    reserved_pages: usize,
}

impl<P: Platform, D: DirectMap> MemoryManager<P, D> {
    /// Boots the zones of a machine from its memory map, with the zone
    /// limits of `layout` and orders up to `MAX_PAGE_ORDER`.
    ///
    /// Errors: the memory map's ([`Error::TooManyRegions`], ...), RAM in the
    /// map beyond `layout` ([`Error::BadPhysAddr`]), no lowmem range large
    /// enough for the metadata ([`Error::NoMemory`]), a direct map that does
    /// not map that range contiguously ([`Error::PfnOutOfRange`]), and
    /// those of `Zones::new`.
    ///
    /// # Safety
    ///
    /// The RAM the map calls usable must belong to this manager alone from
    /// now on (nothing else reads or writes it), and `direct_map`'s
    /// mappings must stay valid until the manager is dropped, which the
    /// [`DirectMap`] contract already requires for as long as `direct_map`
    /// lives.
    pub unsafe fn boot(
        map: &[MemoryRegion],
        layout: Layout,
        platform: P,
        direct_map: D,
    ) -> Result<Self, Error> {
        let mut memblock = Memblock::from_memory_map(map)?;
        if memblock.end_pfn() > layout.max_pfn() {
            return Err(Error::BadPhysAddr {
                addr: memblock.end_pfn().phys(),
            });
        }
        let config = layout.zone_config(MAX_PAGE_ORDER);
        let bytes = Zones::<P, D>::metadata_bytes(&memblock, &config, platform.nr_cpus());
        let base = memblock.alloc(bytes as u64, PAGE_SIZE as u64, layout.lowmem_limit())?;
        let region = direct_map_region(&direct_map, base, bytes)?;
        // SAFETY: `region` is `bytes` bytes of RAM starting at `base`,
        // contiguous in the direct map (checked frame by frame above). It
        // was reserved in memblock just now, so `Zones::new` never releases
        // it and no other part of the manager touches it; the caller
        // promised usable RAM is ours alone. The DirectMap contract keeps it
        // valid while `direct_map` lives, and `direct_map` moves into the
        // zones that hold the slice: the slice is used only through those
        // zones, which are private to this manager and reached only through
        // `&self`, so no use outlives the mapping. `MaybeUninit<u8>` has no
        // validity requirement on the bytes.
        let boot_mem: &'static mut [MaybeUninit<u8>] =
            unsafe { core::slice::from_raw_parts_mut(region.cast(), bytes) };
        let memory_pages = memblock.memory_pages();
        let reserved_pages = memblock.reserved_pages();
        let zones = Zones::new(
            &memblock,
            config,
            BootMem::new(boot_mem),
            platform,
            direct_map,
        )?;
        Ok(MemoryManager {
            zones,
            layout,
            metadata: BootMetadata { base, bytes },
            memory_pages,
            reserved_pages,
        })
    }

    /// The zoned page allocator. Its `'static` only says the metadata is
    /// not borrowed from the caller (it lives in machine RAM); nothing it
    /// returns outlives `&self`. Shrinkers registered with it must be
    /// `'static` for the same reason.
    pub fn zones(&self) -> &Zones<'static, P, D> {
        &self.zones
    }

    /// The machine's layout.
    pub fn layout(&self) -> &Layout {
        &self.layout
    }

    /// Where boot put `mem_map` and the per-CPU lists.
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
    use crate::sim::{Machine, MachineConfig, SimError, SimPageTable};
    use std::vec::Vec;

    /// The manager of a simulated i386 machine.
    pub type SimMemoryManager = MemoryManager<Machine, Machine>;

    impl MemoryManager<Machine, Machine> {
        /// Builds a simulated i386 machine and boots the manager on it.
        pub fn sim(config: MachineConfig) -> Result<Self, SimError> {
            let machine = Machine::new(config)?;
            let map: Vec<MemoryRegion> = machine.memory_map().to_vec();
            let layout = *machine.layout();
            // SAFETY: the machine was just built and nothing else uses its
            // RAM; its mappings live while any handle does, and the two
            // handles passed here live inside the manager.
            unsafe { Self::boot(&map, layout, machine.clone(), machine) }.map_err(SimError::Config)
        }

        /// The simulated machine.
        pub fn machine(&self) -> &Machine {
            self.zones.direct_map()
        }

        /// The kernel page table, its page-table pages allocated from the
        /// zones. One per machine at a time (see
        /// [`Machine::kernel_page_table`]).
        pub fn kernel_page_table(
            &self,
        ) -> Result<SimPageTable<&Zones<'static, Machine, Machine>>, Error> {
            self.machine().kernel_page_table(&self.zones)
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
        /// CPUs, all of it directly mapped.
        pub fn hosted(ram_bytes: usize, nr_cpus: usize) -> Result<Self, Error> {
            let host = Hosted::new(ram_bytes, nr_cpus)?;
            let map = host.memory_map();
            let layout = *host.layout();
            // SAFETY: the buffer was just allocated and nothing else uses
            // it; it lives while any handle does, and the two handles passed
            // here live inside the manager.
            unsafe { Self::boot(&map, layout, host.clone(), host) }
        }
    }
}

#[cfg(all(feature = "std", target_pointer_width = "64"))]
pub use hosted_preset::HostedMemoryManager;
