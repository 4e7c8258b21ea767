//! A debugger's view of the process table: [`PAGELAB_DEBUG_PROCS`], fixed-size
//! `#[repr(C)]` records that GDB (`pl-procs`, `pl-vmas` in gdb/pagelab.py) reads
//! from kernel memory while the kernel is stopped anywhere.
//!
//! The real structures (a `BTreeMap` of boxed processes, `Vec`s of VMAs behind
//! spin locks) cannot be decoded reliably from a debugger, so the kernel keeps
//! this mirror up to date at the few points where processes and VMAs change:
//! - [`register`] in `new_process` (spawn and fork), [`unregister`] at the end
//!   of `teardown` (exit, and the error paths of spawn and fork);
//! - [`vmas_changed`], which [`register`] installs as mm's VMA-change hook
//!   (`mm_struct::set_vmas_changed_hook`), when an mmap write lock is
//!   released after its VMA list was borrowed mutably (`MmapWriteGuard`'s
//!   `Drop`, so mmap, munmap,
//!   mprotect, madvise, fork, exit and vm_insert_page all update it, under
//!   the lock). The page-fault path takes the mmap lock for read only and
//!   never touches the mirror;
//! - [`set_running`] around each EL0 run in `sched::run_task`.
//!
//! No allocation, no locks: a slot is claimed with a compare-and-swap and
//! afterwards written only by the holder of its process's mmap write lock.
//!
//! # Layout (version 1; all little-endian, offsets in bytes)
//!
//! Header, at the symbol `PAGELAB_DEBUG_PROCS`:
//! ```text
//!   0 u64 magic        "PLPROCS\0" (0x0053434f52504c50)
//!   8 u32 version      1
//!  12 u32 header_size  offset of procs[0] = 64 + 8 * max_cpus
//!  16 u32 proc_size    size of one process record = 80 + max_vmas * vma_size
//!  20 u32 vma_size     size of one VMA record = 40
//!  24 u32 max_procs    process slots
//!  28 u32 max_vmas     VMA records per slot
//!  32 u32 max_cpus     entries of running_pid / running_tid
//!  36 u32 name_len     bytes of a name (32)
//!  40 u32 page_shift   the granule (12, 14, 16), for folio sizes
//!  44 u32 nr_procs     live processes (with or without a slot)
//!  48 u32 unslotted    live processes that got no slot (table full): not listed
//!  52 u32 (padding)
//!  56 u64 updates      changes made to the table so far
//!  64 u32 running_pid[max_cpus]  pid whose task each CPU runs (0: none)
//!  .. u32 running_tid[max_cpus]  that task's tid
//! ```
//! Process record (`procs[i]` at `header_size + i * proc_size`):
//! ```text
//!   0 u32 seq        odd while the kernel writes the record
//!   4 u32 state      0 free, 1 being set up, 2 live
//!   8 u32 pid
//!  12 u32 ppid       0: spawned from the console
//!  16 u64 pgd        TTBR0 root table (physical address)
//!  24 u64 asid_slot  kernel VA of the mm's ASID slot (u64: generation << 16 | asid;
//!                    0 until it first runs); read it for the current value
//!  32 u64 mm         kernel VA of its MmStruct
//!  40 u32 nr_vmas    VMAs it has; more than max_vmas: only the first max_vmas recorded
//!  44 u32 name_len   the name's full length; more than name_len: truncated
//!  48 u8  name[32]   UTF-8, zero-padded
//!  80 vma[max_vmas]  sorted by start
//! ```
//! VMA record (40 bytes):
//! ```text
//!   0 u64 start
//!   8 u64 end          exclusive
//!  16 u64 pgoff        file page at start (memfd/shmem mappings)
//!  24 u32 flags        VmFlags bits (kernel/src/mm/mm_struct.rs)
//!  28 u32 file         shmem file id (0: none)
//!  32 u8  folio_order  largest anonymous folio: PAGE_SIZE << folio_order
//!  33 u8  (padding)[7]
//! ```
//! A change of any offset or meaning bumps [`VERSION`]; the `offset_of!`
//! assertions below pin the layout to this description.

use core::cell::UnsafeCell;
use core::mem::{offset_of, size_of};
use core::sync::atomic::{AtomicU32, AtomicU64, Ordering, fence};

use crate::arch::aarch64::boot::MAX_CPUS;
use crate::arch::aarch64::granule::PAGE_SHIFT;
use crate::mm::mm_struct::{MmStruct, VmaList};

pub const MAGIC: u64 = u64::from_le_bytes(*b"PLPROCS\0");
pub const VERSION: u32 = 1;
pub const MAX_PROCS: usize = 16;
pub const MAX_VMAS: usize = 32;
pub const NAME_LEN: usize = 32;

const FREE: u32 = 0;
const SETUP: u32 = 1;
const LIVE: u32 = 2;

#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DebugVma {
    pub start: u64,
    pub end: u64,
    pub pgoff: u64,
    pub flags: u32,
    pub file: u32,
    pub folio_order: u8,
    _pad: [u8; 7],
}

impl DebugVma {
    const EMPTY: DebugVma = DebugVma { start: 0, end: 0, pgoff: 0, flags: 0, file: 0, folio_order: 0, _pad: [0; 7] };

    /// The record of `v`.
    pub fn of(v: &crate::mm::mm_struct::Vma) -> Self {
        DebugVma {
            start: v.start.as_u64(),
            end: v.end.as_u64(),
            pgoff: v.pgoff,
            flags: v.flags.0,
            file: v.file,
            folio_order: v.folio_order,
            _pad: [0; 7],
        }
    }
}

#[repr(C)]
pub struct DebugProc {
    seq: AtomicU32,
    state: AtomicU32,
    pid: u32,
    ppid: u32,
    pgd: u64,
    asid_slot: u64,
    mm: AtomicU64,
    nr_vmas: u32,
    name_len: u32,
    name: [u8; NAME_LEN],
    vmas: [DebugVma; MAX_VMAS],
}

impl DebugProc {
    const fn empty() -> DebugProc {
        DebugProc {
            seq: AtomicU32::new(0),
            state: AtomicU32::new(FREE),
            pid: 0,
            ppid: 0,
            pgd: 0,
            asid_slot: 0,
            mm: AtomicU64::new(0),
            nr_vmas: 0,
            name_len: 0,
            name: [0; NAME_LEN],
            vmas: [DebugVma::EMPTY; MAX_VMAS],
        }
    }
}

#[repr(C)]
pub struct DebugTable {
    magic: u64,
    version: u32,
    header_size: u32,
    proc_size: u32,
    vma_size: u32,
    max_procs: u32,
    max_vmas: u32,
    max_cpus: u32,
    name_len: u32,
    page_shift: u32,
    nr_procs: AtomicU32,
    unslotted: AtomicU32,
    _pad: u32,
    updates: AtomicU64,
    running_pid: [AtomicU32; MAX_CPUS],
    running_tid: [AtomicU32; MAX_CPUS],
    procs: [DebugProc; MAX_PROCS],
}

// The layout the module doc (and gdb/pagelab.py) describes.
const _: () = {
    assert!(size_of::<DebugVma>() == 40);
    assert!(offset_of!(DebugVma, pgoff) == 16 && offset_of!(DebugVma, flags) == 24);
    assert!(offset_of!(DebugVma, file) == 28 && offset_of!(DebugVma, folio_order) == 32);
    assert!(offset_of!(DebugProc, pid) == 8 && offset_of!(DebugProc, ppid) == 12);
    assert!(offset_of!(DebugProc, pgd) == 16 && offset_of!(DebugProc, asid_slot) == 24);
    assert!(offset_of!(DebugProc, mm) == 32 && offset_of!(DebugProc, nr_vmas) == 40);
    assert!(offset_of!(DebugProc, name_len) == 44 && offset_of!(DebugProc, name) == 48);
    assert!(offset_of!(DebugProc, vmas) == 48 + NAME_LEN && NAME_LEN.is_multiple_of(8));
    assert!(size_of::<DebugProc>() == 80 + MAX_VMAS * 40);
    assert!(offset_of!(DebugTable, page_shift) == 40 && offset_of!(DebugTable, nr_procs) == 44);
    assert!(offset_of!(DebugTable, unslotted) == 48 && offset_of!(DebugTable, updates) == 56);
    assert!(offset_of!(DebugTable, running_pid) == 64);
    assert!(offset_of!(DebugTable, running_tid) == 64 + 4 * MAX_CPUS);
    assert!(offset_of!(DebugTable, procs) == 64 + 8 * MAX_CPUS);
};

/// The table, mutable through raw pointers only (no `&DebugTable` is ever
/// made, so writes to the plain fields never alias a shared reference).
#[repr(transparent)]
pub struct Mirror(UnsafeCell<DebugTable>);

// SAFETY: the atomics are shared; every plain field of a slot is written by
// one CPU at a time (the slot's claimer during set-up, then the holder of
// the process's mmap write lock) and read only by the debugger.
unsafe impl Sync for Mirror {}

/// The symbol gdb/pagelab.py reads (initialised data, so the header is valid
/// from the moment the image is loaded).
#[unsafe(no_mangle)]
pub static PAGELAB_DEBUG_PROCS: Mirror = Mirror(UnsafeCell::new(DebugTable {
    magic: MAGIC,
    version: VERSION,
    header_size: offset_of!(DebugTable, procs) as u32,
    proc_size: size_of::<DebugProc>() as u32,
    vma_size: size_of::<DebugVma>() as u32,
    max_procs: MAX_PROCS as u32,
    max_vmas: MAX_VMAS as u32,
    max_cpus: MAX_CPUS as u32,
    name_len: NAME_LEN as u32,
    page_shift: PAGE_SHIFT,
    nr_procs: AtomicU32::new(0),
    unslotted: AtomicU32::new(0),
    _pad: 0,
    updates: AtomicU64::new(0),
    running_pid: [const { AtomicU32::new(0) }; MAX_CPUS],
    running_tid: [const { AtomicU32::new(0) }; MAX_CPUS],
    procs: [const { DebugProc::empty() }; MAX_PROCS],
}));

fn table() -> *mut DebugTable {
    PAGELAB_DEBUG_PROCS.0.get()
}

/// Slot `i`'s record.
fn slot(i: usize) -> *mut DebugProc {
    // SAFETY: in bounds (callers iterate 0..MAX_PROCS); a place projection,
    // no reference to the table is created.
    unsafe { &raw mut (*table()).procs[i] }
}

/// The atomics of the header and of slot records (atomics may be shared).
fn header() -> (&'static AtomicU32, &'static AtomicU32, &'static AtomicU64) {
    let t = table();
    // SAFETY: references to atomic fields only.
    unsafe { (&(*t).nr_procs, &(*t).unslotted, &(*t).updates) }
}
fn seq(p: *mut DebugProc) -> &'static AtomicU32 {
    // SAFETY: `p` is a slot of the static table; an atomic field.
    unsafe { &(*p).seq }
}
fn state(p: *mut DebugProc) -> &'static AtomicU32 {
    // SAFETY: as in `seq`.
    unsafe { &(*p).state }
}
fn mm_of(p: *mut DebugProc) -> &'static AtomicU64 {
    // SAFETY: as in `seq`.
    unsafe { &(*p).mm }
}

/// Marks `p` as being written (seq odd) for a debugger that stops meanwhile.
fn write_begin(p: *mut DebugProc) {
    let s = seq(p);
    s.store(s.load(Ordering::Relaxed).wrapping_add(1) | 1, Ordering::Relaxed);
    fence(Ordering::Release);
}
fn write_end(p: *mut DebugProc) {
    let s = seq(p);
    s.store(s.load(Ordering::Relaxed).wrapping_add(1) & !1, Ordering::Release);
    header().2.fetch_add(1, Ordering::Relaxed);
}

/// The live slot that mirrors `mm`.
fn find(mm: &MmStruct) -> Option<*mut DebugProc> {
    let key = mm as *const MmStruct as u64;
    (0..MAX_PROCS)
        .map(slot)
        .find(|&p| state(p).load(Ordering::Acquire) == LIVE && mm_of(p).load(Ordering::Relaxed) == key)
}

/// A new process (before its first VMA exists). Without a free slot it is
/// only counted in `unslotted`, which the debugger reports.
pub fn register(pid: u32, ppid: u32, name: &str, mm: &MmStruct) {
    // mm/ reports VMA changes through its hook; the mirror listens from
    // the first process on.
    crate::mm::mm_struct::set_vmas_changed_hook(vmas_changed);
    header().0.fetch_add(1, Ordering::Relaxed);
    let Some(p) = (0..MAX_PROCS)
        .map(slot)
        .find(|&p| state(p).compare_exchange(FREE, SETUP, Ordering::Acquire, Ordering::Relaxed).is_ok())
    else {
        header().1.fetch_add(1, Ordering::Relaxed);
        return;
    };
    write_begin(p);
    let n = name.len().min(NAME_LEN);
    let mut bytes = [0u8; NAME_LEN];
    bytes[..n].copy_from_slice(&name.as_bytes()[..n]);
    // SAFETY: the compare-and-swap above made this CPU the slot's only writer.
    unsafe {
        (*p).pid = pid;
        (*p).ppid = ppid;
        (*p).pgd = mm.pgd.as_u64();
        (*p).asid_slot = &mm.asid_slot as *const AtomicU64 as u64;
        (*p).nr_vmas = 0;
        (*p).name_len = name.len() as u32;
        (*p).name = bytes;
    }
    mm_of(p).store(mm as *const MmStruct as u64, Ordering::Relaxed);
    write_end(p);
    state(p).store(LIVE, Ordering::Release);
}

/// `mm`'s process is gone (called with its mmap write lock held, so no
/// [`vmas_changed`] for it runs meanwhile).
pub fn unregister(mm: &MmStruct) {
    let (nr, unslotted, _) = header();
    let _ = nr.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1));
    let Some(p) = find(mm) else {
        let _ = unslotted.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1));
        return;
    };
    write_begin(p);
    mm_of(p).store(0, Ordering::Relaxed);
    // SAFETY: the mmap write lock makes this CPU the slot's only writer.
    unsafe { (*p).nr_vmas = 0 };
    write_end(p);
    state(p).store(FREE, Ordering::Release);
}

/// Re-snapshots `mm`'s VMAs into its slot. The caller holds `mm`'s mmap
/// write lock (`vmas` is the list it guards).
pub fn vmas_changed(mm: &MmStruct, vmas: &VmaList) {
    let Some(p) = find(mm) else { return };
    write_begin(p);
    let mut n = 0usize;
    for v in vmas.iter() {
        if n < MAX_VMAS {
            // SAFETY: the mmap write lock makes this CPU the slot's only writer.
            unsafe { (*p).vmas[n] = DebugVma::of(v) };
        }
        n += 1;
    }
    // SAFETY: as above.
    unsafe { (*p).nr_vmas = n as u32 };
    write_end(p);
}

/// CPU `cpu` starts (pid != 0) or ends (pid 0) an EL0 run of a task.
pub fn set_running(cpu: usize, pid: u32, tid: u32) {
    let t = table();
    // SAFETY: references to atomic fields only; `cpu` < MAX_CPUS (a CPU id).
    unsafe {
        (*t).running_tid[cpu].store(tid, Ordering::Relaxed);
        (*t).running_pid[cpu].store(pid, Ordering::Relaxed);
    }
}

/// What a debugger would read from the slot of `pid` (for the in-kernel
/// tests; meaningful while nothing changes that process).
pub struct Snapshot {
    pub slot: usize,
    pub seq: u32,
    pub ppid: u32,
    pub name: alloc::string::String,
    pub name_len: u32,
    pub pgd: u64,
    pub asid_slot: u64,
    pub mm: u64,
    pub nr_vmas: u32,
    pub vmas: alloc::vec::Vec<DebugVma>,
}

/// The live slot of `pid`, read back field by field.
pub fn snapshot(pid: u32) -> Option<Snapshot> {
    (0..MAX_PROCS).find_map(|i| {
        let p = slot(i);
        if state(p).load(Ordering::Acquire) != LIVE {
            return None;
        }
        // SAFETY: plain reads of a live slot through raw pointers (volatile:
        // the kernel's other CPUs may write other slots meanwhile).
        unsafe {
            if (&raw const (*p).pid).read_volatile() != pid {
                return None;
            }
            let name_len = (&raw const (*p).name_len).read_volatile();
            let name = (&raw const (*p).name).read_volatile();
            let nr_vmas = (&raw const (*p).nr_vmas).read_volatile();
            let vmas =
                (0..(nr_vmas as usize).min(MAX_VMAS)).map(|k| (&raw const (*p).vmas[k]).read_volatile()).collect();
            Some(Snapshot {
                slot: i,
                seq: seq(p).load(Ordering::Acquire),
                ppid: (&raw const (*p).ppid).read_volatile(),
                name: alloc::string::String::from_utf8_lossy(&name[..(name_len as usize).min(NAME_LEN)]).into_owned(),
                name_len,
                pgd: (&raw const (*p).pgd).read_volatile(),
                asid_slot: (&raw const (*p).asid_slot).read_volatile(),
                mm: mm_of(p).load(Ordering::Relaxed),
                nr_vmas,
                vmas,
            })
        }
    })
}

/// (live processes, processes without a slot), as the header says.
pub fn counts() -> (u32, u32) {
    let (nr, unslotted, _) = header();
    (nr.load(Ordering::Relaxed), unslotted.load(Ordering::Relaxed))
}

/// (pid, tid) the mirror says CPU `cpu` runs (0, 0: none).
pub fn running(cpu: usize) -> (u32, u32) {
    let t = table();
    // SAFETY: references to atomic fields only.
    unsafe { ((*t).running_pid[cpu].load(Ordering::Relaxed), (*t).running_tid[cpu].load(Ordering::Relaxed)) }
}
