//! The tour's workload on simulated i386 machines, asserted: the same
//! functions `examples/tour.rs` prints.

use kmm::sim::MachineConfig;
use kmm::workload::{self, Report};
use kmm::MemoryManager;
use kmm_api::Error;
use kmm_zones::ZoneType::{self, Dma, HighMem, Normal};

const MIB: u64 = 1 << 20;

fn run(ram_bytes: u64, pae: bool) -> Report {
    let mm = MemoryManager::sim(MachineConfig {
        ram_bytes,
        pae,
        nr_cpus: 2,
    })
    .unwrap();
    let report = workload::run(&mm).unwrap();
    mm.zones().check().unwrap();
    report
}

fn zone_of(report: &Report, name: &str) -> ZoneType {
    report
        .placements
        .iter()
        .find(|p| p.name == name)
        .unwrap()
        .zone
}

#[test]
fn each_gfp_zone_modifier_is_served_by_its_zone_on_i386() {
    let r = run(2 << 30, false);
    assert_eq!(zone_of(&r, "GFP_DMA"), Dma);
    // i386 has no ZONE_DMA32: __GFP_DMA32 means NORMAL there.
    assert_eq!(zone_of(&r, "GFP_DMA32"), Normal);
    assert_eq!(zone_of(&r, "GFP_KERNEL"), Normal);
    assert_eq!(zone_of(&r, "GFP_HIGHUSER"), HighMem);
}

#[test]
fn tour_workload_shows_every_fallback_rule_on_a_2_gib_machine() {
    let r = run(2 << 30, false);

    let n = r.never_upward;
    assert!(n.highmem_free > 0);
    assert_eq!(
        n.served[Normal.index()],
        n.count,
        "GFP_KERNEL never goes upward"
    );

    let h = r.highmem.expect("a 2 GiB machine has HIGHMEM");
    assert_eq!(h.fallback.map(|(_, z)| z), Some(Normal));
    let w = h.at_fallback.watermarks;
    assert!(h.at_fallback.free >= w.min && h.at_fallback.free <= w.low);
    assert_eq!(h.free_before[Dma.index()], h.free_at_fallback[Dma.index()]);
    assert_eq!(
        h.free_before[Normal.index()],
        h.free_at_fallback[Normal.index()]
    );

    let d = r.normal;
    assert_eq!(d.fallback.map(|(_, z)| z), Some(Dma));
    assert_eq!(
        d.free_before[Dma.index()],
        d.free_at_fallback[Dma.index()],
        "DMA untouched by NORMAL requests until NORMAL is exhausted"
    );
    assert!(d.at_fallback.free <= d.at_fallback.watermarks.low);

    let a = r.atomic;
    assert!(matches!(a.kernel_error, Error::NoMemory { .. }));
    assert!(
        a.after.free < a.after.watermarks.min,
        "GFP_ATOMIC dips below min"
    );

    assert!(matches!(r.highmem_address, Some(Error::InvalidGfp { .. })));
    assert_eq!(r.free_before_after.0, r.free_before_after.1);
}

#[test]
fn a_machine_without_highmem_skips_the_highmem_drain() {
    let r = run(160 * MIB, false);
    assert!(r.highmem.is_none());
    assert_eq!(zone_of(&r, "GFP_HIGHUSER"), Normal);
    assert_eq!(r.normal.fallback.map(|(_, z)| z), Some(Dma));
    assert_eq!(r.free_before_after.0, r.free_before_after.1);
}

#[test]
fn the_workload_runs_the_same_with_the_pae_layout() {
    let r = run(1 << 30, true);
    assert_eq!(
        r.highmem.and_then(|h| h.fallback).map(|(_, z)| z),
        Some(Normal)
    );
    assert_eq!(r.free_before_after.0, r.free_before_after.1);
}

#[test]
fn the_seed_example_is_served_by_kmalloc_128_in_lowmem_after_the_zone_workload() {
    let mm = MemoryManager::sim(MachineConfig {
        ram_bytes: 1 << 30,
        pae: false,
        nr_cpus: 2,
    })
    .unwrap();
    workload::run(&mm).unwrap();
    let s = workload::seed_example(&mm).unwrap();
    assert_eq!((s.cache, s.ksize), ("kmalloc-128", 128));
    assert_eq!(s.kmalloc_addr.as_usize() % 128, 0);
    assert_eq!(s.slab_zone, Normal, "slabs never come from HighMem");
    assert_eq!(s.page_zone, Normal);
    assert!(s.kmalloc_addr.as_usize() >= mm.layout().page_offset().as_usize());
    assert!(matches!(
        s.double_free,
        Some(kmm::Error::Slab(kmm_slab::SlabError::DoubleFree {
            cache: "kmalloc-128",
            ..
        }))
    ));
    let active = |slabinfo: &str| -> usize {
        let line = slabinfo
            .lines()
            .find(|l| l.starts_with("kmalloc-128 "))
            .unwrap();
        line.split_whitespace().nth(1).unwrap().parse().unwrap()
    };
    // Besides the allocator's own (off-slab headers of other caches).
    let own = active(&mm.slabinfo().to_string());
    assert_eq!(
        active(&s.slabinfo),
        own + 1,
        "one active object while it was live"
    );
    let line = s
        .slabinfo
        .lines()
        .find(|l| l.starts_with("kmalloc-128 "))
        .unwrap();
    let fields: Vec<&str> = line.split_whitespace().collect();
    assert_eq!(fields[4], s.objects_per_slab.to_string());
    assert_eq!(s.free_before_after.0, s.free_before_after.1);
    mm.zones().check().unwrap();
    mm.kmem().check_invariants().unwrap();
}

#[test]
fn the_vmalloc_example_maps_scattered_highmem_frames_and_an_ioremap() {
    let mm = MemoryManager::sim(MachineConfig::default()).unwrap();
    let machine = mm.machine().clone();
    let seen = move |phys| {
        let mut byte = [0];
        machine.read_device(phys, &mut byte).ok().map(|()| byte[0])
    };
    let (base, _) = mm.machine().device_window().unwrap();
    let device = kmm_api::PhysAddr::new(base.as_u64() + 0xc_0123);
    let v = workload::vmalloc_example(&mm, Some((device, &seen))).unwrap();
    let pages = workload::VMALLOC_EXAMPLE_BYTES / kmm_api::PAGE_SIZE;
    assert_eq!(
        (v.frames.len(), v.highmem_frames, v.pages_compared),
        (pages, pages, pages)
    );
    assert_eq!(v.addr, mm.layout().vmalloc_start());
    let (_, regs, byte) = v.ioremap.unwrap();
    assert_eq!((regs.as_usize() & 0xfff, byte), (0x123, 0x5a));
    assert!(
        v.vmallocinfo.contains(" pages=256 vmalloc\n"),
        "{}",
        v.vmallocinfo
    );
    assert!(
        v.vmallocinfo.contains(" phys=0xfebc0000 ioremap\n"),
        "{}",
        v.vmallocinfo
    );
    assert!(v.flushes >= 1);
    assert_eq!(v.free_before_after.0, v.free_before_after.1);
    assert_eq!(mm.meminfo().vmalloc_used, 0);
    mm.check().unwrap();
}

#[test]
fn the_kmap_example_reaches_highmem_through_two_addresses_and_wraps_with_one_flush() {
    let mm = MemoryManager::sim(MachineConfig::default()).unwrap();
    let h = workload::highmem_example(&mm).unwrap();
    assert!(h.pfn >= mm.layout().max_low_pfn(), "above 896 MiB");
    assert_ne!(h.pkmap_addr, h.local_addr);
    assert_eq!(&h.read_back, b"highmem!");
    let (before, after) = h.stats_before_after;
    assert_eq!(h.cycled, mm.layout().last_pkmap() + 1);
    assert_eq!(after.maps - before.maps, h.cycled as u64);
    assert_eq!(after.flushes - before.flushes, 1, "one flush for the wrap");
    mm.check().unwrap();
}
