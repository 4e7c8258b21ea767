//! The walker and the encoder against the MMU on random layouts (tables
//! issue, item 6; issue 13, "the AT cross-check checks the encoder too").
//!
//! Each round builds a random layout - level-2 blocks (some split, some
//! with a page's access flag cleared), contiguous runs, single pages, holes,
//! every permission combination and memory type, AF set or clear, and
//! hierarchical limits (APTable, UXNTable, PXNTable) on the table entries
//! above - either in the kernel's TTBR1 test window or in a user TTBR0 table
//! set tagged with an ASID. For thousands of addresses it runs
//! `AT S1E1R/S1E1W/S1E0R/S1E0W` and checks PAR_EL1 against the walker and
//! against what the layout *requested* ([`atcheck`]): outcome, PA, memory
//! type and shareability; the walker's execute permissions against the
//! request. Any mismatch fails the test.
//!
//! Negative controls run in every round: two wrong walkers (one that ignores
//! the table limits, one with a leaf's AP[2] read the wrong way round) and
//! two wrong encoders (a region written with AP[1] flipped, one with the
//! wrong memory attribute index). Each must be caught, or the test fails:
//! a check that cannot fail proves nothing.

use super::Rng;
use alloc::string::String;
use alloc::vec::Vec;

use crate::arch::aarch64::cpu;
use crate::arch::aarch64::esr::{Esr, ExceptionClass, FaultStatus};
use crate::arch::aarch64::granule::{GRANULE, PAGE_SIZE};
use crate::arch::aarch64::memory::{TEST_WINDOW, TEST_WINDOW_END};
use crate::arch::aarch64::regs::mair;
use crate::arch::aarch64::uaccess::probe_exec;
use crate::ensure;
use crate::mm::addr::{PhysAddr, VirtAddr};
use crate::mm::desc::{AP_EL0, AP_RDONLY, Desc, LeafAttrs, MemType, TableAttrs};
use crate::mm::frame::{self, Owner};
use crate::mm::kernel_pgtable::{self, FrameTableMem};
use crate::mm::pgtable::atcheck::{self, Access, Mismatch, Request};
use crate::mm::pgtable::{CursorMut, Regime, Stage1User};
use crate::mm::pgtable::{
    Expected, HwUpdates, LeafSizes, TableMemory, Tables, Translation, expected_access, expected_exec,
};
use crate::mm::tlb::KernelFlush;

const MEM_TYPES: [MemType; 4] =
    [MemType::Normal, MemType::NormalNonCacheable, MemType::DeviceNGnRnE, MemType::DeviceNGnRE];

/// Random permissions that keep W^X (writable => not executable anywhere:
/// EL1-executable and EL0-writable is allowed, the MMU treats it as PXN),
/// and a random memory type (mostly Normal).
fn random_attrs(r: &mut Rng, user: bool) -> LeafAttrs {
    let writable = r.chance(50);
    let el0 = if user { r.chance(80) } else { r.chance(30) };
    LeafAttrs {
        mem: if r.chance(60) { MemType::Normal } else { MEM_TYPES[1 + r.below(3) as usize] },
        el0,
        writable,
        kexec: !user && if writable { el0 && r.chance(80) } else { r.chance(50) },
        uexec: !writable && r.chance(30),
        ng: user,
        af: r.chance(85),
        contiguous: false,
        special: r.chance(10),
    }
}

/// Random table limits, each one `pct` percent of the time.
fn random_limits(r: &mut Rng, pct: u64) -> TableAttrs {
    TableAttrs { no_el0: r.chance(pct), read_only: r.chance(pct), uxn: r.chance(pct), pxn: r.chance(pct) }
}

/// One mapped range and what was asked for it.
#[derive(Clone, Copy)]
struct Region {
    va: u64,
    len: u64,
    pa: PhysAddr,
    attrs: LeafAttrs,
    /// The slot's level-2 entry is a table (pages, or a split block), so
    /// the slot's limits apply.
    under_table: bool,
    /// Every page starts with a `ret`: EL1 may try to execute it.
    rets: bool,
}

/// A deliberately wrong encoder, applied to one region per round.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Sabotage {
    /// AP[1] (EL0 access) written the wrong way round.
    FlipEl0,
    /// The memory attribute index of another memory type.
    WrongAttrIndex,
}

struct Layout {
    frames: Vec<(PhysAddr, u32)>,
    /// Slot base addresses used, each `slot` bytes long.
    slots: Vec<u64>,
    /// The limits requested for each slot's level-2 table entry.
    slot_limits: Vec<TableAttrs>,
    /// The limits requested for the table entries above the slots.
    upper: TableAttrs,
    /// What was mapped; later entries override earlier ones.
    regions: Vec<Region>,
    /// Ranges written wrong on purpose, and how.
    sabotaged: Vec<(u64, u64, Sabotage)>,
    slot: u64,
    base: u64,
}

impl Layout {
    /// The region mapped at `va`, if any.
    fn region(&self, va: u64) -> Option<&Region> {
        self.regions.iter().rev().find(|g| g.va <= va && va < g.va + g.len)
    }

    /// What was requested at `va`.
    fn request(&self, va: u64) -> Request {
        let Some(reg) = self.region(va) else {
            return Request::Unmapped;
        };
        let slot = ((va - self.base) / self.slot) as usize;
        let limits = if reg.under_table { self.upper.and_then(self.slot_limits[slot]) } else { self.upper };
        Request::Exact { pa: reg.pa + (va - reg.va), attrs: reg.attrs, limits }
    }

    fn sabotage_at(&self, va: u64) -> Option<Sabotage> {
        self.sabotaged.iter().find(|s| s.0 <= va && va < s.0 + s.1).map(|s| s.2)
    }
}

/// Builds a random layout in `[base, base + nslots * slot)`. `upper_levels`
/// are the levels whose table entries covering the layout belong to the
/// test alone, so they may carry limits.
fn build<R: Regime<Attrs = LeafAttrs>, M: TableMemory>(
    l: &mut CursorMut<'_, '_, R, M>,
    r: &mut Rng,
    base: u64,
    nslots: u64,
    user: bool,
    upper_levels: core::ops::Range<u32>,
    round: u64,
) -> Result<Layout, String> {
    let slot = GRANULE.level_size(2);
    let mut lay = Layout {
        frames: Vec::new(),
        slots: Vec::new(),
        slot_limits: Vec::new(),
        upper: TableAttrs::NONE,
        regions: Vec::new(),
        sabotaged: Vec::new(),
        slot,
        base,
    };
    let n_cont = GRANULE.contiguous_entries(3) as u64;
    // The slot whose frames get the implicit-PXN attributes (kernel only).
    let first_pages = r.below(nslots);
    let err = |what: &str, e: crate::mm::pgtable::MapError| alloc::format!("{what}: {e:?}");
    for i in 0..nslots {
        let va = base + i * slot;
        lay.slots.push(va);
        lay.slot_limits.push(TableAttrs::NONE);
        match r.below(5) {
            0 => {} // hole
            1 if !user => {
                // A read-only block over RAM (reading RAM through it is harmless).
                let Some(pa) = ram_block() else { continue };
                let mut a = random_attrs(r, user);
                a.writable = false;
                l.map(VirtAddr::new(va), pa, slot, a, LeafSizes::Largest).map_err(|e| err("map", e))?;
                let split = r.chance(50);
                lay.regions.push(Region { va, len: slot, pa, attrs: a, under_table: split, rets: false });
                if split {
                    l.split(VirtAddr::new(va), 2).map_err(|e| err("split", e))?;
                    if r.chance(50) {
                        let off = r.below(slot / PAGE_SIZE) * PAGE_SIZE;
                        l.protect(VirtAddr::new(va + off), PAGE_SIZE, 0, 1 << 10).map_err(|e| err("protect", e))?;
                        let old = LeafAttrs { af: false, ..a };
                        lay.regions.push(Region {
                            va: va + off,
                            len: PAGE_SIZE,
                            pa: pa + off,
                            attrs: old,
                            under_table: true,
                            rets: false,
                        });
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
                if !user {
                    put_rets(pa, count);
                }
                let mut a = random_attrs(r, user);
                if !user && i == first_pages {
                    // One region per round EL1 may fetch from only if the
                    // MMU forgets that EL0 can write it (implicit PXN).
                    a = LeafAttrs { mem: MemType::Normal, el0: true, writable: true, kexec: true, af: true, ..a };
                }
                let off = if run { 0 } else { r.below(slot / PAGE_SIZE - count) * PAGE_SIZE };
                l.map(VirtAddr::new(va + off), pa, count * PAGE_SIZE, a, LeafSizes::PagesOnly)
                    .map_err(|e| err("map", e))?;
                lay.regions.push(Region {
                    va: va + off,
                    len: count * PAGE_SIZE,
                    pa,
                    attrs: a,
                    under_table: true,
                    rets: !user,
                });
                if run {
                    l.make_contiguous(VirtAddr::new(va), 3).map_err(|e| err("make_contiguous", e))?;
                }
            }
        }
        // Limits on the slot's own table, where it has one.
        if lay.regions.last().is_some_and(|g| g.va >= va && g.under_table) && r.chance(40) {
            let lim = random_limits(r, 35);
            l.limit_table(VirtAddr::new(va), 2, lim).map_err(|e| err("limit_table", e))?;
            lay.slot_limits[i as usize] = lim;
        }
    }
    // Limits above the slots (none in the first round: a plain baseline).
    if round > 0 {
        for level in upper_levels {
            let lim = random_limits(r, 20);
            if lay.regions.is_empty() {
                break;
            }
            l.limit_table(VirtAddr::new(base), level, lim).map_err(|e| err("limit_table", e))?;
            lay.upper = lay.upper.and_then(lim);
        }
    }
    // The wrong encoders, on one region of pages each, never a contiguous
    // run (its entries must keep one memory type), and where the wrong bits
    // show: the access flag set, EL0 not taken away by a table above.
    for how in [Sabotage::FlipEl0, Sabotage::WrongAttrIndex] {
        let shows = |g: &Region| {
            let Request::Exact { limits, .. } = lay.request(g.va) else { return false };
            g.attrs.af && !limits.no_el0 && g.len < slot && g.len != n_cont * PAGE_SIZE
        };
        let free = |g: &Region| !lay.sabotaged.iter().any(|s| s.0 < g.va + g.len && g.va < s.0 + s.1);
        let candidates: Vec<Region> = lay.regions.iter().filter(|g| shows(g) && free(g)).copied().collect();
        if candidates.is_empty() {
            continue;
        }
        let g = candidates[r.below(candidates.len() as u64) as usize];
        match how {
            Sabotage::FlipEl0 => {
                let (set, clear) = if g.attrs.el0 { (0, AP_EL0) } else { (AP_EL0, 0) };
                l.protect(VirtAddr::new(g.va), g.len, set, clear).map_err(|e| err("protect", e))?;
            }
            Sabotage::WrongAttrIndex => {
                let idx = if g.attrs.mem == MemType::Normal { mair::NORMAL_NC } else { mair::NORMAL };
                for p in (g.va..g.va + g.len).step_by(PAGE_SIZE as usize) {
                    let Translation::Mapped { desc, .. } = l.tables().translate(VirtAddr::new(p)) else { continue };
                    let wrong = Desc((desc.0 & !(0b111 << 2)) | (idx << 2));
                    l.replace(VirtAddr::new(p), 3, wrong).map_err(|e| err("replace", e))?;
                }
            }
        }
        lay.sabotaged.push((g.va, g.len, how));
    }
    // Every change must be visible to the MMU before AT is asked.
    l.sync();
    Ok(lay)
}

/// Writes a `ret` at the start of each of the `count` pages at `pa`, for
/// EL1 to execute through the layout's mapping.
fn put_rets(pa: PhysAddr, count: u64) {
    const RET: u32 = 0xd65f_03c0;
    let va = crate::mm::layout::phys_to_virt(pa).as_u64();
    for i in 0..count {
        // SAFETY: our own freshly allocated frames, through the linear map.
        unsafe { ((va + i * PAGE_SIZE) as *mut u32).write_volatile(RET) };
    }
    cpu::sync_icache_local(va, count * PAGE_SIZE);
}

fn ram_block() -> Option<PhysAddr> {
    let blk = GRANULE.level_size(2);
    crate::kmain::boot().board.ram.iter().find_map(|r| {
        let s = (r.start.as_u64() + blk - 1) & !(blk - 1);
        (s + blk <= r.end.as_u64()).then_some(PhysAddr::new(s))
    })
}

/// What a round (and a whole test) saw.
#[derive(Default)]
struct Tally {
    /// Outcomes: OK, translation, access flag, permission.
    kinds: [usize; 4],
    /// Successful accesses per memory type checked through PAR_EL1.
    mem_ok: [usize; 4],
    /// Checks where the table limits changed the outcome (caught a walker
    /// that ignores them).
    limits_caught: usize,
    /// Checks that caught a walker reading AP[2] the wrong way round.
    flipped_ap_caught: usize,
    /// Checks that caught each wrong encoder ([`Sabotage`]), and the walker
    /// checks on those regions, which must still agree.
    flip_el0_caught: usize,
    attr_index_caught: usize,
    sabotage_walker_agreed: usize,
    /// Real EL1 instruction fetches: executed, and refused (PXN, PXNTable,
    /// implicit PXN, access flag) as the walker said; and how often a walker
    /// ignoring the table limits would have been wrong about them.
    exec_ran: usize,
    exec_refused: usize,
    /// Refused only because the page is writable at EL0 (implicit PXN).
    exec_implicit_pxn: usize,
    exec_limits_caught: usize,
}

impl Tally {
    fn add(&mut self, o: &Tally) {
        for i in 0..4 {
            self.kinds[i] += o.kinds[i];
            self.mem_ok[i] += o.mem_ok[i];
        }
        self.limits_caught += o.limits_caught;
        self.flipped_ap_caught += o.flipped_ap_caught;
        self.flip_el0_caught += o.flip_el0_caught;
        self.attr_index_caught += o.attr_index_caught;
        self.sabotage_walker_agreed += o.sabotage_walker_agreed;
        self.exec_ran += o.exec_ran;
        self.exec_refused += o.exec_refused;
        self.exec_implicit_pxn += o.exec_implicit_pxn;
        self.exec_limits_caught += o.exec_limits_caught;
    }
}

/// What an EL1 instruction fetch from a VA that translated as `t` under
/// `limits` must do, in the walker's model.
fn expected_fetch(t: &Translation, limits: TableAttrs, hw: HwUpdates) -> Expected {
    match *t {
        Translation::Fault { level, .. } => Expected::Translation(level),
        Translation::Mapped { pa, level, desc } => {
            if !desc.af() && !hw.af {
                Expected::AccessFlag(level)
            } else if expected_exec(t, limits).0 {
                Expected::Ok(pa)
            } else {
                Expected::Permission(level)
            }
        }
    }
}

/// Branches to the `ret` at `page` at EL1: what happened, as an [`Expected`]
/// (the PA is not observable: `Ok` carries `want`'s).
fn fetch(page: u64, want: Expected) -> Result<Expected, String> {
    // SAFETY: the page holds a `ret` (Region::rets) if it is executable at all.
    match unsafe { probe_exec(page) } {
        Ok(()) => Ok(if let Expected::Ok(_) = want { want } else { Expected::Ok(PhysAddr::new(0)) }),
        Err((esr, far)) => {
            let esr = Esr(esr);
            ensure!(esr.ec() == ExceptionClass::InstructionAbortSameEl, "{page:#x}: fetch: {esr}");
            ensure!(far == page, "{page:#x}: fetch: FAR {far:#x}");
            Ok(match esr.fault_status() {
                Some(FaultStatus::Translation(l)) if l >= 0 => Expected::Translation(l as u32),
                Some(FaultStatus::AccessFlag(l)) if l >= 0 => Expected::AccessFlag(l as u32),
                Some(FaultStatus::Permission(l)) if l >= 0 => Expected::Permission(l as u32),
                _ => Expected::Other(esr.0 as u8 & 0x3f),
            })
        }
    }
}

/// Checks `samples` random addresses of the layout against the walker and
/// the request, running the negative controls alongside. With `exec`, pages
/// holding a `ret` are also executed at EL1, which `AT` cannot check.
fn compare<M: TableMemory>(
    t: &Tables<'_, M>,
    r: &mut Rng,
    lay: &Layout,
    samples: usize,
    exec: bool,
) -> Result<Tally, String> {
    let hw = crate::mm::pgtable::HwUpdates { af: cpu::hw_af_enabled(), dirty: cpu::hw_dirty_enabled() };
    let mut tally = Tally::default();
    for _ in 0..samples {
        // Mostly inside (or just around) what was mapped, sometimes anywhere.
        let va = if r.chance(70) && !lay.regions.is_empty() {
            let g = lay.regions[r.below(lay.regions.len() as u64) as usize];
            (g.va + r.below(g.len + 2 * PAGE_SIZE)).saturating_sub(PAGE_SIZE)
        } else {
            lay.slots[r.below(lay.slots.len() as u64) as usize] + r.below(lay.slot)
        };
        let walked = t.translate_with_limits(VirtAddr::new(va));
        let req = lay.request(va);
        let sabotage = lay.sabotage_at(va);
        let desc = match walked.0 {
            Translation::Mapped { desc, .. } | Translation::Fault { desc, .. } => desc,
        };
        let fail = |m: Mismatch| alloc::format!("{va:#x}: {m} (leaf {desc:?}, table limits {:?})", walked.1);
        match (atcheck::check_exec(&walked, &req), sabotage) {
            (Ok(()), _) => {}
            (Err(Mismatch::Exec { .. }), Some(Sabotage::FlipEl0)) => tally.flip_el0_caught += 1,
            (Err(m), _) => return Err(fail(m)),
        }
        if exec && lay.region(va).is_some_and(|g| g.rets && g.attrs.mem == MemType::Normal) {
            let page = va & !(PAGE_SIZE - 1);
            let want = expected_fetch(&walked.0, walked.1, hw);
            let got = fetch(page, want)?;
            ensure!(
                got == want,
                "{page:#x}: EL1 fetch: walker expects {want}, the CPU did {got} (leaf {desc:?}, table limits {:?})",
                walked.1
            );
            if let Expected::Ok(_) = got {
                tally.exec_ran += 1;
            } else {
                tally.exec_refused += 1;
                let p = desc.perms();
                if desc.af() && !p.pxn && !walked.1.pxn && matches!(got, Expected::Permission(_)) {
                    tally.exec_implicit_pxn += 1;
                }
            }
            if expected_fetch(&walked.0, TableAttrs::NONE, hw) != got {
                tally.exec_limits_caught += 1;
            }
        }
        for access in Access::ALL {
            let par = atcheck::observe(access, VirtAddr::new(va));
            match (atcheck::check(&walked, &req, access, hw, par), sabotage) {
                (Ok(()), _) => {}
                (Err(Mismatch::Request { .. }), Some(Sabotage::FlipEl0)) => tally.flip_el0_caught += 1,
                (Err(Mismatch::MemoryType { .. }), Some(Sabotage::WrongAttrIndex)) => tally.attr_index_caught += 1,
                (Err(m), _) => return Err(fail(m)),
            }
            if sabotage.is_some() {
                // Walker and MMU read the same wrong bits: they agree.
                tally.sabotage_walker_agreed += 1;
            }
            tally.kinds[match par.outcome {
                Expected::Ok(_) => 0,
                Expected::Translation(_) => 1,
                Expected::AccessFlag(_) => 2,
                Expected::Permission(_) | Expected::Other(_) => 3,
            }] += 1;
            if let (Expected::Ok(_), Request::Exact { attrs, .. }) = (par.outcome, req)
                && sabotage.is_none()
            {
                tally.mem_ok[MEM_TYPES.iter().position(|&m| m == attrs.mem).unwrap_or(0)] += 1;
            }
            // The wrong walkers must disagree with the MMU somewhere.
            if wrong_walker(&walked.0, TableAttrs::NONE, access, hw) != par.outcome {
                tally.limits_caught += 1;
            }
            if let Translation::Mapped { pa, level, desc } = walked.0 {
                let flipped = Translation::Mapped { pa, level, desc: Desc(desc.0 ^ AP_RDONLY) };
                if wrong_walker(&flipped, walked.1, access, hw) != par.outcome {
                    tally.flipped_ap_caught += 1;
                }
            }
        }
    }
    Ok(tally)
}

/// The walker's expectation with a deliberately wrong input.
fn wrong_walker(t: &Translation, limits: TableAttrs, a: Access, hw: HwUpdates) -> Expected {
    expected_access(t, limits, a.el0, a.write, hw)
}

fn teardown<R: Regime, M: TableMemory>(l: &mut CursorMut<'_, '_, R, M>, lay: &Layout) -> Result<(), String> {
    for &s in &lay.slots {
        l.unmap(VirtAddr::new(s), lay.slot).map_err(|e| alloc::format!("unmap: {e:?}"))?;
    }
    for &(pa, o) in &lay.frames {
        frame::free(pa, o, Owner::Test).map_err(|e| alloc::format!("{e:?}"))?;
    }
    Ok(())
}

/// Every outcome kind and memory type must have been exercised, and every
/// negative control must have been caught, or the comparison proves little.
fn check_coverage(t: &Tally, what: &str, exec: bool) -> Result<(), String> {
    let k = t.kinds;
    // With TCR_EL1.HA the MMU sets access flags itself: no such fault.
    let af_faults = !cpu::hw_af_enabled();
    ensure!(
        k[0] > 0 && k[1] > 0 && (k[2] > 0 || !af_faults) && k[3] > 0,
        "{what}: outcomes not all exercised (ok, translation, AF, permission) = {k:?}"
    );
    ensure!(
        t.mem_ok.iter().all(|&n| n > 0),
        "{what}: memory types not all checked through PAR_EL1 (Normal, NC, nGnRnE, nGnRE) = {:?}",
        t.mem_ok
    );
    ensure!(t.limits_caught > 0, "{what}: negative control: a walker ignoring table limits was never caught");
    ensure!(t.flipped_ap_caught > 0, "{what}: negative control: a walker with AP[2] flipped was never caught");
    ensure!(t.flip_el0_caught > 0, "{what}: negative control: a region written with AP[1] flipped was never caught");
    ensure!(t.attr_index_caught > 0, "{what}: negative control: a wrong memory attribute index was never caught");
    if exec {
        ensure!(
            t.exec_ran > 0 && t.exec_refused > 0 && t.exec_implicit_pxn > 0 && t.exec_limits_caught > 0,
            "{what}: EL1 instruction fetches not all exercised: ran {}, refused {} ({} for implicit PXN), \
             a walker ignoring table limits caught {} times",
            t.exec_ran,
            t.exec_refused,
            t.exec_implicit_pxn,
            t.exec_limits_caught
        );
        crate::println!(
            "  {what}: EL1 instruction fetches as the walker said: ran {}, refused {} ({} for implicit PXN; a \
             walker ignoring table limits would have been wrong {} times)",
            t.exec_ran,
            t.exec_refused,
            t.exec_implicit_pxn,
            t.exec_limits_caught
        );
    }
    crate::println!(
        "  {what}: {} comparisons (ok {}, translation {}, access flag {}, permission {}), 0 mismatches",
        k.iter().sum::<usize>(),
        k[0],
        k[1],
        k[2],
        k[3]
    );
    crate::println!(
        "  {what}: PAR_EL1 memory type and shareability checked (Normal {}, NC {}, nGnRnE {}, nGnRE {})",
        t.mem_ok[0],
        t.mem_ok[1],
        t.mem_ok[2],
        t.mem_ok[3]
    );
    crate::println!(
        "  {what}: negative controls caught: walker without table limits {}, walker with AP[2] flipped {}, \
         encoder with AP[1] flipped {}, encoder with a wrong AttrIndx {} (walker and AT agreed on those {} times)",
        t.limits_caught,
        t.flipped_ap_caught,
        t.flip_el0_caught,
        t.attr_index_caught,
        t.sabotage_walker_agreed
    );
    Ok(())
}

const ROUNDS: u64 = 4;
const SLOTS: u64 = 24;
const SAMPLES: usize = 1000;

/// The levels above level 2 whose entry covering `[lo, hi)` covers nothing
/// outside it.
fn private_levels(start_level: u32, lo: u64, hi: u64) -> core::ops::Range<u32> {
    let first =
        (start_level..2).find(|&l| lo.is_multiple_of(GRANULE.level_size(l)) && GRANULE.level_size(l) <= hi - lo);
    first.unwrap_or(2)..2
}

kernel_test!(at_random_layouts_kernel_ttbr1);
fn at_random_layouts_kernel_ttbr1() -> Result<(), String> {
    let pt_before = frame::stats().by_owner[Owner::PageTable as usize];
    let mut total = Tally::default();
    let levels = private_levels(crate::arch::aarch64::granule::START_LEVEL, TEST_WINDOW, TEST_WINDOW_END);
    for round in 0..ROUNDS {
        let seed = 0x9e37_79b9_7f4a_7c15 ^ (round + 1);
        let mut r = Rng(seed);
        // with_live frees the tables the teardown detaches, after the flush.
        let tally = kernel_pgtable::with_live(|l| -> Result<Tally, String> {
            let lay = build(l, &mut r, TEST_WINDOW, SLOTS, false, levels.clone(), round)?;
            let c = compare(l.tables(), &mut r, &lay, SAMPLES, true);
            teardown(l, &lay)?;
            c.map_err(|e| alloc::format!("seed {seed:#x}: {e}"))
        })?;
        total.add(&tally);
    }
    let pt_after = frame::stats().by_owner[Owner::PageTable as usize];
    ensure!(pt_after == pt_before, "kernel page-table frames {pt_before} -> {pt_after}");
    check_coverage(&total, "TTBR1", true)
}

kernel_test!(at_random_layouts_user_ttbr0_asid);
fn at_random_layouts_user_ttbr0_asid() -> Result<(), String> {
    let pt_before = frame::stats().by_owner[Owner::PageTable as usize];
    let (_, empty) = kernel_pgtable::roots();
    let mut total = Tally::default();
    let start_level = crate::arch::aarch64::granule::USER_START_LEVEL;
    for round in 0..ROUNDS {
        let seed = 0x5851_f42d_4c95_7f2d ^ (round + 1);
        let asid: u16 = 0x42 + round as u16;
        let mut r = Rng(seed);
        let mut mem = FrameTableMem { tables: 0 };
        let root = mem.alloc_table().ok_or("out of frames")?;
        let mut t = Tables::new(root, GRANULE, start_level, &mut mem);
        let base =
            if crate::arch::aarch64::regs::USER_VA_BITS == 48 { 0x0000_1000_0000_0000u64 } else { 0x10_0000_0000 };
        let mut fl = KernelFlush;
        // SAFETY: the tables are this test's, in no mm; they are live only
        // in this CPU's TTBR0, with interrupts masked, while `compare` runs.
        let excl = unsafe { crate::mm::pgtable::ExclusiveTables::new() };
        let mut l = CursorMut::new(&excl, &mut t, Stage1User { asid }, &mut fl);
        let res = (|| -> Result<Tally, String> {
            // The whole table set is the test's: every level may carry limits.
            let lay = build(&mut l, &mut r, base, SLOTS, true, start_level..2, round)?;
            // Run the comparisons with this table set live in TTBR0.
            let irq = cpu::local_irq_save();
            // SAFETY: nothing runs from TTBR0; restored below before interrupts.
            unsafe { cpu::switch_ttbr0(root.as_u64() | ((asid as u64) << 48)) };
            let c = compare(l.tables(), &mut r, &lay, SAMPLES, false);
            // SAFETY: back to the empty table.
            unsafe { cpu::switch_ttbr0(empty.as_u64()) };
            drop(irq);
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
        total.add(&res?);
    }
    let pt_after = frame::stats().by_owner[Owner::PageTable as usize];
    ensure!(pt_after == pt_before, "page-table frames {pt_before} -> {pt_after}");
    check_coverage(&total, "TTBR0 with ASIDs", false)
}
