//! Linux `mm/khugepaged.c`, the `MADV_COLLAPSE` side (`madvise_collapse`
//! → `hpage_collapse_scan_pmd` → `collapse_huge_page`): a level-2 range of
//! anonymous memory mapped by a table of page entries becomes one
//! block-sized folio mapped by one level-2 block. There is no khugepaged
//! thread; only the madvise collapses.
//!
//! The data moves: a new folio is allocated, the table entry is broken and
//! the whole range flushed from the TLBs and walk caches (Linux
//! `pmdp_collapse_flush`), each page is copied into the new folio (none and
//! zero-page entries stay zero, as Linux's `max_ptes_none` allows for
//! MADV_COLLAPSE), the block is written (Linux `set_pmd_at`), and only then
//! do the old pages and the old table go back. Every edit goes through the
//! user regime's [`CursorMut`], so the break-before-make tracker sees the
//! break and refuses a make over it that no flush covered
//! ([`MapError::BbmViolation`](super::pgtable::MapError)); the old table
//! then goes back as it was.
//!
//! Pages shared with another process (after fork) are copied like the
//! others: Linux limits shared entries (`max_ptes_shared`) only for the
//! khugepaged thread. This process drops its mapping of the old page and
//! the other keeps it, read-only as before; when it is the last mapper, its
//! next write reuses the page (`wp_can_reuse_anon_folio`), as after a zap.
//!
//! Refused, as Linux refuses them (the range stays as it was): a VMA that
//! allows no block-sized folio (`nohugepage`, as the THP fault path's
//! [`pmd_suitable`]), non-present entries other than swap entries (those
//! are swapped in first, as `MADV_COLLAPSE` does, unless they carry the
//! uffd-wp bit), pages that are not anonymous
//! memory, and folios with a reference no mapping accounts for: held by
//! GUP, a reference or a pin (Linux `is_refcount_suitable`,
//! `SCAN_PAGE_COUNT`: `-EAGAIN`).

use alloc::vec::Vec;

use super::addr::VirtAddr;
use super::desc::{Desc, Kind, NonPresent};
use super::error::{MmError, Need, ScanResult, try_reserve};
use super::huge_memory::{pmd_size, pmd_suitable};
use super::kernel_pgtable::FrameTableMem;
use super::memory::{self, MmTables, VmFault};
use super::mm_struct::{MmStruct, PtlGuard, VmFlags, Vma};
use super::page::{self, Folio};
use super::pgtable::{CursorMut, Stage1User, Tables};
use super::tlb::KernelFlush;
use crate::arch::aarch64::granule::{GRANULE, PAGE_SIZE, USER_START_LEVEL};

/// A cursor over `mm`'s tables under its page-table lock.
type UserCursor<'a, 'm> = CursorMut<'a, 'm, Stage1User, FrameTableMem>;

/// Linux `madvise_collapse` over `[start, end)`, which lies in `vma`: every
/// whole level-2 range in it becomes one block, or stays as it was. A
/// range that could not be collapsed (a [`MmError::Collapse`]) does not
/// stop the others; the last such refusal is returned. Running out of
/// memory or a refused table edit stops at once. The caller holds the mmap
/// lock for writing, so no fault or GUP slow path changes the tables
/// meanwhile.
pub fn madvise_collapse(mt: MmTables<'_>, vma: &Vma, start: VirtAddr, end: VirtAddr) -> Result<(), MmError> {
    let size = pmd_size();
    let (hstart, hend) = (start.align_up(size), end.align_down(size));
    let mut last_fail = None;
    let mut a = hstart;
    while a < hend {
        if !thp_vma_allowable(vma, a) {
            return Err(MmError::Collapse { addr: a, why: ScanResult::VmaCheck });
        }
        collapse_swapin(mt, vma, a)?;
        match collapse_huge_page(mt, vma, a) {
            Ok(()) => {}
            Err(e @ MmError::Collapse { .. }) => last_fail = Some(e),
            Err(e) => return Err(e),
        }
        a += size;
    }
    last_fail.map_or(Ok(()), Err)
}

/// Linux `__collapse_huge_page_swapin` for `MADV_COLLAPSE`: the swap
/// entries of the level-2 range at `addr` are read back through the fault
/// path, so the scan finds their pages. One with the uffd-wp bit is left
/// for the scan to refuse (Linux `SCAN_PTE_UFFD_WP`); out of memory stops
/// the command.
fn collapse_swapin(mt: MmTables<'_>, vma: &Vma, addr: VirtAddr) -> Result<(), MmError> {
    for i in 0..pmd_size() / PAGE_SIZE {
        let va = addr + i * PAGE_SIZE;
        let swapped = {
            let ptl = mt.mm.page_table_lock_guard();
            let mut mem = mt.mem.lock();
            super::memory::pte_lookup(&ptl, &mut mem, va, false).is_some_and(|s| {
                matches!(s.get().kind(3, GRANULE), Kind::NonPresent(NonPresent::Swap { uffd_wp: false, .. }))
            })
        };
        if swapped {
            match memory::handle_mm_fault(mt, vma, va, memory::FaultFlags::default()) {
                VmFault::Done => {}
                VmFault::Oom => return Err(MmError::NoMemory(Need::Frame)),
                VmFault::Sigsegv => return Err(MmError::Collapse { addr, why: ScanResult::PteNonPresent }),
            }
        }
    }
    Ok(())
}

/// Whether `vma` may hold a block-sized anonymous folio at `va`: the
/// policy of the THP fault path ([`pmd_suitable`]), for private anonymous
/// memory only (Linux `thp_vma_allowable_order`).
fn thp_vma_allowable(vma: &Vma, va: VirtAddr) -> bool {
    vma.file == 0
        && !vma.flags.contains(VmFlags::PFNMAP)
        && !vma.flags.contains(VmFlags::SHARED)
        && pmd_suitable(vma, va)
}

/// What the level-2 entry for a range holds.
enum Pmd {
    /// A block already: nothing to do (Linux `SCAN_PMD_MAPPED`).
    Mapped,
    /// A table of entries that can be collapsed (their values, in order,
    /// are in the scan's `olds`).
    Table,
}

/// Linux `collapse_huge_page` for the level-2 range at `addr`: scanned
/// first without allocating (so a refusal costs nothing), then the folio is
/// allocated outside the page-table lock, and under it the range is
/// scanned again and collapsed.
fn collapse_huge_page(mt: MmTables<'_>, vma: &Vma, addr: VirtAddr) -> Result<(), MmError> {
    let mut olds = Vec::new();
    try_reserve(&mut olds, GRANULE.entries_per_table())?;
    {
        let ptl = mt.mm.page_table_lock_guard();
        let mut mem = mt.mem.lock();
        let mut t = Tables::new(mt.mm.pgd, GRANULE, USER_START_LEVEL, &mut *mem);
        let mut fl = KernelFlush;
        let mut c = CursorMut::new(&ptl, &mut t, Stage1User { asid: mt.mm.asid() }, &mut fl);
        let r = hpage_collapse_scan_pmd(&mut c, addr, &mut olds);
        let _ = c.finish();
        if let Pmd::Mapped = r? {
            return Ok(());
        }
    }
    let folio = page::folio_alloc_anon(memory::max_folio_order() as u32).ok_or(MmError::NoMemory(Need::Frame))?;
    let ptl = mt.mm.page_table_lock_guard();
    let mut mem = mt.mem.lock();
    let r = collapse_locked(&ptl, &mut mem, mt.mm, vma, addr, folio, &mut olds);
    if !matches!(r, Ok(true)) {
        // Never mapped: its one reference frees it.
        folio.put();
    }
    r.map(|_| ())
}

/// Linux `hpage_collapse_scan_pmd`: the level-2 entry for `addr` and, for
/// a table, its entries into `olds` after checking each can be collapsed
/// (none, the zero page, or a page of an anonymous folio, shared or not)
/// and every folio's references.
fn hpage_collapse_scan_pmd(c: &mut UserCursor<'_, '_>, addr: VirtAddr, olds: &mut Vec<Desc>) -> Result<Pmd, MmError> {
    olds.clear();
    let fail = |why| MmError::Collapse { addr, why };
    if c.jump(addr, 2) != 2 {
        return Err(fail(ScanResult::PmdNull));
    }
    match c.query().kind(2, GRANULE) {
        Kind::Leaf(_) => return Ok(Pmd::Mapped),
        Kind::Table(_) => {}
        _ => return Err(fail(ScanResult::PmdNull)),
    }
    for i in 0..GRANULE.entries_per_table() {
        c.jump(addr + i as u64 * PAGE_SIZE, 3);
        let d = c.query();
        if d.0 != 0 {
            scan_pte(d).map_err(fail)?;
        }
        olds.push(d);
    }
    if !refcounts_suitable(olds) {
        return Err(fail(ScanResult::PageCount));
    }
    Ok(Pmd::Table)
}

/// One entry of the scan: `Ok` for what a collapse can take.
fn scan_pte(d: Desc) -> Result<(), ScanResult> {
    if !d.is_valid() {
        return Err(ScanResult::PteNonPresent);
    }
    if d.uffd_wp() {
        return Err(ScanResult::PteUffdWp);
    }
    let pa = d.output_address(PAGE_SIZE);
    if d.special() {
        // The zero page counts as none (Linux `is_zero_pfn`); other special
        // entries are no one's anonymous memory.
        return if page::is_zero_pfn(pa) { Ok(()) } else { Err(ScanResult::PageAnon) };
    }
    let pg = page::phys_to_page(pa).ok_or(ScanResult::PageAnon)?;
    // Mapped by other processes too is fine: MADV_COLLAPSE copies it.
    pg.folio().filter(|f| f.is_anon()).ok_or(ScanResult::PageAnon)?;
    Ok(())
}

/// Linux `is_refcount_suitable` over the scanned entries, once per folio:
/// every reference is a mapping's, in this process or another (no GUP
/// reference or pin in flight).
fn refcounts_suitable(olds: &[Desc]) -> bool {
    let mut last = None;
    for d in olds.iter().filter(|d| d.is_valid() && !d.special()) {
        let Some(f) = page::phys_to_page(d.output_address(PAGE_SIZE)).and_then(|p| p.folio()) else { return false };
        if last == Some(f.pa()) {
            continue;
        }
        last = Some(f.pa());
        if i64::from(f.refcount()) != i64::from(f.mapcount()) {
            return false;
        }
    }
    true
}

/// The collapse under the page-table lock: scan again, break the level-2
/// entry and flush (Linux `pmdp_collapse_flush`), check the references
/// (Linux `__collapse_huge_page_isolate`, after the flush, so a lockless
/// GUP either shows up here or sees the entry gone), copy, make the block,
/// and free the old table and pages only after the flush. Returns whether
/// `folio` was mapped; if not (a block there already, or a refusal, after
/// which the old table is back), it is left to the caller.
fn collapse_locked(
    ptl: &PtlGuard<'_>,
    mem: &mut FrameTableMem,
    mm: &MmStruct,
    vma: &Vma,
    addr: VirtAddr,
    folio: Folio,
    olds: &mut Vec<Desc>,
) -> Result<bool, MmError> {
    let detached = {
        let mut t = Tables::new(mm.pgd, GRANULE, USER_START_LEVEL, &mut *mem);
        let mut fl = KernelFlush;
        let mut c = CursorMut::new(ptl, &mut t, Stage1User { asid: mm.asid() }, &mut fl);
        // The scan only reads: nothing for the cursor to flush if it refuses.
        match hpage_collapse_scan_pmd(&mut c, addr, olds)? {
            Pmd::Mapped => return Ok(false),
            Pmd::Table => {}
        }
        c.jump(addr, 2);
        // Break: the table leaves the walk; its range (walk caches
        // included) is flushed before anything reads the pages.
        let pmd = c.get_and_clear();
        c.sync();
        if !refcounts_suitable(olds) {
            restore(c, pmd)?;
            return Err(MmError::Collapse { addr, why: ScanResult::PageCount });
        }
        let base = folio.pa();
        for (i, d) in olds.iter().enumerate() {
            if d.is_valid() && !d.special() {
                page::copy_page(base + i as u64 * PAGE_SIZE, d.output_address(PAGE_SIZE));
            }
        }
        page::folio_add_new_anon_rmap_pmd(folio);
        super::rmap::folio_set_anon(folio, vma, addr.align_down(folio.size()));
        let block = memory::maybe_mkwrite(Desc::leaf(base, 2, memory::vm_page_prot(vma)), vma).mkdirty().mkyoung();
        // Make: refused if the break's flush did not happen.
        if let Err(e) = c.set(block) {
            page::folio_remove_rmap_pmd(folio);
            restore(c, pmd)?;
            return Err(e.into());
        }
        c.finish()
    };
    for table in detached.0 {
        mem.free(table);
    }
    // Linux `__collapse_huge_page_copy_succeeded`: this process's mapping
    // and reference go; a page another process maps stays there.
    for d in olds.iter().filter(|d| d.is_valid() && !d.special()) {
        memory::put_mapped_page(d.output_address(PAGE_SIZE));
    }
    Ok(true)
}

/// Puts the old level-2 entry `pmd` back after a refusal, behind a flush
/// of whatever is still pending, and keeps its table (the cursor counted
/// it as detached).
fn restore(mut c: UserCursor<'_, '_>, pmd: Desc) -> Result<(), MmError> {
    c.sync();
    let r = c.set(pmd);
    let mut detached = c.finish();
    if let Kind::Table(child) = pmd.kind(2, GRANULE) {
        detached.0.retain(|&t| t != child);
    }
    debug_assert!(detached.0.is_empty());
    r.map(|_| ()).map_err(MmError::from)
}
