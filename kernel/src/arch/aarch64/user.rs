//! Entering EL0 and coming back.
//!
//! A CPU's scheduler loop (`proc::sched`) runs a task at EL0 with
//! [`run_user`], which saves the kernel's callee-saved state, loads the user
//! registers and `eret`s to EL0. The process runs until it makes a system
//! call the kernel answers by ending the run (the agent's "done") or takes
//! an exception the kernel cannot resolve; then [`return_to_kernel`]
//! restores the saved state, so `run_user` returns with the final user
//! registers. Faults the kernel resolves (demand paging) return to EL0
//! through the normal exception exit and the process carries on.
//!
//! The agent itself (`pagelab_agent`) is a few instructions of EL0 code in
//! its own page-aligned section of the kernel image; every process maps that
//! page read-only and executable at EL0.

use core::arch::global_asm;
use core::sync::atomic::Ordering;

use super::exception::TrapFrame;

/// Agent commands (x0 on entry).
pub mod op {
    pub const WRITE: u64 = 1;
    pub const CHECK: u64 = 2;
    pub const TOUCH_READ: u64 = 3;
    pub const TOUCH_WRITE: u64 = 4;
    /// Make a system call: x8 = number, x1..x6 = arguments; result in x0.
    pub const SYSCALL: u64 = 5;
    /// One store of byte x3 every x4 bytes, x2 times (no load first: the
    /// benchmarks' write loop, like the anchor's `strb` loop).
    pub const STORE: u64 = 6;
    /// Fill x3..x30 with x1 + n, SP_EL0 with x1 rounded down to 16, NZCV with
    /// [`SPIN_NZCV`], count x2 (>= 1) down to 0, put NZCV in x2 and end: the
    /// final registers show whether anything (an interrupt) disturbed them.
    pub const SPIN: u64 = 7;
    /// x1 system calls in a row, number in x8, no arguments (the null
    /// syscall benchmark's loop).
    pub const SYSCALL_LOOP: u64 = 8;
    /// Loads byte [x1] and stores the number of loads so far to the u64 at
    /// x2, forever: only a fault (or the scheduler) ends it. The TLB
    /// shootdown test's reader thread.
    pub const READ_LOOP: u64 = 9;
    /// Loads byte [x1] until it is non-zero, then ends (another thread or
    /// process sets it: the preemption test).
    pub const WAIT_FLAG: u64 = 10;
    /// The flags `SPIN` sets before its loop and reports in x2 after it.
    pub const SPIN_NZCV: u64 = 0xa000_0000;
}

/// `svc` immediate the agent uses to say a command is finished (`svc #0`
/// is a system call, as in Linux).
pub const SVC_DONE: u16 = 0xff;

/// Kernel state saved across a trip to EL0 (callee-saved registers, sp, lr).
#[repr(C)]
#[derive(Default)]
pub struct KernelContext {
    regs: [u64; 13], // x19-x30, sp
}

/// What `run_user` hands to the assembly: where to save the kernel state
/// and the user register file to load (and, on return, the final one).
#[repr(C)]
pub struct UserRun {
    pub kctx: KernelContext,
    pub regs: TrapFrame,
}

global_asm!(
    r#"
.section .text.user, "ax"
.balign 65536
.global pagelab_agent
pagelab_agent:
    // x0 = op, x1 = address, x2 = length or count, x3 = byte, x4 = stride.
    cmp     x0, #{write}
    b.eq    1f
    cmp     x0, #{check}
    b.eq    3f
    cmp     x0, #{touch_read}
    b.eq    5f
    cmp     x0, #{touch_write}
    b.eq    7f
    cmp     x0, #{syscall}
    b.eq    9f
    cmp     x0, #{store}
    b.eq    11f
    cmp     x0, #{spin}
    b.eq    13f
    cmp     x0, #{syscall_loop}
    b.eq    15f
    cmp     x0, #{read_loop}
    b.eq    17f
    cmp     x0, #{wait_flag}
    b.eq    19f
    mov     x0, #-1
    svc     #0xff
1:  cbz     x2, 2f                  // write: every byte of [x1, x1+x2) = w3
    strb    w3, [x1], #1
    sub     x2, x2, #1
    b       1b
2:  mov     x0, #0
    svc     #0xff
3:  cbz     x2, 2b                  // check: every byte == w3, else x0=1, x1=addr, x5=value
    ldrb    w5, [x1]
    cmp     w5, w3
    b.ne    4f
    add     x1, x1, #1
    sub     x2, x2, #1
    b       3b
4:  mov     x0, #1
    svc     #0xff
5:  cbz     x2, 2b                  // touch read: one load every x4 bytes, x2 times
    ldrb    w5, [x1]
    add     x1, x1, x4
    sub     x2, x2, #1
    b       5b
7:  cbz     x2, 2b                  // touch write: store back the byte that is there
    ldrb    w5, [x1]
    strb    w5, [x1]
    add     x1, x1, x4
    sub     x2, x2, #1
    b       7b
9:  mov     x0, x1                  // syscall: arguments shift down one register
    mov     x1, x2
    mov     x2, x3
    mov     x3, x4
    mov     x4, x5
    mov     x5, x6
    svc     #0
    mov     x1, x0                  // the result, reported as x1 of "done"
    mov     x0, #2
    svc     #0xff
11: cbz     x2, 2b                  // store: one strb of w3 every x4 bytes, x2 times
    strb    w3, [x1]
    add     x1, x1, x4
    sub     x2, x2, #1
    b       11b
13: // spin: sp = x1 & ~15, x3..x30 = x1 + n, NZCV = N|C, then x2 turns of a
    // loop that leaves the flags alone; x2 = NZCV at the end.
    and     x0, x1, #~0xf
    mov     sp, x0
    mov     x0, #{spin_nzcv}
    msr     nzcv, x0
    add     x3, x1, #3
    add     x4, x1, #4
    add     x5, x1, #5
    add     x6, x1, #6
    add     x7, x1, #7
    add     x8, x1, #8
    add     x9, x1, #9
    add     x10, x1, #10
    add     x11, x1, #11
    add     x12, x1, #12
    add     x13, x1, #13
    add     x14, x1, #14
    add     x15, x1, #15
    add     x16, x1, #16
    add     x17, x1, #17
    add     x18, x1, #18
    add     x19, x1, #19
    add     x20, x1, #20
    add     x21, x1, #21
    add     x22, x1, #22
    add     x23, x1, #23
    add     x24, x1, #24
    add     x25, x1, #25
    add     x26, x1, #26
    add     x27, x1, #27
    add     x28, x1, #28
    add     x29, x1, #29
    add     x30, x1, #30
14: sub     x2, x2, #1
    cbnz    x2, 14b
    mrs     x2, nzcv
    mov     x0, #0
    svc     #0xff
15: mov     x9, x1                  // syscall loop: x1 times svc #0 with x8
16: cbz     x9, 2b
    svc     #0
    sub     x9, x9, #1
    b       16b
17: mov     x9, #0                  // read loop: load [x1], count to [x2], forever
18: ldrb    w5, [x1]
    add     x9, x9, #1
    str     x9, [x2]
    b       18b
19: ldrb    w5, [x1]                // wait flag: until byte [x1] != 0
    cbz     w5, 19b
    b       2b
.balign 65536
.global pagelab_agent_end
pagelab_agent_end:

.section .text, "ax"
// x0 = &UserRun. Saves the kernel context, loads the user frame, erets.
.global __run_user
__run_user:
    stp     x19, x20, [x0, #0]
    stp     x21, x22, [x0, #16]
    stp     x23, x24, [x0, #32]
    stp     x25, x26, [x0, #48]
    stp     x27, x28, [x0, #64]
    stp     x29, x30, [x0, #80]
    mov     x1, sp
    str     x1, [x0, #96]
    msr     tpidrro_el0, xzr
    add     x0, x0, #104            // the TrapFrame
    ldp     x22, x23, [x0, #16 * 16]
    ldr     x21, [x0, #16 * 15 + 8]
    msr     elr_el1, x22
    msr     spsr_el1, x23
    msr     sp_el0, x21
    ldp     x2, x3, [x0, #16 * 1]
    ldp     x4, x5, [x0, #16 * 2]
    ldp     x6, x7, [x0, #16 * 3]
    ldp     x8, x9, [x0, #16 * 4]
    ldp     x10, x11, [x0, #16 * 5]
    ldp     x12, x13, [x0, #16 * 6]
    ldp     x14, x15, [x0, #16 * 7]
    ldp     x16, x17, [x0, #16 * 8]
    ldp     x18, x19, [x0, #16 * 9]
    ldp     x20, x21, [x0, #16 * 10]
    ldp     x22, x23, [x0, #16 * 11]
    ldp     x24, x25, [x0, #16 * 12]
    ldp     x26, x27, [x0, #16 * 13]
    ldp     x28, x29, [x0, #16 * 14]
    ldr     x30, [x0, #16 * 15]
    ldp     x0, x1, [x0, #16 * 0]
    eret

// x0 = &UserRun (its kctx). Restores the kernel context saved by
// __run_user and returns from it.
.global __return_to_kernel
__return_to_kernel:
    ldp     x19, x20, [x0, #0]
    ldp     x21, x22, [x0, #16]
    ldp     x23, x24, [x0, #32]
    ldp     x25, x26, [x0, #48]
    ldp     x27, x28, [x0, #64]
    ldp     x29, x30, [x0, #80]
    ldr     x1, [x0, #96]
    mov     sp, x1
    ret
"#,
    write = const op::WRITE,
    check = const op::CHECK,
    touch_read = const op::TOUCH_READ,
    touch_write = const op::TOUCH_WRITE,
    syscall = const op::SYSCALL,
    store = const op::STORE,
    spin = const op::SPIN,
    syscall_loop = const op::SYSCALL_LOOP,
    read_loop = const op::READ_LOOP,
    wait_flag = const op::WAIT_FLAG,
    spin_nzcv = const op::SPIN_NZCV,
);

unsafe extern "C" {
    fn __run_user(run: *mut UserRun);
    fn __return_to_kernel(run: *mut UserRun) -> !;
    pub static pagelab_agent: u8;
    pub static pagelab_agent_end: u8;
}

/// Runs EL0 code with `run.regs` until it ends the run; returns with the
/// final user registers in `run.regs`.
///
/// # Safety
/// TTBR0 must hold the address space `run.regs` refers to; `run.regs.spsr`
/// must name EL0.
pub unsafe fn run_user(run: &mut UserRun) {
    // Where return_to_kernel finds this run: per CPU, so every CPU can run
    // a process of its own.
    let me = super::percpu::this_cpu();
    me.current_run.store(run as *mut UserRun as u64, Ordering::Release);
    // SAFETY: guaranteed by the caller; __run_user returns through
    // __return_to_kernel with every callee-saved register restored.
    unsafe { __run_user(run as *mut UserRun) };
    me.current_run.store(0, Ordering::Release);
}

/// Ends the current EL0 run: copies `frame` into the run's user registers
/// and resumes the kernel after `run_user`. Called from the EL0 trap path
/// only, with nothing on the stack that needs dropping.
pub fn return_to_kernel(frame: &TrapFrame) -> ! {
    // SAFETY: current_run was set by run_user for the run in progress on
    // this CPU (an EL0 exception is taken on the CPU that ran EL0).
    unsafe {
        let run = super::percpu::this_cpu().current_run.load(Ordering::Acquire) as *mut UserRun;
        assert!(!run.is_null(), "EL0 exception without a run in progress");
        (*run).regs = *frame;
        __return_to_kernel(run)
    }
}

/// The agent code's kernel VA range.
pub fn agent_range() -> (u64, u64) {
    (core::ptr::addr_of!(pagelab_agent) as u64, core::ptr::addr_of!(pagelab_agent_end) as u64)
}
