//! The MMU-facing half of arch (Linux `arch/arm64/mm/` and
//! `asm/tlbflush.h`): TLB maintenance instructions and the ASID allocator.
pub mod context;
pub mod tlbflush;
