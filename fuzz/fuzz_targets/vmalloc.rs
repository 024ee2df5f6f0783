//! Arbitrary vmalloc / vzalloc / vfree / vfree_atomic / vmap / vunmap /
//! vm_map_ram / vm_unmap_ram / ioremap_prot / iounmap / purge sequences on
//! kmm-vmarea's `Vmalloc` with per-CPU vmap blocks, over the test doubles
//! (frames that keep owner words, a page table with a modelled TLB, host
//! memory for the range, two CPUs the input migrates between), valid and
//! invalid alike: sizes of 0, `usize::MAX` and sizes whose guard page
//! overflows; frees of live, interior, unaligned, unknown, already freed
//! and wrong-kind addresses and wrong `vm_unmap_ram` counts; frame and
//! page-table failures injected into the next call.
//!
//! A model holds what should be live. After every step: no panic, the
//! vmap blocks' and the area allocator's checkers clean, frames in use
//! equal the frames the model holds (its vmap/vm_map_ram frames plus the
//! pages of live vmalloc areas: no leak), and the table maps exactly the
//! pages the model expects. A free the model says must fail fails and
//! changes nothing; one it says must succeed succeeds.
//!
//! State is reused across inputs: one machine, built once; each input ends
//! by freeing everything and purging.

#![no_main]

use arbitrary::Arbitrary;
use kmm_api::{FrameAllocator, PageProt, Pages, PhysAddr, VirtAddr, GFP_KERNEL, PAGE_MASK, PAGE_SIZE};
use kmm_vmarea::testing::{BufferSource, TestCpus, TestFrames, TestMemory, TestTable};
use kmm_vmarea::{VmFlags, Vmalloc, VmapAreas, VMAP_MAX_ALLOC};
use libfuzzer_sys::fuzz_target;
use std::cell::RefCell;

const START: usize = 0xf880_0000;
const RANGE: usize = 4 << 20;
const FRAMES: usize = 512;

type V = Vmalloc<
    &'static TestFrames,
    &'static TestTable,
    BufferSource,
    &'static TestMemory,
    &'static TestCpus,
>;

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Kind {
    Vmalloc,
    Vmap,
    MapRam,
    Ioremap,
}

/// A live mapping the model expects.
struct Live {
    kind: Kind,
    /// What the mapping call returned (an ioremap's keeps its offset).
    addr: usize,
    pages: usize,
    /// Frames the model holds for it (vmap, vm_map_ram).
    held: Vec<Pages>,
}

struct Machine {
    frames: &'static TestFrames,
    table: &'static TestTable,
    v: V,
    live: Vec<Live>,
    /// Addresses freed before (for double frees).
    freed: Vec<usize>,
}

impl Machine {
    fn new() -> Self {
        let frames: &'static TestFrames = Box::leak(Box::new(TestFrames::new(FRAMES)));
        let table: &'static TestTable = Box::leak(Box::default());
        let memory: &'static TestMemory =
            Box::leak(Box::new(TestMemory::new(VirtAddr::new(START), RANGE)));
        let cpus: &'static TestCpus = Box::leak(Box::new(TestCpus::new(2)));
        let (start, end) = (VirtAddr::new(START), VirtAddr::new(START + RANGE));
        let areas = VmapAreas::new(BufferSource::pages(256), start, end, 2).unwrap();
        // SAFETY: the table maps the range for this vmalloc alone, the
        // frames are the table's to map, the memory stands for the range.
        let v = unsafe { Vmalloc::with_vmap_blocks(areas, frames, table, memory, cpus) }.unwrap();
        Machine {
            frames,
            table,
            v,
            live: Vec::new(),
            freed: Vec::new(),
        }
    }

    fn held_frames(&self) -> usize {
        self.live
            .iter()
            .map(|l| match l.kind {
                Kind::Vmalloc => l.pages,
                _ => l.held.len(),
            })
            .sum()
    }

    fn mapped_pages(&self) -> usize {
        self.live.iter().map(|l| l.pages).sum()
    }

    fn snapshot(&self) -> (usize, usize, usize, usize) {
        let stats = self.v.stats();
        (
            self.frames.in_use(),
            self.table.mapped(),
            stats.vmalloc_pages,
            stats.vm_map_ram,
        )
    }

    fn check(&self) {
        self.v.check().expect("checkers clean");
        assert_eq!(self.frames.in_use(), self.held_frames(), "frames leaked");
        assert_eq!(self.table.mapped(), self.mapped_pages(), "mappings");
    }

    /// `n` frames for a vmap or vm_map_ram, or `None` if there are none.
    fn hold(&self, n: usize) -> Option<Vec<Pages>> {
        let mut held = Vec::new();
        for _ in 0..n {
            match self.frames.alloc_frames(GFP_KERNEL, kmm_api::Order::ZERO) {
                Ok(p) => held.push(p),
                Err(_) => {
                    self.give_back(held);
                    return None;
                }
            }
        }
        Some(held)
    }

    fn give_back(&self, held: Vec<Pages>) {
        for p in held {
            self.frames.free_frames(p).expect("the model's frame");
        }
    }

    /// The model's verdict on freeing `addr` as `kind` (with `count` for
    /// vm_unmap_ram): the index of the live mapping it frees.
    fn target(&self, kind: Kind, addr: usize, count: usize) -> Option<usize> {
        self.live.iter().position(|l| {
            l.kind == kind
                && match kind {
                    Kind::Ioremap => l.addr & PAGE_MASK == addr & PAGE_MASK,
                    Kind::MapRam => l.addr == addr && l.pages == count,
                    _ => l.addr == addr,
                }
        })
    }

    fn free(&mut self, kind: Kind, addr: usize, count: usize) {
        let at = VirtAddr::new(addr);
        let expect = self.target(kind, addr, count);
        let before = self.snapshot();
        // SAFETY: the model frees only what it says is live of this kind
        // and gives it up; every other call must be refused.
        let result = unsafe {
            match kind {
                Kind::Vmalloc => self.v.vfree(at),
                Kind::Vmap => self.v.vunmap(at),
                Kind::MapRam => self.v.vm_unmap_ram(at, count),
                Kind::Ioremap => self.v.iounmap(at),
            }
        };
        match expect {
            Some(i) => {
                assert_eq!(result, Ok(()), "{kind:?} free of {addr:#x}");
                let live = self.live.swap_remove(i);
                self.give_back(live.held);
                self.freed.push(addr);
            }
            None if addr == 0 && kind == Kind::Vmalloc => assert_eq!(result, Ok(())),
            None => {
                assert!(result.is_err(), "{kind:?} free of {addr:#x} x{count}");
                assert_eq!(self.snapshot(), before, "a refused free changed nothing");
            }
        }
    }

    /// An address to free, from `a`: a live one (right or wrong kind),
    /// interior, unaligned, freed before, or arbitrary.
    fn address(&self, a: u64) -> usize {
        let pick = |n: usize| (a >> 8) as usize % n.max(1);
        let live = self.live.get(pick(self.live.len())).map(|l| l.addr);
        match a % 8 {
            0..=3 => live.unwrap_or(START),
            4 => live.map_or(START, |x| x + PAGE_SIZE),
            5 => live.map_or(START + 8, |x| x + 8),
            6 => self.freed.get(pick(self.freed.len())).copied().unwrap_or(0),
            _ => (a >> 3) as usize,
        }
    }

    fn step(&mut self, op: u8, a: u64, b: u64) {
        TestCpus::run_on((b >> 60) as usize % 2);
        // Failures injected into this step only.
        match b % 16 {
            0 => self.frames.fail_after(Some((b >> 4) as usize % 8)),
            1 => self.table.fail_after(Some((b >> 4) as usize % 8)),
            _ => {}
        }
        match op % 12 {
            0 | 1 => {
                let size = size(a);
                let before = self.snapshot();
                let zero = b & 0x100 != 0;
                let result = if zero {
                    self.v.vzalloc(size)
                } else {
                    self.v.vmalloc(size)
                };
                match result {
                    Ok(addr) => self.live.push(Live {
                        kind: Kind::Vmalloc,
                        addr: addr.as_usize(),
                        pages: size.div_ceil(PAGE_SIZE),
                        held: Vec::new(),
                    }),
                    Err(_) => {
                        assert!(size != 0 || result.is_err());
                        assert_eq!(self.snapshot(), before);
                    }
                }
            }
            2 => self.free(Kind::Vmalloc, self.address(a), 0),
            3 => {
                // vfree_atomic only of a live vmalloc area (its contract).
                let i = self.live.iter().position(|l| l.kind == Kind::Vmalloc);
                if let Some(i) = i {
                    let live = self.live.swap_remove(i);
                    // SAFETY: a live vmalloc area the model gives up.
                    unsafe { self.v.vfree_atomic(VirtAddr::new(live.addr)) };
                    self.freed.push(live.addr);
                }
            }
            4 | 5 => {
                let n = pages(a);
                let Some(held) = self.hold(n) else { return };
                let before = self.snapshot();
                let result = if op % 12 == 4 {
                    self.v.vmap(&held, VmFlags::from_bits_truncate(b as u16), PageProt::KERNEL)
                } else {
                    self.v.vm_map_ram(&held, PageProt::KERNEL)
                };
                match result {
                    Ok(addr) => self.live.push(Live {
                        kind: if op % 12 == 4 { Kind::Vmap } else { Kind::MapRam },
                        addr: addr.as_usize(),
                        pages: n,
                        held,
                    }),
                    Err(_) => {
                        assert_eq!(self.snapshot(), before);
                        self.give_back(held);
                    }
                }
            }
            6 => self.free(Kind::Vmap, self.address(a), 0),
            7 => {
                let addr = self.address(a);
                let count = match b % 4 {
                    0 => (b >> 2) as usize % (2 * VMAP_MAX_ALLOC + 2),
                    _ => self
                        .live
                        .iter()
                        .find(|l| l.addr == addr)
                        .map_or(1, |l| l.pages),
                };
                self.free(Kind::MapRam, addr, count);
            }
            8 => {
                let phys = 0xfe00_0000u64 + (a & 0xff_ffff);
                let size = match b % 4 {
                    0 => 0,
                    1 => usize::MAX,
                    _ => (b >> 2) as usize % (16 * PAGE_SIZE),
                };
                let before = self.snapshot();
                // SAFETY: device memory for the test table (it maps any pfn).
                let result =
                    unsafe { self.v.ioremap_prot(PhysAddr::new(phys), size, PageProt::KERNEL) };
                match result {
                    Ok(addr) => {
                        let offset = phys as usize & !PAGE_MASK;
                        assert_eq!(addr.as_usize() & !PAGE_MASK, offset, "offset kept");
                        self.live.push(Live {
                            kind: Kind::Ioremap,
                            addr: addr.as_usize(),
                            pages: (size + offset).div_ceil(PAGE_SIZE),
                            held: Vec::new(),
                        });
                    }
                    Err(_) => {
                        assert!(size != 0 || result.is_err());
                        assert_eq!(self.snapshot(), before);
                    }
                }
            }
            9 => self.free(Kind::Ioremap, self.address(a) + (b as usize & !PAGE_MASK), 0),
            10 => {
                self.v.purge();
                assert_eq!(self.table.stale(), 0, "a purge flushes everything unmapped");
            }
            _ => {
                let _ = self.v.drain_deferred();
            }
        }
        self.frames.fail_after(None);
        self.table.fail_after(None);
        // Whatever vfree_atomic queued is freed by now or here.
        let _ = self.v.drain_deferred();
        self.check();
    }

    /// Frees everything the model holds and purges.
    fn reset(&mut self) {
        while let Some(live) = self.live.last() {
            let (kind, addr, pages) = (live.kind, live.addr, live.pages);
            self.free(kind, addr, pages);
        }
        self.freed.clear();
        self.v.purge();
        self.check();
        assert_eq!((self.frames.in_use(), self.table.mapped()), (0, 0));
        assert_eq!(self.table.stale(), 0);
    }
}

fn size(a: u64) -> usize {
    match a % 8 {
        0 => 0,
        1 => usize::MAX,
        2 => usize::MAX & PAGE_MASK,
        3 => (usize::MAX & PAGE_MASK) - PAGE_SIZE + 1,
        4 => (a >> 3) as usize % (RANGE + PAGE_SIZE),
        _ => ((a >> 3) as usize % 24 + 1) * PAGE_SIZE - (a >> 40) as usize % PAGE_SIZE,
    }
}

/// Pages for a vmap or vm_map_ram: 1 to a little over VMAP_MAX_ALLOC.
fn pages(a: u64) -> usize {
    match a % 4 {
        0 => VMAP_MAX_ALLOC + 1 + (a >> 2) as usize % 8,
        1 => VMAP_MAX_ALLOC,
        _ => (a >> 2) as usize % 8 + 1,
    }
}

#[derive(Arbitrary, Debug)]
struct Input {
    ops: Vec<(u8, u64, u64)>,
}

thread_local! {
    static MACHINE: RefCell<Machine> = RefCell::new(Machine::new());
}

fuzz_target!(|input: Input| {
    MACHINE.with(|m| {
        let mut m = m.borrow_mut();
        for &(op, a, b) in input.ops.iter().take(64) {
            m.step(op, a, b);
        }
        m.reset();
    });
});
