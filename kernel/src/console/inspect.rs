//! `P walk`, `P atcheck`, `P query`, `P stats`: looking at a process's
//! tables over a range of any size.
//!
//! A range is visited entry by entry with the page-table walker: a leaf (page
//! or block) or an invalid entry covering a hole at its level. Time goes with
//! the entries visited, not with the pages the range spans (a 1 TiB hole is
//! one top-level entry), memory use is bounded (output streams as it is
//! made), and Ctrl-C stops the command between entries.

use alloc::string::String;
use core::fmt::Write;

use super::commands::{CmdResult, INTERRUPTED, Out, Outcome, interrupted};
use super::parse::{Range, truncate};
use crate::arch::aarch64::cpu;
use crate::arch::aarch64::granule::{GRANULE, PAGE_SIZE};
use crate::mm::addr::VirtAddr;
use crate::mm::desc::{Desc, Kind, NonPresent};
use crate::mm::kernel_pgtable::FrameTableMem;
use crate::mm::mm_struct::MmapLocked;
use crate::mm::pgtable::atcheck::{self, Access, Request};
use crate::mm::pgtable::{HwUpdates, Tables, Translation};
use crate::mm::walk::{Entry, PageWalkOps, Step};
use crate::proc::{self, Process};
use crate::util::{Bytes, parse_number};

/// Entries visited between two looks for Ctrl-C.
const POLL_EVERY: u32 = 64;

/// One piece of a range, as the tables map it: `[lo, hi)` inside one entry,
/// translating as `tr` at `lo` (a leaf's PA is `lo`'s).
struct Piece {
    lo: u64,
    hi: u64,
    tr: Translation,
}

/// Why a visit of the pieces ended early.
enum Stopped {
    /// Ctrl-C: the command ends with an error.
    Interrupted,
    /// The visitor's verdict: an assertion that does not hold, and why.
    By(String),
}

/// Calls `f` for every piece of `[start, end)` (page aligned) in address
/// order: every leaf entry, every non-present entry and every hole (an empty
/// entry at the level where the walk found it).
fn for_each_piece(
    t: &Tables<'_, FrameTableMem>,
    start: u64,
    end: u64,
    f: &mut dyn FnMut(&Piece) -> Result<(), Stopped>,
) -> Result<(), Stopped> {
    struct Visit<'f> {
        start: u64,
        end: u64,
        f: &'f mut dyn FnMut(&Piece) -> Result<(), Stopped>,
        seen: u32,
        stopped: Option<Stopped>,
    }
    impl Visit<'_> {
        fn piece(&mut self, p: Piece) -> Step {
            self.seen = self.seen.wrapping_add(1);
            if self.seen.is_multiple_of(POLL_EVERY) && interrupted() {
                self.stopped = Some(Stopped::Interrupted);
                return Step::Stop(-1);
            }
            match (self.f)(&p) {
                Ok(()) => Step::Continue,
                Err(s) => {
                    self.stopped = Some(s);
                    Step::Stop(-1)
                }
            }
        }
    }
    impl PageWalkOps for Visit<'_> {
        fn entry(&mut self, e: &Entry) -> Step {
            let lo = e.va.as_u64().max(self.start);
            let hi = e.va.as_u64().wrapping_add(e.size).wrapping_sub(1).min(self.end - 1) + 1;
            let tr = match e.kind {
                Kind::Table(_) if e.level < 3 => return Step::Continue,
                Kind::Leaf(base) => {
                    Translation::Mapped { pa: base + (lo - e.va.as_u64()), level: e.level, desc: e.desc }
                }
                _ => Translation::Fault { level: e.level, desc: e.desc },
            };
            self.piece(Piece { lo, hi, tr })
        }
        fn pte_hole(&mut self, lo: VirtAddr, hi: VirtAddr, depth: i32) -> Step {
            let (lo, hi) = (lo.as_u64(), hi.as_u64());
            self.piece(Piece { lo, hi, tr: Translation::Fault { level: depth.max(0) as u32, desc: Desc(0) } })
        }
    }
    let mut v = Visit { start, end, f, seen: 0, stopped: None };
    crate::mm::walk::walk_tables_with(
        &*t.mem,
        t.granule,
        t.root,
        t.start_level,
        VirtAddr::new(start),
        VirtAddr::new(end),
        &mut v,
    );
    match v.stopped {
        None => Ok(()),
        Some(s) => Err(s),
    }
}

/// What [`visit`] calls for each piece: `Err` stops the visit.
type PieceFn<'f> = dyn FnMut(&Process, &Tables<'_, FrameTableMem>, &Piece) -> Result<(), Stopped> + 'f;

/// Runs `f` over the pieces of `r`'s pages in P's tables, under P's mmap
/// lock. An interrupted visit is an error (the outer `Err`); the inner
/// result is `f`'s verdict.
fn visit(p: &str, r: Range, f: &mut PieceFn<'_>) -> Result<Result<(), String>, String> {
    let (start, len) = r.pages();
    let end = start + len;
    proc::with_tables(p, |pr, t| for_each_piece(t, start.as_u64(), end.as_u64(), &mut |piece| f(pr, t, piece)))?
        .map_or_else(
            |s| match s {
                Stopped::Interrupted => Err(String::from(INTERRUPTED)),
                Stopped::By(why) => Ok(Err(why)),
            },
            |()| Ok(Ok(())),
        )
}

/// `P walk RANGE`: one line per leaf (a page or a block) and per run of
/// empty entries at one level.
pub(super) fn walk(p: &str, r: Range) -> CmdResult {
    let mut o = Out(String::new());
    // The empty entries seen last and not printed yet: [lo, hi) at a level.
    let mut hole: Option<(u64, u64, u32)> = None;
    let print_hole = |o: &mut Out, (lo, hi, level): (u64, u64, u32)| {
        let _ = write!(o, "{lo:#014x}");
        if hi - lo > PAGE_SIZE {
            let _ = write!(o, "-{hi:#014x} ({})", Bytes(hi - lo));
        }
        let _ = writeln!(o, ": not mapped (level {level}, empty)");
    };
    let done = visit(p, r, &mut |_, _, piece| {
        if let Translation::Fault { level, desc: Desc(0) } = piece.tr {
            match &mut hole {
                Some((_, hi, l)) if *hi == piece.lo && *l == level => *hi = piece.hi,
                _ => {
                    if let Some(h) = hole.replace((piece.lo, piece.hi, level)) {
                        print_hole(&mut o, h);
                    }
                }
            }
            return Ok(());
        }
        if let Some(h) = hole.take() {
            print_hole(&mut o, h);
        }
        let _ = write!(o, "{:#014x}", piece.lo);
        if piece.hi - piece.lo > PAGE_SIZE {
            let _ = write!(o, "-{:#014x} ({})", piece.hi, Bytes(piece.hi - piece.lo));
        }
        match piece.tr {
            Translation::Mapped { pa, level, desc } => {
                let _ = write!(o, ": level {level} {desc:?} -> PA {pa:#x} ");
                let _ = crate::mm::ptdump::write_attrs(&mut o, desc, level);
                let _ = writeln!(o);
            }
            Translation::Fault { level, desc } => {
                let _ = writeln!(o, ": not present (level {level} entry {desc:?})");
            }
        }
        Ok(())
    })?;
    if let Some(h) = hole {
        print_hole(&mut o, h);
    }
    done.map(|()| Outcome::Done)
}

/// `P atcheck RANGE`: the walker's answer equals the MMU's (AT S1E0R and
/// S1E0W) at the first page of every entry, and at the last page of a
/// block: one AT per hole covers the hole, whatever its size.
pub(super) fn atcheck(p: &str, r: Range) -> CmdResult {
    let hw = crate::mm::pgtable::HwUpdates { af: cpu::hw_af_enabled(), dirty: cpu::hw_dirty_enabled() };
    let checked = visit(p, r, &mut |pr, t, piece| {
        let last = piece.hi - PAGE_SIZE;
        let pages: &[u64] = match piece.tr {
            Translation::Mapped { .. } if last > piece.lo => &[piece.lo, last],
            _ => &[piece.lo],
        };
        for &v in pages {
            // What the VMA asks for: the oracle the walk and AT answer to.
            let req = Request::for_vma(pr.mm.mmap_read_lock().vmas().find(VirtAddr::new(v)));
            let irq = cpu::local_irq_save();
            // SAFETY: only AT runs while P's tables are in TTBR0; nothing
            // executes from TTBR0 addresses here.
            unsafe { proc::activate(pr) };
            let mismatch = at_mismatch(t, v, &req, hw);
            drop(irq);
            if let Some(m) = mismatch {
                return Err(Stopped::By(m));
            }
        }
        Ok(())
    })?;
    Ok(Outcome::Assert(checked))
}

/// The software walk of page `v` (the piece only says which pages stand for
/// its entry) against AT S1E0R/S1E0W on it, P's tables being live in TTBR0,
/// and both against what the VMA requested: what differs, if anything.
fn at_mismatch(t: &Tables<'_, FrameTableMem>, v: u64, req: &Request, hw: HwUpdates) -> Option<String> {
    let walked = t.translate_with_limits(VirtAddr::new(v));
    if let Err(m) = atcheck::check_exec(&walked, req) {
        return Some(alloc::format!("{v:#x}: {m}"));
    }
    for access in Access::EL0 {
        if let Err(m) = atcheck::check(&walked, req, access, hw, atcheck::observe(access, VirtAddr::new(v))) {
            return Some(alloc::format!("{v:#x}: {m}"));
        }
    }
    None
}

/// A `query` flag, validated before anything is looked at.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Flag {
    Present,
    Writable,
    Anon,
    Exclusive,
    Zero,
    Special,
    Cont,
    Block,
    Dirty,
    Young,
    Swap,
    Marker,
    Migration,
    UffdWp,
    Folio(u64),
}

impl Flag {
    fn parse(name: &str) -> Result<Self, String> {
        Ok(match name {
            "present" => Flag::Present,
            "writable" => Flag::Writable,
            "anon" => Flag::Anon,
            "exclusive" => Flag::Exclusive,
            "zero" => Flag::Zero,
            "special" => Flag::Special,
            "cont" => Flag::Cont,
            "block" => Flag::Block,
            "dirty" => Flag::Dirty,
            "young" => Flag::Young,
            "swap" => Flag::Swap,
            "marker" => Flag::Marker,
            "migration" => Flag::Migration,
            "uffd-wp" => Flag::UffdWp,
            _ => match name.strip_prefix("folio=") {
                Some(sz) => Flag::Folio(
                    parse_number(sz).ok_or_else(|| alloc::format!("bad folio size `{}`", truncate(sz, 30)))?,
                ),
                None => return Err(alloc::format!("unknown query flag `{}`", truncate(name, 30))),
            },
        })
    }

    /// Whether the flag depends on the page (the struct page behind it),
    /// not only on the entry that maps it.
    fn per_page(self) -> bool {
        matches!(self, Flag::Anon | Flag::Exclusive | Flag::Zero | Flag::Folio(_))
    }
}

/// `P query RANGE expect FLAG...`: every page of RANGE must show each FLAG
/// (a leading `!` negates). Every flag is read from the real entries and
/// pages: a non-present entry is a swap, marker or migration entry only when
/// its encoding says so. `exclusive` on a swap entry is its
/// `pte_swp_exclusive` bit.
pub(super) fn query(p: &str, r: Range, flags: &[&str]) -> CmdResult {
    if flags.is_empty() {
        return Err("query needs at least one flag".into());
    }
    let mut wanted = alloc::vec::Vec::new();
    wanted.try_reserve(flags.len()).map_err(|_| String::from("out of memory"))?;
    for f in flags {
        let (neg, name) = match f.strip_prefix('!') {
            Some(n) => (true, n),
            None => (false, *f),
        };
        wanted.push((neg, name, Flag::parse(name)?));
    }
    let needs_pages = wanted.iter().any(|w| w.2.per_page());
    let held = visit(p, r, &mut |pr, t, piece| {
        // Pages of a leaf are looked at one by one only for flags of the
        // page; everything else is the entry's, the same for all its pages.
        let step = match piece.tr {
            Translation::Mapped { .. } if needs_pages => PAGE_SIZE,
            _ => piece.hi - piece.lo,
        };
        let lock = pr.mm.mmap_read_lock();
        let mut v = piece.lo;
        while v < piece.hi {
            if v != piece.lo && (v - piece.lo).is_multiple_of(POLL_EVERY as u64 * PAGE_SIZE) && interrupted() {
                return Err(Stopped::Interrupted);
            }
            let fw = crate::mm::folio_walk::folio_walk_start(
                &lock,
                &*t.mem,
                VirtAddr::new(v),
                crate::mm::folio_walk::FwFlags { zeropage: true },
                &crate::mm::page::is_zero_any,
            );
            let (present, desc, level) = match piece.tr {
                Translation::Mapped { desc, level, .. } => (true, desc, level),
                Translation::Fault { desc, level } => (false, desc, level),
            };
            let np = match desc.kind(level, GRANULE) {
                Kind::NonPresent(n) => Some(n),
                _ => None,
            };
            for &(neg, name, flag) in &wanted {
                let have = match flag {
                    Flag::Present => present,
                    Flag::Writable => present && desc.may_write(),
                    Flag::Anon => page_of(&fw).is_some_and(|(f, _)| f.is_anon()),
                    // On a swap entry: `pte_swp_exclusive`.
                    Flag::Exclusive => {
                        page_of(&fw).is_some_and(|(_, pg)| pg.anon_exclusive())
                            || matches!(np, Some(NonPresent::Swap { exclusive: true, .. }))
                    }
                    Flag::Zero => fw.as_ref().is_some_and(|f| f.zero),
                    Flag::Special => present && desc.special(),
                    Flag::Cont => present && desc.contiguous(),
                    Flag::Block => present && level < 3,
                    Flag::Dirty => present && (desc.sw_dirty() || (desc.dbm() && !desc.perms().read_only)),
                    Flag::Young => present && desc.af(),
                    Flag::Swap => matches!(np, Some(NonPresent::Swap { .. })),
                    Flag::Marker => matches!(np, Some(NonPresent::Marker(_))),
                    Flag::Migration => matches!(np, Some(NonPresent::Migration { .. })),
                    Flag::UffdWp => {
                        (present && desc.uffd_wp())
                            || matches!(np, Some(NonPresent::Marker(m)) if m & crate::mm::desc::marker::UFFD_WP != 0)
                            || matches!(np, Some(NonPresent::Swap { uffd_wp: true, .. }))
                            || matches!(np, Some(NonPresent::Migration { uffd_wp: true, .. }))
                    }
                    Flag::Folio(sz) => folio_size(&fw) == Some(sz),
                };
                if have == neg {
                    return Err(Stopped::By(alloc::format!(
                        "page {v:#x}: {}{name} does not hold",
                        if neg { "!" } else { "" }
                    )));
                }
            }
            drop(fw);
            v += step;
        }
        Ok(())
    })?;
    Ok(Outcome::Assert(held))
}

/// The folio and page a folio walk found (none for the zero page).
fn page_of(
    fw: &Option<crate::mm::folio_walk::FolioWalk<'_>>,
) -> Option<(crate::mm::page::Folio, &'static crate::mm::page::Page)> {
    let pg = crate::mm::page::phys_to_page(fw.as_ref()?.page?)?;
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
/// tables: rss (present pages, special mappings excluded), anon (normal pages
/// in private anonymous VMAs), file, zero, and swap (swap entries in the
/// tables, Linux's `MM_SWAPENTS`).
pub(super) fn stats(p: &str, a: &[&str]) -> CmdResult {
    let ["expect", kvs @ ..] = a else { return Err("usage: P stats expect KEY=N...".into()) };
    if kvs.is_empty() {
        return Err("stats needs at least one KEY=N".into());
    }
    let mut want = alloc::vec::Vec::new();
    want.try_reserve(kvs.len()).map_err(|_| String::from("out of memory"))?;
    for kv in kvs {
        let (k, v) = kv.split_once('=').ok_or_else(|| alloc::format!("`{}` is not KEY=N", truncate(kv, 40)))?;
        let n = parse_number(v).ok_or_else(|| alloc::format!("`{}` is not a number", truncate(v, 40)))?;
        match k {
            "rss" | "anon" | "file" | "zero" | "swap" => want.push((k, n)),
            other => {
                return Err(alloc::format!("unknown counter `{}` (rss, anon, file, zero, swap)", truncate(other, 20)));
            }
        }
    }
    let c = proc::with_tables(p, |proc_, t| {
        let lock = proc_.mm.mmap_read_lock();
        let mut c = Counters::default();
        for vma in lock.vmas().iter() {
            t.walk_range(vma.start, vma.end, &mut |e| {
                let pages = e.size / PAGE_SIZE;
                match e.kind {
                    Kind::Leaf(pa) => {
                        // Special entries (the agent, PFN maps, the zero page)
                        // are left out of RSS, as in Linux.
                        if crate::mm::page::is_zero_any(pa) && e.desc.special() {
                            c.zero += pages;
                        } else if !e.desc.special() {
                            c.rss += pages;
                            match crate::mm::page::phys_to_page(pa).and_then(|pg| pg.folio()) {
                                Some(f) if f.is_anon() => c.anon += pages,
                                Some(f) if f.in_page_cache() => c.file += pages,
                                _ => {}
                            }
                        }
                    }
                    Kind::NonPresent(NonPresent::Swap { .. }) => c.swap += pages,
                    _ => {}
                }
            });
        }
        c
    })?;
    for (k, n) in want {
        let have = match k {
            "rss" => c.rss,
            "anon" => c.anon,
            "file" => c.file,
            "zero" => c.zero,
            _ => c.swap,
        };
        if have != n {
            return Ok(Outcome::Assert(Err(alloc::format!(
                "{k} is {have}, expected {n} (rss {}, anon {}, file {}, zero {}, swap {})",
                c.rss,
                c.anon,
                c.file,
                c.zero,
                c.swap
            ))));
        }
    }
    Ok(Outcome::Assert(Ok(())))
}

#[derive(Default)]
struct Counters {
    rss: u64,
    anon: u64,
    file: u64,
    zero: u64,
    swap: u64,
}
