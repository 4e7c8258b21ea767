//! The swap device (Linux `mm/swapfile.c` with `mm/swap_state.c`'s swap
//! cache): one RAM-backed device, a pool of frames the boot code keeps
//! from the frame allocator (`pagelab.swap=SIZE`, default 64M, 0 = none),
//! at the top of the highest RAM bank.
//!
//! - Each slot is one page of the pool. `swap_map[offset]` counts the swap
//!   entries that point at the slot, plus [`SWAP_HAS_CACHE`] while a folio
//!   for it is in the swap cache (Linux's `swap_map` and `SWAP_HAS_CACHE`).
//!   A slot is free when its word is 0.
//! - The swap cache maps a slot to the folio that holds its data in RAM,
//!   and holds one reference to it: the folio of a shared (after fork)
//!   entry that one process swapped in stays there until the last entry
//!   for the slot is swapped in or zapped. Then slot and cache entry go
//!   together (pagelab frees eagerly; Linux leaves that to reclaim).
//! - Large folios take contiguous slots ([`get_swap_pages`]), as Linux's
//!   cluster allocator gives them.
//!
//! Lock order: the page-table lock, then the frame-table lock, then the
//! swap lock, which is innermost (the page allocator may run under it).

use alloc::vec::Vec;
use core::sync::atomic::{AtomicU64, Ordering};

use spin::Mutex;

use super::addr::PhysAddr;
use super::desc::SwpEntry;
use super::page::{self, Folio};
use crate::arch::aarch64::granule::PAGE_SIZE;
use crate::util::Bytes;

/// The swap-map bit for "a folio for this slot is in the swap cache"
/// (Linux `SWAP_HAS_CACHE`); the rest of the word is the entry count.
pub const SWAP_HAS_CACHE: u32 = 1 << 31;

/// The device's type in swap entries: pagelab has one device.
pub const SWAP_TYPE: u8 = 0;

/// Default size of the device when `pagelab.swap=` is not given.
pub const DEFAULT_SWAP_SIZE: u64 = 64 << 20;

/// Why a swap operation could not be done.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SwapError {
    /// No free slots (or no run of `nr` contiguous free slots).
    Full { nr: u64 },
    /// There is no swap device (`pagelab.swap=0` or no room at boot).
    NoDevice,
    /// An entry names a slot that is not in use (a kernel bug if it came
    /// from a page table).
    BadEntry { entry: SwpEntry },
}

impl core::fmt::Display for SwapError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            SwapError::Full { nr } => write!(f, "swap full (no {nr} free slot(s))"),
            SwapError::NoDevice => f.write_str("no swap device (pagelab.swap=0)"),
            SwapError::BadEntry { entry } => {
                write!(f, "swap entry {}:{:#x} names a free slot", entry.type_, entry.offset)
            }
        }
    }
}

/// Most pieces the pool comes in (Linux's swap extents: the device's slots
/// in order over discontiguous memory). The boot code splits the pool
/// around what it must not cover, such as the devicetree and initrd QEMU
/// puts 128 MiB into RAM.
pub const MAX_EXTENTS: usize = 2;

/// The pool the boot code reserved: `[start, end)` per extent, in slot
/// order (an unused extent is `[0, 0)`).
static POOL: [[AtomicU64; 2]; MAX_EXTENTS] = [const { [AtomicU64::new(0), AtomicU64::new(0)] }; MAX_EXTENTS];

/// Linux `swap_info_struct`, reduced to one RAM-backed device.
struct SwapInfo {
    /// Per extent: its first frame and its slots (Linux `swap_extent`).
    extents: [(PhysAddr, u64); MAX_EXTENTS],
    /// Per slot: entry count | [`SWAP_HAS_CACHE`].
    swap_map: Vec<u32>,
    /// Per slot: the physical address of the swap-cache folio, or 0.
    cache: Vec<u64>,
    /// Slots in use (word != 0).
    inuse: u64,
    /// Where the next search for free slots starts (Linux's cluster hint).
    next: u64,
}

static SWAP: Mutex<Option<SwapInfo>> = Mutex::new(None);

/// What `pagelab.swap=` asked for (`u64::MAX`: a value that did not parse).
static REQUESTED: AtomicU64 = AtomicU64::new(0);

/// Records what `pagelab.swap=` asked for (`None`: it did not parse).
pub fn set_requested(size: Option<u64>) {
    REQUESTED.store(size.unwrap_or(u64::MAX), Ordering::Relaxed);
}

/// Records the pool the boot code kept from the frame allocator: up to
/// [`MAX_EXTENTS`] ranges, in slot order (none: no swap).
pub fn set_pool(extents: &[(PhysAddr, PhysAddr)]) {
    for (i, slot) in POOL.iter().enumerate() {
        let (s, e) = extents.get(i).map_or((0, 0), |&(s, e)| (s.as_u64(), e.as_u64()));
        slot[0].store(s, Ordering::Release);
        slot[1].store(e, Ordering::Release);
    }
}

/// The pool's extents `[start, end)`, in slot order (none without swap).
pub fn pool() -> impl Iterator<Item = (PhysAddr, PhysAddr)> {
    POOL.iter().filter_map(|x| {
        let (s, e) = (x[0].load(Ordering::Acquire), x[1].load(Ordering::Acquire));
        (e > s).then_some((PhysAddr::new(s), PhysAddr::new(e)))
    })
}

/// Builds the swap map and cache over the pool (`swapon`), once the heap
/// exists. Without a pool, or without heap for the maps, there is no swap.
pub fn init() {
    if pool().next().is_none() {
        match REQUESTED.load(Ordering::Relaxed) {
            0 => log::info!("swap: none (pagelab.swap=0)"),
            u64::MAX => log::warn!("swap: pagelab.swap= is not a size (like 64M); no swap"),
            r => log::warn!("swap: {} do not fit in the top RAM bank with 64 MiB to spare; no swap", Bytes(r)),
        }
        return;
    }
    let mut extents = [(PhysAddr::new(0), 0); MAX_EXTENTS];
    for (x, (s, e)) in extents.iter_mut().zip(pool()) {
        *x = (s, (e - s) / PAGE_SIZE);
    }
    let n = extents.iter().map(|x| x.1).sum::<u64>() as usize;
    let (mut map, mut cache) = (Vec::new(), Vec::new());
    if map.try_reserve_exact(n).is_err() || cache.try_reserve_exact(n).is_err() {
        log::warn!("swap: no heap for the swap map of {n} slots; no swap");
        set_pool(&[]);
        return;
    }
    map.resize(n, 0);
    cache.resize(n, 0);
    *SWAP.lock() = Some(SwapInfo { extents, swap_map: map, cache, inuse: 0, next: 0 });
    for (s, e) in pool() {
        log::info!("swap: {} at [{:#x}, {:#x})", Bytes(e - s), s.as_u64(), e.as_u64());
    }
    log::info!("swap: {n} slots");
}

/// Bytes of swap (0 without a device).
pub fn total_bytes() -> u64 {
    pool().map(|(s, e)| e - s).sum()
}

/// `(slots, slots in use)`.
pub fn usage() -> (u64, u64) {
    SWAP.lock().as_ref().map_or((0, 0), |si| (si.swap_map.len() as u64, si.inuse))
}

impl SwapInfo {
    fn slot_pa(&self, offset: u64) -> PhysAddr {
        let mut o = offset;
        for &(base, n) in &self.extents {
            if o < n {
                return base + o * PAGE_SIZE;
            }
            o -= n;
        }
        panic!("swap slot {offset:#x} outside the device");
    }

    fn word(&mut self, entry: SwpEntry) -> Result<&mut u32, SwapError> {
        match self.swap_map.get_mut(entry.offset as usize) {
            Some(w) if *w != 0 && entry.type_ == SWAP_TYPE => Ok(w),
            _ => Err(SwapError::BadEntry { entry }),
        }
    }

    /// The word of `entry` became 0: the slot is free; its cache entry
    /// (if any) was dropped by the caller.
    fn maybe_free(&mut self, offset: u64) {
        if self.swap_map[offset as usize] == 0 {
            self.inuse -= 1;
        }
    }

    /// Drops the swap-cache folio of `offset` and its reference.
    fn delete_from_swap_cache(&mut self, offset: u64) {
        let pa = core::mem::take(&mut self.cache[offset as usize]);
        self.swap_map[offset as usize] &= !SWAP_HAS_CACHE;
        let f = folio_at(PhysAddr::new(pa));
        page::folio_clear_swapcache(f);
        f.put();
    }

    /// One entry for `entry` went: the count drops, and with the last
    /// entry the cache's folio and the slot go too.
    fn put_entry(&mut self, entry: SwpEntry) -> Result<(), SwapError> {
        let w = self.word(entry)?;
        if *w & !SWAP_HAS_CACHE == 0 {
            return Err(SwapError::BadEntry { entry });
        }
        *w -= 1;
        if *w == SWAP_HAS_CACHE {
            self.delete_from_swap_cache(entry.offset);
        }
        self.maybe_free(entry.offset);
        Ok(())
    }
}

fn folio_at(pa: PhysAddr) -> Folio {
    page::phys_to_page(pa).and_then(|p| p.folio()).expect("swap-cache entry without a folio")
}

/// Linux `folio_alloc_swap`/`get_swap_pages`: `nr` contiguous free slots,
/// naturally aligned to `nr` (a power of two) as Linux's large-folio
/// clusters, each with a count of 1. Returns the first.
pub fn get_swap_pages(nr: u64) -> Result<SwpEntry, SwapError> {
    let mut g = SWAP.lock();
    let si = g.as_mut().ok_or(SwapError::NoDevice)?;
    let n = si.swap_map.len() as u64;
    if nr == 0 || nr > n || si.inuse + nr > n {
        return Err(SwapError::Full { nr });
    }
    // Naturally aligned candidates, from the hint on, wrapping around.
    let cands = n / nr;
    let first = (si.next / nr) % cands;
    for k in 0..cands {
        let off = ((first + k) % cands) * nr;
        if (off..off + nr).any(|o| si.swap_map[o as usize] != 0) {
            continue;
        }
        for o in off..off + nr {
            si.swap_map[o as usize] = 1;
        }
        si.inuse += nr;
        si.next = off + nr;
        return Ok(SwpEntry { type_: SWAP_TYPE, offset: off });
    }
    Err(SwapError::Full { nr })
}

/// Gives back slots [`get_swap_pages`] handed out that no entry took
/// (the swap-out was undone).
pub fn put_swap_pages(first: SwpEntry, nr: u64) {
    let mut g = SWAP.lock();
    let si = g.as_mut().expect("put_swap_pages without a device");
    for o in first.offset..first.offset + nr {
        let e = SwpEntry { type_: first.type_, offset: o };
        si.put_entry(e).expect("put_swap_pages of a slot not handed out");
    }
}

/// Linux `swap_duplicate` (fork): one more entry for the slot.
pub fn swap_duplicate(entry: SwpEntry) -> Result<(), SwapError> {
    let mut g = SWAP.lock();
    let si = g.as_mut().ok_or(SwapError::NoDevice)?;
    let w = si.word(entry)?;
    if *w & !SWAP_HAS_CACHE >= SWAP_HAS_CACHE - 1 {
        return Err(SwapError::BadEntry { entry });
    }
    *w += 1;
    Ok(())
}

/// Linux `free_swap_and_cache` (zap, exit): an entry for the slot is gone;
/// the last one frees the slot and its swap-cache folio.
pub fn free_swap_and_cache(entry: SwpEntry) -> Result<(), SwapError> {
    let mut g = SWAP.lock();
    g.as_mut().ok_or(SwapError::NoDevice)?.put_entry(entry)
}

/// Linux `swap_writepage` for the RAM device: the page at `src` goes to
/// the slot of `entry` (which [`get_swap_pages`] handed out).
pub fn swap_writepage(entry: SwpEntry, src: PhysAddr) {
    let g = SWAP.lock();
    let si = g.as_ref().expect("swap_writepage without a device");
    assert!((entry.offset as usize) < si.swap_map.len());
    page::copy_page(si.slot_pa(entry.offset), src);
}

/// Linux `swap_read_folio` for the RAM device: the slot of `entry` is
/// copied to the page at `dst`.
pub fn swap_readpage(entry: SwpEntry, dst: PhysAddr) {
    let g = SWAP.lock();
    let si = g.as_ref().expect("swap_readpage without a device");
    assert!((entry.offset as usize) < si.swap_map.len());
    page::copy_page(dst, si.slot_pa(entry.offset));
}

/// What [`swapin`] hands the fault: the folio (with one reference for the
/// new mapping) and whether the faulting entry was the slot's last, after
/// which nobody else can reach the data: the page may be exclusive.
pub struct SwapIn {
    pub folio: Folio,
    pub last: bool,
}

/// The swap-in half of Linux `do_swap_page` (`swap_cache_get_folio`, else
/// `swapin_readahead` without readahead, then `swap_free` of the entry):
/// the slot's folio from the swap cache, or a new one read from the slot.
/// The faulting entry stops counting; while other entries for the slot
/// remain, the folio stays in the swap cache for them; with the last one
/// slot and cache entry go. `None`: no memory for the folio.
pub fn swapin(entry: SwpEntry) -> Result<Option<SwapIn>, SwapError> {
    let mut g = SWAP.lock();
    let si = g.as_mut().ok_or(SwapError::NoDevice)?;
    let w = *si.word(entry)?;
    if w & !SWAP_HAS_CACHE == 0 {
        return Err(SwapError::BadEntry { entry });
    }
    let off = entry.offset as usize;
    let folio = if w & SWAP_HAS_CACHE != 0 {
        let f = folio_at(PhysAddr::new(si.cache[off]));
        f.get();
        f
    } else {
        let Some(f) = page::folio_alloc_anon_nozero(0) else { return Ok(None) };
        page::copy_page(f.pa(), si.slot_pa(entry.offset));
        if w > 1 {
            // Others still point here: the cache keeps the folio for them.
            f.get();
            page::folio_set_swapcache(f);
            si.cache[off] = f.pa().as_u64();
            si.swap_map[off] |= SWAP_HAS_CACHE;
        }
        f
    };
    si.put_entry(entry)?;
    Ok(Some(SwapIn { folio, last: si.swap_map[off] == 0 }))
}

/// Undoes [`swapin`] when the fault cannot map the folio: the entry
/// counts again. The folio keeps the data; the caller drops its reference.
pub fn swapin_undo(entry: SwpEntry, folio: Folio) -> Result<(), SwapError> {
    let mut g = SWAP.lock();
    let si = g.as_mut().ok_or(SwapError::NoDevice)?;
    let off = entry.offset as usize;
    let w = si.swap_map.get_mut(off).ok_or(SwapError::BadEntry { entry })?;
    if *w == 0 {
        // The slot went with our entry: take it again, with the data.
        *w = 1;
        si.inuse += 1;
        page::copy_page(si.slot_pa(entry.offset), folio.pa());
    } else {
        *w += 1;
    }
    Ok(())
}

/// Every slot in use: `(offset, count, cached folio)`, for `invariants`.
pub fn for_each_slot(mut f: impl FnMut(u64, u32, Option<PhysAddr>)) {
    let g = SWAP.lock();
    let Some(si) = g.as_ref() else { return };
    for (i, &w) in si.swap_map.iter().enumerate() {
        let cached = si.cache[i];
        if w != 0 || cached != 0 {
            let c = (w & SWAP_HAS_CACHE != 0 || cached != 0).then_some(PhysAddr::new(cached));
            f(i as u64, w & !SWAP_HAS_CACHE, c);
        }
    }
}

/// `(slots in use, slots the map says are in use)` for `invariants`.
pub fn inuse_counts() -> (u64, u64) {
    let g = SWAP.lock();
    g.as_ref().map_or((0, 0), |si| (si.inuse, si.swap_map.iter().filter(|&&w| w != 0).count() as u64))
}
