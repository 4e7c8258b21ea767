//! The debugger's mirror of the process table (`proc::debug_table`, read by
//! gdb's `pl-procs`/`pl-vmas`) follows the real one: processes appear and
//! disappear with spawn/fork/exit, every VMA change (mmap, munmap,
//! mprotect, madvise, fork) is re-snapshotted, overflow of either table is
//! counted instead of being silently wrong, and each CPU's running task is
//! recorded while it runs.

use alloc::string::String;
use alloc::vec::Vec;
use core::sync::atomic::Ordering;

use super::anon;
use crate::arch::aarch64::granule::PAGE_SIZE;
use crate::arch::aarch64::user::op;
use crate::arch::percpu;
use crate::ensure;
use crate::proc::debug_table::{self as dt, DebugVma, MAX_PROCS, MAX_VMAS};
use crate::proc::sched;
use crate::proc::{self, RunEnd};

/// `name`'s slot says exactly what its process and VMA list say.
fn matches_real(name: &str) -> Result<u32, String> {
    proc::with_proc(name, |p| Ok(slot_matches(name, p)))?
}

fn slot_matches(name: &str, p: &proc::Process) -> Result<u32, String> {
    {
        let g = p.mm.mmap_read_lock();
        let real: Vec<DebugVma> = crate::mm::mm_struct::MmapLocked::vmas(&g).iter().map(DebugVma::of).collect();
        let s = dt::snapshot(p.pid).ok_or_else(|| alloc::format!("{name} (pid {}) has no live slot", p.pid))?;
        ensure!(s.seq % 2 == 0, "{name}: slot {} left mid-update (seq {})", s.slot, s.seq);
        ensure!(
            s.ppid == p.ppid && s.name == p.name && s.name_len as usize == p.name.len(),
            "{name}: ppid/name {}/{:?} in the mirror",
            s.ppid,
            s.name
        );
        ensure!(s.pgd == p.mm.pgd.as_u64(), "{name}: pgd {:#x} in the mirror, {:#x} really", s.pgd, p.mm.pgd.as_u64());
        ensure!(
            s.asid_slot == &p.mm.asid_slot as *const _ as u64 && s.mm == &p.mm as *const _ as u64,
            "{name}: ASID slot / mm pointers do not point at its mm"
        );
        ensure!(s.nr_vmas as usize == real.len(), "{name}: {} VMAs in the mirror, {} really", s.nr_vmas, real.len());
        let n = real.len().min(MAX_VMAS);
        ensure!(s.vmas[..] == real[..n], "{name}: mirror VMAs {:x?}, real {:x?}", s.vmas, &real[..n]);
        Ok(p.pid)
    }
}

kernel_test!(debug_table_follows_processes_and_vmas);
fn debug_table_follows_processes_and_vmas() -> Result<(), String> {
    let (a, c) = ("dt_a", "dt_c");
    let (n0, u0) = dt::counts();
    proc::spawn(a)?;
    let r = (|| {
        let pa = matches_real(a)?;
        ensure!(dt::counts() == (n0 + 1, u0), "spawn: counts {:?}, expected ({}, {u0})", dt::counts(), n0 + 1);
        let va = proc::mmap(a, "buf", anon(8 * PAGE_SIZE))?;
        matches_real(a)?;
        proc::mprotect(a, va + 2 * PAGE_SIZE, 2 * PAGE_SIZE, true, false)?;
        matches_real(a)?;
        proc::madvise(a, va + 4 * PAGE_SIZE, 4 * PAGE_SIZE, crate::mm::madvise::Advice::NoHugePage)?;
        matches_real(a)?;
        proc::munmap(a, va + 6 * PAGE_SIZE, PAGE_SIZE)?;
        let s = dt::snapshot(pa).ok_or("no slot after munmap")?;
        // agent, [0,2) rw, [2,4) r, [4,6) nohugepage, [7,8) nohugepage
        ensure!(
            s.nr_vmas == 5 && s.vmas[4].start == (va + 7 * PAGE_SIZE).as_u64(),
            "after munmap: {} VMAs {:x?}",
            s.nr_vmas,
            s.vmas
        );
        matches_real(a)?;
        let pc = proc::fork(a, c)?;
        let r = (|| {
            ensure!(matches_real(c)? == pc, "fork returned pid {pc}, the mirror's child differs");
            let sc = dt::snapshot(pc).ok_or("child has no slot")?;
            ensure!(sc.ppid == pa && sc.nr_vmas == 5, "child: ppid {} (want {pa}), {} VMAs", sc.ppid, sc.nr_vmas);
            matches_real(a)?;
            Ok(())
        })();
        proc::exit(c)?;
        ensure!(dt::snapshot(pc).is_none(), "the exited child keeps its slot");
        r
    })();
    let pid = proc::with_proc(a, |p| Ok(p.pid))?;
    proc::exit(a)?;
    ensure!(dt::snapshot(pid).is_none(), "the exited process keeps its slot");
    ensure!(dt::counts() == (n0, u0), "after exit: counts {:?}, expected ({n0}, {u0})", dt::counts());
    r
}

kernel_test!(debug_table_reports_vma_overflow);
/// More VMAs than a slot holds: the count stays right, the first
/// MAX_VMAS are recorded, and all of them again once it fits.
fn debug_table_reports_vma_overflow() -> Result<(), String> {
    let name = "dt_vmas";
    proc::spawn(name)?;
    let r = (|| {
        let mut vas = Vec::new();
        for i in 0..MAX_VMAS + 3 {
            vas.push(proc::mmap(name, &alloc::format!("r{i}"), anon(PAGE_SIZE))?);
        }
        let pid = matches_real(name)?;
        let s = dt::snapshot(pid).ok_or("no slot")?;
        ensure!(
            s.nr_vmas as usize == MAX_VMAS + 4 && s.vmas.len() == MAX_VMAS,
            "{} VMAs counted, {} recorded",
            s.nr_vmas,
            s.vmas.len()
        );
        for va in &vas[..8] {
            proc::munmap(name, *va, PAGE_SIZE)?;
        }
        matches_real(name)?;
        let s = dt::snapshot(pid).ok_or("no slot")?;
        ensure!(
            s.nr_vmas as usize == MAX_VMAS - 4 && s.vmas.len() == MAX_VMAS - 4,
            "after munmap: {} VMAs, {} recorded",
            s.nr_vmas,
            s.vmas.len()
        );
        Ok(())
    })();
    proc::exit(name)?;
    r
}

kernel_test!(debug_table_reports_process_overflow);
/// More processes than slots: the extra ones are counted as unslotted
/// (what gdb reports), and the counts return when they exit.
fn debug_table_reports_process_overflow() -> Result<(), String> {
    let (n0, u0) = dt::counts();
    let slotted = n0 - u0;
    let k = MAX_PROCS as u32 - slotted + 2;
    let names: Vec<String> = (0..k).map(|i| alloc::format!("dt_p{i}")).collect();
    let mut spawned = Vec::new();
    let mut r: Result<(), String> = Ok(());
    for n in &names {
        if let Err(e) = proc::spawn(n) {
            r = Err(e.into());
            break;
        }
        spawned.push(n);
    }
    if r.is_ok() {
        r = (|| {
            ensure!(
                dt::counts() == (n0 + k, u0 + 2),
                "{k} spawned: counts {:?}, expected ({}, {})",
                dt::counts(),
                n0 + k,
                u0 + 2
            );
            let have: Vec<bool> = names
                .iter()
                .map(|n| proc::with_proc(n, |p| Ok(dt::snapshot(p.pid).is_some())))
                .collect::<Result<_, _>>()?;
            ensure!(
                have.iter().filter(|&&h| h).count() as u32 == k - 2 && !have[k as usize - 1],
                "slots held: {have:?}"
            );
            Ok(())
        })();
    }
    for n in spawned {
        proc::exit(n)?;
    }
    r?;
    ensure!(dt::counts() == (n0, u0), "after exit: counts {:?}, expected ({n0}, {u0})", dt::counts());
    // A freed slot is used again.
    proc::spawn("dt_again")?;
    let again = matches_real("dt_again");
    proc::exit("dt_again")?;
    again.map(|_| ())
}

kernel_test!(debug_table_records_the_running_task);
/// While a task runs at EL0 on another CPU, the mirror names its pid and
/// tid for that CPU; afterwards nothing. (With one CPU only the latter.)
fn debug_table_records_the_running_task() -> Result<(), String> {
    let name = "dt_run";
    proc::spawn(name)?;
    let r = (|| {
        let me = percpu::this_cpu().id;
        let pid = matches_real(name)?;
        let va = proc::mmap(name, "flag", anon(PAGE_SIZE))?;
        ensure!(matches!(proc::access(name, op::WRITE, va, 1, 0)?, RunEnd::Done), "clearing the flag");
        ensure!(dt::running(me) == (0, 0), "cpu{me} still shows {:?} after the run", dt::running(me));
        let other = (0..percpu::ONLINE.load(Ordering::Acquire)).find(|&c| c != me && crate::irq::ready(c));
        let Some(cpu) = other else {
            return super::cannot_apply("one CPU: only checked that the mirror is empty after a run");
        };
        let t = proc::with_proc(name, |p| {
            Ok(sched::spawn(p, proc::agent_frame(&[op::WAIT_FLAG, va.as_u64()], 0), Some(cpu)))
        })?;
        let seen = crate::irq::wait_until(2000, || dt::running(cpu) == (pid, t.tid));
        let during = dt::running(cpu);
        // Sets the flag from this CPU; the waiter then ends its command.
        let w = proc::with_proc(name, |p| {
            Ok(sched::spawn(p, proc::agent_frame(&[op::WRITE, va.as_u64(), 1, 1], 0), Some(me)))
        })?;
        sched::wait(&w);
        sched::wait(&t);
        ensure!(seen, "cpu{cpu} runs pid {pid} tid {}, the mirror says {during:?}", t.tid);
        ensure!(dt::running(cpu) == (0, 0), "cpu{cpu} still shows {:?} after the task ended", dt::running(cpu));
        Ok(())
    })();
    proc::exit(name)?;
    r
}
