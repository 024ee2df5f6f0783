//! Model test of the x86 page table: random map / unmap / translate
//! sequences, including invalid ones, against a map from address to
//! (frame, protection). After every step the table agrees with the model
//! at every address the test uses, counts the same mappings, and holds
//! exactly one PTE page per 4 MiB region ever mapped into; when the table
//! drops, every page-table page is back in the zones.
//!
//! The table's MMU hook is `()`, which mirrors nothing, and the test never
//! dereferences an address it maps: a mapping is only an entry the test
//! reads back. So mapping arbitrary frames (ones the test does not hold,
//! or beyond RAM) stays within what the `unsafe` contracts of `map` and
//! `unmap` protect: no frame becomes reachable through the table.

use kmm::layout::Layout;
use kmm::x86::X86PageTable;
use kmm::MemoryManager;
use kmm_api::{Error, KernelPageTable, PageProt, Pfn, VirtAddr, PAGE_SIZE};
use proptest::prelude::*;
use std::collections::btree_map::Entry;
use std::collections::{BTreeMap, BTreeSet};

const REGIONS: usize = 4;
const PAGES_PER_REGION: usize = 8;
const REGION_BYTES: usize = 4 << 20;
/// Frames a 32-bit entry can name; the test also asks for a few above.
const PTE_FRAMES: usize = 1 << 20;

#[derive(Clone, Debug)]
enum Op {
    Map { slot: usize, pfn: usize, prot: u8 },
    Unmap { slot: usize },
    MapBelowRange { pfn: usize },
    UnmapMisaligned { slot: usize },
}

fn op() -> impl Strategy<Value = Op> {
    let slot = 0..REGIONS * PAGES_PER_REGION;
    let pfn = prop_oneof![9 => 0..PTE_FRAMES, 1 => PTE_FRAMES..PTE_FRAMES + 8];
    prop_oneof![
        5 => (slot.clone(), pfn.clone(), any::<u8>()).prop_map(|(slot, pfn, prot)| Op::Map { slot, pfn, prot }),
        4 => slot.clone().prop_map(|slot| Op::Unmap { slot }),
        1 => pfn.prop_map(|pfn| Op::MapBelowRange { pfn }),
        1 => slot.prop_map(|slot| Op::UnmapMisaligned { slot }),
    ]
}

/// What `translate` reports for a mapping made with `prot`: the
/// protections the format has bits for, and EXEC (no NX bit without PAE).
fn visible(prot: PageProt) -> PageProt {
    let bits = PageProt::WRITE
        | PageProt::USER
        | PageProt::NOCACHE
        | PageProt::WRITE_THROUGH
        | PageProt::GLOBAL;
    (prot & bits) | PageProt::EXEC
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    #[test]
    fn page_table_agrees_with_a_map_model(ops in proptest::collection::vec(op(), 1..80)) {
        let mm = MemoryManager::hosted(8 << 20, 1).unwrap();
        let zones = mm.zones();
        zones.drain_all_pages();
        let free_at_start = zones.nr_free_pages();
        let layout = Layout::i386(2 << 30, false).unwrap();
        let range = layout.kernel_map_range();
        let base = range.0.align_up(REGION_BYTES).unwrap().as_usize();
        let slot_addr = |slot: usize| {
            VirtAddr::new(base + (slot / PAGES_PER_REGION) * REGION_BYTES + (slot % PAGES_PER_REGION) * PAGE_SIZE)
        };
        {
            let pt = X86PageTable::for_zones(zones, (), range).unwrap();
            let mut model: BTreeMap<VirtAddr, (Pfn, PageProt)> = BTreeMap::new();
            let mut regions: BTreeSet<usize> = BTreeSet::new();
            for op in ops {
                match op {
                    Op::Map { slot, pfn, prot } => {
                        let (addr, pfn) = (slot_addr(slot), Pfn::new(pfn));
                        let prot = PageProt::from_bits_truncate(prot);
                        // SAFETY: nothing dereferences the mapping (see
                        // the module documentation); `addr` is in the range.
                        let got = unsafe { pt.map(addr, pfn, prot) };
                        if pfn.as_usize() >= PTE_FRAMES {
                            prop_assert_eq!(got, Err(Error::BadPhysAddr { addr: pfn.phys() }));
                        } else {
                            regions.insert(slot / PAGES_PER_REGION);
                            match model.entry(addr) {
                                Entry::Occupied(_) => {
                                    prop_assert_eq!(got, Err(Error::AlreadyMapped { addr }))
                                }
                                Entry::Vacant(slot) => {
                                    prop_assert_eq!(got, Ok(()));
                                    slot.insert((pfn, visible(prot)));
                                }
                            }
                        }
                    }
                    Op::Unmap { slot } => {
                        let addr = slot_addr(slot);
                        match model.remove(&addr) {
                            Some((pfn, _)) => {
                                // SAFETY: the test made this mapping and
                                // never used it.
                                let (got, flush) = unsafe { pt.unmap(addr) }.unwrap();
                                prop_assert_eq!(got, pfn);
                                prop_assert_eq!(flush.range().0, addr);
                                flush.flush(&pt);
                            }
                            None => prop_assert_eq!(
                                // SAFETY: nothing is mapped there: the
                                // refusal is under test.
                                unsafe { pt.unmap(addr) }.unwrap_err(),
                                Error::NotMapped { addr }
                            ),
                        }
                    }
                    Op::MapBelowRange { pfn } => {
                        let addr = layout.high_memory();
                        prop_assert_eq!(
                            // SAFETY: an address below the range, whose
                            // refusal is under test; nothing is mapped.
                            unsafe { pt.map(addr, Pfn::new(pfn), PageProt::KERNEL) },
                            Err(Error::BadVirtAddr { addr })
                        );
                    }
                    Op::UnmapMisaligned { slot } => {
                        let addr = VirtAddr::new(slot_addr(slot).as_usize() + 1);
                        // SAFETY: a misaligned address, whose refusal is
                        // under test; nothing is removed.
                        prop_assert_eq!(unsafe { pt.unmap(addr) }.unwrap_err(), Error::BadVirtAddr { addr });
                    }
                }
                for slot in 0..REGIONS * PAGES_PER_REGION {
                    let addr = slot_addr(slot);
                    prop_assert_eq!(pt.translate(addr), model.get(&addr).copied());
                }
                prop_assert_eq!(pt.mapped_pages(), model.len());
                prop_assert_eq!(pt.table_pages(), 1 + regions.len());
            }
        }
        zones.drain_all_pages();
        prop_assert_eq!(zones.nr_free_pages(), free_at_start);
        prop_assert!(zones.check().is_ok());
    }
}
