//! The physical memory map of a PC as the BIOS e820 call reports it, for
//! machines built from a RAM size alone. Owns no memory; never guesses a
//! region it was not given.
//!
//! ```text
//! 0x000000 - 0x09ffff  usable        conventional memory (640 KiB)
//! 0x0a0000 - 0x0fffff  reserved      VGA window and BIOS ROMs
//! 0x100000 - +image    kernel image  loaded at 1 MiB
//! +image   - RAM end   usable
//! 0xfeb00000 - 0xfebfffff  reserved  device window (PCI MMIO), see below
//! ```
//!
//! The device window is where a PC's firmware places PCI devices'
//! memory-mapped registers (BARs), in the hole below the I/O APIC at
//! `0xfec0_0000`: physical addresses that are not RAM, which a driver
//! reaches only through `ioremap`. A PC has the hole whatever its RAM; a
//! machine built here has RAM only below it, so [`pc_device_window`] lists
//! the window only when RAM ends at or below its base (larger RAM would
//! have to be remapped above 4 GiB, which these machines do not model).

use kmm_api::{Error, MemoryRegion, PhysAddr, RegionKind, PAGE_SIZE};

/// End of conventional memory (640 KiB).
pub const CONVENTIONAL_END: u64 = 640 << 10;
/// Where the kernel image is loaded (1 MiB, above the BIOS area).
pub const KERNEL_LOAD_ADDR: u64 = 1 << 20;
/// The default size of the kernel image a simulated machine reserves.
pub const DEFAULT_KERNEL_IMAGE_BYTES: u64 = 4 << 20;

/// First byte of the device window: a PCI MMIO hole just below the I/O
/// APIC (`0xfec0_0000`), so Linux's `ioremap(0xfebc_0123, 16)` example
/// lands in it.
pub const DEVICE_WINDOW_BASE: u64 = 0xfeb0_0000;
/// Size of the device window (1 MiB).
pub const DEVICE_WINDOW_BYTES: u64 = 1 << 20;

/// The device window of a PC with `ram_bytes` of RAM, as a reserved e820
/// entry: `[DEVICE_WINDOW_BASE, + DEVICE_WINDOW_BYTES)`, or `None` when
/// RAM reaches past its base.
///
/// ```
/// use kmm::e820::{pc_device_window, DEVICE_WINDOW_BASE};
/// use kmm_api::RegionKind;
/// let w = pc_device_window(2 << 30).unwrap();
/// assert_eq!((w.start.as_u64(), w.kind), (DEVICE_WINDOW_BASE, RegionKind::Reserved));
/// assert_eq!(pc_device_window(4 << 30), None);
/// ```
pub fn pc_device_window(ram_bytes: u64) -> Option<MemoryRegion> {
    (ram_bytes <= DEVICE_WINDOW_BASE).then_some(MemoryRegion::new(
        DEVICE_WINDOW_BASE,
        DEVICE_WINDOW_BASE + DEVICE_WINDOW_BYTES,
        RegionKind::Reserved,
    ))
}

/// The e820 map of a PC with `ram_bytes` of RAM and a kernel image of
/// `image_bytes` at 1 MiB. RAM must extend at least one page past the image
/// (else [`Error::BadPhysAddr`] naming the end of RAM).
///
/// ```
/// use kmm::e820::pc_memory_map;
/// use kmm_api::RegionKind;
/// let map = pc_memory_map(64 << 20, 4 << 20)?;
/// assert_eq!(map[2].kind, RegionKind::KernelImage);
/// assert_eq!(map[3].end.as_u64(), 64 << 20);
/// # Ok::<(), kmm_api::Error>(())
/// ```
pub fn pc_memory_map(ram_bytes: u64, image_bytes: u64) -> Result<[MemoryRegion; 4], Error> {
    let image_end = KERNEL_LOAD_ADDR
        .checked_add(image_bytes)
        .and_then(|e| PhysAddr::new(e).align_up(PAGE_SIZE as u64))
        .ok_or(Error::BadPhysAddr {
            addr: PhysAddr::new(ram_bytes),
        })?;
    if ram_bytes < image_end.as_u64() + PAGE_SIZE as u64 {
        return Err(Error::BadPhysAddr {
            addr: PhysAddr::new(ram_bytes),
        });
    }
    Ok([
        MemoryRegion::new(0, CONVENTIONAL_END, RegionKind::Usable),
        MemoryRegion::new(CONVENTIONAL_END, KERNEL_LOAD_ADDR, RegionKind::Reserved),
        MemoryRegion::new(
            KERNEL_LOAD_ADDR,
            image_end.as_u64(),
            RegionKind::KernelImage,
        ),
        MemoryRegion::new(image_end.as_u64(), ram_bytes, RegionKind::Usable),
    ])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn map_covers_ram_without_gaps_and_reserves_the_bios_hole() {
        let map = pc_memory_map(2 << 30, DEFAULT_KERNEL_IMAGE_BYTES).unwrap();
        assert_eq!(map[0].start.as_u64(), 0);
        for pair in map.windows(2) {
            assert_eq!(pair[0].end, pair[1].start);
        }
        assert_eq!(map[1].kind, RegionKind::Reserved);
        assert_eq!(map[1].len(), 384 << 10);
        assert_eq!(map[3].end.as_u64(), 2 << 30);
    }

    #[test]
    fn the_device_window_is_a_reserved_hole_below_the_io_apic_above_ram() {
        let w = pc_device_window(2 << 30).unwrap();
        assert_eq!(w.start.as_u64(), 0xfeb0_0000);
        assert_eq!(w.end.as_u64(), 0xfec0_0000);
        assert_eq!(w.kind, RegionKind::Reserved);
        assert!(w.start.as_u64() <= 0xfebc_0123 && 0xfebc_0123 + 16 <= w.end.as_u64());
        assert!(pc_device_window(DEVICE_WINDOW_BASE).is_some());
        assert_eq!(
            pc_device_window(DEVICE_WINDOW_BASE + PAGE_SIZE as u64),
            None
        );
    }

    #[test]
    fn ram_too_small_for_the_image_is_refused() {
        assert!(pc_memory_map(5 << 20, 4 << 20).is_err());
        assert!(pc_memory_map(u64::MAX, u64::MAX).is_err());
    }
}
