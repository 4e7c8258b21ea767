//! Console commands on processes: `P mmap`, `P write`, `P check`, `P walk`,
//! `P atcheck`... (the first slice of the processes issue; the rest of
//! SCENARIOS.md's process commands are refused with a clear error).

use alloc::string::String;
use core::fmt::Write;

use super::commands::{CmdResult, Outcome};
use crate::arch::aarch64::cpu::AtOp;
use crate::arch::aarch64::esr::Esr;
use crate::arch::aarch64::user::op;
use crate::mm::addr::VirtAddr;
use crate::mm::granule::PAGE_SIZE;
use crate::mm::mm_struct::MmapLocked;
use crate::mm::pgtable::{Expected, Translation, expected_access_hw};
use crate::proc::{self, MmapArgs, RunEnd};
use crate::util::parse_number;
use crate::{print, println};

pub(super) fn byte(s: &str) -> Result<u8, String> {
    match parse_number(s) {
        Some(v) if v <= 0xff => Ok(v as u8),
        _ => Err(alloc::format!("`{}` is not a byte (0x00..0xff)", &s[..s.len().min(20)])),
    }
}

/// The report of an EL0 access the kernel could not resolve: process,
/// address, ESR decoded, and why (no mapping, permission, out of memory...).
fn fault_report(p: &str, addr: u64, esr: u64, why: proc::Unresolved) -> String {
    alloc::format!("{p}: unresolved EL0 fault at {addr:#x}: {why}: {} ({p} survives)", Esr(esr))
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
                let (va, len) = proc::range(p, r)?;
                proc::munmap(p, va, len).map(|_| Outcome::Done).map_err(Into::into)
            }
            _ => Err("usage: P munmap RANGE".into()),
        },
        "mprotect" => match a {
            [r, prot] => {
                let (va, len) = proc::range(p, r)?;
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
                let (va, len) = proc::range(p, r)?;
                proc::madvise_dontneed(p, va, len).map(|_| Outcome::Done).map_err(Into::into)
            }
            [r, adv @ ("hugepage" | "nohugepage")] => {
                let (va, len) = proc::range(p, r)?;
                proc::madvise_hugepage(p, va, len, *adv == "hugepage").map(|_| Outcome::Done).map_err(Into::into)
            }
            [_, "pageout"] => Err("madvise pageout is not available yet (swap issue)".into()),
            _ => Err("usage: P madvise RANGE dontneed|pageout|hugepage|nohugepage".into()),
        },
        "write" | "check" => match a {
            [r, b] => {
                let (va, len) = proc::range(p, r)?;
                let b = byte(b)?;
                let opc = if cmd == "write" { op::WRITE } else { op::CHECK };
                match proc::access(p, opc, va, len, b)? {
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
                let (va, len) = proc::range(p, r)?;
                let opc = if *kind == "read" { op::TOUCH_READ } else { op::TOUCH_WRITE };
                match proc::access(p, opc, va, len, 0)? {
                    RunEnd::Done => Ok(Outcome::Done),
                    RunEnd::Fault { addr, esr, why } => Err(fault_report(p, addr, esr, why)),
                    other => Err(alloc::format!("{p}: agent stopped: {other:?}")),
                }
            }
            _ => Err("usage: P touch RANGE read|write".into()),
        },
        "expect-fault" => match a {
            [kind @ ("read" | "write"), r] => {
                let (va, _) = proc::range(p, r)?;
                let opc = if *kind == "read" { op::TOUCH_READ } else { op::TOUCH_WRITE };
                match proc::access(p, opc, va, 1, 0)? {
                    // Running out of memory is not a refusal (Linux would
                    // not SIGSEGV): an error that says so.
                    RunEnd::Fault { addr, esr, why: why @ proc::Unresolved::OutOfMemory } => {
                        Err(fault_report(p, addr, esr, why))
                    }
                    RunEnd::Fault { addr, esr, why } if addr == va => {
                        println!("  {p}: {kind} at {addr:#x} refused: {why}: {}", Esr(esr));
                        Ok(Outcome::Assert(Ok(())))
                    }
                    RunEnd::Fault { addr, .. } => {
                        Ok(Outcome::Assert(Err(alloc::format!("fault at {addr:#x}, not at {va:#x}"))))
                    }
                    RunEnd::Done => Ok(Outcome::Assert(Err(alloc::format!("the {kind} at {va:#x} succeeded")))),
                    other => Err(alloc::format!("{p}: agent stopped: {other:?}")),
                }
            }
            _ => Err("usage: P expect-fault write|read RANGE".into()),
        },
        "maps" => match a {
            [] => {
                print!("{}", proc::maps(p)?);
                Ok(Outcome::Done)
            }
            _ => Err("usage: P maps".into()),
        },
        "walk" => match a {
            [r] => walk(p, r),
            _ => Err("usage: P walk RANGE".into()),
        },
        "atcheck" => match a {
            [r] => atcheck(p, r),
            _ => Err("usage: P atcheck RANGE".into()),
        },
        "pin" | "ref" => gup(p, cmd, a),
        "query" => query(p, a),
        "stats" => stats(p, a),
        other => Err(alloc::format!("`{other}` is not available yet (processes and anonymous-memory issues)")),
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
    let (va, len) = proc::range(p, r)?;
    let (got, by_fast) = proc::gup(p, n, va, len, flags, fast)?;
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
                args.pfn = Some(
                    parse_number(&o[4..])
                        .ok_or_else(|| alloc::format!("bad physical address `{}`", &o[..o.len().min(30)]))?,
                );
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

fn walk(p: &str, r: &str) -> CmdResult {
    let (va, len) = proc::range(p, r)?;
    let mut out = String::new();
    proc::with_tables(p, |_, t| {
        let mut v = va & !(PAGE_SIZE - 1);
        while v < va + len {
            match t.translate(VirtAddr(v)) {
                Translation::Mapped { pa, level, desc } => {
                    let _ = write!(out, "{v:#014x}: level {level} {desc:?} -> PA {pa:#x} ");
                    let _ = crate::mm::ptdump::write_attrs(&mut out, desc, level);
                    let _ = writeln!(out);
                }
                Translation::Fault { level, desc } => {
                    let _ = writeln!(out, "{v:#014x}: not mapped (level {level} entry {desc:?})");
                }
            }
            v += PAGE_SIZE;
        }
    })?;
    print!("{out}");
    Ok(Outcome::Done)
}

fn atcheck(p: &str, r: &str) -> CmdResult {
    let (va, len) = proc::range(p, r)?;
    let pages: alloc::vec::Vec<(u64, Translation)> = proc::with_tables(p, |_, t| {
        let mut v = va & !(PAGE_SIZE - 1);
        let mut out = alloc::vec::Vec::new();
        while v < va + len {
            out.push((v, t.translate(VirtAddr(v))));
            v += PAGE_SIZE;
        }
        out
    })?;
    let mismatch = proc::with_ttbr0(p, || {
        let hw = crate::arch::aarch64::cpu::hw_updates();
        for (v, tr) in &pages {
            for (op, write) in [(AtOp::S1E0R, false), (AtOp::S1E0W, true)] {
                let want = expected_access_hw(tr, true, write, hw);
                let got = crate::test::at_outcome(op, *v);
                if want != got {
                    return Some(alloc::format!("{v:#x} {op:?}: walker {want:?}, AT {got:?}"));
                }
            }
        }
        None
    })?;
    let _ = Expected::Ok;
    Ok(Outcome::Assert(match mismatch {
        None => Ok(()),
        Some(m) => Err(m),
    }))
}

/// `P query RANGE expect FLAG...`: every page of RANGE must show each FLAG
/// (a leading `!` negates). Flags whose state the kernel does not track yet
/// (`exclusive`) are refused, never guessed.
fn query(p: &str, a: &[&str]) -> CmdResult {
    let [r, "expect", flags @ ..] = a else { return Err("usage: P query RANGE expect FLAG...".into()) };
    if flags.is_empty() {
        return Err("query needs at least one flag".into());
    }
    let (va, len) = proc::range(p, r)?;
    // Validate every flag before looking at anything.
    let mut wanted = alloc::vec::Vec::new();
    for f in flags {
        let (neg, name) = match f.strip_prefix('!') {
            Some(n) => (true, n),
            None => (false, *f),
        };
        let folio = match name.strip_prefix("folio=") {
            Some(sz) => Some(parse_number(sz).ok_or_else(|| alloc::format!("bad folio size `{sz}`"))?),
            None => None,
        };
        match name {
            "present" | "writable" | "anon" | "zero" | "special" | "cont" | "block" | "dirty" | "young" | "swap"
            | "marker" | "uffd-wp" | "exclusive" => {}
            _ if folio.is_some() => {}
            other => return Err(alloc::format!("unknown query flag `{}`", &other[..other.len().min(30)])),
        }
        wanted.push((neg, name, folio));
    }
    let res = proc::with_tables(p, |proc_, t| -> Result<(), String> {
        let lock = proc_.mm.mmap_read_lock();
        let mut v = va & !(PAGE_SIZE - 1);
        while v < va + len {
            let tr = t.translate(VirtAddr(v));
            let fw = crate::mm::folio_walk::folio_walk_start(
                &lock,
                &*t.mem,
                VirtAddr(v),
                crate::mm::folio_walk::FwFlags { zeropage: true },
                &crate::mm::page::is_zero_any,
            );
            let (present, desc, level) = match tr {
                Translation::Mapped { desc, level, .. } => (true, desc, level),
                Translation::Fault { desc, level } => (false, desc, level),
            };
            let np = match desc.kind(level, crate::mm::granule::GRANULE) {
                crate::mm::desc::Kind::NonPresent(n) => Some(n),
                _ => None,
            };
            for &(neg, name, folio) in &wanted {
                let have = match name {
                    "present" => present,
                    "writable" => present && desc.may_write(),
                    "anon" => page_of(&fw).is_some_and(|(f, _)| f.is_anon()),
                    "exclusive" => page_of(&fw).is_some_and(|(_, pg)| pg.anon_exclusive()),
                    "zero" => fw.as_ref().is_some_and(|f| f.zero),
                    "special" => present && desc.special(),
                    "cont" => present && desc.contiguous(),
                    "block" => present && level < 3,
                    "dirty" => present && (desc.sw_dirty() || (desc.dbm() && !desc.perms().read_only)),
                    "young" => present && desc.af(),
                    "swap" => matches!(np, Some(crate::mm::desc::NonPresent::Swap { .. })),
                    "marker" => matches!(np, Some(crate::mm::desc::NonPresent::Marker(_))),
                    "uffd-wp" => {
                        (present && desc.uffd_wp())
                            || matches!(np, Some(crate::mm::desc::NonPresent::Marker(m)) if m & crate::mm::desc::marker::UFFD_WP != 0)
                    }
                    _ => folio_size(&fw) == folio,
                };
                if have == neg {
                    return Err(alloc::format!("page {v:#x}: {}{name} does not hold", if neg { "!" } else { "" }));
                }
            }
            drop(fw);
            v += PAGE_SIZE;
        }
        Ok(())
    })?;
    Ok(Outcome::Assert(res))
}

/// The folio and page a folio walk found (none for the zero page).
fn page_of(
    fw: &Option<crate::mm::folio_walk::FolioWalk<'_>>,
) -> Option<(crate::mm::page::Folio, &'static crate::mm::page::Page)> {
    let pg = crate::mm::page::pfn_to_page(fw.as_ref()?.page?)?;
    Some((pg.folio()?, pg))
}

/// The size of the folio mapped there (the zero page counts as one page).
fn folio_size(fw: &Option<crate::mm::folio_walk::FolioWalk<'_>>) -> Option<u64> {
    match fw {
        Some(f) if f.zero => Some(f.size),
        _ => page_of(fw).map(|(f, _)| f.size()),
    }
}

/// `P stats expect KEY=N...`: counters of P in pages, counted from its
/// tables: rss (present pages, special mappings excluded), anon (normal pages in private anonymous
/// VMAs), file, zero, swap (none exist yet, so they are 0).
fn stats(p: &str, a: &[&str]) -> CmdResult {
    let ["expect", kvs @ ..] = a else { return Err("usage: P stats expect KEY=N...".into()) };
    if kvs.is_empty() {
        return Err("stats needs at least one KEY=N".into());
    }
    let mut want = alloc::vec::Vec::new();
    for kv in kvs {
        let (k, v) = kv.split_once('=').ok_or_else(|| alloc::format!("`{kv}` is not KEY=N"))?;
        let n = parse_number(v).ok_or_else(|| alloc::format!("`{v}` is not a number"))?;
        match k {
            "rss" | "anon" | "file" | "zero" | "swap" => want.push((k, n)),
            other => {
                return Err(alloc::format!(
                    "unknown counter `{}` (rss, anon, file, zero, swap)",
                    &other[..other.len().min(20)]
                ));
            }
        }
    }
    let (rss, anon, file, zero) = proc::with_tables(p, |proc_, t| {
        let lock = proc_.mm.mmap_read_lock();
        let (mut rss, mut anon, mut file, mut zero) = (0u64, 0u64, 0u64, 0u64);
        for vma in lock.vmas().iter() {
            t.walk_range(vma.start, vma.end, &mut |e| {
                if let crate::mm::desc::Kind::Leaf(pa) = e.kind {
                    let pages = e.size / PAGE_SIZE;
                    // Special entries (the agent, PFN maps, the zero page)
                    // are left out of RSS, as in Linux.
                    if crate::mm::page::is_zero_any(pa) && e.desc.special() {
                        zero += pages;
                    } else if !e.desc.special() {
                        rss += pages;
                        match crate::mm::page::pfn_to_page(pa).and_then(|pg| pg.folio()) {
                            Some(f) if f.is_anon() => anon += pages,
                            Some(f) if f.in_page_cache() => file += pages,
                            _ => {}
                        }
                    }
                }
            });
        }
        (rss, anon, file, zero)
    })?;
    for (k, n) in want {
        let have = match k {
            "rss" => rss,
            "anon" => anon,
            "file" => file,
            "zero" => zero,
            _ => 0,
        };
        if have != n {
            return Ok(Outcome::Assert(Err(alloc::format!(
                "{k} is {have}, expected {n} (rss {rss}, anon {anon}, file {file}, zero {zero})"
            ))));
        }
    }
    Ok(Outcome::Assert(Ok(())))
}
