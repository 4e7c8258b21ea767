//! get_user_pages (Linux `mm/gup.c`): references (FOLL_GET) and pins
//! (FOLL_PIN) on the pages behind a user range, by the slow path under the
//! mmap lock (which faults pages in, breaks COW for FOLL_WRITE and unshares
//! for R/O pins) or the lockless fast path (IRQs off, atomic entry reads,
//! `folio_try_get`, entry re-check, and `mm->write_protect_seq` against a
//! concurrent fork), which falls back to the slow path for whatever it
//! cannot take.
//!
//! The console keeps what was taken as named handles (`P pin N ...`,
//! `P ref N ...`, `checkpin N`, `unpin N`); handles outlive munmap and exit.

use alloc::collections::BTreeMap;
use alloc::string::String;
use alloc::vec::Vec;
use core::sync::atomic::{AtomicU64, Ordering};

use spin::Mutex;

use super::addr::{PhysAddr, VirtAddr};
use super::desc::{Desc, Kind};
use super::error::GupError;
use super::layout::phys_to_virt;
use super::memory::{self, FaultFlags, MmTables, VmFault};
use super::mm_struct::{MmapLocked, VmFlags};
use super::page::{self, Folio, Page};
use super::pgtable::{TableMemory, Tables, Translation};
use crate::arch::aarch64::granule::{GRANULE, PAGE_SIZE, USER_START_LEVEL};

/// Linux `FOLL_*` flags that matter here.
#[derive(Clone, Copy, Debug, Default)]
pub struct Foll {
    pub write: bool,
    /// FOLL_PIN (else FOLL_GET).
    pub pin: bool,
    pub longterm: bool,
}

/// One page taken by GUP.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Taken {
    /// A page of a folio, with a reference or a pin on the folio.
    Page(PhysAddr),
    /// The shared zero page: never refcounted, nothing to drop.
    Zero,
}

/// Linux `gup_must_unshare`: a R/O pin must not pin a page that COW could
/// later replace under the process's feet - a shared anon page (always),
/// or for long-term pins the zero page or a page-cache page in a private
/// (COW) mapping. `cow`: whether the VMA is a COW mapping; None from
/// GUP-fast, which has no VMA and leaves a long-term pin of a non-anon page
/// to the slow path.
fn must_unshare(flags: Foll, pg: Option<&'static Page>, cow: Option<bool>) -> bool {
    if !flags.pin || flags.write {
        return false;
    }
    match pg.and_then(|p| p.folio().map(|f| (p, f))) {
        Some((p, f)) if f.is_anon() => !p.anon_exclusive(),
        // The zero page, or a file page.
        _ => flags.longterm && cow.unwrap_or(true),
    }
}

fn grab(f: Folio, flags: Foll) {
    if flags.pin { f.pin() } else { f.get() }
}

/// Drops what GUP took.
pub fn release(t: Taken, pin: bool) {
    if let Taken::Page(pa) = t {
        let f = page::phys_to_page(pa).and_then(|p| p.folio()).expect("GUP page lost its folio");
        if pin { f.unpin() } else { f.put() }
    }
}

/// Linux `__get_user_pages` (the slow path): for each page, look it up
/// under the page-table lock; fault it in (write fault for FOLL_WRITE,
/// unshare fault for R/O pins of shared pages) and retry until it can be
/// taken. On an error what was taken before it is released.
pub fn get_user_pages(
    mt: MmTables<'_>,
    lock: &impl MmapLocked,
    start: VirtAddr,
    nr: u64,
    flags: Foll,
) -> Result<Vec<Taken>, GupError> {
    let mut out: Vec<Taken> = Vec::new();
    for i in 0..nr {
        let va = start + i * PAGE_SIZE;
        match gup_one(mt, lock, va, flags) {
            Ok(t) => {
                if crate::mm::error::try_reserve(&mut out, 1).is_err() {
                    release(t, flags.pin);
                    undo(out, flags.pin);
                    return Err(GupError::NoMemory);
                }
                out.push(t)
            }
            Err(e) => {
                undo(out, flags.pin);
                return Err(e);
            }
        }
    }
    Ok(out)
}

fn undo(v: Vec<Taken>, pin: bool) {
    for t in v {
        release(t, pin);
    }
}

fn gup_one(mt: MmTables<'_>, lock: &impl MmapLocked, va: VirtAddr, flags: Foll) -> Result<Taken, GupError> {
    let vma = *lock.vmas().find(va).ok_or(GupError::NoVma { addr: va })?;
    // Linux check_vma_flags: no GUP on VM_IO/VM_PFNMAP.
    if vma.flags.contains(VmFlags::PFNMAP) || !memory::vma_access_permitted(&vma, flags.write) {
        return Err(GupError::VmaFlags { addr: va });
    }
    let no_page = GupError::NoPage { addr: va };
    let cow = !vma.flags.contains(VmFlags::SHARED);
    for _ in 0..4 {
        let need = {
            let _ptl = mt.mm.page_table_lock_guard();
            let mut mem = mt.mem.lock();
            let t = Tables::new(mt.mm.pgd, GRANULE, USER_START_LEVEL, &mut *mem);
            match t.translate(va) {
                Translation::Fault { .. } => Some(FaultFlags { write: flags.write, unshare: false }),
                Translation::Mapped { level, .. } if !(1..=3).contains(&level) => return Err(no_page),
                Translation::Mapped { desc, pa, .. } => {
                    // A page inside a block is taken like a page entry's.
                    let pa = pa.align_down(PAGE_SIZE);
                    if flags.write && !desc.user_writable() {
                        Some(FaultFlags { write: true, unshare: false })
                    } else if desc.special() {
                        if !page::is_zero_any(pa) {
                            return Err(no_page);
                        }
                        if must_unshare(flags, None, Some(cow)) {
                            Some(FaultFlags { write: false, unshare: true })
                        } else {
                            return Ok(Taken::Zero);
                        }
                    } else {
                        let pg = page::phys_to_page(pa).ok_or(no_page)?;
                        if must_unshare(flags, Some(pg), Some(cow)) {
                            Some(FaultFlags { write: false, unshare: true })
                        } else {
                            grab(pg.folio().ok_or(no_page)?, flags);
                            return Ok(Taken::Page(pa));
                        }
                    }
                }
            }
        };
        if let Some(ff) = need {
            match memory::handle_mm_fault(mt, &vma, va, ff) {
                VmFault::Done => {}
                // Reclaimed: the loop faults again.
                VmFault::Oom if crate::proc::direct_reclaim() => {}
                VmFault::Oom => return Err(GupError::NoMemory),
                VmFault::Sigsegv => return Err(GupError::Fault { addr: va }),
            }
        }
    }
    Err(GupError::Fault { addr: va })
}

/// Linux `gup_fast`: takes pages from the start of the range without the
/// mmap or page-table locks, with IRQs off, stopping at the first page it
/// cannot take safely (not present, special, not writable for FOLL_WRITE,
/// must be unshared). Returns what it took; the caller continues with the
/// slow path. Everything is given back if a fork write-protected the mm
/// meanwhile (`write_protect_seq` changed), as Linux does for FOLL_PIN.
pub fn gup_fast(mt: MmTables<'_>, start: VirtAddr, nr: u64, flags: Foll) -> Vec<Taken> {
    let mut out = Vec::new();
    if out.try_reserve(nr as usize).is_err() {
        return out;
    }
    let seq = mt.mm.write_protect_seq.load(Ordering::Acquire);
    if seq & 1 != 0 {
        return out;
    }
    let irq = crate::arch::aarch64::cpu::local_irq_save();
    {
        // No lock: only atomic reads of entries through the linear map.
        let mem = crate::mm::kernel_pgtable::FrameTableMem { tables: 0 };
        for i in 0..nr {
            let va = start + i * PAGE_SIZE;
            let Some(d) = lockless_leaf(&mem, mt.mm.pgd, va) else { break };
            let pa = d.output_address(PAGE_SIZE);
            let ok = d.perms().el0 && (!flags.write || d.user_writable()) && !d.special();
            if !ok {
                break;
            }
            let Some(pg) = page::phys_to_page(pa) else { break };
            let Some(folio) = pg.folio() else { break };
            if must_unshare(flags, Some(pg), None) || !folio.try_get() {
                break;
            }
            // Linux: the entry must not have changed while we took the ref.
            if lockless_leaf(&mem, mt.mm.pgd, va) != Some(d) {
                folio.put();
                break;
            }
            // Test hook: widens the window between the entry re-check and
            // the pin, the one that `write_protect_seq` closes against fork
            // (like Linux's fault-injection knobs; 0 outside that test).
            for _ in 0..RACE_WINDOW_SPINS.load(Ordering::Relaxed) {
                core::hint::spin_loop();
            }
            // No room to list it: drop it, the slow path takes it or fails.
            if crate::mm::error::try_reserve(&mut out, 1).is_err() {
                folio.put();
                break;
            }
            if flags.pin {
                // folio_try_grab(FOLL_PIN): the reference taken is the pin's.
                page::add_pin_ref_taken(folio);
            }
            out.push(Taken::Page(pa));
        }
    }
    drop(irq);
    if flags.pin && mt.mm.write_protect_seq.load(Ordering::Acquire) != seq {
        undo(core::mem::take(&mut out), true);
    }
    out
}

/// Spins GUP-fast makes between an entry's re-check and its pin (tests).
pub static RACE_WINDOW_SPINS: AtomicU64 = AtomicU64::new(0);

/// The level-3 entry for `va`, read without locks (Linux `gup_fast`:
/// atomic loads only; the caller re-reads it to check it did not change).
fn lockless_leaf(mem: &crate::mm::kernel_pgtable::FrameTableMem, pgd: PhysAddr, va: VirtAddr) -> Option<Desc> {
    let va = va.as_u64();
    let g = GRANULE;
    let mut table = pgd;
    for level in USER_START_LEVEL..=3 {
        // SAFETY: table pages are reachable through the linear map; with
        // IRQs off no table of this mm is freed under us on this CPU. A
        // load, never a store, and no reference outlives it.
        let d = Desc(unsafe { &*mem.table_ptr(table).add(g.index(va, level)) }.load(Ordering::Acquire));
        match d.kind(level, g) {
            Kind::Table(next) if level < 3 => table = next,
            Kind::Leaf(_) if level == 3 => return Some(d),
            _ => return None,
        }
    }
    None
}

/// A handle: what one `P pin` / `P ref` took.
pub struct Handle {
    pub pin: bool,
    pub pages: Vec<Taken>,
}

static HANDLES: Mutex<BTreeMap<String, Handle>> = Mutex::new(BTreeMap::new());

pub fn add_handle(name: &str, h: Handle) -> Result<(), Handle> {
    let mut g = HANDLES.lock();
    if g.contains_key(name) {
        return Err(h);
    }
    g.insert(name.into(), h);
    Ok(())
}

pub fn handle_exists(name: &str) -> bool {
    HANDLES.lock().contains_key(name)
}

/// `unpin N`: releases everything handle `name` holds.
pub fn drop_handle(name: &str) -> Result<usize, GupError> {
    let h = HANDLES.lock().remove(name).ok_or(GupError::NoSuchHandle)?;
    let n = h.pages.len();
    undo(h.pages, h.pin);
    Ok(n)
}

/// `checkpin N BYTE`: the kernel reads every byte of every page through the
/// handle (the linear map), as a device doing DMA would see it.
pub fn check_handle(name: &str, byte: u8) -> Result<Result<(), GupError>, GupError> {
    let g = HANDLES.lock();
    let h = g.get(name).ok_or(GupError::NoSuchHandle)?;
    for (i, t) in h.pages.iter().enumerate() {
        let pa = match t {
            Taken::Page(pa) => *pa,
            Taken::Zero => page::zero_page(),
        };
        // SAFETY: the handle holds the page; it is RAM in the linear map.
        let s = unsafe { core::slice::from_raw_parts(phys_to_virt(pa).as_u64() as *const u8, PAGE_SIZE as usize) };
        if let Some(off) = s.iter().position(|&b| b != byte) {
            return Ok(Err(GupError::Mismatch { page: i, pa, off, got: s[off], want: byte }));
        }
    }
    Ok(Ok(()))
}

/// FOLL_GET references (`pin` false) or FOLL_PIN pins (`pin` true) that
/// the handles hold on pages of `f` (for `invariants`).
pub fn held(f: Folio, pin: bool) -> u32 {
    let (lo, hi) = (f.pa().as_u64(), f.pa().as_u64() + f.size());
    HANDLES
        .lock()
        .values()
        .filter(|h| h.pin == pin)
        .flat_map(|h| h.pages.iter())
        .filter(|t| matches!(t, Taken::Page(pa) if pa.as_u64() >= lo && pa.as_u64() < hi))
        .count() as u32
}
