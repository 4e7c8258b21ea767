//! pagelab: a bare-metal AArch64 MMU testbed kernel.
//!
//! Layout (see docs/ARCHITECTURE.md):
//! - [`arch`]: boot assembly, exception vectors and their handlers, uaccess,
//!   system registers, TLB maintenance and ASIDs, `AT`. All `asm!` and every
//!   system-register access live there (`./qemu-run.sh test` checks), and it
//!   takes no types from `mm` or `proc`.
//! - [`board`]: what the devicetree says about the machine.
//! - [`mm`]: physical frames, the kernel heap, translation tables, ptdump.
//! - [`console`]: the scenario-language console.
//! - [`irq`]: GIC, timer tick and SGIs (IRQs are taken at EL0 and in
//!   explicit windows at EL1 only).
//! - [`test`]: the in-kernel test runner.
//! - [`torture`]: the seeded random run against a reference model.
//!
//! Modules that are pure logic (descriptor encoding, ESR decoding, parsing,
//! formatting) build on the host too and are unit-tested with `cargo test`;
//! everything that touches the hardware is gated on `target_os = "none"`.
#![cfg_attr(not(test), no_std)]

extern crate alloc;

pub mod arch;
pub mod board;
pub mod console;
pub mod drivers;
pub mod errno;
pub mod mm;
pub mod torture;
pub mod util;

#[cfg(target_os = "none")]
pub mod bench;
#[cfg(target_os = "none")]
pub mod irq;
#[cfg(target_os = "none")]
pub mod kmain;
#[cfg(target_os = "none")]
pub mod panic;
#[cfg(target_os = "none")]
pub mod proc;
#[cfg(target_os = "none")]
pub mod test;

#[cfg(target_os = "none")]
pub use kmain::kernel_main;
