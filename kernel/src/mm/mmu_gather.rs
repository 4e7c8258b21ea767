//! Linux `mm/mmu_gather.c`: what an unmap takes out of the tables (table
//! pages, pages, blocks) is gathered and given back only after the TLB
//! flush that covers it, so no CPU can still reach freed memory through a
//! stale translation or walk-cache entry.
//!
//! `tlb_gather_mmu` is [`MmuGather::new`], `tlb_flush_pte_range` is
//! [`MmuGather::flush_range`], `pte_free_tlb` is [`MmuGather::remove_table`],
//! `__tlb_remove_page` is [`MmuGather::remove_page`] /
//! [`MmuGather::remove_block`], and `tlb_finish_mmu` is [`MmuGather::finish`].
//!
//! `zap_page_range` (munmap, madvise DONTNEED) uses it. Process teardown
//! is Linux's `fullmm` case: nothing runs with the ASID again until its
//! `tlbi aside1is`, so it drops pages during its walk (it must not
//! allocate) and frees the tables its [`CursorMut`](super::pgtable::CursorMut)
//! batch detached, which come back only after that batch's flush.

use alloc::vec::Vec;

use super::addr::{PhysAddr, VirtAddr};
use super::error::{MmError, try_reserve};
use super::kmap::FrameTableMem;
use super::pgtable::TlbFlush;
use super::tlb::KernelFlush;

/// One gather: the range to flush and what to free after the flush.
#[must_use = "an MmuGather frees nothing until finish"]
pub struct MmuGather {
    asid: u16,
    /// The range whose translations changed, `[start, end)`; empty when none did.
    start: u64,
    end: u64,
    /// Whether a table went: the flush must include walk caches.
    freed_tables: bool,
    tables: Vec<PhysAddr>,
    pages: Vec<PhysAddr>,
    blocks: Vec<PhysAddr>,
}

impl MmuGather {
    /// Linux `tlb_gather_mmu` for the address space tagged `asid`.
    pub fn new(asid: u16) -> Self {
        Self {
            asid,
            start: u64::MAX,
            end: 0,
            freed_tables: false,
            tables: Vec::new(),
            pages: Vec::new(),
            blocks: Vec::new(),
        }
    }

    /// Linux `tlb_flush_pte_range`: `[start, end)` changed and must be flushed.
    pub fn flush_range(&mut self, start: VirtAddr, end: VirtAddr) {
        self.start = self.start.min(start.as_u64());
        self.end = self.end.max(end.as_u64());
    }

    /// Room for `n` more pages, so a later [`Self::remove_page`] cannot fail.
    pub fn reserve_pages(&mut self, n: usize) -> Result<(), MmError> {
        try_reserve(&mut self.pages, n)
    }

    /// Room for `n` more tables.
    pub fn reserve_tables(&mut self, n: usize) -> Result<(), MmError> {
        try_reserve(&mut self.tables, n)
    }

    /// Linux `pte_free_tlb`: a table unlinked from `[start, end)`, freed after the flush.
    pub fn remove_table(&mut self, pa: PhysAddr, start: VirtAddr, end: VirtAddr) -> Result<(), MmError> {
        try_reserve(&mut self.tables, 1)?;
        self.tables.push(pa);
        self.freed_tables = true;
        self.flush_range(start, end);
        Ok(())
    }

    /// Linux `__tlb_remove_page`: a page whose mapping (and reference)
    /// goes after the flush.
    pub fn remove_page(&mut self, pa: PhysAddr) -> Result<(), MmError> {
        try_reserve(&mut self.pages, 1)?;
        self.pages.push(pa);
        Ok(())
    }

    /// A block's mapping, dropped after the flush.
    pub fn remove_block(&mut self, pa: PhysAddr) -> Result<(), MmError> {
        try_reserve(&mut self.blocks, 1)?;
        self.blocks.push(pa);
        Ok(())
    }

    /// Linux `tlb_finish_mmu`: the flush that covers every change, then the
    /// tables, pages and blocks go back.
    pub fn finish(mut self, mem: &mut FrameTableMem) {
        if self.start < self.end {
            KernelFlush.flush(VirtAddr::new(self.start), self.end - self.start, Some(self.asid), !self.freed_tables);
        }
        for pa in self.tables.drain(..) {
            mem.free(pa);
        }
        super::page::release_mapped_pages(&mut self.pages);
        for pa in self.blocks.drain(..) {
            super::huge_memory::put_mapped_block(pa);
        }
    }
}
