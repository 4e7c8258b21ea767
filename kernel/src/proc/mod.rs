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
use alloc::vec::Vec;
use core::sync::atomic::{AtomicPtr, AtomicU64, Ordering};

use spin::Mutex;

pub mod asid;
pub mod syscall;

use crate::arch::aarch64::cpu;
use crate::arch::aarch64::esr::{Esr, ExceptionClass, FaultStatus};
use crate::arch::aarch64::exception::TrapFrame;
use crate::arch::aarch64::user::{self, op, UserRun};
use crate::mm::addr::{PhysAddr, VirtAddr};
use crate::mm::desc::{Kind, LeafAttrs};
use crate::mm::frame::{self, Owner};
use crate::mm::granule::{align_up, GRANULE, PAGE_SIZE, START_LEVEL};
use crate::mm::kmap::{self, FrameTableMem};
use crate::mm::mm_struct::{MmStruct, MmapLocked, Vma, VmFlags};
use crate::mm::pgtable::live::Live;
use crate::mm::pgtable::{LeafSizes, TableMemory, Tables};
use crate::mm::tlb::KernelFlush;

/// Where every process sees the agent.
pub const AGENT_VA: u64 = 0x40_0000;
/// First address handed out by `mmap`.
pub const MMAP_BASE: u64 = 0x10_0000_0000;
pub const USER_TOP: u64 = 1 << 47;

pub struct Region {
    pub va: u64,
    pub size: u64,
}

pub struct Process {
    pub name: String,
    pub pid: u32,
    pub mm: MmStruct,
    pub(crate) tables: Mutex<FrameTableMem>,
    pub regions: Mutex<BTreeMap<String, Region>>,
    next_va: AtomicU64,
}

static PROCS: Mutex<BTreeMap<String, Box<Process>>> = Mutex::new(BTreeMap::new());
static NEXT_PID: AtomicU64 = AtomicU64::new(1);
/// The process running at EL0 (the fault handler's `current`).
static CURRENT: AtomicPtr<Process> = AtomicPtr::new(core::ptr::null_mut());

fn user_attrs(vma: &Vma) -> LeafAttrs {
    LeafAttrs {
        el0: true,
        writable: vma.flags.contains(VmFlags::WRITE),
        kexec: false,
        uexec: vma.flags.contains(VmFlags::EXEC),
        ng: true,
        ..LeafAttrs::KERNEL_RW
    }
}

pub fn exists(name: &str) -> bool {
    PROCS.lock().contains_key(name)
}

pub fn names() -> Vec<String> {
    PROCS.lock().keys().cloned().collect()
}

/// `spawn P`: a new process with an empty address space and the agent.
pub fn spawn(name: &str) -> Result<(), String> {
    if exists(name) {
        return Err(alloc::format!("process `{name}` already exists"));
    }
    let mut mem = FrameTableMem { tables: 0 };
    let Some(root) = mem.alloc_table() else {
        return Err("out of memory for page tables".into());
    };
    let p = Box::new(Process {
        name: name.to_string(),
        pid: NEXT_PID.fetch_add(1, Ordering::Relaxed) as u32,
        mm: MmStruct::new(root, 0), // an ASID is handed out when it first runs
        tables: Mutex::new(mem),
        regions: Mutex::new(BTreeMap::new()),
        next_va: AtomicU64::new(MMAP_BASE),
    });
    // The agent: kernel text pages, special (no struct-page semantics), EL0 RX.
    let (lo, hi) = user::agent_range();
    let agent = Vma { start: AGENT_VA, end: AGENT_VA + (hi - lo), flags: VmFlags::READ | VmFlags::EXEC | VmFlags::PFNMAP };
    p.mm.mmap_write_lock().insert(agent);
    let attrs = LeafAttrs { special: true, ..user_attrs(&agent) };
    let r = {
        let mut mem = p.tables.lock();
        let mut t = Tables::new(root, GRANULE, START_LEVEL, &mut *mem);
        t.map(VirtAddr(AGENT_VA), kmap::kimage_to_phys(lo), hi - lo, attrs, LeafSizes::PagesOnly)
    };
    if let Err(e) = r {
        teardown(&p);
        return Err(alloc::format!("mapping the agent: {e:?}"));
    }
    PROCS.lock().insert(name.to_string(), p);
    Ok(())
}

/// Tears down every mapping and table of `p`, frees its anon frames and ASID.
fn teardown(p: &Process) {
    deactivate(p);
    let mut vmas = p.mm.mmap_write_lock();
    let all: Vec<Vma> = vmas.iter().copied().collect();
    let mut mem = p.tables.lock();
    // Anon frames first (special entries - the agent - are not ours to
    // free). Freed during the walk: collecting them would need memory, and a
    // process being torn down may have taken nearly all of it. Freeing before
    // the TLB flush is safe here because nothing runs with this ASID again
    // until `tlbi aside1is` below has completed and the ASID is released.
    {
        let t = Tables::new(p.mm.pgd, GRANULE, START_LEVEL, &mut *mem);
        t.walk(false, &mut |e| {
            if let Kind::Leaf(pa) = e.kind {
                if !e.desc.special() {
                    let order = (e.size / PAGE_SIZE).trailing_zeros();
                    let _ = frame::free(pa, order, Owner::UserAnon);
                }
            }
        });
    }
    let detached = {
        let mut t = Tables::new(p.mm.pgd, GRANULE, START_LEVEL, &mut *mem);
        let mut fl = KernelFlush;
        let mut l = Live::new(&mut t, Some(p.mm.asid()), &mut fl);
        for v in &all {
            let _ = l.unmap(v.start, v.end - v.start);
        }
        l.finish()
    };
    for pa in detached.0 {
        mem.free(pa);
    }
    for v in all {
        vmas.remove(v.start);
    }
    mem.free(p.mm.pgd);
    // Drops anything left for this ASID, then frees it.
    asid::release(&p.mm.asid_slot);
}

/// `P exit`.
pub fn exit(name: &str) -> Result<(), String> {
    let p = PROCS.lock().remove(name).ok_or_else(|| alloc::format!("no process named `{name}`"))?;
    teardown(&p);
    Ok(())
}

fn with_proc<R>(name: &str, f: impl FnOnce(&Process) -> Result<R, String>) -> Result<R, String> {
    // The process stays in the table (boxed, so its address is stable); the
    // table lock is not held while it runs, so the fault path can find it.
    let ptr: *const Process = {
        let g = PROCS.lock();
        &**g.get(name).ok_or_else(|| alloc::format!("no process named `{name}`"))? as *const Process
    };
    // SAFETY: processes are only removed by `exit`, which the single console
    // thread never runs concurrently with another command.
    f(unsafe { &*ptr })
}

pub struct MmapArgs {
    pub size: u64,
    pub writable: bool,
    pub readable: bool,
    pub align: u64,
}

/// `P mmap R SIZE ...` (anonymous private memory in this slice).
pub fn mmap(name: &str, region: &str, a: MmapArgs) -> Result<u64, String> {
    with_proc(name, |p| {
        if p.regions.lock().contains_key(region) {
            return Err(alloc::format!("region `{region}` already exists in `{name}`"));
        }
        let (va, size) = mmap_anon(p, &a)?;
        p.regions.lock().insert(region.to_string(), Region { va, size });
        Ok(va)
    })
}

/// Creates an anonymous private VMA of `a.size` bytes; returns (va, size).
pub(crate) fn mmap_anon(p: &Process, a: &MmapArgs) -> Result<(u64, u64), String> {
    {
        if a.size == 0 {
            return Err("size must be > 0".into());
        }
        if a.size > USER_TOP {
            return Err("size larger than the address space".into());
        }
        let size = align_up(a.size, PAGE_SIZE);
        let align = a.align.max(PAGE_SIZE);
        let va = align_up(p.next_va.load(Ordering::Relaxed), align);
        let end = va.checked_add(size).filter(|&e| e <= USER_TOP).ok_or("out of address space")?;
        let mut flags = VmFlags(0);
        if a.readable {
            flags = flags | VmFlags::READ;
        }
        if a.writable {
            flags = flags | VmFlags::WRITE | VmFlags::READ;
        }
        if !p.mm.mmap_write_lock().insert(Vma { start: va, end, flags }) {
            return Err("overlapping mapping".into());
        }
        // Leave a guard gap between regions.
        p.next_va.store(end + PAGE_SIZE, Ordering::Relaxed);
        Ok((va, size))
    }
}

/// Zaps `[va, va+len)` in `p`'s tables: unmaps with BBM and the ASID's TLB
/// flush, frees the tables left empty and, after the flush, the anon frames.
/// VMAs are not touched (Linux `zap_page_range`).
fn zap(p: &Process, va: u64, len: u64) -> Result<(), String> {
    let mut mem = p.tables.lock();
    // Frames go back only after the flush (stale TLB entries could still
    // reach them), so they are listed first; a list that cannot grow is an
    // error, not a panic.
    let mut frames: Vec<PhysAddr> = Vec::new();
    {
        let t = Tables::new(p.mm.pgd, GRANULE, START_LEVEL, &mut *mem);
        let mut off = 0;
        while off < len {
            if let crate::mm::pgtable::Translation::Mapped { pa, desc, .. } = t.translate(VirtAddr(va + off)) {
                if !desc.special() {
                    frames.try_reserve(1).map_err(|_| String::from("out of memory while unmapping"))?;
                    frames.push(PhysAddr(pa.0 & !(PAGE_SIZE - 1)));
                }
            }
            off += PAGE_SIZE;
        }
    }
    let detached = {
        let mut t = Tables::new(p.mm.pgd, GRANULE, START_LEVEL, &mut *mem);
        let mut fl = KernelFlush;
        let mut l = Live::new(&mut t, Some(p.mm.asid()), &mut fl);
        let r = l.unmap(va, len).map_err(|e| alloc::format!("{e:?}"));
        let d = l.finish();
        r.map(|_| d)
    }?;
    for pa in detached.0 {
        mem.free(pa);
    }
    for pa in frames {
        let _ = frame::free(pa, 0, Owner::UserAnon);
    }
    Ok(())
}

fn check_user_range(va: u64, len: u64) -> Result<(), String> {
    if va % PAGE_SIZE != 0 || len % PAGE_SIZE != 0 || len == 0 {
        return Err(alloc::format!("range {va:#x}+{len:#x} is not page aligned"));
    }
    if va.checked_add(len).is_none_or(|e| e > USER_TOP) {
        return Err("range outside the user address space".into());
    }
    Ok(())
}

/// `P munmap RANGE`: removes the VMAs (splitting those cut by the range) and
/// zaps what was mapped. A region unmapped completely is forgotten.
pub fn munmap(name: &str, va: u64, len: u64) -> Result<(), String> {
    with_proc(name, |p| munmap_p(p, va, len))
}

pub(crate) fn munmap_p(p: &Process, va: u64, len: u64) -> Result<(), String> {
    check_user_range(va, len)?;
    {
        {
            let mut vmas = p.mm.mmap_write_lock();
            vmas.split_at(va);
            vmas.split_at(va + len);
            let gone: Vec<u64> = vmas.inside(va, va + len).filter(|v| !v.flags.contains(VmFlags::PFNMAP)).map(|v| v.start).collect();
            zap(p, va, len)?;
            for s in gone {
                vmas.remove(s);
            }
        }
        p.regions.lock().retain(|_, r| !(r.va >= va && r.va + r.size <= va + len));
        Ok(())
    }
}

/// `P madvise RANGE dontneed`: zaps the range; the VMAs stay, so the next
/// touch faults in fresh zero-filled memory.
pub fn madvise_dontneed(name: &str, va: u64, len: u64) -> Result<(), String> {
    check_user_range(va, len)?;
    with_proc(name, |p| {
        let _g = p.mm.mmap_read_lock();
        zap(p, va, len)
    })
}

/// `P mprotect RANGE prot=...`: new VMA flags, and the present entries'
/// permissions changed in place (AP bits only, no BBM needed). `none` keeps
/// pages present for the kernel but EL1-only, so EL0 gets permission faults
/// (Linux keeps PROT_NONE pages `pte_present` too). Every anon page is
/// exclusive until fork exists, so making it writable is always right here.
pub fn mprotect(name: &str, va: u64, len: u64, readable: bool, writable: bool) -> Result<(), String> {
    with_proc(name, |p| mprotect_p(p, va, len, readable, writable))
}

pub(crate) fn mprotect_p(p: &Process, va: u64, len: u64, readable: bool, writable: bool) -> Result<(), String> {
    check_user_range(va, len)?;
    {
        let mut vmas = p.mm.mmap_write_lock();
        // Every page of the range must be in some VMA (Linux: -ENOMEM otherwise).
        let mut a = va;
        while a < va + len {
            let v = vmas.find(a).ok_or_else(|| alloc::format!("{a:#x} is not mapped"))?;
            if v.flags.contains(VmFlags::PFNMAP) {
                return Err("cannot mprotect the agent".into());
            }
            a = v.end;
        }
        vmas.split_at(va);
        vmas.split_at(va + len);
        for v in vmas.inside_mut(va, va + len) {
            let keep = VmFlags(v.flags.0 & !(VmFlags::READ.0 | VmFlags::WRITE.0));
            let mut f = keep;
            if readable || writable {
                f = f | VmFlags::READ;
            }
            if writable {
                f = f | VmFlags::WRITE;
            }
            v.flags = f;
        }
        const RDONLY: u64 = 1 << 7;
        const EL0: u64 = 1 << 6;
        let (set, clear) = match (readable, writable) {
            (_, true) => (EL0, RDONLY),
            (true, false) => (EL0 | RDONLY, 0),
            (false, false) => (RDONLY, EL0),
        };
        let mut mem = p.tables.lock();
        let mut t = Tables::new(p.mm.pgd, GRANULE, START_LEVEL, &mut *mem);
        let mut fl = KernelFlush;
        let mut l = Live::new(&mut t, Some(p.mm.asid()), &mut fl);
        let r = l.protect(va, len, set, clear).map_err(|e| alloc::format!("{e:?}"));
        let d = l.finish();
        drop(t);
        for pa in d.0 {
            mem.free(pa);
        }
        r
    }
}

/// How an agent command ended.
#[derive(Debug)]
pub enum RunEnd {
    Done,
    Mismatch { addr: u64, value: u8 },
    /// An exception the kernel could not resolve (a SIGSEGV in Linux terms).
    Fault { addr: u64, esr: u64 },
    Other { esr: u64 },
}

/// Runs one agent command in `p` at EL0 (x0..x4 as the agent expects).
fn run_agent(p: &Process, x: [u64; 5]) -> RunEnd {
    let mut run = UserRun { kctx: Default::default(), regs: TrapFrame::default() };
    run.regs.x[..5].copy_from_slice(&x);
    run.regs.elr = AGENT_VA;
    let regs = run_regs(p, run);
    let esr = Esr(regs.esr);
    match esr.ec() {
        ExceptionClass::Svc64 if esr.imm16() == user::SVC_DONE => match regs.x[0] {
            0 => RunEnd::Done,
            1 => RunEnd::Mismatch { addr: regs.x[1], value: regs.x[5] as u8 },
            _ => RunEnd::Other { esr: regs.esr },
        },
        ExceptionClass::DataAbortLowerEl | ExceptionClass::InstructionAbortLowerEl => RunEnd::Fault { addr: regs.far, esr: regs.esr },
        _ => RunEnd::Other { esr: regs.esr },
    }
}

/// Runs `run` at EL0 in `p` until the agent ends it; returns the final registers.
fn run_regs(p: &Process, mut run: UserRun) -> TrapFrame {
    run.regs.spsr = 0; // EL0t
    CURRENT.store(p as *const Process as *mut Process, Ordering::Release);
    let daif = cpu::irq_save();
    // SAFETY: the process's tables are complete; nothing of the kernel runs
    // from TTBR0. TTBR0 then stays on this process until another one runs
    // or its tables go away (Linux's lazy active_mm): no switch back, no
    // flush - the ASID keeps translations apart.
    unsafe {
        activate(p);
        user::run_user(&mut run);
    }
    cpu::irq_restore(daif);
    CURRENT.store(core::ptr::null_mut(), Ordering::Release);
    run.regs
}

/// Agent access over `[va, va+len)`.
pub fn access(name: &str, opcode: u64, va: u64, len: u64, byte: u8) -> Result<RunEnd, String> {
    with_proc(name, |p| {
        let x = match opcode {
            op::WRITE | op::CHECK => [opcode, va, len, byte as u64, 0],
            _ => [opcode, va, len.div_ceil(PAGE_SIZE), 0, PAGE_SIZE],
        };
        Ok(run_agent(p, x))
    })
}

/// Runs the agent's `SPIN` command in `name`: x3..x30 = `seed` + n, then
/// `iterations` turns of a loop at EL0. Returns the registers at its end, for
/// the caller to check that nothing (an IRQ taken at EL0) disturbed them.
pub fn spin(name: &str, seed: u64, iterations: u64) -> Result<TrapFrame, String> {
    if iterations == 0 {
        return Err("at least one iteration".into());
    }
    with_proc(name, |p| {
        let mut run = UserRun { kctx: Default::default(), regs: TrapFrame::default() };
        run.regs.x[..3].copy_from_slice(&[op::SPIN, seed, iterations]);
        run.regs.elr = AGENT_VA;
        Ok(run_regs(p, run))
    })
}

/// The EL0 synchronous-exception path (from the vectors): demand-fill
/// anonymous memory, or end the run.
pub fn handle_el0_sync(frame: &mut TrapFrame) {
    let esr = Esr(frame.esr);
    if esr.ec() == ExceptionClass::DataAbortLowerEl && handle_user_fault(frame.far, esr) {
        return; // resolved: back to EL0, the access is retried
    }
    if esr.ec() == ExceptionClass::Svc64 && esr.imm16() == 0 {
        let p = CURRENT.load(Ordering::Acquire);
        if !p.is_null() {
            // SAFETY: CURRENT is the process run_agent is running.
            let p = unsafe { &*p };
            let args = [frame.x[0], frame.x[1], frame.x[2], frame.x[3], frame.x[4], frame.x[5]];
            frame.x[0] = syscall::dispatch(p, frame.x[8], args) as u64;
            return; // back to EL0 after the svc
        }
    }
    user::return_to_kernel(frame)
}

/// An EL1 uaccess (copy_from/to_user) faulted on a user address: fill it
/// like an EL0 fault would be. False means the fixup returns -EFAULT.
pub fn handle_uaccess_fault(far: u64, esr: Esr) -> bool {
    handle_user_fault(far, esr)
}

/// Makes system call `nr` in process `name` through the agent (`svc #0` at
/// EL0) and returns its result.
pub fn syscall(name: &str, nr: u64, args: [u64; 6]) -> Result<i64, String> {
    with_proc(name, |p| {
        let mut run = UserRun { kctx: Default::default(), regs: TrapFrame::default() };
        run.regs.x[0] = op::SYSCALL;
        run.regs.x[1..7].copy_from_slice(&args);
        run.regs.x[8] = nr;
        run.regs.elr = AGENT_VA;
        let regs = run_regs(p, run);
        let esr = Esr(regs.esr);
        if esr.ec() == ExceptionClass::Svc64 && esr.imm16() == user::SVC_DONE && regs.x[0] == 2 {
            Ok(regs.x[1] as i64)
        } else {
            Err(alloc::format!("the agent did not come back from the system call: {esr}"))
        }
    })
}

/// Linux `handle_mm_fault` for this slice: a translation fault in a private
/// anonymous VMA that allows the access gets a zeroed page.
fn handle_user_fault(far: u64, esr: Esr) -> bool {
    let p = CURRENT.load(Ordering::Acquire);
    if p.is_null() || !matches!(esr.fault_status(), Some(FaultStatus::Translation(_))) {
        return false;
    }
    // SAFETY: CURRENT points at the process run_agent is running.
    let p = unsafe { &*p };
    let g = p.mm.mmap_read_lock();
    let Some(vma) = g.vmas().find(far).copied() else { return false };
    let write = esr.wnr();
    if vma.flags.contains(VmFlags::PFNMAP) || (write && !vma.flags.contains(VmFlags::WRITE)) || !vma.flags.contains(VmFlags::READ) {
        return false;
    }
    let Some(pa) = frame::alloc_user_zeroed(0) else { return false };
    let page = far & !(PAGE_SIZE - 1);
    let _ptl = p.mm.page_table_lock_guard();
    let mut mem = p.tables.lock();
    let mut t = Tables::new(p.mm.pgd, GRANULE, START_LEVEL, &mut *mem);
    match t.map(VirtAddr(page), pa, PAGE_SIZE, user_attrs(&vma), LeafSizes::PagesOnly) {
        Ok(_) => {
            // Invalid to valid: no TLBI, only visibility to the walker.
            // SAFETY: barriers only.
            unsafe { core::arch::asm!("dsb ishst", "isb") };
            true
        }
        Err(_) => {
            let _ = frame::free(pa, 0, Owner::UserAnon);
            false
        }
    }
}

/// Resolves `REGION`, `REGION+OFF`, `REGION+OFF:LEN` in process `name`.
pub fn range(name: &str, spec: &str) -> Result<(u64, u64), String> {
    with_proc(name, |p| {
        let (reg, rest) = match spec.split_once('+') {
            Some((r, rest)) => (r, Some(rest)),
            None => (spec, None),
        };
        let regions = p.regions.lock();
        let r = regions.get(reg).ok_or_else(|| alloc::format!("no region `{reg}` in `{name}`"))?;
        let (off, len) = match rest {
            None => (0, r.size),
            Some(rest) => {
                let (o, l) = match rest.split_once(':') {
                    Some((o, l)) => (o, Some(l)),
                    None => (rest, None),
                };
                let off = crate::util::parse_number(o).ok_or_else(|| alloc::format!("bad offset `{o}`"))?;
                let len = match l {
                    Some(l) => crate::util::parse_number(l).ok_or_else(|| alloc::format!("bad length `{l}`"))?,
                    None => PAGE_SIZE,
                };
                (off, len)
            }
        };
        if len == 0 || off.checked_add(len).is_none_or(|e| e > r.size) {
            return Err(alloc::format!("range {off:#x}+{len:#x} is outside region `{reg}` ({:#x} bytes)", r.size));
        }
        Ok((r.va + off, len))
    })
}

/// Runs `f` with read access to `name`'s tables and its mmap lock.
pub fn with_tables<R>(name: &str, f: impl FnOnce(&Process, &Tables<'_, FrameTableMem>) -> R) -> Result<R, String> {
    with_proc(name, |p| {
        let _g = p.mm.mmap_read_lock();
        let mut mem = p.tables.lock();
        let t = Tables::new(p.mm.pgd, GRANULE, START_LEVEL, &mut *mem);
        Ok(f(p, &t))
    })
}

/// Runs `f` with `name`'s address space live in TTBR0 (for `AT`).
pub fn with_ttbr0<R>(name: &str, f: impl FnOnce() -> R) -> Result<R, String> {
    with_proc(name, |p| {
        let daif = cpu::irq_save();
        // SAFETY: only AT runs meanwhile; nothing executes from TTBR0.
        unsafe { activate(p) };
        let r = f();
        cpu::irq_restore(daif);
        Ok(r)
    })
}

/// Makes `p` the address space in TTBR0 (with a current-generation ASID),
/// if it is not already.
///
/// # Safety
/// Nothing may run from TTBR0 addresses while it changes.
unsafe fn activate(p: &Process) {
    let want = p.mm.pgd.0 | ((asid::asid_for(&p.mm.asid_slot) as u64) << 48);
    if ttbr0() != want {
        // SAFETY: guaranteed by the caller.
        unsafe { cpu::switch_ttbr0(want) };
    }
}

fn ttbr0() -> u64 {
    use aarch64_cpu::registers::{Readable, TTBR0_EL1};
    TTBR0_EL1.get()
}

/// Before `p`'s tables are freed: TTBR0 must not keep pointing at them
/// (the walker may still fetch from TTBR0 speculatively).
fn deactivate(p: &Process) {
    if ttbr0() & 0x0000_ffff_ffff_fffe == p.mm.pgd.0 {
        let (_, empty) = kmap::roots();
        // SAFETY: the kernel never runs from TTBR0.
        unsafe { cpu::switch_ttbr0(empty.0) };
    }
}
