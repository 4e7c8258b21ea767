//! Truncating and hole-punching memfd/shmem files (Linux `mm/truncate.c`,
//! `shmem_setattr`, `shmem_fallocate(FALLOC_FL_PUNCH_HOLE)`).
//!
//! Both go the way Linux does: the pages are first unmapped from every
//! mapping of the file ([`unmap_mapping_range`], over the file's mapping
//! tree), then each page leaves the page cache under its folio lock
//! (waiting for a migration that holds it), and is unmapped once more if
//! a fault mapped it in between. Only that last unmap drops uffd-wp state
//! (seed 004); the first pass leaves markers, as Linux's does. A fault after that finds no page:
//! past the end of the file it is refused (Linux SIGBUS), in a hole it
//! gets a new zeroed page. Partial pages at the edges are zeroed.
//!
//! Truncation also removes private COW copies past the new end (Linux's
//! `even_cows`); a punched hole leaves them, as Linux does, whether they
//! are mapped, in swap or being migrated.

use super::addr::VirtAddr;
use super::desc::{Kind, NonPresent};
use super::error::MmError;
use super::memory::{self, MmTables};
use super::mm_struct::{MmapLocked, VmFlags, Vma};
use super::page;
use super::shmem::Memfd;
use crate::arch::aarch64::granule::{GRANULE, PAGE_SIZE};

/// `memfd F truncate SIZE`: sets the size; pages past it go from every
/// mapping and from the page cache.
pub fn truncate(file: &Memfd, size: u64) -> Result<(), MmError> {
    let old = file.size();
    file.set_size(size)?;
    if size >= old {
        return Ok(());
    }
    let first = size.div_ceil(PAGE_SIZE);
    unmap_mapping_range(file, first, u64::MAX, true, 0)?;
    drop_cached(file, first, u64::MAX)?;
    file.free_swapped_in(first, u64::MAX);
    if !size.is_multiple_of(PAGE_SIZE)
        && let Some(f) = file.get_folio_read(size / PAGE_SIZE)
    {
        page::zero_range(f.pa(), size % PAGE_SIZE, PAGE_SIZE - size % PAGE_SIZE);
        f.put();
    }
    Ok(())
}

/// `memfd F punch OFF:LEN`: the whole pages of the range go from every
/// mapping (private COW copies stay) and from the page cache; the partial
/// pages at its edges are zeroed in the range.
pub fn punch_hole(file: &Memfd, off: u64, len: u64) -> Result<(), MmError> {
    let end = off.checked_add(len).ok_or(MmError::OutOfRange { addr: VirtAddr::new(off), len })?.min(file.size());
    if off >= end {
        return Ok(());
    }
    let (first, last) = (off.div_ceil(PAGE_SIZE), end / PAGE_SIZE);
    if first < last {
        unmap_mapping_range(file, first, last, false, 0)?;
        drop_cached(file, first, last)?;
        file.free_swapped_in(first, last);
    }
    // The partial pages at either edge: zeroed where the range covers them.
    for pg in [off / PAGE_SIZE, end / PAGE_SIZE] {
        let (s, e) = ((pg * PAGE_SIZE).max(off), ((pg + 1) * PAGE_SIZE).min(end));
        if s < e
            && (!s.is_multiple_of(PAGE_SIZE) || !e.is_multiple_of(PAGE_SIZE))
            && let Some(f) = file.get_folio_read(pg)
        {
            page::zero_range(f.pa(), s % PAGE_SIZE, e - s);
            f.put();
        }
    }
    Ok(())
}

/// Linux `unmap_mapping_range` of file pages `[first, last)`: zaps them in
/// every VMA of every mm that maps the file. In a private mapping only the
/// file's own pages go unless `even_cows` (truncation), and the anon COW
/// copies stay. `zap_flags` is [`memory::ZAP_FLAG_DROP_MARKER`] only under
/// the folio lock of the page going (seed 004: before it a fault may still
/// write the page, so its uffd-wp markers must stay).
fn unmap_mapping_range(file: &Memfd, first: u64, last: u64, even_cows: bool, zap_flags: u32) -> Result<(), MmError> {
    let mut r = Ok(());
    super::rmap::for_each_file_mm(file.id, &mut |mt| {
        if r.is_ok() {
            r = unmap_mapping_mm(mt, file.id, first, last, even_cows, zap_flags);
        }
    });
    r
}

fn unmap_mapping_mm(
    mt: MmTables<'_>,
    id: u32,
    first: u64,
    last: u64,
    even_cows: bool,
    zap_flags: u32,
) -> Result<(), MmError> {
    let g = mt.mm.mmap_read_lock();
    let vmas: alloc::vec::Vec<Vma> = g.vmas().iter().filter(|v| v.file == id).copied().collect();
    for v in vmas {
        let npages = (v.end - v.start) / PAGE_SIZE;
        let (s, e) = (first.max(v.pgoff), last.min(v.pgoff + npages));
        if s >= e {
            continue;
        }
        let (va, len) = (v.start + (s - v.pgoff) * PAGE_SIZE, (e - s) * PAGE_SIZE);
        let details = memory::ZapDetails { zap_flags, vma: Some(&v) };
        if even_cows || v.flags.contains(VmFlags::SHARED) {
            memory::zap_page_range(mt, va, len, &details)?;
            continue;
        }
        // A private mapping: only entries that are not anon COW copies.
        for i in 0..len / PAGE_SIZE {
            let a = va + i * PAGE_SIZE;
            if !maps_anon(mt, a) {
                memory::zap_page_range(mt, a, PAGE_SIZE, &details)?;
            }
        }
    }
    Ok(())
}

/// Whether `va` holds a private COW copy: an anonymous page, mapped, in
/// swap, or being migrated (Linux `zap_nonpresent_ptes` keeps swap and
/// anon migration entries unless `even_cows`).
fn maps_anon(mt: MmTables<'_>, va: VirtAddr) -> bool {
    let ptl = mt.mm.page_table_lock_guard();
    let mut mem = mt.mem.lock();
    let is_anon = |pa| page::phys_to_page(pa).and_then(|p| p.folio()).is_some_and(|f| f.is_anon());
    super::memory::pte_lookup(&ptl, &mut mem, va, false).is_some_and(|s| match s.get().kind(3, GRANULE) {
        Kind::Leaf(pa) | Kind::NonPresent(NonPresent::Migration { pa, .. }) => is_anon(pa),
        Kind::NonPresent(NonPresent::Swap { .. }) => true,
        _ => false,
    })
}

/// Linux `truncate_inode_pages_range`: each cached page of `[first, last)`
/// leaves the cache under its folio lock, then any mapping a fault made
/// meanwhile goes too.
fn drop_cached(file: &Memfd, first: u64, last: u64) -> Result<(), MmError> {
    for pgoff in file.cached_in(first, last) {
        while let Some(pa) = file.lookup(pgoff) {
            let Some(f) = page::phys_to_page(pa).and_then(|p| p.folio()) else { break };
            if !f.trylock() {
                // A migration holds it (Linux `folio_lock` sleeps here).
                core::hint::spin_loop();
                continue;
            }
            if !file.remove_cached(pgoff, pa) {
                f.unlock();
                continue;
            }
            // Linux `truncate_cleanup_folio`: only a folio a fault mapped
            // again since the first pass is unmapped here, dropping its
            // uffd-wp state; markers that pass left stay (seed 004).
            let r = if f.mapcount() > 0 {
                unmap_mapping_range(file, pgoff, pgoff + 1, false, memory::ZAP_FLAG_DROP_MARKER)
            } else {
                Ok(())
            };
            f.unlock();
            page::folio_remove_from_cache(f);
            r?;
            break;
        }
    }
    Ok(())
}
