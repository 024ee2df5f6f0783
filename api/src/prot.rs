//! Page protections, independent of any page-table format; each page-table
//! implementation translates them to its own bits.

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
        /// Uncached (device memory, `ioremap`).
        const NOCACHE = 1 << 3;
        /// Global: kept in the TLB across address-space switches.
        const GLOBAL = 1 << 4;
    }
}

impl PageProt {
    /// Linux `PAGE_KERNEL`: kernel read/write data.
    pub const KERNEL: PageProt = PageProt::WRITE.union(PageProt::GLOBAL);
    /// Linux `PAGE_KERNEL_RO`.
    pub const KERNEL_RO: PageProt = PageProt::GLOBAL;
    /// Linux `PAGE_KERNEL_EXEC`.
    pub const KERNEL_EXEC: PageProt = PageProt::KERNEL.union(PageProt::EXEC);
    /// Linux `PAGE_KERNEL_NOCACHE` (`ioremap`).
    pub const KERNEL_NOCACHE: PageProt = PageProt::KERNEL.union(PageProt::NOCACHE);
    /// User read-only.
    pub const USER_RO: PageProt = PageProt::USER;
    /// User read/write.
    pub const USER_RW: PageProt = PageProt::USER.union(PageProt::WRITE);
}
