//! `folio_walk_start` / `folio_walk_end` (Linux `mm/pagewalk.c`) and
//! `vm_normal_page`.
//!
//! Finds what is mapped at one user address: the entry, its level (PTE, PMD,
//! PUD in Linux's terms), the start of the folio-sized leaf and the exact
//! sub-page. As the seed thread (000) settles it, VM_PFNMAP/VM_IO VMAs are
//! *not* rejected up front: a MAP_PRIVATE PFNMAP may hold anon pages that COW
//! placed there, and those must be found; PFN entries are rejected by their
//! special bit (`vm_normal_page` semantics) at every level. The shared zero
//! page is special too and is returned only with [`FwFlags::zeropage`], and
//! then without an exposed `page` (Linux sets `fw->page = NULL`).
//!
//! The page-table lock is held by the returned [`FolioWalk`] until it is
//! dropped (`folio_walk_end`).

use spin::MutexGuard;

use super::addr::{PhysAddr, VirtAddr};
use super::desc::{Desc, Kind};
use super::mm_struct::{MmapLocked, Vma};
use super::pgtable::TableMemory;
use crate::arch::aarch64::granule::{GRANULE, Granule, USER_START_LEVEL};

/// Linux's names for the level a leaf was found at.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FwLevel {
    Pte,
    Pmd,
    Pud,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FwFlags {
    /// Also report the shared (or huge) zero page (Linux `FW_ZEROPAGE`).
    pub zeropage: bool,
}

/// The result of a successful walk; holds the page-table lock.
pub struct FolioWalk<'a> {
    /// Base of the memory the leaf maps (the folio when the leaf is a folio-sized mapping).
    pub folio: PhysAddr,
    /// Bytes the leaf maps (page, contiguous run, or block).
    pub size: u64,
    /// The exact page at the address; `None` for the zero page (not exposed).
    pub page: Option<PhysAddr>,
    pub level: FwLevel,
    /// The translation-table level (0-3) of the leaf.
    pub table_level: u32,
    pub entry: Desc,
    pub zero: bool,
    _ptl: MutexGuard<'a, ()>,
}

/// `vm_normal_page`: the page an entry maps if it has normal struct-page
/// semantics; `None` for special entries (PFN mappings, the zero page).
pub fn vm_normal_page(_vma: &Vma, entry: Desc, level: u32, g: Granule) -> Option<PhysAddr> {
    match entry.kind(level, g) {
        Kind::Leaf(pa) if !entry.special() => Some(pa),
        _ => None,
    }
}

/// Looks up `addr` in the mm the lock belongs to. `is_zero_page` tells the
/// shared zero page(s) apart from other special entries.
pub fn folio_walk_start<'a, M: TableMemory + ?Sized>(
    lock: &'a impl MmapLocked,
    mem: &M,
    addr: VirtAddr,
    flags: FwFlags,
    is_zero_page: &dyn Fn(PhysAddr) -> bool,
) -> Option<FolioWalk<'a>> {
    folio_walk_start_with(lock, mem, GRANULE, USER_START_LEVEL, addr, flags, is_zero_page)
}

/// [`folio_walk_start`] for an explicit granule (host tests).
pub fn folio_walk_start_with<'a, M: TableMemory + ?Sized>(
    lock: &'a impl MmapLocked,
    mem: &M,
    g: Granule,
    start_level: u32,
    addr: VirtAddr,
    flags: FwFlags,
    is_zero_page: &dyn Fn(PhysAddr) -> bool,
) -> Option<FolioWalk<'a>> {
    let mm = lock.mm();
    let vma = *lock.vmas().find(addr)?;
    let ptl = mm.page_table_lock.lock();
    let mut table = mm.pgd;
    for level in start_level..=3 {
        // SAFETY: TableMemory guarantees the pointer reaches a live table.
        let d = Desc(unsafe {
            (*mem.table_ptr(table).add(g.index(addr.as_u64(), level))).load(core::sync::atomic::Ordering::Acquire)
        });
        match d.kind(level, g) {
            Kind::Table(next) if level < 3 => table = next,
            Kind::Leaf(base) => {
                let mut size = g.level_size(level);
                let mut folio = base;
                if d.contiguous() {
                    size *= g.contiguous_entries(level) as u64;
                    folio = base.align_down(size);
                }
                let exact = PhysAddr::new((folio.as_u64() + (addr.as_u64() & (size - 1))) & !(g.page_size() - 1));
                let fw_level = match level {
                    3 => FwLevel::Pte,
                    2 => FwLevel::Pmd,
                    _ => FwLevel::Pud,
                };
                return match vm_normal_page(&vma, d, level, g) {
                    Some(_) => Some(FolioWalk {
                        folio,
                        size,
                        page: Some(exact),
                        level: fw_level,
                        table_level: level,
                        entry: d,
                        zero: false,
                        _ptl: ptl,
                    }),
                    None if flags.zeropage && is_zero_page(base) => Some(FolioWalk {
                        folio,
                        size,
                        page: None,
                        level: fw_level,
                        table_level: level,
                        entry: d,
                        zero: true,
                        _ptl: ptl,
                    }),
                    None => None,
                };
            }
            _ => return None,
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mm::desc::LeafAttrs;
    use crate::mm::mm_struct::{MmStruct, VmFlags};
    use crate::mm::pgtable::host::{HostMem, map};
    use crate::mm::pgtable::{LeafSizes, Tables};

    const G: Granule = Granule::K4;
    const ZERO: PhysAddr = PhysAddr::new(0x7000_0000);
    const USER: LeafAttrs = LeafAttrs { el0: true, ng: true, ..LeafAttrs::KERNEL_RW };
    const SPECIAL: LeafAttrs = LeafAttrs { special: true, ..USER };

    fn is_zero(pa: PhysAddr) -> bool {
        pa == ZERO
    }

    #[test]
    fn rules_of_the_seed_thread() {
        let (mut mem, root) = HostMem::new(G);
        let mut t = Tables::new(root, G, 0, &mut mem);
        // A private PFNMAP VMA at 0x10_0000: PFN entries (special) and one
        // page COW replaced with an anon page (normal).
        map(&mut t, VirtAddr::new(0x10_0000), PhysAddr::new(0x0900_0000), 0x2000, SPECIAL, LeafSizes::PagesOnly)
            .unwrap();
        map(&mut t, VirtAddr::new(0x10_2000), PhysAddr::new(0x4123_4000), 0x1000, USER, LeafSizes::PagesOnly).unwrap();
        // An anon VMA at 0x40_0000: a 2M block (a THP) and the zero page.
        map(&mut t, VirtAddr::new(0x40_0000), PhysAddr::new(0x4020_0000), 0x20_0000, USER, LeafSizes::Largest).unwrap();
        map(&mut t, VirtAddr::new(0x60_0000), ZERO, 0x1000, SPECIAL, LeafSizes::PagesOnly).unwrap();
        let mm = MmStruct::new(root, 9);
        {
            let mut w = mm.mmap_write_lock();
            assert!(w.insert(Vma {
                start: VirtAddr::new(0x10_0000),
                end: VirtAddr::new(0x10_3000),
                flags: VmFlags::PFNMAP | VmFlags::IO | VmFlags::READ,
                folio_order: 0,
                file: 0,
                pgoff: 0,
                anon_vma: 0,
            }));
            assert!(w.insert(Vma {
                start: VirtAddr::new(0x40_0000),
                end: VirtAddr::new(0x70_0000),
                flags: VmFlags::READ | VmFlags::WRITE,
                folio_order: 0,
                file: 0,
                pgoff: 0,
                anon_vma: 0,
            }));
        }
        let g = mm.mmap_read_lock();
        let none = FwFlags::default();

        // PFN entries are rejected by the special bit...
        assert!(folio_walk_start_with(&g, &mem, G, 0, VirtAddr::new(0x10_0000), none, &is_zero).is_none());
        // ...but the anon page COW placed in the same PFNMAP VMA is found.
        let fw = folio_walk_start_with(&g, &mem, G, 0, VirtAddr::new(0x10_2abc), none, &is_zero).unwrap();
        assert_eq!((fw.page, fw.level, fw.size), (Some(PhysAddr::new(0x4123_4000)), FwLevel::Pte, 0x1000));
        drop(fw);

        // A block: PMD level, folio base and the exact sub-page.
        let fw = folio_walk_start_with(&g, &mem, G, 0, VirtAddr::new(0x45_6789), none, &is_zero).unwrap();
        assert_eq!(fw.level, FwLevel::Pmd);
        assert_eq!(fw.folio, PhysAddr::new(0x4020_0000));
        assert_eq!(fw.page, Some(PhysAddr::new(0x4025_6000)));
        assert_eq!(fw.table_level, 2);
        // The page-table lock is held until the walk ends.
        assert!(mm.page_table_lock.try_lock().is_none());
        drop(fw);
        assert!(mm.page_table_lock.try_lock().is_some());

        // The zero page only when asked, and then without an exposed page.
        assert!(folio_walk_start_with(&g, &mem, G, 0, VirtAddr::new(0x60_0010), none, &is_zero).is_none());
        let fw = folio_walk_start_with(&g, &mem, G, 0, VirtAddr::new(0x60_0010), FwFlags { zeropage: true }, &is_zero)
            .unwrap();
        assert!(fw.zero && fw.page.is_none() && fw.folio == ZERO);
        drop(fw);
        // A special entry that is not the zero page stays hidden even with FW_ZEROPAGE.
        assert!(
            folio_walk_start_with(&g, &mem, G, 0, VirtAddr::new(0x10_0000), FwFlags { zeropage: true }, &is_zero)
                .is_none()
        );

        // No VMA, or nothing mapped: nothing.
        assert!(folio_walk_start_with(&g, &mem, G, 0, VirtAddr::new(0x80_0000), none, &is_zero).is_none());
        assert!(folio_walk_start_with(&g, &mem, G, 0, VirtAddr::new(0x61_0000), none, &is_zero).is_none());
    }

    #[test]
    fn contiguous_run_is_one_folio() {
        let (mut mem, root) = HostMem::new(G);
        let mut t = Tables::new(root, G, 0, &mut mem);
        let run = LeafAttrs { contiguous: true, ..USER };
        map(&mut t, VirtAddr::new(0x20_0000), PhysAddr::new(0x5000_0000), 0x1_0000, run, LeafSizes::PagesOnly).unwrap();
        let mm = MmStruct::new(root, 1);
        mm.mmap_write_lock().insert(Vma {
            start: VirtAddr::new(0x20_0000),
            end: VirtAddr::new(0x21_0000),
            flags: VmFlags::READ,
            folio_order: 0,
            file: 0,
            pgoff: 0,
            anon_vma: 0,
        });
        let g = mm.mmap_read_lock();
        let fw = folio_walk_start_with(&g, &mem, G, 0, VirtAddr::new(0x20_5123), FwFlags::default(), &is_zero).unwrap();
        assert_eq!(
            (fw.folio, fw.size, fw.page),
            (PhysAddr::new(0x5000_0000), 0x1_0000, Some(PhysAddr::new(0x5000_5000)))
        );
    }
}
