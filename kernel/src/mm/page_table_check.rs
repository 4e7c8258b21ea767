//! The `invariants` oracle (Linux mm/page_table_check.c in spirit): what the
//! tables map agrees with the page metadata, the frame allocator and the
//! VMAs. [`check`] runs every check and returns the first [`Violation`]
//! found, with the addresses and values that disagree.
//!
//! User memory, for every address space the caller hands in:
//! - every non-special user leaf maps a page of a live folio;
//! - each page's mapcount equals the entries that map it;
//! - a writable private entry maps a `PageAnonExclusive` page, and an
//!   exclusive page is mapped exactly once;
//! - the zero page is only ever mapped read-only and special;
//! - every leaf lies in VMAs, and is EL0-writable only where they allow
//!   writes;
//! - a contiguous-bit run is complete, aligned and uniform;
//! - a folio's refcount is its mappings plus its pins plus GUP references
//!   plus the page cache's and the swap cache's;
//! - every swap slot's count is the swap entries that point at it, a
//!   free slot has none, an exclusive swap entry's slot counts 1 (it is
//!   the only reference), and a slot's swap-cache folio is flagged so (and
//!   cached only while entries for the slot remain);
//! - the frames the allocator counts as user memory are exactly the
//!   folios' frames, and each address space's table pages are accounted.
//!
//! The kernel's tables: no W+X, nothing EL0 can reach, no reserved
//! encodings, and their table pages accounted. The frame allocator's
//! counters agree with its bitmap ([`super::frame::check`]).

use alloc::collections::{BTreeMap, BTreeSet};
use alloc::string::String;
use alloc::vec::Vec;
use core::fmt;

use super::desc::{Kind, NonPresent};
use super::memory::{self, MmTables};
use super::mm_struct::{MmapLocked, VmFlags};
use super::page;
use super::pgtable::Tables;
use crate::arch::aarch64::granule::{GRANULE, PAGE_SIZE, USER_START_LEVEL};

/// A broken invariant. `va` is the user or kernel address of the entry,
/// `pa` a physical address; the other fields are the values that disagree.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Violation {
    // Reverse mapping and migration (`mm::rmap`, `mm::migrate`).
    /// A migration entry whose folio no migration holds (left behind).
    MigrationEntryLeft { va: u64, pa: u64 },
    /// The reverse map (anon_vma or the file's mapping tree) does not lead
    /// from the folio to this entry.
    RmapMissing { va: u64, pa: u64 },
    // The frame allocator (`frame::check`).
    /// The frame allocator is not initialised.
    FramesUninitialised,
    /// The per-CPU lists hold `listed` frames but the LISTED counter says `counter`.
    PcpListed { listed: u64, counter: u64 },
    /// The bitmap marks `set` frames but `unmanaged` + `allocated` are accounted.
    Bitmap { set: u64, unmanaged: u64, allocated: u64 },
    /// The owners account for `owned` frames but `allocated` are allocated.
    Owners { owned: u64, allocated: u64 },
    /// The per-CPU lists hold `listed` frames but `counted` are counted there.
    PcpCounted { listed: u64, counted: u64 },
    // The page metadata (`page::check_frames`).
    /// A folio with refcount 0 that is not free.
    FolioRefcountZero { pa: u64 },
    /// A folio's page that the allocator does not count as user memory.
    FolioPageNotUser { pa: u64 },
    /// A tail page without its head.
    TailWithoutHead { pa: u64 },
    /// A page outside every folio with a mapcount or flags.
    StrayPage { pa: u64, mapcount: i32, flags: u64 },
    // One address space's entries.
    /// A contiguous-bit run with fewer entries than the granule's run.
    ContRunShort { run: u64, entries: usize },
    /// Entry `entry` of the run at `run` differs in OA or attributes.
    ContRunMismatch { run: u64, entry: usize },
    /// A contiguous-bit run whose VA or PA is not aligned to the run size.
    ContRunUnaligned { va: u64 },
    /// An EL0-writable entry in a VMA without WRITE.
    WritableInReadOnlyVma { va: u64, flags: VmFlags },
    /// A valid entry over `addr`, which lies in no VMA.
    OutsideVmas { va: u64, addr: u64 },
    /// The zero page mapped writable.
    ZeroPageWritable { va: u64 },
    /// A special block that is not the huge zero folio.
    SpecialBlock { va: u64, size: u64 },
    /// A writable block whose pages are not all PageAnonExclusive.
    WritableBlockShared { va: u64 },
    /// A block that does not map one whole anon folio of its size.
    BlockNotFolio { va: u64, pa: u64 },
    /// A page outside RAM mapped without the special bit.
    OutsideRam { va: u64, pa: u64 },
    /// A mapped page that is no folio's page.
    NotFolioPage { va: u64, pa: u64 },
    /// A writable entry for an anon page that is not PageAnonExclusive.
    WritableNotExclusive { va: u64, pa: u64 },
    /// A page-cache page writable in a private mapping.
    PageCacheWritablePrivate { va: u64, pa: u64 },
    /// Table pages reachable from the root differ from those accounted.
    TablePages { reachable: usize, accounted: usize },
    /// An entry with the uffd-wp bit that a write may go through.
    UffdWpWritable { va: u64 },
    /// A uffd-wp marker outside every VMA registered for uffd-wp.
    MarkerOutsideUffdWp { va: u64 },
    // Folios against all the entries.
    /// A folio's entire_mapcount differs from the blocks that map it.
    EntireMapcount { folio: u64, mapcount: i32, blocks: i32 },
    /// A page's mapcount differs from the entries that map it.
    Mapcount { page: u64, mapcount: i32, entries: i32 },
    /// A PageAnonExclusive page mapped other than once.
    ExclusiveMapped { page: u64, maps: i32 },
    /// A folio's pincount differs from the pins the GUP handles hold.
    Pincount { folio: u64, pincount: u32, pins: u32 },
    /// A folio's refcount is not its mappings + pins + references + cache.
    Refcount { folio: u64, refcount: u32, mappings: i32, pins: u32, refs: u32, cache: u32 },
    /// A page mapped by some entry that belongs to no folio.
    MappedWithoutFolio { pa: u64 },
    /// A memfd's cached page that is not a page-cache folio.
    CacheNotFolio { file: u32, off: u64, pa: u64 },
    /// Folios flagged as page cache differ from the pages the files hold.
    CacheCount { flagged: u64, cached: u64 },
    /// Frames allocated as user memory differ from the folios' frames.
    UserFrames { user: u64, folio_frames: u64 },
    // The swap device against all the entries.
    /// A swap slot's count differs from the swap entries that point at it
    /// (a free slot has count 0).
    SwapCount { offset: u64, count: u32, entries: u32 },
    /// An exclusive swap entry (`pte_swp_exclusive`) whose slot counts
    /// other references too: exclusive means the only one.
    SwapExclusiveShared { offset: u64, count: u32 },
    /// A slot's swap-cache entry is not a folio flagged as swap cache, or
    /// the slot has no entries left to keep it.
    SwapCacheBad { offset: u64, pa: u64 },
    /// Folios flagged as swap cache differ from the slots that cache one.
    SwapCacheCount { flagged: u64, cached: u64 },
    /// The device's in-use counter differs from its map.
    SwapInuse { counter: u64, used: u64 },
    // The kernel's tables.
    /// A kernel VA both writable and executable.
    KernelWx { va: u64 },
    /// A kernel VA accessible from EL0.
    KernelEl0 { va: u64 },
    /// A reserved encoding in the kernel's tables.
    KernelReserved { va: u64, level: u32 },
    /// Kernel table pages reachable (+1 empty TTBR0) differ from those accounted.
    KernelTablePages { reachable: usize, accounted: usize },
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        use Violation::*;
        match *self {
            FramesUninitialised => f.write_str("frame allocator not initialised"),
            PcpListed { listed, counter } => {
                write!(f, "the per-CPU lists hold {listed} frames but LISTED says {counter}")
            }
            Bitmap { set, unmanaged, allocated } => write!(
                f,
                "bitmap marks {set} frames in use but {unmanaged} are reserved/outside RAM and {allocated} allocated"
            ),
            Owners { owned, allocated } => write!(f, "owners account for {owned} frames but {allocated} are allocated"),
            PcpCounted { listed, counted } => {
                write!(f, "the per-CPU lists hold {listed} frames but {counted} are counted there")
            }
            FolioRefcountZero { pa } => write!(f, "folio {pa:#x} has refcount 0 but is not free"),
            FolioPageNotUser { pa } => write!(f, "folio page {pa:#x} is not allocated as user memory"),
            TailWithoutHead { pa } => write!(f, "tail page {pa:#x} without its head"),
            StrayPage { pa, mapcount, flags } => {
                write!(f, "page {pa:#x} is not in a folio but has mapcount {mapcount} / flags {flags:#x}")
            }
            ContRunShort { run, entries } => write!(f, "contiguous run at {run:#x} has only {entries} entries"),
            ContRunMismatch { run, entry } => {
                write!(f, "entry {entry} of the contiguous run at {run:#x} does not match the run")
            }
            ContRunUnaligned { va } => write!(f, "{va:#x}: contiguous run not aligned (VA or PA)"),
            WritableInReadOnlyVma { va, flags } => {
                write!(f, "{va:#x}: EL0-writable entry in a VMA without WRITE ({flags})")
            }
            OutsideVmas { va, addr } => write!(f, "{va:#x}: a valid entry over {addr:#x}, which is in no VMA"),
            ZeroPageWritable { va } => write!(f, "{va:#x}: the zero page is mapped writable"),
            MigrationEntryLeft { va, pa } => {
                write!(f, "{va:#x}: migration entry for {pa:#x} left behind (no migration holds the folio)")
            }
            RmapMissing { va, pa } => {
                write!(f, "{va:#x}: rmap_walk from the folio of {pa:#x} would not find this entry")
            }
            SpecialBlock { va, size } => {
                write!(f, "{va:#x}: a special {size:#x}-byte block that is not the huge zero folio")
            }
            WritableBlockShared { va } => {
                write!(f, "{va:#x}: writable block whose pages are not all PageAnonExclusive")
            }
            BlockNotFolio { va, pa } => {
                write!(f, "{va:#x}: block at {pa:#x} does not map one whole anon folio of its size")
            }
            OutsideRam { va, pa } => write!(f, "{va:#x}: maps {pa:#x}, outside RAM, without the special bit"),
            NotFolioPage { va, pa } => write!(f, "{va:#x}: maps {pa:#x}, which is not a folio's page"),
            WritableNotExclusive { va, pa } => {
                write!(f, "{va:#x}: writable entry for {pa:#x}, which is not PageAnonExclusive")
            }
            PageCacheWritablePrivate { va, pa } => {
                write!(f, "{va:#x}: page-cache page {pa:#x} is writable in a private mapping")
            }
            TablePages { reachable, accounted } => {
                write!(f, "{reachable} table pages reachable but {accounted} accounted")
            }
            EntireMapcount { folio, mapcount, blocks } => {
                write!(f, "folio {folio:#x}: entire_mapcount {mapcount} but {blocks} block entries map it")
            }
            Mapcount { page, mapcount, entries } => {
                write!(f, "page {page:#x}: mapcount {mapcount} but {entries} entries map it")
            }
            ExclusiveMapped { page, maps } => {
                write!(f, "page {page:#x} is PageAnonExclusive but mapped {maps} times")
            }
            Pincount { folio, pincount, pins } => {
                write!(f, "folio {folio:#x}: pincount {pincount} but handles hold {pins} pins")
            }
            Refcount { folio, refcount, mappings, pins, refs, cache } => write!(
                f,
                "folio {folio:#x}: refcount {refcount} but {mappings} mappings + {pins} pins + {refs} references + {cache} page or swap cache"
            ),
            MappedWithoutFolio { pa } => write!(f, "page {pa:#x} is mapped but belongs to no folio"),
            CacheNotFolio { file, off, pa } => {
                write!(f, "memfd {file}: page {off} at {pa:#x} is not a page-cache folio")
            }
            CacheCount { flagged, cached } => {
                write!(f, "{flagged} folios are flagged as page cache but the files hold {cached}")
            }
            UserFrames { user, folio_frames } => {
                write!(f, "{user} frames allocated as user memory but folios hold {folio_frames}")
            }
            SwapExclusiveShared { offset, count } => {
                write!(f, "swap slot {offset:#x}: an exclusive swap entry points at it but its count is {count}")
            }
            SwapCount { offset, count, entries } => {
                write!(f, "swap slot {offset:#x}: count {count} but {entries} swap entries point at it")
            }
            SwapCacheBad { offset, pa } => {
                write!(f, "swap slot {offset:#x}: swap-cache entry {pa:#x} is not a swap-cache folio kept by entries")
            }
            SwapCacheCount { flagged, cached } => {
                write!(f, "{flagged} folios are flagged as swap cache but {cached} slots cache one")
            }
            SwapInuse { counter, used } => write!(f, "swap: {counter} slots counted in use but the map has {used}"),
            UffdWpWritable { va } => write!(f, "entry at {va:#x} has the uffd-wp bit but is writable"),
            MarkerOutsideUffdWp { va } => write!(f, "uffd-wp marker at {va:#x} outside a uffd-wp registered VMA"),
            KernelWx { va } => write!(f, "kernel VA {va:#x} is both writable and executable"),
            KernelEl0 { va } => write!(f, "kernel VA {va:#x} is accessible from EL0"),
            KernelReserved { va, level } => write!(f, "reserved encoding at {va:#x} level {level}"),
            KernelTablePages { reachable, accounted } => {
                write!(f, "{reachable} kernel table pages reachable (+1 empty TTBR0) but {accounted} accounted")
            }
        }
    }
}

/// A [`Violation`] and the address space it was found in (the name the
/// caller gave it), if it is one address space's.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CheckError {
    pub mm: Option<String>,
    pub what: Violation,
}

impl From<Violation> for CheckError {
    fn from(what: Violation) -> Self {
        CheckError { mm: None, what }
    }
}

impl fmt::Display for CheckError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.mm {
            Some(name) => write!(f, "{name}: {}", self.what),
            None => self.what.fmt(f),
        }
    }
}

/// For the console's and the tests' messages: `?` converts through Display.
impl From<CheckError> for String {
    fn from(e: CheckError) -> Self {
        alloc::string::ToString::to_string(&e)
    }
}

impl From<Violation> for String {
    fn from(e: Violation) -> Self {
        alloc::string::ToString::to_string(&e)
    }
}

/// Hands each address space to check to the function it is given, with a
/// name for the report (the process layer passes every process).
pub type ForEachMm<'a> = &'a dyn Fn(&mut dyn FnMut(&str, MmTables<'_>));

/// Every invariant: the frame allocator, the user address spaces
/// `for_each_mm` hands out, the folios and page cache, the kernel's tables.
/// Never under injected allocation failures: it is an oracle.
pub fn check(for_each_mm: ForEachMm<'_>) -> Result<(), CheckError> {
    super::fail_alloc::unarmed(|| {
        super::frame::check()?;
        check_user(for_each_mm)?;
        check_kernel()?;
        Ok(())
    })
}

/// What one walk of the user tables counts for the folio checks.
#[derive(Default)]
struct Counts {
    /// Base-page entries per page.
    maps: BTreeMap<u64, i32>,
    /// Block (entire) mappings per folio.
    blocks: BTreeMap<u64, i32>,
    /// Swap entries per slot.
    swaps: BTreeMap<u64, u32>,
    /// Slots that an exclusive swap entry points at.
    exclusive_swaps: BTreeSet<u64>,
}

fn check_user(for_each_mm: ForEachMm<'_>) -> Result<(), CheckError> {
    let mut c = Counts::default();
    let mut err: Option<CheckError> = None;
    for_each_mm(&mut |name, mt| {
        if err.is_none()
            && let Err(what) = check_mm(mt, &mut c)
        {
            err = Some(CheckError { mm: Some(String::from(name)), what });
        }
    });
    if let Some(e) = err {
        return Err(e);
    }
    let swaps = core::mem::take(&mut c.swaps);
    let exclusive = core::mem::take(&mut c.exclusive_swaps);
    check_folios(c)?;
    check_swap(swaps, &exclusive)?;
    Ok(())
}

/// Every swap slot against the entries counted in `swaps` plus the swap
/// entries files hold, a slot an exclusive entry points at (`exclusive`)
/// counting that entry alone, and the swap cache against the folios.
fn check_swap(mut swaps: BTreeMap<u64, u32>, exclusive: &BTreeSet<u64>) -> Result<(), Violation> {
    use Violation::*;
    // A file that holds a swap entry holds a reference to its slot.
    super::shmem::for_each(|file| {
        for e in file.swapped() {
            *swaps.entry(e.offset).or_insert(0) += 1;
        }
    });
    let mut err: Option<Violation> = None;
    let mut cached = 0u64;
    super::swapfile::for_each_slot(|offset, count, cache| {
        let entries = swaps.remove(&offset).unwrap_or(0);
        if err.is_some() {
            return;
        }
        if count != entries {
            err = Some(SwapCount { offset, count, entries });
            return;
        }
        if count != 1 && exclusive.contains(&offset) {
            err = Some(SwapExclusiveShared { offset, count });
            return;
        }
        if let Some(pa) = cache {
            cached += 1;
            let ok = count > 0
                && page::phys_to_page(pa).and_then(|p| p.folio()).is_some_and(|f| f.pa() == pa && f.in_swap_cache());
            if !ok {
                err = Some(SwapCacheBad { offset, pa: pa.as_u64() });
            }
        }
    });
    if let Some(e) = err {
        return Err(e);
    }
    if let Some((&offset, &entries)) = swaps.iter().next() {
        return Err(SwapCount { offset, count: 0, entries });
    }
    let mut flagged = 0u64;
    page::for_each_folio(|f| flagged += f.in_swap_cache() as u64);
    if flagged != cached {
        return Err(SwapCacheCount { flagged, cached });
    }
    let (counter, used) = super::swapfile::inuse_counts();
    if counter != used {
        return Err(SwapInuse { counter, used });
    }
    Ok(())
}

/// One address space's entries against its VMAs and the page metadata.
fn check_mm(mt: MmTables<'_>, c: &mut Counts) -> Result<(), Violation> {
    use Violation::*;
    let mut mem = mt.mem.lock();
    let accounted = mem.tables;
    let t = Tables::new(mt.mm.pgd, GRANULE, USER_START_LEVEL, &mut *mem);
    let mut reachable = 1usize;
    // Sorted and non-overlapping, as the VMA list.
    let vmas: Vec<(u64, u64, VmFlags)> =
        mt.mm.mmap_read_lock().vmas().iter().map(|v| (v.start.as_u64(), v.end.as_u64(), v.flags)).collect();
    let full: Vec<super::mm_struct::Vma> = mt.mm.mmap_read_lock().vmas().iter().copied().collect();
    let vma_at = |va: u64| {
        let i = full.partition_point(|v| v.end.as_u64() <= va);
        full.get(i).filter(|v| v.start.as_u64() <= va)
    };
    let shared_at = |va: u64| {
        let i = vmas.partition_point(|&(_, e, _)| e <= va);
        vmas.get(i).is_some_and(|&(s, _, f)| s <= va && f.contains(VmFlags::SHARED))
    };
    // The contiguous run being checked: (run VA, first OA, attributes, entries seen).
    let mut run: Option<(u64, u64, u64, usize)> = None;
    let (cont_n, cont_sz) = (GRANULE.contiguous_entries(3), memory::cont_size());
    let mut err: Option<Violation> = None;
    t.walk(false, &mut |e| {
        if err.is_some() {
            return;
        }
        let va = e.va.as_u64();
        let mut fail = |v: Violation| err = Some(v);
        // A run of level-3 entries with the contiguous bit: complete,
        // aligned, one physically contiguous range, one set of attributes.
        if e.level == 3 {
            let cont = e.desc.is_valid() && e.desc.contiguous();
            let oa = e.desc.output_address(PAGE_SIZE).as_u64();
            match run {
                Some((rva, _, _, n)) if n < cont_n && va != rva + n as u64 * PAGE_SIZE => {
                    return fail(ContRunShort { run: rva, entries: n });
                }
                Some((rva, oa0, attrs, n)) if n < cont_n => {
                    if !cont || oa != oa0 + n as u64 * PAGE_SIZE || e.desc.run_attr_bits() != attrs {
                        return fail(ContRunMismatch { run: rva, entry: n });
                    }
                    run = Some((rva, oa0, attrs, n + 1));
                }
                _ if cont => {
                    if va % cont_sz != 0 || oa % cont_sz != 0 {
                        return fail(ContRunUnaligned { va });
                    }
                    run = Some((va, oa, e.desc.run_attr_bits(), 1));
                }
                _ => run = None,
            }
        }
        // uffd-wp state: never writable, and markers only where registered
        // (unregister, fork without events and munmap clear them at once).
        if let Some(v) = super::userfaultfd::check_entry(e.desc, va, |a| {
            let i = vmas.partition_point(|&(_, ve, _)| ve <= a);
            vmas.get(i).filter(|&&(vs, _, _)| vs <= a).map(|&(_, _, f)| f)
        }) {
            return fail(v);
        }
        // Every leaf lies in a VMA, and EL0 can write only where its
        // VMA allows writes (a failed mprotect must not leave more).
        if let Kind::Leaf(_) = e.kind {
            let (mut a, end) = (va, va + e.size);
            let mut i = vmas.partition_point(|&(_, ve, _)| ve <= a);
            while a < end {
                match vmas.get(i) {
                    Some(&(vs, ve, flags)) if vs <= a => {
                        if e.desc.user_writable() && !flags.contains(VmFlags::WRITE) {
                            return fail(WritableInReadOnlyVma { va, flags });
                        }
                        a = ve;
                        i += 1;
                    }
                    _ => return fail(OutsideVmas { va, addr: a }),
                }
            }
        }
        match e.kind {
            Kind::Table(_) if e.level < 3 => reachable += 1,
            Kind::Leaf(pa) if e.desc.special() => {
                if page::is_zero_any(pa) && e.desc.may_write() {
                    return fail(ZeroPageWritable { va });
                }
                if e.size != PAGE_SIZE && !super::huge_memory::is_huge_zero(pa) {
                    fail(SpecialBlock { va, size: e.size });
                }
            }
            Kind::Leaf(pa) if e.size != PAGE_SIZE => {
                // A block: one entire mapping of a folio of exactly its size.
                match page::phys_to_page(pa).and_then(|p| p.folio()) {
                    Some(f) if f.is_anon() && f.pa() == pa && f.size() == e.size => {
                        if e.desc.may_write() && !(0..f.nr_pages()).all(|i| f.page(i).anon_exclusive()) {
                            return fail(WritableBlockShared { va });
                        }
                        if !vma_at(va).is_some_and(|v| super::rmap::finds(mt.mm, v, e.va, f, 0)) {
                            return fail(RmapMissing { va, pa: pa.as_u64() });
                        }
                        *c.blocks.entry(pa.as_u64()).or_insert(0) += 1;
                    }
                    _ => fail(BlockNotFolio { va, pa: pa.as_u64() }),
                }
            }
            Kind::Leaf(pa) => {
                let Some(pg) = page::phys_to_page(pa) else {
                    return fail(OutsideRam { va, pa: pa.as_u64() });
                };
                let Some(f) = pg.folio() else {
                    return fail(NotFolioPage { va, pa: pa.as_u64() });
                };
                // Anon pages follow the exclusivity rule; inserted driver
                // pages (vm_insert_page) are shared by nature.
                if f.is_anon() && e.desc.may_write() && !pg.anon_exclusive() {
                    return fail(WritableNotExclusive { va, pa: pa.as_u64() });
                }
                // A page-cache page is writable only where writes reach the
                // file: never in a private (COW) mapping.
                if f.in_page_cache() && e.desc.may_write() && !shared_at(va) {
                    return fail(PageCacheWritablePrivate { va, pa: pa.as_u64() });
                }
                let i = (pa.as_u64() - f.pa().as_u64()) / PAGE_SIZE;
                if !vma_at(va).is_some_and(|v| super::rmap::finds(mt.mm, v, e.va, f, i)) {
                    return fail(RmapMissing { va, pa: pa.as_u64() });
                }
                *c.maps.entry(pa.as_u64()).or_insert(0) += 1;
            }
            Kind::NonPresent(NonPresent::Swap { entry, exclusive, .. }) => {
                *c.swaps.entry(entry.offset).or_insert(0) += 1;
                if exclusive {
                    c.exclusive_swaps.insert(entry.offset);
                }
            }
            // A migration entry lives only while its migration holds the
            // old folio's lock.
            Kind::NonPresent(NonPresent::Migration { pa, .. })
                if !page::phys_to_page(pa).and_then(|p| p.folio()).is_some_and(|f| f.is_locked()) =>
            {
                fail(MigrationEntryLeft { va, pa: pa.as_u64() });
            }
            _ => {}
        }
    });
    if let Some(e) = err {
        return Err(e);
    }
    if let Some((rva, _, _, n)) = run
        && n < cont_n
    {
        return Err(ContRunShort { run: rva, entries: n });
    }
    if reachable != accounted {
        return Err(TablePages { reachable, accounted });
    }
    Ok(())
}

/// Every folio against the entries counted in `c`, the GUP handles and the
/// page cache; the allocator's user frames against the folios.
fn check_folios(mut c: Counts) -> Result<(), Violation> {
    use Violation::*;
    let mut err: Option<Violation> = None;
    let mut folio_frames = 0u64;
    page::for_each_folio(|f| {
        if err.is_some() {
            return;
        }
        folio_frames += f.nr_pages();
        let folio = f.pa().as_u64();
        let entire = c.blocks.remove(&folio).unwrap_or(0);
        if f.entire_mapcount() != entire {
            err = Some(EntireMapcount { folio, mapcount: f.entire_mapcount(), blocks: entire });
            return;
        }
        let mut mapped = entire;
        for i in 0..f.nr_pages() {
            let pg = f.page(i);
            let entries = c.maps.remove(&pg.pa().as_u64()).unwrap_or(0);
            mapped += entries;
            if pg.mapcount() != entries {
                err = Some(Mapcount { page: pg.pa().as_u64(), mapcount: pg.mapcount(), entries });
                return;
            }
            if pg.anon_exclusive() && entries + entire != 1 {
                err = Some(ExclusiveMapped { page: pg.pa().as_u64(), maps: entries + entire });
                return;
            }
        }
        // GUP references and the migrations' isolation references.
        let refs = super::gup::held(f, false) + super::migrate::isolated(f);
        let pins = super::gup::held(f, true);
        if f.pincount() != pins {
            err = Some(Pincount { folio, pincount: f.pincount(), pins });
            return;
        }
        let cache = f.in_page_cache() as u32 + f.in_swap_cache() as u32;
        if f.refcount() != mapped as u32 + f.pincount() + refs + cache {
            err = Some(Refcount { folio, refcount: f.refcount(), mappings: mapped, pins: f.pincount(), refs, cache });
        }
    });
    if let Some(e) = err {
        return Err(e);
    }
    if let Some((&pa, _)) = c.maps.iter().next() {
        return Err(MappedWithoutFolio { pa });
    }
    // Every page-cache page is a file folio that its file holds, and only one.
    let mut cached = 0u64;
    super::shmem::for_each(|file| {
        for (off, pa) in file.cached() {
            cached += 1;
            if err.is_none()
                && !page::phys_to_page(pa)
                    .and_then(|p| p.folio())
                    .is_some_and(|f| f.in_page_cache() && f.pa() == pa && !f.is_anon())
            {
                err = Some(CacheNotFolio { file: file.id, off, pa: pa.as_u64() });
            }
        }
    });
    if let Some(e) = err {
        return Err(e);
    }
    let mut flagged = 0u64;
    page::for_each_folio(|f| flagged += f.in_page_cache() as u64);
    if flagged != cached {
        return Err(CacheCount { flagged, cached });
    }
    page::check_frames(super::frame::is_allocated)?;
    let user = super::frame::stats().by_owner[super::frame::Owner::UserAnon as usize];
    if user != folio_frames {
        return Err(UserFrames { user, folio_frames });
    }
    Ok(())
}

/// The kernel's tables: W^X, nothing EL0 reaches, no reserved encodings,
/// table pages accounted.
fn check_kernel() -> Result<(), Violation> {
    use Violation::*;
    let mut err: Option<Violation> = None;
    let mut tables = 1usize;
    super::kernel_pgtable::with_tables(|t| {
        t.walk(true, &mut |e| match e.kind {
            Kind::Table(_) if e.level < 3 => tables += 1,
            Kind::Leaf(_) => {
                let p = e.desc.perms();
                if !p.read_only && !p.pxn && err.is_none() {
                    err = Some(KernelWx { va: e.va.as_u64() });
                }
                if p.el0 && err.is_none() {
                    err = Some(KernelEl0 { va: e.va.as_u64() });
                }
            }
            Kind::Reserved if err.is_none() => err = Some(KernelReserved { va: e.va.as_u64(), level: e.level }),
            _ => {}
        })
    });
    if let Some(e) = err {
        return Err(e);
    }
    // The root's empty TTBR0 partner is a table page too.
    let accounted = super::kernel_pgtable::table_pages();
    if tables + 1 != accounted {
        return Err(KernelTablePages { reachable: tables, accounted });
    }
    Ok(())
}
