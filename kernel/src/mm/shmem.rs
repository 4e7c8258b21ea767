//! memfd / shmem: in-memory files (Linux `mm/shmem.c`, `memfd_create`).
//!
//! A [`Memfd`] is a page cache: file page offset -> an order-0 folio. A
//! cached folio carries `pg::FILE` and one reference that belongs to the
//! cache (Linux's page-cache reference); each mapping adds a mapcount and a
//! reference as for any page, and GUP pins it like any page.
//!
//! - **Named files** (`mmap ... memfd=F`) are created on first use,
//!   zero-filled, and grow to fit every mapping. They live as long as the
//!   kernel, like a tmpfs file the console keeps open, so their pages stay
//!   in the page cache when every mapping is gone.
//! - **Anonymous shared memory** (`mmap ... shared`, `MAP_SHARED |
//!   MAP_ANONYMOUS`) is an unnamed file, as Linux's `shmem_zero_setup`
//!   makes. It is freed when the last VMA that maps it goes away: VMAs
//!   count their file ([`vma_get`], [`vma_put`], from `VmaList`).
//!
//! - **Swap** (Linux `shmem_writeout`, `shmem_swapin_folio`): `madvise
//!   pageout` writes a page no mapping, pin or reference holds any more to
//!   a swap slot ([`Memfd::swap_out_page`]); the file then holds the swap
//!   entry where the page was, and the next lookup ([`Memfd::get_page`],
//!   from a fault) reads it back into a new page-cache folio and frees the
//!   slot.
//!
//! Locking: a file's page-cache lock nests inside the page-table lock of
//! whichever mm faults (the fault path looks pages up with the PTL held);
//! the swap lock nests inside it.

use alloc::collections::BTreeMap;
use alloc::string::String;
use alloc::sync::Arc;
use core::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering};

use spin::Mutex;

use super::addr::PhysAddr;
use super::desc::SwpEntry;
use super::error::MmError;
use super::page;
use super::swapfile::{self, SwapError};
use crate::arch::aarch64::granule::PAGE_SIZE;

pub struct Memfd {
    pub id: u32,
    /// `None`: anonymous shared memory.
    pub name: Option<String>,
    size: AtomicU64,
    /// VMAs that map it.
    vmas: AtomicUsize,
    /// The page cache: file page -> folio, or the swap entry of a page
    /// that went to swap (Linux keeps both in one xarray).
    cache: Mutex<Cache>,
}

#[derive(Default)]
struct Cache {
    pages: BTreeMap<u64, PhysAddr>,
    swapped: BTreeMap<u64, SwpEntry>,
}

static FILES: Mutex<BTreeMap<u32, Arc<Memfd>>> = Mutex::new(BTreeMap::new());
static NEXT_ID: AtomicU32 = AtomicU32::new(1);

fn new_file(name: Option<&str>) -> Result<Arc<Memfd>, MmError> {
    // The file, its name and the table's insert cannot fail softly: room first.
    super::error::heap_headroom(name.map_or(0, str::len) + core::mem::size_of::<Memfd>())?;
    let id = NEXT_ID.fetch_add(1, Ordering::Relaxed);
    let f = Arc::new(Memfd {
        id,
        name: name.map(String::from),
        size: AtomicU64::new(0),
        vmas: AtomicUsize::new(0),
        cache: Mutex::new(Cache::default()),
    });
    FILES.lock().insert(id, f.clone());
    Ok(f)
}

/// The named file `name`, created (empty) on first use.
pub fn open(name: &str) -> Result<Arc<Memfd>, MmError> {
    let existing = FILES.lock().values().find(|f| f.name.as_deref() == Some(name)).cloned();
    existing.map_or_else(|| new_file(Some(name)), Ok)
}

/// A new unnamed file for anonymous shared memory.
pub fn create_anon() -> Result<Arc<Memfd>, MmError> {
    new_file(None)
}

pub fn get(id: u32) -> Option<Arc<Memfd>> {
    FILES.lock().get(&id).cloned()
}

/// Calls `f` for every file (for `invariants` and `meminfo`).
pub fn for_each(mut f: impl FnMut(&Memfd)) {
    let files: alloc::vec::Vec<Arc<Memfd>> = FILES.lock().values().cloned().collect();
    for file in files {
        f(&file);
    }
}

/// The largest file size (Linux `MAX_LFS_FILESIZE` on 64-bit, shmem's
/// `s_maxbytes`).
pub const MAX_FILE_SIZE: u64 = i64::MAX as u64;

/// `size` rounded up to whole pages, refused above [`MAX_FILE_SIZE`]
/// (Linux `inode_newsize_ok`: -EFBIG), so the rounding cannot wrap.
fn page_size_of(size: u64) -> Result<u64, MmError> {
    if size > MAX_FILE_SIZE {
        return Err(MmError::FileTooBig { size });
    }
    size.div_ceil(PAGE_SIZE).checked_mul(PAGE_SIZE).ok_or(MmError::FileTooBig { size })
}

impl Memfd {
    pub fn size(&self) -> u64 {
        self.size.load(Ordering::Acquire)
    }
    /// Grows the file to at least `size` bytes (never shrinks).
    pub fn grow(&self, size: u64) -> Result<(), MmError> {
        self.size.fetch_max(page_size_of(size)?, Ordering::AcqRel);
        Ok(())
    }
    /// Sets the size (truncate): page-rounded, as `grow`. The caller drops
    /// the pages past it ([`super::truncate`]).
    pub fn set_size(&self, size: u64) -> Result<(), MmError> {
        self.size.store(page_size_of(size)?, Ordering::Release);
        Ok(())
    }
    /// The cached page at `pgoff`, if any.
    pub fn lookup(&self, pgoff: u64) -> Option<PhysAddr> {
        self.cache.lock().pages.get(&pgoff).copied()
    }
    /// The cached page offsets in `[start, end)`.
    pub fn cached_in(&self, start: u64, end: u64) -> alloc::vec::Vec<u64> {
        self.cache.lock().pages.range(start..end).map(|(&o, _)| o).collect()
    }
    /// Linux `filemap_remove_folio` for truncation: takes `pa` out of the
    /// cache at `pgoff` if it is still there; the caller holds its folio
    /// lock and drops the cache's reference ([`page::folio_remove_from_cache`]).
    pub fn remove_cached(&self, pgoff: u64, pa: PhysAddr) -> bool {
        let mut c = self.cache.lock();
        if c.pages.get(&pgoff) != Some(&pa) {
            return false;
        }
        c.pages.remove(&pgoff);
        true
    }
    /// Pages in the page cache.
    pub fn nr_cached(&self) -> usize {
        self.cache.lock().pages.len()
    }
    /// Whether `pa` is the cached page at `pgoff`.
    pub fn caches(&self, pgoff: u64, pa: PhysAddr) -> bool {
        self.cache.lock().pages.get(&pgoff) == Some(&pa)
    }
    /// Every cached page (for `invariants`).
    pub fn cached(&self) -> alloc::vec::Vec<(u64, PhysAddr)> {
        self.cache.lock().pages.iter().map(|(&o, &p)| (o, p)).collect()
    }
    /// Every swap entry the file holds (for `invariants`).
    pub fn swapped(&self) -> alloc::vec::Vec<SwpEntry> {
        self.cache.lock().swapped.values().copied().collect()
    }
    /// Linux `shmem_writeout`: the cached page at `pgoff` goes to swap if
    /// nothing but the cache holds it (no mapping, pin or reference).
    /// `Ok(false)`: no such page, or it is held.
    pub fn swap_out_page(&self, pgoff: u64) -> Result<bool, SwapError> {
        let mut c = self.cache.lock();
        let Some(&pa) = c.pages.get(&pgoff) else { return Ok(false) };
        let f = page::phys_to_page(pa).and_then(|p| p.folio()).expect("cached page without a folio");
        if f.refcount() != 1 || f.mapcount() != 0 {
            return Ok(false);
        }
        // The swap map's insert cannot fail softly: room for it first.
        if super::error::heap_headroom(0).is_err() {
            return Ok(false);
        }
        let entry = swapfile::get_swap_pages(1)?;
        swapfile::swap_writepage(entry, pa);
        c.pages.remove(&pgoff);
        c.swapped.insert(pgoff, entry);
        page::folio_remove_from_cache(f);
        Ok(true)
    }
    /// Linux `shmem_get_folio(SGP_CACHE)`: the page at `pgoff`, a new
    /// zeroed one if the cache has none, with a reference the caller owns,
    /// taken under the cache lock (so a migration that replaces the page
    /// sees it, or the caller gets the new page). None past the end of the
    /// file or without memory.
    pub fn get_folio(&self, pgoff: u64) -> Option<page::Folio> {
        if pgoff >= self.size() / PAGE_SIZE {
            return None;
        }
        let mut c = self.cache.lock();
        if let Some(&pa) = c.pages.get(&pgoff) {
            let f = page::phys_to_page(pa).and_then(|p| p.folio()).expect("cached page without a folio");
            f.get();
            return Some(f);
        }
        // The cache's insert cannot fail softly: room for it first.
        super::error::heap_headroom(0).ok()?;
        let f = page::folio_alloc_file()?;
        if let Some(entry) = c.swapped.remove(&pgoff) {
            // Linux `shmem_swapin_folio`: the data comes back, the slot goes.
            swapfile::swap_readpage(entry, f.pa());
            let _ = swapfile::free_swap_and_cache(entry);
        }
        f.set_mapping(self.id, pgoff);
        c.pages.insert(pgoff, f.pa());
        f.get();
        Some(f)
    }
    /// Linux `shmem_get_folio(SGP_READ)`: the page at `pgoff` with a
    /// reference for the caller, read back from swap if it is there; None
    /// for a hole (nothing is allocated for it).
    pub fn get_folio_read(&self, pgoff: u64) -> Option<page::Folio> {
        {
            let c = self.cache.lock();
            if !c.pages.contains_key(&pgoff) && !c.swapped.contains_key(&pgoff) {
                return None;
            }
        }
        self.get_folio(pgoff)
    }
    /// Linux `shmem_free_swap` over `[first, last)`: the swap copies of the
    /// pages a truncate or hole punch takes go with them.
    pub fn free_swapped_in(&self, first: u64, last: u64) {
        let mut c = self.cache.lock();
        while let Some((&o, _)) = c.swapped.range(first..last).next() {
            if let Some(entry) = c.swapped.remove(&o) {
                let _ = swapfile::free_swap_and_cache(entry);
            }
        }
    }
    /// Linux `folio_migrate_mapping` for a page-cache page: `new` (copied,
    /// locked, its one reference to become the cache's) replaces `old` at
    /// `pgoff` if `old` holds exactly `expected` references, checked under
    /// the cache lock so no lookup can take one meanwhile. `old` then loses
    /// the cache's reference. False: it stays.
    pub fn migrate_folio(&self, pgoff: u64, old: page::Folio, new: page::Folio, expected: u32) -> bool {
        let mut c = self.cache.lock();
        if c.pages.get(&pgoff) != Some(&old.pa()) || old.refcount() != expected {
            return false;
        }
        new.set_mapping(self.id, pgoff);
        c.pages.insert(pgoff, new.pa());
        drop(c);
        page::folio_remove_from_cache(old);
        true
    }
    /// Drops every cached page (Linux `shmem_truncate_range` of the whole
    /// file, for pages nothing maps; the caller made sure of that).
    fn truncate(&self) {
        let Cache { pages, swapped } = core::mem::take(&mut *self.cache.lock());
        for entry in swapped.into_values() {
            let _ = swapfile::free_swap_and_cache(entry);
        }
        for pa in pages.into_values() {
            let f = page::phys_to_page(pa).and_then(|p| p.folio()).expect("cached page without a folio");
            page::folio_remove_from_cache(f);
        }
    }
}

/// The named file `name`, if it exists (never creates it).
pub fn find(name: &str) -> Option<Arc<Memfd>> {
    FILES.lock().values().find(|f| f.name.as_deref() == Some(name)).cloned()
}

/// A VMA now maps file `id` (mmap, fork, VMA split).
pub fn vma_get(id: u32) {
    if let Some(f) = get(id) {
        f.vmas.fetch_add(1, Ordering::AcqRel);
    }
}

/// A VMA that mapped file `id` is gone; the last one of an unnamed file
/// frees it (its pages are no longer mapped anywhere: the VMA's range was
/// zapped first; pins keep their pages until unpinned).
pub fn vma_put(id: u32) {
    // The last reference's removal and `get_hold` are ordered by the table
    // lock: a file found by `get_hold` is never freed under its caller.
    let gone = {
        let mut files = FILES.lock();
        let Some(f) = files.get(&id).cloned() else { return };
        if f.vmas.fetch_sub(1, Ordering::AcqRel) == 1 && f.name.is_none() {
            files.remove(&id);
            Some(f)
        } else {
            None
        }
    };
    if let Some(f) = gone {
        f.truncate();
    }
}

/// The file `id` with one more reference taken (released with
/// [`vma_put`]), or None if it is gone: what `mmap` of a descriptor holds
/// while it sets up the VMA, so a concurrent `close` cannot free the file.
pub fn get_hold(id: u32) -> Option<Arc<Memfd>> {
    let files = FILES.lock();
    let f = files.get(&id)?.clone();
    f.vmas.fetch_add(1, Ordering::AcqRel);
    Some(f)
}

/// For tests: removes the named file `name` and its pages, if no VMA maps it.
pub fn remove_unmapped(name: &str) -> Result<(), MmError> {
    let f = FILES.lock().values().find(|f| f.name.as_deref() == Some(name)).cloned().ok_or(MmError::NoSuchFile)?;
    if f.vmas.load(Ordering::Acquire) != 0 {
        return Err(MmError::FileMapped);
    }
    FILES.lock().remove(&f.id);
    f.truncate();
    Ok(())
}
