//! The console UART: a PL011 through the `arm-pl011-uart` crate, mapped in
//! the MMIO window. Output goes nowhere until [`init`] has run.

use core::fmt::{self, Write};
use core::ptr::NonNull;

use arm_pl011_uart::{PL011Registers, Uart, UniqueMmioPointer};
use spin::Mutex;

pub struct Console {
    uart: Option<Uart<'static>>,
}

impl Console {
    fn put(&mut self, b: u8) {
        if let Some(u) = self.uart.as_mut() {
            while u.is_tx_fifo_full() {
                core::hint::spin_loop();
            }
            u.write_word(b);
        }
    }
}

impl Write for Console {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        for b in s.bytes() {
            if b == b'\n' {
                self.put(b'\r');
            }
            self.put(b);
        }
        Ok(())
    }
}

pub static CONSOLE: Mutex<Console> = Mutex::new(Console { uart: None });

/// Starts using the PL011 whose registers are mapped at `va`.
///
/// # Safety
/// `va` must be a Device mapping of a PL011 register block that nothing else uses.
pub unsafe fn init(va: u64) {
    // SAFETY: guaranteed by the caller.
    let regs = unsafe { UniqueMmioPointer::new(NonNull::new(va as *mut PL011Registers).unwrap()) };
    CONSOLE.lock().uart = Some(Uart::new(regs));
}

/// Reads one received byte, if any.
pub fn getc() -> Option<u8> {
    let mut c = CONSOLE.lock();
    let u = c.uart.as_mut()?;
    if u.is_rx_fifo_empty() {
        return None;
    }
    u.read_word().ok().flatten()
}

pub fn _print(args: fmt::Arguments) {
    let daif = crate::arch::cpu::irq_save();
    let _ = CONSOLE.lock().write_fmt(args);
    crate::arch::cpu::irq_restore(daif);
}

/// Prints even if the console lock is held (by a CPU that panicked or is
/// stuck): only for the panic path.
pub fn emergency_print(args: fmt::Arguments) {
    // SAFETY: the panic path owns the machine from here on; a torn line is
    // better than a deadlock.
    unsafe { CONSOLE.force_unlock() };
    let _ = CONSOLE.lock().write_fmt(args);
}

#[macro_export]
macro_rules! print {
    ($($arg:tt)*) => { $crate::drivers::uart::_print(format_args!($($arg)*)) };
}

#[macro_export]
macro_rules! println {
    () => { $crate::print!("\n") };
    ($($arg:tt)*) => { $crate::drivers::uart::_print(format_args!("{}\n", format_args!($($arg)*))) };
}
