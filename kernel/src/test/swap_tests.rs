//! Swap entries in real tables (`mm/swap_state.rs`): the state a swap
//! entry carries (exclusive, uffd-wp) through pageout, swap-in and fork,
//! and the swap-out primitive's refusal of a folio that gained a
//! reference between its check and the unmap (GUP-fast taking a pin).

use alloc::string::String;

use crate::arch::aarch64::granule::{GRANULE, PAGE_SIZE};
use crate::arch::aarch64::user::op;
use crate::ensure;
use crate::mm::addr::VirtAddr;
use crate::mm::desc::{AP_RDONLY, DBM_BIT, Desc, Kind, NonPresent, UFFD_WP_BIT};
use crate::mm::madvise::Advice;
use crate::mm::memory;
use crate::mm::pgtable::{Pte, TlbFlush, Translation};
use crate::mm::tlb::KernelFlush;
use crate::proc::{self, Process, RunEnd};

/// The level-3 entry that holds `va` in `name`'s tables (present or not).
fn entry_of(name: &str, va: VirtAddr) -> Result<Desc, String> {
    proc::with_tables(name, |_, t| match t.translate(va) {
        Translation::Mapped { desc, level: 3, .. } | Translation::Fault { desc, level: 3 } => Ok(desc),
        other => Err(alloc::format!("{va:#x}: not a level-3 entry: {other:?}")),
    })?
}

/// Runs `f` on the level-3 entry of `va` in `name`, under its page-table lock.
fn with_pte<R>(name: &str, va: VirtAddr, f: impl FnOnce(&Process, Pte<'_>) -> R) -> Result<R, String> {
    let r = proc::with_proc(name, |p| {
        let mt = p.mt();
        let ptl = mt.mm.page_table_lock_guard();
        let mut mem = mt.mem.lock();
        let Some(pte) = memory::pte_lookup(&ptl, &mut mem, va, false) else {
            return Ok(Err(String::from("no level-3 table")));
        };
        Ok(Ok(f(p, pte)))
    });
    r.unwrap_or_else(|e| Err(e.into()))
}

fn swp(d: Desc) -> Option<(bool, bool)> {
    match d.kind(3, GRANULE) {
        Kind::NonPresent(NonPresent::Swap { exclusive, uffd_wp, .. }) => Some((exclusive, uffd_wp)),
        _ => None,
    }
}

kernel_test!(swap_entry_carries_exclusive_and_uffd_wp);
/// Page 0 is write-protected by userfaultfd (its entry's uffd-wp bit, as
/// `wp on` leaves it), page 1 is not. Pageout turns both into swap
/// entries with `pte_swp_exclusive` and page 0's uffd-wp bit; swap-in
/// brings the bit back on a read-only present entry of an exclusive page;
/// fork copies it and clears the exclusive bit on both sides.
fn swap_entry_carries_exclusive_and_uffd_wp() -> Result<(), String> {
    const P: &str = "swp_wp";
    const C: &str = "swp_wp_child";
    if crate::mm::swapfile::total_bytes() < 2 * PAGE_SIZE {
        return super::cannot_apply("no swap device (pagelab.swap=0)");
    }
    proc::spawn(P)?;
    let r = (|| -> Result<(), String> {
        let va = proc::mmap(P, "a", super::anon(2 * PAGE_SIZE))?;
        let (v0, v1) = (va, va + PAGE_SIZE);
        ensure!(matches!(proc::access(P, op::WRITE, va, 2 * PAGE_SIZE, 0x5a)?, RunEnd::Done), "write");
        with_pte(P, v0, |p, pte| {
            // What `wp on` does to a present entry: uffd-wp, read-only.
            let _ = pte.update(UFFD_WP_BIT | AP_RDONLY, DBM_BIT);
            KernelFlush.flush(v0, PAGE_SIZE, Some(p.mm.asid()), true);
        })?;
        proc::madvise(P, va, 2 * PAGE_SIZE, Advice::PageOut)?;
        ensure!(swp(entry_of(P, v0)?) == Some((true, true)), "page 0: {:?}", entry_of(P, v0)?.kind(3, GRANULE));
        ensure!(swp(entry_of(P, v1)?) == Some((true, false)), "page 1: {:?}", entry_of(P, v1)?.kind(3, GRANULE));
        // A read swaps page 0 in: uffd-wp and read-only, exclusive.
        ensure!(matches!(proc::access(P, op::CHECK, v0, PAGE_SIZE, 0x5a)?, RunEnd::Done), "read of page 0");
        let d = entry_of(P, v0)?;
        ensure!(d.is_valid() && d.uffd_wp() && !d.may_write(), "page 0 after swap-in: {d:?}");
        let pg = crate::mm::page::phys_to_page(d.output_address(PAGE_SIZE)).ok_or("page 0 outside RAM")?;
        ensure!(pg.anon_exclusive(), "page 0 came back without PageAnonExclusive");
        // Back to swap, then fork: both lose pte_swp_exclusive; the child
        // keeps uffd-wp (copied as is).
        proc::madvise(P, v0, PAGE_SIZE, Advice::PageOut)?;
        proc::fork(P, C)?;
        let fr = (|| -> Result<(), String> {
            ensure!(swp(entry_of(P, v0)?) == Some((false, true)), "parent page 0 after fork");
            ensure!(swp(entry_of(C, v0)?) == Some((false, true)), "child page 0 after fork");
            ensure!(swp(entry_of(C, v1)?) == Some((false, false)), "child page 1 after fork");
            ensure!(matches!(proc::access(C, op::CHECK, va, 2 * PAGE_SIZE, 0x5a)?, RunEnd::Done), "child read");
            crate::console::commands::invariants().map_err(|e| alloc::format!("after fork: {e}"))?;
            Ok(())
        })();
        proc::exit(C)?;
        fr?;
        ensure!(matches!(proc::access(P, op::CHECK, va, 2 * PAGE_SIZE, 0x5a)?, RunEnd::Done), "parent read");
        Ok(())
    })();
    proc::exit(P)?;
    r?;
    crate::console::commands::invariants().map_err(|e| alloc::format!("at the end: {e}"))?;
    Ok(())
}

kernel_test!(swap_out_puts_back_a_folio_referenced_meanwhile);
/// The swap-out primitive checks the folio's references again after it
/// broke the entry and flushed: a reference taken in between (as by a
/// GUP-fast that read the entry first and is about to pin) makes it put
/// the entry back as it was and give the slot back. Without the recheck
/// the page would go to swap under a pin.
fn swap_out_puts_back_a_folio_referenced_meanwhile() -> Result<(), String> {
    const P: &str = "swp_busy";
    if crate::mm::swapfile::total_bytes() < PAGE_SIZE {
        return super::cannot_apply("no swap device (pagelab.swap=0)");
    }
    proc::spawn(P)?;
    let r = (|| -> Result<(), String> {
        let va = proc::mmap(P, "a", super::anon(PAGE_SIZE))?;
        ensure!(matches!(proc::access(P, op::WRITE, va, PAGE_SIZE, 0x6b)?, RunEnd::Done), "write");
        let before = entry_of(P, va)?;
        let (_, used0) = crate::mm::swapfile::usage();
        let out = with_pte(P, va, |p, pte| {
            let d = pte.get();
            let folio = crate::mm::page::phys_to_page(d.output_address(PAGE_SIZE))
                .and_then(|pg| pg.folio())
                .expect("mapped page without a folio");
            // The reference a racing GUP-fast would hold.
            folio.get();
            let r = crate::mm::swap_state::swap_out_folio(&p.mm, pte, va, folio);
            folio.put();
            r
        })?;
        ensure!(out == Err(crate::mm::swap_state::SwapOutError::Busy), "swap-out of a referenced folio: {out:?}");
        ensure!(entry_of(P, va)? == before, "the entry was not put back: {:?}", entry_of(P, va)?);
        ensure!(crate::mm::swapfile::usage().1 == used0, "the slot was not given back");
        ensure!(matches!(proc::access(P, op::CHECK, va, PAGE_SIZE, 0x6b)?, RunEnd::Done), "read back");
        crate::console::commands::invariants().map_err(|e| alloc::format!("after: {e}"))?;
        // Without the extra reference it goes.
        proc::madvise(P, va, PAGE_SIZE, Advice::PageOut)?;
        ensure!(swp(entry_of(P, va)?).is_some(), "not swapped out without the reference");
        Ok(())
    })();
    proc::exit(P)?;
    r
}

kernel_test!(invariants_see_a_shared_exclusive_swap_entry);
/// `invariants` refuses an exclusive swap entry whose slot counts another
/// reference: two entries point at one slot (counts agree) but one says
/// `pte_swp_exclusive`. Made by hand: page 1's entry is pointed at page
/// 0's slot, which is duplicated, and page 1's own slot is freed. With
/// page 0's exclusive bit cleared too the state is consistent again.
fn invariants_see_a_shared_exclusive_swap_entry() -> Result<(), String> {
    const P: &str = "swp_excl";
    if crate::mm::swapfile::total_bytes() < 2 * PAGE_SIZE {
        return super::cannot_apply("no swap device (pagelab.swap=0)");
    }
    proc::spawn(P)?;
    let r = (|| -> Result<(), String> {
        let va = proc::mmap(P, "a", super::anon(2 * PAGE_SIZE))?;
        let (v0, v1) = (va, va + PAGE_SIZE);
        ensure!(matches!(proc::access(P, op::WRITE, va, 2 * PAGE_SIZE, 0x6c)?, RunEnd::Done), "write");
        proc::madvise(P, va, 2 * PAGE_SIZE, Advice::PageOut)?;
        let entry = |v| match entry_of(P, v)?.kind(3, GRANULE) {
            Kind::NonPresent(NonPresent::Swap { entry, exclusive: true, .. }) => Ok(entry),
            k => Err(alloc::format!("{v:#x}: not an exclusive swap entry: {k:?}")),
        };
        let (e0, e1) = (entry(v0)?, entry(v1)?);
        crate::console::commands::invariants().map_err(|e| alloc::format!("after pageout: {e}"))?;
        let set = |v, exclusive| {
            with_pte(P, v, |_, pte| {
                pte.get_and_clear();
                pte.set_non_present(NonPresent::Swap { entry: e0, exclusive, uffd_wp: false }.encode())
            })
        };
        crate::mm::swapfile::swap_duplicate(e0).map_err(|e| alloc::format!("{e:?}"))?;
        set(v1, false)?.map_err(|e| alloc::format!("{e:?}"))?;
        crate::mm::swapfile::free_swap_and_cache(e1).map_err(|e| alloc::format!("{e:?}"))?;
        let seen = crate::console::commands::invariants();
        set(v0, false)?.map_err(|e| alloc::format!("{e:?}"))?;
        ensure!(seen.is_err(), "invariants accepted an exclusive swap entry whose slot counts 2");
        crate::console::commands::invariants().map_err(|e| alloc::format!("both shared: {e}"))?;
        ensure!(matches!(proc::access(P, op::CHECK, va, 2 * PAGE_SIZE, 0x6c)?, RunEnd::Done), "read back");
        Ok(())
    })();
    proc::exit(P)?;
    r?;
    crate::console::commands::invariants().map_err(|e| alloc::format!("at the end: {e}"))?;
    Ok(())
}
