//! Reclaim's LRU generations and access-flag aging (`mm/vmscan.rs`): aging
//! makes young entries old with real TLB invalidation, a page touched since
//! then is referenced (the software access-flag fault or the MMU set the
//! flag again), and only pages untouched for a whole aging interval are
//! cold. Pinned and shared pages are never cold.

use alloc::string::String;

use crate::arch::aarch64::granule::PAGE_SIZE;
use crate::arch::aarch64::user::op;
use crate::ensure;
use crate::mm::addr::VirtAddr;
use crate::mm::gup::Foll;
use crate::mm::pgtable::Translation;
use crate::mm::vmscan::{self, Pass, ScanControl};
use crate::proc::{self, RunEnd};

const PAGES: u64 = 16;

fn leaf(p: &str, va: VirtAddr) -> Result<(crate::mm::desc::Desc, u32), String> {
    let d = proc::with_tables(p, |_, t| match t.translate(va) {
        Translation::Mapped { desc, pa, .. } => Some((desc, pa)),
        _ => None,
    })?;
    let (desc, pa) = d.ok_or_else(|| alloc::format!("{va:?} is not mapped"))?;
    let f = crate::mm::page::phys_to_page(pa).and_then(|pg| pg.folio()).ok_or("no folio")?;
    Ok((desc, f.lru_gen()))
}

/// One walk of `pass` over `p` alone.
fn walk(p: &str, pass: Pass) -> Result<ScanControl, String> {
    let mut sc = ScanControl::default();
    proc::with_proc(p, |q| {
        if pass == Pass::Age {
            vmscan::age(&mut |f| f(q.mt()), &mut sc);
        } else {
            vmscan::walk_mm(q.mt(), pass, &mut sc);
        }
        Ok(())
    })?;
    Ok(sc)
}

kernel_test!(vmscan_aging_finds_cold_pages);
/// Checked by making `age_run` leave the access flag set: the test failed
/// (no entry old after aging).
fn vmscan_aging_finds_cold_pages() -> Result<(), String> {
    let (p, ch) = ("lru_parent", "lru_child");
    proc::spawn(p)?;
    let r = aging_in(p, ch);
    let _ = proc::exit(ch);
    let _ = proc::exit(p);
    r?;
    crate::console::commands::invariants().map_err(|e| alloc::format!("invariants: {e}"))
}

fn aging_in(p: &str, ch: &str) -> Result<(), String> {
    let m = proc::mmap(p, "m", super::anon(PAGES * PAGE_SIZE))?;
    ensure!(matches!(proc::access(p, op::WRITE, m, PAGES * PAGE_SIZE, 0x3c)?, RunEnd::Done), "write");
    let seq0 = vmscan::max_seq();
    for i in 0..PAGES {
        let (d, lg) = leaf(p, m + i * PAGE_SIZE)?;
        ensure!(d.af() && lg == seq0, "page {i}: a new page must be young in the youngest generation ({lg} vs {seq0})");
    }
    ensure!(walk(p, Pass::CountCold)?.nr_reclaimed == 0, "new pages counted cold");

    // Aging: every entry becomes old, every folio moves to the new generation.
    let sc = walk(p, Pass::Age)?;
    let seq1 = vmscan::max_seq();
    ensure!(seq1 == seq0 + 1, "aging did not start a generation");
    ensure!(sc.nr_aged == PAGES, "aging cleared {} access flags, expected {PAGES}", sc.nr_aged);
    for i in 0..PAGES {
        let (d, lg) = leaf(p, m + i * PAGE_SIZE)?;
        ensure!(!d.af() && lg == seq1, "page {i} after aging: af {} gen {lg} (max_seq {seq1})", d.af());
    }
    ensure!(walk(p, Pass::CountCold)?.nr_reclaimed == 0, "pages referenced before the aging counted cold");

    // The first half is used again: the flag comes back (a fault, or the MMU).
    let half = PAGES / 2;
    ensure!(matches!(proc::access(p, op::CHECK, m, half * PAGE_SIZE, 0x3c)?, RunEnd::Done), "read");
    for i in 0..PAGES {
        let (d, _) = leaf(p, m + i * PAGE_SIZE)?;
        ensure!(d.af() == (i < half), "page {i}: af {} after reading the first {half}", d.af());
    }
    let sc = walk(p, Pass::Age)?;
    let seq2 = vmscan::max_seq();
    ensure!(sc.nr_aged == half, "second aging cleared {} flags, expected {half}", sc.nr_aged);
    for i in 0..PAGES {
        let (_, lg) = leaf(p, m + i * PAGE_SIZE)?;
        let want = if i < half { seq2 } else { seq1 };
        ensure!(lg == want, "page {i}: generation {lg}, expected {want}");
    }
    let cold = walk(p, Pass::CountCold)?;
    ensure!(cold.nr_reclaimed == PAGES - half, "{} cold pages, expected {}", cold.nr_reclaimed, PAGES - half);

    // A cold page that is pinned is not reclaimable.
    let pin = Foll { write: false, pin: true, longterm: true };
    proc::gup(p, "lru_pin", m + (PAGES - 1) * PAGE_SIZE, PAGE_SIZE, pin, false, &|| Ok(()))?;
    let n = walk(p, Pass::CountCold)?.nr_reclaimed;
    crate::mm::gup::drop_handle("lru_pin").map_err(|e| alloc::format!("{e:?}"))?;
    ensure!(n == PAGES - half - 1, "{n} cold pages with one pinned, expected {}", PAGES - half - 1);

    // Shared with a child after fork: no page is reclaimable.
    proc::fork(p, ch)?;
    let n = walk(p, Pass::CountCold)?.nr_reclaimed;
    ensure!(n == 0, "{n} cold pages while a child maps them too");
    Ok(())
}

kernel_test!(vmscan_direct_reclaim_swaps_cold_pages);
/// `try_to_free_pages` over one process: its cold pages go to swap (swap
/// entries in the tables, the counters move), a page it uses again stays,
/// and every page reads back its data.
///
/// Checked by leaving eviction's `swap_out_folio` out: the test failed.
fn vmscan_direct_reclaim_swaps_cold_pages() -> Result<(), String> {
    if crate::mm::swapfile::total_bytes() == 0 {
        return super::cannot_apply("no swap device (pagelab.swap=0)");
    }
    let p = "reclaim_direct";
    proc::spawn(p)?;
    let r = direct_in(p);
    let _ = proc::exit(p);
    r?;
    crate::console::commands::invariants().map_err(|e| alloc::format!("invariants: {e}"))
}

fn direct_in(p: &str) -> Result<(), String> {
    let m = proc::mmap(p, "m", super::anon(PAGES * PAGE_SIZE))?;
    ensure!(matches!(proc::access(p, op::WRITE, m, PAGES * PAGE_SIZE, 0x5a)?, RunEnd::Done), "write");
    // Two agings with only page 0 used in between: the others are cold.
    walk(p, Pass::Age)?;
    ensure!(matches!(proc::access(p, op::CHECK, m, 1, 0x5a)?, RunEnd::Done), "read of page 0");
    walk(p, Pass::Age)?;
    ensure!(matches!(proc::access(p, op::CHECK, m, 1, 0x5a)?, RunEnd::Done), "read of page 0");
    // One eviction pass: the cold pages go, page 0 (referenced) stays.
    let mut sc = ScanControl { nr_to_reclaim: PAGES, ..ScanControl::default() };
    proc::with_proc(p, |q| {
        vmscan::walk_mm(q.mt(), Pass::Evict, &mut sc);
        Ok(())
    })?;
    ensure!(sc.nr_reclaimed == PAGES - 1, "eviction freed {} pages, expected {}", sc.nr_reclaimed, PAGES - 1);
    for i in 0..PAGES {
        ensure!(swapped(p, m + i * PAGE_SIZE)? == (i != 0), "page {i} after eviction: swapped {}", i != 0);
    }
    // Direct reclaim short of its target ages until page 0 is cold too.
    let before = vmscan::vmstat();
    let freed = proc::with_proc(p, |q| Ok(vmscan::try_to_free_pages(&mut |f| f(q.mt()))))?;
    let after = vmscan::vmstat();
    ensure!(freed == 1, "direct reclaim freed {freed} pages, expected page 0");
    ensure!(swapped(p, m)?, "page 0 is not in swap after direct reclaim");
    ensure!(
        after.pgsteal - before.pgsteal == freed && after.pswpout - before.pswpout == freed,
        "counters: pgsteal +{} pswpout +{} for {freed} pages",
        after.pgsteal - before.pgsteal,
        after.pswpout - before.pswpout
    );
    ensure!(after.allocstall == before.allocstall + 1, "allocstall did not count the reclaim");
    ensure!(after.aging >= before.aging + 2, "direct reclaim made {} agings", after.aging - before.aging);
    ensure!(matches!(proc::access(p, op::CHECK, m, PAGES * PAGE_SIZE, 0x5a)?, RunEnd::Done), "data after swap-in");
    Ok(())
}

/// Whether `va`'s entry in `p` is a swap entry.
fn swapped(p: &str, va: VirtAddr) -> Result<bool, String> {
    use crate::mm::desc::{Kind, NonPresent};
    Ok(proc::with_tables(p, |_, t| match t.translate(va) {
        Translation::Fault { level: 3, desc } => {
            matches!(desc.kind(3, crate::arch::aarch64::granule::GRANULE), Kind::NonPresent(NonPresent::Swap { .. }))
        }
        _ => false,
    })?)
}

kernel_test!(vmscan_skips_locked_folio);
/// Eviction leaves a locked folio alone (Linux `shrink_folio_list` takes
/// only a folio it can `folio_trylock`): a migration or truncation holds
/// the lock while it changes the folio's mappings. Two cold pages, one of
/// them locked: one eviction pass sends only the other to swap; unlocked,
/// the next pass takes it too.
///
/// Checked without the lock test in `swap_state::swappable`: the locked
/// page went to swap and the test failed.
fn vmscan_skips_locked_folio() -> Result<(), String> {
    if crate::mm::swapfile::total_bytes() == 0 {
        return super::cannot_apply("no swap device (pagelab.swap=0)");
    }
    let p = "reclaim_locked";
    proc::spawn(p)?;
    let r = locked_in(p);
    let _ = proc::exit(p);
    r?;
    crate::console::commands::invariants().map_err(|e| alloc::format!("invariants: {e}"))
}

fn locked_in(p: &str) -> Result<(), String> {
    let m = proc::mmap(p, "m", super::anon(2 * PAGE_SIZE))?;
    ensure!(matches!(proc::access(p, op::WRITE, m, 2 * PAGE_SIZE, 0x6c)?, RunEnd::Done), "write");
    walk(p, Pass::Age)?;
    walk(p, Pass::Age)?;
    let pa = proc::with_tables(p, |_, t| match t.translate(m + PAGE_SIZE) {
        Translation::Mapped { pa, .. } => Some(pa),
        _ => None,
    })?
    .ok_or("page 1 is not mapped")?;
    let f = crate::mm::page::phys_to_page(pa).and_then(|pg| pg.folio()).ok_or("no folio")?;
    ensure!(f.trylock(), "page 1's folio is locked already");
    let mut sc = ScanControl { nr_to_reclaim: 2, ..ScanControl::default() };
    let evicted = proc::with_proc(p, |q| {
        vmscan::walk_mm(q.mt(), Pass::Evict, &mut sc);
        Ok(())
    });
    let locked_swapped = swapped(p, m + PAGE_SIZE);
    if !matches!(locked_swapped, Ok(true)) {
        f.unlock();
    }
    evicted?;
    ensure!(!locked_swapped?, "eviction swapped out a locked folio");
    ensure!(swapped(p, m)?, "the unlocked cold page stayed");
    let mut sc = ScanControl { nr_to_reclaim: 1, ..ScanControl::default() };
    proc::with_proc(p, |q| {
        vmscan::walk_mm(q.mt(), Pass::Evict, &mut sc);
        Ok(())
    })?;
    ensure!(swapped(p, m + PAGE_SIZE)?, "page 1 stayed after its folio was unlocked");
    ensure!(matches!(proc::access(p, op::CHECK, m, 2 * PAGE_SIZE, 0x6c)?, RunEnd::Done), "data after swap-in");
    Ok(())
}
