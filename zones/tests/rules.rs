//! One test per rule of the zoned allocator, each named after its rule.
//! Machines are scaled-down i386 layouts from `kmm_zones::testing`
//! (smaller still under miri). A test frees what it allocated through the
//! handle it was given; a test of a refused free (a double free, a wrong
//! order, a frame nobody holds) goes through `support::free_raw`.

mod support;

use kmm_api::{
    DirectMap, Error, GfpFlags, MemoryRegion, Order, OwnerTag, OwnerWord, PageOwner, Pages, Pfn,
    Platform, RegionKind, Shrinker, __GFP_DMA, __GFP_DMA32, __GFP_HIGHMEM, __GFP_NOFAIL,
    __GFP_NORETRY, __GFP_RETRY_MAYFAIL, __GFP_ZERO, GFP_ATOMIC, GFP_DMA, GFP_HIGHUSER, GFP_KERNEL,
    GFP_NOWAIT, MAX_PAGE_ORDER, PAGE_SIZE,
};
use kmm_buddy::FrameTag;
use kmm_zones::boot::BootMem;
use kmm_zones::testing::{set_cpu, TestMachine, TestZones};
use kmm_zones::watermark::{setup_per_zone_lowmem_reserve, setup_per_zone_wmarks};
use kmm_zones::{
    Invariant, ZoneConfig, ZoneType, Zones, MAX_NR_ZONES, MAX_RECLAIM_RETRIES, MAX_SHRINKERS,
};
use std::sync::atomic::{AtomicUsize, Ordering};
use support::free_raw;

/// Frames of the standard test machine.
fn frames() -> usize {
    if cfg!(miri) {
        256
    } else {
        4096
    }
}

fn order(o: u32) -> Order {
    Order::new(o).unwrap()
}

/// Allocates order-0 pages with `gfp` until it fails; returns them.
fn exhaust(zones: &TestZones<'_>, gfp: GfpFlags) -> Vec<Pages> {
    let mut taken = Vec::new();
    while let Ok(page) = zones.alloc_pages(gfp, Order::ZERO) {
        taken.push(page);
    }
    taken
}

/// Everything observable about the allocator's state: per-zone counters
/// and each descriptor's (tag, PG_pcp, PG_owned, refcount).
fn fingerprint(zones: &TestZones<'_>, machine_frames: usize) -> Fingerprint {
    // Page 0 is a hole outside mem_map.
    let pages = (0..machine_frames)
        .filter_map(|pfn| zones.pfn_to_page(Pfn::new(pfn)))
        .map(|page| {
            (
                page.tag(),
                page.is_pcp(),
                page.is_owned(),
                page.page_count(),
            )
        })
        .collect();
    (zones.zone_stats(), pages)
}

/// Per-zone counters, and each descriptor's (tag, PG_pcp, PG_owned,
/// refcount).
type Fingerprint = (
    [Option<kmm_zones::report::ZoneStats>; MAX_NR_ZONES],
    Vec<(FrameTag, bool, bool, u32)>,
);

#[test]
fn boot_releases_free_ranges_and_computes_watermarks_and_reserves() {
    let mut machine = TestMachine::i386_scaled(frames());
    let zones = machine.boot().unwrap();
    let stats = zones.zone_stats();
    let managed: [usize; MAX_NR_ZONES] = std::array::from_fn(|z| stats[z].map_or(0, |s| s.managed));
    let dma = stats[ZoneType::Dma.index()].unwrap();
    // Page 0 is reserved, not RAM: memory starts at pfn 1.
    assert_eq!(dma.start_pfn, Pfn::new(1));
    assert_eq!(dma.spanned, frames() / 4 - 1);
    assert_eq!(dma.present, frames() / 4 - 1);
    assert_eq!(
        dma.managed,
        dma.present - 2,
        "the kernel image is RAM, never released"
    );
    assert!(stats[ZoneType::Dma32.index()].is_none());
    assert_eq!(managed.iter().sum::<usize>(), frames() - 3);
    let wmarks = setup_per_zone_wmarks(&managed);
    let reserve = setup_per_zone_lowmem_reserve(&managed);
    for s in stats.iter().flatten() {
        assert_eq!(s.watermarks, wmarks[s.zone.index()]);
        assert_eq!(s.lowmem_reserve, reserve[s.zone.index()]);
        assert_eq!(s.free, s.managed, "everything free after boot");
    }
    zones.check().unwrap();
}

#[test]
fn metadata_is_16_bytes_per_frame_plus_per_cpu_lists() {
    let machine = TestMachine::i386_scaled(frames());
    let bytes = TestZones::metadata_bytes(machine.memblock(), &machine.config(), 2);
    let per_cpu = bytes - frames() * 16;
    assert_eq!(TestZones::PAGE_DESCRIPTOR_BYTES, 16);
    // Three populated zones, two CPUs: a few hundred bytes, not per frame.
    assert!(per_cpu < 3 * 2 * 128 + 64, "per-CPU part {per_cpu} bytes");
}

#[test]
fn boot_memory_smaller_than_metadata_bytes_is_an_error() {
    let machine = TestMachine::i386_scaled(frames());
    let bytes = TestZones::metadata_bytes(machine.memblock(), &machine.config(), 2);
    let mut short = vec![std::mem::MaybeUninit::uninit(); bytes / 2];
    // SAFETY: the machine's RAM, its own direct map, and no other zones:
    // the call fails before anything is handed out anyway.
    let result = unsafe {
        Zones::new(
            machine.memblock(),
            machine.config(),
            BootMem::new(&mut short),
            machine.platform(),
            machine.direct_map(),
        )
    };
    assert!(matches!(result, Err(Error::SizeTooLarge { .. })));
}

#[test]
fn a_dma32_layout_falls_back_normal_then_dma32_then_dma() {
    let frames = frames();
    let map = [MemoryRegion::new(
        0,
        (frames * PAGE_SIZE) as u64,
        RegionKind::Usable,
    )];
    let config = ZoneConfig {
        dma_end: Pfn::new(frames / 8),
        dma32_end: Some(Pfn::new(frames / 2)),
        lowmem_end: Pfn::new(frames),
        max_order: MAX_PAGE_ORDER,
    };
    let mut machine = TestMachine::new(&map, config, 1).unwrap();
    let zones = machine.boot().unwrap();
    assert_eq!(zones.populated_zones(), [true, true, true, false]);
    let kernel = exhaust(&zones, GFP_KERNEL);
    let order: Vec<ZoneType> = kernel
        .iter()
        .map(|p| zones.page_zone(p.pfn()).unwrap())
        .collect();
    // The fast path takes the first zone above its low mark, the slow path
    // the first above min: NORMAL first, then the zones below it, never up.
    assert_eq!(order.first(), Some(&ZoneType::Normal));
    assert!(order.contains(&ZoneType::Dma32));
    assert!(order.iter().all(|&z| z <= ZoneType::Normal));
    let high = zones.alloc_pages(GFP_HIGHUSER, Order::ZERO);
    assert_eq!(high.err(), Some(Error::NoMemory { order: Order::ZERO }));
    zones.check().unwrap();
    drop(zones);

    let zones = machine.boot().unwrap();
    let dma32 = exhaust(&zones, GFP_KERNEL | __GFP_DMA32);
    assert!(dma32
        .iter()
        .all(|p| zones.page_zone(p.pfn()) <= Some(ZoneType::Dma32)));
    assert!(dma32
        .iter()
        .any(|p| zones.page_zone(p.pfn()) == Some(ZoneType::Dma32)));
    zones.check().unwrap();
}

#[test]
fn highmem_request_falls_back_to_normal_never_upward() {
    let mut machine = TestMachine::i386_scaled(frames());
    let zones = machine.boot().unwrap();
    let got: Vec<ZoneType> = (0..frames() / 2)
        .map(|_| zones.alloc_pages(GFP_HIGHUSER, Order::ZERO).unwrap())
        .map(|page| zones.page_zone(page.pfn()).unwrap())
        .collect();
    assert_eq!(got[0], ZoneType::HighMem, "HIGHMEM first");
    assert!(
        got.contains(&ZoneType::Normal),
        "HIGHMEM exhausted, NORMAL used"
    );
    assert!(
        !got.contains(&ZoneType::Dma),
        "DMA untouched while NORMAL has room"
    );
    let kernel = exhaust(&zones, GFP_KERNEL);
    assert!(kernel
        .iter()
        .all(|page| zones.page_zone(page.pfn()) != Some(ZoneType::HighMem)));
    zones.check().unwrap();
}

#[test]
fn gfp_dma_allocates_only_from_zone_dma() {
    let mut machine = TestMachine::i386_scaled(frames());
    let zones = machine.boot().unwrap();
    let dma = exhaust(&zones, GFP_DMA | GFP_KERNEL);
    assert!(!dma.is_empty());
    assert!(dma
        .iter()
        .all(|p| zones.page_zone(p.pfn()) == Some(ZoneType::Dma)));
    assert!(
        zones.alloc_pages(GFP_KERNEL, Order::ZERO).is_ok(),
        "NORMAL still has room"
    );
}

#[test]
fn lowmem_reserve_keeps_normal_requests_out_of_dma() {
    let mut machine = TestMachine::i386_scaled(frames());
    let zones = machine.boot().unwrap();
    exhaust(&zones, GFP_HIGHUSER);
    let dma = zones.zone_stats()[ZoneType::Dma.index()].unwrap();
    let kept = dma.watermarks.min + dma.lowmem_reserve[ZoneType::HighMem.index()];
    assert!(
        dma.free >= kept.min(dma.managed),
        "DMA free {} < {kept}",
        dma.free
    );
    let more_dma = exhaust(&zones, GFP_DMA | GFP_KERNEL);
    // (A miri-sized machine's reserve rounds down to 0 pages.)
    if dma.lowmem_reserve[ZoneType::HighMem.index()] > 0 {
        assert!(
            !more_dma.is_empty(),
            "GFP_DMA may use what the reserve kept"
        );
    }
}

#[test]
fn contradictory_zone_modifiers_are_refused_and_change_nothing() {
    let mut machine = TestMachine::i386_scaled(frames());
    let zones = machine.boot().unwrap();
    let before = fingerprint(&zones, frames());
    let gfp = GFP_KERNEL | __GFP_DMA | __GFP_HIGHMEM;
    assert_eq!(
        zones.alloc_pages(gfp, Order::ZERO),
        Err(Error::InvalidGfp { gfp })
    );
    assert_eq!(fingerprint(&zones, frames()), before);
}

#[test]
fn gfp_atomic_dips_below_min_where_gfp_kernel_fails() {
    let mut machine = TestMachine::i386_scaled(frames());
    let zones = machine.boot().unwrap();
    exhaust(&zones, GFP_KERNEL);
    assert!(
        zones.alloc_pages(GFP_NOWAIT, Order::ZERO).is_err(),
        "NOWAIT has no reserve"
    );
    let normal_before = zones.zone_stats()[ZoneType::Normal.index()].unwrap();
    let atomic = zones.alloc_pages(GFP_ATOMIC, Order::ZERO).unwrap();
    let normal = zones.zone_stats()[ZoneType::Normal.index()].unwrap();
    assert_eq!(zones.page_zone(atomic.pfn()), Some(ZoneType::Normal));
    assert!(
        normal_before.free <= normal.watermarks.min,
        "GFP_KERNEL stopped at min"
    );
    assert!(
        normal.free < normal.watermarks.min,
        "GFP_ATOMIC went below min"
    );
    let rest = exhaust(&zones, GFP_ATOMIC);
    let normal = zones.zone_stats()[ZoneType::Normal.index()].unwrap();
    assert!(normal.free as f64 >= normal.watermarks.min as f64 * 0.375 - 1.0);
    assert!(!rest.is_empty());
    zones.check().unwrap();
}

#[test]
fn gfp_atomic_never_calls_reclaim_wait_or_shrinkers() {
    let mut machine = TestMachine::i386_scaled(frames());
    let platform = machine.platform().with_reclaim(|_, _| 1);
    let zones = machine.boot_with(platform).unwrap();
    let shrinker = CountingShrinker::default();
    zones.register_shrinker(&shrinker).unwrap();
    exhaust(&zones, GFP_ATOMIC);
    assert!(zones.alloc_pages(GFP_ATOMIC, order(3)).is_err());
    assert_eq!(zones.platform().reclaim_calls(), 0);
    assert_eq!(zones.platform().wait_calls(), 0);
    assert_eq!(shrinker.counts.load(Ordering::SeqCst), 0);
}

#[test]
fn noretry_makes_exactly_one_reclaim_attempt() {
    let mut machine = TestMachine::i386_scaled(frames());
    let platform = machine.platform().with_reclaim(|_, _| 1);
    let zones = machine.boot_with(platform).unwrap();
    exhaust(&zones, GFP_KERNEL | __GFP_NORETRY);
    assert_eq!(zones.platform().reclaim_calls(), 1);
    assert_eq!(zones.platform().wait_calls(), 0);
}

#[test]
fn retry_mayfail_retries_while_reclaim_makes_progress_up_to_a_bound() {
    let mut machine = TestMachine::i386_scaled(frames());
    let platform = machine.platform().with_reclaim(|_, _| 1);
    let zones = machine.boot_with(platform).unwrap();
    exhaust(&zones, GFP_ATOMIC);
    let err = zones.alloc_pages(GFP_KERNEL | __GFP_RETRY_MAYFAIL, Order::ZERO);
    assert_eq!(err, Err(Error::NoMemory { order: Order::ZERO }));
    assert_eq!(zones.platform().reclaim_calls(), MAX_RECLAIM_RETRIES);

    let mut machine = TestMachine::i386_scaled(frames());
    let calls = AtomicUsize::new(0);
    let calls = std::sync::Arc::new(calls);
    let seen = calls.clone();
    let platform = machine
        .platform()
        .with_reclaim(move |_, _| usize::from(seen.fetch_add(1, Ordering::SeqCst) < 3));
    let zones = machine.boot_with(platform).unwrap();
    exhaust(&zones, GFP_ATOMIC);
    assert!(zones
        .alloc_pages(GFP_KERNEL | __GFP_RETRY_MAYFAIL, Order::ZERO)
        .is_err());
    assert_eq!(
        calls.load(Ordering::SeqCst),
        4,
        "three rounds of progress, then none"
    );
}

#[test]
fn costly_orders_are_not_retried_without_retry_mayfail() {
    let mut machine = TestMachine::i386_scaled(frames());
    let platform = machine.platform().with_reclaim(|_, _| 1);
    let zones = machine.boot_with(platform).unwrap();
    exhaust(&zones, GFP_ATOMIC);
    assert!(zones.alloc_pages(GFP_KERNEL, order(4)).is_err());
    assert_eq!(zones.platform().reclaim_calls(), 1);
}

#[test]
fn nofail_that_cannot_block_or_exceeds_max_order_is_refused_up_front() {
    let mut machine = TestMachine::i386_scaled(frames());
    let zones = machine.boot().unwrap();
    let gfp = GFP_ATOMIC | __GFP_NOFAIL;
    assert_eq!(
        zones.alloc_pages(gfp, Order::ZERO),
        Err(Error::InvalidGfp { gfp })
    );
    assert!(matches!(
        zones.alloc_pages(GFP_KERNEL | __GFP_NOFAIL, order(11)),
        Err(Error::OrderTooLarge { order: 11, max: 10 })
    ));
}

#[test]
#[cfg_attr(miri, ignore)]
fn nofail_waits_until_another_cpu_frees_memory() {
    let mut machine = TestMachine::i386_scaled(frames());
    let zones = machine.boot().unwrap();
    let taken = exhaust(&zones, GFP_ATOMIC);
    std::thread::scope(|s| {
        let waiter = s.spawn(|| {
            set_cpu(1);
            zones.alloc_pages(GFP_KERNEL | __GFP_NOFAIL, Order::ZERO)
        });
        while zones.platform().wait_calls() == 0 {
            std::thread::yield_now();
        }
        set_cpu(0);
        for page in taken {
            zones.__free_pages(page).unwrap();
        }
        let page = waiter.join().unwrap().unwrap();
        zones.__free_pages(page).unwrap();
    });
    zones.check().unwrap();
}

#[derive(Default)]
struct CountingShrinker {
    counts: AtomicUsize,
}

impl Shrinker for CountingShrinker {
    fn count_objects(&self) -> usize {
        self.counts.fetch_add(1, Ordering::SeqCst);
        0
    }
    fn scan_objects(&self, _gfp: GfpFlags, _nr: usize) -> usize {
        0
    }
}

#[test]
fn shrinkers_run_for_blocking_requests_and_the_registry_is_bounded() {
    let shrinkers: Vec<CountingShrinker> =
        (0..=MAX_SHRINKERS).map(|_| Default::default()).collect();
    let mut machine = TestMachine::i386_scaled(frames());
    let zones = machine.boot().unwrap();
    for s in &shrinkers[..MAX_SHRINKERS] {
        zones.register_shrinker(s).unwrap();
    }
    assert_eq!(
        zones.register_shrinker(&shrinkers[MAX_SHRINKERS]),
        Err(Error::TooManyRegions {
            capacity: MAX_SHRINKERS
        })
    );
    assert!(zones.unregister_shrinker(&shrinkers[0]));
    assert!(!zones.unregister_shrinker(&shrinkers[0]));
    exhaust(&zones, GFP_KERNEL);
    assert_eq!(
        shrinkers[0].counts.load(Ordering::SeqCst),
        0,
        "unregistered"
    );
    assert!(shrinkers[1..MAX_SHRINKERS]
        .iter()
        .all(|s| s.counts.load(Ordering::SeqCst) == 1));
}

#[test]
fn every_invalid_free_is_an_error_and_changes_nothing() {
    let mut machine = TestMachine::i386_scaled(frames());
    let zones = machine.boot().unwrap();
    let block = zones.alloc_pages(GFP_KERNEL, order(4)).unwrap().pfn();
    let page = zones.alloc_pages(GFP_KERNEL, Order::ZERO).unwrap().pfn();
    let held = zones.alloc_pages(GFP_KERNEL, order(2)).unwrap();
    let freed = held.pfn();
    zones.__free_pages(held).unwrap();
    let before = fingerprint(&zones, frames());
    let kernel = TestMachine::kernel_image(frames());
    let cases = [
        (
            Pfn::new(frames()),
            Order::ZERO,
            Error::PfnOutOfRange {
                pfn: Pfn::new(frames()),
            },
        ),
        (
            Pfn::new(0),
            Order::ZERO,
            Error::PfnOutOfRange { pfn: Pfn::new(0) },
        ),
        (kernel, Order::ZERO, Error::NotAllocated { pfn: kernel }),
        (
            block,
            order(3),
            Error::WrongOrder {
                pfn: block,
                allocated: order(4),
                freed: order(3),
            },
        ),
        (
            block.add(1),
            Order::ZERO,
            Error::NotAllocated { pfn: block.add(1) },
        ),
        (
            block.add(2),
            order(2),
            Error::Misaligned {
                pfn: block.add(2),
                order: order(2),
            },
        ),
        (page, order(11), Error::OrderTooLarge { order: 11, max: 10 }),
        (freed, order(2), Error::DoubleFree { pfn: freed }),
    ];
    let refused_before = zones.bad_frees();
    let refused = cases.len();
    for (pfn, o, err) in cases {
        assert_eq!(
            free_raw(&zones, pfn, o),
            Err(err),
            "free of {pfn:?} order {o:?}"
        );
        assert_eq!(
            fingerprint(&zones, frames()),
            before,
            "after refusing {err}"
        );
    }
    assert_eq!(
        zones.bad_frees(),
        refused_before + refused,
        "each refusal counted"
    );
    zones.check().unwrap();
}

#[test]
fn double_free_of_a_page_on_a_pcp_list_is_detected() {
    let mut machine = TestMachine::i386_scaled(frames());
    let zones = machine.boot().unwrap();
    let page = zones.alloc_pages(GFP_KERNEL, Order::ZERO).unwrap();
    let pfn = page.pfn();
    zones.__free_pages(page).unwrap();
    assert!(zones.pfn_to_page(pfn).unwrap().is_pcp());
    let before = fingerprint(&zones, frames());
    assert_eq!(
        free_raw(&zones, pfn, Order::ZERO),
        Err(Error::DoubleFree { pfn })
    );
    set_cpu(1);
    assert_eq!(
        free_raw(&zones, pfn, Order::ZERO),
        Err(Error::DoubleFree { pfn })
    );
    set_cpu(0);
    assert_eq!(fingerprint(&zones, frames()), before);
    zones.check().unwrap();
}

#[test]
fn pcp_refill_takes_a_batch_and_a_free_at_high_drains_a_batch() {
    // A zone large enough for batch > 1: NORMAL of 64 Ki frames.
    let mut machine = TestMachine::i386_scaled(if cfg!(miri) { 1024 } else { 1 << 17 });
    let zones = machine.boot().unwrap();
    let sizing = zones.pcp_sizing(ZoneType::Normal).unwrap();
    let free_before = zones.nr_free_pages();
    let first = zones.alloc_pages(GFP_KERNEL, Order::ZERO).unwrap();
    assert_eq!(
        zones.nr_free_pages(),
        free_before - sizing.batch,
        "one batch refilled"
    );
    let mut held = vec![first];
    for _ in 0..sizing.high + sizing.batch {
        held.push(zones.alloc_pages(GFP_KERNEL, Order::ZERO).unwrap());
    }
    zones.drain_all_pages();
    let drained = zones.nr_free_pages();
    for (i, page) in held.into_iter().enumerate() {
        zones.__free_pages(page).unwrap();
        let listed = drained + i + 1 - zones.nr_free_pages();
        assert!(
            listed < sizing.high,
            "pcp holds {listed} >= high {}",
            sizing.high
        );
    }
    zones.check().unwrap();
    zones.drain_all_pages();
    assert_eq!(
        zones.nr_free_pages(),
        free_before,
        "drain_all_pages empties every list"
    );
}

#[test]
fn a_free_after_an_overfilling_higher_order_refill_leaves_fewer_than_high() {
    // Sixteen CPUs share NORMAL's low watermark, so `high` falls to its
    // floor, 4 * batch, below one order-3 refill (two blocks, 16 pages).
    let mut machine = TestMachine::i386_scaled_smp(frames(), 16);
    let zones = machine.boot().unwrap();
    let sizing = zones.pcp_sizing(ZoneType::Normal).unwrap();
    let managed = zones.managed_pages();
    let block = zones.alloc_pages(GFP_KERNEL, order(3)).unwrap();
    let page = zones.alloc_pages(GFP_KERNEL, Order::ZERO).unwrap();
    let listed = |held: usize| managed - zones.nr_free_pages() - held;
    assert!(
        listed(9) >= sizing.high,
        "the order-3 refill overfilled the lists"
    );
    zones.__free_pages(page).unwrap();
    assert!(
        listed(8) < sizing.high,
        "{} listed, high {}",
        listed(8),
        sizing.high
    );
    zones.__free_pages(block).unwrap();
    zones.check().unwrap();
}

#[test]
fn a_caller_migrated_between_cpus_keeps_every_list_correct() {
    let mut machine = TestMachine::i386_scaled(frames());
    let zones = machine.boot().unwrap();
    let mut held = Vec::new();
    for i in 0..64 {
        set_cpu(i % 2);
        held.push(zones.alloc_pages(GFP_KERNEL, Order::ZERO).unwrap());
    }
    for (i, page) in held.into_iter().enumerate() {
        set_cpu((i / 3) % 2);
        zones.__free_pages(page).unwrap();
    }
    set_cpu(0);
    zones.check().unwrap();
}

/// The per-CPU lists have no lock: a drain reaches another CPU's lists
/// only by running as that CPU (`on_cpu`). Drains racing two CPUs that
/// allocate, split and free must lose no page and hand none out twice,
/// and the zone must check clean once quiet.
#[test]
#[cfg_attr(miri, ignore)]
fn drains_running_as_each_cpu_while_other_cpus_allocate_and_free_lose_no_page() {
    let mut machine = TestMachine::i386_scaled(frames());
    let zones = machine.boot().unwrap();
    let managed = zones.managed_pages();
    let stop = std::sync::atomic::AtomicBool::new(false);
    let ops = AtomicUsize::new(0);
    std::thread::scope(|s| {
        for cpu in 0..2 {
            let (zones, stop, ops) = (&zones, &stop, &ops);
            s.spawn(move || {
                set_cpu(cpu);
                let mut held = Vec::new();
                for i in 0u32.. {
                    if stop.load(Ordering::Relaxed) {
                        break;
                    }
                    ops.fetch_add(1, Ordering::Relaxed);
                    let o = order(i % 5);
                    match zones.alloc_pages(GFP_KERNEL, o) {
                        Ok(block) if i % 7 == 0 => held.extend(zones.split_page(block).unwrap()),
                        Ok(block) => held.push(block),
                        Err(_) => {}
                    }
                    if held.len() > 40 || i % 3 == 0 {
                        if let Some(block) = held.pop() {
                            zones.__free_pages(block).unwrap();
                        }
                    }
                }
                for block in held {
                    zones.__free_pages(block).unwrap();
                }
            });
        }
        let mut drains = 0;
        while ops.load(Ordering::Relaxed) < 5_000 || drains < 20 {
            zones.drain_all_pages();
            drains += 1;
        }
        stop.store(true, Ordering::Relaxed);
    });
    zones.check().unwrap();
    zones.drain_all_pages();
    assert_eq!(zones.nr_free_pages(), managed, "a page was lost or doubled");
}

#[test]
fn get_free_pages_refuses_highmem_because_the_page_has_no_address() {
    let mut machine = TestMachine::i386_scaled(frames());
    let zones = machine.boot().unwrap();
    let before = fingerprint(&zones, frames());
    let gfp = GFP_HIGHUSER;
    assert_eq!(
        zones.__get_free_pages(gfp, Order::ZERO),
        Err(Error::InvalidGfp { gfp })
    );
    assert_eq!(fingerprint(&zones, frames()), before);
    let addr = zones.__get_free_pages(GFP_KERNEL, order(1)).unwrap();
    let pfn = zones.virt_to_page(addr).unwrap();
    assert_eq!(zones.page_address(pfn), Some(addr));
    // SAFETY: the test holds the block at `addr`, from `__get_free_pages`.
    unsafe { zones.free_pages(addr, order(1)) }.unwrap();
    // SAFETY: nobody holds the block any more: the double free is refused.
    assert!(unsafe { zones.free_pages(addr, order(1)) }.is_err());
}

#[test]
fn page_address_is_none_for_highmem_and_the_direct_map_round_trips() {
    let mut machine = TestMachine::i386_scaled(frames());
    let zones = machine.boot().unwrap();
    let high = zones.alloc_pages(GFP_HIGHUSER, Order::ZERO).unwrap().pfn();
    assert_eq!(zones.page_zone(high), Some(ZoneType::HighMem));
    assert_eq!(zones.page_address(high), None);
    assert!(zones.phys_to_virt(high.phys()).is_err());
    let low = zones.alloc_pages(GFP_KERNEL, Order::ZERO).unwrap().pfn();
    let phys = low.phys().checked_add(0x123).unwrap();
    let virt = zones.phys_to_virt(phys).unwrap();
    assert_eq!(zones.virt_to_phys(virt), Ok(phys));
    assert_eq!(zones.virt_to_page(virt), Ok(low));
    assert_eq!(zones.direct_map().pfn_to_virt(low), zones.page_address(low));
}

#[test]
fn alloc_pages_exact_frees_its_tail_pages() {
    let mut machine = TestMachine::i386_scaled(frames());
    let zones = machine.boot().unwrap();
    zones.drain_all_pages();
    let free_before = zones.nr_free_pages();
    let size = 5 * PAGE_SIZE - 100;
    let addr = zones.alloc_pages_exact(size, GFP_KERNEL).unwrap();
    let first = zones.virt_to_page(addr).unwrap();
    for i in 0..8 {
        let held = zones.pfn_to_page(first.add(i)).unwrap().page_count() == 1;
        assert_eq!(held, i < 5, "page {i} of the order-3 block");
    }
    zones.drain_all_pages();
    assert_eq!(zones.nr_free_pages(), free_before - 5);
    // SAFETY: the test holds the five pages at `addr`; the sixth is free,
    // which is refused before any page is freed.
    let six = unsafe { zones.free_pages_exact(addr, 6 * PAGE_SIZE) };
    assert!(six.is_err(), "checked before freeing");
    // SAFETY: the test holds the pages `alloc_pages_exact(size)` returned.
    unsafe { zones.free_pages_exact(addr, size) }.unwrap();
    zones.drain_all_pages();
    assert_eq!(zones.nr_free_pages(), free_before);
    assert_eq!(zones.alloc_pages_exact(0, GFP_KERNEL), Err(Error::ZeroSize));
    zones.check().unwrap();
}

#[test]
fn split_page_makes_each_page_freeable_alone() {
    let mut machine = TestMachine::i386_scaled(frames());
    let zones = machine.boot().unwrap();
    let block = zones.alloc_pages(GFP_KERNEL, order(2)).unwrap();
    let pfn = block.pfn();
    // SAFETY: a tail of a block the test holds; the split is refused.
    let tail = unsafe { Pages::from_raw(pfn.add(1), Order::ZERO, zones.allocator_id()) };
    assert!(zones.split_page(tail).is_err(), "not a block head");
    let mut pages: Vec<Option<Pages>> = zones.split_page(block).unwrap().map(Some).collect();
    assert_eq!(
        zones.pfn_to_page(pfn.add(3)).unwrap().tag(),
        FrameTag::Allocated(Order::ZERO)
    );
    for (i, page) in pages.iter().flatten().enumerate() {
        assert_eq!((page.pfn(), page.order()), (pfn.add(i), Order::ZERO));
    }
    for i in [2, 0, 3, 1] {
        zones.__free_pages(pages[i].take().unwrap()).unwrap();
    }
    zones.check().unwrap();
}

#[test]
fn gfp_zero_zeroes_lowmem_through_the_direct_map_and_highmem_through_the_platform() {
    let mut machine = TestMachine::i386_scaled(frames());
    let ram = machine.ram.clone();
    let zones = machine.boot().unwrap();
    for gfp in [GFP_KERNEL, GFP_HIGHUSER] {
        let block = zones.alloc_pages(gfp, order(1)).unwrap();
        let pfn = block.pfn();
        for i in 0..2 {
            // SAFETY: the test holds the block.
            assert!(unsafe { ram.fill_frame(pfn.add(i), 0xaa) });
        }
        zones.__free_pages(block).unwrap();
        let again = zones.alloc_pages(gfp | __GFP_ZERO, order(1)).unwrap();
        assert_eq!(
            again.pfn(),
            pfn,
            "the per-CPU list hands back the hot block"
        );
        for i in 0..2 {
            // SAFETY: the test holds the block; nothing writes it.
            let bytes = unsafe { ram.frame_bytes(pfn.add(i)) }.unwrap();
            assert!(bytes.iter().all(|&b| b == 0));
        }
    }
    let addr = zones.get_zeroed_page(GFP_KERNEL).unwrap();
    let pfn = zones.virt_to_page(addr).unwrap();
    // SAFETY: as above.
    let bytes = unsafe { ram.frame_bytes(pfn) }.unwrap();
    assert!(bytes.iter().all(|&b| b == 0));
}

#[test]
fn owner_word_is_zero_when_allocated_and_refused_for_frames_not_held() {
    let mut machine = TestMachine::i386_scaled(frames());
    let zones = machine.boot().unwrap();
    let block = zones.alloc_pages(GFP_KERNEL, order(1)).unwrap();
    let pfn = block.pfn();
    assert_eq!(zones.owner(pfn), Some(OwnerWord::NONE));
    assert_eq!(
        zones.owner(pfn.add(1)),
        Some(OwnerWord::NONE),
        "tails of a held block have a word"
    );
    let tail = OwnerWord::new(OwnerTag::LargeKmallocTail, 1 << 3).unwrap();
    // SAFETY: the test holds the block; no layer reads this machine's words.
    unsafe { zones.set_owner(pfn.add(1), tail) }.unwrap();
    assert_eq!(zones.owner(pfn.add(1)), Some(tail));
    // SAFETY: as above; a layer clears its words before it frees.
    unsafe { zones.set_owner(pfn.add(1), OwnerWord::NONE) }.unwrap();
    zones.__free_pages(block).unwrap();
    zones.check().unwrap();
    assert_eq!(zones.owner(pfn), None, "on a per-CPU list");
    // SAFETY: nobody holds the frame any more, so there is no holder's word
    // to overwrite: the call is refused.
    let refused = unsafe { zones.set_owner(pfn, tail) };
    assert_eq!(refused, Err(Error::NotAllocated { pfn }));
    assert_eq!(zones.owner(Pfn::new(0)), None, "reserved");
    let again = zones.alloc_pages(GFP_KERNEL, order(1)).unwrap();
    assert_eq!(
        (again.pfn(), zones.owner(again.pfn().add(1))),
        (pfn, Some(OwnerWord::NONE)),
        "zeroed on reuse"
    );
    zones.check().unwrap();
}

#[test]
fn the_checker_catches_a_free_frame_a_layer_still_claims_and_the_next_holder_starts_clean() {
    let mut machine = TestMachine::i386_scaled(frames());
    let zones = machine.boot().unwrap();
    let block = zones.alloc_pages(GFP_KERNEL, order(1)).unwrap();
    let pfn = block.pfn();
    let tail = OwnerWord::new(OwnerTag::LargeKmallocTail, 1 << 3).unwrap();
    // SAFETY: the test holds the block; no layer reads this machine's words.
    unsafe { zones.set_owner(pfn.add(1), tail) }.unwrap();
    // A careless layer frees the block with its tail still claimed: the
    // free checks the head only, so it goes through, and the checker
    // names the frame.
    zones.__free_pages(block).unwrap();
    zones.drain_all_pages();
    assert!(
        matches!(zones.check(), Err(Invariant::Descriptor { pfn: p, .. }) if p == pfn.add(1)),
        "{:?}",
        zones.check()
    );
    // Whoever gets the frame next starts without the stale claim, and can
    // free it.
    let mut taken = Vec::new();
    while let Ok(page) = zones.alloc_pages(GFP_KERNEL, Order::ZERO) {
        let found = page.pfn() == pfn.add(1);
        taken.push(page);
        if found {
            break;
        }
    }
    let stale = taken.last().unwrap();
    assert_eq!(stale.pfn(), pfn.add(1), "the frame is handed out again");
    assert_eq!(zones.owner(stale.pfn()), Some(OwnerWord::NONE));
    for page in taken {
        zones.__free_pages(page).unwrap();
    }
    zones.drain_all_pages();
    zones.check().unwrap();
}

/// A slab's claim on a block: the owner word a slab layer would record
/// (a page-aligned header address; no slab reads this machine's words).
fn slab_word() -> OwnerWord {
    OwnerWord::new(OwnerTag::Slab, 0xc0de_0000).unwrap()
}

#[test]
fn a_block_a_layer_claims_cannot_be_freed_until_its_owner_word_is_cleared() {
    let mut machine = TestMachine::i386_scaled(frames());
    let zones = machine.boot().unwrap();
    let block = zones.alloc_pages(GFP_KERNEL, order(2)).unwrap();
    let (pfn, o) = (block.pfn(), block.order());
    // SAFETY: the test holds the block; no slab reads this machine's words.
    unsafe { zones.set_owner(pfn, slab_word()) }.unwrap();
    assert!(zones.pfn_to_page(pfn).unwrap().is_owned());
    let before = fingerprint(&zones, frames());
    let free = zones.nr_free_pages();

    assert_eq!(zones.__free_pages(block), Err(Error::Owned { pfn }));
    assert_eq!(fingerprint(&zones, frames()), before, "still allocated");
    assert_eq!(zones.nr_free_pages(), free);
    assert_eq!(zones.owner(pfn), Some(slab_word()), "still claimed");
    zones.check().unwrap();

    // SAFETY: the refused free left the block held by the test, and the
    // handle it consumed is gone: this is the block's only handle.
    let block = unsafe { Pages::from_raw(pfn, o, zones.allocator_id()) };
    // SAFETY: the test holds the block; clearing a word is always allowed.
    unsafe { zones.set_owner(pfn, OwnerWord::NONE) }.unwrap();
    assert!(!zones.pfn_to_page(pfn).unwrap().is_owned());
    zones.__free_pages(block).unwrap();
    assert_eq!(zones.owner(pfn), None);
    zones.check().unwrap();
}

#[test]
fn a_block_a_layer_claims_is_refused_by_free_by_address_and_by_split_page() {
    let mut machine = TestMachine::i386_scaled(frames());
    let zones = machine.boot().unwrap();

    // By address: a lowmem block from `__get_free_pages`.
    let addr = zones.__get_free_pages(GFP_KERNEL, order(1)).unwrap();
    let pfn = zones.virt_to_page(addr).unwrap();
    // SAFETY: the test holds the block; no slab reads this machine's words.
    unsafe { zones.set_owner(pfn, slab_word()) }.unwrap();
    let before = fingerprint(&zones, frames());
    // SAFETY: the test holds the block at `addr` (a layer's claim on it is
    // what the free must refuse).
    let refused = unsafe { zones.free_pages(addr, order(1)) };
    assert_eq!(refused, Err(Error::Owned { pfn }));
    assert_eq!(fingerprint(&zones, frames()), before, "still allocated");
    // SAFETY: the test still holds the block.
    unsafe { zones.set_owner(pfn, OwnerWord::NONE) }.unwrap();
    // SAFETY: the test holds the block at `addr` and gives it up here.
    unsafe { zones.free_pages(addr, order(1)) }.unwrap();

    // By address, page by page: `alloc_pages_exact`'s pages.
    let addr = zones.alloc_pages_exact(3 * PAGE_SIZE, GFP_KERNEL).unwrap();
    let last = zones.virt_to_page(addr).unwrap().add(2);
    // SAFETY: the test holds the page; no slab reads this machine's words.
    unsafe { zones.set_owner(last, slab_word()) }.unwrap();
    let before = fingerprint(&zones, frames());
    // SAFETY: the test holds the three pages at `addr`.
    let refused = unsafe { zones.free_pages_exact(addr, 3 * PAGE_SIZE) };
    assert_eq!(refused, Err(Error::Owned { pfn: last }));
    assert_eq!(fingerprint(&zones, frames()), before, "not one page freed");
    // SAFETY: the test still holds the page.
    unsafe { zones.set_owner(last, OwnerWord::NONE) }.unwrap();
    // SAFETY: the test holds the three pages at `addr`.
    unsafe { zones.free_pages_exact(addr, 3 * PAGE_SIZE) }.unwrap();

    // A split.
    let block = zones.alloc_pages(GFP_KERNEL, order(2)).unwrap();
    let (pfn, o) = (block.pfn(), block.order());
    // SAFETY: the test holds the block; no slab reads this machine's words.
    unsafe { zones.set_owner(pfn, slab_word()) }.unwrap();
    let before = fingerprint(&zones, frames());
    assert_eq!(zones.split_page(block).err(), Some(Error::Owned { pfn }));
    assert_eq!(fingerprint(&zones, frames()), before, "not split");
    assert_eq!(
        zones.pfn_to_page(pfn).unwrap().tag(),
        FrameTag::Allocated(o)
    );
    // SAFETY: the refused split left the block held by the test, and the
    // handle it consumed is gone: this is the block's only handle.
    let block = unsafe { Pages::from_raw(pfn, o, zones.allocator_id()) };
    // SAFETY: the test holds the block.
    unsafe { zones.set_owner(pfn, OwnerWord::NONE) }.unwrap();
    for page in zones.split_page(block).unwrap() {
        zones.__free_pages(page).unwrap();
    }
    zones.check().unwrap();
}

#[test]
fn a_handle_of_another_machine_is_refused_and_changes_neither_machine() {
    let (mut ours, mut theirs) = (
        TestMachine::i386_scaled(frames()),
        TestMachine::i386_scaled(frames()),
    );
    let (ours, theirs) = (ours.boot().unwrap(), theirs.boot().unwrap());
    assert_ne!(ours.allocator_id(), theirs.allocator_id());
    let mine = ours.alloc_pages(GFP_KERNEL, order(1)).unwrap();
    let foreign = theirs.alloc_pages(GFP_KERNEL, order(1)).unwrap();
    let (pfn, o) = (foreign.pfn(), foreign.order());
    assert_eq!(
        pfn,
        mine.pfn(),
        "twin machines hand out the same frame: only the handle's allocator tells them apart"
    );
    let before = (fingerprint(&ours, frames()), fingerprint(&theirs, frames()));
    let refused_before = ours.bad_frees();

    assert_eq!(ours.__free_pages(foreign), Err(Error::Foreign { pfn }));
    assert_eq!(
        ours.bad_frees(),
        refused_before + 1,
        "the refusal is counted"
    );
    // SAFETY: the refused free left the block held by the test on the
    // other machine, and the handle it consumed is gone.
    let foreign = unsafe { Pages::from_raw(pfn, o, theirs.allocator_id()) };
    assert_eq!(ours.split_page(foreign).err(), Some(Error::Foreign { pfn }));
    assert_eq!(
        (fingerprint(&ours, frames()), fingerprint(&theirs, frames())),
        before
    );

    // SAFETY: as above: the block is still the test's, held from `theirs`.
    let foreign = unsafe { Pages::from_raw(pfn, o, theirs.allocator_id()) };
    theirs.__free_pages(foreign).unwrap();
    ours.__free_pages(mine).unwrap();
    ours.check().unwrap();
    theirs.check().unwrap();
}

#[test]
fn only_frames_of_held_blocks_carry_an_owner_word() {
    let mut machine = TestMachine::i386_scaled(frames());
    let zones = machine.boot().unwrap();
    let block = zones.alloc_pages(GFP_KERNEL, order(2)).unwrap();
    let pfn = block.pfn();
    // A large kmalloc's words: its order on the head, each tail's index.
    let words: Vec<OwnerWord> = (0..block.nr_pages())
        .map(|i| match i {
            0 => OwnerWord::new(OwnerTag::LargeKmalloc, 2 << 3),
            i => OwnerWord::new(OwnerTag::LargeKmallocTail, i << 3),
        })
        .map(Option::unwrap)
        .collect();
    for (i, &word) in words.iter().enumerate() {
        // SAFETY: the test holds the block; no layer reads these words.
        unsafe { zones.set_owner(pfn.add(i), word) }.unwrap();
    }
    for (i, &word) in words.iter().enumerate() {
        assert_eq!(zones.owner(pfn.add(i)), Some(word));
        assert!(zones.pfn_to_page(pfn.add(i)).unwrap().is_owned());
    }
    zones.check().expect("a held block's frames may be claimed");

    for i in 0..words.len() {
        // SAFETY: the test holds the block.
        unsafe { zones.set_owner(pfn.add(i), OwnerWord::NONE) }.unwrap();
    }
    zones.__free_pages(block).unwrap();
    for i in 0..words.len() {
        assert_eq!(zones.owner(pfn.add(i)), None, "frame {i} is free");
        assert!(!zones.pfn_to_page(pfn.add(i)).unwrap().is_owned());
    }
    zones.check().expect("no free frame is claimed");
    zones.drain_all_pages();
    zones.check().expect("nor once back in the buddy");
}

#[test]
fn alloc_page_returns_an_order_0_handle() {
    let mut machine = TestMachine::i386_scaled(frames());
    let zones = machine.boot().unwrap();
    let page = zones.alloc_page(GFP_KERNEL).unwrap();
    assert_eq!((page.order(), page.nr_pages()), (Order::ZERO, 1));
    assert_eq!(page.allocator(), zones.allocator_id());
    assert_eq!(
        zones.pfn_to_page(page.pfn()).unwrap().tag(),
        FrameTag::Allocated(Order::ZERO)
    );
    zones.__free_pages(page).unwrap();
    zones.check().unwrap();
}

#[test]
fn freeing_everything_merges_back_to_maximal_blocks() {
    let mut machine = TestMachine::i386_scaled(frames());
    let zones = machine.boot().unwrap();
    let boot = zones.zone_stats();
    let mut held = Vec::new();
    for i in 0..200u32 {
        let o = order(i % 4);
        let gfp = if i % 3 == 0 { GFP_HIGHUSER } else { GFP_KERNEL };
        if let Ok(block) = zones.alloc_pages(gfp, o) {
            held.push(block);
        }
    }
    for block in held.into_iter().rev() {
        zones.__free_pages(block).unwrap();
    }
    zones.drain_all_pages();
    assert_eq!(zones.zone_stats(), boot);
    zones.check().unwrap();
}

#[test]
fn reports_render_in_the_kernel_formats() {
    let mut machine = TestMachine::i386_scaled(frames());
    let zones = machine.boot().unwrap();
    let report = zones.zone_report();
    let buddyinfo = report.buddyinfo().to_string();
    assert!(
        buddyinfo.starts_with("Node 0, zone      DMA"),
        "{buddyinfo}"
    );
    assert_eq!(buddyinfo.lines().count(), 3);
    assert!(report.zoneinfo().to_string().contains("HighMem"));
    let meminfo = zones.meminfo();
    assert_eq!(meminfo.total_pages, frames() - 3);
    assert_eq!(meminfo.high_total_pages, frames() / 4);
}

#[test]
fn frame_allocator_trait_forwards_to_alloc_pages_and_free_pages() {
    fn use_it(alloc: &dyn kmm_api::FrameAllocator) -> Result<(), Error> {
        let block = alloc.alloc_frames(GFP_KERNEL, order(1))?;
        assert_eq!(block.allocator(), alloc.allocator_id());
        let pfn = block.pfn();
        alloc.free_frames(block)?;
        assert!(free_raw(alloc, pfn, order(1)).is_err());
        Ok(())
    }
    let mut machine = TestMachine::i386_scaled(frames());
    let zones = machine.boot().unwrap();
    use_it(&zones).unwrap();
    assert_eq!(zones.platform().nr_cpus(), 2);
    let _: &Zones<'_, _, _> = &zones;
}

#[test]
#[cfg_attr(miri, ignore)]
fn a_double_free_racing_on_two_cpus_succeeds_once_and_is_refused_once() {
    let mut machine = TestMachine::i386_scaled(frames());
    let zones = machine.boot().unwrap();
    for round in 0..2_000u32 {
        let o = order(round % 4);
        // One free by the handle, racing one by the raw frame.
        let mut block = Some(zones.alloc_pages(GFP_KERNEL, o).unwrap());
        let pfn = block.as_ref().unwrap().pfn();
        let barrier = std::sync::Barrier::new(2);
        let results: Vec<Result<(), Error>> = std::thread::scope(|s| {
            let frees: Vec<_> = (0..2)
                .map(|cpu| {
                    let (zones, barrier, block) = (&zones, &barrier, block.take());
                    s.spawn(move || {
                        set_cpu(cpu);
                        barrier.wait();
                        match block {
                            Some(block) => zones.__free_pages(block),
                            None => free_raw(zones, pfn, o),
                        }
                    })
                })
                .collect();
            frees.into_iter().map(|t| t.join().unwrap()).collect()
        });
        let won = results.iter().filter(|r| r.is_ok()).count();
        assert_eq!(won, 1, "round {round}: {results:?}");
        assert!(results.iter().any(|r| matches!(
            r,
            Err(Error::DoubleFree { .. } | Error::NotAllocated { .. })
        )));
    }
    zones.drain_all_pages();
    zones.check().unwrap();
}
