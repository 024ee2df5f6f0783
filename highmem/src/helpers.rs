//! The byte helpers of `include/linux/highmem.h`, each over kmap_local
//! (so usable from any context, never sleeping), on the first page of the
//! handle given. Ranges are checked: `offset + len > PAGE_SIZE` is
//! [`HighmemError::OutOfRange`] and nothing is touched. Owns no state.

use crate::{Highmem, HighmemError};
use kmm_api::{DirectMap, KernelPageTable, Pages, PreemptControl, PAGE_SIZE};

/// `offset..offset + len` as a range inside a page.
fn range(offset: usize, len: usize) -> Result<core::ops::Range<usize>, HighmemError> {
    match offset.checked_add(len) {
        Some(end) if end <= PAGE_SIZE => Ok(offset..end),
        _ => Err(HighmemError::OutOfRange { offset, len }),
    }
}

impl<T: KernelPageTable, P: PreemptControl, D: DirectMap> Highmem<'_, T, P, D> {
    /// Linux `clear_highpage`: zeroes the page.
    pub fn clear_highpage(&self, page: &mut Pages) -> Result<(), HighmemError> {
        self.with_kmap_local(page, |bytes| bytes.fill(0))
    }

    /// Linux `copy_highpage(to, from)`: copies a whole page.
    pub fn copy_highpage(&self, to: &mut Pages, from: &Pages) -> Result<(), HighmemError> {
        let src = self.kmap_local_page_ref(from, 0)?;
        let mut dst = self.kmap_local_page(to, 0)?;
        dst.copy_from_slice(&src[..]);
        drop(dst);
        drop(src);
        Ok(())
    }

    /// Linux `memcpy_page`: `len` bytes from `src` at `src_off` to `dst` at
    /// `dst_off`.
    pub fn memcpy_page(
        &self,
        dst: &mut Pages,
        dst_off: usize,
        src: &Pages,
        src_off: usize,
        len: usize,
    ) -> Result<(), HighmemError> {
        let (to, from) = (range(dst_off, len)?, range(src_off, len)?);
        let s = self.kmap_local_page_ref(src, 0)?;
        let mut d = self.kmap_local_page(dst, 0)?;
        d[to].copy_from_slice(&s[from]);
        drop(d);
        drop(s);
        Ok(())
    }

    /// Linux `memcpy_to_page`: `from` into the page at `offset`.
    pub fn memcpy_to_page(
        &self,
        page: &mut Pages,
        offset: usize,
        from: &[u8],
    ) -> Result<(), HighmemError> {
        let to = range(offset, from.len())?;
        self.with_kmap_local(page, |bytes| bytes[to].copy_from_slice(from))
    }

    /// Linux `memcpy_from_page`: the page's bytes at `offset` into `to`.
    pub fn memcpy_from_page(
        &self,
        to: &mut [u8],
        page: &Pages,
        offset: usize,
    ) -> Result<(), HighmemError> {
        let from = range(offset, to.len())?;
        self.with_kmap_local_ref(page, |bytes| to.copy_from_slice(&bytes[from]))
    }

    /// Linux `memset_page`: `len` bytes of `val` at `offset`.
    pub fn memset_page(
        &self,
        page: &mut Pages,
        offset: usize,
        val: u8,
        len: usize,
    ) -> Result<(), HighmemError> {
        let r = range(offset, len)?;
        self.with_kmap_local(page, |bytes| bytes[r].fill(val))
    }

    /// Linux `memzero_page`: `len` zero bytes at `offset`.
    pub fn memzero_page(
        &self,
        page: &mut Pages,
        offset: usize,
        len: usize,
    ) -> Result<(), HighmemError> {
        self.memset_page(page, offset, 0, len)
    }
}
