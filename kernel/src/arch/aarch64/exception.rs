//! Exception vectors, the saved register frame and one named handler per
//! vector entry (Linux `arch/arm64/kernel/entry.S` and `entry-common.c`).
//!
//! Every vector entry saves the full general-purpose state into a
//! [`TrapFrame`] on the kernel stack and calls its own handler,
//! `<source>_64_<kind>_handler` with the source as Linux names it: `el1t`
//! (EL1 on SP_EL0), `el1h` (EL1 on SP_EL1), `el0t_64`, `el0t_32`. Entries
//! taken from EL1 with SP_EL1 first check for a kernel stack overflow the
//! way Linux does (stacks never cross bit 16, guards always have it set)
//! and switch to an emergency stack to report it.
//!
//! These handlers are where arch calls up, and the only place:
//! - IRQs (from EL1 on either stack, or from EL0) go to `crate::irq::handle`
//!   and return to where they struck; one from EL0 then passes the
//!   scheduler's preemption point `crate::proc::sched::irq_from_el0`.
//! - A synchronous exception from EL0 is an abort
//!   (`crate::proc::do_el0_abort`, the fault path into mm), an `svc`
//!   (`crate::proc::do_el0_svc`, the system-call layer), or anything else,
//!   which ends the EL0 run.
//! - A synchronous exception from EL1 that [`super::uaccess`] expects is
//!   recovered: a uaccess touching a user page that is not populated yet is
//!   filled like an EL0 fault (`crate::proc::handle_uaccess_fault`) and
//!   retried; otherwise the exception table's fixup runs.
//!
//! Everything else (the `unexpected` vectors: FIQ, SError, AArch32, EL1 on
//! SP_EL0 synchronous) prints a readable report and panics.

use core::arch::global_asm;
use core::fmt;

use super::esr::{Esr, ExceptionClass};
use super::regs::USER_TOP;
use super::uaccess;

/// Registers saved on every exception (288 bytes, 16-byte aligned).
#[repr(C)]
#[derive(Clone, Copy, Default)]
pub struct TrapFrame {
    pub x: [u64; 31],
    pub sp_el0: u64,
    pub elr: u64,
    pub spsr: u64,
    pub esr: u64,
    pub far: u64,
}

pub const FRAME_SIZE: usize = core::mem::size_of::<TrapFrame>();
const _: () = assert!(FRAME_SIZE == 288);

global_asm!(
    r#"
.macro SAVE_FRAME
    stp     x0, x1, [sp, #16 * 0]
    stp     x2, x3, [sp, #16 * 1]
    stp     x4, x5, [sp, #16 * 2]
    stp     x6, x7, [sp, #16 * 3]
    stp     x8, x9, [sp, #16 * 4]
    stp     x10, x11, [sp, #16 * 5]
    stp     x12, x13, [sp, #16 * 6]
    stp     x14, x15, [sp, #16 * 7]
    stp     x16, x17, [sp, #16 * 8]
    stp     x18, x19, [sp, #16 * 9]
    stp     x20, x21, [sp, #16 * 10]
    stp     x22, x23, [sp, #16 * 11]
    stp     x24, x25, [sp, #16 * 12]
    stp     x26, x27, [sp, #16 * 13]
    stp     x28, x29, [sp, #16 * 14]
    mrs     x21, sp_el0
    stp     x30, x21, [sp, #16 * 15]
    mrs     x22, elr_el1
    mrs     x23, spsr_el1
    stp     x22, x23, [sp, #16 * 16]
    mrs     x24, esr_el1
    mrs     x25, far_el1
    stp     x24, x25, [sp, #16 * 17]
.endm

.macro RESTORE_FRAME_AND_ERET
    ldp     x22, x23, [sp, #16 * 16]
    ldp     x30, x21, [sp, #16 * 15]
    msr     elr_el1, x22
    msr     spsr_el1, x23
    msr     sp_el0, x21
    ldp     x0, x1, [sp, #16 * 0]
    ldp     x2, x3, [sp, #16 * 1]
    ldp     x4, x5, [sp, #16 * 2]
    ldp     x6, x7, [sp, #16 * 3]
    ldp     x8, x9, [sp, #16 * 4]
    ldp     x10, x11, [sp, #16 * 5]
    ldp     x12, x13, [sp, #16 * 6]
    ldp     x14, x15, [sp, #16 * 7]
    ldp     x16, x17, [sp, #16 * 8]
    ldp     x18, x19, [sp, #16 * 9]
    ldp     x20, x21, [sp, #16 * 10]
    ldp     x22, x23, [sp, #16 * 11]
    ldp     x24, x25, [sp, #16 * 12]
    ldp     x26, x27, [sp, #16 * 13]
    ldp     x28, x29, [sp, #16 * 14]
    add     sp, sp, #{frame}
    eret
.endm

// A vector entry on the current stack.
.macro VENTRY name
.balign 0x80
    sub     sp, sp, #{frame}
    b       \name
.endm

// A vector entry from EL1 on SP_EL1: check for a stack overflow first.
.macro VENTRY_EL1H name
.balign 0x80
    sub     sp, sp, #{frame}
    add     sp, sp, x0              // sp' = sp + x0
    sub     x0, sp, x0              // x0 = sp
    tbnz    x0, #{guard_bit}, 9f    // the frame would sit in a guard
    sub     x0, sp, x0              // x0 = x0
    sub     sp, sp, x0              // sp = sp
    b       \name
9:  ldr     x0, =__overflow_stack_top
    mov     sp, x0
    mrs     x0, esr_el1
    mrs     x1, far_el1
    mrs     x2, elr_el1
    b       kernel_stack_overflow
.endm

// The entry code of vector NAME: save the frame, call NAME_handler with
// it, restore and return.
.macro ENTRY_BODY name
\name:
    SAVE_FRAME
    mov     x0, sp
    bl      \name\()_handler
    RESTORE_FRAME_AND_ERET
.endm

.section .text.vectors, "ax"
.balign 2048
.global exception_vectors
exception_vectors:
    VENTRY el1t_64_sync
    VENTRY el1t_64_irq
    VENTRY el1t_64_fiq
    VENTRY el1t_64_error
    VENTRY_EL1H el1h_64_sync
    VENTRY_EL1H el1h_64_irq
    VENTRY_EL1H el1h_64_fiq
    VENTRY_EL1H el1h_64_error
    VENTRY el0t_64_sync
    VENTRY el0t_64_irq
    VENTRY el0t_64_fiq
    VENTRY el0t_64_error
    VENTRY el0t_32_sync
    VENTRY el0t_32_irq
    VENTRY el0t_32_fiq
    VENTRY el0t_32_error
.balign 0x80
.ltorg

.section .text, "ax"
    ENTRY_BODY el1t_64_sync
    ENTRY_BODY el1t_64_irq
    ENTRY_BODY el1t_64_fiq
    ENTRY_BODY el1t_64_error
    ENTRY_BODY el1h_64_sync
    ENTRY_BODY el1h_64_irq
    ENTRY_BODY el1h_64_fiq
    ENTRY_BODY el1h_64_error
    ENTRY_BODY el0t_64_sync
    ENTRY_BODY el0t_64_irq
    ENTRY_BODY el0t_64_fiq
    ENTRY_BODY el0t_64_error
    ENTRY_BODY el0t_32_sync
    ENTRY_BODY el0t_32_irq
    ENTRY_BODY el0t_32_fiq
    ENTRY_BODY el0t_32_error

.section .bss
.balign 16
__overflow_stack:
    .space 16384
__overflow_stack_top:
"#,
    frame = const FRAME_SIZE,
    guard_bit = const super::boot::STACK_GUARD_BIT,
);

impl fmt::Display for TrapFrame {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for i in (0..31).step_by(2) {
            if i + 1 < 31 {
                writeln!(f, "  x{:<2} {:#018x}  x{:<2} {:#018x}", i, self.x[i], i + 1, self.x[i + 1])?;
            } else {
                writeln!(f, "  x{:<2} {:#018x}  sp_el0 {:#018x}", i, self.x[i], self.sp_el0)?;
            }
        }
        write!(f, "  elr {:#018x}  spsr {:#010x}", self.elr, self.spsr)
    }
}

/// IRQ from EL1: handled, then back to where it struck.
#[unsafe(no_mangle)]
extern "C" fn el1h_64_irq_handler(_frame: &mut TrapFrame) {
    crate::irq::handle(false);
}

/// IRQ from EL1 on SP_EL0: as from SP_EL1.
#[unsafe(no_mangle)]
extern "C" fn el1t_64_irq_handler(_frame: &mut TrapFrame) {
    crate::irq::handle(false);
}

/// IRQ from EL0: handled, then the scheduler's preemption point (which
/// may not return).
#[unsafe(no_mangle)]
extern "C" fn el0t_64_irq_handler(frame: &mut TrapFrame) {
    crate::irq::handle(true);
    crate::proc::sched::irq_from_el0(frame);
}

/// Synchronous exception from EL1: only what uaccess and the probes
/// expect is recovered.
#[unsafe(no_mangle)]
extern "C" fn el1h_64_sync_handler(frame: &mut TrapFrame) {
    let esr = Esr(frame.esr);
    match esr.ec() {
        ExceptionClass::DataAbortSameEl => {
            // A uaccess touching a user page that is not populated yet: fill
            // it like an EL0 fault and retry the instruction.
            if uaccess::in_ex_table(frame.elr)
                && frame.far < USER_TOP
                && crate::proc::handle_uaccess_fault(crate::mm::addr::VirtAddr::new(frame.far), esr)
            {
                return;
            }
            if uaccess::fixup_exception(frame) {
                return;
            }
        }
        ExceptionClass::InstructionAbortSameEl if uaccess::fixup_exec_probe(frame) => return,
        _ => {}
    }
    unexpected(frame, "EL1 with SP_EL1", "Synchronous");
}

/// Synchronous exception from EL0 (AArch64): an abort goes to the fault
/// path, `svc` to the system-call layer; anything else ends the EL0 run.
#[unsafe(no_mangle)]
extern "C" fn el0t_64_sync_handler(frame: &mut TrapFrame) {
    let esr = Esr(frame.esr);
    match esr.ec() {
        ExceptionClass::DataAbortLowerEl | ExceptionClass::InstructionAbortLowerEl => {
            crate::proc::do_el0_abort(frame, esr)
        }
        ExceptionClass::Svc64 => crate::proc::do_el0_svc(frame, esr),
        _ => super::user::return_to_kernel(frame),
    }
}

/// The vectors pagelab never expects (Linux's `UNHANDLED`): a report and a
/// panic.
macro_rules! unhandled {
    ($($name:ident: $source:literal, $kind:literal;)*) => {$(
        #[unsafe(no_mangle)]
        extern "C" fn $name(frame: &mut TrapFrame) {
            unexpected(frame, $source, $kind);
        }
    )*};
}

unhandled! {
    el1t_64_sync_handler: "EL1 with SP_EL0", "Synchronous";
    el1t_64_fiq_handler: "EL1 with SP_EL0", "FIQ";
    el1t_64_error_handler: "EL1 with SP_EL0", "SError";
    el1h_64_fiq_handler: "EL1 with SP_EL1", "FIQ";
    el1h_64_error_handler: "EL1 with SP_EL1", "SError";
    el0t_64_fiq_handler: "EL0 AArch64", "FIQ";
    el0t_64_error_handler: "EL0 AArch64", "SError";
    el0t_32_sync_handler: "EL0 AArch32", "Synchronous";
    el0t_32_irq_handler: "EL0 AArch32", "IRQ";
    el0t_32_fiq_handler: "EL0 AArch32", "FIQ";
    el0t_32_error_handler: "EL0 AArch32", "SError";
}

/// Prints on the fatal paths even if this CPU faulted while holding the
/// console lock (say, in the UART driver itself).
macro_rules! fatal_println {
    ($($arg:tt)*) => { crate::drivers::uart::emergency_print(format_args!("{}\n", format_args!($($arg)*))) };
}

fn unexpected(frame: &TrapFrame, source: &str, kind: &str) -> ! {
    let esr = Esr(frame.esr);
    fatal_println!("\n*** unexpected exception: {kind} from {source} ***");
    fatal_println!("  {esr}");
    let far_valid = esr.ec().is_abort() && !esr.fnv();
    fatal_println!("  FAR {:#018x}{}", frame.far, if far_valid { "" } else { " (not valid for this exception)" });
    fatal_println!("{frame}");
    crate::panic::print_backtrace_from(frame.x[29], frame.elr);
    panic!("unexpected {kind} exception from {source}: {esr}");
}

/// Reached on the emergency stack when an exception frame would land in a
/// stack guard.
#[unsafe(no_mangle)]
extern "C" fn kernel_stack_overflow(esr: u64, far: u64, elr: u64) -> ! {
    fatal_println!("\n*** kernel stack overflow ***");
    fatal_println!("  {}  FAR {far:#018x}  ELR {elr:#018x}", Esr(esr));
    panic!("kernel stack overflow at {elr:#x} (FAR {far:#x})");
}
