//! `/proc/vmstat` of the zones: after a workload, the counters parsed back
//! from the `Display` text sum exactly to what the workload did.

use kmm_api::{GfpFlags, Order, Pages, GFP_DMA, GFP_HIGHUSER, GFP_KERNEL, GFP_NOWAIT, PAGE_SIZE};
use kmm_zones::testing::{set_cpu, TestMachine, TestZones};
use kmm_zones::MAX_NR_ZONES;
use std::collections::BTreeMap;

/// The `name value` lines of a `/proc/vmstat` text; each name once.
fn parse(text: &str) -> BTreeMap<String, usize> {
    let mut map = BTreeMap::new();
    for line in text.lines() {
        let (name, value) = line.split_once(' ').expect("`name value`");
        let value = value.parse().expect("a decimal count");
        assert!(
            map.insert(name.to_string(), value).is_none(),
            "{name} twice"
        );
    }
    map
}

fn vmstat(zones: &TestZones<'_>) -> BTreeMap<String, usize> {
    parse(&zones.vmstat().to_string())
}

/// What a workload did, counted by the test itself.
#[derive(Default)]
struct Tally {
    allocated: [usize; MAX_NR_ZONES],
    freed: usize,
}

impl Tally {
    fn alloc(&mut self, zones: &TestZones<'_>, gfp: GfpFlags, order: u32) -> Option<Pages> {
        let page = zones.alloc_pages(gfp, Order::new(order).unwrap()).ok()?;
        let zone = zones.page_zone(page.pfn()).unwrap();
        self.allocated[zone.index()] += page.order().pages();
        Some(page)
    }

    fn free(&mut self, zones: &TestZones<'_>, page: Pages) {
        self.freed += page.order().pages();
        zones.__free_pages(page).unwrap();
    }
}

#[test]
fn counters_parsed_from_the_text_sum_exactly_after_a_mixed_workload() {
    let mut machine = TestMachine::i386_scaled_smp(4096, 4);
    let zones = machine.boot().unwrap();
    let boot = vmstat(&zones);
    assert_eq!(boot["nr_free_pages"], zones.nr_free_pages());
    for name in ["pgalloc_dma", "pgalloc_normal", "pgalloc_high", "pgfree"] {
        assert_eq!(boot[name], 0, "{name} at boot");
    }
    assert!(!boot.contains_key("pgalloc_dma32"), "i386 has no DMA32");

    let mut tally = Tally::default();
    let mut held: Vec<Pages> = Vec::new();
    let gfps = [
        GFP_KERNEL,
        GFP_HIGHUSER,
        GFP_DMA,
        GFP_KERNEL | GfpFlags::ZERO,
    ];
    let mut x = 0x2545_f491_4f6c_dd1du64;
    for step in 0..3000 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        // Run on one of four CPUs, so every CPU's counters take part.
        set_cpu((x >> 40) as usize % 4);
        if x % 5 < 2 && !held.is_empty() {
            // Reduced in u64: the same workload with 32- and 64-bit words.
            let page = held.swap_remove(((x >> 8) % held.len() as u64) as usize);
            tally.free(&zones, page);
        } else {
            // Orders 0..=5: per-CPU lists and the buddy directly.
            let order = (x >> 20) as u32 % 6;
            let gfp = gfps[(x >> 30) as usize % gfps.len()];
            held.extend(tally.alloc(&zones, gfp, order));
        }
        if step % 500 == 0 {
            zones.drain_all_pages();
        }
    }
    // split_page and alloc_pages_exact free some pages one by one.
    let block = tally.alloc(&zones, GFP_KERNEL, 3).unwrap();
    for page in zones.split_page(block).unwrap() {
        tally.free(&zones, page);
    }
    let exact = zones.alloc_pages_exact(3 * PAGE_SIZE, GFP_KERNEL).unwrap();
    // Counted where the pages came from: by now GFP_KERNEL may fall back
    // from a short NORMAL zone to DMA.
    let exact_zone = zones.page_zone(zones.virt_to_page(exact).unwrap()).unwrap();
    tally.allocated[exact_zone.index()] += 4;
    tally.freed += 1;
    // SAFETY: `alloc_pages_exact` just gave us these three pages.
    unsafe { zones.free_pages_exact(exact, 3 * PAGE_SIZE) }.unwrap();
    tally.freed += 3;

    let mid = vmstat(&zones);
    for (z, name) in [
        (0, "pgalloc_dma"),
        (2, "pgalloc_normal"),
        (3, "pgalloc_high"),
    ] {
        assert_eq!(mid[name], tally.allocated[z], "{name}");
    }
    assert_eq!(mid["pgfree"], tally.freed);
    assert_eq!(mid["nr_free_pages"], zones.nr_free_pages());

    for page in std::mem::take(&mut held) {
        tally.free(&zones, page);
    }
    zones.drain_all_pages();
    let end = vmstat(&zones);
    let allocated: usize = tally.allocated.iter().sum();
    assert_eq!(
        end["pgalloc_dma"] + end["pgalloc_normal"] + end["pgalloc_high"],
        allocated
    );
    assert_eq!(end["pgfree"], allocated, "everything allocated was freed");
    assert_eq!(end["nr_free_pages"], boot["nr_free_pages"]);
    assert_eq!(zones.vmstat().nr_free_pages(), zones.managed_pages());
    zones.check().unwrap();
}

#[test]
fn failed_requests_count_pgalloc_fail_and_their_reclaim_an_allocstall_of_their_zone() {
    let mut machine = TestMachine::i386_scaled(4096);
    let zones = machine.boot().unwrap();
    let mut held: Vec<Pages> = Vec::new();
    // Every zone down to what the most privileged of these may take.
    let dma_blocking = GFP_KERNEL | GfpFlags::DMA;
    for gfp in [GFP_HIGHUSER, GFP_KERNEL, dma_blocking] {
        held.extend(std::iter::from_fn(|| {
            zones.alloc_pages(gfp, Order::ZERO).ok()
        }));
    }
    let delta = |gfp, zones: &TestZones<'_>| {
        let before = vmstat(zones);
        assert!(zones.alloc_pages(gfp, Order::ZERO).is_err());
        let after = vmstat(zones);
        let changed: BTreeMap<String, usize> = after
            .iter()
            .filter(|&(name, &v)| v != before[name])
            .map(|(name, &v)| (name.clone(), v - before[name]))
            .collect();
        changed
    };
    let one = |names: &[&str]| -> BTreeMap<String, usize> {
        names.iter().map(|n| (n.to_string(), 1)).collect()
    };
    assert_eq!(
        delta(GFP_KERNEL, &zones),
        one(&["allocstall_normal", "pgalloc_fail"])
    );
    assert_eq!(
        delta(dma_blocking, &zones),
        one(&["allocstall_dma", "pgalloc_fail"])
    );
    assert_eq!(
        delta(GFP_HIGHUSER, &zones),
        one(&["allocstall_high", "pgalloc_fail"])
    );
    // Requests that cannot block (GFP_DMA alone is one) never reclaim.
    assert_eq!(delta(GFP_NOWAIT, &zones), one(&["pgalloc_fail"]));
    assert_eq!(delta(GFP_DMA, &zones), one(&["pgalloc_fail"]));
    let stat = zones.vmstat();
    // Each of the three exhausting loops ended on a failure too.
    assert_eq!(stat.pgalloc_fail, 3 + 5);
    assert_eq!(
        stat.allocstall_total(),
        stat.allocstall.iter().sum::<usize>()
    );
    for page in held {
        zones.__free_pages(page).unwrap();
    }
}
