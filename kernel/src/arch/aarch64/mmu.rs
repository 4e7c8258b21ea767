//! The translation-control registers, programmed through `aarch64-cpu`'s
//! typed fields.
//!
//! The boot assembly has to switch the MMU on before any Rust runs, so it
//! writes the same values from the numeric constants in [`super::regs`].
//! Each CPU then calls [`program`] as soon as it runs Rust, which rewrites
//! MAIR_EL1, TCR_EL1 and SCTLR_EL1 from the named fields below, and refuses to
//! continue if they differ from what the assembly set (so the two can never
//! drift apart silently). Rewriting identical values on a live MMU is harmless.
//!
//! On a CPU with FEAT_PAN, [`program`] then clears SCTLR_EL1.SPAN, so that
//! every exception taken to EL1 sets PSTATE.PAN, and sets PSTATE.PAN itself:
//! from then on a plain EL1 load or store to an EL0-accessible page is a
//! permission fault. Only the uaccess helpers reach user memory, with the
//! unprivileged LDTRB/STTRB, which PAN does not restrict.

use aarch64_cpu::registers::*;

use super::granule::{GRANULE, Granule};

fn mair() -> u64 {
    use MAIR_EL1::*;
    // Index order matches regs::mair (Linux's MT_* numbering).
    (Attr0_Normal_Outer::WriteBack_NonTransient_ReadWriteAlloc
        + Attr0_Normal_Inner::WriteBack_NonTransient_ReadWriteAlloc
        + Attr1_Normal_Outer::WriteBack_NonTransient_ReadWriteAlloc
        + Attr1_Normal_Inner::WriteBack_NonTransient_ReadWriteAlloc
        + Attr2_Normal_Outer::NonCacheable
        + Attr2_Normal_Inner::NonCacheable
        + Attr3_Device::nonGathering_nonReordering_noEarlyWriteAck
        + Attr4_Device::nonGathering_nonReordering_EarlyWriteAck)
        .value
}

fn tcr() -> u64 {
    use TCR_EL1::*;
    let (tg0, tg1) = match GRANULE {
        Granule::K4 => (TG0::KiB_4, TG1::KiB_4),
        Granule::K16 => (TG0::KiB_16, TG1::KiB_16),
        Granule::K64 => (TG0::KiB_64, TG1::KiB_64),
    };
    let va = 64 - super::regs::VA_BITS as u64;
    let parange = ID_AA64MMFR0_EL1.read(ID_AA64MMFR0_EL1::PARange).min(5);
    let mut v = T0SZ.val(64 - super::regs::USER_VA_BITS as u64)
        + IRGN0::WriteBack_ReadAlloc_WriteAlloc_Cacheable
        + ORGN0::WriteBack_ReadAlloc_WriteAlloc_Cacheable
        + SH0::Inner
        + tg0
        + T1SZ.val(va)
        + IRGN1::WriteBack_ReadAlloc_WriteAlloc_Cacheable
        + ORGN1::WriteBack_ReadAlloc_WriteAlloc_Cacheable
        + SH1::Inner
        + tg1
        + IPS.val(parange);
    if ID_AA64MMFR0_EL1.read(ID_AA64MMFR0_EL1::ASIDBits) == 0b0010 {
        v += AS::ASID16Bits;
    }
    v.value
}

fn sctlr() -> u64 {
    use SCTLR_EL1::*;
    (M::Enable
        + C::Cacheable
        + I::Cacheable
        + SA::Enable
        + SA0::Enable
        + DZE::DontTrap
        + UCT::DontTrap
        + NTWI::DontTrap
        + NTWE::DontTrap
        + UCI::DontTrap)
        .value
        | super::regs::sctlr::RES1
}

/// SCTLR_EL1 once PAN is set up: SPAN (RES1 in ARMv8.0) cleared when the CPU
/// has FEAT_PAN, so that taking an exception to EL1 sets PSTATE.PAN.
fn sctlr_final() -> u64 {
    if super::cpu::has_pan() { sctlr() & !super::regs::sctlr::SPAN } else { sctlr() }
}

/// Reprograms MAIR_EL1, TCR_EL1 and SCTLR_EL1 from the typed definitions.
/// Panics if the boot assembly had set anything else.
pub fn program() {
    let (m, t, s) = (mair(), tcr(), sctlr());
    let live = (MAIR_EL1.get(), TCR_EL1.get(), SCTLR_EL1.get());
    assert!(
        live == (m, t, s),
        "boot assembly and aarch64-cpu disagree: MAIR {:#x}/{m:#x} TCR {:#x}/{t:#x} SCTLR {:#x}/{s:#x}",
        live.0,
        live.1,
        live.2
    );
    MAIR_EL1.set(m);
    TCR_EL1.set(t);
    SCTLR_EL1.set(sctlr_final());
    aarch64_cpu::asm::barrier::isb(aarch64_cpu::asm::barrier::SY);
    if super::cpu::has_pan() {
        super::cpu::set_pan(true);
    }
}

/// The values [`program`] writes, for tests.
pub fn expected() -> (u64, u64, u64) {
    (mair(), tcr(), sctlr_final())
}

/// This CPU's live translation registers that are the same on every CPU
/// (TTBR0 is per process), as a debugger that cannot read system registers
/// needs them (gdb's `pl-sysreg`; OpenOCD shows none).
#[derive(Clone, Copy, Debug)]
pub struct LiveRegs {
    pub ttbr1: u64,
    pub tcr: u64,
    pub mair: u64,
    pub sctlr: u64,
}

pub fn live_regs() -> LiveRegs {
    LiveRegs { ttbr1: TTBR1_EL1.get(), tcr: TCR_EL1.get(), mair: MAIR_EL1.get(), sctlr: SCTLR_EL1.get() }
}
