//! Reverse mapping (Linux `mm/rmap.c`): from a folio to every page-table
//! entry that maps it, in every mm.
//!
//! - **Anonymous folios**: `folio->mapping` is the id of the anon_vma of
//!   the VMA that created the folio ([`Vma::anon_vma`]) and `folio->index`
//!   its VA in pages. fork's copy of a VMA shares the parent's anon_vma
//!   (Linux chains a new one to it; sharing lists the same mms, and the
//!   walk checks every entry anyway), and there is no mremap, so the folio
//!   sits at the same VA in every mm the anon_vma lists.
//! - **Page-cache folios** (memfd, shmem): `mapping` is the file id,
//!   `index` the file page; the file's mapping tree (Linux `i_mmap`) lists
//!   the mms with a VMA of the file, whose `vm_pgoff` gives the VA.
//!
//! Both lists count VMAs per mm and follow every VMA insert, split and
//! remove ([`vma_link`], [`vma_unlink`], called from `VmaList`).
//! [`rmap_walk`] visits each (mm, VMA, address) and hands over only entries
//! that really map the folio (Linux `page_vma_mapped_walk`).
//!
//! Locks: the walk takes one mm at a time, in the fault path's order:
//! its mmap lock (read), its page-table lock, its table memory. It never
//! holds two mms' locks at once. The two lists have their own spin locks,
//! held only while they are read or changed, never across a walk.

use alloc::collections::BTreeMap;
use alloc::vec::Vec;

use spin::{Mutex, Once};

use super::addr::{PhysAddr, VirtAddr};
use super::desc::{Desc, Kind, NonPresent};
use super::kernel_pgtable::FrameTableMem;
use super::memory::MmTables;
use super::mm_struct::{MmStruct, MmapLocked, PtlGuard, Vma};
use super::page::Folio;
use super::pgtable::Pte;
use crate::arch::aarch64::granule::{GRANULE, PAGE_SHIFT, PAGE_SIZE};

/// anon_vma id -> (mm, its VMAs with that anon_vma).
static ANON_VMAS: Mutex<BTreeMap<u32, BTreeMap<u64, u32>>> = Mutex::new(BTreeMap::new());
/// File id -> (mm, its VMAs of the file): Linux `mapping->i_mmap`.
static I_MMAP: Mutex<BTreeMap<u32, BTreeMap<u64, u32>>> = Mutex::new(BTreeMap::new());

/// Finds the mm whose pgd is the key and calls the function with it (the
/// process layer registers it: mm/ knows no processes).
pub type MmResolver = fn(u64, &mut dyn FnMut(MmTables<'_>));
static RESOLVER: Once<MmResolver> = Once::new();

/// Registers the one [`MmResolver`] (the first call wins).
pub fn set_mm_resolver(f: MmResolver) {
    RESOLVER.call_once(|| f);
}

/// The reverse map's name for an mm: its root table, unique while it lives.
pub fn mm_key(mm: &MmStruct) -> u64 {
    mm.pgd.as_u64()
}

fn count(list: &Mutex<BTreeMap<u32, BTreeMap<u64, u32>>>, id: u32, mm: u64, up: bool) {
    let mut l = list.lock();
    let per_mm = l.entry(id).or_default();
    let n = per_mm.entry(mm).or_insert(0);
    if up {
        *n += 1;
        return;
    }
    *n -= 1;
    if *n == 0 {
        per_mm.remove(&mm);
        if per_mm.is_empty() {
            l.remove(&id);
        }
    }
}

/// A VMA of the mm `mm` appeared (insert, split, fork's copy).
pub(crate) fn vma_link(mm: u64, v: &Vma) {
    if v.anon_vma != 0 {
        count(&ANON_VMAS, v.anon_vma, mm, true);
    }
    if v.file != 0 {
        count(&I_MMAP, v.file, mm, true);
    }
}

/// A VMA of the mm `mm` went away.
pub(crate) fn vma_unlink(mm: u64, v: &Vma) {
    if v.anon_vma != 0 {
        count(&ANON_VMAS, v.anon_vma, mm, false);
    }
    if v.file != 0 {
        count(&I_MMAP, v.file, mm, false);
    }
}

/// Linux `__folio_set_anon`: a new anon folio whose first page goes to
/// `va` in `vma`.
#[inline(always)]
pub fn folio_set_anon(folio: Folio, vma: &Vma, va: VirtAddr) {
    folio.set_mapping(vma.anon_vma, va.as_u64() >> PAGE_SHIFT);
}

/// [`folio_set_anon`] with the anon_vma given by id (fork's early copy,
/// which knows the parent folio's).
pub fn folio_set_anon_id(folio: Folio, anon_vma: u32, va: VirtAddr) {
    folio.set_mapping(anon_vma, va.as_u64() >> PAGE_SHIFT);
}

/// What a walk is about: a folio's reverse-map anchor, taken once (a
/// migration's old folio leaves the page cache before its entries are
/// replaced, and is still walked as a file folio).
#[derive(Clone, Copy, Debug)]
pub struct RmapTarget {
    pub anon: bool,
    pub mapping: u32,
    pub index: u64,
    pub pa: PhysAddr,
    pub nr: u64,
}

impl RmapTarget {
    /// None: a folio the reverse map does not cover (driver pages, the
    /// zero page, an anon folio of a VMA without anon_vma).
    pub fn of(f: Folio) -> Option<Self> {
        let anon = f.is_anon();
        if (!anon && !f.in_page_cache()) || f.mapping() == 0 {
            return None;
        }
        Some(RmapTarget { anon, mapping: f.mapping(), index: f.index(), pa: f.pa(), nr: f.nr_pages() })
    }
}

/// Which entries the walk hands over.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Want {
    /// Present entries mapping a page of the folio (page entries, or a
    /// level-2 block mapping all of it).
    Mapped,
    /// Migration entries naming a page of the folio.
    Migration,
}

/// One entry that maps the folio (Linux `page_vma_mapped_walk`'s result),
/// under its mm's page-table lock.
pub struct Hit<'a, 'l> {
    pub mm: &'a MmStruct,
    pub ptl: &'l PtlGuard<'a>,
    pub mem: &'a mut FrameTableMem,
    pub vma: &'a Vma,
    pub va: VirtAddr,
    /// 3 for a page entry, 2 for a block.
    pub level: u32,
    pub slot: Pte<'l>,
    pub desc: Desc,
    /// The folio page the entry maps (0 for a block).
    pub page: u64,
}

/// Linux `rmap_walk`: calls `f` for every entry that maps `t`'s folio as
/// `want` says, in every mm the anon_vma or the file's mapping tree lists.
/// An mm that joins the list during the walk (a fork) is visited too
/// before the walk ends.
pub fn rmap_walk(t: RmapTarget, want: Want, f: &mut dyn FnMut(&mut Hit<'_, '_>)) {
    let Some(resolve) = RESOLVER.get() else { return };
    let list = if t.anon { &ANON_VMAS } else { &I_MMAP };
    let mut done: Vec<u64> = Vec::new();
    loop {
        let next: Vec<u64> = list
            .lock()
            .get(&t.mapping)
            .map(|m| m.keys().copied().filter(|k| !done.contains(k)).collect())
            .unwrap_or_default();
        if next.is_empty() {
            return;
        }
        for key in next {
            done.push(key);
            resolve(key, &mut |mt| walk_mm(mt, t, want, f));
        }
    }
}

/// The VA of folio page `i` in `vma`, if the VMA covers it.
fn page_va(t: &RmapTarget, vma: &Vma, i: u64) -> Option<VirtAddr> {
    let va = if t.anon {
        if vma.anon_vma != t.mapping {
            return None;
        }
        VirtAddr::new((t.index + i) << PAGE_SHIFT)
    } else {
        let pgoff = t.index + i;
        if vma.file != t.mapping || pgoff < vma.pgoff {
            return None;
        }
        vma.start + (pgoff - vma.pgoff) * PAGE_SIZE
    };
    (vma.start <= va && va < vma.end).then_some(va)
}

fn walk_mm(mt: MmTables<'_>, t: RmapTarget, want: Want, f: &mut dyn FnMut(&mut Hit<'_, '_>)) {
    let g = mt.mm.mmap_read_lock();
    let ptl = mt.mm.page_table_lock_guard();
    let mut mem = mt.mem.lock();
    let block = GRANULE.level_size(2);
    for vma in g.vmas().iter() {
        let mut i = 0;
        while i < t.nr {
            let Some(va) = page_va(&t, vma, i) else {
                i += 1;
                continue;
            };
            let Some(pmd) = super::memory::pmd_lookup(&ptl, &mut mem, va, false) else {
                i += 1;
                continue;
            };
            let pd = pmd.get();
            match pd.kind(2, GRANULE) {
                Kind::Leaf(pa) if want == Want::Mapped => {
                    // A block maps the folio whole, once.
                    if pa == t.pa && !pd.special() {
                        let mut h = Hit {
                            mm: mt.mm,
                            ptl: &ptl,
                            mem: &mut mem,
                            vma,
                            va: va.align_down(block),
                            level: 2,
                            slot: pmd,
                            desc: pd,
                            page: 0,
                        };
                        f(&mut h);
                    }
                    i = t.nr.min(i + block / PAGE_SIZE);
                    continue;
                }
                Kind::Table(table) => {
                    // SAFETY: `table` was reached from this mm's pgd under `ptl`.
                    let slot = unsafe { super::memory::entry(pmd, &mem, table, GRANULE.index(va.as_u64(), 3)) };
                    let d = slot.get();
                    let want_pa = t.pa + i * PAGE_SIZE;
                    let hit = match (want, d.kind(3, GRANULE)) {
                        (Want::Mapped, Kind::Leaf(pa)) => pa == want_pa && !d.special(),
                        (Want::Migration, Kind::NonPresent(NonPresent::Migration { pa, .. })) => pa == want_pa,
                        _ => false,
                    };
                    if hit {
                        let mut h =
                            Hit { mm: mt.mm, ptl: &ptl, mem: &mut mem, vma, va, level: 3, slot, desc: d, page: i };
                        f(&mut h);
                    }
                }
                _ => {}
            }
            i += 1;
        }
    }
}

/// For `invariants`: whether the reverse map finds the entry at `va` of
/// `vma` in `mm` that maps page `i` of `folio` (the anon_vma or mapping
/// tree lists the mm, and the folio's index leads to `va`). Folios the
/// reverse map does not cover (driver pages) pass.
pub fn finds(mm: &MmStruct, vma: &Vma, va: VirtAddr, folio: Folio, i: u64) -> bool {
    if !folio.is_anon() && !folio.in_page_cache() {
        return true;
    }
    let Some(t) = RmapTarget::of(folio) else { return false };
    let list = if t.anon { &ANON_VMAS } else { &I_MMAP };
    let listed = list.lock().get(&t.mapping).is_some_and(|m| m.contains_key(&mm_key(mm)));
    listed && page_va(&t, vma, i) == Some(va)
}

/// Calls `f` with every mm the file's mapping tree lists (Linux's walk of
/// `mapping->i_mmap` in `unmap_mapping_range`), one at a time, no lock held.
pub fn for_each_file_mm(file: u32, f: &mut dyn FnMut(MmTables<'_>)) {
    let Some(resolve) = RESOLVER.get() else { return };
    let mms: Vec<u64> = I_MMAP.lock().get(&file).map(|m| m.keys().copied().collect()).unwrap_or_default();
    for key in mms {
        resolve(key, f);
    }
}
