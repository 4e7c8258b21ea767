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

use alloc::string::String;
use alloc::vec::Vec;

use spin::Mutex;

use super::addr::{PhysAddr, VirtAddr};
use super::desc::{Desc, Kind, LeafAttrs, AP_EL0, AP_RDONLY};
use super::granule::{GRANULE, PAGE_SIZE, START_LEVEL};
use super::kmap::FrameTableMem;
use super::mm_struct::{MmStruct, Vma, VmFlags};
use super::page::{self, copy_page, folio_add_new_anon_rmap_pte, folio_remove_rmap_pte, Folio};
use super::pgtable::live::Live;
use super::pgtable::{Tables, Translation};
use super::tlb::KernelFlush;

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
fn maybe_mkwrite(d: Desc, vma: &Vma) -> Desc {
    if vma.flags.contains(VmFlags::WRITE) { d.mkwrite() } else { d }
}

/// Whether the VMA allows the access at all (Linux `access_error`).
pub fn access_ok(vma: &Vma, write: bool) -> bool {
    if vma.flags.contains(VmFlags::PFNMAP) {
        return false;
    }
    if write { vma.flags.contains(VmFlags::WRITE) } else { vma.flags.contains(VmFlags::READ) }
}

/// Linux `handle_mm_fault` for a page of a private anonymous VMA. The
/// caller has checked the VMA allows the access ([`access_ok`]).
pub fn handle_mm_fault(mt: MmTables<'_>, vma: &Vma, addr: u64, flags: FaultFlags) -> VmFault {
    let va = addr & !(PAGE_SIZE - 1);
    let _ptl = mt.mm.page_table_lock_guard();
    let mut mem = mt.mem.lock();
    let mut t = Tables::new(mt.mm.pgd, GRANULE, START_LEVEL, &mut *mem);
    match t.translate(VirtAddr(va)) {
        Translation::Fault { .. } => do_anonymous_page(&mut t, vma, va, flags),
        Translation::Mapped { level, desc, pa } => {
            if level != 3 {
                // Block-mapped user memory arrives with THP.
                return VmFault::Sigsegv;
            }
            if flags.write || flags.unshare {
                if flags.write && desc.user_writable() {
                    return spurious(mt.mm, va);
                }
                do_wp_page(mt.mm, &mut t, vma, va, desc, pa, flags)
            } else if desc.perms().el0 {
                spurious(mt.mm, va)
            } else {
                VmFault::Sigsegv
            }
        }
    }
}

/// The entry already allows the access (another path fixed it, or a stale
/// TLB entry): drop the stale translation and retry.
fn spurious(mm: &MmStruct, va: u64) -> VmFault {
    crate::arch::aarch64::cpu::tlbi_page_local(va, mm.asid());
    VmFault::Done
}

/// Linux `do_anonymous_page`: a read maps the shared zero page read-only
/// (special: no refcount, no mapcount); a write gets a new zeroed folio,
/// exclusive to this mm.
fn do_anonymous_page(t: &mut Tables<'_, FrameTableMem>, vma: &Vma, va: u64, flags: FaultFlags) -> VmFault {
    if !flags.write {
        let d = Desc::leaf(page::zero_page(), 3, LeafAttrs { special: true, ..vm_page_prot(vma) });
        return install_new(t, va, d);
    }
    let Some(folio) = page::folio_alloc_anon(0) else { return VmFault::Oom };
    folio_add_new_anon_rmap_pte(folio.head());
    let d = maybe_mkwrite(Desc::leaf(folio.pa(), 3, vm_page_prot(vma)), vma).mkdirty();
    match install_new(t, va, d) {
        VmFault::Done => VmFault::Done,
        other => {
            folio_remove_rmap_pte(folio.head());
            folio.put();
            other
        }
    }
}

/// Writes an entry into a hole. Invalid to valid needs no TLBI, only
/// visibility to the table walker.
fn install_new(t: &mut Tables<'_, FrameTableMem>, va: u64, d: Desc) -> VmFault {
    match t.set_leaf(VirtAddr(va), 3, d) {
        Ok(()) => {
            crate::arch::aarch64::cpu::publish_tables();
            VmFault::Done
        }
        Err(super::pgtable::MapError::OutOfMemory) => VmFault::Oom,
        Err(_) => VmFault::Sigsegv,
    }
}

/// Linux `do_wp_page`: a write (or unshare) fault on a present read-only
/// entry of a VMA that allows it.
fn do_wp_page(mm: &MmStruct, t: &mut Tables<'_, FrameTableMem>, vma: &Vma, va: u64, desc: Desc, pa: PhysAddr, flags: FaultFlags) -> VmFault {
    if desc.special() {
        if page::is_zero_pfn(pa) {
            return wp_page_copy(mm, t, vma, va, desc, None, flags);
        }
        return VmFault::Sigsegv; // PFN mappings: no struct page to copy from
    }
    let Some(pg) = page::pfn_to_page(pa) else { return VmFault::Sigsegv };
    let Some(folio) = pg.folio() else { return VmFault::Sigsegv };
    if folio.is_anon() {
        if pg.anon_exclusive() {
            return wp_page_reuse(mm, t, vma, va, desc, flags);
        }
        // Linux `wp_can_reuse_anon_folio`: a small folio nobody else holds
        // a reference to (no other mapping, no GUP reference) is ours.
        if !folio.is_large() && folio.refcount() == 1 && folio.mapcount() == 1 {
            pg.set_anon_exclusive();
            return wp_page_reuse(mm, t, vma, va, desc, flags);
        }
    }
    wp_page_copy(mm, t, vma, va, desc, Some(folio_page(folio, pa)), flags)
}

fn folio_page(folio: Folio, pa: PhysAddr) -> &'static page::Page {
    folio.page((pa.0 - folio.pa().0) / PAGE_SIZE)
}

/// Linux `wp_page_reuse`: the page stays; the entry becomes writable
/// (a permission-only change: no break-before-make, but the old read-only
/// translation must leave the TLB).
fn wp_page_reuse(mm: &MmStruct, t: &mut Tables<'_, FrameTableMem>, vma: &Vma, va: u64, desc: Desc, flags: FaultFlags) -> VmFault {
    if flags.unshare {
        return VmFault::Done; // exclusive already; R/O stays R/O
    }
    let new = maybe_mkwrite(desc, vma).mkdirty();
    replace(mm, t, va, new)
}

/// Linux `wp_page_copy`: a new exclusive page with the old contents (or
/// zeroes for the zero page) replaces the entry - a change of output
/// address, so break-before-make - and the old page loses a mapping and a
/// reference.
fn wp_page_copy(
    mm: &MmStruct,
    t: &mut Tables<'_, FrameTableMem>,
    vma: &Vma,
    va: u64,
    desc: Desc,
    old: Option<&'static page::Page>,
    flags: FaultFlags,
) -> VmFault {
    let new = match old {
        None => page::folio_alloc_anon(0),
        Some(o) => page::folio_alloc_anon_nozero(0).inspect(|n| copy_page(n.pa(), o.pa())),
    };
    let Some(new) = new else { return VmFault::Oom };
    folio_add_new_anon_rmap_pte(new.head());
    let mut d = Desc::leaf(new.pa(), 3, vm_page_prot(vma));
    // Keep the attributes the entry had (EL0 access, uffd-wp...).
    d = Desc((d.0 & !(AP_EL0 | AP_RDONLY)) | (desc.0 & (AP_EL0 | AP_RDONLY)) | (desc.0 & (1 << 57)));
    d = d.wrprotect();
    if !flags.unshare {
        d = maybe_mkwrite(d, vma).mkdirty();
    }
    match replace(mm, t, va, d) {
        VmFault::Done => {
            if let Some(o) = old {
                folio_remove_rmap_pte(o);
                o.folio().expect("old page lost its folio").put();
            }
            VmFault::Done
        }
        other => {
            folio_remove_rmap_pte(new.head());
            new.put();
            other
        }
    }
}

/// Replaces a live level-3 entry with BBM where needed and the ASID's TLBI.
fn replace(mm: &MmStruct, t: &mut Tables<'_, FrameTableMem>, va: u64, d: Desc) -> VmFault {
    let mut fl = KernelFlush;
    let mut l = Live::new(t, Some(mm.asid()), &mut fl);
    let r = l.replace(va, 3, d);
    let det = l.finish();
    debug_assert!(det.0.is_empty());
    match r {
        Ok(()) => VmFault::Done,
        Err(super::pgtable::MapError::OutOfMemory) => VmFault::Oom,
        Err(_) => VmFault::Sigsegv,
    }
}

/// Linux `copy_page_range` for one private anonymous (or special) VMA at
/// fork. The parent's writable anon entries become read-only (COW) and
/// lose `PageAnonExclusive`; exclusive pages of maybe-pinned folios are
/// copied for the child at once (Linux `copy_present_page`); special
/// entries (zero page, PFN) are copied as they are.
pub fn copy_page_range(src: MmTables<'_>, dst: MmTables<'_>, vma: &Vma) -> Result<(), String> {
    let _sp = src.mm.page_table_lock_guard();
    let mut smem = src.mem.lock();
    let mut dmem = dst.mem.lock();
    let mut st = Tables::new(src.mm.pgd, GRANULE, START_LEVEL, &mut *smem);
    let mut dt = Tables::new(dst.mm.pgd, GRANULE, START_LEVEL, &mut *dmem);
    let mut fl = KernelFlush;
    let mut sl = Live::new(&mut st, Some(src.mm.asid()), &mut fl);
    // Linux raw_write_seqcount_begin(&src_mm->write_protect_seq): GUP-fast
    // pins taken meanwhile are undone and retried on the slow path.
    src.mm.write_protect_seq.fetch_add(1, core::sync::atomic::Ordering::AcqRel);
    let mut result = Ok(());
    let mut va = vma.start;
    while va < vma.end {
        let (level, desc, pa) = match sl.t.translate(VirtAddr(va)) {
            Translation::Mapped { level, desc, pa } => (level, desc, pa),
            Translation::Fault { level, desc } => {
                // Skip the whole hole at that level.
                let sz = GRANULE.level_size(level);
                if desc.0 != 0 {
                    result = Err(alloc::format!("non-present entry {desc:?} at {va:#x}: not supported by fork yet"));
                    break;
                }
                va = (va & !(sz - 1)) + sz;
                continue;
            }
        };
        if level != 3 {
            result = Err(alloc::format!("block mapping at {va:#x}: fork of THP arrives with large folios"));
            break;
        }
        let child = if desc.special() {
            desc
        } else {
            let Some(pg) = page::pfn_to_page(pa) else {
                result = Err(alloc::format!("{va:#x} maps {pa:#x}, outside RAM, without the special bit"));
                break;
            };
            let folio = pg.folio().expect("mapped anon page without a folio");
            if page::folio_try_dup_anon_rmap_pte(folio, pg) {
                if !desc.perms().read_only {
                    if let Err(e) = sl.replace(va, 3, desc.wrprotect()) {
                        result = Err(alloc::format!("write-protecting {va:#x}: {e:?}"));
                        break;
                    }
                }
                desc.wrprotect()
            } else {
                // Maybe pinned and exclusive: the child gets its own copy now.
                let Some(new) = page::folio_alloc_anon_nozero(0) else {
                    result = Err("out of memory copying a pinned page for the child".into());
                    break;
                };
                copy_page(new.pa(), pa);
                folio_add_new_anon_rmap_pte(new.head());
                Desc((desc.0 & !0x0000_ffff_ffff_f000) | new.pa().0)
            }
        };
        if let Err(e) = dt.set_leaf(VirtAddr(va), 3, child) {
            // Undo what the child would have held.
            if !child.special() {
                if let Some(pg) = page::pfn_to_page(PhysAddr(child.0 & 0x0000_ffff_ffff_f000)) {
                    folio_remove_rmap_pte(pg);
                    pg.folio().unwrap().put();
                }
            }
            result = Err(alloc::format!("child tables at {va:#x}: {e:?}"));
            break;
        }
        va += PAGE_SIZE;
    }
    // The parent's write-protections must reach the TLBs before the child
    // (or the parent) writes through a stale writable entry.
    let det = sl.finish();
    debug_assert!(det.0.is_empty());
    src.mm.write_protect_seq.fetch_add(1, core::sync::atomic::Ordering::AcqRel);
    crate::arch::aarch64::cpu::publish_tables();
    result
}

/// The zap side of munmap/madvise(DONTNEED)/exit: removes every entry in
/// `[va, va+len)` with BBM and the TLB flush, frees the tables left empty
/// and only then drops the pages' mappings and references.
pub fn zap_page_range(mt: MmTables<'_>, va: u64, len: u64) -> Result<(), String> {
    let _ptl = mt.mm.page_table_lock_guard();
    let mut mem = mt.mem.lock();
    let mut pages: Vec<PhysAddr> = Vec::new();
    {
        let t = Tables::new(mt.mm.pgd, GRANULE, START_LEVEL, &mut *mem);
        let mut err = None;
        t.walk_range(va, va + len, &mut |e| {
            if let Kind::Leaf(pa) = e.kind {
                if !e.desc.special() {
                    if e.size != PAGE_SIZE {
                        err = Some(alloc::format!("block mapping at {:#x}: zap of THP arrives with large folios", e.va.0));
                    } else if pages.try_reserve(1).is_err() {
                        err = Some(String::from("out of memory while unmapping"));
                    } else {
                        pages.push(pa);
                    }
                }
            }
        });
        if let Some(e) = err {
            return Err(e);
        }
    }
    let detached = {
        let mut t = Tables::new(mt.mm.pgd, GRANULE, START_LEVEL, &mut *mem);
        let mut fl = KernelFlush;
        let mut l = Live::new(&mut t, Some(mt.mm.asid()), &mut fl);
        let r = l.unmap(va, len).map_err(|e| alloc::format!("{e:?}"));
        let d = l.finish();
        r.map(|_| d)
    }?;
    for pa in detached.0 {
        mem.free(pa);
    }
    for pa in pages {
        put_mapped_page(pa);
    }
    Ok(())
}

/// Drops one mapping of the page at `pa` and the reference it held.
pub fn put_mapped_page(pa: PhysAddr) {
    let pg = page::pfn_to_page(pa).expect("mapped page outside RAM");
    let folio = pg.folio().expect("mapped page without a folio");
    folio_remove_rmap_pte(pg);
    folio.put();
}

/// Linux `change_protection` for mprotect: EL0 access and read-only per the
/// new protection; a private anon entry is made writable only where its
/// page is exclusive (Linux `can_change_pte_writable`). Others stay
/// read-only and are COWed (or reused) by the next write fault.
pub fn change_protection(mt: MmTables<'_>, va: u64, len: u64, readable: bool, writable: bool) -> Result<(), String> {
    let _ptl = mt.mm.page_table_lock_guard();
    let mut mem = mt.mem.lock();
    let mut t = Tables::new(mt.mm.pgd, GRANULE, START_LEVEL, &mut *mem);
    let mut fl = KernelFlush;
    let mut l = Live::new(&mut t, Some(mt.mm.asid()), &mut fl);
    // First every entry: read-only, EL0 access as the protection says.
    let (set, clear) = if readable || writable { (AP_EL0 | AP_RDONLY, 0) } else { (AP_RDONLY, AP_EL0) };
    let mut r = l.protect(va, len, set, clear).map_err(|e| alloc::format!("{e:?}"));
    if r.is_ok() && writable {
        // The read-only step's invalidations first: Live refuses to write
        // entries over ranges still waiting for their TLBI.
        l.sync();
        let mut a = va;
        while a < va + len {
            if let Translation::Mapped { level: 3, desc, pa } = l.t.translate(VirtAddr(a)) {
                let exclusive = !desc.special() && page::pfn_to_page(pa).is_some_and(|p| p.anon_exclusive());
                if exclusive {
                    if let Err(e) = l.replace(a, 3, desc.mkwrite()) {
                        r = Err(alloc::format!("{e:?}"));
                        break;
                    }
                }
            }
            a += PAGE_SIZE;
        }
    }
    let d = l.finish();
    drop(t);
    for pa in d.0 {
        mem.free(pa);
    }
    r
}
