//! The walker against the MMU on random layouts (tables issue, item 6).
//!
//! Each round builds a random layout - level-2 blocks (some split, some
//! with a page protected), contiguous runs, single pages, holes, every
//! permission combination, AF set or clear - either in the kernel's TTBR1
//! test window or in a user TTBR0 table set tagged with an ASID, then
//! compares, for thousands of addresses, the software walk's expected
//! outcome (PA, or fault kind and level) with what `AT S1E1R/S1E1W/S1E0R/
//! S1E0W` leaves in PAR_EL1. Any mismatch fails the test.

use alloc::string::String;
use alloc::vec::Vec;

use super::Test;
use super::table_tests::at_outcome;
use crate::arch::aarch64::cpu::{self, AtOp};
use crate::ensure;
use crate::mm::addr::{PhysAddr, VirtAddr};
use crate::mm::desc::{LeafAttrs, MemType};
use crate::mm::frame::{self, Owner};
use crate::mm::granule::{GRANULE, PAGE_SIZE};
use crate::mm::kmap::{self, FrameTableMem};
use crate::mm::layout::TEST_WINDOW;
use crate::mm::pgtable::live::Live;
use crate::mm::pgtable::{Expected, LeafSizes, TableMemory, Tables, Translation, expected_access};
use crate::mm::tlb::KernelFlush;

pub static TESTS: &[Test] = &[
    Test { name: "at_random_layouts_kernel_ttbr1", f: kernel_layouts },
    Test { name: "at_random_layouts_user_ttbr0_asid", f: user_layouts },
];

/// Deterministic xorshift64*, so a failure names a seed that reproduces it.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
    fn chance(&mut self, pct: u64) -> bool {
        self.below(100) < pct
    }
}

/// Random permissions that keep W^X (writable => not executable anywhere).
fn random_attrs(r: &mut Rng, user: bool) -> LeafAttrs {
    let writable = r.chance(50);
    LeafAttrs {
        mem: MemType::Normal,
        el0: if user { r.chance(80) } else { r.chance(30) },
        writable,
        kexec: !writable && !user && r.chance(30),
        uexec: !writable && r.chance(30),
        ng: user,
        af: r.chance(85),
        contiguous: false,
        special: r.chance(10),
    }
}

struct Layout {
    frames: Vec<(PhysAddr, u32)>,
    /// Slot base addresses used, each `slot` bytes long.
    slots: Vec<u64>,
    /// What was mapped, `(va, len)`, so samples can aim at it.
    mapped: Vec<(u64, u64)>,
    slot: u64,
}

/// Builds a random layout in `[base, base + nslots * slot)`.
fn build<M: TableMemory>(
    l: &mut Live<'_, '_, M>,
    r: &mut Rng,
    base: u64,
    nslots: u64,
    user: bool,
) -> Result<Layout, String> {
    let slot = GRANULE.level_size(2);
    let mut lay = Layout { frames: Vec::new(), slots: Vec::new(), mapped: Vec::new(), slot };
    let n_cont = GRANULE.contiguous_entries(3) as u64;
    for i in 0..nslots {
        let va = base + i * slot;
        lay.slots.push(va);
        match r.below(5) {
            0 => {} // hole
            1 if !user => {
                // A read-only block over RAM (reading RAM through it is harmless).
                let Some(pa) = ram_block() else { continue };
                let mut a = random_attrs(r, user);
                a.writable = false;
                l.t.map(VirtAddr(va), pa, slot, a, LeafSizes::Largest).map_err(|e| alloc::format!("{e:?}"))?;
                lay.mapped.push((va, slot));
                if r.chance(50) {
                    l.split(va, 2).map_err(|e| alloc::format!("split: {e:?}"))?;
                    if r.chance(50) {
                        let off = r.below(slot / PAGE_SIZE) * PAGE_SIZE;
                        l.protect(va + off, PAGE_SIZE, 0, 1 << 10).map_err(|e| alloc::format!("protect: {e:?}"))?;
                    }
                }
            }
            _ => {
                // Frames: a contiguous run, or a few scattered pages.
                let run = r.chance(50);
                let count = if run { n_cont } else { 1 + r.below(8) };
                let order = count.next_power_of_two().trailing_zeros();
                let pa = frame::alloc_zeroed(order, Owner::Test).ok_or("out of frames")?;
                lay.frames.push((pa, order));
                let a = random_attrs(r, user);
                let off = if run { 0 } else { r.below(slot / PAGE_SIZE - count) * PAGE_SIZE };
                l.t.map(VirtAddr(va + off), pa, count * PAGE_SIZE, a, LeafSizes::PagesOnly)
                    .map_err(|e| alloc::format!("{e:?}"))?;
                lay.mapped.push((va + off, count * PAGE_SIZE));
                if run {
                    l.make_contiguous(va, 3).map_err(|e| alloc::format!("make_contiguous: {e:?}"))?;
                }
            }
        }
    }
    // Every change must be visible to the MMU before AT is asked.
    l.sync();
    Ok(lay)
}

fn ram_block() -> Option<PhysAddr> {
    let blk = GRANULE.level_size(2);
    crate::kmain::boot().board.ram.iter().find_map(|r| {
        let s = (r.start.0 + blk - 1) & !(blk - 1);
        (s + blk <= r.end.0).then_some(PhysAddr(s))
    })
}

/// Compares walker and `AT` on `samples` random addresses of the layout.
/// Returns the number of checks and how many of each outcome kind were seen
/// (OK, translation, access flag, permission).
fn compare<M: TableMemory>(
    t: &Tables<'_, M>,
    r: &mut Rng,
    lay: &Layout,
    samples: usize,
) -> Result<(usize, [usize; 4]), String> {
    let mut checks = 0;
    let mut kinds = [0usize; 4];
    for _ in 0..samples {
        // Mostly inside (or just around) what was mapped, sometimes anywhere.
        let va = if r.chance(70) && !lay.mapped.is_empty() {
            let (m, len) = lay.mapped[r.below(lay.mapped.len() as u64) as usize];
            (m + r.below(len + 2 * PAGE_SIZE)).saturating_sub(PAGE_SIZE)
        } else {
            lay.slots[r.below(lay.slots.len() as u64) as usize] + r.below(lay.slot)
        };
        let tr = t.translate(VirtAddr(va));
        for (op, el0, write) in [
            (AtOp::S1E1R, false, false),
            (AtOp::S1E1W, false, true),
            (AtOp::S1E0R, true, false),
            (AtOp::S1E0W, true, true),
        ] {
            let want = expected_access(&tr, el0, write);
            let got = at_outcome(op, va);
            checks += 1;
            kinds[match want {
                Expected::Ok(_) => 0,
                Expected::Translation(_) => 1,
                Expected::AccessFlag(_) => 2,
                Expected::Permission(_) => 3,
            }] += 1;
            if want != got {
                let d = match tr {
                    Translation::Mapped { desc, .. } | Translation::Fault { desc, .. } => desc,
                };
                return Err(alloc::format!("{va:#x} {op:?}: walker expects {want:?} ({d:?}), AT says {got:?}"));
            }
        }
    }
    Ok((checks, kinds))
}

fn teardown<M: TableMemory>(l: &mut Live<'_, '_, M>, lay: &Layout) -> Result<(), String> {
    for &s in &lay.slots {
        l.unmap(s, lay.slot).map_err(|e| alloc::format!("unmap: {e:?}"))?;
    }
    for &(pa, o) in &lay.frames {
        frame::free(pa, o, Owner::Test).map_err(|e| alloc::format!("{e:?}"))?;
    }
    Ok(())
}

/// Every kind of outcome must have been exercised, or the comparison proves little.
fn check_coverage(kinds: [usize; 4], what: &str) -> Result<(), String> {
    ensure!(
        kinds.iter().all(|&k| k > 0),
        "{what}: outcomes not all exercised (ok, translation, AF, permission) = {kinds:?}"
    );
    crate::println!(
        "  {what}: {} comparisons (ok {}, translation {}, access flag {}, permission {}), 0 mismatches",
        kinds.iter().sum::<usize>(),
        kinds[0],
        kinds[1],
        kinds[2],
        kinds[3]
    );
    Ok(())
}

const ROUNDS: u64 = 4;
const SLOTS: u64 = 24;
const SAMPLES: usize = 1000;

fn kernel_layouts() -> Result<(), String> {
    let pt_before = frame::stats().by_owner[Owner::PageTable as usize];
    let mut kinds = [0usize; 4];
    for round in 0..ROUNDS {
        let seed = 0x9e37_79b9_7f4a_7c15 ^ (round + 1);
        let mut r = Rng(seed);
        // with_live frees the tables the teardown detaches, after the flush.
        let (_, k) = kmap::with_live(|l| -> Result<(usize, [usize; 4]), String> {
            let lay = build(l, &mut r, TEST_WINDOW, SLOTS, false)?;
            let c = compare(l.t, &mut r, &lay, SAMPLES);
            teardown(l, &lay)?;
            c.map_err(|e| alloc::format!("seed {seed:#x}: {e}"))
        })?;
        for i in 0..4 {
            kinds[i] += k[i];
        }
    }
    let pt_after = frame::stats().by_owner[Owner::PageTable as usize];
    ensure!(pt_after == pt_before, "kernel page-table frames {pt_before} -> {pt_after}");
    check_coverage(kinds, "TTBR1")
}

fn user_layouts() -> Result<(), String> {
    let pt_before = frame::stats().by_owner[Owner::PageTable as usize];
    let (_, empty) = kmap::roots();
    let mut kinds = [0usize; 4];
    for round in 0..ROUNDS {
        let seed = 0x5851_f42d_4c95_7f2d ^ (round + 1);
        let asid: u16 = 0x42 + round as u16;
        let mut r = Rng(seed);
        let mut mem = FrameTableMem { tables: 0 };
        let root = mem.alloc_table().ok_or("out of frames")?;
        let mut t = Tables::new(root, GRANULE, crate::mm::granule::USER_START_LEVEL, &mut mem);
        let base =
            if crate::arch::aarch64::regs::USER_VA_BITS == 48 { 0x0000_1000_0000_0000u64 } else { 0x10_0000_0000 };
        let mut fl = KernelFlush;
        let mut l = Live::new(&mut t, Some(asid), &mut fl);
        let res = (|| -> Result<(usize, [usize; 4]), String> {
            let lay = build(&mut l, &mut r, base, SLOTS, true)?;
            // Run the comparisons with this table set live in TTBR0.
            let daif = cpu::irq_save();
            // SAFETY: nothing runs from TTBR0; restored below before interrupts.
            unsafe { cpu::switch_ttbr0(root.0 | ((asid as u64) << 48)) };
            let c = compare(l.t, &mut r, &lay, SAMPLES);
            // SAFETY: back to the empty table.
            unsafe { cpu::switch_ttbr0(empty.0) };
            cpu::irq_restore(daif);
            teardown(&mut l, &lay)?;
            c.map_err(|e| alloc::format!("seed {seed:#x} asid {asid:#x}: {e}"))
        })();
        let detached = l.finish();
        for pa in detached.0 {
            t.mem.free(pa);
        }
        ensure!(t.count_tables() == 1, "user tables left after teardown: {}", t.count_tables());
        mem.free(root);
        ensure!(mem.tables == 0, "user table accounting off by {}", mem.tables);
        let (_, k) = res?;
        for i in 0..4 {
            kinds[i] += k[i];
        }
    }
    let pt_after = frame::stats().by_owner[Owner::PageTable as usize];
    ensure!(pt_after == pt_before, "page-table frames {pt_before} -> {pt_after}");
    check_coverage(kinds, "TTBR0 with ASIDs")
}
