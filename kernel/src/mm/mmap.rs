//! Mapping and unmapping user memory (Linux mm/mmap.c and mm/vma.c):
//! [`do_mmap`], [`do_munmap`], the overcommit check ([`vm_enough_memory`])
//! and the VMA-range helpers that mprotect and madvise share. Everything
//! works on an address space ([`MmTables`]); the process layer keeps the
//! names (regions) and calls in.

use core::sync::atomic::Ordering;

use alloc::string::String;

use super::addr::{PhysAddr, VirtAddr};
use super::error::MmError;
use super::memory::{self, MmTables};
use super::mm_struct::{MmapLocked, MmapWriteGuard, VmFlags, Vma};
use crate::arch::aarch64::granule::{PAGE_SIZE, align_up};

/// The end of the user address space (Linux `TASK_SIZE`).
use crate::arch::aarch64::regs::USER_TOP;

/// What to map: the scenario language's `P mmap` options and the `mmap`
/// system call's arguments.
pub struct MmapArgs {
    pub size: u64,
    pub writable: bool,
    pub readable: bool,
    pub align: u64,
    /// Largest anonymous folio order (`thp=SIZE`; 0 = never).
    pub folio_order: u8,
    /// `pfn=PHYS`: a PFNMAP of the PFN pool at PHYS.
    pub pfn: Option<PhysAddr>,
    /// MAP_SHARED: with `memfd`, or for PFN mappings; alone, anonymous
    /// shared memory (an unnamed shmem file).
    pub shared: bool,
    /// `memfd=F`: maps the named in-memory file F from offset 0.
    pub memfd: Option<String>,
    /// An open memfd (the `mmap` system call with a file descriptor): the
    /// shmem file's id and the file page the mapping starts at. The file
    /// does not grow; pages past its end are a SIGSEGV (Linux: SIGBUS).
    pub file: Option<(u32, u64)>,
    /// `noreserve` (MAP_NORESERVE): no overcommit check.
    pub noreserve: bool,
}

/// Linux's default overcommit heuristic (`OVERCOMMIT_GUESS`,
/// `__vm_enough_memory`): a charged mapping may not be larger than total RAM
/// plus swap. Each mapping on its own, as Linux: the sum may be more.
pub fn vm_enough_memory(size: u64) -> Result<(), MmError> {
    let limit = super::frame::stats().managed * PAGE_SIZE + super::swapfile::total_bytes();
    if size > limit { Err(MmError::Overcommit { size, limit }) } else { Ok(()) }
}

/// Whether a private mapping with `flags` is charged against the
/// overcommit limit once it is writable (Linux `VM_ACCOUNT`).
pub(super) fn accountable(flags: VmFlags) -> bool {
    !flags.contains(VmFlags::SHARED) && !flags.contains(VmFlags::NORESERVE) && !flags.contains(VmFlags::PFNMAP)
}

/// The checks every range operation makes first: not empty, page aligned,
/// inside the user address space.
pub fn check_user_range(va: VirtAddr, len: u64) -> Result<(), MmError> {
    if len == 0 {
        return Err(MmError::Empty);
    }
    if !va.is_aligned(PAGE_SIZE) || !len.is_multiple_of(PAGE_SIZE) {
        return Err(MmError::NotAligned { addr: va, len });
    }
    if va.checked_add(len).is_none_or(|e| e.as_u64() > USER_TOP) {
        return Err(MmError::OutOfRange { addr: va, len });
    }
    Ok(())
}

/// Linux `do_mmap` + `mmap_region`: a VMA of `a.size` bytes (anonymous,
/// memfd, shared or PFN memory, as `a` says) at the next free address of
/// `mt`. Returns (va, size).
pub fn do_mmap(mt: MmTables<'_>, a: &MmapArgs) -> Result<(VirtAddr, u64), MmError> {
    let mm = mt.mm;
    if a.size == 0 {
        return Err(MmError::Empty);
    }
    if a.size > USER_TOP {
        return Err(MmError::NoAddressSpace { size: a.size });
    }
    let size = align_up(a.size, PAGE_SIZE);
    // Large folios need naturally aligned ranges (Linux aligns THP-able
    // anonymous mappings the same way).
    let align = a.align.max(PAGE_SIZE).max(PAGE_SIZE << a.folio_order);
    let va = VirtAddr::new(mm.free_area.load(Ordering::Relaxed)).align_up(align);
    let end = va.checked_add(size).filter(|e| e.as_u64() <= USER_TOP).ok_or(MmError::NoAddressSpace { size })?;
    let mut flags = VmFlags(0);
    if a.readable {
        flags = flags | VmFlags::READ;
    }
    if a.writable {
        flags = flags | VmFlags::WRITE | VmFlags::READ;
    }
    if let Some(pfn) = a.pfn {
        let (ps, pe) = memory::pfn_pool().ok_or(MmError::NoPfnPool)?;
        if !pfn.is_aligned(PAGE_SIZE) || pfn < ps || pfn.checked_add(size).is_none_or(|e| e > pe) {
            return Err(MmError::PfnOutsidePool { pfn, size, start: ps, end: pe });
        }
        flags = flags | VmFlags::PFNMAP | VmFlags::IO;
    }
    flags = flags | if a.shared { VmFlags::SHARED } else { VmFlags::MAYWRITE };
    if a.noreserve {
        flags = flags | VmFlags::NORESERVE;
    }
    // A private writable mapping is charged (`VM_ACCOUNT`); so is
    // anonymous shared memory, whatever its protection: its shmem file
    // is (`shmem_zero_setup` -> `shmem_acct_size`) unless `noreserve`.
    // A memfd (Linux: VM_NORESERVE) and a PFN mapping are not.
    let shared_anon = a.shared && a.pfn.is_none() && a.memfd.is_none() && a.file.is_none();
    if (accountable(flags) && a.writable) || (shared_anon && !a.noreserve) {
        vm_enough_memory(size)?;
    }
    // File-backed memory: a named memfd, or (shared, not PFN) an unnamed
    // shmem file. Its pages come from the page cache, base pages only.
    // An fd's file is held until the VMA (or the error) is in place.
    struct Hold(u32);
    impl Drop for Hold {
        fn drop(&mut self) {
            super::shmem::vma_put(self.0);
        }
    }
    let mut _hold = None;
    let (file, pgoff) = match (&a.memfd, a.file, a.shared && a.pfn.is_none()) {
        (_, Some((id, pgoff)), _) => {
            let f = super::shmem::get_hold(id).ok_or(MmError::NoSuchFile)?;
            _hold = Some(Hold(id));
            (Some(f), pgoff)
        }
        (Some(name), None, _) => (Some(super::shmem::open(name)?), 0),
        (None, None, true) => (Some(super::shmem::create_anon()?), 0),
        (None, None, false) => (None, 0),
    };
    if file.is_some() && (a.pfn.is_some() || a.folio_order != 0) {
        return Err(MmError::FileOptions);
    }
    if let Some(f) = &file
        && a.file.is_none()
    {
        f.grow(size)?;
    }
    let file = file.map_or(0, |f| f.id);
    let vma = Vma {
        start: va,
        end,
        flags,
        folio_order: if a.pfn.is_some() || file != 0 { 0 } else { a.folio_order },
        file,
        pgoff,
        anon_vma: 0,
    };
    let inserted = {
        let mut g = mm.mmap_write_lock();
        g.try_reserve(1).map(|()| g.insert(vma))
    };
    if inserted != Ok(true) {
        if file != 0 {
            // Frees a new unnamed file again (nothing maps it).
            super::shmem::vma_get(file);
            super::shmem::vma_put(file);
        }
        return Err(inserted.err().unwrap_or(MmError::Overlap { addr: va }));
    }
    if let Some(pfn) = a.pfn
        && let Err(e) = memory::remap_pfn_range(mt, &vma, pfn)
    {
        // Undo what remap_pfn_range wrote. Unarmed: cleanup is no
        // allocation to inject failures into, and a zap of special
        // entries only (no pages, no blocks) needs none that can fail.
        // Should it fail all the same, the VMA stays over its entries.
        match super::fail_alloc::unarmed(|| {
            memory::zap_page_range(
                mt,
                va,
                size,
                &memory::ZapDetails { zap_flags: memory::ZAP_FLAG_DROP_MARKER, vma: None },
            )
        }) {
            Ok(()) => {
                mm.mmap_write_lock().remove(va);
            }
            Err(z) => {
                log::error!("mm {:#x}: mmap pfn= failed ({e}) and so did its cleanup ({z})", mm.pgd.as_u64());
                mm.free_area.store((end + PAGE_SIZE).as_u64(), Ordering::Relaxed);
            }
        }
        return Err(e);
    }
    // Leave a guard gap between regions.
    mm.free_area.store((end + PAGE_SIZE).as_u64(), Ordering::Relaxed);
    Ok((va, size))
}

/// Linux `do_munmap` (`do_vmi_munmap`): removes the VMAs in `[va, va+len)`
/// (splitting those cut by the range) and zaps what was mapped. The sealed
/// range is refused.
pub fn do_munmap(mt: MmTables<'_>, va: VirtAddr, len: u64) -> Result<(), MmError> {
    check_user_range(va, len)?;
    let end = va + len;
    let mut vmas = mt.mm.mmap_write_lock();
    if mt.mm.is_sealed(va, end) {
        return Err(MmError::Sealed);
    }
    let n = vmas.splits_needed(va, end);
    vmas.try_reserve(n)?;
    vmas.split_at(va);
    vmas.split_at(end);
    // The VMAs go: their uffd-wp state with them.
    memory::zap_page_range(mt, va, len, &memory::ZapDetails { zap_flags: memory::ZAP_FLAG_DROP_MARKER, vma: None })?;
    // One at a time: no list to allocate.
    loop {
        let Some(s) = vmas.inside(va, end).map(|v| v.start).next() else { break };
        vmas.remove(s);
    }
    Ok(())
}

/// Checks that every page of `[va, va+len)` is in some VMA (Linux: -ENOMEM
/// otherwise), then splits the VMAs at both ends (Linux `split_vma`).
pub(super) fn split_covered(vmas: &mut MmapWriteGuard<'_>, va: VirtAddr, len: u64) -> Result<(), MmError> {
    if let Some(addr) = first_hole(vmas, va, len) {
        return Err(MmError::NotMapped { addr });
    }
    let n = vmas.splits_needed(va, va + len);
    vmas.try_reserve(n)?;
    vmas.split_at(va);
    vmas.split_at(va + len);
    Ok(())
}

/// Whether every page of `[va, va+len)` lies in some VMA of `mm`.
pub fn range_covered(mm: &super::mm_struct::MmStruct, va: VirtAddr, len: u64) -> bool {
    first_hole(mm.mmap_read_lock().vmas(), va, len).is_none()
}

/// The first address of `[va, va+len)` that lies in no VMA.
fn first_hole(vmas: &super::mm_struct::VmaList, va: VirtAddr, len: u64) -> Option<VirtAddr> {
    let mut a = va;
    while a < va + len {
        match vmas.find(a) {
            Some(v) => a = v.end,
            None => return Some(a),
        }
    }
    None
}
