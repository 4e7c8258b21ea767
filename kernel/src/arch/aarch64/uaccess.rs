//! Kernel access to user memory and probes of any address (Linux
//! `asm/uaccess.h`, `asm/extable.h`, `arch/arm64/mm/extable.c`).
//!
//! Every instruction here that may fault on purpose is listed in the
//! exception table (`.ex_table`: faulting instruction, fixup), which the
//! linker collects between `__ex_table_start` and `__ex_table_end`. The EL1
//! synchronous handler in [`super::exception`] resumes such an instruction
//! at its fixup ([`fixup_exception`]); an instruction abort while an exec
//! probe is armed returns to the probe's caller with `x0 = u64::MAX`
//! ([`fixup_exec_probe`]).
//!
//! `copy_from_user`/`copy_to_user` refuse any range that is not wholly
//! below [`USER_TOP`] before touching it ([`access_ok`], as Linux's
//! `access_ok`), and report a fault they could not resolve as
//! [`UserCopyFault`], never a kernel crash.

use core::arch::global_asm;

use super::exception::TrapFrame;
use super::percpu;
use super::regs::USER_TOP;

/// An entry of the exception table: a faulting instruction and where to resume.
#[repr(C)]
#[derive(Clone, Copy)]
struct ExEntry {
    insn: u64,
    fixup: u64,
}

fn search_exception_table(pc: u64) -> Option<u64> {
    let start = crate::sym_addr!(__ex_table_start) as *const ExEntry;
    let end = crate::sym_addr!(__ex_table_end) as *const ExEntry;
    // SAFETY: the linker places only ExEntry records between these symbols.
    let table = unsafe { core::slice::from_raw_parts(start, end.offset_from(start) as usize) };
    table.iter().find(|e| e.insn == pc).map(|e| e.fixup)
}

/// Whether the instruction at `pc` is one the exception table covers.
pub fn in_ex_table(pc: u64) -> bool {
    search_exception_table(pc).is_some()
}

/// An EL1 data abort at an instruction the exception table lists: records
/// the fault for the probe's caller and resumes at the fixup. False if the
/// table does not list it.
pub fn fixup_exception(frame: &mut TrapFrame) -> bool {
    let Some(fixup) = search_exception_table(frame.elr) else { return false };
    percpu::record_fixup_fault(frame.esr, frame.far);
    frame.elr = fixup;
    true
}

/// An EL1 instruction abort while an exec probe is armed: back to the
/// probe's caller (x30) with `x0 = u64::MAX`. False if none was armed.
pub fn fixup_exec_probe(frame: &mut TrapFrame) -> bool {
    if !percpu::take_exec_probe() {
        return false;
    }
    percpu::record_fixup_fault(frame.esr, frame.far);
    frame.elr = frame.x[30];
    frame.x[0] = u64::MAX;
    true
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
// caller with x0 = -1 (see fixup_exec_probe).
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

/// Whether `[addr, addr+len)` lies wholly below [`USER_TOP`] (no overflow).
fn access_ok(addr: u64, len: u64) -> bool {
    addr.checked_add(len).is_some_and(|e| e <= USER_TOP)
}

/// A user copy touched an address it may not (Linux's `-EFAULT`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UserCopyFault;

/// Copies `dst.len()` bytes from user address `src`. Refuses (`Err`) any
/// range that is not wholly below the user top, and any fault the fault path
/// cannot resolve - never a kernel crash.
pub fn copy_from_user(dst: &mut [u8], src: u64) -> Result<(), UserCopyFault> {
    let len = dst.len() as u64;
    if !access_ok(src, len) {
        return Err(UserCopyFault);
    }
    // SAFETY: the range is a user range; faults come back through the fixup.
    let left = unsafe { __copy_from_user(dst.as_mut_ptr(), src, len) };
    if left == 0 { Ok(()) } else { Err(UserCopyFault) }
}

/// Copies `src` to user address `dst`, with the same checks.
pub fn copy_to_user(dst: u64, src: &[u8]) -> Result<(), UserCopyFault> {
    let len = src.len() as u64;
    if !access_ok(dst, len) {
        return Err(UserCopyFault);
    }
    // SAFETY: as above.
    let left = unsafe { __copy_to_user(dst, src.as_ptr(), len) };
    if left == 0 { Ok(()) } else { Err(UserCopyFault) }
}
