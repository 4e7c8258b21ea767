//! Building and walking translation tables, independent of where the table
//! memory lives.
//!
//! The kernel runs this over real tables (reached through the linear map or
//! the image); host unit tests run it over heap memory. Entries are read and
//! written only as whole `u64`s through atomics. [`Tables`] itself only
//! reads (translate, walk); every store, building included, goes through
//! the cursor ([`cursor`]), which needs a lock proof: tables not installed
//! yet are built under [`ExclusiveTables`].

use core::sync::atomic::{AtomicU64, Ordering};

pub mod atcheck;
pub mod cursor;
pub use cursor::{
    CursorMut, Detached, ExclusiveTables, PendingBreaks, PgtableLock, Pte, PteRun, Regime, Stage1Kernel, Stage1User,
    Stage2, TlbFlush,
};

use super::addr::{PhysAddr, VirtAddr};
use super::desc::{Desc, Kind, TableAttrs};
use crate::arch::aarch64::granule::Granule;

/// Where table pages come from and how to reach them.
///
/// # Safety
/// Implementers promise that for every `pa` that `alloc_table` returned
/// (or that is otherwise a table of these tables, such as the root),
/// `table_ptr(pa)` points at `entries_per_table()` properly aligned
/// `AtomicU64`s that stay valid and are accessed only as atomics for as
/// long as the table is in use; and that `alloc_table` returns a zeroed
/// page no one else uses.
pub unsafe trait TableMemory {
    /// A zeroed table page, or `None` when out of memory.
    fn alloc_table(&mut self) -> Option<PhysAddr>;
    /// A pointer through which the table at `pa` can be accessed now.
    fn table_ptr(&self, pa: PhysAddr) -> *const AtomicU64;
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MapError {
    OutOfMemory,
    Misaligned,
    /// The change would replace a live mapping in a way the architecture
    /// requires break-before-make for (different output address, memory type,
    /// or a block where a table is, or the reverse).
    /// `va` and `level` are `None` where the edit does not know them: a
    /// [`Pte`] is located by its slot, not by its address.
    NeedsBreakBeforeMake {
        va: Option<VirtAddr>,
        level: Option<u32>,
        old: Desc,
        new: Desc,
    },
    /// A valid entry was about to be written over a range that was broken
    /// (invalidated) but whose TLB entries were not flushed yet. `va` and
    /// `level` as in [`Self::NeedsBreakBeforeMake`].
    BbmViolation {
        va: Option<VirtAddr>,
        level: Option<u32>,
    },
    /// No table or leaf where the operation needs one.
    NotMapped {
        va: VirtAddr,
        level: u32,
    },
    /// `split` on something that is not a block.
    NotABlock {
        va: VirtAddr,
        level: u32,
    },
    /// The entries cannot form a contiguous run (misaligned, mixed, or holes).
    NotContiguous {
        va: VirtAddr,
        level: u32,
    },
    /// The table does not map one aligned contiguous range with one set of
    /// attributes, or a block is not allowed at that level.
    NotCollapsible {
        va: VirtAddr,
        level: u32,
    },
    /// `protect` was asked to change bits that need break-before-make.
    NotPermissionBits(u64),
    /// The lock handed over guards other tables than those rooted at
    /// `root` (another mm's page-table lock).
    WrongLock {
        root: PhysAddr,
    },
}

/// Which leaf sizes [`CursorMut::map`] may use.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LeafSizes {
    /// The largest block alignment and length allow.
    Largest,
    /// Pages only.
    PagesOnly,
}

/// A set of translation tables rooted at `root`, for one granule.
pub struct Tables<'m, M: TableMemory> {
    pub root: PhysAddr,
    pub granule: Granule,
    pub start_level: u32,
    pub mem: &'m mut M,
}

/// One entry seen by [`Tables::walk`].
#[derive(Clone, Copy, Debug)]
pub struct WalkEntry {
    pub va: VirtAddr,
    pub level: u32,
    pub desc: Desc,
    pub kind: Kind,
    /// Bytes this entry covers.
    pub size: u64,
    /// The hierarchical limits of the table entries above this one (for a
    /// table entry, not including its own): what they take away from a leaf.
    pub limits: TableAttrs,
}

/// Result of a software translation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Translation {
    Mapped {
        pa: PhysAddr,
        level: u32,
        desc: Desc,
    },
    /// The walk stopped at `level` on an invalid entry.
    Fault {
        level: u32,
        desc: Desc,
    },
}

impl<'m, M: TableMemory> Tables<'m, M> {
    pub fn new(root: PhysAddr, granule: Granule, start_level: u32, mem: &'m mut M) -> Self {
        Self { root, granule, start_level, mem }
    }

    fn entry(&self, table: PhysAddr, idx: usize) -> &AtomicU64 {
        assert!(idx < self.granule.entries_per_table());
        // SAFETY: TableMemory guarantees table_ptr points at a live table of
        // entries_per_table() atomics; idx is in range.
        unsafe { &*self.mem.table_ptr(table).add(idx) }
    }

    pub fn read(&self, table: PhysAddr, idx: usize) -> Desc {
        Desc(self.entry(table, idx).load(Ordering::Relaxed))
    }

    /// Software translation of `va` (what the MMU would do, without TLBs).
    pub fn translate(&self, va: VirtAddr) -> Translation {
        self.translate_with_limits(va).0
    }

    /// [`Self::translate`], with the hierarchical limits (APTable, UXNTable,
    /// PXNTable) of every table descriptor the walk went through.
    pub fn translate_with_limits(&self, va: VirtAddr) -> (Translation, TableAttrs) {
        let mut table = self.root;
        let mut limits = TableAttrs::NONE;
        for level in self.start_level..=3 {
            let d = self.read(table, self.granule.index(va.as_u64(), level));
            match d.kind(level, self.granule) {
                Kind::Table(next) if level < 3 => {
                    table = next;
                    limits = limits.and_then(d.table_attrs());
                }
                Kind::Leaf(base) => {
                    let off = va.as_u64() & (self.granule.level_size(level) - 1);
                    return (Translation::Mapped { pa: base + off, level, desc: d }, limits);
                }
                _ => return (Translation::Fault { level, desc: d }, limits),
            }
        }
        unreachable!("level 3 always returns")
    }

    /// Visits every non-zero entry in table order (tables before what they
    /// point to), through the walker in [`crate::mm::walk`]. `upper` selects
    /// the TTBR1 half.
    pub fn walk(&self, upper: bool, f: &mut dyn FnMut(&WalkEntry)) {
        // The lower half ends where the root table's reach does (2^39 for a
        // 4K level-1 root): beyond it indices would wrap around.
        let reach = (self.granule.level_size(self.start_level) as u128 * self.granule.entries_per_table() as u128)
            .min(1 << 48) as u64;
        let (start, end) = if upper { (0xffff_0000_0000_0000, 0) } else { (0, reach) };
        self.walk_range(VirtAddr::new(start), VirtAddr::new(end), f);
    }

    /// Like [`Self::walk`] over `[start, end)` (an `end` of 0 is the top of the
    /// address space).
    pub fn walk_range(&self, start: VirtAddr, end: VirtAddr, f: &mut dyn FnMut(&WalkEntry)) {
        struct Adapter<'f>(&'f mut dyn FnMut(&WalkEntry));
        impl crate::mm::walk::PageWalkOps for Adapter<'_> {
            fn entry(&mut self, e: &WalkEntry) -> crate::mm::walk::Step {
                (self.0)(e);
                crate::mm::walk::Step::Continue
            }
        }
        crate::mm::walk::walk_tables_with(
            &*self.mem,
            self.granule,
            self.root,
            self.start_level,
            start,
            end,
            &mut Adapter(f),
        );
    }

    /// Number of table pages reachable from the root (including it).
    pub fn count_tables(&self) -> usize {
        let mut n = 1;
        self.walk(false, &mut |e| {
            if matches!(e.kind, Kind::Table(_)) && e.level < 3 {
                n += 1;
            }
        });
        n
    }
}

/// Heap-backed table memory for host unit tests (a software model used only
/// to test this module's logic; the kernel's own tables are real).
#[cfg(test)]
pub mod host {
    extern crate std;
    use super::*;
    use crate::mm::desc::LeafAttrs;
    use std::boxed::Box;
    use std::vec::Vec;

    pub struct HostMem {
        pub tables: Vec<Box<HostPage>>,
        pub entries: usize,
        pub limit: usize,
        /// `table_ptr` calls on each table (index as in `tables`): each
        /// entry read or written reaches its table through one.
        pub visits: Vec<core::sync::atomic::AtomicUsize>,
    }

    /// One table's memory, aligned to the largest table's size as real
    /// tables are to theirs (a [`super::Pte`] finds its table from the
    /// slot's address).
    #[repr(C, align(65536))]
    pub struct HostPage([AtomicU64; 8192]);

    /// Fake physical addresses: table i lives at 0x1_0000_0000 + i * 64K.
    const BASE: u64 = 0x1_0000_0000;

    impl HostMem {
        pub fn new(g: Granule) -> (Self, PhysAddr) {
            let mut m =
                HostMem { tables: Vec::new(), entries: g.entries_per_table(), limit: usize::MAX, visits: Vec::new() };
            let root = m.alloc_table().unwrap();
            (m, root)
        }
    }

    /// Host tables are walked by no MMU: nothing to invalidate.
    pub struct NoFlush;
    impl TlbFlush for NoFlush {
        fn publish(&mut self) {}
        fn flush(&mut self, _: VirtAddr, _: u64, _: Option<u16>, _: bool) {}
    }

    /// Builds `[va, va+size)` into a host test's own tables with
    /// [`CursorMut::map`].
    pub fn map(
        t: &mut Tables<'_, HostMem>,
        va: VirtAddr,
        pa: PhysAddr,
        size: u64,
        attrs: LeafAttrs,
        sizes: LeafSizes,
    ) -> Result<usize, MapError> {
        // SAFETY: each host test's tables live in its own HostMem.
        let excl = unsafe { ExclusiveTables::new() };
        let mut fl = NoFlush;
        let mut c = CursorMut::new(&excl, t, Stage1Kernel, &mut fl);
        let r = c.map(va, pa, size, attrs, sizes);
        assert!(c.finish().0.is_empty(), "mapping detaches nothing");
        r
    }

    // SAFETY: tables are boxed slices of atomics kept alive in `tables`.
    unsafe impl TableMemory for HostMem {
        fn alloc_table(&mut self) -> Option<PhysAddr> {
            if self.tables.len() >= self.limit {
                return None;
            }
            // SAFETY: all zeroes is a valid `AtomicU64` array.
            let t = unsafe { Box::<HostPage>::new_zeroed().assume_init() };
            self.tables.push(t);
            self.visits.push(core::sync::atomic::AtomicUsize::new(0));
            Some(PhysAddr::new(BASE + (self.tables.len() as u64 - 1) * 0x10000))
        }
        fn table_ptr(&self, pa: PhysAddr) -> *const AtomicU64 {
            let i = ((pa.as_u64() - BASE) / 0x10000) as usize;
            self.visits[i].fetch_add(1, Ordering::Relaxed);
            self.tables[i].0.as_ptr()
        }
    }
}

#[cfg(test)]
mod tests {
    extern crate std;
    use super::host::{HostMem, map};
    use super::*;
    use crate::mm::desc::LeafAttrs;
    use std::vec::Vec;

    const G: Granule = Granule::K4;
    const GIB: u64 = 1 << 30;
    const MIB: u64 = 1 << 20;

    #[test]
    fn linear_map_uses_1g_and_2m_blocks_where_aligned() {
        let (mut mem, root) = HostMem::new(G);
        let mut t = Tables::new(root, G, 0, &mut mem);
        // RAM at 1 GiB, 1.5 GiB + 4 KiB long: one 1G block, 256 2M blocks, one page.
        let size = GIB + 512 * MIB + 4096;
        let va = VirtAddr::new(0xffff_0000_4000_0000);
        let n = map(&mut t, va, PhysAddr::new(0x4000_0000), size, LeafAttrs::KERNEL_RW, LeafSizes::Largest).unwrap();
        assert_eq!(n, 1 + 256 + 1);
        match t.translate(va + 0x1234_5678) {
            Translation::Mapped { pa, level, .. } => {
                assert_eq!(pa, PhysAddr::new(0x4000_0000 + 0x1234_5678));
                assert_eq!(level, 1);
            }
            other => panic!("{other:?}"),
        }
        match t.translate(va + (GIB + 3 * MIB)) {
            Translation::Mapped { level, .. } => assert_eq!(level, 2),
            other => panic!("{other:?}"),
        }
        match t.translate(va + (GIB + 512 * MIB)) {
            Translation::Mapped { level, .. } => assert_eq!(level, 3),
            other => panic!("{other:?}"),
        }
        assert!(matches!(t.translate(va + size), Translation::Fault { level: 3, .. }));
        assert!(matches!(t.translate(VirtAddr::new(0xffff_7000_0000_0000)), Translation::Fault { level: 0, .. }));
    }

    #[test]
    fn pages_only_and_misalignment() {
        let (mut mem, root) = HostMem::new(G);
        let mut t = Tables::new(root, G, 0, &mut mem);
        let n = map(
            &mut t,
            VirtAddr::new(0x20_0000),
            PhysAddr::new(0x20_0000),
            2 * MIB,
            LeafAttrs::KERNEL_RO,
            LeafSizes::PagesOnly,
        );
        assert_eq!(n, Ok(512));
        assert_eq!(
            map(&mut t, VirtAddr::new(0x1001), PhysAddr::new(0x1000), 4096, LeafAttrs::KERNEL_RO, LeafSizes::PagesOnly),
            Err(MapError::Misaligned)
        );
    }

    #[test]
    fn refuses_changes_that_need_break_before_make() {
        let (mut mem, root) = HostMem::new(G);
        let mut t = Tables::new(root, G, 0, &mut mem);
        let va = VirtAddr::new(0x4000_0000);
        map(&mut t, va, PhysAddr::new(0x4000_0000), 2 * MIB, LeafAttrs::KERNEL_RW, LeafSizes::Largest).unwrap();
        // Same mapping again: fine.
        map(&mut t, va, PhysAddr::new(0x4000_0000), 2 * MIB, LeafAttrs::KERNEL_RW, LeafSizes::Largest).unwrap();
        // Different output address: refused.
        let e = map(&mut t, va, PhysAddr::new(0x8000_0000), 2 * MIB, LeafAttrs::KERNEL_RW, LeafSizes::Largest);
        assert!(matches!(e, Err(MapError::NeedsBreakBeforeMake { level: Some(2), .. })), "{e:?}");
        // A page inside the block (a split): refused.
        let e = map(&mut t, va, PhysAddr::new(0x4000_0000), 4096, LeafAttrs::KERNEL_RW, LeafSizes::PagesOnly);
        assert!(matches!(e, Err(MapError::NeedsBreakBeforeMake { level: Some(2), .. })), "{e:?}");
        // Permission-only change: allowed live.
        map(&mut t, va, PhysAddr::new(0x4000_0000), 2 * MIB, LeafAttrs::KERNEL_RO, LeafSizes::Largest).unwrap();
        match t.translate(va) {
            Translation::Mapped { desc, .. } => assert!(desc.perms().read_only),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn out_of_memory_is_an_error() {
        let (mut mem, root) = HostMem::new(G);
        mem.limit = 2;
        let mut t = Tables::new(root, G, 0, &mut mem);
        let e =
            map(&mut t, VirtAddr::new(0x1000), PhysAddr::new(0x1000), 4096, LeafAttrs::KERNEL_RW, LeafSizes::Largest);
        assert_eq!(e, Err(MapError::OutOfMemory));
    }

    #[test]
    fn walk_visits_tables_then_leaves_with_canonical_upper_addresses() {
        let (mut mem, root) = HostMem::new(G);
        let mut t = Tables::new(root, G, 0, &mut mem);
        map(
            &mut t,
            VirtAddr::new(0xffff_8000_0000_0000),
            PhysAddr::new(0x4008_0000),
            3 * 4096,
            LeafAttrs::KERNEL_RX,
            LeafSizes::Largest,
        )
        .unwrap();
        let mut seen = Vec::new();
        t.walk(true, &mut |e| seen.push((e.va.as_u64(), e.level, matches!(e.kind, Kind::Leaf(_)))));
        assert_eq!(seen.len(), 3 + 3);
        assert_eq!(seen[0], (0xffff_8000_0000_0000, 0, false));
        assert_eq!(seen[3], (0xffff_8000_0000_0000, 3, true));
        assert_eq!(seen[5], (0xffff_8000_0000_2000, 3, true));
        assert_eq!(t.count_tables(), 4);
    }

    #[test]
    fn sixteen_and_sixty_four_k_granules_map_and_translate() {
        for (g, start, blk) in [(Granule::K16, 0, 32 * MIB), (Granule::K64, 1, 512 * MIB)] {
            let (mut mem, root) = HostMem::new(g);
            let mut t = Tables::new(root, g, start, &mut mem);
            let n = map(
                &mut t,
                VirtAddr::new(0x4000_0000),
                PhysAddr::new(0x4000_0000),
                blk + g.page_size(),
                LeafAttrs::KERNEL_RW,
                LeafSizes::Largest,
            )
            .unwrap();
            assert_eq!(n, 2, "{g:?}");
            match t.translate(VirtAddr::new(0x4000_0000 + blk - 8)) {
                Translation::Mapped { level, .. } => assert_eq!(level, 2, "{g:?}"),
                other => panic!("{other:?}"),
            }
        }
    }
}

/// What an access should do, derived from the software walk: the PA, or
/// the fault the MMU must raise. This is the oracle the AT checks compare with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Expected {
    Ok(PhysAddr),
    Translation(u32),
    AccessFlag(u32),
    Permission(u32),
    /// A fault the model never predicts (its fault status code), as `AT`
    /// may report one.
    Other(u8),
}

impl core::fmt::Display for Expected {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match *self {
            Expected::Ok(pa) => write!(f, "PA {:#x}", pa.as_u64()),
            Expected::Translation(l) => write!(f, "translation fault, level {l}"),
            Expected::AccessFlag(l) => write!(f, "access flag fault, level {l}"),
            Expected::Permission(l) => write!(f, "permission fault, level {l}"),
            Expected::Other(fsc) => write!(f, "fault status {fsc:#04x}"),
        }
    }
}

/// Which descriptor updates the MMU makes itself (TCR_EL1.HA / HD).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct HwUpdates {
    /// HA: an access with AF clear sets it instead of faulting.
    pub af: bool,
    /// HD: a write to a DBM entry with AP[2] set clears AP[2] instead of
    /// faulting.
    pub dirty: bool,
}

/// The outcome of an EL0/EL1 read/write of a VA that translated as `t`
/// under the table limits `limits`, on a CPU that makes the updates `hw`.
/// An access-flag fault comes before a permission fault (Arm ARM fault
/// priority); the limits only take permissions away: APTable[0] EL0 access,
/// APTable[1] write access at every EL, and a leaf's DBM cannot lift that.
pub fn expected_access(t: &Translation, limits: TableAttrs, el0: bool, write: bool, hw: HwUpdates) -> Expected {
    match *t {
        Translation::Fault { level, .. } => Expected::Translation(level),
        Translation::Mapped { pa, level, desc } => {
            if !desc.af() && !hw.af {
                return Expected::AccessFlag(level);
            }
            let p = desc.perms();
            let writable = (!p.read_only || (hw.dirty && desc.dbm())) && !limits.read_only;
            let el0_ok = p.el0 && !limits.no_el0;
            let allowed = match (el0, write) {
                (false, false) => true,
                (false, true) => writable,
                (true, false) => el0_ok,
                (true, true) => el0_ok && writable,
            };
            if allowed { Expected::Ok(pa) } else { Expected::Permission(level) }
        }
    }
}

/// Who may execute from a VA that translated as `t` under `limits`
/// (`(el1, el0)`). `AT` cannot tell, so this is checked against the request
/// only. Memory writable at EL0 is never executable at EL1 (Arm ARM:
/// implicit PXN).
pub fn expected_exec(t: &Translation, limits: TableAttrs) -> (bool, bool) {
    match *t {
        Translation::Fault { .. } => (false, false),
        Translation::Mapped { desc, .. } => {
            let p = desc.perms();
            let el0_writable = p.el0 && !p.read_only && !limits.no_el0 && !limits.read_only;
            (!p.pxn && !limits.pxn && !el0_writable, !p.uxn && !limits.uxn)
        }
    }
}

#[cfg(test)]
mod expected_tests {
    use super::*;
    use crate::mm::desc::LeafAttrs;

    const HW_OFF: HwUpdates = HwUpdates { af: false, dirty: false };
    const NO: TableAttrs = TableAttrs::NONE;

    #[test]
    fn expected_access_rules() {
        let ro_user =
            Desc::leaf(PhysAddr::new(0x5000), 3, LeafAttrs { el0: true, writable: false, ..LeafAttrs::KERNEL_RW });
        let t = Translation::Mapped { pa: PhysAddr::new(0x5010), level: 3, desc: ro_user };
        assert_eq!(expected_access(&t, NO, true, false, HW_OFF), Expected::Ok(PhysAddr::new(0x5010)));
        assert_eq!(expected_access(&t, NO, true, true, HW_OFF), Expected::Permission(3));
        assert_eq!(expected_access(&t, NO, false, true, HW_OFF), Expected::Permission(3));
        let kern = Desc::leaf(PhysAddr::new(0x5000), 2, LeafAttrs::KERNEL_RW);
        let t = Translation::Mapped { pa: PhysAddr::new(0x5000), level: 2, desc: kern };
        assert_eq!(
            expected_access(&t, NO, true, false, HW_OFF),
            Expected::Permission(2),
            "EL0 cannot read kernel memory"
        );
        assert_eq!(expected_access(&t, NO, false, true, HW_OFF), Expected::Ok(PhysAddr::new(0x5000)));
        let old = Desc::leaf(PhysAddr::new(0x5000), 3, LeafAttrs { af: false, ..LeafAttrs::KERNEL_RW });
        let t = Translation::Mapped { pa: PhysAddr::new(0x5000), level: 3, desc: old };
        assert_eq!(expected_access(&t, NO, false, false, HW_OFF), Expected::AccessFlag(3));
        let hw_af = HwUpdates { af: true, dirty: false };
        assert_eq!(expected_access(&t, NO, false, false, hw_af), Expected::Ok(PhysAddr::new(0x5000)));
        assert_eq!(
            expected_access(&Translation::Fault { level: 1, desc: Desc(0) }, NO, false, false, HW_OFF),
            Expected::Translation(1)
        );
    }

    /// Every leaf permission under every combination of table limits: a
    /// limit only ever takes an access away, exactly the one it names.
    #[test]
    fn table_limits_take_away_exactly_what_they_name() {
        let pa = PhysAddr::new(0x7000);
        for leaf_bits in 0..4u8 {
            let attrs = LeafAttrs { el0: leaf_bits & 1 != 0, writable: leaf_bits & 2 != 0, ..LeafAttrs::KERNEL_RW };
            let t = Translation::Mapped { pa, level: 3, desc: Desc::leaf(pa, 3, attrs) };
            for lim_bits in 0..16u8 {
                let lim = TableAttrs {
                    no_el0: lim_bits & 1 != 0,
                    read_only: lim_bits & 2 != 0,
                    uxn: lim_bits & 4 != 0,
                    pxn: lim_bits & 8 != 0,
                };
                for (el0, write) in [(false, false), (false, true), (true, false), (true, true)] {
                    let leaf_ok = (!el0 || attrs.el0) && (!write || attrs.writable);
                    let lim_ok = (!el0 || !lim.no_el0) && (!write || !lim.read_only);
                    let want = if leaf_ok && lim_ok { Expected::Ok(pa) } else { Expected::Permission(3) };
                    assert_eq!(
                        expected_access(&t, lim, el0, write, HW_OFF),
                        want,
                        "{attrs:?} {lim:?} el0 {el0} w {write}"
                    );
                }
            }
        }
    }

    #[test]
    fn dbm_cannot_lift_a_read_only_table() {
        let pa = PhysAddr::new(0x7000);
        let clean = Desc::leaf(pa, 3, LeafAttrs { el0: true, writable: false, ..LeafAttrs::KERNEL_RW }).0
            | crate::mm::desc::DBM_BIT;
        let t = Translation::Mapped { pa, level: 3, desc: Desc(clean) };
        let hd = HwUpdates { af: true, dirty: true };
        assert_eq!(expected_access(&t, NO, true, true, hd), Expected::Ok(pa));
        let ro = TableAttrs { read_only: true, ..NO };
        assert_eq!(expected_access(&t, ro, true, true, hd), Expected::Permission(3));
    }

    #[test]
    fn exec_rules() {
        let pa = PhysAddr::new(0x7000);
        let m = |a: LeafAttrs| Translation::Mapped { pa, level: 3, desc: Desc::leaf(pa, 3, a) };
        assert_eq!(expected_exec(&m(LeafAttrs::KERNEL_RX), NO), (true, false));
        let ux = LeafAttrs { el0: true, writable: false, uexec: true, ..LeafAttrs::KERNEL_RW };
        assert_eq!(expected_exec(&m(ux), NO), (false, true));
        assert_eq!(expected_exec(&m(ux), TableAttrs { uxn: true, ..NO }), (false, false));
        assert_eq!(expected_exec(&m(LeafAttrs::KERNEL_RX), TableAttrs { pxn: true, ..NO }), (false, false));
        // Writable at EL0: never executable at EL1, unless a table takes EL0's write away.
        let uw_kx = LeafAttrs { el0: true, writable: true, kexec: true, ..LeafAttrs::KERNEL_RW };
        assert_eq!(expected_exec(&m(uw_kx), NO), (false, false));
        assert_eq!(expected_exec(&m(uw_kx), TableAttrs { read_only: true, ..NO }), (true, false));
        assert_eq!(expected_exec(&Translation::Fault { level: 2, desc: Desc(0) }, NO), (false, false));
    }
}
