//! The console: COM1 (the 16550 UART at I/O port 0x3f8), polled, 115200
//! 8N1, and QEMU's `isa-debug-exit` device for the verdict. Output is the
//! only thing the kernel tells the outside world besides its exit status.
//!
//! No lock: one CPU, interrupts off; a fault handler that prints in the
//! middle of another line only interleaves bytes.

use core::arch::asm;
use core::fmt;

const COM1: u16 = 0x3f8;
/// QEMU `-device isa-debug-exit,iobase=0xf4,iosize=0x04`.
const DEBUG_EXIT_PORT: u16 = 0xf4;
/// Written to the debug-exit port on success: QEMU exits with
/// `(0x10 << 1) | 1 = 33`.
pub const EXIT_SUCCESS: u8 = 0x10;
/// Written on failure: QEMU exits with 35.
pub const EXIT_FAILURE: u8 = 0x11;

fn outb(port: u16, value: u8) {
    // SAFETY: writes to the UART's and debug-exit device's I/O ports
    // only; no memory is touched.
    unsafe {
        asm!("outb %al, %dx", in("dx") port, in("al") value, options(att_syntax, nomem, nostack, preserves_flags))
    }
}

fn inb(port: u16) -> u8 {
    let value: u8;
    // SAFETY: reads the UART's status port; no memory is touched.
    unsafe {
        asm!("inb %dx, %al", in("dx") port, out("al") value, options(att_syntax, nomem, nostack, preserves_flags))
    }
    value
}

/// Programs COM1 for 115200 baud, 8 data bits, no parity, one stop bit,
/// FIFOs on, interrupts off.
pub fn init() {
    outb(COM1 + 1, 0x00); // no interrupts
    outb(COM1 + 3, 0x80); // DLAB on: the next two ports set the divisor
    outb(COM1, 0x01); // divisor 1: 115200 baud
    outb(COM1 + 1, 0x00);
    outb(COM1 + 3, 0x03); // 8N1, DLAB off
    outb(COM1 + 2, 0xc7); // FIFOs on and cleared, 14-byte threshold
    outb(COM1 + 4, 0x03); // DTR, RTS
}

fn write_byte(byte: u8) {
    // Line status bit 5: the transmit holding register is empty.
    while inb(COM1 + 5) & 0x20 == 0 {
        core::hint::spin_loop();
    }
    outb(COM1, byte);
}

/// The serial console as a `fmt::Write` sink.
pub struct Serial;

impl fmt::Write for Serial {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        for byte in s.bytes() {
            if byte == b'\n' {
                write_byte(b'\r');
            }
            write_byte(byte);
        }
        Ok(())
    }
}

/// Ends the run: QEMU exits with `(code << 1) | 1`. Halts forever if the
/// device is missing (CI's `timeout` then fails the run).
pub fn exit(code: u8) -> ! {
    outb(DEBUG_EXIT_PORT, code);
    loop {
        // SAFETY: halts the CPU with interrupts off; nothing else runs.
        unsafe { asm!("cli; hlt", options(att_syntax, nomem, nostack)) }
    }
}

/// `print!` to the serial console.
#[macro_export]
macro_rules! print {
    ($($arg:tt)*) => {{
        use core::fmt::Write as _;
        let _ = write!($crate::serial::Serial, $($arg)*);
    }};
}

/// `println!` to the serial console.
#[macro_export]
macro_rules! println {
    () => { $crate::print!("\n") };
    ($($arg:tt)*) => {{
        use core::fmt::Write as _;
        let _ = writeln!($crate::serial::Serial, $($arg)*);
    }};
}
