//! Exception vectors, the saved register frame and the Rust trap handler.
//!
//! All 16 vector entries save the full general-purpose state into a
//! [`TrapFrame`] on the kernel stack and call [`trap_handler`]. Entries taken
//! from EL1 with SP_EL1 first check for a kernel stack overflow the way Linux
//! does (stacks never cross bit 16, guards always have it set) and switch to
//! an emergency stack to report it.
//!
//! IRQs (from EL1 or EL0) go to `crate::irq::handle` and return to where
//! they struck.
//!
//! Faults the kernel expects are recovered here:
//! - an instruction listed in the exception table (`.ex_table`: faulting
//!   instruction, fixup) resumes at its fixup: probes and, later, uaccess;
//! - an instruction abort while an exec probe is armed returns to the
//!   probe's caller with `x0 = u64::MAX`.
//!
//! Everything else prints a readable report and panics.

use core::arch::global_asm;
use core::fmt;

use super::esr::{Esr, ExceptionClass};
use super::percpu;

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

/// Which vector entry was taken.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct VectorKind(pub u64);

impl VectorKind {
    pub fn source(self) -> &'static str {
        ["EL1 with SP_EL0", "EL1 with SP_EL1", "EL0 AArch64", "EL0 AArch32"][(self.0 >> 2) as usize & 3]
    }
    pub fn kind(self) -> &'static str {
        ["Synchronous", "IRQ", "FIQ", "SError"][(self.0 & 3) as usize]
    }
}

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
.macro VENTRY kind
.balign 0x80
    sub     sp, sp, #{frame}
    b       entry_\kind
.endm

// A vector entry from EL1 on SP_EL1: check for a stack overflow first.
.macro VENTRY_EL1H kind
.balign 0x80
    sub     sp, sp, #{frame}
    add     sp, sp, x0              // sp' = sp + x0
    sub     x0, sp, x0              // x0 = sp
    tbnz    x0, #{guard_bit}, 9f    // the frame would sit in a guard
    sub     x0, sp, x0              // x0 = x0
    sub     sp, sp, x0              // sp = sp
    b       entry_\kind
9:  ldr     x0, =__overflow_stack_top
    mov     sp, x0
    mrs     x0, esr_el1
    mrs     x1, far_el1
    mrs     x2, elr_el1
    b       kernel_stack_overflow
.endm

.macro ENTRY_BODY kind
entry_\kind:
    SAVE_FRAME
    mov     x0, sp
    mov     x1, #\kind
    b       exception_common
.endm

.section .text.vectors, "ax"
.balign 2048
.global exception_vectors
exception_vectors:
    VENTRY 0
    VENTRY 1
    VENTRY 2
    VENTRY 3
    VENTRY_EL1H 4
    VENTRY_EL1H 5
    VENTRY_EL1H 6
    VENTRY_EL1H 7
    VENTRY 8
    VENTRY 9
    VENTRY 10
    VENTRY 11
    VENTRY 12
    VENTRY 13
    VENTRY 14
    VENTRY 15
.balign 0x80
.ltorg

.section .text, "ax"
    ENTRY_BODY 0
    ENTRY_BODY 1
    ENTRY_BODY 2
    ENTRY_BODY 3
    ENTRY_BODY 4
    ENTRY_BODY 5
    ENTRY_BODY 6
    ENTRY_BODY 7
    ENTRY_BODY 8
    ENTRY_BODY 9
    ENTRY_BODY 10
    ENTRY_BODY 11
    ENTRY_BODY 12
    ENTRY_BODY 13
    ENTRY_BODY 14
    ENTRY_BODY 15

.section .text, "ax"
exception_common:
    bl      trap_handler
    RESTORE_FRAME_AND_ERET

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

/// An entry of the exception table: a faulting instruction and where to resume.
#[repr(C)]
#[derive(Clone, Copy)]
struct ExEntry {
    insn: u64,
    fixup: u64,
}

fn find_fixup(pc: u64) -> Option<u64> {
    let start = crate::sym_addr!(__ex_table_start) as *const ExEntry;
    let end = crate::sym_addr!(__ex_table_end) as *const ExEntry;
    // SAFETY: the linker places only ExEntry records between these symbols.
    let table = unsafe { core::slice::from_raw_parts(start, end.offset_from(start) as usize) };
    table.iter().find(|e| e.insn == pc).map(|e| e.fixup)
}

/// Called from the vectors with the saved frame.
#[unsafe(no_mangle)]
extern "C" fn trap_handler(frame: &mut TrapFrame, kind: u64) {
    let vk = VectorKind(kind);
    if matches!(kind, 1 | 5 | 9) {
        // IRQ from EL1 (either stack) or from EL0: handle and return to
        // where it struck, through the normal exception exit.
        crate::irq::handle(kind == 9);
        if kind == 9 {
            // The scheduler's preemption point (may not return).
            crate::proc::sched::irq_from_el0(frame);
        }
        return;
    }
    let esr = Esr(frame.esr);
    if kind == 4 {
        // Synchronous, from EL1.
        if esr.ec() == ExceptionClass::DataAbortSameEl {
            // A uaccess touching a user page that is not populated yet: fill
            // it like an EL0 fault and retry the instruction.
            if find_fixup(frame.elr).is_some()
                && frame.far < crate::mm::mmap::USER_TOP
                && crate::proc::handle_uaccess_fault(frame.far, esr)
            {
                return;
            }
            if let Some(fixup) = find_fixup(frame.elr) {
                percpu::record_fixup_fault(frame.esr, frame.far);
                frame.elr = fixup;
                return;
            }
        }
        if esr.ec() == ExceptionClass::InstructionAbortSameEl && percpu::take_exec_probe() {
            percpu::record_fixup_fault(frame.esr, frame.far);
            frame.elr = frame.x[30];
            frame.x[0] = u64::MAX;
            return;
        }
    }
    if kind == 8 {
        // Synchronous, from EL0 (AArch64).
        crate::proc::handle_el0_sync(frame);
        return;
    }
    report_and_panic(frame, vk);
}

/// Prints on the fatal paths even if this CPU faulted while holding the
/// console lock (say, in the UART driver itself).
macro_rules! fatal_println {
    ($($arg:tt)*) => { crate::drivers::uart::emergency_print(format_args!("{}\n", format_args!($($arg)*))) };
}

fn report_and_panic(frame: &TrapFrame, vk: VectorKind) -> ! {
    let esr = Esr(frame.esr);
    fatal_println!("\n*** unexpected exception: {} from {} ***", vk.kind(), vk.source());
    fatal_println!("  {esr}");
    let far_valid = esr.ec().is_abort() && !esr.fnv();
    fatal_println!("  FAR {:#018x}{}", frame.far, if far_valid { "" } else { " (not valid for this exception)" });
    fatal_println!("{frame}");
    crate::panic::print_backtrace_from(frame.x[29], frame.elr);
    panic!("unexpected {} exception from {}: {}", vk.kind(), vk.source(), esr);
}

/// Reached on the emergency stack when an exception frame would land in a
/// stack guard.
#[unsafe(no_mangle)]
extern "C" fn kernel_stack_overflow(esr: u64, far: u64, elr: u64) -> ! {
    fatal_println!("\n*** kernel stack overflow ***");
    fatal_println!("  {}  FAR {far:#018x}  ELR {elr:#018x}", Esr(esr));
    panic!("kernel stack overflow at {elr:#x} (FAR {far:#x})");
}

// Probes in the exception table. They return the loaded byte or `u64::MAX`
// for a read, 0 or `u64::MAX` for a write.
unsafe extern "C" {
    fn __probe_read_u8(addr: u64) -> u64;
    fn __probe_write_u8(addr: u64, val: u8) -> u64;
    fn __probe_exec(addr: u64) -> u64;
}

global_asm!(
    r#"
.section .text, "ax"
.global __probe_read_u8
__probe_read_u8:
1:  ldrb    w0, [x0]
    ret
2:  mov     x0, #-1
    ret
.pushsection .ex_table, "a"
    .quad 1b, 2b
.popsection

.global __probe_write_u8
__probe_write_u8:
1:  strb    w1, [x0]
    mov     x0, #0
    ret
2:  mov     x0, #-1
    ret
.pushsection .ex_table, "a"
    .quad 1b, 2b
.popsection

// Branches to x0 with x0 = x0; an instruction abort there comes back to our
// caller with x0 = -1 (see trap_handler).
.global __probe_exec
__probe_exec:
    br      x0
"#
);

/// Reads one byte at `addr`, turning a data abort into `Err((esr, far))`.
pub fn probe_read_u8(addr: u64) -> Result<u8, (u64, u64)> {
    percpu::clear_fixup_fault();
    // SAFETY: the load is covered by the exception table; a fault returns MAX.
    let v = unsafe { __probe_read_u8(addr) };
    if v == u64::MAX { Err(percpu::last_fixup_fault()) } else { Ok(v as u8) }
}

/// Writes one byte at `addr`, turning a data abort into `Err((esr, far))`.
///
/// # Safety
/// If the write succeeds it really happens: `addr` must be memory whose
/// change is harmless.
pub unsafe fn probe_write_u8(addr: u64, val: u8) -> Result<(), (u64, u64)> {
    percpu::clear_fixup_fault();
    // SAFETY: the store is covered by the exception table.
    let v = unsafe { __probe_write_u8(addr, val) };
    if v == u64::MAX { Err(percpu::last_fixup_fault()) } else { Ok(()) }
}

/// Branches to `addr`, which must hold a `ret` if it is executable at all.
/// Returns `Ok(())` if it ran, `Err((esr, far))` on an instruction abort.
///
/// # Safety
/// `addr` must contain code that returns immediately if it executes.
pub unsafe fn probe_exec(addr: u64) -> Result<(), (u64, u64)> {
    percpu::clear_fixup_fault();
    percpu::arm_exec_probe();
    // SAFETY: per the contract, either `ret` runs or the abort is recovered.
    let v = unsafe { __probe_exec(addr) };
    percpu::take_exec_probe();
    if v == u64::MAX { Err(percpu::last_fixup_fault()) } else { Ok(()) }
}

// copy_from_user / copy_to_user: byte loops whose every user access is in
// the exception table; they return the number of bytes NOT copied. The user
// side is accessed with LDTRB/STTRB, the unprivileged forms: they are
// checked with EL0's permissions, so PSTATE.PAN (which blocks plain EL1
// accesses to EL0-accessible pages) does not apply to them and stays set,
// and a page EL0 cannot read or write cannot be copied either.
global_asm!(
    r#"
.section .text, "ax"
.global __copy_from_user
__copy_from_user:                   // x0 = dst (kernel), x1 = src (user), x2 = len
    cbz     x2, 2f
1:  ldtrb   w3, [x1]
    strb    w3, [x0], #1
    add     x1, x1, #1
    sub     x2, x2, #1
    cbnz    x2, 1b
2:  mov     x0, x2
    ret
3:  mov     x0, x2
    ret
.pushsection .ex_table, "a"
    .quad 1b, 3b
.popsection

.global __copy_to_user
__copy_to_user:                     // x0 = dst (user), x1 = src (kernel), x2 = len
    cbz     x2, 2f
1:  ldrb    w3, [x1], #1
4:  sttrb   w3, [x0]
    add     x0, x0, #1
    sub     x2, x2, #1
    cbnz    x2, 1b
2:  mov     x0, x2
    ret
3:  mov     x0, x2
    ret
.pushsection .ex_table, "a"
    .quad 4b, 3b
.popsection
"#
);

unsafe extern "C" {
    fn __copy_from_user(dst: *mut u8, src: u64, len: u64) -> u64;
    fn __copy_to_user(dst: u64, src: *const u8, len: u64) -> u64;
}

/// Whether `[addr, addr+len)` lies wholly in the user half (no overflow).
fn user_range_ok(addr: u64, len: u64) -> bool {
    addr.checked_add(len).is_some_and(|e| e <= crate::mm::mmap::USER_TOP)
}

/// A user copy touched an address it may not (Linux's `-EFAULT`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UserCopyFault;

/// Copies `dst.len()` bytes from user address `src`. Refuses (`Err`) any
/// range that is not wholly below the user top, and any fault the fault path
/// cannot resolve - never a kernel crash.
pub fn copy_from_user(dst: &mut [u8], src: u64) -> Result<(), UserCopyFault> {
    let len = dst.len() as u64;
    if !user_range_ok(src, len) {
        return Err(UserCopyFault);
    }
    // SAFETY: the range is a user range; faults come back through the fixup.
    let left = unsafe { __copy_from_user(dst.as_mut_ptr(), src, len) };
    if left == 0 { Ok(()) } else { Err(UserCopyFault) }
}

/// Copies `src` to user address `dst`, with the same checks.
pub fn copy_to_user(dst: u64, src: &[u8]) -> Result<(), UserCopyFault> {
    let len = src.len() as u64;
    if !user_range_ok(dst, len) {
        return Err(UserCopyFault);
    }
    // SAFETY: as above.
    let left = unsafe { __copy_to_user(dst, src.as_ptr(), len) };
    if left == 0 { Ok(()) } else { Err(UserCopyFault) }
}
