//! Page protections, independent of any page-table format; each page-table
//! implementation translates them to its own bits.
//!
//! Caching: [`PageProt::NOCACHE`] and [`PageProt::WRITE_THROUGH`] are the
//! two x86 cache-control bits, `_PAGE_PCD` and `_PAGE_PWT`; together they
//! select the memory type as x86 does (with the PAT as Linux programs it:
//! neither = write-back, PWT = write-combining (write-through without a
//! PAT), PCD = UC-, both = UC). A format without such bits ignores them.

use bitflags::bitflags;

bitflags! {
    /// What a mapping allows. Readable is implied by any mapping.
    #[derive(Clone, Copy, PartialEq, Eq, Hash, Debug, Default)]
    pub struct PageProt: u8 {
        /// Writable.
        const WRITE = 1 << 0;
        /// Executable (honoured only where the format has an NX bit).
        const EXEC = 1 << 1;
        /// Reachable from user mode.
        const USER = 1 << 2;
        /// Caching disabled (device memory, `ioremap`): the x86 `_PAGE_PCD`
        /// bit (bit 4 of an entry).
        const NOCACHE = 1 << 3;
        /// Global: kept in the TLB across address-space switches.
        const GLOBAL = 1 << 4;
        /// Write-through: the x86 `_PAGE_PWT` bit (bit 3 of an entry).
        /// With [`PageProt::NOCACHE`] it makes the page strongly uncached
        /// (UC); alone, under the PAT as Linux programs it, write-combining.
        const WRITE_THROUGH = 1 << 5;
    }
}

impl PageProt {
    /// Linux `PAGE_KERNEL`: kernel read/write data.
    pub const KERNEL: PageProt = PageProt::WRITE.union(PageProt::GLOBAL);
    /// Linux `PAGE_KERNEL_RO`.
    pub const KERNEL_RO: PageProt = PageProt::GLOBAL;
    /// Linux `PAGE_KERNEL_EXEC`.
    pub const KERNEL_EXEC: PageProt = PageProt::KERNEL.union(PageProt::EXEC);
    /// Linux `PAGE_KERNEL_NOCACHE`: strongly uncached (UC), `PCD | PWT` on
    /// x86 (`ioremap_uc`, and the classic meaning of `ioremap_nocache`).
    pub const KERNEL_NOCACHE: PageProt = PageProt::KERNEL
        .union(PageProt::NOCACHE)
        .union(PageProt::WRITE_THROUGH);
    /// Uncached-minus (UC-, Linux `_PAGE_CACHE_MODE_UC_MINUS`), `PCD` alone
    /// on x86: the memory type x86 `ioremap` maps with (unlike UC, a
    /// write-combining MTRR may still apply).
    pub const KERNEL_UC_MINUS: PageProt = PageProt::KERNEL.union(PageProt::NOCACHE);
    /// Linux `PAGE_KERNEL` with `_PAGE_CACHE_MODE_WC` (`ioremap_wc`): `PWT`
    /// alone on x86, write-combining under the PAT as Linux programs it.
    pub const KERNEL_WC: PageProt = PageProt::KERNEL.union(PageProt::WRITE_THROUGH);
    /// User read-only.
    pub const USER_RO: PageProt = PageProt::USER;
    /// User read/write.
    pub const USER_RW: PageProt = PageProt::USER.union(PageProt::WRITE);
}
