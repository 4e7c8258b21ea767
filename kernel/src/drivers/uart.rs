//! The console UART, mapped in the MMIO window: a PL011 through the
//! `arm-pl011-uart` crate, or the BCM2835 mini UART
//! ([`super::bcm2835_aux_uart`]). Output goes nowhere until [`init`] or
//! [`init_mini`] has run.

use core::fmt::{self, Write};
use core::ptr::NonNull;

use core::sync::atomic::{AtomicU64, Ordering};

use arm_pl011_uart::{Interrupts, PL011Registers, Uart, UniqueMmioPointer};
use spin::Mutex;

use super::bcm2835_aux_uart::MiniUart;
use super::rx_ring::{RX_RING, RxRing};

enum Port {
    Pl011(Uart<'static>),
    Mini(MiniUart),
}

pub struct Console {
    uart: Option<Port>,
    /// What the receive interrupt took from the UART and the console has
    /// not read yet.
    rx: RxRing,
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

    /// Moves what the receive FIFO holds into the buffer (the polled
    /// receive path; bounded, as a sender can refill the FIFO as fast as it
    /// is read). Returns the number of bytes dropped.
    fn drain_hw(&mut self) -> u64 {
        let mut dropped = 0;
        for _ in 0..RX_RING {
            let kept = match self.read_hw() {
                Rx::Empty => break,
                Rx::Byte(b) => self.rx.push(b),
                Rx::Error => false,
            };
            if !kept {
                dropped += 1;
            }
        }
        dropped
    }

    /// One word from the receive FIFO.
    fn read_hw(&mut self) -> Rx {
        match self.uart.as_mut() {
            Some(Port::Pl011(u)) if !u.is_rx_fifo_empty() => u.read_word().ok().flatten().map_or(Rx::Error, Rx::Byte),
            Some(Port::Mini(u)) => u.get().map_or(Rx::Empty, Rx::Byte),
            Some(Port::Pl011(_)) | None => Rx::Empty,
        }
    }
}

/// What the receive FIFO gave.
enum Rx {
    Empty,
    Byte(u8),
    /// A word with a receive error (break, framing, parity, overrun),
    /// consumed from the FIFO.
    Error,
}

/// Runs `f` on the console with IRQs masked, as every holder of its lock
/// must: the receive interrupt's handler takes it too.
fn locked<R>(f: impl FnOnce(&mut Console) -> R) -> R {
    let _irq = crate::arch::cpu::local_irq_save();
    f(&mut CONSOLE.lock())
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

pub static CONSOLE: Mutex<Console> = Mutex::new(Console { uart: None, rx: RxRing::new() });

static RX_IRQS: AtomicU64 = AtomicU64::new(0);
static RX_DROPPED: AtomicU64 = AtomicU64::new(0);

/// Turns on the PL011's receive interrupts (RX FIFO level and receive
/// timeout); the caller has enabled its line at the interrupt controller.
/// The mini UART stays polled: QEMU and the hardware disagree about which
/// AUX_MU_IER bit is the receive one (QEMU follows the datasheet, bit 1;
/// Linux's 8250 driver and the datasheet's errata use bit 0), and the wrong
/// one enables the always-pending transmit interrupt.
pub fn enable_rx_interrupt() -> Result<(), &'static str> {
    locked(|c| match c.uart.as_mut() {
        Some(Port::Pl011(u)) => {
            u.set_interrupt_masks(Interrupts::RXI | Interrupts::RTI);
            Ok(())
        }
        Some(Port::Mini(_)) => Err("the mini UART is polled"),
        None => Err("no console UART"),
    })
}

/// The console UART's receive interrupt (from the IRQ handler, IRQs
/// masked): moves everything in the RX FIFO to the buffer, which silences
/// the level-sensitive line. Every other holder of the console lock has
/// IRQs masked, so this CPU cannot be holding it here.
pub fn rx_irq() {
    RX_IRQS.fetch_add(1, Ordering::Relaxed);
    let mut c = CONSOLE.lock();
    if let Some(Port::Pl011(u)) = c.uart.as_mut() {
        // Clear first, then drain: a byte that arrives after the last read
        // raises the interrupt again. (Clearing after the drain can wipe the
        // interrupt of a byte that arrived in between, and it would sit in
        // the FIFO with no interrupt: QEMU's PL011 raises RX only when its
        // FIFO goes from empty to non-empty.) The receive timeout is not
        // cleared by an empty FIFO on every PL011 revision.
        u.clear_interrupts(Interrupts::RXI | Interrupts::RTI);
    }
    // Until the FIFO is empty: a byte with an error (break, framing, parity,
    // overrun) is dropped, not taken for the end of the FIFO.
    let dropped = c.drain_hw();
    RX_DROPPED.fetch_add(dropped, Ordering::Relaxed);
}

/// Receive interrupts taken, and bytes dropped (the buffer was full, or the
/// byte came with a receive error).
pub fn rx_stats() -> (u64, u64) {
    (RX_IRQS.load(Ordering::Relaxed), RX_DROPPED.load(Ordering::Relaxed))
}

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

/// Reads one received byte, if any. With the receive interrupt on, only
/// what its handler buffered: a receive path that does not work shows as a
/// console that gets nothing, not as a silent fallback to polling.
pub fn getc() -> Option<u8> {
    locked(|c| {
        if let Some(b) = c.rx.pop() {
            return Some(b);
        }
        if RX_BY_IRQ.load(Ordering::Acquire) {
            None
        } else {
            // Polled: an errored word is consumed and skipped.
            match c.read_hw() {
                Rx::Byte(b) => Some(b),
                Rx::Empty | Rx::Error => None,
            }
        }
    })
}

/// Whether `wanted` (the console's Ctrl-C) was received since the last
/// look: takes the oldest one typed before the next Enter out of what was
/// received (one typed after a line typed ahead is not for the command
/// running now) and keeps every other byte for [`getc`], so a line typed
/// ahead during a long command still runs. Long console loops poll this. The kernel runs with IRQs masked
/// outside its IRQ windows, so the receive FIFO is emptied into the buffer
/// here first, with or without the receive interrupt (at the prompt,
/// [`getc`] still takes only what the handler buffered).
pub fn take_received(wanted: u8) -> bool {
    locked(|c| {
        let dropped = c.drain_hw();
        RX_DROPPED.fetch_add(dropped, Ordering::Relaxed);
        c.rx.take_before_line_end(wanted)
    })
}

/// Drops every `wanted` byte received so far (the console's Ctrl-C, when a
/// command ends: one typed while it ran was for it, and must not stop the
/// next command).
pub fn discard_received(wanted: u8) {
    locked(|c| {
        let dropped = c.drain_hw();
        RX_DROPPED.fetch_add(dropped, Ordering::Relaxed);
        c.rx.discard(wanted)
    })
}

static RX_BY_IRQ: core::sync::atomic::AtomicBool = core::sync::atomic::AtomicBool::new(false);

/// From now on the receive interrupt feeds the console (its line is enabled
/// at the interrupt controller and routed to the console's CPU).
pub fn set_rx_by_irq() {
    RX_BY_IRQ.store(true, Ordering::Release);
}

pub fn _print(args: fmt::Arguments) {
    let _ = locked(|c| c.write_fmt(args));
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
