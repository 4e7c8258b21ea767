//! The kernel's virtual address layout (TTBR1 half, 48-bit VA; Linux
//! `arch/arm64/include/asm/memory.h`).
//!
//! ```text
//! 0xffff_0000_0000_0000  linear map of all RAM (PA + PAGE_OFFSET)
//! 0xffff_6000_0000_0000  test window (in-kernel tests map and unmap here)
//! 0xffff_7000_0000_0000  MMIO mappings (PA + IO_BASE), Device-nGnRE
//! 0xffff_7ff0_0000_0000  early fixmap (boot-time DTB window only)
//! 0xffff_8000_0000_0000  kernel image (text RX, rodata R, data/bss RW), stacks
//! ```
//! TTBR0 (0x0000_...) is left for user address spaces; while no process
//! runs it points at an empty table. The typed conversions between these
//! windows and physical addresses are in `mm::layout`.

pub const PAGE_OFFSET: u64 = 0xffff_0000_0000_0000;
/// A window the in-kernel tests map and unmap freely (inside the linear-map
/// half but above any RAM this kernel supports).
pub const TEST_WINDOW: u64 = 0xffff_6000_0000_0000;
pub const TEST_WINDOW_END: u64 = 0xffff_6800_0000_0000;
pub const LINEAR_END: u64 = 0xffff_7000_0000_0000;
pub const IO_BASE: u64 = 0xffff_7000_0000_0000;
pub const IO_END: u64 = 0xffff_7ff0_0000_0000;
/// Early fixed mappings (the DTB before the final tables exist); the final
/// kernel tables map nothing here.
pub const FIXMAP_BASE: u64 = 0xffff_7ff0_0000_0000;
pub const KIMAGE_VADDR: u64 = 0xffff_8000_0000_0000;
