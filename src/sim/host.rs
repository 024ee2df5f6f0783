//! The host side of the simulated machine: RAM as a memory file and the
//! machine's 4 GiB virtual address space as one reserved host window. Owns
//! both for its lifetime; every machine mapping is an `mmap` of the RAM
//! file at `window + virtual address`. The only `unsafe` of the simulator
//! lives here.
//!
//! Never maps outside the window (every address is checked against 4 GiB)
//! or past the end of the file (mapped pages beyond it would raise SIGBUS).

use kmm_api::{Error, PhysAddr, VirtAddr, PAGE_SIZE};
use std::io;

/// The machine's virtual address space: 32 bits.
pub(super) const WINDOW_BYTES: usize = 1 << 32;

/// A RAM file and the reserved window it is mapped into.
#[derive(Debug)]
pub(super) struct HostMemory {
    fd: libc::c_int,
    ram_bytes: u64,
    window: *mut u8,
}

// SAFETY: the fields are a file descriptor and the address of a mapping;
// both may be used from any thread (the kernel serialises mmap calls).
unsafe impl Send for HostMemory {}
// SAFETY: as above; no method hands out references into the window.
unsafe impl Sync for HostMemory {}

fn os_error(what: &str) -> io::Error {
    let e = io::Error::last_os_error();
    io::Error::new(e.kind(), format!("{what}: {e}"))
}

impl HostMemory {
    /// A zero-filled RAM file of `ram_bytes` and a `PROT_NONE` window.
    pub(super) fn new(ram_bytes: u64) -> io::Result<Self> {
        let len = libc::off_t::try_from(ram_bytes)
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "RAM size"))?;
        // SAFETY: the name is a NUL-terminated literal; the call has no
        // other memory effects.
        let fd = unsafe { libc::memfd_create(c"kmm-ram".as_ptr(), libc::MFD_CLOEXEC) };
        if fd < 0 {
            return Err(os_error("memfd_create"));
        }
        // SAFETY: `fd` is the file just created and owned here.
        if unsafe { libc::ftruncate(fd, len) } != 0 {
            let e = os_error("ftruncate");
            // SAFETY: closes the descriptor owned here, once.
            unsafe { libc::close(fd) };
            return Err(e);
        }
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
            let e = os_error("reserving the 4 GiB window");
            // SAFETY: closes the descriptor owned here, once.
            unsafe { libc::close(fd) };
            return Err(e);
        }
        Ok(HostMemory {
            fd,
            ram_bytes,
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

    /// Maps `len` bytes of RAM from `phys` at machine address `addr`,
    /// replacing whatever the window held there.
    pub(super) fn map(
        &self,
        addr: VirtAddr,
        phys: PhysAddr,
        len: usize,
        writable: bool,
    ) -> Result<(), Error> {
        let at = self.check(addr, len)?;
        self.check_ram(phys, len)?;
        let prot = libc::PROT_READ | if writable { libc::PROT_WRITE } else { 0 };
        // SAFETY: `at..at + len` lies inside the window this value reserved
        // and owns (checked above), so MAP_FIXED replaces only our own
        // pages; the file range lies inside the file.
        let got = unsafe {
            libc::mmap(
                at,
                len,
                prot,
                libc::MAP_SHARED | libc::MAP_FIXED,
                self.fd,
                phys.as_u64() as libc::off_t,
            )
        };
        if got == libc::MAP_FAILED {
            return Err(Error::NoMemory {
                order: kmm_api::Order::ZERO,
            });
        }
        Ok(())
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
                self.fd,
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
        // SAFETY: the window and the descriptor are owned by this value and
        // released exactly once; nothing borrows them past its lifetime
        // (the machine hands out raw pointers only under the DirectMap
        // contract, which ends with the machine).
        unsafe {
            libc::munmap(self.window.cast(), WINDOW_BYTES);
            libc::close(self.fd);
        }
    }
}
