//! Reclaim (Linux `mm/vmscan.c`, with the multi-gen LRU's page-table walk):
//! when a user fault or user-page allocation finds no free frame, cold
//! anonymous folios go to swap and the fault retries.
//!
//! **Generations** (Linux MGLRU, `lru_gen_*`). [`MAX_SEQ`] counts aging
//! passes. Every folio records in its head the sequence number at which it
//! was last found referenced ([`Folio::lru_gen`]); a new folio starts in the
//! youngest generation. The LRU order is the generation order: a folio
//! whose generation is older than [`MAX_SEQ`] was not referenced in the
//! last aging interval.
//!
//! **Aging** (Linux `walk_mm` → `walk_pte_range`, `folio_referenced` →
//! `ptep_clear_flush_young`) walks every address space's private anonymous
//! VMAs. Each young entry's access flag is cleared, with the TLB entries
//! for it invalidated (one `tlbi` per table run that had one: an entry with
//! AF clear is never cached, so the next access sets the flag again, by an
//! access-flag fault in software or by the MMU with `pagelab.hw-af=1`), and
//! its folio moves to the new generation.
//!
//! **Eviction** (Linux `evict_folios` → `shrink_folio_list`) walks the same
//! entries again. An entry young again since the aging is referenced: its
//! folio is activated (moves to the youngest generation) and stays. An old
//! entry of an older generation is cold and is paged out to swap. Skipped,
//! as Linux skips them: pinned folios and folios with references no mapping
//! accounts for (GUP), folios another process also maps (pageout and
//! reclaim without reverse mapping unmap one entry only), large folios and
//! contiguous runs, the zero page and special mappings.
//!
//! **Direct reclaim** (Linux `__alloc_pages_direct_reclaim`): allocation
//! never reclaims. A fault that finds no frame returns
//! [`VmFault::Oom`](super::memory::VmFault) with every page-table lock
//! dropped; its caller (the EL0 fault entry, the GUP slow path) asks
//! [`should_reclaim`], calls [`try_to_free_pages`] and retries the fault
//! while something was freed. So reclaim never runs under a page-table
//! lock or an allocator lock: it takes each address space's mmap lock with
//! a trylock (an mm a writer holds is skipped, as MGLRU's walk does), then
//! its page-table lock. An injected allocation failure
//! (`pagelab.fail-alloc`) is not memory pressure: [`should_reclaim`] asks
//! whether free memory is really at the user reserve.
use core::sync::atomic::{AtomicU32, AtomicU64, Ordering};

use super::addr::VirtAddr;
use super::desc::{AF_BIT, CONT_BIT};
use super::error::MmError;
use super::memory::{MmTables, for_each_pte};
use super::mm_struct::{MmStruct, MmapLocked, VmFlags, Vma};
use super::page::{self, Folio};
use super::pgtable::{PteRun, TlbFlush};
use super::swap_state::{self, SwapOutError};
use super::tlb::KernelFlush;
use crate::arch::aarch64::granule::PAGE_SIZE;

/// Linux MGLRU `max_seq`: the youngest generation. Starts at 1 so that a
/// folio's generation is never ahead of it.
static MAX_SEQ: AtomicU32 = AtomicU32::new(1);

/// The youngest generation, where new folios start.
#[inline(always)]
pub fn max_seq() -> u32 {
    MAX_SEQ.load(Ordering::Relaxed)
}

/// Reclaim counters, named as in Linux's `/proc/vmstat`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct VmStat {
    /// Direct reclaims entered (`allocstall`).
    pub allocstall: u64,
    /// Pages eviction looked at (`pgscan_direct`).
    pub pgscan: u64,
    /// Pages eviction freed (`pgsteal_direct`).
    pub pgsteal: u64,
    /// Pages written to swap by reclaim (`pswpout`).
    pub pswpout: u64,
    /// Pages found referenced at eviction and kept (`pgactivate`).
    pub pgactivate: u64,
    /// Aging passes (MGLRU's `max_seq` increments).
    pub aging: u64,
}

static ALLOCSTALL: AtomicU64 = AtomicU64::new(0);
static PGSCAN: AtomicU64 = AtomicU64::new(0);
static PGSTEAL: AtomicU64 = AtomicU64::new(0);
static PSWPOUT: AtomicU64 = AtomicU64::new(0);
static PGACTIVATE: AtomicU64 = AtomicU64::new(0);
static AGING: AtomicU64 = AtomicU64::new(0);

/// The counters since boot.
pub fn vmstat() -> VmStat {
    let l = |c: &AtomicU64| c.load(Ordering::Relaxed);
    VmStat {
        allocstall: l(&ALLOCSTALL),
        pgscan: l(&PGSCAN),
        pgsteal: l(&PGSTEAL),
        pswpout: l(&PSWPOUT),
        pgactivate: l(&PGACTIVATE),
        aging: l(&AGING),
    }
}

impl core::fmt::Display for VmStat {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(
            f,
            "allocstall {} pgscan {} pgsteal {} pswpout {} pgactivate {} aging {} max_seq {}",
            self.allocstall,
            self.pgscan,
            self.pgsteal,
            self.pswpout,
            self.pgactivate,
            self.aging,
            max_seq()
        )
    }
}

/// Bytes one direct reclaim tries to free (Linux frees `SWAP_CLUSTER_MAX`,
/// 32 pages, per call; a larger batch here keeps the number of walks over
/// every address space down).
pub const RECLAIM_BATCH_BYTES: u64 = 1 << 20;

/// Aging passes one direct reclaim may make before it gives up: a folio
/// needs two without a reference to become cold.
const MAX_AGING_PASSES: u32 = 3;

/// Free frames above the user reserve below which a failed user allocation
/// counts as memory pressure (a failure with more free is injected, or a
/// large folio that did not fit).
const PRESSURE_SLACK_PAGES: u64 = 16;

/// Whether an allocation that just failed for user memory did so because
/// memory is short (Linux: the allocator's slow path reached direct
/// reclaim), and not because a failure was injected.
pub fn should_reclaim() -> bool {
    let reserve = super::frame::USER_RESERVE_BYTES / PAGE_SIZE;
    super::frame::stats().free <= reserve + PRESSURE_SLACK_PAGES
}

/// What one scan found (Linux `struct scan_control`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ScanControl {
    /// Pages eviction should free before it stops.
    pub nr_to_reclaim: u64,
    /// Candidate pages eviction looked at.
    pub nr_scanned: u64,
    /// Pages freed.
    pub nr_reclaimed: u64,
    /// Referenced pages kept (moved to the youngest generation).
    pub nr_activated: u64,
    /// Cold pages found that could not be paged out (no swap room).
    pub nr_failed: u64,
    /// Entries whose access flag aging cleared.
    pub nr_aged: u64,
}

/// What a walk over an address space does.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Pass {
    /// Clear access flags; referenced folios move to the youngest generation.
    Age,
    /// Page out cold folios up to `nr_to_reclaim`.
    Evict,
    /// Count the cold folios eviction would take, change nothing (tests).
    CountCold,
}

/// A private anonymous VMA: the memory reclaim may send to swap.
fn reclaimable_vma(v: &Vma) -> bool {
    v.file == 0 && !v.flags.contains(VmFlags::SHARED) && !v.flags.contains(VmFlags::PFNMAP)
}

/// One address space, under its mmap read lock (taken with a trylock: an
/// mm being changed is skipped) and its page-table lock.
pub fn walk_mm(mt: MmTables<'_>, pass: Pass, sc: &mut ScanControl) {
    let Some(g) = mt.mm.mmap_read_trylock() else { return };
    let seq = max_seq();
    for vma in g.vmas().iter().filter(|v| reclaimable_vma(v)) {
        if pass == Pass::Evict && sc.nr_reclaimed >= sc.nr_to_reclaim {
            return;
        }
        let ptl = mt.mm.page_table_lock_guard();
        let mem = mt.mem.lock();
        let asid = mt.mm.asid();
        // Blocks (level 1 and 2) are large folios: skipped.
        let r = for_each_pte(&ptl, &mem, vma.start, vma.end, &mut |va, level, run| {
            if level == 3 {
                match pass {
                    Pass::Age => age_run(run, va, asid, seq, sc),
                    Pass::Evict | Pass::CountCold => evict_run(mt.mm, run, va, pass, seq, sc),
                }
            }
            Ok::<(), MmError>(())
        });
        // A block the VMA cuts cannot exist (VMAs split blocks at their
        // edges); nothing of a walk that stops is lost either way.
        debug_assert!(r.is_ok(), "reclaim walk: {r:?}");
    }
}

/// The order-0 anonymous folio a present entry maps, if reclaim may look
/// at it at all.
#[inline]
fn candidate(d: super::desc::Desc) -> Option<Folio> {
    if !d.is_valid() || d.special() || d.0 & CONT_BIT != 0 {
        return None;
    }
    let f = page::phys_to_page(d.output_address(PAGE_SIZE))?.folio()?;
    (f.is_anon() && !f.is_large()).then_some(f)
}

/// Linux `walk_pte_range`: young entries become old (`ptep_test_and_clear_young`),
/// their folios move to generation `seq`, and one TLB invalidation covers
/// the run's entries that were young.
fn age_run(run: PteRun<'_>, va: VirtAddr, asid: u16, seq: u32, sc: &mut ScanControl) {
    let (mut lo, mut hi) = (usize::MAX, 0);
    for i in 0..run.len() {
        let d = run.get(i);
        if !d.af() {
            continue;
        }
        let Some(f) = candidate(d) else { continue };
        // AF is a permission bit: the CAS keeps a dirty update the MMU makes.
        let Ok(old) = run.pte(i).update(0, AF_BIT) else { continue };
        if old.af() {
            f.set_lru_gen(seq);
            sc.nr_aged += 1;
            (lo, hi) = (lo.min(i), i + 1);
        }
    }
    if lo < hi {
        let start = va + lo as u64 * PAGE_SIZE;
        KernelFlush.flush(start, (hi - lo) as u64 * PAGE_SIZE, Some(asid), true);
    }
}

/// Linux `shrink_folio_list` over one run: referenced folios are activated,
/// cold ones paged out.
fn evict_run(mm: &MmStruct, run: PteRun<'_>, va: VirtAddr, pass: Pass, seq: u32, sc: &mut ScanControl) {
    for i in 0..run.len() {
        if pass == Pass::Evict && sc.nr_reclaimed >= sc.nr_to_reclaim {
            return;
        }
        let d = run.get(i);
        let Some(f) = candidate(d) else { continue };
        sc.nr_scanned += 1;
        if d.af() || f.lru_gen() >= seq {
            // Referenced since the last aging (Linux `folio_referenced` →
            // `FOLIOREF_ACTIVATE`), or young since it was allocated.
            if pass == Pass::Evict && d.af() && f.lru_gen() < seq {
                f.set_lru_gen(seq);
                sc.nr_activated += 1;
            }
            continue;
        }
        let (pte, fva) = (run.pte(i), va + i as u64 * PAGE_SIZE);
        // Pinned, held by GUP or the swap cache, or mapped by another
        // process too: stays.
        if f.maybe_dma_pinned() || !swap_state::swappable(pte, fva, f) {
            continue;
        }
        if pass == Pass::CountCold {
            sc.nr_reclaimed += 1;
            continue;
        }
        match swap_state::swap_out_folio(mm, pte, fva, f) {
            Ok(()) => sc.nr_reclaimed += 1,
            // A GUP-fast took a reference meanwhile: the entry is back.
            Err(SwapOutError::Busy) => {}
            Err(SwapOutError::Swap(_) | SwapOutError::NoMemory) => {
                sc.nr_failed += 1;
                // Nothing more can go out this round.
                sc.nr_to_reclaim = sc.nr_reclaimed;
                return;
            }
        }
    }
}

/// Hands every address space reclaim may walk to the callback it is given
/// (the process layer knows the processes; `mm` does not).
pub type ForEachMm<'a> = &'a mut dyn FnMut(&mut dyn FnMut(MmTables<'_>));

/// Linux `try_to_inc_max_seq`: a new youngest generation, then one aging
/// walk over every address space `for_each_mm` hands out.
pub fn age(for_each_mm: ForEachMm<'_>, sc: &mut ScanControl) {
    MAX_SEQ.fetch_add(1, Ordering::Relaxed);
    AGING.fetch_add(1, Ordering::Relaxed);
    for_each_mm(&mut |mt| walk_mm(mt, Pass::Age, sc));
}

/// Serialises direct reclaim: a second CPU short of memory waits for the
/// first one's reclaim and then retries its allocation.
static RECLAIM_LOCK: spin::Mutex<()> = spin::Mutex::new(());

/// Linux `try_to_free_pages` (direct reclaim): evicts cold anonymous folios
/// of every address space `for_each_mm` hands out until
/// [`RECLAIM_BATCH_BYTES`] are freed, aging between evictions up to
/// [`MAX_AGING_PASSES`] times. Returns the pages freed; 0 means nothing
/// more can go (no cold page, or swap full): out of memory. The caller
/// holds no page-table lock and no allocator lock.
pub fn try_to_free_pages(for_each_mm: ForEachMm<'_>) -> u64 {
    let _serial = RECLAIM_LOCK.lock();
    ALLOCSTALL.fetch_add(1, Ordering::Relaxed);
    let mut sc = ScanControl { nr_to_reclaim: RECLAIM_BATCH_BYTES / PAGE_SIZE, ..ScanControl::default() };
    for pass in 0..=MAX_AGING_PASSES {
        if pass > 0 {
            age(for_each_mm, &mut sc);
        }
        for_each_mm(&mut |mt| walk_mm(mt, Pass::Evict, &mut sc));
        if sc.nr_reclaimed >= sc.nr_to_reclaim || sc.nr_failed > 0 {
            break;
        }
    }
    PGSCAN.fetch_add(sc.nr_scanned, Ordering::Relaxed);
    PGSTEAL.fetch_add(sc.nr_reclaimed, Ordering::Relaxed);
    PSWPOUT.fetch_add(sc.nr_reclaimed, Ordering::Relaxed);
    PGACTIVATE.fetch_add(sc.nr_activated, Ordering::Relaxed);
    sc.nr_reclaimed
}
