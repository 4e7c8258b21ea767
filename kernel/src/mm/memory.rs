//! Linux `mm/memory.c` for private anonymous memory, on real faults:
//! `handle_mm_fault`, `do_anonymous_page` (with the shared zero page),
//! `do_wp_page` (reuse of exclusive pages, `wp_page_copy` otherwise, and
//! the unshare fault of R/O long-term pins), `copy_page_range` (fork), the
//! zap side of munmap/madvise/exit and `change_protection` (mprotect).
//!
//! The rules are Linux's (seed 003): a private anon entry is writable only
//! if its page is `PageAnonExclusive`; fork clears the flag and
//! write-protects both sides, except for pages that may be DMA-pinned,
//! which the child gets a copy of at once; a write fault reuses a page
//! only if it is exclusive or provably the only user (refcount 1), and
//! copies it otherwise.
//!
//! Locking: the caller holds the mmap lock (read is enough for faults);
//! the page-table lock (`mm.page_table_lock`) is held while entries change.

use super::error::{Inconsistency, InsertError, MmError, Need, try_reserve};
use alloc::vec::Vec;
use core::sync::atomic::Ordering;

use spin::Mutex;

use super::addr::{PhysAddr, VirtAddr};
pub use super::desc::CONT_BIT;
use super::desc::{AF_BIT, AP_EL0, AP_RDONLY, Desc, Kind, LeafAttrs, NonPresent, OA_MASK, SW_DIRTY_BIT, UFFD_WP_BIT};
use super::kernel_pgtable::FrameTableMem;
use super::mm_struct::{MmStruct, PtlGuard, VmFlags, Vma};
use super::mmu_gather::MmuGather;
use super::page::{self, copy_page, folio_add_new_anon_rmap_pte, folio_remove_rmap_pte};
use super::pgtable::{Pte, PteRun, Stage1User, TableMemory, TlbFlush};
use super::tlb::KernelFlush;
use crate::arch::aarch64::granule::{GRANULE, PAGE_SIZE, USER_START_LEVEL};

/// Bytes of RAM kept aside at boot for `mmap pfn=PHYS` mappings.
pub const PFN_POOL_SIZE: u64 = 4 << 20;
static PFN_POOL: [core::sync::atomic::AtomicU64; 2] =
    [core::sync::atomic::AtomicU64::new(0), core::sync::atomic::AtomicU64::new(0)];

pub fn set_pfn_pool(start: PhysAddr, end: PhysAddr) {
    PFN_POOL[0].store(start.as_u64(), Ordering::Release);
    PFN_POOL[1].store(end.as_u64(), Ordering::Release);
}

/// The PFN pool `[start, end)` (physical), if there is one.
pub fn pfn_pool() -> Option<(PhysAddr, PhysAddr)> {
    let (s, e) = (PFN_POOL[0].load(Ordering::Acquire), PFN_POOL[1].load(Ordering::Acquire));
    (e > s).then_some((PhysAddr::new(s), PhysAddr::new(e)))
}

/// Clears the pool once the linear map exists (it is ordinary RAM).
pub fn zero_pfn_pool() {
    if let Some((s, e)) = pfn_pool() {
        crate::arch::aarch64::cpu::zero_pages(super::layout::phys_to_virt(s).as_u64(), e - s);
    }
}

/// Linux `remap_pfn_range` into an empty range of a new VMA: special
/// entries (no struct-page semantics), read-only unless the mapping is
/// shared and writable, so a private mapping's writes COW into anon pages.
pub fn remap_pfn_range(mt: MmTables<'_>, vma: &Vma, pfn: PhysAddr) -> Result<(), MmError> {
    let ptl = mt.mm.page_table_lock_guard();
    let mut mem = mt.mem.lock();
    let mut t = super::pgtable::Tables::new(mt.mm.pgd, GRANULE, USER_START_LEVEL, &mut *mem);
    let shared_w = vma.flags.contains(VmFlags::SHARED) && vma.flags.contains(VmFlags::WRITE);
    let attrs = LeafAttrs { special: true, writable: shared_w, ..vm_page_prot(vma) };
    let mut fl = KernelFlush;
    let mut c =
        super::pgtable::CursorMut::new(&ptl, &mut t, super::pgtable::Stage1User { asid: mt.mm.asid() }, &mut fl);
    let r = c.map(vma.start, pfn, vma.end - vma.start, attrs, super::pgtable::LeafSizes::PagesOnly);
    // Holes only: nothing to flush or free; finishing publishes the entries.
    let super::pgtable::Detached(d) = c.finish();
    debug_assert!(d.is_empty());
    r?;
    Ok(())
}

/// One address space's tables as the fault path needs them.
#[derive(Clone, Copy)]
pub struct MmTables<'a> {
    pub mm: &'a MmStruct,
    pub mem: &'a Mutex<FrameTableMem>,
}

/// What the fault asks for (Linux `FAULT_FLAG_*`).
#[derive(Clone, Copy, Debug, Default)]
pub struct FaultFlags {
    pub write: bool,
    /// `FAULT_FLAG_UNSHARE`: make the page exclusive without making it
    /// writable (R/O long-term pins of shared anon pages).
    pub unshare: bool,
}

/// Linux `vm_fault_t`, reduced.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum VmFault {
    /// The entry now allows the access.
    Done,
    /// The access is not allowed (SIGSEGV).
    Sigsegv,
    /// No memory (Linux VM_FAULT_OOM).
    Oom,
}

/// Linux `vm_get_page_prot` for a private mapping: user pages start
/// read-only; writability is added per entry (`maybe_mkwrite`).
pub fn vm_page_prot(vma: &Vma) -> LeafAttrs {
    LeafAttrs {
        el0: vma.flags.contains(VmFlags::READ),
        writable: false,
        kexec: false,
        uexec: vma.flags.contains(VmFlags::EXEC),
        ng: true,
        ..LeafAttrs::KERNEL_RW
    }
}

/// Linux `maybe_mkwrite`.
pub(crate) fn maybe_mkwrite(d: Desc, vma: &Vma) -> Desc {
    if vma.flags.contains(VmFlags::WRITE) { d.mkwrite() } else { d }
}

/// Whether the VMA allows the access at all (Linux `access_error`).
pub fn vma_access_permitted(vma: &Vma, write: bool) -> bool {
    if write { vma.flags.contains(VmFlags::WRITE) } else { vma.flags.contains(VmFlags::READ) }
}

/// The first entry of the root table of the mm whose page-table lock
/// `ptl` is (Linux `pgd_offset`): where every walk starts. The root comes
/// from the guard, so a walk cannot reach another mm's tables under this
/// lock, and `Pte::locate`'s root check folds away.
#[inline(always)]
pub(crate) fn root_entry<'l>(ptl: &'l PtlGuard<'_>, mem: &FrameTableMem) -> Pte<'l> {
    // SAFETY: table pages are RAM in the linear map, aligned to their size.
    match unsafe { Pte::locate(ptl, mem, ptl.pgd(), 0) } {
        Ok(e) => e,
        Err(e) => pte_bug(e),
    }
}

/// The entry `idx` of `table` (Linux `pte_offset_map` and friends), under
/// the lock `at` (an entry of the same mm) borrows.
///
/// # Safety
/// `table` is a table page of the mm `at` belongs to, reached from its pgd
/// under that lock (with the mmap lock held too), so it stays a table of
/// that mm while the returned `Pte` (which cannot outlive the lock) is used.
#[inline(always)]
pub(crate) unsafe fn entry<'l>(at: Pte<'l>, mem: &FrameTableMem, table: PhysAddr, idx: usize) -> Pte<'l> {
    // SAFETY: table pages are RAM in the linear map; the rest is the
    // caller's promise.
    unsafe { at.locate_in(mem, table, idx) }
}

/// The slot of the level-`level` entry for `va` (2: Linux `pmd_offset`,
/// 3: `pte_offset_map`), allocating missing tables on the way when `alloc`
/// (`__pmd_alloc`/`__pte_alloc`). `None`: a hole (not allocating), a block
/// or odd entry above `level`, or no memory for a table.
#[inline(always)]
fn slot_lookup<'l>(
    ptl: &'l PtlGuard<'_>,
    mem: &mut FrameTableMem,
    va: VirtAddr,
    level: u32,
    alloc: bool,
) -> Option<Pte<'l>> {
    let g = GRANULE;
    let at = root_entry(ptl, mem);
    let mut table = ptl.pgd();
    for l in USER_START_LEVEL..level {
        // SAFETY: `table` was reached from this mm's pgd under `ptl`.
        let e = unsafe { entry(at, mem, table, g.index(va.as_u64(), l)) };
        match e.get().kind(l, g) {
            Kind::Table(next) => table = next,
            Kind::None if alloc => {
                let next = mem.alloc_table()?;
                // Invalid to valid: published with the leaf written below it.
                e.set_new(Desc::table(next)).ok()?;
                table = next;
            }
            _ => return None,
        }
    }
    // SAFETY: `table` was reached from this mm's pgd under `ptl`.
    Some(unsafe { entry(at, mem, table, g.index(va.as_u64(), level)) })
}

/// The level-2 slot for `va` ([`slot_lookup`]).
#[inline(always)]
pub(crate) fn pmd_lookup<'l>(
    ptl: &'l PtlGuard<'_>,
    mem: &mut FrameTableMem,
    va: VirtAddr,
    alloc: bool,
) -> Option<Pte<'l>> {
    slot_lookup(ptl, mem, va, 2, alloc)
}

/// The level-3 slot for `va` ([`slot_lookup`]).
pub(crate) fn pte_lookup<'l>(
    ptl: &'l PtlGuard<'_>,
    mem: &mut FrameTableMem,
    va: VirtAddr,
    alloc: bool,
) -> Option<Pte<'l>> {
    slot_lookup(ptl, mem, va, 3, alloc)
}

/// Splits the blocks that `[start, end)` cuts (an end inside a block), so
/// a range operation sees only whole blocks (Linux splits the PMD at the
/// edges of mprotect/munmap/madvise ranges).
#[inline(never)]
pub(crate) fn split_blocks_at_edges(
    ptl: &PtlGuard<'_>,
    mm: &MmStruct,
    mem: &mut FrameTableMem,
    start: VirtAddr,
    end: VirtAddr,
) -> Result<(), MmError> {
    if super::huge_memory::pud_order().is_some() {
        let ps = super::huge_memory::pud_size();
        for edge in [start, end] {
            if !edge.is_aligned(ps) {
                split_pud_at(ptl, mm, mem, edge)?;
            }
        }
    }
    let bs = GRANULE.level_size(2);
    for edge in [start, end] {
        if edge.is_aligned(bs) {
            continue;
        }
        if let Some(pmd) = pmd_lookup(ptl, mem, edge, false) {
            let d = pmd.get();
            if matches!(d.kind(2, GRANULE), Kind::Leaf(_)) {
                super::huge_memory::split_huge_pmd(mm, mem, pmd, edge)?;
            }
        }
    }
    Ok(())
}

/// Splits the 1G block around `va`, if there is one.
fn split_pud_at(ptl: &PtlGuard<'_>, mm: &MmStruct, mem: &mut FrameTableMem, va: VirtAddr) -> Result<(), MmError> {
    if let Some(pud) = slot_lookup(ptl, mem, va, 1, false)
        && matches!(pud.get().kind(1, GRANULE), Kind::Leaf(_))
    {
        super::huge_memory::split_huge_pud(mm, mem, pud, va)?;
    }
    Ok(())
}

/// Splits every 1G block in `[start, end)` (fork: a 1G THP is never shared).
fn split_puds_in(
    ptl: &PtlGuard<'_>,
    mm: &MmStruct,
    mem: &mut FrameTableMem,
    start: VirtAddr,
    end: VirtAddr,
) -> Result<(), MmError> {
    if super::huge_memory::pud_order().is_none() {
        return Ok(());
    }
    let mut a = start;
    while let Some((va, _)) = next_block(ptl, mem, a, end, 1) {
        split_pud_at(ptl, mm, mem, va.max(start))?;
        a = va + GRANULE.level_size(1);
    }
    Ok(())
}

/// The first block at `level` (1 or 2) in `[start, end)`: its address and
/// slot. Visits only the entries on the way (empty upper-level entries are
/// skipped whole), so a huge sparse range costs what it maps, not what it
/// spans.
fn next_block<'l>(
    ptl: &'l PtlGuard<'_>,
    mem: &FrameTableMem,
    start: VirtAddr,
    end: VirtAddr,
    level: u32,
) -> Option<(VirtAddr, Pte<'l>)> {
    fn rec<'l>(
        root: Pte<'l>,
        mem: &FrameTableMem,
        at: u32,
        table: PhysAddr,
        start: VirtAddr,
        end: VirtAddr,
        level: u32,
    ) -> Option<(VirtAddr, Pte<'l>)> {
        let g = GRANULE;
        let size = g.level_size(at);
        let mut va = start;
        while va < end {
            let chunk_end = (va.align_down(size) + size).min(end);
            // SAFETY: `table` was reached from this mm's pgd under `ptl`.
            let e = unsafe { entry(root, mem, table, g.index(va.as_u64(), at)) };
            match e.get().kind(at, g) {
                Kind::Leaf(_) if at == level => return Some((va.align_down(size), e)),
                Kind::Table(next) if at < level => {
                    if let Some(b) = rec(root, mem, at + 1, next, va, chunk_end, level) {
                        return Some(b);
                    }
                }
                _ => {}
            }
            va = chunk_end;
        }
        None
    }
    rec(root_entry(ptl, mem), mem, USER_START_LEVEL, ptl.pgd(), start, end, level)
}

/// Calls `f(va, level, run)` for the level-3 entries of `[start, end)` in
/// each level-3 table that exists, as one run per table starting at `va`,
/// and for every level-2 block the range covers whole, as a run of one
/// (Linux's pgd/p4d/pud/pmd range loops down to `*_pte_range`, which
/// steps `pte++` through one table). A block the range cuts is an error:
/// callers split the edges first ([`split_blocks_at_edges`]).
pub(crate) fn for_each_pte<'l, F: FnMut(VirtAddr, u32, PteRun<'l>) -> Result<(), MmError>>(
    ptl: &'l PtlGuard<'_>,
    mem: &FrameTableMem,
    start: VirtAddr,
    end: VirtAddr,
    f: &mut F,
) -> Result<(), MmError> {
    fn rec<'l, F: FnMut(VirtAddr, u32, PteRun<'l>) -> Result<(), MmError>>(
        root: Pte<'l>,
        mem: &FrameTableMem,
        level: u32,
        table: PhysAddr,
        start: VirtAddr,
        end: VirtAddr,
        f: &mut F,
    ) -> Result<(), MmError> {
        let g = GRANULE;
        if level == 3 {
            // `[start, end)` lies in this table (its level-2 entry's span).
            let (first, last) = (g.index(start.as_u64(), 3), g.index((end - 1).as_u64(), 3));
            // SAFETY: `table` was reached from this mm's pgd under `ptl`.
            return f(start, 3, unsafe { entry(root, mem, table, first) }.run(last - first + 1));
        }
        let size = g.level_size(level);
        let mut va = start;
        while va < end {
            let chunk_end = (va.align_down(size) + size).min(end);
            // SAFETY: `table` was reached from this mm's pgd under `ptl`.
            let e = unsafe { entry(root, mem, table, g.index(va.as_u64(), level)) };
            match e.get().kind(level, g) {
                Kind::Table(next) => rec(root, mem, level + 1, next, va, chunk_end, f)?,
                Kind::None => {}
                // A whole block (callers split the edges first).
                Kind::Leaf(_) if level <= 2 && va.is_aligned(size) && chunk_end == va + size => f(va, level, e.run(1))?,
                _ => {
                    return Err(MmError::Inconsistent { addr: va.as_u64(), what: Inconsistency::BlockCut });
                }
            }
            va = chunk_end;
        }
        Ok(())
    }
    rec(root_entry(ptl, mem), mem, USER_START_LEVEL, ptl.pgd(), start, end, f)
}

/// Linux `set_pte_at` into an empty slot: invalid to valid needs no TLBI,
/// only visibility to the table walker (the exception return that retries
/// the access is context-synchronising).
#[inline(always)]
pub(crate) fn set_pte_new(slot: Pte, d: Desc) {
    // The caller found the entry none under the page-table lock, and the
    // MMU never makes an invalid entry valid: a valid one here is a bug.
    if let Err(e) = slot.set_new(d) {
        pte_bug(e);
    }
    crate::arch::aarch64::cpu::publish_tables();
}

/// A cursor refusal where the page-table lock rules it out (a valid entry
/// where the walk found none, a non-permission change in a permission
/// update): a kernel bug, not bad input.
#[cold]
#[inline(never)]
pub(crate) fn pte_bug(e: super::pgtable::MapError) -> ! {
    panic!("page-table cursor refused an edit the page-table lock guarantees: {e:?}")
}

/// Break-before-make for a new output address (Linux `ptep_clear_flush`
/// then `set_pte_at`): invalid, TLBI by VA+ASID (broadcast) and wait, then
/// the new entry. Refused (the old entry stays) if the flush was skipped.
fn set_pte_bbm(mm: &MmStruct, slot: Pte, va: VirtAddr, d: Desc) -> Result<Desc, super::pgtable::MapError> {
    let old = slot.replace(d, &Stage1User { asid: mm.asid() }, &mut KernelFlush, va, PAGE_SIZE)?;
    crate::arch::aarch64::cpu::publish_tables();
    Ok(old)
}

/// Test-only sabotage of one step of the fault path, the `S` of
/// [`handle_mm_fault_sabotaged`] (`test/cursor_tests.rs` runs it). A
/// compile-time choice: [`handle_mm_fault`] is the instance with
/// [`sabotage::NONE`], so the path every real fault takes carries no check.
pub mod sabotage {
    /// The fault path as it is.
    pub const NONE: u8 = 0;
    /// A present entry of an anonymous VMA is taken for none, as by a
    /// fault that read it before another fault installed the page and
    /// skipped Linux's "pte changed under us" recheck under the lock.
    pub const SKIP_NONE_RECHECK: u8 = 1;
    /// `wp_page_reuse`'s change also moves the entry to a copy of its
    /// page, as a reuse mixed up with `wp_page_copy` would.
    pub const REUSE_WITH_COPY_OA: u8 = 2;
}

/// Linux `handle_mm_fault` for a page of a private anonymous VMA. The
/// caller has checked the VMA allows the access ([`vma_access_permitted`]).
pub fn handle_mm_fault(mt: MmTables<'_>, vma: &Vma, addr: VirtAddr, flags: FaultFlags) -> VmFault {
    handle_mm_fault_sabotaged::<{ sabotage::NONE }>(mt, vma, addr, flags)
}

/// [`handle_mm_fault`] with the step `S` ([`sabotage`]) broken on purpose,
/// for the tests that show what catches it.
#[inline(always)]
pub fn handle_mm_fault_sabotaged<const S: u8>(
    mt: MmTables<'_>,
    vma: &Vma,
    addr: VirtAddr,
    flags: FaultFlags,
) -> VmFault {
    let va = addr.align_down(PAGE_SIZE);
    let ptl = mt.mm.page_table_lock_guard();
    let mut mem = mt.mem.lock();
    // Level 1 first (a `thp=1G` VMA), then level 2: an empty entry in a THP
    // range gets a block, a block is handled as a whole (Linux
    // `__handle_mm_fault`).
    // Only a `thp=1G` VMA can hold a 1G block (a VMA keeps its folio
    // order through splits), so other faults skip the extra level.
    if super::huge_memory::pud_order().is_some_and(|o| vma.folio_order >= o)
        && let Some(r) = handle_pud_fault(&ptl, mt.mm, &mut mem, vma, va, flags)
    {
        return r;
    }
    let Some(pmd) = pmd_lookup(&ptl, &mut mem, va, true) else { return VmFault::Oom };
    let pd = pmd.get();
    if pd.0 == 0
        && super::huge_memory::pmd_suitable(vma, va)
        && let Some(r) = super::huge_memory::do_huge_pmd_anonymous_page(pmd, vma, va, flags)
    {
        return r;
    }
    if pd.is_valid() && matches!(pd.kind(2, GRANULE), Kind::Leaf(_)) {
        if flags.write || flags.unshare {
            if flags.write && pd.user_writable() {
                return spurious(mt.mm, pmd, va, 2, true);
            }
            return super::huge_memory::do_huge_pmd_wp_page(mt.mm, &mut mem, pmd, vma, va, pd, flags);
        }
        return if pd.perms().el0 { spurious(mt.mm, pmd, va, 2, false) } else { VmFault::Sigsegv };
    }
    // The level-3 table under it (Linux `__pte_alloc` when there is none).
    let table = match pd.kind(2, GRANULE) {
        Kind::Table(t) => t,
        Kind::None => {
            let Some(t) = mem.alloc_table() else { return VmFault::Oom };
            set_pte_new(pmd, Desc::table(t));
            t
        }
        _ => return VmFault::Sigsegv,
    };
    // SAFETY: `table` was reached from this mm's pgd under `ptl`.
    let slot = unsafe { entry(pmd, &mem, table, GRANULE.index(va.as_u64(), 3)) };
    let desc = slot.get();
    // [`sabotage::SKIP_NONE_RECHECK`]: a present entry of an anon VMA
    // taken for none.
    let skip_recheck = S == sabotage::SKIP_NONE_RECHECK && vma.file == 0 && !vma.flags.contains(VmFlags::PFNMAP);
    if desc.0 == 0 || skip_recheck {
        return do_pte_missing(slot, vma, va, flags, false);
    }
    if !desc.is_valid() {
        return match desc.kind(3, GRANULE) {
            Kind::NonPresent(NonPresent::Marker(m)) => {
                super::userfaultfd::handle_pte_marker(mt.mm, slot, vma, va, m, flags)
            }
            Kind::NonPresent(NonPresent::Migration { .. }) => {
                drop(mem);
                drop(ptl);
                super::migrate::migration_entry_wait(mt, va, desc)
            }
            _ => super::swap_state::do_swap_page(slot, vma, va, flags, desc),
        };
    }
    if flags.write || flags.unshare {
        if flags.write && desc.user_writable() {
            return spurious(mt.mm, slot, va, 3, true);
        }
        do_wp_page::<S>(mt.mm, slot, vma, va, desc, flags)
    } else if desc.perms().el0 {
        spurious(mt.mm, slot, va, 3, false)
    } else {
        VmFault::Sigsegv
    }
}

/// Linux `do_pte_missing`: a fault on a none entry, or a read of a
/// uffd-wp marker (`uffd_wp`, Linux `vmf_orig_pte_uffd_wp`), fills it from
/// the file, or with anonymous memory. The new entry replaces the marker
/// in one store, read-only with the uffd-wp bit from the start; a fill
/// that fails leaves the marker where it was.
#[inline(always)]
pub(crate) fn do_pte_missing(slot: Pte, vma: &Vma, va: VirtAddr, flags: FaultFlags, uffd_wp: bool) -> VmFault {
    if vma.file != 0 {
        return do_fault(slot, vma, va, flags, uffd_wp);
    }
    if vma.flags.contains(VmFlags::PFNMAP) {
        return VmFault::Sigsegv; // no fault handler: what remap_pfn_range mapped is all there is
    }
    do_anonymous_page(slot, vma, va, flags, uffd_wp)
}

/// The level-1 part of [`handle_mm_fault`] in a `thp=1G` VMA: a 1G block
/// for a write to an empty 1G range, or the fault on an existing one.
/// None: go on at level 2.
#[cold]
#[inline(never)]
fn handle_pud_fault(
    ptl: &PtlGuard<'_>,
    mm: &MmStruct,
    mem: &mut FrameTableMem,
    vma: &Vma,
    va: VirtAddr,
    flags: FaultFlags,
) -> Option<VmFault> {
    let Some(pud) = slot_lookup(ptl, mem, va, 1, true) else { return Some(VmFault::Oom) };
    let d = pud.get();
    if d.0 == 0
        && super::huge_memory::pud_suitable(vma, va)
        && let Some(r) = super::huge_memory::do_huge_pud_anonymous_page(pud, vma, va, flags)
    {
        return Some(r);
    }
    if d.is_valid() && matches!(d.kind(1, GRANULE), Kind::Leaf(_)) {
        // Always exclusive (see `do_huge_pud_anonymous_page`): a write
        // reuses it, anything else is spurious or not allowed.
        if flags.write && !d.user_writable() {
            if super::huge_memory::split_huge_pud(mm, mem, pud, va).is_err() {
                return Some(VmFault::Oom);
            }
            // The retried access finds the 2M block.
            return Some(VmFault::Done);
        }
        return Some(if d.perms().el0 { spurious(mm, pud, va, 1, flags.write) } else { VmFault::Sigsegv });
    }
    None
}

/// The entry already allows the access. If its access flag is clear this
/// was an access-flag fault: set it (Linux `pte_mkyoung` through
/// `ptep_set_access_flags`; an entry with AF clear is never cached, so no
/// TLBI), on the whole contiguous run so its entries stay alike.
/// Otherwise another path fixed it or a stale TLB entry remains: drop it.
fn spurious(mm: &MmStruct, slot: Pte, va: VirtAddr, level: u32, write: bool) -> VmFault {
    let d = slot.get();
    // A write to a writable-clean entry (DBM, AP[2] set) that the MMU did
    // not dirty itself: software does it (Linux `pte_mkdirty` through
    // `ptep_set_access_flags`), or the access would fault forever.
    let dirty = write && d.dbm() && d.perms().read_only;
    if !d.af() || dirty {
        let (set, clear) = (AF_BIT | if dirty { SW_DIRTY_BIT } else { 0 }, if dirty { AP_RDONLY } else { 0 });
        // AF, SW dirty and AP[2] are permission bits: never refused.
        let update = |s: Pte| {
            let _ = s.update(set, clear);
        };
        if level == 3 && d.0 & CONT_BIT != 0 {
            let first = slot_at(slot, va, va.align_down(cont_size()));
            for i in 0..GRANULE.contiguous_entries(3) {
                update(first.sibling(first.index() + i));
            }
        } else {
            update(slot);
        }
        crate::arch::aarch64::cpu::publish_tables();
        if dirty {
            // The read-only translation may be cached: drop it here.
            crate::arch::aarch64::cpu::tlbi_page_local(va.as_u64(), mm.asid());
        }
        return VmFault::Done;
    }
    crate::arch::aarch64::cpu::tlbi_page_local(va.as_u64(), mm.asid());
    VmFault::Done
}

/// Linux `do_anonymous_page`: a read maps the shared zero page read-only
/// (special: no refcount, no mapcount); a write gets a new zeroed folio,
/// exclusive to this mm. `set_new` refuses a present entry: that is
/// Linux's "pte changed under us" recheck (`vmf_pte_changed`) at the point
/// of the make, and the fault backs off with nothing taken (the access
/// retries and finds the entry).
fn do_anonymous_page(slot: Pte, vma: &Vma, va: VirtAddr, flags: FaultFlags, uffd_wp: bool) -> VmFault {
    // A write to a uffd-wp marker raises the event before any fill.
    debug_assert!(!(flags.write && uffd_wp), "a write fills no uffd-wp marker");
    if !flags.write {
        let mut d = Desc::leaf(page::zero_page(), 3, LeafAttrs { special: true, ..vm_page_prot(vma) });
        if uffd_wp {
            d = Desc(d.wrprotect().0 | UFFD_WP_BIT);
        }
        if slot.set_new(d).is_err() {
            return VmFault::Done;
        }
        crate::arch::aarch64::cpu::publish_tables();
        return VmFault::Done;
    }
    let Some((folio, base)) = alloc_anon_folio(slot, vma, va) else { return VmFault::Oom };
    // Linux `folio_ref_add(folio, nr - 1)`: one reference per mapping.
    let nr = folio.nr_pages();
    page::folio_ref_add(folio, nr as u32 - 1);
    let cont = folio.size() >= cont_size();
    let first = slot_at(slot, va, base);
    let proto = maybe_mkwrite(Desc::leaf(folio.pa(), 3, vm_page_prot(vma)), vma).mkdirty();
    super::rmap::folio_set_anon(folio, vma, base);
    for i in 0..nr {
        folio_add_new_anon_rmap_pte(folio.page(i));
        let mut d = Desc(proto.0 + i * PAGE_SIZE);
        if cont {
            d = Desc(d.0 | CONT_BIT);
        }
        if let Err(e) = first.sibling(first.index() + i as usize).set_new(d) {
            return anon_fault_back_off(folio, e);
        }
    }
    crate::arch::aarch64::cpu::publish_tables();
    VmFault::Done
}

/// `do_anonymous_page` found its entry present when it made it: the new
/// folio goes and the access retries (Linux `vmf_pte_changed`).
#[cold]
#[inline(never)]
fn anon_fault_back_off(folio: page::Folio, e: super::pgtable::MapError) -> VmFault {
    // `alloc_anon_folio` found a large folio's range none under the lock;
    // only an order-0 folio's one entry can be present.
    if folio.nr_pages() != 1 {
        pte_bug(e);
    }
    page::folio_remove_rmap_pte(folio.page(0));
    folio.put();
    VmFault::Done
}

/// Linux `do_fault` for a shmem file VMA, with the page from the page
/// cache (`shmem_fault`): a read, or any access to a shared mapping, maps
/// the cached page itself (`do_read_fault` / `do_shared_fault`; writable
/// at once in a shared writable mapping); a write to a private mapping
/// gets an exclusive anon copy (`do_cow_fault`), and the file is unchanged.
/// With `uffd_wp` (a read of a uffd-wp marker) the entry is read-only with
/// the bit (Linux `set_pte_range`).
fn do_fault(slot: Pte, vma: &Vma, va: VirtAddr, flags: FaultFlags, uffd_wp: bool) -> VmFault {
    let Some(file) = super::shmem::get(vma.file) else { return VmFault::Sigsegv };
    let pgoff = vma.pgoff_of(va);
    if pgoff >= file.size() / PAGE_SIZE {
        return VmFault::Sigsegv; // Linux: SIGBUS past the end of the file
    }
    let Some(cached) = file.get_folio(pgoff) else { return VmFault::Oom };
    let pa = cached.pa();
    let shared = vma.flags.contains(VmFlags::SHARED);
    if flags.write && !shared {
        let new = page::folio_alloc_anon_nozero(0);
        if let Some(new) = new {
            copy_page(new.pa(), pa);
        }
        cached.put();
        let Some(new) = new else { return VmFault::Oom };
        folio_add_new_anon_rmap_pte(new.head());
        super::rmap::folio_set_anon(new, vma, va);
        set_pte_new(slot, maybe_mkwrite(Desc::leaf(new.pa(), 3, vm_page_prot(vma)), vma).mkdirty());
        return VmFault::Done;
    }
    // The lookup's reference is the mapping's.
    page::folio_add_file_rmap_pte(cached.head());
    let mut d = Desc::leaf(pa, 3, vm_page_prot(vma));
    if shared {
        d = maybe_mkwrite(d, vma);
        if flags.write {
            d = d.mkdirty();
        }
    }
    if uffd_wp {
        d = Desc(d.wrprotect().0 | UFFD_WP_BIT);
    }
    set_pte_new(slot, d);
    VmFault::Done
}

/// Bytes one contiguous run of level-3 entries maps (64K with 4K pages,
/// 2M with 16K and 64K pages).
pub fn cont_size() -> u64 {
    GRANULE.contiguous_entries(3) as u64 * PAGE_SIZE
}

/// The largest folio order a mapping may ask for: one level-2 block's
/// worth (2M with 4K pages, 32M with 16K, 512M with 64K).
pub fn max_folio_order() -> u8 {
    (GRANULE.level_size(2) / PAGE_SIZE).trailing_zeros() as u8
}

/// The entry of `to` in the same level-3 table as `slot` (the entry of `va`).
fn slot_at(slot: Pte, va: VirtAddr, to: VirtAddr) -> Pte {
    let table_span = GRANULE.level_size(2);
    assert!(va.align_down(table_span) == to.align_down(table_span), "slot_at across tables");
    slot.sibling(GRANULE.index(to.as_u64(), 3))
}

/// Linux `alloc_anon_folio` (mTHP): the largest order up to the VMA's
/// whose naturally aligned range lies inside the VMA and maps nothing
/// yet, falling back to smaller orders when memory is fragmented.
/// Returns the folio and the VA its first page goes to.
fn alloc_anon_folio(slot: Pte, vma: &Vma, va: VirtAddr) -> Option<(page::Folio, VirtAddr)> {
    // Page entries of one level-3 table: at most a level-2 block's worth.
    let max = if vma.flags.contains(VmFlags::NOHUGEPAGE) { 0 } else { vma.folio_order.min(max_folio_order()) as u64 };
    for order in (1..=max).rev() {
        let size = PAGE_SIZE << order;
        let base = va.align_down(size);
        if base < vma.start || base + size > vma.end {
            continue;
        }
        let first = slot_at(slot, va, base);
        // The range is inside one level-3 table (size <= level-2 size).
        let none = (0..(1usize << order)).all(|i| first.sibling(first.index() + i).get().0 == 0);
        if !none {
            continue;
        }
        if let Some(f) = page::folio_alloc_anon(order as u32) {
            return Some((f, base));
        }
    }
    page::folio_alloc_anon(0).map(|f| (f, va))
}

/// Clears the contiguous bit on the whole run holding `va` with
/// break-before-make (Linux `contpte_convert` when unfolding): every entry
/// invalid, TLBI of the run, then the same entries without the bit. Needed
/// before any change that would leave the run's entries inconsistent.
#[inline(never)]
#[cold]
pub(crate) fn unfold_run(mm: &MmStruct, slot: Pte, va: VirtAddr) -> Result<(), super::pgtable::MapError> {
    if slot.get().0 & CONT_BIT == 0 {
        return Ok(());
    }
    let n = GRANULE.contiguous_entries(3);
    let run_va = va.align_down(cont_size());
    let mut old = [0u64; 128];
    let regime = Stage1User { asid: mm.asid() };
    slot_at(slot, va, run_va).unfold(n, &regime, &mut KernelFlush, run_va, cont_size(), &mut old)?;
    crate::arch::aarch64::cpu::publish_tables();
    Ok(())
}

/// Linux `do_wp_page`: a write (or unshare) fault on a present read-only
/// entry of a VMA that allows it.
fn do_wp_page<const S: u8>(
    mm: &MmStruct,
    slot: Pte,
    vma: &Vma,
    va: VirtAddr,
    desc: Desc,
    flags: FaultFlags,
) -> VmFault {
    // Linux `userfaultfd_pte_wp`: the write raises a uffd event first.
    if flags.write && desc.0 & UFFD_WP_BIT != 0 {
        return super::userfaultfd::do_wp_userfault(mm, slot, vma, va);
    }
    // One entry of a contiguous run is about to change on its own.
    if desc.0 & CONT_BIT != 0 && !(flags.unshare && desc.user_writable()) && unfold_run(mm, slot, va).is_err() {
        return VmFault::Done; // refused (the BBM tests): the run is unchanged, retry
    }
    let desc = Desc(desc.0 & !CONT_BIT);
    let pa = desc.output_address(PAGE_SIZE);
    if desc.special() {
        if vma.flags.contains(VmFlags::SHARED) {
            // Linux `wp_pfn_shared`: only the driver's pfn_mkwrite may make
            // it writable. pagelab has no driver behind these mappings, so
            // the write is refused - never a private copy in a shared
            // mapping, never a writable zero page.
            return VmFault::Sigsegv;
        }
        if page::is_zero_pfn(pa) {
            return wp_page_copy(mm, slot, vma, va, desc, None, flags);
        }
        // A private PFN mapping: the write gets an anon copy of the PFN's
        // memory (Linux wp_page_copy with no struct page as source).
        if vma.flags.contains(VmFlags::PFNMAP) && !vma.flags.contains(VmFlags::SHARED) && pfn_in_pool(pa) {
            return wp_page_copy_from(mm, slot, vma, va, desc, Some(pa), None, flags);
        }
        return VmFault::Sigsegv;
    }
    let Some(pg) = page::phys_to_page(pa) else { return VmFault::Sigsegv };
    let Some(folio) = pg.folio() else { return VmFault::Sigsegv };
    if !folio.is_anon() && vma.flags.contains(VmFlags::SHARED) {
        // Linux `wp_page_shared`: a shared file page is written in place.
        return wp_page_reuse::<S>(mm, slot, vma, va, flags);
    }
    if folio.is_anon() {
        if pg.anon_exclusive() {
            return wp_page_reuse::<S>(mm, slot, vma, va, flags);
        }
        // Linux `wp_can_reuse_anon_folio`: a small folio nobody else holds
        // a reference to (no other mapping, no GUP reference) is ours.
        if !folio.is_large() && folio.refcount() == 1 && folio.mapcount() == 1 {
            pg.set_anon_exclusive();
            return wp_page_reuse::<S>(mm, slot, vma, va, flags);
        }
    }
    wp_page_copy(mm, slot, vma, va, desc, Some(pg), flags)
}

/// Linux `wp_page_reuse`: the page stays; the entry becomes writable
/// (a permission-only change: no break-before-make, but the old read-only
/// translation must leave the TLB).
fn wp_page_reuse<const S: u8>(mm: &MmStruct, slot: Pte, vma: &Vma, va: VirtAddr, flags: FaultFlags) -> VmFault {
    if flags.unshare {
        return VmFault::Done; // exclusive already; R/O stays R/O
    }
    // Compare-and-swap on the current value: a young or dirty bit the MMU
    // set since `desc` was read stays.
    let change = |d| maybe_mkwrite(d, vma).mkdirty().mkyoung();
    let old = if S == sabotage::REUSE_WITH_COPY_OA {
        match reuse_moving_to_copy(slot, change) {
            Some(old) => old,
            None => return VmFault::Done,
        }
    } else {
        match slot.modify(change) {
            Ok((old, _)) => old,
            Err(e) => pte_bug(e),
        }
    };
    if old.is_valid() {
        KernelFlush.flush(va, PAGE_SIZE, Some(mm.asid()), true);
    }
    VmFault::Done
}

/// [`wp_page_reuse`]'s change under [`sabotage::REUSE_WITH_COPY_OA`]: `change`
/// and the output address of a new copy of the page, as a reuse mixed up
/// with `wp_page_copy` would make it. Returns the old entry if the change
/// went through; `None` if it was refused (not a permission change: the
/// entry is unchanged, the copy goes, the access retries) or there was no
/// memory for the copy.
#[cold]
#[inline(never)]
fn reuse_moving_to_copy(slot: Pte, change: impl Fn(Desc) -> Desc) -> Option<Desc> {
    let copy = page::folio_alloc_anon_nozero(0)?;
    copy_page(copy.pa(), slot.get().output_address(PAGE_SIZE));
    match slot.modify(|d| Desc((change(d).0 & !OA_MASK) | copy.pa().as_u64())) {
        Ok((old, _)) => Some(old),
        Err(_) => {
            copy.put();
            None
        }
    }
}

/// Linux `wp_page_copy`: a new exclusive page with the old contents (or
/// zeroes for the zero page) replaces the entry - a change of output
/// address, so break-before-make - and the old page loses a mapping and a
/// reference.
fn wp_page_copy(
    mm: &MmStruct,
    slot: Pte,
    vma: &Vma,
    va: VirtAddr,
    desc: Desc,
    old: Option<&'static page::Page>,
    flags: FaultFlags,
) -> VmFault {
    wp_page_copy_from(mm, slot, vma, va, desc, old.map(|o| o.pa()), old, flags)
}

fn pfn_in_pool(pa: PhysAddr) -> bool {
    pfn_pool().is_some_and(|(s, e)| pa >= s && pa < e)
}

/// `wp_page_copy` with the copy's source: `src` (None: zeroes) and the old
/// page's metadata when it has some (not for PFN mappings).
#[allow(clippy::too_many_arguments)]
fn wp_page_copy_from(
    mm: &MmStruct,
    slot: Pte,
    vma: &Vma,
    va: VirtAddr,
    desc: Desc,
    src: Option<PhysAddr>,
    old: Option<&'static page::Page>,
    flags: FaultFlags,
) -> VmFault {
    let new = match src {
        None => page::folio_alloc_anon(0),
        Some(s) => page::folio_alloc_anon_nozero(0).inspect(|n| copy_page(n.pa(), s)),
    };
    let Some(new) = new else { return VmFault::Oom };
    folio_add_new_anon_rmap_pte(new.head());
    super::rmap::folio_set_anon(new, vma, va);
    let mut d = Desc::leaf(new.pa(), 3, vm_page_prot(vma));
    // Keep the access bits the entry had (EL0 access) and uffd-wp.
    d = Desc((d.0 & !(AP_EL0 | AP_RDONLY)) | (desc.0 & (AP_EL0 | AP_RDONLY)) | (desc.0 & UFFD_WP_BIT));
    d = d.wrprotect();
    if !flags.unshare {
        d = maybe_mkwrite(d, vma).mkdirty();
    }
    if set_pte_bbm(mm, slot, va, d).is_err() {
        // Refused (the BBM tests): the old entry stays; the access retries.
        put_mapped_page(new.pa());
        return VmFault::Done;
    }
    if let Some(o) = old {
        folio_remove_rmap_pte(o);
        o.folio().expect("old page lost its folio").put();
    }
    VmFault::Done
}

/// Everything of [`copy_page_range`]'s per-entry work but its common case:
/// blocks, special entries, early copies of maybe-pinned pages, and the
/// first entry of each child table (found or allocated here). Entry `i`
/// of `srun` (holding `desc`, at `va`) goes to entry `i` of `drun`, the
/// child's run over the same addresses.
#[inline(never)]
#[allow(clippy::too_many_arguments)]
fn copy_pte_slow<'d>(
    dptl: &'d PtlGuard<'_>,
    dmem: &mut FrameTableMem,
    va: VirtAddr,
    level: u32,
    srun: PteRun,
    i: usize,
    desc: Desc,
    drun: &mut Option<PteRun<'d>>,
    wrprotected: &mut bool,
    broken_runs: &mut Vec<VirtAddr>,
    cow: bool,
) -> Result<(), MmError> {
    if level == 2 {
        *wrprotected |= copy_block(dptl, dmem, va, srun.pte(i), desc)?;
        return Ok(());
    }
    let child = if !desc.is_valid() {
        match desc.kind(3, GRANULE) {
            // Linux `copy_nonpresent_pte`: a PTE marker is copied as it is.
            Kind::NonPresent(NonPresent::Marker(_)) => desc,
            Kind::NonPresent(NonPresent::Migration { .. }) => {
                super::migrate::copy_nonpresent_pte(srun.pte(i), desc, cow).ok_or(MmError::NotPresent { addr: va })?
            }
            _ => super::swap_state::copy_nonpresent_pte(srun.pte(i), va, desc)?,
        }
    } else if desc.special() {
        desc
    } else {
        let pa = desc.output_address(PAGE_SIZE);
        let pg = page::phys_to_page(pa)
            .ok_or(MmError::Inconsistent { addr: va.as_u64(), what: Inconsistency::OutsideRam })?;
        let folio = pg.folio().expect("mapped anon page without a folio");
        if page::folio_try_dup_anon_rmap_pte(folio, pg) {
            // CAS: the child gets the parent's entry as the swap saw it,
            // hardware dirtiness included (Linux `ptep_set_wrprotect`).
            let (old, ro) = srun.set_wrprotect_from(i, desc);
            *wrprotected |= ro != old;
            ro
        } else {
            // Maybe pinned and exclusive: the child gets its own copy now.
            // Room in the list first: nothing to undo if it fails.
            if desc.0 & CONT_BIT != 0 {
                try_reserve(broken_runs, 1)?;
            }
            let new = page::folio_alloc_anon_nozero(0).ok_or(MmError::NoMemory(Need::Frame))?;
            copy_page(new.pa(), pa);
            folio_add_new_anon_rmap_pte(new.head());
            super::rmap::folio_set_anon_id(new, folio.mapping(), va);
            if desc.0 & CONT_BIT != 0 {
                broken_runs.push(va.align_down(cont_size()));
            }
            Desc((desc.0 & !OA_MASK & !CONT_BIT) | new.pa().as_u64())
        }
    };
    let dslot = match *drun {
        Some(d) => d.pte(i),
        None => match pte_lookup(dptl, dmem, va, true) {
            Some(s) => {
                // The child's table covers the same addresses as the parent's.
                let first = s.sibling(s.index() - i);
                *drun = Some(first.run(srun.len()));
                s
            }
            None => {
                if !child.is_valid() {
                    super::swap_state::zap_nonpresent_pte(child);
                } else if !child.special() {
                    put_mapped_page(child.output_address(PAGE_SIZE));
                }
                return Err(MmError::NoMemory(Need::Table));
            }
        },
    };
    // Linux `pte_mkold` for the child: its first access sets the flag.
    dslot.set_new_unused(if child.is_valid() { child.mkold() } else { child })?;
    Ok(())
}

/// Linux `copy_page_range` for one private anonymous (or special) VMA at
/// fork. The parent's writable anon entries become read-only (COW) and
/// lose `PageAnonExclusive`; exclusive pages of maybe-pinned folios are
/// copied for the child at once (Linux `copy_present_page`); special
/// entries (zero page, PFN) are copied as they are. One TLB flush of the
/// parent's range at the end (Linux flushes the whole mm in `dup_mmap`).
/// uffd-wp bits and markers are copied as they are (the caller drops them
/// when the child does not keep them: [`super::userfaultfd::dup_userfaultfd_vma`]).
pub fn copy_page_range(src: MmTables<'_>, dst: MmTables<'_>, vma: &Vma) -> Result<(), MmError> {
    let sptl = src.mm.page_table_lock_guard();
    // The child has never run, so nothing else takes its lock; the child's
    // entries borrow it as the parent's borrow the parent's.
    let dptl = dst.mm.page_table_lock_guard();
    let mut smem = src.mem.lock();
    let mut dmem = dst.mem.lock();
    // A 1G THP is never shared: 2M THPs from here on.
    split_puds_in(&sptl, src.mm, &mut smem, vma.start, vma.end)?;
    // Blocks of maybe-pinned folios with exclusive pages cannot be shared:
    // split them in the parent first, then copy page by page (Linux:
    // copy_huge_pmd fails with -EAGAIN and the PTE path copies).
    let mut pinned_blocks: Vec<VirtAddr> = Vec::new();
    let mut a = vma.start;
    while let Some((va, slot)) = next_block(&sptl, &smem, a, vma.end, 2) {
        a = va + GRANULE.level_size(2);
        let d = slot.get();
        if !d.special() {
            let f = page::phys_to_page(d.output_address(GRANULE.level_size(2))).and_then(|p| p.folio());
            if f.is_some_and(|f| f.maybe_dma_pinned() && (0..f.nr_pages()).any(|i| f.page(i).anon_exclusive())) {
                try_reserve(&mut pinned_blocks, 1)?;
                pinned_blocks.push(va);
            }
        }
    }
    for va in pinned_blocks {
        if let Some(pmd) = pmd_lookup(&sptl, &mut smem, va, false) {
            super::huge_memory::split_huge_pmd(src.mm, &mut smem, pmd, va)?;
        }
    }
    // Linux raw_write_seqcount_begin(&src_mm->write_protect_seq): GUP-fast
    // pins taken meanwhile are undone and retried on the slow path.
    src.mm.write_protect_seq.fetch_add(1, Ordering::AcqRel);
    let mut wrprotected = false;
    // Child runs that got an early copy: no longer one contiguous range.
    let mut broken_runs: Vec<VirtAddr> = Vec::new();
    let mut failed_at = None;
    let cow = is_cow_mapping(vma.flags);
    // Linux `copy_pte_range`: one pass over each of the parent's level-3
    // tables, into the child's table for the same addresses.
    let r = for_each_pte(&sptl, &smem, vma.start, vma.end, &mut |start, level, srun| {
        // Found at the first entry to copy (a table with nothing to copy
        // gets no child table).
        let mut drun: Option<PteRun> = None;
        for i in 0..srun.len() {
            let desc = srun.get(i);
            if desc.0 == 0 {
                continue;
            }
            // The common case, kept small so it stays in the loop: a
            // present page shared COW (no early copy) into the child's
            // table already found.
            if level == 3
                && desc.is_valid()
                && !desc.special()
                && let Some(d) = drun
                && let Some(pg) = page::phys_to_page(desc.output_address(PAGE_SIZE))
                && let Some(folio) = pg.folio()
                && page::folio_try_dup_anon_rmap_pte(folio, pg)
            {
                // CAS from the value just read, compared whole: a
                // writable-clean entry (DBM) loses DBM too, and a dirty bit
                // the MMU set meanwhile reaches the child.
                let (old, ro) = srun.set_wrprotect_from(i, desc);
                wrprotected |= ro != old;
                // Linux `pte_mkold` for the child: its first access sets the flag.
                if let Err(e) = d.pte(i).set_new_unused(ro.mkold()) {
                    pte_bug(e);
                }
                continue;
            }
            let va = start + i as u64 * PAGE_SIZE;
            copy_pte_slow(
                &dptl,
                &mut dmem,
                va,
                level,
                srun,
                i,
                desc,
                &mut drun,
                &mut wrprotected,
                &mut broken_runs,
                cow,
            )
            .inspect_err(|_| failed_at = Some(va))?;
        }
        Ok(())
    });
    // A failure inside a contiguous run leaves the parent's run half
    // write-protected: entries that must agree do not. Unfold it.
    if let Some(va) = failed_at
        && let Some(slot) = pte_lookup(&sptl, &mut smem, va, false)
    {
        // Best effort on the error path: only the BBM tests make it fail.
        let _ = unfold_run(src.mm, slot, va);
    }
    // The parent's write-protections must reach the TLBs before the child
    // (or the parent) writes through a stale writable entry.
    if wrprotected && !skip_perm_flush() {
        KernelFlush.flush(vma.start, vma.end - vma.start, Some(src.mm.asid()), true);
    }
    src.mm.write_protect_seq.fetch_add(1, Ordering::AcqRel);
    // The child has never run (no TLB entries): plain writes suffice.
    for run in broken_runs {
        for i in 0..GRANULE.contiguous_entries(3) as u64 {
            if let Some(sl) = pte_lookup(&dptl, &mut dmem, run + i * PAGE_SIZE, false) {
                // Never run, so never cached: CONT may go without BBM.
                sl.clear_cont_unused();
            }
        }
    }
    crate::arch::aarch64::cpu::publish_tables();
    r
}

/// fork of one block entry: the child gets the same (write-protected)
/// block. Returns whether the parent's entry was write-protected.
#[inline(never)]
fn copy_block(
    dptl: &PtlGuard<'_>,
    dmem: &mut FrameTableMem,
    va: VirtAddr,
    sslot: Pte,
    desc: Desc,
) -> Result<bool, MmError> {
    let child = super::huge_memory::copy_huge_pmd(sslot, desc)
        .ok_or(MmError::Inconsistent { addr: va.as_u64(), what: Inconsistency::PinnedBlock })?;
    let Some(dpmd) = pmd_lookup(dptl, dmem, va, true) else {
        if !child.special() {
            super::huge_memory::put_mapped_block(child.output_address(GRANULE.level_size(2)));
        }
        return Err(MmError::NoMemory(Need::Table));
    };
    dpmd.set_new_unused(child.mkold())?;
    Ok(child != desc)
}

/// Whether every page of the folio a block maps is `PageAnonExclusive`.
#[inline(never)]
fn block_all_exclusive(d: Desc) -> bool {
    page::phys_to_page(d.output_address(GRANULE.level_size(2)))
        .and_then(|p| p.folio())
        .is_some_and(|f| (0..f.nr_pages()).all(|i| f.page(i).anon_exclusive()))
}

/// Linux `ZAP_FLAG_DROP_MARKER`: the zap drops uffd-wp state for good (the
/// whole VMA goes away, or the pages leave the file under the page lock).
pub const ZAP_FLAG_DROP_MARKER: u32 = 1 << 0;

/// Linux `struct zap_details`, the part pagelab has: the flags, and the
/// VMA a single-VMA zap works in (`zap_page_range_single`), which says
/// whether write-protected entries leave uffd-wp markers behind.
#[derive(Clone, Copy, Debug, Default)]
pub struct ZapDetails<'a> {
    pub zap_flags: u32,
    pub vma: Option<&'a Vma>,
}

/// The zap side of munmap/madvise(DONTNEED)/exit: removes every entry in
/// `[va, va+len)` with BBM and the TLB flush, frees the tables left empty
/// and only then drops the pages' mappings and references. On a
/// file-backed uffd-wp VMA without [`ZAP_FLAG_DROP_MARKER`] a
/// write-protected entry becomes a uffd-wp marker and markers stay
/// ([`super::userfaultfd::zap_keeps_wp`]).
pub fn zap_page_range(mt: MmTables<'_>, va: VirtAddr, len: u64, details: &ZapDetails<'_>) -> Result<(), MmError> {
    let ptl = mt.mm.page_table_lock_guard();
    let mut mem = mt.mem.lock();
    split_blocks_at_edges(&ptl, mt.mm, &mut mem, va, va + len)?;
    // A contiguous run cut by either end of the range loses its bit first.
    for edge in [va, va + len] {
        if !edge.is_aligned(cont_size()) {
            let a = if edge == va { va } else { edge - PAGE_SIZE };
            if let Some(slot) = pte_lookup(&ptl, &mut mem, a, false) {
                unfold_run(mt.mm, slot, a)?;
            }
        }
    }
    // Linux `tlb_gather_mmu`: every entry cleared and gathered, the tables
    // the range covers whole unlinked, then `tlb_finish_mmu`: the flush -
    // non-leaf if a table went - and only after it the tables and pages go
    // back (also whenever the fixed batch fills up on the way).
    let mut tlb = MmuGather::new(&ptl, mt.mm.asid());
    let root = root_entry(&ptl, &mem);
    let keep_wp = super::userfaultfd::zap_keeps_wp(details);
    clear_range(root, &mut mem, USER_START_LEVEL, ptl.pgd(), va, va + len, &mut tlb, keep_wp);
    tlb.finish(&mut mem);
    Ok(())
}

/// Linux `exit_mmap`'s `unmap_vmas` and `free_pgtables` under
/// `tlb_gather_mmu_fullmm`: clears the whole user half of `mm` (not just
/// its VMAs: munmap leaves empty tables behind where a range did not cover
/// a whole table) and frees every table below the root, each page and
/// table only after a flush of the ASID. Allocates nothing. The caller has
/// switched every CPU away from `mm` and frees the root.
pub fn exit_mmap(ptl: &PtlGuard<'_>, mm: &MmStruct, mem: &mut FrameTableMem) {
    let mut tlb = MmuGather::new_fullmm(ptl, mm.asid());
    let root = root_entry(ptl, mem);
    let top = VirtAddr::new(crate::arch::aarch64::regs::USER_TOP);
    clear_range(root, mem, USER_START_LEVEL, ptl.pgd(), VirtAddr::new(0), top, &mut tlb, false);
    tlb.finish(mem);
}

/// Clears every entry of `[start, end)` below `table`, gathering what the
/// valid ones mapped (special entries - the agent, the zero page - hold no
/// references), and unlinks the child tables the range covers completely
/// and clears the blocks it covers (the caller split those it cuts).
/// `keep_wp`: uffd-wp state stays as markers, so tables stay linked.
#[allow(clippy::too_many_arguments)]
fn clear_range(
    root: Pte<'_>,
    mem: &mut FrameTableMem,
    level: u32,
    table: PhysAddr,
    start: VirtAddr,
    end: VirtAddr,
    tlb: &mut MmuGather<'_>,
    keep_wp: bool,
) {
    let g = GRANULE;
    if level == 3 {
        // `[start, end)` lies in this table (its level-2 entry's span).
        let (first, last) = (g.index(start.as_u64(), 3), g.index((end - 1).as_u64(), 3));
        // SAFETY: `table` was reached from this mm's pgd under `ptl`.
        let run = unsafe { entry(root, mem, table, first) }.run(last - first + 1);
        // Two copies: the common one has no uffd-wp test in its loop.
        if keep_wp {
            zap_pte_range::<true>(run, start, tlb, mem);
        } else {
            zap_pte_range::<false>(run, start, tlb, mem);
        }
        return;
    }
    let size = g.level_size(level);
    let mut va = start;
    while va < end {
        let entry_va = va.align_down(size);
        let chunk_end = (entry_va + size).min(end);
        // SAFETY: `table` was reached from this mm's pgd under `ptl`.
        let e = unsafe { entry(root, mem, table, g.index(va.as_u64(), level)) };
        match e.get().kind(level, g) {
            // A block the range covers whole (the edges were split).
            Kind::Leaf(_) => {
                let old = e.get_and_clear();
                if old.is_valid() {
                    tlb.flush_range(entry_va, entry_va + size);
                    if !old.special() {
                        tlb.remove_block(mem, old.output_address(size));
                    }
                }
            }
            Kind::Table(next) => {
                clear_range(root, mem, level + 1, next, va, chunk_end, tlb, keep_wp);
                if va == entry_va && chunk_end == entry_va + size && !keep_wp {
                    // Unlinked before it joins the batch, which may free it at once.
                    e.get_and_clear();
                    tlb.remove_table(mem, next, entry_va, entry_va + size);
                }
            }
            _ => {}
        }
        va = chunk_end;
    }
}

/// Linux `zap_pte_range`: clears the level-3 `run` starting at `va`,
/// each entry with an atomic swap, and gathers the pages. The flush range
/// is given once, from the first valid entry to the run's end, before that
/// entry's page joins the batch, and again after a batch that fills up
/// mid-run went (its flush emptied the range), so every flush covers the
/// entries cleared before it. `KEEP_WP`: Linux `zap_install_uffd_wp_if_needed`.
#[inline(always)]
fn zap_pte_range<const KEEP_WP: bool>(run: PteRun<'_>, va: VirtAddr, tlb: &mut MmuGather<'_>, mem: &mut FrameTableMem) {
    let mut in_range = false;
    let end = va + run.len() as u64 * PAGE_SIZE;
    run.get_and_clear_each(|i, old| {
        if KEEP_WP {
            super::userfaultfd::zap_install_uffd_wp_if_needed(run.pte(i), old);
        }
        if !old.is_valid() {
            // get_and_clear_each hands over only entries that were not zero.
            super::swap_state::zap_nonpresent_pte(old);
            return;
        }
        if !in_range {
            in_range = true;
            tlb.flush_range(va + i as u64 * PAGE_SIZE, end);
        }
        if !old.special() && tlb.remove_page(mem, old.output_address(PAGE_SIZE)) {
            in_range = false;
        }
    });
}

/// Drops one mapping of the page at `pa` and the reference it held.
pub fn put_mapped_page(pa: PhysAddr) {
    let pg = page::phys_to_page(pa).expect("mapped page outside RAM");
    let folio = pg.folio().expect("mapped page without a folio");
    folio_remove_rmap_pte(pg);
    folio.put();
}

/// Whether the contiguous run holding `a` can keep its contiguous bit
/// through an mprotect of `[start, end)`: the range covers it whole and
/// every entry gets the same new permissions (for R/W: all its pages are
/// exclusive, or none is).
#[inline(never)]
fn run_stays_uniform(slot: Pte, a: VirtAddr, start: VirtAddr, end: VirtAddr, writable: bool) -> bool {
    let run_va = a.align_down(cont_size());
    if run_va < start || run_va + cont_size() > end {
        return false;
    }
    if !writable {
        return true;
    }
    let first = slot_at(slot, a, run_va);
    let excl = |i: usize| {
        let d = first.sibling(first.index() + i).get();
        !d.special() && page::phys_to_page(d.output_address(PAGE_SIZE)).is_some_and(|p| p.anon_exclusive())
    };
    let e0 = excl(0);
    (1..GRANULE.contiguous_entries(3)).all(|i| excl(i) == e0)
}

/// Unfolds the contiguous run holding `a` (entry `slot`) unless it stays
/// uniform through the mprotect of `[va, va+len)` ([`run_stays_uniform`]).
#[cold]
#[inline(never)]
fn unfold_unless_uniform(
    mm: &MmStruct,
    slot: Pte,
    a: VirtAddr,
    va: VirtAddr,
    len: u64,
    writable: bool,
) -> Result<(), MmError> {
    if !run_stays_uniform(slot, a, va, va + len, writable) {
        unfold_run(mm, slot, a)?;
    }
    Ok(())
}

/// The contiguous-run part of [`change_protection`] at entry `a`: unfolds
/// the run unless it stays uniform. Returns the entry to work on. After
/// [`prepare_protection`] under the same mmap write lock there is no such
/// run left; the check stays so that no run keeps its bit while its
/// entries are given different permissions.
#[cold]
#[inline(never)]
fn cont_before_protect(
    mm: &MmStruct,
    slot: Pte,
    a: VirtAddr,
    va: VirtAddr,
    len: u64,
    writable: bool,
) -> Result<Desc, MmError> {
    let run_va = a.align_down(cont_size());
    if a == run_va || a == va {
        unfold_unless_uniform(mm, slot, a, va, len, writable)?;
    }
    Ok(slot.get())
}

/// The fallible part of [`change_protection`] over `[va, va+len)`, which
/// mprotect runs before it changes the VMA's flags, so that a failure
/// leaves the flags and the entries agreeing: splits the blocks the range
/// cuts and unfolds each contiguous run `change_protection` would unfold
/// (the runs the range's ends cut; when making writable, also the runs
/// whose pages differ in exclusivity). Such runs exist only where the VMA
/// can hold run-sized folios (`cont_runs`: its `folio_order`, the policy
/// of every path that sets the bit); elsewhere only the ends are looked at.
pub fn prepare_protection(
    mt: MmTables<'_>,
    va: VirtAddr,
    len: u64,
    writable: bool,
    cont_runs: bool,
) -> Result<(), MmError> {
    let ptl = mt.mm.page_table_lock_guard();
    let mut mem = mt.mem.lock();
    let (mm, end) = (mt.mm, va + len);
    split_blocks_at_edges(&ptl, mm, &mut mem, va, end)?;
    if writable && cont_runs {
        // The entries `cont_before_protect` decides at: the range's first
        // and each run's first.
        return for_each_pte(&ptl, &mem, va, end, &mut |start, level, run| {
            let mut i = 0;
            while level == 3 && i < run.len() {
                let a = start + i as u64 * PAGE_SIZE;
                let d = run.get(i);
                if d.is_valid() && d.0 & CONT_BIT != 0 {
                    unfold_unless_uniform(mm, run.pte(i), a, va, len, writable)?;
                }
                i += ((a.align_down(cont_size()) + cont_size() - a) / PAGE_SIZE) as usize;
            }
            Ok(())
        });
    }
    // Made read-only, every entry of a run the range covers gets the same
    // change: only a run an end cuts is unfolded. Where no run is expected
    // the two ends are looked at all the same (two lookups).
    for a in [va, end - PAGE_SIZE] {
        if let Some(slot) = pte_lookup(&ptl, &mut mem, a, false)
            && slot.get().is_valid()
            && slot.get().0 & CONT_BIT != 0
        {
            unfold_unless_uniform(mm, slot, a, va, len, writable)?;
        }
    }
    Ok(())
}

/// The protection [`change_protection`] gives entry `i` of `run`, which
/// holds `d` (just read): a CAS from `d` (Linux
/// `ptep_modify_prot_start/commit`): read-only first (DBM cleared too,
/// hardware dirtiness kept in the software bit), then EL0 access, then
/// writable if `mkwrite`. Returns whether the entry changed.
#[inline(always)]
fn protect_entry(run: PteRun, i: usize, d: Desc, el0: bool, mkwrite: bool) -> bool {
    match run.modify_from(i, d, |cur| {
        let n = cur.wrprotect();
        let n = if el0 { Desc(n.0 | AP_EL0) } else { Desc(n.0 & !AP_EL0) };
        if mkwrite { n.mkwrite() } else { n }
    }) {
        Ok((old, new)) => new != old,
        Err(e) => pte_bug(e),
    }
}

/// Linux `change_pte_range`: [`change_protection`] over the level-3 `run`
/// from `start`, part of the mprotect of `[va, va+len)`. Returns whether
/// an entry changed.
#[allow(clippy::too_many_arguments)]
#[inline(always)]
fn protect_run(
    mm: &MmStruct,
    run: PteRun,
    start: VirtAddr,
    va: VirtAddr,
    len: u64,
    el0: bool,
    writable: bool,
    shared: bool,
) -> Result<bool, MmError> {
    let mut changed = false;
    for i in 0..run.len() {
        let d = run.get(i);
        if !d.is_valid() {
            continue;
        }
        let d = if d.0 & CONT_BIT != 0 {
            cont_before_protect(mm, run.pte(i), start + i as u64 * PAGE_SIZE, va, len, writable)?
        } else {
            d
        };
        // Linux `can_change_pte_writable`. A shared mapping has no COW:
        // writable means writable. A uffd-wp entry is never made writable.
        let mkwrite = writable
            && (shared
                || !d.special() && page::phys_to_page(d.output_address(PAGE_SIZE)).is_some_and(|p| p.anon_exclusive()));
        changed |= protect_entry(run, i, d, el0, mkwrite);
    }
    Ok(changed)
}

/// Linux `contpte_try_fold` after mprotect (`modify_prot_commit_ptes` ->
/// `set_ptes`): each aligned run of level-3 entries inside `[va, va+len)`
/// that maps consecutive pages of one large anon folio, from a run-aligned
/// page, with the same attributes (AF and dirty aside) and no contiguous
/// bit is folded ([`fold_run`]). Called for VMAs with run-sized folios.
pub fn contpte_try_fold(mt: MmTables<'_>, va: VirtAddr, len: u64) {
    let ptl = mt.mm.page_table_lock_guard();
    let mut mem = mt.mem.lock();
    let (mut a, end) = (va.align_up(cont_size()), (va + len).align_down(cont_size()));
    while a < end {
        if let Some(first) = pte_lookup(&ptl, &mut mem, a, false) {
            // A refusal (the fold's flush did not happen) left the run as it was.
            let _ = fold_run(mt.mm, first, a);
        }
        a += cont_size();
    }
}

/// Folds the run at `first` (the entry of `run_va`) if it may be one (see
/// [`contpte_try_fold`]), by break-before-make of the whole run
/// (`Pte::convert_run`, Linux `contpte_convert`): each entry with the
/// contiguous bit and the AF and dirty bits of all. Returns whether it
/// folded. If the flush did not happen the entries go back as they were
/// and the fold is refused ([`super::pgtable::MapError::BbmViolation`]).
#[cold]
#[inline(never)]
fn fold_run(mm: &MmStruct, first: Pte, run_va: VirtAddr) -> Result<bool, super::pgtable::MapError> {
    const SAME_BUT: u64 = AF_BIT | SW_DIRTY_BIT;
    let n = GRANULE.contiguous_entries(3);
    let d0 = first.get();
    if !d0.is_valid() || d0.0 & CONT_BIT != 0 || d0.special() {
        return Ok(false);
    }
    let pa = d0.output_address(PAGE_SIZE);
    let whole = page::phys_to_page(pa).and_then(|p| p.folio()).is_some_and(|f| {
        f.is_anon() && pa.as_u64().is_multiple_of(cont_size()) && f.pa() <= pa && pa + cont_size() <= f.pa() + f.size()
    });
    // Entry i is entry 0 moved on by i pages, AF and dirty aside.
    let alike = move |i: usize, d: u64| d & !SAME_BUT == (d0.0 & !SAME_BUT) + i as u64 * PAGE_SIZE;
    if !whole || !(1..n).all(|i| alike(i, first.sibling(first.index() + i).get().0)) {
        return Ok(false);
    }
    let mut old = [0u64; 128];
    let regime = Stage1User { asid: mm.asid() };
    // The MMU may change an entry (DBM) between the check and its swap:
    // then the run is written back as it was, after the flush.
    let folds = |old: &[u64]| (0..n).all(|i| alike(i, old[i]));
    first.convert_run(n, &regime, &mut KernelFlush, run_va, cont_size(), &mut old, |old, i| {
        if folds(old) { old[i] | old[..n].iter().fold(0, |acc, o| acc | (o & SAME_BUT)) | CONT_BIT } else { old[i] }
    })?;
    crate::arch::aarch64::cpu::publish_tables();
    Ok(folds(&old))
}

/// Test-only sabotage: when armed, the next TLB flush of a permission-only
/// change (mprotect's, fork's write-protect) is skipped, so
/// `test/cursor_tests.rs` can show that an EL0 access then goes through
/// the stale entry. Apart from the cursor's `SKIP_NEXT_FLUSH`, which any
/// kernel-table edit made meanwhile could take.
pub static SKIP_NEXT_PERM_FLUSH: core::sync::atomic::AtomicBool = core::sync::atomic::AtomicBool::new(false);

/// Takes [`SKIP_NEXT_PERM_FLUSH`] if armed (one relaxed load when it is not).
#[inline(always)]
fn skip_perm_flush() -> bool {
    SKIP_NEXT_PERM_FLUSH.load(Ordering::Relaxed) && SKIP_NEXT_PERM_FLUSH.swap(false, Ordering::Relaxed)
}

/// Linux `change_protection` for mprotect: EL0 access and read-only per the
/// new protection; a private anon entry is made writable only where its
/// page is exclusive (Linux `can_change_pte_writable`). Others stay
/// read-only and are COWed (or reused) by the next write fault. All
/// changes are permission-only (no BBM); one TLB flush at the end. The
/// caller ran [`prepare_protection`] over the range under the same mmap
/// write lock, so no block straddles its edges (one that did would be
/// reported as [`Inconsistency::BlockCut`], not split here again).
pub fn change_protection(
    mt: MmTables<'_>,
    va: VirtAddr,
    len: u64,
    readable: bool,
    writable: bool,
    shared: bool,
) -> Result<(), MmError> {
    let ptl = mt.mm.page_table_lock_guard();
    let mem = mt.mem.lock();
    let mut changed = false;
    let mm = mt.mm;
    let el0 = readable || writable;
    // Linux `change_pte_range`: one pass over each level-3 table.
    let r = for_each_pte(&ptl, &mem, va, va + len, &mut |start, level, run| {
        // By value: the loop's stores could alias what the closure borrows.
        let c = if level == 3 {
            protect_run(mm, run, start, va, len, el0, writable, shared)?
        } else {
            // A whole block (Linux `change_huge_pmd`).
            let d = run.get(0);
            d.is_valid() && {
                let mkwrite = writable && (shared || !d.special() && block_all_exclusive(d));
                protect_entry(run, 0, d, el0, mkwrite)
            }
        };
        changed |= c;
        Ok(())
    });
    if changed && !skip_perm_flush() {
        KernelFlush.flush(va, len, Some(mt.mm.asid()), true);
    }
    r
}

// --- Inserting driver pages (Linux vm_insert_page*, vmf_insert_mixed) ---

fn is_cow_mapping(f: VmFlags) -> bool {
    f.0 & (VmFlags::SHARED.0 | VmFlags::MAYWRITE.0) == VmFlags::MAYWRITE.0
}

/// Linux `vm_mixed_zeropage_allowed`: a COW mapping, or one that can
/// never get writable entries (neither VM_WRITE nor VM_MAYWRITE), may map
/// the shared zero page.
pub fn vm_mixed_zeropage_allowed(mm: &MmStruct, vma: &Vma) -> bool {
    debug_assert!(!vma.flags.contains(VmFlags::PFNMAP));
    // Whoever forbids the zero page must scan for it; none may be added.
    if mm.forbid_zeropage.load(Ordering::Acquire) {
        return false;
    }
    // Zero pages in COW mappings are common: a write fault replaces them.
    if is_cow_mapping(vma.flags) {
        return true;
    }
    // Mappings that do not allow for writable entries are unproblematic.
    if vma.flags.0 & (VmFlags::WRITE.0 | VmFlags::MAYWRITE.0) == 0 {
        return true;
    }
    // A shared writable mapping only where pfn_mkwrite replaces the zero
    // page and GUP cannot have long-term pinned it (fsdax, VM_IO).
    vma.flags.contains(VmFlags::PFN_MKWRITE) && (vma.flags.contains(VmFlags::FSDAX) || vma.flags.contains(VmFlags::IO))
}

/// Linux `validate_page_before_insert`: the zero page where allowed, or an
/// individual non-anon kernel page.
fn validate_page_before_insert(mm: &MmStruct, vma: &Vma, addr: VirtAddr, pa: PhysAddr) -> Result<(), InsertError> {
    if page::is_zero_pfn(pa) {
        return if vm_mixed_zeropage_allowed(mm, vma) { Ok(()) } else { Err(InsertError::ZeroPageForbidden { addr }) };
    }
    let f = page::phys_to_page(pa).and_then(|p| p.folio()).ok_or(InsertError::NoFolio { pa })?;
    if f.is_anon() || f.is_large() {
        return Err(InsertError::NotInsertable { pa });
    }
    Ok(())
}

/// The entry `insert_page` writes: the zero page special and read-only,
/// another page with a mapping and a reference, writable only in a shared
/// writable mapping.
fn insert_page_into_pte_locked(slot: Pte, vma: &Vma, addr: VirtAddr, pa: PhysAddr) -> Result<(), InsertError> {
    if slot.get().0 != 0 {
        return Err(InsertError::Busy { addr });
    }
    let d = if page::is_zero_pfn(pa) {
        Desc::leaf(pa, 3, LeafAttrs { special: true, ..vm_page_prot(vma) })
    } else {
        let pg = page::phys_to_page(pa).ok_or(InsertError::NoFolio { pa })?;
        pg.folio().ok_or(InsertError::NoFolio { pa })?.get();
        page::folio_add_file_rmap_pte(pg);
        let d = Desc::leaf(pa, 3, vm_page_prot(vma));
        if vma.flags.contains(VmFlags::SHARED) { maybe_mkwrite(d, vma) } else { d }
    };
    set_pte_new(slot, d);
    Ok(())
}

/// The VMA at `addr` for an insert, marked VM_MIXEDMAP as Linux does on
/// first use; PFN mappings are refused (Linux: BUG_ON).
fn insert_vma(vmas: &mut super::mm_struct::MmapWriteGuard<'_>, addr: VirtAddr) -> Result<Vma, InsertError> {
    let v = vmas.find_mut(addr).ok_or(InsertError::NoVma { addr })?;
    if v.flags.contains(VmFlags::PFNMAP) {
        return Err(InsertError::PfnMap { addr });
    }
    v.flags = v.flags | VmFlags::MIXEDMAP;
    Ok(*v)
}

/// Linux `vm_insert_page`: maps a driver's page (or the zero page) at
/// `addr` of the VMA there. Errors: no VMA, a page or VMA that must not be
/// used, something mapped there already, no memory for a table.
pub fn vm_insert_page(
    mt: MmTables<'_>,
    vmas: &mut super::mm_struct::MmapWriteGuard<'_>,
    addr: VirtAddr,
    pa: PhysAddr,
) -> Result<(), InsertError> {
    let vma = insert_vma(vmas, addr)?;
    validate_page_before_insert(mt.mm, &vma, addr, pa)?;
    let ptl = mt.mm.page_table_lock_guard();
    let mut mem = mt.mem.lock();
    let Some(slot) = pte_lookup(&ptl, &mut mem, addr.align_down(PAGE_SIZE), true) else {
        return Err(InsertError::NoMemory);
    };
    insert_page_into_pte_locked(slot, &vma, addr, pa)
}

/// Linux `vm_insert_pages`: a batch from `addr`. A page with no
/// references is refused, but the zero page (never refcounted) is not. Returns how many were inserted
/// before the first error (Linux reports the rest back the same way).
pub fn vm_insert_pages(
    mt: MmTables<'_>,
    vmas: &mut super::mm_struct::MmapWriteGuard<'_>,
    addr: VirtAddr,
    pages: &[PhysAddr],
) -> (usize, Result<(), InsertError>) {
    for (i, &pa) in pages.iter().enumerate() {
        let va = addr + i as u64 * PAGE_SIZE;
        if !page::is_zero_pfn(pa) && page::phys_to_page(pa).and_then(|p| p.folio()).is_none_or(|f| f.refcount() == 0) {
            return (i, Err(InsertError::Freed { pa }));
        }
        if let Err(e) = vm_insert_page(mt, vmas, va, pa) {
            return (i, Err(e));
        }
    }
    (pages.len(), Ok(()))
}

/// Linux `vmf_insert_mixed` (from a fault handler): a PFN where the VMA
/// allows it - anything in VM_PFNMAP/VM_IO mappings, the zero page only
/// where `vm_mixed_zeropage_allowed` says so - mapped special when it has
/// no struct page (or is the zero page), as a page otherwise.
pub fn vmf_insert_mixed(mt: MmTables<'_>, vma: &Vma, addr: VirtAddr, pfn: PhysAddr) -> VmFault {
    let io = vma.flags.0 & (VmFlags::PFNMAP.0 | VmFlags::IO.0) != 0;
    if !io && page::is_zero_pfn(pfn) && !vm_mixed_zeropage_allowed(mt.mm, vma) {
        return VmFault::Sigsegv; // Linux VM_FAULT_SIGBUS
    }
    let ptl = mt.mm.page_table_lock_guard();
    let mut mem = mt.mem.lock();
    let Some(slot) = pte_lookup(&ptl, &mut mem, addr.align_down(PAGE_SIZE), true) else {
        return VmFault::Oom;
    };
    let has_page = !page::is_zero_pfn(pfn) && page::phys_to_page(pfn).and_then(|p| p.folio()).is_some();
    if has_page && !io {
        return match insert_page_into_pte_locked(slot, vma, addr, pfn) {
            Ok(()) => VmFault::Done,
            Err(_) => VmFault::Sigsegv,
        };
    }
    if slot.get().0 != 0 {
        return VmFault::Done; // someone else mapped it: Linux returns NOPAGE
    }
    set_pte_new(slot, Desc::leaf(pfn, 3, LeafAttrs { special: true, ..vm_page_prot(vma) }));
    VmFault::Done
}
