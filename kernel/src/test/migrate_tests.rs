//! Page migration (`mm::migrate`) and the reverse map (`mm::rmap`): pages
//! really move to new frames with their data and state, for every process
//! that maps them; entries held mid-migration are migration entries of the
//! right kind; an EL0 access from another CPU waits for the move; fork and
//! munmap meet migration entries and leave everything consistent.

use alloc::string::String;
use alloc::vec::Vec;
use core::sync::atomic::{AtomicBool, AtomicPtr, AtomicU64, Ordering};

use super::anon;
use super::sched_tests::{cpus, in_process, me, start};
use crate::arch::aarch64::granule::{GRANULE, PAGE_SIZE};
use crate::arch::aarch64::user::op;
use crate::ensure;
use crate::mm::addr::{PhysAddr, VirtAddr};
use crate::mm::desc::{Desc, Kind, MigrationKind, NonPresent, UFFD_WP_BIT};
use crate::mm::migrate::{self, HELD, HOLD, WAITS};
use crate::mm::mmap::MmapArgs;
use crate::mm::pgtable::{Stage1User, Translation};
use crate::println;
use crate::proc::{self, RunEnd, sched};

/// The entry at `va` in `p`, present or not, and the PA it maps.
fn entry_of(p: &str, va: VirtAddr) -> Result<(Desc, Option<PhysAddr>), String> {
    Ok(proc::with_tables(p, |_, t| match t.translate(va) {
        Translation::Mapped { desc, pa, .. } => (desc, Some(pa.align_down(PAGE_SIZE))),
        Translation::Fault { desc, .. } => (desc, None),
    })?)
}

fn pa_of(p: &str, va: VirtAddr) -> Result<PhysAddr, String> {
    entry_of(p, va)?.1.ok_or_else(|| alloc::format!("{va:#x} is not mapped in {p}"))
}

fn write(p: &str, va: VirtAddr, len: u64, b: u8) -> Result<(), String> {
    ensure!(matches!(proc::access(p, op::WRITE, va, len, b)?, RunEnd::Done), "{p}: write {va:#x}");
    Ok(())
}

fn check(p: &str, va: VirtAddr, len: u64, b: u8) -> Result<(), String> {
    let r = proc::access(p, op::CHECK, va, len, b)?;
    ensure!(matches!(r, RunEnd::Done), "{p}: check {va:#x} for {b:#04x}: {r:?}");
    Ok(())
}

/// Runs one console command, which must not fail.
fn run(line: &str) -> Result<(), String> {
    let mut s = crate::console::commands::Session::new(false);
    s.run_line(1, line.as_bytes());
    ensure!(s.failed == 0, "`{line}` failed");
    Ok(())
}

/// Runs one console line (a `query`), which must pass.
fn console(line: &str) -> Result<(), String> {
    let mut s = crate::console::commands::Session::new(false);
    s.run_line(1, line.as_bytes());
    ensure!(s.failed == 0 && s.passed == 1, "`{line}` did not hold");
    Ok(())
}

kernel_test!(migrate_moves_pages_with_their_state);
/// Anon pages (small, a large folio, a THP block where the block is at
/// most 32M) and a shared memfd page move to new frames: the data is
/// intact, exclusive anon pages stay exclusive (a write after the move
/// takes no fault), the uffd-wp bit stays where it was, the page-cache page is the file's new page for every
/// mapper, and a pinned page stays with the error that says so.
fn migrate_moves_pages_with_their_state() -> Result<(), String> {
    let (a, b) = ("mig_a", "mig_b");
    proc::spawn(b)?;
    let r = in_process(a, || {
        // Small anon pages.
        let va = proc::mmap(a, "m", anon(4 * PAGE_SIZE))?;
        write(a, va, 4 * PAGE_SIZE, 0x31)?;
        // uffd-wp set through the descriptor bit (no `uffd` command here).
        set_uffd_wp(a, va + 3 * PAGE_SIZE)?;
        let before: Vec<PhysAddr> = (0..4).map(|i| pa_of(a, va + i * PAGE_SIZE)).collect::<Result<_, _>>()?;
        ensure!(proc::migrate(a, va, 4 * PAGE_SIZE)? == 4, "4 pages should have moved");
        for i in 0..4 {
            let now = pa_of(a, va + i * PAGE_SIZE)?;
            ensure!(now != before[i as usize], "page {i} did not move ({now})");
        }
        check(a, va, 4 * PAGE_SIZE, 0x31)?;
        console(&alloc::format!(
            "mig_a query m+0:{:#x} expect present writable exclusive anon dirty !migration",
            3 * PAGE_SIZE
        ))?;
        console(&alloc::format!(
            "mig_a query m+{:#x} expect present !writable uffd-wp exclusive anon !migration",
            3 * PAGE_SIZE
        ))?;
        ensure!(entry_of(a, va + 3 * PAGE_SIZE)?.0.uffd_wp(), "the uffd-wp bit did not survive the move");
        ensure!(!entry_of(a, va)?.0.uffd_wp(), "uffd-wp appeared on a page that did not have it");
        let faults = proc::fault_count(a);
        write(a, va, PAGE_SIZE, 0x32)?;
        ensure!(proc::fault_count(a) == faults, "a write after the move faulted (exclusive state lost)");

        // A large folio (one contiguous run) moves whole.
        let cont = crate::mm::memory::cont_size();
        let order = (cont / PAGE_SIZE).trailing_zeros() as u8;
        let l = proc::mmap(a, "l", MmapArgs { folio_order: order, align: cont, ..anon(cont) })?;
        write(a, l, cont, 0x41)?;
        console("mig_a query l expect cont")?;
        let lpa = pa_of(a, l)?;
        proc::migrate(a, l, cont)?;
        let npa = pa_of(a, l)?;
        ensure!(npa != lpa && npa.as_u64() % cont == 0, "the large folio did not move whole ({lpa} -> {npa})");
        for i in 0..cont / PAGE_SIZE {
            ensure!(pa_of(a, l + i * PAGE_SIZE)? == npa + i * PAGE_SIZE, "page {i} of the large folio is elsewhere");
        }
        console(&alloc::format!(
            "mig_a query l expect exclusive writable folio={}",
            crate::mm::mm_struct::size_str(cont)
        ))?;
        check(a, l, cont, 0x41)?;

        // A THP block: split, then moved whole as a PTE-mapped folio.
        let blk = GRANULE.level_size(2);
        if blk <= 32 << 20 {
            let order = (blk / PAGE_SIZE).trailing_zeros() as u8;
            if let Ok(t) = proc::mmap(a, "t", MmapArgs { folio_order: order, align: blk, ..anon(blk) }) {
                write(a, t, blk, 0x51)?;
                if proc::mapped_level(a, t) == Some(2) {
                    let tpa = pa_of(a, t)?;
                    proc::migrate(a, t + PAGE_SIZE, PAGE_SIZE)?;
                    let npa = pa_of(a, t)?;
                    ensure!(npa != tpa, "the THP did not move");
                    ensure!(proc::mapped_level(a, t) == Some(3), "the THP is still block-mapped after the move");
                    check(a, t, blk, 0x51)?;
                    console("mig_a query t expect exclusive writable")?;
                } else {
                    println!("  (no {blk:#x} block: the THP part did not apply)");
                }
                proc::munmap(a, t, blk)?;
            }
        }

        // A memfd page shared by two processes: both see the new page.
        let f = || MmapArgs { shared: true, memfd: Some("migtest".into()), ..anon(PAGE_SIZE) };
        let fa = proc::mmap(a, "f", f())?;
        let fb = proc::mmap(b, "f", f())?;
        write(a, fa, PAGE_SIZE, 0x61)?;
        check(b, fb, PAGE_SIZE, 0x61)?;
        let old = pa_of(a, fa)?;
        ensure!(pa_of(b, fb)? == old, "the two mappings do not share the page");
        proc::migrate(b, fb, PAGE_SIZE)?;
        let new = pa_of(a, fa)?;
        ensure!(new != old && pa_of(b, fb)? == new, "the memfd page did not move for both ({old} -> {new})");
        let file = crate::mm::shmem::open("migtest").map_err(|e| alloc::format!("{e}"))?;
        ensure!(file.caches(0, new), "the page cache does not hold the new page");
        write(b, fb, PAGE_SIZE, 0x62)?;
        check(a, fa, PAGE_SIZE, 0x62)?;

        // A pinned page stays; the error says how many.
        let pins = crate::mm::gup::Foll { write: true, pin: true, longterm: false };
        proc::gup(a, "migpin", va, PAGE_SIZE, pins, false, &|| Ok(()))?;
        let pinned_pa = pa_of(a, va)?;
        match proc::migrate(a, va, 2 * PAGE_SIZE) {
            Err(proc::ProcError::Mm(crate::mm::error::MmError::PagesStayed { stayed: 1, pinned: 1 })) => {}
            other => return Err(alloc::format!("migrating a pinned page: {other:?}")),
        }
        ensure!(pa_of(a, va)? == pinned_pa, "the pinned page moved");
        crate::mm::gup::drop_handle("migpin").map_err(|e| alloc::format!("{e}"))?;
        proc::munmap(b, fb, PAGE_SIZE)?;
        Ok(())
    });
    proc::exit(b)?;
    r
}

// The migrator on another CPU (`kmain::run_on_cpu` takes a plain `fn()`).
static MIG_PROC: AtomicPtr<proc::Process> = AtomicPtr::new(core::ptr::null_mut());
static MIG_VA: AtomicU64 = AtomicU64::new(0);
static MIG_LEN: AtomicU64 = AtomicU64::new(0);
static MIG_MOVED: AtomicU64 = AtomicU64::new(0);
static MIG_DONE: AtomicBool = AtomicBool::new(false);

fn migrator() {
    // SAFETY: the test keeps the process alive until MIG_DONE.
    let p = unsafe { &*MIG_PROC.load(Ordering::Acquire) };
    let (va, len) = (MIG_VA.load(Ordering::Acquire), MIG_LEN.load(Ordering::Acquire));
    let moved = migrate::migrate_range(p.mt(), VirtAddr::new(va), len).unwrap_or(u64::MAX);
    MIG_MOVED.store(moved, Ordering::Release);
    MIG_DONE.store(true, Ordering::Release);
}

/// Starts a migration of `[va, va+len)` of `p` on CPU `cpu`, held between
/// unmap and remap of its first folio ([`HOLD`]).
fn start_held(p: &str, va: VirtAddr, len: u64, cpu: usize) -> Result<(), String> {
    proc::with_proc(p, |pr| {
        MIG_PROC.store(pr as *const proc::Process as *mut proc::Process, Ordering::Release);
        Ok(())
    })?;
    MIG_VA.store(va.as_u64(), Ordering::Release);
    MIG_LEN.store(len, Ordering::Release);
    MIG_DONE.store(false, Ordering::Release);
    HELD.store(0, Ordering::Release);
    HOLD.store(true, Ordering::Release);
    ensure!(crate::kmain::run_on_cpu(cpu, migrator), "cpu{cpu} is not online");
    if !crate::irq::wait_until(2000, || HELD.load(Ordering::Acquire) > 0) {
        HOLD.store(false, Ordering::Release);
        return Err("the migration never reached its hold point".into());
    }
    Ok(())
}

/// Lets the held migration go on and waits for it; returns the pages moved.
fn release() -> Result<u64, String> {
    HOLD.store(false, Ordering::Release);
    ensure!(crate::irq::wait_until(2000, || MIG_DONE.load(Ordering::Acquire)), "the migration did not finish");
    Ok(MIG_MOVED.load(Ordering::Acquire))
}

fn migration_kind(p: &str, va: VirtAddr) -> Result<(MigrationKind, bool, bool, bool), String> {
    match entry_of(p, va)?.0.kind(3, GRANULE) {
        Kind::NonPresent(NonPresent::Migration { kind, dirty, young, uffd_wp, .. }) => {
            Ok((kind, dirty, young, uffd_wp))
        }
        k => Err(alloc::format!("{p} {va:#x}: not a migration entry mid-migration: {k:?}")),
    }
}

/// Write-protects the present entry at `va` and sets its uffd-wp bit
/// directly (break, flush, make), standing in for `uffd wp on`: real code
/// never makes a writable entry with the bit.
fn set_uffd_wp(p: &str, va: VirtAddr) -> Result<(), String> {
    proc::with_proc(p, |pr| {
        let ptl = pr.mm.page_table_lock_guard();
        let mut mem = pr.tables.lock();
        let slot = crate::mm::memory::pte_lookup(&ptl, &mut mem, va, false).ok_or(proc::ProcError::Invalid)?;
        let regime = Stage1User { asid: pr.mm.asid() };
        let old = slot
            .clear_flush(&regime, &mut crate::mm::tlb::KernelFlush, va, PAGE_SIZE)
            .map_err(crate::mm::error::MmError::from)?;
        slot.set_new(Desc(old.wrprotect().0 | UFFD_WP_BIT)).map_err(crate::mm::error::MmError::from)?;
        Ok(())
    })?;
    Ok(())
}

kernel_test!(smp_migration_entries_wait_fork_and_zap);
/// Migrations held between unmap and remap on another CPU (`HOLD`):
/// 1. the entries are migration entries of the right kind (`Write` for a
///    writable page, `ReadExclusive` for a read-only exclusive one) with
///    dirty, young and uffd-wp, `query ... migration` sees them and
///    `invariants` accepts them while the folio is locked; an EL0 read on
///    a third CPU waits (`migration_entry_wait`) and then sees the data;
///    afterwards every piece of state is back on the new frames;
/// 2. fork meanwhile: the child gets the migration entries, the parent's
///    writable one becomes readable (Linux `copy_nonpresent_pte`); both
///    then map the new page COW-shared, and a write in either copies;
/// 3. munmap meanwhile: the zapped migration entries are gone, the rest of
///    the range moves, no migration entry is left behind.
fn smp_migration_entries_wait_fork_and_zap() -> Result<(), String> {
    let n = cpus();
    if n < 3 {
        return super::cannot_apply("fewer than 3 CPUs: runs with --smp 4");
    }
    let here = me();
    let others: Vec<usize> = (1..n).filter(|&c| c != here).take(2).collect();
    let (mcpu, rcpu) = (others[0], others[1]);
    let (a, c) = ("migw_a", "migw_c");
    in_process(a, || {
        let va = proc::mmap(a, "m", anon(4 * PAGE_SIZE))?;
        write(a, va, 4 * PAGE_SIZE, 0x71)?;
        proc::mprotect(a, va + PAGE_SIZE, PAGE_SIZE, true, false)?;
        set_uffd_wp(a, va + 2 * PAGE_SIZE)?;
        let old = pa_of(a, va)?;

        // 1. Entries, query, invariants, and a waiting EL0 reader.
        start_held(a, va, PAGE_SIZE * 4, mcpu)?;
        let r = (|| -> Result<(), String> {
            let (k0, d0, y0, _) = migration_kind(a, va)?;
            ensure!(k0 == MigrationKind::Write && d0 && y0, "page 0: {k0:?} dirty {d0} young {y0}");
            // Held at the first folio: the others are still mapped.
            ensure!(entry_of(a, va + PAGE_SIZE)?.1.is_some(), "page 1 unmapped before its turn");
            console("migw_a query m+0 expect migration !present")?;
            crate::console::commands::invariants().map_err(|e| alloc::format!("invariants mid-migration: {e}"))?;
            let waits = WAITS.load(Ordering::Acquire);
            let t = start(a, &[op::CHECK, va.as_u64(), PAGE_SIZE, 0x71], 0, rcpu)?;
            let waited = crate::irq::wait_until(2000, || WAITS.load(Ordering::Acquire) > waits);
            let early = sched::wait_until(&t, Some(20)).is_some();
            let moved = release()?;
            let regs = sched::wait(&t);
            ensure!(waited, "the reader on cpu{rcpu} never met the migration entry");
            ensure!(!early, "the reader finished while the page was still being moved");
            ensure!(matches!(proc::run_end(&regs), RunEnd::Done), "the reader did not see its data after the move");
            ensure!(moved == 4, "{moved} pages moved, expected 4");
            Ok(())
        })();
        HOLD.store(false, Ordering::Release);
        r?;
        ensure!(pa_of(a, va)? != old, "page 0 did not move");
        console("migw_a query m+0 expect present writable exclusive dirty young !migration")?;
        // mprotect(R) left it read-only and exclusive: ReadExclusive came back as such.
        console(&alloc::format!("migw_a query m+{PAGE_SIZE:#x} expect present !writable exclusive"))?;
        ensure!(entry_of(a, va + 2 * PAGE_SIZE)?.0.uffd_wp(), "the uffd-wp bit did not survive the move");
        check(a, va, 4 * PAGE_SIZE, 0x71)?;

        // 2. fork while the entry is a migration entry.
        start_held(a, va, PAGE_SIZE, mcpu)?;
        let r = (|| -> Result<(), String> {
            ensure!(migration_kind(a, va)?.0 == MigrationKind::Write, "not a writable migration entry before fork");
            sched::pin_to_caller(|| proc::fork(a, c))?;
            ensure!(migration_kind(a, va)?.0 == MigrationKind::Read, "the parent's entry is not readable after fork");
            ensure!(migration_kind(c, va)?.0 == MigrationKind::Read, "the child's entry is not readable");
            ensure!(release()? == 1, "the page did not move");
            Ok(())
        })();
        HOLD.store(false, Ordering::Release);
        r?;
        let shared = pa_of(a, va)?;
        ensure!(pa_of(c, va)? == shared, "parent and child do not share the moved page");
        console("migw_a query m+0 expect present !writable !exclusive")?;
        console("migw_c query m+0 expect present !writable !exclusive")?;
        check(c, va, PAGE_SIZE, 0x71)?;
        write(c, va, PAGE_SIZE, 0x72)?;
        ensure!(pa_of(c, va)? != shared, "the child's write did not copy");
        check(a, va, PAGE_SIZE, 0x71)?;
        crate::console::commands::invariants().map_err(|e| alloc::format!("after fork: {e}"))?;
        proc::exit(c)?;

        // 3. munmap while pages are migration entries.
        let z = proc::mmap(a, "z", anon(4 * PAGE_SIZE))?;
        write(a, z, 4 * PAGE_SIZE, 0x73)?;
        start_held(a, z, 4 * PAGE_SIZE, mcpu)?;
        let r = (|| -> Result<(), String> {
            migration_kind(a, z)?;
            proc::munmap(a, z, 2 * PAGE_SIZE)?;
            let moved = release()?;
            ensure!(moved == 4, "{moved} pages reported moved, expected 4 (the zapped folio moves with no mapping)");
            Ok(())
        })();
        HOLD.store(false, Ordering::Release);
        r?;
        ensure!(entry_of(a, z)?.0 == Desc(0), "the zapped entry is not none");
        check(a, z + 2 * PAGE_SIZE, 2 * PAGE_SIZE, 0x73)?;
        crate::console::commands::invariants().map_err(|e| alloc::format!("after munmap: {e}"))?;
        println!("  migration on cpu{mcpu}, reader on cpu{rcpu}: waited, fork and munmap met migration entries");
        Ok(())
    })
}

kernel_test!(smp_migration_uffd_wp_on_held);
/// `wp on` while a writable anon page is held mid-migration on another
/// CPU: the writable migration entry becomes readable-exclusive with the
/// bit (Linux `change_pte_range`), and the page comes back read-only with
/// the bit, still exclusive, so the next write raises one event.
fn smp_migration_uffd_wp_on_held() -> Result<(), String> {
    let n = cpus();
    if n < 2 {
        return super::cannot_apply("one CPU: runs with --smp 4");
    }
    let here = me();
    let mcpu = (1..n).find(|&c| c != here).unwrap_or(0);
    let a = "migwp_a";
    in_process(a, || {
        let va = proc::mmap(a, "m", anon(PAGE_SIZE))?;
        write(a, va, PAGE_SIZE, 0x81)?;
        run("migwp_a uffd m register wp")?;
        start_held(a, va, PAGE_SIZE, mcpu)?;
        let r = (|| -> Result<(), String> {
            ensure!(migration_kind(a, va)?.0 == MigrationKind::Write, "not a writable migration entry");
            run("migwp_a uffd m wp on")?;
            let (k, _, _, wp) = migration_kind(a, va)?;
            ensure!(k == MigrationKind::ReadExclusive && wp, "after wp on: {k:?} uffd-wp {wp}");
            ensure!(release()? == 1, "the page did not move");
            Ok(())
        })();
        HOLD.store(false, Ordering::Release);
        r?;
        console("migwp_a query m expect present !writable exclusive uffd-wp !migration")?;
        crate::console::commands::invariants().map_err(|e| alloc::format!("after the move: {e}"))?;
        console("migwp_a uffd-events expect 0")?;
        write(a, va, PAGE_SIZE, 0x82)?;
        console("migwp_a uffd-events expect 1")?;
        check(a, va, PAGE_SIZE, 0x82)?;
        Ok(())
    })
}

kernel_test!(smp_migration_fork_shared_keeps_writable);
/// fork while a shared memfd page is held mid-migration: a shared mapping
/// is no COW mapping, so the writable migration entry stays writable in
/// the parent and the child gets it as it is (Linux `copy_nonpresent_pte`
/// converts only under `is_cow_mapping`); both map the new page writable
/// and share it. The range is registered for uffd-wp with fork events,
/// so fork copies the shared mapping's entries (Linux `vma_needs_copy`).
fn smp_migration_fork_shared_keeps_writable() -> Result<(), String> {
    let n = cpus();
    if n < 2 {
        return super::cannot_apply("one CPU: runs with --smp 4");
    }
    let here = me();
    let mcpu = (1..n).find(|&c| c != here).unwrap_or(0);
    let (a, c) = ("migsh_a", "migsh_c");
    in_process(a, || {
        let args = MmapArgs { shared: true, memfd: Some("migshfork".into()), ..anon(PAGE_SIZE) };
        let va = proc::mmap(a, "f", args)?;
        write(a, va, PAGE_SIZE, 0x91)?;
        run("migsh_a uffd f register wp fork-events")?;
        start_held(a, va, PAGE_SIZE, mcpu)?;
        let r = (|| -> Result<(), String> {
            ensure!(migration_kind(a, va)?.0 == MigrationKind::Write, "not a writable migration entry before fork");
            sched::pin_to_caller(|| proc::fork(a, c))?;
            let (pk, ck) = (migration_kind(a, va)?.0, migration_kind(c, va)?.0);
            ensure!(
                pk == MigrationKind::Write && ck == MigrationKind::Write,
                "after fork: parent {pk:?}, child {ck:?}"
            );
            ensure!(release()? == 1, "the page did not move");
            Ok(())
        })();
        HOLD.store(false, Ordering::Release);
        r?;
        console("migsh_a query f expect present writable !migration")?;
        console("migsh_c query f expect present writable !migration")?;
        ensure!(pa_of(a, va)? == pa_of(c, va)?, "parent and child do not share the page");
        write(c, va, PAGE_SIZE, 0x92)?;
        check(a, va, PAGE_SIZE, 0x92)?;
        crate::console::commands::invariants().map_err(|e| alloc::format!("after fork: {e}"))?;
        proc::exit(c)?;
        Ok(())
    })
}
