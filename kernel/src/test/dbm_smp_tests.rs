//! Hardware dirty state (TCR_EL1.HD, DBM) against read-modify-writes of
//! live entries, on real CPUs: EL0 writers on three CPUs keep writing
//! their pages while this CPU runs mprotect(R), mprotect(RW) and fork
//! (whose wrprotect of the parent is the other read-modify-write) over
//! them. A writer that meets an entry mprotect(R) made read-only after the
//! VMA is RW again has its fault resolved and goes on.
//!
//! A writable-clean entry (DBM set, AP[2] set) is dirtied by the MMU of
//! the writer's CPU, with no fault, by clearing AP[2] in the live entry. A
//! table edit that loads the entry, computes the new one and stores it
//! back loses that update if the MMU makes it in between: the entry comes
//! back read-only and clean although the page was written. Linux's
//! `ptep_set_wrprotect` and `__ptep_set_access_flags` are compare-and-swap
//! loops for this reason.
//!
//! Clean points: in anon private memory every entry is dirty from the
//! write fault that creates it, so there the clean point is the page's
//! first write and the check is that no written page ever reads clean. In
//! a shared mapping `madvise(MADV_DONTNEED)` drops the entries and a read
//! of every page maps them again writable-clean: that is the clean point
//! of each shared round, and the writers' first store to each page is the
//! MMU's clean-to-dirty update that an mprotect(R) racing it can lose.
//!
//! After each round every page written since its clean point must be
//! dirty (hardware or software state), every byte a writer wrote must hold
//! its value, no other byte may change, and a forked child sees each byte
//! either before or after the round's write.
//!
//! [`RMW_WINDOW_SPINS`] widens the read-modify-write window on purpose
//! (as `mm::gup::RACE_WINDOW_SPINS` does GUP-fast's): the cursor's
//! compare-and-swap loop calls `rmw_window` between its load of a valid
//! entry and its compare-and-swap of the new value, and mprotect(R) covers
//! [`AHEAD`] pages just ahead of each writer, so that the writer's first
//! store to a clean page falls inside the window. A compare-and-swap loop
//! then fails its swap and retries with the dirty entry; a plain store
//! loses the update. The test requires at least one such failed swap
//! (`RMW_CAS_RETRIES`) during the mprotects, so a run in which the race
//! never happened fails instead of passing for nothing.
//!
//! Broken on purpose: `change_protection` with its plain load and store
//! (mm/memory.rs before the page-table cursor) and `rmw_window()` called
//! after the load, under QEMU TCG (`--smp 4 --cpu max`, `pagelab.hw-dbm=1
//! pagelab.hw-af=1`), failed 8 runs out of 8 with 4K pages (first in
//! rounds 36, 24, 15, 6, 3, 6, 6 and 0), 2 of 2 with 16K and 2 of 2 with 64K:
//! `page 0x10003f6000 was written since its clean point but its entry is
//! clean: Desc(0x0060000049266fc3)` (read-only, no DBM, no software dirty
//! bit). The same with a compare-and-swap loop in `change_protection`
//! (load, `rmw_window()`, compute, `compare_exchange`, on failure again
//! from the value found) passed 8 runs out of 8, and its failed swaps were
//! the MMU's updates: `0x68000049228fc3` found as `0x68000049228f43`
//! (AP[2] cleared, the page dirtied) and then write-protected as dirty.
//! With the window closed (no spins) the race was not hit under TCG in 13
//! runs on the three granules: the widening is what makes the test able to
//! fail, so it checks the cursor really went through the window.
//!
//! Broken on purpose in the cursor: `cas_loop` with a plain store of the
//! new value instead of its compare-and-swap (4K, `--smp 4 --cpu max`,
//! with the mprotect(RW) passes and this file's [`AHEAD`], [`GAP`] and
//! [`PASSES`]) failed in round 45: `page 0x100000f000 was written since
//! its clean point but its entry is clean: Desc(0x0068000048e9ffc3) (a
//! dirty update was lost)`. With the compare-and-swap and these
//! constants, runs under TCG on a loaded host passed with 1, 3 and 9
//! failed swaps in the mprotects over the 48 rounds (4K); with [`PASSES`] = 3,
//! [`GAP`] = 2 and [`AHEAD`] = 4 one 4K run had 6 and another none. With
//! the window and distances scaled to the page ([`SCALE`]), 16K runs had
//! 10 and 64K runs 11 and 13 (unscaled: 1 to 3 on 16K, 0 or 1 on 64K). The
//! race stays rare under TCG, so the check on the count can fail on a slow
//! host although nothing was lost.

use alloc::string::String;
use alloc::sync::Arc;
use alloc::vec;
use alloc::vec::Vec;
use core::sync::atomic::Ordering;

use super::anon;
use crate::arch::aarch64::esr::{Esr, FaultStatus};
use crate::arch::aarch64::granule::PAGE_SIZE;
use crate::arch::aarch64::user::op;
use crate::arch::percpu;
use crate::ensure;
use crate::mm::addr::VirtAddr;
use crate::mm::desc::{self, Desc};
use crate::mm::layout::phys_to_virt;
use crate::mm::mmap::MmapArgs;
use crate::mm::pgtable::Translation;
use crate::mm::pgtable::cursor::{RMW_CAS_RETRIES, RMW_WINDOW_CALLS, RMW_WINDOW_SPINS};
use crate::println;
use crate::proc::sched::{self, Task};
use crate::proc::{self, RunEnd};

/// Bytes each writer writes per round, one at a time (512 pages of 4K,
/// 32 of 64K): long enough that this CPU acts while they write.
const SLICE: u64 = 2 << 20;
/// Rounds of each kind.
const ROUNDS: u64 = 16;
/// Pages of this granule per 4K page. A writer's time per page grows with
/// the page (it writes byte by byte), so the edit's window and its
/// distances are set in 4K units and scaled: on every granule the edit
/// starts about as far ahead of the writer, in bytes, and is as slow
/// against it. With the 4K constants unscaled, a 64K run's writers
/// crossed a page boundary only once per several windows and one run
/// found no retried swap in 96 rounds.
const SCALE: u64 = PAGE_SIZE / 4096;
/// Pages mprotect(R) covers ahead of each writer, starting [`GAP`] pages
/// after the writer's: far enough that the writer is not there yet when the
/// edit loads the first entry. The writer, faster than the widened edit,
/// catches up with it within the range and dirties the entry it has loaded.
const AHEAD: u64 = at_least(32 / SCALE, 2);
const GAP: u64 = at_least(8 / SCALE, 1);

const fn at_least(v: u64, min: u64) -> u64 {
    if v > min { v } else { min }
}
/// Passes of mprotect(R) then (RW) ahead of the writers in one round, while
/// they write: each is one chance that a writer dirties a clean page inside
/// an edit's window (one in a few passes under TCG).
const PASSES: u64 = 12;

/// The spins `rmw_window` makes in round `round`: from 40,000 to
/// 320,000 per 4K of page (under TCG about 0.2 to 2 ms on 4K), about as
/// long as a writer takes for [`GAP`] pages.
fn window_spins(round: u64) -> u64 {
    (40_000 << (round / 3 % 4)) * SCALE
}

/// What this CPU does while the writers write.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Action {
    /// mprotect(R) of a few pages ahead of each writer ([`mprotect_ahead`])
    /// and (RW) of the same pages while the writers write, a few times,
    /// then (RW) of the whole region once the writers stopped.
    Mprotect,
    /// fork, then the child exits (the parent's entries are write-protected).
    Fork,
}

/// One region: its base, whether it is a shared mapping, and the value of
/// every byte as the writers left it (the oracle).
struct Region {
    base: u64,
    shared: bool,
    bytes: Vec<u8>,
}

fn me() -> usize {
    percpu::this_cpu().id
}

/// The leaf entry and the bytes of the page at `va` of `name` (read through
/// the linear map).
fn page(name: &str, va: u64) -> Result<(Desc, &'static [u8]), String> {
    let (pa, d) = proc::with_tables(name, |_, t| match t.translate(VirtAddr::new(va)) {
        Translation::Mapped { pa, desc, .. } => Some((pa, desc)),
        _ => None,
    })?
    .ok_or_else(|| alloc::format!("{va:#x} of {name} is not mapped"))?;
    // SAFETY: a mapped user page; the writers have stopped or write
    // single bytes, which a byte load observes whole.
    let bytes = unsafe { core::slice::from_raw_parts(phys_to_virt(pa).as_u64() as *const u8, PAGE_SIZE as usize) };
    Ok((d, bytes))
}

fn dirty(d: Desc) -> bool {
    d.sw_dirty() || d.hw_dirty()
}

/// The byte value of round `round` (never 0, never the previous round's).
fn value(round: u64) -> u8 {
    1 + (round % 254) as u8
}

kernel_test!(dbm_smp_writers_vs_mprotect_fork);
/// Writers on three CPUs against mprotect(R)/(RW) and fork on this one,
/// over a shared and a private region; see the module comment.
fn dbm_smp_writers_vs_mprotect_fork() -> Result<(), String> {
    if !desc::hw_dbm() {
        return super::cannot_apply(
            "hardware dirty state is off: runs with pagelab.hw-dbm=1 pagelab.hw-af=1 on --cpu max --smp 4",
        );
    }
    let n = percpu::ONLINE.load(Ordering::Acquire);
    let ready = crate::irq::wait_until(1000, || (0..n).all(crate::irq::ready));
    if n < 4 || !ready {
        return super::cannot_apply("needs 4 CPUs that take interrupts: runs with --smp 4");
    }
    let here = me();
    let cpus: Vec<usize> = (0..n).filter(|&c| c != here).take(3).collect();
    let (name, child) = ("dbm_smp", "dbm_smp_child");
    proc::spawn(name)?;
    let r = rounds(name, child, &cpus);
    RMW_WINDOW_SPINS.store(0, Ordering::Release);
    let _ = proc::exit(child);
    proc::exit(name)?;
    r?;
    crate::console::commands::invariants().map_err(|e| alloc::format!("invariants: {e}"))
}

fn rounds(name: &str, child: &str, cpus: &[usize]) -> Result<(), String> {
    let len = cpus.len() as u64 * SLICE;
    let mut shared = Region {
        base: proc::mmap(name, "s", MmapArgs { shared: true, ..anon(len) })?.as_u64(),
        shared: true,
        bytes: vec![0; len as usize],
    };
    let mut private =
        Region { base: proc::mmap(name, "p", anon(len))?.as_u64(), shared: false, bytes: vec![0; len as usize] };
    // Every private page is written once: dirty from here on.
    ensure!(
        matches!(proc::access(name, op::WRITE, VirtAddr::new(private.base), len, 0)?, RunEnd::Done),
        "filling the private region"
    );
    let mut stats = Stats::default();
    let calls_before = RMW_WINDOW_CALLS.load(Ordering::Relaxed);
    // The race is rare under TCG on a loaded host (1 or 2 retried swaps in
    // 48 rounds in a full test run): a run that has not hit it after its
    // rounds goes on, up to three times as many again, before it says the
    // race was never hit.
    let mut round = 0;
    while round < 3 * ROUNDS || (stats.cas_retries == 0 && round < 12 * ROUNDS) {
        let (region, action) = match round % 3 {
            0 => (&mut shared, Action::Mprotect),
            1 => (&mut private, Action::Fork),
            _ => (&mut private, Action::Mprotect),
        };
        one_round(name, child, cpus, region, action, round, &mut stats)
            .map_err(|e| alloc::format!("round {round} ({action:?}, shared {}): {e}", region.shared))?;
        round += 1;
    }
    let windows = RMW_WINDOW_CALLS.load(Ordering::Relaxed) - calls_before;
    println!(
        "  {} rounds: {} shared pages written after their clean point, {} writers stopped by mprotect(R), \
         {} mprotect(RW) passes while writing, {} forks, {} widened windows, {} compare-and-swap retries in mprotect",
        round, stats.cleaned_then_written, stats.stopped, stats.rw_passes, stats.forks, windows, stats.cas_retries
    );
    ensure!(windows > 0, "no read-modify-write went through the widened window: the race was never set up");
    ensure!(
        stats.cleaned_then_written > 0,
        "no shared page was written after its clean point: the race was never set up"
    );
    ensure!(stats.rw_passes > 0, "no mprotect(RW) ran while a writer wrote");
    ensure!(
        stats.cas_retries > 0,
        "no compare-and-swap of an mprotect found the entry changed since its load: the race was never hit"
    );
    Ok(())
}

#[derive(Default)]
struct Stats {
    /// Shared pages written in a round (each is writable-clean at the
    /// round's clean point).
    cleaned_then_written: u64,
    /// mprotect(RW) passes made while a writer was still writing.
    rw_passes: u64,
    /// Failed compare-and-swaps ([`RMW_CAS_RETRIES`]) during the mprotect
    /// actions: an entry changed between the edit's load and its swap.
    cas_retries: u64,
    /// Writers that an mprotect(R) stopped with a permission fault.
    stopped: u64,
    /// forks made while the writers wrote.
    forks: u64,
}

fn one_round(
    name: &str,
    child: &str,
    cpus: &[usize],
    region: &mut Region,
    action: Action,
    round: u64,
    stats: &mut Stats,
) -> Result<(), String> {
    let slice = SLICE;
    let len = cpus.len() as u64 * slice;
    let v = value(round);
    RMW_WINDOW_SPINS.store(window_spins(round), Ordering::Release);
    if region.shared {
        // The clean point: no entries, then every page read back in
        // writable-clean (this CPU; the writers' CPUs never cached them).
        proc::madvise(name, VirtAddr::new(region.base), len, crate::mm::madvise::Advice::DontNeed)?;
        let r = sched::pin_to_caller(|| proc::access(name, op::TOUCH_READ, VirtAddr::new(region.base), len, 0))?;
        ensure!(matches!(r, RunEnd::Done), "reading the shared pages back in: {r:?}");
        for p in 0..len / PAGE_SIZE {
            let (d, _) = page(name, region.base + p * PAGE_SIZE)?;
            ensure!(d.dbm() && d.perms().read_only, "page {p} is not writable-clean at the clean point: {d:?}");
        }
    }
    let writers: Vec<Arc<Task>> = cpus
        .iter()
        .enumerate()
        .map(|(i, &c)| {
            let x = [op::WRITE, region.base + i as u64 * slice, slice, v as u64];
            proc::with_proc(name, |p| Ok(sched::spawn(p, proc::agent_frame(&x, 0), Some(c))))
        })
        .collect::<Result<_, _>>()?;
    // Act once a writer is under way (its first byte is written).
    let started = crate::irq::wait_until(2000, || {
        (0..cpus.len() as u64).any(|i| page(name, region.base + i * slice).is_ok_and(|(_, b)| b[0] == v))
    });
    let acted = if started {
        match action {
            Action::Mprotect => sched::pin_to_caller(|| {
                let retries = RMW_CAS_RETRIES.load(Ordering::Relaxed);
                // Again while any writer writes.
                let r = (|| {
                    for _ in 0..PASSES {
                        if writers.iter().all(|t| t.is_done()) {
                            break;
                        }
                        let ranges = mprotect_ahead(name, region.base, slice, &writers, v)?;
                        // Back to RW while the writers write: a writer that
                        // meets a read-only entry of a VMA already RW has its
                        // fault resolved and goes on.
                        if !writers.iter().all(|t| t.is_done()) {
                            stats.rw_passes += 1;
                        }
                        for (va, len) in ranges {
                            proc::mprotect(name, VirtAddr::new(va), len, true, true)?;
                        }
                    }
                    Ok(())
                })();
                stats.cas_retries += RMW_CAS_RETRIES.load(Ordering::Relaxed) - retries;
                r
            }),
            Action::Fork => sched::pin_to_caller(|| proc::fork(name, child).map(|_| ())),
        }
    } else {
        Ok(())
    };
    // Where each writer stopped: the end of its slice, or the byte an
    // mprotect(R) refused.
    let mut ends = Vec::new();
    for (i, t) in writers.iter().enumerate() {
        let regs = sched::wait(t);
        let start = region.base + i as u64 * slice;
        ends.push(match proc::run_end(&regs) {
            RunEnd::Done => start + slice,
            RunEnd::Fault { addr, esr, .. }
                if action == Action::Mprotect
                    && regs.x[1] == addr.as_u64()
                    && Esr(esr).fault_status().is_some_and(|f| matches!(f, FaultStatus::Permission(_))) =>
            {
                stats.stopped += 1;
                addr.as_u64()
            }
            e => return Err(alloc::format!("the writer on cpu{} ended with {e:?}", cpus[i])),
        });
    }
    ensure!(started, "the writers did not start within 2 s");
    acted?;
    if action == Action::Fork {
        stats.forks += 1;
        // The child's copy is the region at some instant of the fork: each
        // byte holds its value from before this round or this round's.
        for p in 0..len / PAGE_SIZE {
            let (_, b) = page(child, region.base + p * PAGE_SIZE)?;
            let old = &region.bytes[(p * PAGE_SIZE) as usize..((p + 1) * PAGE_SIZE) as usize];
            if let Some(k) = (0..b.len()).find(|&k| b[k] != v && b[k] != old[k]) {
                return Err(alloc::format!(
                    "the child's byte {:#x} is {:#x}, neither the old {:#x} nor the new {v:#x}",
                    region.base + p * PAGE_SIZE + k as u64,
                    b[k],
                    old[k]
                ));
            }
        }
        sched::pin_to_caller(|| proc::exit(child))?;
    }
    for (i, &end) in ends.iter().enumerate() {
        let start = i as u64 * slice;
        region.bytes[start as usize..(end - region.base) as usize].fill(v);
    }
    check(name, region, round, stats)?;
    if action == Action::Mprotect {
        // The writers have stopped: no window to widen.
        RMW_WINDOW_SPINS.store(0, Ordering::Release);
        sched::pin_to_caller(|| proc::mprotect(name, VirtAddr::new(region.base), len, true, true))?;
    }
    Ok(())
}

/// mprotect(R) of [`AHEAD`] pages ahead of each writer still writing, in
/// turn, so that the table edit meets the writer at a clean page: the
/// writer, faster than the widened edit, walks into the entry the edit has
/// loaded and not yet stored. Returns the ranges it made read-only.
fn mprotect_ahead(
    name: &str,
    base: u64,
    slice: u64,
    writers: &[Arc<Task>],
    v: u8,
) -> Result<Vec<(u64, u64)>, proc::ProcError> {
    let pages = slice / PAGE_SIZE;
    let mut ranges = Vec::new();
    for (i, t) in writers.iter().enumerate() {
        if t.is_done() {
            continue;
        }
        let start = base + i as u64 * slice;
        // The writer's page: the last one whose first byte it wrote.
        let (mut lo, mut hi) = (0, pages);
        while lo + 1 < hi {
            let mid = (lo + hi) / 2;
            if page(name, start + mid * PAGE_SIZE).is_ok_and(|(_, b)| b[0] == v) {
                lo = mid;
            } else {
                hi = mid;
            }
        }
        let from = lo + GAP;
        if from < pages {
            let to = (from + AHEAD).min(pages);
            let range = (start + from * PAGE_SIZE, (to - from) * PAGE_SIZE);
            proc::mprotect(name, VirtAddr::new(range.0), range.1, true, false)?;
            ranges.push(range);
        }
    }
    Ok(ranges)
}

/// Every byte as the oracle says, and every page written since its clean
/// point dirty.
fn check(name: &str, region: &Region, round: u64, stats: &mut Stats) -> Result<(), String> {
    let v = value(round);
    for p in 0..region.bytes.len() as u64 / PAGE_SIZE {
        let va = region.base + p * PAGE_SIZE;
        let (d, b) = page(name, va)?;
        let want = &region.bytes[(p * PAGE_SIZE) as usize..((p + 1) * PAGE_SIZE) as usize];
        if let Some(k) = (0..b.len()).find(|&k| b[k] != want[k]) {
            return Err(alloc::format!(
                "byte {:#x} is {:#x}, but {:#x} was written last: a write was lost",
                va + k as u64,
                b[k],
                want[k]
            ));
        }
        // Shared: written since the clean point means written this round.
        // Private: every page was written when the region was filled.
        let written = !region.shared || want.contains(&v);
        if written && region.shared {
            stats.cleaned_then_written += 1;
        }
        ensure!(
            !written || dirty(d),
            "page {va:#x} was written since its clean point but its entry is clean: {d:?} (a dirty update was lost)"
        );
    }
    Ok(())
}
