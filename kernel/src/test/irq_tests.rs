//! Interrupts and PAN on the real (emulated) hardware: the tick on every
//! CPU, SGIs between CPUs, IRQs taken at EL0 that must return to EL0 with
//! every register intact, and PAN blocking plain EL1 accesses to user memory
//! while the uaccess helpers still work.

use alloc::string::String;
use alloc::vec::Vec;
use core::sync::atomic::{AtomicU64, Ordering};

use crate::arch::aarch64::esr::{Esr, ExceptionClass, FaultStatus};
use crate::arch::aarch64::granule::PAGE_SIZE;
use crate::arch::aarch64::uaccess::{copy_from_user, copy_to_user, probe_read_u8, probe_write_u8};
use crate::arch::aarch64::user::{SVC_DONE, op};
use crate::arch::{cpu, percpu};
use crate::drivers::timer;
use crate::ensure;
use crate::irq::{self, sgi};
use crate::println;
use crate::proc::{self, RunEnd};

fn online() -> usize {
    percpu::ONLINE.load(Ordering::Acquire)
}

/// Every online CPU takes interrupts (bounded wait: secondaries bring up
/// their GIC side just after they come online).
fn all_ready() -> Result<usize, String> {
    let n = online();
    ensure!(
        irq::wait_until(1000, || (0..n).all(irq::ready)),
        "CPUs not taking interrupts: {:?}",
        (0..n).filter(|&i| !irq::ready(i)).collect::<Vec<_>>()
    );
    Ok(n)
}

kernel_test!(irq_ticks_on_every_cpu);
/// Ticks arrive on every online CPU within a bounded time, never faster
/// than HZ, and no unexpected INTID is ever acknowledged. Checked by breaking
/// the code on purpose: no tick on the secondaries, and a period of HZ/4.
/// Each break made it fail.
fn irq_ticks_on_every_cpu() -> Result<(), String> {
    if let Some(why) = irq::no_interrupts_reason() {
        return super::cannot_apply(why);
    }
    let n = all_ready()?;
    let before: Vec<u64> = (0..n).map(irq::ticks).collect();
    // CPU 0 takes its ticks in the waiting loop's IRQ windows, the others in
    // their idle loop.
    let ok = irq::wait_until(2000, || (0..n).all(|i| irq::ticks(i) >= before[i] + 3));
    let got: Vec<u64> = (0..n).map(|i| irq::ticks(i) - before[i]).collect();
    ensure!(ok, "not every CPU got 3 ticks within 2 s: {got:?}");
    // The rate: never faster than HZ (the tick is re-armed when handled).
    let (t0, k0) = (timer::now(), irq::ticks(0));
    irq::wait_until(300, || false);
    let (dt, dk) = (timer::now() - t0, irq::ticks(0) - k0);
    let max = dt * timer::HZ / timer::frequency() + 2;
    ensure!(
        dk >= 2 && dk <= max,
        "cpu0 took {dk} ticks in {} ms (HZ {}, at most {max})",
        dt * 1000 / timer::frequency(),
        timer::HZ
    );
    for i in 0..n {
        ensure!(irq::unexpected(i) == 0, "cpu{i} acknowledged {} interrupt(s) nobody enabled", irq::unexpected(i));
    }
    Ok(())
}

static HOOK_CALLS: [AtomicU64; crate::arch::aarch64::boot::MAX_CPUS] =
    [const { AtomicU64::new(0) }; crate::arch::aarch64::boot::MAX_CPUS];

fn counting_hook(cpu: usize, _from_el0: bool) {
    HOOK_CALLS[cpu].fetch_add(1, Ordering::Relaxed);
}

kernel_test!(irq_tick_hook_runs);
/// The tick hook runs on every CPU and stops when cleared. Checked with a
/// hook that is never called: the test failed.
fn irq_tick_hook_runs() -> Result<(), String> {
    if let Some(why) = irq::no_interrupts_reason() {
        return super::cannot_apply(why);
    }
    let n = all_ready()?;
    for c in &HOOK_CALLS {
        c.store(0, Ordering::Relaxed);
    }
    irq::set_tick_hook(Some(counting_hook));
    let ok = irq::wait_until(2000, || (0..n).all(|i| HOOK_CALLS[i].load(Ordering::Relaxed) >= 2));
    irq::set_tick_hook(None);
    let calls: Vec<u64> = (0..n).map(|i| HOOK_CALLS[i].load(Ordering::Relaxed)).collect();
    ensure!(ok, "the tick hook did not run twice on every CPU within 2 s: {calls:?}");
    // Cleared: no more calls.
    irq::wait_until(50, || false);
    let after: Vec<u64> = (0..n).map(|i| HOOK_CALLS[i].load(Ordering::Relaxed)).collect();
    irq::wait_until(100, || false);
    let later: Vec<u64> = (0..n).map(|i| HOOK_CALLS[i].load(Ordering::Relaxed)).collect();
    ensure!(after == later, "the hook still runs after it was cleared: {after:?} -> {later:?}");
    Ok(())
}

static SGI_SEEN_BY: AtomicU64 = AtomicU64::new(0);

fn record_sgi(cpu: usize) {
    SGI_SEEN_BY.fetch_or(1 << cpu, Ordering::AcqRel);
}

kernel_test!(irq_sgi_reaches_each_cpu);
/// An SGI from CPU 0 to each CPU is received by that CPU only. Checked
/// with the wrong SGI target (the GICv2 target mask, the GICv3 Aff0): the
/// test failed.
fn irq_sgi_reaches_each_cpu() -> Result<(), String> {
    if let Some(why) = irq::no_interrupts_reason() {
        return super::cannot_apply(why);
    }
    let n = all_ready()?;
    irq::set_sgi_handler(sgi::PING, Some(record_sgi));
    let r = (|| -> Result<(), String> {
        // From CPU 0 to each CPU in turn (itself included: on one CPU that is
        // the only target there is).
        for target in 0..n {
            SGI_SEEN_BY.store(0, Ordering::Release);
            let before: Vec<u64> = (0..n).map(|i| irq::sgi_count(i, sgi::PING)).collect();
            irq::send_ipi(target, sgi::PING).map_err(|e| alloc::format!("send to cpu{target}: {e}"))?;
            let ok = irq::wait_until(1000, || irq::sgi_count(target, sgi::PING) > before[target]);
            ensure!(ok, "cpu{target} did not receive the SGI within 1 s");
            irq::wait_until(20, || false); // a stray delivery elsewhere would show up by now
            for (i, b) in before.iter().enumerate() {
                let d = irq::sgi_count(i, sgi::PING) - b;
                let want = if i == target { 1 } else { 0 };
                ensure!(d == want, "SGI to cpu{target}: cpu{i} received it {d} time(s)");
            }
            let seen = SGI_SEEN_BY.load(Ordering::Acquire);
            ensure!(seen == 1 << target, "SGI to cpu{target}: handler ran on CPUs {seen:#b}");
        }
        Ok(())
    })();
    irq::set_sgi_handler(sgi::PING, None);
    r
}

kernel_test!(irq_from_el0_returns_to_el0);
/// An agent loop long enough to span several ticks at EL0: each tick enters
/// the EL0 IRQ vector and must come back to EL0 with every register, SP_EL0
/// and the flags as they were. (QEMU takes interrupts between translation
/// blocks, so the loop keeps its flags and registers live across them.)
///
/// Checked with an EL0 IRQ path that changes x20, NZCV or SP_EL0, and with
/// no EL0 IRQ vector: each made it fail.
fn irq_from_el0_returns_to_el0() -> Result<(), String> {
    if let Some(why) = irq::no_interrupts_reason() {
        return super::cannot_apply(why);
    }
    // The loop runs here, where the entries are counted.
    proc::sched::pin_to_caller(irq_from_el0_here)
}

fn irq_from_el0_here() -> Result<(), String> {
    all_ready()?;
    let name = "irq_el0_test";
    proc::spawn(name)?;
    let r = (|| -> Result<(), String> {
        let seed = 0x5eed_0000_1234_0000u64;
        let mut iterations = 1u64 << 20;
        let deadline = timer::now() + timer::ms_to_counts(10_000);
        loop {
            let (el0_before, _) = irq::entries(0);
            let ticks_before = irq::ticks(0);
            let regs = proc::spin(name, seed, iterations)?;
            let taken = irq::entries(0).0 - el0_before;
            let e = Esr(regs.esr);
            ensure!(
                e.ec() == ExceptionClass::Svc64 && e.imm16() == SVC_DONE && regs.x[0] == 0,
                "the agent did not finish: {e}, x0 {:#x}",
                regs.x[0]
            );
            ensure!(
                regs.x[2] == op::SPIN_NZCV,
                "NZCV {:#x} after the loop, expected {:#x}: flags disturbed",
                regs.x[2],
                op::SPIN_NZCV
            );
            ensure!(regs.sp_el0 == seed & !0xf, "SP_EL0 {:#x}, expected {:#x}", regs.sp_el0, seed & !0xf);
            ensure!(regs.x[1] == seed, "x1 {:#x}, expected {seed:#x}", regs.x[1]);
            for k in 3..=30 {
                ensure!(
                    regs.x[k] == seed + k as u64,
                    "x{k} = {:#x} after {taken} IRQ(s) at EL0, expected {:#x}",
                    regs.x[k],
                    seed + k as u64
                );
            }
            if taken >= 3 {
                ensure!(
                    irq::ticks(0) - ticks_before >= 3,
                    "{taken} IRQs at EL0 but only {} ticks",
                    irq::ticks(0) - ticks_before
                );
                println!("  {iterations} iterations at EL0 took {taken} IRQs, registers intact");
                break;
            }
            ensure!(
                timer::now() < deadline && iterations < 1 << 36,
                "no 3 IRQs taken at EL0 in one run of up to {iterations} iterations (10 s)"
            );
            iterations *= 2;
        }
        // The process is still fine afterwards.
        let va = proc::mmap(name, "buf", super::anon(PAGE_SIZE))?;
        ensure!(matches!(proc::access(name, op::WRITE, va, 64, 3)?, RunEnd::Done), "process unusable after the IRQs");
        Ok(())
    })();
    proc::exit(name)?;
    r
}

kernel_test!(pan_blocks_plain_el1_access_to_user_pages);
///
/// Checked by breaking the code on purpose, each break separately: SPAN left
/// set, `has_pan` false, and `LDRB`/`STRB` in either copy. Each break made it
/// fail.
fn pan_blocks_plain_el1_access_to_user_pages() -> Result<(), String> {
    // The EL0 run must come back on this CPU, whose PSTATE.PAN is checked.
    proc::sched::pin_to_caller(pan_blocks_plain_access_here)
}

fn pan_blocks_plain_access_here() -> Result<(), String> {
    let name = "pan_test";
    proc::spawn(name)?;
    let r = (|| -> Result<(), String> {
        let va = proc::mmap(name, "buf", super::anon(PAGE_SIZE))?;
        // An EL0 run first: the kernel comes back through an exception from
        // EL0, which must set PAN again (SCTLR_EL1.SPAN = 0).
        ensure!(matches!(proc::access(name, op::WRITE, va, 16, 0xa7)?, RunEnd::Done), "agent write failed");
        // Read the ID register here rather than trust cpu::has_pan().
        let has = crate::arch::aarch64::sysreg::id_has_pan();
        ensure!(
            cpu::pan() == has,
            "PSTATE.PAN is {} after an EL0 run on a CPU {} PAN",
            cpu::pan(),
            if has { "with" } else { "without" }
        );
        let (plain_read, plain_write, copied, wrote) = proc::with_ttbr0(name, || {
            let r = probe_read_u8(va.as_u64());
            // SAFETY: a byte of the test's own user page.
            let w = unsafe { probe_write_u8((va + 1).as_u64(), 0x11) };
            let mut b = [0u8; 16];
            let c = copy_from_user(&mut b, va.as_u64()).map(|_| b);
            let t = copy_to_user((va + 8).as_u64(), &[0x3c; 8]);
            (r, w, c, t)
        })?;
        // The uaccess helpers work either way.
        ensure!(wrote.is_ok(), "copy_to_user failed");
        let expect_second = if has { 0xa7 } else { 0x11 };
        let mut want = [0xa7u8; 16];
        want[1] = expect_second;
        ensure!(copied == Ok(want), "copy_from_user gave {copied:?}, expected {want:?}");
        ensure!(
            matches!(proc::access(name, op::CHECK, va + 8, 8, 0x3c)?, RunEnd::Done),
            "copy_to_user's bytes not seen by EL0"
        );
        if !has {
            ensure!(
                plain_read == Ok(0xa7) && plain_write.is_ok(),
                "without PAN a plain EL1 access to a user page works"
            );
            return super::cannot_apply(
                "no FEAT_PAN on this CPU: only checked that uaccess works (PAN runs under -cpu max)",
            );
        }
        for (what, r, write) in [("read", plain_read.map(|_| ()), false), ("write", plain_write, true)] {
            let (esr, far) =
                r.err().ok_or_else(|| alloc::format!("a plain EL1 {what} of a user page succeeded with PAN on"))?;
            let e = Esr(esr);
            ensure!(e.ec() == ExceptionClass::DataAbortSameEl, "{what}: {e}");
            ensure!(
                matches!(e.fault_status(), Some(FaultStatus::Permission(_))),
                "{what}: expected a permission fault, got {e}"
            );
            ensure!(e.wnr() == write, "{what}: WnR wrong: {e}");
            let at = if write { va + 1 } else { va };
            ensure!(far == at.as_u64(), "{what}: FAR {far:#x}, expected {at:#x}");
        }
        Ok(())
    })();
    proc::exit(name)?;
    r
}
