//! The physical frame allocator: a buddy allocator over all RAM
//! (`buddy_system_allocator::FrameAllocator`), with order-N allocations for
//! page tables and, later, large folios.
//!
//! A bitmap of allocated frames sits beside the buddy so that double frees
//! and frees of frames that were never handed out are caught, and so that
//! `invariants` can check the counters against it.

use super::page_table_check::Violation;
use alloc::vec;
use alloc::vec::Vec;
use buddy_system_allocator::FrameAllocator;
use core::sync::atomic::{AtomicU64, Ordering};

use spin::Mutex;

use super::addr::{PhysAddr, PhysRange};
use super::layout::phys_to_virt;
use crate::arch::aarch64::granule::{PAGE_SHIFT, PAGE_SIZE, align_down, align_up};

/// Who holds a frame, for `meminfo`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(usize)]
pub enum Owner {
    PageTable = 0,
    Heap = 1,
    Test = 2,
    Other = 3,
    /// Folios: anonymous pages of user processes and pages drivers insert.
    UserAnon = 4,
    /// Free frames held in the per-CPU page lists (counted as free).
    Pcp = 5,
}
pub const OWNERS: [&str; 6] = ["page tables", "kernel heap", "tests", "other", "user folios", "per-CPU free lists"];

struct State {
    buddy: FrameAllocator<33>,
    base_pfn: u64,
    /// 1 = allocated or never handed to the buddy.
    bitmap: Vec<u64>,
    /// 1 = managed by the buddy (RAM that is not reserved).
    managed_map: Vec<u64>,
    /// Frames given to the buddy (RAM minus reservations).
    managed: u64,
    allocated: u64,
    by_owner: [u64; 6],
}

static FRAMES: Mutex<Option<State>> = Mutex::new(None);

#[derive(Clone, Copy, Debug, Default)]
pub struct Stats {
    pub managed: u64,
    /// Frames that can be allocated: the buddy's and the per-CPU lists'.
    pub free: u64,
    /// Frames handed out (the per-CPU lists' are not).
    pub allocated: u64,
    pub by_owner: [u64; 6],
}

#[derive(Debug, PartialEq, Eq)]
pub enum FreeError {
    NotRam,
    NotAllocated(PhysAddr),
}

/// Hands every page of `ram` except `reserved` to the allocator. Returns the
/// number of frames made available.
pub fn init(ram: &[PhysRange], reserved: &[PhysRange]) -> u64 {
    let lo = ram.iter().map(|r| r.start.as_u64()).min().unwrap_or(0);
    let hi = ram.iter().map(|r| r.end.as_u64()).max().unwrap_or(0);
    let base_pfn = lo >> PAGE_SHIFT;
    let nframes = (align_up(hi, PAGE_SIZE) >> PAGE_SHIFT) - base_pfn;
    let mut st = State {
        buddy: FrameAllocator::new(),
        base_pfn,
        // All bits set: "not free"; cleared for every page handed to the buddy.
        bitmap: vec![u64::MAX; (nframes as usize).div_ceil(64)],
        managed_map: vec![0; (nframes as usize).div_ceil(64)],
        managed: 0,
        allocated: 0,
        by_owner: [0; 6],
    };
    for r in ram {
        let mut start = align_up(r.start.as_u64(), PAGE_SIZE);
        let end = align_down(r.end.as_u64(), PAGE_SIZE);
        // Cut the reservations out of [start, end).
        let mut cuts: Vec<PhysRange> = reserved.iter().filter(|x| x.overlaps(r)).copied().collect();
        cuts.sort_by_key(|c| c.start);
        for c in cuts.iter().chain(core::iter::once(&PhysRange::new(end, end))) {
            let cut_start = align_down(c.start.as_u64(), PAGE_SIZE).max(start);
            let cut_end = align_up(c.end.as_u64(), PAGE_SIZE);
            if cut_start > start {
                let e = cut_start.min(end);
                st.buddy.add_frame((start >> PAGE_SHIFT) as usize, (e >> PAGE_SHIFT) as usize);
                for pfn in start >> PAGE_SHIFT..e >> PAGE_SHIFT {
                    let i = (pfn - base_pfn) as usize;
                    st.bitmap[i / 64] &= !(1 << (i % 64));
                    st.managed_map[i / 64] |= 1 << (i % 64);
                }
                st.managed += (e - start) >> PAGE_SHIFT;
            }
            start = start.max(cut_end);
            if start >= end {
                break;
            }
        }
    }
    let n = st.managed;
    pcp::init(base_pfn, nframes);
    *FRAMES.lock() = Some(st);
    n
}

fn mark(st: &mut State, pfn: u64, count: u64, allocated: bool) -> Result<(), FreeError> {
    for p in pfn..pfn + count {
        let i = p.checked_sub(st.base_pfn).ok_or(FreeError::NotRam)? as usize;
        let w = st.bitmap.get_mut(i / 64).ok_or(FreeError::NotRam)?;
        let bit = 1u64 << (i % 64);
        if !allocated && *w & bit == 0 {
            return Err(FreeError::NotAllocated(PhysAddr::from_pfn(p)));
        }
        if allocated {
            *w |= bit;
        } else {
            *w &= !bit;
        }
    }
    Ok(())
}

/// Allocates `2^order` contiguous frames, aligned to their size. Not zeroed.
pub fn alloc(order: u32, owner: Owner) -> Option<PhysAddr> {
    alloc_min_free(order, owner, 0)
}

/// Like [`alloc`], but fails unless more than `min_free + 2^order` frames
/// are free (the check and the allocation under one lock).
fn alloc_min_free(order: u32, owner: Owner, min_free: u64) -> Option<PhysAddr> {
    let _irq = crate::arch::cpu::local_irq_save();
    let mut r = alloc_buddy(order, owner, min_free);
    if r.is_none() && pcp::drain_all() > 0 {
        // The per-CPU lists held what was missing.
        r = alloc_buddy(order, owner, min_free);
    }
    r
}

/// One buddy allocation under the allocator lock (IRQs masked by the caller).
fn alloc_buddy(order: u32, owner: Owner, min_free: u64) -> Option<PhysAddr> {
    let mut g = FRAMES.lock();
    g.as_mut().and_then(|st| {
        let count = 1u64 << order;
        // The per-CPU lists' frames are free too (they come back on demand).
        if st.managed - st.allocated + pcp::LISTED.load(Ordering::Acquire) < min_free + count {
            return None;
        }
        let pfn = st.buddy.alloc(count as usize)? as u64;
        mark(st, pfn, count, true).expect("buddy returned a frame outside RAM");
        st.allocated += count;
        // Wrapping: UserAnon's counter may stand "negative" while the per-CPU
        // lists hold moves not yet settled (see pcp::settle).
        let o = &mut st.by_owner[owner as usize];
        *o = o.wrapping_add(count);
        Some(PhysAddr::from_pfn(pfn))
    })
}

/// Frames kept back from user allocations (16 MiB worth), so that user
/// memory can never starve the kernel (heap growth, page tables, teardown).
pub const USER_RESERVE_BYTES: u64 = 16 << 20;

/// Like [`alloc_zeroed`] for user memory: fails while free memory is at or
/// below the reserve (Linux's min watermark, in spirit).
#[inline]
pub fn alloc_user_zeroed(order: u32) -> Option<PhysAddr> {
    let pa = alloc_user(order)?;
    crate::arch::aarch64::cpu::zero_pages(phys_to_virt(pa).as_u64(), PAGE_SIZE << order);
    Some(pa)
}

/// A zeroed table page for a user address space, with the reserve rule
/// (Linux `GFP_PGTABLE_USER` cannot dip below the min watermark either):
/// a process that maps sparse memory cannot eat the kernel's reserve with
/// tables.
pub fn alloc_user_table() -> Option<PhysAddr> {
    let pa = alloc_min_free(0, Owner::PageTable, USER_RESERVE_BYTES / PAGE_SIZE)?;
    // SAFETY: the frame was just allocated and is reachable through the linear map.
    unsafe { core::ptr::write_bytes(phys_to_virt(pa).as_u64() as *mut u8, 0, PAGE_SIZE as usize) };
    Some(pa)
}

/// User memory, not zeroed (copies overwrite it), with the reserve rule.
/// Single frames come from this CPU's page list (Linux's per-CPU pages).
pub fn alloc_user(order: u32) -> Option<PhysAddr> {
    if super::fail_alloc::should_fail(super::fail_alloc::AllocKind::Frame) {
        return None;
    }
    let reserve = USER_RESERVE_BYTES / crate::arch::aarch64::granule::PAGE_SIZE;
    if order == 0
        && let Some(pa) = pcp::alloc(reserve)
    {
        return Some(pa);
    }
    alloc_min_free(order, Owner::UserAnon, reserve)
}

/// Per-CPU lists of free single frames for user memory (Linux's per-CPU
/// pages, `pcp`): a fault takes a frame from its CPU's list under that
/// list's own, uncontended lock, and freed user frames go back there.
/// The buddy is only touched to refill a list with one aligned block of
/// [`BATCH_ORDER`] frames, or to take half of a full list back.
///
/// Accounting stays exact: a listed frame is allocated from the buddy's
/// point of view, marked in the bitmap and counted under `Owner::Pcp`;
/// taking one for user memory moves it to `Owner::UserAnon` through the
/// list's `to_user` counter, which [`stats`] and [`check`] add in. Listed
/// frames are free for everyone else: [`Stats::free`] counts them, and a
/// buddy allocation that fails drains every list and tries again.
mod pcp {
    use super::*;
    use crate::arch::aarch64::boot::MAX_CPUS;

    /// Most frames a list holds; a full list gives half back.
    const HIGH: usize = 64;
    /// Refills take one aligned block of 2^BATCH_ORDER frames.
    const BATCH_ORDER: u32 = 4;

    pub(super) struct List {
        pfns: [u64; HIGH],
        pub(super) n: usize,
        /// Frames taken for user memory minus user frames given back.
        pub(super) to_user: i64,
    }

    pub(super) static LISTS: [Mutex<List>; MAX_CPUS] =
        [const { Mutex::new(List { pfns: [0; HIGH], n: 0, to_user: 0 }) }; MAX_CPUS];
    /// Frames on all lists together (exact: changed under a list's lock).
    pub(super) static LISTED: AtomicU64 = AtomicU64::new(0);
    /// One bit per frame: it is on some list. Catches a double free of a
    /// single user frame, which the buddy's bitmap cannot see here (a
    /// listed frame stays allocated there).
    static ON_LIST: spin::Once<(u64, Vec<AtomicU64>)> = spin::Once::new();

    pub(super) fn init(base_pfn: u64, nframes: u64) {
        ON_LIST.call_once(|| (base_pfn, (0..nframes.div_ceil(64)).map(|_| AtomicU64::new(0)).collect()));
    }

    /// Marks `pfn` listed (true) or not; returns whether it was listed before.
    fn mark_listed(pfn: u64, on: bool) -> bool {
        let Some((base, map)) = ON_LIST.get() else { return false };
        let Some(i) = pfn.checked_sub(*base) else { return false };
        let Some(w) = map.get(i as usize / 64) else { return false };
        let bit = 1u64 << (i % 64);
        let old = if on { w.fetch_or(bit, Ordering::AcqRel) } else { w.fetch_and(!bit, Ordering::AcqRel) };
        old & bit != 0
    }

    fn mine() -> &'static Mutex<List> {
        &LISTS[crate::arch::percpu::this_cpu().id]
    }

    /// A frame for user memory, or None (the caller asks the buddy).
    pub(super) fn alloc(reserve: u64) -> Option<PhysAddr> {
        let _irq = crate::arch::cpu::local_irq_save();
        let mut l = mine().lock();
        if l.n == 0 {
            refill(&mut l, reserve);
        }
        let r = (l.n > 0).then(|| {
            l.n -= 1;
            l.to_user += 1;
            LISTED.fetch_sub(1, Ordering::AcqRel);
            mark_listed(l.pfns[l.n], false);
            PhysAddr::from_pfn(l.pfns[l.n])
        });
        drop(l);
        r
    }

    fn refill(l: &mut List, reserve: u64) {
        let mut g = FRAMES.lock();
        let Some(st) = g.as_mut() else { return };
        for order in (0..=BATCH_ORDER).rev() {
            let count = 1u64 << order;
            if st.managed - st.allocated < reserve + count {
                continue;
            }
            if let Some(pfn) = st.buddy.alloc(count as usize) {
                let pfn = pfn as u64;
                mark(st, pfn, count, true).expect("buddy returned a frame outside RAM");
                st.allocated += count;
                st.by_owner[Owner::Pcp as usize] += count;
                // Handed out from the top, so the lowest frame goes first.
                for i in (0..count).rev() {
                    let n = l.n;
                    l.pfns[n] = pfn + i;
                    l.n = n + 1;
                    mark_listed(pfn + i, true);
                }
                LISTED.fetch_add(count, Ordering::AcqRel);
                return;
            }
        }
    }

    /// Takes a freed single user frame onto this CPU's list. A frame that
    /// is on a list already (a double free) is refused and changes nothing.
    pub(super) fn free(pa: PhysAddr) -> Result<(), FreeError> {
        let _irq = crate::arch::cpu::local_irq_save();
        let mut l = mine().lock();
        let r = if mark_listed(pa.pfn(), true) {
            Err(FreeError::NotAllocated(pa))
        } else {
            if l.n == HIGH {
                drain(&mut l, HIGH / 2);
            }
            let n = l.n;
            l.pfns[n] = pa.pfn();
            l.n = n + 1;
            l.to_user -= 1;
            LISTED.fetch_add(1, Ordering::AcqRel);
            Ok(())
        };
        drop(l);
        r
    }

    /// Moves the list's `to_user` into the allocator's owner counters. The
    /// counters may pass through "negative" values (wrapping) while other
    /// lists still hold moves of their own; only the sums are meaningful.
    fn settle(st: &mut State, l: &mut List) {
        let ua = &mut st.by_owner[Owner::UserAnon as usize];
        *ua = ua.wrapping_add(l.to_user as u64);
        let p = &mut st.by_owner[Owner::Pcp as usize];
        *p = p.wrapping_sub(l.to_user as u64);
        l.to_user = 0;
    }

    /// Gives `k` listed frames back to the buddy.
    fn drain(l: &mut List, k: usize) -> usize {
        let k = k.min(l.n);
        let mut g = FRAMES.lock();
        let Some(st) = g.as_mut() else { return 0 };
        settle(st, l);
        LISTED.fetch_sub(k as u64, Ordering::AcqRel);
        for _ in 0..k {
            l.n -= 1;
            let pfn = l.pfns[l.n];
            mark_listed(pfn, false);
            mark(st, pfn, 1, false).expect("a listed frame the allocator does not know");
            st.buddy.dealloc(pfn as usize, 1);
            st.allocated -= 1;
            let p = &mut st.by_owner[Owner::Pcp as usize];
            *p = p.wrapping_sub(1);
        }
        k
    }

    /// Room left in this CPU's list.
    pub(super) fn room() -> usize {
        let _irq = crate::arch::cpu::local_irq_save();
        HIGH - mine().lock().n
    }

    /// Every list locked, in index order (before the allocator lock).
    pub(super) fn lock_all() -> [spin::MutexGuard<'static, List>; MAX_CPUS] {
        core::array::from_fn(|i| LISTS[i].lock())
    }

    /// Settles every list into the owner counters, so that the allocator's
    /// own `UserAnon` count is exact (before freeing user frames to the
    /// buddy). The lists' locks come first, then the allocator's.
    pub(super) fn settle_all() {
        let mut lists = lock_all();
        let mut g = FRAMES.lock();
        if let Some(st) = g.as_mut() {
            for l in lists.iter_mut() {
                settle(st, l);
            }
        }
    }

    /// Gives every list's frames back to the buddy; returns how many.
    pub(super) fn drain_all() -> usize {
        LISTS
            .iter()
            .map(|l| {
                let mut l = l.lock();
                let n = l.n;
                drain(&mut l, n)
            })
            .sum()
    }
}

/// First page frame number and number of frames the allocator spans
/// (holes and reservations included).
pub fn pfn_span() -> (u64, u64) {
    let g = FRAMES.lock();
    g.as_ref().map_or((0, 0), |st| (st.base_pfn, st.bitmap.len() as u64 * 64))
}

/// Allocates and zeroes `2^order` frames.
pub fn alloc_zeroed(order: u32, owner: Owner) -> Option<PhysAddr> {
    let pa = alloc(order, owner)?;
    // SAFETY: the frames were just allocated and are reachable through the linear map.
    unsafe { core::ptr::write_bytes(phys_to_virt(pa).as_u64() as *mut u8, 0, (PAGE_SIZE << order) as usize) };
    Some(pa)
}

/// Returns `2^order` frames at `pa`. Freeing something that is not
/// allocated (never handed out, already free, reserved, not RAM) is refused
/// and changes nothing.
pub fn free(pa: PhysAddr, order: u32, owner: Owner) -> Result<(), FreeError> {
    if owner == Owner::UserAnon {
        if order == 0 {
            return pcp::free(pa);
        }
        // The allocator's own UserAnon count is exact only once the lists'
        // moves are in (a list may have given user frames of other lists
        // back to the buddy).
        pcp::settle_all();
    }
    let _irq = crate::arch::cpu::local_irq_save();
    free_locked(&mut FRAMES.lock(), pa, order, owner)
}

fn free_locked(g: &mut Option<State>, pa: PhysAddr, order: u32, owner: Owner) -> Result<(), FreeError> {
    let st = g.as_mut().ok_or(FreeError::NotRam)?;
    let count = 1u64 << order;
    if !pa.as_u64().is_multiple_of(crate::arch::aarch64::granule::PAGE_SIZE << order) {
        return Err(FreeError::NotAllocated(pa));
    }
    // Check the whole range first so a bad free changes nothing.
    for p in pa.pfn()..pa.pfn() + count {
        let i = p.checked_sub(st.base_pfn).ok_or(FreeError::NotRam)? as usize;
        let w = *st.bitmap.get(i / 64).ok_or(FreeError::NotRam)?;
        if w & st.managed_map[i / 64] & (1 << (i % 64)) == 0 {
            return Err(FreeError::NotAllocated(PhysAddr::from_pfn(p)));
        }
    }
    // UserAnon's own counter is meaningful only with the lists' unsettled
    // moves added in (pcp::settle): the bitmap check above guards its frees.
    if owner != Owner::UserAnon && st.by_owner[owner as usize] < count {
        return Err(FreeError::NotAllocated(pa));
    }
    mark(st, pa.pfn(), count, false)?;
    st.buddy.dealloc(pa.pfn() as usize, count as usize);
    st.allocated -= count;
    let o = &mut st.by_owner[owner as usize];
    *o = o.wrapping_sub(count);
    Ok(())
}

/// Frees many single frames at once (Linux's `free_unref_page_list`):
/// runs of physically contiguous frames go back to the buddy as the
/// largest aligned blocks they contain, under one lock. Frames that are
/// not allocated are skipped and counted in the result.
pub fn free_bulk(pas: &[PhysAddr], owner: Owner) -> usize {
    // User frames go to this CPU's list first, the rest to the buddy.
    let mut pas = pas;
    let mut listed_bad = 0;
    if owner == Owner::UserAnon {
        let room = pcp::room();
        let k = room.min(pas.len());
        for &pa in &pas[..k] {
            listed_bad += pcp::free(pa).is_err() as usize;
        }
        pas = &pas[k..];
        if pas.is_empty() {
            return listed_bad;
        }
        pcp::settle_all();
    }
    let _irq = crate::arch::cpu::local_irq_save();
    let mut g = FRAMES.lock();
    let mut bad = listed_bad;
    let mut i = 0;
    while i < pas.len() {
        // The run of consecutive frames starting at i.
        let start = pas[i].pfn();
        let mut n = 1;
        while i + (n as usize) < pas.len() && pas[i + n as usize].pfn() == start + n {
            n += 1;
        }
        let mut pfn = start;
        let end = start + n;
        while pfn < end {
            // The largest aligned block at pfn that fits in the run.
            let mut order = pfn.trailing_zeros().min(32);
            while pfn + (1 << order) > end {
                order -= 1;
            }
            if free_locked(&mut g, PhysAddr::from_pfn(pfn), order, owner).is_err() {
                // Retry page by page so one bad frame does not lose the rest.
                for p in pfn..pfn + (1 << order) {
                    if free_locked(&mut g, PhysAddr::from_pfn(p), 0, owner).is_err() {
                        bad += 1;
                    }
                }
            }
            pfn += 1 << order;
        }
        i += n as usize;
    }
    drop(g);
    bad
}

pub fn stats() -> Stats {
    let _irq = crate::arch::cpu::local_irq_save();
    // Every list's lock, then the allocator's (their order), held together
    // so that no move between a list and the counters is seen half-done.
    let lists = pcp::lock_all();
    let to_user: i64 = lists.iter().map(|l| l.to_user).sum();
    let g = FRAMES.lock();
    let r = match g.as_ref() {
        Some(st) => stats_of(st, to_user),
        None => Stats::default(),
    };
    drop(g);
    r
}

/// The counters with the per-CPU lists' moves to user memory added in.
fn stats_of(st: &State, to_user: i64) -> Stats {
    let mut by_owner = st.by_owner;
    by_owner[Owner::UserAnon as usize] = by_owner[Owner::UserAnon as usize].wrapping_add(to_user as u64);
    by_owner[Owner::Pcp as usize] = by_owner[Owner::Pcp as usize].wrapping_sub(to_user as u64);
    let listed = by_owner[Owner::Pcp as usize];
    Stats { managed: st.managed, free: st.managed - st.allocated + listed, allocated: st.allocated - listed, by_owner }
}

/// Whether the frame at `pa` is currently allocated (or reserved).
pub fn is_allocated(pa: PhysAddr) -> bool {
    let g = FRAMES.lock();
    let Some(st) = g.as_ref() else { return false };
    let Some(i) = pa.pfn().checked_sub(st.base_pfn) else { return true };
    st.bitmap.get(i as usize / 64).is_none_or(|w| w & (1 << (i % 64)) != 0)
}

/// Checks the counters against the bitmap (part of
/// [`super::page_table_check`]). Returns the first disagreement.
pub fn check() -> Result<Stats, Violation> {
    let _irq = crate::arch::cpu::local_irq_save();
    check_locked()
}

fn check_locked() -> Result<Stats, Violation> {
    let lists = pcp::lock_all();
    let to_user: i64 = lists.iter().map(|l| l.to_user).sum();
    let listed: u64 = lists.iter().map(|l| l.n as u64).sum();
    let counter = pcp::LISTED.load(Ordering::Acquire);
    if listed != counter {
        return Err(Violation::PcpListed { listed, counter });
    }
    let g = FRAMES.lock();
    let st = g.as_ref().ok_or(Violation::FramesUninitialised)?;
    let set: u64 = st.bitmap.iter().map(|w| w.count_ones() as u64).sum();
    let total_bits = st.bitmap.len() as u64 * 64;
    let unmanaged = total_bits - st.managed;
    if set != unmanaged + st.allocated {
        return Err(Violation::Bitmap { set, unmanaged, allocated: st.allocated });
    }
    let owned: u64 = st.by_owner.iter().fold(0u64, |a, &b| a.wrapping_add(b));
    if owned != st.allocated {
        return Err(Violation::Owners { owned, allocated: st.allocated });
    }
    let s = stats_of(st, to_user);
    let counted = s.by_owner[Owner::Pcp as usize];
    if counted != listed {
        return Err(Violation::PcpCounted { listed, counted });
    }
    Ok(s)
}
