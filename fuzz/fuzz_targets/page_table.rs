//! Fuzzes the x86 kernel page table: arbitrary map / unmap / translate
//! sequences (valid and not) over a hosted machine, checked against a map
//! model after every operation (every check is O(1) or O(log n): the
//! model lookup and the table's mapped-page count), and every page-table
//! page back in the zones after the table drops.
//!
//! One hosted machine is booted per thread (libFuzzer runs every input on
//! one thread) and reused: each input builds a fresh table over its zones,
//! drops it, and must leave the zones' free pages exactly as at boot.
//!
//! The table's MMU hook is `()`, which mirrors nothing, and the target
//! never dereferences an address it maps: a mapping is only an entry it
//! reads back. So mapping arbitrary frames stays within what the `unsafe`
//! contracts of `map` and `unmap` protect: no frame becomes reachable
//! through the table.
#![no_main]

use arbitrary::Arbitrary;
use kmm::layout::Layout;
use kmm::x86::X86PageTable;
use kmm::{HostedMemoryManager, MemoryManager};
use kmm_api::{Error, KernelPageTable, PageProt, Pfn, VirtAddr, PAGE_SIZE};
use libfuzzer_sys::fuzz_target;
use std::collections::btree_map::Entry;
use std::collections::BTreeMap;

thread_local! {
    /// This thread's machine, booted once (4 MiB, one CPU), and its free
    /// pages with the per-CPU lists drained, which every input must leave
    /// as it found them.
    static MACHINE: (&'static HostedMemoryManager, usize) = {
        let mm: &'static HostedMemoryManager =
            Box::leak(Box::new(MemoryManager::hosted(4 << 20, 1).expect("hosted machine")));
        mm.zones().drain_all_pages();
        (mm, mm.zones().nr_free_pages())
    };
}

#[derive(Arbitrary, Debug)]
enum Op {
    Map { page: u16, pfn: u32, prot: u8 },
    Unmap { page: u16 },
    Translate { page: u16 },
    Raw { addr: u32, pfn: u32 },
}

fuzz_target!(|ops: Vec<Op>| {
    let (mm, free) = MACHINE.with(|&machine| machine);
    let zones = mm.zones();
    assert_eq!(zones.nr_free_pages(), free, "left as booted");
    let layout = Layout::i386(1 << 30, false).expect("layout");
    let (first, last) = layout.kernel_map_range();
    let pages = (last.as_usize() - first.as_usize()) / PAGE_SIZE + 1;
    let addr_of = |page: u16| VirtAddr::new(first.as_usize() + (page as usize % pages) * PAGE_SIZE);
    {
        let pt = X86PageTable::for_zones(zones, (), (first, last)).expect("table");
        let mut model: BTreeMap<VirtAddr, Pfn> = BTreeMap::new();
        for op in ops.into_iter().take(256) {
            match op {
                Op::Map { page, pfn, prot } => {
                    let (addr, pfn) = (addr_of(page), Pfn::new(pfn as usize));
                    // SAFETY: nothing dereferences the mapping (see the
                    // module documentation).
                    let got = unsafe { pt.map(addr, pfn, PageProt::from_bits_truncate(prot)) };
                    if pfn.as_usize() >= 1 << 20 {
                        assert_eq!(got, Err(Error::BadPhysAddr { addr: pfn.phys() }));
                    } else {
                        match model.entry(addr) {
                            Entry::Occupied(_) => {
                                assert_eq!(got, Err(Error::AlreadyMapped { addr }))
                            }
                            Entry::Vacant(slot) if got.is_ok() => {
                                slot.insert(pfn);
                            }
                            // Only running out of page-table pages may refuse.
                            Entry::Vacant(_) => {
                                assert!(matches!(got, Err(Error::NoMemory { .. })), "{got:?}")
                            }
                        }
                    }
                }
                Op::Unmap { page } => {
                    let addr = addr_of(page);
                    // SAFETY: the target made any mapping at `addr` and
                    // never used it; with none, the refusal is under test.
                    let got = unsafe { pt.unmap(addr) };
                    match model.remove(&addr) {
                        Some(pfn) => {
                            assert_eq!(got.map(|(p, f)| (p, f.range().0)), Ok((pfn, addr)))
                        }
                        None => assert_eq!(got.map(|(p, _)| p), Err(Error::NotMapped { addr })),
                    }
                }
                Op::Translate { page } => {
                    let addr = addr_of(page);
                    assert_eq!(
                        pt.translate(addr).map(|(p, _)| p),
                        model.get(&addr).copied()
                    );
                }
                Op::Raw { addr, pfn } => {
                    let addr = VirtAddr::new(addr as usize);
                    let inside = addr >= first && addr <= last && addr.is_aligned(PAGE_SIZE);
                    if !inside {
                        // SAFETY: an address outside the range, whose
                        // refusal is under test; nothing is mapped.
                        let got = unsafe { pt.map(addr, Pfn::new(pfn as usize), PageProt::KERNEL) };
                        assert_eq!(got, Err(Error::BadVirtAddr { addr }));
                        // SAFETY: as above; nothing is removed.
                        let got = unsafe { pt.unmap(addr) };
                        assert_eq!(got.map(|(p, _)| p), Err(Error::BadVirtAddr { addr }));
                    }
                }
            }
            assert_eq!(pt.mapped_pages(), model.len());
        }
    }
    zones.drain_all_pages();
    assert_eq!(zones.nr_free_pages(), free);
});
