//! The BCM2835 ARM interrupt controller ("armctrl", `brcm,bcm2836-armctrl-ic`
//! on the Pi 2/3): it gathers the VideoCore peripherals' interrupts (the
//! "GPU IRQs" 0..63: UARTs, timers, DMA, ...) and raises one line, which the
//! BCM2836 ARM-local controller routes to one core as its "GPU interrupt"
//! (`bcm2836_local`). Linux: `drivers/irqchip/irq-bcm2835.c`; QEMU:
//! `hw/intc/bcm2835_ic.c`.
//!
//! Interrupt specifiers have two cells, `<bank bit>`, as in Linux: bank 0 is
//! the ARM-side "basic" interrupts, banks 1 and 2 are GPU IRQs 0-31 and
//! 32-63. The pending registers show only enabled interrupts, and every
//! source is level-sensitive: there is nothing to acknowledge here, the
//! device drops its line when it is served.

use core::sync::atomic::{AtomicU64, Ordering};

use crate::mm::addr::PhysRange;
use crate::mm::kernel_pgtable;

static BASE: AtomicU64 = AtomicU64::new(0);

const PENDING_BASIC: u64 = 0x00;
const PENDING: [u64; 3] = [PENDING_BASIC, 0x04, 0x08];
const ENABLE: [u64; 3] = [0x18, 0x10, 0x14];
const DISABLE: [u64; 3] = [0x24, 0x1c, 0x20];

/// One source: `(bank, bit)` with bank 0..=2 and bit 0..=31 (bank 0: 0..=7).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Source {
    pub bank: u32,
    pub bit: u32,
}

impl Source {
    /// From a devicetree specifier `<bank bit>`.
    pub fn from_cells(bank: u32, bit: u32) -> Option<Self> {
        (bank <= 2 && bit < if bank == 0 { 8 } else { 32 }).then_some(Source { bank, bit })
    }
    /// A number for the whole controller: 0..=7 basic, 32..=95 GPU IRQ 0..63.
    pub fn number(self) -> u32 {
        if self.bank == 0 { self.bit } else { 32 * self.bank + self.bit }
    }
    /// The inverse of [`Source::number`].
    pub fn from_number(n: u32) -> Option<Self> {
        Self::from_cells(n / 32, n % 32)
    }
}

fn read(off: u64) -> u32 {
    // SAFETY: a register of the block `init` mapped as Device memory.
    unsafe { core::ptr::read_volatile((BASE.load(Ordering::Acquire) + off) as *const u32) }
}

fn write(off: u64, v: u32) {
    // SAFETY: as in `read`.
    unsafe { core::ptr::write_volatile((BASE.load(Ordering::Acquire) + off) as *mut u32, v) }
}

/// Maps the block and disables every source (boot CPU, once).
pub fn init(regs: PhysRange) -> Result<(), &'static str> {
    let va = kernel_pgtable::ioremap(regs).map_err(|_| "cannot map the BCM2835 interrupt controller")?;
    BASE.store(va.as_u64(), Ordering::Release);
    for off in DISABLE {
        write(off, u32::MAX);
    }
    Ok(())
}

pub fn present() -> bool {
    BASE.load(Ordering::Acquire) != 0
}

pub fn enable(s: Source) {
    write(ENABLE[s.bank as usize], 1 << s.bit);
}

/// The lowest-numbered pending (enabled) source, if any.
pub fn pending() -> Option<Source> {
    if !present() {
        return None;
    }
    (0..3u32).find_map(|bank| {
        // The basic register also carries summary bits (8, 9) and copies of
        // some GPU IRQs (10..20): only its ARM interrupts 0..7 are sources.
        let p = read(PENDING[bank as usize]) & if bank == 0 { 0xff } else { u32::MAX };
        (p != 0).then(|| Source { bank, bit: p.trailing_zeros() })
    })
}
