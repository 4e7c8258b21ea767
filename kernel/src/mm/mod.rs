//! Memory management.
//!
//! Pure parts (host-tested): [`addr`] types, the typed kernel virtual
//! [`layout`] helpers, translation-table [`desc`]riptors, the table
//! builder/walker in [`pgtable`] and the [`ptdump`] formatter.
//! Hardware parts: the [`frame`] allocator, the kernel [`heap`] and the live
//! kernel tables in [`kernel_pgtable`].
pub mod addr;
pub mod desc;
pub mod error;
pub mod fail_alloc;
pub mod folio_walk;
#[cfg(target_os = "none")]
pub mod gup;
#[cfg(target_os = "none")]
pub mod huge_memory;
#[cfg(target_os = "none")]
pub mod khugepaged;
pub mod layout;
#[cfg(target_os = "none")]
pub mod madvise;
#[cfg(target_os = "none")]
pub mod memory;
#[cfg(target_os = "none")]
pub mod migrate;
pub mod mm_struct;
#[cfg(target_os = "none")]
pub mod mmap;
#[cfg(target_os = "none")]
pub mod mmu_gather;
#[cfg(target_os = "none")]
pub mod mprotect;
#[cfg(target_os = "none")]
pub mod page;
#[cfg(target_os = "none")]
pub mod page_table_check;
pub mod pgtable;
pub mod ptdump;
#[cfg(target_os = "none")]
pub mod rmap;
#[cfg(target_os = "none")]
pub mod shmem;
#[cfg(target_os = "none")]
pub mod swap_state;
#[cfg(target_os = "none")]
pub mod swapfile;
pub mod tlb_plan;
#[cfg(target_os = "none")]
pub mod truncate;
pub mod userfaultfd;
#[cfg(target_os = "none")]
pub mod vmscan;
pub mod walk;

#[cfg(target_os = "none")]
pub mod frame;
#[cfg(target_os = "none")]
pub mod heap;
#[cfg(target_os = "none")]
pub mod kernel_pgtable;
#[cfg(target_os = "none")]
pub mod tlb;
