//! TLB maintenance for live table changes: the kernel's [`TlbFlush`].
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

/// Above this many pages a range flush becomes a full (ASID) flush.
pub const FULL_FLUSH_PAGES: u64 = 512;

/// Counters, for tests and `meminfo`: TLBI instructions issued, full flushes.
pub static TLBI_OPS: AtomicU64 = AtomicU64::new(0);
pub static FULL_FLUSHES: AtomicU64 = AtomicU64::new(0);

pub struct KernelFlush;

impl TlbFlush for KernelFlush {
    fn publish(&mut self) {
        // SAFETY: barriers only.
        unsafe { asm!("dsb ishst", "isb", options(nostack, preserves_flags)) };
    }

    fn flush(&mut self, va: u64, size: u64, asid: Option<u16>, leaf_only: bool) {
        let pages = size.div_ceil(PAGE_SIZE).max(1);
        // SAFETY: TLB maintenance only drops cached translations.
        unsafe { asm!("dsb ishst", options(nostack, preserves_flags)) };
        if pages > FULL_FLUSH_PAGES {
            FULL_FLUSHES.fetch_add(1, Ordering::Relaxed);
            // SAFETY: as above.
            unsafe {
                match asid {
                    Some(a) => asm!("tlbi aside1is, {}", in(reg) (a as u64) << 48, options(nostack, preserves_flags)),
                    None => asm!("tlbi vmalle1is", options(nostack, preserves_flags)),
                }
            }
        } else {
            let tag = asid.map(|a| (a as u64) << 48).unwrap_or(0);
            let mut v = va & !(PAGE_SIZE - 1);
            for _ in 0..pages {
                let op = tag | ((v >> 12) & ((1 << 44) - 1));
                // SAFETY: as above.
                unsafe {
                    match (asid.is_some(), leaf_only) {
                        (true, true) => asm!("tlbi vale1is, {}", in(reg) op, options(nostack, preserves_flags)),
                        (true, false) => asm!("tlbi vae1is, {}", in(reg) op, options(nostack, preserves_flags)),
                        (false, true) => asm!("tlbi vaale1is, {}", in(reg) op, options(nostack, preserves_flags)),
                        (false, false) => asm!("tlbi vaae1is, {}", in(reg) op, options(nostack, preserves_flags)),
                    }
                }
                v = v.wrapping_add(PAGE_SIZE);
            }
            TLBI_OPS.fetch_add(pages, Ordering::Relaxed);
        }
        // SAFETY: barriers only.
        unsafe { asm!("dsb ish", "isb", options(nostack, preserves_flags)) };
    }
}
