//! Loom model of the per-CPU page lists against the zone lock: two contexts
//! allocate and free order-0 pages while a third drains every list as
//! each CPU in turn (`on_cpu`), and each caller is "migrated" right after
//! every CPU id read, so its next pinned section runs on the other CPU,
//! whose lists the other context may be using: pinning (a per-CPU lock in
//! this platform) must keep them apart, which loom's checked cell under
//! the lists verifies. Checks that no page is lost or handed out twice,
//! and that the allocator's invariants hold afterwards; and that the
//! `/proc/vmstat` counters, bumped by load and store with a CPU pinned or
//! under the zone lock, or by `fetch_add` where neither holds, sum exactly
//! once the counting threads are joined.
//!
//! Run with `RUSTFLAGS="--cfg loom" cargo test -p kmm-zones --test loom --release`.
//! The search is bounded at three preemptions unless `LOOM_MAX_PREEMPTIONS`
//! says otherwise: enough to interleave a refill, a drain and a free at
//! each lock, and it keeps the run near half a minute.
#![cfg(loom)]

use kmm_api::sync::{AtomicUsize, Ordering};
use kmm_api::{
    MemoryRegion, Order, Pages, Pfn, Platform, PreemptControl, RegionKind, GFP_KERNEL, GFP_NOWAIT,
    MAX_PAGE_ORDER, PAGE_SIZE,
};
use kmm_zones::boot::BootMem;
use kmm_zones::memblock::Memblock;
use kmm_zones::testing::{TestDirectMap, TestMachine};
use kmm_zones::{ZoneConfig, ZoneType, Zones};
use loom::sync::{Arc, Mutex, MutexGuard};
use std::cell::{Cell, RefCell};
use std::mem::MaybeUninit;

/// One NORMAL zone of 64 frames: small enough for loom, large enough to
/// stay above its watermarks for a few pages.
const FRAMES: usize = 64;

loom::thread_local! {
    static CPU: Cell<usize> = Cell::new(0);
}

/// Callers on CPUs 0 and 1 are migrated to the other one of the two right
/// after every `cpu_id` read, so a pinned section may meet the other
/// caller on that CPU (callers on higher ids stay put): a pin holds the CPU's lock, as a hosted
/// embedder's uncontended per-CPU lock does. The platform declares sixteen
/// CPUs so that they share the zone's low watermark (40 pages here) into
/// the smallest per-CPU `high`, 4 * batch = 4, which a few frees reach.
struct MigratingPlatform {
    calls: AtomicUsize,
    /// Held while a context is pinned to the CPU or runs as it: loom
    /// mutexes, on which a waiter blocks (a spinning waiter multiplied the
    /// schedules to explore past what a run can afford). Leaked, as the
    /// descriptors are, so a pinned context can keep its guard.
    cpu_locks: &'static [Mutex<()>],
}

loom::thread_local! {
    /// The guards of the CPUs this context has pinned.
    static PINNED: RefCell<Vec<(usize, MutexGuard<'static, ()>)>> = RefCell::new(Vec::new());
}

/// CPUs the platform declares.
const NR_CPUS: usize = 16;

impl Platform for MigratingPlatform {
    fn nr_cpus(&self) -> usize {
        NR_CPUS
    }
    fn cpu_id(&self) -> usize {
        self.calls.fetch_add(1, Ordering::Relaxed);
        CPU.with(|cpu| {
            let now = cpu.get();
            if now < 2 {
                cpu.set(1 - now);
            }
            now
        })
    }
}

// SAFETY: a CPU id is handed out only while holding its lock, released by
// `put_cpu`; `on_cpu` work runs holding the same lock; ids are below
// `NR_CPUS`.
unsafe impl PreemptControl for MigratingPlatform {
    fn get_cpu(&self) -> usize {
        let cpu = self.cpu_id();
        let guard = self.cpu_locks[cpu].lock().unwrap();
        PINNED.with(|pinned| pinned.borrow_mut().push((cpu, guard)));
        cpu
    }
    fn put_cpu(&self, cpu: usize) {
        PINNED.with(|pinned| pinned.borrow_mut().retain(|(held, _)| *held != cpu));
    }
    fn on_cpu(&self, cpu: usize, work: &mut dyn FnMut()) -> bool {
        let Some(lock) = self.cpu_locks.get(cpu) else {
            return false;
        };
        let _held = lock.lock().unwrap();
        work();
        true
    }
}

type LoomZones = Zones<'static, MigratingPlatform, TestDirectMap>;

fn machine() -> TestMachine {
    let map = [MemoryRegion::new(
        0,
        (FRAMES * PAGE_SIZE) as u64,
        RegionKind::Usable,
    )];
    let config = ZoneConfig {
        dma_end: Pfn::new(0),
        dma32_end: None,
        lowmem_end: Pfn::new(FRAMES),
        max_order: MAX_PAGE_ORDER,
    };
    TestMachine::new(&map, config, NR_CPUS).unwrap()
}

fn boot(machine: &TestMachine) -> LoomZones {
    let memblock: &Memblock = machine.memblock();
    let bytes = LoomZones::metadata_bytes(memblock, &machine.config(), NR_CPUS);
    // Loom threads need 'static data: each iteration leaks its (about
    // 1.2 KiB) descriptor buffer; RAM is freed with the zones.
    let meta: &'static mut [MaybeUninit<u8>] =
        Box::leak(vec![MaybeUninit::uninit(); bytes].into_boxed_slice());
    let platform = MigratingPlatform {
        calls: AtomicUsize::new(0),
        cpu_locks: Box::leak((0..NR_CPUS).map(|_| Mutex::new(())).collect()),
    };
    // SAFETY: each model boots one set of zones over its own machine's RAM,
    // with that machine's direct map.
    unsafe {
        Zones::new(
            memblock,
            machine.config(),
            BootMem::new(meta),
            platform,
            machine.direct_map(),
        )
    }
    .unwrap()
}

/// Runs `model` under loom (preemptions bounded at `LOOM_MAX_PREEMPTIONS`,
/// 3 by default) and checks it explored at least `floor` interleavings:
/// loom's search is deterministic, so each floor sits a little under what
/// the model explores today, and a change that hides shared state from
/// loom (or stops the threads from meeting) drops below it.
fn explore(floor: usize, model: impl Fn() + Sync + Send + 'static) {
    let mut builder = loom::model::Builder::new();
    if builder.preemption_bound.is_none() {
        builder.preemption_bound = Some(3);
    }
    builder.max_branches = 100_000;
    let iterations = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let seen = iterations.clone();
    builder.check(move || {
        seen.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        model();
    });
    let explored = iterations.load(std::sync::atomic::Ordering::Relaxed);
    println!("loom explored {explored} interleavings");
    assert!(
        explored >= floor,
        "only {explored} interleavings explored (floor {floor})"
    );
}

/// Frees the block of `order` at `pfn` by raw frame.
///
/// # Safety
/// As `Pages::from_raw`: nobody but the callers racing to free it holds
/// the block, and nothing allocates meanwhile.
unsafe fn free_raw(zones: &LoomZones, pfn: Pfn, order: Order) -> Result<(), kmm_api::Error> {
    // SAFETY: forwarded from our caller.
    zones.__free_pages(unsafe { Pages::from_raw(pfn, order, zones.allocator_id()) })
}

#[test]
fn racing_frees_of_one_block_on_three_cpus_let_exactly_one_win() {
    // Which of the three contexts won, over every interleaving.
    let wins = std::sync::Arc::new([(); 3].map(|()| std::sync::atomic::AtomicUsize::new(0)));
    let seen = wins.clone();
    explore(100_000, move || {
        let machine = machine();
        let zones = Arc::new(boot(&machine));
        let managed = zones.managed_pages();
        let keep = zones.alloc_pages(GFP_KERNEL, Order::ZERO).unwrap();
        let pfn = zones
            .alloc_pages(GFP_KERNEL, Order::ZERO)
            .unwrap()
            .into_raw()
            .0;
        // Each context frees the block (a double free from the holder's
        // point of view of the others) on a CPU of its own, so the race is
        // the free's compare-and-swap alone.
        let racers: Vec<_> = (2..4)
            .map(|cpu| {
                let zones = zones.clone();
                loom::thread::spawn(move || {
                    CPU.with(|c| c.set(cpu));
                    // SAFETY: the racing contexts are the only ones that
                    // know the block; nothing allocates during the race.
                    unsafe { free_raw(&zones, pfn, Order::ZERO) }
                })
            })
            .collect();
        CPU.with(|c| c.set(1));
        // SAFETY: as above.
        let mut results = vec![unsafe { free_raw(&zones, pfn, Order::ZERO) }];
        results.extend(racers.into_iter().map(|t| t.join().unwrap()));
        let winners: Vec<usize> = (0..3).filter(|&i| results[i].is_ok()).collect();
        assert_eq!(winners.len(), 1, "exactly one free wins: {results:?}");
        assert!(
            results
                .iter()
                .all(|r| r.is_ok() || *r == Err(kmm_api::Error::DoubleFree { pfn })),
            "{results:?}"
        );
        seen[winners[0]].fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        zones.check().unwrap();
        zones.__free_pages(keep).unwrap();
        zones.drain_all_pages();
        assert_eq!(zones.nr_free_pages(), managed, "a page was lost or doubled");
    });
    let won = wins
        .each_ref()
        .map(|w| w.load(std::sync::atomic::Ordering::Relaxed));
    assert!(
        won.iter().all(|&w| w > 0),
        "the race went every way: {won:?}"
    );
}

#[test]
fn pcp_lists_lose_no_page_and_hand_none_out_twice_under_migration_and_drain() {
    explore(12_000, || {
        let machine = machine();
        let zones = Arc::new(boot(&machine));
        let managed = zones.managed_pages();

        let first = {
            let zones = zones.clone();
            loom::thread::spawn(move || {
                CPU.with(|cpu| cpu.set(0));
                let page = zones.alloc_pages(GFP_KERNEL, Order::ZERO).unwrap();
                zones.__free_pages(page).unwrap();
                zones.alloc_pages(GFP_KERNEL, Order::ZERO).unwrap()
            })
        };
        let second = {
            let zones = zones.clone();
            loom::thread::spawn(move || {
                CPU.with(|cpu| cpu.set(1));
                zones.alloc_pages(GFP_KERNEL, Order::ZERO).unwrap()
            })
        };
        zones.drain_all_pages();
        let a = first.join().unwrap();
        let b = second.join().unwrap();

        assert_ne!(a, b, "one page handed out twice");
        zones.check().unwrap();
        for page in [a, b] {
            zones.__free_pages(page).unwrap();
        }
        zones.drain_all_pages();
        assert_eq!(zones.nr_free_pages(), managed, "a page was lost");
        assert!(zones.platform().calls.load(Ordering::Relaxed) >= 4);
    });
}

#[test]
fn frees_that_reach_high_drain_a_batch_while_another_cpu_allocates() {
    explore(1000, || {
        let machine = machine();
        let zones = Arc::new(boot(&machine));
        let managed = zones.managed_pages();
        // Each CPU frees `high` pages into its own list: the last free of
        // each reaches `high` and drains a batch under the zone lock.
        let high = zones.pcp_sizing(ZoneType::Normal).unwrap().high;
        assert_eq!(high, 4, "the model is sized for the smallest high");
        let mut mine: Vec<Pages> = (0..2 * high)
            .map(|_| zones.alloc_pages(GFP_KERNEL, Order::ZERO).unwrap())
            .collect();
        let theirs = mine.split_off(high);
        let freer = {
            let zones = zones.clone();
            loom::thread::spawn(move || {
                for page in theirs {
                    CPU.with(|cpu| cpu.set(1));
                    zones.__free_pages(page).unwrap();
                }
            })
        };
        for page in mine {
            CPU.with(|cpu| cpu.set(0));
            zones.__free_pages(page).unwrap();
        }
        let again = zones.alloc_pages(GFP_KERNEL, Order::ZERO).unwrap();
        freer.join().unwrap();
        zones.check().unwrap();
        zones.__free_pages(again).unwrap();
        zones.drain_all_pages();
        assert_eq!(zones.nr_free_pages(), managed, "a page was lost");
    });
}

#[test]
fn vmstat_counters_on_two_migrating_cpus_sum_exactly_once_joined() {
    explore(1900, || {
        let machine = machine();
        let zones = Arc::new(boot(&machine));
        let boot_free = zones.nr_free_pages();
        // Each caller reads its CPU id once per operation and is migrated
        // right after, so the two share list sets and event slots: the
        // pinned and zone-lock counters, and the fetch_add ones.
        let other = {
            let zones = zones.clone();
            loom::thread::spawn(move || {
                CPU.with(|cpu| cpu.set(1));
                let page = zones.alloc_pages(GFP_KERNEL, Order::ZERO).unwrap();
                zones.__free_pages(page).unwrap();
                // Above the per-CPU orders: counted under the zone lock.
                let block = zones.alloc_pages(GFP_KERNEL, Order::new(4).unwrap());
                zones.__free_pages(block.unwrap()).unwrap();
            })
        };
        CPU.with(|cpu| cpu.set(0));
        let page = zones
            .alloc_pages(GFP_KERNEL, Order::new(1).unwrap())
            .unwrap();
        // More than the zone holds above its marks: a failure, counted
        // without a lock by a CPU the other thread may be using too.
        assert!(zones
            .alloc_pages(GFP_NOWAIT, Order::new(6).unwrap())
            .is_err());
        zones.__free_pages(page).unwrap();
        other.join().unwrap();

        let stat = zones.vmstat();
        assert_eq!(stat.pgalloc_total(), 1 + 16 + 2, "{stat:?}");
        assert_eq!(stat.pgalloc[ZoneType::Normal.index()], 1 + 16 + 2);
        assert_eq!(stat.pgfree, 1 + 16 + 2, "{stat:?}");
        assert_eq!(stat.pgalloc_fail, 1);
        assert_eq!(stat.allocstall_total(), 0);
        zones.drain_all_pages();
        assert_eq!(zones.vmstat().nr_free_pages(), boot_free);
    });
}
