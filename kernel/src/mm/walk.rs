//! The page-table walker, modelled on Linux `mm/pagewalk.c`.
//!
//! A walk visits, in address order, every entry of the tables under
//! `[start, end)`: table entries before what they point to, block and page
//! leaves, and non-present entries, through [`PageWalkOps::entry`] (each
//! with the hierarchical limits of the table entries above it); empty
//! entries go to [`PageWalkOps::pte_hole`] (depth = level; -1 for a hole
//! between VMAs, as in Linux). A callback returns a [`Step`]: go on
//! (descending into tables), skip a table's subtree, or stop - `Stop(n)` with
//! `n > 0` ends the walk early, `n < 0` is an error; the walk returns that
//! value, or 0 when it visited everything (Linux's convention).
//!
//! Which lock a walk needs is enforced by types (see the seed thread on
//! `walk_page_range_novma`, and [`crate::mm::mm_struct`]):
//!
//! | walk | proof the caller must hand in |
//! |---|---|
//! | [`walk_page_range`] (VMA by VMA) | [`MmapLocked`]: the mm's mmap lock, read or write |
//! | [`walk_page_range_novma`] on a user mm | [`MmapWriteGuard`]: the mmap lock held for **write** |
//! | [`walk_kernel_page_table_range`] | [`KernelPgtableLocked`]: the kernel tables' lock, read suffices |
//!
//! The right locks compile (and the two examples below differ from this one
//! only in the lock they hand in):
//!
//! ```
//! # use pagelab::mm::mm_struct::{MmStruct, KernelPgtable};
//! # use pagelab::mm::walk::*;
//! # use pagelab::mm::addr::VirtAddr;
//! # struct Nop; impl PageWalkOps for Nop {}
//! # fn f<M: pagelab::mm::pgtable::TableMemory>(mm: &MmStruct, k: &KernelPgtable, mem: &M) {
//! let g = mm.mmap_write_lock();
//! walk_page_range_novma(&g, mem, VirtAddr::new(0), VirtAddr::new(0x1000), &mut Nop);
//! drop(g);
//! let r = mm.mmap_read_lock();
//! walk_page_range(&r, mem, VirtAddr::new(0), VirtAddr::new(0x1000), &mut Nop);
//! walk_kernel_page_table_range(&k.read(), mem, VirtAddr::new(0xffff_8000_0000_0000), VirtAddr::new(0xffff_8000_0001_0000), &mut Nop);
//! # }
//! ```
//!
//! ```compile_fail
//! # use pagelab::mm::mm_struct::MmStruct;
//! # use pagelab::mm::walk::*;
//! # use pagelab::mm::addr::VirtAddr;
//! # struct Nop; impl PageWalkOps for Nop {}
//! # fn f<M: pagelab::mm::pgtable::TableMemory>(mm: &MmStruct, mem: &M) {
//! // A read lock is not enough for walking a user mm without VMAs:
//! let g = mm.mmap_read_lock();
//! walk_page_range_novma(&g, mem, VirtAddr::new(0), VirtAddr::new(0x1000), &mut Nop);
//! # }
//! ```
//!
//! ```compile_fail
//! # use pagelab::mm::mm_struct::{MmStruct, KernelPgtable};
//! # use pagelab::mm::walk::*;
//! # use pagelab::mm::addr::VirtAddr;
//! # struct Nop; impl PageWalkOps for Nop {}
//! # fn f<M: pagelab::mm::pgtable::TableMemory>(mm: &MmStruct, mem: &M) {
//! // A user mm's lock is no proof for walking the kernel's tables:
//! let g = mm.mmap_write_lock();
//! walk_kernel_page_table_range(&g, mem, VirtAddr::new(0xffff_8000_0000_0000), VirtAddr::new(0xffff_8000_0001_0000), &mut Nop);
//! # }
//! ```

use super::addr::{PhysAddr, VirtAddr};
use super::desc::{Desc, Kind, TableAttrs};
use super::mm_struct::Vma;
pub use super::mm_struct::{KernelPgtableLocked, MmapLocked, MmapWriteGuard};
use super::pgtable::TableMemory;
use crate::arch::aarch64::granule::{GRANULE, Granule, START_LEVEL, USER_START_LEVEL};

/// What a callback wants next.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Step {
    /// Go on; for a table entry, descend into it.
    Continue,
    /// For a table entry: do not descend (Linux `ACTION_CONTINUE`).
    SkipSubtree,
    /// End the walk with this value: > 0 early stop, < 0 error.
    Stop(i32),
}

/// One entry seen by a walk.
pub use super::pgtable::WalkEntry as Entry;

/// Callbacks of a walk; every one has a do-nothing default.
pub trait PageWalkOps {
    /// Every non-empty entry at every level (Linux's `pgd_entry` ...
    /// `pte_entry` in one; `e.level` tells which).
    fn entry(&mut self, _e: &Entry) -> Step {
        Step::Continue
    }
    /// `[start, end)` has no entry at `depth` (a level), or no VMA (-1).
    fn pte_hole(&mut self, _start: VirtAddr, _end: VirtAddr, _depth: i32) -> Step {
        Step::Continue
    }
    /// Per VMA, before walking it: `Continue` walks it, `SkipSubtree` skips
    /// it (reported as a hole), `Stop(n)` ends the walk.
    fn test_walk(&mut self, _vma: &Vma) -> Step {
        Step::Continue
    }
    fn pre_vma(&mut self, _vma: &Vma) -> Step {
        Step::Continue
    }
    fn post_vma(&mut self, _vma: &Vma) {}
}

fn stop_value(s: Step) -> Option<i32> {
    match s {
        Step::Stop(n) => Some(n),
        _ => None,
    }
}

/// The walk over tables rooted at `root`, `[start, end)` (end exclusive,
/// `end == 0` meaning the top of the address space).
fn walk_tables<M: TableMemory + ?Sized>(
    mem: &M,
    g: Granule,
    root: PhysAddr,
    start_level: u32,
    start: VirtAddr,
    end: VirtAddr,
    ops: &mut dyn PageWalkOps,
) -> i32 {
    let base = VirtAddr::new(if start.as_u64() >> 63 == 1 { 0xffff_0000_0000_0000 } else { 0 });
    walk_table(mem, g, root, start_level, base, start, end, TableAttrs::NONE, ops)
}

#[allow(clippy::too_many_arguments)]
fn walk_table<M: TableMemory + ?Sized>(
    mem: &M,
    g: Granule,
    table: PhysAddr,
    level: u32,
    base: VirtAddr,
    start: VirtAddr,
    end: VirtAddr,
    limits: TableAttrs,
    ops: &mut dyn PageWalkOps,
) -> i32 {
    // Wrapping u64 arithmetic: `end` is 0 for the top of the address space.
    let (base, start, end) = (base.as_u64(), start.as_u64(), end.as_u64());
    let size = g.level_size(level);
    let last = end.wrapping_sub(1);
    let first_idx = if start > base { ((start - base) / size) as usize } else { 0 };
    for idx in first_idx..g.entries_per_table() {
        let va = base.wrapping_add(idx as u64 * size);
        if va > last || (va < base && idx > 0) {
            break;
        }
        // SAFETY: TableMemory guarantees the pointer reaches a live table.
        let d = Desc(unsafe { (*mem.table_ptr(table).add(idx)).load(core::sync::atomic::Ordering::Relaxed) });
        let lo = va.max(start);
        let hi = va.wrapping_add(size).wrapping_sub(1).min(last).wrapping_add(1);
        let kind = d.kind(level, g);
        if kind == Kind::None {
            if let Some(n) = stop_value(ops.pte_hole(VirtAddr::new(lo), VirtAddr::new(hi), level as i32)) {
                return n;
            }
            continue;
        }
        let step = ops.entry(&Entry { va: VirtAddr::new(va), level, desc: d, kind, size, limits });
        match step {
            Step::Stop(n) => return n,
            Step::SkipSubtree => continue,
            Step::Continue => {}
        }
        if let (Kind::Table(next), true) = (kind, level < 3) {
            let (va, lo, hi) = (VirtAddr::new(va), VirtAddr::new(lo), VirtAddr::new(hi));
            let r = walk_table(mem, g, next, level + 1, va, lo, hi, limits.and_then(d.table_attrs()), ops);
            if r != 0 {
                return r;
            }
        }
    }
    0
}

/// Walks a user mm's tables VMA by VMA (Linux `walk_page_range`): holes
/// between VMAs go to `pte_hole(.., -1)`; per VMA `test_walk`, `pre_vma`,
/// the tables, `post_vma`. Needs the mmap lock, read or write.
pub fn walk_page_range<M: TableMemory + ?Sized>(
    lock: &impl MmapLocked,
    mem: &M,
    start: VirtAddr,
    end: VirtAddr,
    ops: &mut dyn PageWalkOps,
) -> i32 {
    let mm = lock.mm();
    let mut cur = start;
    for vma in lock.vmas().iter().filter(|v| v.end > start && v.start < end) {
        if vma.start > cur
            && let Some(n) = stop_value(ops.pte_hole(cur, vma.start, -1))
        {
            return n;
        }
        let (lo, hi) = (vma.start.max(start), vma.end.min(end));
        match ops.test_walk(vma) {
            Step::Stop(n) => return n,
            Step::SkipSubtree => {
                if let Some(n) = stop_value(ops.pte_hole(lo, hi, -1)) {
                    return n;
                }
            }
            Step::Continue => {
                if let Some(n) = stop_value(ops.pre_vma(vma)) {
                    return n;
                }
                let r = walk_tables(mem, GRANULE, mm.pgd, USER_START_LEVEL, lo, hi, ops);
                ops.post_vma(vma);
                if r != 0 {
                    return r;
                }
            }
        }
        cur = hi;
    }
    if cur < end
        && let Some(n) = stop_value(ops.pte_hole(cur, end, -1))
    {
        return n;
    }
    0
}

/// Walks a user mm's tables ignoring VMAs (Linux `walk_page_range_novma`).
/// Nothing stops a concurrent unmap from freeing tables under the walk but
/// the mmap lock held for write, so that is what it takes.
pub fn walk_page_range_novma<M: TableMemory + ?Sized>(
    lock: &MmapWriteGuard<'_>,
    mem: &M,
    start: VirtAddr,
    end: VirtAddr,
    ops: &mut dyn PageWalkOps,
) -> i32 {
    walk_tables(mem, GRANULE, lock.mm().pgd, USER_START_LEVEL, start, end, ops)
}

/// Walks the kernel's tables (Linux `walk_kernel_page_table_range`). The
/// kernel tables' lock held for read is enough: kernel mappings are not torn
/// down under a reader (seed thread: "it is ridiculous to hold a particular
/// user mmap write lock against the changes of the kernel page tables").
pub fn walk_kernel_page_table_range<M: TableMemory + ?Sized>(
    lock: &impl KernelPgtableLocked,
    mem: &M,
    start: VirtAddr,
    end: VirtAddr,
    ops: &mut dyn PageWalkOps,
) -> i32 {
    walk_tables(mem, GRANULE, lock.root(), START_LEVEL, start, end, ops)
}

/// The same walk for an explicit granule and root (host tests, tools).
pub fn walk_tables_with<M: TableMemory + ?Sized>(
    mem: &M,
    g: Granule,
    root: PhysAddr,
    start_level: u32,
    start: VirtAddr,
    end: VirtAddr,
    ops: &mut dyn PageWalkOps,
) -> i32 {
    walk_tables(mem, g, root, start_level, start, end, ops)
}

#[cfg(test)]
mod tests {
    extern crate std;
    use super::*;
    use crate::mm::desc::LeafAttrs;
    use crate::mm::mm_struct::{KernelPgtable, MmStruct, VmFlags};
    use crate::mm::pgtable::host::{HostMem, map};
    use crate::mm::pgtable::{LeafSizes, Tables};
    use std::vec::Vec;

    const MIB: u64 = 1 << 20;

    /// Records everything.
    #[derive(Default)]
    struct Rec {
        entries: Vec<(u64, u32, bool)>,
        holes: Vec<(u64, u64, i32)>,
        vmas: Vec<(u64, u64)>,
        stop_at: Option<u64>,
        skip_tables_at: Option<u32>,
    }
    impl PageWalkOps for Rec {
        fn entry(&mut self, e: &Entry) -> Step {
            self.entries.push((e.va.as_u64(), e.level, matches!(e.kind, Kind::Leaf(_))));
            if Some(e.va.as_u64()) == self.stop_at && matches!(e.kind, Kind::Leaf(_)) {
                return Step::Stop(7);
            }
            if Some(e.level) == self.skip_tables_at && matches!(e.kind, Kind::Table(_)) {
                return Step::SkipSubtree;
            }
            Step::Continue
        }
        fn pte_hole(&mut self, s: VirtAddr, e: VirtAddr, d: i32) -> Step {
            self.holes.push((s.as_u64(), e.as_u64(), d));
            Step::Continue
        }
        fn pre_vma(&mut self, v: &Vma) -> Step {
            self.vmas.push((v.start.as_u64(), v.end.as_u64()));
            Step::Continue
        }
        fn test_walk(&mut self, v: &Vma) -> Step {
            if v.flags.contains(VmFlags::PFNMAP) { Step::SkipSubtree } else { Step::Continue }
        }
    }

    fn setup() -> (HostMem, PhysAddr) {
        let (mut mem, root) = HostMem::new(Granule::K4);
        let mut t = Tables::new(root, Granule::K4, 0, &mut mem);
        map(
            &mut t,
            VirtAddr::new(0x40_0000),
            PhysAddr::new(0x8000_0000),
            2 * MIB,
            LeafAttrs::KERNEL_RW,
            LeafSizes::Largest,
        )
        .unwrap();
        map(
            &mut t,
            VirtAddr::new(0x60_0000),
            PhysAddr::new(0x9000_0000),
            3 * 4096,
            LeafAttrs::KERNEL_RW,
            LeafSizes::PagesOnly,
        )
        .unwrap();
        (mem, root)
    }

    #[test]
    fn visits_tables_then_leaves_and_reports_holes() {
        let (mem, root) = setup();
        let mut r = Rec::default();
        let ret =
            walk_tables_with(&mem, Granule::K4, root, 0, VirtAddr::new(0x40_0000), VirtAddr::new(0x60_4000), &mut r);
        assert_eq!(ret, 0);
        let leaves: Vec<_> = r.entries.iter().filter(|e| e.2).map(|e| (e.0, e.1)).collect();
        assert_eq!(leaves, [(0x40_0000, 2), (0x60_0000, 3), (0x60_1000, 3), (0x60_2000, 3)]);
        // Page 0x60_3000 is a level-3 hole inside the range.
        assert!(r.holes.contains(&(0x60_3000, 0x60_4000, 3)), "{:?}", r.holes);
        // Tables come before their contents.
        let pos = |va, lvl| r.entries.iter().position(|e| e.0 == va && e.1 == lvl).unwrap();
        assert!(pos(0x60_0000, 2) < pos(0x60_0000, 3));
    }

    #[test]
    fn entries_carry_the_limits_of_the_tables_above() {
        let (mut mem, root) = setup();
        let up = TableAttrs { no_el0: true, ..TableAttrs::NONE };
        let down = TableAttrs { read_only: true, uxn: true, ..TableAttrs::NONE };
        {
            let mut t = Tables::new(root, Granule::K4, 0, &mut mem);
            struct NoFlush;
            impl crate::mm::pgtable::TlbFlush for NoFlush {
                fn publish(&mut self) {}
                fn flush(&mut self, _: VirtAddr, _: u64, _: Option<u16>, _: bool) {}
            }
            let mut fl = NoFlush;
            // SAFETY: the test's own tables in its own HostMem.
            let excl = unsafe { crate::mm::pgtable::ExclusiveTables::new() };
            let mut l = crate::mm::pgtable::CursorMut::new(&excl, &mut t, crate::mm::pgtable::Stage1Kernel, &mut fl);
            l.limit_table(VirtAddr::new(0), 0, up).unwrap();
            l.limit_table(VirtAddr::new(0x60_0000), 2, down).unwrap();
            let _ = l.finish();
        }
        #[derive(Default)]
        struct Lim(Vec<(u64, u32, TableAttrs)>);
        impl PageWalkOps for Lim {
            fn entry(&mut self, e: &Entry) -> Step {
                self.0.push((e.va.as_u64(), e.level, e.limits));
                Step::Continue
            }
        }
        let mut w = Lim::default();
        walk_tables_with(&mem, Granule::K4, root, 0, VirtAddr::new(0), VirtAddr::new(0x100_0000), &mut w);
        let at = |va, lvl| w.0.iter().find(|e| e.0 == va && e.1 == lvl).unwrap().2;
        assert_eq!(at(0, 0), TableAttrs::NONE, "a table entry's own limits are not above it");
        assert_eq!(at(0, 1), up);
        assert_eq!(at(0x40_0000, 2), up, "the 2M block under the level-0 limits only");
        assert_eq!(at(0x60_0000, 2), up, "the level-2 table entry itself");
        assert_eq!(at(0x60_1000, 3), up.and_then(down));
        // The walk and the translation agree on the limits.
        let t = Tables::new(root, Granule::K4, 0, &mut mem);
        assert_eq!(t.translate_with_limits(VirtAddr::new(0x60_1000)).1, at(0x60_1000, 3));
    }

    #[test]
    fn early_stop_and_skip_subtree() {
        let (mem, root) = setup();
        let mut r = Rec { stop_at: Some(0x60_1000), ..Default::default() };
        assert_eq!(
            walk_tables_with(&mem, Granule::K4, root, 0, VirtAddr::new(0), VirtAddr::new(0x100_0000), &mut r),
            7
        );
        assert!(!r.entries.iter().any(|e| e.0 == 0x60_2000), "walk went on after Stop");
        let mut r = Rec { skip_tables_at: Some(2), ..Default::default() };
        assert_eq!(
            walk_tables_with(&mem, Granule::K4, root, 0, VirtAddr::new(0), VirtAddr::new(0x100_0000), &mut r),
            0
        );
        assert!(!r.entries.iter().any(|e| e.1 == 3), "descended into a skipped table");
    }

    #[test]
    fn vma_walk_holes_test_walk_and_lock_types() {
        let (mem, root) = setup();
        let mm = MmStruct::new(root, 5);
        {
            let mut w = mm.mmap_write_lock();
            w.insert(Vma {
                start: VirtAddr::new(0x40_0000),
                end: VirtAddr::new(0x60_0000),
                flags: VmFlags::READ,
                folio_order: 0,
                file: 0,
                pgoff: 0,
                anon_vma: 0,
            });
            w.insert(Vma {
                start: VirtAddr::new(0x60_0000),
                end: VirtAddr::new(0x60_2000),
                flags: VmFlags::PFNMAP,
                folio_order: 0,
                file: 0,
                pgoff: 0,
                anon_vma: 0,
            });
        }
        let g = mm.mmap_read_lock();
        let mut r = Rec::default();
        assert_eq!(walk_page_range(&g, &mem, VirtAddr::new(0x30_0000), VirtAddr::new(0x70_0000), &mut r), 0);
        assert_eq!(r.vmas, [(0x40_0000, 0x60_0000)], "the PFNMAP VMA is skipped by test_walk");
        assert!(r.holes.contains(&(0x30_0000, 0x40_0000, -1)), "gap before the first VMA");
        assert!(r.holes.contains(&(0x60_0000, 0x60_2000, -1)), "skipped VMA reported as a hole");
        assert!(r.holes.contains(&(0x60_2000, 0x70_0000, -1)), "gap after the last VMA");
        assert!(!r.entries.iter().any(|e| e.0 == 0x60_0000 && e.2), "PFNMAP pages not visited");
        drop(g);
        // novma needs the write lock, and sees everything.
        let w = mm.mmap_write_lock();
        let mut r = Rec::default();
        assert_eq!(walk_page_range_novma(&w, &mem, VirtAddr::new(0), VirtAddr::new(0x100_0000), &mut r), 0);
        assert_eq!(r.entries.iter().filter(|e| e.2).count(), 4);
    }

    #[test]
    fn kernel_walk_with_read_lock() {
        let (mut mem, root) = HostMem::new(Granule::K4);
        let mut t = Tables::new(root, Granule::K4, 0, &mut mem);
        map(
            &mut t,
            VirtAddr::new(0xffff_8000_0000_0000),
            PhysAddr::new(0x4000_0000),
            2 * 4096,
            LeafAttrs::KERNEL_RX,
            LeafSizes::PagesOnly,
        )
        .unwrap();
        let k = KernelPgtable::new(root);
        let g = k.read();
        let mut r = Rec::default();
        assert_eq!(
            walk_kernel_page_table_range(
                &g,
                &mem,
                VirtAddr::new(0xffff_8000_0000_0000),
                VirtAddr::new(0xffff_8000_0000_3000),
                &mut r
            ),
            0
        );
        let leaves: Vec<_> = r.entries.iter().filter(|e| e.2).map(|e| e.0).collect();
        assert_eq!(leaves, [0xffff_8000_0000_0000, 0xffff_8000_0000_1000]);
        assert!(r.holes.contains(&(0xffff_8000_0000_2000, 0xffff_8000_0000_3000, 3)));
    }
}
