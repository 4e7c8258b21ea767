//! The kernel side of userfaultfd write-protect: register, `UFFDIO_WRITEPROTECT`,
//! the fault paths (Linux `do_wp_page`'s `userfaultfd_pte_wp`,
//! `handle_pte_marker`), zap's markers and fork.

use core::fmt;

use super::{UFFD_FEATURE_EVENT_FORK, UFFD_FEATURE_WP_UNPOPULATED, userfaultfd_wp};
use crate::arch::aarch64::granule::{GRANULE, PAGE_SIZE};
use crate::mm::addr::VirtAddr;
use crate::mm::desc::{CONT_BIT, Desc, Kind, MigrationKind, NonPresent, UFFD_WP_BIT, marker};
use crate::mm::error::{MmError, Need};
use crate::mm::memory::{self, FaultFlags, MmTables, VmFault, ZAP_FLAG_DROP_MARKER, ZapDetails};
use crate::mm::mm_struct::{MmStruct, MmapLocked, VmFlags, Vma};
use crate::mm::mmap::check_user_range;
use crate::mm::pgtable::{Pte, TlbFlush};
use crate::mm::tlb::KernelFlush;

/// Why a `uffd` command was refused (Linux's errno in each doc line).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum UffdError {
    /// A page of the range lies in no VMA (register, unregister: -EINVAL;
    /// writeprotect: -ENOENT).
    NotMapped { addr: VirtAddr },
    /// A VMA userfaultfd cannot track: a PFN mapping (Linux
    /// `vma_can_userfault`: -EINVAL).
    CannotTrack { addr: VirtAddr },
    /// `wp on|off` over a VMA not registered for write-protect (-ENOENT).
    NotRegistered { addr: VirtAddr },
    /// `register` asks for other features than the open context has while
    /// some VMA is registered with it (Linux: another userfaultfd, -EBUSY).
    FeaturesDiffer { fork_events: bool },
    /// The mm refused (bad range, no memory for tables or VMA splits).
    Mm(MmError),
}

impl From<MmError> for UffdError {
    fn from(e: MmError) -> Self {
        UffdError::Mm(e)
    }
}

impl From<crate::mm::pgtable::MapError> for UffdError {
    fn from(e: crate::mm::pgtable::MapError) -> Self {
        UffdError::Mm(e.into())
    }
}

impl fmt::Display for UffdError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            UffdError::NotMapped { addr } => write!(f, "not mapped at {addr:#x}"),
            UffdError::CannotTrack { addr } => write!(f, "userfaultfd cannot track the PFN mapping at {addr:#x}"),
            UffdError::NotRegistered { addr } => write!(f, "not registered for uffd write-protect at {addr:#x}"),
            UffdError::FeaturesDiffer { fork_events: true } => {
                write!(f, "the userfaultfd is open without fork-events while ranges are registered")
            }
            UffdError::FeaturesDiffer { fork_events: false } => {
                write!(f, "the userfaultfd is open with fork-events while ranges are registered")
            }
            UffdError::Mm(e) => write!(f, "{e}"),
        }
    }
}

/// Every page of `[va, end)` lies in a VMA that `ok` accepts; the first that
/// does not is reported by `bad`.
fn check_vmas(
    vmas: &crate::mm::mm_struct::VmaList,
    va: VirtAddr,
    end: VirtAddr,
    ok: impl Fn(&Vma) -> bool,
    bad: impl Fn(VirtAddr) -> UffdError,
) -> Result<(), UffdError> {
    let mut a = va;
    while a < end {
        let v = vmas.find(a).ok_or(UffdError::NotMapped { addr: a })?;
        if !ok(v) {
            return Err(bad(a));
        }
        a = v.end;
    }
    Ok(())
}

/// `P uffd RANGE register wp [fork-events]` (Linux `userfaultfd_register`
/// with `UFFDIO_REGISTER_MODE_WP`): opens the context on first use, splits
/// the VMAs (and blocks) at the range's ends and marks them `VM_UFFD_WP`.
pub fn register(mt: MmTables<'_>, va: VirtAddr, len: u64, fork_events: bool) -> Result<(), UffdError> {
    check_user_range(va, len)?;
    let end = va + len;
    let mut vmas = mt.mm.mmap_write_lock();
    check_vmas(&vmas, va, end, |v| !v.flags.contains(VmFlags::PFNMAP), |addr| UffdError::CannotTrack { addr })?;
    let want = UFFD_FEATURE_WP_UNPOPULATED | if fork_events { UFFD_FEATURE_EVENT_FORK } else { 0 };
    let have = mt.mm.uffd.features();
    if have != 0 && have != want && vmas.iter().any(userfaultfd_wp) {
        return Err(UffdError::FeaturesDiffer { fork_events });
    }
    let n = vmas.splits_needed(va, end);
    vmas.try_reserve(n)?;
    {
        let ptl = mt.mm.page_table_lock_guard();
        memory::split_blocks_at_edges(&ptl, mt.mm, &mut mt.mem.lock(), va, end)?;
    }
    mt.mm.uffd.features.store(want, core::sync::atomic::Ordering::Relaxed);
    vmas.split_at(va);
    vmas.split_at(end);
    for v in vmas.inside_mut(va, end) {
        v.flags = VmFlags(v.flags.0 | VmFlags::UFFD_WP.0);
    }
    Ok(())
}

/// `P uffd RANGE unregister` (Linux `userfaultfd_unregister`): the uffd-wp
/// bits and markers of the range go at once (Linux `userfaultfd_clear_vma`),
/// so no stale state is left to raise an event; then the VMAs lose
/// `VM_UFFD_WP`.
pub fn unregister(mt: MmTables<'_>, va: VirtAddr, len: u64) -> Result<(), UffdError> {
    check_user_range(va, len)?;
    let end = va + len;
    let mut vmas = mt.mm.mmap_write_lock();
    check_vmas(&vmas, va, end, |_| true, |addr| UffdError::NotMapped { addr })?;
    let n = vmas.splits_needed(va, end);
    vmas.try_reserve(n)?;
    vmas.split_at(va);
    vmas.split_at(end);
    uffd_wp_range(mt, va, end, false)?;
    for v in vmas.inside_mut(va, end) {
        v.flags = VmFlags(v.flags.0 & !VmFlags::UFFD_WP.0);
    }
    Ok(())
}

/// `P uffd RANGE wp on|off` (Linux `mwriteprotect_range`): every page of
/// the range must be in a VMA registered for write-protect.
pub fn writeprotect(mt: MmTables<'_>, va: VirtAddr, len: u64, on: bool) -> Result<(), UffdError> {
    check_user_range(va, len)?;
    let end = va + len;
    let g = mt.mm.mmap_read_lock();
    check_vmas(g.vmas(), va, end, userfaultfd_wp, |addr| UffdError::NotRegistered { addr })?;
    uffd_wp_range(mt, va, end, on)?;
    drop(g);
    if !on {
        // Runs unfolded by `wp on` and alike again fold back.
        memory::contpte_try_fold(mt, va, len);
    }
    Ok(())
}

/// Linux `uffd_wp_range` (`change_protection` with `MM_CP_UFFD_WP` or
/// `MM_CP_UFFD_WP_RESOLVE`) over `[start, end)`. On: blocks are split and
/// contiguous runs unfolded (the bit lives in page entries only, so one
/// page can be resolved on its own); present entries become read-only
/// with the bit, none entries get a uffd-wp marker
/// (`UFFD_FEATURE_WP_UNPOPULATED`, Linux `uffd_wp_protect_file` and its
/// anonymous counterpart), swap and migration entries their bit. Off: the
/// bits go (entries stay read-only: the next write takes the ordinary
/// write fault), and markers become none.
fn uffd_wp_range(mt: MmTables<'_>, start: VirtAddr, end: VirtAddr, on: bool) -> Result<(), UffdError> {
    let mm = mt.mm;
    let ptl = mm.page_table_lock_guard();
    let mut mem = mt.mem.lock();
    let bs = GRANULE.level_size(2);
    let mut flush = false;
    let r = (|| {
        let mut a = start;
        while a < end {
            let next = (a.align_down(bs) + bs).min(end);
            if on {
                // Any block holding `a` is cut by `a + PAGE_SIZE`.
                memory::split_blocks_at_edges(&ptl, mm, &mut mem, a, a + PAGE_SIZE)?;
            }
            let Some(first) = memory::pte_lookup(&ptl, &mut mem, a, on) else {
                if on {
                    return Err(MmError::NoMemory(Need::Table).into());
                }
                a = next; // no table: nothing to clear
                continue;
            };
            let mut pva = a;
            while pva < next {
                let pte = first.sibling(first.index() + ((pva - a) / PAGE_SIZE) as usize);
                flush |= if on { wp_entry(mm, pte, pva)? } else { unwp_entry(pte)? };
                pva += PAGE_SIZE;
            }
            a = next;
        }
        Ok(())
    })();
    // Refused part-way too: entries already made read-only may still be
    // writable in TLBs (Linux flushes what change_protection changed).
    if flush {
        KernelFlush.flush(start, end - start, Some(mm.asid()), true);
    }
    crate::arch::aarch64::cpu::publish_tables();
    r
}

/// `wp on` of one entry. Returns whether a writable translation may be
/// cached (the range is flushed).
fn wp_entry(mm: &MmStruct, pte: Pte, va: VirtAddr) -> Result<bool, UffdError> {
    let d = pte.get();
    if d.0 == 0 {
        pte.set_non_present(NonPresent::Marker(marker::UFFD_WP).encode())?;
        return Ok(false);
    }
    if d.is_valid() {
        if d.0 & CONT_BIT != 0 {
            memory::unfold_run(mm, pte, va)?;
        }
        let (old, _) = pte.modify(|c| Desc(c.wrprotect().0 | UFFD_WP_BIT))?;
        return Ok(old.may_write());
    }
    let new = match d.kind(3, GRANULE) {
        Kind::NonPresent(NonPresent::Marker(m)) => NonPresent::Marker(m | marker::UFFD_WP),
        Kind::NonPresent(NonPresent::Swap { entry, exclusive, .. }) => {
            NonPresent::Swap { entry, exclusive, uffd_wp: true }
        }
        Kind::NonPresent(NonPresent::Migration { pa, kind, dirty, young, .. }) => {
            NonPresent::Migration { pa, kind: wrprotect_migration(pa, kind), dirty, young, uffd_wp: true }
        }
        _ => return Ok(false),
    };
    pte.set_non_present(new.encode())?;
    Ok(false)
}

/// A writable migration entry write-protected (Linux `change_pte_range`):
/// readable-exclusive for an anonymous folio, readable otherwise, so the
/// page does not come back writable.
fn wrprotect_migration(pa: crate::mm::addr::PhysAddr, kind: MigrationKind) -> MigrationKind {
    if kind != MigrationKind::Write {
        return kind;
    }
    let anon = crate::mm::page::phys_to_page(pa).and_then(|p| p.folio()).is_some_and(|f| f.is_anon());
    if anon { MigrationKind::ReadExclusive } else { MigrationKind::Read }
}

/// `wp off` of one entry (Linux `MM_CP_UFFD_WP_RESOLVE`). A software bit
/// going from a read-only entry needs no flush: returns false.
fn unwp_entry(pte: Pte) -> Result<bool, UffdError> {
    let d = pte.get();
    if d.0 == 0 {
        return Ok(false);
    }
    if d.is_valid() {
        if d.0 & UFFD_WP_BIT != 0 {
            pte.modify(|c| Desc(c.0 & !UFFD_WP_BIT))?;
        }
        return Ok(false);
    }
    let new = match d.kind(3, GRANULE) {
        Kind::NonPresent(NonPresent::Marker(m)) if m == marker::UFFD_WP => {
            pte.get_and_clear();
            return Ok(false);
        }
        Kind::NonPresent(NonPresent::Marker(m)) => NonPresent::Marker(m & !marker::UFFD_WP),
        Kind::NonPresent(NonPresent::Swap { entry, exclusive, uffd_wp: true }) => {
            NonPresent::Swap { entry, exclusive, uffd_wp: false }
        }
        Kind::NonPresent(NonPresent::Migration { pa, kind, dirty, young, uffd_wp: true }) => {
            NonPresent::Migration { pa, kind, dirty, young, uffd_wp: false }
        }
        _ => return Ok(false),
    };
    pte.set_non_present(new.encode())?;
    Ok(false)
}

/// `P uffd-events expect N`: the events since the last check; the count starts again.
pub fn take_events(mm: &MmStruct) -> u64 {
    mm.uffd.take_events()
}

/// A write to a present entry with the uffd-wp bit (Linux `do_wp_page` ->
/// `handle_userfault(vmf, VM_UFFD_WP)`): the event is counted, and the
/// script model's monitor resolves it at once as `UFFDIO_WRITEPROTECT`
/// without `MODE_WP` on that page would - the bit goes, the entry stays
/// read-only. The access retries and takes the ordinary write fault
/// (reuse or copy). A bit left in a VMA no longer registered raises no
/// event.
#[cold]
#[inline(never)]
pub fn do_wp_userfault(mm: &MmStruct, slot: Pte, vma: &Vma, va: VirtAddr) -> VmFault {
    if userfaultfd_wp(vma) {
        mm.uffd.count_event();
    }
    // One entry of a contiguous run changes on its own (a run that
    // mprotect folded again after `wp on`).
    if slot.get().0 & CONT_BIT != 0 && memory::unfold_run(mm, slot, va).is_err() {
        return VmFault::Done; // refused (the BBM tests): retry
    }
    if slot.modify(|c| Desc(c.0 & !UFFD_WP_BIT)).is_err() {
        unreachable!("clearing a software bit is a permission change");
    }
    VmFault::Done
}

/// Linux `handle_pte_marker` for a uffd-wp marker: in a VMA no longer
/// registered the marker is stale and goes (no event); a write raises the
/// event, which the monitor resolves by dropping the marker, and the retry
/// fills the page writable; a read (or unshare) fills the page now,
/// read-only with the uffd-wp bit from the start (Linux
/// `do_anonymous_page`/`set_pte_range` with `vmf_orig_pte_uffd_wp`): the
/// new entry replaces the marker in one store, so no other CPU can write
/// in between, and a fill that fails (out of memory) leaves the marker.
/// An access past the end of the file is refused with no event and the
/// marker kept. Other markers (guard, poison) are not made here.
#[cold]
#[inline(never)]
pub fn handle_pte_marker(mm: &MmStruct, slot: Pte, vma: &Vma, va: VirtAddr, m: u64, flags: FaultFlags) -> VmFault {
    if m & marker::UFFD_WP == 0 {
        return VmFault::Sigsegv;
    }
    if !userfaultfd_wp(vma) {
        slot.get_and_clear();
        return VmFault::Done;
    }
    if past_eof(vma, va) {
        return VmFault::Sigsegv; // Linux: SIGBUS from the file's fault
    }
    if flags.write {
        mm.uffd.count_event();
        slot.get_and_clear();
        return VmFault::Done;
    }
    memory::do_pte_missing(slot, vma, va, flags, true)
}

/// Whether `va` lies past the end of the file `vma` maps (memfd, shared
/// anonymous memory), where the file's fault refuses the access.
fn past_eof(vma: &Vma, va: VirtAddr) -> bool {
    vma.file != 0 && crate::mm::shmem::get(vma.file).is_some_and(|f| vma.pgoff_of(va) >= f.size() / PAGE_SIZE)
}

/// Whether a zap with `details` leaves uffd-wp markers where write-protected
/// entries were (Linux `zap_install_uffd_wp_if_needed`): only in a
/// file-backed VMA (memfd, shared anonymous) registered for uffd-wp, and
/// not when the caller drops the state for good ([`ZAP_FLAG_DROP_MARKER`]:
/// munmap and exit, truncate and punch under the page lock). Private
/// anonymous memory loses everything, as in Linux.
#[inline(always)]
pub fn zap_keeps_wp(details: &ZapDetails<'_>) -> bool {
    details.zap_flags & ZAP_FLAG_DROP_MARKER == 0 && details.vma.is_some_and(|v| v.file != 0 && userfaultfd_wp(v))
}

/// Linux `zap_install_uffd_wp_if_needed` for the entry `pte` just cleared
/// from `old` by a zap that keeps uffd-wp state: a marker comes back as it
/// was; an entry with the uffd-wp bit (present, swap, migration) leaves a
/// uffd-wp marker.
pub fn zap_install_uffd_wp_if_needed(pte: Pte, old: Desc) {
    let keep = if old.is_valid() {
        (old.0 & UFFD_WP_BIT != 0).then(|| NonPresent::Marker(marker::UFFD_WP).encode())
    } else {
        match old.kind(3, GRANULE) {
            Kind::NonPresent(NonPresent::Marker(_)) => Some(old),
            Kind::NonPresent(NonPresent::Swap { uffd_wp: true, .. } | NonPresent::Migration { uffd_wp: true, .. }) => {
                Some(NonPresent::Marker(marker::UFFD_WP).encode())
            }
            _ => None,
        }
    };
    if let Some(m) = keep
        && let Err(e) = pte.set_non_present(m)
    {
        memory::pte_bug(e);
    }
}

/// After [`memory::copy_page_range`] of the parent's `vma` into the child's
/// `cvma`: if the child does not keep uffd-wp (no fork events), its copied
/// uffd-wp bits (present, swap and migration entries) and markers go
/// (Linux `copy_pte_range` with `!userfaultfd_wp(dst_vma)`). Done as a
/// pass over the child's new tables, off fork's copy loop; nothing ran
/// on them, so nothing to flush.
pub fn dup_userfaultfd_entries(child: MmTables<'_>, vma: &Vma, cvma: &Vma) -> Result<(), MmError> {
    if !userfaultfd_wp(vma) || userfaultfd_wp(cvma) {
        return Ok(());
    }
    uffd_wp_range(child, cvma.start, cvma.end, false).map_err(|e| match e {
        UffdError::Mm(e) => e,
        _ => unreachable!("wp off refuses nothing but the mm's errors"),
    })
}

/// Linux `dup_userfaultfd` for the context: with `UFFD_FEATURE_EVENT_FORK`
/// the child gets a context with the parent's features (its own event
/// count, from 0). The fork event itself goes to the parent's monitor and
/// is not one of the write-protect events `uffd-events` counts.
pub fn dup_userfaultfd(parent: &MmStruct, child: &MmStruct) {
    let f = parent.uffd.features();
    if f & UFFD_FEATURE_EVENT_FORK != 0 {
        child.uffd.features.store(f, core::sync::atomic::Ordering::Relaxed);
    }
}

/// The child's copy of the parent's `vma` at fork: without
/// `UFFD_FEATURE_EVENT_FORK` it loses `VM_UFFD_WP` (Linux `dup_userfaultfd`
/// clears `__VM_UFFD_FLAGS`), and [`dup_userfaultfd_entries`] then drops
/// the uffd-wp bits and markers [`memory::copy_page_range`] copied.
pub fn dup_userfaultfd_vma(parent: &MmStruct, vma: &Vma) -> Vma {
    if super::wp_kept_on_fork(&parent.uffd, vma) {
        *vma
    } else {
        Vma { flags: VmFlags(vma.flags.0 & !VmFlags::UFFD_WP.0), ..*vma }
    }
}

/// The invariants of uffd-wp state for one entry at `va` (`vma_flags`:
/// the flags of the VMA holding an address, if any): no entry with the
/// uffd-wp bit is writable, and no uffd-wp marker lies outside a VMA
/// registered for uffd-wp. Markers are cleaned up eagerly (unregister,
/// munmap, fork without fork-events), so this holds after every command.
pub fn check_entry(
    d: Desc,
    va: u64,
    vma_flags: impl Fn(u64) -> Option<VmFlags>,
) -> Option<crate::mm::page_table_check::Violation> {
    use crate::mm::page_table_check::Violation;
    if d.is_valid() {
        return (d.0 & UFFD_WP_BIT != 0 && d.may_write()).then_some(Violation::UffdWpWritable { va });
    }
    match d.kind(3, GRANULE) {
        Kind::NonPresent(NonPresent::Marker(m))
            if m & marker::UFFD_WP != 0 && !vma_flags(va).is_some_and(|f| f.contains(VmFlags::UFFD_WP)) =>
        {
            Some(Violation::MarkerOutsideUffdWp { va })
        }
        _ => None,
    }
}
