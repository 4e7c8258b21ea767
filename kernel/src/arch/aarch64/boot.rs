//! Boot: the arm64 Image header, EL2 -> EL1, BSS, the early translation
//! tables and the MMU switch-on, for the boot CPU and for secondaries.
//!
//! Everything before the MMU is on is assembly: the kernel target allows
//! unaligned accesses, which fault while the MMU is off, and compiled Rust
//! would use absolute (virtual) addresses.
//!
//! The early tables map:
//! - TTBR1: the whole kernel image at its link address, page by page (RWX:
//!   replaced by the permission-correct tables in `mm::kernel_pgtable` straight away),
//!   and the DTB at `FIXMAP_BASE` (a window the final tables leave unmapped,
//!   so switching tables never changes a page size under a live VA);
//! - TTBR0: the kernel image at its physical address (identity), so that
//!   the instruction after the MMU switch-on still fetches. Secondaries use it
//!   too, so it is never freed.

use core::arch::global_asm;

use super::granule::{GRANULE, Granule, PAGE_SHIFT, PAGE_SIZE, START_LEVEL, USER_START_LEVEL};
use super::memory::FIXMAP_BASE;
use crate::arch::aarch64::regs::{TCR_BASE, mair, sctlr, tcr};

/// Pages in the early table pool (both TTBRs). With 4K pages an image of up
/// to 8 MiB needs 3 + 5 tables for TTBR1, 3 + 5 for TTBR0 and 4 for the DTB
/// window; larger granules need far fewer tables.
pub const EARLY_POOL_PAGES: usize = match GRANULE {
    Granule::K4 => 24,
    Granule::K16 => 14,
    Granule::K64 => 10,
};

#[repr(C, align(65536))]
pub struct EarlyPool(pub [u8; EARLY_POOL_PAGES * PAGE_SIZE as usize]);

/// Early translation tables; zeroed with the BSS before use.
#[unsafe(no_mangle)]
#[unsafe(link_section = ".bss.pgtables")]
pub static mut EARLY_PGTABLES: EarlyPool = EarlyPool([0; EARLY_POOL_PAGES * PAGE_SIZE as usize]);

/// Physical address of the final TTBR1 root, for secondaries (written by the
/// boot CPU and cleaned to the point of coherency before CPU_ON).
#[unsafe(no_mangle)]
pub static mut SECONDARY_TTBR1: u64 = 0;

/// MPIDR (affinity bits) of each logical CPU started through a spin table,
/// indexed by logical CPU number; `u64::MAX` = none. `spin_table_entry`
/// reads it with the MMU and caches off: the boot CPU cleans it to the point
/// of coherency after each write, before the release.
#[unsafe(no_mangle)]
pub static mut SPIN_TABLE_MPIDR: [u64; MAX_CPUS] = [u64::MAX; MAX_CPUS];

/// Image header flags: little-endian, page size, placement anywhere.
const IMAGE_FLAGS: u64 = (match GRANULE {
    Granule::K4 => 1,
    Granule::K16 => 2,
    Granule::K64 => 3,
} << 1)
    | (1 << 3);

/// ID_AA64MMFR0_EL1.TGranX field for the build's granule, and the two values
/// that mean "not implemented" (TGran4/64: 0xf; TGran16: 0; the second value
/// repeats the first where there is only one).
const TGRAN_SHIFT: u32 = match GRANULE {
    Granule::K4 => 28,
    Granule::K16 => 20,
    Granule::K64 => 24,
};
const TGRAN_BAD: (u64, u64) = match GRANULE {
    Granule::K16 => (0, 0),
    _ => (0xf, 0xf),
};

/// Early leaf attributes: normal memory, inner shareable, AF, EL1 RW, executable.
const EARLY_PAGE_ATTRS: u64 = 0b11 | (mair::NORMAL << 2) | (3 << 8) | (1 << 10);

global_asm!(
    r#"
.section .text.head, "ax"
.global _start
_start:
    b       primary_entry           // code0
    .long   0                       // code1
    .quad   0x80000                 // text_offset
    .quad   __kernel_size           // image_size (includes bss and stacks)
    .quad   {image_flags}
    .quad   0, 0, 0
    .ascii  "ARM\x64"
    .long   0

.section .text.boot, "ax"
primary_entry:
    mov     x19, x0                 // DTB physical address
    adr     x20, _start             // physical load address
    mrs     x21, CurrentEL
    lsr     x21, x21, #2            // boot exception level
    bl      el2_to_el1
    bl      cpu_setup_el1

    // Zero the BSS (which holds the early tables).
    adrp    x0, __bss_start
    add     x0, x0, :lo12:__bss_start
    adrp    x1, __bss_end
    add     x1, x1, :lo12:__bss_end
1:  cmp     x0, x1
    b.hs    2f
    stp     xzr, xzr, [x0], #16
    b       1b
2:
    // Table pool: page 0 = TTBR0 root, page 1 = TTBR1 root, rest = bump.
    adrp    x22, EARLY_PGTABLES
    add     x22, x22, :lo12:EARLY_PGTABLES
    add     x23, x22, #{page_size}
    add     x24, x23, #{page_size}  // next free table

    // TTBR1: the image at its link address.
    mov     x0, x23
    ldr     x1, =__kernel_start
    mov     x2, x20
    ldr     x3, =__kernel_size
    mov     x6, #{start_level}
    bl      early_map_pages
    // TTBR0: the image at its physical address.
    mov     x0, x22
    mov     x1, x20
    mov     x2, x20
    ldr     x3, =__kernel_size
    mov     x6, #{user_start_level}
    bl      early_map_pages
    // TTBR1: the DTB at FIXMAP_BASE + its page offset (size from the header, big-endian).
    cbz     x19, 3f
    ldr     w3, [x19, #4]
    rev     w3, w3
    and     x4, x19, #{page_mask}
    sub     x5, x19, x4             // offset of the DTB in its page
    add     x3, x3, x5
    mov     x0, x23
    ldr     x1, ={fixmap}
    mov     x2, x4
    mov     x6, #{start_level}
    bl      early_map_pages
3:
    // Tables were written with the MMU and caches off: drop stale lines.
    mov     x0, x22
    ldr     x1, =({pool_pages} * {page_size})
    add     x1, x22, x1
    bl      dcache_inval_range

    mov     x0, x22
    mov     x1, x23
    bl      enable_mmu
    ldr     x8, =primary_switched
    br      x8

// x0 = root table (PA), x1 = VA, x2 = PA, x3 = size (rounded up to pages),
// x6 = the tables' start level (TTBR0 and TTBR1 may differ: va39).
// Allocates tables from x24. Clobbers x0-x15. MMU off: PA == pointer.
early_map_pages:
    mov     x9, #({page_size} - 1)
    add     x3, x3, x9
    and     x3, x3, #{page_mask}
    and     x1, x1, #{page_mask}
    and     x2, x2, #{page_mask}
    mov     x15, x0
4:  cbz     x3, 9f
    mov     x9, x15                 // current table
    mov     x10, x6
5:  // shift = PAGE_SHIFT + (3 - level) * (PAGE_SHIFT - 3)
    mov     x11, #3
    sub     x11, x11, x10
    mov     x12, #({page_shift} - 3)
    mul     x11, x11, x12
    add     x11, x11, #{page_shift}
    ubfx    x12, x1, #0, #48
    lsr     x12, x12, x11
    and     x12, x12, #((1 << ({page_shift} - 3)) - 1)
    add     x13, x9, x12, lsl #3    // entry address
    cmp     x10, #3
    b.eq    7f
    ldr     x14, [x13]
    cbnz    x14, 6f
    mov     x14, x24                // new zeroed table from the pool
    add     x24, x24, #{page_size}
    orr     x14, x14, #3
    str     x14, [x13]
6:  and     x9, x14, #0x0000fffffffff000
    add     x10, x10, #1
    b       5b
7:  ldr     x14, ={early_attrs}
    orr     x14, x14, x2
    str     x14, [x13]
    add     x1, x1, #{page_size}
    add     x2, x2, #{page_size}
    sub     x3, x3, #{page_size}
    b       4b
9:  ret

// Invalidate data cache lines in [x0, x1) to the point of coherency.
dcache_inval_range:
    mrs     x3, ctr_el0
    ubfx    x3, x3, #16, #4
    mov     x2, #4
    lsl     x2, x2, x3              // line size in bytes
    sub     x3, x2, #1
    bic     x0, x0, x3
1:  dc      ivac, x0
    add     x0, x0, x2
    cmp     x0, x1
    b.lo    1b
    dsb     sy
    ret

// Drop from EL2 to EL1 if entered at EL2 (QEMU virtualization=on, Raspberry
// Pi firmware); returns to the caller at EL1h with interrupts masked.
.global el2_to_el1
el2_to_el1:
    mrs     x0, CurrentEL
    cmp     x0, #(2 << 2)
    b.eq    1f
    ret
1:  mov     x0, #(1 << 31)          // HCR_EL2.RW: EL1 is AArch64
    msr     hcr_el2, x0
    isb
    mrs     x0, hcr_el2
    tbnz    x0, #34, 2f             // E2H is RES1 on this CPU
    mov     x0, #3                  // CNTHCTL_EL2: EL1PCTEN | EL1PCEN
    msr     cnthctl_el2, x0
    mov     x0, #0x33ff             // CPTR_EL2: RES1 bits, no FP/SIMD trap
    msr     cptr_el2, x0
    b       3f
2:  mov     x0, #0xc03              // CNTHCTL_EL2 (E2H layout): EL1PCTEN | EL1PTEN | EL0 counters
    msr     cnthctl_el2, x0
    mov     x0, #(3 << 20)          // CPTR_EL2 (E2H layout): FPEN
    orr     x0, x0, #(3 << 16)      // ZEN
    msr     cptr_el2, x0
3:  msr     cntvoff_el2, xzr
    msr     hstr_el2, xzr
    mrs     x0, midr_el1
    msr     vpidr_el2, x0
    mrs     x0, mpidr_el1
    msr     vmpidr_el2, x0
    msr     vttbr_el2, xzr
    // GICv3 system-register interface for EL1, when the CPU has one.
    mrs     x0, id_aa64pfr0_el1
    ubfx    x0, x0, #24, #4
    cbz     x0, 4f
    mrs     x0, s3_4_c12_c9_5       // ICC_SRE_EL2
    mov     x1, #0x9                // SRE | Enable
    orr     x0, x0, x1
    msr     s3_4_c12_c9_5, x0
    isb
    msr     s3_4_c12_c11_0, xzr     // ICH_HCR_EL2
4:  ldr     x0, ={sctlr_init}
    msr     sctlr_el1, x0
    mov     x0, #0x3c5              // EL1h, DAIF masked
    msr     spsr_el2, x0
    msr     elr_el2, x30
    isb
    eret

// EL1 state that must be right before any Rust runs.
cpu_setup_el1:
    mov     x0, #(3 << 20)          // CPACR_EL1.FPEN: no FP/SIMD traps (EL0 may use it)
    msr     cpacr_el1, x0
    msr     mdscr_el1, xzr
    ldr     x0, ={sctlr_init}
    msr     sctlr_el1, x0
    isb
    ret

// x0 = TTBR0 root (PA), x1 = TTBR1 root (PA). Returns with the MMU on,
// still executing at the physical address through the TTBR0 identity map.
// A CPU that does not implement the granule parks in `granule_unsupported`
// (nothing can be printed yet; qemu-run.sh refuses such combinations).
enable_mmu:
    mrs     x2, id_aa64mmfr0_el1
    ubfx    x2, x2, #{tgran_shift}, #4
    cmp     x2, #{tgran_bad}
    b.eq    granule_unsupported
    cmp     x2, #{tgran_bad2}
    b.eq    granule_unsupported
    ldr     x2, ={mair}
    msr     mair_el1, x2
    ldr     x2, ={tcr}
    mrs     x3, id_aa64mmfr0_el1
    and     x4, x3, #0xf            // PARange
    cmp     x4, #5
    mov     x5, #5
    csel    x4, x4, x5, ls          // at most 48-bit PA with this granule
    bfi     x2, x4, #{ips_shift}, #3
    ubfx    x4, x3, #4, #4          // ASIDBits
    cmp     x4, #2
    b.ne    1f
    orr     x2, x2, #{tcr_as}       // 16-bit ASIDs
1:  msr     tcr_el1, x2
    msr     ttbr0_el1, x0
    msr     ttbr1_el1, x1
    isb
    tlbi    vmalle1
    dsb     nsh
    isb
    ldr     x2, ={sctlr_on}
    msr     sctlr_el1, x2
    isb
    ic      iallu
    dsb     nsh
    isb
    ret

granule_unsupported:
    wfe
    b       granule_unsupported

// PSCI CPU_ON entry point (physical), x0 = context id = logical CPU number.
.global secondary_entry
secondary_entry:
    mov     x19, x0
    bl      el2_to_el1
    bl      cpu_setup_el1
    adrp    x0, EARLY_PGTABLES
    add     x0, x0, :lo12:EARLY_PGTABLES
    adrp    x1, SECONDARY_TTBR1
    add     x1, x1, :lo12:SECONDARY_TTBR1
    ldr     x1, [x1]
    bl      enable_mmu
    ldr     x8, =secondary_switched
    br      x8

// Spin-table entry point (physical; Raspberry Pi). The firmware's (or QEMU's)
// spin loop jumps here with x0 = 0 and no context id, so the CPU finds its
// logical number by looking its MPIDR up in SPIN_TABLE_MPIDR, which the boot
// CPU filled and cleaned to the point of coherency before the release. A CPU
// that is not in the table parks (it was not released by us).
.global spin_table_entry
spin_table_entry:
    mrs     x0, mpidr_el1
    and     x1, x0, #0xffffff       // Aff2..Aff0
    ubfx    x2, x0, #32, #8         // Aff3
    orr     x0, x1, x2, lsl #32
    adrp    x1, SPIN_TABLE_MPIDR
    add     x1, x1, :lo12:SPIN_TABLE_MPIDR
    mov     x2, #0
1:  ldr     x3, [x1, x2, lsl #3]
    cmp     x3, x0
    b.eq    2f
    add     x2, x2, #1
    cmp     x2, #{max_cpus}
    b.lo    1b
3:  wfe
    b       3b
2:  mov     x0, x2
    b       secondary_entry

.section .text, "ax"
primary_switched:
    ldr     x0, =__stacks_start
    add     x0, x0, #{stack_size}
    mov     sp, x0
    ldr     x0, =exception_vectors
    msr     vbar_el1, x0
    isb
    mov     x29, xzr
    mov     x30, xzr
    mov     x0, x19
    mov     x1, x20
    mov     x2, x21
    bl      kernel_main
1:  wfe
    b       1b

secondary_switched:
    ldr     x0, =__stacks_start
    mov     x1, #{stack_slot}
    madd    x0, x19, x1, x0
    add     x0, x0, #{stack_size}
    mov     sp, x0
    ldr     x0, =exception_vectors
    msr     vbar_el1, x0
    isb
    mov     x29, xzr
    mov     x30, xzr
    mov     x0, x19
    bl      secondary_main
1:  wfe
    b       1b
"#,
    image_flags = const IMAGE_FLAGS,
    page_size = const PAGE_SIZE,
    page_shift = const PAGE_SHIFT,
    page_mask = const !(PAGE_SIZE - 1),
    fixmap = const FIXMAP_BASE,
    start_level = const START_LEVEL,
    user_start_level = const USER_START_LEVEL,
    pool_pages = const EARLY_POOL_PAGES,
    early_attrs = const EARLY_PAGE_ATTRS,
    sctlr_init = const sctlr::INIT,
    sctlr_on = const sctlr::MMU_ON,
    mair = const mair::VALUE,
    tcr = const TCR_BASE,
    ips_shift = const tcr::IPS_SHIFT,
    tcr_as = const tcr::AS,
    stack_size = const STACK_SIZE,
    tgran_shift = const TGRAN_SHIFT,
    tgran_bad = const TGRAN_BAD.0,
    tgran_bad2 = const TGRAN_BAD.1,
    stack_slot = const STACK_SLOT,
    max_cpus = const MAX_CPUS,
);

/// Each CPU's kernel stack (see linker.ld: 64 KiB in a 128 KiB slot).
pub const STACK_SIZE: u64 = 0x10000;
pub const STACK_SLOT: u64 = 0x20000;
/// Bit that is set in any address in a stack's guard (Linux's overflow check).
pub const STACK_GUARD_BIT: u32 = 16;
/// CPUs the image has stacks for.
pub const MAX_CPUS: usize = 8;

unsafe extern "C" {
    pub static __kernel_start: u8;
    pub static __text_end: u8;
    pub static __rodata_start: u8;
    pub static __rodata_end: u8;
    pub static __data_start: u8;
    pub static __bss_start: u8;
    pub static __bss_end: u8;
    pub static __heap_start: u8;
    pub static __heap_end: u8;
    pub static __data_end: u8;
    pub static __stack_guard0: u8;
    pub static __stacks_start: u8;
    pub static __stacks_end: u8;
    pub static __kernel_end: u8;
    pub static __ex_table_start: u8;
    pub static __ex_table_end: u8;
    pub fn secondary_entry();
    pub fn spin_table_entry();
}

/// Link-time address of a linker symbol.
#[macro_export]
macro_rules! sym_addr {
    ($s:ident) => {
        core::ptr::addr_of!($crate::arch::aarch64::boot::$s) as u64
    };
}
