//! Panic handler: message, location, a frame-pointer backtrace, then QEMU
//! exits with failure (semihosting) or the machine powers off.

use core::panic::PanicInfo;
use core::sync::atomic::{AtomicBool, Ordering};

use crate::drivers::uart::emergency_print;

static PANICKING: AtomicBool = AtomicBool::new(false);

/// Exit status for a kernel panic.
pub const PANIC_EXIT_CODE: u32 = 101;

fn is_kernel_stack(fp: u64) -> bool {
    let lo = crate::sym_addr!(__stack_guard0);
    let hi = crate::sym_addr!(__stacks_end);
    // The exception vectors' emergency stack lives in .bss.
    let (blo, bhi) = (crate::sym_addr!(__bss_start), crate::sym_addr!(__bss_end));
    (fp >= lo && fp + 16 <= hi) || (fp >= blo && fp + 16 <= bhi)
}

/// Prints the chain of frame records starting at `fp`; `pc` first if non-zero.
/// Symbolize with `llvm-addr2line -e <kernel ELF> ADDR...` (qemu-run.sh does
/// this for you when a run fails).
pub fn print_backtrace_from(mut fp: u64, pc: u64) {
    emergency_print(format_args!("backtrace:\n"));
    if pc != 0 {
        emergency_print(format_args!("  #0  {pc:#018x}\n"));
    }
    let mut n = 1;
    while fp != 0 && fp.is_multiple_of(16) && is_kernel_stack(fp) && n < 32 {
        // SAFETY: fp points into a kernel stack (checked above); AAPCS64 frame
        // records are [previous fp, return address].
        let (next, lr) = unsafe { (*(fp as *const u64), *((fp + 8) as *const u64)) };
        if lr == 0 {
            break;
        }
        emergency_print(format_args!("  #{n:<2} {:#018x}\n", lr.wrapping_sub(4)));
        if next <= fp {
            break;
        }
        fp = next;
        n += 1;
    }
}

#[panic_handler]
fn panic(info: &PanicInfo) -> ! {
    crate::arch::cpu::local_irq_disable();
    if PANICKING.swap(true, Ordering::SeqCst) {
        // A panic while panicking: just stop.
        crate::kmain::exit(PANIC_EXIT_CODE);
    }
    let cpu = crate::arch::percpu::this_cpu().id;
    emergency_print(format_args!("\n!!! KERNEL PANIC on cpu{cpu}: {}\n", info.message()));
    if let Some(loc) = info.location() {
        emergency_print(format_args!("    at {}:{}:{}\n", loc.file(), loc.line(), loc.column()));
    }
    print_backtrace_from(crate::arch::cpu::frame_pointer(), 0);
    // If the UART was never set up, say at least this much through semihosting.
    crate::arch::semihosting::write0(b"pagelab: kernel panic (see console output)\n\0");
    crate::kmain::exit(PANIC_EXIT_CODE)
}
