//! Changing live translation tables: split, collapse, contiguous runs,
//! unmap and protect, each with the architecture's break-before-make (BBM)
//! sequence where one is required (Arm ARM D8.16.1):
//!
//! 1. write an invalid entry (break),
//! 2. TLB invalidate the VA range it mapped (`TlbFlush::flush`),
//! 3. write the new entry (make).
//!
//! [`Live`] tracks ranges that were broken but not yet flushed: writing a
//! valid entry over one of them is a BBM violation and is refused with
//! [`MapError::BbmViolation`] instead of silently producing a TLB conflict.
//! Tables unlinked by an operation are returned in [`Detached`] only after
//! the flush that removed them from every TLB and walk cache has completed,
//! so the caller may free them straight away.

use alloc::vec::Vec;

use super::{MapError, TableMemory, Tables};
use crate::mm::addr::{PhysAddr, VirtAddr};
use crate::mm::desc::{Desc, Kind, TableAttrs, needs_break_before_make};

/// TLB maintenance, done for real by the kernel and recorded by host tests.
pub trait TlbFlush {
    /// Makes earlier table writes visible to the table walker (`dsb ishst`),
    /// for invalid-to-valid changes that need no TLBI.
    fn publish(&mut self);
    /// Invalidates cached translations of `[va, va+size)` in `asid` (`None`:
    /// global kernel entries), including walk caches unless `leaf_only`,
    /// and waits for completion (`dsb ish; isb`).
    fn flush(&mut self, va: u64, size: u64, asid: Option<u16>, leaf_only: bool);
}

/// Table pages unlinked by an operation. Every TLB and walk-cache entry that
/// could reference them has been invalidated; free them when convenient.
#[derive(Debug, Default)]
#[must_use = "detached tables must be freed"]
pub struct Detached(pub Vec<PhysAddr>);

/// The attribute bits [`Live::protect`] may change without BBM: AP, AF,
/// PXN/UXN, DBM and the software bits.
pub const PERM_BITS: u64 = (0b11 << 6) | (1 << 10) | (1 << 51) | (3 << 53) | (0xf << 55);

/// One batch of changes to live tables.
pub struct Live<'a, 'm, M: TableMemory> {
    pub t: &'a mut Tables<'m, M>,
    asid: Option<u16>,
    fl: &'a mut dyn TlbFlush,
    /// Broken (invalidated) ranges whose TLB entries are not flushed yet.
    pending: Vec<(u64, u64)>,
    /// Whether a pending range includes an unlinked table (needs a non-leaf TLBI).
    pending_tables: bool,
    detached: Vec<PhysAddr>,
}

fn overlaps(a: (u64, u64), b: (u64, u64)) -> bool {
    a.0 < b.1 && b.0 < a.1
}

impl<'a, 'm, M: TableMemory> Live<'a, 'm, M> {
    pub fn new(t: &'a mut Tables<'m, M>, asid: Option<u16>, fl: &'a mut dyn TlbFlush) -> Self {
        Self { t, asid, fl, pending: Vec::new(), pending_tables: false, detached: Vec::new() }
    }

    /// Flushes pending TLB invalidations now, so the MMU (and `AT`) sees
    /// every change made so far.
    pub fn sync(&mut self) {
        self.flush_pending();
        self.fl.publish();
    }

    /// Flushes what is pending and hands back the detached tables.
    pub fn finish(mut self) -> Detached {
        self.flush_pending();
        self.fl.publish();
        Detached(core::mem::take(&mut self.detached))
    }

    fn flush_pending(&mut self) {
        if self.pending.is_empty() {
            return;
        }
        let lo = self.pending.iter().map(|p| p.0).min().unwrap();
        let hi = self.pending.iter().map(|p| p.1).max().unwrap();
        self.fl.flush(lo, hi.wrapping_sub(lo), self.asid, !self.pending_tables);
        self.pending.clear();
        self.pending_tables = false;
    }

    /// The table and index holding the level-`level` entry for `va`.
    fn slot(&self, va: u64, level: u32) -> Result<(PhysAddr, usize), MapError> {
        let mut table = self.t.root;
        for l in self.t.start_level..level {
            let d = self.t.read(table, self.t.granule.index(va, l));
            match d.kind(l, self.t.granule) {
                Kind::Table(next) => table = next,
                _ => return Err(MapError::NotMapped { va: VirtAddr(va), level: l }),
            }
        }
        Ok((table, self.t.granule.index(va, level)))
    }

    /// Step 1: invalidate a live entry covering `[va, va+size)`.
    fn break_entry(&mut self, table: PhysAddr, idx: usize, va: u64, size: u64) {
        let old = self.t.read(table, idx);
        self.t.write(table, idx, Desc::INVALID);
        if old.is_valid() {
            self.push_pending(va, va.wrapping_add(size));
        }
    }

    /// Records a range to flush, merged with the previous one when they
    /// touch (an unmap of N pages stays one entry, not N).
    fn push_pending(&mut self, lo: u64, hi: u64) {
        if let Some(last) = self.pending.last_mut()
            && lo <= last.1
            && last.0 <= hi
        {
            *last = (last.0.min(lo), last.1.max(hi));
            return;
        }
        self.pending.push((lo, hi));
    }

    /// Step 3: write a valid entry; refused while its range is broken but
    /// not flushed, or when it would replace a live entry in a way that
    /// needs BBM.
    fn make_entry(&mut self, table: PhysAddr, idx: usize, va: u64, level: u32, new: Desc) -> Result<(), MapError> {
        let size = self.t.granule.level_size(level);
        if new.is_valid() && self.pending.iter().any(|&p| overlaps(p, (va, va.wrapping_add(size)))) {
            return Err(MapError::BbmViolation { va: VirtAddr(va), level });
        }
        let old = self.t.read(table, idx);
        if old.is_valid() && new.is_valid() && needs_break_before_make(old, new, level, self.t.granule) {
            return Err(MapError::NeedsBreakBeforeMake { va: VirtAddr(va), level, old, new });
        }
        self.t.write(table, idx, new);
        Ok(())
    }

    /// Replaces the level-`level` entry for `va` (aligned down), with BBM when
    /// the change needs it. A replaced table is detached.
    pub fn replace(&mut self, va: u64, level: u32, new: Desc) -> Result<(), MapError> {
        let size = self.t.granule.level_size(level);
        let va = va & !(size - 1);
        let (table, idx) = self.slot(va, level)?;
        let old = self.t.read(table, idx);
        if old == new {
            return Ok(());
        }
        let bbm = old.is_valid() && (!new.is_valid() || needs_break_before_make(old, new, level, self.t.granule));
        if bbm {
            self.break_entry(table, idx, va, size);
            if let Kind::Table(child) = old.kind(level, self.t.granule) {
                self.pending_tables = true;
                self.detached.push(child);
            }
            self.flush_pending();
        }
        self.make_entry(table, idx, va, level, new)?;
        if old.is_valid() && !bbm {
            // A live-safe change (permissions): old TLB entries must still go.
            self.push_pending(va, va.wrapping_add(size));
        }
        Ok(())
    }

    /// Sets the hierarchical limits (APTable, UXNTable, PXNTable) of the
    /// level-`level` table entry covering `va`. Like a permission change this
    /// needs no break-before-make, but walk caches hold table entries, so the
    /// range is flushed with a non-leaf TLBI.
    pub fn limit_table(&mut self, va: u64, level: u32, limits: TableAttrs) -> Result<(), MapError> {
        let size = self.t.granule.level_size(level);
        let va = va & !(size - 1);
        let (table, idx) = self.slot(va, level)?;
        let old = self.t.read(table, idx);
        let Kind::Table(child) = old.kind(level, self.t.granule) else {
            return Err(MapError::NotMapped { va: VirtAddr(va), level });
        };
        let new = Desc::table_with(child, limits);
        if new != old {
            self.t.write(table, idx, new);
            self.push_pending(va, va.wrapping_add(size));
            self.pending_tables = true;
        }
        Ok(())
    }

    /// Splits the block at `level` covering `va` into a table of next-level
    /// leaves mapping the same memory with the same attributes.
    pub fn split(&mut self, va: u64, level: u32) -> Result<(), MapError> {
        let g = self.t.granule;
        let size = g.level_size(level);
        let va = va & !(size - 1);
        let (table, idx) = self.slot(va, level)?;
        let old = self.t.read(table, idx);
        let base = match old.kind(level, g) {
            Kind::Leaf(pa) if level < 3 => pa,
            _ => return Err(MapError::NotABlock { va: VirtAddr(va), level }),
        };
        if old.contiguous() {
            self.split_contiguous(va, level)?;
        }
        let old = self.t.read(table, idx);
        let child_level = level + 1;
        let child_size = g.level_size(child_level);
        let child = self.t.mem.alloc_table().ok_or(MapError::OutOfMemory)?;
        let ty = if child_level == 3 { 0b11 } else { 0b01 };
        let attrs = old.attr_bits() & !(1 << 52);
        for i in 0..g.entries_per_table() {
            // Not yet reachable by the walker: plain writes.
            self.t.write(child, i, Desc(((base.0 + i as u64 * child_size) & 0x0000_ffff_ffff_f000) | attrs | ty));
        }
        self.replace(va, level, Desc::table(child))
    }

    /// The first index and entry count of the contiguous group holding `idx`.
    fn group(&self, idx: usize, level: u32) -> (usize, usize) {
        let n = self.t.granule.contiguous_entries(level);
        (idx & !(n - 1), n)
    }

    /// Clears the contiguous bit on the whole run containing `va` (BBM on the run).
    pub fn split_contiguous(&mut self, va: u64, level: u32) -> Result<(), MapError> {
        let (table, idx) = self.slot(va, level)?;
        if !self.t.read(table, idx).contiguous() {
            return Ok(());
        }
        let (first, n) = self.group(idx, level);
        let size = self.t.granule.level_size(level);
        let run_va = (va & !(size * n as u64 - 1)) & !(size - 1);
        let olds: Vec<Desc> = (0..n).map(|i| self.t.read(table, first + i)).collect();
        for i in 0..n {
            self.break_entry(table, first + i, run_va + i as u64 * size, size);
        }
        self.flush_pending();
        for (i, d) in olds.into_iter().enumerate() {
            self.make_entry(table, first + i, run_va + i as u64 * size, level, Desc(d.0 & !(1 << 52)))?;
        }
        Ok(())
    }

    /// Sets the contiguous bit on the aligned run containing `va`, whose
    /// entries must be leaves mapping consecutive memory with identical
    /// attributes (BBM on the run).
    pub fn make_contiguous(&mut self, va: u64, level: u32) -> Result<(), MapError> {
        let g = self.t.granule;
        let (table, idx) = self.slot(va, level)?;
        let (first, n) = self.group(idx, level);
        if n < 2 {
            return Err(MapError::NotContiguous { va: VirtAddr(va), level });
        }
        let size = g.level_size(level);
        let run_va = va & !(size * n as u64 - 1);
        let olds: Vec<Desc> = (0..n).map(|i| self.t.read(table, first + i)).collect();
        let Kind::Leaf(pa0) = olds[0].kind(level, g) else {
            return Err(MapError::NotContiguous { va: VirtAddr(va), level });
        };
        let attrs = olds[0].attr_bits() & !(1 << 52);
        let ok = pa0.0 % (size * n as u64) == 0
            && olds.iter().enumerate().all(|(i, d)| {
                d.kind(level, g) == Kind::Leaf(PhysAddr(pa0.0 + i as u64 * size)) && d.attr_bits() & !(1 << 52) == attrs
            });
        if !ok {
            return Err(MapError::NotContiguous { va: VirtAddr(va), level });
        }
        if olds.iter().all(|d| d.contiguous()) {
            return Ok(());
        }
        for i in 0..n {
            self.break_entry(table, first + i, run_va + i as u64 * size, size);
        }
        self.flush_pending();
        for (i, d) in olds.into_iter().enumerate() {
            self.make_entry(table, first + i, run_va + i as u64 * size, level, Desc(d.0 | (1 << 52)))?;
        }
        Ok(())
    }

    /// Replaces the table at `level` covering `va` by one block, if it maps
    /// one aligned, physically contiguous range with identical attributes
    /// using leaves only.
    pub fn collapse(&mut self, va: u64, level: u32) -> Result<(), MapError> {
        let g = self.t.granule;
        if !g.block_allowed(level) {
            return Err(MapError::NotCollapsible { va: VirtAddr(va), level });
        }
        let size = g.level_size(level);
        let va = va & !(size - 1);
        let (table, idx) = self.slot(va, level)?;
        let Kind::Table(child) = self.t.read(table, idx).kind(level, g) else {
            return Err(MapError::NotCollapsible { va: VirtAddr(va), level });
        };
        let cl = level + 1;
        let first = self.t.read(child, 0);
        let Kind::Leaf(pa0) = first.kind(cl, g) else {
            return Err(MapError::NotCollapsible { va: VirtAddr(va), level });
        };
        let attrs = first.attr_bits() & !(1 << 52);
        let cs = g.level_size(cl);
        let ok = pa0.0 % size == 0
            && (0..g.entries_per_table()).all(|i| {
                let d = self.t.read(child, i);
                d.kind(cl, g) == Kind::Leaf(PhysAddr(pa0.0 + i as u64 * cs)) && d.attr_bits() & !(1 << 52) == attrs
            });
        if !ok {
            return Err(MapError::NotCollapsible { va: VirtAddr(va), level });
        }
        self.replace(va, level, Desc((pa0.0 & 0x0000_ffff_ffff_f000) | attrs | 0b01))
    }

    /// Unmaps `[va, va+size)`: splits blocks and contiguous runs that straddle
    /// the edges, invalidates every leaf inside, and unlinks (detaches) every
    /// table under the range that becomes empty.
    pub fn unmap(&mut self, va: u64, size: u64) -> Result<(), MapError> {
        self.edit(va, size, None)
    }

    /// Changes the permission bits ([`PERM_BITS`]) of every leaf in
    /// `[va, va+size)`: `new = (old & !clear) | set`. Blocks and contiguous
    /// runs that straddle the edges are split first.
    pub fn protect(&mut self, va: u64, size: u64, set: u64, clear: u64) -> Result<(), MapError> {
        if (set | clear) & !PERM_BITS != 0 {
            return Err(MapError::NotPermissionBits(set | clear));
        }
        self.edit(va, size, Some((set, clear)))
    }

    fn edit(&mut self, va: u64, size: u64, prot: Option<(u64, u64)>) -> Result<(), MapError> {
        let g = self.t.granule;
        if !va.is_multiple_of(g.page_size()) || !size.is_multiple_of(g.page_size()) {
            return Err(MapError::Misaligned);
        }
        let end = va.wrapping_add(size);
        let mut cur = va;
        while cur != end {
            // Find the entry covering cur.
            let mut table = self.t.root;
            let mut level = self.t.start_level;
            let mut step;
            loop {
                let lsize = g.level_size(level);
                let idx = g.index(cur, level);
                let entry_va = cur & !(lsize - 1);
                let entry_end = entry_va.wrapping_add(lsize);
                step = entry_end.wrapping_sub(cur).min(end.wrapping_sub(cur));
                let d = self.t.read(table, idx);
                let whole = entry_va >= va && entry_end.wrapping_sub(1) <= end.wrapping_sub(1) && cur == entry_va;
                match d.kind(level, g) {
                    Kind::None => break,
                    Kind::NonPresent(_) => {
                        if prot.is_none() && whole {
                            self.t.write(table, idx, Desc::INVALID);
                        }
                        break;
                    }
                    Kind::Reserved => return Err(MapError::NotMapped { va: VirtAddr(cur), level }),
                    Kind::Table(next) if level < 3 => {
                        table = next;
                        level += 1;
                        continue;
                    }
                    Kind::Table(_) => unreachable!(),
                    Kind::Leaf(_) => {
                        if d.contiguous() {
                            let n = g.contiguous_entries(level) as u64;
                            let run = entry_va & !(lsize * n - 1);
                            if run < va || run.wrapping_add(lsize * n).wrapping_sub(1) > end.wrapping_sub(1) {
                                self.split_contiguous(cur, level)?;
                                continue;
                            }
                        }
                        if !whole {
                            self.split(cur, level)?;
                            // Re-walk: the entry is now a table.
                            table = self.t.root;
                            level = self.t.start_level;
                            continue;
                        }
                        match prot {
                            None => {
                                self.break_entry(table, idx, entry_va, lsize);
                            }
                            Some((set, clear)) => {
                                let new = Desc((d.0 & !clear) | set);
                                if new != d {
                                    self.t.write(table, idx, new);
                                    self.push_pending(entry_va, entry_end);
                                }
                            }
                        }
                        break;
                    }
                }
            }
            cur = cur.wrapping_add(step);
        }
        if prot.is_none() {
            self.free_empty(self.t.root, self.t.start_level, Self::root_base(va), va, end)?;
        }
        Ok(())
    }

    /// Unlinks the tables under `[va, end)` that no longer map anything (an
    /// empty table maps nothing, so this is safe even where its span reaches
    /// outside the range). `base` is the VA of `table`'s first entry.
    /// Returns whether `table` itself is now empty.
    fn free_empty(&mut self, table: PhysAddr, level: u32, base: u64, va: u64, end: u64) -> Result<bool, MapError> {
        let g = self.t.granule;
        let lsize = g.level_size(level);
        let mut empty = true;
        for idx in 0..g.entries_per_table() {
            let d = self.t.read(table, idx);
            if d.0 == 0 {
                continue;
            }
            let entry_va = base.wrapping_add(idx as u64 * lsize);
            let entry_end = entry_va.wrapping_add(lsize);
            if let (Kind::Table(child), true) = (d.kind(level, g), level < 3)
                && overlaps((va, end.wrapping_sub(1)), (entry_va, entry_end.wrapping_sub(1)))
            {
                let child_empty = self.free_empty(child, level + 1, entry_va, va, end)?;
                if child_empty {
                    self.t.write(table, idx, Desc::INVALID);
                    // Walk caches may hold the table entry: non-leaf TLBI.
                    self.push_pending(entry_va, entry_end);
                    self.pending_tables = true;
                    self.detached.push(child);
                    continue;
                }
            }
            empty = false;
        }
        Ok(empty)
    }

    /// VA of the root table's first entry for the half `va` is in.
    fn root_base(va: u64) -> u64 {
        if va >> 63 == 1 { 0xffff_0000_0000_0000 } else { 0 }
    }
}

#[cfg(test)]
mod tests {
    extern crate std;
    use super::super::host::HostMem;
    use super::super::{LeafSizes, Translation};
    use super::*;
    use crate::mm::desc::{LeafAttrs, TableAttrs};
    use crate::mm::granule::Granule;
    use std::vec;
    use std::vec::Vec;

    /// Records flushes; the BBM tracking in `Live` does the checking.
    #[derive(Default)]
    struct Rec {
        flushes: Vec<(u64, u64, Option<u16>, bool)>,
        publishes: usize,
    }
    impl TlbFlush for Rec {
        fn publish(&mut self) {
            self.publishes += 1;
        }
        fn flush(&mut self, va: u64, size: u64, asid: Option<u16>, leaf_only: bool) {
            self.flushes.push((va, size, asid, leaf_only));
        }
    }

    const MIB: u64 = 1 << 20;
    const K4: Granule = Granule::K4;

    fn level_at<M: TableMemory>(t: &Tables<'_, M>, va: u64) -> Option<(u32, u64)> {
        match t.translate(VirtAddr(va)) {
            Translation::Mapped { level, pa, .. } => Some((level, pa.0)),
            Translation::Fault { .. } => None,
        }
    }

    #[test]
    fn split_block_into_pages_keeps_every_translation() {
        let (mut mem, root) = HostMem::new(K4);
        let mut t = Tables::new(root, K4, 0, &mut mem);
        t.map(VirtAddr(0x4000_0000), PhysAddr(0x8000_0000), 2 * MIB, LeafAttrs::KERNEL_RW, LeafSizes::Largest).unwrap();
        assert_eq!(level_at(&t, 0x4000_0000), Some((2, 0x8000_0000)));
        let mut rec = Rec::default();
        let mut l = Live::new(&mut t, Some(7), &mut rec);
        l.split(0x4000_1234, 2).unwrap();
        let d = l.finish();
        assert!(d.0.is_empty());
        for off in (0..2 * MIB).step_by(4096) {
            assert_eq!(level_at(&t, 0x4000_0000 + off), Some((3, 0x8000_0000 + off)));
        }
        // BBM: exactly one flush for the block's range, with the ASID, before the table went in.
        assert_eq!(rec.flushes[0], (0x4000_0000, 2 * MIB, Some(7), true));
    }

    #[test]
    fn table_limits_accumulate_down_the_walk_and_flush_walk_caches() {
        let (mut mem, root) = HostMem::new(K4);
        let mut t = Tables::new(root, K4, 0, &mut mem);
        t.map(VirtAddr(0x4000_0000), PhysAddr(0x8000_0000), 8192, LeafAttrs::KERNEL_RW, LeafSizes::PagesOnly).unwrap();
        t.map(VirtAddr(0x4020_0000), PhysAddr(0x9000_0000), 4096, LeafAttrs::KERNEL_RW, LeafSizes::PagesOnly).unwrap();
        let mut rec = Rec::default();
        let mut l = Live::new(&mut t, Some(3), &mut rec);
        let up = TableAttrs { no_el0: true, pxn: true, ..TableAttrs::NONE };
        let down = TableAttrs { read_only: true, ..TableAttrs::NONE };
        l.limit_table(0x4000_0000, 1, up).unwrap();
        l.limit_table(0x4000_1000, 2, down).unwrap();
        assert_eq!(
            l.limit_table(0x4000_0000, 3, down),
            Err(MapError::NotMapped { va: VirtAddr(0x4000_0000), level: 3 }),
            "a leaf is not a table"
        );
        let _ = l.finish();
        let (tr, lim) = t.translate_with_limits(VirtAddr(0x4000_1008));
        assert!(matches!(tr, Translation::Mapped { level: 3, .. }));
        assert_eq!(lim, up.and_then(down));
        // The level-1 limits cover the neighbouring 2M; the level-2 ones do not.
        assert_eq!(t.translate_with_limits(VirtAddr(0x4020_0000)).1, up);
        assert_eq!(t.translate_with_limits(VirtAddr(0x8000_0000)).1, TableAttrs::NONE);
        // One flush over both changed ranges, walk caches included.
        assert_eq!(rec.flushes, [(0x4000_0000, 1 << 30, Some(3), false)]);
    }

    #[test]
    fn split_1g_block_into_2m_blocks_then_collapse_back() {
        let (mut mem, root) = HostMem::new(K4);
        let mut t = Tables::new(root, K4, 0, &mut mem);
        t.map(VirtAddr(0x4000_0000), PhysAddr(0x4000_0000), 1 << 30, LeafAttrs::KERNEL_RW, LeafSizes::Largest).unwrap();
        let mut rec = Rec::default();
        let mut l = Live::new(&mut t, None, &mut rec);
        l.split(0x4000_0000, 1).unwrap();
        let _ = l.finish();
        assert_eq!(level_at(&t, 0x4020_0000), Some((2, 0x4020_0000)));
        let mut l = Live::new(&mut t, None, &mut rec);
        l.collapse(0x4000_0000, 1).unwrap();
        let d = l.finish();
        assert_eq!(d.0.len(), 1, "the 2M-block table is detached");
        assert_eq!(level_at(&t, 0x7fff_f000), Some((1, 0x7fff_f000)));
        let last = rec.flushes.last().unwrap();
        assert!(!last.3, "removing a table needs a non-leaf TLBI: {last:?}");
    }

    #[test]
    fn collapse_refuses_mixed_attributes_or_discontiguous_memory() {
        let (mut mem, root) = HostMem::new(K4);
        let mut t = Tables::new(root, K4, 0, &mut mem);
        t.map(VirtAddr(0x4000_0000), PhysAddr(0x4000_0000), 2 * MIB, LeafAttrs::KERNEL_RW, LeafSizes::PagesOnly)
            .unwrap();
        let mut rec = Rec::default();
        let mut l = Live::new(&mut t, None, &mut rec);
        l.protect(0x4000_3000, 4096, 1 << 7, 0).unwrap();
        assert!(matches!(l.collapse(0x4000_0000, 2), Err(MapError::NotCollapsible { .. })));
        l.protect(0x4000_3000, 4096, 0, 1 << 7).unwrap();
        l.collapse(0x4000_0000, 2).unwrap();
        let d = l.finish();
        assert_eq!(d.0.len(), 1);
        assert_eq!(level_at(&t, 0x4000_3000), Some((2, 0x4000_3000)));
        // Not aligned in PA: pages at 0x4000_0000 mapping PA 0x4000_1000...
        let (mut mem2, root2) = HostMem::new(K4);
        let mut t2 = Tables::new(root2, K4, 0, &mut mem2);
        t2.map(VirtAddr(0x4000_0000), PhysAddr(0x4000_1000), 2 * MIB, LeafAttrs::KERNEL_RW, LeafSizes::PagesOnly)
            .unwrap();
        let mut l2 = Live::new(&mut t2, None, &mut rec);
        assert!(matches!(l2.collapse(0x4000_0000, 2), Err(MapError::NotCollapsible { .. })));
        let _ = l2.finish();
    }

    #[test]
    fn contiguous_runs_make_and_split() {
        let (mut mem, root) = HostMem::new(K4);
        let mut t = Tables::new(root, K4, 0, &mut mem);
        t.map(VirtAddr(0x10_0000), PhysAddr(0x8010_0000), 64 * 1024, LeafAttrs::KERNEL_RW, LeafSizes::PagesOnly)
            .unwrap();
        let mut rec = Rec::default();
        let mut l = Live::new(&mut t, Some(3), &mut rec);
        l.make_contiguous(0x10_5000, 3).unwrap();
        let _ = l.finish();
        for i in 0..16 {
            match t.translate(VirtAddr(0x10_0000 + i * 4096)) {
                Translation::Mapped { desc, .. } => assert!(desc.contiguous()),
                other => panic!("{other:?}"),
            }
        }
        assert_eq!(rec.flushes[0], (0x10_0000, 64 * 1024, Some(3), true), "BBM over the whole run");
        // Protecting one page of the run must split the run first.
        let mut l = Live::new(&mut t, Some(3), &mut rec);
        l.protect(0x10_2000, 4096, 1 << 7, 0).unwrap();
        let _ = l.finish();
        for i in 0..16 {
            match t.translate(VirtAddr(0x10_0000 + i * 4096)) {
                Translation::Mapped { desc, .. } => {
                    assert!(!desc.contiguous());
                    assert_eq!(desc.perms().read_only, i == 2);
                }
                other => panic!("{other:?}"),
            }
        }
        // A misaligned or mixed run is refused.
        let mut l = Live::new(&mut t, Some(3), &mut rec);
        assert!(matches!(l.make_contiguous(0x10_0000, 3), Err(MapError::NotContiguous { .. })));
        let _ = l.finish();
    }

    #[test]
    fn unmap_splits_edges_and_frees_empty_tables() {
        let (mut mem, root) = HostMem::new(K4);
        let mut t = Tables::new(root, K4, 0, &mut mem);
        // Two 2M blocks.
        t.map(VirtAddr(0x4000_0000), PhysAddr(0x4000_0000), 4 * MIB, LeafAttrs::KERNEL_RW, LeafSizes::Largest).unwrap();
        let mut rec = Rec::default();
        let mut l = Live::new(&mut t, Some(1), &mut rec);
        // Unmap from the middle of the first block to the middle of the second.
        l.unmap(0x4010_0000, 2 * MIB).unwrap();
        let d = l.finish();
        assert!(d.0.is_empty());
        assert_eq!(level_at(&t, 0x400f_f000), Some((3, 0x400f_f000)));
        assert_eq!(level_at(&t, 0x4010_0000), None);
        assert_eq!(level_at(&t, 0x402f_f000), None);
        assert_eq!(level_at(&t, 0x4030_0000), Some((3, 0x4030_0000)));
        // Unmap everything: the level-3 and lower tables become empty and are detached.
        let mut l = Live::new(&mut t, Some(1), &mut rec);
        l.unmap(0x4000_0000, 4 * MIB).unwrap();
        let d = l.finish();
        // Everything under the range is now empty: both level-3 tables, then
        // the level-2 and level-1 tables above them; only the root stays.
        assert_eq!(d.0.len(), 4);
        assert_eq!(t.count_tables(), 1);
        assert_eq!(level_at(&t, 0x4000_0000), None);
    }

    #[test]
    fn protect_refuses_non_permission_bits() {
        let (mut mem, root) = HostMem::new(K4);
        let mut t = Tables::new(root, K4, 0, &mut mem);
        t.map(VirtAddr(0x1000), PhysAddr(0x1000), 4096, LeafAttrs::KERNEL_RW, LeafSizes::PagesOnly).unwrap();
        let mut rec = Rec::default();
        let mut l = Live::new(&mut t, None, &mut rec);
        assert!(
            matches!(l.protect(0x1000, 4096, 0b111 << 2, 0), Err(MapError::NotPermissionBits(_))),
            "AttrIndx needs BBM"
        );
        assert!(matches!(l.protect(0x1000, 4096, 1 << 52, 0), Err(MapError::NotPermissionBits(_))), "CONT needs BBM");
        let _ = l.finish();
    }

    #[test]
    fn make_without_flush_is_a_bbm_violation() {
        let (mut mem, root) = HostMem::new(K4);
        let mut t = Tables::new(root, K4, 0, &mut mem);
        t.map(VirtAddr(0x1000), PhysAddr(0x1000), 4096, LeafAttrs::KERNEL_RW, LeafSizes::PagesOnly).unwrap();
        let mut rec = Rec::default();
        let mut l = Live::new(&mut t, None, &mut rec);
        let (table, idx) = l.slot(0x1000, 3).unwrap();
        l.break_entry(table, idx, 0x1000, 4096);
        let new = Desc::leaf(PhysAddr(0x5000), 3, LeafAttrs::KERNEL_RW);
        assert!(matches!(l.make_entry(table, idx, 0x1000, 3, new), Err(MapError::BbmViolation { .. })));
        l.flush_pending();
        l.make_entry(table, idx, 0x1000, 3, new).unwrap();
        let _ = l.finish();
        // And a direct replacement that needs BBM is refused too.
        let mut l = Live::new(&mut t, None, &mut rec);
        let other = Desc::leaf(PhysAddr(0x9000), 3, LeafAttrs::KERNEL_RW);
        let (table, idx) = l.slot(0x1000, 3).unwrap();
        assert!(matches!(l.make_entry(table, idx, 0x1000, 3, other), Err(MapError::NeedsBreakBeforeMake { .. })));
        // replace() does the sequence itself.
        l.replace(0x1000, 3, other).unwrap();
        let _ = l.finish();
        assert_eq!(level_at(&t, 0x1000), Some((3, 0x9000)));
    }

    #[test]
    fn all_granules_split_and_collapse() {
        for (g, start) in [(Granule::K16, 0), (Granule::K64, 1)] {
            let blk = g.level_size(2);
            let (mut mem, root) = HostMem::new(g);
            let mut t = Tables::new(root, g, start, &mut mem);
            t.map(VirtAddr(blk), PhysAddr(blk * 2), blk, LeafAttrs::KERNEL_RW, LeafSizes::Largest).unwrap();
            let mut rec = Rec::default();
            let mut l = Live::new(&mut t, None, &mut rec);
            l.split(blk, 2).unwrap();
            l.make_contiguous(blk, 3).unwrap();
            l.collapse(blk, 2).unwrap();
            let d = l.finish();
            assert_eq!(d.0.len(), 1, "{g:?}");
            assert_eq!(level_at(&t, blk + g.page_size() * 3), Some((2, blk * 2 + g.page_size() * 3)), "{g:?}");
            let _ = vec![0u8; 1];
        }
    }
}
