//! kmap on the real MMU: a frame above 896 MiB (on a machine with
//! highmem) has no direct-map address; `kmap` gives it a pkmap slot where
//! the CPU really reaches its bytes, `kmap_local_page` a fixmap slot at
//! another address that reads them back; the pool wrapped by
//! `LAST_PKMAP + 1` distinct pages costs one whole-pool TLB flush. On a
//! machine without highmem the same calls answer with the direct map.
//! Everything is given back.

use super::step;
use crate::{check, println, Mm};
use alloc::vec::Vec;
use kmm::{GFP_HIGHUSER, PAGE_SIZE};

pub fn run(mm: &Mm) {
    let layout = *mm.layout();
    let Some(km) = mm.highmem() else {
        check!(false, "the i386 manager has a kmap pool");
        return;
    };
    let Some(mut page) = step("alloc_page(GFP_HIGHUSER)", mm.alloc_page(GFP_HIGHUSER)) else {
        return;
    };
    let pfn = page.pfn();
    let high = pfn >= layout.max_low_pfn();
    let pkmap = layout.pkmap_base().map_or(0, |b| b.as_usize());
    let pkmap_end = pkmap + layout.last_pkmap() * PAGE_SIZE;
    // FIXADDR_TOP is the last page: the range is inclusive (its end would
    // wrap to 0).
    let fixmap = layout.fixaddr_start().as_usize()..=layout.fixaddr_top().as_usize();
    let before = mm.page_address(pfn);
    let mapped = match mm.kmap(&mut page, 0) {
        Ok(mut map) => {
            map[..8].copy_from_slice(b"highmem!");
            let addr = map.addr();
            let while_mapped = mm.page_address(pfn);
            drop(map);
            Some((addr, while_mapped))
        }
        Err(e) => {
            check!(false, "kmap of {pfn}: {e}");
            None
        }
    };
    if let Some((addr, while_mapped)) = mapped {
        if high {
            check!(
                before.is_none()
                    && (pkmap..pkmap_end).contains(&addr.as_usize())
                    && while_mapped == Some(addr),
                "kmap({pfn}, phys {:#x} above 896 MiB) = {addr} in the pkmap range [{pkmap:#x}, {pkmap_end:#x}): wrote \"highmem!\", page_address agreed while mapped",
                pfn.as_usize() as u64 * PAGE_SIZE as u64
            );
        } else {
            check!(
                before == Some(addr),
                "kmap({pfn}) of a lowmem page (no highmem here) = its direct-map address {addr}"
            );
        }
    }
    match mm.kmap_local_page(&mut page, 0) {
        Ok(local) => {
            let addr = local.addr();
            let read: [u8; 8] = local[..8].try_into().unwrap_or_default();
            let in_fixmap = fixmap.contains(&addr.as_usize());
            check!(
                &read == b"highmem!" && (in_fixmap || !high),
                "kmap_local_page({pfn}) = {addr}{}: read back {:?}",
                if high {
                    " (a fixmap slot)"
                } else {
                    " (the direct map)"
                },
                core::str::from_utf8(&read).unwrap_or("?")
            );
        }
        Err(e) => {
            check!(false, "kmap_local_page of {pfn}: {e}");
        }
    }
    let sum = mm.with_kmap_local(&mut page, |bytes| {
        bytes.iter().map(|&b| u32::from(b)).sum::<u32>()
    });
    let expected: u32 = b"highmem!".iter().map(|&b| u32::from(b)).sum();
    check!(
        sum.as_ref().ok().is_some_and(|&s| s >= expected),
        "with_kmap_local sums the page's bytes: {sum:?}"
    );
    step("__free_page", mm.__free_page(page));

    // Wrap the pool: LAST_PKMAP + 1 distinct highmem pages, each kmapped
    // and kunmapped in turn.
    let cycled = layout.last_pkmap() + 1;
    let stats_before = km.stats();
    let mut pages = Vec::with_capacity(cycled);
    let mut ok = true;
    for _ in 0..cycled {
        match mm.alloc_page(GFP_HIGHUSER) {
            Ok(mut p) => {
                ok &= mm.kmap(&mut p, 0).map(drop).is_ok();
                pages.push(p);
            }
            Err(_) => ok = false,
        }
    }
    let stats_after = km.stats();
    for p in pages {
        ok &= mm.__free_page(p).is_ok();
    }
    if high {
        check!(
            ok && stats_after.flushes - stats_before.flushes == 1
                && stats_after.maps - stats_before.maps == cycled as u64,
            "{cycled} distinct highmem pages kmapped and kunmapped in turn: the pool wrapped with {} TLB flush",
            stats_after.flushes - stats_before.flushes
        );
    } else {
        check!(
            ok,
            "{cycled} lowmem pages kmapped in turn (the direct map, no slot used)"
        );
    }
    println!("  pkmap counters: {stats_after:?}");
}
