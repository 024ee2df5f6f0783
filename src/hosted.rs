//! The hosted 64-bit preset (feature `std`): RAM is a plain, page-aligned
//! host buffer, mapped linearly in full: a frame's virtual address is the
//! buffer address plus its physical address, so the window base is 0 and
//! every pointer is the host's own. No mapping system calls, no highmem:
//! the preset benchmarks and the global allocator run on, and the one miri
//! can run.
//!
//! Owns the buffer until the last handle drops; never hands out a pointer
//! outside it.

use crate::cpu::HostCpus;
use crate::layout::{Layout, NR_CPUS};
use crate::park::WaitQueues;
use core::fmt;
use core::ptr::NonNull;
use kmm_api::sync::AtomicU32;
use kmm_api::{
    DirectMap, Error, MemoryRegion, Pfn, Platform, PreemptControl, RegionKind, VirtAddr, PAGE_SIZE,
};
use std::alloc::{GlobalAlloc, Layout as AllocLayout, System};
use std::sync::Arc;

struct Buffer {
    /// What the host allocator returned (for `dealloc`).
    raw: NonNull<u8>,
    alloc: AllocLayout,
    /// `raw` rounded up to a page: physical address 0.
    ram: NonNull<u8>,
    ram_bytes: usize,
}

// SAFETY: the buffer is an exclusively owned heap allocation; access to its
// bytes is governed by the DirectMap contract (whoever holds a frame).
unsafe impl Send for Buffer {}
// SAFETY: as above; `Buffer` itself is never mutated after creation.
unsafe impl Sync for Buffer {}

impl Buffer {
    /// `ram_bytes` of zeroed memory starting on a page boundary. Allocated
    /// with the allocator's natural alignment and rounded up by hand,
    /// because the system allocator zeroes over-aligned requests eagerly,
    /// while a plain zeroed request of this size is mapped lazily.
    fn new(ram_bytes: usize) -> Result<Self, Error> {
        let too_large = Error::SizeTooLarge { bytes: ram_bytes };
        let size = ram_bytes.checked_add(PAGE_SIZE).ok_or(too_large)?;
        let alloc = AllocLayout::from_size_align(size, 16).map_err(|_| too_large)?;
        // SAFETY: `alloc` has a non-zero size.
        let raw = NonNull::new(unsafe { System.alloc_zeroed(alloc) }).ok_or(too_large)?;
        let pad = raw.as_ptr().align_offset(PAGE_SIZE);
        // `pad < PAGE_SIZE`, and the allocation holds PAGE_SIZE spare bytes.
        let ram = NonNull::new(raw.as_ptr().wrapping_add(pad)).ok_or(too_large)?;
        advise_huge_pages(ram, ram_bytes);
        Ok(Buffer {
            raw,
            alloc,
            ram,
            ram_bytes,
        })
    }
}

/// Asks the host to back the 2 MiB-aligned part of the RAM with huge pages
/// (Linux's transparent huge pages, where the host allows them), as a
/// kernel maps its direct map with large pages (`PSE` on i386): the
/// allocator's metadata and objects are then reached through far fewer
/// TLB entries and page faults. A host that refuses leaves 4 KiB pages;
/// the contents never change either way. (Not under miri, which has no
/// `madvise`.)
#[cfg(all(target_os = "linux", not(miri)))]
fn advise_huge_pages(ram: NonNull<u8>, bytes: usize) {
    const HUGE: usize = 2 << 20;
    let from = ram.as_ptr().align_offset(HUGE);
    let len = bytes.saturating_sub(from) & !(HUGE - 1);
    if len > 0 {
        // SAFETY: `[from, from + len)` lies inside the RAM, our own
        // allocation; MADV_HUGEPAGE changes how the host backs the range,
        // not what it holds or who may access it.
        unsafe {
            libc::madvise(
                ram.as_ptr().wrapping_add(from).cast(),
                len,
                libc::MADV_HUGEPAGE,
            )
        };
    }
}

#[cfg(not(all(target_os = "linux", not(miri))))]
fn advise_huge_pages(_ram: NonNull<u8>, _bytes: usize) {}

impl Drop for Buffer {
    fn drop(&mut self) {
        // SAFETY: `raw` came from `System.alloc_zeroed(self.alloc)` and is
        // freed once.
        unsafe { System.dealloc(self.raw.as_ptr(), self.alloc) }
    }
}

struct Inner {
    buffer: Buffer,
    layout: Layout,
    cpus: HostCpus,
    waits: WaitQueues,
}

/// A handle on hosted RAM; clones share it, and it lives until the last
/// handle drops.
///
/// ```
/// use kmm::hosted::Hosted;
/// use kmm_api::{DirectMap, Pfn};
/// let h = Hosted::new(1 << 20, 1)?;
/// let p = h.pfn_to_ptr(Pfn::new(3)).unwrap();
/// assert_eq!(h.ptr_to_pfn(p.as_ptr()), Some(Pfn::new(3)));
/// # Ok::<(), kmm_api::Error>(())
/// ```
#[derive(Clone)]
pub struct Hosted {
    inner: Arc<Inner>,
}

impl Hosted {
    /// `ram_bytes` of RAM (rounded down to pages, at least one page) and
    /// `nr_cpus` CPUs (`1..=NR_CPUS`), each owned by one live thread that
    /// uses it, plus the overflow CPU further threads share (see
    /// [`crate::cpu`]): `Platform::nr_cpus` reports `nr_cpus + 1`.
    pub fn new(ram_bytes: usize, nr_cpus: usize) -> Result<Hosted, Error> {
        if nr_cpus == 0 || nr_cpus > NR_CPUS {
            return Err(Error::BadCpuCount {
                nr_cpus,
                max: NR_CPUS,
            });
        }
        let ram_bytes = ram_bytes & !(PAGE_SIZE - 1);
        let buffer = Buffer::new(ram_bytes)?;
        let base = VirtAddr::new(buffer.ram.as_ptr() as usize);
        let layout = Layout::x86_64_at(ram_bytes as u64, base)?;
        Ok(Hosted {
            inner: Arc::new(Inner {
                buffer,
                layout,
                cpus: HostCpus::new(nr_cpus),
                waits: WaitQueues::new(),
            }),
        })
    }

    /// The 64-bit layout, with the direct map at the buffer.
    pub fn layout(&self) -> &Layout {
        &self.inner.layout
    }

    /// The memory map: all of RAM usable.
    pub fn memory_map(&self) -> [MemoryRegion; 1] {
        let end = self.inner.buffer.ram_bytes as u64;
        [MemoryRegion::new(0, end, RegionKind::Usable)]
    }

    fn frames(&self) -> usize {
        self.inner.buffer.ram_bytes / PAGE_SIZE
    }

    /// Frees the CPU the calling thread owns (see [`HostCpus::release`]).
    ///
    /// # Safety
    ///
    /// The calling thread has no section pinned to a CPU of this machine
    /// open.
    pub(crate) unsafe fn release_cpu(&self) {
        // SAFETY: the caller's promise is `release`'s contract.
        unsafe { self.inner.cpus.release() }
    }
}

impl fmt::Debug for Hosted {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Hosted")
            .field("ram", &self.inner.buffer.ram)
            .field("ram_bytes", &self.inner.buffer.ram_bytes)
            .field("nr_cpus", &self.inner.cpus.nr_cpus())
            .finish()
    }
}

// SAFETY: frame `pfn` below `frames()` is bytes `[pfn * PAGE_SIZE, +PAGE_SIZE)`
// of the owned buffer, alive while any handle lives; distinct frames are
// disjoint; `virt_to_pfn` inverts `pfn_to_virt` over exactly those frames.
unsafe impl DirectMap for Hosted {
    fn pfn_to_virt(&self, pfn: Pfn) -> Option<VirtAddr> {
        let base = self.inner.layout.page_offset().as_usize();
        (pfn.as_usize() < self.frames()).then(|| VirtAddr::new(base + pfn.as_usize() * PAGE_SIZE))
    }

    fn virt_to_pfn(&self, addr: VirtAddr) -> Option<Pfn> {
        let offset = addr.checked_sub_addr(self.inner.layout.page_offset())?;
        let pfn = offset / PAGE_SIZE;
        (pfn < self.frames()).then(|| Pfn::new(pfn))
    }

    /// Derived from the buffer pointer rather than cast from the integer, so
    /// the pointer keeps the buffer's provenance.
    fn virt_to_ptr(&self, addr: VirtAddr) -> *mut u8 {
        let base = self.inner.layout.page_offset().as_usize();
        self.inner
            .buffer
            .ram
            .as_ptr()
            .wrapping_add(addr.as_usize().wrapping_sub(base))
    }
}

impl Platform for Hosted {
    fn nr_cpus(&self) -> usize {
        self.inner.cpus.nr_cpus()
    }
    fn cpu_id(&self) -> usize {
        self.inner.cpus.cpu_id()
    }
    /// Parks the thread (see [`crate::park`]).
    fn wait_on(&self, word: &AtomicU32, seen: u32) {
        self.inner.waits.wait_on(word, seen)
    }
    fn wake_on(&self, word: &AtomicU32) {
        self.inner.waits.wake_on(word)
    }
}

// SAFETY: `HostCpus` keeps the contract (see `crate::cpu`): an owned id
// belongs to one live thread, the overflow id to one holder at a time,
// and `on_cpu` runs work only as a CPU it holds.
unsafe impl PreemptControl for Hosted {
    #[inline]
    fn get_cpu(&self) -> usize {
        self.inner.cpus.get_cpu()
    }
    #[inline]
    fn put_cpu(&self, cpu: usize) {
        self.inner.cpus.put_cpu(cpu)
    }
    fn on_cpu(&self, cpu: usize, work: &mut dyn FnMut()) -> bool {
        self.inner.cpus.on_cpu(cpu, work)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_frame_is_directly_mapped_at_buffer_plus_phys() {
        let h = Hosted::new(16 * PAGE_SIZE, 2).unwrap();
        let base = h.layout().page_offset().as_usize();
        assert_eq!(base % PAGE_SIZE, 0);
        for pfn in (0..16).map(Pfn::new) {
            let virt = h.pfn_to_virt(pfn).unwrap();
            assert_eq!(virt.as_usize(), base + pfn.as_usize() * PAGE_SIZE);
            assert_eq!(h.virt_to_pfn(virt), Some(pfn));
        }
        assert_eq!(h.pfn_to_virt(Pfn::new(16)), None);
        assert_eq!(h.virt_to_pfn(VirtAddr::new(base - 1)), None);
        assert_eq!(h.layout().highmem_bytes(), 0);
    }

    #[test]
    fn ram_starts_zeroed_and_frames_do_not_overlap() {
        let h = Hosted::new(4 * PAGE_SIZE, 1).unwrap();
        for pfn in (0..4).map(Pfn::new) {
            let p = h.pfn_to_ptr(pfn).unwrap().as_ptr();
            // SAFETY: a frame of the buffer, alive while `h` is.
            let frame = unsafe { core::slice::from_raw_parts_mut(p, PAGE_SIZE) };
            assert!(frame.iter().all(|&b| b == 0));
            frame.fill(pfn.as_usize() as u8 + 1);
        }
        for pfn in (0..4).map(Pfn::new) {
            let p = h.pfn_to_ptr(pfn).unwrap().as_ptr();
            // SAFETY: as above.
            let frame = unsafe { core::slice::from_raw_parts(p, PAGE_SIZE) };
            assert!(frame.iter().all(|&b| b == pfn.as_usize() as u8 + 1));
        }
    }

    #[test]
    fn bad_cpu_counts_are_refused_by_name() {
        for nr_cpus in [0, NR_CPUS + 1] {
            let refused = Hosted::new(PAGE_SIZE, nr_cpus).err();
            let expected = Error::BadCpuCount {
                nr_cpus,
                max: NR_CPUS,
            };
            assert_eq!(refused, Some(expected));
            assert_eq!(
                expected.to_string(),
                std::format!("{nr_cpus} CPUs: from 1 to {NR_CPUS} are supported")
            );
        }
        assert!(Hosted::new(0, 1).is_err());
    }
}
