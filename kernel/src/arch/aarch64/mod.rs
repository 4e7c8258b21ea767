//! AArch64: boot, exceptions, uaccess, system registers, TLB and cache
//! maintenance, ASIDs, `AT`.
//!
//! Everything that needs `asm!` is in this module and gated on the bare-metal
//! target; [`esr`], [`granule`], [`memory`] (the kernel VA layout) and
//! [`regs`] are pure and unit-tested on the host.
pub mod esr;
pub mod granule;
pub mod memory;
pub mod regs;

#[cfg(target_os = "none")]
pub mod arch_timer;
#[cfg(target_os = "none")]
pub mod boot;
#[cfg(target_os = "none")]
pub mod cpu;
#[cfg(target_os = "none")]
pub mod exception;
#[cfg(target_os = "none")]
pub mod mm;
#[cfg(target_os = "none")]
pub mod mmu;
#[cfg(target_os = "none")]
pub mod percpu;
#[cfg(target_os = "none")]
pub mod psci;
#[cfg(target_os = "none")]
pub mod semihosting;
#[cfg(target_os = "none")]
pub mod sysreg;
#[cfg(target_os = "none")]
pub mod uaccess;
#[cfg(target_os = "none")]
pub mod user;
