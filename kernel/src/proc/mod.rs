//! EL0 processes (first slice of the processes issue).
//!
//! A process is an address space ([`MmStruct`]: TTBR0 tables, ASID, VMAs)
//! plus the EL0 agent mapped read-only/executable at [`AGENT_VA`]. The
//! console drives it one agent command at a time, synchronously on the boot
//! CPU ([`run_agent`]): every load and store is real EL0 code, every fault a
//! real data abort. Anonymous private memory is filled on demand
//! ([`handle_user_fault`], Linux `do_anonymous_page` without the zero page,
//! which comes with the anonymous-memory issue); a fault that cannot be
//! resolved ends the command like a SIGSEGV and the process survives.

use alloc::boxed::Box;
use alloc::collections::BTreeMap;
use alloc::string::{String, ToString};
use alloc::sync::Arc;
use alloc::vec::Vec;
use core::sync::atomic::{AtomicU64, Ordering};

use spin::Mutex;

pub mod debug_table;
pub mod error;
pub mod sched;
pub mod syscall;

use crate::arch::aarch64::cpu;
use crate::arch::aarch64::esr::{Esr, ExceptionClass, FaultStatus};
use crate::arch::aarch64::exception::TrapFrame;
use crate::arch::aarch64::granule::{GRANULE, PAGE_SIZE, USER_START_LEVEL, align_up};
use crate::arch::aarch64::mm::context;
use crate::arch::aarch64::user::{self, UserRun, op};
use crate::mm::addr::VirtAddr;
use crate::mm::desc::LeafAttrs;
use crate::mm::error::{GupError, MmError, Need};
use crate::mm::kernel_pgtable::{self, FrameTableMem};
use crate::mm::memory::{self, MmTables};
use crate::mm::mm_struct::{MmStruct, MmapLocked, VmFlags, Vma};
use crate::mm::mmap::{self, MmapArgs};
use crate::mm::pgtable::{CursorMut, Detached, LeafSizes, Stage1User, TableMemory, Tables};
use crate::mm::{madvise, mprotect};
pub use error::ProcError;

/// Where every process sees the agent.
pub const AGENT_VA: u64 = 0x40_0000;

pub struct Region {
    pub va: VirtAddr,
    pub size: u64,
}

pub struct Process {
    pub name: String,
    pub pid: u32,
    /// The parent's pid (0: spawned from the console).
    pub ppid: u32,
    pub mm: MmStruct,
    pub(crate) tables: Mutex<FrameTableMem>,
    pub regions: Mutex<BTreeMap<String, Region>>,
    pub stats: ProcStats,
    /// Children that exited and were not waited for: (pid, status).
    pub(crate) zombies: Mutex<Vec<(u32, i32)>>,
    /// Set by the exit system call.
    pub(crate) exit_code: Mutex<Option<i32>>,
    /// Its tasks that are not done (threads; the console's commands are
    /// one task each).
    pub(crate) tasks: Mutex<Vec<Arc<sched::Task>>>,
    /// Open file descriptors from 3 on (0-2 are the console): the shmem
    /// file each refers to. An open fd keeps its file alive like a VMA.
    pub(crate) fds: Mutex<Vec<Option<u32>>>,
}

/// Per-process event counters.
#[derive(Default)]
pub struct ProcStats {
    /// Faults handed to `handle_mm_fault`.
    pub faults: AtomicU64,
}

impl Process {
    /// The address space as the mm code needs it.
    pub fn mt(&self) -> MmTables<'_> {
        MmTables { mm: &self.mm, mem: &self.tables }
    }
}

static PROCS: Mutex<BTreeMap<String, Box<Process>>> = Mutex::new(BTreeMap::new());
static NEXT_PID: AtomicU64 = AtomicU64::new(1);

fn user_attrs(vma: &Vma) -> LeafAttrs {
    LeafAttrs { writable: vma.flags.contains(VmFlags::WRITE), ..memory::vm_page_prot(vma) }
}

pub fn exists(name: &str) -> bool {
    PROCS.lock().contains_key(name)
}

pub fn names() -> Vec<String> {
    PROCS.lock().keys().cloned().collect()
}

/// `spawn P`: a new process with an empty address space and the agent.
pub fn spawn(name: &str) -> Result<(), ProcError> {
    if exists(name) {
        return Err(ProcError::ProcessExists);
    }
    let p = new_process(name, 0)?;
    if let Err(e) = crate::mm::error::heap_headroom(0) {
        teardown(&p);
        return Err(e.into());
    }
    PROCS.lock().insert(name.to_string(), p);
    Ok(())
}

/// A process with only the agent mapped (not yet in the process table).
fn new_process(name: &str, ppid: u32) -> Result<Box<Process>, ProcError> {
    let mut mem = FrameTableMem { tables: 0 };
    let Some(root) = mem.alloc_table() else {
        return Err(Need::Table.into());
    };
    let p = Box::new(Process {
        name: name.to_string(),
        pid: NEXT_PID.fetch_add(1, Ordering::Relaxed) as u32,
        ppid,
        mm: MmStruct::new(root, 0), // an ASID is handed out when it first runs
        tables: Mutex::new(mem),
        regions: Mutex::new(BTreeMap::new()),
        stats: ProcStats::default(),
        zombies: Mutex::new(Vec::new()),
        exit_code: Mutex::new(None),
        tasks: Mutex::new(Vec::new()),
        fds: Mutex::new(Vec::new()),
    });
    // The debugger's mirror, before the first VMA (its snapshot needs the slot).
    debug_table::register(p.pid, ppid, name, &p.mm);
    // The reverse map finds processes through us, from the first VMA on.
    crate::mm::rmap::set_mm_resolver(resolve_mm);
    // The agent: kernel text pages, special (no struct-page semantics), EL0 RX.
    let (lo, hi) = user::agent_range();
    let agent = Vma {
        start: VirtAddr::new(AGENT_VA),
        end: VirtAddr::new(AGENT_VA + (hi - lo)),
        flags: VmFlags::READ | VmFlags::EXEC | VmFlags::PFNMAP,
        folio_order: 0,
        file: 0,
        pgoff: 0,
        anon_vma: 0,
    };
    p.mm.mmap_write_lock().insert(agent);
    // Neither munmap nor mprotect may touch the agent.
    p.mm.mseal(agent.start, agent.end);
    let attrs = LeafAttrs { special: true, ..user_attrs(&agent) };
    let r = {
        let ptl = p.mm.page_table_lock_guard();
        let mut mem = p.tables.lock();
        let mut t = Tables::new(root, GRANULE, USER_START_LEVEL, &mut *mem);
        let mut fl = crate::mm::tlb::KernelFlush;
        let mut c = CursorMut::new(&ptl, &mut t, Stage1User { asid: p.mm.asid() }, &mut fl);
        let r = c.map(
            VirtAddr::new(AGENT_VA),
            kernel_pgtable::kimage_to_phys(VirtAddr::new(lo)),
            hi - lo,
            attrs,
            LeafSizes::PagesOnly,
        );
        // Holes in new tables: nothing to flush or free.
        let Detached(d) = c.finish();
        debug_assert!(d.is_empty());
        r
    };
    if let Err(e) = r {
        teardown(&p);
        return Err(MmError::from(e).into());
    }
    Ok(p)
}

/// Linux `dup_mmap` + `copy_process` for `P fork C`: C gets P's VMAs,
/// regions and (COW-shared) pages. Called from P's `clone` system call.
pub(crate) fn fork_p(parent: &Process, child_name: &str) -> Result<u32, ProcError> {
    // The child's exit leaves a zombie entry with the parent: its room is
    // taken now, so that exit allocates nothing (capacity stays at least
    // the zombies plus the live children).
    {
        let live = PROCS.lock().values().filter(|q| q.ppid == parent.pid).count();
        crate::mm::error::try_reserve(&mut parent.zombies.lock(), live + 1)?;
    }
    if exists(child_name) {
        return Err(ProcError::ProcessExists);
    }
    let child = new_process(child_name, parent.pid)?;
    {
        // Linux holds the parent's mmap lock for write across dup_mmap.
        let pv = parent.mm.mmap_write_lock();
        let mut cv = child.mm.mmap_write_lock();
        let n = pv.iter().count();
        let mut vmas: Vec<Vma> = Vec::new();
        if let Err(e) = cv.try_reserve(n).and_then(|()| crate::mm::error::try_reserve(&mut vmas, n)) {
            drop(cv);
            drop(pv);
            teardown(&child);
            return Err(e.into());
        }
        vmas.extend(pv.iter().filter(|v| v.start != VirtAddr::new(AGENT_VA)));
        crate::mm::userfaultfd::dup_userfaultfd(&parent.mm, &child.mm);
        for vma in &vmas {
            let cvma = crate::mm::userfaultfd::dup_userfaultfd_vma(&parent.mm, vma);
            cv.insert(cvma);
            // Linux `vma_needs_copy`: a shared file mapping's entries are
            // not copied (the child faults them in from the page cache)
            // unless the child keeps uffd-wp markers.
            if vma.file != 0 && vma.flags.contains(VmFlags::SHARED) && !crate::mm::userfaultfd::userfaultfd_wp(&cvma) {
                continue;
            }
            if let Err(e) = memory::copy_page_range(parent.mt(), child.mt(), vma)
                .and_then(|()| crate::mm::userfaultfd::dup_userfaultfd_entries(child.mt(), vma, &cvma))
            {
                drop(cv);
                drop(pv);
                teardown(&child);
                return Err(e.into());
            }
        }
    }
    // The region table and the process table grow by inserts that cannot
    // fail softly: room for them first.
    let nregions = parent.regions.lock().len();
    if let Err(e) = crate::mm::error::heap_headroom(nregions.saturating_mul(128)) {
        teardown(&child);
        return Err(e.into());
    }
    for (k, r) in parent.regions.lock().iter() {
        child.regions.lock().insert(k.clone(), Region { va: r.va, size: r.size });
    }
    child.mm.free_area.store(parent.mm.free_area.load(Ordering::Relaxed), Ordering::Relaxed);
    // The child inherits every open file descriptor (Linux dup of the fd table).
    {
        let fds = parent.fds.lock().clone();
        for id in fds.iter().flatten() {
            crate::mm::shmem::vma_get(*id);
        }
        *child.fds.lock() = fds;
    }
    let pid = child.pid;
    PROCS.lock().insert(child_name.to_string(), child);
    Ok(pid)
}

/// The name the next `clone` system call gives its child (set by the
/// console's `P fork C`; otherwise `<parent>_<pid>`).
static NEXT_CHILD_NAME: Mutex<Option<String>> = Mutex::new(None);

pub(crate) fn take_child_name(parent: &Process) -> String {
    NEXT_CHILD_NAME
        .lock()
        .take()
        .unwrap_or_else(|| alloc::format!("{}_{}", parent.name, NEXT_PID.load(Ordering::Relaxed)))
}

/// `P fork C`: P makes the `clone` system call (SIGCHLD, Linux fork) from
/// EL0; the kernel creates C. Returns C's pid.
pub fn fork(parent: &str, child: &str) -> Result<u32, ProcError> {
    if exists(child) {
        return Err(ProcError::ProcessExists);
    }
    *NEXT_CHILD_NAME.lock() = Some(child.to_string());
    *syscall::LAST_CLONE_ERROR.lock() = None;
    let r = syscall(parent, syscall::nr::CLONE, [syscall::SIGCHLD, 0, 0, 0, 0, 0]);
    *NEXT_CHILD_NAME.lock() = None;
    let r = r?;
    if r < 0 {
        // The reason the kernel kept, or at least the errno.
        return Err(syscall::LAST_CLONE_ERROR.lock().take().unwrap_or(ProcError::Errno(-r)));
    }
    Ok(r as u32)
}

/// Tears down every mapping and table of `p`, drops its pages' mappings
/// and references (freeing what nobody else holds) and its ASID.
fn teardown(p: &Process) {
    deactivate(p);
    let mut vmas = p.mm.mmap_write_lock();
    let ptl = p.mm.page_table_lock_guard();
    let mut mem = p.tables.lock();
    // Every page, block and table below the root goes, each after the
    // ASID flush that covers it (Linux `exit_mmap`, fullmm mmu_gather).
    memory::exit_mmap(&ptl, &p.mm, &mut mem);
    // One at a time: exit allocates nothing.
    loop {
        let Some(s) = vmas.iter().map(|v| v.start).next() else { break };
        vmas.remove(s);
    }
    mem.free(p.mm.pgd);
    drop(mem);
    drop(ptl);
    drop(vmas);
    // Every file descriptor closes (after the VMAs: the last one frees a
    // file nothing maps any more).
    let fds = core::mem::take(&mut *p.fds.lock());
    for id in fds.into_iter().flatten() {
        crate::mm::shmem::vma_put(id);
    }
    // Drops anything left for this ASID, then frees it.
    context::release(&p.mm.asid_slot);
    // Still under the mmap write lock: no snapshot of this mm can race it.
    debug_table::unregister(&p.mm);
}

/// `P exit`: P makes the `exit_group(0)` system call from EL0; the kernel
/// tears its address space down and leaves its status for the parent's
/// `wait4`.
pub fn exit(name: &str) -> Result<(), ProcError> {
    let code = with_proc(name, |p| {
        let regs = agent_regs(p, &[op::SYSCALL], syscall::nr::EXIT_GROUP);
        match *p.exit_code.lock() {
            Some(c) => Ok(c),
            None => Err(ProcError::AgentLost { esr: regs.esr }),
        }
    })?;
    exit_process(name, code);
    Ok(())
}

/// Removes `name` from the process table, tears it down and leaves
/// `(pid, code)` for its parent.
fn exit_process(name: &str, code: i32) {
    // Its other threads end first (Linux exit_group's zap_other_threads).
    let _ = with_proc(name, |p| {
        sched::kill_all(p);
        Ok(())
    });
    let Some(p) = PROCS.lock().remove(name) else { return };
    teardown(&p);
    if p.ppid != 0
        && let Some(parent) = PROCS.lock().values().find(|q| q.pid == p.ppid)
    {
        parent.zombies.lock().push((p.pid, code));
    }
}

/// Whether `ppid` has a live child (`pid` -1: any).
pub(crate) fn has_child(ppid: u32, pid: i64) -> bool {
    PROCS.lock().values().any(|q| q.ppid == ppid && (pid == -1 || q.pid as i64 == pid))
}

/// Faults `name` has handed to `handle_mm_fault` (for the benchmarks).
pub fn fault_count(name: &str) -> u64 {
    with_proc(name, |p| Ok(p.stats.faults.load(Ordering::Relaxed))).unwrap_or(0)
}

/// Calls `f` for every process (for `invariants`), with the table lock held.
pub fn for_each_process(mut f: impl FnMut(&Process)) {
    for p in PROCS.lock().values() {
        f(p);
    }
}

/// `ps`: a header and one line per process, from the process table itself
/// (gdb's `pl-procs` prints the same columns from [`debug_table`], plus CPU).
pub fn ps() -> String {
    use core::fmt::Write;
    let mut o = String::from("  PID  PPID NAME             PGD                ASID    GEN  VMAS\n");
    let mut all: Vec<(u32, String)> = Vec::new();
    for_each_process(|p| {
        let slot = p.mm.asid_slot.load(Ordering::Relaxed);
        let nvmas = p.mm.mmap_read_lock().vmas().iter().count();
        let line = alloc::format!(
            "{:>5} {:>5} {:<16} {:#018x} {:#06x} {:>4} {:>5}",
            p.pid,
            p.ppid,
            p.name,
            p.mm.pgd.as_u64(),
            slot & 0xffff,
            slot >> 16,
            nvmas
        );
        all.push((p.pid, line));
    });
    all.sort();
    for (_, l) in all {
        let _ = writeln!(o, "{l}");
    }
    o
}

/// `P maps`: `name`'s VMAs, one [`Vma::maps_line`] each (gdb's `pl-vmas`
/// prints the same lines from [`debug_table`]).
/// `P maps`: one line per VMA and a count, handed to `out` line by line
/// (up to 65,530 VMAs: nothing is gathered on the heap).
pub fn maps(name: &str, out: &mut dyn FnMut(core::fmt::Arguments<'_>)) -> Result<(), ProcError> {
    with_proc(name, |p| {
        let g = p.mm.mmap_read_lock();
        for v in g.vmas().iter() {
            out(format_args!("{}\n", v.maps_line(PAGE_SIZE)));
        }
        out(format_args!("{} VMAs\n", g.vmas().iter().count()));
        Ok(())
    })
}

/// `P wait`: P makes `wait4(-1, &status, WNOHANG)` from EL0 (status on its
/// stack); returns the reaped child's pid, 0 if none exited yet.
pub fn wait(name: &str) -> Result<i64, ProcError> {
    syscall(name, syscall::nr::WAIT4, [u64::MAX, 0, 1, 0, 0, 0])
}

pub(crate) fn with_proc<R>(name: &str, f: impl FnOnce(&Process) -> Result<R, ProcError>) -> Result<R, ProcError> {
    // The process stays in the table (boxed, so its address is stable); the
    // table lock is not held while it runs, so the fault path can find it.
    let ptr: *const Process = {
        let g = PROCS.lock();
        &**g.get(name).ok_or(ProcError::NoSuchProcess)? as *const Process
    };
    // SAFETY: processes are only removed by `exit_process`, which the
    // console (or a test) runs on its own CPU, never concurrently with
    // another command, and only after every task of the process is done.
    f(unsafe { &*ptr })
}

/// `P mmap R SIZE ...`: maps memory as `a` says and names it `region`.
pub fn mmap(name: &str, region: &str, a: MmapArgs) -> Result<VirtAddr, ProcError> {
    with_proc(name, |p| {
        if p.regions.lock().contains_key(region) {
            return Err(ProcError::RegionExists);
        }
        // The region's insert cannot fail softly: room for it before mapping.
        crate::mm::error::heap_headroom(0)?;
        let (va, size) = mmap::do_mmap(p.mt(), &a)?;
        p.regions.lock().insert(region.to_string(), Region { va, size });
        Ok(va)
    })
}

/// `P munmap RANGE`: [`mmap::do_munmap`]; a region unmapped completely is
/// forgotten.
pub fn munmap(name: &str, va: VirtAddr, len: u64) -> Result<(), ProcError> {
    with_proc(name, |p| Ok(munmap_p(p, va, len)?))
}

pub(crate) fn munmap_p(p: &Process, va: VirtAddr, len: u64) -> Result<(), MmError> {
    mmap::do_munmap(p.mt(), va, len)?;
    p.regions.lock().retain(|_, r| !(r.va >= va && r.va + r.size <= va + len));
    Ok(())
}

/// The reverse map's way from an mm (its key, the pgd) to the process
/// that owns it ([`crate::mm::rmap::MmResolver`]).
fn resolve_mm(key: u64, f: &mut dyn FnMut(MmTables<'_>)) {
    let ptr = PROCS.lock().values().find(|p| p.mm.pgd.as_u64() == key).map(|p| &**p as *const Process);
    if let Some(ptr) = ptr {
        // SAFETY: as in `with_proc`: processes are only removed by
        // `exit_process`, never concurrently with a console command (a
        // migration is one), and the box keeps the address stable.
        f(unsafe { &*ptr }.mt());
    }
}

/// `P migrate RANGE` ([`crate::mm::migrate::migrate_range`]): the pages moved.
pub fn migrate(name: &str, va: VirtAddr, len: u64) -> Result<u64, ProcError> {
    with_proc(name, |p| Ok(crate::mm::migrate::migrate_range(p.mt(), va, len)?))
}

/// `P madvise RANGE dontneed|pageout|hugepage|nohugepage|collapse` ([`madvise::do_madvise`]).
pub fn madvise(name: &str, va: VirtAddr, len: u64, advice: madvise::Advice) -> Result<(), ProcError> {
    with_proc(name, |p| Ok(madvise::do_madvise(p.mt(), va, len, advice)?))
}

/// `P mprotect RANGE prot=...` ([`mprotect::do_mprotect`]).
pub fn mprotect(name: &str, va: VirtAddr, len: u64, readable: bool, writable: bool) -> Result<(), ProcError> {
    with_proc(name, |p| Ok(mprotect::do_mprotect(p.mt(), va, len, readable, writable)?))
}

/// Why an EL0 fault could not be resolved (what Linux would signal).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Unresolved {
    /// No VMA covers the address (SIGSEGV, SEGV_MAPERR).
    NoMapping = 1,
    /// The VMA does not allow the access (SIGSEGV, SEGV_ACCERR).
    Permission = 2,
    /// The fault path ran out of memory (VM_FAULT_OOM).
    OutOfMemory = 3,
    /// The VMA has no page for the address (a PFN mapping's hole, past
    /// the end of a file: SIGSEGV/SIGBUS).
    NoPage = 4,
    /// Not a fault the kernel resolves (alignment, external abort,
    /// instruction abort, ...).
    NotHandled = 5,
}

impl Unresolved {
    fn from_u8(v: u8) -> Self {
        match v {
            1 => Unresolved::NoMapping,
            2 => Unresolved::Permission,
            3 => Unresolved::OutOfMemory,
            4 => Unresolved::NoPage,
            _ => Unresolved::NotHandled,
        }
    }
}

impl core::fmt::Display for Unresolved {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str(match self {
            Unresolved::NoMapping => "no mapping",
            Unresolved::Permission => "permission",
            Unresolved::OutOfMemory => "out of memory",
            Unresolved::NoPage => "no page to map there",
            Unresolved::NotHandled => "not a fault the kernel resolves",
        })
    }
}

/// How an agent command ended.
#[derive(Debug)]
pub enum RunEnd {
    Done,
    Mismatch {
        addr: VirtAddr,
        value: u8,
    },
    /// An exception the kernel could not resolve (a SIGSEGV in Linux terms),
    /// and why.
    Fault {
        addr: VirtAddr,
        esr: u64,
        why: Unresolved,
    },
    Other {
        esr: u64,
    },
}

/// Runs one agent command in `p` at EL0 (x0..x4 as the agent expects).
fn run_agent(p: &Process, x: [u64; 5]) -> RunEnd {
    let t = sched::spawn(p, agent_frame(&x, 0), sched::console_affinity());
    let regs = sched::wait(&t);
    match run_end(&regs) {
        RunEnd::Fault { addr, esr, .. } => {
            RunEnd::Fault { addr, esr, why: Unresolved::from_u8(t.unresolved.load(Ordering::Acquire)) }
        }
        end => end,
    }
}

/// Starts the agent in `p` with `x` in x0.. and `x8` in x8, runs it until
/// it ends the command, and returns its final registers.
fn agent_regs(p: &Process, x: &[u64], x8: u64) -> TrapFrame {
    run_regs(p, UserRun { kctx: Default::default(), regs: agent_frame(x, x8) })
}

/// The EL0 registers that start an agent command (`x` in x0.., x8).
pub(crate) fn agent_frame(x: &[u64], x8: u64) -> TrapFrame {
    let mut regs = TrapFrame::default();
    regs.x[..x.len()].copy_from_slice(x);
    regs.x[8] = x8;
    regs.elr = AGENT_VA;
    regs
}

/// How an agent command ended, from its final registers.
pub(crate) fn run_end(regs: &TrapFrame) -> RunEnd {
    let esr = Esr(regs.esr);
    match esr.ec() {
        ExceptionClass::Svc64 if esr.imm16() == user::SVC_DONE => match regs.x[0] {
            0 => RunEnd::Done,
            1 => RunEnd::Mismatch { addr: VirtAddr::new(regs.x[1]), value: regs.x[5] as u8 },
            _ => RunEnd::Other { esr: regs.esr },
        },
        // The reason is the task's ([`run_agent`] fills it in).
        ExceptionClass::DataAbortLowerEl | ExceptionClass::InstructionAbortLowerEl => {
            RunEnd::Fault { addr: VirtAddr::new(regs.far), esr: regs.esr, why: Unresolved::NotHandled }
        }
        _ => RunEnd::Other { esr: regs.esr },
    }
}

/// Runs `run` at EL0 in `p` as a task of its own (on the CPU
/// [`sched::console_affinity`] picks) until the agent ends it; returns the
/// final registers.
fn run_regs(p: &Process, run: UserRun) -> TrapFrame {
    let t = sched::spawn(p, run.regs, sched::console_affinity());
    sched::wait(&t)
}

/// Agent access over `[va, va+len)`.
pub fn access(name: &str, opcode: u64, va: VirtAddr, len: u64, byte: u8) -> Result<RunEnd, ProcError> {
    with_proc(name, |p| {
        let x = match opcode {
            op::WRITE | op::CHECK => [opcode, va.as_u64(), len, byte as u64, 0],
            _ => [opcode, va.as_u64(), len.div_ceil(PAGE_SIZE), 0, PAGE_SIZE],
        };
        Ok(run_agent(p, x))
    })
}

/// One access (`TOUCH_READ`/`TOUCH_WRITE`/`STORE`) every `stride` bytes,
/// `count` times, from `va` (the benchmarks' THP loop: one per block).
pub fn access_stride(name: &str, opcode: u64, va: VirtAddr, count: u64, stride: u64) -> Result<RunEnd, ProcError> {
    with_proc(name, |p| Ok(run_agent(p, [opcode, va.as_u64(), count, 0, stride])))
}

/// Runs the agent's `SYSCALL_LOOP`: `count` system calls `nr` in a row.
pub fn syscall_loop(name: &str, nr: u64, count: u64) -> Result<RunEnd, ProcError> {
    with_proc(name, |p| Ok(run_end(&agent_regs(p, &[op::SYSCALL_LOOP, count], nr))))
}

/// The table level that maps `va` in `name` (None: not mapped).
pub fn mapped_level(name: &str, va: VirtAddr) -> Option<u32> {
    with_tables(name, |_, t| match t.translate(va) {
        crate::mm::pgtable::Translation::Mapped { level, .. } => Some(level),
        _ => None,
    })
    .ok()
    .flatten()
}

/// Runs the agent's `SPIN` command in `name`: x3..x30 = `seed` + n, then
/// `iterations` turns of a loop at EL0. Returns the registers at its end, for
/// the caller to check that nothing (an IRQ taken at EL0) disturbed them.
pub fn spin(name: &str, seed: u64, iterations: u64) -> Result<TrapFrame, ProcError> {
    if iterations == 0 {
        return Err(ProcError::Invalid);
    }
    with_proc(name, |p| Ok(agent_regs(p, &[op::SPIN, seed, iterations], 0)))
}

/// An abort from EL0 (from `el0t_64_sync_handler`): a data abort is
/// demand-filled and retried; what cannot be resolved, and every
/// instruction abort, ends the run with the reason.
pub fn do_el0_abort(frame: &mut TrapFrame, esr: Esr) {
    let why = if esr.ec() == ExceptionClass::DataAbortLowerEl {
        match handle_user_fault(VirtAddr::new(frame.far), esr) {
            Ok(()) => return, // resolved: back to EL0, the access is retried
            Err(why) => why,
        }
    } else {
        Unresolved::NotHandled
    };
    sched::set_unresolved(why);
    user::return_to_kernel(frame)
}

/// `svc` from EL0 (from `el0t_64_sync_handler`): `svc #0` is a system call;
/// any other immediate, or no current process, ends the run.
pub fn do_el0_svc(frame: &mut TrapFrame, esr: Esr) {
    if esr.imm16() == 0
        && let Some(p) = sched::current_process()
    {
        if matches!(frame.x[8], syscall::nr::EXIT | syscall::nr::EXIT_GROUP) {
            // Never returns to EL0: the run ends and the caller tears
            // the process down.
            *p.exit_code.lock() = Some(frame.x[0] as i32);
            user::return_to_kernel(frame);
        }
        let args = [frame.x[0], frame.x[1], frame.x[2], frame.x[3], frame.x[4], frame.x[5]];
        frame.x[0] = syscall::dispatch(p, frame.x[8], args) as u64;
        return; // back to EL0 after the svc
    }
    user::return_to_kernel(frame)
}

/// An EL1 uaccess (copy_from/to_user) faulted on a user address: fill it
/// like an EL0 fault would be. False means the fixup returns -EFAULT.
pub fn handle_uaccess_fault(far: VirtAddr, esr: Esr) -> bool {
    handle_user_fault(far, esr).is_ok()
}

/// Makes system call `nr` in process `name` through the agent (`svc #0` at
/// EL0) and returns its result.
pub fn syscall(name: &str, nr: u64, args: [u64; 6]) -> Result<i64, ProcError> {
    with_proc(name, |p| {
        let x = [op::SYSCALL, args[0], args[1], args[2], args[3], args[4], args[5]];
        let regs = agent_regs(p, &x, nr);
        let esr = Esr(regs.esr);
        if esr.ec() == ExceptionClass::Svc64 && esr.imm16() == user::SVC_DONE && regs.x[0] == 2 {
            Ok(regs.x[1] as i64)
        } else {
            Err(ProcError::AgentLost { esr: regs.esr })
        }
    })
}

/// The fault entry (Linux `do_page_fault` for a user address): finds the
/// VMA, checks the access against it and hands the fault to
/// [`memory::handle_mm_fault`]. Translation faults (a hole) and permission
/// faults (a read-only entry: COW, zero page) are handled at every level.
fn handle_user_fault(far: VirtAddr, esr: Esr) -> Result<(), Unresolved> {
    let Some(p) = sched::current_process() else { return Err(Unresolved::NotHandled) };
    if !matches!(
        esr.fault_status(),
        Some(FaultStatus::Translation(_) | FaultStatus::Permission(_) | FaultStatus::AccessFlag(_))
    ) {
        return Err(Unresolved::NotHandled);
    }
    let g = p.mm.mmap_read_lock();
    let Some(vma) = g.vmas().find(far).copied() else { return Err(Unresolved::NoMapping) };
    let write = esr.wnr() && !esr.cm();
    if !memory::vma_access_permitted(&vma, write) {
        return Err(Unresolved::Permission);
    }
    let flags = memory::FaultFlags { write, unshare: false };
    p.stats.faults.fetch_add(1, Ordering::Relaxed);
    loop {
        match memory::handle_mm_fault(p.mt(), &vma, far, flags) {
            memory::VmFault::Done => return Ok(()),
            memory::VmFault::Oom if direct_reclaim() => {}
            memory::VmFault::Oom => return Err(Unresolved::OutOfMemory),
            memory::VmFault::Sigsegv => return Err(Unresolved::NoPage),
        }
    }
}

/// After a fault or GUP found no frame (every page-table lock dropped):
/// direct reclaim over every process if memory is really short
/// ([`vmscan::should_reclaim`]). True when something was freed and the
/// caller should retry; false means out of memory.
#[cold]
#[inline(never)]
pub(crate) fn direct_reclaim() -> bool {
    use crate::mm::vmscan;
    vmscan::should_reclaim()
        && vmscan::try_to_free_pages(&mut |f| {
            for_each_process(|q| f(q.mt()));
        }) > 0
}

/// Runs `f` with read access to `name`'s tables and its mmap lock.
pub fn with_tables<R>(name: &str, f: impl FnOnce(&Process, &Tables<'_, FrameTableMem>) -> R) -> Result<R, ProcError> {
    with_proc(name, |p| {
        let _g = p.mm.mmap_read_lock();
        let mut mem = p.tables.lock();
        let t = Tables::new(p.mm.pgd, GRANULE, USER_START_LEVEL, &mut *mem);
        Ok(f(p, &t))
    })
}

/// Runs `f` with `name`'s address space live in TTBR0 (for `AT`).
pub fn with_ttbr0<R>(name: &str, f: impl FnOnce() -> R) -> Result<R, ProcError> {
    with_proc(name, |p| {
        let _irq = cpu::local_irq_save();
        // SAFETY: only AT runs meanwhile; nothing executes from TTBR0.
        unsafe { activate(p) };
        let r = f();
        Ok(r)
    })
}

/// Makes `p` the address space in TTBR0 (with a current-generation ASID),
/// if it is not already.
///
/// # Safety
/// Nothing may run from TTBR0 addresses while it changes.
pub(crate) unsafe fn activate(p: &Process) {
    // SAFETY: guaranteed by the caller; the tables are complete.
    unsafe { context::switch_to(&p.mm.asid_slot, p.mm.pgd.as_u64(), crate::arch::aarch64::sysreg::ttbr0_el1()) };
}

/// Before `p`'s tables are freed: TTBR0 must not keep pointing at them
/// on any CPU (the walker may still fetch from TTBR0 speculatively). Only
/// the console's CPU keeps an address space after a run ([`sched`]); the
/// others have left it before they report their task done.
fn deactivate(p: &Process) {
    if crate::arch::aarch64::sysreg::ttbr0_el1() & 0x0000_ffff_ffff_fffe == p.mm.pgd.as_u64() {
        deactivate_this_cpu();
    }
    if !crate::irq::wait_until(1000, || !context::active_elsewhere(&p.mm.asid_slot)) {
        log::error!("{}: its address space is still live on another CPU", p.name);
    }
}

/// Points this CPU's TTBR0 at the empty table.
pub(crate) fn deactivate_this_cpu() {
    let (_, empty) = kernel_pgtable::roots();
    // SAFETY: the kernel never runs from TTBR0.
    unsafe { context::switch_to_empty(empty.as_u64()) };
}

/// Pages GUP takes between two calls of its `stop` check.
const GUP_CHUNK: u64 = 1024;

/// `P pin N RANGE ...` / `P ref N RANGE`: GUP on P's pages, kept as
/// handle `handle`. `stop` runs between pieces of [`GUP_CHUNK`] pages (the
/// console's Ctrl-C); its error ends the command with nothing taken.
/// Returns (pages taken, of which by the fast path).
pub fn gup(
    name: &str,
    handle: &str,
    va: VirtAddr,
    len: u64,
    flags: crate::mm::gup::Foll,
    fast: bool,
    stop: &dyn Fn() -> Result<(), GupError>,
) -> Result<(usize, usize), ProcError> {
    use crate::mm::gup;
    if gup::handle_exists(handle) {
        return Err(GupError::HandleExists.into());
    }
    with_proc(name, |p| Ok(gup_in(p, handle, va, len, flags, fast, stop)?))
}

fn gup_in(
    p: &Process,
    handle: &str,
    va: VirtAddr,
    len: u64,
    flags: crate::mm::gup::Foll,
    fast: bool,
    stop: &dyn Fn() -> Result<(), GupError>,
) -> Result<(usize, usize), GupError> {
    use crate::mm::gup;
    let nr = len.div_ceil(PAGE_SIZE);
    let va = va.align_down(PAGE_SIZE);
    // A handle keeps one entry per page: more pages than the machine has
    // cannot be held (and would take time per page to find out).
    let managed = crate::mm::frame::stats().managed;
    if nr > managed {
        return Err(GupError::TooManyPages { nr, managed });
    }
    let release_all = |v: Vec<gup::Taken>| {
        for t in v {
            gup::release(t, flags.pin);
        }
    };
    let mut pages: Vec<gup::Taken> = Vec::new();
    let mut nfast = 0;
    let mut done = 0;
    while done < nr {
        if done > 0
            && let Err(e) = stop()
        {
            release_all(pages);
            return Err(e);
        }
        let n = (nr - done).min(GUP_CHUNK);
        let (chunk, f) = match gup_chunk(p, va + done * PAGE_SIZE, n, flags, fast) {
            Ok(c) => c,
            Err(e) => {
                release_all(pages);
                return Err(e);
            }
        };
        if crate::mm::error::try_reserve(&mut pages, chunk.len()).is_err() {
            release_all(chunk);
            release_all(pages);
            return Err(GupError::NoMemory);
        }
        pages.extend(chunk);
        nfast += f;
        done += n;
    }
    let n = pages.len();
    // The handle table's insert cannot fail softly: room for it first.
    if crate::mm::error::heap_headroom(0).is_err() {
        release_all(pages);
        return Err(GupError::NoMemory);
    }
    if let Err(h) = gup::add_handle(handle, gup::Handle { pin: flags.pin, pages }) {
        release_all(h.pages);
        return Err(GupError::HandleExists);
    }
    Ok((n, nfast))
}

/// GUP of `nr` pages from `va`: the fast path first if `fast`, the slow
/// path for the rest. Returns (pages, of which by the fast path); on an
/// error nothing is left taken.
fn gup_chunk(
    p: &Process,
    va: VirtAddr,
    nr: u64,
    flags: crate::mm::gup::Foll,
    fast: bool,
) -> Result<(Vec<crate::mm::gup::Taken>, usize), GupError> {
    use crate::mm::gup;
    let mut pages = if fast { gup::gup_fast(p.mt(), va, nr, flags) } else { Vec::new() };
    let nfast = pages.len();
    if (pages.len() as u64) < nr {
        let g = p.mm.mmap_read_lock();
        let start = va + pages.len() as u64 * PAGE_SIZE;
        let more = gup::get_user_pages(p.mt(), &g, start, nr - pages.len() as u64, flags).and_then(|more| {
            match crate::mm::error::try_reserve(&mut pages, more.len()) {
                Ok(()) => Ok(more),
                Err(_) => {
                    for t in more {
                        gup::release(t, flags.pin);
                    }
                    Err(GupError::NoMemory)
                }
            }
        });
        match more {
            Ok(more) => pages.extend(more),
            Err(e) => {
                for t in pages {
                    gup::release(t, flags.pin);
                }
                return Err(e);
            }
        }
    }
    Ok((pages, nfast))
}

/// For tests: a VMA of `size` bytes with exactly `flags`, nothing mapped.
pub(crate) fn vma_for_test(name: &str, size: u64, flags: VmFlags) -> Result<VirtAddr, ProcError> {
    with_proc(name, |p| {
        let va = VirtAddr::new(p.mm.free_area.load(Ordering::Relaxed)).align_up(PAGE_SIZE);
        let end = va + align_up(size, PAGE_SIZE);
        if !p.mm.mmap_write_lock().insert(Vma { start: va, end, flags, folio_order: 0, file: 0, pgoff: 0, anon_vma: 0 })
        {
            return Err(MmError::Overlap { addr: va }.into());
        }
        p.mm.free_area.store((end + PAGE_SIZE).as_u64(), Ordering::Relaxed);
        Ok(va)
    })
}

/// Runs `f` with `name`'s address space and its mmap lock held for write.
pub(crate) fn with_mm_write<R>(
    name: &str,
    f: impl FnOnce(&Process, &mut crate::mm::mm_struct::MmapWriteGuard<'_>) -> R,
) -> Result<R, ProcError> {
    with_proc(name, |p| {
        let mut g = p.mm.mmap_write_lock();
        Ok(f(p, &mut g))
    })
}
