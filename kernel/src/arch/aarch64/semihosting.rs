//! Arm semihosting (`hlt #0xf000`): how the kernel tells QEMU its exit status.
//!
//! Used only when bootargs say `pagelab.exit=semihosting` (qemu-run.sh passes
//! it together with `-semihosting-config enable=on`); on real hardware the
//! instruction would be an undefined exception.

use core::arch::asm;
use core::sync::atomic::{AtomicBool, Ordering};

static ENABLED: AtomicBool = AtomicBool::new(false);

pub fn enable() {
    ENABLED.store(true, Ordering::Relaxed);
}

pub fn enabled() -> bool {
    ENABLED.load(Ordering::Relaxed)
}

const SYS_WRITE0: u64 = 0x04;
const SYS_EXIT: u64 = 0x18;
const ADP_STOPPED_APPLICATION_EXIT: u64 = 0x20026;

/// # Safety
/// Semihosting must be enabled in the emulator, and `arg` valid for `op`.
unsafe fn call(op: u64, arg: u64) -> u64 {
    let ret;
    // SAFETY: guaranteed by the caller.
    unsafe { asm!("hlt #0xf000", inout("x0") op => ret, in("x1") arg, options(nostack)) };
    ret
}

/// Ends the emulator with `code` as its exit status. Returns only if
/// semihosting is not enabled.
pub fn exit(code: u32) {
    if !enabled() {
        return;
    }
    let block = [ADP_STOPPED_APPLICATION_EXIT, code as u64];
    // SAFETY: enabled; the block lives across the call.
    unsafe { call(SYS_EXIT, block.as_ptr() as u64) };
}

/// Writes a NUL-terminated string to the host's stdout: only for messages
/// that must get out before the UART works.
pub fn write0(s: &[u8]) {
    if enabled() && s.last() == Some(&0) {
        // SAFETY: enabled; s is NUL-terminated.
        unsafe { call(SYS_WRITE0, s.as_ptr() as u64) };
    }
}
