//! The host side of the simulated machine: RAM as a memory file, the
//! device window as a second memory file, and the machine's 4 GiB virtual
//! address space as one reserved host window. Owns all three for its
//! lifetime; every machine mapping is an `mmap` of one of the files at
//! `window + virtual address`: RAM pages from the RAM file at their
//! physical address, device pages from the device file at their offset in
//! the window. The only `unsafe` of the simulator lives here.
//!
//! Never maps outside the window (every address is checked against 4 GiB)
//! or past the end of either file (mapped pages beyond it would raise
//! SIGBUS): a physical range is resolved to exactly one file or refused.

use kmm_api::{Error, PhysAddr, VirtAddr, PAGE_SIZE};
use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::fs::FileExt;

/// The machine's virtual address space: 32 bits.
pub(super) const WINDOW_BYTES: usize = 1 << 32;

/// A RAM file, an optional device file, and the reserved window they are
/// mapped into.
#[derive(Debug)]
pub(super) struct HostMemory {
    ram: File,
    ram_bytes: u64,
    device: Option<Device>,
    window: *mut u8,
}

/// The memory behind the device window: `bytes` bytes of a file standing
/// for the registers and buffers of devices at `[base, base + bytes)`.
#[derive(Debug)]
struct Device {
    file: File,
    base: PhysAddr,
    bytes: u64,
}

impl Device {
    /// The file offset of `[phys, phys + len)`, if the window holds all of it.
    fn offset(&self, phys: PhysAddr, len: u64) -> Option<u64> {
        let offset = phys.as_u64().checked_sub(self.base.as_u64())?;
        (offset.checked_add(len)? <= self.bytes).then_some(offset)
    }
}

/// A zero-filled memory file of `bytes`, named `name` in `/proc/self/maps`.
fn memory_file(name: &core::ffi::CStr, bytes: u64) -> io::Result<File> {
    // SAFETY: the name is a NUL-terminated string; the call has no other
    // memory effects.
    let fd = unsafe { libc::memfd_create(name.as_ptr(), libc::MFD_CLOEXEC) };
    if fd < 0 {
        return Err(os_error("memfd_create"));
    }
    // SAFETY: `fd` is the descriptor just created, open and owned by no one
    // else: the `File` becomes its one owner.
    let file = File::from(unsafe { OwnedFd::from_raw_fd(fd) });
    file.set_len(bytes)?;
    Ok(file)
}

// SAFETY: the fields are files and the address of a mapping; all may be
// used from any thread (the kernel serialises mmap calls).
unsafe impl Send for HostMemory {}
// SAFETY: as above; no method hands out references into the window.
unsafe impl Sync for HostMemory {}

fn os_error(what: &str) -> io::Error {
    let e = io::Error::last_os_error();
    io::Error::new(e.kind(), format!("{what}: {e}"))
}

impl HostMemory {
    /// A zero-filled RAM file of `ram_bytes`, a zero-filled device file
    /// for `device` (`(base, bytes)`, if any), and a `PROT_NONE` window.
    pub(super) fn new(ram_bytes: u64, device: Option<(PhysAddr, u64)>) -> io::Result<Self> {
        libc::off_t::try_from(ram_bytes)
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "RAM size"))?;
        let device = match device {
            Some((base, bytes)) => Some(Device {
                file: memory_file(c"kmm-device", bytes)?,
                base,
                bytes,
            }),
            None => None,
        };
        let ram = memory_file(c"kmm-ram", ram_bytes)?;
        // SAFETY: a fresh anonymous PROT_NONE reservation at an address of
        // the kernel's choosing; it touches no existing mapping.
        let window = unsafe {
            libc::mmap(
                core::ptr::null_mut(),
                WINDOW_BYTES,
                libc::PROT_NONE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
                -1,
                0,
            )
        };
        if window == libc::MAP_FAILED {
            // The files close as they drop.
            return Err(os_error("reserving the 4 GiB window"));
        }
        Ok(HostMemory {
            ram,
            ram_bytes,
            device,
            window: window.cast(),
        })
    }

    /// The host address of machine virtual address 0.
    pub(super) fn window(&self) -> *mut u8 {
        self.window
    }

    fn check(&self, addr: VirtAddr, len: usize) -> Result<*mut libc::c_void, Error> {
        let ok = addr.is_aligned(PAGE_SIZE)
            && len % PAGE_SIZE == 0
            && addr
                .as_usize()
                .checked_add(len)
                .is_some_and(|end| end <= WINDOW_BYTES);
        if !ok {
            return Err(Error::BadVirtAddr { addr });
        }
        Ok(self.window.wrapping_add(addr.as_usize()).cast())
    }

    /// Maps `len` bytes of physical memory from `phys` at machine address
    /// `addr`, replacing whatever the window held there: RAM from the RAM
    /// file, the device window from the device file. A range that is not
    /// page aligned or does not lie wholly in RAM or wholly in the device
    /// window is refused with [`Error::BadPhysAddr`].
    pub(super) fn map(
        &self,
        addr: VirtAddr,
        phys: PhysAddr,
        len: usize,
        writable: bool,
    ) -> Result<(), Error> {
        let at = self.check(addr, len)?;
        let (fd, offset) = self.backing(phys, len)?;
        let offset =
            libc::off_t::try_from(offset).map_err(|_| Error::BadPhysAddr { addr: phys })?;
        let prot = libc::PROT_READ | if writable { libc::PROT_WRITE } else { 0 };
        // SAFETY: `at..at + len` lies inside the window this value reserved
        // and owns (checked above), so MAP_FIXED replaces only our own
        // pages; the file range lies inside its file (`backing`).
        let got = unsafe {
            libc::mmap(
                at,
                len,
                prot,
                libc::MAP_SHARED | libc::MAP_FIXED,
                fd,
                offset,
            )
        };
        if got == libc::MAP_FAILED {
            return Err(Error::NoMemory {
                order: kmm_api::Order::ZERO,
            });
        }
        Ok(())
    }

    /// The file and offset holding `[phys, phys + len)`: the RAM file, or
    /// the device file.
    fn backing(&self, phys: PhysAddr, len: usize) -> Result<(libc::c_int, u64), Error> {
        if self.check_ram(phys, len).is_ok() {
            return Ok((self.ram.as_raw_fd(), phys.as_u64()));
        }
        let device = self
            .device
            .as_ref()
            .filter(|_| phys.is_aligned(PAGE_SIZE as u64));
        match device.and_then(|d| Some((d, d.offset(phys, len as u64)?))) {
            Some((d, offset)) => Ok((d.file.as_raw_fd(), offset)),
            None => Err(Error::BadPhysAddr { addr: phys }),
        }
    }

    /// Whether `[phys, phys + len)` lies wholly in the device window.
    pub(super) fn is_device(&self, phys: PhysAddr, len: u64) -> bool {
        self.device
            .as_ref()
            .is_some_and(|d| d.offset(phys, len).is_some())
    }

    /// Reads device memory at `phys` into `buf`, as the device itself sees
    /// it (no mapping involved); [`Error::BadPhysAddr`] unless the whole
    /// range lies in the device window.
    pub(super) fn read_device(&self, phys: PhysAddr, buf: &mut [u8]) -> Result<(), Error> {
        let bad = Error::BadPhysAddr { addr: phys };
        let d = self.device.as_ref().ok_or(bad)?;
        let offset = d.offset(phys, buf.len() as u64).ok_or(bad)?;
        d.file.read_exact_at(buf, offset).map_err(|_| bad)
    }

    /// Writes `bytes` into device memory at `phys` (no mapping involved);
    /// [`Error::BadPhysAddr`] unless the whole range lies in the window.
    pub(super) fn write_device(&self, phys: PhysAddr, bytes: &[u8]) -> Result<(), Error> {
        let bad = Error::BadPhysAddr { addr: phys };
        let d = self.device.as_ref().ok_or(bad)?;
        let offset = d.offset(phys, bytes.len() as u64).ok_or(bad)?;
        d.file.write_all_at(bytes, offset).map_err(|_| bad)
    }

    /// Refuses a RAM range that is not page aligned or runs past the file.
    fn check_ram(&self, phys: PhysAddr, len: usize) -> Result<(), Error> {
        let in_ram = phys.is_aligned(PAGE_SIZE as u64)
            && phys
                .as_u64()
                .checked_add(len as u64)
                .is_some_and(|e| e <= self.ram_bytes);
        if in_ram {
            Ok(())
        } else {
            Err(Error::BadPhysAddr { addr: phys })
        }
    }

    /// Zeroes `len` bytes of RAM from `phys` without mapping them, by
    /// punching a hole in the file (reads back as zeros, and gives the
    /// host its memory back).
    pub(super) fn zero(&self, phys: PhysAddr, len: usize) -> Result<(), Error> {
        self.check_ram(phys, len)?;
        // SAFETY: operates on our own file descriptor; the range lies inside
        // the file; no memory of this process is passed.
        let rc = unsafe {
            libc::fallocate(
                self.ram.as_raw_fd(),
                libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
                phys.as_u64() as libc::off_t,
                len as libc::off_t,
            )
        };
        if rc != 0 {
            return Err(Error::BadPhysAddr { addr: phys });
        }
        Ok(())
    }

    /// Returns `len` bytes at `addr` to the reserved, inaccessible state:
    /// touching them faults again.
    pub(super) fn unmap(&self, addr: VirtAddr, len: usize) -> Result<(), Error> {
        let at = self.check(addr, len)?;
        // SAFETY: as in `map`: only pages of our own window are replaced.
        let got = unsafe {
            libc::mmap(
                at,
                len,
                libc::PROT_NONE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE | libc::MAP_FIXED,
                -1,
                0,
            )
        };
        if got == libc::MAP_FAILED {
            return Err(Error::NoMemory {
                order: kmm_api::Order::ZERO,
            });
        }
        Ok(())
    }
}

impl Drop for HostMemory {
    fn drop(&mut self) {
        // SAFETY: the window is owned by this value and released exactly
        // once; nothing borrows it past its lifetime (the machine hands out
        // raw pointers only under the DirectMap contract, which ends with
        // the machine). The files close as their fields drop, after the
        // window is gone.
        unsafe {
            libc::munmap(self.window.cast(), WINDOW_BYTES);
        }
    }
}
