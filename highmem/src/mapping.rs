//! The safe forms and their guards: the one module that turns a mapped
//! address into a reference to the page's bytes.
//!
//! A guard borrows the page's [`Pages`] handle for as long as the mapping
//! lives: `&mut` for a writable view ([`Kmap`], [`KmapLocal`]), `&` for a
//! read-only one ([`KmapRef`], [`KmapLocalRef`]). So the borrow checker
//! forbids two writable views of one page, or a writable and a read-only
//! one, at any two addresses; the bytes are reachable only through the
//! guard, and the guard's drop unmaps (kunmap, or kunmap_local, which keeps
//! LIFO order by releasing an out-of-order entry until the entries above
//! it are gone).
//!
//! A kmap_local guard holds its CPU pinned (`get_cpu`) from map to drop,
//! as Linux's `migrate_disable`; it is neither `Send` nor `Sync`, so it
//! is unmapped on the thread (and CPU) that mapped it.
//!
//! Must never: build a reference to bytes that are not mapped, or outlive
//! the handle borrow that proves the frame is held.
//!
//! ```
//! use kmm_highmem::testing::TestMachine;
//! let m = TestMachine::new(1, 4, 32);
//! let hm = m.highmem();
//! let (mut a, mut b) = (m.alloc_highmem(), m.alloc_highmem());
//! hm.with_kmap_local(&mut a, |x| {
//!     hm.with_kmap_local(&mut b, |y| x[0] = y[0] + 1)
//! })??;
//! assert_eq!(hm.with_kmap_local(&mut a, |x| x[0])?, 1);
//! # Ok::<(), kmm_highmem::HighmemError>(())
//! ```
//!
//! The same page twice does not compile (two `&mut` borrows of `a`):
//!
//! ```compile_fail,E0499
//! use kmm_highmem::testing::TestMachine;
//! let m = TestMachine::new(1, 4, 32);
//! let hm = m.highmem();
//! let mut a = m.alloc_highmem();
//! hm.with_kmap_local(&mut a, |x| {
//!     hm.with_kmap_local(&mut a, |y| x[0] = y[0] + 1)
//! })??;
//! # Ok::<(), kmm_highmem::HighmemError>(())
//! ```

use crate::pkmap::Blocking;
use crate::{Highmem, HighmemError, LocalStack};
use core::marker::PhantomData;
use core::mem::ManuallyDrop;
use core::ops::{Deref, DerefMut};
use core::ptr::NonNull;
use kmm_api::{DirectMap, KernelPageTable, Pages, Pfn, PreemptControl, VirtAddr, PAGE_SIZE};

/// A page's bytes as this code reaches them.
type PageBytes = [u8; PAGE_SIZE];

/// A pkmap (or lowmem) mapping: kunmaps on drop.
struct PkmapInner<'h, T: KernelPageTable, P: PreemptControl, D: DirectMap> {
    hm: &'h Highmem<'h, T, P, D>,
    pfn: Pfn,
    addr: VirtAddr,
    bytes: NonNull<PageBytes>,
}

impl<T: KernelPageTable, P: PreemptControl, D: DirectMap> Drop for PkmapInner<'_, T, P, D> {
    fn drop(&mut self) {
        // SAFETY: this guard is the user its kmap counted, and its bytes
        // are no longer borrowed (we are dropping it).
        let _ = unsafe { self.hm.kunmap_pfn(self.pfn) };
    }
}

/// A kmap_local (or lowmem) mapping: kunmap_locals on drop.
struct LocalInner<'h, T: KernelPageTable, P: PreemptControl, D: DirectMap> {
    hm: &'h Highmem<'h, T, P, D>,
    addr: VirtAddr,
    bytes: NonNull<PageBytes>,
    /// The pinned CPU's stack entry; `None` for lowmem.
    pin: Option<LocalPin<'h>>,
}

/// Where a highmem kmap_local lives: the stack of the CPU the guard holds
/// pinned (kept as a reference, so the unmap does not index the stacks
/// again), that CPU's id, and the entry.
#[derive(Clone, Copy)]
pub(crate) struct LocalPin<'h> {
    pub(crate) stack: &'h LocalStack,
    pub(crate) cpu: usize,
    pub(crate) slot: usize,
}

impl<T: KernelPageTable, P: PreemptControl, D: DirectMap> LocalInner<'_, T, P, D> {
    /// Unmaps now, or gives the mapping back if it is not the top of its
    /// stack (`defer` false) or releases it to be popped later (`defer`).
    fn unmap(self, defer: bool) -> Result<(), (HighmemError, Self)> {
        let this = ManuallyDrop::new(self);
        if let Some(pin) = this.pin {
            // SAFETY: our CPU is pinned (by this guard's get_cpu), the
            // entry is this guard's, and its bytes are no longer borrowed.
            match unsafe { pin.stack.pop(&this.hm.table, pin.slot, defer) } {
                Ok(_) => this.hm.platform.put_cpu(pin.cpu),
                Err(e) => return Err((e, ManuallyDrop::into_inner(this))),
            }
        }
        Ok(())
    }
}

impl<T: KernelPageTable, P: PreemptControl, D: DirectMap> Drop for LocalInner<'_, T, P, D> {
    fn drop(&mut self) {
        if let Some(pin) = self.pin {
            // SAFETY: as in `unmap`; with `defer` an entry below the top
            // is released, never unmapped under the entries above it.
            let _ = unsafe { pin.stack.pop(&self.hm.table, pin.slot, true) };
            self.hm.platform.put_cpu(pin.cpu);
        }
    }
}

macro_rules! guard {
    ($(#[$doc:meta])* $name:ident, $inner:ident, $borrow:ty) => {
        $(#[$doc])*
        #[must_use = "dropping the guard unmaps the page at once"]
        pub struct $name<'h, 'p, T: KernelPageTable, P: PreemptControl, D: DirectMap> {
            inner: $inner<'h, T, P, D>,
            _page: PhantomData<$borrow>,
        }

        impl<T: KernelPageTable, P: PreemptControl, D: DirectMap> $name<'_, '_, T, P, D> {
            /// The virtual address the page is mapped at.
            pub fn addr(&self) -> VirtAddr {
                self.inner.addr
            }
        }

        impl<T: KernelPageTable, P: PreemptControl, D: DirectMap> Deref for $name<'_, '_, T, P, D> {
            type Target = [u8; PAGE_SIZE];
            #[inline]
            fn deref(&self) -> &PageBytes {
                // SAFETY: the page is mapped at `bytes` until the guard
                // drops, the caller holds the frame (the handle borrow),
                // and no writable view exists while this one is borrowed.
                unsafe { self.inner.bytes.as_ref() }
            }
        }

        impl<T: KernelPageTable, P: PreemptControl, D: DirectMap> core::fmt::Debug
            for $name<'_, '_, T, P, D>
        {
            fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
                f.debug_struct(stringify!($name)).field("addr", &self.inner.addr).finish()
            }
        }
    };
}

macro_rules! writable {
    ($name:ident) => {
        impl<T: KernelPageTable, P: PreemptControl, D: DirectMap> DerefMut
            for $name<'_, '_, T, P, D>
        {
            #[inline]
            fn deref_mut(&mut self) -> &mut PageBytes {
                // SAFETY: as `deref`, and the guard borrows the handle
                // mutably: no other view of the page exists from safe code.
                unsafe { self.inner.bytes.as_mut() }
            }
        }
    };
}

guard!(
    /// A writable pkmap mapping of a page (Linux `kmap`); kunmaps on drop.
    Kmap, PkmapInner, &'p mut Pages
);
writable!(Kmap);
guard!(
    /// A read-only pkmap mapping of a page; kunmaps on drop. Several may
    /// map one page at once (its count counts them).
    KmapRef, PkmapInner, &'p Pages
);
guard!(
    /// A writable kmap_local mapping (Linux `kmap_local_page`): this CPU
    /// stays pinned until the guard drops or [`Highmem::kunmap_local`].
    KmapLocal, LocalInner, &'p mut Pages
);
writable!(KmapLocal);
guard!(
    /// A read-only kmap_local mapping.
    KmapLocalRef, LocalInner, &'p Pages
);

impl<'a, T: KernelPageTable, P: PreemptControl, D: DirectMap> Highmem<'a, T, P, D> {
    /// The pointer through which this code reaches `addr`'s page.
    #[inline]
    fn bytes_at(&self, addr: VirtAddr) -> Option<NonNull<PageBytes>> {
        NonNull::new(self.direct.virt_to_ptr(addr).cast::<PageBytes>())
    }

    fn pkmap_guard(
        &self,
        pages: &Pages,
        index: usize,
        blocking: Blocking,
    ) -> Result<PkmapInner<'_, T, P, D>, HighmemError> {
        let pfn = self.frame(pages, index)?;
        // SAFETY: the caller's handle proves it holds the frame, borrowed
        // by the guard for the mapping's life; the guard's drop is the one
        // kunmap.
        let addr = unsafe { self.kmap_inner(pfn, blocking)? };
        let hm: &Highmem<'_, T, P, D> = self;
        let Some(bytes) = self.bytes_at(addr) else {
            // SAFETY: undoes the kmap just made.
            let _ = unsafe { self.kunmap_pfn(pfn) };
            return Err(HighmemError::PageTable(kmm_api::Error::BadVirtAddr {
                addr,
            }));
        };
        Ok(PkmapInner {
            hm,
            pfn,
            addr,
            bytes,
        })
    }

    /// Linux `kmap`: a writable mapping of page `index` of `pages` that
    /// any CPU may use, unmapped when the guard drops. Lowmem pages get
    /// their direct-map address; highmem pages a pkmap slot, sleeping (in
    /// [`kmm_api::Platform::wait_on`]) while every slot has users. Not for
    /// atomic context: use [`Highmem::kmap_try`] or kmap_local there.
    pub fn kmap<'p>(
        &self,
        pages: &'p mut Pages,
        index: usize,
    ) -> Result<Kmap<'_, 'p, T, P, D>, HighmemError> {
        Ok(Kmap {
            inner: self.pkmap_guard(pages, index, Blocking::MaySleep)?,
            _page: PhantomData,
        })
    }

    /// [`Highmem::kmap`] that never sleeps: [`HighmemError::PoolFull`] when
    /// every slot has users.
    pub fn kmap_try<'p>(
        &self,
        pages: &'p mut Pages,
        index: usize,
    ) -> Result<Kmap<'_, 'p, T, P, D>, HighmemError> {
        Ok(Kmap {
            inner: self.pkmap_guard(pages, index, Blocking::Atomic)?,
            _page: PhantomData,
        })
    }

    /// A read-only [`Highmem::kmap`]: several may map one page at once.
    pub fn kmap_ref<'p>(
        &self,
        pages: &'p Pages,
        index: usize,
    ) -> Result<KmapRef<'_, 'p, T, P, D>, HighmemError> {
        Ok(KmapRef {
            inner: self.pkmap_guard(pages, index, Blocking::MaySleep)?,
            _page: PhantomData,
        })
    }

    /// A read-only [`Highmem::kmap_try`].
    pub fn kmap_ref_try<'p>(
        &self,
        pages: &'p Pages,
        index: usize,
    ) -> Result<KmapRef<'_, 'p, T, P, D>, HighmemError> {
        Ok(KmapRef {
            inner: self.pkmap_guard(pages, index, Blocking::Atomic)?,
            _page: PhantomData,
        })
    }

    /// Linux `kunmap`: ends a writable kmap now and reports what the pool
    /// said (dropping the guard does the same, silently).
    pub fn kunmap(&self, map: Kmap<'_, '_, T, P, D>) -> Result<(), HighmemError> {
        let inner = ManuallyDrop::new(map.inner);
        // SAFETY: the guard was the user its kmap counted, and is gone.
        unsafe { self.kunmap_pfn(inner.pfn) }
    }

    fn local_guard(
        &self,
        pages: &Pages,
        index: usize,
    ) -> Result<LocalInner<'_, T, P, D>, HighmemError> {
        let pfn = self.frame(pages, index)?;
        let hm: &Highmem<'_, T, P, D> = self;
        let (addr, pin) = match self.direct.pfn_to_virt(pfn) {
            Some(addr) => (addr, None),
            None => {
                // SAFETY: the caller's handle proves it holds the frame,
                // borrowed by the guard, whose drop is the one unmap.
                let (pin, addr) = unsafe { self.local_push(pfn)? };
                (addr, Some(pin))
            }
        };
        let Some(bytes) = self.bytes_at(addr) else {
            let dangling = LocalInner {
                hm,
                addr,
                bytes: NonNull::dangling(),
                pin,
            };
            drop(dangling);
            return Err(HighmemError::PageTable(kmm_api::Error::BadVirtAddr {
                addr,
            }));
        };
        Ok(LocalInner {
            hm,
            addr,
            bytes,
            pin,
        })
    }

    /// Linux `kmap_local_page`: a writable mapping of page `index` of
    /// `pages` valid on this thread, at this CPU's next fixmap slot
    /// (lowmem: the direct-map address, no slot). Never sleeps; any
    /// context. The CPU stays pinned until the guard drops. Guards must
    /// be dropped in reverse order of mapping: one dropped early stays
    /// mapped (unused) until those mapped after it are gone.
    pub fn kmap_local_page<'p>(
        &self,
        pages: &'p mut Pages,
        index: usize,
    ) -> Result<KmapLocal<'_, 'p, T, P, D>, HighmemError> {
        Ok(KmapLocal {
            inner: self.local_guard(pages, index)?,
            _page: PhantomData,
        })
    }

    /// A read-only [`Highmem::kmap_local_page`].
    pub fn kmap_local_page_ref<'p>(
        &self,
        pages: &'p Pages,
        index: usize,
    ) -> Result<KmapLocalRef<'_, 'p, T, P, D>, HighmemError> {
        Ok(KmapLocalRef {
            inner: self.local_guard(pages, index)?,
            _page: PhantomData,
        })
    }

    /// Linux `kunmap_local`: unmaps a kmap_local now. A guard that is not
    /// the most recent mapping of its CPU is refused with
    /// [`HighmemError::NotTopOfStack`] and handed back, still mapped.
    #[allow(clippy::result_large_err)] // hands the guard back
    pub fn kunmap_local<'h, 'p>(
        &self,
        map: KmapLocal<'h, 'p, T, P, D>,
    ) -> Result<(), (HighmemError, KmapLocal<'h, 'p, T, P, D>)> {
        map.inner.unmap(false).map_err(|(e, inner)| {
            (
                e,
                KmapLocal {
                    inner,
                    _page: PhantomData,
                },
            )
        })
    }

    /// Linux `kmap_atomic` (deprecated there): [`Highmem::kmap_local_page`].
    /// The mapping pins the CPU; nothing in it may sleep.
    pub fn kmap_atomic<'p>(
        &self,
        pages: &'p mut Pages,
        index: usize,
    ) -> Result<KmapLocal<'_, 'p, T, P, D>, HighmemError> {
        self.kmap_local_page(pages, index)
    }

    /// Linux `kunmap_atomic`: [`Highmem::kunmap_local`].
    #[allow(clippy::result_large_err)] // hands the guard back
    pub fn kunmap_atomic<'h, 'p>(
        &self,
        map: KmapLocal<'h, 'p, T, P, D>,
    ) -> Result<(), (HighmemError, KmapLocal<'h, 'p, T, P, D>)> {
        self.kunmap_local(map)
    }

    /// Runs `f` on the bytes of the first page of `pages`, mapped with
    /// kmap_local for the call and unmapped after it (also if `f`
    /// unwinds). Nested calls unmap in order by construction.
    pub fn with_kmap_local<R>(
        &self,
        pages: &mut Pages,
        f: impl FnOnce(&mut [u8; PAGE_SIZE]) -> R,
    ) -> Result<R, HighmemError> {
        let mut map = self.kmap_local_page(pages, 0)?;
        Ok(f(&mut map))
    }

    /// Runs `f` on the bytes of the first page of `pages`, read-only.
    pub fn with_kmap_local_ref<R>(
        &self,
        pages: &Pages,
        f: impl FnOnce(&[u8; PAGE_SIZE]) -> R,
    ) -> Result<R, HighmemError> {
        let map = self.kmap_local_page_ref(pages, 0)?;
        Ok(f(&map))
    }
}
