//! The BCM2836 ARM-local interrupt controller (Raspberry Pi 2 and 3; BCM2837
//! has the same block at 0x40000000). There is no GIC on these chips: this
//! block routes each core's generic-timer interrupts to that core's IRQ line
//! and gives every core four 32-bit mailboxes, which serve as IPIs (Linux
//! `drivers/irqchip/irq-bcm2836.c`; QEMU `hw/intc/bcm2836_control.c`).
//!
//! Registers used (offsets from the block's base; `c` is the core, MPIDR Aff0):
//! - `0x40 + 4c` core timer interrupt control: bit 3 routes nCNTVIRQ (the
//!   EL1 virtual timer) to IRQ;
//! - `0x50 + 4c` mailbox interrupt control: bit 0 routes mailbox 0 to IRQ;
//! - `0x0c` GPU interrupt routing: bits 1:0 the core that gets the
//!   peripherals' interrupt (the BCM2835 armctrl's output);
//! - `0x60 + 4c` IRQ source: bit 3 nCNTVIRQ, bits 4..7 mailboxes 0..3,
//!   bit 8 the GPU interrupt;
//! - `0x80 + 16c` mailbox 0 write-set; `0xc0 + 16c` mailbox 0 read /
//!   write-1-to-clear.
//!
//! An SGI number `n` (0..31) is bit `n` of the target's mailbox 0.

use core::sync::atomic::{AtomicU64, Ordering};

use crate::arch::percpu;
use crate::mm::addr::PhysRange;
use crate::mm::kernel_pgtable;

/// The block's virtual address (0 before `init`).
static BASE: AtomicU64 = AtomicU64::new(0);

const GPU_ROUTING: u64 = 0x0c;
const TIMER_CTL: u64 = 0x40;
const MBOX_CTL: u64 = 0x50;
const IRQ_SRC: u64 = 0x60;
const MBOX0_SET: u64 = 0x80;
const MBOX0_CLR: u64 = 0xc0;
const CNTV_BIT: u32 = 1 << 3;
const MBOX0_BIT: u32 = 1 << 4;
const GPU_BIT: u32 = 1 << 8;

/// What [`ack`] found pending.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Pending {
    /// The EL1 virtual timer (level: the caller re-arms it).
    Timer,
    /// Mailbox bit `n` (an SGI), already cleared.
    Sgi(u32),
    /// The peripherals' interrupt (ask `bcm2835_armctrl` which one).
    Gpu,
}

fn reg(off: u64) -> *mut u32 {
    (BASE.load(Ordering::Acquire) + off) as *mut u32
}

fn read(off: u64) -> u32 {
    // SAFETY: a register of the block `init` mapped as Device memory.
    unsafe { core::ptr::read_volatile(reg(off)) }
}

fn write(off: u64, v: u32) {
    // SAFETY: as in `read`.
    unsafe { core::ptr::write_volatile(reg(off), v) }
}

fn core_of(cpu: usize) -> u64 {
    percpu::cpu(cpu).mpidr.load(Ordering::Relaxed) & 0xff
}

/// Maps the block (boot CPU, once).
pub fn init(regs: PhysRange) -> Result<(), &'static str> {
    let va = kernel_pgtable::ioremap(regs).map_err(|_| "cannot map the ARM-local interrupt controller")?;
    BASE.store(va.as_u64(), Ordering::Release);
    Ok(())
}

/// Routes this core's virtual timer and mailbox 0 to its IRQ line (on the
/// core itself, IRQs masked).
pub fn init_this_cpu() {
    let c = core_of(percpu::this_cpu().id);
    write(TIMER_CTL + 4 * c, read(TIMER_CTL + 4 * c) | CNTV_BIT);
    write(MBOX_CTL + 4 * c, read(MBOX_CTL + 4 * c) | 1);
}

/// The next pending interrupt of this core, if any. SGIs are cleared here;
/// the timer stays pending until it is re-armed.
pub fn ack() -> Option<Pending> {
    let c = core_of(percpu::this_cpu().id);
    let src = read(IRQ_SRC + 4 * c);
    if src & MBOX0_BIT != 0 {
        let m = read(MBOX0_CLR + 16 * c);
        if m != 0 {
            let n = m.trailing_zeros();
            write(MBOX0_CLR + 16 * c, 1 << n);
            // The clear must be done before the handler reads what the
            // sender stored (Linux's irq-bcm2836 does `dsb sy` here too).
            crate::arch::cpu::dsb_sy();
            return Some(Pending::Sgi(n));
        }
    }
    if src & CNTV_BIT != 0 {
        return Some(Pending::Timer);
    }
    (src & GPU_BIT != 0).then_some(Pending::Gpu)
}

/// Sends the peripherals' interrupt to CPU `cpu`.
pub fn route_gpu_to(cpu: usize) {
    write(GPU_ROUTING, (core_of(cpu) & 3) as u32);
}

/// Raises SGI `sgi` on CPU `target` (stores before it are visible to the
/// target's handler).
pub fn send_sgi(target: usize, sgi: u32) -> Result<(), &'static str> {
    if sgi >= 32 || BASE.load(Ordering::Acquire) == 0 {
        return Err("no such SGI, or no ARM-local controller");
    }
    crate::arch::cpu::dsb_ishst();
    write(MBOX0_SET + 16 * core_of(target), 1 << sgi);
    Ok(())
}
