//! The pkmap pool (Linux `mm/highmem.c`: `kmap_high`, `kunmap_high`,
//! `map_new_virtual`, `flush_all_zero_pkmaps`) and the hashed
//! `page_address` table of the pages it maps.
//!
//! # States of a slot (`pkmap_count[nr]`)
//!
//! | count | state | page table | `page_address` |
//! |---|---|---|---|
//! | 0 | free and flushed: may be handed out | no entry, no TLB entry | — |
//! | 1 | free but maybe stale: no users, the mapping stays until the next wrap | mapped | the slot |
//! | n ≥ 2 | mapped with n − 1 users | mapped | the slot |
//!
//! A kmap of a page that has a slot (count ≥ 1) raises its count (a hit);
//! otherwise `map_new_virtual` walks `last_pkmap_nr` forward to the next
//! count-0 slot. When `last_pkmap_nr` wraps to 0, `flush_all_zero_pkmaps`
//! unmaps every count-1 slot, drops it from the hash, sets it to 0, and
//! flushes the TLB once for the whole pool range: one flush per wrap, not
//! one per unmap. A kunmap lowers the count and never below 1; reaching 1
//! wakes the waiters of a full pool (they rescan, flushing on the wrap).
//!
//! # Waiting
//!
//! When every slot has users, a caller that may sleep reads the pool's
//! wait word under the lock, counts itself a waiter, releases the lock and
//! sleeps in [`kmm_api::Platform::wait_on`] while the word is unchanged. A
//! kunmap that takes a count to 1 with waiters present bumps the word under
//! the lock and calls [`kmm_api::Platform::wake_on`] after releasing it. So
//! a kunmap after the waiter's check changes the word before the waiter can
//! sleep on the old value: no wake-up is lost (the loom model proves it).
//!
//! # Lock
//!
//! One spin lock (Linux `kmap_lock`) guards every table here, taken with
//! interrupts saved so that `kmap_try` may run in interrupt context. Page
//! table calls are made under it (the table serialises itself and never
//! calls back). Never held while waiting.
//!
//! # Must never
//!
//! Hand one slot to two pages, give a page two slots, unmap a slot with
//! users, reuse a slot whose TLB entry was not flushed, or sleep with the
//! lock held.

use crate::HighmemError;
use kmm_api::sync::{AtomicU32, Ordering, SpinLock};
use kmm_api::{IrqGuard, KernelPageTable, PageProt, Pfn, Platform, VirtAddr, PAGE_SIZE};

/// The largest pool: one PTE page of slots without PAE (Linux
/// `LAST_PKMAP` is 1024, or 512 with PAE). The pool owns tables of this
/// size and uses the first `last_pkmap` entries.
pub const LAST_PKMAP_MAX: usize = 1024;
/// log2 of the buckets of the `page_address` hash (Linux
/// `PA_HASH_ORDER`).
pub const PA_HASH_ORDER: u32 = 7;
/// Buckets of the `page_address` hash: 128, as in Linux.
pub const PA_HASH_SIZE: usize = 1 << PA_HASH_ORDER;

/// `page[nr]` of a slot that maps no page.
const NO_PAGE: usize = usize::MAX;
/// End of a hash chain.
const NO_SLOT: u16 = u16::MAX;
/// `pkmap_count` of a free, flushed slot.
const FREE: u32 = 0;
/// `pkmap_count` of a slot with no users whose mapping is still in place.
const UNFLUSHED: u32 = 1;

/// What a pkmap slot holds, decoded from its `pkmap_count`.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum SlotState {
    /// Count 0: free and flushed; the next slot search may take it.
    Free,
    /// Count 1: no users, but the page is still mapped (and may sit in a
    /// TLB) until the next wrap flushes it; a kmap of the same page takes
    /// it back.
    Unflushed(Pfn),
    /// Count n ≥ 2: mapped with `users` = n − 1.
    Mapped {
        /// The page.
        pfn: Pfn,
        /// Its users.
        users: u32,
    },
}

/// The pool's counters.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default)]
pub struct PkmapStats {
    /// kmaps of highmem pages that got a slot.
    pub maps: u64,
    /// Of those, the ones whose page already had a slot (count raised).
    pub hits: u64,
    /// Whole-pool TLB flushes (`flush_all_zero_pkmaps` that freed a slot).
    pub flushes: u64,
    /// Times a caller slept because every slot had users.
    pub waits: u64,
    /// Unmaps the page table refused during a flush (a broken table; the
    /// slot is kept at count 1 and retried at the next wrap).
    pub unmap_errors: u64,
}

/// The tables under the lock.
struct PoolState {
    /// Linux `pkmap_count`.
    count: [u32; LAST_PKMAP_MAX],
    /// The pfn each slot maps, `NO_PAGE` for count 0.
    page: [usize; LAST_PKMAP_MAX],
    /// Next slot in the same hash bucket.
    next: [u16; LAST_PKMAP_MAX],
    /// First slot of each `page_address` bucket.
    bucket: [u16; PA_HASH_SIZE],
    /// Linux `last_pkmap_nr`: the slot handed out last.
    last_pkmap_nr: usize,
    /// Callers between their check of a full pool and their return from
    /// the wait.
    waiters: u32,
    stats: PkmapStats,
}

/// The bucket of `pfn` (Fibonacci hashing, as Linux's `hash_ptr`).
#[inline]
fn pa_hash(pfn: Pfn) -> usize {
    ((pfn.as_usize() as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15) >> (64 - PA_HASH_ORDER)) as usize
}

impl PoolState {
    fn new() -> Self {
        PoolState {
            count: [FREE; LAST_PKMAP_MAX],
            page: [NO_PAGE; LAST_PKMAP_MAX],
            next: [NO_SLOT; LAST_PKMAP_MAX],
            bucket: [NO_SLOT; PA_HASH_SIZE],
            last_pkmap_nr: 0,
            waiters: 0,
            stats: PkmapStats::default(),
        }
    }

    /// The slot mapping `pfn`, if any (Linux `page_address` of highmem).
    #[inline]
    fn lookup(&self, pfn: Pfn) -> Option<usize> {
        let mut slot = self.bucket[pa_hash(pfn)];
        while slot != NO_SLOT {
            let nr = usize::from(slot);
            if self.page[nr] == pfn.as_usize() {
                return Some(nr);
            }
            slot = self.next[nr];
        }
        None
    }

    /// Records that slot `nr` maps `pfn` (Linux `set_page_address`).
    fn insert(&mut self, nr: usize, pfn: Pfn) {
        let b = pa_hash(pfn);
        self.page[nr] = pfn.as_usize();
        self.next[nr] = self.bucket[b];
        // `nr` < LAST_PKMAP_MAX = 1024, so it fits.
        self.bucket[b] = nr as u16;
    }

    /// Forgets slot `nr`'s page (Linux `set_page_address(page, NULL)`).
    fn remove(&mut self, nr: usize) {
        let b = pa_hash(Pfn::new(self.page[nr]));
        let after = self.next[nr];
        if usize::from(self.bucket[b]) == nr {
            self.bucket[b] = after;
        } else {
            let mut prev = self.bucket[b];
            while prev != NO_SLOT {
                let p = usize::from(prev);
                if usize::from(self.next[p]) == nr {
                    self.next[p] = after;
                    break;
                }
                prev = self.next[p];
            }
        }
        self.next[nr] = NO_SLOT;
        self.page[nr] = NO_PAGE;
    }
}

/// The pool: the tables behind the lock, the wait word, and the virtual
/// range `[base, base + slots pages)` it owns.
pub(crate) struct Pkmap {
    base: VirtAddr,
    slots: usize,
    state: SpinLock<PoolState>,
    /// Bumped by a kunmap that frees a slot while callers wait.
    wait_word: AtomicU32,
}

/// Whether a kmap may sleep for a slot.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Blocking {
    /// Wait in `Platform::wait_on` when every slot has users.
    MaySleep,
    /// Fail with `PoolFull` instead.
    Atomic,
}

impl Pkmap {
    /// A pool of `slots` (1..=`LAST_PKMAP_MAX`, checked by the caller) at
    /// `base`, every slot free and flushed.
    pub(crate) fn new(base: VirtAddr, slots: usize) -> Self {
        Pkmap {
            base,
            slots,
            state: SpinLock::new(PoolState::new()),
            wait_word: AtomicU32::new(0),
        }
    }

    /// Slots in the pool (`LAST_PKMAP`).
    pub(crate) fn slots(&self) -> usize {
        self.slots
    }

    /// Linux `PKMAP_ADDR(nr)`.
    #[inline]
    pub(crate) fn addr(&self, nr: usize) -> VirtAddr {
        VirtAddr::new(self.base.as_usize() + nr * PAGE_SIZE)
    }

    /// Linux `PKMAP_NR(addr)`, `None` outside the pool.
    pub(crate) fn nr(&self, addr: VirtAddr) -> Option<usize> {
        let off = addr.checked_sub_addr(self.base)?;
        let nr = off / PAGE_SIZE;
        (nr < self.slots).then_some(nr)
    }

    /// One past the pool's last byte.
    pub(crate) fn end(&self) -> VirtAddr {
        self.addr(self.slots)
    }

    /// Linux `kmap_high`: the pkmap address of highmem frame `pfn` with
    /// one more user, taking a slot if the page has none.
    ///
    /// # Safety
    ///
    /// The caller holds `pfn` (it will be reachable at the returned
    /// address until the matching [`Pkmap::kunmap_high`]), and `table`
    /// is the table this pool was made over, whose pool range nobody else
    /// maps.
    pub(crate) unsafe fn kmap_high<T: KernelPageTable, P: Platform>(
        &self,
        table: &T,
        platform: &P,
        pfn: Pfn,
        blocking: Blocking,
    ) -> Result<VirtAddr, HighmemError> {
        let mut waited = false;
        loop {
            let irq = IrqGuard::new(platform);
            let mut st = self.state.lock();
            if waited {
                st.waiters -= 1;
            }
            if let Some(nr) = st.lookup(pfn) {
                let count = st.count[nr]
                    .checked_add(1)
                    .ok_or(HighmemError::TooManyUsers { pfn })?;
                st.count[nr] = count;
                st.stats.maps += 1;
                st.stats.hits += 1;
                return Ok(self.addr(nr));
            }
            // SAFETY: forwarded from our caller.
            if let Some(nr) = unsafe { self.map_new_virtual(&mut st, table, pfn)? } {
                // One user: the count is users + 1.
                st.count[nr] = UNFLUSHED + 1;
                st.stats.maps += 1;
                return Ok(self.addr(nr));
            }
            if blocking == Blocking::Atomic {
                return Err(HighmemError::PoolFull { slots: self.slots });
            }
            // Read under the lock: a kunmap that frees a slot from now on
            // bumps the word before we can sleep on this value.
            let seen = self.wait_word.load(Ordering::SeqCst);
            st.waiters += 1;
            st.stats.waits += 1;
            drop(st);
            drop(irq);
            platform.wait_on(&self.wait_word, seen);
            waited = true;
        }
    }

    /// Linux `map_new_virtual`: the next count-0 slot after
    /// `last_pkmap_nr`, mapped to `pfn` with count 1; flushes on the wrap;
    /// `None` if every slot has users.
    ///
    /// # Safety
    ///
    /// As [`Pkmap::kmap_high`].
    unsafe fn map_new_virtual<T: KernelPageTable>(
        &self,
        st: &mut PoolState,
        table: &T,
        pfn: Pfn,
    ) -> Result<Option<usize>, HighmemError> {
        let mut left = self.slots;
        loop {
            // A compare, not `% slots`: a division per step of the walk.
            st.last_pkmap_nr += 1;
            if st.last_pkmap_nr == self.slots {
                st.last_pkmap_nr = 0;
            }
            if st.last_pkmap_nr == 0 {
                self.flush_all_zero_pkmaps(st, table);
                left = self.slots;
            }
            if st.count[st.last_pkmap_nr] == FREE {
                break;
            }
            left -= 1;
            if left == 0 {
                return Ok(None);
            }
        }
        let nr = st.last_pkmap_nr;
        // SAFETY: our caller holds `pfn`; slot `nr` is ours (the pool owns
        // its range) and free: unmapped, and flushed by the flush that made
        // its count 0.
        unsafe { table.map(self.addr(nr), pfn, PageProt::KERNEL)? };
        st.count[nr] = UNFLUSHED;
        st.insert(nr, pfn);
        Ok(Some(nr))
    }

    /// Linux `flush_all_zero_pkmaps`: unmaps every count-1 slot and
    /// flushes the pool's range once.
    fn flush_all_zero_pkmaps<T: KernelPageTable>(&self, st: &mut PoolState, table: &T) {
        let mut need_flush = false;
        for nr in 0..self.slots {
            if st.count[nr] != UNFLUSHED {
                continue;
            }
            // SAFETY: the slot is ours and mapped (count 1), and has no
            // users: nothing reaches its address any more.
            match unsafe { table.unmap(self.addr(nr)) } {
                Ok((_, flush)) => {
                    // The one flush below covers it.
                    flush.defer();
                    st.count[nr] = FREE;
                    st.remove(nr);
                    need_flush = true;
                }
                Err(_) => st.stats.unmap_errors += 1,
            }
        }
        if need_flush {
            table.flush_tlb_range(self.base, self.end());
            st.stats.flushes += 1;
        }
    }

    /// Linux `kmap_flush_unused`: frees every slot with no users now.
    pub(crate) fn kmap_flush_unused<T: KernelPageTable, P: Platform>(
        &self,
        table: &T,
        platform: &P,
    ) {
        let _irq = IrqGuard::new(platform);
        let mut st = self.state.lock();
        self.flush_all_zero_pkmaps(&mut st, table);
    }

    /// Linux `kunmap_high`: one user fewer for `pfn`'s slot; the last
    /// user leaves it at count 1 and wakes the waiters of a full pool.
    ///
    /// # Safety
    ///
    /// The caller is a user of `pfn`'s mapping (from a
    /// [`Pkmap::kmap_high`]) and stops using the address now.
    pub(crate) unsafe fn kunmap_high<P: Platform>(
        &self,
        platform: &P,
        pfn: Pfn,
    ) -> Result<(), HighmemError> {
        let wake = {
            let _irq = IrqGuard::new(platform);
            let mut st = self.state.lock();
            let nr = st.lookup(pfn).ok_or(HighmemError::NotMapped { pfn })?;
            let count = st.count[nr];
            if count <= UNFLUSHED {
                // A slot with no users: nothing to undo, and the count
                // never goes below 1 while the page is mapped.
                return Err(HighmemError::NotMapped { pfn });
            }
            st.count[nr] = count - 1;
            let wake = count - 1 == UNFLUSHED && st.waiters > 0;
            if wake {
                self.wait_word.fetch_add(1, Ordering::SeqCst);
            }
            wake
        };
        if wake {
            platform.wake_on(&self.wait_word);
        }
        Ok(())
    }

    /// The pkmap address of `pfn`, if it has a slot (count ≥ 1).
    pub(crate) fn page_address<P: Platform>(&self, platform: &P, pfn: Pfn) -> Option<VirtAddr> {
        let _irq = IrqGuard::new(platform);
        let st = self.state.lock();
        st.lookup(pfn).map(|nr| self.addr(nr))
    }

    /// The state of slot `nr`, `None` past the pool.
    pub(crate) fn slot<P: Platform>(&self, platform: &P, nr: usize) -> Option<SlotState> {
        if nr >= self.slots {
            return None;
        }
        let _irq = IrqGuard::new(platform);
        let st = self.state.lock();
        Some(match st.count[nr] {
            FREE => SlotState::Free,
            UNFLUSHED => SlotState::Unflushed(Pfn::new(st.page[nr])),
            n => SlotState::Mapped {
                pfn: Pfn::new(st.page[nr]),
                users: n - 1,
            },
        })
    }

    /// Linux `last_pkmap_nr`.
    pub(crate) fn last_pkmap_nr<P: Platform>(&self, platform: &P) -> usize {
        let _irq = IrqGuard::new(platform);
        self.state.lock().last_pkmap_nr
    }

    /// The counters.
    pub(crate) fn stats<P: Platform>(&self, platform: &P) -> PkmapStats {
        let _irq = IrqGuard::new(platform);
        self.state.lock().stats
    }

    /// Every invariant of the pool, against `table`: the first broken one.
    pub(crate) fn check<T: KernelPageTable, P: Platform>(
        &self,
        table: &T,
        platform: &P,
    ) -> Result<(), &'static str> {
        let _irq = IrqGuard::new(platform);
        let st = self.state.lock();
        if st.last_pkmap_nr >= self.slots {
            return Err("last_pkmap_nr is past the pool");
        }
        let mut in_use = 0;
        for nr in 0..LAST_PKMAP_MAX {
            let (count, page) = (st.count[nr], st.page[nr]);
            if nr >= self.slots {
                if count != FREE || page != NO_PAGE {
                    return Err("a slot past LAST_PKMAP is in use");
                }
                continue;
            }
            let mapped = table.translate(self.addr(nr)).map(|(pfn, _)| pfn);
            if count == FREE {
                if page != NO_PAGE {
                    return Err("a free slot still names a page");
                }
                if mapped.is_some() {
                    return Err("a free slot is still mapped in the page table");
                }
                continue;
            }
            in_use += 1;
            if page == NO_PAGE {
                return Err("a slot in use names no page");
            }
            let pfn = Pfn::new(page);
            if mapped != Some(pfn) {
                return Err("a slot in use does not map its page in the page table");
            }
            if st.lookup(pfn) != Some(nr) {
                return Err("page_address does not find a mapped page's slot (or finds another)");
            }
        }
        // Every chain is acyclic, holds only slots in use in their own
        // bucket, and the chains hold each slot in use exactly once.
        let mut chained = 0;
        for b in 0..PA_HASH_SIZE {
            let mut slot = st.bucket[b];
            let mut steps = 0;
            while slot != NO_SLOT {
                let nr = usize::from(slot);
                if nr >= self.slots || st.count[nr] == FREE {
                    return Err("a hash chain holds a free slot");
                }
                if pa_hash(Pfn::new(st.page[nr])) != b {
                    return Err("a hash chain holds a slot of another bucket");
                }
                steps += 1;
                if steps > self.slots {
                    return Err("a hash chain has a cycle");
                }
                slot = st.next[nr];
            }
            chained += steps;
        }
        if chained != in_use {
            return Err("the hash chains do not hold every slot in use exactly once");
        }
        if st.stats.hits > st.stats.maps {
            return Err("more hits than maps");
        }
        Ok(())
    }
}
