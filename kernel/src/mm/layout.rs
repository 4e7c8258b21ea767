//! The typed side of the kernel's virtual address layout: conversions
//! between the linear-map and MMIO windows and physical addresses, and the
//! region names ptdump prints. The layout itself (the window addresses) is
//! arch's, in `arch::aarch64::memory`.

use super::addr::{PhysAddr, VirtAddr};
use crate::arch::aarch64::memory::{IO_BASE, KIMAGE_VADDR, LINEAR_END, PAGE_OFFSET, TEST_WINDOW};

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
