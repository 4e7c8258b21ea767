//! The scheduler: EL0 tasks on every CPU, preempted at EL0 by the tick.
//!
//! A [`Task`] is one thread of a process: its saved EL0 registers, the CPU
//! it may run on (any, or one) and its state. Every CPU runs the same loop
//! ([`run_one`]): take the first runnable task it may run from the global
//! run queue, switch TTBR0 to its process, `eret` to EL0 and come back when
//! the task ends its command, exits, takes a fault the kernel cannot
//! resolve, or is preempted.
//!
//! **Where tasks switch.** The kernel itself is not preemptible: system
//! calls and faults run to completion, IRQs masked, on the CPU that took
//! them (nothing in pagelab sleeps in the kernel). So a task is only ever
//! switched while it is at EL0: a tick (or an SGI) that interrupts EL0 on a
//! CPU whose time slice is used up, with another task waiting for that
//! CPU, ends the CPU's run of the task exactly like a fault that cannot be
//! resolved would, with its registers saved; the task goes to the back of
//! the queue and resumes later, on any CPU it may run on, where it was.
//! Because no task is ever suspended inside the kernel, tasks need no
//! kernel stacks of their own: each CPU's loop runs on that CPU's stack.
//!
//! **Who waits.** The console (or a test) starts a task and calls [`wait`],
//! which runs the same loop on its own CPU until the task is done, so
//! `--smp 1` works like `--smp 4`; on more CPUs whichever CPU is free
//! first runs it. A CPU that finishes a task wakes the waiter with an SGI.
//!
//! **TTBR0 after a run.** The waiter's CPU keeps the last address space in
//! TTBR0 (Linux's lazy `active_mm`: back-to-back commands in one process
//! switch nothing); every other CPU switches to the empty table before it
//! reports the task done, so an exiting process's tables are never live on
//! a CPU the console cannot see (`proc::teardown` checks it).

use alloc::collections::VecDeque;
use alloc::sync::Arc;
use core::sync::atomic::{AtomicBool, AtomicPtr, AtomicU8, AtomicU32, AtomicU64, AtomicUsize, Ordering};

use spin::Mutex;

use super::Process;
use crate::arch::aarch64::boot::MAX_CPUS;
use crate::arch::aarch64::exception::TrapFrame;
use crate::arch::aarch64::user::{self, UserRun};
use crate::arch::{cpu, percpu};

const RUNNABLE: u8 = 0;
const RUNNING: u8 = 1;
const DONE: u8 = 2;

/// Ticks a task runs before another task waiting for its CPU gets it.
pub const SLICE_TICKS: u64 = 1;

/// One thread of a process.
pub struct Task {
    pub tid: u32,
    proc: *const Process,
    /// The only CPU it may run on (None: any).
    pub affinity: Option<usize>,
    state: AtomicU8,
    /// The EL0 registers: where it resumes, and at the end its final ones.
    regs: Mutex<TrapFrame>,
    /// Set to end the task at its next trip through the kernel.
    kill: AtomicBool,
    /// The CPU to wake when it is done.
    waiter: AtomicUsize,
    /// Bit N: the task ran on CPU N at some point.
    pub ran_on: AtomicU64,
    /// Times the scheduler took the CPU away from it.
    pub preemptions: AtomicU64,
    /// Why its last EL0 fault could not be resolved (`Unresolved as u8`,
    /// 0: none), for the report when the run ends on it.
    pub(crate) unresolved: AtomicU8,
}

// SAFETY: `proc` points at a boxed process that outlives its tasks
// (`proc::exit_process` kills and waits for them first); the rest is atomic
// or locked.
unsafe impl Send for Task {}
// SAFETY: as above.
unsafe impl Sync for Task {}

impl Task {
    pub fn process(&self) -> &Process {
        // SAFETY: see the Send impl.
        unsafe { &*self.proc }
    }
    pub fn is_done(&self) -> bool {
        self.state.load(Ordering::Acquire) == DONE
    }
    /// The registers at the end (meaningful once done).
    pub fn final_regs(&self) -> TrapFrame {
        *self.regs.lock()
    }
    fn may_run_on(&self, cpu: usize) -> bool {
        self.affinity.is_none_or(|c| c == cpu)
    }
}

static RUNQ: Mutex<VecDeque<Arc<Task>>> = Mutex::new(VecDeque::new());
static NEXT_TID: AtomicU32 = AtomicU32::new(1);
/// The task each CPU is running (null: none).
static CURRENT: [AtomicPtr<Task>; MAX_CPUS] = [const { AtomicPtr::new(core::ptr::null_mut()) }; MAX_CPUS];
/// The tick count at which each CPU's current slice began.
static SLICE_START: [AtomicU64; MAX_CPUS] = [const { AtomicU64::new(0) }; MAX_CPUS];
/// Why the IRQ path ended a CPU's run (0: it did not).
static PREEMPTED: [AtomicBool; MAX_CPUS] = [const { AtomicBool::new(false) }; MAX_CPUS];
/// Runs (task starts or resumptions) per CPU, for `cpus` and tests.
static RUNS: [AtomicU64; MAX_CPUS] = [const { AtomicU64::new(0) }; MAX_CPUS];
/// When set, tasks the console starts run on the CPU that starts them
/// (tests that check per-CPU state after an EL0 run; see [`pin_to_caller`]).
static PIN_TO_CALLER: AtomicBool = AtomicBool::new(false);

/// Runs of tasks CPU `cpu` has made.
pub fn runs(cpu: usize) -> u64 {
    RUNS[cpu].load(Ordering::Relaxed)
}

/// The process whose task runs on this CPU (the fault path's `current`).
/// Inlinable in every codegen unit: the syscall and fault entries use it.
#[inline]
pub fn current_process() -> Option<&'static Process> {
    let t = CURRENT[percpu::this_cpu().id].load(Ordering::Acquire);
    // SAFETY: CURRENT holds a task this CPU is running; its process
    // outlives it (see `Task`'s Send impl).
    (!t.is_null()).then(|| unsafe { &*(*t).proc })
}

/// Records why the current task's EL0 fault could not be resolved.
pub(crate) fn set_unresolved(why: super::Unresolved) {
    let t = CURRENT[percpu::this_cpu().id].load(Ordering::Acquire);
    if !t.is_null() {
        // SAFETY: CURRENT holds the task this CPU is running.
        unsafe { &*t }.unresolved.store(why as u8, Ordering::Release);
    }
}

/// Runs `f` with every task the console starts pinned to this CPU.
pub fn pin_to_caller<R>(f: impl FnOnce() -> R) -> R {
    let prev = PIN_TO_CALLER.swap(true, Ordering::AcqRel);
    let r = f();
    PIN_TO_CALLER.store(prev, Ordering::Release);
    r
}

/// A new runnable task of `p` starting with `regs` (EL0t), queued and
/// announced to the CPUs that may take it.
pub fn spawn(p: &Process, mut regs: TrapFrame, affinity: Option<usize>) -> Arc<Task> {
    regs.spsr = 0; // EL0t, interrupts unmasked
    let t = Arc::new(Task {
        tid: NEXT_TID.fetch_add(1, Ordering::Relaxed),
        proc: p as *const Process,
        affinity,
        state: AtomicU8::new(RUNNABLE),
        regs: Mutex::new(regs),
        kill: AtomicBool::new(false),
        waiter: AtomicUsize::new(percpu::this_cpu().id),
        ran_on: AtomicU64::new(0),
        preemptions: AtomicU64::new(0),
        unresolved: AtomicU8::new(0),
    });
    p.tasks.lock().push(t.clone());
    enqueue(t.clone());
    t
}

fn enqueue(t: Arc<Task>) {
    let aff = t.affinity;
    RUNQ.lock().push_back(t);
    let me = percpu::this_cpu().id;
    for c in 0..MAX_CPUS {
        if c != me && aff.is_none_or(|a| a == c) && crate::irq::ready(c) {
            let _ = crate::irq::send_ipi(c, crate::irq::sgi::WAKE);
        }
    }
}

fn queued_for(cpu: usize) -> bool {
    RUNQ.lock().iter().any(|t| t.may_run_on(cpu))
}

/// Takes the first queued task this CPU may run and runs it until it is
/// done or preempted. Returns whether there was one. IRQs masked.
pub fn run_one() -> bool {
    let me = percpu::this_cpu().id;
    let t = {
        let mut q = RUNQ.lock();
        let Some(i) = q.iter().position(|t| t.may_run_on(me)) else { return false };
        q.remove(i).expect("index from position")
    };
    let _irq = cpu::local_irq_save();
    run_task(&t, me);
    true
}

fn run_task(t: &Arc<Task>, me: usize) {
    if t.kill.load(Ordering::Acquire) {
        finish(t, me);
        return;
    }
    t.state.store(RUNNING, Ordering::Release);
    t.ran_on.fetch_or(1 << me, Ordering::Relaxed);
    RUNS[me].fetch_add(1, Ordering::Relaxed);
    let mut run = UserRun { kctx: Default::default(), regs: *t.regs.lock() };
    CURRENT[me].store(Arc::as_ptr(t) as *mut Task, Ordering::Release);
    SLICE_START[me].store(crate::irq::ticks(me), Ordering::Relaxed);
    PREEMPTED[me].store(false, Ordering::Relaxed);
    super::debug_table::set_running(me, t.process().pid, t.tid);
    // SAFETY: the process's tables are complete; nothing of the kernel
    // runs from TTBR0.
    unsafe {
        super::activate(t.process());
        user::run_user(&mut run);
    }
    CURRENT[me].store(core::ptr::null_mut(), Ordering::Release);
    super::debug_table::set_running(me, 0, 0);
    *t.regs.lock() = run.regs;
    if PREEMPTED[me].load(Ordering::Relaxed) && !t.kill.load(Ordering::Acquire) {
        t.preemptions.fetch_add(1, Ordering::Relaxed);
        if t.waiter.load(Ordering::Relaxed) != me {
            super::deactivate_this_cpu();
        }
        t.state.store(RUNNABLE, Ordering::Release);
        enqueue(t.clone());
        return;
    }
    finish(t, me);
}

fn finish(t: &Arc<Task>, me: usize) {
    let waiter = t.waiter.load(Ordering::Relaxed);
    if waiter != me {
        super::deactivate_this_cpu();
    }
    t.process().tasks.lock().retain(|x| !Arc::ptr_eq(x, t));
    t.state.store(DONE, Ordering::Release);
    if waiter != me {
        let _ = crate::irq::send_ipi(waiter, crate::irq::sgi::WAKE);
    }
}

/// From the IRQ vector, after the interrupt was handled, when it struck
/// EL0: ends this CPU's run of its task if the task is to be killed, or if
/// its slice is used up and another task waits for this CPU.
pub fn irq_from_el0(frame: &TrapFrame) {
    let me = percpu::this_cpu().id;
    let t = CURRENT[me].load(Ordering::Acquire);
    if t.is_null() {
        return;
    }
    // SAFETY: the task this CPU runs stays alive while it runs (the run
    // queue or the waiter holds it).
    let t = unsafe { &*t };
    let killed = t.kill.load(Ordering::Acquire);
    if killed
        || (crate::irq::ticks(me).wrapping_sub(SLICE_START[me].load(Ordering::Relaxed)) >= SLICE_TICKS
            && queued_for(me))
    {
        PREEMPTED[me].store(true, Ordering::Relaxed);
        user::return_to_kernel(frame);
    }
}

/// Runs tasks on this CPU (or idles) until `t` is done; returns its final
/// registers.
pub fn wait(t: &Task) -> TrapFrame {
    wait_until(t, None).expect("waits without a limit")
}

/// [`wait`], for at most `ms` milliseconds of the virtual counter
/// (None: no limit). None if `t` was not done by then.
pub fn wait_until(t: &Task, ms: Option<u64>) -> Option<TrapFrame> {
    use crate::drivers::timer;
    let end = ms.map(|ms| timer::now() + timer::ms_to_counts(ms));
    t.waiter.store(percpu::this_cpu().id, Ordering::Release);
    loop {
        if t.is_done() {
            return Some(t.final_regs());
        }
        if end.is_some_and(|e| timer::now() > e) {
            return None;
        }
        if !run_one() {
            let _irq = cpu::local_irq_save();
            if !t.is_done() {
                crate::irq::idle();
            }
        }
    }
}

/// Ends `t` at its next trip through the kernel (or before it runs again)
/// and waits for that.
pub fn kill(t: &Task) {
    t.kill.store(true, Ordering::Release);
    // Take it off the queue if it is there.
    let queued = {
        let mut q = RUNQ.lock();
        q.iter().position(|x| core::ptr::eq(Arc::as_ptr(x), t)).and_then(|i| q.remove(i))
    };
    if let Some(q) = queued {
        finish(&q, percpu::this_cpu().id);
        return;
    }
    // Running somewhere: an SGI brings it into the kernel.
    for (c, cur) in CURRENT.iter().enumerate() {
        if core::ptr::eq(cur.load(Ordering::Acquire), t) {
            let _ = crate::irq::send_ipi(c, crate::irq::sgi::PING);
        }
    }
    wait(t);
}

/// Kills every task of `p` (for exit) and waits for them.
pub fn kill_all(p: &Process) {
    loop {
        let Some(t) = p.tasks.lock().first().cloned() else { break };
        kill(&t);
    }
}

/// Where the console's next task runs: on this CPU while
/// [`pin_to_caller`] is in force or with `pagelab.sched=local`; otherwise
/// on the online CPUs in turn, so that consecutive commands of one process
/// run on different CPUs (their TLBs must agree: every change is broadcast).
pub fn console_affinity() -> Option<usize> {
    let me = percpu::this_cpu().id;
    if PIN_TO_CALLER.load(Ordering::Acquire) || LOCAL.load(Ordering::Relaxed) {
        return Some(me);
    }
    let n = percpu::ONLINE.load(Ordering::Acquire).clamp(1, MAX_CPUS);
    let c = NEXT_CPU.fetch_add(1, Ordering::Relaxed) % n;
    Some(if crate::irq::ready(c) || c == me { c } else { me })
}

static NEXT_CPU: AtomicUsize = AtomicUsize::new(0);
/// `pagelab.sched=local`: the console's tasks run on the console's CPU.
static LOCAL: AtomicBool = AtomicBool::new(false);

pub fn init(local: bool) {
    LOCAL.store(local, Ordering::Relaxed);
}
