//! Page migration (Linux `mm/migrate.c`, `move_pages` with
//! `MPOL_MF_MOVE_ALL`): every folio mapped in a range moves to new frames,
//! for every process that maps it.
//!
//! Per folio ([`migrate_folio`]), as Linux's `migrate_folio_unmap` and
//! `migrate_folio_move`:
//! 1. lock it (`pg::LOCKED`); a pinned folio (`folio_maybe_dma_pinned`)
//!    stays, as Linux refuses it;
//! 2. [`try_to_migrate`]: through the reverse map, every entry that maps it
//!    becomes a migration entry by break-before-make (the TLBI is inside
//!    the break). The entry's kind says what comes back: `Write` for a
//!    writable entry, `ReadExclusive` for a read-only `PageAnonExclusive`
//!    page, `Read` otherwise; it also keeps dirty, young and uffd-wp. A
//!    level-2 block is split first (`split_huge_pmd`), so a THP moves whole
//!    as a PTE-mapped folio of the same order; contiguous runs are unfolded;
//! 3. the references must be exactly the ones migration explains (its own,
//!    and the page cache's): an extra one is a GUP in flight, and every
//!    entry goes back to the old folio ([`remove_migration_ptes`] onto
//!    itself); the folio stays;
//! 4. the data is copied to a new folio of the same order; a page-cache
//!    folio is replaced in its file under the cache lock
//!    (`Memfd::migrate_folio`, which re-checks the references there);
//! 5. [`remove_migration_ptes`] turns each migration entry into an entry
//!    of the new folio with its state back (exclusive, writable, dirty,
//!    young, uffd-wp). The contiguous bit does not come back: mprotect
//!    folds runs again (`contpte_try_fold`);
//! 6. both folios are unlocked; the old one goes with its last reference.
//!
//! A fault on a migration entry waits ([`migration_entry_wait`]): it drops
//! the page-table lock, waits until the entry changes, and the access
//! retries. GUP's slow path does the same through the fault; GUP-fast
//! stops at the non-present entry. fork copies migration entries
//! ([`copy_nonpresent_pte`]); zap clears them (they hold no reference).
//!
//! A 1G folio (`thp=1G`, one level-1 block) is not moved: it stays and is
//! counted with the pages that stayed.

use alloc::collections::{BTreeMap, BTreeSet};
use alloc::vec::Vec;
use core::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use super::addr::VirtAddr;
use super::desc::{Desc, Kind, MigrationKind, NonPresent, UFFD_WP_BIT};
use super::error::{MmError, Need};
use super::memory::{self, MmTables, VmFault};
use super::mm_struct::MmapLocked;
use super::page::{self, Folio};
use super::pgtable::{Stage1User, Tables, Translation};
use super::rmap::{self, Hit, RmapTarget, Want};
use super::tlb::KernelFlush;
use crate::arch::aarch64::granule::{GRANULE, PAGE_SIZE, USER_START_LEVEL};

/// Test hook: while set, a migration holds between unmapping its folio
/// and remapping it (Linux has no such knob; the tests need the window).
pub static HOLD: AtomicBool = AtomicBool::new(false);
/// Folios that reached the [`HOLD`] point (tests wait for it).
pub static HELD: AtomicU64 = AtomicU64::new(0);
/// Faults that waited on a migration entry ([`migration_entry_wait`]).
pub static WAITS: AtomicU64 = AtomicU64::new(0);
/// Pages moved since boot (for the benchmark).
pub static MOVED: AtomicU64 = AtomicU64::new(0);
/// The folios migrations hold a reference to (isolated), by head PA: the
/// references `invariants` must count besides mappings, pins and GUP.
static ISOLATED: spin::Mutex<BTreeMap<u64, u32>> = spin::Mutex::new(BTreeMap::new());

/// References migrations hold on `f` (for `invariants`).
pub fn isolated(f: Folio) -> u32 {
    ISOLATED.lock().get(&f.pa().as_u64()).copied().unwrap_or(0)
}

/// Gives back the isolation reference of `f`.
fn putback(f: Folio) {
    let mut l = ISOLATED.lock();
    if let Some(n) = l.get_mut(&f.pa().as_u64()) {
        *n -= 1;
        if *n == 0 {
            l.remove(&f.pa().as_u64());
        }
    }
    drop(l);
    f.put();
}

/// Why a folio stayed where it was.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stay {
    /// Maybe DMA-pinned (Linux: -EBUSY from `migrate_pages`).
    Pinned,
    /// References the mappings and the page cache do not explain (GUP in
    /// flight), or another migration holds its lock.
    Busy,
    /// A 1G folio (not moved).
    TooLarge,
    /// No memory for the new folio.
    NoMemory,
}

/// `P migrate RANGE`: moves every folio mapped in `[start, start+len)` of
/// `mt` (and wherever else it is mapped). Returns the pages moved, or
/// [`MmError::PagesStayed`] if some stayed, or out of memory if one stayed
/// for lack of memory (Linux `move_pages`: -ENOMEM, which a caller retries).
pub fn migrate_range(mt: MmTables<'_>, start: VirtAddr, len: u64) -> Result<u64, MmError> {
    let folios = isolate(mt, start, start + len)?;
    let (mut moved, mut stayed, mut pinned, mut oom) = (0, 0, 0, false);
    for f in folios {
        match migrate_folio(f) {
            Ok(()) => moved += f.nr_pages(),
            Err(why) => {
                stayed += f.nr_pages();
                pinned += if why == Stay::Pinned { f.nr_pages() } else { 0 };
                oom |= why == Stay::NoMemory;
            }
        }
        putback(f);
    }
    MOVED.fetch_add(moved, Ordering::Relaxed);
    match (stayed, oom) {
        (0, _) => Ok(moved),
        (_, true) => Err(MmError::NoMemory(Need::Frame)),
        _ => Err(MmError::PagesStayed { stayed, pinned }),
    }
}

/// Linux `add_page_for_migration`: the distinct folios mapped in the
/// range, each with a reference, found under the mmap lock, which is
/// dropped before anything moves (as `move_pages` does).
fn isolate(mt: MmTables<'_>, start: VirtAddr, end: VirtAddr) -> Result<Vec<Folio>, MmError> {
    let mut seen = BTreeSet::new();
    let mut out: Vec<Folio> = Vec::new();
    let g = mt.mm.mmap_read_lock();
    let _ptl = mt.mm.page_table_lock_guard();
    let mut mem = mt.mem.lock();
    let t = Tables::new(mt.mm.pgd, GRANULE, USER_START_LEVEL, &mut *mem);
    let mut va = start;
    while va < end {
        if super::error::heap_headroom(0).is_err() {
            out.into_iter().for_each(putback);
            return Err(MmError::NoMemory(Need::Heap));
        }
        let (step, pa) = match t.translate(va) {
            Translation::Mapped { desc, level, pa, .. } => {
                let size = GRANULE.level_size(level);
                ((va.align_down(size) + size) - va, (!desc.special()).then_some(pa))
            }
            Translation::Fault { level, .. } => {
                let size = GRANULE.level_size(level);
                ((va.align_down(size) + size) - va, None)
            }
        };
        if let Some(pa) = pa
            && g.vmas().find(va).is_some()
            && !page::is_zero_any(pa)
            && let Some(f) = page::phys_to_page(pa).and_then(|p| p.folio())
            && (f.is_anon() || f.in_page_cache())
            && seen.insert(f.pa().as_u64())
        {
            f.get();
            *ISOLATED.lock().entry(f.pa().as_u64()).or_insert(0) += 1;
            out.push(f);
        }
        va += step.max(PAGE_SIZE);
    }
    Ok(out)
}

/// Moves one folio (the caller holds a reference to it).
pub fn migrate_folio(old: Folio) -> Result<(), Stay> {
    if !old.trylock() {
        return Err(Stay::Busy);
    }
    let r = migrate_locked(old);
    old.unlock();
    r
}

fn migrate_locked(old: Folio) -> Result<(), Stay> {
    if old.order() > memory::max_folio_order() as u32 {
        return Err(Stay::TooLarge);
    }
    if old.maybe_dma_pinned() {
        return Err(Stay::Pinned);
    }
    let Some(t) = RmapTarget::of(old) else { return Err(Stay::Busy) };
    let file = !t.anon;
    if let Err(why) = try_to_migrate(old, t) {
        remove_migration_ptes(t, old);
        return Err(why);
    }
    // Ours, and the page cache's (Linux `folio_expected_refs`).
    let expected = 1 + file as u32;
    if old.refcount() != expected || old.mapcount() != 0 || old.maybe_dma_pinned() {
        remove_migration_ptes(t, old);
        return Err(Stay::Busy);
    }
    if HOLD.load(Ordering::Acquire) {
        HELD.fetch_add(1, Ordering::AcqRel);
        while HOLD.load(Ordering::Acquire) {
            core::hint::spin_loop();
        }
    }
    let new = if file { page::folio_alloc_file_nozero() } else { page::folio_alloc_anon_nozero(old.order()) };
    let Some(new) = new else {
        remove_migration_ptes(t, old);
        return Err(Stay::NoMemory);
    };
    let locked = new.trylock();
    debug_assert!(locked, "a new folio is locked by no one");
    for i in 0..old.nr_pages() {
        page::copy_page(new.page(i).pa(), old.page(i).pa());
    }
    if file {
        let moved = super::shmem::get(t.mapping).is_some_and(|f| f.migrate_folio(t.index, old, new, expected));
        if !moved {
            new.unlock();
            page::folio_remove_from_cache(new);
            remove_migration_ptes(t, old);
            return Err(Stay::Busy);
        }
    } else {
        new.set_mapping(t.mapping, t.index);
    }
    remove_migration_ptes(t, new);
    new.unlock();
    if !file {
        // The allocation's reference: the mappings hold their own.
        new.put();
    }
    Ok(())
}

/// Linux `try_to_migrate`: every entry mapping `folio` becomes a migration
/// entry; each mapping's mapcount and reference go. An error if one could
/// not be replaced (`NoMemory`: a block split without memory): the caller
/// puts back what was done.
fn try_to_migrate(folio: Folio, t: RmapTarget) -> Result<(), Stay> {
    let mut ok = true;
    let mut split_failed = false;
    rmap::rmap_walk(t, Want::Mapped, &mut |h: &mut Hit<'_, '_>| {
        if !ok {
            return;
        }
        if h.level == 2 {
            // A THP moves whole, PTE-mapped: split the block first.
            if super::huge_memory::split_huge_pmd(h.mm, h.mem, h.slot, h.va).is_err() {
                ok = false;
                split_failed = true;
                return;
            }
            for i in 0..folio.nr_pages() {
                let va = h.va + i * PAGE_SIZE;
                match super::memory::pte_lookup(h.ptl, h.mem, va, false) {
                    Some(slot) if slot.get().is_valid() => ok &= unmap_one(h.mm, slot, va, folio, i),
                    _ => ok = false,
                }
            }
        } else {
            ok &= unmap_one(h.mm, h.slot, h.va, folio, h.page);
        }
    });
    match (ok, split_failed) {
        (true, _) => Ok(()),
        (false, true) => Err(Stay::NoMemory),
        (false, false) => Err(Stay::Busy),
    }
}

/// One page entry to a migration entry (Linux `try_to_migrate_one`).
fn unmap_one(mm: &super::mm_struct::MmStruct, slot: super::pgtable::Pte, va: VirtAddr, folio: Folio, i: u64) -> bool {
    if memory::unfold_run(mm, slot, va).is_err() {
        return false;
    }
    let Ok(old) = slot.clear_flush(&Stage1User { asid: mm.asid() }, &mut KernelFlush, va, PAGE_SIZE) else {
        return false;
    };
    let pg = folio.page(i);
    let kind = if old.may_write() {
        MigrationKind::Write
    } else if folio.is_anon() && pg.anon_exclusive() {
        MigrationKind::ReadExclusive
    } else {
        MigrationKind::Read
    };
    let entry = NonPresent::Migration {
        pa: pg.pa(),
        kind,
        dirty: old.sw_dirty() || old.hw_dirty(),
        young: old.af(),
        uffd_wp: old.uffd_wp(),
    };
    if let Err(e) = slot.set_new(entry.encode()) {
        memory::pte_bug(e);
    }
    crate::arch::aarch64::cpu::publish_tables();
    page::folio_remove_rmap_pte(pg);
    folio.put();
    true
}

/// Linux `remove_migration_ptes`: every migration entry naming a page of
/// `t`'s folio becomes an entry of the same page of `new` (the old folio
/// itself when the move is called off), with the state the entry kept.
fn remove_migration_ptes(t: RmapTarget, new: Folio) {
    rmap::rmap_walk(t, Want::Migration, &mut |h: &mut Hit<'_, '_>| {
        let Kind::NonPresent(NonPresent::Migration { kind, dirty, young, uffd_wp, .. }) = h.desc.kind(3, GRANULE)
        else {
            return;
        };
        let pg = new.page(h.page);
        let mut d = Desc::leaf(pg.pa(), 3, memory::vm_page_prot(h.vma));
        if kind == MigrationKind::Write && !uffd_wp {
            // mprotect leaves migration entries alone: the VMA decides. An
            // entry with the uffd-wp bit never comes back writable.
            d = memory::maybe_mkwrite(d, h.vma);
        }
        if dirty {
            d = d.mkdirty();
        }
        d = if young { d.mkyoung() } else { d.mkold() };
        if uffd_wp {
            d = Desc(d.0 | UFFD_WP_BIT);
        }
        new.get();
        if t.anon {
            page::folio_add_anon_rmap_pte(pg);
            if kind != MigrationKind::Read {
                pg.set_anon_exclusive();
            }
        } else {
            page::folio_add_file_rmap_pte(pg);
        }
        if let Err(e) = h.slot.set_new(d) {
            memory::pte_bug(e);
        }
    });
    crate::arch::aarch64::cpu::publish_tables();
}

/// Linux `migration_entry_wait` for the fault path, which found `seen` at
/// `va` and dropped the page-table lock: waits until the entry changes
/// (the migration remapped it, or a zap cleared it); the access then
/// retries. GUP's slow path retries its lookup the same way.
#[cold]
#[inline(never)]
pub fn migration_entry_wait(mt: MmTables<'_>, va: VirtAddr, seen: Desc) -> VmFault {
    WAITS.fetch_add(1, Ordering::Relaxed);
    loop {
        for _ in 0..64 {
            core::hint::spin_loop();
        }
        let ptl = mt.mm.page_table_lock_guard();
        let mut mem = mt.mem.lock();
        if super::memory::pte_lookup(&ptl, &mut mem, va, false).map(|s| s.get()) != Some(seen) {
            return VmFault::Done;
        }
    }
}

/// Whether `d` is a migration entry.
#[inline(always)]
pub fn is_migration_entry(d: Desc) -> bool {
    matches!(d.kind(3, GRANULE), Kind::NonPresent(NonPresent::Migration { .. }))
}

/// Linux `copy_nonpresent_pte` for a migration entry at fork: the child
/// gets a copy; in a COW mapping (`cow`, Linux `is_cow_mapping`) a
/// writable or exclusive one becomes readable in both, so the page comes
/// back COW-shared. A shared mapping keeps it as it is. None: not an entry
/// fork copies.
#[cold]
#[inline(never)]
pub fn copy_nonpresent_pte(src: super::pgtable::Pte, d: Desc, cow: bool) -> Option<Desc> {
    let Kind::NonPresent(NonPresent::Migration { pa, kind, dirty, young, uffd_wp }) = d.kind(3, GRANULE) else {
        return None;
    };
    if kind == MigrationKind::Read || !cow {
        return Some(d);
    }
    let ro = NonPresent::Migration { pa, kind: MigrationKind::Read, dirty, young, uffd_wp }.encode();
    // Non-present to non-present: nothing a TLB holds changes.
    src.set_new(ro).ok()?;
    Some(ro)
}
