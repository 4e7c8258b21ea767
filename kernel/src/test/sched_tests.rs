//! The scheduler and SMP address spaces on the real (emulated) hardware:
//! preemption of EL0 on one CPU, registers intact across task switches,
//! tasks on every CPU, TLB shootdown between two threads of one address
//! space running on different CPUs, and ASIDs kept across a rollover for
//! the CPUs still running them.

use alloc::string::String;
use alloc::sync::Arc;
use alloc::vec::Vec;
use core::sync::atomic::{AtomicBool, AtomicPtr, AtomicU64, Ordering};

use super::anon;
use crate::arch::aarch64::esr::{Esr, FaultStatus};
use crate::arch::aarch64::exception::TrapFrame;
use crate::arch::aarch64::granule::PAGE_SIZE;
use crate::arch::aarch64::mm::context;
use crate::arch::aarch64::user::op;
use crate::arch::percpu;
use crate::ensure;
use crate::mm::addr::VirtAddr;
use crate::mm::layout::phys_to_virt;
use crate::mm::mmap::MmapArgs;
use crate::mm::pgtable::Translation;
use crate::println;
use crate::proc::sched::{self, Task};
use crate::proc::{self, RunEnd, syscall};

pub(super) fn me() -> usize {
    percpu::this_cpu().id
}

/// CPUs that run tasks: online and taking interrupts (bounded wait).
pub(super) fn cpus() -> usize {
    let n = percpu::ONLINE.load(Ordering::Acquire);
    let _ = crate::irq::wait_until(1000, || (0..n).all(crate::irq::ready));
    let usable = (0..n).take_while(|&c| crate::irq::ready(c)).count().max(1);
    if usable < n
        && let Some(why) = crate::irq::no_interrupts_reason()
    {
        // Say so: the "one CPU" notes below are not about --smp here.
        println!("  (tasks run on {usable} of {n} online CPUs: {why}; a CPU is woken for a task by an IPI)");
    }
    usable
}

/// Runs `f` in a fresh process `name`, which exits afterwards whatever `f` did.
pub(super) fn in_process(name: &str, f: impl FnOnce() -> Result<(), String>) -> Result<(), String> {
    proc::spawn(name)?;
    let r = f();
    proc::exit(name)?;
    r?;
    crate::console::commands::invariants().map_err(|e| alloc::format!("invariants: {e}"))
}

pub(super) fn start(name: &str, x: &[u64], x8: u64, cpu: usize) -> Result<Arc<Task>, String> {
    Ok(proc::with_proc(name, |p| Ok(sched::spawn(p, proc::agent_frame(x, x8), Some(cpu))))?)
}

fn done_ok(regs: &TrapFrame, what: &str) -> Result<(), String> {
    ensure!(matches!(proc::run_end(regs), RunEnd::Done), "{what} did not finish its command: {}", Esr(regs.esr));
    Ok(())
}

kernel_test!(sched_preempts_el0_on_one_cpu);
/// Two threads on one CPU: A spins at EL0 until B sets a flag. Only a tick
/// that preempts A lets B run at all (without preemption this test hangs,
/// and the run's timeout fails it).
fn sched_preempts_el0_on_one_cpu() -> Result<(), String> {
    if let Some(why) = crate::irq::no_interrupts_reason() {
        return super::cannot_apply(&alloc::format!("preemption needs the tick; {why}"));
    }
    let name = "sched_pre";
    in_process(name, || {
        let va = proc::mmap(name, "flag", anon(PAGE_SIZE))?;
        ensure!(matches!(proc::access(name, op::WRITE, va, 1, 0)?, RunEnd::Done), "clearing the flag");
        let cpu = me();
        let a = start(name, &[op::WAIT_FLAG, va.as_u64()], 0, cpu)?;
        let b = start(name, &[op::WRITE, va.as_u64(), 1, 1], 0, cpu)?;
        let rb = sched::wait(&b);
        done_ok(&rb, "the writer")?;
        let ra = sched::wait(&a);
        done_ok(&ra, "the waiter")?;
        ensure!(a.preemptions.load(Ordering::Relaxed) >= 1, "the waiter finished without ever being preempted");
        ensure!(
            a.ran_on.load(Ordering::Relaxed) == 1 << cpu && b.ran_on.load(Ordering::Relaxed) == 1 << cpu,
            "a thread left cpu{cpu}"
        );
        println!(
            "  waiter preempted {} time(s) on cpu{cpu} before the writer ran",
            a.preemptions.load(Ordering::Relaxed)
        );
        Ok(())
    })
}

kernel_test!(sched_registers_survive_task_switches);
/// Two long SPIN loops in two processes share one CPU: each is preempted
/// and resumed several times, and each ends with exactly its own registers.
fn sched_registers_survive_task_switches() -> Result<(), String> {
    if let Some(why) = crate::irq::no_interrupts_reason() {
        return super::cannot_apply(&alloc::format!("preemption needs the tick; {why}"));
    }
    let (n1, n2) = ("sched_reg1", "sched_reg2");
    proc::spawn(n2)?;
    let r = in_process(n1, || {
        let cpu = me();
        let mut iterations = 1u64 << 22;
        let deadline = crate::drivers::timer::now() + crate::drivers::timer::ms_to_counts(20_000);
        loop {
            let seeds = [0x1111_0000_0000_0000u64, 0x2222_0000_0000_0000u64];
            let ts = [
                start(n1, &[op::SPIN, seeds[0], iterations], 0, cpu)?,
                start(n2, &[op::SPIN, seeds[1], iterations], 0, cpu)?,
            ];
            for (t, seed) in ts.iter().zip(seeds) {
                let regs = sched::wait(t);
                done_ok(&regs, "a spin loop")?;
                ensure!(regs.x[2] == op::SPIN_NZCV, "NZCV {:#x} after the loop: flags disturbed", regs.x[2]);
                ensure!(regs.sp_el0 == seed & !0xf && regs.x[1] == seed, "SP_EL0/x1 of another task");
                for k in 3..=30 {
                    ensure!(
                        regs.x[k] == seed + k as u64,
                        "x{k} = {:#x} after {} preemption(s), expected {:#x}",
                        regs.x[k],
                        t.preemptions.load(Ordering::Relaxed),
                        seed + k as u64
                    );
                }
            }
            let pre: Vec<u64> = ts.iter().map(|t| t.preemptions.load(Ordering::Relaxed)).collect();
            if pre.iter().all(|&p| p >= 2) {
                println!("  {iterations} iterations each: preempted {pre:?} times, registers intact");
                return Ok(());
            }
            ensure!(
                crate::drivers::timer::now() < deadline,
                "loops of {iterations} iterations were preempted only {pre:?} times in 20 s"
            );
            iterations *= 2;
        }
    });
    proc::exit(n2)?;
    r
}

kernel_test!(sched_tasks_run_on_every_cpu);
/// One task pinned to each CPU writes its own page; each ran there only.
fn sched_tasks_run_on_every_cpu() -> Result<(), String> {
    let name = "sched_every";
    let n = cpus();
    in_process(name, || {
        let va = proc::mmap(name, "m", anon(n as u64 * PAGE_SIZE))?;
        let before: Vec<u64> = (0..n).map(sched::runs).collect();
        let ts: Vec<Arc<Task>> = (0..n)
            .map(|c| start(name, &[op::WRITE, (va + c as u64 * PAGE_SIZE).as_u64(), PAGE_SIZE, 0x40 + c as u64], 0, c))
            .collect::<Result<_, _>>()?;
        for (c, t) in ts.iter().enumerate() {
            done_ok(&sched::wait(t), "a writer")?;
            ensure!(
                t.ran_on.load(Ordering::Relaxed) == 1 << c,
                "the task pinned to cpu{c} ran on {:#b}",
                t.ran_on.load(Ordering::Relaxed)
            );
            ensure!(sched::runs(c) > before[c], "cpu{c} counted no run");
        }
        for c in 0..n {
            let at = va + c as u64 * PAGE_SIZE;
            ensure!(
                matches!(proc::access(name, op::CHECK, at, PAGE_SIZE, 0x40 + c as u8)?, RunEnd::Done),
                "page {c} lacks cpu{c}'s bytes"
            );
        }
        println!("  {n} CPU(s) each ran their task");
        Ok(())
    })
}

/// The u64 at user address `va` of `name`, read through the linear map.
pub(super) fn user_u64(name: &str, va: u64) -> Result<u64, String> {
    let pa = proc::with_tables(name, |_, t| match t.translate(VirtAddr::new(va)) {
        Translation::Mapped { pa, .. } => Some(pa),
        _ => None,
    })?
    .ok_or("the counter page is not mapped")?;
    // SAFETY: a mapped, page-aligned user page; the reader thread stores to
    // it at EL0, which an aligned u64 load observes whole.
    Ok(unsafe { core::ptr::read_volatile(phys_to_virt(pa).as_u64() as *const u64) })
}

/// A reader thread on `cpu` loads `x` in a loop, counting into `y`; returns
/// it once the count shows it running (its TLB holds `x`).
pub(super) fn start_reader(name: &str, x: u64, y: u64, cpu: usize) -> Result<Arc<Task>, String> {
    let a = start(name, &[op::READ_LOOP, x, y], 0, cpu)?;
    if !crate::irq::wait_until(5000, || user_u64(name, y).is_ok_and(|c| c > 10_000)) {
        sched::kill(&a);
        return Err(alloc::format!("the reader on cpu{cpu} did not get going"));
    }
    Ok(a)
}

/// After a change of `x`'s mapping returned with the counter at `c0`, the
/// reader must stop at its next load of `x` with a fault of `want`'s kind.
fn reader_stopped(
    name: &str,
    a: &Task,
    x: VirtAddr,
    y: VirtAddr,
    c0: u64,
    what: &str,
    want: fn(FaultStatus) -> bool,
) -> Result<(), String> {
    let Some(regs) = sched::wait_until(a, Some(3000)) else {
        let c1 = user_u64(name, y.as_u64()).unwrap_or(0);
        sched::kill(a);
        return Err(alloc::format!(
            "{what}: the reader kept loading through a stale TLB entry ({c0} -> {c1} loads after the call returned)"
        ));
    };
    let c = user_u64(name, y.as_u64())?;
    match proc::run_end(&regs) {
        RunEnd::Fault { addr, esr, .. } if addr == x && Esr(esr).fault_status().is_some_and(want) => {}
        e => return Err(alloc::format!("{what}: the reader ended with {e:?}, expected a fault at {x:#x}")),
    }
    ensure!(c <= c0 + 1, "{what}: {} loads of the old mapping after the call returned", c - c0);
    Ok(())
}

kernel_test!(sched_tlb_shootdown_between_threads);
/// Two threads of one address space on two CPUs: A (cpu1) keeps loading a
/// page while B (this CPU) mprotects it to none, then unmaps another. When
/// B's system call returns, the broadcast TLBI has completed: A's very next
/// load must fault. A non-broadcast TLBI leaves A's TLB entry alive (QEMU
/// models per-CPU TLBs), and A goes on loading.
///
/// Checked by replacing the broadcast `TLBI VALE1IS` with the local `VALE1`:
/// the test fails, because A reads on through its stale entry.
fn sched_tlb_shootdown_between_threads() -> Result<(), String> {
    if cpus() < 2 {
        return super::cannot_apply("one CPU: nothing to shoot down; this runs with --smp 2 or more");
    }
    let name = "shootdown";
    let (here, there) = (me(), if me() == 1 { 0 } else { 1 });
    in_process(name, || {
        for (what, nr, want) in [
            (
                "mprotect(PROT_NONE)",
                syscall::nr::MPROTECT,
                (|f| matches!(f, FaultStatus::Permission(_))) as fn(FaultStatus) -> bool,
            ),
            ("munmap", syscall::nr::MUNMAP, |f| matches!(f, FaultStatus::Translation(_))),
        ] {
            let x = proc::mmap(name, "x", anon(PAGE_SIZE))?;
            let y = proc::mmap(name, "y", anon(PAGE_SIZE))?;
            ensure!(matches!(proc::access(name, op::WRITE, x, PAGE_SIZE, 0x77)?, RunEnd::Done), "filling x");
            ensure!(matches!(proc::access(name, op::WRITE, y, PAGE_SIZE, 0)?, RunEnd::Done), "clearing y");
            let a = start_reader(name, x.as_u64(), y.as_u64(), there)?;
            // B: the system call from EL0, on this CPU (prot 0 = PROT_NONE).
            let b = start(name, &[op::SYSCALL, x.as_u64(), PAGE_SIZE, 0], nr, here)?;
            let rb = sched::wait(&b);
            let c0 = user_u64(name, y.as_u64())?;
            ensure!(
                matches!(proc::run_end(&rb), RunEnd::Other { .. }) && rb.x[0] == 2 && rb.x[1] == 0,
                "{what} from EL0 failed: x0 {:#x} x1 {:#x}",
                rb.x[0],
                rb.x[1]
            );
            reader_stopped(name, &a, x, y, c0, what, want)?;
            ensure!(a.ran_on.load(Ordering::Relaxed) == 1 << there, "the reader left cpu{there}");
            println!("  {what} on cpu{here}: the reader on cpu{there} faulted at its next load ({c0} loads before)");
            if nr == syscall::nr::MPROTECT {
                proc::munmap(name, x, PAGE_SIZE)?;
            }
            proc::munmap(name, y, PAGE_SIZE)?;
        }
        Ok(())
    })
}

kernel_test!(sched_asid_kept_across_rollover_while_running);
/// A rollover while a thread of R runs on another CPU: R must keep its
/// ASID (the CPU goes on using it from TTBR0), nobody else may be given
/// it, and a TLBI for R, made from this CPU afterwards, must reach the
/// entries the other CPU cached under it.
///
/// Without the reservation of active ASIDs at rollover (Linux's
/// `reserved_asids`), R comes back with another ASID and the TLBI misses
/// the other CPU's entries: this test catches that.
fn sched_asid_kept_across_rollover_while_running() -> Result<(), String> {
    if cpus() < 2 {
        return super::cannot_apply("one CPU: no other CPU to keep an ASID for; this runs with --smp 2 or more");
    }
    let name = "asid_keep";
    let (here, there) = (me(), if me() == 1 { 0 } else { 1 });
    let others: Vec<String> = (0..12).map(|i| alloc::format!("asid_other{i}")).collect();
    for o in &others {
        proc::spawn(o)?;
    }
    let r = in_process(name, || {
        let x = proc::mmap(name, "x", anon(PAGE_SIZE))?;
        let y = proc::mmap(name, "y", anon(PAGE_SIZE))?;
        ensure!(matches!(proc::access(name, op::WRITE, x, PAGE_SIZE, 0x66)?, RunEnd::Done), "filling x");
        let a = start_reader(name, x.as_u64(), y.as_u64(), there)?;
        let kept = context::active_on(there);
        let before = context::ROLLOVERS.load(Ordering::Relaxed);
        // A tiny ASID space: the other processes use it up several times.
        context::force_rollover(Some(1));
        let r = sched::pin_to_caller(|| -> Result<(), String> {
            for o in &others {
                ensure!(
                    matches!(proc::access(o, op::TOUCH_READ, VirtAddr::new(proc::AGENT_VA), 1, 0)?, RunEnd::Done),
                    "{o} did not run"
                );
                let theirs = proc::with_proc(o, |p| Ok(p.mm.asid()))?;
                ensure!(
                    theirs as u64 != kept & 0xffff,
                    "{o} was given ASID {theirs}, which cpu{there} is still running for {name}"
                );
            }
            Ok(())
        });
        let rolled = context::ROLLOVERS.load(Ordering::Relaxed) - before;
        if let Err(e) = r {
            sched::kill(&a);
            context::force_rollover(None);
            return Err(e);
        }
        ensure!(
            context::active_on(there) & 0xffff == kept & 0xffff,
            "cpu{there}'s active ASID changed under the running thread"
        );
        // Now this CPU runs R too (the mprotect thread) and flushes by R's ASID.
        let b = start(name, &[op::SYSCALL, x.as_u64(), PAGE_SIZE, 0], syscall::nr::MPROTECT, here)?;
        let rb = sched::wait(&b);
        let c0 = user_u64(name, y.as_u64())?;
        let mine = proc::with_proc(name, |p| Ok(p.mm.asid()))?;
        let r = reader_stopped(name, &a, x, y, c0, "mprotect after the rollovers", |f| {
            matches!(f, FaultStatus::Permission(_))
        });
        context::force_rollover(None);
        ensure!(rb.x[0] == 2 && rb.x[1] == 0, "mprotect from EL0 failed");
        ensure!(
            mine as u64 == kept & 0xffff,
            "{name} came back with ASID {mine}, but cpu{there} ran it with {}",
            kept & 0xffff
        );
        r?;
        ensure!(rolled >= 2, "only {rolled} rollover(s): the test did not exercise them");
        println!("  {rolled} rollovers while cpu{there} ran ASID {}: kept, and the TLBI reached it", kept & 0xffff);
        Ok(())
    });
    for o in &others {
        proc::exit(o)?;
    }
    r
}

// The GUP-fast racer's inputs and results (it runs on another CPU through
// `kmain::run_on_cpu`, which takes a plain `fn()`).
static RACE_PROC: AtomicPtr<proc::Process> = AtomicPtr::new(core::ptr::null_mut());
static RACE_VA: AtomicU64 = AtomicU64::new(0);
static RACE_NR: AtomicU64 = AtomicU64::new(0);
static RACE_STOP: AtomicBool = AtomicBool::new(false);
static RACE_DONE: AtomicBool = AtomicBool::new(false);
/// Pages GUP-fast handed back pinned R/W that were not PageAnonExclusive.
static RACE_BAD: AtomicU64 = AtomicU64::new(0);
/// Pages GUP-fast pinned in all.
static RACE_PINNED: AtomicU64 = AtomicU64::new(0);

/// On the other CPU: R/W FOLL_PIN through GUP-fast over the range, again
/// and again. Every page it returns must be exclusive to the parent: a
/// writable entry implies an exclusive page, and a fork that write-protects
/// the range meanwhile must make GUP-fast give its pins back
/// (`write_protect_seq`), or the pin would be on a page the child shares.
fn gup_racer() {
    use crate::mm::gup::{self, Foll, Taken};
    // SAFETY: the test keeps the process alive until RACE_DONE.
    let p = unsafe { &*RACE_PROC.load(Ordering::Acquire) };
    let (va, nr) = (RACE_VA.load(Ordering::Acquire), RACE_NR.load(Ordering::Acquire));
    let flags = Foll { write: true, pin: true, longterm: false };
    while !RACE_STOP.load(Ordering::Acquire) {
        let got = gup::gup_fast(p.mt(), VirtAddr::new(va), nr, flags);
        for t in &got {
            if let Taken::Page(pa) = t
                && !crate::mm::page::phys_to_page(*pa).is_some_and(|pg| pg.anon_exclusive())
            {
                RACE_BAD.fetch_add(1, Ordering::Relaxed);
            }
        }
        RACE_PINNED.fetch_add(got.len() as u64, Ordering::Relaxed);
        for t in got {
            gup::release(t, true);
        }
    }
    RACE_DONE.store(true, Ordering::Release);
}

kernel_test!(smp_gup_fast_races_fork);
/// GUP-fast on cpu1 against fork on this CPU (Linux's `write_protect_seq`):
/// the parent makes its pages writable again, forks, the child exits, many
/// times, while cpu1 pins the same range locklessly without pause.
///
/// `gup::RACE_WINDOW_SPINS` widens the window between GUP-fast's entry
/// re-check and its pin. Checked by taking out the `write_protect_seq`
/// check: the test then catches pins on pages a fork shared. Without the
/// widened window the race is too narrow to hit.
fn smp_gup_fast_races_fork() -> Result<(), String> {
    if cpus() < 2 {
        return super::cannot_apply("one CPU: no race; this runs with --smp 2 or more");
    }
    let (name, child) = ("gupfast_parent", "gupfast_child");
    let there = if me() == 1 { 0 } else { 1 };
    let pages = 512u64;
    in_process(name, || {
        let va = proc::mmap(name, "m", anon(pages * PAGE_SIZE))?;
        ensure!(matches!(proc::access(name, op::WRITE, va, pages * PAGE_SIZE, 1)?, RunEnd::Done), "filling");
        proc::with_proc(name, |p| {
            RACE_PROC.store(p as *const proc::Process as *mut proc::Process, Ordering::Release);
            Ok(())
        })?;
        RACE_VA.store(va.as_u64(), Ordering::Release);
        RACE_NR.store(pages, Ordering::Release);
        RACE_STOP.store(false, Ordering::Release);
        RACE_DONE.store(false, Ordering::Release);
        RACE_BAD.store(0, Ordering::Release);
        RACE_PINNED.store(0, Ordering::Release);
        // A wide window between GUP-fast's entry re-check and its pin, so
        // that forks land in it: only write_protect_seq catches those.
        crate::mm::gup::RACE_WINDOW_SPINS.store(2000, Ordering::Release);
        ensure!(crate::kmain::run_on_cpu(there, gup_racer), "cpu{there} is not online");
        // Everything this CPU runs meanwhile stays here: cpu1 is busy.
        let r = sched::pin_to_caller(|| -> Result<u64, String> {
            let mut rounds = 0;
            let end = crate::drivers::timer::now() + crate::drivers::timer::ms_to_counts(3000);
            while rounds < 40 || crate::drivers::timer::now() < end && rounds < 400 {
                // COW-reuse faults make every entry writable (exclusive) again.
                ensure!(
                    matches!(proc::access(name, op::TOUCH_WRITE, va, pages * PAGE_SIZE, 0)?, RunEnd::Done),
                    "parent write"
                );
                proc::fork(name, child)?;
                proc::exit(child)?;
                rounds += 1;
            }
            Ok(rounds)
        });
        RACE_STOP.store(true, Ordering::Release);
        let stopped = crate::irq::wait_until(2000, || RACE_DONE.load(Ordering::Acquire));
        crate::mm::gup::RACE_WINDOW_SPINS.store(0, Ordering::Release);
        ensure!(stopped, "the GUP-fast racer did not stop");
        let rounds = r?;
        let (bad, pinned) = (RACE_BAD.load(Ordering::Acquire), RACE_PINNED.load(Ordering::Acquire));
        ensure!(
            bad == 0,
            "GUP-fast returned {bad} R/W pin(s) on pages that were not PageAnonExclusive (a fork shared them) in {rounds} forks"
        );
        ensure!(pinned > 0, "GUP-fast pinned nothing in {rounds} rounds: the race did not run");
        println!("  {rounds} forks on cpu{} against {pinned} lockless pins on cpu{there}: every pin exclusive", me());
        Ok(())
    })
}

kernel_test!(smp_cow_fault_races_exit);
/// Seed 003's scenario on real CPUs: a page COW-shared by parent A and
/// child B; two threads of A, on two CPUs, write it at once while B exits
/// on this CPU. Whatever the interleaving, A ends with one private copy,
/// holding the last value written, with nothing leaked or double-mapped
/// (`invariants` after every round).
fn smp_cow_fault_races_exit() -> Result<(), String> {
    let n = cpus();
    if n < 3 {
        return super::cannot_apply("fewer than 3 CPUs: runs with --smp 4");
    }
    let (a, b) = ("race_a", "race_b");
    let here = me();
    let others: Vec<usize> = (0..n).filter(|&c| c != here).take(2).collect();
    in_process(a, || {
        let va = proc::mmap(a, "m", anon(PAGE_SIZE))?;
        for round in 0..50u64 {
            let v = 0x10 + (round % 0x60);
            ensure!(
                matches!(proc::access(a, op::WRITE, va, PAGE_SIZE, v as u8)?, RunEnd::Done),
                "round {round}: parent write"
            );
            sched::pin_to_caller(|| proc::fork(a, b))?;
            // Both threads store v + 1 to every byte; either may COW.
            let ts = [
                start(a, &[op::WRITE, va.as_u64(), PAGE_SIZE, v + 1], 0, others[0])?,
                start(a, &[op::WRITE, va.as_u64(), PAGE_SIZE, v + 1], 0, others[1])?,
            ];
            sched::pin_to_caller(|| proc::exit(b))?;
            for t in &ts {
                done_ok(&sched::wait(t), "a writer thread")?;
            }
            ensure!(
                matches!(proc::access(a, op::CHECK, va, PAGE_SIZE, v as u8 + 1)?, RunEnd::Done),
                "round {round}: A's page lost a write"
            );
            crate::console::commands::invariants().map_err(|e| alloc::format!("round {round}: invariants: {e}"))?;
        }
        println!(
            "  50 rounds: two writers on cpu{} and cpu{} while the child exited on cpu{here}",
            others[0], others[1]
        );
        Ok(())
    })
}

kernel_test!(smp_page_lists_alloc_here_free_there);
/// The per-CPU page lists across CPUs: user frames faulted in on cpu1 come
/// from its list and are freed into this CPU's (which fills and gives
/// frames back to the buddy), then large folios faulted on cpu1 are freed
/// here through the buddy. The allocator's counters must stay exact
/// (`frame::check`), and every frame must come back.
///
/// This test found a leak: exit freed only the tables under the remaining
/// VMAs, while munmap leaves an empty level-3 table wherever its range does
/// not cover the table's whole span. Teardown unmaps the whole user half
/// since.
fn smp_page_lists_alloc_here_free_there() -> Result<(), String> {
    use crate::mm::frame;
    if cpus() < 2 {
        return super::cannot_apply("one CPU: runs with --smp 2 or more");
    }
    let name = "pcp_cross";
    let there = if me() == 1 { 0 } else { 1 };
    let free_before = frame::stats();
    in_process(name, || {
        for round in 0..3u64 {
            let small = proc::mmap(name, "s", anon(300 * PAGE_SIZE))?;
            let big = proc::mmap(name, "b", MmapArgs { folio_order: 4, ..anon(16 * 16 * PAGE_SIZE) })?;
            for (va, len) in [(small, 300 * PAGE_SIZE), (big, 16 * 16 * PAGE_SIZE)] {
                let t = start(name, &[op::WRITE, va.as_u64(), len, 0x60 + round], 0, there)?;
                done_ok(&sched::wait(&t), "a writer on the other CPU")?;
            }
            frame::check().map_err(|e| alloc::format!("round {round}, after the faults: {e}"))?;
            proc::munmap(name, small, 300 * PAGE_SIZE)?;
            proc::munmap(name, big, 16 * 16 * PAGE_SIZE)?;
            frame::check().map_err(|e| alloc::format!("round {round}, after the frees: {e}"))?;
        }
        Ok(())
    })?;
    let after = frame::stats();
    ensure!(
        after.free == free_before.free,
        "free frames {} -> {} (owners {:?} -> {:?})",
        free_before.free,
        after.free,
        free_before.by_owner,
        after.by_owner
    );
    Ok(())
}
