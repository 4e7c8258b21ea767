//! Linux `mm/mmu_gather.c`: what an unmap takes out of the tables (table
//! pages, pages, blocks) is gathered and given back only after the TLB
//! flush that covers it, so no CPU can still reach freed memory through a
//! stale translation or walk-cache entry.
//!
//! `tlb_gather_mmu` is [`MmuGather::new`], `tlb_gather_mmu_fullmm`
//! [`MmuGather::new_fullmm`], `tlb_flush_pte_range` [`MmuGather::flush_range`],
//! `pte_free_tlb` [`MmuGather::remove_table`], `__tlb_remove_page`
//! [`MmuGather::remove_page`] / [`MmuGather::remove_block`], `tlb_flush_mmu`
//! [`MmuGather::flush_mmu`] and `tlb_finish_mmu` [`MmuGather::finish`].
//!
//! The batch has a fixed size and lives in the gather itself, as Linux's
//! first batch does: gathering never allocates, so a process can be torn
//! down when memory is exhausted. When the batch is full the gather
//! flushes what changed so far and only then frees it (`tlb_flush_mmu`),
//! and goes on. `zap_page_range` (munmap, madvise DONTNEED) and process
//! teardown ([`super::memory::exit_mmap`], the `fullmm` case: one
//! `TLBI ASIDE1IS` per batch) use it.
//!
//! The gather refuses to free while a range it was given is not flushed
//! yet ([`UNFLUSHED_FREES`]), whatever order its callers use; the test
//! knob [`FREE_BEFORE_FLUSH`] breaks that order on purpose.

use core::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use super::addr::{PhysAddr, VirtAddr};
use super::kernel_pgtable::FrameTableMem;
use super::mm_struct::PtlGuard;
use super::pgtable::{PendingBreaks, TlbFlush};
use super::tlb::KernelFlush;

/// Pages one batch holds (Linux: a page of pointers, about 500).
pub const BATCH_PAGES: usize = 256;
/// Tables or blocks one batch holds.
pub const BATCH_OTHERS: usize = 32;

/// One gather: the range to flush and what to free after the flush.
#[must_use = "an MmuGather frees nothing until finish"]
pub struct MmuGather<'l> {
    asid: u16,
    /// The page-table lock's record of entries broken and not flushed: the
    /// gather's flush covers all of them, so it empties the record.
    pending: &'l PendingBreaks,
    /// The whole address space goes (exit): flush by ASID.
    fullmm: bool,
    /// The range whose translations changed, `[start, end)`; empty when none did.
    start: u64,
    end: u64,
    /// Whether a table went: the flush must include walk caches.
    freed_tables: bool,
    pages: [PhysAddr; BATCH_PAGES],
    nr_pages: usize,
    tables: [PhysAddr; BATCH_OTHERS],
    nr_tables: usize,
    blocks: [PhysAddr; BATCH_OTHERS],
    nr_blocks: usize,
}

impl<'l> MmuGather<'l> {
    /// Linux `tlb_gather_mmu` for the address space tagged `asid`, whose
    /// page-table lock `ptl` is held while entries are cleared and gathered.
    pub fn new(ptl: &'l PtlGuard<'_>, asid: u16) -> Self {
        Self {
            asid,
            pending: ptl.pending_breaks(),
            fullmm: false,
            start: u64::MAX,
            end: 0,
            freed_tables: false,
            pages: [PhysAddr::new(0); BATCH_PAGES],
            nr_pages: 0,
            tables: [PhysAddr::new(0); BATCH_OTHERS],
            nr_tables: 0,
            blocks: [PhysAddr::new(0); BATCH_OTHERS],
            nr_blocks: 0,
        }
    }

    /// Linux `tlb_gather_mmu_fullmm`: the whole address space goes and
    /// nothing runs with `asid` any more, so every flush is `TLBI ASIDE1IS`.
    pub fn new_fullmm(ptl: &'l PtlGuard<'_>, asid: u16) -> Self {
        Self { fullmm: true, ..Self::new(ptl, asid) }
    }

    /// Linux `tlb_flush_pte_range`: `[start, end)` changed and must be flushed.
    pub fn flush_range(&mut self, start: VirtAddr, end: VirtAddr) {
        self.start = self.start.min(start.as_u64());
        self.end = self.end.max(end.as_u64());
    }

    /// Linux `pte_free_tlb`: a table already unlinked from `[start, end)`,
    /// freed after a flush that includes walk caches.
    pub fn remove_table(&mut self, mem: &mut FrameTableMem, pa: PhysAddr, start: VirtAddr, end: VirtAddr) {
        self.freed_tables = true;
        self.flush_range(start, end);
        trace(GatherEvent::Gathered(pa));
        self.tables[self.nr_tables] = pa;
        self.nr_tables += 1;
        self.flush_if_full(mem);
    }

    /// Linux `__tlb_remove_page`: a page whose entry is already cleared
    /// (and its range given to [`Self::flush_range`]); its mapping and
    /// reference go after the flush. Returns whether that filled the batch
    /// and it went ([`Self::flush_mmu`]): the flush range is empty again,
    /// so the caller gives the range of the entries it clears next anew.
    #[must_use]
    pub fn remove_page(&mut self, mem: &mut FrameTableMem, pa: PhysAddr) -> bool {
        trace(GatherEvent::Gathered(pa));
        self.pages[self.nr_pages] = pa;
        self.nr_pages += 1;
        let full = self.nr_pages == BATCH_PAGES;
        if full {
            self.flush_mmu(mem);
        }
        full
    }

    /// A block whose entry is already cleared; its mapping goes after the flush.
    pub fn remove_block(&mut self, mem: &mut FrameTableMem, pa: PhysAddr) {
        trace(GatherEvent::Gathered(pa));
        self.blocks[self.nr_blocks] = pa;
        self.nr_blocks += 1;
        self.flush_if_full(mem);
    }

    fn flush_if_full(&mut self, mem: &mut FrameTableMem) {
        if self.nr_pages == BATCH_PAGES || self.nr_tables == BATCH_OTHERS || self.nr_blocks == BATCH_OTHERS {
            self.flush_mmu(mem);
        }
    }

    /// Linux `tlb_flush_mmu`: the flush that covers every change gathered
    /// so far, then the tables, pages and blocks go back.
    pub fn flush_mmu(&mut self, mem: &mut FrameTableMem) {
        if free_before_flush() {
            // The sabotage: the frees first (refused by `free_batch`).
            self.free_batch(mem);
        }
        if self.fullmm || self.start < self.end {
            if self.fullmm {
                crate::arch::aarch64::mm::tlbflush::flush_tlb_asid(self.asid);
            } else {
                KernelFlush.flush(
                    VirtAddr::new(self.start),
                    self.end - self.start,
                    Some(self.asid),
                    !self.freed_tables,
                );
            }
            trace(GatherEvent::Flushed);
            // Every valid entry cleared under the lock so far was gathered
            // (zap and teardown break nothing outside the gather), and is
            // flushed now.
            self.pending.clear();
        }
        (self.start, self.end, self.freed_tables) = (u64::MAX, 0, false);
        self.free_batch(mem);
    }

    /// Gives back what the batch holds, unless a range given to
    /// [`Self::flush_range`] is not flushed yet: a TLB may still translate
    /// into what would be freed (the use after free mmu_gather exists to
    /// prevent). Then nothing goes, the refusal is counted in
    /// [`UNFLUSHED_FREES`], and the batch waits for the flush.
    fn free_batch(&mut self, mem: &mut FrameTableMem) {
        if self.start < self.end {
            UNFLUSHED_FREES.fetch_add(1, Ordering::Relaxed);
            return;
        }
        for &pa in &self.tables[..self.nr_tables] {
            trace(GatherEvent::Freed(pa));
            mem.free(pa);
        }
        for &pa in &self.pages[..self.nr_pages] {
            trace(GatherEvent::Freed(pa));
        }
        super::page::release_mapped_pages(&mut self.pages[..self.nr_pages]);
        for &pa in &self.blocks[..self.nr_blocks] {
            trace(GatherEvent::Freed(pa));
            super::huge_memory::put_mapped_block(pa);
        }
        (self.nr_tables, self.nr_pages, self.nr_blocks) = (0, 0, 0);
    }

    /// Linux `tlb_finish_mmu`: [`Self::flush_mmu`] for what is left.
    pub fn finish(mut self, mem: &mut FrameTableMem) {
        self.flush_mmu(mem);
    }
}

/// Test-only sabotage: when armed, the next [`MmuGather::flush_mmu`]
/// frees its batch before its TLB flush. Nothing but
/// `test/cursor_tests.rs` arms it.
pub static FREE_BEFORE_FLUSH: AtomicBool = AtomicBool::new(false);

/// Takes [`FREE_BEFORE_FLUSH`] if armed (one relaxed load when it is not).
#[inline(always)]
fn free_before_flush() -> bool {
    FREE_BEFORE_FLUSH.load(Ordering::Relaxed) && FREE_BEFORE_FLUSH.swap(false, Ordering::Relaxed)
}

/// Frees a gather refused because a range it was given had not been
/// flushed yet, since boot (for the tests).
pub static UNFLUSHED_FREES: AtomicU64 = AtomicU64::new(0);

/// What a gather did, in order, for the test that checks nothing goes back
/// before the flush that covers it (`test/cursor_tests.rs`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GatherEvent {
    /// A cleared entry's page, block or table joined the batch.
    Gathered(PhysAddr),
    /// The TLB flush covering the batch completed.
    Flushed,
    /// A page's mapping and reference, a block's, or a table went back.
    Freed(PhysAddr),
}

/// The test's listener; called only while [`TRACING`] is set.
pub static TRACE_HOOK: spin::Mutex<Option<fn(GatherEvent)>> = spin::Mutex::new(None);
/// Whether [`TRACE_HOOK`] is set (one relaxed load when it is not).
pub static TRACING: AtomicBool = AtomicBool::new(false);

#[inline(always)]
fn trace(e: GatherEvent) {
    if TRACING.load(Ordering::Relaxed)
        && let Some(f) = *TRACE_HOOK.lock()
    {
        f(e);
    }
}
