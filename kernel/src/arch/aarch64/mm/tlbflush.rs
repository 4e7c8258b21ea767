//! TLB maintenance instructions (Linux `arch/arm64/include/asm/tlbflush.h`).
//!
//! These are the broadcast (Inner Shareable) forms that mm's flushes are
//! built from; barriers are separate so that a flush of many pages pays for
//! one `DSB ISHST` before and one `DSB ISH; ISB` after. The operand of a
//! by-VA TLBI is VA[55:12] whatever the granule, with the ASID in [63:48]
//! (Linux `__TLBI_VADDR`); a range operand is Linux `__TLBI_VADDR_RANGE`.
//! The `DSB ISHST` that opens a flush is [`super::super::cpu::dsb_ishst`].
//! The local, single-instruction forms live in [`super::super::cpu`].

use core::arch::asm;

use super::super::cpu::dsb_ishst;

use super::super::granule::{GRANULE, Granule, PAGE_SHIFT};

/// Whether this CPU implements FEAT_TLBIRANGE (ID_AA64ISAR0_EL1.TLB >= 0b0010).
pub fn has_tlbi_range() -> bool {
    use aarch64_cpu::registers::{ID_AA64ISAR0_EL1, Readable};
    (ID_AA64ISAR0_EL1.get() >> 56) & 0xf >= 0b0010
}

/// Waits for every TLBI issued so far to complete on all CPUs and
/// resynchronises this CPU's context (`DSB ISH; ISB`).
#[inline(always)]
pub fn dsb_ish_isb() {
    // SAFETY: barriers only.
    unsafe { asm!("dsb ish", "isb", options(nostack, preserves_flags)) };
}

/// `TLBI ASIDE1IS`: every entry tagged with `asid`, on all CPUs. No barriers.
#[inline(always)]
pub fn tlbi_aside1is(asid: u16) {
    // SAFETY: TLB maintenance only drops cached translations.
    unsafe { asm!("tlbi aside1is, {}", in(reg) (asid as u64) << 48, options(nostack, preserves_flags)) };
}

/// `TLBI VMALLE1IS`: every stage-1 EL1&0 entry, on all CPUs. No barriers.
#[inline(always)]
pub fn tlbi_vmalle1is() {
    // SAFETY: TLB maintenance only drops cached translations.
    unsafe { asm!("tlbi vmalle1is", options(nostack, preserves_flags)) };
}

/// Flushes every entry tagged with `asid` on all CPUs, barriers included
/// (Linux `flush_tlb_mm`).
pub fn flush_tlb_asid(asid: u16) {
    dsb_ishst();
    tlbi_aside1is(asid);
    dsb_ish_isb();
}

/// Flushes the whole stage-1 EL1&0 TLB on all CPUs, barriers included
/// (Linux `flush_tlb_all`).
pub fn flush_tlb_all() {
    dsb_ishst();
    tlbi_vmalle1is();
    dsb_ish_isb();
}

/// One page's TLBI on all CPUs: with `asid` for a user entry
/// (`VAE1IS`/`VALE1IS`), without for a global one (`VAAE1IS`/`VAALE1IS`);
/// last-level forms when `leaf_only`. No barriers.
#[inline(always)]
pub fn tlbi_page_is(va: u64, asid: Option<u16>, leaf_only: bool) {
    let tag = asid.map(|a| (a as u64) << 48).unwrap_or(0);
    let op = tag | ((va >> 12) & ((1 << 44) - 1));
    // SAFETY: TLB maintenance only drops cached translations.
    unsafe {
        match (asid.is_some(), leaf_only) {
            (true, true) => asm!("tlbi vale1is, {}", in(reg) op, options(nostack, preserves_flags)),
            (true, false) => asm!("tlbi vae1is, {}", in(reg) op, options(nostack, preserves_flags)),
            (false, true) => asm!("tlbi vaale1is, {}", in(reg) op, options(nostack, preserves_flags)),
            (false, false) => asm!("tlbi vaae1is, {}", in(reg) op, options(nostack, preserves_flags)),
        }
    }
}

/// TG field of a range TLBI operand for the build's granule.
const RANGE_TG: u64 = match GRANULE {
    Granule::K4 => 0b01,
    Granule::K16 => 0b10,
    Granule::K64 => 0b11,
};

/// One range TLBI on all CPUs (FEAT_TLBIRANGE): `(num+1) << (5*scale+1)`
/// pages from `va`, forms chosen as in [`tlbi_page_is`]. No barriers.
#[inline(always)]
pub fn tlbi_range_is(va: u64, scale: u64, num: u64, asid: Option<u16>, leaf_only: bool) {
    let base = (va >> PAGE_SHIFT) & ((1 << 37) - 1);
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
}
