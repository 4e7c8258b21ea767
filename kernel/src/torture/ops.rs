//! The torture test's operations: what they are, how they read as
//! scenario-language lines (and back, for replays), and the seeded generator
//! that picks them from what the model knows. Pure: host-tested.

use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;
use core::fmt::Write;

use super::model::{self, Model, PageInfo};
use crate::util::parse_number;

/// Pages `first..first + n` of a region.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Span {
    pub first: u16,
    pub n: u16,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Prot {
    R,
    Rw,
    None,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backing {
    Anon,
    /// The named memfd `tfN`.
    Memfd(u8),
    /// The PFN pool's frames from this one on.
    Pfn(u8),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Thp {
    Never,
    /// `thp=SIZE`: folios of up to 2^order pages.
    Order(u8),
    Always,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MapSpec {
    pub pages: u16,
    pub backing: Backing,
    pub shared: bool,
    pub prot: Prot,
    pub thp: Thp,
}

/// One line of the scenario language. Processes are `pN`, regions `rN`,
/// handles `hN`, memfds `tfN`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Op {
    Spawn {
        p: u8,
    },
    Fork {
        p: u8,
        c: u8,
    },
    Exit {
        p: u8,
    },
    Mmap {
        p: u8,
        r: u8,
        m: MapSpec,
    },
    Munmap {
        p: u8,
        r: u8,
        at: Span,
    },
    Mprotect {
        p: u8,
        r: u8,
        at: Span,
        prot: Prot,
    },
    Dontneed {
        p: u8,
        r: u8,
        at: Span,
    },
    Hugepage {
        p: u8,
        r: u8,
        at: Span,
        on: bool,
    },
    Write {
        p: u8,
        r: u8,
        at: Span,
        byte: u8,
    },
    Check {
        p: u8,
        r: u8,
        at: Span,
        byte: u8,
    },
    /// `skew`: the range starts in the middle of its first page and ends in
    /// the middle of its last (a range covers every page it touches).
    Touch {
        p: u8,
        r: u8,
        at: Span,
        write: bool,
        skew: bool,
    },
    ExpectFault {
        p: u8,
        r: u8,
        page: u16,
        write: bool,
    },
    Pin {
        p: u8,
        h: u8,
        r: u8,
        at: Span,
        write: bool,
        longterm: bool,
        fast: bool,
    },
    Ref {
        p: u8,
        h: u8,
        r: u8,
        at: Span,
    },
    CheckPin {
        h: u8,
        byte: u8,
    },
    Unpin {
        h: u8,
    },
    /// Each flag asserted (Some(true)), negated (Some(false)) or not asked.
    Query {
        p: u8,
        r: u8,
        at: Span,
        q: QueryFlags,
    },
    /// `madvise pageout`.
    Pageout {
        p: u8,
        r: u8,
        at: Span,
    },
    Migrate {
        p: u8,
        r: u8,
        at: Span,
    },
    /// `uffd RANGE register wp [fork-events]`.
    UffdRegister {
        p: u8,
        r: u8,
        at: Span,
        fork_events: bool,
    },
    /// `uffd RANGE wp on|off`.
    UffdWp {
        p: u8,
        r: u8,
        at: Span,
        on: bool,
    },
    UffdUnregister {
        p: u8,
        r: u8,
        at: Span,
    },
    /// `uffd-events expect N`.
    UffdEvents {
        p: u8,
        n: u32,
    },
    Invariants,
}

/// The `query` flags the torture test asks about, in the order they are
/// written.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct QueryFlags {
    pub present: Option<bool>,
    pub writable: Option<bool>,
    pub swap: Option<bool>,
    pub marker: Option<bool>,
    pub uffd_wp: Option<bool>,
}

impl QueryFlags {
    const NAMES: [&'static str; 5] = ["present", "writable", "swap", "marker", "uffd-wp"];

    fn get(&self) -> [Option<bool>; 5] {
        [self.present, self.writable, self.swap, self.marker, self.uffd_wp]
    }

    fn slot(&mut self, i: usize) -> &mut Option<bool> {
        match i {
            0 => &mut self.present,
            1 => &mut self.writable,
            2 => &mut self.swap,
            3 => &mut self.marker,
            _ => &mut self.uffd_wp,
        }
    }

    /// Whether any flag is asked.
    pub fn any(&self) -> bool {
        self.get().iter().any(Option::is_some)
    }
}

/// What rendering needs to know about the machine.
#[derive(Clone, Copy, Debug)]
pub struct Machine {
    pub page: u64,
    /// Physical address of the first frame the torture test may map with `pfn=`.
    pub pfn_base: u64,
    /// Order of `thp=always` (one level-2 block).
    pub max_order: u8,
}

fn prot_word(p: Prot) -> &'static str {
    match p {
        Prot::R => "prot=r",
        Prot::Rw => "prot=rw",
        Prot::None => "prot=none",
    }
}

impl Op {
    /// The process the op runs in, if any.
    pub fn proc(&self) -> Option<u8> {
        match *self {
            Op::Spawn { p }
            | Op::Fork { p, .. }
            | Op::Exit { p }
            | Op::Mmap { p, .. }
            | Op::Munmap { p, .. }
            | Op::Mprotect { p, .. }
            | Op::Dontneed { p, .. }
            | Op::Hugepage { p, .. }
            | Op::Write { p, .. }
            | Op::Check { p, .. }
            | Op::Touch { p, .. }
            | Op::ExpectFault { p, .. }
            | Op::Pin { p, .. }
            | Op::Ref { p, .. }
            | Op::Query { p, .. }
            | Op::Pageout { p, .. }
            | Op::Migrate { p, .. }
            | Op::UffdRegister { p, .. }
            | Op::UffdWp { p, .. }
            | Op::UffdUnregister { p, .. }
            | Op::UffdEvents { p, .. } => Some(p),
            Op::CheckPin { .. } | Op::Unpin { .. } | Op::Invariants => None,
        }
    }

    /// Whether the line is an assertion (PASS/FAIL) rather than a command.
    pub fn is_assertion(&self) -> bool {
        matches!(
            self,
            Op::Check { .. }
                | Op::ExpectFault { .. }
                | Op::CheckPin { .. }
                | Op::Query { .. }
                | Op::UffdEvents { .. }
                | Op::Invariants
        )
    }

    /// The op as a scenario-language line.
    pub fn render(&self, m: &Machine) -> String {
        let sp = |r: u8, at: Span| format!("r{r}+{:#x}:{:#x}", at.first as u64 * m.page, at.n as u64 * m.page);
        match *self {
            Op::Spawn { p } => format!("spawn p{p}"),
            Op::Fork { p, c } => format!("p{p} fork p{c}"),
            Op::Exit { p } => format!("p{p} exit"),
            Op::Mmap { p, r, m: s } => {
                let mut l = format!("p{p} mmap r{r} {:#x}", s.pages as u64 * m.page);
                match s.backing {
                    Backing::Anon => {}
                    Backing::Memfd(f) => {
                        let _ = write!(l, " memfd=tf{f}");
                    }
                    Backing::Pfn(i) => {
                        let _ = write!(l, " pfn={:#x}", m.pfn_base + i as u64 * m.page);
                    }
                }
                if s.shared {
                    l.push_str(" shared");
                }
                if s.prot != Prot::Rw {
                    let _ = write!(l, " {}", prot_word(s.prot));
                }
                match s.thp {
                    Thp::Never => {}
                    Thp::Order(o) => {
                        let _ = write!(l, " thp={:#x}", m.page << o);
                    }
                    Thp::Always => l.push_str(" thp=always"),
                }
                l
            }
            Op::Munmap { p, r, at } => format!("p{p} munmap {}", sp(r, at)),
            Op::Mprotect { p, r, at, prot } => format!("p{p} mprotect {} {}", sp(r, at), prot_word(prot)),
            Op::Dontneed { p, r, at } => format!("p{p} madvise {} dontneed", sp(r, at)),
            Op::Hugepage { p, r, at, on } => {
                format!("p{p} madvise {} {}", sp(r, at), if on { "hugepage" } else { "nohugepage" })
            }
            Op::Write { p, r, at, byte } => format!("p{p} write {} {byte:#04x}", sp(r, at)),
            Op::Check { p, r, at, byte } => format!("p{p} check {} {byte:#04x}", sp(r, at)),
            Op::Touch { p, r, at, write, skew } => {
                let kind = if write { "write" } else { "read" };
                if skew {
                    // Pages first..first+n: from the middle of the first to
                    // the middle of the last.
                    let off = at.first as u64 * m.page + m.page / 2;
                    format!("p{p} touch r{r}+{off:#x}:{:#x} {kind}", (at.n as u64 - 1).max(1) * m.page)
                } else {
                    format!("p{p} touch {} {kind}", sp(r, at))
                }
            }
            Op::ExpectFault { p, r, page, write } => {
                format!("p{p} expect-fault {} r{r}+{:#x}", if write { "write" } else { "read" }, page as u64 * m.page)
            }
            Op::Pin { p, h, r, at, write, longterm, fast } => format!(
                "p{p} pin h{h} {} {}{}{}",
                sp(r, at),
                if write { "rw" } else { "ro" },
                if longterm { " longterm" } else { "" },
                if fast { " fast" } else { "" }
            ),
            Op::Ref { p, h, r, at } => format!("p{p} ref h{h} {}", sp(r, at)),
            Op::CheckPin { h, byte } => format!("checkpin h{h} {byte:#04x}"),
            Op::Unpin { h } => format!("unpin h{h}"),
            Op::Query { p, r, at, q } => {
                let mut l = format!("p{p} query {} expect", sp(r, at));
                for (name, v) in QueryFlags::NAMES.into_iter().zip(q.get()) {
                    match v {
                        Some(true) => {
                            let _ = write!(l, " {name}");
                        }
                        Some(false) => {
                            let _ = write!(l, " !{name}");
                        }
                        None => {}
                    }
                }
                l
            }
            Op::Pageout { p, r, at } => format!("p{p} madvise {} pageout", sp(r, at)),
            Op::Migrate { p, r, at } => format!("p{p} migrate {}", sp(r, at)),
            Op::UffdRegister { p, r, at, fork_events } => {
                format!("p{p} uffd {} register wp{}", sp(r, at), if fork_events { " fork-events" } else { "" })
            }
            Op::UffdWp { p, r, at, on } => format!("p{p} uffd {} wp {}", sp(r, at), if on { "on" } else { "off" }),
            Op::UffdUnregister { p, r, at } => format!("p{p} uffd {} unregister", sp(r, at)),
            Op::UffdEvents { p, n } => format!("p{p} uffd-events expect {n}"),
            Op::Invariants => String::from("invariants"),
        }
    }

    /// Reads back a line [`Op::render`] wrote (for replays).
    pub fn parse(line: &str, m: &Machine) -> Option<Op> {
        let w: Vec<&str> = line.split_ascii_whitespace().collect();
        let num = |s: &str, prefix: &str| -> Option<u8> { s.strip_prefix(prefix)?.parse().ok() };
        let pages =
            |v: u64| -> Option<u16> { v.is_multiple_of(m.page).then(|| u16::try_from(v / m.page).ok()).flatten() };
        // `rN+OFF:LEN` (or `rN+OFF`, one page).
        let span = |s: &str| -> Option<(u8, Span)> {
            let (r, rest) = s.split_once('+')?;
            let (off, len) = match rest.split_once(':') {
                Some((o, l)) => (parse_number(o)?, parse_number(l)?),
                None => (parse_number(rest)?, m.page),
            };
            Some((num(r, "r")?, Span { first: pages(off)?, n: pages(len)? }))
        };
        let byte = |s: &str| parse_number(s).and_then(|v| u8::try_from(v).ok());
        let prot = |s: &str| match s {
            "prot=r" => Some(Prot::R),
            "prot=rw" => Some(Prot::Rw),
            "prot=none" => Some(Prot::None),
            _ => None,
        };
        Some(match w.as_slice() {
            ["invariants"] => Op::Invariants,
            ["spawn", p] => Op::Spawn { p: num(p, "p")? },
            ["checkpin", h, b] => Op::CheckPin { h: num(h, "h")?, byte: byte(b)? },
            ["unpin", h] => Op::Unpin { h: num(h, "h")? },
            [p, cmd, rest @ ..] => {
                let p = num(p, "p")?;
                match (*cmd, rest) {
                    ("fork", [c]) => Op::Fork { p, c: num(c, "p")? },
                    ("exit", []) => Op::Exit { p },
                    ("mmap", [r, size, opts @ ..]) => {
                        let mut s = MapSpec {
                            pages: pages(parse_number(size)?)?,
                            backing: Backing::Anon,
                            shared: false,
                            prot: Prot::Rw,
                            thp: Thp::Never,
                        };
                        for o in opts {
                            if let Some(f) = o.strip_prefix("memfd=") {
                                s.backing = Backing::Memfd(num(f, "tf")?);
                            } else if let Some(a) = o.strip_prefix("pfn=") {
                                let i = parse_number(a)?.checked_sub(m.pfn_base)? / m.page;
                                s.backing = Backing::Pfn(u8::try_from(i).ok()?);
                            } else if *o == "shared" {
                                s.shared = true;
                            } else if *o == "thp=always" {
                                s.thp = Thp::Always;
                            } else if let Some(t) = o.strip_prefix("thp=") {
                                s.thp = Thp::Order(pages(parse_number(t)?)?.trailing_zeros() as u8);
                            } else {
                                s.prot = prot(o)?;
                            }
                        }
                        Op::Mmap { p, r: num(r, "r")?, m: s }
                    }
                    ("munmap", [s]) => {
                        let (r, at) = span(s)?;
                        Op::Munmap { p, r, at }
                    }
                    ("mprotect", [s, pr]) => {
                        let (r, at) = span(s)?;
                        Op::Mprotect { p, r, at, prot: prot(pr)? }
                    }
                    ("madvise", [s, adv]) => {
                        let (r, at) = span(s)?;
                        match *adv {
                            "dontneed" => Op::Dontneed { p, r, at },
                            "hugepage" => Op::Hugepage { p, r, at, on: true },
                            "nohugepage" => Op::Hugepage { p, r, at, on: false },
                            "pageout" => Op::Pageout { p, r, at },
                            _ => return None,
                        }
                    }
                    ("write", [s, b]) => {
                        let (r, at) = span(s)?;
                        Op::Write { p, r, at, byte: byte(b)? }
                    }
                    ("check", [s, b]) => {
                        let (r, at) = span(s)?;
                        Op::Check { p, r, at, byte: byte(b)? }
                    }
                    ("touch", [s, k]) => {
                        let write = *k == "write";
                        match span(s) {
                            Some((r, at)) => Op::Touch { p, r, at, write, skew: false },
                            None => {
                                let (r, rest) = s.split_once('+')?;
                                let (o, l) = rest.split_once(':')?;
                                let (off, len) = (parse_number(o)?, parse_number(l)?);
                                let first = u16::try_from(off / m.page).ok()?;
                                let n = u16::try_from(len / m.page).ok()? + 1;
                                Op::Touch { p, r: num(r, "r")?, at: Span { first, n }, write, skew: true }
                            }
                        }
                    }
                    ("expect-fault", [k, s]) => {
                        let (r, at) = span(s)?;
                        Op::ExpectFault { p, r, page: at.first, write: *k == "write" }
                    }
                    ("pin", [h, s, mode, opts @ ..]) => {
                        let (r, at) = span(s)?;
                        Op::Pin {
                            p,
                            h: num(h, "h")?,
                            r,
                            at,
                            write: *mode == "rw",
                            longterm: opts.contains(&"longterm"),
                            fast: opts.contains(&"fast"),
                        }
                    }
                    ("ref", [h, s]) => {
                        let (r, at) = span(s)?;
                        Op::Ref { p, h: num(h, "h")?, r, at }
                    }
                    ("query", [s, "expect", flags @ ..]) => {
                        let (r, at) = span(s)?;
                        let mut q = QueryFlags::default();
                        for f in flags {
                            let (neg, name) = match f.strip_prefix('!') {
                                Some(n) => (true, n),
                                None => (false, *f),
                            };
                            let i = QueryFlags::NAMES.iter().position(|n| *n == name)?;
                            *q.slot(i) = Some(!neg);
                        }
                        Op::Query { p, r, at, q }
                    }
                    ("migrate", [s]) => {
                        let (r, at) = span(s)?;
                        Op::Migrate { p, r, at }
                    }
                    ("uffd", [s, rest @ ..]) => {
                        let (r, at) = span(s)?;
                        match rest {
                            ["register", "wp"] => Op::UffdRegister { p, r, at, fork_events: false },
                            ["register", "wp", "fork-events"] => Op::UffdRegister { p, r, at, fork_events: true },
                            ["wp", "on"] => Op::UffdWp { p, r, at, on: true },
                            ["wp", "off"] => Op::UffdWp { p, r, at, on: false },
                            ["unregister"] => Op::UffdUnregister { p, r, at },
                            _ => return None,
                        }
                    }
                    ("uffd-events", ["expect", n]) => Op::UffdEvents { p, n: parse_number(n)?.try_into().ok()? },
                    _ => return None,
                }
            }
            _ => return None,
        })
    }
}

/// splitmix64: small, seedable, and the same on the host and in the kernel.
#[derive(Clone, Debug)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Self(seed ^ 0x5eed_7047_0e57_u64)
    }
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    /// Uniform in `0..n` (n > 0).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n
    }
    pub fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }
    pub fn pick<T: Copy>(&mut self, v: &[T]) -> Option<T> {
        if v.is_empty() { None } else { Some(v[self.below(v.len() as u64) as usize]) }
    }
}

/// Picks the next operation from what the model knows, so that most ops
/// are valid and touch live state; a few name things that do not exist, to
/// check refusals.
pub struct Generator {
    pub seed: u64,
    pub rng: Rng,
    pub mach: Machine,
    /// Only single-page writes (allocation-failure injection: a write then
    /// either happens or not).
    pub one_page_writes: bool,
}

/// Byte values written: never 0, so a page that loses its content shows.
fn fresh_byte(rng: &mut Rng) -> u8 {
    1 + rng.below(255) as u8
}

impl Generator {
    pub fn new(seed: u64, mach: Machine) -> Self {
        Self { seed, rng: Rng::new(seed), mach, one_page_writes: false }
    }

    fn span_in(&mut self, len: u16, max: u16) -> Span {
        let first = self.rng.below(len as u64) as u16;
        let n = 1 + self.rng.below(((len - first).min(max)) as u64) as u16;
        Span { first, n }
    }

    /// A span of whole mapped pages of a region, or a random span.
    fn mapped_span(&mut self, pages: &[PageInfo]) -> Span {
        let mapped: Vec<u16> = (0..pages.len() as u16).filter(|&i| pages[i as usize].mapped).collect();
        if let Some(first) = self.rng.pick(&mapped) {
            let mut n = 1;
            let max = 1 + self.rng.below(8) as u16;
            while n < max && ((first + n) as usize) < pages.len() && pages[(first + n) as usize].mapped {
                n += 1;
            }
            Span { first, n }
        } else {
            self.span_in(pages.len() as u16, 4)
        }
    }

    fn map_spec(&mut self) -> MapSpec {
        let prot = match self.rng.below(10) {
            0 => Prot::R,
            1 => Prot::None,
            _ => Prot::Rw,
        };
        match self.rng.below(10) {
            0 | 1 => MapSpec {
                pages: 1 + self.rng.below(6) as u16,
                backing: Backing::Memfd(self.rng.below(model::MAX_FILES as u64) as u8),
                shared: self.rng.chance(60),
                prot,
                thp: Thp::Never,
            },
            2 => MapSpec {
                pages: 1 + self.rng.below(6) as u16,
                backing: Backing::Anon,
                shared: true,
                prot,
                thp: Thp::Never,
            },
            3 => {
                let first = self.rng.below(model::PFN_PAGES as u64) as u8;
                let n = 1 + self.rng.below((model::PFN_PAGES - first as usize) as u64) as u16;
                MapSpec { pages: n, backing: Backing::Pfn(first), shared: self.rng.chance(50), prot, thp: Thp::Never }
            }
            4 | 5 => {
                // Large folios of every size up to 2M (`thp=SIZE`), and a
                // whole block (`thp=always`) where that is 2M at most.
                // (From order 2: Linux has no order-1 anonymous folios.)
                let top = (0..=self.mach.max_order).rev().find(|&o| self.mach.page << o <= 2 << 20).unwrap_or(0).max(2);
                let always = self.mach.page << self.mach.max_order <= 2 << 20;
                let o = 2 + self.rng.below(top as u64 - 1 + u64::from(always)) as u8;
                let (thp, order) = if o > top { (Thp::Always, self.mach.max_order) } else { (Thp::Order(o), o) };
                let pages = (1u16 << order) * (1 + self.rng.below(2) as u16);
                MapSpec { pages, backing: Backing::Anon, shared: false, prot: Prot::Rw, thp }
            }
            _ => MapSpec {
                pages: 1 + self.rng.below(8) as u16,
                backing: Backing::Anon,
                shared: false,
                prot,
                thp: Thp::Never,
            },
        }
    }

    /// The next op. `ops` so far decides nothing: only the model and the seed do.
    pub fn next(&mut self, m: &Model) -> Op {
        let live = m.live_procs();
        let free: Vec<u8> = (0..model::MAX_PROCS as u8).filter(|p| !live.contains(p)).collect();
        // A small share of ops on names that may not exist: refusals.
        if self.rng.chance(2) {
            let p = self.rng.below(model::MAX_PROCS as u64) as u8;
            let r = self.rng.below(model::MAX_REGIONS as u64) as u8;
            let h = self.rng.below(model::MAX_HANDLES as u64) as u8;
            let at = Span { first: 0, n: 1 };
            return match self.rng.below(7) {
                0 => Op::Spawn { p },
                6 => Op::UffdEvents { p, n: 0 },
                1 => Op::Exit { p },
                2 => Op::Write { p, r, at, byte: fresh_byte(&mut self.rng) },
                3 => Op::Unpin { h },
                4 => Op::CheckPin { h, byte: 0 },
                _ => Op::Munmap { p, r, at },
            };
        }
        let Some(p) = self.rng.pick(&live) else {
            return Op::Spawn { p: self.rng.pick(&free).unwrap_or(0) };
        };
        let regions = m.regions(p);
        let roll = self.rng.below(100);
        // Process lifecycle.
        if (roll < 4 || regions.is_empty() && roll < 10)
            && let Some(c) = self.rng.pick(&free)
        {
            return Op::Spawn { p: c };
        }
        if roll < 9
            && let Some(c) = self.rng.pick(&free)
        {
            return Op::Fork { p, c };
        }
        if roll < 12 && live.len() > 2 {
            return Op::Exit { p };
        }
        let free_r: Vec<u8> = (0..model::MAX_REGIONS as u8).filter(|r| !regions.contains(r)).collect();
        if (roll < 25 || regions.is_empty())
            && let Some(r) = self.rng.pick(&free_r)
        {
            return Op::Mmap { p, r, m: self.map_spec() };
        }
        // Handles.
        let handles = m.live_handles();
        if roll < 31 && !handles.is_empty() {
            let h = self.rng.pick(&handles).unwrap_or(0);
            return if self.rng.chance(50) {
                Op::Unpin { h }
            } else {
                Op::CheckPin { h, byte: m.handle_byte(h).unwrap_or(0) }
            };
        }
        let Some(r) = self.rng.pick(&regions) else { return Op::Invariants };
        let pages = m.region_pages(p, r);
        let len = pages.len() as u16;
        if roll < 38 {
            let free_h: Vec<u8> = (0..model::MAX_HANDLES as u8).filter(|h| !handles.contains(h)).collect();
            // GUP only where no large folio can be: what a page of a large
            // folio is depends on allocations the model cannot know.
            if let Some(h) = self.rng.pick(&free_h)
                && !pages.iter().any(|i| i.thp)
            {
                let at = self.mapped_span(&pages);
                let at = Span { first: at.first, n: at.n.min(3) };
                // GUP-fast has no VMA: it takes a COW-ed anon page of a
                // private PFN map that the slow path refuses (as in Linux).
                // Only the slow path there, whose answer the model knows.
                let pfn = pages.iter().any(|i| i.pfn);
                return if self.rng.chance(40) && !pfn {
                    Op::Ref { p, h, r, at }
                } else {
                    Op::Pin {
                        p,
                        h,
                        r,
                        at,
                        write: self.rng.chance(50),
                        longterm: self.rng.chance(50),
                        fast: !pfn && self.rng.chance(50),
                    }
                };
            }
        }
        match roll {
            38..=42 => {
                // Whole region sometimes, so that it goes away.
                let at = if self.rng.chance(30) { Span { first: 0, n: len } } else { self.span_in(len, 4) };
                Op::Munmap { p, r, at }
            }
            43..=50 => {
                let prot = match self.rng.below(4) {
                    0 => Prot::R,
                    1 => Prot::None,
                    _ => Prot::Rw,
                };
                let at = if self.rng.chance(85) { self.mapped_span(&pages) } else { self.span_in(len, 4) };
                Op::Mprotect { p, r, at, prot }
            }
            51..=55 => {
                // Only over mapped, non-PFN pages: madvise over holes or
                // PFN maps has no meaning the contract fixes.
                let at = self.mapped_span(&pages);
                let ok = (at.first..at.first + at.n).all(|i| pages[i as usize].mapped && !pages[i as usize].pfn);
                if !ok {
                    return Op::Check { p, r, at: Span { first: 0, n: 1 }, byte: 0 }.fix(m);
                }
                if self.rng.chance(75) {
                    Op::Dontneed { p, r, at }
                } else {
                    Op::Hugepage { p, r, at, on: self.rng.chance(60) }
                }
            }
            56..=62 => {
                let at = self.mapped_span(&pages);
                Op::Touch { p, r, at, write: self.rng.chance(50), skew: at.n >= 2 && self.rng.chance(40) }
            }
            63..=66 => {
                let page = self.rng.below(len as u64) as u16;
                Op::ExpectFault { p, r, page, write: self.rng.chance(60) }
            }
            67..=72 => Op::Check { p, r, at: self.mapped_span(&pages), byte: 0 }.fix(m),
            73..=75 => {
                // Over mapped, non-PFN pages, as madvise above; migrate only
                // where the model knows what it does.
                let at = self.mapped_span(&pages);
                let ok = (at.first..at.first + at.n).all(|i| pages[i as usize].mapped && !pages[i as usize].pfn);
                if ok && roll < 75 {
                    Op::Pageout { p, r, at }
                } else if ok && !m.migrate_uncertain(p, r, at) {
                    Op::Migrate { p, r, at }
                } else {
                    Op::Check { p, r, at: Span { first: 0, n: 1 }, byte: 0 }.fix(m)
                }
            }
            76..=78 => self.uffd(m, p, r, &pages),
            79 => Op::UffdEvents { p, n: m.uffd_events(p) },
            _ => {
                let mut at = self.mapped_span(&pages);
                if self.one_page_writes {
                    at.n = 1;
                }
                Op::Write { p, r, at, byte: fresh_byte(&mut self.rng) }
            }
        }
    }
}

impl Generator {
    /// A userfaultfd write-protect op over region `r` of `p`: mostly valid
    /// (register with the context's features, `wp` over registered pages),
    /// sometimes refused.
    fn uffd(&mut self, m: &Model, p: u8, r0: u8, pages: &[PageInfo]) -> Op {
        // Mostly in a region that has registered pages, if one does.
        let with_reg: Vec<u8> =
            m.regions(p).into_iter().filter(|&q| m.region_pages(p, q).iter().any(|i| i.reg)).collect();
        let (r, owned);
        let pages = match self.rng.pick(&with_reg) {
            Some(q) if self.rng.chance(80) => {
                r = q;
                owned = m.region_pages(p, q);
                &owned[..]
            }
            _ => {
                r = r0;
                pages
            }
        };
        let len = pages.len() as u16;
        let regd: Vec<u16> = (0..len).filter(|&i| pages[i as usize].reg).collect();
        let roll = self.rng.below(10);
        if roll < 2 || regd.is_empty() {
            let at = if self.rng.chance(25) { Span { first: 0, n: len } } else { self.mapped_span(pages) };
            let fork_events = match m.uffd_registered(p) {
                Some(f) => f != self.rng.chance(10),
                None => self.rng.chance(50),
            };
            return Op::UffdRegister { p, r, at, fork_events };
        }
        if roll == 9 {
            return Op::UffdUnregister { p, r, at: self.mapped_span(pages) };
        }
        let at = if self.rng.chance(90) {
            let first = self.rng.pick(&regd).unwrap_or(0);
            let max = 1 + self.rng.below(8) as u16;
            let mut n = 1;
            while n < max && first + n < len && pages[(first + n) as usize].reg {
                n += 1;
            }
            Span { first, n }
        } else {
            self.span_in(len, 4)
        };
        Op::UffdWp { p, r, at, on: self.rng.chance(60) }
    }
}

impl Op {
    /// A `check` with the byte the model expects (of its first page).
    fn fix(self, m: &Model) -> Op {
        match self {
            Op::Check { p, r, at, .. } => {
                // As many pages from the first as hold the same byte.
                let b = m.view(p, r, at.first).unwrap_or(0);
                let mut n = 1;
                while n < at.n && m.view(p, r, at.first + n) == Some(b) {
                    n += 1;
                }
                Op::Check { p, r, at: Span { first: at.first, n }, byte: b }
            }
            o => o,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    extern crate std;

    const M: Machine = Machine { page: 4096, pfn_base: 0x7fc0_0000, max_order: 9 };

    #[test]
    fn every_generated_line_reads_back() {
        let mut g = Generator::new(7, M);
        let mut m = Model::new();
        for _ in 0..20_000 {
            let op = g.next(&m);
            let line = op.render(&M);
            assert_eq!(Op::parse(&line, &M), Some(op), "{line}");
            m.apply(&op);
        }
    }

    #[test]
    fn new_op_lines_read_back() {
        for l in [
            "p1 madvise r2+0x1000:0x2000 pageout",
            "p1 migrate r2+0x0:0x1000",
            "p1 uffd r0+0x0:0x4000 register wp",
            "p1 uffd r0+0x0:0x4000 register wp fork-events",
            "p1 uffd r0+0x1000:0x1000 wp on",
            "p1 uffd r0+0x1000:0x1000 wp off",
            "p1 uffd r0+0x0:0x4000 unregister",
            "p3 uffd-events expect 12",
            "p0 query r1+0x0:0x1000 expect !present !writable swap !marker uffd-wp",
        ] {
            let op = Op::parse(l, &M).unwrap_or_else(|| panic!("{l}"));
            assert_eq!(op.render(&M), l);
        }
        assert_eq!(Op::parse("p1 uffd r0+0x0:0x1000 wp", &M), None);
        assert_eq!(Op::parse("p0 query r1+0x0:0x1000 expect migration", &M), None);
    }

    #[test]
    fn same_seed_same_ops() {
        let run = |seed| {
            let mut g = Generator::new(seed, M);
            let mut m = Model::new();
            (0..2000)
                .map(|_| {
                    let op = g.next(&m);
                    m.apply(&op);
                    op
                })
                .collect::<Vec<_>>()
        };
        assert_eq!(run(3), run(3));
        assert_ne!(run(3), run(4));
    }
}

#[cfg(test)]
mod consistency {
    use super::*;
    use crate::torture::model::Expect;
    extern crate std;

    const M: Machine = Machine { page: 4096, pfn_base: 0x7fc0_0000, max_order: 9 };

    /// The driver's loop without a kernel: every assertion line the model
    /// derives must be one it then expects to hold (a model that
    /// contradicts itself would report divergences that are its own).
    fn run(seed: u64, ops: u64) {
        let mut g = Generator::new(seed, M);
        let mut m = Model::new();
        for i in 0..ops {
            let op = g.next(&m);
            m.apply(&op);
            let mut checks = Vec::new();
            m.assertions_after(&op, &mut checks);
            for c in &checks {
                assert_eq!(m.apply(c), Expect::Pass, "seed {seed} op {i} ({op:?}): {c:?}");
            }
            checks.clear();
            if (i + 1).is_multiple_of(64) {
                m.full_check(&mut checks);
            }
            for c in &checks {
                assert_eq!(m.apply(c), Expect::Pass, "seed {seed} op {i} ({op:?}), full check: {c:?}");
            }
        }
    }

    #[test]
    fn the_model_never_contradicts_its_own_assertions() {
        for seed in 0..4 {
            run(seed, 25_000);
        }
    }
}
