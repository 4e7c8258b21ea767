//! Strongly typed addresses, so a physical address is never used as a pointer.

use core::fmt;

/// A physical (output) address.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
#[repr(transparent)]
pub struct PhysAddr(pub u64);

/// A virtual (input) address.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
#[repr(transparent)]
pub struct VirtAddr(pub u64);

macro_rules! addr_common {
    ($t:ident) => {
        impl $t {
            pub const fn as_u64(self) -> u64 {
                self.0
            }
            pub const fn add(self, off: u64) -> Self {
                Self(self.0 + off)
            }
            pub const fn is_aligned(self, align: u64) -> bool {
                self.0 & (align - 1) == 0
            }
            pub const fn align_down(self, align: u64) -> Self {
                Self(self.0 & !(align - 1))
            }
        }
        impl fmt::LowerHex for $t {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                fmt::LowerHex::fmt(&self.0, f)
            }
        }
        impl fmt::Display for $t {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{:#x}", self.0)
            }
        }
    };
}
addr_common!(PhysAddr);
addr_common!(VirtAddr);

impl PhysAddr {
    /// Page frame number for the build's granule.
    pub const fn pfn(self) -> u64 {
        self.0 >> crate::mm::granule::PAGE_SHIFT
    }
    pub const fn from_pfn(pfn: u64) -> Self {
        Self(pfn << crate::mm::granule::PAGE_SHIFT)
    }
}

/// A half-open physical range `[start, end)`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PhysRange {
    pub start: PhysAddr,
    pub end: PhysAddr,
}

impl PhysRange {
    pub const fn new(start: u64, end: u64) -> Self {
        Self { start: PhysAddr(start), end: PhysAddr(end) }
    }
    pub const fn size(&self) -> u64 {
        self.end.0 - self.start.0
    }
    pub const fn contains(&self, pa: PhysAddr) -> bool {
        pa.0 >= self.start.0 && pa.0 < self.end.0
    }
    pub const fn overlaps(&self, o: &PhysRange) -> bool {
        self.start.0 < o.end.0 && o.start.0 < self.end.0
    }
}
