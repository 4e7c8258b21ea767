//! Values of the translation-control system registers, as plain numbers.
//!
//! The boot assembly needs them as immediates before any Rust runs, and the
//! Rust side programs the same registers through `aarch64-cpu`; a test checks
//! that both agree. Bit positions follow the Arm ARM (DDI 0487).

use super::granule::{GRANULE, Granule};

/// MAIR_EL1 attribute indices, numbered like Linux's arm64 `MT_*`.
pub mod mair {
    pub const NORMAL: u64 = 0;
    pub const NORMAL_TAGGED: u64 = 1;
    pub const NORMAL_NC: u64 = 2;
    pub const DEVICE_NGNRNE: u64 = 3;
    pub const DEVICE_NGNRE: u64 = 4;

    /// The attribute encodings for each index above.
    pub const VALUE: u64 = (0xff << (8 * NORMAL))
        | (0xff << (8 * NORMAL_TAGGED))
        | (0x44 << (8 * NORMAL_NC))
        | (0x00 << (8 * DEVICE_NGNRNE))
        | (0x04 << (8 * DEVICE_NGNRE));

    /// Linux ptdump's name for an attribute index.
    pub fn name(idx: u64) -> &'static str {
        match idx {
            NORMAL => "MEM/NORMAL",
            NORMAL_TAGGED => "MEM/NORMAL-TAGGED",
            NORMAL_NC => "MEM/NORMAL-NC",
            DEVICE_NGNRNE => "DEVICE/nGnRnE",
            DEVICE_NGNRE => "DEVICE/nGnRE",
            _ => "MEM/??",
        }
    }
}

/// Virtual address bits of the kernel half (TTBR1).
pub const VA_BITS: u32 = 48;

/// Virtual address bits of the user half (TTBR0): 48, or 39 with the
/// `va39` feature (`./qemu-run.sh --va-bits 39`: one level fewer of user
/// tables, like Linux's `CONFIG_ARM64_VA_BITS_39`).
#[cfg(feature = "va39")]
pub const USER_VA_BITS: u32 = 39;
#[cfg(not(feature = "va39"))]
pub const USER_VA_BITS: u32 = 48;

/// The end of the addresses processes use and uaccess accepts (Linux
/// `TASK_SIZE`): the lower half of TTBR0's range.
pub const USER_TOP: u64 = 1 << (USER_VA_BITS - 1);

pub mod tcr {
    pub const T0SZ_SHIFT: u32 = 0;
    pub const EPD0: u64 = 1 << 7;
    pub const IRGN0_WBWA: u64 = 1 << 8;
    pub const ORGN0_WBWA: u64 = 1 << 10;
    pub const SH0_INNER: u64 = 3 << 12;
    pub const TG0_SHIFT: u32 = 14;
    pub const T1SZ_SHIFT: u32 = 16;
    pub const A1: u64 = 1 << 22;
    pub const EPD1: u64 = 1 << 23;
    pub const IRGN1_WBWA: u64 = 1 << 24;
    pub const ORGN1_WBWA: u64 = 1 << 26;
    pub const SH1_INNER: u64 = 3 << 28;
    pub const TG1_SHIFT: u32 = 30;
    pub const IPS_SHIFT: u32 = 32;
    pub const AS: u64 = 1 << 36;
    pub const HA: u64 = 1 << 39;
    pub const HD: u64 = 1 << 40;
}

/// TG0 encoding for a granule (TCR_EL1.TG0).
pub const fn tg0(g: Granule) -> u64 {
    match g {
        Granule::K4 => 0b00,
        Granule::K64 => 0b01,
        Granule::K16 => 0b10,
    }
}

/// TG1 encoding for a granule (TCR_EL1.TG1) - a different code point from TG0.
pub const fn tg1(g: Granule) -> u64 {
    match g {
        Granule::K16 => 0b01,
        Granule::K4 => 0b10,
        Granule::K64 => 0b11,
    }
}

/// TCR_EL1 without the CPU-dependent fields (IPS and AS are filled in at boot
/// from ID_AA64MMFR0_EL1).
pub const TCR_BASE: u64 = ((64 - USER_VA_BITS as u64) << tcr::T0SZ_SHIFT)
    | tcr::IRGN0_WBWA
    | tcr::ORGN0_WBWA
    | tcr::SH0_INNER
    | (tg0(GRANULE) << tcr::TG0_SHIFT)
    | ((64 - VA_BITS as u64) << tcr::T1SZ_SHIFT)
    | tcr::IRGN1_WBWA
    | tcr::ORGN1_WBWA
    | tcr::SH1_INNER
    | (tg1(GRANULE) << tcr::TG1_SHIFT);

pub mod sctlr {
    pub const M: u64 = 1 << 0;
    pub const A: u64 = 1 << 1;
    pub const C: u64 = 1 << 2;
    pub const SA: u64 = 1 << 3;
    pub const SA0: u64 = 1 << 4;
    pub const I: u64 = 1 << 12;
    pub const DZE: u64 = 1 << 14;
    pub const UCT: u64 = 1 << 15;
    pub const NTWI: u64 = 1 << 16;
    pub const NTWE: u64 = 1 << 18;
    pub const WXN: u64 = 1 << 19;
    pub const SPAN: u64 = 1 << 23;
    pub const UCI: u64 = 1 << 26;
    /// Bits that are RES1 in ARMv8.0 (11, 20, 22, 23, 28, 29).
    pub const RES1: u64 = (1 << 11) | (1 << 20) | (1 << 22) | (1 << 23) | (1 << 28) | (1 << 29);
    /// MMU and caches off, little-endian: what EL1 runs with before the MMU is on.
    pub const INIT: u64 = RES1;
    /// MMU and caches on, SP alignment checks, EL0 may use the counters and `dc zva`.
    pub const MMU_ON: u64 = RES1 | M | C | SA | SA0 | I | DZE | UCT | NTWI | NTWE | UCI;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mair_indices_match_linux_attribute_bytes() {
        assert_eq!((mair::VALUE >> (8 * mair::NORMAL)) & 0xff, 0xff);
        assert_eq!((mair::VALUE >> (8 * mair::DEVICE_NGNRE)) & 0xff, 0x04);
        assert_eq!((mair::VALUE >> (8 * mair::DEVICE_NGNRNE)) & 0xff, 0x00);
        assert_eq!(mair::name(mair::DEVICE_NGNRE), "DEVICE/nGnRE");
    }

    #[test]
    fn tcr_base_fields() {
        assert_eq!(TCR_BASE & 0x3f, 16, "T0SZ for 48-bit VA");
        assert_eq!((TCR_BASE >> 16) & 0x3f, 16, "T1SZ for 48-bit VA");
        assert_eq!(TCR_BASE & tcr::EPD0, 0, "TTBR0 walks stay enabled");
        assert_eq!(tg0(Granule::K4), 0);
        assert_eq!(tg1(Granule::K4), 2);
        assert_eq!(tg0(Granule::K16), 2);
        assert_eq!(tg1(Granule::K16), 1);
    }

    #[test]
    fn sctlr_mmu_on_has_no_wxn_and_sets_m() {
        assert_ne!(sctlr::MMU_ON & sctlr::M, 0);
        assert_eq!(sctlr::INIT & sctlr::M, 0);
    }
}
