//! Advice about user memory (Linux mm/madvise.c): `MADV_DONTNEED` zaps a
//! range and keeps its VMAs; `MADV_HUGEPAGE`/`MADV_NOHUGEPAGE` set the folio
//! policy of later faults; `MADV_COLLAPSE` makes blocks of what base pages
//! map now ([`super::khugepaged`]); `MADV_PAGEOUT` reclaims what a range
//! maps now ([`super::swap_state::madvise_pageout`]).

use super::addr::VirtAddr;
use super::error::MmError;
use super::khugepaged;
use super::memory::{self, MmTables};
use super::mm_struct::{MmapLocked, VmFlags, Vma};
use super::mmap::check_user_range;

/// The advice pagelab implements.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Advice {
    /// `MADV_DONTNEED`: the next touch faults in fresh zero-filled memory.
    DontNeed,
    /// `MADV_HUGEPAGE`: the largest folios, where the mapping had none.
    HugePage,
    /// `MADV_NOHUGEPAGE`: base pages only (Linux VM_NOHUGEPAGE).
    NoHugePage,
    /// `MADV_COLLAPSE`: every whole level-2 range mapped by page entries
    /// becomes one block-sized folio, now.
    Collapse,
    /// `MADV_PAGEOUT`: anonymous pages go to swap, file pages are unmapped.
    PageOut,
}

/// Linux `do_madvise` over `[va, va+len)`, VMA by VMA as
/// `madvise_walk_vmas`. For DONTNEED a PFN mapping ends the walk
/// (`madvise_dontneed_free_valid_vma`: -EINVAL) and holes are skipped; for
/// the hugepage advice every VMA part gets it and a hole is `not mapped`
/// (-ENOMEM) once the rest is done. For COLLAPSE a VMA's refusal ends the
/// walk and holes are skipped, then `not mapped`, as for the hugepage
/// advice.
pub fn do_madvise(mt: MmTables<'_>, va: VirtAddr, len: u64, advice: Advice) -> Result<(), MmError> {
    check_user_range(va, len)?;
    match advice {
        Advice::DontNeed => madvise_dontneed(mt, va, len),
        Advice::HugePage => madvise_hugepage(mt, va, len, true),
        Advice::NoHugePage => madvise_hugepage(mt, va, len, false),
        Advice::Collapse => madvise_collapse(mt, va, len),
        Advice::PageOut => super::swap_state::madvise_pageout(mt, va, len).map(|_| ()),
    }
}

/// Linux `madvise_collapse` VMA by VMA, under the mmap lock for writing
/// (Linux takes it for writing around each collapse).
fn madvise_collapse(mt: MmTables<'_>, va: VirtAddr, len: u64) -> Result<(), MmError> {
    let vmas = mt.mm.mmap_write_lock();
    let end = va + len;
    let mut hole = None;
    let mut a = va;
    while a < end {
        let Some((s, e, vma)) =
            vmas.iter().find(|v| v.end > a && v.start < end).map(|v| (v.start.max(a), v.end.min(end), *v))
        else {
            hole.get_or_insert(a);
            break;
        };
        if s > a {
            hole.get_or_insert(a);
        }
        khugepaged::madvise_collapse(mt, &vma, s, e)?;
        a = e;
    }
    hole.map_or(Ok(()), |addr| Err(MmError::NotMapped { addr }))
}

fn madvise_dontneed(mt: MmTables<'_>, va: VirtAddr, len: u64) -> Result<(), MmError> {
    let g = mt.mm.mmap_read_lock();
    let end = va + len;
    let mut a = va;
    while let Some((s, e, vma)) =
        g.vmas().iter().find(|v| a < end && v.end > a && v.start < end).map(|v| (v.start.max(a), v.end.min(end), *v))
    {
        if vma.flags.contains(VmFlags::PFNMAP) {
            return Err(MmError::PfnMap { addr: s });
        }
        madvise_dontneed_single_vma(mt, &vma, s, e)?;
        a = e;
    }
    Ok(())
}

/// Linux `madvise_dontneed_single_vma`: zaps `[start, end)` of one VMA;
/// a file-backed uffd-wp VMA keeps its uffd-wp state as markers.
fn madvise_dontneed_single_vma(mt: MmTables<'_>, vma: &Vma, start: VirtAddr, end: VirtAddr) -> Result<(), MmError> {
    memory::zap_page_range(mt, start, end - start, &memory::ZapDetails { zap_flags: 0, vma: Some(vma) })
}

fn madvise_hugepage(mt: MmTables<'_>, va: VirtAddr, len: u64, huge: bool) -> Result<(), MmError> {
    let end = va + len;
    let mut vmas = mt.mm.mmap_write_lock();
    let mut hole = None;
    let mut a = va;
    while a < end {
        let Some((s, e)) = vmas.iter().find(|v| v.end > a && v.start < end).map(|v| (v.start.max(a), v.end.min(end)))
        else {
            hole.get_or_insert(a);
            break;
        };
        if s > a {
            hole.get_or_insert(a);
        }
        let n = vmas.splits_needed(s, e);
        vmas.try_reserve(n)?;
        // A block the new VMA edges cut is split first (Linux
        // `vma_adjust_trans_huge` in `__split_vma`): copy_page_range and
        // the other per-VMA walks need whole blocks inside each VMA.
        {
            let ptl = mt.mm.page_table_lock_guard();
            memory::split_blocks_at_edges(&ptl, mt.mm, &mut mt.mem.lock(), s, e)?;
        }
        vmas.split_at(s);
        vmas.split_at(e);
        if let Some(v) = vmas.find_mut(s)
            && !v.flags.contains(VmFlags::PFNMAP)
            && v.file == 0
        {
            // Only anonymous memory has folios to size (Linux `hugepage_madvise`).
            if huge {
                v.flags = VmFlags((v.flags.0 | VmFlags::HUGEPAGE.0) & !VmFlags::NOHUGEPAGE.0);
                if v.folio_order == 0 {
                    v.folio_order = memory::max_folio_order();
                }
            } else {
                v.flags = VmFlags((v.flags.0 | VmFlags::NOHUGEPAGE.0) & !VmFlags::HUGEPAGE.0);
            }
        }
        a = e;
    }
    hole.map_or(Ok(()), |addr| Err(MmError::NotMapped { addr }))
}
