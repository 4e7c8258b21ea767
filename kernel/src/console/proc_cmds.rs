//! Console commands on processes: `P mmap`, `P write`, `P check`, `P walk`,
//! `P atcheck`... (the first slice of the processes issue; the rest of
//! SCENARIOS.md's process commands are refused with a clear error).

use alloc::string::String;

use super::commands::{CmdResult, INTERRUPTED, Outcome, interrupted};
use super::inspect;
use super::parse::{Range, RangeSpec, truncate};
use crate::arch::aarch64::esr::Esr;
use crate::arch::aarch64::granule::PAGE_SIZE;
use crate::arch::aarch64::user::op;
use crate::mm::addr::{PhysAddr, VirtAddr};
use crate::mm::madvise::Advice;
use crate::mm::mmap::MmapArgs;
use crate::proc::{self, RunEnd};
use crate::util::parse_number;
use crate::{print, println};

/// RANGE in P's regions: the bytes as written (`write`, `check`), and every
/// page they touch ([`Range::pages`], for the other commands).
fn range(p: &str, r: &str) -> Result<Range, String> {
    let spec = RangeSpec::parse(r).map_err(|e| alloc::format!("`{}`: {e}", truncate(r, 40)))?;
    let region = proc::with_proc(p, |pr| Ok(pr.regions.lock().get(spec.region).map(|g| (g.va, g.size))))?;
    let (va, size) = region.ok_or_else(|| alloc::format!("no such region `{}` in `{p}`", spec.region))?;
    spec.resolve(va, size, PAGE_SIZE).map_err(|e| alloc::format!("{e}"))
}

/// Bytes one agent run covers in `write`/`check`, and pages in `touch`
/// (a multiple of every page size): Ctrl-C is looked for between runs.
const ACCESS_CHUNK: u64 = 64 << 20;

/// An EL0 access over `[va, va+len)` in runs of [`ACCESS_CHUNK`], stopped
/// by Ctrl-C between them; ends at the first run that does not complete.
fn access(p: &str, opc: u64, va: VirtAddr, len: u64, byte: u8) -> Result<RunEnd, String> {
    let mut off = 0;
    while off < len {
        let n = (len - off).min(ACCESS_CHUNK);
        match proc::access(p, opc, va + off, n, byte)? {
            RunEnd::Done => {}
            other => return Ok(other),
        }
        off += n;
        if off < len && interrupted() {
            return Err(INTERRUPTED.into());
        }
    }
    Ok(RunEnd::Done)
}

pub(super) fn byte(s: &str) -> Result<u8, String> {
    match parse_number(s) {
        Some(v) if v <= 0xff => Ok(v as u8),
        _ => Err(alloc::format!("`{}` is not a byte (0x00..0xff)", &s[..s.len().min(20)])),
    }
}

/// The report of an EL0 access the kernel could not resolve: process,
/// address, ESR decoded, and why (no mapping, permission, out of memory...).
fn fault_report(p: &str, addr: VirtAddr, esr: u64, why: proc::Unresolved) -> String {
    alloc::format!("{p}: unresolved EL0 fault at {addr:#x}: {why}: {} ({p} survives)", Esr(esr))
}

/// The verdict of `P expect-fault KIND` at `va` from how the access ended:
/// a PASS only for a refusal Linux would SIGSEGV (no mapping, permission, no
/// page). Out of memory and faults the kernel does not resolve (alignment,
/// external abort, TLB conflict) are errors with the fault report, so a
/// kernel bug cannot pass as a refusal.
pub(super) fn expect_fault_verdict(p: &str, kind: &str, va: VirtAddr, end: RunEnd) -> CmdResult {
    use proc::Unresolved::{NoMapping, NoPage, Permission};
    match end {
        RunEnd::Fault { addr, esr, why: why @ (NoMapping | Permission | NoPage) } if addr == va => {
            println!("  {p}: {kind} at {addr:#x} refused: {why}: {}", Esr(esr));
            Ok(Outcome::Assert(Ok(())))
        }
        RunEnd::Fault { addr, why: NoMapping | Permission | NoPage, .. } => {
            Ok(Outcome::Assert(Err(alloc::format!("fault at {addr:#x}, not at {va:#x}"))))
        }
        RunEnd::Fault { addr, esr, why } => Err(fault_report(p, addr, esr, why)),
        RunEnd::Done => Ok(Outcome::Assert(Err(alloc::format!("the {kind} at {va:#x} succeeded")))),
        other => Err(alloc::format!("{p}: agent stopped: {other:?}")),
    }
}

pub fn run(p: &str, cmd: &str, a: &[&str]) -> CmdResult {
    match cmd {
        "exit" => match a {
            [] => proc::exit(p).map(|_| Outcome::Done).map_err(Into::into),
            _ => Err("usage: P exit".into()),
        },
        "fork" => match a {
            [c] if super::parse::is_name(c) => match proc::fork(p, c) {
                Ok(_) => Ok(Outcome::Done),
                Err(e) => Err(alloc::format!("fork failed: {e}")),
            },
            [c] => Err(alloc::format!("`{}` is not a valid process name", &c[..c.len().min(40)])),
            _ => Err("usage: P fork C".into()),
        },
        "wait" => match a {
            [] => {
                let r = proc::wait(p)?;
                match r {
                    0 => println!("  {p}: no child has exited"),
                    r if r > 0 => println!("  {p}: reaped child pid {r}"),
                    r => return Err(alloc::format!("wait4: {}", crate::proc::syscall::errno_name(r))),
                }
                Ok(Outcome::Done)
            }
            _ => Err("usage: P wait".into()),
        },
        "mmap" => mmap(p, a),
        "munmap" => match a {
            [r] => {
                let (va, len) = range(p, r)?.pages();
                proc::munmap(p, va, len).map(|_| Outcome::Done).map_err(Into::into)
            }
            _ => Err("usage: P munmap RANGE".into()),
        },
        "mprotect" => match a {
            [r, prot] => {
                let (va, len) = range(p, r)?.pages();
                let (rd, wr) = match *prot {
                    "prot=r" => (true, false),
                    "prot=rw" => (true, true),
                    "prot=none" => (false, false),
                    other => {
                        return Err(alloc::format!(
                            "bad protection `{}` (prot=r|rw|none)",
                            &other[..other.len().min(20)]
                        ));
                    }
                };
                proc::mprotect(p, va, len, rd, wr).map(|_| Outcome::Done).map_err(Into::into)
            }
            _ => Err("usage: P mprotect RANGE prot=r|rw|none".into()),
        },
        "madvise" => match a {
            [r, "dontneed"] => {
                let (va, len) = range(p, r)?.pages();
                proc::madvise(p, va, len, Advice::DontNeed).map(|_| Outcome::Done).map_err(Into::into)
            }
            [r, adv @ ("hugepage" | "nohugepage")] => {
                let (va, len) = range(p, r)?.pages();
                let advice = if *adv == "hugepage" { Advice::HugePage } else { Advice::NoHugePage };
                proc::madvise(p, va, len, advice).map(|_| Outcome::Done).map_err(Into::into)
            }
            [r, "collapse"] => {
                let (va, len) = range(p, r)?.pages();
                proc::madvise(p, va, len, Advice::Collapse).map(|_| Outcome::Done).map_err(Into::into)
            }
            [r, "pageout"] => {
                let (va, len) = range(p, r)?.pages();
                proc::madvise(p, va, len, Advice::PageOut).map(|_| Outcome::Done).map_err(Into::into)
            }
            _ => Err("usage: P madvise RANGE dontneed|pageout|hugepage|nohugepage|collapse".into()),
        },
        "migrate" => match a {
            [r] => {
                let (va, len) = range(p, r)?.pages();
                proc::migrate(p, va, len).map(|_| Outcome::Done).map_err(Into::into)
            }
            _ => Err("usage: P migrate RANGE".into()),
        },
        "write" | "check" => match a {
            [r, b] => {
                let Range { va, len, .. } = range(p, r)?;
                let b = byte(b)?;
                let opc = if cmd == "write" { op::WRITE } else { op::CHECK };
                match access(p, opc, va, len, b)? {
                    RunEnd::Done if cmd == "write" => Ok(Outcome::Done),
                    RunEnd::Done => Ok(Outcome::Assert(Ok(()))),
                    RunEnd::Mismatch { addr, value } => {
                        Ok(Outcome::Assert(Err(alloc::format!("byte at {addr:#x} is {value:#04x}, expected {b:#04x}"))))
                    }
                    RunEnd::Fault { addr, esr, why } => Err(fault_report(p, addr, esr, why)),
                    RunEnd::Other { esr } => Err(alloc::format!("{p}: agent stopped: {}", Esr(esr))),
                }
            }
            _ => Err(alloc::format!("usage: P {cmd} RANGE BYTE")),
        },
        "touch" => match a {
            [r, kind @ ("read" | "write")] => {
                let (va, len) = range(p, r)?.pages();
                let opc = if *kind == "read" { op::TOUCH_READ } else { op::TOUCH_WRITE };
                match access(p, opc, va, len, 0)? {
                    RunEnd::Done => Ok(Outcome::Done),
                    RunEnd::Fault { addr, esr, why } => Err(fault_report(p, addr, esr, why)),
                    other => Err(alloc::format!("{p}: agent stopped: {other:?}")),
                }
            }
            _ => Err("usage: P touch RANGE read|write".into()),
        },
        "expect-fault" => match a {
            [kind @ ("read" | "write"), r] => {
                let va = range(p, r)?.va;
                let opc = if *kind == "read" { op::TOUCH_READ } else { op::TOUCH_WRITE };
                expect_fault_verdict(p, kind, va, proc::access(p, opc, va, 1, 0)?)
            }
            _ => Err("usage: P expect-fault write|read RANGE".into()),
        },
        "maps" => match a {
            [] => {
                proc::maps(p, &mut |line| print!("{line}"))?;
                Ok(Outcome::Done)
            }
            _ => Err("usage: P maps".into()),
        },
        "walk" => match a {
            [r] => inspect::walk(p, range(p, r)?),
            _ => Err("usage: P walk RANGE".into()),
        },
        "atcheck" => match a {
            [r] => inspect::atcheck(p, range(p, r)?),
            _ => Err("usage: P atcheck RANGE".into()),
        },
        "pin" | "ref" => gup(p, cmd, a),
        "query" => match a {
            [r, "expect", flags @ ..] => inspect::query(p, range(p, r)?, flags),
            _ => Err("usage: P query RANGE expect FLAG...".into()),
        },
        "stats" => inspect::stats(p, a),
        "uffd" => uffd(p, a),
        "uffd-events" => match a {
            ["expect", n] => {
                let n = parse_number(n).ok_or_else(|| alloc::format!("`{}` is not a number", truncate(n, 20)))?;
                let got = proc::with_proc(p, |pr| Ok(crate::mm::userfaultfd::take_events(&pr.mm)))?;
                if got == n {
                    Ok(Outcome::Assert(Ok(())))
                } else {
                    Ok(Outcome::Assert(Err(alloc::format!("{p} had {got} uffd event(s), expected {n}"))))
                }
            }
            _ => Err("usage: P uffd-events expect N".into()),
        },
        other => Err(alloc::format!("`{other}` is not available yet (processes and anonymous-memory issues)")),
    }
}

/// `P uffd RANGE register wp [fork-events]`, `P uffd RANGE wp on|off`,
/// `P uffd RANGE unregister` ([`crate::mm::userfaultfd`]).
fn uffd(p: &str, a: &[&str]) -> CmdResult {
    use crate::mm::userfaultfd as uffd;
    let usage = || String::from("usage: P uffd RANGE register wp [fork-events] | wp on|off | unregister");
    let [r, rest @ ..] = a else { return Err(usage()) };
    let (va, len) = range(p, r)?.pages();
    let r = proc::with_proc(p, |pr| {
        let mt = pr.mt();
        Ok(match rest {
            ["register", "wp"] => Some(uffd::register(mt, va, len, false)),
            ["register", "wp", "fork-events"] => Some(uffd::register(mt, va, len, true)),
            ["wp", "on"] => Some(uffd::writeprotect(mt, va, len, true)),
            ["wp", "off"] => Some(uffd::writeprotect(mt, va, len, false)),
            ["unregister"] => Some(uffd::unregister(mt, va, len)),
            _ => None,
        })
    })?;
    match r {
        None => Err(usage()),
        Some(Ok(())) => Ok(Outcome::Done),
        Some(Err(e)) => Err(alloc::format!("uffd: {e}")),
    }
}

/// `P pin N RANGE ro|rw [longterm] [fast]`, `P ref N RANGE`.
fn gup(p: &str, cmd: &str, a: &[&str]) -> CmdResult {
    let usage = || -> String {
        if cmd == "pin" { "usage: P pin N RANGE ro|rw [longterm] [fast]".into() } else { "usage: P ref N RANGE".into() }
    };
    let [n, r, rest @ ..] = a else { return Err(usage()) };
    if !super::parse::is_name(n) && parse_number(n).is_none() {
        return Err(alloc::format!("`{}` is not a valid handle name", &n[..n.len().min(40)]));
    }
    let mut flags = crate::mm::gup::Foll { pin: cmd == "pin", ..Default::default() };
    let mut fast = cmd == "ref"; // vmsplice-style references use GUP-fast first
    if cmd == "pin" {
        let [mode, opts @ ..] = rest else { return Err(usage()) };
        flags.write = match *mode {
            "ro" => false,
            "rw" => true,
            _ => return Err(usage()),
        };
        for o in opts {
            match *o {
                "longterm" => flags.longterm = true,
                "fast" => fast = true,
                _ => return Err(alloc::format!("unknown pin option `{}` (longterm, fast)", &o[..o.len().min(20)])),
            }
        }
    } else if !rest.is_empty() {
        return Err(usage());
    }
    let (va, len) = range(p, r)?.pages();
    let stop = || if interrupted() { Err(crate::mm::error::GupError::Interrupted) } else { Ok(()) };
    let (got, by_fast) = proc::gup(p, n, va, len, flags, fast, &stop)?;
    println!("  {p}: {cmd} {n}: {got} page(s), {by_fast} by the fast path");
    Ok(Outcome::Done)
}

fn mmap(p: &str, a: &[&str]) -> CmdResult {
    let [r, size, opts @ ..] = a else {
        return Err("usage: P mmap R SIZE [anon|memfd=F|pfn=PHYS] [private|shared] [prot=r|rw|none] [align=SIZE] [thp=never|always|SIZE] [noreserve]".into());
    };
    if !super::parse::is_name(r) {
        return Err(alloc::format!("`{}` is not a valid region name", &r[..r.len().min(40)]));
    }
    let size = parse_number(size).ok_or_else(|| alloc::format!("`{size}` is not a size"))?;
    let mut args = MmapArgs {
        size,
        writable: true,
        readable: true,
        align: PAGE_SIZE,
        folio_order: 0,
        pfn: None,
        shared: false,
        memfd: None,
        file: None,
        noreserve: false,
    };
    for o in opts {
        match *o {
            "anon" | "private" | "thp=never" => {}
            "prot=rw" => (args.readable, args.writable) = (true, true),
            "prot=r" => (args.readable, args.writable) = (true, false),
            "prot=none" => (args.readable, args.writable) = (false, false),
            o if o.starts_with("align=") => {
                let v = parse_number(&o[6..])
                    .filter(|v| v.is_power_of_two())
                    .ok_or_else(|| alloc::format!("bad alignment `{o}`"))?;
                args.align = v;
            }
            "thp=always" => args.folio_order = crate::mm::memory::max_folio_order(),
            o if o.starts_with("thp=") => {
                let v = parse_number(&o[4..])
                    .filter(|v| v.is_power_of_two() && *v >= PAGE_SIZE)
                    .ok_or_else(|| alloc::format!("bad folio size `{}`", &o[..o.len().min(30)]))?;
                let order = (v / PAGE_SIZE).trailing_zeros() as u8;
                if order > crate::mm::memory::max_folio_order() && crate::mm::huge_memory::pud_order() != Some(order) {
                    return Err(alloc::format!(
                        "folio size {v:#x} is larger than this granule's largest ({:#x}{})",
                        PAGE_SIZE << crate::mm::memory::max_folio_order(),
                        if crate::mm::huge_memory::pud_order().is_some() { ", or 1G" } else { "" }
                    ));
                }
                args.folio_order = order;
            }
            "shared" => args.shared = true,
            "noreserve" => args.noreserve = true,
            o if o.starts_with("pfn=") => {
                args.pfn = Some(PhysAddr::new(
                    parse_number(&o[4..])
                        .ok_or_else(|| alloc::format!("bad physical address `{}`", &o[..o.len().min(30)]))?,
                ));
            }
            o if o.starts_with("memfd=") => {
                let f = &o[6..];
                if !super::parse::is_name(f) {
                    return Err(alloc::format!("`{}` is not a valid memfd name", &f[..f.len().min(40)]));
                }
                args.memfd = Some(alloc::string::String::from(f));
            }
            o => return Err(alloc::format!("unknown mmap option `{}`", &o[..o.len().min(40)])),
        }
    }
    proc::mmap(p, r, args).map(|_| Outcome::Done).map_err(Into::into)
}
