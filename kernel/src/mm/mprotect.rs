//! Changing the protection of user memory (Linux mm/mprotect.c): new VMA
//! flags, and the present entries' permissions changed in place
//! ([`memory::change_protection`]).

use super::addr::VirtAddr;
use super::error::MmError;
use super::memory::{self, MmTables};
use super::mm_struct::VmFlags;
use super::mmap::{accountable, check_user_range, split_covered, vm_enough_memory};
use crate::arch::aarch64::granule::PAGE_SIZE;

/// Linux `do_mprotect_pkey` over `[va, va+len)`: every page must be in a
/// VMA (`not mapped` otherwise) and outside the sealed range. `none` keeps
/// pages present for the kernel but EL1-only, so EL0 gets permission
/// faults (Linux keeps PROT_NONE pages `pte_present` too). `rw` makes only
/// exclusive anon pages writable.
pub fn do_mprotect(mt: MmTables<'_>, va: VirtAddr, len: u64, readable: bool, writable: bool) -> Result<(), MmError> {
    check_user_range(va, len)?;
    let end = va + len;
    let mut vmas = mt.mm.mmap_write_lock();
    if mt.mm.is_sealed(va, end) {
        return Err(MmError::Sealed);
    }
    // Linux `mprotect_fixup`: a private mapping that becomes writable is
    // charged then (each VMA's part on its own), before anything changes.
    if writable {
        for v in vmas.iter().filter(|v| v.start < end && va < v.end) {
            if accountable(v.flags) && !v.flags.contains(VmFlags::WRITE) {
                vm_enough_memory(v.end.min(end) - v.start.max(va))?;
            }
        }
    }
    split_covered(&mut vmas, va, len)?;
    // What can fail in `change_protection` (a table page for a block
    // split, a refused unfold of a contiguous run) is done first, VMA by
    // VMA, before any VMA's flags change: a failure leaves the VMAs and
    // their entries agreeing.
    let cont_order = (memory::cont_size() / PAGE_SIZE).trailing_zeros() as u8;
    let mut a = va;
    while let Some((s, e, cont_runs)) =
        vmas.inside(a, end).map(|v| (v.start, v.end, v.folio_order >= cont_order)).next()
    {
        memory::prepare_protection(mt, s, e - s, writable, cont_runs)?;
        a = e;
    }
    for v in vmas.inside_mut(va, end) {
        v.flags = mprotect_flags(v.flags, readable, writable);
    }
    // VMA by VMA, without a list to allocate.
    let mut a = va;
    while let Some((s, e, shared, uffd_wp)) = vmas
        .inside(a, end)
        .map(|v| (v.start, v.end, v.flags.contains(VmFlags::SHARED), super::userfaultfd::userfaultfd_wp(v)))
        .next()
    {
        // Linux `can_change_pte_writable` refuses uffd-wp entries; here no
        // entry of a uffd-wp registered VMA is made writable ahead of a
        // fault (the write fault does it, or raises the event), which keeps
        // the check off the per-entry loop.
        // Cannot fail after `prepare_protection`.
        memory::change_protection(mt, s, e - s, readable, writable && !uffd_wp, shared)?;
        a = e;
    }
    // Runs made alike again fold back (only where run-sized folios can be;
    // a run may span VMAs the mprotects split).
    if vmas.inside(va, end).any(|v| v.folio_order >= cont_order) {
        memory::contpte_try_fold(mt, va, len);
    }
    Ok(())
}

/// A VMA's flags after mprotect: READ/WRITE as asked (write implies read),
/// the rest kept.
fn mprotect_flags(old: VmFlags, readable: bool, writable: bool) -> VmFlags {
    let mut f = VmFlags(old.0 & !(VmFlags::READ.0 | VmFlags::WRITE.0));
    if readable || writable {
        f = f | VmFlags::READ;
    }
    if writable {
        f = f | VmFlags::WRITE;
    }
    f
}
