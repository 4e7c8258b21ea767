//! Why a memory-management operation failed (mmap, munmap, mprotect,
//! madvise, fork's copy, splits), with the errno Linux returns for it.
//!
//! The texts use the scenario language's words where they apply (`out of
//! memory`, `not aligned`, `not mapped`, `out of range`), so scripts can
//! expect them with `!"TEXT"`; system calls take [`MmError::errno`].

use core::fmt;

use super::addr::{PhysAddr, VirtAddr};
use super::pgtable::MapError;
use crate::errno::{EAGAIN, EBADF, EBUSY, EEXIST, EFAULT, EFBIG, EINTR, EINVAL, ENOMEM};
use crate::util::Bytes;

/// What could not be allocated.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Need {
    /// A frame of user memory (a folio).
    Frame,
    /// A translation-table page.
    Table,
    /// Kernel heap (bookkeeping lists, VMAs).
    Heap,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MmError {
    /// An allocation failed.
    NoMemory(Need),
    /// Linux's overcommit heuristic (OVERCOMMIT_GUESS): a private writable
    /// or anonymous shared mapping of `size` bytes is more than RAM plus
    /// swap (`limit`).
    Overcommit { size: u64, limit: u64 },
    /// No room for `size` bytes in the user address space.
    NoAddressSpace { size: u64 },
    /// A range whose start or length is not a multiple of the page size.
    NotAligned { addr: VirtAddr, len: u64 },
    /// A zero-length range or mapping.
    Empty,
    /// A range that ends beyond the user address space.
    OutOfRange { addr: VirtAddr, len: u64 },
    /// A page of the range lies in no VMA.
    NotMapped { addr: VirtAddr },
    /// The range touches the mm's sealed range (the process layer seals
    /// the agent's mapping), which stays as it is (Linux mseal: -EPERM;
    /// here -EINVAL, as before sealing existed).
    Sealed,
    /// A new mapping would overlap one that exists.
    Overlap { addr: VirtAddr },
    /// `pfn=` on a machine without a PFN pool.
    NoPfnPool,
    /// `pfn=` outside the PFN pool or not page aligned.
    PfnOutsidePool { pfn: PhysAddr, size: u64, start: PhysAddr, end: PhysAddr },
    /// File mappings take neither `pfn=` nor `thp=`.
    FileOptions,
    /// The file behind a descriptor (or of that name) is gone.
    NoSuchFile,
    /// The file is still mapped by some VMA.
    FileMapped,
    /// A file size above Linux's `MAX_LFS_FILESIZE` (2^63-1, shmem's
    /// `MAX_FILE_SIZE`): -EFBIG.
    FileTooBig { size: u64 },
    /// The mm has `vm.max_map_count` VMAs already.
    TooManyMappings,
    /// A folio has references in flight (GUP between its steps): try again.
    Again,
    /// `madvise dontneed` of a PFN mapping (Linux: -EINVAL).
    PfnMap { addr: VirtAddr },
    /// fork met a non-present entry it cannot copy yet.
    NotPresent { addr: VirtAddr },
    /// `madvise pageout`: the swap device is full; `stayed` pages that
    /// could have gone stayed in memory.
    SwapFull { stayed: u64 },
    /// `madvise pageout` of anonymous memory without a swap device
    /// (`pagelab.swap=0`); `stayed` pages stayed in memory.
    NoSwapDevice { stayed: u64 },
    /// `migrate` moved all but `stayed` pages: `pinned` of them are in
    /// maybe-pinned folios (Linux refuses those), the rest had references
    /// in flight, were being moved by someone else or found no memory.
    PagesStayed { stayed: u64, pinned: u64 },
    /// `madvise collapse` (MADV_COLLAPSE) could not make one block of the
    /// level-2 range at `addr`.
    Collapse { addr: VirtAddr, why: ScanResult },
    /// The table code refused a change (not for lack of memory).
    Table(MapError),
    /// The tables disagree with the page metadata (a kernel bug, reported
    /// instead of a crash).
    Inconsistent { addr: u64, what: Inconsistency },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Inconsistency {
    /// A block cut by a range that should have been split first.
    BlockCut,
    /// A mapped page outside RAM without the special bit.
    OutsideRam,
    /// A mapped page or block without a folio.
    NoFolio,
    /// A pinned block that was not split before fork.
    PinnedBlock,
    /// A block that cannot be split (special, or not a THP).
    Unsplittable,
    /// A swap entry that names a free slot.
    BadSwapEntry,
}

/// Why a range could not be collapsed into one block (Linux
/// `enum scan_result` in mm/khugepaged.c, the cases pagelab meets).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ScanResult {
    /// The VMA does not allow a block-sized folio (`nohugepage`, no THP
    /// folio order, file, shared or PFN mapping): `SCAN_VMA_CHECK`.
    VmaCheck,
    /// No level-3 table there (nothing mapped): `SCAN_PMD_NULL`.
    PmdNull,
    /// A non-present entry (swap, marker): `SCAN_PTE_NON_PRESENT`.
    PteNonPresent,
    /// A page write-protected by userfaultfd: `SCAN_PTE_UFFD_WP`.
    PteUffdWp,
    /// A page that is not anonymous memory (special, file): `SCAN_PAGE_ANON`.
    PageAnon,
    /// A folio with a reference no mapping accounts for (GUP, a reference
    /// or a pin): `SCAN_PAGE_COUNT`, try again.
    PageCount,
}

impl MmError {
    /// The errno Linux returns for this (positive).
    pub fn errno(self) -> i64 {
        match self {
            MmError::NoMemory(_)
            | MmError::Overcommit { .. }
            | MmError::NoAddressSpace { .. }
            | MmError::TooManyMappings
            | MmError::SwapFull { .. }
            | MmError::NoSwapDevice { .. }
            | MmError::NotMapped { .. } => ENOMEM,
            MmError::NoSuchFile => EBADF,
            MmError::FileMapped => EBUSY,
            MmError::FileTooBig { .. } => EFBIG,
            MmError::Again | MmError::Collapse { why: ScanResult::PageCount, .. } | MmError::PagesStayed { .. } => {
                EAGAIN
            }
            MmError::NotAligned { .. }
            | MmError::Empty
            | MmError::OutOfRange { .. }
            | MmError::Sealed
            | MmError::Overlap { .. }
            | MmError::NoPfnPool
            | MmError::PfnOutsidePool { .. }
            | MmError::FileOptions
            | MmError::NotPresent { .. }
            | MmError::PfnMap { .. }
            | MmError::Collapse { .. }
            | MmError::Table(_)
            | MmError::Inconsistent { .. } => EINVAL,
        }
    }

    /// Whether this is a failed allocation (Linux `VM_FAULT_OOM`, `-ENOMEM`
    /// from the allocator), not a refusal.
    pub fn is_oom(self) -> bool {
        matches!(self, MmError::NoMemory(_) | MmError::Overcommit { .. })
    }
}

impl fmt::Display for MmError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            MmError::NoMemory(Need::Frame) => f.write_str("out of memory (user frames)"),
            MmError::NoMemory(Need::Table) => f.write_str("out of memory (page tables)"),
            MmError::NoMemory(Need::Heap) => f.write_str("out of memory (kernel heap)"),
            MmError::Overcommit { size, limit } => write!(
                f,
                "out of memory: a mapping of {} is more than RAM plus swap ({}); `noreserve` maps it anyway",
                Bytes(size),
                Bytes(limit)
            ),
            MmError::NoAddressSpace { size } => {
                write!(f, "out of memory: no room for {} in the user address space", Bytes(size))
            }
            MmError::NotAligned { addr, len } => {
                write!(f, "range {addr:#x}+{len:#x} is not aligned to the page size")
            }
            MmError::Empty => f.write_str("empty range (size 0)"),
            MmError::OutOfRange { addr, len } => {
                write!(f, "range {addr:#x}+{len:#x} is out of range of the user address space")
            }
            MmError::NotMapped { addr } => write!(f, "{addr:#x} is not mapped"),
            MmError::Sealed => f.write_str("the agent's mapping is sealed: it cannot be unmapped or changed"),
            MmError::Overlap { addr } => write!(f, "overlapping mapping at {addr:#x}"),
            MmError::NoPfnPool => f.write_str("this machine has no PFN pool (RAM too small)"),
            MmError::PfnOutsidePool { pfn, size, start, end } => write!(
                f,
                "pfn={pfn:#x}+{size:#x} is out of range: not page aligned inside the PFN pool [{start:#x}, {end:#x})"
            ),
            MmError::FileOptions => {
                f.write_str("memfd and shared memory take neither pfn= nor thp= (base pages from the page cache)")
            }
            MmError::NoSuchFile => f.write_str("that memfd is gone"),
            MmError::FileMapped => f.write_str("that memfd is still mapped"),
            MmError::FileTooBig { size } => {
                write!(f, "file size {size:#x} is larger than the largest file (2^63-1 bytes, Linux EFBIG)")
            }
            MmError::TooManyMappings => write!(
                f,
                "out of memory: {} mappings already (Linux vm.max_map_count)",
                super::mm_struct::MAX_MAP_COUNT
            ),
            MmError::Again => f.write_str("the folio has references in flight; try again"),
            MmError::PagesStayed { stayed, pinned } => {
                write!(f, "{stayed} page(s) stayed where they were ({pinned} pinned)")
            }
            MmError::PfnMap { addr } => {
                write!(f, "{addr:#x} is in a pfn= mapping (VM_PFNMAP): it cannot be zapped by madvise (Linux: EINVAL)")
            }
            MmError::NotPresent { addr } => write!(f, "non-present entry at {addr:#x}: not supported by fork yet"),
            MmError::SwapFull { stayed } => write!(f, "swap full: {stayed} page(s) stayed in memory"),
            MmError::NoSwapDevice { stayed } => {
                write!(f, "no swap device (pagelab.swap=0): {stayed} page(s) stayed in memory")
            }
            MmError::Collapse { addr, why } => {
                let w = match why {
                    ScanResult::VmaCheck => "the mapping allows no huge page there (nohugepage, no thp=, file or pfn=)",
                    ScanResult::PmdNull => "nothing is mapped there",
                    ScanResult::PteNonPresent => "a non-present entry",
                    ScanResult::PteUffdWp => "a page write-protected by userfaultfd",
                    ScanResult::PageAnon => "a page that is not anonymous memory",
                    ScanResult::PageCount => "a page is held by a pin or reference",
                };
                write!(f, "cannot collapse {addr:#x}: {w}")
            }
            MmError::Table(e) => write!(f, "the table code refused the change: {e:?}"),
            MmError::Inconsistent { addr, what } => {
                let w = match what {
                    Inconsistency::BlockCut => "a block cut by the range or a non-present upper entry",
                    Inconsistency::OutsideRam => "a page outside RAM mapped without the special bit",
                    Inconsistency::NoFolio => "a mapped page without a folio",
                    Inconsistency::PinnedBlock => "a pinned block that was not split",
                    Inconsistency::Unsplittable => "a block that cannot be split",
                    Inconsistency::BadSwapEntry => "a swap entry that names a free slot",
                };
                write!(f, "inconsistent tables at {addr:#x}: {w}")
            }
        }
    }
}

impl From<MapError> for MmError {
    fn from(e: MapError) -> Self {
        match e {
            MapError::OutOfMemory => MmError::NoMemory(Need::Table),
            e => MmError::Table(e),
        }
    }
}

/// Why a GUP handle operation (`P pin`/`P ref`, `checkpin`, `unpin`)
/// failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GupError {
    /// A handle of that name exists already.
    HandleExists,
    /// No handle of that name.
    NoSuchHandle,
    /// More pages than the machine has (a handle keeps one entry per page).
    TooManyPages { nr: u64, managed: u64 },
    /// No kernel heap for the list of pages or the handle, or the fault
    /// that would bring a page in ran out of memory.
    NoMemory,
    /// No VMA at `addr` (Linux: `-EFAULT`).
    NoVma { addr: VirtAddr },
    /// The VMA at `addr` refuses GUP: VM_PFNMAP, or not the access asked
    /// for (Linux `check_vma_flags`: `-EFAULT`).
    VmaFlags { addr: VirtAddr },
    /// The entry at `addr` maps no page GUP can take: a special entry
    /// other than the zero page, a page without a folio, or a block at a
    /// level that has none (Linux `follow_page_mask`: `-EFAULT`).
    NoPage { addr: VirtAddr },
    /// The fault that would make `addr` present failed, or the page never
    /// settled after the retries (Linux `faultin_page`: `-EFAULT`).
    Fault { addr: VirtAddr },
    /// The caller's stop check ended it (the console's Ctrl-C).
    Interrupted,
    /// `checkpin`: page `page` (at `pa`) has `got` at offset `off`, not `want`.
    Mismatch { page: usize, pa: PhysAddr, off: usize, got: u8, want: u8 },
}

impl GupError {
    /// The errno Linux returns for this (positive).
    pub fn errno(self) -> i64 {
        match self {
            GupError::HandleExists => EEXIST,
            GupError::TooManyPages { .. } | GupError::NoMemory => ENOMEM,
            GupError::NoVma { .. } | GupError::VmaFlags { .. } | GupError::NoPage { .. } | GupError::Fault { .. } => {
                EFAULT
            }
            GupError::Interrupted => EINTR,
            GupError::NoSuchHandle | GupError::Mismatch { .. } => EINVAL,
        }
    }

    pub fn is_oom(self) -> bool {
        matches!(self, GupError::TooManyPages { .. } | GupError::NoMemory)
    }
}

impl fmt::Display for GupError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            GupError::HandleExists => f.write_str("a pin or reference of that name already exists"),
            GupError::NoSuchHandle => f.write_str("no pin or reference of that name"),
            GupError::TooManyPages { nr, managed } => {
                write!(f, "get_user_pages: out of memory (ENOMEM): {nr} pages, more than the machine's {managed}")
            }
            GupError::NoMemory => f.write_str("get_user_pages: out of memory (ENOMEM)"),
            GupError::NoVma { addr } => write!(f, "get_user_pages: {addr:#x} is not mapped (EFAULT)"),
            GupError::VmaFlags { addr } => write!(
                f,
                "get_user_pages: the mapping at {addr:#x} does not allow it (VM_PFNMAP, or not that access) (EFAULT)"
            ),
            GupError::NoPage { addr } => {
                write!(f, "get_user_pages: {addr:#x} maps no page that can be taken (special or no folio) (EFAULT)")
            }
            GupError::Fault { addr } => write!(f, "get_user_pages: the fault at {addr:#x} failed (EFAULT)"),
            GupError::Interrupted => f.write_str("interrupted (Ctrl-C)"),
            GupError::Mismatch { page, pa, off, got, want } => {
                write!(f, "page {page} ({pa:#x}) byte {off:#x} is {got:#04x}, expected {want:#04x}")
            }
        }
    }
}

/// Why `vm_insert_page`/`vm_insert_pages` refused a page (Linux
/// `mm/memory.c`'s reasons).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum InsertError {
    /// No VMA at `addr` (`-EFAULT`).
    NoVma { addr: VirtAddr },
    /// The VMA at `addr` is VM_PFNMAP (Linux: `BUG_ON`; here `-EINVAL`).
    PfnMap { addr: VirtAddr },
    /// The zero page where `vm_mixed_zeropage_allowed` forbids it (`-EINVAL`).
    ZeroPageForbidden { addr: VirtAddr },
    /// `pa` has no struct page or folio (`-EINVAL`).
    NoFolio { pa: PhysAddr },
    /// `pa` has no references: a freed page (`vm_insert_pages`, `-EINVAL`).
    Freed { pa: PhysAddr },
    /// `pa` is an anon page or part of a large folio; only individual
    /// kernel pages may be inserted (`validate_page_before_insert`: `-EINVAL`).
    NotInsertable { pa: PhysAddr },
    /// Something is mapped at `addr` already (`-EBUSY`).
    Busy { addr: VirtAddr },
    /// No memory for a translation table (`-ENOMEM`).
    NoMemory,
}

impl InsertError {
    /// The errno Linux returns for this (positive).
    pub fn errno(self) -> i64 {
        match self {
            InsertError::NoVma { .. } => EFAULT,
            InsertError::Busy { .. } => EBUSY,
            InsertError::NoMemory => ENOMEM,
            InsertError::PfnMap { .. }
            | InsertError::ZeroPageForbidden { .. }
            | InsertError::NoFolio { .. }
            | InsertError::Freed { .. }
            | InsertError::NotInsertable { .. } => EINVAL,
        }
    }
}

impl fmt::Display for InsertError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            InsertError::NoVma { addr } => write!(f, "vm_insert_page: {addr:#x} is not mapped (EFAULT)"),
            InsertError::PfnMap { addr } => write!(f, "vm_insert_page: {addr:#x} is in a VM_PFNMAP mapping (EINVAL)"),
            InsertError::ZeroPageForbidden { addr } => {
                write!(f, "vm_insert_page: the zero page is not allowed in the mapping at {addr:#x} (EINVAL)")
            }
            InsertError::NoFolio { pa } => write!(f, "vm_insert_page: {pa:#x} has no folio (EINVAL)"),
            InsertError::Freed { pa } => write!(f, "vm_insert_pages: {pa:#x} has no references (EINVAL)"),
            InsertError::NotInsertable { pa } => {
                write!(f, "vm_insert_page: {pa:#x} is an anon page or part of a large folio (EINVAL)")
            }
            InsertError::Busy { addr } => write!(f, "vm_insert_page: {addr:#x} is mapped already (EBUSY)"),
            InsertError::NoMemory => f.write_str("vm_insert_page: out of memory (page tables) (ENOMEM)"),
        }
    }
}

/// For the console's and the tests' messages: `?` converts through Display.
impl From<GupError> for alloc::string::String {
    fn from(e: GupError) -> Self {
        alloc::string::ToString::to_string(&e)
    }
}

/// For the console's and the tests' messages: `?` converts through Display.
impl From<MmError> for alloc::string::String {
    fn from(e: MmError) -> Self {
        alloc::string::ToString::to_string(&e)
    }
}

/// Makes room for `n` more elements of `v`, or fails with `out of memory`
/// (and under `pagelab.fail-alloc`, sometimes fails on purpose): the one way
/// kernel paths grow a list whose size depends on input.
pub fn try_reserve<T>(v: &mut alloc::vec::Vec<T>, n: usize) -> Result<(), MmError> {
    if super::fail_alloc::should_fail(super::fail_alloc::AllocKind::Heap) {
        return Err(MmError::NoMemory(Need::Heap));
    }
    v.try_reserve(n).map_err(|_| MmError::NoMemory(Need::Heap))
}

/// Room for an insert that cannot fail softly (a `BTreeMap` node): the heap
/// must give `bytes` (and a page more, for node splits) now, so that running
/// out is `out of memory` here rather than the heap's panic inside the
/// insert. A heap site like any other: injection can fail it.
pub fn heap_headroom(bytes: usize) -> Result<(), MmError> {
    let mut probe: alloc::vec::Vec<u8> = alloc::vec::Vec::new();
    try_reserve(&mut probe, bytes.saturating_add(4096))
}

#[cfg(test)]
mod tests {
    use super::*;
    extern crate std;
    use std::string::ToString;

    #[test]
    fn words_and_errnos() {
        let oom = [MmError::NoMemory(Need::Frame), MmError::NoMemory(Need::Table), MmError::NoMemory(Need::Heap)];
        for e in oom {
            assert!(e.to_string().contains("out of memory"), "{e}");
            assert_eq!(e.errno(), ENOMEM);
            assert!(e.is_oom());
        }
        let o = MmError::Overcommit { size: 64 << 30, limit: 1 << 30 };
        assert!(o.to_string().starts_with("out of memory"), "{o}");
        assert!(o.to_string().contains("64 GiB") && o.to_string().contains("noreserve"), "{o}");
        assert_eq!(o.errno(), ENOMEM);
        let na = MmError::NotAligned { addr: VirtAddr::new(0x1800), len: 0x1000 };
        assert!(na.to_string().contains("not aligned"), "{na}");
        assert_eq!(na.errno(), EINVAL);
        let nm = MmError::NotMapped { addr: VirtAddr::new(0x5000) };
        assert!(nm.to_string().contains("not mapped"));
        assert_eq!(nm.errno(), ENOMEM, "Linux: mprotect of a hole is -ENOMEM");
        assert!(!nm.is_oom());
        let r = MmError::OutOfRange { addr: VirtAddr::new(1 << 47), len: 0x1000 };
        assert!(r.to_string().contains("out of range"));
        assert_eq!(r.errno(), EINVAL);
        assert_eq!(MmError::NoSuchFile.errno(), EBADF);
        assert_eq!(MmError::NoAddressSpace { size: 1 << 40 }.errno(), ENOMEM);
        assert_eq!(MmError::FileMapped.errno(), EBUSY);
    }

    #[test]
    fn gup_words_and_errnos() {
        for e in [GupError::NoMemory, GupError::TooManyPages { nr: 1 << 30, managed: 1 << 18 }] {
            assert!(e.to_string().contains("out of memory"), "{e}");
            assert!(e.is_oom(), "{e}");
            assert_eq!(e.errno(), ENOMEM);
        }
        let a = VirtAddr::new(0x7000_0000);
        let f = GupError::NoVma { addr: a };
        assert!(f.to_string().contains("0x70000000 is not mapped") && f.to_string().contains("EFAULT"), "{f}");
        let v = GupError::VmaFlags { addr: a };
        assert!(v.to_string().contains("does not allow it"), "{v}");
        for e in [f, v, GupError::NoPage { addr: a }, GupError::Fault { addr: a }] {
            assert_eq!(e.errno(), EFAULT, "{e}");
            assert!(!e.is_oom(), "{e}");
            assert!(e.to_string().contains("0x70000000"), "{e}");
        }
        assert_eq!(GupError::HandleExists.errno(), EEXIST);
        assert_eq!(GupError::Interrupted.to_string(), "interrupted (Ctrl-C)");
        let m = GupError::Mismatch { page: 2, pa: PhysAddr::new(0x4000_2000), off: 0x10, got: 0, want: 0x5a };
        assert_eq!(m.to_string(), "page 2 (0x40002000) byte 0x10 is 0x00, expected 0x5a");
    }

    /// Each insert refusal maps to Linux's errno (fails if a mapping
    /// changes: tried with `Busy` mapped to EINVAL).
    #[test]
    fn insert_words_and_errnos() {
        let a = VirtAddr::new(0x40_0000);
        let pa = PhysAddr::new(0x4000_2000);
        assert_eq!(InsertError::NoVma { addr: a }.errno(), EFAULT);
        assert_eq!(InsertError::Busy { addr: a }.errno(), EBUSY);
        assert_eq!(InsertError::NoMemory.errno(), ENOMEM);
        for e in [
            InsertError::PfnMap { addr: a },
            InsertError::ZeroPageForbidden { addr: a },
            InsertError::NoFolio { pa },
            InsertError::Freed { pa },
            InsertError::NotInsertable { pa },
        ] {
            assert_eq!(e.errno(), EINVAL, "{e}");
            assert!(e.to_string().contains("EINVAL"), "{e}");
        }
        assert!(InsertError::Busy { addr: a }.to_string().contains("0x400000 is mapped already"));
        assert!(InsertError::NoMemory.to_string().contains("out of memory"));
    }
}
