//! Allocation failures injected into a seeded random run of process
//! operations (`mm::fail_alloc`): every failure must be a clean `out of
//! memory` error, memory stays consistent (`invariants`), what was written
//! reads back, and when every process has exited every frame is back.
//! (The torture test checks contents against a model; this checks the
//! error paths.)

use alloc::string::{String, ToString};
use alloc::vec::Vec;

use super::Test;
use crate::arch::aarch64::user::op;
use crate::ensure;
use crate::mm::granule::PAGE_SIZE;
use crate::mm::{fail_alloc, frame};
use crate::proc::{self, MmapArgs, ProcError, RunEnd, Unresolved};

pub static TESTS: &[Test] = &[Test { name: "fail_alloc_random_ops_leak_nothing", f: random_ops }];

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

/// xorshift64*: the run's own choices (the injection has its own stream).
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
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
fn access_ok(what: &str, end: RunEnd) -> Result<bool, String> {
    match end {
        RunEnd::Done => Ok(true),
        RunEnd::Fault { why: Unresolved::OutOfMemory, .. } => Ok(false),
        other => Err(alloc::format!("{what}: {other:?}")),
    }
}

fn random_ops() -> Result<(), String> {
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
                    Ok(va) => procs[pi].regions.push(Region { va, size }),
                    Err(e) => {
                        oom_ok("mmap", Err(e))?;
                    }
                }
            }
            // An EL0 write, then a check of it.
            1..=3 => {
                let (va, len) = part(&mut rng, &procs[pi].regions);
                let b = rng.next() as u8;
                if access_ok("write", armed(|| proc::access(&name, op::WRITE, va, len, b))?)? {
                    match armed(|| proc::access(&name, op::CHECK, va, len, b))? {
                        RunEnd::Done => {}
                        RunEnd::Mismatch { addr, value } => {
                            return Err(alloc::format!(
                                "op {i}: {name} wrote {b:#04x} at {va:#x}+{len:#x}, reads {value:#04x} at {addr:#x}"
                            ));
                        }
                        other => {
                            access_ok("check", other)?;
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
                oom_ok("mprotect r", armed(|| proc::mprotect(&name, va, len, true, false)))?;
                // Back to read-write; unarmed if armed fails, so later writes work.
                if !oom_ok("mprotect rw", armed(|| proc::mprotect(&name, va, len, true, true)))? {
                    proc::mprotect(&name, va, len, true, true)?;
                }
            }
            6 => {
                let (va, len) = part(&mut rng, &procs[pi].regions);
                let (va, len) = (va & !(PAGE_SIZE - 1), len.next_multiple_of(PAGE_SIZE));
                oom_ok("madvise dontneed", armed(|| proc::madvise_dontneed(&name, va, len)))?;
            }
            7 => {
                let (va, len) = part(&mut rng, &procs[pi].regions);
                let h = alloc::format!("fap{i}");
                let foll = crate::mm::gup::Foll { write: rng.below(2) == 0, pin: true, longterm: rng.below(2) == 0 };
                let fast = rng.below(2) == 0;
                match armed(|| proc::gup(&name, &h, va, len, foll, fast, &|| Ok(()))) {
                    Ok(_) => pins.push(h),
                    Err(e) if e.contains("ENOMEM") => {}
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
                if oom_ok("munmap", armed(|| proc::munmap(&name, va, size)))? {
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
