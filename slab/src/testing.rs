//! Test doubles of the kmm-api traits over host memory, shared by the unit
//! tests, integration tests, benchmarks, doctests and the fuzz target
//! (feature `testing`, which needs std).
//!
//! [`HostMachine`] is a page source, direct map and platform in one: an
//! aligned host buffer whose frames are numbered by address (so
//! `pfn * PAGE_SIZE` is the host address and the direct map is the
//! identity, `window_base` 0), a first-fit allocator of naturally aligned
//! blocks, one owner word per frame, and CPU ids handed to threads.

extern crate std;

use core::sync::atomic::{
    AtomicBool, AtomicUsize,
    Ordering::{AcqRel, Acquire, Relaxed, Release},
};
use kmm_api::{
    AllocatorId, DirectMap, Error, FrameAllocator, GfpFlags, Order, OwnerWord, PageOwner, Pages,
    Pfn, Platform, PreemptControl, VirtAddr, PAGE_SHIFT, PAGE_SIZE,
};
use std::{
    alloc::{GlobalAlloc, Layout, System},
    boxed::Box,
    cell::Cell,
    sync::Mutex,
    vec,
    vec::Vec,
};

/// The byte freed frames are filled with.
pub const PAGE_POISON: u8 = 0xaa;

/// Host memory posing as a machine's RAM, with the frame allocator, direct
/// map, owner words and CPUs the slab layer needs. Freed frames are
/// poisoned with [`PAGE_POISON`].
pub struct HostMachine {
    arena: *mut u8,
    layout: Layout,
    base_pfn: usize,
    frames: usize,
    /// Order + 1 of the block starting at each frame, 0 if none; under the
    /// lock, as is the search hint.
    blocks: Mutex<(Vec<u8>, usize)>,
    allocated: Box<[AtomicBool]>,
    owners: Box<[AtomicUsize]>,
    in_use: AtomicUsize,
    nr_cpus: usize,
    /// Each thread gets an id; an uncontended lock per CPU makes it
    /// exclusive even when there are more threads than CPUs.
    cpu_locks: Box<[AtomicBool]>,
    fail_after: AtomicUsize,
    id: AllocatorId,
}

// SAFETY: the arena is plain memory owned by this value; all bookkeeping is
// atomic or behind the mutex.
unsafe impl Sync for HostMachine {}
// SAFETY: as above.
unsafe impl Send for HostMachine {}

static NEXT_THREAD: AtomicUsize = AtomicUsize::new(0);
std::thread_local!(static THREAD_ID: Cell<usize> = const { Cell::new(usize::MAX) });

fn thread_id() -> usize {
    THREAD_ID.with(|id| {
        if id.get() == usize::MAX {
            id.set(NEXT_THREAD.fetch_add(1, Relaxed));
        }
        id.get()
    })
}

impl HostMachine {
    /// A machine of `frames` pages and `nr_cpus` CPUs, safe for any number
    /// of threads.
    pub fn new(frames: usize, nr_cpus: usize) -> Self {
        let frames = frames.max(1);
        let layout = Layout::from_size_align(frames * PAGE_SIZE, PAGE_SIZE).expect("arena layout");
        // SAFETY: the layout has a non-zero size. The system allocator, not
        // the global one, which may be a kmalloc over this very machine.
        let arena = unsafe { System.alloc_zeroed(layout) };
        assert!(!arena.is_null(), "host memory for the test machine");
        Self {
            arena,
            layout,
            base_pfn: arena as usize >> PAGE_SHIFT,
            frames,
            blocks: Mutex::new((vec![0; frames], 0)),
            allocated: (0..frames).map(|_| AtomicBool::new(false)).collect(),
            owners: (0..frames).map(|_| AtomicUsize::new(0)).collect(),
            in_use: AtomicUsize::new(0),
            nr_cpus: nr_cpus.max(1),
            cpu_locks: (0..nr_cpus.max(1))
                .map(|_| AtomicBool::new(false))
                .collect(),
            fail_after: AtomicUsize::new(usize::MAX),
            id: AllocatorId::new().expect("allocator identities left"),
        }
    }

    /// Makes the calling thread run as CPU `cpu` (modulo `nr_cpus`) from
    /// now on, for tests that need two threads on distinct CPUs.
    pub fn set_thread_cpu(cpu: usize) {
        THREAD_ID.with(|id| id.set(cpu));
    }

    /// Frames currently allocated.
    pub fn frames_in_use(&self) -> usize {
        self.in_use.load(Relaxed)
    }

    /// Whether `p` lies in the machine's memory.
    pub fn contains(&self, p: *const u8) -> bool {
        (p as usize).wrapping_sub(self.arena as usize) < self.layout.size()
    }

    /// Frames the machine has.
    pub fn frames(&self) -> usize {
        self.frames
    }

    /// Makes allocations fail once `n` more have succeeded (fault injection).
    pub fn fail_after(&self, n: usize) {
        self.fail_after.store(n, Relaxed);
    }

    #[inline]
    fn index(&self, pfn: Pfn) -> Option<usize> {
        pfn.checked_offset_from(Pfn::new(self.base_pfn))
            .filter(|&i| i < self.frames)
    }
}

impl Drop for HostMachine {
    fn drop(&mut self) {
        // SAFETY: allocated in `build` from `System` with this layout.
        unsafe { System.dealloc(self.arena, self.layout) };
    }
}

// SAFETY: a block is handed out only while every frame of it is marked
// free (checked and marked under the `blocks` lock), as one handle with
// this machine's id, and marked free again only by `free_frames`.
unsafe impl FrameAllocator for HostMachine {
    fn alloc_frames(&self, _gfp: GfpFlags, order: Order) -> Result<Pages, Error> {
        let budget = self.fail_after.load(Relaxed);
        if budget == 0 {
            return Err(Error::NoMemory { order });
        }
        if budget != usize::MAX {
            self.fail_after.store(budget - 1, Relaxed);
        }
        let n = order.pages();
        let mut guard = self.blocks.lock().map_err(|_| Error::NoMemory { order })?;
        let (blocks, hint) = &mut *guard;
        // Blocks are aligned to their size in absolute frame numbers, so
        // the host addresses are aligned too.
        let first = (self.base_pfn.next_multiple_of(n)) - self.base_pfn;
        let starts = (first..self.frames.saturating_sub(n - 1)).step_by(n);
        let count = starts.len();
        let skip = (hint.saturating_sub(first) / n).min(count);
        let found = starts
            .clone()
            .skip(skip)
            .chain(starts.take(skip))
            .find(|&i| (i..i + n).all(|j| !self.allocated[j].load(Relaxed)));
        let i = found.ok_or(Error::NoMemory { order })?;
        for j in i..i + n {
            self.allocated[j].store(true, Release);
            self.owners[j].store(0, Relaxed);
        }
        blocks[i] = order.as_u32() as u8 + 1;
        *hint = i + n;
        self.in_use.fetch_add(n, Relaxed);
        // SAFETY: the block was just marked allocated for this one handle.
        Ok(unsafe { Pages::from_raw(Pfn::new(self.base_pfn + i), order, self.id) })
    }

    fn free_frames(&self, pages: Pages) -> Result<(), Error> {
        let pfn = pages.pfn();
        if pages.allocator() != self.id {
            return Err(Error::Foreign { pfn });
        }
        let (pfn, order) = pages.into_raw();
        let i = self.index(pfn).ok_or(Error::PfnOutOfRange { pfn })?;
        let mut guard = self
            .blocks
            .lock()
            .map_err(|_| Error::NotAllocated { pfn })?;
        let (blocks, hint) = &mut *guard;
        match blocks[i] {
            0 if self.allocated[i].load(Relaxed) => return Err(Error::NotAllocated { pfn }),
            0 => return Err(Error::DoubleFree { pfn }),
            b if u32::from(b - 1) != order.as_u32() => {
                return Err(Error::WrongOrder {
                    pfn,
                    allocated: Order::new(u32::from(b - 1)).unwrap_or(Order::ZERO),
                    freed: order,
                })
            }
            _ if self.owners[i].load(Relaxed) != 0 => return Err(Error::Owned { pfn }),
            _ => {}
        }
        blocks[i] = 0;
        // Poison what goes back (Linux `page_poisoning`), so a user of a
        // freed block reads garbage at once instead of stale data. Not
        // under miri: a `Box` being dropped through a kmalloc global
        // allocator still protects its block while `dealloc` runs, and a
        // write through the arena's own pointer would be flagged (miri finds
        // such readers itself).
        if !cfg!(miri) {
            // SAFETY: the block is in the arena and was just given back by
            // its holder, so nothing else may touch it; it is marked free
            // below.
            unsafe {
                self.arena
                    .add(i * PAGE_SIZE)
                    .write_bytes(PAGE_POISON, order.pages() * PAGE_SIZE)
            };
        }
        for j in i..i + order.pages() {
            self.allocated[j].store(false, Release);
            self.owners[j].store(0, Relaxed);
        }
        *hint = (*hint).min(i);
        self.in_use.fetch_sub(order.pages(), Relaxed);
        Ok(())
    }

    fn allocator_id(&self) -> AllocatorId {
        self.id
    }
}

// SAFETY: frame `pfn` is the host page at `pfn * PAGE_SIZE`, inside the
// arena this value owns for its whole life; the mapping is the identity,
// so `virt_to_pfn` inverts `pfn_to_virt` exactly.
unsafe impl DirectMap for HostMachine {
    #[inline]
    fn pfn_to_virt(&self, pfn: Pfn) -> Option<VirtAddr> {
        self.index(pfn)?;
        Some(VirtAddr::new(pfn.as_usize() << PAGE_SHIFT))
    }

    #[inline]
    fn virt_to_pfn(&self, addr: VirtAddr) -> Option<Pfn> {
        let pfn = Pfn::new(addr.as_usize() >> PAGE_SHIFT);
        self.index(pfn).map(|_| pfn)
    }

    /// Derived from the arena pointer, so pointers keep its provenance
    /// (the code runs under miri's strict provenance).
    #[inline]
    fn virt_to_ptr(&self, addr: VirtAddr) -> *mut u8 {
        self.arena
            .wrapping_add(addr.as_usize().wrapping_sub(self.arena as usize))
    }
}

// SAFETY: `owners[i]` is the word last set for frame `i` since its block
// was handed out (reset to 0 then), and is reported only while the frame
// is allocated.
unsafe impl PageOwner for HostMachine {
    #[inline]
    fn owner(&self, pfn: Pfn) -> Option<OwnerWord> {
        let i = self.index(pfn)?;
        self.allocated[i]
            .load(Acquire)
            .then(|| OwnerWord::from_bits(self.owners[i].load(Acquire)))
    }

    unsafe fn set_owner(&self, pfn: Pfn, word: OwnerWord) -> Result<(), Error> {
        let i = self.index(pfn).ok_or(Error::PfnOutOfRange { pfn })?;
        if !self.allocated[i].load(Acquire) {
            return Err(Error::NotAllocated { pfn });
        }
        self.owners[i].store(word.to_bits(), Release);
        Ok(())
    }

    unsafe fn replace_owner(
        &self,
        pfn: Pfn,
        current: OwnerWord,
        new: OwnerWord,
    ) -> Result<bool, Error> {
        let i = self.index(pfn).ok_or(Error::PfnOutOfRange { pfn })?;
        if !self.allocated[i].load(Acquire) {
            return Err(Error::NotAllocated { pfn });
        }
        Ok(self.owners[i]
            .compare_exchange(current.to_bits(), new.to_bits(), AcqRel, Acquire)
            .is_ok())
    }
}

impl Platform for HostMachine {
    fn nr_cpus(&self) -> usize {
        self.nr_cpus
    }

    fn cpu_id(&self) -> usize {
        thread_id() % self.nr_cpus
    }
}

// SAFETY: a CPU id is handed out only while holding that id's lock,
// released by `put_cpu`; `on_cpu` work runs holding the same lock.
unsafe impl PreemptControl for HostMachine {
    #[inline]
    fn get_cpu(&self) -> usize {
        let cpu = self.cpu_id();
        while self.cpu_locks[cpu]
            .compare_exchange_weak(false, true, AcqRel, Relaxed)
            .is_err()
        {
            std::thread::yield_now();
        }
        cpu
    }

    #[inline]
    fn put_cpu(&self, cpu: usize) {
        self.cpu_locks[cpu].store(false, Release);
    }

    fn on_cpu(&self, cpu: usize, work: &mut dyn FnMut()) -> bool {
        let Some(lock) = self.cpu_locks.get(cpu) else {
            return false;
        };
        while lock
            .compare_exchange_weak(false, true, AcqRel, Relaxed)
            .is_err()
        {
            std::thread::yield_now();
        }
        work();
        lock.store(false, Release);
        true
    }
}
