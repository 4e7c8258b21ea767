//! The EL1 virtual timer's registers (Linux `asm/arch_timer.h`): the
//! generic-timer driver in `drivers::timer` programs the tick through these.

use aarch64_cpu::asm::barrier;
use aarch64_cpu::registers::{CNTFRQ_EL0, CNTV_CTL_EL0, CNTV_TVAL_EL0, CNTVCT_EL0, Readable, Writeable};

/// The counter frequency (CNTFRQ_EL0, set by firmware or QEMU).
pub fn cntfrq() -> u64 {
    CNTFRQ_EL0.get()
}

/// The virtual counter (CNTVCT_EL0), read after an ISB so it is not
/// sampled early.
pub fn cntvct() -> u64 {
    barrier::isb(barrier::SY);
    CNTVCT_EL0.get()
}

/// Fires the timer `ticks` counts from now and unmasks it.
pub fn cntv_start(ticks: u64) {
    CNTV_TVAL_EL0.set(ticks);
    CNTV_CTL_EL0.write(CNTV_CTL_EL0::ENABLE::SET + CNTV_CTL_EL0::IMASK::CLEAR);
    barrier::isb(barrier::SY);
}

/// Re-arms the timer `ticks` counts from now (it stays enabled).
pub fn cntv_rearm(ticks: u64) {
    CNTV_TVAL_EL0.set(ticks);
    barrier::isb(barrier::SY);
}

/// Disables and masks the timer.
pub fn cntv_stop() {
    CNTV_CTL_EL0.write(CNTV_CTL_EL0::ENABLE::CLEAR + CNTV_CTL_EL0::IMASK::SET);
    barrier::isb(barrier::SY);
}

/// Whether the timer condition is met (CNTV_CTL_EL0.ISTATUS).
pub fn cntv_pending() -> bool {
    CNTV_CTL_EL0.is_set(CNTV_CTL_EL0::ISTATUS)
}
