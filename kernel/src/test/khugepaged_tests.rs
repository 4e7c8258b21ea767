//! THP collapse of user memory (`madvise collapse`, Linux MADV_COLLAPSE,
//! [`crate::mm::khugepaged`]): base pages of one level-2 range become one
//! block, data intact, no fault afterwards and no frame lost; pages shared
//! after fork are copied, the other processes keeping theirs; the
//! refusals leave the range as it was; and the break-before-make tracker
//! catches a collapse whose flush was dropped.

use alloc::string::String;
use core::sync::atomic::Ordering;

use super::desc_of;
use crate::arch::aarch64::granule::{GRANULE, PAGE_SIZE};
use crate::arch::aarch64::user::op;
use crate::ensure;
use crate::errno::{EAGAIN, EINVAL};
use crate::mm::addr::VirtAddr;
use crate::mm::error::{MmError, ScanResult};
use crate::mm::frame::{self, Owner};
use crate::mm::madvise::Advice;
use crate::mm::mmap::MmapArgs;
use crate::mm::pgtable::MapError;
use crate::mm::pgtable::cursor::{BBM_VIOLATIONS, SKIP_NEXT_FLUSH};
use crate::proc::syscall::{MADV_COLLAPSE, nr};
use crate::proc::{self, ProcError, RunEnd};

/// Chunks the block is written in, each with its own byte.
const CHUNKS: u64 = 16;
/// Chunks left as none entries (never touched; zapped after a write) and
/// mapped to the zero page (read only): all read zero after the collapse.
const UNTOUCHED: u64 = 3;
const ZAPPED: u64 = 5;
const ZERO_PAGE: u64 = 4;

fn blk() -> u64 {
    GRANULE.level_size(2)
}

fn byte_of(k: u64) -> u8 {
    if matches!(k, UNTOUCHED | ZAPPED | ZERO_PAGE) { 0 } else { 0x40 + k as u8 }
}

/// A block-sized folio needs a block of RAM, twice over to be found (as
/// `cursor_bbm_thp_split`): with 64K pages (512M) and the default 1G it
/// does not apply.
fn too_big() -> bool {
    blk() > frame::stats().managed * PAGE_SIZE / 2
}

fn ok(r: Result<RunEnd, ProcError>, what: &str) -> Result<(), String> {
    match r? {
        RunEnd::Done => Ok(()),
        e => Err(alloc::format!("{what}: {e:?}")),
    }
}

/// Maps a block-aligned block of base pages in `p` (folio order 0) and
/// fills it chunk by chunk: distinct bytes, one chunk untouched, one
/// zapped after its write, one read (zero page). Returns its address.
fn fill_base_pages(p: &str) -> Result<VirtAddr, String> {
    let m = proc::mmap(p, "m", MmapArgs { align: blk(), ..super::anon(blk()) })?;
    let chunk = blk() / CHUNKS;
    for k in 0..CHUNKS {
        let at = m + k * chunk;
        match k {
            UNTOUCHED => {}
            ZERO_PAGE => ok(proc::access(p, op::TOUCH_READ, at, chunk, 0), "read the zero-page chunk")?,
            _ => ok(proc::access(p, op::WRITE, at, chunk, 0x40 + k as u8), "write a chunk")?,
        }
    }
    proc::madvise(p, m + ZAPPED * chunk, chunk, Advice::DontNeed)?;
    ensure!(proc::mapped_level(p, m) == Some(3), "base pages expected before the collapse");
    Ok(m)
}

/// Every chunk holds its byte (zero where nothing was written).
fn check_chunks(p: &str, m: VirtAddr) -> Result<(), String> {
    let chunk = blk() / CHUNKS;
    for k in 0..CHUNKS {
        ok(proc::access(p, op::CHECK, m + k * chunk, chunk, byte_of(k)), "chunk data")?;
    }
    Ok(())
}

/// Frames of user folios and of page tables (the heap's may grow meanwhile).
fn user_and_table_frames() -> (u64, u64) {
    let o = frame::stats().by_owner;
    (o[Owner::UserAnon as usize], o[Owner::PageTable as usize])
}

fn is_collapse(e: &ProcError, why: ScanResult) -> bool {
    matches!(e, ProcError::Mm(MmError::Collapse { why: w, .. }) if *w == why)
}

kernel_test!(thp_collapse_copies_into_a_block);
/// `madvise collapse` over a block of base pages: one level-2 block
/// afterwards (writable, dirty), every chunk's bytes intact and the none
/// and zero-page chunks zero, EL0 reads and writes of the whole block
/// without a single fault, and exactly the old pages and the old table
/// returned (user folio frames grow by the block less the old pages,
/// table frames drop by one). A `nohugepage` VMA is refused first and left as it was.
/// Skipping the copy of the old pages fails the data check; releasing one
/// old page fewer fails the frame count.
fn thp_collapse_copies_into_a_block() -> Result<(), String> {
    if too_big() {
        return super::cannot_apply("a block is more than half of RAM here");
    }
    let p = "collapse";
    let frames0 = user_and_table_frames();
    proc::spawn(p)?;
    let r = (|| -> Result<(), String> {
        let m = fill_base_pages(p)?;
        // Refused under nohugepage (Linux -EINVAL), the range unchanged.
        proc::madvise(p, m, blk(), Advice::NoHugePage)?;
        let e = proc::madvise(p, m, blk(), Advice::Collapse);
        ensure!(e.as_ref().is_err_and(|e| is_collapse(e, ScanResult::VmaCheck)), "collapse under nohugepage: {e:?}");
        let errno = proc::syscall(p, nr::MADVISE, [m.as_u64(), blk(), MADV_COLLAPSE, 0, 0, 0])?;
        ensure!(errno == -EINVAL, "MADV_COLLAPSE under nohugepage: {errno}, expected -EINVAL");
        ensure!(proc::mapped_level(p, m) == Some(3), "the refused collapse must leave the pages");
        proc::madvise(p, m, blk(), Advice::HugePage)?;
        let chunk = blk() / CHUNKS;
        let old_pages = (CHUNKS - 3) * (chunk / PAGE_SIZE);
        let (user1, tables1) = user_and_table_frames();
        // Through the system call, as a program makes it.
        let got = proc::syscall(p, nr::MADVISE, [m.as_u64(), blk(), MADV_COLLAPSE, 0, 0, 0])?;
        ensure!(got == 0, "MADV_COLLAPSE returned {got}");
        let (user2, tables2) = user_and_table_frames();
        let want = (user1 + blk() / PAGE_SIZE - old_pages, tables1 - 1);
        ensure!(
            (user2, tables2) == want,
            "user and table frames {:?} -> {:?}, expected {want:?} ({old_pages} pages and a table back)",
            (user1, tables1),
            (user2, tables2)
        );
        ensure!(proc::mapped_level(p, m) == Some(2), "one block after the collapse");
        let d = desc_of(p, m).ok_or("the block is not mapped")?;
        ensure!(d.user_writable() && d.sw_dirty(), "writable and dirty block expected: {:#x}", d.0);
        let faults = proc::fault_count(p);
        check_chunks(p, m)?;
        ok(proc::access(p, op::WRITE, m, blk(), 0x77), "write the block")?;
        ok(proc::access(p, op::CHECK, m, blk(), 0x77), "check the block")?;
        let n = proc::fault_count(p) - faults;
        ensure!(n == 0, "{n} faults on the collapsed block, expected none");
        // A second collapse finds the block and does nothing.
        proc::madvise(p, m, blk(), Advice::Collapse)?;
        ensure!(user_and_table_frames() == (user2, tables2), "a collapse of a block changed the frame count");
        crate::console::commands::invariants().map_err(|e| alloc::format!("invariants: {e}"))
    })();
    let _ = proc::exit(p);
    r?;
    let now = user_and_table_frames();
    ensure!(now == frames0, "user and table frames {frames0:?} -> {now:?} after exit");
    Ok(())
}

kernel_test!(thp_collapse_shared_after_fork);
/// Pages shared with forked processes are collapsed by copy, as Linux's
/// MADV_COLLAPSE does (`max_ptes_shared` binds only khugepaged): the
/// parent gets an exclusive block holding its data, and only its table
/// goes back (the old pages stay with the others); the child and the
/// grandchild keep their base pages and data. The child's write then
/// copies (the grandchild still maps the page) and the grandchild's write
/// to the same page reuses it, as the last mapper (Linux
/// `wp_can_reuse_anon_folio`); the parent's block is untouched by both.
/// Refusing pages mapped more than once again fails the collapse
/// (`-EAGAIN`); dropping the parent's references to the old pages without
/// its rmap makes the grandchild copy, and the kernel panics when the
/// grandchild exits (a folio freed while counted as mapped).
fn thp_collapse_shared_after_fork() -> Result<(), String> {
    if too_big() {
        return super::cannot_apply("a block is more than half of RAM here");
    }
    let (p, c, g) = ("collapse_fork", "collapse_fork_child", "collapse_fork_grandchild");
    let frames0 = user_and_table_frames();
    proc::spawn(p)?;
    let r = (|| -> Result<(), String> {
        let m = fill_base_pages(p)?;
        proc::madvise(p, m, blk(), Advice::HugePage)?;
        proc::fork(p, c)?;
        proc::fork(c, g)?;
        let (user1, tables1) = user_and_table_frames();
        let got = proc::syscall(p, nr::MADVISE, [m.as_u64(), blk(), MADV_COLLAPSE, 0, 0, 0])?;
        ensure!(got == 0, "MADV_COLLAPSE of shared pages returned {got}");
        let now = user_and_table_frames();
        let want = (user1 + blk() / PAGE_SIZE, tables1 - 1);
        ensure!(now == want, "user and table frames {:?} -> {now:?}, expected {want:?}", (user1, tables1));
        ensure!(proc::mapped_level(p, m) == Some(2), "the parent's range must be one block");
        let d = desc_of(p, m).ok_or("the parent's block is not mapped")?;
        let excl = crate::mm::page::phys_to_page(d.output_address(PAGE_SIZE)).is_some_and(|pg| pg.anon_exclusive());
        ensure!(excl && d.user_writable(), "the parent's block must be exclusive and writable: {:#x}", d.0);
        for q in [c, g] {
            ensure!(proc::mapped_level(q, m) == Some(3), "{q} must keep its base pages");
        }
        check_chunks(p, m)?;
        check_chunks(c, m)?;
        check_chunks(g, m)?;
        let page = |q: &str| desc_of(q, m).map(|d| d.output_address(PAGE_SIZE)).ok_or("chunk 0 is not mapped");
        let old = page(c)?;
        ensure!(page(g)? == old, "child and grandchild must share chunk 0");
        // Still shared with the grandchild: the child's write copies.
        ok(proc::access(c, op::WRITE, m, PAGE_SIZE, 0x66), "the child's write")?;
        ensure!(page(c)? != old, "the child's write must copy: the grandchild maps the page too");
        // Now the grandchild's alone: its write reuses the page.
        let faults = proc::fault_count(g);
        let before = user_and_table_frames();
        ok(proc::access(g, op::WRITE, m, PAGE_SIZE, 0x67), "the grandchild's write")?;
        ensure!(proc::fault_count(g) - faults == 1, "one write fault expected in the grandchild");
        ensure!(page(g)? == old, "the grandchild's write must reuse the page it alone maps");
        ensure!(user_and_table_frames() == before, "the grandchild's write must not allocate");
        ok(proc::access(c, op::CHECK, m, PAGE_SIZE, 0x66), "the child's page")?;
        ok(proc::access(g, op::CHECK, m, PAGE_SIZE, 0x67), "the grandchild's page")?;
        check_chunks(p, m)?;
        crate::console::commands::invariants().map_err(|e| alloc::format!("invariants: {e}"))
    })();
    let _ = proc::exit(g);
    let _ = proc::exit(c);
    let _ = proc::exit(p);
    r?;
    let now = user_and_table_frames();
    ensure!(now == frames0, "user and table frames {frames0:?} -> {now:?} after exit");
    Ok(())
}

kernel_test!(thp_collapse_refusals);
/// A page pinned by GUP is refused (Linux `SCAN_PAGE_COUNT`: -EAGAIN), the
/// range stays base pages with its data, and the collapse succeeds once
/// the pin goes. Making `refcounts_suitable` accept every folio collapses
/// under the pin.
fn thp_collapse_refusals() -> Result<(), String> {
    if too_big() {
        return super::cannot_apply("a block is more than half of RAM here");
    }
    let p = "collapse_ref";
    let frames0 = user_and_table_frames();
    proc::spawn(p)?;
    let r = (|| -> Result<(), String> {
        let m = fill_base_pages(p)?;
        proc::madvise(p, m, blk(), Advice::HugePage)?;
        // Pinned (FOLL_PIN) by GUP: one page of the first chunk.
        let pin = crate::mm::gup::Foll { write: true, pin: true, longterm: true };
        proc::gup(p, "collapse_pin", m, PAGE_SIZE, pin, false, &|| Ok(()))?;
        let e = proc::madvise(p, m, blk(), Advice::Collapse);
        ensure!(e.as_ref().is_err_and(|e| is_collapse(e, ScanResult::PageCount)), "collapse of a pinned page: {e:?}");
        let errno = proc::syscall(p, nr::MADVISE, [m.as_u64(), blk(), MADV_COLLAPSE, 0, 0, 0])?;
        ensure!(errno == -EAGAIN, "MADV_COLLAPSE of a pinned page: {errno}, expected -EAGAIN");
        ensure!(proc::mapped_level(p, m) == Some(3), "the refused collapse must leave the pages");
        check_chunks(p, m)?;
        crate::mm::gup::drop_handle("collapse_pin").map_err(|e| alloc::format!("unpin: {e:?}"))?;
        proc::madvise(p, m, blk(), Advice::Collapse)?;
        ensure!(proc::mapped_level(p, m) == Some(2), "the collapse goes through once nothing else holds the pages");
        check_chunks(p, m)?;
        crate::console::commands::invariants().map_err(|e| alloc::format!("invariants: {e}"))
    })();
    let _ = crate::mm::gup::drop_handle("collapse_pin");
    let _ = proc::exit(p);
    r?;
    let now = user_and_table_frames();
    ensure!(now == frames0, "user and table frames {frames0:?} -> {now:?} after exit");
    Ok(())
}

kernel_test!(cursor_bbm_thp_collapse);
/// THP collapse (`pmdp_collapse_flush` then `set_pmd_at`: table to block,
/// BBM on the level-2 entry): with the flush after the break dropped, the
/// make of the block must be refused (the violation counted once), the old
/// table back with every byte, and the new folio freed; the retried
/// collapse makes the block. A refusal that does not put the old table
/// back fails the level check (and `invariants`: the old pages' mappings
/// are lost).
fn cursor_bbm_thp_collapse() -> Result<(), String> {
    if too_big() {
        return super::cannot_apply("a block is more than half of RAM here");
    }
    let p = "bbm_collapse";
    proc::spawn(p)?;
    let r = (|| -> Result<(), String> {
        let m = fill_base_pages(p)?;
        proc::madvise(p, m, blk(), Advice::HugePage)?;
        let frames = user_and_table_frames();
        let v0 = BBM_VIOLATIONS.load(Ordering::Relaxed);
        SKIP_NEXT_FLUSH.store(true, Ordering::Relaxed);
        let e = proc::madvise(p, m, blk(), Advice::Collapse);
        SKIP_NEXT_FLUSH.store(false, Ordering::Relaxed);
        ensure!(
            matches!(e, Err(ProcError::Mm(MmError::Table(MapError::BbmViolation { .. })))),
            "collapse without its flush: {e:?}"
        );
        let v = BBM_VIOLATIONS.load(Ordering::Relaxed) - v0;
        ensure!(v == 1, "{v} violations, expected 1");
        ensure!(proc::mapped_level(p, m) == Some(3), "the refused collapse must leave the table");
        let now = user_and_table_frames();
        ensure!(now == frames, "user and table frames {frames:?} -> {now:?} after the refusal");
        check_chunks(p, m)?;
        proc::madvise(p, m, blk(), Advice::Collapse)?;
        ensure!(proc::mapped_level(p, m) == Some(2), "the retried collapse makes the block");
        check_chunks(p, m)
    })();
    let _ = proc::exit(p);
    r
}
