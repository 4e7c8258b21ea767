//! The Arm generic timer: the EL1 virtual timer of each CPU (CNTV_*_EL0,
//! its PPI named by the devicetree's `arm,armv8-timer` node), programmed as a
//! periodic tick of [`HZ`] from CNTFRQ_EL0.
//!
//! The tick is re-armed relative to the moment it is handled (CNTV_TVAL), so
//! a CPU that keeps IRQs masked for a long time gets one late tick, not a
//! burst. Ticks are counted per CPU by `crate::irq`.

use crate::arch::aarch64::arch_timer;
use core::sync::atomic::{AtomicU64, Ordering};

/// Ticks per second.
pub const HZ: u64 = 100;

static PERIOD: AtomicU64 = AtomicU64::new(0);

/// The counter frequency (CNTFRQ_EL0, set by firmware or QEMU).
pub fn frequency() -> u64 {
    arch_timer::cntfrq()
}

/// The virtual counter (CNTVCT_EL0).
pub fn now() -> u64 {
    arch_timer::cntvct()
}

/// Counter ticks in `ms` milliseconds.
pub fn ms_to_counts(ms: u64) -> u64 {
    frequency() * ms / 1000
}

/// Counter ticks between two timer interrupts.
pub fn period() -> u64 {
    PERIOD.load(Ordering::Relaxed)
}

/// Starts the periodic tick on this CPU (IRQs masked; the PPI is enabled
/// in the GIC separately).
pub fn start_this_cpu() {
    let f = frequency();
    let p = (f / HZ).max(1);
    PERIOD.store(p, Ordering::Relaxed);
    arch_timer::cntv_start(p);
}

/// Stops this CPU's tick.
pub fn stop_this_cpu() {
    arch_timer::cntv_stop();
}

/// Whether this CPU's timer condition is met (CNTV_CTL_EL0.ISTATUS).
pub fn pending() -> bool {
    arch_timer::cntv_pending()
}

/// Re-arms the tick from the interrupt handler, before the EOI: this
/// de-asserts the level-sensitive PPI.
pub fn rearm() {
    arch_timer::cntv_rearm(period());
}
