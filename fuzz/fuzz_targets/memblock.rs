//! Arbitrary memory maps and operation sequences on the boot allocator,
//! with addresses anywhere in the 64-bit space (overflow paths included).
//! After every step the range sets must be sorted, merged and page aligned,
//! free ranges must be RAM that is not reserved, a successful allocation
//! must be aligned, below its limit and previously free, and a failed
//! operation must leave everything as it was.

#![no_main]

use arbitrary::Arbitrary;
use kmm_api::{MemoryRegion, Pfn, PhysAddr, RegionKind, PAGE_SIZE};
use kmm_zones::memblock::Memblock;
use libfuzzer_sys::fuzz_target;

#[derive(Arbitrary, Debug)]
enum Kind {
    Usable,
    Reserved,
    KernelImage,
}

#[derive(Arbitrary, Debug)]
enum Op {
    Add(u64, u64),
    Remove(u64, u64),
    Reserve(u64, u64),
    Free(u64, u64),
    Alloc { size: u64, align: u64, limit: u64 },
}

#[derive(Arbitrary, Debug)]
struct Input {
    /// Addresses are scaled by `1 << shift` so small inputs reach high memory.
    shift: u8,
    map: Vec<(u32, u32, Kind)>,
    ops: Vec<Op>,
}

type Ranges = Vec<(usize, usize)>;

fn ranges(it: impl Iterator<Item = (Pfn, Pfn)>) -> Ranges {
    it.map(|(s, e)| (s.as_usize(), e.as_usize())).collect()
}

fn snapshot(mb: &Memblock) -> (Ranges, Ranges) {
    (ranges(mb.memory_ranges()), ranges(mb.reserved_ranges()))
}

/// Whether one range of `set` holds all of `start..end`.
fn inside(set: &Ranges, start: usize, end: usize) -> bool {
    set.iter().any(|&(s, e)| s <= start && end <= e)
}

fn check(mb: &Memblock) {
    let (memory, reserved) = snapshot(mb);
    for set in [&memory, &reserved] {
        assert!(set.iter().all(|&(s, e)| s < e), "empty range in {set:?}");
        assert!(
            set.windows(2).all(|w| w[0].1 < w[1].0),
            "unsorted or unmerged {set:?}"
        );
    }
    let free = ranges(mb.free_ranges());
    assert!(free.windows(2).all(|w| w[0].1 <= w[1].0));
    for &(s, e) in &free {
        assert!(s < e);
        assert!(inside(&memory, s, e), "free {s:#x}..{e:#x} is not RAM");
        assert!(
            reserved.iter().all(|&(rs, re)| re <= s || e <= rs),
            "free {s:#x}..{e:#x} is reserved"
        );
    }
    let pages = |set: &Ranges| set.iter().map(|&(s, e)| e - s).sum::<usize>();
    let overlap: usize = memory
        .iter()
        .flat_map(|&(ms, me)| {
            reserved
                .iter()
                .map(move |&(rs, re)| me.min(re).saturating_sub(ms.max(rs)))
        })
        .sum();
    assert_eq!(
        pages(&free),
        pages(&memory) - overlap,
        "free ranges miss free pages"
    );
    assert_eq!(mb.memory_pages(), pages(&memory));
    assert_eq!(mb.reserved_pages(), pages(&reserved));
    assert_eq!(mb.start_pfn().as_usize(), memory.first().map_or(0, |r| r.0));
    assert_eq!(mb.end_pfn().as_usize(), memory.last().map_or(0, |r| r.1));
}

fuzz_target!(|input: Input| {
    let shift = u32::from(input.shift) % 40;
    let scale = |v: u32| u64::from(v) << shift;
    let map: Vec<MemoryRegion> = input
        .map
        .iter()
        .take(300)
        .map(|&(start, len, ref kind)| {
            let kind = match kind {
                Kind::Usable => RegionKind::Usable,
                Kind::Reserved => RegionKind::Reserved,
                Kind::KernelImage => RegionKind::KernelImage,
            };
            let start = scale(start);
            MemoryRegion::new(start, start.saturating_add(scale(len)), kind)
        })
        .collect();
    let mut mb = Memblock::from_memory_map(&map).unwrap_or_default();
    check(&mb);
    let page = PAGE_SIZE as u64;
    for op in input.ops.iter().take(256) {
        let before = snapshot(&mb);
        let free_before = ranges(mb.free_ranges());
        let ok = match *op {
            Op::Add(b, s) => mb.add(PhysAddr::new(b), s).is_ok(),
            Op::Remove(b, s) => mb.remove(PhysAddr::new(b), s).is_ok(),
            Op::Reserve(b, s) => mb.reserve(PhysAddr::new(b), s).is_ok(),
            Op::Free(b, s) => mb.free(PhysAddr::new(b), s).is_ok(),
            Op::Alloc { size, align, limit } => match mb.alloc(size, align, PhysAddr::new(limit)) {
                Ok(addr) => {
                    let align = align.max(page);
                    let bytes = size.div_ceil(page) * page;
                    assert!(addr.is_aligned(align), "{addr:?} not aligned to {align:#x}");
                    assert!(
                        addr.as_u64() + bytes <= limit,
                        "{addr:?} + {bytes:#x} above {limit:#x}"
                    );
                    let start = addr.pfn().as_usize();
                    let end = start + (bytes / page) as usize;
                    assert!(inside(&free_before, start, end), "{addr:?} was not free");
                    assert!(
                        inside(&snapshot(&mb).1, start, end),
                        "{addr:?} is not reserved"
                    );
                    true
                }
                Err(_) => false,
            },
        };
        if !ok {
            assert_eq!(snapshot(&mb), before, "a failed {op:?} changed the sets");
        }
        check(&mb);
    }
});
