//! The page-table cursor: the only code that stores to a live translation
//! table (Asterinas OSTD `CursorMut`; Linux `pte_offset_map_lock` with
//! `set_pte_at`, `ptep_get_and_clear`, `ptep_set_wrprotect`,
//! `ptep_set_access_flags` and `ptep_clear_flush`).
//!
//! Two shapes share the rules below:
//! - [`CursorMut`] edits a range of a [`Tables`] (kernel tables, user
//!   tables in khugepaged, `remap_pfn_range` and the agent mapping,
//!   teardown, host tests), generic over the translation [`Regime`]. It keeps the path
//!   of tables from the root to its position, so stepping to the next entry
//!   does not walk from the root again.
//! - [`Pte`] is one located entry of a live table in any regime, under
//!   the lock that guards it: for the fault path and the range loops of
//!   `mm/memory.rs` (Linux's `pte_t *` under the page-table lock), the
//!   huge-page splits, and stage 2. Its fields are private; it never hands
//!   out the slot.
//!
//! Break-before-make (BBM, Arm ARM D8.16.1) where a change requires it:
//!
//! 1. write an invalid entry (break),
//! 2. TLB invalidate the VA range it mapped,
//! 3. write the new entry (make).
//!
//! Ranges broken but not yet flushed are tracked in every build: writing a
//! valid entry over one is refused with [`MapError::BbmViolation`], and a
//! change that needs BBM written directly with
//! [`MapError::NeedsBreakBeforeMake`]. Read-modify-write of a valid entry
//! is a compare-and-swap loop and a clear is an atomic swap, so an access
//! or dirty bit the MMU sets (FEAT_HAFDBS) between the load and the store
//! is never lost: callers test dirty/young on the value the swap returned.
//! Tables unlinked by an operation are returned in [`Detached`] only after
//! the flush that removed them from every TLB and walk cache.

use alloc::vec::Vec;
use core::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use super::{LeafSizes, MapError, TableMemory, Tables};
use crate::arch::aarch64::granule::Granule;
use crate::mm::addr::{PhysAddr, VirtAddr};
use crate::mm::desc::{Desc, Kind, LeafAttrs, TableAttrs};

/// TLB maintenance, done for real by the kernel and recorded by host tests.
pub trait TlbFlush {
    /// Makes earlier table writes visible to the table walker (`dsb ishst`),
    /// for invalid-to-valid changes that need no TLBI.
    fn publish(&mut self);
    /// Invalidates cached translations of `[va, va+size)` in `asid` (`None`:
    /// global kernel entries), including walk caches unless `leaf_only`,
    /// and waits for completion (`dsb ish; isb`).
    fn flush(&mut self, va: VirtAddr, size: u64, asid: Option<u16>, leaf_only: bool);
}

/// Table pages unlinked by an operation. Every TLB and walk-cache entry that
/// could reference them has been invalidated; free them when convenient.
#[derive(Debug, Default)]
#[must_use = "detached tables must be freed"]
pub struct Detached(pub Vec<PhysAddr>);

/// Stage-2 TLB maintenance (EL2: `tlbi ipas2e1is` by IPA and VMID).
pub trait Stage2Flush {
    /// Makes earlier table writes visible to the table walker.
    fn publish(&mut self);
    /// Invalidates cached stage-2 translations of `[ipa, ipa+size)` in
    /// `vmid`. An IPA is stage 2's input address: a [`VirtAddr`], as the
    /// [`Regime`] methods take it.
    fn flush_ipa(&mut self, ipa: VirtAddr, size: u64, vmid: u16, leaf_only: bool);
}

/// A translation regime: what its entries mean and how its TLB entries
/// are invalidated.
pub trait Regime {
    /// The TLB maintenance this regime needs.
    type Flush: ?Sized;
    /// The attribute bits a live leaf may change without BBM (the
    /// "live-safe change" rule): permissions, AF, DBM, software bits.
    const PERM_BITS: u64;
    /// The leaf attribute bits whose change needs BBM (memory type,
    /// shareability, contiguous, and nG where the regime has it).
    const BBM_BITS: u64;
    /// The attributes [`CursorMut::map`] builds this regime's leaves from.
    type Attrs: Copy;
    /// Write-protects a leaf (Linux `pte_wrprotect`) so that a write
    /// faults, with hardware dirtiness (DBM, FEAT_HAFDBS) moved to the
    /// software dirty bit and DBM cleared, so the MMU cannot make the entry
    /// writable again. Changes only [`Self::PERM_BITS`].
    fn wrprotect(d: Desc) -> Desc;
    fn publish(fl: &mut Self::Flush);
    fn flush(&self, fl: &mut Self::Flush, va: VirtAddr, size: u64, leaf_only: bool);
    /// The leaf mapping `pa` at `level` with `attrs`.
    fn leaf(attrs: Self::Attrs, pa: PhysAddr, level: u32) -> Desc;
    /// `new`, keeping what the MMU records in the live entry `cur`: its
    /// access flag and its dirtiness (a write let through a DBM entry).
    /// [`CursorMut::set`] and [`CursorMut::map`] store this, so replacing
    /// an entry never loses either; clearing them is [`CursorMut::update`]'s.
    fn keep_hw(cur: Desc, new: Desc) -> Desc;
}

/// Bits shared by both stages' permission rule: AP/S2AP[7:6], AF, DBM,
/// PXN+UXN / XN[54:53], software bits [58:55].
const S_PERM_BITS: u64 = (0b11 << 6) | (1 << 10) | (1 << 51) | (3 << 53) | (0xf << 55);
const CONT: u64 = 1 << 52;
const SH: u64 = 0b11 << 8;
const AF: u64 = 1 << 10;
const DBM: u64 = 1 << 51;
/// AP[2] in stage 1 (read-only), S2AP[1] in stage 2 (write allowed).
const AP2: u64 = 1 << 7;

/// Stage 1's [`Regime::keep_hw`]: the MMU sets AF, and on a write
/// through a DBM entry clears AP[2]. A new entry that is no longer
/// hardware-writable records that write in the software dirty bit (as
/// [`Desc::wrprotect`] does).
fn s1_keep_hw(cur: Desc, new: Desc) -> Desc {
    let mut n = new.0 | (cur.0 & AF);
    let wrote = new.0 & AP2 != 0 && cur.0 & (AP2 | DBM) == DBM;
    if wrote {
        n = if n & DBM != 0 { n & !AP2 } else { n | crate::mm::desc::SW_DIRTY_BIT };
    }
    Desc(n)
}

/// Stage 1, TTBR0: user entries, not global (nG), TLBI by VA and ASID.
#[derive(Clone, Copy, Debug)]
pub struct Stage1User {
    pub asid: u16,
}

/// Stage 1, TTBR1: kernel entries, global, TLBI by VA for all ASIDs.
#[derive(Clone, Copy, Debug)]
pub struct Stage1Kernel;

/// Stage 2, VTTBR: IPA to PA, TLBI by IPA and VMID. Leaves carry S2AP,
/// MemAttr[5:2] and XN instead of AP, AttrIndx, UXN/PXN, and no nG.
#[derive(Clone, Copy, Debug)]
pub struct Stage2 {
    pub vmid: u16,
}

/// The two stage-1 regimes differ only in the ASID their TLBIs name
/// (`$asid`: `Some` for TTBR0's non-global entries, `None` for TTBR1's
/// global ones).
macro_rules! stage1_regime {
    ($ty:ty, |$s:ident| $asid:expr) => {
        impl Regime for $ty {
            type Flush = dyn TlbFlush;
            const PERM_BITS: u64 = S_PERM_BITS;
            const BBM_BITS: u64 = (0b111 << 2) | SH | (1 << 11) | CONT;
            type Attrs = LeafAttrs;
            fn leaf(attrs: LeafAttrs, pa: PhysAddr, level: u32) -> Desc {
                Desc::leaf(pa, level, attrs)
            }
            fn keep_hw(cur: Desc, new: Desc) -> Desc {
                s1_keep_hw(cur, new)
            }
            /// AP[2] read-only ([`Desc::wrprotect`]).
            #[inline(always)]
            fn wrprotect(d: Desc) -> Desc {
                d.wrprotect()
            }
            fn publish(fl: &mut Self::Flush) {
                fl.publish();
            }
            fn flush(&self, fl: &mut Self::Flush, va: VirtAddr, size: u64, leaf_only: bool) {
                let $s = self;
                fl.flush(va, size, $asid, leaf_only);
            }
        }
    };
}

stage1_regime!(Stage1User, |s| Some(s.asid));
stage1_regime!(Stage1Kernel, |_s| None);

impl Regime for Stage2 {
    type Flush = dyn Stage2Flush;
    /// S2AP[7:6], AF, DBM, XN[54:53] and the software bits [58:55]: the
    /// same positions as stage 1's AP/UXN/PXN, other meanings.
    const PERM_BITS: u64 = S2Attrs::S2AP_R | S2Attrs::S2AP_W | (1 << 10) | (1 << 51) | (3 << 53) | (0xf << 55);
    const BBM_BITS: u64 = (0b1111 << 2) | SH | CONT;
    type Attrs = S2Attrs;
    fn leaf(attrs: S2Attrs, pa: PhysAddr, level: u32) -> Desc {
        attrs.leaf(pa, level)
    }
    /// The MMU sets AF, and on a write through a DBM entry sets S2AP[1]; a
    /// new entry without DBM records that write in software bit 55.
    fn keep_hw(cur: Desc, new: Desc) -> Desc {
        let mut n = new.0 | (cur.0 & AF);
        let wrote = new.0 & AP2 == 0 && cur.0 & (AP2 | DBM) == AP2 | DBM;
        if wrote {
            n |= if n & DBM != 0 { AP2 } else { crate::mm::desc::SW_DIRTY_BIT };
        }
        Desc(n)
    }
    /// S2AP write permission cleared. With stage-2 DBM (VTCR_EL2.HD) the
    /// MMU marks a DBM entry dirty by setting S2AP[1] (bit 7), the reverse
    /// of stage 1's AP[2]: DBM with S2AP W set is hardware-dirty, kept as
    /// the software dirty bit (55) as in stage 1.
    #[inline(always)]
    fn wrprotect(d: Desc) -> Desc {
        let hw_dirty = (d.0 >> 51) & (d.0 >> 7) & 1;
        Desc((d.0 & !(S2Attrs::S2AP_W | crate::mm::desc::DBM_BIT)) | (hw_dirty << 55))
    }
    fn publish(fl: &mut Self::Flush) {
        fl.publish();
    }
    fn flush(&self, fl: &mut Self::Flush, va: VirtAddr, size: u64, leaf_only: bool) {
        fl.flush_ipa(va, size, self.vmid, leaf_only);
    }
}

/// Stage-2 leaf attributes (Arm ARM D8.5.5).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct S2Attrs {
    pub read: bool,
    pub write: bool,
    /// Execute-never at EL1 and EL0 (XN[1:0] = 0b10).
    pub xn: bool,
    /// Normal write-back memory; device nGnRE otherwise.
    pub normal: bool,
}

impl S2Attrs {
    /// S2AP[7:6]: bit 6 read, bit 7 write.
    pub const S2AP_W: u64 = 1 << 7;
    pub const S2AP_R: u64 = 1 << 6;

    /// The stage-2 leaf for `pa` at `level` (AF set).
    pub fn leaf(self, pa: PhysAddr, level: u32) -> Desc {
        let ty = if level == 3 { 0b11 } else { 0b01 };
        let memattr = if self.normal { 0b1111 } else { 0b0001 };
        let sh = if self.normal { SH } else { 0 };
        let s2ap = if self.read { Self::S2AP_R } else { 0 } | if self.write { Self::S2AP_W } else { 0 };
        let xn = if self.xn { 0b10 << 53 } else { 0 };
        Desc((pa.as_u64() & crate::mm::desc::OA_MASK) | (memattr << 2) | s2ap | sh | (1 << 10) | xn | ty)
    }
}

/// Whether replacing `old` by `new` at `level` needs break-before-make in
/// regime `R`: a different output address or entry kind, or a change in
/// one of `R::BBM_BITS`.
pub fn needs_bbm<R: Regime>(old: Desc, new: Desc, level: u32, g: Granule) -> bool {
    match (old.kind(level, g), new.kind(level, g)) {
        (Kind::None | Kind::NonPresent(_), _) | (_, Kind::None | Kind::NonPresent(_)) => false,
        (Kind::Leaf(a), Kind::Leaf(b)) => a != b || (old.0 ^ new.0) & R::BBM_BITS != 0,
        (Kind::Table(a), Kind::Table(b)) => a != b,
        _ => true,
    }
}

/// How many entries the cursor keeps on its path (levels 0..=3).
const MAX_LEVELS: usize = 4;

/// Proof that the lock guarding a set of tables in regime `R` is held for
/// writing (Linux's `pte_offset_map_lock` before `set_pte_at`): the user
/// mm's page-table lock ([`PtlGuard`]) for [`Stage1User`], the kernel
/// tables' write lock ([`KernelPgtableWrite`]) for [`Stage1Kernel`], or
/// [`ExclusiveTables`] for tables nothing else can reach. [`CursorMut::new`]
/// borrows one for as long as the cursor lives, so no cursor (and no entry
/// it reaches) outlives the lock, and the wrong lock does not compile:
///
/// ```compile_fail
/// # use pagelab::mm::pgtable::*;
/// # use pagelab::mm::mm_struct::MmStruct;
/// # fn f<M: TableMemory>(mm: &MmStruct, t: &mut Tables<'_, M>, fl: &mut (dyn TlbFlush + 'static)) {
/// // A user mm's page-table lock is no proof for the kernel's tables:
/// let ptl = mm.page_table_lock_guard();
/// let c = CursorMut::new(&ptl, t, Stage1Kernel, fl);
/// # }
/// ```
///
/// ```compile_fail
/// # use pagelab::mm::pgtable::*;
/// # use pagelab::mm::mm_struct::KernelPgtable;
/// # fn f<M: TableMemory>(k: &KernelPgtable, t: &mut Tables<'_, M>, fl: &mut (dyn TlbFlush + 'static)) {
/// // Holding the kernel tables' lock for read is not enough to edit them:
/// let r = k.read();
/// let c = CursorMut::new(&r, t, Stage1Kernel, fl);
/// # }
/// ```
///
/// ```compile_fail
/// # use pagelab::mm::pgtable::*;
/// # use pagelab::mm::mm_struct::MmStruct;
/// # fn f<M: TableMemory>(mm: &MmStruct, t: &mut Tables<'_, M>, fl: &mut (dyn TlbFlush + 'static)) {
/// // The cursor cannot outlive the lock it borrows:
/// let c = {
///     let ptl = mm.page_table_lock_guard();
///     CursorMut::new(&ptl, t, Stage1User { asid: 1 }, fl)
/// };
/// c.finish();
/// # }
/// ```
///
/// A guard locks one set of tables: [`CursorMut::new`] and [`Pte::locate`]
/// check that the root they are handed is the guard's ([`Self::root`]), so
/// another mm's page-table lock is refused too.
///
/// # Safety
/// Implemented only for guards whose existence proves that no other code
/// stores to the tables rooted at [`Self::root`] (any tables, for `None`),
/// and whose [`Self::pending`] is reachable only under the lock.
pub unsafe trait PgtableLock<R: Regime> {
    /// The root table of the tables this guard locks; `None`: tables the
    /// holder owns outright ([`ExclusiveTables`]).
    fn root(&self) -> Option<PhysAddr>;
    /// Entries broken under this lock whose TLB entries are not flushed yet.
    fn pending(&self) -> &PendingBreaks;
}

// SAFETY: every store to a user mm's tables is made under its page-table
// lock, and the guard carries the mm's pgd and its own pending record.
unsafe impl PgtableLock<Stage1User> for crate::mm::mm_struct::PtlGuard<'_> {
    #[inline(always)]
    fn root(&self) -> Option<PhysAddr> {
        Some(self.pgd())
    }
    #[inline(always)]
    fn pending(&self) -> &PendingBreaks {
        self.pending_breaks()
    }
}
// SAFETY: every change to the kernel tables takes their lock for write.
unsafe impl PgtableLock<Stage1Kernel> for crate::mm::mm_struct::KernelPgtableWrite<'_> {
    #[inline(always)]
    fn root(&self) -> Option<PhysAddr> {
        Some(crate::mm::mm_struct::KernelPgtableLocked::root(self))
    }
    #[inline(always)]
    fn pending(&self) -> &PendingBreaks {
        self.pending_breaks()
    }
}
// SAFETY: `ExclusiveTables::new`'s contract.
unsafe impl<R: Regime> PgtableLock<R> for ExclusiveTables {
    fn root(&self) -> Option<PhysAddr> {
        None
    }
    fn pending(&self) -> &PendingBreaks {
        &self.0
    }
}

/// Proof for tables no other code can reach, so no lock guards them: tables
/// a test builds for itself (host tests, `AT` checks on private tables),
/// and stage-2 tables until a VM has its own lock.
pub struct ExclusiveTables(PendingBreaks);

impl ExclusiveTables {
    /// # Safety
    /// The tables of every cursor built with this proof are reachable only
    /// through that cursor's [`Tables`]: not linked into tables another CPU
    /// or another code path can edit.
    pub const unsafe fn new() -> Self {
        Self(PendingBreaks::new())
    }
}

/// The entries a lock holder broke (cleared while valid, [`Pte::get_and_clear`],
/// [`CursorMut`]'s breaks) and has not flushed from the TLBs yet: a make
/// ([`Pte::set_new`], [`Pte::replace`], [`CursorMut`]'s writes) into them
/// is refused ([`MapError::BbmViolation`]). Two spans of slot addresses,
/// each inside one table page, and their hull, not a list: zap records a
/// whole run at once, and a check costs two compares against the hull
/// (the spans are read only when it hits). A span can over-cover (entries
/// between two broken ones of its table), never under-cover, and never
/// covers another table lying physically between two broken ones. Breaks
/// in a third table page while both spans hold others make the second
/// span cover every slot (a zap across many tables, which makes nothing
/// before its gather flushes).
///
/// Emptied by a flush that covers what it records: the regime's flush
/// through [`PteRun::flush`] when a span lies in the flushed run,
/// [`crate::mm::mmu_gather::MmuGather`]'s flush (which covers everything
/// the zap broke) whenever it flushes, and a [`CursorMut`]'s flush when it
/// holds that cursor's breaks only.
///
/// Lives in the lock's guard, so it is written only by the lock's holder
/// (relaxed loads and stores: plain `ldr`/`str`, atomic only to keep the
/// guard `Sync`). It lasts as long as the guard: a break the holder leaves
/// unflushed when it unlocks is not seen by the next holder.
#[derive(Debug)]
pub struct PendingBreaks {
    /// `[lo, hi)`: the hull of the two spans below, checked first (the
    /// common case, nothing recorded, costs two compares); `lo > hi` when empty.
    lo: AtomicUsize,
    hi: AtomicUsize,
    /// The first span: slot addresses in one table page.
    span: [AtomicUsize; 2],
    /// The second span: another table page, or `[0, usize::MAX)`.
    span2: [AtomicUsize; 2],
    /// The [`CursorMut`] whose breaks are all the record holds, or 0.
    owner: AtomicUsize,
}

impl Default for PendingBreaks {
    fn default() -> Self {
        Self::new()
    }
}

/// The table page holding slot address `s`.
#[inline(always)]
const fn table_page(s: usize) -> usize {
    s & !(TABLE_BYTES - 1)
}

/// An empty span.
const EMPTY: [usize; 2] = [usize::MAX, 0];

impl PendingBreaks {
    /// Nothing broken.
    pub const fn new() -> Self {
        Self {
            lo: AtomicUsize::new(usize::MAX),
            hi: AtomicUsize::new(0),
            span: [AtomicUsize::new(usize::MAX), AtomicUsize::new(0)],
            span2: [AtomicUsize::new(usize::MAX), AtomicUsize::new(0)],
            owner: AtomicUsize::new(0),
        }
    }

    fn get(a: &[AtomicUsize; 2]) -> [usize; 2] {
        [a[0].load(Ordering::Relaxed), a[1].load(Ordering::Relaxed)]
    }

    fn put(a: &[AtomicUsize; 2], v: [usize; 2]) {
        a[0].store(v[0], Ordering::Relaxed);
        a[1].store(v[1], Ordering::Relaxed);
    }

    /// The slots `[lo, hi)`, in one table page, were broken through a
    /// [`Pte`]: the record is no longer one cursor's alone.
    #[inline(always)]
    fn note(&self, lo: usize, hi: usize) {
        self.owner.store(0, Ordering::Relaxed);
        self.add(lo, hi);
    }

    /// The slot at `s` was broken by the cursor numbered `id`.
    fn note_by(&self, s: usize, id: usize) {
        let alone = self.is_empty() || self.owner.load(Ordering::Relaxed) == id;
        self.owner.store(if alone { id } else { 0 }, Ordering::Relaxed);
        self.add(s, s + 8);
    }

    /// Adds `[lo, hi)` (one table page) to the hull and to the span of its
    /// table page; the spans' upkeep is out of line (at most once per run
    /// on zap's path).
    #[inline(always)]
    fn add(&self, lo: usize, hi: usize) {
        if lo < self.lo.load(Ordering::Relaxed) {
            self.lo.store(lo, Ordering::Relaxed);
        }
        if hi > self.hi.load(Ordering::Relaxed) {
            self.hi.store(hi, Ordering::Relaxed);
        }
        self.add_span(lo, hi);
    }

    #[inline(never)]
    fn add_span(&self, lo: usize, hi: usize) {
        let widen = |a: [usize; 2]| [a[0].min(lo), a[1].max(hi)];
        let a = Self::get(&self.span);
        let b = Self::get(&self.span2);
        if a[0] >= a[1] {
            Self::put(&self.span, [lo, hi]);
        } else if table_page(lo) == table_page(a[0]) {
            Self::put(&self.span, widen(a));
        } else if b[0] >= b[1] {
            Self::put(&self.span2, [lo, hi]);
        } else if table_page(lo) == table_page(b[0]) && b[1] != usize::MAX {
            Self::put(&self.span2, widen(b));
        } else {
            // A third table page: cover everything.
            Self::put(&self.span2, [0, usize::MAX]);
            self.lo.store(0, Ordering::Relaxed);
            self.hi.store(usize::MAX, Ordering::Relaxed);
        }
    }

    /// Whether the slot at `s` may be broken and unflushed.
    #[inline(always)]
    fn covers(&self, s: usize) -> bool {
        self.overlaps(s, s + 8)
    }

    /// Whether a slot in `[lo, hi)` may be broken and unflushed: the hull
    /// first, the spans only when it overlaps.
    #[inline(always)]
    fn overlaps(&self, lo: usize, hi: usize) -> bool {
        lo < self.hi.load(Ordering::Relaxed) && self.lo.load(Ordering::Relaxed) < hi && self.in_spans(lo, hi)
    }

    #[inline(never)]
    fn in_spans(&self, lo: usize, hi: usize) -> bool {
        let (a, b) = (Self::get(&self.span), Self::get(&self.span2));
        (lo < a[1] && a[0] < hi) || (lo < b[1] && b[0] < hi)
    }

    /// A flush covered the slots `[lo, hi)`: each span they hold empties.
    #[inline(always)]
    fn flushed(&self, lo: usize, hi: usize) {
        if lo <= self.lo.load(Ordering::Relaxed) && self.hi.load(Ordering::Relaxed) <= hi {
            self.clear();
        } else if lo < self.hi.load(Ordering::Relaxed) && self.lo.load(Ordering::Relaxed) < hi {
            self.flushed_spans(lo, hi);
        }
    }

    #[inline(never)]
    fn flushed_spans(&self, lo: usize, hi: usize) {
        let mut a = Self::get(&self.span);
        let mut b = Self::get(&self.span2);
        for x in [&mut a, &mut b] {
            if lo <= x[0] && x[1] <= hi {
                *x = EMPTY;
            }
        }
        Self::put(&self.span, a);
        Self::put(&self.span2, b);
        self.lo.store(a[0].min(b[0]), Ordering::Relaxed);
        self.hi.store(a[1].max(b[1]), Ordering::Relaxed);
    }

    /// A flush by the cursor numbered `id` covered all its breaks: the
    /// record empties if it holds nothing else.
    fn flushed_by(&self, id: usize) {
        if self.owner.load(Ordering::Relaxed) == id {
            self.clear();
        }
    }

    /// Whether nothing is recorded.
    pub fn is_empty(&self) -> bool {
        self.lo.load(Ordering::Relaxed) >= self.hi.load(Ordering::Relaxed)
    }

    /// A flush covered every entry broken under the lock (the mmu_gather's).
    #[inline(always)]
    pub fn clear(&self) {
        self.lo.store(usize::MAX, Ordering::Relaxed);
        self.hi.store(0, Ordering::Relaxed);
        Self::put(&self.span, EMPTY);
        Self::put(&self.span2, EMPTY);
        self.owner.store(0, Ordering::Relaxed);
    }
}

/// A cursor over one set of live tables: a range editor that tracks BBM,
/// flushes, and detached tables for one batch of changes.
pub struct CursorMut<'a, 'm, R: Regime, M: TableMemory> {
    t: &'a mut Tables<'m, M>,
    regime: R,
    fl: &'a mut R::Flush,
    /// Broken (invalidated) ranges whose TLB entries are not flushed yet,
    /// for the flush; their slots are in the lock's record too.
    pending: Vec<(u64, u64)>,
    /// The lock's record of breaks not flushed ([`PgtableLock::pending`]),
    /// shared with the [`Pte`]s made under the same lock.
    record: &'a PendingBreaks,
    /// This cursor's number in `record` once it broke something; 0 before.
    id: usize,
    /// Ranges changed in a live-safe way (permissions) whose old TLB
    /// entries are not flushed yet: no BBM hazard, but flushed with the batch.
    stale: Option<(u64, u64)>,
    /// Whether a pending range includes an unlinked table (needs a non-leaf TLBI).
    pending_tables: bool,
    detached: Vec<PhysAddr>,
    /// The current position: `va`, the level of the entry it is at, and the
    /// table at each level from the root down to it.
    va: u64,
    level: u32,
    path: [PhysAddr; MAX_LEVELS],
}

/// Numbers the cursors that break entries, for [`PendingBreaks::owner`].
static NEXT_CURSOR_ID: AtomicUsize = AtomicUsize::new(1);

fn overlaps(a: (u64, u64), b: (u64, u64)) -> bool {
    a.0 < b.1 && b.0 < a.1
}

impl<'a, 'm, R: Regime, M: TableMemory> CursorMut<'a, 'm, R, M> {
    /// A cursor over `t`, whose lock `lock` proves is held (the cursor
    /// borrows it for its whole life; see [`PgtableLock`]).
    ///
    /// # Panics
    /// If `lock` guards other tables than `t` (another mm's lock): a kernel
    /// bug, caught before any edit.
    pub fn new<L: PgtableLock<R>>(lock: &'a L, t: &'a mut Tables<'m, M>, regime: R, fl: &'a mut R::Flush) -> Self {
        if let Some(root) = lock.root() {
            assert!(root == t.root, "CursorMut::new: the lock guards the tables at {root:?}, not {:?}", t.root);
        }
        let (root, start) = (t.root, t.start_level);
        let mut path = [PhysAddr::new(0); MAX_LEVELS];
        path[start as usize] = root;
        Self {
            t,
            regime,
            fl,
            pending: Vec::new(),
            record: lock.pending(),
            id: 0,
            stale: None,
            pending_tables: false,
            detached: Vec::new(),
            va: 0,
            level: start,
            path,
        }
    }

    /// Flushes pending TLB invalidations now, so the MMU (and `AT`) sees
    /// every change made so far.
    pub fn sync(&mut self) {
        self.flush_pending();
        R::publish(self.fl);
    }

    /// Flushes what is pending and hands back the detached tables.
    pub fn finish(mut self) -> Detached {
        self.flush_pending();
        R::publish(self.fl);
        Detached(core::mem::take(&mut self.detached))
    }

    fn flush_pending(&mut self) {
        let Some((lo, hi)) = self.pending.iter().copied().chain(self.stale).reduce(|a, b| (a.0.min(b.0), a.1.max(b.1)))
        else {
            return;
        };
        if !self.pending.is_empty() && sabotaged() {
            // The broken ranges stay pending: a make over them is refused.
            return;
        }
        self.regime.flush(self.fl, VirtAddr::new(lo), hi.wrapping_sub(lo), !self.pending_tables);
        if !self.pending.is_empty() {
            self.record.flushed_by(self.id);
        }
        self.pending.clear();
        self.stale = None;
        self.pending_tables = false;
    }

    /// Moves to the deepest entry for `va` down to `level` the tables
    /// allow, reusing the path above while `va` stays under it. Returns the
    /// level reached.
    pub fn jump(&mut self, va: VirtAddr, level: u32) -> u32 {
        let va = va.as_u64();
        let g = self.t.granule;
        // Keep the tables above that still cover `va`.
        let mut l = self.t.start_level;
        while l < self.level.min(level) && g.index(va, l) == g.index(self.va, l) && l < 3 {
            l += 1;
        }
        // `path[l]` is right for `va` if every level above matched.
        while l < level {
            let d = self.t.read(self.path[l as usize], g.index(va, l));
            match d.kind(l, g) {
                Kind::Table(next) => {
                    self.path[l as usize + 1] = next;
                    l += 1;
                }
                _ => break,
            }
        }
        self.va = va;
        self.level = l;
        l
    }

    /// Moves to the next entry at the current level (to the next table's
    /// first entry when this one ends, through the path above).
    pub fn move_forward(&mut self) {
        let size = self.t.granule.level_size(self.level);
        let next = (self.va & !(size - 1)).wrapping_add(size);
        let level = self.level;
        self.jump(VirtAddr::new(next), level);
    }

    /// The tables the cursor edits, for reading (translate, walk).
    pub fn tables(&self) -> &Tables<'m, M> {
        self.t
    }

    /// Maps `[va, va+size)` to `[pa, pa+size)` with leaves built from
    /// `attrs`, creating tables in holes on the way and using the largest
    /// leaves `sizes` permits (Linux `__create_pgd_mapping`,
    /// `remap_pfn_range`): into holes, over identical entries, or as
    /// live-safe changes (flushed with the batch). A change that needs
    /// break-before-make is refused, and so is a leaf or a table over a
    /// range broken but not flushed. Within one table the pages go in one
    /// loop, a load and a store each where the table is empty. Returns the
    /// number of leaves written.
    pub fn map(
        &mut self,
        va: VirtAddr,
        pa: PhysAddr,
        size: u64,
        attrs: R::Attrs,
        sizes: LeafSizes,
    ) -> Result<usize, MapError> {
        let g = self.t.granule;
        if !va.is_aligned(g.page_size()) || !pa.is_aligned(g.page_size()) || !size.is_multiple_of(g.page_size()) {
            return Err(MapError::Misaligned);
        }
        let (mut va, mut pa, mut left) = (va.as_u64(), pa.as_u64(), size);
        let mut written = 0;
        while left > 0 {
            let level = (self.t.start_level..=3)
                .find(|&l| {
                    let sz = g.level_size(l);
                    (l == 3 || (sizes == LeafSizes::Largest && g.block_allowed(l)))
                        && va % sz == 0
                        && pa % sz == 0
                        && left >= sz
                })
                .unwrap_or(3);
            let sz = g.level_size(level);
            // Pages: every entry up to the end of this level-3 table in one
            // go (a block can only start where the next table would).
            let n = if level == 3 { (g.entries_per_table() - g.index(va, 3)).min((left / sz) as usize) } else { 1 };
            let table = self.descend_creating(VirtAddr::new(va), level)?;
            self.fill(
                table,
                g.index(va, level),
                level,
                VirtAddr::new(va),
                R::leaf(attrs, PhysAddr::new(pa), level),
                n,
            )?;
            written += n;
            va = va.wrapping_add(sz * n as u64);
            pa += sz * n as u64;
            left -= sz * n as u64;
        }
        Ok(written)
    }

    /// Moves to the level-`level` entry for `va` and writes `new` there
    /// with [`Self::set`], creating the missing tables above it in holes.
    /// Returns the value replaced.
    pub fn set_leaf(&mut self, va: VirtAddr, level: u32, new: Desc) -> Result<Desc, MapError> {
        self.descend_creating(va, level).map_err(|e| match e {
            MapError::NeedsBreakBeforeMake { va, level, old, .. } => {
                MapError::NeedsBreakBeforeMake { va, level, old, new }
            }
            e => e,
        })?;
        self.set(new)
    }

    /// Moves to the level-`level` entry for `va` along the kept path,
    /// linking a new table into each hole above it (a make: refused over a
    /// range broken but not flushed). Returns the table holding the entry.
    fn descend_creating(&mut self, va: VirtAddr, level: u32) -> Result<PhysAddr, MapError> {
        let g = self.t.granule;
        let mut l = self.jump(va, level);
        while l < level {
            let (table, idx) = (self.path[l as usize], g.index(va.as_u64(), l));
            let d = self.t.read(table, idx);
            if d.0 != 0 {
                return Err(MapError::NeedsBreakBeforeMake {
                    va: Some(va),
                    level: Some(l),
                    old: d,
                    new: Desc::INVALID,
                });
            }
            let size = g.level_size(l);
            if let Some(hit) = self.pending_hit(va.align_down(size), size, table, idx, 1) {
                return Err(violation(Some(VirtAddr::new(hit)), Some(l)));
            }
            let next = self.t.mem.alloc_table().ok_or(MapError::OutOfMemory)?;
            self.t.write(table, idx, Desc::table(next));
            l += 1;
            self.path[l as usize] = next;
            self.level = l;
        }
        Ok(self.path[level as usize])
    }

    /// The first address of `[va, va+size)` inside a range broken but not
    /// flushed, if any: by this cursor, or under its lock (the lock's
    /// record, whose slots `n` entries from `idx` of `table` hold).
    fn pending_hit(&self, va: VirtAddr, size: u64, table: PhysAddr, idx: usize, n: usize) -> Option<u64> {
        let va = va.as_u64();
        let r = (va, va.wrapping_add(size));
        if let Some(p) = self.pending.iter().find(|&&p| overlaps(p, r)) {
            return Some(p.0.max(va));
        }
        let s = self.slot_addr(table, idx);
        self.record.overlaps(s, s + n * 8).then_some(va)
    }

    /// The address of entry `idx` of `table`, as the lock's record keeps it.
    fn slot_addr(&self, table: PhysAddr, idx: usize) -> usize {
        self.t.entry(table, idx) as *const AtomicU64 as usize
    }

    /// Writes `n` consecutive leaves from entry `idx` of `table` (level
    /// `level`, the first for `va`), each mapping the next `level_size` of
    /// memory after `first`'s: the building loop of [`Self::map`]. It stays
    /// in one table; the pending check is made once for the whole run.
    #[inline(always)]
    fn fill(
        &mut self,
        table: PhysAddr,
        idx: usize,
        level: u32,
        va: VirtAddr,
        first: Desc,
        n: usize,
    ) -> Result<(), MapError> {
        let g = self.t.granule;
        assert!(idx + n <= g.entries_per_table());
        let step = g.level_size(level);
        if let Some(hit) = self.pending_hit(va, step * n as u64, table, idx, n) {
            return Err(violation(Some(VirtAddr::new(hit & !(step - 1))), Some(level)));
        }
        // SAFETY: `TableMemory`'s contract; idx + n is in range (checked).
        let slots = unsafe { core::slice::from_raw_parts(self.t.mem.table_ptr(table).add(idx), n) };
        let mut d = first.0;
        for (i, slot) in slots.iter().enumerate() {
            let old = slot.load(Ordering::Relaxed);
            if old == 0 {
                slot.store(d, Ordering::Release);
            } else if old != d {
                self.fill_over(slot, va.wrapping_add(i as u64 * step), level, Desc(old), Desc(d))?;
            }
            d += step;
        }
        Ok(())
    }

    /// [`Self::fill`] over an entry that is not a hole: only a live-safe
    /// change of a valid leaf, as a compare-and-swap that keeps the access
    /// flag and dirtiness the MMU records ([`Regime::keep_hw`]); its old
    /// TLB entries are flushed with the batch.
    #[cold]
    #[inline(never)]
    fn fill_over(&mut self, slot: &AtomicU64, va: VirtAddr, level: u32, old: Desc, new: Desc) -> Result<(), MapError> {
        if !old.is_valid() || needs_bbm::<R>(old, new, level, self.t.granule) {
            return Err(MapError::NeedsBreakBeforeMake { va: Some(va), level: Some(level), old, new });
        }
        let f = |v| Ok::<u64, core::convert::Infallible>(R::keep_hw(Desc(v), new).0);
        if let Err(e) = cas_modify_from(slot, crate::mm::desc::hw_updates(), old.0, f) {
            match e {}
        }
        self.push_stale(va, va.wrapping_add(self.t.granule.level_size(level)));
        Ok(())
    }

    /// The level of the entry the cursor is at.
    pub fn level(&self) -> u32 {
        self.level
    }

    /// The VA the cursor is at.
    pub fn va(&self) -> VirtAddr {
        VirtAddr::new(self.va)
    }

    /// The entry the cursor is at.
    pub fn query(&self) -> Desc {
        self.t.read(self.path[self.level as usize], self.t.granule.index(self.va, self.level))
    }

    /// Sets bits `set` and clears `clear` in the live entry at the cursor
    /// with a compare-and-swap loop (Linux `ptep_set_wrprotect`,
    /// `__ptep_set_access_flags`): an AF or dirty update the MMU makes
    /// meanwhile is kept. Only permission bits; the old TLB entries are
    /// flushed with the batch. Returns the value replaced.
    pub fn update(&mut self, set: u64, clear: u64) -> Result<Desc, MapError> {
        if (set | clear) & !R::PERM_BITS != 0 {
            return Err(MapError::NotPermissionBits(set | clear));
        }
        let (table, idx) = (self.path[self.level as usize], self.t.granule.index(self.va, self.level));
        let old = self.t.rmw(table, idx, set, clear);
        if old.is_valid() && Desc((old.0 & !clear) | set) != old {
            let size = self.t.granule.level_size(self.level);
            let va = VirtAddr::new(self.va).align_down(size);
            self.push_stale(va, va.wrapping_add(size));
        }
        Ok(old)
    }

    /// Clears the entry at the cursor with an atomic swap (Linux
    /// `ptep_get_and_clear`); its range is flushed with the batch. Returns
    /// the value the swap took out, with any AF/dirty the MMU set.
    pub fn get_and_clear(&mut self) -> Desc {
        let size = self.t.granule.level_size(self.level);
        let va = VirtAddr::new(self.va).align_down(size);
        let (table, idx) = (self.path[self.level as usize], self.t.granule.index(self.va, self.level));
        let old = self.break_entry(table, idx, va, size);
        self.detach_at(old, self.level);
        old
    }

    /// Writes `new` at the cursor (Linux `set_pte_at`,
    /// `__ptep_set_access_flags`) and returns the value it replaced:
    /// - into a hole: a store; refused over a range broken but not flushed;
    /// - over a live entry, as a change that needs no BBM (refused where
    ///   BBM is needed): a compare-and-swap loop that stores `new` with the
    ///   access flag and dirtiness the entry holds ([`Regime::keep_hw`]),
    ///   so one the MMU records between the load and the store is kept,
    ///   and is in the value returned; the old TLB entries are flushed
    ///   with the batch;
    /// - an invalid `new` over a live entry is a break, as
    ///   [`Self::get_and_clear`].
    pub fn set(&mut self, new: Desc) -> Result<Desc, MapError> {
        let g = self.t.granule;
        let level = self.level;
        let size = g.level_size(level);
        let va = VirtAddr::new(self.va & !(size - 1));
        let (table, idx) = (self.path[level as usize], g.index(self.va, level));
        if !new.is_valid() {
            let old = self.t.swap(table, idx, new);
            if old.is_valid() {
                self.push_pending(table, idx, va, va.wrapping_add(size));
                self.detach_at(old, level);
            }
            return Ok(old);
        }
        if self.pending_hit(va, size, table, idx, 1).is_some() {
            return Err(violation(Some(va), Some(level)));
        }
        let slot = self.t.entry(table, idx);
        let old = Desc(slot.load(Ordering::Acquire));
        if !old.is_valid() {
            // The MMU writes no invalid entry, and the lock keeps other CPUs out.
            slot.store(new.0, Ordering::Release);
            return Ok(old);
        }
        if needs_bbm::<R>(old, new, level, g) {
            return Err(MapError::NeedsBreakBeforeMake { va: Some(va), level: Some(level), old, new });
        }
        let f = |v| Ok::<u64, core::convert::Infallible>(R::keep_hw(Desc(v), new).0);
        let (old, stored) = match cas_modify_from(slot, crate::mm::desc::hw_updates(), old.0, f) {
            Ok(r) => r,
            Err(e) => match e {},
        };
        if old != stored {
            self.push_stale(va, va.wrapping_add(size));
        }
        Ok(Desc(old))
    }

    /// Records a table `old` unlinked at `level`: detached, flushed with a
    /// non-leaf TLBI, and no longer on the cursor's path.
    fn detach_at(&mut self, old: Desc, level: u32) {
        if let Kind::Table(child) = old.kind(level, self.t.granule) {
            self.pending_tables = true;
            self.detached.push(child);
            self.level = self.level.min(level);
        }
    }

    /// The table and index holding the level-`level` entry for `va`.
    fn slot(&self, va: VirtAddr, level: u32) -> Result<(PhysAddr, usize), MapError> {
        let mut table = self.t.root;
        for l in self.t.start_level..level {
            let d = self.t.read(table, self.t.granule.index(va.as_u64(), l));
            match d.kind(l, self.t.granule) {
                Kind::Table(next) => table = next,
                _ => return Err(MapError::NotMapped { va, level: l }),
            }
        }
        Ok((table, self.t.granule.index(va.as_u64(), level)))
    }

    /// Step 1: invalidate a live entry covering `[va, va+size)`. Returns
    /// the value the swap took out, with every AF/dirty update the MMU
    /// made: the new entries are built from it.
    fn break_entry(&mut self, table: PhysAddr, idx: usize, va: VirtAddr, size: u64) -> Desc {
        let old = self.t.swap(table, idx, Desc::INVALID);
        if old.is_valid() {
            self.push_pending(table, idx, va, va.wrapping_add(size));
        }
        old
    }

    /// Records a live-safe change's range to flush with the batch.
    fn push_stale(&mut self, lo: VirtAddr, hi: VirtAddr) {
        let (lo, hi) = (lo.as_u64(), hi.as_u64());
        self.stale = Some(self.stale.map_or((lo, hi), |s| (s.0.min(lo), s.1.max(hi))));
    }

    /// Records entry `idx` of `table`, mapping `[lo, hi)`, as broken: in
    /// the lock's record, and as a range to flush, merged with the previous
    /// one when they touch (an unmap of N pages stays one range, not N).
    fn push_pending(&mut self, table: PhysAddr, idx: usize, lo: VirtAddr, hi: VirtAddr) {
        if self.id == 0 {
            self.id = NEXT_CURSOR_ID.fetch_add(1, Ordering::Relaxed);
        }
        self.record.note_by(self.slot_addr(table, idx), self.id);
        let (lo, hi) = (lo.as_u64(), hi.as_u64());
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
    fn make_entry(&mut self, table: PhysAddr, idx: usize, va: VirtAddr, level: u32, new: Desc) -> Result<(), MapError> {
        let size = self.t.granule.level_size(level);
        if new.is_valid() && self.pending_hit(va, size, table, idx, 1).is_some() {
            return Err(violation(Some(va), Some(level)));
        }
        let old = self.t.read(table, idx);
        if old.is_valid() && new.is_valid() && needs_bbm::<R>(old, new, level, self.t.granule) {
            return Err(MapError::NeedsBreakBeforeMake { va: Some(va), level: Some(level), old, new });
        }
        self.t.write(table, idx, new);
        Ok(())
    }

    /// Replaces the level-`level` entry for `va` (aligned down), with BBM when
    /// the change needs it. A replaced table is detached.
    pub fn replace(&mut self, va: VirtAddr, level: u32, new: Desc) -> Result<(), MapError> {
        let size = self.t.granule.level_size(level);
        let va = va.align_down(size);
        let (table, idx) = self.slot(va, level)?;
        let old = self.t.read(table, idx);
        if old == new {
            return Ok(());
        }
        let bbm = old.is_valid() && (!new.is_valid() || needs_bbm::<R>(old, new, level, self.t.granule));
        if bbm {
            let old = self.break_entry(table, idx, va, size);
            self.detach_at(old, level);
            self.flush_pending();
        } else if old.is_valid() {
            // A live-safe change (permissions) of a live leaf: a
            // compare-and-swap that keeps the AF/dirty the MMU sets
            // meanwhile ([`Regime::keep_hw`]), as [`Self::set`].
            let f = |v| Ok::<u64, core::convert::Infallible>(R::keep_hw(Desc(v), new).0);
            if let Err(e) = cas_modify_from(self.t.entry(table, idx), crate::mm::desc::hw_updates(), old.0, f) {
                match e {}
            }
            // Old TLB entries must still go.
            self.push_stale(va, va.wrapping_add(size));
            return Ok(());
        }
        self.make_entry(table, idx, va, level, new)
    }

    /// Sets the hierarchical limits (APTable, UXNTable, PXNTable) of the
    /// level-`level` table entry covering `va`. Like a permission change this
    /// needs no break-before-make, but walk caches hold table entries, so the
    /// range is flushed with a non-leaf TLBI.
    pub fn limit_table(&mut self, va: VirtAddr, level: u32, limits: TableAttrs) -> Result<(), MapError> {
        let size = self.t.granule.level_size(level);
        let va = va.align_down(size);
        let (table, idx) = self.slot(va, level)?;
        let old = self.t.read(table, idx);
        let Kind::Table(child) = old.kind(level, self.t.granule) else {
            return Err(MapError::NotMapped { va, level });
        };
        let new = Desc::table_with(child, limits);
        if new != old {
            self.t.write(table, idx, new);
            self.push_stale(va, va.wrapping_add(size));
            self.pending_tables = true;
        }
        Ok(())
    }

    /// Splits the block at `level` covering `va` into a table of next-level
    /// leaves mapping the same memory with the same attributes.
    pub fn split(&mut self, va: VirtAddr, level: u32) -> Result<(), MapError> {
        let g = self.t.granule;
        let size = g.level_size(level);
        let va = va.align_down(size);
        let (table, idx) = self.slot(va, level)?;
        let old = self.t.read(table, idx);
        let base = match old.kind(level, g) {
            Kind::Leaf(pa) if level < 3 => pa,
            _ => return Err(MapError::NotABlock { va, level }),
        };
        if old.contiguous() {
            self.split_contiguous(va, level)?;
        }
        let child_level = level + 1;
        let child_size = g.level_size(child_level);
        let child = self.t.mem.alloc_table().ok_or(MapError::OutOfMemory)?;
        // Built from the value the break swapped out (Linux builds the
        // split from what `pmdp_invalidate` returned): an AF or dirty
        // update the MMU made after the read above is kept.
        let old = self.break_entry(table, idx, va, size);
        let ty = if child_level == 3 { 0b11 } else { 0b01 };
        let attrs = old.attr_bits() & !(1 << 52);
        for i in 0..g.entries_per_table() {
            // Not yet reachable by the walker: plain writes.
            self.t.write(
                child,
                i,
                Desc(((base.as_u64() + i as u64 * child_size) & 0x0000_ffff_ffff_f000) | attrs | ty),
            );
        }
        self.flush_pending();
        // A refused make leaves the new table unlinked: freed with the batch.
        self.make_entry(table, idx, va, level, Desc::table(child)).inspect_err(|_| self.detached.push(child))
    }

    /// The first index and entry count of the contiguous group holding `idx`.
    fn group(&self, idx: usize, level: u32) -> (usize, usize) {
        let n = self.t.granule.contiguous_entries(level);
        (idx & !(n - 1), n)
    }

    /// Clears the contiguous bit on the whole run containing `va` (BBM on the run).
    pub fn split_contiguous(&mut self, va: VirtAddr, level: u32) -> Result<(), MapError> {
        let (table, idx) = self.slot(va, level)?;
        if !self.t.read(table, idx).contiguous() {
            return Ok(());
        }
        let (first, n) = self.group(idx, level);
        let size = self.t.granule.level_size(level);
        let run_va = va.align_down(size * n as u64).align_down(size);
        // The new entries are built from what the swaps took out (AF/dirty included).
        let olds: Vec<Desc> =
            (0..n).map(|i| self.break_entry(table, first + i, run_va + i as u64 * size, size)).collect();
        self.flush_pending();
        for (i, d) in olds.into_iter().enumerate() {
            self.make_entry(table, first + i, run_va + i as u64 * size, level, Desc(d.0 & !(1 << 52)))?;
        }
        Ok(())
    }

    /// Sets the contiguous bit on the aligned run containing `va`, whose
    /// entries must be leaves mapping consecutive memory with identical
    /// attributes (BBM on the run).
    pub fn make_contiguous(&mut self, va: VirtAddr, level: u32) -> Result<(), MapError> {
        let g = self.t.granule;
        let (table, idx) = self.slot(va, level)?;
        let (first, n) = self.group(idx, level);
        if n < 2 {
            return Err(MapError::NotContiguous { va, level });
        }
        let size = g.level_size(level);
        let run_va = va.align_down(size * n as u64);
        let olds: Vec<Desc> = (0..n).map(|i| self.t.read(table, first + i)).collect();
        let Kind::Leaf(pa0) = olds[0].kind(level, g) else {
            return Err(MapError::NotContiguous { va, level });
        };
        let attrs = olds[0].attr_bits() & !(1 << 52);
        let ok = pa0.as_u64() % (size * n as u64) == 0
            && olds.iter().enumerate().all(|(i, d)| {
                d.kind(level, g) == Kind::Leaf(pa0 + (i as u64 * size)) && d.attr_bits() & !(1 << 52) == attrs
            });
        if !ok {
            return Err(MapError::NotContiguous { va, level });
        }
        if olds.iter().all(|d| d.contiguous()) {
            return Ok(());
        }
        // The new entries are built from what the swaps took out (AF/dirty included).
        let olds: Vec<Desc> =
            (0..n).map(|i| self.break_entry(table, first + i, run_va + i as u64 * size, size)).collect();
        self.flush_pending();
        for (i, d) in olds.into_iter().enumerate() {
            self.make_entry(table, first + i, run_va + i as u64 * size, level, Desc(d.0 | (1 << 52)))?;
        }
        Ok(())
    }

    /// Replaces the table at `level` covering `va` by one block, if it maps
    /// one aligned, physically contiguous range with identical attributes
    /// using leaves only.
    pub fn collapse(&mut self, va: VirtAddr, level: u32) -> Result<(), MapError> {
        let g = self.t.granule;
        if !g.block_allowed(level) {
            return Err(MapError::NotCollapsible { va, level });
        }
        let size = g.level_size(level);
        let va = va.align_down(size);
        let (table, idx) = self.slot(va, level)?;
        let Kind::Table(child) = self.t.read(table, idx).kind(level, g) else {
            return Err(MapError::NotCollapsible { va, level });
        };
        let cl = level + 1;
        let first = self.t.read(child, 0);
        let Kind::Leaf(pa0) = first.kind(cl, g) else {
            return Err(MapError::NotCollapsible { va, level });
        };
        let attrs = first.attr_bits() & !(1 << 52);
        let cs = g.level_size(cl);
        let ok = pa0.as_u64() % size == 0
            && (0..g.entries_per_table()).all(|i| {
                let d = self.t.read(child, i);
                d.kind(cl, g) == Kind::Leaf(pa0 + (i as u64 * cs)) && d.attr_bits() & !(1 << 52) == attrs
            });
        if !ok {
            return Err(MapError::NotCollapsible { va, level });
        }
        let old = self.break_entry(table, idx, va, size);
        self.detach_at(old, level);
        self.flush_pending();
        // The child table is unreachable and flushed now: its entries hold
        // every AF/dirty update the MMU made through them, and the block
        // keeps them all ([`Regime::keep_hw`]).
        let block = (0..g.entries_per_table())
            .fold(Desc((pa0.as_u64() & 0x0000_ffff_ffff_f000) | attrs | 0b01), |b, i| {
                R::keep_hw(self.t.read(child, i), b)
            });
        self.make_entry(table, idx, va, level, block)
    }

    /// Unmaps `[va, va+size)`: splits blocks and contiguous runs that straddle
    /// the edges, invalidates every leaf inside, and unlinks (detaches) every
    /// table under the range that becomes empty.
    pub fn unmap(&mut self, va: VirtAddr, size: u64) -> Result<(), MapError> {
        self.edit(va, size, None)
    }

    /// Changes the permission bits ([`Regime::PERM_BITS`]) of every leaf in
    /// `[va, va+size)`: `new = (old & !clear) | set`. Blocks and contiguous
    /// runs that straddle the edges are split first.
    pub fn protect(&mut self, va: VirtAddr, size: u64, set: u64, clear: u64) -> Result<(), MapError> {
        if (set | clear) & !R::PERM_BITS != 0 {
            return Err(MapError::NotPermissionBits(set | clear));
        }
        self.edit(va, size, Some((set, clear)))
    }

    /// The range loop of [`Self::unmap`] and [`Self::protect`] (Linux's
    /// `walk_page_range` loops): it moves the cursor entry by entry along
    /// its kept path ([`Self::jump`]), so the tables above are read again
    /// only where the range crosses into another table.
    fn edit(&mut self, start: VirtAddr, size: u64, prot: Option<(u64, u64)>) -> Result<(), MapError> {
        let g = self.t.granule;
        if !start.is_aligned(g.page_size()) || !size.is_multiple_of(g.page_size()) {
            return Err(MapError::Misaligned);
        }
        // The walk steps in wrapping u64 arithmetic: `end` is 0 for a range
        // that reaches the top of the address space.
        let (va, end) = (start.as_u64(), start.wrapping_add(size).as_u64());
        let mut cur = va;
        while cur != end {
            // The deepest entry covering `cur`.
            let level = self.jump(VirtAddr::new(cur), 3);
            let lsize = g.level_size(level);
            let (table, idx) = (self.path[level as usize], g.index(cur, level));
            let entry_va = cur & !(lsize - 1);
            let entry_end = entry_va.wrapping_add(lsize);
            let step = entry_end.wrapping_sub(cur).min(end.wrapping_sub(cur));
            let d = self.t.read(table, idx);
            let whole = entry_va >= va && entry_end.wrapping_sub(1) <= end.wrapping_sub(1) && cur == entry_va;
            match d.kind(level, g) {
                Kind::None => {}
                Kind::NonPresent(_) => {
                    if prot.is_none() && whole {
                        self.t.write(table, idx, Desc::INVALID);
                    }
                }
                Kind::Reserved => return Err(MapError::NotMapped { va: VirtAddr::new(cur), level }),
                Kind::Table(_) => unreachable!("jump stops above tables only at level 3"),
                Kind::Leaf(_) => {
                    if d.contiguous() {
                        let n = g.contiguous_entries(level) as u64;
                        let run = entry_va & !(lsize * n - 1);
                        if run < va || run.wrapping_add(lsize * n).wrapping_sub(1) > end.wrapping_sub(1) {
                            self.split_contiguous(VirtAddr::new(cur), level)?;
                            continue;
                        }
                    }
                    if !whole {
                        // The entry becomes a table: the next jump goes into it.
                        self.split(VirtAddr::new(cur), level)?;
                        continue;
                    }
                    match prot {
                        None => {
                            self.break_entry(table, idx, VirtAddr::new(entry_va), lsize);
                        }
                        Some((set, clear)) => {
                            let old = self.t.rmw(table, idx, set, clear);
                            if Desc((old.0 & !clear) | set) != old {
                                self.push_stale(VirtAddr::new(entry_va), VirtAddr::new(entry_end));
                            }
                        }
                    }
                }
            }
            cur = cur.wrapping_add(step);
        }
        if prot.is_none() {
            let (root, top) = (self.t.root, self.t.start_level);
            self.free_empty(root, top, Self::root_base(start), start, VirtAddr::new(end));
            // Tables under the range may be gone: keep only the root.
            self.level = top;
        }
        Ok(())
    }

    /// Unlinks the tables under `[va, end)` that no longer map anything (an
    /// empty table maps nothing, so this is safe even where its span reaches
    /// outside the range). `base` is the VA of `table`'s first entry.
    /// Returns whether `table` itself is now empty; the root is never
    /// unlinked, so only its entries under the range are read.
    fn free_empty(&mut self, table: PhysAddr, level: u32, base: VirtAddr, va: VirtAddr, end: VirtAddr) -> bool {
        let g = self.t.granule;
        let (base, va, end) = (base.as_u64(), va.as_u64(), end.as_u64());
        let lsize = g.level_size(level);
        let span = if level == self.t.start_level {
            let first = g.index(va, level);
            first..=g.index(end.wrapping_sub(1), level)
        } else {
            0..=g.entries_per_table() - 1
        };
        let mut empty = true;
        for idx in span {
            let d = self.t.read(table, idx);
            if d.0 == 0 {
                continue;
            }
            let entry_va = base.wrapping_add(idx as u64 * lsize);
            let entry_end = entry_va.wrapping_add(lsize);
            if let (Kind::Table(child), true) = (d.kind(level, g), level < 3)
                && overlaps((va, end.wrapping_sub(1)), (entry_va, entry_end.wrapping_sub(1)))
                && self.free_empty(child, level + 1, VirtAddr::new(entry_va), VirtAddr::new(va), VirtAddr::new(end))
            {
                self.t.write(table, idx, Desc::INVALID);
                // Walk caches may hold the table entry: non-leaf TLBI.
                self.push_pending(table, idx, VirtAddr::new(entry_va), VirtAddr::new(entry_end));
                self.pending_tables = true;
                self.detached.push(child);
                continue;
            }
            empty = false;
        }
        empty
    }

    /// VA of the root table's first entry for the half `va` is in.
    fn root_base(va: VirtAddr) -> VirtAddr {
        VirtAddr::new(if va.as_u64() >> 63 == 1 { 0xffff_0000_0000_0000 } else { 0 })
    }
}

/// Test-only sabotage: when armed, the next flush a BBM sequence needs is
/// skipped, so the tests in `test/cursor_tests.rs` can check that the
/// tracker catches the broken sequence on every path. Nothing but those
/// tests arms it.
pub static SKIP_NEXT_FLUSH: core::sync::atomic::AtomicBool = core::sync::atomic::AtomicBool::new(false);

/// Test-only widening of the window between [`cas_loop`]'s load of a live
/// entry and its compare-and-swap, so the MMU's dirty updates land inside
/// it (`test/dbm_smp_tests.rs` sets it; 0 otherwise).
pub static RMW_WINDOW_SPINS: AtomicU64 = AtomicU64::new(0);

/// How many times [`cas_loop`] went through a widened [`rmw_window`]: the
/// DBM test checks its edits really took that path.
pub static RMW_WINDOW_CALLS: AtomicU64 = AtomicU64::new(0);

/// How many of [`cas_loop`]'s compare-and-swaps found the entry changed
/// since its load (by the MMU or another CPU) and ran again: the DBM test
/// checks that its race really happened.
pub static RMW_CAS_RETRIES: AtomicU64 = AtomicU64::new(0);

/// Spins [`RMW_WINDOW_SPINS`] times and counts the call; one relaxed
/// load when it is 0, so no CPU outside the test writes a shared counter
/// on every compare-and-swap.
#[inline(always)]
fn rmw_window() {
    let spins = RMW_WINDOW_SPINS.load(Ordering::Relaxed);
    if spins == 0 {
        return;
    }
    RMW_WINDOW_CALLS.fetch_add(1, Ordering::Relaxed);
    for _ in 0..spins {
        core::hint::spin_loop();
    }
}

/// BBM violations the tracker refused since boot (for the tests).
pub static BBM_VIOLATIONS: AtomicU64 = AtomicU64::new(0);

/// Takes the sabotage knob if armed (one relaxed load when it is not).
#[inline(always)]
fn sabotaged() -> bool {
    SKIP_NEXT_FLUSH.load(Ordering::Relaxed) && SKIP_NEXT_FLUSH.swap(false, Ordering::Relaxed)
}

#[cold]
fn violation(va: Option<VirtAddr>, level: Option<u32>) -> MapError {
    BBM_VIOLATIONS.fetch_add(1, Ordering::Relaxed);
    MapError::BbmViolation { va, level }
}

/// The level whose entries map `size` bytes, if one does (for an error
/// from a [`Pte`], which knows the size it flushes, not its level).
#[cold]
fn level_of(size: u64) -> Option<u32> {
    (0..=3).find(|&l| crate::arch::aarch64::granule::GRANULE.level_size(l) == size)
}

/// Compare-and-swap loop: `(v & !clear) | set`, returning the value it replaced.
#[inline(always)]
fn cas_update(slot: &AtomicU64, set: u64, clear: u64) -> u64 {
    match cas_modify::<core::convert::Infallible>(slot, |v| Ok((v & !clear) | set)) {
        Ok((old, _)) => old,
        Err(e) => match e {},
    }
}

/// Read-modify-write of a live entry: `f` applied to the current value.
/// Returns `(old, new)`, or the value `f` refused.
#[inline(always)]
fn cas_modify<E>(slot: &AtomicU64, f: impl Fn(u64) -> Result<u64, E>) -> Result<(u64, u64), E> {
    cas_modify_from(slot, crate::mm::desc::hw_updates(), slot.load(Ordering::Acquire), f)
}

/// [`cas_modify`] from `seen`, a value of the entry the caller loaded
/// under the page-table lock, with `hw` = [`crate::mm::desc::hw_updates`]
/// read under that lock. Without hardware updates nothing else changes the
/// entry, so `seen` is current and one store suffices; with them the
/// compare-and-swap starts from `seen` and reruns `f` on what the MMU left.
#[inline(always)]
fn cas_modify_from<E>(
    slot: &AtomicU64,
    hw: bool,
    seen: u64,
    f: impl Fn(u64) -> Result<u64, E>,
) -> Result<(u64, u64), E> {
    if hw {
        return cas_loop(slot, seen, f);
    }
    let new = f(seen)?;
    if new != seen {
        slot.store(new, Ordering::Release);
    }
    Ok((seen, new))
}

/// The compare-and-swap loop (Linux `ptep_set_wrprotect`,
/// `__ptep_set_access_flags`): `f` reruns on the value the MMU left until
/// no one changed the entry between the load and the store. `cur` is the
/// caller's load of the entry.
#[inline(never)]
fn cas_loop<E>(slot: &AtomicU64, mut cur: u64, f: impl Fn(u64) -> Result<u64, E>) -> Result<(u64, u64), E> {
    loop {
        rmw_window();
        let new = f(cur)?;
        if new == cur {
            return Ok((cur, cur));
        }
        match slot.compare_exchange_weak(cur, new, Ordering::AcqRel, Ordering::Acquire) {
            Ok(v) => return Ok((v, new)),
            Err(v) => {
                // A weak compare-and-swap may fail with the entry unchanged.
                if v != cur {
                    RMW_CAS_RETRIES.fetch_add(1, Ordering::Relaxed);
                }
                cur = v;
            }
        }
    }
}

/// `f`, refused if it changes more than `R`'s permission bits.
#[inline(always)]
fn perm_only<R: Regime>(f: impl Fn(Desc) -> Desc) -> impl Fn(u64) -> Result<u64, MapError> {
    move |v| {
        let n = f(Desc(v)).0;
        if (n ^ v) & !R::PERM_BITS != 0 { Err(MapError::NotPermissionBits(n ^ v)) } else { Ok(n) }
    }
}

/// Entry access for the cursor: the only stores to table memory.
impl<M: TableMemory> Tables<'_, M> {
    /// A plain store: into a hole, into a table not yet linked, or a
    /// change the caller has checked is live-safe.
    fn write(&self, table: PhysAddr, idx: usize, d: Desc) {
        self.entry(table, idx).store(d.0, Ordering::Release);
    }

    /// Atomic swap (Linux `ptep_get_and_clear`): the old value, with any
    /// AF/dirty the MMU set up to the swap.
    fn swap(&self, table: PhysAddr, idx: usize, d: Desc) -> Desc {
        Desc(self.entry(table, idx).swap(d.0, Ordering::AcqRel))
    }

    /// Compare-and-swap read-modify-write; returns the value replaced.
    fn rmw(&self, table: PhysAddr, idx: usize, set: u64, clear: u64) -> Desc {
        Desc(cas_update(self.entry(table, idx), set, clear))
    }
}

/// One entry of a live table (level 1, 2 or 3) in regime `R`, located
/// under the lock that guards its tables: Linux's `pte_t *`/`pmd_t *` from
/// `pte_offset_map_lock` and `pmd_offset`. Every store goes through its
/// methods, which keep the BBM rules, `R`'s permission rule and the lock's
/// [`PendingBreaks`]; the slot itself is never handed out.
pub struct Pte<'l, R: Regime = Stage1User> {
    /// The entry itself; tables are aligned to their size, so the table
    /// and the index are the pointer's high and low bits.
    slot: *const AtomicU64,
    /// Borrowed from the lock's guard: no entry outlives it.
    pending: &'l PendingBreaks,
    _regime: core::marker::PhantomData<fn() -> R>,
}

impl<R: Regime> Clone for Pte<'_, R> {
    #[inline(always)]
    fn clone(&self) -> Self {
        *self
    }
}
impl<R: Regime> Copy for Pte<'_, R> {}

/// Bytes of one table (one granule page).
const TABLE_BYTES: usize = crate::arch::aarch64::granule::GRANULE.page_size() as usize;

impl<'l, R: Regime> Pte<'l, R> {
    /// Entry `idx` of the root table `root`, under `lock` (the `Pte`
    /// borrows it). Refused ([`MapError::WrongLock`]) if `lock` guards
    /// other tables (another mm's lock): one compare.
    ///
    /// # Safety
    /// `root` is a table page of `mem`, aligned to its size.
    #[inline(always)]
    pub unsafe fn locate<L: PgtableLock<R>, M: TableMemory + ?Sized>(
        lock: &'l L,
        mem: &M,
        root: PhysAddr,
        idx: usize,
    ) -> Result<Pte<'l, R>, MapError> {
        if lock.root().is_some_and(|r| r != root) {
            return Err(MapError::WrongLock { root });
        }
        assert!(idx < crate::arch::aarch64::granule::GRANULE.entries_per_table());
        // SAFETY: idx is in the table (`table_ptr`'s contract).
        let slot = unsafe { mem.table_ptr(root).add(idx) };
        Ok(Pte { slot, pending: lock.pending(), _regime: core::marker::PhantomData })
    }

    /// Entry `idx` of another table of the same tables, under the same lock.
    ///
    /// # Safety
    /// `table` is a table page of `mem`, aligned to its size, reached from
    /// this entry's root under the lock (or new and about to be linked into
    /// those tables), and stays a table while the lock is held.
    #[inline(always)]
    pub unsafe fn locate_in<M: TableMemory + ?Sized>(self, mem: &M, table: PhysAddr, idx: usize) -> Pte<'l, R> {
        assert!(idx < crate::arch::aarch64::granule::GRANULE.entries_per_table());
        // SAFETY: idx is in the table (`table_ptr`'s contract).
        Pte { slot: unsafe { mem.table_ptr(table).add(idx) }, ..self }
    }

    #[inline(always)]
    fn slot(&self) -> &AtomicU64 {
        // SAFETY: `locate`'s contract: the table is live and locked, and
        // the index is in range (checked there and in `sibling`).
        unsafe { &*self.slot }
    }

    /// The entry's index in its table.
    #[inline(always)]
    pub fn index(self) -> usize {
        (self.slot as usize & (TABLE_BYTES - 1)) / 8
    }

    /// Entry `idx` of the same table.
    #[inline(always)]
    pub fn sibling(self, idx: usize) -> Pte<'l, R> {
        assert!(idx < crate::arch::aarch64::granule::GRANULE.entries_per_table());
        let base = self.slot as usize & !(TABLE_BYTES - 1);
        Pte { slot: (base + idx * 8) as *const AtomicU64, ..self }
    }

    /// The current value (Linux `ptep_get`).
    #[inline(always)]
    pub fn get(self) -> Desc {
        Desc(self.slot().load(Ordering::Acquire))
    }

    /// Writes `d` into an entry that holds no valid translation (Linux
    /// `set_pte_at` on a none entry), or into a table not yet linked.
    /// Invalid to valid needs no TLBI; the caller publishes (`dsb ishst`).
    /// Refused ([`MapError::BbmViolation`]) if the entry was broken under
    /// this lock and not flushed since ([`PendingBreaks`]).
    #[inline(always)]
    pub fn set_new(self, d: Desc) -> Result<(), MapError> {
        let old = self.get();
        if old.is_valid() {
            return Err(MapError::NeedsBreakBeforeMake { va: None, level: None, old, new: d });
        }
        if self.pending.covers(self.slot as usize) {
            return Err(violation(None, None));
        }
        self.slot().store(d.0, Ordering::Release);
        Ok(())
    }

    /// Writes the non-present value `d` (a PTE marker, a swap entry) over
    /// an entry that holds no valid translation (Linux `set_pte_at` of a
    /// marker right after `ptep_get_and_clear` in zap). No TLB caches an
    /// invalid entry, so a break not yet flushed does not hold it back.
    #[inline(always)]
    pub fn set_non_present(self, d: Desc) -> Result<(), MapError> {
        let old = self.get();
        if old.is_valid() || d.is_valid() {
            return Err(MapError::NeedsBreakBeforeMake { va: None, level: None, old, new: d });
        }
        self.slot().store(d.0, Ordering::Release);
        Ok(())
    }

    /// Sets `set` and clears `clear` with a compare-and-swap loop (Linux
    /// `ptep_set_wrprotect`, `__ptep_set_access_flags`): an AF or dirty
    /// bit the MMU sets meanwhile is kept. Only `R`'s permission bits
    /// ([`Regime::PERM_BITS`]). Returns the value replaced; the caller
    /// flushes the old translation if it was valid.
    #[inline(always)]
    pub fn update(self, set: u64, clear: u64) -> Result<Desc, MapError> {
        if (set | clear) & !R::PERM_BITS != 0 {
            return Err(MapError::NotPermissionBits(set | clear));
        }
        Ok(Desc(cas_update(self.slot(), set, clear)))
    }

    /// Replaces the entry by `f(current)` with a compare-and-swap loop
    /// (Linux `ptep_set_wrprotect`, `__ptep_set_access_flags`, and the
    /// mprotect and fork loops): `f` sees the value the MMU last left, so
    /// an AF or dirty update it makes meanwhile is kept (`f` reruns). `f`
    /// may change only `R`'s permission bits. Returns `(old, new)`; the
    /// caller flushes the old translation if it was valid.
    #[inline(always)]
    pub fn modify(self, f: impl Fn(Desc) -> Desc) -> Result<(Desc, Desc), MapError> {
        cas_modify(self.slot(), perm_only::<R>(f)).map(|(o, n)| (Desc(o), Desc(n)))
    }

    /// Linux `ptep_set_wrprotect`: `R`'s write-protect ([`Regime::wrprotect`]:
    /// hardware dirtiness moved to the software dirty bit) on the value the
    /// CAS saw. Returns `(old, new)`.
    #[inline(always)]
    pub fn set_wrprotect(self) -> (Desc, Desc) {
        match cas_modify(self.slot(), |v| Ok::<u64, core::convert::Infallible>(R::wrprotect(Desc(v)).0)) {
            Ok((o, n)) => (Desc(o), Desc(n)),
            Err(e) => match e {},
        }
    }

    /// This entry and the `n - 1` after it in the same table, for a range
    /// loop ([`PteRun`]).
    #[inline(always)]
    pub fn run(self, n: usize) -> PteRun<'l, R> {
        assert!(self.index() + n <= crate::arch::aarch64::granule::GRANULE.entries_per_table());
        PteRun { first: self, n, hw: crate::mm::desc::hw_updates() }
    }

    /// [`Pte::set_new`] into tables no CPU has run on yet (a fork child's,
    /// before it first runs): no TLB can hold anything of them, so no
    /// break there waits for a flush and the pending-break record is not
    /// consulted (fork's copy loop stays one load and one store per entry).
    #[inline(always)]
    pub fn set_new_unused(self, d: Desc) -> Result<(), MapError> {
        let old = self.get();
        if old.is_valid() {
            return Err(MapError::NeedsBreakBeforeMake { va: None, level: None, old, new: d });
        }
        self.slot().store(d.0, Ordering::Release);
        Ok(())
    }

    /// Clears the contiguous bit of an entry in tables no CPU has run on
    /// yet (a fork child's): nothing can cache it, so no BBM is needed.
    pub fn clear_cont_unused(self) {
        self.slot().fetch_and(!CONT, Ordering::AcqRel);
    }

    /// Clears the entry with an atomic swap (Linux `ptep_get_and_clear`)
    /// and returns what it held, with every AF/dirty update the MMU made.
    /// A valid entry is recorded as broken ([`PendingBreaks`]) until a flush
    /// covers it; nothing may be made there before.
    #[inline(always)]
    pub fn get_and_clear(self) -> Desc {
        let old = Desc(self.slot().swap(0, Ordering::AcqRel));
        if old.is_valid() {
            self.pending.note(self.slot as usize, self.slot as usize + 8);
        }
        old
    }

    /// The regime's TLB flush of `[va, va+size)`, what this entry mapped
    /// (Linux `flush_tlb_range` after `ptep_get_and_clear`); see
    /// [`PteRun::flush`].
    #[inline(always)]
    pub fn flush(self, regime: &R, fl: &mut R::Flush, va: VirtAddr, size: u64) {
        self.run(1).flush(regime, fl, va, size);
    }

    /// Break and flush (Linux `ptep_clear_flush`, `pmdp_invalidate`): swaps
    /// in an invalid entry and, if the old one was valid, TLBIs `[va,
    /// va+size)` in the regime's ASID/VMID and waits. Returns the old value
    /// as the swap took it (AF/dirty included), to build the new entry
    /// from; write that with [`Pte::set_new`]. If the flush did not happen
    /// the old entry goes back (what the TLBs may hold anyway) and the
    /// caller is told ([`MapError::BbmViolation`]): it must not make.
    pub fn clear_flush(self, regime: &R, fl: &mut R::Flush, va: VirtAddr, size: u64) -> Result<Desc, MapError> {
        let old = Desc(self.slot().swap(0, Ordering::AcqRel));
        if old.is_valid() {
            if sabotaged() {
                self.slot().store(old.0, Ordering::Release);
                return Err(violation(Some(va), level_of(size)));
            }
            regime.flush(fl, va, size, true);
        }
        Ok(old)
    }

    /// Break-before-make to `new` (Linux `ptep_clear_flush` then
    /// `set_pte_at`): swap in an invalid entry, TLBI `[va, va+size)` in the
    /// regime's ASID/VMID and wait, then write `new`. Returns the old value.
    /// If the flush did not happen, or the entry was broken earlier and
    /// not flushed since ([`PendingBreaks`]), the make is refused
    /// ([`MapError::BbmViolation`]).
    pub fn replace(self, new: Desc, regime: &R, fl: &mut R::Flush, va: VirtAddr, size: u64) -> Result<Desc, MapError> {
        let old = self.clear_flush(regime, fl, va, size)?;
        // A valid old entry was flushed just now; an invalid one may have
        // been broken earlier and not flushed since.
        if !old.is_valid() && self.pending.covers(self.slot as usize) {
            return Err(violation(Some(va), level_of(size)));
        }
        self.slot().store(new.0, Ordering::Release);
        Ok(old)
    }

    /// Rewrites the `n`-entry contiguous run starting at this entry by
    /// break-before-make of the whole run (Linux `contpte_convert`, behind
    /// both the fold and the unfold): every entry swapped invalid (their
    /// values, AF/dirty included, into `olds`), one TLBI of `[va, va+size)`,
    /// then entry `i` written as `make(olds, i)`. If the flush did not
    /// happen the run goes back as it was (what the TLBs may hold) and the
    /// rewrite is refused ([`MapError::BbmViolation`]).
    #[allow(clippy::too_many_arguments)]
    pub fn convert_run(
        self,
        n: usize,
        regime: &R,
        fl: &mut R::Flush,
        va: VirtAddr,
        size: u64,
        olds: &mut [u64],
        make: impl Fn(&[u64], usize) -> u64,
    ) -> Result<(), MapError> {
        for (i, o) in olds.iter_mut().enumerate().take(n) {
            *o = self.sibling(self.index() + i).slot().swap(0, Ordering::AcqRel);
        }
        if sabotaged() {
            // Refused: the run goes back as it was (what the TLBs may hold).
            for (i, o) in olds.iter().enumerate().take(n) {
                self.sibling(self.index() + i).slot().store(*o, Ordering::Release);
            }
            return Err(violation(Some(va), level_of(size / n as u64)));
        }
        regime.flush(fl, va, size, true);
        for i in 0..n {
            self.sibling(self.index() + i).slot().store(make(olds, i), Ordering::Release);
        }
        Ok(())
    }

    /// Unfolds a contiguous run starting at this entry (`n` entries):
    /// [`Self::convert_run`] to each entry without the contiguous bit.
    /// Returns the old values (with their AF/dirty) through `olds`.
    pub fn unfold(
        self,
        n: usize,
        regime: &R,
        fl: &mut R::Flush,
        va: VirtAddr,
        size: u64,
        olds: &mut [u64],
    ) -> Result<(), MapError> {
        self.convert_run(n, regime, fl, va, size, olds, |o, i| o[i] & !CONT)
    }
}

/// Consecutive entries of one live table under its lock: Linux's `pte++`
/// loops in `change_pte_range`, `copy_pte_range` and `zap_pte_range`. The
/// range loops of `mm/memory.rs` visit a level-3 table's entries through
/// one run instead of locating each entry, and read once per run whether
/// the MMU may write descriptors ([`crate::mm::desc::hw_updates`]; it
/// changes only at boot and in the tests that switch TCR_EL1.HA/HD with no
/// mm being edited). The same rules as [`Pte`]'s hold: read-modify-write
/// is compare-and-swap whenever the MMU may write, and only `R`'s
/// permission bits change in place.
pub struct PteRun<'l, R: Regime = Stage1User> {
    first: Pte<'l, R>,
    n: usize,
    /// [`crate::mm::desc::hw_updates`] when the run was located.
    hw: bool,
}

impl<R: Regime> Clone for PteRun<'_, R> {
    #[inline(always)]
    fn clone(&self) -> Self {
        *self
    }
}
impl<R: Regime> Copy for PteRun<'_, R> {}

impl<'l, R: Regime> PteRun<'l, R> {
    /// How many entries the run has.
    #[inline(always)]
    pub fn len(self) -> usize {
        self.n
    }

    /// Whether the run has no entries.
    #[inline(always)]
    pub fn is_empty(self) -> bool {
        self.n == 0
    }

    /// Entry `i` of the run.
    #[inline(always)]
    pub fn pte(self, i: usize) -> Pte<'l, R> {
        assert!(i < self.n);
        // SAFETY: i < n, and the run lies in one table (`Pte::run`).
        Pte { slot: unsafe { self.first.slot.add(i) }, ..self.first }
    }

    /// The current value of entry `i` (Linux `ptep_get`).
    #[inline(always)]
    pub fn get(self, i: usize) -> Desc {
        self.pte(i).get()
    }

    /// [`Pte::get_and_clear`] on every entry of the run that is not zero
    /// (Linux `zap_pte_range`'s loop): `f(i, old)` gets each old value with
    /// every AF/dirty update the MMU made. If some value swapped out was
    /// valid, the run's whole span is recorded as broken once, after the
    /// loop ([`PendingBreaks`]: no note per entry; it may over-cover
    /// entries that held nothing valid until the flush that follows).
    #[inline(always)]
    pub fn get_and_clear_each(self, mut f: impl FnMut(usize, Desc)) {
        // SAFETY: the run's entries lie in one table (`Pte::run`), live
        // while the lock is held.
        let slots = unsafe { core::slice::from_raw_parts(self.first.slot, self.n) };
        let base = self.first.slot as usize;
        let mut rest = slots.iter();
        let mut swap = |slot: &AtomicU64| {
            let old = Desc(slot.swap(0, Ordering::AcqRel));
            // The index from the pointer: one induction variable in the loop.
            f((slot as *const AtomicU64 as usize - base) / 8, old);
            old
        };
        // Up to the first valid entry, then the rest with no test of what
        // was swapped out (zap's loop costs what it did without the record).
        let broke = rest.by_ref().filter(|s| s.load(Ordering::Acquire) != 0).any(|s| swap(s).is_valid());
        if !broke {
            return;
        }
        for slot in rest {
            if slot.load(Ordering::Acquire) != 0 {
                swap(slot);
            }
        }
        // After the loop: a gather flush inside it (a full batch) emptied the record.
        let lo = self.first.slot as usize;
        self.first.pending.note(lo, lo + self.n * 8);
    }

    /// The regime's TLB flush of `[va, va+size)`, which the caller says is
    /// what this run's entries mapped (Linux `flush_tlb_range`), and waits.
    /// The lock's [`PendingBreaks`] empties if every entry it records is
    /// in this run.
    pub fn flush(self, regime: &R, fl: &mut R::Flush, va: VirtAddr, size: u64) {
        regime.flush(fl, va, size, true);
        let lo = self.first.slot as usize;
        self.first.pending.flushed(lo, lo + self.n * 8);
    }

    /// [`Pte::modify`] on entry `i`, starting from `seen`, the value the
    /// caller loaded from it (no second load): `f` may change only
    /// permission bits, and reruns on what the MMU left if it wrote the
    /// entry since. Returns `(old, new)`.
    #[inline(always)]
    pub fn modify_from(self, i: usize, seen: Desc, f: impl Fn(Desc) -> Desc) -> Result<(Desc, Desc), MapError> {
        cas_modify_from(self.pte(i).slot(), self.hw, seen.0, perm_only::<R>(f)).map(|(o, n)| (Desc(o), Desc(n)))
    }

    /// [`Pte::set_wrprotect`] on entry `i`, starting from `seen`, the
    /// value the caller loaded from it. Returns `(old, new)`.
    #[inline(always)]
    pub fn set_wrprotect_from(self, i: usize, seen: Desc) -> (Desc, Desc) {
        let f = |v| Ok::<u64, core::convert::Infallible>(R::wrprotect(Desc(v)).0);
        match cas_modify_from(self.pte(i).slot(), self.hw, seen.0, f) {
            Ok((o, n)) => (Desc(o), Desc(n)),
            Err(e) => match e {},
        }
    }
}

#[cfg(test)]
mod tests {
    extern crate std;
    use super::super::host::{HostMem, map};
    use super::super::{LeafSizes, Translation};
    use super::*;
    use crate::arch::aarch64::granule::Granule;
    use crate::mm::desc::{LeafAttrs, TableAttrs};
    use std::vec;
    use std::vec::Vec;

    /// Records flushes; the BBM tracking in the cursor does the checking.
    #[derive(Default)]
    struct Rec {
        flushes: Vec<(u64, u64, Option<u16>, bool)>,
        publishes: usize,
    }
    impl TlbFlush for Rec {
        fn publish(&mut self) {
            self.publishes += 1;
        }
        fn flush(&mut self, va: VirtAddr, size: u64, asid: Option<u16>, leaf_only: bool) {
            self.flushes.push((va.as_u64(), size, asid, leaf_only));
        }
    }

    /// Host tables are the test's own: each lives in its own HostMem.
    fn excl() -> &'static ExclusiveTables {
        // SAFETY: each test's tables are its own. One per call: tests run
        // in parallel, and the proof carries the record of breaks.
        alloc::boxed::Box::leak(alloc::boxed::Box::new(unsafe { ExclusiveTables::new() }))
    }

    const MIB: u64 = 1 << 20;
    const K4: Granule = Granule::K4;

    fn level_at<M: TableMemory>(t: &Tables<'_, M>, va: u64) -> Option<(u32, u64)> {
        match t.translate(VirtAddr::new(va)) {
            Translation::Mapped { level, pa, .. } => Some((level, pa.as_u64())),
            Translation::Fault { .. } => None,
        }
    }

    /// Maps `[va, va+size)` to the same physical addresses, kernel RW.
    fn map_ident(t: &mut Tables<'_, HostMem>, va: u64, size: u64, sizes: LeafSizes) {
        map(t, VirtAddr::new(va), PhysAddr::new(va), size, LeafAttrs::KERNEL_RW, sizes).unwrap();
    }

    #[test]
    fn split_block_into_pages_keeps_every_translation() {
        let (mut mem, root) = HostMem::new(K4);
        let mut t = Tables::new(root, K4, 0, &mut mem);
        map(
            &mut t,
            VirtAddr::new(0x4000_0000),
            PhysAddr::new(0x8000_0000),
            2 * MIB,
            LeafAttrs::KERNEL_RW,
            LeafSizes::Largest,
        )
        .unwrap();
        assert_eq!(level_at(&t, 0x4000_0000), Some((2, 0x8000_0000)));
        let mut rec = Rec::default();
        let mut l = CursorMut::new(excl(), &mut t, Stage1User { asid: 7 }, &mut rec);
        l.split(VirtAddr::new(0x4000_1234), 2).unwrap();
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
        map(
            &mut t,
            VirtAddr::new(0x4000_0000),
            PhysAddr::new(0x8000_0000),
            8192,
            LeafAttrs::KERNEL_RW,
            LeafSizes::PagesOnly,
        )
        .unwrap();
        map(
            &mut t,
            VirtAddr::new(0x4020_0000),
            PhysAddr::new(0x9000_0000),
            4096,
            LeafAttrs::KERNEL_RW,
            LeafSizes::PagesOnly,
        )
        .unwrap();
        let mut rec = Rec::default();
        let mut l = CursorMut::new(excl(), &mut t, Stage1User { asid: 3 }, &mut rec);
        let up = TableAttrs { no_el0: true, pxn: true, ..TableAttrs::NONE };
        let down = TableAttrs { read_only: true, ..TableAttrs::NONE };
        l.limit_table(VirtAddr::new(0x4000_0000), 1, up).unwrap();
        l.limit_table(VirtAddr::new(0x4000_1000), 2, down).unwrap();
        assert_eq!(
            l.limit_table(VirtAddr::new(0x4000_0000), 3, down),
            Err(MapError::NotMapped { va: VirtAddr::new(0x4000_0000), level: 3 }),
            "a leaf is not a table"
        );
        let _ = l.finish();
        let (tr, lim) = t.translate_with_limits(VirtAddr::new(0x4000_1008));
        assert!(matches!(tr, Translation::Mapped { level: 3, .. }));
        assert_eq!(lim, up.and_then(down));
        // The level-1 limits cover the neighbouring 2M; the level-2 ones do not.
        assert_eq!(t.translate_with_limits(VirtAddr::new(0x4020_0000)).1, up);
        assert_eq!(t.translate_with_limits(VirtAddr::new(0x8000_0000)).1, TableAttrs::NONE);
        // One flush over both changed ranges, walk caches included.
        assert_eq!(rec.flushes, [(0x4000_0000, 1 << 30, Some(3), false)]);
    }

    #[test]
    fn split_1g_block_into_2m_blocks_then_collapse_back() {
        let (mut mem, root) = HostMem::new(K4);
        let mut t = Tables::new(root, K4, 0, &mut mem);
        map_ident(&mut t, 0x4000_0000, 1 << 30, LeafSizes::Largest);
        let mut rec = Rec::default();
        let mut l = CursorMut::new(excl(), &mut t, Stage1Kernel, &mut rec);
        l.split(VirtAddr::new(0x4000_0000), 1).unwrap();
        let _ = l.finish();
        assert_eq!(level_at(&t, 0x4020_0000), Some((2, 0x4020_0000)));
        let mut l = CursorMut::new(excl(), &mut t, Stage1Kernel, &mut rec);
        l.collapse(VirtAddr::new(0x4000_0000), 1).unwrap();
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
        map_ident(&mut t, 0x4000_0000, 2 * MIB, LeafSizes::PagesOnly);
        let mut rec = Rec::default();
        let mut l = CursorMut::new(excl(), &mut t, Stage1Kernel, &mut rec);
        l.protect(VirtAddr::new(0x4000_3000), 4096, 1 << 7, 0).unwrap();
        assert!(matches!(l.collapse(VirtAddr::new(0x4000_0000), 2), Err(MapError::NotCollapsible { .. })));
        l.protect(VirtAddr::new(0x4000_3000), 4096, 0, 1 << 7).unwrap();
        l.collapse(VirtAddr::new(0x4000_0000), 2).unwrap();
        let d = l.finish();
        assert_eq!(d.0.len(), 1);
        assert_eq!(level_at(&t, 0x4000_3000), Some((2, 0x4000_3000)));
        // Not aligned in PA: pages at 0x4000_0000 mapping PA 0x4000_1000...
        let (mut mem2, root2) = HostMem::new(K4);
        let mut t2 = Tables::new(root2, K4, 0, &mut mem2);
        map(
            &mut t2,
            VirtAddr::new(0x4000_0000),
            PhysAddr::new(0x4000_1000),
            2 * MIB,
            LeafAttrs::KERNEL_RW,
            LeafSizes::PagesOnly,
        )
        .unwrap();
        let mut l2 = CursorMut::new(excl(), &mut t2, Stage1Kernel, &mut rec);
        assert!(matches!(l2.collapse(VirtAddr::new(0x4000_0000), 2), Err(MapError::NotCollapsible { .. })));
        let _ = l2.finish();
    }

    #[test]
    fn contiguous_runs_make_and_split() {
        let (mut mem, root) = HostMem::new(K4);
        let mut t = Tables::new(root, K4, 0, &mut mem);
        map(
            &mut t,
            VirtAddr::new(0x10_0000),
            PhysAddr::new(0x8010_0000),
            64 * 1024,
            LeafAttrs::KERNEL_RW,
            LeafSizes::PagesOnly,
        )
        .unwrap();
        let mut rec = Rec::default();
        let mut l = CursorMut::new(excl(), &mut t, Stage1User { asid: 3 }, &mut rec);
        l.make_contiguous(VirtAddr::new(0x10_5000), 3).unwrap();
        let _ = l.finish();
        for i in 0..16 {
            match t.translate(VirtAddr::new(0x10_0000 + i * 4096)) {
                Translation::Mapped { desc, .. } => assert!(desc.contiguous()),
                other => panic!("{other:?}"),
            }
        }
        assert_eq!(rec.flushes[0], (0x10_0000, 64 * 1024, Some(3), true), "BBM over the whole run");
        // Protecting one page of the run must split the run first.
        let mut l = CursorMut::new(excl(), &mut t, Stage1User { asid: 3 }, &mut rec);
        l.protect(VirtAddr::new(0x10_2000), 4096, 1 << 7, 0).unwrap();
        let _ = l.finish();
        for i in 0..16 {
            match t.translate(VirtAddr::new(0x10_0000 + i * 4096)) {
                Translation::Mapped { desc, .. } => {
                    assert!(!desc.contiguous());
                    assert_eq!(desc.perms().read_only, i == 2);
                }
                other => panic!("{other:?}"),
            }
        }
        // A misaligned or mixed run is refused.
        let mut l = CursorMut::new(excl(), &mut t, Stage1User { asid: 3 }, &mut rec);
        assert!(matches!(l.make_contiguous(VirtAddr::new(0x10_0000), 3), Err(MapError::NotContiguous { .. })));
        let _ = l.finish();
    }

    #[test]
    fn unmap_splits_edges_and_frees_empty_tables() {
        let (mut mem, root) = HostMem::new(K4);
        let mut t = Tables::new(root, K4, 0, &mut mem);
        // Two 2M blocks.
        map_ident(&mut t, 0x4000_0000, 4 * MIB, LeafSizes::Largest);
        let mut rec = Rec::default();
        let mut l = CursorMut::new(excl(), &mut t, Stage1User { asid: 1 }, &mut rec);
        // Unmap from the middle of the first block to the middle of the second.
        l.unmap(VirtAddr::new(0x4010_0000), 2 * MIB).unwrap();
        let d = l.finish();
        assert!(d.0.is_empty());
        assert_eq!(level_at(&t, 0x400f_f000), Some((3, 0x400f_f000)));
        assert_eq!(level_at(&t, 0x4010_0000), None);
        assert_eq!(level_at(&t, 0x402f_f000), None);
        assert_eq!(level_at(&t, 0x4030_0000), Some((3, 0x4030_0000)));
        // Unmap everything: the level-3 and lower tables become empty and are detached.
        let mut l = CursorMut::new(excl(), &mut t, Stage1User { asid: 1 }, &mut rec);
        l.unmap(VirtAddr::new(0x4000_0000), 4 * MIB).unwrap();
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
        map_ident(&mut t, 0x1000, 4096, LeafSizes::PagesOnly);
        let mut rec = Rec::default();
        let mut l = CursorMut::new(excl(), &mut t, Stage1Kernel, &mut rec);
        assert!(
            matches!(l.protect(VirtAddr::new(0x1000), 4096, 0b111 << 2, 0), Err(MapError::NotPermissionBits(_))),
            "AttrIndx needs BBM"
        );
        assert!(
            matches!(l.protect(VirtAddr::new(0x1000), 4096, 1 << 52, 0), Err(MapError::NotPermissionBits(_))),
            "CONT needs BBM"
        );
        let _ = l.finish();
    }

    #[test]
    fn make_without_flush_is_a_bbm_violation() {
        let (mut mem, root) = HostMem::new(K4);
        let mut t = Tables::new(root, K4, 0, &mut mem);
        map_ident(&mut t, 0x1000, 4096, LeafSizes::PagesOnly);
        let mut rec = Rec::default();
        let mut l = CursorMut::new(excl(), &mut t, Stage1Kernel, &mut rec);
        let (table, idx) = l.slot(VirtAddr::new(0x1000), 3).unwrap();
        l.break_entry(table, idx, VirtAddr::new(0x1000), 4096);
        let new = Desc::leaf(PhysAddr::new(0x5000), 3, LeafAttrs::KERNEL_RW);
        assert!(matches!(l.make_entry(table, idx, VirtAddr::new(0x1000), 3, new), Err(MapError::BbmViolation { .. })));
        l.flush_pending();
        l.make_entry(table, idx, VirtAddr::new(0x1000), 3, new).unwrap();
        let _ = l.finish();
        // And a direct replacement that needs BBM is refused too.
        let mut l = CursorMut::new(excl(), &mut t, Stage1Kernel, &mut rec);
        let other = Desc::leaf(PhysAddr::new(0x9000), 3, LeafAttrs::KERNEL_RW);
        let (table, idx) = l.slot(VirtAddr::new(0x1000), 3).unwrap();
        assert!(matches!(
            l.make_entry(table, idx, VirtAddr::new(0x1000), 3, other),
            Err(MapError::NeedsBreakBeforeMake { .. })
        ));
        // replace() does the sequence itself.
        l.replace(VirtAddr::new(0x1000), 3, other).unwrap();
        let _ = l.finish();
        assert_eq!(level_at(&t, 0x1000), Some((3, 0x9000)));
    }

    #[test]
    fn all_granules_split_and_collapse() {
        for (g, start) in [(Granule::K16, 0), (Granule::K64, 1)] {
            let blk = g.level_size(2);
            let (mut mem, root) = HostMem::new(g);
            let mut t = Tables::new(root, g, start, &mut mem);
            map(&mut t, VirtAddr::new(blk), PhysAddr::new(blk * 2), blk, LeafAttrs::KERNEL_RW, LeafSizes::Largest)
                .unwrap();
            let mut rec = Rec::default();
            let mut l = CursorMut::new(excl(), &mut t, Stage1Kernel, &mut rec);
            l.split(VirtAddr::new(blk), 2).unwrap();
            l.make_contiguous(VirtAddr::new(blk), 3).unwrap();
            l.collapse(VirtAddr::new(blk), 2).unwrap();
            let d = l.finish();
            assert_eq!(d.0.len(), 1, "{g:?}");
            assert_eq!(level_at(&t, blk + g.page_size() * 3), Some((2, blk * 2 + g.page_size() * 3)), "{g:?}");
            let _ = vec![0u8; 1];
        }
    }

    /// Records stage-2 flushes by IPA and VMID.
    #[derive(Default)]
    struct S2Rec {
        flushes: Vec<(u64, u64, u16, bool)>,
    }
    impl Stage2Flush for S2Rec {
        fn publish(&mut self) {}
        fn flush_ipa(&mut self, ipa: VirtAddr, size: u64, vmid: u16, leaf_only: bool) {
            self.flushes.push((ipa.as_u64(), size, vmid, leaf_only));
        }
    }

    #[test]
    fn stage2_maps_write_protects_and_unmaps_through_the_same_cursor() {
        let (mut mem, root) = HostMem::new(K4);
        let mut t = Tables::new(root, K4, 0, &mut mem);
        let rw = S2Attrs { read: true, write: true, xn: true, normal: true };
        let mut rec = S2Rec::default();
        let mut c = CursorMut::new(excl(), &mut t, Stage2 { vmid: 9 }, &mut rec);
        // Map 4 pages into holes, creating tables on the way.
        for i in 0..4u64 {
            let ipa = 0x8000_0000 + i * 4096;
            let d = rw.leaf(PhysAddr::new(0x4000_0000 + i * 4096), 3);
            assert_eq!(d.0 & (0b1111 << 2), 0b1111 << 2, "MemAttr normal WB");
            assert_eq!(d.0 & (1 << 11), 0, "no nG in stage 2");
            c.set_leaf(VirtAddr::new(ipa), 3, d).unwrap();
        }
        assert_eq!(c.jump(VirtAddr::new(0x8000_2000), 3), 3);
        assert_eq!(c.query().kind(3, K4), Kind::Leaf(PhysAddr::new(0x4000_2000)));
        // Write-protect (S2AP W) with the CAS update: a permission change, no BBM.
        let old = c.update(0, S2Attrs::S2AP_W).unwrap();
        assert_ne!(old.0 & S2Attrs::S2AP_W, 0);
        assert_eq!(c.query().0 & S2Attrs::S2AP_W, 0);
        // MemAttr is not a permission bit in stage 2 (bit 5 is not AttrIndx's).
        assert!(matches!(c.update(1 << 5, 0), Err(MapError::NotPermissionBits(_))));
        // Changing the memory type of a live stage-2 leaf needs BBM.
        let dev = S2Attrs { normal: false, ..rw }.leaf(PhysAddr::new(0x4000_2000), 3);
        assert!(matches!(c.set(dev), Err(MapError::NeedsBreakBeforeMake { .. })));
        c.move_forward();
        assert_eq!(c.va(), VirtAddr::new(0x8000_3000));
        assert_eq!(c.get_and_clear().kind(3, K4), Kind::Leaf(PhysAddr::new(0x4000_3000)));
        c.unmap(VirtAddr::new(0x8000_0000), 0x2000).unwrap();
        let d = c.finish();
        assert_eq!(d.0.len(), 0, "the level-3 table still maps 0x8000_2000");
        assert!(rec.flushes.iter().all(|f| f.2 == 9), "every flush is by VMID: {:?}", rec.flushes);
        assert!(rec.flushes.iter().any(|f| f.0 <= 0x8000_2000 && 0x8000_2000 < f.0 + f.1));
        assert_eq!(level_at(&t, 0x8000_2000), Some((3, 0x4000_2000)));
        assert_eq!(level_at(&t, 0x8000_3000), None);
        assert_eq!(level_at(&t, 0x8000_0000), None);
    }

    #[test]
    fn cursor_moves_across_tables_without_rewalking_and_cas_keeps_hw_bits() {
        let (mut mem, root) = HostMem::new(K4);
        let mut t = Tables::new(root, K4, 0, &mut mem);
        // Two level-3 tables: the last page of one, the first of the next.
        map(
            &mut t,
            VirtAddr::new(0x1f_f000),
            PhysAddr::new(0x5000_0000),
            0x2000,
            LeafAttrs::KERNEL_RW,
            LeafSizes::PagesOnly,
        )
        .unwrap();
        let mut rec = Rec::default();
        let mut c = CursorMut::new(excl(), &mut t, Stage1User { asid: 5 }, &mut rec);
        assert_eq!(c.jump(VirtAddr::new(0x1f_f000), 3), 3);
        c.move_forward();
        assert_eq!((c.va(), c.level()), (VirtAddr::new(0x20_0000), 3));
        assert_eq!(c.query().kind(3, K4), Kind::Leaf(PhysAddr::new(0x5000_1000)));
        // A write-protect that races with a hardware dirty update: the CAS
        // loop keeps the bit (simulated by setting it between load and CAS
        // is not possible single-threaded; check the CAS keeps what is there).
        c.update(crate::mm::desc::SW_DIRTY_BIT, 0).unwrap();
        let old = c.update(1 << 7, 0).unwrap();
        assert_ne!(old.0 & crate::mm::desc::SW_DIRTY_BIT, 0);
        assert_ne!(c.query().0 & crate::mm::desc::SW_DIRTY_BIT, 0);
        // Sabotage: a skipped flush leaves the range pending, so a make over it is refused.
        c.jump(VirtAddr::new(0x1f_f000), 3);
        let o = c.get_and_clear();
        SKIP_NEXT_FLUSH.store(true, Ordering::Relaxed);
        c.sync();
        assert!(matches!(c.set(o), Err(MapError::BbmViolation { .. })));
        c.sync();
        c.set(o).unwrap();
        let _ = c.finish();
    }

    /// Bits a fake MMU sets, one at a time, in the tests below.
    const MMU_BITS: [u64; 4] = [1 << 55, 1 << 56, 1 << 57, 1 << 58];

    /// Plays the MMU: sets each of [`MMU_BITS`] in the entry at `slot`,
    /// with a pause before each, then sets `done`.
    ///
    /// # Safety
    /// `slot` is the address of a live table entry that outlives the call.
    unsafe fn fake_mmu(slot: usize, done: &core::sync::atomic::AtomicBool) {
        // SAFETY: the caller's promise.
        let e = unsafe { &*(slot as *const AtomicU64) };
        for b in MMU_BITS {
            for _ in 0..20_000 {
                core::hint::spin_loop();
            }
            e.fetch_or(b, Ordering::AcqRel);
        }
        done.store(true, Ordering::Release);
    }

    /// Held by the tests that switch the global hardware-update flags, so
    /// one test's switch-off cannot land in another's run.
    static HW_FLAGS: std::sync::Mutex<()> = std::sync::Mutex::new(());

    /// `set` over a live entry: a clean, old, writable DBM entry is set
    /// again and again to values built from that clean original (toggling
    /// PXN, a permission bit), while a second thread plays the MMU and, once
    /// per round, sets AF and lets a write through (clears AP[2]). `set` is
    /// a compare-and-swap that keeps the access flag and dirtiness the entry
    /// holds ([`Regime::keep_hw`]), so every round ends young and dirty.
    /// Storing `new` as is loses both in the deterministic part; a plain
    /// load-then-store (keeping what the load saw) loses them when the
    /// thread lands between the two, which over the rounds it does (both
    /// checked by breaking `set` on purpose: the test then fails).
    #[test]
    fn set_over_a_live_entry_keeps_what_the_mmu_set() {
        use core::sync::atomic::AtomicUsize;
        let _hw = HW_FLAGS.lock().unwrap_or_else(|e| e.into_inner());
        crate::mm::desc::set_hw_af(true);
        const AP2: u64 = crate::mm::desc::AP_RDONLY;
        const DBM: u64 = crate::mm::desc::DBM_BIT;
        const AF: u64 = crate::mm::desc::AF_BIT;
        let (mut mem, root) = HostMem::new(K4);
        let mut t = Tables::new(root, K4, 0, &mut mem);
        map_ident(&mut t, 0x1000, 4096, LeafSizes::PagesOnly);
        let mut rec = Rec::default();
        let mut c = CursorMut::new(excl(), &mut t, Stage1Kernel, &mut rec);
        assert_eq!(c.jump(VirtAddr::new(0x1000), 3), 3);
        // Clean (AP[2] set, DBM) and old (no AF).
        c.update(DBM | AP2, AF).unwrap();
        let clean = c.query();
        let young_dirty = |d: Desc| d.0 & AF != 0 && d.0 & (DBM | AP2) == DBM;
        // Deterministic: the entry is young and dirty; setting the clean value keeps both.
        c.update(AF, AP2).unwrap();
        let old = c.set(Desc(clean.0 | (1 << 53))).unwrap();
        assert!(young_dirty(old), "the value replaced: {old:?}");
        assert!(young_dirty(c.query()), "young and dirty after set: {:?}", c.query());
        assert_ne!(c.query().0 & (1 << 53), 0, "and the permission change made");
        // Racing: the "MMU" updates the entry while `set` runs.
        let slot = c.t.mem.table_ptr(c.path[3]) as usize + c.t.granule.index(0x1000, 3) * 8;
        let (go, done) = (AtomicUsize::new(0), AtomicUsize::new(0));
        const ROUNDS: usize = 300;
        let mut lost = Vec::new();
        std::thread::scope(|sc| {
            sc.spawn(|| {
                // SAFETY: the entry lives in `mem`, which outlives the scope.
                let e = unsafe { &*(slot as *const AtomicU64) };
                for round in 1..=ROUNDS {
                    while go.load(Ordering::Acquire) != round {
                        core::hint::spin_loop();
                    }
                    for _ in 0..(round * 37) % 500 {
                        core::hint::spin_loop();
                    }
                    e.fetch_or(AF, Ordering::AcqRel);
                    e.fetch_and(!AP2, Ordering::AcqRel);
                    done.store(round, Ordering::Release);
                }
            });
            for round in 1..=ROUNDS {
                c.update(AP2, AF).unwrap();
                assert!(!young_dirty(c.query()));
                go.store(round, Ordering::Release);
                let mut n = 0u64;
                while done.load(Ordering::Acquire) != round || n < 20 {
                    c.set(Desc(clean.0 ^ ((n & 1) << 53))).unwrap();
                    n += 1;
                }
                // Checked after the scope: a panic here would leave the thread waiting.
                if !young_dirty(c.query()) {
                    lost.push((round, c.query()));
                }
            }
        });
        assert!(lost.is_empty(), "{} of {ROUNDS} rounds lost the MMU's update, first {:?}", lost.len(), lost.first());
        let _ = c.finish();
        crate::mm::desc::set_hw_af(false);
    }

    /// `protect` and `unmap` move along the cursor's path (Linux's
    /// pagewalk loops): over 1024 pages in two level-3 tables they read the
    /// root table a handful of times and each entry's table about twice per
    /// entry. Walking from the root for every entry (checked by resetting
    /// the cursor to the root before each step of `edit`) reads the root
    /// over a thousand times and fails this test.
    #[test]
    fn range_edits_move_along_the_path_without_rewalking() {
        let (mut mem, root) = HostMem::new(K4);
        let mut t = Tables::new(root, K4, 0, &mut mem);
        map_ident(&mut t, 0x20_0000, 4 * MIB, LeafSizes::PagesOnly);
        let mut rec = Rec::default();
        let mut c = CursorMut::new(excl(), &mut t, Stage1Kernel, &mut rec);
        // (root visits, all table visits) so far; the root is table 0.
        let visits = |c: &CursorMut<'_, '_, Stage1Kernel, HostMem>| {
            let v = &c.tables().mem.visits;
            (v[0].load(Ordering::Relaxed), v.iter().map(|x| x.load(Ordering::Relaxed)).sum::<usize>())
        };
        let (r0, a0) = visits(&c);
        c.protect(VirtAddr::new(0x20_0000), 4 * MIB, 1 << 7, 0).unwrap();
        let (r1, a1) = visits(&c);
        assert!(r1 - r0 <= 4, "protect read the root {} times", r1 - r0);
        assert!(a1 - a0 <= 2 * 1024 + 16, "protect visited tables {} times for 1024 entries", a1 - a0);
        c.sync();
        c.unmap(VirtAddr::new(0x20_0000), 4 * MIB).unwrap();
        let (r2, _) = visits(&c);
        assert!(r2 - r1 <= 4, "unmap read the root {} times", r2 - r1);
        let d = c.finish();
        assert_eq!(d.0.len(), 4, "both level-3 tables, then the level-2 and level-1 ones");
        assert_eq!(t.count_tables(), 1);
        assert!(rec.flushes.iter().any(|f| f.0 <= 0x20_0000 && 0x5f_f000 < f.0 + f.1), "{:?}", rec.flushes);
    }

    /// The BBM rule of each regime (Arm ARM D8.16.1): output address, block
    /// size (a leaf replacing a table or the reverse), memory type,
    /// shareability, the contiguous bit (and nG in stage 1) need BBM;
    /// permissions and AF do not. Stage 2's MemAttr is bits [5:2], so a
    /// change in bit 5 needs BBM there and not in stage 1 (NS).
    #[test]
    fn break_before_make_rules_per_regime() {
        let pa = PhysAddr::new(0x4020_0000);
        let rw = Desc::leaf(pa, 3, LeafAttrs::KERNEL_RW);
        let bbm = needs_bbm::<Stage1Kernel>;
        assert!(!bbm(rw, Desc::leaf(pa, 3, LeafAttrs::KERNEL_RO), 3, K4), "permission change is live-safe");
        assert!(!bbm(rw, Desc(rw.0 & !(1 << 10)), 3, K4), "AF change is live-safe");
        assert!(bbm(rw, Desc::leaf(PhysAddr::new(0x4030_0000), 3, LeafAttrs::KERNEL_RW), 3, K4), "output address");
        assert!(bbm(rw, Desc::leaf(pa, 3, LeafAttrs::KERNEL_DEVICE), 3, K4), "memory type change");
        let blk = Desc::leaf(pa, 2, LeafAttrs::KERNEL_RW);
        assert!(bbm(blk, Desc::table(PhysAddr::new(0x5000_0000)), 2, K4), "split needs BBM");
        assert!(!bbm(Desc::INVALID, rw, 3, K4), "invalid to valid is fine");
        let cont = Desc::leaf(pa, 3, LeafAttrs { contiguous: true, ..LeafAttrs::KERNEL_RW });
        assert!(bbm(rw, cont, 3, K4), "contiguous bit change");
        assert!(needs_bbm::<Stage1User>(rw, Desc(rw.0 | (1 << 11)), 3, K4), "nG change");
        assert!(!bbm(rw, Desc(rw.0 | (1 << 5)), 3, K4), "stage 1: bit 5 is NS, not the memory type");
        let s2 = S2Attrs { read: true, write: true, xn: true, normal: true }.leaf(pa, 3);
        assert!(needs_bbm::<Stage2>(s2, Desc(s2.0 ^ (1 << 5)), 3, K4), "stage 2: bit 5 is MemAttr");
        assert!(!needs_bbm::<Stage2>(s2, Desc(s2.0 & !S2Attrs::S2AP_W), 3, K4), "stage 2 write-protect");
    }

    /// `map` is a make like any other: a leaf or a table over a range broken
    /// but not flushed is refused, as is a change the regime's BBM rule
    /// forbids (stage 2's MemAttr), and a permission change over a live
    /// entry is flushed with the batch.
    #[test]
    fn map_keeps_the_bbm_rules_and_the_pending_check() {
        let (mut mem, root) = HostMem::new(K4);
        let mut t = Tables::new(root, K4, 0, &mut mem);
        map_ident(&mut t, 0x1000, 2 * 4096, LeafSizes::PagesOnly);
        let mut rec = Rec::default();
        let mut c = CursorMut::new(excl(), &mut t, Stage1Kernel, &mut rec);
        c.jump(VirtAddr::new(0x2000), 3);
        let _ = c.get_and_clear();
        SKIP_NEXT_FLUSH.store(true, Ordering::Relaxed);
        c.sync();
        let e =
            c.map(VirtAddr::new(0x1000), PhysAddr::new(0x1000), 2 * 4096, LeafAttrs::KERNEL_RW, LeafSizes::PagesOnly);
        assert_eq!(e, Err(MapError::BbmViolation { va: Some(VirtAddr::new(0x2000)), level: Some(3) }));
        c.sync();
        assert_eq!(
            c.map(VirtAddr::new(0x1000), PhysAddr::new(0x1000), 2 * 4096, LeafAttrs::KERNEL_RO, LeafSizes::PagesOnly),
            Ok(2)
        );
        let _ = c.finish();
        assert!(rec.flushes.iter().any(|f| f.0 <= 0x1000 && 0x1000 < f.0 + f.1), "the RO change is flushed");
        // A whole level-1 entry broken and not flushed: the table `map` would link there is refused too.
        let mut c = CursorMut::new(excl(), &mut t, Stage1Kernel, &mut rec);
        c.jump(VirtAddr::new(0x1000), 1);
        let _ = c.get_and_clear();
        SKIP_NEXT_FLUSH.store(true, Ordering::Relaxed);
        c.sync();
        let e = c.map(VirtAddr::new(0x5000), PhysAddr::new(0x5000), 4096, LeafAttrs::KERNEL_RW, LeafSizes::PagesOnly);
        assert!(matches!(e, Err(MapError::BbmViolation { level: Some(1), .. })), "{e:?}");
        let _ = c.finish();
        // Stage 2: a memory-type change is BBM there too.
        let (mut mem, root) = HostMem::new(K4);
        let mut t = Tables::new(root, K4, 0, &mut mem);
        let rw = S2Attrs { read: true, write: true, xn: true, normal: true };
        let mut s2 = S2Rec::default();
        let mut c = CursorMut::new(excl(), &mut t, Stage2 { vmid: 3 }, &mut s2);
        c.map(VirtAddr::new(0x4000_0000), PhysAddr::new(0x8000_0000), 4096, rw, LeafSizes::PagesOnly).unwrap();
        let dev = S2Attrs { normal: false, ..rw };
        let e = c.map(VirtAddr::new(0x4000_0000), PhysAddr::new(0x8000_0000), 4096, dev, LeafSizes::PagesOnly);
        assert!(matches!(e, Err(MapError::NeedsBreakBeforeMake { level: Some(3), .. })), "{e:?}");
        let ro = S2Attrs { write: false, ..rw };
        c.map(VirtAddr::new(0x4000_0000), PhysAddr::new(0x8000_0000), 4096, ro, LeafSizes::PagesOnly).unwrap();
        let _ = c.finish();
        assert!(s2.flushes.iter().any(|f| f.0 == 0x4000_0000 && f.2 == 3), "{:?}", s2.flushes);
    }

    /// A second thread plays the MMU (FEAT_HAFDBS): it sets bits in the
    /// live entry with atomic ORs while the cursor toggles AP[2] on it. With
    /// hardware updates on, the cursor's compare-and-swap must never store
    /// over a bit the other writer set; with a plain load-then-store (the
    /// CAS branch disabled) this test fails within a few runs' worth of
    /// iterations.
    #[test]
    fn cas_update_never_loses_a_bit_the_mmu_set() {
        let _hw = HW_FLAGS.lock().unwrap_or_else(|e| e.into_inner());
        crate::mm::desc::set_hw_af(true);
        let (mut mem, root) = HostMem::new(K4);
        let mut t = Tables::new(root, K4, 0, &mut mem);
        map_ident(&mut t, 0x1000, 4096, LeafSizes::PagesOnly);
        let mut rec = Rec::default();
        let mut c = CursorMut::new(excl(), &mut t, Stage1Kernel, &mut rec);
        assert_eq!(c.jump(VirtAddr::new(0x1000), 3), 3);
        let (table, idx) = (c.path[3], c.t.granule.index(0x1000, 3));
        let slot = c.t.mem.table_ptr(table) as usize + idx * 8;
        let done = core::sync::atomic::AtomicBool::new(false);
        std::thread::scope(|sc| {
            // SAFETY: the entry lives in `mem`, which outlives the scope.
            sc.spawn(|| unsafe { fake_mmu(slot, &done) });
            let mut n = 0u64;
            while !done.load(Ordering::Acquire) || n < 1000 {
                let (set, clear) = if n.is_multiple_of(2) { (1 << 7, 0) } else { (0, 1 << 7) };
                c.update(set, clear).unwrap();
                n += 1;
            }
        });
        let d = c.query();
        for b in MMU_BITS {
            assert_ne!(d.0 & b, 0, "bit {} set by the other writer was lost: {:#x}", b.trailing_zeros(), d.0);
        }
        let _ = c.finish();
        crate::mm::desc::set_hw_af(false);
    }
    /// [`PteRun::modify_from`] starts from the caller's earlier load. With
    /// hardware updates on, a value that went stale because the "MMU" (a
    /// second thread) set bits since must make the compare-and-swap fail and
    /// `f` rerun on the current value, so no bit it set is lost; storing
    /// `f(seen)` as the no-hardware path does loses them (this test then
    /// fails). [`PteRun::set_wrprotect_from`] likewise keeps them, and moves
    /// hardware dirtiness to the software dirty bit.
    #[test]
    fn pte_run_cas_from_a_stale_value_keeps_the_mmu_bits() {
        let _hw = HW_FLAGS.lock().unwrap_or_else(|e| e.into_inner());
        crate::mm::desc::set_hw_af(true);
        let (mut mem, root) = HostMem::new(K4);
        let mut t = Tables::new(root, K4, 0, &mut mem);
        map_ident(&mut t, 0x1000, 2 * 4096, LeafSizes::PagesOnly);
        let (table, idx) =
            CursorMut::new(excl(), &mut t, Stage1Kernel, &mut Rec::default()).slot(VirtAddr::new(0x1000), 3).unwrap();
        let mm = crate::mm::mm_struct::MmStruct::new(root, 1);
        let ptl = mm.page_table_lock_guard();
        // SAFETY: `root` is a table page of `mem` that stays one while `ptl` is held.
        let run = unsafe { Pte::locate(&ptl, &*t.mem, root, 0) }.unwrap();
        // SAFETY: as above; `table` is a table of the tables rooted at `root`.
        let run = unsafe { run.locate_in(&*t.mem, table, idx) }.run(2);
        assert!(run.hw, "located with hardware updates on");
        let slot = run.pte(0).slot as usize;
        let done = core::sync::atomic::AtomicBool::new(false);
        let mut seen = run.get(0);
        std::thread::scope(|sc| {
            // SAFETY: the entry lives in `mem`, which outlives the scope.
            sc.spawn(|| unsafe { fake_mmu(slot, &done) });
            let mut n = 0u64;
            while !done.load(Ordering::Acquire) || n < 1000 {
                let flip = |d: Desc| Desc(d.0 ^ (1 << 7));
                // `seen` is what this side stored last: stale once the other side wrote.
                seen = run.modify_from(0, seen, flip).unwrap().1;
                n += 1;
            }
        });
        let d = run.get(0);
        for b in MMU_BITS {
            assert_ne!(d.0 & b, 0, "bit {} set by the other writer was lost: {:#x}", b.trailing_zeros(), d.0);
        }
        // The same, deterministic: the access flag set after the caller's load.
        let p0 = run.pte(0);
        p0.slot().store(d.0 & !(1 << 10), Ordering::Release);
        let before = p0.get();
        p0.slot().fetch_or(1 << 10, Ordering::AcqRel);
        let (old, new) = run.modify_from(0, before, |d| Desc(d.0 ^ (1 << 7))).unwrap();
        assert_eq!(old.0, before.0 | (1 << 10), "the CAS replaced the current value, not the stale one");
        assert_eq!((new.0, p0.get().0), (old.0 ^ (1 << 7), old.0 ^ (1 << 7)), "the access flag the MMU set is kept");
        let d = p0.get();
        assert!(
            matches!(run.modify_from(0, d, |d| Desc(d.0 ^ (1 << 12))), Err(MapError::NotPermissionBits(_))),
            "an output-address change is refused"
        );
        // Entry 1: hardware-dirty (DBM, AP[2] clear), then wrprotected from
        // a value read before the MMU set a bit.
        let p1 = run.pte(1);
        let stale = Desc((p1.get().0 | (1 << 51)) & !(1 << 7));
        p1.slot().store(stale.0, Ordering::Release);
        p1.slot().fetch_or(1 << 56, Ordering::AcqRel);
        let (old, new) = run.set_wrprotect_from(1, stale);
        assert_eq!(old.0, stale.0 | (1 << 56), "the CAS replaced the current value, not the stale one");
        assert_eq!(new, run.get(1));
        assert!(new.0 & (1 << 56) != 0 && new.0 & (1 << 55) != 0, "the MMU's bit kept, dirtiness moved: {:#x}", new.0);
        assert!(new.0 & (1 << 7) != 0 && new.0 & (1 << 51) == 0, "read-only, no DBM: {:#x}", new.0);
        crate::mm::desc::set_hw_af(false);
    }

    /// The level-3 entry for `va` in the tables at `root`, creating tables
    /// on the way through [`Pte::set_new`]: the walk the fault path makes,
    /// in any regime.
    fn pte_walk<'l, R: Regime>(
        lock: &'l impl PgtableLock<R>,
        mem: &mut HostMem,
        root: PhysAddr,
        va: u64,
    ) -> Pte<'l, R> {
        // SAFETY: `root` is a table page of `mem`.
        let mut e = unsafe { Pte::locate(lock, &*mem, root, K4.index(va, 0)) }.unwrap();
        for l in 1..=3 {
            let next = match e.get().kind(l - 1, K4) {
                Kind::Table(t) => t,
                Kind::None => {
                    let t = mem.alloc_table().unwrap();
                    e.set_new(Desc::table(t)).unwrap();
                    t
                }
                k => panic!("{k:?} at level {}", l - 1),
            };
            // SAFETY: `next` is a table of these tables, reached under the lock.
            e = unsafe { e.locate_in(&*mem, next, K4.index(va, l)) };
        }
        e
    }

    /// Stage 2 through the hot-path API, unchanged: [`Pte`] maps into
    /// holes, [`PteRun::set_wrprotect_from`] clears S2AP's write bit by
    /// compare-and-swap from a stale value, keeping the access flag the
    /// "MMU" set after it and moving stage-2 hardware dirtiness (DBM with
    /// S2AP W set) to the software dirty bit, [`Pte::modify`] refuses a
    /// MemAttr change (not a stage-2 permission bit), and
    /// [`Pte::clear_flush`] records a flush by IPA and VMID. With
    /// `Stage2::wrprotect` using stage 1's rule (setting bit 7, which is
    /// stage 2's *write* permission) the read-only checks fail.
    #[test]
    fn stage2_through_pte_and_pte_run() {
        let _hw = HW_FLAGS.lock().unwrap_or_else(|e| e.into_inner());
        crate::mm::desc::set_hw_af(true);
        let (mut mem, root) = HostMem::new(K4);
        // SAFETY: the tables are this test's own.
        let excl = unsafe { ExclusiveTables::new() };
        let rw = S2Attrs { read: true, write: true, xn: true, normal: true };
        let mut rec = S2Rec::default();
        let s2 = Stage2 { vmid: 9 };
        for i in 0..2u64 {
            let e = pte_walk::<Stage2>(&excl, &mut mem, root, 0x8000_0000 + i * 4096);
            e.set_new(rw.leaf(PhysAddr::new(0x4000_0000 + i * 4096), 3)).unwrap();
        }
        let e0 = pte_walk::<Stage2>(&excl, &mut mem, root, 0x8000_0000);
        let run = e0.run(2);
        // Entry 1 hardware-dirty (DBM, S2AP W), loaded without AF; the MMU sets AF after the load.
        let stale = Desc((run.get(1).0 | crate::mm::desc::DBM_BIT) & !(1 << 10));
        run.pte(1).slot().store(stale.0, Ordering::Release);
        run.pte(1).slot().fetch_or(1 << 10, Ordering::AcqRel);
        let (old, new) = run.set_wrprotect_from(1, stale);
        assert_eq!(old.0, stale.0 | (1 << 10), "the CAS replaced the current value");
        assert_eq!(new, run.get(1));
        assert_ne!(new.0 & (1 << 10), 0, "the access flag the MMU set is kept: {:#x}", new.0);
        assert_eq!(new.0 & (S2Attrs::S2AP_W | crate::mm::desc::DBM_BIT), 0, "stage-2 read-only: {:#x}", new.0);
        assert_ne!(new.0 & S2Attrs::S2AP_R, 0, "still readable: {:#x}", new.0);
        assert_ne!(new.0 & crate::mm::desc::SW_DIRTY_BIT, 0, "hardware dirtiness kept: {:#x}", new.0);
        // A clean entry write-protected stays clean.
        let (_, clean) = e0.set_wrprotect();
        assert_eq!(clean.0 & (S2Attrs::S2AP_W | crate::mm::desc::SW_DIRTY_BIT), 0, "{:#x}", clean.0);
        // MemAttr is no stage-2 permission bit.
        assert!(matches!(e0.modify(|d| Desc(d.0 ^ (1 << 5))), Err(MapError::NotPermissionBits(_))));
        assert!(matches!(e0.update(1 << 5, 0), Err(MapError::NotPermissionBits(_))));
        // Break and flush: by IPA and VMID.
        let old = e0.clear_flush(&s2, &mut rec, VirtAddr::new(0x8000_0000), 4096).unwrap();
        assert_eq!(old.kind(3, K4), Kind::Leaf(PhysAddr::new(0x4000_0000)));
        assert_eq!(rec.flushes, vec![(0x8000_0000, 4096, 9, true)]);
        e0.set_new(rw.leaf(PhysAddr::new(0x4100_0000), 3)).unwrap();
        let t = Tables::new(root, K4, 0, &mut mem);
        assert_eq!(level_at(&t, 0x8000_0000), Some((3, 0x4100_0000)));
        assert_eq!(level_at(&t, 0x8000_1000), Some((3, 0x4000_1000)));
        crate::mm::desc::set_hw_af(false);
    }

    /// The pending-break record ([`PendingBreaks`]) across calls: a
    /// `get_and_clear` of a valid entry, then `set_new` or `replace` on it
    /// with no flush between, is refused as a [`MapError::BbmViolation`]
    /// (counted) and leaves the entry invalid; after the regime's flush
    /// through [`PteRun::flush`] the same make goes in. A flush of another
    /// entry does not clear the record. Without the `covers` check in
    /// `set_new` (or without `note` in `get_and_clear`) the first make
    /// goes in and this test fails.
    #[test]
    fn make_over_a_broken_unflushed_entry_is_refused() {
        let (mut mem, root) = HostMem::new(K4);
        let mm = crate::mm::mm_struct::MmStruct::new(root, 3);
        let ptl = mm.page_table_lock_guard();
        let leaf = |pa: u64| Desc(pa | 0b11 | (1 << 10) | (1 << 6) | (1 << 11));
        let a = pte_walk(&ptl, &mut mem, root, 0x40_0000);
        let b = pte_walk(&ptl, &mut mem, root, 0x40_1000);
        a.set_new(leaf(0x5000_0000)).unwrap();
        b.set_new(leaf(0x5000_1000)).unwrap();
        let mut rec = Rec::default();
        let user = Stage1User { asid: 3 };
        assert!(ptl.pending_breaks().is_empty());
        let old = a.get_and_clear();
        assert!(old.is_valid() && !ptl.pending_breaks().is_empty());
        let v0 = BBM_VIOLATIONS.load(Ordering::Relaxed);
        // A `Pte` knows its slot, not its address: the error claims neither.
        let r = a.set_new(leaf(0x6000_0000));
        assert_eq!(r, Err(MapError::BbmViolation { va: None, level: None }));
        assert!(BBM_VIOLATIONS.load(Ordering::Relaxed) > v0, "counted");
        assert_eq!(a.get(), Desc(0), "the refused make left the entry invalid");
        // `replace` finds the entry invalid, so its own flush would not happen: refused.
        let r = a.replace(leaf(0x6000_0000), &user, &mut rec, VirtAddr::new(0x40_0000), 4096);
        assert_eq!(r, Err(MapError::BbmViolation { va: Some(VirtAddr::new(0x40_0000)), level: Some(3) }));
        assert!(rec.flushes.is_empty());
        // Another entry's flush leaves `a` recorded.
        b.flush(&user, &mut rec, VirtAddr::new(0x40_1000), 4096);
        assert!(matches!(a.set_new(leaf(0x6000_0000)), Err(MapError::BbmViolation { .. })));
        // The flush that covers it: the make goes in.
        a.flush(&user, &mut rec, VirtAddr::new(0x40_0000), 4096);
        assert_eq!(rec.flushes.last(), Some(&(0x40_0000, 4096, Some(3), true)));
        assert!(ptl.pending_breaks().is_empty());
        a.set_new(leaf(0x6000_0000)).unwrap();
        // Invalid entries cleared are no breaks; a replace of a valid one flushes itself.
        let mut seen = vec![];
        a.run(1).get_and_clear_each(|i, d| seen.push((i, d)));
        assert_eq!(seen, vec![(0, leaf(0x6000_0000))]);
        assert!(matches!(a.set_new(leaf(0x6000_0000)), Err(MapError::BbmViolation { .. })));
        a.run(1).flush(&user, &mut rec, VirtAddr::new(0x40_0000), 4096);
        a.set_new(leaf(0x6000_0000)).unwrap();
        b.replace(leaf(0x6000_1000), &user, &mut rec, VirtAddr::new(0x40_1000), 4096).unwrap();
        assert_eq!(b.get(), leaf(0x6000_1000));
        // An error for a 2M entry names level 2 (from the size it flushes).
        b.get_and_clear();
        let r = b.replace(leaf(0x6000_1000), &user, &mut rec, VirtAddr::new(0x40_0000), 2 << 20);
        assert_eq!(r, Err(MapError::BbmViolation { va: Some(VirtAddr::new(0x40_0000)), level: Some(2) }));
    }

    /// A lock is proof only for its own tables: another mm's page-table
    /// lock is refused by [`Pte::locate`] ([`MapError::WrongLock`]), and
    /// the mm's own goes through. Without the root compare in `locate` the
    /// first `locate` succeeds and this test fails.
    #[test]
    fn another_mms_lock_is_refused_by_pte_locate() {
        let (mut mem, root) = HostMem::new(K4);
        let other_root = mem.alloc_table().unwrap();
        let mm = crate::mm::mm_struct::MmStruct::new(root, 1);
        let other = crate::mm::mm_struct::MmStruct::new(other_root, 2);
        let wrong = other.page_table_lock_guard();
        // SAFETY: `root` is a table page of `mem`.
        let r = unsafe { Pte::<Stage1User>::locate(&wrong, &mem, root, 0) };
        assert!(matches!(r, Err(MapError::WrongLock { root: r }) if r == root), "{:?}", r.err());
        let right = mm.page_table_lock_guard();
        // SAFETY: as above.
        assert!(unsafe { Pte::<Stage1User>::locate(&right, &mem, root, 0) }.is_ok());
    }

    /// [`CursorMut::new`] refuses another mm's page-table lock before any
    /// edit. Without the root compare the cursor is built and the test
    /// fails (no panic).
    #[test]
    #[should_panic(expected = "the lock guards the tables")]
    fn another_mms_lock_is_refused_by_cursor_mut_new() {
        let (mut mem, root) = HostMem::new(K4);
        let other_root = mem.alloc_table().unwrap();
        let other = crate::mm::mm_struct::MmStruct::new(other_root, 2);
        let wrong = other.page_table_lock_guard();
        let mut t = Tables::new(root, K4, 0, &mut mem);
        let mut rec = Rec::default();
        let _ = CursorMut::new(&wrong, &mut t, Stage1User { asid: 1 }, &mut rec);
    }

    /// One record for the lock: a break made through a [`Pte`] refuses a
    /// [`CursorMut`]'s make there, a cursor's break refuses a `Pte`'s make,
    /// a cursor's flush empties the record when it holds only that
    /// cursor's breaks, and leaves it when a `Pte`'s break is in it. With
    /// the cursor keeping its own list only (not the lock's record), the
    /// first two refusals do not happen and this test fails (checked).
    #[test]
    fn cursor_mut_and_pte_share_the_lock_record() {
        let (mut mem, root) = HostMem::new(K4);
        let mm = crate::mm::mm_struct::MmStruct::new(root, 3);
        let ptl = mm.page_table_lock_guard();
        let leaf = |pa: u64| Desc(pa | 0b11 | (1 << 10) | (1 << 6) | (1 << 11));
        let a = pte_walk(&ptl, &mut mem, root, 0x40_0000);
        let b = pte_walk(&ptl, &mut mem, root, 0x40_1000);
        a.set_new(leaf(0x5000_0000)).unwrap();
        b.set_new(leaf(0x5000_1000)).unwrap();
        let mut t = Tables::new(root, K4, 0, &mut mem);
        let mut rec = Rec::default();
        let user = Stage1User { asid: 3 };
        let mut c = CursorMut::new(&ptl, &mut t, user, &mut rec);
        // A Pte's break, the cursor's make.
        assert!(a.get_and_clear().is_valid());
        let r = c.set_leaf(VirtAddr::new(0x40_0000), 3, leaf(0x6000_0000));
        assert!(matches!(r, Err(MapError::BbmViolation { .. })), "{r:?}");
        // The cursor's break, a Pte's make.
        c.jump(VirtAddr::new(0x40_1000), 3);
        assert!(c.get_and_clear().is_valid());
        assert!(matches!(b.set_new(leaf(0x6000_1000)), Err(MapError::BbmViolation { .. })));
        // The cursor's flush covers its own break only: the Pte's stays.
        c.sync();
        assert!(matches!(a.set_new(leaf(0x6000_0000)), Err(MapError::BbmViolation { .. })));
        user.flush(&mut Rec::default(), VirtAddr::new(0x40_0000), 0x2000, true);
        a.run(2).flush(&user, &mut Rec::default(), VirtAddr::new(0x40_0000), 0x2000);
        assert!(ptl.pending_breaks().is_empty());
        // The cursor's breaks alone: its flush empties the record.
        c.jump(VirtAddr::new(0x40_1000), 3);
        let _ = c.set_leaf(VirtAddr::new(0x40_1000), 3, leaf(0x6000_1000)).unwrap();
        assert!(c.get_and_clear().is_valid());
        assert!(matches!(b.set_new(leaf(0x6000_1000)), Err(MapError::BbmViolation { .. })));
        c.sync();
        assert!(ptl.pending_breaks().is_empty(), "the cursor's flush emptied its record");
        b.set_new(leaf(0x6000_1000)).unwrap();
        a.set_new(leaf(0x6000_0000)).unwrap();
        assert!(c.finish().0.is_empty());
    }

    /// A run whose entries held nothing valid (a swap entry) breaks
    /// nothing: the record stays empty and a make there goes in. Recording
    /// the run whatever it held (checked) fails this test.
    #[test]
    fn clearing_invalid_entries_records_no_break() {
        let (mut mem, root) = HostMem::new(K4);
        let mm = crate::mm::mm_struct::MmStruct::new(root, 3);
        let ptl = mm.page_table_lock_guard();
        let a = pte_walk(&ptl, &mut mem, root, 0x40_0000);
        a.set_new(Desc(0x1234_0000)).unwrap();
        let mut seen = vec![];
        a.run(4).get_and_clear_each(|i, d| seen.push((i, d)));
        assert_eq!(seen, vec![(0, Desc(0x1234_0000))]);
        assert!(ptl.pending_breaks().is_empty());
        a.set_new(Desc(0x5000_0000 | 0b11 | (1 << 10))).unwrap();
    }

    /// Breaks in two table pages do not cover a third table lying
    /// physically between them: a make there goes in; a flush of one
    /// table's run empties that table's span only; breaks in a third page
    /// cover everything until the record is cleared. With one span of slot
    /// addresses over all tables (checked) the make between is refused.
    #[test]
    fn breaks_in_two_tables_do_not_cover_a_table_between() {
        let (mut mem, root) = HostMem::new(K4);
        let mm = crate::mm::mm_struct::MmStruct::new(root, 3);
        let ptl = mm.page_table_lock_guard();
        let leaf = |pa: u64| Desc(pa | 0b11 | (1 << 10));
        let mut e: Vec<(u64, Pte<'_>)> =
            [0x40_0000u64, 0x60_0000, 0x80_0000].iter().map(|&va| (va, pte_walk(&ptl, &mut mem, root, va))).collect();
        e.sort_by_key(|(_, p)| p.slot as usize);
        let [(lo_va, lo), (_, mid), (hi_va, hi)] = [e[0], e[1], e[2]];
        for p in [lo, hi, lo.sibling(1), hi.sibling(1)] {
            p.set_new(leaf(0x5000_0000)).unwrap();
            assert!(p.get_and_clear().is_valid());
        }
        mid.set_new(leaf(0x5000_0000)).unwrap();
        assert!(matches!(lo.set_new(leaf(0x6000_0000)), Err(MapError::BbmViolation { .. })));
        assert!(matches!(hi.sibling(1).set_new(leaf(0x6000_0000)), Err(MapError::BbmViolation { .. })));
        let user = Stage1User { asid: 3 };
        lo.run(2).flush(&user, &mut Rec::default(), VirtAddr::new(lo_va), 0x2000);
        lo.set_new(leaf(0x6000_0000)).unwrap();
        assert!(matches!(hi.set_new(leaf(0x6000_0000)), Err(MapError::BbmViolation { .. })));
        hi.run(2).flush(&user, &mut Rec::default(), VirtAddr::new(hi_va), 0x2000);
        assert!(ptl.pending_breaks().is_empty());
        // Three table pages: everything is covered until a full flush.
        hi.set_new(leaf(0x6000_0000)).unwrap();
        for p in [lo, mid, hi] {
            assert!(p.get_and_clear().is_valid());
        }
        assert!(matches!(hi.set_new(leaf(0x6000_0000)), Err(MapError::BbmViolation { .. })));
        assert!(matches!(lo.sibling(7).set_new(leaf(0x6000_0000)), Err(MapError::BbmViolation { .. })));
        ptl.pending_breaks().clear();
        lo.sibling(7).set_new(leaf(0x6000_0000)).unwrap();
    }

    /// Host tables whose "MMU" sets AF and lets a write through (clears
    /// AP[2] of a DBM entry) on the `at`-th table access after arming, if
    /// `target` and the entry `gate` (the one the walk goes through) are
    /// valid then: a hardware update landing at every point of an edit.
    struct MmuAt {
        mem: HostMem,
        calls: core::cell::Cell<usize>,
        at: core::cell::Cell<usize>,
        target: core::cell::Cell<usize>,
        gate: core::cell::Cell<usize>,
        fired: core::cell::Cell<bool>,
    }
    // SAFETY: `HostMem`'s.
    unsafe impl TableMemory for MmuAt {
        fn alloc_table(&mut self) -> Option<PhysAddr> {
            self.mem.alloc_table()
        }
        fn table_ptr(&self, pa: PhysAddr) -> *const AtomicU64 {
            let n = self.calls.get() + 1;
            self.calls.set(n);
            if n == self.at.get() && self.target.get() != 0 {
                // SAFETY: both are slots of `mem`'s tables, set by the test.
                let (e, g) =
                    unsafe { (&*(self.target.get() as *const AtomicU64), &*(self.gate.get() as *const AtomicU64)) };
                if e.load(Ordering::Relaxed) & 1 != 0 && g.load(Ordering::Relaxed) & 1 != 0 {
                    e.fetch_or(AF, Ordering::AcqRel);
                    e.fetch_and(!AP2, Ordering::AcqRel);
                    self.fired.set(true);
                }
            }
            self.mem.table_ptr(pa)
        }
    }

    /// `replace` (a live-safe permission change), `split`,
    /// `split_contiguous`, `make_contiguous` and `collapse` of clean, old
    /// DBM entries, with the "MMU" ([`MmuAt`]) setting AF and dirty at
    /// each table access of the edit in turn: whenever it did, the entries
    /// the edit leaves are young and dirty. Building them from a value
    /// read before the break (`split` and the contiguous edits), storing
    /// `replace`'s new value with a plain store, or building the collapsed
    /// block without the children's final bits (each checked) loses the
    /// update at some access and fails this test.
    #[test]
    fn edits_keep_an_mmu_update_made_after_their_read() {
        let _hw = HW_FLAGS.lock().unwrap_or_else(|e| e.into_inner());
        crate::mm::desc::set_hw_af(true);
        let young_dirty = |d: Desc| d.0 & AF != 0 && d.0 & (DBM | AP2) == DBM;
        type Op = fn(&mut CursorMut<'_, '_, Stage1Kernel, MmuAt>, VirtAddr) -> Result<(), MapError>;
        // (name, mapping size, leaf sizes, make the run contiguous first,
        //  target level, the edit, level of the entry checked after)
        let cases: [(&str, u64, LeafSizes, bool, u32, Op, u32); 5] = [
            (
                "replace",
                0x1000,
                LeafSizes::PagesOnly,
                false,
                3,
                |c, va| {
                    let (table, idx) = c.slot(va, 3)?;
                    let cur = c.t.read(table, idx);
                    c.replace(va, 3, Desc(((cur.0 & !AF) | AP2) ^ (1 << 53)))
                },
                3,
            ),
            ("split", 2 * MIB, LeafSizes::Largest, false, 2, |c, va| c.split(va, 2), 3),
            ("split_contiguous", 0x10000, LeafSizes::PagesOnly, true, 3, |c, va| c.split_contiguous(va, 3), 3),
            ("make_contiguous", 0x10000, LeafSizes::PagesOnly, false, 3, |c, va| c.make_contiguous(va, 3), 3),
            ("collapse", 2 * MIB, LeafSizes::PagesOnly, false, 3, |c, va| c.collapse(va, 2), 2),
        ];
        let va = VirtAddr::new(0x4000_0000);
        for (name, size, sizes, cont, tl, op, check_level) in cases {
            let mut fired = 0;
            for at in 1.. {
                let (hm, root) = HostMem::new(K4);
                let mut m = MmuAt {
                    mem: hm,
                    calls: Default::default(),
                    at: Default::default(),
                    target: Default::default(),
                    gate: Default::default(),
                    fired: Default::default(),
                };
                let mut t = Tables::new(root, K4, 0, &mut m);
                let mut rec = Rec::default();
                let mut c = CursorMut::new(excl(), &mut t, Stage1Kernel, &mut rec);
                c.map(va, PhysAddr::new(0x8000_0000), size, LeafAttrs::KERNEL_RW, sizes).unwrap();
                // Clean (AP[2] set, DBM) and old (no AF).
                c.protect(va, size, DBM | AP2, AF).unwrap();
                if cont {
                    c.make_contiguous(va, 3).unwrap();
                }
                c.sync();
                // The target: the 6th entry (or the block), reached through `gate`.
                let tva = if tl == 3 && size > 0x1000 { va + 5 * 0x1000 } else { va };
                let (table, idx) = c.slot(tva, tl).unwrap();
                let (gt, gi) = c.slot(tva, tl - 1).unwrap();
                let gate = if tl == 3 && check_level == 2 { c.slot_addr(gt, gi) } else { c.slot_addr(table, idx) };
                let target = c.slot_addr(table, idx);
                let mm = &c.t.mem;
                mm.target.set(target);
                mm.gate.set(gate);
                mm.calls.set(0);
                mm.at.set(at);
                let r = op(&mut c, va);
                let mm = &c.t.mem;
                let (done, hit) = (mm.calls.get() >= at, mm.fired.get());
                // An update before the checks of a fold makes the run mixed:
                // refused, with the entry left as the MMU wrote it.
                let refused = matches!(r, Err(MapError::NotContiguous { .. } | MapError::NotCollapsible { .. }));
                if refused && hit {
                    c.jump(tva, tl);
                    assert!(young_dirty(c.query()), "{name}: refused at access {at}, entry {:?}", c.query());
                    fired += 1;
                    continue;
                }
                r.unwrap_or_else(|e| panic!("{name} at access {at}: {e:?}"));
                mm.target.set(0);
                c.sync();
                if !done {
                    break;
                }
                if hit {
                    fired += 1;
                    assert_eq!(c.jump(tva, check_level), check_level);
                    let d = c.query();
                    assert!(young_dirty(d), "{name}: the MMU's update at access {at} lost: {d:?}");
                }
                let _ = c.finish();
            }
            assert!(fired > 0, "{name}: the MMU never updated the entry");
        }
        crate::mm::desc::set_hw_af(false);
    }
}
