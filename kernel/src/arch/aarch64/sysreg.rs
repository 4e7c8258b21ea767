//! Plain reads of the system registers code outside arch needs to look at
//! (Linux `asm/sysreg.h` `read_sysreg`): the value as a `u64`, plus the few
//! ID-register fields callers decide on.

use aarch64_cpu::registers::{
    CurrentEL, ID_AA64MMFR0_EL1, ID_AA64MMFR1_EL1, MAIR_EL1, MIDR_EL1, MPIDR_EL1, Readable, SCTLR_EL1, TCR_EL1,
    TTBR0_EL1, TTBR1_EL1,
};

/// The exception level this code runs at (CurrentEL.EL).
pub fn current_el() -> u64 {
    CurrentEL.read(CurrentEL::EL)
}

pub fn sctlr_el1() -> u64 {
    SCTLR_EL1.get()
}

pub fn tcr_el1() -> u64 {
    TCR_EL1.get()
}

pub fn mair_el1() -> u64 {
    MAIR_EL1.get()
}

pub fn ttbr0_el1() -> u64 {
    TTBR0_EL1.get()
}

pub fn ttbr1_el1() -> u64 {
    TTBR1_EL1.get()
}

pub fn midr_el1() -> u64 {
    MIDR_EL1.get()
}

/// This CPU's affinity (MPIDR_EL1 Aff3..Aff0, without the U/MT bits).
pub fn mpidr_affinity() -> u64 {
    MPIDR_EL1.get() & 0xff_00ff_ffff
}

/// ID_AA64MMFR0_EL1.PARange: the supported physical address size.
pub fn pa_range() -> u64 {
    ID_AA64MMFR0_EL1.read(ID_AA64MMFR0_EL1::PARange)
}

/// ASID bits the CPU implements: 16 or 8 (ID_AA64MMFR0_EL1.ASIDBits).
pub fn cpu_asid_bits() -> u32 {
    if ID_AA64MMFR0_EL1.read(ID_AA64MMFR0_EL1::ASIDBits) == 0b0010 { 16 } else { 8 }
}

/// ID_AA64MMFR1_EL1.PAN != 0: the CPU implements PAN.
pub fn id_has_pan() -> bool {
    ID_AA64MMFR1_EL1.read(ID_AA64MMFR1_EL1::PAN) != 0
}
