//! Physical memory tests: the frame allocator hands out and takes back every
//! frame; orders are aligned; bad frees are refused; the heap grows.

use alloc::string::String;
use alloc::vec;
use alloc::vec::Vec;

use crate::arch::aarch64::granule::PAGE_SIZE;
use crate::ensure;
use crate::mm::addr::{PhysAddr, VirtAddr};
use crate::mm::frame::{self, FreeError, Owner};
use crate::mm::layout::phys_to_virt;

kernel_test!(mm_user_frame_double_free_refused);
/// A single user frame goes back to this CPU's page list on free; freeing
/// it again (it is on the list) is refused and changes nothing, and the
/// counters stay exact.
fn mm_user_frame_double_free_refused() -> Result<(), String> {
    let before = frame::stats().free;
    let pa = frame::alloc_user(0).ok_or("out of frames")?;
    frame::free(pa, 0, Owner::UserAnon).map_err(|e| alloc::format!("first free: {e:?}"))?;
    ensure!(
        frame::free(pa, 0, Owner::UserAnon) == Err(FreeError::NotAllocated(pa)),
        "a double free of a user frame was accepted"
    );
    frame::check()?;
    ensure!(frame::stats().free == before, "free frames {before} -> {}", frame::stats().free);
    Ok(())
}

kernel_test!(frames_alloc_all_and_free_all);
/// Takes every free frame (largest orders first), checks they are distinct
/// RAM frames and that the count matches `free`, then gives all back.
fn frames_alloc_all_and_free_all() -> Result<(), String> {
    let before = frame::stats();
    let base = crate::kmain::boot().board.ram.iter().map(|r| r.start.as_u64()).min().unwrap() / PAGE_SIZE;
    let span = crate::kmain::boot().board.ram.iter().map(|r| r.end.as_u64()).max().unwrap() / PAGE_SIZE - base;
    let mut seen = vec![0u64; (span as usize).div_ceil(64)];
    let mut blocks: Vec<(PhysAddr, u32)> = Vec::with_capacity(1024);
    let mut taken = 0u64;
    let mut order = 10u32;
    loop {
        match frame::alloc(order, Owner::Test) {
            Some(pa) => {
                for pfn in pa.pfn()..pa.pfn() + (1 << order) {
                    let i = (pfn - base) as usize;
                    ensure!(seen[i / 64] & (1 << (i % 64)) == 0, "frame {pfn:#x} handed out twice");
                    seen[i / 64] |= 1 << (i % 64);
                }
                blocks.push((pa, order));
                taken += 1 << order;
            }
            None if order > 0 => order -= 1,
            None => break,
        }
    }
    let during = frame::stats();
    let result = (|| {
        ensure!(taken == before.free, "took {taken} frames, {} were free", before.free);
        ensure!(during.free == 0, "{} frames still free", during.free);
        Ok(())
    })();
    for (pa, o) in blocks {
        frame::free(pa, o, Owner::Test).map_err(|e| alloc::format!("free failed: {e:?}"))?;
    }
    let after = frame::stats();
    ensure!(after.free == before.free, "free {} after, {} before", after.free, before.free);
    frame::check()?;
    result
}

kernel_test!(frames_orders_are_aligned_and_disjoint);
fn frames_orders_are_aligned_and_disjoint() -> Result<(), String> {
    let mut got = Vec::new();
    for order in [0u32, 1, 4, 9] {
        let pa = frame::alloc(order, Owner::Test).ok_or("out of frames")?;
        got.push((pa, order));
        let size = PAGE_SIZE << order;
        ensure!(pa.as_u64() % size == 0, "order-{order} block {pa} not aligned to {size:#x}");
    }
    for (i, (a, oa)) in got.iter().enumerate() {
        for (b, ob) in &got[i + 1..] {
            let (ea, eb) = (a.as_u64() + (PAGE_SIZE << oa), b.as_u64() + (PAGE_SIZE << ob));
            ensure!(ea <= b.as_u64() || eb <= a.as_u64(), "{a} and {b} overlap");
        }
    }
    for (pa, o) in got {
        frame::free(pa, o, Owner::Test).map_err(|e| alloc::format!("{e:?}"))?;
    }
    Ok(())
}

kernel_test!(frames_bad_free_is_refused);
fn frames_bad_free_is_refused() -> Result<(), String> {
    let before = frame::stats();
    let pa = frame::alloc(0, Owner::Test).ok_or("out of frames")?;
    frame::free(pa, 0, Owner::Test).map_err(|e| alloc::format!("{e:?}"))?;
    ensure!(frame::free(pa, 0, Owner::Test) == Err(FreeError::NotAllocated(pa)), "double free accepted");
    let kernel = crate::mm::kernel_pgtable::kimage_to_phys(VirtAddr::new(crate::sym_addr!(__kernel_start)));
    ensure!(
        matches!(frame::free(kernel, 0, Owner::Test), Err(FreeError::NotAllocated(_))),
        "freeing the kernel image accepted"
    );
    ensure!(frame::free(PhysAddr::new(0x10), 0, Owner::Test).is_err(), "freeing a non-RAM address accepted");
    let after = frame::stats();
    ensure!(
        after.free == before.free && after.allocated == before.allocated,
        "counters moved: {before:?} -> {after:?}"
    );
    Ok(())
}

kernel_test!(frames_zeroed_and_usable);
fn frames_zeroed_and_usable() -> Result<(), String> {
    let pa = frame::alloc(2, Owner::Test).ok_or("out of frames")?;
    let va = phys_to_virt(pa).as_u64() as *mut u64;
    let n = (4 * PAGE_SIZE / 8) as usize;
    // SAFETY: our 4 frames, through the linear map.
    unsafe {
        for i in 0..n {
            va.add(i).write_volatile(0xdead_beef_0000_0000 | i as u64);
        }
        for i in 0..n {
            ensure!(va.add(i).read_volatile() == 0xdead_beef_0000_0000 | i as u64, "readback mismatch at {i}");
        }
    }
    frame::free(pa, 2, Owner::Test).map_err(|e| alloc::format!("{e:?}"))?;
    let pa = frame::alloc_zeroed(2, Owner::Test).ok_or("out of frames")?;
    let va = phys_to_virt(pa).as_u64() as *const u64;
    // SAFETY: as above.
    let nonzero = (0..n).filter(|&i| unsafe { va.add(i).read_volatile() } != 0).count();
    frame::free(pa, 2, Owner::Test).map_err(|e| alloc::format!("{e:?}"))?;
    ensure!(nonzero == 0, "{nonzero} words not zeroed");
    Ok(())
}

kernel_test!(heap_large_allocation);
/// A 3 MiB heap allocation is fallible (running out fails the test instead
/// of the heap's panic) and, being above the heap's direct-to-frames size,
/// comes straight from the frame allocator: the kernel-heap frame count
/// grows by the next power of two of 3 MiB (4 MiB), the buffer is allocated
/// frames in the linear map outside the static heap, the heap's own arena is
/// untouched, and freeing the buffer gives all of it back.
fn heap_large_allocation() -> Result<(), String> {
    const LEN: usize = 3 << 20;
    const FRAMES_BYTES: u64 = 4 << 20;
    let heap_frames = || frame::stats().by_owner[Owner::Heap as usize];
    let frames_before = heap_frames();
    let arena_before = crate::mm::heap::stats().total;
    let mut v: Vec<u8> = Vec::new();
    crate::mm::error::try_reserve(&mut v, LEN)?;
    v.resize(LEN, 0xa5);
    let grew = heap_frames().wrapping_sub(frames_before);
    ensure!(grew * PAGE_SIZE == FRAMES_BYTES, "{LEN} bytes took {grew} heap frames, expected {FRAMES_BYTES} bytes");
    let arena = crate::mm::heap::stats().total;
    ensure!(arena == arena_before, "the heap's arena changed from {arena_before} to {arena} bytes");
    let va = v.as_ptr() as u64;
    let (lo, hi) = (crate::sym_addr!(__heap_start), crate::sym_addr!(__heap_end));
    ensure!(!(lo..hi).contains(&va), "{va:#x} is in the static heap");
    let pa = crate::mm::layout::linear_virt_to_phys(crate::mm::addr::VirtAddr::new(va))
        .ok_or_else(|| alloc::format!("{va:#x} is not in the linear map"))?;
    let last = pa + (LEN as u64 - PAGE_SIZE);
    ensure!(frame::is_allocated(pa) && frame::is_allocated(last), "frames {pa}..{last} are not allocated");
    ensure!(v.iter().all(|&b| b == 0xa5), "heap memory corrupt");
    drop(v);
    ensure!(heap_frames() == frames_before, "{} heap frames after the free, {frames_before} before", heap_frames());
    ensure!(!frame::is_allocated(pa), "frame {pa} still allocated after the free");
    crate::mm::heap::refill_reserve();
    Ok(())
}

kernel_test!(page_table_check_catches_a_stray_reference);
/// `invariants` is an oracle only if it fails: one folio reference taken
/// behind the tables' back (no mapping, pin or GUP handle accounts for it)
/// must come back as `Violation::Refcount` for exactly that folio, naming
/// the address space it was found through; dropped again, all is well.
fn page_table_check_catches_a_stray_reference() -> Result<(), String> {
    use crate::arch::aarch64::user::op;
    use crate::mm::page_table_check::Violation;
    use crate::mm::pgtable::Translation;
    use crate::proc::{self, RunEnd};
    const P: &str = "ptc_stray";
    proc::spawn(P)?;
    let r = (|| -> Result<(), String> {
        let va = proc::mmap(P, "a", super::anon(PAGE_SIZE))?;
        ensure!(matches!(proc::access(P, op::WRITE, va, PAGE_SIZE, 0x5a)?, RunEnd::Done), "the write did not complete");
        let pa = proc::with_tables(P, |_, t| match t.translate(va) {
            Translation::Mapped { pa, .. } => Some(pa),
            _ => None,
        })?
        .ok_or("the written page is not mapped")?;
        let folio = crate::mm::page::phys_to_page(pa).and_then(|p| p.folio()).ok_or("the page has no folio")?;
        crate::console::commands::invariants().map_err(|e| alloc::format!("before: {e}"))?;
        folio.get();
        let caught = crate::console::commands::invariants();
        folio.put();
        match caught {
            Err(e) if matches!(e.what, Violation::Refcount { folio: f, .. } if f == pa.as_u64()) && e.mm.is_none() => {}
            other => return Err(alloc::format!("a stray reference on {:#x} gave {other:?}", pa.as_u64())),
        }
        crate::console::commands::invariants().map_err(|e| alloc::format!("after: {e}"))?;
        Ok(())
    })();
    proc::exit(P)?;
    r
}
