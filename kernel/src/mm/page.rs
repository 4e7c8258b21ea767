//! Per-frame metadata: Linux's `struct page` and `struct folio`, kept in
//! one array over all RAM (Linux's `vmemmap`/`mem_map`).
//!
//! Only what the anonymous-memory paths need, with Linux's meaning:
//! - the folio's **refcount** lives in its head page: one reference per
//!   mapping of any of its pages, one per GUP reference or pin, one per
//!   kernel user (a fault in progress, a copy source). At zero the folio's
//!   frames go back to the allocator ([`folio_put`]).
//! - **mapcount** is per page (how many page-table entries map it; Linux's
//!   `_mapcount + 1`). A block mapping of a whole folio counts in the head's
//!   `entire_mapcount` instead (Linux's `_entire_mapcount + 1`).
//! - **pincount** on the head (Linux's `_pincount`, exact for every folio
//!   size here, where Linux uses the refcount bias for small ones), so
//!   `folio_maybe_dma_pinned` never has false positives.
//! - `PageAnonExclusive` per page; `anon`, `zero`, `head`/`tail` and the
//!   order as flags.
//!
//! Every field is an atomic: the fast GUP path reads them without locks.

use super::page_table_check::Violation;
use core::sync::atomic::{AtomicI32, AtomicU32, AtomicU64, AtomicUsize, Ordering};

use super::addr::PhysAddr;
use super::frame::{self, Owner};
use super::layout::phys_to_virt;
use crate::arch::aarch64::granule::{PAGE_SHIFT, PAGE_SIZE};

/// One frame's metadata (Linux `struct page`).
#[repr(C)]
pub struct Page {
    flags: AtomicU32,
    /// Head only: the folio's references.
    refcount: AtomicU32,
    /// Page-table entries mapping this page at page level.
    mapcount: AtomicI32,
    /// Head only: FOLL_PIN pins of the folio.
    pincount: AtomicU32,
    /// Head only: block mappings of the whole folio.
    entire_mapcount: AtomicI32,
    /// Tails: distance to the head in pages.
    head_off: AtomicU32,
    /// Head only: the reclaim generation ([`super::vmscan`], Linux MGLRU's
    /// gen in `folio->flags`): the aging sequence number at which the folio
    /// was last found referenced (or allocated).
    lru_gen: AtomicU32,
    /// Head only: Linux `folio->mapping`, the reverse map's anchor: an
    /// `mm::rmap` anon_vma id for anon folios, the shmem file id for
    /// page-cache folios (0: none).
    mapping: AtomicU32,
    /// Head only: Linux `folio->index`: the page number of the folio's
    /// first page (its VA for anon folios, the same in every mm of the fork
    /// tree; its file page offset for page-cache folios).
    index: AtomicU64,
}

pub mod pg {
    pub const ANON: u32 = 1 << 0;
    pub const ANON_EXCLUSIVE: u32 = 1 << 1;
    pub const HEAD: u32 = 1 << 2;
    pub const TAIL: u32 = 1 << 3;
    /// The shared zero page or a huge zero page.
    pub const ZERO: u32 = 1 << 4;
    /// Allocated as a folio (head or small): the refcount is meaningful.
    pub const FOLIO: u32 = 1 << 5;
    /// In a memfd/shmem page cache, which holds one reference for it.
    pub const FILE: u32 = 1 << 6;
    /// In the swap cache (Linux `PG_swapcache`), which holds one reference.
    pub const SWAPCACHE: u32 = 1 << 7;
    /// Linux `PG_locked` (head): the folio is being migrated or dropped
    /// from its file; whoever finds it so waits or backs off.
    pub const LOCKED: u32 = 1 << 8;
    pub const ORDER_SHIFT: u32 = 24;
}

static MEMMAP: AtomicUsize = AtomicUsize::new(0);
static BASE_PFN: AtomicUsize = AtomicUsize::new(0);
static NR_PAGES: AtomicUsize = AtomicUsize::new(0);
static ZERO_PAGE: AtomicUsize = AtomicUsize::new(0);

/// Allocates the metadata array for every frame the allocator manages and
/// the shared zero page. Returns the frames the array took.
pub fn init() -> u64 {
    let (base, n) = frame::pfn_span();
    let bytes = n as usize * core::mem::size_of::<Page>();
    let order = (bytes.div_ceil(PAGE_SIZE as usize)).next_power_of_two().trailing_zeros();
    let pa = frame::alloc_zeroed(order, Owner::Other).expect("no memory for the page metadata array");
    MEMMAP.store(phys_to_virt(pa).as_u64() as usize, Ordering::Release);
    BASE_PFN.store(base as usize, Ordering::Release);
    NR_PAGES.store(n as usize, Ordering::Release);
    let zero = frame::alloc_zeroed(0, Owner::Other).expect("no memory for the zero page");
    let p = phys_to_page(zero).expect("zero page outside RAM");
    p.flags.store(pg::ZERO, Ordering::Release);
    ZERO_PAGE.store(zero.as_u64() as usize, Ordering::Release);
    1 << order
}

/// Linux `phys_to_page`: the page of a physical address, `None` outside RAM.
pub fn phys_to_page(pa: PhysAddr) -> Option<&'static Page> {
    let base = MEMMAP.load(Ordering::Acquire);
    if base == 0 {
        return None;
    }
    let i = (pa.as_u64() >> PAGE_SHIFT).checked_sub(BASE_PFN.load(Ordering::Relaxed) as u64)? as usize;
    if i >= NR_PAGES.load(Ordering::Relaxed) {
        return None;
    }
    // SAFETY: the array has NR_PAGES entries, lives forever and is only
    // accessed through atomics.
    Some(unsafe { &*(base as *const Page).add(i) })
}

pub fn page_to_pfn(p: &Page) -> PhysAddr {
    let base = MEMMAP.load(Ordering::Relaxed);
    let i = (p as *const Page as usize - base) / core::mem::size_of::<Page>();
    PhysAddr::new(((BASE_PFN.load(Ordering::Relaxed) + i) as u64) << PAGE_SHIFT)
}

/// The shared zero page (Linux `ZERO_PAGE(0)`).
pub fn zero_page() -> PhysAddr {
    PhysAddr::new(ZERO_PAGE.load(Ordering::Relaxed) as u64)
}

/// Whether the shared zero page still reads as zeroes (tests).
pub fn zero_page_is_zero() -> bool {
    // SAFETY: the zero page is RAM in the linear map.
    let s = unsafe {
        core::slice::from_raw_parts(phys_to_virt(zero_page()).as_u64() as *const u64, (PAGE_SIZE / 8) as usize)
    };
    s.iter().all(|&w| w == 0)
}

/// Linux `is_zero_pfn`.
pub fn is_zero_pfn(pa: PhysAddr) -> bool {
    pa.as_u64() & !(PAGE_SIZE - 1) == zero_page().as_u64()
}

/// A folio: a naturally aligned run of `2^order` frames, named by its head.
#[derive(Clone, Copy)]
pub struct Folio(&'static Page);

impl core::fmt::Debug for Folio {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(
            f,
            "Folio({:#x}, order {}, ref {}, map {}, pin {})",
            self.pa().as_u64(),
            self.order(),
            self.refcount(),
            self.mapcount(),
            self.pincount()
        )
    }
}

impl Page {
    fn flags(&self) -> u32 {
        self.flags.load(Ordering::Acquire)
    }
    pub fn mapcount(&self) -> i32 {
        self.mapcount.load(Ordering::Acquire)
    }
    /// Linux `PageAnonExclusive`.
    pub fn anon_exclusive(&self) -> bool {
        self.flags() & pg::ANON_EXCLUSIVE != 0
    }
    pub fn set_anon_exclusive(&self) {
        self.flags.fetch_or(pg::ANON_EXCLUSIVE, Ordering::AcqRel);
    }
    pub fn clear_anon_exclusive(&self) {
        self.flags.fetch_and(!pg::ANON_EXCLUSIVE, Ordering::AcqRel);
    }
    pub fn pa(&self) -> PhysAddr {
        page_to_pfn(self)
    }
    /// Linux `page_folio`: `None` for frames that are not part of a folio.
    pub fn folio(&'static self) -> Option<Folio> {
        let f = self.flags();
        if f & pg::TAIL != 0 {
            let off = self.head_off.load(Ordering::Acquire) as u64;
            let head = phys_to_page(self.pa() - (off << PAGE_SHIFT))?;
            return Some(Folio(head));
        }
        if f & pg::FOLIO != 0 { Some(Folio(self)) } else { None }
    }
}

impl Folio {
    pub fn head(&self) -> &'static Page {
        self.0
    }
    pub fn pa(&self) -> PhysAddr {
        self.0.pa()
    }
    pub fn order(&self) -> u32 {
        self.0.flags() >> pg::ORDER_SHIFT
    }
    pub fn nr_pages(&self) -> u64 {
        1 << self.order()
    }
    pub fn size(&self) -> u64 {
        PAGE_SIZE << self.order()
    }
    pub fn is_large(&self) -> bool {
        self.order() > 0
    }
    pub fn is_anon(&self) -> bool {
        self.0.flags() & pg::ANON != 0
    }
    /// In a shmem page cache (Linux: `folio->mapping` is a shmem file's).
    pub fn in_page_cache(&self) -> bool {
        self.0.flags() & pg::FILE != 0
    }
    /// Linux `folio_test_swapcache`.
    pub fn in_swap_cache(&self) -> bool {
        self.0.flags() & pg::SWAPCACHE != 0
    }
    pub fn refcount(&self) -> u32 {
        self.0.refcount.load(Ordering::Acquire)
    }
    pub fn pincount(&self) -> u32 {
        self.0.pincount.load(Ordering::Acquire)
    }
    pub fn entire_mapcount(&self) -> i32 {
        self.0.entire_mapcount.load(Ordering::Acquire)
    }
    /// The reclaim generation ([`super::vmscan`]).
    pub fn lru_gen(&self) -> u32 {
        self.0.lru_gen.load(Ordering::Relaxed)
    }
    /// Linux MGLRU `folio_update_gen`: found referenced at aging `seq`.
    pub fn set_lru_gen(&self, seq: u32) {
        self.0.lru_gen.store(seq, Ordering::Relaxed);
    }
    /// Page `i` of the folio.
    pub fn page(&self, i: u64) -> &'static Page {
        phys_to_page(self.pa() + (i << PAGE_SHIFT)).expect("folio page outside RAM")
    }
    /// Linux `folio_mapcount`: every page-level mapping plus every block
    /// mapping of the whole folio.
    pub fn mapcount(&self) -> i32 {
        (0..self.nr_pages()).map(|i| self.page(i).mapcount()).sum::<i32>() + self.entire_mapcount()
    }
    /// Linux `folio_maybe_dma_pinned` (exact here).
    pub fn maybe_dma_pinned(&self) -> bool {
        self.pincount() > 0
    }
    /// Linux `folio_get`.
    pub fn get(&self) {
        let old = self.0.refcount.fetch_add(1, Ordering::AcqRel);
        assert!(old > 0, "folio_get on a free folio {:#x}", self.pa().as_u64());
    }
    /// Linux `folio_try_get` (for lockless GUP): fails on a folio being freed.
    pub fn try_get(&self) -> bool {
        let mut cur = self.0.refcount.load(Ordering::Acquire);
        loop {
            if cur == 0 {
                return false;
            }
            match self.0.refcount.compare_exchange_weak(cur, cur + 1, Ordering::AcqRel, Ordering::Acquire) {
                Ok(_) => return true,
                Err(c) => cur = c,
            }
        }
    }
    /// Linux `folio_put`: drops a reference and frees the folio with the last.
    pub fn put(self) {
        if self.put_testzero() {
            free_folio(self);
        }
    }
    /// Linux `folio_put_testzero`: drops a reference; true for the last,
    /// after which the caller frees the folio.
    fn put_testzero(&self) -> bool {
        let old = self.0.refcount.fetch_sub(1, Ordering::AcqRel);
        assert!(old > 0, "folio_put on a free folio {:#x}", self.pa().as_u64());
        old == 1
    }
    pub fn pin(&self) {
        self.get();
        self.0.pincount.fetch_add(1, Ordering::AcqRel);
    }
    /// Linux `unpin_user_page`.
    pub fn unpin(self) {
        let old = self.0.pincount.fetch_sub(1, Ordering::AcqRel);
        assert!(old > 0, "unpin of an unpinned folio {:#x}", self.pa().as_u64());
        self.put();
    }
    /// Linux `folio_trylock`.
    pub fn trylock(&self) -> bool {
        self.0.flags.fetch_or(pg::LOCKED, Ordering::AcqRel) & pg::LOCKED == 0
    }
    /// Linux `folio_unlock`.
    pub fn unlock(&self) {
        let old = self.0.flags.fetch_and(!pg::LOCKED, Ordering::AcqRel);
        assert!(old & pg::LOCKED != 0, "unlock of an unlocked folio {:#x}", self.pa().as_u64());
    }
    /// Linux `folio_test_locked`.
    pub fn is_locked(&self) -> bool {
        self.0.flags() & pg::LOCKED != 0
    }
    /// Linux `folio->mapping` as an id ([`Page::mapping`]).
    pub fn mapping(&self) -> u32 {
        self.0.mapping.load(Ordering::Acquire)
    }
    /// Linux `folio->index` ([`Page::index`]).
    pub fn index(&self) -> u64 {
        self.0.index.load(Ordering::Acquire)
    }
    /// Sets `mapping` and `index` (Linux `__folio_set_anon`, or the page
    /// cache's insert for a file folio).
    pub fn set_mapping(&self, mapping: u32, index: u64) {
        self.0.index.store(index, Ordering::Relaxed);
        self.0.mapping.store(mapping, Ordering::Release);
    }
}

/// Linux `folio_ref_add`.
pub fn folio_ref_add(f: Folio, n: u32) {
    f.0.refcount.fetch_add(n, Ordering::AcqRel);
}

/// Turns a reference GUP-fast already took (`folio_try_get`) into a pin.
pub fn add_pin_ref_taken(f: Folio) {
    f.0.pincount.fetch_add(1, Ordering::AcqRel);
}

/// Allocates a zeroed anonymous folio of `2^order` pages with one reference
/// and no mappings (Linux `vma_alloc_zeroed_movable_folio`). Honours the
/// user reserve.
#[inline]
pub fn folio_alloc_anon(order: u32) -> Option<Folio> {
    let pa = frame::alloc_user_zeroed(order)?;
    Some(prep_folio(pa, order))
}

/// A zeroed order-0 kernel page as a driver would allocate it for
/// `vm_insert_page` (a folio, not anon), with the caller's reference.
pub fn folio_alloc_kernel() -> Option<Folio> {
    let f = folio_alloc_anon(0)?;
    f.0.flags.fetch_and(!pg::ANON, Ordering::AcqRel);
    Some(f)
}

/// A zeroed order-0 page for a shmem page cache (Linux
/// `shmem_alloc_folio`): not anon, `pg::FILE`; its one reference is the
/// page cache's.
pub fn folio_alloc_file() -> Option<Folio> {
    let f = folio_alloc_anon(0)?;
    f.0.flags.fetch_and(!pg::ANON, Ordering::AcqRel);
    f.0.flags.fetch_or(pg::FILE, Ordering::AcqRel);
    Some(f)
}

/// Like [`folio_alloc_file`] but not zeroed: a migration target, whose
/// every byte is copied from the old page.
pub fn folio_alloc_file_nozero() -> Option<Folio> {
    let f = folio_alloc_anon_nozero(0)?;
    f.0.flags.fetch_and(!pg::ANON, Ordering::AcqRel);
    f.0.flags.fetch_or(pg::FILE, Ordering::AcqRel);
    Some(f)
}

/// Zeroes `len` bytes of the page at `pa` from `off` (Linux
/// `folio_zero_range`, for the partial pages of a truncate or hole punch).
pub fn zero_range(pa: PhysAddr, off: u64, len: u64) {
    assert!(off + len <= PAGE_SIZE, "zero_range beyond the page");
    // SAFETY: a RAM page in the linear map; the bytes lie inside it.
    unsafe { core::ptr::write_bytes((phys_to_virt(pa).as_u64() + off) as *mut u8, 0, len as usize) };
}

/// Linux `filemap_remove_folio` + the cache's `folio_put`: the folio leaves
/// the page cache; mappings and pins keep it alive until they go.
pub fn folio_remove_from_cache(f: Folio) {
    f.0.flags.fetch_and(!pg::FILE, Ordering::AcqRel);
    f.put();
}

/// The folio enters the swap cache (the caller gave the cache its reference).
pub fn folio_set_swapcache(f: Folio) {
    f.0.flags.fetch_or(pg::SWAPCACHE, Ordering::AcqRel);
}

/// The folio leaves the swap cache (the caller drops the cache's reference).
pub fn folio_clear_swapcache(f: Folio) {
    f.0.flags.fetch_and(!pg::SWAPCACHE, Ordering::AcqRel);
}

/// Linux `folio_add_file_rmap_pte` (a non-anon page gains a mapping).
pub fn folio_add_file_rmap_pte(page: &Page) {
    page.mapcount.fetch_add(1, Ordering::AcqRel);
}

/// Like [`folio_alloc_anon`] but not zeroed: for copies.
pub fn folio_alloc_anon_nozero(order: u32) -> Option<Folio> {
    let pa = frame::alloc_user(order)?;
    Some(prep_folio(pa, order))
}

fn prep_folio(pa: PhysAddr, order: u32) -> Folio {
    let head = phys_to_page(pa).expect("allocated frame outside RAM");
    for i in 1..(1u64 << order) {
        let t = phys_to_page(pa + (i << PAGE_SHIFT)).expect("folio page outside RAM");
        t.mapcount.store(0, Ordering::Relaxed);
        t.head_off.store(i as u32, Ordering::Relaxed);
        t.flags.store(pg::TAIL | pg::ANON, Ordering::Release);
    }
    head.mapcount.store(0, Ordering::Relaxed);
    head.pincount.store(0, Ordering::Relaxed);
    head.entire_mapcount.store(0, Ordering::Relaxed);
    head.refcount.store(1, Ordering::Relaxed);
    // New folios join the youngest generation (Linux `lru_gen_add_folio`).
    head.lru_gen.store(super::vmscan::max_seq(), Ordering::Relaxed);
    head.mapping.store(0, Ordering::Relaxed);
    head.index.store(0, Ordering::Relaxed);
    let h = if order > 0 { pg::HEAD } else { 0 };
    head.flags.store(pg::FOLIO | pg::ANON | h | (order << pg::ORDER_SHIFT), Ordering::Release);
    Folio(head)
}

/// Linux `release_pages` after a zap: drops one mapping and one reference
/// of each page in `pas`; the frames of folios that reach refcount 0 are
/// freed together ([`frame::free_bulk`]). `pas` is reused as scratch.
pub fn release_mapped_pages(pas: &mut [PhysAddr]) {
    let mut n = 0;
    for i in 0..pas.len() {
        let pg = phys_to_page(pas[i]).expect("mapped page outside RAM");
        let f = pg.folio().expect("mapped page without a folio");
        folio_remove_rmap_pte(pg);
        if f.put_testzero() {
            if f.is_large() {
                free_folio(f);
            } else {
                clear_folio(f);
                pas[n] = f.pa();
                n += 1;
            }
        }
    }
    let bad = frame::free_bulk(&pas[..n], Owner::UserAnon);
    assert!(bad == 0, "freeing {bad} folio frame(s) the allocator does not know");
}

fn clear_folio(f: Folio) {
    let pa = f.pa();
    for i in 0..f.nr_pages() {
        let p = f.page(i);
        assert!(p.mapcount() == 0, "freeing folio {:#x} whose page {i} is still mapped", pa.as_u64());
        p.flags.store(0, Ordering::Release);
        p.head_off.store(0, Ordering::Relaxed);
    }
    assert!(f.pincount() == 0 && f.entire_mapcount() == 0, "freeing a pinned or block-mapped folio {:#x}", pa.as_u64());
}

fn free_folio(f: Folio) {
    let (pa, order) = (f.pa(), f.order());
    clear_folio(f);
    frame::free(pa, order, Owner::UserAnon).expect("freeing a folio the allocator does not know");
}

// --- rmap (Linux mm/rmap.c, anon side) ---

/// Linux `folio_add_new_anon_rmap` for one page-level mapping of a new
/// folio's page (exclusive: the faulting process is its only user).
pub fn folio_add_new_anon_rmap_pte(page: &Page) {
    page.mapcount.fetch_add(1, Ordering::AcqRel);
    page.set_anon_exclusive();
}

/// Linux `folio_add_anon_rmap_pte` (an existing anon page gains a mapping).
pub fn folio_add_anon_rmap_pte(page: &Page) {
    page.mapcount.fetch_add(1, Ordering::AcqRel);
}

/// Linux `folio_remove_rmap_pte`.
pub fn folio_remove_rmap_pte(page: &Page) {
    let old = page.mapcount.fetch_sub(1, Ordering::AcqRel);
    assert!(old > 0, "mapcount underflow on page {:#x}", page.pa().as_u64());
    if old == 1 {
        // Linux clears it when the page is freed; an unmapped page can be
        // exclusive to no one.
        page.clear_anon_exclusive();
    }
}

/// Linux `folio_add_new_anon_rmap` for a block (PMD) mapping of a new
/// folio: one entire mapping, every page exclusive.
pub fn folio_add_new_anon_rmap_pmd(f: Folio) {
    f.0.entire_mapcount.fetch_add(1, Ordering::AcqRel);
    (0..f.nr_pages()).for_each(|i| f.page(i).set_anon_exclusive());
}

/// Linux `folio_dup_file_rmap_pmd`/`folio_try_dup_anon_rmap_pmd` (fork,
/// after the pin check): one more block mapping and its reference.
pub fn folio_dup_rmap_pmd(f: Folio) {
    f.get();
    f.0.entire_mapcount.fetch_add(1, Ordering::AcqRel);
}

/// Linux `folio_remove_rmap_pmd`.
pub fn folio_remove_rmap_pmd(f: Folio) {
    let old = f.0.entire_mapcount.fetch_sub(1, Ordering::AcqRel);
    assert!(old > 0, "entire_mapcount underflow on folio {:#x}", f.pa().as_u64());
    if f.mapcount() == 0 {
        (0..f.nr_pages()).for_each(|i| f.page(i).clear_anon_exclusive());
    }
}

/// The rmap side of splitting a block mapping into page entries: the
/// entire mapping becomes one mapping per page, each with its reference.
pub fn folio_split_pmd_rmap(f: Folio) {
    let nr = f.nr_pages() as u32;
    f.0.refcount.fetch_add(nr - 1, Ordering::AcqRel);
    for i in 0..f.nr_pages() {
        f.page(i).mapcount.fetch_add(1, Ordering::AcqRel);
    }
    f.0.entire_mapcount.fetch_sub(1, Ordering::AcqRel);
}

/// Linux `split_folio_to_order` for a folio that exactly one block entry
/// maps (a 1G THP about to be mapped by 2M blocks): it becomes folios of
/// `new_order`, each mapped once as a whole (`entire_mapcount` 1, one
/// reference) plus the pins and GUP references `held(new folio)` counts
/// into it. `PageAnonExclusive` stays per page.
pub fn split_entire_folio(
    f: Folio,
    new_order: u32,
    held: impl Fn(Folio) -> (u32, u32),
) -> Result<(), super::error::MmError> {
    use super::error::{Inconsistency, MmError};
    let (pa, order) = (f.pa(), f.order());
    if new_order >= order || f.entire_mapcount() != 1 || f.mapcount() != 1 {
        return Err(MmError::Inconsistent { addr: pa.as_u64(), what: Inconsistency::Unsplittable });
    }
    // Linux `folio_ref_freeze`: the counts are shared out from what the
    // handles hold, so every reference must be one of those (plus the
    // mapping's). A reference in flight (GUP that has not registered its
    // handle yet) makes the split wait for another time.
    let (pins, refs) = held(f);
    if f.refcount() != 1 + pins + refs || f.pincount() != pins {
        return Err(MmError::Again);
    }
    let sub = 1u64 << new_order;
    let (mapping, index) = (f.mapping(), f.index());
    for k in 0..(1u64 << (order - new_order)) {
        let hpa = pa + ((k * sub) << PAGE_SHIFT);
        let head = phys_to_page(hpa).expect("folio page outside RAM");
        for i in 1..sub {
            let t = phys_to_page(hpa + (i << PAGE_SHIFT)).expect("folio page outside RAM");
            t.head_off.store(i as u32, Ordering::Relaxed);
        }
        let excl = head.flags() & pg::ANON_EXCLUSIVE;
        head.head_off.store(0, Ordering::Relaxed);
        head.mapcount.store(0, Ordering::Relaxed);
        head.entire_mapcount.store(1, Ordering::Relaxed);
        head.mapping.store(mapping, Ordering::Relaxed);
        head.index.store(index + k * sub, Ordering::Relaxed);
        head.flags.store(pg::FOLIO | pg::ANON | pg::HEAD | excl | (new_order << pg::ORDER_SHIFT), Ordering::Release);
        let nf = Folio(head);
        let (pins, refs) = held(nf);
        head.pincount.store(pins, Ordering::Relaxed);
        head.refcount.store(1 + pins + refs, Ordering::Release);
    }
    Ok(())
}

/// Flags `n` frames from `pa` as zero pages (the huge zero folio).
pub fn mark_zero(pa: PhysAddr, n: u64) {
    for i in 0..n {
        if let Some(p) = phys_to_page(pa + (i << PAGE_SHIFT)) {
            p.flags.store(pg::ZERO, Ordering::Release);
        }
    }
}

/// The shared zero page or a page of the huge zero folio.
pub fn is_zero_any(pa: PhysAddr) -> bool {
    is_zero_pfn(pa) || phys_to_page(pa).is_some_and(|p| p.flags() & pg::ZERO != 0)
}

/// Linux `folio_try_dup_anon_rmap_pte` (fork): the child will map `page`
/// too. Refused for an exclusive page of a maybe-pinned folio, which the
/// caller must copy for the child instead (Linux `copy_present_page`).
pub fn folio_try_dup_anon_rmap_pte(folio: Folio, page: &Page) -> bool {
    if page.anon_exclusive() && folio.maybe_dma_pinned() {
        return false;
    }
    page.clear_anon_exclusive();
    folio.get();
    page.mapcount.fetch_add(1, Ordering::AcqRel);
    true
}

/// Copies one page's contents (the COW copy; both are linear-mapped RAM).
pub fn copy_page(dst: PhysAddr, src: PhysAddr) {
    // SAFETY: both are whole RAM pages reachable through the linear map;
    // dst is a fresh frame nobody else can see yet.
    unsafe { crate::arch::aarch64::cpu::copy_pages(phys_to_virt(dst).as_u64(), phys_to_virt(src).as_u64(), PAGE_SIZE) };
}

/// For [`super::page_table_check`]: every page the allocator says is user
/// memory belongs to a live folio and vice versa; returns (user frames
/// seen, folios).
pub fn check_frames(mut user_frame: impl FnMut(PhysAddr) -> bool) -> Result<(u64, u64), Violation> {
    let n = NR_PAGES.load(Ordering::Relaxed) as u64;
    let base = BASE_PFN.load(Ordering::Relaxed) as u64;
    let (mut frames, mut folios) = (0, 0);
    let mut i = 0;
    while i < n {
        let pa = PhysAddr::new((base + i) << PAGE_SHIFT);
        let p = phys_to_page(pa).unwrap();
        let f = p.flags();
        if f & pg::FOLIO != 0 {
            let folio = Folio(p);
            if folio.refcount() == 0 {
                return Err(Violation::FolioRefcountZero { pa: pa.as_u64() });
            }
            for j in 0..folio.nr_pages() {
                let q = pa + (j << PAGE_SHIFT);
                if !user_frame(q) {
                    return Err(Violation::FolioPageNotUser { pa: q.as_u64() });
                }
            }
            frames += folio.nr_pages();
            folios += 1;
            i += folio.nr_pages();
            continue;
        }
        if f & pg::TAIL != 0 {
            return Err(Violation::TailWithoutHead { pa: pa.as_u64() });
        }
        if p.mapcount() != 0 || f & pg::ANON_EXCLUSIVE != 0 {
            return Err(Violation::StrayPage { pa: pa.as_u64(), mapcount: p.mapcount(), flags: f as u64 });
        }
        i += 1;
    }
    Ok((frames, folios))
}

/// Calls `f` for every live folio.
pub fn for_each_folio(mut f: impl FnMut(Folio)) {
    let n = NR_PAGES.load(Ordering::Relaxed) as u64;
    let base = BASE_PFN.load(Ordering::Relaxed) as u64;
    let mut i = 0;
    while i < n {
        let p = phys_to_page(PhysAddr::new((base + i) << PAGE_SHIFT)).unwrap();
        if p.flags() & pg::FOLIO != 0 {
            let folio = Folio(p);
            i += folio.nr_pages();
            f(folio);
        } else {
            i += 1;
        }
    }
}
