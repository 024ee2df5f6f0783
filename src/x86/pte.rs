//! The bits of a 32-bit x86 page-directory or page-table entry, and their
//! translation to and from [`PageProt`]. Pure bit arithmetic; never touches
//! memory.

use bitflags::bitflags;
use kmm_api::{PageProt, Pfn, PAGE_SHIFT};

/// Entries in the page directory (Linux `PTRS_PER_PGD` without PAE).
pub const PTRS_PER_PGD: usize = 1024;
/// Entries in a PTE page (Linux `PTRS_PER_PTE` without PAE).
pub const PTRS_PER_PTE: usize = 1024;
/// Address bits covered by one PTE page (Linux `PGDIR_SHIFT`).
pub(crate) const PGDIR_SHIFT: u32 = 22;
/// Frames a 32-bit entry can name: 20 bits of frame number.
pub(crate) const MAX_PTE_PFN: usize = 1 << (32 - PAGE_SHIFT);

bitflags! {
    /// The low bits of an entry, with Linux's `_PAGE_*` meanings.
    #[derive(Clone, Copy, PartialEq, Eq, Debug)]
    pub struct PteFlags: u32 {
        /// `_PAGE_PRESENT`: the entry translates.
        const PRESENT = 1 << 0;
        /// `_PAGE_RW`: writable.
        const RW = 1 << 1;
        /// `_PAGE_USER`: reachable from ring 3.
        const USER = 1 << 2;
        /// `_PAGE_PWT`: write-through caching.
        const PWT = 1 << 3;
        /// `_PAGE_PCD`: caching disabled.
        const PCD = 1 << 4;
        /// `_PAGE_ACCESSED`: set by the MMU on use.
        const ACCESSED = 1 << 5;
        /// `_PAGE_DIRTY`: set by the MMU on write.
        const DIRTY = 1 << 6;
        /// `_PAGE_PSE` in a directory entry: a 4 MiB page.
        const PSE = 1 << 7;
        /// `_PAGE_GLOBAL`: survives CR3 reloads.
        const GLOBAL = 1 << 8;
    }
}

/// The frame-number bits of an entry.
const FRAME_MASK: u32 = !((1 << PAGE_SHIFT) - 1);

impl PteFlags {
    /// Linux `_KERNPG_TABLE`: how a directory entry points at a kernel PTE
    /// page. Accessed and dirty are preset so the MMU never writes back.
    pub const KERNPG_TABLE: PteFlags = PteFlags::PRESENT
        .union(PteFlags::RW)
        .union(PteFlags::ACCESSED)
        .union(PteFlags::DIRTY);

    /// The entry bits for a present page with `prot`. Without PAE there is
    /// no NX bit, so [`PageProt::EXEC`] needs no bit: every page executes.
    /// The cache controls map one to one: [`PageProt::NOCACHE`] is `PCD`,
    /// [`PageProt::WRITE_THROUGH`] is `PWT`.
    pub fn from_prot(prot: PageProt) -> PteFlags {
        let mut f = PteFlags::PRESENT | PteFlags::ACCESSED | PteFlags::DIRTY;
        f.set(PteFlags::RW, prot.contains(PageProt::WRITE));
        f.set(PteFlags::USER, prot.contains(PageProt::USER));
        f.set(PteFlags::PCD, prot.contains(PageProt::NOCACHE));
        f.set(PteFlags::PWT, prot.contains(PageProt::WRITE_THROUGH));
        f.set(PteFlags::GLOBAL, prot.contains(PageProt::GLOBAL));
        f
    }

    /// The protection an entry grants; always includes `EXEC` (no NX bit).
    pub fn to_prot(self) -> PageProt {
        let mut p = PageProt::EXEC;
        p.set(PageProt::WRITE, self.contains(PteFlags::RW));
        p.set(PageProt::USER, self.contains(PteFlags::USER));
        p.set(PageProt::NOCACHE, self.contains(PteFlags::PCD));
        p.set(PageProt::WRITE_THROUGH, self.contains(PteFlags::PWT));
        p.set(PageProt::GLOBAL, self.contains(PteFlags::GLOBAL));
        p
    }
}

/// One raw entry: frame number in bits 31..12, flags below.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) struct Pte(pub(crate) u32);

impl Pte {
    /// An entry mapping `pfn`, which must be below [`MAX_PTE_PFN`].
    pub(crate) fn new(pfn: Pfn, flags: PteFlags) -> Pte {
        debug_assert!(pfn.as_usize() < MAX_PTE_PFN);
        Pte(((pfn.as_usize() as u32) << PAGE_SHIFT) | flags.bits())
    }
    pub(crate) fn is_present(self) -> bool {
        self.flags().contains(PteFlags::PRESENT)
    }
    pub(crate) fn pfn(self) -> Pfn {
        Pfn::new(((self.0 & FRAME_MASK) >> PAGE_SHIFT) as usize)
    }
    pub(crate) fn flags(self) -> PteFlags {
        PteFlags::from_bits_truncate(self.0 & !FRAME_MASK)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entry_bits_match_the_x86_manual() {
        assert_eq!(PteFlags::PRESENT.bits(), 0x001);
        assert_eq!(PteFlags::RW.bits(), 0x002);
        assert_eq!(PteFlags::USER.bits(), 0x004);
        assert_eq!(PteFlags::PWT.bits(), 0x008);
        assert_eq!(PteFlags::PCD.bits(), 0x010);
        assert_eq!(PteFlags::PSE.bits(), 0x080);
        assert_eq!(PteFlags::GLOBAL.bits(), 0x100);
        assert_eq!(PteFlags::KERNPG_TABLE.bits(), 0x063);
    }

    #[test]
    fn page_kernel_encodes_as_linux_does_and_round_trips() {
        let f = PteFlags::from_prot(PageProt::KERNEL);
        assert_eq!(f.bits(), 0x163);
        assert_eq!(f.to_prot(), PageProt::KERNEL | PageProt::EXEC);
        let pte = Pte::new(Pfn::new(0xfffff), f);
        assert_eq!(pte.0, 0xffff_f163);
        assert_eq!(pte.pfn(), Pfn::new(0xfffff));
        assert!(pte.is_present());
        assert!(!Pte(0).is_present());
    }

    #[test]
    fn cache_controls_set_pcd_and_pwt_and_round_trip() {
        for (prot, bits) in [
            (PageProt::KERNEL, 0x000),
            (PageProt::KERNEL_UC_MINUS, 0x010),
            (PageProt::KERNEL_WC, 0x008),
            (PageProt::KERNEL_NOCACHE, 0x018),
        ] {
            let f = PteFlags::from_prot(prot);
            assert_eq!(f.bits() & 0x018, bits, "{prot:?}");
            assert_eq!(f.to_prot(), prot | PageProt::EXEC, "{prot:?}");
            let pte = Pte::new(Pfn::new(0xfebc0), f);
            assert_eq!(pte.flags().to_prot(), prot | PageProt::EXEC);
            assert_eq!(pte.pfn(), Pfn::new(0xfebc0));
        }
    }
}
