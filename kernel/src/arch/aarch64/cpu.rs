//! Small wrappers over single instructions: local TLB maintenance, `AT`,
//! barriers, cache maintenance, the IRQ mask. The broadcast TLBIs mm's
//! flushes use are in [`super::mm::tlbflush`]. System registers with a field layout are used through
//! `aarch64-cpu`; these are the ones that are plain instructions.

use core::arch::asm;

#[inline(always)]
pub fn tpidr_el1() -> u64 {
    let v;
    // SAFETY: reading TPIDR_EL1 has no side effects.
    unsafe { asm!("mrs {}, tpidr_el1", out(reg) v, options(nomem, nostack, preserves_flags)) };
    v
}

#[inline(always)]
pub fn set_tpidr_el1(v: u64) {
    // SAFETY: TPIDR_EL1 is the kernel's own per-CPU pointer register.
    unsafe { asm!("msr tpidr_el1, {}", in(reg) v, options(nomem, nostack, preserves_flags)) };
}

/// The result of an `AT` instruction: PAR_EL1 decoded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AtResult {
    /// Translation succeeded: physical address (with the page offset), and
    /// PAR_EL1's memory attribute byte.
    Ok { pa: u64, attr: u8 },
    /// Translation faulted: the fault status code (same encoding as DFSC)
    /// and whether it was on a stage-2 walk.
    Fault { fst: u8, s2: bool },
}

/// Which translation `AT` performs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AtOp {
    /// `AT S1E1R`: stage 1, EL1 read.
    S1E1R,
    /// `AT S1E1W`: stage 1, EL1 write.
    S1E1W,
    /// `AT S1E0R`: stage 1, EL0 read (permission as EL0 sees it).
    S1E0R,
    /// `AT S1E0W`: stage 1, EL0 write.
    S1E0W,
}

/// Asks the MMU to translate `va`; see [`at_par`].
pub fn at(op: AtOp, va: u64) -> AtResult {
    let par = at_par(op, va);
    if par & 1 == 0 {
        AtResult::Ok { pa: (par & 0x0000_ffff_ffff_f000) | (va & 0xfff), attr: (par >> 56) as u8 }
    } else {
        AtResult::Fault { fst: ((par >> 1) & 0x3f) as u8, s2: par & (1 << 9) != 0 }
    }
}

/// PAR_EL1 after `AT op` on `va`, with interrupts masked so that PAR_EL1
/// cannot be clobbered between the `AT` and its read.
pub fn at_par(op: AtOp, va: u64) -> u64 {
    let par: u64;
    // SAFETY: AT only writes PAR_EL1, which is read back before DAIF is restored.
    unsafe {
        macro_rules! at_asm {
            ($ins:literal) => {
                asm!(
                    "mrs {daif}, daif",
                    "msr daifset, #0xf",
                    concat!("at ", $ins, ", {va}"),
                    "isb",
                    "mrs {par}, par_el1",
                    "msr daif, {daif}",
                    va = in(reg) va, par = out(reg) par, daif = out(reg) _,
                    options(nostack)
                )
            };
        }
        match op {
            AtOp::S1E1R => at_asm!("s1e1r"),
            AtOp::S1E1W => at_asm!("s1e1w"),
            AtOp::S1E0R => at_asm!("s1e0r"),
            AtOp::S1E0W => at_asm!("s1e0w"),
        }
    }
    par
}

/// Cleans the cache line(s) holding `[addr, addr+len)` to the point of
/// coherency, for data another CPU will read with its MMU off.
pub fn dcache_clean_poc(addr: u64, len: u64) {
    let mut a = addr & !63;
    while a < addr + len {
        // SAFETY: cleaning a cache line does not change memory contents.
        unsafe { asm!("dc cvac, {}", in(reg) a, options(nostack, preserves_flags)) };
        a += 64;
    }
    // SAFETY: barrier only.
    unsafe { asm!("dsb sy", options(nostack, preserves_flags)) };
}

/// Makes instructions written through the data side at `[addr, addr+len)`
/// visible to this CPU's instruction fetches, at any VA that maps them:
/// clean to the point of unification, then invalidate the whole local
/// instruction cache (an aliasing one may hold other VAs of the same PA).
pub fn sync_icache_local(addr: u64, len: u64) {
    let mut a = addr & !63;
    while a < addr + len {
        // SAFETY: cleaning a cache line does not change memory contents.
        unsafe { asm!("dc cvau, {}", in(reg) a, options(nostack, preserves_flags)) };
        a += 64;
    }
    // SAFETY: barriers and instruction cache invalidation only.
    unsafe { asm!("dsb ish", "ic iallu", "dsb nsh", "isb", options(nostack, preserves_flags)) };
}

/// Waits for an event.
#[inline(always)]
pub fn wfe() {
    // SAFETY: WFE only waits.
    unsafe { asm!("wfe", options(nomem, nostack, preserves_flags)) };
}

/// Signals an event to all CPUs.
#[inline(always)]
pub fn sev() {
    // SAFETY: SEV only wakes WFE waiters.
    unsafe { asm!("dsb ish", "sev", options(nostack, preserves_flags)) };
}

/// Exceptions masked until it drops, then DAIF as it was before (Linux
/// `local_irq_save`/`local_irq_restore` as one RAII value). Not `Send`: the
/// saved mask belongs to the CPU that took it.
#[must_use = "IRQs are unmasked again when the guard drops"]
pub struct IrqGuard {
    daif: u64,
    _this_cpu: core::marker::PhantomData<*const ()>,
}

/// Masks IRQ, FIQ, SError and debug exceptions until the guard drops.
#[inline(always)]
pub fn local_irq_save() -> IrqGuard {
    let daif: u64;
    // SAFETY: only changes the exception mask.
    unsafe { asm!("mrs {}, daif", "msr daifset, #0xf", out(reg) daif, options(nomem, nostack, preserves_flags)) };
    IrqGuard { daif, _this_cpu: core::marker::PhantomData }
}

impl Drop for IrqGuard {
    #[inline(always)]
    fn drop(&mut self) {
        // SAFETY: restores the mask this CPU had when the guard was taken.
        unsafe { asm!("msr daif, {}", in(reg) self.daif, options(nomem, nostack, preserves_flags)) };
    }
}

/// Masks IRQ, FIQ, SError and debug exceptions for good (panic, exit).
#[inline(always)]
pub fn local_irq_disable() {
    // SAFETY: only changes the exception mask.
    unsafe { asm!("msr daifset, #0xf", options(nomem, nostack, preserves_flags)) };
}

/// `isb`: later instructions see the effect of earlier system-register writes.
#[inline(always)]
pub fn isb() {
    // SAFETY: a barrier only.
    unsafe { asm!("isb", options(nostack, preserves_flags)) };
}

/// Executes a permanently undefined instruction (`udf`), raising an
/// unknown-reason exception on purpose (`pagelab.crash=undefined-instruction`).
pub fn undefined_instruction() {
    // SAFETY: the exception it raises is reported and ends in a panic.
    unsafe { asm!("udf #0x42", options(nostack)) };
}

/// The current frame pointer (x29).
#[inline(always)]
pub fn frame_pointer() -> u64 {
    let fp: u64;
    // SAFETY: reads a register.
    unsafe { asm!("mov {}, x29", out(reg) fp, options(nomem, nostack, preserves_flags)) };
    fp
}

/// Switches TTBR1_EL1 to `root` and invalidates this CPU's TLB.
///
/// No break-before-make is done, so the old and new tables must agree on
/// every VA the CPU may translate in between: same output address, page size
/// and memory type (permissions may differ). `mm::kernel_pgtable` guarantees this by
/// mapping the image with pages in both and keeping the early DTB window out
/// of the final tables.
///
/// # Safety
/// Every VA the CPU is using (code, stack, data) must translate to the same
/// PA with compatible attributes in the new tables.
pub unsafe fn switch_ttbr1(root: u64) {
    // SAFETY: guaranteed by the caller.
    unsafe {
        asm!(
            "dsb ishst",
            "msr ttbr1_el1, {r}",
            "isb",
            "tlbi vmalle1",
            "dsb nsh",
            "isb",
            r = in(reg) root,
            options(nostack, preserves_flags)
        )
    };
}

/// Switches TTBR0_EL1 to `value` (root | ASID << 48) without any TLB
/// maintenance: entries are tagged with their ASID, so another address
/// space's translations cannot match. This is the context-switch path.
///
/// # Safety
/// Nothing may be running from TTBR0 addresses; `value`'s ASID must not
/// have stale entries for a different table (the ASID allocator's job).
pub unsafe fn switch_ttbr0(value: u64) {
    // SAFETY: guaranteed by the caller.
    unsafe { asm!("msr ttbr0_el1, {v}", "isb", v = in(reg) value, options(nostack, preserves_flags)) };
}

/// Points TTBR0_EL1 at `root` and invalidates this CPU's TLB: only for
/// leaving the boot identity map, whose global entries an ASID cannot hide.
///
/// # Safety
/// Nothing may be running from TTBR0 addresses.
pub unsafe fn set_ttbr0(root: u64) {
    // SAFETY: guaranteed by the caller.
    unsafe {
        asm!("msr ttbr0_el1, {r}", "isb", "tlbi vmalle1", "dsb nsh", "isb", r = in(reg) root, options(nostack, preserves_flags))
    };
}

/// Zeroes `len` bytes at kernel VA `va` (both multiples of the page size)
/// with `dc zva`, which writes a whole cache-line-sized block per
/// instruction; falls back to plain stores when DCZID_EL0 prohibits it.
pub fn zero_pages(va: u64, len: u64) {
    let dczid: u64;
    // SAFETY: reads an ID register.
    unsafe { core::arch::asm!("mrs {}, dczid_el0", out(reg) dczid, options(nomem, nostack, preserves_flags)) };
    if dczid & (1 << 4) != 0 {
        // SAFETY: the caller hands us memory it owns.
        unsafe { core::ptr::write_bytes(va as *mut u8, 0, len as usize) };
        return;
    }
    let block = 4u64 << (dczid & 0xf);
    if len != 0 && len.is_multiple_of(8 * block) {
        // Eight blocks per turn: 2.25 instructions per block instead of 4
        // (the loop test is paid once per eight).
        // SAFETY: [va, va+len) is owned by the caller and block aligned
        // (pages are); len is a non-zero multiple of 8 blocks.
        unsafe {
            core::arch::asm!(
                "2:",
                "dc zva, {p}", "add {p}, {p}, {b}",
                "dc zva, {p}", "add {p}, {p}, {b}",
                "dc zva, {p}", "add {p}, {p}, {b}",
                "dc zva, {p}", "add {p}, {p}, {b}",
                "dc zva, {p}", "add {p}, {p}, {b}",
                "dc zva, {p}", "add {p}, {p}, {b}",
                "dc zva, {p}", "add {p}, {p}, {b}",
                "dc zva, {p}", "add {p}, {p}, {b}",
                "cmp {p}, {e}",
                "b.lo 2b",
                p = inout(reg) va => _,
                b = in(reg) block,
                e = in(reg) va + len,
                options(nostack),
            )
        };
        return;
    }
    let mut p = va;
    while p < va + len {
        // SAFETY: p is inside [va, va+len), which the caller owns and which
        // is block aligned (pages are).
        unsafe { core::arch::asm!("dc zva, {}", in(reg) p, options(nostack, preserves_flags)) };
        p += block;
    }
}

/// Drops this CPU's cached translation of one user page (`tlbi vale1`,
/// last level, by VA and ASID), e.g. a read-only entry left behind by a
/// spurious permission fault.
pub fn tlbi_page_local(va: u64, asid: u16) {
    let arg = ((va >> 12) & ((1 << 44) - 1)) | ((asid as u64) << 48);
    // SAFETY: TLB maintenance only.
    unsafe {
        core::arch::asm!("dsb nshst", "tlbi vale1, {}", "dsb nsh", "isb", in(reg) arg, options(nostack, preserves_flags))
    };
}

/// Makes table writes that turned invalid entries valid visible to the
/// table walker before the faulting access is retried (no TLBI needed).
pub fn publish_tables() {
    // SAFETY: barriers only.
    unsafe { core::arch::asm!("dsb ishst", "isb", options(nostack, preserves_flags)) };
}

/// Copies `len` bytes (a multiple of 64) from kernel VA `src` to `dst`
/// with 16-byte load/store pairs, 64 bytes per iteration (the COW copy).
///
/// # Safety
/// Both ranges must be mapped, `len` bytes long, not overlapping, and
/// `dst` must be memory nobody else accesses meanwhile.
pub unsafe fn copy_pages(dst: u64, src: u64, len: u64) {
    // SAFETY: guaranteed by the caller.
    unsafe {
        asm!(
            // Post-indexed pairs: 10 instructions per 64 bytes, no adds.
            "2:",
            "ldp {a}, {b}, [{s}], #16",
            "ldp {c}, {d}, [{s}], #16",
            "ldp {e}, {f}, [{s}], #16",
            "ldp {g}, {h}, [{s}], #16",
            "stp {a}, {b}, [{t}], #16",
            "stp {c}, {d}, [{t}], #16",
            "stp {e}, {f}, [{t}], #16",
            "stp {g}, {h}, [{t}], #16",
            "subs {n}, {n}, #64",
            "b.ne 2b",
            s = inout(reg) src => _,
            t = inout(reg) dst => _,
            n = inout(reg) len => _,
            a = out(reg) _, b = out(reg) _, c = out(reg) _, d = out(reg) _,
            e = out(reg) _, f = out(reg) _, g = out(reg) _, h = out(reg) _,
            options(nostack),
        );
    }
}

/// Unmasks IRQs for an instant and masks them again: any IRQ that is pending
/// is taken in between. The kernel runs with IRQs masked everywhere else
/// (see docs/ARCHITECTURE.md, "Interrupts"); this is its one way of letting
/// them in at EL1.
#[inline(always)]
pub fn irq_window() {
    // SAFETY: only changes PSTATE.I; the handler saves and restores everything.
    unsafe { asm!("msr daifclr, #2", "isb", "msr daifset, #2", options(nostack, preserves_flags)) };
}

/// Waits for an interrupt. With IRQs masked it still wakes up when one is
/// pending (it is then taken at the next [`irq_window`]), so nothing sent
/// between a check and the `wfi` is lost.
#[inline(always)]
pub fn wfi() {
    // SAFETY: WFI only waits.
    unsafe { asm!("dsb sy", "wfi", options(nostack, preserves_flags)) };
}

/// `dsb sy`: completes every earlier memory access, Device ones included.
#[inline(always)]
pub fn dsb_sy() {
    // SAFETY: a barrier only.
    unsafe { asm!("dsb sy", options(nostack, preserves_flags)) };
}

/// Makes earlier stores visible to other CPUs (and their table walkers)
/// before what follows: a TLBI, or a system-register write (a GICv3 SGI)
/// they may react to.
#[inline(always)]
pub fn dsb_ishst() {
    // SAFETY: barrier only.
    unsafe { asm!("dsb ishst", options(nostack, preserves_flags)) };
}

/// Whether PSTATE.I (IRQ mask) is set.
pub fn irqs_masked() -> bool {
    let daif: u64;
    // SAFETY: reads a register.
    unsafe { asm!("mrs {}, daif", out(reg) daif, options(nomem, nostack, preserves_flags)) };
    daif & (1 << 7) != 0
}

/// Sets or clears PSTATE.PAN (FEAT_PAN; only call on a CPU that has it).
pub fn set_pan(on: bool) {
    // SAFETY: PAN only restricts EL1 data accesses to EL0-accessible pages.
    unsafe {
        if on {
            asm!(".arch_extension pan", "msr pan, #1", "isb", options(nostack, preserves_flags));
        } else {
            asm!(".arch_extension pan", "msr pan, #0", "isb", options(nostack, preserves_flags));
        }
    }
}

/// PSTATE.PAN (reads as 0 on a CPU without FEAT_PAN: the register is then
/// not read at all).
pub fn pan() -> bool {
    if !has_pan() {
        return false;
    }
    let v: u64;
    // SAFETY: reads PSTATE.PAN, which exists (checked above).
    unsafe { asm!(".arch_extension pan", "mrs {}, pan", out(reg) v, options(nomem, nostack, preserves_flags)) };
    v & (1 << 22) != 0
}

/// Whether the CPU implements FEAT_PAN (ID_AA64MMFR1_EL1.PAN != 0).
pub fn has_pan() -> bool {
    use aarch64_cpu::registers::{ID_AA64MMFR1_EL1, Readable};
    ID_AA64MMFR1_EL1.read(ID_AA64MMFR1_EL1::PAN) != 0
}

/// Whether the CPU can set access flags in hardware (FEAT_HAFDBS:
/// ID_AA64MMFR1_EL1.HAFDBS != 0).
pub fn has_hw_af() -> bool {
    use aarch64_cpu::registers::{ID_AA64MMFR1_EL1, Readable};
    ID_AA64MMFR1_EL1.get() & 0xf != 0
}

fn tcr_el1() -> u64 {
    let tcr: u64;
    // SAFETY: reads a system register.
    unsafe { asm!("mrs {}, tcr_el1", out(reg) tcr, options(nomem, nostack, preserves_flags)) };
    tcr
}

/// Whether this CPU's MMU sets access flags itself now (TCR_EL1.HA).
pub fn hw_af_enabled() -> bool {
    tcr_el1() & (1 << 39) != 0
}

/// Whether this CPU's MMU manages dirty state itself now (TCR_EL1.HD,
/// which takes effect only with HA).
pub fn hw_dirty_enabled() -> bool {
    let tcr = tcr_el1();
    tcr & (1 << 40) != 0 && tcr & (1 << 39) != 0
}

/// Whether the CPU manages dirty state in hardware too (FEAT_HAFDBS with
/// DBM: ID_AA64MMFR1_EL1.HAFDBS >= 2).
pub fn has_hw_dbm() -> bool {
    use aarch64_cpu::registers::{ID_AA64MMFR1_EL1, Readable};
    ID_AA64MMFR1_EL1.get() & 0xf >= 2
}

/// Turns hardware dirty-state management (TCR_EL1.HD, with HA) on or off
/// on this CPU, then drops this CPU's TLB. Only call with `has_hw_dbm()`.
/// Turning it off leaves HA as it was.
pub fn set_hw_dbm(on: bool) {
    const HA: u64 = 1 << 39;
    const HD: u64 = 1 << 40;
    // SAFETY: only the HA/HD bits of TCR_EL1 change; the barriers and the
    // local TLB invalidation make the change take effect.
    unsafe {
        let mut tcr: u64;
        asm!("mrs {}, tcr_el1", out(reg) tcr, options(nomem, nostack, preserves_flags));
        tcr = if on { tcr | HA | HD } else { tcr & !HD };
        asm!("msr tcr_el1, {}", "isb", "tlbi vmalle1", "dsb nsh", "isb", in(reg) tcr, options(nostack, preserves_flags));
    }
}

/// Turns hardware access-flag updates (TCR_EL1.HA) on or off on this CPU,
/// then drops this CPU's TLB so no translation cached under the old
/// setting survives. Only call with `has_hw_af()`.
pub fn set_hw_af(on: bool) {
    const HA: u64 = 1 << 39;
    // SAFETY: only the HA bit of TCR_EL1 changes; the barriers and the
    // local TLB invalidation make the change take effect.
    unsafe {
        let mut tcr: u64;
        asm!("mrs {}, tcr_el1", out(reg) tcr, options(nomem, nostack, preserves_flags));
        tcr = if on { tcr | HA } else { tcr & !HA };
        asm!("msr tcr_el1, {}", "isb", "tlbi vmalle1", "dsb nsh", "isb", in(reg) tcr, options(nostack, preserves_flags));
    }
}
