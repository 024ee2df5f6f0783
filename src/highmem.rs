//! The kmap pool and kmap_local on the [`MemoryManager`], by Linux name:
//! `kmap` / `kunmap`, `kmap_local_page` / `kunmap_local`, the scoped
//! `with_kmap_local`, and the page helpers (`clear_highpage`,
//! `memcpy_to_page`, ...). Each forwards to the manager's `kmm-highmem`
//! layer (see it for the rules: pkmap counts, one flush per wrap, strict
//! LIFO per CPU). A machine without a pkmap range (the 64-bit preset) maps
//! every page in the direct map; the calls here then answer with
//! [`kmm_highmem::HighmemError::BadConfig`].
//!
//! Owns no state. The safe forms take the frame's [`Pages`] handle, `&mut`
//! for a writable mapping: safe code cannot hold two writable views of a
//! page.

use crate::mm::KernelTable;
use crate::x86::Mmu;
use crate::{Error, MemoryManager};
use kmm_api::{DirectMap, Pages, PreemptControl, PAGE_SIZE};
use kmm_highmem::{HighmemError, Kmap, KmapLocal};

/// A `kmap` mapping of the manager's (see [`MemoryManager::kmap`]).
pub type KmapOf<'h, 'p, P, D, M> = Kmap<'h, 'p, &'static KernelTable<P, D, M>, &'static P, D>;

/// A `kmap_local_page` mapping of the manager's.
pub type KmapLocalOf<'h, 'p, P, D, M> =
    KmapLocal<'h, 'p, &'static KernelTable<P, D, M>, &'static P, D>;

impl<P: PreemptControl + 'static, D: DirectMap + 'static, M: Mmu + 'static> MemoryManager<P, D, M> {
    fn km(&self) -> Result<&crate::mm::KernelHighmem<P, D, M>, Error> {
        self.highmem()
            .ok_or(Error::Highmem(HighmemError::BadConfig {
                reason: "this machine has no pkmap range",
            }))
    }

    /// Linux `kmap`: a mapping of page `index` of `pages` any CPU may use
    /// until the guard drops (or [`MemoryManager::kunmap`]): the direct map
    /// for lowmem, a pkmap slot for highmem (sleeping while all are busy).
    ///
    /// ```
    /// # #[cfg(feature = "sim")] {
    /// let mm = kmm::MemoryManager::sim(kmm::sim::MachineConfig::default())?;
    /// let mut page = mm.alloc_page(kmm::GFP_HIGHUSER)?;
    /// let pfn = page.pfn();
    /// assert_eq!(mm.page_address(pfn), None, "highmem: no direct-map address");
    /// let mut map = mm.kmap(&mut page, 0)?;
    /// map[100] = 42; // the guard derefs to the page's bytes
    /// assert_eq!(mm.page_address(pfn), Some(map.addr()), "while kmapped");
    /// drop(map);
    /// assert_eq!(mm.with_kmap_local(&mut page, |bytes| bytes[100])?, 42);
    /// mm.__free_page(page)?;
    /// # }
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn kmap<'h, 'p>(
        &'h self,
        pages: &'p mut Pages,
        index: usize,
    ) -> Result<KmapOf<'h, 'p, P, D, M>, Error> {
        Ok(self.km()?.kmap(pages, index)?)
    }

    /// Linux `kmap` from a context that may not sleep: refused with
    /// [`HighmemError::PoolFull`] when every slot is busy.
    pub fn kmap_try<'h, 'p>(
        &'h self,
        pages: &'p mut Pages,
        index: usize,
    ) -> Result<KmapOf<'h, 'p, P, D, M>, Error> {
        Ok(self.km()?.kmap_try(pages, index)?)
    }

    /// Linux `kunmap`: ends a `kmap` now (dropping the guard does too).
    pub fn kunmap(&self, map: KmapOf<'_, '_, P, D, M>) -> Result<(), Error> {
        Ok(self.km()?.kunmap(map)?)
    }

    /// Linux `kmap_local_page`: a mapping of page `index` of `pages` for
    /// this thread, in this CPU's next fixmap slot; never sleeps; the CPU
    /// stays pinned until the guard drops. Unmap in reverse order.
    pub fn kmap_local_page<'h, 'p>(
        &'h self,
        pages: &'p mut Pages,
        index: usize,
    ) -> Result<KmapLocalOf<'h, 'p, P, D, M>, Error> {
        Ok(self.km()?.kmap_local_page(pages, index)?)
    }

    /// Linux `kunmap_local`: refused, the guard handed back still mapped,
    /// unless it is this CPU's most recent kmap_local.
    #[allow(clippy::result_large_err)] // hands the guard back
    pub fn kunmap_local<'h, 'p>(
        &'h self,
        map: KmapLocalOf<'h, 'p, P, D, M>,
    ) -> Result<(), (Error, KmapLocalOf<'h, 'p, P, D, M>)> {
        match self.highmem() {
            Some(km) => km.kunmap_local(map).map_err(|(e, map)| (e.into(), map)),
            // Only a manager with a pool makes guards; nothing to undo.
            None => {
                drop(map);
                Ok(())
            }
        }
    }

    /// Runs `f` on the bytes of the first page of `pages`, mapped with
    /// kmap_local for the call (the scoped form that cannot be misused).
    pub fn with_kmap_local<R>(
        &self,
        pages: &mut Pages,
        f: impl FnOnce(&mut [u8; PAGE_SIZE]) -> R,
    ) -> Result<R, Error> {
        Ok(self.km()?.with_kmap_local(pages, f)?)
    }

    /// Linux `clear_highpage`.
    pub fn clear_highpage(&self, page: &mut Pages) -> Result<(), Error> {
        Ok(self.km()?.clear_highpage(page)?)
    }

    /// Linux `copy_highpage(to, from)`.
    pub fn copy_highpage(&self, to: &mut Pages, from: &Pages) -> Result<(), Error> {
        Ok(self.km()?.copy_highpage(to, from)?)
    }

    /// Linux `memcpy_to_page`: `offset + from.len() > PAGE_SIZE` is an error.
    pub fn memcpy_to_page(
        &self,
        page: &mut Pages,
        offset: usize,
        from: &[u8],
    ) -> Result<(), Error> {
        Ok(self.km()?.memcpy_to_page(page, offset, from)?)
    }

    /// Linux `memcpy_from_page`, range-checked likewise.
    pub fn memcpy_from_page(
        &self,
        to: &mut [u8],
        page: &Pages,
        offset: usize,
    ) -> Result<(), Error> {
        Ok(self.km()?.memcpy_from_page(to, page, offset)?)
    }

    /// Linux `memset_page`, range-checked likewise.
    pub fn memset_page(
        &self,
        page: &mut Pages,
        offset: usize,
        val: u8,
        len: usize,
    ) -> Result<(), Error> {
        Ok(self.km()?.memset_page(page, offset, val, len)?)
    }

    /// Linux `memzero_page`, range-checked likewise.
    pub fn memzero_page(&self, page: &mut Pages, offset: usize, len: usize) -> Result<(), Error> {
        Ok(self.km()?.memzero_page(page, offset, len)?)
    }
}
