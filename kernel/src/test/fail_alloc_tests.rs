//! Allocation failures injected into a seeded random run of process
//! operations (`mm::fail_alloc`): every failure must be a clean `out of
//! memory` error, memory stays consistent (`invariants`), what was written
//! reads back, and when every process has exited every frame is back.
//! (The torture test checks contents against a model; this checks the
//! error paths.)

use super::Rng;
use alloc::string::{String, ToString};
use alloc::vec::Vec;

use crate::arch::aarch64::granule::PAGE_SIZE;
use crate::arch::aarch64::user::op;
use crate::ensure;
use crate::mm::addr::VirtAddr;
use crate::mm::mmap::MmapArgs;
use crate::mm::{fail_alloc, frame};
use crate::proc::{self, ProcError, RunEnd, Unresolved};

kernel_test!(fail_alloc_mmap_pfn_leaves_no_entries);
/// `mmap pfn=` of the whole PFN pool with the k-th allocation failing, for
/// k = 0, 1, ... until it gets through: a failure leaves no entry behind
/// (`invariants`: none outside a VMA) and the next mapping at that address
/// works. (The cleanup's zap ran under injection and could fail, leaving
/// the special entries `remap_pfn_range` wrote with no VMA.)
fn fail_alloc_mmap_pfn_leaves_no_entries() -> Result<(), String> {
    let name = "fa_mmap_pfn";
    let Some((ps, pe)) = crate::mm::memory::pfn_pool() else {
        return super::cannot_apply("this machine has no PFN pool");
    };
    let free0 = frame::stats().free;
    proc::spawn(name)?;
    let r = (|| -> Result<(), String> {
        // Aligned to 2M: with 4K pages the pool spans two level-3 tables,
        // so a failure can come after some entries are written.
        let args = || MmapArgs { pfn: Some(ps), shared: true, align: 2 << 20, ..super::anon(pe - ps) };
        let mut k = 0u64;
        let va = loop {
            fail_alloc::fail_after(k);
            let got = armed(|| proc::mmap(name, &alloc::format!("io{k}"), args()));
            fail_alloc::configure(0, 0);
            crate::console::commands::invariants().map_err(|e| alloc::format!("allocation {k} failing: {e}"))?;
            match got {
                Ok(va) => break va,
                Err(e) if e.is_oom() => {
                    // The address space is as before: a plain mapping works.
                    let a = proc::mmap(name, "plain", super::anon(PAGE_SIZE))?;
                    let end = proc::access(name, op::WRITE, a, PAGE_SIZE, 0x44)?;
                    ensure!(matches!(end, RunEnd::Done), "allocation {k} failing: the next mapping: {end:?}");
                    ensure!(matches!(proc::access(name, op::CHECK, a, PAGE_SIZE, 0x44)?, RunEnd::Done), "its bytes");
                    proc::munmap(name, a, PAGE_SIZE)?;
                }
                Err(e) => return Err(alloc::format!("allocation {k} failing: {e} (not out of memory)")),
            }
            k += 1;
            ensure!(k < 1000, "mmap pfn= never got through");
        };
        // With 4K pages k reaches 2 or more (a failure after entries were
        // written); with 16K and 64K one level-3 table holds the pool.
        ensure!(k >= 1, "mmap pfn= got through with allocation {k} failing: its tables were not reached");
        ensure!(proc::mapped_level(name, va + (pe - ps) - PAGE_SIZE) == Some(3), "the last page is not mapped");
        Ok(())
    })();
    disarm_exit_and_count(name, free0, r)
}

kernel_test!(fail_alloc_mprotect_of_a_block_keeps_vma_and_entries);
/// `mprotect` read-only of one page inside a block, with the k-th
/// allocation failing for k = 0, 1, ...: a failure leaves the VMA and the
/// entries agreeing (the page stays writable from EL0, `invariants` holds),
/// and the call that gets through makes the page read-only and nothing
/// else. (The block's split needs a table page; it used to fail after the
/// VMA was already read-only, leaving a writable entry behind.)
fn fail_alloc_mprotect_of_a_block_keeps_vma_and_entries() -> Result<(), String> {
    let name = "fa_mprotect_blk";
    let blk = crate::arch::aarch64::granule::GRANULE.level_size(2);
    // A block-sized folio needs the block in RAM, twice over to be found.
    if blk > frame::stats().managed * PAGE_SIZE / 2 {
        return super::cannot_apply("a block is more than half of RAM here");
    }
    let free0 = frame::stats().free;
    proc::spawn(name)?;
    let r = (|| -> Result<(), String> {
        let args = MmapArgs { folio_order: crate::mm::memory::max_folio_order(), ..super::anon(blk) };
        let h = proc::mmap(name, "h", args)?;
        let end = proc::access(name, op::WRITE, h, blk, 0x5a)?;
        if !matches!(end, RunEnd::Done) || proc::mapped_level(name, h) != Some(2) {
            return super::cannot_apply("no block-sized folio for the region here");
        }
        let page = h + PAGE_SIZE;
        let mut k = 0u64;
        loop {
            fail_alloc::fail_after(k);
            let got = armed(|| proc::mprotect(name, page, PAGE_SIZE, true, false));
            fail_alloc::configure(0, 0);
            crate::console::commands::invariants().map_err(|e| alloc::format!("allocation {k} failing: {e}"))?;
            match got {
                Ok(()) => break,
                Err(e) if e.is_oom() => {
                    // The VMA is still writable: so is the page.
                    let end = proc::access(name, op::WRITE, page, 8, 0x11)?;
                    ensure!(matches!(end, RunEnd::Done), "allocation {k} failing: write after the failure: {end:?}");
                }
                Err(e) => return Err(alloc::format!("allocation {k} failing: {e} (not out of memory)")),
            }
            k += 1;
            ensure!(k < 1000, "mprotect never got through");
        }
        ensure!(k >= 2, "mprotect got through with allocation {k} failing: the split was not reached");
        match proc::access(name, op::WRITE, page, 8, 0x22)? {
            RunEnd::Fault { why: Unresolved::Permission, addr, .. } if addr == page => {}
            other => return Err(alloc::format!("write to the read-only page: {other:?}, expected a permission fault")),
        }
        for a in [h, page + PAGE_SIZE, h + blk - 8] {
            let end = proc::access(name, op::WRITE, a, 8, 0x33)?;
            ensure!(matches!(end, RunEnd::Done), "write at {a:#x} next to the read-only page: {end:?}");
        }
        Ok(())
    })();
    disarm_exit_and_count(name, free0, r)
}

const OPS: usize = 4000;
/// 5% of allocations fail.
const PPM: u32 = 50_000;

struct Region {
    va: u64,
    size: u64,
}

struct P {
    name: String,
    regions: Vec<Region>,
}

/// Runs `f` with injection armed.
fn armed<R>(f: impl FnOnce() -> R) -> R {
    fail_alloc::arm(true);
    let r = f();
    fail_alloc::arm(false);
    r
}

/// A failed operation is fine only if it ran out of memory.
fn oom_ok(what: &str, r: Result<(), ProcError>) -> Result<bool, String> {
    match r {
        Ok(()) => Ok(true),
        Err(e) if e.is_oom() => Ok(false),
        Err(e) => Err(alloc::format!("{what}: {e} (only `out of memory` may happen here)")),
    }
}

/// An EL0 access ended: done, or out of memory.
fn access_done(what: &str, end: RunEnd) -> Result<bool, String> {
    match end {
        RunEnd::Done => Ok(true),
        RunEnd::Fault { why: Unresolved::OutOfMemory, .. } => Ok(false),
        other => Err(alloc::format!("{what}: {other:?}")),
    }
}

kernel_test!(fail_alloc_random_ops_leak_nothing);
///
/// It found a fork that failed inside a contiguous run and left the parent's
/// run half write-protected; `copy_page_range` unfolds that run since. It
/// checks `invariants` at once after a failed `mprotect`.
fn fail_alloc_random_ops_leak_nothing() -> Result<(), String> {
    let free0 = frame::stats().free;
    let mut procs: Vec<P> = Vec::new();
    let mut pins: Vec<String> = Vec::new();
    fail_alloc::configure(PPM, 0x5eed);
    let injected0 = fail_alloc::injected();
    let r = run(&mut procs, &mut pins);
    fail_alloc::configure(0, 0);
    let injected = fail_alloc::injected() - injected0;
    // Clean up whatever is left (unarmed), even after a failure.
    for h in pins.drain(..) {
        let _ = crate::mm::gup::drop_handle(&h);
    }
    for p in procs.drain(..) {
        proc::exit(&p.name)?;
    }
    // The named memfds stay in the page cache until removed.
    for k in 0..3 {
        let _ = crate::mm::shmem::remove_unmapped(&alloc::format!("fam{k}"));
    }
    r?;
    crate::println!("  {OPS} operations, {injected} allocation failures injected");
    ensure!(injected > 20, "only {injected} allocation failures were injected: the test covers little");
    crate::console::commands::invariants()?;
    let free = frame::stats().free;
    ensure!(free == free0, "free frames {free0} -> {free} after every process exited ({injected} failures injected)");
    Ok(())
}

fn run(procs: &mut Vec<P>, pins: &mut Vec<String>) -> Result<(), String> {
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let mut names = 0u32;
    for i in 0..OPS {
        if procs.is_empty() {
            let name = alloc::format!("fa{names}");
            names += 1;
            if oom_ok("spawn", armed(|| proc::spawn(&name)))? {
                procs.push(P { name, regions: Vec::new() });
            }
            continue;
        }
        let pi = rng.below(procs.len() as u64) as usize;
        let name = procs[pi].name.clone();
        let nreg = procs[pi].regions.len() as u64;
        let pick = rng.below(if nreg == 0 { 1 } else { 10 });
        match pick {
            // mmap: anon private (some with THP), anon shared, a memfd.
            0 => {
                let pages = 1 + rng.below(64);
                let kind = rng.below(4);
                let args = MmapArgs {
                    size: pages * PAGE_SIZE,
                    shared: kind == 2 || kind == 3,
                    memfd: (kind == 3).then(|| alloc::format!("fam{}", rng.below(3))),
                    folio_order: if kind == 1 { crate::mm::memory::max_folio_order() } else { 0 },
                    ..super::anon(0)
                };
                let region = alloc::format!("r{i}");
                let size = args.size;
                match armed(|| proc::mmap(&name, &region, args)) {
                    Ok(va) => procs[pi].regions.push(Region { va: va.as_u64(), size }),
                    Err(e) => {
                        oom_ok("mmap", Err(e))?;
                    }
                }
            }
            // An EL0 write, then a check of it.
            1..=3 => {
                let (va, len) = part(&mut rng, &procs[pi].regions);
                let b = rng.next() as u8;
                if access_done("write", armed(|| proc::access(&name, op::WRITE, VirtAddr::new(va), len, b))?)? {
                    match armed(|| proc::access(&name, op::CHECK, VirtAddr::new(va), len, b))? {
                        RunEnd::Done => {}
                        RunEnd::Mismatch { addr, value } => {
                            return Err(alloc::format!(
                                "op {i}: {name} wrote {b:#04x} at {va:#x}+{len:#x}, reads {value:#04x} at {addr:#x}"
                            ));
                        }
                        other => {
                            access_done("check", other)?;
                        }
                    }
                }
            }
            4 if procs.len() < 4 => {
                let child = alloc::format!("fa{names}");
                names += 1;
                if oom_ok("fork", armed(|| proc::fork(&name, &child).map(|_| ())))? {
                    let regions = procs[pi].regions.iter().map(|r| Region { va: r.va, size: r.size }).collect();
                    procs.push(P { name: child, regions });
                } else {
                    ensure!(!proc::exists(&child), "op {i}: a failed fork left {child}");
                }
            }
            // mprotect part read-only and back (splits and merges of VMAs).
            5 => {
                let (va, len) = part(&mut rng, &procs[pi].regions);
                let (va, len) = (va & !(PAGE_SIZE - 1), len.next_multiple_of(PAGE_SIZE));
                if !oom_ok("mprotect r", armed(|| proc::mprotect(&name, VirtAddr::new(va), len, true, false)))? {
                    // Before the retry below could hide it: a failure leaves
                    // the VMAs and the entries agreeing.
                    crate::console::commands::invariants()
                        .map_err(|e| alloc::format!("op {i}: failed mprotect: {e}"))?;
                }
                // Back to read-write; unarmed if armed fails, so later writes work.
                if !oom_ok("mprotect rw", armed(|| proc::mprotect(&name, VirtAddr::new(va), len, true, true)))? {
                    proc::mprotect(&name, VirtAddr::new(va), len, true, true)?;
                }
            }
            6 => {
                let (va, len) = part(&mut rng, &procs[pi].regions);
                let (va, len) = (va & !(PAGE_SIZE - 1), len.next_multiple_of(PAGE_SIZE));
                oom_ok(
                    "madvise dontneed",
                    armed(|| proc::madvise(&name, VirtAddr::new(va), len, crate::mm::madvise::Advice::DontNeed)),
                )?;
            }
            7 => {
                let (va, len) = part(&mut rng, &procs[pi].regions);
                let h = alloc::format!("fap{i}");
                let foll = crate::mm::gup::Foll { write: rng.below(2) == 0, pin: true, longterm: rng.below(2) == 0 };
                let fast = rng.below(2) == 0;
                match armed(|| proc::gup(&name, &h, VirtAddr::new(va), len, foll, fast, &|| Ok(()))) {
                    Ok(_) => pins.push(h),
                    Err(e) if e.is_oom() => {}
                    Err(e) => return Err(alloc::format!("op {i}: pin: {e}")),
                }
            }
            8 if !pins.is_empty() => {
                let h = pins.swap_remove(rng.below(pins.len() as u64) as usize);
                armed(|| crate::mm::gup::drop_handle(&h))?;
            }
            // munmap a whole region (it leaves the list).
            8 | 9 => {
                let ri = rng.below(nreg) as usize;
                let Region { va, size } = procs[pi].regions[ri];
                if oom_ok("munmap", armed(|| proc::munmap(&name, VirtAddr::new(va), size)))? {
                    procs[pi].regions.swap_remove(ri);
                }
            }
            _ => {
                // exit (armed: exit must never fail).
                armed(|| proc::exit(&name))?;
                procs.swap_remove(pi);
            }
        }
        if i % 100 == 99 {
            crate::console::commands::invariants().map_err(|e| alloc::format!("after op {i}: {e}"))?;
        }
    }
    // Every process exits under injection too.
    for p in procs.drain(..) {
        armed(|| proc::exit(&p.name)).map_err(|e| e.to_string())?;
    }
    Ok(())
}

/// A random byte range inside a random region (may be unaligned).
fn part(rng: &mut Rng, regions: &[Region]) -> (u64, u64) {
    let r = &regions[rng.below(regions.len() as u64) as usize];
    let off = rng.below(r.size);
    let len = 1 + rng.below((r.size - off).min(8 * PAGE_SIZE));
    (r.va + off, len)
}

/// Ends a test's process with injection off: exits `name`, then `r`, then
/// checks every frame free at the start (`free0`) is free again.
fn disarm_exit_and_count(name: &str, free0: u64, r: Result<(), String>) -> Result<(), String> {
    fail_alloc::configure(0, 0);
    proc::exit(name)?;
    r?;
    let free = frame::stats().free;
    ensure!(free == free0, "free frames {free0} -> {free} after exit");
    Ok(())
}

kernel_test!(fail_alloc_migrate_reports_out_of_memory);
/// `migrate` of four pages with the k-th allocation failing for k = 0, 1,
/// ...: a page that stays for lack of memory ends the command with out of
/// memory (Linux `move_pages`: -ENOMEM), not with the "stayed" error of a
/// pinned page, the data and `invariants` hold, and the call that gets
/// through moves every page. (It used to report `1 page(s) stayed where
/// they were (0 pinned)`, which the torture test's retry of an injected
/// failure could not tell from a refusal.)
fn fail_alloc_migrate_reports_out_of_memory() -> Result<(), String> {
    let name = "fa_migrate";
    let free0 = frame::stats().free;
    proc::spawn(name)?;
    let r = (|| -> Result<(), String> {
        let va = proc::mmap(name, "m", super::anon(4 * PAGE_SIZE))?;
        ensure!(matches!(proc::access(name, op::WRITE, va, 4 * PAGE_SIZE, 0x6d)?, RunEnd::Done), "the write");
        let mut k = 0u64;
        loop {
            fail_alloc::fail_after(k);
            let got = armed(|| proc::migrate(name, va, 4 * PAGE_SIZE));
            fail_alloc::configure(0, 0);
            crate::console::commands::invariants().map_err(|e| alloc::format!("allocation {k} failing: {e}"))?;
            let end = proc::access(name, op::CHECK, va, 4 * PAGE_SIZE, 0x6d)?;
            ensure!(matches!(end, RunEnd::Done), "allocation {k} failing: the data after it: {end:?}");
            match got {
                Ok(n) => {
                    ensure!(n == 4, "allocation {k} failing: {n} pages moved, not 4");
                    break;
                }
                Err(e) if e.is_oom() => {}
                Err(e) => return Err(alloc::format!("allocation {k} failing: {e} (not out of memory)")),
            }
            k += 1;
            ensure!(k < 1000, "migrate never got through");
        }
        ensure!(k >= 1, "migrate got through with allocation 0 failing: no new folio was allocated");
        Ok(())
    })();
    disarm_exit_and_count(name, free0, r)
}
