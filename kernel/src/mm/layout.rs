//! The kernel's virtual address layout (TTBR1 half, 48-bit VA).
//!
//! ```text
//! 0xffff_0000_0000_0000  linear map of all RAM (PA + PAGE_OFFSET)
//! 0xffff_6000_0000_0000  test window (in-kernel tests map and unmap here)
//! 0xffff_7000_0000_0000  MMIO mappings (PA + IO_BASE), Device-nGnRE
//! 0xffff_7ff0_0000_0000  early fixmap (boot-time DTB window only)
//! 0xffff_8000_0000_0000  kernel image (text RX, rodata R, data/bss RW), stacks
//! ```
//! TTBR0 (0x0000_...) is left for user address spaces; while no process
//! runs it points at an empty table.

use super::addr::{PhysAddr, VirtAddr};

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

/// Names of the regions, in ptdump's marker style.
pub const MARKERS: &[(VirtAddr, &str)] = &[
    (VirtAddr::new(PAGE_OFFSET), "Linear Mapping start"),
    (VirtAddr::new(TEST_WINDOW), "Test window start"),
    (VirtAddr::new(IO_BASE), "MMIO start"),
    (VirtAddr::new(KIMAGE_VADDR), "Kernel Image start"),
];

/// The linear-map address of physical address `pa`.
pub const fn phys_to_virt(pa: PhysAddr) -> VirtAddr {
    VirtAddr::new(pa.as_u64() + PAGE_OFFSET)
}

/// Inverse of [`phys_to_virt`], for linear-map addresses only.
pub const fn linear_virt_to_phys(va: VirtAddr) -> Option<PhysAddr> {
    if va.as_u64() >= PAGE_OFFSET && va.as_u64() < LINEAR_END {
        Some(PhysAddr::new(va.as_u64() - PAGE_OFFSET))
    } else {
        None
    }
}

/// The MMIO-window address of device physical address `pa`.
pub const fn io_virt(pa: PhysAddr) -> VirtAddr {
    VirtAddr::new(pa.as_u64() + IO_BASE)
}

#[cfg(test)]
mod tests {
    use super::*;
    #[test]
    fn linear_map_round_trips() {
        let pa = PhysAddr::new(0x4008_0000);
        assert_eq!(linear_virt_to_phys(phys_to_virt(pa)), Some(pa));
        assert_eq!(linear_virt_to_phys(VirtAddr::new(KIMAGE_VADDR)), None);
        assert_eq!(io_virt(PhysAddr::new(0x0900_0000)).as_u64(), 0xffff_7000_0900_0000);
    }
}
