//! Strongly typed addresses, so a physical address is never used as a pointer.
//!
//! Arithmetic stays in the type: `addr + len` is an address, `end - start`
//! a length in bytes. Like `u64` arithmetic, it checks for overflow only in
//! debug builds; [`VirtAddr::checked_add`] is for untrusted lengths.

use core::fmt;
use core::ops::{Add, AddAssign, Sub};

/// A physical (output) address.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
#[repr(transparent)]
pub struct PhysAddr(u64);

/// A virtual (input) address.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
#[repr(transparent)]
pub struct VirtAddr(u64);

macro_rules! addr_common {
    ($t:ident) => {
        impl $t {
            pub const fn new(addr: u64) -> Self {
                Self(addr)
            }
            pub const fn as_u64(self) -> u64 {
                self.0
            }
            pub const fn is_aligned(self, align: u64) -> bool {
                self.0 & (align - 1) == 0
            }
            pub const fn align_down(self, align: u64) -> Self {
                Self(self.0 & !(align - 1))
            }
            /// Rounds up to `align` (a power of two); wraps past the top
            /// as `u64` arithmetic would.
            pub const fn align_up(self, align: u64) -> Self {
                Self(self.0.wrapping_add(align - 1) & !(align - 1))
            }
            /// `self + off`, or None past the top of the address space.
            pub const fn checked_add(self, off: u64) -> Option<Self> {
                match self.0.checked_add(off) {
                    Some(a) => Some(Self(a)),
                    None => None,
                }
            }
            /// `self + off` modulo 2^64: the exclusive end of a range that
            /// reaches the top of the address space is 0.
            pub const fn wrapping_add(self, off: u64) -> Self {
                Self(self.0.wrapping_add(off))
            }
            /// The offset of `self` inside its `align`-sized block.
            pub const fn offset_in(self, align: u64) -> u64 {
                self.0 & (align - 1)
            }
        }
        impl Add<u64> for $t {
            type Output = Self;
            fn add(self, off: u64) -> Self {
                Self(self.0 + off)
            }
        }
        impl AddAssign<u64> for $t {
            fn add_assign(&mut self, off: u64) {
                self.0 += off;
            }
        }
        impl Sub<u64> for $t {
            type Output = Self;
            fn sub(self, off: u64) -> Self {
                Self(self.0 - off)
            }
        }
        /// The distance in bytes from `base` up to `self`.
        impl Sub for $t {
            type Output = u64;
            fn sub(self, base: Self) -> u64 {
                self.0 - base.0
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
        self.0 >> crate::arch::aarch64::granule::PAGE_SHIFT
    }
    pub const fn from_pfn(pfn: u64) -> Self {
        Self(pfn << crate::arch::aarch64::granule::PAGE_SHIFT)
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
