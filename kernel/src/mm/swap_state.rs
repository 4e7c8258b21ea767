//! Swap entries in the page tables (Linux `do_swap_page` in mm/memory.c,
//! `try_to_unmap_one` in mm/rmap.c, `copy_nonpresent_pte`,
//! `free_swap_and_cache` from `zap_pte_range`, and
//! `madvise_cold_or_pageout_pte_range` in mm/madvise.c), over the device
//! and swap cache of [`super::swapfile`].
//!
//! - [`swap_out_folio`] is the swap-out primitive (reclaim calls it for
//!   cold folios, `madvise pageout` for what a range maps): an anonymous
//!   folio mapped once, whole, by consecutive entries of one table goes to
//!   contiguous slots. Its entries are cleared and flushed first
//!   (break-before-make), then its references are checked: one a GUP-fast
//!   took meanwhile (a pin in the making) puts the entries back, as Linux's
//!   `folio_try_share_anon_rmap_pte` refuses a maybe-pinned exclusive page.
//!   Each entry becomes a swap entry with `pte_swp_exclusive` from
//!   `PageAnonExclusive` and the uffd-wp bit of the entry; the data goes
//!   to the slots, the folio is freed.
//! - [`do_swap_page`] brings a page back on a read or write fault (GUP
//!   faults too): an exclusive entry comes back exclusive (writable at once
//!   on a write fault, so a later write reuses it with no copy); a shared
//!   one (after fork) read-only and not exclusive, unless it was the slot's
//!   last entry and nobody else holds the folio. The uffd-wp bit comes back
//!   on the present entry, which stays read-only.
//! - fork duplicates swap entries ([`copy_nonpresent_pte`]); zap and exit
//!   free them ([`zap_nonpresent_pte`]).

use alloc::vec::Vec;

use super::addr::VirtAddr;
use super::desc::{Desc, Kind, NonPresent, SwpEntry, UFFD_WP_BIT};
use super::error::{Inconsistency, MmError, Need};
use super::kernel_pgtable::FrameTableMem;
use super::memory::{self, FaultFlags, MmTables, VmFault};
use super::mm_struct::{MmStruct, MmapLocked, PtlGuard, VmFlags, Vma};
use super::page::{self, Folio};
use super::pgtable::{Pte, Stage1User};
use super::swapfile::{self, SwapError};
use super::tlb::KernelFlush;
use crate::arch::aarch64::granule::{GRANULE, PAGE_SIZE};

/// Linux `do_swap_page`: the fault on the swap entry `desc` in `slot` (the
/// entry of `va`), under the page-table lock.
#[cold]
#[inline(never)]
pub(crate) fn do_swap_page(slot: Pte, vma: &Vma, va: VirtAddr, flags: FaultFlags, desc: Desc) -> VmFault {
    let Kind::NonPresent(NonPresent::Swap { entry, exclusive, uffd_wp }) = desc.kind(3, GRANULE) else {
        return VmFault::Sigsegv;
    };
    let sin = match swapfile::swapin(entry) {
        Ok(Some(s)) => s,
        Ok(None) => return VmFault::Oom,
        // An entry for a free slot: nothing can be brought back (Linux
        // reports a bad swap entry as SIGBUS).
        Err(_) => return VmFault::Sigsegv,
    };
    let (folio, pg) = (sin.folio, sin.folio.head());
    // Linux: exclusive if the entry says so, or if the slot is gone and
    // the folio is ours alone (no other mapping, not in the swap cache).
    let exclusive = exclusive || (sin.last && folio.refcount() == 1 && folio.mapcount() == 0);
    let mut d = Desc::leaf(folio.pa(), 3, memory::vm_page_prot(vma));
    if uffd_wp {
        // Write-protected by userfaultfd: read-only, whatever the access.
        d = Desc(d.0 | UFFD_WP_BIT);
    } else if flags.write && exclusive {
        d = memory::maybe_mkwrite(d, vma).mkdirty();
    }
    if exclusive {
        page::folio_add_new_anon_rmap_pte(pg);
    } else {
        page::folio_add_anon_rmap_pte(pg);
    }
    // The reverse map's anchor: the same for every process of the fork tree
    // (they share the anon_vma and the address), so a swap-cache folio a
    // second process maps gets the same values.
    super::rmap::folio_set_anon(folio, vma, va);
    if slot.set_new(d).is_err() {
        // The entry was broken and not flushed since (the BBM tests): the
        // swap entry stays, the access retries.
        page::folio_remove_rmap_pte(pg);
        let _ = swapfile::swapin_undo(entry, folio);
        folio.put();
        return VmFault::Done;
    }
    crate::arch::aarch64::cpu::publish_tables();
    // A write to a shared entry retries into do_wp_page, which copies
    // (Linux calls do_wp_page from here).
    VmFault::Done
}

/// Linux `copy_nonpresent_pte` for fork: the child's copy of the
/// non-present entry `desc` (entry `spte` of the parent, at `va`). A swap
/// entry counts once more in the slot (`swap_duplicate`), and both sides
/// lose `pte_swp_exclusive`: the page is shared until one swaps it in.
pub(crate) fn copy_nonpresent_pte(spte: Pte, va: VirtAddr, desc: Desc) -> Result<Desc, MmError> {
    let Kind::NonPresent(NonPresent::Swap { entry, exclusive, uffd_wp }) = desc.kind(3, GRANULE) else {
        return Err(MmError::NotPresent { addr: va });
    };
    swapfile::swap_duplicate(entry)
        .map_err(|_| MmError::Inconsistent { addr: va.as_u64(), what: Inconsistency::BadSwapEntry })?;
    let shared = NonPresent::Swap { entry, exclusive: false, uffd_wp }.encode();
    if exclusive {
        // Non-present to non-present: nothing is cached, no flush.
        spte.set_new(shared).map_err(MmError::Table)?;
    }
    // uffd-wp is copied as it is: a child without fork events drops it with
    // the rest of its uffd-wp state (`userfaultfd::dup_userfaultfd_entries`).
    Ok(NonPresent::Swap { entry, exclusive: false, uffd_wp }.encode())
}

/// The zap of a non-present entry (Linux `zap_nonpresent_ptes`): a swap
/// entry gives its slot reference back (`free_swap_and_cache`); the last
/// one frees the slot and its swap-cache folio. Fork also gives back with
/// it a child's copy from [`copy_nonpresent_pte`] it could not install.
#[cold]
#[inline(never)]
pub(crate) fn zap_nonpresent_pte(old: Desc) {
    if let Kind::NonPresent(NonPresent::Swap { entry, .. }) = old.kind(3, GRANULE) {
        // `invariants` reports a slot count that disagrees with the entries.
        let _ = swapfile::free_swap_and_cache(entry);
    }
}

/// Why [`swap_out_folio`] left a folio where it was.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SwapOutError {
    /// No room in swap (or no device).
    Swap(SwapError),
    /// A reference appeared between the check and the unmap (GUP-fast
    /// taking a pin): the entries were put back.
    Busy,
    /// No kernel heap for the bookkeeping.
    NoMemory,
}

/// Whether `folio` may be swapped out from the entries starting at
/// `first` (the entry of `fva`): anonymous, mapped only by these
/// consecutive entries, from its first page, with no other reference (no
/// pin, no GUP reference, not in the swap cache), and not locked (Linux
/// `shrink_folio_list` takes only a folio it can `folio_trylock`: a
/// migration holds the lock while it moves the folio).
pub(crate) fn swappable(first: Pte, fva: VirtAddr, folio: Folio) -> bool {
    let nr = folio.nr_pages();
    folio.is_anon()
        && !folio.is_locked()
        && !folio.in_swap_cache()
        && fva.is_aligned(folio.size())
        && folio.entire_mapcount() == 0
        && folio.refcount() as u64 == nr
        && (0..nr).all(|j| {
            let d = first.sibling(first.index() + j as usize).get();
            d.is_valid()
                && !d.special()
                && d.output_address(PAGE_SIZE) == folio.pa() + j * PAGE_SIZE
                && folio.page(j).mapcount() == 1
        })
}

/// The swap-out primitive (Linux `try_to_unmap_one` with `TTU_*` for an
/// anonymous folio, then `pageout`): `folio`, mapped by the `nr` entries
/// from `first` (the entry of `fva`, in `mm`), goes to `nr` contiguous
/// slots, under the page-table lock. The caller checked [`swappable`]
/// (reclaim and `madvise pageout` both go through [`pageout_pte_range`]).
pub fn swap_out_folio(mm: &MmStruct, first: Pte, fva: VirtAddr, folio: Folio) -> Result<(), SwapOutError> {
    let nr = folio.nr_pages();
    let mut olds: Vec<Desc> = Vec::new();
    olds.try_reserve_exact(nr as usize).map_err(|_| SwapOutError::NoMemory)?;
    let entry = swapfile::get_swap_pages(nr).map_err(SwapOutError::Swap)?;
    let run = first.run(nr as usize);
    // Break: every entry invalid, one TLBI of the folio's range.
    for j in 0..nr as usize {
        olds.push(run.pte(j).get_and_clear());
    }
    run.flush(&Stage1User { asid: mm.asid() }, &mut KernelFlush, fva, folio.size());
    // A GUP-fast that read an entry before the break may hold a reference
    // now: the folio may be about to be pinned. Put everything back.
    if folio.refcount() as u64 != nr || folio.maybe_dma_pinned() {
        for (j, &d) in olds.iter().enumerate() {
            if let Err(e) = run.pte(j).set_new(d) {
                memory::pte_bug(e);
            }
        }
        crate::arch::aarch64::cpu::publish_tables();
        swapfile::put_swap_pages(entry, nr);
        return Err(SwapOutError::Busy);
    }
    for (j, old) in olds.iter().enumerate() {
        let j64 = j as u64;
        let slot = SwpEntry { type_: entry.type_, offset: entry.offset + j64 };
        swapfile::swap_writepage(slot, folio.pa() + j64 * PAGE_SIZE);
        let pg = folio.page(j64);
        let swp = NonPresent::Swap { entry: slot, exclusive: pg.anon_exclusive(), uffd_wp: old.uffd_wp() };
        if let Err(e) = run.pte(j).set_new(swp.encode()) {
            memory::pte_bug(e);
        }
    }
    crate::arch::aarch64::cpu::publish_tables();
    for j in 0..nr {
        page::folio_remove_rmap_pte(folio.page(j));
    }
    for _ in 0..nr {
        folio.put();
    }
    Ok(())
}

/// What [`pageout_pte_range`] did.
#[derive(Clone, Copy, Debug, Default)]
pub struct Pageout {
    /// Pages that went to swap.
    pub swapped: u64,
    /// Pages that could have gone but stayed for lack of swap.
    pub stayed: u64,
    /// Why the last of those stayed.
    pub why: Option<SwapError>,
}

/// Linux `madvise_cold_or_pageout_pte_range` with `pageout`, for the
/// level-3 entries of `[start, end)` in one table (`first` is the entry of
/// `start`): every anonymous folio mapped by this mm alone and whole inside
/// the range goes to swap. Folios another process also maps are skipped,
/// as Linux skips them; so are folios a pin or reference holds, folios
/// still in the swap cache and folios the range cuts. Page-cache pages are
/// appended to `file_pages` for the caller to unmap.
pub fn pageout_pte_range(
    mm: &MmStruct,
    first: Pte,
    start: VirtAddr,
    end: VirtAddr,
    out: &mut Pageout,
    file_pages: &mut Vec<VirtAddr>,
) -> Result<(), MmError> {
    let n = ((end - start) / PAGE_SIZE) as usize;
    let mut i = 0;
    while i < n {
        let va = start + i as u64 * PAGE_SIZE;
        let pte = first.sibling(first.index() + i);
        let d = pte.get();
        let folio = if d.is_valid() && !d.special() {
            page::phys_to_page(d.output_address(PAGE_SIZE)).and_then(|p| p.folio())
        } else {
            None
        };
        let Some(folio) = folio else {
            i += 1;
            continue;
        };
        if !folio.is_anon() {
            if folio.in_page_cache() {
                file_pages.try_reserve(1).map_err(|_| MmError::NoMemory(Need::Heap))?;
                file_pages.push(va);
            }
            i += 1;
            continue;
        }
        let idx = (d.output_address(PAGE_SIZE) - folio.pa()) / PAGE_SIZE;
        let fva = va - idx * PAGE_SIZE;
        let nr = folio.nr_pages();
        let rest = nr - idx;
        if fva < start || fva + folio.size() > end {
            i += rest as usize;
            continue;
        }
        let ffirst = first.sibling(first.index() + i - idx as usize);
        if !swappable(ffirst, fva, folio) {
            i += rest as usize;
            continue;
        }
        match swap_out_folio(mm, ffirst, fva, folio) {
            Ok(()) => out.swapped += nr,
            Err(SwapOutError::Busy) => {}
            Err(SwapOutError::Swap(e)) => {
                out.stayed += nr;
                out.why = Some(e);
            }
            Err(SwapOutError::NoMemory) => return Err(MmError::NoMemory(Need::Heap)),
        }
        i += rest as usize;
    }
    Ok(())
}

/// `madvise pageout` of `[start, end)` inside one private VMA: blocks
/// are split first (the folio then goes whole, PTE-mapped), then each
/// level-3 table's part goes through [`pageout_pte_range`]. Page-cache
/// pages are left mapped and listed in `file_pages`. The entry point for
/// reclaim of a range of one private VMA (under the mmap read lock).
pub fn pageout_private(
    mt: MmTables<'_>,
    start: VirtAddr,
    end: VirtAddr,
    out: &mut Pageout,
    file_pages: &mut Vec<VirtAddr>,
) -> Result<(), MmError> {
    let ptl = mt.mm.page_table_lock_guard();
    let mut mem = mt.mem.lock();
    memory::split_blocks_at_edges(&ptl, mt.mm, &mut mem, start, end)?;
    let bs = GRANULE.level_size(2);
    let mut a = start;
    while a < end {
        let chunk_end = (a.align_down(bs) + bs).min(end);
        if let Some(table_first) = level3_entry(&ptl, &mut mem, mt.mm, a)? {
            pageout_pte_range(mt.mm, table_first, a, chunk_end, out, file_pages)?;
        }
        a = chunk_end;
    }
    Ok(())
}

/// The level-3 entry of `a`, splitting a (non-zero) 2M block there first;
/// `None` where nothing is mapped or a 1G block or the huge zero page is.
fn level3_entry<'l>(
    ptl: &'l PtlGuard<'_>,
    mem: &mut FrameTableMem,
    mm: &MmStruct,
    a: VirtAddr,
) -> Result<Option<Pte<'l>>, MmError> {
    let Some(pmd) = memory::pmd_lookup(ptl, mem, a, false) else { return Ok(None) };
    let pd = pmd.get();
    let table = match pd.kind(2, GRANULE) {
        Kind::Leaf(_) if !pd.special() => {
            super::huge_memory::split_huge_pmd(mm, mem, pmd, a)?;
            match pmd.get().kind(2, GRANULE) {
                Kind::Table(t) => t,
                _ => return Ok(None),
            }
        }
        Kind::Table(t) => t,
        _ => return Ok(None),
    };
    // SAFETY: `table` was reached from this mm's pgd under `ptl`.
    Ok(Some(unsafe { memory::entry(pmd, mem, table, GRANULE.index(a.as_u64(), 3)) }))
}

/// `P madvise RANGE pageout` (Linux `MADV_PAGEOUT`), VMA by VMA under the
/// mmap read lock: private memory's anonymous pages go to swap
/// ([`pageout_pte_range`]); page-cache pages (shared mappings, and those a
/// private file mapping still maps) are unmapped through the zap path, and
/// each one nothing else holds then goes to swap from the file
/// ([`super::shmem::Memfd::swap_out_page`], Linux `shmem_writeout`). PFN
/// mappings are skipped, as Linux's `can_madv_lru_vma` does; holes too.
/// If swap ran out, the error says how many pages stayed.
pub fn madvise_pageout(mt: MmTables<'_>, va: VirtAddr, len: u64) -> Result<Pageout, MmError> {
    let g = mt.mm.mmap_read_lock();
    let end = va + len;
    let mut out = Pageout::default();
    // (file, first page, pages) to write out once unmapped.
    let mut file_ranges: Vec<(u32, u64, u64)> = Vec::new();
    let mut a = va;
    while let Some((s, e, vma)) =
        g.vmas().iter().find(|v| a < end && v.end > a && v.start < end).map(|v| (v.start.max(a), v.end.min(end), *v))
    {
        a = e;
        if vma.flags.contains(VmFlags::PFNMAP) {
            continue;
        }
        if vma.flags.contains(VmFlags::SHARED) {
            memory::zap_page_range(mt, s, e - s, &memory::ZapDetails { zap_flags: 0, vma: Some(&vma) })?;
            file_ranges.try_reserve(1).map_err(|_| MmError::NoMemory(Need::Heap))?;
            file_ranges.push((vma.file, vma.pgoff_of(s), (e - s) / PAGE_SIZE));
            continue;
        }
        let mut file_pages = Vec::new();
        pageout_private(mt, s, e, &mut out, &mut file_pages)?;
        file_ranges.try_reserve(file_pages.len()).map_err(|_| MmError::NoMemory(Need::Heap))?;
        for p in file_pages {
            memory::zap_page_range(mt, p, PAGE_SIZE, &memory::ZapDetails { zap_flags: 0, vma: Some(&vma) })?;
            file_ranges.push((vma.file, vma.pgoff_of(p), 1));
        }
    }
    // Without a device the page cache (RAM) is where file pages stay.
    if swapfile::total_bytes() == 0 {
        file_ranges.clear();
    }
    for (id, first, n) in file_ranges {
        let Some(file) = super::shmem::get(id) else { continue };
        for (pgoff, _) in file.cached().into_iter().filter(|&(o, _)| o >= first && o < first + n) {
            match file.swap_out_page(pgoff) {
                Ok(_) => {}
                Err(e) => {
                    out.stayed += 1;
                    out.why = Some(e);
                }
            }
        }
    }
    match out.why {
        Some(SwapError::NoDevice) => Err(MmError::NoSwapDevice { stayed: out.stayed }),
        Some(_) => Err(MmError::SwapFull { stayed: out.stayed }),
        None => Ok(out),
    }
}
