//! The console's command engine and line editor (hardware side).

use alloc::string::String;
use alloc::vec::Vec;
use core::fmt::Write;
use core::sync::atomic::Ordering;

use super::editor::{Editor, Key};
use super::parse::{self, Expect, truncate};
use crate::arch::aarch64::cpu::{self, AtOp, AtResult};
use crate::arch::aarch64::granule::{GRANULE, START_LEVEL};
use crate::arch::aarch64::regs::VA_BITS;
use crate::arch::percpu;
use crate::kmain::{boot, exit};
use crate::mm::addr::VirtAddr;
use crate::mm::layout::{MARKERS, phys_to_virt};
use crate::mm::pgtable::Translation;
use crate::mm::ptdump::PtDump;
use crate::mm::walk::{PageWalkOps, Step, walk_kernel_page_table_range};
use crate::mm::{frame, heap, kernel_pgtable, page_table_check};
use crate::util::{Bytes, parse_number};
use crate::{print, println};

/// What a command did.
pub(super) enum Outcome {
    /// Ran; nothing to assert.
    Done,
    /// An assertion: passed or failed (with a reason).
    Assert(Result<(), String>),
    /// The session should end (halt).
    Halt,
}

pub(super) type CmdResult = Result<Outcome, String>;

pub struct Session {
    pub passed: usize,
    pub failed: usize,
    script: bool,
}

/// Prints into a String then to the console in one go (keeps lines whole).
pub(super) struct Out(pub(super) String);
impl Write for Out {
    fn write_str(&mut self, s: &str) -> core::fmt::Result {
        self.0.push_str(s);
        if self.0.len() > 4096 {
            print!("{}", self.0);
            self.0.clear();
        }
        Ok(())
    }
}
impl Drop for Out {
    fn drop(&mut self) {
        print!("{}", self.0);
    }
}

const HELP: &str = "\
pagelab console: the scenario language of SCENARIOS.md (`#` starts a comment; a line
starting with `!` expects its command to be refused, `!\"TEXT\"` with an error that
contains TEXT). Available now:
  spawn P                          new EL0 process
  P mmap R SIZE [anon|memfd=F|pfn=PHYS] [private|shared] [prot=r|rw|none]
       [align=SIZE] [thp=never|always|SIZE] [noreserve]
  P munmap RANGE | P mprotect RANGE prot=r|rw|none
  P madvise RANGE dontneed|pageout|hugepage|nohugepage|collapse
                                   (pageout: anon pages to swap, --swap SIZE / pagelab.swap=)
  P migrate RANGE                  move every page mapped there to new frames, for
                                   every process that maps it (move_pages MOVE_ALL)
  memfd F truncate SIZE | memfd F punch OFF:LEN
                                   shrink/grow file F or punch a hole: its pages go
                                   from every mapping and the page cache
  P write RANGE BYTE | P check RANGE BYTE | P touch RANGE read|write
  P expect-fault read|write RANGE  (every access is a real EL0 load/store)
  P walk RANGE | P atcheck RANGE | P query RANGE expect FLAG... | P stats expect KEY=N...
  P fork C | P exit | P wait       (clone, exit_group and wait4 made from EL0)
  ps | P maps                      processes; P's VMAs (as gdb's pl-procs/pl-vmas)
  P pin N RANGE ro|rw [longterm] [fast] | P ref N RANGE | checkpin N BYTE | unpin N
  P uffd RANGE register wp [fork-events] | P uffd RANGE wp on|off | P uffd RANGE unregister
  P uffd-events expect N           userfaultfd write-protect and its events
  ptdump kernel|P                  translation tables, Linux arm64 ptdump style
  invariants                       assertion: refcounts, mapcounts, exclusive flags,
                                   frame accounting and table rules hold
  meminfo | info | cpus            memory (with reclaim counters), machine, CPUs
  kwalk ADDR                       walk a kernel VA in software and with AT
  selftest [NAME]                  the in-kernel tests (all, or names containing NAME)
  halt                             power off (QEMU exits)
RANGE is REGION, REGION+OFF (the page that contains OFF) or REGION+OFF:LEN; write and
check take its bytes, the other commands every page they touch. Ctrl-C stops a long
command; up/down recall lines.";

const PROCESS_COMMANDS: &[&str] = &[
    "fork",
    "exit",
    "wait",
    "mmap",
    "munmap",
    "mprotect",
    "madvise",
    "migrate",
    "write",
    "check",
    "touch",
    "expect-fault",
    "pin",
    "ref",
    "uffd",
    "uffd-events",
    "query",
    "stats",
    "walk",
    "atcheck",
    "maps",
];

impl Session {
    pub fn new(script: bool) -> Self {
        Self { passed: 0, failed: 0, script }
    }

    /// Runs one raw line (line numbers start at 1). Returns false on `halt`.
    pub fn run_line(&mut self, n: usize, raw: &[u8]) -> bool {
        let line = match parse::lex(raw) {
            Ok(None) => return true,
            Ok(Some(l)) => l,
            Err(e) => {
                println!("error: line {n}: {e}");
                self.failed += 1;
                return true;
            }
        };
        // A line too long or binary is refused like a command that cannot
        // be carried out, so `!` covers it too.
        let (text, r) = match &line.body {
            Ok(c) => {
                if self.script {
                    println!("pagelab:{n}> {}{}", line.expect, c.text);
                }
                // The heap's rescue reserve, topped up outside any allocator
                // lock (user memory never takes the frames it needs).
                heap::refill_reserve();
                // Allocation failures are injected (pagelab.fail-alloc) only
                // while a command runs, never in the session's own bookkeeping.
                let was = crate::mm::fail_alloc::arm(true);
                let r = self.dispatch(&c.words);
                crate::mm::fail_alloc::arm(was);
                (c.text, r)
            }
            Err(e) => ("", Err(alloc::format!("{e}"))),
        };
        match (line.expect, r) {
            (_, Ok(Outcome::Halt)) => return false,
            (Expect::Success, Ok(Outcome::Done)) => {}
            (Expect::Success, Ok(Outcome::Assert(Ok(())))) => {
                println!("PASS line {n}: {text}");
                self.passed += 1;
            }
            (Expect::Success, Ok(Outcome::Assert(Err(why)))) => {
                println!("FAIL line {n}: {text}: {why}");
                self.failed += 1;
            }
            (Expect::Success, Err(e)) => {
                println!("error: line {n}: {e}");
                self.failed += 1;
            }
            (exp, Err(e)) if exp.accepts(&e) => {
                println!("PASS line {n}: refused as expected: {e}");
                self.passed += 1;
            }
            (exp, Err(e)) => {
                println!("FAIL line {n}: {exp}{text}: refused, but the error does not say so: {e}");
                self.failed += 1;
            }
            (exp, Ok(Outcome::Assert(Err(why)))) => {
                println!(
                    "FAIL line {n}: {exp}{text}: expected an error, but the command ran (its assertion failed: {why})"
                );
                self.failed += 1;
            }
            (exp, Ok(_)) => {
                println!("FAIL line {n}: {exp}{text}: expected an error, but the command succeeded");
                self.failed += 1;
            }
        }
        true
    }

    fn dispatch(&mut self, w: &[&str]) -> CmdResult {
        let args = &w[1..];
        match w[0] {
            "help" => no_args(args).map(|_| {
                println!("{HELP}");
                Outcome::Done
            }),
            "info" => no_args(args).map(|_| info()),
            "meminfo" => no_args(args).map(|_| meminfo()),
            "cpus" => no_args(args).map(|_| cpus()),
            "ps" => no_args(args).map(|_| {
                print!("{}", crate::proc::ps());
                Outcome::Done
            }),
            "ptdump" => match args {
                ["kernel"] => Ok(ptdump_kernel()),
                [] => Err("ptdump needs `kernel` or a process name".into()),
                [p] if parse::is_name(p) => ptdump_process(p),
                _ => Err("usage: ptdump [P | kernel]".into()),
            },
            "kwalk" => match args {
                [a] => kwalk(a),
                _ => Err("usage: kwalk ADDR".into()),
            },
            "invariants" => no_args(args).map(|_| Outcome::Assert(invariants().map_err(String::from))),
            "selftest" => match args {
                [] => selftest(None),
                [name] => selftest(Some(name)),
                _ => Err("usage: selftest [NAME]".into()),
            },
            // A script ends at its last line: a halt in it would skip the
            // rest and still end with a passing summary.
            "halt" if self.script => Err("halt ends the interactive console; a script ends at its last line".into()),
            "halt" => no_args(args).map(|_| Outcome::Halt),
            "spawn" => match args {
                [p] if parse::is_name(p) => crate::proc::spawn(p).map(|_| Outcome::Done).map_err(Into::into),
                [p] => Err(alloc::format!("`{}` is not a valid process name", truncate(p, 40))),
                _ => Err("usage: spawn P".into()),
            },
            "checkpin" => match args {
                [n, b] => Ok(Outcome::Assert(
                    crate::mm::gup::check_handle(n, super::proc_cmds::byte(b)?)?.map_err(String::from),
                )),
                _ => Err("usage: checkpin N BYTE".into()),
            },
            "memfd" => match args {
                [f, "truncate", size] => {
                    let file = memfd_named(f)?;
                    let size = crate::util::parse_number(size)
                        .ok_or_else(|| alloc::format!("`{}` is not a size", truncate(size, 20)))?;
                    crate::mm::truncate::truncate(&file, size).map(|_| Outcome::Done).map_err(|e| alloc::format!("{e}"))
                }
                [f, "punch", r] => {
                    let file = memfd_named(f)?;
                    let (off, len) = r
                        .split_once(':')
                        .and_then(|(o, l)| Some((crate::util::parse_number(o)?, crate::util::parse_number(l)?)))
                        .ok_or_else(|| alloc::format!("`{}` is not OFF:LEN", truncate(r, 40)))?;
                    crate::mm::truncate::punch_hole(&file, off, len)
                        .map(|_| Outcome::Done)
                        .map_err(|e| alloc::format!("{e}"))
                }
                _ => Err("usage: memfd F truncate SIZE | memfd F punch OFF:LEN".into()),
            },
            "unpin" => match args {
                [n] => Ok(crate::mm::gup::drop_handle(n).map(|_| Outcome::Done)?),
                _ => Err("usage: unpin N".into()),
            },
            p if parse::is_name(p) && w.len() >= 2 && PROCESS_COMMANDS.contains(&w[1]) => {
                if !crate::proc::exists(p) {
                    return Err(no_such_process(p));
                }
                super::proc_cmds::run(p, w[1], &w[2..])
            }
            other => Err(alloc::format!("unknown command `{}` (try `help`)", truncate(other, 40))),
        }
    }
}

/// The contract's words for a process name that names none.
/// The named memfd F (`memfd F ...` never creates one).
fn memfd_named(f: &str) -> Result<alloc::sync::Arc<crate::mm::shmem::Memfd>, String> {
    crate::mm::shmem::find(f).ok_or_else(|| alloc::format!("no such file `{}`", truncate(f, 40)))
}

pub(super) fn no_such_process(p: &str) -> String {
    alloc::format!("no such process `{}`", truncate(p, 40))
}

/// What a long command that Ctrl-C stopped ends with.
pub(super) const INTERRUPTED: &str = "interrupted (Ctrl-C)";

/// Whether Ctrl-C was typed on the console (long loops poll this, every
/// bounded amount of work, and end with [`INTERRUPTED`]).
pub(super) fn interrupted() -> bool {
    crate::drivers::uart::take_received(super::editor::CTRL_C)
}

fn no_args(args: &[&str]) -> Result<(), String> {
    if args.is_empty() { Ok(()) } else { Err(alloc::format!("unexpected argument `{}`", truncate(args[0], 40))) }
}

fn info() -> Outcome {
    let b = boot();
    let mut o = Out(String::new());
    let _ = writeln!(o, "model: {} ({})", b.board.model, b.board.compatible);
    let _ = writeln!(o, "entered at EL{}, running at EL1; granule {}", b.boot_el, GRANULE.name());
    // The same on every CPU (TTBR0 aside): what gdb's pl-sysreg needs under
    // a debug server that shows no system registers (OpenOCD).
    let r = crate::arch::aarch64::mmu::live_regs();
    let _ = writeln!(
        o,
        "sysregs: TTBR1_EL1 {:#x} TCR_EL1 {:#x} MAIR_EL1 {:#x} SCTLR_EL1 {:#x}",
        r.ttbr1, r.tcr, r.mair, r.sctlr
    );
    let _ = writeln!(
        o,
        "VA bits: kernel (TTBR1) {}, user (TTBR0) {}; user tables start at level {}",
        VA_BITS,
        crate::arch::aarch64::regs::USER_VA_BITS,
        crate::arch::aarch64::granule::USER_START_LEVEL
    );
    for r in &b.board.ram {
        let _ = writeln!(o, "RAM      {:#014x}-{:#014x} {}", r.start.as_u64(), r.end.as_u64(), Bytes(r.size()));
    }
    for (r, what) in &b.reserved {
        let _ = writeln!(o, "reserved {:#014x}-{:#014x} {what}", r.start.as_u64(), r.end.as_u64());
    }
    if let Some(u) = &b.board.uart {
        let _ = writeln!(
            o,
            "uart     {} at {:#x} ({}; by {})",
            u.path,
            u.regs[0].start.as_u64(),
            u.compatible,
            b.board.uart_chosen_by
        );
        let (irqs, dropped) = crate::drivers::uart::rx_stats();
        match crate::irq::console_irq() {
            Some(how) => writeln!(o, "uart rx  interrupt ({how}): {irqs} taken, {dropped} bytes dropped"),
            None => writeln!(o, "uart rx  polled"),
        }
        .ok();
    }
    if let Some(g) = &b.board.gic {
        let regs: Vec<String> = g.dev.regs.iter().map(|r| alloc::format!("{:#x}", r.start.as_u64())).collect();
        let _ = writeln!(o, "gic      {:?} at {}", g.version, regs.join(", "));
    }
    if let Some(t) = &b.board.timer {
        let _ = writeln!(o, "timer    {} interrupts {:?}", t.compatible, t.interrupts);
    }
    let _ = writeln!(o, "psci     {:?}", b.board.psci);
    let _ = writeln!(
        o,
        "asids    {} bits, {} rollover(s)",
        crate::arch::aarch64::mm::context::bits(),
        crate::arch::aarch64::mm::context::ROLLOVERS.load(Ordering::Relaxed)
    );
    let _ = writeln!(
        o,
        "cpus     {} in the devicetree, {} online",
        b.board.cpus.len(),
        percpu::ONLINE.load(Ordering::Relaxed)
    );
    let _ = writeln!(o, "bootargs {}", b.board.bootargs);
    let _ = writeln!(o, "reclaim  {}", crate::mm::vmscan::vmstat());
    Outcome::Done
}

fn meminfo() -> Outcome {
    let s = frame::stats();
    let b = boot();
    let ps = crate::arch::aarch64::granule::PAGE_SIZE;
    let total = b.board.total_ram() / ps;
    let h = heap::stats();
    let mut o = Out(String::new());
    let _ = writeln!(o, "frames: {} KiB each", ps / 1024);
    let _ = writeln!(o, "  total     {total:>9}  ({})", Bytes(total * ps));
    let _ = writeln!(o, "  reserved  {:>9}  (kernel image, devicetree, initrd, firmware)", total - s.managed);
    let _ = writeln!(o, "  managed   {:>9}", s.managed);
    let pcp = s.by_owner[frame::Owner::Pcp as usize];
    let _ = writeln!(o, "  free      {:>9}  ({pcp} of them in per-CPU page lists)", s.free);
    let _ = writeln!(o, "  used      {:>9}", s.allocated);
    for (i, name) in frame::OWNERS.iter().enumerate().filter(|&(i, _)| i != frame::Owner::Pcp as usize) {
        let _ = writeln!(o, "    {name:<12}{:>9}", s.by_owner[i]);
    }
    match crate::mm::memory::pfn_pool() {
        Some((ps, pe)) => {
            let _ = writeln!(o, "PFN pool for `mmap ... pfn=PHYS`: [{ps:#x}, {pe:#x})");
        }
        None => {
            let _ = writeln!(o, "PFN pool: none (RAM too small)");
        }
    }
    let (slots, used) = crate::mm::swapfile::usage();
    if slots == 0 {
        let _ = writeln!(o, "swap: none");
    } else {
        let _ = write!(o, "swap: {}", Bytes(crate::mm::swapfile::total_bytes()));
        for (s, e) in crate::mm::swapfile::pool() {
            let _ = write!(o, " [{s:#x}, {e:#x})");
        }
        let _ = writeln!(o, ", {used} of {slots} slots in use");
    }
    let _ = writeln!(o, "kernel page-table pages: {}", kernel_pgtable::table_pages());
    let _ = writeln!(o, "kernel heap: {} used of {}", Bytes(h.used as u64), Bytes(h.total as u64));
    let _ = writeln!(o, "reclaim: {}", crate::mm::vmscan::vmstat());
    Outcome::Done
}

fn cpus() -> Outcome {
    for i in 0..crate::arch::aarch64::boot::MAX_CPUS {
        let c = percpu::cpu(i);
        if c.online.load(Ordering::Acquire) {
            let (el0, el1) = crate::irq::entries(i);
            println!(
                "cpu{i}: online, MPIDR {:#x}, {} ticks, IRQ entries {el1} from EL1 / {el0} from EL0, {} task runs, ASID {:#x}",
                c.mpidr.load(Ordering::Relaxed),
                crate::irq::ticks(i),
                crate::proc::sched::runs(i),
                crate::arch::aarch64::mm::context::active_on(i) & 0xffff
            );
        }
    }
    Outcome::Done
}

fn ptdump_kernel() -> Outcome {
    let mut o = Out(String::new());
    struct Dump<'a, 'w>(PtDump<'w>, core::marker::PhantomData<&'a ()>);
    impl PageWalkOps for Dump<'_, '_> {
        fn entry(&mut self, e: &crate::mm::walk::Entry) -> Step {
            if self.0.entry(e).is_err() { Step::Stop(-1) } else { Step::Continue }
        }
    }
    let mut d = Dump(PtDump::new(&mut o, START_LEVEL, MARKERS), core::marker::PhantomData);
    walk_kernel_page_table_range(
        &kernel_pgtable::KERNEL_PGTABLE.read(),
        &kernel_pgtable::LiveRead,
        VirtAddr::new(crate::arch::aarch64::memory::PAGE_OFFSET),
        VirtAddr::new(0),
        &mut d,
    );
    let (leaves, lines) = d.0.finish().unwrap_or((0, 0));
    let _ = writeln!(
        o,
        "---[ end: {leaves} leaf entries in {lines} ranges, {} table pages ]---",
        kernel_pgtable::table_pages()
    );
    Outcome::Done
}

fn kwalk(a: &str) -> CmdResult {
    let va = parse_number(a).ok_or_else(|| alloc::format!("`{}` is not a number", truncate(a, 40)))?;
    let top = va >> VA_BITS;
    if top != 0xffff {
        return Err(alloc::format!("{va:#x} is not a kernel (TTBR1) address"));
    }
    let sw = kernel_pgtable::with_tables(|t| t.translate(VirtAddr::new(va)));
    match sw {
        Translation::Mapped { pa, level, desc } => {
            print!("walker: level {level} {desc:?} -> PA {pa:#x}  ");
            let _ = crate::mm::ptdump::write_attrs(&mut Out(String::new()), desc, level);
            println!();
        }
        Translation::Fault { level, desc } => println!("walker: translation fault at level {level} ({desc:?})"),
    }
    match cpu::at(AtOp::S1E1R, va) {
        AtResult::Ok { pa, attr } => println!("AT S1E1R: PA {pa:#x}, attributes {attr:#04x}"),
        AtResult::Fault { fst, .. } => {
            println!("AT S1E1R: {}", crate::arch::aarch64::esr::FaultStatus::from_fsc(fst))
        }
    }
    Ok(Outcome::Done)
}

/// `invariants`: [`page_table_check::check`] over every process.
pub fn invariants() -> Result<(), page_table_check::CheckError> {
    page_table_check::check(&|f| crate::proc::for_each_process(|p| f(&p.name, p.mt())))
}

fn selftest(filter: Option<&str>) -> CmdResult {
    if let Some(f) = filter
        && crate::test::matching(f) == 0
    {
        return Err(alloc::format!("no in-kernel test name contains `{}`", truncate(f, 40)));
    }
    let t = crate::mm::fail_alloc::unarmed(|| crate::test::run_filtered(filter));
    // Tests named on purpose must run: one that cannot apply here proves nothing.
    Ok(Outcome::Assert(if t.failed > 0 {
        Err(alloc::format!("{} test(s) failed", t.failed))
    } else if t.passed == 0 || (filter.is_some() && t.skipped > 0) {
        Err(alloc::format!("{} test(s) passed, {} cannot apply here", t.passed, t.skipped))
    } else {
        Ok(())
    }))
}

/// Runs the script in the initrd; returns the number of failures.
pub fn run_script() -> usize {
    let b = boot();
    let Some(r) = b.board.initrd else {
        println!("error: line 0: script mode but no script was passed (qemu-run.sh --script FILE)");
        println!("0 passed, 1 failed");
        return 1;
    };
    // SAFETY: the initrd is reserved RAM, mapped by the linear map.
    let text = unsafe { core::slice::from_raw_parts(phys_to_virt(r.start).as_u64() as *const u8, r.size() as usize) };
    let mut s = Session::new(true);
    for (i, raw) in text.split(|&b| b == b'\n').enumerate() {
        let raw = raw.strip_suffix(b"\r").unwrap_or(raw);
        if !s.run_line(i + 1, raw) {
            break;
        }
    }
    finish(&mut s)
}

fn finish(s: &mut Session) -> usize {
    match invariants() {
        Ok(()) => {
            println!("PASS end: invariants");
            s.passed += 1;
        }
        Err(e) => {
            println!("FAIL end: invariants: {e}");
            s.failed += 1;
        }
    }
    println!("{} passed, {} failed", s.passed, s.failed);
    s.failed
}

/// The interactive console on the UART. Never returns (`halt` exits).
pub fn interactive() -> ! {
    println!("Type `help` for commands. `halt` powers off. Up/down recall lines; Ctrl-C stops a long command.");
    let mut s = Session::new(false);
    let mut n = 0usize;
    let mut ed = Editor::new();
    let mut echo = Echo;
    loop {
        heap::refill_reserve();
        print!("pagelab> ");
        ed.start_line();
        loop {
            let Some(c) = crate::drivers::uart::getc() else {
                // Sleeps until an interrupt (the UART's receive interrupt,
                // or the next tick for a polled UART) and takes it; spins
                // where there are none.
                crate::irq::idle();
                continue;
            };
            match ed.key(c, &mut echo) {
                Key::Editing => {}
                Key::Line => break,
                Key::Cancel => {
                    ed.start_line();
                    print!("pagelab> ");
                }
            }
        }
        n += 1;
        ed.remember();
        // A line that overflowed keeps MAX_LINE + 1 bytes: lexing refuses it
        // as too long (under `!` too, like a script's).
        if !s.run_line(n, ed.line()) {
            println!("halting: {} passed, {} failed", s.passed, s.failed);
            exit(0);
        }
        // A Ctrl-C typed while the line ran was for it (taken or not).
        crate::drivers::uart::discard_received(super::editor::CTRL_C);
    }
}

/// The editor's echo goes straight to the console.
struct Echo;
impl Write for Echo {
    fn write_str(&mut self, s: &str) -> core::fmt::Result {
        print!("{s}");
        Ok(())
    }
}

fn ptdump_process(p: &str) -> CmdResult {
    if !crate::proc::exists(p) {
        return Err(no_such_process(p));
    }
    let mut o = Out(String::new());
    let mut stopped = false;
    let (leaves, lines, tables) = crate::proc::with_tables(p, |_, t| {
        static MARKERS: &[(VirtAddr, &str)] = &[
            (VirtAddr::new(crate::proc::AGENT_VA), "EL0 agent"),
            (VirtAddr::new(crate::mm::mm_struct::MMAP_BASE), "mmap area"),
        ];
        let mut d = PtDump::new(&mut o, crate::arch::aarch64::granule::USER_START_LEVEL, MARKERS);
        let mut seen = 0u32;
        t.walk(false, &mut |e| {
            // Ctrl-C ends the output; the rest of the walk only counts.
            seen = seen.wrapping_add(1);
            if !stopped && seen.is_multiple_of(256) && interrupted() {
                stopped = true;
            }
            if !stopped {
                let _ = d.entry(e);
            }
        });
        let (l, n) = d.finish().unwrap_or((0, 0));
        (l, n, t.count_tables())
    })?;
    if stopped {
        return Err(INTERRUPTED.into());
    }
    let _ = writeln!(o, "---[ end: {leaves} leaf entries in {lines} ranges, {tables} table pages ]---");
    Ok(Outcome::Done)
}

/// How one line ended, for a caller that drives the engine itself (the
/// torture test, `crate::torture`).
#[derive(Debug)]
pub enum LineResult {
    /// A command carried out (or a blank line).
    Done,
    /// An assertion that held.
    Passed,
    /// An assertion that did not hold, and why.
    Failed(String),
    /// The line was refused with this error.
    Refused(String),
}

impl Session {
    /// Runs one line through the same lexer and dispatch as a script line,
    /// without printing its verdict or counting it (the caller does both).
    /// A leading `!` is the caller's business: it sees every refusal.
    pub fn exec(&mut self, raw: &str) -> LineResult {
        let line = match parse::lex(raw.as_bytes()) {
            Ok(Some(l)) => l,
            Ok(None) => return LineResult::Done,
            Err(e) => return LineResult::Refused(alloc::string::ToString::to_string(&e)),
        };
        // A line refused as too long or binary is a refusal like any other.
        let words = match &line.body {
            Ok(c) => &c.words,
            Err(e) => return LineResult::Refused(alloc::string::ToString::to_string(e)),
        };
        match self.dispatch(words) {
            Ok(Outcome::Done | Outcome::Halt) => LineResult::Done,
            Ok(Outcome::Assert(Ok(()))) => LineResult::Passed,
            // Displayed, whatever type the engine's errors have.
            Ok(Outcome::Assert(Err(why))) => LineResult::Failed(alloc::string::ToString::to_string(&why)),
            Err(e) => LineResult::Refused(alloc::string::ToString::to_string(&e)),
        }
    }
}
