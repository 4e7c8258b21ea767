//! The console UART, mapped in the MMIO window: a PL011 through the
//! `arm-pl011-uart` crate, or the BCM2835 mini UART
//! ([`super::bcm2835_aux_uart`]). Output goes nowhere until [`init`] or
//! [`init_mini`] has run.

use core::fmt::{self, Write};
use core::ptr::NonNull;

use arm_pl011_uart::{PL011Registers, Uart, UniqueMmioPointer};
use spin::Mutex;

use super::bcm2835_aux_uart::MiniUart;

enum Port {
    Pl011(Uart<'static>),
    Mini(MiniUart),
}

pub struct Console {
    uart: Option<Port>,
}

impl Console {
    fn put(&mut self, b: u8) {
        match self.uart.as_mut() {
            Some(Port::Pl011(u)) => {
                while u.is_tx_fifo_full() {
                    core::hint::spin_loop();
                }
                u.write_word(b);
            }
            Some(Port::Mini(u)) => u.put(b),
            None => {}
        }
    }

    fn get(&mut self) -> Option<u8> {
        match self.uart.as_mut()? {
            Port::Pl011(u) => {
                if u.is_rx_fifo_empty() {
                    return None;
                }
                u.read_word().ok().flatten()
            }
            Port::Mini(u) => u.get(),
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
    CONSOLE.lock().uart = Some(Port::Pl011(Uart::new(regs)));
}

/// Starts using the BCM2835 mini UART whose registers (AUX + 0x40) are
/// mapped at `va`; `enables_va` is AUX_ENABLES, if mapped (see
/// [`MiniUart::new`] for what is programmed and when).
///
/// # Safety
/// `va` and `enables_va` must be Device mappings of those registers that
/// nothing else uses.
pub unsafe fn init_mini(va: u64, enables_va: Option<u64>, core_clock_hz: u32) {
    let regs = NonNull::new(va as *mut _).unwrap();
    let en = enables_va.and_then(|a| NonNull::new(a as *mut u32));
    // SAFETY: guaranteed by the caller.
    let u = unsafe { MiniUart::new(regs, en, core_clock_hz) };
    CONSOLE.lock().uart = Some(Port::Mini(u));
}

/// Reads one received byte, if any.
pub fn getc() -> Option<u8> {
    CONSOLE.lock().get()
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
