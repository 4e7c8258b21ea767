//! Linux `mm/huge_memory.c`: anonymous folios of one level-2 block's size
//! (2M with 4K pages, 32M with 16K, 512M with 64K) mapped by a single
//! level-2 block descriptor ("PMD-mapped THP"), and the huge zero folio.
//!
//! Accounting as in Linux: a block mapping counts once in the folio's
//! `entire_mapcount` and holds one reference; `PageAnonExclusive` is kept
//! on every page (Linux keeps it on the head for PMD mappings and copies it
//! to the pages on split). Anything that would change part of a block
//! first splits it into a table of page entries (`split_huge_pmd`, with
//! break-before-make of the level-2 entry); COW of a shared block splits
//! and then copies one page, as Linux's `do_huge_pmd_wp_page` falls back.

use super::error::{Inconsistency, MmError, Need};
use core::sync::atomic::{AtomicUsize, Ordering};

use super::pgtable::{Pte, Stage1User};

use super::addr::{PhysAddr, VirtAddr};
use super::desc::{Desc, LeafAttrs};
use super::frame::{self, Owner};
use super::kernel_pgtable::FrameTableMem;
use super::memory::{self, CONT_BIT, FaultFlags, VmFault};
use super::mm_struct::{MmStruct, VmFlags, Vma};
use super::page::{self, Folio};
use super::pgtable::TableMemory;
use super::pgtable::TlbFlush;
use super::tlb::KernelFlush;
use crate::arch::aarch64::granule::{GRANULE, PAGE_SIZE};

/// Bytes one level-2 block maps.
pub fn pmd_size() -> u64 {
    GRANULE.level_size(2)
}

/// Bytes one level-1 block maps (1G with 4K pages).
pub fn pud_size() -> u64 {
    GRANULE.level_size(1)
}

/// The order of a folio one level-1 block maps, where `thp=` may ask for
/// it: with 4K pages (1G; level-1 blocks of 16K and 64K pages are not
/// allowed without LPA2).
pub fn pud_order() -> Option<u8> {
    GRANULE.block_allowed(1).then(|| (pud_size() / PAGE_SIZE).trailing_zeros() as u8)
}

/// The VMA wants 1G folios (`thp=1G`) and holds the whole aligned block.
pub fn pud_suitable(vma: &Vma, va: VirtAddr) -> bool {
    let base = va.align_down(pud_size()).as_u64();
    pud_order().is_some_and(|o| vma.folio_order >= o)
        && !vma.flags.contains(VmFlags::NOHUGEPAGE)
        && base >= vma.start.as_u64()
        && base + pud_size() <= vma.end.as_u64()
}

/// A write fault on an empty level-1 entry of a `thp=1G` VMA: a zeroed 1G
/// folio mapped by one level-1 block, exclusive. `None` (no 1G of free,
/// aligned memory; reads never get one): the caller falls back to 2M.
///
/// A 1G THP is only ever mapped by that one entry, in one mm: fork, and
/// anything that changes part of it, first split it into 2M THPs
/// ([`split_huge_pud`]), which follow the PMD rules. So it is never
/// COW-shared and a write fault on it only ever reuses it.
pub fn do_huge_pud_anonymous_page(pud: Pte, vma: &Vma, va: VirtAddr, flags: FaultFlags) -> Option<VmFault> {
    if !flags.write {
        return None;
    }
    let folio = page::folio_alloc_anon(pud_order()? as u32)?;
    page::folio_add_new_anon_rmap_pmd(folio);
    super::rmap::folio_set_anon(folio, vma, va.align_down(folio.size()));
    memory::set_pte_new(
        pud,
        memory::maybe_mkwrite(Desc::leaf(folio.pa(), 1, memory::vm_page_prot(vma)), vma).mkdirty(),
    );
    Some(VmFault::Done)
}

/// Splits the 1G block at `pud` (Linux `__split_huge_pud`, plus a folio
/// split, since a 1G folio is mapped by this entry alone): the folio
/// becomes 2M folios, each mapped by one level-2 block with the same
/// attributes, by break-before-make of the level-1 entry. Pins and GUP
/// references move to the 2M folio their page is in.
pub fn split_huge_pud(mm: &MmStruct, mem: &mut FrameTableMem, pud: Pte, va: VirtAddr) -> Result<(), MmError> {
    let va = va.as_u64();
    let desc = pud.get();
    let base = va & !(pud_size() - 1);
    let pa = desc.output_address(pud_size());
    let folio = page::phys_to_page(pa)
        .and_then(|p| p.folio())
        .filter(|f| f.size() == pud_size() && !desc.special())
        .ok_or(MmError::Inconsistent { addr: va, what: Inconsistency::Unsplittable })?;
    let table = mem.alloc_table().ok_or(MmError::NoMemory(Need::Table))?;
    // Break and flush first, then build the level-2 blocks from the value
    // the swap took (AF and dirty included).
    let old = match pud.clear_flush(&Stage1User { asid: mm.asid() }, &mut KernelFlush, VirtAddr::new(base), pud_size())
    {
        Ok(old) => old,
        Err(e) => {
            mem.free(table);
            return Err(e.into());
        }
    };
    if let Err(e) = page::split_entire_folio(folio, memory::max_folio_order() as u32, |f| {
        (super::gup::held(f, true), super::gup::held(f, false))
    }) {
        // The same translation back: invalid to valid, after the flush.
        memory::set_pte_new(pud, old);
        mem.free(table);
        return Err(e);
    }
    let attrs = old.attr_bits();
    for i in 0..GRANULE.entries_per_table() {
        // Level-2 block descriptors (bits 1:0 = 0b01), not reachable yet.
        // SAFETY: the new table belongs to this mm, under the same lock.
        if let Err(e) = unsafe { pud.locate_in(&*mem, table, i) }
            .set_new(Desc((pa.as_u64() + i as u64 * pmd_size()) | attrs | 0b01))
        {
            memory::pte_bug(e);
        }
    }
    memory::set_pte_new(pud, Desc::table(table));
    Ok(())
}

static HUGE_ZERO: AtomicUsize = AtomicUsize::new(0);

/// Linux `mm_get_huge_zero_folio`: a zeroed block-sized run of frames,
/// allocated on first use and kept for good (never refcounted per
/// mapping). `None` when there is no memory for it: the caller falls back
/// to the small zero page.
pub fn huge_zero_folio() -> Option<PhysAddr> {
    let cur = HUGE_ZERO.load(Ordering::Acquire);
    if cur != 0 {
        return Some(PhysAddr::new(cur as u64));
    }
    let order = memory::max_folio_order() as u32;
    let pa = frame::alloc_zeroed(order, Owner::Other)?;
    page::mark_zero(pa, 1 << order);
    match HUGE_ZERO.compare_exchange(0, pa.as_u64() as usize, Ordering::AcqRel, Ordering::Acquire) {
        Ok(_) => Some(pa),
        Err(other) => {
            let _ = frame::free(pa, order, Owner::Other);
            Some(PhysAddr::new(other as u64))
        }
    }
}

/// Linux `is_huge_zero_pmd` (by output address).
pub fn is_huge_zero(pa: PhysAddr) -> bool {
    let z = HUGE_ZERO.load(Ordering::Acquire) as u64;
    z != 0 && pa.as_u64() & !(pmd_size() - 1) == z
}

/// Linux `thp_vma_suitable_order` for the block size: the VMA wants
/// block-sized folios and holds the whole aligned block around `va`.
pub fn pmd_suitable(vma: &Vma, va: VirtAddr) -> bool {
    let base = va.align_down(pmd_size()).as_u64();
    !vma.flags.contains(VmFlags::NOHUGEPAGE)
        && vma.folio_order >= memory::max_folio_order()
        && base >= vma.start.as_u64()
        && base + pmd_size() <= vma.end.as_u64()
}

fn block_desc(pa: PhysAddr, vma: &Vma) -> Desc {
    Desc::leaf(pa, 2, memory::vm_page_prot(vma))
}

/// Linux `do_huge_pmd_anonymous_page` on an empty level-2 entry. A read
/// maps the huge zero folio read-only (special); a write maps a new zeroed
/// block-sized folio. `None`: no memory for it, fall back to page tables.
pub fn do_huge_pmd_anonymous_page(pmd: Pte, vma: &Vma, va: VirtAddr, flags: FaultFlags) -> Option<VmFault> {
    if !flags.write {
        let z = huge_zero_folio()?;
        memory::set_pte_new(pmd, Desc::leaf(z, 2, LeafAttrs { special: true, ..memory::vm_page_prot(vma) }));
        return Some(VmFault::Done);
    }
    let folio = page::folio_alloc_anon(memory::max_folio_order() as u32)?;
    page::folio_add_new_anon_rmap_pmd(folio);
    super::rmap::folio_set_anon(folio, vma, va.align_down(folio.size()));
    memory::set_pte_new(pmd, memory::maybe_mkwrite(block_desc(folio.pa(), vma), vma).mkdirty());
    Some(VmFault::Done)
}

/// Linux `do_huge_pmd_wp_page`: a write or unshare fault on a read-only
/// block. An exclusive folio (or one nobody else holds) is reused in
/// place; the huge zero folio and shared folios are split, and the retried
/// access faults on the page entry, where `do_wp_page` copies one page.
pub fn do_huge_pmd_wp_page(
    mm: &MmStruct,
    mem: &mut FrameTableMem,
    pmd: Pte,
    vma: &Vma,
    va: VirtAddr,
    desc: Desc,
    flags: FaultFlags,
) -> VmFault {
    let pa = desc.output_address(pmd_size());
    if desc.special() {
        return match split_huge_pmd(mm, mem, pmd, va) {
            Ok(()) => VmFault::Done,
            Err(_) => VmFault::Oom,
        };
    }
    let Some(folio) = page::phys_to_page(pa).and_then(|p| p.folio()) else { return VmFault::Sigsegv };
    let all_excl = (0..folio.nr_pages()).all(|i| folio.page(i).anon_exclusive());
    let sole = folio.refcount() == 1 && folio.entire_mapcount() == 1 && folio.mapcount() == 1;
    if all_excl || sole {
        if !all_excl {
            (0..folio.nr_pages()).for_each(|i| folio.page(i).set_anon_exclusive());
        }
        if !flags.unshare {
            // CAS: an AF/dirty update the MMU made since `desc` stays.
            if let Err(e) = pmd.modify(|d| memory::maybe_mkwrite(d, vma).mkdirty().mkyoung()) {
                memory::pte_bug(e);
            }
            KernelFlush.flush(va.align_down(pmd_size()), pmd_size(), Some(mm.asid()), true);
        }
        return VmFault::Done;
    }
    match split_huge_pmd(mm, mem, pmd, va) {
        Ok(()) => VmFault::Done,
        Err(_) => VmFault::Oom,
    }
}

/// Linux `__split_huge_pmd`: replaces the block at `pmd` with a table of
/// page entries mapping the same memory with the same attributes (the
/// small zero page for the huge zero folio), by break-before-make of the
/// level-2 entry. The folio's single block mapping becomes one mapping
/// (and one reference) per page; exclusivity stays per page.
pub fn split_huge_pmd(mm: &MmStruct, mem: &mut FrameTableMem, pmd: Pte, va: VirtAddr) -> Result<(), MmError> {
    let va = va.as_u64();
    let desc = pmd.get();
    let base = va & !(pmd_size() - 1);
    let pa = desc.output_address(pmd_size());
    let zero = desc.special() && is_huge_zero(pa);
    // Checked before the table is allocated, so a refusal leaks nothing.
    if desc.special() && !zero {
        return Err(MmError::Inconsistent { addr: va, what: Inconsistency::Unsplittable });
    }
    let folio = match desc.special() {
        true => None,
        false => Some(
            page::phys_to_page(pa)
                .and_then(|p| p.folio())
                .ok_or(MmError::Inconsistent { addr: va, what: Inconsistency::NoFolio })?,
        ),
    };
    let table = mem.alloc_table().ok_or(MmError::NoMemory(Need::Table))?;
    // Break and flush first (Linux `pmdp_invalidate`), then build the page
    // entries from the value the swap took: an AF or dirty update the MMU
    // made to the block up to then is in it.
    let old = match pmd.clear_flush(&Stage1User { asid: mm.asid() }, &mut KernelFlush, VirtAddr::new(base), pmd_size())
    {
        Ok(old) => old,
        Err(e) => {
            mem.free(table);
            return Err(e.into());
        }
    };
    let n = GRANULE.entries_per_table();
    let attrs = old.attr_bits() & !CONT_BIT;
    let cont = if zero { 0 } else { CONT_BIT };
    for i in 0..n {
        let oa = if zero { page::zero_page().as_u64() } else { pa.as_u64() + i as u64 * PAGE_SIZE };
        // Not reachable by the walker yet.
        // SAFETY: the new table belongs to this mm, under the same lock.
        if let Err(e) = unsafe { pmd.locate_in(&*mem, table, i) }.set_new(Desc(oa | attrs | cont | 0b11)) {
            memory::pte_bug(e);
        }
    }
    memory::set_pte_new(pmd, Desc::table(table));
    if let Some(folio) = folio {
        page::folio_split_pmd_rmap(folio);
    }
    Ok(())
}

/// Drops a block mapping of an anon folio (zap): one entire mapping and
/// its reference.
pub fn put_mapped_block(pa: PhysAddr) {
    let folio = page::phys_to_page(pa).and_then(|p| p.folio()).expect("block without a folio");
    page::folio_remove_rmap_pmd(folio);
    folio.put();
}

/// Linux `copy_huge_pmd` for fork: the block stays shared, read-only on
/// both sides, every page loses `PageAnonExclusive`. Returns the child's
/// entry, or `None` when the folio may be pinned and has exclusive pages:
/// the caller splits the parent's block and copies page by page instead.
pub fn copy_huge_pmd(src_pmd: Pte, desc: Desc) -> Option<Desc> {
    if desc.special() {
        return Some(desc);
    }
    let folio: Folio = page::phys_to_page(desc.output_address(pmd_size())).and_then(|p| p.folio())?;
    if folio.maybe_dma_pinned() && (0..folio.nr_pages()).any(|i| folio.page(i).anon_exclusive()) {
        return None;
    }
    (0..folio.nr_pages()).for_each(|i| folio.page(i).clear_anon_exclusive());
    page::folio_dup_rmap_pmd(folio);
    // CAS (Linux `pmdp_set_wrprotect`): hardware dirtiness reaches the child.
    Some(src_pmd.set_wrprotect().1)
}
