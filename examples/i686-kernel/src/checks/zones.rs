//! Zones on the real machine: where each GFP class is served (DMA below
//! 16 MiB, NORMAL in lowmem, GFP_HIGHUSER above 896 MiB when the machine
//! has highmem, clamped to NORMAL when it has none), the bytes of a
//! lowmem page through the direct map, and the fallback: a zone drained
//! below its watermark hands the next request to the zone below, never
//! upward. Everything taken is given back.

use super::step;
use crate::{check, println, Mm};
use alloc::vec::Vec;
use kmm::{
    GfpFlags, Order, Pages, ZoneType, GFP_DMA, GFP_HIGHUSER, GFP_KERNEL, MAX_PAGE_ORDER, PAGE_SIZE,
};

/// The zone table, as the tour prints it.
pub fn print_zones(mm: &Mm) {
    println!("\nZones (frames of 4 KiB):");
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
    println!(
        "  boot metadata: {} KiB at phys {}; memblock: {} pages of RAM, {} reserved\n",
        meta.bytes >> 10,
        meta.base,
        mm.memory_pages(),
        mm.reserved_pages()
    );
}

fn zone_of(mm: &Mm, pages: &Pages) -> Option<ZoneType> {
    mm.zones().page_zone(pages.pfn())
}

fn zone_name(mm: &Mm, pages: &Pages) -> &'static str {
    zone_of(mm, pages).map_or("no zone", ZoneType::name)
}

pub fn run(mm: &Mm) {
    let layout = *mm.layout();
    let has_highmem = layout.highmem_bytes() > 0;
    let max_low = layout.max_low_pfn();

    if let Some(page) = step("alloc_page(GFP_DMA)", mm.alloc_page(GFP_DMA)) {
        check!(
            zone_of(mm, &page) == Some(ZoneType::Dma) && page.pfn() < layout.dma_end_pfn(),
            "alloc_page(GFP_DMA) = {} in {}, below 16 MiB",
            page.pfn(),
            zone_name(mm, &page)
        );
        step("__free_page", mm.__free_page(page));
    }
    if let Some(page) = step("alloc_page(GFP_KERNEL)", mm.alloc_page(GFP_KERNEL)) {
        let pfn = page.pfn();
        check!(
            zone_of(mm, &page) == Some(ZoneType::Normal) && pfn < max_low,
            "alloc_page(GFP_KERNEL) = {pfn} in {}, lowmem",
            zone_name(mm, &page)
        );
        if let Some(addr) = mm.page_address(pfn) {
            let p = addr.as_usize() as *mut u64;
            // SAFETY: we hold the page; its direct-map address is mapped
            // by kmm's table (in CR3) and is PAGE_SIZE bytes.
            let seen = unsafe {
                for i in 0..PAGE_SIZE / 8 {
                    p.add(i).write_volatile(i as u64 ^ 0x5a5a);
                }
                (0..PAGE_SIZE / 8).all(|i| p.add(i).read_volatile() == i as u64 ^ 0x5a5a)
            };
            check!(
                seen && mm.virt_to_phys(addr).map(|a| a.pfn()) == Ok(pfn),
                "its bytes through the direct map at {addr} (virt_to_phys back to {pfn})"
            );
        }
        step("__free_page", mm.__free_page(page));
    }
    if let Some(page) = step("alloc_page(GFP_HIGHUSER)", mm.alloc_page(GFP_HIGHUSER)) {
        let pfn = page.pfn();
        if has_highmem {
            check!(
                zone_of(mm, &page) == Some(ZoneType::HighMem)
                    && pfn >= max_low
                    && mm.page_address(pfn).is_none(),
                "alloc_page(GFP_HIGHUSER) = {pfn} in HighMem, above 896 MiB (phys {:#x}), no direct-map address",
                (pfn.as_usize() as u64) * PAGE_SIZE as u64
            );
        } else {
            check!(
                zone_of(mm, &page) == Some(ZoneType::Normal),
                "alloc_page(GFP_HIGHUSER) = {pfn} in {}: no highmem on this machine, the zones clamp to Normal",
                zone_name(mm, &page)
            );
        }
        step("__free_page", mm.__free_page(page));
    }
    let (gfp, zone, below, name) = if has_highmem {
        (
            GFP_HIGHUSER,
            ZoneType::HighMem,
            ZoneType::Normal,
            "GFP_HIGHUSER",
        )
    } else {
        (GFP_KERNEL, ZoneType::Normal, ZoneType::Dma, "GFP_KERNEL")
    };
    drain_and_fall_back(mm, gfp, name, zone, below);
}

/// Takes blocks with `gfp` (largest order first) until one comes from a
/// zone other than `zone`: that zone must be `below`. Frees everything.
fn drain_and_fall_back(mm: &Mm, gfp: GfpFlags, name: &str, zone: ZoneType, below: ZoneType) {
    // Empty slabs and per-CPU pages back to the buddy on both sides of
    // the count: the Vec of handles grows in kmalloc caches that keep
    // their empty slabs.
    mm.drop_caches();
    let free_before = mm.nr_free_pages();
    let mut held: Vec<Pages> = Vec::new();
    let mut order = MAX_PAGE_ORDER.as_u32();
    let mut taken = 0usize;
    let fallback = loop {
        let Ok(o) = Order::new(order) else { break None };
        match mm.alloc_pages(gfp, o) {
            Ok(block) => {
                let z = zone_of(mm, &block);
                if z == Some(zone) {
                    taken += 1 << order;
                    held.push(block);
                } else {
                    let pfn = block.pfn();
                    held.push(block);
                    break Some((z, pfn, order));
                }
            }
            Err(_) if order > 0 => order -= 1,
            Err(_) => break None,
        }
    };
    let zone_free = mm
        .zones()
        .zone_stats()
        .iter()
        .flatten()
        .find(|s| s.zone == zone)
        .map_or(0, |s| s.free);
    match fallback {
        Some((z, pfn, order)) => {
            check!(
                z == Some(below),
                "{name} took {taken} pages from {} until it fell below its watermark ({zone_free} left free); the next order-{order} block fell back to {}: {pfn}",
                zone.name(),
                z.map_or("no zone", ZoneType::name)
            );
        }
        None => {
            check!(false, "{name}: {} never fell back", zone.name());
        }
    }
    let blocks = held.len();
    let mut freed = true;
    for block in held {
        freed &= mm.__free_pages(block).is_ok();
    }
    mm.drop_caches();
    check!(
        freed && mm.nr_free_pages() == free_before,
        "freed the {blocks} blocks (a Vec of Pages handles in kmalloc memory): {} free pages, as before ({free_before})",
        mm.nr_free_pages()
    );
}
