//! Exceptions: the IDT (vectors 0..31, interrupt gates), one assembly stub
//! per vector that builds a [`TrapFrame`] and calls [`kmm_trap`], Linux's
//! exception table (`__ex_table`: a faulting instruction's address and
//! where to resume), and the page-fault handler, which reads CR2 and the
//! error code and asks kmm what the address is.
//!
//! # The page-fault path (Linux `exc_page_fault` → `do_kern_addr_fault`)
//!
//! 1. The faulting EIP is looked up in the exception table. A fault at an
//!    instruction without an entry is a kernel bug here: it is reported
//!    and the run fails (kmm itself may hold a lock at that moment, so the
//!    handler does not call into it).
//! 2. The address is classified with kmm: below `PAGE_OFFSET` a user
//!    address (no user address spaces exist in kmm yet), in the vmalloc
//!    range the live area containing it (`find_vmap_area`, guard page
//!    included): past its usable size it is the area's **guard page**;
//!    elsewhere a kernel address nothing maps.
//! 3. The fault is counted by kind and EIP is set to the fixup, so the
//!    probing instruction "returns" that it faulted.
//!
//! Every other exception is fatal: reported, then QEMU exits with failure.

use crate::platform::read_cr2;
use crate::serial::{exit, EXIT_FAILURE};
use crate::{println, MM};
use core::arch::global_asm;
use core::ptr::addr_of;
use core::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use kmm::VirtAddr;

/// The registers the stubs save, in the order `pushal` and the CPU leave
/// them on the stack (no privilege change: no ESP/SS).
#[repr(C)]
#[derive(Debug)]
pub struct TrapFrame {
    edi: u32,
    esi: u32,
    ebp: u32,
    esp: u32,
    ebx: u32,
    edx: u32,
    ecx: u32,
    eax: u32,
    vector: u32,
    error: u32,
    eip: u32,
    cs: u32,
    eflags: u32,
}

/// One exception-table entry: a faulting instruction and its fixup.
#[repr(C)]
struct ExEntry {
    insn: u32,
    fixup: u32,
}

extern "C" {
    static __start_ex_table: ExEntry;
    static __stop_ex_table: ExEntry;
    static trap_stubs: [u32; 32];
    fn kmm_probe_read(addr: usize) -> u32;
}

// The stubs: vectors with a CPU-pushed error code (8, 10-14, 17, 21, 29,
// 30) push only their number; the others push a zero first, so every
// frame has the same shape. The common path aligns the stack to 16 bytes
// for Rust, and `iretl` resumes at the (possibly fixed-up) EIP.
//
// `kmm_probe_read(addr)`: reads the byte at `addr` and returns it, or
// returns u32::MAX if the read faulted (its load is in the exception
// table). This is how the kernel touches memory that may be unmapped.
global_asm!(
    r#"
    .macro TRAP n, has_error
    .section .text.traps, "ax"
trap_\n:
    .if \has_error == 0
    pushl $0
    .endif
    pushl $\n
    jmp trap_common
    .section .rodata.trap_stubs, "a"
    .long trap_\n
    .endm

    .section .rodata.trap_stubs, "a"
    .balign 4
    .global trap_stubs
trap_stubs:
    TRAP 0, 0
    TRAP 1, 0
    TRAP 2, 0
    TRAP 3, 0
    TRAP 4, 0
    TRAP 5, 0
    TRAP 6, 0
    TRAP 7, 0
    TRAP 8, 1
    TRAP 9, 0
    TRAP 10, 1
    TRAP 11, 1
    TRAP 12, 1
    TRAP 13, 1
    TRAP 14, 1
    TRAP 15, 0
    TRAP 16, 0
    TRAP 17, 1
    TRAP 18, 0
    TRAP 19, 0
    TRAP 20, 0
    TRAP 21, 1
    TRAP 22, 0
    TRAP 23, 0
    TRAP 24, 0
    TRAP 25, 0
    TRAP 26, 0
    TRAP 27, 0
    TRAP 28, 0
    TRAP 29, 1
    TRAP 30, 1
    TRAP 31, 0

    .section .text.traps, "ax"
trap_common:
    pushal
    cld
    movl %esp, %ebx
    andl $-16, %esp
    subl $12, %esp
    pushl %ebx
    call kmm_trap
    movl %ebx, %esp
    popal
    addl $8, %esp
    iretl

    .section .text.probe, "ax"
    .global kmm_probe_read
kmm_probe_read:
    movl 4(%esp), %ecx
kmm_probe_read_insn:
    movzbl (%ecx), %eax
    ret
kmm_probe_read_fixup:
    movl $0xffffffff, %eax
    ret

    .section .ex_table, "a"
    .balign 4
    .long kmm_probe_read_insn, kmm_probe_read_fixup
    "#,
    options(att_syntax)
);

/// One IDT entry (an i386 gate descriptor).
#[repr(C, packed)]
#[derive(Clone, Copy)]
struct Gate {
    offset_low: u16,
    selector: u16,
    zero: u8,
    type_attr: u8,
    offset_high: u16,
}

const KERNEL_CS: u16 = 0x08;
/// Present, DPL 0, 32-bit interrupt gate (IF cleared on entry).
const INTERRUPT_GATE: u8 = 0x8e;

#[repr(C, align(8))]
struct Idt([Gate; 32]);

static mut IDT: Idt = Idt([Gate {
    offset_low: 0,
    selector: 0,
    zero: 0,
    type_attr: 0,
    offset_high: 0,
}; 32]);

/// Fills the IDT with the 32 exception stubs and loads it.
pub fn init() {
    // SAFETY: called once, on the one CPU, before any exception is
    // expected; nothing else refers to IDT. `trap_stubs` is the table of
    // 32 stub addresses the assembly above emits.
    unsafe {
        let idt = &mut *core::ptr::addr_of_mut!(IDT);
        let stubs = &*addr_of!(trap_stubs);
        for (gate, &stub) in idt.0.iter_mut().zip(stubs) {
            *gate = Gate {
                offset_low: stub as u16,
                selector: KERNEL_CS,
                zero: 0,
                type_attr: INTERRUPT_GATE,
                offset_high: (stub >> 16) as u16,
            };
        }
        let descriptor: [u16; 3] = {
            let base = addr_of!(IDT) as u32;
            [
                (core::mem::size_of::<Idt>() - 1) as u16,
                base as u16,
                (base >> 16) as u16,
            ]
        };
        core::arch::asm!("lidt ({0})", in(reg) descriptor.as_ptr(), options(att_syntax, nostack, readonly));
    }
}

/// What a fixed-up page fault was, by kmm's account.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Fault {
    /// The guard page of the live vmalloc area `[start, end)`.
    VmallocGuard {
        /// The area's first byte.
        start: VirtAddr,
        /// One past its guard page.
        end: VirtAddr,
    },
    /// A vmalloc-range address no live area covers.
    VmallocUnused,
    /// A kernel address outside the vmalloc range nothing maps (the
    /// VMALLOC_OFFSET hole, say).
    Kernel,
    /// Below PAGE_OFFSET: a user address (kmm has no user address spaces
    /// yet, so nothing can be demand-paged).
    User,
}

/// Guard-page faults recognised so far.
pub static GUARD_FAULTS: AtomicUsize = AtomicUsize::new(0);
/// Other faults fixed up so far.
pub static OTHER_FAULTS: AtomicUsize = AtomicUsize::new(0);
/// CR2 of the last fixed-up fault.
pub static LAST_FAULT: AtomicUsize = AtomicUsize::new(0);

/// Reads the byte at `addr`, or `None` if that raised a page fault (which
/// the handler classified and counted).
pub fn probe_read(addr: usize) -> Option<u8> {
    // SAFETY: `kmm_probe_read` only loads one byte at `addr`; its load is
    // in the exception table, so an unmapped address resumes at the fixup
    // and returns u32::MAX instead of crashing. Reading device or
    // vmalloc memory the caller probes has no side effect here.
    let value = unsafe { kmm_probe_read(addr) };
    u8::try_from(value).ok()
}

/// Called by every stub with the saved registers.
#[no_mangle]
extern "C" fn kmm_trap(frame: &mut TrapFrame) {
    if frame.vector == 14 {
        page_fault(frame);
        return;
    }
    println!(
        "\nFATAL: exception {} at eip {:#010x}, error {:#x}, eflags {:#x}\n{frame:x?}",
        frame.vector, frame.eip, frame.error, frame.eflags
    );
    exit(EXIT_FAILURE);
}

fn search_exception_tables(eip: u32) -> Option<u32> {
    // SAFETY: the linker script brackets `.ex_table` with these symbols;
    // between them lie whole `ExEntry` records (each a pair of `.long`s),
    // read-only for the kernel's life.
    let table = unsafe {
        let start = addr_of!(__start_ex_table);
        let len = addr_of!(__stop_ex_table).offset_from(start) as usize;
        core::slice::from_raw_parts(start, len)
    };
    table.iter().find(|e| e.insn == eip).map(|e| e.fixup)
}

fn page_fault(frame: &mut TrapFrame) {
    let cr2 = read_cr2();
    let error = frame.error;
    let access = (
        if error & 1 != 0 {
            "protection"
        } else {
            "not-present"
        },
        if error & 2 != 0 { "write" } else { "read" },
        if error & 4 != 0 { "user" } else { "kernel" },
    );
    let Some(fixup) = search_exception_tables(frame.eip) else {
        println!(
            "\nFATAL: page fault at {cr2:#010x} ({} {} {}, error {error:#x}) from eip {:#010x}, no exception-table entry",
            access.0, access.1, access.2, frame.eip
        );
        exit(EXIT_FAILURE);
    };
    let fault = classify(VirtAddr::new(cr2));
    match fault {
        Fault::VmallocGuard { start, end } => {
            GUARD_FAULTS.fetch_add(1, Relaxed);
            println!(
                "  #PF at {cr2:#010x} ({} {} {}): the guard page of the vmalloc area {start}-{end}; fixed up to {fixup:#010x}",
                access.0, access.1, access.2
            );
        }
        other => {
            OTHER_FAULTS.fetch_add(1, Relaxed);
            println!(
                "  #PF at {cr2:#010x} ({} {} {}): {other:?}, not a guard page; fixed up to {fixup:#010x}",
                access.0, access.1, access.2
            );
        }
    }
    LAST_FAULT.store(cr2, Relaxed);
    frame.eip = fixup;
}

/// What kmm says `addr` is.
fn classify(addr: VirtAddr) -> Fault {
    let Some(mm) = MM.get() else {
        return Fault::Kernel;
    };
    if addr < mm.layout().page_offset() {
        return Fault::User;
    }
    let Some(vm) = mm.vmalloc_layer() else {
        return Fault::Kernel;
    };
    if !mm.is_vmalloc_addr(addr) {
        return Fault::Kernel;
    }
    if cfg!(feature = "broken-guard-recognition") {
        // The negative control: the handler no longer asks vmalloc.
        return Fault::VmallocUnused;
    }
    match vm.areas().find_vmap_area(addr) {
        Some(area) if addr.as_usize() >= area.start().as_usize() + area.usable_size() => {
            Fault::VmallocGuard {
                start: area.start(),
                end: area.end(),
            }
        }
        // Inside an area's usable pages: vmalloc maps them all at once,
        // so nothing should fault there; report it as unused.
        _ => Fault::VmallocUnused,
    }
}
