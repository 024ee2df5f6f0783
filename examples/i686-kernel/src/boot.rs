//! The way in, as Linux's `arch/x86/kernel/head_32.S` does it: the
//! Multiboot header, a 32-bit entry that runs at the physical load address
//! with paging off, a minimal boot page directory (4 MiB pages: the first
//! 4 MiB identity-mapped so the entry survives turning paging on, and
//! lowmem at `PAGE_OFFSET`, where the kernel is linked and where kmm's
//! direct map will put it), the SSE enable the target needs, and the jump
//! to the higher half, where a flat GDT is loaded and Rust's `kmain` runs
//! on the kernel stack.
//!
//! The boot directory serves only until kmm has built its own kernel page
//! table; `kmain` then loads kmm's table into CR3 and the boot directory
//! (and the identity map with it) is never used again.

use core::arch::global_asm;

/// Bytes of the kernel stack (in `.bss`, so inside the kernel image).
pub const STACK_BYTES: usize = 256 << 10;

/// Entries of the boot directory that map lowmem at `PAGE_OFFSET`: 4 MiB
/// each, up to Linux's `MAXMEM` (896 MiB), the most lowmem any i386 layout
/// has. Mapping past the end of a smaller machine's RAM is harmless: only
/// frames the memory map calls RAM are ever touched.
pub const BOOT_LOWMEM_PDES: usize = (kmm::Layout::i386_maxmem() >> 22) as usize;

/// The Multiboot v1 magic in EAX at entry.
pub const MULTIBOOT_BOOTLOADER_MAGIC: u32 = 0x2bad_b002;

global_asm!(
    r#"
    .set MB_MAGIC, 0x1badb002
    /* bit 0: page-align modules; bit 1: memory information (the map). */
    .set MB_FLAGS, 0x00000003
    .set PAGE_OFFSET, 0xc0000000
    .set PDE_4M, 0x83              /* present | writable | 4 MiB page */
    .set CR0_PG, 0x80000000
    .set CR0_MP, 0x2
    .set CR0_EM, 0x4
    .set CR4_PSE, 0x10
    .set CR4_OSFXSR_OSXMMEXCPT, 0x600

    .section .multiboot, "a"
    .balign 4
    .long MB_MAGIC
    .long MB_FLAGS
    .long -(MB_MAGIC + MB_FLAGS)

    .section .boot.bss, "aw", @nobits
    .balign 4096
boot_page_directory:
    .skip 4096

    .section .boot.text, "ax"
    .global _start
_start:
    cli
    cld
    /* Keep the loader's magic and information pointer for kmain. */
    movl %eax, %edi
    movl %ebx, %esi

    /* PDE 0: identity 0..4 MiB, the code running now. */
    movl $boot_page_directory, %edx
    movl $PDE_4M, (%edx)
    /* PDE 768 + i: PAGE_OFFSET + i * 4 MiB -> i * 4 MiB. */
    xorl %ecx, %ecx
1:
    movl %ecx, %eax
    shll $22, %eax
    orl $PDE_4M, %eax
    movl %eax, 768*4(%edx,%ecx,4)
    incl %ecx
    cmpl ${boot_pdes}, %ecx
    jb 1b

    /* 4 MiB pages (kmm's direct map uses them too), and SSE. */
    movl %cr4, %eax
    orl $(CR4_PSE | CR4_OSFXSR_OSXMMEXCPT), %eax
    movl %eax, %cr4
    movl %edx, %cr3
    movl %cr0, %eax
    andl $~CR0_EM, %eax
    orl $(CR0_PG | CR0_MP), %eax
    movl %eax, %cr0

    /* Now the higher half is mapped: jump there. */
    movl $higher_half, %eax
    jmp *%eax

    .section .text.boot_high, "ax"
higher_half:
    lgdt boot_gdt_descriptor
    ljmp $0x08, $1f
1:
    movw $0x10, %ax
    movw %ax, %ds
    movw %ax, %es
    movw %ax, %fs
    movw %ax, %gs
    movw %ax, %ss
    movl $kernel_stack_top, %esp
    xorl %ebp, %ebp
    /* kmain(magic, info): 16-byte aligned at the call, as the ABI wants. */
    subl $8, %esp
    pushl %esi
    pushl %edi
    call kmain
2:
    cli
    hlt
    jmp 2b

    .section .rodata.boot_gdt, "a"
    .balign 8
boot_gdt:
    .quad 0                        /* null */
    .quad 0x00cf9a000000ffff       /* 0x08: flat 4 GiB ring-0 code */
    .quad 0x00cf92000000ffff       /* 0x10: flat 4 GiB ring-0 data */
boot_gdt_end:
boot_gdt_descriptor:
    .word boot_gdt_end - boot_gdt - 1
    .long boot_gdt

    .section .bss.kernel_stack, "aw", @nobits
    .balign 16
kernel_stack:
    .skip {stack_bytes}
kernel_stack_top:
    "#,
    boot_pdes = const BOOT_LOWMEM_PDES,
    stack_bytes = const STACK_BYTES,
    options(att_syntax)
);
