//! The BCM2835 mini UART ("AUX UART", UART1), polled. On a Raspberry Pi 3
//! whose PL011 drives the Bluetooth chip (the firmware's default) it is the
//! UART on GPIO 14/15; the Pi 4 has it too. Linux: `8250_bcm2835aux.c`
//! (register block at AUX + 0x40) and `clk-bcm2835-aux.c` (the AUX enable
//! register at AUX + 0x04). QEMU: `hw/char/bcm2835_aux.c`, its `-serial`
//! number 1 on the raspi machines.
//!
//! It is a cut-down 16550: 8-byte FIFOs, no parity, and a baud rate derived
//! from the VPU core clock (`baud = core_clock / (8 * (BAUD + 1))`), which
//! the firmware fixes (`enable_uart=1`: 250 MHz on the Pi 3, 500 MHz on the
//! Pi 4). When the firmware has already enabled it, its settings are kept:
//! only it knows the clock. GPIO 14/15's ALT5 function is the firmware's job
//! too (`enable_uart=1`); the kernel has no GPIO driver.

use core::ptr::NonNull;

use tock_registers::interfaces::{ReadWriteable, Readable, Writeable};
use tock_registers::registers::{ReadOnly, ReadWrite};
use tock_registers::{register_bitfields, register_structs};

register_bitfields! [u32,
    /// AUX_ENABLES (AUX + 0x04).
    pub AUX_ENABLES [
        MINI_UART OFFSET(0) NUMBITS(1) []
    ],
    /// AUX_MU_LCR: data size. The datasheet documents bit 0 only; 7-bit
    /// mode is 0b00 and 8-bit mode needs both bits (its erratum).
    pub LCR [
        DATA_SIZE OFFSET(0) NUMBITS(2) [SevenBit = 0b00, EightBit = 0b11]
    ],
    /// AUX_MU_LSR.
    pub LSR [
        DATA_READY OFFSET(0) NUMBITS(1) [],
        RX_OVERRUN OFFSET(1) NUMBITS(1) [],
        /// The transmit FIFO can take at least one byte.
        TX_EMPTY OFFSET(5) NUMBITS(1) [],
        TX_IDLE OFFSET(6) NUMBITS(1) []
    ],
    /// AUX_MU_IIR on write: FIFO clears.
    pub IIR [
        CLEAR_RX OFFSET(1) NUMBITS(1) [],
        CLEAR_TX OFFSET(2) NUMBITS(1) []
    ],
    /// AUX_MU_CNTL.
    pub CNTL [
        RX_ENABLE OFFSET(0) NUMBITS(1) [],
        TX_ENABLE OFFSET(1) NUMBITS(1) []
    ]
];

register_structs! {
    /// The mini UART's registers, from AUX + 0x40 (the devicetree node's
    /// `reg`, as in Linux's bcm283x.dtsi).
    pub Registers {
        (0x00 => io: ReadWrite<u32>),
        (0x04 => ier: ReadWrite<u32>),
        (0x08 => iir: ReadWrite<u32, IIR::Register>),
        (0x0c => lcr: ReadWrite<u32, LCR::Register>),
        (0x10 => mcr: ReadWrite<u32>),
        (0x14 => lsr: ReadOnly<u32, LSR::Register>),
        (0x18 => msr: ReadOnly<u32>),
        (0x1c => scratch: ReadWrite<u32>),
        (0x20 => cntl: ReadWrite<u32, CNTL::Register>),
        (0x24 => stat: ReadOnly<u32>),
        (0x28 => baud: ReadWrite<u32>),
        (0x2c => @END),
    }
}

/// The divisor for `baud` at `clock_hz`, truncated as the Pi guides do
/// (both errors stay near 0.1%).
pub const fn baud_divisor(clock_hz: u32, baud: u32) -> u32 {
    (clock_hz / (8 * baud)).saturating_sub(1)
}

/// The console's line speed.
pub const BAUD: u32 = 115_200;

pub struct MiniUart {
    regs: NonNull<Registers>,
}

// SAFETY: the registers are MMIO that only the console lock's holder touches.
unsafe impl Send for MiniUart {}

impl MiniUart {
    /// Takes the mini UART whose registers are mapped at `regs`. If `enables`
    /// (the AUX_ENABLES register) is given and the firmware left the UART
    /// off, enables and programs it: 8N1 at [`BAUD`] from `core_clock_hz`.
    ///
    /// # Safety
    /// `regs` (and `enables`, if given) must be Device mappings of those
    /// registers that nothing else uses.
    pub unsafe fn new(regs: NonNull<Registers>, enables: Option<NonNull<u32>>, core_clock_hz: u32) -> Self {
        let u = MiniUart { regs };
        if let Some(en) = enables {
            // SAFETY: guaranteed by the caller.
            let en = unsafe { &*(en.as_ptr() as *const ReadWrite<u32, AUX_ENABLES::Register>) };
            if !en.is_set(AUX_ENABLES::MINI_UART) {
                en.modify(AUX_ENABLES::MINI_UART::SET);
                let r = u.regs();
                r.cntl.set(0);
                r.ier.set(0);
                r.lcr.write(LCR::DATA_SIZE::EightBit);
                r.mcr.set(0);
                r.iir.write(IIR::CLEAR_RX::SET + IIR::CLEAR_TX::SET);
                r.baud.set(baud_divisor(core_clock_hz, BAUD));
                r.cntl.write(CNTL::RX_ENABLE::SET + CNTL::TX_ENABLE::SET);
            }
        }
        // Polled: no interrupts, whatever the firmware left.
        u.regs().ier.set(0);
        u
    }

    fn regs(&self) -> &Registers {
        // SAFETY: `new`'s caller guaranteed a mapping that outlives us.
        unsafe { self.regs.as_ref() }
    }

    pub fn put(&mut self, b: u8) {
        let r = self.regs();
        while !r.lsr.is_set(LSR::TX_EMPTY) {
            core::hint::spin_loop();
        }
        r.io.set(b as u32);
    }

    pub fn get(&mut self) -> Option<u8> {
        let r = self.regs();
        r.lsr.is_set(LSR::DATA_READY).then(|| r.io.get() as u8)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    extern crate std;

    #[test]
    fn divisors_of_the_firmware_clocks() {
        // 250 MHz (Pi 3, enable_uart=1): the 270 every Pi 3 guide uses.
        assert_eq!(baud_divisor(250_000_000, 115_200), 270);
        // 500 MHz (Pi 4): 541.
        assert_eq!(baud_divisor(500_000_000, 115_200), 541);
        assert_eq!(baud_divisor(1, 115_200), 0, "no underflow");
    }

    // A register block in RAM: only what `new` writes can be checked here;
    // the UART itself is exercised under QEMU's raspi machines. Every access,
    // the driver's and the test's, goes through one raw pointer.
    #[repr(C, align(4))]
    struct Fake {
        enables: u32,
        regs: [u32; 11],
    }

    struct Block(*mut Fake);

    impl Block {
        fn new(enabled: bool) -> Self {
            let mut regs = [0xdead; 11];
            regs[5] = 0x60; // LSR: TX empty and idle
            Block(std::boxed::Box::into_raw(std::boxed::Box::new(Fake { enables: enabled as u32, regs })))
        }
        fn reg(&self, i: usize) -> u32 {
            // SAFETY: a live allocation; volatile, as the driver's accesses are.
            unsafe { core::ptr::addr_of!((*self.0).regs[i]).read_volatile() }
        }
        fn set_reg(&self, i: usize, v: u32) {
            // SAFETY: as in `reg`.
            unsafe { core::ptr::addr_of_mut!((*self.0).regs[i]).write_volatile(v) }
        }
        fn enables(&self) -> u32 {
            // SAFETY: as in `reg`.
            unsafe { core::ptr::addr_of!((*self.0).enables).read_volatile() }
        }
        fn take(&self, with_enables: bool) -> MiniUart {
            // SAFETY: pointers into the live allocation, without references.
            let regs = NonNull::new(unsafe { core::ptr::addr_of_mut!((*self.0).regs) } as *mut Registers).unwrap();
            let en = with_enables.then(|| NonNull::new(unsafe { core::ptr::addr_of_mut!((*self.0).enables) }).unwrap());
            // SAFETY: the block outlives the test's uses of the UART.
            unsafe { MiniUart::new(regs, en, 250_000_000) }
        }
    }

    impl Drop for Block {
        fn drop(&mut self) {
            // SAFETY: from Box::into_raw in `new`, freed once.
            drop(unsafe { std::boxed::Box::from_raw(self.0) });
        }
    }

    #[test]
    fn a_disabled_uart_is_enabled_and_programmed_8n1() {
        let f = Block::new(false);
        let mut u = f.take(true);
        u.put(b'x');
        assert_eq!(f.enables(), 1);
        assert_eq!(f.reg(0), b'x' as u32, "IO");
        assert_eq!(f.reg(1), 0, "IER: polled");
        assert_eq!(f.reg(3), 0b11, "LCR: 8 bits");
        assert_eq!(f.reg(8), 0b11, "CNTL: RX and TX on");
        assert_eq!(f.reg(10), 270, "BAUD at 250 MHz");
    }

    #[test]
    fn the_firmwares_settings_are_kept() {
        for with_enables in [true, false] {
            let f = Block::new(true);
            let _u = f.take(with_enables);
            assert_eq!(f.reg(10), 0xdead, "BAUD untouched (only the firmware knows the core clock)");
            assert_eq!(f.reg(3), 0xdead, "LCR untouched");
            assert_eq!(f.reg(1), 0, "IER: polled");
        }
    }

    #[test]
    fn get_reads_only_when_data_is_ready() {
        let f = Block::new(true);
        f.set_reg(0, b'q' as u32);
        let mut u = f.take(false);
        assert_eq!(u.get(), None);
        f.set_reg(5, f.reg(5) | 1);
        assert_eq!(u.get(), Some(b'q'));
    }
}
