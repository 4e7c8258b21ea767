//! The typed side of the kernel's virtual address layout: conversions
//! between the linear-map and MMIO windows and physical addresses, and the
//! region names ptdump prints. The layout itself (the window addresses) is
//! arch's, in `arch::aarch64::memory`.

use super::addr::{PhysAddr, VirtAddr};
use crate::arch::aarch64::memory::{IO_BASE, KIMAGE_VADDR, LINEAR_END, PAGE_OFFSET, TEST_WINDOW};

/// Names of the regions, in ptdump's marker style.
pub const MARKERS: &[(u64, &str)] = &[
    (PAGE_OFFSET, "Linear Mapping start"),
    (TEST_WINDOW, "Test window start"),
    (IO_BASE, "MMIO start"),
    (KIMAGE_VADDR, "Kernel Image start"),
];

/// The linear-map address of physical address `pa`.
pub const fn phys_to_virt(pa: PhysAddr) -> VirtAddr {
    VirtAddr(pa.0 + PAGE_OFFSET)
}

/// Inverse of [`phys_to_virt`], for linear-map addresses only.
pub const fn linear_virt_to_phys(va: VirtAddr) -> Option<PhysAddr> {
    if va.0 >= PAGE_OFFSET && va.0 < LINEAR_END { Some(PhysAddr(va.0 - PAGE_OFFSET)) } else { None }
}

/// The MMIO-window address of device physical address `pa`.
pub const fn io_virt(pa: PhysAddr) -> VirtAddr {
    VirtAddr(pa.0 + IO_BASE)
}

#[cfg(test)]
mod tests {
    use super::*;
    #[test]
    fn linear_map_round_trips() {
        let pa = PhysAddr(0x4008_0000);
        assert_eq!(linear_virt_to_phys(phys_to_virt(pa)), Some(pa));
        assert_eq!(linear_virt_to_phys(VirtAddr(KIMAGE_VADDR)), None);
        assert_eq!(io_virt(PhysAddr(0x0900_0000)).0, 0xffff_7000_0900_0000);
    }
}
