//! TLB maintenance for live table changes: the kernel's [`TlbFlush`],
//! built from the instructions in `arch::aarch64::mm::tlbflush`.
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

use core::sync::atomic::{AtomicU64, Ordering};

use crate::arch::aarch64::cpu::dsb_ishst;
use crate::arch::aarch64::mm::tlbflush::{
    dsb_ish_isb, has_tlbi_range, tlbi_aside1is, tlbi_page_is, tlbi_range_is, tlbi_vmalle1is,
};

use super::addr::VirtAddr;
use super::pgtable::TlbFlush;
use crate::arch::aarch64::granule::PAGE_SIZE;

/// Above this many pages a flush becomes a full (ASID) flush; with range
/// TLBI each op covers many pages, so the limit is much higher.
pub const FULL_FLUSH_PAGES: u64 = 512;
pub const FULL_FLUSH_PAGES_RANGE: u64 = 1 << 21;

/// Counters, for tests: TLBI instructions issued, full flushes.
pub static TLBI_OPS: AtomicU64 = AtomicU64::new(0);
pub static FULL_FLUSHES: AtomicU64 = AtomicU64::new(0);

/// Range TLBI ops issued (for tests).
pub static RANGE_OPS: AtomicU64 = AtomicU64::new(0);

/// One range op: `(NUM+1) << (5*SCALE+1)` pages from `va`.
fn range_op(va: VirtAddr, scale: u64, num: u64, asid: Option<u16>, leaf_only: bool) {
    tlbi_range_is(va.as_u64(), scale, num, asid, leaf_only);
    RANGE_OPS.fetch_add(1, Ordering::Relaxed);
}

pub use super::tlb_plan::plan_range;

pub struct KernelFlush;

impl TlbFlush for KernelFlush {
    fn publish(&mut self) {
        crate::arch::aarch64::cpu::publish_tables();
    }

    // Inlinable in every codegen unit: where the size is known (one page on
    // the fault path) the range logic folds away.
    #[inline]
    fn flush(&mut self, va: VirtAddr, size: u64, asid: Option<u16>, leaf_only: bool) {
        let va = va.align_down(PAGE_SIZE);
        let pages = size.div_ceil(PAGE_SIZE).max(1);
        let range = has_tlbi_range();
        dsb_ishst();
        if pages > if range { FULL_FLUSH_PAGES_RANGE } else { FULL_FLUSH_PAGES } {
            FULL_FLUSHES.fetch_add(1, Ordering::Relaxed);
            match asid {
                Some(a) => tlbi_aside1is(a),
                None => tlbi_vmalle1is(),
            }
        } else if range && pages > 1 {
            plan_range(va, pages, PAGE_SIZE, &mut |v, scale, num| range_op(v, scale, num, asid, leaf_only), &mut |v| {
                tlbi_page(v, asid, leaf_only)
            });
        } else {
            let mut v = va;
            for _ in 0..pages {
                tlbi_page(v, asid, leaf_only);
                v = v.wrapping_add(PAGE_SIZE);
            }
        }
        dsb_ish_isb();
    }
}

/// One page's TLBI, counted.
fn tlbi_page(v: VirtAddr, asid: Option<u16>, leaf_only: bool) {
    tlbi_page_is(v.as_u64(), asid, leaf_only);
    TLBI_OPS.fetch_add(1, Ordering::Relaxed);
}
