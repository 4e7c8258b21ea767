//! Break-before-make on every path that needs it, caught by the cursor's
//! tracker: each test arms [`SKIP_NEXT_FLUSH`] (the next TLB flush a BBM
//! sequence needs is dropped), runs the path for real, and checks that the
//! make over the broken-but-not-flushed range was refused
//! ([`MapError::BbmViolation`], counted in [`BBM_VIOLATIONS`]) and that
//! nothing was left half-changed: the path works when retried.

use alloc::string::String;
use core::sync::atomic::Ordering;

use crate::arch::aarch64::user::op;
use crate::ensure;
use crate::mm::addr::{PhysAddr, VirtAddr};
use crate::mm::desc::LeafAttrs;
use crate::mm::error::MmError;
use crate::mm::frame::{self, Owner};
use crate::mm::granule::{GRANULE, PAGE_SIZE};
use crate::mm::kmap;
use crate::mm::layout::TEST_WINDOW;
use crate::mm::pgtable::cursor::{BBM_VIOLATIONS, SKIP_NEXT_FLUSH};
use crate::mm::pgtable::{LeafSizes, MapError, Translation};
use crate::mm::mmap::MmapArgs;
use crate::mm::mmu_gather::{self, GatherEvent};
use crate::proc::{self, ProcError, RunEnd};


fn violations() -> u64 {
    BBM_VIOLATIONS.load(Ordering::Relaxed)
}

/// Arms the sabotage knob, runs `f`, and disarms it whatever happened.
fn sabotaged<R>(f: impl FnOnce() -> R) -> R {
    SKIP_NEXT_FLUSH.store(true, Ordering::Relaxed);
    let r = f();
    SKIP_NEXT_FLUSH.store(false, Ordering::Relaxed);
    r
}

fn is_violation(e: &ProcError) -> bool {
    matches!(e, ProcError::Mm(MmError::Table(MapError::BbmViolation { .. })))
}

kernel_test!(cursor_bbm_cow_copy);
/// COW copy (`wp_page_copy`: a new output address, so BBM): the child's
/// first write with the flush dropped must be refused, the shared page
/// left mapped as it was; the retried write then copies, and neither side
/// sees the other's data.
fn cursor_bbm_cow_copy() -> Result<(), String> {
    let (pa, ch) = ("bbm_cow_parent", "bbm_cow_child");
    proc::spawn(pa)?;
    let r = (|| -> Result<(), String> {
        let m = proc::mmap(pa, "m", super::anon(PAGE_SIZE))?;
        ensure!(matches!(proc::access(pa, op::WRITE, m, PAGE_SIZE, 0x11)?, RunEnd::Done), "parent write");
        proc::fork(pa, ch)?;
        let v0 = violations();
        // The refused make returns to EL0, which faults again: the second
        // fault has its flush and completes the copy.
        let r = sabotaged(|| proc::access(ch, op::WRITE, m, PAGE_SIZE, 0x22));
        ensure!(matches!(r?, RunEnd::Done), "child write");
        ensure!(violations() == v0 + 1, "COW copy without its flush: {} violations, expected 1", violations() - v0);
        ensure!(matches!(proc::access(ch, op::CHECK, m, PAGE_SIZE, 0x22)?, RunEnd::Done), "child data");
        ensure!(matches!(proc::access(pa, op::CHECK, m, PAGE_SIZE, 0x11)?, RunEnd::Done), "parent data");
        Ok(())
    })();
    let _ = proc::exit(ch);
    let _ = proc::exit(pa);
    r
}

kernel_test!(cursor_bbm_thp_split);
/// THP split (`split_huge_pmd`: block to table, BBM on the level-2 entry):
/// an mprotect of half a THP with the flush dropped fails with the
/// violation and leaves the block mapped; the retried mprotect splits it.
fn cursor_bbm_thp_split() -> Result<(), String> {
    let blk = GRANULE.level_size(2);
    let order = crate::mm::memory::max_folio_order();
    let p = "bbm_thp";
    proc::spawn(p)?;
    let r = (|| -> Result<(), String> {
        let m = proc::mmap(p, "m", MmapArgs { align: blk, folio_order: order, ..super::anon(blk) })?;
        ensure!(matches!(proc::access(p, op::WRITE, m, blk, 0x33)?, RunEnd::Done), "write the THP");
        if level_of(p, m) != Some(2) {
            return super::cannot_apply("no block-sized folio for the THP (memory fragmented)");
        }
        let v0 = violations();
        let e = sabotaged(|| proc::mprotect(p, m, blk / 2, true, false));
        ensure!(e.as_ref().is_err_and(is_violation), "mprotect over a split without its flush: {e:?}");
        ensure!(violations() == v0 + 1, "{} violations, expected 1", violations() - v0);
        ensure!(level_of(p, m) == Some(2), "the refused split must leave the block");
        proc::mprotect(p, m, blk / 2, true, false)?;
        ensure!(level_of(p, m) == Some(3), "the retried mprotect splits the block");
        ensure!(matches!(proc::access(p, op::CHECK, m, blk, 0x33)?, RunEnd::Done), "data after the split");
        Ok(())
    })();
    let _ = proc::exit(p);
    r
}

kernel_test!(cursor_bbm_contpte_unfold);
/// contpte unfold (`unfold_run`: BBM on the whole run): an mprotect of one
/// page of a contiguous run with the flush dropped fails with the
/// violation and leaves the run as it was; the retried one unfolds it.
fn cursor_bbm_contpte_unfold() -> Result<(), String> {
    let run = crate::mm::memory::cont_size();
    let order = (run / PAGE_SIZE).trailing_zeros() as u8;
    let p = "bbm_contpte";
    proc::spawn(p)?;
    let r = (|| -> Result<(), String> {
        let m = proc::mmap(p, "m", MmapArgs { align: run, folio_order: order, ..super::anon(run) })?;
        ensure!(matches!(proc::access(p, op::WRITE, m, run, 0x44)?, RunEnd::Done), "write the run");
        if !desc_of(p, m).is_some_and(|d| d.contiguous()) {
            return super::cannot_apply("no run-sized folio (memory fragmented)");
        }
        let v0 = violations();
        let e = sabotaged(|| proc::mprotect(p, m + PAGE_SIZE, PAGE_SIZE, true, false));
        ensure!(e.as_ref().is_err_and(is_violation), "mprotect over an unfold without its flush: {e:?}");
        ensure!(violations() == v0 + 1, "{} violations, expected 1", violations() - v0);
        ensure!(desc_of(p, m + PAGE_SIZE).is_some_and(|d| d.contiguous()), "the refused unfold must leave the run");
        proc::mprotect(p, m + PAGE_SIZE, PAGE_SIZE, true, false)?;
        ensure!(desc_of(p, m).is_some_and(|d| !d.contiguous()), "the retried mprotect unfolds the run");
        ensure!(matches!(proc::access(p, op::CHECK, m, run, 0x44)?, RunEnd::Done), "data after the unfold");
        Ok(())
    })();
    let _ = proc::exit(p);
    r
}

kernel_test!(cursor_bbm_kernel_split_collapse_fold);
/// The kernel tables' [`CursorMut`](crate::mm::pgtable::CursorMut): block
/// split, collapse, contiguous fold and unfold each refuse their make when
/// the flush after the break is dropped. The broken range stays unmapped
/// (never two translations at once) and no table leaks.
fn cursor_bbm_kernel_split_collapse_fold() -> Result<(), String> {
    let blk = GRANULE.level_size(2);
    // A block-aligned range of RAM, mapped read-only (as table_tests does).
    let Some(pa) = crate::kmain::boot().board.ram.iter().find_map(|r| {
        let s = (r.start.0 + blk - 1) & !(blk - 1);
        (s + blk <= r.end.0).then_some(PhysAddr(s))
    }) else {
        return super::cannot_apply("RAM holds no block-aligned block");
    };
    let va = TEST_WINDOW + blk * 8;
    let pt_frames = || frame::stats().by_owner[Owner::PageTable as usize];
    let frames_before = pt_frames();
    let map = |sizes| {
        kmap::map_kernel(VirtAddr(va), pa, blk, LeafAttrs::KERNEL_RO, sizes).map_err(|e| alloc::format!("{e:?}"))
    };
    let unmap = || kmap::with_live(|l| l.unmap(va, blk)).map_err(|e| alloc::format!("unmap: {e:?}"));
    let refused = |what: &str, r: Result<(), MapError>| -> Result<(), String> {
        ensure!(matches!(r, Err(MapError::BbmViolation { .. })), "{what} without its flush: {r:?}");
        ensure!(
            matches!(kmap::with_tables(|t| t.translate(VirtAddr(va))), Translation::Fault { .. }),
            "{what}: the broken entry must stay invalid"
        );
        Ok(())
    };
    let r = (|| -> Result<(), String> {
        let v0 = violations();
        // Split: a block into a table of pages.
        map(LeafSizes::Largest)?;
        refused("split", sabotaged(|| kmap::with_live(|l| l.split(va, 2))))?;
        unmap()?;
        // Collapse: a table of pages into a block.
        map(LeafSizes::PagesOnly)?;
        refused("collapse", sabotaged(|| kmap::with_live(|l| l.collapse(va, 2))))?;
        unmap()?;
        // Fold: a contiguous run from n pages.
        map(LeafSizes::PagesOnly)?;
        refused("fold", sabotaged(|| kmap::with_live(|l| l.make_contiguous(va, 3))))?;
        unmap()?;
        // Unfold: the run back to n pages.
        map(LeafSizes::PagesOnly)?;
        kmap::with_live(|l| l.make_contiguous(va, 3)).map_err(|e| alloc::format!("fold: {e:?}"))?;
        refused("unfold", sabotaged(|| kmap::with_live(|l| l.split_contiguous(va, 3))))?;
        unmap()?;
        ensure!(violations() == v0 + 4, "{} violations, expected 4", violations() - v0);
        Ok(())
    })();
    let _ = unmap();
    r?;
    ensure!(pt_frames() == frames_before, "page-table frames {} -> {}: leaked", frames_before, pt_frames());
    Ok(())
}

kernel_test!(cursor_zap_clears_and_frees);
/// Zap needs no make, so no BBM: what it must get right is clearing every
/// entry (by swap) and giving the pages back only through the mmu_gather
/// after its flush. After munmap every read must take a real fault and the
/// frames must be back in the allocator. This cannot see a missing flush:
/// each agent run here starts with its own TLB maintenance (checked by
/// dropping `MmuGather::finish`'s flush: the test still passed); the
/// stale-TLB check on unmap is `tlb_large_unmap_leaves_nothing_stale`, on
/// kernel tables the test's CPU keeps using.
fn cursor_zap_clears_and_frees() -> Result<(), String> {
    const PAGES: u64 = 32;
    let p = "zap_flush";
    proc::spawn(p)?;
    let r = (|| -> Result<(), String> {
        let m = proc::mmap(p, "m", super::anon(PAGES * PAGE_SIZE))?;
        ensure!(matches!(proc::access(p, op::WRITE, m, PAGES * PAGE_SIZE, 0x55)?, RunEnd::Done), "write");
        ensure!(matches!(proc::access(p, op::CHECK, m, PAGES * PAGE_SIZE, 0x55)?, RunEnd::Done), "read back");
        let free0 = frame::stats().free;
        proc::munmap(p, m, PAGES * PAGE_SIZE)?;
        ensure!(frame::stats().free >= free0 + PAGES, "munmap gave back {} frames", frame::stats().free - free0);
        for i in [0, 1, PAGES / 2, PAGES - 1] {
            let r = proc::access(p, op::CHECK, m + i * PAGE_SIZE, 1, 0x55)?;
            ensure!(matches!(r, RunEnd::Fault { .. }), "page {i} still readable after munmap: {r:?}");
        }
        Ok(())
    })();
    let _ = proc::exit(p);
    r
}

fn desc_of(p: &str, va: u64) -> Option<crate::mm::desc::Desc> {
    proc::with_tables(p, |_, t| match t.translate(VirtAddr(va)) {
        Translation::Mapped { desc, .. } => Some(desc),
        _ => None,
    })
    .ok()
    .flatten()
}

fn level_of(p: &str, va: u64) -> Option<u32> {
    proc::with_tables(p, |_, t| match t.translate(VirtAddr(va)) {
        Translation::Mapped { level, .. } => Some(level),
        _ => None,
    })
    .ok()
    .flatten()
}

/// The gather's events, in order, while [`gather_trace`] listens (fixed
/// size: teardown's gather must not allocate, nor may what it calls).
static GATHER_LOG: spin::Mutex<([GatherEvent; GATHER_LOG_LEN], usize)> =
    spin::Mutex::new(([GatherEvent::Flushed; GATHER_LOG_LEN], 0));
const GATHER_LOG_LEN: usize = 4096;

fn gather_hook(e: GatherEvent) {
    let mut l = GATHER_LOG.lock();
    let n = l.1;
    if n < GATHER_LOG_LEN {
        l.0[n] = e;
    }
    l.1 = n + 1;
}

/// Runs `f` with the gather traced; returns the events (or why not).
fn gather_trace(f: impl FnOnce() -> Result<(), String>) -> Result<alloc::vec::Vec<GatherEvent>, String> {
    GATHER_LOG.lock().1 = 0;
    *mmu_gather::TRACE_HOOK.lock() = Some(gather_hook);
    mmu_gather::TRACING.store(true, Ordering::Release);
    let r = f();
    mmu_gather::TRACING.store(false, Ordering::Release);
    *mmu_gather::TRACE_HOOK.lock() = None;
    r?;
    let l = GATHER_LOG.lock();
    ensure!(l.1 <= GATHER_LOG_LEN, "{} gather events overflowed the log", l.1);
    Ok(l.0[..l.1].to_vec())
}

/// Every freed page, block or table was gathered (its entry cleared) and
/// a flush completed between that and its freeing; everything gathered
/// was freed; and there were at least `min_flushes` flushes.
fn check_gather(what: &str, ev: &[GatherEvent], min_gathered: usize, min_flushes: usize) -> Result<(), String> {
    let gathered = ev.iter().filter(|e| matches!(e, GatherEvent::Gathered(_))).count();
    let freed = ev.iter().filter(|e| matches!(e, GatherEvent::Freed(_))).count();
    let flushes = ev.iter().filter(|e| **e == GatherEvent::Flushed).count();
    ensure!(gathered >= min_gathered, "{what}: {gathered} entries gathered, expected at least {min_gathered}");
    ensure!(freed == gathered, "{what}: {gathered} gathered but {freed} freed");
    ensure!(flushes >= min_flushes, "{what}: {flushes} flushes, expected at least {min_flushes} (a full batch flushes)");
    for (i, e) in ev.iter().enumerate() {
        let GatherEvent::Freed(pa) = *e else { continue };
        let Some(g) = ev[..i].iter().rposition(|x| *x == GatherEvent::Gathered(pa)) else {
            return Err(alloc::format!("{what}: {:#x} freed but never gathered", pa.0));
        };
        ensure!(
            ev[g..i].contains(&GatherEvent::Flushed),
            "{what}: {:#x} freed (event {i}) with no flush since it was gathered (event {g})",
            pa.0
        );
    }
    Ok(())
}

kernel_test!(cursor_gather_frees_only_after_the_flush);
/// mmu_gather on zap (munmap) and on teardown (exit, fullmm): with more
/// pages than one batch holds, the batch fills and is flushed and freed
/// on the way; every page and table must go back only after a flush that
/// completed after its entry was cleared. Broken on purpose: with the
/// frees in `MmuGather::flush_mmu` moved before its TLB flush this test
/// failed at the munmap ("0x48010000 freed (event 256) with no flush since
/// it was gathered (event 0)": the first full batch).
fn cursor_gather_frees_only_after_the_flush() -> Result<(), String> {
    const PAGES: u64 = 2 * mmu_gather::BATCH_PAGES as u64 + 40;
    let p = "gather_order";
    proc::spawn(p)?;
    let r = (|| -> Result<(), String> {
        let m = proc::mmap(p, "m", super::anon(2 * PAGES * PAGE_SIZE))?;
        ensure!(matches!(proc::access(p, op::WRITE, m, 2 * PAGES * PAGE_SIZE, 0x5a)?, RunEnd::Done), "write");
        let ev = gather_trace(|| proc::munmap(p, m, PAGES * PAGE_SIZE).map_err(String::from))?;
        // Pages may be mapped by blocks: count entries, not pages.
        let min = if level_of(p, m + PAGES * PAGE_SIZE) == Some(3) { PAGES as usize } else { 1 };
        check_gather("munmap", &ev, min, if min > 1 { 3 } else { 1 })?;
        let ev = gather_trace(|| proc::exit(p).map_err(String::from))?;
        check_gather("exit", &ev, min, if min > 1 { 3 } else { 1 })
    })();
    let _ = proc::exit(p);
    r
}
