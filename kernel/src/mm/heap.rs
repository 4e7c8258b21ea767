//! The kernel heap: `buddy_system_allocator::LockedHeapWithRescue`.
//!
//! It starts on a static 1 MiB region in the image and grows from the frame
//! allocator. The frame allocator itself allocates from this heap, so the
//! heap's out-of-memory rescue must never call it (it runs with the heap lock
//! held): instead it takes a chunk from a small reserve of frames that
//! [`refill_reserve`] tops up from safe places (outside any allocator lock).

use core::alloc::{GlobalAlloc, Layout};
use core::sync::atomic::{AtomicU64, Ordering};

use buddy_system_allocator::{Heap, LockedHeapWithRescue};

use super::frame::{self, Owner};
use super::layout::phys_to_virt;

/// Size of one heap growth chunk (order of 4K frames: 2 MiB).
const CHUNK_ORDER: u32 = 21 - crate::arch::aarch64::granule::PAGE_SHIFT;
const CHUNK: usize = 1 << 21;

static RESERVE: [AtomicU64; 4] = [const { AtomicU64::new(0) }; 4];

fn rescue(heap: &mut Heap<32>, _layout: &Layout) {
    for slot in &RESERVE {
        let pa = slot.swap(0, Ordering::AcqRel);
        if pa != 0 {
            let va = phys_to_virt(super::addr::PhysAddr::new(pa)).as_u64() as usize;
            // SAFETY: the chunk was allocated for the heap and is mapped.
            unsafe { heap.add_to_heap(va, va + CHUNK) };
            return;
        }
    }
}

static HEAP: LockedHeapWithRescue<32> = LockedHeapWithRescue::new(rescue);

/// Allocations this large go straight to the frame allocator (the heap's
/// rescue can only add 2 MiB chunks, which never merge into anything larger).
const BIG: usize = 256 << 10;

struct KernelAlloc;

fn big_order(layout: &Layout) -> u32 {
    let pages = layout.size().max(layout.align()).div_ceil(crate::arch::aarch64::granule::PAGE_SIZE as usize);
    pages.next_power_of_two().trailing_zeros()
}

// SAFETY: delegates to two allocators that each satisfy GlobalAlloc; a
// pointer goes back to the one that produced it (decided by layout size).
unsafe impl GlobalAlloc for KernelAlloc {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if layout.size() >= BIG {
            match frame::alloc(big_order(&layout), Owner::Heap) {
                Some(pa) => phys_to_virt(pa).as_u64() as *mut u8,
                None => core::ptr::null_mut(),
            }
        } else {
            // SAFETY: forwarded contract.
            unsafe { HEAP.alloc(layout) }
        }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        if layout.size() >= BIG {
            let pa = super::layout::linear_virt_to_phys(super::addr::VirtAddr::new(ptr as u64))
                .expect("big allocation outside the linear map");
            frame::free(pa, big_order(&layout), Owner::Heap).expect("freeing a big allocation");
        } else {
            // SAFETY: forwarded contract.
            unsafe { HEAP.dealloc(ptr, layout) }
        }
    }
}

#[global_allocator]
static KALLOC: KernelAlloc = KernelAlloc;

/// Gives the heap its static region. Must run before anything allocates.
pub fn init_static() {
    let start = crate::sym_addr!(__heap_start) as usize;
    let end = crate::sym_addr!(__heap_end) as usize;
    // SAFETY: the linker reserves [__heap_start, __heap_end) for the heap only.
    unsafe { HEAP.lock().init(start, end - start) };
}

/// Adds `chunks` chunks of 2 MiB from the frame allocator.
pub fn grow(chunks: usize) -> usize {
    let mut added = 0;
    for _ in 0..chunks {
        let Some(pa) = frame::alloc(CHUNK_ORDER, Owner::Heap) else { break };
        let va = phys_to_virt(pa).as_u64() as usize;
        // SAFETY: freshly allocated frames, mapped by the linear map.
        unsafe { HEAP.lock().add_to_heap(va, va + CHUNK) };
        added += 1;
    }
    added
}

/// Tops up the rescue reserve. Call only where no allocator lock is held.
pub fn refill_reserve() {
    for slot in &RESERVE {
        if slot.load(Ordering::Acquire) == 0 {
            match frame::alloc(CHUNK_ORDER, Owner::Heap) {
                Some(pa) => slot.store(pa.as_u64(), Ordering::Release),
                None => return,
            }
        }
    }
}

#[derive(Clone, Copy, Debug)]
pub struct HeapStats {
    pub total: usize,
    pub used: usize,
}

pub fn stats() -> HeapStats {
    let h = HEAP.lock();
    HeapStats { total: h.stats_total_bytes(), used: h.stats_alloc_actual() }
}
