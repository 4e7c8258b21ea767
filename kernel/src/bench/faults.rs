//! Fault-path benchmarks from EL0, the way `../shared/linux-anchor` measures
//! Linux: fresh 2 MiB-aligned regions of 16 MiB (4096 pages at 4K), one
//! byte per page touched by the EL0 agent, [`super::REPS`] repetitions,
//! median, and the same loop over already-populated pages subtracted. Each
//! measurement checks it measured what it claims: the number of faults the
//! kernel handled per page (1 for fault tests, 0 for the baselines).

use alloc::vec::Vec;

use super::{instructions, median};
use crate::arch::aarch64::granule::PAGE_SIZE;
use crate::arch::aarch64::user::op;
use crate::mm::addr::VirtAddr;
use crate::mm::mmap::MmapArgs;
use crate::mm::userfaultfd;
use crate::println;
use crate::proc::{self, RunEnd, syscall::nr};

const REGION: u64 = 16 << 20;
const PROC: &str = "bench";
const CHILD: &str = "bench_child";

/// What one measurement collects over the repetitions.
struct Series {
    name: &'static str,
    unit: &'static str,
    note: &'static str,
    /// Tenths of an instruction per unit.
    values: Vec<u64>,
}

/// Records `v` for the series `name` (by name: an index silently goes to
/// the wrong row when rows are added).
fn record(s: &mut [Series], name: &str, v: u64) {
    s.iter_mut().find(|x| x.name == name).expect("no such bench series").values.push(v);
}

/// One access per page: (instructions, faults).
fn touch(p: &str, va: u64, pages: u64, write: bool) -> (u64, u64) {
    touch_stride(p, va, pages, PAGE_SIZE, write)
}

fn touch_stride(p: &str, va: u64, count: u64, stride: u64, write: bool) -> (u64, u64) {
    let f0 = proc::fault_count(p);
    let t0 = instructions();
    let r = proc::access_stride(p, if write { op::STORE } else { op::TOUCH_READ }, VirtAddr::new(va), count, stride);
    let dt = instructions() - t0;
    assert!(matches!(r, Ok(RunEnd::Done)), "bench touch failed: {r:?}");
    (dt, proc::fault_count(p) - f0)
}

fn timed_syscall(p: &str, n: u64, args: [u64; 6]) -> u64 {
    let t0 = instructions();
    let r = proc::syscall(p, n, args);
    let dt = instructions() - t0;
    assert!(matches!(r, Ok(v) if v >= 0), "bench syscall {n} failed: {r:?}");
    dt
}

fn region(rep: usize, tag: &str) -> u64 {
    region_thp(rep, tag, 0)
}

fn region_thp(rep: usize, tag: &str, folio_order: u8) -> u64 {
    let name = alloc::format!("{tag}{rep}");
    proc::mmap(
        PROC,
        &name,
        MmapArgs {
            size: REGION,
            readable: true,
            writable: true,
            align: 2 << 20,
            folio_order,
            pfn: None,
            shared: false,
            memfd: None,
            file: None,
            noreserve: false,
        },
    )
    .expect("bench mmap")
    .as_u64()
}

/// Runs the fault benchmarks; returns the number of problems.
pub fn run() -> usize {
    let n = REGION / PAGE_SIZE;
    let mut problems = 0;
    let mut check = |what: &str, faults: u64, want: u64| {
        if faults != want {
            println!("bench: PROBLEM: {what}: {faults} faults, expected {want}");
            problems += 1;
        }
    };
    let mut s: Vec<Series> = [
        ("null_syscall", "call", "getpid from EL0: svc round trip and dispatch, plus 3 loop instructions"),
        ("anon_write_fault", "page", "first write to private anon memory: zeroed page"),
        ("anon_read_fault_zero", "page", "first read: maps the shared zero page"),
        ("write_after_zero_page", "page", "write to a zero-page mapping: private copy"),
        ("fork_populated", "page", "clone() of a process with 16 MiB populated, per page"),
        ("cow_write_child_copy", "page", "child's write after fork: copy"),
        ("cow_write_parent_reuse", "page", "parent's write after the child exited: reuse"),
        ("mprotect_ro_populated", "page", "mprotect RW->R of 16 MiB populated, per page"),
        ("mprotect_rw_populated", "page", "mprotect R->RW (exclusive pages become writable), per page"),
        ("munmap_populated", "page", "munmap of 16 MiB populated, per page"),
        ("thp_write_fault_2M", "2MiB", "first write to a thp=2M region: one zeroed 2M folio, one block entry"),
        ("thp_read_fault_2M", "2MiB", "first read of a thp=2M region: the huge zero folio, one block entry"),
        ("swap_out", "page", "madvise pageout of 16 MiB of exclusive anon pages to swap (kernel call), per page"),
        ("swap_in_fault", "page", "first read after pageout: swap-in from the RAM swap device"),
        (
            "uffd_wp_fault",
            "page",
            "write to a uffd write-protected page: fault, event, resolve (unprotect), write fault (reuse)",
        ),
        ("migrate", "page", "P migrate of 16 MiB populated (exclusive anon pages), per page: rmap, copy, remap"),
    ]
    .into_iter()
    .map(|(name, unit, note)| Series { name, unit, note, values: Vec::new() })
    .collect();
    let per = |dt: u64, base: u64| dt.saturating_sub(base) * 10 / n;
    let thp = crate::mm::huge_memory::pmd_size() == 2 << 20;
    proc::spawn(PROC).expect("bench spawn");
    for rep in 0..super::REPS {
        // null syscall: the same agent run with and without the svc.
        // null syscall: 1001 getpid calls in one agent run minus 1, per call.
        let timed_loop = |n: u64| {
            let t0 = instructions();
            let r = proc::syscall_loop(PROC, nr::GETPID, n);
            let dt = instructions() - t0;
            assert!(matches!(r, Ok(RunEnd::Done)), "bench syscall loop failed: {r:?}");
            dt
        };
        let (t_sys, t_empty) = (timed_loop(1001), timed_loop(1));
        s[0].values.push(t_sys.saturating_sub(t_empty) * 10 / 1000);

        // a: write faults, then the populated baseline on the same pages.
        let a = region(rep, "a");
        let (t, f) = touch(PROC, a, n, true);
        check("anon_write_fault", f, n);
        let (wbase, f) = touch(PROC, a, n, true);
        check("write baseline", f, 0);
        s[1].values.push(per(t, wbase));

        // b, c: read faults map the zero page; writes then copy it.
        let b = region(rep, "b");
        let (t, f) = touch(PROC, b, n, false);
        check("anon_read_fault_zero", f, n);
        let (rbase, f) = touch(PROC, b, n, false);
        check("read baseline", f, 0);
        s[2].values.push(per(t, rbase));
        let (t, f) = touch(PROC, b, n, true);
        check("write_after_zero_page", f, n);
        s[3].values.push(per(t, wbase));

        // fork with `a` and `b` populated (two regions: per page of both).
        let t0 = instructions();
        proc::fork(PROC, CHILD).expect("bench fork");
        s[4].values.push(per(instructions() - t0, 0) / 2);
        let (t, f) = touch(CHILD, a, n, true);
        check("cow_write_child_copy", f, n);
        s[5].values.push(per(t, wbase));
        proc::exit(CHILD).expect("bench child exit");
        let (t, f) = touch(PROC, a, n, true);
        check("cow_write_parent_reuse", f, n);
        s[6].values.push(per(t, wbase));
        proc::wait(PROC).expect("bench wait");

        // mprotect and munmap of a populated region, from EL0.
        let t = timed_syscall(PROC, nr::MPROTECT, [a, REGION, 1, 0, 0, 0]);
        s[7].values.push(per(t, 0));
        let t = timed_syscall(PROC, nr::MPROTECT, [a, REGION, 3, 0, 0, 0]);
        s[8].values.push(per(t, 0));
        let (_, f) = touch(PROC, a, n, true);
        check("write after mprotect RW (exclusive pages stay writable)", f, 0);
        let t = timed_syscall(PROC, nr::MUNMAP, [a, REGION, 0, 0, 0, 0]);
        s[9].values.push(per(t, 0));
        timed_syscall(PROC, nr::MUNMAP, [b, REGION, 0, 0, 0, 0]);

        // Swap: pageout of a populated region, then read faults bring it back.
        if crate::mm::swapfile::total_bytes() >= REGION {
            let c = region(rep, "c");
            touch(PROC, c, n, true);
            let t0 = instructions();
            proc::madvise(PROC, VirtAddr::new(c), REGION, crate::mm::madvise::Advice::PageOut).expect("bench pageout");
            record(&mut s, "swap_out", per(instructions() - t0, 0));
            let (t, f) = touch(PROC, c, n, false);
            check("swap_in_fault", f, n);
            let (base, f) = touch(PROC, c, n, false);
            check("swap-in baseline", f, 0);
            record(&mut s, "swap_in_fault", per(t, base));
            timed_syscall(PROC, nr::MUNMAP, [c, REGION, 0, 0, 0, 0]);
        }
        // uffd-wp: populated, registered, write-protected; each write
        // raises one event (two faults: the event's and the reuse).
        let u = region(rep, "u");
        touch(PROC, u, n, true);
        let wp = proc::with_proc(PROC, |p| {
            let (va, mt) = (VirtAddr::new(u), p.mt());
            let r = userfaultfd::register(mt, va, REGION, false)
                .and_then(|()| userfaultfd::writeprotect(mt, va, REGION, true));
            Ok(r.is_ok())
        });
        check("uffd register and wp on", u64::from(wp != Ok(true)), 0);
        let (t, f) = touch(PROC, u, n, true);
        check("uffd_wp_fault", f, 2 * n);
        let events = proc::with_proc(PROC, |p| Ok(userfaultfd::take_events(&p.mm))).unwrap_or(0);
        check("uffd_wp_fault events", events, n);
        record(&mut s, "uffd_wp_fault", per(t, wbase));
        timed_syscall(PROC, nr::MUNMAP, [u, REGION, 0, 0, 0, 0]);

        // THP: one access per 2M block (block-sized folios exist with 4K pages only).
        if thp {
            let blocks = REGION / (2 << 20);
            // One fresh thp=2M region per kind: faults minus the populated
            // baseline, per block; every block must be a level-2 entry.
            let mut thp_kind = |tag: &str, write: bool, what: &str| -> (u64, u64) {
                let r = region_thp(rep, tag, crate::mm::memory::max_folio_order());
                let (t, f) = touch_stride(PROC, r, blocks, 2 << 20, write);
                check(what, f, blocks);
                let (base, f) = touch_stride(PROC, r, blocks, 2 << 20, write);
                check("thp baseline", f, 0);
                if (0..blocks).any(|i| proc::mapped_level(PROC, VirtAddr::new(r + i * (2 << 20))) != Some(2)) {
                    check("every 2M block-mapped", 0, 1);
                }
                (r, (t - base) * 10 / blocks)
            };
            let (h, v) = thp_kind("h", true, "thp_write_fault_2M");
            s[10].values.push(v);
            let (z, v) = thp_kind("z", false, "thp_read_fault_2M (huge zero folio)");
            s[11].values.push(v);
            timed_syscall(PROC, nr::MUNMAP, [h, REGION, 0, 0, 0, 0]);
            timed_syscall(PROC, nr::MUNMAP, [z, REGION, 0, 0, 0, 0]);
        }

        // migrate: every page of a populated region to a new frame; a write
        // afterwards must take no fault (the pages came back exclusive and
        // writable).
        let m = region(rep, "m");
        touch(PROC, m, n, true);
        let t0 = instructions();
        let moved = proc::migrate(PROC, VirtAddr::new(m), REGION);
        let dt = instructions() - t0;
        check("migrate moved every page", moved.map_or(0, |p| p), n);
        record(&mut s, "migrate", per(dt, 0));
        let (_, f) = touch(PROC, m, n, true);
        check("write after migrate", f, 0);
        timed_syscall(PROC, nr::MUNMAP, [m, REGION, 0, 0, 0, 0]);
    }
    proc::exit(PROC).expect("bench exit");
    if let Err(e) = crate::console::commands::invariants() {
        println!("bench: PROBLEM: invariants after the fault benchmarks: {e}");
        problems += 1;
    }
    for x in s {
        if x.values.is_empty() {
            println!("bench: {} skipped: no 2M blocks with this granule, or no 16 MiB of swap", x.name);
            continue;
        }
        let v = median(x.values);
        println!("bench: {} {} {}.{}", x.name, x.unit, v / 10, v % 10);
        println!("       {}", x.note);
    }
    problems
}
