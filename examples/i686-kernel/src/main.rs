//! A bare-metal i686 kernel that embeds kmm: the proof that another kernel
//! can take it as a dependency and run it on a real MMU.
//!
//! Booted by a Multiboot v1 loader (QEMU's `-kernel`), it:
//!
//! 1. prints the loader's memory map as Linux's `BIOS-e820` lines and
//!    hands it, with the kernel image marked, to
//!    [`MemoryManager::boot_with_mmu`] with [`Layout::i386`] computed from
//!    the RAM found (896 MiB of lowmem at most, the rest highmem);
//! 2. loads kmm's own kernel page table into CR3: from then on kmm's table
//!    (its direct map of lowmem in 4 MiB pages, vmalloc, pkmap and fixmap
//!    pages) is the only one, and the boot directory of `boot.rs` is dead;
//! 3. installs an IDT whose page-fault handler reads CR2 and the error
//!    code and asks kmm what the address is (`traps.rs`);
//! 4. exercises every layer on the hardware (`checks/`), prints the
//!    `/proc` reports, runs kmm's invariant checkers, and exits QEMU
//!    through `isa-debug-exit` with success only if every check passed.
//!
//! Its own parts are the glue a kernel writes: the platform (one CPU,
//! interrupts off), the direct map, the MMU hook, the console, the traps.
//! kmm itself is used through its public API only.
//!
//! Not here yet: user address spaces (demand paging through
//! `handle_mm_fault`, `copy_to_user` / `copy_from_user` with exception-table
//! fixups), because kmm has no process address-space layer yet; the
//! exception table and the user branch of the fault classifier are where
//! they will plug in.
#![no_std]
#![no_main]
#![deny(unsafe_op_in_unsafe_fn)]

extern crate alloc;

mod boot;
mod checks;
mod mem;
mod multiboot;
mod platform;
mod serial;
mod traps;

use kmm::{GlobalKmalloc, Layout, MemoryManager, MemoryRegion, PhysAddr, VirtAddr};
use platform::{Cpu, Hw, LowMem};
use serial::{exit, EXIT_FAILURE, EXIT_SUCCESS};

/// The kernel's memory manager.
pub type Mm = MemoryManager<Cpu, LowMem, Hw>;

/// The one manager, booted once in [`kmain`]; the global allocator and the
/// page-fault handler reach it here (the statics belong to the kernel's
/// glue, never to kmm).
pub static MM: spin::Once<Mm> = spin::Once::new();

/// `alloc` (`Vec`, `BTreeMap`, `String`) is kmalloc.
#[global_allocator]
static GLOBAL: GlobalKmalloc<Cpu, LowMem> = GlobalKmalloc::new(|| MM.get().map(Mm::kmem));

extern "C" {
    static __kernel_phys_start: u8;
    static __kernel_phys_end: u8;
}

/// The physical range the kernel image occupies (text, data, bss and the
/// stack in it, and the boot page directory), from the linker script.
fn kernel_image() -> (u64, u64) {
    // Only the symbols' addresses are taken, never their bytes: the
    // linker script defines them as the image's physical bounds.
    (
        core::ptr::addr_of!(__kernel_phys_start) as u64,
        core::ptr::addr_of!(__kernel_phys_end) as u64,
    )
}

/// The Rust entry, called by `boot.rs` in the higher half with the boot
/// page directory in CR3 and the loader's magic and information pointer.
#[no_mangle]
extern "C" fn kmain(magic: u32, info: u32) -> ! {
    serial::init();
    traps::init();
    println!("kmm i686 kernel: booted by a Multiboot loader, running above PAGE_OFFSET");
    if magic != boot::MULTIBOOT_BOOTLOADER_MAGIC {
        println!("FATAL: not started by a Multiboot loader (magic {magic:#x})");
        exit(EXIT_FAILURE);
    }
    let page_offset = VirtAddr::new(kmm::layout::I386_PAGE_OFFSET as usize);
    // SAFETY: `info` is what the loader passed in EBX; the boot directory
    // maps lowmem at PAGE_OFFSET, and nothing has written low memory yet.
    let Some(map) = (unsafe { multiboot::memory_map(page_offset, info) }) else {
        println!("FATAL: the loader gave no memory map");
        exit(EXIT_FAILURE);
    };
    println!("BIOS-provided physical RAM map:");
    for e in map.entries() {
        println!(
            " BIOS-e820: [mem {:#018x}-{:#018x}] {}",
            e.base,
            e.base + e.len - 1,
            e.kind_name()
        );
    }
    let (image_start, image_end) = kernel_image();
    println!(
        "Kernel image: [mem {image_start:#010x}-{:#010x}] ({} KiB, linked at {:#010x})",
        image_end - 1,
        (image_end - image_start) >> 10,
        page_offset.as_usize() as u64 + image_start
    );
    let mut regions =
        [MemoryRegion::new(0, 0, kmm::RegionKind::Reserved); multiboot::MAX_ENTRIES + 1];
    let regions = map.regions(image_start, image_end, &mut regions);
    let layout = match Layout::i386(map.ram_end(), false) {
        Ok(layout) => layout,
        Err(e) => {
            println!(
                "FATAL: no i386 layout for {:#x} bytes of RAM: {e}",
                map.ram_end()
            );
            exit(EXIT_FAILURE);
        }
    };
    let direct_map = LowMem::new(layout.page_offset(), layout.max_low_pfn());
    // SAFETY: the usable RAM of the map belongs to kmm alone from here on
    // (the kernel image, which holds everything else the kernel uses, is
    // marked in the map); the direct map's mappings stay valid for the
    // kernel's life (the boot directory now, kmm's table after the CR3
    // switch, which maps the same addresses); `Hw` is this machine's MMU.
    let booted = unsafe { Mm::boot_with_mmu(regions, layout, Cpu, direct_map, Hw, None) };
    let mm = match booted {
        Ok(mm) => MM.call_once(|| mm),
        Err(e) => {
            println!("FATAL: MemoryManager::boot_with_mmu refused: {e}");
            exit(EXIT_FAILURE);
        }
    };
    switch_to_kmm_page_table(mm);
    println!("\n{}", mm.layout());
    let passed = checks::run(mm);
    match (passed, mm.check()) {
        (true, Ok(())) => {
            println!("Invariant check (zones, per-CPU lists, slab caches, vmalloc trees): ok");
            println!("\nall checks passed");
            exit(EXIT_SUCCESS);
        }
        (_, Err(broken)) => {
            println!("Invariant check failed: {broken}");
            println!("\nFAILED");
            exit(EXIT_FAILURE);
        }
        (false, Ok(())) => {
            println!("\nFAILED");
            exit(EXIT_FAILURE);
        }
    }
}

/// Loads kmm's kernel page table into CR3 (Linux's `load_cr3(swapper_pg_dir)`
/// after `paging_init`), after checking it maps what runs now.
fn switch_to_kmm_page_table(mm: &Mm) {
    let Some(table) = mm.kernel_page_table() else {
        println!("FATAL: the i386 layout built no kernel page table");
        exit(EXIT_FAILURE);
    };
    // kmm records the direct map with 4 MiB pages: PSE must be on (boot.rs
    // set it for the boot directory).
    const CR4_PSE: usize = 1 << 4;
    if platform::read_cr4() & CR4_PSE == 0 {
        println!("FATAL: CR4.PSE is off; kmm's direct map uses 4 MiB pages");
        exit(EXIT_FAILURE);
    }
    let pgd = PhysAddr::new((table.pgd().as_usize() as u64) << kmm::PAGE_SHIFT);
    let here = kmain as *const () as usize;
    let stack = &pgd as *const PhysAddr as usize;
    let translated = |addr: usize| mm.virt_to_phys(VirtAddr::new(addr)).is_ok();
    if !translated(here) || !translated(stack) {
        println!("FATAL: kmm's direct map does not cover the kernel ({here:#x}, stack {stack:#x})");
        exit(EXIT_FAILURE);
    }
    let boot_cr3 = platform::read_cr3();
    // SAFETY: kmm's table maps lowmem at PAGE_OFFSET exactly as the boot
    // directory does (checked above for this code and this stack); the
    // kernel image, its stack, the GDT and the IDT all lie there. Nothing
    // uses the boot directory's identity map any more.
    unsafe { platform::write_cr3(pgd.as_u64() as usize) };
    println!(
        "CR3: boot page directory {boot_cr3:#010x} -> kmm's kernel page table {:#010x} ({} table pages, 4 MiB PSE direct map, CR4 {:#x})",
        platform::read_cr3(),
        table.table_pages(),
        platform::read_cr4()
    );
}

#[panic_handler]
fn panic(info: &core::panic::PanicInfo<'_>) -> ! {
    println!("\nFATAL: kernel panic: {info}");
    exit(EXIT_FAILURE);
}

/// The precompiled `core` names the unwinder's personality routine; with
/// `panic = "abort"` nothing ever calls it.
#[no_mangle]
extern "C" fn rust_eh_personality() {}

/// The precompiled `alloc` (built to unwind) resumes unwinding from its
/// landing pads; with `panic = "abort"` no unwind ever starts, so reaching
/// this is a bug: it fails the run.
#[no_mangle]
extern "C" fn _Unwind_Resume() -> ! {
    println!("\nFATAL: _Unwind_Resume reached with panic = abort");
    exit(EXIT_FAILURE);
}
