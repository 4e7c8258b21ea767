//! Address spaces and the locks that guard their tables.
//!
//! [`MmStruct`] is the `mm_struct` of a user address space: its TTBR0 root,
//! its ASID and its VMAs behind the mmap lock. Holding the lock is proved by
//! holding a guard: [`MmapReadGuard`] or [`MmapWriteGuard`]. Code that needs
//! a particular lock takes the guard type as a parameter, so calling it with
//! the wrong lock does not compile (see [`crate::mm::walk`]).
//!
//! [`KernelPgtable`] plays the same role for the kernel's TTBR1 tables
//! (Linux uses `init_mm`'s mmap lock for this).

use alloc::vec::Vec;
use core::ops::{Deref, DerefMut};

use spin::{RwLock, RwLockReadGuard, RwLockWriteGuard};

use super::addr::{PhysAddr, VirtAddr};
use super::pgtable::PendingBreaks;

bitflags_lite! {
    /// VMA flags (Linux `VM_*`), the subset pagelab uses. `PFN_MKWRITE`
    /// and `FSDAX` stand in for `vma->vm_ops->pfn_mkwrite` being set and
    /// for `vma_is_fsdax()`, which `vm_mixed_zeropage_allowed` asks about.
    /// `NORESERVE` is Linux `VM_NORESERVE` (`MAP_NORESERVE`: no overcommit
    /// check) at bit 22, as FSDAX has its bit 21. `UFFD_WP` is Linux
    /// `VM_UFFD_WP` (registered for userfaultfd write-protect).
    pub struct VmFlags: u32 {
        const READ = 1 << 0;
        const WRITE = 1 << 1;
        const EXEC = 1 << 2;
        const SHARED = 1 << 3;
        const MAYWRITE = 1 << 5;
        const IO = 1 << 14;
        const PFNMAP = 1 << 10;
        const MIXEDMAP = 1 << 28;
        const HUGEPAGE = 1 << 29;
        const NOHUGEPAGE = 1 << 30;
        const PFN_MKWRITE = 1 << 20;
        const FSDAX = 1 << 21;
        const NORESERVE = 1 << 22;
        const UFFD_WP = 1 << 12;
    }
}

/// A minimal `bitflags`-style newtype (no extra dependency).
macro_rules! bitflags_lite {
    ($(#[$m:meta])* pub struct $name:ident: $t:ty { $(const $f:ident = $v:expr;)* }) => {
        $(#[$m])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
        pub struct $name(pub $t);
        impl $name {
            $(pub const $f: $name = $name($v);)*
            /// Every flag with its name, in declaration order.
            pub const NAMES: &[(&str, $name)] = &[$((stringify!($f), $name($v)),)*];
            pub const fn contains(self, o: $name) -> bool { self.0 & o.0 == o.0 }
            pub const fn union(self, o: $name) -> $name { $name(self.0 | o.0) }
        }
        impl core::ops::BitOr for $name {
            type Output = $name;
            fn bitor(self, o: $name) -> $name { self.union(o) }
        }
    };
}
use bitflags_lite;

/// `READ|WRITE|MAYWRITE`: the set flags by name, lowest bit first, unknown
/// bits as one hex number, `none` if empty (gdb/pagelab.py prints the same).
impl core::fmt::Display for VmFlags {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        let mut rest = self.0;
        let mut sep = "";
        for bit in 0..32 {
            let b = 1u32 << bit;
            if self.0 & b == 0 {
                continue;
            }
            if let Some((name, _)) = Self::NAMES.iter().find(|(_, v)| v.0 == b) {
                write!(f, "{sep}{name}")?;
                sep = "|";
                rest &= !b;
            }
        }
        if rest != 0 {
            write!(f, "{sep}{rest:#x}")?;
        } else if self.0 == 0 {
            f.write_str("none")?;
        }
        Ok(())
    }
}

/// A size the way ptdump prints one: `4K`, `2M`, `68K`, `100`.
pub fn size_str(size: u64) -> impl core::fmt::Display {
    const UNITS: [&str; 5] = ["", "K", "M", "G", "T"];
    let (mut s, mut u) = (size, 0);
    while s >= 1024 && s % 1024 == 0 && u < UNITS.len() - 1 {
        s /= 1024;
        u += 1;
    }
    struct S(u64, &'static str);
    impl core::fmt::Display for S {
        fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
            f.pad(&alloc::format!("{}{}", self.0, self.1))
        }
    }
    S(s, UNITS[u])
}

/// A virtual memory area: `[start, end)` with flags.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Vma {
    pub start: VirtAddr,
    pub end: VirtAddr,
    pub flags: VmFlags,
    /// Largest folio order anonymous faults may allocate here (the
    /// mapping's `thp=SIZE`; 0 = base pages only).
    pub folio_order: u8,
    /// The shmem file it maps (`mm::shmem` id; 0: none, anonymous or PFN
    /// memory), Linux `vm_file`.
    pub file: u32,
    /// The file page mapped at `start` (Linux `vm_pgoff`).
    pub pgoff: u64,
    /// Its anonymous folios' reverse-mapping anchor (Linux `vma->anon_vma`,
    /// `mm::rmap` id; 0: none). fork's copy shares it, so every mm of the
    /// fork tree that may map such a folio is listed under one id.
    pub anon_vma: u32,
}

impl Vma {
    /// One line of `P maps` (and of gdb's `pl-vmas`, which must print the
    /// same): `START-END PERM SIZE folio FOLIO FLAGS [file ID pgoff N]`,
    /// PERM as /proc/PID/maps (`rw-p`, `r--s`).
    pub fn maps_line(&self, page_size: u64) -> impl core::fmt::Display + '_ {
        struct L<'a>(&'a Vma, u64);
        impl core::fmt::Display for L<'_> {
            fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
                let (v, fl) = (self.0, self.0.flags);
                let c = |flag: VmFlags, ch: char| if fl.contains(flag) { ch } else { '-' };
                write!(
                    f,
                    "{:#018x}-{:#018x} {}{}{}{} {:>6} folio {:>4} {}",
                    v.start,
                    v.end,
                    c(VmFlags::READ, 'r'),
                    c(VmFlags::WRITE, 'w'),
                    c(VmFlags::EXEC, 'x'),
                    if fl.contains(VmFlags::SHARED) { 's' } else { 'p' },
                    size_str(v.end - v.start),
                    size_str(self.1 << v.folio_order),
                    fl
                )?;
                if v.file != 0 {
                    write!(f, " file {} pgoff {:#x}", v.file, v.pgoff)?;
                }
                Ok(())
            }
        }
        L(self, page_size)
    }

    /// The file page offset of `va` in this VMA.
    pub fn pgoff_of(&self, va: VirtAddr) -> u64 {
        self.pgoff + (va - self.start) / crate::arch::aarch64::granule::PAGE_SIZE
    }
}

/// A VMA of the mm `owner` (its pgd) appeared: its file counts one more
/// VMA, and the reverse map learns that `owner` may map the file's and the
/// anon_vma's folios (Linux `vma_link`'s i_mmap insert, `anon_vma_chain`).
fn vma_link(owner: u64, v: &Vma) {
    #[cfg(target_os = "none")]
    {
        crate::mm::rmap::vma_link(owner, v);
        if v.file != 0 {
            crate::mm::shmem::vma_get(v.file);
        }
    }
    let _ = (owner, v);
}
fn vma_unlink(owner: u64, v: &Vma) {
    #[cfg(target_os = "none")]
    {
        crate::mm::rmap::vma_unlink(owner, v);
        if v.file != 0 {
            crate::mm::shmem::vma_put(v.file);
        }
    }
    let _ = (owner, v);
}

/// Called when the VMA list of an mm changed, with its write lock still
/// held (Linux's notifier idea: mm/ calls out, the listener registers).
pub type VmasChangedHook = fn(&MmStruct, &VmaList);

/// The registered [`VmasChangedHook`]. The process layer sets it before
/// its first process has a VMA, so the debugger's mirror of the VMAs
/// follows every change.
static VMAS_CHANGED_HOOK: spin::Once<VmasChangedHook> = spin::Once::new();

/// Registers the one listener for VMA list changes (the first call wins:
/// there is one debugger mirror).
pub fn set_vmas_changed_hook(hook: VmasChangedHook) {
    VMAS_CHANGED_HOOK.call_once(|| hook);
}

/// The VMA list of `mm` changed (its write lock is still held): the
/// registered listener, if any, follows.
fn vmas_changed(mm: &MmStruct, vmas: &VmaList) {
    if let Some(hook) = VMAS_CHANGED_HOOK.get() {
        hook(mm, vmas);
    }
}

/// The next anon_vma id ([`Vma::anon_vma`]).
static NEXT_ANON_VMA: core::sync::atomic::AtomicU32 = core::sync::atomic::AtomicU32::new(1);

/// The VMAs of an mm, sorted and non-overlapping, and the mm they belong
/// to (its pgd, the reverse map's name for it).
#[derive(Default, Debug)]
pub struct VmaList(Vec<Vma>, u64);

/// Most VMAs an mm may have (Linux `vm.max_map_count`'s default): bounds
/// the kernel memory a process's mappings take.
pub const MAX_MAP_COUNT: usize = 65530;

impl VmaList {
    pub fn iter(&self) -> impl Iterator<Item = &Vma> {
        self.0.iter()
    }
    /// How many VMAs splitting at `start` and `end` would add (0 to 2).
    pub fn splits_needed(&self, start: VirtAddr, end: VirtAddr) -> usize {
        [start, end].iter().filter(|&&a| self.0.iter().any(|v| v.start < a && a < v.end)).count()
    }
    /// Makes room for `n` more VMAs (an insert, or the splits of a range
    /// operation's ends): `out of memory` past [`MAX_MAP_COUNT`] (Linux:
    /// -ENOMEM) or when the heap has no room.
    pub fn try_reserve(&mut self, n: usize) -> Result<(), super::error::MmError> {
        if self.0.len() + n > MAX_MAP_COUNT {
            return Err(super::error::MmError::TooManyMappings);
        }
        super::error::try_reserve(&mut self.0, n)
    }
    /// Inserts `v`; refuses (returns false) if it overlaps an existing VMA.
    pub fn insert(&mut self, mut v: Vma) -> bool {
        if v.start >= v.end || self.0.iter().any(|o| o.start < v.end && v.start < o.end) {
            return false;
        }
        // Linux `anon_vma_prepare`, here at insert rather than at the first
        // fault; fork's copies come with the parent's.
        if v.anon_vma == 0 {
            v.anon_vma = NEXT_ANON_VMA.fetch_add(1, core::sync::atomic::Ordering::Relaxed);
        }
        let pos = self.0.partition_point(|o| o.start < v.start);
        vma_link(self.1, &v);
        self.0.insert(pos, v);
        true
    }
    /// Splits the VMA that strictly contains `addr` into two at `addr`
    /// (Linux `split_vma`). Nothing happens if `addr` is a boundary or in a hole.
    pub fn split_at(&mut self, addr: VirtAddr) {
        if let Some(i) = self.0.iter().position(|v| v.start < addr && addr < v.end) {
            let lo = self.0[i];
            let hi = Vma { start: addr, pgoff: lo.pgoff_of(addr), ..lo };
            vma_link(self.1, &hi);
            self.0[i].end = addr;
            self.0.insert(i + 1, hi);
        }
    }
    /// The VMAs wholly inside `[start, end)` (after splitting at both ends).
    pub fn inside(&self, start: VirtAddr, end: VirtAddr) -> impl Iterator<Item = &Vma> {
        self.0.iter().filter(move |v| v.start >= start && v.end <= end)
    }
    /// Mutable access to the VMAs wholly inside `[start, end)`.
    pub fn inside_mut(&mut self, start: VirtAddr, end: VirtAddr) -> impl Iterator<Item = &mut Vma> {
        self.0.iter_mut().filter(move |v| v.start >= start && v.end <= end)
    }
    /// The VMA containing `addr`, mutable (flags changes under the write lock).
    pub fn find_mut(&mut self, addr: VirtAddr) -> Option<&mut Vma> {
        let i = self.0.partition_point(|o| o.end <= addr);
        self.0.get_mut(i).filter(|v| v.start <= addr)
    }
    /// Removes and returns the VMA that starts at `start`.
    pub fn remove(&mut self, start: VirtAddr) -> Option<Vma> {
        let i = self.0.iter().position(|v| v.start == start)?;
        let v = self.0.remove(i);
        vma_unlink(self.1, &v);
        Some(v)
    }
    /// The VMA containing `addr` (Linux `vma_lookup`).
    pub fn find(&self, addr: VirtAddr) -> Option<&Vma> {
        let i = self.0.partition_point(|o| o.end <= addr);
        self.0.get(i).filter(|v| v.start <= addr)
    }
}

/// A user address space.
pub struct MmStruct {
    /// TTBR0 root table.
    pub pgd: PhysAddr,
    /// `generation << 16 | asid`, managed by the kernel's ASID allocator
    /// (0: none yet).
    pub asid_slot: core::sync::atomic::AtomicU64,
    mmap_lock: RwLock<VmaList>,
    /// Linux's `mm->page_table_lock` (one lock for all levels here): held
    /// while an entry is examined or changed under the mmap read lock.
    pub(crate) page_table_lock: spin::Mutex<()>,
    /// Linux's `mm->write_protect_seq`: odd while fork write-protects this
    /// mm's pages, so lockless GUP-fast can tell it raced with a fork.
    pub write_protect_seq: core::sync::atomic::AtomicU64,
    /// Linux `mm_forbids_zeropage` (s390's per-mm switch; tests set it).
    pub forbid_zeropage: core::sync::atomic::AtomicBool,
    /// Where `do_mmap` looks for room next (Linux's former
    /// `free_area_cache`): mappings go upwards from [`MMAP_BASE`].
    pub free_area: core::sync::atomic::AtomicU64,
    /// The range [`MmStruct::mseal`] sealed: munmap and mprotect refuse to
    /// touch it (Linux `VM_SEALED`).
    sealed: spin::Once<(VirtAddr, VirtAddr)>,
    /// The process's userfaultfd context (Linux `vma->vm_userfaultfd_ctx`;
    /// pagelab has one per mm).
    pub uffd: super::userfaultfd::UffdCtx,
}

/// First address `do_mmap` hands out.
pub const MMAP_BASE: u64 = 0x10_0000_0000;

impl MmStruct {
    pub fn new(pgd: PhysAddr, asid: u16) -> Self {
        Self {
            pgd,
            asid_slot: core::sync::atomic::AtomicU64::new(asid as u64),
            mmap_lock: RwLock::new(VmaList(Vec::new(), pgd.as_u64())),
            page_table_lock: spin::Mutex::new(()),
            write_protect_seq: core::sync::atomic::AtomicU64::new(0),
            forbid_zeropage: core::sync::atomic::AtomicBool::new(false),
            free_area: core::sync::atomic::AtomicU64::new(MMAP_BASE),
            sealed: spin::Once::new(),
            uffd: super::userfaultfd::UffdCtx::new(),
        }
    }
    /// Seals `[start, end)` (Linux `mseal`): its VMAs can no longer be
    /// unmapped or have their protection changed. One range per mm (the
    /// process layer's agent); a second call is ignored.
    pub fn mseal(&self, start: VirtAddr, end: VirtAddr) {
        self.sealed.call_once(|| (start, end));
    }
    /// Whether `[start, end)` overlaps the sealed range.
    pub fn is_sealed(&self, start: VirtAddr, end: VirtAddr) -> bool {
        self.sealed.get().is_some_and(|&(s, e)| s < end && start < e)
    }
    pub fn mmap_read_lock(&self) -> MmapReadGuard<'_> {
        MmapReadGuard { mm: self, vmas: self.mmap_lock.read() }
    }
    /// Linux `mmap_read_trylock`: reclaim walks other address spaces and
    /// skips one whose lock a writer holds rather than wait for it.
    pub fn mmap_read_trylock(&self) -> Option<MmapReadGuard<'_>> {
        self.mmap_lock.try_read().map(|vmas| MmapReadGuard { mm: self, vmas })
    }
    pub fn mmap_write_lock(&self) -> MmapWriteGuard<'_> {
        MmapWriteGuard { mm: self, vmas: self.mmap_lock.write(), changed: false }
    }
    /// The ASID value last handed to this mm (it may belong to an older
    /// generation: good enough for TLBI, which then over-invalidates at worst).
    pub fn asid(&self) -> u16 {
        self.asid_slot.load(core::sync::atomic::Ordering::Relaxed) as u16
    }
    /// Takes the page-table lock (held while installing an entry).
    pub fn page_table_lock_guard(&self) -> PtlGuard<'_> {
        PtlGuard { _lock: self.page_table_lock.lock(), pgd: self.pgd, pending: PendingBreaks::new() }
    }
}

/// The page-table lock held (Linux `pte_offset_map_lock`'s `ptl`): the
/// cursor's entries ([`crate::mm::pgtable::Pte`]) borrow it, so none
/// outlives the lock. It knows its mm's pgd, so the cursor refuses it for
/// another mm's tables, and records the entries broken under it and not
/// flushed yet.
pub struct PtlGuard<'a> {
    _lock: spin::MutexGuard<'a, ()>,
    pgd: PhysAddr,
    pending: PendingBreaks,
}

impl PtlGuard<'_> {
    /// The root table of the mm whose lock this is.
    #[inline(always)]
    pub fn pgd(&self) -> PhysAddr {
        self.pgd
    }
    /// Entries broken under this lock and not flushed yet.
    #[inline(always)]
    pub fn pending_breaks(&self) -> &PendingBreaks {
        &self.pending
    }
}

/// Proof that the mmap lock of [`MmapLocked::mm`] is held (read or write).
pub trait MmapLocked: sealed::Sealed {
    fn mm(&self) -> &MmStruct;
    fn vmas(&self) -> &VmaList;
}

/// The mmap lock held for read.
pub struct MmapReadGuard<'a> {
    mm: &'a MmStruct,
    vmas: RwLockReadGuard<'a, VmaList>,
}

/// The mmap lock held for write. VMAs only ever change through it
/// (`DerefMut`), so releasing it after a mutable borrow is where the
/// debugger's mirror is updated ([`Drop`]); the fault path, which only reads,
/// never pays for that.
pub struct MmapWriteGuard<'a> {
    mm: &'a MmStruct,
    vmas: RwLockWriteGuard<'a, VmaList>,
    /// The list was borrowed mutably (it may have changed).
    changed: bool,
}

impl Drop for MmapWriteGuard<'_> {
    fn drop(&mut self) {
        // Runs before the fields drop: the write lock is still held.
        if self.changed {
            vmas_changed(self.mm, &self.vmas);
        }
    }
}

impl MmapWriteGuard<'_> {
    pub fn mm(&self) -> &MmStruct {
        self.mm
    }
}

impl MmapLocked for MmapReadGuard<'_> {
    fn mm(&self) -> &MmStruct {
        self.mm
    }
    fn vmas(&self) -> &VmaList {
        &self.vmas
    }
}
impl MmapLocked for MmapWriteGuard<'_> {
    fn mm(&self) -> &MmStruct {
        self.mm
    }
    fn vmas(&self) -> &VmaList {
        &self.vmas
    }
}
impl Deref for MmapWriteGuard<'_> {
    type Target = VmaList;
    fn deref(&self) -> &VmaList {
        &self.vmas
    }
}
impl DerefMut for MmapWriteGuard<'_> {
    fn deref_mut(&mut self) -> &mut VmaList {
        self.changed = true;
        &mut self.vmas
    }
}

/// The kernel's tables and their lock (Linux: `init_mm`'s mmap lock).
pub struct KernelPgtable {
    lock: RwLock<PhysAddr>,
}

impl KernelPgtable {
    pub const fn new(root: PhysAddr) -> Self {
        Self { lock: RwLock::new(root) }
    }
    pub fn read(&self) -> KernelPgtableRead<'_> {
        KernelPgtableRead(self.lock.read())
    }
    pub fn write(&self) -> KernelPgtableWrite<'_> {
        KernelPgtableWrite(self.lock.write(), PendingBreaks::new())
    }
}

/// Proof that the kernel tables' lock is held (read or write).
pub trait KernelPgtableLocked: sealed::Sealed {
    fn root(&self) -> PhysAddr;
}
pub struct KernelPgtableRead<'a>(RwLockReadGuard<'a, PhysAddr>);
/// The kernel tables' lock held for write, with the entries broken under
/// it and not flushed yet.
pub struct KernelPgtableWrite<'a>(RwLockWriteGuard<'a, PhysAddr>, PendingBreaks);
impl KernelPgtableLocked for KernelPgtableRead<'_> {
    fn root(&self) -> PhysAddr {
        *self.0
    }
}
impl KernelPgtableLocked for KernelPgtableWrite<'_> {
    fn root(&self) -> PhysAddr {
        *self.0
    }
}
impl KernelPgtableWrite<'_> {
    /// Entries broken under this lock and not flushed yet.
    #[inline(always)]
    pub fn pending_breaks(&self) -> &PendingBreaks {
        &self.1
    }
    pub fn set_root(&mut self, root: PhysAddr) {
        *self.0 = root;
    }
}

/// Only the guards above can be lock proofs.
mod sealed {
    pub trait Sealed {}
    impl Sealed for super::MmapReadGuard<'_> {}
    impl Sealed for super::MmapWriteGuard<'_> {}
    impl Sealed for super::KernelPgtableRead<'_> {}
    impl Sealed for super::KernelPgtableWrite<'_> {}
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Test addresses are written as plain numbers.
    fn va(a: u64) -> VirtAddr {
        VirtAddr::new(a)
    }

    #[test]
    fn max_map_count_and_splits_needed() {
        let mut l = VmaList::default();
        let v = |s: u64| Vma {
            start: VirtAddr::new(s),
            end: VirtAddr::new(s + 0x1000),
            flags: VmFlags::READ,
            folio_order: 0,
            file: 0,
            pgoff: 0,
            anon_vma: 0,
        };
        assert!(l.insert(Vma { end: va(0x4000), ..v(0x1000) }));
        assert_eq!(l.splits_needed(va(0x1000), va(0x4000)), 0, "whole VMA: no split");
        assert_eq!(l.splits_needed(va(0x2000), va(0x4000)), 1);
        assert_eq!(l.splits_needed(va(0x2000), va(0x3000)), 2);
        assert_eq!(l.splits_needed(va(0x8000), va(0x9000)), 0, "a hole");
        for i in 1..MAX_MAP_COUNT as u64 {
            l.try_reserve(1).unwrap();
            assert!(l.insert(v(0x10_0000 + i * 0x2000)));
        }
        assert_eq!(l.iter().count(), MAX_MAP_COUNT);
        assert_eq!(l.try_reserve(1), Err(crate::mm::error::MmError::TooManyMappings));
        assert_eq!(l.try_reserve(0), Ok(()));
        assert_eq!(crate::mm::error::MmError::TooManyMappings.errno(), crate::errno::ENOMEM);
    }

    #[test]
    fn mseal_covers_its_range_only_and_once() {
        let mm = MmStruct::new(PhysAddr::new(0x1000), 1);
        assert!(!mm.is_sealed(va(0), va(u64::MAX)), "nothing is sealed at first");
        mm.mseal(va(0x4000), va(0x8000));
        assert!(
            mm.is_sealed(va(0x7000), va(0x9000))
                && mm.is_sealed(va(0x3000), va(0x5000))
                && mm.is_sealed(va(0), va(u64::MAX))
        );
        assert!(
            !mm.is_sealed(va(0x8000), va(0x9000)) && !mm.is_sealed(va(0x3000), va(0x4000)),
            "the ends are exclusive"
        );
        mm.mseal(va(0x10000), va(0x20000));
        assert!(!mm.is_sealed(va(0x10000), va(0x20000)), "a second seal is ignored");
        assert_eq!(mm.free_area.load(core::sync::atomic::Ordering::Relaxed), MMAP_BASE);
    }

    #[test]
    fn vma_list_keeps_order_and_refuses_overlap() {
        let mm = MmStruct::new(PhysAddr::new(0x1000), 1);
        let mut w = mm.mmap_write_lock();
        assert!(w.insert(Vma {
            start: va(0x3000),
            end: va(0x5000),
            flags: VmFlags::READ,
            folio_order: 0,
            file: 0,
            pgoff: 0,
            anon_vma: 0,
        }));
        assert!(w.insert(Vma {
            start: va(0x1000),
            end: va(0x2000),
            flags: VmFlags::READ | VmFlags::WRITE,
            folio_order: 0,
            file: 0,
            pgoff: 0,
            anon_vma: 0,
        }));
        assert!(
            !w.insert(Vma {
                start: va(0x4000),
                end: va(0x6000),
                flags: VmFlags::READ,
                folio_order: 0,
                file: 0,
                pgoff: 0,
                anon_vma: 0,
            }),
            "overlap"
        );
        assert!(
            !w.insert(Vma {
                start: va(0x7000),
                end: va(0x7000),
                flags: VmFlags::READ,
                folio_order: 0,
                file: 0,
                pgoff: 0,
                anon_vma: 0,
            }),
            "empty"
        );
        assert_eq!(w.find(va(0x1fff)).map(|v| v.start), Some(va(0x1000)));
        assert_eq!(w.find(va(0x2000)), None);
        assert_eq!(w.find(va(0x4000)).map(|v| v.start), Some(va(0x3000)));
        let starts: alloc::vec::Vec<u64> = w.iter().map(|v| v.start.as_u64()).collect();
        assert_eq!(starts, [0x1000, 0x3000]);
        assert!(w.find(va(0x1000)).unwrap().flags.contains(VmFlags::WRITE));
    }

    #[test]
    fn split_vmas() {
        let mm = MmStruct::new(PhysAddr::new(0x1000), 1);
        let mut w = mm.mmap_write_lock();
        w.insert(Vma {
            start: va(0x1000),
            end: va(0x9000),
            flags: VmFlags::READ,
            folio_order: 0,
            file: 0,
            pgoff: 0,
            anon_vma: 0,
        });
        w.split_at(va(0x3000));
        w.split_at(va(0x3000)); // already a boundary
        w.split_at(va(0x20000)); // a hole
        w.split_at(va(0x7000));
        let v: alloc::vec::Vec<(u64, u64)> = w.iter().map(|v| (v.start.as_u64(), v.end.as_u64())).collect();
        assert_eq!(v, [(0x1000, 0x3000), (0x3000, 0x7000), (0x7000, 0x9000)]);
        assert_eq!(w.inside(va(0x3000), va(0x9000)).count(), 2);
        for v in w.inside_mut(va(0x3000), va(0x7000)) {
            v.flags = VmFlags::READ | VmFlags::WRITE;
        }
        assert!(w.find(va(0x3000)).unwrap().flags.contains(VmFlags::WRITE));
        assert!(!w.find(va(0x7000)).unwrap().flags.contains(VmFlags::WRITE));
    }

    #[test]
    fn flag_names_and_maps_lines() {
        extern crate std;
        use std::string::ToString;
        assert_eq!(VmFlags(0).to_string(), "none");
        assert_eq!((VmFlags::WRITE | VmFlags::READ | VmFlags::MAYWRITE).to_string(), "READ|WRITE|MAYWRITE");
        assert_eq!((VmFlags::NOHUGEPAGE | VmFlags::PFNMAP | VmFlags::IO).to_string(), "PFNMAP|IO|NOHUGEPAGE");
        assert_eq!(VmFlags(VmFlags::EXEC.0 | 1 << 31 | 1 << 4).to_string(), "EXEC|0x80000010");
        assert_eq!(size_str(0x11000).to_string(), "68K");
        assert_eq!(alloc::format!("{:>6}|", size_str(1 << 30)), "    1G|");
        let v = Vma {
            start: va(0x10_0000_0000),
            end: va(0x10_0001_0000),
            flags: VmFlags::READ | VmFlags::WRITE | VmFlags::MAYWRITE,
            folio_order: 9,
            file: 0,
            pgoff: 0,
            anon_vma: 0,
        };
        assert_eq!(
            v.maps_line(4096).to_string(),
            "0x0000001000000000-0x0000001000010000 rw-p    64K folio   2M READ|WRITE|MAYWRITE"
        );
        let s = Vma { flags: VmFlags::READ | VmFlags::SHARED, folio_order: 0, file: 3, pgoff: 2, ..v };
        assert_eq!(
            s.maps_line(16384).to_string(),
            "0x0000001000000000-0x0000001000010000 r--s    64K folio  16K READ|SHARED file 3 pgoff 0x2"
        );
    }

    #[test]
    fn readers_share_writers_exclude() {
        let mm = MmStruct::new(PhysAddr::new(0x1000), 1);
        let r1 = mm.mmap_read_lock();
        let r2 = mm.mmap_read_lock();
        assert!(mm.mmap_lock.try_write().is_none());
        drop((r1, r2));
        let _w = mm.mmap_write_lock();
        assert!(mm.mmap_lock.try_read().is_none());
    }
}
