//! Translation granule arithmetic (4K, 16K, 64K) for a 48-bit VA (Linux
//! `arch/arm64/include/asm/page-def.h` and `pgtable-hwdef.h`).
//!
//! The granule is chosen at build time (cargo features `granule-4k`,
//! `granule-16k`, `granule-64k`) but every function here takes the granule as
//! a value so all three are unit-tested on the host.

use super::regs::{USER_VA_BITS, VA_BITS};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Granule {
    K4,
    K16,
    K64,
}

/// The granule this kernel is built for (cargo features `granule-4k`,
/// `granule-16k`, `granule-64k`; `qemu-run.sh --granule` picks one).
#[cfg(all(feature = "granule-16k", not(feature = "granule-64k")))]
pub const GRANULE: Granule = Granule::K16;
#[cfg(feature = "granule-64k")]
pub const GRANULE: Granule = Granule::K64;
#[cfg(not(any(feature = "granule-16k", feature = "granule-64k")))]
pub const GRANULE: Granule = Granule::K4;

#[cfg(all(feature = "granule-16k", feature = "granule-64k"))]
compile_error!("choose one granule feature");

impl Granule {
    pub const fn page_shift(self) -> u32 {
        match self {
            Granule::K4 => 12,
            Granule::K16 => 14,
            Granule::K64 => 16,
        }
    }
    pub const fn page_size(self) -> u64 {
        1 << self.page_shift()
    }
    /// Index bits resolved per level (a table is one granule of 8-byte entries).
    pub const fn bits_per_level(self) -> u32 {
        self.page_shift() - 3
    }
    pub const fn entries_per_table(self) -> usize {
        1 << self.bits_per_level()
    }
    /// Shift of the VA bits a level-`level` entry maps (level 3 maps a page).
    pub const fn level_shift(self, level: u32) -> u32 {
        self.page_shift() + (3 - level) * self.bits_per_level()
    }
    /// Bytes one entry at `level` maps.
    pub const fn level_size(self, level: u32) -> u64 {
        1 << self.level_shift(level)
    }
    /// First lookup level for `va_bits` of VA.
    pub const fn start_level(self, va_bits: u32) -> u32 {
        // Levels needed = ceil((va_bits - page_shift) / bits_per_level).
        let levels = (va_bits - self.page_shift()).div_ceil(self.bits_per_level());
        4 - levels
    }
    /// Index of `va` in a table at `level` (for the top level only the bits
    /// below `va_bits` count).
    pub const fn index(self, va: u64, level: u32) -> usize {
        let va = va & ((1u64 << VA_BITS) - 1);
        ((va >> self.level_shift(level)) as usize) & (self.entries_per_table() - 1)
    }
    /// Whether a block descriptor is allowed at `level` (without LPA2/52-bit PA).
    pub const fn block_allowed(self, level: u32) -> bool {
        match self {
            Granule::K4 => level == 1 || level == 2,
            Granule::K16 | Granule::K64 => level == 2,
        }
    }
    /// How many consecutive entries the contiguous bit groups at `level`.
    pub const fn contiguous_entries(self, level: u32) -> usize {
        match (self, level) {
            (Granule::K4, 3) | (Granule::K4, 2) => 16,
            (Granule::K16, 3) => 128,
            (Granule::K16, 2) => 32,
            (Granule::K64, 3) | (Granule::K64, 2) => 32,
            _ => 1,
        }
    }
    pub const fn name(self) -> &'static str {
        match self {
            Granule::K4 => "4K",
            Granule::K16 => "16K",
            Granule::K64 => "64K",
        }
    }
}

pub const PAGE_SHIFT: u32 = GRANULE.page_shift();
pub const PAGE_SIZE: u64 = GRANULE.page_size();
pub const START_LEVEL: u32 = GRANULE.start_level(VA_BITS);
/// The first level of user (TTBR0) tables: the same as the kernel's with
/// 48-bit user VAs, one lower with `va39`.
pub const USER_START_LEVEL: u32 = GRANULE.start_level(USER_VA_BITS);

/// Rounds `x` up to a multiple of the power of two `align`.
pub const fn align_up(x: u64, align: u64) -> u64 {
    (x + align - 1) & !(align - 1)
}
/// Rounds `x` down to a multiple of the power of two `align`.
pub const fn align_down(x: u64, align: u64) -> u64 {
    x & !(align - 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn levels_and_sizes_for_48bit_va() {
        let g = Granule::K4;
        assert_eq!(g.start_level(48), 0);
        assert_eq!(g.level_size(1), 1 << 30);
        assert_eq!(g.level_size(2), 2 << 20);
        assert_eq!(g.level_size(3), 4096);
        assert_eq!(g.start_level(39), 1, "39-bit 3-level option");

        let g = Granule::K16;
        assert_eq!(g.start_level(48), 0);
        assert_eq!(g.level_size(2), 32 << 20);
        assert_eq!(g.entries_per_table(), 2048);
        assert_eq!(g.level_shift(0), 47, "L0 resolves one bit with 16K");

        let g = Granule::K64;
        assert_eq!(g.start_level(48), 1);
        assert_eq!(g.level_size(2), 512 << 20);
        assert_eq!(g.level_shift(1), 42);
    }

    #[test]
    fn index_ignores_the_ttbr1_sign_bits() {
        let g = Granule::K4;
        assert_eq!(g.index(0xffff_8000_0000_0000, 0), 256);
        assert_eq!(g.index(0xffff_0000_4000_0000, 1), 1);
        assert_eq!(g.index(0x0000_0000_4020_1000, 2), 1);
        assert_eq!(g.index(0x0000_0000_4020_1000, 3), 1);
        assert_eq!(Granule::K16.index(0xffff_8000_0000_0000, 0), 1);
        assert_eq!(Granule::K64.index(0xffff_8000_0000_0000, 1), 32);
    }

    #[test]
    fn blocks_and_contiguous_runs_per_granule() {
        assert!(Granule::K4.block_allowed(1) && Granule::K4.block_allowed(2));
        assert!(!Granule::K4.block_allowed(3) && !Granule::K4.block_allowed(0));
        assert!(Granule::K16.block_allowed(2) && !Granule::K16.block_allowed(1));
        assert!(Granule::K64.block_allowed(2) && !Granule::K64.block_allowed(1));
        assert_eq!(Granule::K4.contiguous_entries(3), 16);
        assert_eq!(Granule::K16.contiguous_entries(3), 128);
        assert_eq!(Granule::K64.contiguous_entries(3), 32);
    }

    #[test]
    fn alignment_helpers() {
        assert_eq!(align_up(0x1001, 0x1000), 0x2000);
        assert_eq!(align_up(0x1000, 0x1000), 0x1000);
        assert_eq!(align_down(0x1fff, 0x1000), 0x1000);
    }
}
