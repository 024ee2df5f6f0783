//! A tour of kmm on a simulated i386 machine: the layout, the zones, the
//! kernel's `/proc` reports, the page allocator's zone policy at work, the
//! slab layer's seed example with `/proc/slabinfo`, and vmalloc over
//! scattered highmem frames with an ioremap and `/proc/vmallocinfo`.
//!
//! ```text
//! cargo run --example tour --features sim -- [--mem <MiB>] [--pae] [--cpus <n>]
//! ```
//!
//! Every figure printed is computed from the machine, none is typed in.

use kmm::sim::MachineConfig;
use kmm::workload::{self, Drain, HighmemExample, Report, SeedExample, VmallocExample};
use kmm::{Layout, MemoryManager, SimMemoryManager};
use kmm_api::{DirectMap, MemoryRegion, RegionKind, VirtAddr, PAGE_SIZE};
use kmm_zones::ZoneType;
use std::process::ExitCode;

const MIB: u64 = 1 << 20;

fn usage() -> ExitCode {
    eprintln!(
        "usage: tour [--mem <MiB>] [--pae] [--cpus <n>]   (default: 2048 MiB, no PAE, 2 CPUs)"
    );
    ExitCode::from(2)
}

fn parse_args() -> Option<MachineConfig> {
    let mut config = MachineConfig::default();
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--mem" => config.ram_bytes = args.next()?.parse::<u64>().ok()?.checked_mul(MIB)?,
            "--pae" => config.pae = true,
            "--cpus" => config.nr_cpus = args.next()?.parse().ok()?,
            _ => return None,
        }
    }
    Some(config)
}

fn main() -> ExitCode {
    let Some(config) = parse_args() else {
        return usage();
    };
    let mm = match MemoryManager::sim(config) {
        Ok(mm) => mm,
        Err(e) => {
            eprintln!("tour: cannot build the machine: {e}");
            return ExitCode::FAILURE;
        }
    };
    println!(
        "kmm tour: a simulated i386 machine with {} MiB of RAM, {} CPUs, PAE {}\n",
        mm.layout().ram_bytes() / MIB,
        config.nr_cpus,
        if config.pae { "on" } else { "off" }
    );
    print_memory_map(mm.machine().memory_map());
    print_layout(&mm);
    print_zones(&mm);
    println!("/proc/meminfo\n{}", mm.meminfo());
    println!("/proc/buddyinfo\n{}", mm.zones().zone_report().buddyinfo());
    println!(
        "/proc/zoneinfo (watermarks)\n{}",
        mm.zones().zone_report().zoneinfo()
    );
    let report = match workload::run(&mm) {
        Ok(report) => report,
        Err(e) => {
            eprintln!("tour: the workload failed: {e}");
            return ExitCode::FAILURE;
        }
    };
    print_workload(&report);
    match workload::seed_example(&mm) {
        Ok(seed) => print_seed_example(&seed),
        Err(e) => {
            eprintln!("tour: the slab example failed: {e}");
            return ExitCode::FAILURE;
        }
    }
    let machine = mm.machine().clone();
    let read_device = move |phys| {
        let mut byte = [0];
        machine.read_device(phys, &mut byte).ok().map(|()| byte[0])
    };
    let device = mm
        .machine()
        .device_window()
        .map(|(base, _)| kmm_api::PhysAddr::new(base.as_u64() + 0xc_0123));
    match workload::vmalloc_example(&mm, device.map(|d| (d, &read_device as &dyn Fn(_) -> _))) {
        Ok(v) => print_vmalloc_example(&mm, &v),
        Err(e) => {
            eprintln!("tour: the vmalloc example failed: {e}");
            return ExitCode::FAILURE;
        }
    }
    match workload::highmem_example(&mm) {
        Ok(h) => print_highmem_example(&h),
        Err(e) => {
            eprintln!("tour: the kmap example failed: {e}");
            return ExitCode::FAILURE;
        }
    }
    println!(
        "/proc/vmstat (page allocator and slab lines)\n{}",
        mm.vmstat()
    );
    match mm.check() {
        Ok(()) => {
            println!(
                "Invariant check (free lists, per-CPU lists, counters, descriptors, slab lists and state bytes, vmalloc's trees): ok"
            );
            ExitCode::SUCCESS
        }
        Err(broken) => {
            println!("Invariant check failed: {broken}");
            ExitCode::FAILURE
        }
    }
}

fn print_memory_map(map: &[MemoryRegion]) {
    println!("BIOS-provided physical RAM map:");
    for r in map {
        let kind = match r.kind {
            RegionKind::Usable => "usable",
            RegionKind::Reserved => "reserved",
            RegionKind::KernelImage => "usable (kernel image)",
        };
        println!(
            " BIOS-e820: [mem {:#018x}-{:#018x}] {kind}",
            r.start.as_u64(),
            r.end.as_u64() - 1
        );
    }
    println!();
}

fn area(name: &str, start: u64, end: u64, note: &str) {
    let size = end - start;
    let (n, unit) = if size >= 4 * MIB {
        (size / MIB, "MB")
    } else {
        (size >> 10, "kB")
    };
    println!(
        "  {name:<11} {start:#010x} - {:#010x} {n:>6} {unit}  {note}",
        end - 1
    );
}

fn print_layout(mm: &SimMemoryManager) {
    let l: &Layout = mm.layout();
    let u = |a: VirtAddr| a.as_usize() as u64;
    let pkmap_base = l.pkmap_base().map_or(0, u);
    let pkmap_end = pkmap_base + (l.last_pkmap() * PAGE_SIZE) as u64;
    println!("Virtual address space (4 GiB; the kernel owns everything above PAGE_OFFSET):");
    area("user", 0, u(l.page_offset()), "process address spaces");
    area(
        "direct map",
        u(l.page_offset()),
        u(l.high_memory()),
        "lowmem at PAGE_OFFSET + phys, up to high_memory",
    );
    area(
        "hole",
        u(l.high_memory()),
        u(l.vmalloc_start()),
        "VMALLOC_OFFSET: catches overruns past high_memory",
    );
    area(
        "vmalloc",
        u(l.vmalloc_start()),
        u(l.vmalloc_end()),
        "VMALLOC_START .. VMALLOC_END",
    );
    let guard_pages = (pkmap_base - u(l.vmalloc_end())) / PAGE_SIZE as u64;
    area(
        "guard",
        u(l.vmalloc_end()),
        pkmap_base,
        &format!("{guard_pages} unmapped pages"),
    );
    area(
        "pkmap",
        pkmap_base,
        pkmap_end,
        &format!("LAST_PKMAP = {} kmap slots", l.last_pkmap()),
    );
    area("", pkmap_end, u(l.fixaddr_start()), "unused, PMD alignment");
    area(
        "fixmap",
        u(l.fixaddr_start()),
        u(l.fixaddr_top()) + PAGE_SIZE as u64,
        &format!(
            "{} kmap_local slots x {} CPUs, and the hole at FIXADDR_TOP",
            kmm::layout::KM_MAX_IDX,
            kmm::layout::NR_CPUS
        ),
    );
    println!(
        "  MAXMEM = 4 GiB - PAGE_OFFSET - VMALLOC_RESERVE = {} MiB of lowmem at most\n",
        Layout::i386_maxmem() / MIB
    );
    println!("As Linux prints it at boot:\n{l}");
    println!(
        "Simulation: machine address 0 is host address {:#x}; every address above is a machine address.\n",
        mm.machine().window_base()
    );
}

fn print_zones(mm: &SimMemoryManager) {
    println!("Zones (frames of 4 KiB):");
    println!("  zone      pfn range              spanned   present   managed    free");
    for s in mm.zones().zone_stats().iter().flatten() {
        let end = s.start_pfn.as_usize() + s.spanned;
        println!(
            "  {:<8} {:#07x} - {:#07x}   {:>9} {:>9} {:>9} {:>7}",
            s.zone.name(),
            s.start_pfn.as_usize(),
            end,
            s.spanned,
            s.present,
            s.managed,
            s.free
        );
    }
    let meta = mm.boot_metadata();
    let frames = mm.layout().max_pfn().as_usize();
    println!(
        "  boot metadata (mem_map + per-CPU lists): {} KiB at phys {} in lowmem, {} bytes per frame ({}.{:02}% of RAM)",
        meta.bytes >> 10,
        meta.base,
        meta.bytes / frames,
        meta.bytes * 100 / (frames * PAGE_SIZE),
        meta.bytes * 10000 / (frames * PAGE_SIZE) % 100
    );
    println!(
        "  memblock: {} pages of RAM, {} reserved at boot (BIOS hole, kernel image, metadata)\n",
        mm.memory_pages(),
        mm.reserved_pages()
    );
}

fn zone_name(index: usize) -> &'static str {
    ZoneType::from_index(index).map_or("?", ZoneType::name)
}

fn print_drain(step: &str, d: &Drain) {
    let z = d.zone.index();
    println!(
        "{step} {} from {} until it refuses even one page:",
        d.name,
        d.zone.name()
    );
    println!(
        "   took {} pages ({} MiB); {} left free (min {}, low {}, high {}): the fast path stops at low",
        d.taken,
        (d.taken * PAGE_SIZE) >> 20,
        d.at_fallback.free,
        d.at_fallback.watermarks.min,
        d.at_fallback.watermarks.low,
        d.at_fallback.watermarks.high
    );
    for (i, (before, at)) in d.free_before.iter().zip(d.free_at_fallback).enumerate() {
        if i != z && *before != 0 {
            println!(
                "   {:<8} free {before} before, {at} at the fallback",
                zone_name(i)
            );
        }
    }
    match d.fallback {
        Some((pfn, zone)) => println!("   the next page came from {}: {pfn}\n", zone.name()),
        None => println!("   no other zone could serve it\n"),
    }
}

fn print_workload(r: &Report) {
    println!("Workload\n");
    println!("1. Where each request is served:");
    for p in &r.placements {
        println!("   {:<13} -> {:<7} {}", p.name, p.zone.name(), p.pfn);
    }
    let n = &r.never_upward;
    println!(
        "\n2. {} GFP_KERNEL pages while HighMem has {} pages free: {} from Normal, {} from DMA, {} from HighMem (never upward)\n",
        n.count,
        n.highmem_free,
        n.served[ZoneType::Normal.index()],
        n.served[ZoneType::Dma.index()],
        n.served[ZoneType::HighMem.index()]
    );
    if let Some(h) = &r.highmem {
        print_drain("3.", h);
    }
    print_drain("4.", &r.normal);
    let a = &r.atomic;
    println!(
        "5. GFP_KERNEL took {} more pages, then failed: {}",
        a.kernel_pages, a.kernel_error
    );
    println!(
        "   GFP_ATOMIC still got {} from {}: {} free now, below min {} (__GFP_HIGH halves min, not blocking takes a quarter more)\n",
        a.atomic.0,
        a.atomic.1.name(),
        a.after.free,
        a.after.watermarks.min
    );
    match &r.highmem_address {
        Some(e) => println!("6. __get_free_pages(__GFP_HIGHMEM, 0) refused: {e}"),
        None => println!("6. __get_free_pages(__GFP_HIGHMEM, 0) was granted (it should not be)"),
    }
    println!(
        "\nAt the peak the workload held {} pages; after releasing them all: {} free pages, as before ({}).",
        r.peak_held, r.free_before_after.1, r.free_before_after.0
    );
}

fn print_seed_example(s: &SeedExample) {
    println!("\nThe slab layer\n");
    println!(
        "kmalloc(100, GFP_KERNEL) = {} from {} (ksize {}), on the slab at {} in {} ({} objects in {} page(s) per slab)",
        s.kmalloc_addr,
        s.cache,
        s.ksize,
        s.slab_pfn,
        s.slab_zone.name(),
        s.objects_per_slab,
        s.pages_per_slab
    );
    println!(
        "get_free_page(GFP_KERNEL) = {} ({} in {})",
        s.page_addr,
        s.page_pfn,
        s.page_zone.name()
    );
    match &s.double_free {
        Some(e) => println!("kfree of the object a second time refused: {e}"),
        None => println!("kfree of the object a second time was accepted (it should not be)"),
    }
    println!(
        "\n/proc/slabinfo (while the object was live)\n{}",
        s.slabinfo
    );
    println!(
        "After kfree, free_page and a shrink: {} free pages, as before ({}).\n",
        s.free_before_after.1, s.free_before_after.0
    );
}

fn print_vmalloc_example(mm: &SimMemoryManager, v: &VmallocExample) {
    println!("vmalloc\n");
    let neighbours = v.frames.windows(2).filter(|w| w[1] == w[0].add(1)).count();
    println!(
        "vmalloc({} KiB) = {}: {} single frames, {} of them in HighMem (highmem first); \
         pages whose frame follows the previous page's frame: {neighbours} of {}",
        workload::VMALLOC_EXAMPLE_BYTES >> 10,
        v.addr,
        v.frames.len(),
        v.highmem_frames,
        v.frames.len() - 1
    );
    let shown: Vec<String> = v
        .frames
        .iter()
        .take(8)
        .map(|pfn| format!("{pfn}"))
        .collect();
    println!("  first frames: {} ...", shown.join(", "));
    println!(
        "  the bytes through {} equal the bytes through each frame's own mapping: {} of {} pages",
        v.addr,
        v.pages_compared,
        v.frames.len()
    );
    if let Some((phys, regs, seen)) = v.ioremap {
        println!(
            "ioremap({}, 16) = {} (offset kept, uncached); a write of 0x5a through it, the device saw {seen:#04x}",
            phys, regs
        );
    }
    println!("\n/proc/vmallocinfo (both live)\n{}", v.vmallocinfo);
    println!(
        "vfree + iounmap + purge: {} TLB flush(es); free pages {} before, {} after (the kernel table keeps its page-table pages)",
        v.flushes, v.free_before_after.0, v.free_before_after.1
    );
    println!("VmallocUsed now: {} kB\n", mm.meminfo().vmalloc_used * 4);
}

fn print_highmem_example(h: &HighmemExample) {
    println!("kmap\n");
    println!(
        "kmap({}) = {} (pkmap); wrote \"highmem!\", kunmap; kmap_local_page = {} (fixmap), read back {:?}",
        h.pfn,
        h.pkmap_addr,
        h.local_addr,
        String::from_utf8_lossy(&h.read_back)
    );
    let (before, after) = h.stats_before_after;
    println!(
        "kmap of {} distinct pages in turn: {} maps, {} hits, {} whole-pool TLB flush(es) (one per wrap), {} waits",
        h.cycled,
        after.maps - before.maps,
        after.hits - before.hits,
        after.flushes - before.flushes,
        after.waits - before.waits
    );
    println!(
        "pool totals: maps {}, hits {}, flushes {}, waits {}\n",
        after.maps, after.hits, after.flushes, after.waits
    );
}
