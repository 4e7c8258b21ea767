//! Break-before-make on every path, caught by the cursor's tracker, one
//! test per path. Where a path needs BBM (COW copy, THP split of a 2M or a
//! 1G block, the user contpte fold after mprotect and unfold, the kernel
//! cursor's split, collapse, fold and unfold) the test arms [`SKIP_NEXT_FLUSH`] (the next TLB flush a BBM
//! sequence needs is dropped), runs the path for real, and checks that the
//! make over the broken-but-not-flushed range was refused
//! ([`MapError::BbmViolation`], counted in [`BBM_VIOLATIONS`]) and that
//! nothing was left half-changed. Where a path needs no BBM the test arms
//! a knob next to the code it breaks and runs the whole path: a fault that
//! skips the "pte changed under us" recheck, a COW reuse that moves the
//! entry to a copy, a dropped permission flush that leaves a stale TLB
//! entry a real EL0 access on another CPU observes, an mmu_gather that
//! frees before its flush.
//! Each test says what caught the break and that it failed without that.

use alloc::string::String;
use core::sync::atomic::Ordering;

use super::desc_of;
use crate::arch::aarch64::granule::{GRANULE, PAGE_SIZE};
use crate::arch::aarch64::memory::TEST_WINDOW;
use crate::arch::aarch64::user::op;
use crate::ensure;
use crate::mm::addr::{PhysAddr, VirtAddr};
use crate::mm::desc::LeafAttrs;
use crate::mm::error::MmError;
use crate::mm::frame::{self, Owner};
use crate::mm::kernel_pgtable;
use crate::mm::memory;
use crate::mm::mm_struct::MmapLocked;
use crate::mm::mmap::MmapArgs;
use crate::mm::mmu_gather::{self, GatherEvent};
use crate::mm::pgtable::cursor::{BBM_VIOLATIONS, SKIP_NEXT_FLUSH};
use crate::mm::pgtable::{LeafSizes, MapError, Translation};
use crate::println;
use crate::proc::{self, ProcError, RunEnd, sched};

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
    // A block-sized folio needs the block in RAM, twice over to be found.
    if blk > crate::mm::frame::stats().managed * crate::arch::aarch64::granule::PAGE_SIZE / 2 {
        return super::cannot_apply("a block is more than half of RAM here");
    }
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

kernel_test!(cursor_bbm_thp_split_pud);
/// 1G THP split (`split_huge_pud`: block to a table of 2M blocks, BBM on
/// the level-1 entry; 4K pages only, and 1G of free aligned RAM: the
/// in-kernel run with 3G has it): an mprotect of half the 1G THP with the
/// flush dropped fails with the violation and leaves the 1G block mapped,
/// no table kept; the retried mprotect splits it into 2M blocks. With
/// `Pte::clear_flush`'s refusal removed (the flush dropped, the make going
/// on) this test failed ("mprotect over a 1G split without its flush:
/// Ok(())").
fn cursor_bbm_thp_split_pud() -> Result<(), String> {
    use crate::mm::huge_memory::{pud_order, pud_size};
    let Some(order) = pud_order() else {
        return super::cannot_apply("no level-1 blocks with this granule (1G THPs need 4K pages)");
    };
    let blk = pud_size();
    // The folio needs 1G of free, 1G-aligned RAM.
    if blk > frame::stats().managed * PAGE_SIZE / 2 {
        return super::cannot_apply("1G is more than half of RAM here (the 3G in-kernel run has room)");
    }
    let pt_frames = || frame::stats().by_owner[Owner::PageTable as usize];
    let p = "bbm_thp_pud";
    proc::spawn(p)?;
    let r = (|| -> Result<(), String> {
        let m = proc::mmap(p, "m", MmapArgs { align: blk, folio_order: order, ..super::anon(blk) })?;
        let last = m + (blk - PAGE_SIZE);
        ensure!(matches!(proc::access(p, op::WRITE, m, PAGE_SIZE, 0x36)?, RunEnd::Done), "write the 1G THP");
        if level_of(p, m) != Some(1) {
            return super::cannot_apply("no 1G folio for the THP (no free aligned 1G)");
        }
        ensure!(matches!(proc::access(p, op::WRITE, last, PAGE_SIZE, 0x37)?, RunEnd::Done), "write its end");
        let (v0, t0) = (violations(), pt_frames());
        let e = sabotaged(|| proc::mprotect(p, m, blk / 2, true, false));
        ensure!(e.as_ref().is_err_and(is_violation), "mprotect over a 1G split without its flush: {e:?}");
        ensure!(violations() == v0 + 1, "{} violations, expected 1", violations() - v0);
        ensure!(level_of(p, m) == Some(1), "the refused split must leave the 1G block");
        ensure!(pt_frames() == t0, "the refused split kept {} table frames", pt_frames() - t0);
        proc::mprotect(p, m, blk / 2, true, false)?;
        ensure!(level_of(p, m) == Some(2), "the retried mprotect splits the 1G block into 2M blocks");
        ensure!(matches!(proc::access(p, op::CHECK, m, PAGE_SIZE, 0x36)?, RunEnd::Done), "data after the split");
        ensure!(matches!(proc::access(p, op::CHECK, last, PAGE_SIZE, 0x37)?, RunEnd::Done), "its end's data");
        Ok(())
    })();
    let _ = proc::exit(p);
    r
}

kernel_test!(cursor_bbm_contpte_unfold);
/// contpte unfold (`unfold_run`: BBM on the whole run): an mprotect of one
/// page of a contiguous run with the flush dropped fails with the
/// violation and leaves the run as it was; the retried one unfolds it.
/// After each mprotect the VMA's flags and the entries agree on whether
/// each page is writable: with the VMA's flags changed before the unfold
/// (as `do_mprotect` once did) the refused mprotect left a read-only VMA
/// over a writable entry and this test failed.
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
        flags_agree(p, m, run)?;
        proc::mprotect(p, m + PAGE_SIZE, PAGE_SIZE, true, false)?;
        ensure!(desc_of(p, m).is_some_and(|d| !d.contiguous()), "the retried mprotect unfolds the run");
        flags_agree(p, m, run)?;
        ensure!(desc_of(p, m + PAGE_SIZE).is_some_and(|d| !d.user_writable()), "the mprotected page is read-only");
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
        let s = (r.start.as_u64() + blk - 1) & !(blk - 1);
        (s + blk <= r.end.as_u64()).then_some(PhysAddr::new(s))
    }) else {
        return super::cannot_apply("RAM holds no block-aligned block");
    };
    let va = TEST_WINDOW + blk * 8;
    let pt_frames = || frame::stats().by_owner[Owner::PageTable as usize];
    let frames_before = pt_frames();
    let map = |sizes| {
        kernel_pgtable::map_kernel(VirtAddr::new(va), pa, blk, LeafAttrs::KERNEL_RO, sizes)
            .map_err(|e| alloc::format!("{e:?}"))
    };
    let unmap =
        || kernel_pgtable::with_live(|l| l.unmap(VirtAddr::new(va), blk)).map_err(|e| alloc::format!("unmap: {e:?}"));
    let refused = |what: &str, r: Result<(), MapError>| -> Result<(), String> {
        ensure!(matches!(r, Err(MapError::BbmViolation { .. })), "{what} without its flush: {r:?}");
        ensure!(
            matches!(kernel_pgtable::with_tables(|t| t.translate(VirtAddr::new(va))), Translation::Fault { .. }),
            "{what}: the broken entry must stay invalid"
        );
        Ok(())
    };
    let r = (|| -> Result<(), String> {
        let v0 = violations();
        // Split: a block into a table of pages.
        map(LeafSizes::Largest)?;
        refused("split", sabotaged(|| kernel_pgtable::with_live(|l| l.split(VirtAddr::new(va), 2))))?;
        unmap()?;
        // Collapse: a table of pages into a block.
        map(LeafSizes::PagesOnly)?;
        refused("collapse", sabotaged(|| kernel_pgtable::with_live(|l| l.collapse(VirtAddr::new(va), 2))))?;
        unmap()?;
        // Fold: a contiguous run from n pages.
        map(LeafSizes::PagesOnly)?;
        refused("fold", sabotaged(|| kernel_pgtable::with_live(|l| l.make_contiguous(VirtAddr::new(va), 3))))?;
        unmap()?;
        // Unfold: the run back to n pages.
        map(LeafSizes::PagesOnly)?;
        kernel_pgtable::with_live(|l| l.make_contiguous(VirtAddr::new(va), 3))
            .map_err(|e| alloc::format!("fold: {e:?}"))?;
        refused("unfold", sabotaged(|| kernel_pgtable::with_live(|l| l.split_contiguous(VirtAddr::new(va), 3))))?;
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

/// Checks that over `[va, va+len)` of `p` each entry is writable exactly
/// where its VMA allows writing (all pages here are exclusive anon ones).
fn flags_agree(p: &str, va: VirtAddr, len: u64) -> Result<(), String> {
    use crate::mm::mm_struct::VmFlags;
    for a in (0..len / PAGE_SIZE).map(|i| va + i * PAGE_SIZE) {
        let vma_w = proc::with_proc(p, |pr| Ok(pr.mm.mmap_read_lock().vmas().find(a).map(|v| v.flags)))?
            .ok_or_else(|| alloc::format!("no VMA at {a:?}"))?
            .contains(VmFlags::WRITE);
        let pte_w = desc_of(p, a).ok_or_else(|| alloc::format!("nothing mapped at {a:?}"))?.user_writable();
        ensure!(vma_w == pte_w, "at {a:?} the VMA says writable={vma_w}, the entry writable={pte_w}");
    }
    Ok(())
}

fn level_of(p: &str, va: VirtAddr) -> Option<u32> {
    proc::with_tables(p, |_, t| match t.translate(va) {
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
    ensure!(
        flushes >= min_flushes,
        "{what}: {flushes} flushes, expected at least {min_flushes} (a full batch flushes)"
    );
    for (i, e) in ev.iter().enumerate() {
        let GatherEvent::Freed(pa) = *e else { continue };
        let Some(g) = ev[..i].iter().rposition(|x| *x == GatherEvent::Gathered(pa)) else {
            return Err(alloc::format!("{what}: {:#x} freed but never gathered", pa.as_u64()));
        };
        ensure!(
            ev[g..i].contains(&GatherEvent::Flushed),
            "{what}: {:#x} freed (event {i}) with no flush since it was gathered (event {g})",
            pa.as_u64()
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

kernel_test!(cursor_zap_free_before_flush_refused);
/// Zap (munmap) with its mmu_gather broken on purpose: with
/// `mmu_gather::FREE_BEFORE_FLUSH` armed the gather tries to free its batch
/// before the TLB flush, while other CPUs may still translate into those
/// pages. Caught by the gather itself, in every build and whatever the
/// timing: it refuses to free while a range it was given is unflushed
/// (counted in `UNFLUSHED_FREES`), and frees after the flush. The trace
/// confirms no page went back before a flush, the frames come back and the
/// range faults. With that refusal removed from `MmuGather::free_batch`
/// this test failed ("0 refused frees, expected 1").
fn cursor_zap_free_before_flush_refused() -> Result<(), String> {
    use mmu_gather::{FREE_BEFORE_FLUSH, UNFLUSHED_FREES};
    const PAGES: u64 = 32;
    let p = "zap_free_early";
    proc::spawn(p)?;
    let r = (|| -> Result<(), String> {
        let m = proc::mmap(p, "m", super::anon(PAGES * PAGE_SIZE))?;
        ensure!(matches!(proc::access(p, op::WRITE, m, PAGES * PAGE_SIZE, 0x56)?, RunEnd::Done), "write");
        let (u0, free0) = (UNFLUSHED_FREES.load(Ordering::Relaxed), frame::stats().free);
        FREE_BEFORE_FLUSH.store(true, Ordering::Relaxed);
        let ev = gather_trace(|| proc::munmap(p, m, PAGES * PAGE_SIZE).map_err(String::from));
        ensure!(!FREE_BEFORE_FLUSH.swap(false, Ordering::Relaxed), "munmap's gather did not take the knob");
        let refused = UNFLUSHED_FREES.load(Ordering::Relaxed) - u0;
        ensure!(refused == 1, "{refused} refused frees, expected 1");
        check_gather("munmap, frees moved before the flush", &ev?, PAGES as usize, 1)?;
        ensure!(frame::stats().free >= free0 + PAGES, "munmap gave back {} frames", frame::stats().free - free0);
        for i in [0, PAGES - 1] {
            let r = proc::access(p, op::CHECK, m + i * PAGE_SIZE, 1, 0x56)?;
            ensure!(matches!(r, RunEnd::Fault { .. }), "page {i} still readable after munmap: {r:?}");
        }
        Ok(())
    })();
    FREE_BEFORE_FLUSH.store(false, Ordering::Relaxed);
    let _ = proc::exit(p);
    r
}

/// Runs the fault path with step `S` broken
/// ([`memory::handle_mm_fault_sabotaged`], as the fault entry calls
/// `handle_mm_fault`: under the mmap lock, with the VMA of `va`) for a
/// fault on `va` in `p`.
fn sabotaged_fault<const S: u8>(p: &str, va: VirtAddr, write: bool) -> Result<memory::VmFault, String> {
    proc::with_proc(p, |pr| {
        let g = pr.mm.mmap_read_lock();
        let Some(vma) = g.vmas().find(va).copied() else { return Ok(Err(alloc::format!("no VMA at {va:?}"))) };
        let flags = memory::FaultFlags { write, unshare: false };
        Ok(Ok(memory::handle_mm_fault_sabotaged::<S>(pr.mt(), &vma, va, flags)))
    })?
}

kernel_test!(cursor_bbm_fault_into_empty_entry);
/// Fault into an empty entry (`do_anonymous_page`): invalid to valid
/// needs no BBM; what can go wrong is two faults on one empty entry, the
/// second making its page over the one the first installed. Linux rechecks
/// the entry under the lock ("pte changed under us"). Broken on purpose:
/// after a real EL0 write fault installed the page, a second fault on it
/// runs the whole path with that recheck skipped
/// (`memory::sabotage::SKIP_NONE_RECHECK`), a write and then a read, as faults
/// that read the entry none before the first fault took the lock would.
/// Caught by `Pte::set_new`, which refuses a make over a valid entry: the
/// fault backs off (its new folio freed), the entry, the data and the free
/// frame count stay as they were. With that refusal removed from
/// `set_new` this test failed: the write's zeroed folio replaced the live
/// page without BBM ("the backed-off fault changed the entry").
fn cursor_bbm_fault_into_empty_entry() -> Result<(), String> {
    let p = "bbm_fault";
    proc::spawn(p)?;
    let r = (|| -> Result<(), String> {
        let m = proc::mmap(p, "m", super::anon(PAGE_SIZE))?;
        ensure!(matches!(proc::access(p, op::WRITE, m, PAGE_SIZE, 0x61)?, RunEnd::Done), "fault in");
        let before = desc_of(p, m).ok_or("the write fault mapped nothing")?;
        let free0 = frame::stats().free;
        for write in [true, false] {
            let r = sabotaged_fault::<{ memory::sabotage::SKIP_NONE_RECHECK }>(p, m, write)?;
            ensure!(r == memory::VmFault::Done, "the fault over the present entry: {r:?} (write {write})");
            let now = desc_of(p, m);
            ensure!(now == Some(before), "the backed-off fault changed the entry: {before:?} -> {now:?}");
            ensure!(frame::stats().free == free0, "the backed-off fault kept {} frames", free0 - frame::stats().free);
        }
        let f0 = proc::fault_count(p);
        ensure!(matches!(proc::access(p, op::CHECK, m, PAGE_SIZE, 0x61)?, RunEnd::Done), "data after the refusal");
        ensure!(proc::fault_count(p) == f0, "the page faulted again after the refusal");
        Ok(())
    })();
    let _ = proc::exit(p);
    r
}

kernel_test!(cursor_bbm_cow_reuse);
/// COW reuse (`wp_page_reuse`: the only mapper of a read-only anon page
/// writes): a permission-only change by compare-and-swap, same output
/// address, no BBM. Broken on purpose: the parent's write fault after its
/// child left runs the whole fault path with
/// `memory::sabotage::REUSE_WITH_COPY_OA`, so the reuse's change also
/// moves the entry to a copy of the page (a reuse mixed up with
/// `wp_page_copy`, which would need BBM). Caught by `Pte::modify`, which
/// accepts only permission bits: the change is refused, the copy freed,
/// the entry unchanged, and the parent's real EL0 write then reuses the
/// page (one fault, same output address, writable, no frame kept). With
/// that check removed from `modify` (`perm_only` passing any value) the
/// sabotaged reuse moved the entry to the copy, and the run failed: the
/// test's cleanup exit panicked on the copy's mapcount ("mapcount
/// underflow": it had no rmap) before the test could report the moved
/// entry.
fn cursor_bbm_cow_reuse() -> Result<(), String> {
    let (pa, ch) = ("bbm_reuse_parent", "bbm_reuse_child");
    proc::spawn(pa)?;
    let r = (|| -> Result<(), String> {
        let m = proc::mmap(pa, "m", super::anon(PAGE_SIZE))?;
        ensure!(matches!(proc::access(pa, op::WRITE, m, PAGE_SIZE, 0x71)?, RunEnd::Done), "parent write");
        proc::fork(pa, ch)?;
        proc::exit(ch)?;
        let before = desc_of(pa, m).ok_or("not mapped after fork")?;
        ensure!(before.perms().read_only, "fork left the parent's entry writable: {before:?}");
        let (v0, f0, free0) = (violations(), proc::fault_count(pa), frame::stats().free);
        let r = sabotaged_fault::<{ memory::sabotage::REUSE_WITH_COPY_OA }>(pa, m, true)?;
        ensure!(r == memory::VmFault::Done, "the sabotaged reuse: {r:?}");
        let now = desc_of(pa, m);
        ensure!(now == Some(before), "the refused reuse changed the entry: {before:?} -> {now:?}");
        ensure!(frame::stats().free == free0, "the refused reuse kept {} frames", free0 - frame::stats().free);
        ensure!(violations() == v0, "reuse hit the BBM tracker");
        ensure!(matches!(proc::access(pa, op::WRITE, m, 1, 0x72)?, RunEnd::Done), "parent write after the child left");
        let after = desc_of(pa, m).ok_or("not mapped after reuse")?;
        ensure!(
            after.output_address(PAGE_SIZE) == before.output_address(PAGE_SIZE) && after.user_writable(),
            "reuse must keep the page and make it writable: {before:?} -> {after:?}"
        );
        ensure!(
            proc::fault_count(pa) == f0 + 1,
            "the reuse after the refused one took {} faults, expected 1",
            proc::fault_count(pa) - f0
        );
        ensure!(frame::stats().free == free0, "the refused reuse kept {} frames", free0 - frame::stats().free);
        ensure!(violations() == v0, "reuse hit the BBM tracker");
        ensure!(matches!(proc::access(pa, op::CHECK, m, 1, 0x72)?, RunEnd::Done), "the written byte");
        ensure!(matches!(proc::access(pa, op::CHECK, m + 1, PAGE_SIZE - 1, 0x71)?, RunEnd::Done), "the page's data");
        Ok(())
    })();
    let _ = proc::exit(ch);
    let _ = proc::exit(pa);
    r
}

kernel_test!(cursor_bbm_mprotect_flush);
/// mprotect (`change_protection`): permission-only changes by
/// compare-and-swap, no BBM, one broadcast TLB flush at the end. Broken on
/// purpose: a thread on another CPU keeps loading a page while this CPU's
/// thread mprotects it to PROT_NONE from EL0 with that flush dropped
/// (`memory::SKIP_NEXT_PERM_FLUSH`). The entry says "no access", yet the reader goes
/// on loading through the translation its TLB cached (QEMU models per-CPU
/// TLBs): a real EL0 access observes the stale entry. With the flush the
/// reader faults at its next load (`sched_tlb_shootdown_between_threads`).
fn cursor_bbm_mprotect_flush() -> Result<(), String> {
    use super::sched_tests::{cpus, in_process, me, start, start_reader, user_u64};
    if cpus() < 2 {
        return super::cannot_apply("one CPU: no other CPU's TLB to leave stale; this runs with --smp 2 or more");
    }
    let name = "bbm_mprotect";
    let (here, there) = (me(), if me() == 1 { 0 } else { 1 });
    in_process(name, || {
        let x = proc::mmap(name, "x", super::anon(PAGE_SIZE))?;
        let y = proc::mmap(name, "y", super::anon(PAGE_SIZE))?;
        ensure!(matches!(proc::access(name, op::WRITE, x, PAGE_SIZE, 0x77)?, RunEnd::Done), "filling x");
        ensure!(matches!(proc::access(name, op::WRITE, y, PAGE_SIZE, 0)?, RunEnd::Done), "clearing y");
        let a = start_reader(name, x.as_u64(), y.as_u64(), there)?;
        // mprotect(x, PROT_NONE) from EL0 on this CPU, its flush dropped.
        memory::SKIP_NEXT_PERM_FLUSH.store(true, Ordering::Relaxed);
        let b = start(name, &[op::SYSCALL, x.as_u64(), PAGE_SIZE, 0], crate::proc::syscall::nr::MPROTECT, here);
        let rb = b.map(|b| sched::wait(&b));
        memory::SKIP_NEXT_PERM_FLUSH.store(false, Ordering::Relaxed);
        let r = (|| -> Result<(), String> {
            let rb = rb?;
            ensure!(rb.x[0] == 2 && rb.x[1] == 0, "mprotect from EL0 failed: x0 {:#x} x1 {:#x}", rb.x[0], rb.x[1]);
            ensure!(desc_of(name, x).is_some_and(|d| !d.perms().el0), "mprotect(PROT_NONE) left EL0 access");
            let c0 = user_u64(name, y.as_u64())?;
            if let Some(regs) = sched::wait_until(&a, Some(500)) {
                return Err(alloc::format!(
                    "the reader stopped ({:?}) although the flush was dropped: its TLB entry did not stay stale",
                    proc::run_end(&regs)
                ));
            }
            let c1 = user_u64(name, y.as_u64())?;
            ensure!(c1 > c0 + 1000, "the reader made only {} loads in 500 ms", c1 - c0);
            println!("  flush dropped: the reader on cpu{there} loaded {} more times through its stale entry", c1 - c0);
            Ok(())
        })();
        sched::kill(&a);
        // Every TLB drops the stale entry with the unmap's flush.
        proc::munmap(name, x, PAGE_SIZE)?;
        r
    })
}

kernel_test!(cursor_bbm_fork_wrprotect_flush);
/// fork's write-protect (`copy_present_pte`: `ptep_set_wrprotect` on the
/// parent's entries, then one flush of the parent's range): permission
/// only, no BBM. A thread of the parent on another CPU keeps storing to a
/// private page while the parent forks. With the flush, its next store
/// takes the COW fault. Broken on purpose: with the flush dropped
/// (`memory::SKIP_NEXT_PERM_FLUSH`) the writer goes on storing through its stale
/// writable TLB entry into the page the child now shares, taking no fault
/// although the entry is read-only. The test runs both, so each outcome is
/// checked against the other; it failed when fork's flush was removed.
fn cursor_bbm_fork_wrprotect_flush() -> Result<(), String> {
    use super::sched_tests::{cpus, in_process, me, start, user_u64};
    if cpus() < 2 {
        return super::cannot_apply("one CPU: no other CPU's TLB to leave stale; this runs with --smp 2 or more");
    }
    let (pa, ch) = ("bbm_fork_parent", "bbm_fork_child");
    let there = if me() == 1 { 0 } else { 1 };
    in_process(pa, || {
        let m = proc::mmap(pa, "m", super::anon(PAGE_SIZE))?;
        ensure!(matches!(proc::access(pa, op::WRITE, m, PAGE_SIZE, 0x91)?, RunEnd::Done), "parent write");
        // Returns whether the writer took a fault within `ms` after the fork.
        let fork_under_writer = |sabotage: bool, ms: u64| -> Result<bool, String> {
            let w = start(pa, &[op::STORE, m.as_u64(), 1 << 40, 0x92, 0], 0, there)?;
            let r = (|| -> Result<bool, String> {
                ensure!(
                    crate::irq::wait_until(5000, || user_u64(pa, m.as_u64()).is_ok_and(|v| v & 0xff == 0x92)),
                    "the writer on cpu{there} did not get going"
                );
                let f0 = proc::fault_count(pa);
                memory::SKIP_NEXT_PERM_FLUSH.store(sabotage, Ordering::Relaxed);
                // On this CPU: a command run on the writer's CPU would leave
                // it through the empty TTBR0, which drops its TLB (QEMU).
                let forked = sched::pin_to_caller(|| proc::fork(pa, ch));
                memory::SKIP_NEXT_PERM_FLUSH.store(false, Ordering::Relaxed);
                forked?;
                // Read-only in the table, yet written through the TLB (unless
                // the writer has COWed already).
                ensure!(
                    proc::fault_count(pa) > f0 || desc_of(pa, m).is_some_and(|d| d.perms().read_only),
                    "fork did not write-protect the parent"
                );
                Ok(crate::irq::wait_until(ms, || proc::fault_count(pa) > f0))
            })();
            sched::kill(&w);
            let _ = proc::exit(ch);
            r
        };
        let faulted = fork_under_writer(true, 500)?;
        ensure!(!faulted, "the writer faulted although fork's flush was dropped: no stale entry to observe");
        ensure!(fork_under_writer(false, 3000)?, "with fork's flush the writer took no COW fault");
        Ok(())
    })
}

kernel_test!(cursor_bbm_contpte_fold_user);
/// contpte fold on the user side (`memory::contpte_try_fold`, Linux's
/// after mprotect: BBM of the whole run). A run-sized folio's run is
/// unfolded by an mprotect of one page; an mprotect of the whole run back
/// makes its entries alike again, and it folds. Broken on purpose: with
/// the fold's flush dropped ([`SKIP_NEXT_FLUSH`]) the mprotect succeeds
/// (the fold is opportunistic), the violation is counted and the run
/// stays unfolded, every page writable with its data; the same mprotect
/// again folds it. The fold is `Pte::convert_run`; with its refusal
/// removed (the flush dropped, the run written back with the bit all the
/// same) this test failed ("0 violations, expected 1"). Also: the fault path makes a run only into none entries, so a
/// write fault next to a present entry maps one page, not a run over it.
fn cursor_bbm_contpte_fold_user() -> Result<(), String> {
    let run = crate::mm::memory::cont_size();
    let order = (run / PAGE_SIZE).trailing_zeros() as u8;
    let p = "bbm_fold";
    proc::spawn(p)?;
    let r = (|| -> Result<(), String> {
        let m = proc::mmap(p, "m", MmapArgs { align: run, folio_order: order, ..super::anon(2 * run) })?;
        ensure!(matches!(proc::access(p, op::WRITE, m, run, 0x51)?, RunEnd::Done), "write the run");
        if !desc_of(p, m).is_some_and(|d| d.contiguous()) {
            return super::cannot_apply("no run-sized folio (memory fragmented)");
        }
        let folded = |what: &str, want: bool| -> Result<(), String> {
            for i in [0, 1, run / PAGE_SIZE - 1] {
                let d = desc_of(p, m + i * PAGE_SIZE).ok_or("the run lost a page")?;
                ensure!(d.contiguous() == want, "{what}: page {i} {d:?}, contiguous expected {want}");
                ensure!(d.user_writable(), "{what}: page {i} not writable: {d:?}");
            }
            Ok(())
        };
        proc::mprotect(p, m + PAGE_SIZE, PAGE_SIZE, true, false)?;
        ensure!(desc_of(p, m).is_some_and(|d| !d.contiguous()), "mprotect of one page left the run folded");
        let v0 = violations();
        sabotaged(|| proc::mprotect(p, m, run, true, true))?;
        ensure!(violations() == v0 + 1, "{} violations, expected 1", violations() - v0);
        folded("the refused fold", false)?;
        ensure!(matches!(proc::access(p, op::CHECK, m, run, 0x51)?, RunEnd::Done), "data after the refusal");
        proc::mprotect(p, m, run, true, true)?;
        folded("the retried fold", true)?;
        ensure!(violations() == v0 + 1, "the retried fold hit the tracker");
        ensure!(matches!(proc::access(p, op::CHECK, m, run, 0x51)?, RunEnd::Done), "data after the fold");
        // One entry of the other run present (the zero page), then a write
        // fault elsewhere in it: no run may be made over the present entry.
        let o = m + run;
        ensure!(matches!(proc::access(p, op::CHECK, o + 3 * PAGE_SIZE, 1, 0)?, RunEnd::Done), "read fault");
        let zero = desc_of(p, o + 3 * PAGE_SIZE).ok_or("the read fault mapped nothing")?;
        ensure!(matches!(proc::access(p, op::WRITE, o, PAGE_SIZE, 0x52)?, RunEnd::Done), "write next to it");
        ensure!(desc_of(p, o).is_some_and(|d| !d.contiguous()), "a run was made over a present entry");
        ensure!(desc_of(p, o + 3 * PAGE_SIZE) == Some(zero), "the present entry changed under the fault");
        Ok(())
    })();
    let _ = proc::exit(p);
    r
}
