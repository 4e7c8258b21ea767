//! TLB maintenance for live table changes: the kernel's [`TlbFlush`].
//!
//! With FEAT_TLBIRANGE (ID_AA64ISAR0_EL1.TLB = 0b0010) ranges go out as
//! `TLBI RVA(A)(L)E1IS` in chunks of `(NUM+1) << (5*SCALE+1)` pages, split
//! the way Linux's `__flush_tlb_range_op` does; single pages and CPUs
//! without it use per-page operations.
//!
//! Every flush is broadcast to the Inner Shareable domain (all CPUs), by VA
//! with the ASID for user tables (`TLBI VAE1IS`/`VALE1IS`) or for all ASIDs
//! for global kernel entries (`TLBI VAAE1IS`/`VAALE1IS`); last-level forms
//! when only leaves changed. Past [`FULL_FLUSH_PAGES`] pages one
//! `TLBI ASIDE1IS` / `VMALLE1IS` is cheaper. The operand is VA[55:12]
//! whatever the granule; the stride is the granule's page size.

use core::arch::asm;
use core::sync::atomic::{AtomicU64, Ordering};

use super::granule::PAGE_SIZE;
use super::pgtable::TlbFlush;

/// Above this many pages a flush becomes a full (ASID) flush; with range
/// TLBI each op covers many pages, so the limit is much higher.
pub const FULL_FLUSH_PAGES: u64 = 512;
pub const FULL_FLUSH_PAGES_RANGE: u64 = 1 << 21;

/// Counters, for tests: TLBI instructions issued, full flushes.
pub static TLBI_OPS: AtomicU64 = AtomicU64::new(0);
pub static FULL_FLUSHES: AtomicU64 = AtomicU64::new(0);

/// Range TLBI ops issued (for tests).
pub static RANGE_OPS: AtomicU64 = AtomicU64::new(0);

/// Whether this CPU implements FEAT_TLBIRANGE.
pub fn has_tlbi_range() -> bool {
    use aarch64_cpu::registers::{ID_AA64ISAR0_EL1, Readable};
    (ID_AA64ISAR0_EL1.get() >> 56) & 0xf >= 0b0010
}

/// TG field of a range TLBI operand for the build's granule.
const RANGE_TG: u64 = match super::granule::GRANULE {
    super::granule::Granule::K4 => 0b01,
    super::granule::Granule::K16 => 0b10,
    super::granule::Granule::K64 => 0b11,
};

/// One range op: `(NUM+1) << (5*SCALE+1)` pages from `va`.
fn range_op(va: u64, scale: u64, num: u64, asid: Option<u16>, leaf_only: bool) {
    let base = (va >> super::granule::PAGE_SHIFT) & ((1 << 37) - 1);
    let op = asid.map(|a| (a as u64) << 48).unwrap_or(0) | (RANGE_TG << 46) | (scale << 44) | (num << 39) | base;
    // SAFETY: TLB maintenance only drops cached translations. Encoded with
    // SYS (op1=0, CRn=8, CRm=2) so the assembler needs no tlb-rmi feature:
    // op2 1 RVAE1IS, 3 RVAAE1IS, 5 RVALE1IS, 7 RVAALE1IS.
    unsafe {
        match (asid.is_some(), leaf_only) {
            (true, false) => asm!("sys #0, c8, c2, #1, {}", in(reg) op, options(nostack, preserves_flags)),
            (false, false) => asm!("sys #0, c8, c2, #3, {}", in(reg) op, options(nostack, preserves_flags)),
            (true, true) => asm!("sys #0, c8, c2, #5, {}", in(reg) op, options(nostack, preserves_flags)),
            (false, true) => asm!("sys #0, c8, c2, #7, {}", in(reg) op, options(nostack, preserves_flags)),
        }
    }
    RANGE_OPS.fetch_add(1, Ordering::Relaxed);
}

pub use super::tlb_plan::plan_range;

pub struct KernelFlush;

impl TlbFlush for KernelFlush {
    fn publish(&mut self) {
        // SAFETY: barriers only.
        unsafe { asm!("dsb ishst", "isb", options(nostack, preserves_flags)) };
    }

    fn flush(&mut self, va: u64, size: u64, asid: Option<u16>, leaf_only: bool) {
        let pages = size.div_ceil(PAGE_SIZE).max(1);
        let range = has_tlbi_range();
        // SAFETY: TLB maintenance only drops cached translations.
        unsafe { asm!("dsb ishst", options(nostack, preserves_flags)) };
        if pages > if range { FULL_FLUSH_PAGES_RANGE } else { FULL_FLUSH_PAGES } {
            FULL_FLUSHES.fetch_add(1, Ordering::Relaxed);
            // SAFETY: as above.
            unsafe {
                match asid {
                    Some(a) => asm!("tlbi aside1is, {}", in(reg) (a as u64) << 48, options(nostack, preserves_flags)),
                    None => asm!("tlbi vmalle1is", options(nostack, preserves_flags)),
                }
            }
        } else if range && pages > 1 {
            plan_range(
                va & !(PAGE_SIZE - 1),
                pages,
                PAGE_SIZE,
                &mut |v, scale, num| range_op(v, scale, num, asid, leaf_only),
                &mut |v| tlbi_page(v, asid, leaf_only),
            );
        } else {
            let mut v = va & !(PAGE_SIZE - 1);
            for _ in 0..pages {
                tlbi_page(v, asid, leaf_only);
                v = v.wrapping_add(PAGE_SIZE);
            }
        }
        // SAFETY: barriers only.
        unsafe { asm!("dsb ish", "isb", options(nostack, preserves_flags)) };
    }
}

/// One page's TLBI (VA[55:12] whatever the granule).
fn tlbi_page(v: u64, asid: Option<u16>, leaf_only: bool) {
    let tag = asid.map(|a| (a as u64) << 48).unwrap_or(0);
    let op = tag | ((v >> 12) & ((1 << 44) - 1));
    // SAFETY: TLB maintenance only drops cached translations.
    unsafe {
        match (asid.is_some(), leaf_only) {
            (true, true) => asm!("tlbi vale1is, {}", in(reg) op, options(nostack, preserves_flags)),
            (true, false) => asm!("tlbi vae1is, {}", in(reg) op, options(nostack, preserves_flags)),
            (false, true) => asm!("tlbi vaale1is, {}", in(reg) op, options(nostack, preserves_flags)),
            (false, false) => asm!("tlbi vaae1is, {}", in(reg) op, options(nostack, preserves_flags)),
        }
    }
    TLBI_OPS.fetch_add(1, Ordering::Relaxed);
}
