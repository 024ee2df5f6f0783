//! What this kernel plugs into kmm: its one CPU ([`Cpu`]: `Platform` and
//! `PreemptControl`), its direct map of lowmem at `PAGE_OFFSET`
//! ([`LowMem`]: `DirectMap`), and its MMU ([`Hw`]: `kmm::x86::Mmu`, which
//! on hardware has nothing to mirror and flushes the TLB with `invlpg` or
//! a CR3 reload). Plus the control-register accessors the boot needs.
//!
//! The kernel runs with interrupts disabled throughout (the IDT has only
//! exception gates), so one CPU pinned "by preemption" is simply the CPU.

use core::arch::asm;
use core::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use kmm::x86::Mmu;
use kmm::{DirectMap, Pfn, Platform, PreemptControl, VirtAddr, PAGE_SIZE};

/// The one CPU, interrupts off.
#[derive(Clone, Copy, Debug, Default)]
pub struct Cpu;

impl Platform for Cpu {
    fn nr_cpus(&self) -> usize {
        1
    }

    fn cpu_id(&self) -> usize {
        0
    }

    fn irq_save(&self) -> usize {
        let flags: usize;
        // SAFETY: reads EFLAGS and clears IF; touches only the stack slot
        // pushf/pop use.
        unsafe { asm!("pushfl; popl {0}; cli", out(reg) flags, options(att_syntax)) };
        flags
    }

    fn irq_restore(&self, flags: usize) {
        const IF: usize = 1 << 9;
        if flags & IF != 0 {
            // SAFETY: restores the interrupt flag irq_save found set.
            unsafe { asm!("sti", options(att_syntax, nomem, nostack)) };
        }
    }
}

// SAFETY: there is one CPU, id 0 < nr_cpus() = 1, and interrupts stay
// disabled for the kernel's whole life (no IRQ gate is installed, IF is
// never set), so no other execution context can be handed the id between
// get_cpu and put_cpu. The only other context is the page-fault handler,
// which calls into kmm (vmalloc's area lookup, which pins no CPU) only for
// faults at an exception-table instruction, i.e. outside kmm, never in a
// pinned section. Nesting is trivially fine.
unsafe impl PreemptControl for Cpu {
    fn get_cpu(&self) -> usize {
        0
    }

    fn put_cpu(&self, cpu: usize) {
        debug_assert_eq!(cpu, 0);
    }
}

/// The direct map: frame `pfn` below `max_low_pfn` at `PAGE_OFFSET + pfn *
/// PAGE_SIZE`, as the boot page directory maps it and kmm's kernel page
/// table records it.
#[derive(Clone, Copy, Debug)]
pub struct LowMem {
    page_offset: usize,
    max_low_pfn: usize,
}

impl LowMem {
    /// The direct map of the frames below `max_low_pfn` at `page_offset`.
    pub const fn new(page_offset: VirtAddr, max_low_pfn: Pfn) -> Self {
        LowMem {
            page_offset: page_offset.as_usize(),
            max_low_pfn: max_low_pfn.as_usize(),
        }
    }
}

// SAFETY: the boot page directory maps [PAGE_OFFSET, PAGE_OFFSET + 896 MiB)
// to physical [0, 896 MiB) before any kmm call, and kmm's own table, which
// replaces it in CR3, maps [PAGE_OFFSET, high_memory) the same way (its
// `map_direct`) and is never torn down: so each frame below max_low_pfn is
// its own 4 KiB at one address for the kernel's life; distinct frames get
// distinct addresses; `virt_to_pfn` inverts `pfn_to_virt` on exactly that
// range. The window base is 0: these are the addresses the CPU uses.
unsafe impl DirectMap for LowMem {
    fn pfn_to_virt(&self, pfn: Pfn) -> Option<VirtAddr> {
        (pfn.as_usize() < self.max_low_pfn)
            .then(|| VirtAddr::new(self.page_offset + pfn.as_usize() * PAGE_SIZE))
    }

    fn virt_to_pfn(&self, addr: VirtAddr) -> Option<Pfn> {
        let pfn = addr.as_usize().checked_sub(self.page_offset)? / PAGE_SIZE;
        (pfn < self.max_low_pfn).then(|| Pfn::new(pfn))
    }
}

/// The MMU: it walks the table in RAM itself, so only the TLB needs
/// telling.
#[derive(Clone, Copy, Debug, Default)]
pub struct Hw;

/// TLB flushes the MMU hook has done (for the report).
pub static TLB_FLUSHES: AtomicUsize = AtomicUsize::new(0);

/// Above this many pages a flush reloads CR3 instead of `invlpg` per page
/// (Linux's `tlb_single_page_flush_ceiling` is 33).
const FLUSH_CEILING: usize = 33;

impl Mmu for Hw {
    fn flush_tlb_range(&self, start: VirtAddr, end: VirtAddr) {
        TLB_FLUSHES.fetch_add(1, Relaxed);
        let pages = end
            .as_usize()
            .saturating_sub(start.as_usize())
            .div_ceil(PAGE_SIZE);
        if pages > FLUSH_CEILING {
            // SAFETY: reloading CR3 with its own value only drops cached
            // (non-global) translations.
            unsafe { write_cr3(read_cr3()) };
            return;
        }
        for i in 0..pages {
            let addr = start.as_usize() + i * PAGE_SIZE;
            // SAFETY: invlpg drops one cached translation; no memory is
            // accessed.
            unsafe {
                asm!("invlpg ({0})", in(reg) addr, options(att_syntax, nostack, preserves_flags))
            };
        }
    }
}

/// CR2: the linear address of the last page fault.
pub fn read_cr2() -> usize {
    let value: usize;
    // SAFETY: reading CR2 has no side effect.
    unsafe {
        asm!("movl %cr2, {0}", out(reg) value, options(att_syntax, nomem, nostack, preserves_flags))
    };
    value
}

/// CR3: the physical address of the page directory in use.
pub fn read_cr3() -> usize {
    let value: usize;
    // SAFETY: reading CR3 has no side effect.
    unsafe {
        asm!("movl %cr3, {0}", out(reg) value, options(att_syntax, nomem, nostack, preserves_flags))
    };
    value
}

/// CR4 (PSE is bit 4).
pub fn read_cr4() -> usize {
    let value: usize;
    // SAFETY: reading CR4 has no side effect.
    unsafe {
        asm!("movl %cr4, {0}", out(reg) value, options(att_syntax, nomem, nostack, preserves_flags))
    };
    value
}

/// Loads CR3 (and so flushes the TLB).
///
/// # Safety
///
/// `phys` is a page directory that maps the code, stack and data in use
/// (the kernel image, the current stack, everything the caller will touch)
/// at the addresses they are used at now.
pub unsafe fn write_cr3(phys: usize) {
    // SAFETY: the caller's contract.
    unsafe { asm!("movl {0}, %cr3", in(reg) phys, options(att_syntax, nostack, preserves_flags)) };
}
