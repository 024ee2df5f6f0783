//! vmalloc on the real MMU: 1 MiB over single frames (highmem first),
//! written through the area and read back through each lowmem frame's
//! direct-map address; a highmem page vmapped at a second address; the
//! area's guard page touched for real, so the CPU raises #PF and the
//! handler must recognise it through vmalloc's own areas; a fault in the
//! VMALLOC_OFFSET hole, which it must not call a guard page; ioremap of
//! two real devices (the VGA text buffer and the local APIC) and the
//! refusal of managed RAM. Everything is given back.

use super::step;
use crate::traps::{probe_read, GUARD_FAULTS, LAST_FAULT, OTHER_FAULTS};
use crate::{check, println, Mm};
use alloc::vec::Vec;
use core::sync::atomic::Ordering::Relaxed;
use kmm::{PageProt, Pfn, PhysAddr, VmFlags, GFP_HIGHUSER, GFP_KERNEL, PAGE_SIZE};

const AREA_BYTES: usize = 1 << 20;
const VGA_TEXT: u64 = 0xb8000;
const LOCAL_APIC: u64 = 0xfee0_0000;
/// The local APIC's version register (offset 0x30).
const APIC_LVR: usize = 0x30;

pub fn run(mm: &Mm) {
    area(mm);
    vmap(mm);
    ioremap(mm);
}

fn area(mm: &Mm) {
    let layout = *mm.layout();
    let Some(area) = step("vmalloc(1 MiB)", mm.vmalloc(AREA_BYTES)) else {
        return;
    };
    let base = area.as_ptr();
    let addr = kmm::VirtAddr::new(base as usize);
    let pages = AREA_BYTES / PAGE_SIZE;
    let frames: Vec<Option<Pfn>> = (0..pages)
        .map(|i| mm.vmalloc_to_pfn(base.wrapping_add(i * PAGE_SIZE)))
        .collect();
    let highmem = frames
        .iter()
        .flatten()
        .filter(|&&pfn| pfn >= layout.max_low_pfn())
        .count();
    check!(
        mm.is_vmalloc_addr(addr) && frames.iter().all(Option::is_some),
        "vmalloc(1 MiB) = {addr} in [{}, {}): {pages} single frames, {highmem} of them above 896 MiB",
        layout.vmalloc_start(),
        layout.vmalloc_end()
    );
    if layout.highmem_bytes() > 0 {
        check!(
            highmem > 0,
            "highmem first: {highmem} of {pages} frames are highmem"
        );
    }
    // SAFETY: the area is ours, AREA_BYTES long, mapped by kmm's table.
    let bytes = unsafe { core::slice::from_raw_parts_mut(base, AREA_BYTES) };
    for (i, b) in bytes.iter_mut().enumerate() {
        *b = (i % 251) as u8;
    }
    let read_back = bytes.iter().enumerate().all(|(i, &b)| b == (i % 251) as u8);
    let mut compared = 0;
    let mut equal = 0;
    for (i, pfn) in frames.iter().flatten().enumerate() {
        if let Some(own) = mm.page_address(*pfn) {
            compared += 1;
            // SAFETY: a lowmem frame of our area, seen through the direct
            // map; only read.
            let own =
                unsafe { core::slice::from_raw_parts(own.as_usize() as *const u8, PAGE_SIZE) };
            equal += usize::from(own == &bytes[i * PAGE_SIZE..(i + 1) * PAGE_SIZE]);
        }
    }
    check!(
        read_back && equal == compared,
        "1 MiB written through the area and read back; {equal} of {compared} lowmem frames hold the same bytes at their direct-map address"
    );

    let last = base as usize + AREA_BYTES - 1;
    let guard = base as usize + AREA_BYTES;
    let guards_before = GUARD_FAULTS.load(Relaxed);
    let others_before = OTHER_FAULTS.load(Relaxed);
    check!(
        probe_read(last) == Some(((last - base as usize) % 251) as u8),
        "the area's last byte {last:#010x} reads without a fault"
    );
    println!("  touching the guard page at {guard:#010x}:");
    let touched = probe_read(guard);
    let recognised = GUARD_FAULTS.load(Relaxed) - guards_before;
    check!(
        touched.is_none() && recognised == 1 && LAST_FAULT.load(Relaxed) == guard && OTHER_FAULTS.load(Relaxed) == others_before,
        "the guard page raised a real #PF (CR2 {:#010x}) that the handler recognised as vmalloc's guard page ({recognised} recognised)",
        LAST_FAULT.load(Relaxed)
    );
    let hole = layout.high_memory().as_usize() + PAGE_SIZE;
    println!("  touching the VMALLOC_OFFSET hole at {hole:#010x}:");
    let touched = probe_read(hole);
    check!(
        touched.is_none()
            && GUARD_FAULTS.load(Relaxed) == guards_before + 1
            && OTHER_FAULTS.load(Relaxed) == others_before + 1,
        "a fault past high_memory is not taken for a guard page"
    );
    println!("\n/proc/vmallocinfo (the area live)\n{}", mm.vmallocinfo());
    // SAFETY: we give the area up; nothing uses it any more.
    let freed = unsafe { mm.vfree(base) };
    check!(
        freed.is_ok(),
        "vfree: {freed:?}; VmallocUsed now {} kB",
        mm.meminfo().vmalloc_used * 4
    );
}

fn vmap(mm: &Mm) {
    let Some(mut page) = step("alloc_page(GFP_HIGHUSER)", mm.alloc_page(GFP_HIGHUSER)) else {
        return;
    };
    let pfn = page.pfn();
    let written = mm.with_kmap_local(&mut page, |bytes| {
        for (i, b) in bytes.iter_mut().enumerate() {
            *b = (i as u8).wrapping_mul(7);
        }
    });
    step("with_kmap_local", written);
    match mm.vmap(core::slice::from_ref(&page), VmFlags::MAP, PageProt::KERNEL) {
        Ok(p) => {
            // SAFETY: our fresh vmap of one page; only read.
            let seen = unsafe { core::slice::from_raw_parts(p.as_ptr(), PAGE_SIZE) };
            let same = seen
                .iter()
                .enumerate()
                .all(|(i, &b)| b == (i as u8).wrapping_mul(7));
            check!(
                same && mm.vmalloc_to_pfn(p.as_ptr()) == Some(pfn),
                "vmap of {pfn} at {:p}: the bytes written through kmap_local read back at the second address",
                p.as_ptr()
            );
            // SAFETY: we made the mapping and nothing uses it any more.
            step("vunmap", unsafe { mm.vunmap(p.as_ptr()) });
        }
        Err(e) => {
            check!(false, "vmap of {pfn}: {e}");
        }
    }
    step("__free_page", mm.__free_page(page));
}

fn ioremap(mm: &Mm) {
    let vga = PhysAddr::new(VGA_TEXT);
    let managed = mm.pfn_to_page(vga.pfn()).is_some_and(|p| !p.is_reserved());
    match mm.ioremap(vga, 80 * 25 * 2) {
        Ok(text) => {
            let cell = text.as_ptr().cast::<u16>();
            // SAFETY: our mapping of the VGA text buffer (device memory);
            // cell 0 is the top-left character.
            let seen = unsafe {
                cell.write_volatile(0x1f00 | u16::from(b'k'));
                cell.read_volatile()
            };
            check!(
                !managed && seen == 0x1f00 | u16::from(b'k'),
                "ioremap(VGA text buffer {vga}, 4000) = {:p}: wrote 'k' to the top-left cell, the card holds {seen:#06x}",
                text.as_ptr()
            );
            // SAFETY: our mapping; nothing uses it any more.
            step("iounmap", unsafe { mm.iounmap(text.as_ptr()) });
        }
        Err(e) => {
            check!(false, "ioremap(VGA text buffer): {e}");
        }
    }
    let apic = PhysAddr::new(LOCAL_APIC);
    match mm.ioremap(apic, PAGE_SIZE) {
        Ok(regs) => {
            // SAFETY: our uncached mapping of the local APIC page; the
            // version register is a read-only 32-bit register.
            let version = unsafe { regs.as_ptr().add(APIC_LVR).cast::<u32>().read_volatile() };
            check!(
                (0x10..=0x15).contains(&(version & 0xff)),
                "ioremap(local APIC {apic}) = {:p}: version register {version:#010x} (an integrated APIC, {} LVT entries)",
                regs.as_ptr(),
                ((version >> 16) & 0xff) + 1
            );
            println!(
                "\n/proc/vmallocinfo (the APIC mapped)\n{}",
                mm.vmallocinfo()
            );
            // SAFETY: our mapping; nothing uses it any more.
            step("iounmap", unsafe { mm.iounmap(regs.as_ptr()) });
        }
        Err(e) => {
            check!(false, "ioremap(local APIC): {e}");
        }
    }
    if let Some(page) = step("alloc_page(GFP_KERNEL)", mm.alloc_page(GFP_KERNEL)) {
        let phys = PhysAddr::new((page.pfn().as_usize() * PAGE_SIZE) as u64);
        let refused = mm.ioremap(phys, 16);
        check!(
            refused.is_err(),
            "ioremap of RAM the zones manage ({phys}) refused: {:?}",
            refused.err()
        );
        step("__free_page", mm.__free_page(page));
    }
    if let Some(vm) = mm.vmalloc_layer() {
        vm.purge();
    }
}
