//! `pagelab.mode=bench`: measurements in guest instructions.
//!
//! Under `qemu-system-aarch64 -icount shift=0,sleep=off` the virtual clock
//! advances 1 ns per retired instruction, so the generic counter converted to
//! ns counts instructions (with CNTFRQ = 1 GHz exactly; at 62.5 MHz in
//! steps of 16). Every figure is the median of [`REPS`] runs, printed as
//! `bench: NAME UNIT VALUE` for scripts and in a table for people.

use alloc::vec::Vec;

use crate::arch::aarch64::granule::{GRANULE, PAGE_SIZE, START_LEVEL, align_down, align_up};
use crate::mm::addr::{PhysAddr, VirtAddr};
use crate::mm::desc::LeafAttrs;
use crate::mm::kernel_pgtable::FrameTableMem;
use crate::mm::layout::phys_to_virt;
use crate::mm::pgtable::{CursorMut, ExclusiveTables, LeafSizes, Stage1Kernel, TableMemory, Tables};
use crate::mm::tlb::KernelFlush;
use crate::mm::walk::{Entry, PageWalkOps, Step, walk_tables_with};
use crate::println;

mod faults;

pub const REPS: usize = 5;

/// Guest instructions since boot (ns of the icount clock).
pub fn instructions() -> u64 {
    use crate::arch::aarch64::arch_timer::{cntfrq, cntvct};
    let t = cntvct() as u128;
    let f = cntfrq().max(1) as u128;
    (t * 1_000_000_000 / f) as u64
}

fn median(mut v: Vec<u64>) -> u64 {
    v.sort_unstable();
    v[v.len() / 2]
}

fn report(name: &str, unit: &str, value: u64, note: &str) {
    println!("bench: {name} {unit} {value}");
    println!("       {note}");
}

struct Counter(u64);
impl PageWalkOps for Counter {
    fn entry(&mut self, _e: &Entry) -> Step {
        self.0 += 1;
        Step::Continue
    }
}

/// Builds the linear map of all RAM into a fresh (not live) table set;
/// returns (instructions, table pages) and the table set's root.
fn build_linear(sizes: LeafSizes) -> (u64, usize, PhysAddr, FrameTableMem) {
    let mut mem = FrameTableMem { tables: 0 };
    let root = mem.alloc_table().expect("out of frames");
    let ram = crate::kmain::boot().board.ram.clone();
    let t0 = instructions();
    {
        let mut t = Tables::new(root, GRANULE, START_LEVEL, &mut mem);
        // SAFETY: a fresh table set, never installed, reachable only here.
        let excl = unsafe { ExclusiveTables::new() };
        let mut fl = KernelFlush;
        let mut c = CursorMut::new(&excl, &mut t, Stage1Kernel, &mut fl);
        for r in &ram {
            let (s, e) = (align_up(r.start.as_u64(), PAGE_SIZE), align_down(r.end.as_u64(), PAGE_SIZE));
            c.map(phys_to_virt(PhysAddr::new(s)), PhysAddr::new(s), e - s, LeafAttrs::KERNEL_RW, sizes)
                .expect("bench map");
        }
        assert!(c.finish().0.is_empty(), "building detaches nothing");
    }
    let dt = instructions() - t0;
    let n = mem.tables;
    (dt, n, root, mem)
}

fn free_all(root: PhysAddr, mut mem: FrameTableMem) {
    let mut tables = Vec::new();
    {
        let t = Tables::new(root, GRANULE, START_LEVEL, &mut mem);
        t.walk(true, &mut |e| {
            if let crate::mm::desc::Kind::Table(pa) = e.kind
                && e.level < 3
            {
                tables.push(pa);
            }
        });
    }
    for pa in tables {
        mem.free(pa);
    }
    mem.free(root);
}

/// Runs every benchmark; returns the number of problems (0 = all measured).
pub fn run_all() -> usize {
    let ram = crate::kmain::boot().board.total_ram();
    let freq = crate::arch::aarch64::arch_timer::cntfrq();
    println!(
        "pagelab bench: granule {}, RAM {}, {REPS} repetitions, median; unit = guest instructions (icount)",
        GRANULE.name(),
        crate::util::Bytes(ram)
    );
    println!("  counter CNTFRQ {freq} Hz: resolution {} instruction(s)", 1_000_000_000u64.div_ceil(freq.max(1)));
    let mut problems = 0;
    for (name, sizes) in
        [("linear_map_build_blocks", LeafSizes::Largest), ("linear_map_build_pages", LeafSizes::PagesOnly)]
    {
        let mut times = Vec::new();
        let mut pages = 0;
        for _ in 0..REPS {
            let (dt, n, root, mem) = build_linear(sizes);
            times.push(dt);
            pages = n;
            free_all(root, mem);
        }
        let bytes = pages as u64 * PAGE_SIZE;
        report(name, "instructions", median(times), &alloc::format!("map all RAM ({:?})", sizes));
        report(&alloc::format!("{name}_table_bytes"), "bytes", bytes, &alloc::format!("{pages} table pages"));
    }
    // Walker throughput over the pages-only map (the most entries).
    let (_, _, root, mem) = build_linear(LeafSizes::PagesOnly);
    let mut rates = Vec::new();
    let mut visited = 0;
    for _ in 0..REPS {
        let mut c = Counter(0);
        let t0 = instructions();
        let r = walk_tables_with(
            &mem,
            GRANULE,
            root,
            START_LEVEL,
            VirtAddr::new(0xffff_0000_0000_0000),
            VirtAddr::new(0),
            &mut c,
        );
        let dt = (instructions() - t0).max(1);
        if r != 0 {
            problems += 1;
        }
        visited = c.0;
        rates.push(c.0 * 1_000_000 / dt);
    }
    report(
        "walker_entries_per_million_instructions",
        "entries/Minstr",
        median(rates),
        &alloc::format!("{visited} entries per walk"),
    );
    free_all(root, mem);
    if visited == 0 {
        problems += 1;
    }
    problems + faults::run()
}
